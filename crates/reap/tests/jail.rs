//! The jail of instance processes, checked from inside: `reap worker --check-jail DIR`
//! enters it exactly as a restore of a snapshot in DIR does, then reports what it can
//! open, its ids and capabilities, and makes one system call. Needs root.

use reap_test_support as common;

use std::os::unix::process::ExitStatusExt;
use std::process::Command;

fn check(dir: &std::path::Path, args: &[&str]) -> (String, std::process::ExitStatus) {
    let out = Command::new(common::reap_binary())
        .args(["worker", "--check-jail", dir.to_str().unwrap()])
        .args(args)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success() || out.status.signal().is_some(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (stdout, out.status)
}

#[test]
fn a_jailed_process_sees_only_its_snapshot_directory() {
    let tmp = common::temp_dir("jail-open");
    let root = tmp.join("snapshot");
    std::fs::create_dir_all(&root).unwrap();
    std::fs::write(tmp.join("secret"), "outside the jail").unwrap();
    std::fs::write(root.join("state"), "inside").unwrap();
    std::os::unix::fs::symlink("/etc/passwd", root.join("to-host")).unwrap();
    std::os::unix::fs::symlink("../secret", root.join("to-parent")).unwrap();
    std::os::unix::fs::symlink("/", root.join("to-root")).unwrap();
    let paths = [
        "state",
        "/state",
        "../secret",
        "../../../../secret",
        "/etc/passwd",
        "../../../../etc/passwd",
        "to-host",
        "to-parent",
        "to-root/etc/passwd",
        "/proc/self/root/etc/passwd",
        "/dev/kvm",
    ];
    let mut args = Vec::new();
    for p in paths {
        args.extend(["--open", p]);
    }
    let (out, _) = check(&root, &args);
    for p in ["state", "/state"] {
        assert!(
            out.contains(&format!("open {p}: read 6 bytes")),
            "{p}: {out}"
        );
    }
    for p in &paths[2..] {
        assert!(
            out.contains(&format!("open {p}: No such file or directory")),
            "{p} must not be reachable: {out}"
        );
    }
    assert!(out.contains("uid 65534 gid 65534"), "{out}");
    assert!(
        out.contains("capabilities effective 0x0 permitted 0x0 inheritable 0x0"),
        "{out}"
    );
    std::fs::remove_dir_all(&tmp).unwrap();
}

#[test]
fn a_system_call_outside_the_filter_kills_the_process() {
    let tmp = common::temp_dir("jail-seccomp");
    std::fs::create_dir_all(&tmp).unwrap();
    // getpid is allowed, and the process is the first of its own PID namespace.
    let (out, status) = check(&tmp, &["--syscall", &libc::SYS_getpid.to_string()]);
    assert!(status.success(), "{out}");
    assert!(
        out.contains(&format!("syscall {} returned 1", libc::SYS_getpid)),
        "{out}"
    );
    // socket, execve and ptrace are not: SIGSYS.
    for nr in [libc::SYS_socket, libc::SYS_execve, libc::SYS_ptrace] {
        let (out, status) = check(&tmp, &["--syscall", &nr.to_string()]);
        assert_eq!(status.signal(), Some(libc::SIGSYS), "{nr}: {out}");
        assert!(!out.contains("returned"), "{nr}: {out}");
    }
    // ioctl: KVM and userfaultfd requests only (on a bad descriptor: EBADF).
    let ioctl = libc::SYS_ioctl.to_string();
    for (request, allowed) in [
        (0xAE00_i64, true),             // KVM_GET_API_VERSION
        (0xC028_AA03_u32 as i64, true), // UFFDIO_COPY
        (0x5412, false),                // TIOCSTI
        (0x5421, false),                // FIONBIO
        (0x4004_9409, false),           // FICLONE
    ] {
        let r = request.to_string();
        let (out, status) = check(&tmp, &["--syscall", &ioctl, "--arg", "-1", "--arg", &r]);
        if allowed {
            assert!(status.success(), "{request:#x}: {out}");
            assert!(out.contains("returned -1"), "{request:#x}: {out}");
        } else {
            assert_eq!(status.signal(), Some(libc::SIGSYS), "{request:#x}: {out}");
        }
    }
    std::fs::remove_dir_all(&tmp).unwrap();
}
