//! The error shapes shared by reap's crates: an I/O error on a path ([`PathIoError`]),
//! and an error with its causes on one line ([`chain`]).

#![warn(missing_docs)]

use std::error::Error;
use std::io;
use std::path::{Path, PathBuf};

/// An I/O error on a file or directory, with what was being done: displayed as
/// `PATH: WHAT`, the `io::Error` as its source.
#[derive(Debug, thiserror::Error)]
#[error("{}: {what}", path.display())]
pub struct PathIoError {
    /// The file or directory.
    pub path: PathBuf,
    /// What failed, e.g. "cannot open the memory file".
    pub what: &'static str,
    /// The cause.
    #[source]
    pub source: io::Error,
}

impl PathIoError {
    /// A closure for `map_err` that wraps an `io::Error` on `path`.
    pub fn on(path: impl AsRef<Path>, what: &'static str) -> impl FnOnce(io::Error) -> PathIoError {
        let path = path.as_ref().to_path_buf();
        move |source| PathIoError { path, what, source }
    }
}

/// `e` and its causes on one line, `: `-separated.
pub fn chain(e: &dyn Error) -> String {
    let mut s = e.to_string();
    let mut cause = e.source();
    while let Some(c) = cause {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cause = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, thiserror::Error)]
    #[error("cannot restore")]
    struct Outer(#[source] PathIoError);

    #[test]
    fn chain_has_every_cause_in_order() {
        let io = io::Error::new(io::ErrorKind::NotFound, "no such file");
        let e = Outer(PathIoError::on(
            "/snap/state",
            "cannot open the snapshot state",
        )(io));
        assert_eq!(
            chain(&e),
            "cannot restore: /snap/state: cannot open the snapshot state: no such file"
        );
    }
}
