//! Canary releases: a second version takes a share of the new requests (and deliveries), and
//! is promoted or rolled back, by an operator or by its numbers; a restart keeps the split.
//! The `probe` fixture says which version answered in `x-probe-version` (v1, v2);
//! `probe-broken` answers 500 on every route (and passes its deploy probe, which only
//! instantiates it).

use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use mosaic::app::canary::CanaryPolicy;
use mosaic::deploy::journal::{self, Action};
use mosaic::deploy::DeployRequest;
use mosaic::settings::Settings;
use mosaic_tests::sink::Sink;
use mosaic_tests::{client, fixture, send, wait_until, AppDir, HttpClient, TWO_COMPONENTS};

fn canary_of(fixture_name: &str, policy: CanaryPolicy) -> DeployRequest {
    DeployRequest::canary("probe", std::fs::read(fixture(fixture_name)).expect("fixture"), policy)
}

/// The version that answered `GET url` (with `header` if given), and its status.
async fn version_at(http: &HttpClient, url: &str, header: Option<(&str, &str)>) -> (String, u16) {
    let mut request = hyper::Request::get(url);
    if let Some((name, value)) = header {
        request = request.header(name, value);
    }
    let response = http
        .request(request.body(Full::new(Bytes::new())).expect("request"))
        .await
        .expect("answer");
    let version = response
        .headers()
        .get("x-probe-version")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("none")
        .to_string();
    (version, response.status().as_u16())
}

fn actions(host: &mosaic::Host, component: &str) -> Vec<Action> {
    let entries = journal::read(&host.app().state.journal_path()).expect("journal");
    journal::history(&entries, component)
        .into_iter()
        .map(|entry| entry.action.clone())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_takes_about_its_share_of_new_requests() {
    let dir = AppDir::new(TWO_COMPONENTS);
    let host = dir.start(Settings::default()).await;
    let base = format!("http://{}", host.http_addr());
    let http = client();
    let report = host
        .pipeline()
        .deploy(canary_of("probe-v2", CanaryPolicy::new(20.0)))
        .await
        .expect("canary");
    assert_eq!(report.action, Action::Canary);
    let mut on_canary = 0;
    for _ in 0..1000 {
        let (version, status) = version_at(&http, &format!("{base}/probe/count"), None).await;
        assert_eq!(status, 200, "no request fails");
        on_canary += usize::from(version == "v2");
    }
    // 20% of 1,000 is 200; 120..=280 is more than six standard deviations either way.
    assert!((120..=280).contains(&on_canary), "{on_canary} of 1000 on the canary");
    let status = mosaic::admin::status(host.app());
    let probe = status.iter().find(|c| c.name == "probe").expect("probe");
    let canary = probe.canary.as_ref().expect("status shows the canary");
    assert_eq!(canary.share_percent, 20.0);
    assert_eq!(canary.stable.requests + canary.canary.requests, 1000);
    assert_eq!(canary.canary.requests, on_canary as u64);
    assert_eq!(actions(&host, "probe"), [Action::Manifest, Action::Canary]);

    // A plain deploy during a canary is refused: one change of a component at a time.
    let err = host
        .pipeline()
        .deploy(mosaic_tests::deploy_request("probe", "probe-v2"))
        .await
        .expect_err("refused");
    assert!(err.to_string().contains("a canary of `probe` is in progress"), "{err}");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sticky_header_keeps_each_client_on_one_version() {
    let dir = AppDir::new(TWO_COMPONENTS);
    let host = dir.start(Settings::default()).await;
    let base = format!("http://{}", host.http_addr());
    let http = client();
    let mut policy = CanaryPolicy::new(50.0);
    policy.sticky = Some("x-user".into());
    host.pipeline()
        .deploy(canary_of("probe-v2", policy))
        .await
        .expect("canary");
    let mut seen = std::collections::BTreeSet::new();
    for user in 0..40 {
        let user = format!("user-{user}");
        let (first, _) = version_at(&http, &format!("{base}/probe/count"), Some(("x-user", &user))).await;
        for _ in 0..4 {
            let (again, _) = version_at(&http, &format!("{base}/probe/count"), Some(("x-user", &user))).await;
            assert_eq!(again, first, "{user} moved between versions");
        }
        seen.insert(first);
    }
    assert_eq!(seen.len(), 2, "40 users at 50% land on both versions: {seen:?}");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_makes_the_canary_live_and_rollback_goes_back_to_the_stable_version() {
    let dir = AppDir::new(TWO_COMPONENTS);
    let host = dir.start(Settings::default()).await;
    let base = format!("http://{}", host.http_addr());
    let http = client();
    let stable = host.app().slot("probe").expect("probe").live.load().digest.clone();
    host.pipeline()
        .deploy(canary_of("probe-v2", CanaryPolicy::new(10.0)))
        .await
        .expect("canary");
    let promoted = host.pipeline().promote("probe").expect("promote");
    assert_eq!(promoted.previous.as_ref(), Some(&stable));
    for _ in 0..20 {
        assert_eq!(version_at(&http, &format!("{base}/probe/count"), None).await.0, "v2");
    }
    assert!(host.app().slot("probe").unwrap().canary.load().is_none());
    let err = host.pipeline().promote("probe").expect_err("nothing to promote");
    assert!(err.to_string().contains("no canary is in progress"), "{err}");
    // The old stable version is the way back.
    let back = host.pipeline().rollback("probe").await.expect("rollback");
    assert_eq!(back.digest, stable);
    assert_eq!(version_at(&http, &format!("{base}/probe/count"), None).await.0, "v1");
    assert_eq!(
        actions(&host, "probe"),
        [Action::Manifest, Action::Canary, Action::Promote, Action::Rollback]
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operators_rollback_ends_the_canary_and_the_canary_drains() {
    let dir = AppDir::new(TWO_COMPONENTS);
    let host = dir.start(Settings::default()).await;
    let base = format!("http://{}", host.http_addr());
    let http = client();
    host.pipeline()
        .deploy(canary_of("probe-v2", CanaryPolicy::new(100.0)))
        .await
        .expect("canary");
    let canary = host.app().slot("probe").unwrap().canary.load_full().expect("canary");
    // A slow request starts on the canary (100%) and must end there after the rollback.
    let slow = {
        let http = http.clone();
        let url = format!("{base}/probe/slow?ms=800");
        tokio::spawn(async move { version_at(&http, &url, None).await })
    };
    assert!(wait_until(Duration::from_secs(5), || async { canary.deployment.in_flight() == 1 }).await);
    let report = host.pipeline().rollback("probe").await.expect("rollback");
    assert_eq!(report.action, Action::CanaryRollback);
    assert_eq!(report.draining, 1);
    assert_eq!(version_at(&http, &format!("{base}/probe/count"), None).await.0, "v1");
    assert_eq!(slow.await.expect("slow request"), ("v2".to_string(), 200));
    assert!(wait_until(Duration::from_secs(5), || async { canary.deployment.in_flight() == 0 }).await);
    assert_eq!(
        actions(&host, "probe"),
        [Action::Manifest, Action::Canary, Action::CanaryRollback]
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_canary_is_rolled_back_at_once_and_says_why() {
    let dir = AppDir::new(TWO_COMPONENTS);
    let host = dir.start(Settings::default()).await;
    let base = format!("http://{}", host.http_addr());
    let http = client();
    // The default policy: more than 5% of at least 20 requests in 60 s.
    host.pipeline()
        .deploy(canary_of("probe-broken", CanaryPolicy::new(30.0)))
        .await
        .expect("canary (no [probe.probe]: the deploy only instantiates it)");
    let slot = host.app().slot("probe").unwrap();
    let mut served_by_canary = 0;
    let mut sent = 0;
    while slot.canary.load().is_some() && sent < 1000 {
        let (version, status) = version_at(&http, &format!("{base}/probe/count"), None).await;
        if version == "broken" {
            assert_eq!(status, 500);
            served_by_canary += 1;
        }
        sent += 1;
    }
    assert!(
        wait_until(Duration::from_secs(5), || async {
            slot.canary.load().is_none() && actions(&host, "probe").last() == Some(&Action::AutoRollback)
        })
        .await,
        "rolled back and journaled"
    );
    assert!(
        served_by_canary < 100,
        "the canary served {served_by_canary} requests before its rollback"
    );
    for _ in 0..50 {
        assert_eq!(
            version_at(&http, &format!("{base}/probe/count"), None).await,
            ("v1".to_string(), 200)
        );
    }
    let entries = journal::read(&host.app().state.journal_path()).expect("journal");
    let last = entries.last().expect("entry");
    let reason = last.reason.as_deref().unwrap_or_default();
    assert!(
        reason.starts_with("auto-rollback: 20 of 20 requests failed"),
        "{reason}"
    );
    let status = mosaic::admin::status(host.app());
    let probe = status.iter().find(|c| c.name == "probe").expect("probe");
    let ended = probe.last_canary.as_deref().unwrap_or_default();
    assert!(
        ended.starts_with("auto_rollback of ") && ended.contains(reason),
        "{ended}"
    );
    let metrics = mosaic_tests::admin(&host, "GET", "/metrics", Vec::new()).await.body;
    assert!(
        metrics.contains(r#"mosaic_deploys_total{component="probe",action="auto_rollback",outcome="ok"} 1"#),
        "{metrics}"
    );
    host.shutdown().await;
}

/// Requests sent without pause by two clients until `stop`; returns (sent, failed).
fn load(base: &str) -> (tokio::sync::watch::Sender<bool>, tokio::task::JoinHandle<(u64, u64)>) {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let url = format!("{base}/probe/count");
    let task = tokio::spawn(async move {
        let clients = (0..2).map(|_| {
            let (url, stopped, http) = (url.clone(), stopped.clone(), client());
            tokio::spawn(async move {
                let (mut sent, mut failed) = (0, 0);
                while !*stopped.borrow() {
                    let request = hyper::Request::get(&url)
                        .body(Full::new(Bytes::new()))
                        .expect("request");
                    let ok = matches!(http.request(request).await, Ok(response) if response.status() == 200);
                    sent += 1;
                    failed += u64::from(!ok);
                }
                (sent, failed)
            })
        });
        let mut total = (0, 0);
        for client in clients.collect::<Vec<_>>() {
            let (sent, failed) = client.await.expect("load client");
            total = (total.0 + sent, total.1 + failed);
        }
        total
    });
    (stop, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promote_and_rollback_under_load_fail_no_request() {
    let dir = AppDir::new(TWO_COMPONENTS);
    let host = dir.start(Settings::default()).await;
    let base = format!("http://{}", host.http_addr());
    let (stop, task) = load(&base);
    let pause = || tokio::time::sleep(Duration::from_millis(300));
    pause().await;
    host.pipeline()
        .deploy(canary_of("probe-v2", CanaryPolicy::new(50.0)))
        .await
        .expect("canary");
    pause().await;
    host.pipeline().promote("probe").expect("promote");
    pause().await;
    host.pipeline()
        .deploy(canary_of("probe", CanaryPolicy::new(50.0)))
        .await
        .expect("a canary of v1 over v2");
    pause().await;
    let ended = host.pipeline().rollback("probe").await.expect("rollback");
    assert_eq!(ended.action, Action::CanaryRollback);
    pause().await;
    stop.send(true).expect("stop");
    let (sent, failed) = task.await.expect("load");
    assert!(sent > 100, "the load ran: {sent} requests");
    assert_eq!(failed, 0, "{failed} of {sent} requests failed");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn steps_raise_the_share_and_the_last_step_promotes() {
    let dir = AppDir::new(TWO_COMPONENTS);
    let host = dir.start(Settings::default()).await;
    let mut policy = CanaryPolicy::new(10.0);
    policy.steps = vec![50.0, 100.0];
    policy.step_every_ms = Some(300);
    host.pipeline()
        .deploy(canary_of("probe-v2", policy))
        .await
        .expect("canary");
    let slot = host.app().slot("probe").unwrap();
    let v2 = slot.canary.load().as_ref().expect("canary").deployment.digest.clone();
    assert!(
        wait_until(Duration::from_secs(10), || async {
            slot.live.load().digest == v2 && actions(&host, "probe").last() == Some(&Action::Promote)
        })
        .await,
        "promoted by the last step"
    );
    let entries = journal::read(&host.app().state.journal_path()).expect("journal");
    let steps: Vec<u32> = entries
        .iter()
        .filter(|entry| entry.action == Action::CanaryStep)
        .filter_map(|entry| entry.canary.as_ref().map(|c| c.share_bp))
        .collect();
    assert_eq!(steps, [5000]);
    assert_eq!(entries.last().map(|e| e.action.clone()), Some(Action::Promote));
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_that_stays_healthy_is_promoted_after_its_time() {
    let dir = AppDir::new(TWO_COMPONENTS);
    let host = dir.start(Settings::default()).await;
    let mut policy = CanaryPolicy::new(20.0);
    policy.promote_after_ms = Some(300);
    host.pipeline()
        .deploy(canary_of("probe-v2", policy))
        .await
        .expect("canary");
    let slot = host.app().slot("probe").unwrap();
    assert!(wait_until(Duration::from_secs(10), || async { slot.canary.load().is_none() }).await);
    let base = format!("http://{}", host.http_addr());
    assert_eq!(
        version_at(&client(), &format!("{base}/probe/count"), None).await.0,
        "v2"
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_canary_comes_back_after_a_restart_or_ends_if_its_source_is_gone() {
    let dir = AppDir::new(TWO_COMPONENTS);
    let host = dir.start(Settings::default()).await;
    let mut policy = CanaryPolicy::new(25.0);
    policy.steps = vec![40.0, 60.0];
    policy.step_every_ms = Some(200);
    host.pipeline()
        .deploy(canary_of("probe-v2", policy))
        .await
        .expect("canary");
    let slot = host.app().slot("probe").unwrap();
    let canary = slot.canary.load_full().expect("canary");
    assert!(wait_until(Duration::from_secs(10), || async { canary.share() == 6000 }).await);
    let digest = canary.deployment.digest.clone();
    host.shutdown().await;

    let host = dir.start(Settings::default()).await;
    let restored = host
        .app()
        .slot("probe")
        .unwrap()
        .canary
        .load_full()
        .expect("the canary came back");
    assert_eq!(restored.deployment.digest, digest);
    assert_eq!(restored.share(), 6000, "at the share it had reached");
    let source = host.app().state.source_of(digest.as_str());
    host.shutdown().await;

    std::fs::remove_file(&source).expect("remove the canary's source");
    let host = dir.start(Settings::default()).await;
    assert!(host.app().slot("probe").unwrap().canary.load().is_none());
    let entries = journal::read(&host.app().state.journal_path()).expect("journal");
    let last = entries.last().expect("entry");
    assert_eq!(last.action, Action::CanaryRollback);
    assert!(
        last.reason.as_deref().unwrap_or_default().contains("is gone"),
        "{last:?}"
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_canary_takes_its_share_of_the_deliveries() {
    let sink = Sink::start().await;
    let dir = AppDir::new(&sink.manifest("jobs"));
    let host = dir.start(Settings::default()).await;
    let base = format!("http://{}", host.http_addr());
    let http = client();
    let bytes = std::fs::read(fixture("subscriber-v2")).expect("fixture");
    host.pipeline()
        .deploy(DeployRequest::canary("subscriber", bytes, CanaryPolicy::new(50.0)))
        .await
        .expect("canary");
    for index in 0..60 {
        let reply = send(
            &http,
            "POST",
            &format!("{base}/probe/publish?channel=jobs"),
            format!("job-{index}"),
        )
        .await
        .expect("publish");
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    assert!(
        sink.wait_for(Duration::from_secs(20), |s| s.handled_count() == 60)
            .await
    );
    let on_canary = (0..60)
        .filter(|index| sink.version_of(&format!("job-{index}")).as_deref() == Some("v2"))
        .count();
    assert!(
        (10..=50).contains(&on_canary),
        "{on_canary} of 60 deliveries on the canary"
    );
    host.shutdown().await;
}

/// `mosaic deploy --canary`, `mosaic status` and `mosaic history` as an operator runs them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cli_starts_shows_and_promotes_a_canary() {
    let dir = AppDir::new(TWO_COMPONENTS);
    let host = dir.start(Settings::default()).await;
    let cli = |args: Vec<String>| {
        let manifest = dir.manifest();
        async move {
            let output = tokio::process::Command::new(mosaic_tests::mosaic_bin())
                .arg("-f")
                .arg(manifest)
                .args(args)
                .output()
                .await
                .expect("run mosaic");
            let text = format!(
                "{}{}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
            (output.status.success(), text)
        }
    };
    let file = fixture("probe-v2").to_string_lossy().to_string();
    let args = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
    let (ok, text) = cli(args(&[
        "deploy",
        "probe",
        &file,
        "--canary",
        "20",
        "--sticky",
        "x-user-id",
        "--max-error-rate",
        "0.1",
    ]))
    .await;
    assert!(ok, "{text}");
    assert!(text.contains("canary of `probe`"), "{text}");
    let (ok, text) = cli(args(&["status"])).await;
    assert!(
        ok && text.contains("canary") && text.contains("20% of new requests, sticky by x-user-id"),
        "{text}"
    );
    let (ok, text) = cli(args(&["deploy", "probe", &file, "--canary", "0"])).await;
    assert!(!ok && text.contains("--canary must be a percentage"), "{text}");
    let (ok, text) = cli(args(&["promote", "probe"])).await;
    assert!(ok && text.contains("promoted `probe`"), "{text}");
    let (ok, text) = cli(args(&["history", "probe"])).await;
    assert!(ok, "{text}");
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(
        lines[1].contains("canary") && lines[1].contains("20% of new requests"),
        "{text}"
    );
    assert!(lines[2].contains("promote") && lines[2].ends_with("<- live"), "{text}");
    host.shutdown().await;
}
