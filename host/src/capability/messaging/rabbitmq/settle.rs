//! Settling a RabbitMQ delivery: the ack, a dead letter stored in the dead queue before the
//! original is acked, and a requeue of a delivery dropped unsettled.

use std::sync::Arc;

use lapin::options::{BasicAckOptions, BasicNackOptions};
use lapin::types::{FieldTable, ShortString};
use lapin::{Acker, BasicProperties};

use super::connection::{within, Shared, OPERATION_TIMEOUT};
use super::dead_letters::fresh_message_id;
use super::headers::{
    number_value, text_value, ATTEMPTS_HEADER, DEAD_AT_HEADER, ERROR_HEADER, SUBSCRIBER_HEADER, TOPIC_HEADER,
};
use super::PERSISTENT;
use crate::capability::messaging::{now_unix_ms, BrokerError, NewDeadLetter, Settle};

/// The broker side of one delivery: its acker on the consumer's channel.
pub(super) struct RabbitMqSettle {
    pub(super) acker: Acker,
    pub(super) shared: Arc<Shared>,
    pub(super) subscriber: String,
    pub(super) settled: bool,
}

impl RabbitMqSettle {
    async fn ack_original(&mut self) -> Result<(), BrokerError> {
        self.settled = true;
        match within(OPERATION_TIMEOUT, self.acker.ack(BasicAckOptions::default())).await {
            Ok(true) => Ok(()),
            // lapin declines to ack on a channel that closed: RabbitMQ redelivers the message.
            Ok(false) => Err(BrokerError::Unavailable(format!(
                "the channel of this message to RabbitMQ at {} is closed; the message will be delivered again",
                self.shared.address
            ))),
            Err(failure) => Err(self.shared.explain("acknowledge a message", failure)),
        }
    }
}

#[async_trait::async_trait]
impl Settle for RabbitMqSettle {
    async fn ack(mut self: Box<Self>) -> Result<(), BrokerError> {
        self.ack_original().await
    }

    async fn failed_attempt(&self, _attempts: u32) -> Result<(), BrokerError> {
        // Classic queues cannot store a count; the message stays leased (unacked) while the
        // trigger retries it in place.
        Ok(())
    }

    async fn dead_letter(mut self: Box<Self>, letter: NewDeadLetter) -> Result<(), BrokerError> {
        let dead_at_ms = now_unix_ms();
        let mut headers = FieldTable::default();
        headers.insert(ShortString::from(TOPIC_HEADER), text_value(&letter.topic));
        headers.insert(ShortString::from(SUBSCRIBER_HEADER), text_value(&self.subscriber));
        headers.insert(
            ShortString::from(ATTEMPTS_HEADER),
            number_value(u64::from(letter.attempts)),
        );
        headers.insert(ShortString::from(ERROR_HEADER), text_value(&letter.error));
        headers.insert(ShortString::from(DEAD_AT_HEADER), number_value(dead_at_ms));
        let properties = BasicProperties::default()
            .with_delivery_mode(PERSISTENT)
            .with_timestamp(dead_at_ms)
            .with_message_id(ShortString::from(fresh_message_id()))
            .with_headers(headers);
        let dead_queue = self.shared.dead_queue_name(&self.subscriber);
        // Stored in the dead queue first, then acked: a crash in between leaves a copy in both
        // (delivered again), never in neither. On failure the delivery stays unsettled, and
        // dropping it requeues it.
        self.shared
            .publish_confirmed("", &dead_queue, &letter.payload, properties, true)
            .await?;
        self.ack_original().await
    }
}

impl Drop for RabbitMqSettle {
    fn drop(&mut self) {
        if self.settled || !self.acker.usable() {
            return;
        }
        // Dropped unsettled while its channel may stay open (the consumer lives on): hand the
        // message back now rather than when the consumer goes. Drop cannot await, and must not
        // panic outside a runtime.
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            let acker = self.acker.clone();
            runtime.spawn(async move {
                let requeue = BasicNackOptions {
                    requeue: true,
                    multiple: false,
                };
                let _ = within(OPERATION_TIMEOUT, acker.nack(requeue)).await;
            });
        }
    }
}
