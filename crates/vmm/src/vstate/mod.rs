//! The KVM side of a microVM: guest memory, the VM and its one vCPU, and the watchdog
//! that interrupts the vCPU at a run's time limit.

pub mod memory;
pub mod shell;
pub mod vcpu;
pub mod vm;
pub(crate) mod watchdog;
