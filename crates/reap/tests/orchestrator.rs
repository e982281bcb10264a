//! The orchestrator over real HTTP on 127.0.0.1: a `reap serve` process on a temporary
//! store, driven with an HTTP client and the `reap` CLI. Needs /dev/kvm, userfaultfd and
//! the workspace's release binaries.

use reap_test_support as common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::{guest, temp_dir};
use reap_orchestrator::client;

struct Server {
    child: Child,
    home: PathBuf,
    base: String,
}

impl Server {
    /// Starts `reap serve` on an ephemeral port over a fresh store.
    fn start(name: &str, extra: &[&str]) -> Server {
        let home = temp_dir(&format!("orch-{name}"));
        std::fs::create_dir_all(&home).unwrap();
        let log = std::fs::File::create(home.join("serve.stderr")).unwrap();
        let child = Command::new(common::reap_binary())
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(extra)
            .env("REAP_HOME", &home)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn reap serve");
        let server_file = home.join("server.json");
        let deadline = Instant::now() + Duration::from_secs(30);
        let base = loop {
            if let Ok(bytes) = std::fs::read(&server_file)
                && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes)
            {
                break format!("http://{}", v["listen"].as_str().unwrap());
            }
            assert!(Instant::now() < deadline, "server did not start");
            std::thread::sleep(Duration::from_millis(50));
        };
        Server { child, home, base }
    }

    fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(common::reap_binary())
            .args(args)
            .env("REAP_HOME", &self.home)
            .output()
            .unwrap()
    }

    fn deploy(&self, name: &str, binary: &Path) -> Reply {
        request(
            "PUT",
            &format!("{}/functions/{name}", self.base),
            &std::fs::read(binary).unwrap(),
        )
    }

    /// The server's own log (its stderr).
    fn log(&self) -> String {
        std::fs::read_to_string(self.home.join("serve.stderr")).unwrap_or_default()
    }

    fn addr(&self) -> &str {
        self.base.trim_start_matches("http://")
    }

    /// A line of `reap serve`'s /proc status, in kB.
    fn status_kb(&self, field: &str) -> u64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches(" kB").parse().ok())
            .unwrap_or_else(|| panic!("{field} in {status}"))
    }

    fn metric(&self, line_start: &str) -> Option<u64> {
        let metrics = request("GET", &format!("{}/metrics", self.base), b"").body;
        metrics
            .lines()
            .find(|l| l.starts_with(line_start))
            .and_then(|l| l.rsplit(' ').next())
            .and_then(|n| n.parse().ok())
    }

    fn invoke(&self, name: &str, body: &str) -> Reply {
        request(
            "POST",
            &format!("{}/functions/{name}/invoke", self.base),
            body.as_bytes(),
        )
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.home);
    }
}

/// A reply, with its body as text.
struct Reply {
    status: u16,
    body: String,
    inner: client::Reply,
}

impl Reply {
    fn header(&self, name: &str) -> Option<&str> {
        self.inner.header(name)
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }

    fn total_us(&self) -> u64 {
        self.header("x-reap-total-us").unwrap().parse().unwrap()
    }
}

/// Sends `POST /functions/NAME/invoke` with a body of `len` bytes from another thread
/// (its write may fail once the server has answered) and returns the status the
/// server answers with.
fn status_of_oversized_invoke(server: &Server, name: &str, len: usize) -> u16 {
    use std::io::{Read, Write};
    let addr = server.base.trim_start_matches("http://");
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(30)))
        .unwrap();
    write!(
        stream,
        "POST /functions/{name}/invoke HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\nContent-Length: {len}\r\n\r\n"
    )
    .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let body = std::thread::spawn(move || {
        // The server may answer and close at any point of this.
        let _ = writer.write_all(&vec![b'x'; len]);
    });
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n") {
        match stream.read(&mut byte) {
            Ok(1) => head.push(byte[0]),
            other => panic!("no status line from the server: {other:?}"),
        }
    }
    body.join().unwrap();
    let line = String::from_utf8_lossy(&head);
    line.split(' ')
        .nth(1)
        .and_then(|code| code.parse().ok())
        .unwrap_or_else(|| panic!("not a status line: {line}"))
}

fn request(method: &str, url: &str, body: &[u8]) -> Reply {
    let inner = client::request(method, url, body, Duration::from_secs(120))
        .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
    Reply {
        status: inner.status,
        body: String::from_utf8_lossy(&inner.body).into_owned(),
        inner,
    }
}

#[test]
fn deploy_then_invoke_cold_then_warm() {
    let server = Server::start("coldwarm", &[]);
    let deployed = server.deploy("hello", &guest("helloworld"));
    assert_eq!(deployed.status, 201, "{}", deployed.body);
    assert_eq!(deployed.json()["name"], "hello");
    // The deploy booted in a jailed process: the version holds the binary, the
    // manifest and the snapshot only, all given back to the server's user (no instance
    // process, running as another uid, can change them).
    let version = server.home.join("functions/hello/current");
    let mut names: Vec<String> = std::fs::read_dir(&version)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    assert_eq!(names, ["binary", "manifest.json", "snapshot"]);
    for entry in std::fs::read_dir(version.join("snapshot")).unwrap() {
        use std::os::unix::fs::MetadataExt;
        let meta = entry.unwrap().metadata().unwrap();
        assert_eq!((meta.uid(), meta.gid()), (0, 0));
    }

    let cold = server.invoke("hello", r#"{"name": "Ada"}"#);
    assert_eq!(cold.status, 200, "{}", cold.body);
    assert_eq!(cold.body, r#"{"greeting":"Hello, Ada!"}"#);
    assert_eq!(cold.header("x-reap-start"), Some("cold"));
    assert_eq!(cold.header("x-reap-memory"), Some("reap"));
    assert!(cold.header("x-reap-restore-us").is_some());

    let warm = server.invoke("hello", r#"{"name": "Bob"}"#);
    assert_eq!(warm.status, 200);
    assert_eq!(warm.body, r#"{"greeting":"Hello, Bob!"}"#);
    assert_eq!(warm.header("x-reap-start"), Some("warm"));
    assert!(
        warm.total_us() < cold.total_us(),
        "warm {} us vs cold {} us",
        warm.total_us(),
        cold.total_us()
    );

    // A forced cold start in another memory mode.
    let file = request(
        "POST",
        &format!(
            "{}/functions/hello/invoke?cold=true&memory=file",
            server.base
        ),
        b"{}",
    );
    assert_eq!(file.status, 200);
    assert_eq!(file.header("x-reap-start"), Some("cold"));
    assert_eq!(file.header("x-reap-memory"), Some("file"));

    let list = request("GET", &format!("{}/functions", server.base), b"");
    assert_eq!(list.json()[0]["name"], "hello");
    assert_eq!(
        request("GET", &format!("{}/healthz", server.base), b"").status,
        200
    );
    let metrics = request("GET", &format!("{}/metrics", server.base), b"").body;
    assert!(
        metrics.contains(r#"reap_invocations_total{function="hello",start="warm"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains(r#"reap_cold_starts_total{function="hello",mode="reap"} 1"#),
        "{metrics}"
    );
    assert!(
        metrics.contains("reap_invocation_duration_seconds_bucket"),
        "{metrics}"
    );
    assert!(metrics.contains("reap_lazy_faults_total"), "{metrics}");

    // The CLI goes through the running server and gets its warm instance.
    let out = server.cli(&["invoke", "hello", "--data", r#"{"name":"cli"}"#, "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["response"]["greeting"], "Hello, cli!");
    assert_eq!(v["start"], "warm");
    assert!(v["via"].is_string());
    let ls = server.cli(&["ls"]);
    assert!(String::from_utf8_lossy(&ls.stdout).contains("hello"));

    let removed = server.cli(&["rm", "hello"]);
    assert!(
        removed.status.success(),
        "{}",
        String::from_utf8_lossy(&removed.stderr)
    );
    assert_eq!(server.invoke("hello", "{}").status, 404);
    assert_eq!(
        request("DELETE", &format!("{}/functions/hello", server.base), b"").status,
        404
    );
}

#[test]
fn idle_instances_expire_after_the_keep_alive() {
    let server = Server::start("keepalive", &["--keep-alive", "1"]);
    assert_eq!(server.deploy("hello", &guest("helloworld")).status, 201);
    assert_eq!(
        server.invoke("hello", "{}").header("x-reap-start"),
        Some("cold")
    );
    assert_eq!(
        server.invoke("hello", "{}").header("x-reap-start"),
        Some("warm")
    );
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        server.invoke("hello", "{}").header("x-reap-start"),
        Some("cold")
    );
}

#[test]
fn concurrent_invocations_get_separate_instances() {
    let server = Server::start("concurrent", &["--max-instances", "4"]);
    assert_eq!(server.deploy("echo", &guest("misbehave")).status, 201);
    let base = server.base.clone();
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let base = base.clone();
            std::thread::spawn(move || {
                let r = request(
                    "POST",
                    &format!("{base}/functions/echo/invoke"),
                    format!("{{\"i\":{i}}}").as_bytes(),
                );
                let start = r.header("x-reap-start").map(str::to_owned);
                (i, r.status, r.body, start)
            })
        })
        .collect();
    let mut cold = 0;
    for t in threads {
        let (i, status, body, start) = t.join().unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            body,
            format!("{{\"echo\":{{\"i\":{i}}}}}"),
            "each answer is its own request's"
        );
        cold += usize::from(start.as_deref() == Some("cold"));
    }
    assert!(
        (1..=4).contains(&cold),
        "{cold} cold starts with a limit of 4 instances"
    );
    let metrics = request("GET", &format!("{base}/metrics"), b"").body;
    let live: usize = metrics
        .lines()
        .find(|l| l.starts_with("reap_instances{function=\"echo\"}"))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("{metrics}"));
    assert!(live <= 4, "{live}");
}

#[test]
fn errors_are_answered_and_the_server_goes_on() {
    let server = Server::start("errors", &["--timeout", "2"]);
    assert_eq!(server.deploy("fn", &guest("misbehave")).status, 201);
    let ok = |server: &Server| {
        let r = server.invoke("fn", r#"{"x":1}"#);
        assert_eq!((r.status, r.body.as_str()), (200, r#"{"echo":{"x":1}}"#));
    };
    ok(&server);

    let unknown = server.invoke("nope", "{}");
    assert_eq!(unknown.status, 404);
    assert!(
        unknown.json()["error"]
            .as_str()
            .unwrap()
            .contains("no function named")
    );

    let not_json = server.invoke("fn", "{not json");
    assert_eq!(not_json.status, 400);
    assert_eq!(not_json.json()["kind"], "bad_request");

    // A stack overflow ends in the guard gap as SIGSEGV: 502, and the next request is
    // answered by a good instance (the crashed one is discarded, never reused).
    let overflow = server.invoke("fn", r#"{"do":"overflow"}"#);
    assert_eq!(overflow.status, 502, "{}", overflow.body);
    assert_eq!(overflow.json()["kind"], "crash", "{}", overflow.body);
    assert!(
        overflow.body.contains("stack overflow") && overflow.body.contains("SIGSEGV"),
        "{}",
        overflow.body
    );
    ok(&server);

    let crash = server.invoke("fn", r#"{"do":"crash"}"#);
    assert_eq!(crash.status, 502, "{}", crash.body);
    assert!(
        crash.json()["error"]
            .as_str()
            .unwrap()
            .contains("page fault"),
        "{}",
        crash.body
    );
    ok(&server);

    let exit = server.invoke("fn", r#"{"do":"exit"}"#);
    assert_eq!(exit.status, 502);
    assert!(exit.body.contains("exited with status 3"), "{}", exit.body);

    let garbage = server.invoke("fn", r#"{"do":"two_lines"}"#);
    assert_eq!(garbage.status, 502);
    assert!(
        garbage.body.contains("3 lines instead of one"),
        "{}",
        garbage.body
    );

    let silent = server.invoke("fn", r#"{"do":"silent"}"#);
    assert_eq!(silent.status, 502);
    assert!(
        silent.body.contains("without having answered"),
        "{}",
        silent.body
    );

    let started = Instant::now();
    let timeout = server.invoke("fn", r#"{"do":"loop"}"#);
    assert_eq!(timeout.status, 504, "{}", timeout.body);
    assert!(timeout.body.contains("time limit"), "{}", timeout.body);
    assert!(started.elapsed() < Duration::from_secs(60));
    ok(&server);

    // A request over the size cap is refused. The server answers once it has read past
    // the cap and closes, so a client still writing can get EPIPE: the status line is
    // read while another thread writes the body.
    assert_eq!(status_of_oversized_invoke(&server, "fn", 7 << 20), 413);
    ok(&server);

    let bad = std::env::temp_dir().join(format!("reap-not-elf-{}", std::process::id()));
    std::fs::write(&bad, b"#!/bin/sh\necho hi\n").unwrap();
    let refused = server.deploy("bad", &bad);
    assert_eq!(refused.status, 400, "{}", refused.body);
    assert!(
        refused.json()["error"]
            .as_str()
            .unwrap()
            .contains("not an ELF file"),
        "{}",
        refused.body
    );
    std::fs::remove_file(&bad).unwrap();
    let bad_name = server.deploy("Bad%20Name", &guest("helloworld"));
    assert_eq!(bad_name.status, 400, "{}", bad_name.body);
    let listed = request("GET", &format!("{}/functions", server.base), b"").json();
    assert_eq!(
        listed.as_array().unwrap().len(),
        1,
        "failed deploys leave nothing: {listed}"
    );

    let metrics = request("GET", &format!("{}/metrics", server.base), b"").body;
    for kind in ["crash", "timeout", "bad_response"] {
        assert!(
            metrics.contains(&format!("kind=\"{kind}\"")),
            "{kind}: {metrics}"
        );
    }
    ok(&server);
}

#[test]
fn cli_works_without_a_server_and_graceful_shutdown_cleans_up() {
    let home = temp_dir("cli-direct");
    let run = |args: &[&str]| {
        Command::new(common::reap_binary())
            .args(args)
            .env("REAP_HOME", &home)
            .output()
            .unwrap()
    };
    let bin = guest("misbehave");
    let out = run(&[
        "deploy",
        "echo",
        "--binary",
        bin.to_str().unwrap(),
        "--mem",
        "64",
        "--env",
        "A=1",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = run(&["invoke", "echo", "--data", r#"{"do":"log","n":1}"#]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(
        String::from_utf8_lossy(&out.stdout),
        "{\"echo\":{\"do\":\"log\",\"n\":1}}\n"
    );
    let out = run(&["invoke", "echo", "--data", "{}", "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["start"], "cold");
    assert!(v["cold_start"]["restore_us"].is_u64());
    let logs = run(&["logs", "echo"]);
    assert!(
        String::from_utf8_lossy(&logs.stdout).contains("log line for"),
        "{}",
        String::from_utf8_lossy(&logs.stdout)
    );
    let out = run(&["invoke", "missing"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("no function named"));
    // Redeploying replaces the version.
    let before = run(&["ls"]).stdout;
    assert!(
        run(&["deploy", "echo", "--binary", bin.to_str().unwrap()])
            .status
            .success()
    );
    assert_ne!(run(&["ls"]).stdout, before);
    assert_eq!(
        std::fs::read_dir(home.join("functions/echo/versions"))
            .unwrap()
            .count(),
        1,
        "old version removed"
    );
    assert!(run(&["rm", "echo"]).status.success());
    assert!(!run(&["rm", "echo"]).status.success());

    // SIGTERM: the server stops and removes its address file.
    let mut child = Command::new(common::reap_binary())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("REAP_HOME", &home)
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let server_file = home.join("server.json");
    let deadline = Instant::now() + Duration::from_secs(30);
    while !server_file.exists() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(50));
    }
    // SAFETY: sends SIGTERM to the child we spawned.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    assert!(!server_file.exists());
    std::fs::remove_dir_all(&home).unwrap();
}

#[test]
fn working_set_is_rerecorded_when_it_stops_fitting() {
    use reap_orchestrator::store::FunctionStore;
    use reap_orchestrator::{InvokeOptions, Orchestrator};
    let home = temp_dir("rerecord");
    let (store, _) = FunctionStore::open(&home).unwrap();
    let image = std::fs::read(guest("misbehave")).unwrap();
    store
        .deploy("table", &image, 128, Vec::new(), Duration::from_secs(60))
        .unwrap();
    let snapshot = store.get("table").unwrap().snapshot();
    let o = Orchestrator::new(store, pool_config()).unwrap();
    let cold = InvokeOptions {
        force_cold: true,
        ..Default::default()
    };
    let small = br#"{"do":"read","mib":1}"#;
    let large = br#"{"do":"read","mib":16}"#;

    let first = o.invoke("table", small, cold).unwrap();
    assert!(
        first.cold_start.as_ref().unwrap().recording,
        "the first cold start records"
    );
    // It answered before its working set was written (in the background).
    reap_pager::policy::wait_for_ws_writes();
    assert!(snapshot.working_set().is_some());
    let fits = o.invoke("table", small, cold).unwrap();
    let c = fits.cold_start.as_ref().unwrap();
    assert!(!c.recording && c.prefetched_pages > 0);
    assert!(
        !fits.rerecord,
        "{} lazy faults for a WS of {} pages",
        fits.invocation.lazy_faults, c.prefetched_pages
    );
    assert!(snapshot.working_set().is_some());

    // A request that touches 16 times the pages: most are outside the working set.
    let misfit = o.invoke("table", large, cold).unwrap();
    assert_eq!(
        String::from_utf8(misfit.response.clone()).unwrap(),
        format!("{{\"sum\":{}}}", expected_sum(16))
    );
    assert!(
        misfit.rerecord,
        "{} lazy faults",
        misfit.invocation.lazy_faults
    );
    assert!(snapshot.working_set().is_none(), "the WS file is dropped");
    let again = o.invoke("table", large, cold).unwrap();
    assert!(
        again.cold_start.as_ref().unwrap().recording,
        "the next cold start re-records"
    );
    reap_pager::policy::wait_for_ws_writes();
    assert!(snapshot.working_set().is_some());
    let after = o.invoke("table", large, cold).unwrap();
    assert!(!after.rerecord);
    assert!(
        after.invocation.lazy_faults * 10 < misfit.invocation.lazy_faults,
        "{} vs {}",
        after.invocation.lazy_faults,
        misfit.invocation.lazy_faults
    );
    let metrics = o.metrics.encode();
    assert!(
        metrics.contains(r#"reap_rerecords_total{function="table"} 1"#),
        "{metrics}"
    );
    drop(o);
    std::fs::remove_dir_all(&home).unwrap();
}

/// What the `misbehave` guest answers to `{"do":"read","mib":N}`.
fn expected_sum(mib: usize) -> String {
    let sum: u64 = (0..mib << 20)
        .step_by(4096)
        .map(|i| (i % 251) as u64 + 1)
        .sum();
    sum.to_string()
}

/// What is left in the store besides the functions' single live versions: files in
/// `staging/`, temporary links, versions other than the live one.
fn leftovers(home: &Path) -> Vec<String> {
    let mut found: Vec<String> = std::fs::read_dir(home.join("staging"))
        .unwrap()
        .flatten()
        .map(|e| format!("staging/{}", e.file_name().to_string_lossy()))
        .collect();
    for f in std::fs::read_dir(home.join("functions")).unwrap().flatten() {
        let dir = f.path();
        for e in std::fs::read_dir(&dir).unwrap().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n != "current" && n != "versions" {
                found.push(n);
            }
        }
        let live = std::fs::read_link(dir.join("current")).unwrap();
        for v in std::fs::read_dir(dir.join("versions")).unwrap().flatten() {
            if Path::new("versions").join(v.file_name()) != live {
                found.push(format!("old version {}", v.file_name().to_string_lossy()));
            }
        }
    }
    found
}

#[test]
fn concurrent_deploys_of_one_name_in_one_process_leave_a_working_function() {
    use reap_orchestrator::store::FunctionStore;
    use reap_orchestrator::{InvokeOptions, Orchestrator};
    let home = temp_dir("deploys-threads");
    let (store, _) = FunctionStore::open(&home).unwrap();
    let image = std::fs::read(guest("helloworld")).unwrap();
    let o = Orchestrator::new(store.clone(), pool_config()).unwrap();
    for round in 0..20 {
        let versions: Vec<String> = std::thread::scope(|s| {
            let threads: Vec<_> = (0..8)
                .map(|_| {
                    s.spawn(|| {
                        store
                            .deploy("hello", &image, 64, Vec::new(), Duration::from_secs(60))
                            .map(|m| m.version)
                    })
                })
                .collect();
            threads
                .into_iter()
                .map(|t| {
                    t.join()
                        .unwrap()
                        .unwrap_or_else(|e| panic!("round {round}: {e}"))
                })
                .collect()
        });
        let live = store.get("hello").unwrap().manifest.version;
        assert!(
            versions.contains(&live),
            "round {round}: {live} not in {versions:?}"
        );
        let answer = o
            .invoke("hello", br#"{"name":"Ada"}"#, InvokeOptions::default())
            .unwrap_or_else(|e| panic!("round {round}: {e}"));
        assert_eq!(answer.response, br#"{"greeting":"Hello, Ada!"}"#);
        assert_eq!(leftovers(&home), Vec::<String>::new(), "round {round}");
    }
    drop(o);
    std::fs::remove_dir_all(&home).unwrap();
}

#[test]
fn concurrent_deploys_of_one_name_over_http_and_the_cli_leave_a_working_function() {
    let server = Server::start("deploys-http", &[]);
    let image = std::fs::read(guest("helloworld")).unwrap();
    let binary = guest("helloworld");
    let url = format!("{}/functions/hello", server.base);
    for round in 0..20 {
        std::thread::scope(|s| {
            let http: Vec<_> = (0..8)
                .map(|_| s.spawn(|| request("PUT", &url, &image)))
                .collect();
            // Every fourth round, two CLI deploys (another process) join in.
            let cli: Vec<_> = (0..if round % 4 == 0 { 2 } else { 0 })
                .map(|_| {
                    s.spawn(|| {
                        server.cli(&["deploy", "hello", "--binary", binary.to_str().unwrap()])
                    })
                })
                .collect();
            for t in http {
                let r = t.join().unwrap();
                assert_eq!(r.status, 201, "round {round}: {}", r.body);
            }
            for t in cli {
                let out = t.join().unwrap();
                assert!(
                    out.status.success(),
                    "round {round}: {}",
                    common::stderr(&out)
                );
            }
        });
        let answer = server.invoke("hello", r#"{"name": "Ada"}"#);
        assert_eq!(answer.status, 200, "round {round}: {}", answer.body);
        assert_eq!(answer.body, r#"{"greeting":"Hello, Ada!"}"#);
        assert_eq!(
            leftovers(&server.home),
            Vec::<String>::new(),
            "round {round}"
        );
    }
}

#[test]
fn slow_connections_are_cut_off_and_healthy_requests_are_answered() {
    use std::io::{Read, Write};
    // Defaults: 1,000 idle or trickling connections fit under the connection cap.
    let server = Server::start("slowloris", &[]);
    let slow: Vec<std::net::TcpStream> = (0..1000)
        .map(|i| {
            let mut c = std::net::TcpStream::connect(server.addr()).unwrap();
            if i % 2 == 0 {
                c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
                    .unwrap();
            }
            c
        })
        .collect();
    let start = Instant::now();
    let r = request("GET", &format!("{}/healthz", server.base), b"");
    assert_eq!(r.status, 200);
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "{:?}",
        start.elapsed()
    );
    drop(slow);

    // A small cap and short timeouts: 1,000 slow connections fill the cap many times
    // over; each is cut after the header timeout, and the healthy request, queued
    // behind them, is answered once they are.
    let server = Server::start(
        "slowloris-cap",
        &["--max-connections", "200", "--header-timeout", "1"],
    );
    let mut slow: Vec<std::net::TcpStream> = (0..1000)
        .map(|_| std::net::TcpStream::connect(server.addr()).unwrap())
        .collect();
    let start = Instant::now();
    let healthy = {
        let url = format!("{}/healthz", server.base);
        std::thread::spawn(move || request("GET", &url, b""))
    };
    // One byte a second on every slow connection, while the server lets it.
    let trickle = std::thread::spawn(move || {
        let mut open = slow.len();
        while open > 0 && start.elapsed() < Duration::from_secs(30) {
            open = 0;
            for c in &mut slow {
                open += usize::from(c.write_all(b"G").is_ok());
            }
            std::thread::sleep(Duration::from_secs(1));
        }
        slow
    });
    let r = healthy.join().unwrap();
    let took = start.elapsed();
    assert_eq!(r.status, 200);
    assert!(took < Duration::from_secs(20), "{took:?}");
    // Every slow connection was closed by the server.
    let slow = trickle.join().unwrap();
    for mut c in slow {
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = [0u8; 16];
        assert!(matches!(c.read(&mut buf), Ok(0) | Err(_)));
    }
    eprintln!("healthy request answered after {took:?} behind 1000 slow connections");
}

#[test]
fn a_large_upload_is_streamed_to_disk_and_keeps_the_server_rss_flat() {
    use std::io::{Read, Write};
    let server = Server::start("upload-rss", &[]);
    // Warm the server up so its pools and buffers exist before measuring.
    assert_eq!(server.deploy("hello", &guest("helloworld")).status, 201);
    let before = server.status_kb("VmRSS");
    let size: u64 = 256 << 20;
    let mut c = std::net::TcpStream::connect(server.addr()).unwrap();
    write!(
        c,
        "PUT /functions/big HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: {size}\r\n\r\n"
    )
    .unwrap();
    let chunk = vec![0x5au8; 1 << 20];
    let mut peak = before;
    for i in 0..size >> 20 {
        c.write_all(&chunk).unwrap();
        if i % 16 == 0 {
            peak = peak.max(server.status_kb("VmRSS"));
        }
    }
    let mut answer = String::new();
    c.read_to_string(&mut answer).unwrap();
    // Not an ELF file: refused once all of it is on disk, and removed.
    assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
    assert!(answer.contains("not an ELF file"), "{answer}");
    let after = server.status_kb("VmRSS");
    peak = peak.max(after);
    eprintln!(
        "upload of {} MiB: RSS {before} kB before, {peak} kB peak, {after} kB after",
        size >> 20
    );
    assert!(
        peak < before + 32 * 1024,
        "RSS grew from {before} kB to {peak} kB for a {size}-byte upload"
    );
    assert_eq!(leftovers(&server.home), Vec::<String>::new());
}

#[test]
fn a_function_writing_1_gib_to_stderr_leaves_a_capped_log() {
    let cap: u64 = 1 << 20;
    let server = Server::start("log-cap", &["--log-max-bytes", &cap.to_string()]);
    assert_eq!(server.deploy("spew", &guest("misbehave")).status, 201);
    let start = Instant::now();
    let r = server.invoke("spew", r#"{"do":"spew","mib":1024}"#);
    assert_eq!(r.status, 200, "{}", r.body);
    eprintln!("1 GiB of stderr in {:?}", start.elapsed());
    let logs = server.home.join("logs");
    let mut total = 0;
    let mut names = Vec::new();
    for e in std::fs::read_dir(&logs).unwrap().flatten() {
        let len = e.metadata().unwrap().len();
        assert!(len <= cap, "{:?}: {len} bytes", e.file_name());
        total += len;
        names.push(e.file_name().to_string_lossy().into_owned());
    }
    names.sort();
    assert_eq!(names, ["spew.log", "spew.log.1"]);
    assert!(total <= 2 * cap, "{total}");
    // `reap logs` shows both, oldest first.
    let out = server.cli(&["logs", "spew"]);
    assert!(out.status.success());
    assert_eq!(out.stdout.len() as u64, total);
}

#[test]
fn many_distinct_unknown_syscalls_are_logged_briefly_and_counted() {
    let server = Server::start("syscalls", &[]);
    assert_eq!(server.deploy("calls", &guest("misbehave")).status, 201);
    for _ in 0..2 {
        let r = server.invoke("calls", r#"{"do":"syscalls","n":5000}"#);
        assert_eq!(r.status, 200, "{}", r.body);
    }
    // One warm instance made 10,000 calls of 5,000 numbers: 16 lines and a summary.
    let log = server.log();
    let lines = log
        .lines()
        .filter(|l| l.contains("guest system call"))
        .count();
    assert_eq!(lines, 16, "{log}");
    assert_eq!(
        log.lines()
            .filter(|l| l.contains("distinct unsupported"))
            .count(),
        1,
        "{log}"
    );
    let metric = |nr: &str| {
        server.metric(&format!(
            "reap_unknown_syscalls_total{{function=\"calls\",nr=\"{nr}\"}}"
        ))
    };
    assert_eq!(metric("1000"), Some(2));
    assert_eq!(metric("1015"), Some(2));
    assert_eq!(metric("1016"), None);
    assert_eq!(metric("other"), Some(2 * (5000 - 16)));
}

#[test]
fn a_function_larger_than_the_memory_budget_gets_503_while_a_small_one_answers() {
    // Charges: 256 + 8 MiB for "big" (over the budget), 32 + 8 MiB for "small".
    let server = Server::start(
        "budget",
        &["--memory-budget", "200", "--max-instances", "4"],
    );
    let deploy = |name: &str, mem: u32| {
        request(
            "PUT",
            &format!("{}/functions/{name}?mem={mem}", server.base),
            &std::fs::read(guest("helloworld")).unwrap(),
        )
    };
    // Deploys boot the function in the server too, outside the budget: they still work.
    assert_eq!(deploy("big", 256).status, 201);
    assert_eq!(deploy("small", 32).status, 201);
    assert_eq!(
        server.metric("reap_memory_budget_bytes"),
        Some(200 << 20),
        "the budget is shown"
    );

    let base = server.base.clone();
    let threads: Vec<_> = (0..8)
        .map(|i| {
            let base = base.clone();
            let name = if i % 2 == 0 { "big" } else { "small" };
            std::thread::spawn(move || {
                let r = request(
                    "POST",
                    &format!("{base}/functions/{name}/invoke"),
                    br#"{"name": "Ada"}"#,
                );
                (name, r.status, r.body)
            })
        })
        .collect();
    for t in threads {
        let (name, status, body) = t.join().unwrap();
        if name == "big" {
            assert_eq!(status, 503, "{body}");
            let error: serde_json::Value = serde_json::from_str(&body).unwrap();
            assert_eq!(
                error["error"],
                "not enough memory for function \"big\": \
                 needs 264 MiB, more than the whole budget of 200 MiB"
            );
            assert_eq!(error["kind"], "busy");
        } else {
            assert_eq!(status, 200, "{body}");
        }
    }
    // The server survives and goes on answering.
    let again = server.invoke("small", r#"{"name": "Bob"}"#);
    assert_eq!(again.status, 200, "{}", again.body);
    let charged = server.metric("reap_memory_charged_bytes").unwrap();
    assert!(
        charged > 0 && charged <= 200 << 20 && charged.is_multiple_of(40 << 20),
        "{charged} bytes charged: small instances of 40 MiB only"
    );
    assert!(
        server.metric("reap_invocation_errors_total{function=\"big\",kind=\"busy\"}") == Some(4),
        "{}",
        server.log()
    );
}

#[test]
fn idle_instances_of_other_functions_are_evicted_to_make_room_in_the_memory_budget() {
    // Charges: 128 + 8 MiB for "first", 64 + 8 MiB for "second": not both in 200 MiB.
    let server = Server::start("evict", &["--memory-budget", "200"]);
    for (name, mem) in [("first", 128), ("second", 64)] {
        let deployed = request(
            "PUT",
            &format!("{}/functions/{name}?mem={mem}", server.base),
            &std::fs::read(guest("helloworld")).unwrap(),
        );
        assert_eq!(deployed.status, 201, "{}", deployed.body);
    }
    let first = server.invoke("first", r#"{"name": "Ada"}"#);
    assert_eq!(first.status, 200, "{}", first.body);
    assert_eq!(server.metric("reap_memory_charged_bytes"), Some(136 << 20));

    let second = server.invoke("second", r#"{"name": "Bob"}"#);
    assert_eq!(second.status, 200, "{}", second.body);
    assert_eq!(second.header("x-reap-start"), Some("cold"));
    assert_eq!(
        server.metric("reap_instances{function=\"first\"}"),
        Some(0),
        "the idle instance of \"first\" made room"
    );
    assert_eq!(server.metric("reap_memory_charged_bytes"), Some(72 << 20));

    // As root, the server made itself a less likely OOM victim.
    let is_root = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
    if is_root {
        let adj =
            std::fs::read_to_string(format!("/proc/{}/oom_score_adj", server.child.id())).unwrap();
        // Some sandboxes refuse the write even to root (EIO): then the server says so.
        assert!(
            adj.trim() == "-500" || server.log().contains("cannot lower oom_score_adj"),
            "oom_score_adj {adj}: {}",
            server.log()
        );
    }
}

/// The orchestrator's defaults, its instance processes run from the `reap` binary (this
/// test program is not one).
fn pool_config() -> reap_orchestrator::PoolConfig {
    let mut config = reap_orchestrator::PoolConfig::default();
    config.workers.exe = reap_test_support::reap_binary();
    config
}

/// The pids of the children of `pid` (all its threads').
fn children(pid: u32) -> Vec<u32> {
    let mut pids = Vec::new();
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let list = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        pids.extend(
            list.split_whitespace()
                .filter_map(|p| p.parse::<u32>().ok()),
        );
    }
    pids
}

#[test]
fn a_killed_or_panicking_instance_process_fails_one_invocation_and_the_function_keeps_serving() {
    let server = Server::start(
        "process",
        &["--prestart", "0", "--timeout", "20", "--max-instances", "2"],
    );
    assert_eq!(server.deploy("m", &guest("misbehave")).status, 201);
    assert_eq!(server.deploy("hello", &guest("helloworld")).status, 201);
    assert_eq!(server.invoke("hello", r#"{"name":"a"}"#).status, 200);
    let before = children(server.child.id());
    assert_eq!(before.len(), 1, "hello's idle instance process");

    // A guest looping forever; its instance process is killed from outside.
    let base = server.base.clone();
    let looping = std::thread::spawn(move || {
        request(
            "POST",
            &format!("{base}/functions/m/invoke"),
            br#"{"do":"loop"}"#,
        )
    });
    let deadline = Instant::now() + Duration::from_secs(10);
    let victim = loop {
        // The looping instance's process: the child that is not hello's idle one.
        if let Some(&p) = children(server.child.id())
            .iter()
            .find(|p| !before.contains(p))
        {
            break p;
        }
        assert!(Instant::now() < deadline, "no instance process of m");
        std::thread::sleep(Duration::from_millis(50));
    };
    std::thread::sleep(Duration::from_millis(300));
    // SAFETY: sending SIGKILL to a process of this test's server.
    assert_eq!(unsafe { libc::kill(victim as i32, libc::SIGKILL) }, 0);
    let killed = looping.join().unwrap();
    assert_eq!(killed.status, 502, "{}", killed.body);
    assert!(
        killed.body.contains("was killed by signal 9 (SIGKILL)"),
        "{}",
        killed.body
    );
    assert_eq!(killed.json()["kind"], "crash");
    // The function and the others go on.
    let again = server.invoke("m", r#"{"do":"log"}"#);
    assert_eq!(again.status, 200, "{}", again.body);
    assert_eq!(server.invoke("hello", r#"{"name":"b"}"#).status, 200);
}

#[test]
fn a_panic_in_the_invocation_path_fails_that_invocation_only() {
    let home = temp_dir("orch-panic");
    std::fs::create_dir_all(&home).unwrap();
    let log = std::fs::File::create(home.join("serve.stderr")).unwrap();
    let child = Command::new(common::reap_binary())
        .args(["serve", "--listen", "127.0.0.1:0"])
        .env("REAP_HOME", &home)
        .env("REAP_WORKER_FAULT", "panic-on-request:boom")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(30);
    let base = loop {
        if let Ok(bytes) = std::fs::read(home.join("server.json"))
            && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes)
        {
            break format!("http://{}", v["listen"].as_str().unwrap());
        }
        assert!(Instant::now() < deadline, "server did not start");
        std::thread::sleep(Duration::from_millis(50));
    };
    let server = Server { child, home, base };
    assert_eq!(server.deploy("hello", &guest("helloworld")).status, 201);
    // More panics than the function has instance slots (8): none is lost.
    for i in 0..10 {
        let r = server.invoke("hello", r#"{"name":"boom"}"#);
        assert_eq!(r.status, 502, "{i}: {}", r.body);
        assert!(r.body.contains("panicked"), "{}", r.body);
        let ok = server.invoke("hello", r#"{"name":"Ada"}"#);
        assert_eq!(ok.status, 200, "{i}: {}", ok.body);
        assert_eq!(ok.body, r#"{"greeting":"Hello, Ada!"}"#);
    }
}

#[test]
fn a_damaged_snapshot_marks_the_function_damaged_until_it_is_deployed_again() {
    use reap_orchestrator::store::FunctionStore;
    use reap_orchestrator::{FailureKind, InvokeOptions, Orchestrator};
    use std::io::{Read, Seek, SeekFrom, Write};
    use std::os::fd::AsRawFd;
    let home = temp_dir("damaged");
    let (store, _) = FunctionStore::open(&home).unwrap();
    let image = std::fs::read(guest("helloworld")).unwrap();
    store
        .deploy("hello", &image, 64, Vec::new(), Duration::from_secs(60))
        .unwrap();
    let snapshot = store.get("hello").unwrap().snapshot();
    // Flip a byte of the memory file's first data page.
    let mut memory = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(snapshot.memory())
        .unwrap();
    // SAFETY: lseek on a file we own.
    let data = unsafe { libc::lseek(memory.as_raw_fd(), 0, libc::SEEK_DATA) };
    assert!(data >= 0);
    let at = data as u64 + 100;
    let mut byte = [0u8];
    memory.seek(SeekFrom::Start(at)).unwrap();
    memory.read_exact(&mut byte).unwrap();
    memory.seek(SeekFrom::Start(at)).unwrap();
    memory.write_all(&[byte[0] ^ 0xff]).unwrap();
    drop(memory);

    let o = Orchestrator::new(store.clone(), pool_config()).unwrap();
    let file = InvokeOptions {
        force_cold: true,
        memory: reap_vmm::instance::MemoryMode::File,
    };
    let err = o.invoke("hello", br#"{"name":"x"}"#, file).unwrap_err();
    assert_eq!(err.kind(), FailureKind::Store, "{err:?}");
    assert!(
        format!("{err:?}").contains("does not match its checksum"),
        "{err:?}"
    );
    // From then on refused at once, in every mode, with the reason.
    for memory in [
        reap_vmm::instance::MemoryMode::Reap,
        reap_vmm::instance::MemoryMode::Lazy,
    ] {
        let options = InvokeOptions {
            force_cold: true,
            memory,
        };
        let err = o.invoke("hello", br#"{"name":"x"}"#, options).unwrap_err();
        assert_eq!(err.kind(), FailureKind::Store);
        let text = reap_error::chain(&err);
        assert!(text.contains("snapshot is damaged"), "{text}");
    }
    // A new deploy is a new, healthy version.
    store
        .deploy("hello", &image, 64, Vec::new(), Duration::from_secs(60))
        .unwrap();
    let answer = o
        .invoke("hello", br#"{"name":"x"}"#, InvokeOptions::default())
        .unwrap();
    assert_eq!(answer.response, br#"{"greeting":"Hello, x!"}"#);
    std::fs::remove_dir_all(&home).unwrap();
}
