//! The `reap` command line.

mod cli;

use std::io::{self, IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};

use reap_vmm::instance::{Instance, MemoryMode};
use reap_vmm::microvm::{DEFAULT_MEM_MIB, GuestFault, MicroVm, MicroVmConfig, RunExit, VmError};
use reap_vmm::snapshot::SnapshotDir;

/// Exit status when the guest ran past its time limit (as timeout(1)).
const EXIT_TIMEOUT: u8 = 124;
/// Exit status when the guest crashed or could not go on.
const EXIT_GUEST_FAILED: u8 = 125;
/// Exit status for a bad command line (as clap's own usage errors).
const EXIT_USAGE: u8 = 2;
/// Exit status when the program could not be loaded (as a shell's "cannot execute").
const EXIT_BAD_PROGRAM: u8 = 126;

#[derive(Parser)]
#[command(
    name = "reap",
    version,
    about = "Serverless functions in KVM microVMs, cold-started from snapshots with REAP prefetching"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a static x86-64 Linux program in a microVM, with this process's stdin,
    /// stdout and stderr. Exits with the program's status.
    Run {
        /// The program: a statically linked x86-64 Linux executable.
        #[arg(long)]
        binary: PathBuf,
        /// Guest memory in MiB.
        #[arg(long, default_value_t = DEFAULT_MEM_MIB)]
        mem: u64,
        /// Limit on the guest's running time in seconds (time spent waiting for
        /// input does not count).
        #[arg(long)]
        timeout: Option<f64>,
        /// Environment variables for the program, KEY=VALUE.
        #[arg(long = "env", value_name = "KEY=VALUE")]
        env: Vec<String>,
        /// Arguments for the program.
        #[arg(last = true)]
        args: Vec<String>,
    },
    /// Boot a function, wait until it is ready for its first request, and snapshot it.
    Snapshot {
        /// The function: a statically linked x86-64 Linux executable.
        #[arg(long)]
        binary: PathBuf,
        /// The snapshot directory to write (replaced atomically if it exists).
        #[arg(long)]
        out: PathBuf,
        /// Guest memory in MiB.
        #[arg(long, default_value_t = DEFAULT_MEM_MIB)]
        mem: u64,
        /// Limit in seconds on the function's initialization.
        #[arg(long, default_value_t = 60.0)]
        timeout: f64,
        /// Environment variables for the function, KEY=VALUE.
        #[arg(long = "env", value_name = "KEY=VALUE")]
        env: Vec<String>,
    },
    /// Cold-start a function from a snapshot and serve the requests on stdin (one JSON
    /// value per line), writing one response line each to stdout and the breakdown of
    /// each invocation to stderr.
    Restore {
        /// The snapshot directory.
        dir: PathBuf,
        /// How guest memory is filled.
        #[arg(long, value_enum, default_value_t = ModeArg::Reap)]
        memory: ModeArg,
        /// Drop the snapshot's files from the page cache first (a cold-from-disk start).
        #[arg(long)]
        evict_cache: bool,
        /// Print each breakdown as one JSON object per line.
        #[arg(long)]
        json: bool,
        /// Limit in seconds on each invocation.
        #[arg(long, default_value_t = 60.0)]
        timeout: f64,
    },
    /// Deploy a function into the store: boot it, wait for its ready point, snapshot it.
    Deploy {
        /// The function's name (a-z, 0-9, '-', '_').
        name: String,
        /// The function: a statically linked x86-64 Linux executable.
        #[arg(long)]
        binary: PathBuf,
        /// Guest memory in MiB.
        #[arg(long, default_value_t = DEFAULT_MEM_MIB)]
        mem: u64,
        /// Environment variables for the function, KEY=VALUE.
        #[arg(long = "env", value_name = "KEY=VALUE")]
        env: Vec<String>,
        /// Limit in seconds on the function's initialization.
        #[arg(long, default_value_t = 120.0)]
        timeout: f64,
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
        memory: Option<ModeArg>,
        /// Print the response with the invocation's breakdown as one JSON object.
        #[arg(long)]
        json: bool,
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
    },
    /// Measure cold starts per memory mode against warm (the paper's benchmark): table
    /// on stdout; JSON, CSV and plots in the output directory.
    Bench(reap_bench::BenchArgs),
    /// Serve the memory of a Firecracker microVM restored with a Uffd memory backend:
    /// lazily, recording its working set, or prefetching it (REAP).
    UffdServer(reap_uffd_server::UffdServerArgs),
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum ModeArg {
    File,
    Lazy,
    Reap,
}

impl From<ModeArg> for MemoryMode {
    fn from(m: ModeArg) -> Self {
        match m {
            ModeArg::File => MemoryMode::File,
            ModeArg::Lazy => MemoryMode::Lazy,
            ModeArg::Reap => MemoryMode::Reap,
        }
    }
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("REAP_LOG")
                .unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(io::stderr)
        .with_ansi(io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Run {
            binary,
            mem,
            timeout,
            env,
            args,
        } => run(binary, mem, timeout, env, args),
        Command::Snapshot {
            binary,
            out,
            mem,
            timeout,
            env,
        } => report(snapshot(binary, out, mem, timeout, env)),
        Command::Restore {
            dir,
            memory,
            evict_cache,
            json,
            timeout,
        } => report(restore(dir, memory.into(), evict_cache, json, timeout)),
        Command::Deploy {
            name,
            binary,
            mem,
            env,
            timeout,
        } => report(
            seconds(timeout, "--timeout")
                .and_then(|t| cli::functions::deploy(&name, binary, mem, env, t)),
        ),
        Command::Invoke {
            name,
            data,
            cold,
            memory,
            json,
        } => report(cli::functions::invoke(
            &name,
            &data,
            cold,
            memory.map(Into::into),
            json,
        )),
        Command::Ls => report(cli::functions::list()),
        Command::Rm { name } => report(cli::functions::remove(&name)),
        Command::Logs { name } => report(cli::functions::logs(&name)),
        Command::Serve {
            listen,
            keep_alive,
            max_instances,
            timeout,
        } => report((|| {
            let config = reap_orchestrator::PoolConfig {
                keep_alive: seconds(keep_alive, "--keep-alive")?,
                max_instances: max_instances.max(1),
                invoke_timeout: seconds(timeout, "--timeout")?,
                ..Default::default()
            };
            cli::functions::serve(listen, config)
        })()),
        Command::Bench(args) => report(reap_bench::main(args).map_err(Into::into)),
        Command::UffdServer(args) => report(reap_uffd_server::main(args).map_err(Into::into)),
    }
}

fn report(result: anyhow::Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => fail(ExitCode::FAILURE, e),
    }
}

fn seconds(secs: f64, what: &str) -> anyhow::Result<Duration> {
    Duration::try_from_secs_f64(secs)
        .map_err(|_| anyhow::anyhow!("{what} must be a positive number of seconds"))
}

fn snapshot(
    binary: PathBuf,
    out: PathBuf,
    mem: u64,
    timeout: f64,
    env: Vec<String>,
) -> anyhow::Result<()> {
    let limit = seconds(timeout, "--timeout")?;
    check_env(&env)?;
    let (image, name) = read_program(&binary)?;
    let config = MicroVmConfig {
        mem_mib: mem,
        args: vec![name],
        env,
    };
    let started = Instant::now();
    let mut instance = Instance::boot(&image, &config, Box::new(io::stderr()), Some(limit))
        .with_context(|| format!("{} did not reach its ready point", binary.display()))?;
    let booted = started.elapsed();
    let dir = SnapshotDir::new(&out);
    let state = instance
        .snapshot(&dir)
        .with_context(|| format!("cannot snapshot into {}", out.display()))?;
    eprintln!(
        "snapshot {}: ready after {:.1} ms, {} MiB guest memory, {:.1} MiB of it data, written in {:.1} ms",
        out.display(),
        booted.as_secs_f64() * 1e3,
        state.memory_len >> 20,
        state.memory_data_bytes as f64 / (1 << 20) as f64,
        (started.elapsed() - booted).as_secs_f64() * 1e3,
    );
    Ok(())
}

fn restore(
    dir: PathBuf,
    mode: MemoryMode,
    evict_cache: bool,
    json: bool,
    timeout: f64,
) -> anyhow::Result<()> {
    let limit = seconds(timeout, "--timeout")?;
    let snapshot = SnapshotDir::new(&dir);
    if evict_cache {
        snapshot.evict_from_page_cache()?;
    }
    let mut instance = Instance::restore(&snapshot, mode, Box::new(io::stderr()))
        .with_context(|| format!("cannot restore {}", dir.display()))?;
    let cold = instance.cold_start().cloned();
    if let Some(c) = cold.as_ref().filter(|c| c.ws_fell_back) {
        eprintln!(
            "reap: warning: the working-set file of {} is unusable; served lazily ({} mode)",
            dir.display(),
            c.mode.name()
        );
    }
    let stdin = io::stdin();
    let mut stdout = io::stdout().lock();
    let mut line = Vec::new();
    loop {
        line.clear();
        if io::BufRead::read_until(&mut stdin.lock(), b'\n', &mut line)? == 0 {
            return Ok(());
        }
        let (response, inv) = instance.invoke(&line, Some(limit))?;
        stdout.write_all(&response)?;
        stdout.flush()?;
        let restore = cold.as_ref().filter(|_| inv.cold);
        if json {
            let mut obj = serde_json::to_value(&inv)?;
            if let Some(c) = restore {
                let c = serde_json::to_value(c)?;
                if let (Some(o), Some(c)) = (obj.as_object_mut(), c.as_object()) {
                    o.extend(c.clone());
                }
            } else if let Some(o) = obj.as_object_mut() {
                o.extend(
                    [
                        ("restore_us", 0),
                        ("fetch_us", 0),
                        ("install_us", 0),
                        ("prefetched_pages", 0),
                    ]
                    .map(|(k, v)| (k.to_string(), v.into())),
                );
            }
            eprintln!("{obj}");
        } else if let Some(c) = restore {
            eprintln!(
                "cold start ({}{}): restore {} us, fetch {} us, install {} us ({} pages), invoke {} us, lazy faults {}{}",
                c.mode.name(),
                if c.recording { ", recording" } else { "" },
                c.restore_us,
                c.fetch_us,
                c.install_us,
                c.prefetched_pages,
                inv.invoke_us,
                inv.lazy_faults,
                inv.ws_pages_written
                    .map(|p| format!(", working set of {p} pages written"))
                    .unwrap_or_default(),
            );
        } else {
            eprintln!(
                "warm: invoke {} us, lazy faults {}",
                inv.invoke_us, inv.lazy_faults
            );
        }
    }
}

fn run(
    binary: PathBuf,
    mem: u64,
    timeout: Option<f64>,
    env: Vec<String>,
    args: Vec<String>,
) -> ExitCode {
    let limit = match timeout.map(Duration::try_from_secs_f64).transpose() {
        Ok(limit) => limit,
        Err(_) => {
            return fail(
                EXIT_USAGE.into(),
                anyhow::anyhow!("--timeout must be a positive number of seconds"),
            );
        }
    };
    if let Err(e) = check_env(&env) {
        return fail(ExitCode::FAILURE, e);
    }
    let (image, name) = match read_program(&binary) {
        Ok(program) => program,
        Err(e) => return fail(EXIT_BAD_PROGRAM.into(), e),
    };
    let config = MicroVmConfig {
        mem_mib: mem,
        args: std::iter::once(name).chain(args).collect(),
        env,
    };
    let mut vm = match MicroVm::boot(
        &image,
        &config,
        Box::new(io::stdout()),
        Box::new(io::stderr()),
    ) {
        Ok(vm) => vm,
        Err(e @ VmError::Load(_)) => {
            return fail(
                EXIT_BAD_PROGRAM.into(),
                anyhow::Error::new(e).context(binary.display().to_string()),
            );
        }
        Err(e) => return fail(ExitCode::FAILURE, e.into()),
    };
    let mut remaining = limit;
    let mut stdin = io::stdin().lock();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let started = Instant::now();
        let exit = vm.run(remaining);
        if let Some(r) = remaining.as_mut() {
            *r = r.saturating_sub(started.elapsed());
        }
        match exit {
            Ok(RunExit::Exited(code)) => return ExitCode::from(code as u8),
            Ok(RunExit::WaitingForInput) => {
                let _ = io::stdout().flush();
                match stdin.read(&mut buf) {
                    Ok(0) | Err(_) => vm.os.close_stdin(),
                    Ok(n) => vm.os.push_stdin(&buf[..n]),
                }
            }
            Err(VmError::Guest(fault)) => {
                let code = match fault {
                    GuestFault::Timeout(_) => EXIT_TIMEOUT,
                    GuestFault::Signal { signal, .. } => 128u8.saturating_add(signal as u8),
                    _ => EXIT_GUEST_FAILED,
                };
                return fail(code.into(), fault.into());
            }
            Err(e) => return fail(ExitCode::FAILURE, e.into()),
        }
    }
}

/// Refuses an environment entry that is not `KEY=VALUE`.
fn check_env(env: &[String]) -> anyhow::Result<()> {
    match env.iter().find(|e| !e.contains('=')) {
        Some(bad) => anyhow::bail!("--env {bad:?} is not KEY=VALUE"),
        None => Ok(()),
    }
}

/// Reads a program's file; returns its bytes and its file name (the guest's argv[0]).
fn read_program(binary: &std::path::Path) -> anyhow::Result<(Vec<u8>, String)> {
    let image =
        std::fs::read(binary).with_context(|| format!("cannot read {}", binary.display()))?;
    let name = binary
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    Ok((image, name))
}

fn fail(code: ExitCode, error: anyhow::Error) -> ExitCode {
    let _ = io::stdout().flush();
    eprintln!("reap: {error:#}");
    code
}
