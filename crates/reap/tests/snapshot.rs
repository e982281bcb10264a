//! Snapshots and cold starts: every memory mode answers like a native run, REAP's
//! prefetch removes the lazy faults, and bad snapshot files are refused. Needs /dev/kvm,
//! userfaultfd and the workspace's release binaries.

use reap_test_support as common;

use std::time::Duration;

use common::{FUNCTIONS, guest, native_answers, reap, requests, stderr, stdout, temp_dir};
use reap_vmm::instance::{Instance, MemoryMode};
use reap_vmm::microvm::MicroVmConfig;
use reap_vmm::snapshot::SnapshotDir;

const LIMIT: Option<Duration> = Some(Duration::from_secs(120));

/// Boots `function` to its ready point and snapshots it into `dir`; returns the booted
/// (warm) instance.
fn deploy(function: &str, dir: &SnapshotDir) -> Instance {
    let image = std::fs::read(guest(function)).unwrap();
    let config = MicroVmConfig {
        args: vec![function.into()],
        ..Default::default()
    };
    let mut instance = Instance::boot(&image, &config, Box::new(std::io::sink()), LIMIT).unwrap();
    instance.snapshot(dir).unwrap();
    instance
}

fn answers(instance: &mut Instance, function: &str) -> Vec<String> {
    requests(function)
        .iter()
        .map(|r| {
            let (resp, _) = instance
                .invoke(r.as_bytes(), LIMIT)
                .unwrap_or_else(|e| panic!("{function} {r}: {e:#}"));
            String::from_utf8(resp).unwrap().trim_end().to_owned()
        })
        .collect()
}

fn restore(dir: &SnapshotDir, mode: MemoryMode) -> Instance {
    Instance::restore(dir, mode, Box::new(std::io::sink()))
        .unwrap_or_else(|e| panic!("restore {mode:?}: {e:#}"))
}

/// Warm, file, lazy, reap (recording) and reap (prefetching) all answer every sample
/// request exactly like the native program.
fn every_mode_answers_like_native(function: &str) {
    let native = native_answers(function);
    let tmp = temp_dir(&format!("modes-{function}"));
    let dir = SnapshotDir::new(tmp.join("snap"));
    let mut warm = deploy(function, &dir);
    assert_eq!(answers(&mut warm, function), native, "{function}: warm");
    for (mode, label) in [
        (MemoryMode::File, "file"),
        (MemoryMode::Lazy, "lazy"),
        (MemoryMode::Reap, "reap (recording)"),
        (MemoryMode::Reap, "reap (prefetch)"),
    ] {
        let mut instance = restore(&dir, mode);
        let cold = instance.cold_start().unwrap().clone();
        assert_eq!(
            cold.recording,
            label == "reap (recording)",
            "{function}: {label}"
        );
        assert!(!cold.ws_fell_back, "{function}: {label}");
        assert_eq!(
            answers(&mut instance, function),
            native,
            "{function}: {label}"
        );
    }
    assert!(
        dir.working_set().is_some(),
        "the recording cold start wrote the working set"
    );
    std::fs::remove_dir_all(&tmp).unwrap();
}

macro_rules! mode_tests {
    ($($name:ident),*) => {$(
        #[test]
        fn $name() {
            every_mode_answers_like_native(stringify!($name));
        }
    )*};
}

mod every_mode_answers_like_native {
    use super::every_mode_answers_like_native;
    mode_tests!(
        helloworld,
        chameleon,
        pyaes,
        image_rotate,
        json_serdes,
        lr_serving,
        cnn_serving,
        rnn_serving,
        lr_training,
        video_processing
    );
}

/// Protections set before the snapshot (the stack guard gap, the read-only text) hold
/// after a restore in every memory mode: a stack overflow or a write to the text fails
/// the invocation as SIGSEGV, and a restored instance still answers normal requests.
#[test]
fn guard_gap_and_read_only_text_hold_after_restore_in_every_mode() {
    let tmp = temp_dir("guard-after-restore");
    let dir = SnapshotDir::new(tmp.join("snap"));
    let mut warm = deploy("misbehave", &dir);
    let err = warm.invoke(b"{\"do\":\"overflow\"}", LIMIT).unwrap_err();
    assert!(
        format!("{err:#}").contains("stack overflow"),
        "warm: {err:#}"
    );
    for mode in [MemoryMode::File, MemoryMode::Lazy, MemoryMode::Reap] {
        for (request, expect) in [
            (
                &b"{\"do\":\"overflow\"}"[..],
                "SIGSEGV): stack overflow: write to 0x",
            ),
            (b"{\"do\":\"write_text\"}", "(a read-only page) at RIP 0x"),
            (b"{\"do\":\"write_ro\"}", "(a read-only page) at RIP 0x"),
        ] {
            let mut instance = restore(&dir, mode);
            let (echo, _) = instance
                .invoke(b"{\"x\":1}", LIMIT)
                .unwrap_or_else(|e| panic!("{mode:?}: {e:#}"));
            assert_eq!(echo, b"{\"echo\":{\"x\":1}}\n");
            let err = instance.invoke(request, LIMIT).unwrap_err();
            let err = format!("{err:#}");
            assert!(err.contains(expect), "{mode:?}: {err}");
        }
    }
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn the_suite_is_covered() {
    assert_eq!(FUNCTIONS.len(), 10);
}

#[test]
fn many_restores_of_one_snapshot_also_four_at_once() {
    let function = "json_serdes";
    let native = native_answers(function);
    let tmp = temp_dir("many");
    let dir = SnapshotDir::new(tmp.join("snap"));
    drop(deploy(function, &dir));
    for i in 0..12 {
        let mode = [MemoryMode::Reap, MemoryMode::File, MemoryMode::Lazy][i % 3];
        let mut instance = restore(&dir, mode);
        assert_eq!(
            answers(&mut instance, function),
            native,
            "restore {i} ({mode:?})"
        );
    }
    let threads: Vec<_> = [
        MemoryMode::Reap,
        MemoryMode::Reap,
        MemoryMode::File,
        MemoryMode::Lazy,
    ]
    .into_iter()
    .map(|mode| {
        let dir = dir.clone();
        std::thread::spawn(move || {
            let mut instance = restore(&dir, mode);
            answers(&mut instance, function)
        })
    })
    .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), native);
    }
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn prefetching_restore_serves_under_ten_percent_of_the_recording_faults() {
    for function in ["image_rotate", "json_serdes", "lr_serving"] {
        let tmp = temp_dir(&format!("faults-{function}"));
        let dir = SnapshotDir::new(tmp.join("snap"));
        drop(deploy(function, &dir));
        let first = requests(function)[0].clone();
        let mut recording = restore(&dir, MemoryMode::Reap);
        let (_, rec) = recording.invoke(first.as_bytes(), LIMIT).unwrap();
        assert!(rec.ws_pages_written.is_some());
        drop(recording);
        let mut prefetching = restore(&dir, MemoryMode::Reap);
        let cold = prefetching.cold_start().unwrap().clone();
        let (_, pre) = prefetching.invoke(first.as_bytes(), LIMIT).unwrap();
        assert!(
            rec.lazy_faults > 50,
            "{function}: recording served {} faults",
            rec.lazy_faults
        );
        assert!(
            cold.prefetched_pages >= rec.lazy_faults * 9 / 10,
            "{function}: {cold:?} vs {rec:?}"
        );
        assert!(
            pre.lazy_faults * 10 < rec.lazy_faults,
            "{function}: prefetching served {} lazy faults, recording {}",
            pre.lazy_faults,
            rec.lazy_faults
        );
        std::fs::remove_dir_all(&tmp).unwrap();
    }
}

#[test]
fn state_file_round_trips() {
    let tmp = temp_dir("roundtrip");
    let dir = SnapshotDir::new(tmp.join("snap"));
    drop(deploy("helloworld", &dir));
    let bytes = std::fs::read(dir.state()).unwrap();
    let state = dir.read_state().unwrap();
    assert_eq!(reap_vmm::snapshot::state::encode(&*state).unwrap(), bytes);
    assert_eq!(state.memory_len, 256 << 20);
    assert!(state.memory_data_bytes > 0 && state.memory_data_bytes < state.memory_len);
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn corrupt_or_mismatched_snapshot_files_are_refused() {
    let tmp = temp_dir("corrupt");
    let good = SnapshotDir::new(tmp.join("good"));
    drop(deploy("helloworld", &good));
    let other = SnapshotDir::new(tmp.join("other"));
    drop(deploy("pyaes", &other));
    let copy = |name: &str| {
        let dir = SnapshotDir::new(tmp.join(name));
        std::fs::create_dir_all(&dir.dir).unwrap();
        for f in ["state", "memory", "memory.sum"] {
            std::fs::copy(good.dir.join(f), dir.dir.join(f)).unwrap();
        }
        dir
    };
    let refused = |dir: &SnapshotDir, expect: &str| {
        for mode in [MemoryMode::File, MemoryMode::Lazy, MemoryMode::Reap] {
            let err = match Instance::restore(dir, mode, Box::new(std::io::sink())) {
                Ok(_) => panic!("{} restored in {mode:?}", dir.dir.display()),
                Err(e) => format!("{:#}", anyhow::Error::new(e)),
            };
            assert!(err.contains(expect), "{}: {err}", dir.dir.display());
        }
    };

    let d = copy("flipped");
    let mut state = std::fs::read(d.state()).unwrap();
    let n = state.len();
    state[n - 10] ^= 0x20;
    std::fs::write(d.state(), &state).unwrap();
    refused(&d, "checksum mismatch");

    let d = copy("truncated");
    std::fs::write(d.state(), &state[..n / 2]).unwrap();
    refused(&d, "truncated");

    let d = copy("version");
    let mut v = std::fs::read(good.state()).unwrap();
    v[8] = 99;
    std::fs::write(d.state(), &v).unwrap();
    refused(&d, "format version 99 is not supported");

    let d = copy("foreign");
    let elf = std::fs::read(guest("helloworld")).unwrap();
    std::fs::write(d.state(), &elf[..4096]).unwrap();
    refused(&d, "bad magic");
    // A header announcing a payload past the cap is refused before the payload is read.
    let mut header = b"REAPSNAP".to_vec();
    header.extend(reap_vmm::snapshot::state::VERSION.to_le_bytes());
    header.extend(0u32.to_le_bytes());
    header.extend((reap_vmm::snapshot::state::MAX_PAYLOAD + 1).to_le_bytes());
    header.extend([0u8; 8]);
    std::fs::write(d.state(), &header).unwrap();
    refused(&d, "exceeds the 67108864-byte cap");

    let d = copy("missing-state");
    std::fs::remove_file(d.state()).unwrap();
    refused(&d, "cannot open the snapshot state");

    let d = copy("missing-memory");
    std::fs::remove_file(d.memory()).unwrap();
    refused(&d, "cannot open the memory file");

    let d = copy("short-memory");
    std::fs::File::options()
        .write(true)
        .open(d.memory())
        .unwrap()
        .set_len(128 << 20)
        .unwrap();
    refused(
        &d,
        "memory file is 134217728 bytes, the state says 268435456",
    );

    let d = copy("other-memory");
    std::fs::copy(other.memory(), d.memory()).unwrap();
    refused(&d, "does not belong to this state");

    // A damaged working-set file costs speed, never correctness.
    let d = copy("bad-ws");
    let mut recording = restore(&d, MemoryMode::Reap);
    let (expected, _) = recording.invoke(b"{\"name\":\"x\"}", LIMIT).unwrap();
    drop(recording);
    let mut ws = std::fs::read(d.working_set().unwrap()).unwrap();
    let last = ws.len() - 1;
    ws[last] ^= 0xff;
    std::fs::write(d.working_set().unwrap(), &ws).unwrap();
    let mut instance = restore(&d, MemoryMode::Reap);
    assert!(instance.cold_start().unwrap().ws_fell_back);
    let (resp, inv) = instance.invoke(b"{\"name\":\"x\"}", LIMIT).unwrap();
    assert_eq!(resp, expected);
    assert!(inv.lazy_faults > 0, "served lazily");
    std::fs::remove_dir_all(&tmp).unwrap();
}

/// Flips one byte in the middle of the memory-file page at `offset`.
fn flip(dir: &SnapshotDir, offset: u64) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::options()
        .write(true)
        .read(true)
        .open(dir.memory())
        .unwrap();
    let mut b = [0u8];
    f.read_exact_at(&mut b, offset + 1000).unwrap();
    f.write_all_at(&[b[0] ^ 0x01], offset + 1000).unwrap();
}

/// A restore in `mode` and its first invocation, as an error message: it must fail.
fn never_answers(dir: &SnapshotDir, mode: MemoryMode, what: &str) -> String {
    let result = Instance::restore(dir, mode, Box::new(std::io::sink())).and_then(|mut i| {
        let fell_back = i.cold_start().unwrap().ws_fell_back;
        i.invoke(b"{\"name\":\"x\"}", LIMIT).map(|r| (r, fell_back))
    });
    match result {
        Ok(((resp, _), _)) => panic!("{what}: answered {:?}", String::from_utf8_lossy(&resp)),
        Err(e) => format!("{:#}", anyhow::Error::new(e)),
    }
}

#[test]
fn a_flipped_byte_in_the_memory_file_never_yields_an_answer() {
    use reap_pager::{MemoryFile, ws};
    let tmp = temp_dir("flipped-memory");
    let good = SnapshotDir::new(tmp.join("good"));
    drop(deploy("helloworld", &good));
    // The data pages an invocation touches: those of a recorded working set.
    let mut recording = restore(&good, MemoryMode::Reap);
    let (expected, _) = recording.invoke(b"{\"name\":\"x\"}", LIMIT).unwrap();
    drop(recording);
    let memory = MemoryFile::open(good.memory()).unwrap();
    let set = ws::WorkingSet::load(&good.working_set().unwrap(), &memory, 4096).unwrap();
    let touched: Vec<u64> = set.pages().filter(|p| !p.zero).map(|p| p.offset).collect();
    assert!(touched.len() > 3);
    let copy = |name: &str| {
        let dir = SnapshotDir::new(tmp.join(name));
        std::fs::create_dir_all(&dir.dir).unwrap();
        for f in ["state", "memory", "memory.sum"] {
            std::fs::copy(good.dir.join(f), dir.dir.join(f)).unwrap();
        }
        dir
    };
    // Pages touched first (at restore), in the middle and last of the invocation.
    for &offset in [
        touched[0],
        touched[touched.len() / 2],
        touched[touched.len() - 1],
    ]
    .iter()
    {
        let expect = format!("page at offset {offset:#x} does not match its checksum");
        let d = copy(&format!("flip-{offset:x}"));
        flip(&d, offset);
        let memory_path = d.memory().display().to_string();
        for (mode, what) in [
            (MemoryMode::File, "file"),
            (MemoryMode::Lazy, "lazy"),
            (MemoryMode::Reap, "reap (recording)"),
        ] {
            let err = never_answers(&d, mode, what);
            assert!(
                err.contains(&expect) && err.contains(&memory_path),
                "{what}: {err}"
            );
        }
        assert!(
            d.working_set().is_none(),
            "no working set from a failed recording"
        );

        // A working set built from the damaged file (as a build without checksums
        // would have): refused against the checksums, and the lazy fallback stops at
        // the damaged page.
        let damaged = MemoryFile::open(d.memory()).unwrap();
        ws::write_ws(&d.dir.join("ws"), 4096, &touched, &damaged).unwrap();
        let err = never_answers(&d, MemoryMode::Reap, "reap (prefetch of a damaged set)");
        assert!(err.contains(&expect), "prefetch: {err}");

        // A working set that fails its own CRC falls back to lazy, which stops there too.
        let mut bytes = std::fs::read(d.dir.join("ws")).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(d.dir.join("ws"), &bytes).unwrap();
        let err = never_answers(&d, MemoryMode::Reap, "reap (damaged set)");
        assert!(err.contains(&expect), "damaged set: {err}");
    }

    // A good working set with a damaged memory file: the set's pages match the
    // checksums and are installed; any damaged page outside it stops the guest.
    let d = copy("flip-after-recording");
    drop(
        restore(&d, MemoryMode::Reap)
            .invoke(b"{\"name\":\"x\"}", LIMIT)
            .unwrap(),
    );
    assert!(d.working_set().is_some());
    flip(&d, touched[touched.len() / 2]);
    let mut instance = restore(&d, MemoryMode::Reap);
    assert!(!instance.cold_start().unwrap().ws_fell_back);
    let (resp, _) = instance.invoke(b"{\"name\":\"x\"}", LIMIT).unwrap();
    assert_eq!(
        resp, expected,
        "the page came from the working set, which matches"
    );

    // A data page punched into a hole is refused when the memory file is opened.
    let d = copy("punched");
    let f = std::fs::File::options()
        .write(true)
        .open(d.memory())
        .unwrap();
    // SAFETY: fallocate on a descriptor we own; no memory is passed.
    let rc = unsafe {
        libc::fallocate(
            std::os::fd::AsRawFd::as_raw_fd(&f),
            libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
            i64::try_from(touched[1]).unwrap(),
            4096,
        )
    };
    assert_eq!(rc, 0);
    for mode in [MemoryMode::File, MemoryMode::Lazy, MemoryMode::Reap] {
        let err = never_answers(&d, mode, "punched");
        assert!(
            err.contains(&format!(
                "page at offset {:#x} is a hole but held data",
                touched[1]
            )),
            "{err}"
        );
    }

    // A missing or foreign checksum file is refused.
    let d = copy("no-sums");
    std::fs::remove_file(d.sums()).unwrap();
    let err = never_answers(&d, MemoryMode::Lazy, "no sums");
    assert!(
        err.contains("cannot read the memory checksum file"),
        "{err}"
    );
    let other = SnapshotDir::new(tmp.join("other"));
    drop(deploy("pyaes", &other));
    std::fs::copy(other.sums(), d.sums()).unwrap();
    let err = never_answers(&d, MemoryMode::Lazy, "foreign sums");
    assert!(err.contains("does not belong to this state"), "{err}");
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn file_mode_verifies_the_memory_file_only_when_it_changed() {
    let tmp = temp_dir("file-verify");
    let dir = SnapshotDir::new(tmp.join("snap"));
    drop(deploy("helloworld", &dir));
    let state = dir.read_state().unwrap();
    let memory = dir.open_memory(&state).unwrap();
    assert!(
        !dir.verify_for_mapping(&memory).unwrap(),
        "verified when written"
    );
    // Rewriting a byte with its own value changes nothing but the file's times.
    flip(&dir, 0x200000);
    flip(&dir, 0x200000);
    let memory = dir.open_memory(&state).unwrap();
    assert!(
        dir.verify_for_mapping(&memory).unwrap(),
        "changed: verified again"
    );
    assert!(!dir.verify_for_mapping(&memory).unwrap(), "and not twice");
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn cli_snapshots_and_restores_with_a_json_breakdown() {
    let tmp = temp_dir("cli");
    let dir = tmp.join("hello");
    let bin = guest("helloworld");
    let out = reap(
        &[
            "snapshot",
            "--binary",
            bin.to_str().unwrap(),
            "--out",
            dir.to_str().unwrap(),
            "--mem",
            "64",
        ],
        b"",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    for mode in ["file", "lazy", "reap", "reap"] {
        let out = reap(
            &[
                "restore",
                dir.to_str().unwrap(),
                "--memory",
                mode,
                "--evict-cache",
                "--json",
            ],
            b"{\"name\":\"A\"}\n{\"name\":\"B\"}\n",
        );
        assert!(out.status.success(), "{mode}: {}", stderr(&out));
        assert_eq!(
            stdout(&out),
            "{\"greeting\":\"Hello, A!\"}\n{\"greeting\":\"Hello, B!\"}\n"
        );
        let lines: Vec<serde_json::Value> = stderr(&out)
            .lines()
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l}: {e}")))
            .collect();
        assert_eq!(lines.len(), 2, "one breakdown per invocation");
        for key in [
            "restore_us",
            "fetch_us",
            "install_us",
            "invoke_us",
            "lazy_faults",
            "prefetched_pages",
        ] {
            assert!(
                lines[0].get(key).is_some_and(|v| v.is_u64()),
                "{mode}: {key} in {}",
                lines[0]
            );
        }
        assert_eq!(lines[0]["cold"], true);
        assert_eq!(lines[1]["cold"], false);
    }
    // A program that exits before reading its first request cannot be snapshotted.
    let env_args = guest("env_args");
    let out = reap(
        &[
            "snapshot",
            "--binary",
            env_args.to_str().unwrap(),
            "--out",
            tmp.join("x").to_str().unwrap(),
        ],
        b"",
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("exited with status 0 before reading its first request"),
        "{}",
        stderr(&out)
    );
    assert!(!tmp.join("x").exists(), "nothing half-written");
    let out = reap(&["restore", tmp.join("missing").to_str().unwrap()], b"{}\n");
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("cannot open the snapshot state"),
        "{}",
        stderr(&out)
    );
    std::fs::remove_dir_all(&tmp).unwrap();
}
