//! The one vCPU and fast access to its registers at exits.
//!
//! With `KVM_CAP_SYNC_REGS` the general and special registers travel in the shared
//! `kvm_run` page, so a system-call exit costs one `KVM_RUN` and no other ioctl.

use std::os::fd::AsRawFd;

use kvm_bindings::{kvm_regs, kvm_sregs, kvm_xsave};
use kvm_ioctls::{Cap, Kvm, SyncReg, VcpuExit, VcpuFd, VmFd};

/// A failed vCPU ioctl.
#[derive(Debug, thiserror::Error)]
pub enum VcpuError {
    /// `KVM_CREATE_VCPU`.
    #[error("KVM_CREATE_VCPU failed")]
    Create(#[source] kvm_ioctls::Error),
    /// Another ioctl, named without its `KVM_` prefix.
    #[error("KVM_{0} failed")]
    Ioctl(&'static str, #[source] kvm_ioctls::Error),
}

/// The microVM's one vCPU.
pub struct Vcpu {
    /// The KVM vCPU.
    pub fd: VcpuFd,
    sync_regs: bool,
    /// Whether the registers in the `kvm_run` page are current (true after an exit).
    synced: bool,
}

/// What stopped the vCPU, reduced to what the VMM acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// `out` to `port`, with the first data byte.
    IoOut {
        /// The port.
        port: u16,
        /// The first byte written.
        byte: u8,
    },
    /// `in` from `port`.
    IoIn {
        /// The port.
        port: u16,
    },
    /// Access to guest-physical memory with no memory behind it.
    Mmio {
        /// The guest-physical address.
        addr: u64,
    },
    /// Triple fault.
    Shutdown,
    /// `hlt` (which raises #GP at CPL3, so a guest cannot normally cause this).
    Hlt,
    /// `KVM_RUN` was interrupted by a signal (the watchdog).
    Interrupted,
    /// Any other exit, with KVM's name for it.
    Other(&'static str),
}

impl Vcpu {
    /// Creates vCPU 0 of `vm`, with its registers in the `kvm_run` page when `kvm`
    /// offers `KVM_CAP_SYNC_REGS`.
    pub fn new(kvm: &Kvm, vm: &VmFd) -> Result<Self, VcpuError> {
        let mut fd = vm.create_vcpu(0).map_err(VcpuError::Create)?;
        let sync_regs = kvm.check_extension(Cap::SyncRegs);
        if sync_regs {
            fd.set_sync_valid_reg(SyncReg::Register);
            fd.set_sync_valid_reg(SyncReg::SystemRegister);
        }
        Ok(Self {
            fd,
            sync_regs,
            synced: false,
        })
    }

    /// Runs the guest until the next exit.
    pub fn run(&mut self) -> Result<Exit, VcpuError> {
        let exit = match self.fd.run() {
            Ok(VcpuExit::IoOut(port, data)) => Exit::IoOut {
                port,
                byte: data.first().copied().unwrap_or(0),
            },
            Ok(VcpuExit::IoIn(port, _)) => Exit::IoIn { port },
            Ok(VcpuExit::MmioRead(addr, _)) | Ok(VcpuExit::MmioWrite(addr, _)) => {
                Exit::Mmio { addr }
            }
            Ok(VcpuExit::Shutdown) => Exit::Shutdown,
            Ok(VcpuExit::Hlt) => Exit::Hlt,
            Ok(VcpuExit::Intr) => Exit::Interrupted,
            Ok(VcpuExit::FailEntry(..)) => Exit::Other("FAIL_ENTRY"),
            Ok(VcpuExit::InternalError) => Exit::Other("INTERNAL_ERROR"),
            Ok(VcpuExit::Exception) => Exit::Other("EXCEPTION"),
            Ok(VcpuExit::SystemEvent(..)) => Exit::Other("SYSTEM_EVENT"),
            Ok(VcpuExit::Debug(_)) => Exit::Other("DEBUG"),
            Ok(_) => Exit::Other("unexpected exit"),
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => Exit::Interrupted,
            Err(e) => return Err(VcpuError::Ioctl("RUN", e)),
        };
        // KVM clears the dirty flags on entry and fills the sync area on every exit,
        // including one interrupted by a signal.
        self.synced = self.sync_regs;
        Ok(exit)
    }

    /// The guest's time-stamp counter now (`KVM_GET_MSRS` of `IA32_TSC`).
    pub fn tsc(&self) -> Result<u64, VcpuError> {
        const IA32_TSC: u32 = 0x10;
        let mut msrs = kvm_bindings::Msrs::from_entries(&[kvm_bindings::kvm_msr_entry {
            index: IA32_TSC,
            ..Default::default()
        }])
        .map_err(|_| VcpuError::Ioctl("GET_MSRS", kvm_ioctls::Error::new(libc::E2BIG)))?;
        let n = self
            .fd
            .get_msrs(&mut msrs)
            .map_err(|e| VcpuError::Ioctl("GET_MSRS", e))?;
        match msrs.as_slice().first() {
            Some(entry) if n == 1 => Ok(entry.data),
            _ => Err(VcpuError::Ioctl(
                "GET_MSRS",
                kvm_ioctls::Error::new(libc::EIO),
            )),
        }
    }

    /// The guest's TSC frequency in kHz (`KVM_GET_TSC_KHZ`).
    pub fn tsc_khz(&self) -> Result<u32, VcpuError> {
        self.fd
            .get_tsc_khz()
            .map_err(|e| VcpuError::Ioctl("GET_TSC_KHZ", e))
    }

    /// The registers at the last exit.
    pub fn regs(&mut self) -> Result<(kvm_regs, kvm_sregs), VcpuError> {
        if self.synced {
            let s = self.fd.sync_regs();
            return Ok((s.regs, s.sregs));
        }
        let regs = self
            .fd
            .get_regs()
            .map_err(|e| VcpuError::Ioctl("GET_REGS", e))?;
        let sregs = self
            .fd
            .get_sregs()
            .map_err(|e| VcpuError::Ioctl("GET_SREGS", e))?;
        Ok((regs, sregs))
    }

    /// Sets the registers for the next entry. `sregs` is only written when given.
    pub fn set_regs(
        &mut self,
        regs: &kvm_regs,
        sregs: Option<&kvm_sregs>,
    ) -> Result<(), VcpuError> {
        if self.synced {
            let s = self.fd.sync_regs_mut();
            s.regs = *regs;
            if let Some(sregs) = sregs {
                s.sregs = *sregs;
            }
            self.fd.set_sync_dirty_reg(SyncReg::Register);
            if sregs.is_some() {
                self.fd.set_sync_dirty_reg(SyncReg::SystemRegister);
            }
            return Ok(());
        }
        self.fd
            .set_regs(regs)
            .map_err(|e| VcpuError::Ioctl("SET_REGS", e))?;
        if let Some(sregs) = sregs {
            self.fd
                .set_sregs(sregs)
                .map_err(|e| VcpuError::Ioctl("SET_SREGS", e))?;
        }
        Ok(())
    }

    /// Whether register access at exits avoids extra ioctls.
    pub fn has_sync_regs(&self) -> bool {
        self.sync_regs
    }

    /// Drops whatever register writes wait in the `kvm_run` sync area for the next
    /// entry, and forgets that the area is current: a reused vCPU (a VM shell) must
    /// not enter with the last guest's registers.
    pub fn forget_pending(&mut self) {
        self.fd.get_kvm_run().kvm_dirty_regs = 0;
        self.synced = false;
    }

    /// Forgets that the sync area is current: after registers were set with ioctls
    /// (restore), the next exit refills it.
    pub fn invalidate_sync(&mut self) {
        self.synced = false;
    }

    /// The XSAVE area (x87, SSE, AVX state) of the guest thread on the vCPU.
    pub fn xsave(&self) -> Result<kvm_xsave, VcpuError> {
        self.fd
            .get_xsave()
            .map_err(|e| VcpuError::Ioctl("GET_XSAVE", e))
    }

    /// Loads an XSAVE area that [`xsave`](Self::xsave) returned on this host.
    pub fn set_xsave(&self, xsave: &kvm_xsave) -> Result<(), VcpuError> {
        // SAFETY: `xsave` is a whole `kvm_xsave` (4096 bytes) that KVM_GET_XSAVE filled
        // on this host (the VMM checks at boot that the host's XSAVE area fits in it).
        unsafe { self.fd.set_xsave(xsave) }.map_err(|e| VcpuError::Ioctl("SET_XSAVE", e))
    }

    /// `KVM_SET_SIGNAL_MASK`: the signal mask of the calling thread while it is inside
    /// `KVM_RUN` (bit `n - 1` blocks signal `n`). A signal blocked outside `KVM_RUN`
    /// and not in this mask stays pending until the next entry, which it then ends at
    /// once: the VMM's own system calls are never interrupted by it.
    pub fn set_run_signal_mask(&self, mask: u64) -> Result<(), VcpuError> {
        /// `struct kvm_signal_mask` with the 8-byte kernel sigset of x86-64.
        #[repr(C)]
        struct KvmSignalMask {
            len: u32,
            sigset: [u8; 8],
        }
        // _IOW(KVMIO, 0x8b, struct kvm_signal_mask), the struct being 4 bytes without
        // its flexible array.
        const KVM_SET_SIGNAL_MASK: libc::c_ulong = 0x4004_ae8b;
        let arg = KvmSignalMask {
            len: 8,
            sigset: mask.to_le_bytes(),
        };
        // SAFETY: the vCPU fd is open; KVM reads `len` and then `len` bytes of sigset
        // from `arg`, which is that large and lives across the call.
        let r = unsafe { libc::ioctl(self.fd.as_raw_fd(), KVM_SET_SIGNAL_MASK, &raw const arg) };
        if r != 0 {
            return Err(VcpuError::Ioctl(
                "SET_SIGNAL_MASK",
                kvm_ioctls::Error::last(),
            ));
        }
        Ok(())
    }
}
