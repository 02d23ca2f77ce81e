//! SQLite through spin-sdk 5.x guests: `fermyon:spin/sqlite@2.0.0` and `spin:sqlite@3.0.0`,
//! every value type both ways, bound parameters, grants, durability and concurrent inserts.

use mosaic::settings::Settings;
use mosaic_tests::{client, send, AppDir, HttpClient, Reply};

const MANIFEST: &str = r#"
spin_manifest_version = 2
[application]
name = "sql"
[[trigger.http]]
route = "/a/..."
component = "a"
[[trigger.http]]
route = "/b/..."
component = "b"
[component.a]
source = "{probe}"
sqlite_databases = ["default", "orders"]
[component.b]
source = "{probe}"
sqlite_databases = ["users"]
"#;

async fn sql(client: &HttpClient, base: &str, component: &str, query: &str, statement: &str) -> Reply {
    let url = format!("{base}/{component}/sql?{query}");
    send(client, "POST", &url, statement.to_string()).await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_round_trip_on_v2_and_v3() {
    let dir = AppDir::new(MANIFEST);
    let host = dir.start(Settings::default()).await;
    let base = format!("http://{}", host.http_addr());
    let client = client();
    let created = sql(
        &client,
        &base,
        "a",
        "db=orders",
        "CREATE TABLE t (i INTEGER, r REAL, s TEXT, b BLOB, n TEXT)",
    )
    .await;
    assert_eq!(created.status, 200, "{}", created.body);

    let insert = "INSERT INTO t (i, r, s, b, n) VALUES (?, ?, ?, ?, ?)";
    let params = "db=orders&v=3&p=i:-42&p=r:2.5&p=t:x');%20DROP%20TABLE%20t;--&p=b:00ff10&p=n:";
    let inserted = sql(&client, &base, "a", params, insert).await.json();
    assert_eq!(inserted["last_insert_rowid"], 1);
    assert_eq!(inserted["changes"], 1);

    for version in ["2", "3"] {
        let selected = sql(
            &client,
            &base,
            "a",
            &format!("db=orders&v={version}"),
            "SELECT i, r, s, b, n FROM t",
        )
        .await;
        assert_eq!(selected.status, 200, "{}", selected.body);
        let json = selected.json();
        assert_eq!(json["columns"], serde_json::json!(["i", "r", "s", "b", "n"]));
        assert_eq!(
            json["rows"][0],
            serde_json::json!([{ "integer": -42 }, { "real": 2.5 }, { "text": "x'); DROP TABLE t;--" }, { "blob": [0, 255, 16] }, null]),
            "v{version}: a parameter is bound, never spliced into the statement"
        );
    }

    let updated = sql(&client, &base, "a", "db=orders&v=3&p=i:7", "UPDATE t SET i = ?")
        .await
        .json();
    assert_eq!(updated["changes"], 1);
    assert_eq!(updated["columns"], serde_json::json!([]));

    let bad = sql(&client, &base, "a", "db=orders", "SELEC nonsense").await;
    assert_eq!(bad.status, 500);
    assert!(
        bad.body.contains("Io") && bad.body.contains("syntax error"),
        "{}",
        bad.body
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn databases_are_private_durable_and_lose_no_insert() {
    let dir = AppDir::new(MANIFEST);
    let host = dir.start(Settings::default()).await;
    let base = format!("http://{}", host.http_addr());
    let client = client();
    sql(
        &client,
        &base,
        "a",
        "db=orders",
        "CREATE TABLE items (id INTEGER PRIMARY KEY, worker INTEGER)",
    )
    .await;

    // b cannot open a's database by guessing its label, nor one it was not granted.
    for label in ["orders", "default", "guessed"] {
        let denied = sql(&client, &base, "b", &format!("db={label}"), "SELECT 1").await;
        assert_eq!(denied.status, 403, "{label}: {}", denied.body);
        assert!(denied.body.contains("AccessDenied"), "{}", denied.body);
    }
    let own = sql(&client, &base, "b", "db=users", "SELECT name FROM sqlite_master")
        .await
        .json();
    assert_eq!(own["rows"], serde_json::json!([]), "b's database is its own, empty one");

    let mut tasks = Vec::new();
    for worker in 0..32 {
        let (client, base) = (client.clone(), base.clone());
        tasks.push(tokio::spawn(async move {
            sql(
                &client,
                &base,
                "a",
                &format!("db=orders&p=i:{worker}"),
                "INSERT INTO items (worker) VALUES (?)",
            )
            .await
        }));
    }
    for task in tasks {
        let reply = task.await.unwrap();
        assert_eq!(reply.status, 200, "{}", reply.body);
    }
    let count = sql(
        &client,
        &base,
        "a",
        "db=orders",
        "SELECT COUNT(*), COUNT(DISTINCT worker) FROM items",
    )
    .await
    .json();
    assert_eq!(
        count["rows"][0],
        serde_json::json!([{ "integer": 32 }, { "integer": 32 }])
    );
    host.shutdown().await;

    let host = dir.start(Settings::default()).await;
    let base = format!("http://{}", host.http_addr());
    let count = sql(&client, &base, "a", "db=orders", "SELECT COUNT(*) FROM items")
        .await
        .json();
    assert_eq!(count["rows"][0][0]["integer"], 32, "the rows survive a restart");
    assert!(dir.state_dir().join("sqlite/orders.db").exists());
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_run_at_start_and_as_a_deploy_step() {
    let dir = AppDir::new(MANIFEST);
    let migrations = dir.path.join("migrations/a");
    std::fs::create_dir_all(&migrations).unwrap();
    std::fs::write(
        migrations.join("0001_create.sql"),
        "CREATE TABLE users (id INTEGER PRIMARY KEY, name TEXT);",
    )
    .unwrap();
    let host = dir.start(Settings::default()).await;
    let base = format!("http://{}", host.http_addr());
    let client = client();
    // Applied to a's first database label, `default`, before the component served anything.
    let tables = sql(
        &client,
        &base,
        "a",
        "db=default",
        "SELECT version, name FROM _mosaic_migrations",
    )
    .await
    .json();
    assert_eq!(
        tables["rows"],
        serde_json::json!([[{ "integer": 1 }, { "text": "0001_create.sql" }]])
    );

    // A new migration ships with a new version: the deploy applies it before the probe.
    std::fs::write(
        migrations.join("0002_email.sql"),
        "ALTER TABLE users ADD COLUMN email TEXT;",
    )
    .unwrap();
    let request = |fixture: &str| mosaic_tests::deploy_request("a", fixture);
    let report = host.pipeline().deploy(request("probe-v2")).await.unwrap();
    assert_eq!(report.migrations, vec!["0002_email.sql".to_string()]);
    let inserted = sql(
        &client,
        &base,
        "a",
        "db=default&p=t:ada&p=t:ada@example.com",
        "INSERT INTO users (name, email) VALUES (?, ?)",
    )
    .await;
    assert_eq!(inserted.status, 200, "{}", inserted.body);

    // An edited, already-applied migration stops the deploy at the migrate step; v2 keeps serving.
    std::fs::write(
        migrations.join("0001_create.sql"),
        "CREATE TABLE users (id INTEGER PRIMARY KEY);",
    )
    .unwrap();
    let err = host.pipeline().deploy(request("probe")).await.unwrap_err();
    assert_eq!(err.step(), Some(mosaic::deploy::Step::Migrate));
    assert!(err.to_string().contains("never edit an applied migration"), "{err}");
    assert_eq!(
        mosaic_tests::get(&client, &format!("{base}/a/hello")).await.body,
        "hello from probe v2"
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_spans_the_calls_of_one_connection_and_a_trap_rolls_it_back() {
    let dir = AppDir::new(MANIFEST);
    let host = dir.start(Settings::default()).await;
    let (client, base) = (client(), format!("http://{}", host.http_addr()));
    let count = |client: HttpClient, base: String| async move {
        let reply = sql(&client, &base, "a", "db=orders", "SELECT COUNT(*) FROM tx").await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        reply.json()["rows"][0][0]["integer"].as_i64().expect("a count")
    };
    assert_eq!(
        sql(&client, &base, "a", "db=orders", "CREATE TABLE tx (v INTEGER)")
            .await
            .status,
        200
    );
    let committed = "BEGIN;;INSERT INTO tx VALUES (1);;INSERT INTO tx VALUES (2);;COMMIT";
    assert_eq!(
        sql(&client, &base, "a", "db=orders&split=1", committed).await.status,
        200
    );
    assert_eq!(count(client.clone(), base.clone()).await, 2);
    // A rollback undoes the insert made on the same connection before it.
    let rolled_back = "BEGIN;;INSERT INTO tx VALUES (3);;ROLLBACK";
    assert_eq!(
        sql(&client, &base, "a", "db=orders&split=1", rolled_back).await.status,
        200
    );
    assert_eq!(
        count(client.clone(), base.clone()).await,
        2,
        "the rolled-back insert is gone"
    );
    // A guest that traps inside a write transaction leaves nothing behind: not its insert, and
    // not a lock that would block the next writer.
    let abandoned = "BEGIN IMMEDIATE;;INSERT INTO tx VALUES (4)";
    assert_eq!(
        sql(&client, &base, "a", "db=orders&split=1&trap=1", abandoned)
            .await
            .status,
        500
    );
    for round in 0..8 {
        let insert = sql(&client, &base, "a", "db=orders", "INSERT INTO tx VALUES (5)").await;
        assert_eq!(insert.status, 200, "round {round}: {}", insert.body);
    }
    assert_eq!(count(client.clone(), base.clone()).await, 10);
    host.shutdown().await;
}
