//! x86-64 guest layout and CPU setup.
//!
//! The guest runs its program at CPL3 in 64-bit long mode with guest-physical memory
//! identity-mapped (see `docs/guest-abi.md`). The first 2 MiB of guest memory are the
//! system area: page tables, GDT, TSS, IDT, the syscall and exception stubs and an
//! exception stack. Page 0 and the rest of the first 2 MiB are unmapped so that null
//! and near-null pointers fault.

mod cpu;
mod fault;
pub mod layout;
mod paging;
mod regs;
mod state;
mod tables;

pub use cpu::{hwcap, invariant_tsc};
pub use fault::{
    Access, ExceptionFrame, ExceptionReport, FaultRegs, GENERAL_PROTECTION, PAGE_FAULT, PageFault,
    decode_exception, exception_name, io_instruction_port, read_exception_frame,
};
pub use paging::{Protection, large_pde, pde_addr, pte, pte_addr, table_pde, write_page_tables};
pub use regs::{
    CpuSetupError, configure_vcpu, return_from_syscall, supported_xcr0, user_cs, user_ss,
};
pub use state::{VcpuState, restore_vcpu, restore_vcpu_with, save_vcpu};
pub use tables::write_system_tables;
