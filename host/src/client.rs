//! The CLI's client of a running host's admin API, found through the manifest's state
//! directory (`admin.json` and `admin-token`).

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;
use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use crate::state::StateDir;

pub struct AdminClient {
    addr: SocketAddr,
    token: String,
}

/// A non-2xx answer of the admin API, with its JSON body.
#[derive(Debug, thiserror::Error)]
#[error("{detail}")]
pub struct AdminError {
    pub status: StatusCode,
    pub step: Option<String>,
    pub detail: String,
}

impl AdminClient {
    pub fn new(addr: SocketAddr, token: String) -> Self {
        Self { addr, token }
    }

    /// Finds the host running for the manifest at `manifest` (or the given state directory).
    pub fn discover(manifest: &Path, state_dir: Option<&Path>) -> anyhow::Result<Self> {
        let root = state_dir
            .map(Path::to_owned)
            .unwrap_or_else(|| StateDir::beside(manifest));
        let state = StateDir::open(root.clone())
            .with_context(|| format!("cannot open the state directory {}", root.display()))?;
        let endpoint = state.read_endpoint().map_err(|_| {
            anyhow::anyhow!(
                "no Mosaic host is running for {} (nothing in {}). Start one with `mosaic up` in that directory, or name the manifest with -f",
                manifest.display(),
                state.endpoint_path().display()
            )
        })?;
        let token = state
            .read_token()
            .with_context(|| format!("cannot read the admin token {}", state.token_path().display()))?;
        Ok(Self {
            addr: endpoint.addr,
            token,
        })
    }

    pub async fn call(&self, method: Method, path: &str, body: Bytes) -> anyhow::Result<serde_json::Value> {
        let stream = tokio::net::TcpStream::connect(self.addr).await.with_context(|| {
            format!(
                "cannot reach the Mosaic host's admin API at {}; is `mosaic up` still running?",
                self.addr
            )
        })?;
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
        tokio::spawn(connection);
        let request = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header(http::header::HOST, self.addr.to_string())
            .header(http::header::AUTHORIZATION, format!("Bearer {}", self.token))
            .body(Full::new(body))?;
        let response = sender
            .send_request(request)
            .await
            .context("the admin API did not answer")?;
        let status = response.status();
        let bytes = response.into_body().collect().await?.to_bytes();
        let value: serde_json::Value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&bytes).to_string()));
        if !status.is_success() {
            let detail = value.get("detail").and_then(|v| v.as_str()).unwrap_or("").to_string();
            let step = value.get("step").and_then(|v| v.as_str()).map(str::to_string);
            return Err(AdminError {
                status,
                step,
                detail: if detail.is_empty() { value.to_string() } else { detail },
            }
            .into());
        }
        Ok(value)
    }
}
