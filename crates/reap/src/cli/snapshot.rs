//! `reap snapshot` and `reap restore`: a function booted to its ready point and
//! snapshotted, and cold starts from the snapshot.

use std::io::{self, Write};
use std::path::PathBuf;

use anyhow::Context;
use reap_vmm::instance::{Instance, MemoryMode};
use reap_vmm::snapshot::SnapshotDir;

use super::{ProgramArgs, seconds};

/// Boots the program to its ready point (within `timeout` seconds) and snapshots it
/// into `out`.
pub fn snapshot(program: ProgramArgs, out: PathBuf, mem: u64, timeout: f64) -> anyhow::Result<()> {
    let limit = seconds(timeout, "--timeout")?;
    let (image, config, binary) = super::run::program_config(program, mem)?;
    let deployed = Instance::deploy(
        &image,
        &config,
        Box::new(io::stderr()),
        Some(limit),
        &SnapshotDir::new(&out),
    )
    .with_context(|| {
        format!(
            "cannot snapshot {} into {} (it must reach its ready point: its first read of a request)",
            binary.display(),
            out.display()
        )
    })?;
    let state = &deployed.state;
    eprintln!(
        "snapshot {}: ready after {:.1} ms, {} MiB guest memory, {:.1} MiB of it data, written in {:.1} ms",
        out.display(),
        deployed.boot.as_secs_f64() * 1e3,
        state.memory_len >> 20,
        state.memory_data_bytes as f64 / (1 << 20) as f64,
        deployed.snapshot.as_secs_f64() * 1e3,
    );
    Ok(())
}

/// Cold-starts the snapshot in `dir` in `mode` and serves the requests on stdin, one
/// response line each on stdout and one breakdown each on stderr.
pub fn restore(
    dir: PathBuf,
    mode: MemoryMode,
    evict_cache: bool,
    json: bool,
    timeout: f64,
    workers: reap_worker::WorkerConfig,
) -> anyhow::Result<()> {
    let limit = seconds(timeout, "--timeout")?;
    let snapshot = SnapshotDir::new(&dir);
    if evict_cache {
        snapshot.evict_from_page_cache()?;
    }
    let workers = reap_worker::Workers::new(workers)
        .context("cannot start the threads of instance processes")?;
    let mut instance = workers
        .restore(
            &snapshot,
            mode,
            reap_pager::ServeOptions::default(),
            Box::new(io::stderr()),
            limit,
        )
        .with_context(|| format!("cannot restore {}", dir.display()))?;
    if instance.cold_start().is_some_and(|c| c.ws_fell_back) {
        eprintln!(
            "reap: warning: the working-set file of {} is unusable; served lazily ({mode} mode)",
            dir.display(),
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
        let (response, inv) = instance.invoke(&line, limit)?;
        stdout.write_all(&response)?;
        stdout.flush()?;
        let report = instance.cold_start_report(&inv);
        match (json, report) {
            (true, Some(report)) => eprintln!("{}", serde_json::to_string(&report)?),
            (true, None) => eprintln!("{}", serde_json::to_string(&inv)?),
            (false, Some(r)) => {
                let c = &r.cold_start;
                eprintln!(
                    "cold start ({}{}): restore {} us, fetch {} us, install {} us ({} pages), invoke {} us, lazy faults {}{}",
                    c.mode,
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
            }
            (false, None) => eprintln!(
                "warm: invoke {} us, lazy faults {}",
                inv.invoke_us, inv.lazy_faults
            ),
        }
    }
}
