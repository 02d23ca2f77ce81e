//! `mosaic up` and `mosaic watch` as processes: manifest errors, `--build`, graceful shutdown
//! on SIGTERM, and watch rebuilding only the component whose files changed.

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use mosaic_tests::{client, fixture, get, mosaic_bin, send, AppDir, MosaicProcess};

/// Runs `mosaic ARGS` in `dir`, expects it to fail, and returns what it printed on stderr.
fn mosaic_fails(dir: &Path, args: &[&str]) -> String {
    let out = Command::new(mosaic_bin()).current_dir(dir).args(args).output().unwrap();
    assert!(!out.status.success(), "mosaic {args:?} succeeded");
    String::from_utf8_lossy(&out.stderr).to_string()
}

#[test]
fn manifest_error_exits_non_zero_naming_file_and_key() {
    let dir = AppDir::new(
        "spin_manifest_version = 2\n[application]\nname = \"x\"\n[[trigger.http]]\nroute = \"/...\"\ncomponent = \"ghost\"\n",
    );
    let err = mosaic_fails(&dir.path, &["up"]);
    assert!(
        err.contains("spin.toml") && err.contains("trigger.http[0].component") && err.contains("ghost"),
        "{err}"
    );

    let dir = AppDir::new(
        "spin_manifest_version = 2\n[application]\nname = \"x\"\n[component.a]\nsource = \"missing.wasm\"\n",
    );
    let err = mosaic_fails(&dir.path, &["up"]);
    assert!(
        err.contains("component `a`") && err.contains("missing.wasm") && err.contains("--build"),
        "{err}"
    );

    let err = mosaic_fails(&dir.path, &["status"]);
    assert!(err.contains("no Mosaic host is running"), "{err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_in_flight_requests() {
    let dir = AppDir::new(mosaic_tests::TWO_COMPONENTS);
    let mut host = MosaicProcess::start(&dir.path, &["up"]);
    let client = client();
    let slow_url = format!("{}/probe/slow?ms=1500", host.base);
    let slow = {
        let client = client.clone();
        tokio::spawn(async move { get(&client, &slow_url).await })
    };
    tokio::time::sleep(Duration::from_millis(400)).await;
    host.terminate();
    let reply = slow.await.unwrap();
    assert_eq!(reply.status, 200, "the request in flight at SIGTERM finished");
    assert_eq!(reply.body, "v1 slept 1500ms");
    let status = tokio::task::spawn_blocking(move || host.wait(Duration::from_secs(20)))
        .await
        .unwrap();
    assert!(status.success(), "{status}");
    assert!(
        !dir.state_dir().join("admin.json").exists(),
        "a stopped host no longer advertises its admin API"
    );
}

/// Admin connections drain at shutdown like HTTP ones: a deploy whose upload is still arriving
/// at SIGTERM gets its answer before the host exits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_an_admin_request_in_flight_finish() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = AppDir::new(mosaic_tests::TWO_COMPONENTS);
    let mut host = MosaicProcess::start(&dir.path, &["up"]);
    let state = dir.state_dir();
    let endpoint: serde_json::Value =
        serde_json::from_slice(&std::fs::read(state.join("admin.json")).unwrap()).unwrap();
    let addr: std::net::SocketAddr = endpoint["addr"].as_str().unwrap().parse().unwrap();
    let token = std::fs::read_to_string(state.join("admin-token")).unwrap();
    // Not a component: the deploy is refused at `validate`, quickly, once the upload is whole.
    let upload = b"these bytes are not WebAssembly, and they arrive in two parts";
    let head = format!(
        "POST /v1/components/probe/deploy HTTP/1.1\r\nhost: {addr}\r\nauthorization: Bearer {}\r\ncontent-length: {}\r\n\r\n",
        token.trim(),
        upload.len()
    );
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&upload[..10]).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    host.terminate();
    tokio::time::sleep(Duration::from_millis(500)).await;
    // A host that dropped the connection at SIGTERM fails here or when reading the answer.
    let _ = stream.write_all(&upload[10..]).await;
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(20), stream.read_to_end(&mut answer)).await;
    let answer = String::from_utf8_lossy(&answer).to_string();
    assert!(
        matches!(read, Ok(Ok(_))),
        "reading the answer: {read:?}; read so far: {answer}"
    );
    assert!(
        answer.starts_with("HTTP/1.1 422") && answer.contains("step `validate`"),
        "the admin request in flight at SIGTERM got its answer: {answer}"
    );
    let status = tokio::task::spawn_blocking(move || host.wait(Duration::from_secs(20)))
        .await
        .unwrap();
    assert!(status.success(), "{status}");
}

fn watch_manifest(dir: &Path) -> String {
    format!(
        r#"
spin_manifest_version = 2
[application]
name = "watched"
[[trigger.http]]
route = "/probe/..."
component = "probe"
[[trigger.http]]
route = "/plain"
component = "plain"
[component.probe]
source = "probe.wasm"
[component.probe.build]
command = "cp \"$(cat version.txt)\" probe.wasm"
watch = ["version.txt"]
[component.plain]
source = "{plain}"
[component.plain.build]
command = "echo built >> {log}"
watch = ["plain.txt"]
"#,
        plain = fixture("plain").display(),
        log = dir.join("plain-builds.log").display()
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn watch_rebuilds_and_deploys_only_the_changed_component() {
    let dir = AppDir::new("");
    std::fs::write(dir.manifest(), watch_manifest(&dir.path)).unwrap();
    std::fs::write(
        dir.path.join("version.txt"),
        fixture("probe").to_string_lossy().as_bytes(),
    )
    .unwrap();
    std::fs::write(dir.path.join("plain.txt"), "1").unwrap();
    let host = MosaicProcess::start(&dir.path, &["watch", "--build"]);
    let client = client();
    let hello = format!("{}/probe/hello", host.base);
    assert_eq!(get(&client, &hello).await.body, "hello from probe v1");
    let builds = || {
        std::fs::read_to_string(dir.path.join("plain-builds.log"))
            .unwrap_or_default()
            .lines()
            .count()
    };
    assert_eq!(builds(), 1, "--build built every component once");

    // Change probe's watched input: it is rebuilt and swapped while plain keeps serving.
    std::fs::write(
        dir.path.join("version.txt"),
        fixture("probe-v2").to_string_lossy().as_bytes(),
    )
    .unwrap();
    let started = Instant::now();
    loop {
        let reply = get(&client, &hello).await;
        assert_eq!(reply.status, 200, "no failed request during the swap: {}", reply.body);
        assert_eq!(get(&client, &format!("{}/plain", host.base)).await.status, 200);
        if reply.body == "hello from probe v2" {
            break;
        }
        assert!(started.elapsed() < Duration::from_secs(20), "watch never deployed v2");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(builds(), 1, "plain's files did not change, so it was not rebuilt");

    // A broken build leaves the running version in place.
    std::fs::write(dir.path.join("version.txt"), "/nonexistent.wasm").unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(get(&client, &hello).await.body, "hello from probe v2");
}

const REQUIRED_VARIABLE: &str = r#"
spin_manifest_version = 2
[application]
name = "secret"
[variables]
api_key = { required = true, secret = true }
[[trigger.http]]
route = "/..."
component = "probe"
[component.probe]
source = "{probe}"
variables = { key = "{{ api_key }}" }
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn required_variable_comes_from_the_environment() {
    let dir = AppDir::new(REQUIRED_VARIABLE);
    let err = mosaic_fails(&dir.path, &["up", "--listen", "127.0.0.1:0"]);
    assert!(
        err.contains("api_key") && err.contains("SPIN_VARIABLE_API_KEY"),
        "{err}"
    );

    let host = MosaicProcess::start_with_env(&dir.path, &["up"], &[("SPIN_VARIABLE_API_KEY", "from-env-42")]);
    let reply = get(&client(), &format!("{}/variable?name=key", host.base)).await;
    assert_eq!(reply.body, "from-env-42");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_host_on_the_same_state_directory_is_refused() {
    let dir = AppDir::new(mosaic_tests::TWO_COMPONENTS);
    let first = MosaicProcess::start(&dir.path, &["up"]);
    let err = mosaic_fails(&dir.path, &["up", "--listen", "127.0.0.1:0"]);
    assert!(
        err.contains("another Mosaic host") && err.contains(&first.child.id().to_string()),
        "{err}"
    );
    assert_eq!(
        get(&client(), &format!("{}/probe/hello", first.base)).await.status,
        200,
        "the first keeps serving"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn json_logs_carry_the_request_span_and_its_trace() {
    const TRACE_ID: &str = "0af7651916cd43dd8448eb211c80319c";
    let dir = AppDir::new(mosaic_tests::TWO_COMPONENTS);
    let log = dir.path.join("host.log");
    let mut host = MosaicProcess::start_logging_to(&dir.path, &["up", "--log-format", "json"], &log);
    let request = http::Request::builder()
        .uri(format!("{}/probe/trap", host.base))
        .header("traceparent", format!("00-{TRACE_ID}-b7ad6b7169203331-01"))
        .body(http_body_util::Full::new(bytes::Bytes::new()))
        .expect("request");
    let reply = client().request(request).await.expect("answer");
    assert_eq!(reply.status(), 500);
    host.terminate();
    let status = tokio::task::spawn_blocking(move || host.wait(Duration::from_secs(20)))
        .await
        .unwrap();
    assert!(status.success(), "{status}");
    let text = std::fs::read_to_string(&log).expect("the log");
    let lines: Vec<serde_json::Value> = text
        .lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|err| panic!("not a JSON line ({err}): {line}")))
        .collect();
    let failure = lines
        .iter()
        .find(|line| line["fields"]["message"] == "request failed")
        .unwrap_or_else(|| panic!("no `request failed` line: {text}"));
    assert_eq!(failure["level"], "ERROR");
    assert_eq!(failure["span"]["component"], "probe", "{failure}");
    assert_eq!(failure["span"]["trace_id"], TRACE_ID, "{failure}");
    assert!(
        failure["span"]["version"].as_str().is_some_and(|v| v.len() == 12),
        "{failure}"
    );
    // What the guest printed (its panic message, on stderr) is a JSON event of its own, in the
    // request's span.
    let printed = lines
        .iter()
        .find(|line| {
            line["target"] == "mosaic::guest"
                && line["fields"]["stream"] == "stderr"
                && line["fields"]["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("traps on purpose"))
        })
        .unwrap_or_else(|| panic!("no guest output line: {text}"));
    assert_eq!(printed["fields"]["component"], "probe", "{printed}");
    assert_eq!(printed["span"]["trace_id"], TRACE_ID, "{printed}");
}

/// An application for `spin up`'s flags: the probe reads its variables, its environment, the
/// default key-value store and the default database; `plain` is there to be left out by `-c`.
const FLAGS_APP: &str = r#"
spin_manifest_version = 2
[application]
name = "flags"
[variables]
greeting = { default = "hello" }
token = { required = true, secret = true }
[[trigger.http]]
route = "/probe/..."
component = "probe"
[[trigger.http]]
route = "/plain"
component = "plain"
[component.probe]
source = "{probe}"
key_value_stores = ["default"]
sqlite_databases = ["default"]
[component.probe.variables]
greeting = "{{ greeting }}"
token = "{{ token }}"
[component.plain]
source = "{plain}"
"#;

/// `mosaic up` with `spin up`'s flags: --variable (a pair, a file's content), -e, --key-value,
/// --sqlite (a statement and @file), -c, --find-free-port and --temp, in one run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spin_up_flags_set_variables_environment_seeds_components_port_and_state() {
    let dir = AppDir::new(FLAGS_APP);
    std::fs::write(dir.path.join("token.txt"), "t0ken").unwrap();
    std::fs::write(dir.path.join("more.sql"), "INSERT INTO seeded VALUES (42);").unwrap();
    // A taken port: --find-free-port listens on the next free one.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_port = taken.local_addr().unwrap().port();
    let listen = format!("127.0.0.1:{taken_port}");
    let mut host = MosaicProcess::start(
        &dir.path,
        &[
            "up",
            "--listen",
            &listen,
            "--find-free-port",
            "--variable",
            "greeting=hi there",
            "--variable",
            "token=@token.txt",
            "-e",
            "MODE=test",
            "--env",
            "OTHER=x=y",
            "--key-value",
            "seeded=yes",
            "--sqlite",
            "CREATE TABLE seeded (x INTEGER); INSERT INTO seeded VALUES (41)",
            "--sqlite",
            "@more.sql",
            "-c",
            "probe",
            "--temp",
        ],
    );
    assert_ne!(host.base, format!("http://{listen}"), "the taken port was skipped");
    let client = client();
    let get_body = |path: &str| {
        let (client, url) = (client.clone(), format!("{}{path}", host.base));
        async move { get(&client, &url).await }
    };
    assert_eq!(get_body("/probe/variable?name=greeting").await.body, "hi there");
    assert_eq!(get_body("/probe/variable?name=token").await.body, "t0ken");
    assert_eq!(get_body("/probe/env?name=MODE").await.body, "test");
    assert_eq!(get_body("/probe/env?name=OTHER").await.body, "x=y");
    assert_eq!(get_body("/probe/kv?key=seeded").await.body, "yes");
    let rows = send(
        &client,
        "POST",
        &format!("{}/probe/sql", host.base),
        "SELECT x FROM seeded ORDER BY x",
    )
    .await
    .unwrap();
    assert!(
        rows.body.contains(r#"[{"integer":41}],[{"integer":42}]"#),
        "{}",
        rows.body
    );
    assert_eq!(get_body("/plain").await.status, 404, "-c probe: plain is not served");
    assert!(
        !dir.path.join(".mosaic").exists(),
        "--temp: no state beside the manifest"
    );
    let pid = host.child.id();
    host.terminate();
    let status = tokio::task::spawn_blocking(move || host.wait(Duration::from_secs(20)))
        .await
        .unwrap();
    assert!(status.success(), "{status}");
    let leftover = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(Result::ok)
        .any(|entry| {
            entry
                .file_name()
                .to_string_lossy()
                .starts_with(&format!("mosaic-temp-{pid}-"))
        });
    assert!(!leftover, "--temp: the state directory is gone after the host stopped");
    drop(taken);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn from_a_single_component_serves_it_at_every_path() {
    let dir = AppDir::new(FLAGS_APP);
    std::fs::copy(fixture("probe"), dir.path.join("my_service.wasm")).unwrap();
    let host = MosaicProcess::start(&dir.path, &["--from", "my_service.wasm", "up"]);
    let reply = get(&client(), &format!("{}/hello", host.base)).await;
    assert_eq!((reply.status, reply.body.as_str()), (200, "hello from probe v1"));
    let reply = get(&client(), &format!("{}/headers", host.base)).await;
    assert!(reply.body.contains("\"spin-component-route\""), "{}", reply.body);
    // The CLI finds that host from the same -f.
    let out = Command::new(mosaic_bin())
        .current_dir(&dir.path)
        .args(["-f", "my_service.wasm", "status"])
        .output()
        .unwrap();
    let status = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && status.contains("my-service"), "{status}");
}

#[test]
fn spin_flags_without_an_equivalent_say_so() {
    let dir = AppDir::new(FLAGS_APP);
    let err = mosaic_fails(&dir.path, &["up", "--direct-mounts"]);
    assert!(
        err.contains("`spin up --direct-mounts` has no equivalent in Mosaic"),
        "{err}"
    );
    let err = mosaic_fails(&dir.path, &["up", "--log-dir", "logs"]);
    assert!(err.contains("--log-format json"), "{err}");
    let err = mosaic_fails(&dir.path, &["up", "--no-such-flag"]);
    assert!(err.contains("--no-such-flag"), "{err}");
    let err = mosaic_fails(
        &dir.path,
        &["up", "--variable", "undeclared=1", "--variable", "token=x"],
    );
    assert!(
        err.contains("--variable undeclared") && err.contains("greeting, token"),
        "{err}"
    );
    let err = mosaic_fails(&dir.path, &["up", "--variable", "token=x", "-c", "ghost"]);
    assert!(
        err.contains("--component-id ghost") && err.contains("plain, probe"),
        "{err}"
    );
    let err = mosaic_fails(&dir.path, &["up", "--variable", "token=x", "--tls-cert", "cert.pem"]);
    assert!(err.contains("--tls-cert needs --tls-key"), "{err}");
    let err = mosaic_fails(
        &dir.path,
        &[
            "up",
            "--variable",
            "token=x",
            "--tls-cert",
            "no.pem",
            "--tls-key",
            "no.key",
        ],
    );
    assert!(err.contains("--tls-cert no.pem: cannot read it"), "{err}");
}

/// A CA, and a certificate it signed for localhost and 127.0.0.1, made with openssl.
fn test_ca(dir: &Path) {
    let run = |args: &[&str]| {
        let out = Command::new("openssl")
            .current_dir(dir)
            .args(args)
            .output()
            .expect("openssl runs");
        assert!(
            out.status.success(),
            "openssl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "2",
        "-subj",
        "/CN=Mosaic test CA",
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "server.key",
        "-out",
        "server.csr",
        "-subj",
        "/CN=localhost",
    ]);
    std::fs::write(dir.join("san.ext"), "subjectAltName=DNS:localhost,IP:127.0.0.1\n").unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "server.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "server.pem",
        "-days",
        "2",
        "-extfile",
        "san.ext",
    ]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_cert_serves_https_that_curl_verifies_against_the_ca() {
    let dir = AppDir::new(FLAGS_APP);
    test_ca(&dir.path);
    let host = MosaicProcess::start(
        &dir.path,
        &[
            "up",
            "--variable",
            "token=x",
            "--tls-cert",
            "server.pem",
            "--tls-key",
            "server.key",
        ],
    );
    let base = host.base.clone();
    assert!(base.starts_with("https://127.0.0.1:"), "{base}");
    let port = base.rsplit(':').next().unwrap().to_string();
    let curl = |url: String, ca: bool| {
        let mut command = Command::new("curl");
        command.current_dir(&dir.path).args(["-sS", "--max-time", "10"]);
        if ca {
            command.args(["--cacert", "ca.pem"]);
        }
        command.arg(url).output().expect("curl runs")
    };
    let out = curl(format!("https://localhost:{port}/probe/hello"), true);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from probe v1");
    let out = curl(format!("https://localhost:{port}/probe/headers"), true);
    let headers = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        headers.contains(&format!("https://localhost:{port}/probe/headers")),
        "spin-full-url is https: {headers}"
    );
    // Without the CA the certificate does not verify; plain HTTP gets no answer.
    let out = curl(format!("https://localhost:{port}/probe/hello"), false);
    assert!(!out.status.success(), "an unknown CA must not verify");
    let out = curl(format!("http://localhost:{port}/probe/hello"), false);
    assert!(
        !out.status.success() || out.stdout.is_empty(),
        "plain HTTP on the TLS port is not served"
    );
}
