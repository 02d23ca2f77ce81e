//! The dead-letter queues: taking their letters (unacked, so that closing the channel puts them
//! back in order), listing them, and replaying them to their subscriber's own queue.

use std::collections::BTreeSet;

use lapin::options::{BasicAckOptions, BasicGetOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Acker, BasicProperties, Channel};
use sha2::{Digest, Sha256};

use super::connection::{close_channel, within, Link, Shared, OPERATION_TIMEOUT};
use super::headers::{
    header_number, header_text, text_value, timestamp_ms, ATTEMPTS_HEADER, DEAD_AT_HEADER, ERROR_HEADER,
    SUBSCRIBER_HEADER, TOPIC_HEADER,
};
use super::names::short;
use super::PERSISTENT;
use crate::capability::messaging::{now_unix_ms, BrokerError, DeadLetter, NewDeadLetter};

/// A fresh id for a dead letter, unique across hosts.
pub(super) fn fresh_message_id() -> String {
    format!("{:032x}", rand::random::<u128>())
}

/// An id for a dead letter that lacks a message id (put there by something other than Mosaic):
/// derived from its content, so that it stays the same from one listing to the next.
fn content_id(topic: &str, payload: &[u8], dead_at_ms: u64) -> String {
    let mut digest = Sha256::new();
    digest.update(topic.as_bytes());
    digest.update([0]);
    digest.update(payload);
    digest.update(dead_at_ms.to_be_bytes());
    format!("sha256-{}", hex::encode(&digest.finalize()[..12]))
}

impl Shared {
    /// Takes every message of `subscriber`'s dead queue on a fresh channel, unacked: they stay
    /// taken until they are acked or the returned channel closes (which requeues them in order).
    pub(super) async fn take_dead_letters(
        &self,
        link: &Link,
        subscriber: &str,
    ) -> Result<(Channel, Vec<(DeadLetter, Acker)>), BrokerError> {
        let dead_name = self.dead_queue_name(subscriber);
        let dead_queue = short(&dead_name, "queue name")?;
        let channel = link
            .run(OPERATION_TIMEOUT, link.connection.create_channel())
            .await
            .map_err(|failure| self.explain("open a channel", failure))?;
        let mut letters = Vec::new();
        loop {
            let got = link
                .run(
                    OPERATION_TIMEOUT,
                    channel.basic_get(dead_queue.clone(), BasicGetOptions { no_ack: false }),
                )
                .await;
            let message = match got {
                Ok(Some(message)) => message,
                Ok(None) => break,
                Err(failure) => {
                    close_channel(&channel).await;
                    return Err(if failure.is_not_found() {
                        BrokerError::Invalid(format!(
                            "RabbitMQ at {} has no dead-letter queue {dead_name}: `{subscriber}` is not a subscriber of this application",
                            self.address
                        ))
                    } else {
                        self.explain(&format!("read the dead-letter queue {dead_name}"), failure)
                    });
                }
            };
            let delivery = message.delivery;
            let headers = delivery.properties.headers();
            let topic = header_text(headers, TOPIC_HEADER).unwrap_or_else(|| delivery.routing_key.to_string());
            let dead_at_ms = header_number(headers, DEAD_AT_HEADER)
                .or_else(|| timestamp_ms(&delivery.properties))
                .unwrap_or(0);
            let id = match delivery.properties.message_id() {
                Some(id) => id.to_string(),
                None => content_id(&topic, &delivery.data, dead_at_ms),
            };
            let letter = NewDeadLetter {
                topic,
                attempts: header_number(headers, ATTEMPTS_HEADER)
                    .map_or(0, |attempts| u32::try_from(attempts).unwrap_or(u32::MAX)),
                error: header_text(headers, ERROR_HEADER).unwrap_or_default(),
                published_at_ms: None,
                payload: delivery.data,
            };
            let owner = header_text(headers, SUBSCRIBER_HEADER).unwrap_or_else(|| subscriber.to_string());
            letters.push((DeadLetter::new(id, owner, &letter, dead_at_ms), delivery.acker));
        }
        Ok((channel, letters))
    }

    /// The subscribers a dead-letter operation covers.
    pub(super) fn subscribers(&self, subscriber: Option<&str>) -> Vec<String> {
        match subscriber {
            Some(subscriber) => vec![subscriber.to_string()],
            None => self.remembered().into_keys().collect(),
        }
    }

    /// Every dead letter (of `subscriber`, if given), oldest first; they all stay stored.
    pub(super) async fn list_dead_letters(&self, subscriber: Option<&str>) -> Result<Vec<DeadLetter>, BrokerError> {
        let shared = self;
        let link = shared.link().await?;
        let mut all = Vec::new();
        for subscriber in shared.subscribers(subscriber) {
            let (channel, letters) = shared.take_dead_letters(&link, &subscriber).await?;
            // Listing is read-only: closing the channel puts every letter back, in order.
            close_channel(&channel).await;
            all.extend(letters.into_iter().map(|(letter, _)| letter));
        }
        // Each queue is oldest first already; the sort (stable) interleaves subscribers.
        all.sort_by_key(|letter| letter.dead_at_ms);
        Ok(all)
    }

    /// Replays the dead letters of `ids` (every one when empty), optionally of one subscriber;
    /// see [`Broker::replay`](crate::capability::messaging::Broker::replay).
    pub(super) async fn replay_dead_letters(
        &self,
        subscriber: Option<&str>,
        ids: &[String],
    ) -> Result<Vec<DeadLetter>, BrokerError> {
        let shared = self;
        let link = shared.link().await?;
        // Everything is taken first, so that an unknown id is reported before anything moves.
        let mut taken = Vec::new();
        for subscriber in shared.subscribers(subscriber) {
            match shared.take_dead_letters(&link, &subscriber).await {
                Ok((channel, letters)) => taken.push((subscriber, channel, letters)),
                Err(err) => {
                    for (_, channel, _) in &taken {
                        close_channel(channel).await;
                    }
                    return Err(err);
                }
            }
        }
        let wanted: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
        let found: BTreeSet<&str> = taken
            .iter()
            .flat_map(|(_, _, letters)| letters.iter().map(|(letter, _)| letter.id.as_str()))
            .collect();
        let missing: Vec<&str> = wanted.difference(&found).copied().collect();
        if !missing.is_empty() {
            for (_, channel, _) in &taken {
                close_channel(channel).await;
            }
            return Err(BrokerError::Invalid(format!(
                "no dead letter with id {} (see `mosaic dlq list`); nothing was replayed",
                missing.join(", ")
            )));
        }

        // Every payload is decoded before anything moves, so that one unreadable letter replays none.
        let mut payloads = Vec::new();
        for (_, _, letters) in &taken {
            for (letter, _) in letters {
                if !wanted.is_empty() && !wanted.contains(letter.id.as_str()) {
                    continue;
                }
                match letter.payload_bytes() {
                    Ok(payload) => payloads.push(payload),
                    Err(err) => {
                        for (_, channel, _) in &taken {
                            close_channel(channel).await;
                        }
                        return Err(err);
                    }
                }
            }
        }
        let mut payloads = payloads.into_iter();

        let mut replayed = Vec::new();
        let mut failure = None;
        'subscribers: for (subscriber, _, letters) in &taken {
            let queue = shared.queue_name(subscriber);
            for (letter, acker) in letters {
                if !wanted.is_empty() && !wanted.contains(letter.id.as_str()) {
                    continue;
                }
                // Decoded above for exactly these letters, in this order.
                let payload = payloads.next().unwrap_or_default();
                let mut headers = FieldTable::default();
                headers.insert(ShortString::from(TOPIC_HEADER), text_value(&letter.topic));
                let properties = BasicProperties::default()
                    .with_delivery_mode(PERSISTENT)
                    .with_timestamp(now_unix_ms())
                    .with_headers(headers);
                // Straight to the subscriber's own queue through the default exchange: the other
                // subscribers of the topic handled the message already.
                let sent = shared.publish_confirmed("", &queue, &payload, properties, true).await;
                let acked = match sent {
                    Ok(()) => within(OPERATION_TIMEOUT, acker.ack(BasicAckOptions::default())).await,
                    Err(err) => {
                        failure = Some(err);
                        break 'subscribers;
                    }
                };
                if !matches!(acked, Ok(true)) {
                    // Replayed, but still in the dead queue: it would be replayed twice.
                    failure = Some(BrokerError::Unavailable(format!(
                        "RabbitMQ at {} lost the channel while removing dead letter {} after replaying it; it is still listed",
                        shared.address, letter.id
                    )));
                    replayed.push(letter.clone());
                    break 'subscribers;
                }
                replayed.push(letter.clone());
            }
        }
        // The letters not replayed go back to their dead queue.
        for (_, channel, _) in &taken {
            close_channel(channel).await;
        }
        let Some(err) = failure else {
            return Ok(replayed);
        };
        let done: Vec<&str> = replayed.iter().map(|letter| letter.id.as_str()).collect();
        let done = if done.is_empty() {
            "none".to_string()
        } else {
            done.join(", ")
        };
        Err(match err {
            BrokerError::Unavailable(message) => {
                BrokerError::Unavailable(format!("{message} (replayed before the failure: {done})"))
            }
            BrokerError::Invalid(message) => {
                BrokerError::Invalid(format!("{message} (replayed before the failure: {done})"))
            }
        })
    }
}
