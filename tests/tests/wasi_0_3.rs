//! WASI 0.3 components (spin-sdk 7: `wasi:http/handler@0.3.0`, component-model async) served
//! beside WASI 0.2 ones: the same routes, headers, limits and failures; instance reuse (on by
//! default for WASI 0.3, opt-in for WASI 0.2); a swap under load with reuse on.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mosaic::app::Wasi;
use mosaic::settings::{InstanceReuse, Settings};
use mosaic_tests::{admin, client, deploy_request, eventually, get, send, AppDir, LogCapture};

/// spin-sdk 7's component at `/new/...`, spin-sdk 5's probe at `/probe/...`.
const MIXED: &str = r#"
spin_manifest_version = 2
[application]
name = "mixed"
[[trigger.http]]
route = "/new/..."
component = "new"
[[trigger.http]]
route = "/probe/..."
component = "probe"
[component.new]
source = "{spin7}"
[component.probe]
source = "{probe}"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wasi_0_3_component_is_served_like_a_wasi_0_2_one() {
    let dir = AppDir::new(MIXED);
    let host = dir.start(Settings::default()).await;
    let base = format!("http://{}", host.http_addr());
    let client = client();

    let hello = get(&client, &format!("{base}/new/hello")).await;
    assert_eq!((hello.status, hello.body.as_str()), (200, "hello from spin-sdk 7"));
    let old = get(&client, &format!("{base}/probe/hello")).await;
    assert_eq!(old.status, 200, "{}", old.body);

    let echo = send(&client, "POST", &format!("{base}/new/echo"), "a body to echo")
        .await
        .unwrap();
    assert_eq!((echo.status, echo.body.as_str()), (200, "a body to echo"));

    let headers = get(&client, &format!("{base}/new/headers")).await;
    for expected in [
        "spin-component-route=/new",
        "spin-path-info=/headers",
        "spin-matched-route=/new/...",
        &format!("spin-full-url={base}/new/headers"),
    ] {
        assert!(
            headers.body.lines().any(|line| line == expected),
            "{expected} in {}",
            headers.body
        );
    }
    assert!(headers.body.contains("traceparent=00-"), "{}", headers.body);

    let missing = get(&client, &format!("{base}/new/nothing-here")).await;
    assert_eq!(missing.status, 404);

    let new = host.app().slot("new").unwrap().live.load_full();
    assert_eq!(new.world.wasi, Wasi::V0_3);
    assert_eq!(new.world.entry_points, ["wasi:http/handler@0.3.0"]);
    assert_eq!(new.world.to_string(), "WASI 0.3 (wasi:http/handler@0.3.0)");
    let probe = host.app().slot("probe").unwrap().live.load_full();
    assert_eq!(probe.world.wasi, Wasi::V0_2);
    assert!(probe.world.entry_points[0].starts_with("wasi:http/incoming-handler@0.2"));

    // `mosaic status` (the admin API) tells them apart, with the reused instances.
    let status = admin(&host, "GET", "/v1/status", vec![]).await.json();
    let of = |name: &str| {
        status
            .as_array()
            .and_then(|components| components.iter().find(|c| c["name"] == name))
            .cloned()
            .unwrap_or_else(|| panic!("{name} in {status}"))
    };
    assert_eq!(of("new")["world"], "WASI 0.3 (wasi:http/handler@0.3.0)");
    assert!(of("new")["instances"].as_u64().unwrap() >= 1, "{status}");
    assert!(of("probe")["world"]
        .as_str()
        .unwrap()
        .starts_with("WASI 0.2 (wasi:http/incoming-handler@0.2"));
    assert_eq!(of("probe")["instances"], 0, "WASI 0.2: a fresh instance per request");
    host.shutdown().await;
}

/// Both components may call each other in-process, and call out under the allow-list.
const CHAINED: &str = r#"
spin_manifest_version = 2
[application]
name = "chained"
[[trigger.http]]
route = "/new/..."
component = "new"
[[trigger.http]]
route = "/probe/..."
component = "probe"
[component.new]
source = "{spin7}"
allowed_outbound_hosts = ["http://*.spin.internal", "http://self"]
[component.probe]
source = "{probe}"
allowed_outbound_hosts = ["http://*.spin.internal"]
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasi_0_3_and_wasi_0_2_components_chain_both_ways_under_the_allow_list() {
    let dir = AppDir::new(CHAINED);
    let host = dir.start(Settings::default()).await;
    let base = format!("http://{}", host.http_addr());
    let client = client();
    // WASI 0.3 → WASI 0.2, in-process.
    let p3_to_p2 = get(
        &client,
        &format!("{base}/new/call?url=http://probe.spin.internal/hello"),
    )
    .await;
    assert_eq!(p3_to_p2.status, 200, "{}", p3_to_p2.body);
    assert!(p3_to_p2.body.starts_with("200 "), "{}", p3_to_p2.body);
    // WASI 0.2 → WASI 0.3, in-process.
    let p2_to_p3 = get(
        &client,
        &format!("{base}/probe/outbound?url=http://new.spin.internal/hello"),
    )
    .await;
    assert_eq!(p2_to_p3.body, "200 hello from spin-sdk 7");
    // WASI 0.3 → itself, through `self`.
    let to_self = get(&client, &format!("{base}/new/call?url=http://self/new/version")).await;
    assert_eq!(to_self.body, "200 v1");
    // A host the component is not granted is refused by the same policy as WASI 0.2's.
    let denied = get(&client, &format!("{base}/new/call?url=http://127.0.0.1:9/")).await;
    assert_eq!(denied.status, 502, "{}", denied.body);
    assert!(
        denied.body.contains("denied") || denied.body.contains("Denied"),
        "{}",
        denied.body
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wasi_0_3_instances_are_reused_but_never_after_a_trap() {
    let dir = AppDir::new(MIXED);
    let host = dir.start(Settings::default()).await;
    let base = format!("http://{}", host.http_addr());
    let client = client();
    let count = || {
        let client = client.clone();
        let url = format!("{base}/new/count");
        async move { get(&client, &url).await.body }
    };
    // One request at a time: the one instance serves them all, in turn.
    assert_eq!(count().await, "1");
    assert_eq!(count().await, "2");
    assert_eq!(count().await, "3");
    assert_eq!(get(&client, &format!("{base}/new/trap")).await.status, 500);
    assert_eq!(count().await, "1", "the instance that trapped was not reused");
    assert_eq!(count().await, "2");
    // WASI 0.2 keeps a fresh instance per request by default.
    for _ in 0..3 {
        assert_eq!(get(&client, &format!("{base}/probe/count")).await.body, "1");
    }
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reuse_follows_the_settings() {
    let dir = AppDir::new(MIXED);
    let mut settings = Settings::default();
    // At most two requests per instance for every WASI 0.3 component ...
    settings.limits.max_instance_reuse_count = 2;
    // ... and reuse asked for a WASI 0.2 one.
    settings.instance_reuse.insert(
        "probe".into(),
        InstanceReuse {
            max_instance_reuse_count: Some(3),
            ..InstanceReuse::default()
        },
    );
    let host = dir.start(settings).await;
    let base = format!("http://{}", host.http_addr());
    let client = client();
    let mut new = Vec::new();
    let mut old = Vec::new();
    for _ in 0..6 {
        new.push(get(&client, &format!("{base}/new/count")).await.body);
        old.push(get(&client, &format!("{base}/probe/count")).await.body);
        // An instance takes the next request once it has wound up the last one, a moment
        // after the client has the whole answer; on a loaded machine a request that comes
        // sooner gets an instance of its own, which is right but not what this test counts.
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Each count is how many requests that instance has served: never past its limit, and
    // reaching it (the instances are reused).
    let counts = |bodies: &[String]| -> Vec<u32> { bodies.iter().map(|body| body.parse().unwrap()).collect() };
    let (new, old) = (counts(&new), counts(&old));
    assert!(new.iter().all(|count| (1..=2).contains(count)), "{new:?}");
    assert!(new.contains(&2), "a WASI 0.3 instance serves twice: {new:?}");
    assert!(old.iter().all(|count| (1..=3).contains(count)), "{old:?}");
    assert!(
        old.contains(&3),
        "an opted-in WASI 0.2 instance serves three times: {old:?}"
    );
    host.shutdown().await;
}

/// Opt-in reuse of a WASI 0.2 component's instances (`[instance_reuse.NAME]`): a trap or a
/// deadline ends the instance it happened on, an idle instance ends after the idle timeout,
/// and a swap retires the old version's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reused_wasi_0_2_instances_end_on_failure_idleness_and_swap() {
    let dir = AppDir::new(MIXED);
    let mut settings = Settings::default();
    settings.limits.request_timeout_ms = 1_000;
    settings.instance_reuse.insert(
        "probe".into(),
        InstanceReuse {
            max_instance_reuse_count: Some(100),
            idle_instance_timeout_ms: Some(1_000),
            ..InstanceReuse::default()
        },
    );
    let host = dir.start(settings).await;
    let base = format!("http://{}", host.http_addr());
    let client = client();
    // A moment between requests: the client has the whole answer (its body ends with its
    // head) a little before the instance has returned from the call, and a request that comes
    // in between rightly gets another instance.
    let count = || {
        let client = client.clone();
        let url = format!("{base}/probe/count");
        async move {
            tokio::time::sleep(Duration::from_millis(20)).await;
            get(&client, &url).await.body
        }
    };
    assert_eq!([count().await, count().await, count().await], ["1", "2", "3"]);
    let v1 = host.app().slot("probe").unwrap().live.load_full();
    assert!(v1.pooled_instances() > 0, "reused instances serve it");

    let trap = get(&client, &format!("{base}/probe/trap")).await;
    assert_eq!(trap.status, 500, "{}", trap.body);
    assert_eq!(count().await, "1", "the trapped instance is not reused");
    let looped = get(&client, &format!("{base}/probe/loop")).await;
    assert_eq!(looped.status, 504, "{}", looped.body);
    assert_eq!(count().await, "1", "the instance cut at its deadline is not reused");
    assert_eq!(count().await, "2");

    assert!(
        eventually(Duration::from_secs(5), || v1.pooled_instances() == 0).await,
        "an idle instance ends after the idle timeout; {} left",
        v1.pooled_instances()
    );
    assert_eq!(count().await, "1");
    assert!(v1.pooled_instances() > 0);

    host.pipeline()
        .deploy(deploy_request("probe", "probe-v2"))
        .await
        .expect("deploy of probe v2");
    assert!(
        eventually(Duration::from_secs(3), || v1.pooled_instances() == 0).await,
        "the old version's idle instance ends at the swap"
    );
    assert_eq!(count().await, "1", "v2 starts a fresh instance");
    host.shutdown().await;
}

#[test]
fn hostile_wasi_0_3_guests_fail_alone() {
    LogCapture::run(hostile_wasi_0_3_guests_fail_alone_with_logs);
}

async fn hostile_wasi_0_3_guests_fail_alone_with_logs(logs: LogCapture) {
    let dir = AppDir::new(MIXED);
    let mut settings = Settings::default();
    settings.limits.request_timeout_ms = 1_000;
    settings.limits.instance_memory_mb = 64;
    let host = dir.start(settings).await;
    let base = format!("http://{}", host.http_addr());
    let client = client();

    let trap = get(&client, &format!("{base}/new/trap")).await;
    assert_eq!(trap.status, 500, "{}", trap.body);
    assert_eq!(trap.json()["error"], "component trapped");

    // An endless loop is cut at the deadline while the neighbours answer.
    let started = std::time::Instant::now();
    let looping = {
        let client = client.clone();
        let url = format!("{base}/new/loop");
        tokio::spawn(async move { get(&client, &url).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert_eq!(get(&client, &format!("{base}/probe/hello")).await.status, 200);
    assert_eq!(get(&client, &format!("{base}/new/hello")).await.status, 200);
    let looped = looping.await.unwrap();
    assert_eq!(looped.status, 504, "{}", looped.body);
    assert!(looped.body.contains("deadline"), "{}", looped.body);
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());

    let hog = get(&client, &format!("{base}/new/grow")).await;
    assert_eq!(hog.status, 500, "{}", hog.body);

    // A guest that never reads the body it is sent, then answers: the request still ends.
    let unread = send(&client, "POST", &format!("{base}/new/hello"), vec![b'x'; 256 * 1024])
        .await
        .unwrap();
    assert_eq!(unread.status, 200, "{}", unread.body);

    // A body that never ends is cut at the deadline: the client sees an incomplete answer.
    let started = std::time::Instant::now();
    let stalled = send(&client, "GET", &format!("{base}/new/stall"), bytes::Bytes::new()).await;
    assert!(stalled.is_err(), "{stalled:?}");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());

    assert_eq!(get(&client, &format!("{base}/new/count")).await.status, 200);
    let text = logs.text();
    assert!(text.contains("request failed") && text.contains("trapped"), "{text}");
    assert!(text.contains("exceeded the request deadline"), "{text}");
    assert!(text.contains("is not reused"), "{text}");
    // The log says why the instance ended: the trap itself, not a generic failure.
    assert!(text.contains("unreachable"), "{text}");
    let slot = host.app().slot("new").unwrap();
    assert!(slot.stats.errors.load(Ordering::Relaxed) >= 3);
    assert_eq!(
        slot.live.load().in_flight(),
        0,
        "failed requests leave nothing in flight"
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swap_under_load_with_reuse_loses_no_request_and_retires_the_old_instances() {
    let dir = AppDir::new(MIXED);
    let host = dir.start(Settings::default()).await;
    let base = format!("http://{}", host.http_addr());
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let served = Arc::new(AtomicU64::new(0));
    let mut workers = Vec::new();
    for _ in 0..4 {
        let (stop, failures, served) = (stop.clone(), failures.clone(), served.clone());
        let url = format!("{base}/new/version");
        workers.push(tokio::spawn(async move {
            let client = client();
            let mut seen = std::collections::BTreeSet::new();
            for _ in 0..20_000 {
                if stop.load(Ordering::SeqCst) {
                    break;
                }
                match send(&client, "GET", &url, bytes::Bytes::new()).await {
                    Ok(reply) if reply.status == 200 => {
                        served.fetch_add(1, Ordering::SeqCst);
                        seen.insert(reply.body);
                    }
                    other => {
                        failures.fetch_add(1, Ordering::SeqCst);
                        eprintln!("failed: {other:?}");
                    }
                }
            }
            seen
        }));
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let v1 = host.app().slot("new").unwrap().live.load_full();
    assert!(v1.pooled_instances() > 0, "v1 serves from reused instances");

    // A slow request starts on v1 ...
    let slow = {
        let client = client();
        let url = format!("{base}/new/sleep?ms=1500");
        tokio::spawn(async move { get(&client, &url).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let report = host
        .pipeline()
        .deploy(deploy_request("new", "spin7-v2"))
        .await
        .expect("deploy of v2");
    assert_eq!(report.world, "WASI 0.3 (wasi:http/handler@0.3.0)");
    // ... every request after the flip reaches v2 ...
    let check = client();
    for _ in 0..20 {
        assert_eq!(get(&check, &format!("{base}/new/version")).await.body, "v2");
    }
    // ... and the slow one ends on v1.
    let slow = slow.await.unwrap();
    assert_eq!((slow.status, slow.body.as_str()), (200, "v1 slept 1500 ms"));

    stop.store(true, Ordering::SeqCst);
    let mut seen = std::collections::BTreeSet::new();
    for worker in workers {
        seen.extend(worker.await.unwrap());
    }
    assert_eq!(failures.load(Ordering::SeqCst), 0, "failed requests during the swap");
    assert!(served.load(Ordering::SeqCst) > 100, "the load loop ran");
    assert_eq!(seen.into_iter().collect::<Vec<_>>(), ["v1", "v2"]);
    // v1's instances are gone once its requests are.
    assert!(
        eventually(Duration::from_secs(5), || v1.pooled_instances() == 0).await,
        "v1 still has {} instances",
        v1.pooled_instances()
    );
    let v2 = host.app().slot("new").unwrap().live.load_full();
    assert!(v2.pooled_instances() > 0);
    host.shutdown().await;
}

/// Requests routed to a version just before its swap were once left waiting forever when they
/// sat in the old version's queue as it retired (no instance of it would take them). Many
/// swaps under load make that moment likely: every request must be answered, in time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_queued_on_a_retiring_version_are_all_answered() {
    let dir = AppDir::new(MIXED);
    let host = dir.start(Settings::default()).await;
    let base = format!("http://{}", host.http_addr());
    let stop = Arc::new(AtomicBool::new(false));
    let (served, failures) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let mut workers = Vec::new();
    for _ in 0..16 {
        let (stop, served, failures) = (stop.clone(), served.clone(), failures.clone());
        let url = format!("{base}/new/version");
        workers.push(tokio::spawn(async move {
            let client = client();
            while !stop.load(Ordering::SeqCst) {
                let reply =
                    tokio::time::timeout(Duration::from_secs(10), send(&client, "GET", &url, bytes::Bytes::new()));
                match reply.await {
                    Ok(Ok(reply)) if reply.status == 200 => served.fetch_add(1, Ordering::SeqCst),
                    other => {
                        eprintln!("failed or unanswered: {other:?}");
                        failures.fetch_add(1, Ordering::SeqCst)
                    }
                };
            }
        }));
    }
    for swap in 0..12 {
        tokio::time::sleep(Duration::from_millis(40)).await;
        let fixture = if swap % 2 == 0 { "spin7-v2" } else { "spin7" };
        host.pipeline()
            .deploy(deploy_request("new", fixture))
            .await
            .unwrap_or_else(|err| panic!("swap {swap}: {err}"));
    }
    stop.store(true, Ordering::SeqCst);
    for worker in workers {
        worker.await.unwrap();
    }
    assert_eq!(
        failures.load(Ordering::SeqCst),
        0,
        "requests failed or went unanswered across the swaps"
    );
    assert!(served.load(Ordering::SeqCst) > 100, "the load ran");
    host.shutdown().await;
}
