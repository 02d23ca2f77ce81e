//! A test OTLP receiver: takes trace, metric and log exports over HTTP/protobuf (`POST
//! /v1/traces`, `/v1/metrics`, `/v1/logs`) or gRPC (the collector services' `Export`),
//! decodes the protobufs with the OpenTelemetry proto types and keeps every span, metric data
//! point and log record, for tests to look at.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body_util::{BodyExt, Full};
use hyper::body::Frame;
use hyper_util::rt::{TokioExecutor, TokioIo};
use opentelemetry_proto::tonic::collector::logs::v1::{ExportLogsServiceRequest, ExportLogsServiceResponse};
use opentelemetry_proto::tonic::collector::metrics::v1::{ExportMetricsServiceRequest, ExportMetricsServiceResponse};
use opentelemetry_proto::tonic::collector::trace::v1::{ExportTraceServiceRequest, ExportTraceServiceResponse};
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::metrics::v1::{metric, number_data_point};
use prost::Message;

/// How a receiver takes exports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    HttpProtobuf,
    Grpc,
}

/// One span as the receiver got it; ids are lowercase hex, as in `traceparent`.
#[derive(Debug, Clone)]
pub struct ReceivedSpan {
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    /// The OTLP span kind: 1 internal, 2 server, 3 client, 4 producer, 5 consumer.
    pub kind: i32,
    pub start_unix_nanos: u64,
    pub end_unix_nanos: u64,
    /// Attribute values as text (strings as they are, numbers and booleans printed).
    pub attributes: BTreeMap<String, String>,
    /// The OTLP status code: 0 unset, 1 ok, 2 error.
    pub status_code: i32,
    pub status_message: String,
    /// The attributes of the resource the span came with (`service.name`, ...).
    pub resource: BTreeMap<String, String>,
}

pub const KIND_SERVER: i32 = 2;
pub const KIND_CLIENT: i32 = 3;
pub const KIND_PRODUCER: i32 = 4;
pub const KIND_CONSUMER: i32 = 5;

impl ReceivedSpan {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

/// One data point of a metric as the receiver got it.
#[derive(Debug, Clone)]
pub struct ReceivedPoint {
    /// The metric's name, e.g. `mosaic_requests_total`.
    pub metric: String,
    /// `sum` (monotonic, cumulative), `gauge` or `histogram`.
    pub kind: &'static str,
    pub attributes: BTreeMap<String, String>,
    /// A sum's or gauge's value; a histogram's sum.
    pub value: f64,
    /// A histogram's count (0 for the others).
    pub count: u64,
    /// A histogram's per-bucket counts (empty for the others).
    pub bucket_counts: Vec<u64>,
    pub resource: BTreeMap<String, String>,
}

/// One log record as the receiver got it.
#[derive(Debug, Clone)]
pub struct ReceivedLog {
    pub body: String,
    pub severity_text: String,
    /// Lowercase hex; empty when the record belongs to no trace.
    pub trace_id: String,
    pub attributes: BTreeMap<String, String>,
    pub resource: BTreeMap<String, String>,
}

impl ReceivedLog {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }
}

#[derive(Default)]
struct Received {
    spans: Vec<ReceivedSpan>,
    points: Vec<ReceivedPoint>,
    logs: Vec<ReceivedLog>,
}

/// A running receiver on 127.0.0.1.
pub struct OtlpReceiver {
    pub addr: SocketAddr,
    pub transport: Transport,
    received: Arc<Mutex<Received>>,
    exports: Arc<AtomicU64>,
}

impl OtlpReceiver {
    pub async fn start(transport: Transport) -> OtlpReceiver {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the receiver");
        let addr = listener.local_addr().expect("receiver address");
        let received = Arc::new(Mutex::new(Received::default()));
        let exports = Arc::new(AtomicU64::new(0));
        let (shared, counted) = (received.clone(), exports.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (received, exports) = (shared.clone(), counted.clone());
                let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let (received, exports) = (received.clone(), exports.clone());
                    async move { Ok::<_, std::convert::Infallible>(answer(transport, request, &received, &exports).await) }
                });
                tokio::spawn(async move {
                    let io = TokioIo::new(stream);
                    let _ = match transport {
                        Transport::HttpProtobuf => {
                            hyper::server::conn::http1::Builder::new()
                                .serve_connection(io, service)
                                .await
                        }
                        Transport::Grpc => {
                            hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                                .serve_connection(io, service)
                                .await
                        }
                    };
                });
            }
        });
        OtlpReceiver {
            addr,
            transport,
            received,
            exports,
        }
    }

    /// The base endpoint to give the host (`OTEL_EXPORTER_OTLP_ENDPOINT`).
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `OTEL_EXPORTER_OTLP_PROTOCOL` for this receiver.
    pub fn protocol(&self) -> &'static str {
        match self.transport {
            Transport::HttpProtobuf => "http/protobuf",
            Transport::Grpc => "grpc",
        }
    }

    /// Exports taken so far.
    pub fn exports(&self) -> u64 {
        self.exports.load(Ordering::SeqCst)
    }

    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.received.lock().unwrap().spans.clone()
    }

    /// Every metric data point received, every export's in turn.
    pub fn points(&self) -> Vec<ReceivedPoint> {
        self.received.lock().unwrap().points.clone()
    }

    pub fn logs(&self) -> Vec<ReceivedLog> {
        self.received.lock().unwrap().logs.clone()
    }

    /// Waits (at most `timeout`) until `done` holds for what was received.
    pub async fn wait_until(&self, timeout: Duration, done: impl Fn(&OtlpReceiver) -> bool) -> bool {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if done(self) {
                return true;
            }
            if tokio::time::Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// The spans of one trace.
    pub fn trace(&self, trace_id: &str) -> Vec<ReceivedSpan> {
        self.spans()
            .into_iter()
            .filter(|span| span.trace_id == trace_id)
            .collect()
    }

    /// Waits (at most `timeout`) until `done` holds for the spans received; returns them.
    pub async fn wait_for(&self, timeout: Duration, done: impl Fn(&[ReceivedSpan]) -> bool) -> Vec<ReceivedSpan> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let spans = self.spans();
            if done(&spans) || tokio::time::Instant::now() >= deadline {
                return spans;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

type AnswerBody = http_body_util::combinators::BoxBody<Bytes, std::convert::Infallible>;

async fn answer(
    transport: Transport,
    request: hyper::Request<hyper::body::Incoming>,
    received: &Mutex<Received>,
    exports: &AtomicU64,
) -> hyper::Response<AnswerBody> {
    let path = request.uri().path().to_string();
    let body = match request.into_body().collect().await {
        Ok(body) => body.to_bytes(),
        Err(_) => return status(400),
    };
    let grpc_service = match transport {
        Transport::HttpProtobuf => None,
        Transport::Grpc => path
            .strip_prefix("/opentelemetry.proto.collector.")
            .and_then(|rest| rest.split_once('/'))
            .map(|(service, _)| service.to_string()),
    };
    let signal = match (transport, path.as_str(), grpc_service.as_deref()) {
        (Transport::HttpProtobuf, "/v1/traces", _) | (Transport::Grpc, _, Some("trace.v1.TraceService")) => "traces",
        (Transport::HttpProtobuf, "/v1/metrics", _) | (Transport::Grpc, _, Some("metrics.v1.MetricsService")) => {
            "metrics"
        }
        (Transport::HttpProtobuf, "/v1/logs", _) | (Transport::Grpc, _, Some("logs.v1.LogsService")) => "logs",
        _ => return status(404),
    };
    let message = match transport {
        Transport::HttpProtobuf => body,
        Transport::Grpc => {
            // A gRPC message: a compressed flag, a 4-byte length, the protobuf.
            let mut framed = body;
            if framed.len() < 5 || framed[0] != 0 {
                return status(400);
            }
            framed.advance(1);
            let length = framed.get_u32() as usize;
            if framed.len() < length {
                return status(400);
            }
            framed.slice(..length)
        }
    };
    let reply = match signal {
        "traces" => {
            let Ok(export) = ExportTraceServiceRequest::decode(message) else {
                return status(400);
            };
            keep(export, received);
            ExportTraceServiceResponse::default().encode_to_vec()
        }
        "metrics" => {
            let Ok(export) = ExportMetricsServiceRequest::decode(message) else {
                return status(400);
            };
            keep_metrics(export, received);
            ExportMetricsServiceResponse::default().encode_to_vec()
        }
        _ => {
            let Ok(export) = ExportLogsServiceRequest::decode(message) else {
                return status(400);
            };
            keep_logs(export, received);
            ExportLogsServiceResponse::default().encode_to_vec()
        }
    };
    exports.fetch_add(1, Ordering::SeqCst);
    match transport {
        Transport::HttpProtobuf => hyper::Response::builder()
            .header("content-type", "application/x-protobuf")
            .body(Full::new(Bytes::from(reply)).boxed())
            .unwrap(),
        Transport::Grpc => {
            let mut framed = vec![0u8];
            framed.extend_from_slice(&(reply.len() as u32).to_be_bytes());
            framed.extend_from_slice(&reply);
            let mut trailers = http::HeaderMap::new();
            trailers.insert("grpc-status", http::HeaderValue::from_static("0"));
            let frames = Frames([Frame::data(Bytes::from(framed)), Frame::trailers(trailers)].into());
            hyper::Response::builder()
                .header("content-type", "application/grpc")
                .body(frames.boxed())
                .unwrap()
        }
    }
}

/// A body of frames given up front (gRPC's message and then its trailers).
struct Frames(std::collections::VecDeque<Frame<Bytes>>);

impl hyper::body::Body for Frames {
    type Data = Bytes;
    type Error = std::convert::Infallible;
    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        std::task::Poll::Ready(self.0.pop_front().map(Ok))
    }
}

fn status(code: u16) -> hyper::Response<AnswerBody> {
    hyper::Response::builder()
        .status(code)
        .body(Full::new(Bytes::new()).boxed())
        .unwrap()
}

fn text_of(value: Option<&opentelemetry_proto::tonic::common::v1::AnyValue>) -> String {
    match value.and_then(|value| value.value.as_ref()) {
        Some(AnyValue::StringValue(text)) => text.clone(),
        Some(AnyValue::IntValue(number)) => number.to_string(),
        Some(AnyValue::DoubleValue(number)) => number.to_string(),
        Some(AnyValue::BoolValue(flag)) => flag.to_string(),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn attributes_of(attributes: &[opentelemetry_proto::tonic::common::v1::KeyValue]) -> BTreeMap<String, String> {
    attributes
        .iter()
        .map(|pair| (pair.key.clone(), text_of(pair.value.as_ref())))
        .collect()
}

fn keep(export: ExportTraceServiceRequest, received: &Mutex<Received>) {
    let mut received = received.lock().unwrap();
    for resource_spans in export.resource_spans {
        let resource = resource_spans
            .resource
            .as_ref()
            .map(|resource| attributes_of(&resource.attributes))
            .unwrap_or_default();
        for scope_spans in resource_spans.scope_spans {
            for span in scope_spans.spans {
                let status = span.status.clone().unwrap_or_default();
                received.spans.push(ReceivedSpan {
                    trace_id: hex(&span.trace_id),
                    span_id: hex(&span.span_id),
                    parent_span_id: hex(&span.parent_span_id),
                    name: span.name.clone(),
                    kind: span.kind,
                    start_unix_nanos: span.start_time_unix_nano,
                    end_unix_nanos: span.end_time_unix_nano,
                    attributes: attributes_of(&span.attributes),
                    status_code: status.code,
                    status_message: status.message,
                    resource: resource.clone(),
                });
            }
        }
    }
}

fn keep_metrics(export: ExportMetricsServiceRequest, received: &Mutex<Received>) {
    let mut received = received.lock().unwrap();
    for resource_metrics in export.resource_metrics {
        let resource = resource_metrics
            .resource
            .as_ref()
            .map(|resource| attributes_of(&resource.attributes))
            .unwrap_or_default();
        for scope_metrics in resource_metrics.scope_metrics {
            for metric in scope_metrics.metrics {
                let number = |value: Option<number_data_point::Value>| match value {
                    Some(number_data_point::Value::AsInt(value)) => value as f64,
                    Some(number_data_point::Value::AsDouble(value)) => value,
                    None => f64::NAN,
                };
                let point = |kind, attributes: &[_], value, count, bucket_counts| ReceivedPoint {
                    metric: metric.name.clone(),
                    kind,
                    attributes: attributes_of(attributes),
                    value,
                    count,
                    bucket_counts,
                    resource: resource.clone(),
                };
                match &metric.data {
                    Some(metric::Data::Sum(sum)) => {
                        for p in &sum.data_points {
                            received
                                .points
                                .push(point("sum", &p.attributes, number(p.value), 0, Vec::new()));
                        }
                    }
                    Some(metric::Data::Gauge(gauge)) => {
                        for p in &gauge.data_points {
                            received
                                .points
                                .push(point("gauge", &p.attributes, number(p.value), 0, Vec::new()));
                        }
                    }
                    Some(metric::Data::Histogram(histogram)) => {
                        for p in &histogram.data_points {
                            received.points.push(point(
                                "histogram",
                                &p.attributes,
                                p.sum.unwrap_or(0.0),
                                p.count,
                                p.bucket_counts.clone(),
                            ));
                        }
                    }
                    _ => {}
                }
            }
        }
    }
}

fn keep_logs(export: ExportLogsServiceRequest, received: &Mutex<Received>) {
    let mut received = received.lock().unwrap();
    for resource_logs in export.resource_logs {
        let resource = resource_logs
            .resource
            .as_ref()
            .map(|resource| attributes_of(&resource.attributes))
            .unwrap_or_default();
        for scope_logs in resource_logs.scope_logs {
            for record in scope_logs.log_records {
                received.logs.push(ReceivedLog {
                    body: text_of(record.body.as_ref()),
                    severity_text: record.severity_text.clone(),
                    trace_id: hex(&record.trace_id),
                    attributes: attributes_of(&record.attributes),
                    resource: resource.clone(),
                });
            }
        }
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}
