//! The server's side: instance processes started ahead of need ([`Workers`]), each
//! restoring one snapshot and serving its invocations as a [`RemoteInstance`].
//!
//! All processes are started by one thread of the server (the spawner), which they
//! are tied to (`PR_SET_PDEATHSIG`): when the server dies, they die. The spawner keeps
//! [`WorkerConfig::prestart`] processes ready (jail set up, waiting for a snapshot);
//! taking one wakes it to start the next. Ended processes are killed, waited for and
//! their cgroups removed by a reaper thread, off the request path.

use std::collections::VecDeque;
use std::io::{self, Write as _};
use std::os::fd::{AsFd, AsRawFd};
use std::os::unix::net::UnixStream;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use reap_pager::region::PAGE_4K;
use reap_pager::{MemoryMode, ServeOptions, WsPolicy};
use reap_vmm::guest_os::{Sink, UnsupportedCalls};
use reap_vmm::instance::{ColdStart, ColdStartReport, Invocation};
use reap_vmm::snapshot::SnapshotDir;

use crate::jail::cgroup::{Cgroup, CgroupRoot};
use crate::jail::{self, Ids};
use crate::protocol::{self, Fault, FrameError, Reply, ReplyHeader, Request, micros};

/// How instance processes are started and confined.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The `reap` binary, run as `reap worker`.
    pub exe: PathBuf,
    /// Jailed as these ids; `None` runs them unconfined (no namespaces, root, seccomp
    /// or cgroup), for hosts without them and for debugging.
    pub jail: Option<Ids>,
    /// A cgroup per process (jailed only), when the host has a hierarchy.
    pub cgroups: bool,
    /// Processes kept started and waiting.
    pub prestart: usize,
    /// Memory a process may use beyond its guest memory and working set, in MiB (its
    /// cgroup's limit).
    pub overhead_mib: u64,
    /// Most tasks (threads) of a process.
    pub tasks_limit: u32,
    /// CPU limit of a process, in thousandths of a core.
    pub cpu_millicores: Option<u32>,
    /// The seccomp filter logs forbidden calls instead of killing.
    pub seccomp_log: bool,
    /// How long a process has to start and report ready.
    pub start_timeout: Duration,
    /// Processes make a VM shell (a KVM VM, its memory slot and vCPU) while they wait,
    /// of the size of the last restore.
    pub shells: bool,
}

/// The default [`WorkerConfig::overhead_mib`]: the VMM's heap, stacks and page tables
/// with room to spare (a process of a 128 MiB function peaks at about 10 MiB beyond its
/// guest memory here).
pub const OVERHEAD_MIB: u64 = 64;

impl WorkerConfig {
    /// Jailed processes of `exe` as `nobody`, with cgroups, two kept started.
    pub fn new(exe: PathBuf) -> Self {
        WorkerConfig {
            exe,
            jail: Some(Ids::default()),
            cgroups: true,
            prestart: 2,
            overhead_mib: OVERHEAD_MIB,
            tasks_limit: 16,
            cpu_millicores: None,
            seccomp_log: false,
            start_timeout: Duration::from_secs(10),
            shells: true,
        }
    }
}

/// Why an instance process could not be started, restore, or answer.
#[derive(Debug, thiserror::Error)]
pub enum WorkerError {
    /// The instance failed inside its process.
    #[error("{message}")]
    Instance {
        /// What kind of failure.
        fault: Fault,
        /// The error and its causes, as the process reported them.
        message: String,
    },
    /// The process ended (crashed, was killed, ran out of memory).
    #[error("the instance's process {how}")]
    Died {
        /// How it ended.
        how: String,
    },
    /// The process sent something that is not a valid reply: it was killed.
    #[error("the instance's process broke the protocol ({0}); it was killed")]
    Protocol(String),
    /// The process did not answer in time: it was killed.
    #[error("the instance's process did not answer within {0:?}; it was killed")]
    Unresponsive(Duration),
    /// No process could be started.
    #[error("cannot start an instance process: {0}")]
    Start(String),
    /// The working set the instance recorded could not be written.
    #[error("cannot write the working set")]
    WorkingSet(#[source] io::Error),
}

impl WorkerError {
    /// The kind of failure: the function's (a timeout, a crash, a bad answer; a process
    /// that died counts as a crash) or the runtime's.
    pub fn fault(&self) -> Fault {
        match self {
            WorkerError::Instance { fault, .. } => *fault,
            WorkerError::Died { .. } | WorkerError::Protocol(_) => Fault::Crash,
            WorkerError::Unresponsive(_) => Fault::Timeout,
            WorkerError::Start(_) | WorkerError::WorkingSet(_) => Fault::Runtime,
        }
    }
}

/// A started process, before its restore.
struct Worker {
    child: Child,
    sock: UnixStream,
    cgroup: Option<Cgroup>,
}

enum Job {
    /// Start processes until [`WorkerConfig::prestart`] are ready.
    Refill,
    /// Start one now (for a deploy, with `true`) and hand it over.
    Now(mpsc::Sender<Result<Worker, WorkerError>>, bool),
}

struct Shared {
    config: WorkerConfig,
    cgroups: Option<CgroupRoot>,
    ready: Mutex<VecDeque<Worker>>,
    /// Signalled when a process joins `ready`.
    started: Condvar,
    next_id: AtomicU64,
    /// Processes started, and taken ready (the rest were started on demand).
    spawned: AtomicU64,
    /// Guest memory (MiB) of the last restore: the size of the VM shell the next
    /// processes make while they wait.
    shell_mib: AtomicU64,
    taken_ready: AtomicU64,
}

/// The instance processes of a server: started ahead by a spawner thread, reaped by
/// a reaper thread.
pub struct Workers {
    shared: Arc<Shared>,
    jobs: Mutex<mpsc::Sender<Job>>,
    reaper: Mutex<mpsc::Sender<Option<Worker>>>,
    reaper_thread: Option<std::thread::JoinHandle<()>>,
}

/// Figures of [`Workers`].
#[derive(Debug, Clone, Copy, Default)]
pub struct WorkerStats {
    /// Processes started.
    pub spawned: u64,
    /// Restores that took a process started ahead.
    pub taken_ready: u64,
    /// Processes ready now.
    pub ready: usize,
}

impl Workers {
    /// Starts the spawner (which starts [`WorkerConfig::prestart`] processes at once)
    /// and the reaper. Without a cgroup hierarchy on the host, processes get none (a
    /// warning says so).
    pub fn new(config: WorkerConfig) -> io::Result<Workers> {
        let cgroups = if config.jail.is_some() && config.cgroups {
            let root = CgroupRoot::detect();
            if root.is_none() {
                tracing::warn!(
                    "no cgroup hierarchy at /sys/fs/cgroup: instance processes run without memory and task limits"
                );
            }
            root
        } else {
            None
        };
        let shared = Arc::new(Shared {
            config,
            cgroups,
            ready: Mutex::new(VecDeque::new()),
            started: Condvar::new(),
            next_id: AtomicU64::new(0),
            spawned: AtomicU64::new(0),
            shell_mib: AtomicU64::new(reap_vmm::microvm::DEFAULT_MEM_MIB),
            taken_ready: AtomicU64::new(0),
        });
        let (jobs, job_rx) = mpsc::channel::<Job>();
        if let Some(root) = &shared.cgroups {
            root.remove_stale();
        }
        let (reaper, reap_rx) = mpsc::channel::<Option<Worker>>();
        let s = Arc::clone(&shared);
        std::thread::Builder::new()
            .name("reap-spawner".into())
            .spawn(move || spawner(&s, &job_rx))?;
        let reaper_thread = std::thread::Builder::new()
            .name("reap-reaper".into())
            .spawn(move || {
                // `None`: the server is going; instances still out end themselves.
                while let Ok(Some(worker)) = reap_rx.recv() {
                    end(worker);
                }
            })?;
        let _ = jobs.send(Job::Refill);
        Ok(Workers {
            shared,
            jobs: Mutex::new(jobs),
            reaper: Mutex::new(reaper),
            reaper_thread: Some(reaper_thread),
        })
    }

    /// The configuration.
    pub fn config(&self) -> &WorkerConfig {
        &self.shared.config
    }

    /// The figures so far.
    pub fn stats(&self) -> WorkerStats {
        WorkerStats {
            spawned: self.shared.spawned.load(Ordering::Relaxed),
            taken_ready: self.shared.taken_ready.load(Ordering::Relaxed),
            ready: lock(&self.shared.ready).len(),
        }
    }

    /// Waits until `n` processes are ready (or `limit` passes); returns how many are.
    pub fn wait_ready(&self, n: usize, limit: Duration) -> usize {
        let deadline = Instant::now() + limit;
        let mut ready = lock(&self.shared.ready);
        while ready.len() < n {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            ready = self
                .shared
                .started
                .wait_timeout(ready, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        ready.len()
    }

    fn job(&self, job: Job) -> Result<(), WorkerError> {
        lock(&self.jobs)
            .send(job)
            .map_err(|_| WorkerError::Start("the spawner thread is gone".into()))
    }

    /// A started process: a ready one if there is, else one started now; for a deploy
    /// (`deploy`), always one started now (its filter differs).
    fn take(&self, deploy: bool) -> Result<Worker, WorkerError> {
        let ready = if deploy {
            None
        } else {
            lock(&self.shared.ready).pop_front()
        };
        if let Some(worker) = ready {
            self.shared.taken_ready.fetch_add(1, Ordering::Relaxed);
            let _ = self.job(Job::Refill);
            return Ok(worker);
        }
        let (tx, rx) = mpsc::channel();
        self.job(Job::Now(tx, deploy))?;
        let worker = rx
            .recv()
            .map_err(|_| WorkerError::Start("the spawner thread is gone".into()))?;
        let _ = self.job(Job::Refill);
        worker
    }

    /// Restores the snapshot in `dir` in `mode` in an instance process: its cgroup
    /// limited to `guest_mib` of guest memory plus its working set and the overhead,
    /// the guest's stderr written to `stderr`, at most `limit` for the restore.
    pub fn restore(
        &self,
        dir: &SnapshotDir,
        mode: MemoryMode,
        serve: ServeOptions,
        stderr: Sink,
        limit: Duration,
    ) -> Result<RemoteInstance, WorkerError> {
        let started = Instant::now();
        // The state first: the process needs it too, but a missing or damaged snapshot
        // is better told here, and the state gives the memory limit.
        let state = dir.read_state().map_err(snapshot)?;
        // What the process cannot check without reading all of it: the server does, once
        // per file (`file` mode maps the file, and the kernel reads it unchecked).
        let verified = if mode == MemoryMode::File {
            let memory = dir.open_memory(&state).map_err(snapshot)?;
            let stamp = dir.verified_stamp(&memory).map_err(snapshot)?;
            stamp.map(|(s, _)| s)
        } else {
            None
        };
        let directory = std::fs::File::open(&dir.dir).map_err(|e| {
            runtime(format!(
                "cannot open the snapshot directory {}: {e}",
                dir.dir.display()
            ))
        })?;
        self.shared
            .shell_mib
            .store(state.memory_len >> 20, Ordering::Relaxed);
        let ws_len = match dir.ws_policy(mode) {
            Some(WsPolicy::Reap { ws }) => std::fs::metadata(ws).map(|m| m.len()).unwrap_or(0),
            _ => 0,
        };
        let mut instance = self.instance(
            false,
            stderr,
            dir.clone(),
            mode,
            state.memory_len.saturating_add(ws_len),
        )?;
        let w = instance.worker.as_ref().expect("just set");
        // The image a snapshot of a program from a root file system reads (its path as
        // the snapshot records it): the process cannot open it by path.
        let image = state.vm.os.fs.root.clone();
        let image_dir = match &image {
            Some(path) => Some(open_path_dir(path).map_err(|e| {
                runtime(format!(
                    "cannot open the root file system {}: {e}",
                    path.display()
                ))
            })?),
            None => None,
        };
        let request = Request::Restore {
            mode,
            serve,
            verified,
            image,
        };
        let mut fds = vec![directory.as_fd()];
        fds.extend(image_dir.as_ref().map(AsFd::as_fd));
        let prepare_us = micros(started.elapsed());
        let sent_ns = reap_vmm::guest_os::threads::monotonic_ns();
        protocol::send(&w.sock, &request, &[], &fds).map_err(|e| instance.broken(e, limit))?;
        drop(directory);
        let remaining = limit.saturating_sub(started.elapsed());
        let (reply, _) = instance.receive(remaining.max(Duration::from_millis(100)))?;
        match reply {
            Reply::Restored {
                mut cold_start,
                confine_us,
                handled_us,
                received_ns,
            } => {
                // The restore as the server sees it: the process's own figure plus the
                // hop to it.
                let total = micros(started.elapsed());
                let inner = cold_start.restore_us + cold_start.fetch_us + cold_start.install_us;
                instance.hop_us = total.saturating_sub(inner);
                let to_process_us = received_ns.saturating_sub(sent_ns) / 1000;
                instance.hop = Hop {
                    prepare_us,
                    confine_us,
                    process_other_us: handled_us.saturating_sub(inner + confine_us),
                    to_process_us,
                    from_process_us: total
                        .saturating_sub(prepare_us + handled_us)
                        .saturating_sub(to_process_us),
                };
                cold_start.restore_us += instance.hop_us;
                instance.cold_start = Some(cold_start);
                Ok(instance)
            }
            Reply::Failed { fault, message } => Err(WorkerError::Instance { fault, message }),
            other => Err(instance.protocol(format!("unexpected reply to a restore: {other:?}"))),
        }
    }
}

impl Workers {
    /// A process taken for an instance (a deploy with `deploy`) of the snapshot in
    /// `dir`, its cgroup limited to `memory` bytes plus the overhead.
    fn instance(
        &self,
        deploy: bool,
        stderr: Sink,
        dir: SnapshotDir,
        mode: MemoryMode,
        memory: u64,
    ) -> Result<RemoteInstance, WorkerError> {
        let worker = self.take(deploy)?;
        let limit_bytes = memory.saturating_add(self.shared.config.overhead_mib << 20);
        let limit_mib = match &worker.cgroup {
            Some(cgroup) => {
                cgroup
                    .set_memory_limit(limit_bytes)
                    .map_err(|e| WorkerError::Start(e.to_string()))?;
                Some(limit_bytes >> 20)
            }
            None => None,
        };
        Ok(RemoteInstance {
            worker: Some(worker),
            reaper: lock(&self.reaper).clone(),
            stderr,
            dir,
            mode,
            cold_start: None,
            unsupported: UnsupportedCalls::default(),
            limit_mib,
            hop_us: 0,
            hop: Hop::default(),
        })
    }
}

/// A function booted and snapshotted in an instance process ([`Workers::deploy`]).
#[derive(Debug, Clone, Copy)]
pub struct DeployReport {
    /// Boot until the ready point.
    pub boot: Duration,
    /// Writing the snapshot.
    pub snapshot: Duration,
    /// Bytes of guest memory that hold data.
    pub memory_data_bytes: u64,
}

impl Workers {
    /// Boots `image` with `config` to its ready point (within `limit`) in a jailed
    /// process and snapshots it into `staging/snapshot`: the process gets `staging`
    /// (which must hold nothing else) as its root, writable by its uid for the time of
    /// the deploy; the snapshot's files are then given back to the server's user, so
    /// that no instance process can change them. For a program from a root file system
    /// (`config.rootfs`), `image_dir` is the directory that holds the image now (the
    /// process reads it, read-only, through a descriptor); the snapshot records
    /// `config.rootfs`'s path for it.
    pub fn deploy(
        &self,
        image: &[u8],
        config: &reap_vmm::microvm::MicroVmConfig,
        stderr: Sink,
        limit: Duration,
        staging: &std::path::Path,
        image_dir: Option<&std::path::Path>,
    ) -> Result<DeployReport, WorkerError> {
        let image_fd = match (&config.rootfs, image_dir) {
            (Some(_), Some(dir)) => Some(open_path_dir(dir).map_err(|e| {
                runtime(format!(
                    "cannot open the root file system {}: {e}",
                    dir.display()
                ))
            })?),
            (None, None) => None,
            _ => {
                return Err(runtime(
                    "a deploy from a root file system needs its directory, and only it",
                ));
            }
        };
        let directory = std::fs::File::open(staging).map_err(|e| {
            runtime(format!(
                "cannot open the staging directory {}: {e}",
                staging.display()
            ))
        })?;
        // SAFETY: plain id queries.
        let (uid, gid) = unsafe { (libc::geteuid(), libc::getegid()) };
        if let Some(ids) = self.shared.config.jail {
            std::os::unix::fs::fchown(&directory, Some(ids.uid), Some(ids.gid)).map_err(|e| {
                runtime(format!(
                    "cannot lend {} to the deploy: {e}",
                    staging.display()
                ))
            })?;
        }
        let mut instance = self.instance(
            true,
            stderr,
            SnapshotDir::new(staging.join("snapshot")),
            MemoryMode::File,
            config.mem_mib << 20,
        )?;
        let w = instance.worker.as_ref().expect("just set");
        let request = Request::Deploy {
            mem_mib: config.mem_mib,
            args: config.args.clone(),
            env: config.env.clone(),
            limit_us: micros(limit),
            rootfs: config.rootfs.clone(),
        };
        let mut fds = vec![directory.as_fd()];
        fds.extend(image_fd.as_ref().map(AsFd::as_fd));
        let sent = protocol::send(&w.sock, &request, &[image], &fds);
        let result = match sent {
            Err(e) => Err(instance.broken(e, limit)),
            Ok(()) => match instance.receive(limit + Duration::from_secs(30)) {
                Ok((
                    Reply::Deployed {
                        boot_us,
                        snapshot_us,
                        memory_data_bytes,
                    },
                    _,
                )) => Ok(DeployReport {
                    boot: Duration::from_micros(boot_us),
                    snapshot: Duration::from_micros(snapshot_us),
                    memory_data_bytes,
                }),
                Ok((Reply::Failed { fault, message }, _)) => {
                    Err(WorkerError::Instance { fault, message })
                }
                Ok((other, _)) => {
                    Err(instance.protocol(format!("unexpected reply to a deploy: {other:?}")))
                }
                Err(e) => Err(e),
            },
        };
        drop(instance);
        // Back to the server's user, whatever happened.
        let mut back = vec![staging.to_path_buf()];
        if let Ok(entries) = std::fs::read_dir(staging) {
            for entry in entries.flatten() {
                back.push(entry.path());
                if entry.file_type().is_ok_and(|t| t.is_dir())
                    && let Ok(inner) = std::fs::read_dir(entry.path())
                {
                    back.extend(inner.flatten().map(|e| e.path()));
                }
            }
        }
        for path in back {
            std::os::unix::fs::lchown(&path, Some(uid), Some(gid))
                .map_err(|e| runtime(format!("cannot take back {}: {e}", path.display())))?;
        }
        result
    }
}

fn snapshot(e: reap_vmm::snapshot::SnapshotError) -> WorkerError {
    WorkerError::Instance {
        fault: crate::child::snapshot_fault(&e),
        message: reap_error::chain(&e),
    }
}

/// An `O_PATH` descriptor of the directory `path`.
fn open_path_dir(path: &std::path::Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_PATH | libc::O_DIRECTORY)
        .open(path)
}

fn runtime(e: impl std::fmt::Display) -> WorkerError {
    WorkerError::Instance {
        fault: Fault::Runtime,
        message: e.to_string(),
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn spawner(shared: &Arc<Shared>, jobs: &mpsc::Receiver<Job>) {
    for job in jobs {
        match job {
            Job::Now(reply, deploy) => {
                let _ = reply.send(spawn(shared, deploy));
            }
            Job::Refill => loop {
                if lock(&shared.ready).len() >= shared.config.prestart {
                    break;
                }
                match spawn(shared, false) {
                    Ok(worker) => {
                        lock(&shared.ready).push_back(worker);
                        shared.started.notify_all();
                    }
                    Err(e) => {
                        tracing::warn!("cannot start an instance process ahead: {e}");
                        break;
                    }
                }
            },
        }
    }
}

impl std::fmt::Debug for Workers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Workers")
            .field("config", &self.shared.config)
            .field("stats", &self.stats())
            .finish()
    }
}

impl Drop for Workers {
    /// Ends the processes started ahead and those handed to the reaper, removing their
    /// cgroups, before returning.
    fn drop(&mut self) {
        let ready: Vec<Worker> = lock(&self.shared.ready).drain(..).collect();
        for worker in ready {
            end(worker);
        }
        let _ = lock(&self.reaper).send(None);
        if let Some(t) = self.reaper_thread.take() {
            let _ = t.join();
        }
    }
}

/// Starts one process and waits for it to report ready.
fn spawn(shared: &Shared, deploy: bool) -> Result<Worker, WorkerError> {
    let config = &shared.config;
    let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
    let start_err =
        |what: &str, e: &dyn std::fmt::Display| WorkerError::Start(format!("{what}: {e}"));
    let cgroup = match &shared.cgroups {
        Some(root) => {
            let cg = root
                .create(&format!("{}-{id}", std::process::id()))
                .map_err(|e| start_err("cgroup", &e))?;
            cg.set_tasks_limit(config.tasks_limit)
                .map_err(|e| start_err("cgroup", &e))?;
            if let Some(m) = config.cpu_millicores {
                cg.set_cpu_limit(m).map_err(|e| start_err("cgroup", &e))?;
            }
            Some(cg)
        }
        None => None,
    };
    let procs = match &cgroup {
        Some(cg) => cg.procs_files().map_err(|e| start_err("cgroup", &e))?,
        None => Vec::new(),
    };
    let (ours, theirs) = UnixStream::pair().map_err(|e| start_err("socketpair", &e))?;
    let mut cmd = Command::new(&config.exe);
    cmd.arg("worker");
    match config.jail {
        Some(ids) => {
            cmd.args(["--uid", &ids.uid.to_string(), "--gid", &ids.gid.to_string()]);
        }
        None => {
            cmd.arg("--no-jail");
        }
    }
    if config.seccomp_log {
        cmd.arg("--seccomp-log");
    }
    if deploy {
        cmd.arg("--for-deploy");
    } else if config.shells {
        cmd.args([
            "--shell-mib",
            &shared.shell_mib.load(Ordering::Relaxed).to_string(),
        ]);
    }
    cmd.stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::inherit());
    let socket_fd = theirs.as_raw_fd();
    let procs_fds: Vec<i32> = procs.iter().map(AsRawFd::as_raw_fd).collect();
    // SAFETY: the closure only makes async-signal-safe system calls on descriptors
    // that stay open until the spawn returns (`theirs`, `procs`), with data allocated
    // before the fork.
    unsafe {
        cmd.pre_exec(move || jail::pre_exec(socket_fd, &procs_fds));
    }
    let child = cmd
        .spawn()
        .map_err(|e| start_err(&format!("cannot run {}", config.exe.display()), &e))?;
    drop(theirs);
    drop(procs);
    shared.spawned.fetch_add(1, Ordering::Relaxed);
    let mut worker = Worker {
        child,
        sock: ours,
        cgroup,
    };
    let _ = worker.sock.set_read_timeout(Some(config.start_timeout));
    let got = protocol::recv::<ReplyHeader>(&worker.sock);
    let _ = worker.sock.set_read_timeout(None);
    let result = match got {
        Ok((
            ReplyHeader {
                reply: Reply::Ready,
                ..
            },
            _,
            _,
        )) => return Ok(worker),
        Ok((
            ReplyHeader {
                reply: Reply::Failed { message, .. },
                ..
            },
            _,
            _,
        )) => WorkerError::Start(message),
        Ok((other, _, _)) => {
            WorkerError::Start(format!("unexpected first reply {:?}", other.reply))
        }
        Err(FrameError::Io(e)) if e.kind() == io::ErrorKind::WouldBlock => {
            WorkerError::Start(format!("not ready within {:?}", config.start_timeout))
        }
        Err(e) => {
            let how = exit_of(&mut worker.child).map_or_else(|| e.to_string(), describe);
            WorkerError::Start(format!("the process {how}"))
        }
    };
    end_now(&mut worker);
    Err(result)
}

/// Waits briefly for `child` to end, for its status.
fn exit_of(child: &mut Child) -> Option<ExitStatus> {
    let deadline = Instant::now() + Duration::from_millis(500);
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(1)),
            _ => return None,
        }
    }
}

/// How a process ended, in words.
fn describe(status: ExitStatus) -> String {
    match (status.code(), status.signal()) {
        (_, Some(libc::SIGSYS)) => {
            "was killed by its seccomp filter (SIGSYS: a system call outside its allowed list)"
                .into()
        }
        (_, Some(signal)) => format!("was killed by signal {signal} ({})", signal_name(signal)),
        (Some(101), _) => "panicked (exit status 101)".into(),
        (Some(code), _) => format!("exited with status {code}"),
        (None, None) => "ended".into(),
    }
}

fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGKILL => "SIGKILL",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGTERM => "SIGTERM",
        libc::SIGILL => "SIGILL",
        libc::SIGFPE => "SIGFPE",
        _ => "signal",
    }
}

/// Kills a process and waits for it, then removes its cgroup.
fn end(mut worker: Worker) {
    end_now(&mut worker);
}

fn end_now(worker: &mut Worker) {
    // Its process group: the outer process (which made the group) and the process in
    // the PID namespace it started.
    if let Ok(pgid) = i32::try_from(worker.child.id()) {
        // SAFETY: a signal to the process group of our own child, not yet waited for.
        unsafe { libc::kill(-pgid, libc::SIGKILL) };
    }
    let _ = worker.child.kill();
    let _ = worker.child.wait();
    if let Some(cgroup) = worker.cgroup.take()
        && let Err(e) = cgroup.remove()
    {
        tracing::warn!("{e}");
    }
}

/// An instance in its own process: restored, serving invocations one at a time.
pub struct RemoteInstance {
    worker: Option<Worker>,
    reaper: mpsc::Sender<Option<Worker>>,
    stderr: Sink,
    dir: SnapshotDir,
    mode: MemoryMode,
    cold_start: Option<ColdStart>,
    unsupported: UnsupportedCalls,
    /// The cgroup's memory limit.
    limit_mib: Option<u64>,
    /// Of the restore's time, what the process did not measure itself: taking the
    /// process, the server's checks, the socket, confining the process.
    hop_us: u64,
    /// The parts of `hop_us`.
    hop: Hop,
}

/// Where the hop to an instance process goes ([`RemoteInstance::hop`]), microseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Hop {
    /// The server's part before sending the restore: reading the state, `file` mode's
    /// verification stamp, taking a process, its cgroup limit, opening the directories.
    pub prepare_us: u64,
    /// The process confining itself to the snapshot directory.
    pub confine_us: u64,
    /// In the process around the restore but not in its own figures (settings, the
    /// reply's encoding).
    pub process_other_us: u64,
    /// The socket both ways and waking each side: from sending the request to the
    /// process having read it ...
    pub to_process_us: u64,
    /// ... and from the process replying to the server having read the reply.
    pub from_process_us: u64,
}

impl RemoteInstance {
    /// The cold start that made this instance.
    pub fn cold_start(&self) -> Option<&ColdStart> {
        self.cold_start.as_ref()
    }

    /// The cold start with its first invocation `inv`, if `inv` was that invocation.
    pub fn cold_start_report(&self, inv: &Invocation) -> Option<ColdStartReport> {
        let cold_start = self.cold_start.as_ref().filter(|_| inv.cold)?;
        Some(ColdStartReport {
            cold_start: cold_start.clone(),
            invocation: inv.clone(),
        })
    }

    /// The unsupported system calls the guest made since the last call.
    pub fn take_unsupported_syscalls(&mut self) -> UnsupportedCalls {
        std::mem::take(&mut self.unsupported)
    }

    /// Of the restore's time (in [`ColdStart::restore_us`]), what the process did not
    /// measure itself: taking the process, the server's checks, the socket round trip,
    /// confining the process.
    pub fn hop_us(&self) -> u64 {
        self.hop_us
    }

    /// [`RemoteInstance::hop_us`] in its parts.
    pub fn hop(&self) -> Hop {
        self.hop
    }

    /// The peak memory use of the process's cgroup, in bytes (jailed with cgroups
    /// only).
    pub fn memory_peak(&self) -> Option<u64> {
        self.worker.as_ref()?.cgroup.as_ref()?.memory_peak()
    }

    /// The process's pid (of its outer process, in the server's PID namespace).
    pub fn pid(&self) -> Option<u32> {
        self.worker.as_ref().map(|w| w.child.id())
    }

    /// Sends one request line and waits for the response line, at most `limit` (the
    /// process enforces it; the server waits a second longer, then kills it).
    pub fn invoke(
        &mut self,
        request: &[u8],
        limit: Duration,
    ) -> Result<(Vec<u8>, Invocation), WorkerError> {
        let Some(w) = self.worker.as_ref() else {
            return Err(WorkerError::Protocol(
                "the instance has failed before".into(),
            ));
        };
        let header = Request::Invoke {
            limit_us: micros(limit),
        };
        protocol::send(&w.sock, &header, &[request], &[]).map_err(|e| self.broken(e, limit))?;
        let (reply, response) = self.receive(limit + Duration::from_secs(1))?;
        match reply {
            Reply::Answered {
                mut invocation,
                recorded_ws,
            } => {
                if let Some(offsets) = recorded_ws {
                    invocation.ws_pages_written = Some(self.write_ws(&offsets)?);
                }
                Ok((response, invocation))
            }
            Reply::Failed { fault, message } => {
                self.retire();
                Err(WorkerError::Instance { fault, message })
            }
            other => Err(self.protocol(format!("unexpected reply to an invocation: {other:?}"))),
        }
    }

    /// Writes the working set the process recorded (it cannot write the snapshot's
    /// directory), from the memory file, where the snapshot's WS file goes.
    fn write_ws(&self, offsets: &[u64]) -> Result<u64, WorkerError> {
        let Some(WsPolicy::Record { ws } | WsPolicy::Reap { ws }) = self.dir.ws_policy(self.mode)
        else {
            return Err(WorkerError::WorkingSet(io::Error::other(
                "a working set came from a cold start that does not record",
            )));
        };
        fn failed(e: impl std::error::Error) -> WorkerError {
            WorkerError::WorkingSet(io::Error::other(reap_error::chain(&e)))
        }
        let state = self.dir.read_state().map_err(failed)?;
        let memory = self.dir.open_memory(&state).map_err(failed)?;
        let summary = reap_pager::ws::write_ws(&ws, PAGE_4K, offsets, &memory).map_err(failed)?;
        Ok(summary.pages)
    }

    /// Receives a reply within `limit`, passing on its stderr and unsupported calls.
    fn receive(&mut self, limit: Duration) -> Result<(Reply, Vec<u8>), WorkerError> {
        let w = self.worker.as_ref().expect("a live process");
        let _ = w
            .sock
            .set_read_timeout(Some(limit.max(Duration::from_millis(1))));
        let got = protocol::recv::<ReplyHeader>(&w.sock);
        match got {
            Ok((ReplyHeader { reply, trailer }, mut payload, _fds)) => {
                let stderr_len = trailer.stderr_len as usize;
                if stderr_len > payload.len() {
                    return Err(self.protocol("stderr longer than the payload".into()));
                }
                let stderr = payload.split_off(payload.len() - stderr_len);
                if !stderr.is_empty() {
                    let _ = self.stderr.write_all(&stderr);
                }
                if trailer.stderr_dropped > 0 {
                    let _ = writeln!(
                        self.stderr,
                        "[reap: {} bytes of stderr dropped]",
                        trailer.stderr_dropped
                    );
                }
                if trailer.unsupported.len() > reap_vmm::guest_os::MAX_LOGGED_UNSUPPORTED {
                    return Err(self.protocol("too many unsupported system call numbers".into()));
                }
                for (nr, n) in trailer.unsupported {
                    *self.unsupported.by_nr.entry(nr).or_default() += n;
                }
                self.unsupported.other += trailer.unsupported_other;
                Ok((reply, payload))
            }
            Err(e) => Err(self.broken(e, limit)),
        }
    }

    /// The error for a socket failure: a process that timed out, died or sent garbage
    /// is finished (and killed).
    fn broken(&mut self, e: FrameError, limit: Duration) -> WorkerError {
        match e {
            FrameError::Io(io)
                if matches!(
                    io.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                self.retire();
                WorkerError::Unresponsive(limit)
            }
            FrameError::Bad(why) if !why.contains("closed") => self.protocol(why),
            _ => {
                let Some(mut w) = self.worker.take() else {
                    return WorkerError::Died {
                        how: "ended".into(),
                    };
                };
                let mut how = exit_of(&mut w.child).map_or_else(|| "ended".to_owned(), describe);
                if let Some(cg) = &w.cgroup
                    && cg.oom_killed()
                {
                    how = format!(
                        "ran out of its memory limit of {} MiB and was killed",
                        self.limit_mib.unwrap_or(0)
                    );
                }
                self.hand_to_reaper(w);
                WorkerError::Died { how }
            }
        }
    }

    fn protocol(&mut self, why: String) -> WorkerError {
        self.retire();
        WorkerError::Protocol(why)
    }

    /// Hands the process to the reaper.
    fn retire(&mut self) {
        if let Some(w) = self.worker.take() {
            self.hand_to_reaper(w);
        }
    }

    /// Has the reaper end `w`, or ends it now if the reaper is gone.
    fn hand_to_reaper(&self, w: Worker) {
        if let Err(mpsc::SendError(Some(w))) = self.reaper.send(Some(w)) {
            end(w);
        }
    }
}

impl Drop for RemoteInstance {
    fn drop(&mut self) {
        self.retire();
    }
}
