//! The reference application (the top-level spin.toml, docs/reference-app.md) end to end
//! through its gateway, on a real `mosaic up`: register, log in, products and stock, an order
//! whose payment succeeds or fails (the saga and its compensation), notifications from the
//! events; 401, 429, 400 and 404 answers; the same flow on Redis key-value and RabbitMQ
//! messaging; and a swap of `products` under load with no failed request.

use std::path::PathBuf;
use std::time::Duration;

use mosaic_tests::otlp::{
    OtlpReceiver, ReceivedSpan, Transport, KIND_CLIENT, KIND_CONSUMER, KIND_PRODUCER, KIND_SERVER,
};
use mosaic_tests::{client, require_service, unique, workspace_root, HttpClient, MosaicProcess};
use serde_json::{json, Value};

/// A running shop: `mosaic up` on the top-level spin.toml with a state directory of its own.
struct Shop {
    process: MosaicProcess,
    http: HttpClient,
    state_dir: PathBuf,
    extra_dir: PathBuf,
}

struct Answer {
    status: u16,
    headers: http::HeaderMap,
    body: Value,
}

impl Shop {
    /// `variables` become `SPIN_VARIABLE_*`; `runtime_config` and `settings` are written to
    /// files passed with --runtime-config-file and --config.
    fn start(variables: &[(&str, &str)], runtime_config: Option<&str>, settings: Option<&str>) -> Shop {
        Self::start_manifest(&workspace_root().join("spin.toml"), variables, runtime_config, settings)
    }

    fn start_manifest(
        manifest: &std::path::Path,
        variables: &[(&str, &str)],
        runtime_config: Option<&str>,
        settings: Option<&str>,
    ) -> Shop {
        Self::start_with_env(manifest, variables, runtime_config, settings, &[])
    }

    /// As `start_manifest`, with more environment variables for the host (`OTEL_*`, say).
    fn start_with_env(
        manifest: &std::path::Path,
        variables: &[(&str, &str)],
        runtime_config: Option<&str>,
        settings: Option<&str>,
        host_env: &[(&str, &str)],
    ) -> Shop {
        let state_dir = std::env::temp_dir().join(unique("mosaic-shop-state"));
        let extra_dir = std::env::temp_dir().join(unique("mosaic-shop-config"));
        std::fs::create_dir_all(&extra_dir).expect("config dir");
        let state = state_dir.to_string_lossy().to_string();
        let mut args = vec![
            "-f".to_string(),
            manifest.to_string_lossy().to_string(),
            "up".to_string(),
            "--state-dir".to_string(),
            state,
        ];
        if let Some(text) = runtime_config {
            let path = extra_dir.join("runtime-config.toml");
            std::fs::write(&path, text).expect("runtime config");
            args.extend(["--runtime-config-file".to_string(), path.to_string_lossy().to_string()]);
        }
        if let Some(text) = settings {
            let path = extra_dir.join("mosaic.toml");
            std::fs::write(&path, text).expect("settings");
            args.extend(["--config".to_string(), path.to_string_lossy().to_string()]);
        }
        let env: Vec<(String, String)> = variables
            .iter()
            .map(|(name, value)| (format!("SPIN_VARIABLE_{}", name.to_uppercase()), value.to_string()))
            .collect();
        let mut env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
        env.extend_from_slice(host_env);
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let log = extra_dir.join("host.log");
        let process = MosaicProcess::start_with_env_logging_to(&workspace_root(), &args, &env, &log);
        Shop {
            process,
            http: client(),
            state_dir,
            extra_dir,
        }
    }

    /// What the host logged so far.
    fn log(&self) -> String {
        std::fs::read_to_string(self.extra_dir.join("host.log")).unwrap_or_default()
    }

    /// The warnings and errors the host logged while it started (up to `serving`).
    fn start_up_warnings(&self) -> Vec<String> {
        self.log()
            .lines()
            .take_while(|line| !line.contains("mosaic::host: serving"))
            .filter(|line| line.contains(" WARN ") || line.contains(" ERROR "))
            .map(str::to_string)
            .collect()
    }

    async fn call(&self, method: &str, path: &str, token: Option<&str>, body: Option<Value>) -> Answer {
        let mut request = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.process.base));
        if let Some(token) = token {
            request = request.header("authorization", format!("Bearer {token}"));
        }
        let body = body.map(|b| b.to_string()).unwrap_or_default();
        self.raw(request, body).await
    }

    async fn raw(&self, request: http::request::Builder, body: String) -> Answer {
        let request = request
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(body)))
            .expect("request");
        let response = self.http.request(request).await.expect("the gateway answers");
        let status = response.status().as_u16();
        let headers = response.headers().clone();
        let bytes = http_body_util::BodyExt::collect(response.into_body())
            .await
            .expect("body")
            .to_bytes();
        let body = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).to_string()));
        Answer { status, headers, body }
    }

    /// Registers a user with a fresh email and logs in; returns (user id, token).
    async fn customer(&self, name: &str) -> (i64, String) {
        let email = format!("{}@example.com", unique(name));
        let registered = self
            .call(
                "POST",
                "/auth/register",
                None,
                Some(json!({ "email": email, "password": "correct horse", "name": name })),
            )
            .await;
        assert_eq!(registered.status, 201, "{}", registered.body);
        assert!(registered.body.get("password").is_none() && registered.body.get("password_hash").is_none());
        let login = self
            .call(
                "POST",
                "/auth/login",
                None,
                Some(json!({ "email": email, "password": "correct horse" })),
            )
            .await;
        assert_eq!(login.status, 200, "{}", login.body);
        let id = registered.body["id"].as_i64().expect("user id");
        (id, login.body["token"].as_str().expect("token").to_string())
    }

    /// Creates a product with `stock` units; returns its id.
    async fn product(&self, token: &str, name: &str, price_cents: i64, stock: i64) -> i64 {
        let created = self
            .call(
                "POST",
                "/products",
                Some(token),
                Some(json!({ "name": name, "description": "test", "price_cents": price_cents })),
            )
            .await;
        assert_eq!(created.status, 201, "{}", created.body);
        let id = created.body["id"].as_i64().expect("product id");
        let stocked = self
            .call(
                "PUT",
                &format!("/inventory/{id}"),
                Some(token),
                Some(json!({ "quantity": stock })),
            )
            .await;
        assert_eq!(stocked.status, 200, "{}", stocked.body);
        id
    }

    /// `mosaic --state-dir STATE ARGS` against this shop: its standard output.
    fn cli(&self, args: &[&str]) -> String {
        let state = self.state_dir.to_string_lossy().to_string();
        let output = std::process::Command::new(mosaic_tests::mosaic_bin())
            .current_dir(workspace_root())
            .args(["--state-dir", &state])
            .args(args)
            .output()
            .expect("mosaic runs");
        assert!(
            output.status.success(),
            "mosaic {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).to_string()
    }

    async fn available(&self, token: &str, product: i64) -> i64 {
        let stock = self
            .call("GET", &format!("/inventory/{product}"), Some(token), None)
            .await;
        assert_eq!(stock.status, 200, "{}", stock.body);
        stock.body["available"].as_i64().expect("available")
    }

    /// Waits (bounded) until the user's notifications hold every one of `subjects_containing`.
    async fn wait_for_notifications(&self, token: &str, user: i64, wanted: &[&str]) -> Vec<String> {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        loop {
            let answer = self
                .call("GET", &format!("/notifications?user={user}"), Some(token), None)
                .await;
            assert_eq!(answer.status, 200, "{}", answer.body);
            let subjects: Vec<String> = answer
                .body
                .as_array()
                .into_iter()
                .flatten()
                .map(|n| {
                    format!(
                        "{} | {}",
                        n["subject"].as_str().unwrap_or(""),
                        n["event_id"].as_str().unwrap_or("")
                    )
                })
                .collect();
            if wanted.iter().all(|want| subjects.iter().any(|s| s.contains(want))) {
                return subjects;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "notifications {subjects:?} lack one of {wanted:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

impl Drop for Shop {
    fn drop(&mut self) {
        self.process.kill_hard();
        if std::thread::panicking() {
            eprintln!("the shop's log:\n{}", self.log());
        }
        let _ = std::fs::remove_dir_all(&self.state_dir);
        let _ = std::fs::remove_dir_all(&self.extra_dir);
    }
}

fn assert_error(answer: &Answer, status: u16) {
    assert_eq!(answer.status, status, "{}", answer.body);
    assert!(
        answer.body["error"].is_string() && answer.body["detail"].is_string(),
        "a JSON error with error and detail: {}",
        answer.body
    );
}

/// Register → login → products → an order paid and confirmed → stock reduced → notifications;
/// and the errors a client can provoke on the way.
async fn successful_order_flow(shop: &Shop) {
    let (alice, token) = shop.customer("alice").await;

    // Authentication.
    assert_error(&shop.call("GET", "/products", None, None).await, 401);
    assert_error(&shop.call("GET", "/products", Some("not.a.token"), None).await, 401);
    let forged = format!("{}x", &token[..token.len() - 1]);
    assert_error(&shop.call("GET", "/orders", Some(&forged), None).await, 401);
    let wrong = shop
        .call(
            "POST",
            "/auth/login",
            None,
            Some(json!({ "email": "nobody@example.com", "password": "whatever1" })),
        )
        .await;
    assert_error(&wrong, 401);

    // Products and stock.
    let lamp = shop.product(&token, "lamp", 2_500, 10).await;
    let desk = shop.product(&token, "desk", 10_000, 5).await;
    let listed = shop.call("GET", "/products", Some(&token), None).await;
    assert_eq!(listed.status, 200);
    assert!(listed.body.as_array().unwrap().iter().any(|p| p["id"] == lamp));
    let fetched = shop.call("GET", &format!("/products/{lamp}"), Some(&token), None).await;
    assert_eq!(
        (fetched.status, fetched.body["price_cents"].as_i64()),
        (200, Some(2_500))
    );

    // Bad requests: malformed JSON, missing fields, unknown ids.
    let malformed = shop
        .raw(
            http::Request::builder()
                .method("POST")
                .uri(format!("{}/products", shop.process.base))
                .header("authorization", format!("Bearer {token}")),
            "{not json".to_string(),
        )
        .await;
    assert_error(&malformed, 400);
    assert_error(
        &shop
            .call("POST", "/products", Some(&token), Some(json!({ "name": "no price" })))
            .await,
        400,
    );
    assert_error(
        &shop
            .call("POST", "/auth/register", None, Some(json!({ "email": "x@y.z" })))
            .await,
        400,
    );
    assert_error(&shop.call("GET", "/products/999999", Some(&token), None).await, 404);
    assert_error(&shop.call("GET", "/orders/999999", Some(&token), None).await, 404);
    assert_error(&shop.call("GET", "/users/999999", Some(&token), None).await, 404);
    assert_error(
        &shop
            .call("POST", "/orders", Some(&token), Some(json!({ "items": [] })))
            .await,
        400,
    );
    let unknown_product = shop
        .call(
            "POST",
            "/orders",
            Some(&token),
            Some(json!({ "items": [{ "product_id": 999_999, "quantity": 1 }] })),
        )
        .await;
    assert_error(&unknown_product, 400);

    // The order: 2 lamps + 1 desk, paid and confirmed.
    let order = shop
        .call(
            "POST",
            "/orders",
            Some(&token),
            Some(json!({ "items": [{ "product_id": lamp, "quantity": 2 }, { "product_id": desk, "quantity": 1 }] })),
        )
        .await;
    assert_eq!(order.status, 201, "{}", order.body);
    assert_eq!(order.body["status"], "confirmed");
    assert_eq!(order.body["total_cents"], 15_000);
    let order_id = order.body["id"].as_i64().expect("order id");
    assert_eq!(shop.available(&token, lamp).await, 8);
    assert_eq!(shop.available(&token, desk).await, 4);
    let stored = shop
        .call("GET", &format!("/orders/{order_id}"), Some(&token), None)
        .await;
    assert_eq!(
        (stored.status, stored.body["status"].as_str()),
        (200, Some("confirmed"))
    );

    // More than the stock: refused, cancelled, and the stock is untouched.
    let too_many = shop
        .call(
            "POST",
            "/orders",
            Some(&token),
            Some(json!({ "items": [{ "product_id": desk, "quantity": 50 }] })),
        )
        .await;
    assert_error(&too_many, 409);
    assert_eq!(shop.available(&token, desk).await, 4);

    // Another user cannot read alice's order.
    let (_, bob_token) = shop.customer("bob").await;
    assert_error(
        &shop
            .call("GET", &format!("/orders/{order_id}"), Some(&bob_token), None)
            .await,
        404,
    );

    // The events reached notifications (order created, payment completed, order confirmed).
    let created = format!("order-{order_id}-created");
    let paid = format!("payment-{order_id}-completed");
    let confirmed = format!("order-{order_id}-confirmed");
    shop.wait_for_notifications(&token, alice, &[&created, &paid, &confirmed])
        .await;

    let health = shop.call("GET", "/health", None, None).await;
    assert_eq!(health.status, 200, "{}", health.body);
    assert_eq!(health.body["status"], "ok", "{}", health.body);
    for service in ["users", "products", "inventory", "orders", "payments", "notifications"] {
        assert_eq!(health.body["services"][service], "ok", "{}", health.body);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paid_order_is_confirmed_end_to_end_on_embedded_defaults() {
    let shop = Shop::start(&[("payment_success_rate", "1")], None, None);
    // Every service is loaded before the probes of mosaic.toml run (the gateway's asks them
    // all), and no handler runs unasked: the start logs no warning.
    assert_eq!(shop.start_up_warnings(), Vec::<String>::new());
    assert!(
        shop.log().contains(r#""path":"/health","status":200"#),
        "the gateway's probe ran and passed:\n{}",
        shop.log()
    );
    successful_order_flow(&shop).await;
    the_shop_mixes_worlds(&shop);
}

/// The shop moves to WASI 0.3 one component at a time: the gateway and inventory are built
/// with spin-sdk 7, every other component with spin-sdk 5.2, and they serve side by side.
fn the_shop_mixes_worlds(shop: &Shop) {
    let status: Value = serde_json::from_str(&shop.cli(&["status", "--json"])).expect("status --json is JSON");
    let components = status
        .as_array()
        .or_else(|| status["components"].as_array())
        .unwrap_or_else(|| panic!("a list of components: {status}"));
    let world = |name: &str| {
        components
            .iter()
            .find(|component| component["name"] == name)
            .and_then(|component| component["world"].as_str())
            .unwrap_or_else(|| panic!("`{name}` and its world in {status}"))
            .to_string()
    };
    for name in ["gateway", "inventory"] {
        assert!(world(name).starts_with("WASI 0.3"), "{name}: {}", world(name));
    }
    for name in ["users", "products", "orders", "payments", "notifications", "hello"] {
        assert!(world(name).starts_with("WASI 0.2"), "{name}: {}", world(name));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_declined_payment_cancels_the_order_and_restores_the_stock() {
    let shop = Shop::start(&[("payment_success_rate", "0")], None, None);
    let (carol, token) = shop.customer("carol").await;
    let chair = shop.product(&token, "chair", 4_000, 3).await;
    let order = shop
        .call(
            "POST",
            "/orders",
            Some(&token),
            Some(json!({ "items": [{ "product_id": chair, "quantity": 2 }] })),
        )
        .await;
    assert_error(&order, 402);
    let order_id = order.body["order_id"]
        .as_i64()
        .or_else(|| order.body["order"]["id"].as_i64())
        .or_else(|| order.body["id"].as_i64())
        .unwrap_or_else(|| panic!("the answer names the cancelled order: {}", order.body));
    let stored = shop
        .call("GET", &format!("/orders/{order_id}"), Some(&token), None)
        .await;
    assert_eq!(
        (stored.status, stored.body["status"].as_str()),
        (200, Some("cancelled")),
        "{}",
        stored.body
    );
    assert_eq!(shop.available(&token, chair).await, 3, "the reservation was released");
    let failed = format!("payment-{order_id}-failed");
    let cancelled = format!("order-{order_id}-cancelled");
    shop.wait_for_notifications(&token, carol, &[&failed, &cancelled]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_the_rate_limit_the_gateway_answers_429() {
    let shop = Shop::start(&[("rate_limit_per_minute", "5")], None, None);
    // The window is a clock minute: if it turns during the burst, the count restarts, so try
    // again (at most once more) in the next window.
    for _ in 0..2 {
        let minute = mosaic::capability::messaging::now_unix_ms() / 60_000;
        let mut limited = None;
        for _ in 0..6 {
            let answer = shop.call("GET", "/health", None, None).await;
            if answer.status == 429 {
                limited = Some(answer);
                break;
            }
        }
        if let Some(answer) = limited {
            assert_error(&answer, 429);
            let retry_after: u64 = answer.headers["retry-after"].to_str().unwrap().parse().unwrap();
            assert!((1..=60).contains(&retry_after), "{retry_after}");
            return;
        }
        assert_ne!(
            minute,
            mosaic::capability::messaging::now_unix_ms() / 60_000,
            "6 requests within one minute passed a limit of 5"
        );
    }
    panic!("no 429 in two windows");
}

mod needs_redis {
    use super::*;

    mod needs_rabbitmq {
        use super::*;

        #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
        #[ignore = "needs Redis on 127.0.0.1:6379 and RabbitMQ on 127.0.0.1:5672"]
        async fn the_same_flow_runs_on_redis_key_value_and_rabbitmq_messaging() {
            require_service("Redis", "127.0.0.1:6379");
            require_service("RabbitMQ", "127.0.0.1:5672");
            let runtime_config = "[key_value_store.ratelimit]\ntype = \"redis\"\nurl = \"redis://127.0.0.1:6379/12\"\n\
                                  [key_value_store.products-cache]\ntype = \"redis\"\nurl = \"redis://127.0.0.1:6379/12\"\n";
            let settings = format!(
                "[messaging]\nbroker = \"rabbitmq\"\nurl = \"amqp://guest:guest@127.0.0.1:5672/%2f\"\nnamespace = \"{}\"\n",
                unique("shop")
            );
            let shop = Shop::start(&[("payment_success_rate", "1")], Some(runtime_config), Some(&settings));
            successful_order_flow(&shop).await;
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn products_swapped_to_v2_and_back_under_load_fails_no_request() {
    let shop = Shop::start(&[("rate_limit_per_minute", "1000000")], None, None);
    let (_, token) = shop.customer("loader").await;
    let lamp = shop.product(&token, "lamp", 2_500, 10).await;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut loops = Vec::new();
    for worker in 0..4 {
        let (base, token, stop) = (shop.process.base.clone(), token.clone(), stop.clone());
        loops.push(tokio::spawn(async move {
            let http = client();
            let (mut served, mut failures, mut with_currency) = (0u64, Vec::new(), 0u64);
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                let path = if worker % 2 == 0 {
                    format!("/products/{lamp}")
                } else {
                    "/products".to_string()
                };
                let request = http::Request::builder()
                    .uri(format!("{base}{path}"))
                    .header("authorization", format!("Bearer {token}"))
                    .body(http_body_util::Full::new(bytes::Bytes::new()))
                    .expect("request");
                match http.request(request).await {
                    Ok(response) if response.status() == 200 => {
                        let body = http_body_util::BodyExt::collect(response.into_body()).await;
                        let text = body
                            .map(|b| String::from_utf8_lossy(&b.to_bytes()).to_string())
                            .unwrap_or_default();
                        served += 1;
                        with_currency += u64::from(text.contains("\"currency\""));
                    }
                    Ok(response) => failures.push(format!("{path}: {}", response.status())),
                    Err(err) => failures.push(format!("{path}: {err}")),
                }
            }
            (served, failures, with_currency)
        }));
    }
    let cli = |args: &[&str]| shop.cli(args);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let v2 = workspace_root().join("target/fixtures/products-v2.wasm");
    let deployed = cli(&["deploy", "products", &v2.to_string_lossy()]);
    assert!(deployed.contains("deployed `products`"), "{deployed}");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let after_v2 = shop.call("GET", &format!("/products/{lamp}"), Some(&token), None).await;
    assert_eq!(after_v2.body["currency"], "EUR", "v2 serves: {}", after_v2.body);
    let rolled_back = cli(&["rollback", "products"]);
    assert!(rolled_back.contains("rolled back `products`"), "{rolled_back}");
    tokio::time::sleep(Duration::from_millis(700)).await;
    let after_rollback = shop.call("GET", &format!("/products/{lamp}"), Some(&token), None).await;
    assert!(
        after_rollback.body.get("currency").is_none(),
        "v1 serves again: {}",
        after_rollback.body
    );
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let (mut served, mut failures, mut with_currency) = (0, Vec::new(), 0);
    for worker in loops {
        let (s, f, c) = worker.await.expect("load loop");
        served += s;
        failures.extend(f);
        with_currency += c;
    }
    assert!(failures.is_empty(), "failed requests during the swaps: {failures:?}");
    assert!(
        served > 100 && with_currency > 0,
        "served {served}, {with_currency} by v2"
    );
}

/// The shop's manifest without `service` (its component and its triggers), with absolute
/// sources, written into `dir` with a copy of the migrations.
fn manifest_without(service: &str, dir: &std::path::Path) -> PathBuf {
    let root = workspace_root();
    let text = std::fs::read_to_string(root.join("spin.toml")).expect("spin.toml");
    let mut manifest: toml::Table = toml::from_str(&text).expect("spin.toml parses");
    if let Some(toml::Value::Table(components)) = manifest.get_mut("component") {
        components.remove(service);
        for (_, component) in components.iter_mut() {
            let Some(component) = component.as_table_mut() else {
                continue;
            };
            if let Some(source) = component.get("source").and_then(|s| s.as_str()).map(|s| root.join(s)) {
                component.insert(
                    "source".into(),
                    toml::Value::String(source.to_string_lossy().to_string()),
                );
            }
        }
    }
    if let Some(toml::Value::Table(triggers)) = manifest.get_mut("trigger") {
        for (_, entries) in triggers.iter_mut() {
            if let toml::Value::Array(entries) = entries {
                entries.retain(|entry| entry.get("component").and_then(|c| c.as_str()) != Some(service));
            }
        }
    }
    // The migrations live beside the manifest.
    for service_dir in std::fs::read_dir(root.join("migrations"))
        .expect("migrations")
        .flatten()
    {
        let target = dir.join("migrations").join(service_dir.file_name());
        std::fs::create_dir_all(&target).expect("migrations dir");
        for file in std::fs::read_dir(service_dir.path())
            .expect("migrations of a service")
            .flatten()
        {
            std::fs::copy(file.path(), target.join(file.file_name())).expect("copy a migration");
        }
    }
    let path = dir.join("spin.toml");
    std::fs::write(&path, toml::to_string(&manifest).expect("manifest")).expect("write manifest");
    path
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_degrades_and_names_the_service_that_is_down() {
    let dir = std::env::temp_dir().join(unique("mosaic-shop-partial"));
    let manifest = manifest_without("notifications", &dir);
    let shop = Shop::start_manifest(&manifest, &[], None, None);
    let health = shop.call("GET", "/health", None, None).await;
    assert_eq!(health.status, 200, "the gateway still answers: {}", health.body);
    assert_eq!(health.body["status"], "degraded", "{}", health.body);
    assert!(
        health.body["services"]["notifications"]
            .as_str()
            .unwrap_or("")
            .starts_with("down"),
        "{}",
        health.body
    );
    assert_eq!(health.body["services"]["orders"], "ok", "{}", health.body);
    let (alice, token) = shop.customer("alice").await;
    let answer = shop
        .call("GET", &format!("/notifications?user={alice}"), Some(&token), None)
        .await;
    assert_error(&answer, 503);
    assert!(
        answer.body["detail"].as_str().unwrap_or("").contains("notifications"),
        "{}",
        answer.body
    );
    drop(shop);
    let _ = std::fs::remove_dir_all(&dir);
}

/// One order placed through the gateway is one trace at an OTLP receiver: the gateway's span,
/// each service it reaches (through the calls that reach them), their SQL statements, the
/// publishes and the notification deliveries they lead to, every parent link inside the trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_is_one_trace_from_the_gateway_to_the_notifications() {
    let receiver = OtlpReceiver::start(Transport::HttpProtobuf).await;
    let endpoint = receiver.endpoint();
    let shop = Shop::start_with_env(
        &workspace_root().join("spin.toml"),
        &[("payment_success_rate", "1")],
        None,
        None,
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint.as_str()),
            ("OTEL_SERVICE_NAME", "shop-under-test"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("OTEL_BLRP_SCHEDULE_DELAY", "100"),
            ("OTEL_METRIC_EXPORT_INTERVAL", "200"),
        ],
    );
    let (alice, token) = shop.customer("alice").await;
    let lamp = shop.product(&token, "lamp", 2_500, 10).await;

    let trace_id = "5ce0e9a56015fec5aadfa328ae398115";
    let root = "ab42124a3c573678";
    let order = shop
        .raw(
            http::Request::builder()
                .method("POST")
                .uri(format!("{}/orders", shop.process.base))
                .header("authorization", format!("Bearer {token}"))
                .header("traceparent", format!("00-{trace_id}-{root}-01")),
            json!({ "items": [{ "product_id": lamp, "quantity": 1 }] }).to_string(),
        )
        .await;
    assert_eq!(order.status, 201, "{}", order.body);
    let order_id = order.body["id"].as_i64().expect("order id");
    shop.wait_for_notifications(&token, alice, &[&format!("order-{order_id}-confirmed")])
        .await;

    // The three events (created, paid, confirmed) are delivered to notifications in this trace.
    let delivered = |spans: &[ReceivedSpan]| {
        spans
            .iter()
            .filter(|span| span.trace_id == trace_id && span.kind == KIND_CONSUMER)
            .count()
            >= 3
    };
    receiver.wait_for(Duration::from_secs(20), delivered).await;
    // Spans end in any order: give the last ones a moment more.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let spans = receiver.trace(trace_id);
    assert!(delivered(&spans), "three deliveries in {spans:#?}");

    let by_id: std::collections::BTreeMap<&str, &ReceivedSpan> =
        spans.iter().map(|span| (span.span_id.as_str(), span)).collect();
    assert_eq!(by_id.len(), spans.len(), "no span id twice");
    for span in &spans {
        assert_eq!(
            span.resource.get("service.name").map(String::as_str),
            Some("shop-under-test")
        );
        assert!(span.end_unix_nanos >= span.start_unix_nanos, "{span:?}");
        assert!(
            span.parent_span_id == root || by_id.contains_key(span.parent_span_id.as_str()),
            "the parent of {} ({}) is in the trace",
            span.name,
            span.parent_span_id
        );
    }
    let parent_of = |span: &ReceivedSpan| by_id.get(span.parent_span_id.as_str()).copied();
    let component_of = |span: &ReceivedSpan| span.attribute("mosaic.component").unwrap_or("").to_string();

    let gateway: Vec<&ReceivedSpan> = spans.iter().filter(|span| span.parent_span_id == root).collect();
    assert_eq!(gateway.len(), 1, "{gateway:#?}");
    assert_eq!(
        (gateway[0].kind, component_of(gateway[0])),
        (KIND_SERVER, "gateway".to_string())
    );
    assert_eq!(gateway[0].attribute("http.response.status_code"), Some("201"));

    // Each service's request span is under the call that reached it, made from a request span.
    for service in ["orders", "users", "products", "inventory", "payments"] {
        let served: Vec<&ReceivedSpan> = spans
            .iter()
            .filter(|span| span.kind == KIND_SERVER && component_of(span) == service)
            .collect();
        assert!(!served.is_empty(), "a request span of {service} in {spans:#?}");
        for span in served {
            let call = parent_of(span).expect("a parent");
            assert_eq!(call.kind, KIND_CLIENT, "{service} is reached by a call: {call:?}");
            assert_eq!(call.attribute("mosaic.peer.component"), Some(service));
            assert_eq!(parent_of(call).map(|caller| caller.kind), Some(KIND_SERVER));
        }
    }

    // SQL statements are spans of the request or delivery that ran them.
    for service in ["orders", "inventory", "payments", "notifications"] {
        let statements: Vec<&ReceivedSpan> = spans
            .iter()
            .filter(|span| {
                span.attribute("db.system.name") == Some("sqlite") && span.attribute("db.namespace") == Some(service)
            })
            .collect();
        assert!(!statements.is_empty(), "a SQL span of {service}");
        for statement in statements {
            assert!(statement
                .attribute("db.query.text")
                .is_some_and(|text| !text.is_empty()));
            let owner = parent_of(statement).expect("a parent");
            assert!(
                matches!(owner.kind, KIND_SERVER | KIND_CONSUMER) && component_of(owner) == service,
                "{statement:?} under {owner:?}"
            );
        }
    }

    // Each publish is under the request that published, and each delivery under its publish.
    let deliveries: Vec<&ReceivedSpan> = spans.iter().filter(|span| span.kind == KIND_CONSUMER).collect();
    for delivery in &deliveries {
        assert_eq!(component_of(delivery), "notifications");
        let publish = parent_of(delivery).expect("a parent");
        assert_eq!(publish.kind, KIND_PRODUCER, "{delivery:?} under {publish:?}");
        assert_eq!(
            publish.attribute("messaging.destination.name"),
            delivery.attribute("messaging.destination.name")
        );
        assert_eq!(parent_of(publish).map(|owner| owner.kind), Some(KIND_SERVER));
    }
    let channels: std::collections::BTreeSet<&str> = deliveries
        .iter()
        .filter_map(|delivery| delivery.attribute("messaging.destination.name"))
        .collect();
    for channel in ["order.created", "payment.completed", "order.confirmed"] {
        assert!(channels.contains(channel), "a delivery of {channel}: {channels:?}");
    }

    // The gateway's request log line (its stdout) is a log record of the same trace.
    let gateway_line = |receiver: &OtlpReceiver| {
        receiver.logs().iter().any(|log| {
            log.trace_id == trace_id
                && log.attribute("component") == Some("gateway")
                && log.attribute("stream") == Some("stdout")
                && log.body.contains("\"path\":\"/orders\"")
        })
    };
    assert!(
        receiver.wait_until(Duration::from_secs(10), gateway_line).await,
        "the gateway's log line of the order in {:#?}",
        receiver.logs()
    );
    // And the /metrics series arrive over OTLP: the order's requests and deliveries counted.
    let counted = |receiver: &OtlpReceiver| {
        let points = receiver.points();
        let at_least = |metric: &str, labels: &[(&str, &str)], value: f64| {
            points.iter().any(|point| {
                point.metric == metric
                    && labels
                        .iter()
                        .all(|(key, want)| point.attributes.get(*key).map(String::as_str) == Some(*want))
                    && point.value >= value
            })
        };
        at_least("mosaic_requests_total", &[("component", "gateway")], 1.0)
            && ["order.created", "payment.completed", "order.confirmed"]
                .iter()
                .all(|topic| {
                    at_least(
                        "mosaic_messages_acked_total",
                        &[("subscriber", "notifications"), ("topic", topic)],
                        1.0,
                    )
                })
    };
    assert!(
        receiver.wait_until(Duration::from_secs(10), counted).await,
        "the gateway's requests and the notifications' acks are exported"
    );
}
