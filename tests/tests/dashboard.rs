//! The dashboard at `/ui` in a real browser: headless Chromium (Debian's `chromium` and
//! `chromium-driver`), driven over the W3C WebDriver protocol by chromedriver. It opens the
//! reference shop's dashboard, gives the admin token, sees every component, rolls `products`
//! back with its button after a deploy and sees the version change; the page loads nothing
//! from outside the host. It saves a screenshot as target/dashboard.png (the README's).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use mosaic::settings::Settings;
use mosaic::{Host, HostOptions};
use mosaic_tests::{admin, client, unique, workspace_root, HttpClient};
use serde_json::{json, Value};

const CHROMIUM: &str = "/usr/bin/chromium";
const CHROMEDRIVER: &str = "/usr/bin/chromedriver";
/// The key under which WebDriver names an element.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver process and one headless Chromium session of it.
struct Browser {
    driver: std::process::Child,
    base: String,
    session: String,
    http: HttpClient,
}

impl Browser {
    async fn start() -> Browser {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let driver = std::process::Command::new(CHROMEDRIVER)
            .arg(format!("--port={port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("chromedriver starts");
        let base = format!("http://127.0.0.1:{port}");
        let http = client();
        let mut browser = Browser {
            driver,
            base,
            session: String::new(),
            http,
        };
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        let capabilities = json!({ "capabilities": { "alwaysMatch": {
            "browserName": "chrome",
            "goog:chromeOptions": {
                "binary": CHROMIUM,
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1500,900"]
            }
        }}});
        loop {
            match browser.try_call("POST", "/session", Some(capabilities.clone())).await {
                Ok(answer) if answer["value"]["sessionId"].is_string() => {
                    browser.session = answer["value"]["sessionId"].as_str().unwrap().to_string();
                    return browser;
                }
                outcome => assert!(
                    tokio::time::Instant::now() < deadline,
                    "no Chromium session from chromedriver: {outcome:?}"
                ),
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn try_call(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value, String> {
        let request = http::Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.base))
            .header("content-type", "application/json")
            .body(http_body_util::Full::new(bytes::Bytes::from(
                body.map(|b| b.to_string()).unwrap_or_default(),
            )))
            .unwrap();
        let response = self.http.request(request).await.map_err(|err| err.to_string())?;
        let bytes = http_body_util::BodyExt::collect(response.into_body())
            .await
            .map_err(|err| err.to_string())?
            .to_bytes();
        serde_json::from_slice(&bytes).map_err(|err| err.to_string())
    }

    /// A WebDriver command of this session; its `value`.
    async fn call(&self, method: &str, command: &str, body: Option<Value>) -> Value {
        let path = format!("/session/{}{command}", self.session);
        let answer = self.try_call(method, &path, body).await.expect("chromedriver answers");
        if answer["value"]["error"].is_string() {
            panic!("WebDriver {method} {command}: {answer}");
        }
        answer["value"].clone()
    }

    async fn open(&self, url: &str) {
        self.call("POST", "/url", Some(json!({ "url": url }))).await;
    }

    async fn script(&self, script: &str) -> Value {
        self.call("POST", "/execute/sync", Some(json!({ "script": script, "args": [] })))
            .await
    }

    async fn element(&self, css: &str) -> String {
        let found = self
            .call(
                "POST",
                "/element",
                Some(json!({ "using": "css selector", "value": css })),
            )
            .await;
        found[ELEMENT].as_str().expect("an element id").to_string()
    }

    async fn type_into(&self, css: &str, text: &str) {
        let element = self.element(css).await;
        self.call(
            "POST",
            &format!("/element/{element}/value"),
            Some(json!({ "text": text })),
        )
        .await;
    }

    async fn click(&self, css: &str) {
        let element = self.element(css).await;
        self.call("POST", &format!("/element/{element}/click"), Some(json!({})))
            .await;
    }

    /// Waits (bounded) until `script` returns `true`.
    async fn wait_for(&self, what: &str, script: &str) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while self.script(script).await != Value::Bool(true) {
            assert!(tokio::time::Instant::now() < deadline, "the page never showed {what}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn screenshot(&self) -> Vec<u8> {
        use base64_png::decode;
        decode(self.call("GET", "/screenshot", None).await.as_str().expect("a PNG"))
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.driver.kill();
        let _ = self.driver.wait();
    }
}

/// Base64 as WebDriver sends screenshots (the standard alphabet, padded).
mod base64_png {
    pub fn decode(text: &str) -> Vec<u8> {
        let value = |byte: u8| -> u32 {
            match byte {
                b'A'..=b'Z' => u32::from(byte - b'A'),
                b'a'..=b'z' => u32::from(byte - b'a') + 26,
                b'0'..=b'9' => u32::from(byte - b'0') + 52,
                b'+' => 62,
                b'/' => 63,
                _ => 0,
            }
        };
        let bytes: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
        let mut out = Vec::with_capacity(bytes.len() / 4 * 3);
        for chunk in bytes.chunks(4) {
            let padding = chunk.iter().filter(|b| **b == b'=').count();
            let n = chunk
                .iter()
                .fold(0u32, |acc, b| (acc << 6) | if *b == b'=' { 0 } else { value(*b) });
            let n = n << (6 * (4 - chunk.len() as u32));
            let three = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
            out.extend_from_slice(&three[..3 - padding.min(2)]);
        }
        out
    }
}

/// Whether a browser is installed; without one the test says how to get it (and fails when
/// the environment requires every service).
fn browser_installed() -> bool {
    let installed = std::path::Path::new(CHROMIUM).exists() && std::path::Path::new(CHROMEDRIVER).exists();
    if !installed {
        let message = "the dashboard's browser test needs Chromium: apt-get install chromium chromium-driver";
        assert!(
            std::env::var("MOSAIC_REQUIRE_SERVICES").as_deref() != Ok("1"),
            "{message}"
        );
        eprintln!("skipped: {message}");
    }
    installed
}

async fn start_shop(state: &std::path::Path) -> Host {
    let root = workspace_root();
    Host::start(HostOptions {
        manifest: root.join("spin.toml"),
        listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        admin_listen: Some(SocketAddr::from(([127, 0, 0, 1], 0))),
        state_dir: Some(state.to_path_buf()),
        settings: Some(Settings::load(&root.join("mosaic.toml")).expect("the shop's mosaic.toml")),
        runtime_config_file: None,
        cluster: None,
        run: Default::default(),
    })
    .await
    .expect("the shop starts")
}

/// `products.wasm` with a custom section appended: the same code, another digest.
fn products_v2() -> Vec<u8> {
    let mut bytes = std::fs::read(workspace_root().join("components/target/wasm32-wasip2/release/products.wasm"))
        .expect("products.wasm (cargo xtask build)");
    let name = b"mosaic-test";
    let payload = b"v2";
    bytes.push(0); // a custom section
    bytes.push((1 + name.len() + payload.len()) as u8);
    bytes.push(name.len() as u8);
    bytes.extend_from_slice(name);
    bytes.extend_from_slice(payload);
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_dashboard_shows_the_shop_and_rolls_back_products_with_its_button() {
    if !browser_installed() {
        return;
    }
    let state: PathBuf = std::env::temp_dir().join(unique("mosaic-dashboard"));
    let host = start_shop(&state).await;
    let origin = format!("http://{}", host.admin_addr());
    let status = |name: &str| {
        let name = name.to_string();
        let host = &host;
        async move {
            let status = admin(host, "GET", "/v1/status", Vec::new()).await.json();
            status
                .as_array()
                .and_then(|all| all.iter().find(|c| c["name"] == name.as_str()))
                .map(|c| c["version"].as_str().unwrap_or("").to_string())
                .unwrap_or_default()
        }
    };
    let v1 = status("products").await;
    let deployed = admin(&host, "POST", "/v1/components/products/deploy", products_v2()).await;
    assert_eq!(deployed.status, 200, "{}", deployed.body);
    let v2 = status("products").await;
    assert_ne!(v1, v2);
    let short = |digest: &str| {
        digest
            .trim_start_matches("sha256:")
            .chars()
            .take(12)
            .collect::<String>()
    };

    // Some traffic, for the charts.
    let http = client();
    for _ in 0..20 {
        let _ = mosaic_tests::get(&http, &format!("http://{}/health", host.http_addr())).await;
    }

    let browser = Browser::start().await;
    browser.open(&format!("{origin}/ui")).await;
    browser
        .wait_for("the token form", "return !document.querySelector('#login').hidden")
        .await;
    browser.type_into("#token", host.admin_token()).await;
    browser.click("#login-form button").await;

    let components = [
        "gateway",
        "users",
        "products",
        "inventory",
        "orders",
        "payments",
        "notifications",
        "hello",
    ];
    let all_shown = format!(
        "const shown = Array.from(document.querySelectorAll('#components tbody tr')).map(r => r.dataset.component); \
         return {:?}.every(name => shown.includes(name));",
        components
    );
    browser.wait_for("every component of the shop", &all_shown).await;
    let version_shown = |digest: &str| {
        format!(
            "const row = document.querySelector('#components tr[data-component=\"products\"] .version'); \
             return !!row && row.textContent === '{}';",
            short(digest)
        )
    };
    browser.wait_for("products at v2", &version_shown(&v2)).await;
    browser
        .wait_for(
            "the deploy in the history",
            "return document.querySelectorAll('#history tbody tr').length > 0",
        )
        .await;
    // Let the charts gather a few samples of some traffic, then keep a picture of the page.
    let traffic = tokio::spawn({
        let url = format!("http://{}/health", host.http_addr());
        async move {
            let http = client();
            let until = tokio::time::Instant::now() + Duration::from_secs(7);
            while tokio::time::Instant::now() < until {
                let _ = mosaic_tests::get(&http, &url).await;
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    });
    tokio::time::sleep(Duration::from_secs(7)).await;
    let _ = traffic.await;
    let png = browser.screenshot().await;
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
    std::fs::write(workspace_root().join("target/dashboard.png"), &png).expect("write the screenshot");

    // The rollback button, through its confirmation.
    browser
        .click("#components button.rollback[data-component=\"products\"]")
        .await;
    browser.call("POST", "/alert/accept", Some(json!({}))).await;
    browser.wait_for("products back at v1", &version_shown(&v1)).await;
    assert_eq!(status("products").await, v1, "the host rolled back");

    // Nothing the page loaded came from anywhere but the host.
    let loaded = browser
        .script("return [location.href].concat(performance.getEntriesByType('resource').map(e => e.name));")
        .await;
    let loaded: Vec<String> = serde_json::from_value(loaded).expect("a list of URLs");
    assert!(loaded.len() > 2, "{loaded:?}");
    for url in &loaded {
        assert!(url.starts_with(&origin), "{url} is outside the host ({origin})");
    }
    drop(browser);
    host.shutdown().await;
    let _ = std::fs::remove_dir_all(&state);
}
