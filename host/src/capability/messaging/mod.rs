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
pub mod settings;

use std::path::Path;
use std::sync::Arc;

use serde::Serialize;

use self::settings::{BrokerKind, MessagingSettings};
use crate::observe::{SpanKind, TraceContext};

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
    /// The W3C `traceparent` of the publisher's span, so that the delivery continues its trace.
    pub traceparent: Option<String>,
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
    /// The payload as it was published. A `payload_hex` that is not hex is an error naming the
    /// letter, never an empty payload: replaying it would deliver a message nobody sent.
    pub fn payload_bytes(&self) -> Result<Vec<u8>, BrokerError> {
        match (&self.payload, &self.payload_hex) {
            (Some(text), _) => Ok(text.as_bytes().to_vec()),
            (None, Some(hex)) => hex::decode(hex).map_err(|err| {
                BrokerError::Invalid(format!(
                    "the payload of dead letter {} is not valid hex ({err}); it was not replayed (see `mosaic dlq list`)",
                    self.id
                ))
            }),
            (None, None) => Ok(Vec::new()),
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

#[cfg(test)]
mod dead_letter_tests {
    use super::*;

    fn letter(payload: Option<&str>, payload_hex: Option<&str>) -> DeadLetter {
        DeadLetter {
            id: "42".to_string(),
            subscriber: "billing".to_string(),
            topic: "payment.failed".to_string(),
            payload: payload.map(str::to_string),
            payload_hex: payload_hex.map(str::to_string),
            attempts: 3,
            error: "handler returned an error".to_string(),
            dead_at_ms: 0,
        }
    }

    #[test]
    fn a_payload_that_is_not_hex_is_an_error_naming_the_letter() {
        let err = letter(None, Some("zz-not-hex"))
            .payload_bytes()
            .expect_err("not hex must not replay as an empty payload");
        assert!(
            matches!(&err, BrokerError::Invalid(text) if text.contains("dead letter 42")),
            "{err}"
        );
        assert_eq!(
            letter(None, Some("ff0010")).payload_bytes().ok(),
            Some(vec![0xff, 0x00, 0x10])
        );
        assert_eq!(letter(Some("text"), None).payload_bytes().ok(), Some(b"text".to_vec()));
        assert_eq!(letter(None, None).payload_bytes().ok(), Some(Vec::new()));
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
    /// checked with [`check_topic`]; `traceparent` (the publisher's trace) travels with the
    /// message to every delivery of it.
    async fn publish(&self, topic: &str, payload: &[u8], traceparent: Option<&str>) -> Result<(), BrokerError>;

    /// Whether the broker is reachable and serving now (for `/readyz`); an error says why not.
    async fn check(&self) -> Result<(), BrokerError>;

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
    /// Publishes for a guest serving `trace`; returns once the broker holds the message
    /// durably. The message carries the trace on to its deliveries: as the publish's producer
    /// span when spans are exported, else as the guest's request span.
    pub async fn publish(&self, topic: &str, payload: &[u8], trace: Option<&TraceContext>) -> Result<(), BrokerError> {
        let (mut span, passed_on) = self.metrics.spans().child(trace, SpanKind::Producer, "");
        if span.is_recording() {
            span.rename(format!("publish {topic}"));
            span.set("messaging.system", self.broker.kind());
            span.set_str("messaging.destination.name", topic);
            span.set("messaging.operation.type", "send");
            span.set("messaging.operation.name", "publish");
            span.set("messaging.message.body.size", payload.len() as i64);
        }
        let outcome = self.publish_checked(topic, payload, passed_on.as_ref().or(trace)).await;
        span.end_with(outcome, ToString::to_string)
    }

    async fn publish_checked(
        &self,
        topic: &str,
        payload: &[u8],
        trace: Option<&TraceContext>,
    ) -> Result<(), BrokerError> {
        check_topic(topic)?;
        if payload.len() as u64 > self.max_message_bytes {
            return Err(BrokerError::Invalid(format!(
                "the message to `{topic}` is {} bytes, over the limit of {} (messaging.max_message_bytes in mosaic.toml)",
                payload.len(),
                self.max_message_bytes
            )));
        }
        let traceparent = trace.map(TraceContext::header_value);
        let outcome = self.broker.publish(topic, payload, traceparent.as_deref()).await;
        self.metrics.record_publish(topic, outcome.is_ok());
        if let Err(BrokerError::Unavailable(_)) = &outcome {
            self.metrics.record_backend_error("messaging", self.broker.kind());
        }
        outcome
    }
}

// Channel names, patterns and subscriptions live in the `mosaic-manifest` crate (the manifest
// checks `[[trigger.redis]]` channels with them, and it is fuzzed on its own).
pub use mosaic_manifest::topics::{
    check_pattern, check_topic, topic_matches, SubscriptionSpec, TopicError, MAX_TOPIC_BYTES,
};

impl From<TopicError> for BrokerError {
    fn from(error: TopicError) -> Self {
        BrokerError::Invalid(error.0)
    }
}

pub use crate::clock::now_unix_ms;

/// The messaging capability, app-wide: the broker every publish and subscription goes
/// through (chosen by `[messaging] broker`), the publish cap and the subscribing components.
/// Guests publish through `fermyon:spin/redis` (see `redis_client`), with a [`Publisher`].
pub struct Messaging {
    pub broker: SharedBroker,
    max_message_bytes: u64,
    metrics: Arc<crate::observe::Metrics>,
    subscribers: Vec<String>,
}

impl Messaging {
    pub fn new(
        broker: SharedBroker,
        max_message_bytes: u64,
        metrics: Arc<crate::observe::Metrics>,
        subscriptions: &[SubscriptionSpec],
    ) -> Messaging {
        Messaging {
            broker,
            max_message_bytes,
            metrics,
            subscribers: subscriptions.iter().map(|s| s.subscriber.clone()).collect(),
        }
    }

    /// The handle an instance publishes through.
    pub fn publisher(&self) -> Publisher {
        Publisher {
            broker: self.broker.clone(),
            max_message_bytes: self.max_message_bytes,
            metrics: self.metrics.clone(),
        }
    }
}

/// Guests publish through `fermyon:spin/redis` (the Redis client's interface): messaging links
/// nothing of its own, and an instance holds no state of it.
impl super::GuestCapability for Messaging {
    type Instance = ();

    fn instance(self: &Arc<Self>, _component: &super::grants::ComponentSpec) {}

    fn add_to_linker<T: super::HasInstance<()> + Send + 'static>(
        _linker: &mut wasmtime::component::Linker<T>,
    ) -> anyhow::Result<()> {
        Ok(())
    }
}

/// How long `/metrics` waits for the broker to count one subscriber's pending messages.
const PENDING_SCRAPE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(1);

#[async_trait::async_trait]
impl super::Capability for Messaging {
    async fn readiness(&self) -> Vec<super::Check> {
        vec![super::bounded_check(format!("broker {}", self.broker.kind()), self.broker.check()).await]
    }

    async fn scrape(&self, into: &mut super::Scrape) {
        for subscriber in &self.subscribers {
            let waiting = self.broker.pending(subscriber);
            if let Ok(Ok(waiting)) = tokio::time::timeout(PENDING_SCRAPE_TIMEOUT, waiting).await {
                into.pending.push((subscriber.clone(), waiting));
            }
        }
    }
}
