//! Outbound HTTP (`wasi:http/outgoing-handler`): the grant check against
//! `allowed_outbound_hosts`, in-process service chaining for `http://NAME.spin.internal` and
//! `http://self`, the real network client for everything else, and around both the outbound
//! policy of mosaic.toml (timeouts, retries, circuit breaker: [`policy`], [`breaker`]).
//!
//! The seam is wasmtime-wasi-http's [`WasiHttpHooks::send_request`]: every guest request
//! passes through [`OutboundHttp`], which knows the calling component and its grants.

pub mod breaker;
pub mod policy;
pub mod settings;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_body_util::BodyExt;
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody, WasiHttpHooks};

use crate::observe::{OpenSpan, SpanKind};

// The `allowed_outbound_hosts` parser lives in the `mosaic-manifest` crate.
pub use mosaic_manifest::allowed_hosts::{default_port, AllowedHosts};
pub use policy::{Destination, OutboundPolicies};

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
    /// `depth`: the hops so far, this one included; `generation`: the deploy-set generation
    /// the chain began in, see [`ChainPosition`].
    fn serve_chained(
        &self,
        target: ChainTarget,
        request: http::Request<WasiBody>,
        depth: u32,
        generation: u64,
    ) -> BoxFuture<Result<http::Response<WasiBody>, HttpError>>;
}

/// Where an instance's requests stand in a chain of in-process calls.
///
/// A chain keeps to one side of a deploy set's flip (a dependency's deploy swaps all its
/// dependents at once): every hop is picked for the generation of deploy sets the chain began
/// in, so that a request never sees one dependent composed with the old dependency and
/// another with the new (`App::pick`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ChainPosition {
    /// How many in-process hops led here (0: a request from a listener, a delivery, a probe).
    pub depth: u32,
    /// The deploy-set generation the chain began in.
    pub generation: u64,
}

impl ChainPosition {
    /// The first hop of a chain that begins in `generation`.
    pub fn start(generation: u64) -> Self {
        Self { depth: 0, generation }
    }
}

/// Per-instance outbound HTTP state: who is calling, what they may reach, how to chain.
pub struct OutboundHttp {
    pub component: Arc<str>,
    pub allowed: Arc<AllowedHosts>,
    pub chained: Arc<dyn ChainedRequests>,
    /// Where the request this instance serves stands in its chain of in-process calls.
    pub chain: ChainPosition,
    /// The app's outbound policies and circuit breakers.
    pub policies: Arc<OutboundPolicies>,
    /// The end of the request this instance serves: no outbound attempt or retry goes past it.
    pub deadline: Instant,
    /// The trace of the request this instance serves, passed on in `traceparent`.
    pub trace: Option<Arc<crate::observe::TraceContext>>,
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
            return Ok(Outbound::Chained(ChainTarget::App, Destination::in_process(&host)));
        }
        if let Some(name) = host.strip_suffix(INTERNAL_DOMAIN) {
            return Ok(Outbound::Chained(
                ChainTarget::Component(name.to_string()),
                Destination::in_process(&host),
            ));
        }
        let port = port.or_else(|| default_port(&scheme)).unwrap_or(80);
        Ok(Outbound::Network(Destination::network(&host, port)))
    }
}

enum Outbound {
    Chained(ChainTarget, Destination),
    Network(Destination),
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
        let mut request = request;
        // The call's client span (when spans are exported) is the parent the callee sees.
        let (mut client_span, passed_on) = self.policies.spans().child(self.trace.as_deref(), SpanKind::Client, "");
        if let Some(trace) = passed_on.as_ref().or(self.trace.as_deref()) {
            // A guest that passes on a trace context itself keeps its own.
            if !request.headers().contains_key(crate::observe::TRACEPARENT) {
                if let Ok(value) = http::HeaderValue::from_str(&trace.header_value()) {
                    request.headers_mut().insert(crate::observe::TRACEPARENT, value);
                }
            }
        }
        let target = self.target_of(request.uri());
        if client_span.is_recording() {
            describe_client_span(&mut client_span, &request, target.as_ref().ok(), &self.component);
        }
        let chained = self.chained.clone();
        let ChainPosition { depth, generation } = self.chain;
        let policies = self.policies.clone();
        let component = self.component.clone();
        let deadline = self.deadline;
        Box::new(async move {
            let outcome = send(
                target, request, options, chained, depth, generation, policies, component, deadline,
            )
            .await;
            if client_span.is_recording() {
                match &outcome {
                    Ok((response, _)) => {
                        let status = response.status();
                        client_span.set("http.response.status_code", i64::from(status.as_u16()));
                        if status.is_client_error() || status.is_server_error() {
                            client_span.set("error.type", status.as_u16().to_string());
                            client_span.fail(format!("answered {status}"));
                        }
                    }
                    Err(err) => {
                        let error = format!("{err:?}");
                        client_span.set("error.type", error.clone());
                        client_span.fail(error);
                    }
                }
            }
            outcome
        })
    }
}

/// Names an outbound call's client span and gives it the semantic-convention attributes of an
/// HTTP client span (and, for an in-process call, the component it reaches).
fn describe_client_span(
    span: &mut OpenSpan,
    request: &http::Request<WasiBody>,
    target: Option<&Outbound>,
    component: &str,
) {
    let uri = request.uri();
    span.rename(request.method().as_str().to_string());
    span.set_str("http.request.method", request.method().as_str());
    span.set_str("url.full", &uri.to_string());
    if let Some(host) = uri.host() {
        span.set_str("server.address", host);
    }
    if let Some(port) = uri.port_u16() {
        span.set("server.port", i64::from(port));
    }
    span.set_str("mosaic.component", component);
    match target {
        Some(Outbound::Chained(ChainTarget::Component(name), _)) => {
            span.set("mosaic.in_process", true);
            span.set_str("mosaic.peer.component", name);
        }
        Some(Outbound::Chained(ChainTarget::App, _)) => span.set("mosaic.in_process", true),
        _ => span.set("mosaic.in_process", false),
    }
}

/// Sends one outbound request (in-process or over the network) under its destination's policy.
#[allow(clippy::too_many_arguments)]
async fn send(
    target: Result<Outbound, HttpError>,
    request: http::Request<WasiBody>,
    options: Option<RequestOptions>,
    chained: Arc<dyn ChainedRequests>,
    depth: u32,
    generation: u64,
    policies: Arc<OutboundPolicies>,
    component: Arc<str>,
    deadline: Instant,
) -> SendResult {
    match target? {
        Outbound::Chained(target, destination) => {
            if depth >= MAX_CHAIN_DEPTH {
                return Err(HttpError::LoopDetected);
            }
            let attempt = move |request, options: RequestOptions| -> BoxFuture<Result<policy::Sent, HttpError>> {
                let (chained, target) = (chained.clone(), target.clone());
                Box::pin(async move {
                    // A task of its own: when the caller gives up at its timeout,
                    // the callee's request still ends (and is counted) by its own
                    // deadline.
                    let serve = tokio::spawn(chained.serve_chained(target, request, depth + 1, generation));
                    let limit = options.first_byte_timeout.unwrap_or(Duration::MAX);
                    let response = tokio::time::timeout(limit, serve)
                        .await
                        .map_err(|_| HttpError::ConnectionReadTimeout)?
                        .map_err(|join| {
                            HttpError::InternalError(Some(format!("the in-process request failed: {join}")))
                        })??;
                    let done: policy::IoFuture = Box::new(async { Ok(()) });
                    Ok((response, done))
                })
            };
            policies
                .send(&component, &destination, request, options, deadline, attempt)
                .await
        }
        Outbound::Network(destination) => {
            let attempt = |request, options: RequestOptions| -> BoxFuture<Result<policy::Sent, HttpError>> {
                Box::pin(async move {
                    let (response, io) = wasmtime_wasi_http::default_send_request(request, Some(options)).await?;
                    Ok((response.map(BodyExt::boxed_unsync), Box::new(io) as policy::IoFuture))
                })
            };
            policies
                .send(&component, &destination, request, options, deadline, attempt)
                .await
        }
    }
}

/// Outbound destinations are checked per request by their breakers, not for readiness.
impl super::Capability for OutboundPolicies {}
