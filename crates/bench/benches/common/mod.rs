//! Helpers shared by the benchmarks: where the guest programs are, summary statistics,
//! number formatting, and the machine and revision a result was measured on.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, ChildStdout, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

/// The directory with the workspace's release binaries, holding every program of
/// `required`: a bench executable is `<target>/<profile>/deps/<bench>-<hash>`, the
/// programs are in `<target>/<profile>` or `<target>/release`. Exits with a hint when
/// they are missing.
pub fn bin_dir(bench: &str, required: &[&str]) -> PathBuf {
    let exe = std::env::current_exe().expect("bench executable path");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target profile dir")
        .to_path_buf();
    let release = profile_dir.parent().map(|t| t.join("release"));
    for dir in std::iter::once(profile_dir).chain(release) {
        if required.iter().all(|b| dir.join(b).exists()) {
            return dir;
        }
    }
    eprintln!(
        "{bench} bench: guest programs not found next to {}",
        exe.display()
    );
    eprintln!("run `cargo build --release --workspace` first");
    std::process::exit(2);
}

/// Median, extremes and nearest-rank percentiles of a sample.
pub struct Stats {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    pub p10: f64,
    pub p90: f64,
}

impl Stats {
    pub fn of(samples: &[f64]) -> Stats {
        let mut v = samples.to_vec();
        v.sort_by(f64::total_cmp);
        let n = v.len();
        if n == 0 {
            return Stats {
                median: f64::NAN,
                min: f64::NAN,
                max: f64::NAN,
                p10: f64::NAN,
                p90: f64::NAN,
            };
        }
        let median = if n % 2 == 1 {
            v[n / 2]
        } else {
            (v[n / 2 - 1] + v[n / 2]) / 2.0
        };
        // Nearest rank.
        let rank = |p: f64| v[((p * n as f64).ceil() as usize).clamp(1, n) - 1];
        Stats {
            median,
            min: v[0],
            max: v[n - 1],
            p10: rank(0.1),
            p90: rank(0.9),
        }
    }

    /// The summary with the samples themselves, for the JSON results.
    pub fn json_with(&self, samples: &[f64]) -> Value {
        json!({
            "median": self.median, "min": self.min, "max": self.max,
            "p10": self.p10, "p90": self.p90, "samples": samples,
        })
    }
}

/// Three significant digits or so; `-` for a missing value.
pub fn fmt(v: f64) -> String {
    if v.is_finite() {
        reap_bench::report::ms(v)
    } else {
        "-".into()
    }
}

pub fn read_trimmed(path: &str) -> String {
    std::fs::read_to_string(path)
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// `git ARGS` in this crate's directory, trimmed; "unknown" when git fails.
pub fn git(args: &[&str]) -> String {
    Command::new("git")
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .args(args)
        .stderr(Stdio::null())
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

/// The machine: host name, CPU, memory, KVM modules, transparent huge pages.
pub fn host() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu_model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(str::trim)
        .unwrap_or("unknown");
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib: u64 = meminfo
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    let kvm_modules: Vec<&str> = ["kvm", "kvm_pvm", "kvm_intel", "kvm_amd"]
        .into_iter()
        .filter(|m| Path::new("/sys/module").join(m).exists())
        .collect();
    json!({
        "hostname": read_trimmed("/proc/sys/kernel/hostname"),
        "cpu_model": cpu_model,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "mem_mib": mem_kib / 1024,
        "kvm_modules": kvm_modules,
        "transparent_hugepage": read_trimmed("/sys/kernel/mm/transparent_hugepage/enabled"),
    })
}

/// `secs` since the Unix epoch as an ISO 8601 UTC date and time.
pub use reap_bench::report::iso8601_utc as iso8601;

/// Where a bench writes its JSON: `$env_var` if set, else `<target>/bench/<file>` next
/// to the programs' directory `bin_dir`.
pub fn results_path(env_var: &str, bin_dir: &Path, file: &str) -> PathBuf {
    std::env::var_os(env_var)
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            bin_dir
                .parent()
                .unwrap_or(Path::new("target"))
                .join("bench")
                .join(file)
        })
}

/// Writes `report` as pretty JSON to `path`, creating its directory.
pub fn write_json(path: &Path, report: &Value) {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)
            .unwrap_or_else(|e| panic!("create {}: {e}", parent.display()));
    }
    let text = serde_json::to_string_pretty(report).expect("serialize results");
    std::fs::write(path, text + "\n").unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// The head of a bench's JSON results: which bench, revision, dates, host, kernel and
/// load, for a run that started at `started` and took `wall_seconds`. The bench adds
/// its own keys to the map.
pub fn report_head(
    bench: &str,
    started: std::time::SystemTime,
    wall_seconds: f64,
    load_before: &str,
    load_after: &str,
) -> serde_json::Map<String, Value> {
    let started_secs = reap_bench::report::unix_secs(started);
    let head = json!({
        "bench": bench,
        "git_rev": git(&["rev-parse", "HEAD"]),
        "git_describe": git(&["describe", "--always", "--dirty"]),
        "date": iso8601(started_secs),
        "unix_time": started_secs,
        "wall_seconds": wall_seconds,
        "host": host(),
        "kernel": read_trimmed("/proc/sys/kernel/osrelease"),
        "kernel_version": read_trimmed("/proc/sys/kernel/version"),
        "loadavg_before": load_before,
        "loadavg_after": load_after,
    });
    match head {
        Value::Object(map) => map,
        _ => unreachable!("a JSON object literal"),
    }
}

/// A program running natively, fed request lines over a pipe (its stderr dropped).
pub struct Native {
    child: Child,
    stdin: Option<ChildStdin>,
    stdout: BufReader<ChildStdout>,
}

impl Native {
    /// Starts `command` with its stdin and stdout piped.
    pub fn spawn(mut command: Command) -> Native {
        let mut child = command
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {:?}: {e}", command.get_program()));
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("piped stdout"));
        Native {
            child,
            stdin,
            stdout,
        }
    }

    /// The running process.
    pub fn child(&mut self) -> &mut Child {
        &mut self.child
    }

    /// Sends `request` and reads the response line: the time between the two, and the
    /// line without its newline.
    pub fn call(&mut self, request: &str) -> (Duration, String) {
        let (elapsed, mut responses) = self.batch(request, 1);
        (elapsed, responses.pop().unwrap_or_default())
    }

    /// Sends `k` copies of `request` in one write and reads the `k` response lines: the
    /// time from the write to the last response, and the lines without their newlines.
    /// The requests must fit in the pipe, so that the write never waits for the
    /// program.
    pub fn batch(&mut self, request: &str, k: usize) -> (Duration, Vec<String>) {
        let input = format!("{request}\n").repeat(k);
        let stdin = self.stdin.as_mut().expect("stdin open");
        let t = Instant::now();
        stdin
            .write_all(input.as_bytes())
            .and_then(|()| stdin.flush())
            .expect("write the requests");
        let mut responses = Vec::with_capacity(k);
        for _ in 0..k {
            let mut response = String::new();
            self.stdout
                .read_line(&mut response)
                .expect("read a response");
            assert!(
                response.ends_with('\n'),
                "the native program ended without answering {request}"
            );
            response.pop();
            responses.push(response);
        }
        (t.elapsed(), responses)
    }

    /// Closes its input (which ends the program) and waits for it.
    pub fn finish(mut self) -> ExitStatus {
        drop(self.stdin.take());
        self.child.wait().expect("wait for the native program")
    }
}

impl Drop for Native {
    fn drop(&mut self) {
        // End of input ends the program.
        drop(self.stdin.take());
        let _ = self.child.wait();
    }
}
