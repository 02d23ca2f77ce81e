//! Where a namespace's messages live on the NATS server: the subjects and stream names of one
//! application namespace, and how a topic or a channel pattern becomes a subject (see the
//! layout in the parent module's documentation).

use sha2::{Digest, Sha256};

/// The token after every topic's words in a subject; see the module documentation.
const TERMINATOR: &str = "_";

/// The subjects and stream names of one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Names {
    pub(super) namespace: String,
    /// `mosaic.<ns>.msg`
    pub(super) msg_prefix: String,
    /// `mosaic.<ns>.dead`
    pub(super) dead_prefix: String,
    pub(super) msg_stream: String,
    pub(super) dead_stream: String,
}

impl Names {
    pub(super) fn new(namespace: &str) -> Self {
        let token = subject_token(namespace);
        let stream_base = format!("MOSAIC_{}", token.to_ascii_uppercase());
        Self {
            namespace: namespace.to_string(),
            msg_prefix: format!("mosaic.{token}.msg"),
            dead_prefix: format!("mosaic.{token}.dead"),
            dead_stream: format!("{stream_base}_DEAD"),
            msg_stream: stream_base,
        }
    }

    pub(super) fn topic_subject(&self, topic: &str) -> String {
        format!("{}.{topic}.{TERMINATOR}", self.msg_prefix)
    }

    /// The topic a message subject was published for, if it is one of ours.
    pub(super) fn subject_topic<'a>(&self, subject: &'a str) -> Option<&'a str> {
        subject
            .strip_prefix(self.msg_prefix.as_str())?
            .strip_prefix('.')?
            .strip_suffix(TERMINATOR)?
            .strip_suffix('.')
            .filter(|topic| !topic.is_empty())
    }

    /// The one filter subject of a subscriber's consumer: exact for a single pattern whose `#`,
    /// if any, is its last word, else a superset that `Consumer::next` narrows down.
    pub(super) fn filter_subject(&self, patterns: &[String]) -> String {
        let [pattern] = patterns else {
            return format!("{}.>", self.msg_prefix);
        };
        let words: Vec<&str> = pattern.split('.').collect();
        match words.iter().position(|word| *word == "#") {
            None => format!("{}.{pattern}.{TERMINATOR}", self.msg_prefix),
            Some(first_hash) => {
                let mut tokens = vec![self.msg_prefix.as_str()];
                tokens.extend(&words[..first_hash]);
                tokens.push(">");
                tokens.join(".")
            }
        }
    }

    pub(super) fn dead_subject(&self, subscriber: &str) -> String {
        format!("{}.{}", self.dead_prefix, subject_token(subscriber))
    }
}

/// `name` as one subject token (also a valid durable consumer name): letters, digits, `-`, `_`.
/// A name that had to be changed gets a short hash of the original, so that two names that
/// clean up alike (`a.b`, `a_b`) do not share a consumer or a subject.
pub(super) fn subject_token(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if cleaned == name && !name.is_empty() {
        return cleaned;
    }
    let digest = Sha256::digest(name.as_bytes());
    format!("{cleaned}_{}", hex::encode(&digest[..4]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Names {
        Names::new("shop")
    }

    fn filter(patterns: &[&str]) -> String {
        let patterns: Vec<String> = patterns.iter().map(|p| p.to_string()).collect();
        names().filter_subject(&patterns)
    }

    #[test]
    fn namespace_names() {
        let names = names();
        assert_eq!(names.msg_prefix, "mosaic.shop.msg");
        assert_eq!(names.dead_prefix, "mosaic.shop.dead");
        assert_eq!(names.msg_stream, "MOSAIC_SHOP");
        assert_eq!(names.dead_stream, "MOSAIC_SHOP_DEAD");
        let odd = Names::new("my app.v2");
        assert!(odd.msg_prefix.starts_with("mosaic.my_app_v2_"), "{}", odd.msg_prefix);
        assert!(odd.msg_stream.starts_with("MOSAIC_MY_APP_V2_"), "{}", odd.msg_stream);
        assert_eq!(odd.msg_prefix.split('.').count(), 3);
    }

    #[test]
    fn tokens_are_clean_and_distinct() {
        assert_eq!(subject_token("order-worker_1"), "order-worker_1");
        let dotted = subject_token("a.b");
        let underscored = subject_token("a_b");
        assert_ne!(dotted, underscored);
        assert!(dotted.starts_with("a_b_"));
        assert!(dotted
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert!(!subject_token("").is_empty());
        assert_eq!(names().dead_subject("billing"), "mosaic.shop.dead.billing");
    }

    #[test]
    fn topics_round_trip_through_subjects() {
        let names = names();
        for topic in ["order", "order.created", "a._.b", "_", "tenant-1:orders/eu_west.x"] {
            let subject = names.topic_subject(topic);
            assert!(subject.ends_with("._"), "{subject}");
            assert_eq!(names.subject_topic(&subject), Some(topic), "{subject}");
        }
        assert_eq!(names.topic_subject("order.created"), "mosaic.shop.msg.order.created._");
        assert_eq!(names.subject_topic("mosaic.shop.msg._"), None);
        assert_eq!(names.subject_topic("mosaic.other.msg.order._"), None);
        assert_eq!(names.subject_topic("mosaic.shop.msg.order"), None);
    }

    #[test]
    fn patterns_map_to_filter_subjects() {
        assert_eq!(filter(&["order.created"]), "mosaic.shop.msg.order.created._");
        assert_eq!(filter(&["order.*"]), "mosaic.shop.msg.order.*._");
        assert_eq!(filter(&["*.paid"]), "mosaic.shop.msg.*.paid._");
        assert_eq!(filter(&["order.#"]), "mosaic.shop.msg.order.>");
        assert_eq!(filter(&["#"]), "mosaic.shop.msg.>");
        // Superset filters, narrowed by the exact rules in `next`.
        assert_eq!(filter(&["a.#.z"]), "mosaic.shop.msg.a.>");
        assert_eq!(filter(&["*.#.z"]), "mosaic.shop.msg.*.>");
        assert_eq!(filter(&["#.z"]), "mosaic.shop.msg.>");
        assert_eq!(filter(&["order.created", "payment.#"]), "mosaic.shop.msg.>");
        assert_eq!(filter(&[]), "mosaic.shop.msg.>");
    }

    /// NATS subject matching (`*` one token, `>` one or more at the end), for checking that
    /// every filter keeps at least what the exact topic rules accept.
    fn nats_matches(filter: &str, subject: &str) -> bool {
        let filter: Vec<&str> = filter.split('.').collect();
        let subject: Vec<&str> = subject.split('.').collect();
        for (index, token) in filter.iter().enumerate() {
            match *token {
                ">" => return subject.len() > index,
                "*" if index < subject.len() => {}
                literal if subject.get(index) == Some(&literal) => {}
                _ => return false,
            }
        }
        filter.len() == subject.len()
    }

    #[test]
    fn filters_keep_every_matching_topic_and_exact_ones_nothing_else() {
        let topics = [
            "order",
            "order.created",
            "order.created.eu",
            "order.paid",
            "order._",
            "payment",
            "payment.paid",
            "a.z",
            "a.b.c.z",
            "a.b.c",
            "_",
            "z",
        ];
        let patterns = [
            "order",
            "order.created",
            "order.*",
            "order.#",
            "*.paid",
            "#",
            "a.#.z",
            "#.z",
            "*.*",
        ];
        let names = names();
        for pattern in patterns {
            let filter = filter(&[pattern]);
            let exact = !pattern.split('.').rev().skip(1).any(|word| word == "#");
            for topic in topics {
                let wanted = crate::capability::messaging::topic_matches(pattern, topic);
                let kept = nats_matches(&filter, &names.topic_subject(topic));
                assert!(!wanted || kept, "{pattern} must keep {topic} (filter {filter})");
                if exact {
                    assert_eq!(kept, wanted, "{pattern} vs {topic} (filter {filter})");
                }
            }
        }
    }
}
