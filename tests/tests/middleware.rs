//! HTTP middleware (Spin 4.1's `dependencies.middleware` on `[[trigger.http]]`): components
//! that import and export `wasi:http/handler@0.3.0`, composed around the trigger's component.
//! The fixtures: `middleware-auth` answers 401 without `authorization`, `middleware-tagger`
//! always passes on; both leave a trail in the request and response headers (see
//! tests/fixtures/middleware). The wrapped component is `spin7`, whose `/x-headers` lists the
//! `x-` headers it received.

use bytes::Bytes;
use http_body_util::Full;
use mosaic::settings::Settings;
use mosaic_tests::{client, fixture, AppDir, Reply};

/// `api` (spin7) at `/guarded/...` behind `MIDDLEWARE`, and at `/open/...` without any.
const GUARDED_AND_OPEN: &str = r#"
spin_manifest_version = 2
[application]
name = "mw"
[[trigger.http]]
route = "/guarded/..."
component = "api"
dependencies.middleware = MIDDLEWARE
[[trigger.http]]
route = "/open/..."
component = "api"
[component.api]
source = "{spin7}"
[component.auth]
source = "{middleware-auth}"
"#;

fn app(middleware: &str) -> AppDir {
    let dir = AppDir::new(&GUARDED_AND_OPEN.replace("MIDDLEWARE", middleware));
    std::fs::copy(fixture("middleware-tagger"), dir.path.join("tagger.wasm")).expect("copy the tagger");
    dir
}

/// GET `url` with the headers `headers`.
async fn get_with(url: &str, headers: &[(&str, &str)]) -> Reply {
    let mut request = http::Request::get(url);
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let response = client()
        .request(request.body(Full::new(Bytes::new())).expect("request"))
        .await
        .unwrap_or_else(|err| panic!("GET {url}: {err}"));
    Reply::read(response).await.expect("body")
}

/// Every value of the request header `name` the component received, in order (from the lines
/// `NAME=VALUE` of its `/x-headers` answer).
fn received(reply: &Reply, name: &str) -> Vec<String> {
    reply
        .body
        .lines()
        .filter_map(|line| line.split_once('='))
        .filter(|(header, _)| *header == name)
        .map(|(_, value)| value.to_string())
        .collect()
}

/// Every value of the response header `name`, in order.
fn values(reply: &Reply, name: &str) -> Vec<String> {
    reply
        .headers
        .get_all(name)
        .iter()
        .map(|value| value.to_str().expect("text").to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_auth_middleware_answers_401_without_the_header_and_passes_the_request_on_with_it() {
    let dir = app(r#"[{ component = "auth" }]"#);
    let host = dir.start(Settings::default()).await;
    let base = format!("http://{}", host.http_addr());

    let refused = get_with(&format!("{base}/guarded/hello"), &[]).await;
    assert_eq!(refused.status, 401, "{}", refused.body);
    assert!(
        refused.body.contains("send an authorization header"),
        "{}",
        refused.body
    );
    assert_eq!(values(&refused, "x-middleware-response"), ["auth"]);

    let passed = get_with(&format!("{base}/guarded/hello"), &[("authorization", "Bearer t")]).await;
    assert_eq!((passed.status, passed.body.as_str()), (200, "hello from spin-sdk 7"));
    assert_eq!(values(&passed, "x-middleware-response"), ["auth"]);
    let seen = get_with(&format!("{base}/guarded/x-headers"), &[("authorization", "Bearer t")]).await;
    assert_eq!(received(&seen, "x-middleware-trail"), ["auth"], "{}", seen.body);
    assert_eq!(received(&seen, "x-authenticated"), ["yes"], "{}", seen.body);

    // The same component on a route without middleware is not wrapped.
    let open = get_with(&format!("{base}/open/hello"), &[]).await;
    assert_eq!((open.status, open.body.as_str()), (200, "hello from spin-sdk 7"));
    assert!(values(&open, "x-middleware-response").is_empty());
    // The middleware is no service of its own; the wrapped route runs a copy of `api`.
    assert!(host.app().slot("auth").is_none());
    assert!(host.app().slot("api-for-http-trigger0").is_some());
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_middlewares_run_outermost_first_and_each_sees_what_the_other_added() {
    let dir = app(r#"[{ component = "auth" }, { path = "tagger.wasm" }]"#);
    let host = dir.start(Settings::default()).await;
    let base = format!("http://{}", host.http_addr());
    let reply = get_with(&format!("{base}/guarded/x-headers"), &[("authorization", "Bearer t")]).await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    // On the way in: auth, then tagger, then the component.
    assert_eq!(
        received(&reply, "x-middleware-trail"),
        ["auth", "tagger"],
        "{}",
        reply.body
    );
    assert_eq!(received(&reply, "x-authenticated"), ["yes"], "{}", reply.body);
    assert_eq!(
        values(&reply, "x-tagger-saw-trail"),
        ["auth"],
        "the inner one sees the outer's header"
    );
    assert_eq!(values(&reply, "x-auth-saw-trail"), [""]);
    // On the way out: tagger's response reaches auth.
    assert_eq!(
        values(&reply, "x-auth-saw-response"),
        ["tagger"],
        "the outer one sees the inner's header"
    );
    assert_eq!(values(&reply, "x-tagger-saw-response"), [""]);
    assert_eq!(values(&reply, "x-middleware-response"), ["tagger", "auth"]);
    // The outer one still answers by itself: the inner one and the component never run.
    let refused = get_with(&format!("{base}/guarded/x-headers"), &[]).await;
    assert_eq!(refused.status, 401);
    assert_eq!(values(&refused, "x-middleware-response"), ["auth"]);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_composition_with_middleware_is_cached_and_a_restart_composes_nothing() {
    let dir = app(r#"[{ component = "auth" }, { path = "tagger.wasm" }]"#);
    let host = dir.start(Settings::default()).await;
    let report = host
        .pipeline()
        .deploy(mosaic_tests::deploy_request("api-for-http-trigger0", "spin7"))
        .await
        .expect("the same version again");
    assert!(report.cached, "composed and compiled once: {:?}", report.timings_ms);
    host.shutdown().await;
    let before = dir.artifact_count();
    let host = dir.start(Settings::default()).await;
    assert_eq!(dir.artifact_count(), before, "no new artifact at the restart");
    let base = format!("http://{}", host.http_addr());
    let reply = get_with(&format!("{base}/guarded/hello"), &[("authorization", "Bearer t")]).await;
    assert_eq!(values(&reply, "x-middleware-response"), ["tagger", "auth"]);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_middleware_is_refused_naming_the_component_and_what_is_wrong() {
    // A WASI 0.2 component cannot be wrapped: middleware is WASI 0.3.
    let p2 = AppDir::new(
        r#"
spin_manifest_version = 2
[application]
name = "mw"
[[trigger.http]]
route = "/..."
component = "old"
dependencies.middleware = [{ component = "auth" }]
[component.old]
source = "{probe}"
[component.auth]
source = "{middleware-auth}"
"#,
    );
    let why = p2.refusal().await;
    assert!(
        why.contains("`old`") && why.contains("wasi:http/handler@0.3.0") && why.contains("spin-sdk 7"),
        "{why}"
    );

    // A component that is not a middleware (it does not call a next handler).
    let not_middleware = app(r#"[{ path = "plain.wasm" }]"#);
    std::fs::copy(fixture("spin7-v2"), not_middleware.path.join("plain.wasm")).expect("copy");
    let why = not_middleware.refusal().await;
    assert!(
        why.contains("plain.wasm") && why.contains("is not a middleware"),
        "{why}"
    );

    // A missing middleware file.
    let missing = app(r#"[{ path = "gone.wasm" }]"#);
    let why = missing.refusal().await;
    assert!(why.contains("gone.wasm") && why.contains("middleware 1"), "{why}");

    // A registry source.
    let registry = app(r#"[{ package = "acme:auth", version = "1.0.0" }]"#);
    let why = registry.refusal().await;
    assert!(why.contains("registry") && why.contains("path ="), "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_of_a_middleware_composes_the_route_again_and_its_rollback_restores_it() {
    let dir = app(r#"[{ component = "auth" }]"#);
    let host = dir.start(Settings::default()).await;
    let base = format!("http://{}", host.http_addr());
    // The tagger in place of the auth middleware: the route no longer asks for a header.
    let report = host
        .pipeline()
        .deploy(mosaic_tests::deploy_request("auth", "middleware-tagger"))
        .await
        .expect("the deploy of the middleware");
    assert_eq!(report.composed_into, ["api-for-http-trigger0"]);
    let open = get_with(&format!("{base}/guarded/hello"), &[]).await;
    assert_eq!(open.status, 200, "{}", open.body);
    assert_eq!(values(&open, "x-middleware-response"), ["tagger"]);

    host.pipeline().rollback("auth").await.expect("the rollback");
    let refused = get_with(&format!("{base}/guarded/hello"), &[]).await;
    assert_eq!(refused.status, 401, "{}", refused.body);
    assert_eq!(values(&refused, "x-middleware-response"), ["auth"]);
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_of_a_component_reaches_its_copy_behind_middleware_and_so_does_its_rollback() {
    let dir = app(r#"[{ component = "auth" }]"#);
    let host = dir.start(Settings::default()).await;
    let base = format!("http://{}", host.http_addr());
    let auth = [("authorization", "Bearer t")];
    let versions = || async {
        (
            get_with(&format!("{base}/open/version"), &[]).await.body,
            get_with(&format!("{base}/guarded/version"), &auth).await.body,
        )
    };
    assert_eq!(versions().await, ("v1".to_string(), "v1".to_string()));
    let report = host
        .pipeline()
        .deploy(mosaic_tests::deploy_request("api", "spin7-v2"))
        .await
        .expect("deploy");
    assert!(
        !report
            .warnings
            .iter()
            .any(|warning| warning.contains("kept its version")),
        "{:?}",
        report.warnings
    );
    assert_eq!(versions().await, ("v2".to_string(), "v2".to_string()));
    // Still behind its middleware.
    assert_eq!(get_with(&format!("{base}/guarded/version"), &[]).await.status, 401);
    host.pipeline().rollback("api").await.expect("rollback");
    assert_eq!(versions().await, ("v1".to_string(), "v1".to_string()));
    host.shutdown().await;
}
