//! `mosaic.toml`: Mosaic-only host settings (listeners, limits, admin). Spin's manifest never
//! carries these keys, so the same `spin.toml` stays valid for `spin up`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Everything `mosaic.toml` can set. Every field has a documented default (README "Limits").
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub http: HttpSettings,
    pub admin: AdminSettings,
    pub limits: Limits,
    /// Per component: where its `migrations/<component>/` go when that is not its SQLite
    /// database, e.g. `[migrations.users] postgres = "host=127.0.0.1 user=postgres dbname=users"`.
    pub migrations: std::collections::BTreeMap<String, MigrationTarget>,
    pub messaging: MessagingSettings,
}

/// Which broker carries the messages of `fermyon:spin/redis` publish and `[[trigger.redis]]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum BrokerKind {
    /// A durable log in the state directory (SQLite); no external service.
    #[default]
    Embedded,
    RabbitMQ,
    Nats,
}

/// `[messaging]`: the broker and the delivery policy of every subscription.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MessagingSettings {
    pub broker: BrokerKind,
    /// The broker's address: `amqp://user:password@host:5672/%2f` or `nats://host:4222`.
    pub url: Option<String>,
    /// Keeps the exchanges, queues and streams of one application apart from another's on a
    /// shared broker. Defaults to the application's name.
    pub namespace: Option<String>,
    /// Attempts at one message before it goes to the dead-letter store.
    pub max_deliver: u32,
    /// Wait before the first retry; doubled on each further retry up to `retry_max_ms`.
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
    /// Deliveries handled at once per subscription; 1 keeps the publish order.
    pub concurrency: u32,
    /// Largest payload a guest may publish.
    pub max_message_bytes: u64,
    /// Per subscribing component: `[messaging.subscriptions.NAME] concurrency = 4`.
    pub subscriptions: std::collections::BTreeMap<String, SubscriptionPolicy>,
}

impl Default for MessagingSettings {
    fn default() -> Self {
        Self {
            broker: BrokerKind::Embedded,
            url: None,
            namespace: None,
            max_deliver: 5,
            retry_initial_ms: 200,
            retry_max_ms: 30_000,
            concurrency: 1,
            max_message_bytes: 512 * 1024,
            subscriptions: Default::default(),
        }
    }
}

/// What a subscription may set for itself; unset values come from `[messaging]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SubscriptionPolicy {
    pub concurrency: Option<u32>,
    pub max_deliver: Option<u32>,
    pub retry_initial_ms: Option<u64>,
    pub retry_max_ms: Option<u64>,
}

/// The delivery policy of one subscription, resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DeliveryPolicy {
    pub concurrency: u32,
    pub max_deliver: u32,
    pub retry_initial: Duration,
    pub retry_max: Duration,
}

impl DeliveryPolicy {
    /// The wait before retry number `retry` (1 for the first retry): exponential, capped.
    pub fn backoff(&self, retry: u32) -> Duration {
        let factor = 2u32.saturating_pow(retry.saturating_sub(1).min(30));
        self.retry_initial.saturating_mul(factor).min(self.retry_max)
    }
}

impl MessagingSettings {
    pub fn policy_of(&self, component: &str) -> DeliveryPolicy {
        let own = self.subscriptions.get(component).cloned().unwrap_or_default();
        DeliveryPolicy {
            concurrency: own.concurrency.unwrap_or(self.concurrency),
            max_deliver: own.max_deliver.unwrap_or(self.max_deliver),
            retry_initial: Duration::from_millis(own.retry_initial_ms.unwrap_or(self.retry_initial_ms)),
            retry_max: Duration::from_millis(own.retry_max_ms.unwrap_or(self.retry_max_ms)),
        }
    }

    fn check(&self) -> Result<(), String> {
        let mut counts = vec![
            ("messaging.max_deliver".to_string(), self.max_deliver),
            ("messaging.concurrency".to_string(), self.concurrency),
        ];
        for (name, policy) in &self.subscriptions {
            counts.push((
                format!("messaging.subscriptions.{name}.max_deliver"),
                policy.max_deliver.unwrap_or(1),
            ));
            counts.push((
                format!("messaging.subscriptions.{name}.concurrency"),
                policy.concurrency.unwrap_or(1),
            ));
        }
        if let Some((key, _)) = counts.iter().find(|(_, value)| *value == 0) {
            return Err(format!("`{key}` must be at least 1"));
        }
        if self.max_message_bytes == 0 {
            return Err("`messaging.max_message_bytes` must be greater than 0".into());
        }
        match (self.broker, &self.url) {
            (BrokerKind::Embedded, Some(_)) => Err(
                "`messaging.url` is set but `messaging.broker` is \"embedded\" (the default); set broker = \"rabbitmq\" or \"nats\", or drop url".into(),
            ),
            (BrokerKind::RabbitMQ | BrokerKind::Nats, None) => Err(format!(
                "`messaging.broker` = \"{}\" needs `messaging.url`, e.g. {}",
                if self.broker == BrokerKind::Nats { "nats" } else { "rabbitmq" },
                if self.broker == BrokerKind::Nats { "\"nats://127.0.0.1:4222\"" } else { "\"amqp://guest:guest@127.0.0.1:5672/%2f\"" }
            )),
            _ => Ok(()),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MigrationTarget {
    /// A PostgreSQL address (URL or key-value form).
    pub postgres: String,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpSettings {
    /// Where the application's HTTP trigger listens.
    pub listen: SocketAddr,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 3000)),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminSettings {
    /// The admin API. Loopback by default; port 0 picks a free port, which the CLI finds
    /// through the state directory.
    pub listen: SocketAddr,
}

impl Default for AdminSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 0)),
        }
    }
}

/// Per-request and per-deploy limits.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Wall-clock budget of one request, CPU and waiting alike (epoch deadline + timer).
    pub request_timeout_ms: u64,
    /// Linear memory one instance may grow to.
    pub instance_memory_mb: u64,
    /// Largest request body the host accepts (413 beyond).
    pub max_request_body_bytes: u64,
    /// Largest response body a guest may send; the response is cut off beyond it.
    pub max_response_body_bytes: u64,
    /// Largest component file a deploy accepts.
    pub max_component_bytes: u64,
    /// Instances alive at once across all components (the pooling allocator's size).
    pub max_concurrent_instances: u32,
    /// How long a swapped-out version or a shutting-down host waits for in-flight requests.
    pub drain_timeout_ms: u64,
    /// How long the deploy probe may take to instantiate and answer its health route.
    pub probe_timeout_ms: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            request_timeout_ms: 30_000,
            instance_memory_mb: 128,
            max_request_body_bytes: 10 * 1024 * 1024,
            max_response_body_bytes: 64 * 1024 * 1024,
            max_component_bytes: 64 * 1024 * 1024,
            max_concurrent_instances: 1000,
            drain_timeout_ms: 30_000,
            probe_timeout_ms: 10_000,
        }
    }
}

impl Limits {
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }
    pub fn drain_timeout(&self) -> Duration {
        Duration::from_millis(self.drain_timeout_ms)
    }
    pub fn probe_timeout(&self) -> Duration {
        Duration::from_millis(self.probe_timeout_ms)
    }
    pub fn instance_memory_bytes(&self) -> u64 {
        self.instance_memory_mb * 1024 * 1024
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error("cannot read {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not valid Mosaic settings: {message}")]
    Invalid { path: PathBuf, message: String },
}

impl Settings {
    /// Reads `mosaic.toml` beside the manifest when it exists; defaults otherwise.
    pub fn load_beside(manifest: &Path) -> Result<Self, SettingsError> {
        let dir = manifest.parent().unwrap_or(Path::new("."));
        let path = dir.join("mosaic.toml");
        if !path.exists() {
            return Ok(Self::default());
        }
        Self::load(&path)
    }

    pub fn load(path: &Path) -> Result<Self, SettingsError> {
        let text = std::fs::read_to_string(path).map_err(|source| SettingsError::Read {
            path: path.to_owned(),
            source,
        })?;
        let settings: Settings = toml::from_str(&text).map_err(|err| SettingsError::Invalid {
            path: path.to_owned(),
            message: err.to_string(),
        })?;
        settings.check().map_err(|message| SettingsError::Invalid {
            path: path.to_owned(),
            message,
        })?;
        Ok(settings)
    }
}

impl Settings {
    /// Refuses values that cannot work, naming the key.
    pub fn check(&self) -> Result<(), String> {
        self.limits.check()?;
        self.messaging.check()
    }
}

impl Limits {
    fn check(&self) -> Result<(), String> {
        let positive = [
            ("limits.request_timeout_ms", self.request_timeout_ms),
            ("limits.instance_memory_mb", self.instance_memory_mb),
            ("limits.max_request_body_bytes", self.max_request_body_bytes),
            ("limits.max_response_body_bytes", self.max_response_body_bytes),
            ("limits.max_component_bytes", self.max_component_bytes),
            (
                "limits.max_concurrent_instances",
                u64::from(self.max_concurrent_instances),
            ),
            ("limits.probe_timeout_ms", self.probe_timeout_ms),
        ];
        for (key, value) in positive {
            if value == 0 {
                return Err(format!("`{key}` must be greater than 0"));
            }
        }
        if self.instance_memory_mb > 4096 {
            return Err("`limits.instance_memory_mb` must be at most 4096 (a 32-bit memory)".into());
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_key_is_named() {
        let err = toml::from_str::<Settings>("[limits]\nrequest_timeout = 5\n").unwrap_err();
        assert!(err.to_string().contains("request_timeout"), "{err}");
    }

    #[test]
    fn messaging_settings_are_checked_and_resolved() {
        let settings: Settings = toml::from_str(
            "[messaging]\nbroker = \"rabbitmq\"\nurl = \"amqp://127.0.0.1\"\nmax_deliver = 3\n\
             [messaging.subscriptions.orders]\nconcurrency = 4\n",
        )
        .unwrap();
        settings.check().unwrap();
        let policy = settings.messaging.policy_of("orders");
        assert_eq!((policy.concurrency, policy.max_deliver), (4, 3));
        assert_eq!(settings.messaging.policy_of("other").concurrency, 1);
        assert_eq!(policy.backoff(1), Duration::from_millis(200));
        assert_eq!(policy.backoff(3), Duration::from_millis(800));
        assert_eq!(policy.backoff(40), Duration::from_secs(30));
        let missing_url: Settings = toml::from_str("[messaging]\nbroker = \"nats\"\n").unwrap();
        assert!(missing_url.check().unwrap_err().contains("messaging.url"));
        let zero: Settings = toml::from_str("[messaging.subscriptions.x]\nmax_deliver = 0\n").unwrap();
        assert!(zero
            .check()
            .unwrap_err()
            .contains("messaging.subscriptions.x.max_deliver"));
    }

    #[test]
    fn zero_limit_is_refused() {
        let settings: Settings = toml::from_str("[limits]\nrequest_timeout_ms = 0\n").unwrap();
        let err = settings.limits.check().unwrap_err();
        assert!(err.contains("limits.request_timeout_ms"), "{err}");
    }
}
