//! The vCPU's initial state for ordinary 64-bit user code, and the return from an
//! emulated system call.

use kvm_bindings::{
    CpuId, KVM_MAX_CPUID_ENTRIES, Msrs, kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, kvm_sregs,
    kvm_xcrs,
};
use kvm_ioctls::{Kvm, VcpuFd};

use super::layout::*;
use super::tables::{GDT_ENTRIES, TSS_SELECTOR, TSS_SIZE, USER_CS_SELECTOR, USER_DS_SELECTOR};

const CR0_PE: u64 = 1 << 0;
const CR0_MP: u64 = 1 << 1;
const CR0_NE: u64 = 1 << 5;
const CR0_WP: u64 = 1 << 16;
const CR0_PG: u64 = 1 << 31;
const CR4_PAE: u64 = 1 << 5;
const CR4_OSFXSR: u64 = 1 << 9;
const CR4_OSXMMEXCPT: u64 = 1 << 10;
const CR4_OSXSAVE: u64 = 1 << 18;
const EFER_SCE: u64 = 1 << 0;
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;
/// No-execute enable: page-table entries' bit 63 forbids instruction fetches.
const EFER_NXE: u64 = 1 << 11;

const MSR_STAR: u32 = 0xc000_0081;
const MSR_LSTAR: u32 = 0xc000_0082;
const MSR_SYSCALL_MASK: u32 = 0xc000_0084;

/// RFLAGS bit 1 is always set; IOPL=3 lets the syscall stub's `out` run on KVM
/// implementations that execute the stub at CPL3.
const RFLAGS_FIXED: u64 = 1 << 1;
const RFLAGS_IOPL3: u64 = 3 << 12;
/// Flags user code may change: CF, PF, AF, ZF, SF, TF, DF, OF, AC, ID.
const RFLAGS_USER: u64 =
    0x1 | 0x4 | 0x10 | 0x40 | 0x80 | 0x100 | 0x400 | 0x800 | 0x4_0000 | 0x20_0000;
/// Cleared on `syscall`: TF, DF, NT, AC (IF is never set in this guest).
const SYSCALL_MASK: u64 = 0x100 | 0x400 | 0x4000 | 0x4_0000;

/// XSAVE components the guest may use: x87, SSE, AVX and AVX-512 state.
const XCR0_WANTED: u64 = 0x1 | 0x2 | 0x4 | 0x20 | 0x40 | 0x80;

/// Why the vCPU's state could not be set up, saved or restored.
#[derive(Debug, thiserror::Error)]
pub enum CpuSetupError {
    /// `KVM_GET_SUPPORTED_CPUID`.
    #[error("KVM_GET_SUPPORTED_CPUID failed")]
    GetCpuid(#[source] kvm_ioctls::Error),
    /// `KVM_SET_CPUID2`.
    #[error("KVM_SET_CPUID2 failed")]
    SetCpuid(#[source] kvm_ioctls::Error),
    /// Another ioctl, named without its `KVM_` prefix.
    #[error("KVM_{0} failed")]
    Ioctl(&'static str, #[source] kvm_ioctls::Error),
    /// The host cannot give the guest x87 and SSE state through XSAVE (the supported
    /// XCR0).
    #[error("the host's KVM does not support XSAVE with SSE (supported XCR0 is {0:#x})")]
    NoXsave(u64),
}

/// The user code segment (selector 0x23).
pub fn user_cs() -> kvm_segment {
    segment(USER_CS_SELECTOR, GDT_ENTRIES[4])
}

/// The user data/stack segment (selector 0x1b).
pub fn user_ss() -> kvm_segment {
    segment(USER_DS_SELECTOR, GDT_ENTRIES[3])
}

/// Decodes a flat code/data descriptor into the form KVM wants.
fn segment(selector: u16, descriptor: u64) -> kvm_segment {
    let access = (descriptor >> 40) as u8;
    let flags = (descriptor >> 52) as u8;
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_: access & 0xf,
        present: (access >> 7) & 1,
        dpl: (access >> 5) & 3,
        db: (flags >> 2) & 1,
        s: (access >> 4) & 1,
        l: (flags >> 1) & 1,
        g: (flags >> 3) & 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// The XCR0 value to give the guest: the wanted components the host supports.
pub fn supported_xcr0(cpuid: &CpuId) -> u64 {
    cpuid
        .as_slice()
        .iter()
        .find(|e| e.function == 0xd && e.index == 0)
        .map(|e| (u64::from(e.edx) << 32 | u64::from(e.eax)) & XCR0_WANTED)
        .unwrap_or(0x3)
}

/// Puts a fresh vCPU into 64-bit user mode at `entry` with stack pointer `rsp`: page
/// tables, GDT/TSS/IDT, SSE/AVX (CR4 and XCR0), CPUID passed through from the host's
/// supported set, and the syscall MSRs pointing at the stub. Returns the CPUID set.
pub fn configure_vcpu(
    kvm: &Kvm,
    vcpu: &VcpuFd,
    entry: u64,
    rsp: u64,
) -> Result<CpuId, CpuSetupError> {
    let cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(CpuSetupError::GetCpuid)?;
    vcpu.set_cpuid2(&cpuid).map_err(CpuSetupError::SetCpuid)?;

    let mut sregs = vcpu
        .get_sregs()
        .map_err(|e| CpuSetupError::Ioctl("GET_SREGS", e))?;
    initial_sregs(&mut sregs);
    vcpu.set_sregs(&sregs)
        .map_err(|e| CpuSetupError::Ioctl("SET_SREGS", e))?;

    let xcr0 = supported_xcr0(&cpuid);
    if xcr0 & 0x3 != 0x3 {
        return Err(CpuSetupError::NoXsave(xcr0));
    }
    let mut xcrs = kvm_xcrs {
        nr_xcrs: 1,
        ..Default::default()
    };
    xcrs.xcrs[0].xcr = 0;
    xcrs.xcrs[0].value = xcr0;
    vcpu.set_xcrs(&xcrs)
        .map_err(|e| CpuSetupError::Ioctl("SET_XCRS", e))?;

    // The state a Linux process starts with: x87 control word 0x37f, MXCSR 0x1f80.
    let fpu = kvm_fpu {
        fcw: 0x37f,
        mxcsr: 0x1f80,
        ..Default::default()
    };
    vcpu.set_fpu(&fpu)
        .map_err(|e| CpuSetupError::Ioctl("SET_FPU", e))?;

    let star = (0x10u64 << 48) | (0x08u64 << 32);
    let msrs = Msrs::from_entries(&[
        kvm_msr_entry {
            index: MSR_STAR,
            data: star,
            ..Default::default()
        },
        kvm_msr_entry {
            index: MSR_LSTAR,
            data: SYSCALL_STUB,
            ..Default::default()
        },
        kvm_msr_entry {
            index: MSR_SYSCALL_MASK,
            data: SYSCALL_MASK,
            ..Default::default()
        },
    ])
    .map_err(|_| CpuSetupError::Ioctl("SET_MSRS", kvm_ioctls::Error::new(libc::E2BIG)))?;
    let written = vcpu
        .set_msrs(&msrs)
        .map_err(|e| CpuSetupError::Ioctl("SET_MSRS", e))?;
    if written != 3 {
        return Err(CpuSetupError::Ioctl(
            "SET_MSRS",
            kvm_ioctls::Error::new(libc::EINVAL),
        ));
    }

    let regs = kvm_regs {
        rip: entry,
        rsp,
        rflags: RFLAGS_FIXED | RFLAGS_IOPL3,
        ..Default::default()
    };
    vcpu.set_regs(&regs)
        .map_err(|e| CpuSetupError::Ioctl("SET_REGS", e))?;
    Ok(cpuid)
}

/// Long mode, paging, SSE/XSAVE enabled; user segments loaded; TSS for the exception
/// stack; IDT with the exception gates.
fn initial_sregs(sregs: &mut kvm_sregs) {
    sregs.cr0 = CR0_PE | CR0_MP | CR0_NE | CR0_WP | CR0_PG;
    sregs.cr3 = PML4_ADDR;
    sregs.cr4 = CR4_PAE | CR4_OSFXSR | CR4_OSXMMEXCPT | CR4_OSXSAVE;
    sregs.efer = EFER_SCE | EFER_LME | EFER_LMA | EFER_NXE;
    sregs.gdt.base = GDT_ADDR;
    sregs.gdt.limit = (GDT_ENTRIES.len() as u16 + 2) * 8 - 1;
    sregs.idt.base = IDT_ADDR;
    sregs.idt.limit = 32 * 16 - 1;
    sregs.cs = user_cs();
    let ds = user_ss();
    sregs.ds = ds;
    sregs.es = ds;
    sregs.fs = ds;
    sregs.gs = ds;
    sregs.ss = ds;
    sregs.tr = kvm_segment {
        base: TSS_ADDR,
        limit: (TSS_SIZE - 1) as u32,
        selector: TSS_SELECTOR,
        type_: 0xb,
        present: 1,
        ..Default::default()
    };
    sregs.ldt = kvm_segment {
        unusable: 1,
        ..Default::default()
    };
}

/// Completes an emulated `syscall`: result in RAX, back to the instruction after the
/// `syscall` (saved in RCX) with the flags it had (saved in R11), in user mode.
pub fn return_from_syscall(regs: &mut kvm_regs, sregs: &mut kvm_sregs, result: u64) {
    regs.rax = result;
    regs.rip = regs.rcx;
    regs.rflags = (regs.r11 & RFLAGS_USER) | RFLAGS_FIXED | RFLAGS_IOPL3;
    sregs.cs = user_cs();
    sregs.ss = user_ss();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn user_segments_are_64_bit_ring_3() {
        let cs = user_cs();
        assert_eq!(
            (cs.selector, cs.dpl, cs.l, cs.db, cs.s, cs.present),
            (0x23, 3, 1, 0, 1, 1)
        );
        assert_eq!(cs.type_, 0xb);
        let ss = user_ss();
        assert_eq!((ss.selector, ss.dpl, ss.db, ss.type_), (0x1b, 3, 1, 0x3));
    }

    #[test]
    fn syscall_return_restores_rip_and_sanitizes_flags() {
        let mut regs = kvm_regs {
            rcx: 0x40_1234,
            r11: 0x246 | (1 << 14) | (1 << 9),
            ..Default::default()
        };
        let mut sregs = kvm_sregs::default();
        return_from_syscall(&mut regs, &mut sregs, (-14i64) as u64);
        assert_eq!(regs.rip, 0x40_1234);
        assert_eq!(regs.rax as i64, -14);
        assert_eq!(regs.rflags & (1 << 14), 0, "NT cleared");
        assert_eq!(regs.rflags & (1 << 9), 0, "IF never set");
        assert_eq!(regs.rflags & RFLAGS_IOPL3, RFLAGS_IOPL3);
        assert_eq!(regs.rflags & 0x44, 0x44, "ZF and PF kept");
        assert_eq!(sregs.cs.selector, 0x23);
    }
}
