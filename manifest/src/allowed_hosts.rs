//! `allowed_outbound_hosts` with Spin's syntax: `SCHEME://HOST[:PORT]`, where the scheme may be
//! `*`, the host `*` or `*.suffix`, and the port `*`, a number or a range `A..B`. Without a port
//! the scheme's well-known port applies. `self` and `*.spin.internal` name in-process targets.

use std::fmt;

#[derive(Debug, Clone, Default)]
pub struct AllowedHosts {
    patterns: Vec<HostPattern>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct HostPattern {
    raw: String,
    scheme: Option<String>,
    host: HostMatch,
    ports: PortMatch,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum HostMatch {
    Any,
    Exact(String),
    /// `*.example.com`: any subdomain, not the bare domain itself.
    Subdomain(String),
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum PortMatch {
    Any,
    Range(u16, u16),
    /// No port written: the scheme's default port.
    SchemeDefault,
}

pub fn default_port(scheme: &str) -> Option<u16> {
    Some(match scheme {
        "http" => 80,
        "https" => 443,
        "postgres" => 5432,
        "mysql" => 3306,
        "redis" => 6379,
        "mqtt" => 1883,
        "amqp" => 5672,
        "nats" => 4222,
        _ => return None,
    })
}

impl AllowedHosts {
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        let patterns = entries
            .iter()
            .map(|entry| HostPattern::parse(entry))
            .collect::<Result<_, _>>()?;
        Ok(Self { patterns })
    }

    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Whether a request to `scheme://host:port` is granted. `port` is the explicit port of
    /// the URL, if any; `host` may be an IPv6 literal in brackets, as `http::Uri::host` gives
    /// it (`[::1]`).
    pub fn allows(&self, scheme: &str, host: &str, port: Option<u16>) -> bool {
        let host = host
            .strip_prefix('[')
            .and_then(|inner| inner.strip_suffix(']'))
            .unwrap_or(host);
        let host = host.trim_end_matches('.').to_ascii_lowercase();
        let port = port.or_else(|| default_port(scheme));
        self.patterns.iter().any(|pattern| pattern.allows(scheme, &host, port))
    }
}

impl HostPattern {
    fn parse(entry: &str) -> Result<Self, String> {
        if entry.contains("{{") {
            return Err(format!(
                "\"{entry}\": variable templates in allowed hosts are not supported yet; write the host out"
            ));
        }
        let Some((scheme, rest)) = entry.split_once("://") else {
            return Err(format!(
                "\"{entry}\" needs a scheme, e.g. \"https://{entry}\" (or \"*://{entry}\" for any)"
            ));
        };
        if scheme.is_empty()
            || !(scheme == "*"
                || scheme
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '+' || c == '-'))
        {
            return Err(format!("\"{entry}\": `{scheme}` is not a URL scheme"));
        }
        let rest = rest.trim_end_matches('/');
        if rest.contains('/') || rest.contains('?') {
            return Err(format!(
                "\"{entry}\": an allowed host has no path; write only SCHEME://HOST[:PORT]"
            ));
        }
        let (host, port) = split_host_port(rest);
        if host.is_empty() {
            return Err(format!("\"{entry}\" has no host; use `*` for any host"));
        }
        let host = host.to_ascii_lowercase();
        // A final dot (`example.com.`, fully qualified) names the same host; the destination
        // loses it too (see `AllowedHosts::allows`).
        let host_match = if host == "*" {
            HostMatch::Any
        } else if let Some(suffix) = host.strip_prefix("*.") {
            if suffix.contains('*') {
                return Err(format!(
                    "\"{entry}\": `*` may only stand for the whole host or its first label"
                ));
            }
            let suffix = suffix.trim_end_matches('.');
            if suffix.is_empty() {
                return Err(format!(
                    "\"{entry}\": `*.` needs a domain after it, e.g. `*.example.com`; use `*` for any host"
                ));
            }
            HostMatch::Subdomain(suffix.to_string())
        } else if host.contains('*') {
            return Err(format!(
                "\"{entry}\": `*` may only stand for the whole host or its first label"
            ));
        } else {
            let host = host.trim_end_matches('.');
            if host.is_empty() {
                return Err(format!("\"{entry}\" has no host; use `*` for any host"));
            }
            HostMatch::Exact(host.to_string())
        };
        let ports = match port {
            None => {
                if scheme != "*" && default_port(scheme).is_none() {
                    return Err(format!(
                        "\"{entry}\": scheme `{scheme}` has no default port; add one, e.g. \"{entry}:8080\""
                    ));
                }
                PortMatch::SchemeDefault
            }
            Some("*") => PortMatch::Any,
            Some(port) => {
                let parse = |text: &str| {
                    text.parse::<u16>()
                        .map_err(|_| format!("\"{entry}\": `{port}` is not a port, a range `A..B` or `*`"))
                };
                match port.split_once("..") {
                    Some((low, high)) => {
                        let (low, high) = (parse(low)?, parse(high)?);
                        if low > high {
                            return Err(format!("\"{entry}\": the port range {port} is empty"));
                        }
                        PortMatch::Range(low, high)
                    }
                    None => {
                        let single = parse(port)?;
                        PortMatch::Range(single, single)
                    }
                }
            }
        };
        let scheme = (scheme != "*").then(|| scheme.to_ascii_lowercase());
        Ok(Self {
            raw: entry.to_string(),
            scheme,
            host: host_match,
            ports,
        })
    }

    fn allows(&self, scheme: &str, host: &str, port: Option<u16>) -> bool {
        if self.scheme.as_deref().is_some_and(|own| own != scheme) {
            return false;
        }
        let host_ok = match &self.host {
            HostMatch::Any => true,
            HostMatch::Exact(exact) => exact == host,
            HostMatch::Subdomain(suffix) => host
                .strip_suffix(suffix.as_str())
                .is_some_and(|label| label.len() > 1 && label.ends_with('.')),
        };
        let port_ok = match self.ports {
            PortMatch::Any => true,
            PortMatch::Range(low, high) => port.is_some_and(|p| (low..=high).contains(&p)),
            PortMatch::SchemeDefault => port.is_some() && port == default_port(scheme),
        };
        host_ok && port_ok
    }
}

fn split_host_port(authority: &str) -> (&str, Option<&str>) {
    if let Some(rest) = authority.strip_prefix('[') {
        // An IPv6 literal: [::1]:8080
        if let Some((host, after)) = rest.split_once(']') {
            return (host, after.strip_prefix(':'));
        }
    }
    match authority.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    }
}

impl fmt::Display for AllowedHosts {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list: Vec<&str> = self.patterns.iter().map(|p| p.raw.as_str()).collect();
        write!(f, "[{}]", list.join(", "))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hosts(entries: &[&str]) -> AllowedHosts {
        AllowedHosts::parse(&entries.iter().map(|s| s.to_string()).collect::<Vec<_>>()).unwrap()
    }

    #[test]
    fn exact_host_with_default_port() {
        let allowed = hosts(&["https://api.example.com"]);
        assert!(allowed.allows("https", "api.example.com", None));
        assert!(allowed.allows("https", "API.example.com", Some(443)));
        assert!(!allowed.allows("https", "api.example.com", Some(8443)));
        assert!(!allowed.allows("http", "api.example.com", None));
        assert!(!allowed.allows("https", "evil.com", None));
    }

    #[test]
    fn wildcards() {
        let allowed = hosts(&["http://*.spin.internal", "*://localhost:*", "https://*:8000..8010"]);
        assert!(allowed.allows("http", "users.spin.internal", None));
        assert!(!allowed.allows("http", "spin.internal", None));
        assert!(!allowed.allows("http", "users.spin.internal.evil.com", None));
        assert!(allowed.allows("http", "localhost", Some(1234)));
        assert!(allowed.allows("https", "localhost", None));
        assert!(allowed.allows("https", "anything.com", Some(8005)));
        assert!(!allowed.allows("https", "anything.com", Some(8011)));
    }

    #[test]
    fn bad_entries_are_explained() {
        let err = |e: &str| AllowedHosts::parse(&[e.to_string()]).unwrap_err();
        assert!(err("example.com").contains("needs a scheme"));
        assert!(err("https://example.com/path").contains("no path"));
        assert!(err("https://ex*mple.com").contains("`*` may only"));
        assert!(err("https://example.com:99999").contains("not a port"));
        assert!(err("foo://example.com").contains("no default port"));
        assert!(err("https://{{ host }}").contains("templates"));
    }

    #[test]
    fn a_final_dot_names_the_same_host() {
        // Found by fuzzing: `https://example.com.` never matched, as destinations lose their
        // final dot and the grant kept it.
        let allowed = hosts(&["https://example.com.", "https://*.example.org.:8443"]);
        assert!(allowed.allows("https", "example.com", None));
        assert!(allowed.allows("https", "example.com.", None));
        assert!(allowed.allows("https", "api.example.org", Some(8443)));
        assert!(!allowed.allows("https", "example.org", Some(8443)));
        let err = |e: &str| AllowedHosts::parse(&[e.to_string()]).unwrap_err();
        assert!(err("https://.").contains("no host"), "{}", err("https://."));
        assert!(err("https://*.").contains("needs a domain"), "{}", err("https://*."));
    }

    #[test]
    fn ipv6_literals_match_with_or_without_brackets() {
        // `http::Uri::host` keeps the brackets of `http://[::1]:8080/`; the grant loses them.
        let allowed = hosts(&["http://[::1]:8080"]);
        assert!(allowed.allows("http", "[::1]", Some(8080)));
        assert!(allowed.allows("http", "::1", Some(8080)));
        assert!(!allowed.allows("http", "[::1]", Some(8081)));
    }

    #[test]
    fn empty_allows_nothing() {
        assert!(!AllowedHosts::default().allows("https", "example.com", None));
    }
}
