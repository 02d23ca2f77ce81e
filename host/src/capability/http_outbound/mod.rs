//! Outbound HTTP (`wasi:http/outgoing-handler`): the grant check against
//! `allowed_outbound_hosts`, in-process service chaining for `http://NAME.spin.internal` and
//! `http://self`, and the real network client for everything else.
//!
//! The seam is wasmtime-wasi-http's [`WasiHttpHooks::send_request`]: every guest request
//! passes through [`OutboundHttp`], which knows the calling component and its grants.

mod allowed_hosts;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

pub use allowed_hosts::{default_port, AllowedHosts};

/// The domain of in-process targets: `http://users.spin.internal` is component `users`.
pub const INTERNAL_DOMAIN: &str = ".spin.internal";

/// Longest chain of in-process calls (A calls B calls C ...) before the host answers
/// `loop-detected`: a component calling itself forever must not exhaust the instance pool.
pub const MAX_CHAIN_DEPTH: u32 = 16;

pub type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// Where an in-process request goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ChainTarget {
    /// `http://NAME.spin.internal/...`: straight to that component.
    Component(String),
    /// `http://self/...`: through the application's router, like an incoming request.
    App,
}

/// Serves chained requests without a socket. Implemented by the HTTP trigger.
pub trait ChainedRequests: Send + Sync {
    fn serve_chained(
        &self,
        target: ChainTarget,
        request: http::Request<WasiBody>,
        depth: u32,
    ) -> BoxFuture<Result<http::Response<WasiBody>, HttpError>>;
}

/// Per-instance outbound HTTP state: who is calling, what they may reach, how to chain.
pub struct OutboundHttp {
    pub component: Arc<str>,
    pub allowed: Arc<AllowedHosts>,
    pub chained: Arc<dyn ChainedRequests>,
    /// How many in-process hops led to the request this instance is serving.
    pub depth: u32,
    pub connect_timeout: Duration,
    pub first_byte_timeout: Duration,
}

impl OutboundHttp {
    fn target_of(&self, uri: &http::Uri) -> Result<Outbound, HttpError> {
        let scheme = uri.scheme_str().unwrap_or("http").to_ascii_lowercase();
        let Some(host) = uri.host() else {
            return Err(HttpError::HttpRequestUriInvalid);
        };
        let host = host.to_ascii_lowercase();
        let port = uri.port_u16();
        if !self.allowed.allows(&scheme, &host, port) {
            tracing::warn!(
                component = %self.component,
                url = %uri,
                allowed = %self.allowed,
                "outbound request denied: add the host to the component's allowed_outbound_hosts"
            );
            return Err(HttpError::HttpRequestDenied);
        }
        if host == "self" {
            return Ok(Outbound::Chained(ChainTarget::App));
        }
        if let Some(name) = host.strip_suffix(INTERNAL_DOMAIN) {
            return Ok(Outbound::Chained(ChainTarget::Component(name.to_string())));
        }
        Ok(Outbound::Network)
    }
}

enum Outbound {
    Chained(ChainTarget),
    Network,
}

type SendResult = wasmtime_wasi_http::Result<(
    http::Response<WasiBody>,
    Box<dyn Future<Output = Result<(), HttpError>> + Send>,
)>;

impl WasiHttpHooks for OutboundHttp {
    fn send_request(
        &mut self,
        request: http::Request<WasiBody>,
        options: Option<RequestOptions>,
        fut: Box<dyn Future<Output = Result<(), HttpError>> + Send>,
    ) -> Box<dyn Future<Output = SendResult> + Send> {
        drop(fut);
        let target = self.target_of(request.uri());
        let chained = self.chained.clone();
        let depth = self.depth;
        let defaults = RequestOptions {
            connect_timeout: Some(self.connect_timeout),
            first_byte_timeout: Some(self.first_byte_timeout),
            between_bytes_timeout: Some(self.first_byte_timeout),
        };
        Box::new(async move {
            let done: Box<dyn Future<Output = Result<(), HttpError>> + Send> = Box::new(async { Ok(()) });
            match target? {
                Outbound::Chained(target) => {
                    if depth >= MAX_CHAIN_DEPTH {
                        return Err(HttpError::LoopDetected);
                    }
                    let response = chained.serve_chained(target, request, depth + 1).await?;
                    Ok((response, done))
                }
                Outbound::Network => {
                    let options = merge_options(options, defaults);
                    let (response, io) = wasmtime_wasi_http::default_send_request(request, Some(options)).await?;
                    Ok((
                        response.map(BodyExt::boxed_unsync),
                        Box::new(io) as Box<dyn Future<Output = _> + Send>,
                    ))
                }
            }
        })
    }
}

fn merge_options(guest: Option<RequestOptions>, defaults: RequestOptions) -> RequestOptions {
    let guest = guest.unwrap_or_default();
    RequestOptions {
        connect_timeout: guest.connect_timeout.or(defaults.connect_timeout),
        first_byte_timeout: guest.first_byte_timeout.or(defaults.first_byte_timeout),
        between_bytes_timeout: guest.between_bytes_timeout.or(defaults.between_bytes_timeout),
    }
}
