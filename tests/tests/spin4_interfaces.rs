//! Spin 4's platform interfaces (spin-sdk 7, component-model async) through the `spin7-caps`
//! fixture: every import links, and each interface works over the same backends and grants as
//! its 2.0 version: key-value (shared with a spin-sdk 5 component), SQLite (rows as a stream),
//! variables, Redis publish (to the durable broker), MQTT's and MySQL's grant checks and error
//! values (their data operations on the real servers are in `mqtt.rs` and `mysql.rs`),
//! wasi:otel (into the host's log); PostgreSQL and Redis data operations on the real servers.

use std::time::Duration;

use mosaic::settings::Settings;
use mosaic_tests::sink::Sink;
use mosaic_tests::{
    client, deploy_request, fixture, get, require_service, send, unique, AppDir, HttpClient, LogCapture, Reply,
};

const POSTGRES: &str = "127.0.0.1:5432";
const PG_ADDRESS: &str = "host=127.0.0.1%20user=postgres%20dbname=test";
const REDIS: &str = "127.0.0.1:6379";

/// `caps` is the spin-sdk 7 fixture, granted store and database `default` (not `secret`),
/// PostgreSQL and Redis on loopback; `probe` (spin-sdk 5) shares the store `default`.
const MANIFEST: &str = r#"
spin_manifest_version = 2
[application]
name = "spin4"
[variables]
greeting = { default = "hello from the manifest" }
[[trigger.http]]
route = "/caps/..."
component = "caps"
[[trigger.http]]
route = "/probe/..."
component = "probe"
[component.caps]
source = "{spin7-caps}"
key_value_stores = ["default"]
sqlite_databases = ["default"]
allowed_outbound_hosts = ["postgres://127.0.0.1:5432", "redis://127.0.0.1:6379", "mqtt://127.0.0.1:1883", "mysql://127.0.0.1:3306"]
[component.caps.variables]
greeting = "{{ greeting }}"
[component.probe]
source = "{probe}"
key_value_stores = ["default"]
"#;

async fn call(client: &HttpClient, base: &str, path: &str, body: &str) -> Reply {
    send(client, "POST", &format!("{base}/caps/{path}"), body.to_string())
        .await
        .unwrap_or_else(|err| panic!("/caps/{path}: {err}"))
}

/// The answer of a path that must succeed.
async fn ok(client: &HttpClient, base: &str, path: &str, body: &str) -> String {
    let reply = call(client, base, path, body).await;
    assert_eq!(reply.status, 200, "/caps/{path}: {}", reply.body);
    reply.body
}

#[test]
fn the_host_links_every_spin_4_interface_the_fixture_imports() {
    let engine = mosaic::engine::build_engine(&mosaic::settings::Limits::default()).expect("engine");
    let linker = mosaic::instance::build_linker(&engine).expect("linker");
    let component = wasmtime::component::Component::from_file(&engine, fixture("spin7-caps")).expect("compiles");
    let imports: Vec<String> = component
        .component_type()
        .imports(&engine)
        .map(|(name, _)| name.to_string())
        .collect();
    for interface in [
        "spin:key-value/key-value@3.0.0",
        "spin:sqlite/sqlite@3.1.0",
        "spin:postgres/postgres@4.2.0",
        "spin:variables/variables@3.0.0",
        "spin:redis/redis@3.0.0",
        "spin:mqtt/mqtt@3.0.0",
        "spin:mysql/mysql@3.0.0",
        "wasi:otel/tracing@0.2.0-rc.2",
        "wasi:otel/logs@0.2.0-rc.2",
    ] {
        assert!(
            imports.iter().any(|import| import == interface),
            "spin7-caps does not import {interface}: {imports:?}"
        );
    }
    if let Err(err) = linker.instantiate_pre(&component) {
        panic!("an import of spin7-caps does not link: {err:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_import_of_a_spin_sdk_7_component_links_and_deploys() {
    // The host starts with `caps` as the spin-sdk 5 probe, then takes spin7-caps in a deploy:
    // its validate step refuses any import the linker lacks.
    let dir = AppDir::new(&MANIFEST.replace("{spin7-caps}", "{probe}"));
    let host = dir.start(Settings::default()).await;
    let report = host.pipeline().deploy(deploy_request("caps", "spin7-caps")).await;
    if let Err(err) = &report {
        panic!("spin7-caps does not deploy (step {:?}): {err}", err.step());
    }
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn key_value_3_shares_the_stores_and_grants_of_2_0() {
    let dir = AppDir::new(MANIFEST);
    let host = dir.start(Settings::default()).await;
    let (client, base) = (client(), format!("http://{}", host.http_addr()));

    assert_eq!(ok(&client, &base, "kv/get?key=a", "").await, "(none)");
    assert_eq!(ok(&client, &base, "kv/set?key=a", "from spin 4").await, "set");
    assert_eq!(ok(&client, &base, "kv/set?key=b", "2").await, "set");
    assert_eq!(ok(&client, &base, "kv/get?key=a", "").await, "from spin 4");
    assert_eq!(
        ok(&client, &base, "kv/keys", "").await,
        "a\nb",
        "get-keys streams every key"
    );

    // The same store through fermyon:spin/key-value@2.0.0, both ways.
    let through_v2 = get(&client, &format!("{base}/probe/kv?op=get&key=a")).await;
    assert_eq!(through_v2.body, "from spin 4");
    let set_v2 = get(&client, &format!("{base}/probe/kv?op=set&key=c&value=from-v2")).await;
    assert_eq!(set_v2.status, 200, "{}", set_v2.body);
    assert_eq!(ok(&client, &base, "kv/get?key=c", "").await, "from-v2");

    // A store the component is not granted is an error value, not a trap.
    assert_eq!(ok(&client, &base, "kv/denied", "").await, "Error::AccessDenied");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn get_keys_streams_a_store_larger_than_a_page() {
    let dir = AppDir::new(MANIFEST);
    let host = dir.start(Settings::default()).await;
    let (client, base) = (client(), format!("http://{}", host.http_addr()));
    // More keys than the host reads per page (256) and holds ahead of the guest.
    assert_eq!(ok(&client, &base, "kv/fill?n=700", "").await, "set 700");
    let keys = ok(&client, &base, "kv/keys", "").await;
    let expected: Vec<String> = (0..700).map(|n| format!("key-{n:04}")).collect();
    assert_eq!(keys.lines().collect::<Vec<_>>(), expected, "every key once");
    host.shutdown().await;
}

/// Spin's Python SDK 5 imports the whole of `spin:up/platform@4.1.0`: the component deploys,
/// and its key-value store is the one the Rust components see.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_python_sdk_5_component_links_the_whole_platform_world_and_shares_the_stores() {
    let manifest = format!(
        "{MANIFEST}\n[[trigger.http]]\nroute = \"/kv\"\ncomponent = \"python\"\n[[trigger.http]]\nroute = \"/variable\"\ncomponent = \"python\"\n[component.python]\nsource = \"{{python}}\"\nkey_value_stores = [\"default\"]\n[component.python.variables]\ngreeting = \"{{{{ greeting }}}}\"\n"
    );
    let dir = AppDir::new(&manifest);
    let host = dir.start(Settings::default()).await;
    let (client, base) = (client(), format!("http://{}", host.http_addr()));
    let set = get(&client, &format!("{base}/kv?key=from-python&value=hello")).await;
    assert_eq!((set.status, set.body.as_str()), (200, "from-python=hello"));
    assert_eq!(ok(&client, &base, "kv/get?key=from-python", "").await, "hello");
    let variable = get(&client, &format!("{base}/variable?name=greeting")).await;
    assert_eq!(
        (variable.status, variable.body.as_str()),
        (200, "hello from the manifest")
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_3_1_streams_rows_and_keeps_the_grants() {
    let dir = AppDir::new(MANIFEST);
    let host = dir.start(Settings::default()).await;
    let (client, base) = (client(), format!("http://{}", host.http_addr()));

    let created = ok(
        &client,
        &base,
        "sqlite",
        "CREATE TABLE t (i INTEGER, r REAL, s TEXT, b BLOB, n TEXT)",
    )
    .await;
    assert_eq!(created, "columns=\nchanges=0\nrowid=0");
    let inserted = ok(
        &client,
        &base,
        "sqlite",
        "INSERT INTO t VALUES (1, 2.5, 'one', x'00ff', NULL), (2, -1.0, 'two', x'', NULL)",
    )
    .await;
    assert_eq!(inserted, "columns=\nchanges=2\nrowid=2");
    let selected = ok(&client, &base, "sqlite", "SELECT i, r, s, b, n FROM t ORDER BY i").await;
    let rows: Vec<&str> = selected
        .lines()
        .take_while(|line| !line.starts_with("changes="))
        .collect();
    assert_eq!(
        rows,
        [
            "columns=i,r,s,b,n",
            "row=i:1|r:2.5|t:one|b:00ff|null",
            "row=i:2|r:-1|t:two|b:|null"
        ],
        "every row, in order, through the stream"
    );

    let bad = call(&client, &base, "sqlite", "SELEC nonsense").await;
    assert_eq!(bad.status, 500);
    assert!(
        bad.body.contains("Io") && bad.body.contains("syntax error"),
        "{}",
        bad.body
    );

    assert_eq!(ok(&client, &base, "sqlite/denied", "").await, "Error::AccessDenied");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn variables_3_reads_the_component_variables() {
    let dir = AppDir::new(MANIFEST);
    let host = dir.start(Settings::default()).await;
    let (client, base) = (client(), format!("http://{}", host.http_addr()));
    assert_eq!(
        ok(&client, &base, "variables/greeting", "").await,
        "hello from the manifest"
    );
    let undefined = ok(&client, &base, "variables/nope", "").await;
    assert!(
        undefined.starts_with("Error::Undefined(") && undefined.contains("nope"),
        "{undefined}"
    );
    let invalid = ok(&client, &base, "variables/Not-A-Name", "").await;
    assert!(invalid.starts_with("Error::InvalidName("), "{invalid}");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mqtt_3_and_mysql_3_answer_error_values() {
    let dir = AppDir::new(MANIFEST);
    let host = dir.start(Settings::default()).await;
    let (client, base) = (client(), format!("http://{}", host.http_addr()));
    // An address without `?client_id=` is Spin's invalid-address (publishes: tests/mqtt.rs).
    let mqtt = ok(&client, &base, "mqtt", "").await;
    assert_eq!(mqtt, "Error::InvalidAddress", "{mqtt}");
    // As in Spin, the grant is checked first: an address not granted is not permitted.
    let mqtt = ok(&client, &base, "mqtt?addr=mqtt://10.1.2.3:1883", "").await;
    assert!(
        mqtt.starts_with("Error::ConnectionFailed(") && mqtt.contains("address mqtt://10.1.2.3:1883 is not permitted"),
        "{mqtt}"
    );
    let mysql = ok(&client, &base, "mysql?addr=mysql://root@10.1.2.3/test", "").await;
    assert!(
        mysql.contains("Error::ConnectionFailed(")
            && mysql.contains("address mysql://root@10.1.2.3/test is not permitted"),
        "{mysql}"
    );
    host.shutdown().await;
}

#[test]
fn otel_logs_and_spans_become_host_log_lines_in_the_request_trace() {
    LogCapture::run(|logs| async move {
        let dir = AppDir::new(MANIFEST);
        let host = dir.start(Settings::default()).await;
        let (client, base) = (client(), format!("http://{}", host.http_addr()));
        let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
        let request = http::Request::builder()
            .uri(format!("{base}/caps/otel"))
            .header("traceparent", format!("00-{trace_id}-00f067aa0ba902b7-01"))
            .body(Default::default())
            .expect("request");
        let response = client.request(request).await.expect("an answer");
        let status = response.status();
        let body = http_body_util::BodyExt::collect(response.into_body())
            .await
            .expect("body")
            .to_bytes();
        let reply = Reply {
            status: status.as_u16(),
            headers: Default::default(),
            body: String::from_utf8_lossy(&body).into_owned(),
        };
        assert_eq!(reply.status, 200, "{}", reply.body);
        // The guest continues the host's span of this request: the trace the request carried.
        assert!(
            reply.body.starts_with(&format!("trace={trace_id} span=")),
            "{}",
            reply.body
        );
        assert!(
            !reply.body.contains("00f067aa0ba902b7"),
            "the host's span is a new one: {}",
            reply.body
        );
        host.shutdown().await;

        let text = logs.text();
        let record = text
            .lines()
            .find(|line| line.contains("a guest log record"))
            .unwrap_or_else(|| panic!("no log line of the guest's record in:\n{text}"));
        assert!(record.contains("WARN"), "{record}");
        assert!(record.contains("component=caps"), "{record}");
        assert!(record.contains("user=ada"), "{record}");
        assert!(record.contains(&format!("trace_id={trace_id}")), "{record}");
        let span = text
            .lines()
            .find(|line| line.contains("guest span guest-work"))
            .unwrap_or_else(|| panic!("no log line of the guest's span in:\n{text}"));
        assert!(span.contains(&format!("trace_id={trace_id}")), "{span}");
        assert!(span.contains("span_id=00000000000000aa"), "{span}");
        assert!(span.contains("status=ok"), "{span}");
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_3_publish_goes_to_the_durable_broker() {
    // Publish needs no Redis server: it goes to the host's broker, to the subscribers.
    let sink = Sink::start().await;
    let channel = unique("spin4");
    let manifest = format!(
        "{}\n[[trigger.http]]\nroute = \"/caps/...\"\ncomponent = \"caps\"\n[component.caps]\nsource = \"{{spin7-caps}}\"\nallowed_outbound_hosts = [\"redis://127.0.0.1:6379\"]\n",
        sink.manifest(&channel)
    );
    let dir = AppDir::new(&manifest);
    let host = dir.start(Settings::default()).await;
    let (client, base) = (client(), format!("http://{}", host.http_addr()));
    let path = format!("redis/publish?addr=redis://127.0.0.1:6379&channel={channel}");
    assert_eq!(ok(&client, &base, &path, "from-spin-4").await, "published");
    assert!(
        sink.wait_for(Duration::from_secs(10), |sink| sink.handled("from-spin-4") == 1)
            .await,
        "the subscriber did not receive the message: {:?}",
        sink.handled_payloads()
    );

    // An address outside allowed_outbound_hosts cannot be opened.
    let denied = call(
        &client,
        &base,
        &format!("redis/publish?addr=redis://10.1.2.3:6379&channel={channel}"),
        "x",
    )
    .await;
    assert_eq!(denied.status, 500);
    assert!(denied.body.contains("InvalidAddress"), "{}", denied.body);
    host.shutdown().await;
}

mod needs_postgres {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs PostgreSQL on 127.0.0.1:5432"]
    async fn postgres_4_2_streams_rows_over_the_same_pools_and_grants() {
        require_service("PostgreSQL", POSTGRES);
        let dir = AppDir::new(MANIFEST);
        let host = dir.start(Settings::default()).await;
        let (client, base) = (client(), format!("http://{}", host.http_addr()));
        let table = unique("spin4").replace('-', "_");
        let pg = |path: &str| format!("{path}?addr={PG_ADDRESS}");

        let created = ok(
            &client,
            &base,
            &pg("pg/execute"),
            &format!("CREATE TABLE {table} (id INT, name TEXT)"),
        )
        .await;
        assert_eq!(created, "changed=0");
        let inserted = ok(
            &client,
            &base,
            &pg("pg/execute"),
            &format!("INSERT INTO {table} VALUES (1, 'ada'), (2, NULL)"),
        )
        .await;
        assert_eq!(inserted, "changed=2");
        let selected = ok(
            &client,
            &base,
            &pg("pg"),
            &format!("SELECT id, name FROM {table} ORDER BY id"),
        )
        .await;
        assert_eq!(
            selected,
            "columns=id:DbDataType::Int32,name:DbDataType::Str\nrow=int32:1|str:ada\nrow=int32:2|null"
        );

        // More rows than the host reads ahead: all of them, in order, through the stream.
        let many = ok(&client, &base, &pg("pg"), "SELECT g FROM generate_series(1, 1000) g").await;
        let lines: Vec<&str> = many.lines().collect();
        assert_eq!(lines.len(), 1001, "the columns and 1000 rows");
        assert_eq!((lines[1], lines[1000]), ("row=int32:1", "row=int32:1000"));
        // A query that fails part-way ends its stream with the server's error.
        let midway = call(
            &client,
            &base,
            &pg("pg"),
            "SELECT 1 / (500 - g) FROM generate_series(1, 1000) g",
        )
        .await;
        assert_eq!(midway.status, 500);
        assert!(
            midway.body.contains("22012"),
            "division_by_zero from the end future: {}",
            midway.body
        );

        let failed = call(&client, &base, &pg("pg"), "SELECT * FROM no_such_table_anywhere").await;
        assert_eq!(failed.status, 500);
        assert!(failed.body.contains("42P01"), "a structured db error: {}", failed.body);

        assert_eq!(ok(&client, &base, &pg("pg/builder"), "").await, "built, changed=1");
        let ca_root = ok(&client, &base, &pg("pg/ca-root"), "").await;
        assert!(
            ca_root.contains("ConnectionFailed") && ca_root.contains("without TLS"),
            "{ca_root}"
        );

        let denied = call(
            &client,
            &base,
            "pg?addr=host=10.1.2.3%20user=postgres%20dbname=test",
            "SELECT 1",
        )
        .await;
        assert_eq!(denied.status, 500);
        assert!(
            denied.body.contains("ConnectionFailed")
                && denied
                    .body
                    .contains("address postgres://10.1.2.3:5432 is not permitted"),
            "{}",
            denied.body
        );
        ok(&client, &base, &pg("pg/execute"), &format!("DROP TABLE {table}")).await;
        host.shutdown().await;
    }
}

mod needs_redis {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs Redis on 127.0.0.1:6379"]
    async fn redis_3_data_operations_reach_the_server() {
        require_service("Redis", REDIS);
        let dir = AppDir::new(MANIFEST);
        let host = dir.start(Settings::default()).await;
        let (client, base) = (client(), format!("http://{}", host.http_addr()));
        let key = unique("spin4-counter");
        let path = format!("redis/incr?addr=redis://127.0.0.1:6379&key={key}");
        assert_eq!(ok(&client, &base, &path, "").await, "1");
        assert_eq!(ok(&client, &base, &path, "").await, "2");
        host.shutdown().await;
    }
}
