//! Metrics in Prometheus text format, served at `/metrics` on the admin listener: requests,
//! errors and a latency histogram per component and version, requests in flight, and deploys
//! by component, action and outcome.

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

#[derive(Default)]
pub struct Metrics {
    /// component → version → series; nested so that the per-request lookup allocates nothing.
    requests: Mutex<BTreeMap<String, BTreeMap<String, Arc<RequestSeries>>>>,
    deploys: Mutex<BTreeMap<(String, String, String), u64>>,
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

    /// The Prometheus text exposition; `in_flight` lists (component, version, requests running).
    pub fn render(&self, in_flight: &[(String, String, u64)]) -> String {
        let mut out = String::new();
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
        out
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
        let text = metrics.render(&[("users".into(), "abc".into(), 2)]);
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
    }
}
