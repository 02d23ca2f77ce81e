//! The deploy pipeline through the `mosaic` CLI, as an operator uses it: bad deploys leave the
//! old version serving and exit non-zero naming the step and the reason; status and history.

use std::path::Path;
use std::process::Output;
use std::time::Duration;

use mosaic::settings::{ProbeSettings, Settings, StatusSet};
use mosaic_tests::{client, fixture, get, mosaic_bin, probed_settings, AppDir, TWO_COMPONENTS};

fn mosaic(dir: &Path, args: &[&str]) -> Output {
    let output = std::process::Command::new(mosaic_bin())
        .current_dir(dir)
        .args(args)
        .output()
        .expect("the mosaic binary runs");
    eprintln!(
        "mosaic {args:?} -> {}\nstdout: {}\nstderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    output
}

fn stderr(output: &Output) -> String {
    String::from_utf8_lossy(&output.stderr).to_string()
}

fn write(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path.to_string_lossy().to_string()
}

async fn assert_still_v1(url: &str) {
    assert_eq!(
        get(&client(), url).await.body,
        "hello from probe v1",
        "the old version keeps serving"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_deploys_name_the_step_and_keep_the_old_version() {
    let dir = AppDir::new(TWO_COMPONENTS);
    let host = dir.start(probed_settings()).await;
    let hello = format!("http://{}/probe/hello", host.http_addr());
    let path = dir.path.clone();
    let run = |args: Vec<String>| {
        let path = path.clone();
        async move {
            tokio::task::spawn_blocking(move || mosaic(&path, &args.iter().map(String::as_str).collect::<Vec<_>>()))
                .await
                .unwrap()
        }
    };
    let deploy = |file: String| run(vec!["deploy".into(), "probe".into(), file]);

    // Random bytes.
    let random: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    let out = deploy(write(&dir.path, "random.wasm", &random)).await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("step `validate`") && stderr(&out).contains("not WebAssembly"),
        "{}",
        stderr(&out)
    );
    assert_still_v1(&hello).await;

    // A core module instead of a component.
    let core = wat::parse_str("(module (func (export \"_start\")))").unwrap();
    let out = deploy(write(&dir.path, "core.wasm", &core)).await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("step `validate`") && stderr(&out).contains("core WebAssembly module"),
        "{}",
        stderr(&out)
    );
    assert_still_v1(&hello).await;

    // A truncated component.
    let whole = std::fs::read(fixture("probe-v2")).unwrap();
    let out = deploy(write(&dir.path, "truncated.wasm", &whole[..whole.len() / 2])).await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("step `validate`") && stderr(&out).contains("does not compile"),
        "{}",
        stderr(&out)
    );
    assert_still_v1(&hello).await;

    // An import outside the supported world.
    let foreign = wat::parse_str(r#"(component (import "acme:unknown/api" (instance (export "f" (func)))))"#).unwrap();
    let out = deploy(write(&dir.path, "foreign.wasm", &foreign)).await;
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("step `validate`")
            && err.contains("outside Mosaic's supported world")
            && err.contains("acme:unknown/api"),
        "{err}"
    );
    assert_still_v1(&hello).await;

    // A component that exports no HTTP handler.
    let silent = wat::parse_str("(component)").unwrap();
    let out = deploy(write(&dir.path, "silent.wasm", &silent)).await;
    assert!(!out.status.success());
    assert!(
        stderr(&out).contains("exports neither `wasi:http/handler@0.3.x`")
            && stderr(&out).contains("nor `wasi:http/incoming-handler@0.2.x`"),
        "{}",
        stderr(&out)
    );
    assert_still_v1(&hello).await;

    // A version that fails the probe it opted into (`[probe.probe]`).
    let out = deploy(fixture("probe-unhealthy").to_string_lossy().to_string()).await;
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("step `probe`") && err.contains("503") && err.contains("unhealthy on purpose"),
        "{err}"
    );
    assert_still_v1(&hello).await;

    // A file that does not exist, an unknown component, no host running for another manifest.
    let out = deploy("/nonexistent/x.wasm".into()).await;
    assert!(!out.status.success() && stderr(&out).contains("cannot read /nonexistent/x.wasm"));
    let out = run(vec![
        "deploy".into(),
        "ghost".into(),
        fixture("probe").to_string_lossy().to_string(),
    ])
    .await;
    assert!(
        !out.status.success() && stderr(&out).contains("--route"),
        "{}",
        stderr(&out)
    );

    // An import the component has no grant for is a warning, not a refusal: the probe imports
    // outbound HTTP, and a component added by deploy has no allowed hosts.
    let out = run(vec![
        "deploy".into(),
        "fresh".into(),
        fixture("probe").to_string_lossy().to_string(),
        "--route".into(),
        "/fresh/...".into(),
    ])
    .await;
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        stdout.contains("warning:") && stdout.contains("allowed_outbound_hosts is empty"),
        "{stdout}"
    );
    let fresh = get(&client(), &format!("http://{}/fresh/hello", host.http_addr())).await;
    assert_eq!(fresh.body, "hello from probe v1");

    // A good deploy, then status and history show it.
    let out = deploy(fixture("probe-v2").to_string_lossy().to_string()).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(get(&client(), &hello).await.body, "hello from probe v2");
    let out = run(vec!["status".into()]).await;
    assert!(out.status.success());
    let status = String::from_utf8_lossy(&out.stdout).to_string();
    for expected in ["COMPONENT", "probe", "plain", "fresh", "/probe/..."] {
        assert!(status.contains(expected), "{status}");
    }
    let out = run(vec!["status".into(), "--json".into()]).await;
    let json: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let probe = json.as_array().unwrap().iter().find(|c| c["name"] == "probe").unwrap();
    assert!(probe["requests"].as_u64().unwrap() >= 7, "{probe}");
    let out = run(vec!["history".into(), "probe".into()]).await;
    let history = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        history.contains("manifest") && history.contains("deploy") && history.contains("<- live"),
        "{history}"
    );

    let out = run(vec!["rollback".into(), "probe".into()]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_still_v1(&hello).await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn file_over_the_size_cap_is_refused_at_receive() {
    let dir = AppDir::new(TWO_COMPONENTS);
    let mut settings = Settings::default();
    settings.limits.max_component_bytes = 100_000;
    let host = dir.start(settings).await;
    let path = dir.path.clone();
    let big = fixture("probe-v2");
    assert!(std::fs::metadata(&big).unwrap().len() > 100_000);
    let out = tokio::task::spawn_blocking(move || mosaic(&path, &["deploy", "probe", &big.to_string_lossy()]))
        .await
        .unwrap();
    assert!(!out.status.success());
    let err = stderr(&out);
    assert!(
        err.contains("step `receive`") && err.contains("limits.max_component_bytes") && err.contains("413"),
        "{err}"
    );
    assert_still_v1(&format!("http://{}/probe/hello", host.http_addr())).await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_needs_the_token() {
    let dir = AppDir::new(TWO_COMPONENTS);
    let host = dir.start(Settings::default()).await;
    let client = client();
    let url = format!("http://{}/v1/status", host.admin_addr());
    assert_eq!(get(&client, &url).await.status, 401);
    let wrong = http::Request::get(&url)
        .header("authorization", "Bearer not-the-token")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    assert_eq!(client.request(wrong).await.unwrap().status(), 401);
    let right = http::Request::get(&url)
        .header("authorization", format!("Bearer {}", host.admin_token()))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    assert_eq!(client.request(right).await.unwrap().status(), 200);
    assert_eq!(
        get(&client, &format!("http://{}/healthz", host.admin_addr()))
            .await
            .status,
        200
    );
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(dir.state_dir().join("admin-token"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }
    host.shutdown().await;
}

/// Whether the metrics page shows `line` within five seconds.
async fn metrics_show(client: &mosaic_tests::HttpClient, metrics_url: &str, line: &str) -> bool {
    mosaic_tests::wait_until(Duration::from_secs(5), || async {
        get(client, metrics_url).await.body.contains(line)
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_errors_and_deploys() {
    let dir = AppDir::new(TWO_COMPONENTS);
    let host = dir.start(probed_settings()).await;
    let client = client();
    let base = format!("http://{}", host.http_addr());
    for _ in 0..3 {
        get(&client, &format!("{base}/probe/hello")).await;
    }
    assert_eq!(get(&client, &format!("{base}/probe/trap")).await.status, 500);
    host.pipeline()
        .deploy(mosaic_tests::deploy_request("probe", "probe-unhealthy"))
        .await
        .unwrap_err();
    let version = host.app().slot("probe").unwrap().live.load().short_digest().to_string();
    let metrics = get(&client, &format!("http://{}/metrics", host.admin_addr())).await;
    assert_eq!(metrics.status, 200);
    let labels = format!("component=\"probe\",version=\"{version}\"");
    let text = metrics.body;
    assert!(text.contains(&format!("mosaic_requests_total{{{labels}}} 4")), "{text}");
    assert!(
        text.contains(&format!("mosaic_request_errors_total{{{labels}}} 1")),
        "{text}"
    );
    assert!(
        text.contains(&format!("mosaic_request_duration_seconds_count{{{labels}}} 4")),
        "{text}"
    );
    assert!(
        text.contains("mosaic_deploys_total{component=\"probe\",action=\"manifest\",outcome=\"ok\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("mosaic_deploys_total{component=\"probe\",action=\"deploy\",outcome=\"probe\"} 1"),
        "{text}"
    );
    assert!(
        text.contains(&format!("mosaic_requests_in_flight{{{labels}}} 0")),
        "{text}"
    );
    // The instance of a request (or of the refused version's probe) is dropped by the task
    // that ran the guest, which may end a moment after the answer's last byte.
    let metrics_url = format!("http://{}/metrics", host.admin_addr());
    let idle = metrics_show(&client, &metrics_url, "mosaic_instances_live 0").await;
    assert!(idle, "no instance outlives its request or probe");
    // A request in progress is one live instance, gone when it ends.
    let slow = {
        let (client, url) = (client.clone(), format!("{base}/probe/slow?ms=1500"));
        tokio::spawn(async move { get(&client, &url).await })
    };
    let live_seen = metrics_show(&client, &metrics_url, "mosaic_instances_live 1").await;
    assert!(live_seen, "the slow request's instance is counted");
    assert_eq!(slow.await.expect("slow request").status, 200);
    let gone = metrics_show(&client, &metrics_url, "mosaic_instances_live 0").await;
    assert!(gone, "and no longer once it ended");
    host.shutdown().await;
}

/// A rollback to the manifest's version repeats that version's digest in the journal: only the
/// rollback, the deployment serving now, is the live one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_after_a_rollback_marks_only_the_live_deployment() {
    let dir = AppDir::new(TWO_COMPONENTS);
    let host = dir.start(Settings::default()).await;
    let path = dir.path.clone();
    let run = |args: Vec<String>| {
        let path = path.clone();
        async move {
            tokio::task::spawn_blocking(move || mosaic(&path, &args.iter().map(String::as_str).collect::<Vec<_>>()))
                .await
                .unwrap()
        }
    };
    let v2 = fixture("probe-v2").to_string_lossy().to_string();
    let out = run(vec!["deploy".into(), "probe".into(), v2]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let out = run(vec!["rollback".into(), "probe".into()]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    assert_still_v1(&format!("http://{}/probe/hello", host.http_addr())).await;

    let out = run(vec!["history".into(), "probe".into()]).await;
    assert!(out.status.success(), "{}", stderr(&out));
    let history = String::from_utf8_lossy(&out.stdout).to_string();
    let lines: Vec<&str> = history.lines().collect();
    assert_eq!(lines.len(), 3, "manifest, deploy, rollback: {history}");
    assert_eq!(history.matches("<- live").count(), 1, "{history}");
    assert!(
        lines[2].contains("rollback") && lines[2].ends_with("<- live"),
        "{history}"
    );
    host.shutdown().await;
}

/// The ledger writes a row for every request it handles, whatever the path, as most real
/// handlers have a side effect. The plain component sorts last, so it loads after the others.
const LEDGER_APP: &str = r#"
spin_manifest_version = 2
[application]
name = "ledger"
[[trigger.http]]
route = "/ledger/..."
component = "ledger"
[[trigger.http]]
route = "/caller/..."
component = "caller"
[[trigger.http]]
route = "/zz/..."
component = "zz-plain"
[component.ledger]
source = "{ledger}"
sqlite_databases = ["default"]
[component.caller]
source = "{probe}"
allowed_outbound_hosts = ["http://*.spin.internal"]
[component.zz-plain]
source = "{plain}"
"#;

/// The same code under another digest: a custom section appended to the component.
fn another_build(bytes: &[u8], tag: u8) -> Vec<u8> {
    let name = b"mosaic-test-build";
    let mut out = bytes.to_vec();
    out.push(0); // custom section
    out.push((1 + name.len() + 1) as u8);
    out.push(name.len() as u8);
    out.extend_from_slice(name);
    out.push(tag);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_runs_only_for_the_requests_sent_to_it() {
    let dir = AppDir::new(LEDGER_APP);
    let host = dir.start(Settings::default()).await;
    let base = format!("http://{}", host.http_addr());
    let client = client();
    let mut sent = Vec::new();
    let mut send = |path: &str| {
        sent.push(path.to_string());
        let url = format!("{base}/ledger{path}");
        let client = client.clone();
        async move { get(&client, &url).await }
    };
    send("/a").await;
    let ledger = std::fs::read(fixture("ledger")).unwrap();
    for tag in 1..=2u8 {
        let report = host
            .pipeline()
            .deploy(mosaic::deploy::DeployRequest::deploy(
                "ledger",
                another_build(&ledger, tag),
                None,
            ))
            .await
            .expect("the swap");
        assert!(report.warnings.is_empty(), "{:?}", report.warnings);
        send(&format!("/after-swap-{tag}")).await;
    }
    // Rollback and a restart load versions again: still no request of the host's own.
    host.pipeline().rollback("ledger").await.unwrap();
    host.shutdown().await;
    let host = dir.start(Settings::default()).await;
    let base = format!("http://{}", host.http_addr());
    let mut sent_after = sent.clone();
    sent_after.push("/after-restart".into());
    let reply = get(&client, &format!("{base}/ledger/after-restart")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(
        reply.body.lines().collect::<Vec<_>>(),
        sent_after,
        "exactly one row per request sent, in order; no start-up load, swap, rollback or restart ran the handler"
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_opted_in_probe_runs_once_every_component_is_loaded_and_gates_deploys() {
    let dir = AppDir::new(LEDGER_APP);
    let mut settings = Settings::default();
    // `caller`'s probe calls `zz-plain`, which loads after it: it must pass at start-up.
    settings.probe.insert(
        "caller".into(),
        ProbeSettings::path("/caller/outbound?url=http://zz-plain.spin.internal/zz/"),
    );
    settings.probe.insert(
        "ledger".into(),
        ProbeSettings {
            statuses: vec![StatusSet::Range("200-299".into()), StatusSet::One(404)],
            ..ProbeSettings::path("/ledger/probe")
        },
    );
    let host = dir.start(settings).await;
    assert_eq!(host.pipeline().probe_live_versions().await, Vec::<String>::new());
    let base = format!("http://{}", host.http_addr());
    let client = client();
    // The ledger's probe ran twice (at start and just now), and only those.
    let reply = get(&client, &format!("{base}/ledger/request")).await;
    assert_eq!(reply.body.lines().collect::<Vec<_>>(), ["/probe", "/probe", "/request"]);
    host.shutdown().await;

    // A probe that fails refuses the deploy; at start-up it is a warning, and so is a probe of
    // a component the application does not have.
    let mut settings = Settings::default();
    settings.probe.insert(
        "caller".into(),
        ProbeSettings {
            timeout_ms: Some(300),
            ..ProbeSettings::path("/caller/slow?ms=3000")
        },
    );
    settings.probe.insert(
        "ledger".into(),
        ProbeSettings {
            statuses: vec![StatusSet::One(204)],
            ..ProbeSettings::path("/ledger/probe")
        },
    );
    settings.probe.insert("ghost".into(), ProbeSettings::path("/health"));
    let host = dir.start(settings).await;
    let failures = host.pipeline().probe_live_versions().await;
    assert_eq!(failures.len(), 3, "{failures:?}");
    assert!(
        failures[0].contains("`caller`") && failures[0].contains("300ms"),
        "{failures:?}"
    );
    assert!(
        failures[1].contains("`[probe.ghost]`") && failures[1].contains("caller, ledger, zz-plain"),
        "{failures:?}"
    );
    assert!(
        failures[2].contains("GET /ledger/probe answered 200 OK, which `[probe.ledger]` does not pass"),
        "{failures:?}"
    );
    let ledger = std::fs::read(fixture("ledger")).unwrap();
    let live = host
        .app()
        .slot("ledger")
        .unwrap()
        .live
        .load()
        .short_digest()
        .to_string();
    let err = host
        .pipeline()
        .deploy(mosaic::deploy::DeployRequest::deploy(
            "ledger",
            another_build(&ledger, 9),
            None,
        ))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("probe") && err.contains("does not pass"), "{err}");
    assert_eq!(
        host.app().slot("ledger").unwrap().live.load().short_digest(),
        live,
        "still the old version"
    );
    host.shutdown().await;
}
