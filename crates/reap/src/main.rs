//! The `reap` command line.

use std::io::{self, IsTerminal, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::{Parser, Subcommand};

use reap::microvm::{DEFAULT_MEM_MIB, GuestFault, MicroVm, MicroVmConfig, RunExit, VmError};

/// Exit status when the guest ran past its time limit (as timeout(1)).
const EXIT_TIMEOUT: u8 = 124;
/// Exit status when the guest crashed or could not go on.
const EXIT_GUEST_FAILED: u8 = 125;
/// Exit status when the program could not be loaded (as a shell's "cannot execute").
const EXIT_BAD_PROGRAM: u8 = 126;

#[derive(Parser)]
#[command(name = "reap", version, about = "Serverless functions in KVM microVMs, cold-started from snapshots with REAP prefetching")]
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
}

fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("REAP_LOG").unwrap_or_else(|_| "warn".into()),
        )
        .with_writer(io::stderr)
        .with_ansi(io::stderr().is_terminal())
        .init();
    let cli = Cli::parse();
    match cli.command {
        Command::Run { binary, mem, timeout, env, args } => run(binary, mem, timeout, env, args),
    }
}

fn run(binary: PathBuf, mem: u64, timeout: Option<f64>, env: Vec<String>, args: Vec<String>) -> ExitCode {
    let limit = match timeout.map(Duration::try_from_secs_f64).transpose() {
        Ok(limit) => limit,
        Err(_) => return fail(EXIT_BAD_PROGRAM.into(), anyhow::anyhow!("--timeout must be a positive number of seconds")),
    };
    if let Some(bad) = env.iter().find(|e| !e.contains('=')) {
        return fail(ExitCode::FAILURE, anyhow::anyhow!("--env {bad:?} is not KEY=VALUE"));
    }
    let image = match std::fs::read(&binary).with_context(|| format!("cannot read {}", binary.display())) {
        Ok(image) => image,
        Err(e) => return fail(EXIT_BAD_PROGRAM.into(), e),
    };
    let name = binary.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let config = MicroVmConfig { mem_mib: mem, args: std::iter::once(name).chain(args).collect(), env };
    let mut vm = match MicroVm::boot(&image, &config, Box::new(io::stdout()), Box::new(io::stderr())) {
        Ok(vm) => vm,
        Err(e @ VmError::Load(_)) => {
            return fail(EXIT_BAD_PROGRAM.into(), anyhow::Error::new(e).context(binary.display().to_string()));
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

fn fail(code: ExitCode, error: anyhow::Error) -> ExitCode {
    let _ = io::stdout().flush();
    eprintln!("reap: {error:#}");
    code
}
