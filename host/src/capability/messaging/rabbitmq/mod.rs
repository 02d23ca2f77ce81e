//! The RabbitMQ backend of [`Broker`] (AMQP 0-9-1 through `lapin`), for hosts that share a
//! RabbitMQ server (`[messaging] url = "amqp://..."` in mosaic.toml).
//!
//! Topology, per application namespace `<ns>`:
//! - a durable topic exchange `mosaic.<ns>`, to which every message is published with its
//!   channel as routing key (RabbitMQ's topic rules are ours: `*` one word, `#` zero or more);
//! - per subscribing component a durable classic queue `mosaic.<ns>.<subscriber>`, bound to the
//!   exchange once per channel pattern;
//! - per subscribing component a durable dead-letter queue `mosaic.<ns>.<subscriber>.dead`, to
//!   which the host copies a message (with headers saying why) before acking it away.
//!
//! One connection is shared by everything and opened lazily: a host starts while RabbitMQ is
//! down and every operation then fails quickly with an error saying so. Whenever a connection is
//! (re)opened the topology of every declared subscription is declared again before anything is
//! published on it, so that a message is never routed to a queue that is not there (RabbitMQ
//! would drop it silently).
//!
//! The parts: [`names`] (exchange and queue names), [`headers`] (what a message carries),
//! [`connection`] (the shared connection and its supervision), [`topology`] (declaring
//! exchanges, queues and bindings), [`publish`] (publisher confirms), [`consumer`] and
//! [`settle`] (deliveries and how they are settled) and [`dead_letters`] (listing and replay).

mod connection;
mod consumer;
mod dead_letters;
mod headers;
mod names;
mod publish;
mod settle;
mod topology;

use std::collections::BTreeMap;
use std::sync::Arc;

use lapin::options::{BasicConsumeOptions, BasicQosOptions, QueueDeclareOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::uri::AMQPUri;
use lapin::BasicProperties;
use tokio::sync::Mutex as AsyncMutex;

use self::connection::{close_channel, LinkState, Shared, HEARTBEAT_SECS, OPERATION_TIMEOUT};
use self::consumer::RabbitMqConsumer;
use self::headers::{text_value, TOPIC_HEADER, TRACEPARENT_HEADER};
use self::names::{sanitize, short};
use super::{now_unix_ms, Broker, BrokerError, Consumer, DeadLetter, SubscriptionSpec};
use crate::backends::redact_url;

/// AMQP delivery mode of a message that survives a broker restart.
const PERSISTENT: u8 = 2;

/// Where the operator sets the broker; said in every error about reaching it.
const CONFIG_HINT: &str = "The broker is set by [messaging] url in mosaic.toml";

/// A [`Broker`] on a RabbitMQ server.
pub struct RabbitMqBroker {
    shared: Arc<Shared>,
}

impl RabbitMqBroker {
    /// Never fails or hangs because the server is down: it only checks the URL; the connection
    /// is opened lazily on first use and re-opened after it breaks.
    pub async fn connect(url: &str, namespace: &str) -> Result<RabbitMqBroker, BrokerError> {
        let address = redact_url(url);
        let mut uri: AMQPUri = url.parse().map_err(|err| {
            BrokerError::Invalid(format!(
                "the RabbitMQ url `{address}` is not valid ({err}); write it as amqp://user:password@host:5672/%2f. {CONFIG_HINT}"
            ))
        })?;
        if uri.query.heartbeat.is_none() {
            uri.query.heartbeat = Some(HEARTBEAT_SECS);
        }
        let namespace = match sanitize(namespace) {
            sanitized if sanitized.is_empty() => "default".to_string(),
            sanitized => sanitized,
        };
        let exchange = format!("mosaic.{namespace}");
        short(&exchange, "exchange name")?;
        Ok(RabbitMqBroker {
            shared: Arc::new(Shared {
                uri,
                address,
                namespace,
                exchange,
                subscriptions: std::sync::Mutex::new(BTreeMap::new()),
                link: AsyncMutex::new(LinkState::default()),
                closing: Arc::default(),
            }),
        })
    }
}

#[async_trait::async_trait]
impl Broker for RabbitMqBroker {
    fn kind(&self) -> &'static str {
        "rabbitmq"
    }

    async fn declare(&self, subscriptions: &[SubscriptionSpec]) -> Result<(), BrokerError> {
        let shared = &self.shared;
        for subscription in subscriptions {
            short(&shared.dead_queue_name(&subscription.subscriber), "queue name")?;
            for pattern in &subscription.patterns {
                short(pattern, "binding key")?;
            }
        }
        // Remembered first: a connection opened from now on declares these too.
        let mut stale = Vec::new();
        {
            let mut remembered = shared
                .subscriptions
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            for subscription in subscriptions {
                let previous = remembered.insert(subscription.subscriber.clone(), subscription.clone());
                for pattern in previous.iter().flat_map(|previous| &previous.patterns) {
                    if !subscription.patterns.contains(pattern) {
                        stale.push((subscription.subscriber.clone(), pattern.clone()));
                    }
                }
            }
        }
        let link = shared.link().await?;
        let declared: BTreeMap<String, SubscriptionSpec> = subscriptions
            .iter()
            .map(|subscription| (subscription.subscriber.clone(), subscription.clone()))
            .collect();
        shared
            .declare_topology(&link.connection, &link.broken, &declared)
            .await?;
        shared.unbind(&link, &stale).await;
        Ok(())
    }

    async fn check(&self) -> Result<(), BrokerError> {
        let link = self.shared.link().await?;
        if link.usable() {
            Ok(())
        } else {
            Err(BrokerError::Unavailable(format!(
                "the connection to RabbitMQ at {} is closed; is RabbitMQ running? {CONFIG_HINT}",
                self.shared.address
            )))
        }
    }

    async fn publish(&self, topic: &str, payload: &[u8], traceparent: Option<&str>) -> Result<(), BrokerError> {
        let mut headers = FieldTable::default();
        headers.insert(ShortString::from(TOPIC_HEADER), text_value(topic));
        if let Some(traceparent) = traceparent {
            headers.insert(ShortString::from(TRACEPARENT_HEADER), text_value(traceparent));
        }
        let properties = BasicProperties::default()
            .with_delivery_mode(PERSISTENT)
            .with_timestamp(now_unix_ms())
            .with_headers(headers);
        // Not mandatory: a message no subscription matches is simply nobody's.
        self.shared
            .publish_confirmed(&self.shared.exchange, topic, payload, properties, false)
            .await
    }

    async fn consume(&self, subscription: &SubscriptionSpec, prefetch: u32) -> Result<Box<dyn Consumer>, BrokerError> {
        let shared = &self.shared;
        let known = shared.remembered().get(&subscription.subscriber) == Some(subscription);
        if !known {
            // Consuming implies the subscription exists; declaring it is cheap and idempotent.
            self.declare(std::slice::from_ref(subscription)).await?;
        }
        let queue_name = shared.queue_name(&subscription.subscriber);
        let queue = short(&queue_name, "queue name")?;
        // Bounded: a close that hangs must not stop consuming; RabbitMQ requeues on its own when
        // the connection goes.
        let _ = tokio::time::timeout(OPERATION_TIMEOUT, shared.closing.write()).await;
        let link = shared.link().await?;
        let channel = link
            .run(OPERATION_TIMEOUT, link.connection.create_channel())
            .await
            .map_err(|failure| shared.explain("open a channel", failure))?;
        let prefetch = u16::try_from(prefetch.max(1)).unwrap_or(u16::MAX);
        link.run(
            OPERATION_TIMEOUT,
            channel.basic_qos(prefetch, BasicQosOptions::default()),
        )
        .await
        .map_err(|failure| shared.explain("set the prefetch of a consumer", failure))?;
        let tag = format!(
            "mosaic-{}-{:016x}",
            sanitize(&subscription.subscriber),
            rand::random::<u64>()
        );
        let deliveries = link
            .run(
                OPERATION_TIMEOUT,
                channel.basic_consume(
                    queue,
                    short(&tag, "consumer tag")?,
                    BasicConsumeOptions {
                        no_ack: false,
                        ..BasicConsumeOptions::default()
                    },
                    FieldTable::default(),
                ),
            )
            .await
            .map_err(|failure| {
                if failure.is_not_found() {
                    BrokerError::Invalid(format!(
                        "RabbitMQ at {} has no queue {queue_name}; it is created when the subscription is declared",
                        shared.address
                    ))
                } else {
                    shared.explain(&format!("consume from the queue {queue_name}"), failure)
                }
            })?;
        Ok(Box::new(RabbitMqConsumer {
            shared: shared.clone(),
            subscriber: subscription.subscriber.clone(),
            queue: queue_name,
            deliveries,
            channel,
        }))
    }

    async fn pending(&self, subscriber: &str) -> Result<u64, BrokerError> {
        let shared = &self.shared;
        let queue_name = shared.queue_name(subscriber);
        let queue = short(&queue_name, "queue name")?;
        let link = shared.link().await?;
        // A channel of its own: a passive declare of a missing queue closes its channel.
        let channel = link
            .run(OPERATION_TIMEOUT, link.connection.create_channel())
            .await
            .map_err(|failure| shared.explain("open a channel", failure))?;
        let passive = QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        };
        let declared = link
            .run(
                OPERATION_TIMEOUT,
                channel.queue_declare(queue, passive, FieldTable::default()),
            )
            .await;
        close_channel(&channel).await;
        match declared {
            Ok(queue) => Ok(u64::from(queue.message_count())),
            Err(failure) if failure.is_not_found() => Err(BrokerError::Invalid(format!(
                "RabbitMQ at {} has no queue {queue_name}: `{subscriber}` is not a subscriber of this application",
                shared.address
            ))),
            Err(failure) => Err(shared.explain(&format!("count the messages of the queue {queue_name}"), failure)),
        }
    }

    async fn dead_letters(&self, subscriber: Option<&str>) -> Result<Vec<DeadLetter>, BrokerError> {
        self.shared.list_dead_letters(subscriber).await
    }

    async fn replay(&self, subscriber: Option<&str>, ids: &[String]) -> Result<Vec<DeadLetter>, BrokerError> {
        self.shared.replay_dead_letters(subscriber, ids).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connecting_only_checks_the_url() {
        let broker = RabbitMqBroker::connect("amqp://user:secret@127.0.0.1:1/%2f", "my app")
            .await
            .expect("no connection is made yet");
        assert_eq!(broker.shared.exchange, "mosaic.my_app");
        assert!(!broker.shared.address.contains("secret"));
        assert!(RabbitMqBroker::connect("http://[bad", "app").await.is_err());
    }
}
