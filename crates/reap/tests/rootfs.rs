//! Programs from a Debian root file system (`scripts/rootfs`) under `reap run` and
//! `reap snapshot`/`restore`, compared byte for byte with the same programs run
//! natively in a chroot of the same tree. Needs root and /dev/kvm.

use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use reap_test_support::{reap, run_with_input, stderr, stdout, temp_dir};

fn debian() -> PathBuf {
    reap_test_support::debian_rootfs()
}

/// `PROGRAM ARGS` natively, chrooted into `root`.
fn native(root: &Path, args: &[&str], input: &[u8]) -> Output {
    run_with_input(Command::new("chroot").arg(root).args(args), input)
}

/// `reap run --rootfs ROOT -- PROGRAM ARGS`.
fn in_vm(root: &Path, args: &[&str], input: &[u8]) -> Output {
    let root = root.to_str().unwrap();
    let mut all = vec!["run", "--rootfs", root, "--"];
    all.extend(args);
    reap(&all, input)
}

fn same_as_native(root: &Path, args: &[&str], input: &[u8]) {
    let n = native(root, args, input);
    assert!(n.status.success(), "{args:?} natively: {}", stderr(&n));
    let v = in_vm(root, args, input);
    assert!(v.status.success(), "{args:?} in reap: {}", stderr(&v));
    assert_eq!(stdout(&v), stdout(&n), "{args:?}");
    assert!(!v.stdout.is_empty(), "{args:?} printed nothing");
}

const NUMBERS: &[u8] = b"10\n9\n100\n-3\n2.5\n";

#[test]
fn busybox_static_gives_the_same_output_as_natively() {
    let root = debian();
    same_as_native(&root, &["/bin/busybox", "sort", "-n"], NUMBERS);
    same_as_native(&root, &["/bin/busybox", "sha256sum"], NUMBERS);
    same_as_native(&root, &["/bin/busybox", "wc", "-l"], NUMBERS);
    same_as_native(&root, &["/bin/busybox", "tr", "0-9", "a-j"], NUMBERS);
    same_as_native(&root, &["/bin/busybox", "ls", "-la", "/usr/lib"], b"");
}

#[test]
fn gnu_coreutils_dynamic_give_the_same_output_as_natively() {
    let root = debian();
    same_as_native(&root, &["/usr/bin/sort", "-n"], NUMBERS);
    same_as_native(&root, &["/usr/bin/sha256sum"], NUMBERS);
    same_as_native(&root, &["/usr/bin/wc", "-l"], NUMBERS);
    same_as_native(&root, &["/usr/bin/tr", "0-9", "a-j"], NUMBERS);
    same_as_native(&root, &["/bin/ls", "-la", "/usr/lib"], b"");
}

/// A JSON handler: one request line in, one response line out; it writes and reads back
/// a file in /tmp, lists /tmp and uses C extension modules.
const HANDLER: &str = r#"
import sys, json, zlib, hashlib, os, sqlite3
db = sqlite3.connect(":memory:")
db.execute("create table t (n int)")
for line in sys.stdin:
    req = json.loads(line)
    with open("/tmp/req.json", "w") as f:
        f.write(json.dumps(req))
    back = open("/tmp/req.json").read()
    db.execute("insert into t values (?)", (req.get("n", 0),))
    total = db.execute("select sum(n) from t").fetchone()[0]
    out = {"double": req.get("n", 0) * 2, "crc": zlib.crc32(back.encode()),
           "sha": hashlib.sha256(back.encode()).hexdigest()[:16],
           "tmp": sorted(os.listdir("/tmp")), "total": total}
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
"#;

#[test]
fn python_json_handler_answers_like_natively_before_and_after_a_snapshot() {
    let root = debian();
    let requests = b"{\"n\": 3}\n{\"n\": 5}\n";
    let args = ["/usr/bin/python3", "-c", HANDLER];
    let n = native(&root, &args, requests);
    let _ = std::fs::remove_file(root.join("tmp/req.json"));
    assert!(n.status.success(), "natively: {}", stderr(&n));
    let v = in_vm(&root, &args, requests);
    assert!(v.status.success(), "in reap: {}", stderr(&v));
    assert_eq!(stdout(&v), stdout(&n));
    assert!(
        !root.join("tmp/req.json").exists(),
        "the image is never written"
    );

    // Snapshot at the first read of stdin, then one request per cold start.
    let dir = temp_dir("rootfs-python");
    let snap = dir.join("snap");
    let root_s = root.to_str().unwrap();
    let snap_s = snap.to_str().unwrap();
    let mut snapshot = vec!["snapshot", "--rootfs", root_s, "--out", snap_s, "--"];
    snapshot.extend(args);
    let s = reap(&snapshot, b"");
    assert!(s.status.success(), "snapshot: {}", stderr(&s));
    let first = stdout(&n).lines().next().unwrap().to_string();
    for mode in ["file", "lazy", "reap"] {
        let r = reap(&["restore", snap_s, "--memory", mode], b"{\"n\": 3}\n");
        assert!(r.status.success(), "restore {mode}: {}", stderr(&r));
        assert_eq!(stdout(&r).trim_end(), first, "{mode}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A small image: busybox, links that try to leave it, and a secret beside it.
fn escape_tree(name: &str) -> (PathBuf, PathBuf) {
    let dir = temp_dir(name);
    let root = dir.join("root");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::create_dir_all(root.join("etc")).unwrap();
    std::fs::copy(debian().join("bin/busybox"), root.join("bin/busybox")).unwrap();
    std::fs::write(dir.join("secret"), "TOP SECRET\n").unwrap();
    std::fs::write(root.join("etc/motd"), "inside\n").unwrap();
    symlink("/", root.join("to_root")).unwrap();
    symlink("..", root.join("to_up")).unwrap();
    symlink("../../secret", root.join("etc/to_secret")).unwrap();
    (dir, root)
}

#[test]
fn the_guest_cannot_read_a_secret_planted_beside_the_image() {
    let (dir, root) = escape_tree("rootfs-escape");
    for path in [
        "../../../secret",
        "/../secret",
        "/to_root/../secret",
        "/to_up/secret",
        "/to_up/to_up/secret",
        "/etc/to_secret",
        "/proc/self/root/../secret",
    ] {
        let v = in_vm(&root, &["/bin/busybox", "cat", path], b"");
        assert!(!v.status.success(), "{path}: {}", stdout(&v));
        assert!(!stdout(&v).contains("SECRET"), "{path}");
        assert!(
            stderr(&v).contains("No such file or directory"),
            "{path}: {}",
            stderr(&v)
        );
    }
    // The same links lead to the image's own files.
    let v = in_vm(
        &root,
        &["/bin/busybox", "cat", "/to_up/to_root/etc/motd"],
        b"",
    );
    assert_eq!(stdout(&v), "inside\n", "{}", stderr(&v));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_roots_programs_and_libraries_get_clear_errors() {
    let (dir, root) = escape_tree("rootfs-bad");
    let missing = dir.join("none");
    let v = in_vm(&missing, &["/bin/busybox"], b"");
    assert!(!v.status.success());
    assert!(
        stderr(&v).contains("cannot open the root file system"),
        "{}",
        stderr(&v)
    );
    let v = in_vm(&dir.join("secret"), &["/bin/busybox"], b"");
    assert!(stderr(&v).contains("is not a directory"), "{}", stderr(&v));
    let v = in_vm(&root, &["/bin/nope"], b"");
    assert!(
        stderr(&v).contains("the program /bin/nope is not in the image"),
        "{}",
        stderr(&v)
    );
    // A dynamic program without its loader in the image.
    std::fs::copy(debian().join("bin/ls"), root.join("bin/ls")).unwrap();
    let v = in_vm(&root, &["/bin/ls"], b"");
    assert!(
        stderr(&v).contains("the dynamic loader /lib64/ld-linux-x86-64.so.2 is not in the image"),
        "{}",
        stderr(&v)
    );
    // With the loader and libc but not the libraries ls needs: ld.so names the first.
    let lib = root.join("lib/x86_64-linux-gnu");
    std::fs::create_dir_all(&lib).unwrap();
    std::fs::create_dir_all(root.join("lib64")).unwrap();
    let deb_lib = debian().join("lib/x86_64-linux-gnu");
    for f in ["ld-linux-x86-64.so.2", "libc.so.6"] {
        std::fs::copy(deb_lib.join(f), lib.join(f)).unwrap();
    }
    symlink(
        "/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2",
        root.join("lib64/ld-linux-x86-64.so.2"),
    )
    .unwrap();
    let v = in_vm(&root, &["/bin/ls"], b"");
    assert_eq!(v.status.code(), Some(127), "{}", stderr(&v));
    assert!(
        stderr(&v).contains("error while loading shared libraries: libselinux.so.1"),
        "{}",
        stderr(&v)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_snapshot_whose_image_changed_is_refused() {
    let (dir, root) = escape_tree("rootfs-changed");
    let snap = dir.join("snap");
    let (root_s, snap_s) = (root.to_str().unwrap(), snap.to_str().unwrap());
    let s = reap(
        &[
            "snapshot",
            "--rootfs",
            root_s,
            "--out",
            snap_s,
            "--",
            "/bin/busybox",
            "cat",
        ],
        b"",
    );
    assert!(s.status.success(), "snapshot: {}", stderr(&s));
    let r = reap(&["restore", snap_s, "--memory", "file"], b"hello\n");
    assert!(r.status.success(), "{}", stderr(&r));
    assert_eq!(stdout(&r), "hello\n");
    // busybox itself changes under the snapshot.
    let mut data = std::fs::read(root.join("bin/busybox")).unwrap();
    data.push(0);
    std::fs::write(root.join("bin/busybox"), data).unwrap();
    let r = reap(&["restore", snap_s, "--memory", "file"], b"hello\n");
    assert!(!r.status.success());
    assert!(
        stderr(&r).contains("changed since the snapshot was taken: /bin/busybox"),
        "{}",
        stderr(&r)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn trace_prints_each_system_call_with_its_result() {
    let (dir, root) = escape_tree("rootfs-trace");
    let root_s = root.to_str().unwrap();
    let v = reap(
        &[
            "run",
            "--trace",
            "--rootfs",
            root_s,
            "--",
            "/bin/busybox",
            "cat",
            "/etc/motd",
        ],
        b"",
    );
    assert_eq!(stdout(&v), "inside\n", "{}", stderr(&v));
    let err = stderr(&v);
    assert!(
        err.contains(r#"openat(AT_FDCWD, "/etc/motd", 0, 0, 0, 0) = 3"#),
        "{err}"
    );
    assert!(err.contains("exit_group(0"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn proc_self_maps_lists_the_program_its_libraries_heap_and_stack_in_order() {
    let root = debian();
    let out = in_vm(
        &root,
        &[
            "/usr/bin/python3",
            "-c",
            "print(open('/proc/self/maps').read(), end='')",
        ],
        b"",
    );
    assert!(out.status.success(), "{}", stderr(&out));
    let maps = stdout(&out);
    let mut areas = Vec::new();
    for l in maps.lines() {
        let mut f = l.split_whitespace();
        let (range, perms) = (f.next().unwrap(), f.next().unwrap());
        let name = f.nth(3).unwrap_or("").to_string();
        let (s, e) = range.split_once('-').unwrap();
        let (s, e) = (
            u64::from_str_radix(s, 16).unwrap(),
            u64::from_str_radix(e, 16).unwrap(),
        );
        areas.push((s, e, perms.to_string(), name));
    }
    // In address order, none overlapping, none empty.
    for w in areas.windows(2) {
        assert!(w[0].0 < w[0].1 && w[0].1 <= w[1].0, "{maps}");
    }
    let has = |name: &str, perms: &str| areas.iter().any(|a| a.3 == name && a.2 == perms);
    // The program's text and data, the dynamic loader's and libc's text, as Linux
    // names them.
    assert!(has("/usr/bin/python3.11", "r-xp"), "{maps}");
    assert!(has("/usr/bin/python3.11", "rw-p"), "{maps}");
    assert!(
        has("/lib/x86_64-linux-gnu/ld-linux-x86-64.so.2", "r-xp"),
        "{maps}"
    );
    assert!(has("/lib/x86_64-linux-gnu/libc.so.6", "r-xp"), "{maps}");
    assert!(has("/lib/x86_64-linux-gnu/libc.so.6", "r--p"), "{maps}");
    for special in ["[heap]", "[stack]", "[vdso]", "[vvar]"] {
        assert!(areas.iter().any(|a| a.3 == special), "{special}: {maps}");
    }
}
