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
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use opentelemetry::trace::{SpanContext, SpanId, Status, TraceFlags, TraceId, TraceState};
use opentelemetry::{InstrumentationScope, KeyValue, Value};
use opentelemetry_otlp::{WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::trace::{SpanData, SpanExporter as _};

pub use opentelemetry::trace::SpanKind;

use super::otlp::{header_map, http_headers, spawn_batcher, Counters, ExportConfig, Protocol, Queue, Signal, Target};
use super::TraceContext;

struct Export {
    queue: Queue<Box<SpanData>>,
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
    /// Starts exporting spans to `target`: builds the OTLP exporter and spawns the task that
    /// batches spans into it (on the current tokio runtime); `counters` count what it exports
    /// and drops.
    pub fn export(target: &Target, config: &ExportConfig, counters: Arc<Counters>) -> Result<Spans, String> {
        let timeout = config.export_timeout;
        let mut exporter = match target.protocol {
            Protocol::HttpProtobuf => opentelemetry_otlp::SpanExporter::builder()
                .with_http()
                .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
                .with_endpoint(target.url.clone())
                .with_timeout(timeout)
                .with_headers(header_map(&config.headers))
                .build(),
            Protocol::Grpc => {
                use opentelemetry_otlp::WithTonicConfig;
                let metadata = opentelemetry_otlp::tonic_types::metadata::MetadataMap::from_headers(http_headers(
                    &config.headers,
                )?);
                opentelemetry_otlp::SpanExporter::builder()
                    .with_tonic()
                    .with_endpoint(target.url.clone())
                    .with_timeout(timeout)
                    .with_metadata(metadata)
                    .build()
            }
        }
        .map_err(|err| format!("cannot build the OTLP span exporter for {}: {err}", target.url))?;
        let resource = opentelemetry_sdk::Resource::builder_empty()
            .with_attributes(
                config
                    .resource
                    .iter()
                    .map(|(key, value)| KeyValue::new(key.clone(), value.clone())),
            )
            .build();
        exporter.set_resource(&resource);
        let exporter = Arc::new(exporter);
        let queue = spawn_batcher(
            Signal::Traces,
            &target.url,
            config.span_batching,
            timeout,
            counters,
            move |spans: Vec<Box<SpanData>>| {
                let exporter = exporter.clone();
                async move {
                    exporter
                        .export(spans.into_iter().map(|span| *span).collect())
                        .await
                        .map_err(|err| err.to_string())
                }
            },
        );
        tracing::info!(endpoint = %target.url, protocol = ?target.protocol, "exporting spans over OTLP");
        Ok(Spans(Some(Arc::new(Export {
            queue,
            scope: InstrumentationScope::builder("mosaic")
                .with_version(env!("CARGO_PKG_VERSION"))
                .build(),
        }))))
    }

    pub fn is_on(&self) -> bool {
        self.0.is_some()
    }

    /// The export, when a span is to be built now: not when export is off, nor while it is
    /// paused (the span not built is then counted as dropped).
    fn admitting(&self) -> Option<&Arc<Export>> {
        self.0.as_ref().filter(|export| export.queue.admits_one())
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
        let Some(export) = self.admitting() else {
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
        let Some(parent) = parent else {
            return (OpenSpan(None), None);
        };
        let Some(export) = self.admitting() else {
            return (OpenSpan(None), None);
        };
        let context = parent.child();
        let span = OpenSpan::recording(export, &context, Some(&parent.span_id), false, kind, name);
        (span, Some(context))
    }

    /// Exports what is queued now; waits at most `timeout` (at shutdown, so that the last
    /// requests' spans are not lost).
    pub async fn flush(&self, timeout: Duration) {
        if let Some(export) = &self.0 {
            export.queue.flush(timeout, Signal::Traces).await;
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
        export.queue.offer(Box::new(data));
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

    /// Ends the span with the outcome of the work it covers: failed, with `describe`'s text
    /// of the error, on `Err`. Returns the outcome.
    pub fn end_with<T, E>(mut self, outcome: Result<T, E>, describe: impl FnOnce(&E) -> String) -> Result<T, E> {
        if let Err(err) = &outcome {
            if self.is_recording() {
                self.fail(describe(err));
            }
        }
        outcome
    }

    /// Describes the consumer span of a delivery of a `body_size`-byte message on `topic` by
    /// `system` (the broker's kind, or `mqtt`) to `component`: its name and the messaging
    /// semantic-convention attributes.
    pub fn describe_delivery(&mut self, system: &'static str, topic: &str, body_size: usize, component: &str) {
        if !self.is_recording() {
            return;
        }
        self.rename(format!("process {topic}"));
        self.set("messaging.system", system);
        self.set_str("messaging.destination.name", topic);
        self.set("messaging.operation.type", "process");
        self.set("messaging.operation.name", "process");
        self.set("messaging.message.body.size", body_size as i64);
        self.set_str("mosaic.component", component);
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
        let Recording { export, data } = *recording;
        export.queue.offer(Box::new(data));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn an_attribute_set_again_is_replaced_and_an_ended_span_is_exported() {
        let counters = Arc::new(Counters::default());
        let (exported, mut received) = tokio::sync::mpsc::unbounded_channel();
        let batching = super::super::otlp::Batching {
            max_queue_size: 8,
            max_export_batch_size: 8,
            schedule_delay: Duration::from_millis(1),
        };
        let queue = spawn_batcher(
            Signal::Traces,
            "http://127.0.0.1:9",
            batching,
            Duration::from_secs(5),
            counters.clone(),
            move |spans: Vec<Box<SpanData>>| {
                let _ = exported.send(spans);
                async { Ok(()) }
            },
        );
        let export = Arc::new(Export {
            queue,
            scope: InstrumentationScope::builder("mosaic").build(),
        });
        let context = TraceContext::continue_or_start_from(None);
        let mut span = OpenSpan::recording(&export, &context, None, false, SpanKind::Consumer, "process x");
        span.set("mosaic.delivery.attempts", 1i64);
        span.set_str("messaging.destination.name", "x");
        span.set("mosaic.delivery.attempts", 2i64);
        drop(span);
        let spans = received.recv().await.expect("the ended span is exported");
        let attributes = &spans[0].attributes;
        assert_eq!(attributes.len(), 2, "{attributes:?}");
        assert_eq!(attributes[0].value, Value::I64(2));
        export.queue.flush(Duration::from_secs(5), Signal::Traces).await;
        assert_eq!((counters.exported(), counters.dropped()), (1, 0));
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
