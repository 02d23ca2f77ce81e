//! The `/metrics` series exported over OTLP: the same walk over the counters
//! ([`Metrics::write`]) written as OTLP metrics instead of Prometheus text, every
//! `metric_interval`, and once more at shutdown. Counters are cumulative sums since the host
//! started, gauges the value at export, the latency histogram has the `/metrics` buckets.
//! Nothing is recorded on the request path for it: an export reads the counters the host
//! keeps anyway.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use opentelemetry_proto::tonic::collector::metrics::v1::ExportMetricsServiceRequest;
use opentelemetry_proto::tonic::common::v1::InstrumentationScope;
use opentelemetry_proto::tonic::metrics::v1::{
    metric, number_data_point, AggregationTemporality, Gauge, Histogram, HistogramDataPoint, Metric, NumberDataPoint,
    ResourceMetrics, ScopeMetrics, Sum,
};
use opentelemetry_proto::tonic::resource::v1::Resource;

use super::metrics::{MetricKind, MetricSink, Sample};
use super::otlp::{proto_resource, proto_text, Counters, ExportConfig, FailureLog, Push, Signal, Target};
use super::Metrics;

/// Exports the host's metrics to one OTLP target.
pub struct MetricExport {
    push: Push,
    resource: Resource,
    started: SystemTime,
    timeout: Duration,
    interval: Duration,
    counters: Arc<Counters>,
    failures: tokio::sync::Mutex<FailureLog>,
}

impl MetricExport {
    pub fn new(target: &Target, config: &ExportConfig, counters: Arc<Counters>) -> Result<MetricExport, String> {
        tracing::info!(endpoint = %target.url, protocol = ?target.protocol, interval = ?config.metric_interval, "exporting metrics over OTLP");
        Ok(MetricExport {
            push: Push::new(target, &config.headers)?,
            resource: proto_resource(config),
            started: SystemTime::now(),
            timeout: config.export_timeout,
            interval: config.metric_interval,
            counters,
            failures: tokio::sync::Mutex::new(FailureLog::new(Signal::Metrics, &target.url)),
        })
    }

    /// How often to export.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Exports every series now; `in_flight` and `pending` as [`Metrics::render`] takes them.
    /// A failed export counts its data points as dropped (the next one carries the counters
    /// again: they are cumulative).
    pub async fn export(&self, metrics: &Metrics, in_flight: &[(String, String, u64)], pending: &[(String, u64)]) {
        let mut sink = OtlpMetrics::new(self.started, SystemTime::now());
        metrics.write(&mut sink, in_flight, pending);
        let points = sink.points;
        let request = ExportMetricsServiceRequest {
            resource_metrics: vec![ResourceMetrics {
                resource: Some(self.resource.clone()),
                scope_metrics: vec![ScopeMetrics {
                    scope: Some(InstrumentationScope {
                        name: "mosaic".into(),
                        version: env!("CARGO_PKG_VERSION").into(),
                        ..InstrumentationScope::default()
                    }),
                    metrics: sink.metrics,
                    schema_url: String::new(),
                }],
                schema_url: String::new(),
            }],
        };
        let failure = match tokio::time::timeout(self.timeout, self.push.metrics(request)).await {
            Ok(Ok(())) => None,
            Ok(Err(reason)) => Some(reason),
            Err(_) => Some(format!("no answer within {:?}", self.timeout)),
        };
        match failure {
            None => self.counters.count_exported(points),
            Some(reason) => {
                self.counters.count_dropped(points);
                self.failures.lock().await.failed(points, &reason);
            }
        }
    }
}

fn unix_nanos(time: SystemTime) -> u64 {
    time.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |since| since.as_nanos() as u64)
}

/// The series written as OTLP metrics.
struct OtlpMetrics {
    metrics: Vec<Metric>,
    start: u64,
    now: u64,
    /// Data points written, for the exported and dropped counters.
    points: u64,
}

impl OtlpMetrics {
    fn new(started: SystemTime, now: SystemTime) -> OtlpMetrics {
        OtlpMetrics {
            metrics: Vec::new(),
            start: unix_nanos(started),
            now: unix_nanos(now),
            points: 0,
        }
    }

    fn attributes(labels: &[(&str, &str)]) -> Vec<opentelemetry_proto::tonic::common::v1::KeyValue> {
        labels.iter().map(|(key, value)| proto_text(key, value)).collect()
    }
}

impl MetricSink for OtlpMetrics {
    fn metric(&mut self, name: &'static str, kind: MetricKind, help: &str) {
        let cumulative = AggregationTemporality::Cumulative as i32;
        let data = match kind {
            MetricKind::Counter => metric::Data::Sum(Sum {
                data_points: Vec::new(),
                aggregation_temporality: cumulative,
                is_monotonic: true,
            }),
            MetricKind::Gauge => metric::Data::Gauge(Gauge {
                data_points: Vec::new(),
            }),
            MetricKind::Histogram => metric::Data::Histogram(Histogram {
                data_points: Vec::new(),
                aggregation_temporality: cumulative,
            }),
        };
        self.metrics.push(Metric {
            name: name.to_string(),
            description: help.to_string(),
            unit: if name.ends_with("_seconds") { "s" } else { "" }.to_string(),
            data: Some(data),
            metadata: Vec::new(),
        });
    }

    fn sample(&mut self, labels: &[(&str, &str)], value: Sample) {
        let (start, now) = (self.start, self.now);
        let Some(data) = self.metrics.last_mut().and_then(|metric| metric.data.as_mut()) else {
            return;
        };
        let point = NumberDataPoint {
            attributes: OtlpMetrics::attributes(labels),
            start_time_unix_nano: start,
            time_unix_nano: now,
            value: Some(match value {
                Sample::Int(value) => number_data_point::Value::AsInt(i64::try_from(value).unwrap_or(i64::MAX)),
                Sample::Float(value) => number_data_point::Value::AsDouble(value),
            }),
            ..NumberDataPoint::default()
        };
        match data {
            metric::Data::Sum(sum) => sum.data_points.push(point),
            metric::Data::Gauge(gauge) => {
                // A gauge has no start: it is the value now.
                gauge.data_points.push(NumberDataPoint {
                    start_time_unix_nano: 0,
                    ..point
                })
            }
            _ => return,
        }
        self.points += 1;
    }

    fn histogram(&mut self, labels: &[(&str, &str)], bounds: &[f64], cumulative: &[u64], count: u64, sum: f64) {
        let (start, now) = (self.start, self.now);
        let Some(metric::Data::Histogram(histogram)) = self.metrics.last_mut().and_then(|metric| metric.data.as_mut())
        else {
            return;
        };
        // OTLP counts each bucket apart (the last one above every bound); Prometheus adds them up.
        let mut bucket_counts = Vec::with_capacity(cumulative.len() + 1);
        let mut below = 0;
        for &at_most in cumulative.iter().chain(std::iter::once(&count)) {
            bucket_counts.push(at_most.saturating_sub(below));
            below = below.max(at_most);
        }
        histogram.data_points.push(HistogramDataPoint {
            attributes: OtlpMetrics::attributes(labels),
            start_time_unix_nano: start,
            time_unix_nano: now,
            count,
            sum: Some(sum),
            bucket_counts,
            explicit_bounds: bounds.to_vec(),
            ..HistogramDataPoint::default()
        });
        self.points += 1;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_otlp_metrics_carry_the_series_of_the_text_exposition() {
        let metrics = Metrics::default();
        metrics.record_request("users", "abc", Duration::from_millis(3), false);
        metrics.record_request("users", "abc", Duration::from_millis(30), true);
        metrics.record_publish("orders", true);
        let mut sink = OtlpMetrics::new(SystemTime::UNIX_EPOCH, SystemTime::now());
        let in_flight = [("users".to_string(), "abc".to_string(), 2)];
        metrics.write(&mut sink, &in_flight, &[]);
        let text = metrics.render(&in_flight, &[]);
        for metric in &sink.metrics {
            assert!(
                text.contains(&format!("# TYPE {} ", metric.name)),
                "{} is in /metrics too",
                metric.name
            );
        }
        let find = |name: &str| sink.metrics.iter().find(|metric| metric.name == name).unwrap();
        let Some(metric::Data::Sum(requests)) = &find("mosaic_requests_total").data else {
            panic!("a counter is a sum");
        };
        assert!(requests.is_monotonic);
        assert_eq!(requests.data_points[0].value, Some(number_data_point::Value::AsInt(2)));
        let labels: Vec<(&str, String)> = requests.data_points[0]
            .attributes
            .iter()
            .map(|pair| (pair.key.as_str(), format!("{:?}", pair.value)))
            .collect();
        assert_eq!(labels.len(), 2, "component and version: {labels:?}");

        let Some(metric::Data::Histogram(latency)) = &find("mosaic_request_duration_seconds").data else {
            panic!("the latency is a histogram");
        };
        let point = &latency.data_points[0];
        assert_eq!(point.count, 2);
        assert_eq!(point.explicit_bounds.len() + 1, point.bucket_counts.len());
        assert_eq!(
            point.bucket_counts.iter().sum::<u64>(),
            2,
            "each observation in one bucket"
        );
        // 3 ms is in (0.0025, 0.005], 30 ms in (0.025, 0.05].
        assert_eq!(point.bucket_counts[3], 1);
        assert_eq!(point.bucket_counts[6], 1);
        assert_eq!(find("mosaic_request_duration_seconds").unit, "s");

        let Some(metric::Data::Gauge(in_flight)) = &find("mosaic_requests_in_flight").data else {
            panic!("in-flight is a gauge");
        };
        assert_eq!(in_flight.data_points[0].value, Some(number_data_point::Value::AsInt(2)));
    }
}
