//! Durable messaging between components. A guest publishes with `fermyon:spin/redis`
//! `publish(channel, payload)`; a component with `[[trigger.redis]]` receives the messages of its
//! channel patterns (RabbitMQ topic rules: `*` one word, `#` zero or more words) through
//! `fermyon:spin/inbound-redis`. Spin gives these interfaces Redis pub/sub (at-most-once);
//! Mosaic gives them a durable subscription per subscribing component: at-least-once, retries
//! with backoff, and a dead-letter store after `max_deliver` attempts.
//!
//! Which broker carries the messages is host configuration (`[messaging]` in mosaic.toml),
//! never component code: [`embedded`] (a SQLite log in the state directory, the default),
//! [`rabbitmq`] (lapin) or [`nats`] (JetStream). The trigger (`trigger::messages`) sees only
//! the [`Broker`] trait.

pub mod embedded;
pub mod nats;
pub mod rabbitmq;

use std::path::Path;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use serde::Serialize;

use crate::settings::{BrokerKind, MessagingSettings};

/// What failed in the broker, said so that an operator knows what to do.
#[derive(Debug, Clone, thiserror::Error)]
pub enum BrokerError {
    /// The broker cannot be reached or refused the operation; the message was not accepted.
    #[error("{0}")]
    Unavailable(String),
    /// The request itself is wrong (a bad channel name, an oversized payload, an unknown id).
    #[error("{0}")]
    Invalid(String),
}

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

/// A message handed to a subscriber. Settle it with [`Delivery::ack`] or
/// [`Delivery::dead_letter`]; one dropped unsettled is redelivered (by the broker when its
/// lease lapses, or after a restart).
pub struct Delivery {
    pub topic: String,
    pub payload: Vec<u8>,
    /// Attempts already made on this message that the broker knows of (0 on a first delivery).
    pub attempts: u32,
    /// When the message was published, if the broker keeps that (for lag and latency).
    pub published_at_ms: Option<u64>,
    pub settle: Box<dyn Settle>,
}

impl Delivery {
    pub async fn ack(self) -> Result<(), BrokerError> {
        self.settle.ack().await
    }

    /// Records a failed attempt where the broker can keep it (so that a restart does not reset
    /// the count) and keeps the message leased while it waits for its retry.
    pub async fn failed_attempt(&self, attempts: u32) -> Result<(), BrokerError> {
        self.settle.failed_attempt(attempts).await
    }

    /// Moves the message to the dead-letter store and removes it from the queue.
    pub async fn dead_letter(self, attempts: u32, error: &str) -> Result<(), BrokerError> {
        let letter = NewDeadLetter {
            topic: self.topic,
            payload: self.payload,
            attempts,
            error: error.to_string(),
            published_at_ms: self.published_at_ms,
        };
        self.settle.dead_letter(letter).await
    }
}

/// A message on its way to the dead-letter store.
#[derive(Debug, Clone)]
pub struct NewDeadLetter {
    pub topic: String,
    pub payload: Vec<u8>,
    pub attempts: u32,
    pub error: String,
    pub published_at_ms: Option<u64>,
}

/// The broker side of one delivery.
#[async_trait::async_trait]
pub trait Settle: Send + Sync {
    async fn ack(self: Box<Self>) -> Result<(), BrokerError>;
    async fn failed_attempt(&self, attempts: u32) -> Result<(), BrokerError>;
    async fn dead_letter(self: Box<Self>, letter: NewDeadLetter) -> Result<(), BrokerError>;
}

/// A stream of deliveries for one subscription.
#[async_trait::async_trait]
pub trait Consumer: Send {
    /// The next delivery; waits while the queue is empty. An error means the consumer is
    /// broken (the broker went away): drop it and consume again later.
    async fn next(&mut self) -> Result<Delivery, BrokerError>;
}

/// A message in the dead-letter store.
#[derive(Debug, Clone, Serialize, serde::Deserialize, PartialEq, Eq)]
pub struct DeadLetter {
    /// The broker's id of the dead letter, for `mosaic dlq replay ID`.
    pub id: String,
    pub subscriber: String,
    pub topic: String,
    /// The payload as text when it is UTF-8, else hex (`payload_hex`).
    pub payload: Option<String>,
    pub payload_hex: Option<String>,
    pub attempts: u32,
    pub error: String,
    pub dead_at_ms: u64,
}

impl DeadLetter {
    pub fn payload_bytes(&self) -> Vec<u8> {
        match (&self.payload, &self.payload_hex) {
            (Some(text), _) => text.as_bytes().to_vec(),
            (None, Some(hex)) => hex::decode(hex).unwrap_or_default(),
            (None, None) => Vec::new(),
        }
    }

    pub fn new(id: String, subscriber: String, letter: &NewDeadLetter, dead_at_ms: u64) -> Self {
        let (payload, payload_hex) = match std::str::from_utf8(&letter.payload) {
            Ok(text) => (Some(text.to_string()), None),
            Err(_) => (None, Some(hex::encode(&letter.payload))),
        };
        Self {
            id,
            subscriber,
            topic: letter.topic.clone(),
            payload,
            payload_hex,
            attempts: letter.attempts,
            error: letter.error.clone(),
            dead_at_ms,
        }
    }
}

/// A message broker. Implementations keep every accepted message until a subscriber acks it
/// or it is dead-lettered, and survive a restart of the host.
#[async_trait::async_trait]
pub trait Broker: Send + Sync {
    /// `embedded`, `rabbitmq` or `nats`.
    fn kind(&self) -> &'static str;

    /// Creates (or updates) the durable queue of each subscription, so that every message
    /// published from now on is kept for it. Called before any component runs.
    async fn declare(&self, subscriptions: &[SubscriptionSpec]) -> Result<(), BrokerError>;

    /// Publishes one message; returns once the broker has accepted it durably. `topic` was
    /// checked with [`check_topic`].
    async fn publish(&self, topic: &str, payload: &[u8]) -> Result<(), BrokerError>;

    /// Starts consuming one declared subscription; up to `prefetch` messages are leased ahead.
    async fn consume(&self, subscription: &SubscriptionSpec, prefetch: u32) -> Result<Box<dyn Consumer>, BrokerError>;

    /// Messages waiting for `subscriber` (published, not yet acked or dead-lettered).
    async fn pending(&self, subscriber: &str) -> Result<u64, BrokerError>;

    /// The dead-letter store, oldest first, optionally of one subscriber.
    async fn dead_letters(&self, subscriber: Option<&str>) -> Result<Vec<DeadLetter>, BrokerError>;

    /// Sends dead letters back to their subscriber's queue (only that subscriber's) and removes
    /// them from the store: those of `ids`, or every one (of `subscriber`, if given) when `ids`
    /// is empty. Returns the letters replayed.
    async fn replay(&self, subscriber: Option<&str>, ids: &[String]) -> Result<Vec<DeadLetter>, BrokerError>;
}

/// The shared broker of a host.
pub type SharedBroker = Arc<dyn Broker>;

/// The broker `[messaging]` of mosaic.toml chooses. The embedded one keeps its log in
/// `STATE_DIR/messages.db`; `namespace` keeps this application's queues apart on a shared
/// broker.
pub async fn open(
    settings: &MessagingSettings,
    state_dir: &Path,
    namespace: &str,
) -> Result<SharedBroker, BrokerError> {
    let url = settings.url.as_deref().unwrap_or_default();
    Ok(match settings.broker {
        BrokerKind::Embedded => Arc::new(embedded::EmbeddedBroker::open(&state_dir.join("messages.db")).await?),
        BrokerKind::RabbitMQ => Arc::new(rabbitmq::RabbitMqBroker::connect(url, namespace).await?),
        BrokerKind::Nats => Arc::new(nats::NatsBroker::connect(url, namespace).await?),
    })
}

/// What a guest's `publish` goes through: the host's broker, with the payload cap and the
/// publish metrics.
#[derive(Clone)]
pub struct Publisher {
    pub broker: SharedBroker,
    pub max_message_bytes: u64,
    pub metrics: Arc<crate::observe::Metrics>,
}

impl Publisher {
    /// Publishes for a guest; returns once the broker holds the message durably.
    pub async fn publish(&self, topic: &str, payload: &[u8]) -> Result<(), BrokerError> {
        check_topic(topic)?;
        if payload.len() as u64 > self.max_message_bytes {
            return Err(BrokerError::Invalid(format!(
                "the message to `{topic}` is {} bytes, over the limit of {} (messaging.max_message_bytes in mosaic.toml)",
                payload.len(),
                self.max_message_bytes
            )));
        }
        let outcome = self.broker.publish(topic, payload).await;
        self.metrics.record_publish(topic, outcome.is_ok());
        outcome
    }
}

/// The longest channel name (RabbitMQ's routing-key limit).
pub const MAX_TOPIC_BYTES: usize = 255;

/// A topic a message is published to: dot-separated words, each non-empty, made of letters,
/// digits, `-`, `_`, `:` or `/`, with no wildcard. Every backend accepts such a name.
pub fn check_topic(topic: &str) -> Result<(), BrokerError> {
    check_words(topic, false)
}

/// A subscription pattern: like a topic, and a word may also be `*` (exactly one word) or `#`
/// (zero or more words).
pub fn check_pattern(pattern: &str) -> Result<(), BrokerError> {
    check_words(pattern, true)
}

fn check_words(name: &str, wildcards: bool) -> Result<(), BrokerError> {
    let what = if wildcards { "channel pattern" } else { "channel" };
    if name.is_empty() {
        return Err(BrokerError::Invalid(format!("the {what} is empty")));
    }
    if name.len() > MAX_TOPIC_BYTES {
        return Err(BrokerError::Invalid(format!(
            "the {what} `{}...` is {} bytes; the longest allowed is {MAX_TOPIC_BYTES}",
            &name[..name.char_indices().nth(32).map_or(name.len(), |(at, _)| at)],
            name.len()
        )));
    }
    for word in name.split('.') {
        let wildcard = word == "*" || word == "#";
        if wildcard && !wildcards {
            return Err(BrokerError::Invalid(format!(
                "the channel `{name}` holds the wildcard `{word}`; publish to a concrete channel (wildcards belong in a [[trigger.redis]] channel)"
            )));
        }
        if wildcard {
            continue;
        }
        if word.is_empty() {
            return Err(BrokerError::Invalid(format!(
                "the {what} `{name}` has an empty word; words are separated by single dots"
            )));
        }
        if let Some(bad) = word
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | ':' | '/')))
        {
            return Err(BrokerError::Invalid(format!(
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

fn words_match(pattern: &[&str], topic: &[&str]) -> bool {
    match pattern.split_first() {
        None => topic.is_empty(),
        Some((&"#", rest)) => (0..=topic.len()).any(|skip| words_match(rest, &topic[skip..])),
        Some((word, rest)) => match topic.split_first() {
            Some((first, topic_rest)) => (*word == "*" || word == first) && words_match(rest, topic_rest),
            None => false,
        },
    }
}

pub fn now_unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|elapsed| elapsed.as_millis() as u64)
        .unwrap_or(0)
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
    fn names_are_checked() {
        assert!(check_topic("order.created").is_ok());
        assert!(check_topic("tenant-1:orders/eu_west").is_ok());
        for bad in ["", "a..b", ".a", "a.", "a b", "order.*", "order.#", "naïve"] {
            assert!(check_topic(bad).is_err(), "{bad:?}");
        }
        assert!(check_topic(&"a".repeat(256)).is_err());
        assert!(check_pattern("order.*").is_ok() && check_pattern("#").is_ok() && check_pattern("a.#.b").is_ok());
        assert!(check_pattern("a.b*").is_err() && check_pattern("a..b").is_err());
    }
}
