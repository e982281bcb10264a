//! The microVM's fixed costs, measured through the library API on this machine:
//!
//! - boot: `MicroVm::boot` of `helloworld` (guest memory, page tables and descriptor
//!   tables, ELF load and initial stack, KVM VM, vCPU and its setup), and the same steps
//!   timed one by one with the public functions `boot` is made of;
//! - first entry: from the first `run` call until the guest's first system-call exit is
//!   handled. The booted helloworld's entry point is overwritten with `exit_group(0)`, so
//!   the guest's first instruction leads to its first system call and `run` returns right
//!   after handling it;
//! - helloworld's start-up: the first `run` of the unmodified program until it blocks
//!   reading stdin (its ready point), and dropping the microVM;
//! - helloworld with stdin at EOF, from start to exit: in a microVM (read the file, boot,
//!   run, drop, as `reap run` does) and as a native process (spawn and wait);
//! - the system-call round trip: `syscall_loop` (getppid in a loop) timed inside the guest
//!   in a microVM and natively, and from the host side (the whole `run` divided by the
//!   calls, and the difference to a run with no calls);
//! - the first touch of a page: `touch_pages` (one write per 4 KiB page of a fresh
//!   anonymous mapping) in a microVM and natively.
//!
//! Every repetition runs each measurement once (the boot rows three times), microVM and
//! native interleaved, alternating which goes first. Guest stdout/stderr go to
//! `std::io::sink()` except where the guest's answer is parsed.
//!
//! Run with `cargo bench -p reap --bench microvm` after `cargo build --release --workspace`
//! (which builds the guest programs). Needs /dev/kvm. Environment: `MICROVM_BENCH_REPS`
//! (repetitions, default 15), `MICROVM_BENCH_JSON` (where the results go, default
//! `target/bench/microvm.json`).

mod common;

use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use reap_vmm::arch;
use reap_vmm::loader::{self, StackInputs};
use reap_vmm::microvm::{MicroVm, MicroVmConfig, RunExit};
use reap_vmm::vstate::memory::GuestMemory;
use reap_vmm::vstate::vcpu::Vcpu;
use reap_vmm::vstate::vm::Vm;
use serde_json::{Value, json};

use common::{Stats, fmt, read_trimmed, report_head, results_path, write_json};

/// Guest memory of every microVM here (the default).
const MEM_MIB: u64 = 256;
/// System calls per `syscall_loop` run.
const SYSCALL_CALLS: u64 = 20_000;
/// MiB touched per `touch_pages` run.
const TOUCH_MIB: u64 = 64;
/// Boot-sized measurements per repetition.
const BOOT_ROUNDS: usize = 3;
const WARMUP_REPS: usize = 2;

/// `mov eax, 231 (exit_group); xor edi, edi; syscall`.
const EXIT_GROUP_0: [u8; 9] = [0xb8, 0xe7, 0x00, 0x00, 0x00, 0x31, 0xff, 0x0f, 0x05];

/// One measured quantity: its samples in `unit`.
struct Metric {
    label: &'static str,
    unit: &'static str,
    samples: Vec<f64>,
}

#[derive(Default)]
struct Results {
    /// In the order of the table.
    metrics: Vec<(&'static str, Metric)>,
}

impl Results {
    fn define(&mut self, key: &'static str, label: &'static str, unit: &'static str) {
        self.metrics.push((
            key,
            Metric {
                label,
                unit,
                samples: Vec::new(),
            },
        ));
    }

    fn push(&mut self, key: &str, value: f64) {
        let metric = self
            .metrics
            .iter_mut()
            .find(|(k, _)| *k == key)
            .map(|(_, m)| m);
        metric
            .unwrap_or_else(|| panic!("undefined metric {key}"))
            .samples
            .push(value);
    }

    fn median(&self, key: &str) -> f64 {
        self.metrics
            .iter()
            .find(|(k, _)| *k == key)
            .map_or(f64::NAN, |(_, m)| Stats::of(&m.samples).median)
    }
}

/// A sink that keeps what the guest writes.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.0
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Capture {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap_or_else(|e| e.into_inner())).into_owned()
    }
}

fn config(name: &str, args: &[&str]) -> MicroVmConfig {
    MicroVmConfig {
        mem_mib: MEM_MIB,
        args: std::iter::once(name)
            .chain(args.iter().copied())
            .map(String::from)
            .collect(),
        env: Vec::new(),
        ..Default::default()
    }
}

fn boot(image: &[u8], config: &MicroVmConfig) -> MicroVm {
    MicroVm::boot(image, config, Box::new(io::sink()), Box::new(io::sink())).expect("MicroVm::boot")
}

/// Runs the guest to its exit, closing stdin when it waits for input.
fn run_to_exit(vm: &mut MicroVm) -> i32 {
    loop {
        match vm.run(None).expect("guest failed") {
            RunExit::WaitingForInput => vm.os.close_stdin(),
            RunExit::Exited(code) => return code,
        }
    }
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

/// `MicroVm::boot`'s steps, timed one by one with the same functions (ms each):
/// memory, system area, program and stack, VM, vCPU, vCPU setup.
fn boot_steps(image: &[u8]) -> [f64; 6] {
    let t = Instant::now();
    let memory = GuestMemory::anonymous(MEM_MIB << 20).expect("guest memory");
    let memory_t = t.elapsed();

    let t = Instant::now();
    arch::write_page_tables(memory.size(), |addr, value| memory.write_obj(addr, value))
        .expect("page tables");
    arch::write_system_tables(|addr, bytes| memory.write(addr, bytes)).expect("system tables");
    let tables_t = t.elapsed();

    let t = Instant::now();
    let program = loader::load_elf(image, &memory).expect("ELF load");
    let args = vec!["helloworld".to_string()];
    let inputs = StackInputs {
        args: &args,
        env: &[],
        hwcap: arch::hwcap(),
        random: [7; 16],
        interp_base: 0,
        execfn: None,
        vdso: 0,
    };
    let rsp =
        loader::build_stack(&memory, memory.size(), &program, &inputs).expect("initial stack");
    let load_t = t.elapsed();

    let t = Instant::now();
    let vm = Vm::new(&memory).expect("KVM VM");
    let vm_t = t.elapsed();

    let t = Instant::now();
    let vcpu = Vcpu::new(vm.kvm, &vm.fd).expect("vCPU");
    let vcpu_t = t.elapsed();

    let t = Instant::now();
    arch::configure_vcpu(vm.kvm, &vcpu.fd, program.entry, rsp).expect("vCPU setup");
    let setup_t = t.elapsed();

    // The vCPU and VM go before the memory they use.
    drop(vcpu);
    drop(vm);
    drop(memory);
    [memory_t, tables_t, load_t, vm_t, vcpu_t, setup_t].map(ms)
}

/// The program's entry point once loaded (as `boot` computes it).
fn entry_point(image: &[u8]) -> u64 {
    let memory = GuestMemory::anonymous(MEM_MIB << 20).expect("guest memory");
    loader::load_elf(image, &memory).expect("ELF load").entry
}

/// Whether the host's KVM lets register state travel through the `kvm_run` page.
fn has_sync_regs() -> bool {
    let memory = GuestMemory::anonymous(16 << 20).expect("guest memory");
    let vm = Vm::new(&memory).expect("KVM VM");
    let vcpu = Vcpu::new(vm.kvm, &vm.fd).expect("vCPU");
    vcpu.has_sync_regs()
}

/// Runs `program ARGS` natively with stdin at EOF; its stdout.
fn native(program: &Path, args: &[&str]) -> String {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .expect("spawn");
    assert!(
        out.status.success(),
        "{} failed natively",
        program.display()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs `name ARGS` in a microVM; the time of the `run` calls (boot excluded) and stdout.
fn in_vm(image: &[u8], name: &str, args: &[&str]) -> (Duration, String) {
    let out = Capture::default();
    let mut vm = MicroVm::boot(
        image,
        &config(name, args),
        Box::new(out.clone()),
        Box::new(io::sink()),
    )
    .expect("MicroVm::boot");
    let t = Instant::now();
    let code = run_to_exit(&mut vm);
    let elapsed = t.elapsed();
    assert_eq!(code, 0, "{name} failed in the microVM");
    drop(vm);
    (elapsed, out.text())
}

/// A number field of the one-line JSON a guest printed.
fn field(output: &str, key: &str) -> f64 {
    let value: Value = serde_json::from_str(output.trim())
        .unwrap_or_else(|e| panic!("bad guest output {output:?}: {e}"));
    value[key]
        .as_f64()
        .unwrap_or_else(|| panic!("no {key} in {output:?}"))
}

struct Guests {
    hello_path: PathBuf,
    hello: Vec<u8>,
    hello_entry: u64,
    syscall_path: PathBuf,
    syscall: Vec<u8>,
    touch_path: PathBuf,
    touch: Vec<u8>,
}

/// One repetition of every measurement.
fn repetition(g: &Guests, r: &mut Results, rep: usize) {
    let hello_cfg = config("helloworld", &[]);
    for _ in 0..BOOT_ROUNDS {
        let t = Instant::now();
        let vm = boot(&g.hello, &hello_cfg);
        r.push("boot", ms(t.elapsed()));
        drop(vm);

        let steps = boot_steps(&g.hello);
        for (key, value) in [
            "step_memory",
            "step_tables",
            "step_load",
            "step_vm",
            "step_vcpu",
            "step_setup",
        ]
        .iter()
        .zip(steps)
        {
            r.push(key, value);
        }
        r.push("step_sum", steps.iter().sum());

        let mut vm = boot(&g.hello, &hello_cfg);
        vm.memory
            .write(g.hello_entry, &EXIT_GROUP_0)
            .expect("patch the entry point");
        let t = Instant::now();
        let exit = vm.run(None).expect("first run");
        r.push("first_exit", us(t.elapsed()));
        assert_eq!(exit, RunExit::Exited(0));
        assert_eq!(vm.os.counters().syscalls, 1, "exactly one system call");
        drop(vm);

        let t = Instant::now();
        let mut vm = boot(&g.hello, &hello_cfg);
        let booted = t.elapsed();
        let exit = vm.run(None).expect("first run");
        let ready = t.elapsed();
        assert_eq!(exit, RunExit::WaitingForInput);
        r.push("init_run", ms(ready - booted));
        r.push("to_ready", ms(ready));
        r.push("init_syscalls", vm.os.counters().syscalls as f64);
        let t = Instant::now();
        drop(vm);
        r.push("drop", ms(t.elapsed()));
    }

    let vm_first = rep.is_multiple_of(2);
    for turn in 0..2 {
        if (turn == 0) == vm_first {
            let t = Instant::now();
            let image = std::fs::read(&g.hello_path).expect("read helloworld");
            let mut vm = boot(&image, &hello_cfg);
            assert_eq!(run_to_exit(&mut vm), 0);
            drop(vm);
            r.push("eof_vm", ms(t.elapsed()));
        } else {
            let t = Instant::now();
            let status = Command::new(&g.hello_path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .expect("spawn helloworld");
            r.push("eof_native", ms(t.elapsed()));
            assert!(status.success());
        }
    }

    let calls = SYSCALL_CALLS.to_string();
    for turn in 0..2 {
        if (turn == 0) == vm_first {
            let (full, out) = in_vm(&g.syscall, "syscall_loop", &[&calls]);
            let (empty, _) = in_vm(&g.syscall, "syscall_loop", &["0"]);
            assert_eq!(field(&out, "calls"), SYSCALL_CALLS as f64);
            r.push("sys_vm_guest", field(&out, "ns_per_call") / 1e3);
            r.push("sys_vm_host_total", us(full) / SYSCALL_CALLS as f64);
            r.push(
                "sys_vm_host_marginal",
                us(full.saturating_sub(empty)) / SYSCALL_CALLS as f64,
            );
        } else {
            let out = native(&g.syscall_path, &[&calls]);
            r.push("sys_native", field(&out, "ns_per_call") / 1e3);
        }
    }

    let mib = TOUCH_MIB.to_string();
    for turn in 0..2 {
        if (turn == 0) == vm_first {
            let (_, out) = in_vm(&g.touch, "touch_pages", &[&mib]);
            r.push("touch_vm", field(&out, "ns_per_page") / 1e3);
        } else {
            let out = native(&g.touch_path, &[&mib]);
            r.push("touch_native", field(&out, "ns_per_page") / 1e3);
        }
    }
}

fn define_metrics(r: &mut Results) {
    r.define("boot", "MicroVm::boot(helloworld)", "ms");
    r.define("step_memory", "  guest memory (anonymous mmap)", "ms");
    r.define("step_tables", "  page tables, GDT/TSS/IDT, stubs", "ms");
    r.define("step_load", "  ELF load + initial stack", "ms");
    r.define(
        "step_vm",
        "  KVM VM (open /dev/kvm, CREATE_VM, memory slot)",
        "ms",
    );
    r.define("step_vcpu", "  vCPU (CREATE_VCPU, mmap kvm_run)", "ms");
    r.define(
        "step_setup",
        "  vCPU setup (CPUID, sregs, XCR0, FPU, MSRs, regs)",
        "ms",
    );
    r.define("step_sum", "  sum of the steps", "ms");
    r.define(
        "first_exit",
        "first run() to first syscall exit handled",
        "us",
    );
    r.define(
        "init_run",
        "helloworld first run() to ready (blocked on stdin)",
        "ms",
    );
    r.define(
        "init_syscalls",
        "  system calls made before the ready point",
        "calls",
    );
    r.define("to_ready", "boot + first run() to ready", "ms");
    r.define("drop", "drop(MicroVm) at the ready point", "ms");
    r.define(
        "eof_vm",
        "helloworld </dev/null, start to exit: microVM",
        "ms",
    );
    r.define(
        "eof_native",
        "helloworld </dev/null, start to exit: native",
        "ms",
    );
    r.define(
        "sys_vm_guest",
        "syscall round trip (getppid): microVM, in guest",
        "us",
    );
    r.define(
        "sys_vm_host_total",
        "  microVM, host side: run() time / calls",
        "us",
    );
    r.define(
        "sys_vm_host_marginal",
        "  microVM, host side: (run(N) - run(0)) / N",
        "us",
    );
    r.define("sys_native", "syscall round trip (getppid): native", "us");
    r.define("touch_vm", "first touch of a 4 KiB page: microVM", "us");
    r.define("touch_native", "first touch of a 4 KiB page: native", "us");
}

fn main() {
    let reps: usize = std::env::var("MICROVM_BENCH_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(15)
        .max(1);
    let dir = common::bin_dir("microvm", &["helloworld", "syscall_loop", "touch_pages"]);
    let read =
        |name: &str| std::fs::read(dir.join(name)).unwrap_or_else(|e| panic!("read {name}: {e}"));
    let hello = read("helloworld");
    let guests = Guests {
        hello_path: dir.join("helloworld"),
        hello_entry: entry_point(&hello),
        hello,
        syscall_path: dir.join("syscall_loop"),
        syscall: read("syscall_loop"),
        touch_path: dir.join("touch_pages"),
        touch: read("touch_pages"),
    };
    let sync_regs = has_sync_regs();
    let load_before = read_trimmed("/proc/loadavg");
    let started = SystemTime::now();
    let clock = Instant::now();

    let mut warmup = Results::default();
    define_metrics(&mut warmup);
    for rep in 0..WARMUP_REPS {
        repetition(&guests, &mut warmup, rep);
    }
    let mut results = Results::default();
    define_metrics(&mut results);
    for rep in 0..reps {
        repetition(&guests, &mut results, rep);
    }
    let wall = clock.elapsed();
    let load_after = read_trimmed("/proc/loadavg");

    println!(
        "reap microVM benchmark: {reps} repetitions ({} samples for the boot rows) after {WARMUP_REPS} warm-up; \
         guest memory {MEM_MIB} MiB; syscall_loop {SYSCALL_CALLS} calls; touch_pages {TOUCH_MIB} MiB",
        reps * BOOT_ROUNDS
    );
    println!(
        "{:<52} {:>10} {:>10} {:>10} {:>10}  unit",
        "", "median", "p10", "p90", "max"
    );
    let mut entries = serde_json::Map::new();
    for (key, m) in &results.metrics {
        let s = Stats::of(&m.samples);
        println!(
            "{:<52} {:>10} {:>10} {:>10} {:>10}  {}",
            m.label,
            fmt(s.median),
            fmt(s.p10),
            fmt(s.p90),
            fmt(s.max),
            m.unit
        );
        entries.insert(
            (*key).into(),
            json!({
                "label": m.label.trim(), "unit": m.unit, "median": s.median, "min": s.min, "max": s.max,
                "p10": s.p10, "p90": s.p90, "samples": m.samples,
            }),
        );
    }
    let ratio = |a: &str, b: &str| results.median(a) / results.median(b);
    let ratios = json!({
        "syscall_vm_over_native": ratio("sys_vm_guest", "sys_native"),
        "touch_vm_over_native": ratio("touch_vm", "touch_native"),
        "eof_vm_over_native": ratio("eof_vm", "eof_native"),
    });
    println!(
        "ratios of medians, microVM / native: syscall {:.0}x, first touch {:.1}x, helloworld start to exit {:.2}x",
        ratios["syscall_vm_over_native"]
            .as_f64()
            .unwrap_or(f64::NAN),
        ratios["touch_vm_over_native"].as_f64().unwrap_or(f64::NAN),
        ratios["eof_vm_over_native"].as_f64().unwrap_or(f64::NAN),
    );
    println!(
        "KVM_CAP_SYNC_REGS in use: {sync_regs}; load average before/after: {load_before} / {load_after}"
    );

    let mut report = report_head(
        "microvm",
        started,
        wall.as_secs_f64(),
        &load_before,
        &load_after,
    );
    if let Value::Object(own) = json!({
        "kvm_sync_regs": sync_regs,
        "config": {
            "reps": reps, "warmup_reps": WARMUP_REPS, "boot_rounds_per_rep": BOOT_ROUNDS,
            "mem_mib": MEM_MIB, "syscall_calls": SYSCALL_CALLS, "touch_mib": TOUCH_MIB,
            "guests": dir.display().to_string(),
        },
        "metrics": entries,
        "ratios": ratios,
    }) {
        report.extend(own);
    }
    let report = Value::Object(report);
    let path = results_path("MICROVM_BENCH_JSON", &dir, "microvm.json");
    write_json(&path, &report);
    println!("results: {}", path.display());
}
