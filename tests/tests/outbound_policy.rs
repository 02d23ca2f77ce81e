//! The outbound policy of mosaic.toml against a real host: retries (idempotent methods only,
//! the body sent again), the circuit breaker (opens, fails at once, half-open trial, closes),
//! the request timeout, over the network to a test server here and in-process to a component.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use mosaic::settings::{OutboundSettings, Settings};
use mosaic_tests::{client, get, send, AppDir, LogCapture};

/// The probe (public) calls the network and `sick` (private: the `unhealthy` build of the
/// probe, whose /health answers 503).
const APP: &str = r#"
spin_manifest_version = 2
[application]
name = "outbound-policy"
[[trigger.http]]
route = "/probe/..."
component = "probe"
[[trigger.http]]
route = { private = true }
component = "sick"
[component.probe]
source = "{probe}"
allowed_outbound_hosts = ["http://*.spin.internal", "http://self", "http://127.0.0.1:*"]
[component.sick]
source = "{probe-unhealthy}"
"#;

/// A dependency on loopback. By path: `/fail-twice/KEY` answers 503 to the first two requests
/// of KEY and then 200 with the body it got; `/down` answers 503 until `healthy` is set, then
/// 200; anything else 200. It records every request (method, path, body).
struct Upstream {
    addr: SocketAddr,
    seen: Arc<Mutex<Vec<(String, String, Bytes)>>>,
    healthy: Arc<AtomicBool>,
}

impl Upstream {
    async fn start() -> Upstream {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("address");
        let seen: Arc<Mutex<Vec<(String, String, Bytes)>>> = Arc::default();
        let healthy = Arc::new(AtomicBool::new(false));
        let (task_seen, task_healthy) = (seen.clone(), healthy.clone());
        tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                let (seen, healthy) = (task_seen.clone(), task_healthy.clone());
                let service = hyper::service::service_fn(move |request: hyper::Request<hyper::body::Incoming>| {
                    let (seen, healthy) = (seen.clone(), healthy.clone());
                    async move {
                        let method = request.method().to_string();
                        let path = request.uri().path().to_string();
                        let body = request
                            .into_body()
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let count = {
                            let mut seen = seen.lock().unwrap();
                            seen.push((method, path.clone(), body.clone()));
                            seen.iter().filter(|(_, p, _)| *p == path).count()
                        };
                        let (status, text) = if path.starts_with("/fail-twice/") && count <= 2 {
                            (503, "try again".to_string())
                        } else if path.starts_with("/fail-twice/") {
                            (
                                200,
                                format!("ok after {} failures: {}", count - 1, String::from_utf8_lossy(&body)),
                            )
                        } else if path == "/down" && !healthy.load(Ordering::SeqCst) {
                            (503, "down".to_string())
                        } else if path == "/down" {
                            (200, "healthy".to_string())
                        } else {
                            (200, "ok".to_string())
                        };
                        let mut response = hyper::Response::new(Full::new(Bytes::from(text)));
                        *response.status_mut() = hyper::StatusCode::from_u16(status).unwrap();
                        Ok::<_, std::convert::Infallible>(response)
                    }
                });
                tokio::spawn(async move {
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Upstream { addr, seen, healthy }
    }

    fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    fn requests_to(&self, path: &str) -> Vec<(String, Bytes)> {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|(_, p, _)| p == path)
            .map(|(method, _, body)| (method.clone(), body.clone()))
            .collect()
    }
}

/// A dependency that accepts TCP connections and never answers.
async fn black_hole() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = listener.accept().await {
            held.push(stream);
        }
    });
    addr
}

fn settings(outbound: OutboundSettings) -> Settings {
    Settings {
        outbound,
        ..Settings::default()
    }
}

/// The sum of a counter's series whose labels contain `labels`.
fn metric(host: &mosaic::Host, name: &str, labels: &str) -> u64 {
    host.app()
        .metrics
        .render(&[], &[])
        .lines()
        .filter(|line| line.starts_with(&format!("{name}{{")) && line.contains(labels))
        .filter_map(|line| line.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idempotent_requests_are_retried_with_their_body_and_posts_are_not() {
    let upstream = Upstream::start().await;
    let dir = AppDir::new(APP);
    let host = dir
        .start(settings(OutboundSettings {
            retries: 2,
            retry_initial_ms: 10,
            retry_max_ms: 40,
            breaker_failures: 0,
            ..OutboundSettings::default()
        }))
        .await;
    let base = format!("http://{}/probe/outbound", host.http_addr());
    let client = client();

    // A GET that fails twice, then succeeds: the guest sees the success.
    let reply = get(&client, &format!("{base}?url={}", upstream.url("/fail-twice/get"))).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    assert_eq!(reply.body, "200 ok after 2 failures: ");
    assert_eq!(upstream.requests_to("/fail-twice/get").len(), 3);

    // A PUT is idempotent: retried, its body sent again each time.
    let url = format!("{base}?url={}&method=PUT", upstream.url("/fail-twice/put"));
    let reply = send(&client, "POST", &url, "the body").await.unwrap();
    assert_eq!(reply.body, "200 ok after 2 failures: the body");
    let puts = upstream.requests_to("/fail-twice/put");
    assert_eq!(puts.len(), 3);
    assert!(
        puts.iter()
            .all(|(method, body)| method == "PUT" && &body[..] == b"the body"),
        "{puts:?}"
    );

    // A POST is never retried: the guest gets the first 503.
    let url = format!("{base}?url={}&method=POST", upstream.url("/fail-twice/post"));
    let reply = send(&client, "POST", &url, "order").await.unwrap();
    assert_eq!(reply.body, "503 try again");
    assert_eq!(upstream.requests_to("/fail-twice/post").len(), 1);

    // In-process calls get the same policy: `sick` answers 503 three times (1 + 2 retries).
    let reply = get(&client, &format!("{base}?url=http://sick.spin.internal/health")).await;
    assert_eq!(reply.body, "503 unhealthy on purpose");
    assert_eq!(metric(&host, "mosaic_requests_total", "component=\"sick\""), 3);

    let dest = format!("destination=\"{}\"", upstream.addr);
    assert_eq!(
        metric(
            &host,
            "mosaic_outbound_requests_total",
            &format!("{dest},outcome=\"retried\"")
        ),
        4
    );
    assert_eq!(
        metric(
            &host,
            "mosaic_outbound_requests_total",
            &format!("{dest},outcome=\"ok\"")
        ),
        2
    );
    assert_eq!(
        metric(
            &host,
            "mosaic_outbound_requests_total",
            &format!("{dest},outcome=\"error\"")
        ),
        1
    );
    host.shutdown().await;
}

#[test]
fn the_breaker_opens_fails_at_once_and_closes_after_a_good_trial() {
    LogCapture::run(the_breaker_opens_fails_at_once_and_closes_after_a_good_trial_with_logs);
}

async fn the_breaker_opens_fails_at_once_and_closes_after_a_good_trial_with_logs(logs: LogCapture) {
    let upstream = Upstream::start().await;
    let dir = AppDir::new(APP);
    let host = dir
        .start(settings(OutboundSettings {
            retries: 0,
            breaker_failures: 3,
            breaker_window_ms: 10_000,
            breaker_open_ms: 300,
            ..OutboundSettings::default()
        }))
        .await;
    let base = format!("http://{}/probe/outbound", host.http_addr());
    let url = format!("{base}?url={}", upstream.url("/down"));
    let client = client();
    let dest = upstream.addr.to_string();
    let state = |host: &mosaic::Host| metric(host, "mosaic_outbound_breaker_state", &format!("\"{dest}\""));

    for _ in 0..3 {
        let reply = get(&client, &url).await;
        assert_eq!(reply.body, "503 down");
    }
    assert_eq!(upstream.requests_to("/down").len(), 3);
    assert_eq!(state(&host), 2, "open");

    // Open: the call fails at once, without reaching the server, naming the circuit.
    let started = Instant::now();
    let reply = get(&client, &url).await;
    assert_eq!(reply.status, 502, "{}", reply.body);
    assert!(
        reply
            .body
            .contains(&format!("circuit open for {dest}: 3 failures in a row")),
        "{}",
        reply.body
    );
    assert!(started.elapsed() < Duration::from_secs(2), "{:?}", started.elapsed());
    assert_eq!(upstream.requests_to("/down").len(), 3, "nothing reached the server");
    assert_eq!(
        metric(
            &host,
            "mosaic_outbound_requests_total",
            &format!("\"{dest}\",outcome=\"rejected_open\"")
        ),
        1
    );

    // After breaker_open_ms one trial goes through; the server is back, so it closes.
    upstream.healthy.store(true, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(450)).await;
    assert_eq!(state(&host), 1, "half-open once the open time is over");
    let reply = get(&client, &url).await;
    assert_eq!(reply.body, "200 healthy");
    assert_eq!(state(&host), 0, "closed");
    let reply = get(&client, &url).await;
    assert_eq!(reply.body, "200 healthy");
    assert_eq!(upstream.requests_to("/down").len(), 5);

    let text = logs.text();
    assert!(text.contains(&format!("circuit opened for {dest}")), "{text}");
    assert!(text.contains(&format!("circuit closed for {dest}")), "{text}");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_component_gets_its_own_breaker_with_its_own_settings() {
    let dir = AppDir::new(APP);
    let mut outbound = OutboundSettings {
        retries: 0,
        ..OutboundSettings::default()
    };
    outbound.destinations.insert(
        "sick.spin.internal".to_string(),
        toml::from_str("breaker_failures = 2\nbreaker_open_ms = 60000").unwrap(),
    );
    let host = dir.start(settings(outbound)).await;
    let base = format!("http://{}/probe/outbound", host.http_addr());
    let client = client();
    let url = format!("{base}?url=http://sick.spin.internal/health");
    for _ in 0..2 {
        assert_eq!(get(&client, &url).await.body, "503 unhealthy on purpose");
    }
    let reply = get(&client, &url).await;
    assert_eq!(reply.status, 502, "{}", reply.body);
    assert!(
        reply
            .body
            .contains("circuit open for sick.spin.internal: 2 failures in a row"),
        "{}",
        reply.body
    );
    // A POST with a body larger than the host buffers gets the same answer, not a broken body
    // stream (`StreamError::Closed`): the host reads what the guest still writes.
    let post = format!("{url}&method=POST");
    let reply = send(&client, "POST", &post, vec![b'x'; 3_000_000]).await.unwrap();
    assert_eq!(reply.status, 502, "{}", reply.body);
    assert!(
        reply.body.contains("circuit open for sick.spin.internal"),
        "{}",
        reply.body
    );
    assert_eq!(metric(&host, "mosaic_requests_total", "component=\"sick\""), 2);
    // Other destinations are not affected.
    let reply = get(&client, &format!("{base}?url=http://self/probe/hello")).await;
    assert_eq!(reply.body, "200 hello from probe v1");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_request_timeout_bounds_a_dependency_that_never_answers() {
    let dead = black_hole().await;
    let dir = AppDir::new(APP);
    let host = dir
        .start(settings(OutboundSettings {
            request_timeout_ms: 300,
            retries: 0,
            breaker_failures: 0,
            ..OutboundSettings::default()
        }))
        .await;
    let base = format!("http://{}/probe/outbound", host.http_addr());
    let client = client();

    let started = Instant::now();
    let reply = get(&client, &format!("{base}?url=http://{dead}/")).await;
    let elapsed = started.elapsed();
    assert_eq!(reply.status, 502, "{}", reply.body);
    assert!(reply.body.contains("ConnectionReadTimeout"), "{}", reply.body);
    assert!(
        elapsed >= Duration::from_millis(250) && elapsed < Duration::from_secs(10),
        "{elapsed:?}"
    );

    // In-process too: /slow takes 500 ms to answer, the caller gives up after 300 ms.
    let reply = get(&client, &format!("{base}?url=http://self/probe/slow")).await;
    assert_eq!(reply.status, 502, "{}", reply.body);
    assert!(reply.body.contains("ConnectionReadTimeout"), "{}", reply.body);
    host.shutdown().await;
}

#[test]
fn settings_errors_name_the_key_and_the_file() {
    let dir = std::env::temp_dir().join(format!("mosaic-outbound-settings-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("mosaic.toml");
    let cases: HashMap<&str, &str> = HashMap::from([
        (
            "[outbound]\nbreaker_window_ms = 0\n",
            "`outbound.breaker_window_ms` must be greater than 0",
        ),
        (
            "[outbound.destinations.\"users.spin.internal\"]\nretries = 99\n",
            "`outbound.destinations.\"users.spin.internal\".retries` is 99",
        ),
        ("[outbound]\nretry = 1\n", "unknown field `retry`"),
    ]);
    for (text, expected) in cases {
        std::fs::write(&path, text).unwrap();
        let err = Settings::load(&path).unwrap_err().to_string();
        assert!(err.contains(expected), "{text}: {err}");
        assert!(err.contains("mosaic.toml"), "{err}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// A TCP echo server on loopback: answers each connection with what it sent, once the client
/// closes its side.
async fn tcp_echo() -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("address");
    tokio::spawn(async move {
        while let Ok((mut stream, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut received = Vec::new();
                if stream.read_to_end(&mut received).await.is_ok() {
                    let _ = stream.write_all(&received).await;
                }
            });
        }
    });
    addr
}

/// A UDP echo server on loopback: sends every datagram back to where it came from.
async fn udp_echo() -> SocketAddr {
    let socket = tokio::net::UdpSocket::bind("127.0.0.1:0").await.expect("bind");
    let addr = socket.local_addr().expect("address");
    tokio::spawn(async move {
        let mut buffer = [0u8; 1500];
        while let Ok((len, from)) = socket.recv_from(&mut buffer).await {
            let _ = socket.send_to(&buffer[..len], from).await;
        }
    });
    addr
}

/// `wasi:sockets` with the grants of `allowed_outbound_hosts`, written as addresses, names,
/// CIDR ranges and `{{ variable }}` templates: what they grant connects, what they do not is
/// refused with access-denied (Rust's `PermissionDenied`), and a component without a socket
/// grant has no socket at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sockets_reach_exactly_what_allowed_outbound_hosts_grants() {
    let (granted, by_name, by_range, by_template, refused) = (
        tcp_echo().await,
        tcp_echo().await,
        tcp_echo().await,
        tcp_echo().await,
        tcp_echo().await,
    );
    let (udp_granted, udp_refused) = (udp_echo().await, udp_echo().await);
    let app = format!(
        r#"
spin_manifest_version = 2
[application]
name = "sockets"
[variables]
echo_port = {{ default = "{by_template}" }}
echo_host = {{ default = "127.0.0.1", secret = true }}
optional_endpoint = {{ default = "" }}
[[trigger.http]]
route = "/probe/..."
component = "probe"
[[trigger.http]]
route = "/closed/..."
component = "closed"
[component.probe]
source = "{{probe}}"
allowed_outbound_hosts = [
    "tcp://127.0.0.1:{granted}",
    "tcp://localhost:{by_name}",
    "*://127.0.0.0/24:{by_range}",
    "tcp://{{{{ echo_host }}}}:{{{{ echo_port }}}}",
    "{{{{ optional_endpoint }}}}",
    "udp://127.0.0.1:{udp_granted}",
]
[component.closed]
source = "{{probe}}"
allowed_outbound_hosts = ["http://127.0.0.1:{refused}"]
"#,
        granted = granted.port(),
        by_name = by_name.port(),
        by_range = by_range.port(),
        udp_granted = udp_granted.port(),
        refused = refused.port(),
        by_template = by_template.port(),
    );
    let dir = AppDir::new(&app);
    let host = dir.start(Settings::default()).await;
    let client = client();
    let base = format!("http://{}", host.http_addr());
    let tcp = |path: &str, addr: String| format!("{base}/{path}/tcp?addr={addr}&send=hello");
    for (how, addr) in [
        ("an address", format!("127.0.0.1:{}", granted.port())),
        ("a name", format!("localhost:{}", by_name.port())),
        ("a CIDR range", format!("127.0.0.1:{}", by_range.port())),
        ("a template", format!("127.0.0.1:{}", by_template.port())),
    ] {
        let reply = get(&client, &tcp("probe", addr.clone())).await;
        assert_eq!(
            (reply.status, reply.body.as_str()),
            (200, "hello"),
            "TCP to {addr}, granted by {how}"
        );
    }
    let reply = get(&client, &tcp("probe", format!("127.0.0.1:{}", refused.port()))).await;
    assert_eq!(reply.status, 403, "{}", reply.body);
    assert!(reply.body.starts_with("PermissionDenied"), "{}", reply.body);
    // An `http://` grant of the same address is no socket grant.
    let reply = get(&client, &tcp("closed", format!("127.0.0.1:{}", refused.port()))).await;
    assert!(
        reply.status == 403 && reply.body.starts_with("PermissionDenied"),
        "{}",
        reply.body
    );

    let udp = |addr: SocketAddr| format!("{base}/probe/udp?addr={addr}&send=datagram");
    let reply = get(&client, &udp(udp_granted)).await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "datagram"));
    let reply = get(&client, &udp(udp_refused)).await;
    assert!(
        reply.status == 403 && reply.body.starts_with("PermissionDenied"),
        "{}",
        reply.body
    );
    let reply = get(&client, &format!("{base}/closed/udp?addr={udp_granted}&send=x")).await;
    assert!(
        reply.status == 403 && reply.body.starts_with("PermissionDenied"),
        "{}",
        reply.body
    );
    host.shutdown().await;
}

/// A template whose secret value makes no valid grant stops the start with an error that names
/// the component and the entry, never the value.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_templated_grant_keeps_its_secret_out_of_errors() {
    let dir = AppDir::new(
        r#"
spin_manifest_version = 2
[application]
name = "secret-grant"
[variables]
api_host = { default = "sup3r-secret/with-a-path", secret = true }
[[trigger.http]]
route = "/probe/..."
component = "probe"
[component.probe]
source = "{probe}"
allowed_outbound_hosts = ["https://{{ api_host }}"]
"#,
    );
    let err = match dir.try_start_in(Settings::default(), None, None).await {
        Ok(_) => panic!("a grant that expands to a path must not start"),
        Err(err) => format!("{err:#}"),
    };
    assert!(
        err.contains("probe") && err.contains("https://{{ api_host }}") && err.contains("secret"),
        "{err}"
    );
    assert!(!err.contains("sup3r"), "{err}");
}
