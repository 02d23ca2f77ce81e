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
    /// The policy of outbound HTTP requests: timeouts, retries, circuit breaker.
    pub outbound: OutboundSettings,
    /// Several hosts serving one application, coordinated through PostgreSQL.
    pub cluster: ClusterSettings,
}

/// `[cluster]`: the desired version of every component lives in PostgreSQL; every host
/// converges on it (see `cluster`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterSettings {
    /// The cluster store, a PostgreSQL address (`postgres://user@host:5432/db` or
    /// `host=... user=... dbname=...`). None: this host runs alone.
    pub postgres: Option<String>,
    /// This host's name in `mosaic status`. Default: the machine's host name and HTTP port.
    pub host_name: Option<String>,
    /// Keeps this application's versions apart from another's in the same database. Default:
    /// the application's name.
    pub namespace: Option<String>,
    /// How often a host compares its versions with the desired ones even without a
    /// notification, and reports its own (its heartbeat).
    pub reconcile_interval_ms: u64,
    /// A host whose last report is older than this shows as gone in `mosaic status`.
    pub host_timeout_ms: u64,
}

impl Default for ClusterSettings {
    fn default() -> Self {
        Self {
            postgres: None,
            host_name: None,
            namespace: None,
            reconcile_interval_ms: 2_000,
            host_timeout_ms: 10_000,
        }
    }
}

impl ClusterSettings {
    fn check(&self) -> Result<(), String> {
        if self.reconcile_interval_ms == 0 {
            return Err("`cluster.reconcile_interval_ms` must be greater than 0".into());
        }
        if self.host_timeout_ms <= self.reconcile_interval_ms {
            return Err("`cluster.host_timeout_ms` must be greater than `cluster.reconcile_interval_ms`".into());
        }
        if let Some(name) = &self.host_name {
            if name.trim().is_empty() || name.len() > 200 {
                return Err("`cluster.host_name` must be 1 to 200 characters".into());
            }
        }
        Ok(())
    }

    pub fn reconcile_interval(&self) -> Duration {
        Duration::from_millis(self.reconcile_interval_ms)
    }
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

/// `[outbound]`: how the host sends a guest's outbound HTTP requests, to another component
/// (`http://NAME.spin.internal`, `http://self`) or over the network. Every key can be set again
/// for one destination in `[outbound.destinations."HOST"]` or `[outbound.destinations."HOST:PORT"]`
/// (`HOST:PORT` wins over `HOST`, which wins over `[outbound]`). See docs/outbound.md.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct OutboundSettings {
    /// Wait for the TCP connection (and TLS handshake) to a network destination.
    pub connect_timeout_ms: u64,
    /// Wait for the response head (first byte), per attempt; also the longest pause between
    /// two chunks of the response body of a network destination.
    pub request_timeout_ms: u64,
    /// Retries after a failed attempt, for GET, HEAD, OPTIONS, PUT and DELETE with a body of at
    /// most 64 KiB; never for POST or PATCH.
    pub retries: u32,
    /// Backoff ceiling before the first retry; doubled on each further retry up to
    /// `retry_max_ms`. The wait itself is drawn at random below the ceiling (full jitter).
    pub retry_initial_ms: u64,
    pub retry_max_ms: u64,
    /// Failures in a row (within `breaker_window_ms`) that open the circuit; 0 turns the
    /// breaker off.
    pub breaker_failures: u32,
    pub breaker_window_ms: u64,
    /// How long an open circuit refuses requests at once before it lets one trial through.
    pub breaker_open_ms: u64,
    /// Overrides per destination: `"users.spin.internal"`, `"api.example.com"`,
    /// `"api.example.com:8443"`.
    pub destinations: std::collections::BTreeMap<String, DestinationPolicy>,
}

impl Default for OutboundSettings {
    fn default() -> Self {
        Self {
            connect_timeout_ms: 5_000,
            request_timeout_ms: 30_000,
            retries: 2,
            retry_initial_ms: 50,
            retry_max_ms: 1_000,
            breaker_failures: 5,
            breaker_window_ms: 10_000,
            breaker_open_ms: 5_000,
            destinations: Default::default(),
        }
    }
}

/// What `[outbound.destinations."HOST"]` may set; unset keys come from `[outbound]`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestinationPolicy {
    pub connect_timeout_ms: Option<u64>,
    pub request_timeout_ms: Option<u64>,
    pub retries: Option<u32>,
    pub retry_initial_ms: Option<u64>,
    pub retry_max_ms: Option<u64>,
    pub breaker_failures: Option<u32>,
    pub breaker_window_ms: Option<u64>,
    pub breaker_open_ms: Option<u64>,
}

/// Most retries one request may get.
pub const MAX_OUTBOUND_RETRIES: u32 = 10;
/// Highest `breaker_failures` (the breaker keeps one instant per failure counted).
pub const MAX_BREAKER_FAILURES: u32 = 10_000;

impl OutboundSettings {
    /// The keys of `[outbound]` as a destination override with every key set.
    pub fn as_override(&self) -> DestinationPolicy {
        DestinationPolicy {
            connect_timeout_ms: Some(self.connect_timeout_ms),
            request_timeout_ms: Some(self.request_timeout_ms),
            retries: Some(self.retries),
            retry_initial_ms: Some(self.retry_initial_ms),
            retry_max_ms: Some(self.retry_max_ms),
            breaker_failures: Some(self.breaker_failures),
            breaker_window_ms: Some(self.breaker_window_ms),
            breaker_open_ms: Some(self.breaker_open_ms),
        }
    }

    fn check(&self) -> Result<(), String> {
        self.as_override().check("outbound")?;
        let mut seen = std::collections::BTreeMap::new();
        for (destination, policy) in &self.destinations {
            let prefix = format!("outbound.destinations.\"{destination}\"");
            check_destination(destination).map_err(|why| format!("`{prefix}`: {why}"))?;
            if let Some(other) = seen.insert(destination.to_ascii_lowercase(), destination) {
                return Err(format!(
                    "`{prefix}` and `outbound.destinations.\"{other}\"` name the same destination (host names ignore case); keep one"
                ));
            }
            policy.check(&prefix)?;
            let initial = policy.retry_initial_ms.unwrap_or(self.retry_initial_ms);
            let max = policy.retry_max_ms.unwrap_or(self.retry_max_ms);
            if max < initial {
                return Err(format!(
                    "`{prefix}`: retry_max_ms ({max}) must be at least retry_initial_ms ({initial})"
                ));
            }
        }
        Ok(())
    }
}

impl DestinationPolicy {
    /// Refuses the values set here that cannot work, naming `prefix.KEY`.
    fn check(&self, prefix: &str) -> Result<(), String> {
        let positive = [
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("request_timeout_ms", self.request_timeout_ms),
            ("retry_initial_ms", self.retry_initial_ms),
            ("retry_max_ms", self.retry_max_ms),
            ("breaker_window_ms", self.breaker_window_ms),
            ("breaker_open_ms", self.breaker_open_ms),
        ];
        for (key, value) in positive {
            if value == Some(0) {
                return Err(format!("`{prefix}.{key}` must be greater than 0"));
            }
        }
        if let Some(retries) = self.retries.filter(|retries| *retries > MAX_OUTBOUND_RETRIES) {
            return Err(format!(
                "`{prefix}.retries` is {retries}, at most {MAX_OUTBOUND_RETRIES} (each retry adds load to a destination that is failing)"
            ));
        }
        if let Some(failures) = self
            .breaker_failures
            .filter(|failures| *failures > MAX_BREAKER_FAILURES)
        {
            return Err(format!(
                "`{prefix}.breaker_failures` is {failures}, at most {MAX_BREAKER_FAILURES} (0 turns the breaker off)"
            ));
        }
        if let (Some(initial), Some(max)) = (self.retry_initial_ms, self.retry_max_ms) {
            if max < initial {
                return Err(format!(
                    "`{prefix}.retry_max_ms` ({max}) must be at least `{prefix}.retry_initial_ms` ({initial})"
                ));
            }
        }
        Ok(())
    }
}

/// A destination key is `HOST` or `HOST:PORT` (IPv6 in brackets), without scheme or path.
fn check_destination(key: &str) -> Result<(), String> {
    const EXAMPLES: &str =
        "write a host or host:port, e.g. \"api.example.com\", \"api.example.com:8443\" or \"users.spin.internal\"";
    if key.is_empty() || key.contains("://") || key.contains(['/', '?', '#', '@', '*', ' ']) {
        return Err(format!(
            "not a destination: {EXAMPLES}, without scheme, path or wildcard"
        ));
    }
    let (host, port) = if let Some(rest) = key.strip_prefix('[') {
        match rest.split_once(']') {
            Some((ip, after)) if ip.parse::<std::net::Ipv6Addr>().is_ok() => (ip, after.strip_prefix(':')),
            _ => return Err(format!("not a bracketed IPv6 address: {EXAMPLES}")),
        }
    } else {
        match key.split_once(':') {
            Some((_, port)) if port.contains(':') => {
                return Err(format!(
                    "an IPv6 address goes in brackets, e.g. \"[::1]:8080\"; {EXAMPLES}"
                ))
            }
            Some((host, port)) => (host, Some(port)),
            None => (key, None),
        }
    };
    if host.is_empty() {
        return Err(format!("the host is empty: {EXAMPLES}"));
    }
    if let Some(port) = port {
        if port.parse::<u16>().map_or(true, |port| port == 0) {
            return Err(format!("`{port}` is not a port (1 to 65535)"));
        }
    }
    Ok(())
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
    /// How long a client may take to send a request's head (request line and headers); a
    /// client still sending after that (a slow or stalled client) has its connection closed.
    pub header_read_timeout_ms: u64,
    /// Requests one component may be serving at once (from clients and in-process calls
    /// alike); 503 beyond. Unset: three quarters of `limits.max_concurrent_instances`, so that
    /// one component flooded with slow requests never takes every instance from the others.
    pub max_in_flight_per_component: Option<u32>,
    /// Client connections open at once; beyond, the listener accepts no more until one closes
    /// (new clients wait in the kernel's backlog), so a flood of idle connections cannot use up
    /// the host's file descriptors.
    pub max_connections: usize,
}

impl Default for HttpSettings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 3000)),
            header_read_timeout_ms: 30_000,
            max_in_flight_per_component: None,
            max_connections: 10_000,
        }
    }
}

impl HttpSettings {
    pub fn header_read_timeout(&self) -> Duration {
        Duration::from_millis(self.header_read_timeout_ms)
    }

    /// `max_in_flight_per_component`, or its default for a pool of `instances`.
    pub fn in_flight_per_component(&self, instances: u32) -> u32 {
        self.max_in_flight_per_component
            .unwrap_or(instances - instances / 4)
            .max(1)
    }

    fn check(&self) -> Result<(), String> {
        if self.header_read_timeout_ms == 0 {
            return Err("`http.header_read_timeout_ms` must be greater than 0".into());
        }
        if self.max_in_flight_per_component == Some(0) {
            return Err("`http.max_in_flight_per_component` must be greater than 0".into());
        }
        if self.max_connections == 0 {
            return Err("`http.max_connections` must be greater than 0".into());
        }
        Ok(())
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
    /// Memory of a finished instance's slot kept resident for the next instance, reset by
    /// rewriting only the pages it dirtied instead of returning them to the kernel (whose
    /// page-table flushes across cores cost more than the request itself). 0: return it all.
    pub instance_keep_resident_kb: u64,
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
            instance_keep_resident_kb: 1024,
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
    pub fn instance_keep_resident_bytes(&self) -> usize {
        usize::try_from(self.instance_keep_resident_kb.saturating_mul(1024))
            .unwrap_or(usize::MAX)
            .min(self.instance_memory_bytes() as usize)
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
        self.http.check()?;
        self.limits.check()?;
        self.messaging.check()?;
        self.cluster.check()?;
        self.outbound.check()
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
    fn outbound_settings_have_defaults_and_overrides() {
        let settings: Settings = toml::from_str(
            "[outbound]\nretries = 1\n\
             [outbound.destinations.\"users.spin.internal\"]\nbreaker_failures = 0\n\
             [outbound.destinations.\"api.example.com:8443\"]\nrequest_timeout_ms = 200\n",
        )
        .unwrap();
        settings.check().unwrap();
        assert_eq!(settings.outbound.connect_timeout_ms, 5_000);
        assert_eq!(settings.outbound.retries, 1);
        assert_eq!(
            settings.outbound.destinations["api.example.com:8443"].request_timeout_ms,
            Some(200)
        );
        Settings::default().check().unwrap();
    }

    #[test]
    fn outbound_settings_errors_name_the_key() {
        let refused = |text: &str| {
            let settings: Settings = toml::from_str(text).unwrap_or_else(|err| panic!("{text}: {err}"));
            settings.check().expect_err(text)
        };
        let err = refused("[outbound]\nrequest_timeout_ms = 0\n");
        assert!(
            err.contains("`outbound.request_timeout_ms` must be greater than 0"),
            "{err}"
        );
        let err = refused("[outbound]\nretries = 50\n");
        assert!(err.contains("`outbound.retries`"), "{err}");
        let err = refused("[outbound]\nretry_initial_ms = 500\nretry_max_ms = 100\n");
        assert!(err.contains("`outbound.retry_max_ms` (100)"), "{err}");
        let err = refused("[outbound.destinations.\"api.example.com\"]\nbreaker_open_ms = 0\n");
        assert!(
            err.contains("`outbound.destinations.\"api.example.com\".breaker_open_ms` must be greater than 0"),
            "{err}"
        );
        let err = refused("[outbound.destinations.\"api.example.com\"]\nretry_max_ms = 10\n");
        assert!(
            err.contains("`outbound.destinations.\"api.example.com\"`: retry_max_ms (10)"),
            "{err}"
        );
        let err = refused("[outbound.destinations.\"https://api.example.com/v1\"]\nretries = 1\n");
        assert!(
            err.contains("`outbound.destinations.\"https://api.example.com/v1\"`"),
            "{err}"
        );
        let err = refused("[outbound.destinations.\"api.example.com:http\"]\n");
        assert!(err.contains("is not a port"), "{err}");
        let err = refused("[outbound.destinations.\"API.example.com\"]\n[outbound.destinations.\"api.example.com\"]\n");
        assert!(err.contains("name the same destination"), "{err}");
        for good in ["[::1]:8080", "[::1]", "10.0.0.1:80", "self", "users.spin.internal"] {
            assert_eq!(check_destination(good), Ok(()), "{good}");
        }
        assert!(check_destination("::1").is_err());
        // A key the policy does not have is named by serde.
        let err = toml::from_str::<Settings>("[outbound.destinations.\"x\"]\ntimeout = 1\n").unwrap_err();
        assert!(err.to_string().contains("timeout"), "{err}");
    }

    #[test]
    fn zero_limit_is_refused() {
        let settings: Settings = toml::from_str("[limits]\nrequest_timeout_ms = 0\n").unwrap();
        let err = settings.limits.check().unwrap_err();
        assert!(err.contains("limits.request_timeout_ms"), "{err}");
    }

    #[test]
    fn http_settings_are_checked_and_resolved() {
        let defaults = Settings::default();
        assert_eq!(defaults.http.header_read_timeout(), Duration::from_secs(30));
        assert_eq!(defaults.http.in_flight_per_component(1000), 750);
        assert_eq!(defaults.http.in_flight_per_component(1), 1);
        let set: Settings =
            toml::from_str("[http]\nheader_read_timeout_ms = 500\nmax_in_flight_per_component = 8\n").unwrap();
        set.check().unwrap();
        assert_eq!(set.http.header_read_timeout(), Duration::from_millis(500));
        assert_eq!(set.http.in_flight_per_component(1000), 8);
        for (text, key) in [
            ("[http]\nheader_read_timeout_ms = 0\n", "http.header_read_timeout_ms"),
            (
                "[http]\nmax_in_flight_per_component = 0\n",
                "http.max_in_flight_per_component",
            ),
        ] {
            let settings: Settings = toml::from_str(text).unwrap();
            let err = settings.check().unwrap_err();
            assert!(err.contains(key), "{err}");
        }
    }
}
