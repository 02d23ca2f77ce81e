//! OTLP export of the host's spans to a test receiver (tests/src/otlp.rs) over HTTP/protobuf
//! and gRPC: a request's server span continues the caller's `traceparent`, an in-process call
//! is a client span with the callee's server span under it; an endpoint that is down costs
//! requests nothing and its spans are dropped and counted. The `/metrics` series and the log
//! (the host's events, the guests' output) are exported too.

use std::time::Duration;

use mosaic::settings::{Settings, TelemetrySettings};
use mosaic_tests::otlp::{OtlpReceiver, ReceivedSpan, Transport, KIND_CLIENT, KIND_SERVER};
use mosaic_tests::{client, get, AppDir, MosaicProcess, TWO_COMPONENTS};

fn exporting_to(endpoint: String, protocol: &str) -> Settings {
    Settings {
        telemetry: TelemetrySettings {
            endpoint: Some(endpoint),
            protocol: Some(protocol.to_string()),
            schedule_delay_ms: Some(50),
            ..TelemetrySettings::default()
        },
        ..Settings::default()
    }
}

async fn get_traced(url: &str, traceparent: &str) -> u16 {
    let request = http::Request::get(url)
        .header("traceparent", traceparent)
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let response = client().request(request).await.expect("the host answers");
    let status = response.status().as_u16();
    let _ = http_body_util::BodyExt::collect(response.into_body()).await;
    status
}

fn one<'a>(spans: &'a [ReceivedSpan], what: &str, matches: impl Fn(&ReceivedSpan) -> bool) -> &'a ReceivedSpan {
    let found: Vec<&ReceivedSpan> = spans.iter().filter(|span| matches(span)).collect();
    assert_eq!(found.len(), 1, "one {what} in {spans:#?}");
    found[0]
}

async fn a_chained_request_is_one_trace(transport: Transport) {
    let receiver = OtlpReceiver::start(transport).await;
    let dir = AppDir::new(TWO_COMPONENTS);
    let host = dir.start(exporting_to(receiver.endpoint(), receiver.protocol())).await;
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let caller_span = "00f067aa0ba902b7";
    let url = format!(
        "http://{}/probe/outbound?url=http://plain.spin.internal/plain",
        host.http_addr()
    );
    assert_eq!(get_traced(&url, &format!("00-{trace_id}-{caller_span}-01")).await, 200);

    receiver
        .wait_for(Duration::from_secs(10), |spans| {
            spans.iter().filter(|span| span.trace_id == trace_id).count() >= 3
        })
        .await;
    let spans = receiver.trace(trace_id);
    let probe = one(&spans, "server span of probe", |span| {
        span.kind == KIND_SERVER && span.attribute("mosaic.component") == Some("probe")
    });
    assert_eq!(
        probe.parent_span_id, caller_span,
        "the request continues the caller's span"
    );
    assert_eq!(probe.name, "GET /probe/...");
    assert_eq!(probe.attribute("http.request.method"), Some("GET"));
    assert_eq!(probe.attribute("http.route"), Some("/probe/..."));
    assert_eq!(probe.attribute("url.path"), Some("/probe/outbound"));
    assert_eq!(probe.attribute("http.response.status_code"), Some("200"));
    assert!(probe
        .attribute("mosaic.component.version")
        .is_some_and(|v| !v.is_empty()));
    assert_eq!(probe.resource.get("service.name").map(String::as_str), Some("two"));

    let call = one(&spans, "client span of the chained call", |span| {
        span.kind == KIND_CLIENT
    });
    assert_eq!(call.parent_span_id, probe.span_id);
    assert_eq!(call.attribute("mosaic.peer.component"), Some("plain"));
    assert_eq!(call.attribute("url.full"), Some("http://plain.spin.internal/plain"));
    assert_eq!(call.attribute("http.response.status_code"), Some("200"));

    let plain = one(&spans, "server span of plain", |span| {
        span.kind == KIND_SERVER && span.attribute("mosaic.component") == Some("plain")
    });
    assert_eq!(
        plain.parent_span_id, call.span_id,
        "the callee's span is under the call's"
    );
    for span in &spans {
        assert!(span.end_unix_nanos >= span.start_unix_nanos, "{span:?}");
    }
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chained_request_is_one_trace_over_http_protobuf() {
    a_chained_request_is_one_trace(Transport::HttpProtobuf).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chained_request_is_one_trace_over_grpc() {
    a_chained_request_is_one_trace(Transport::Grpc).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsampled_trace_is_passed_on_and_not_exported() {
    let receiver = OtlpReceiver::start(Transport::HttpProtobuf).await;
    let dir = AppDir::new(TWO_COMPONENTS);
    let host = dir.start(exporting_to(receiver.endpoint(), "http/protobuf")).await;
    let unsampled = "0af7651916cd43dd8448eb211c80319c";
    let sampled = "0af7651916cd43dd8448eb211c80319d";
    let base = format!("http://{}", host.http_addr());
    assert_eq!(
        get_traced(
            &format!("{base}/probe/hello"),
            &format!("00-{unsampled}-b7ad6b7169203331-00")
        )
        .await,
        200
    );
    assert_eq!(
        get_traced(
            &format!("{base}/probe/hello"),
            &format!("00-{sampled}-b7ad6b7169203331-01")
        )
        .await,
        200
    );
    let spans = receiver
        .wait_for(Duration::from_secs(10), |spans| {
            spans.iter().any(|span| span.trace_id == sampled)
        })
        .await;
    assert!(spans.iter().any(|span| span.trace_id == sampled), "{spans:#?}");
    assert!(!spans.iter().any(|span| span.trace_id == unsampled), "{spans:#?}");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_is_down_drops_and_counts_and_requests_still_succeed() {
    // A port nothing listens on.
    let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", closed.local_addr().unwrap());
    drop(closed);
    let mut settings = exporting_to(endpoint, "http/protobuf");
    settings.telemetry.export_timeout_ms = Some(500);
    let dir = AppDir::new(TWO_COMPONENTS);
    let host = dir.start(settings).await;
    let http = client();
    for _ in 0..50 {
        let answer = get(&http, &format!("http://{}/probe/hello", host.http_addr())).await;
        assert_eq!(answer.status, 200, "{}", answer.body);
    }
    let dropped = || async {
        let metrics = get(&client(), &format!("http://{}/metrics", host.admin_addr()))
            .await
            .body;
        metrics
            .lines()
            .find(|line| line.starts_with("mosaic_telemetry_dropped_total{signal=\"traces\"}"))
            .and_then(|line| line.rsplit(' ').next())
            .and_then(|value| value.parse::<u64>().ok())
            .unwrap_or(0)
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while dropped().await < 50 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(
        dropped().await >= 50,
        "every span of the 50 requests is counted as dropped"
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_span_from_wasi_otel_nests_under_the_request_span() {
    let receiver = OtlpReceiver::start(Transport::HttpProtobuf).await;
    let dir = AppDir::new(
        "spin_manifest_version = 2\n[application]\nname = \"caps\"\n[[trigger.http]]\nroute = \"/caps/...\"\ncomponent = \"caps\"\n[component.caps]\nsource = \"{spin7-caps}\"\n",
    );
    let host = dir.start(exporting_to(receiver.endpoint(), "http/protobuf")).await;
    let trace_id = "7a3c1e0b5d9f4a2c8e6b0d4f2a1c3e5b";
    let url = format!("http://{}/caps/otel", host.http_addr());
    assert_eq!(
        get_traced(&url, &format!("00-{trace_id}-00f067aa0ba902b7-01")).await,
        200
    );
    receiver
        .wait_for(Duration::from_secs(10), |spans| {
            spans.iter().filter(|span| span.trace_id == trace_id).count() >= 2
        })
        .await;
    let spans = receiver.trace(trace_id);
    let request = one(&spans, "request span", |span| span.kind == KIND_SERVER);
    let guest = one(&spans, "guest span", |span| span.name == "guest-work");
    assert_eq!(guest.span_id, "00000000000000aa", "the guest's own id");
    assert_eq!(
        guest.parent_span_id, request.span_id,
        "under the host's span of the request"
    );
    assert_eq!(guest.attribute("mosaic.component"), Some("caps"));
    host.shutdown().await;
}

async fn the_metrics_series_are_exported(transport: Transport) {
    let receiver = OtlpReceiver::start(transport).await;
    let dir = AppDir::new(TWO_COMPONENTS);
    let mut settings = exporting_to(receiver.endpoint(), receiver.protocol());
    settings.telemetry.metric_export_interval_ms = Some(200);
    let host = dir.start(settings).await;
    let http = client();
    for _ in 0..3 {
        assert_eq!(
            get(&http, &format!("http://{}/probe/hello", host.http_addr()))
                .await
                .status,
            200
        );
    }
    let served = |receiver: &OtlpReceiver| {
        receiver.points().iter().any(|point| {
            point.metric == "mosaic_requests_total"
                && point.kind == "sum"
                && point.attributes.get("component").map(String::as_str) == Some("probe")
                && point.value >= 3.0
        })
    };
    assert!(
        receiver.wait_until(Duration::from_secs(10), served).await,
        "mosaic_requests_total of probe reaches 3 in {:#?}",
        receiver.points()
    );
    let points = receiver.points();
    let latency = points
        .iter()
        .rfind(|point| {
            point.metric == "mosaic_request_duration_seconds"
                && point.attributes.get("component").map(String::as_str) == Some("probe")
        })
        .expect("the latency histogram of probe");
    assert_eq!(latency.kind, "histogram");
    assert!(latency.count >= 3, "{latency:?}");
    assert_eq!(latency.bucket_counts.iter().sum::<u64>(), latency.count, "{latency:?}");
    assert!(
        points
            .iter()
            .any(|point| point.metric == "mosaic_instances_live" && point.kind == "gauge"),
        "gauges are exported"
    );
    assert!(points
        .iter()
        .all(|point| point.resource.get("service.name").map(String::as_str) == Some("two")));
    // Every series of /metrics is in the export.
    let text = get(&http, &format!("http://{}/metrics", host.admin_addr())).await.body;
    for line in text.lines().filter(|line| line.starts_with("# TYPE ")) {
        let name = line.split(' ').nth(2).unwrap();
        assert!(
            points.iter().any(|point| point.metric == name) || !text.lines().any(|l| l.starts_with(name)),
            "{name} has samples in /metrics, so it is exported"
        );
    }
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_series_are_exported_over_http_protobuf() {
    the_metrics_series_are_exported(Transport::HttpProtobuf).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_metrics_series_are_exported_over_grpc() {
    the_metrics_series_are_exported(Transport::Grpc).await;
}

/// Logs need the process's own subscriber (main installs the OTLP layer), so this runs the
/// `mosaic` binary.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_host_log_and_a_guest_stderr_line_are_exported_with_the_trace_id() {
    let receiver = OtlpReceiver::start(Transport::Grpc).await;
    let dir = AppDir::new(TWO_COMPONENTS);
    let endpoint = receiver.endpoint();
    let mut host = MosaicProcess::start_with_env(
        &dir.path,
        &["up"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_BLRP_SCHEDULE_DELAY", "50"),
            ("OTEL_BSP_SCHEDULE_DELAY", "50"),
        ],
    );
    let trace_id = "a1b2c3d4e5f60718293a4b5c6d7e8f90";
    let status = get_traced(
        &format!("{}/probe/trap", host.base),
        &format!("00-{trace_id}-00f067aa0ba902b7-01"),
    )
    .await;
    assert_eq!(status, 500, "a trap answers 500");
    let panic_line = |receiver: &OtlpReceiver| {
        receiver.logs().iter().any(|log| {
            log.trace_id == trace_id
                && log.attribute("stream") == Some("stderr")
                && log.body.contains("the probe traps on purpose")
        })
    };
    assert!(
        receiver.wait_until(Duration::from_secs(10), panic_line).await,
        "the guest's panic message on stderr is a log record of the request's trace: {:#?}",
        receiver.logs()
    );
    let logs = receiver.logs();
    let line = logs
        .iter()
        .find(|log| log.trace_id == trace_id && log.attribute("stream") == Some("stderr"))
        .unwrap();
    assert_eq!(line.attribute("component"), Some("probe"), "{line:?}");
    assert_eq!(line.attribute("mosaic.log.target"), Some("mosaic::guest"));
    assert_eq!(line.resource.get("service.name").map(String::as_str), Some("two"));
    let serving = logs
        .iter()
        .find(|log| log.body == "serving")
        .expect("the host's own start is logged");
    assert_eq!(serving.severity_text, "INFO");
    assert!(serving.trace_id.is_empty(), "the start belongs to no trace");
    assert!(
        logs.iter()
            .any(|log| log.trace_id == trace_id && log.attribute("mosaic.log.target") != Some("mosaic::guest")),
        "the host's own report of the trap is in the trace too: {logs:#?}"
    );

    host.terminate();
    host.wait(Duration::from_secs(20));
    assert!(
        receiver.logs().iter().any(|log| log.body == "stopped"),
        "the last record, at shutdown, is flushed before the host exits"
    );
}
