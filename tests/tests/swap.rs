//! Hot swap: under a bounded client loop, one component is swapped v1 → v2 → v1 several times
//! with zero failed requests; a slow request that started on v1 finishes on v1; requests after
//! the flip see v2; the other components are not disturbed. Also concurrent deploys, restart
//! with the journal, and rollback.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use mosaic::deploy::DeployError;
use mosaic::settings::Settings;
use mosaic_tests::{client, deploy_request, fixture, get, send, AppDir, TWO_COMPONENTS};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swap_under_load_loses_no_request() {
    let dir = AppDir::new(TWO_COMPONENTS);
    let host = dir.start(Settings::default()).await;
    let base = format!("http://{}", host.http_addr());
    let stop = Arc::new(AtomicBool::new(false));
    let failures = Arc::new(AtomicU64::new(0));
    let served = Arc::new(AtomicU64::new(0));

    // Bounded load: four workers on the swapped component, one on its neighbour, until told
    // to stop (at most a few seconds).
    let mut workers = Vec::new();
    for worker in 0..5 {
        let (stop, failures, served) = (stop.clone(), failures.clone(), served.clone());
        let url = if worker == 4 {
            format!("{base}/plain")
        } else {
            format!("{base}/probe/hello")
        };
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
                    Ok(reply) => {
                        failures.fetch_add(1, Ordering::SeqCst);
                        eprintln!("failed: {} {}", reply.status, reply.body);
                    }
                    Err(err) => {
                        failures.fetch_add(1, Ordering::SeqCst);
                        eprintln!("failed: {err}");
                    }
                }
            }
            seen
        }));
    }

    // A slow request that starts on v1 ...
    let slow_client = client();
    let slow_url = format!("{base}/probe/slow?ms=1500");
    let slow = tokio::spawn(async move { get(&slow_client, &slow_url).await });
    tokio::time::sleep(Duration::from_millis(300)).await;

    let check = client();
    for round in 0..6 {
        let (version, fixture_name) = if round % 2 == 0 {
            ("v2", "probe-v2")
        } else {
            ("v1", "probe")
        };
        let report = host
            .pipeline()
            .deploy(deploy_request("probe", fixture_name))
            .await
            .expect("deploy");
        // ... requests after the flip see the new version at once.
        let after = get(&check, &format!("{base}/probe/hello")).await;
        assert_eq!(
            after.body,
            format!("hello from probe {version}"),
            "round {round}: {report:?}"
        );
        tokio::time::sleep(Duration::from_millis(150)).await;
    }
    // ... and finishes on v1, although v2 went live while it ran.
    let slow = slow.await.unwrap();
    assert_eq!(slow.status, 200);
    assert_eq!(slow.body, "v1 slept 1500ms");

    stop.store(true, Ordering::SeqCst);
    let mut versions_seen = std::collections::BTreeSet::new();
    for worker in workers {
        versions_seen.extend(worker.await.unwrap());
    }
    assert_eq!(failures.load(Ordering::SeqCst), 0, "failed requests during the swaps");
    assert!(served.load(Ordering::SeqCst) > 100, "the load loop ran");
    assert!(versions_seen.contains("hello from probe v1") && versions_seen.contains("hello from probe v2"));
    assert!(versions_seen.contains("plain component saw /plain"));
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_deploys_of_one_component_conflict() {
    let dir = AppDir::new(TWO_COMPONENTS);
    let host = dir.start(Settings::default()).await;
    let (first, second) = tokio::join!(
        host.pipeline().deploy(deploy_request("probe", "probe-v2")),
        host.pipeline().deploy(deploy_request("probe", "probe-v2")),
    );
    let outcomes = [first, second];
    assert_eq!(outcomes.iter().filter(|o| o.is_ok()).count(), 1);
    let conflict = outcomes.into_iter().find_map(Result::err).unwrap();
    assert!(matches!(conflict, DeployError::Conflict { .. }), "{conflict}");
    assert!(conflict.to_string().contains("already in progress"));
    // A deploy of another component at the same time is fine.
    let (a, b) = tokio::join!(
        host.pipeline().deploy(deploy_request("probe", "probe")),
        host.pipeline().deploy(deploy_request("plain", "plain")),
    );
    a.unwrap();
    b.unwrap();
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_serves_last_deployed_versions_and_rollback_works() {
    let dir = AppDir::new(TWO_COMPONENTS);
    let client = client();
    let host = dir.start(Settings::default()).await;
    let first = host
        .pipeline()
        .deploy(deploy_request("probe", "probe-v2"))
        .await
        .unwrap();
    assert!(!first.cached, "v2 was never compiled in this state directory");
    host.shutdown().await;

    let host = dir.start(Settings::default()).await;
    let base = format!("http://{}", host.http_addr());
    assert_eq!(
        get(&client, &format!("{base}/probe/hello")).await.body,
        "hello from probe v2"
    );
    assert_eq!(
        get(&client, &format!("{base}/plain")).await.body,
        "plain component saw /plain"
    );

    // Rollback goes to the version v2 replaced, from the artifact cache.
    let report = host.pipeline().rollback("probe").await.unwrap();
    assert!(report.cached, "a rollback loads the cached artifact");
    assert_eq!(
        get(&client, &format!("{base}/probe/hello")).await.body,
        "hello from probe v1"
    );
    // A second rollback undoes the first.
    host.pipeline().rollback("probe").await.unwrap();
    assert_eq!(
        get(&client, &format!("{base}/probe/hello")).await.body,
        "hello from probe v2"
    );
    // A component with no earlier version cannot roll back.
    let err = host.pipeline().rollback("plain").await.unwrap_err();
    assert!(err.to_string().contains("no earlier version"), "{err}");
    host.shutdown().await;

    // And the rollback itself survives a restart.
    let host = dir.start(Settings::default()).await;
    let base = format!("http://{}", host.http_addr());
    assert_eq!(
        get(&client, &format!("{base}/probe/hello")).await.body,
        "hello from probe v2"
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuilt_manifest_source_wins_over_the_journal() {
    let dir = AppDir::new(TWO_COMPONENTS.replace("{probe}", "probe.wasm").as_str());
    std::fs::copy(fixture("probe"), dir.path.join("probe.wasm")).unwrap();
    let client = client();
    let host = dir.start(Settings::default()).await;
    host.pipeline()
        .deploy(deploy_request("probe", "probe-v2"))
        .await
        .unwrap();
    host.shutdown().await;
    // The user rebuilds the component in place (here: the unhealthy build answers hello too).
    std::fs::copy(fixture("probe-unhealthy"), dir.path.join("probe.wasm")).unwrap();
    let host = dir.start(Settings::default()).await;
    let reply = get(&client, &format!("http://{}/probe/health", host.http_addr())).await;
    assert_eq!(
        reply.status, 503,
        "the new build from the manifest serves, not the journal's v2"
    );
    host.shutdown().await;
}
