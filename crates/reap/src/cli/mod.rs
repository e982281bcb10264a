//! The `reap` command line: its arguments, and one module per group of subcommands.

pub mod functions;
pub mod run;
pub mod snapshot;
pub mod worker;

use std::io::{self, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use reap_vmm::instance::MemoryMode;
use reap_vmm::microvm::DEFAULT_MEM_MIB;

/// Exit status when the guest ran past its time limit (as timeout(1)).
pub const EXIT_TIMEOUT: u8 = 124;
/// Exit status when the guest crashed or could not go on.
pub const EXIT_GUEST_FAILED: u8 = 125;
/// Exit status for a bad command line (as clap's own usage errors).
pub const EXIT_USAGE: u8 = 2;
/// Exit status when the program could not be loaded (as a shell's "cannot execute").
pub const EXIT_BAD_PROGRAM: u8 = 126;

#[derive(Parser)]
#[command(
    name = "reap",
    version,
    about = "Serverless functions in KVM microVMs, cold-started from snapshots with REAP prefetching"
)]
pub struct Cli {
    #[command(subcommand)]
    /// The subcommand.
    pub command: Command,
}

/// The program a microVM runs: a static executable, or a program in a root file system.
#[derive(clap::Args, Debug)]
pub struct ProgramArgs {
    /// The program: a statically linked x86-64 Linux executable.
    #[arg(long, required_unless_present = "rootfs", conflicts_with = "rootfs")]
    pub binary: Option<PathBuf>,
    /// A root file system (a directory) the program sees as `/`, read-only, with an
    /// in-memory writable layer; the program is then the first argument after `--`, a
    /// path in it (dynamic programs are started with their dynamic loader from it).
    #[arg(long)]
    pub rootfs: Option<PathBuf>,
    /// The working directory in the root file system.
    #[arg(long, default_value = "/", requires = "rootfs")]
    pub workdir: String,
    /// Environment variables for the program, KEY=VALUE.
    #[arg(long = "env", value_name = "KEY=VALUE")]
    pub env: Vec<String>,
    /// Arguments for the program (with --rootfs: the program's path, then its
    /// arguments).
    #[arg(last = true)]
    pub args: Vec<String>,
}

#[derive(Subcommand)]
pub enum Command {
    /// Run an x86-64 Linux program in a microVM, with this process's stdin, stdout and
    /// stderr: a static program (--binary), or a program in a root file system
    /// (--rootfs DIR -- PROGRAM ARGS...). Exits with the program's status.
    Run {
        #[command(flatten)]
        program: ProgramArgs,
        /// Guest memory in MiB.
        #[arg(long, default_value_t = DEFAULT_MEM_MIB)]
        mem: u64,
        /// Limit on the guest's running time in seconds (time spent waiting for
        /// input does not count).
        #[arg(long)]
        timeout: Option<f64>,
        /// Print every system call, its arguments and result to stderr, strace-style.
        #[arg(long)]
        trace: bool,
    },
    /// Boot a function, wait until it is ready for its first request, and snapshot it.
    Snapshot {
        #[command(flatten)]
        program: ProgramArgs,
        /// The snapshot directory to write (replaced atomically if it exists).
        #[arg(long)]
        out: PathBuf,
        /// Guest memory in MiB.
        #[arg(long, default_value_t = DEFAULT_MEM_MIB)]
        mem: u64,
        /// Limit in seconds on the function's initialization.
        #[arg(long, default_value_t = 60.0)]
        timeout: f64,
    },
    /// Cold-start a function from a snapshot and serve the requests on stdin (one JSON
    /// value per line), writing one response line each to stdout and the breakdown of
    /// each invocation to stderr.
    Restore {
        /// The snapshot directory.
        dir: PathBuf,
        /// How guest memory is filled.
        #[arg(long, value_enum, default_value_t = MemoryMode::Reap)]
        memory: MemoryMode,
        /// Drop the snapshot's files from the page cache first (a cold-from-disk start).
        #[arg(long)]
        evict_cache: bool,
        /// Print each breakdown as one JSON object per line.
        #[arg(long)]
        json: bool,
        /// Limit in seconds on each invocation.
        #[arg(long, default_value_t = 60.0)]
        timeout: f64,
        #[command(flatten)]
        jail: worker::JailArgs,
    },
    /// Deploy a function into the store: boot it, wait for its ready point, snapshot it.
    /// The function is a static program (--binary), a program in a root file system
    /// (--rootfs DIR -- PROGRAM ARGS...), or an OCI image archive (--image FILE, as
    /// `docker save` or `skopeo copy ... oci-archive:` write; `-- PROGRAM ARGS...`
    /// replaces its Entrypoint and Cmd). The store keeps its own copy of the image.
    #[command(group(clap::ArgGroup::new("function").required(true).args(["binary", "rootfs", "image"])))]
    Deploy {
        /// The function's name (a-z, 0-9, '-', '_').
        name: String,
        /// The function: a statically linked x86-64 Linux executable.
        #[arg(long)]
        binary: Option<PathBuf>,
        /// A root file system (a directory): the program is the first argument after
        /// `--`, a path in it.
        #[arg(long)]
        rootfs: Option<PathBuf>,
        /// An OCI image archive (an OCI image layout or docker-save's format, layers
        /// plain or gzipped).
        #[arg(long)]
        image: Option<PathBuf>,
        /// The working directory in the image (default: the image's WorkingDir, else /).
        #[arg(long, conflicts_with = "binary")]
        workdir: Option<String>,
        /// Guest memory in MiB.
        #[arg(long, default_value_t = DEFAULT_MEM_MIB)]
        mem: u64,
        /// Environment variables for the function, KEY=VALUE (after an image's Env).
        #[arg(long = "env", value_name = "KEY=VALUE")]
        env: Vec<String>,
        /// Limit in seconds on the function's initialization.
        #[arg(long, default_value_t = 120.0)]
        timeout: f64,
        /// With --rootfs or --image: the program's path in the image and its arguments.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Invoke a deployed function and print its response.
    Invoke {
        name: String,
        /// The request: one JSON value.
        #[arg(long, default_value = "{}")]
        data: String,
        /// Start a new instance even if a warm one is idle.
        #[arg(long)]
        cold: bool,
        /// How a cold start fills guest memory.
        #[arg(long, value_enum)]
        memory: Option<MemoryMode>,
        /// Print the response with the invocation's breakdown as one JSON object.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        jail: worker::JailArgs,
    },
    /// List the deployed functions.
    Ls,
    /// Remove a deployed function.
    Rm { name: String },
    /// Print a function's log (its stderr).
    Logs { name: String },
    /// Serve the HTTP API over the store.
    Serve {
        /// Address to listen on.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: std::net::SocketAddr,
        /// Seconds an idle instance stays warm.
        #[arg(long, default_value_t = 60.0)]
        keep_alive: f64,
        /// Most instances of one function.
        #[arg(long, default_value_t = 8)]
        max_instances: usize,
        /// Limit in seconds on one invocation, cold start included.
        #[arg(long, default_value_t = 60.0)]
        timeout: f64,
        /// Seconds a client has to send a request's headers (idle keep-alive
        /// connections are closed after it too).
        #[arg(long, default_value_t = 10.0)]
        header_timeout: f64,
        /// Seconds for an invocation's whole request body; an upload must send at
        /// least 64 KiB in each such period.
        #[arg(long, default_value_t = 10.0)]
        body_timeout: f64,
        /// Connections served at once; more wait to be accepted.
        #[arg(long, default_value_t = 1024)]
        max_connections: usize,
        /// Binary uploads (deploys over HTTP) at once; more wait.
        #[arg(long, default_value_t = 4)]
        max_uploads: usize,
        /// Cap of each function's log (its stderr); past it the log is rotated to
        /// NAME.log.1, so a function's logs take at most twice this.
        #[arg(long, default_value_t = reap_orchestrator::store::DEFAULT_LOG_MAX_BYTES)]
        log_max_bytes: u64,
        /// Memory of all instances together, in MiB: each is charged its guest memory
        /// plus 8 MiB; a cold start that does not fit evicts idle instances, then
        /// waits, then gets 503. Default: 75% of the host's RAM minus 256 MiB.
        #[arg(long, value_name = "MIB")]
        memory_budget: Option<u64>,
        /// Seconds an invocation waits for a free instance slot or for memory in the
        /// budget before it gets 503.
        #[arg(long, default_value_t = 30.0)]
        queue_timeout: f64,
        /// Instance processes kept started and jailed, ready for a cold start.
        #[arg(long, default_value_t = 2)]
        prestart: usize,
        /// A directory beneath which clients may deploy from a root file system on
        /// this machine (`PUT /functions/NAME` with a JSON body); repeatable. None by
        /// default: such a deploy copies what the server can read into a function's
        /// image.
        #[arg(long, value_name = "DIR")]
        rootfs_from: Vec<PathBuf>,
        #[command(flatten)]
        jail: worker::JailArgs,
    },
    /// Measure cold starts per memory mode against warm (the paper's benchmark): table
    /// on stdout; JSON, CSV and plots in the output directory.
    Bench(reap_bench::BenchArgs),
    /// Serve the memory of a Firecracker microVM restored with a Uffd memory backend:
    /// lazily, recording its working set, or prefetching it (REAP).
    UffdServer(reap_uffd_server::UffdServerArgs),
    /// An instance process, started by the server on a socket (descriptor 3).
    #[command(hide = true)]
    Worker(worker::WorkerArgs),
}

/// Runs the parsed command line; returns the process's exit status.
pub fn dispatch(cli: Cli) -> ExitCode {
    match cli.command {
        Command::Run {
            program,
            mem,
            timeout,
            trace,
        } => run::run(program, mem, timeout, trace),
        Command::Snapshot {
            program,
            out,
            mem,
            timeout,
        } => report(snapshot::snapshot(program, out, mem, timeout)),
        Command::Restore {
            dir,
            memory,
            evict_cache,
            json,
            timeout,
            jail,
        } => report(jail.config(0).and_then(|workers| {
            snapshot::restore(dir, memory, evict_cache, json, timeout, workers)
        })),
        Command::Deploy {
            name,
            binary,
            rootfs,
            image,
            workdir,
            mem,
            env,
            timeout,
            args,
        } => report(seconds(timeout, "--timeout").and_then(|t| {
            let source = match (binary, rootfs, image) {
                (Some(binary), None, None) if args.is_empty() => functions::Source::Binary(binary),
                (Some(_), None, None) => {
                    anyhow::bail!("--binary takes no program after --: its arguments are fixed")
                }
                (None, Some(dir), None) => functions::Source::Rootfs(dir),
                (None, None, Some(archive)) => functions::Source::Image(archive),
                _ => anyhow::bail!("give one of --binary, --rootfs and --image"),
            };
            let command = reap_orchestrator::store::ImageCommand { args, env, workdir };
            functions::deploy(&name, source, mem, command, t)
        })),
        Command::Invoke {
            name,
            data,
            cold,
            memory,
            json,
            jail,
        } => report(
            jail.config(0)
                .and_then(|workers| functions::invoke(&name, &data, cold, memory, json, workers)),
        ),
        Command::Ls => report(functions::list()),
        Command::Rm { name } => report(functions::remove(&name)),
        Command::Logs { name } => report(functions::logs(&name)),
        Command::Serve {
            listen,
            keep_alive,
            max_instances,
            timeout,
            header_timeout,
            body_timeout,
            max_connections,
            max_uploads,
            log_max_bytes,
            memory_budget,
            queue_timeout,
            prestart,
            rootfs_from,
            jail,
        } => report((|| {
            let config = reap_orchestrator::PoolConfig {
                workers: jail.config(prestart)?,
                keep_alive: seconds(keep_alive, "--keep-alive")?,
                max_instances: max_instances.max(1),
                invoke_timeout: seconds(timeout, "--timeout")?,
                queue_timeout: seconds(queue_timeout, "--queue-timeout")?,
                memory_budget_mib: memory_budget
                    .or_else(reap_orchestrator::budget::default_budget_mib),
                ..Default::default()
            };
            let limits = reap_orchestrator::api::HttpLimits {
                header_timeout: seconds(header_timeout, "--header-timeout")?,
                body_timeout: seconds(body_timeout, "--body-timeout")?,
                max_connections: max_connections.max(1),
                max_uploads: max_uploads.max(1),
                rootfs_from: rootfs_from
                    .iter()
                    .map(|d| {
                        std::fs::canonicalize(d)
                            .with_context(|| format!("--rootfs-from {}", d.display()))
                    })
                    .collect::<anyhow::Result<_>>()?,
                ..Default::default()
            };
            functions::serve(listen, config, limits, log_max_bytes)
        })()),
        Command::Bench(args) => report(reap_bench::main(args).map_err(Into::into)),
        Command::UffdServer(args) => report(reap_uffd_server::main(args).map_err(Into::into)),
        Command::Worker(args) => worker::worker(&args),
    }
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(ExitCode::FAILURE, e),
    }
}

/// `secs` as a duration, or an error naming the option `what`.
pub fn seconds(secs: f64, what: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(secs)
        .map_err(|_| anyhow::anyhow!("{what} must be a positive number of seconds"))
}

/// Refuses an environment entry that is not `KEY=VALUE`.
pub fn check_env(env: &[String]) -> anyhow::Result<()> {
    match env.iter().find(|e| !e.contains('=')) {
        Some(bad) => anyhow::bail!("--env {bad:?} is not KEY=VALUE"),
        None => Ok(()),
    }
}

/// Reads a program's file; returns its bytes and its file name (the guest's argv[0]).
pub fn read_program(binary: &std::path::Path) -> anyhow::Result<(Vec<u8>, String)> {
    let image =
        std::fs::read(binary).with_context(|| format!("cannot read {}", binary.display()))?;
    let name = binary
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok((image, name))
}

/// Prints `error` with its causes and returns `code`.
pub fn fail(code: ExitCode, error: anyhow::Error) -> ExitCode {
    let _ = io::stdout().flush();
    eprintln!("reap: {error:#}");
    code
}
