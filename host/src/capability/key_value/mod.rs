//! Key-value: `fermyon:spin/key-value@2.0.0`, Spin 4's `spin:key-value/key-value@3.0.0` and
//! `wasi:keyvalue@0.2.0-draft2` (store, atomics, batch) over one backend trait, [`KeyValueStore`]. Backends: embedded SQLite (the default,
//! a file per store in the state directory) and Redis, chosen per store by the runtime config.
//!
//! A component opens only the stores its manifest entry lists in `key_value_stores`; any other
//! label is `access-denied`. Stores are opened once per host and shared by every instance.

mod guest;
pub mod redis;
mod spin4;
pub mod sqlite;
mod traced;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::backends::OpenedByKey;
use crate::observe::Metrics;

/// Longest key a guest may use, in bytes.
pub const MAX_KEY_BYTES: usize = 256;
/// Largest value a guest may store, in bytes.
pub const MAX_VALUE_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone, thiserror::Error)]
pub enum KvError {
    #[error("{0}")]
    Backend(String),
    #[error("{0}")]
    Invalid(String),
}

/// One key-value store, whatever holds it.
#[async_trait::async_trait]
pub trait KeyValueStore: Send + Sync {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError>;
    async fn set(&self, key: &str, value: &[u8]) -> Result<(), KvError>;
    async fn delete(&self, key: &str) -> Result<(), KvError>;
    async fn exists(&self, key: &str) -> Result<bool, KvError>;
    /// Every key, sorted (Spin's `get-keys`).
    async fn keys(&self) -> Result<Vec<String>, KvError>;
    /// One page of keys (`wasi:keyvalue` `list-keys`): about `limit` keys from where `cursor`
    /// left off (`None`: from the start), and the cursor of the next page (`None`: no more).
    /// A cursor is only meaningful to the store that returned it. A page reads about `limit`
    /// keys from the backend, never the whole keyspace: the embedded store pages in key
    /// order, Redis in its SCAN order (a key present throughout the listing is on some page;
    /// if the server resizes its table meanwhile, a key may appear on two pages).
    async fn keys_page(&self, cursor: Option<&str>, limit: usize) -> Result<KeysPage, KvError>;
    /// Adds `delta` to the integer at `key` (0 when absent) and returns the new value.
    /// Integers are stored as decimal text, the same on every backend.
    async fn increment(&self, key: &str, delta: i64) -> Result<i64, KvError>;
    /// Writes `new` only if the value is still `expected` (`None`: still absent).
    async fn compare_and_swap(&self, key: &str, expected: Option<&[u8]>, new: &[u8]) -> Result<bool, KvError>;
}

/// One page of a store's keys and the cursor of the next one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeysPage {
    pub keys: Vec<String>,
    /// Where the next page starts; `None` on the last page.
    pub cursor: Option<String>,
}

/// Parses a stored counter.
pub fn parse_counter(key: &str, value: Option<&[u8]>) -> Result<i64, KvError> {
    match value {
        None => Ok(0),
        Some(bytes) => std::str::from_utf8(bytes)
            .ok()
            .and_then(|text| text.trim().parse::<i64>().ok())
            .ok_or_else(|| {
                KvError::Invalid(format!(
                    "the value at `{key}` is not an integer, so it cannot be incremented"
                ))
            }),
    }
}

pub fn check_key(key: &str) -> Result<(), KvError> {
    if key.len() > MAX_KEY_BYTES {
        return Err(KvError::Invalid(format!(
            "a key is at most {MAX_KEY_BYTES} bytes; this one is {}",
            key.len()
        )));
    }
    Ok(())
}

pub fn check_value(value: &[u8]) -> Result<(), KvError> {
    if value.len() > MAX_VALUE_BYTES {
        return Err(KvError::Invalid(format!(
            "a value is at most {MAX_VALUE_BYTES} bytes; this one is {}",
            value.len()
        )));
    }
    Ok(())
}

/// Where one store lives, as the runtime config's `[key_value_store.LABEL]` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyValueStoreConfig {
    /// Embedded SQLite; `None` puts the file in the state directory.
    Embedded {
        path: Option<PathBuf>,
    },
    Redis {
        url: String,
    },
}

/// Every store of the application, opened on first use. Opening one store never waits for
/// another store's server.
pub struct KeyValueStores {
    configs: BTreeMap<String, KeyValueStoreConfig>,
    default_dir: PathBuf,
    open: OpenedByKey<Arc<dyn KeyValueStore>, KvError>,
    metrics: Arc<Metrics>,
}

impl KeyValueStores {
    pub fn new(configs: BTreeMap<String, KeyValueStoreConfig>, default_dir: PathBuf, metrics: Arc<Metrics>) -> Self {
        Self {
            configs,
            default_dir,
            open: OpenedByKey::default(),
            metrics,
        }
    }

    /// Checks every store the runtime config puts on a server (for `/readyz`): each must
    /// answer now. Embedded stores open on first use and are not checked.
    pub async fn check_servers(&self) -> Vec<(String, Result<(), KvError>)> {
        let mut outcomes = Vec::new();
        for (label, config) in &self.configs {
            if let KeyValueStoreConfig::Redis { .. } = config {
                let outcome = match self.open(label).await {
                    Ok(store) => store.exists("mosaic:readyz").await.map(|_| ()),
                    Err(err) => Err(err),
                };
                outcomes.push((label.clone(), outcome));
            }
        }
        outcomes
    }

    /// The store behind `label`. A label with no runtime config gets an embedded store.
    pub async fn open(&self, label: &str) -> Result<Arc<dyn KeyValueStore>, KvError> {
        let config = self
            .configs
            .get(label)
            .cloned()
            .unwrap_or(KeyValueStoreConfig::Embedded { path: None });
        let default_path = self.default_dir.join(format!("{label}.sqlite"));
        let backend = self.backend_name(label);
        let metrics = self.metrics.clone();
        self.open
            .get_or_open(label, move || async move {
                let opened: Result<Arc<dyn KeyValueStore>, KvError> = match config {
                    KeyValueStoreConfig::Embedded { path } => sqlite::SqliteStore::open(&path.unwrap_or(default_path))
                        .await
                        .map(|store| Arc::new(store) as Arc<dyn KeyValueStore>),
                    KeyValueStoreConfig::Redis { url } => redis::RedisStore::open(&url)
                        .await
                        .map(|store| Arc::new(store) as Arc<dyn KeyValueStore>),
                };
                let store = opened.inspect_err(|_| metrics.record_backend_error("key_value", backend))?;
                Ok(Arc::new(Metered {
                    store,
                    backend,
                    metrics,
                }) as Arc<dyn KeyValueStore>)
            })
            .await
    }

    pub fn backend_name(&self, label: &str) -> &'static str {
        match self.configs.get(label) {
            Some(KeyValueStoreConfig::Redis { .. }) => "redis",
            _ => "embedded",
        }
    }
}

/// A store whose backend failures are counted in `mosaic_backend_errors_total`.
struct Metered {
    store: Arc<dyn KeyValueStore>,
    backend: &'static str,
    metrics: Arc<Metrics>,
}

impl Metered {
    fn counted<T>(&self, outcome: Result<T, KvError>) -> Result<T, KvError> {
        if let Err(KvError::Backend(_)) = &outcome {
            self.metrics.record_backend_error("key_value", self.backend);
        }
        outcome
    }
}

#[async_trait::async_trait]
impl KeyValueStore for Metered {
    async fn get(&self, key: &str) -> Result<Option<Vec<u8>>, KvError> {
        self.counted(self.store.get(key).await)
    }
    async fn set(&self, key: &str, value: &[u8]) -> Result<(), KvError> {
        self.counted(self.store.set(key, value).await)
    }
    async fn delete(&self, key: &str) -> Result<(), KvError> {
        self.counted(self.store.delete(key).await)
    }
    async fn exists(&self, key: &str) -> Result<bool, KvError> {
        self.counted(self.store.exists(key).await)
    }
    async fn keys(&self) -> Result<Vec<String>, KvError> {
        self.counted(self.store.keys().await)
    }
    async fn keys_page(&self, cursor: Option<&str>, limit: usize) -> Result<KeysPage, KvError> {
        self.counted(self.store.keys_page(cursor, limit).await)
    }
    async fn increment(&self, key: &str, delta: i64) -> Result<i64, KvError> {
        self.counted(self.store.increment(key, delta).await)
    }
    async fn compare_and_swap(&self, key: &str, expected: Option<&[u8]>, new: &[u8]) -> Result<bool, KvError> {
        self.counted(self.store.compare_and_swap(key, expected, new).await)
    }
}

/// What one instance may open: its granted labels and the application's stores.
#[derive(Clone)]
pub struct KeyValueAccess {
    pub component: Arc<str>,
    pub granted: Arc<[String]>,
    pub stores: Arc<KeyValueStores>,
    /// The trace of the request the instance serves: each operation on a store opened under
    /// it is a span of it (when spans are exported).
    pub trace: Option<Arc<crate::observe::TraceContext>>,
}

impl KeyValueAccess {
    pub fn allows(&self, label: &str) -> bool {
        self.granted.iter().any(|granted| granted == label)
    }
}

/// An open store held in a guest's resource table.
pub struct OpenStore {
    pub label: String,
    pub store: Arc<dyn KeyValueStore>,
}

/// A compare-and-swap handle (`wasi:keyvalue/atomics.cas`): the value read when it was made.
pub struct CasHandle {
    pub store: Arc<dyn KeyValueStore>,
    pub key: String,
    pub seen: Option<Vec<u8>>,
}

#[async_trait::async_trait]
impl super::Capability for KeyValueStores {
    async fn readiness(&self) -> Vec<super::Check> {
        super::server_checks("key_value", self.check_servers(), |err| err.to_string()).await
    }
}

super::guest_view!(
    /// The guest's view of key-value: its instance's access and resource table.
    KeyValueView,
    KeyValueImports,
    KeyValueAccess,
    key_value,
    key_value_view
);

impl super::GuestCapability for KeyValueStores {
    type Instance = KeyValueAccess;

    fn instance(self: &Arc<Self>, component: &super::grants::ComponentSpec) -> KeyValueAccess {
        KeyValueAccess {
            component: Arc::from(component.name.as_str()),
            granted: component.key_value_stores.clone(),
            stores: self.clone(),
            trace: None,
        }
    }

    fn add_to_linker<T: super::HasInstance<KeyValueAccess> + Send + 'static>(
        linker: &mut wasmtime::component::Linker<T>,
    ) -> anyhow::Result<()> {
        use crate::capability::bindings::{spin_key_value, spin_key_value3, wasi_atomics, wasi_batch, wasi_store};
        // fermyon:spin/key-value@2.0.0, spin:key-value/key-value@3.0.0 and wasi:keyvalue (store,
        // atomics, batch)
        spin_key_value::add_to_linker::<T, KeyValueImports>(linker, key_value_view::<T>)?;
        spin_key_value3::add_to_linker::<T, KeyValueImports>(linker, key_value_view::<T>)?;
        wasi_store::add_to_linker::<T, KeyValueImports>(linker, key_value_view::<T>)?;
        wasi_atomics::add_to_linker::<T, KeyValueImports>(linker, key_value_view::<T>)?;
        wasi_batch::add_to_linker::<T, KeyValueImports>(linker, key_value_view::<T>)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::KeyValueStoreConfig;
    use super::KeyValueStores;

    #[tokio::test]
    async fn a_hanging_redis_store_does_not_stall_opening_another_store() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let hanging = format!("redis://{}/1", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        });
        let dir = std::env::temp_dir().join(format!("mosaic-kv-open-{}", std::process::id()));
        let configs = BTreeMap::from([("hangs".to_string(), KeyValueStoreConfig::Redis { url: hanging })]);
        let stores = Arc::new(KeyValueStores::new(configs, dir.clone(), Default::default()));

        let stalled = tokio::spawn({
            let stores = stores.clone();
            async move { stores.open("hangs").await.map(|_| ()) }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!stalled.is_finished(), "the hanging server should hold its open");

        let started = Instant::now();
        let other = stores.open("other").await;
        assert!(other.is_ok(), "the embedded store opens");
        assert!(
            started.elapsed() < Duration::from_millis(500),
            "opening another store waited {:?} for the hanging one",
            started.elapsed()
        );
        stalled.abort();
        let _ = std::fs::remove_dir_all(dir);
    }
}
