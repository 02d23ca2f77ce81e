//! The shop runs under Spin as the README's "Under Spin" recipe says. Its events reach their
//! subscriber there too: Spin's Redis trigger subscribes to each `[[trigger.redis]]` channel
//! literally, so spin.toml must name every channel the services publish to exactly, and no
//! pattern. Its runtime config gives every granted store and database a file (Spin keeps a
//! database without a path in memory), and `mosaic migrate` (`cargo xtask spin-data`) puts the
//! services' tables in those files.

use mosaic::app::manifest::Manifest;
use mosaic_tests::workspace_root;

#[path = "../../components/shared/src/events.rs"]
mod events;

fn shop_manifest() -> Manifest {
    let path = workspace_root().join("spin.toml");
    Manifest::load(&path).unwrap_or_else(|err| panic!("{}: {err:#}", path.display()))
}

#[test]
fn every_published_channel_has_a_subscriber_with_that_exact_channel() {
    let manifest = shop_manifest();
    for channel in events::PUBLISHED_CHANNELS {
        let subscribers: Vec<&str> = manifest
            .redis_triggers
            .iter()
            .filter(|trigger| trigger.channel == channel)
            .map(|trigger| trigger.component.as_str())
            .collect();
        assert_eq!(
            subscribers,
            ["notifications"],
            "spin.toml needs exactly one `[[trigger.redis]] channel = \"{channel}\"` for notifications"
        );
    }
}

#[test]
fn no_shop_channel_is_a_pattern() {
    let manifest = shop_manifest();
    let wildcards: Vec<&str> = manifest
        .redis_triggers
        .iter()
        .map(|trigger| trigger.channel.as_str())
        .filter(|channel| mosaic_manifest::topics::has_wildcard(channel))
        .collect();
    assert!(wildcards.is_empty(), "Spin would take these literally: {wildcards:?}");
}

/// The list in events.rs is the one the services use: no service source spells an event
/// channel of its own.
#[test]
fn the_services_publish_only_the_listed_channels() {
    let components = workspace_root().join("components");
    let mut unlisted = Vec::new();
    for service in ["orders", "payments", "notifications", "common", "shared"] {
        let src = components.join(service).join("src");
        for entry in std::fs::read_dir(&src).unwrap_or_else(|err| panic!("{}: {err}", src.display())) {
            let path = entry.expect("source entry").path();
            if path.extension().is_none_or(|ext| ext != "rs") || path.ends_with("events.rs") {
                continue;
            }
            let text = std::fs::read_to_string(&path).expect("source");
            for literal in text.split('"').skip(1).step_by(2) {
                let is_event_channel = ["order.", "payment."].iter().any(|prefix| {
                    literal.len() > prefix.len() && literal.starts_with(prefix) && !literal.contains(' ')
                });
                if is_event_channel && !events::PUBLISHED_CHANNELS.contains(&literal) {
                    unlisted.push(format!("{}: \"{literal}\"", path.display()));
                }
            }
        }
    }
    assert!(
        unlisted.is_empty(),
        "channels not in components/shared/src/events.rs: {unlisted:?}"
    );
}

fn spin_runtime_config() -> toml::Table {
    let path = workspace_root().join("spin-runtime-config.toml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|err| panic!("{}: {err}", path.display()));
    text.parse().unwrap_or_else(|err| panic!("{}: {err}", path.display()))
}

#[test]
fn the_spin_runtime_config_puts_every_granted_store_and_database_on_a_file() {
    let manifest = shop_manifest();
    let config = spin_runtime_config();
    let section = |name: &str| config.get(name).and_then(|v| v.as_table()).cloned().unwrap_or_default();
    let (stores, databases) = (section("key_value_store"), section("sqlite_database"));
    for (component, decl) in &manifest.components {
        for (labels, entries, what) in [
            (&decl.key_value_stores, &stores, "key_value_store"),
            (&decl.sqlite_databases, &databases, "sqlite_database"),
        ] {
            for label in labels.iter().filter(|label| *label != "default") {
                let entry = entries
                    .get(label)
                    .unwrap_or_else(|| panic!("`{component}` is granted `{label}`: add [{what}.{label}]"));
                assert_eq!(entry["type"].as_str(), Some("spin"), "[{what}.{label}]");
                let path = entry.get("path").and_then(|p| p.as_str()).unwrap_or_default();
                assert!(
                    path.starts_with(".spin/"),
                    "[{what}.{label}] needs a path under .spin/ (without one Spin keeps it in memory): {path:?}"
                );
            }
        }
    }
}

/// `mosaic migrate --runtime-config-file spin-runtime-config.toml`, run from a directory as
/// `spin up` would be (here a temporary one, so the repository stays clean): every service's
/// tables land in the file the runtime config names, once.
#[tokio::test]
async fn mosaic_migrate_fills_the_files_of_the_spin_runtime_config() {
    let root = workspace_root();
    let dir = std::env::temp_dir().join(mosaic_tests::unique("spin-data"));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let migrate = || {
        let output = std::process::Command::new(mosaic_tests::mosaic_bin())
            .current_dir(&dir)
            .arg("-f")
            .arg(root.join("spin.toml"))
            .arg("--state-dir")
            .arg(dir.join("state"))
            .args(["migrate", "--runtime-config-file"])
            .arg(root.join("spin-runtime-config.toml"))
            .output()
            .expect("run mosaic migrate");
        let stdout = String::from_utf8_lossy(&output.stdout).to_string();
        assert!(
            output.status.success(),
            "{stdout}{}",
            String::from_utf8_lossy(&output.stderr)
        );
        stdout
    };
    let first = migrate();
    let services = ["users", "products", "inventory", "orders", "payments", "notifications"];
    for service in services {
        assert!(
            first.contains(&format!("{service}: applied to its SQLite database: 0001_init.sql")),
            "{first}"
        );
        let file = dir.join(".spin/shop").join(format!("{service}.db"));
        assert!(file.is_file(), "{} is missing:\n{first}", file.display());
    }
    let orders_db = dir.join(".spin/shop/orders.db");
    let tables: Vec<(String,)> = {
        use sqlx::Connection;
        let mut connection = sqlx::SqliteConnection::connect(&format!("sqlite://{}", orders_db.display()))
            .await
            .expect("open orders.db");
        sqlx::query_as("SELECT name FROM sqlite_master WHERE type = 'table'")
            .fetch_all(&mut connection)
            .await
            .expect("list tables")
    };
    assert!(
        tables.iter().any(|(name,)| name == "orders"),
        "orders.db tables: {tables:?}"
    );
    let again = migrate();
    for service in services {
        assert!(
            again.contains(&format!("{service}: SQLite database up to date")),
            "{again}"
        );
    }
    assert!(
        !dir.join("state/sqlite").exists(),
        "every database is a file of the runtime config"
    );
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn mosaic_migrate_of_a_single_component_says_what_to_give_instead() {
    let output = std::process::Command::new(mosaic_tests::mosaic_bin())
        .args(["-f", "app.wasm", "migrate"])
        .output()
        .expect("run mosaic migrate");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(!output.status.success());
    assert!(
        stderr.contains("a single component has no migrations") && stderr.contains("spin.toml"),
        "{stderr}"
    );
}
