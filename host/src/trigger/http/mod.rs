//! The HTTP trigger: routes an incoming request to a component, adds the `spin-*` headers
//! ([`headers`]), admits it under the component's cap ([`admission`]), runs it in a fresh
//! instance of the version live when it arrived, and turns failures into 5xx answers with a
//! log line ([`errors`]). In-process chained requests ([`chained`]) and deploy probes
//! ([`probe`]) take the same path; [`serve`] is the accept loop.

pub mod admission;
pub mod chained;
pub mod errors;
pub mod headers;
pub mod probe;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Body;
use tokio::net::TcpListener;
use tokio::sync::{watch, OwnedSemaphorePermit};
use tracing::Instrument;
use wasmtime_wasi_http::handler::ProxyPre;
use wasmtime_wasi_http::p2::bindings::http::types::Scheme;
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{Error as HttpError, WasiHttpView};

use crate::app::{count, ComponentSpec, Deployment, Wasi};
use crate::capability::http_outbound::ChainPosition;
use crate::instance::InstanceState;
use crate::instance_pool::{InstancePool, PoolError, RequestContext};
use crate::observe::{OpenSpan, SpanKind, TraceContext, TRACEPARENT};
use crate::settings::ReusePolicy;
use crate::trigger::body::{
    full, json_error, payload_too_large, request_too_large, response_too_large, CappedBody, PooledBody,
};
use crate::trigger::Dispatcher;
use errors::{classify, ServeError};
use headers::{with_spin_headers, RouteInfo};

pub type HttpResponse = hyper::Response<HyperOutgoingBody>;

/// Where a request comes from: the client's address, how many in-process hops led to it (0
/// for the listener's), and the trace it continues.
pub struct Origin {
    pub client: SocketAddr,
    pub depth: u32,
    /// The deploy-set generation the request's chain began in: see `ChainPosition`.
    pub generation: u64,
    pub trace: Option<TraceContext>,
}

/// Names the span of a request after its route (`GET /orders/...`) and gives it the
/// semantic-convention attributes of an HTTP server span, and the component and version.
fn describe_server_span<B>(
    span: &mut OpenSpan,
    request: &hyper::Request<B>,
    route: &RouteInfo,
    component: &str,
    deployment: &Deployment,
    depth: u32,
) {
    let method = request.method().as_str();
    let route_or_path = route.pattern().unwrap_or(request.uri().path());
    span.rename(format!("{method} {route_or_path}"));
    span.set_str("http.request.method", method);
    span.set_str("url.path", request.uri().path());
    if let Some(query) = request.uri().query() {
        span.set_str("url.query", query);
    }
    if let Some(pattern) = route.pattern() {
        span.set_str("http.route", pattern);
    }
    span.set_str("url.scheme", request.uri().scheme_str().unwrap_or("http"));
    span.set_str("mosaic.component", component);
    span.set_str("mosaic.component.version", deployment.short_digest());
    span.set_str("mosaic.component.world", &deployment.world.to_string());
    span.set("mosaic.chain.depth", i64::from(depth));
}

/// The largest request head (request line and headers) a client may send: 431 beyond.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// The address chained requests report as `spin-client-addr`.
const IN_PROCESS_CLIENT: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

impl Dispatcher {
    /// Serves one request from a client.
    pub async fn handle<B>(&self, request: hyper::Request<B>, client: SocketAddr) -> HttpResponse
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<HttpError>,
    {
        let limit = self.app.settings.limits.max_request_body_bytes;
        if declared_length(request.headers()).is_some_and(|length| length > limit) {
            return payload_too_large(limit);
        }
        let router = self.app.router();
        let path = request.uri().path().to_string();
        let Some((pattern, component, matched)) = router.route(&path) else {
            return json_error(StatusCode::NOT_FOUND, "not found", format!("no route matches {path}"));
        };
        let route = RouteInfo::new(Some(pattern), matched);
        let component = component.to_string();
        self.serve_live(&component, request, route, client, 0, None).await
    }

    /// Serves a request on the live version of `component` (for a chained request, the one
    /// live in the deploy-set `generation` its chain began in), counting it in the slot's stats.
    async fn serve_live<B>(
        &self,
        component: &str,
        request: hyper::Request<B>,
        route: RouteInfo,
        client: SocketAddr,
        depth: u32,
        generation: Option<u64>,
    ) -> HttpResponse
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<HttpError>,
    {
        let Some(slot) = self.app.slot(component) else {
            return json_error(
                StatusCode::NOT_FOUND,
                "not found",
                format!("no component `{component}` is deployed"),
            );
        };
        count(&slot.stats.requests);
        let (picked, generation) = self.app.pick(&slot, generation, |sticky| {
            request.headers().get(sticky).map(HeaderValue::as_bytes)
        });
        let deployment = picked.deployment.clone();
        let mut request = request;
        let incoming_trace = TraceContext::from_headers(request.headers());
        let trace = TraceContext::continue_from(incoming_trace.as_ref());
        if let Ok(value) = HeaderValue::from_str(&trace.header_value()) {
            request.headers_mut().insert(TRACEPARENT, value);
        }
        let mut server_span = self.app.metrics.spans().begin(
            &trace,
            incoming_trace.as_ref().map(|parent| parent.span_id.as_str()),
            SpanKind::Server,
            "",
        );
        if server_span.is_recording() {
            describe_server_span(&mut server_span, &request, &route, component, &deployment, depth);
        }
        let span = tracing::info_span!("request", component = %component, version = %deployment.short_digest(), method = %request.method(), path = %request.uri().path(), trace_id = %trace.trace_id);
        let started = std::time::Instant::now();
        let version = deployment.clone();
        let origin = Origin {
            client,
            depth,
            generation,
            trace: Some(trace),
        };
        let outcome = match self.admission.try_enter(component) {
            Some(permit) => {
                self.serve_version(
                    &slot.spec,
                    deployment,
                    request,
                    route,
                    origin,
                    self.app.settings.limits.request_timeout(),
                    Some(permit),
                )
                .instrument(span.clone())
                .await
            }
            None => Err(ServeError::Busy {
                component: component.to_string(),
                limit: self.admission.limit,
            }),
        };
        let failed = outcome
            .as_ref()
            .map_or(true, |response| response.status().is_server_error());
        if server_span.is_recording() {
            let status = match &outcome {
                Ok(response) => response.status(),
                Err(err) => err.status(),
            };
            server_span.set("http.response.status_code", i64::from(status.as_u16()));
            if failed {
                server_span.set("error.type", status.as_u16().to_string());
                match &outcome {
                    Err(err) => server_span.fail(err),
                    Ok(_) => server_span.fail(format!("the component answered {status}")),
                }
            }
        }
        self.app
            .metrics
            .record_request(component, version.short_digest(), started.elapsed(), failed);
        if failed {
            count(&slot.stats.errors);
        }
        // A refusal at admission says nothing of the version the request would have run on.
        if !matches!(outcome, Err(ServeError::Busy { .. })) {
            picked.record(failed);
        }
        match outcome {
            Ok(response) => response,
            Err(err @ ServeError::Busy { .. }) => {
                self.admission.log_refusal(component);
                err.into_response()
            }
            Err(err) => {
                span.in_scope(|| tracing::error!(error = %err, "request failed"));
                err.into_response()
            }
        }
    }

    /// Runs one request on `deployment`: on one of its reused instances when it reuses them
    /// (WASI 0.3 by default, WASI 0.2 when `[instance_reuse.NAME]` asks), else on a fresh
    /// instance. `permit` (the component's admission) is held until the response has streamed.
    #[allow(clippy::too_many_arguments)]
    async fn serve_version<B>(
        &self,
        spec: &ComponentSpec,
        deployment: Arc<Deployment>,
        request: hyper::Request<B>,
        route: RouteInfo,
        origin: Origin,
        timeout: Duration,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<HttpResponse, ServeError>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<HttpError>,
    {
        let wasi_0_3 = deployment.world.wasi == Wasi::V0_3;
        let reuse = self
            .app
            .settings
            .reuse_policy(self.app.manifest.settings_name(&spec.name), wasi_0_3);
        match (&deployment.http, reuse) {
            (Some(ProxyPre::P2(_)), None) => {
                self.serve_fresh(spec, deployment, request, route, origin, timeout, permit)
                    .await
            }
            (Some(_), reuse) => {
                self.serve_pooled(spec, deployment, request, route, origin, timeout, permit, reuse)
                    .await
            }
            (None, _) => Err(ServeError::Instantiate {
                component: spec.name.clone(),
                detail:
                    "it does not serve HTTP: it exports no wasi:http handler (it is a [[trigger.redis]] subscriber)"
                        .into(),
            }),
        }
    }

    /// Runs one request on an instance of the version's pool: a reused one when `reuse` is
    /// set and the request comes from the listener, else one made for it alone (a chained
    /// request carries its hop count in its instance, a probe its own timeout).
    #[allow(clippy::too_many_arguments)]
    async fn serve_pooled<B>(
        &self,
        spec: &ComponentSpec,
        deployment: Arc<Deployment>,
        request: hyper::Request<B>,
        route: RouteInfo,
        origin: Origin,
        timeout: Duration,
        permit: Option<OwnedSemaphorePermit>,
        reuse: Option<ReusePolicy>,
    ) -> Result<HttpResponse, ServeError>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<HttpError>,
    {
        let component = spec.name.clone();
        let limits = &self.app.settings.limits;
        let in_flight = deployment.enter();
        let Origin {
            client,
            depth,
            generation,
            trace,
        } = origin;
        let chain = ChainPosition { depth, generation };
        let make = |policy: ReusePolicy, pre: ProxyPre<InstanceState>| {
            InstancePool::new(
                pre,
                self.app.instances.clone(),
                spec.clone(),
                self.chained(),
                chain,
                policy,
                timeout,
                deployment.pooled_instance_counter(),
            )
        };
        // The shared pool serves the listener's requests (admitted, at depth 0) under the
        // request timeout; a probe (not admitted, its own timeout) or a chained request gets
        // an instance of its own.
        let from_listener = depth == 0 && permit.is_some();
        let Some(http) = deployment.http.as_ref() else {
            return Err(ServeError::NoResponse { component });
        };
        let pool = match reuse {
            Some(policy) if from_listener => deployment.pool(|| make(policy, clone_pre(http))),
            _ => Arc::new(make(ReusePolicy::SINGLE_USE, clone_pre(http))),
        };
        let instance_failed = Arc::new(AtomicBool::new(false));
        let context = RequestContext {
            trace,
            log_span: tracing::Span::current(),
            generation,
            instance_failed: instance_failed.clone(),
        };
        let request = with_spin_headers(request, &route, client);
        let (request, request_cap) = cap_request(request, limits.max_request_body_bytes);
        let request = request.map(|body| body.boxed_unsync());
        let started = std::time::Instant::now();
        let outcome = pool.handle(context, request).await;
        if let Some(too_large) = request_cap.answer_if_crossed() {
            return Ok(too_large);
        }
        match outcome {
            Ok(response) => {
                let (head, body) = response.into_parts();
                let mut body = PooledBody::new(body, (in_flight, permit, pool), instance_failed);
                body.read_ahead().await;
                let response = hyper::Response::from_parts(head, body.boxed_unsync());
                Ok(cap_response(response, limits.max_response_body_bytes))
            }
            Err(err) => Err(pool_error(&component, &err, timeout, started.elapsed() >= timeout)),
        }
    }

    /// Runs one request in a fresh instance of `deployment` (a WASI 0.2 handler); `permit`
    /// (the component's admission) is held as long as the instance runs.
    #[allow(clippy::too_many_arguments)]
    async fn serve_fresh<B>(
        &self,
        spec: &ComponentSpec,
        deployment: Arc<Deployment>,
        request: hyper::Request<B>,
        route: RouteInfo,
        origin: Origin,
        timeout: Duration,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<HttpResponse, ServeError>
    where
        B: Body<Data = Bytes> + Send + Unpin + 'static,
        B::Error: Into<HttpError>,
    {
        let component = spec.name.clone();
        let limits = &self.app.settings.limits;
        let in_flight = deployment.enter();
        let Origin {
            client,
            depth,
            generation,
            trace,
        } = origin;
        let chain = ChainPosition { depth, generation };
        let chained = self.chained();
        let instantiate_error = |detail: String| ServeError::Instantiate {
            component: component.clone(),
            detail,
        };
        let mut store = self
            .app
            .instances
            .new_store(spec, chained, chain, timeout)
            .map_err(|err| instantiate_error(format!("{err:#}")))?;
        store.data_mut().set_trace(trace, tracing::Span::current());

        let request = with_spin_headers(request, &route, client);
        let (request, request_cap) = cap_request(request, limits.max_request_body_bytes);
        let (sender, receiver) = tokio::sync::oneshot::channel();
        let incoming = store
            .data_mut()
            .http()
            .new_incoming_request(Scheme::Http, request)
            .map_err(|err| instantiate_error(format!("{err:#}")))?;
        let outparam = store
            .data_mut()
            .http()
            .new_response_outparam(sender)
            .map_err(|err| instantiate_error(format!("{err:#}")))?;

        let Some(ProxyPre::P2(pre)) = deployment.http.as_ref() else {
            return Err(instantiate_error(
                "it does not export wasi:http/incoming-handler@0.2".into(),
            ));
        };
        let pre = pre.clone();
        let task_component = component.clone();
        let guest = tokio::spawn(
            async move {
                // The in-flight guard lives as long as the guest runs, body streaming included.
                let _in_flight = in_flight;
                let _permit = permit;
                let run = async {
                    let proxy = pre.instantiate_async(&mut store).await.map_err(|err| (true, err))?;
                    proxy
                        .wasi_http_incoming_handler()
                        .call_handle(&mut store, incoming, outparam)
                        .await
                        .map_err(|err| (false, err))
                };
                match tokio::time::timeout(timeout, run).await {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err((instantiating, err))) => Err(classify(&task_component, instantiating, err, timeout)),
                    Err(_) => Err(ServeError::Deadline {
                        component: task_component,
                        timeout,
                    }),
                }
            }
            .in_current_span(),
        );

        let outcome = match receiver.await {
            Ok(Ok(response)) => {
                // The guest may still be writing the body: a failure from here on can only cut
                // the response short, but it must still be logged.
                tokio::spawn(
                    async move {
                        if let Ok(Err(err)) = guest.await {
                            tracing::error!(error = %err, "the component failed after sending its response headers");
                        }
                    }
                    .in_current_span(),
                );
                Ok(cap_response(response, limits.max_response_body_bytes))
            }
            Ok(Err(code)) => Err(ServeError::Guest {
                component,
                code: format!("{code:?}"),
            }),
            Err(_) => match guest.await {
                Ok(Ok(())) => Err(ServeError::NoResponse { component }),
                Ok(Err(err)) => Err(err),
                Err(join) => Err(ServeError::Trap {
                    component,
                    trap: None,
                    detail: format!("the instance task failed: {join}"),
                }),
            },
        };
        if let Some(too_large) = request_cap.answer_if_crossed() {
            return Ok(too_large);
        }
        outcome
    }
}

/// The cap on a request body that did not declare its length (chunked; one that declared too
/// much got its 413 before routing): crossing it reaches the guest as a body error, and
/// whatever the guest answers then, the client gets a 413.
struct RequestCap {
    limit: u64,
    crossed: Arc<AtomicBool>,
}

fn cap_request<B>(request: hyper::Request<B>, limit: u64) -> (hyper::Request<CappedBody<B>>, RequestCap) {
    let crossed = Arc::new(AtomicBool::new(false));
    let request = request.map(|body| CappedBody::new(body, limit, request_too_large).reporting_to(crossed.clone()));
    (request, RequestCap { limit, crossed })
}

impl RequestCap {
    /// The 413 to answer instead of the guest's response, if the body crossed the cap.
    fn answer_if_crossed(&self) -> Option<HttpResponse> {
        if !self.crossed.load(Ordering::SeqCst) {
            return None;
        }
        tracing::info!(limit = self.limit, "the request body went over the limit: answered 413");
        Some(payload_too_large(self.limit))
    }
}

/// A copy of the pre-instance (each pool holds its own).
fn clone_pre(pre: &ProxyPre<InstanceState>) -> ProxyPre<InstanceState> {
    match pre {
        ProxyPre::P2(pre) => ProxyPre::P2(pre.clone()),
        ProxyPre::P3(pre) => ProxyPre::P3(pre.clone()),
    }
}

/// The [`ServeError`] of a request an instance pool did not answer.
fn pool_error(component: &str, err: &wasmtime::Error, timeout: Duration, overdue: bool) -> ServeError {
    let component = component.to_string();
    if let Some(code) = err.downcast_ref::<wasmtime_wasi_http::p3::bindings::http::types::ErrorCode>() {
        return ServeError::Guest {
            component,
            code: format!("{code:?}"),
        };
    }
    match PoolError::of(err, overdue) {
        PoolError::Instantiate(detail) => ServeError::Instantiate { component, detail },
        PoolError::Deadline => ServeError::Deadline { component, timeout },
        PoolError::Trap(detail) => {
            let trap = err.downcast_ref::<wasmtime::Trap>().map(|trap| trap.to_string());
            ServeError::Trap {
                component,
                trap,
                detail,
            }
        }
    }
}

/// The `content-length` a message declares, if it declares a valid one.
fn declared_length(headers: &http::HeaderMap) -> Option<u64> {
    headers.get(http::header::CONTENT_LENGTH)?.to_str().ok()?.parse().ok()
}

fn cap_response(response: HttpResponse, limit: u64) -> HttpResponse {
    if declared_length(response.headers()).is_some_and(|length| length > limit) {
        return json_error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "response body too large",
            format!("the component's response is over the limit of {limit} bytes (limits.max_response_body_bytes)"),
        );
    }
    response.map(|body| CappedBody::new(body, limit, response_too_large).boxed_unsync())
}

/// Accepts connections until `shutdown` turns true, then stops accepting and waits for the
/// connections in progress to finish, up to `drain`. At most `http.max_connections` are open
/// at once.
pub async fn serve(
    listener: TcpListener,
    tls: Option<tokio_rustls::TlsAcceptor>,
    dispatcher: Dispatcher,
    shutdown: watch::Receiver<bool>,
    drain: Duration,
) {
    let settings = &dispatcher.app.settings.http;
    let limits = crate::listener::ConnectionLimits {
        max_connections: settings.max_connections,
        drain,
    };
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(settings.header_read_timeout())
        .max_header_size(MAX_HEAD_BYTES)
        .max_buf_size(MAX_HEAD_BYTES);
    let secure = tls.is_some();
    let service_for = |client: SocketAddr| {
        let dispatcher = dispatcher.clone();
        hyper::service::service_fn(move |mut request: hyper::Request<hyper::body::Incoming>| {
            let dispatcher = dispatcher.clone();
            if secure {
                mark_https(&mut request);
            }
            async move { Ok::<_, std::convert::Infallible>(dispatcher.handle(request, client).await) }
        })
    };
    match tls {
        Some(acceptor) => {
            let listener = crate::listener::TlsListener { listener, acceptor };
            crate::listener::serve("https", listener, builder, service_for, limits, shutdown).await
        }
        None => crate::listener::serve("http", listener, builder, service_for, limits, shutdown).await,
    }
}

/// A request that came over TLS: its URI says `https` (so does its `spin-full-url`).
fn mark_https<B>(request: &mut hyper::Request<B>) {
    let mut parts = request.uri().clone().into_parts();
    parts.scheme = Some(http::uri::Scheme::HTTPS);
    if parts.authority.is_none() {
        parts.authority = request
            .headers()
            .get(http::header::HOST)
            .and_then(|host| host.to_str().ok())
            .and_then(|host| host.parse().ok())
            .or_else(|| Some(http::uri::Authority::from_static("localhost")));
    }
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(http::uri::PathAndQuery::from_static("/"));
    }
    if let Ok(uri) = http::Uri::from_parts(parts) {
        *request.uri_mut() = uri;
    }
}

/// A plain-text answer, used by the admin API.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> HttpResponse {
    let mut response = hyper::Response::new(full(body));
    *response.status_mut() = status;
    response
}
