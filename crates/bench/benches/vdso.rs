//! The cost of reading the clock: `clock_gettime(CLOCK_MONOTONIC)` through glibc
//! (the vDSO, natively the host kernel's, in the microVM reap's), as a system call
//! (`syscall(SYS_clock_gettime)`: natively a kernel entry, in the microVM a VM exit),
//! and the `rdtsc` instruction alone, each timed inside the `clocks` test guest
//! (`bench N M`: N vDSO calls and rdtscs, M system calls) natively and in a microVM,
//! rounds interleaved, alternating which goes first.
//!
//! Run with `cargo bench -p reap-bench --bench vdso` after `cargo build --release
//! --workspace` (which builds the `clocks` guest). Needs /dev/kvm. Environment:
//! `VDSO_BENCH_REPS` (rounds, default 11), `VDSO_BENCH_JSON` (where the results go,
//! default `target/bench/vdso.json`).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use reap_vmm::instance::Instance;
use reap_vmm::microvm::MicroVmConfig;
use serde_json::{Value, json};

use common::{Stats, read_trimmed, report_head, results_path, write_json};

/// vDSO calls and rdtscs per round.
const CALLS: u64 = 1_000_000;
/// System calls per round natively and in the microVM (a VM exit costs ~30 µs here).
const NATIVE_SYSCALLS: u64 = 1_000_000;
const VM_SYSCALLS: u64 = 20_000;
const LIMIT: Duration = Duration::from_secs(120);

fn field(v: &Value, key: &str) -> f64 {
    v[key]
        .as_f64()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
}

fn main() {
    let reps: usize = std::env::var("VDSO_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(11)
        .max(1);
    let dir = common::bin_dir("vdso", &["clocks"]);
    let program = dir.join("clocks");
    let load_before = read_trimmed("/proc/loadavg");
    let started = SystemTime::now();
    let clock = Instant::now();

    let mut native = Command::new(&program)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn clocks");
    let mut native_in = native.stdin.take().expect("stdin");
    let mut native_out = BufReader::new(native.stdout.take().expect("stdout"));
    let mut native_call = |request: &str| -> Value {
        writeln!(native_in, "{request}").expect("write the request");
        native_in.flush().expect("flush");
        let mut line = String::new();
        native_out.read_line(&mut line).expect("read the answer");
        serde_json::from_str(&line).unwrap_or_else(|e| panic!("{line:?}: {e}"))
    };

    let image = std::fs::read(&program).expect("read clocks");
    let config = MicroVmConfig {
        args: vec!["clocks".into()],
        ..Default::default()
    };
    let mut vm = Instance::boot(&image, &config, Box::new(std::io::sink()), Some(LIMIT))
        .unwrap_or_else(|e| panic!("boot clocks: {e:#}"));
    let mut vm_call = |request: &str| -> (Value, u64) {
        let (line, inv) = vm
            .invoke(request.as_bytes(), Some(LIMIT))
            .unwrap_or_else(|e| panic!("invoke clocks: {e:#}"));
        let v = serde_json::from_slice(&line)
            .unwrap_or_else(|e| panic!("{}: {e}", String::from_utf8_lossy(&line)));
        (v, inv.syscalls)
    };

    let native_request = format!("bench {CALLS} {NATIVE_SYSCALLS}");
    let vm_request = format!("bench {CALLS} {VM_SYSCALLS}");
    // One unmeasured round each.
    native_call(&native_request);
    vm_call(&vm_request);
    let mut rounds = Vec::with_capacity(reps);
    let mut vm_exits = Vec::with_capacity(reps);
    eprintln!("vdso bench: {reps} rounds");
    for rep in 0..reps {
        let (n, (v, exits)) = if rep % 2 == 0 {
            let n = native_call(&native_request);
            (n, vm_call(&vm_request))
        } else {
            let v = vm_call(&vm_request);
            (native_call(&native_request), v)
        };
        vm_exits.push(exits);
        rounds.push((n, v));
    }
    drop(native_in);
    let _ = native.wait();
    let wall = clock.elapsed();
    let load_after = read_trimmed("/proc/loadavg");

    let col = |side: usize, key: &str| -> Vec<f64> {
        rounds
            .iter()
            .map(|(n, v)| field(if side == 0 { n } else { v }, key))
            .collect()
    };
    let rows = [
        (
            "clock_gettime(CLOCK_MONOTONIC) through glibc (vDSO)",
            "glibc_ns",
        ),
        ("clock_gettime as a system call", "syscall_ns"),
        ("rdtsc alone", "rdtsc_ns"),
    ];
    println!(
        "clock reads, ns per call, median (p10-p90) of {reps} rounds of {CALLS} vDSO calls and \
         rdtscs, {NATIVE_SYSCALLS} native and {VM_SYSCALLS} microVM system calls:"
    );
    println!();
    println!("| | native | microVM | microVM/native |");
    println!("|---|--:|--:|--:|");
    let mut results = serde_json::Map::new();
    for (what, key) in rows {
        let (n, v) = (col(0, key), col(1, key));
        let (sn, sv) = (Stats::of(&n), Stats::of(&v));
        println!(
            "| {what} | {:.1} ({:.1}-{:.1}) | {:.1} ({:.1}-{:.1}) | {:.1}x |",
            sn.median,
            sn.p10,
            sn.p90,
            sv.median,
            sv.p10,
            sv.p90,
            sv.median / sn.median
        );
        results.insert(
            key.to_owned(),
            json!({ "native": sn.json_with(&n), "microvm": sv.json_with(&v) }),
        );
    }
    println!();
    println!(
        "System calls the microVM counted per round (the {VM_SYSCALLS} clock system calls, the \
         request's read, the answer's write and the read that waits for the next request; \
         none for the {CALLS} vDSO calls): {:?}",
        vm_exits
    );

    let mut report = report_head(
        "vdso",
        started,
        wall.as_secs_f64(),
        &load_before,
        &load_after,
    );
    report.insert("calls".into(), json!(CALLS));
    report.insert("native_syscalls".into(), json!(NATIVE_SYSCALLS));
    report.insert("vm_syscalls".into(), json!(VM_SYSCALLS));
    report.insert("vm_counted_syscalls".into(), json!(vm_exits));
    report.insert("ns_per_call".into(), Value::Object(results));
    let path = results_path("VDSO_BENCH_JSON", &dir, "vdso.json");
    write_json(&path, &Value::Object(report));
    eprintln!("vdso bench: results in {}", path.display());
}
