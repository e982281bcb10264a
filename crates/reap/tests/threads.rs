//! Threads in the microVM: multi-threaded programs (Rust std threads, C pthreads)
//! answer like natively under `reap run` and after a snapshot taken while their worker
//! threads are parked, in every memory mode; a deadlock, a crashing thread and a
//! spinning thread end clearly; thread create/join cycles leave nothing behind; Debian's
//! `python3` runs a thread pool. Needs /dev/kvm, userfaultfd, a C compiler, the
//! workspace's release binaries and the root file system of `scripts/rootfs`.

use reap_test_support as common;

use std::path::{Path, PathBuf};
use std::process::Output;
use std::time::{Duration, Instant};

use common::{c_guest, guest, reap, run_native, stderr, stdout, temp_dir};
use reap_vmm::instance::{Instance, MemoryMode};
use reap_vmm::microvm::{MicroVm, MicroVmConfig, RunExit};
use reap_vmm::snapshot::SnapshotDir;

const LIMIT: Option<Duration> = Some(Duration::from_secs(120));
const REQUESTS: [&str; 4] = ["{\"n\":10}", "{\"n\":1000}", "{\"n\":0}", "{\"n\":77777}"];

/// A stdout the test reads back.
#[derive(Clone, Default)]
struct Capture(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

fn input() -> Vec<u8> {
    REQUESTS
        .iter()
        .flat_map(|r| format!("{r}\n").into_bytes())
        .collect()
}

fn reap_run(binary: &Path, extra: &[&str], input: &[u8]) -> Output {
    let mut args = vec!["run", "--binary", binary.to_str().unwrap()];
    args.extend_from_slice(extra);
    reap(&args, input)
}

/// The two multi-threaded functions: Rust std threads and C pthreads.
fn functions() -> [(&'static str, PathBuf); 2] {
    [
        ("threads", guest("threads")),
        ("pthreads", c_guest("pthreads")),
    ]
}

#[test]
fn threaded_functions_answer_like_native_under_reap_run() {
    for (name, binary) in functions() {
        let native = run_native(&binary, &[], &input());
        assert!(native.status.success(), "{name} natively");
        assert_eq!(stdout(&native).lines().count(), REQUESTS.len());
        let vm = reap_run(&binary, &["--timeout", "60"], &input());
        assert!(vm.status.success(), "{name}: {}", stderr(&vm));
        assert_eq!(stdout(&vm), stdout(&native), "{name}");
        assert!(stdout(&vm).contains("\"spun\":true"), "{name}");
    }
}

fn answers(instance: &mut Instance, what: &str) -> Vec<String> {
    REQUESTS
        .iter()
        .map(|r| {
            let (resp, _) = instance
                .invoke(r.as_bytes(), LIMIT)
                .unwrap_or_else(|e| panic!("{what} {r}: {e:#}"));
            String::from_utf8(resp).unwrap().trim_end().to_owned()
        })
        .collect()
}

#[test]
fn threaded_functions_answer_like_native_after_a_snapshot_in_every_mode() {
    for (name, binary) in functions() {
        let native: Vec<String> = stdout(&run_native(&binary, &[], &input()))
            .lines()
            .map(str::to_owned)
            .collect();
        let tmp = temp_dir(&format!("threads-{name}"));
        let dir = SnapshotDir::new(tmp.join("snap"));
        let image = std::fs::read(&binary).unwrap();
        let config = MicroVmConfig {
            args: vec![name.into()],
            ..Default::default()
        };
        let mut warm = Instance::boot(&image, &config, Box::new(std::io::sink()), LIMIT).unwrap();
        warm.snapshot(&dir).unwrap();
        assert_eq!(answers(&mut warm, name), native, "{name}: warm");
        for (mode, label) in [
            (MemoryMode::File, "file"),
            (MemoryMode::Lazy, "lazy"),
            (MemoryMode::Reap, "reap (recording)"),
            (MemoryMode::Reap, "reap (prefetch)"),
        ] {
            let mut instance = Instance::restore(&dir, mode, Box::new(std::io::sink()))
                .unwrap_or_else(|e| panic!("{name}: restore {label}: {e:#}"));
            assert_eq!(
                answers(&mut instance, &format!("{name} {label}")),
                native,
                "{name}: {label}"
            );
        }
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}

#[test]
fn the_ready_point_snapshot_holds_every_parked_thread() {
    let image = std::fs::read(guest("threads")).unwrap();
    let config = MicroVmConfig {
        args: vec!["threads".into()],
        ..Default::default()
    };
    let mut vm = MicroVm::boot(
        &image,
        &config,
        Box::new(std::io::sink()),
        Box::new(std::io::sink()),
    )
    .unwrap();
    assert_eq!(vm.run(LIMIT).unwrap(), RunExit::WaitingForInput);
    // The main thread, four workers and the ticker.
    assert_eq!(vm.os.threads.len(), 6);
    let state = vm.save().unwrap();
    assert_eq!(
        state.threads.len(),
        5,
        "every thread but the one on the vCPU"
    );
    let table = state.os.threads.as_ref().unwrap();
    assert_eq!(table.len(), 6);
    assert!(table.waits_on_stdin());
}

#[test]
fn a_deadlock_is_a_clear_error() {
    let started = Instant::now();
    let vm = reap_run(
        &guest("threads"),
        &["--timeout", "60", "--", "deadlock"],
        b"",
    );
    assert_eq!(vm.status.code(), Some(125), "{}", stderr(&vm));
    assert!(stderr(&vm).contains("deadlock"), "{}", stderr(&vm));
    assert_eq!(stdout(&vm), "waiting\n");
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn a_crashing_thread_ends_the_program_with_its_signal() {
    let vm = reap_run(&guest("threads"), &["--timeout", "60", "--", "crash"], b"");
    assert_eq!(vm.status.code(), Some(128 + 11), "{}", stderr(&vm));
    assert!(stderr(&vm).contains("SIGSEGV"), "{}", stderr(&vm));
    let vm = reap_run(&guest("threads"), &["--timeout", "60", "--", "abort"], b"");
    assert_eq!(vm.status.code(), Some(128 + 6), "{}", stderr(&vm));
    assert!(stderr(&vm).contains("SIGABRT"), "{}", stderr(&vm));
}

#[test]
fn a_thread_that_spins_forever_hits_the_time_limit() {
    let started = Instant::now();
    let vm = reap_run(&guest("threads"), &["--timeout", "1", "--", "spin"], b"");
    assert_eq!(vm.status.code(), Some(124), "{}", stderr(&vm));
    assert!(stderr(&vm).contains("time limit"), "{}", stderr(&vm));
    assert_eq!(stdout(&vm), "spinning\n");
    assert!(started.elapsed() < Duration::from_secs(30));
}

#[test]
fn ten_thousand_thread_create_join_cycles_leave_one_thread() {
    let image = std::fs::read(guest("threads")).unwrap();
    let native = run_native(&guest("threads"), &["cycles", "10000"], b"");
    let out = Capture::default();
    let config = MicroVmConfig {
        args: vec!["threads".into(), "cycles".into(), "10000".into()],
        ..Default::default()
    };
    let mut vm = MicroVm::boot(
        &image,
        &config,
        Box::new(out.clone()),
        Box::new(std::io::sink()),
    )
    .unwrap();
    assert_eq!(vm.run(LIMIT).unwrap(), RunExit::WaitingForInput);
    assert_eq!(
        vm.os.threads.len(),
        1,
        "every thread was joined and is gone"
    );
    assert!(vm.save().unwrap().threads.is_empty(), "no registers kept");
    vm.os.close_stdin();
    assert_eq!(vm.run(LIMIT).unwrap(), RunExit::Exited(0));
    assert_eq!(out.text(), stdout(&native));
}

/// Prints thread create+join, futex wake-to-run and yield switch costs, natively and
/// in the microVM (figures for docs/threads.md; not a timed test).
#[test]
fn thread_costs_natively_and_in_the_microvm() {
    let native = run_native(&guest("threads"), &["bench"], b"");
    assert!(native.status.success());
    let vm = reap_run(&guest("threads"), &["--timeout", "120", "--", "bench"], b"");
    assert!(vm.status.success(), "{}", stderr(&vm));
    assert!(stdout(&vm).starts_with("create_join_us "));
    println!("native:  {}", stdout(&native).trim_end());
    println!("microVM: {}", stdout(&vm).trim_end());
}

/// The same Python program in Debian's `python3` (from the root file system
/// `scripts/rootfs` assembles): a `ThreadPoolExecutor` and threads sharing a lock,
/// answering each request line.
const PYTHON_THREADS: &str = r#"
import sys, threading, concurrent.futures as cf
pool = cf.ThreadPoolExecutor(4)
lock = threading.Lock()
for line in sys.stdin:
    n = int(line)
    total = sum(pool.map(lambda x: x * x, range(n)))
    count = [0]
    def bump():
        for _ in range(1000):
            with lock:
                count[0] += 1
    ts = [threading.Thread(target=bump) for _ in range(8)]
    [t.start() for t in ts]
    [t.join() for t in ts]
    print(total, count[0], flush=True)
"#;

#[test]
fn debian_python_threads_answer_like_natively() {
    let root = reap_test_support::debian_rootfs();
    let input = b"10\n1000\n";
    let args = ["/usr/bin/python3", "-c", PYTHON_THREADS];
    let native = common::run_with_input(
        std::process::Command::new("chroot").arg(&root).args(args),
        input,
    );
    assert!(native.status.success(), "natively: {}", stderr(&native));
    let mut all = vec![
        "run",
        "--timeout",
        "60",
        "--rootfs",
        root.to_str().unwrap(),
        "--",
    ];
    all.extend(args);
    let vm = reap(&all, input);
    assert!(vm.status.success(), "{}", stderr(&vm));
    assert_eq!(stdout(&vm), stdout(&native));
    assert_eq!(stdout(&vm).lines().count(), 2);
}
