//! `allowed_outbound_hosts` with Spin's syntax: `SCHEME://HOST[:PORT]`, where the scheme may be
//! `*`, the host `*`, `*.suffix` or a CIDR range (`10.0.0.0/8`), and the port `*`, a number or a
//! range `A..B`. Without a port the scheme's well-known port applies. `self` and
//! `*.spin.internal` name in-process targets. An entry may hold `{{ variable }}` templates over
//! the application's variables ([`AllowedHosts::parse_with`]); one that expands to nothing
//! (`""`, `"http://"`, `"https://"`) grants nothing, as in Spin (an optional endpoint).

use std::fmt;
use std::net::IpAddr;

use crate::template;

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
    /// `10.0.0.0/8`: any IP address of the range (never a name).
    Cidr(IpAddr, u8),
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

/// The value a `{{ name }}` of an entry expands to.
pub struct TemplateValue {
    pub value: String,
    /// A secret's value never appears in an error.
    pub secret: bool,
}

impl AllowedHosts {
    /// Entries without templates (a template is an error that says where its variables come
    /// from).
    pub fn parse(entries: &[String]) -> Result<Self, String> {
        Self::parse_with(entries, |name| {
            Err(format!(
                "`{{{{ {name} }}}}` needs the application's variables to expand"
            ))
        })
    }

    /// Entries whose `{{ name }}` templates expand with `variable(name)`.
    pub fn parse_with(
        entries: &[String],
        variable: impl Fn(&str) -> Result<TemplateValue, String>,
    ) -> Result<Self, String> {
        let mut patterns = Vec::with_capacity(entries.len());
        for entry in entries {
            if !template::is_template(entry) {
                patterns.push(HostPattern::parse(entry)?);
                continue;
            }
            let mut secret = false;
            let expanded = template::render(entry, |name| {
                let value = variable(name).map_err(|why| format!("\"{entry}\": {why}"))?;
                secret |= value.secret;
                Ok(value.value)
            })?;
            if matches!(expanded.trim(), "" | "http://" | "https://") {
                continue;
            }
            match HostPattern::parse(&expanded) {
                Ok(pattern) => patterns.push(HostPattern {
                    raw: entry.clone(),
                    ..pattern
                }),
                Err(_) if secret => {
                    return Err(format!(
                        "\"{entry}\" expands, with the values of its variables (secret, so not shown), \
                         to no valid SCHEME://HOST[:PORT]"
                    ))
                }
                Err(why) => return Err(format!("\"{entry}\" expands to {why}")),
            }
        }
        Ok(Self { patterns })
    }

    /// Whether some entry grants `scheme` at all (to some host and port).
    pub fn grants_scheme(&self, scheme: &str) -> bool {
        self.patterns
            .iter()
            .any(|pattern| pattern.scheme.as_deref().is_none_or(|own| own == scheme))
    }

    /// The host names (not addresses, not wildcards) granted for `scheme` on `port`: a socket
    /// connects to an address, which is granted when one of these names resolves to it.
    pub fn names_for(&self, scheme: &str, port: u16) -> Vec<&str> {
        self.patterns
            .iter()
            .filter(|pattern| pattern.scheme.as_deref().is_none_or(|own| own == scheme))
            .filter(|pattern| pattern.allows_port(scheme, Some(port)))
            .filter_map(|pattern| match &pattern.host {
                HostMatch::Exact(name) if name.parse::<IpAddr>().is_err() => Some(name.as_str()),
                _ => None,
            })
            .collect()
    }

    /// Checks an entry as far as it can be without the variables' values: a literal entry
    /// parses, a template names declared variables (`declared`).
    pub fn check_entry(entry: &str, declared: impl Fn(&str) -> bool) -> Result<(), String> {
        if !template::is_template(entry) {
            return HostPattern::parse(entry).map(drop);
        }
        for name in template::names(entry)? {
            if !declared(&name) {
                return Err(format!(
                    "\"{entry}\" refers to `{{{{ {name} }}}}`, which `[variables]` does not declare"
                ));
            }
        }
        Ok(())
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
        if let Some((network, prefix, port)) = split_cidr(rest) {
            return Ok(Self {
                raw: entry.to_string(),
                scheme: (scheme != "*").then(|| scheme.to_ascii_lowercase()),
                host: HostMatch::Cidr(network, prefix),
                ports: parse_ports(entry, scheme, port)?,
            });
        }
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
        let ports = parse_ports(entry, scheme, port)?;
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
            HostMatch::Cidr(network, prefix) => host
                .parse::<IpAddr>()
                .is_ok_and(|address| in_cidr(*network, *prefix, address)),
        };
        host_ok && self.allows_port(scheme, port)
    }

    fn allows_port(&self, scheme: &str, port: Option<u16>) -> bool {
        match self.ports {
            PortMatch::Any => true,
            PortMatch::Range(low, high) => port.is_some_and(|p| (low..=high).contains(&p)),
            PortMatch::SchemeDefault => port.is_some() && port == default_port(scheme),
        }
    }
}

/// The port part of `entry` (`None`: not written).
fn parse_ports(entry: &str, scheme: &str, port: Option<&str>) -> Result<PortMatch, String> {
    Ok(match port {
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
    })
}

/// `10.0.0.0/8`, `127.0.0.1/32:8080`, `fd00::/8:*`: a CIDR range and the port written after it.
/// Host bits set in the address are ignored, as Spin does (`10.1.2.3/8` is `10.0.0.0/8`).
fn split_cidr(rest: &str) -> Option<(IpAddr, u8, Option<&str>)> {
    let cidr = |text: &str| -> Option<(IpAddr, u8)> {
        let (address, prefix) = text.split_once('/')?;
        let address: IpAddr = address.trim_start_matches('[').trim_end_matches(']').parse().ok()?;
        let prefix: u8 = prefix.parse().ok()?;
        let bits = if address.is_ipv4() { 32 } else { 128 };
        (prefix <= bits).then_some((address, prefix))
    };
    if let Some((network, prefix)) = cidr(rest) {
        return Some((network, prefix, None));
    }
    let (host, port) = rest.rsplit_once(':')?;
    cidr(host).map(|(network, prefix)| (network, prefix, Some(port)))
}

/// Whether `address` is in `network/prefix`.
fn in_cidr(network: IpAddr, prefix: u8, address: IpAddr) -> bool {
    let masked = |bits: u128, width: u32| {
        let prefix = u32::from(prefix);
        if prefix == 0 {
            0
        } else {
            bits >> (width - prefix)
        }
    };
    match (network, address) {
        (IpAddr::V4(network), IpAddr::V4(address)) => {
            masked(u128::from(u32::from(network)), 32) == masked(u128::from(u32::from(address)), 32)
        }
        (IpAddr::V6(network), IpAddr::V6(address)) => {
            masked(u128::from(network), 128) == masked(u128::from(address), 128)
        }
        // An IPv4 range holds the IPv4-mapped IPv6 form of its addresses too.
        (IpAddr::V4(_), IpAddr::V6(address)) => address
            .to_ipv4_mapped()
            .is_some_and(|address| in_cidr(network, prefix, IpAddr::V4(address))),
        (IpAddr::V6(_), IpAddr::V4(_)) => false,
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
        assert!(err("https://{{ host }}").contains("needs the application's variables"));
        assert!(err("tcp://10.0.0.0/8").contains("no default port"));
    }

    #[test]
    fn cidr_ranges_match_addresses_never_names() {
        let allowed = hosts(&[
            "*://127.0.0.0/24:8080",
            "tcp://10.1.2.3/8:*",
            "https://fd00::/8",
            "udp://192.168.1.7/32:53",
        ]);
        assert!(allowed.allows("http", "127.0.0.1", Some(8080)));
        assert!(allowed.allows("https", "127.0.0.255", Some(8080)));
        assert!(!allowed.allows("http", "127.0.1.1", Some(8080)));
        assert!(!allowed.allows("http", "127.0.0.1", Some(8081)));
        assert!(
            !allowed.allows("http", "localhost", Some(8080)),
            "a range holds addresses, not names"
        );
        assert!(
            allowed.allows("tcp", "10.200.0.9", Some(1)),
            "host bits of the range are ignored"
        );
        assert!(!allowed.allows("udp", "10.200.0.9", Some(1)));
        assert!(allowed.allows("https", "[fd12::1]", None));
        assert!(!allowed.allows("https", "fe80::1", None));
        assert!(allowed.allows("udp", "192.168.1.7", Some(53)) && !allowed.allows("udp", "192.168.1.8", Some(53)));
        assert!(
            allowed.allows("http", "::ffff:127.0.0.9", Some(8080)),
            "the IPv4-mapped form"
        );
        assert!(
            allowed.grants_scheme("tcp")
                && allowed.grants_scheme("http")
                && !hosts(&["https://x.com"]).grants_scheme("tcp")
        );
        let named = hosts(&[
            "tcp://db.internal:5432",
            "tcp://127.0.0.1:5432",
            "*://cache:*",
            "udp://dns:53",
        ]);
        assert_eq!(named.names_for("tcp", 5432), ["db.internal", "cache"]);
        assert_eq!(named.names_for("udp", 53), ["cache", "dns"]);
        let all = hosts(&["*://0.0.0.0/0:*"]);
        assert!(all.allows("http", "203.0.113.5", Some(1)) && !all.allows("http", "::1", Some(1)));
        let err = |e: &str| AllowedHosts::parse(&[e.to_string()]).unwrap_err();
        assert!(
            err("http://10.0.0.0/33:80").contains("no path"),
            "{}",
            err("http://10.0.0.0/33:80")
        );
    }

    #[test]
    fn templates_expand_with_the_application_variables() {
        let variables = |name: &str| match name {
            "api_host" => Ok(TemplateValue {
                value: "api.example.com".into(),
                secret: false,
            }),
            "port" => Ok(TemplateValue {
                value: "8443".into(),
                secret: false,
            }),
            "token_host" => Ok(TemplateValue {
                value: "hidden.example.com/x".into(),
                secret: true,
            }),
            "optional" => Ok(TemplateValue {
                value: String::new(),
                secret: false,
            }),
            other => Err(format!("no value for `{other}`")),
        };
        let entries = |list: &[&str]| list.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let allowed = AllowedHosts::parse_with(
            &entries(&[
                "https://{{ api_host }}:{{port}}",
                "{{ optional }}",
                "https://{{ optional }}",
            ]),
            variables,
        )
        .unwrap();
        assert!(allowed.allows("https", "api.example.com", Some(8443)));
        assert!(!allowed.allows("https", "api.example.com", None));
        assert_eq!(
            allowed.to_string(),
            "[https://{{ api_host }}:{{port}}]",
            "the template, not its values, and an empty one grants nothing"
        );
        let err = AllowedHosts::parse_with(&entries(&["https://{{ token_host }}"]), variables).unwrap_err();
        assert!(err.contains("secret") && !err.contains("hidden"), "{err}");
        let err = AllowedHosts::parse_with(&entries(&["https://{{ api_host }}/path"]), variables).unwrap_err();
        assert!(err.contains("no path"), "{err}");
        let err = AllowedHosts::parse_with(&entries(&["https://{{ missing }}"]), variables).unwrap_err();
        assert!(err.contains("no value for `missing`"), "{err}");
        assert!(AllowedHosts::check_entry("https://{{ api_host }}", |name| name == "api_host").is_ok());
        let err = AllowedHosts::check_entry("https://{{ nope }}", |_| false).unwrap_err();
        assert!(
            err.contains("`{{ nope }}`") && err.contains("does not declare"),
            "{err}"
        );
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
