//! The server: listens on the socket, takes each connection's message, and serves one
//! peer at a time with the page-server engine.
//!
//! One thread runs everything here with one `poll`: the listening socket, the signalfd,
//! connections still sending their message, and, while a peer is served, the engine's
//! stop event and the peer's socket. The engine's fault loop runs on its own thread.
//!
//! - A connection has [`HANDSHAKE_TIMEOUT`](super::HANDSHAKE_TIMEOUT) to send its
//!   message. A refused connection is logged and closed; if it sent a userfaultfd, its
//!   process is also killed, because a Firecracker that has sent its userfaultfd waits
//!   for its page faults forever.
//! - One peer at a time: a valid connection arriving while another peer is served is
//!   refused (and killed) rather than left waiting on faults nobody serves. Run one
//!   server per microVM.
//! - While a peer is served: when the engine stops because the peer exited, the session
//!   ends (record: the WS file is written) and the next connection can be served; when
//!   the engine stops because it cannot serve a fault, the peer is killed.
//! - Record: the WS file is (re)written when the peer closes its socket, on `SIGUSR1`,
//!   after [`Config::record_idle`] without new pages, and when the peer exits, each
//!   time only if the set grew (`SIGUSR1` always writes). Writes are atomic, so each
//!   one replaces the last. Each write lists the holes the peer touched, read from its
//!   page map, which exists only while it lives: the write at its exit has the holes
//!   found by the writes before.
//! - `SIGINT`/`SIGTERM`: the WS file is written if recording, the peer (which cannot run
//!   without its page server) is killed, the socket file removed, and `run` returns.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::os::fd::{AsFd, AsRawFd, OwnedFd, RawFd};
use std::os::unix::fs::FileTypeExt;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use reap_pager::{
    MemoryFile, MemoryFileError, Mode, PageServer, PagerError, PagerStats, RecordWithoutWs,
    Resolved, StopReason, Uffd, UffdError, WsPolicy,
};

use super::handshake::{self, Handshake, HandshakeError, MAX_MESSAGE};
use super::peer::{self, MAX_FDS, Peer};
use super::signals::Signals;
use reap_error::chain as error_chain;

use super::{Config, MemoryMode};

/// Connections still sending their message, at most; more are closed at once.
const MAX_PENDING: usize = 16;
/// How often a recording session is checked for idleness.
const IDLE_TICK: Duration = Duration::from_millis(100);

/// Errors that stop the server.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// A command-line value is out of range.
    #[error("{0}")]
    BadArgument(String),
    /// Record mode without a file to record into.
    #[error("--mode record needs --ws, the working-set file to write")]
    RecordWithoutWs,
    /// File mode, which Firecracker does itself.
    #[error(
        "--mode file is Firecracker's own File memory backend: there is nothing to serve (use lazy, record or reap)"
    )]
    FileMode,
    /// The memory file cannot be used.
    #[error("cannot use the memory file")]
    Memory(#[source] MemoryFileError),
    /// A live server answers on the socket.
    #[error("another server is listening on {0}")]
    SocketInUse(PathBuf),
    /// The socket path holds something else than a socket.
    #[error("{0} exists and is not a socket; not replacing it")]
    NotASocket(PathBuf),
    /// Creating the socket failed.
    #[error("cannot listen on {path}")]
    Listen {
        /// The socket path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// Setting up signal handling failed.
    #[error("cannot set up signal handling")]
    Signals(#[source] io::Error),
    /// `poll` or `accept` failed.
    #[error("waiting for events")]
    Poll(#[source] io::Error),
    /// `--once`: the one connection was refused or its session failed.
    #[error("the connection was not served to the end: {0}")]
    NotServed(String),
}

/// Why a connection was not served.
#[derive(Debug, thiserror::Error)]
pub enum Refusal {
    /// The peer closed the connection without sending anything.
    #[error("closed the connection without sending a message")]
    Empty,
    /// No complete message in time.
    #[error("sent no complete message within {0:?}")]
    Timeout(Duration),
    /// Data without a descriptor.
    #[error("sent no file descriptor (the userfaultfd must come with the message, as SCM_RIGHTS)")]
    NoUffd,
    /// The descriptor is not a userfaultfd.
    #[error("sent a descriptor that is not a userfaultfd")]
    NotAUffd(#[source] UffdError),
    /// More than one descriptor.
    #[error(
        "sent {0} descriptors where only the userfaultfd is expected (guest_memfd-backed microVMs are not supported)"
    )]
    TooManyFds(String),
    /// The message is invalid.
    #[error("invalid message")]
    Handshake(#[source] HandshakeError),
    /// Another peer is being served.
    #[error("already serving pid {0}; one microVM per server")]
    Busy(i32),
    /// The server is shutting down.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The peer exited before it could be served.
    #[error("exited before it could be served")]
    Gone(#[source] UffdError),
    /// The memory file cannot be opened.
    #[error("cannot open the memory file")]
    Memory(#[source] MemoryFileError),
    /// The engine did not start.
    #[error("cannot start serving")]
    Start(#[source] PagerError),
    /// Reading from the connection failed.
    #[error("reading the message")]
    Io(#[source] io::Error),
}

/// Runs the server until `SIGINT`/`SIGTERM` (or, with `--once`, the first connection is
/// done). Blocks `SIGUSR1`, `SIGINT` and `SIGTERM` in the calling thread, which should
/// be the only thread of the process (it is in `reap uffd-server`).
pub fn run(config: Config) -> Result<(), ServerError> {
    let policy = match WsPolicy::new(config.mode, config.ws.clone()) {
        Ok(Some(policy)) => policy,
        Ok(None) => return Err(ServerError::FileMode),
        Err(RecordWithoutWs) => return Err(ServerError::RecordWithoutWs),
    };
    let memory = MemoryFile::open(&config.memory).map_err(ServerError::Memory)?;
    match (config.mode, &config.ws) {
        (MemoryMode::Lazy, Some(ws)) => {
            tracing::warn!("--ws {} is not used in lazy mode", ws.display())
        }
        (MemoryMode::Reap, None) => tracing::warn!(
            "reap mode without --ws: no working set to prefetch or record into; every peer is served lazily"
        ),
        _ => {}
    }
    let signals = Signals::new().map_err(ServerError::Signals)?;
    let listener = listen(&config.socket)?;
    tracing::info!(
        "listening on {} ({} mode, memory file {}, {})",
        config.socket.display(),
        config.mode.name(),
        config.memory.display(),
        human_bytes(memory.len())
    );
    let mut server = Server {
        memory_len: memory.len(),
        config,
        policy,
        listener,
        signals,
        pending: VecDeque::new(),
        session: None,
        outcome: None,
    };
    let result = server.serve();
    server.shutdown();
    let _ = std::fs::remove_file(&server.config.socket);
    result?;
    match server.outcome {
        Some(Err(why)) if server.config.once => Err(ServerError::NotServed(why)),
        _ => Ok(()),
    }
}

/// Creates the listening socket, replacing a stale socket file (one nobody listens on).
fn listen(path: &Path) -> Result<UnixListener, ServerError> {
    let err = |source| ServerError::Listen {
        path: path.to_owned(),
        source,
    };
    match std::fs::symlink_metadata(path) {
        Ok(m) if m.file_type().is_socket() => match UnixStream::connect(path) {
            Ok(_) => return Err(ServerError::SocketInUse(path.to_owned())),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => {
                tracing::info!("removing the stale socket {}", path.display());
                std::fs::remove_file(path).map_err(err)?;
            }
            Err(e) => return Err(err(e)),
        },
        Ok(_) => return Err(ServerError::NotASocket(path.to_owned())),
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(err(e)),
    }
    let listener = UnixListener::bind(path).map_err(err)?;
    listener.set_nonblocking(true).map_err(err)?;
    Ok(listener)
}

/// A connection still sending its message.
struct Pending {
    stream: UnixStream,
    peer: Peer,
    buf: Vec<u8>,
    fds: Vec<OwnedFd>,
    fds_truncated: bool,
    closed: bool,
    deadline: Instant,
}

/// The peer being served.
struct Session {
    peer: Peer,
    /// Its socket, until it closes it.
    stream: Option<UnixStream>,
    server: PageServer,
    handshake: Handshake,
    mode: Mode,
    /// Where the recording goes (record mode).
    record_to: Option<PathBuf>,
    started: Instant,
    /// Pages in the last WS file written.
    written: u64,
    ws_writes: u64,
    /// Pages recorded by their faults at the last idle check, and when that count
    /// last changed.
    last_count: u64,
    last_change: Instant,
    /// When the idle check last read the peer's page map for the holes it touched.
    last_hole_scan: Instant,
    /// Data received after the message (logged once).
    stray_bytes: u64,
}

/// One line of `--stats` output.
#[derive(Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
enum Report<'a> {
    Session {
        pid: i32,
        format: handshake::MessageFormat,
        regions: usize,
        guest_bytes: u64,
        page_size: u64,
        mode: &'static str,
        ended: &'a str,
        duration_ms: f64,
        ws: Option<&'a Path>,
        ws_pages: Option<u64>,
        ws_writes: u64,
        pager: &'a PagerStats,
    },
    Refused {
        pid: i32,
        reason: &'a str,
        killed: bool,
    },
}

struct Server {
    config: Config,
    /// What the configuration asks for the working set (resolved per peer).
    policy: WsPolicy,
    memory_len: u64,
    listener: UnixListener,
    signals: Signals,
    pending: VecDeque<Pending>,
    session: Option<Session>,
    /// With `--once`: how the first connection ended (`Err` with the reason if it was
    /// not served to the end).
    outcome: Option<Result<(), String>>,
}

/// What a `pollfd` slot stands for.
#[derive(Clone, Copy)]
enum Slot {
    Listener,
    Signals,
    Pending(usize),
    SessionStopped,
    SessionSocket,
}

impl Server {
    /// The event loop; returns on a shutdown signal or, with `--once`, when done.
    fn serve(&mut self) -> Result<(), ServerError> {
        loop {
            if self.config.once && self.outcome.is_some() {
                return Ok(());
            }
            let mut fds = Vec::with_capacity(4 + self.pending.len());
            let mut slots = Vec::with_capacity(fds.capacity());
            let mut add = |fd: RawFd, slot: Slot| {
                fds.push(libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                });
                slots.push(slot);
            };
            add(self.listener.as_raw_fd(), Slot::Listener);
            add(self.signals.fd().as_raw_fd(), Slot::Signals);
            for (i, p) in self.pending.iter().enumerate() {
                add(p.stream.as_raw_fd(), Slot::Pending(i));
            }
            if let Some(s) = &self.session {
                add(s.server.stopped_event().as_raw_fd(), Slot::SessionStopped);
                if let Some(st) = &s.stream {
                    add(st.as_raw_fd(), Slot::SessionSocket);
                }
            }
            let timeout = self.poll_timeout();
            // SAFETY: `fds` is a live array of `fds.len()` pollfd structs.
            let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout) };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(ServerError::Poll(e));
            }
            // The session first: a peer that exited makes room for the next one.
            let mut pending_ready = Vec::new();
            let mut accept = false;
            let mut signal = false;
            let mut socket_ready = false;
            for (pfd, slot) in fds.iter().zip(&slots) {
                if pfd.revents == 0 {
                    continue;
                }
                match *slot {
                    Slot::SessionStopped => self.end_session(None),
                    Slot::SessionSocket => socket_ready = true,
                    Slot::Listener => accept = true,
                    Slot::Signals => signal = true,
                    Slot::Pending(i) => pending_ready.push(i),
                }
            }
            if socket_ready {
                self.read_session_socket();
            }
            if signal && self.handle_signals() {
                return Ok(());
            }
            self.check_idle();
            // Connections: read what arrived, then finish those that are complete or
            // out of time (in arrival order).
            for i in pending_ready {
                if let Some(p) = self.pending.get_mut(i) {
                    read_pending(p);
                }
            }
            self.finish_pending();
            if accept {
                self.accept()?;
            }
        }
    }

    /// Milliseconds `poll` may wait: until the next handshake deadline, and every
    /// [`IDLE_TICK`] while a recording may go idle.
    fn poll_timeout(&self) -> libc::c_int {
        let now = Instant::now();
        let mut wait: Option<Duration> = self
            .pending
            .iter()
            .map(|p| p.deadline.saturating_duration_since(now))
            .min();
        if self.config.record_idle.is_some()
            && self.session.as_ref().is_some_and(|s| s.record_to.is_some())
        {
            wait = Some(wait.map_or(IDLE_TICK, |w| w.min(IDLE_TICK)));
        }
        match wait {
            // Round up, so a deadline is not polled for just before it passes.
            Some(w) => (w.as_micros().div_ceil(1000)).min(i32::MAX as u128) as libc::c_int,
            None => -1,
        }
    }

    fn accept(&mut self) -> Result<(), ServerError> {
        loop {
            let stream = match self.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // The connection went away before we took it, or we are out of
                // descriptors for the moment: not the listener's fault.
                Err(e) if e.raw_os_error().is_some_and(is_transient_accept_error) => {
                    tracing::warn!("accept: {e}");
                    // Out of descriptors or memory: do not spin on the listener.
                    std::thread::sleep(Duration::from_millis(10));
                    return Ok(());
                }
                Err(e) => return Err(ServerError::Poll(e)),
            };
            let peer = match stream
                .set_nonblocking(true)
                .and_then(|()| Peer::of(&stream))
            {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!("refused a connection: cannot identify its process: {e}");
                    continue;
                }
            };
            if self.pending.len() >= MAX_PENDING {
                tracing::error!(
                    "refused the connection of pid {}: {MAX_PENDING} connections are already sending their message",
                    peer.pid
                );
                continue;
            }
            tracing::debug!("connection from pid {} (uid {})", peer.pid, peer.uid);
            self.pending.push_back(Pending {
                stream,
                peer,
                buf: Vec::new(),
                fds: Vec::new(),
                fds_truncated: false,
                closed: false,
                deadline: Instant::now() + self.config.handshake_timeout,
            });
        }
    }

    /// Takes the connections whose message is complete, broken, or late.
    fn finish_pending(&mut self) {
        let now = Instant::now();
        let mut i = 0;
        while i < self.pending.len() {
            let p = &self.pending[i];
            let done = p.closed
                || p.buf.len() > MAX_MESSAGE
                || (!p.buf.is_empty() && !handshake::is_incomplete(&p.buf))
                || now >= p.deadline;
            if !done {
                i += 1;
                continue;
            }
            if let Some(p) = self.pending.remove(i) {
                self.take(p, now);
            }
        }
    }

    /// Serves a connection whose message is in, or refuses it.
    fn take(&mut self, p: Pending, now: Instant) {
        let Pending {
            stream,
            peer,
            buf,
            mut fds,
            fds_truncated,
            closed,
            deadline,
        } = p;
        if buf.is_empty() && fds.is_empty() {
            let why = if closed {
                Refusal::Empty
            } else {
                Refusal::Timeout(self.config.handshake_timeout)
            };
            if closed {
                // A probe (another server checking whether this one is alive) looks
                // like this; not a Firecracker, not counted by --once.
                tracing::warn!("pid {}: {why}", peer.pid);
                self.report(Report::Refused {
                    pid: peer.pid,
                    reason: &why.to_string(),
                    killed: false,
                });
            } else {
                self.refuse(&peer, None, why);
            }
            return;
        }
        if fds.is_empty() {
            let why = if !closed && now >= deadline && handshake::is_incomplete(&buf) {
                Refusal::Timeout(self.config.handshake_timeout)
            } else {
                Refusal::NoUffd
            };
            self.refuse(&peer, None, why);
            return;
        }
        let extra = fds.len() > 1 || fds_truncated;
        let kinds: Vec<String> = fds.iter().map(|fd| peer::describe_fd(fd.as_fd())).collect();
        let uffd = match Uffd::from_fd(fds.remove(0)) {
            Ok(u) => u,
            Err(e) => {
                self.refuse(&peer, None, Refusal::NotAUffd(e));
                return;
            }
        };
        drop(fds);
        if extra {
            let n = if fds_truncated {
                format!("more than {MAX_FDS}")
            } else {
                kinds.len().to_string()
            };
            tracing::debug!("descriptors of pid {}: {kinds:?}", peer.pid);
            self.refuse(&peer, Some(uffd), Refusal::TooManyFds(n));
            return;
        }
        if !closed && now >= deadline && handshake::is_incomplete(&buf) {
            let why = Refusal::Timeout(self.config.handshake_timeout);
            self.refuse(&peer, Some(uffd), why);
            return;
        }
        let hs = match handshake::parse(&buf, self.memory_len) {
            Ok(h) => h,
            Err(e) => {
                self.refuse(&peer, Some(uffd), Refusal::Handshake(e));
                return;
            }
        };
        // A session whose peer is gone makes room, even before the engine noticed.
        if let Some(s) = &self.session
            && (!s.server.is_running() || s.peer.has_exited())
        {
            self.end_session(None);
        }
        if let Some(s) = &self.session {
            let busy = s.peer.pid;
            self.refuse(&peer, Some(uffd), Refusal::Busy(busy));
            return;
        }
        self.start_session(peer, (!closed).then_some(stream), uffd, hs);
    }

    /// Logs a refusal, and kills the peer if it sent a userfaultfd: it has registered
    /// its memory and would wait forever on its first fault.
    fn refuse(&mut self, peer: &Peer, uffd: Option<Uffd>, why: Refusal) {
        let reason = error_chain(&why);
        let killed = uffd.is_some()
            && match peer.kill() {
                Ok(()) => true,
                Err(e) => {
                    tracing::error!("cannot kill pid {}: {e}", peer.pid);
                    false
                }
            };
        drop(uffd);
        tracing::error!(
            "refused pid {}: {reason}; {}",
            peer.pid,
            if killed {
                "killed it (it would wait forever for its page faults)"
            } else {
                "disconnected"
            }
        );
        self.report(Report::Refused {
            pid: peer.pid,
            reason: &reason,
            killed,
        });
        self.outcome
            .get_or_insert(Err(format!("refused: {reason}")));
    }

    fn start_session(&mut self, peer: Peer, stream: Option<UnixStream>, uffd: Uffd, hs: Handshake) {
        let uffd = if peer.pid > 0 {
            match uffd.with_owner_pid(peer.pid) {
                Ok(u) => u,
                Err(e) => {
                    self.refuse(&peer, None, Refusal::Gone(e));
                    return;
                }
            }
        } else {
            tracing::warn!(
                "the peer's pid is not visible here (another pid namespace): its exit is noticed within {} ms, and it cannot be killed if serving fails",
                reap_pager::IDLE_CHECK_MS
            );
            uffd
        };
        let Resolved {
            mode,
            record_into: record_to,
        } = self.session_mode();
        let memory = match MemoryFile::open(&self.config.memory) {
            Ok(m) => m,
            Err(e) => {
                self.refuse(&peer, Some(uffd), Refusal::Memory(e));
                return;
            }
        };
        let t = Instant::now();
        let server = match PageServer::start(uffd, hs.regions.clone(), memory, mode.clone()) {
            Ok(s) => s,
            Err(e) => {
                // The userfaultfd went to the engine and is closed by now; the peer
                // still holds its own copy and waits.
                let killed = peer.kill().is_ok();
                let reason = error_chain(&Refusal::Start(e));
                tracing::error!(
                    "refused pid {}: {reason}; {}",
                    peer.pid,
                    if killed { "killed it" } else { "disconnected" }
                );
                self.report(Report::Refused {
                    pid: peer.pid,
                    reason: &reason,
                    killed,
                });
                self.outcome.get_or_insert(Err(reason));
                return;
            }
        };
        let stats = server.stats();
        if let (Some(why), Some(ws)) = (&stats.fallback_reason, &self.config.ws) {
            tracing::warn!(
                "working set {} is unusable ({why}); serving pid {} lazily. Delete the file to record a new one",
                ws.display(),
                peer.pid
            );
        }
        tracing::info!(
            "serving pid {}: {} region(s), {}, {}-byte pages, message with {}; {}{}",
            peer.pid,
            hs.regions.len(),
            human_bytes(hs.total_len()),
            hs.page_size(),
            hs.format.describe(),
            match mode {
                Mode::Lazy => "lazy".to_string(),
                Mode::Record => format!(
                    "recording into {}",
                    record_to.as_deref().unwrap_or(Path::new("?")).display()
                ),
                Mode::Prefetch { .. } => format!(
                    "prefetched {} pages ({} zero) in {:.1} ms",
                    stats.prefetched_pages + stats.prefetched_zero_pages,
                    stats.prefetched_zero_pages,
                    t.elapsed().as_secs_f64() * 1e3
                ),
            },
            if stream.is_none() {
                " (it closed its socket after sending)"
            } else {
                ""
            }
        );
        let now = Instant::now();
        self.session = Some(Session {
            peer,
            stream,
            server,
            handshake: hs,
            mode,
            record_to,
            started: now,
            written: 0,
            ws_writes: 0,
            last_count: 0,
            last_change: now,
            last_hole_scan: now,
            stray_bytes: 0,
        });
    }

    /// The mode for the next peer, from the configuration and whether the WS exists.
    fn session_mode(&self) -> Resolved {
        let resolved = self.policy.resolve();
        if let (WsPolicy::Reap { ws }, true) = (&self.policy, resolved.recording()) {
            tracing::info!(
                "reap mode: {} does not exist yet; recording this peer into it",
                ws.display()
            );
        }
        resolved
    }

    /// Data or end-of-file on the served peer's socket.
    fn read_session_socket(&mut self) {
        let Some(s) = &mut self.session else {
            return;
        };
        let Some(stream) = &s.stream else {
            return;
        };
        let mut buf = [0u8; 4096];
        let closed = loop {
            match peer::recv_with_fds(stream, &mut buf) {
                Ok(r) if r.len == 0 && r.fds.is_empty() => break true,
                Ok(r) => {
                    if s.stray_bytes == 0 {
                        tracing::warn!("pid {} sent data after its message; ignored", s.peer.pid);
                    }
                    s.stray_bytes += r.len as u64;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break false,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    tracing::debug!("pid {}: reading its socket: {e}", s.peer.pid);
                    break true;
                }
            }
        };
        if closed {
            s.stream = None;
            tracing::info!("pid {} closed its socket", s.peer.pid);
            self.write_ws("the peer closed its socket", false);
        }
    }

    /// Handles pending signals; `true` to shut down.
    fn handle_signals(&mut self) -> bool {
        let mut stop = false;
        loop {
            match self.signals.next() {
                Ok(Some(libc::SIGUSR1)) => {
                    if self.session.as_ref().is_some_and(|s| s.record_to.is_some()) {
                        self.write_ws("SIGUSR1", true);
                    } else {
                        tracing::info!("SIGUSR1: no recording in progress");
                    }
                }
                Ok(Some(sig)) => {
                    tracing::info!("signal {sig}: shutting down");
                    stop = true;
                }
                Ok(None) => return stop,
                Err(e) => {
                    tracing::error!("reading signals: {e}");
                    return stop;
                }
            }
        }
    }

    /// Writes the WS file once a recording has gone quiet for `record_idle`: no page
    /// faulted for that long, and the set grew since the last write. Holes the peer
    /// touches do not fault; its page map is read for them at most once per
    /// `record_idle` while the faults are quiet.
    fn check_idle(&mut self) {
        let Some(idle) = self.config.record_idle else {
            return;
        };
        let Some(s) = &mut self.session else {
            return;
        };
        if s.record_to.is_none() {
            return;
        }
        let stats = s.server.stats();
        let count = stats.recorded_pages;
        let now = Instant::now();
        if count != s.last_count {
            s.last_count = count;
            s.last_change = now;
            return;
        }
        if now.duration_since(s.last_change) < idle {
            return;
        }
        let mut total = count + stats.recorded_hole_pages;
        if total <= s.written && now.duration_since(s.last_hole_scan) >= idle {
            s.last_hole_scan = now;
            // An error is reported by the write, if one comes.
            if let Ok(holes) = s.server.scan_touched_holes() {
                total = count + holes;
            }
        }
        if total > s.written {
            let why = format!("no new page for {:.1} s", idle.as_secs_f64());
            self.write_ws(&why, false);
        }
    }

    /// Writes the recording so far to the WS file, if recording and (unless `always`)
    /// the set grew since the last write: the pages that faulted, and the holes the
    /// peer touched (read from its page map first, while it lives).
    fn write_ws(&mut self, why: &str, always: bool) {
        let Some(s) = &mut self.session else {
            return;
        };
        let Some(path) = &s.record_to else {
            return;
        };
        // An error is reported by the write, if one comes.
        let _ = s.server.scan_touched_holes();
        let stats = s.server.stats();
        let count = stats.recorded_pages + stats.recorded_hole_pages;
        if count == 0 || (!always && count == s.written) {
            tracing::debug!("{why}: working set unchanged ({count} pages), not written");
            return;
        }
        let t = Instant::now();
        match s.server.write_ws(path) {
            Ok(w) => {
                s.written = w.pages;
                s.ws_writes += 1;
                tracing::info!(
                    "{why}: wrote the working set of pid {} to {}: {} pages ({} zero), {} KiB, in {:.1} ms",
                    s.peer.pid,
                    path.display(),
                    w.pages,
                    w.zero_pages,
                    w.file_len >> 10,
                    t.elapsed().as_secs_f64() * 1e3
                );
            }
            Err(e) => tracing::error!(
                "{why}: cannot write the working set to {}: {}",
                path.display(),
                error_chain(&e)
            ),
        }
    }

    /// Ends the session: after the engine stopped, or (`Some(reason)`) because the
    /// server stops it.
    fn end_session(&mut self, shutdown: Option<&str>) {
        let Some(s) = &self.session else {
            return;
        };
        let reason = match (shutdown, s.server.stop_reason()) {
            (Some(why), _) => Ended::Shutdown(why.to_string()),
            (None, Some(StopReason::Failed(why))) => Ended::Failed(why),
            (None, Some(StopReason::OwnerExited)) => Ended::PeerExited,
            // Still running (the peer's exit was seen first) or stopped on request.
            (None, _) if s.peer.has_exited() => Ended::PeerExited,
            (None, _) => Ended::Shutdown("stopped".into()),
        };
        match &reason {
            Ended::PeerExited => {
                tracing::info!("pid {} exited", s.peer.pid);
                self.write_ws("the peer exited", false);
            }
            Ended::Failed(why) => {
                let killed = s.peer.kill();
                tracing::error!(
                    "cannot serve pid {}: {why}; {}",
                    s.peer.pid,
                    match &killed {
                        Ok(()) => "killed it (it would wait forever for its page faults)".into(),
                        Err(e) => format!("and cannot kill it: {e}"),
                    }
                );
                if s.record_to.is_some() {
                    tracing::warn!("the working set of a failed session is not written");
                }
            }
            Ended::Shutdown(why) => {
                self.write_ws(why, false);
                if let Some(s) = &self.session {
                    match s.peer.kill() {
                        Ok(()) => tracing::warn!(
                            "{why}: killed pid {} (it cannot run without its page server)",
                            s.peer.pid
                        ),
                        Err(e) => tracing::error!("{why}: cannot kill pid {}: {e}", s.peer.pid),
                    }
                }
            }
        }
        let Some(s) = self.session.take() else {
            return;
        };
        let duration = s.started.elapsed();
        let stats = s.server.stop();
        tracing::info!(
            "session of pid {} ended after {:.1} s: {} lazy faults ({} zero), {} prefetched pages, {} already present, {} removals",
            s.peer.pid,
            duration.as_secs_f64(),
            stats.lazy_faults_file + stats.lazy_faults_zero,
            stats.lazy_faults_zero,
            stats.prefetched_pages + stats.prefetched_zero_pages,
            stats.faults_already_present,
            stats.remove_events
        );
        self.report(Report::Session {
            pid: s.peer.pid,
            format: s.handshake.format,
            regions: s.handshake.regions.len(),
            guest_bytes: s.handshake.total_len(),
            page_size: s.handshake.page_size(),
            mode: s.mode.name(),
            ended: reason.name(),
            duration_ms: duration.as_secs_f64() * 1e3,
            ws: s.record_to.as_deref().or(match s.mode {
                Mode::Prefetch { ref ws } => Some(ws.as_path()),
                _ => None,
            }),
            ws_pages: (s.ws_writes > 0).then_some(s.written),
            ws_writes: s.ws_writes,
            pager: &stats,
        });
        self.outcome.get_or_insert(match reason {
            Ended::PeerExited => Ok(()),
            Ended::Failed(why) => Err(why),
            Ended::Shutdown(why) => Err(why),
        });
    }

    /// Stops everything: the session (killing its peer), pending connections.
    fn shutdown(&mut self) {
        if self.session.is_some() {
            self.end_session(Some("the server is shutting down"));
        }
        while let Some(p) = self.pending.pop_front() {
            let uffd = p
                .fds
                .into_iter()
                .next()
                .and_then(|fd| Uffd::from_fd(fd).ok());
            self.refuse(&p.peer, uffd, Refusal::ShuttingDown);
        }
    }

    fn report(&self, r: Report<'_>) {
        if !self.config.stats {
            return;
        }
        match serde_json::to_string(&r) {
            Ok(line) => {
                let mut out = io::stdout().lock();
                let _ = writeln!(out, "{line}");
                let _ = out.flush();
            }
            Err(e) => tracing::error!("cannot serialize statistics: {e}"),
        }
    }
}

/// How a session ended.
enum Ended {
    PeerExited,
    Failed(String),
    Shutdown(String),
}

impl Ended {
    fn name(&self) -> &'static str {
        match self {
            Ended::PeerExited => "peer_exited",
            Ended::Failed(_) => "failed",
            Ended::Shutdown(_) => "shutdown",
        }
    }
}

/// Reads what arrived on a connection still sending its message.
fn read_pending(p: &mut Pending) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match peer::recv_with_fds(&p.stream, &mut buf) {
            Ok(r) => {
                p.fds_truncated |= r.fds_truncated;
                p.fds.extend(r.fds);
                if p.fds.len() > MAX_FDS {
                    p.fds_truncated = true;
                    p.fds.truncate(MAX_FDS);
                }
                if r.len == 0 {
                    p.closed = true;
                    return;
                }
                p.buf.extend_from_slice(&buf[..r.len]);
                if p.buf.len() > MAX_MESSAGE {
                    return;
                }
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                tracing::debug!("pid {}: {e}", p.peer.pid);
                p.closed = true;
                return;
            }
        }
    }
}

/// `n` bytes in KiB, MiB or GiB, for logs.
fn human_bytes(n: u64) -> String {
    match n {
        n if n >= 1 << 30 => format!("{:.1} GiB", n as f64 / (1u64 << 30) as f64),
        n if n >= 1 << 20 => format!("{:.1} MiB", n as f64 / (1u64 << 20) as f64),
        n => format!("{:.1} KiB", n as f64 / 1024.0),
    }
}

fn is_transient_accept_error(errno: i32) -> bool {
    matches!(
        errno,
        libc::ECONNABORTED | libc::EMFILE | libc::ENFILE | libc::ENOBUFS | libc::ENOMEM
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_are_logged_in_readable_units() {
        assert_eq!(human_bytes(320 << 10), "320.0 KiB");
        assert_eq!(human_bytes(256 << 20), "256.0 MiB");
        assert_eq!(human_bytes(3 << 29), "1.5 GiB");
    }

    #[test]
    fn refusals_read_well_with_their_causes() {
        let e = Refusal::Handshake(HandshakeError::OverlapHost(0, 1));
        assert_eq!(
            error_chain(&e),
            "invalid message: regions 0 and 1 overlap in the host address space"
        );
        assert_eq!(
            error_chain(&Refusal::Busy(42)),
            "already serving pid 42; one microVM per server"
        );
    }

    #[test]
    fn a_stale_socket_file_is_replaced_and_a_live_one_is_not() {
        let dir = std::env::temp_dir().join(format!("reap-fc-listen-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("sock");
        let _ = std::fs::remove_file(&path);
        // Stale: bound, then closed without removing the file.
        drop(UnixListener::bind(&path).unwrap());
        assert!(path.exists());
        let live = listen(&path).unwrap();
        assert!(matches!(listen(&path), Err(ServerError::SocketInUse(_))));
        drop(live);
        std::fs::remove_file(&path).unwrap();
        std::fs::write(&path, b"not a socket").unwrap();
        assert!(matches!(listen(&path), Err(ServerError::NotASocket(_))));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
