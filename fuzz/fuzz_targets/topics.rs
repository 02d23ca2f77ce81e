//! Channel names and patterns: checking must never panic, matching must agree with a plain
//! dynamic-programming statement of the RabbitMQ topic rules and stay fast whatever the pattern
//! (run with `-timeout`, a slow input is a failure).

#![no_main]

use libfuzzer_sys::arbitrary::{self, Arbitrary};
use libfuzzer_sys::fuzz_target;
use mosaic_manifest::topics::{check_pattern, check_topic, topic_matches, SubscriptionSpec, MAX_TOPIC_BYTES};

#[derive(Arbitrary, Debug)]
struct Input {
    pattern: String,
    topic: String,
    others: Vec<String>,
}

fuzz_target!(|input: Input| {
    let pattern_ok = check_pattern(&input.pattern).is_ok();
    let topic_ok = check_topic(&input.topic).is_ok();
    if topic_ok {
        // A topic is a pattern without wildcards, and matches itself.
        assert!(check_pattern(&input.topic).is_ok());
        assert!(input.topic.len() <= MAX_TOPIC_BYTES);
        assert!(topic_matches(&input.topic, &input.topic));
    }
    if let Err(err) = check_topic(&input.topic) {
        assert!(!err.to_string().is_empty());
    }
    // Matching is defined (and must be quick) on any text, checked or not; the broker only
    // ever sees checked names, which are short.
    if input.pattern.len() <= 4 * MAX_TOPIC_BYTES && input.topic.len() <= 4 * MAX_TOPIC_BYTES {
        let expected = reference(&input.pattern, &input.topic);
        assert_eq!(topic_matches(&input.pattern, &input.topic), expected);
    }
    if pattern_ok && topic_ok {
        let spec = SubscriptionSpec {
            subscriber: "s".into(),
            patterns: std::iter::once(input.pattern.clone())
                .chain(input.others.clone())
                .collect(),
        };
        let any = spec.patterns.iter().any(|p| topic_matches(p, &input.topic));
        assert_eq!(spec.matches(&input.topic), any);
    }
});

/// `matches[i][j]`: pattern words from `i` match topic words from `j`.
fn reference(pattern: &str, topic: &str) -> bool {
    let pattern: Vec<&str> = pattern.split('.').collect();
    let topic: Vec<&str> = topic.split('.').collect();
    let (n, m) = (pattern.len(), topic.len());
    let mut matches = vec![vec![false; m + 1]; n + 1];
    matches[n][m] = true;
    for i in (0..n).rev() {
        for j in (0..=m).rev() {
            matches[i][j] = match pattern[i] {
                "#" => matches[i + 1][j] || (j < m && matches[i][j + 1]),
                word => j < m && (word == "*" || word == topic[j]) && matches[i + 1][j + 1],
            };
        }
    }
    matches[0][0]
}
