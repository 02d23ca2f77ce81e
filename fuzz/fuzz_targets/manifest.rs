//! The Spin manifest parser on arbitrary text: it must never panic, and a manifest it accepts
//! must keep every promise the host relies on (routes, grants and channels that parse again,
//! triggers that name declared components).

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use mosaic_manifest::allowed_hosts::AllowedHosts;
use mosaic_manifest::manifest::{HttpRoute, Manifest};
use mosaic_manifest::routes::{RoutePattern, Router};
use mosaic_manifest::topics::check_pattern;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let manifest = match Manifest::parse(Path::new("app/spin.toml"), &text) {
        Ok(manifest) => manifest,
        Err(err) => {
            let message = err.to_string();
            assert!(message.starts_with("app/spin.toml: "), "{message}");
            return;
        }
    };
    assert!(!manifest.application.name.trim().is_empty());
    for (name, variable) in &manifest.variables {
        assert!(!(variable.required && variable.default.is_some()), "variables.{name}");
    }
    for (name, component) in &manifest.components {
        // Literal entries parse again; a template names only declared variables (its values
        // come at start-up, and may still be refused then).
        let hosts = component.outbound_hosts();
        let literal: Vec<String> = hosts.iter().filter(|host| !host.contains("{{")).cloned().collect();
        AllowedHosts::parse(&literal).expect("validated allowed_outbound_hosts");
        for host in hosts.iter().filter(|host| host.contains("{{")) {
            for variable in mosaic_manifest::template::names(host).expect("validated template") {
                assert!(manifest.variables.contains_key(&variable), "{host}: {variable}");
            }
        }
        assert!(manifest.source_path(name).is_some(), "component.{name}: a path source");
        let _ = manifest.build_dir(name);
        if let Some(build) = &component.build {
            let _ = build.command.commands();
        }
        if let Some(subscription) = manifest.subscription_of(name) {
            assert_eq!(&subscription.subscriber, name);
            assert!(!subscription.patterns.is_empty());
        }
        let _ = manifest.route_of(name);
    }
    let mut routes = Vec::new();
    for trigger in &manifest.http_triggers {
        assert!(manifest.components.contains_key(&trigger.component));
        if let HttpRoute::Public(route) = &trigger.route {
            // A route parses back to itself and matches its own fixed part.
            assert_eq!(RoutePattern::parse(route.as_str()).as_ref(), Ok(route));
            assert!(route.matches(&route.without_wildcard()).is_some(), "{route}");
            routes.push((route.clone(), trigger.component.clone()));
        }
    }
    let router = Router::new(routes.clone());
    for (route, _) in &routes {
        let (picked, _, _) = router.route(&route.without_wildcard()).expect("some route matches");
        assert!(picked.matches(&route.without_wildcard()).is_some());
    }
    for trigger in &manifest.redis_triggers {
        assert!(manifest.components.contains_key(&trigger.component));
        check_pattern(&trigger.channel).expect("validated channel");
    }
    let subscriptions = manifest.subscriptions();
    assert!(subscriptions
        .windows(2)
        .all(|pair| pair[0].subscriber < pair[1].subscriber));
    for subscription in &subscriptions {
        for pattern in &subscription.patterns {
            // Every wildcard stood in for by one concrete word: the pattern matches that topic.
            let topic: Vec<&str> = pattern
                .split('.')
                .map(|word| if word == "*" || word == "#" { "w" } else { word })
                .collect();
            assert!(subscription.matches(&topic.join(".")), "{pattern}");
        }
    }
});
