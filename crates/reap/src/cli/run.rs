//! `reap run`: a program in a microVM with this process's stdin, stdout and stderr.

use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::Context;
use reap_vmm::guest_os::fs::RootFs;
use reap_vmm::microvm::{GuestFault, MicroVm, MicroVmConfig, RunExit, VmError};

use super::{
    EXIT_BAD_PROGRAM, EXIT_GUEST_FAILED, EXIT_TIMEOUT, EXIT_USAGE, ProgramArgs, check_env, fail,
    read_program,
};

/// The program's bytes and the configuration that boots it (with `mem` MiB), from the
/// command line's program arguments; the error says what is wrong with them.
pub fn program_config(
    program: ProgramArgs,
    mem: u64,
) -> anyhow::Result<(Vec<u8>, MicroVmConfig, PathBuf)> {
    check_env(&program.env)?;
    match (program.binary, program.rootfs) {
        (Some(binary), None) => {
            let (image, name) = read_program(&binary)?;
            let config = MicroVmConfig {
                mem_mib: mem,
                args: std::iter::once(name).chain(program.args).collect(),
                env: program.env,
                ..Default::default()
            };
            Ok((image, config, binary))
        }
        (None, Some(dir)) => {
            let Some(path) = program.args.first().cloned() else {
                anyhow::bail!("--rootfs needs the program: --rootfs DIR -- PROGRAM [ARGS]...");
            };
            let config = MicroVmConfig {
                mem_mib: mem,
                args: program.args,
                env: program.env,
                rootfs: Some(RootFs {
                    dir: dir.clone(),
                    program: path.clone(),
                    workdir: program.workdir,
                }),
                ..Default::default()
            };
            let image = config
                .read_program()
                .with_context(|| format!("cannot start {path} from {}", dir.display()))?;
            Ok((image, config, PathBuf::from(path)))
        }
        _ => anyhow::bail!("give either --binary FILE or --rootfs DIR -- PROGRAM"),
    }
}

/// Runs the program until it exits; returns its status (see the README for the
/// statuses of failures).
pub fn run(program: ProgramArgs, mem: u64, timeout: Option<f64>, trace: bool) -> ExitCode {
    let limit = match timeout.map(Duration::try_from_secs_f64).transpose() {
        Ok(limit) => limit,
        Err(_) => {
            return fail(
                EXIT_USAGE.into(),
                anyhow::anyhow!("--timeout must be a positive number of seconds"),
            );
        }
    };
    let (image, mut config, binary) = match program_config(program, mem) {
        Ok(v) => v,
        Err(e) => return fail(EXIT_BAD_PROGRAM.into(), e),
    };
    config.trace = trace;
    let mut vm = match MicroVm::boot(
        &image,
        &config,
        Box::new(io::stdout()),
        Box::new(io::stderr()),
    ) {
        Ok(vm) => vm,
        Err(e @ (VmError::Load(_) | VmError::Fs(_))) => {
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
