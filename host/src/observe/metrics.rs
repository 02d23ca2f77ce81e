//! Metrics in Prometheus text format, served at `/metrics` on the admin listener: requests,
//! errors and a latency histogram per component and version, requests in flight, deploys by
//! component, action and outcome, and messaging: published per topic; delivered, acked,
//! nacked, redelivered and dead-lettered per subscriber and topic; the queue depth and the
//! delivery lag per subscriber; outbound HTTP: requests per calling component, destination and
//! outcome, and the circuit breaker state per destination.
//!
//! Label values a guest chooses (topics, destinations) are capped per metric
//! ([`MAX_SERIES_PER_METRIC`]) and every label value is escaped as the text format requires.

use std::collections::BTreeMap;
use std::fmt::{Display, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Upper bounds of the latency histogram, in seconds.
const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

/// Most label sets one metric keeps apart (docs/messaging.md#metrics). Topics are the guest's
/// choice, so without a cap a guest publishing to ever new topics would grow `/metrics` and the
/// host's memory without bound; beyond it, new label sets count in one series whose
/// guest-chosen label values (topic, version) read [`OTHER`].
pub const MAX_SERIES_PER_METRIC: usize = 1000;

/// Most (component, destination, outcome) series the outbound counters keep apart; beyond, new
/// destinations are counted as `other` (a guest granted `*` could otherwise grow the series
/// without bound). Larger than [`MAX_SERIES_PER_METRIC`] because each destination takes up to
/// one series per outcome (docs/outbound.md#metrics).
const MAX_OUTBOUND_SERIES: usize = 4096;

/// The label value that stands for every label value beyond a metric's cap.
const OTHER: &str = "other";

#[derive(Default)]
struct RequestSeries {
    requests: AtomicU64,
    errors: AtomicU64,
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    latency_micros_sum: AtomicU64,
}

/// What happened to a message at a subscriber.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum MessageEvent {
    Delivered,
    Redelivered,
    Acked,
    Nacked,
    DeadLettered,
}

impl MessageEvent {
    const ALL: [MessageEvent; 5] = [
        MessageEvent::Delivered,
        MessageEvent::Redelivered,
        MessageEvent::Acked,
        MessageEvent::Nacked,
        MessageEvent::DeadLettered,
    ];

    /// Names of the counters, for the warning when their label sets reach the cap.
    const METRICS: &'static str = "mosaic_messages_delivered_total, mosaic_messages_redelivered_total, \
        mosaic_messages_acked_total, mosaic_messages_nacked_total, mosaic_messages_dead_lettered_total";

    /// Position in [`MessageEvent::ALL`] and in a (subscriber, topic)'s counts.
    fn index(self) -> usize {
        self as usize
    }

    fn metric(self) -> (&'static str, &'static str) {
        match self {
            MessageEvent::Delivered => (
                "mosaic_messages_delivered_total",
                "Delivery attempts, first or retried.",
            ),
            MessageEvent::Redelivered => (
                "mosaic_messages_redelivered_total",
                "Delivery attempts after a failed one.",
            ),
            MessageEvent::Acked => ("mosaic_messages_acked_total", "Messages handled successfully (acked)."),
            MessageEvent::Nacked => (
                "mosaic_messages_nacked_total",
                "Failed attempts: an error, a trap or the deadline.",
            ),
            MessageEvent::DeadLettered => (
                "mosaic_messages_dead_lettered_total",
                "Messages moved to the dead-letter store.",
            ),
        }
    }
}

/// What became of one outbound HTTP request (or attempt) under the outbound policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum OutboundOutcome {
    /// A response that is not a failure (anything but 502, 503, 504).
    Ok,
    /// A failure, after the retries it was allowed: an error, a timeout or a 502/503/504.
    Error,
    /// A failed attempt that is tried again (one per retry).
    Retried,
    /// Refused at once by an open circuit, without reaching the destination.
    RejectedOpen,
}

impl OutboundOutcome {
    fn label(self) -> &'static str {
        match self {
            OutboundOutcome::Ok => "ok",
            OutboundOutcome::Error => "error",
            OutboundOutcome::Retried => "retried",
            OutboundOutcome::RejectedOpen => "rejected_open",
        }
    }
}

/// The state of a destination's circuit breaker, as `mosaic_outbound_breaker_state` reports it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BreakerGauge {
    Closed,
    HalfOpen,
    /// Open until the instant; past it the next request is a trial, so it reads as half-open.
    Open {
        until: std::time::Instant,
    },
}

impl BreakerGauge {
    /// 0 closed, 1 half-open, 2 open.
    fn value(self, now: std::time::Instant) -> u8 {
        match self {
            BreakerGauge::Closed => 0,
            BreakerGauge::HalfOpen => 1,
            BreakerGauge::Open { until } if until <= now => 1,
            BreakerGauge::Open { .. } => 2,
        }
    }
}

/// Warns once per metric (not per call) that it reached its cap of label sets.
struct CapWarning {
    metrics: &'static str,
    cap: usize,
    warned: bool,
}

impl CapWarning {
    const fn new(metrics: &'static str, cap: usize) -> CapWarning {
        CapWarning {
            metrics,
            cap,
            warned: false,
        }
    }

    fn folding(&mut self) {
        if !self.warned {
            self.warned = true;
            tracing::warn!(
                metrics = self.metrics,
                cap = self.cap,
                "metric reached its cap of label sets: new ones now count in one series labelled \
                 `other`; a guest is likely using ever new label values (topics, destinations), \
                 look at the metric's series to find which"
            );
        }
    }
}

/// The series of one metric, or of several with the same labels, by label values: at most
/// `cap` label sets are kept apart, the rest count under the label set `fold` makes of them.
struct CappedSeries<K, V> {
    series: BTreeMap<K, V>,
    warning: CapWarning,
}

impl<K: Ord, V: Default> CappedSeries<K, V> {
    const fn new(metrics: &'static str, cap: usize) -> CappedSeries<K, V> {
        CappedSeries {
            series: BTreeMap::new(),
            warning: CapWarning::new(metrics, cap),
        }
    }

    /// The value of `key`'s series; a new key beyond the cap is first turned by `fold` into the
    /// label set that stands for all of them.
    fn get_or_fold(&mut self, mut key: K, fold: impl FnOnce(&mut K)) -> &mut V {
        if self.series.len() >= self.warning.cap && !self.series.contains_key(&key) {
            fold(&mut key);
            self.warning.folding();
        }
        self.series.entry(key).or_default()
    }
}

/// component → version → series; nested so that the per-request lookup allocates nothing.
struct RequestTable {
    by_component: BTreeMap<String, BTreeMap<String, Arc<RequestSeries>>>,
    /// (component, version) pairs in `by_component`.
    len: usize,
    warning: CapWarning,
}

pub struct Metrics {
    /// (component, destination, outcome) → count.
    outbound: Mutex<CappedSeries<(String, String, OutboundOutcome), u64>>,
    /// destination → breaker state (the outbound policy bounds the destinations it keeps).
    breakers: Mutex<BTreeMap<String, BreakerGauge>>,
    /// (subscriber, topic) → count per [`MessageEvent`].
    messages: Mutex<CappedSeries<(String, String), [u64; MessageEvent::ALL.len()]>>,
    /// topic → (published, refused).
    published: Mutex<CappedSeries<String, (u64, u64)>>,
    /// (subscriber, topic) → milliseconds from publish to the latest delivery.
    delivery_lag_ms: Mutex<CappedSeries<(String, String), u64>>,
    requests: Mutex<RequestTable>,
    /// (component, action, outcome) → count.
    deploys: Mutex<CappedSeries<(String, String, String), u64>>,
    /// (capability, backend) → errors where the backend failed (not the guest's input); both
    /// labels are the host's own names, so bounded.
    backend_errors: Mutex<BTreeMap<(&'static str, String), u64>>,
    /// Wasm instances (stores) alive now: requests, deliveries and probes, any version.
    instances_live: AtomicU64,
    /// Where the spans of the work these counters count go (OTLP, or nowhere): everything
    /// that records a metric can record a span through the same handle.
    spans: super::Spans,
    /// What the OTLP exporters exported and dropped, per signal.
    telemetry: Arc<super::TelemetryCounters>,
}

impl Default for Metrics {
    fn default() -> Metrics {
        Metrics {
            outbound: Mutex::new(CappedSeries::new("mosaic_outbound_requests_total", MAX_OUTBOUND_SERIES)),
            breakers: Mutex::default(),
            messages: Mutex::new(CappedSeries::new(MessageEvent::METRICS, MAX_SERIES_PER_METRIC)),
            published: Mutex::new(CappedSeries::new(
                "mosaic_messages_published_total, mosaic_message_publish_errors_total",
                MAX_SERIES_PER_METRIC,
            )),
            delivery_lag_ms: Mutex::new(CappedSeries::new(
                "mosaic_message_delivery_lag_seconds",
                MAX_SERIES_PER_METRIC,
            )),
            requests: Mutex::new(RequestTable {
                by_component: BTreeMap::new(),
                len: 0,
                warning: CapWarning::new(
                    "mosaic_requests_total, mosaic_request_errors_total, mosaic_request_duration_seconds",
                    MAX_SERIES_PER_METRIC,
                ),
            }),
            deploys: Mutex::new(CappedSeries::new("mosaic_deploys_total", MAX_SERIES_PER_METRIC)),
            backend_errors: Mutex::default(),
            instances_live: AtomicU64::new(0),
            spans: super::Spans::default(),
            telemetry: Arc::default(),
        }
    }
}

impl Metrics {
    /// Counters whose work is also exported as spans through `spans`; `telemetry` counts what
    /// each OTLP exporter exported and dropped.
    pub fn with_telemetry(spans: super::Spans, telemetry: Arc<super::TelemetryCounters>) -> Metrics {
        Metrics {
            spans,
            telemetry,
            ..Metrics::default()
        }
    }

    pub fn spans(&self) -> &super::Spans {
        &self.spans
    }
}

/// Counts one live instance in [`Metrics`] for as long as it is held (by the instance's state).
pub struct LiveInstance(Arc<Metrics>);

impl LiveInstance {
    pub fn new(metrics: Arc<Metrics>) -> LiveInstance {
        metrics.instances_live.fetch_add(1, Ordering::Relaxed);
        LiveInstance(metrics)
    }
}

impl Drop for LiveInstance {
    fn drop(&mut self) {
        self.0.instances_live.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Takes a metric's lock; a panic elsewhere while holding it leaves counters that are still
/// worth reporting, so poisoning is ignored.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl Metrics {
    fn series(&self, component: &str, version: &str) -> Arc<RequestSeries> {
        let mut requests = lock(&self.requests);
        if let Some(series) = requests
            .by_component
            .get(component)
            .and_then(|versions| versions.get(version))
        {
            return series.clone();
        }
        // Past the cap (versions pile up over many deploys) a new version counts as `other`.
        let version = if requests.len >= requests.warning.cap {
            requests.warning.folding();
            OTHER
        } else {
            version
        };
        if let Some(series) = requests
            .by_component
            .get(component)
            .and_then(|versions| versions.get(version))
        {
            return series.clone();
        }
        requests.len += 1;
        requests
            .by_component
            .entry(component.to_string())
            .or_default()
            .entry(version.to_string())
            .or_default()
            .clone()
    }

    /// Records one finished request (a 5xx or a failure counts as an error).
    pub fn record_request(&self, component: &str, version: &str, elapsed: Duration, error: bool) {
        let series = self.series(component, version);
        series.requests.fetch_add(1, Ordering::Relaxed);
        if error {
            series.errors.fetch_add(1, Ordering::Relaxed);
        }
        let seconds = elapsed.as_secs_f64();
        for (bound, bucket) in LATENCY_BUCKETS.iter().zip(&series.buckets) {
            if seconds <= *bound {
                bucket.fetch_add(1, Ordering::Relaxed);
            }
        }
        series
            .latency_micros_sum
            .fetch_add(elapsed.as_micros() as u64, Ordering::Relaxed);
    }

    /// Records a deploy attempt: `action` (deploy, rollback, manifest) and `outcome` (ok or the
    /// failed step).
    pub fn record_deploy(&self, component: &str, action: &str, outcome: &str) {
        let key = (component.to_string(), action.to_string(), outcome.to_string());
        *lock(&self.deploys).get_or_fold(key, |key| key.0 = OTHER.to_string()) += 1;
    }

    pub fn record_message(&self, subscriber: &str, topic: &str, event: MessageEvent) {
        let key = (subscriber.to_string(), topic.to_string());
        lock(&self.messages).get_or_fold(key, |key| key.1 = OTHER.to_string())[event.index()] += 1;
    }

    /// Records a publish by a guest: accepted by the broker or refused.
    pub fn record_publish(&self, topic: &str, accepted: bool) {
        let mut published = lock(&self.published);
        let entry = published.get_or_fold(topic.to_string(), |topic| *topic = OTHER.to_string());
        if accepted {
            entry.0 += 1;
        } else {
            entry.1 += 1;
        }
    }

    pub fn record_delivery_lag(&self, subscriber: &str, topic: &str, lag_ms: u64) {
        let key = (subscriber.to_string(), topic.to_string());
        *lock(&self.delivery_lag_ms).get_or_fold(key, |key| key.1 = OTHER.to_string()) = lag_ms;
    }

    /// Counts an error of a backend (down, timed out, failing), not of the guest's input:
    /// `capability` is key_value, sqlite, postgres, redis, messaging; `backend` names its kind.
    pub fn record_backend_error(&self, capability: &'static str, backend: &str) {
        *lock(&self.backend_errors)
            .entry((capability, backend.to_string()))
            .or_default() += 1;
    }

    /// Counts an outbound request (or a retried attempt) from `component` to `destination`.
    pub fn record_outbound(&self, component: &str, destination: &str, outcome: OutboundOutcome) {
        let key = (component.to_string(), destination.to_string(), outcome);
        *lock(&self.outbound).get_or_fold(key, |key| key.1 = OTHER.to_string()) += 1;
    }

    pub fn set_breaker_state(&self, destination: &str, state: BreakerGauge) {
        lock(&self.breakers).insert(destination.to_string(), state);
    }

    /// Drops the gauge of a destination whose breaker was forgotten (idle and closed).
    pub fn forget_breaker(&self, destination: &str) {
        lock(&self.breakers).remove(destination);
    }

    /// The Prometheus text exposition; `in_flight` lists (component, version, requests running)
    /// and `pending` (subscriber, messages waiting in its queue).
    pub fn render(&self, in_flight: &[(String, String, u64)], pending: &[(String, u64)]) -> String {
        let mut out = Exposition::default();
        self.write(&mut out, in_flight, pending);
        out.text
    }

    /// Writes every series to `out`: the one walk over the counters that both `/metrics` and
    /// the OTLP metric export read, so that they show the same series.
    pub(crate) fn write(
        &self,
        out: &mut impl MetricSink,
        in_flight: &[(String, String, u64)],
        pending: &[(String, u64)],
    ) {
        self.write_messaging(out, pending);
        self.write_outbound(out);
        self.write_requests(out, in_flight);
        let deploys = lock(&self.deploys).series.clone();
        out.metric(
            "mosaic_deploys_total",
            MetricKind::Counter,
            "Deploy attempts by component, action and outcome (ok or the failed step).",
        );
        for ((component, action, outcome), count) in &deploys {
            out.sample(
                &[
                    ("component", component.as_str()),
                    ("action", action.as_str()),
                    ("outcome", outcome.as_str()),
                ],
                Sample::Int(*count),
            );
        }
        out.metric(
            "mosaic_instances_live",
            MetricKind::Gauge,
            "Wasm instances alive now (requests, deliveries, probes; every version).",
        );
        out.sample(&[], Sample::Int(self.instances_live.load(Ordering::Relaxed)));
        let backend_errors = lock(&self.backend_errors).clone();
        out.metric(
            "mosaic_backend_errors_total",
            MetricKind::Counter,
            "Backend failures (unreachable, timed out, failing), by capability and backend.",
        );
        for ((capability, backend), count) in &backend_errors {
            out.sample(
                &[("capability", *capability), ("backend", backend.as_str())],
                Sample::Int(*count),
            );
        }
        out.metric(
            "mosaic_telemetry_dropped_total",
            MetricKind::Counter,
            "Spans, metric points and log records not exported: the queue was full or the OTLP endpoint did not take them.",
        );
        for signal in super::Signal::ALL {
            out.sample(
                &[("signal", signal.name())],
                Sample::Int(self.telemetry.of(signal).dropped()),
            );
        }
        out.metric(
            "mosaic_telemetry_exported_total",
            MetricKind::Counter,
            "Spans, metric points and log records the OTLP endpoint accepted.",
        );
        for signal in super::Signal::ALL {
            out.sample(
                &[("signal", signal.name())],
                Sample::Int(self.telemetry.of(signal).exported()),
            );
        }
    }

    fn write_requests(&self, out: &mut impl MetricSink, in_flight: &[(String, String, u64)]) {
        let requests: Vec<((String, String), Arc<RequestSeries>)> = lock(&self.requests)
            .by_component
            .iter()
            .flat_map(|(component, versions)| {
                versions
                    .iter()
                    .map(move |(version, series)| ((component.clone(), version.clone()), series.clone()))
            })
            .collect();
        out.metric(
            "mosaic_requests_total",
            MetricKind::Counter,
            "HTTP requests served, by component and version.",
        );
        for ((component, version), series) in &requests {
            out.sample(
                &[("component", component.as_str()), ("version", version.as_str())],
                Sample::Int(series.requests.load(Ordering::Relaxed)),
            );
        }
        out.metric(
            "mosaic_request_errors_total",
            MetricKind::Counter,
            "Requests that failed or answered 5xx.",
        );
        for ((component, version), series) in &requests {
            out.sample(
                &[("component", component.as_str()), ("version", version.as_str())],
                Sample::Int(series.errors.load(Ordering::Relaxed)),
            );
        }
        out.metric(
            "mosaic_request_duration_seconds",
            MetricKind::Histogram,
            "Request latency, from routing to the response head.",
        );
        for ((component, version), series) in &requests {
            let cumulative = series.buckets.each_ref().map(|bucket| bucket.load(Ordering::Relaxed));
            out.histogram(
                &[("component", component.as_str()), ("version", version.as_str())],
                &LATENCY_BUCKETS,
                &cumulative,
                series.requests.load(Ordering::Relaxed),
                series.latency_micros_sum.load(Ordering::Relaxed) as f64 / 1e6,
            );
        }
        out.metric(
            "mosaic_requests_in_flight",
            MetricKind::Gauge,
            "Requests running on the live version of each component.",
        );
        for (component, version, running) in in_flight {
            out.sample(
                &[("component", component.as_str()), ("version", version.as_str())],
                Sample::Int(*running),
            );
        }
    }

    fn write_outbound(&self, out: &mut impl MetricSink) {
        let outbound = lock(&self.outbound).series.clone();
        out.metric(
            "mosaic_outbound_requests_total",
            MetricKind::Counter,
            "Outbound HTTP requests by calling component, destination and outcome \
             (ok; error after retries; retried: one per retry; rejected_open: refused at once by an open circuit).",
        );
        for ((component, destination, outcome), count) in &outbound {
            out.sample(
                &[
                    ("component", component.as_str()),
                    ("destination", destination.as_str()),
                    ("outcome", outcome.label()),
                ],
                Sample::Int(*count),
            );
        }
        let breakers = lock(&self.breakers).clone();
        out.metric(
            "mosaic_outbound_breaker_state",
            MetricKind::Gauge,
            "Circuit breaker per outbound destination: 0 closed, 1 half-open, 2 open.",
        );
        let now = std::time::Instant::now();
        for (destination, state) in &breakers {
            out.sample(
                &[("destination", destination.as_str())],
                Sample::Int(u64::from(state.value(now))),
            );
        }
    }

    fn write_messaging(&self, out: &mut impl MetricSink, pending: &[(String, u64)]) {
        let published = lock(&self.published).series.clone();
        out.metric(
            "mosaic_messages_published_total",
            MetricKind::Counter,
            "Messages the broker accepted from guests, by topic.",
        );
        for (topic, (accepted, _)) in &published {
            out.sample(&[("topic", topic.as_str())], Sample::Int(*accepted));
        }
        out.metric(
            "mosaic_message_publish_errors_total",
            MetricKind::Counter,
            "Publishes the broker did not accept, by topic.",
        );
        for (topic, (_, refused)) in &published {
            out.sample(&[("topic", topic.as_str())], Sample::Int(*refused));
        }
        let messages = lock(&self.messages).series.clone();
        for event in MessageEvent::ALL {
            let (name, help) = event.metric();
            out.metric(name, MetricKind::Counter, &format!("{help} By subscriber and topic."));
            // A (subscriber, topic) shows in the counters of the events it had, not in the others.
            for ((subscriber, topic), counts) in &messages {
                let count = counts[event.index()];
                if count > 0 {
                    out.sample(
                        &[("subscriber", subscriber.as_str()), ("topic", topic.as_str())],
                        Sample::Int(count),
                    );
                }
            }
        }
        out.metric(
            "mosaic_messages_pending",
            MetricKind::Gauge,
            "Messages waiting in a subscriber's queue (not yet acked).",
        );
        for (subscriber, waiting) in pending {
            out.sample(&[("subscriber", subscriber.as_str())], Sample::Int(*waiting));
        }
        let lags = lock(&self.delivery_lag_ms).series.clone();
        out.metric(
            "mosaic_message_delivery_lag_seconds",
            MetricKind::Gauge,
            "Time from publish to the latest delivery, by subscriber and topic.",
        );
        for ((subscriber, topic), lag_ms) in &lags {
            out.sample(
                &[("subscriber", subscriber.as_str()), ("topic", topic.as_str())],
                Sample::Float(*lag_ms as f64 / 1000.0),
            );
        }
    }
}

/// What a metric is: a count that only grows, a value now, or a distribution.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MetricKind {
    Counter,
    Gauge,
    Histogram,
}

/// One sample's value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) enum Sample {
    Int(u64),
    Float(f64),
}

impl Display for Sample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Sample::Int(value) => write!(f, "{value}"),
            Sample::Float(value) => write!(f, "{value}"),
        }
    }
}

/// Where [`Metrics::write`] writes: each metric once, then its samples (or, for a histogram,
/// its distributions) by label set.
pub(crate) trait MetricSink {
    /// Starts a metric; `help` is the host's own text (no backslash or line feed).
    fn metric(&mut self, name: &'static str, kind: MetricKind, help: &str);
    /// A sample of the metric started last.
    fn sample(&mut self, labels: &[(&str, &str)], value: Sample);
    /// A distribution of the histogram started last: `cumulative[i]` observations at most
    /// `bounds[i]`, `count` in all (the `+Inf` bucket), summing to `sum`.
    fn histogram(&mut self, labels: &[(&str, &str)], bounds: &[f64], cumulative: &[u64], count: u64, sum: f64);
}

/// The text exposition being written: per metric its HELP and TYPE lines, then its samples.
#[derive(Default)]
struct Exposition {
    text: String,
    current: &'static str,
}

impl MetricSink for Exposition {
    fn metric(&mut self, name: &'static str, kind: MetricKind, help: &str) {
        let kind = match kind {
            MetricKind::Counter => "counter",
            MetricKind::Gauge => "gauge",
            MetricKind::Histogram => "histogram",
        };
        // Writing to a String cannot fail.
        let _ = writeln!(self.text, "# HELP {name} {help}");
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
        self.current = name;
    }

    fn sample(&mut self, labels: &[(&str, &str)], value: Sample) {
        self.line("", labels, None, value);
    }

    fn histogram(&mut self, labels: &[(&str, &str)], bounds: &[f64], cumulative: &[u64], count: u64, sum: f64) {
        for (bound, bucket) in bounds.iter().zip(cumulative) {
            let bound = bound.to_string();
            self.line("_bucket", labels, Some(&bound), Sample::Int(*bucket));
        }
        self.line("_bucket", labels, Some("+Inf"), Sample::Int(count));
        self.line("_sum", labels, None, Sample::Float(sum));
        self.line("_count", labels, None, Sample::Int(count));
    }
}

impl Exposition {
    /// One sample: `name{label="value",...} value`, each label value escaped; `le` is a
    /// histogram bucket's bound.
    fn line(&mut self, suffix: &str, labels: &[(&str, &str)], le: Option<&str>, value: Sample) {
        self.text.push_str(self.current);
        self.text.push_str(suffix);
        let le = le.map(|bound| ("le", bound));
        let mut all = labels.iter().copied().chain(le).peekable();
        if all.peek().is_some() {
            self.text.push('{');
            for (i, (label, label_value)) in all.enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                self.text.push_str(label);
                self.text.push_str("=\"");
                push_escaped(&mut self.text, label_value);
                self.text.push('"');
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }
}

/// Appends a label value as the text format requires: backslash, double quote and line feed
/// become `\\`, `\"` and `\n`.
fn push_escaped(out: &mut String, value: &str) {
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_counters_and_cumulative_buckets() {
        let metrics = Metrics::default();
        metrics.record_request("users", "abc", Duration::from_micros(700), false);
        metrics.record_request("users", "abc", Duration::from_millis(30), true);
        metrics.record_deploy("users", "deploy", "ok");
        metrics.record_deploy("users", "deploy", "probe");
        metrics.record_publish("order.created", true);
        metrics.record_publish("order.created", false);
        metrics.record_message("notifications", "order.created", MessageEvent::Delivered);
        metrics.record_message("notifications", "order.created", MessageEvent::Nacked);
        metrics.record_delivery_lag("notifications", "order.created", 1500);
        metrics.record_outbound("gateway", "users.spin.internal", OutboundOutcome::Ok);
        metrics.record_outbound("gateway", "users.spin.internal", OutboundOutcome::RejectedOpen);
        metrics.set_breaker_state("users.spin.internal", BreakerGauge::HalfOpen);
        metrics.set_breaker_state(
            "api.example.com:443",
            BreakerGauge::Open {
                until: std::time::Instant::now() + Duration::from_secs(60),
            },
        );
        metrics.set_breaker_state(
            "gone.example.com:443",
            BreakerGauge::Open {
                until: std::time::Instant::now(),
            },
        );
        let text = metrics.render(&[("users".into(), "abc".into(), 2)], &[("notifications".into(), 7)]);
        assert!(
            text.contains("mosaic_messages_published_total{topic=\"order.created\"} 1"),
            "{text}"
        );
        assert!(text.contains("mosaic_message_publish_errors_total{topic=\"order.created\"} 1"));
        assert!(text.contains("mosaic_messages_nacked_total{subscriber=\"notifications\",topic=\"order.created\"} 1"));
        assert!(!text.contains("mosaic_messages_acked_total{"));
        assert!(text.contains("mosaic_messages_pending{subscriber=\"notifications\"} 7"));
        assert!(text
            .contains("mosaic_message_delivery_lag_seconds{subscriber=\"notifications\",topic=\"order.created\"} 1.5"));
        assert!(
            text.contains("mosaic_requests_total{component=\"users\",version=\"abc\"} 2"),
            "{text}"
        );
        assert!(text.contains("mosaic_request_errors_total{component=\"users\",version=\"abc\"} 1"));
        assert!(
            text.contains("le=\"0.0005\"} 0") && text.contains("le=\"0.001\"} 1") && text.contains("le=\"0.05\"} 2")
        );
        assert!(text.contains("le=\"+Inf\"} 2"));
        assert!(text.contains("mosaic_requests_in_flight{component=\"users\",version=\"abc\"} 2"));
        assert!(text.contains("mosaic_deploys_total{component=\"users\",action=\"deploy\",outcome=\"probe\"} 1"));
        assert!(text.contains(
            "mosaic_outbound_requests_total{component=\"gateway\",destination=\"users.spin.internal\",outcome=\"rejected_open\"} 1"
        ));
        assert!(text.contains("mosaic_outbound_breaker_state{destination=\"users.spin.internal\"} 1"));
        assert!(text.contains("mosaic_outbound_breaker_state{destination=\"api.example.com:443\"} 2"));
        assert!(text.contains("mosaic_outbound_breaker_state{destination=\"gone.example.com:443\"} 1"));
    }

    /// Every line of `text` is a comment or a valid sample; the samples' label sets, unescaped.
    fn parse_exposition(text: &str) -> Vec<(String, Vec<(String, String)>)> {
        let mut samples = Vec::new();
        for line in text.lines() {
            if line.starts_with("# HELP ") || line.starts_with("# TYPE ") {
                continue;
            }
            let name_end = line
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
                .unwrap_or(line.len());
            let (name, mut rest) = line.split_at(name_end);
            assert!(!name.is_empty(), "no metric name: {line:?}");
            let mut labels = Vec::new();
            if let Some(after) = rest.strip_prefix('{') {
                rest = after;
                loop {
                    if let Some(after) = rest.strip_prefix('}') {
                        rest = after;
                        break;
                    }
                    let (label, after) = rest.split_once("=\"").unwrap_or_else(|| panic!("bad label: {line:?}"));
                    assert!(label.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'), "{line:?}");
                    let mut value = String::new();
                    let mut chars = after.char_indices();
                    let end = loop {
                        match chars.next() {
                            Some((_, '\\')) => match chars.next() {
                                Some((_, '\\')) => value.push('\\'),
                                Some((_, '"')) => value.push('"'),
                                Some((_, 'n')) => value.push('\n'),
                                other => panic!("bad escape {other:?}: {line:?}"),
                            },
                            Some((at, '"')) => break at,
                            Some((_, c)) => value.push(c),
                            None => panic!("unterminated label value: {line:?}"),
                        }
                    };
                    labels.push((label.to_string(), value));
                    rest = &after[end + 1..];
                    rest = rest.strip_prefix(',').unwrap_or(rest);
                }
            }
            let value = rest.strip_prefix(' ').unwrap_or_else(|| panic!("no value: {line:?}"));
            assert!(value.parse::<f64>().is_ok(), "bad value: {line:?}");
            samples.push((name.to_string(), labels));
        }
        samples
    }

    #[test]
    fn label_values_are_escaped_as_the_text_format_requires() {
        let metrics = Metrics::default();
        let topic = "orders \"eu\"\\created\nnext";
        let component = "we\"ird\\";
        metrics.record_publish(topic, true);
        metrics.record_message("notifications", topic, MessageEvent::Delivered);
        metrics.record_delivery_lag("notifications", topic, 10);
        metrics.record_request(component, "abc", Duration::from_millis(1), false);
        metrics.record_deploy(component, "deploy", "ok");
        metrics.record_outbound(component, "api.example.com:443", OutboundOutcome::Ok);
        let text = metrics.render(&[(component.into(), "abc".into(), 1)], &[]);
        assert!(
            text.contains(r#"mosaic_messages_published_total{topic="orders \"eu\"\\created\nnext"} 1"#),
            "{text}"
        );
        let samples = parse_exposition(&text);
        let values: Vec<&str> = samples
            .iter()
            .flat_map(|(_, labels)| labels.iter())
            .filter(|(label, _)| label == "topic" || label == "component")
            .map(|(_, value)| value.as_str())
            .collect();
        assert!(values.len() >= 8, "{values:?}");
        assert!(
            values.iter().all(|value| *value == topic || *value == component),
            "{values:?}"
        );
    }

    /// Log lines written while `work` runs, captured for this test only.
    fn captured_logs(work: impl FnOnce()) -> String {
        #[derive(Clone, Default)]
        struct Captured(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Captured {
            fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(bytes);
                Ok(bytes.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        tracing::subscriber::with_default(subscriber, work);
        let bytes = captured.0.lock().unwrap().clone();
        String::from_utf8(bytes).unwrap()
    }

    #[test]
    fn guest_chosen_label_values_fold_into_other_beyond_the_cap() {
        let metrics = Metrics::default();
        let beyond = 10;
        let logs = captured_logs(|| {
            for i in 0..MAX_SERIES_PER_METRIC + beyond {
                let topic = format!("topic-{i}");
                metrics.record_publish(&topic, true);
                metrics.record_publish(&topic, false);
                metrics.record_message("notifications", &topic, MessageEvent::Delivered);
                metrics.record_delivery_lag("notifications", &topic, 2000);
                metrics.record_request("users", &format!("v{i}"), Duration::from_millis(1), false);
            }
            // A label set counted before the cap keeps its own series.
            metrics.record_publish("topic-0", true);
            metrics.record_message("notifications", "topic-0", MessageEvent::Delivered);
        });
        let text = metrics.render(&[], &[]);
        let count = |prefix: &str| text.lines().filter(|line| line.starts_with(prefix)).count();
        for metric in [
            "mosaic_messages_published_total{",
            "mosaic_message_publish_errors_total{",
            "mosaic_messages_delivered_total{",
            "mosaic_message_delivery_lag_seconds{",
            "mosaic_requests_total{",
        ] {
            assert_eq!(count(metric), MAX_SERIES_PER_METRIC + 1, "{metric}");
        }
        assert!(
            text.contains("mosaic_messages_published_total{topic=\"other\"} 10"),
            "{text}"
        );
        assert!(text.contains("mosaic_message_publish_errors_total{topic=\"other\"} 10"));
        assert!(text.contains("mosaic_messages_published_total{topic=\"topic-0\"} 2"));
        assert!(text.contains("mosaic_messages_delivered_total{subscriber=\"notifications\",topic=\"other\"} 10"));
        assert!(text.contains("mosaic_messages_delivered_total{subscriber=\"notifications\",topic=\"topic-0\"} 2"));
        assert!(text.contains("mosaic_message_delivery_lag_seconds{subscriber=\"notifications\",topic=\"other\"} 2"));
        assert!(text.contains("mosaic_requests_total{component=\"users\",version=\"other\"} 10"));
        // One warning per metric, the first time only.
        let warnings: Vec<&str> = logs.lines().filter(|line| line.contains("WARN")).collect();
        for metric in [
            "mosaic_messages_published_total",
            "mosaic_messages_delivered_total",
            "mosaic_message_delivery_lag_seconds",
            "mosaic_requests_total",
        ] {
            assert_eq!(
                warnings.iter().filter(|line| line.contains(metric)).count(),
                1,
                "{metric}: {warnings:#?}"
            );
        }
        assert_eq!(warnings.len(), 4, "{warnings:#?}");
    }
}
