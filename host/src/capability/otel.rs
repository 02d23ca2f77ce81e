//! Guest telemetry: `wasi:otel@0.2.0-rc.2` (tracing, logs, metrics; the Python SDK imports it,
//! spin-sdk 7 offers it). The guest's spans and log records go into the host's `tracing`, so
//! they land where the host's own lines do (`--log-format json` included):
//!
//! - a log record is one event (target `mosaic::guest`, like a guest's stdout) at the level of
//!   its severity, naming the component, with its body, attributes and trace/span ids;
//! - a span's start is a `debug` event and its end an `info` event (target `mosaic::guest`)
//!   carrying the trace id, span id, parent span id, name, kind, status and duration;
//! - `outer-span-context` answers the trace of the request or delivery the instance serves
//!   (the span the guest sees as its parent in `traceparent`), so guest spans join that trace;
//! - when the host exports spans over OTLP (docs/telemetry.md), each ended span is exported
//!   too, with the guest's own ids, so it nests under the host's request span;
//! - metrics are accepted and dropped: the first export logs one `debug` line saying so.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use crate::capability::bindings::{
    otel_logs as logs, otel_metrics as metrics, otel_tracing as tracing_wit, otel_types as types,
};
use crate::observe::{GuestSpan, SpanKind, Spans, TraceContext};

/// The target of every event a guest's telemetry becomes (the same as its stdout's).
const TARGET: &str = "mosaic::guest";

/// The otel capability, app-wide: whether a guest's metrics export was logged yet, and where
/// guest spans are exported (when the host exports spans over OTLP).
#[derive(Debug, Default)]
pub struct Otel {
    metrics_dropped: AtomicBool,
    spans: Spans,
}

impl Otel {
    pub fn new(spans: Spans) -> Otel {
        Otel {
            metrics_dropped: AtomicBool::new(false),
            spans,
        }
    }
}

fn system_time(at: &tracing_wit::Datetime) -> std::time::SystemTime {
    std::time::UNIX_EPOCH + std::time::Duration::new(at.seconds, at.nanoseconds.min(999_999_999))
}

/// Nothing to check for readiness: the telemetry goes into the host's own log.
impl super::Capability for Otel {}

/// What one instance's telemetry carries: its component and the trace it serves.
pub struct OtelInstance {
    pub component: Arc<str>,
    /// The trace of the request or delivery the instance serves (`outer-span-context`).
    pub trace: Option<Arc<TraceContext>>,
    otel: Arc<Otel>,
}

impl super::GuestCapability for Otel {
    type Instance = OtelInstance;

    fn instance(self: &Arc<Self>, component: &super::grants::ComponentSpec) -> OtelInstance {
        OtelInstance {
            component: Arc::from(component.name.as_str()),
            trace: None,
            otel: self.clone(),
        }
    }

    fn add_to_linker<T: super::HasInstance<OtelInstance> + Send + 'static>(
        linker: &mut wasmtime::component::Linker<T>,
    ) -> anyhow::Result<()> {
        use wasmtime::component::HasSelf;
        // wasi:otel/imports@0.2.0-rc.2: types, tracing, metrics, logs
        types::add_to_linker::<T, HasSelf<OtelInstance>>(linker, otel_view::<T>)?;
        tracing_wit::add_to_linker::<T, HasSelf<OtelInstance>>(linker, otel_view::<T>)?;
        metrics::add_to_linker::<T, HasSelf<OtelInstance>>(linker, otel_view::<T>)?;
        logs::add_to_linker::<T, HasSelf<OtelInstance>>(linker, otel_view::<T>)?;
        Ok(())
    }
}

fn otel_view<T: super::HasInstance<OtelInstance>>(data: &mut T) -> &mut OtelInstance {
    data.instance_parts().state
}

/// The level of an OpenTelemetry severity number (1-4 trace, 5-8 debug, 9-12 info, 13-16 warn,
/// 17-24 error), else of its severity text; `info` when it has neither.
fn level_of(number: Option<u8>, text: Option<&str>) -> tracing::Level {
    match number {
        Some(1..=4) => tracing::Level::TRACE,
        Some(5..=8) => tracing::Level::DEBUG,
        Some(9..=12) => tracing::Level::INFO,
        Some(13..=16) => tracing::Level::WARN,
        Some(17..) => tracing::Level::ERROR,
        _ => match text.map(str::to_ascii_lowercase).as_deref() {
            Some(text) if text.starts_with("trace") => tracing::Level::TRACE,
            Some(text) if text.starts_with("debug") => tracing::Level::DEBUG,
            Some(text) if text.starts_with("warn") => tracing::Level::WARN,
            Some(text) if text.starts_with("error") || text.starts_with("fatal") => tracing::Level::ERROR,
            _ => tracing::Level::INFO,
        },
    }
}

/// An attribute value as text: the JSON the guest sends, unquoted when it is a JSON string.
fn value_text(value: &str) -> String {
    serde_json::from_str::<String>(value).unwrap_or_else(|_| value.to_string())
}

/// Attributes as `key=value` pairs separated by spaces.
fn attributes_text(attributes: &[types::KeyValue]) -> String {
    let mut out = String::new();
    for attribute in attributes {
        if !out.is_empty() {
            out.push(' ');
        }
        let _ = write!(out, "{}={}", attribute.key, value_text(&attribute.value));
    }
    out
}

/// One event at a level known only at run time (`tracing`'s macros take a constant level).
macro_rules! event_at {
    ($level:expr, $($rest:tt)*) => {
        match $level {
            tracing::Level::TRACE => tracing::event!(target: TARGET, tracing::Level::TRACE, $($rest)*),
            tracing::Level::DEBUG => tracing::event!(target: TARGET, tracing::Level::DEBUG, $($rest)*),
            tracing::Level::INFO => tracing::event!(target: TARGET, tracing::Level::INFO, $($rest)*),
            tracing::Level::WARN => tracing::event!(target: TARGET, tracing::Level::WARN, $($rest)*),
            tracing::Level::ERROR => tracing::event!(target: TARGET, tracing::Level::ERROR, $($rest)*),
        }
    };
}

fn millis_between(start: &tracing_wit::Datetime, end: &tracing_wit::Datetime) -> f64 {
    let nanos = |at: &tracing_wit::Datetime| i128::from(at.seconds) * 1_000_000_000 + i128::from(at.nanoseconds);
    (nanos(end) - nanos(start)) as f64 / 1_000_000.0
}

fn kind_name(kind: tracing_wit::SpanKind) -> &'static str {
    match kind {
        tracing_wit::SpanKind::Client => "client",
        tracing_wit::SpanKind::Server => "server",
        tracing_wit::SpanKind::Producer => "producer",
        tracing_wit::SpanKind::Consumer => "consumer",
        tracing_wit::SpanKind::Internal => "internal",
    }
}

impl types::Host for OtelInstance {}

impl tracing_wit::Host for OtelInstance {
    async fn on_start(&mut self, context: tracing_wit::SpanContext) {
        tracing::debug!(
            target: TARGET,
            component = %self.component,
            trace_id = %context.trace_id,
            span_id = %context.span_id,
            "guest span started"
        );
    }

    async fn on_end(&mut self, span: tracing_wit::SpanData) {
        let status = match &span.status {
            tracing_wit::Status::Unset => "unset".to_string(),
            tracing_wit::Status::Ok => "ok".to_string(),
            tracing_wit::Status::Error(message) => format!("error: {message}"),
        };
        tracing::info!(
            target: TARGET,
            component = %self.component,
            trace_id = %span.span_context.trace_id,
            span_id = %span.span_context.span_id,
            parent_span_id = %span.parent_span_id,
            span_kind = %kind_name(span.span_kind),
            status = %status,
            duration_ms = millis_between(&span.start_time, &span.end_time),
            attributes = %attributes_text(&span.attributes),
            events = span.events.len(),
            scope = %span.instrumentation_scope.name,
            "guest span {}",
            span.name
        );
        if self.otel.spans.is_on() {
            self.otel.spans.record_guest(GuestSpan {
                sampled: span.span_context.trace_flags.contains(tracing_wit::TraceFlags::SAMPLED),
                trace_id: span.span_context.trace_id,
                span_id: span.span_context.span_id,
                parent_span_id: span.parent_span_id,
                name: span.name,
                kind: match span.span_kind {
                    tracing_wit::SpanKind::Client => SpanKind::Client,
                    tracing_wit::SpanKind::Server => SpanKind::Server,
                    tracing_wit::SpanKind::Producer => SpanKind::Producer,
                    tracing_wit::SpanKind::Consumer => SpanKind::Consumer,
                    tracing_wit::SpanKind::Internal => SpanKind::Internal,
                },
                start: system_time(&span.start_time),
                end: system_time(&span.end_time),
                attributes: span
                    .attributes
                    .iter()
                    .map(|attribute| (attribute.key.clone(), value_text(&attribute.value)))
                    .collect(),
                error: match &span.status {
                    tracing_wit::Status::Error(message) => Some(message.clone()),
                    _ => None,
                },
                scope: span.instrumentation_scope.name.clone(),
                component: self.component.to_string(),
            });
        }
    }

    async fn outer_span_context(&mut self) -> tracing_wit::SpanContext {
        outer_span_context(self.trace.as_deref())
    }
}

/// The span context a guest continues: the host's span of the request it serves; with none,
/// the invalid (all-zero) context, so that the guest starts a trace of its own.
fn outer_span_context(trace: Option<&TraceContext>) -> tracing_wit::SpanContext {
    let (trace_id, span_id, sampled) = match trace {
        Some(trace) => (
            trace.trace_id.clone(),
            trace.span_id.clone(),
            u8::from_str_radix(&trace.flags, 16).is_ok_and(|flags| flags & 1 == 1),
        ),
        None => ("0".repeat(32), "0".repeat(16), false),
    };
    tracing_wit::SpanContext {
        trace_id,
        span_id,
        trace_flags: if sampled {
            tracing_wit::TraceFlags::SAMPLED
        } else {
            tracing_wit::TraceFlags::empty()
        },
        is_remote: trace.is_some(),
        trace_state: Vec::new(),
    }
}

impl logs::Host for OtelInstance {
    async fn on_emit(&mut self, record: logs::LogRecord) {
        let level = level_of(record.severity_number, record.severity_text.as_deref());
        let body = record.body.as_deref().map(value_text).unwrap_or_default();
        let attributes = record.attributes.as_deref().map(attributes_text).unwrap_or_default();
        event_at!(
            level,
            component = %self.component,
            trace_id = %record.trace_id.as_deref().unwrap_or(""),
            span_id = %record.span_id.as_deref().unwrap_or(""),
            event_name = %record.event_name.as_deref().unwrap_or(""),
            attributes = %attributes,
            "{body}"
        );
    }
}

impl metrics::Host for OtelInstance {
    async fn export(&mut self, _metrics: metrics::ResourceMetrics) -> Result<(), metrics::Error> {
        if !self.otel.metrics_dropped.swap(true, Ordering::Relaxed) {
            tracing::debug!(
                component = %self.component,
                "guest metrics (wasi:otel/metrics) are accepted and dropped: Mosaic does not export them"
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn severity_numbers_and_texts_map_onto_levels() {
        assert_eq!(level_of(Some(1), None), tracing::Level::TRACE);
        assert_eq!(
            level_of(Some(8), Some("error")),
            tracing::Level::DEBUG,
            "the number wins"
        );
        assert_eq!(level_of(Some(9), None), tracing::Level::INFO);
        assert_eq!(level_of(Some(13), None), tracing::Level::WARN);
        assert_eq!(level_of(Some(24), None), tracing::Level::ERROR);
        assert_eq!(level_of(None, Some("WARNING")), tracing::Level::WARN);
        assert_eq!(level_of(None, Some("Fatal")), tracing::Level::ERROR);
        assert_eq!(level_of(Some(0), None), tracing::Level::INFO);
        assert_eq!(level_of(None, None), tracing::Level::INFO);
    }

    #[test]
    fn attribute_values_are_unquoted_json_strings() {
        let attributes = vec![
            types::KeyValue {
                key: "user".into(),
                value: "\"ada\"".into(),
            },
            types::KeyValue {
                key: "count".into(),
                value: "3".into(),
            },
        ];
        assert_eq!(attributes_text(&attributes), "user=ada count=3");
    }

    #[test]
    fn the_outer_context_is_the_served_trace_or_invalid() {
        let trace = TraceContext {
            trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
            span_id: "00f067aa0ba902b7".into(),
            flags: "01".into(),
        };
        let outer = outer_span_context(Some(&trace));
        assert_eq!(outer.trace_id, trace.trace_id);
        assert_eq!(outer.span_id, trace.span_id);
        assert_eq!(outer.trace_flags, tracing_wit::TraceFlags::SAMPLED);
        assert!(outer.is_remote);

        let unsampled = outer_span_context(Some(&TraceContext {
            flags: "00".into(),
            ..trace
        }));
        assert_eq!(unsampled.trace_flags, tracing_wit::TraceFlags::empty());

        let none = outer_span_context(None);
        assert_eq!(none.trace_id, "0".repeat(32));
        assert_eq!(none.span_id, "0".repeat(16));
        assert!(!none.is_remote);
    }

    #[test]
    fn a_span_duration_counts_nanoseconds() {
        let at = |seconds, nanoseconds| tracing_wit::Datetime { seconds, nanoseconds };
        assert_eq!(millis_between(&at(10, 500_000_000), &at(11, 0)), 500.0);
        assert_eq!(millis_between(&at(10, 0), &at(10, 1_500_000)), 1.5);
    }
}
