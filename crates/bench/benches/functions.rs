//! The function suite, per function:
//!
//! - the binary's size, and its size without symbols and debug information (what
//!   `strip` would leave, computed from the ELF section headers: the file less its
//!   `.symtab`, `.strtab` and `.debug_*` sections);
//! - guest memory in use after init: the function booted with `Instance::boot` to its
//!   ready point, then the bytes its heap and anonymous mappings span
//!   (`Instance::guest_mapped_bytes`), and the bytes of guest memory that hold data
//!   (the snapshot's non-zero pages, `SnapshotState::memory_data_bytes`: program image,
//!   stack, page tables and every page init touched);
//! - the time per request of its first two sample requests (`functions/NAME/requests.jsonl`,
//!   the first is `{}`), warm, in steady state: each is timed in batches of `k` requests
//!   back to back, natively and in the microVM, `k` chosen from the warm-up times so that
//!   a batch lasts about `BATCH_TARGET` (1 for requests that long). Natively, one
//!   long-running process is fed over a pipe: one request, timed from writing its line to
//!   reading the response line, then `k` copies written at once, timed to the last
//!   response; the time per request is `(batch - single) / (k - 1)`. That leaves out the
//!   wake-ups of the processes on each side of the pipe, which on a busy 2-core machine
//!   can cost more than a short request itself. In the microVM, `k` calls of
//!   `Instance::invoke` on the booted instance, the time per request the mean `invoke_us`
//!   (from handing the request to the guest until the VMM handled the guest's write of
//!   the response line; the vCPU runs in the bench's thread, so no wake-up is in it) of
//!   all but the first. Leaving out each batch's first request matters: right after the
//!   other side's batch, the first invocation in the microVM runs up to twice as long
//!   (its caches and this host's shadow page tables are cold); it is kept in the JSON,
//!   with the single native request.
//!
//! Both instances get every measured request `WARMUP` times before the timed rounds, so
//! init and first-touch costs stay out of the figures. Each round times each request
//! natively and in the microVM, alternating which goes first. Every answer is compared
//! with the native answer of the warm-up.
//!
//! Run with `cargo bench -p reap --bench functions [-- NAME...]` after
//! `cargo build --release --workspace`; with names, only those functions. Needs /dev/kvm.
//! Environment: `FUNCTIONS_BENCH_REPS` (timed rounds, default 11),
//! `FUNCTIONS_BENCH_JSON` (where the results go, default `target/bench/functions.json`).
//! Prints a Markdown table on stdout, progress on stderr.

mod common;
// The suite and its sample requests, as the integration tests list and read them.
use reap_test_support as suite;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant, SystemTime};

use goblin::elf::Elf;
use goblin::elf::section_header::SHT_SYMTAB;
use reap_vmm::instance::Instance;
use reap_vmm::microvm::MicroVmConfig;
use reap_vmm::snapshot::SnapshotDir;
use serde_json::{Value, json};

use common::{Native, Stats, fmt, read_trimmed, report_head, results_path, write_json};

/// Untimed invocations of each measured request before the timed rounds.
const WARMUP: usize = 2;
/// Sample requests measured per function: the first (`{}`) and the second.
const MEASURED_REQUESTS: usize = 2;
/// Time limit of a boot to the ready point and of one invocation.
const LIMIT: Duration = Duration::from_secs(120);
/// A batch lasts about this long (its size from the native warm-up times)...
const BATCH_TARGET: Duration = Duration::from_millis(20);
/// ...with at most this many requests, of at most this many bytes in all (well within
/// a pipe's 64 KiB).
const BATCH_MAX: usize = 256;
const BATCH_BYTES: usize = 32 << 10;

/// What the ELF file holds, in bytes.
struct BinarySize {
    file: u64,
    /// `.symtab`, `.strtab` and `.debug_*`: what `strip` removes.
    symbols_and_debug: u64,
}

fn binary_size(name: &str, image: &[u8]) -> BinarySize {
    let elf = Elf::parse(image).unwrap_or_else(|e| panic!("{name}: not an ELF file: {e}"));
    let symbols_and_debug = elf
        .section_headers
        .iter()
        .filter(|sh| {
            let section = elf.shdr_strtab.get_at(sh.sh_name).unwrap_or("");
            sh.sh_type == SHT_SYMTAB || section == ".strtab" || section.starts_with(".debug")
        })
        .map(|sh| sh.sh_size)
        .sum();
    BinarySize {
        file: image.len() as u64,
        symbols_and_debug,
    }
}

/// One invocation in the microVM.
struct VmCall {
    invoke_us: f64,
    /// Wall time of the `invoke` call.
    wall_us: f64,
    syscalls: f64,
    /// Without its newline.
    response: String,
}

fn vm_call(instance: &mut Instance, name: &str, request: &str) -> VmCall {
    let t = Instant::now();
    let (response, invocation) = instance
        .invoke(request.as_bytes(), Some(LIMIT))
        .unwrap_or_else(|e| panic!("{name} {request} in the microVM: {e:#}"));
    let wall = us(t.elapsed());
    let mut response = String::from_utf8(response).expect("UTF-8 response");
    response.pop();
    VmCall {
        invoke_us: invocation.invoke_us as f64,
        wall_us: wall,
        syscalls: invocation.syscalls as f64,
        response,
    }
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// The samples of one measured request.
struct RequestResult {
    request: String,
    /// Requests per batch.
    batch: usize,
    /// Native time per request: (batch time - one request's time) / (batch - 1), or
    /// one request's time when a batch is one request.
    native_us: Vec<f64>,
    /// One request written and its response read.
    native_single_us: Vec<f64>,
    /// `invoke_us` per request: the mean of the batch's invocations after its first, or
    /// the first when a batch is one request.
    vm_invoke_us: Vec<f64>,
    /// The first invocation of each batch.
    vm_single_us: Vec<f64>,
    /// Wall time of the first `invoke` call of each batch.
    vm_wall_us: Vec<f64>,
    /// Guest system calls per invocation.
    vm_syscalls: Vec<f64>,
    /// Answers that differ from the native one of the warm-up (the first few).
    mismatches: Vec<(String, String)>,
    /// The native answer of the warm-up.
    response: String,
}

impl RequestResult {
    /// Keeps `got` if it is not the native answer of the warm-up.
    fn check(&mut self, got: String) {
        if got != self.response && self.mismatches.len() < 3 {
            self.mismatches.push((self.response.clone(), got));
        }
    }
}

struct FunctionResult {
    name: String,
    size: BinarySize,
    guest_mapped_bytes: u64,
    snapshot_data_bytes: u64,
    vm_boot_to_ready_ms: f64,
    native_start_to_first_answer_ms: f64,
    requests: Vec<RequestResult>,
}

fn measure(name: &str, program: &Path, reps: usize) -> FunctionResult {
    let image = std::fs::read(program).unwrap_or_else(|e| panic!("read {name}: {e}"));
    let size = binary_size(name, &image);
    let requests: Vec<String> = suite::requests(name)
        .into_iter()
        .take(MEASURED_REQUESTS)
        .collect();

    eprintln!("{name}: booting to the ready point");
    let config = MicroVmConfig {
        args: vec![name.into()],
        ..Default::default()
    };
    let tmp = std::env::temp_dir().join(format!("reap-bench-functions-{}", std::process::id()));
    let deployed = Instance::deploy(
        &image,
        &config,
        Box::new(std::io::sink()),
        Some(LIMIT),
        &SnapshotDir::new(tmp.join(name)),
    )
    .unwrap_or_else(|e| panic!("{name}: boot to ready and snapshot: {e:#}"));
    let _ = std::fs::remove_dir_all(&tmp);
    let vm_boot_to_ready_ms = deployed.boot.as_secs_f64() * 1e3;
    let mut instance = deployed.instance;
    let guest_mapped_bytes = instance.guest_mapped_bytes();
    let snapshot = deployed.state;

    let t = Instant::now();
    let mut native = Native::spawn(Command::new(program));
    native.call(&requests[0]);
    let native_start_to_first_answer_ms = t.elapsed().as_secs_f64() * 1e3;

    let mut results: Vec<RequestResult> = requests
        .iter()
        .map(|r| RequestResult {
            request: r.clone(),
            batch: 1,
            native_us: Vec::new(),
            native_single_us: Vec::new(),
            vm_invoke_us: Vec::new(),
            vm_single_us: Vec::new(),
            vm_wall_us: Vec::new(),
            vm_syscalls: Vec::new(),
            mismatches: Vec::new(),
            response: String::new(),
        })
        .collect();
    eprintln!("{name}: warm-up");
    for result in &mut results {
        let mut slowest = Duration::ZERO;
        for _ in 0..WARMUP {
            let (elapsed, answer) = native.call(&result.request);
            let vm = vm_call(&mut instance, name, &result.request);
            result.response = answer;
            result.check(vm.response);
            slowest = slowest.max(elapsed);
        }
        result.batch = batch_size(&result.request, slowest);
    }
    eprintln!("{name}: {reps} rounds");
    for rep in 0..reps {
        let vm_first = rep.is_multiple_of(2);
        for result in &mut results {
            let k = result.batch;
            for turn in 0..2 {
                if (turn == 0) == vm_first {
                    let first = vm_call(&mut instance, name, &result.request);
                    result.vm_single_us.push(first.invoke_us);
                    result.vm_wall_us.push(first.wall_us);
                    result.vm_syscalls.push(first.syscalls);
                    let mut answers = vec![first.response];
                    let mut rest = 0.0;
                    for _ in 1..k {
                        let vm = vm_call(&mut instance, name, &result.request);
                        rest += vm.invoke_us;
                        answers.push(vm.response);
                    }
                    result.vm_invoke_us.push(if k == 1 {
                        first.invoke_us
                    } else {
                        rest / (k - 1) as f64
                    });
                    for answer in answers {
                        result.check(answer);
                    }
                } else {
                    let (single, answer) = native.call(&result.request);
                    result.native_single_us.push(us(single));
                    result.check(answer);
                    if k == 1 {
                        result.native_us.push(us(single));
                        continue;
                    }
                    let (elapsed, answers) = native.batch(&result.request, k);
                    result
                        .native_us
                        .push(us(elapsed.saturating_sub(single)) / (k - 1) as f64);
                    for answer in answers {
                        result.check(answer);
                    }
                }
            }
        }
    }
    drop(native);
    drop(instance);
    FunctionResult {
        name: name.into(),
        size,
        guest_mapped_bytes,
        snapshot_data_bytes: snapshot.memory_data_bytes,
        vm_boot_to_ready_ms,
        native_start_to_first_answer_ms,
        requests: results,
    }
}

/// Requests per batch: enough for about [`BATCH_TARGET`] at `one` per request.
fn batch_size(request: &str, one: Duration) -> usize {
    let by_time = BATCH_TARGET.as_nanos() / one.as_nanos().max(1);
    let by_bytes = BATCH_BYTES / (request.len() + 1);
    (by_time as usize).clamp(1, BATCH_MAX.min(by_bytes).max(1))
}

fn mib(bytes: u64) -> String {
    format!("{:.1}", bytes as f64 / f64::from(1 << 20))
}

/// A time in µs, as µs below a millisecond and as ms above.
fn time(us: f64) -> String {
    if us < 1000.0 {
        format!("{} µs", fmt(us))
    } else {
        format!("{} ms", fmt(us / 1e3))
    }
}

/// `request`, cut to about 40 characters for the table.
fn short(request: &str) -> String {
    const MAX: usize = 40;
    if request.chars().count() <= MAX {
        return request.to_owned();
    }
    let cut: String = request.chars().take(MAX - 1).collect();
    format!("{cut}…")
}

fn table(results: &[FunctionResult]) -> String {
    let mut out = String::new();
    out.push_str(
        "| function | binary MiB | stripped MiB | guest mapped MiB | guest data MiB \
         | `{}` native | `{}` microVM | ratio | 2nd request | native | microVM | ratio |\n",
    );
    out.push_str("|---|--:|--:|--:|--:|--:|--:|--:|---|--:|--:|--:|\n");
    for f in results {
        let mut row = format!(
            "| {} | {} | {} | {} | {} ",
            f.name,
            mib(f.size.file),
            mib(f.size.file - f.size.symbols_and_debug),
            mib(f.guest_mapped_bytes),
            mib(f.snapshot_data_bytes),
        );
        for (i, r) in f.requests.iter().enumerate() {
            let native = Stats::of(&r.native_us).median;
            let vm = Stats::of(&r.vm_invoke_us).median;
            if i > 0 {
                row.push_str(&format!("| `{}` ", short(&r.request).replace('|', "\\|")));
            }
            row.push_str(&format!(
                "| {} | {} | {:.2} ",
                time(native),
                time(vm),
                vm / native
            ));
        }
        out.push_str(&row);
        out.push_str("|\n");
    }
    out
}

fn function_json(f: &FunctionResult) -> Value {
    let requests: Vec<Value> = f
        .requests
        .iter()
        .map(|r| {
            let native = Stats::of(&r.native_us);
            let vm = Stats::of(&r.vm_invoke_us);
            json!({
                "request": r.request,
                "response": r.response,
                "answers_match": r.mismatches.is_empty(),
                "mismatches": r.mismatches.iter().map(|(n, v)| json!({"expected": n, "got": v})).collect::<Vec<_>>(),
                "native_batch": r.batch,
                "native_us": native.json_with(&r.native_us),
                "native_single_us": Stats::of(&r.native_single_us).json_with(&r.native_single_us),
                "vm_invoke_us": vm.json_with(&r.vm_invoke_us),
                "vm_single_us": Stats::of(&r.vm_single_us).json_with(&r.vm_single_us),
                "vm_wall_us": Stats::of(&r.vm_wall_us).json_with(&r.vm_wall_us),
                "vm_over_native": vm.median / native.median,
                "vm_syscalls_per_invocation": Stats::of(&r.vm_syscalls).median,
            })
        })
        .collect();
    json!({
        "binary_bytes": f.size.file,
        "symbols_and_debug_bytes": f.size.symbols_and_debug,
        "stripped_bytes_estimate": f.size.file - f.size.symbols_and_debug,
        "guest_mapped_bytes": f.guest_mapped_bytes,
        "snapshot_data_bytes": f.snapshot_data_bytes,
        "vm_boot_to_ready_ms": f.vm_boot_to_ready_ms,
        "native_start_to_first_answer_ms": f.native_start_to_first_answer_ms,
        "requests": requests,
    })
}

fn main() {
    let reps: usize = std::env::var("FUNCTIONS_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(11)
        .max(1);
    // `cargo bench` passes `--bench`; other arguments name functions.
    let named: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    for name in &named {
        if !suite::FUNCTIONS.contains(&name.as_str()) {
            eprintln!(
                "functions bench: unknown function {name}; the suite: {}",
                suite::FUNCTIONS.join(", ")
            );
            std::process::exit(2);
        }
    }
    let selected: Vec<&str> = suite::FUNCTIONS
        .into_iter()
        .filter(|f| named.is_empty() || named.iter().any(|n| n == f))
        .collect();
    let dir = common::bin_dir("functions", &selected);
    let load_before = read_trimmed("/proc/loadavg");
    let started = SystemTime::now();
    let clock = Instant::now();

    let results: Vec<FunctionResult> = selected
        .iter()
        .map(|name| measure(name, &dir.join(name), reps))
        .collect();
    let wall = clock.elapsed();
    let load_after = read_trimmed("/proc/loadavg");

    println!(
        "reap function suite: per request, the median of {reps} rounds of back-to-back batches \
         (after {WARMUP} warm-up requests), native and microVM interleaved; guest memory {} MiB",
        MicroVmConfig::default().mem_mib
    );
    println!();
    print!("{}", table(&results));
    println!();
    println!("load average before/after: {load_before} / {load_after}");
    for f in &results {
        for r in &f.requests {
            for (native, vm) in &r.mismatches {
                println!(
                    "MISMATCH {} {}: expected {native}, got {vm}",
                    f.name, r.request
                );
            }
        }
    }

    let functions: serde_json::Map<String, Value> = results
        .iter()
        .map(|f| (f.name.clone(), function_json(f)))
        .collect();
    let mut report = report_head(
        "functions",
        started,
        wall.as_secs_f64(),
        &load_before,
        &load_after,
    );
    if let Value::Object(own) = json!({
        "config": {
            "reps": reps, "warmup": WARMUP, "measured_requests": MEASURED_REQUESTS,
            "mem_mib": MicroVmConfig::default().mem_mib, "binaries": dir.display().to_string(),
        },
        "functions": functions,
        "table_markdown": table(&results),
    }) {
        report.extend(own);
    }
    let report = Value::Object(report);
    let path = results_path("FUNCTIONS_BENCH_JSON", &dir, "functions.json");
    write_json(&path, &report);
    println!("results: {}", path.display());
    if results
        .iter()
        .any(|f| f.requests.iter().any(|r| !r.mismatches.is_empty()))
    {
        std::process::exit(1);
    }
}
