//! The KVM side of a microVM: guest memory, the VM and its one vCPU.

pub mod memory;
pub mod vcpu;
pub mod vm;
