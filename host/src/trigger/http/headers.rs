//! The `spin-*` headers a request carries to the guest, computed from where it landed
//! (Spin's names and values); whatever `spin-*` headers the client sent are replaced.

use std::net::SocketAddr;

use http::{HeaderName, HeaderValue};

use crate::app::manifest::HttpRoute;
use crate::app::routes::{RouteMatch, RoutePattern};
use crate::app::ComponentSpec;

/// Where a request landed: the values of the `spin-*` headers.
pub struct RouteInfo {
    pub pattern: Option<RoutePattern>,
    pub matched: RouteMatch,
}

impl RouteInfo {
    pub fn for_component(spec: &ComponentSpec, path: &str) -> Self {
        match &spec.route {
            Some(HttpRoute::Public(pattern)) => {
                let matched = pattern.matches(path).unwrap_or(RouteMatch {
                    path_info: path.to_string(),
                    params: vec![],
                });
                RouteInfo {
                    pattern: Some(pattern.clone()),
                    matched,
                }
            }
            _ => RouteInfo {
                pattern: None,
                matched: RouteMatch {
                    path_info: path.to_string(),
                    params: vec![],
                },
            },
        }
    }
}

/// Replaces any `spin-*` header the client sent with the values Spin computes.
pub fn with_spin_headers<B>(
    mut request: hyper::Request<B>,
    route: &RouteInfo,
    client: SocketAddr,
) -> hyper::Request<B> {
    let headers = request.headers_mut();
    let spoofed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("spin-"))
        .cloned()
        .collect();
    for name in spoofed {
        headers.remove(name);
    }
    let host = headers
        .get(http::header::HOST)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string)
        .or_else(|| request.uri().authority().map(|a| a.to_string()))
        .unwrap_or_else(|| "localhost".to_string());
    if !request.headers().contains_key(http::header::HOST) {
        if let Ok(value) = HeaderValue::from_str(&host) {
            request.headers_mut().insert(http::header::HOST, value);
        }
    }
    let path_and_query = request
        .uri()
        .path_and_query()
        .map(|pq| pq.as_str())
        .unwrap_or("/")
        .to_string();
    let (matched_route, component_route) = match &route.pattern {
        Some(pattern) => (pattern.as_str().to_string(), pattern.without_wildcard()),
        None => (String::new(), String::new()),
    };
    let mut values = vec![
        ("spin-full-url".to_string(), format!("http://{host}{path_and_query}")),
        ("spin-path-info".to_string(), route.matched.path_info.clone()),
        ("spin-matched-route".to_string(), matched_route.clone()),
        ("spin-base-path".to_string(), "/".to_string()),
        ("spin-raw-component-route".to_string(), matched_route),
        ("spin-component-route".to_string(), component_route),
        ("spin-client-addr".to_string(), client.to_string()),
    ];
    for (name, value) in &route.matched.params {
        values.push((format!("spin-path-match-{}", name.to_ascii_lowercase()), value.clone()));
    }
    let headers = request.headers_mut();
    for (name, value) in values {
        if let (Ok(name), Ok(value)) = (HeaderName::from_bytes(name.as_bytes()), HeaderValue::from_str(&value)) {
            headers.insert(name, value);
        }
    }
    request
}
