//! What the host tells the outside about its work: Prometheus metrics (`metrics`, served at
//! `/metrics` on the admin listener), W3C trace context (`trace`, passed from a request or a
//! message to the guest and its outbound calls), and OTLP export when an endpoint is
//! configured (`otlp`): the host's spans (`spans`), the `/metrics` series (`metric_export`)
//! and its log with the guests' output (`logs`).

mod logs;
mod metric_export;
mod metrics;
mod otlp;
mod spans;
mod trace;

pub use logs::{arm as arm_log_export, disarm as disarm_log_export, LogExport, OtlpLogLayer};
pub use metric_export::MetricExport;
pub use metrics::{BreakerGauge, LiveInstance, MessageEvent, Metrics, OutboundOutcome};
pub use otlp::{
    Counters, ExportConfig, Protocol as OtlpProtocol, Signal, Target, TelemetryCounters, TelemetrySettings,
};
pub use spans::{GuestSpan, OpenSpan, SpanKind, SpanParent, Spans};
pub use trace::{TraceContext, TRACEPARENT};
