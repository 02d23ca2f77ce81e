//! Declaring what a namespace needs on RabbitMQ: the topic exchange, each subscriber's queue,
//! its bindings and its dead-letter queue, and removing bindings a subscription dropped.

use std::collections::BTreeMap;
use std::sync::atomic::AtomicBool;

use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Connection, ExchangeKind};

use super::connection::{close_channel, guarded, within, Link, Shared, OPERATION_TIMEOUT};
use super::headers::text_value;
use super::names::short;
use crate::capability::messaging::{BrokerError, SubscriptionSpec};

impl Shared {
    /// Declares the exchange and, for each subscription, its queue, its bindings and its dead
    /// queue; on a channel of its own so that a refused declaration harms nothing else.
    pub(super) async fn declare_topology(
        &self,
        connection: &Connection,
        broken: &AtomicBool,
        subscriptions: &BTreeMap<String, SubscriptionSpec>,
    ) -> Result<(), BrokerError> {
        let channel = guarded(broken, OPERATION_TIMEOUT, connection.create_channel())
            .await
            .map_err(|failure| self.explain("open a channel", failure))?;
        let result = self.declare_on(&channel, broken, subscriptions.values()).await;
        close_channel(&channel).await;
        result
    }

    async fn declare_on<'a>(
        &self,
        channel: &Channel,
        broken: &AtomicBool,
        subscriptions: impl Iterator<Item = &'a SubscriptionSpec>,
    ) -> Result<(), BrokerError> {
        let exchange = short(&self.exchange, "exchange name")?;
        let durable = ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        };
        let kind = ExchangeKind::Topic;
        guarded(
            broken,
            OPERATION_TIMEOUT,
            channel.exchange_declare(exchange.clone(), kind, durable, FieldTable::default()),
        )
        .await
        .map_err(|failure| self.explain(&format!("declare the exchange {}", self.exchange), failure))?;

        let mut classic = FieldTable::default();
        classic.insert(ShortString::from("x-queue-type"), text_value("classic"));
        for subscription in subscriptions {
            let queue_name = self.queue_name(&subscription.subscriber);
            let dead_name = self.dead_queue_name(&subscription.subscriber);
            for name in [&queue_name, &dead_name] {
                let queue = short(name, "queue name")?;
                let declare = channel.queue_declare(queue, QueueDeclareOptions::durable(), classic.clone());
                guarded(broken, OPERATION_TIMEOUT, declare)
                    .await
                    .map_err(|failure| self.explain(&format!("declare the queue {name}"), failure))?;
            }
            let queue = short(&queue_name, "queue name")?;
            for pattern in &subscription.patterns {
                let bind = channel.queue_bind(
                    queue.clone(),
                    exchange.clone(),
                    short(pattern, "binding key")?,
                    QueueBindOptions::default(),
                    FieldTable::default(),
                );
                guarded(broken, OPERATION_TIMEOUT, bind)
                    .await
                    .map_err(|failure| self.explain(&format!("bind the queue {queue_name} to `{pattern}`"), failure))?;
            }
        }
        Ok(())
    }

    /// Removes the bindings of patterns a subscription no longer has. Best effort: a binding
    /// left behind only brings the subscriber messages it no longer asked for, so a failure is
    /// logged rather than failing the declaration.
    pub(super) async fn unbind(&self, link: &Link, stale: &[(String, String)]) {
        if stale.is_empty() {
            return;
        }
        let Ok(channel) = link.run(OPERATION_TIMEOUT, link.connection.create_channel()).await else {
            return;
        };
        let Ok(exchange) = short(&self.exchange, "exchange name") else {
            return;
        };
        for (subscriber, pattern) in stale {
            let queue = self.queue_name(subscriber);
            let (Ok(queue_key), Ok(pattern_key)) = (short(&queue, "queue name"), short(pattern, "binding key")) else {
                continue;
            };
            let unbound = within(
                OPERATION_TIMEOUT,
                channel.queue_unbind(queue_key, exchange.clone(), pattern_key, FieldTable::default()),
            )
            .await;
            if unbound.is_err() {
                tracing::warn!(broker = %self.address, %queue, %pattern, "could not remove a stale binding");
                break;
            }
        }
        close_channel(&channel).await;
    }
}
