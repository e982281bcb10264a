//! What running each instance in its own jailed process costs a cold start: helloworld
//! restored in this process (`Instance::restore`, as `reap bench` measures the VMM)
//! against restored in an instance process taken ready from `Workers` (started ahead,
//! jail set up), jailed and unconfined, in `file` and `reap` modes, interleaved round
//! by round. Each figure is the cold start as its caller sees it: restore plus the
//! first invocation, from asking to having the response; the difference of the
//! medians is the hop (socket round trips, the snapshot directory as root, the
//! privileges drop, the seccomp filter) per cold start. Also the peak memory of a jailed
//! process's cgroup beyond its guest memory's data.
//!
//! Run with `cargo bench -p reap-worker --bench hop` after `cargo build --release
//! --workspace` (it uses the `reap` binary and the helloworld function). Needs root and
//! /dev/kvm. `HOP_BENCH_ROUNDS` sets the rounds (default 30).

use std::time::{Duration, Instant};

use reap_pager::{MemoryMode, ServeOptions};
use reap_test_support as support;
use reap_vmm::instance::Instance;
use reap_vmm::microvm::MicroVmConfig;
use reap_vmm::snapshot::SnapshotDir;
use reap_worker::{WorkerConfig, Workers};

const REQUEST: &[u8] = br#"{"name":"hop"}"#;

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn main() {
    let rounds: usize = std::env::var("HOP_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(30);
    let dir = support::temp_dir("hop-bench");
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let snapshot = SnapshotDir::new(dir.join("snapshot"));
    let image = std::fs::read(support::bin_dir().join("helloworld")).expect("helloworld built");
    let config = MicroVmConfig {
        args: vec!["helloworld".into()],
        ..MicroVmConfig::default()
    };
    let deployed = Instance::deploy(&image, &config, Box::new(std::io::sink()), None, &snapshot)
        .expect("snapshot of helloworld");
    let data_bytes = deployed.state.memory_data_bytes;
    drop(deployed);

    let exe = support::reap_binary();
    let jailed = Workers::new(WorkerConfig {
        prestart: 1,
        ..WorkerConfig::new(exe.clone())
    })
    .unwrap();
    let unconfined = Workers::new(WorkerConfig {
        prestart: 1,
        jail: None,
        ..WorkerConfig::new(exe)
    })
    .unwrap();
    let limit = Duration::from_secs(10);
    // Record the working set once, in this process.
    let mut first =
        Instance::restore(&snapshot, MemoryMode::Reap, Box::new(std::io::sink())).unwrap();
    first.invoke(REQUEST, Some(limit)).unwrap();
    drop(first);

    println!(
        "| mode | in process (ms) | process, unconfined (ms) | process, jailed (ms) | hop, jailed (ms) |"
    );
    println!("|---|---:|---:|---:|---:|");
    let mut peaks = Vec::new();
    let mut parts = Vec::new();
    let mut hop_parts = Vec::new();
    for mode in [MemoryMode::File, MemoryMode::Reap] {
        let (mut local, mut bare, mut jail) = (Vec::new(), Vec::new(), Vec::new());
        // Per variant: the restore (the process's own figure), the hop, the invocation.
        let mut split: [[Vec<f64>; 3]; 3] = Default::default();
        // Per process variant: the hop's parts (prepare, confine, process other,
        // transport).
        let mut hops: [[Vec<f64>; 5]; 2] = Default::default();
        for round in 0..rounds {
            eprint!("\r{mode}: round {}/{rounds}", round + 1);
            // In this process.
            let t = Instant::now();
            let mut i = Instance::restore(&snapshot, mode, Box::new(std::io::sink())).unwrap();
            let (answer, inv) = i.invoke(REQUEST, Some(limit)).unwrap();
            local.push(t.elapsed().as_secs_f64() * 1e3);
            let c = i.cold_start().unwrap();
            split[0][0].push((c.restore_us + c.fetch_us + c.install_us) as f64 / 1e3);
            split[0][2].push(inv.invoke_us as f64 / 1e3);
            assert_eq!(answer, b"{\"greeting\":\"Hello, hop!\"}\n");
            drop(i);
            for (k, workers, out) in [(1, &unconfined, &mut bare), (2, &jailed, &mut jail)] {
                assert_eq!(workers.wait_ready(1, Duration::from_secs(10)), 1);
                let t = Instant::now();
                let mut r = workers
                    .restore(
                        &snapshot,
                        mode,
                        ServeOptions::default(),
                        Box::new(std::io::sink()),
                        limit,
                    )
                    .unwrap();
                let (answer, inv) = r.invoke(REQUEST, limit).unwrap();
                out.push(t.elapsed().as_secs_f64() * 1e3);
                let c = r.cold_start().unwrap();
                let own = c.restore_us + c.fetch_us + c.install_us - r.hop_us();
                split[k][0].push(own as f64 / 1e3);
                split[k][1].push(r.hop_us() as f64 / 1e3);
                split[k][2].push(inv.invoke_us as f64 / 1e3);
                let h = r.hop();
                for (v, us) in hops[k - 1].iter_mut().zip([
                    h.prepare_us,
                    h.confine_us,
                    h.process_other_us,
                    h.to_process_us,
                    h.from_process_us,
                ]) {
                    v.push(us as f64 / 1e3);
                }
                assert_eq!(answer, b"{\"greeting\":\"Hello, hop!\"}\n");
                if let Some(peak) = r.memory_peak() {
                    peaks.push(peak);
                }
            }
        }
        eprintln!();
        let (l, b, j) = (median(&mut local), median(&mut bare), median(&mut jail));
        println!("| {mode} | {l:.3} | {b:.3} | {j:.3} | {:+.3} |", j - l);
        for (name, s) in ["in process", "unconfined", "jailed"]
            .iter()
            .zip(split.iter_mut())
        {
            let [a, b, c] = s;
            let hop = if b.is_empty() { 0.0 } else { median(b) };
            parts.push(format!(
                "| {mode} | {name} | {:.3} | {hop:.3} | {:.3} |",
                median(a),
                median(c)
            ));
        }
        for (name, h) in ["unconfined", "jailed"].iter().zip(hops.iter_mut()) {
            let [p, c, o, to, from] = h;
            hop_parts.push(format!(
                "| {mode} | {name} | {:.3} | {:.3} | {:.3} | {:.3} | {:.3} |",
                median(p),
                median(c),
                median(o),
                median(to),
                median(from)
            ));
        }
    }
    println!("\n| mode | variant | restore, own (ms) | hop (ms) | first invocation (ms) |");
    println!("|---|---|---:|---:|---:|");
    for p in &parts {
        println!("{p}");
    }
    println!(
        "\n| mode | variant | hop: server prepares (ms) | process confines (ms) | process, other (ms) | request to the process (ms) | reply to the server (ms) |"
    );
    println!("|---|---|---:|---:|---:|---:|---:|");
    for p in &hop_parts {
        println!("{p}");
    }
    let ready = jailed.stats();
    println!(
        "\n{rounds} rounds per mode, medians; {} of {} jailed restores took a process started ahead.",
        ready.taken_ready,
        2 * rounds
    );
    if let Some(max) = peaks.iter().max() {
        println!(
            "Peak memory of a jailed instance process's cgroup: {:.1} MiB ({:.1} MiB of guest memory data in the snapshot).",
            *max as f64 / (1 << 20) as f64,
            data_bytes as f64 / (1 << 20) as f64
        );
    }
    std::fs::remove_dir_all(&dir).unwrap();
}
