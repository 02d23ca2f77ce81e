//! Component dependencies (`[component.NAME.dependencies]`): the `greeted` fixture imports
//! `mosaic:fixtures/greeting@0.1.0`, which the `greeter` fixture exports; Mosaic composes them
//! at load and at deploy. `greeter` counts visits in the key-value store `default`, which it
//! reaches only if it inherits `key_value_stores`.

use mosaic::settings::Settings;
use mosaic_tests::{client, fixture, get, AppDir};

/// `greeted` at `/greeted/...` with `greeter` from a file; `INHERIT` is replaced by the
/// dependency's extra fields.
const FROM_A_FILE: &str = r#"
spin_manifest_version = 2
[application]
name = "deps"
[[trigger.http]]
route = "/greeted/..."
component = "greeted"
[component.greeted]
source = "{greeted}"
key_value_stores = ["default"]
[component.greeted.dependencies]
"mosaic:fixtures/greeting" = { path = "greeter.wasm" INHERIT }
"#;

/// An app directory with the greeter fixture copied in as `greeter.wasm` (next to spin.toml).
fn app_with_greeter(inherit: &str) -> AppDir {
    let dir = AppDir::new(&FROM_A_FILE.replace("INHERIT", inherit));
    std::fs::copy(fixture("greeter"), dir.path.join("greeter.wasm")).expect("copy the greeter");
    dir
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dependency_from_a_file_serves_through_the_composition_and_inherits_nothing_by_default() {
    let dir = app_with_greeter("");
    let host = dir.start(Settings::default()).await;
    let base = format!("http://{}", host.http_addr());
    let http = client();
    let greeted = get(&http, &format!("{base}/greeted/greet?name=ann")).await;
    assert_eq!(greeted.status, 200, "{}", greeted.body);
    assert_eq!(greeted.body, "hello, ann, from greeter v1");
    // Its parent may use the store `default`; the dependency did not inherit that grant, so
    // its `wasi:keyvalue/store.open` answers access-denied (an error value, not a trap).
    let visits = get(&http, &format!("{base}/greeted/visits")).await;
    assert_eq!(visits.status, 403, "{}", visits.body);
    assert!(visits.body.contains("AccessDenied"), "{}", visits.body);
    // The deploy says so, naming the interface and the grant.
    let report = host
        .pipeline()
        .deploy(mosaic_tests::deploy_request("greeted", "greeted"))
        .await
        .expect("the same version again");
    assert!(report.cached, "composed and compiled once: {:?}", report.timings_ms);
    let warning = report
        .warnings
        .iter()
        .find(|warning| warning.contains("wasi:keyvalue/store"))
        .unwrap_or_else(|| panic!("{:?}", report.warnings));
    assert!(warning.contains("key_value_stores"), "{warning}");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dependency_that_inherits_key_value_stores_uses_its_parents_store() {
    let dir = app_with_greeter(r#", inherit_configuration = ["key_value_stores"]"#);
    let host = dir.start(Settings::default()).await;
    let base = format!("http://{}", host.http_addr());
    let http = client();
    for expected in ["1", "2"] {
        let visits = get(&http, &format!("{base}/greeted/visits")).await;
        assert_eq!(visits.status, 200, "{}", visits.body);
        assert_eq!(visits.body, expected);
    }
    host.shutdown().await;
}

const ON_ANOTHER_COMPONENT: &str = r#"
spin_manifest_version = 2
[application]
name = "deps"
[[trigger.http]]
route = "/greeted/..."
component = "greeted"
[component.greeted]
source = "{greeted}"
key_value_stores = ["default"]
[component.greeted.dependencies]
"mosaic:fixtures@0.1.0" = { component = "greeter", inherit_configuration = true }
[component.greeter]
source = "{greeter}"
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dependency_on_another_component_of_the_app_by_package_name() {
    let dir = AppDir::new(ON_ANOTHER_COMPONENT);
    let host = dir.start(Settings::default()).await;
    let base = format!("http://{}", host.http_addr());
    let http = client();
    assert_eq!(
        get(&http, &format!("{base}/greeted/greet?name=bo")).await.body,
        "hello, bo, from greeter v1"
    );
    let visits = get(&http, &format!("{base}/greeted/visits")).await;
    assert_eq!(
        (visits.status, visits.body.as_str()),
        (200, "1"),
        "it inherits everything"
    );
    // The dependency has no trigger: it is not a service of its own.
    assert!(host.app().slot("greeter").is_none());
    // Deploying it composes its dependent again with the new code.
    let report = host
        .pipeline()
        .deploy(mosaic_tests::deploy_request("greeter", "greeter-v2"))
        .await
        .expect("a deploy of the dependency");
    assert_eq!(report.composed_into, ["greeted"]);
    assert_eq!(get(&http, &format!("{base}/greeted/version")).await.body, "v2");
    host.shutdown().await;
}

/// `a` and `b` (both the greeted fixture) each depend on the app's component `greeter`, and
/// may call each other in-process; `x` (greeted too) has a greeter of its own, from the file
/// `greeter.wasm`, and may call them both.
const SHARED_DEPENDENCY: &str = r#"
spin_manifest_version = 2
[application]
name = "deps"
[[trigger.http]]
route = "/a/..."
component = "a"
[[trigger.http]]
route = "/b/..."
component = "b"
[component.a]
source = "{greeted}"
allowed_outbound_hosts = ["http://*.spin.internal"]
[component.a.dependencies]
"mosaic:fixtures/greeting" = { component = "greeter" }
[component.b]
source = "{greeted}"
allowed_outbound_hosts = ["http://*.spin.internal"]
[component.b.dependencies]
"mosaic:fixtures/greeting" = { component = "greeter" }
[[trigger.http]]
route = "/x/..."
component = "x"
[component.x]
source = "{greeted}"
allowed_outbound_hosts = ["http://*.spin.internal"]
[component.x.dependencies]
"mosaic:fixtures/greeting" = { path = "greeter.wasm" }
[component.greeter]
source = "{greeter}"
"#;

fn shared_dependency_app() -> AppDir {
    let dir = AppDir::new(SHARED_DEPENDENCY);
    std::fs::copy(fixture("greeter"), dir.path.join("greeter.wasm")).expect("copy the greeter");
    dir
}

/// What the load saw: every answer of `/a/chain?to=b`, `/b/chain?to=a` ("v1 v1": the
/// dependency's build in the one asked and in the one it asked) and `/x/chain?to=a,b` (x's own
/// build first, then a's and b's: "v1 v2 v2"), and every failure.
#[derive(Default)]
struct ChainLoad {
    answers: std::collections::BTreeMap<String, u64>,
    failures: Vec<String>,
}

/// Asks both chains over and over from `clients` tasks until `stop`.
fn chain_load(
    base: &str,
    clients: usize,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
) -> Vec<tokio::task::JoinHandle<ChainLoad>> {
    (0..clients)
        .map(|task| {
            let (base, stop) = (base.to_string(), stop.clone());
            tokio::spawn(async move {
                let http = client();
                let mut seen = ChainLoad::default();
                let mut turn = task;
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    let url = match turn % 3 {
                        0 => format!("{base}/a/chain?to=b"),
                        1 => format!("{base}/b/chain?to=a"),
                        _ => format!("{base}/x/chain?to=a,b"),
                    };
                    turn += 1;
                    match mosaic_tests::send(&http, "GET", &url, bytes::Bytes::new()).await {
                        Ok(reply) if reply.status == 200 => *seen.answers.entry(reply.body).or_default() += 1,
                        Ok(reply) => seen.failures.push(format!("{url}: {} {}", reply.status, reply.body)),
                        Err(err) => seen.failures.push(format!("{url}: {err}")),
                    }
                }
                seen
            })
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_of_a_shared_dependency_swaps_every_dependent_as_one_and_its_rollback_restores_them() {
    let dir = shared_dependency_app();
    let host = dir.start(Settings::default()).await;
    let base = format!("http://{}", host.http_addr());
    let http = client();
    assert_eq!(get(&http, &format!("{base}/a/chain?to=b")).await.body, "v1 v1");
    assert!(host.app().slot("greeter").is_none(), "no service of its own");
    let ready = get(&http, &format!("http://{}/readyz", host.admin_addr())).await;
    assert_eq!(
        ready.status, 200,
        "a dependency is loaded with its dependents: {}",
        ready.body
    );

    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let load = chain_load(&base, 4, stop.clone());
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    let report = host
        .pipeline()
        .deploy(mosaic_tests::deploy_request("greeter", "greeter-v2"))
        .await
        .expect("the deploy of the dependency");
    assert_eq!(report.composed_into, ["a", "b"]);
    assert!(!report.cached, "composed and compiled anew");
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    for path in ["a/version", "b/version"] {
        assert_eq!(get(&http, &format!("{base}/{path}")).await.body, "v2", "{path}");
    }
    // `mosaic status` lists the dependency with the components it is composed into.
    let status = mosaic::admin::status(host.app());
    let greeter = status
        .iter()
        .find(|c| c.name == "greeter")
        .expect("greeter in the status");
    assert_eq!(greeter.version, report.digest.to_string());
    assert_eq!(greeter.composed_into, ["a", "b"]);

    // The rollback of the dependency takes the whole set back.
    let back = host.pipeline().rollback("greeter").await.expect("rollback");
    assert_eq!(back.composed_into, ["a", "b"]);
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut answers = std::collections::BTreeMap::new();
    let mut failures = Vec::new();
    for task in load {
        let seen = task.await.expect("a load task");
        for (answer, count) in seen.answers {
            *answers.entry(answer).or_insert(0u64) += count;
        }
        failures.extend(seen.failures);
    }
    assert!(failures.is_empty(), "failed requests under the swap: {failures:?}");
    // x's own greeter is always v1; what a and b answer within one chain is one version.
    let whole = ["v1 v1", "v2 v2", "v1 v1 v1", "v1 v2 v2"];
    let mixed: Vec<_> = answers.keys().filter(|a| !whole.contains(&a.as_str())).collect();
    assert!(mixed.is_empty(), "a chain saw both versions: {answers:?}");
    assert!(
        whole.iter().all(|answer| answers.contains_key(*answer)),
        "every chain ran on both sides: {answers:?}"
    );
    for path in ["a/version", "b/version"] {
        assert_eq!(get(&http, &format!("{base}/{path}")).await.body, "v1", "{path}");
    }

    // A restart comes back with the dependency's deployed version, not its manifest file.
    host.pipeline()
        .deploy(mosaic_tests::deploy_request("greeter", "greeter-v2"))
        .await
        .expect("v2 again");
    host.shutdown().await;
    let host = dir.start(Settings::default()).await;
    let base = format!("http://{}", host.http_addr());
    assert_eq!(get(&http, &format!("{base}/a/chain?to=b")).await.body, "v2 v2");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dependency_deploy_that_does_not_compose_into_every_dependent_changes_nothing() {
    let dir = shared_dependency_app();
    let host = dir.start(Settings::default()).await;
    let base = format!("http://{}", host.http_addr());
    let http = client();
    // `plain` exports no mosaic:fixtures/greeting.
    let err = host
        .pipeline()
        .deploy(mosaic_tests::deploy_request("greeter", "plain"))
        .await
        .unwrap_err();
    let why = err.to_string();
    assert_eq!(err.step(), Some(mosaic::deploy::Step::Validate), "{why}");
    assert!(why.contains("greeter") && why.contains("composed into `a`"), "{why}");
    assert!(why.contains("mosaic:fixtures/greeting"), "{why}");
    assert_eq!(get(&http, &format!("{base}/a/chain?to=b")).await.body, "v1 v1");
    let nothing = host.pipeline().rollback("greeter").await.unwrap_err().to_string();
    assert!(nothing.contains("no earlier version"), "{nothing}");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_composition_is_cached_by_every_part_and_a_new_dependency_build_composes_again() {
    let dir = app_with_greeter("");
    let host = dir.start(Settings::default()).await;
    let base = format!("http://{}", host.http_addr());
    let http = client();
    assert_eq!(get(&http, &format!("{base}/greeted/version")).await.body, "v1");
    // A new build of the dependency: the same `greeted` is composed and compiled again.
    std::fs::copy(fixture("greeter-v2"), dir.path.join("greeter.wasm")).expect("copy v2");
    let report = host
        .pipeline()
        .deploy(mosaic_tests::deploy_request("greeted", "greeted"))
        .await
        .expect("deploy");
    assert!(!report.cached, "another part, another artifact");
    assert_eq!(get(&http, &format!("{base}/greeted/version")).await.body, "v2");
    host.shutdown().await;

    // A restart finds both compositions cached: nothing is composed or compiled again.
    let before = dir.artifact_count();
    let host = dir.start(Settings::default()).await;
    assert_eq!(dir.artifact_count(), before, "no new artifact at the restart");
    let base = format!("http://{}", host.http_addr());
    assert_eq!(get(&http, &format!("{base}/greeted/version")).await.body, "v2");
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_dependencies_are_refused_naming_the_component_and_the_import() {
    // The dependency's file is missing.
    let missing = AppDir::new(&FROM_A_FILE.replace("INHERIT", ""));
    let why = missing.refusal().await;
    assert!(why.contains("greeted") && why.contains("greeter.wasm"), "{why}");

    // A key that names no import of the component.
    let unmatched = AppDir::new(
        &FROM_A_FILE
            .replace("\"mosaic:fixtures/greeting\"", "\"mosaic:other/greeting\"")
            .replace("INHERIT", ""),
    );
    std::fs::copy(fixture("greeter"), unmatched.path.join("greeter.wasm")).expect("copy");
    let why = unmatched.refusal().await;
    assert!(
        why.contains("mosaic:other/greeting") && why.contains("satisfies no import"),
        "{why}"
    );

    // An import no dependency satisfies: the component alone does not link.
    let unsatisfied = AppDir::new(
        r#"
spin_manifest_version = 2
[application]
name = "deps"
[[trigger.http]]
route = "/greeted/..."
component = "greeted"
[component.greeted]
source = "{greeted}"
"#,
    );
    let why = unsatisfied.refusal().await;
    assert!(why.contains("mosaic:fixtures/greeting@0.1.0"), "{why}");

    // A cycle of component dependencies, and a registry source.
    let cycle = AppDir::new(
        r#"
spin_manifest_version = 2
[application]
name = "deps"
[[trigger.http]]
route = "/..."
component = "a"
[component.a]
source = "{greeted}"
[component.a.dependencies]
"mosaic:fixtures/greeting" = { component = "b" }
[component.b]
source = "{greeter}"
[component.b.dependencies]
"mosaic:fixtures/other" = { component = "a" }
"#,
    );
    let why = cycle.refusal().await;
    assert!(why.contains("cycle") && why.contains("a → b → a"), "{why}");
    let registry = AppDir::new(&FROM_A_FILE.replace("{ path = \"greeter.wasm\" INHERIT }", "\"0.1.0\""));
    let why = registry.refusal().await;
    assert!(why.contains("registry") && why.contains("path ="), "{why}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deploy_whose_dependency_is_gone_fails_and_the_running_version_keeps_serving() {
    let dir = app_with_greeter("");
    let host = dir.start(Settings::default()).await;
    let base = format!("http://{}", host.http_addr());
    std::fs::remove_file(dir.path.join("greeter.wasm")).expect("remove the dependency");
    let err = host
        .pipeline()
        .deploy(mosaic_tests::deploy_request("greeted", "greeted"))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("cannot read its dependency"), "{err}");
    assert_eq!(
        get(&client(), &format!("{base}/greeted/greet?name=cy")).await.body,
        "hello, cy, from greeter v1"
    );
    host.shutdown().await;
}
