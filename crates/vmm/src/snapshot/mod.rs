//! Snapshots of a function at its ready point, on disk.
//!
//! A snapshot is a directory with three files (formats in `docs/snapshot-format.md`):
//! - `state`: the vCPU and guest-OS state ([`SnapshotState`]), see [`state`];
//! - `memory`: raw guest memory, sparse (zero pages are holes);
//! - `ws`: the working set, written by the first recording cold start (`reap-pager`).
//!
//! A snapshot is written into a temporary directory next to its destination and renamed
//! into place, so a crash never leaves half a snapshot.

pub mod state;

use reap_error::PathIoError;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use reap_pager::memfile::MemoryFile;
use reap_pager::policy;
use reap_pager::{MemoryMode, WsPolicy};
use serde::{Deserialize, Serialize};

use self::state::StateFormatError;
use crate::microvm::{MicroVm, VmError, VmState};

pub const STATE_FILE: &str = "state";
pub const MEMORY_FILE: &str = "memory";
pub const WS_FILE: &str = "ws";

#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A file or directory could not be used.
    #[error(transparent)]
    Io(#[from] PathIoError),
    #[error("{}", path.display())]
    Format {
        path: PathBuf,
        #[source]
        source: StateFormatError,
    },
    #[error("{}: memory file is {found} bytes, the state says {expected}", path.display())]
    MemorySize {
        path: PathBuf,
        expected: u64,
        found: u64,
    },
    #[error("{}: memory file does not belong to this state (its contents differ)", path.display())]
    MemoryMismatch { path: PathBuf },
    #[error("cannot save the microVM")]
    Vm(#[from] VmError),
}

/// Everything a restore needs besides guest memory.
#[derive(Debug, Serialize, Deserialize)]
pub struct SnapshotState {
    /// Seconds since the epoch when the snapshot was taken.
    pub created_unix: u64,
    /// Length of the memory file (= guest memory size).
    pub memory_len: u64,
    /// CRC-32 of the memory file's last page, to refuse a foreign memory file: that
    /// page holds the initial stack with its 16 random `AT_RANDOM` bytes, so it differs
    /// between any two snapshots. (Unlike a hash of the hole map, it survives a copy
    /// that does not keep the file sparse.)
    pub memory_tag: u32,
    /// Bytes of the memory file that hold data (not holes).
    pub memory_data_bytes: u64,
    pub vm: VmState,
}

/// The files of a snapshot directory.
#[derive(Debug, Clone)]
pub struct SnapshotDir {
    pub dir: PathBuf,
}

impl SnapshotDir {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn state(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    pub fn memory(&self) -> PathBuf {
        self.dir.join(MEMORY_FILE)
    }

    /// The WS file's path (whether or not it exists).
    fn ws_path(&self) -> PathBuf {
        self.dir.join(WS_FILE)
    }

    /// The WS file, if the snapshot has one (recorded by a cold start in REAP mode).
    pub fn working_set(&self) -> Option<PathBuf> {
        let path = self.ws_path();
        policy::ws_exists(&path).then_some(path)
    }

    /// Removes the WS file, so that the next cold start in REAP mode records a new one.
    /// Returns whether there was one.
    pub fn drop_working_set(&self) -> Result<bool, SnapshotError> {
        let path = self.ws_path();
        policy::remove_ws(&path).map_err(|source| {
            SnapshotError::Io(PathIoError {
                path,
                what: "cannot remove the working-set file",
                source,
            })
        })
    }

    /// The page server's policy for a cold start in `mode` from this snapshot (`None`
    /// in [`MemoryMode::File`]): the one place that decides what becomes of the WS file.
    pub fn ws_policy(&self, mode: MemoryMode) -> Option<WsPolicy> {
        // Only `Record` without a file can fail, and the snapshot always names one.
        WsPolicy::new(mode, Some(self.ws_path())).unwrap_or(None)
    }

    /// Reads and checks the state file.
    pub fn read_state(&self) -> Result<SnapshotState, SnapshotError> {
        let path = self.state();
        let io_err = |what| {
            let path = path.clone();
            move |source| SnapshotError::Io(PathIoError { path, what, source })
        };
        let file = File::open(&path).map_err(io_err("cannot open the snapshot state"))?;
        let len = file
            .metadata()
            .map_err(io_err("cannot stat the snapshot state"))?
            .len();
        if len > state::MAX_PAYLOAD + state::HEADER_LEN as u64 {
            return Err(SnapshotError::Format {
                path,
                source: StateFormatError::TooLarge(len),
            });
        }
        let bytes = fs::read(&path).map_err(io_err("cannot read the snapshot state"))?;
        state::decode(&bytes).map_err(|source| SnapshotError::Format { path, source })
    }

    /// Opens the memory file and checks it against `state`.
    pub fn open_memory(&self, state: &SnapshotState) -> Result<MemoryFile, SnapshotError> {
        let path = self.memory();
        let memory = MemoryFile::open(&path).map_err(|e| {
            SnapshotError::Io(PathIoError {
                path: path.clone(),
                what: "cannot open the memory file",
                source: io::Error::other(e),
            })
        })?;
        if memory.len() != state.memory_len {
            return Err(SnapshotError::MemorySize {
                path,
                expected: state.memory_len,
                found: memory.len(),
            });
        }
        let tag = memory_tag(&memory).map_err(|source| {
            SnapshotError::Io(PathIoError {
                path: path.clone(),
                what: "cannot read the memory file",
                source,
            })
        })?;
        if tag != state.memory_tag {
            return Err(SnapshotError::MemoryMismatch { path });
        }
        Ok(memory)
    }

    /// Drops the snapshot's files from the page cache, to measure a cold start.
    pub fn evict_from_page_cache(&self) -> Result<(), SnapshotError> {
        for path in [self.state(), self.memory(), self.ws_path()] {
            match File::open(&path) {
                Ok(f) => reap_pager::memfile::fadvise_dontneed(&f).map_err(|source| {
                    SnapshotError::Io(PathIoError {
                        path,
                        what: "cannot evict from the page cache",
                        source,
                    })
                })?,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(source) => {
                    return Err(SnapshotError::Io(PathIoError {
                        path,
                        what: "cannot open",
                        source,
                    }));
                }
            }
        }
        Ok(())
    }

    /// Snapshots `vm` (at its ready point) into this directory, replacing any snapshot
    /// there, atomically.
    pub fn write(&self, vm: &mut MicroVm) -> Result<SnapshotState, SnapshotError> {
        let vm_state = vm.save()?;
        let parent = self
            .dir
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."));
        let name = self
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "snapshot".into());
        let io_err = |path: &Path, what| {
            let path = path.to_path_buf();
            move |source| SnapshotError::Io(PathIoError { path, what, source })
        };
        fs::create_dir_all(parent).map_err(io_err(parent, "cannot create the directory"))?;
        let tmp = parent.join(format!(".{name}.tmp-{}", std::process::id()));
        let _ = fs::remove_dir_all(&tmp);
        fs::create_dir(&tmp).map_err(io_err(&tmp, "cannot create the directory"))?;
        let staged = SnapshotDir::new(&tmp);

        let mem_path = staged.memory();
        let mem_file =
            File::create(&mem_path).map_err(io_err(&mem_path, "cannot create the memory file"))?;
        vm.memory
            .dump_sparse(&mem_file)
            .map_err(io_err(&mem_path, "cannot write the memory file"))?;
        mem_file
            .sync_all()
            .map_err(io_err(&mem_path, "cannot sync the memory file"))?;
        drop(mem_file);
        let memory = MemoryFile::open(&mem_path).map_err(|e| {
            SnapshotError::Io(PathIoError {
                path: mem_path.clone(),
                what: "cannot reopen the memory file",
                source: io::Error::other(e),
            })
        })?;

        let snapshot = SnapshotState {
            created_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            memory_len: memory.len(),
            memory_tag: memory_tag(&memory)
                .map_err(io_err(&mem_path, "cannot read the memory file"))?,
            memory_data_bytes: memory.data_bytes(),
            vm: vm_state,
        };
        let state_path = staged.state();
        let bytes = state::encode(&snapshot).map_err(|source| SnapshotError::Format {
            path: state_path.clone(),
            source,
        })?;
        let mut f = File::create(&state_path)
            .map_err(io_err(&state_path, "cannot create the state file"))?;
        f.write_all(&bytes)
            .and_then(|()| f.sync_all())
            .map_err(io_err(&state_path, "cannot write the state file"))?;
        sync_dir(&tmp).map_err(io_err(&tmp, "cannot sync the directory"))?;

        // Swap the new snapshot in: the old one (if any) moves aside first, so that at
        // every moment the destination is either the old or the new, complete snapshot.
        let old = parent.join(format!(".{name}.old-{}", std::process::id()));
        let had_old = self.dir.exists();
        if had_old {
            let _ = fs::remove_dir_all(&old);
            fs::rename(&self.dir, &old)
                .map_err(io_err(&self.dir, "cannot move the old snapshot aside"))?;
        }
        fs::rename(&tmp, &self.dir)
            .map_err(io_err(&self.dir, "cannot move the snapshot into place"))?;
        sync_dir(parent).map_err(io_err(parent, "cannot sync the directory"))?;
        if had_old {
            let _ = fs::remove_dir_all(&old);
        }
        Ok(snapshot)
    }
}

/// See [`SnapshotState::memory_tag`].
fn memory_tag(memory: &MemoryFile) -> io::Result<u32> {
    let mut page = vec![0u8; 4096];
    let at = memory
        .len()
        .checked_sub(4096)
        .ok_or_else(|| io::Error::other("memory file shorter than a page"))?;
    memory.read_at(at, &mut page)?;
    Ok(crc32fast::hash(&page))
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}
