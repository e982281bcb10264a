//! Host CPU facts the guest's initial state reports.

/// What Linux reports as AT_HWCAP on x86-64: CPUID.1:EDX.
pub fn hwcap() -> u64 {
    let leaf = std::arch::x86_64::__cpuid(1);
    u64::from(leaf.edx)
}
