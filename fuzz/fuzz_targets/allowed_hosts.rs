//! `allowed_outbound_hosts`: parsing arbitrary entries and checking arbitrary destinations must
//! never panic; `*://*:*` grants everything; a grant written for one host and port allows that
//! destination (in any letter case, with or without a final dot) and nothing next to it.

#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use mosaic_manifest::allowed_hosts::{default_port, AllowedHosts};

#[derive(Arbitrary, Debug)]
struct Input {
    entries: Vec<String>,
    /// A destination, as the outbound check receives it.
    scheme: String,
    host: String,
    port: Option<u16>,
    /// A subdomain label for `*.HOST` grants.
    label: String,
    /// The port of the grant built from `scheme` and `host`: none (the scheme's default), one.
    grant_port: Option<u16>,
}

fuzz_target!(|input: Input| {
    let Input {
        entries,
        scheme,
        host,
        port,
        label,
        grant_port,
    } = input;
    if let Ok(allowed) = AllowedHosts::parse(&entries) {
        let _ = allowed.allows(&scheme, &host, port);
        let _ = allowed.to_string();
        assert_eq!(allowed.is_empty(), entries.is_empty());
        // Adding the grant of everything allows everything.
        let mut everything = entries.clone();
        everything.push("*://*:*".to_string());
        let everything = AllowedHosts::parse(&everything).expect("`*://*:*` parses");
        assert!(everything.allows(&scheme, &host, port));
    }
    // An empty list allows nothing.
    assert!(!AllowedHosts::default().allows(&scheme, &host, port));

    // A grant for one well-formed destination.
    let scheme = clean(&scheme, |c| c.is_ascii_alphanumeric() || c == '+' || c == '-');
    let host = clean(&host, |c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    let label = clean(&label, |c| c.is_ascii_alphanumeric() || c == '-');
    let (Some(scheme), Some(host)) = (scheme, host) else {
        return;
    };
    if host.trim_end_matches('.').is_empty() {
        return;
    }
    let (grant, port) = match grant_port {
        Some(port) => (format!("{scheme}://{host}:{port}"), port),
        None => match default_port(&scheme) {
            Some(port) => (format!("{scheme}://{host}"), port),
            None => {
                let refused = AllowedHosts::parse(std::slice::from_ref(&format!("{scheme}://{host}")));
                assert!(refused.is_err(), "{scheme} has no default port");
                return;
            }
        },
    };
    let allowed = AllowedHosts::parse(std::slice::from_ref(&grant)).unwrap_or_else(|err| panic!("{grant}: {err}"));
    let bare = host.trim_end_matches('.');
    for destination in [bare.to_string(), bare.to_ascii_uppercase(), format!("{bare}.")] {
        assert!(
            allowed.allows(&scheme, &destination, Some(port)),
            "{grant} vs {destination}:{port}"
        );
    }
    assert!(!allowed.allows(&scheme, bare, Some(port.wrapping_add(1))), "{grant}");
    assert!(!allowed.allows(&scheme, &format!("x{bare}"), Some(port)), "{grant}");
    if default_port(&scheme) == Some(port) {
        assert!(allowed.allows(&scheme, bare, None), "{grant} without a port");
    }
    // `*.HOST` is any subdomain, never the host itself.
    if let Some(label) = label {
        let grant = match grant_port {
            Some(port) => format!("{scheme}://*.{host}:{port}"),
            None => format!("{scheme}://*.{host}"),
        };
        let allowed = AllowedHosts::parse(std::slice::from_ref(&grant)).unwrap_or_else(|err| panic!("{grant}: {err}"));
        assert!(
            allowed.allows(&scheme, &format!("{label}.{bare}"), Some(port)),
            "{grant} vs {label}"
        );
        assert!(!allowed.allows(&scheme, bare, Some(port)), "{grant}");
    }
});

/// The text lowercased and kept to `keep`, if anything is left.
fn clean(text: &str, keep: impl Fn(char) -> bool) -> Option<String> {
    let kept: String = text
        .chars()
        .filter(|&c| keep(c))
        .map(|c| c.to_ascii_lowercase())
        .collect();
    (!kept.is_empty()).then_some(kept)
}
