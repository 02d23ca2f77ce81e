//! The host's log as OTLP log records: every event the host logs (its own, and each line a
//! guest writes to stdout or stderr, which `guest_log` makes an event) becomes a record with
//! the event's fields and those of the spans around it (component, version, route) as
//! attributes, and the trace id of the request or delivery it belongs to.
//!
//! [`OtlpLogLayer`] sits in the process's `tracing` subscriber (main installs it beside the
//! console output) and forwards nothing until a host starts exporting logs ([`arm`]); then
//! each record goes into a bounded queue, without waiting, and is dropped and counted when
//! the queue is full. Off, an event costs the layer one atomic load.

use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwapOption;
use opentelemetry_proto::tonic::collector::logs::v1::ExportLogsServiceRequest;
use opentelemetry_proto::tonic::common::v1::{any_value, AnyValue, InstrumentationScope, KeyValue};
use opentelemetry_proto::tonic::logs::v1::{LogRecord, ResourceLogs, ScopeLogs, SeverityNumber};
use tracing::field::{Field, Visit};
use tracing::span::{Attributes, Id, Record};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::Context;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::Layer;

use super::otlp::{proto_resource, spawn_batcher, Counters, ExportConfig, Push, Queue, Signal, Target};

/// The exporter the layer forwards to: one per process (the host that started last).
static LOG_EXPORT: ArcSwapOption<LogExport> = ArcSwapOption::const_empty();

/// Where log records go while a host exports them.
pub struct LogExport {
    queue: Queue<LogRecord>,
}

impl LogExport {
    /// Starts exporting log records to `target` (spawns the batching task on the current
    /// runtime). Records flow once the export is [`arm`]ed.
    pub fn start(target: &Target, config: &ExportConfig, counters: Arc<Counters>) -> Result<Arc<LogExport>, String> {
        let push = Push::new(target, &config.headers)?;
        let resource = proto_resource(config);
        let queue = spawn_batcher(
            Signal::Logs,
            &target.url,
            config.log_batching,
            config.export_timeout,
            counters,
            move |log_records: Vec<LogRecord>| {
                let push = push.clone();
                let request = ExportLogsServiceRequest {
                    resource_logs: vec![ResourceLogs {
                        resource: Some(resource.clone()),
                        scope_logs: vec![ScopeLogs {
                            scope: Some(InstrumentationScope {
                                name: "mosaic".into(),
                                version: env!("CARGO_PKG_VERSION").into(),
                                ..InstrumentationScope::default()
                            }),
                            log_records,
                            schema_url: String::new(),
                        }],
                        schema_url: String::new(),
                    }],
                };
                async move { push.logs(request).await }
            },
        );
        tracing::info!(endpoint = %target.url, protocol = ?target.protocol, "exporting logs over OTLP");
        Ok(Arc::new(LogExport { queue }))
    }

    /// Exports what is queued now, waiting at most `timeout`.
    pub async fn flush(&self, timeout: std::time::Duration) {
        self.queue.flush(timeout, Signal::Logs).await;
    }
}

/// Sends this process's log events to `export` from now on.
pub fn arm(export: &Arc<LogExport>) {
    LOG_EXPORT.store(Some(export.clone()));
}

/// Stops sending log events to `export` (if it is still the one armed).
pub fn disarm(export: &Arc<LogExport>) {
    let current = LOG_EXPORT.load();
    if current.as_ref().is_some_and(|armed| Arc::ptr_eq(armed, export)) {
        LOG_EXPORT.store(None);
    }
}

/// Targets whose events are never exported: the exporter's own reports (a failing endpoint
/// would otherwise feed itself) and the transport crates underneath it.
const UNEXPORTED_TARGETS: [&str; 5] = ["mosaic::telemetry", "h2", "hyper", "tonic", "tower"];

/// The `tracing` layer that turns events into OTLP log records while a host exports logs.
pub struct OtlpLogLayer;

/// The fields of a span, kept for the events inside it.
#[derive(Default)]
struct SpanFields(Vec<(&'static str, AnyValue)>);

impl<S> Layer<S> for OtlpLogLayer
where
    S: Subscriber + for<'lookup> LookupSpan<'lookup>,
{
    fn on_new_span(&self, attributes: &Attributes<'_>, id: &Id, context: Context<'_, S>) {
        // Paused, the events of this span are likely dropped unbuilt too: keep nothing.
        if LOG_EXPORT.load().as_ref().is_none_or(|export| export.queue.is_paused()) {
            return;
        }
        let mut fields = Fields::default();
        attributes.record(&mut fields);
        if let Some(span) = context.span(id) {
            span.extensions_mut().insert(SpanFields(fields.values));
        }
    }

    fn on_record(&self, id: &Id, values: &Record<'_>, context: Context<'_, S>) {
        if LOG_EXPORT.load().is_none() {
            return;
        }
        let Some(span) = context.span(id) else {
            return;
        };
        let mut fields = Fields::default();
        values.record(&mut fields);
        let mut extensions = span.extensions_mut();
        match extensions.get_mut::<SpanFields>() {
            Some(kept) => {
                for (name, value) in fields.values {
                    match kept.0.iter_mut().find(|(kept_name, _)| *kept_name == name) {
                        Some(slot) => slot.1 = value,
                        None => kept.0.push((name, value)),
                    }
                }
            }
            None => extensions.insert(SpanFields(fields.values)),
        }
    }

    fn on_event(&self, event: &Event<'_>, context: Context<'_, S>) {
        let armed = LOG_EXPORT.load();
        let Some(export) = armed.as_ref() else {
            return;
        };
        let metadata = event.metadata();
        let target = metadata.target();
        if UNEXPORTED_TARGETS.iter().any(|unexported| {
            target
                .strip_prefix(unexported)
                .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
        }) {
            return;
        }
        if !export.queue.admits_one() {
            return;
        }
        // The spans' fields first (outermost first), then the event's own: an inner value wins.
        let mut attributes: Vec<(&'static str, AnyValue)> = Vec::new();
        if let Some(scope) = context.event_scope(event) {
            for span in scope.from_root() {
                if let Some(fields) = span.extensions().get::<SpanFields>() {
                    for (name, value) in &fields.0 {
                        set(&mut attributes, name, value.clone());
                    }
                }
            }
        }
        let mut fields = Fields::default();
        event.record(&mut fields);
        let mut body = None;
        for (name, value) in fields.values {
            if name == "message" {
                body = Some(value);
            } else {
                set(&mut attributes, name, value);
            }
        }
        let mut trace_id = Vec::new();
        attributes.retain(|(name, value)| {
            if *name != "trace_id" {
                return true;
            }
            if let Some(any_value::Value::StringValue(hex)) = &value.value {
                trace_id = decode_trace_id(hex).unwrap_or_default();
            }
            false
        });
        let (severity, severity_text) = severity(*metadata.level());
        let now = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .map_or(0, |since| since.as_nanos() as u64);
        let mut record_attributes: Vec<KeyValue> = attributes
            .into_iter()
            .map(|(key, value)| KeyValue {
                key: key.to_string(),
                value: Some(value),
                ..KeyValue::default()
            })
            .collect();
        record_attributes.push(KeyValue {
            key: "mosaic.log.target".into(),
            value: Some(text(target.to_string())),
            ..KeyValue::default()
        });
        export.queue.offer(LogRecord {
            time_unix_nano: now,
            observed_time_unix_nano: now,
            severity_number: severity as i32,
            severity_text: severity_text.into(),
            body,
            attributes: record_attributes,
            trace_id,
            ..LogRecord::default()
        });
    }
}

fn set(attributes: &mut Vec<(&'static str, AnyValue)>, name: &'static str, value: AnyValue) {
    match attributes.iter_mut().find(|(kept, _)| *kept == name) {
        Some(slot) => slot.1 = value,
        None => attributes.push((name, value)),
    }
}

fn severity(level: Level) -> (SeverityNumber, &'static str) {
    match level {
        Level::TRACE => (SeverityNumber::Trace, "TRACE"),
        Level::DEBUG => (SeverityNumber::Debug, "DEBUG"),
        Level::INFO => (SeverityNumber::Info, "INFO"),
        Level::WARN => (SeverityNumber::Warn, "WARN"),
        Level::ERROR => (SeverityNumber::Error, "ERROR"),
    }
}

/// 32 hex digits as the 16 bytes OTLP carries; anything else is no trace id.
fn decode_trace_id(hex: &str) -> Option<Vec<u8>> {
    if hex.len() != 32 || hex.bytes().all(|digit| digit == b'0') {
        return None;
    }
    (0..16)
        .map(|i| u8::from_str_radix(hex.get(i * 2..i * 2 + 2)?, 16).ok())
        .collect()
}

fn text(value: String) -> AnyValue {
    AnyValue {
        value: Some(any_value::Value::StringValue(value)),
    }
}

/// Field values as OTLP values, in the order recorded.
#[derive(Default)]
struct Fields {
    values: Vec<(&'static str, AnyValue)>,
}

impl Fields {
    fn push(&mut self, field: &Field, value: any_value::Value) {
        self.values.push((field.name(), AnyValue { value: Some(value) }));
    }
}

impl Visit for Fields {
    fn record_str(&mut self, field: &Field, value: &str) {
        self.push(field, any_value::Value::StringValue(value.to_string()));
    }

    fn record_i64(&mut self, field: &Field, value: i64) {
        self.push(field, any_value::Value::IntValue(value));
    }

    fn record_u64(&mut self, field: &Field, value: u64) {
        self.push(
            field,
            any_value::Value::IntValue(i64::try_from(value).unwrap_or(i64::MAX)),
        );
    }

    fn record_f64(&mut self, field: &Field, value: f64) {
        self.push(field, any_value::Value::DoubleValue(value));
    }

    fn record_bool(&mut self, field: &Field, value: bool) {
        self.push(field, any_value::Value::BoolValue(value));
    }

    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        self.push(field, any_value::Value::StringValue(format!("{value:?}")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_trace_id_is_sixteen_bytes_of_hex_and_nothing_else() {
        assert_eq!(
            decode_trace_id("4bf92f3577b34da6a3ce929d0e0e4736").map(|bytes| bytes.len()),
            Some(16)
        );
        assert_eq!(decode_trace_id("00000000000000000000000000000000"), None);
        assert_eq!(decode_trace_id("4bf92f"), None);
        assert_eq!(decode_trace_id("zzf92f3577b34da6a3ce929d0e0e4736"), None);
    }
}
