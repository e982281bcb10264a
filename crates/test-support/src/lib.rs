//! Helpers shared by reap's integration tests and benches: where the guest programs
//! are, how to run the `reap` binary, the function list and its sample requests.

#![warn(missing_docs)]

pub mod oci;

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};

/// The directory holding the workspace's release binaries (function programs and test
/// guests), built by `cargo build --release --workspace` before the tests.
pub fn bin_dir() -> PathBuf {
    // Test executables live in <target>/<profile>/deps.
    let exe = std::env::current_exe().expect("test executable path");
    let profile_dir = exe
        .parent()
        .and_then(|d| d.parent())
        .expect("target profile dir")
        .to_path_buf();
    let release = profile_dir.parent().map(|t| t.join("release"));
    for dir in std::iter::once(profile_dir).chain(release) {
        if dir.join("helloworld").exists() {
            return dir;
        }
    }
    panic!(
        "guest binaries not found: run `cargo build --release --workspace` first (scripts/test does)"
    );
}

/// Path of a workspace binary (a function or a test guest).
pub fn guest(name: &str) -> PathBuf {
    let path = bin_dir().join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --release --workspace`",
        path.display()
    );
    path
}

/// Path of a C test guest, `tests/guests/c/NAME.c`, compiled with the host's C
/// compiler (`cc -O2 -static-pie -pthread`, glibc linked in) into the binary directory
/// as `NAME` when missing or older than its source.
pub fn c_guest(name: &str) -> PathBuf {
    let source = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/guests/c")
        .join(format!("{name}.c"));
    let out = bin_dir().join(name);
    let modified = |p: &std::path::Path| std::fs::metadata(p).and_then(|m| m.modified()).ok();
    let source_time = modified(&source)
        .unwrap_or_else(|| panic!("C guest source {} is missing", source.display()));
    if modified(&out).is_some_and(|t| t >= source_time) {
        return out;
    }
    // Built under a name of its own and renamed: tests running at once never see a
    // half-written binary.
    let tmp = bin_dir().join(format!(".{name}.{}", std::process::id()));
    let status = Command::new("cc")
        .args(["-O2", "-static-pie", "-pthread", "-Wall", "-o"])
        .arg(&tmp)
        .arg(&source)
        .status()
        .expect(
            "run cc (install a C compiler and the static glibc, e.g. Debian's gcc and libc6-dev)",
        );
    assert!(status.success(), "cc failed on {}", source.display());
    std::fs::rename(&tmp, &out).expect("rename the C guest into place");
    out
}

/// Runs `program` natively with `input` on stdin.
pub fn run_native(program: &std::path::Path, args: &[&str], input: &[u8]) -> Output {
    run_with_input(Command::new(program).args(args), input)
}

/// The Debian root file system `scripts/rootfs` assembles (`target/rootfs/debian`);
/// panics, saying so, if it is missing.
pub fn debian_rootfs() -> PathBuf {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../target/rootfs/debian");
    assert!(
        root.join("usr/bin/python3.11").exists(),
        "{} is missing: run scripts/rootfs first",
        root.display()
    );
    root
}

/// Path of the `reap` binary (built beside the guests).
pub fn reap_binary() -> PathBuf {
    guest("reap")
}

/// Runs `reap ARGS` with `input` on stdin.
pub fn reap(args: &[&str], input: &[u8]) -> Output {
    run_with_input(Command::new(reap_binary()).args(args), input)
}

/// Runs `cmd` with `input` written to its stdin from another thread, and collects its
/// status, stdout and stderr.
pub fn run_with_input(cmd: &mut Command, input: &[u8]) -> Output {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn");
    let mut stdin = child.stdin.take().expect("stdin");
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().expect("wait");
    writer.join().expect("stdin writer");
    out
}

/// `out`'s stdout as text (invalid UTF-8 replaced).
pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `out`'s stderr as text (invalid UTF-8 replaced).
pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// The functions of the suite (directories under `functions/`).
pub use reap_bench::SUITE as FUNCTIONS;

/// The sample requests of a function (`functions/NAME/requests.jsonl`), one per line.
pub fn requests(function: &str) -> Vec<String> {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../functions")
        .join(function)
        .join("requests.jsonl");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines().map(str::to_owned).collect()
}

/// The native answers of a function to its sample requests, one per request.
pub fn native_answers(function: &str) -> Vec<String> {
    let input: String = requests(function)
        .iter()
        .map(|r| format!("{r}\n"))
        .collect();
    let out = run_native(&guest(function), &[], input.as_bytes());
    assert!(
        out.status.success(),
        "{function} failed natively: {}",
        stderr(&out)
    );
    stdout(&out).lines().map(str::to_owned).collect()
}

/// A fresh temporary directory for one test.
pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("reap-test-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create temp dir");
    dir
}
