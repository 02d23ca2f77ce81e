//! What the three OTLP signals (traces, metrics, logs) share: `[telemetry]` and the standard
//! `OTEL_*` variables resolved into where each signal goes, the counters of what was exported
//! and dropped, the bounded queue a request hands its records to without waiting, the task
//! that batches such a queue into exports, and the protobuf push of metrics and logs over
//! HTTP or gRPC.
//!
//! Nothing here runs unless an endpoint is configured: with none, no queue, task or client
//! exists.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use opentelemetry_proto::tonic::collector::logs::v1::{
    logs_service_client::LogsServiceClient, ExportLogsServiceRequest,
};
use opentelemetry_proto::tonic::collector::metrics::v1::{
    metrics_service_client::MetricsServiceClient, ExportMetricsServiceRequest,
};
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, KeyValue as ProtoKeyValue};
use opentelemetry_proto::tonic::resource::v1::Resource as ProtoResource;
use prost::Message;
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

/// `[telemetry]` in mosaic.toml. Each field left out falls back to its standard
/// OpenTelemetry environment variable; with no endpoint anywhere, nothing is exported.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetrySettings {
    /// The collector's base address, e.g. `http://127.0.0.1:4318` (HTTP; each signal goes to
    /// `/v1/traces`, `/v1/metrics` or `/v1/logs` under it) or `http://127.0.0.1:4317` (gRPC).
    /// Over `OTEL_EXPORTER_OTLP_<SIGNAL>_ENDPOINT` (used as it is) and
    /// `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub endpoint: Option<String>,
    /// `http/protobuf` (the default) or `grpc`. Over `OTEL_EXPORTER_OTLP_<SIGNAL>_PROTOCOL` and
    /// `OTEL_EXPORTER_OTLP_PROTOCOL`.
    pub protocol: Option<String>,
    /// Export spans (default true); `OTEL_TRACES_EXPORTER=none` also turns them off.
    pub traces: bool,
    /// Export the `/metrics` series (default true); `OTEL_METRICS_EXPORTER=none` also.
    pub metrics: bool,
    /// Export log records: the host's events and the guests' stdout and stderr (default
    /// true); `OTEL_LOGS_EXPORTER=none` also.
    pub logs: bool,
    /// The resource's `service.name`. Over `OTEL_SERVICE_NAME`, then `service.name` of
    /// `OTEL_RESOURCE_ATTRIBUTES`; default: the application's name.
    pub service_name: Option<String>,
    /// More resource attributes, over (and merged with) `OTEL_RESOURCE_ATTRIBUTES`.
    pub resource_attributes: BTreeMap<String, String>,
    /// Headers sent with each export (an API key, say), merged over
    /// `OTEL_EXPORTER_OTLP_HEADERS`.
    pub headers: BTreeMap<String, String>,
    /// Spans (and, apart, log records) waiting for export at most; beyond, new ones are
    /// dropped and counted. Over `OTEL_BSP_MAX_QUEUE_SIZE` (`OTEL_BLRP_MAX_QUEUE_SIZE` for
    /// logs); default 2048.
    pub max_queue_size: Option<usize>,
    /// The most spans or log records in one export. Over `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`
    /// (`OTEL_BLRP_...`); default 512.
    pub max_export_batch_size: Option<usize>,
    /// How long a span or log record may wait for others to share its export. Over
    /// `OTEL_BSP_SCHEDULE_DELAY` (`OTEL_BLRP_SCHEDULE_DELAY`); default 1000 ms.
    pub schedule_delay_ms: Option<u64>,
    /// How long one export may take before what it carries is dropped. Over
    /// `OTEL_EXPORTER_OTLP_TIMEOUT`; default 10000 ms.
    pub export_timeout_ms: Option<u64>,
    /// How often the metrics are exported. Over `OTEL_METRIC_EXPORT_INTERVAL`; default
    /// 60000 ms.
    pub metric_export_interval_ms: Option<u64>,
}

impl Default for TelemetrySettings {
    fn default() -> TelemetrySettings {
        TelemetrySettings {
            endpoint: None,
            protocol: None,
            traces: true,
            metrics: true,
            logs: true,
            service_name: None,
            resource_attributes: BTreeMap::new(),
            headers: BTreeMap::new(),
            max_queue_size: None,
            max_export_batch_size: None,
            schedule_delay_ms: None,
            export_timeout_ms: None,
            metric_export_interval_ms: None,
        }
    }
}

/// How records reach the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    HttpProtobuf,
    Grpc,
}

/// One kind of telemetry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    Traces,
    Metrics,
    Logs,
}

impl Signal {
    pub const ALL: [Signal; 3] = [Signal::Traces, Signal::Metrics, Signal::Logs];

    /// The name in OTLP paths, `OTEL_*` variables (upper-cased) and the `signal` label.
    pub fn name(self) -> &'static str {
        match self {
            Signal::Traces => "traces",
            Signal::Metrics => "metrics",
            Signal::Logs => "logs",
        }
    }

    fn variable(self, pattern: &str) -> String {
        pattern.replace("{}", &self.name().to_ascii_uppercase())
    }
}

/// Where one signal is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The whole URL (HTTP: with `/v1/<signal>`; gRPC: the collector's address).
    pub url: String,
    pub protocol: Protocol,
}

/// How a queued signal (spans, log records) is batched.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Batching {
    pub max_queue_size: usize,
    pub max_export_batch_size: usize,
    pub schedule_delay: Duration,
}

/// Export settings after mosaic.toml and the environment were merged.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportConfig {
    pub traces: Option<Target>,
    pub metrics: Option<Target>,
    pub logs: Option<Target>,
    pub resource: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
    pub span_batching: Batching,
    pub log_batching: Batching,
    pub export_timeout: Duration,
    pub metric_interval: Duration,
}

impl TelemetrySettings {
    /// Where and how to export, or `None` when no signal has an endpoint (or
    /// `OTEL_SDK_DISABLED=true`). `env` reads an environment variable; `app_name` is the
    /// default `service.name`. An error names the setting and what it accepts.
    pub fn resolve(
        &self,
        env: impl Fn(&str) -> Option<String>,
        app_name: &str,
    ) -> Result<Option<ExportConfig>, String> {
        let env = |name: &str| env(name).filter(|value| !value.trim().is_empty());
        if env("OTEL_SDK_DISABLED").is_some_and(|value| value.trim().eq_ignore_ascii_case("true")) {
            return Ok(None);
        }
        let mut targets = [None, None, None];
        for (slot, signal) in targets.iter_mut().zip(Signal::ALL) {
            let wanted = match signal {
                Signal::Traces => self.traces,
                Signal::Metrics => self.metrics,
                Signal::Logs => self.logs,
            };
            if wanted {
                *slot = self.target(signal, &env)?;
            }
        }
        let [traces, metrics, logs] = targets;
        if traces.is_none() && metrics.is_none() && logs.is_none() {
            return Ok(None);
        }

        let mut resource: BTreeMap<String, String> = BTreeMap::new();
        if let Some(text) = env("OTEL_RESOURCE_ATTRIBUTES") {
            for (key, value) in key_values("OTEL_RESOURCE_ATTRIBUTES", &text)? {
                resource.insert(key, value);
            }
        }
        resource.extend(self.resource_attributes.clone());
        let service_name = self
            .service_name
            .clone()
            .or_else(|| env("OTEL_SERVICE_NAME"))
            .or_else(|| resource.get("service.name").cloned())
            .unwrap_or_else(|| app_name.to_string());
        resource.insert("service.name".to_string(), service_name);
        let mut headers: BTreeMap<String, String> = BTreeMap::new();
        if let Some(text) = env("OTEL_EXPORTER_OTLP_HEADERS") {
            headers.extend(key_values("OTEL_EXPORTER_OTLP_HEADERS", &text)?);
        }
        headers.extend(self.headers.clone());

        let number = |field: Option<u64>, name: &str, default: u64| -> Result<u64, String> {
            let value = match field {
                Some(value) => value,
                None => match env(name) {
                    Some(text) => text
                        .trim()
                        .parse()
                        .map_err(|_| format!("{name}={text:?} is not a whole number"))?,
                    None => default,
                },
            };
            if value == 0 {
                return Err(format!("{name} (or its [telemetry] setting) must be greater than 0"));
            }
            Ok(value)
        };
        let batching = |prefix: &str| -> Result<Batching, String> {
            Ok(Batching {
                max_queue_size: number(
                    self.max_queue_size.map(|v| v as u64),
                    &format!("{prefix}_MAX_QUEUE_SIZE"),
                    2048,
                )? as usize,
                max_export_batch_size: number(
                    self.max_export_batch_size.map(|v| v as u64),
                    &format!("{prefix}_MAX_EXPORT_BATCH_SIZE"),
                    512,
                )? as usize,
                schedule_delay: Duration::from_millis(number(
                    self.schedule_delay_ms,
                    &format!("{prefix}_SCHEDULE_DELAY"),
                    1000,
                )?),
            })
        };
        Ok(Some(ExportConfig {
            traces,
            metrics,
            logs,
            resource: resource.into_iter().collect(),
            headers: headers.into_iter().collect(),
            span_batching: batching("OTEL_BSP")?,
            log_batching: batching("OTEL_BLRP")?,
            export_timeout: Duration::from_millis(number(
                self.export_timeout_ms,
                "OTEL_EXPORTER_OTLP_TIMEOUT",
                10_000,
            )?),
            metric_interval: Duration::from_millis(number(
                self.metric_export_interval_ms,
                "OTEL_METRIC_EXPORT_INTERVAL",
                60_000,
            )?),
        }))
    }

    /// Where `signal` goes, or `None` when it has no endpoint or its exporter is `none`.
    fn target(&self, signal: Signal, env: &impl Fn(&str) -> Option<String>) -> Result<Option<Target>, String> {
        let exporter_variable = signal.variable("OTEL_{}_EXPORTER");
        if let Some(exporter) = env(&exporter_variable) {
            match exporter.trim() {
                "none" => return Ok(None),
                "otlp" => {}
                other => {
                    return Err(format!(
                        "{exporter_variable}={other:?}: Mosaic exports {} over OTLP only; set it to `otlp` or `none`",
                        signal.name()
                    ))
                }
            }
        }
        let protocol_text = self
            .protocol
            .clone()
            .or_else(|| env(&signal.variable("OTEL_EXPORTER_OTLP_{}_PROTOCOL")))
            .or_else(|| env("OTEL_EXPORTER_OTLP_PROTOCOL"));
        let protocol = match protocol_text.as_deref().map(str::trim) {
            None | Some("http/protobuf") => Protocol::HttpProtobuf,
            Some("grpc") => Protocol::Grpc,
            Some(other) => {
                return Err(format!(
                    "the OTLP protocol {other:?} (telemetry.protocol or OTEL_EXPORTER_OTLP_PROTOCOL) is not supported: use `http/protobuf` or `grpc`"
                ))
            }
        };
        // A signal's own endpoint is the whole URL; a base endpoint gets the signal's path.
        let with_path = |base: &str| {
            let base = base.trim().trim_end_matches('/');
            match protocol {
                Protocol::HttpProtobuf => format!("{base}/v1/{}", signal.name()),
                Protocol::Grpc => base.to_string(),
            }
        };
        let url = match (&self.endpoint, env(&signal.variable("OTEL_EXPORTER_OTLP_{}_ENDPOINT"))) {
            (Some(base), _) => with_path(base),
            (None, Some(whole)) => whole.trim().to_string(),
            (None, None) => match env("OTEL_EXPORTER_OTLP_ENDPOINT") {
                Some(base) => with_path(&base),
                None => return Ok(None),
            },
        };
        let parsed: http::Uri = url.parse().map_err(|err| {
            format!("the OTLP endpoint {url:?} is not a URL ({err}); give e.g. http://127.0.0.1:4318")
        })?;
        match parsed.scheme_str() {
            Some("http") => {}
            Some("https") => {
                return Err(format!(
                    "the OTLP endpoint {url:?} uses https, which this build does not export over; \
                     run an OpenTelemetry Collector beside the host (http://127.0.0.1:4318) and let it forward over TLS"
                ))
            }
            _ => return Err(format!("the OTLP endpoint {url:?} must start with http://")),
        }
        if parsed.host().is_none() {
            return Err(format!("the OTLP endpoint {url:?} names no host"));
        }
        Ok(Some(Target { url, protocol }))
    }
}

/// `key=value,key=value` (values percent-encoded), as `OTEL_RESOURCE_ATTRIBUTES` and
/// `OTEL_EXPORTER_OTLP_HEADERS` write them.
fn key_values(variable: &str, text: &str) -> Result<Vec<(String, String)>, String> {
    text.split(',')
        .filter(|pair| !pair.trim().is_empty())
        .map(|pair| {
            let Some((key, value)) = pair.split_once('=') else {
                return Err(format!(
                    "{variable}: {pair:?} is not key=value (give e.g. deployment.environment=prod,team=shop)"
                ));
            };
            let value = percent_encoding::percent_decode_str(value.trim()).decode_utf8_lossy();
            Ok((key.trim().to_string(), value.into_owned()))
        })
        .collect()
}

/// What one signal's exporter did: records the endpoint accepted, and records dropped (a
/// full queue, or an export the endpoint did not take).
#[derive(Debug, Default)]
pub struct Counters {
    dropped: AtomicU64,
    exported: AtomicU64,
}

impl Counters {
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub fn exported(&self) -> u64 {
        self.exported.load(Ordering::Relaxed)
    }

    pub(super) fn count_dropped(&self, count: u64) {
        self.dropped.fetch_add(count, Ordering::Relaxed);
    }

    pub(super) fn count_exported(&self, count: u64) {
        self.exported.fetch_add(count, Ordering::Relaxed);
    }
}

/// The counters of the three signals, as `/metrics` shows them
/// (`mosaic_telemetry_dropped_total` and `mosaic_telemetry_exported_total` by `signal`).
#[derive(Debug, Default)]
pub struct TelemetryCounters {
    pub traces: Arc<Counters>,
    pub metrics: Arc<Counters>,
    pub logs: Arc<Counters>,
}

impl TelemetryCounters {
    pub fn of(&self, signal: Signal) -> &Arc<Counters> {
        match signal {
            Signal::Traces => &self.traces,
            Signal::Metrics => &self.metrics,
            Signal::Logs => &self.logs,
        }
    }
}

enum Queued<T> {
    Record(T),
    /// Export what is queued now, then answer.
    Flush(oneshot::Sender<()>),
}

/// The bounded queue between the request path and one signal's export task. Offering never
/// waits: a record that does not fit is dropped and counted, and so is every record while the
/// export is paused (the endpoint failed the last export).
pub(super) struct Queue<T> {
    sender: mpsc::Sender<Queued<T>>,
    counters: Arc<Counters>,
    paused: Arc<AtomicBool>,
}

impl<T> Queue<T> {
    pub(super) fn offer(&self, record: T) {
        if self.is_paused() || self.sender.try_send(Queued::Record(record)).is_err() {
            self.counters.count_dropped(1);
        }
    }

    /// Whether records are dropped at once, the endpoint having failed.
    pub(super) fn is_paused(&self) -> bool {
        self.paused.load(Ordering::Relaxed)
    }

    /// Whether the request path should build a record now: not while the export is paused,
    /// and then the record it does not build is counted as dropped. So a collector that is
    /// down costs the requests nothing but this check.
    pub(super) fn admits_one(&self) -> bool {
        if self.is_paused() {
            self.counters.count_dropped(1);
            return false;
        }
        true
    }

    /// Exports what is queued now; waits at most `timeout` (at shutdown, so that the last
    /// records are not lost).
    pub(super) async fn flush(&self, timeout: Duration, signal: Signal) {
        let (done, answered) = oneshot::channel();
        let flushed = async {
            if self.sender.send(Queued::Flush(done)).await.is_ok() {
                let _ = answered.await;
            }
        };
        if tokio::time::timeout(timeout, flushed).await.is_err() {
            tracing::warn!(
                ?timeout,
                signal = signal.name(),
                "the OTLP endpoint did not take the last records in time; they are dropped"
            );
        }
    }
}

/// How often a failing endpoint is reported in the log at most.
const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(60);

/// Reports a failed export in the log, at most once a minute per signal (a collector that is
/// down would otherwise fill the log it is meant to receive).
pub(super) struct FailureLog {
    last: Option<Instant>,
    signal: Signal,
    url: String,
}

impl FailureLog {
    pub(super) fn new(signal: Signal, url: &str) -> FailureLog {
        FailureLog {
            last: None,
            signal,
            url: url.to_string(),
        }
    }

    pub(super) fn failed(&mut self, records: u64, reason: &str) {
        if self.last.is_none_or(|at| at.elapsed() >= FAILURE_LOG_INTERVAL) {
            self.last = Some(Instant::now());
            tracing::warn!(
                target: "mosaic::telemetry",
                endpoint = %self.url,
                signal = self.signal.name(),
                records,
                error = %reason,
                "the OTLP endpoint did not take an export; what it carried is dropped (mosaic_telemetry_dropped_total)"
            );
        }
    }
}

/// After a failed export, records are dropped unbuilt for this long, doubling with each
/// further failure up to [`MAX_EXPORT_PAUSE`]; a successful export ends it.
const FIRST_EXPORT_PAUSE: Duration = Duration::from_secs(1);
const MAX_EXPORT_PAUSE: Duration = Duration::from_secs(30);

/// Starts the task that batches `signal`'s queue into exports: it waits for a record, gathers
/// more for up to the schedule delay or a full batch, and hands the batch to `export` (which
/// answers the endpoint's error), within `timeout`. A failed export pauses the queue (see
/// [`FIRST_EXPORT_PAUSE`]). Returns the queue's sending end.
pub(super) fn spawn_batcher<T, F, Fut>(
    signal: Signal,
    url: &str,
    batching: Batching,
    timeout: Duration,
    counters: Arc<Counters>,
    mut export: F,
) -> Queue<T>
where
    T: Send + 'static,
    F: FnMut(Vec<T>) -> Fut + Send + 'static,
    Fut: Future<Output = Result<(), String>> + Send,
{
    let (sender, mut receiver) = mpsc::channel::<Queued<T>>(batching.max_queue_size);
    let mut failures = FailureLog::new(signal, url);
    let task_counters = counters.clone();
    let paused = Arc::new(AtomicBool::new(false));
    let task_paused = paused.clone();
    tokio::spawn(async move {
        let mut pause = FIRST_EXPORT_PAUSE;
        let mut batch: Vec<T> = Vec::with_capacity(batching.max_export_batch_size);
        let mut flushes: Vec<oneshot::Sender<()>> = Vec::new();
        loop {
            match receiver.recv().await {
                None => break,
                Some(Queued::Record(record)) => batch.push(record),
                Some(Queued::Flush(done)) => flushes.push(done),
            }
            let gather_until = tokio::time::Instant::now() + batching.schedule_delay;
            while flushes.is_empty() && batch.len() < batching.max_export_batch_size {
                tokio::select! {
                    item = receiver.recv() => match item {
                        Some(Queued::Record(record)) => batch.push(record),
                        Some(Queued::Flush(done)) => flushes.push(done),
                        None => break,
                    },
                    _ = tokio::time::sleep_until(gather_until) => break,
                }
            }
            if !batch.is_empty() {
                let count = batch.len() as u64;
                let records = std::mem::replace(&mut batch, Vec::with_capacity(batching.max_export_batch_size));
                let failure = match tokio::time::timeout(timeout, export(records)).await {
                    Ok(Ok(())) => None,
                    Ok(Err(reason)) => Some(reason),
                    Err(_) => Some(format!("no answer within {timeout:?}")),
                };
                match failure {
                    None => {
                        task_counters.count_exported(count);
                        pause = FIRST_EXPORT_PAUSE;
                    }
                    Some(reason) => {
                        task_counters.count_dropped(count);
                        failures.failed(count, &reason);
                        // Answer the flushes first: a stopping host does not wait out the pause.
                        for done in flushes.drain(..) {
                            let _ = done.send(());
                        }
                        task_paused.store(true, Ordering::Relaxed);
                        let resume = tokio::time::Instant::now() + pause;
                        loop {
                            tokio::select! {
                                _ = tokio::time::sleep_until(resume) => break,
                                item = receiver.recv() => match item {
                                    // Offered just before the pause began.
                                    Some(Queued::Record(_)) => task_counters.count_dropped(1),
                                    Some(Queued::Flush(done)) => {
                                        let _ = done.send(());
                                    }
                                    None => return,
                                },
                            }
                        }
                        task_paused.store(false, Ordering::Relaxed);
                        pause = (pause * 2).min(MAX_EXPORT_PAUSE);
                    }
                }
            }
            for done in flushes.drain(..) {
                let _ = done.send(());
            }
        }
    });
    Queue {
        sender,
        counters,
        paused,
    }
}

/// The OTLP resource of every export: `service.name` and the other attributes.
pub(super) fn proto_resource(config: &ExportConfig) -> ProtoResource {
    ProtoResource {
        attributes: config
            .resource
            .iter()
            .map(|(key, value)| proto_text(key, value))
            .collect(),
        ..ProtoResource::default()
    }
}

pub(super) fn proto_text(key: &str, value: &str) -> ProtoKeyValue {
    ProtoKeyValue {
        key: key.to_string(),
        value: Some(AnyValue {
            value: Some(any_value::Value::StringValue(value.to_string())),
        }),
        ..ProtoKeyValue::default()
    }
}

type HttpClient = hyper_util::client::legacy::Client<hyper_util::client::legacy::connect::HttpConnector, Full<Bytes>>;

enum Transport {
    Http { client: Box<HttpClient>, url: http::Uri },
    Grpc { channel: tonic::transport::Channel },
}

/// Sends OTLP protobuf exports of metrics or logs to one target, over HTTP (`POST` of the
/// protobuf) or gRPC (the collector services' `Export`).
#[derive(Clone)]
pub(super) struct Push {
    transport: Arc<Transport>,
    headers: Arc<http::HeaderMap>,
}

impl Push {
    pub(super) fn new(target: &Target, headers: &[(String, String)]) -> Result<Push, String> {
        let header_map = http_headers(headers)?;
        let transport = match target.protocol {
            Protocol::HttpProtobuf => Transport::Http {
                client: Box::new(
                    hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new()).build_http(),
                ),
                url: target
                    .url
                    .parse()
                    .map_err(|err| format!("the OTLP endpoint {:?} is not a URL ({err})", target.url))?,
            },
            Protocol::Grpc => Transport::Grpc {
                channel: tonic::transport::Channel::from_shared(target.url.clone())
                    .map_err(|err| format!("the OTLP endpoint {:?} is not a URL ({err})", target.url))?
                    .connect_lazy(),
            },
        };
        Ok(Push {
            transport: Arc::new(transport),
            headers: Arc::new(header_map),
        })
    }

    pub(super) async fn metrics(&self, export: ExportMetricsServiceRequest) -> Result<(), String> {
        match &*self.transport {
            Transport::Http { client, url } => self.post(client, url, export.encode_to_vec()).await,
            Transport::Grpc { channel } => MetricsServiceClient::new(channel.clone())
                .export(self.grpc_request(export))
                .await
                .map(drop)
                .map_err(grpc_failure),
        }
    }

    pub(super) async fn logs(&self, export: ExportLogsServiceRequest) -> Result<(), String> {
        match &*self.transport {
            Transport::Http { client, url } => self.post(client, url, export.encode_to_vec()).await,
            Transport::Grpc { channel } => LogsServiceClient::new(channel.clone())
                .export(self.grpc_request(export))
                .await
                .map(drop)
                .map_err(grpc_failure),
        }
    }

    /// A gRPC export request carrying the configured headers as metadata.
    fn grpc_request<M>(&self, message: M) -> tonic::Request<M> {
        let mut request = tonic::Request::new(message);
        *request.metadata_mut() = tonic::metadata::MetadataMap::from_headers((*self.headers).clone());
        request
    }

    async fn post(&self, client: &HttpClient, url: &http::Uri, body: Vec<u8>) -> Result<(), String> {
        let mut request = http::Request::post(url.clone())
            .header(http::header::CONTENT_TYPE, "application/x-protobuf")
            .body(Full::new(Bytes::from(body)))
            .map_err(|err| err.to_string())?;
        request
            .headers_mut()
            .extend(self.headers.iter().map(|(name, value)| (name.clone(), value.clone())));
        let response = client.request(request).await.map_err(|err| err.to_string())?;
        let status = response.status();
        // Read the answer to its end so that the connection can be used again.
        let _ = response.into_body().collect().await;
        if status.is_success() {
            Ok(())
        } else {
            Err(format!("HTTP {status}"))
        }
    }
}

fn grpc_failure(status: tonic::Status) -> String {
    format!("gRPC {:?}: {}", status.code(), status.message())
}

/// The configured export headers as HTTP headers (sent as gRPC metadata over gRPC); an error
/// names the header that is not valid.
pub(super) fn http_headers(headers: &[(String, String)]) -> Result<http::HeaderMap, String> {
    let mut header_map = http::HeaderMap::new();
    for (key, value) in headers {
        let name = http::HeaderName::from_bytes(key.as_bytes())
            .map_err(|_| format!("the telemetry header name {key:?} is not a valid header name"))?;
        let value = http::HeaderValue::from_str(value)
            .map_err(|_| format!("the telemetry header {key:?} has a value that is not a valid header value"))?;
        header_map.insert(name, value);
    }
    Ok(header_map)
}

/// Headers as a map, for the span exporter's HTTP client.
pub(super) fn header_map(headers: &[(String, String)]) -> HashMap<String, String> {
    headers.iter().cloned().collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env_of(pairs: &[(&str, &str)]) -> impl Fn(&str) -> Option<String> {
        let pairs: Vec<(String, String)> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        move |name| {
            pairs
                .iter()
                .find(|(key, _)| key == name)
                .map(|(_, value)| value.clone())
        }
    }

    fn url(target: &Option<Target>) -> Option<&str> {
        target.as_ref().map(|target| target.url.as_str())
    }

    #[test]
    fn export_is_off_without_an_endpoint_and_follows_the_standard_variables() {
        let settings = TelemetrySettings::default();
        assert_eq!(settings.resolve(env_of(&[]), "shop"), Ok(None));
        assert_eq!(
            settings.resolve(env_of(&[("OTEL_SERVICE_NAME", "x")]), "shop"),
            Ok(None),
            "a service name alone turns nothing on"
        );

        let config = settings
            .resolve(
                env_of(&[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4318/"),
                    ("OTEL_RESOURCE_ATTRIBUTES", "deployment.environment=prod,team=a%20b"),
                    ("OTEL_EXPORTER_OTLP_HEADERS", "x-api-key=s3cret"),
                ]),
                "shop",
            )
            .unwrap()
            .unwrap();
        assert_eq!(url(&config.traces), Some("http://127.0.0.1:4318/v1/traces"));
        assert_eq!(url(&config.metrics), Some("http://127.0.0.1:4318/v1/metrics"));
        assert_eq!(url(&config.logs), Some("http://127.0.0.1:4318/v1/logs"));
        assert_eq!(config.traces.as_ref().unwrap().protocol, Protocol::HttpProtobuf);
        assert!(config.resource.contains(&("service.name".into(), "shop".into())));
        assert!(config.resource.contains(&("team".into(), "a b".into())));
        assert!(config.headers.contains(&("x-api-key".into(), "s3cret".into())));
        assert_eq!(config.span_batching.max_queue_size, 2048);
        assert_eq!(config.metric_interval, Duration::from_secs(60));

        let grpc = settings
            .resolve(
                env_of(&[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://collector:4317"),
                    ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
                    ("OTEL_SERVICE_NAME", "checkout"),
                ]),
                "shop",
            )
            .unwrap()
            .unwrap();
        assert_eq!(
            grpc.metrics,
            Some(Target {
                url: "http://collector:4317".into(),
                protocol: Protocol::Grpc
            })
        );
        assert!(grpc.resource.contains(&("service.name".into(), "checkout".into())));

        let whole = settings
            .resolve(
                env_of(&[("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:9/custom")]),
                "shop",
            )
            .unwrap()
            .unwrap();
        assert_eq!(
            url(&whole.traces),
            Some("http://c:9/custom"),
            "a signal's own endpoint is used as it is"
        );
        assert_eq!(
            (&whole.metrics, &whole.logs),
            (&None, &None),
            "and only for that signal"
        );

        let base = ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318");
        assert_eq!(
            settings.resolve(env_of(&[base, ("OTEL_SDK_DISABLED", "true")]), "shop"),
            Ok(None)
        );
        let no_logs = settings
            .resolve(env_of(&[base, ("OTEL_LOGS_EXPORTER", "none")]), "shop")
            .unwrap()
            .unwrap();
        assert!(no_logs.logs.is_none() && no_logs.traces.is_some() && no_logs.metrics.is_some());
        let off = TelemetrySettings {
            traces: false,
            metrics: false,
            logs: false,
            ..TelemetrySettings::default()
        };
        assert_eq!(off.resolve(env_of(&[base]), "shop"), Ok(None), "every signal off");
    }

    #[test]
    fn mosaic_toml_wins_over_the_environment_and_bad_values_are_named() {
        let settings = TelemetrySettings {
            endpoint: Some("http://127.0.0.1:4318".into()),
            service_name: Some("mosaic-shop".into()),
            schedule_delay_ms: Some(50),
            metric_export_interval_ms: Some(200),
            ..TelemetrySettings::default()
        };
        let config = settings
            .resolve(
                env_of(&[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://elsewhere:4318"),
                    ("OTEL_SERVICE_NAME", "other"),
                    ("OTEL_METRIC_EXPORT_INTERVAL", "5000"),
                ]),
                "shop",
            )
            .unwrap()
            .unwrap();
        assert_eq!(url(&config.traces), Some("http://127.0.0.1:4318/v1/traces"));
        assert!(config.resource.contains(&("service.name".into(), "mosaic-shop".into())));
        assert_eq!(config.span_batching.schedule_delay, Duration::from_millis(50));
        assert_eq!(config.log_batching.schedule_delay, Duration::from_millis(50));
        assert_eq!(config.metric_interval, Duration::from_millis(200));

        let err = |pairs: &[(&str, &str)]| settings.resolve(env_of(pairs), "shop").unwrap_err();
        assert!(err(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]).contains("use `http/protobuf` or `grpc`"));
        assert!(err(&[("OTEL_BSP_MAX_QUEUE_SIZE", "many")]).contains("OTEL_BSP_MAX_QUEUE_SIZE"));
        assert!(err(&[("OTEL_BLRP_MAX_EXPORT_BATCH_SIZE", "0")]).contains("greater than 0"));
        assert!(err(&[("OTEL_TRACES_EXPORTER", "zipkin")]).contains("OTLP only"));
        assert!(err(&[("OTEL_METRICS_EXPORTER", "prometheus")]).contains("metrics over OTLP only"));
        let https = TelemetrySettings {
            endpoint: Some("https://api.example.com".into()),
            ..TelemetrySettings::default()
        };
        assert!(https.resolve(env_of(&[]), "shop").unwrap_err().contains("Collector"));
    }

    #[tokio::test]
    async fn a_full_queue_drops_and_counts_and_a_failed_export_counts_its_records() {
        let counters = Arc::new(Counters::default());
        let batching = Batching {
            max_queue_size: 2,
            max_export_batch_size: 10,
            schedule_delay: Duration::from_millis(1),
        };
        let (release, released) = tokio::sync::watch::channel(false);
        let queue = spawn_batcher(
            Signal::Logs,
            "http://127.0.0.1:9",
            batching,
            Duration::from_secs(5),
            counters.clone(),
            move |records: Vec<u32>| {
                let mut released = released.clone();
                async move {
                    let _ = released.wait_for(|go| *go).await;
                    Err(format!("{} records refused", records.len()))
                }
            },
        );
        queue.offer(1);
        // The task takes the first and waits on the export; two fit behind it, then drops.
        tokio::time::sleep(Duration::from_millis(50)).await;
        for record in 2..6 {
            queue.offer(record);
        }
        assert_eq!(counters.dropped(), 2, "the queue holds 2; the rest are dropped at once");
        release.send(true).unwrap();
        queue.flush(Duration::from_secs(5), Signal::Logs).await;
        assert_eq!(counters.dropped(), 5, "and every record of a refused export");
        assert_eq!(counters.exported(), 0);
        assert!(queue.is_paused(), "a refused export pauses the queue");
        queue.offer(6);
        assert_eq!(counters.dropped(), 6, "paused, a record is dropped at once");
    }
}
