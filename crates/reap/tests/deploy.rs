//! Deploying programs from a root file system and from OCI image archives into the
//! store (`reap deploy --rootfs/--image`, `PUT /functions/NAME`), then invoking them in
//! every memory mode through jailed instance processes, compared with the same program
//! run natively in a chroot of the same tree. The images are built here with the `tar`
//! crate from the Debian root file system of `scripts/rootfs`. Needs root and /dev/kvm.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use reap_test_support::oci::{self, Format, Layer};
use reap_test_support::{reap_binary, run_with_input, stderr, stdout, temp_dir};

fn debian() -> PathBuf {
    reap_test_support::debian_rootfs()
}

/// A JSON handler that reports what it sees: its environment, working directory,
/// arguments, `/app`, and whether the file the image's upper layer whites out is there.
const HANDLER: &str = r#"
import sys, json, os, hashlib, zlib
greeting = os.environ.get("GREETING", "?")
for line in sys.stdin:
    req = json.loads(line)
    name = req.get("name", "nobody")
    out = {"greeting": greeting + ", " + name, "cwd": os.getcwd(), "argv": sys.argv,
           "app": sorted(os.listdir("/app")), "mime_types": os.path.exists("/etc/mime.types"),
           "passwd": os.path.exists("/etc/passwd"),
           "sha": hashlib.sha256(name.encode()).hexdigest()[:16], "crc": zlib.crc32(line.encode())}
    sys.stdout.write(json.dumps(out) + "\n")
    sys.stdout.flush()
"#;

/// The image's environment (`Env`); python writes no bytecode into the tree natively.
const IMAGE_ENV: [&str; 3] = [
    "PATH=/usr/bin:/bin",
    "GREETING=hello from the image",
    "PYTHONDONTWRITEBYTECODE=1",
];

/// The answer of `args` run natively in a chroot of `root`, with exactly `env` and the
/// working directory `workdir`, to the request `request`.
fn native(root: &Path, env: &[&str], workdir: &str, args: &[&str], request: &str) -> String {
    let mut cmd = Command::new("chroot");
    cmd.arg(root)
        .args(["/usr/bin/env", "-i", "-C", workdir])
        .args(env)
        .args(args);
    let out = run_with_input(&mut cmd, format!("{request}\n").as_bytes());
    assert!(out.status.success(), "natively: {}", stderr(&out));
    stdout(&out).trim_end().to_owned()
}

/// `reap ARGS` on the store `home`.
fn reap_in(home: &Path, args: &[&str]) -> Output {
    let mut cmd = Command::new(reap_binary());
    cmd.args(args).env("REAP_HOME", home);
    run_with_input(&mut cmd, b"")
}

/// A cold start of `name` in `mode` from the CLI (an instance process of its own).
fn invoke_cold(home: &Path, name: &str, mode: &str, request: &str) -> String {
    let out = reap_in(
        home,
        &[
            "invoke", name, "--data", request, "--cold", "--memory", mode,
        ],
    );
    assert!(
        out.status.success(),
        "invoke {name} ({mode}): {}",
        stderr(&out)
    );
    stdout(&out).trim_end().to_owned()
}

/// The two layers of the test image: the Debian tree, then `/app/handler.py` and a
/// whiteout of `/etc/mime.types`.
fn image_layers(dir: &Path) -> Vec<Layer> {
    let started = Instant::now();
    let lower = Layer::from_dir(dir.join("debian.tar"), &debian()).unwrap();
    eprintln!(
        "packed the Debian tree into a layer of {} MiB in {:.2} s",
        std::fs::metadata(&lower.0).unwrap().len() >> 20,
        started.elapsed().as_secs_f64()
    );
    let upper = Layer::build(dir.join("app.tar"), |b| {
        oci::add_dir(b, "app")?;
        oci::add_file(b, "app/handler.py", HANDLER.as_bytes(), 0o644)?;
        oci::add_file(b, "etc/.wh.mime.types", b"", 0o644)
    })
    .unwrap();
    vec![lower, upper]
}

fn image_config() -> serde_json::Value {
    serde_json::json!({
        "Entrypoint": ["/usr/bin/python3", "/app/handler.py"],
        "Cmd": ["--from-cmd"],
        "Env": IMAGE_ENV,
        "WorkingDir": "/app",
    })
}

/// A `reap serve` process on the store `home`.
struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start(home: &Path, extra: &[&str]) -> Server {
        let log = std::fs::File::create(home.join("serve.stderr")).unwrap();
        let child = Command::new(reap_binary())
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(extra)
            .env("REAP_HOME", home)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn reap serve");
        let deadline = Instant::now() + Duration::from_secs(30);
        let addr = loop {
            if let Ok(bytes) = std::fs::read(home.join("server.json"))
                && let Ok(v) = serde_json::from_slice::<serde_json::Value>(&bytes)
            {
                break v["listen"].as_str().unwrap().to_owned();
            }
            assert!(Instant::now() < deadline, "server did not start");
            std::thread::sleep(Duration::from_millis(50));
        };
        Server { child, addr }
    }

    /// One request with `headers`; the status, the response's headers and its body.
    fn request(
        &self,
        method: &str,
        path: &str,
        headers: &[(&str, &str)],
        body: &[u8],
    ) -> (u16, String, String) {
        let mut stream = std::net::TcpStream::connect(&self.addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(180)))
            .unwrap();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        for (k, v) in headers {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        stream.write_all(head.as_bytes()).unwrap();
        // The server may answer (and close) before the whole body is sent.
        let _ = stream.write_all(body);
        let mut reply = Vec::new();
        let _ = stream.read_to_end(&mut reply);
        let reply = String::from_utf8_lossy(&reply).into_owned();
        let (head, body) = reply.split_once("\r\n\r\n").unwrap_or((&reply, ""));
        let status = head
            .split(' ')
            .nth(1)
            .and_then(|c| c.parse().ok())
            .unwrap_or_else(|| panic!("no status in {reply:?}"));
        (status, head.to_ascii_lowercase(), body.to_owned())
    }

    fn invoke(&self, name: &str, query: &str, request: &str) -> (String, String) {
        let (status, head, body) = self.request(
            "POST",
            &format!("/functions/{name}/invoke{query}"),
            &[("content-type", "application/json")],
            request.as_bytes(),
        );
        assert_eq!(status, 200, "invoke {name}{query}: {body}");
        (head, body.trim_end().to_owned())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A test's directory, removed when the test ends, by a failure too (its servers,
/// declared after it, are stopped first).
struct TestDir(PathBuf);

impl TestDir {
    fn new(name: &str) -> Self {
        Self(temp_dir(name))
    }
}

impl Drop for TestDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The entries of the store's `staging/` (nothing once a deploy is over).
fn staging(home: &Path) -> Vec<String> {
    std::fs::read_dir(home.join("staging"))
        .map(|d| {
            d.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn an_oci_image_deploys_from_the_cli_and_over_http_and_answers_like_natively_in_every_mode() {
    let guard = TestDir::new("deploy-image");
    let dir = guard.0.clone();
    let home = dir.join("home");
    let layers = image_layers(&dir);
    let started = Instant::now();
    let oci_archive = dir.join("image-oci.tar");
    oci::write_archive(
        &oci_archive,
        Format::Oci { gzip: false },
        &layers,
        image_config(),
    )
    .unwrap();
    eprintln!(
        "wrote the OCI layout archive ({} MiB) in {:.2} s",
        std::fs::metadata(&oci_archive).unwrap().len() >> 20,
        started.elapsed().as_secs_f64()
    );
    let request = r#"{"name":"Ada"}"#;

    // From the CLI (booted in this process), cold starts in every memory mode.
    let started = Instant::now();
    let out = reap_in(
        &home,
        &["deploy", "img", "--image", oci_archive.to_str().unwrap()],
    );
    assert!(out.status.success(), "deploy: {}", stderr(&out));
    eprintln!(
        "reap deploy --image: {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let version = std::fs::read_link(home.join("functions/img/current")).unwrap();
    let image_root = home.join("functions/img").join(&version).join("rootfs");
    assert!(image_root.join("app/handler.py").exists());
    assert!(
        !image_root.join("etc/mime.types").exists() && debian().join("etc/mime.types").exists(),
        "the upper layer's whiteout removes the lower layer's file"
    );
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(home.join("functions/img/current/manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["image"]["source"]["kind"], "oci");
    assert_eq!(manifest["image"]["source"]["layers"], 2);
    assert_eq!(manifest["image"]["workdir"], "/app");
    let mut answers: Vec<String> = ["file", "lazy", "reap", "reap"]
        .iter()
        .map(|mode| invoke_cold(&home, "img", mode, request))
        .collect();

    // Over HTTP, the same image in docker-save's format, built by a jailed deploy.
    let docker_archive = dir.join("image-docker.tar");
    oci::write_archive(&docker_archive, Format::DockerSave, &layers, image_config()).unwrap();
    // What the store holds no longer depends on these (and /tmp is spared 400 MB).
    for layer in &layers {
        std::fs::remove_file(&layer.0).unwrap();
    }
    std::fs::remove_file(&oci_archive).unwrap();
    let server = Server::start(&home, &[]);
    let upload = std::fs::read(&docker_archive).unwrap();
    std::fs::remove_file(&docker_archive).unwrap();
    let (status, _, body) = server.request(
        "PUT",
        "/functions/img-http",
        &[("content-type", "application/x-tar")],
        &upload,
    );
    drop(upload);
    assert_eq!(status, 201, "{body}");
    let manifest: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(manifest["image"]["source"]["kind"], "oci");
    assert_eq!(manifest["image"]["source"]["archive"], "upload");
    let mut http = Vec::new();
    for mode in ["file", "lazy", "reap", "reap"] {
        let (head, answer) =
            server.invoke("img-http", &format!("?cold=true&memory={mode}"), request);
        assert!(head.contains(&format!("x-reap-memory: {mode}")), "{head}");
        http.push(answer);
    }
    let (head, warm) = server.invoke("img-http", "", request);
    assert!(head.contains("x-reap-start: warm"), "{head}");
    http.push(warm);
    assert!(staging(&home).is_empty(), "{:?}", staging(&home));
    drop(server);
    // The archive the CLI deployed from is gone: the function does not need it.
    answers.push(invoke_cold(&home, "img", "lazy", request));

    // Natively, in a chroot of the unpacked image, with the image's Env and WorkingDir.
    let expected = native(
        &image_root,
        &IMAGE_ENV,
        "/app",
        &["/usr/bin/python3", "/app/handler.py", "--from-cmd"],
        request,
    );
    let parsed: serde_json::Value = serde_json::from_str(&expected).unwrap();
    assert_eq!(parsed["greeting"], "hello from the image, Ada");
    assert_eq!(parsed["cwd"], "/app");
    assert_eq!(parsed["mime_types"], false);
    assert_eq!(
        parsed["argv"],
        serde_json::json!(["/app/handler.py", "--from-cmd"])
    );
    for (i, answer) in answers.iter().chain(&http).enumerate() {
        assert_eq!(answer, &expected, "answer {i}");
    }
}

#[test]
fn a_root_file_system_deploy_keeps_answering_after_its_directory_is_removed() {
    let guard = TestDir::new("deploy-rootfs");
    let dir = guard.0.clone();
    let home = dir.join("home");
    // The user's directory: a copy of the Debian tree with the handler in /app.
    let user = dir.join("user-root");
    let copied = Command::new("cp")
        .arg("-a")
        .arg(debian())
        .arg(&user)
        .status()
        .unwrap();
    assert!(copied.success());
    std::fs::create_dir_all(user.join("app")).unwrap();
    std::fs::write(user.join("app/handler.py"), HANDLER).unwrap();
    let env = [
        "GREETING=hello from a directory",
        "PYTHONDONTWRITEBYTECODE=1",
    ];
    let request = r#"{"name":"Grace"}"#;
    let args = ["/usr/bin/python3", "/app/handler.py", "--x"];

    let mut deploy = vec![
        "deploy",
        "fs",
        "--rootfs",
        user.to_str().unwrap(),
        "--workdir",
        "/app",
    ];
    for e in &env {
        deploy.extend(["--env", e]);
    }
    deploy.push("--");
    deploy.extend(args);
    let started = Instant::now();
    let out = reap_in(&home, &deploy);
    assert!(out.status.success(), "deploy: {}", stderr(&out));
    eprintln!(
        "reap deploy --rootfs: {:.2} s",
        started.elapsed().as_secs_f64()
    );
    let manifest: serde_json::Value = serde_json::from_slice(
        &std::fs::read(home.join("functions/fs/current/manifest.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(manifest["image"]["source"]["kind"], "rootfs");
    assert_eq!(
        manifest["image"]["source"]["dir"],
        std::fs::canonicalize(&user).unwrap().to_str().unwrap()
    );
    let before: Vec<String> = ["file", "lazy", "reap", "reap"]
        .iter()
        .map(|mode| invoke_cold(&home, "fs", mode, request))
        .collect();
    let expected = native(&user, &env, "/app", &args, request);
    let parsed: serde_json::Value = serde_json::from_str(&expected).unwrap();
    assert_eq!(parsed["greeting"], "hello from a directory, Grace");
    assert_eq!(parsed["mime_types"], true);
    for answer in &before {
        assert_eq!(answer, &expected);
    }

    // The user's directory gone, the function still answers: it has its own copy.
    std::fs::remove_dir_all(&user).unwrap();
    for mode in ["file", "reap"] {
        assert_eq!(invoke_cold(&home, "fs", mode, request), expected, "{mode}");
    }

    // Over HTTP, from a path on the server's machine: only beneath --rootfs-from.
    let allowed = dir.join("allowed");
    std::fs::create_dir_all(&allowed).unwrap();
    let server = Server::start(&home, &["--rootfs-from", allowed.to_str().unwrap()]);
    let body = serde_json::json!({
        "rootfs": debian(),
        "args": ["/usr/bin/python3", "-c", HANDLER],
        "env": env,
    });
    let (status, _, reply) = server.request(
        "PUT",
        "/functions/fs-http",
        &[("content-type", "application/json")],
        body.to_string().as_bytes(),
    );
    assert_eq!(status, 400, "{reply}");
    assert!(reply.contains("not allowed"), "{reply}");
    let served = allowed.join("root");
    let copied = Command::new("cp")
        .arg("-a")
        .arg(debian())
        .arg(&served)
        .status()
        .unwrap();
    assert!(copied.success());
    std::fs::create_dir_all(served.join("app")).unwrap();
    let body = serde_json::json!({
        "rootfs": served,
        "args": ["/usr/bin/python3", "-c", HANDLER],
        "env": env,
        "workdir": "/tmp",
    });
    let (status, _, reply) = server.request(
        "PUT",
        "/functions/fs-http",
        &[("content-type", "application/json")],
        body.to_string().as_bytes(),
    );
    assert_eq!(status, 201, "{reply}");
    let expected = native(
        &served,
        &env,
        "/tmp",
        &["/usr/bin/python3", "-c", HANDLER],
        request,
    );
    for query in ["?cold=true&memory=lazy", ""] {
        let (_, answer) = server.invoke("fs-http", query, request);
        assert_eq!(answer, expected, "{query}");
    }
    drop(server);
}

/// `reap deploy bad ARGS` fails with an error containing `expected`, and leaves no
/// function and nothing in `staging/`.
fn refused(home: &Path, args: &[&str], expected: &str) {
    let mut all = vec!["deploy", "bad"];
    all.extend(args);
    let out = reap_in(home, &all);
    let err = stderr(&out);
    assert!(!out.status.success(), "{args:?} deployed");
    assert!(err.contains(expected), "{args:?}: {err}");
    assert!(
        !home.join("functions/bad").exists(),
        "{args:?} left a function"
    );
    assert!(
        staging(home).is_empty(),
        "{args:?} left {:?}",
        staging(home)
    );
}

#[test]
fn bad_images_and_root_file_systems_are_refused_and_leave_nothing() {
    let guard = TestDir::new("deploy-bad");
    let dir = guard.0.clone();
    let home = dir.join("home");
    let path = |name: &str| dir.join(name).to_str().unwrap().to_owned();
    // A small good image (busybox from the Debian tree, static) to damage.
    let layer = Layer::build(dir.join("busybox.tar"), |b| {
        b.append_path_with_name(debian().join("bin/busybox"), "bin/busybox")?;
        oci::add_dir(b, "tmp")
    })
    .unwrap();
    let config = serde_json::json!({"Entrypoint": ["/bin/busybox", "cat"]});
    let good = dir.join("good.tar");
    let config_json = oci::write_archive(
        &good,
        Format::Oci { gzip: true },
        std::slice::from_ref(&layer),
        config.clone(),
    )
    .unwrap();

    refused(
        &home,
        &["--image", &path("missing.tar")],
        "cannot read the image archive",
    );
    std::fs::write(dir.join("text.tar"), vec![b'x'; 2048]).unwrap();
    refused(&home, &["--image", &path("text.tar")], "not a tar file");
    let cut = dir.join("cut.tar");
    std::fs::copy(&good, &cut).unwrap();
    let len = std::fs::metadata(&cut).unwrap().len();
    std::fs::File::options()
        .write(true)
        .open(&cut)
        .unwrap()
        .set_len(len / 3)
        .unwrap();
    refused(
        &home,
        &["--image", &path("cut.tar")],
        "corrupt or truncated",
    );
    let plain = Layer::build(dir.join("plain.tar"), |b| {
        oci::add_file(b, "hello", b"hi", 0o644)
    })
    .unwrap();
    refused(
        &home,
        &["--image", plain.0.to_str().unwrap()],
        "neither index.json",
    );
    let config_blob = format!(
        "blobs/sha256/{}",
        reap_test_support::oci::sha256_file(&{
            let p = dir.join("config.json");
            std::fs::write(&p, &config_json).unwrap();
            p
        })
        .unwrap()
    );
    oci::rewrite(&good, &dir.join("no-config.tar"), &config_blob, |_, b| b).unwrap();
    refused(
        &home,
        &["--image", &path("no-config.tar")],
        "does not hold the image config",
    );
    let damaged = dir.join("damaged.tar");
    std::fs::copy(&good, &damaged).unwrap();
    oci::flip_after(&damaged, b"\"Entrypoint\":[\"/bin/").unwrap();
    refused(
        &home,
        &["--image", &path("damaged.tar")],
        "does not match its digest",
    );
    let no_program = dir.join("no-program.tar");
    oci::write_archive(
        &no_program,
        Format::DockerSave,
        std::slice::from_ref(&layer),
        serde_json::json!({"Env": ["A=1"]}),
    )
    .unwrap();
    refused(
        &home,
        &["--image", &path("no-program.tar")],
        "neither Entrypoint nor Cmd",
    );
    let outside = dir.join("outside");
    std::fs::create_dir_all(&outside).unwrap();
    let escape = Layer::build(dir.join("escape.layer"), |b| {
        oci::add_link(
            b,
            tar::EntryType::Symlink,
            "link",
            outside.to_str().unwrap(),
        )?;
        oci::add_file(b, "link/evil", b"hi", 0o644)
    });
    let escape = escape.unwrap();
    oci::write_archive(
        &dir.join("escape.tar"),
        Format::Oci { gzip: false },
        &[escape],
        config.clone(),
    )
    .unwrap();
    refused(
        &home,
        &["--image", &path("escape.tar")],
        "goes through the symbolic link",
    );
    assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    refused(
        &home,
        &["--image", good.to_str().unwrap(), "--", "/bin/not-there"],
        "did not deploy",
    );

    refused(
        &home,
        &["--rootfs", &path("missing-dir"), "--", "/bin/busybox"],
        "not a readable directory",
    );
    refused(
        &home,
        &["--rootfs", good.to_str().unwrap(), "--", "/bin/busybox"],
        "not a readable directory",
    );
    refused(
        &home,
        &["--rootfs", debian().to_str().unwrap()],
        "no program to run",
    );

    // The good image deploys, and answers; `-- PROGRAM ARGS` replaces its Entrypoint.
    let out = reap_in(&home, &["deploy", "cat", "--image", good.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        invoke_cold(&home, "cat", "reap", r#"{"a":1}"#),
        r#"{"a":1}"#
    );
    let good_s = good.to_str().unwrap();
    let upper = [
        "deploy",
        "upper",
        "--image",
        good_s,
        "--",
        "/bin/busybox",
        "tr",
        "a-z",
        "A-Z",
    ];
    let out = reap_in(&home, &upper);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(
        invoke_cold(&home, "upper", "file", r#"{"a":1}"#),
        r#"{"A":1}"#
    );

    // Over HTTP: `x-reap-arg` replaces the image's Entrypoint too.
    let server = Server::start(&home, &[]);
    let (status, _, reply) = server.request(
        "PUT",
        "/functions/upper-http",
        &[
            ("content-type", "application/x-tar"),
            ("x-reap-arg", "/bin/busybox"),
            ("x-reap-arg", "tr"),
            ("x-reap-arg", "a-z"),
            ("x-reap-arg", "A-Z"),
        ],
        &std::fs::read(&good).unwrap(),
    );
    assert_eq!(status, 201, "{reply}");
    assert_eq!(
        server.invoke("upper-http", "", r#"{"b":2}"#).1,
        r#"{"B":2}"#
    );
    // An upload that is not an archive is refused (400) and removed.
    let (status, _, reply) = server.request(
        "PUT",
        "/functions/bad",
        &[("content-type", "application/x-tar")],
        &[b'x'; 4096],
    );
    assert_eq!(status, 400, "{reply}");
    assert!(reply.contains("not a tar file"), "{reply}");
    let (status, _, reply) = server.request(
        "PUT",
        "/functions/bad",
        &[("content-type", "application/x-tar")],
        &std::fs::read(&damaged).unwrap(),
    );
    assert_eq!(status, 400, "{reply}");
    assert!(reply.contains("does not match its digest"), "{reply}");
    let (status, _, reply) = server.request(
        "PUT",
        "/functions/bad",
        &[("content-type", "application/json")],
        br#"{"rootfs": "/"}"#,
    );
    assert_eq!(status, 400, "{reply}");
    assert!(reply.contains("not allowed"), "{reply}");
    drop(server);
    assert!(!home.join("functions/bad").exists());
    assert!(staging(&home).is_empty(), "{:?}", staging(&home));
}
