//! Cluster mode: two or three hosts on loopback ports of this machine serve one application,
//! coordinated through the real PostgreSQL (desired versions, LISTEN/NOTIFY), sharing Redis
//! key-value and RabbitMQ messaging. A deploy through one host is served by the others with no
//! failed request; a rollback is cluster-wide; a host killed mid-stream loses no message and
//! comes back on the desired versions; a rate limit holds across hosts.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use mosaic::settings::{ClusterSettings, Settings};
use mosaic_tests::sink::Sink;
use mosaic_tests::{
    admin, client, fixture, get, mosaic_bin, probed_settings, require_service, send, unique, wait_until,
    workspace_root, AppDir, HttpClient, MosaicProcess, TWO_COMPONENTS,
};

const POSTGRES: &str = "host=127.0.0.1 user=postgres dbname=test";
const RABBITMQ_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// The cluster store; the test fails where it is not running.
fn require_postgres() {
    require_service("PostgreSQL", "127.0.0.1:5432");
}

/// Settings of one cluster: the store, a namespace of its own, a quick reconcile.
fn cluster_settings(namespace: &str) -> Settings {
    Settings {
        cluster: ClusterSettings {
            postgres: Some(POSTGRES.to_string()),
            namespace: Some(namespace.to_string()),
            reconcile_interval_ms: 500,
            host_timeout_ms: 5_000,
            ..ClusterSettings::default()
        },
        ..Settings::default()
    }
}

/// The body of `GET base/probe/hello`, or why it failed.
async fn hello(client: &HttpClient, base: &str) -> Result<String, String> {
    let reply = send(client, "GET", &format!("{base}/probe/hello"), Vec::new()).await?;
    if reply.status == 200 {
        Ok(reply.body)
    } else {
        Err(format!("{}: {}", reply.status, reply.body))
    }
}

/// A request loop on one host until `stop`: counts answers and failures, and remembers the
/// first failure.
struct LoadLoop {
    answered: Arc<AtomicU64>,
    failures: Arc<std::sync::Mutex<Vec<String>>>,
    task: tokio::task::JoinHandle<()>,
}

impl LoadLoop {
    fn start(base: String, stop: Arc<AtomicBool>) -> LoadLoop {
        let answered = Arc::new(AtomicU64::new(0));
        let failures = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (count, failed) = (answered.clone(), failures.clone());
        let task = tokio::spawn(async move {
            let http = client();
            while !stop.load(Ordering::SeqCst) {
                match hello(&http, &base).await {
                    Ok(_) => {
                        count.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(err) => failed.lock().expect("failures").push(err),
                }
            }
        });
        LoadLoop {
            answered,
            failures,
            task,
        }
    }

    async fn finish(self) -> (u64, Vec<String>) {
        self.task.await.expect("load loop");
        let failures = self.failures.lock().expect("failures").clone();
        (self.answered.load(Ordering::SeqCst), failures)
    }
}

/// Stops the load loops and checks that each made requests and none failed.
async fn stop_and_check(stop: &AtomicBool, loops: Vec<LoadLoop>) {
    stop.store(true, Ordering::SeqCst);
    for (n, load) in loops.into_iter().enumerate() {
        let (answered, failures) = load.finish().await;
        assert!(answered > 0, "loop {n} made requests");
        assert!(
            failures.is_empty(),
            "loop {n}: {} failed, first: {:?}",
            failures.len(),
            failures.first()
        );
    }
}

/// Waits until `base` answers with `version` in its hello; returns how long that took.
async fn until_serving(base: &str, version: &str, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let http = client();
    let seen = wait_until(limit, || async {
        hello(&http, base).await.is_ok_and(|body| body.contains(version))
    })
    .await;
    seen.then(|| started.elapsed())
}

/// `mosaic up` of `dir`'s manifest as a process in a cluster, with its own state directory.
fn cluster_process(dir: &AppDir, config: &std::path::Path, state: &str) -> MosaicProcess {
    let state = dir.path.join(state);
    MosaicProcess::start(
        &dir.path,
        &[
            "up",
            "--config",
            &config.to_string_lossy(),
            "--state-dir",
            &state.to_string_lossy(),
        ],
    )
}

fn mosaic_cli(dir: &AppDir, state: &str, args: &[&str]) -> std::process::Output {
    std::process::Command::new(mosaic_bin())
        .current_dir(&dir.path)
        .arg("--state-dir")
        .arg(dir.path.join(state))
        .args(args)
        .output()
        .expect("mosaic runs")
}

/// The text of `key: |` block scalar in a Kubernetes file (its lines indented under the key).
fn block_scalar(yaml: &str, key: &str) -> String {
    let mut lines = yaml.lines().skip_while(|line| line.trim() != format!("{key}: |"));
    let header = lines.next().expect("the key is in the file");
    let indent = header.len() - header.trim_start().len() + 2;
    lines
        .take_while(|line| line.trim().is_empty() || line.len() - line.trim_start().len() >= indent)
        .map(|line| line.get(indent..).unwrap_or("").to_string() + "\n")
        .collect()
}

#[test]
fn the_kubernetes_files_configure_a_valid_cluster() {
    let root = workspace_root();
    let yaml = std::fs::read_to_string(root.join("deploy/kubernetes/mosaic.yaml")).expect("mosaic.yaml");
    let dir = std::env::temp_dir().join(unique("mosaic-k8s"));
    std::fs::create_dir_all(&dir).expect("dir");
    let settings_path = dir.join("mosaic.toml");
    std::fs::write(&settings_path, block_scalar(&yaml, "mosaic.toml")).expect("write");
    let settings = Settings::load(&settings_path).expect("the Secret's mosaic.toml is valid");
    assert!(settings.cluster.postgres.is_some(), "cluster mode is on");
    assert_eq!(settings.messaging.broker, mosaic::settings::BrokerKind::RabbitMQ);
    assert!(
        !settings.admin.listen.ip().is_loopback(),
        "the kubelet's probes reach the admin listener"
    );
    let runtime_path = dir.join("runtime-config.toml");
    std::fs::write(&runtime_path, block_scalar(&yaml, "runtime-config.toml")).expect("write");
    let runtime = mosaic::app::runtime_config::RuntimeConfig::load(&runtime_path).expect("valid runtime config");
    assert!(
        runtime.key_value_stores.contains_key("ratelimit"),
        "the rate limit is shared"
    );
    // The image's entry point and the probes use flags and paths that exist.
    let dockerfile = std::fs::read_to_string(root.join("deploy/Dockerfile")).expect("Dockerfile");
    let help = std::process::Command::new(mosaic_bin())
        .args(["up", "--help"])
        .output()
        .expect("mosaic up --help");
    let help = String::from_utf8_lossy(&help.stdout).to_string();
    for flag in ["--config", "--runtime-config-file", "--cluster"] {
        assert!(help.contains(flag), "mosaic up has {flag}");
    }
    assert!(dockerfile.contains("\"--config\", \"/config/mosaic.toml\""));
    assert!(yaml.contains("path: /readyz") && yaml.contains("path: /healthz"));
    let _ = std::fs::remove_dir_all(&dir);
}

/// Two hosts of one cluster subscribe to the same channel on a shared broker (`broker` at `url`,
/// the server `name` at `server`): each message is handled by one of them, not once per host.
async fn competing_consumers(broker: mosaic::settings::BrokerKind, url: &str, name: &str, server: &str) {
    require_postgres();
    require_service(name, server);
    const COUNT: usize = 200;
    let sink = Sink::start().await;
    let dir = AppDir::new(&sink.manifest("jobs"));
    let namespace = unique("cluster");
    let mut settings = cluster_settings(&namespace);
    settings.messaging = mosaic::settings::MessagingSettings {
        broker,
        url: Some(url.to_string()),
        namespace: Some(namespace.clone()),
        concurrency: 4,
        ..mosaic::settings::MessagingSettings::default()
    };
    let a = dir.start_in(settings.clone(), None, "state-a").await;
    let b = dir.start_in(settings, None, "state-b").await;
    let http = client();
    for n in 0..COUNT {
        let base = if n % 2 == 0 { a.http_addr() } else { b.http_addr() };
        let reply = send(
            &http,
            "POST",
            &format!("http://{base}/probe/publish?channel=jobs"),
            format!("job-{n}"),
        )
        .await
        .expect("publish");
        assert_eq!(reply.status, 200, "{broker:?}: {}", reply.body);
    }
    assert!(
        sink.wait_for(Duration::from_secs(30), |s| s.handled_count() == COUNT)
            .await,
        "{broker:?}: {} of {COUNT} handled",
        sink.handled_count()
    );
    // Give a second copy, if there were one, time to arrive.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(
        sink.total_attempts(),
        COUNT as u64,
        "{broker:?}: each message handled once in all, not once per host"
    );
    a.shutdown().await;
    b.shutdown().await;
}

mod needs_postgres {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs PostgreSQL on 127.0.0.1:5432"]
    async fn a_deploy_through_one_host_is_served_by_the_others_and_rolled_back_everywhere() {
        require_postgres();
        let dir = AppDir::new(TWO_COMPONENTS);
        let settings = cluster_settings(&unique("cluster"));
        let a = dir.start_in(settings.clone(), None, "state-a").await;
        let b = dir.start_in(settings.clone(), None, "state-b").await;
        let (base_a, base_b) = (format!("http://{}", a.http_addr()), format!("http://{}", b.http_addr()));
        assert!(hello(&client(), &base_b).await.expect("b answers").contains("v1"));

        let stop = Arc::new(AtomicBool::new(false));
        let loops: Vec<LoadLoop> = [&base_a, &base_a, &base_b, &base_b]
            .into_iter()
            .map(|base| LoadLoop::start(base.clone(), stop.clone()))
            .collect();
        tokio::time::sleep(Duration::from_millis(300)).await;

        // Deploy v2 through host A's admin API, as `mosaic deploy` does.
        let v2 = std::fs::read(fixture("probe-v2")).expect("probe-v2 fixture");
        let deployed = admin(&a, "POST", "/v1/components/probe/deploy", v2).await;
        assert_eq!(deployed.status, 200, "{}", deployed.body);
        let v2_digest = deployed.json()["digest"].as_str().expect("digest").to_string();
        let on_b = until_serving(&base_b, "v2", Duration::from_secs(20)).await;
        assert!(on_b.is_some(), "host B serves the version deployed through host A");
        eprintln!("deploy through A served by B after {on_b:?}");

        // Both hosts report v2; the status through B shows the rollout's end.
        let status_shows_v2 = wait_until(Duration::from_secs(10), || async {
            let status = admin(&b, "GET", "/v1/cluster", Vec::new()).await;
            let status = status.json();
            let hosts = status["hosts"].as_array().cloned().unwrap_or_default();
            status["desired"]["probe"] == v2_digest.as_str()
                && hosts.len() == 2
                && hosts
                    .iter()
                    .all(|host| host["versions"]["probe"] == v2_digest.as_str() && host["alive"] == true)
        })
        .await;
        assert!(
            status_shows_v2,
            "{}",
            admin(&b, "GET", "/v1/cluster", Vec::new()).await.body
        );

        // A host that joins now (a fresh state directory: it has only the manifest's v1) serves
        // the desired v2 from its very first answer.
        let c = dir.start_in(settings.clone(), None, "state-c").await;
        let first = hello(&client(), &format!("http://{}", c.http_addr()))
            .await
            .expect("c answers");
        assert!(
            first.contains("v2"),
            "a new host comes up on the desired version: {first}"
        );
        c.shutdown().await;

        // A rollback through host B takes both hosts back.
        let rolled_back = admin(&b, "POST", "/v1/components/probe/rollback", Vec::new()).await;
        assert_eq!(rolled_back.status, 200, "{}", rolled_back.body);
        assert!(until_serving(&base_b, "v1", Duration::from_secs(20)).await.is_some());
        assert!(
            until_serving(&base_a, "v1", Duration::from_secs(20)).await.is_some(),
            "host A rolled back too"
        );
        tokio::time::sleep(Duration::from_millis(300)).await;

        stop_and_check(&stop, loops).await;
        a.shutdown().await;
        b.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs PostgreSQL on 127.0.0.1:5432"]
    async fn a_bad_version_is_refused_by_the_deploying_host_and_reaches_no_other() {
        require_postgres();
        let dir = AppDir::new(TWO_COMPONENTS);
        let settings = Settings {
            probe: probed_settings().probe,
            ..cluster_settings(&unique("cluster"))
        };
        let a = dir.start_in(settings.clone(), None, "state-a").await;
        let b = dir.start_in(settings.clone(), None, "state-b").await;
        let unhealthy = std::fs::read(fixture("probe-unhealthy")).expect("fixture");
        let refused = admin(&a, "POST", "/v1/components/probe/deploy", unhealthy).await;
        assert_eq!(refused.status, 422, "{}", refused.body);
        assert_eq!(refused.json()["step"], "probe");
        let status = admin(&a, "GET", "/v1/cluster", Vec::new()).await.json();
        assert!(
            status["desired"].get("probe").is_none(),
            "nothing became desired: {status}"
        );
        tokio::time::sleep(Duration::from_millis(1200)).await;
        let base_b = format!("http://{}", b.http_addr());
        assert!(hello(&client(), &base_b).await.expect("b answers").contains("v1"));
        a.shutdown().await;
        b.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs PostgreSQL on 127.0.0.1:5432"]
    async fn a_cluster_store_that_is_down_fails_the_deploy_and_leaves_the_host_on_its_version() {
        require_postgres();
        let relay = mosaic_tests::TcpRelay::start("127.0.0.1:5432".parse().expect("address")).await;
        let mut settings = cluster_settings(&unique("cluster"));
        settings.cluster.postgres = Some(format!("host=127.0.0.1 port={} user=postgres dbname=test", relay.port));
        let dir = AppDir::new(TWO_COMPONENTS);
        let a = dir.start_in(settings, None, "state-a").await;
        let base = format!("http://{}", a.http_addr());
        let readyz = format!("http://{}/readyz", a.admin_addr());
        assert_eq!(get(&client(), &readyz).await.status, 200);

        relay.cut();
        let v2 = std::fs::read(fixture("probe-v2")).expect("fixture");
        let refused = admin(&a, "POST", "/v1/components/probe/deploy", v2.clone()).await;
        assert_eq!(refused.status, 422, "{}", refused.body);
        assert_eq!(refused.json()["step"], "cluster", "{}", refused.body);
        assert!(refused.body.contains("cluster store"), "{}", refused.body);
        assert!(
            hello(&client(), &base).await.expect("a answers").contains("v1"),
            "the host went back to the version it replaced"
        );
        let not_ready = get(&client(), &readyz).await;
        assert_eq!(not_ready.status, 503, "{}", not_ready.body);
        assert!(
            not_ready.json()["failing"]["cluster store"].is_string(),
            "{}",
            not_ready.body
        );

        relay.restore();
        let deployed = wait_until(Duration::from_secs(20), || async {
            admin(&a, "POST", "/v1/components/probe/deploy", v2.clone())
                .await
                .status
                == 200
        })
        .await;
        assert!(deployed, "once the store is back, the deploy goes through");
        assert!(hello(&client(), &base).await.expect("a answers").contains("v2"));
        a.shutdown().await;
    }

    /// The canary of `component` as `host` runs it: (version, share in percent).
    fn canary_on(host: &mosaic::Host, component: &str) -> Option<(String, f64)> {
        let status = mosaic::admin::status(host.app());
        let component = status.into_iter().find(|c| c.name == component)?;
        component.canary.map(|canary| (canary.version, canary.share_percent))
    }

    /// How the last canary of `component` ended on `host`, if one did.
    fn last_canary_on(host: &mosaic::Host, component: &str) -> Option<String> {
        let status = mosaic::admin::status(host.app());
        status.into_iter().find(|c| c.name == component)?.last_canary
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs PostgreSQL on 127.0.0.1:5432"]
    async fn a_canary_through_one_host_runs_on_every_host_steps_together_and_is_promoted_everywhere() {
        require_postgres();
        let dir = AppDir::new(TWO_COMPONENTS);
        let settings = cluster_settings(&unique("cluster"));
        let a = dir.start_in(settings.clone(), None, "state-a").await;
        let b = dir.start_in(settings.clone(), None, "state-b").await;
        let (base_a, base_b) = (format!("http://{}", a.http_addr()), format!("http://{}", b.http_addr()));
        let stop = Arc::new(AtomicBool::new(false));
        let loops: Vec<LoadLoop> = [&base_a, &base_b]
            .into_iter()
            .map(|base| LoadLoop::start(base.clone(), stop.clone()))
            .collect();

        let v2 = std::fs::read(fixture("probe-v2")).expect("probe-v2 fixture");
        // The step comes after 5 s: long enough for B to be seen at 20% first on a loaded
        // machine (it hears the start within a reconcile), short enough for the test.
        let path = "/v1/components/probe/deploy?canary=20&steps=60&step_every_ms=5000";
        let started = admin(&a, "POST", path, v2).await;
        assert_eq!(started.status, 200, "{}", started.body);
        assert_eq!(started.json()["action"], "canary");
        let v2_digest = started.json()["digest"].as_str().expect("digest").to_string();
        let on_b_at_20 = mosaic_tests::eventually(Duration::from_secs(10), || {
            canary_on(&b, "probe") == Some((v2_digest.clone(), 20.0))
        })
        .await;
        assert!(on_b_at_20, "host B runs the canary started through A, at its share");
        let cluster = admin(&b, "GET", "/v1/cluster", Vec::new()).await.json();
        assert_eq!(cluster["canaries"]["probe"]["digest"], v2_digest.as_str(), "{cluster}");

        // The step is taken once, by whichever host is first, and reaches both.
        let both_at_60 = mosaic_tests::eventually(Duration::from_secs(15), || {
            canary_on(&a, "probe").is_some_and(|(_, share)| share == 60.0)
                && canary_on(&b, "probe").is_some_and(|(_, share)| share == 60.0)
        })
        .await;
        assert!(
            both_at_60,
            "A: {:?}, B: {:?}",
            canary_on(&a, "probe"),
            canary_on(&b, "probe")
        );
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..60 {
            let answer = hello(&client(), &base_b).await.expect("b answers");
            seen.insert(if answer.contains("v2") { "v2" } else { "v1" });
        }
        assert_eq!(seen.len(), 2, "host B splits between both versions: {seen:?}");

        // Promoted through B: the canary is the live version of both hosts and the desired one.
        let promoted = admin(&b, "POST", "/v1/components/probe/promote", Vec::new()).await;
        assert_eq!(promoted.status, 200, "{}", promoted.body);
        let promoted_on_a = mosaic_tests::eventually(Duration::from_secs(10), || {
            canary_on(&a, "probe").is_none() && a.app().slot("probe").unwrap().live.load().digest.as_str() == v2_digest
        })
        .await;
        assert!(
            promoted_on_a,
            "host A promoted the canary too: {:?}",
            canary_on(&a, "probe")
        );
        let cluster = admin(&a, "GET", "/v1/cluster", Vec::new()).await.json();
        assert_eq!(cluster["desired"]["probe"], v2_digest.as_str(), "{cluster}");
        assert!(
            cluster["canaries"].as_object().is_some_and(|c| c.is_empty()),
            "{cluster}"
        );
        for base in [&base_a, &base_b] {
            assert!(hello(&client(), base).await.expect("answers").contains("v2"));
        }
        // And the way back from the promotion is the stable version, on every host.
        let rolled_back = admin(&a, "POST", "/v1/components/probe/rollback", Vec::new()).await;
        assert_eq!(rolled_back.status, 200, "{}", rolled_back.body);
        assert!(until_serving(&base_b, "v1", Duration::from_secs(20)).await.is_some());

        tokio::time::sleep(Duration::from_millis(300)).await;
        stop_and_check(&stop, loops).await;
        a.shutdown().await;
        b.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs PostgreSQL on 127.0.0.1:5432"]
    async fn every_hosts_errors_decide_a_canary_and_its_automatic_rollback_reaches_every_host() {
        require_postgres();
        let dir = AppDir::new(TWO_COMPONENTS);
        let settings = cluster_settings(&unique("cluster"));
        let a = dir.start_in(settings.clone(), None, "state-a").await;
        let b = dir.start_in(settings.clone(), None, "state-b").await;
        let (base_a, base_b) = (format!("http://{}", a.http_addr()), format!("http://{}", b.http_addr()));
        // Every request goes to the canary, which answers 500 everywhere; 20 are needed to judge.
        let broken = std::fs::read(fixture("probe-broken")).expect("probe-broken fixture");
        let path = "/v1/components/probe/deploy?canary=100&min_requests=20";
        let started = admin(&a, "POST", path, broken).await;
        assert_eq!(started.status, 200, "{}", started.body);
        assert!(
            mosaic_tests::eventually(Duration::from_secs(10), || canary_on(&b, "probe").is_some()).await,
            "host B runs the canary"
        );
        let fail_on = |base: String| async move {
            let mut failed = 0;
            for _ in 0..12 {
                failed += u32::from(hello(&client(), &base).await.is_err());
            }
            failed
        };
        assert_eq!(fail_on(base_a.clone()).await, 12, "the canary fails every request");
        // 12 failures of 20 needed: host A alone does not decide.
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert!(canary_on(&a, "probe").is_some(), "{:?}", last_canary_on(&a, "probe"));
        // Host B's own 12 are not 20 either; with A's, they are.
        let failed_on_b = fail_on(base_b.clone()).await;
        assert!(
            (8..12).contains(&failed_on_b),
            "B rolls back once the cluster's failures reach 20 ({failed_on_b} of B's failed)"
        );
        let ended_on_both = mosaic_tests::eventually(Duration::from_secs(10), || {
            [&a, &b].iter().all(|host| {
                canary_on(host, "probe").is_none()
                    && last_canary_on(host, "probe").is_some_and(|ended| ended.starts_with("auto_rollback"))
            })
        })
        .await;
        assert!(
            ended_on_both,
            "A: {:?}, B: {:?}",
            last_canary_on(&a, "probe"),
            last_canary_on(&b, "probe")
        );
        let why = last_canary_on(&a, "probe").unwrap_or_default();
        assert!(why.contains("requests failed"), "the reason reaches host A: {why}");
        for base in [&base_a, &base_b] {
            for _ in 0..10 {
                assert!(hello(&client(), base)
                    .await
                    .expect("the stable version answers")
                    .contains("v1"));
            }
        }
        for host in [&a, &b] {
            let metrics = get(&client(), &format!("http://{}/metrics", host.admin_addr()))
                .await
                .body;
            assert!(
                metrics.contains("mosaic_deploys_total{component=\"probe\",action=\"auto_rollback\",outcome=\"ok\"} 1"),
                "{metrics}"
            );
        }
        let cluster = admin(&b, "GET", "/v1/cluster", Vec::new()).await.json();
        assert!(
            cluster["canaries"].as_object().is_some_and(|c| c.is_empty()),
            "{cluster}"
        );
        a.shutdown().await;
        b.shutdown().await;
    }

    mod needs_rabbitmq {
        use super::*;

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        #[ignore = "needs PostgreSQL on 127.0.0.1:5432 and RabbitMQ on 127.0.0.1:5672"]
        async fn a_host_killed_and_restarted_under_load_loses_no_request_to_the_others_and_no_message() {
            require_postgres();
            require_service("RabbitMQ", "127.0.0.1:5672");
            const MESSAGES: usize = 600;
            let sink = Sink::start().await;
            sink.delay_ms(5);
            let dir = AppDir::new(&sink.manifest("jobs"));
            let namespace = unique("cluster");
            let config = dir.path.join("cluster.toml");
            std::fs::write(
                &config,
                format!(
                    "[cluster]\npostgres = \"{POSTGRES}\"\nnamespace = \"{namespace}\"\nreconcile_interval_ms = 500\nhost_timeout_ms = 3000\n\
                     [messaging]\nbroker = \"rabbitmq\"\nurl = \"{RABBITMQ_URL}\"\nnamespace = \"{namespace}\"\nconcurrency = 4\n"
                ),
            )
            .expect("config");
            let a = cluster_process(&dir, &config, "state-a");
            let b = cluster_process(&dir, &config, "state-b");
            let mut c = cluster_process(&dir, &config, "state-c");

            // A new version first, through host A: every host converges on it.
            let deployed = mosaic_cli(
                &dir,
                "state-a",
                &["deploy", "probe", &fixture("probe-v2").to_string_lossy()],
            );
            assert!(
                deployed.status.success(),
                "{}",
                String::from_utf8_lossy(&deployed.stderr)
            );
            for base in [&a.base, &b.base, &c.base] {
                assert!(
                    until_serving(base, "v2", Duration::from_secs(20)).await.is_some(),
                    "{base} on v2"
                );
            }

            // Requests to A and B, and messages published through them, while C is killed mid-stream.
            let stop = Arc::new(AtomicBool::new(false));
            let loops: Vec<LoadLoop> = [&a.base, &b.base]
                .into_iter()
                .map(|base| LoadLoop::start(base.clone(), stop.clone()))
                .collect();
            let publishers: Vec<_> = [a.base.clone(), b.base.clone()]
                .into_iter()
                .enumerate()
                .map(|(first, base)| {
                    tokio::spawn(async move {
                        let http = client();
                        for n in (first..MESSAGES).step_by(2) {
                            let reply = send(
                                &http,
                                "POST",
                                &format!("{base}/probe/publish?channel=jobs"),
                                format!("job-{n}"),
                            )
                            .await
                            .unwrap_or_else(|err| panic!("publish job-{n}: {err}"));
                            assert_eq!(reply.status, 200, "publish job-{n}: {}", reply.body);
                        }
                    })
                })
                .collect();
            assert!(
                sink.wait_for(Duration::from_secs(30), |s| s.handled_count() >= 100)
                    .await
            );
            c.kill_hard();
            for publisher in publishers {
                publisher.await.expect("publisher");
            }
            // C comes back with the same state directory, on the desired version from its first answer.
            let c = cluster_process(&dir, &config, "state-c");
            let first = hello(&client(), &c.base).await.expect("the restarted host answers");
            assert!(
                first.contains("v2"),
                "the restarted host serves the desired version at once: {first}"
            );

            assert!(
                sink.wait_for(Duration::from_secs(60), |s| s.handled_count() == MESSAGES)
                    .await,
                "{} of {MESSAGES} messages handled",
                sink.handled_count()
            );
            stop_and_check(&stop, loops).await;

            // `mosaic status` through any host shows all three on v2.
            let status = mosaic_cli(&dir, "state-b", &["status"]);
            let text = String::from_utf8_lossy(&status.stdout).to_string();
            assert!(status.status.success(), "{}", String::from_utf8_lossy(&status.stderr));
            assert!(text.contains("CLUSTER") && text.matches("yes").count() >= 3, "{text}");
            drop((a, b, c));
        }

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        #[ignore = "needs PostgreSQL on 127.0.0.1:5432 and RabbitMQ on 127.0.0.1:5672"]
        async fn subscribers_on_several_hosts_are_competing_consumers() {
            competing_consumers(
                mosaic::settings::BrokerKind::RabbitMQ,
                RABBITMQ_URL,
                "RabbitMQ",
                "127.0.0.1:5672",
            )
            .await;
        }
    }

    mod needs_redis {
        use super::*;

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        #[ignore = "needs PostgreSQL on 127.0.0.1:5432, Redis on 127.0.0.1:6379 and redis-cli"]
        async fn a_rate_limit_holds_across_hosts() {
            require_postgres();
            require_service("Redis", "127.0.0.1:6379");
            const LIMIT: usize = 10;
            // The reference shop on two hosts: the gateway's rate limit store on one Redis database of
            // this test's own, so that the count is shared by both hosts and by nobody else.
            let redis_db = 13;
            let flush = || {
                let flushed = std::process::Command::new("redis-cli")
                    .args(["-n", &redis_db.to_string(), "FLUSHDB"])
                    .output();
                assert!(flushed.is_ok_and(|out| out.status.success()), "redis-cli FLUSHDB");
            };
            let dir = std::env::temp_dir().join(unique("mosaic-cluster-shop"));
            std::fs::create_dir_all(&dir).expect("dir");
            let runtime_config = dir.join("runtime-config.toml");
            std::fs::write(
                &runtime_config,
                format!("[key_value_store.ratelimit]\ntype = \"redis\"\nurl = \"redis://127.0.0.1:6379/{redis_db}\"\n"),
            )
            .expect("runtime config");
            let manifest = workspace_root().join("spin.toml");
            let start = |state: &str| {
                let state = dir.join(state);
                MosaicProcess::start_with_env(
                    &workspace_root(),
                    &[
                        "-f",
                        &manifest.to_string_lossy(),
                        "up",
                        "--state-dir",
                        &state.to_string_lossy(),
                        "--runtime-config-file",
                        &runtime_config.to_string_lossy(),
                        "--cluster",
                        POSTGRES,
                    ],
                    &[("SPIN_VARIABLE_RATE_LIMIT_PER_MINUTE", "10")],
                )
            };
            let hosts = [start("state-a"), start("state-b")];
            let http = client();
            // Each host's deploy probe (GET /health at start) went through the gateway too: count
            // from zero.
            flush();
            // The window is a clock minute: if it turns during the burst, try again in the next one.
            for _ in 0..2 {
                let minute = mosaic::capability::messaging::now_unix_ms() / 60_000;
                let mut admitted = 0;
                for n in 0..3 * LIMIT {
                    let base = &hosts[n % 2].base;
                    let reply = get(&http, &format!("{base}/health")).await;
                    // Only a served request was admitted: an error answer must not pass for one.
                    match reply.status {
                        200 => admitted += 1,
                        429 => {}
                        status => panic!(
                            "request {n} to {base}/health: {status}, neither served nor refused: {}",
                            reply.body
                        ),
                    }
                }
                if minute == mosaic::capability::messaging::now_unix_ms() / 60_000 {
                    assert_eq!(admitted, LIMIT, "the limit of {LIMIT} a minute holds across two hosts");
                    let _ = std::fs::remove_dir_all(&dir);
                    return;
                }
                flush();
            }
            panic!("the minute turned during both bursts");
        }
    }

    mod needs_nats {
        use super::*;

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        #[ignore = "needs PostgreSQL on 127.0.0.1:5432 and NATS on 127.0.0.1:4222"]
        async fn subscribers_on_several_hosts_are_competing_consumers() {
            competing_consumers(
                mosaic::settings::BrokerKind::Nats,
                "nats://127.0.0.1:4222",
                "NATS",
                "127.0.0.1:4222",
            )
            .await;
        }
    }
}
