//! Architecture-specific pieces of the microVM: the guest's page tables, descriptor
//! tables, syscall and exception entry stubs, and the vCPU's initial state.
//!
//! Only x86-64 exists; everything outside this module is architecture-neutral.

mod x86_64;

pub use self::x86_64::*;
