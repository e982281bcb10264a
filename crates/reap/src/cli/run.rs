//! `reap run`: a program in a microVM with this process's stdin, stdout and stderr.

use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use reap_vmm::microvm::{GuestFault, MicroVm, MicroVmConfig, RunExit, VmError};

use super::{
    EXIT_BAD_PROGRAM, EXIT_GUEST_FAILED, EXIT_TIMEOUT, EXIT_USAGE, check_env, fail, read_program,
};

/// Runs `binary` with `args` until it exits; returns its status (see the README for
/// the statuses of failures).
pub fn run(
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
