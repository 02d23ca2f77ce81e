//! What the host tells the outside about its work: Prometheus metrics (`metrics`, served at
//! `/metrics` on the admin listener) and W3C trace context (`trace`, passed from a request or a
//! message to the guest and its outbound calls) and the host's spans (`spans`, exported over
//! OTLP when an endpoint is configured).

mod metrics;
mod spans;
mod trace;

pub use metrics::{BreakerGauge, LiveInstance, MessageEvent, Metrics, OutboundOutcome};
pub use spans::{
    ExportConfig, GuestSpan, OpenSpan, Protocol as OtlpProtocol, SpanKind, SpanParent, Spans, TelemetrySettings,
};
pub use trace::{TraceContext, TRACEPARENT};
