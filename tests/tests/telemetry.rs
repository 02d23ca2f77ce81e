//! OTLP export of the host's spans to a test receiver (tests/src/otlp.rs) over HTTP/protobuf
//! and gRPC: a request's server span continues the caller's `traceparent`, an in-process call
//! is a client span with the callee's server span under it; an endpoint that is down costs
//! requests nothing and its spans are dropped and counted.

use std::time::Duration;

use mosaic::settings::{Settings, TelemetrySettings};
use mosaic_tests::otlp::{OtlpReceiver, ReceivedSpan, Transport, KIND_CLIENT, KIND_SERVER};
use mosaic_tests::{client, get, AppDir, TWO_COMPONENTS};

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
