//! The HTTP trigger: routes an incoming request to a component, adds the `spin-*` headers,
//! runs it in a fresh instance of the version live when it arrived, and turns failures into
//! 5xx answers with a log line. Also serves in-process chained requests and deploy probes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Body;
use tokio::net::TcpListener;
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tracing::Instrument;
use wasmtime_wasi_http::p2::bindings::http::types::{ErrorCode, Scheme};
use wasmtime_wasi_http::p2::body::HyperOutgoingBody;
use wasmtime_wasi_http::{Error as HttpError, WasiBody, WasiHttpView};

use crate::app::manifest::HttpRoute;
use crate::app::routes::{RouteMatch, RoutePattern};
use crate::app::{count, App, ComponentSpec, Deployment};
use crate::capability::http_outbound::{BoxFuture, ChainTarget, ChainedRequests};
use crate::instance::{new_store, DeadlineExceeded};
use crate::observe::{TraceContext, TRACEPARENT};
use crate::trigger::body::{full, json_error, payload_too_large, request_too_large, response_too_large, CappedBody};

pub type HttpResponse = hyper::Response<HyperOutgoingBody>;

/// The largest request head (request line and headers) a client may send: 431 beyond.
const MAX_HEAD_BYTES: usize = 64 * 1024;

/// The address chained requests report as `spin-client-addr`.
const IN_PROCESS_CLIENT: SocketAddr = SocketAddr::new(std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST), 0);

#[derive(Clone)]
pub struct HttpTrigger {
    app: Arc<App>,
    admission: Arc<Admission>,
}

/// The cap on requests one component serves at once (`http.max_in_flight_per_component`):
/// the instance pool is shared, and without a cap one component flooded with slow requests
/// would take every instance, so that its neighbours could only answer 503.
struct Admission {
    limit: u32,
    per_component: Mutex<HashMap<String, Arc<Semaphore>>>,
    /// Per component: when a refusal was last logged, and refusals since then. A flood of
    /// refusals is one warning a second, not a line per request.
    refusals_logged: Mutex<HashMap<String, (Option<std::time::Instant>, u64)>>,
}

impl Admission {
    fn new(limit: u32) -> Admission {
        Admission {
            limit,
            per_component: Mutex::default(),
            refusals_logged: Mutex::default(),
        }
    }

    /// Logs a refusal of `component`, at most once a second with the count since the last line.
    fn log_refusal(&self, component: &str) {
        let mut logged = self
            .refusals_logged
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        let now = std::time::Instant::now();
        let entry = logged.entry(component.to_string()).or_insert((None, 0));
        entry.1 += 1;
        if entry
            .0
            .is_none_or(|last| now.duration_since(last) >= Duration::from_secs(1))
        {
            tracing::warn!(
                component,
                refused = entry.1,
                limit = self.limit,
                "requests refused with 503: the component is at http.max_in_flight_per_component"
            );
            *entry = (Some(now), 0);
        }
    }

    /// A permit to serve one more request of `component`, held until its instance is gone;
    /// `None` when the component is at its cap.
    fn try_enter(&self, component: &str) -> Option<OwnedSemaphorePermit> {
        let semaphore = {
            let mut map = self
                .per_component
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            match map.get(component) {
                Some(semaphore) => semaphore.clone(),
                None => {
                    let semaphore = Arc::new(Semaphore::new(self.limit as usize));
                    map.insert(component.to_string(), semaphore.clone());
                    semaphore
                }
            }
        };
        semaphore.try_acquire_owned().ok()
    }
}

/// Why a component did not answer a request.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// `trap`: the trap code alone (what a client may see); `detail`: with the wasm backtrace
    /// (for the log only: it shows the guest's internals).
    #[error("component `{component}` trapped: {detail}")]
    Trap {
        component: String,
        trap: Option<String>,
        detail: String,
    },
    #[error("component `{component}` exceeded the request deadline of {timeout:?}")]
    Deadline { component: String, timeout: Duration },
    #[error("component `{component}` could not be instantiated: {detail}")]
    Instantiate { component: String, detail: String },
    #[error("component `{component}` returned the error code {code:?} instead of a response")]
    Guest { component: String, code: ErrorCode },
    #[error("component `{component}` finished without sending a response")]
    NoResponse { component: String },
    #[error(
        "component `{component}` is already serving {limit} requests, its limit \
         (http.max_in_flight_per_component in mosaic.toml); try again shortly"
    )]
    Busy { component: String, limit: u32 },
}

impl ServeError {
    pub fn into_response(self) -> HttpResponse {
        let (status, error) = match &self {
            ServeError::Trap { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "component trapped"),
            ServeError::Deadline { .. } => (StatusCode::GATEWAY_TIMEOUT, "deadline exceeded"),
            ServeError::Instantiate { .. } => (StatusCode::SERVICE_UNAVAILABLE, "no instance available"),
            ServeError::Guest { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "component error"),
            ServeError::NoResponse { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "no response"),
            ServeError::Busy { .. } => (StatusCode::SERVICE_UNAVAILABLE, "component busy"),
        };
        json_error(status, error, self.client_detail())
    }

    /// What the client is told: the reason without the host's internals (backtraces, paths),
    /// which go to the log line of the failed request.
    fn client_detail(&self) -> String {
        match self {
            ServeError::Trap { component, trap, .. } => format!(
                "component `{component}` trapped: {} (the host log has the details)",
                trap.as_deref().unwrap_or("the component failed")
            ),
            ServeError::Instantiate { component, .. } => {
                format!("component `{component}` could not be instantiated (the host log has the details)")
            }
            other => other.to_string(),
        }
    }
}

/// Where a request landed: the values of the `spin-*` headers.
struct RouteInfo {
    pattern: Option<RoutePattern>,
    matched: RouteMatch,
}

impl RouteInfo {
    fn for_component(spec: &ComponentSpec, path: &str) -> Self {
        match &spec.route {
            Some(HttpRoute::Public(pattern)) => {
                let matched = pattern.matches(path).unwrap_or(RouteMatch {
                    path_info: path.to_string(),
                    params: vec![],
                });
                RouteInfo {
                    pattern: Some(pattern.clone()),
                    matched,
                }
            }
            _ => RouteInfo {
                pattern: None,
                matched: RouteMatch {
                    path_info: path.to_string(),
                    params: vec![],
                },
            },
        }
    }
}

impl HttpTrigger {
    pub fn new(app: Arc<App>) -> Self {
        let limit = app
            .settings
            .http
            .in_flight_per_component(app.settings.limits.max_concurrent_instances);
        let admission = Arc::new(Admission::new(limit));
        Self { app, admission }
    }

    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

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
        let route = RouteInfo {
            pattern: Some(pattern.clone()),
            matched,
        };
        let component = component.to_string();
        self.serve_live(&component, request, route, client, 0).await
    }

    /// Serves a request on the live version of `component`, counting it in the slot's stats.
    async fn serve_live<B>(
        &self,
        component: &str,
        request: hyper::Request<B>,
        route: RouteInfo,
        client: SocketAddr,
        depth: u32,
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
        let deployment = slot.live.load_full();
        let mut request = request;
        let trace = TraceContext::continue_or_start(request.headers());
        if let Ok(value) = HeaderValue::from_str(&trace.header_value()) {
            request.headers_mut().insert(TRACEPARENT, value);
        }
        let span = tracing::info_span!("request", component = %component, version = %deployment.short_digest(), method = %request.method(), path = %request.uri().path(), trace_id = %trace.trace_id);
        let started = std::time::Instant::now();
        let version = deployment.short_digest().to_string();
        let outcome = match self.admission.try_enter(component) {
            Some(permit) => {
                self.serve_version(
                    &slot.spec,
                    deployment,
                    request,
                    route,
                    client,
                    depth,
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
        self.app
            .metrics
            .record_request(component, &version, started.elapsed(), failed);
        if failed {
            count(&slot.stats.errors);
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

    /// Runs one request in a fresh instance of `deployment`; `permit` (the component's
    /// admission) is held as long as the instance runs.
    #[allow(clippy::too_many_arguments)]
    async fn serve_version<B>(
        &self,
        spec: &ComponentSpec,
        deployment: Arc<Deployment>,
        request: hyper::Request<B>,
        route: RouteInfo,
        client: SocketAddr,
        depth: u32,
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
        let chained: Arc<dyn ChainedRequests> = Arc::new(self.clone());
        let instantiate_error = |detail: String| ServeError::Instantiate {
            component: component.clone(),
            detail,
        };
        let mut store =
            new_store(&self.app, spec, chained, depth, timeout).map_err(|err| instantiate_error(format!("{err:#}")))?;
        store
            .data_mut()
            .set_trace(TraceContext::from_headers(request.headers()));

        let request = with_spin_headers(request, &route, client);
        // A body that crosses the cap without having declared its length (chunked) reaches the
        // guest as a body error; whatever the guest answers then, the client gets a 413.
        let body_over_cap = Arc::new(AtomicBool::new(false));
        let request = request.map(|body| {
            CappedBody::new(body, limits.max_request_body_bytes, request_too_large).reporting_to(body_over_cap.clone())
        });
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

        let Some(pre) = deployment.http.clone() else {
            return Err(instantiate_error(
                "it does not serve HTTP: it exports no wasi:http/incoming-handler (it is a [[trigger.redis]] subscriber)"
                    .into(),
            ));
        };
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
            Ok(Err(code)) => Err(ServeError::Guest { component, code }),
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
        if body_over_cap.load(Ordering::SeqCst) {
            tracing::info!(
                limit = limits.max_request_body_bytes,
                "the request body went over the limit: answered 413"
            );
            return Ok(payload_too_large(limits.max_request_body_bytes));
        }
        outcome
    }

    /// The deploy pipeline's probe: instantiates `deployment` and calls its health route
    /// before any user traffic reaches it. A component without a health route (404) passes;
    /// a 5xx, a trap or a timeout fails.
    pub async fn probe(&self, spec: &ComponentSpec, deployment: Arc<Deployment>) -> Result<(), String> {
        let prefix = match &spec.route {
            Some(HttpRoute::Public(pattern)) => pattern.literal_prefix(),
            _ => String::new(),
        };
        let path = format!("{prefix}/health");
        let request = hyper::Request::get(path.as_str())
            .header(http::header::HOST, "mosaic.probe")
            .header("user-agent", "mosaic-deploy-probe")
            .body(Empty::<Bytes>::new())
            .map_err(|err| format!("cannot build the probe request for {path}: {err}"))?;
        let route = RouteInfo::for_component(spec, &path);
        let timeout = self.app.settings.limits.probe_timeout();
        let response = self
            .serve_version(spec, deployment, request, route, IN_PROCESS_CLIENT, 0, timeout, None)
            .await
            .map_err(|err| err.to_string())?;
        let status = response.status();
        // Read the whole answer: a guest must be able to finish writing its body.
        let body = tokio::time::timeout(timeout, response.into_body().collect())
            .await
            .ok()
            .and_then(Result::ok)
            .map(|collected| collected.to_bytes())
            .unwrap_or_default();
        if status.is_server_error() {
            let excerpt = String::from_utf8_lossy(&body[..body.len().min(200)]).to_string();
            return Err(format!("the health route GET {path} answered {status}: {excerpt}"));
        }
        Ok(())
    }
}

fn classify(component: &str, instantiating: bool, err: wasmtime::Error, timeout: Duration) -> ServeError {
    let component = component.to_string();
    if err.downcast_ref::<DeadlineExceeded>().is_some() {
        return ServeError::Deadline { component, timeout };
    }
    if instantiating && err.downcast_ref::<wasmtime::Trap>().is_none() {
        return ServeError::Instantiate {
            component,
            detail: format!("{err:#}"),
        };
    }
    let trap = err.downcast_ref::<wasmtime::Trap>().map(|trap| trap.to_string());
    let detail = match &trap {
        Some(trap) => format!("{trap}: {err:#}"),
        None => format!("{err:#}"),
    };
    ServeError::Trap {
        component,
        trap,
        detail,
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

/// Replaces any `spin-*` header the client sent with the values Spin computes.
fn with_spin_headers<B>(mut request: hyper::Request<B>, route: &RouteInfo, client: SocketAddr) -> hyper::Request<B> {
    let headers = request.headers_mut();
    let spoofed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("spin-"))
        .cloned()
        .collect();
    for name in spoofed {
        headers.remove(name);
    }
    let host = headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| request.uri().authority().map(|a| a.to_string()))
        .unwrap_or_else(|| "localhost".to_string());
    if !request.headers().contains_key(http::header::HOST) {
        if let Ok(value) = HeaderValue::from_str(&host) {
            request.headers_mut().insert(http::header::HOST, value);
        }
    }
    let path_and_query = request
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/")
        .to_string();
    let (matched_route, component_route) = match &route.pattern {
        Some(pattern) => (pattern.as_str().to_string(), pattern.without_wildcard()),
        None => (String::new(), String::new()),
    };
    let mut values = vec![
        ("spin-full-url".to_string(), format!("http://{host}{path_and_query}")),
        ("spin-path-info".to_string(), route.matched.path_info.clone()),
        ("spin-matched-route".to_string(), matched_route.clone()),
        ("spin-base-path".to_string(), "/".to_string()),
        ("spin-raw-component-route".to_string(), matched_route),
        ("spin-component-route".to_string(), component_route),
        ("spin-client-addr".to_string(), client.to_string()),
    ];
    for (name, value) in &route.matched.params {
        values.push((format!("spin-path-match-{}", name.to_ascii_lowercase()), value.clone()));
    }
    let headers = request.headers_mut();
    for (name, value) in values {
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(&value)) {
            headers.insert(name, value);
        }
    }
    request
}

impl ChainedRequests for HttpTrigger {
    fn serve_chained(
        &self,
        target: ChainTarget,
        request: http::Request<WasiBody>,
        depth: u32,
    ) -> BoxFuture<Result<http::Response<WasiBody>, HttpError>> {
        let trigger = self.clone();
        Box::pin(async move {
            let path = request.uri().path().to_string();
            let (component, route) = match target {
                ChainTarget::Component(name) => {
                    let Some(slot) = trigger.app.slot(&name) else {
                        tracing::warn!(target_component = %name, "chained request to a component that does not exist");
                        return Err(HttpError::DestinationNotFound);
                    };
                    let route = RouteInfo::for_component(&slot.spec, &path);
                    (name, route)
                }
                ChainTarget::App => {
                    let router = trigger.app.router();
                    let Some((pattern, component, matched)) = router.route(&path) else {
                        return Ok(json_error(
                            StatusCode::NOT_FOUND,
                            "not found",
                            format!("no route matches {path}"),
                        ));
                    };
                    (
                        component.to_string(),
                        RouteInfo {
                            pattern: Some(pattern.clone()),
                            matched,
                        },
                    )
                }
            };
            Ok(trigger
                .serve_live(&component, request, route, IN_PROCESS_CLIENT, depth)
                .await)
        })
    }
}

/// Accepts connections until `shutdown` turns true, then stops accepting and waits for the
/// connections in progress to finish, up to `drain`. At most `http.max_connections` are open
/// at once.
pub async fn serve(listener: TcpListener, trigger: HttpTrigger, shutdown: watch::Receiver<bool>, drain: Duration) {
    let settings = &trigger.app.settings.http;
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
    let service_for = |client: SocketAddr| {
        let trigger = trigger.clone();
        hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
            let trigger = trigger.clone();
            async move { Ok::<_, std::convert::Infallible>(trigger.handle(request, client).await) }
        })
    };
    crate::listener::serve("http", listener, builder, service_for, limits, shutdown).await;
}

/// Resolves once the host is told to stop.
pub async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|stop| *stop).await;
}

/// A plain-text answer, used by the admin API.
pub fn text(status: StatusCode, body: impl Into<Bytes>) -> HttpResponse {
    let mut response = hyper::Response::new(full(body));
    *response.status_mut() = status;
    response
}
