//! The HTTP trigger against a real host: a spin-sdk 5.x component and a plain wit-bindgen
//! component, Spin's route matching and `spin-*` headers, 404s, in-process chaining.

use mosaic::settings::Settings;
use mosaic_tests::{client, get, AppDir, TWO_COMPONENTS};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serves_spin_sdk_and_plain_components_with_spin_headers() {
    let dir = AppDir::new(TWO_COMPONENTS);
    let host = dir.start(Settings::default()).await;
    let base = format!("http://{}", host.http_addr());
    let client = client();

    let hello = get(&client, &format!("{base}/probe/hello")).await;
    assert_eq!(hello.status, 200);
    assert_eq!(hello.body, "hello from probe v1");

    let plain = get(&client, &format!("{base}/plain?x=1")).await;
    assert_eq!(plain.status, 200, "{}", plain.body);
    assert_eq!(plain.body, "plain component saw /plain?x=1");

    let headers = get(&client, &format!("{base}/probe/headers?q=1")).await.json();
    let h = &headers["headers"];
    assert_eq!(h["spin-path-info"], "/headers");
    assert_eq!(h["spin-matched-route"], "/probe/...");
    assert_eq!(h["spin-raw-component-route"], "/probe/...");
    assert_eq!(h["spin-component-route"], "/probe");
    assert_eq!(h["spin-base-path"], "/");
    assert_eq!(h["spin-full-url"], format!("{base}/probe/headers?q=1"));
    assert!(h["spin-client-addr"].as_str().unwrap().starts_with("127.0.0.1:"));

    // A `:name` segment is passed as spin-path-match-NAME; path-info is empty for an exact route.
    let item = get(&client, &format!("{base}/items/42")).await;
    assert_eq!(item.status, 200, "{}", item.body);
    // The probe dispatches on path-info, which is empty here: it answers hello.
    assert_eq!(item.body, "hello from probe v1");

    // 404 for no route, with a JSON error.
    let missing = get(&client, &format!("{base}/nowhere")).await;
    assert_eq!(missing.status, 404);
    assert_eq!(missing.json()["error"], "not found");
    let deeper = get(&client, &format!("{base}/plain/deeper")).await;
    assert_eq!(deeper.status, 404, "an exact route does not match deeper paths");

    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_cannot_spoof_spin_headers() {
    let dir = AppDir::new(TWO_COMPONENTS);
    let host = dir.start(Settings::default()).await;
    let url = format!("http://{}/probe/headers", host.http_addr());
    let request = http::Request::get(&url)
        .header("spin-path-info", "/admin")
        .header("spin-path-match-id", "evil")
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .unwrap();
    let response = client().request(request).await.unwrap();
    let body = http_body_util::BodyExt::collect(response.into_body())
        .await
        .unwrap()
        .to_bytes();
    let json: serde_json::Value = serde_json::from_slice(&body).unwrap();
    assert_eq!(json["headers"]["spin-path-info"], "/headers");
    assert!(json["headers"].get("spin-path-match-id").is_none());
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_params_reach_the_guest() {
    let dir = AppDir::new(
        r#"
spin_manifest_version = 2
[application]
name = "params"
[[trigger.http]]
route = "/users/:id/..."
component = "probe"
[component.probe]
source = "{probe}"
"#,
    );
    let host = dir.start(Settings::default()).await;
    let reply = get(&client(), &format!("http://{}/users/7/headers", host.http_addr()))
        .await
        .json();
    assert_eq!(reply["headers"]["spin-path-match-id"], "7");
    assert_eq!(reply["headers"]["spin-path-info"], "/headers");
    assert_eq!(reply["headers"]["spin-component-route"], "/users/:id");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn outbound_allow_list_and_in_process_chaining() {
    let dir = AppDir::new(TWO_COMPONENTS);
    let host = dir.start(Settings::default()).await;
    let base = format!("http://{}", host.http_addr());
    let client = client();

    // NAME.spin.internal goes straight to that component, with no socket.
    let chained = get(
        &client,
        &format!("{base}/probe/outbound?url=http://plain.spin.internal/plain"),
    )
    .await;
    assert_eq!(chained.status, 200, "{}", chained.body);
    assert_eq!(chained.body, "200 plain component saw /plain");

    // `self` goes through the application's router.
    let via_self = get(&client, &format!("{base}/probe/outbound?url=http://self/probe/hello")).await;
    assert_eq!(via_self.body, "200 hello from probe v1");

    // A host that is not allowed: the guest gets an error value (502 from the probe), no trap.
    let denied = get(&client, &format!("{base}/probe/outbound?url=http://127.0.0.1:9/")).await;
    assert_eq!(denied.status, 502, "{}", denied.body);
    assert!(denied.body.contains("HttpRequestDenied"), "{}", denied.body);

    // A chained call to a component that does not exist.
    let nowhere = get(
        &client,
        &format!("{base}/probe/outbound?url=http://ghost.spin.internal/"),
    )
    .await;
    assert_eq!(nowhere.status, 502, "{}", nowhere.body);

    // Chains nest: self calls self, which calls the probe.
    let recursive = format!("{base}/probe/outbound?url=http://self/probe/outbound%3Furl%3Dhttp://self/probe/hello");
    let reply = get(&client, &recursive).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn private_component_is_reachable_only_in_process() {
    let dir = AppDir::new(
        r#"
spin_manifest_version = 2
[application]
name = "private"
[[trigger.http]]
route = "/..."
component = "probe"
[[trigger.http]]
route = { private = true }
component = "plain"
[component.probe]
source = "{probe}"
allowed_outbound_hosts = ["http://plain.spin.internal"]
[component.plain]
source = "{plain}"
"#,
    );
    let host = dir.start(Settings::default()).await;
    let base = format!("http://{}", host.http_addr());
    let client = client();
    let direct = get(&client, &format!("{base}/plain")).await;
    assert_eq!(
        direct.body, "hello from probe v1",
        "the public catch-all serves /plain, not the private component"
    );
    let chained = get(&client, &format!("{base}/outbound?url=http://plain.spin.internal/x")).await;
    assert_eq!(chained.body, "200 plain component saw /x");
    // Only plain.spin.internal is granted: self is denied.
    let denied = get(&client, &format!("{base}/outbound?url=http://self/hello")).await;
    assert_eq!(denied.status, 502);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_request_body_is_refused_with_413() {
    let dir = AppDir::new(TWO_COMPONENTS);
    let mut settings = Settings::default();
    settings.limits.max_request_body_bytes = 1024;
    let host = dir.start(settings).await;
    let url = format!("http://{}/probe/echo", host.http_addr());
    let client = client();
    let small = mosaic_tests::send(&client, "POST", &url, vec![b'a'; 1000])
        .await
        .unwrap();
    assert_eq!(small.status, 200);
    assert_eq!(small.body.len(), 1000);
    let big = mosaic_tests::send(&client, "POST", &url, vec![b'a'; 4096])
        .await
        .unwrap();
    assert_eq!(big.status, 413);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn files_and_environment_grants() {
    let dir = AppDir::new(
        r#"
spin_manifest_version = 2
[application]
name = "grants"
[[trigger.http]]
route = "/granted/..."
component = "granted"
[[trigger.http]]
route = "/bare/..."
component = "bare"
[component.granted]
source = "{probe}"
files = ["static/*.txt", { source = "assets", destination = "/data" }]
exclude_files = ["static/secret.txt"]
environment = { GREETING = "hej" }
[component.bare]
source = "{probe}"
"#,
    );
    std::fs::create_dir_all(dir.path.join("static")).unwrap();
    std::fs::create_dir_all(dir.path.join("assets")).unwrap();
    std::fs::write(dir.path.join("static/index.txt"), "index").unwrap();
    std::fs::write(dir.path.join("static/secret.txt"), "secret").unwrap();
    std::fs::write(dir.path.join("assets/a.txt"), "asset").unwrap();
    std::fs::write(dir.path.join("spin-outside.txt"), "outside").unwrap();
    let host = dir.start(Settings::default()).await;
    let base = format!("http://{}", host.http_addr());
    let client = client();
    let read = |component: &'static str, path: &'static str| {
        let url = format!("{base}/{component}/file?path={path}");
        let client = client.clone();
        async move { get(&client, &url).await }
    };
    assert_eq!(read("granted", "/static/index.txt").await.body, "index");
    assert_eq!(read("granted", "/data/a.txt").await.body, "asset");
    assert_eq!(
        read("granted", "/static/secret.txt").await.status,
        404,
        "excluded files are not staged"
    );
    assert_eq!(
        read("granted", "/spin.toml").await.status,
        404,
        "only granted files are visible"
    );
    assert_eq!(read("granted", "/../spin-outside.txt").await.status, 404);
    assert_eq!(read("granted", "/etc/passwd").await.status, 404);
    assert_eq!(
        read("bare", "/static/index.txt").await.status,
        404,
        "no files grant, no files"
    );
    assert_eq!(
        get(&client, &format!("{base}/granted/env?name=GREETING")).await.body,
        "hej"
    );
    assert_eq!(
        get(&client, &format!("{base}/bare/env?name=GREETING")).await.status,
        404
    );
    assert_eq!(
        get(&client, &format!("{base}/bare/env?name=HOME")).await.status,
        404,
        "the host's environment stays out"
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn variables_from_manifest_and_templates() {
    let dir = AppDir::new(
        r#"
spin_manifest_version = 2
[application]
name = "vars"
[variables]
region = { default = "eu" }
api_key = { default = "k-123", secret = true }
[[trigger.http]]
route = "/with/..."
component = "with"
[[trigger.http]]
route = "/without/..."
component = "without"
[component.with]
source = "{probe}"
variables = { endpoint = "https://{{ region }}.example.com", key = "{{ api_key }}" }
[component.without]
source = "{probe}"
[[trigger.http]]
route = "/config/..."
component = "config"
[component.config]
source = "{counter}"
variables = { greeting = "hello {{ region }}", secret = "{{ api_key }}" }
"#,
    );
    let host = dir.start(Settings::default()).await;
    let base = format!("http://{}", host.http_addr());
    let client = client();
    let read = |path: &str| {
        let url = format!("{base}{path}");
        let client = client.clone();
        async move { get(&client, &url).await }
    };
    assert_eq!(
        read("/with/variable?name=endpoint").await.body,
        "https://eu.example.com"
    );
    assert_eq!(read("/with/variable?name=key").await.body, "k-123");
    let undefined = read("/with/variable?name=region").await;
    assert_eq!(
        undefined.status, 404,
        "an application variable is not a component variable"
    );
    assert!(undefined.body.contains("Undefined"), "{}", undefined.body);
    let invalid = read("/with/variable?name=Bad-Name").await;
    assert!(invalid.body.contains("InvalidName"), "{}", invalid.body);
    assert_eq!(
        read("/without/variable?name=endpoint").await.status,
        404,
        "variables are per component"
    );
    // The same component variables through wasi:config/store (a wit-bindgen guest).
    assert_eq!(read("/config/config?key=greeting").await.body, "hello eu");
    assert_eq!(read("/config/config?key=endpoint").await.body, "(none)");
    assert_eq!(read("/config/config").await.body, "greeting=hello eu,secret=k-123");
    host.shutdown().await;
}

#[test]
fn interfaces_without_a_backend_link_and_answer_errors() {
    mosaic_tests::LogCapture::run(interfaces_without_a_backend_link_and_answer_errors_with_logs);
}

async fn interfaces_without_a_backend_link_and_answer_errors_with_logs(logs: mosaic_tests::LogCapture) {
    // The probe imports the LLM interface (spin-sdk 5.x): it deploys, and each call gets a
    // clear error value instead of a refusal or a trap.
    let dir = AppDir::new(TWO_COMPONENTS);
    let host = dir.start(Settings::default()).await;
    let base = format!("http://{}", host.http_addr());
    let client = client();
    let llm = get(&client, &format!("{base}/probe/llm")).await;
    assert_eq!(llm.status, 501, "{}", llm.body);
    assert!(llm.body.contains("no LLM inferencing backend yet"), "{}", llm.body);
    assert!(
        logs.text().contains("but Mosaic has no LLM inferencing backend yet"),
        "the deploy warned"
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn traceparent_is_continued_into_the_guest_and_its_outbound_calls() {
    let dir = AppDir::new(TWO_COMPONENTS);
    let host = dir.start(Settings::default()).await;
    let base = format!("http://{}", host.http_addr());
    let client = client();
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let incoming = format!("00-{trace_id}-00f067aa0ba902b7-01");
    let traced = |url: String, value: String| {
        let client = client.clone();
        async move {
            let request = http::Request::get(url)
                .header("traceparent", value)
                .body(http_body_util::Full::new(bytes::Bytes::new()))
                .unwrap();
            let response = client.request(request).await.unwrap();
            let body = http_body_util::BodyExt::collect(response.into_body())
                .await
                .unwrap()
                .to_bytes();
            String::from_utf8_lossy(&body).to_string()
        }
    };
    // The guest sees the caller's trace with this host's span as the parent.
    let seen: serde_json::Value =
        serde_json::from_str(&traced(format!("{base}/probe/headers"), incoming.clone()).await).unwrap();
    let header = seen["headers"]["traceparent"]
        .as_str()
        .unwrap_or_else(|| panic!("the guest sees a traceparent: {seen}"))
        .to_string();
    let parts: Vec<&str> = header.split('-').collect();
    assert_eq!((parts[0], parts[1], parts[3]), ("00", trace_id, "01"), "{header}");
    assert_ne!(parts[2], "00f067aa0ba902b7", "a span of its own");

    // An in-process call (through `self`) carries the same trace on.
    let chained = traced(
        format!("{base}/probe/outbound?url=http://self/probe/headers"),
        incoming.clone(),
    )
    .await;
    assert!(
        chained.starts_with("200 ") && chained.contains(&format!("00-{trace_id}-")),
        "{chained}"
    );

    // A request without one (or with a malformed one) starts a new trace.
    let fresh: serde_json::Value =
        serde_json::from_str(&traced(format!("{base}/probe/headers"), "garbage".into()).await).unwrap();
    let started = fresh["headers"]["traceparent"].as_str().expect("a new traceparent");
    assert!(started.starts_with("00-") && !started.contains(trace_id), "{started}");
    host.shutdown().await;
}

/// Reads from `stream` until `expected` has arrived (or the connection ends); what was read.
async fn read_until(stream: &mut tokio::net::TcpStream, expected: &str) -> String {
    use tokio::io::AsyncReadExt;
    let mut seen = Vec::new();
    let mut buffer = [0u8; 4096];
    while !String::from_utf8_lossy(&seen).contains(expected) {
        match stream.read(&mut buffer).await {
            Ok(0) | Err(_) => break,
            Ok(read) => seen.extend_from_slice(&buffer[..read]),
        }
    }
    String::from_utf8_lossy(&seen).to_string()
}

/// `[http] max_connections`: at the cap the listener accepts no more connections; the next
/// client waits until an open connection closes, then is served.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_beyond_max_connections_waits_for_one_to_close() {
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = AppDir::new(TWO_COMPONENTS);
    let mut settings = Settings::default();
    settings.http.max_connections = 2;
    let host = dir.start(settings).await;
    let addr = host.http_addr();
    let request = b"GET /probe/hello HTTP/1.1\r\nhost: test\r\n\r\n";
    let expected = "hello from probe v1";

    // Two keep-alive connections, each served once and left open.
    let mut open = Vec::new();
    for _ in 0..2 {
        let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
        stream.write_all(request).await.unwrap();
        let answer = tokio::time::timeout(Duration::from_secs(10), read_until(&mut stream, expected))
            .await
            .expect("one of the first two connections is served");
        assert!(answer.contains(expected), "{answer}");
        open.push(stream);
    }

    // The kernel completes a third handshake (the backlog), but the host does not serve it.
    let mut third = tokio::net::TcpStream::connect(addr).await.unwrap();
    third.write_all(request).await.unwrap();
    let mut buffer = [0u8; 1024];
    let early = tokio::time::timeout(Duration::from_millis(700), third.read(&mut buffer)).await;
    assert!(
        early.is_err(),
        "a third connection was answered while two were open: {:?}",
        early.map(|read| read.map(|n| String::from_utf8_lossy(&buffer[..n]).to_string()))
    );

    // One closes: the third is served.
    drop(open.pop());
    let answer = tokio::time::timeout(Duration::from_secs(10), read_until(&mut third, expected))
        .await
        .expect("the waiting connection is served once one closed");
    assert!(answer.contains(expected), "{answer}");
    host.shutdown().await;
}
