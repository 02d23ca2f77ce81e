//! Hostile guests: a trap, an endless loop and unbounded memory growth each end that one
//! request with a 5xx and a log line; the host and the other components keep serving.

use std::sync::Arc;
use std::time::Duration;

use mosaic::settings::Settings;
use mosaic_tests::{client, get, AppDir, LogCapture, TWO_COMPONENTS};

#[test]
fn trap_loop_and_memory_hog_fail_alone() {
    LogCapture::run(trap_loop_and_memory_hog_fail_alone_with_logs);
}

async fn trap_loop_and_memory_hog_fail_alone_with_logs(logs: LogCapture) {
    let dir = AppDir::new(TWO_COMPONENTS);
    let mut settings = Settings::default();
    settings.limits.request_timeout_ms = 1_000;
    settings.limits.instance_memory_mb = 64;
    let host = dir.start(settings).await;
    let base = format!("http://{}", host.http_addr());
    let client = client();

    let trap = get(&client, &format!("{base}/probe/trap")).await;
    assert_eq!(trap.status, 500, "{}", trap.body);
    assert_eq!(trap.json()["error"], "component trapped");
    // The client learns what happened, not the guest's internals: the backtrace is in the log.
    let detail = trap.json()["detail"].as_str().unwrap_or_default().to_string();
    assert!(detail.contains("unreachable"), "{detail}");
    assert!(!detail.contains("backtrace") && !detail.contains(".rs"), "{detail}");

    let started = std::time::Instant::now();
    let endless = get(&client, &format!("{base}/probe/loop")).await;
    assert_eq!(endless.status, 504, "{}", endless.body);
    assert!(endless.body.contains("deadline"), "{}", endless.body);
    assert!(started.elapsed() < Duration::from_secs(10));

    let hog = get(&client, &format!("{base}/probe/hog")).await;
    assert_eq!(hog.status, 500, "{}", hog.body);

    // While a loop burns its whole budget, the neighbours answer.
    let looping = {
        let client = client.clone();
        let url = format!("{base}/probe/loop");
        tokio::spawn(async move { get(&client, &url).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(get(&client, &format!("{base}/plain")).await.status, 200);
    assert_eq!(get(&client, &format!("{base}/probe/hello")).await.status, 200);
    assert_eq!(looping.await.unwrap().status, 504);

    let text = logs.text();
    assert!(text.contains("request failed") && text.contains("trapped"), "{text}");
    assert!(text.contains("exceeded the request deadline"), "{text}");
    let slot = host.app().slot("probe").unwrap();
    assert!(slot.stats.errors.load(std::sync::atomic::Ordering::Relaxed) >= 4);
    assert_eq!(
        slot.live.load().in_flight(),
        0,
        "failed requests leave nothing in flight"
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_response_is_cut() {
    let dir = AppDir::new(TWO_COMPONENTS);
    let mut settings = Settings::default();
    settings.limits.max_response_body_bytes = 64 * 1024;
    let host = dir.start(settings).await;
    let base = format!("http://{}", host.http_addr());
    let client = client();
    let small = get(&client, &format!("{base}/probe/big?bytes=1000")).await;
    assert_eq!(small.body.len(), 1000);
    let big = mosaic_tests::send(
        &client,
        "GET",
        &format!("{base}/probe/big?bytes=1000000"),
        bytes::Bytes::new(),
    )
    .await;
    // The probe streams its body without a declared length: the host cuts the connection at
    // the cap, so the client sees an incomplete message rather than a silently short body.
    let err = big.expect_err("the oversized body is cut off");
    // Depending on when the cut lands, hyper reports it while reading the head or the body.
    assert!(
        err.contains("IncompleteMessage") || err.contains("error reading a body from connection"),
        "{err}"
    );
    assert_eq!(get(&client, &format!("{base}/probe/hello")).await.status, 200);
    host.shutdown().await;
}

/// Tests of one binary run at once in one process: two of them, each with its own host that
/// logs a failure, must each see their own host's lines and none of the other's.
#[test]
fn two_tests_logging_at_once_each_see_only_their_own_lines() {
    let both_logged = Arc::new(tokio::sync::Barrier::new(2));
    let own_and_other = [
        ("4bf92f3577b34da6a3ce929d0e0e4736", "a3ce929d0e0e47364bf92f3577b34da6"),
        ("a3ce929d0e0e47364bf92f3577b34da6", "4bf92f3577b34da6a3ce929d0e0e4736"),
    ];
    let tests = own_and_other.map(|(own, other)| {
        let both_logged = both_logged.clone();
        std::thread::spawn(move || LogCapture::run(|logs| trap_traced(logs, own, other, both_logged)))
    });
    for test in tests {
        if let Err(panic) = test.join() {
            std::panic::resume_unwind(panic);
        }
    }
}

/// Starts a host, makes its probe trap in a request of trace `own`, waits until the other test
/// has done the same, then checks what this test's capture holds.
async fn trap_traced(logs: LogCapture, own: &str, other: &str, both_logged: Arc<tokio::sync::Barrier>) {
    let dir = AppDir::new(TWO_COMPONENTS);
    let host = dir.start(Settings::default()).await;
    let request = http::Request::builder()
        .uri(format!("http://{}/probe/trap", host.http_addr()))
        .header("traceparent", format!("00-{own}-00f067aa0ba902b7-01"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    let trap = client().request(request).await.expect("the host answers");
    assert_eq!(trap.status(), 500);
    tokio::time::timeout(Duration::from_secs(30), both_logged.wait())
        .await
        .expect("the other test's request failed within 30 s");

    let text = logs.text();
    assert!(
        text.contains(&format!("http_addr={}", host.http_addr())),
        "the host's start is captured: {text}"
    );
    assert!(
        text.contains("request failed") && text.contains(own),
        "the failed request, logged on a worker thread, is captured: {text}"
    );
    assert!(!text.contains(other), "the other test's lines leaked in: {text}");
    host.shutdown().await;
}
