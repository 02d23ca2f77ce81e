//! What the host tells the outside about its work: Prometheus metrics (`metrics`, served at
//! `/metrics` on the admin listener) and W3C trace context (`trace`, passed from a request or a
//! message to the guest and its outbound calls).

mod metrics;
mod trace;

pub use metrics::{BreakerGauge, LiveInstance, MessageEvent, Metrics, OutboundOutcome};
pub use trace::{TraceContext, TRACEPARENT};
