//! The consumer of one subscription: pull requests on a durable pull consumer, the silence and
//! connection checks that notice a request or a server that went away, and the narrowing of a
//! superset filter to the exact topic rules.

use std::fmt::Display;
use std::sync::Arc;
use std::time::Duration;

use async_nats::connection::State as ConnectionState;
use async_nats::jetstream;
use async_nats::jetstream::consumer::pull::BatchConfig;
use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::message::Acker;
use async_nats::{StatusCode, Subscriber};
use futures_util::{FutureExt, StreamExt};
use tokio::time::Instant;

use super::connection::Shared;
use super::headers::{
    decode_header_text, header_number, header_text, PUBLISHED_MS_HEADER, REPLAY_TO_HEADER, TRACEPARENT_HEADER,
};
use super::settle::{keep_leased, NatsSettle};
use crate::capability::messaging::{BrokerError, Consumer, Delivery, SubscriptionSpec};

/// How long one pull request waits at the server for messages before it is renewed.
const PULL_EXPIRES: Duration = Duration::from_secs(30);
/// While a pull request waits, the server sends a heartbeat this often; their absence means the
/// request or the connection is gone.
const PULL_HEARTBEAT: Duration = Duration::from_secs(5);
/// How often a waiting consumer checks that its connection is still up.
const CONNECTION_CHECK: Duration = Duration::from_secs(1);

/// The pull request a consumer has outstanding at the server.
struct OutstandingPull {
    /// Messages the server may still send for it.
    remaining: usize,
    expires_at: Instant,
}

/// Delivers one subscription from its durable pull consumer. It pulls only when its caller asks
/// for a message and nothing is outstanding, so at most `prefetch` messages are leased ahead.
pub(super) struct NatsConsumer {
    shared: Arc<Shared>,
    subscription: SubscriptionSpec,
    consumer: PullConsumer,
    prefetch: usize,
    /// The subscription to this consumer's inbox, where the server sends the pulled messages.
    inbox: Option<(String, Subscriber)>,
    pull: Option<OutstandingPull>,
    /// When the server last sent anything (a message or a heartbeat) for the outstanding pull.
    last_heard: Instant,
}

impl NatsConsumer {
    pub(super) fn new(
        shared: Arc<Shared>,
        subscription: SubscriptionSpec,
        consumer: PullConsumer,
        prefetch: usize,
    ) -> Self {
        Self {
            shared,
            subscription,
            consumer,
            prefetch,
            inbox: None,
            pull: None,
            last_heard: Instant::now(),
        }
    }

    fn broken(&self, what: &str, err: impl Display) -> BrokerError {
        self.shared
            .unavailable(&format!("{what} for `{}`", self.subscription.subscriber), err)
    }

    async fn request_pull(&mut self) -> Result<(), BrokerError> {
        if self.shared.client.connection_state() != ConnectionState::Connected {
            return Err(self.broken("lost the connection while consuming", "disconnected"));
        }
        if self.inbox.is_none() {
            let inbox = self.shared.client.new_inbox();
            let subscriber = self
                .shared
                .client
                .subscribe(inbox.clone())
                .await
                .map_err(|err| self.broken("could not subscribe to deliveries", err))?;
            self.inbox = Some((inbox, subscriber));
        }
        let inbox = match &self.inbox {
            Some((inbox, _)) => inbox.clone(),
            None => return Err(self.broken("has no delivery inbox", "not subscribed")),
        };
        let request = BatchConfig {
            batch: self.prefetch,
            expires: Some(PULL_EXPIRES),
            idle_heartbeat: PULL_HEARTBEAT,
            ..Default::default()
        };
        // Recorded before sending: if this future is dropped mid-send, the silence check below
        // still notices a request that never arrived.
        self.pull = Some(OutstandingPull {
            remaining: self.prefetch,
            expires_at: Instant::now() + PULL_EXPIRES,
        });
        self.last_heard = Instant::now();
        if let Err(err) = self.consumer.request_batch(request, inbox.into()).await {
            self.pull = None;
            return Err(self.broken("did not take a pull request", err));
        }
        Ok(())
    }

    /// Turns a pulled message into a delivery, or acks and skips it when it is not for this
    /// subscriber (a superset filter, or a replay meant for another subscriber).
    async fn accept(&self, message: async_nats::Message) -> Option<Delivery> {
        let message = jetstream::Message {
            message,
            context: self.shared.jetstream.clone(),
        };
        let headers = message.headers.as_ref();
        let topic = self
            .shared
            .names
            .subject_topic(message.subject.as_str())
            .map(str::to_string);
        let replay_for_other = header_text(headers, REPLAY_TO_HEADER)
            .is_some_and(|target| decode_header_text(target) != self.subscription.subscriber);
        let topic = match topic {
            Some(topic) if !replay_for_other && self.subscription.matches(&topic) => topic,
            _ => {
                if let Err(err) = message.ack().await {
                    tracing::debug!(error = %err, "could not ack a skipped NATS message; it comes back after the ack wait");
                }
                return None;
            }
        };
        let attempts = match message.info() {
            Ok(info) => u32::try_from(info.delivered.saturating_sub(1).max(0)).unwrap_or(u32::MAX),
            Err(err) => {
                tracing::debug!(error = %err, "a NATS delivery without delivery info; counting it as a first attempt");
                0
            }
        };
        let published_at_ms = header_number(headers, PUBLISHED_MS_HEADER);
        let traceparent = header_text(headers, TRACEPARENT_HEADER).map(str::to_string);
        let lease = keep_leased(Acker::new(self.shared.jetstream.clone(), message.reply.clone()));
        let (message, acker) = message.split();
        Some(Delivery {
            topic: topic.clone(),
            payload: message.payload.to_vec(),
            attempts,
            published_at_ms,
            traceparent,
            settle: Box::new(NatsSettle {
                shared: self.shared.clone(),
                subscriber: self.subscription.subscriber.clone(),
                acker: Some(acker),
                lease,
            }),
        })
    }
}

#[async_trait::async_trait]
impl Consumer for NatsConsumer {
    async fn next(&mut self) -> Result<Delivery, BrokerError> {
        // All state lives in `self`, so a caller that gives up waiting (drops this future) loses
        // nothing: the outstanding pull and the messages already received stay for the next call.
        loop {
            if self.pull.is_none() {
                self.request_pull().await?;
            }
            let silence_limit = self.last_heard + PULL_HEARTBEAT * 2 + Duration::from_secs(1);
            let pull_limit = match &self.pull {
                Some(pull) => silence_limit.min(pull.expires_at + Duration::from_secs(1)),
                None => silence_limit,
            };
            // Woken at least every CONNECTION_CHECK to notice a lost connection early.
            let wait_until = pull_limit.min(Instant::now() + CONNECTION_CHECK);
            let Some((_, inbox)) = self.inbox.as_mut() else {
                return Err(self.broken("has no delivery inbox", "not subscribed"));
            };
            let received = tokio::time::timeout_at(wait_until, inbox.next()).await;
            let message = match received {
                Err(_) => {
                    if self.shared.client.connection_state() != ConnectionState::Connected {
                        self.pull = None;
                        return Err(self.broken("stopped answering while consuming", "disconnected"));
                    }
                    if Instant::now() >= pull_limit {
                        // Neither a message nor a heartbeat: the request expired unnoticed, or
                        // the server restarted and forgot it. Ask again.
                        self.pull = None;
                    }
                    continue;
                }
                Ok(None) => {
                    self.inbox = None;
                    self.pull = None;
                    return Err(self.broken("closed the delivery subscription", "the client is closed"));
                }
                Ok(Some(message)) => message,
            };
            self.last_heard = Instant::now();
            match message.status {
                None | Some(StatusCode::OK) => {
                    if let Some(pull) = self.pull.as_mut() {
                        pull.remaining = pull.remaining.saturating_sub(1);
                        if pull.remaining == 0 {
                            self.pull = None;
                        }
                    }
                    if let Some(delivery) = self.accept(message).await {
                        return Ok(delivery);
                    }
                }
                Some(StatusCode::IDLE_HEARTBEAT) => {}
                // The request expired (408), or found nothing with no_wait (404).
                Some(StatusCode::TIMEOUT) | Some(StatusCode::NOT_FOUND) => self.pull = None,
                Some(StatusCode::REQUEST_TERMINATED) => {
                    self.pull = None;
                    let reason = message.description.unwrap_or_default();
                    if reason.contains("Consumer Deleted") {
                        return Err(self.broken("deleted the consumer", reason));
                    }
                    // Other 409s (a leadership change, a request limit) end this request only;
                    // the pause keeps a persistent one from spinning.
                    tracing::debug!(subscriber = %self.subscription.subscriber, %reason, "NATS ended a pull request");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
                Some(StatusCode::NO_RESPONDERS) => {
                    self.pull = None;
                    return Err(self.broken(
                        "did not answer the pull request",
                        "no responders; is JetStream enabled?",
                    ));
                }
                Some(status) => {
                    self.pull = None;
                    let reason = message.description.unwrap_or_default();
                    return Err(self.broken("failed a pull request", format_args!("{status} {reason}")));
                }
            }
        }
    }
}

impl Drop for NatsConsumer {
    fn drop(&mut self) {
        let Some((_, mut inbox)) = self.inbox.take() else {
            return;
        };
        // Messages received but not handed out are leased to this consumer; hand them back now
        // rather than after ACK_WAIT. Dropping the inbox then unsubscribes it (before those NAKs
        // go out), and the server drops a pull request that nobody listens to instead of leasing
        // more messages to it.
        while let Some(Some(message)) = inbox.next().now_or_never() {
            if matches!(message.status, None | Some(StatusCode::OK)) {
                let acker = Acker::new(self.shared.jetstream.clone(), message.reply);
                self.shared.naks.spawn_nak(acker);
            }
        }
    }
}
