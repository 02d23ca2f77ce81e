//! The consumer of one subscription: a channel of its own with the subscription's prefetch,
//! closed (and its unacked messages requeued) when the consumer is dropped.

use std::sync::Arc;

use futures_util::StreamExt;
use lapin::Channel;

use super::connection::{close_channel, Shared};
use super::headers::{header_text, timestamp_ms, TOPIC_HEADER, TRACEPARENT_HEADER};
use super::settle::RabbitMqSettle;
use super::CONFIG_HINT;
use crate::capability::messaging::{BrokerError, Consumer, Delivery};

/// A subscription's stream of deliveries, on a channel of its own. Dropping it closes the
/// channel, and RabbitMQ requeues whatever it had delivered and nobody acked.
pub(super) struct RabbitMqConsumer {
    pub(super) shared: Arc<Shared>,
    pub(super) subscriber: String,
    pub(super) queue: String,
    pub(super) deliveries: lapin::Consumer,
    /// Kept so that the channel lives exactly as long as the consumer.
    pub(super) channel: Channel,
}

impl Drop for RabbitMqConsumer {
    fn drop(&mut self) {
        // Close the channel now (RabbitMQ then requeues its unacked messages) and let the next
        // `consume` wait for that. Drop cannot await, and must not panic outside a runtime.
        let (Ok(runtime), Ok(closing)) = (
            tokio::runtime::Handle::try_current(),
            self.shared.closing.clone().try_read_owned(),
        ) else {
            return;
        };
        let channel = self.channel.clone();
        runtime.spawn(async move {
            close_channel(&channel).await;
            drop(closing);
        });
    }
}

#[async_trait::async_trait]
impl Consumer for RabbitMqConsumer {
    async fn next(&mut self) -> Result<Delivery, BrokerError> {
        let delivery = match self.deliveries.next().await {
            Some(Ok(delivery)) => delivery,
            Some(Err(err)) => {
                return Err(BrokerError::Unavailable(format!(
                    "the consumer of the queue {} on RabbitMQ at {} broke ({err}); is RabbitMQ running? {CONFIG_HINT}",
                    self.queue, self.shared.address
                )))
            }
            None => {
                return Err(BrokerError::Unavailable(format!(
                    "the consumer of the queue {} on RabbitMQ at {} was cancelled (the queue was deleted or the connection closed)",
                    self.queue, self.shared.address
                )))
            }
        };
        let headers = delivery.properties.headers();
        let topic = header_text(headers, TOPIC_HEADER).unwrap_or_else(|| delivery.routing_key.to_string());
        let published_at_ms = timestamp_ms(&delivery.properties);
        let traceparent = header_text(headers, TRACEPARENT_HEADER);
        Ok(Delivery {
            topic,
            payload: delivery.data,
            // Classic queues do not count deliveries; they only say whether this is a repeat.
            attempts: u32::from(delivery.redelivered),
            published_at_ms,
            traceparent,
            settle: Box::new(RabbitMqSettle {
                acker: delivery.acker,
                shared: self.shared.clone(),
                subscriber: self.subscriber.clone(),
                settled: false,
            }),
        })
    }
}
