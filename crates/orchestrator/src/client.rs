//! The CLI's side of a running `reap serve` on the same store: finding it, and calling
//! its HTTP API.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::store::FunctionStore;

/// What `reap serve` writes to the store's `server.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ServerInfo {
    /// The server's process id.
    pub pid: u32,
    /// Where it listens.
    pub listen: SocketAddr,
}

/// A reply of the server.
pub struct Reply {
    /// The HTTP status.
    pub status: u16,
    /// The headers, names as received, values that are not text as "".
    pub headers: Vec<(String, String)>,
    /// The body, at most 64 MiB.
    pub body: Vec<u8>,
}

impl Reply {
    /// The value of header `name` (case-insensitive), the first if it repeats.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

fn agent(timeout: Duration) -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .build()
        .into()
}

/// The server running on `store`, if one answers.
pub fn running_server(store: &FunctionStore) -> Option<ServerInfo> {
    let bytes = std::fs::read(store.server_file()).ok()?;
    let info: ServerInfo = serde_json::from_slice(&bytes).ok()?;
    // SAFETY: kill with signal 0 only checks that the process exists.
    if unsafe { libc::kill(info.pid as i32, 0) } != 0 {
        return None;
    }
    let reply = agent(Duration::from_secs(2))
        .get(format!("http://{}/healthz", info.listen))
        .call()
        .ok()?;
    (reply.status() == 200).then_some(info)
}

/// One HTTP request (`GET`, `PUT`, `POST` or `DELETE`; a body is sent with `PUT` and
/// `POST`) with a time limit; any status is a reply.
pub fn request(
    method: &str,
    url: &str,
    body: &[u8],
    timeout: Duration,
) -> Result<Reply, ureq::Error> {
    let agent = agent(timeout);
    let mut response = match method {
        "GET" => agent.get(url).call()?,
        "DELETE" => agent.delete(url).call()?,
        "PUT" => agent.put(url).send(body)?,
        _ => agent
            .post(url)
            .header("content-type", "application/json")
            .send(body)?,
    };
    let status = response.status().as_u16();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_owned(),
                v.to_str().unwrap_or_default().to_owned(),
            )
        })
        .collect();
    let body = response
        .body_mut()
        .with_config()
        .limit(64 << 20)
        .read_to_vec()?;
    Ok(Reply {
        status,
        headers,
        body,
    })
}

/// `POST /functions/{name}/invoke`.
pub fn invoke(
    server: &ServerInfo,
    name: &str,
    data: &[u8],
    cold: bool,
    memory: Option<&str>,
) -> Result<Reply, ureq::Error> {
    let mut url = format!(
        "http://{}/functions/{name}/invoke?cold={cold}",
        server.listen
    );
    if let Some(m) = memory {
        url.push_str(&format!("&memory={m}"));
    }
    request("POST", &url, data, Duration::from_secs(600))
}

/// `DELETE /functions/{name}`.
pub fn remove(server: &ServerInfo, name: &str) -> Result<Reply, ureq::Error> {
    let url = format!("http://{}/functions/{name}", server.listen);
    request("DELETE", &url, b"", Duration::from_secs(60))
}
