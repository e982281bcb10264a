//! `reap uffd-server`: the page server for Firecracker microVMs restored with
//! `mem_backend: {"backend_type": "Uffd", "backend_path": SOCKET}`.
//!
//! Firecracker connects to the socket, sends one message (a JSON array of its guest
//! memory regions, with the userfaultfd as `SCM_RIGHTS`), and from then on waits for
//! its page faults to be served. This module accepts that connection, checks the
//! message ([`handshake`]), learns who the peer is ([`peer`]), and serves its memory
//! with the page-server engine (`reap-pager`) in lazy, record or REAP mode
//! ([`server`]). `docs/firecracker.md` is the user's guide.
//!
//! - [`handshake`]: parsing and checking the message, in its three shapes.
//! - [`peer`]: `SO_PEERCRED`/`SO_PEERPIDFD`, receiving descriptors, killing the peer.
//! - [`signals`]: `SIGUSR1`, `SIGINT`, `SIGTERM` through a signalfd.
//! - [`server`]: the socket, the connection states and the serving loop.

#![warn(missing_docs)]

pub mod handshake;
pub mod peer;
pub mod server;
pub mod signals;

use std::path::PathBuf;

pub use reap_pager::MemoryMode;
use std::time::Duration;

pub use handshake::{Handshake, HandshakeError, MessageFormat};
pub use server::{Refusal, ServerError, run};

/// The arguments of `reap uffd-server`.
#[derive(Debug, Clone, clap::Args)]
pub struct UffdServerArgs {
    /// Unix socket to listen on: the `backend_path` given to Firecracker's
    /// `PUT /snapshot/load` with `backend_type: Uffd`. A stale socket file is replaced.
    #[arg(long)]
    pub socket: PathBuf,
    /// The snapshot's memory file (`mem_file_path` of `PUT /snapshot/create`).
    #[arg(long)]
    pub memory: PathBuf,
    /// The working-set file: written in record mode; in reap mode prefetched if it
    /// exists, else recorded into.
    #[arg(long)]
    pub ws: Option<PathBuf>,
    /// How guest memory is filled.
    #[arg(long, value_enum, default_value_t = MemoryMode::Reap)]
    pub mode: MemoryMode,
    /// While recording, write the working set after this many seconds without a new
    /// page (0: only on SIGUSR1, when the peer closes its socket, or when it exits).
    #[arg(long, value_name = "SECS", default_value_t = DEFAULT_RECORD_IDLE.as_secs_f64())]
    pub record_idle: f64,
    /// Seconds a connection may take to send its message.
    #[arg(long, value_name = "SECS", default_value_t = HANDSHAKE_TIMEOUT.as_secs_f64())]
    pub handshake_timeout: f64,
    /// Print one JSON line per served or refused connection on stdout.
    #[arg(long)]
    pub stats: bool,
    /// Exit after the first connection (success only if its peer was served until it
    /// exited).
    #[arg(long)]
    pub once: bool,
}

/// Runs `reap uffd-server`.
pub fn main(args: UffdServerArgs) -> Result<(), ServerError> {
    let record_idle = match args.record_idle {
        0.0 => None,
        s => Some(Duration::try_from_secs_f64(s).map_err(|_| {
            ServerError::BadArgument("--record-idle must be a number of seconds, 0 or more".into())
        })?),
    };
    let handshake_timeout = Duration::try_from_secs_f64(args.handshake_timeout)
        .ok()
        .filter(|d| !d.is_zero())
        .ok_or_else(|| {
            ServerError::BadArgument(
                "--handshake-timeout must be a positive number of seconds".into(),
            )
        })?;
    run(Config {
        ws: args.ws,
        record_idle,
        handshake_timeout,
        stats: args.stats,
        once: args.once,
        ..Config::new(args.socket, args.memory, args.mode)
    })
}

/// What `reap uffd-server` was asked to do.
#[derive(Debug, Clone)]
pub struct Config {
    /// The Unix socket to listen on (Firecracker's `backend_path`).
    pub socket: PathBuf,
    /// The snapshot's memory file (Firecracker's `mem_file_path` at snapshot creation).
    pub memory: PathBuf,
    /// The working-set file: written in record mode, read (or, when missing, written)
    /// in reap mode.
    pub ws: Option<PathBuf>,
    /// How memory is filled: `lazy`; `record` into `ws`; `reap`: prefetch `ws` if it
    /// exists (a damaged or foreign file means lazy, with a warning), else record this
    /// peer into it. (`file` is Firecracker's own File backend, not served here.)
    pub mode: MemoryMode,
    /// While recording, write the WS file once no new page has been recorded for this
    /// long (again each time the set grows and goes quiet). `None` turns it off.
    pub record_idle: Option<Duration>,
    /// Print one JSON object per line on stdout for every finished session and every
    /// refused connection.
    pub stats: bool,
    /// Exit after the first connection that sent anything has been served or refused
    /// (status: failure unless the peer was served until it exited).
    pub once: bool,
    /// How long a connection may take to send its message.
    pub handshake_timeout: Duration,
}

impl Config {
    /// A configuration with the defaults of the command line.
    pub fn new(socket: PathBuf, memory: PathBuf, mode: MemoryMode) -> Config {
        Config {
            socket,
            memory,
            ws: None,
            mode,
            record_idle: Some(DEFAULT_RECORD_IDLE),
            stats: false,
            once: false,
            handshake_timeout: HANDSHAKE_TIMEOUT,
        }
    }
}

/// Default of [`Config::record_idle`].
pub const DEFAULT_RECORD_IDLE: Duration = Duration::from_secs(2);

/// Default of [`Config::handshake_timeout`]. Firecracker sends its message right after
/// connecting.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);
