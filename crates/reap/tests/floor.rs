//! The cold-start techniques beyond REAP: VM shells reused across functions, the
//! working set installed concurrently with the guest, and the recording written after
//! the answer. Each must leave every answer as it was. Needs /dev/kvm, userfaultfd and
//! the workspace's release binaries.

use reap_test_support as common;

use std::time::Duration;

use common::{guest, native_answers, requests, run_native, stdout, temp_dir};
use reap_pager::ServeOptions;
use reap_vmm::arch::layout::VVAR_ADDR;
use reap_vmm::instance::{Instance, MemoryMode};
use reap_vmm::microvm::MicroVmConfig;
use reap_vmm::snapshot::SnapshotDir;
use reap_vmm::vstate::shell;

const LIMIT: Option<Duration> = Some(Duration::from_secs(120));

fn deploy(function: &str, mem_mib: u64, dir: &SnapshotDir) {
    let image = std::fs::read(guest(function)).unwrap();
    let config = MicroVmConfig {
        mem_mib,
        args: vec![function.into()],
        ..Default::default()
    };
    Instance::deploy(&image, &config, Box::new(std::io::sink()), LIMIT, dir)
        .unwrap_or_else(|e| panic!("deploy {function}: {e:#}"));
}

fn restore(dir: &SnapshotDir, mode: MemoryMode) -> Instance {
    Instance::restore(dir, mode, Box::new(std::io::sink()))
        .unwrap_or_else(|e| panic!("restore {mode:?}: {e:#}"))
}

fn answer(instance: &mut Instance, request: &str) -> String {
    let (resp, _) = instance
        .invoke(request.as_bytes(), LIMIT)
        .unwrap_or_else(|e| panic!("{request}: {e:#}"));
    String::from_utf8(resp).unwrap().trim_end().to_owned()
}

fn pin_to_cpu0() {
    // SAFETY: a zeroed cpu_set_t with CPU 0 set, for the calling thread (pid 0).
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(0, &mut set);
        assert_eq!(
            libc::sched_setaffinity(0, size_of::<libc::cpu_set_t>(), &set),
            0
        );
    }
}

/// One function runs in a shell, which then serves another function's restore: the
/// second sees its own snapshot's memory in every page and its own vCPU state, never
/// the first one's. (Its own guest-memory size, so that no other test takes these
/// shells.)
#[test]
fn a_reused_shell_carries_no_memory_or_registers_of_the_last_function() {
    const MIB: u64 = 48;
    let tmp = temp_dir("shell-reuse");
    // The CPUID of a snapshot holds the APIC ID of the host CPU it booted on, and a
    // shell only serves snapshots with the CPUID its vCPU ran with: both boot on CPU 0.
    pin_to_cpu0();
    let first = SnapshotDir::new(tmp.join("page_order"));
    let second = SnapshotDir::new(tmp.join("helloworld"));
    deploy("page_order", MIB, &first);
    deploy("helloworld", MIB, &second);
    let hello = requests("helloworld");
    let native = native_answers("helloworld");
    assert!(shell::enabled());
    let (a, b) = (first.read_state().unwrap(), second.read_state().unwrap());
    assert_eq!(
        a.vm.vcpu.cpuid, b.vm.vcpu.cpuid,
        "both booted on CPU 0: the same CPUID, so one's shell can serve the other"
    );
    for mode in [MemoryMode::File, MemoryMode::Lazy, MemoryMode::Reap] {
        // The first function writes its pattern all over its memory and runs.
        let mut a = restore(&first, mode);
        assert!(a.cold_start().unwrap().shell_uses.is_some(), "{mode:?}");
        answer(&mut a, r#"{"order":"reverse"}"#);
        let a_base = a.guest_memory().host_addr();
        drop(a);
        shell::flush();

        let mut b = restore(&second, mode);
        let uses = b.cold_start().unwrap().shell_uses;
        assert!(
            uses.is_some_and(|u| u > 0),
            "{mode:?}: the restore reused a shell ({uses:?})"
        );
        assert_eq!(
            b.guest_memory().host_addr(),
            a_base,
            "{mode:?}: the shell given back is the one taken"
        );

        // Its vCPU state is the snapshot's, register for register: a snapshot of the
        // restored instance at its ready point holds the same.
        let again = SnapshotDir::new(tmp.join(format!("again-{}", mode.name())));
        b.snapshot(&again).unwrap();
        let want = second.read_state().unwrap();
        let got = again.read_state().unwrap();
        assert_eq!(
            serde_json::to_value(&got.vm.vcpu).unwrap(),
            serde_json::to_value(&want.vm.vcpu).unwrap(),
            "{mode:?}: vCPU state after a restore in a reused shell"
        );

        // Every page of guest memory is the second snapshot's, but the vDSO's clock
        // parameters, which the restore (and the snapshot just taken) rewrote from the
        // host's clocks: the rest of their page is the snapshot's.
        let memory = std::fs::read(second.memory()).unwrap();
        let guest_memory = b.guest_memory();
        let mut page = vec![0u8; 4096];
        let vvar_page = (VVAR_ADDR / 4096) as usize;
        for (i, want) in memory.chunks(4096).enumerate() {
            guest_memory.read(i as u64 * 4096, &mut page).unwrap();
            if i == vvar_page {
                let params = size_of::<reap_vmm::vdso::Vvar>();
                assert!(
                    page[params..] == want[params..],
                    "{mode:?}: the vDSO's page"
                );
                assert!(reap_vmm::vdso::read(guest_memory).is_some(), "{mode:?}");
                continue;
            }
            assert!(page == want, "{mode:?}: page {i} is not the snapshot's");
        }

        let answers: Vec<String> = hello.iter().map(|r| answer(&mut b, r)).collect();
        assert_eq!(answers, native, "{mode:?}");
    }
    std::fs::remove_dir_all(&tmp).unwrap();
}

/// The working set is recorded with the pages touched in one order; later cold starts
/// touch them in other orders while the install runs: every answer is the native one
/// and no page of the set is read from the memory file.
#[test]
fn concurrent_install_serves_pages_touched_out_of_recorded_order() {
    let tmp = temp_dir("out-of-order");
    let dir = SnapshotDir::new(tmp.join("snap"));
    deploy("page_order", 64, &dir);
    let requests = [
        r#"{"order":"forward"}"#,
        r#"{"order":"reverse"}"#,
        r#"{"order":"stride"}"#,
    ];
    let input: String = requests.iter().map(|r| format!("{r}\n")).collect();
    let native: Vec<String> = stdout(&run_native(&guest("page_order"), &[], input.as_bytes()))
        .lines()
        .map(str::to_owned)
        .collect();
    assert_eq!(native.len(), 3);

    let mut recording = restore(&dir, MemoryMode::Reap);
    assert!(recording.cold_start().unwrap().recording);
    assert_eq!(answer(&mut recording, requests[0]), native[0]);
    drop(recording);
    assert!(dir.working_set().is_some());

    let mut ws_faults = 0;
    for round in 0..6 {
        let (i, first_pages) = (1 + round % 2, [1, 64, 4096][round % 3]);
        let options = ServeOptions::default()
            .concurrent_install(true)
            .first_install_pages(first_pages);
        let mut instance =
            Instance::restore_with(&dir, MemoryMode::Reap, Box::new(std::io::sink()), options)
                .unwrap();
        let cold = instance.cold_start().unwrap().clone();
        assert!(!cold.recording && !cold.ws_fell_back);
        let (resp, inv) = instance.invoke(requests[i].as_bytes(), LIMIT).unwrap();
        assert_eq!(String::from_utf8(resp).unwrap().trim_end(), native[i]);
        assert_eq!(
            inv.lazy_faults, 0,
            "round {round}: every page touched is in the working set"
        );
        ws_faults += instance.pager_stats().unwrap().ws_faults;
    }
    eprintln!("faults served from the fetched working set: {ws_faults}");
    std::fs::remove_dir_all(&tmp).unwrap();
}

/// The recording cold start answers before its working set is written; a cold start
/// right after it waits for the write and prefetches the complete file.
#[test]
fn the_cold_start_after_a_background_recording_prefetches_the_whole_set() {
    let tmp = temp_dir("background-record");
    let dir = SnapshotDir::new(tmp.join("snap"));
    deploy("helloworld", 256, &dir);
    let request = &requests("helloworld")[0];
    let native = &native_answers("helloworld")[0];

    let mut recording = restore(&dir, MemoryMode::Reap);
    let (resp, inv) = recording.invoke(request.as_bytes(), LIMIT).unwrap();
    assert_eq!(String::from_utf8(resp).unwrap().trim_end(), native);
    let pages = inv
        .ws_pages_written
        .expect("a working set is being written");
    assert!(pages > 0);
    // The recording instance is kept (its write may still run).
    let mut next = restore(&dir, MemoryMode::Reap);
    let cold = next.cold_start().unwrap().clone();
    assert!(!cold.recording, "not recorded again");
    assert!(!cold.ws_fell_back, "the file was complete");
    let stats = next.pager_stats().unwrap();
    assert_eq!(stats.mode, "prefetch");
    assert!(stats.bytes_read_fetch > 0);
    assert_eq!(&answer(&mut next, request), native);
    drop(recording);
    std::fs::remove_dir_all(&tmp).unwrap();
}
