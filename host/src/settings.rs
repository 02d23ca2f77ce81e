//! `mosaic.toml`: Mosaic-only host settings (listeners, limits, admin). Spin's manifest never
//! carries these keys, so the same `spin.toml` stays valid for `spin up`.
//!
//! The host-level sections live here; a capability's own section lives in its folder
//! (`capability::messaging::settings`, `capability::http_outbound::settings`) and is composed
//! into [`Settings`] here, so that the capabilities never depend on this module.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

// Re-exported because the tests crate names these sections as `mosaic::settings::*`.
pub use crate::capability::http_outbound::settings::OutboundSettings;
pub use crate::capability::messaging::settings::{BrokerKind, MessagingSettings};
pub use crate::observe::TelemetrySettings;

/// Everything `mosaic.toml` can set. Every field has a documented default (README "Limits").
#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct Settings {
    pub http: HttpSettings,
    pub admin: AdminSettings,
    pub limits: Limits,
    /// Per component: where its `migrations/<component>/` go when that is not its SQLite
    /// database, e.g. `[migrations.users] postgres = "host=127.0.0.1 user=postgres dbname=users"`
    /// or `[migrations.users] mysql = "mysql://root@127.0.0.1:3306/users"`.
    pub migrations: std::collections::BTreeMap<String, MigrationTarget>,
    pub messaging: MessagingSettings,
    /// The policy of outbound HTTP requests: timeouts, retries, circuit breaker.
    pub outbound: OutboundSettings,
    /// Several hosts serving one application, coordinated through PostgreSQL.
    pub cluster: ClusterSettings,
    /// Per component, instance reuse other than `[limits]`' (WASI 0.3) or at all (WASI 0.2,
    /// where a fresh instance per request is the default): `[instance_reuse.hello]
    /// max_instance_reuse_count = 128`.
    pub instance_reuse: std::collections::BTreeMap<String, InstanceReuse>,
    /// Per component, the deploy probe it opts into: `[probe.gateway] path = "/health"`.
    /// Without one a new version is instantiated and nothing of it is called, as Spin never
    /// calls a handler without a request.
    pub probe: std::collections::BTreeMap<String, ProbeSettings>,
    /// OTLP export of the host's spans (over the standard `OTEL_*` environment variables).
    pub telemetry: TelemetrySettings,
}

/// `[probe.NAME]`: before a new version of NAME takes traffic, it must answer `GET path` with
/// a passing status within the timeout.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ProbeSettings {
    /// The path (and query) requested, as a client of the component's route sends it
    /// (`/hello/health` for a component at `/hello/...`).
    pub path: String,
    /// Default: `limits.probe_timeout_ms`.
    #[serde(default)]
    pub timeout_ms: Option<u64>,
    /// The statuses that pass: numbers (`204`) and ranges (`"200-299"`). Default: 200-299.
    #[serde(default = "ProbeSettings::default_statuses")]
    pub statuses: Vec<StatusSet>,
}

/// One entry of `statuses`: a status or an inclusive range of them.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(untagged)]
pub enum StatusSet {
    One(u16),
    Range(String),
}

impl ProbeSettings {
    fn default_statuses() -> Vec<StatusSet> {
        vec![StatusSet::Range("200-299".into())]
    }

    /// A probe of `path` with the default timeout and statuses.
    pub fn path(path: &str) -> Self {
        Self {
            path: path.to_string(),
            timeout_ms: None,
            statuses: Self::default_statuses(),
        }
    }

    pub fn timeout(&self, limits: &Limits) -> Duration {
        Duration::from_millis(self.timeout_ms.unwrap_or(limits.probe_timeout_ms))
    }

    /// Whether an answer with `status` passes.
    pub fn passes(&self, status: u16) -> bool {
        self.statuses.iter().any(|set| match set {
            StatusSet::One(one) => *one == status,
            StatusSet::Range(range) => {
                parse_status_range(range).is_ok_and(|(low, high)| (low..=high).contains(&status))
            }
        })
    }

    fn check(&self, component: &str) -> Result<(), String> {
        if !self.path.starts_with('/') || self.path.parse::<http::uri::PathAndQuery>().is_err() {
            return Err(format!(
                "`probe.{component}.path` must be a request path starting with `/`, e.g. \"/health\"; it is {:?}",
                self.path
            ));
        }
        if self.timeout_ms == Some(0) {
            return Err(format!("`probe.{component}.timeout_ms` must be greater than 0"));
        }
        if self.statuses.is_empty() {
            return Err(format!(
                "`probe.{component}.statuses` is empty: no answer could pass; leave it out for 200-299"
            ));
        }
        for set in &self.statuses {
            let valid = match set {
                StatusSet::One(one) => (100..=599).contains(one),
                StatusSet::Range(range) => parse_status_range(range).is_ok(),
            };
            if !valid {
                let shown = match set {
                    StatusSet::One(one) => one.to_string(),
                    StatusSet::Range(range) => format!("{range:?}"),
                };
                return Err(format!(
                    "`probe.{component}.statuses`: {shown} is neither an HTTP status (100-599) nor a range such as \"200-299\""
                ));
            }
        }
        Ok(())
    }
}

/// `"200-299"` (or `"204"`) as an inclusive range of statuses within 100-599.
fn parse_status_range(range: &str) -> Result<(u16, u16), ()> {
    let (low, high) = range.split_once('-').unwrap_or((range, range));
    let low: u16 = low.trim().parse().map_err(|_| ())?;
    let high: u16 = high.trim().parse().map_err(|_| ())?;
    if (100..=599).contains(&low) && (low..=599).contains(&high) {
        Ok((low, high))
    } else {
        Err(())
    }
}

/// `[instance_reuse.NAME]`: the reuse of one component's instances. Unset keys take
/// `[limits]`' values.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct InstanceReuse {
    pub max_instance_reuse_count: Option<u32>,
    /// A WASI 0.2 handler serves one request at a time whatever this says.
    pub max_instance_concurrent_reuse_count: Option<u32>,
    pub idle_instance_timeout_ms: Option<u64>,
}

/// How one component's instances are reused, resolved from `[limits]` and
/// `[instance_reuse.NAME]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReusePolicy {
    pub max_requests: u32,
    pub max_concurrent: u32,
    pub idle: Duration,
}

impl ReusePolicy {
    /// An instance for one request.
    pub const SINGLE_USE: ReusePolicy = ReusePolicy {
        max_requests: 1,
        max_concurrent: 1,
        idle: Duration::ZERO,
    };
}

impl Settings {
    /// The reuse of `component`'s instances, or `None` for a fresh instance per request.
    /// `wasi_0_3`: whether it is a WASI 0.3 component (reused unless told otherwise).
    pub fn reuse_policy(&self, component: &str, wasi_0_3: bool) -> Option<ReusePolicy> {
        let limits = &self.limits;
        let chosen = self.instance_reuse.get(component);
        if chosen.is_none() && !wasi_0_3 {
            return None;
        }
        let chosen = chosen.cloned().unwrap_or_default();
        let max_requests = chosen
            .max_instance_reuse_count
            .unwrap_or(limits.max_instance_reuse_count);
        let max_concurrent = if wasi_0_3 {
            chosen
                .max_instance_concurrent_reuse_count
                .unwrap_or(limits.max_instance_concurrent_reuse_count)
        } else {
            1
        };
        if max_requests <= 1 && max_concurrent <= 1 {
            return None;
        }
        Some(ReusePolicy {
            max_requests,
            max_concurrent,
            idle: Duration::from_millis(
                chosen
                    .idle_instance_timeout_ms
                    .unwrap_or(limits.idle_instance_timeout_ms),
            ),
        })
    }
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

/// The database a component's migrations go to: exactly one of `postgres = "..."` (a
/// PostgreSQL address, URL or key-value form) and `mysql = "mysql://USER:PASSWORD@HOST:PORT/DB"`.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MigrationTarget {
    Postgres(String),
    Mysql(String),
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
    /// How long a new version may take to instantiate, and a `[probe.NAME]` to be answered
    /// (unless it sets its own `timeout_ms`).
    pub probe_timeout_ms: u64,
    /// Memory of a finished instance's slot kept resident for the next instance, reset by
    /// rewriting only the pages it dirtied instead of returning them to the kernel (whose
    /// page-table flushes across cores cost more than the request itself). 0: return it all.
    pub instance_keep_resident_kb: u64,
    /// Instance reuse of WASI 0.3 components (as Spin 4 and `wasmtime serve`): the most
    /// requests one instance serves in all before it retires; 1 turns reuse off.
    pub max_instance_reuse_count: u32,
    /// The most requests one WASI 0.3 instance serves at once.
    pub max_instance_concurrent_reuse_count: u32,
    /// How long an idle reusable instance waits for another request before it retires.
    pub idle_instance_timeout_ms: u64,
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
            // Spin 4's defaults.
            max_instance_reuse_count: 128,
            max_instance_concurrent_reuse_count: 16,
            idle_instance_timeout_ms: 1000,
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
    pub fn idle_instance_timeout(&self) -> Duration {
        Duration::from_millis(self.idle_instance_timeout_ms)
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
        for (component, reuse) in &self.instance_reuse {
            let zero = [
                ("max_instance_reuse_count", reuse.max_instance_reuse_count),
                (
                    "max_instance_concurrent_reuse_count",
                    reuse.max_instance_concurrent_reuse_count,
                ),
            ];
            if let Some((key, _)) = zero.iter().find(|(_, value)| *value == Some(0)) {
                return Err(format!("`instance_reuse.{component}.{key}` must be greater than 0"));
            }
        }
        for (component, probe) in &self.probe {
            probe.check(component)?;
        }
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
            (
                "limits.max_instance_reuse_count",
                u64::from(self.max_instance_reuse_count),
            ),
            (
                "limits.max_instance_concurrent_reuse_count",
                u64::from(self.max_instance_concurrent_reuse_count),
            ),
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
    fn wasi_0_3_components_are_reused_and_wasi_0_2_ones_only_when_asked() {
        let settings: Settings = toml::from_str(
            "[limits]\nidle_instance_timeout_ms = 500\n\
             [instance_reuse.legacy]\nmax_instance_reuse_count = 64\nmax_instance_concurrent_reuse_count = 8\n\
             [instance_reuse.single]\nmax_instance_reuse_count = 1\nmax_instance_concurrent_reuse_count = 1\n",
        )
        .unwrap();
        settings.check().unwrap();
        let spin4 = ReusePolicy {
            max_requests: 128,
            max_concurrent: 16,
            idle: Duration::from_millis(500),
        };
        assert_eq!(settings.reuse_policy("new", true), Some(spin4));
        assert_eq!(
            settings.reuse_policy("new", false),
            None,
            "WASI 0.2: a fresh instance per request"
        );
        assert_eq!(
            settings.reuse_policy("legacy", false),
            Some(ReusePolicy {
                max_requests: 64,
                max_concurrent: 1,
                idle: Duration::from_millis(500)
            }),
            "a WASI 0.2 handler serves one request at a time"
        );
        assert_eq!(settings.reuse_policy("single", true), None, "reuse turned off");
        let zero: Settings = toml::from_str("[instance_reuse.x]\nmax_instance_reuse_count = 0\n").unwrap();
        assert!(zero
            .check()
            .unwrap_err()
            .contains("instance_reuse.x.max_instance_reuse_count"));
    }

    #[test]
    fn probes_are_opt_in_and_their_statuses_are_read_and_checked() {
        assert!(Settings::default().probe.is_empty());
        let settings: Settings = toml::from_str(
            "[probe.gateway]\npath = \"/health\"\n\
             [probe.users]\npath = \"/ready?deep=1\"\ntimeout_ms = 500\nstatuses = [204, \"300-399\"]\n",
        )
        .unwrap();
        settings.check().unwrap();
        let gateway = &settings.probe["gateway"];
        assert_eq!(gateway, &ProbeSettings::path("/health"));
        assert!(gateway.passes(200) && gateway.passes(299) && !gateway.passes(404) && !gateway.passes(503));
        assert_eq!(gateway.timeout(&settings.limits), settings.limits.probe_timeout());
        let users = &settings.probe["users"];
        assert!(users.passes(204) && users.passes(302) && !users.passes(200));
        assert_eq!(users.timeout(&settings.limits), Duration::from_millis(500));

        let refused = [
            ("path = \"health\"", "probe.x.path"),
            ("path = \"/h\"\ntimeout_ms = 0", "probe.x.timeout_ms"),
            ("path = \"/h\"\nstatuses = []", "is empty"),
            ("path = \"/h\"\nstatuses = [700]", "700 is neither"),
            ("path = \"/h\"\nstatuses = [\"300-200\"]", "\"300-200\" is neither"),
            ("path = \"/h\"\nstatuses = [\"2xx\"]", "\"2xx\" is neither"),
        ];
        for (section, expected) in refused {
            let settings: Settings = toml::from_str(&format!("[probe.x]\n{section}\n")).unwrap();
            let err = settings.check().unwrap_err();
            assert!(err.contains(expected), "{section}: {err}");
        }
        let err = toml::from_str::<Settings>("[probe.x]\npath = \"/h\"\nstatus = 200\n").unwrap_err();
        assert!(err.to_string().contains("status"), "{err}");
    }

    #[test]
    fn a_migration_target_is_exactly_one_database() {
        let settings: Settings =
            toml::from_str("[migrations.a]\npostgres = \"host=db\"\n[migrations.b]\nmysql = \"mysql://root@db/b\"\n")
                .unwrap();
        assert_eq!(settings.migrations["a"], MigrationTarget::Postgres("host=db".into()));
        assert_eq!(
            settings.migrations["b"],
            MigrationTarget::Mysql("mysql://root@db/b".into())
        );
        assert!(toml::from_str::<Settings>("[migrations.a]\npostgres = \"x\"\nmysql = \"y\"\n").is_err());
        assert!(toml::from_str::<Settings>("[migrations.a]\n").is_err());
        assert!(toml::from_str::<Settings>("[migrations.a]\nsqlserver = \"x\"\n").is_err());
    }

    #[test]
    fn unknown_key_is_named() {
        let err = toml::from_str::<Settings>("[limits]\nrequest_timeout = 5\n").unwrap_err();
        assert!(err.to_string().contains("request_timeout"), "{err}");
    }

    #[test]
    fn capability_sections_are_read_and_checked_with_the_rest() {
        let settings: Settings = toml::from_str(
            "[messaging]\nbroker = \"nats\"\nurl = \"nats://127.0.0.1:4222\"\n\
             [outbound.destinations.\"users.spin.internal\"]\nretries = 1\n",
        )
        .unwrap();
        settings.check().unwrap();
        assert_eq!(settings.messaging.broker, BrokerKind::Nats);
        assert_eq!(settings.outbound.destinations["users.spin.internal"].retries, Some(1));
        for (text, key) in [
            ("[messaging]\nbroker = \"nats\"\n", "messaging.url"),
            ("[outbound]\nretries = 50\n", "outbound.retries"),
        ] {
            let settings: Settings = toml::from_str(text).unwrap();
            let err = settings.check().unwrap_err();
            assert!(err.contains(key), "{err}");
        }
        let err = toml::from_str::<Settings>("[messaging]\nbrokers = \"nats\"\n").unwrap_err();
        assert!(err.to_string().contains("brokers"), "{err}");
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
