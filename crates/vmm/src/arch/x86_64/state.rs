//! The vCPU state a snapshot carries, in the style of Firecracker's `Persist`: a plain
//! serde struct, `save` and `restore`.

use kvm_bindings::{
    CpuId, Msrs, kvm_cpuid_entry2, kvm_msr_entry, kvm_regs, kvm_sregs, kvm_xcrs, kvm_xsave,
};
use kvm_ioctls::{Cap, Kvm, VcpuFd};
use serde::{Deserialize, Serialize};

use super::regs::CpuSetupError;

/// MSRs a snapshot saves: the syscall MSRs and the swapped GS base. (FS and GS bases
/// are part of the segment registers.)
const SAVED_MSRS: [u32; 4] = [0xc000_0081, 0xc000_0082, 0xc000_0084, 0xc000_0102];
/// Largest XSAVE area `KVM_GET_XSAVE` can return in a `kvm_xsave`.
const XSAVE_AREA: i32 = 4096;

/// The vCPU at a snapshot: what [`save_vcpu`] reads and [`restore_vcpu`] sets.
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    /// The CPUID the guest was given.
    pub cpuid: Vec<kvm_cpuid_entry2>,
    /// General registers.
    pub regs: kvm_regs,
    /// Special registers (segments, control registers, descriptor tables).
    pub sregs: kvm_sregs,
    /// XCR0.
    pub xcrs: kvm_xcrs,
    /// The XSAVE area (x87, SSE, AVX, AVX-512 state).
    pub xsave: kvm_xsave,
    /// The syscall MSRs and the swapped GS base.
    pub msrs: Vec<kvm_msr_entry>,
}

impl std::fmt::Debug for VcpuState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VcpuState")
            .field("rip", &self.regs.rip)
            .field("rsp", &self.regs.rsp)
            .finish_non_exhaustive()
    }
}

fn ioctl(name: &'static str) -> impl FnOnce(kvm_ioctls::Error) -> CpuSetupError {
    move |e| CpuSetupError::Ioctl(name, e)
}

/// The XSAVE area must fit in `kvm_xsave` for `KVM_GET_XSAVE`/`KVM_SET_XSAVE`.
fn check_xsave_size(kvm: &Kvm) -> Result<(), CpuSetupError> {
    let size = kvm.check_extension_int(Cap::Xsave2);
    if size > XSAVE_AREA {
        return Err(CpuSetupError::Ioctl(
            "GET_XSAVE",
            kvm_ioctls::Error::new(libc::E2BIG),
        ));
    }
    Ok(())
}

/// Saves the vCPU's state. `regs`/`sregs` are passed in because at an exit the
/// current values may live in the `kvm_run` sync area.
pub fn save_vcpu(
    kvm: &Kvm,
    vcpu: &VcpuFd,
    cpuid: &CpuId,
    regs: kvm_regs,
    sregs: kvm_sregs,
) -> Result<VcpuState, CpuSetupError> {
    check_xsave_size(kvm)?;
    let xcrs = vcpu.get_xcrs().map_err(ioctl("GET_XCRS"))?;
    let xsave = vcpu.get_xsave().map_err(ioctl("GET_XSAVE"))?;
    let entries: Vec<kvm_msr_entry> = SAVED_MSRS
        .iter()
        .map(|&index| kvm_msr_entry {
            index,
            ..Default::default()
        })
        .collect();
    let mut msrs = Msrs::from_entries(&entries)
        .map_err(|_| CpuSetupError::Ioctl("GET_MSRS", kvm_ioctls::Error::new(libc::E2BIG)))?;
    let n = vcpu.get_msrs(&mut msrs).map_err(ioctl("GET_MSRS"))?;
    if n != SAVED_MSRS.len() {
        return Err(CpuSetupError::Ioctl(
            "GET_MSRS",
            kvm_ioctls::Error::new(libc::EINVAL),
        ));
    }
    Ok(VcpuState {
        cpuid: cpuid.as_slice().to_vec(),
        regs,
        sregs,
        xcrs,
        xsave,
        msrs: msrs.as_slice().to_vec(),
    })
}

/// Loads `state` into a fresh vCPU. Returns the CPUID set it was given.
pub fn restore_vcpu(kvm: &Kvm, vcpu: &VcpuFd, state: &VcpuState) -> Result<CpuId, CpuSetupError> {
    restore_vcpu_with(kvm, vcpu, state, true)
}

/// [`restore_vcpu`], setting the CPUID only if `set_cpuid`: a vCPU that has run (a VM
/// shell's) already has the snapshot's CPUID, and KVM refuses `KVM_SET_CPUID2` once a
/// vCPU has run unless KVM finds it equal to the current one after its own runtime
/// updates, which it does not always.
pub fn restore_vcpu_with(
    kvm: &Kvm,
    vcpu: &VcpuFd,
    state: &VcpuState,
    set_cpuid: bool,
) -> Result<CpuId, CpuSetupError> {
    check_xsave_size(kvm)?;
    let cpuid = CpuId::from_entries(&state.cpuid)
        .map_err(|_| CpuSetupError::SetCpuid(kvm_ioctls::Error::new(libc::E2BIG)))?;
    if set_cpuid {
        vcpu.set_cpuid2(&cpuid).map_err(CpuSetupError::SetCpuid)?;
    }
    vcpu.set_sregs(&state.sregs).map_err(ioctl("SET_SREGS"))?;
    vcpu.set_regs(&state.regs).map_err(ioctl("SET_REGS"))?;
    // XCR0 before XSAVE: the XSAVE area is checked against it.
    vcpu.set_xcrs(&state.xcrs).map_err(ioctl("SET_XCRS"))?;
    // SAFETY: `state.xsave` is a whole `kvm_xsave` (4096 bytes) and the host's XSAVE
    // area fits in it (checked above), so KVM reads no memory beyond the struct.
    unsafe { vcpu.set_xsave(&state.xsave) }.map_err(ioctl("SET_XSAVE"))?;
    let msrs = Msrs::from_entries(&state.msrs)
        .map_err(|_| CpuSetupError::Ioctl("SET_MSRS", kvm_ioctls::Error::new(libc::E2BIG)))?;
    let n = vcpu.set_msrs(&msrs).map_err(ioctl("SET_MSRS"))?;
    if n != state.msrs.len() {
        return Err(CpuSetupError::Ioctl(
            "SET_MSRS",
            kvm_ioctls::Error::new(libc::EINVAL),
        ));
    }
    Ok(cpuid)
}
