//! reap-vmm: the microVM that runs a function program, its snapshots, and function
//! instances restored from them.
//!
//! - [`arch`]: the guest's page tables, descriptor tables, entry stubs, CPU state.
//! - [`vstate`]: guest memory, the KVM VM and vCPU.
//! - [`loader`]: the ELF loader and the Linux initial stack.
//! - [`guest_os`]: the Linux system calls the guest program makes.
//! - [`microvm`]: a microVM and its run loop.
//! - [`persist`]: guest memory of a restored microVM, from the memory file or a page
//!   server.
//! - [`instance`]: a function instance: boot to ready, restore in a memory mode, invoke.
//! - [`snapshot`]: snapshots on disk (state file, sparse memory file).
//! - [`vdso`]: the guest's vDSO (clocks without a VM exit) and its data page.

#![warn(missing_docs)]

pub mod arch;
pub mod guest_os;
pub mod instance;
pub mod loader;
pub mod microvm;
pub mod persist;
pub mod snapshot;
pub mod vdso;
pub mod vstate;
