//! Instance processes: every instance's VMM runs in a child process of its own,
//! started ahead of need and jailed ([`jail`]): its own namespaces, the snapshot's
//! directory as its root, no privileges, a seccomp filter and a cgroup. The server
//! drives it over a socket ([`protocol`]); a crash, panic or kill of the process fails
//! that instance's invocation and nothing else.
//!
//! - [`parent`]: the server's side: [`Workers`] (processes started ahead) and
//!   [`RemoteInstance`] (one restored instance in its process);
//! - [`child`]: the process's side, `reap worker`.

#![warn(missing_docs)]

pub mod child;
pub mod jail;
pub mod parent;
pub mod protocol;

pub use jail::Ids;
pub use parent::{
    DeployReport, Hop, RemoteInstance, WorkerConfig, WorkerError, WorkerStats, Workers,
};
pub use protocol::Fault;
