//! Snapshots of a function at its ready point, on disk.
//!
//! A snapshot is a directory with three files (formats in `docs/snapshot-format.md`):
//! - `state`: the vCPU and guest-OS state ([`SnapshotState`]), see [`state`];
//! - `memory`: raw guest memory, sparse (zero pages are holes);
//! - `memory.sum`: the checksums of the memory file's data pages ([`PageSums`]), which
//!   the state names by length and CRC;
//! - `ws`: the working set, written by the first recording cold start (`reap-pager`).
//!
//! A snapshot is written into a temporary directory next to its destination and renamed
//! into place, so a crash never leaves half a snapshot.

pub mod state;

use reap_error::PathIoError;
use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use reap_pager::memfile::MemoryFile;
use reap_pager::policy;
use reap_pager::sums::{PageSums, SumsError};
use reap_pager::{MemoryMode, WsPolicy};
use serde::{Deserialize, Serialize};

use self::state::StateFormatError;
use crate::arch::layout;
use crate::microvm::{MicroVm, VmError, VmState};

/// File name of the state file in a snapshot directory.
pub const STATE_FILE: &str = "state";
/// File name of the memory file in a snapshot directory.
pub const MEMORY_FILE: &str = "memory";
/// File name of the working-set file in a snapshot directory.
pub const WS_FILE: &str = "ws";
/// File name of the memory checksum file in a snapshot directory.
pub const SUMS_FILE: &str = "memory.sum";

/// Errors reading, checking or writing a snapshot.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// A file or directory could not be used.
    #[error(transparent)]
    Io(#[from] PathIoError),
    /// The state file is not a valid state file.
    #[error("{}", path.display())]
    Format {
        /// The state file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: StateFormatError,
    },
    /// The memory file's size is not the one the state records.
    #[error("{}: memory file is {found} bytes, the state says {expected}", path.display())]
    MemorySize {
        /// The memory file.
        path: PathBuf,
        /// The size the state records.
        expected: u64,
        /// The file's size.
        found: u64,
    },
    /// The memory file is not the one the state was taken with.
    #[error("{}: memory file does not belong to this state (its contents differ)", path.display())]
    MemoryMismatch {
        /// The memory file.
        path: PathBuf,
    },
    /// The state contradicts itself (e.g. memory sizes, address-space invariants).
    #[error("{}: inconsistent snapshot state: {what}", path.display())]
    Inconsistent {
        /// The state file.
        path: PathBuf,
        /// What contradicts what.
        what: &'static str,
    },
    /// The memory checksum file cannot be read or is not a valid one.
    #[error("{}", path.display())]
    Sums {
        /// The checksum file.
        path: PathBuf,
        /// What is wrong with it.
        #[source]
        source: SumsError,
    },
    /// The memory checksum file is not the one the state names.
    #[error("{}: memory checksum file does not belong to this state", path.display())]
    SumsMismatch {
        /// The checksum file.
        path: PathBuf,
    },
    /// The memory file does not match its checksums (the error names the file and the
    /// offset of the first bad page).
    #[error(transparent)]
    MemoryDamaged(SumsError),
    /// The microVM's state could not be saved.
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
    /// The memory checksum file (`memory.sum`), absent in snapshots taken before it
    /// existed (their memory is not verified: a warning says so).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_sums: Option<MemorySums>,
    /// The vCPU and guest-OS state.
    pub vm: VmState,
}

impl SnapshotState {
    /// Checks what a restore relies on beyond the format: the memory sizes agree and
    /// are a size the VMM builds, and the guest's address space is consistent. The
    /// checksum only catches damage; a state file made by hand passes it.
    pub fn check(&self) -> Result<(), &'static str> {
        let size = self.vm.mem_size;
        if !(layout::MIN_MEM_SIZE..=layout::MAX_MEM_SIZE).contains(&size)
            || !size.is_multiple_of(layout::LARGE_PAGE_SIZE)
        {
            return Err("guest memory size out of range");
        }
        if self.memory_len != size || self.vm.os.mm.mem_size() != size {
            return Err("memory sizes disagree");
        }
        if self.memory_data_bytes > self.memory_len {
            return Err("more data bytes than memory");
        }
        self.check_threads()?;
        self.vm.os.mm.check()
    }

    /// Every thread but the one on the vCPU has its registers saved, and only those.
    fn check_threads(&self) -> Result<(), &'static str> {
        let parked = &self.vm.threads;
        let Some(table) = &self.vm.os.threads else {
            return if parked.is_empty() {
                Ok(())
            } else {
                Err("thread registers without a thread table")
            };
        };
        table.check()?;
        let current = table.current_tid();
        for (i, p) in parked.iter().enumerate() {
            if p.xsave.len() != 1024 {
                return Err("a thread's XSAVE area has the wrong size");
            }
            if !table.contains(p.tid) || p.tid == current {
                return Err("registers saved for a thread not in the table");
            }
            if parked[..i].iter().any(|q| q.tid == p.tid) {
                return Err("a thread's registers are saved twice");
            }
        }
        let without = table
            .iter()
            .filter(|t| t.tid != current)
            .any(|t| !parked.iter().any(|p| p.tid == t.tid));
        if without {
            return Err("a thread has no saved registers");
        }
        Ok(())
    }
}

/// What the state records of the memory checksum file, to bind it to the state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemorySums {
    /// The file's length.
    pub file_len: u64,
    /// The file's own CRC-32 ([`PageSums::file_crc`]).
    pub crc: u32,
    /// Checksums in it (data pages of the memory file).
    pub pages: u64,
}

/// The files of a snapshot directory.
#[derive(Debug, Clone)]
pub struct SnapshotDir {
    /// The snapshot directory.
    pub dir: PathBuf,
}

impl SnapshotDir {
    /// The snapshot directory `dir` (nothing is read until asked).
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    /// The state file's path.
    pub fn state(&self) -> PathBuf {
        self.dir.join(STATE_FILE)
    }

    /// The memory file's path.
    pub fn memory(&self) -> PathBuf {
        self.dir.join(MEMORY_FILE)
    }

    /// The memory checksum file's path.
    pub fn sums(&self) -> PathBuf {
        self.dir.join(SUMS_FILE)
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
    pub fn read_state(&self) -> Result<Arc<SnapshotState>, SnapshotError> {
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
        let mut bytes = Vec::new();
        // At most one byte past the cap: a file that grew since is refused by `decode`.
        io::Read::read_to_end(
            &mut io::Read::take(&file, state::MAX_PAYLOAD + state::HEADER_LEN as u64 + 1),
            &mut bytes,
        )
        .map_err(io_err("cannot read the snapshot state"))?;
        // The same bytes as a file decoded and checked before: the same state. (Keyed by
        // contents, not by times: a file rewritten in place within the clock's
        // granularity keeps its times.)
        let cache = STATE_CACHE.load(std::sync::atomic::Ordering::Relaxed);
        if cache
            && let Some((cached, state)) = states().get(&path)
            && *cached == bytes
        {
            return Ok(Arc::clone(state));
        }
        let state: SnapshotState =
            state::decode(&bytes).map_err(|source| SnapshotError::Format {
                path: path.clone(),
                source,
            })?;
        state.check().map_err(|what| SnapshotError::Inconsistent {
            path: path.clone(),
            what,
        })?;
        let state = Arc::new(state);
        if cache {
            let mut states = states();
            if states.len() >= MAX_CACHED_STATES {
                states.clear();
            }
            states.insert(path, (bytes, Arc::clone(&state)));
        }
        Ok(state)
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
        let Some(recorded) = state.memory_sums else {
            warn_unverified(&self.dir);
            return Ok(memory);
        };
        let sums_path = self.sums();
        let sums = PageSums::load(&sums_path).map_err(|source| match source {
            // It names the file.
            SumsError::Io(e) => SnapshotError::Io(e),
            source => SnapshotError::Sums {
                path: sums_path.clone(),
                source,
            },
        })?;
        if sums.file_crc() != recorded.crc
            || sums.file_len() != recorded.file_len
            || sums.len() as u64 != recorded.pages
        {
            return Err(SnapshotError::SumsMismatch { path: sums_path });
        }
        memory.with_sums(sums).map_err(SnapshotError::MemoryDamaged)
    }

    /// Before guest memory is mapped from `memory` (`file` mode, where the kernel
    /// reads pages in without asking anyone), checks the whole file against its
    /// checksums, unless this process has verified (or written) this very file and it
    /// has not changed since: same device, inode, size, modification and change times,
    /// and the same checksums. Returns whether it read the file. A snapshot without
    /// checksums is not verified.
    pub fn verify_for_mapping(&self, memory: &MemoryFile) -> Result<bool, SnapshotError> {
        Ok(self.verified_stamp(memory)?.is_some_and(|(_, read)| read))
    }

    /// [`SnapshotDir::verify_for_mapping`], returning the stamp of the verified file and
    /// whether it was read now (`None` for a snapshot without checksums).
    pub fn verified_stamp(
        &self,
        memory: &MemoryFile,
    ) -> Result<Option<(Stamp, bool)>, SnapshotError> {
        let Some(sums) = memory.sums() else {
            return Ok(None);
        };
        let io_err = |source| {
            SnapshotError::Io(PathIoError {
                path: memory.path().to_path_buf(),
                what: "cannot stat the memory file",
                source,
            })
        };
        let stamp = Stamp::of(memory, sums).map_err(io_err)?;
        if verified().contains(&stamp) {
            return Ok(Some((stamp, false)));
        }
        sums.verify_file(memory)
            .map_err(SnapshotError::MemoryDamaged)?;
        verified().insert(stamp);
        Ok(Some((stamp, true)))
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

        let sums = PageSums::compute(&memory).map_err(|source| SnapshotError::Sums {
            path: mem_path.clone(),
            source,
        })?;
        let sums_path = staged.sums();
        let (sums_len, sums_crc) =
            sums.write(&sums_path)
                .map_err(|source| SnapshotError::Sums {
                    path: sums_path.clone(),
                    source,
                })?;
        // The sums were computed from this file: it is verified as it stands.
        if let Ok(stamp) = Stamp::of(&memory, &sums) {
            verified().insert(stamp);
        }

        let snapshot = SnapshotState {
            created_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            memory_len: memory.len(),
            memory_tag: memory_tag(&memory)
                .map_err(io_err(&mem_path, "cannot read the memory file"))?,
            memory_data_bytes: memory.data_bytes(),
            memory_sums: Some(MemorySums {
                file_len: sums_len,
                crc: sums_crc,
                pages: sums.len() as u64,
            }),
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

/// What identifies a memory file as verified against its checksums in this process:
/// device, inode, size, modification and change times (the change time cannot be set
/// by hand, and every write or truncation moves it), and the checksums' CRC.
///
/// A process that verified a file can hand its stamp to another ([`trust_verified`]),
/// which then skips the verification as long as the file it opens has the same stamp.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Stamp {
    dev: u64,
    ino: u64,
    size: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
    sums_crc: u32,
}

/// Takes `stamp` as verified in this process: [`SnapshotDir::verify_for_mapping`] skips
/// a memory file with this very stamp (a process that verified it sent it).
pub fn trust_verified(stamp: Stamp) {
    verified().insert(stamp);
}

impl Stamp {
    fn of(memory: &MemoryFile, sums: &PageSums) -> io::Result<Stamp> {
        use std::os::unix::fs::MetadataExt;
        let m = memory.file().metadata()?;
        Ok(Stamp {
            dev: m.dev(),
            ino: m.ino(),
            size: m.size(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
            sums_crc: sums.file_crc(),
        })
    }
}

/// Decoded state files by path, with the bytes they were decoded from.
type StateCache = HashMap<PathBuf, (Vec<u8>, Arc<SnapshotState>)>;

/// Whether [`SnapshotDir::read_state`] reuses states it decoded before (on by default).
static STATE_CACHE: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(true);

/// Turns the process's cache of decoded state files on or off (off: every
/// [`SnapshotDir::read_state`] reads and decodes the file, e.g. to measure the cache).
pub fn set_state_cache(enabled: bool) {
    STATE_CACHE.store(enabled, std::sync::atomic::Ordering::Relaxed);
    if !enabled {
        states().clear();
    }
}

/// Most state files the cache keeps; past it, it starts afresh.
const MAX_CACHED_STATES: usize = 256;

/// The state files this process decoded and checked, by path, with their bytes.
fn states() -> std::sync::MutexGuard<'static, StateCache> {
    static STATES: std::sync::OnceLock<std::sync::Mutex<StateCache>> = std::sync::OnceLock::new();
    STATES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// The memory files verified (or written) by this process, in their state then.
fn verified() -> std::sync::MutexGuard<'static, std::collections::HashSet<Stamp>> {
    static VERIFIED: std::sync::OnceLock<std::sync::Mutex<std::collections::HashSet<Stamp>>> =
        std::sync::OnceLock::new();
    VERIFIED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

/// Warns, once per snapshot directory and process, that its memory is not verified.
fn warn_unverified(dir: &Path) {
    static WARNED: std::sync::OnceLock<std::sync::Mutex<std::collections::HashSet<PathBuf>>> =
        std::sync::OnceLock::new();
    let mut warned = WARNED
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if warned.insert(dir.to_path_buf()) {
        tracing::warn!(
            "snapshot {} has no memory checksums (taken by an older build): its memory file \
             is not verified; deploy the function again to add them",
            dir.display()
        );
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

#[cfg(test)]
mod proptests {
    //! Property tests of reading a snapshot's state: a state file whose JSON payload was
    //! changed (and resealed, as a crafted file would be), or a damaged or resized file,
    //! is refused, or gives a state that a restore can use without panicking.

    use super::*;
    use crate::arch::VcpuState;
    use crate::arch::layout::PAGE_SIZE;
    use crate::guest_os::mm::AddressSpace;
    use crate::guest_os::{Counters, GuestOsState};
    use proptest::prelude::*;
    use proptest::sample::Index;
    use proptest::test_runner::{Config, TestRunner};
    use serde_json::Value;
    use std::time::{Duration, Instant};

    const MEM: u64 = 64 << 20;

    fn config(cases: u32) -> Config {
        Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        }
    }

    struct Dir(SnapshotDir);

    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0.dir);
        }
    }

    fn dir(name: &str) -> Dir {
        let d =
            std::env::temp_dir().join(format!("reap-snapshot-prop-{}-{name}", std::process::id()));
        let _ = fs::remove_dir_all(&d);
        fs::create_dir_all(&d).unwrap();
        Dir(SnapshotDir::new(d))
    }

    /// A state as a snapshot of a program with a heap and three mappings has it.
    fn state() -> SnapshotState {
        let mut mm = AddressSpace::new(MEM, 0x60_0000);
        mm.brk(0x60_0000 + 20_000);
        mm.mmap(0, 5 * PAGE_SIZE, false, false).unwrap();
        mm.mmap(0, 3 * PAGE_SIZE, false, false).unwrap();
        mm.mmap(0x100_0000, PAGE_SIZE, true, false).unwrap();
        let vcpu = VcpuState {
            cpuid: vec![Default::default(); 3],
            regs: Default::default(),
            sregs: Default::default(),
            xcrs: Default::default(),
            xsave: Default::default(),
            msrs: vec![Default::default(); 4],
        };
        SnapshotState {
            created_unix: 1_700_000_000,
            memory_len: MEM,
            memory_tag: 0x1234_5678,
            memory_data_bytes: 3 << 20,
            memory_sums: None,
            vm: VmState {
                mem_size: MEM,
                vcpu,
                os: GuestOsState {
                    mm,
                    fs_base: 0x7f_0000,
                    gs_base: 0,
                    threads: None,
                    counters: Counters::default(),
                    fs: crate::guest_os::fs::Vfs::none().save(),
                },
                threads: Vec::new(),
            },
        }
    }

    /// Where a change goes: a member of an object, by its path from the root.
    type Path = Vec<Step>;

    #[derive(Debug, Clone)]
    enum Step {
        Key(String),
        At(usize),
    }

    /// Every object member and array element, except inside arrays of numbers (the
    /// byte arrays of the KVM structures), which count as one value.
    fn slots(v: &Value, path: &mut Path, out: &mut Vec<Path>) {
        match v {
            Value::Object(m) => {
                for (k, x) in m {
                    path.push(Step::Key(k.clone()));
                    out.push(path.clone());
                    slots(x, path, out);
                    path.pop();
                }
            }
            Value::Array(a) if !a.iter().all(Value::is_number) => {
                for (i, x) in a.iter().enumerate() {
                    path.push(Step::At(i));
                    out.push(path.clone());
                    slots(x, path, out);
                    path.pop();
                }
            }
            _ => {}
        }
    }

    fn get<'a>(v: &'a mut Value, path: &[Step]) -> Option<&'a mut Value> {
        path.iter().try_fold(v, |v, s| match s {
            Step::Key(k) => v.get_mut(k.as_str()),
            Step::At(i) => v.get_mut(*i),
        })
    }

    /// A change to one value of the payload.
    #[derive(Debug, Clone)]
    enum Change {
        /// Another number (in an array of numbers: one element).
        Number(u64, Index),
        /// A negative or fractional number.
        Signed(i64),
        Float(f64),
        /// Another type.
        Text(String),
        Null,
        Bool(bool),
        /// The member is removed.
        Remove,
        /// A member's name becomes this number (a mapping's start address).
        Rename(u64),
        /// An unknown member is added beside it.
        Unknown,
        /// An array grows by copies of its first element, or is cut.
        Grow(u16),
        Cut(Index),
    }

    /// Numbers on the restore's boundaries, and any number.
    fn number() -> impl Strategy<Value = u64> {
        prop_oneof![
            prop::sample::select(vec![
                0,
                1,
                PAGE_SIZE - 1,
                PAGE_SIZE,
                2 << 20,
                0x60_0000,
                MEM - (8 << 20),
                MEM - PAGE_SIZE,
                MEM,
                MEM + PAGE_SIZE,
                4 << 30,
                1 << 40,
                1 << 60,
                u64::MAX - PAGE_SIZE + 1,
                u64::MAX,
            ]),
            (0..MEM / PAGE_SIZE + 2).prop_map(|p| p * PAGE_SIZE),
            0..MEM + (1 << 20),
            any::<u64>(),
        ]
    }

    fn change() -> impl Strategy<Value = Change> {
        prop_oneof![
            6 => (number(), any::<Index>()).prop_map(|(n, i)| Change::Number(n, i)),
            1 => any::<i64>().prop_map(Change::Signed),
            1 => any::<f64>().prop_map(Change::Float),
            1 => ".{0,8}".prop_map(Change::Text),
            1 => Just(Change::Null),
            1 => any::<bool>().prop_map(Change::Bool),
            1 => Just(Change::Remove),
            2 => number().prop_map(Change::Rename),
            1 => Just(Change::Unknown),
            1 => (1..2000u16).prop_map(Change::Grow),
            1 => any::<Index>().prop_map(Change::Cut),
        ]
    }

    fn apply(root: &mut Value, path: &[Step], change: &Change) {
        let Some((last, parent)) = path.split_last() else {
            return;
        };
        let Some(parent) = get(root, parent) else {
            return;
        };
        if let (Value::Object(m), Step::Key(k)) = (&mut *parent, last) {
            match change {
                Change::Remove => {
                    m.remove(k);
                    return;
                }
                Change::Rename(n) => {
                    if let Some(v) = m.remove(k) {
                        m.insert(n.to_string(), v);
                    }
                    return;
                }
                Change::Unknown => {
                    m.insert("unknown".into(), Value::from(1));
                    return;
                }
                _ => {}
            }
        }
        let Some(v) = get(parent, std::slice::from_ref(last)) else {
            return;
        };
        match change {
            Change::Number(n, i) => match v {
                Value::Array(a) if !a.is_empty() => {
                    let at = i.index(a.len());
                    a[at] = Value::from(*n);
                }
                _ => *v = Value::from(*n),
            },
            Change::Signed(n) => *v = Value::from(*n),
            Change::Float(f) => *v = Value::from(*f),
            Change::Text(s) => *v = Value::from(s.clone()),
            Change::Null => *v = Value::Null,
            Change::Bool(b) => *v = Value::from(*b),
            Change::Grow(n) => {
                if let Value::Array(a) = v
                    && let Some(first) = a.first().cloned()
                {
                    a.extend(std::iter::repeat_n(first, usize::from(*n)));
                }
            }
            Change::Cut(i) => {
                if let Value::Array(a) = v {
                    let len = i.index(a.len() + 1);
                    a.truncate(len);
                }
            }
            Change::Remove | Change::Rename(_) | Change::Unknown => {}
        }
    }

    /// One memory call of the guest, with the arguments it chose.
    #[derive(Debug, Clone)]
    enum Call {
        Brk(u64),
        Mmap(u64, u64, bool, bool),
        Munmap(u64, u64),
        Mremap(u64, u64, u64, bool, Option<u64>),
    }

    fn call() -> impl Strategy<Value = Call> {
        prop_oneof![
            number().prop_map(Call::Brk),
            (number(), number(), any::<bool>(), any::<bool>())
                .prop_map(|(a, l, f, n)| Call::Mmap(a, l, f, n)),
            (number(), number()).prop_map(|(a, l)| Call::Munmap(a, l)),
            (
                number(),
                number(),
                number(),
                any::<bool>(),
                prop::option::of(number())
            )
                .prop_map(|(o, ol, nl, m, t)| Call::Mremap(o, ol, nl, m, t)),
        ]
    }

    /// Uses a restored state the way a restore and its guest do: the memory sizes
    /// must agree, every range the address space asks the VMM to zero or copy must be
    /// what `GuestMemory` accepts (page aligned, inside guest memory), and the address
    /// space stays one that `check` accepts.
    fn use_state(state: &SnapshotState, calls: &[Call]) -> Result<(), TestCaseError> {
        let size = state.vm.mem_size;
        prop_assert_eq!(state.memory_len, size);
        let mut mm = state.vm.os.mm.clone();
        let _ = mm.mapped_bytes();
        let _ = mm.brk_range();
        let in_memory = |s: u64, e: u64| {
            s.is_multiple_of(PAGE_SIZE) && e.is_multiple_of(PAGE_SIZE) && s <= e && e <= size
        };
        for c in calls {
            let discards = match *c {
                Call::Brk(r) => mm.brk(r).1,
                Call::Mmap(a, l, f, n) => mm.mmap(a, l, f, n).map(|r| r.1).unwrap_or_default(),
                Call::Munmap(a, l) => mm.munmap(a, l).unwrap_or_default(),
                Call::Mremap(o, ol, nl, m, t) => match mm.mremap(o, ol, nl, m, t) {
                    Ok((_, copy, discards)) => {
                        if let Some((from, to, len)) = copy {
                            prop_assert!(from.checked_add(len).is_some_and(|e| e <= size));
                            prop_assert!(to.checked_add(len).is_some_and(|e| e <= size));
                        }
                        discards
                    }
                    Err(_) => Vec::new(),
                },
            };
            for (s, e) in discards {
                prop_assert!(in_memory(s, e), "{:?} asks to zero {:#x}..{:#x}", c, s, e);
            }
            let _ = mm.mapped_bytes();
            // What the guest can reach, a later snapshot saves: it must pass the check.
            prop_assert_eq!(mm.check(), Ok(()), "after {:?}", c);
        }
        Ok(())
    }

    #[test]
    fn a_state_is_decoded_once_until_its_bytes_change() {
        let d = dir("cache");
        let first = state();
        fs::write(d.0.state(), state::encode(&first).unwrap()).unwrap();
        let a = d.0.read_state().unwrap();
        let b = d.0.read_state().unwrap();
        assert!(Arc::ptr_eq(&a, &b), "the same bytes are decoded once");
        // Rewritten at once with the same length: read again, never the cached state.
        let mut second = state();
        second.created_unix = first.created_unix + 1;
        let bytes = state::encode(&second).unwrap();
        assert_eq!(bytes.len(), state::encode(&first).unwrap().len());
        fs::write(d.0.state(), &bytes).unwrap();
        let c = d.0.read_state().unwrap();
        assert!(!Arc::ptr_eq(&a, &c));
        assert_eq!(c.created_unix, second.created_unix);
        // A flipped byte is refused, though a good state of that file is cached.
        let mut damaged = bytes.clone();
        let last = damaged.len() - 2;
        damaged[last] ^= 0x01;
        fs::write(d.0.state(), &damaged).unwrap();
        assert!(d.0.read_state().is_err());
        fs::write(d.0.state(), &bytes).unwrap();
        assert!(Arc::ptr_eq(&c, &d.0.read_state().unwrap()));
    }

    #[test]
    fn changed_payloads_are_refused_or_usable() {
        let d = dir("payload");
        let base = serde_json::to_value(state()).unwrap();
        let mut all = Vec::new();
        slots(&base, &mut Vec::new(), &mut all);
        // Half the changes go to the sizes and the address space, which the format
        // cannot check.
        let sizes: Vec<Path> = all
            .iter()
            .filter(|p| {
                let names: Vec<&str> = p
                    .iter()
                    .filter_map(|s| match s {
                        Step::Key(k) => Some(k.as_str()),
                        Step::At(_) => None,
                    })
                    .collect();
                names.starts_with(&["vm", "os", "mm"])
                    || names == ["vm", "mem_size"]
                    || names.first().is_some_and(|n| n.starts_with("memory_"))
            })
            .cloned()
            .collect();
        let cases = (
            prop::collection::vec((any::<bool>(), any::<Index>(), change()), 1..4),
            prop::collection::vec(call(), 0..12),
        );
        TestRunner::new(config(1024))
            .run(&cases, |(changes, calls)| {
                let mut value = base.clone();
                for (focus, at, c) in &changes {
                    let from = if *focus { &sizes } else { &all };
                    apply(&mut value, &from[at.index(from.len())], c);
                }
                let bytes = state::encode(&value).unwrap();
                fs::write(d.0.state(), &bytes).unwrap();
                if let Ok(s) = d.0.read_state() {
                    use_state(&s, &calls)?;
                }
                Ok(())
            })
            .unwrap();
    }

    #[test]
    fn crafted_state_with_the_heap_start_above_the_break_is_refused() {
        // Found by `changed_payloads_are_refused_or_usable`: this state passed the
        // format's checks, and the address space then underflowed in `mapped_bytes`.
        let d = dir("crafted");
        let mut value = serde_json::to_value(state()).unwrap();
        value["vm"]["os"]["mm"]["brk_start"] = Value::from(0x380_0000u64);
        fs::write(d.0.state(), state::encode(&value).unwrap()).unwrap();
        assert!(matches!(
            d.0.read_state(),
            Err(SnapshotError::Inconsistent { .. })
        ));
    }

    #[test]
    fn the_real_state_is_read_back_and_usable() {
        let d = dir("real");
        let bytes = state::encode(&state()).unwrap();
        fs::write(d.0.state(), &bytes).unwrap();
        let s = d.0.read_state().unwrap();
        assert_eq!(
            serde_json::to_value(&*s).unwrap(),
            serde_json::to_value(state()).unwrap()
        );
        TestRunner::new(config(256))
            .run(&prop::collection::vec(call(), 0..24), |calls| {
                use_state(&s, &calls)
            })
            .unwrap();
    }

    #[test]
    fn damaged_or_resized_state_files_are_refused_without_reading_them_whole() {
        // Any change to the bytes of a real state file, or a length past the cap (a
        // sparse file of up to 2^44 bytes): refused, from the header or the length.
        let d = dir("file");
        let good = state::encode(&state()).unwrap();
        let cases = (
            prop::option::of((any::<Index>(), 1..=255u8)),
            prop::option::of(any::<Index>()),
            prop::option::of((0..44u32, any::<u64>())),
        );
        TestRunner::new(config(64))
            .run(&cases, |(flip, cut, grow)| {
                let mut bytes = good.clone();
                if let Some((at, mask)) = flip {
                    let at = at.index(bytes.len());
                    bytes[at] ^= mask;
                }
                if let Some(cut) = cut {
                    bytes.truncate(cut.index(bytes.len() + 1));
                }
                fs::write(d.0.state(), &bytes).unwrap();
                let mut len = bytes.len() as u64;
                if let Some((bits, extra)) = grow {
                    len += extra % (1 << bits) + 1;
                    File::options()
                        .write(true)
                        .open(d.0.state())
                        .unwrap()
                        .set_len(len)
                        .unwrap();
                }
                let started = Instant::now();
                let r = d.0.read_state();
                prop_assert!(started.elapsed() < Duration::from_secs(2));
                prop_assert_eq!(r.is_ok(), bytes == good && grow.is_none(), "{:?}", r.err());
                Ok(())
            })
            .unwrap();
    }
}
