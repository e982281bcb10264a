//! The HTTP API (axum): invoke, deploy, list, remove, metrics, health.
//!
//! | method and path | does | errors |
//! |---|---|---|
//! | `POST /functions/{name}/invoke` | body: the request (JSON); answer: the function's response. Query: `cold=true`, `memory=file\|lazy\|reap`. Headers `x-reap-start: cold\|warm` and timings | 400 not JSON or a bad name, 404 unknown, 413 too large, 502 crash or bad answer, 503 busy, 504 timeout |
//! | `PUT /functions/{name}` | body: the binary; query `mem=MIB`; headers `x-reap-env: K=V` (repeatable). 201 with the manifest | 400 invalid binary or name, 413 too large |
//! | `GET /functions` | the manifests | |
//! | `DELETE /functions/{name}` | 204 | 400 bad name, 404 |
//! | `GET /metrics` | Prometheus text | |
//! | `GET /healthz` | `ok` | |

use std::sync::Arc;
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, FailedToBufferBody};
use axum::extract::{DefaultBodyLimit, Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;

use super::store::{MAX_BINARY_BYTES, StoreError};
use super::{FailureKind, InvokeError, InvokeOptions, Orchestrator, Start, error_chain};
use reap_vmm::instance::MemoryMode;
use reap_vmm::microvm::DEFAULT_MEM_MIB;

/// Largest invocation request body.
pub const MAX_REQUEST_BYTES: usize = 6 << 20;
/// Limit on a function's initialization at deploy.
const DEPLOY_INIT_LIMIT: Duration = Duration::from_secs(120);

/// An error answered as `{"error": "...", "kind": "..."}` with its kind's status.
struct ApiError {
    kind: FailureKind,
    message: String,
}

impl ApiError {
    fn bad_request(message: impl Into<String>) -> Self {
        ApiError {
            kind: FailureKind::BadRequest,
            message: message.into(),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.kind.http_status(),
            Json(json!({ "error": self.message, "kind": self.kind.label() })),
        )
            .into_response()
    }
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
pub fn router(orchestrator: Arc<Orchestrator>) -> Router {
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
        .with_state(orchestrator)
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
    State(o): State<Arc<Orchestrator>>,
    Path(name): Path<String>,
    Query(q): Query<InvokeQuery>,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body?;
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
}

async fn deploy(
    State(o): State<Arc<Orchestrator>>,
    Path(name): Path<String>,
    Query(q): Query<DeployQuery>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body?;
    let env: Vec<String> = headers
        .get_all("x-reap-env")
        .iter()
        .map(|v| v.to_str().map(str::to_owned))
        .collect::<Result<_, _>>()
        .map_err(|_| ApiError::bad_request("x-reap-env must be text"))?;
    let mem = q.mem.unwrap_or(DEFAULT_MEM_MIB);
    let manifest = tokio::task::spawn_blocking(move || {
        let manifest = o.store.deploy(&name, &body, mem, env, DEPLOY_INIT_LIMIT)?;
        o.forget(&name);
        Ok::<_, StoreError>(manifest)
    })
    .await
    .map_err(join_error)??;
    Ok((StatusCode::CREATED, Json(manifest)).into_response())
}

async fn remove(
    State(o): State<Arc<Orchestrator>>,
    Path(name): Path<String>,
) -> Result<Response, ApiError> {
    tokio::task::spawn_blocking(move || {
        o.store.remove(&name)?;
        o.forget(&name);
        Ok::<_, StoreError>(())
    })
    .await
    .map_err(join_error)??;
    Ok(StatusCode::NO_CONTENT.into_response())
}

async fn list(State(o): State<Arc<Orchestrator>>) -> Result<Response, ApiError> {
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

async fn metrics(State(o): State<Arc<Orchestrator>>) -> Response {
    let mut headers = HeaderMap::new();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    (headers, o.metrics.encode()).into_response()
}

/// Serves the API on `listener` until `shutdown` completes, then tears the instances
/// down.
pub async fn serve(
    orchestrator: Arc<Orchestrator>,
    listener: tokio::net::TcpListener,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = router(Arc::clone(&orchestrator));
    let result = axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await;
    orchestrator.shutdown();
    result
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
            let orchestrator = Orchestrator::new(store, PoolConfig::default());
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            let listener = runtime
                .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
                .unwrap();
            let base = format!("http://{}", listener.local_addr().unwrap());
            runtime.spawn(async move { axum::serve(listener, router(orchestrator)).await });
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
        for name in ["..%2F..", "Hello", long.as_str()] {
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
