//! Route patterns and the router: parsing and matching arbitrary patterns and paths must never
//! panic, and a pattern built from well-formed segments must parse exactly when Spin's rules
//! say so and match a path built from it with the right `:name` values and path info.

#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use mosaic_manifest::routes::{RoutePattern, Router};

#[derive(Arbitrary, Debug)]
enum Segment {
    Literal(String),
    Param(String),
    Wildcard,
}

#[derive(Arbitrary, Debug)]
struct Input {
    /// Any text as a pattern, any text as a request path.
    pattern: String,
    path: String,
    /// A pattern built segment by segment, the values of its `:name` segments and the rest of
    /// the path under a trailing `/...`.
    segments: Vec<Segment>,
    trailing_slash: bool,
    values: Vec<String>,
    tail: String,
    /// More patterns for a router.
    others: Vec<String>,
}

fuzz_target!(|input: Input| {
    if let Ok(pattern) = RoutePattern::parse(&input.pattern) {
        exercise(&pattern, &input.path);
    }
    built_pattern(&input);
    let patterns: Vec<(RoutePattern, String)> = std::iter::once(&input.pattern)
        .chain(&input.others)
        .filter_map(|text| Some((RoutePattern::parse(text).ok()?, text.clone())))
        .collect();
    let router = Router::new(patterns.clone());
    if let Some((pattern, _, found)) = router.route(&input.path) {
        assert_eq!(pattern.matches(&input.path), Some(found));
    } else {
        assert!(patterns
            .iter()
            .all(|(pattern, _)| pattern.matches(&input.path).is_none()));
    }
    if let Some((pattern, _)) = patterns.first() {
        let moved = router.with_route(pattern.clone(), "moved");
        assert!(moved.routes().any(|(_, component)| component == "moved"));
    }
});

fn exercise(pattern: &RoutePattern, path: &str) {
    assert_eq!(RoutePattern::parse(pattern.as_str()).as_ref(), Ok(pattern));
    assert_eq!(pattern.to_string(), pattern.as_str());
    let fixed = pattern.without_wildcard();
    let _ = pattern.literal_prefix();
    assert!(pattern.matches(&fixed).is_some(), "{pattern} vs its own {fixed:?}");
    if let Some(found) = pattern.matches(path) {
        assert!(found.path_info.is_empty() || found.path_info.starts_with('/'));
        assert!(found
            .params
            .iter()
            .all(|(_, value)| !value.is_empty() && !value.contains('/')));
    }
}

fn built_pattern(input: &Input) {
    // Only segments that stay one segment each: the check below knows what to expect of them.
    let clean = input.segments.iter().all(|segment| match segment {
        Segment::Literal(text) => !text.is_empty() && !text.contains('/') && text != "..." && !text.starts_with(':'),
        Segment::Param(name) => !name.contains('/'),
        Segment::Wildcard => true,
    });
    if !clean {
        return;
    }
    let mut text: String = input
        .segments
        .iter()
        .map(|segment| match segment {
            Segment::Literal(text) => format!("/{text}"),
            Segment::Param(name) => format!("/:{name}"),
            Segment::Wildcard => "/...".to_string(),
        })
        .collect();
    if text.is_empty() || input.trailing_slash {
        text.push('/');
    }
    let wildcard_at = input.segments.iter().position(|s| matches!(s, Segment::Wildcard));
    let wildcard = wildcard_at.is_some();
    let valid_names = input.segments.iter().all(|segment| match segment {
        Segment::Param(name) => {
            !name.is_empty() && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        }
        _ => true,
    });
    let valid = valid_names && wildcard_at.is_none_or(|at| at + 1 == input.segments.len());
    let pattern = match RoutePattern::parse(&text) {
        Ok(pattern) => {
            assert!(valid, "{text:?} should have been refused");
            pattern
        }
        Err(message) => {
            assert!(!valid, "{text:?} refused: {message}");
            return;
        }
    };
    exercise(&pattern, &input.path);

    // A concrete path for the pattern: each `:name` gets a value, a `/...` a tail.
    let mut path = String::new();
    let mut params = Vec::new();
    for (index, segment) in input.segments.iter().enumerate() {
        match segment {
            Segment::Literal(text) => {
                path.push('/');
                path.push_str(text);
            }
            Segment::Param(name) => {
                let value = input
                    .values
                    .get(index)
                    .filter(|value| !value.is_empty() && !value.contains('/'))
                    .map_or("v", String::as_str);
                path.push('/');
                path.push_str(value);
                params.push((name.clone(), value.to_string()));
            }
            Segment::Wildcard => {}
        }
    }
    let tail = match input.tail.as_str() {
        _ if !wildcard => "",
        "" => "",
        tail if tail.starts_with('/') => tail,
        _ => "/rest",
    };
    let full = format!("{path}{tail}");
    let found = pattern
        .matches(&full)
        .unwrap_or_else(|| panic!("{text:?} does not match {full:?}"));
    assert_eq!(found.params, params, "{text:?} on {full:?}");
    assert_eq!(found.path_info, tail, "{text:?} on {full:?}");
    if !wildcard {
        // An exact route: one more segment never matches.
        assert!(pattern.matches(&format!("{path}/more")).is_none(), "{text:?}");
    }
}
