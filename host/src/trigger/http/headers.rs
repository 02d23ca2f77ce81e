//! The `spin-*` headers a request carries to the guest, computed from where it landed
//! (Spin's names and values); whatever `spin-*` headers the client sent are replaced.

use std::net::SocketAddr;

use http::{HeaderName, HeaderValue};

use crate::app::manifest::HttpRoute;
use crate::app::routes::{RouteMatch, RoutePattern};
use crate::app::ComponentSpec;

/// Where a request landed: the values of the `spin-*` headers.
pub struct RouteInfo {
    /// The route as written in the manifest (`spin-matched-route`, `spin-raw-component-route`)
    /// and without its trailing `/...` (`spin-component-route`); `None` for a component
    /// reached without a route of its own.
    route: Option<(String, String)>,
    pub matched: RouteMatch,
}

impl RouteInfo {
    pub fn new(pattern: Option<&RoutePattern>, matched: RouteMatch) -> Self {
        Self {
            route: pattern.map(|pattern| (pattern.as_str().to_string(), pattern.without_wildcard())),
            matched,
        }
    }

    /// The route as written in the manifest, if the component was reached by one.
    pub fn pattern(&self) -> Option<&str> {
        self.route.as_ref().map(|(pattern, _)| pattern.as_str())
    }

    pub fn for_component(spec: &ComponentSpec, path: &str) -> Self {
        let pattern = match &spec.route {
            Some(HttpRoute::Public(pattern)) => Some(pattern),
            _ => None,
        };
        let matched = pattern.and_then(|pattern| pattern.matches(path)).unwrap_or(RouteMatch {
            path_info: path.to_string(),
            params: vec![],
        });
        RouteInfo::new(pattern, matched)
    }
}

const FULL_URL: HeaderName = HeaderName::from_static("spin-full-url");
const PATH_INFO: HeaderName = HeaderName::from_static("spin-path-info");
const MATCHED_ROUTE: HeaderName = HeaderName::from_static("spin-matched-route");
const BASE_PATH: HeaderName = HeaderName::from_static("spin-base-path");
const RAW_COMPONENT_ROUTE: HeaderName = HeaderName::from_static("spin-raw-component-route");
const COMPONENT_ROUTE: HeaderName = HeaderName::from_static("spin-component-route");
const CLIENT_ADDR: HeaderName = HeaderName::from_static("spin-client-addr");

/// The `spin-*` headers Mosaic always sets (the `spin-path-match-*` ones come on top).
const FIXED_SPIN_HEADERS: usize = 7;

/// Replaces any `spin-*` header the client sent with the values Spin computes.
///
/// On every request's path: the map is grown once, and each value is built in one buffer that
/// becomes the header value without a copy.
pub fn with_spin_headers<B>(
    mut request: hyper::Request<B>,
    route: &RouteInfo,
    client: SocketAddr,
) -> hyper::Request<B> {
    let full_url = {
        let host = request
            .headers()
            .get(http::header::HOST)
            .and_then(|value| value.to_str().ok())
            .or_else(|| request.uri().authority().map(|authority| authority.as_str()))
            .unwrap_or("localhost");
        let path_and_query = request.uri().path_and_query().map_or("/", |pq| pq.as_str());
        // An HTTPS listener gives its requests the `https` scheme.
        let scheme = request.uri().scheme_str().unwrap_or("http");
        format!("{scheme}://{host}{path_and_query}")
    };
    // A request without a `Host` header gets its URI's authority (or `localhost`) as one.
    let missing_host = (!request.headers().contains_key(http::header::HOST)).then(|| {
        request
            .uri()
            .authority()
            .map_or("localhost", |authority| authority.as_str())
            .to_string()
    });
    let headers = request.headers_mut();
    // Collecting nothing allocates nothing: the usual request, without spoofed headers, pays
    // one scan.
    let spoofed: Vec<HeaderName> = headers
        .keys()
        .filter(|name| name.as_str().starts_with("spin-"))
        .cloned()
        .collect();
    for name in spoofed {
        headers.remove(name);
    }
    headers.reserve(FIXED_SPIN_HEADERS + route.matched.params.len() + 1);
    if let Some(value) = missing_host.and_then(header_value) {
        headers.insert(http::header::HOST, value);
    }
    let (matched_route, component_route) = route.route.clone().unwrap_or_default();
    let values = [
        (FULL_URL, full_url),
        (PATH_INFO, route.matched.path_info.clone()),
        (MATCHED_ROUTE, matched_route.clone()),
        (RAW_COMPONENT_ROUTE, matched_route),
        (COMPONENT_ROUTE, component_route),
        (CLIENT_ADDR, client.to_string()),
    ];
    headers.insert(BASE_PATH, HeaderValue::from_static("/"));
    for (name, value) in values {
        if let Some(value) = header_value(value) {
            headers.insert(name, value);
        }
    }
    for (name, value) in &route.matched.params {
        // Spin's name: `:path_segment` gives `spin-path-match-path-segment`.
        let name = format!("spin-path-match-{}", name.to_ascii_lowercase().replace('_', "-"));
        let name = HeaderName::from_bytes(name.as_bytes());
        if let (Ok(name), Some(value)) = (name, header_value(value.clone())) {
            headers.insert(name, value);
        }
    }
    request
}

/// `text` as a header value, without copying it (`None` if it is not a valid one).
fn header_value(text: String) -> Option<HeaderValue> {
    HeaderValue::from_maybe_shared(bytes::Bytes::from(text)).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spin_headers_replace_spoofed_ones_and_name_the_route() {
        let pattern = RoutePattern::parse("/users/:id/...").unwrap();
        let matched = pattern.matches("/users/7/orders").unwrap();
        let route = RouteInfo::new(Some(&pattern), matched);
        let request = hyper::Request::get("/users/7/orders?x=1")
            .header("host", "shop.example:3000")
            .header("spin-path-info", "/spoofed")
            .header("spin-made-up", "spoofed")
            .body(())
            .unwrap();
        let request = with_spin_headers(request, &route, "10.0.0.9:5555".parse().unwrap());
        let header = |name: &str| request.headers().get(name).map(|v| v.to_str().unwrap().to_string());
        assert_eq!(
            header("spin-full-url").as_deref(),
            Some("http://shop.example:3000/users/7/orders?x=1")
        );
        assert_eq!(header("spin-path-info").as_deref(), Some("/orders"));
        assert_eq!(header("spin-matched-route").as_deref(), Some("/users/:id/..."));
        assert_eq!(header("spin-raw-component-route").as_deref(), Some("/users/:id/..."));
        assert_eq!(header("spin-component-route").as_deref(), Some("/users/:id"));
        assert_eq!(header("spin-base-path").as_deref(), Some("/"));
        assert_eq!(header("spin-client-addr").as_deref(), Some("10.0.0.9:5555"));
        assert_eq!(header("spin-path-match-id").as_deref(), Some("7"));
        assert_eq!(header("spin-made-up"), None);
        assert_eq!(request.headers().get_all("spin-path-info").iter().count(), 1);
    }

    #[test]
    fn path_match_headers_are_named_as_spin_names_them() {
        let pattern = RoutePattern::parse("/a/:path_segment/:Other-Name").unwrap();
        let route = RouteInfo::new(Some(&pattern), pattern.matches("/a/x/y").unwrap());
        let request = with_spin_headers(
            hyper::Request::get("/a/x/y").body(()).unwrap(),
            &route,
            "127.0.0.1:1".parse().unwrap(),
        );
        assert_eq!(request.headers()["spin-path-match-path-segment"], "x");
        assert_eq!(request.headers()["spin-path-match-other-name"], "y");
    }

    #[test]
    fn a_request_without_a_host_gets_its_authority_or_localhost() {
        let route = RouteInfo::new(
            None,
            RouteMatch {
                path_info: "/".into(),
                params: vec![],
            },
        );
        let request = hyper::Request::get("http://api.example/a").body(()).unwrap();
        let request = with_spin_headers(request, &route, "127.0.0.1:1".parse().unwrap());
        assert_eq!(request.headers()["host"], "api.example");
        assert_eq!(request.headers()["spin-full-url"], "http://api.example/a");
        assert_eq!(request.headers()["spin-matched-route"], "");
        let request = with_spin_headers(
            hyper::Request::get("/b").body(()).unwrap(),
            &route,
            "127.0.0.1:1".parse().unwrap(),
        );
        assert_eq!(request.headers()["host"], "localhost");
        assert_eq!(request.headers()["spin-full-url"], "http://localhost/b");
    }
}
