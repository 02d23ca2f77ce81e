//! Hostile guests: a trap, an endless loop and unbounded memory growth each end that one
//! request with a 5xx and a log line; the host and the other components keep serving.

use std::time::Duration;

use mosaic::settings::Settings;
use mosaic_tests::{client, get, AppDir, LogCapture, TWO_COMPONENTS};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trap_loop_and_memory_hog_fail_alone() {
    let logs = LogCapture::install();
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
