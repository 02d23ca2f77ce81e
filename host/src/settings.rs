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
        settings.limits.check().map_err(|message| SettingsError::Invalid {
            path: path.to_owned(),
            message,
        })?;
        Ok(settings)
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
    fn zero_limit_is_refused() {
        let settings: Settings = toml::from_str("[limits]\nrequest_timeout_ms = 0\n").unwrap();
        let err = settings.limits.check().unwrap_err();
        assert!(err.contains("limits.request_timeout_ms"), "{err}");
    }
}
