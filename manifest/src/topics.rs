//! Message channel names and subscription patterns (RabbitMQ topic rules: dot-separated words,
//! `*` one word, `#` zero or more words), as `[[trigger.redis]]` channels and guest `publish`
//! calls use them. Every broker backend of the host accepts a name that passes these checks.

/// A channel name or pattern that breaks the rules; the message says which rule and how to fix
/// it. The host turns it into `BrokerError::Invalid`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct TopicError(pub String);

/// One subscribing component: its durable queue receives every message published to a topic
/// that matches one of its patterns, from the moment it is declared.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscriptionSpec {
    /// The subscribing component's name; also the name of its queue or consumer.
    pub subscriber: String,
    /// Channel patterns (`order.*`, `payment.#`, `orders`).
    pub patterns: Vec<String>,
}

impl SubscriptionSpec {
    pub fn matches(&self, topic: &str) -> bool {
        self.patterns.iter().any(|pattern| topic_matches(pattern, topic))
    }
}

/// The longest channel name (RabbitMQ's routing-key limit).
pub const MAX_TOPIC_BYTES: usize = 255;

/// A topic a message is published to: dot-separated words, each non-empty, made of letters,
/// digits, `-`, `_`, `:` or `/`, with no wildcard. Every backend accepts such a name.
pub fn check_topic(topic: &str) -> Result<(), TopicError> {
    check_words(topic, false)
}

/// A subscription pattern: like a topic, and a word may also be `*` (exactly one word) or `#`
/// (zero or more words).
pub fn check_pattern(pattern: &str) -> Result<(), TopicError> {
    check_words(pattern, true)
}

/// Whether a `[[trigger.redis]]` channel is a pattern (a word is `*` or `#`) rather than one
/// channel's name. Spin would take it literally.
pub fn has_wildcard(pattern: &str) -> bool {
    pattern.split('.').any(|word| word == "*" || word == "#")
}

fn check_words(name: &str, wildcards: bool) -> Result<(), TopicError> {
    let what = if wildcards { "channel pattern" } else { "channel" };
    if name.is_empty() {
        return Err(TopicError(format!("the {what} is empty")));
    }
    if name.len() > MAX_TOPIC_BYTES {
        return Err(TopicError(format!(
            "the {what} `{}...` is {} bytes; the longest allowed is {MAX_TOPIC_BYTES}",
            &name[..name.char_indices().nth(32).map_or(name.len(), |(at, _)| at)],
            name.len()
        )));
    }
    for word in name.split('.') {
        let wildcard = word == "*" || word == "#";
        if wildcard && !wildcards {
            return Err(TopicError(format!(
                "the channel `{name}` holds the wildcard `{word}`; publish to a concrete channel (wildcards belong in a [[trigger.redis]] channel)"
            )));
        }
        if wildcard {
            continue;
        }
        if word.is_empty() {
            return Err(TopicError(format!(
                "the {what} `{name}` has an empty word; words are separated by single dots"
            )));
        }
        if let Some(bad) = word
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | ':' | '/')))
        {
            return Err(TopicError(format!(
                "the {what} `{name}` holds `{bad}`; a word may hold letters, digits, '-', '_', ':' and '/'"
            )));
        }
    }
    Ok(())
}

/// Whether `topic` matches `pattern` under the RabbitMQ topic-exchange rules.
pub fn topic_matches(pattern: &str, topic: &str) -> bool {
    let pattern: Vec<&str> = pattern.split('.').collect();
    let topic: Vec<&str> = topic.split('.').collect();
    words_match(&pattern, &topic)
}

/// Glob matching over words, `#` as a glob's `*` and `*` as its `?`. On a mismatch it backtracks
/// only to the latest `#` (an earlier one can absorb nothing a later one could not), so a match
/// takes at most pattern × topic steps: a pattern of many `#` against a long topic must not cost
/// exponential time, as trying every split for every `#` did.
fn words_match(pattern: &[&str], topic: &[&str]) -> bool {
    let (mut p, mut t) = (0, 0);
    // After the latest `#`: where the pattern resumes and the topic word it resumed at.
    let mut resume: Option<(usize, usize)> = None;
    while t < topic.len() {
        match pattern.get(p) {
            Some(&"#") => {
                resume = Some((p + 1, t));
                p += 1;
            }
            Some(&word) if word == "*" || word == topic[t] => {
                p += 1;
                t += 1;
            }
            _ => match resume {
                // Let the latest `#` take one more word and try again from there.
                Some((after, at)) => {
                    resume = Some((after, at + 1));
                    p = after;
                    t = at + 1;
                }
                None => return false,
            },
        }
    }
    pattern[p..].iter().all(|word| *word == "#")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topic_exchange_rules() {
        let table = [
            ("orders", "orders", true),
            ("orders", "orders.created", false),
            ("order.*", "order.created", true),
            ("order.*", "order", false),
            ("order.*", "order.created.eu", false),
            ("order.#", "order", true),
            ("order.#", "order.created.eu", true),
            ("order.#", "orders.created", false),
            ("#", "anything.at.all", true),
            ("*.created", "order.created", true),
            ("*.created", "created", false),
            ("a.#.z", "a.z", true),
            ("a.#.z", "a.b.c.z", true),
            ("a.#.z", "a.b.c", false),
            ("#.z", "z", true),
            ("*.*", "a.b", true),
            ("*.*", "a", false),
        ];
        for (pattern, topic, expected) in table {
            assert_eq!(topic_matches(pattern, topic), expected, "{pattern} vs {topic}");
        }
    }

    #[test]
    fn many_hashes_against_a_long_topic_take_no_exponential_time() {
        // The recursive matcher tried every split for every `#` (the `topics` fuzz target
        // reports it as a timeout): this valid pattern (41 bytes) against a valid 40-word topic
        // did not finish in 5 minutes (some 10^15 splits).
        let pattern = ["#"; 20].join(".") + ".x";
        let topic = ["a"; 40].join(".");
        assert!(!topic_matches(&pattern, &topic));
        assert!(topic_matches(&pattern, &(topic.clone() + ".x")));
        let pattern = ["#.*"; 60].join(".") + ".x";
        assert!(!topic_matches(&pattern, &["a"; 120].join(".")));
        assert!(topic_matches(&pattern, &(["a"; 60].join(".") + ".x")));
    }

    #[test]
    fn names_are_checked() {
        assert!(check_topic("order.created").is_ok());
        assert!(check_topic("tenant-1:orders/eu_west").is_ok());
        for bad in ["", "a..b", ".a", "a.", "a b", "order.*", "order.#", "naïve"] {
            assert!(check_topic(bad).is_err(), "{bad:?}");
        }
        assert!(check_topic(&"a".repeat(256)).is_err());
        assert!(check_pattern("order.*").is_ok() && check_pattern("#").is_ok() && check_pattern("a.#.b").is_ok());
        assert!(has_wildcard("order.*") && has_wildcard("#") && has_wildcard("a.#.b"));
        assert!(!has_wildcard("order.created") && !has_wildcard("orders"));
        assert!(check_pattern("a.b*").is_err() && check_pattern("a..b").is_err());
    }
}
