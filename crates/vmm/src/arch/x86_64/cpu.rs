//! Host CPU facts the guest's initial state reports.

/// What Linux reports as AT_HWCAP on x86-64: CPUID.1:EDX.
pub fn hwcap() -> u64 {
    let leaf = std::arch::x86_64::__cpuid(1);
    u64::from(leaf.edx)
}

/// Whether the host's TSC is invariant (CPUID.80000007H:EDX bit 8): it ticks at one
/// rate in every power state and on every CPU, so the guest can tell time from it.
pub fn invariant_tsc() -> bool {
    let max_extended = std::arch::x86_64::__cpuid(0x8000_0000).eax;
    max_extended >= 0x8000_0007 && std::arch::x86_64::__cpuid(0x8000_0007).edx & (1 << 8) != 0
}
