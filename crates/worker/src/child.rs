//! The instance process (`reap worker`): sets up its jail, tells the server it is
//! ready, then restores one snapshot and serves its invocations until the server
//! closes the socket.

use std::io::{self, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::UnixStream;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reap_vmm::instance::{Instance, InstanceError};
use reap_vmm::microvm::{GuestFault, VmError};
use reap_vmm::snapshot::{self, SnapshotDir};

use crate::jail::{self, Ids};
use crate::protocol::{self, Fault, FrameError, Reply, ReplyHeader, Request, Trailer, micros};

/// The descriptor the server puts the socket on.
pub const SOCKET_FD: i32 = 3;

/// How the instance process runs.
#[derive(Debug, Clone, Default)]
pub struct Options {
    /// Jailed as these ids (namespaces, empty root, seccomp); `None` runs unconfined,
    /// for hosts without namespaces and for debugging.
    pub jail: Option<Ids>,
    /// The seccomp filter logs forbidden calls instead of killing.
    pub seccomp_log: bool,
    /// The process deploys (boots and snapshots) instead of restoring: its filter
    /// allows writing the snapshot.
    pub deploy: bool,
    /// Guest memory, in MiB, of the VM shell made while the process waits (the size
    /// the server expects the next restore to have); none with `None`.
    pub shell_mib: Option<u64>,
}

/// What `reap worker --check-jail DIR` does: enters the jail exactly as a restore of
/// the snapshot in `dir` would, then reports what the process can do there.
#[derive(Debug, Clone, Default)]
pub struct Check {
    /// The directory that becomes the root.
    pub dir: std::path::PathBuf,
    /// Paths to try to open (read-only), each reported.
    pub open: Vec<String>,
    /// A system call to make last (with zero arguments): one outside the seccomp
    /// filter's list kills the process with `SIGSYS`.
    pub syscall: Option<i64>,
    /// Its arguments (up to six; the rest are zero).
    pub syscall_args: Vec<i64>,
}

/// Runs [`Check`] jailed as `ids`, printing one line per finding on stdout; the exit
/// status is the process's (killed by `SIGSYS` if `check.syscall` is forbidden).
pub fn check_jail(check: &Check, ids: Ids, seccomp_log: bool) -> ExitCode {
    let mut out = io::stdout().lock();
    // As `enter` does, with the ids and capabilities read between the drop of
    // privileges and the filter (which allows neither query).
    let setup = |out: &mut io::StdoutLock<'_>| -> io::Result<()> {
        let dir = std::fs::File::open(&check.dir)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", check.dir.display())))?;
        enter_namespaces()?;
        jail::prepare()?;
        let program = jail::seccomp::filter(seccomp_log, false).map_err(io::Error::other)?;
        jail::seccomp::install(&program).map_err(io::Error::other)?;
        jail::confine(dir.into(), ids, &[], false)?;
        // SAFETY: plain id queries.
        let (uid, gid) = unsafe { (libc::getuid(), libc::getgid()) };
        writeln!(out, "uid {uid} gid {gid}")?;
        let [e, p, i] = jail::capabilities()?;
        writeln!(
            out,
            "capabilities effective {e:#x} permitted {p:#x} inheritable {i:#x}"
        )?;
        out.flush()
    };
    if let Err(e) = setup(&mut out) {
        eprintln!("reap worker: cannot enter the jail: {e}");
        return ExitCode::FAILURE;
    }
    for path in &check.open {
        match std::fs::read(path) {
            Ok(bytes) => {
                let _ = writeln!(out, "open {path}: read {} bytes", bytes.len());
            }
            Err(e) => {
                let _ = writeln!(out, "open {path}: {e}");
            }
        }
    }
    if let Some(nr) = check.syscall {
        let _ = writeln!(out, "syscall {nr}");
        let _ = out.flush();
        let mut a = [0i64; 6];
        for (slot, &v) in a.iter_mut().zip(&check.syscall_args) {
            *slot = v;
        }
        // SAFETY: a system call to see whether the filter kills the process; the tests
        // pass arguments with which the listed calls fail harmlessly (bad descriptors
        // and addresses).
        let rc = unsafe { libc::syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]) };
        let _ = writeln!(out, "syscall {nr} returned {rc}");
    }
    ExitCode::SUCCESS
}

/// Fault injection for the tests of the server's handling of a broken instance
/// process (`REAP_WORKER_FAULT`): `panic-on-request:TEXT` panics in the invocation path
/// when a request contains TEXT.
const FAULT_ENV: &str = "REAP_WORKER_FAULT";

/// Runs the instance process on the socket at [`SOCKET_FD`].
pub fn main(options: &Options) -> ExitCode {
    // A panic says what it was and ends the process (status 101): no backtrace, whose
    // symbolization needs system calls the seccomp filter does not allow.
    std::panic::set_hook(Box::new(|info| eprintln!("reap worker: {info}")));
    // SAFETY: the server put our end of the socket on this descriptor, and nothing
    // else in this process owns it.
    let sock = unsafe { UnixStream::from_raw_fd(SOCKET_FD) };
    if options.jail.is_some() {
        if let Err(e) = enter_namespaces() {
            return fail(&sock, &format!("cannot enter the jail's namespaces: {e}"));
        }
        if let Err(e) = jail::prepare() {
            return fail(&sock, &format!("cannot set up the jail: {e}"));
        }
    }
    // One restore per process: a shell made now (off the cold start's path) if the
    // restore's size is the one expected, none made or kept after.
    reap_vmm::vstate::shell::set_limit(0);
    if let Some(mib) = options.shell_mib.filter(|_| !options.deploy)
        && let Err(e) = reap_vmm::vstate::shell::prefill(mib << 20)
    {
        eprintln!("reap worker: no VM shell made ahead: {e}");
    }
    // Set up at a low priority (beside the cold starts of the processes before it);
    // ready, at the normal one (a server that is not root cannot: it stays low).
    let _ = jail::normal_priority();
    if let Err(e) = jail::short_slice() {
        eprintln!("reap worker: no short scheduling slice: {e}");
    }
    if options.jail.is_some() {
        // Installed now, while the process waits: it allows the confinement's calls,
        // which do nothing once the privileges are gone.
        let installed = jail::seccomp::filter(options.seccomp_log, options.deploy)
            .map_err(io::Error::other)
            .and_then(|program| jail::seccomp::install(&program).map_err(io::Error::other));
        if let Err(e) = installed {
            return fail(&sock, &format!("cannot install the seccomp filter: {e}"));
        }
    }
    if let Err(e) = send(&sock, Reply::Ready, &[], Trailer::default()) {
        eprintln!("reap worker: {e}");
        return ExitCode::FAILURE;
    }
    match serve(&sock, options) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("reap worker: {}", reap_error::chain(&e));
            ExitCode::FAILURE
        }
    }
}

/// Unshares the jail's namespaces and forks: the child, the first process of the new
/// PID namespace, returns; the parent waits for it and ends the way it ended.
fn enter_namespaces() -> io::Result<()> {
    jail::unshare()?;
    // SAFETY: the process has one thread here.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    if pid == 0 {
        // SAFETY: plain prctl; killed with the outer process.
        unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL, 0, 0, 0) };
        return Ok(());
    }
    // The outer process keeps no socket: the server sees EOF when the inner one ends.
    // SAFETY: closing our copy of the socket descriptor (if any), which nothing here
    // uses.
    unsafe { libc::close(SOCKET_FD) };
    let mut status = 0;
    loop {
        // SAFETY: waiting for our child.
        let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
        if rc == pid {
            break;
        }
        if rc < 0 && io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            std::process::exit(1);
        }
    }
    if libc::WIFSIGNALED(status) {
        let signal = libc::WTERMSIG(status);
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        // SAFETY: resetting the signal's action and raising it on ourselves, so the
        // server sees the signal that ended the instance; no core file.
        unsafe {
            libc::setrlimit(libc::RLIMIT_CORE, &no_core);
            libc::signal(signal, libc::SIG_DFL);
            let mut set: libc::sigset_t = std::mem::zeroed();
            libc::sigemptyset(&mut set);
            libc::sigaddset(&mut set, signal);
            libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
            libc::raise(signal);
        }
    }
    std::process::exit(libc::WEXITSTATUS(status));
}

fn fail(sock: &UnixStream, message: &str) -> ExitCode {
    let _ = send_failed(sock, message);
    eprintln!("reap worker: {message}");
    ExitCode::FAILURE
}

/// Reports a failure of the runtime (not the function's) that leaves no instance.
fn send_failed(sock: &UnixStream, message: &str) -> Result<(), FrameError> {
    send(
        sock,
        Reply::Failed {
            fault: Fault::Runtime,
            message: message.to_owned(),
        },
        &[],
        Trailer::default(),
    )
}

/// The guest's stderr, kept until the next reply, at most [`protocol::MAX_STDERR`].
#[derive(Clone, Default)]
struct Stderr(Arc<Mutex<(Vec<u8>, u64)>>);

impl Stderr {
    fn take(&self) -> (Vec<u8>, u64) {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Write for Stderr {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let mut g = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let (kept, dropped) = &mut *g;
        let room = (protocol::MAX_STDERR as usize).saturating_sub(kept.len());
        let n = buf.len().min(room);
        kept.extend_from_slice(&buf[..n]);
        *dropped += (buf.len() - n) as u64;
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

fn send(
    sock: &UnixStream,
    reply: Reply,
    payload: &[u8],
    trailer: Trailer,
) -> Result<(), FrameError> {
    protocol::send(sock, &ReplyHeader { reply, trailer }, &[payload], &[])
}

/// Sends `reply` with the stderr and unsupported calls gathered since the last one.
fn reply(
    sock: &UnixStream,
    reply: Reply,
    payload: &[u8],
    stderr: &Stderr,
    instance: Option<&mut Instance>,
) -> Result<(), FrameError> {
    let (err, stderr_dropped) = stderr.take();
    let mut trailer = Trailer {
        stderr_len: err.len() as u32,
        stderr_dropped,
        ..Trailer::default()
    };
    if let Some(instance) = instance {
        let calls = instance.take_unsupported_syscalls();
        trailer.unsupported = calls.by_nr.into_iter().collect();
        trailer.unsupported_other = calls.other;
    }
    protocol::send(sock, &ReplyHeader { reply, trailer }, &[payload, &err], &[])
}

/// The kind of an instance's failure.
pub fn fault_of(e: &InstanceError) -> Fault {
    match e {
        InstanceError::Snapshot(s) => snapshot_fault(s),
        // The page server stops on a page that fails its checksum, saying the memory
        // file is damaged (`reap_pager::sums`).
        InstanceError::PageServer(why) if why.contains("damaged") => Fault::Damaged,
        InstanceError::Vm(VmError::Guest(GuestFault::Timeout(_))) => Fault::Timeout,
        e if !e.is_function_fault() => Fault::Runtime,
        InstanceError::Vm(_) | InstanceError::Exited(_) => Fault::Crash,
        _ => Fault::BadResponse,
    }
}

/// The kind of a snapshot's failure: damaged files, or the runtime's (e.g. an I/O
/// error).
pub fn snapshot_fault(e: &reap_vmm::snapshot::SnapshotError) -> Fault {
    use reap_vmm::snapshot::SnapshotError as S;
    match e {
        S::Format { .. }
        | S::MemorySize { .. }
        | S::MemoryMismatch { .. }
        | S::Inconsistent { .. }
        | S::Sums { .. }
        | S::SumsMismatch { .. }
        | S::MemoryDamaged(_) => Fault::Damaged,
        S::Io(_) | S::Vm(_) => Fault::Runtime,
    }
}

fn failed(e: &InstanceError) -> Reply {
    Reply::Failed {
        fault: fault_of(e),
        message: reap_error::chain(e),
    }
}

fn serve(sock: &UnixStream, options: &Options) -> Result<(), FrameError> {
    let stderr = Stderr::default();
    let panic_on = std::env::var(FAULT_ENV)
        .ok()
        .and_then(|v| {
            v.strip_prefix("panic-on-request:")
                .map(|t| t.as_bytes().to_vec())
        })
        .filter(|t| !t.is_empty());
    let mut instance: Option<Instance> = None;
    loop {
        let (request, payload, mut fds) = match protocol::recv::<Request>(sock) {
            Ok(r) => r,
            Err(FrameError::Closed) => return Ok(()),
            Err(e) => return Err(e),
        };
        let received = Instant::now();
        let received_ns = reap_vmm::guest_os::threads::monotonic_ns();
        match request {
            Request::Restore {
                mode,
                serve,
                verified,
                image,
            } => {
                let wanted = 1 + usize::from(image.is_some());
                if instance.is_some() || fds.len() != wanted || options.deploy {
                    return Err(FrameError::Bad(
                        "a restore needs one directory, no instance yet, and a process \
                         started for restores"
                            .into(),
                    ));
                }
                let snapshot_dir = fds.remove(0);
                let mut also = Vec::new();
                if let (Some(path), Some(root)) = (image, fds.pop()) {
                    match root.try_clone() {
                        Ok(copy) => also.push(copy),
                        Err(e) => {
                            return Err(FrameError::Bad(format!("the image descriptor: {e}")));
                        }
                    }
                    reap_vmm::guest_os::fs::image::provide(path, root);
                }
                let confining = Instant::now();
                let dir = match enter(snapshot_dir, options, &also) {
                    Ok(dir) => dir,
                    Err(e) => {
                        send_failed(sock, &format!("cannot confine the instance: {e}"))?;
                        continue;
                    }
                };
                let confine_us = micros(confining.elapsed());
                if let Some(stamp) = verified {
                    snapshot::trust_verified(stamp);
                }
                match Instance::restore_with(&dir, mode, Box::new(stderr.clone()), serve) {
                    Ok(mut restored) => {
                        restored.keep_recorded_ws();
                        let cold_start = restored
                            .cold_start()
                            .cloned()
                            .expect("a restored instance has a cold start");
                        reply(
                            sock,
                            Reply::Restored {
                                cold_start,
                                confine_us,
                                handled_us: micros(received.elapsed()),
                                received_ns,
                            },
                            &[],
                            &stderr,
                            Some(&mut restored),
                        )?;
                        instance = Some(restored);
                    }
                    Err(e) => reply(sock, failed(&e), &[], &stderr, None)?,
                }
            }
            Request::Deploy {
                mem_mib,
                args,
                env,
                limit_us,
                rootfs,
            } => {
                let wanted = 1 + usize::from(rootfs.is_some());
                if instance.is_some() || fds.len() != wanted || !options.deploy {
                    return Err(FrameError::Bad(
                        "a deploy needs one directory (and its image's), no instance, and a \
                         process started for deploys"
                            .into(),
                    ));
                }
                let staging = fds.remove(0);
                let mut also = Vec::new();
                if let (Some(rootfs), Some(root)) = (&rootfs, fds.pop()) {
                    match root.try_clone() {
                        Ok(copy) => also.push(copy),
                        Err(e) => {
                            return Err(FrameError::Bad(format!("the image descriptor: {e}")));
                        }
                    }
                    reap_vmm::guest_os::fs::image::provide(rootfs.dir.clone(), root);
                }
                let dir = match enter(staging, options, &also) {
                    Ok(root) => SnapshotDir::new(root.dir.join("snapshot")),
                    Err(e) => {
                        send_failed(sock, &format!("cannot confine the deploy: {e}"))?;
                        continue;
                    }
                };
                let config = reap_vmm::microvm::MicroVmConfig {
                    mem_mib,
                    args,
                    env,
                    rootfs,
                    ..Default::default()
                };
                let limit = Duration::from_micros(limit_us);
                let result = Instance::deploy(
                    &payload,
                    &config,
                    Box::new(stderr.clone()),
                    Some(limit),
                    &dir,
                );
                let reply_to = match result {
                    Ok(deployed) => Reply::Deployed {
                        boot_us: micros(deployed.boot),
                        snapshot_us: micros(deployed.snapshot),
                        memory_data_bytes: deployed.state.memory_data_bytes,
                    },
                    Err(e) => failed(&e),
                };
                reply(sock, reply_to, &[], &stderr, None)?;
                // One deploy per process: its VM and memory go with it.
                return Ok(());
            }
            Request::Invoke { limit_us } => {
                let Some(inst) = instance.as_mut() else {
                    return Err(FrameError::Bad("an invocation before a restore".into()));
                };
                if let Some(text) = &panic_on
                    && payload.windows(text.len()).any(|w| w == text.as_slice())
                {
                    panic!("{FAULT_ENV}: a request with the text that makes it panic");
                }
                let limit = Duration::from_micros(limit_us);
                match inst.invoke(&payload, Some(limit)) {
                    Ok((response, invocation)) => {
                        let recorded_ws = inst.take_recorded_ws();
                        reply(
                            sock,
                            Reply::Answered {
                                invocation,
                                recorded_ws,
                            },
                            &response,
                            &stderr,
                            Some(inst),
                        )?;
                    }
                    Err(e) => reply(sock, failed(&e), &[], &stderr, Some(inst))?,
                }
            }
        }
    }
}

/// Makes the snapshot directory `dir` this process's root (jailed) or working
/// directory (unconfined), and returns it as a [`SnapshotDir`].
fn enter(dir: OwnedFd, options: &Options, also: &[OwnedFd]) -> io::Result<SnapshotDir> {
    let Some(ids) = options.jail else {
        // SAFETY: fchdir on a descriptor we own.
        if unsafe { libc::fchdir(dir.as_raw_fd()) } < 0 {
            return Err(io::Error::last_os_error());
        }
        return Ok(SnapshotDir::new("."));
    };
    jail::confine(dir, ids, also, options.deploy)?;
    Ok(SnapshotDir::new("/"))
}
