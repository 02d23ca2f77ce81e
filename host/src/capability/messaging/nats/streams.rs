//! Creating the streams and the durable consumers on first use and again after a failure (a
//! stream deleted, or a server that restarted without its data), and publishing to the
//! message stream with one repair when it turns out to be gone.

use std::sync::atomic::Ordering;

use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::jetstream::stream::{self, RetentionPolicy, StorageType};
use async_nats::HeaderMap;

use super::names::subject_token;
use super::settle::ACK_WAIT;
use super::NatsBroker;
use crate::capability::messaging::{BrokerError, SubscriptionSpec};

/// Deliveries a consumer may hold unacked; raised to the prefetch of a consumer that asks for more.
const DEFAULT_MAX_ACK_PENDING: i64 = 256;

impl NatsBroker {
    /// Creates the streams (and the remembered consumers) on first use and after a failure.
    /// Returns whether it did so now.
    pub(super) async fn ensure_ready(&self) -> Result<bool, BrokerError> {
        if self.ready.load(Ordering::Acquire) {
            return Ok(false);
        }
        self.shared.wait_connected().await?;
        let names = self.names();
        let description = |what: &str| Some(format!("Mosaic {what} of the application `{}`", names.namespace));
        self.ensure_stream(stream::Config {
            name: names.msg_stream.clone(),
            subjects: vec![format!("{}.>", names.msg_prefix)],
            retention: RetentionPolicy::Interest,
            storage: StorageType::File,
            description: description("messages"),
            ..Default::default()
        })
        .await?;
        self.ensure_stream(stream::Config {
            name: names.dead_stream.clone(),
            subjects: vec![format!("{}.>", names.dead_prefix)],
            retention: RetentionPolicy::Limits,
            storage: StorageType::File,
            description: description("dead letters"),
            ..Default::default()
        })
        .await?;
        // A recreated stream has lost its consumers, and with Interest retention a message
        // published before they exist again would be dropped.
        for subscription in self.remembered() {
            self.ensure_consumer(&subscription, 0).await?;
        }
        self.ready.store(true, Ordering::Release);
        Ok(true)
    }

    async fn ensure_stream(&self, config: stream::Config) -> Result<(), BrokerError> {
        let name = config.name.clone();
        let stream = self
            .shared
            .jetstream
            .get_or_create_stream(config.clone())
            .await
            .map_err(|err| self.failed(&format!("could not create the stream {name}"), err))?;
        let existing = &stream.cached_info().config;
        if existing.subjects != config.subjects || existing.retention != config.retention {
            return Err(BrokerError::Invalid(format!(
                "the stream {name} on NATS at {} holds the subjects {:?} with {:?} retention, not {:?} with {:?}; \
                 another application's name maps to the same stream (stream names are upper case), so rename one of them",
                self.shared.shown_url, existing.subjects, existing.retention, config.subjects, config.retention
            )));
        }
        Ok(())
    }

    /// Creates or updates the durable consumer of `subscription`, leasing at least `prefetch`.
    pub(super) async fn ensure_consumer(
        &self,
        subscription: &SubscriptionSpec,
        prefetch: usize,
    ) -> Result<PullConsumer, BrokerError> {
        let names = self.names();
        let durable = subject_token(&subscription.subscriber);
        let filter_subject = names.filter_subject(&subscription.patterns);
        let stream = self.shared.stream(&names.msg_stream).await?;
        let existing = match stream.consumer_info(&durable).await {
            Ok(info) => Some(info),
            Err(err) if err.kind() == ConsumerInfoErrorKind::NotFound => None,
            Err(err) => {
                return Err(self.failed(
                    &format!("could not look up the consumer of `{}`", subscription.subscriber),
                    err,
                ))
            }
        };
        let mut max_ack_pending = DEFAULT_MAX_ACK_PENDING.max(i64::try_from(prefetch).unwrap_or(i64::MAX));
        if let Some(info) = &existing {
            if info.config.filter_subject == filter_subject {
                // Keep a limit raised by an earlier consume.
                max_ack_pending = max_ack_pending.max(info.config.max_ack_pending);
            } else {
                // NATS 2.9 cannot change the filter of a consumer. The patterns changed, so the
                // messages kept for the old ones are not this subscriber's any more.
                tracing::warn!(
                    subscriber = %subscription.subscriber,
                    old = %info.config.filter_subject,
                    new = %filter_subject,
                    "the channel patterns changed; recreating the NATS consumer, which drops what it held"
                );
                stream.delete_consumer(&durable).await.map_err(|err| {
                    self.failed(
                        &format!("could not replace the consumer of `{}`", subscription.subscriber),
                        err,
                    )
                })?;
            }
        }
        let config = pull::Config {
            durable_name: Some(durable),
            description: Some(format!("Mosaic subscriber `{}`", subscription.subscriber)),
            filter_subject,
            ack_policy: AckPolicy::Explicit,
            // Applies only when the consumer is created; an existing one keeps its position.
            deliver_policy: DeliverPolicy::New,
            ack_wait: ACK_WAIT,
            // The trigger counts attempts itself and dead-letters after its own max_deliver.
            max_deliver: -1,
            max_ack_pending,
            ..Default::default()
        };
        stream.create_consumer(config).await.map_err(|err| {
            self.failed(
                &format!("could not create the consumer of `{}`", subscription.subscriber),
                err,
            )
        })
    }

    /// Publishes to the message stream; when the stream turns out to be gone, creates it (and
    /// the consumers) again and publishes once more.
    pub(super) async fn publish_to_stream(
        &self,
        subject: String,
        headers: HeaderMap,
        payload: &[u8],
        what: &str,
    ) -> Result<u64, BrokerError> {
        let first = self
            .shared
            .publish_acked(subject.clone(), headers.clone(), payload, what)
            .await;
        let failed = match first {
            Ok(sequence) => return Ok(sequence),
            Err(failed) => failed,
        };
        if matches!(failed.error, BrokerError::Unavailable(_)) {
            self.ready.store(false, Ordering::Release);
        }
        if !failed.stream_missing {
            return Err(failed.error);
        }
        self.ensure_ready().await?;
        self.shared
            .publish_acked(subject, headers, payload, what)
            .await
            .map_err(|failed| {
                self.ready.store(false, Ordering::Release);
                failed.error
            })
    }
}
