//! The runtime configuration file (`--runtime-config-file`, Spin's format): which backend
//! serves each key-value store. Component code never chooses a backend.
//!
//! ```toml
//! [key_value_store.default]
//! type = "redis"
//! url = "redis://127.0.0.1:6379/0"
//!
//! [key_value_store.cache]
//! type = "spin"            # embedded SQLite
//! path = "data/cache.db"   # relative to the runtime config file; default: the state directory
//!
//! [sqlite_database.users]
//! type = "spin"
//! path = ".spin/users.db"  # relative to the current directory (as Spin); default: the state directory
//! ```

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

pub use crate::capability::key_value::KeyValueStoreConfig;

#[derive(Debug, Clone, Default)]
pub struct RuntimeConfig {
    pub key_value_stores: BTreeMap<String, KeyValueStoreConfig>,
    /// Files of SQLite databases named in `[sqlite_database.LABEL]`.
    pub sqlite_databases: BTreeMap<String, PathBuf>,
}

#[derive(Deserialize)]
struct RawConfig {
    #[serde(default)]
    key_value_store: BTreeMap<String, RawStore>,
    #[serde(default)]
    sqlite_database: BTreeMap<String, RawStore>,
    /// Sections for capabilities that read them later (SQLite, PostgreSQL, LLM...).
    #[serde(flatten)]
    _others: toml::Table,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawStore {
    #[serde(rename = "type")]
    kind: String,
    #[serde(default)]
    url: Option<String>,
    #[serde(default)]
    path: Option<PathBuf>,
}

impl RuntimeConfig {
    pub fn load(path: &Path) -> Result<Self, String> {
        let text = std::fs::read_to_string(path)
            .map_err(|err| format!("cannot read the runtime config {}: {err}", path.display()))?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, String> {
        let raw: RawConfig = toml::from_str(text).map_err(|err| format!("{}: {err}", path.display()))?;
        let base = path.parent().unwrap_or(Path::new("."));
        let mut key_value_stores = BTreeMap::new();
        for (label, store) in raw.key_value_store {
            let key = format!("{}: `key_value_store.{label}`", path.display());
            let config = match store.kind.as_str() {
                "spin" | "sqlite" => KeyValueStoreConfig::Embedded {
                    path: store.path.map(|p| base.join(p)),
                },
                "redis" => {
                    let url = store
                        .url
                        .ok_or_else(|| format!("{key}: a redis store needs `url = \"redis://HOST:PORT/DB\"`"))?;
                    if !url.starts_with("redis://") && !url.starts_with("rediss://") {
                        return Err(format!("{key}: `url` must start with redis:// (found \"{url}\")"));
                    }
                    KeyValueStoreConfig::Redis { url }
                }
                other => {
                    return Err(format!(
                        "{key}: store type `{other}` is not supported; use \"spin\" (embedded SQLite) or \"redis\""
                    ))
                }
            };
            key_value_stores.insert(label, config);
        }
        let mut sqlite_databases = BTreeMap::new();
        for (label, database) in raw.sqlite_database {
            let key = format!("{}: `sqlite_database.{label}`", path.display());
            if database.kind != "spin" && database.kind != "sqlite" {
                return Err(format!(
                    "{key}: database type `{}` is not supported; use \"spin\" (an embedded SQLite file)",
                    database.kind
                ));
            }
            // As in Spin: a relative database path is from the current directory (a
            // key-value store's is from the runtime config file's directory).
            if let Some(file) = database.path {
                sqlite_databases.insert(label, std::path::absolute(&file).unwrap_or(file));
            }
        }
        Ok(Self {
            key_value_stores,
            sqlite_databases,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stores_and_ignores_other_sections() {
        let config = RuntimeConfig::parse(
            Path::new("/app/rc.toml"),
            "[key_value_store.default]\ntype = \"redis\"\nurl = \"redis://127.0.0.1:6379/1\"\n\
             [key_value_store.cache]\ntype = \"spin\"\npath = \"cache.db\"\n[sqlite_database.default]\ntype = \"spin\"\n",
        )
        .unwrap();
        assert_eq!(
            config.key_value_stores["default"],
            KeyValueStoreConfig::Redis {
                url: "redis://127.0.0.1:6379/1".into()
            }
        );
        assert_eq!(
            config.key_value_stores["cache"],
            KeyValueStoreConfig::Embedded {
                path: Some("/app/cache.db".into())
            }
        );
    }

    #[test]
    fn database_paths_are_from_the_current_directory_as_in_spin() {
        let config = RuntimeConfig::parse(
            Path::new("/app/config/rc.toml"),
            "[sqlite_database.users]\ntype = \"spin\"\npath = \".spin/users.db\"\n\
             [sqlite_database.orders]\ntype = \"spin\"\npath = \"/data/orders.db\"\n",
        )
        .unwrap();
        let here = std::env::current_dir().unwrap();
        assert_eq!(config.sqlite_databases["users"], here.join(".spin/users.db"));
        assert_eq!(config.sqlite_databases["orders"], Path::new("/data/orders.db"));
    }

    #[test]
    fn errors_name_the_store() {
        let err = RuntimeConfig::parse(Path::new("rc.toml"), "[key_value_store.x]\ntype = \"dynamo\"\n").unwrap_err();
        assert!(err.contains("key_value_store.x") && err.contains("dynamo"), "{err}");
        let err = RuntimeConfig::parse(Path::new("rc.toml"), "[key_value_store.x]\ntype = \"redis\"\n").unwrap_err();
        assert!(err.contains("needs `url"), "{err}");
    }
}
