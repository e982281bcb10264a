//! The guest's vDSO: glibc's clock calls (static `clocks` test guest, Debian's
//! `python3`) make no system call and agree with the host's clocks, and a restore from
//! a snapshot whose clock state is hours off reads the host's time with a monotonic
//! clock that does not go back. Needs /dev/kvm, userfaultfd and the workspace's
//! release binaries (and `scripts/rootfs` for the Python test).

use reap_test_support as common;

use std::fs::OpenOptions;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use common::{guest, temp_dir};
use reap_pager::memfile::MemoryFile;
use reap_pager::sums::PageSums;
use reap_vmm::arch::layout::{VDSO_ADDR, VVAR_ADDR};
use reap_vmm::guest_os::fs::RootFs;
use reap_vmm::instance::{Instance, Invocation, MemoryMode};
use reap_vmm::microvm::MicroVmConfig;
use reap_vmm::snapshot::{MemorySums, SnapshotDir, SnapshotState, state};
use reap_vmm::vdso::{MAGIC, Vvar};
use serde_json::Value;

const LIMIT: Option<Duration> = Some(Duration::from_secs(60));
/// How far a guest's reading may be outside the host readings around the invocation.
const SLACK_NS: i128 = 20_000_000;
const HOUR_NS: u64 = 3_600_000_000_000;

fn host_ns(clock: libc::clockid_t) -> i128 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: `ts` is a valid, writable timespec.
    assert_eq!(unsafe { libc::clock_gettime(clock, &mut ts) }, 0);
    i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
}

fn realtime_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_nanos() as i128
}

fn boot_clocks() -> Instance {
    let image = std::fs::read(guest("clocks")).unwrap();
    let config = MicroVmConfig {
        args: vec!["clocks".into()],
        ..Default::default()
    };
    Instance::boot(&image, &config, Box::new(std::io::sink()), LIMIT).unwrap()
}

/// One request to the `clocks` guest, with the host's clocks read around it.
struct Reading {
    answer: Value,
    invocation: Invocation,
    realtime: (i128, i128),
    monotonic: (i128, i128),
}

fn read_clocks(instance: &mut Instance, rounds: u64) -> Reading {
    let (r0, m0) = (realtime_ns(), host_ns(libc::CLOCK_MONOTONIC));
    let (line, invocation) = instance
        .invoke(rounds.to_string().as_bytes(), LIMIT)
        .unwrap();
    let (m1, r1) = (host_ns(libc::CLOCK_MONOTONIC), realtime_ns());
    let answer: Value = serde_json::from_slice(&line).unwrap();
    Reading {
        answer,
        invocation,
        realtime: (r0, r1),
        monotonic: (m0, m1),
    }
}

fn pair(v: &Value, key: &str) -> (i128, i128) {
    let a = v[key].as_array().unwrap_or_else(|| panic!("{key} in {v}"));
    (
        i128::from(a[0].as_i64().unwrap()),
        i128::from(a[1].as_i64().unwrap()),
    )
}

fn within(what: &str, value: i128, (lo, hi): (i128, i128)) {
    assert!(
        lo - SLACK_NS <= value && value <= hi + SLACK_NS,
        "{what} = {value} is not within {lo}..{hi} (± {SLACK_NS} ns): off by {} ms",
        if value < lo { value - lo } else { value - hi } as f64 / 1e6
    );
}

/// The realtime readings of `r` are the host's time; the monotonic ones never went
/// back; no clock call but the two the vDSO leaves to the kernel was a system call.
fn check_reading(r: &Reading) {
    let v = &r.answer;
    assert_eq!(v["vdso"].as_u64(), Some(VDSO_ADDR), "AT_SYSINFO_EHDR: {v}");
    assert_eq!(v["backwards"].as_u64(), Some(0), "{v}");
    let (rt0, rt1) = pair(v, "realtime_ns");
    within("CLOCK_REALTIME", rt0, r.realtime);
    within("CLOCK_REALTIME (last)", rt1, r.realtime);
    assert!(rt1 >= rt0, "{v}");
    within(
        "CLOCK_REALTIME_COARSE",
        i128::from(v["realtime_coarse_ns"].as_i64().unwrap()),
        r.realtime,
    );
    let (g0, g1) = pair(v, "gettimeofday_us");
    within("gettimeofday", g0 * 1000, r.realtime);
    within("gettimeofday (last)", g1 * 1000, r.realtime);
    let (t0, _) = pair(v, "time_s");
    assert!(
        (r.realtime.0 / 1_000_000_000 - 1..=r.realtime.1 / 1_000_000_000).contains(&t0),
        "time() = {t0}: {v}"
    );
    let (m0, m1) = pair(v, "monotonic_ns");
    assert!(m1 >= m0, "{v}");
    assert_eq!(v["getres"], serde_json::json!([0, 0, 1]), "{v}");
    assert_eq!(v["cpu"].as_i64(), Some(0), "{v}");
    // read of the request, write of the answer, CLOCK_BOOTTIME and
    // CLOCK_PROCESS_CPUTIME_ID, and the read that waits for the next request.
    let calls = v["calls"].as_u64().unwrap();
    assert!(calls >= 600, "{v}");
    assert!(
        r.invocation.syscalls <= 6,
        "{} system calls for {calls} clock calls: {v}",
        r.invocation.syscalls
    );
}

#[test]
fn clock_calls_make_no_system_call_and_read_the_hosts_clocks() {
    let mut instance = boot_clocks();
    for _ in 0..3 {
        let r = read_clocks(&mut instance, 1000);
        check_reading(&r);
        // A fresh boot's monotonic clock is the host's.
        let (m0, m1) = pair(&r.answer, "monotonic_ns");
        within("CLOCK_MONOTONIC", m0, r.monotonic);
        within("CLOCK_MONOTONIC (last)", m1, r.monotonic);
        within(
            "CLOCK_BOOTTIME (a system call)",
            i128::from(r.answer["boottime_ns"].as_i64().unwrap()),
            (
                host_ns(libc::CLOCK_BOOTTIME) - 10_000_000_000,
                host_ns(libc::CLOCK_BOOTTIME),
            ),
        );
    }
}

/// Edits the data page in the snapshot's memory file as `edit` says, then writes the
/// checksums and the state file again so that the snapshot is whole: what a snapshot
/// taken at another time, on another host, would hold.
fn edit_vvar(dir: &SnapshotDir, edit: impl FnOnce(&mut Vvar)) -> Vvar {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .open(dir.memory())
        .unwrap();
    let mut bytes = [0u8; size_of::<Vvar>()];
    file.read_exact_at(&mut bytes, VVAR_ADDR).unwrap();
    // SAFETY: `Vvar` is a repr(C) struct of integers (any bytes are a value) and
    // `bytes` has its size; read_unaligned copes with the array's alignment.
    let mut vvar: Vvar = unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast()) };
    assert_eq!(vvar.magic, MAGIC, "the snapshot has a data page");
    edit(&mut vvar);
    // SAFETY: as above; the bytes of a plain integer struct.
    let edited: [u8; size_of::<Vvar>()] = unsafe { std::mem::transmute(vvar) };
    file.write_all_at(&edited, VVAR_ADDR).unwrap();
    file.sync_all().unwrap();
    drop(file);

    let memory = MemoryFile::open(dir.memory()).unwrap();
    let sums = PageSums::compute(&memory).unwrap();
    let (file_len, crc) = sums.write(&dir.sums()).unwrap();
    let mut snapshot: SnapshotState = state::decode(&std::fs::read(dir.state()).unwrap()).unwrap();
    snapshot.memory_sums = Some(MemorySums {
        file_len,
        crc,
        pages: sums.len() as u64,
    });
    std::fs::write(dir.state(), state::encode(&snapshot).unwrap()).unwrap();
    vvar
}

#[test]
fn a_restore_reads_the_hosts_time_and_monotonic_never_goes_back() {
    reap_vmm::snapshot::set_state_cache(false);
    let tmp = temp_dir("vdso-restore");
    let dir = SnapshotDir::new(tmp.join("snap"));
    let mut booted = boot_clocks();
    let before = read_clocks(&mut booted, 100);
    check_reading(&before);
    booted.snapshot(&dir).unwrap();
    drop(booted);

    // A plain restore continues the clocks: monotonic from where the snapshot left it.
    let mut instance =
        Instance::restore(&dir, MemoryMode::File, Box::new(std::io::sink())).unwrap();
    let r = read_clocks(&mut instance, 100);
    check_reading(&r);
    assert!(pair(&r.answer, "monotonic_ns").0 >= pair(&before.answer, "monotonic_ns").1);
    drop(instance);

    // The snapshot as if taken five hours ago, on a host whose monotonic clock was ten
    // hours ahead of this one's.
    let shifted = edit_vvar(&dir, |v| {
        v.realtime_ns -= 5 * HOUR_NS;
        v.monotonic_ns += 10 * HOUR_NS;
    });
    for mode in [
        MemoryMode::File,
        MemoryMode::Lazy,
        MemoryMode::Reap,
        MemoryMode::Reap,
    ] {
        let mut instance = Instance::restore(&dir, mode, Box::new(std::io::sink())).unwrap();
        let first = read_clocks(&mut instance, 100);
        check_reading(&first);
        let (m0, m1) = pair(&first.answer, "monotonic_ns");
        assert!(
            m0 >= i128::from(shifted.monotonic_ns),
            "{mode}: CLOCK_MONOTONIC {m0} went back from the snapshot's {}",
            shifted.monotonic_ns
        );
        let second = read_clocks(&mut instance, 100);
        check_reading(&second);
        assert!(pair(&second.answer, "monotonic_ns").0 >= m1, "{mode}");
        // The coarse clock too.
        assert!(
            second.answer["monotonic_coarse_ns"].as_i64().unwrap() as i128 >= m1,
            "{mode}"
        );
    }
    let _ = std::fs::remove_dir_all(&tmp);
}

fn debian() -> PathBuf {
    reap_test_support::debian_rootfs()
}

#[test]
fn python_time_agrees_with_the_host_without_system_calls() {
    const PROGRAM: &str = "import sys, time\n\
        for line in sys.stdin:\n\
        \x20   t = [time.time_ns() for _ in range(1000)]\n\
        \x20   m = [time.monotonic_ns() for _ in range(1000)]\n\
        \x20   ok = all(a <= b for a, b in zip(m, m[1:]))\n\
        \x20   print(t[0], t[-1], int(ok), flush=True)\n";
    let args = ["/usr/bin/python3", "-c", PROGRAM];
    let config = MicroVmConfig {
        args: args.iter().map(|a| (*a).to_owned()).collect(),
        rootfs: Some(RootFs {
            dir: debian(),
            program: args[0].to_owned(),
            workdir: "/".to_owned(),
        }),
        ..Default::default()
    };
    let image = config.read_program().unwrap();
    let mut instance = Instance::boot(&image, &config, Box::new(std::io::sink()), LIMIT).unwrap();
    for _ in 0..3 {
        let r0 = realtime_ns();
        let (line, inv) = instance.invoke(b"{}", LIMIT).unwrap();
        let r1 = realtime_ns();
        let line = String::from_utf8(line).unwrap();
        let fields: Vec<i128> = line
            .split_whitespace()
            .map(|f| f.parse().unwrap())
            .collect();
        assert_eq!(fields.len(), 3, "{line}");
        within("time.time_ns()", fields[0], (r0, r1));
        within("time.time_ns() (last)", fields[1], (r0, r1));
        assert_eq!(fields[2], 1, "time.monotonic_ns() went back: {line}");
        assert!(
            inv.syscalls < 20,
            "{} system calls for 2000 clock readings",
            inv.syscalls
        );
    }
}

#[test]
fn proc_self_maps_lists_the_vdso_and_its_data_page() {
    let root = debian();
    let out = common::reap(
        &[
            "run",
            "--rootfs",
            root.to_str().unwrap(),
            "--",
            "/bin/busybox",
            "cat",
            "/proc/self/maps",
        ],
        b"",
    );
    assert!(out.status.success(), "{}", common::stderr(&out));
    let maps = common::stdout(&out);
    let mut lines = maps.lines();
    assert_eq!(
        lines.next(),
        Some("0000d000-0000e000 r--p 00000000 00:00 0 [vvar]"),
        "{maps}"
    );
    assert_eq!(
        lines.next(),
        Some("0000e000-00010000 r-xp 00000000 00:00 0 [vdso]"),
        "{maps}"
    );
}
