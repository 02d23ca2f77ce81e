//! MySQL on the real server at 127.0.0.1:3306 (MariaDB, user root, database `test`), through
//! spin-sdk 5.2 (`fermyon:spin/mysql@2.0.0`, the probe's `/mysql`) and spin-sdk 7
//! (`spin:mysql/mysql@3.0.0`, spin7-caps' `/mysql`): every value type both ways, bound
//! parameters, the outbound grant, a server that goes away, and migrations.

use mosaic::settings::{MigrationTarget, Settings};
use mosaic_tests::{client, get, require_service, send, unique, AppDir, HttpClient, Reply};

const MYSQL: &str = "127.0.0.1:3306";
const ADDRESS: &str = "mysql://root@127.0.0.1:3306/test";

const MANIFEST: &str = r#"
spin_manifest_version = 2
[application]
name = "my"
[[trigger.http]]
route = "/granted/..."
component = "granted"
[[trigger.http]]
route = "/denied/..."
component = "denied"
[[trigger.http]]
route = "/caps/..."
component = "caps"
[component.granted]
source = "{probe}"
allowed_outbound_hosts = ["mysql://127.0.0.1:3306"]
[component.denied]
source = "{probe}"
allowed_outbound_hosts = ["mysql://10.1.2.3:3306"]
[component.caps]
source = "{spin7-caps}"
allowed_outbound_hosts = ["mysql://127.0.0.1:3306"]
"#;

/// The probe's `/mysql` (spin-sdk 5.2) on `component`, at `address`.
async fn my_at(client: &HttpClient, base: &str, component: &str, address: &str, query: &str, statement: &str) -> Reply {
    let url = format!(
        "{base}/{component}/mysql?addr={address}&{}",
        mosaic_tests::encode_typed_params(query)
    );
    send(client, "POST", &url, statement.to_string()).await.unwrap()
}

async fn my(client: &HttpClient, base: &str, query: &str, statement: &str) -> Reply {
    my_at(client, base, "granted", ADDRESS, query, statement).await
}

/// spin7-caps' `/mysql` (spin-sdk 7): `execute` or a query.
async fn caps(client: &HttpClient, base: &str, execute: bool, query: &str, statement: &str) -> Reply {
    let path = if execute { "mysql/execute" } else { "mysql" };
    let url = format!(
        "{base}/caps/{path}?addr={ADDRESS}&{}",
        mosaic_tests::encode_typed_params(query)
    );
    send(client, "POST", &url, statement.to_string()).await.unwrap()
}

/// A table name of its own for one test.
fn table(prefix: &str) -> String {
    unique(prefix).replace('-', "_")
}

/// Runs `statement` on the server directly (not through a guest): for what a test sets up
/// before the host starts.
async fn admin(statement: &str) {
    let pool = mosaic::backends::mysql_pool(ADDRESS, 1).unwrap();
    sqlx::Executor::execute(&pool, sqlx::raw_sql(statement)).await.unwrap();
    pool.close().await;
}

const COLUMNS: &str = "b BOOLEAN, i8 TINYINT, i16 SMALLINT, i24 MEDIUMINT, i32 INT, i64 BIGINT, u8 TINYINT UNSIGNED, \
     u16 SMALLINT UNSIGNED, u24 MEDIUMINT UNSIGNED, u32 INT UNSIGNED, u64 BIGINT UNSIGNED, f FLOAT, d DOUBLE, \
     s VARCHAR(100), txt TEXT, bin VARBINARY(10), blb BLOB, nothing INT";

/// One value of each type, at the edge of its range where it has one.
const PARAMS: &[&str] = &[
    "p=bool:true",
    "p=i8:-128",
    "p=i16:-32768",
    "p=i32:-8388608",
    "p=i32:-2147483648",
    "p=i64:-9223372036854775808",
    "p=u8:255",
    "p=u16:65535",
    "p=u32:16777215",
    "p=u32:4294967295",
    "p=u64:18446744073709551615",
    "p=f32:1.5",
    "p=f64:2.25",
    "p=str:it's x'); DROP TABLE x;--",
    "p=str:héllo wörld",
    "p=bytes:raw",
    "p=bytes:blob",
    "p=null:",
];

const VALUES: &[&str] = &[
    "DbValue::Int8(1)",
    "DbValue::Int8(-128)",
    "DbValue::Int16(-32768)",
    "DbValue::Int32(-8388608)",
    "DbValue::Int32(-2147483648)",
    "DbValue::Int64(-9223372036854775808)",
    "DbValue::Uint8(255)",
    "DbValue::Uint16(65535)",
    "DbValue::Uint32(16777215)",
    "DbValue::Uint32(4294967295)",
    "DbValue::Uint64(18446744073709551615)",
    "DbValue::Floating32(1.5)",
    "DbValue::Floating64(2.25)",
    "DbValue::Str(\"it's x'); DROP TABLE x;--\")",
    "DbValue::Str(\"héllo wörld\")",
    "DbValue::Binary([114, 97, 119])",
    "DbValue::Binary([98, 108, 111, 98])",
    "DbValue::DbNull",
];

const TYPES: &[&str] = &[
    "b:DbDataType::Int8",
    "i8:DbDataType::Int8",
    "i16:DbDataType::Int16",
    "i24:DbDataType::Int32",
    "i32:DbDataType::Int32",
    "i64:DbDataType::Int64",
    "u8:DbDataType::Uint8",
    "u16:DbDataType::Uint16",
    "u24:DbDataType::Uint32",
    "u32:DbDataType::Uint32",
    "u64:DbDataType::Uint64",
    "f:DbDataType::Floating32",
    "d:DbDataType::Floating64",
    "s:DbDataType::Str",
    "txt:DbDataType::Str",
    "bin:DbDataType::Binary",
    "blb:DbDataType::Binary",
    "nothing:DbDataType::Int32",
];

const OTHER_COLUMNS: &str = "n DECIMAL(10,4), day DATE, t TIME, dt DATETIME, ts TIMESTAMP NULL, nothing DATE";

mod needs_mysql {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs MySQL on 127.0.0.1:3306"]
    async fn every_type_round_trips_through_spin_sdk_5() {
        require_service("MySQL", MYSQL);
        let dir = AppDir::new(MANIFEST);
        let host = dir.start(Settings::default()).await;
        let base = format!("http://{}", host.http_addr());
        let client = client();
        let table = table("types");
        let created = my(
            &client,
            &base,
            "op=execute",
            &format!("CREATE TABLE {table} ({COLUMNS})"),
        )
        .await;
        assert_eq!(created.body, "done", "{}", created.body);
        let placeholders = vec!["?"; PARAMS.len()].join(", ");
        let inserted = my(
            &client,
            &base,
            &format!("op=execute&{}", PARAMS.join("&")),
            &format!("INSERT INTO {table} VALUES ({placeholders})"),
        )
        .await;
        assert_eq!(inserted.body, "done", "{}", inserted.body);

        let selected = my(&client, &base, "", &format!("SELECT * FROM {table}")).await;
        assert_eq!(selected.status, 200, "{}", selected.body);
        let json = selected.json();
        assert_eq!(json["rows"], serde_json::json!([VALUES]));
        assert_eq!(json["columns"], serde_json::json!(TYPES));

        // Parameters are bound: the injection attempt is a string that matches itself, and the
        // table is still there.
        let matched = my(
            &client,
            &base,
            "p=str:it's x'); DROP TABLE x;--",
            &format!("SELECT i8, s FROM {table} WHERE s = ?"),
        )
        .await
        .json();
        assert_eq!(
            matched["rows"],
            serde_json::json!([["DbValue::Int8(-128)", "DbValue::Str(\"it's x'); DROP TABLE x;--\")"]])
        );
        let none = my(
            &client,
            &base,
            "p=str:' OR '1'='1",
            &format!("SELECT s FROM {table} WHERE s = ?"),
        )
        .await
        .json();
        assert_eq!(none["rows"], serde_json::json!([]), "no row matches: {none}");
        // A result without rows still names its columns.
        assert_eq!(none["columns"], serde_json::json!(["s:DbDataType::Str"]));

        // Parameters of every type reach the server as their type.
        let echoed = my(
            &client,
            &base,
            "p=u64:18446744073709551615&p=i64:-5&p=f64:0.5&p=bytes:ab&p=null:",
            "SELECT ? AS big, ? + 1 AS small, ? AS half, ? AS raw, ? IS NULL AS missing",
        )
        .await
        .json();
        assert_eq!(
            echoed["rows"][0],
            serde_json::json!([
                "DbValue::Uint64(18446744073709551615)",
                "DbValue::Int64(-4)",
                "DbValue::Floating64(0.5)",
                "DbValue::Binary([97, 98])",
                "DbValue::Int32(1)"
            ]),
            "{echoed}"
        );

        // Types without a db-value, as in Spin: a NULL is db-null, a value cannot be converted
        // (the guest CASTs it).
        let other = super::table("other");
        my(
            &client,
            &base,
            "op=execute",
            &format!("CREATE TABLE {other} ({OTHER_COLUMNS})"),
        )
        .await;
        let inserted = my(
            &client,
            &base,
            "op=execute&p=str:12345.6789&p=str:2024-02-29&p=str:13:45:30&p=str:2024-02-29 13:45:30&p=str:2024-02-29 13:45:31&p=null:",
            &format!("INSERT INTO {other} VALUES (?, ?, ?, ?, ?, ?)"),
        )
        .await;
        assert_eq!(inserted.body, "done", "{}", inserted.body);
        let described = my(&client, &base, "", &format!("SELECT * FROM {other} WHERE 1 = 0"))
            .await
            .json();
        assert_eq!(
            described["columns"],
            serde_json::json!([
                "n:DbDataType::Other",
                "day:DbDataType::Other",
                "t:DbDataType::Other",
                "dt:DbDataType::Other",
                "ts:DbDataType::Other",
                "nothing:DbDataType::Other"
            ])
        );
        let null = my(&client, &base, "", &format!("SELECT nothing FROM {other}"))
            .await
            .json();
        assert_eq!(null["rows"], serde_json::json!([["DbValue::DbNull"]]));
        let decimal = my(&client, &base, "", &format!("SELECT n FROM {other}")).await;
        assert_eq!(decimal.status, 500);
        assert!(
            decimal.body.starts_with("Error::ValueConversionFailed(") && decimal.body.contains("DECIMAL"),
            "{}",
            decimal.body
        );
        let cast = my(
            &client,
            &base,
            "",
            &format!("SELECT CAST(n AS CHAR), CAST(day AS CHAR), CAST(t AS CHAR), CAST(dt AS CHAR), CAST(ts AS CHAR) FROM {other}"),
        )
        .await
        .json();
        assert_eq!(
            cast["rows"][0],
            serde_json::json!([
                "DbValue::Str(\"12345.6789\")",
                "DbValue::Str(\"2024-02-29\")",
                "DbValue::Str(\"13:45:30\")",
                "DbValue::Str(\"2024-02-29 13:45:30\")",
                "DbValue::Str(\"2024-02-29 13:45:31\")"
            ])
        );

        // A failing statement carries the server's error.
        let bad = my(&client, &base, "", "SELECT * FROM no_such_table_here").await;
        assert_eq!(bad.status, 500);
        assert!(
            bad.body.starts_with("Error::QueryFailed(")
                && bad.body.contains("no_such_table_here")
                && bad.body.contains("1146"),
            "{}",
            bad.body
        );

        my(&client, &base, "op=execute", &format!("DROP TABLE {table}, {other}")).await;
        host.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs MySQL on 127.0.0.1:3306"]
    async fn every_type_round_trips_through_spin_sdk_7() {
        require_service("MySQL", MYSQL);
        let dir = AppDir::new(MANIFEST);
        let host = dir.start(Settings::default()).await;
        let base = format!("http://{}", host.http_addr());
        let client = client();
        let table = table("types7");
        let created = caps(&client, &base, true, "", &format!("CREATE TABLE {table} ({COLUMNS})")).await;
        assert_eq!(created.body, "executed");
        let placeholders = vec!["?"; PARAMS.len()].join(", ");
        let inserted = caps(
            &client,
            &base,
            true,
            &PARAMS.join("&"),
            &format!("INSERT INTO {table} VALUES ({placeholders})"),
        )
        .await;
        assert_eq!(inserted.body, "executed", "{}", inserted.body);
        // A second row, read back through a stream of two rows.
        caps(
            &client,
            &base,
            true,
            "p=i8:7",
            &format!("INSERT INTO {table} (i8) VALUES (?)"),
        )
        .await;

        let selected = caps(&client, &base, false, "", &format!("SELECT * FROM {table} ORDER BY i8")).await;
        assert_eq!(selected.status, 200, "{}", selected.body);
        let lines: Vec<&str> = selected.body.lines().collect();
        assert_eq!(lines[0], format!("columns={}", TYPES.join(",")));
        assert_eq!(lines[1], format!("row={}", VALUES.join("|")));
        assert!(
            lines[2].starts_with("row=DbValue::DbNull|DbValue::Int8(7)|"),
            "{}",
            lines[2]
        );
        assert_eq!(lines.len(), 3, "{}", selected.body);

        let matched = caps(
            &client,
            &base,
            false,
            "p=str:it's x'); DROP TABLE x;--",
            &format!("SELECT u64 FROM {table} WHERE s = ?"),
        )
        .await;
        assert_eq!(
            matched.body,
            "columns=u64:DbDataType::Uint64\nrow=DbValue::Uint64(18446744073709551615)"
        );
        let empty = caps(
            &client,
            &base,
            false,
            "p=i8:99",
            &format!("SELECT s, blb FROM {table} WHERE i8 = ?"),
        )
        .await;
        assert_eq!(empty.body, "columns=s:DbDataType::Str,blb:DbDataType::Binary");

        // Spin's error values: a query that fails, a value without a db-value.
        let bad = caps(&client, &base, false, "", "SELECT * FROM no_such_table_here").await;
        assert!(
            bad.body.contains("Error::QueryFailed(") && bad.body.contains("1146"),
            "{}",
            bad.body
        );
        let date = caps(&client, &base, false, "", "SELECT CAST('2024-02-29' AS DATE) AS day").await;
        assert!(date.body.contains("Error::ValueConversionFailed("), "{}", date.body);

        caps(&client, &base, true, "", &format!("DROP TABLE {table}")).await;
        host.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs MySQL on 127.0.0.1:3306"]
    async fn each_statement_is_a_span_of_the_request_with_its_database() {
        use mosaic_tests::otlp::{OtlpReceiver, Transport, KIND_CLIENT, KIND_SERVER};
        require_service("MySQL", MYSQL);
        let receiver = OtlpReceiver::start(Transport::HttpProtobuf).await;
        let dir = AppDir::new(MANIFEST);
        let mut settings = Settings::default();
        settings.telemetry.endpoint = Some(receiver.endpoint());
        settings.telemetry.schedule_delay_ms = Some(50);
        let host = dir.start(settings).await;
        let base = format!("http://{}", host.http_addr());
        let http = client();
        let answer = my(&http, &base, "", "SELECT 1 AS one").await;
        assert_eq!(answer.status, 200, "{}", answer.body);
        let answer = my(&http, &base, "", "SELEC nonsense").await;
        assert_ne!(answer.status, 200, "{}", answer.body);
        let spans = receiver
            .wait_for(std::time::Duration::from_secs(10), |spans| {
                spans
                    .iter()
                    .filter(|span| span.attribute("db.system.name") == Some("mysql"))
                    .count()
                    >= 2
            })
            .await;
        let statements: Vec<_> = spans
            .iter()
            .filter(|span| span.attribute("db.system.name") == Some("mysql"))
            .collect();
        assert_eq!(statements.len(), 2, "{spans:#?}");
        for statement in &statements {
            assert_eq!(statement.kind, KIND_CLIENT);
            assert_eq!(statement.attribute("db.namespace"), Some("test"));
            let request = spans
                .iter()
                .find(|span| span.span_id == statement.parent_span_id)
                .expect("the statement's parent is exported");
            assert_eq!(
                (request.kind, request.attribute("mosaic.component")),
                (KIND_SERVER, Some("granted"))
            );
        }
        let select = statements
            .iter()
            .find(|span| span.name == "SELECT test")
            .expect("SELECT test");
        assert_eq!(select.attribute("db.query.text"), Some("SELECT 1 AS one"));
        assert_eq!(select.status_code, 0, "{select:?}");
        let failed = statements
            .iter()
            .find(|span| span.name == "SELEC test")
            .expect("SELEC test");
        assert_eq!(
            failed.status_code, 2,
            "the failed statement's span is an error: {failed:?}"
        );
        host.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs MySQL on 127.0.0.1:3306"]
    async fn grants_and_a_dead_server() {
        require_service("MySQL", MYSQL);
        let dir = AppDir::new(MANIFEST);
        let host = dir.start(Settings::default()).await;
        let base = format!("http://{}", host.http_addr());
        let client = client();

        let denied = my_at(&client, &base, "denied", ADDRESS, "", "SELECT 1").await;
        assert_eq!(denied.status, 403, "{}", denied.body);
        assert_eq!(
            denied.body,
            "open: Error::ConnectionFailed(\"address mysql://root@127.0.0.1:3306/test is not permitted\")"
        );
        // The password never shows.
        let secret = "mysql://root:hunter2@127.0.0.1:3306/test";
        let denied = my_at(&client, &base, "denied", secret, "", "SELECT 1").await;
        assert_eq!(
            denied.body,
            "open: Error::ConnectionFailed(\"address mysql://root@127.0.0.1:3306/test is not permitted\")"
        );
        let wrong = my_at(&client, &base, "granted", secret, "", "SELECT 1").await;
        assert!(
            wrong.body.starts_with("open: Error::ConnectionFailed(") && !wrong.body.contains("hunter2"),
            "{}",
            wrong.body
        );
        // This build has no TLS: an address that requires it cannot be opened.
        let tls = my_at(
            &client,
            &base,
            "granted",
            &format!("{ADDRESS}?ssl-mode=REQUIRED"),
            "",
            "SELECT 1",
        )
        .await;
        assert!(
            tls.body.starts_with("open: Error::ConnectionFailed(") && tls.body.contains("TLS"),
            "{}",
            tls.body
        );
        let opened = caps(&client, &base, false, "", "").await;
        assert_eq!(opened.body, "opened");
        let url = format!("{base}/caps/mysql?addr=mysql://root:hunter2@10.1.2.3/test");
        let denied7 = send(&client, "POST", &url, "").await.unwrap();
        assert_eq!(
            denied7.body,
            "MysqlError(Error::ConnectionFailed(\"address mysql://root@10.1.2.3/test is not permitted\"))"
        );

        // Nothing listens on this port: an error within the connect timeout, not a hang.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let dir = AppDir::new(&MANIFEST.replace("mysql://10.1.2.3:3306", "mysql://127.0.0.1:*"));
        let wide = dir.start(Settings::default()).await;
        let started = std::time::Instant::now();
        let dead = my_at(
            &client,
            &format!("http://{}", wide.http_addr()),
            "denied",
            &format!("mysql://root:hunter2@127.0.0.1:{closed}/test"),
            "",
            "SELECT 1",
        )
        .await;
        assert!(
            dead.body
                .starts_with("open: Error::ConnectionFailed(\"cannot connect to MySQL at mysql://root@127.0.0.1:"),
            "{}",
            dead.body
        );
        assert!(!dead.body.contains("hunter2"), "{}", dead.body);
        assert!(started.elapsed() < std::time::Duration::from_secs(15));
        wide.shutdown().await;
        host.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs MySQL on 127.0.0.1:3306"]
    async fn a_server_that_goes_away_gives_errors_then_service() {
        require_service("MySQL", MYSQL);
        // A relay to the real server that the test cuts and restores: the server "goes down".
        let relay = mosaic_tests::TcpRelay::start(MYSQL.parse().unwrap()).await;
        let dir = AppDir::new(&MANIFEST.replace("mysql://10.1.2.3:3306", "mysql://127.0.0.1:*"));
        let host = dir.start(Settings::default()).await;
        let base = format!("http://{}", host.http_addr());
        let address = format!("mysql://root@127.0.0.1:{}/test", relay.port);
        let client = client();
        let ask = || my_at(&client, &base, "denied", &address, "p=i32:5", "SELECT ? + 1");
        let up = ask().await;
        assert!(up.body.contains("Int64(6)"), "{}", up.body);
        // Readiness checks the server in use, named without password.
        let readyz = format!("http://{}/readyz", host.admin_addr());
        let check = format!("mysql mysql://root@127.0.0.1:{}/test", relay.port);
        let ready = get(&client, &readyz).await;
        assert_eq!(ready.status, 200, "{}", ready.body);
        assert!(ready.body.contains(&check), "{}", ready.body);

        relay.cut();
        let started = std::time::Instant::now();
        let down = ask().await;
        assert!(
            down.status >= 400,
            "a dead server is an error: {} {}",
            down.status,
            down.body
        );
        assert!(down.body.contains("ConnectionFailed("), "{}", down.body);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(15),
            "the error came within the deadline"
        );
        // Readiness says so too.
        let not_ready = get(&client, &readyz).await;
        assert_eq!(not_ready.status, 503, "{}", not_ready.body);
        assert!(not_ready.json()["failing"][&check].is_string(), "{}", not_ready.body);

        relay.restore();
        let started = std::time::Instant::now();
        loop {
            let reply = ask().await;
            if reply.body.contains("Int64(6)") {
                break;
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(20),
                "service did not resume: {}",
                reply.body
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        host.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs MySQL on 127.0.0.1:3306"]
    async fn migrations_at_start_and_on_a_deploy() {
        require_service("MySQL", MYSQL);
        let database = table("mig");
        admin(&format!("CREATE DATABASE {database}")).await;
        let address = format!("mysql://root@127.0.0.1:3306/{database}");
        let dir = AppDir::new(MANIFEST);
        let migrations = dir.path.join("migrations/granted");
        std::fs::create_dir_all(&migrations).unwrap();
        std::fs::write(
            migrations.join("0001_items.sql"),
            "CREATE TABLE items (id INT);\nINSERT INTO items VALUES (7);\n",
        )
        .unwrap();
        let mut settings = Settings::default();
        settings
            .migrations
            .insert("granted".into(), MigrationTarget::Mysql(address.clone()));
        let host = dir.start(settings).await;
        let base = format!("http://{}", host.http_addr());
        let client = client();
        let rows = my_at(&client, &base, "granted", &address, "", "SELECT id FROM items")
            .await
            .json();
        assert_eq!(rows["rows"], serde_json::json!([["DbValue::Int32(7)"]]));

        std::fs::write(migrations.join("0002_more.sql"), "INSERT INTO items VALUES (8);").unwrap();
        let report = host
            .pipeline()
            .deploy(mosaic_tests::deploy_request("granted", "probe-v2"))
            .await
            .unwrap();
        assert_eq!(report.migrations, vec!["0002_more.sql".to_string()]);
        // The probe imports fermyon:spin/mysql: no warning about it any more (LLM still has one).
        assert!(
            report
                .warnings
                .iter()
                .any(|warning| warning.contains("fermyon:spin/llm"))
                && !report.warnings.iter().any(|warning| warning.contains("mysql")),
            "{:?}",
            report.warnings
        );
        let rows = my_at(
            &client,
            &base,
            "granted",
            &address,
            "",
            "SELECT id FROM items ORDER BY id",
        )
        .await
        .json();
        assert_eq!(
            rows["rows"],
            serde_json::json!([["DbValue::Int32(7)"], ["DbValue::Int32(8)"]])
        );

        std::fs::write(migrations.join("0001_items.sql"), "CREATE TABLE items (id BIGINT);").unwrap();
        let err = host
            .pipeline()
            .deploy(mosaic_tests::deploy_request("granted", "probe"))
            .await
            .unwrap_err();
        assert_eq!(err.step(), Some(mosaic::deploy::Step::Migrate));
        assert!(err.to_string().contains("never edit an applied migration"), "{err}");
        host.shutdown().await;
        admin(&format!("DROP DATABASE {database}")).await;
    }
}
