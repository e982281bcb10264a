//! A Python hello function (Debian's `python3.11` from the root file system that
//! `scripts/rootfs` assembles, running `python_hello/handler.py`: a stdin loop answering
//! one JSON line per request), natively and in a microVM:
//!
//! - **start to ready.** Natively: `chroot IMAGE /usr/bin/python3 /app/handler.py` with
//!   stdin a pipe and an empty environment (as in the microVM), timed from before the
//!   spawn until the process is seen blocked in `read(0, ...)` (its first blocking read
//!   of stdin), by polling `/proc/PID/syscall` every [`POLL`]; the poll adds up to
//!   [`POLL`] and a little CPU time that a 2-core machine takes from the program. In the
//!   microVM: `Instance::boot` (read the program from the image, create the VM, load
//!   `ld.so`, run until the guest's first read of stdin finds nothing), which is where
//!   `reap snapshot` takes its snapshot.
//! - **start to first answer**, a check of the first figure that needs no poll: the
//!   request is written to the pipe before the program starts, and the clock stops at its
//!   response line; minus the warm request time, that is an upper bound of start to
//!   ready (the first request also pays its first-touch costs). In the microVM: boot plus
//!   the first invocation.
//! - **system calls to the ready point**: the VMM's counter in the snapshot, and natively
//!   (if `strace` is installed) the calls `strace -f` lists from the `execve` of
//!   `python3` to the first `read(0, ...)`, both included.
//! - **snapshot size**: guest memory, the memory file's apparent size and allocated
//!   bytes (it is sparse: holes are pages never written), the state file and the
//!   working-set file.
//! - **cold starts** in file, lazy and reap modes against warm, with `reap bench`'s
//!   method (`reap_bench::run::function`: interleaved rounds, each cold start after
//!   the snapshot's files were evicted from the page cache, every answer checked against
//!   the recording cold start's; see docs/benchmarks.md).
//!
//! Start-to-ready rounds alternate native and microVM first. Every answer natively and
//! in the microVM must be the same bytes.
//!
//! Run with `cargo bench -p reap-bench --bench python_hello`. Needs /dev/kvm and root
//! (chroot). Builds the image with `scripts/rootfs` if `target/rootfs/debian` is missing.
//! Environment: `PYTHON_HELLO_BENCH_REPS` (start-to-ready rounds, default 10),
//! `PYTHON_HELLO_BENCH_ITERATIONS` (cold starts per mode and warm invocations, default
//! 10), `PYTHON_HELLO_BENCH_JSON` (the results, default
//! `<target>/bench/python_hello.json`). Prints a Markdown report on stdout, progress on
//! stderr.

mod common;

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use reap_bench::progress::Progress;
use reap_bench::run::{self, FunctionRun, FunctionSpec, RootProgram, RunParams, Techniques};
use reap_pager::Holes;
use reap_vmm::guest_os::fs::RootFs;
use reap_vmm::instance::{Instance, MemoryMode};
use reap_vmm::microvm::MicroVmConfig;
use reap_vmm::snapshot::SnapshotDir;
use serde_json::{Value, json};

use common::{Native, Stats, fmt, read_trimmed, report_head, write_json};

/// The handler, written to `/app/handler.py` in a copy of the image.
const HANDLER: &str = include_str!("python_hello/handler.py");
/// argv of the function, in the image.
const ARGS: [&str; 2] = ["/usr/bin/python3", "/app/handler.py"];
/// The request every measurement sends.
const REQUEST: &str = r#"{"name": "Ada"}"#;
/// How often the native ready point is polled.
const POLL: Duration = Duration::from_micros(50);
/// Requests timed warm per start-to-ready round, after one untimed.
const WARM_PER_ROUND: usize = 5;
/// Time limit of a start to ready and of one request.
const LIMIT: Duration = Duration::from_secs(60);

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
        .max(1)
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The workspace root (this crate is `crates/bench`).
fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `target/rootfs/debian`, assembled by `scripts/rootfs` if it is missing.
fn debian() -> PathBuf {
    let root = workspace().join("target/rootfs/debian");
    if root.join("usr/bin/python3.11").exists() {
        return root;
    }
    eprintln!(
        "python_hello bench: {} is missing: running scripts/rootfs",
        root.display()
    );
    let status = Command::new(workspace().join("scripts/rootfs"))
        .current_dir(workspace())
        .status();
    if !matches!(status, Ok(s) if s.success()) || !root.join("usr/bin/python3.11").exists() {
        eprintln!(
            "python_hello bench: scripts/rootfs failed ({status:?}); run it by hand (it needs \
             apt-get and the Debian package registry)"
        );
        std::process::exit(2);
    }
    root
}

/// A copy of `debian` with hard links (no file of the image is written) and the
/// handler at `/app/handler.py`, in `dir`.
fn image_with_handler(debian: &Path, dir: &Path) -> PathBuf {
    let image = dir.join("root");
    if image.exists() {
        std::fs::remove_dir_all(&image).unwrap_or_else(|e| panic!("remove {image:?}: {e}"));
    }
    std::fs::create_dir_all(dir).unwrap_or_else(|e| panic!("create {dir:?}: {e}"));
    let status = Command::new("cp")
        .arg("-al")
        .arg(debian)
        .arg(&image)
        .status()
        .expect("run cp");
    assert!(status.success(), "cp -al {debian:?} {image:?}: {status}");
    std::fs::create_dir_all(image.join("app")).expect("create /app");
    std::fs::write(image.join("app/handler.py"), HANDLER).expect("write /app/handler.py");
    image
}

/// The handler running natively in a chroot of the image.
fn spawn_native(image: &Path) -> Native {
    let mut command = Command::new("/usr/sbin/chroot");
    command.arg(image).args(ARGS).env_clear();
    Native::spawn(command)
}

/// Waits until `native` is blocked in `read(0, ...)`.
fn wait_ready(native: &mut Native, started: Instant) {
    let child = native.child();
    let path = format!("/proc/{}/syscall", child.id());
    loop {
        // `read` is system call 0, its first argument the descriptor.
        if std::fs::read_to_string(&path).is_ok_and(|s| s.starts_with("0 0x0 ")) {
            return;
        }
        if let Ok(Some(status)) = child.try_wait() {
            panic!("python3 natively exited before its ready point: {status}");
        }
        assert!(started.elapsed() < LIMIT, "python3 natively not ready");
        std::thread::sleep(POLL);
    }
}

fn finish(native: Native) {
    let status = native.finish();
    assert!(status.success(), "python3 natively: {status}");
}

/// One native round: start to ready (polled), the first request, warm requests; then
/// a second process started with the request already in its pipe, timed to its answer.
struct NativeRound {
    ready: Duration,
    first_request: Duration,
    warm: Vec<Duration>,
    first_answer: Duration,
}

fn native_round(image: &Path, expected: &mut Option<String>) -> NativeRound {
    let mut check = |answer: String| match expected {
        Some(e) => assert_eq!(&answer, e, "native answer"),
        None => *expected = Some(answer),
    };
    let started = Instant::now();
    let mut native = spawn_native(image);
    wait_ready(&mut native, started);
    let ready = started.elapsed();
    let (first_request, answer) = native.call(REQUEST);
    check(answer);
    let _ = native.call(REQUEST);
    let mut warm = Vec::with_capacity(WARM_PER_ROUND);
    for _ in 0..WARM_PER_ROUND {
        let (t, answer) = native.call(REQUEST);
        check(answer);
        warm.push(t);
    }
    finish(native);

    let started = Instant::now();
    let mut native = spawn_native(image);
    let (_, answer) = native.call(REQUEST);
    let first_answer = started.elapsed();
    check(answer);
    finish(native);
    NativeRound {
        ready,
        first_request,
        warm,
        first_answer,
    }
}

/// One microVM round: `Instance::boot` to the ready point, the first invocation, warm
/// invocations (the wall time around `Instance::invoke`).
struct VmRound {
    ready: Duration,
    first_request: Duration,
    warm: Vec<Duration>,
    syscalls_first_request: u64,
}

fn vm_config(image: &Path) -> MicroVmConfig {
    MicroVmConfig {
        args: ARGS.iter().map(|a| (*a).to_owned()).collect(),
        rootfs: Some(RootFs {
            dir: image.to_owned(),
            program: ARGS[0].to_owned(),
            workdir: "/app".to_owned(),
        }),
        ..Default::default()
    }
}

fn vm_round(image: &Path, expected: &str) -> VmRound {
    let config = vm_config(image);
    let started = Instant::now();
    let program = config.read_program().expect("read python3 from the image");
    let mut instance = Instance::boot(&program, &config, Box::new(std::io::sink()), Some(LIMIT))
        .unwrap_or_else(|e| panic!("boot python3 to its ready point: {e:#}"));
    let ready = started.elapsed();
    let call = |instance: &mut Instance| {
        let t = Instant::now();
        let (answer, inv) = instance
            .invoke(REQUEST.as_bytes(), Some(LIMIT))
            .unwrap_or_else(|e| panic!("invoke python3: {e:#}"));
        let t = t.elapsed();
        assert_eq!(
            String::from_utf8_lossy(&answer).trim_end(),
            expected,
            "microVM answer"
        );
        (t, inv.syscalls)
    };
    let (first_request, syscalls_first_request) = call(&mut instance);
    let _ = call(&mut instance);
    let warm = (0..WARM_PER_ROUND).map(|_| call(&mut instance).0).collect();
    VmRound {
        ready,
        first_request,
        warm,
        syscalls_first_request,
    }
}

/// The system calls `strace -f` lists natively from the `execve` of python3 to its first
/// `read(0, ...)`, both included; `None` without strace.
fn native_syscalls(image: &Path, dir: &Path) -> Option<u64> {
    let out = dir.join("strace.txt");
    let status = Command::new("/usr/bin/strace")
        .arg("-f")
        .arg("-o")
        .arg(&out)
        .arg("/usr/sbin/chroot")
        .arg(image)
        .args(ARGS)
        .env_clear()
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .ok()?;
    if !status.success() {
        return None;
    }
    let text = std::fs::read_to_string(&out).ok()?;
    let mut counting = false;
    let mut n = 0;
    for line in text.lines() {
        if line.contains(&format!("execve(\"{}\"", ARGS[0])) {
            counting = true;
        }
        // A call that was interrupted by another's line is listed twice
        // (`<unfinished ...>` and `<... resumed>`): count its first line; exits and
        // signals are not calls.
        if !counting || line.contains("resumed>") || line.contains("+++") || line.contains("---") {
            continue;
        }
        n += 1;
        // `PID  call(...)`: strace pads the PID.
        if line
            .split_once(' ')
            .is_some_and(|(_, call)| call.trim_start().starts_with("read(0,"))
        {
            return Some(n);
        }
    }
    None
}

fn stats_ms(samples: &[Duration]) -> (Stats, Vec<f64>) {
    let v: Vec<f64> = samples.iter().map(|d| ms(*d)).collect();
    (Stats::of(&v), v)
}

fn file_sizes(path: &Path) -> (u64, u64) {
    std::fs::metadata(path)
        .map(|m| (m.len(), m.blocks() * 512))
        .unwrap_or((0, 0))
}

fn cold_ms(run: &FunctionRun, mode: MemoryMode) -> Vec<f64> {
    run.cold
        .iter()
        .filter(|c| c.mode == mode)
        .map(|c| c.latency_us as f64 / 1e3)
        .collect()
}

fn main() {
    let reps = env_usize("PYTHON_HELLO_BENCH_REPS", 10);
    let iterations = env_usize("PYTHON_HELLO_BENCH_ITERATIONS", 10);
    let exe = std::env::current_exe().expect("bench executable path");
    // <target>/<profile>/deps/<bench>-<hash>
    let target = exe
        .ancestors()
        .nth(3)
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("target"));
    let work = target.join("bench/python-hello");
    let debian = debian();
    let image = image_with_handler(&debian, &work);
    let load_before = read_trimmed("/proc/loadavg");
    let started_at = SystemTime::now();
    let clock = Instant::now();

    // Start to ready, native and microVM interleaved, one warm-up round each first.
    eprintln!("python_hello: {reps} start-to-ready rounds (+1 warm-up)");
    let mut expected = None;
    let mut native = Vec::with_capacity(reps);
    let mut vm = Vec::with_capacity(reps);
    for rep in 0..=reps {
        let native_first = rep % 2 == 0;
        for turn in 0..2 {
            if (turn == 0) == native_first {
                let r = native_round(&image, &mut expected);
                if rep > 0 {
                    native.push(r);
                }
            } else {
                let e = expected.clone().expect("the native round ran first once");
                let r = vm_round(&image, &e);
                if rep > 0 {
                    vm.push(r);
                }
            }
        }
    }
    let answer = expected.expect("a native answer");
    let native_syscalls = native_syscalls(&image, &work);

    // Deploy (boot and snapshot), warm, record, cold starts per mode.
    eprintln!("python_hello: snapshot, warm invocations, {iterations} cold starts per mode");
    let techniques = Techniques::ALL;
    techniques.apply();
    let spec = FunctionSpec {
        name: "python_hello".into(),
        binary: PathBuf::from(ARGS[0]),
        rootfs: Some(RootProgram {
            root: vm_config(&image).rootfs.expect("a root file system"),
            args: ARGS.iter().map(|a| (*a).to_owned()).collect(),
        }),
        request: REQUEST.into(),
        second_request: None,
    };
    let params = RunParams {
        mem_mib: MicroVmConfig::default().mem_mib,
        iterations,
        warmup: 1,
        limit: LIMIT,
        holes: Holes::Kernel,
        input_sensitivity: false,
        techniques,
        ablation: false,
    };
    let snap = work.join("snapshot");
    let _ = std::fs::remove_dir_all(&snap);
    let progress = Progress::new(0, false);
    let cold = run::function(&spec, &snap, &params, &progress)
        .unwrap_or_else(|e| panic!("python_hello cold starts: {e}"));
    let dir = SnapshotDir::new(&snap);
    let state = dir.read_state().expect("read the snapshot's state");
    let vm_syscalls = state.vm.os.counters.syscalls;
    let (memory_apparent, memory_allocated) = file_sizes(&dir.memory());
    let (state_bytes, _) = file_sizes(&dir.state());
    let ws_bytes = dir.working_set().map(|p| file_sizes(&p).0).unwrap_or(0);

    let wall = clock.elapsed();
    let load_after = read_trimmed("/proc/loadavg");

    // The report.
    let col = |f: &dyn Fn(&NativeRound) -> Duration| native.iter().map(f).collect::<Vec<_>>();
    let vcol = |f: &dyn Fn(&VmRound) -> Duration| vm.iter().map(f).collect::<Vec<_>>();
    let native_ready = stats_ms(&col(&|r| r.ready));
    let native_first_answer = stats_ms(&col(&|r| r.first_answer));
    let native_first_request = stats_ms(&col(&|r| r.first_request));
    let native_warm = stats_ms(
        &native
            .iter()
            .flat_map(|r| r.warm.clone())
            .collect::<Vec<_>>(),
    );
    let vm_ready = stats_ms(&vcol(&|r| r.ready));
    let vm_first_answer = stats_ms(&vcol(&|r| r.ready + r.first_request));
    let vm_first_request = stats_ms(&vcol(&|r| r.first_request));
    let vm_warm = stats_ms(&vm.iter().flat_map(|r| r.warm.clone()).collect::<Vec<_>>());
    let vm_first_request_syscalls: Vec<u64> = vm.iter().map(|r| r.syscalls_first_request).collect();

    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    println!(
        "# Python hello: Debian python3.11, `/app/handler.py`, request `{REQUEST}`, answer `{answer}`"
    );
    println!();
    println!("Start to ready, median (p10-p90) of {reps} rounds, ms:");
    println!();
    println!("| | native (chroot) | microVM | microVM/native |");
    println!("|---|--:|--:|--:|");
    let row = |what: &str, n: &(Stats, Vec<f64>), v: &(Stats, Vec<f64>)| {
        println!(
            "| {what} | {} ({}-{}) | {} ({}-{}) | {:.1}x |",
            fmt(n.0.median),
            fmt(n.0.p10),
            fmt(n.0.p90),
            fmt(v.0.median),
            fmt(v.0.p10),
            fmt(v.0.p90),
            v.0.median / n.0.median
        );
    };
    row(
        "start to ready (first blocking read of stdin)",
        &native_ready,
        &vm_ready,
    );
    row(
        "start to first answer (request sent at start)",
        &native_first_answer,
        &vm_first_answer,
    );
    row(
        "first request after ready",
        &native_first_request,
        &vm_first_request,
    );
    row("warm request", &native_warm, &vm_warm);
    println!(
        "| first answer - warm request (upper bound of start to ready) | {} | {} | |",
        fmt(native_first_answer.0.median - native_warm.0.median),
        fmt(vm_first_answer.0.median - vm_warm.0.median),
    );
    println!();
    println!(
        "System calls to the ready point: {vm_syscalls} in the microVM (VMM counter), {} natively \
         (strace -f, execve of python3 to the first read of stdin); the first request makes {} \
         in the microVM.",
        native_syscalls.map_or("-".to_owned(), |n| n.to_string()),
        vm_first_request_syscalls.first().copied().unwrap_or(0),
    );
    println!();
    println!(
        "Snapshot: guest memory {} MiB; memory file {:.1} MiB apparent, {:.1} MiB allocated \
         ({:.1} MiB of data pages by the state); state file {:.2} MiB; working-set file {:.2} \
         MiB ({} pages, {} of them zero pages); booted in {} ms, written in {} ms.",
        state.memory_len >> 20,
        mib(memory_apparent),
        mib(memory_allocated),
        mib(state.memory_data_bytes),
        mib(state_bytes),
        mib(ws_bytes),
        cold.ws.pages,
        cold.ws.zero_pages,
        fmt(cold.boot_ms),
        fmt(cold.snapshot_ms),
    );
    println!();
    println!(
        "Cold starts (restore + first request, page cache evicted before each), median (p10-p90) \
         of {iterations}, ms; warm: the booted instance:"
    );
    println!();
    println!("| warm | file | lazy | reap | file/reap | lazy/reap | reap/warm |");
    println!("|--:|--:|--:|--:|--:|--:|--:|");
    let warm: Vec<f64> = cold
        .warm
        .iter()
        .map(|w| w.latency_us as f64 / 1e3)
        .collect();
    let w = Stats::of(&warm);
    let f = Stats::of(&cold_ms(&cold, MemoryMode::File));
    let l = Stats::of(&cold_ms(&cold, MemoryMode::Lazy));
    let r = Stats::of(&cold_ms(&cold, MemoryMode::Reap));
    let cell = |s: &Stats| format!("{} ({}-{})", fmt(s.median), fmt(s.p10), fmt(s.p90));
    println!(
        "| {} | {} | {} | {} | {:.1}x | {:.1}x | {:.1}x |",
        cell(&w),
        cell(&f),
        cell(&l),
        cell(&r),
        f.median / r.median,
        l.median / r.median,
        r.median / w.median
    );
    let faults = |mode: MemoryMode| {
        let v: Vec<f64> = cold
            .cold
            .iter()
            .filter(|c| c.mode == mode)
            .map(|c| c.lazy_faults as f64)
            .collect();
        Stats::of(&v).median
    };
    println!();
    println!(
        "Faults served by the page server per cold start (median): lazy {}, reap {}; the \
         recording cold start took {} ms.",
        faults(MemoryMode::Lazy),
        faults(MemoryMode::Reap),
        fmt(cold.recording.latency_us as f64 / 1e3),
    );

    let mut report = report_head(
        "python_hello",
        started_at,
        wall.as_secs_f64(),
        &load_before,
        &load_after,
    );
    let both = |s: &(Stats, Vec<f64>)| s.0.json_with(&s.1);
    let extra = json!({
        "request": REQUEST,
        "answer": answer,
        "handler": HANDLER,
        "args": ARGS,
        "poll_us": POLL.as_micros() as u64,
        "native_ms": {
            "start_to_ready": both(&native_ready),
            "start_to_first_answer": both(&native_first_answer),
            "first_request": both(&native_first_request),
            "warm_request": both(&native_warm),
        },
        "microvm_ms": {
            "start_to_ready": both(&vm_ready),
            "start_to_first_answer": both(&vm_first_answer),
            "first_request": both(&vm_first_request),
            "warm_request": both(&vm_warm),
        },
        "syscalls_to_ready": { "microvm": vm_syscalls, "native_strace": native_syscalls },
        "microvm_first_request_syscalls": vm_first_request_syscalls,
        "snapshot": {
            "guest_memory_bytes": state.memory_len,
            "memory_file_apparent_bytes": memory_apparent,
            "memory_file_allocated_bytes": memory_allocated,
            "memory_data_bytes": state.memory_data_bytes,
            "state_file_bytes": state_bytes,
            "ws_file_bytes": ws_bytes,
        },
        "cold_starts": cold,
    });
    if let Value::Object(extra) = extra {
        report.extend(extra);
    }
    let path = std::env::var_os("PYTHON_HELLO_BENCH_JSON")
        .map(PathBuf::from)
        .unwrap_or_else(|| target.join("bench/python_hello.json"));
    write_json(&path, &Value::Object(report));
    eprintln!("python_hello: results in {}", path.display());
}
