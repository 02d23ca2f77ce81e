//! `[outbound]` in mosaic.toml: timeouts, retries and circuit breaker of outbound HTTP, with
//! overrides per destination (applied by [`super::policy`]). `settings::Settings` holds it as its
//! `outbound` section and calls its check.

use serde::Deserialize;

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

    pub(crate) fn check(&self) -> Result<(), String> {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn outbound_settings_have_defaults_and_overrides() {
        let settings: OutboundSettings = toml::from_str(
            "retries = 1\n\
             [destinations.\"users.spin.internal\"]\nbreaker_failures = 0\n\
             [destinations.\"api.example.com:8443\"]\nrequest_timeout_ms = 200\n",
        )
        .unwrap();
        settings.check().unwrap();
        assert_eq!(settings.connect_timeout_ms, 5_000);
        assert_eq!(settings.retries, 1);
        assert_eq!(
            settings.destinations["api.example.com:8443"].request_timeout_ms,
            Some(200)
        );
        OutboundSettings::default().check().unwrap();
    }

    #[test]
    fn outbound_settings_errors_name_the_key() {
        let refused = |text: &str| {
            let settings: OutboundSettings = toml::from_str(text).unwrap_or_else(|err| panic!("{text}: {err}"));
            settings.check().expect_err(text)
        };
        let err = refused("request_timeout_ms = 0\n");
        assert!(
            err.contains("`outbound.request_timeout_ms` must be greater than 0"),
            "{err}"
        );
        let err = refused("retries = 50\n");
        assert!(err.contains("`outbound.retries`"), "{err}");
        let err = refused("retry_initial_ms = 500\nretry_max_ms = 100\n");
        assert!(err.contains("`outbound.retry_max_ms` (100)"), "{err}");
        let err = refused("[destinations.\"api.example.com\"]\nbreaker_open_ms = 0\n");
        assert!(
            err.contains("`outbound.destinations.\"api.example.com\".breaker_open_ms` must be greater than 0"),
            "{err}"
        );
        let err = refused("[destinations.\"api.example.com\"]\nretry_max_ms = 10\n");
        assert!(
            err.contains("`outbound.destinations.\"api.example.com\"`: retry_max_ms (10)"),
            "{err}"
        );
        let err = refused("[destinations.\"https://api.example.com/v1\"]\nretries = 1\n");
        assert!(
            err.contains("`outbound.destinations.\"https://api.example.com/v1\"`"),
            "{err}"
        );
        let err = refused("[destinations.\"api.example.com:http\"]\n");
        assert!(err.contains("is not a port"), "{err}");
        let err = refused("[destinations.\"API.example.com\"]\n[destinations.\"api.example.com\"]\n");
        assert!(err.contains("name the same destination"), "{err}");
        for good in ["[::1]:8080", "[::1]", "10.0.0.1:80", "self", "users.spin.internal"] {
            assert_eq!(check_destination(good), Ok(()), "{good}");
        }
        assert!(check_destination("::1").is_err());
        // A key the policy does not have is named by serde.
        let err = toml::from_str::<OutboundSettings>("[destinations.\"x\"]\ntimeout = 1\n").unwrap_err();
        assert!(err.to_string().contains("timeout"), "{err}");
    }
}
