//! reap: a serverless function runtime whose functions run in KVM microVMs.
//!
//! - [`arch`]: the guest's page tables, descriptor tables, entry stubs, CPU state.
//! - [`vstate`]: guest memory, the KVM VM and vCPU.
//! - [`loader`]: the ELF loader and the Linux initial stack.
//! - [`guest_os`]: the Linux system calls the guest program makes.
//! - [`microvm`]: a microVM and its run loop.
//! - [`instance`]: a function instance: boot to ready, restore in a memory mode, invoke.
//! - [`orchestrator`]: the function store, the instance pool and the HTTP API.
//! - [`snapshot`]: snapshots on disk (state file, sparse memory file).
//! - [`bench`]: `reap bench`, cold starts per memory mode against warm, with plots.
//! - [`firecracker`]: `reap uffd-server`, the page server for Firecracker microVMs.

pub mod arch;
pub mod bench;
pub mod firecracker;
pub mod guest_os;
pub mod instance;
pub mod loader;
pub mod microvm;
pub mod orchestrator;
pub mod snapshot;
pub mod vstate;
