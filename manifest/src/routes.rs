//! HTTP route patterns with Spin's syntax and the router that picks a component for a path.
//!
//! `/exact`, `/prefix/...` (that path and everything under it) and `:name` segments. When
//! several routes match, the most specific wins: more segments, then exact over wildcard,
//! then literal segments over `:name` ones.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RoutePattern {
    raw: String,
    segments: Vec<Segment>,
    trailing_wildcard: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Literal(String),
    Param(String),
}

/// What a request path matched: the values Spin passes in its `spin-*` headers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RouteMatch {
    /// The part of the path after the route's fixed part (`spin-path-info`).
    pub path_info: String,
    /// `:name` segments and their values (`spin-path-match-NAME`).
    pub params: Vec<(String, String)>,
}

impl RoutePattern {
    pub fn parse(route: &str) -> Result<Self, String> {
        if !route.starts_with('/') {
            return Err(format!("route \"{route}\" must start with `/`"));
        }
        let trimmed = route.trim_end_matches('/');
        let mut parts: Vec<&str> = trimmed.split('/').skip(1).collect();
        let trailing_wildcard = parts.last() == Some(&"...");
        if trailing_wildcard {
            parts.pop();
        }
        let mut segments = Vec::with_capacity(parts.len());
        for part in parts {
            if part == "..." {
                return Err(format!("route \"{route}\": `...` may only end a route"));
            }
            if part.is_empty() {
                return Err(format!("route \"{route}\" has an empty segment (`//`)"));
            }
            if let Some(name) = part.strip_prefix(':') {
                let valid = !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-');
                if !valid {
                    return Err(format!(
                        "route \"{route}\": `:{name}` needs a name of letters, digits, `_` or `-`"
                    ));
                }
                segments.push(Segment::Param(name.to_string()));
            } else {
                segments.push(Segment::Literal(part.to_string()));
            }
        }
        Ok(Self {
            raw: route.to_string(),
            segments,
            trailing_wildcard,
        })
    }

    /// The route as written in the manifest (`spin-matched-route`, `spin-raw-component-route`).
    pub fn as_str(&self) -> &str {
        &self.raw
    }

    /// The route without its trailing `/...` (`spin-component-route`).
    pub fn without_wildcard(&self) -> String {
        let mut fixed = String::with_capacity(self.raw.len());
        for segment in &self.segments {
            match segment {
                Segment::Literal(text) => {
                    fixed.push('/');
                    fixed.push_str(text);
                }
                Segment::Param(name) => {
                    fixed.push_str("/:");
                    fixed.push_str(name);
                }
            }
        }
        if fixed.is_empty() && !self.trailing_wildcard {
            "/".to_string()
        } else {
            fixed
        }
    }

    /// The fixed prefix used to reach this component's own paths, e.g. `/users` for
    /// `/users/...`; `:name` segments stop the prefix.
    pub fn literal_prefix(&self) -> String {
        let mut prefix = String::new();
        for segment in &self.segments {
            match segment {
                Segment::Literal(text) => {
                    prefix.push('/');
                    prefix.push_str(text);
                }
                Segment::Param(_) => break,
            }
        }
        prefix
    }

    pub fn matches(&self, path: &str) -> Option<RouteMatch> {
        let trimmed = path.strip_prefix('/').unwrap_or(path);
        let parts: Vec<&str> = if trimmed.is_empty() {
            Vec::new()
        } else {
            trimmed.split('/').collect()
        };
        let fixed = self.segments.len();
        if parts.len() < fixed {
            return None;
        }
        // An exact route also matches its path with one trailing slash.
        let exact_fits = parts.len() == fixed || (parts.len() == fixed + 1 && parts[fixed].is_empty());
        if !self.trailing_wildcard && !exact_fits {
            return None;
        }
        let mut params = Vec::new();
        for (segment, part) in self.segments.iter().zip(&parts) {
            match segment {
                Segment::Literal(text) if text == part => {}
                Segment::Literal(_) => return None,
                Segment::Param(_) if part.is_empty() => return None,
                Segment::Param(name) => params.push((name.clone(), (*part).to_string())),
            }
        }
        let path_info = if self.trailing_wildcard && parts.len() > fixed {
            format!("/{}", parts[fixed..].join("/"))
        } else if self.trailing_wildcard && fixed == 0 && path == "/" {
            // `/...` asked for `/`: the slash after the (empty) prefix, as `/a/...` gives `/`
            // for `/a/` and as Spin does.
            "/".to_string()
        } else {
            String::new()
        };
        Some(RouteMatch { path_info, params })
    }

    /// Orders routes so that the most specific compares greatest.
    fn specificity(&self) -> (usize, bool, usize) {
        let literals = self
            .segments
            .iter()
            .filter(|s| matches!(s, Segment::Literal(_)))
            .count();
        (self.segments.len(), !self.trailing_wildcard, literals)
    }
}

impl fmt::Display for RoutePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// Maps request paths to component names.
#[derive(Debug, Clone, Default)]
pub struct Router {
    routes: Vec<(RoutePattern, String)>,
}

impl Router {
    pub fn new(routes: impl IntoIterator<Item = (RoutePattern, String)>) -> Self {
        let mut routes: Vec<_> = routes.into_iter().collect();
        routes.sort_by_key(|(pattern, _)| std::cmp::Reverse(pattern.specificity()));
        Self { routes }
    }

    pub fn route(&self, path: &str) -> Option<(&RoutePattern, &str, RouteMatch)> {
        self.routes
            .iter()
            .find_map(|(pattern, component)| Some((pattern, component.as_str(), pattern.matches(path)?)))
    }

    pub fn routes(&self) -> impl Iterator<Item = (&RoutePattern, &str)> {
        self.routes.iter().map(|(pattern, name)| (pattern, name.as_str()))
    }

    /// A copy with `component` served at `pattern` (replacing its earlier route, if any).
    pub fn with_route(&self, pattern: RoutePattern, component: &str) -> Self {
        let routes = self
            .routes
            .iter()
            .filter(|(_, name)| name != component)
            .cloned()
            .chain(std::iter::once((pattern, component.to_string())));
        Self::new(routes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn router(routes: &[(&str, &str)]) -> Router {
        Router::new(
            routes
                .iter()
                .map(|(r, c)| (RoutePattern::parse(r).unwrap(), c.to_string())),
        )
    }

    #[test]
    fn exact_wildcard_and_params() {
        let r = router(&[
            ("/...", "fallback"),
            ("/users/...", "users"),
            ("/users/:id", "user-by-id"),
            ("/users/me", "me"),
            ("/hello", "hello"),
        ]);
        let pick = |path: &str| r.route(path).map(|(_, c, m)| (c.to_string(), m));
        assert_eq!(pick("/hello").unwrap().0, "hello");
        assert_eq!(pick("/hello/").unwrap().0, "hello");
        assert_eq!(pick("/hello/x").unwrap().0, "fallback");
        assert_eq!(pick("/users/me").unwrap().0, "me");
        let (component, matched) = pick("/users/42").unwrap();
        assert_eq!(component, "user-by-id");
        assert_eq!(matched.params, vec![("id".to_string(), "42".to_string())]);
        let (component, matched) = pick("/users/42/orders").unwrap();
        assert_eq!(component, "users");
        assert_eq!(matched.path_info, "/42/orders");
        assert_eq!(pick("/users").unwrap().1.path_info, "");
        assert_eq!(pick("/").unwrap().0, "fallback");
        // The slash after the route's prefix is path info, for the root wildcard too.
        assert_eq!(pick("/").unwrap().1.path_info, "/");
        assert_eq!(pick("/users/").unwrap().1.path_info, "/");
    }

    #[test]
    fn no_match_without_fallback() {
        let r = router(&[("/api/...", "api"), ("/exact", "exact")]);
        assert!(r.route("/other").is_none());
        assert!(r.route("/exact/deeper").is_none());
        assert!(r.route("/apix").is_none());
    }

    #[test]
    fn component_route_strips_wildcard() {
        assert_eq!(RoutePattern::parse("/foo/...").unwrap().without_wildcard(), "/foo");
        assert_eq!(
            RoutePattern::parse("/foo/:id/...").unwrap().without_wildcard(),
            "/foo/:id"
        );
        assert_eq!(RoutePattern::parse("/...").unwrap().without_wildcard(), "");
        assert_eq!(RoutePattern::parse("/").unwrap().without_wildcard(), "/");
    }

    #[test]
    fn bad_routes_are_explained() {
        assert!(RoutePattern::parse("foo").unwrap_err().contains("must start"));
        assert!(RoutePattern::parse("/a/.../b").unwrap_err().contains("only end"));
        assert!(RoutePattern::parse("/a//b").unwrap_err().contains("empty segment"));
        assert!(RoutePattern::parse("/a/:").unwrap_err().contains("needs a name"));
    }
}
