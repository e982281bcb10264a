//! The KVM VM: one memory slot covering all of guest memory.

use kvm_bindings::kvm_userspace_memory_region;
use std::sync::OnceLock;

use kvm_ioctls::{Cap, Kvm, VmFd};

use super::memory::GuestMemory;

/// Why the KVM VM could not be created.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// `/dev/kvm` could not be opened.
    #[error("cannot open /dev/kvm (is KVM available, and are you root?)")]
    OpenKvm(#[source] kvm_ioctls::Error),
    /// `KVM_CREATE_VM` failed.
    #[error("KVM_CREATE_VM failed")]
    CreateVm(#[source] kvm_ioctls::Error),
    /// Guest memory could not be given to the VM.
    #[error("KVM_SET_USER_MEMORY_REGION failed for {size} bytes")]
    SetMemory {
        /// The size of guest memory.
        size: u64,
        /// Why.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// A capability the VMM needs (its name).
    #[error("this KVM lacks a required capability: {0}")]
    MissingCap(&'static str),
}

/// The KVM VM of a microVM.
pub struct Vm {
    /// This process's `/dev/kvm` ([`kvm`]).
    pub kvm: &'static Kvm,
    /// The VM.
    pub fd: VmFd,
}

/// This process's `/dev/kvm`, opened once (by [`kvm`]) and shared by all its VMs: a
/// jailed process opens it before its root and privileges are taken away.
static KVM: OnceLock<Kvm> = OnceLock::new();

/// This process's `/dev/kvm`, opened on first use, with the capabilities the VMM needs
/// checked then.
pub fn kvm() -> Result<&'static Kvm, VmError> {
    if let Some(kvm) = KVM.get() {
        return Ok(kvm);
    }
    let kvm = Kvm::new().map_err(VmError::OpenKvm)?;
    for (cap, name) in [
        (Cap::UserMemory, "KVM_CAP_USER_MEMORY"),
        (Cap::Xcrs, "KVM_CAP_XCRS"),
    ] {
        if !kvm.check_extension(cap) {
            return Err(VmError::MissingCap(name));
        }
    }
    // Another thread may have opened it meanwhile: either handle will do.
    Ok(KVM.get_or_init(|| kvm))
}

impl Vm {
    /// Creates a VM whose guest-physical memory is `memory`.
    pub fn new(memory: &GuestMemory) -> Result<Self, VmError> {
        // SAFETY: the host range is the mapping owned by `memory`; the caller keeps
        // `memory` alive as long as this VM (both live in the same `MicroVm`, which drops
        // the VM first).
        unsafe { Self::over(memory.host_addr(), memory.size()) }
    }

    /// Creates a VM whose guest-physical memory is the `size` bytes of host memory at
    /// `host_addr` (memory slot 0).
    ///
    /// # Safety
    ///
    /// `host_addr..host_addr+size` must stay mapped as long as the VM exists (the
    /// mapping may be replaced in place: KVM follows the host's page tables).
    pub unsafe fn over(host_addr: u64, size: u64) -> Result<Self, VmError> {
        let kvm = kvm()?;
        let fd = kvm.create_vm().map_err(VmError::CreateVm)?;
        let region = kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: size,
            userspace_addr: host_addr,
        };
        // SAFETY: the caller keeps the range mapped as long as the VM (see above).
        unsafe { fd.set_user_memory_region(region) }
            .map_err(|source| VmError::SetMemory { size, source })?;
        Ok(Self { kvm, fd })
    }
}
