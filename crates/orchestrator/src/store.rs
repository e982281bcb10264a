//! The function store: each deployed function's manifest, binary and snapshot, on disk
//! under `REAP_HOME` (default `~/.local/share/reap`).
//!
//! ```text
//! REAP_HOME/
//!   functions/NAME/current            symlink to the live version: versions/ID
//!   functions/NAME/versions/ID/       manifest.json, binary, snapshot/{state,memory,ws},
//!                                     rootfs/ (a program from a root file system: its image)
//!   logs/NAME.log, NAME.log.1         the function's stderr (all instances), capped
//!   locks/NAME.lock                   held (flock) while a deploy or remove changes NAME
//!   staging/                          deploys and uploads in progress
//!   server.json                       address of a running `reap serve`, if any
//! ```
//!
//! A deploy builds the whole version in `staging/`, renames it into `versions/` and
//! then switches `current` with an atomic symlink rename: readers see the old version
//! or the new one, never half of one. The rename into `versions/`, the switch and the
//! removal of older versions happen under an exclusive `flock` on `locks/NAME.lock`, so
//! concurrent deploys of one name, in one process or several (the CLI and a server),
//! take turns: each ends with its own version live until a later one replaces it, and
//! none removes the version `current` points to. Temporary names carry the process id
//! and a per-process counter. Whatever a crash leaves in `staging/` is removed (and
//! reported) when the store is opened; a function whose `current` is missing or
//! unreadable is reported and not served.
//!
//! A function from a root file system (`deploy_rootfs`, a directory; `deploy_image`,
//! an OCI image archive, see [`crate::oci`]) keeps its own copy of the image in its
//! version's `rootfs/`: the function does not depend on the directory or archive it
//! came from. The snapshot records the image's path as it is once the version is live
//! (`functions/NAME/versions/ID/rootfs`, absolute); while the version is built in
//! `staging/`, the boot reads the staged copy under that path
//! ([`reap_vmm::guest_os::fs::image::provide`]). Instance processes get a descriptor of
//! the directory and read it, read-only, beneath their jail.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::FailureKind;
use crate::oci::{self, OciError};
use reap_vmm::guest_os::Sink;
use reap_vmm::guest_os::fs::RootFs;
use reap_vmm::instance::Instance;
use reap_vmm::microvm::MicroVmConfig;
use reap_vmm::snapshot::SnapshotDir;

/// Format version of `manifest.json`.
const MANIFEST_VERSION: u32 = 1;
/// Largest binary the store accepts.
pub const MAX_BINARY_BYTES: u64 = 512 << 20;
/// Default cap of a function's log: past it the log is rotated to `NAME.log.1`.
pub const DEFAULT_LOG_MAX_BYTES: u64 = 8 << 20;
/// Largest manifest the store reads.
const MAX_MANIFEST_BYTES: u64 = 1 << 20;
/// The directory of a version that holds its image (a program from a root file system).
const IMAGE_DIR: &str = "rootfs";

/// Why the store could not do something.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// A file system operation failed.
    #[error("{}: {what}", path.display())]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// What the store was doing.
        what: &'static str,
        /// The error.
        #[source]
        source: io::Error,
    },
    /// The name is not a valid function name.
    #[error(
        "invalid function name {0:?}: use 1-64 characters of a-z, 0-9, '-' and '_', starting with a letter or digit"
    )]
    BadName(String),
    /// No function of that name is in the store.
    #[error("no function named {0:?}")]
    NotFound(String),
    /// The function's directory is there but its live version cannot be read.
    #[error("function {name:?} is damaged: {why}")]
    Damaged {
        /// The function.
        name: String,
        /// What is wrong.
        why: String,
    },
    /// The binary is over [`MAX_BINARY_BYTES`].
    #[error("binary is {0} bytes, more than the {MAX_BINARY_BYTES}-byte limit")]
    BinaryTooLarge(u64),
    /// The uploaded binary is not an ELF file.
    #[error("the binary is not an ELF file")]
    NotElf,
    /// An environment entry is not `KEY=VALUE`.
    #[error("invalid environment entry {0:?}: expected KEY=VALUE")]
    BadEnv(String),
    /// The binary did not boot to its ready point or could not be snapshotted.
    #[error("the function did not deploy")]
    Deploy(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The root file system to deploy is not a directory that can be read.
    #[error("the root file system {} is not a readable directory", .0.display())]
    BadRootfs(PathBuf, #[source] io::Error),
    /// The image archive cannot be unpacked.
    #[error("cannot unpack the image")]
    Image(#[source] OciError),
    /// A deploy from a root file system that names no program.
    #[error("no program to run: give its path in the root file system (-- PROGRAM ARGS)")]
    NoProgram,
    /// Neither the deploy nor the image's config names a program.
    #[error(
        "no program to run: the image config has neither Entrypoint nor Cmd, and the deploy gives none (-- PROGRAM ARGS)"
    )]
    NoEntrypoint,
    /// A working directory that is not an absolute path.
    #[error("the working directory {0:?} is not an absolute path")]
    BadWorkdir(String),
}

impl StoreError {
    /// What kind of failure this is: its HTTP status and label.
    pub fn kind(&self) -> FailureKind {
        match self {
            StoreError::NotFound(_) => FailureKind::NotFound,
            StoreError::BadName(_)
            | StoreError::BadEnv(_)
            | StoreError::NotElf
            | StoreError::Deploy(_)
            | StoreError::BadRootfs(..)
            | StoreError::NoProgram
            | StoreError::NoEntrypoint
            | StoreError::BadWorkdir(_) => FailureKind::BadRequest,
            StoreError::Image(e) if e.is_bad_input() => FailureKind::BadRequest,
            StoreError::Image(_) => FailureKind::Store,
            StoreError::BinaryTooLarge(_) => FailureKind::TooLarge,
            StoreError::Io { .. } | StoreError::Damaged { .. } => FailureKind::Store,
        }
    }

    fn io(path: &Path, what: &'static str) -> impl FnOnce(io::Error) -> StoreError {
        let path = path.to_path_buf();
        move |source| StoreError::Io { path, what, source }
    }
}

/// What the store knows of a deployed function version.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    /// The manifest's format version.
    pub format: u32,
    /// The function's name.
    pub name: String,
    /// Version id (unique per deploy).
    pub version: String,
    /// SHA-256 of the binary, in hex.
    pub binary_sha256: String,
    /// Size of the binary.
    pub binary_bytes: u64,
    /// Guest memory, in MiB.
    pub mem_mib: u64,
    /// The function's environment, `KEY=VALUE` entries.
    pub env: Vec<String>,
    /// When it was deployed, in seconds since the Unix epoch.
    pub created_unix: u64,
    /// Time from boot to the ready point at deploy, in milliseconds.
    pub init_ms: f64,
    /// Bytes of guest memory holding data in the snapshot.
    pub snapshot_data_bytes: u64,
    /// For a program from a root file system: where its image came from and what it
    /// runs (`binary_*` then describe the program's file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<ImageInfo>,
}

/// What the manifest of a function from a root file system says of its image.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ImageInfo {
    /// Where the image came from.
    pub source: ImageSource,
    /// argv: the program's path in the image, then its arguments.
    pub args: Vec<String>,
    /// The working directory in the image.
    pub workdir: String,
    /// Bytes of regular files in the version's copy of the image.
    pub image_bytes: u64,
}

/// Where a function's image came from.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ImageSource {
    /// A directory, copied into the version.
    Rootfs {
        /// The directory (canonical) at deploy time.
        dir: PathBuf,
    },
    /// An OCI image archive, unpacked into the version.
    Oci {
        /// The archive as the deploy named it (a path, or `upload` over HTTP).
        archive: String,
        /// The image config's digest (the image id), `sha256:HEX`.
        config_digest: String,
        /// Its layers.
        layers: usize,
    },
}

/// The program a function from a root file system runs, as a deploy gives it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageCommand {
    /// argv: the program's path in the image, then its arguments. For an OCI image,
    /// empty means the config's `Entrypoint` and `Cmd`; given, it replaces both.
    #[serde(default)]
    pub args: Vec<String>,
    /// Environment entries, `KEY=VALUE` (after an OCI image config's `Env`).
    #[serde(default)]
    pub env: Vec<String>,
    /// The working directory in the image (default: an OCI image config's
    /// `WorkingDir`, else `/`).
    #[serde(default)]
    pub workdir: Option<String>,
}

/// A deployed function: its manifest and where its version lives.
#[derive(Debug, Clone)]
pub struct Deployed {
    /// The version's manifest.
    pub manifest: Manifest,
    /// The version's directory, `functions/NAME/versions/ID`.
    pub dir: PathBuf,
}

impl Deployed {
    /// The version's snapshot directory.
    pub fn snapshot(&self) -> SnapshotDir {
        SnapshotDir::new(self.dir.join("snapshot"))
    }
}

/// One thing `open` found and dealt with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RepairNote(pub String);

/// The store at one root directory; see the module documentation.
#[derive(Debug, Clone)]
pub struct FunctionStore {
    root: PathBuf,
    log_max_bytes: u64,
    /// The manifest of each function's live version as last read, keyed by the target
    /// of its `current` link: a version directory never changes once it is live, so
    /// [`FunctionStore::get`] reads a manifest once per version, not per invocation.
    manifests: Arc<Mutex<HashMap<String, (PathBuf, Manifest)>>>,
    /// Where deploys boot the function: jailed instance processes, or (without) this
    /// process.
    workers: Option<Arc<reap_worker::Workers>>,
}

/// The file in a version's directory that marks it damaged, holding why.
const DAMAGED_FILE: &str = "damaged";

/// Checks a function name: it becomes a directory and a URL path segment.
pub fn check_name(name: &str) -> Result<(), StoreError> {
    let ok = (1..=64).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_')
        && name.as_bytes()[0].is_ascii_alphanumeric();
    if ok {
        Ok(())
    } else {
        Err(StoreError::BadName(name.to_owned()))
    }
}

impl FunctionStore {
    /// `$REAP_HOME`, else `~/.local/share/reap`.
    pub fn default_root() -> PathBuf {
        if let Some(home) = std::env::var_os("REAP_HOME") {
            return PathBuf::from(home);
        }
        let home = std::env::var_os("HOME")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/root"));
        home.join(".local/share/reap")
    }

    /// Opens (creating if needed) the store at `root`, removing what interrupted deploys
    /// left behind. Returns notes on what it repaired or found damaged.
    pub fn open(root: impl Into<PathBuf>) -> Result<(Self, Vec<RepairNote>), StoreError> {
        let store = Self {
            root: root.into(),
            log_max_bytes: DEFAULT_LOG_MAX_BYTES,
            manifests: Arc::default(),
            workers: None,
        };
        for dir in [
            store.functions_dir(),
            store.staging_dir(),
            store.logs_dir(),
            store.locks_dir(),
        ] {
            fs::create_dir_all(&dir)
                .map_err(StoreError::io(&dir, "cannot create the store directory"))?;
        }
        let mut notes = Vec::new();
        let staging = store.staging_dir();
        for entry in fs::read_dir(&staging)
            .map_err(StoreError::io(&staging, "cannot read"))?
            .flatten()
        {
            let path = entry.path();
            // A staging entry belongs to a live deploy if its owner process still runs.
            if staging_owner_alive(&path) {
                continue;
            }
            let _ = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            notes.push(RepairNote(format!(
                "removed an interrupted deploy ({})",
                path.file_name()
                    .map(|n| n.to_string_lossy())
                    .unwrap_or_default()
            )));
        }
        for name in store.names()? {
            let _lock = store.lock(&name)?;
            match store.get(&name) {
                Ok(deployed) => store.remove_old_versions(&name, &deployed.manifest.version),
                Err(e) => notes.push(RepairNote(format!("{e}"))),
            }
        }
        Ok((store, notes))
    }

    /// The store booting deploys in `workers`' jailed processes instead of this one.
    pub fn with_workers(mut self, workers: Arc<reap_worker::Workers>) -> Self {
        self.workers = Some(workers);
        self
    }

    /// Caps each function's log at `bytes` (at least 4 KiB): past it, the log is
    /// renamed to `NAME.log.1` (replacing the one before) and a new one is started, so
    /// a function's logs take at most twice the cap.
    pub fn with_log_max_bytes(mut self, bytes: u64) -> Self {
        self.log_max_bytes = bytes.max(4096);
        self
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn functions_dir(&self) -> PathBuf {
        self.root.join("functions")
    }

    fn staging_dir(&self) -> PathBuf {
        self.root.join("staging")
    }

    fn logs_dir(&self) -> PathBuf {
        self.root.join("logs")
    }

    fn locks_dir(&self) -> PathBuf {
        self.root.join("locks")
    }

    /// Takes the exclusive lock of `name` (blocking until other deploys and removes of
    /// it, in this process or another, are done); released when the guard is dropped.
    fn lock(&self, name: &str) -> Result<NameLock, StoreError> {
        let path = self.locks_dir().join(format!("{name}.lock"));
        let file = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .map_err(StoreError::io(&path, "cannot open the lock file"))?;
        loop {
            // SAFETY: flock on a descriptor this function owns; no memory is involved.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) } == 0 {
                return Ok(NameLock(file));
            }
            let e = io::Error::last_os_error();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(StoreError::io(&path, "cannot lock")(e));
            }
        }
    }

    /// A fresh path in `staging/` for an upload in progress: removed by `open` if its
    /// process is gone.
    pub fn upload_path(&self) -> PathBuf {
        self.staging_dir()
            .join(format!("upload-{}-{}", next_serial(), std::process::id()))
    }

    /// Where a running server records its address.
    pub fn server_file(&self) -> PathBuf {
        self.root.join("server.json")
    }

    /// The function's stderr log.
    pub fn log_path(&self, name: &str) -> PathBuf {
        self.logs_dir().join(format!("{name}.log"))
    }

    /// Opens the function's log for appending, as a sink for guest stderr; the log is
    /// capped and rotated (see [`with_log_max_bytes`](Self::with_log_max_bytes)).
    pub fn log_sink(&self, name: &str) -> Sink {
        match CappedLog::open(self.log_path(name), self.log_max_bytes) {
            Ok(log) => Box::new(log),
            Err(e) => {
                tracing::warn!(function = name, "cannot open the function log: {e}");
                Box::new(io::sink())
            }
        }
    }

    /// Names of the functions in the store (deployed or damaged), sorted.
    pub fn names(&self) -> Result<Vec<String>, StoreError> {
        let dir = self.functions_dir();
        let mut names: Vec<String> = fs::read_dir(&dir)
            .map_err(StoreError::io(&dir, "cannot read"))?
            .flatten()
            .filter_map(|e| e.file_name().into_string().ok())
            .filter(|n| check_name(n).is_ok())
            .collect();
        names.sort();
        Ok(names)
    }

    /// The live version of `name`.
    pub fn get(&self, name: &str) -> Result<Deployed, StoreError> {
        check_name(name)?;
        let fn_dir = self.functions_dir().join(name);
        let current = fn_dir.join("current");
        let target = match fs::read_link(&current) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                if fn_dir.exists() {
                    return Err(StoreError::Damaged {
                        name: name.into(),
                        why: "it has no current version".into(),
                    });
                }
                return Err(StoreError::NotFound(name.into()));
            }
            Err(e) => return Err(StoreError::io(&current, "cannot read")(e)),
        };
        let dir = fn_dir.join(&target);
        match fs::read(dir.join(DAMAGED_FILE)) {
            Ok(why) => {
                return Err(StoreError::Damaged {
                    name: name.into(),
                    why: String::from_utf8_lossy(&why[..why.len().min(4096)]).into_owned(),
                });
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => return Err(StoreError::io(&dir.join(DAMAGED_FILE), "cannot read")(e)),
        }
        if let Some((cached_target, manifest)) = self.cached_manifests().get(name)
            && *cached_target == target
        {
            return Ok(Deployed {
                manifest: manifest.clone(),
                dir,
            });
        }
        let damaged = |why: String| StoreError::Damaged {
            name: name.into(),
            why,
        };
        let manifest_path = dir.join("manifest.json");
        let len = fs::metadata(&manifest_path)
            .map_err(|e| damaged(format!("manifest: {e}")))?
            .len();
        if len > MAX_MANIFEST_BYTES {
            return Err(damaged("manifest is too large".into()));
        }
        let bytes = fs::read(&manifest_path).map_err(|e| damaged(format!("manifest: {e}")))?;
        let manifest: Manifest =
            serde_json::from_slice(&bytes).map_err(|e| damaged(format!("manifest: {e}")))?;
        if manifest.format != MANIFEST_VERSION || manifest.name != name {
            return Err(damaged("manifest of another format or function".into()));
        }
        self.cached_manifests()
            .insert(name.to_owned(), (target, manifest.clone()));
        Ok(Deployed { manifest, dir })
    }

    fn cached_manifests(&self) -> std::sync::MutexGuard<'_, HashMap<String, (PathBuf, Manifest)>> {
        self.manifests.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Every function's manifest, or why it cannot be served.
    pub fn list(&self) -> Result<Vec<Result<Manifest, StoreError>>, StoreError> {
        Ok(self
            .names()?
            .into_iter()
            .map(|n| self.get(&n).map(|d| d.manifest))
            .collect())
    }

    /// Deploys `binary` as `name`: copies it in, boots it to its ready point (within
    /// `init_limit`), snapshots it, and makes it the live version. The previous
    /// version, if any, is replaced atomically.
    pub fn deploy(
        &self,
        name: &str,
        binary: &[u8],
        mem_mib: u64,
        env: Vec<String>,
        init_limit: Duration,
    ) -> Result<Manifest, StoreError> {
        check_name(name)?;
        if binary.len() as u64 > MAX_BINARY_BYTES {
            return Err(StoreError::BinaryTooLarge(binary.len() as u64));
        }
        check_env(&env)?;
        let (version, staged) = self.stage(name)?;
        let result = write_synced(&staged.join("binary"), binary).and_then(|()| {
            let config = binary_config(name, mem_mib, env);
            self.build_version(name, &version, &staged, binary, config, None, init_limit)
        });
        self.install(name, &version, &staged, result)
    }

    /// As [`deploy`](Self::deploy), with the binary in the file `upload` (in
    /// `staging/`, from [`upload_path`](Self::upload_path)), which is moved into the
    /// new version or removed.
    pub fn deploy_file(
        &self,
        name: &str,
        upload: &Path,
        mem_mib: u64,
        env: Vec<String>,
        init_limit: Duration,
    ) -> Result<Manifest, StoreError> {
        let upload = RemoveOnDrop(upload.to_path_buf());
        check_name(name)?;
        let len = fs::metadata(&upload.0)
            .map_err(StoreError::io(&upload.0, "cannot read the upload"))?
            .len();
        if len > MAX_BINARY_BYTES {
            return Err(StoreError::BinaryTooLarge(len));
        }
        check_env(&env)?;
        check_elf_magic(&upload.0)?;
        let (version, staged) = self.stage(name)?;
        let bin_path = staged.join("binary");
        let result = fs::rename(&upload.0, &bin_path)
            .map_err(StoreError::io(
                &bin_path,
                "cannot move the upload into place",
            ))
            .and_then(|()| {
                File::open(&bin_path)
                    .and_then(|f| f.sync_all())
                    .map_err(StoreError::io(&bin_path, "cannot sync"))
            })
            .and_then(|()| {
                let binary =
                    fs::read(&bin_path).map_err(StoreError::io(&bin_path, "cannot read"))?;
                let config = binary_config(name, mem_mib, env);
                self.build_version(name, &version, &staged, &binary, config, None, init_limit)
            });
        self.install(name, &version, &staged, result)
    }

    /// Deploys the program `command.args[0]` of the root file system `dir` as `name`:
    /// copies the directory into the new version (the function does not depend on
    /// `dir` afterwards), then boots and snapshots it as [`deploy`](Self::deploy) does.
    pub fn deploy_rootfs(
        &self,
        name: &str,
        dir: &Path,
        command: ImageCommand,
        mem_mib: u64,
        init_limit: Duration,
    ) -> Result<Manifest, StoreError> {
        check_name(name)?;
        check_env(&command.env)?;
        let bad = |e| StoreError::BadRootfs(dir.to_path_buf(), e);
        if !fs::metadata(dir).map_err(bad)?.is_dir() {
            return Err(bad(io::Error::from_raw_os_error(libc::ENOTDIR)));
        }
        let source = fs::canonicalize(dir).map_err(bad)?;
        if command.args.is_empty() {
            return Err(StoreError::NoProgram);
        }
        let workdir = check_workdir(command.workdir.unwrap_or_else(|| "/".into()))?;
        let (version, staged) = self.stage(name)?;
        let result = copy_tree(&source, &staged.join(IMAGE_DIR)).and_then(|image_bytes| {
            let info = ImageInfo {
                source: ImageSource::Rootfs {
                    dir: source.clone(),
                },
                args: command.args,
                workdir,
                image_bytes,
            };
            self.build_image_version(
                name,
                &version,
                &staged,
                info,
                command.env,
                mem_mib,
                init_limit,
            )
        });
        self.install(name, &version, &staged, result)
    }

    /// Deploys the OCI image in the archive `archive` (see [`crate::oci`]) as `name`:
    /// unpacks it into the new version, then boots the config's `Entrypoint` and `Cmd`
    /// (or `command.args`), with its `Env` and `WorkingDir` (then `command`'s), to its
    /// ready point and snapshots it. The archive is read, never changed or removed.
    pub fn deploy_image(
        &self,
        name: &str,
        archive: &Path,
        archive_name: &str,
        command: ImageCommand,
        mem_mib: u64,
        init_limit: Duration,
    ) -> Result<Manifest, StoreError> {
        check_name(name)?;
        check_env(&command.env)?;
        if let Some(w) = &command.workdir {
            check_workdir(w.clone())?;
        }
        let (version, staged) = self.stage(name)?;
        let result = oci::unpack(archive, &staged.join(IMAGE_DIR))
            .map_err(StoreError::Image)
            .and_then(|unpacked| {
                let args = if command.args.is_empty() {
                    unpacked.run.args()
                } else {
                    command.args
                };
                if args.is_empty() {
                    return Err(StoreError::NoEntrypoint);
                }
                let mut env = unpacked.run.env;
                env.extend(command.env);
                check_env(&env)?;
                let workdir = check_workdir(
                    command
                        .workdir
                        .or(unpacked.run.workdir)
                        .unwrap_or_else(|| "/".into()),
                )?;
                let info = ImageInfo {
                    source: ImageSource::Oci {
                        archive: archive_name.to_owned(),
                        config_digest: unpacked.config_digest,
                        layers: unpacked.layers,
                    },
                    args,
                    workdir,
                    image_bytes: unpacked.bytes,
                };
                self.build_image_version(name, &version, &staged, info, env, mem_mib, init_limit)
            });
        self.install(name, &version, &staged, result)
    }

    /// Boots the program `info` names from the image in `staged/rootfs` and snapshots
    /// it; the snapshot records the image's path as it will be once the version is live.
    #[allow(clippy::too_many_arguments)]
    fn build_image_version(
        &self,
        name: &str,
        version: &str,
        staged: &Path,
        info: ImageInfo,
        env: Vec<String>,
        mem_mib: u64,
        init_limit: Duration,
    ) -> Result<Manifest, StoreError> {
        let image_dir = staged.join(IMAGE_DIR);
        let functions = self.functions_dir();
        let live_dir = fs::canonicalize(&functions)
            .map_err(StoreError::io(&functions, "cannot resolve"))?
            .join(name)
            .join("versions")
            .join(version)
            .join(IMAGE_DIR);
        let config = MicroVmConfig {
            mem_mib,
            args: info.args.clone(),
            env,
            rootfs: Some(RootFs {
                dir: live_dir.clone(),
                program: info.args[0].clone(),
                workdir: info.workdir.clone(),
            }),
            ..Default::default()
        };
        let _provided = Provided::new(live_dir, &image_dir)?;
        let program = config
            .read_program()
            .map_err(|e| StoreError::Deploy(Box::new(e)))?;
        let mut manifest = self.build_version(
            name,
            version,
            staged,
            &program,
            config,
            Some(&image_dir),
            init_limit,
        )?;
        manifest.image = Some(info);
        let json = serde_json::to_vec_pretty(&manifest).expect("manifest serializes");
        write_synced(&staged.join("manifest.json"), &json)?;
        sync_dir(staged);
        Ok(manifest)
    }

    /// A fresh version id and its empty staging directory.
    fn stage(&self, name: &str) -> Result<(String, PathBuf), StoreError> {
        let version = new_version_id();
        let staged = self
            .staging_dir()
            .join(format!("{name}-{version}-{}", std::process::id()));
        fs::create_dir_all(&staged).map_err(StoreError::io(&staged, "cannot create"))?;
        Ok((version, staged))
    }

    /// Makes the staged `version` the live version of `name` (or, if `built` is an
    /// error, removes it), under the name's lock.
    fn install(
        &self,
        name: &str,
        version: &str,
        staged: &Path,
        built: Result<Manifest, StoreError>,
    ) -> Result<Manifest, StoreError> {
        let manifest = match built {
            Ok(m) => m,
            Err(e) => {
                let _ = fs::remove_dir_all(staged);
                return Err(e);
            }
        };
        let _lock = self.lock(name)?;
        let result = self.switch_to(name, version, staged);
        if result.is_err() {
            let _ = fs::remove_dir_all(staged);
        }
        result?;
        self.remove_old_versions(name, version);
        Ok(manifest)
    }

    /// Moves the staged version into `versions/` and points `current` at it. The
    /// caller holds the name's lock.
    fn switch_to(&self, name: &str, version: &str, staged: &Path) -> Result<(), StoreError> {
        let fn_dir = self.functions_dir().join(name);
        let versions = fn_dir.join("versions");
        fs::create_dir_all(&versions).map_err(StoreError::io(&versions, "cannot create"))?;
        let dest = versions.join(version);
        fs::rename(staged, &dest).map_err(StoreError::io(
            &dest,
            "cannot move the new version into place",
        ))?;
        let link_tmp = fn_dir.join(format!(
            ".current.tmp-{}-{}",
            std::process::id(),
            next_serial()
        ));
        let switched = std::os::unix::fs::symlink(Path::new("versions").join(version), &link_tmp)
            .map_err(StoreError::io(&link_tmp, "cannot create the version link"))
            .and_then(|()| {
                let current = fn_dir.join("current");
                fs::rename(&link_tmp, &current)
                    .map_err(StoreError::io(&current, "cannot switch the live version"))
            });
        if switched.is_err() {
            let _ = fs::remove_file(&link_tmp);
            let _ = fs::remove_dir_all(&dest);
        }
        switched?;
        sync_dir(&fn_dir);
        Ok(())
    }

    /// Boots `binary` with `config` to its ready point and snapshots it into
    /// `staged/snapshot`, then writes the manifest. `image_dir` holds the image of a
    /// program from a root file system (`config.rootfs`).
    #[allow(clippy::too_many_arguments)]
    fn build_version(
        &self,
        name: &str,
        version: &str,
        staged: &Path,
        binary: &[u8],
        config: MicroVmConfig,
        image_dir: Option<&Path>,
        init_limit: Duration,
    ) -> Result<Manifest, StoreError> {
        let (boot, memory_data_bytes) = match &self.workers {
            Some(workers) => {
                // The process gets a directory of its own as its root: the staged
                // version holds the binary too.
                let boot_dir = staged.join("boot");
                fs::create_dir(&boot_dir).map_err(StoreError::io(&boot_dir, "cannot create"))?;
                let report = workers
                    .deploy(
                        binary,
                        &config,
                        self.log_sink(name),
                        init_limit,
                        &boot_dir,
                        image_dir,
                    )
                    .map_err(|e| StoreError::Deploy(Box::new(e)))?;
                let snapshot = staged.join("snapshot");
                fs::rename(boot_dir.join("snapshot"), &snapshot)
                    .map_err(StoreError::io(&snapshot, "cannot move the snapshot"))?;
                fs::remove_dir(&boot_dir).map_err(StoreError::io(&boot_dir, "cannot remove"))?;
                (report.boot, report.memory_data_bytes)
            }
            None => {
                let deployed = Instance::deploy(
                    binary,
                    &config,
                    self.log_sink(name),
                    Some(init_limit),
                    &SnapshotDir::new(staged.join("snapshot")),
                )
                .map_err(|e| StoreError::Deploy(Box::new(e)))?;
                (deployed.boot, deployed.state.memory_data_bytes)
            }
        };
        let init_ms = boot.as_secs_f64() * 1e3;
        let manifest = Manifest {
            format: MANIFEST_VERSION,
            name: name.to_owned(),
            version: version.to_owned(),
            binary_sha256: hex::encode(Sha256::digest(binary)),
            binary_bytes: binary.len() as u64,
            mem_mib: config.mem_mib,
            env: config.env,
            created_unix: SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0),
            init_ms,
            snapshot_data_bytes: memory_data_bytes,
            image: None,
        };
        let json = serde_json::to_vec_pretty(&manifest).expect("manifest serializes");
        write_synced(&staged.join("manifest.json"), &json)?;
        sync_dir(staged);
        Ok(manifest)
    }

    /// Marks the version `deployed` damaged, saying `why`: [`FunctionStore::get`] refuses
    /// it from then on (a new deploy makes a new, healthy version).
    pub fn mark_damaged(&self, deployed: &Deployed, why: &str) -> Result<(), StoreError> {
        let path = deployed.dir.join(DAMAGED_FILE);
        let tmp = deployed
            .dir
            .join(format!(".{DAMAGED_FILE}.{}", std::process::id()));
        write_synced(&tmp, format!("its snapshot is damaged: {why}").as_bytes())?;
        fs::rename(&tmp, &path).map_err(StoreError::io(&path, "cannot write"))
    }

    /// Removes `name` (all versions and its log).
    pub fn remove(&self, name: &str) -> Result<(), StoreError> {
        check_name(name)?;
        let _lock = self.lock(name)?;
        let fn_dir = self.functions_dir().join(name);
        if !fn_dir.exists() {
            return Err(StoreError::NotFound(name.into()));
        }
        // Unlink `current` first: from then on the function is gone for readers.
        let _ = fs::remove_file(fn_dir.join("current"));
        fs::remove_dir_all(&fn_dir).map_err(StoreError::io(&fn_dir, "cannot remove"))?;
        let _ = fs::remove_file(self.log_path(name));
        let _ = fs::remove_file(rotated(&self.log_path(name)));
        Ok(())
    }

    /// Removes the versions of `name` other than `keep` and the one `current` points
    /// to. The caller holds the name's lock.
    fn remove_old_versions(&self, name: &str, keep: &str) {
        let fn_dir = self.functions_dir().join(name);
        let live = fs::read_link(fn_dir.join("current")).ok();
        let versions = fn_dir.join("versions");
        let Ok(entries) = fs::read_dir(&versions) else {
            return;
        };
        for entry in entries.flatten() {
            let is_live = live
                .as_deref()
                .is_some_and(|l| l == Path::new("versions").join(entry.file_name()));
            if entry.file_name() != keep && !is_live {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
}

/// `PATH.1`, where a log is rotated to.
fn rotated(path: &Path) -> PathBuf {
    let mut p = path.as_os_str().to_owned();
    p.push(".1");
    PathBuf::from(p)
}

/// A log file capped at `max` bytes: a write that would take it past the cap fills it
/// to the cap, renames it to `PATH.1` and goes on in a new file. Several writers (the
/// instances of one function, in one process or several) may share the path: each
/// checks the file's size before writing and reopens the path when another writer
/// rotated it.
struct CappedLog {
    path: PathBuf,
    file: File,
    max: u64,
}

impl CappedLog {
    fn open(path: PathBuf, max: u64) -> io::Result<Self> {
        let file = Self::open_append(&path)?;
        Ok(Self { path, file, max })
    }

    fn open_append(path: &Path) -> io::Result<File> {
        fs::OpenOptions::new().create(true).append(true).open(path)
    }

    /// Reopens the path if another writer rotated the file away.
    fn follow_rotation(&mut self) -> io::Result<()> {
        use std::os::unix::fs::MetadataExt;
        let ours = self.file.metadata()?;
        let same =
            fs::metadata(&self.path).is_ok_and(|m| m.ino() == ours.ino() && m.dev() == ours.dev());
        if !same {
            self.file = Self::open_append(&self.path)?;
        }
        Ok(())
    }

    fn rotate(&mut self) -> io::Result<()> {
        fs::rename(&self.path, rotated(&self.path))?;
        self.file = Self::open_append(&self.path)?;
        Ok(())
    }
}

impl Write for CappedLog {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        self.follow_rotation()?;
        let mut len = self.file.metadata()?.len();
        if len >= self.max {
            self.rotate()?;
            len = 0;
        }
        let room = usize::try_from(self.max - len).unwrap_or(usize::MAX);
        self.file.write(&buf[..buf.len().min(room)])
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

/// The exclusive `flock` of one name, released when dropped (the file is closed).
struct NameLock(#[allow(dead_code)] File);

/// Removes a file when dropped (if it is still there).
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

/// A number unique in this process, for temporary names.
fn next_serial() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    NEXT.fetch_add(1, Ordering::Relaxed)
}

/// A fresh, sortable version id: microseconds since the epoch, the process id and a
/// per-process serial (two deploys in one microsecond differ).
fn new_version_id() -> String {
    let us = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_micros())
        .unwrap_or(0);
    format!("{us:x}-{:x}.{}", std::process::id(), next_serial())
}

/// The configuration of a static binary deployed as `name`.
fn binary_config(name: &str, mem_mib: u64, env: Vec<String>) -> MicroVmConfig {
    MicroVmConfig {
        mem_mib,
        args: vec![name.to_owned()],
        env,
        ..Default::default()
    }
}

/// An image directory lent to this process's boots under the path the snapshot will
/// record ([`reap_vmm::guest_os::fs::image::provide`]), taken back when dropped.
struct Provided(PathBuf);

impl Provided {
    fn new(path: PathBuf, dir: &Path) -> Result<Self, StoreError> {
        use std::os::unix::fs::OpenOptionsExt;
        let fd = fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
            .open(dir)
            .map_err(StoreError::io(dir, "cannot open the image"))?;
        reap_vmm::guest_os::fs::image::provide(path.clone(), fd.into());
        Ok(Self(path))
    }
}

impl Drop for Provided {
    fn drop(&mut self) {
        reap_vmm::guest_os::fs::image::withdraw(&self.0);
    }
}

/// Copies the directory tree `src` to `dst` (which must not exist): directories,
/// regular files (their modes made safe and readable, [`oci::image_mode`]), symbolic
/// links as links; other files (devices, sockets, FIFOs) are left out. Returns the
/// bytes of regular files copied.
fn copy_tree(src: &Path, dst: &Path) -> Result<u64, StoreError> {
    use std::os::unix::fs::PermissionsExt;
    let read = |path: &Path| {
        let path = path.to_path_buf();
        move |e| StoreError::BadRootfs(path, e)
    };
    let set_mode = |path: &Path, mode| {
        fs::set_permissions(path, fs::Permissions::from_mode(mode))
            .map_err(StoreError::io(path, "cannot set the mode of"))
    };
    fs::create_dir(dst).map_err(StoreError::io(dst, "cannot create"))?;
    set_mode(dst, oci::image_mode(0, true))?;
    let mut bytes = 0;
    let mut stack = vec![(src.to_path_buf(), dst.to_path_buf())];
    while let Some((from, to)) = stack.pop() {
        for entry in fs::read_dir(&from).map_err(read(&from))? {
            let entry = entry.map_err(read(&from))?;
            let (source, target) = (entry.path(), to.join(entry.file_name()));
            let kind = entry.file_type().map_err(read(&source))?;
            if kind.is_dir() {
                fs::create_dir(&target).map_err(StoreError::io(&target, "cannot create"))?;
                set_mode(&target, oci::image_mode(0, true))?;
                stack.push((source, target));
            } else if kind.is_file() {
                bytes += fs::copy(&source, &target).map_err(read(&source))?;
                let mode = entry
                    .metadata()
                    .map_err(read(&source))?
                    .permissions()
                    .mode();
                set_mode(&target, oci::image_mode(mode, false))?;
            } else if kind.is_symlink() {
                let link = fs::read_link(&source).map_err(read(&source))?;
                std::os::unix::fs::symlink(&link, &target)
                    .map_err(StoreError::io(&target, "cannot create"))?;
            }
        }
    }
    Ok(bytes)
}

/// Refuses a working directory that is not absolute.
fn check_workdir(workdir: String) -> Result<String, StoreError> {
    if workdir.starts_with('/') {
        Ok(workdir)
    } else {
        Err(StoreError::BadWorkdir(workdir))
    }
}

fn check_env(env: &[String]) -> Result<(), StoreError> {
    match env.iter().find(|e| !e.contains('=') || e.starts_with('=')) {
        Some(bad) => Err(StoreError::BadEnv(bad.clone())),
        None => Ok(()),
    }
}

/// Refuses a file that is not an ELF binary before reading it whole.
fn check_elf_magic(path: &Path) -> Result<(), StoreError> {
    let mut magic = [0u8; 4];
    let mut f = File::open(path).map_err(StoreError::io(path, "cannot read the upload"))?;
    let n = f
        .read(&mut magic)
        .map_err(StoreError::io(path, "cannot read the upload"))?;
    if n == 4 && magic == *b"\x7fELF" {
        Ok(())
    } else {
        Err(StoreError::NotElf)
    }
}

/// Whether the process that created a staging directory (`NAME-VERSION-PID`) runs.
fn staging_owner_alive(path: &Path) -> bool {
    let Some(pid) = path
        .file_name()
        .and_then(|n| n.to_str())
        .and_then(|n| n.rsplit('-').next())
        .and_then(|p| p.parse::<i32>().ok())
    else {
        return false;
    };
    // SAFETY: kill with signal 0 only checks that the process exists.
    pid != std::process::id() as i32 && unsafe { libc::kill(pid, 0) } == 0
}

fn write_synced(path: &Path, bytes: &[u8]) -> Result<(), StoreError> {
    let mut f = fs::File::create(path).map_err(StoreError::io(path, "cannot create"))?;
    f.write_all(bytes)
        .and_then(|()| f.sync_all())
        .map_err(StoreError::io(path, "cannot write"))
}

fn sync_dir(dir: &Path) {
    if let Ok(f) = fs::File::open(dir) {
        let _ = f.sync_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for ok in ["a", "hello-world", "fn_2", "0x"] {
            assert!(check_name(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-a", "_a", "A", "a/b", "..", "a b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn store_errors_have_their_kinds() {
        let io = StoreError::Io {
            path: "/x".into(),
            what: "cannot read",
            source: io::Error::from(io::ErrorKind::PermissionDenied),
        };
        let cases = [
            (StoreError::NotFound("f".into()), FailureKind::NotFound),
            (StoreError::BadName("F".into()), FailureKind::BadRequest),
            (StoreError::BadEnv("=1".into()), FailureKind::BadRequest),
            (
                StoreError::Deploy(Box::new(
                    reap_vmm::instance::InstanceError::ExitedBeforeReady(1),
                )),
                FailureKind::BadRequest,
            ),
            (StoreError::BinaryTooLarge(1 << 30), FailureKind::TooLarge),
            (io, FailureKind::Store),
            (
                StoreError::Damaged {
                    name: "f".into(),
                    why: "manifest".into(),
                },
                FailureKind::Store,
            ),
        ];
        for (err, kind) in cases {
            assert_eq!(err.kind(), kind, "{err}");
        }
    }

    #[test]
    fn a_log_is_capped_and_rotated() {
        let dir = std::env::temp_dir().join(format!("reap-log-unit-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("f.log");
        let max = 10_000;
        let mut a = CappedLog::open(path.clone(), max).unwrap();
        let mut b = CappedLog::open(path.clone(), max).unwrap();
        let line = [b'x'; 777];
        for i in 0..1000 {
            let w = if i % 3 == 0 { &mut b } else { &mut a };
            w.write_all(&line).unwrap();
        }
        a.write_all(&vec![b'y'; 100_000]).unwrap();
        let main = fs::metadata(&path).unwrap().len();
        let old = fs::metadata(rotated(&path)).unwrap().len();
        assert!(main <= max && old <= max, "{main} {old}");
        assert_eq!(fs::read_dir(&dir).unwrap().count(), 2);
        fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn open_removes_interrupted_deploys_and_reports_damage() {
        let root = std::env::temp_dir().join(format!("reap-store-unit-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let (store, notes) = FunctionStore::open(&root).unwrap();
        assert!(notes.is_empty());
        // A crash mid-deploy: a staging dir whose process is gone.
        let stale = root.join("staging/foo-1-999999999");
        fs::create_dir_all(stale.join("snapshot")).unwrap();
        // A function dir without a current version.
        fs::create_dir_all(root.join("functions/broken/versions/x")).unwrap();
        let (_, notes) = FunctionStore::open(&root).unwrap();
        assert!(!stale.exists());
        assert!(
            notes
                .iter()
                .any(|n| n.0.contains("removed an interrupted deploy")),
            "{notes:?}"
        );
        assert!(
            notes
                .iter()
                .any(|n| n.0.contains("broken") && n.0.contains("no current version")),
            "{notes:?}"
        );
        assert!(matches!(
            store.get("broken"),
            Err(StoreError::Damaged { .. })
        ));
        assert!(matches!(store.get("nothing"), Err(StoreError::NotFound(_))));
        assert!(matches!(
            store.remove("nothing"),
            Err(StoreError::NotFound(_))
        ));
        fs::remove_dir_all(&root).unwrap();
    }

    #[test]
    fn manifests_are_read_once_per_live_version() {
        let root =
            std::env::temp_dir().join(format!("reap-store-manifests-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        let (store, _) = FunctionStore::open(&root).unwrap();
        let fn_dir = root.join("functions/f");
        let plant = |version: &str, init_ms: f64| {
            let dir = fn_dir.join("versions").join(version);
            fs::create_dir_all(&dir).unwrap();
            let manifest = Manifest {
                format: MANIFEST_VERSION,
                name: "f".into(),
                version: version.into(),
                binary_sha256: String::new(),
                binary_bytes: 0,
                mem_mib: 16,
                env: Vec::new(),
                created_unix: 0,
                init_ms,
                snapshot_data_bytes: 0,
                image: None,
            };
            fs::write(
                dir.join("manifest.json"),
                serde_json::to_vec(&manifest).unwrap(),
            )
            .unwrap();
            let _ = fs::remove_file(fn_dir.join("current"));
            std::os::unix::fs::symlink(Path::new("versions").join(version), fn_dir.join("current"))
                .unwrap();
        };
        plant("v1", 1.0);
        assert_eq!(store.get("f").unwrap().manifest.init_ms, 1.0);
        // The live version's manifest is not read again: damaging it on disk does not
        // change what `get` answers (a live version never changes).
        fs::write(fn_dir.join("versions/v1/manifest.json"), b"garbage").unwrap();
        let again = store.get("f").unwrap();
        assert_eq!(
            (again.manifest.version.as_str(), again.manifest.init_ms),
            ("v1", 1.0)
        );
        // A new live version is read.
        plant("v2", 2.0);
        let new = store.get("f").unwrap();
        assert_eq!(
            (new.manifest.version.as_str(), new.manifest.init_ms),
            ("v2", 2.0)
        );
        assert!(new.dir.ends_with("versions/v2"));
        // A store opened anew reads from disk, and finds the damaged old version unused.
        fs::remove_file(fn_dir.join("current")).unwrap();
        std::os::unix::fs::symlink("versions/v1", fn_dir.join("current")).unwrap();
        let (fresh, _) = FunctionStore::open(&root).unwrap();
        assert!(matches!(fresh.get("f"), Err(StoreError::Damaged { .. })));
        fs::remove_dir_all(&root).unwrap();
    }
}
