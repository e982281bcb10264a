//! The memory modes and the working-set policy: the one place that decides, from a
//! memory mode and a WS file, what the page server does.
//!
//! Every program of the workspace (`reap restore`, the orchestrator, `reap bench`,
//! `reap uffd-server`) names memory modes with [`MemoryMode`] and turns them into a
//! page-server [`Mode`] with [`WsPolicy::resolve`]; nothing else looks at whether a WS
//! file exists.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::{Condvar, Mutex, MutexGuard};

use serde::{Deserialize, Serialize};

use crate::server::Mode;

/// How a restored guest's memory is filled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
#[serde(rename_all = "lowercase")]
pub enum MemoryMode {
    /// `mmap(MAP_PRIVATE)` of the memory file: the kernel faults pages in
    /// (Firecracker's default; the paper's "vanilla" snapshots). No page server.
    File,
    /// Every page that holds data is served from the memory file when first touched.
    Lazy,
    /// Lazy, and the pages touched are recorded into the WS file (replacing it).
    Record,
    /// REAP: prefetch the WS file if there is one, else record it.
    Reap,
}

impl MemoryMode {
    /// Every mode, in the order of the command line's help.
    pub const ALL: [MemoryMode; 4] = [
        MemoryMode::File,
        MemoryMode::Lazy,
        MemoryMode::Record,
        MemoryMode::Reap,
    ];

    /// The mode's name on command lines, in the HTTP API and in reports.
    pub fn name(self) -> &'static str {
        match self {
            MemoryMode::File => "file",
            MemoryMode::Lazy => "lazy",
            MemoryMode::Record => "record",
            MemoryMode::Reap => "reap",
        }
    }

    /// Whether the mode needs a page server (all but [`MemoryMode::File`]).
    pub fn is_paged(self) -> bool {
        self != MemoryMode::File
    }
}

impl fmt::Display for MemoryMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A memory-mode name that is not one of [`MemoryMode::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown memory mode {0:?} (expected file, lazy, record or reap)")]
pub struct UnknownMode(pub String);

impl FromStr for MemoryMode {
    type Err = UnknownMode;

    fn from_str(s: &str) -> Result<MemoryMode, UnknownMode> {
        MemoryMode::ALL
            .into_iter()
            .find(|m| m.name() == s)
            .ok_or_else(|| UnknownMode(s.to_owned()))
    }
}

/// What the page server does with the working set: the paged memory modes with the WS
/// file they read or write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WsPolicy {
    /// Serve every page lazily; the WS file, if any, is neither read nor written.
    Lazy,
    /// Record into `ws`, replacing it.
    Record {
        /// The WS file.
        ws: PathBuf,
    },
    /// Prefetch `ws` if it exists, else record into it.
    Reap {
        /// The WS file.
        ws: PathBuf,
    },
}

/// [`WsPolicy::new`] was asked to record without a WS file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("record mode needs a working-set file to record into")]
pub struct RecordWithoutWs;

impl WsPolicy {
    /// The policy of a paged `mode` with the WS file `ws`; `None` for
    /// [`MemoryMode::File`]. REAP without a WS file serves lazily (the caller may warn);
    /// recording without one is an error.
    pub fn new(mode: MemoryMode, ws: Option<PathBuf>) -> Result<Option<WsPolicy>, RecordWithoutWs> {
        Ok(match (mode, ws) {
            (MemoryMode::File, _) => None,
            (MemoryMode::Lazy, _) | (MemoryMode::Reap, None) => Some(WsPolicy::Lazy),
            (MemoryMode::Record, Some(ws)) => Some(WsPolicy::Record { ws }),
            (MemoryMode::Record, None) => return Err(RecordWithoutWs),
            (MemoryMode::Reap, Some(ws)) => Some(WsPolicy::Reap { ws }),
        })
    }

    /// The WS file the policy reads or writes, if any.
    pub fn ws(&self) -> Option<&Path> {
        match self {
            WsPolicy::Lazy => None,
            WsPolicy::Record { ws } | WsPolicy::Reap { ws } => Some(ws),
        }
    }

    /// Decides, now, what the page server does: prefetch an existing WS file, record
    /// into one, or serve lazily. A REAP working set that this process is writing in
    /// the background ([`WsWriting`]) is waited for, then prefetched: never read half
    /// written, nor recorded again.
    pub fn resolve(&self) -> Resolved {
        if let WsPolicy::Reap { ws } = self {
            wait_for_ws(ws);
        }
        match self {
            WsPolicy::Lazy => Resolved {
                mode: Mode::Lazy,
                record_into: None,
            },
            WsPolicy::Reap { ws } if ws_exists(ws) => Resolved {
                mode: Mode::Prefetch { ws: ws.clone() },
                record_into: None,
            },
            WsPolicy::Record { ws } | WsPolicy::Reap { ws } => Resolved {
                mode: Mode::Record,
                record_into: Some(ws.clone()),
            },
        }
    }
}

/// A [`WsPolicy`] resolved for one cold start.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The page server's mode.
    pub mode: Mode,
    /// Where the recording goes ([`Mode::Record`] only).
    pub record_into: Option<PathBuf>,
}

impl Resolved {
    /// Whether this cold start records the working set.
    pub fn recording(&self) -> bool {
        self.record_into.is_some()
    }
}

/// Whether a WS file is there at `path` (a dangling symbolic link counts, so that it is
/// reported as unusable rather than silently re-recorded over).
pub fn ws_exists(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok()
}

/// The WS files this process is writing in the background ([`WsWriting`]).
static WRITING: Mutex<Vec<PathBuf>> = Mutex::new(Vec::new());
/// Signalled when a background write ends.
static WRITTEN: Condvar = Condvar::new();

fn writing() -> MutexGuard<'static, Vec<PathBuf>> {
    WRITING.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether this process is writing the WS file at `path` in the background.
pub fn ws_being_written(path: &Path) -> bool {
    writing().iter().any(|p| p == path)
}

/// Waits until this process is not writing the WS file `path` in the background.
pub fn wait_for_ws(path: &Path) {
    let mut w = writing();
    while w.iter().any(|p| p == path) {
        w = WRITTEN.wait(w).unwrap_or_else(|e| e.into_inner());
    }
}

/// Waits until this process writes no WS file in the background.
pub fn wait_for_ws_writes() {
    let mut w = writing();
    while !w.is_empty() {
        w = WRITTEN.wait(w).unwrap_or_else(|e| e.into_inner());
    }
}

/// A WS file being written in the background, from [`WsWriting::start`] until drop:
/// meanwhile [`WsPolicy::resolve`] waits for it.
#[derive(Debug)]
pub struct WsWriting(PathBuf);

impl WsWriting {
    /// Marks `path` as being written.
    pub fn start(path: &Path) -> WsWriting {
        writing().push(path.to_path_buf());
        WsWriting(path.to_path_buf())
    }
}

impl Drop for WsWriting {
    fn drop(&mut self) {
        let mut w = writing();
        if let Some(i) = w.iter().position(|p| *p == self.0) {
            w.swap_remove(i);
        }
        drop(w);
        WRITTEN.notify_all();
    }
}

/// Removes the WS file at `path`; `Ok(false)` if there was none.
pub fn remove_ws(path: &Path) -> io::Result<bool> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for m in MemoryMode::ALL {
            assert_eq!(m.name().parse::<MemoryMode>(), Ok(m));
            assert_eq!(
                serde_json::to_string(&m).unwrap(),
                format!("\"{}\"", m.name())
            );
        }
        assert_eq!(
            "REAP".parse::<MemoryMode>(),
            Err(UnknownMode("REAP".into()))
        );
    }

    #[test]
    fn policy_of_each_mode() {
        let ws = PathBuf::from("/x/ws");
        assert_eq!(WsPolicy::new(MemoryMode::File, Some(ws.clone())), Ok(None));
        assert_eq!(
            WsPolicy::new(MemoryMode::Lazy, Some(ws.clone())),
            Ok(Some(WsPolicy::Lazy))
        );
        assert_eq!(
            WsPolicy::new(MemoryMode::Reap, None),
            Ok(Some(WsPolicy::Lazy))
        );
        assert_eq!(
            WsPolicy::new(MemoryMode::Record, None),
            Err(RecordWithoutWs)
        );
        assert_eq!(
            WsPolicy::new(MemoryMode::Record, Some(ws.clone())),
            Ok(Some(WsPolicy::Record { ws: ws.clone() }))
        );
    }

    #[test]
    fn reap_records_until_the_ws_exists_then_prefetches() {
        let dir = std::env::temp_dir().join(format!("reap-policy-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ws = dir.join("ws");
        let _ = std::fs::remove_file(&ws);
        let reap = WsPolicy::Reap { ws: ws.clone() };
        let first = reap.resolve();
        assert_eq!(first.mode, Mode::Record);
        assert_eq!(first.record_into.as_deref(), Some(ws.as_path()));
        std::fs::write(&ws, b"x").unwrap();
        let second = reap.resolve();
        assert_eq!(second.mode, Mode::Prefetch { ws: ws.clone() });
        assert!(!second.recording());
        // Record mode records over an existing file.
        let record = WsPolicy::Record { ws: ws.clone() }.resolve();
        assert_eq!(record.mode, Mode::Record);
        assert!(remove_ws(&ws).unwrap());
        assert!(!remove_ws(&ws).unwrap());
        assert_eq!(WsPolicy::Lazy.resolve().mode, Mode::Lazy);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn reap_waits_for_a_ws_written_in_the_background_then_prefetches_it() {
        let dir = std::env::temp_dir().join(format!("reap-policy-bg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let ws = dir.join("ws");
        let _ = std::fs::remove_file(&ws);
        let reap = WsPolicy::Reap { ws: ws.clone() };
        let writing = WsWriting::start(&ws);
        assert!(ws_being_written(&ws));
        let (tx, rx) = std::sync::mpsc::channel();
        let resolver = std::thread::spawn(move || {
            let r = reap.resolve();
            tx.send(()).unwrap();
            r
        });
        // Still writing: the resolve waits.
        assert!(
            rx.recv_timeout(std::time::Duration::from_millis(100))
                .is_err()
        );
        std::fs::write(&ws, b"x").unwrap();
        drop(writing);
        let resolved = resolver.join().unwrap();
        assert_eq!(resolved.mode, Mode::Prefetch { ws: ws.clone() });
        assert!(!ws_being_written(&ws));
        wait_for_ws_writes();
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
