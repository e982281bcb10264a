//! The microVM end to end: static programs run by `reap run` under KVM. Needs /dev/kvm
//! and the workspace's release binaries (see `common::bin_dir`).

use reap_test_support as common;

use common::{guest, reap, run_native, stderr, stdout};

fn reap_run(program: &str, extra: &[&str], input: &[u8]) -> std::process::Output {
    let binary = guest(program);
    let mut args = vec!["run", "--binary", binary.to_str().unwrap()];
    args.extend_from_slice(extra);
    reap(&args, input)
}

#[test]
fn helloworld_in_the_vm_answers_like_native() {
    let input =
        b"{}\n{\"name\":\"Ada\"}\nnot json\n{\"name\":42}\n\n{\"name\":\"\xc3\xa9t\xc3\xa9\"}\n";
    let native = run_native(&guest("helloworld"), &[], input);
    let vm = reap_run("helloworld", &[], input);
    assert!(native.status.success());
    assert!(vm.status.success(), "reap failed: {}", stderr(&vm));
    assert_eq!(stdout(&vm), stdout(&native));
    assert_eq!(
        stdout(&vm).lines().count(),
        6,
        "one response per request line"
    );
    assert!(stdout(&vm).contains("Hello, Ada!"));
}

#[test]
fn arguments_environment_and_exit_status_reach_the_guest() {
    let vm = reap_run(
        "env_args",
        &["--env", "GREETING=hi there", "--", "7", "two words"],
        b"",
    );
    assert_eq!(
        vm.status.code(),
        Some(7),
        "exit status is the program's: {}",
        stderr(&vm)
    );
    let out = stdout(&vm);
    assert!(
        out.contains("arg env_args\narg 7\narg two words\n"),
        "{out}"
    );
    assert!(out.contains("env GREETING=hi there\n"), "{out}");
    assert!(out.contains("pid 1\n"));
}

#[test]
fn null_pointer_dereference_ends_the_guest_with_sigsegv() {
    let vm = reap_run("null_deref", &[], b"");
    // As on Linux: killed by SIGSEGV, exit status 128 + 11.
    assert_eq!(vm.status.code(), Some(139));
    assert!(stderr(&vm).contains("SIGSEGV"), "{}", stderr(&vm));
    let err = stderr(&vm);
    assert!(
        err.contains("about to dereference null"),
        "guest stderr is copied out: {err}"
    );
    assert!(
        err.contains("page fault: read from 0x0 (null pointer) at RIP 0x"),
        "{err}"
    );
    assert_eq!(
        err.lines().filter(|l| l.starts_with("reap:")).count(),
        1,
        "one error line: {err}"
    );
}

/// The one `reap:` line of a run that the VMM ended.
fn reap_line(vm: &std::process::Output) -> String {
    let err = stderr(vm);
    let lines: Vec<&str> = err.lines().filter(|l| l.starts_with("reap:")).collect();
    assert_eq!(lines.len(), 1, "one error line: {err}");
    lines[0].to_owned()
}

/// The `"page":"0x…"` the guest printed before faulting on it.
fn printed_page(vm: &std::process::Output) -> String {
    let out = stdout(vm);
    out.split("\"page\":\"")
        .nth(1)
        .and_then(|s| s.split('"').next())
        .unwrap_or_else(|| panic!("no page printed: {out}"))
        .to_owned()
}

#[test]
fn stack_overflow_ends_the_guest_as_sigsegv_naming_the_guard_gap() {
    let vm = reap_run("misbehave", &[], b"{\"do\":\"overflow\"}\n");
    let line = reap_line(&vm);
    assert_eq!(vm.status.code(), Some(139), "{line}");
    assert!(
        line.contains("killed by signal 11 (SIGSEGV): stack overflow: write to 0x"),
        "{line}"
    );
    assert!(line.contains("in the stack guard gap at RIP 0x"), "{line}");
    assert!(
        !stdout(&vm).contains("depth"),
        "the recursion never returned"
    );
}

#[test]
fn write_to_a_read_only_page_ends_the_guest_as_sigsegv_with_the_address() {
    let vm = reap_run("misbehave", &[], b"{\"do\":\"write_ro\"}\n");
    let line = reap_line(&vm);
    assert_eq!(vm.status.code(), Some(139), "{line}");
    let page = printed_page(&vm);
    assert!(
        line.contains(&format!(
            "SIGSEGV): page fault: write to {page} (a read-only page) at RIP 0x"
        )),
        "{line}"
    );
}

#[test]
fn write_to_a_large_page_made_read_only_ends_the_guest_as_sigsegv() {
    let vm = reap_run("misbehave", &[], b"{\"do\":\"write_ro_2m\"}\n");
    let line = reap_line(&vm);
    assert_eq!(vm.status.code(), Some(139), "{line}");
    let page = printed_page(&vm);
    assert!(
        line.contains(&format!("write to {page} (a read-only page)")),
        "{line}"
    );
}

#[test]
fn read_of_a_prot_none_page_ends_the_guest_as_sigsegv() {
    let vm = reap_run("misbehave", &[], b"{\"do\":\"read_none\"}\n");
    let line = reap_line(&vm);
    assert_eq!(vm.status.code(), Some(139), "{line}");
    let page = printed_page(&vm);
    assert!(
        line.contains(&format!("read from {page} (a PROT_NONE page)")),
        "{line}"
    );
    assert!(!stdout(&vm).contains("\"read\""), "{}", stdout(&vm));
}

#[test]
fn write_to_the_program_text_ends_the_guest_as_sigsegv() {
    let vm = reap_run("misbehave", &[], b"{\"do\":\"write_text\"}\n");
    let line = reap_line(&vm);
    assert_eq!(vm.status.code(), Some(139), "{line}");
    let code = printed_page(&vm);
    assert!(
        line.contains(&format!("write to {code} (a read-only page)")),
        "{line}"
    );
}

#[test]
fn running_code_in_a_data_page_ends_the_guest_as_sigsegv_unless_it_is_executable() {
    let vm = reap_run("misbehave", &[], b"{\"do\":\"exec_data\"}\n");
    let line = reap_line(&vm);
    assert_eq!(vm.status.code(), Some(139), "{line}");
    let page = printed_page(&vm);
    assert!(
        line.contains(&format!(
            "instruction fetch from {page} (a non-executable page) at RIP {page}"
        )),
        "{line}"
    );
    let vm = reap_run("misbehave", &[], b"{\"do\":\"exec_rwx\"}\n");
    assert!(vm.status.success(), "{}", stderr(&vm));
    assert!(
        stdout(&vm).ends_with("{\"exec\":\"ok\"}\n"),
        "{}",
        stdout(&vm)
    );
}

#[test]
fn a_page_made_read_write_again_takes_writes() {
    let vm = reap_run(
        "misbehave",
        &[],
        b"{\"do\":\"protect_rw\"}\n{\"do\":\"protect_rw\"}\n",
    );
    assert!(vm.status.success(), "{}", stderr(&vm));
    assert_eq!(
        stdout(&vm),
        "{\"before\":1,\"after\":42}\n{\"before\":1,\"after\":42}\n"
    );
}

#[test]
fn looping_guest_is_stopped_by_the_time_limit() {
    let started = std::time::Instant::now();
    let vm = reap_run("spin", &["--timeout", "0.5"], b"");
    assert_eq!(vm.status.code(), Some(124));
    assert!(stderr(&vm).contains("time limit"), "{}", stderr(&vm));
    assert_eq!(stdout(&vm), "spinning\n");
    // Generous bound: the point is that it ends at all, not how fast.
    assert!(started.elapsed() < std::time::Duration::from_secs(30));
}

#[test]
fn wild_pointers_get_efault_and_the_guest_goes_on() {
    let vm = reap_run("wild_pointers", &[], b"");
    assert!(vm.status.success(), "{}", stderr(&vm));
    let out = stdout(&vm);
    for case in ["null", "page0", "beyond", "system", "huge"] {
        assert!(
            out.contains(&format!("write {case}: 14\n")),
            "{case}: {out}"
        );
    }
    assert!(out.contains("clock_gettime null: 14\n"));
    assert!(out.contains("write empty null: ok 0\n"), "{out}");
    assert!(out.ends_with("still alive\n"));
}

#[test]
fn unsupported_system_calls_return_enosys_and_fork_is_refused() {
    let vm = reap_run("unsupported", &[], b"");
    assert!(vm.status.success(), "{}", stderr(&vm));
    let out = stdout(&vm);
    assert!(out.contains("syscall 999: -1 errno 38\n"), "{out}");
    assert!(out.contains("socket: -1 errno 38\n"), "{out}");
    assert!(out.contains("fork: -1 errno 1\n"), "{out}");
    assert!(out.contains("open: NotFound\n"), "{out}");
    let err = stderr(&vm);
    assert_eq!(
        err.matches("system call 999 not implemented").count(),
        1,
        "logged once: {err}"
    );
}

#[test]
fn allocating_more_than_guest_memory_gets_enomem_then_aborts() {
    let vm = reap_run("hog", &["--mem", "64"], b"");
    let out = stdout(&vm);
    let refused_at: u64 = out
        .strip_prefix("allocation refused after ")
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no ENOMEM report: {out}"));
    assert!((16..64).contains(&refused_at), "{refused_at} MiB of 64");
    assert_eq!(vm.status.code(), Some(128 + 6), "{}", stderr(&vm));
    assert!(stderr(&vm).contains("memory allocation of 1073741824 bytes failed"));
    assert!(stderr(&vm).contains("SIGABRT"));
}

#[test]
fn port_io_outside_the_syscall_stub_ends_the_guest() {
    let vm = reap_run("stray_io", &[], b"");
    assert_eq!(vm.status.code(), Some(125));
    assert!(
        stderr(&vm).contains("I/O instruction (port 0x80) outside the syscall stub"),
        "{}",
        stderr(&vm)
    );
}

#[test]
fn memory_system_calls_keep_linux_semantics() {
    let vm = reap_run("mem_ops", &[], b"");
    assert!(vm.status.success(), "{}", stderr(&vm));
    assert_eq!(
        stdout(&vm),
        "OK mmap/munmap zeroes\nOK mremap\nOK madvise\nOK brk\nOK noreplace\n"
    );
}

#[test]
fn bad_binaries_are_refused_with_one_line() {
    let dir = std::env::temp_dir().join(format!("reap-bad-binaries-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut header = vec![0u8; 64];
    header[..4].copy_from_slice(b"\x7fELF");
    header[5] = 1;
    header[6] = 1;
    let elf = |class: u8, machine: u16| {
        let mut h = header.clone();
        h[4] = class;
        h[16] = 2;
        h[18..20].copy_from_slice(&machine.to_le_bytes());
        h
    };
    // Claims one program header right after the ELF header, but the file ends there.
    let mut truncated = elf(2, 62);
    truncated[24..32].copy_from_slice(&0x40_1000u64.to_le_bytes());
    truncated[32..40].copy_from_slice(&64u64.to_le_bytes());
    truncated[56..58].copy_from_slice(&1u16.to_le_bytes());
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("text", b"#!/bin/sh\necho hi\n".to_vec(), "not an ELF file"),
        ("empty", Vec::new(), "not an ELF file"),
        ("elf32", elf(1, 3), "32-bit"),
        ("arm64", elf(2, 183), "not x86-64"),
        ("truncated", truncated, "malformed ELF"),
    ];
    for (name, bytes, expect) in cases {
        let path = dir.join(name);
        std::fs::write(&path, bytes).unwrap();
        let out = reap(&["run", "--binary", path.to_str().unwrap()], b"");
        assert_eq!(out.status.code(), Some(126), "{name}");
        let err = stderr(&out);
        assert!(err.contains(expect), "{name}: {err}");
        assert_eq!(err.trim().lines().count(), 1, "{name}: {err}");
    }
    // A dynamically linked executable: the test runner itself.
    let me = std::env::current_exe().unwrap();
    let out = reap(&["run", "--binary", me.to_str().unwrap()], b"");
    assert_eq!(out.status.code(), Some(126));
    assert!(
        stderr(&out).contains("dynamically linked"),
        "{}",
        stderr(&out)
    );
    // A program larger than guest memory.
    let out = reap(
        &["run", "--binary", guest("big_bss").to_str().unwrap()],
        b"",
    );
    assert_eq!(out.status.code(), Some(126));
    assert!(
        stderr(&out).contains("does not fit in guest memory"),
        "{}",
        stderr(&out)
    );
    // A missing file.
    let out = reap(&["run", "--binary", "/nonexistent/fn"], b"");
    assert_eq!(out.status.code(), Some(126));
    assert!(
        stderr(&out).contains("cannot read /nonexistent/fn"),
        "{}",
        stderr(&out)
    );
    // Guest memory size out of range.
    let out = reap(
        &[
            "run",
            "--binary",
            guest("helloworld").to_str().unwrap(),
            "--mem",
            "3",
        ],
        b"",
    );
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("3 MiB is not supported"),
        "{}",
        stderr(&out)
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn timed_waits_end_after_their_timeout() {
    let vm = reap_run("timed_wait", &["--timeout", "20"], b"");
    assert!(vm.status.success(), "{}", stderr(&vm));
    for line in stdout(&vm).lines() {
        let ms: u64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        // At least the timeout; far less than the 20 s limit (it used to sleep for the
        // host's uptime, as the absolute timeout was taken for a duration).
        assert!((50..10_000).contains(&ms), "{line}");
    }
    assert_eq!(stdout(&vm).lines().count(), 3);
}

/// Every function of the suite answers its sample requests (`functions/NAME/requests.jsonl`,
/// all on one stdin) under `reap run` exactly as it does natively.
#[test]
fn every_function_answers_like_native_under_reap_run() {
    for function in common::FUNCTIONS {
        let requests = common::requests(function);
        let input: String = requests.iter().map(|r| format!("{r}\n")).collect();
        let native = common::native_answers(function);
        assert_eq!(
            native.len(),
            requests.len(),
            "{function}: one answer per request"
        );
        let vm = reap_run(function, &[], input.as_bytes());
        assert!(
            vm.status.success(),
            "{function} under reap run: {}",
            stderr(&vm)
        );
        let answers: Vec<String> = stdout(&vm).lines().map(str::to_owned).collect();
        assert_eq!(answers, native, "{function}");
    }
}
