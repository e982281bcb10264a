//! Subcommands of the `reap` binary that are larger than a few lines.

pub mod functions;
