//! The HTTP API (axum): invoke, deploy, list, remove, metrics, health.
//!
//! | method and path | does | errors |
//! |---|---|---|
//! | `POST /functions/{name}/invoke` | body: the request (JSON); answer: the function's response. Query: `cold=true`, `memory=file\|lazy\|reap`. Headers `x-reap-start: cold\|warm` and timings | 400 not JSON or a bad name, 404 unknown, 408 body sent too slowly, 413 too large, 502 crash or bad answer, 503 busy, 504 timeout |
//! | `PUT /functions/{name}` | body: the binary; query `mem=MIB`; headers `x-reap-env: K=V` (repeatable). 201 with the manifest | 400 invalid binary or name, 408 sent too slowly, 413 too large, 503 too many uploads |
//! | `PUT /functions/{name}` with `content-type: application/x-tar` | body: an OCI image archive; query `mem`, `workdir`; headers `x-reap-env`, `x-reap-arg` (repeatable: the program and its arguments, replacing the image's `Entrypoint` and `Cmd`). 201 with the manifest | as above; 400 for an archive that does not unpack or has no program |
//! | `PUT /functions/{name}` with `content-type: application/json` | body: `{"rootfs": DIR, "args": [PROGRAM, ARGS...], "env": [...], "workdir": PATH}`, a root file system on the server's machine, beneath a directory `reap serve --rootfs-from` allows; query `mem`. 201 with the manifest | 400 a path not allowed, not a directory, or a program that does not deploy |
//! | `GET /functions` | the manifests | |
//! | `DELETE /functions/{name}` | 204 | 400 bad name, 404 |
//! | `GET /metrics` | Prometheus text | |
//! | `GET /healthz` | `ok` | |
//!
//! Every route that takes a name answers 400 for a malformed one before it reads the
//! body. The server guards itself against slow and greedy clients ([`HttpLimits`]): a
//! connection must send each request's headers within the header timeout (idle
//! keep-alive connections too), an invocation's body within the body timeout (an
//! upload at least 64 KiB per body timeout, and all of it within the upload timeout),
//! at most
//! `max_connections` connections are served at once (more wait in the listen
//! backlog), and a binary upload is streamed to a file in the store's `staging/`, never
//! held in memory, with at most `max_uploads` at once.

use std::future::poll_fn;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes, HttpBody};
use axum::extract::rejection::{BytesRejection, FailedToBufferBody, PathRejection};
use axum::extract::{DefaultBodyLimit, FromRequest, Path, Query, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use serde::Deserialize;
use serde_json::json;
use tokio::sync::Semaphore;
use tokio::time::Instant;

use super::store::{ImageCommand, MAX_BINARY_BYTES, StoreError, check_name};
use super::{FailureKind, InvokeError, InvokeOptions, Orchestrator, Start, error_chain};
use reap_vmm::instance::MemoryMode;
use reap_vmm::microvm::DEFAULT_MEM_MIB;

/// Largest invocation request body.
pub const MAX_REQUEST_BYTES: usize = 6 << 20;
/// Largest body of a deploy from a root file system (a JSON description).
const MAX_ROOTFS_REQUEST_BYTES: usize = 64 << 10;
/// Limit on a function's initialization at deploy.
const DEPLOY_INIT_LIMIT: Duration = Duration::from_secs(120);
/// How long an upload waits for one of the `max_uploads` slots.
const UPLOAD_QUEUE_TIMEOUT: Duration = Duration::from_secs(30);
/// Largest body of a refused request read (and dropped) before answering.
const MAX_DRAIN_BYTES: u64 = 16 << 20;
/// Least an upload must send per body timeout.
const MIN_UPLOAD_BYTES_PER_WINDOW: u64 = 64 << 10;
/// How long a graceful shutdown waits for open connections.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// What the HTTP server allows its clients.
#[derive(Debug, Clone)]
pub struct HttpLimits {
    /// Time to send a request's headers, from the connection's start or the end of
    /// the previous response.
    pub header_timeout: Duration,
    /// The limit on an invocation's whole body; an upload must send at least 64 KiB
    /// (or its end) in each such period.
    pub body_timeout: Duration,
    /// Limit on a whole binary upload.
    pub upload_timeout: Duration,
    /// Connections served at once; more wait to be accepted.
    pub max_connections: usize,
    /// Binary uploads at once; more wait (up to 30 s, then 503).
    pub max_uploads: usize,
    /// Directories (canonical) beneath which a client may deploy from a root file
    /// system on the server's machine; none by default (such a deploy copies whatever
    /// the server can read into an image a client's program reads).
    pub rootfs_from: Vec<PathBuf>,
}

impl Default for HttpLimits {
    fn default() -> Self {
        Self {
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            upload_timeout: Duration::from_secs(600),
            max_connections: 1024,
            max_uploads: 4,
            rootfs_from: Vec::new(),
        }
    }
}

/// What the handlers share.
#[derive(Clone)]
struct AppState {
    o: Arc<Orchestrator>,
    limits: HttpLimits,
    uploads: Arc<Semaphore>,
}

/// An error answered as `{"error": "...", "kind": "..."}` with its kind's status.
struct ApiError {
    kind: FailureKind,
    message: String,
}

impl ApiError {
    fn new(kind: FailureKind, message: impl Into<String>) -> Self {
        ApiError {
            kind,
            message: message.into(),
        }
    }

    fn bad_request(message: impl Into<String>) -> Self {
        Self::new(FailureKind::BadRequest, message)
    }

    fn slow_body(timeout: Duration) -> Self {
        Self::new(
            FailureKind::SlowClient,
            format!(
                "the request body did not arrive in time (limit {} s)",
                timeout.as_secs_f64()
            ),
        )
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (
            self.kind.http_status(),
            Json(json!({ "error": self.message, "kind": self.kind.label() })),
        )
            .into_response();
        if matches!(self.kind, FailureKind::SlowClient | FailureKind::TooLarge) {
            // The rest of the body is not read: the connection cannot be reused.
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}

/// The function name of the path, checked.
fn name_param(name: Result<Path<String>, PathRejection>) -> Result<String, ApiError> {
    let Path(name) = name.map_err(|r| ApiError::bad_request(r.body_text()))?;
    check_name(&name)?;
    Ok(name)
}

impl From<InvokeError> for ApiError {
    fn from(e: InvokeError) -> Self {
        ApiError {
            kind: e.kind(),
            message: error_chain(&e),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError {
            kind: e.kind(),
            message: error_chain(&e),
        }
    }
}

impl From<BytesRejection> for ApiError {
    fn from(r: BytesRejection) -> Self {
        let kind = match &r {
            BytesRejection::FailedToBufferBody(FailedToBufferBody::LengthLimitError(_)) => {
                FailureKind::TooLarge
            }
            _ => FailureKind::BadRequest,
        };
        ApiError {
            kind,
            message: r.body_text(),
        }
    }
}

fn join_error(e: tokio::task::JoinError) -> ApiError {
    ApiError {
        kind: FailureKind::Runtime,
        message: format!("worker failed: {e}"),
    }
}

/// The router over `orchestrator`.
pub fn router(orchestrator: Arc<Orchestrator>, limits: &HttpLimits) -> Router {
    let state = AppState {
        o: orchestrator,
        uploads: Arc::new(Semaphore::new(limits.max_uploads.max(1))),
        limits: limits.clone(),
    };
    Router::new()
        .route(
            "/functions/{name}/invoke",
            post(invoke).layer(DefaultBodyLimit::max(MAX_REQUEST_BYTES)),
        )
        .route(
            "/functions/{name}",
            put(deploy)
                .delete(remove)
                .layer(DefaultBodyLimit::max(MAX_BINARY_BYTES as usize)),
        )
        .route("/functions", get(list))
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(state)
}

#[derive(Deserialize)]
struct InvokeQuery {
    cold: Option<bool>,
    memory: Option<String>,
}

fn parse_mode(s: &str) -> Result<MemoryMode, ApiError> {
    s.parse()
        .map_err(|e: reap_pager::UnknownMode| ApiError::bad_request(e.to_string()))
}

async fn invoke(
    State(s): State<AppState>,
    name: Result<Path<String>, PathRejection>,
    Query(q): Query<InvokeQuery>,
    request: Request,
) -> Result<Response, ApiError> {
    let name = match name_param(name) {
        Ok(name) => name,
        Err(e) => return Err(refuse(e, request, &s.limits).await),
    };
    let timeout = s.limits.body_timeout;
    let body = tokio::time::timeout(timeout, Bytes::from_request(request, &()))
        .await
        .map_err(|_| ApiError::slow_body(timeout))??;
    let o = s.o;
    let options = InvokeOptions {
        force_cold: q.cold.unwrap_or(false),
        memory: q
            .memory
            .as_deref()
            .map(parse_mode)
            .transpose()?
            .unwrap_or(MemoryMode::Reap),
    };
    let answer = tokio::task::spawn_blocking(move || o.invoke(&name, &body, options))
        .await
        .map_err(join_error)??;
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    headers.insert(
        "x-reap-start",
        HeaderValue::from_static(answer.start.name()),
    );
    let mut num = |k: &'static str, v: u64| {
        headers.insert(k, HeaderValue::from(v));
    };
    num("x-reap-total-us", answer.total_us);
    num("x-reap-invoke-us", answer.invocation.invoke_us);
    num("x-reap-lazy-faults", answer.invocation.lazy_faults);
    if let (Start::Cold, Some(c)) = (answer.start, &answer.cold_start) {
        num("x-reap-restore-us", c.restore_us);
        num("x-reap-fetch-us", c.fetch_us);
        num("x-reap-install-us", c.install_us);
        num("x-reap-prefetched-pages", c.prefetched_pages);
        headers.insert("x-reap-memory", HeaderValue::from_static(c.mode.name()));
    }
    Ok((StatusCode::OK, headers, answer.response).into_response())
}

#[derive(Deserialize)]
struct DeployQuery {
    mem: Option<u64>,
    workdir: Option<String>,
}

/// The body of a deploy from a root file system on the server's machine.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RootfsRequest {
    rootfs: PathBuf,
    #[serde(default)]
    args: Vec<String>,
    #[serde(default)]
    env: Vec<String>,
    #[serde(default)]
    workdir: Option<String>,
}

/// What a `PUT /functions/{name}` carries, by its content type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum DeployKind {
    Binary,
    Image,
    Rootfs,
}

fn deploy_kind(headers: &HeaderMap) -> DeployKind {
    let content_type = headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .map(|v| v.trim().to_ascii_lowercase());
    match content_type.as_deref() {
        Some("application/json") => DeployKind::Rootfs,
        Some("application/x-tar" | "application/vnd.oci.image.layout.v1+tar") => DeployKind::Image,
        _ => DeployKind::Binary,
    }
}

/// The text values of the header `name`, or an error naming it.
fn text_headers(headers: &HeaderMap, name: &str) -> Result<Vec<String>, ApiError> {
    headers
        .get_all(name)
        .iter()
        .map(|v| v.to_str().map(str::to_owned))
        .collect::<Result<Vec<String>, _>>()
        .map_err(|_| ApiError::bad_request(format!("{name} must be text")))
}

async fn deploy(
    State(s): State<AppState>,
    name: Result<Path<String>, PathRejection>,
    Query(q): Query<DeployQuery>,
    request: Request,
) -> Result<Response, ApiError> {
    let name = match name_param(name) {
        Ok(name) => name,
        Err(e) => return Err(refuse(e, request, &s.limits).await),
    };
    let headers = request.headers();
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if let Some(len) = declared.filter(|&l| l > MAX_BINARY_BYTES) {
        return Err(StoreError::BinaryTooLarge(len).into());
    }
    let kind = deploy_kind(headers);
    let texts = text_headers(headers, "x-reap-env")
        .and_then(|env| Ok((env, text_headers(headers, "x-reap-arg")?)));
    let (env, args) = match texts {
        Ok(t) => t,
        Err(e) => return Err(refuse(e, request, &s.limits).await),
    };
    let mem = q.mem.unwrap_or(DEFAULT_MEM_MIB);
    if kind == DeployKind::Rootfs {
        return deploy_rootfs(s, name, mem, env, request).await;
    }
    if kind == DeployKind::Binary && (!args.is_empty() || q.workdir.is_some()) {
        let e = ApiError::bad_request("x-reap-arg and workdir are for images only");
        return Err(refuse(e, request, &s.limits).await);
    }
    let _slot = tokio::time::timeout(UPLOAD_QUEUE_TIMEOUT, Arc::clone(&s.uploads).acquire_owned())
        .await
        .ok()
        .and_then(Result::ok)
        .ok_or_else(|| {
            ApiError::new(
                FailureKind::Busy,
                format!(
                    "{} uploads are in progress and none ended in time",
                    s.limits.max_uploads
                ),
            )
        })?;
    let o = s.o;
    let upload = Upload(o.store.upload_path());
    receive_upload(request.into_body(), &upload.0, &s.limits).await?;
    let workdir = q.workdir;
    let manifest = tokio::task::spawn_blocking(move || {
        let manifest = match kind {
            DeployKind::Image => {
                let command = ImageCommand { args, env, workdir };
                let deployed = o.store.deploy_image(
                    &name,
                    &upload.0,
                    "upload",
                    command,
                    mem,
                    DEPLOY_INIT_LIMIT,
                );
                drop(upload);
                deployed?
            }
            _ => o
                .store
                .deploy_file(&name, &upload.0, mem, env, DEPLOY_INIT_LIMIT)?,
        };
        o.forget(&name);
        Ok::<_, StoreError>(manifest)
    })
    .await
    .map_err(join_error)??;
    Ok((StatusCode::CREATED, Json(manifest)).into_response())
}

/// A deploy from a root file system on the server's machine, described by the JSON
/// body; `env` (from the headers) goes before the body's.
async fn deploy_rootfs(
    s: AppState,
    name: String,
    mem: u64,
    mut env: Vec<String>,
    request: Request,
) -> Result<Response, ApiError> {
    let timeout = s.limits.body_timeout;
    let body = tokio::time::timeout(
        timeout,
        axum::body::to_bytes(request.into_body(), MAX_ROOTFS_REQUEST_BYTES),
    )
    .await
    .map_err(|_| ApiError::slow_body(timeout))?
    .map_err(|e| ApiError::bad_request(format!("reading the body: {e}")))?;
    let request: RootfsRequest = serde_json::from_slice(&body).map_err(|e| {
        ApiError::bad_request(format!("the body is not a root file system deploy: {e}"))
    })?;
    let not_allowed = |dir: &std::path::Path| {
        ApiError::bad_request(format!(
            "deploying from {} is not allowed: this server deploys root file systems only \
             from beneath the directories `reap serve --rootfs-from` names ({})",
            dir.display(),
            if s.limits.rootfs_from.is_empty() {
                "none".to_owned()
            } else {
                s.limits
                    .rootfs_from
                    .iter()
                    .map(|d| d.display().to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            }
        ))
    };
    if s.limits.rootfs_from.is_empty() {
        return Err(not_allowed(&request.rootfs));
    }
    let dir = std::fs::canonicalize(&request.rootfs)
        .map_err(|e| StoreError::BadRootfs(request.rootfs.clone(), e))?;
    if !s
        .limits
        .rootfs_from
        .iter()
        .any(|allowed| dir.starts_with(allowed))
    {
        return Err(not_allowed(&dir));
    }
    env.extend(request.env);
    let command = ImageCommand {
        args: request.args,
        env,
        workdir: request.workdir,
    };
    let o = s.o;
    let manifest = tokio::task::spawn_blocking(move || {
        let manifest = o
            .store
            .deploy_rootfs(&name, &dir, command, mem, DEPLOY_INIT_LIMIT)?;
        o.forget(&name);
        Ok::<_, StoreError>(manifest)
    })
    .await
    .map_err(join_error)??;
    Ok((StatusCode::CREATED, Json(manifest)).into_response())
}

/// Reads and drops a refused request's body (at most [`MAX_DRAIN_BYTES`], within the
/// body timeout) before the answer, so a client that sends its whole body before
/// reading gets the answer rather than a reset connection. A body declared larger is
/// not read: the answer goes out at once and the connection is closed.
async fn refuse(error: ApiError, request: Request, limits: &HttpLimits) -> ApiError {
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_none_or(|l| l <= MAX_DRAIN_BYTES) {
        let mut body = request.into_body();
        let drain = async {
            let mut seen = 0u64;
            while let Some(Ok(frame)) = poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
                seen += frame.data_ref().map_or(0, |d| d.len() as u64);
                if seen > MAX_DRAIN_BYTES {
                    break;
                }
            }
        };
        let _ = tokio::time::timeout(limits.body_timeout, drain).await;
    }
    error
}

/// An upload's file in `staging/`, removed when dropped (after a failed upload; a deploy
/// moves it away first).
struct Upload(PathBuf);

impl Drop for Upload {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Streams a request body to the file `path`: at most [`MAX_BINARY_BYTES`], at least
/// 64 KiB per body timeout, all of it within the upload timeout. The file is
/// written by a blocking thread fed through a short queue, so at most a few frames are
/// in memory.
async fn receive_upload(
    mut body: Body,
    path: &std::path::Path,
    limits: &HttpLimits,
) -> Result<(), ApiError> {
    let file = std::fs::File::create(path).map_err(|e| {
        ApiError::from(StoreError::Io {
            path: path.to_path_buf(),
            what: "cannot create the upload file",
            source: e,
        })
    })?;
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Bytes>(8);
    let writer = tokio::task::spawn_blocking(move || {
        use std::io::Write;
        let mut file = file;
        while let Some(chunk) = rx.blocking_recv() {
            file.write_all(&chunk)?;
        }
        file.flush()
    });
    let end = Instant::now() + limits.upload_timeout;
    let mut received: u64 = 0;
    // The body is read in windows of one body timeout: each must bring at least
    // MIN_UPLOAD_BYTES_PER_WINDOW (or the end of the body), so a trickle is cut off too.
    let mut window = (Instant::now(), 0u64);
    let read = async {
        loop {
            let window_end = window.0 + limits.body_timeout;
            let frame = tokio::time::timeout_at(
                window_end.min(end),
                poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)),
            )
            .await;
            let now = Instant::now();
            if now >= end {
                return Err(ApiError::slow_body(limits.upload_timeout));
            }
            if now >= window_end {
                if window.1 < MIN_UPLOAD_BYTES_PER_WINDOW {
                    return Err(ApiError::slow_body(limits.body_timeout));
                }
                window = (now, 0);
            }
            let Ok(frame) = frame else {
                continue;
            };
            let Some(frame) = frame else {
                return Ok(());
            };
            let frame =
                frame.map_err(|e| ApiError::bad_request(format!("reading the body: {e}")))?;
            let Ok(data) = frame.into_data() else {
                continue;
            };
            window.1 += data.len() as u64;
            received += data.len() as u64;
            if received > MAX_BINARY_BYTES {
                return Err(StoreError::BinaryTooLarge(received).into());
            }
            if tx.send(data).await.is_err() {
                // The writer failed: its error is reported below.
                return Ok(());
            }
        }
    };
    let read: Result<(), ApiError> = read.await;
    drop(tx);
    let written = writer.await.map_err(join_error)?;
    read?;
    written.map_err(|e| {
        StoreError::Io {
            path: path.to_path_buf(),
            what: "cannot write the upload",
            source: e,
        }
        .into()
    })
}

async fn remove(
    State(s): State<AppState>,
    name: Result<Path<String>, PathRejection>,
) -> Result<Response, ApiError> {
    let name = name_param(name)?;
    let o = s.o;
    tokio::task::spawn_blocking(move || {
        o.store.remove(&name)?;
        o.forget(&name);
        Ok::<_, StoreError>(())
    })
    .await
    .map_err(join_error)??;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list(State(s): State<AppState>) -> Result<Response, ApiError> {
    let o = s.o;
    let entries = tokio::task::spawn_blocking(move || o.store.list())
        .await
        .map_err(join_error)??;
    let list: Vec<serde_json::Value> = entries
        .into_iter()
        .map(|e| match e {
            Ok(m) => serde_json::to_value(m).unwrap_or_default(),
            Err(e) => json!({ "error": error_chain(&e) }),
        })
        .collect();
    Ok(Json(list).into_response())
}

async fn metrics(State(s): State<AppState>) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    (headers, s.o.metrics.encode()).into_response()
}

/// Serves the API on `listener` within `limits` until `shutdown` completes, then
/// waits (up to 30 s) for the open connections to finish and tears the instances down.
pub async fn serve(
    orchestrator: Arc<Orchestrator>,
    listener: tokio::net::TcpListener,
    limits: HttpLimits,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(Arc::clone(&orchestrator), &limits);
    let connections = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    tokio::pin!(shutdown);
    loop {
        // Take a connection slot first: at the cap, new connections wait in the
        // listen backlog until one closes.
        let slot = tokio::select! {
            () = &mut shutdown => break,
            slot = Arc::clone(&connections).acquire_owned() => slot,
        };
        let Ok(slot) = slot else { break };
        let stream = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of descriptors or memory: wait for connections to close.
                    tracing::warn!("cannot accept a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(app.clone());
        let connection = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!("connection: {e}");
            }
            drop(slot);
        });
    }
    drop(listener);
    if tokio::time::timeout(SHUTDOWN_GRACE, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("connections still open after {SHUTDOWN_GRACE:?}; closing them");
    }
    orchestrator.shutdown();
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::PoolConfig;
    use crate::client;
    use crate::store::FunctionStore;

    /// `reap serve` over an empty store on 127.0.0.1: the requests here fail before
    /// they need an instance, so no KVM is needed.
    struct TestServer {
        _runtime: tokio::runtime::Runtime,
        base: String,
        root: std::path::PathBuf,
    }

    impl TestServer {
        fn start(tag: &str) -> TestServer {
            let root = std::env::temp_dir().join(format!("reap-api-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&root);
            let (store, _) = FunctionStore::open(&root).unwrap();
            let orchestrator = Orchestrator::new(store, PoolConfig::default()).unwrap();
            let limits = HttpLimits {
                header_timeout: Duration::from_millis(500),
                body_timeout: Duration::from_millis(500),
                ..HttpLimits::default()
            };
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            let listener = runtime
                .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
                .unwrap();
            let base = format!("http://{}", listener.local_addr().unwrap());
            runtime.spawn(serve(
                orchestrator,
                listener,
                limits,
                std::future::pending(),
            ));
            TestServer {
                _runtime: runtime,
                base,
                root,
            }
        }

        /// The status and the `kind` of the error body.
        fn call(&self, method: &str, path: &str, body: &[u8]) -> (u16, String) {
            let url = format!("{}{path}", self.base);
            let reply = client::request(method, &url, body, Duration::from_secs(30))
                .unwrap_or_else(|e| panic!("{method} {url}: {e}"));
            let v: serde_json::Value = serde_json::from_slice(&reply.body).unwrap_or_default();
            (
                reply.status,
                v["kind"].as_str().unwrap_or_default().to_owned(),
            )
        }
    }

    impl Drop for TestServer {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.root);
        }
    }

    #[test]
    fn invoking_a_bad_function_name_answers_400() {
        let server = TestServer::start("names");
        let long = "x".repeat(65);
        for name in [
            "..%2F..",
            "Hello",
            long.as_str(),
            "%FF",
            "a%00",
            "-a",
            ".",
            "a%20b",
        ] {
            assert_eq!(
                server.call("POST", &format!("/functions/{name}/invoke"), b"{}"),
                (400, "bad_request".to_owned()),
                "{name}"
            );
            assert_eq!(
                server.call("DELETE", &format!("/functions/{name}"), b""),
                (400, "bad_request".to_owned()),
                "{name}"
            );
            assert_eq!(
                server.call("PUT", &format!("/functions/{name}"), b"\x7fELF"),
                (400, "bad_request".to_owned()),
                "{name}"
            );
        }
        // The name is checked before the body is read: a large one is not read at all
        // (none is sent here).
        for head in [
            "POST /functions/Bad/invoke HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n",
            "PUT /functions/Bad HTTP/1.1\r\nHost: x\r\nContent-Length: 100000000\r\n\r\n",
        ] {
            let (answer, took) = trickle(&server, head, b"", Duration::ZERO);
            assert!(answer.starts_with("HTTP/1.1 400"), "{answer}");
            assert!(took < Duration::from_millis(400), "{took:?}");
        }
    }

    /// Sends `head` on a new connection, then `body` one byte every `pace`, and returns
    /// what the server answered (or the empty string if it closed without a word) and
    /// when.
    fn trickle(server: &TestServer, head: &str, body: &[u8], pace: Duration) -> (String, Duration) {
        use std::io::{Read, Write};
        let addr = server.base.trim_start_matches("http://");
        let mut stream = std::net::TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_millis(20)))
            .unwrap();
        let start = std::time::Instant::now();
        let _ = stream.write_all(head.as_bytes());
        let mut answer = Vec::new();
        let mut sent = 0;
        while start.elapsed() < Duration::from_secs(20) {
            let mut buf = [0u8; 4096];
            match stream.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => break,
            }
            if answer.ends_with(b"}") {
                break;
            }
            let due = pace.as_nanos() * (sent as u128 + 1);
            if sent < body.len() && start.elapsed().as_nanos() >= due {
                if stream.write_all(&body[sent..=sent]).is_err() {
                    break;
                }
                sent += 1;
            }
        }
        (
            String::from_utf8_lossy(&answer).into_owned(),
            start.elapsed(),
        )
    }

    #[test]
    fn a_client_that_sends_no_headers_is_disconnected_after_the_header_timeout() {
        let server = TestServer::start("noheaders");
        for head in ["", "GET /healthz HTTP/1.1\r\nHost: x\r\n"] {
            let (answer, took) = trickle(&server, head, b"", Duration::ZERO);
            assert_eq!(answer, "", "{head:?}");
            assert!(
                took >= Duration::from_millis(400) && took < Duration::from_secs(5),
                "{head:?} {took:?}"
            );
        }
        // A slow header, one byte at a time, is cut off too.
        let head = "GET /healthz HTTP/1.1\r\nHost: x\r\nX-Slow: ";
        let (answer, took) = trickle(&server, head, &[b'a'; 1000], Duration::from_millis(50));
        assert_eq!(answer, "");
        assert!(took < Duration::from_secs(5), "{took:?}");
    }

    #[test]
    fn a_slow_request_body_answers_408() {
        let server = TestServer::start("slowbody");
        let invoke = "POST /functions/f/invoke HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n";
        let upload = "PUT /functions/f HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n";
        for head in [invoke, upload] {
            let (answer, took) = trickle(&server, head, &[b' '; 100], Duration::from_millis(50));
            assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
            assert!(answer.contains("slow_client"), "{answer}");
            assert!(took < Duration::from_secs(5), "{took:?}");
        }
        assert_eq!(server.call("GET", "/healthz", b"").0, 200);
    }

    #[test]
    fn uploads_over_the_cap_or_not_elf_are_refused_and_leave_no_file() {
        let server = TestServer::start("uploads");
        let head = format!(
            "PUT /functions/f HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
            MAX_BINARY_BYTES + 1
        );
        let (answer, _) = trickle(&server, &head, b"", Duration::ZERO);
        assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
        assert_eq!(
            server.call("PUT", "/functions/f", &[7u8; 100_000]),
            (400, "bad_request".to_owned())
        );
        let staging = std::fs::read_dir(server.root.join("staging"))
            .unwrap()
            .count();
        assert_eq!(staging, 0);
    }

    #[test]
    fn failures_before_an_instance_keep_their_statuses() {
        let server = TestServer::start("statuses");
        let bad = |status: u16| (status, "bad_request".to_owned());
        assert_eq!(
            server.call("POST", "/functions/nope/invoke", b"{}"),
            (404, "not_found".to_owned())
        );
        assert_eq!(
            server.call("DELETE", "/functions/nope", b""),
            (404, "not_found".to_owned())
        );
        assert_eq!(
            server.call("POST", "/functions/nope/invoke", b"{not json"),
            bad(400)
        );
        assert_eq!(
            server.call("POST", "/functions/nope/invoke?memory=disk", b"{}"),
            bad(400)
        );
        let huge = vec![b' '; MAX_REQUEST_BYTES + 1];
        assert_eq!(
            server.call("POST", "/functions/nope/invoke", &huge),
            (413, "too_large".to_owned())
        );
        assert_eq!(server.call("GET", "/healthz", b"").0, 200);
    }
}
