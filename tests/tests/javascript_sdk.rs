//! The JavaScript fixture (tests/fixtures/javascript: Spin's JavaScript SDK,
//! `@spinframework/build-tools` 1.0.7 with ComponentizeJS on StarlingMonkey, exporting
//! `wasi:http/incoming-handler@0.2.3`), built by `cargo xtask build`, served by an in-process
//! host beside a key-value store grant and component variables, as a Spin user's manifest
//! would have them. The SDK's key-value and variables packages are not on the registry the
//! project builds from, so the fixture uses neither.

use mosaic::app::Wasi;
use mosaic::settings::Settings;
use mosaic_tests::{client, get, AppDir};

const MANIFEST: &str = r#"
spin_manifest_version = 2
[application]
name = "javascript"
[variables]
region = { default = "eu" }
[[trigger.http]]
route = "/js/..."
component = "js"
[component.js]
source = "{javascript}"
key_value_stores = ["default"]
[component.js.variables]
greeting = "hello from {{ region }}"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spin_js_sdk_component_is_served() {
    let dir = AppDir::new(MANIFEST);
    let host = dir.start(Settings::default()).await;
    let base = format!("http://{}", host.http_addr());
    let client = client();

    let js = host.app().slot("js").unwrap().live.load_full();
    assert_eq!(js.world.wasi, Wasi::V0_2, "{}", js.world);
    assert_eq!(js.world.entry_points, ["wasi:http/incoming-handler@0.2.3"]);

    let hello = get(&client, &format!("{base}/js/hello")).await;
    assert_eq!((hello.status, hello.body.as_str()), (200, "hello from javascript"));
    assert_eq!(
        hello.headers.get("content-type").map(|value| value.as_bytes()),
        Some(&b"text/plain"[..])
    );

    let headers = get(&client, &format!("{base}/js/headers")).await;
    assert_eq!(headers.status, 200, "{}", headers.body);
    let lines: Vec<&str> = headers.body.lines().collect();
    let mut sorted = lines.clone();
    sorted.sort();
    assert_eq!(lines, sorted, "sorted: {}", headers.body);
    assert!(lines.iter().all(|line| line.starts_with("spin-")), "{}", headers.body);
    for expected in [
        "spin-component-route: /js",
        "spin-path-info: /headers",
        "spin-matched-route: /js/...",
        &format!("spin-full-url: {base}/js/headers"),
    ] {
        assert!(lines.contains(&expected), "{expected} in {}", headers.body);
    }

    let missing = get(&client, &format!("{base}/js/nothing-here")).await;
    assert_eq!(
        (missing.status, missing.body.as_str()),
        (404, "javascript has no path /nothing-here")
    );

    host.shutdown().await;
}
