//! The CLI's client of a running host's admin API, found through the manifest's state
//! directory (`admin.json` and `admin-token`). Each call answers the type the admin API
//! serialises, so the CLI reads fields, not string keys.

use std::net::SocketAddr;
use std::path::Path;

use anyhow::Context;
use bytes::Bytes;
use http::{Method, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use percent_encoding::{utf8_percent_encode, AsciiSet, NON_ALPHANUMERIC};
use serde::de::DeserializeOwned;

use crate::admin::{ComponentHistory, ComponentStatus, DeadLetterList};
use crate::capability::messaging::DeadLetter;
use crate::cluster::ClusterStatus;
use crate::deploy::DeployReport;
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

    /// `POST /v1/components/NAME/deploy`: a new version of `component` (at `route`, for one
    /// that is not in the manifest yet).
    pub async fn deploy(&self, component: &str, bytes: Vec<u8>, route: Option<&str>) -> anyhow::Result<DeployReport> {
        let mut path = format!("/v1/components/{component}/deploy");
        if let Some(route) = route {
            path.push_str(&format!("?route={}", encode_query(route)));
        }
        self.typed(Method::POST, &path, Bytes::from(bytes)).await
    }

    /// `POST /v1/components/NAME/deploy?canary=...`: the new version as a canary.
    pub async fn deploy_canary(
        &self,
        component: &str,
        bytes: Vec<u8>,
        policy: &crate::app::canary::CanaryPolicy,
    ) -> anyhow::Result<DeployReport> {
        let query: Vec<String> = policy
            .query_pairs()
            .into_iter()
            .map(|(key, value)| format!("{key}={}", encode_query(&value)))
            .collect();
        let path = format!("/v1/components/{component}/deploy?{}", query.join("&"));
        self.typed(Method::POST, &path, Bytes::from(bytes)).await
    }

    /// `POST /v1/components/NAME/promote`.
    pub async fn promote(&self, component: &str) -> anyhow::Result<DeployReport> {
        let path = format!("/v1/components/{component}/promote");
        self.typed(Method::POST, &path, Bytes::new()).await
    }

    /// `POST /v1/components/NAME/rollback`.
    pub async fn rollback(&self, component: &str) -> anyhow::Result<DeployReport> {
        let path = format!("/v1/components/{component}/rollback");
        self.typed(Method::POST, &path, Bytes::new()).await
    }

    /// `GET /v1/status`: every component of the host.
    pub async fn status(&self) -> anyhow::Result<Vec<ComponentStatus>> {
        self.typed(Method::GET, "/v1/status", Bytes::new()).await
    }

    /// `GET /v1/cluster`: an error (404) for a host that runs alone.
    pub async fn cluster(&self) -> anyhow::Result<ClusterStatus> {
        self.typed(Method::GET, "/v1/cluster", Bytes::new()).await
    }

    /// `GET /v1/components/NAME/history`.
    pub async fn history(&self, component: &str) -> anyhow::Result<ComponentHistory> {
        let path = format!("/v1/components/{component}/history");
        self.typed(Method::GET, &path, Bytes::new()).await
    }

    /// `GET /v1/dlq`: the dead letters, of `component` only if given.
    pub async fn dead_letters(&self, component: Option<&str>) -> anyhow::Result<Vec<DeadLetter>> {
        let path = match component {
            Some(name) => format!("/v1/dlq?component={}", encode_query(name)),
            None => "/v1/dlq".to_string(),
        };
        let list: DeadLetterList = self.typed(Method::GET, &path, Bytes::new()).await?;
        Ok(list.dead_letters)
    }

    /// `POST /v1/dlq/replay`: the dead letters `ids` (all of them if none), of `component` only
    /// if given; answers those replayed.
    pub async fn replay(&self, component: Option<&str>, ids: &[String]) -> anyhow::Result<Vec<DeadLetter>> {
        let mut query: Vec<String> = component
            .map(|name| format!("component={}", encode_query(name)))
            .into_iter()
            .collect();
        if !ids.is_empty() {
            query.push(format!("ids={}", encode_query(&ids.join(","))));
        }
        let path = format!("/v1/dlq/replay?{}", query.join("&"));
        let list: DeadLetterList = self.typed(Method::POST, &path, Bytes::new()).await?;
        Ok(list.dead_letters)
    }

    /// Any admin call, its answer as untyped JSON (a body that is not JSON as a string).
    pub async fn call(&self, method: Method, path: &str, body: Bytes) -> anyhow::Result<serde_json::Value> {
        let bytes = self.exchange(method, path, body).await?;
        Ok(serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&bytes).to_string())))
    }

    async fn typed<T: DeserializeOwned>(&self, method: Method, path: &str, body: Bytes) -> anyhow::Result<T> {
        let bytes = self.exchange(method.clone(), path, body).await?;
        serde_json::from_slice(&bytes).map_err(|err| {
            anyhow::anyhow!(
                "the admin API's answer to {method} {path} is not what this CLI expects ({err}); is the host running a different Mosaic version than this CLI?"
            )
        })
    }

    /// One request; the body of a 2xx answer, else an `AdminError` with the answer's detail.
    async fn exchange(&self, method: Method, path: &str, body: Bytes) -> anyhow::Result<Bytes> {
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
        if !status.is_success() {
            let value: serde_json::Value = serde_json::from_slice(&bytes)
                .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(&bytes).to_string()));
            let detail = value.get("detail").and_then(|v| v.as_str()).unwrap_or("").to_string();
            let step = value.get("step").and_then(|v| v.as_str()).map(str::to_string);
            return Err(AdminError {
                status,
                step,
                detail: if detail.is_empty() { value.to_string() } else { detail },
            }
            .into());
        }
        Ok(bytes)
    }
}

/// Characters a query value keeps as they are: the unreserved ones, and `/` and `,`, which
/// routes and id lists are made of and a query may carry unescaped.
const QUERY_VALUE: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'_')
    .remove(b'.')
    .remove(b'~')
    .remove(b'/')
    .remove(b',');

/// `value` percent-encoded for a query string.
pub fn encode_query(value: &str) -> String {
    utf8_percent_encode(value, QUERY_VALUE).to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_keep_routes_and_lists_readable() {
        assert_eq!(encode_query("/hello/..."), "/hello/...");
        assert_eq!(encode_query("a,b-c_d~e"), "a,b-c_d~e");
        assert_eq!(encode_query("a b&c=d+é"), "a%20b%26c%3Dd%2B%C3%A9");
    }
}
