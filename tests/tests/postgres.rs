//! PostgreSQL through spin-sdk 5.x guests on the real server at 127.0.0.1:5432: v2, v3 and v4,
//! every v4 value type both ways, bound parameters, the outbound grant, and a dead server.

use mosaic::settings::Settings;
use mosaic_tests::{client, require_service, send, unique, AppDir, HttpClient, Reply};

const POSTGRES: &str = "127.0.0.1:5432";
const ADDRESS: &str = "host=127.0.0.1%20user=postgres%20dbname=test";

const MANIFEST: &str = r#"
spin_manifest_version = 2
[application]
name = "pg"
[[trigger.http]]
route = "/granted/..."
component = "granted"
[[trigger.http]]
route = "/denied/..."
component = "denied"
[component.granted]
source = "{probe}"
allowed_outbound_hosts = ["postgres://127.0.0.1:5432"]
[component.denied]
source = "{probe}"
allowed_outbound_hosts = ["postgres://10.1.2.3:5432"]
"#;

async fn pg(client: &HttpClient, base: &str, component: &str, query: &str, statement: &str) -> Reply {
    let url = format!(
        "{base}/{component}/pg?addr={ADDRESS}&{}",
        mosaic_tests::encode_typed_params(query)
    );
    send(client, "POST", &url, statement.to_string()).await.unwrap()
}

mod needs_postgres {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs PostgreSQL on 127.0.0.1:5432"]
    async fn every_v4_type_round_trips() {
        require_service("PostgreSQL", POSTGRES);
        let dir = AppDir::new(MANIFEST);
        let host = dir.start(Settings::default()).await;
        let base = format!("http://{}", host.http_addr());
        let client = client();
        let table = unique("types").replace('-', "_");
        let created = pg(
        &client,
        &base,
        "granted",
        "op=execute",
        &format!(
            "CREATE TABLE {table} (b BOOLEAN, i INT4, l INT8, f FLOAT4, d FLOAT8, s TEXT, bin BYTEA, day DATE, t TIME, \
             dt TIMESTAMP, ts TIMESTAMPTZ, u UUID, j JSONB, n NUMERIC, r INT4RANGE, a INT8[], sa TEXT[], iv INTERVAL, nothing TEXT)"
        ),
    )
    .await;
        assert_eq!(created.status, 200, "{}", created.body);
        let params = [
            "p=bool:true",
            "p=i32:-7",
            "p=i64:9000000000",
            "p=f32:1.5",
            "p=f64:2.25",
            "p=str:it's x'); DROP TABLE x;--",
            "p=bytes:raw",
            "p=date:2024-02-29",
            "p=time:13-45-30-500000000",
            "p=datetime:2024-02-29-13-45-30-0",
            "p=ts:1700000000",
            "p=uuid:67e55044-10b1-426f-9247-bb680e5fe0c8",
            "p=json:{\"a\":[1,2]}",
            "p=dec:12345.6789",
            "p=r32:1..10",
            "p=a64:1,2,x",
            "p=astr:a,null,c",
            "p=interval:1500000,3,2",
            "p=null:",
        ]
        .join("&");
        let placeholders: Vec<String> = (1..=19).map(|i| format!("${i}")).collect();
        let inserted = pg(
            &client,
            &base,
            "granted",
            &format!("op=execute&{params}"),
            &format!("INSERT INTO {table} VALUES ({})", placeholders.join(", ")),
        )
        .await;
        assert_eq!(inserted.body, "1", "one row inserted");

        let selected = pg(&client, &base, "granted", "", &format!("SELECT * FROM {table}")).await;
        assert_eq!(selected.status, 200, "{}", selected.body);
        let json = selected.json();
        let row: Vec<&str> = json["rows"][0]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap())
            .collect();
        let expected = [
            "DbValue::Boolean(true)",
            "DbValue::Int32(-7)",
            "DbValue::Int64(9000000000)",
            "DbValue::Floating32(1.5)",
            "DbValue::Floating64(2.25)",
            "DbValue::Str(\"it's x'); DROP TABLE x;--\")",
            "DbValue::Binary([114, 97, 119])",
            "DbValue::Date((2024, 2, 29))",
            "DbValue::Time((13, 45, 30, 500000000))",
            "DbValue::Datetime((2024, 2, 29, 13, 45, 30, 0))",
            "DbValue::Timestamp(1700000000)",
            "DbValue::Uuid(\"67e55044-10b1-426f-9247-bb680e5fe0c8\")",
            "DbValue::Jsonb([123, 34, 97, 34, 58, 91, 49, 44, 50, 93, 125])",
            "DbValue::Decimal(\"12345.6789\")",
            "DbValue::RangeInt32((Some((1, RangeBoundKind::Inclusive)), Some((10, RangeBoundKind::Exclusive))))",
            "DbValue::ArrayInt64([Some(1), Some(2), None])",
            "DbValue::ArrayStr([Some(\"a\"), None, Some(\"c\")])",
            "DbValue::Interval(Interval { micros: 1500000, days: 3, months: 2 })",
            "DbValue::DbNull",
        ];
        assert_eq!(row, expected);
        let columns = json["columns"].as_array().unwrap();
        assert_eq!(columns[0], "b:DbDataType::Boolean");
        assert_eq!(columns[14], "r:DbDataType::RangeInt32");
        assert_eq!(columns[17], "iv:DbDataType::Interval");

        // v3 and v2 read the same table with their own, smaller value sets.
        let v3 = pg(
            &client,
            &base,
            "granted",
            "v=3",
            &format!("SELECT i, day, ts, u FROM {table}"),
        )
        .await
        .json();
        assert_eq!(
            v3["rows"][0],
            serde_json::json!([
                "DbValue::Int32(-7)",
                "DbValue::Date((2024, 2, 29))",
                "DbValue::Timestamp(1700000000)",
                "DbValue::Unsupported"
            ])
        );
        let v2 = pg(
            &client,
            &base,
            "granted",
            "v=2&p=i32:-7",
            &format!("SELECT s, day FROM {table} WHERE i = $1"),
        )
        .await
        .json();
        assert_eq!(
            v2["rows"][0],
            serde_json::json!(["DbValue::Str(\"it's x'); DROP TABLE x;--\")", "DbValue::Unsupported"])
        );
        let v2_unsigned = pg(&client, &base, "granted", "v=2&p=u64:42", "SELECT $1::int8 + 1")
            .await
            .json();
        assert_eq!(v2_unsigned["rows"][0][0], "DbValue::Int64(43)");

        // A failing statement carries the server's error; v4 gives its SQLSTATE.
        let bad = pg(&client, &base, "granted", "", "SELECT * FROM no_such_table_here").await;
        assert_eq!(bad.status, 500);
        assert!(
            bad.body.contains("42P01") && bad.body.contains("does not exist"),
            "{}",
            bad.body
        );

        pg(&client, &base, "granted", "op=execute", &format!("DROP TABLE {table}")).await;
        host.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs PostgreSQL on 127.0.0.1:5432"]
    async fn grants_concurrency_and_a_dead_server() {
        require_service("PostgreSQL", POSTGRES);
        let dir = AppDir::new(MANIFEST);
        let host = dir.start(Settings::default()).await;
        let base = format!("http://{}", host.http_addr());
        let client = client();

        let denied = pg(&client, &base, "denied", "", "SELECT 1").await;
        assert_eq!(denied.status, 403, "{}", denied.body);
        assert!(
            denied
                .body
                .contains("ConnectionFailed(\"address postgres://127.0.0.1:5432 is not permitted\")"),
            "{}",
            denied.body
        );

        let table = unique("rows").replace('-', "_");
        pg(
            &client,
            &base,
            "granted",
            "op=execute",
            &format!("CREATE TABLE {table} (worker INT4)"),
        )
        .await;
        let mut tasks = Vec::new();
        for worker in 0..32 {
            let (client, base, table) = (client.clone(), base.clone(), table.clone());
            tasks.push(tokio::spawn(async move {
                pg(
                    &client,
                    &base,
                    "granted",
                    &format!("op=execute&p=i32:{worker}"),
                    &format!("INSERT INTO {table} VALUES ($1)"),
                )
                .await
            }));
        }
        for task in tasks {
            let reply = task.await.unwrap();
            assert_eq!(reply.body, "1", "{}", reply.body);
        }
        let count = pg(
            &client,
            &base,
            "granted",
            "",
            &format!("SELECT COUNT(DISTINCT worker)::int4 FROM {table}"),
        )
        .await
        .json();
        assert_eq!(count["rows"][0][0], "DbValue::Int32(32)");
        pg(&client, &base, "granted", "op=execute", &format!("DROP TABLE {table}")).await;

        // Nothing listens on this port: an error within the connect timeout, not a hang.
        let closed = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let started = std::time::Instant::now();
        let url = format!("{base}/granted/pg?addr=postgres://postgres@127.0.0.1:{closed}/test");
        let dead = send(&client, "POST", &url, "SELECT 1").await.unwrap();
        assert_eq!(dead.status, 403, "{}", dead.body);
        assert!(started.elapsed() < std::time::Duration::from_secs(15));
        host.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs PostgreSQL on 127.0.0.1:5432"]
    async fn a_server_that_goes_away_gives_errors_then_service() {
        require_service("PostgreSQL", POSTGRES);
        // A relay to the real server that the test cuts and restores: the server "goes down".
        let relay = mosaic_tests::TcpRelay::start(POSTGRES.parse().unwrap()).await;
        let dir = AppDir::new(&MANIFEST.replace("postgres://10.1.2.3:5432", "postgres://127.0.0.1:*"));
        let host = dir.start(Settings::default()).await;
        let url = format!(
            "http://{}/denied/pg?addr=postgres://postgres@127.0.0.1:{}/test&p=i32:5",
            host.http_addr(),
            relay.port
        );
        let client = client();
        let up = send(&client, "POST", &url, "SELECT $1::int4 + 1").await.unwrap();
        assert!(up.body.contains("Int32(6)"), "{}", up.body);

        relay.cut();
        let started = std::time::Instant::now();
        let down = send(&client, "POST", &url, "SELECT $1::int4 + 1").await.unwrap();
        assert!(
            down.status >= 400,
            "a dead server is an error: {} {}",
            down.status,
            down.body
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(15),
            "the error came within the deadline"
        );

        relay.restore();
        let started = std::time::Instant::now();
        loop {
            let reply = send(&client, "POST", &url, "SELECT $1::int4 + 1").await.unwrap();
            if reply.body.contains("Int32(6)") {
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
    #[ignore = "needs PostgreSQL on 127.0.0.1:5432"]
    async fn migrations_can_target_postgres() {
        require_service("PostgreSQL", POSTGRES);
        let schema = unique("mig").replace('-', "_");
        let address = format!("host=127.0.0.1 user=postgres dbname=test options=-csearch_path={schema}");
        let dir = AppDir::new(MANIFEST);
        let mut settings = Settings::default();
        settings.migrations.insert(
            "granted".into(),
            mosaic::settings::MigrationTarget::Postgres(address.clone()),
        );
        let host = dir.start(settings).await;
        let base = format!("http://{}", host.http_addr());
        let client = client();
        let created = pg(
            &client,
            &base,
            "granted",
            "op=execute",
            &format!("CREATE SCHEMA {schema}"),
        )
        .await;
        assert_eq!(created.body, "0", "{}", created.body);

        let migrations = dir.path.join("migrations/granted");
        std::fs::create_dir_all(&migrations).unwrap();
        std::fs::write(
            migrations.join("0001_items.sql"),
            "CREATE TABLE items (id INT4); INSERT INTO items VALUES (7);",
        )
        .unwrap();
        let report = host
            .pipeline()
            .deploy(mosaic_tests::deploy_request("granted", "probe-v2"))
            .await
            .unwrap();
        assert_eq!(report.migrations, vec!["0001_items.sql".to_string()]);
        let encoded: String = address.replace(' ', "%20").replace('=', "%3D");
        let url = format!("{base}/granted/pg?addr={encoded}");
        let rows = send(&client, "POST", &url, "SELECT id FROM items")
            .await
            .unwrap()
            .json();
        assert_eq!(rows["rows"][0][0], "DbValue::Int32(7)");

        std::fs::write(migrations.join("0001_items.sql"), "CREATE TABLE items (id INT8);").unwrap();
        let err = host
            .pipeline()
            .deploy(mosaic_tests::deploy_request("granted", "probe"))
            .await
            .unwrap_err();
        assert_eq!(err.step(), Some(mosaic::deploy::Step::Migrate));
        assert!(err.to_string().contains("never edit an applied migration"), "{err}");
        pg(
            &client,
            &base,
            "granted",
            "op=execute",
            &format!("DROP SCHEMA {schema} CASCADE"),
        )
        .await;
        host.shutdown().await;
    }
}
