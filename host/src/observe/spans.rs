//! The host's spans, exported over OTLP (HTTP/protobuf or gRPC) to a collector, Jaeger or any
//! OpenTelemetry backend.
//!
//! Export is off unless an endpoint is configured (`[telemetry] endpoint` in mosaic.toml, or
//! the standard `OTEL_EXPORTER_OTLP_ENDPOINT` / `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`). Off, a
//! [`Spans`] is `None` and every [`OpenSpan`] is an empty box: nothing is allocated, timed or
//! queued on the request path.
//!
//! On, a finished span goes into a bounded queue with `try_send` and one background task
//! batches the queue into OTLP exports. A request never waits for the exporter: when the queue
//! is full (the endpoint is down or slow) the span is dropped and counted
//! (`mosaic_telemetry_dropped_total`), and so is every span of a batch the endpoint did not
//! take. The span ids are those of the `traceparent` the host passes on ([`TraceContext`]), so
//! a guest's own spans and the services it calls nest under the host's spans.

use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{SpanContext, SpanId, Status, TraceFlags, TraceId, TraceState};
use opentelemetry::{InstrumentationScope, KeyValue, Value};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{SpanData, SpanExporter as _};
use serde::Deserialize;
use tokio::sync::{mpsc, oneshot};

pub use opentelemetry::trace::SpanKind;

use super::TraceContext;

/// `[telemetry]` in mosaic.toml. Each field left out falls back to its standard
/// OpenTelemetry environment variable; with no endpoint anywhere, nothing is exported.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct TelemetrySettings {
    /// The collector's base address, e.g. `http://127.0.0.1:4318` (HTTP; spans go to
    /// `/v1/traces` under it) or `http://127.0.0.1:4317` (gRPC). Over
    /// `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` (used as it is) and `OTEL_EXPORTER_OTLP_ENDPOINT`.
    pub endpoint: Option<String>,
    /// `http/protobuf` (the default) or `grpc`. Over `OTEL_EXPORTER_OTLP_TRACES_PROTOCOL` and
    /// `OTEL_EXPORTER_OTLP_PROTOCOL`.
    pub protocol: Option<String>,
    /// The resource's `service.name`. Over `OTEL_SERVICE_NAME`, then `service.name` of
    /// `OTEL_RESOURCE_ATTRIBUTES`; default: the application's name.
    pub service_name: Option<String>,
    /// More resource attributes, over (and merged with) `OTEL_RESOURCE_ATTRIBUTES`.
    pub resource_attributes: BTreeMap<String, String>,
    /// Headers sent with each export (an API key, say), merged over
    /// `OTEL_EXPORTER_OTLP_HEADERS`.
    pub headers: BTreeMap<String, String>,
    /// Spans waiting for export at most; beyond, new spans are dropped and counted. Over
    /// `OTEL_BSP_MAX_QUEUE_SIZE`; default 2048.
    pub max_queue_size: Option<usize>,
    /// The most spans in one export. Over `OTEL_BSP_MAX_EXPORT_BATCH_SIZE`; default 512.
    pub max_export_batch_size: Option<usize>,
    /// How long a span may wait for others to share its export. Over
    /// `OTEL_BSP_SCHEDULE_DELAY`; default 1000 ms.
    pub schedule_delay_ms: Option<u64>,
    /// How long one export may take before its spans are dropped. Over
    /// `OTEL_EXPORTER_OTLP_TIMEOUT`; default 10000 ms.
    pub export_timeout_ms: Option<u64>,
}

/// How spans reach the collector.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Protocol {
    HttpProtobuf,
    Grpc,
}

/// Export settings after mosaic.toml and the environment were merged.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportConfig {
    /// The whole URL spans are sent to (HTTP: with `/v1/traces`).
    pub url: String,
    pub protocol: Protocol,
    pub resource: Vec<(String, String)>,
    pub headers: Vec<(String, String)>,
    pub max_queue_size: usize,
    pub max_export_batch_size: usize,
    pub schedule_delay: Duration,
    pub export_timeout: Duration,
}

impl TelemetrySettings {
    /// Where and how to export, or `None` when no endpoint is set (or `OTEL_SDK_DISABLED=true`,
    /// or `OTEL_TRACES_EXPORTER=none`). `env` reads an environment variable; `app_name` is the
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
        if let Some(exporter) = env("OTEL_TRACES_EXPORTER") {
            match exporter.trim() {
                "none" => return Ok(None),
                "otlp" => {}
                other => {
                    return Err(format!(
                    "OTEL_TRACES_EXPORTER={other:?}: Mosaic exports spans over OTLP only; set it to `otlp` or `none`"
                ))
                }
            }
        }
        let protocol_text = self
            .protocol
            .clone()
            .or_else(|| env("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"))
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
        let url = match (&self.endpoint, env("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")) {
            (Some(base), _) => with_signal_path(base, protocol),
            (None, Some(whole)) => whole.trim().to_string(),
            (None, None) => match env("OTEL_EXPORTER_OTLP_ENDPOINT") {
                Some(base) => with_signal_path(&base, protocol),
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

        let mut resource: BTreeMap<String, String> = BTreeMap::new();
        if let Some(text) = env("OTEL_RESOURCE_ATTRIBUTES") {
            for pair in text.split(',').filter(|pair| !pair.trim().is_empty()) {
                let Some((key, value)) = pair.split_once('=') else {
                    return Err(format!(
                        "OTEL_RESOURCE_ATTRIBUTES: {pair:?} is not key=value (give e.g. deployment.environment=prod,team=shop)"
                    ));
                };
                let value = percent_encoding::percent_decode_str(value.trim()).decode_utf8_lossy();
                resource.insert(key.trim().to_string(), value.into_owned());
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
        Ok(Some(ExportConfig {
            url,
            protocol,
            resource: resource.into_iter().collect(),
            headers: self.headers.clone().into_iter().collect(),
            max_queue_size: number(self.max_queue_size.map(|v| v as u64), "OTEL_BSP_MAX_QUEUE_SIZE", 2048)? as usize,
            max_export_batch_size: number(
                self.max_export_batch_size.map(|v| v as u64),
                "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
                512,
            )? as usize,
            schedule_delay: Duration::from_millis(number(self.schedule_delay_ms, "OTEL_BSP_SCHEDULE_DELAY", 1000)?),
            export_timeout: Duration::from_millis(number(
                self.export_timeout_ms,
                "OTEL_EXPORTER_OTLP_TIMEOUT",
                10_000,
            )?),
        }))
    }
}

fn with_signal_path(base: &str, protocol: Protocol) -> String {
    let base = base.trim().trim_end_matches('/');
    match protocol {
        Protocol::HttpProtobuf => format!("{base}/v1/traces"),
        Protocol::Grpc => base.to_string(),
    }
}

enum Queued {
    Span(Box<SpanData>),
    /// Export what is queued now, then answer.
    Flush(oneshot::Sender<()>),
}

struct Export {
    queue: mpsc::Sender<Queued>,
    dropped: AtomicU64,
    exported: AtomicU64,
    scope: InstrumentationScope,
}

/// Where the host's finished spans go: an OTLP exporter, or nowhere (the default). Cheap to
/// clone; every part of the host that records metrics can record spans through it.
#[derive(Clone, Default)]
pub struct Spans(Option<Arc<Export>>);

impl std::fmt::Debug for Spans {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_some() {
            "Spans(exporting)"
        } else {
            "Spans(off)"
        })
    }
}

impl Spans {
    /// Starts exporting per `config`: builds the OTLP exporter and spawns the task that
    /// batches spans into it (on the current tokio runtime).
    pub fn export(config: &ExportConfig) -> Result<Spans, String> {
        let timeout = config.export_timeout;
        let mut exporter = match config.protocol {
            Protocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(config.url.clone())
                .with_timeout(timeout)
                .with_headers(config.headers.iter().cloned().collect::<HashMap<_, _>>())
                .build(),
            Protocol::Grpc => {
                use opentelemetry_otlp::WithTonicConfig;
                let mut headers = http::HeaderMap::new();
                for (key, value) in &config.headers {
                    let name = http::HeaderName::from_bytes(key.as_bytes())
                        .map_err(|_| format!("the telemetry header name {key:?} is not valid gRPC metadata"))?;
                    let value = http::HeaderValue::from_str(value).map_err(|_| {
                        format!("the telemetry header {key:?} has a value that is not valid gRPC metadata")
                    })?;
                    headers.insert(name, value);
                }
                let metadata = opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(headers);
                opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(config.url.clone())
                    .with_timeout(timeout)
                    .with_metadata(metadata)
                    .build()
            }
        }
        .map_err(|err| format!("cannot build the OTLP span exporter for {}: {err}", config.url))?;
        let resource = opentelemetry_sdk::Resource::builder_empty()
            .with_attributes(
                config
                    .resource
                    .iter()
                    .map(|(key, value)| KeyValue::new(key.clone(), value.clone())),
            )
            .build();
        exporter.set_resource(&resource);

        let (queue, receiver) = mpsc::channel(config.max_queue_size);
        let export = Arc::new(Export {
            queue,
            dropped: AtomicU64::new(0),
            exported: AtomicU64::new(0),
            scope: InstrumentationScope::builder("mosaic")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        });
        tokio::spawn(run_export(
            exporter,
            receiver,
            Arc::downgrade(&export),
            config.max_export_batch_size,
            config.schedule_delay,
            timeout,
            config.url.clone(),
        ));
        tracing::info!(endpoint = %config.url, protocol = ?config.protocol, "exporting spans over OTLP");
        Ok(Spans(Some(export)))
    }

    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// Spans dropped so far: the queue was full, or the endpoint did not take their export.
    pub fn dropped(&self) -> u64 {
        self.0
            .as_ref()
            .map_or(0, |export| export.dropped.load(Ordering::Relaxed))
    }

    /// Spans the endpoint accepted so far.
    pub fn exported(&self) -> u64 {
        self.0
            .as_ref()
            .map_or(0, |export| export.exported.load(Ordering::Relaxed))
    }

    /// The span of this host's work on a request or a delivery: its id is `context.span_id`
    /// (the parent the guest and everything after it see), its parent the span that
    /// `parent_span_id` names (from the incoming `traceparent`), if any.
    pub fn begin(
        &self,
        context: &TraceContext,
        parent_span_id: Option<&str>,
        kind: SpanKind,
        name: impl Into<Cow<'static, str>>,
    ) -> OpenSpan {
        let Some(export) = &self.0 else {
            return OpenSpan(None);
        };
        OpenSpan::recording(export, context, parent_span_id, true, kind, name)
    }

    /// A span under `parent` (the span of the request or delivery an instance serves), with
    /// its own context to pass on, e.g. as the `traceparent` of an outbound call. Off, or
    /// without a parent, nothing is recorded and there is no context of its own: the caller
    /// passes on the parent's (`child.as_ref().or(parent)`), at no cost.
    pub fn child(
        &self,
        parent: Option<&TraceContext>,
        kind: SpanKind,
        name: impl Into<Cow<'static, str>>,
    ) -> (OpenSpan, Option<TraceContext>) {
        let (Some(export), Some(parent)) = (&self.0, parent) else {
            return (OpenSpan(None), None);
        };
        let context = parent.child();
        let span = OpenSpan::recording(export, &context, Some(&parent.span_id), false, kind, name);
        (span, Some(context))
    }

    /// Exports what is queued now; waits at most `timeout` (at shutdown, so that the last
    /// requests' spans are not lost).
    pub async fn flush(&self, timeout: Duration) {
        let Some(export) = &self.0 else {
            return;
        };
        let (done, answered) = oneshot::channel();
        let flushed = async {
            if export.queue.send(Queued::Flush(done)).await.is_ok() {
                let _ = answered.await;
            }
        };
        if tokio::time::timeout(timeout, flushed).await.is_err() {
            tracing::warn!(
                ?timeout,
                "the OTLP endpoint did not take the last spans in time; they are dropped"
            );
        }
    }
}

/// A span a guest recorded itself (`wasi:otel` tracing), in plain terms.
pub struct GuestSpan {
    /// Hex, as in `traceparent`; a span whose ids are not valid is not exported.
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub sampled: bool,
    pub name: String,
    pub kind: SpanKind,
    pub start: SystemTime,
    pub end: SystemTime,
    /// Attribute values as the guest gave them (text).
    pub attributes: Vec<(String, String)>,
    /// `Some(message)`: the guest marked the span failed.
    pub error: Option<String>,
    /// The guest's instrumentation scope (its library's name).
    pub scope: String,
    /// The component that recorded it (`mosaic.component`).
    pub component: String,
}

impl Spans {
    /// Exports a span a guest recorded, as its own (its ids, times and scope). Nothing when
    /// export is off or the span is unsampled.
    pub fn record_guest(&self, span: GuestSpan) {
        let Some(export) = &self.0 else {
            return;
        };
        let (Ok(trace_id), Ok(span_id)) = (TraceId::from_hex(&span.trace_id), SpanId::from_hex(&span.span_id)) else {
            return;
        };
        if !span.sampled || trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
            return;
        }
        let mut attributes: Vec<KeyValue> = span
            .attributes
            .into_iter()
            .map(|(key, value)| KeyValue::new(key, value))
            .collect();
        attributes.push(KeyValue::new("mosaic.component", span.component));
        let data = SpanData {
            span_context: SpanContext::new(trace_id, span_id, TraceFlags::SAMPLED, false, TraceState::default()),
            parent_span_id: SpanId::from_hex(&span.parent_span_id).unwrap_or(SpanId::INVALID),
            parent_span_is_remote: false,
            span_kind: span.kind,
            name: span.name.into(),
            start_time: span.start,
            end_time: span.end.max(span.start),
            attributes,
            dropped_attributes_count: 0,
            events: Default::default(),
            links: Default::default(),
            status: match span.error {
                Some(message) => Status::error(message),
                None => Status::Unset,
            },
            instrumentation_scope: InstrumentationScope::builder(span.scope).build(),
        };
        if export.queue.try_send(Queued::Span(Box::new(data))).is_err() {
            export.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The span a capability's calls nest under: the request or delivery an instance serves, with
/// the export. Only made when spans are exported, so that without export a capability keeps
/// nothing and checks one `Option`.
#[derive(Clone)]
pub struct SpanParent {
    trace: Arc<TraceContext>,
    spans: Spans,
}

/// The most of a statement's text a database span keeps (`db.query.text`).
const MAX_QUERY_TEXT: usize = 2048;

impl SpanParent {
    /// The parent for an instance serving `trace`, if spans are exported.
    pub fn of(trace: Option<&Arc<TraceContext>>, spans: &Spans) -> Option<SpanParent> {
        match (trace, spans.is_on()) {
            (Some(trace), true) => Some(SpanParent {
                trace: trace.clone(),
                spans: spans.clone(),
            }),
            _ => None,
        }
    }

    /// A client span of a call to a backend.
    pub fn client(&self, name: impl Into<Cow<'static, str>>) -> OpenSpan {
        self.spans.child(Some(&self.trace), SpanKind::Client, name).0
    }

    /// The client span of one SQL statement on `namespace` (the database's label or name) of
    /// `system` (`sqlite`, `postgresql`, `mysql`): named after the statement's first keyword,
    /// with the statement's text (its parameters are bound, never part of the text).
    pub fn statement(&self, system: &'static str, namespace: &str, statement: &str) -> OpenSpan {
        let operation = statement
            .split_whitespace()
            .next()
            .unwrap_or("")
            .trim_end_matches(';')
            .to_ascii_uppercase();
        let mut span = self.client(format!("{operation} {namespace}"));
        span.set("db.system.name", system);
        span.set_str("db.namespace", namespace);
        span.set_str("db.operation.name", &operation);
        let mut end = statement.len().min(MAX_QUERY_TEXT);
        while !statement.is_char_boundary(end) {
            end -= 1;
        }
        span.set_str("db.query.text", &statement[..end]);
        span
    }
}

/// A span being recorded; it ends, and goes to the exporter, when dropped (so that a request
/// cut short still closes its span). With export off it is empty and every method does
/// nothing.
#[must_use = "a span ends when dropped: keep it for the work it covers"]
pub struct OpenSpan(Option<Box<Recording>>);

struct Recording {
    export: Arc<Export>,
    data: SpanData,
}

impl OpenSpan {
    fn recording(
        export: &Arc<Export>,
        context: &TraceContext,
        parent_span_id: Option<&str>,
        parent_is_remote: bool,
        kind: SpanKind,
        name: impl Into<Cow<'static, str>>,
    ) -> OpenSpan {
        // Unsampled traces (flags without bit 0) are passed on, never recorded.
        let sampled = u8::from_str_radix(&context.flags, 16).is_ok_and(|flags| flags & 1 == 1);
        let (Ok(trace_id), Ok(span_id)) = (TraceId::from_hex(&context.trace_id), SpanId::from_hex(&context.span_id))
        else {
            return OpenSpan(None);
        };
        if !sampled {
            return OpenSpan(None);
        }
        let parent = parent_span_id
            .and_then(|id| SpanId::from_hex(id).ok())
            .unwrap_or(SpanId::INVALID);
        let now = SystemTime::now();
        OpenSpan(Some(Box::new(Recording {
            export: export.clone(),
            data: SpanData {
                span_context: SpanContext::new(trace_id, span_id, TraceFlags::SAMPLED, false, TraceState::default()),
                parent_span_id: parent,
                parent_span_is_remote: parent_is_remote && parent != SpanId::INVALID,
                span_kind: kind,
                name: name.into(),
                start_time: now,
                end_time: now,
                attributes: Vec::new(),
                dropped_attributes_count: 0,
                events: Default::default(),
                links: Default::default(),
                status: Status::Unset,
                instrumentation_scope: export.scope.clone(),
            },
        })))
    }

    /// An empty span: records nothing.
    pub fn none() -> OpenSpan {
        OpenSpan(None)
    }

    /// Whether this span is recorded (so that a caller can skip preparing attributes).
    pub fn is_recording(&self) -> bool {
        self.0.is_some()
    }

    /// Sets an attribute (a semantic-convention name such as `http.request.method`); set again,
    /// the new value replaces the old (a key stands once in a span).
    pub fn set(&mut self, key: &'static str, value: impl Into<Value>) {
        if let Some(recording) = &mut self.0 {
            let attributes = &mut recording.data.attributes;
            let value = value.into();
            match attributes.iter_mut().find(|attribute| attribute.key.as_str() == key) {
                Some(attribute) => attribute.value = value,
                None => attributes.push(KeyValue::new(key, value)),
            }
        }
    }

    /// Sets a text attribute, copying the text only when the span is recorded.
    pub fn set_str(&mut self, key: &'static str, value: &str) {
        if self.0.is_some() {
            self.set(key, value.to_string());
        }
    }

    /// Renames the span (once what it covers is known, e.g. the route).
    pub fn rename(&mut self, name: impl Into<Cow<'static, str>>) {
        if let Some(recording) = &mut self.0 {
            recording.data.name = name.into();
        }
    }

    /// Marks the span failed, with what went wrong.
    pub fn fail(&mut self, description: impl std::fmt::Display) {
        if let Some(recording) = &mut self.0 {
            recording.data.status = Status::error(description.to_string());
        }
    }

    /// Takes back a failure marked earlier (a retry that succeeded).
    pub fn clear_failure(&mut self) {
        if let Some(recording) = &mut self.0 {
            recording.data.status = Status::Unset;
        }
    }
}

impl Drop for OpenSpan {
    fn drop(&mut self) {
        let Some(mut recording) = self.0.take() else {
            return;
        };
        recording.data.end_time = SystemTime::now();
        let export = recording.export.clone();
        let data = Box::new(recording.data);
        if export.queue.try_send(Queued::Span(data)).is_err() {
            export.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// How often a failing endpoint is reported in the log at most.
const FAILURE_LOG_INTERVAL: Duration = Duration::from_secs(60);

async fn run_export(
    exporter: opentelemetry_otlp::SpanExporter,
    mut queue: mpsc::Receiver<Queued>,
    export: std::sync::Weak<Export>,
    batch_size: usize,
    delay: Duration,
    timeout: Duration,
    url: String,
) {
    let mut last_failure_logged: Option<std::time::Instant> = None;
    let mut batch: Vec<SpanData> = Vec::with_capacity(batch_size);
    let mut flushes: Vec<oneshot::Sender<()>> = Vec::new();
    'run: loop {
        // Wait for the first span (or a flush), then gather more for up to `delay`.
        match queue.recv().await {
            None => break 'run,
            Some(Queued::Span(span)) => batch.push(*span),
            Some(Queued::Flush(done)) => flushes.push(done),
        }
        let gather_until = tokio::time::Instant::now() + delay;
        while flushes.is_empty() && batch.len() < batch_size {
            tokio::select! {
                item = queue.recv() => match item {
                    Some(Queued::Span(span)) => batch.push(*span),
                    Some(Queued::Flush(done)) => flushes.push(done),
                    None => break,
                },
                _ = tokio::time::sleep_until(gather_until) => break,
            }
        }
        if !batch.is_empty() {
            let count = batch.len() as u64;
            let outcome = tokio::time::timeout(timeout, exporter.export(std::mem::take(&mut batch))).await;
            let Some(export) = export.upgrade() else {
                break 'run;
            };
            match outcome {
                Ok(Ok(())) => {
                    export.exported.fetch_add(count, Ordering::Relaxed);
                }
                failed => {
                    export.dropped.fetch_add(count, Ordering::Relaxed);
                    let reason = match failed {
                        Ok(Err(err)) => err.to_string(),
                        _ => format!("no answer within {timeout:?}"),
                    };
                    if last_failure_logged.is_none_or(|at| at.elapsed() >= FAILURE_LOG_INTERVAL) {
                        last_failure_logged = Some(std::time::Instant::now());
                        tracing::warn!(endpoint = %url, spans = count, error = %reason, "the OTLP endpoint did not take an export; its spans are dropped (mosaic_telemetry_dropped_total)");
                    }
                }
            }
            batch = Vec::with_capacity(batch_size);
        }
        for done in flushes.drain(..) {
            let _ = done.send(());
        }
    }
    let _ = exporter.shutdown();
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
                ]),
                "shop",
            )
            .unwrap()
            .unwrap();
        assert_eq!(config.url, "http://127.0.0.1:4318/v1/traces");
        assert_eq!(config.protocol, Protocol::HttpProtobuf);
        assert!(config.resource.contains(&("service.name".into(), "shop".into())));
        assert!(config.resource.contains(&("team".into(), "a b".into())));
        assert_eq!(config.max_queue_size, 2048);

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
            (grpc.url.as_str(), grpc.protocol),
            ("http://collector:4317", Protocol::Grpc)
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
            whole.url, "http://c:9/custom",
            "a signal's own endpoint is used as it is"
        );

        for off in [("OTEL_SDK_DISABLED", "true"), ("OTEL_TRACES_EXPORTER", "none")] {
            assert_eq!(
                settings.resolve(env_of(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318"), off]), "shop"),
                Ok(None)
            );
        }
    }

    #[test]
    fn mosaic_toml_wins_over_the_environment_and_bad_values_are_named() {
        let settings = TelemetrySettings {
            endpoint: Some("http://127.0.0.1:4318".into()),
            service_name: Some("mosaic-shop".into()),
            schedule_delay_ms: Some(50),
            ..TelemetrySettings::default()
        };
        let config = settings
            .resolve(
                env_of(&[
                    ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://elsewhere:4318"),
                    ("OTEL_SERVICE_NAME", "other"),
                ]),
                "shop",
            )
            .unwrap()
            .unwrap();
        assert_eq!(config.url, "http://127.0.0.1:4318/v1/traces");
        assert!(config.resource.contains(&("service.name".into(), "mosaic-shop".into())));
        assert_eq!(config.schedule_delay, Duration::from_millis(50));

        let err = |pairs: &[(&str, &str)]| settings.resolve(env_of(pairs), "shop").unwrap_err();
        assert!(err(&[("OTEL_EXPORTER_OTLP_PROTOCOL", "http/json")]).contains("use `http/protobuf` or `grpc`"));
        assert!(err(&[("OTEL_BSP_MAX_QUEUE_SIZE", "many")]).contains("OTEL_BSP_MAX_QUEUE_SIZE"));
        assert!(err(&[("OTEL_TRACES_EXPORTER", "zipkin")]).contains("OTLP only"));
        let https = TelemetrySettings {
            endpoint: Some("https://api.example.com".into()),
            ..TelemetrySettings::default()
        };
        assert!(https.resolve(env_of(&[]), "shop").unwrap_err().contains("Collector"));
    }

    #[test]
    fn an_attribute_set_again_is_replaced() {
        let (export, _queue) = test_export();
        let context = TraceContext::continue_or_start_from(None);
        let mut span = OpenSpan::recording(&export, &context, None, false, SpanKind::Consumer, "process x");
        span.set("mosaic.delivery.attempts", 1i64);
        span.set_str("messaging.destination.name", "x");
        span.set("mosaic.delivery.attempts", 2i64);
        let attributes = &span.0.as_ref().unwrap().data.attributes;
        assert_eq!(attributes.len(), 2, "{attributes:?}");
        assert_eq!(attributes[0].value, Value::I64(2));
    }

    #[test]
    fn a_full_queue_drops_and_counts_never_waits() {
        let (export, mut queue) = test_export();
        let context = TraceContext::continue_or_start_from(None);
        for _ in 0..3 {
            drop(OpenSpan::recording(
                &export,
                &context,
                None,
                false,
                SpanKind::Server,
                "GET /",
            ));
        }
        assert_eq!(
            export.dropped.load(Ordering::Relaxed),
            1,
            "the queue holds 2; the third is dropped"
        );
        assert!(matches!(queue.try_recv(), Ok(Queued::Span(_))));
    }

    /// An export whose queue holds 2 spans, and the queue's other end.
    fn test_export() -> (Arc<Export>, mpsc::Receiver<Queued>) {
        let (queue, receiver) = mpsc::channel(2);
        let export = Arc::new(Export {
            queue,
            dropped: AtomicU64::new(0),
            exported: AtomicU64::new(0),
            scope: InstrumentationScope::builder("mosaic").build(),
        });
        (export, receiver)
    }

    #[test]
    fn an_unsampled_or_parentless_span_is_not_recorded() {
        let spans = Spans::default();
        let context = TraceContext::continue_or_start_from(None);
        assert!(!spans.begin(&context, None, SpanKind::Server, "GET /").is_recording());
        let (span, own) = spans.child(Some(&context), SpanKind::Client, "GET");
        assert!(!span.is_recording());
        assert_eq!(
            own, None,
            "off, a call has no context of its own: it passes on its parent's"
        );
    }
}
