//! `reap deploy`, `invoke`, `ls`, `rm`, `logs` and `serve`: the orchestrator from the
//! command line. `invoke` and `rm` go through a running `reap serve` on the same store
//! when there is one (so its warm instances are used or torn down), and work on the
//! store directly otherwise.

use std::io::Write;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};

use reap_orchestrator::api::HttpLimits;
use reap_orchestrator::client::{self, ServerInfo};
use reap_orchestrator::store::{FunctionStore, ImageCommand};
use reap_orchestrator::{InvokeOptions, Orchestrator, PoolConfig};
use reap_vmm::instance::MemoryMode;

/// Opens the store, printing what it repaired.
pub fn open_store() -> anyhow::Result<FunctionStore> {
    let root = FunctionStore::default_root();
    let (store, notes) = FunctionStore::open(&root)
        .with_context(|| format!("cannot open the function store at {}", root.display()))?;
    for note in notes {
        eprintln!("reap: store: {}", note.0);
    }
    Ok(store)
}

/// What `reap deploy` deploys.
pub enum Source {
    /// A static binary.
    Binary(PathBuf),
    /// A program in a root file system (a directory).
    Rootfs(PathBuf),
    /// An OCI image archive.
    Image(PathBuf),
}

pub fn deploy(
    name: &str,
    source: Source,
    mem: u64,
    command: ImageCommand,
    timeout: Duration,
) -> anyhow::Result<()> {
    let store = open_store()?;
    let deployed = match source {
        Source::Binary(binary) => {
            let image = std::fs::read(&binary)
                .with_context(|| format!("cannot read {}", binary.display()))?;
            store.deploy(name, &image, mem, command.env, timeout)
        }
        Source::Rootfs(dir) => store.deploy_rootfs(name, &dir, command, mem, timeout),
        Source::Image(archive) => {
            let shown = archive.display().to_string();
            store.deploy_image(name, &archive, &shown, command, mem, timeout)
        }
    };
    let manifest = deployed.with_context(|| format!("cannot deploy {name}"))?;
    println!(
        "deployed {} (version {}): ready after {:.1} ms, snapshot {:.1} MiB of {} MiB",
        manifest.name,
        manifest.version,
        manifest.init_ms,
        manifest.snapshot_data_bytes as f64 / (1 << 20) as f64,
        manifest.mem_mib
    );
    Ok(())
}

pub fn invoke(
    name: &str,
    data: &str,
    cold: bool,
    memory: Option<MemoryMode>,
    json: bool,
    workers: reap_worker::WorkerConfig,
) -> anyhow::Result<()> {
    let store = open_store()?;
    if let Some(server) = client::running_server(&store) {
        return invoke_remote(&server, name, data, cold, memory, json);
    }
    // No server: a one-off instance in this process (always a cold start).
    let config = PoolConfig {
        workers,
        ..PoolConfig::default()
    };
    let orchestrator = Orchestrator::new(store, config).context("cannot start the orchestrator")?;
    let options = InvokeOptions {
        force_cold: cold,
        memory: memory.unwrap_or(MemoryMode::Reap),
    };
    let answer = orchestrator.invoke(name, data.as_bytes(), options)?;
    let mut out = std::io::stdout().lock();
    if json {
        let mut obj = serde_json::to_value(&answer)?;
        obj["response"] =
            serde_json::from_slice(&answer.response).unwrap_or(serde_json::Value::Null);
        writeln!(out, "{obj}")?;
    } else {
        out.write_all(&answer.response)?;
        writeln!(out)?;
    }
    Ok(())
}

fn invoke_remote(
    server: &ServerInfo,
    name: &str,
    data: &str,
    cold: bool,
    memory: Option<MemoryMode>,
    json: bool,
) -> anyhow::Result<()> {
    let reply = client::invoke(
        server,
        name,
        data.as_bytes(),
        cold,
        memory.map(MemoryMode::name),
    )
    .with_context(|| format!("cannot reach the server at {}", server.listen))?;
    if reply.status != 200 {
        let msg = serde_json::from_slice::<serde_json::Value>(&reply.body)
            .ok()
            .and_then(|v| v["error"].as_str().map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&reply.body).into_owned());
        bail!("{msg} (HTTP {})", reply.status);
    }
    let mut out = std::io::stdout().lock();
    if json {
        let mut obj = serde_json::json!({
            "response": serde_json::from_slice::<serde_json::Value>(&reply.body).unwrap_or(serde_json::Value::Null),
            "via": server.listen.to_string(),
        });
        for (k, v) in &reply.headers {
            if let Some(key) = k.strip_prefix("x-reap-") {
                let key = key.replace('-', "_");
                obj[key] = v
                    .parse::<u64>()
                    .map(Into::into)
                    .unwrap_or_else(|_| v.clone().into());
            }
        }
        writeln!(out, "{obj}")?;
    } else {
        out.write_all(&reply.body)?;
        writeln!(out)?;
    }
    Ok(())
}

pub fn list() -> anyhow::Result<()> {
    let store = open_store()?;
    let entries = store.list()?;
    if entries.is_empty() {
        eprintln!("no functions deployed (store: {})", store.root().display());
        return Ok(());
    }
    println!(
        "{:<20} {:>8} {:>10} {:>10} {:>9}  VERSION",
        "NAME", "MEM_MIB", "BINARY_KB", "SNAP_MIB", "INIT_MS"
    );
    for names_entry in store.names()?.into_iter().zip(entries) {
        match names_entry {
            (_, Ok(m)) => println!(
                "{:<20} {:>8} {:>10} {:>10.1} {:>9.1}  {}",
                m.name,
                m.mem_mib,
                m.binary_bytes / 1024,
                m.snapshot_data_bytes as f64 / (1 << 20) as f64,
                m.init_ms,
                m.version
            ),
            (name, Err(e)) => println!("{name:<20} DAMAGED: {e}"),
        }
    }
    Ok(())
}

pub fn remove(name: &str) -> anyhow::Result<()> {
    let store = open_store()?;
    if let Some(server) = client::running_server(&store) {
        let reply = client::remove(&server, name)
            .with_context(|| format!("cannot reach the server at {}", server.listen))?;
        return match reply.status {
            204 => Ok(()),
            404 => bail!("no function named {name:?}"),
            s => bail!("{} (HTTP {s})", String::from_utf8_lossy(&reply.body)),
        };
    }
    Ok(store.remove(name)?)
}

pub fn logs(name: &str) -> anyhow::Result<()> {
    let store = open_store()?;
    store.get(name)?;
    // The rotated log first, then the current one.
    let current = store.log_path(name);
    let mut rotated = current.clone().into_os_string();
    rotated.push(".1");
    for path in [PathBuf::from(rotated), current] {
        match std::fs::read(&path) {
            Ok(bytes) => std::io::stdout().write_all(&bytes)?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        }
    }
    Ok(())
}

/// A listening socket with a backlog of 1024: connections past the server's connection
/// cap wait there to be accepted.
fn listen_on(addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
    let socket = if addr.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(1024)
}

/// Raises the soft limit on open files to the hard limit: each connection and each
/// instance takes descriptors.
fn raise_fd_limit() {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit read and write only `limit`, a local.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) == 0 && limit.rlim_cur < limit.rlim_max
        {
            limit.rlim_cur = limit.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &limit);
        }
    }
}

/// What `reap serve` sets its `oom_score_adj` to: the kernel's OOM killer picks other
/// processes first. Instances run inside the server today, so this shields it from
/// the memory of other processes only, not from its own instances (the memory
/// budget does that).
const SERVER_OOM_SCORE_ADJ: &str = "-500";

/// Lowers the server's `oom_score_adj` (needs root, or `CAP_SYS_RESOURCE`); logs and
/// goes on if it cannot.
fn shield_from_oom_killer() {
    if let Err(e) = std::fs::write("/proc/self/oom_score_adj", SERVER_OOM_SCORE_ADJ) {
        tracing::warn!(error = %e, "cannot lower oom_score_adj");
    }
}

pub fn serve(
    listen: SocketAddr,
    config: PoolConfig,
    limits: HttpLimits,
    log_max_bytes: u64,
) -> anyhow::Result<()> {
    let store = open_store()?.with_log_max_bytes(log_max_bytes);
    raise_fd_limit();
    shield_from_oom_killer();
    if let Some(mib) = config.memory_budget_mib {
        tracing::info!(memory_budget_mib = mib, "memory budget");
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    runtime.block_on(async move {
        let listener = listen_on(listen).with_context(|| format!("cannot listen on {listen}"))?;
        let local = listener.local_addr()?;
        let info = ServerInfo { pid: std::process::id(), listen: local };
        let server_file = store.server_file();
        std::fs::write(&server_file, serde_json::to_vec(&info)?)
            .with_context(|| format!("cannot write {}", server_file.display()))?;
        let orchestrator =
            Orchestrator::new(store, config).context("cannot start the orchestrator")?;
        tracing::info!(%local, "serving");
        eprintln!("reap: serving on http://{local}");
        let shutdown = async {
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).ok();
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = async { match term.as_mut() { Some(t) => { t.recv().await; } None => std::future::pending().await } } => {}
            }
            eprintln!("reap: shutting down");
        };
        let result = reap_orchestrator::api::serve(Arc::clone(&orchestrator), listener, limits, shutdown).await;
        let _ = std::fs::remove_file(&server_file);
        result.context("server failed")
    })
}
