//! Metrics in Prometheus text format, served at `/metrics` on the admin listener: requests,
//! errors and a latency histogram per component and version, requests in flight, deploys by
//! component, action and outcome, and messaging: published per topic; delivered, acked,
//! nacked, redelivered and dead-lettered per subscriber and topic; the queue depth and the
//! delivery lag per subscriber; outbound HTTP: requests per calling component, destination and
//! outcome, and the circuit breaker state per destination.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Upper bounds of the latency histogram, in seconds.
const LATENCY_BUCKETS: [f64; 12] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 5.0,
];

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

/// Most (component, destination) pairs the outbound counters keep apart; beyond, new
/// destinations are counted as `other` (a guest granted `*` could otherwise grow the series
/// without bound).
const MAX_OUTBOUND_SERIES: usize = 4096;

#[derive(Default)]
pub struct Metrics {
    /// (component, destination, outcome) → count.
    outbound: Mutex<BTreeMap<(String, String, OutboundOutcome), u64>>,
    /// destination → breaker state.
    breakers: Mutex<BTreeMap<String, BreakerGauge>>,
    /// (subscriber, topic, event) → count.
    messages: Mutex<BTreeMap<(String, String, MessageEvent), u64>>,
    /// topic → (published, refused).
    published: Mutex<BTreeMap<String, (u64, u64)>>,
    /// (subscriber, topic) → milliseconds from publish to the latest delivery.
    delivery_lag_ms: Mutex<BTreeMap<(String, String), u64>>,
    /// component → version → series; nested so that the per-request lookup allocates nothing.
    requests: Mutex<BTreeMap<String, BTreeMap<String, Arc<RequestSeries>>>>,
    deploys: Mutex<BTreeMap<(String, String, String), u64>>,
    /// (capability, backend) → errors where the backend failed (not the guest's input).
    backend_errors: Mutex<BTreeMap<(&'static str, String), u64>>,
    /// Wasm instances (stores) alive now: requests, deliveries and probes, any version.
    instances_live: AtomicU64,
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

impl Metrics {
    fn series(&self, component: &str, version: &str) -> Arc<RequestSeries> {
        let mut requests = self.requests.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(series) = requests.get(component).and_then(|versions| versions.get(version)) {
            return series.clone();
        }
        requests
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
        let mut deploys = self.deploys.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *deploys
            .entry((component.to_string(), action.to_string(), outcome.to_string()))
            .or_default() += 1;
    }

    pub fn record_message(&self, subscriber: &str, topic: &str, event: MessageEvent) {
        let mut messages = self.messages.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *messages
            .entry((subscriber.to_string(), topic.to_string(), event))
            .or_default() += 1;
    }

    /// Records a publish by a guest: accepted by the broker or refused.
    pub fn record_publish(&self, topic: &str, accepted: bool) {
        let mut published = self.published.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let entry = published.entry(topic.to_string()).or_default();
        if accepted {
            entry.0 += 1;
        } else {
            entry.1 += 1;
        }
    }

    pub fn record_delivery_lag(&self, subscriber: &str, topic: &str, lag_ms: u64) {
        let mut lags = self
            .delivery_lag_ms
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        lags.insert((subscriber.to_string(), topic.to_string()), lag_ms);
    }

    /// Counts an error of a backend (down, timed out, failing), not of the guest's input:
    /// `capability` is key_value, sqlite, postgres, redis, messaging; `backend` names its kind.
    pub fn record_backend_error(&self, capability: &'static str, backend: &str) {
        let mut errors = self
            .backend_errors
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        *errors.entry((capability, backend.to_string())).or_default() += 1;
    }

    /// Counts an outbound request (or a retried attempt) from `component` to `destination`.
    pub fn record_outbound(&self, component: &str, destination: &str, outcome: OutboundOutcome) {
        let mut outbound = self.outbound.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let mut key = (component.to_string(), destination.to_string(), outcome);
        if outbound.len() >= MAX_OUTBOUND_SERIES && !outbound.contains_key(&key) {
            key.1 = "other".to_string();
        }
        *outbound.entry(key).or_default() += 1;
    }

    pub fn set_breaker_state(&self, destination: &str, state: BreakerGauge) {
        let mut breakers = self.breakers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        breakers.insert(destination.to_string(), state);
    }

    /// Drops the gauge of a destination whose breaker was forgotten (idle and closed).
    pub fn forget_breaker(&self, destination: &str) {
        let mut breakers = self.breakers.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        breakers.remove(destination);
    }

    /// The Prometheus text exposition; `in_flight` lists (component, version, requests running)
    /// and `pending` (subscriber, messages waiting in its queue).
    pub fn render(&self, in_flight: &[(String, String, u64)], pending: &[(String, u64)]) -> String {
        let mut out = String::new();
        self.render_messaging(&mut out, pending);
        self.render_outbound(&mut out);
        let requests: Vec<((String, String), Arc<RequestSeries>)> = self
            .requests
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .iter()
            .flat_map(|(component, versions)| {
                versions
                    .iter()
                    .map(move |(version, series)| ((component.clone(), version.clone()), series.clone()))
            })
            .collect();
        let _ = writeln!(
            out,
            "# HELP mosaic_requests_total HTTP requests served, by component and version."
        );
        let _ = writeln!(out, "# TYPE mosaic_requests_total counter");
        for ((component, version), series) in &requests {
            let _ = writeln!(
                out,
                "mosaic_requests_total{{component=\"{component}\",version=\"{version}\"}} {}",
                series.requests.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP mosaic_request_errors_total Requests that failed or answered 5xx."
        );
        let _ = writeln!(out, "# TYPE mosaic_request_errors_total counter");
        for ((component, version), series) in &requests {
            let _ = writeln!(
                out,
                "mosaic_request_errors_total{{component=\"{component}\",version=\"{version}\"}} {}",
                series.errors.load(Ordering::Relaxed)
            );
        }
        let _ = writeln!(
            out,
            "# HELP mosaic_request_duration_seconds Request latency, from routing to the response head."
        );
        let _ = writeln!(out, "# TYPE mosaic_request_duration_seconds histogram");
        for ((component, version), series) in &requests {
            let labels = format!("component=\"{component}\",version=\"{version}\"");
            for (bound, bucket) in LATENCY_BUCKETS.iter().zip(&series.buckets) {
                let _ = writeln!(
                    out,
                    "mosaic_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {}",
                    bucket.load(Ordering::Relaxed)
                );
            }
            let count = series.requests.load(Ordering::Relaxed);
            let sum = series.latency_micros_sum.load(Ordering::Relaxed) as f64 / 1e6;
            let _ = writeln!(
                out,
                "mosaic_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {count}"
            );
            let _ = writeln!(out, "mosaic_request_duration_seconds_sum{{{labels}}} {sum}");
            let _ = writeln!(out, "mosaic_request_duration_seconds_count{{{labels}}} {count}");
        }
        let _ = writeln!(
            out,
            "# HELP mosaic_requests_in_flight Requests running on the live version of each component."
        );
        let _ = writeln!(out, "# TYPE mosaic_requests_in_flight gauge");
        for (component, version, running) in in_flight {
            let _ = writeln!(
                out,
                "mosaic_requests_in_flight{{component=\"{component}\",version=\"{version}\"}} {running}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP mosaic_deploys_total Deploy attempts by component, action and outcome (ok or the failed step)."
        );
        let _ = writeln!(out, "# TYPE mosaic_deploys_total counter");
        let deploys = self
            .deploys
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        for ((component, action, outcome), count) in deploys {
            let _ = writeln!(
                out,
                "mosaic_deploys_total{{component=\"{component}\",action=\"{action}\",outcome=\"{outcome}\"}} {count}"
            );
        }
        let _ = writeln!(
            out,
            "# HELP mosaic_instances_live Wasm instances alive now (requests, deliveries, probes; every version)."
        );
        let _ = writeln!(out, "# TYPE mosaic_instances_live gauge");
        let _ = writeln!(
            out,
            "mosaic_instances_live {}",
            self.instances_live.load(Ordering::Relaxed)
        );
        let _ = writeln!(
            out,
            "# HELP mosaic_backend_errors_total Backend failures (unreachable, timed out, failing), by capability and backend."
        );
        let _ = writeln!(out, "# TYPE mosaic_backend_errors_total counter");
        let backend_errors = self
            .backend_errors
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        for ((capability, backend), count) in backend_errors {
            let _ = writeln!(
                out,
                "mosaic_backend_errors_total{{capability=\"{capability}\",backend=\"{backend}\"}} {count}"
            );
        }
        out
    }
}

impl Metrics {
    fn render_outbound(&self, out: &mut String) {
        let outbound = self
            .outbound
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let _ = writeln!(
            out,
            "# HELP mosaic_outbound_requests_total Outbound HTTP requests by calling component, destination and outcome \
             (ok; error after retries; retried: one per retry; rejected_open: refused at once by an open circuit)."
        );
        let _ = writeln!(out, "# TYPE mosaic_outbound_requests_total counter");
        for ((component, destination, outcome), count) in &outbound {
            let _ = writeln!(
                out,
                "mosaic_outbound_requests_total{{component=\"{component}\",destination=\"{destination}\",outcome=\"{}\"}} {count}",
                outcome.label()
            );
        }
        let breakers = self
            .breakers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let _ = writeln!(
            out,
            "# HELP mosaic_outbound_breaker_state Circuit breaker per outbound destination: 0 closed, 1 half-open, 2 open."
        );
        let _ = writeln!(out, "# TYPE mosaic_outbound_breaker_state gauge");
        let now = std::time::Instant::now();
        for (destination, state) in &breakers {
            let _ = writeln!(
                out,
                "mosaic_outbound_breaker_state{{destination=\"{destination}\"}} {}",
                state.value(now)
            );
        }
    }

    fn render_messaging(&self, out: &mut String, pending: &[(String, u64)]) {
        let published = self
            .published
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let _ = writeln!(
            out,
            "# HELP mosaic_messages_published_total Messages the broker accepted from guests, by topic."
        );
        let _ = writeln!(out, "# TYPE mosaic_messages_published_total counter");
        for (topic, (accepted, _)) in &published {
            let _ = writeln!(out, "mosaic_messages_published_total{{topic=\"{topic}\"}} {accepted}");
        }
        let _ = writeln!(
            out,
            "# HELP mosaic_message_publish_errors_total Publishes the broker did not accept, by topic."
        );
        let _ = writeln!(out, "# TYPE mosaic_message_publish_errors_total counter");
        for (topic, (_, refused)) in &published {
            let _ = writeln!(
                out,
                "mosaic_message_publish_errors_total{{topic=\"{topic}\"}} {refused}"
            );
        }
        let messages = self
            .messages
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        for event in MessageEvent::ALL {
            let (name, help) = event.metric();
            let _ = writeln!(out, "# HELP {name} {help} By subscriber and topic.");
            let _ = writeln!(out, "# TYPE {name} counter");
            for ((subscriber, topic, _), count) in messages.iter().filter(|((_, _, e), _)| *e == event) {
                let _ = writeln!(out, "{name}{{subscriber=\"{subscriber}\",topic=\"{topic}\"}} {count}");
            }
        }
        let _ = writeln!(
            out,
            "# HELP mosaic_messages_pending Messages waiting in a subscriber's queue (not yet acked)."
        );
        let _ = writeln!(out, "# TYPE mosaic_messages_pending gauge");
        for (subscriber, waiting) in pending {
            let _ = writeln!(out, "mosaic_messages_pending{{subscriber=\"{subscriber}\"}} {waiting}");
        }
        let lags = self
            .delivery_lag_ms
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        let _ = writeln!(
            out,
            "# HELP mosaic_message_delivery_lag_seconds Time from publish to the latest delivery, by subscriber and topic."
        );
        let _ = writeln!(out, "# TYPE mosaic_message_delivery_lag_seconds gauge");
        for ((subscriber, topic), lag_ms) in lags {
            let _ = writeln!(
                out,
                "mosaic_message_delivery_lag_seconds{{subscriber=\"{subscriber}\",topic=\"{topic}\"}} {}",
                lag_ms as f64 / 1000.0
            );
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
}
