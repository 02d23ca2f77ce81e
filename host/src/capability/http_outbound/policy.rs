//! The outbound policy of `[outbound]` in mosaic.toml, applied by the host to every outbound
//! request of every guest, with no code in the component: per destination, connect and request
//! timeouts, retries with exponential backoff and full jitter (idempotent methods with a small
//! body only), and a circuit breaker shared by all instances of the app.
//!
//! A destination is `HOST:PORT` for the network, `NAME.spin.internal` for a component and
//! `self` for the app's own router. [`OutboundPolicies::send`] runs one guest request through
//! the policy around the function that sends one attempt (in-process or over the network).

use std::collections::{HashMap, VecDeque};
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http::{HeaderMap, Method, StatusCode};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use wasmtime_wasi_http::{Error as HttpError, RequestOptions, WasiBody};

use super::breaker::{Breaker, BreakerConfig, Permit, Rejection, Transition, Verdict};
use super::settings::{DestinationPolicy, OutboundSettings};
use super::BoxFuture;
use crate::observe::{BreakerGauge, Metrics, OutboundOutcome};

/// The largest request body kept in memory so that the request can be sent again. A larger
/// (or streamed past this size) body is sent once, without retries.
pub const MAX_RETRY_BODY_BYTES: u64 = 64 * 1024;

/// How long the host waits for the guest to finish writing a request body it would buffer for
/// retries; past it, the request is streamed and sent once.
const BUFFER_PATIENCE: Duration = Duration::from_millis(500);

/// Most breakers kept at once. Beyond, idle ones (closed, no failure) are forgotten; a
/// destination that still finds no room goes without a breaker (timeouts and retries apply).
const MAX_BREAKERS: usize = 1024;

/// What the host waits on after handing back a response: the connection's I/O.
pub type IoFuture = Box<dyn Future<Output = Result<(), HttpError>> + Send>;
pub type Sent = (http::Response<WasiBody>, IoFuture);

/// Where an outbound request goes, as the policy names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Destination {
    /// `HOST:PORT`, `NAME.spin.internal` or `self`: the breaker's and the metrics' name.
    pub key: String,
    /// The host alone, for `[outbound.destinations."HOST"]`.
    pub host: String,
}

impl Destination {
    pub fn network(host: &str, port: u16) -> Self {
        Self {
            key: format!("{host}:{port}"),
            host: host.to_string(),
        }
    }

    pub fn in_process(name: &str) -> Self {
        Self {
            key: name.to_string(),
            host: name.to_string(),
        }
    }
}

/// The policy of one destination, resolved from `[outbound]` and its overrides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Policy {
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub retries: u32,
    pub retry_initial: Duration,
    pub retry_max: Duration,
    /// `None` when `breaker_failures` is 0.
    pub breaker: Option<BreakerConfig>,
}

impl Policy {
    /// `[outbound]`, then `[outbound.destinations."HOST"]`, then `."HOST:PORT"` (keys in lower
    /// case, as [`OutboundPolicies::new`] leaves them).
    pub fn resolve(settings: &OutboundSettings, destination: &Destination) -> Policy {
        let mut values = settings.as_override();
        for key in [&destination.host, &destination.key] {
            if let Some(layer) = settings.destinations.get(key.as_str()) {
                values = overlay(values, layer);
            }
        }
        let ms = |value: Option<u64>| Duration::from_millis(value.unwrap_or(0));
        let failures = values.breaker_failures.unwrap_or(0);
        Policy {
            connect_timeout: ms(values.connect_timeout_ms),
            request_timeout: ms(values.request_timeout_ms),
            retries: values.retries.unwrap_or(0),
            retry_initial: ms(values.retry_initial_ms),
            retry_max: ms(values.retry_max_ms),
            breaker: (failures > 0).then(|| BreakerConfig {
                failures,
                window: ms(values.breaker_window_ms),
                open_for: ms(values.breaker_open_ms),
            }),
        }
    }

    /// The ceiling of the wait before retry number `retry` (1 for the first): exponential,
    /// capped at `retry_max`.
    pub fn backoff_ceiling(&self, retry: u32) -> Duration {
        let factor = 2u32.saturating_pow(retry.saturating_sub(1).min(30));
        self.retry_initial.saturating_mul(factor).min(self.retry_max)
    }

    /// The wait before retry number `retry`: drawn uniformly below the ceiling (full jitter),
    /// so that many callers failing at once do not retry in step.
    pub fn backoff(&self, retry: u32) -> Duration {
        let ceiling = self.backoff_ceiling(retry).as_millis() as u64;
        Duration::from_millis(rand::random_range(0..=ceiling))
    }

    /// The timeouts of one attempt: the guest's own when shorter, never past the deadline of
    /// the request the guest is serving.
    fn attempt_options(&self, guest: Option<RequestOptions>, deadline: Instant) -> RequestOptions {
        let guest = guest.unwrap_or_default();
        let remaining = deadline
            .saturating_duration_since(Instant::now())
            .max(Duration::from_millis(1));
        let shortest = |guest: Option<Duration>, policy: Duration| guest.map_or(policy, |guest| guest.min(policy));
        RequestOptions {
            connect_timeout: Some(shortest(guest.connect_timeout, self.connect_timeout).min(remaining)),
            first_byte_timeout: Some(shortest(guest.first_byte_timeout, self.request_timeout).min(remaining)),
            between_bytes_timeout: Some(guest.between_bytes_timeout.unwrap_or(self.request_timeout)),
        }
    }
}

fn overlay(base: DestinationPolicy, layer: &DestinationPolicy) -> DestinationPolicy {
    DestinationPolicy {
        connect_timeout_ms: layer.connect_timeout_ms.or(base.connect_timeout_ms),
        request_timeout_ms: layer.request_timeout_ms.or(base.request_timeout_ms),
        retries: layer.retries.or(base.retries),
        retry_initial_ms: layer.retry_initial_ms.or(base.retry_initial_ms),
        retry_max_ms: layer.retry_max_ms.or(base.retry_max_ms),
        breaker_failures: layer.breaker_failures.or(base.breaker_failures),
        breaker_window_ms: layer.breaker_window_ms.or(base.breaker_window_ms),
        breaker_open_ms: layer.breaker_open_ms.or(base.breaker_open_ms),
    }
}

/// Whether a request may be sent again: the methods RFC 9110 calls idempotent, but TRACE.
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE
    )
}

/// What an attempt's result says about the destination, and whether it is worth another try.
fn judge(result: &Result<Sent, HttpError>) -> (Verdict, bool) {
    match result {
        Ok((response, _)) => match response.status() {
            StatusCode::BAD_GATEWAY | StatusCode::SERVICE_UNAVAILABLE | StatusCode::GATEWAY_TIMEOUT => {
                (Verdict::Failure, true)
            }
            // 500 included: the destination is up and answered, most often about this one
            // request (a bug on this input, a trap), which another try would repeat; and a
            // client can provoke it at will, which must not open the circuit for everyone.
            _ => (Verdict::Success, false),
        },
        Err(err) => match err {
            // The guest's own request body failed (it aborted it): nothing about the destination.
            HttpError::Hyper(err) if err.is_user() => (Verdict::Neutral, false),
            // Could not connect, or the connection broke or timed out: transient, as far as
            // anyone can tell, so worth another try.
            HttpError::Connect(_)
            | HttpError::Hyper(_)
            | HttpError::DnsTimeout
            | HttpError::DestinationUnavailable
            | HttpError::ConnectionRefused
            | HttpError::ConnectionTerminated
            | HttpError::ConnectionTimeout
            | HttpError::ConnectionReadTimeout
            | HttpError::ConnectionWriteTimeout
            | HttpError::HttpResponseTimeout
            | HttpError::HttpResponseIncomplete
            | HttpError::HttpProtocolError => (Verdict::Failure, true),
            // The destination is broken in a way another try will not fix.
            HttpError::Tls(_)
            | HttpError::TlsProtocolError
            | HttpError::TlsCertificateError
            | HttpError::TlsAlertReceived { .. }
            | HttpError::DnsError { .. }
            | HttpError::DestinationIpUnroutable
            | HttpError::ConnectionLimitReached => (Verdict::Failure, false),
            // The request itself was refused (too big, malformed, no such component):
            // nothing learnt about the destination.
            _ => (Verdict::Neutral, false),
        },
    }
}

/// The policies of every destination of one app, and the breakers (one per destination,
/// shared by every instance).
pub struct OutboundPolicies {
    settings: OutboundSettings,
    breakers: Mutex<HashMap<String, Arc<Breaker>>>,
    metrics: Arc<Metrics>,
}

impl OutboundPolicies {
    pub fn new(settings: &OutboundSettings, metrics: Arc<Metrics>) -> Self {
        let mut settings = settings.clone();
        settings.destinations = settings
            .destinations
            .into_iter()
            .map(|(key, policy)| (key.to_ascii_lowercase(), policy))
            .collect();
        Self {
            settings,
            breakers: Mutex::new(HashMap::new()),
            metrics,
        }
    }

    /// Where the outbound calls' client spans go.
    pub fn spans(&self) -> &crate::observe::Spans {
        self.metrics.spans()
    }

    pub fn policy(&self, destination: &Destination) -> Policy {
        Policy::resolve(&self.settings, destination)
    }

    /// The destination's breaker, created on first use with `config`.
    fn breaker(&self, destination: &str, config: BreakerConfig) -> Option<Arc<Breaker>> {
        let mut breakers = self.breakers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(breaker) = breakers.get(destination) {
            return Some(breaker.clone());
        }
        if breakers.len() >= MAX_BREAKERS {
            let metrics = &self.metrics;
            breakers.retain(|name, breaker| {
                let keep = Arc::strong_count(breaker) > 1 || !breaker.is_idle();
                if !keep {
                    metrics.forget_breaker(name);
                }
                keep
            });
            if breakers.len() >= MAX_BREAKERS {
                tracing::debug!(%destination, "no room for another circuit breaker: this destination goes without one");
                return None;
            }
        }
        let breaker = Breaker::new(destination, config);
        breakers.insert(destination.to_string(), breaker.clone());
        self.metrics.set_breaker_state(destination, BreakerGauge::Closed);
        Some(breaker)
    }

    fn log_transition(&self, component: &str, destination: &str, config: BreakerConfig, transition: Transition) {
        match transition {
            Transition::Opened { failures, until } => {
                tracing::warn!(
                    %destination,
                    %component,
                    failures,
                    window_ms = config.window.as_millis() as u64,
                    open_ms = config.open_for.as_millis() as u64,
                    "circuit opened for {destination}: {failures} failures in a row; outbound requests to it fail at once until a trial request succeeds"
                );
                self.metrics
                    .set_breaker_state(destination, BreakerGauge::Open { until });
            }
            Transition::Reopened { until } => {
                tracing::warn!(
                    %destination,
                    %component,
                    open_ms = config.open_for.as_millis() as u64,
                    "circuit opened again for {destination}: the trial request failed"
                );
                self.metrics
                    .set_breaker_state(destination, BreakerGauge::Open { until });
            }
            Transition::Closed => {
                tracing::info!(%destination, %component, "circuit closed for {destination}: the trial request succeeded");
                self.metrics.set_breaker_state(destination, BreakerGauge::Closed);
            }
        }
    }

    fn admit(&self, breaker: &Arc<Breaker>, destination: &str) -> Result<Option<Permit>, Rejection> {
        let permit = breaker.admit(Instant::now())?;
        if permit.is_probe() {
            self.metrics.set_breaker_state(destination, BreakerGauge::HalfOpen);
        }
        Ok(Some(permit))
    }

    /// Sends `request` from `component` to `destination` under its policy: `attempt` sends one
    /// attempt with the given timeouts. `deadline` is the end of the request the guest serves;
    /// no attempt or wait goes past it.
    pub async fn send<F>(
        &self,
        component: &str,
        destination: &Destination,
        request: http::Request<WasiBody>,
        guest_options: Option<RequestOptions>,
        deadline: Instant,
        attempt: F,
    ) -> Result<Sent, HttpError>
    where
        F: Fn(http::Request<WasiBody>, RequestOptions) -> BoxFuture<Result<Sent, HttpError>>,
    {
        let policy = self.policy(destination);
        let dest = destination.key.as_str();
        let breaker = policy.breaker.and_then(|config| self.breaker(dest, config));
        let mut permit = match &breaker {
            Some(breaker) => match self.admit(breaker, dest) {
                Ok(permit) => permit,
                Err(rejection) => {
                    self.metrics
                        .record_outbound(component, dest, OutboundOutcome::RejectedOpen);
                    tracing::debug!(%component, destination = %dest, "{rejection}");
                    // Read the body the guest may still be writing, so that it gets this
                    // error rather than a broken stream.
                    discard(request.into_body(), deadline);
                    return Err(HttpError::InternalError(Some(rejection.to_string())));
                }
            },
            None => None,
        };

        let (parts, body) = request.into_parts();
        let mut body = if policy.retries > 0 && is_idempotent(&parts.method) {
            RequestBody::buffer(body, &parts.headers, deadline).await?
        } else {
            RequestBody::Once(Some(body))
        };
        let attempts = if body.replayable() { policy.retries + 1 } else { 1 };
        let mut parts = Some(parts);
        let mut retry = 0;
        loop {
            let Some(request) = body.request(&mut parts) else {
                return Err(HttpError::InternalError(Some(
                    "the request body was already sent".to_string(),
                )));
            };
            let options = policy.attempt_options(guest_options, deadline);
            let result = attempt(request, options).await;
            let (verdict, transient) = judge(&result);
            if let (Some(permit), Some(breaker)) = (permit.take(), &breaker) {
                if let Some(transition) = permit.settle(verdict, Instant::now()) {
                    self.log_transition(component, dest, breaker.config(), transition);
                }
            }
            let final_outcome = match verdict {
                Verdict::Success => OutboundOutcome::Ok,
                Verdict::Failure | Verdict::Neutral => OutboundOutcome::Error,
            };
            retry += 1;
            if !transient || retry >= attempts {
                self.metrics.record_outbound(component, dest, final_outcome);
                return result;
            }
            let wait = policy.backoff(retry);
            if Instant::now() + wait >= deadline {
                self.metrics.record_outbound(component, dest, final_outcome);
                return result;
            }
            if let Ok((response, _)) = &result {
                tracing::debug!(%component, destination = %dest, status = %response.status(), retry, ?wait, "retrying an outbound request");
            } else if let Err(err) = &result {
                tracing::debug!(%component, destination = %dest, error = %err, retry, ?wait, "retrying an outbound request");
            }
            tokio::time::sleep(wait).await;
            if let Some(breaker) = &breaker {
                match self.admit(breaker, dest) {
                    Ok(next) => permit = next,
                    // The circuit opened meanwhile: the guest gets what the last attempt got.
                    Err(_) => {
                        self.metrics.record_outbound(component, dest, final_outcome);
                        return result;
                    }
                }
            }
            drop(result);
            self.metrics.record_outbound(component, dest, OutboundOutcome::Retried);
        }
    }
}

/// Reads and drops the rest of a request body in the background, until its end or `deadline`.
fn discard(mut body: WasiBody, deadline: Instant) {
    if body.is_end_stream() {
        return;
    }
    tokio::spawn(async move {
        let drain = async { while let Some(Ok(_)) = body.frame().await {} };
        let _ = tokio::time::timeout_at(deadline.into(), drain).await;
    });
}

/// A request body as the retry loop holds it.
enum RequestBody {
    /// Read whole (at most [`MAX_RETRY_BODY_BYTES`]): sent again on every attempt.
    Buffered {
        chunks: Vec<Bytes>,
        trailers: Option<HeaderMap>,
    },
    /// Sent once, as it streams (taken by the first attempt).
    Once(Option<WasiBody>),
}

impl RequestBody {
    /// Reads `body` to its end if it fits in [`MAX_RETRY_BODY_BYTES`] and the guest finishes
    /// writing it within [`BUFFER_PATIENCE`]; otherwise keeps what was read in front of the
    /// rest, to be sent once. (A guest may wait for the response before it finishes the body.)
    async fn buffer(mut body: WasiBody, headers: &HeaderMap, deadline: Instant) -> Result<Self, HttpError> {
        let declared = headers
            .get(http::header::CONTENT_LENGTH)
            .and_then(|value| value.to_str().ok())
            .and_then(|value| value.parse::<u64>().ok());
        if declared.is_some_and(|length| length > MAX_RETRY_BODY_BYTES) {
            return Ok(RequestBody::Once(Some(body)));
        }
        let patience = deadline.min(Instant::now() + BUFFER_PATIENCE);
        let mut chunks = Vec::new();
        let mut trailers = None;
        let mut total = 0u64;
        while !body.is_end_stream() {
            let frame = match tokio::time::timeout_at(patience.into(), body.frame()).await {
                Ok(Some(frame)) => frame?,
                Ok(None) => break,
                Err(_) => return Ok(RequestBody::streamed(chunks, body)),
            };
            match frame.into_data() {
                Ok(data) => {
                    total += data.len() as u64;
                    chunks.push(data);
                    if total > MAX_RETRY_BODY_BYTES {
                        return Ok(RequestBody::streamed(chunks, body));
                    }
                }
                Err(frame) => {
                    if let Ok(found) = frame.into_trailers() {
                        trailers = Some(found);
                    }
                }
            }
        }
        Ok(RequestBody::Buffered { chunks, trailers })
    }

    /// The chunks read so far, then the rest of `body`: sent once.
    fn streamed(chunks: Vec<Bytes>, body: WasiBody) -> Self {
        let replay = Replay {
            chunks: chunks.into(),
            trailers: None,
            rest: Some(body),
        };
        RequestBody::Once(Some(replay.boxed_unsync()))
    }

    fn replayable(&self) -> bool {
        matches!(self, RequestBody::Buffered { .. })
    }

    /// The request of the next attempt; `None` once a body sent once is gone.
    fn request(&mut self, parts: &mut Option<http::request::Parts>) -> Option<http::Request<WasiBody>> {
        match self {
            RequestBody::Once(body) => Some(http::Request::from_parts(parts.take()?, body.take()?)),
            RequestBody::Buffered { chunks, trailers } => {
                let parts = parts.as_ref()?;
                let body = Replay {
                    chunks: chunks.iter().cloned().collect(),
                    trailers: trailers.clone(),
                    rest: None,
                };
                let mut request = http::Request::new(body.boxed_unsync());
                *request.method_mut() = parts.method.clone();
                *request.uri_mut() = parts.uri.clone();
                *request.version_mut() = parts.version;
                *request.headers_mut() = parts.headers.clone();
                Some(request)
            }
        }
    }
}

/// A body made of chunks read already, then the rest of a stream, then trailers.
struct Replay {
    chunks: VecDeque<Bytes>,
    trailers: Option<HeaderMap>,
    rest: Option<WasiBody>,
}

impl Body for Replay {
    type Data = Bytes;
    type Error = HttpError;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, HttpError>>> {
        if let Some(chunk) = self.chunks.pop_front() {
            return Poll::Ready(Some(Ok(Frame::data(chunk))));
        }
        if let Some(rest) = self.rest.as_mut() {
            match Pin::new(rest).poll_frame(cx) {
                Poll::Ready(None) => self.rest = None,
                other => return other,
            }
        }
        Poll::Ready(self.trailers.take().map(|trailers| Ok(Frame::trailers(trailers))))
    }

    fn is_end_stream(&self) -> bool {
        self.chunks.is_empty() && self.trailers.is_none() && self.rest.as_ref().is_none_or(|rest| rest.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let buffered: u64 = self.chunks.iter().map(|chunk| chunk.len() as u64).sum();
        match &self.rest {
            None => SizeHint::with_exact(buffered),
            Some(rest) => {
                let hint = rest.size_hint();
                let mut total = SizeHint::new();
                total.set_lower(hint.lower() + buffered);
                if let Some(upper) = hint.upper() {
                    total.set_upper(upper + buffered);
                }
                total
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(text: &str) -> OutboundSettings {
        let settings: OutboundSettings = toml::from_str(text).expect("valid settings");
        settings.check().expect("checked");
        OutboundPolicies::new(&settings, Arc::default()).settings
    }

    #[test]
    fn destinations_resolve_host_port_over_host_over_defaults() {
        let settings = settings(
            "retries = 1\n\
             [destinations.\"API.example.com\"]\nrequest_timeout_ms = 700\nretries = 3\n\
             [destinations.\"api.example.com:8443\"]\nrequest_timeout_ms = 200\n\
             [destinations.\"users.spin.internal\"]\nbreaker_failures = 0\n",
        );
        let on_443 = Policy::resolve(&settings, &Destination::network("api.example.com", 443));
        assert_eq!(on_443.request_timeout, Duration::from_millis(700));
        assert_eq!(on_443.retries, 3);
        let on_8443 = Policy::resolve(&settings, &Destination::network("api.example.com", 8443));
        assert_eq!(on_8443.request_timeout, Duration::from_millis(200));
        assert_eq!(on_8443.retries, 3, "the host's override still applies");
        let other = Policy::resolve(&settings, &Destination::network("other.example.com", 80));
        assert_eq!(other.retries, 1);
        assert_eq!(other.connect_timeout, Duration::from_secs(5));
        assert_eq!(
            other.breaker,
            Some(BreakerConfig {
                failures: 5,
                window: Duration::from_secs(10),
                open_for: Duration::from_secs(5)
            })
        );
        let users = Policy::resolve(&settings, &Destination::in_process("users.spin.internal"));
        assert_eq!(users.breaker, None, "breaker_failures = 0 turns it off");
    }

    #[test]
    fn backoff_is_exponential_capped_and_jittered_below_the_ceiling() {
        let policy = Policy::resolve(&OutboundSettings::default(), &Destination::in_process("self"));
        assert_eq!(policy.backoff_ceiling(1), Duration::from_millis(50));
        assert_eq!(policy.backoff_ceiling(3), Duration::from_millis(200));
        assert_eq!(policy.backoff_ceiling(40), Duration::from_secs(1));
        for retry in 1..6 {
            assert!(policy.backoff(retry) <= policy.backoff_ceiling(retry));
        }
    }

    #[test]
    fn only_idempotent_methods_are_retried() {
        for method in [Method::GET, Method::HEAD, Method::OPTIONS, Method::PUT, Method::DELETE] {
            assert!(is_idempotent(&method), "{method}");
        }
        for method in [Method::POST, Method::PATCH, Method::TRACE, Method::CONNECT] {
            assert!(!is_idempotent(&method), "{method}");
        }
    }

    #[test]
    fn attempts_never_wait_past_the_deadline_or_the_guest_s_own_timeout() {
        let policy = Policy::resolve(&OutboundSettings::default(), &Destination::in_process("self"));
        let deadline = Instant::now() + Duration::from_millis(500);
        let options = policy.attempt_options(None, deadline);
        assert!(options.first_byte_timeout.unwrap() <= Duration::from_millis(500));
        assert!(options.connect_timeout.unwrap() <= Duration::from_millis(500));
        let far = Instant::now() + Duration::from_secs(600);
        let guest = RequestOptions {
            connect_timeout: Some(Duration::from_millis(20)),
            first_byte_timeout: Some(Duration::from_secs(120)),
            between_bytes_timeout: None,
        };
        let options = policy.attempt_options(Some(guest), far);
        assert_eq!(options.connect_timeout, Some(Duration::from_millis(20)));
        assert_eq!(
            options.first_byte_timeout,
            Some(Duration::from_secs(30)),
            "the policy caps the guest"
        );
        assert_eq!(options.between_bytes_timeout, Some(Duration::from_secs(30)));
    }

    #[test]
    fn failures_are_connect_errors_timeouts_and_502_503_504() {
        let answer = |status: u16| -> Result<Sent, HttpError> {
            let mut response = http::Response::new(
                http_body_util::Empty::<Bytes>::new()
                    .map_err(|never| match never {})
                    .boxed_unsync(),
            );
            *response.status_mut() = StatusCode::from_u16(status).unwrap();
            Ok((response, Box::new(async { Ok(()) })))
        };
        for status in [502, 503, 504] {
            assert_eq!(judge(&answer(status)), (Verdict::Failure, true), "{status}");
        }
        for status in [200, 404, 429, 500, 501] {
            assert_eq!(judge(&answer(status)), (Verdict::Success, false), "{status}");
        }
        assert_eq!(judge(&Err(HttpError::ConnectionReadTimeout)), (Verdict::Failure, true));
        assert_eq!(judge(&Err(HttpError::ConnectionTimeout)), (Verdict::Failure, true));
        assert_eq!(judge(&Err(HttpError::TlsCertificateError)), (Verdict::Failure, false));
        assert_eq!(judge(&Err(HttpError::DestinationNotFound)), (Verdict::Neutral, false));
        assert_eq!(
            judge(&Err(HttpError::HttpRequestBodySize(None))),
            (Verdict::Neutral, false)
        );
    }

    #[tokio::test]
    async fn a_small_body_is_buffered_and_replayed_a_large_one_is_sent_once() {
        let deadline = Instant::now() + Duration::from_secs(5);
        let small = http_body_util::Full::new(Bytes::from_static(b"hello"))
            .map_err(|never| match never {})
            .boxed_unsync();
        let mut body = RequestBody::buffer(small, &HeaderMap::new(), deadline).await.unwrap();
        assert!(body.replayable());
        let parts = http::Request::put("http://self/x").body(()).unwrap().into_parts().0;
        let mut parts = Some(parts);
        for _ in 0..2 {
            let request = body.request(&mut parts).expect("replayed");
            assert_eq!(request.method(), Method::PUT);
            let bytes = request.into_body().collect().await.unwrap().to_bytes();
            assert_eq!(&bytes[..], b"hello");
        }

        let big = vec![7u8; MAX_RETRY_BODY_BYTES as usize + 10];
        let stream = futures_util::stream::iter(
            big.chunks(1000)
                .map(|chunk| Ok::<_, HttpError>(Frame::data(Bytes::copy_from_slice(chunk))))
                .collect::<Vec<_>>(),
        );
        let large = http_body_util::StreamBody::new(stream).boxed_unsync();
        let mut body = RequestBody::buffer(large, &HeaderMap::new(), deadline).await.unwrap();
        assert!(!body.replayable());
        let parts = http::Request::put("http://self/x").body(()).unwrap().into_parts().0;
        let mut parts = Some(parts);
        let request = body.request(&mut parts).expect("sent once");
        let bytes = request.into_body().collect().await.unwrap().to_bytes();
        assert_eq!(bytes.len(), big.len(), "what was read first goes in front of the rest");
        assert!(body.request(&mut parts).is_none());
    }

    #[tokio::test]
    async fn a_body_the_guest_does_not_finish_is_streamed_once() {
        use futures_util::StreamExt;
        let first = futures_util::stream::iter([Ok::<_, HttpError>(Frame::data(Bytes::from_static(b"first")))]);
        let unfinished = http_body_util::StreamBody::new(first.chain(futures_util::stream::pending())).boxed_unsync();
        let deadline = Instant::now() + Duration::from_secs(30);
        let started = Instant::now();
        let mut body = RequestBody::buffer(unfinished, &HeaderMap::new(), deadline)
            .await
            .unwrap();
        assert!(started.elapsed() < Duration::from_secs(10));
        assert!(!body.replayable());
        let parts = http::Request::get("http://self/x").body(()).unwrap().into_parts().0;
        let mut request = body.request(&mut Some(parts)).expect("sent once");
        let frame = request.body_mut().frame().await.unwrap().unwrap();
        assert_eq!(frame.into_data().unwrap(), Bytes::from_static(b"first"));
    }
}
