//! The adversarial suite: hostile guests, capability escapes, malformed input to the admin API,
//! the CLI and the HTTP listener, and backends that go away mid-run. Every case checks that the
//! host keeps serving the others and that nothing acknowledged is lost.
//!
//! An item that another test file already covers well is named here and not repeated; every
//! other item is a test below (`adversarial.rs::NAME`).
//!
//! | item | covered by |
//! |---|---|
//! | 1. hostile guest: trap | hostile.rs::trap_loop_and_memory_hog_fail_alone |
//! | 1. endless loop | hostile.rs::trap_loop_and_memory_hog_fail_alone (504, neighbours answer meanwhile) |
//! | 1. memory growth past the cap | hostile.rs::trap_loop_and_memory_hog_fail_alone |
//! | 1. deep recursion | deep_recursion_traps_alone |
//! | 1. a multi-megabyte response | hostile.rs::oversized_response_is_cut |
//! | 1. a guest that never reads its body | a_guest_that_never_reads_its_body |
//! | 1. 1,000 concurrent slow requests | a_thousand_slow_requests_at_once |
//! | 2. outbound to a host not allowed | http_trigger.rs::outbound_allow_list_and_in_process_chaining, http_trigger.rs::private_component_is_reachable_only_in_process |
//! | 2. an allowed name that resolves to loopback | allowed_name_that_resolves_to_loopback |
//! | 2. a spoofed `Host` header aiming at another component | spoofed_host_reaches_no_private_component |
//! | 2. key-value outside the grants | key_value.rs::stores_are_private_to_their_grants |
//! | 2. SQL outside the grants | sqlite.rs::databases_are_private_durable_and_lose_no_insert, postgres.rs::grants_concurrency_and_a_dead_server; Redis client: key_value.rs::spin_redis_client_data_operations |
//! | 2. a file outside `files` | http_trigger.rs::files_and_environment_grants (absolute paths, `/../`), files_outside_the_grant_stay_out (relative paths, dot segments, mounts) |
//! | 3. random bytes, a truncated component, a core module (CLI) | deploy_cli.rs::bad_deploys_name_the_step_and_keep_the_old_version |
//! | 3. random bytes and other malformed deploys on the admin API | admin_api_refuses_malformed_deploys |
//! | 3. an oversized upload | deploy_cli.rs::file_over_the_size_cap_is_refused_at_receive (declared length), admin_api_refuses_malformed_deploys (chunked) |
//! | 3. no token or a wrong token (401) | deploy_cli.rs::admin_api_needs_the_token (GET), admin_api_refuses_every_wrong_token (deploy, rollback, dead letters) |
//! | 3. a manifest with a wrong type, a duplicate route | manifest/src/manifest.rs tests wrong_type_names_the_key_and_line and duplicate_route; mosaic_up_refuses_a_malformed_manifest (the CLI) |
//! | 3. a missing source file | cli_up.rs::manifest_error_exits_non_zero_naming_file_and_key |
//! | 4. oversized headers (431) | malformed_requests_get_4xx |
//! | 4. an oversized body (413) | http_trigger.rs::oversized_request_body_is_refused_with_413 (declared length), an_undeclared_oversized_body_gets_413 (chunked) |
//! | 4. slow clients | slow_clients_are_cut_off_without_blocking_others |
//! | 4. invalid methods and paths | malformed_requests_get_4xx |
//! | 5. PostgreSQL stopped and restarted | postgres.rs::a_server_that_goes_away_gives_errors_then_service |
//! | 5. Redis stopped and restarted | key_value.rs::redis_stopped_and_restarted_gives_errors_then_service |
//! | 5. RabbitMQ stopped and restarted, no acked message lost | needs_rabbitmq::rabbitmq_cut_mid_stream_loses_no_acked_message |
//! | 6. fuzzing: manifest parser, route matching, outbound host patterns | fuzz/fuzz_targets/*.rs, run by cargo xtask fuzz (CI: 20 s each) |
//!
//! Also near: messaging.rs::a_broker_that_is_down_gives_the_publisher_an_error (a broker down
//! from the start) and messaging_crash.rs (the host itself killed with SIGKILL mid-stream).

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use mosaic::settings::{BrokerKind, MessagingSettings, Settings};
use mosaic_tests::sink::Sink;
use mosaic_tests::{
    admin_request as admin, client, eventually, get, mosaic_bin, raw_exchange, require_service, send, unique, AppDir,
    HttpClient, LogCapture, TcpRelay, TWO_COMPONENTS,
};

/// Requests in flight on the live version of `component`.
fn in_flight(host: &mosaic::Host, component: &str) -> u64 {
    host.app().slot(component).expect("component").live.load().in_flight()
}

/// Both components of [`TWO_COMPONENTS`] answer.
async fn neighbours_answer(client: &HttpClient, base: &str) {
    let plain = get(client, &format!("{base}/plain")).await;
    assert_eq!(plain.status, 200, "the neighbour answers: {}", plain.body);
    let probe = get(client, &format!("{base}/probe/hello")).await;
    assert_eq!(probe.status, 200, "the component itself answers again: {}", probe.body);
}

// ---------------------------------------------------------------------------------------------
// 1. Hostile guests

#[test]
fn deep_recursion_traps_alone() {
    LogCapture::run(deep_recursion_traps_alone_with_logs);
}

async fn deep_recursion_traps_alone_with_logs(logs: LogCapture) {
    let dir = AppDir::new(TWO_COMPONENTS);
    let host = dir.start(Settings::default()).await;
    let base = format!("http://{}", host.http_addr());
    let client = client();

    let shallow = get(&client, &format!("{base}/probe/recurse?depth=1000")).await;
    assert_eq!(
        (shallow.status, shallow.body.as_str()),
        (200, "recursed 1000: 500500"),
        "a recursion that fits its stack answers"
    );

    // Four recursions without end at once: each exhausts its own stack and traps, and the
    // neighbours answer meanwhile.
    let deep: Vec<_> = (0..4)
        .map(|_| {
            let (client, url) = (client.clone(), format!("{base}/probe/recurse"));
            tokio::spawn(async move { get(&client, &url).await })
        })
        .collect();
    neighbours_answer(&client, &base).await;
    for task in deep {
        let reply = task.await.expect("request task");
        assert_eq!(reply.status, 500, "{}", reply.body);
        assert_eq!(reply.json()["error"], "component trapped");
    }
    neighbours_answer(&client, &base).await;
    assert!(eventually(Duration::from_secs(5), || in_flight(&host, "probe") == 0).await);
    let text = logs.text();
    assert!(
        text.contains("request failed") && text.contains("component `probe` trapped"),
        "{text}"
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_guest_that_never_reads_its_body() {
    // `plain` answers without ever reading the request body.
    let dir = AppDir::new(TWO_COMPONENTS);
    let host = dir.start(Settings::default()).await;
    let addr = host.http_addr();
    let base = format!("http://{addr}");
    let client = client();

    // 8 MiB (under the 10 MiB cap), all sent at once.
    let body = vec![b'x'; 8 << 20];
    let mut request = format!(
        "POST /plain HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    request.extend_from_slice(&body);
    let answer = raw_exchange(addr, &request, Duration::from_secs(20)).await;
    assert_eq!(answer.status(), Some(200), "{}", answer.text);
    assert!(answer.text.contains("plain component saw /plain"), "{}", answer.text);
    assert!(
        answer.closed,
        "the host ends the exchange instead of waiting for the body"
    );

    // A body that is declared but never comes: the answer does not wait for it either.
    let stalled = b"POST /plain HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n0123456789";
    let answer = raw_exchange(addr, stalled, Duration::from_secs(20)).await;
    assert_eq!(answer.status(), Some(200), "{}", answer.text);
    assert!(answer.closed, "a stalled body holds no connection open");

    // Several at once, with the neighbour answering meanwhile.
    let uploads: Vec<_> = (0..4)
        .map(|_| {
            let request = request.clone();
            tokio::spawn(async move { raw_exchange(addr, &request, Duration::from_secs(20)).await })
        })
        .collect();
    neighbours_answer(&client, &base).await;
    for upload in uploads {
        let answer = upload.await.expect("upload task");
        assert_eq!(answer.status(), Some(200), "{}", answer.text);
    }
    assert!(eventually(Duration::from_secs(5), || in_flight(&host, "plain") == 0).await);
    neighbours_answer(&client, &base).await;
    host.shutdown().await;
}

/// Fires `count` requests for `/probe/slow?ms=MS` at once; while they run (once `busy`
/// requests of the probe are in flight), the neighbour must answer every time. Returns how
/// many answers had each status and `error`.
async fn slow_storm(host: &mosaic::Host, count: usize, ms: u64, busy: u64) -> BTreeMap<(u16, String), usize> {
    let base = format!("http://{}", host.http_addr());
    let client = client();
    let started = Instant::now();
    let storm: Vec<_> = (0..count)
        .map(|_| {
            let (client, url) = (client.clone(), format!("{base}/probe/slow?ms={ms}"));
            tokio::spawn(async move { send(&client, "GET", &url, Bytes::new()).await })
        })
        .collect();
    assert!(
        eventually(Duration::from_secs(30), || in_flight(host, "probe") >= busy).await,
        "the storm never got {busy} requests running"
    );
    for _ in 0..10 {
        let neighbour = get(&client, &format!("{base}/plain")).await;
        assert_eq!(
            neighbour.status, 200,
            "the neighbour answers while the probe is flooded: {}",
            neighbour.body
        );
    }
    let mut outcomes = BTreeMap::new();
    for request in storm {
        let reply = request
            .await
            .expect("request task")
            .unwrap_or_else(|err| panic!("every request gets an answer: {err}"));
        let error = match reply.status {
            200 => {
                assert_eq!(reply.body, format!("v1 slept {ms}ms"));
                String::new()
            }
            503 => reply.json()["error"].as_str().unwrap_or("").to_string(),
            other => panic!("a slow request answered {other}: {}", reply.body),
        };
        *outcomes.entry((reply.status, error)).or_insert(0) += 1;
    }
    // One after another they would take `count` times `ms` (300 s and more).
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "{count} slow requests took {:?}",
        started.elapsed()
    );
    assert!(eventually(Duration::from_secs(5), || in_flight(host, "probe") == 0).await);
    neighbours_answer(&client, &base).await;
    outcomes
}

#[test]
fn a_thousand_slow_requests_at_once() {
    LogCapture::run(a_thousand_slow_requests_at_once_with_logs);
}

async fn a_thousand_slow_requests_at_once_with_logs(logs: LogCapture) {
    // With the documented defaults (a pool of 1,000 instances): every request is answered, by
    // the guest or with a 503, and a sleeping guest holds no thread.
    let dir = AppDir::new(TWO_COMPONENTS);
    let host = dir.start(Settings::default()).await;
    let outcomes = slow_storm(&host, 1000, 300, 50).await;
    eprintln!("default pool: {outcomes:?}");
    assert!(outcomes.get(&(200, String::new())).copied().unwrap_or(0) > 0);
    host.shutdown().await;

    // With a pool of 100, the flood is larger than the pool. One component may take only 3/4
    // of it (http.max_in_flight_per_component), so the neighbour still finds an instance.
    let refusals_logged_before = logs.text().matches("requests refused with 503").count();
    let mut settings = Settings::default();
    settings.limits.max_concurrent_instances = 100;
    let host = dir.start(settings).await;
    let outcomes = slow_storm(&host, 1000, 1000, 75).await;
    eprintln!("pool of 100: {outcomes:?}");
    let busy = outcomes.get(&(503, "component busy".to_string())).copied().unwrap_or(0);
    assert!(busy > 0, "beyond its share the component answers 503: {outcomes:?}");
    // A flood of refusals is a warning a second with a count, not a log line per request.
    let refusals_logged = logs.text().matches("requests refused with 503").count() - refusals_logged_before;
    assert!(
        refusals_logged >= 1 && refusals_logged < busy / 10,
        "{refusals_logged} log lines for {busy} refusals"
    );
    assert!(
        outcomes.get(&(200, String::new())).copied().unwrap_or(0) >= 75,
        "{outcomes:?}"
    );
    host.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 2. Capability escapes

/// A local HTTP server that counts the requests that reach it.
async fn counting_server() -> (u16, Arc<std::sync::atomic::AtomicUsize>) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("address").port();
    let hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = hits.clone();
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::spawn(async move {
                let mut buffer = [0u8; 8192];
                let _ = stream.read(&mut buffer).await;
                let _ = stream
                    .write_all(b"HTTP/1.1 200 OK\r\ncontent-length: 12\r\nconnection: close\r\n\r\nlocal server")
                    .await;
            });
        }
    });
    (port, hits)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_name_that_resolves_to_loopback() {
    // Mosaic grants outbound access by name, as Spin does, and resolves a granted name
    // normally: `localhost` granted reaches the local server. It does not refuse private or
    // loopback addresses as such; what protects them is that nothing else is granted.
    let (port, hits) = counting_server().await;
    let dir = AppDir::new(&format!(
        r#"
spin_manifest_version = 2
[application]
name = "loopback"
[[trigger.http]]
route = "/granted/..."
component = "granted"
[[trigger.http]]
route = "/other/..."
component = "other"
[component.granted]
source = "{{probe}}"
allowed_outbound_hosts = ["http://localhost:{port}"]
[component.other]
source = "{{probe}}"
allowed_outbound_hosts = ["http://example.com"]
"#
    ));
    let host = dir.start(Settings::default()).await;
    let base = format!("http://{}", host.http_addr());
    let client = client();
    let outbound = |component: &str, url: String| {
        let (client, request) = (client.clone(), format!("{base}/{component}/outbound?url={url}"));
        async move { get(&client, &request).await }
    };

    let granted = outbound("granted", format!("http://localhost:{port}/")).await;
    assert_eq!(
        (granted.status, granted.body.as_str()),
        (200, "200 local server"),
        "a granted name reaches what it resolves to, loopback included"
    );
    assert_eq!(hits.load(std::sync::atomic::Ordering::SeqCst), 1);

    // The same server under any other name or port is not granted, although it is loopback.
    let refused = [
        ("granted", format!("http://127.0.0.1:{port}/")),
        ("granted", format!("http://[::1]:{port}/")),
        ("granted", format!("http://0.0.0.0:{port}/")),
        ("granted", format!("http://localhost:{}/", port.wrapping_add(1))),
        ("granted", format!("https://localhost:{port}/")),
        ("granted", format!("http://localhost:{port}@127.0.0.1:{port}/")),
        ("other", format!("http://localhost:{port}/")),
        ("other", format!("http://127.0.0.1:{port}/")),
    ];
    for (component, url) in refused {
        let reply = outbound(component, url.clone()).await;
        assert_eq!(reply.status, 502, "{component} -> {url}: {}", reply.body);
        assert!(
            reply.body.contains("HttpRequestDenied"),
            "{component} -> {url}: {}",
            reply.body
        );
    }
    assert_eq!(
        hits.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "no refused request reached the server"
    );
    assert_eq!(get(&client, &format!("{base}/other/hello")).await.status, 200);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spoofed_host_reaches_no_private_component() {
    let dir = AppDir::new(
        r#"
spin_manifest_version = 2
[application]
name = "spoof"
[[trigger.http]]
route = "/probe/..."
component = "probe"
[[trigger.http]]
route = { private = true }
component = "secret"
[component.probe]
source = "{probe}"
allowed_outbound_hosts = ["http://secret.spin.internal"]
[component.secret]
source = "{plain}"
"#,
    );
    let host = dir.start(Settings::default()).await;
    let addr = host.http_addr();
    let secret_requests = || {
        host.app()
            .slot("secret")
            .expect("secret")
            .stats
            .requests
            .load(std::sync::atomic::Ordering::SeqCst)
    };
    // Routing is by path: no Host header, absolute URI or forwarding header picks a component.
    let spoofs: [(&str, u16); 7] = [
        ("GET / HTTP/1.1\r\nHost: secret.spin.internal\r\n", 404),
        ("GET /secret HTTP/1.1\r\nHost: secret.spin.internal\r\n", 404),
        ("GET /x HTTP/1.1\r\nHost: self\r\n", 404),
        (
            "GET http://secret.spin.internal/ HTTP/1.1\r\nHost: secret.spin.internal\r\n",
            404,
        ),
        (
            "GET / HTTP/1.1\r\nHost: x\r\nX-Forwarded-Host: secret.spin.internal\r\n",
            404,
        ),
        ("GET /probe/hello HTTP/1.1\r\nHost: secret.spin.internal\r\n", 200),
        (
            "GET http://secret.spin.internal/probe/hello HTTP/1.1\r\nHost: secret.spin.internal\r\n",
            200,
        ),
    ];
    for (head, status) in spoofs {
        let request = format!("{head}Connection: close\r\n\r\n");
        let answer = raw_exchange(addr, request.as_bytes(), Duration::from_secs(10)).await;
        assert_eq!(answer.status(), Some(status), "{head:?}: {}", answer.text);
        assert!(
            !answer.text.contains("plain component saw"),
            "{head:?}: {}",
            answer.text
        );
        if status == 200 {
            assert!(answer.text.contains("hello from probe v1"), "{}", answer.text);
        }
    }
    assert_eq!(secret_requests(), 0, "no client request reached the private component");

    // In-process, through its grant, the probe reaches it.
    let chained = get(
        &client(),
        &format!("http://{addr}/probe/outbound?url=http://secret.spin.internal/x"),
    )
    .await;
    assert_eq!(chained.body, "200 plain component saw /x");
    assert_eq!(secret_requests(), 1);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_outside_the_grant_stay_out() {
    let dir = AppDir::new(
        r#"
spin_manifest_version = 2
[application]
name = "files"
[[trigger.http]]
route = "/granted/..."
component = "granted"
[[trigger.http]]
route = "/plain"
component = "plain"
[component.granted]
source = "{probe}"
files = [{ source = "assets", destination = "/data" }]
[component.plain]
source = "{plain}"
"#,
    );
    std::fs::create_dir_all(dir.path.join("assets/inner")).unwrap();
    std::fs::write(dir.path.join("assets/a.txt"), "asset").unwrap();
    std::fs::write(dir.path.join("assets/inner/b.txt"), "inner").unwrap();
    std::fs::write(dir.path.join("secret.txt"), "TOP-SECRET-BESIDE-SPIN-TOML").unwrap();
    let host = dir.start(Settings::default()).await;
    let base = format!("http://{}", host.http_addr());
    let client = client();
    let read = |path: &str| {
        let (client, url) = (client.clone(), format!("{base}/granted/file?path={path}"));
        async move { get(&client, &url).await }
    };
    assert_eq!(read("/data/a.txt").await.body, "asset");
    assert_eq!(
        read("data/inner/../a.txt").await.body,
        "asset",
        "dot segments inside the grant resolve"
    );

    let escapes = [
        "../../etc/passwd",
        "../secret.txt",
        "data/../../secret.txt",
        "/data/../../secret.txt",
        "/data/inner/../../../secret.txt",
        "/./../secret.txt",
        "..",
        "../../../../../../../../etc/shadow",
        "//etc/passwd",
        "/proc/self/environ",
        "/data/../../../../proc/self/environ",
    ];
    for path in escapes {
        let reply = read(path).await;
        assert_eq!(reply.status, 404, "{path}: {}", reply.body);
        for leaked in ["TOP-SECRET", "root:", "PATH="] {
            assert!(!reply.body.contains(leaked), "{path} leaked: {}", reply.body);
        }
    }
    assert_eq!(get(&client, &format!("{base}/plain")).await.status, 200);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symlink_in_a_granted_directory_leaks_nothing() {
    let dir = AppDir::new(
        r#"
spin_manifest_version = 2
[application]
name = "symlink"
[[trigger.http]]
route = "/..."
component = "granted"
[component.granted]
source = "{probe}"
files = [{ source = "assets", destination = "/" }]
"#,
    );
    std::fs::create_dir_all(dir.path.join("assets")).unwrap();
    std::fs::write(dir.path.join("assets/real.txt"), "granted asset").unwrap();
    std::fs::write(dir.path.join("secret.txt"), "TOP-SECRET-BESIDE-SPIN-TOML").unwrap();
    std::os::unix::fs::symlink(dir.path.join("secret.txt"), dir.path.join("assets/link.txt")).unwrap();
    let host = dir.start(Settings::default()).await;
    // A real file of the grant is served first: the refusal below is then about the link, not a
    // grant that serves nothing at all.
    let real = get(&client(), &format!("http://{}/file?path=/real.txt", host.http_addr())).await;
    assert_eq!(
        (real.status, real.body.as_str()),
        (200, "granted asset"),
        "the granted directory is served"
    );
    let reply = get(&client(), &format!("http://{}/file?path=/link.txt", host.http_addr())).await;
    assert!(!reply.body.contains("TOP-SECRET"), "{}", reply.body);
    host.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 3. Malformed input to the admin API and the CLI

fn probe_digest(host: &mosaic::Host) -> String {
    host.app().slot("probe").expect("probe").live.load().digest.to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_refuses_every_wrong_token() {
    let dir = AppDir::new(TWO_COMPONENTS);
    let host = dir.start(Settings::default()).await;
    let base = format!("http://{}", host.http_addr());
    let token = host.admin_token().to_string();
    let before = probe_digest(&host);
    let v2 = std::fs::read(mosaic_tests::fixture("probe-v2")).unwrap();

    let wrong = [
        None,
        Some(String::new()),
        Some("Bearer".to_string()),
        Some("Bearer ".to_string()),
        Some("Bearer not-the-token".to_string()),
        Some(format!("Bearer {token}x")),
        Some(format!("Bearer {}", &token[..token.len() - 1])),
        Some(format!("Bearer  {token}")),
        Some(format!("Basic {token}")),
        Some(token.clone()),
    ];
    for authorization in &wrong {
        for (method, path, body) in [
            ("POST", "/v1/components/probe/deploy", v2.clone()),
            ("POST", "/v1/components/fresh/deploy?route=/fresh/...", v2.clone()),
            ("POST", "/v1/components/probe/rollback", vec![]),
            ("POST", "/v1/dlq/replay", vec![]),
            ("GET", "/v1/dlq", vec![]),
            ("GET", "/v1/status", vec![]),
        ] {
            let reply = admin(&host, method, path, authorization.as_deref(), body).await;
            assert_eq!(
                reply.status, 401,
                "{method} {path} with {authorization:?}: {}",
                reply.body
            );
            assert_eq!(reply.json()["error"], "unauthorized");
        }
    }
    // Nothing was deployed, not even attempted.
    assert_eq!(probe_digest(&host), before);
    assert!(host.app().slot("fresh").is_none());
    let metrics = get(&client(), &format!("http://{}/metrics", host.admin_addr()))
        .await
        .body;
    assert!(!metrics.contains("action=\"deploy\""), "{metrics}");
    assert_eq!(
        get(&client(), &format!("{base}/probe/hello")).await.body,
        "hello from probe v1"
    );

    // The right token works.
    let reply = admin(&host, "GET", "/v1/status", Some(&format!("Bearer {token}")), vec![]).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_refuses_malformed_deploys() {
    let dir = AppDir::new(TWO_COMPONENTS);
    let mut settings = Settings::default();
    settings.limits.max_component_bytes = 1 << 20;
    let host = dir.start(settings).await;
    let base = format!("http://{}", host.http_addr());
    let client = client();
    let bearer = format!("Bearer {}", host.admin_token());
    let before = probe_digest(&host);
    let probe = std::fs::read(mosaic_tests::fixture("probe")).unwrap();
    let random: Vec<u8> = (0..65_536u32)
        .map(|i| (i.wrapping_mul(2654435761) >> 11) as u8)
        .collect();

    // (path, body, status, step, words in the detail)
    let cases: Vec<(&str, Vec<u8>, u16, &str, &str)> = vec![
        (
            "/v1/components/probe/deploy",
            random.clone(),
            422,
            "validate",
            "not WebAssembly",
        ),
        ("/v1/components/probe/deploy", vec![], 422, "validate", ""),
        ("/v1/components/probe/deploy", b"\0asm".to_vec(), 422, "validate", ""),
        (
            "/v1/components/probe/deploy",
            probe[..probe.len() / 3].to_vec(),
            422,
            "validate",
            "",
        ),
        (
            "/v1/components/fresh/deploy?route=no-slash",
            probe.clone(),
            422,
            "receive",
            "must start with `/`",
        ),
        (
            "/v1/components/fresh/deploy?route=/a/.../b",
            probe.clone(),
            422,
            "receive",
            "may only end a route",
        ),
        (
            "/v1/components/fresh/deploy?route=/probe/...",
            probe.clone(),
            422,
            "receive",
            "already served by `probe`",
        ),
        (
            "/v1/components/probe/deploy?route=/elsewhere/...",
            probe.clone(),
            422,
            "receive",
            "replaces its code, not its route",
        ),
        (
            "/v1/components/../deploy?route=/dots/...",
            probe.clone(),
            422,
            "receive",
            "component name",
        ),
        (
            "/v1/components/Bad_Name/deploy?route=/bad/...",
            probe.clone(),
            422,
            "receive",
            "component name",
        ),
        (
            "/v1/components/%2e%2e/deploy?route=/enc/...",
            probe.clone(),
            422,
            "receive",
            "component name",
        ),
        ("/v1/components/ghost/deploy", probe.clone(), 404, "", "--route"),
        ("/v1/components/ghost/rollback", vec![], 404, "", ""),
    ];
    for (path, body, status, step, words) in cases {
        let reply = admin(&host, "POST", path, Some(&bearer), body).await;
        assert_eq!(reply.status, status, "{path}: {}", reply.body);
        let json = reply.json();
        if !step.is_empty() {
            assert_eq!(json["step"], step, "{path}: {}", reply.body);
        }
        assert!(
            json["detail"].as_str().unwrap_or("").contains(words),
            "{path}: {}",
            reply.body
        );
        assert_eq!(probe_digest(&host), before, "{path}: the old version stays");
    }

    // Not the API's paths and methods.
    for (method, path) in [
        ("GET", "/v1/components/probe/deploy"),
        ("DELETE", "/v1/components/probe"),
        ("POST", "/v1/status"),
        ("GET", "/v1/../../etc/passwd"),
        ("GET", "/v2/status"),
    ] {
        let reply = admin(&host, method, path, Some(&bearer), vec![]).await;
        assert_eq!(reply.status, 404, "{method} {path}: {}", reply.body);
    }

    // A chunked upload (no declared length) over limits.max_component_bytes: 413 at receive.
    let mut upload = format!(
        "POST /v1/components/probe/deploy HTTP/1.1\r\nHost: x\r\nAuthorization: {bearer}\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
    )
    .into_bytes();
    for chunk in random.chunks(16_384).cycle().take(80) {
        upload.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
        upload.extend_from_slice(chunk);
        upload.extend_from_slice(b"\r\n");
    }
    upload.extend_from_slice(b"0\r\n\r\n");
    let answer = raw_exchange(host.admin_addr(), &upload, Duration::from_secs(20)).await;
    assert_eq!(answer.status(), Some(413), "{}", answer.text);
    assert!(
        answer.text.contains("limits.max_component_bytes") && answer.text.contains("receive"),
        "{}",
        answer.text
    );
    // Random bytes straight at the admin listener.
    let answer = raw_exchange(host.admin_addr(), &random[..4096], Duration::from_secs(10)).await;
    assert_eq!(answer.status(), Some(400), "{}", answer.text);

    assert_eq!(probe_digest(&host), before);
    assert_eq!(
        get(&client, &format!("{base}/probe/hello")).await.body,
        "hello from probe v1"
    );
    assert_eq!(get(&client, &format!("{base}/plain")).await.status, 200);
    host.shutdown().await;
}

/// Runs `mosaic ARGS` in `dir`, expects it to fail within `limit`, and returns its stderr.
fn mosaic_fails(dir: &std::path::Path, args: &[&str]) -> String {
    let output = std::process::Command::new(mosaic_bin())
        .current_dir(dir)
        .args(args)
        .output()
        .expect("the mosaic binary runs");
    assert!(!output.status.success(), "mosaic {args:?} succeeded");
    String::from_utf8_lossy(&output.stderr).to_string()
}

#[test]
fn mosaic_up_refuses_a_malformed_manifest() {
    const HEAD: &str = "spin_manifest_version = 2\n[application]\nname = \"bad\"\n";
    let up = ["up", "--listen", "127.0.0.1:0"];

    // A key of the wrong type.
    let dir = AppDir::new(&format!(
        "{HEAD}[[trigger.http]]\nroute = \"/...\"\ncomponent = \"a\"\n[component.a]\nsource = 42\n"
    ));
    let err = mosaic_fails(&dir.path, &up);
    assert!(
        err.contains("spin.toml") && err.contains("source") && err.contains("line 8"),
        "{err}"
    );

    // A route twice.
    let dir = AppDir::new(&format!(
        "{HEAD}[[trigger.http]]\nroute = \"/a/...\"\ncomponent = \"a\"\n[[trigger.http]]\nroute = \"/a/...\"\ncomponent = \"b\"\n\
         [component.a]\nsource = \"{{probe}}\"\n[component.b]\nsource = \"{{plain}}\"\n"
    ));
    let err = mosaic_fails(&dir.path, &up);
    assert!(
        err.contains("trigger.http[1].route") && err.contains("already taken by component `a`"),
        "{err}"
    );

    // A wrong type deeper down, and not TOML at all.
    let dir = AppDir::new(&format!(
        "{HEAD}[[trigger.http]]\nroute = \"/...\"\ncomponent = \"a\"\n[component.a]\nsource = \"{{probe}}\"\nallowed_outbound_hosts = \"http://x\"\n"
    ));
    let err = mosaic_fails(&dir.path, &up);
    assert!(err.contains("allowed_outbound_hosts"), "{err}");
    let dir = AppDir::new("\u{0}\u{1}not [toml");
    let err = mosaic_fails(&dir.path, &up);
    assert!(err.contains("spin.toml"), "{err}");

    // A source file that is random bytes.
    let dir = AppDir::new(&format!(
        "{HEAD}[[trigger.http]]\nroute = \"/...\"\ncomponent = \"a\"\n[component.a]\nsource = \"a.wasm\"\n"
    ));
    std::fs::write(dir.path.join("a.wasm"), b"definitely not a component").unwrap();
    let err = mosaic_fails(&dir.path, &up);
    assert!(err.contains("`a`") && err.contains("not WebAssembly"), "{err}");
}

// ---------------------------------------------------------------------------------------------
// 4. Malformed HTTP from clients

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_requests_get_4xx() {
    let dir = AppDir::new(TWO_COMPONENTS);
    let host = dir.start(Settings::default()).await;
    let addr = host.http_addr();
    let base = format!("http://{addr}");
    let close = "Connection: close\r\n\r\n";
    let garbage: Vec<u8> = (0..4096u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    // (what, request, status, a word of the answer)
    let cases: Vec<(&str, Vec<u8>, u16, &str)> = vec![
        (
            "one 80 KB header",
            format!(
                "GET /probe/hello HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n{close}",
                "a".repeat(80_000)
            )
            .into_bytes(),
            431,
            "",
        ),
        (
            "150 headers",
            format!(
                "GET /probe/hello HTTP/1.1\r\nHost: x\r\n{}{close}",
                (0..150).map(|i| format!("X-{i}: v\r\n")).collect::<String>()
            )
            .into_bytes(),
            431,
            "",
        ),
        (
            "a 70 KB path",
            format!("GET /{} HTTP/1.1\r\nHost: x\r\n{close}", "a".repeat(70_000)).into_bytes(),
            431,
            "",
        ),
        (
            "a 10 KB path under a route",
            format!("GET /probe/{} HTTP/1.1\r\nHost: x\r\n{close}", "a".repeat(10_000)).into_bytes(),
            200,
            "hello from probe",
        ),
        (
            "a 10 KB path",
            format!("GET /{} HTTP/1.1\r\nHost: x\r\n{close}", "a".repeat(10_000)).into_bytes(),
            404,
            "not found",
        ),
        (
            "an invented method",
            format!("BREW /probe/headers HTTP/1.1\r\nHost: x\r\n{close}").into_bytes(),
            200,
            "\"method\":\"BREW\"",
        ),
        (
            "an invented method, no route",
            format!("BREW /coffee HTTP/1.1\r\nHost: x\r\n{close}").into_bytes(),
            404,
            "not found",
        ),
        (
            "an invalid method",
            format!("G(ET /probe/hello HTTP/1.1\r\nHost: x\r\n{close}").into_bytes(),
            400,
            "",
        ),
        (
            "a bad escape",
            format!("GET /%zz HTTP/1.1\r\nHost: x\r\n{close}").into_bytes(),
            404,
            "not found",
        ),
        (
            "dot segments",
            format!("GET //..// HTTP/1.1\r\nHost: x\r\n{close}").into_bytes(),
            404,
            "not found",
        ),
        (
            "dots out of a route",
            format!("GET /plain/../probe/hello HTTP/1.1\r\nHost: x\r\n{close}").into_bytes(),
            404,
            "not found",
        ),
        (
            "dots into another route",
            format!("GET /probe/../plain HTTP/1.1\r\nHost: x\r\n{close}").into_bytes(),
            200,
            "hello from probe",
        ),
        (
            "a relative target",
            format!("GET plain HTTP/1.1\r\nHost: x\r\n{close}").into_bytes(),
            404,
            "not found",
        ),
        (
            "asterisk form",
            format!("OPTIONS * HTTP/1.1\r\nHost: x\r\n{close}").into_bytes(),
            404,
            "not found",
        ),
        (
            "authority form",
            format!("CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n{close}").into_bytes(),
            404,
            "not found",
        ),
        (
            "a NUL in the path",
            format!("GET /probe/\0 HTTP/1.1\r\nHost: x\r\n{close}").into_bytes(),
            400,
            "",
        ),
        (
            "a space in the path",
            format!("GET /pro be HTTP/1.1\r\nHost: x\r\n{close}").into_bytes(),
            400,
            "",
        ),
        (
            "an unknown version",
            format!("GET /plain HTTP/9.9\r\nHost: x\r\n{close}").into_bytes(),
            400,
            "",
        ),
        (
            "two lengths",
            format!("POST /probe/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nContent-Length: 6\r\n{close}hello!")
                .into_bytes(),
            400,
            "",
        ),
        (
            "a negative length",
            format!("POST /probe/echo HTTP/1.1\r\nHost: x\r\nContent-Length: -5\r\n{close}").into_bytes(),
            400,
            "",
        ),
        (
            "a header without a colon",
            format!("GET /plain HTTP/1.1\r\nHost: x\r\nNoColon\r\n{close}").into_bytes(),
            400,
            "",
        ),
        ("bytes that are not HTTP", garbage, 400, ""),
    ];
    for (what, request, status, word) in cases {
        let answer = raw_exchange(addr, &request, Duration::from_secs(10)).await;
        assert_eq!(
            answer.status(),
            Some(status),
            "{what}: {}",
            &answer.text[..answer.text.len().min(300)]
        );
        assert!(
            answer.text.contains(word),
            "{what}: {}",
            &answer.text[..answer.text.len().min(300)]
        );
        assert!(answer.closed, "{what}: the connection is closed");
        assert!(!answer.text.contains("plain component saw"), "{what}: reached plain");
    }
    // HTTP/2 to an HTTP/1 listener: refused at once, no hang.
    let answer = raw_exchange(addr, b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", Duration::from_secs(10)).await;
    assert!(answer.closed && !answer.text.contains("200"), "{}", answer.text);

    neighbours_answer(&client(), &base).await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undeclared_oversized_body_gets_413() {
    let dir = AppDir::new(TWO_COMPONENTS);
    let mut settings = Settings::default();
    settings.limits.max_request_body_bytes = 1024;
    let host = dir.start(settings).await;
    let addr = host.http_addr();
    let chunked = |path: &str, bytes: usize| {
        format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n{bytes:x}\r\n{}\r\n0\r\n\r\n",
            "a".repeat(bytes)
        )
        .into_bytes()
    };
    let fits = raw_exchange(addr, &chunked("/probe/echo", 1000), Duration::from_secs(10)).await;
    assert_eq!(fits.status(), Some(200), "{}", fits.text);
    // Over the cap, without a declared length: the guest sees a body error when it reads, and
    // the client gets a 413 whatever the guest made of it (never the guest's 500, which carried
    // the host's error text).
    let over = raw_exchange(addr, &chunked("/probe/echo", 4096), Duration::from_secs(10)).await;
    assert_eq!(over.status(), Some(413), "{}", over.text);
    assert!(
        over.text.contains("limits.max_request_body_bytes") && !over.text.contains("backtrace"),
        "{}",
        over.text
    );
    // A guest that never reads the body answers as usual.
    let unread = raw_exchange(addr, &chunked("/plain", 4096), Duration::from_secs(10)).await;
    assert_eq!(unread.status(), Some(200), "{}", unread.text);
    neighbours_answer(&client(), &format!("http://{addr}")).await;
    assert!(eventually(Duration::from_secs(5), || in_flight(&host, "probe") == 0).await);
    host.shutdown().await;
}

/// Sends `head` one byte every `pace` until the server closes the connection; returns how many
/// bytes went out and whether anything came back.
async fn dribble(addr: SocketAddr, head: &[u8], pace: Duration) -> (usize, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let mut sent = 0;
    for byte in head {
        if stream.write_all(std::slice::from_ref(byte)).await.is_err() {
            break;
        }
        sent += 1;
        // A closed connection shows as a readable end of stream.
        let mut answer = Vec::new();
        match tokio::time::timeout(pace, stream.read_to_end(&mut answer)).await {
            Ok(_) => return (sent, String::from_utf8_lossy(&answer).to_string()),
            Err(_) => continue,
        }
    }
    let mut answer = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer)).await;
    (sent, String::from_utf8_lossy(&answer).to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_clients_are_cut_off_without_blocking_others() {
    let dir = AppDir::new(TWO_COMPONENTS);
    let mut settings = Settings::default();
    settings.http.header_read_timeout_ms = 400;
    settings.limits.request_timeout_ms = 1_000;
    let host = dir.start(settings).await;
    let addr = host.http_addr();
    let base = format!("http://{addr}");
    let client = client();

    // 50 clients sending their heads a byte every 50 ms (about 7 s each): each is disconnected
    // at the header read timeout, long before it is done, and never served.
    let head = format!(
        "GET /probe/hello HTTP/1.1\r\nHost: x\r\nX-Slow: {}\r\n\r\n",
        "a".repeat(90)
    );
    let started = Instant::now();
    let slow: Vec<_> = (0..50)
        .map(|_| {
            let head = head.clone().into_bytes();
            tokio::spawn(async move { dribble(addr, &head, Duration::from_millis(50)).await })
        })
        .collect();
    // Meanwhile everyone else is served.
    tokio::time::sleep(Duration::from_millis(100)).await;
    for _ in 0..5 {
        neighbours_answer(&client, &base).await;
    }
    for task in slow {
        let (sent, answer) = task.await.expect("slow client");
        assert!(
            sent < head.len(),
            "a slow client got to send its whole head ({sent} bytes)"
        );
        assert!(
            !answer.contains("hello from probe"),
            "a slow client was served: {answer}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "the slow clients were cut after {:?}",
        started.elapsed()
    );

    // A client that connects and says nothing is disconnected too.
    let idle = raw_exchange(addr, b"", Duration::from_secs(5)).await;
    assert!(idle.closed, "an idle connection stays open");

    // A client that stalls in the middle of its body: the guest waiting for it is ended at the
    // request deadline (504), and its instance is freed.
    let stalled = b"POST /probe/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 1000000\r\n\r\n0123456789";
    let answer = raw_exchange(addr, stalled, Duration::from_secs(10)).await;
    assert_eq!(answer.status(), Some(504), "{}", answer.text);
    assert!(eventually(Duration::from_secs(5), || in_flight(&host, "probe") == 0).await);
    neighbours_answer(&client, &base).await;
    host.shutdown().await;
}

// ---------------------------------------------------------------------------------------------
// 5. Backend faults

const RABBITMQ: &str = "127.0.0.1:5672";

mod needs_rabbitmq {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs RabbitMQ on 127.0.0.1:5672"]
    async fn rabbitmq_cut_mid_stream_loses_no_acked_message() {
        require_service("RabbitMQ", RABBITMQ);
        const COUNT: usize = 400;
        let relay = TcpRelay::start(RABBITMQ.parse().expect("address")).await;
        let sink = Sink::start().await;
        let dir = AppDir::new(&sink.manifest("jobs"));
        let settings = Settings {
            messaging: MessagingSettings {
                broker: BrokerKind::RabbitMQ,
                url: Some(format!("amqp://guest:guest@127.0.0.1:{}/%2f", relay.port)),
                namespace: Some(unique("cut")),
                concurrency: 4,
                retry_initial_ms: 5,
                retry_max_ms: 100,
                ..MessagingSettings::default()
            },
            ..Settings::default()
        };
        let host = dir.start(settings).await;
        let base = format!("http://{}", host.http_addr());

        // Four publishers; a publish that fails is tried again until the broker acknowledges it.
        let acked = Arc::new(Mutex::new(BTreeSet::new()));
        let failures: Arc<Mutex<Vec<(Duration, String)>>> = Arc::default();
        let publishers: Vec<_> = (0..4)
            .map(|first| {
                let (base, acked, failures) = (base.clone(), acked.clone(), failures.clone());
                tokio::spawn(async move {
                    let http = client();
                    for n in (first..COUNT).step_by(4) {
                        let payload = format!("job-{n}");
                        loop {
                            let started = Instant::now();
                            let url = format!("{base}/probe/publish?channel=jobs");
                            let reply = send(&http, "POST", &url, payload.clone())
                                .await
                                .expect("the host answers");
                            if reply.status == 200 {
                                break;
                            }
                            failures.lock().unwrap().push((started.elapsed(), reply.body));
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                        acked.lock().unwrap().insert(payload);
                    }
                })
            })
            .collect();
        let count = |set: &Arc<Mutex<BTreeSet<String>>>| set.lock().unwrap().len();
        assert!(eventually(Duration::from_secs(60), || count(&acked) >= COUNT / 4).await);

        // The broker goes away: publishes fail (an error, not a hang), and the rest of the
        // application keeps answering.
        relay.cut();
        let acked_at_cut = count(&acked);
        assert!(
            eventually(Duration::from_secs(30), || failures.lock().unwrap().len() >= 8).await,
            "publishes kept succeeding with the broker gone"
        );
        assert_eq!(get(&client(), &format!("{base}/probe/hello")).await.status, 200);

        // It comes back: the host reconnects by itself, and the stream goes on.
        relay.restore();
        for publisher in publishers {
            tokio::time::timeout(Duration::from_secs(120), publisher)
                .await
                .expect("publishing resumed after the broker came back")
                .expect("publisher");
        }
        assert!(acked_at_cut < COUNT, "the cut came mid-stream");
        for (took, body) in failures.lock().unwrap().iter() {
            assert!(*took < Duration::from_secs(15), "a publish hung for {took:?}: {body}");
            assert!(body.contains("publish failed"), "{body}");
        }
        let acked = acked.lock().unwrap().clone();
        assert_eq!(acked.len(), COUNT);
        let all = sink
            .wait_for(Duration::from_secs(90), |sink| {
                acked.iter().all(|p| sink.handled(p) > 0)
            })
            .await;
        let lost: Vec<&String> = acked.iter().filter(|p| sink.handled(p) == 0).take(10).collect();
        assert!(all && lost.is_empty(), "acknowledged but never handled: {lost:?}");
        host.shutdown().await;
    }
}
