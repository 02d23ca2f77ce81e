//! Key-value through real guests: the Spin SDK's `fermyon:spin/key-value@2.0.0` (probe) and
//! `wasi:keyvalue` store/atomics/batch (counter, wit-bindgen), on the embedded backend and on
//! the real Redis at 127.0.0.1:6379. Grants, isolation, durability, concurrency, a dead backend.

use mosaic::settings::Settings;
use mosaic_tests::{client, get, require_service, unique, AppDir};

const REDIS: &str = "127.0.0.1:6379";

fn manifest() -> String {
    r#"
spin_manifest_version = 2
[application]
name = "kv"
[[trigger.http]]
route = "/a/..."
component = "a"
[[trigger.http]]
route = "/b/..."
component = "b"
[[trigger.http]]
route = "/none/..."
component = "none"
[[trigger.http]]
route = "/counter/..."
component = "counter"
[component.a]
source = "{probe}"
key_value_stores = ["default", "a-private"]
[component.b]
source = "{probe}"
key_value_stores = ["b-private"]
[component.none]
source = "{probe}"
[component.counter]
source = "{counter}"
key_value_stores = ["default"]
"#
    .to_string()
}

async fn spin_kv_round_trip(base: &str) {
    let client = client();
    let key = unique("k");
    let kv = |q: String| {
        let url = format!("{base}/a/kv?{q}");
        let client = client.clone();
        async move { get(&client, &url).await }
    };
    assert_eq!(kv(format!("op=get&key={key}")).await.body, "(none)");
    assert_eq!(kv(format!("op=set&key={key}&value=hello")).await.body, "ok");
    assert_eq!(kv(format!("op=get&key={key}")).await.body, "hello");
    assert_eq!(kv(format!("op=exists&key={key}")).await.body, "true");
    assert!(kv("op=keys".into()).await.body.split(',').any(|k| k == key));
    assert_eq!(kv(format!("op=delete&key={key}")).await.body, "ok");
    assert_eq!(kv(format!("op=exists&key={key}")).await.body, "false");
}

async fn concurrent_atomics_lose_nothing(base: &str) {
    let client = client();
    let key = unique("count");
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let url = format!("{base}/counter/incr?key={key}&by=1");
        let client = client.clone();
        tasks.push(tokio::spawn(async move { get(&client, &url).await }));
    }
    let mut seen = Vec::new();
    for task in tasks {
        let reply = task.await.unwrap();
        assert_eq!(reply.status, 200, "{}", reply.body);
        seen.push(reply.body.parse::<i64>().unwrap());
    }
    seen.sort();
    assert_eq!(
        seen,
        (1..=32).collect::<Vec<_>>(),
        "every increment saw a distinct value"
    );
    assert_eq!(get(&client, &format!("{base}/counter/get?key={key}")).await.body, "32");

    // Compare-and-swap appends from 32 clients: every append lands exactly once.
    let key = unique("cas");
    let mut tasks = Vec::new();
    for _ in 0..32 {
        let url = format!("{base}/counter/append?key={key}&value=x");
        let client = client.clone();
        tasks.push(tokio::spawn(async move { get(&client, &url).await }));
    }
    for task in tasks {
        assert_eq!(task.await.unwrap().status, 200);
    }
    assert_eq!(
        get(&client, &format!("{base}/counter/get?key={key}")).await.body,
        "x".repeat(32)
    );

    let a = unique("ba");
    let b = unique("bb");
    let reply = get(&client, &format!("{base}/counter/batch?keys={a},{b}")).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let (got, listed) = reply.body.split_once(" | ").unwrap();
    assert_eq!(got, format!("{a}=v-{a},{b}=v-{b}"));
    assert!(
        listed.split(',').any(|k| k == b) && !listed.split(',').any(|k| k == a),
        "{listed}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_works_and_survives_restart_and_swap() {
    let dir = AppDir::new(&manifest());
    let host = dir.start(Settings::default()).await;
    let base = format!("http://{}", host.http_addr());
    spin_kv_round_trip(&base).await;
    concurrent_atomics_lose_nothing(&base).await;
    let client = client();
    get(&client, &format!("{base}/a/kv?op=set&key=durable&value=kept")).await;
    // A swap of the owning component keeps the data.
    host.pipeline()
        .deploy(mosaic_tests::deploy_request("a", "probe-v2"))
        .await
        .unwrap();
    assert_eq!(
        get(&client, &format!("{base}/a/kv?op=get&key=durable")).await.body,
        "kept"
    );
    host.shutdown().await;

    let host = dir.start(Settings::default()).await;
    let base = format!("http://{}", host.http_addr());
    assert_eq!(
        get(&client, &format!("{base}/a/kv?op=get&key=durable")).await.body,
        "kept"
    );
    assert!(dir.state_dir().join("kv/default.sqlite").exists());
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stores_are_private_to_their_grants() {
    let dir = AppDir::new(&manifest());
    let host = dir.start(Settings::default()).await;
    let base = format!("http://{}", host.http_addr());
    let client = client();
    assert_eq!(
        get(&client, &format!("{base}/a/kv?op=set&store=a-private&key=s&value=mine"))
            .await
            .body,
        "ok"
    );
    // b cannot open a's store, even knowing its label, nor the default store.
    for store in ["a-private", "default", "guessed"] {
        let reply = get(&client, &format!("{base}/b/kv?op=get&store={store}&key=s")).await;
        assert_eq!(reply.status, 403, "{store}: {}", reply.body);
        assert!(reply.body.contains("AccessDenied"), "{}", reply.body);
    }
    // b's own store is a different store.
    assert_eq!(
        get(&client, &format!("{base}/b/kv?op=get&store=b-private&key=s"))
            .await
            .body,
        "(none)"
    );
    // A component with no grant opens nothing.
    assert_eq!(get(&client, &format!("{base}/none/kv?op=get&key=s")).await.status, 403);
    let reply = get(&client, &format!("{base}/counter/get?store=a-private&key=s")).await;
    assert!(reply.body.contains("AccessDenied"), "{}", reply.body);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_backend_is_an_error_not_a_hang() {
    let dir = AppDir::new(&manifest());
    // Nothing listens on this port: the guest gets an error value quickly.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let config = format!("[key_value_store.default]\ntype = \"redis\"\nurl = \"redis://127.0.0.1:{closed}/0\"\n");
    let host = dir.start_with(Settings::default(), Some(&config)).await;
    let client = client();
    let started = std::time::Instant::now();
    let reply = get(&client, &format!("http://{}/a/kv?op=get&key=x", host.http_addr())).await;
    assert_eq!(reply.status, 403, "the open fails: {}", reply.body);
    assert!(
        reply.body.contains("unreachable") || reply.body.contains("Other"),
        "{}",
        reply.body
    );
    assert!(started.elapsed() < std::time::Duration::from_secs(10));
    // The other stores and components keep working.
    let reply = get(
        &client,
        &format!("http://{}/b/kv?op=set&store=b-private&key=k&value=v", host.http_addr()),
    )
    .await;
    assert_eq!(reply.body, "ok");
    host.shutdown().await;
}

/// A Redis server of this test's own, on a free port, so that stopping it disturbs no one.
struct PrivateRedis {
    child: std::process::Child,
    port: u16,
}

impl PrivateRedis {
    /// Fails the test where `redis-server` cannot be started.
    fn start(port: u16) -> PrivateRedis {
        let child = std::process::Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(std::process::Stdio::null())
            .spawn();
        let child = child.unwrap_or_else(|err| {
            panic!(
                "redis-server cannot be started ({err}): install it (README, \"Services\"), or leave out the \
                 ignored tests that need it"
            )
        });
        let started = std::time::Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                started.elapsed() < std::time::Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        PrivateRedis { child, port }
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

mod needs_redis {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs Redis on 127.0.0.1:6379"]
    async fn redis_store_works() {
        require_service("Redis", REDIS);
        let dir = AppDir::new(&manifest());
        let config = "[key_value_store.default]\ntype = \"redis\"\nurl = \"redis://127.0.0.1:6379/9\"\n";
        let host = dir.start_with(Settings::default(), Some(config)).await;
        assert_eq!(host.app().capabilities().key_value.backend_name("default"), "redis");
        let base = format!("http://{}", host.http_addr());
        spin_kv_round_trip(&base).await;
        concurrent_atomics_lose_nothing(&base).await;
        assert!(
            !dir.state_dir().join("kv/default.sqlite").exists(),
            "the default store lives in Redis"
        );
        host.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs Redis on 127.0.0.1:6379"]
    async fn spin_redis_client_data_operations() {
        require_service("Redis", REDIS);
        let dir = AppDir::new(
            r#"
    spin_manifest_version = 2
    [application]
    name = "redis-client"
    [[trigger.http]]
    route = "/granted/..."
    component = "granted"
    [[trigger.http]]
    route = "/denied/..."
    component = "denied"
    [component.granted]
    source = "{probe}"
    allowed_outbound_hosts = ["redis://127.0.0.1:6379"]
    [component.denied]
    source = "{probe}"
    "#,
        );
        let host = dir.start(Settings::default()).await;
        let client = client();
        let base = format!("http://{}", host.http_addr());
        let key = unique("redis");
        let call = |component: &str, query: String| {
            let url = format!("{base}/{component}/redis?addr=redis://127.0.0.1:6379/12&{query}");
            let client = client.clone();
            async move { get(&client, &url).await }
        };
        assert_eq!(call("granted", format!("op=set&key={key}&value=abc")).await.body, "ok");
        assert_eq!(call("granted", format!("op=get&key={key}")).await.body, "abc");
        assert_eq!(
            call("granted", format!("op=execute&key={key}&value=def")).await.body,
            "6",
            "APPEND returns the new length"
        );
        assert_eq!(call("granted", format!("op=get&key={key}")).await.body, "abcdef");
        assert_eq!(call("granted", format!("op=del&key={key}")).await.body, "1");
        assert_eq!(call("granted", format!("op=incr&key={key}")).await.body, "1");
        let set = unique("set");
        call("granted", format!("op=sadd&key={set}&value=b")).await;
        call("granted", format!("op=sadd&key={set}&value=a")).await;
        assert_eq!(call("granted", format!("op=smembers&key={set}")).await.body, "a,b");
        call("granted", format!("op=del&key={set}")).await;
        call("granted", format!("op=del&key={key}")).await;

        // Without redis://127.0.0.1:6379 in allowed_outbound_hosts the open is refused, with
        // Spin's error value.
        let denied = call("denied", format!("op=get&key={key}")).await;
        assert_eq!(denied.status, 403, "{}", denied.body);
        assert!(denied.body.ends_with("InvalidAddress"), "{}", denied.body);
        host.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs Redis on 127.0.0.1:6379"]
    async fn a_hanging_redis_never_stalls_opening_another_store() {
        use mosaic::app::runtime_config::KeyValueStoreConfig;
        use mosaic::capability::key_value::KeyValueStores;
        use std::time::{Duration, Instant};

        require_service("Redis", REDIS);
        // A Redis that accepts connections and never answers.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let hanging = format!("redis://{}/1", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let configs = std::collections::BTreeMap::from([
            ("hangs".to_string(), KeyValueStoreConfig::Redis { url: hanging }),
            (
                "real".to_string(),
                KeyValueStoreConfig::Redis {
                    url: "redis://127.0.0.1:6379/9".into(),
                },
            ),
        ]);
        let dir = std::env::temp_dir().join(unique("mosaic-kv-hang"));
        let stores = std::sync::Arc::new(KeyValueStores::new(configs, dir, Default::default()));
        let stalled = tokio::spawn({
            let stores = stores.clone();
            async move { stores.open("hangs").await.map(|_| ()) }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!stalled.is_finished(), "the hanging server holds its open");

        let started = Instant::now();
        let real = stores.open("real").await.expect("the real Redis opens");
        let key = unique("hang");
        real.set(&key, b"v").await.unwrap();
        assert_eq!(real.get(&key).await.unwrap().as_deref(), Some(&b"v"[..]));
        real.delete(&key).await.unwrap();
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "the real Redis store waited {:?} for the hanging one",
            started.elapsed()
        );
        // The hanging store's open ends in an error within the Redis timeout, and is not cached.
        let outcome = tokio::time::timeout(Duration::from_secs(10), stalled).await;
        assert!(matches!(outcome, Ok(Ok(Err(_)))), "the hanging open ends in an error");
    }
}

mod needs_redis_server {
    use super::*;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs the redis-server binary on PATH"]
    async fn redis_stopped_and_restarted_gives_errors_then_service() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut redis = PrivateRedis::start(port);
        let dir = AppDir::new(&manifest());
        let config = format!(
            "[key_value_store.default]\ntype = \"redis\"\nurl = \"redis://127.0.0.1:{}/0\"\n",
            redis.port
        );
        let host = dir.start_with(Settings::default(), Some(&config)).await;
        let base = format!("http://{}/a/kv", host.http_addr());
        let readyz = format!("http://{}/readyz", host.admin_addr());
        let client = client();
        assert_eq!(get(&client, &format!("{base}?op=set&key=k&value=1")).await.body, "ok");
        let ready = get(&client, &readyz).await;
        assert_eq!(ready.status, 200, "{}", ready.body);
        assert!(
            ready.body.contains("key_value default"),
            "the Redis store is checked: {}",
            ready.body
        );

        redis.kill();
        // Not ready while the store's server is down, and the answer names it.
        let not_ready = get(&client, &readyz).await;
        assert_eq!(not_ready.status, 503, "{}", not_ready.body);
        assert!(
            not_ready.json()["failing"]["key_value default"].is_string(),
            "{}",
            not_ready.body
        );
        let started = std::time::Instant::now();
        let down = get(&client, &format!("{base}?op=get&key=k")).await;
        assert!(
            down.status >= 500,
            "a dead backend is an error, not a success: {} {}",
            down.status,
            down.body
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(15),
            "the error came within the deadline"
        );

        let _redis = PrivateRedis::start(port);
        let started = std::time::Instant::now();
        loop {
            let reply = get(&client, &format!("{base}?op=set&key=k&value=2")).await;
            if reply.body == "ok" {
                break;
            }
            assert!(
                started.elapsed() < std::time::Duration::from_secs(20),
                "service did not resume: {}",
                reply.body
            );
            tokio::time::sleep(std::time::Duration::from_millis(200)).await;
        }
        assert_eq!(get(&client, &format!("{base}?op=get&key=k")).await.body, "2");
        assert_eq!(get(&client, &readyz).await.status, 200, "ready again");
        let metrics = get(&client, &format!("http://{}/metrics", host.admin_addr()))
            .await
            .body;
        let errors = metrics
            .lines()
            .find_map(|line| {
                line.strip_prefix("mosaic_backend_errors_total{capability=\"key_value\",backend=\"redis\"} ")
            })
            .and_then(|count| count.parse::<u64>().ok());
        assert!(
            errors.is_some_and(|count| count >= 1),
            "the outage is counted: {metrics}"
        );
        host.shutdown().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    #[ignore = "needs the redis-server binary on PATH"]
    async fn redis_list_keys_scans_one_page_not_the_keyspace() {
        use mosaic::capability::key_value::{redis::RedisStore, KeyValueStore};

        const KEYS: usize = 100_000;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        // A server of this test's own: its command statistics count only this test's commands.
        let _redis = PrivateRedis::start(port);
        let url = format!("redis://127.0.0.1:{port}/0");
        let mut admin = redis::Client::open(url.as_str())
            .unwrap()
            .get_multiplexed_async_connection()
            .await
            .unwrap();
        for batch in 0..KEYS / 1000 {
            let mut mset = redis::cmd("MSET");
            for i in batch * 1000..(batch + 1) * 1000 {
                mset.arg(format!("key-{i:06}")).arg("v");
            }
            let () = mset.query_async(&mut admin).await.unwrap();
        }
        let store = RedisStore::open(&url).await.unwrap();
        let () = redis::cmd("CONFIG")
            .arg("RESETSTAT")
            .query_async(&mut admin)
            .await
            .unwrap();
        let first = store.keys_page(None, 1000).await.unwrap();
        let stats: String = redis::cmd("INFO")
            .arg("commandstats")
            .query_async(&mut admin)
            .await
            .unwrap();
        let scans = stats
            .lines()
            .find_map(|line| line.strip_prefix("cmdstat_scan:calls="))
            .and_then(|rest| rest.split(',').next())
            .and_then(|calls| calls.parse::<u64>().ok())
            .unwrap_or(0);
        assert!(scans <= 3, "one page of keys ran {scans} SCANs: it walked the keyspace");
        assert!(
            !first.keys.is_empty() && first.keys.len() <= 2000,
            "{}",
            first.keys.len()
        );
        assert!(first.cursor.is_some(), "more pages follow");

        // Paging on from that cursor reaches every key, and the last page says it is the last.
        let mut seen: std::collections::BTreeSet<String> = first.keys.into_iter().collect();
        let mut cursor = first.cursor;
        let mut pages = 1;
        while let Some(at) = cursor {
            let page = store.keys_page(Some(&at), 1000).await.unwrap();
            assert!(page.keys.len() <= 2000, "a page of {} keys", page.keys.len());
            seen.extend(page.keys);
            cursor = page.cursor;
            pages += 1;
            assert!(pages <= 1000, "paging does not end");
        }
        assert_eq!(seen.len(), KEYS);
        // Spin's get-keys still answers every key, sorted.
        let all = store.keys().await.unwrap();
        assert_eq!(all.len(), KEYS);
        assert!(all.windows(2).all(|pair| pair[0] < pair[1]));
    }
}
