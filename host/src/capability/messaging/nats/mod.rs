//! The NATS JetStream backend of [`Broker`], chosen with `[messaging] url = "nats://..."`.
//!
//! Layout on the server, per application namespace `<ns>`:
//! - stream `MOSAIC_<NS>` holds the messages, subjects `mosaic.<ns>.msg.>`, Interest retention
//!   (a message is removed once every consumer interested in it acked it);
//! - stream `MOSAIC_<NS>_DEAD` holds the dead letters, subjects `mosaic.<ns>.dead.<subscriber>`;
//! - one durable pull consumer per subscribing component, named after it.
//!
//! A topic `a.b` is published to `mosaic.<ns>.msg.a.b._`. The trailing `_` token lets the
//! RabbitMQ `#` (zero or more words) be written with the NATS `>` (one or more tokens): `order.#`
//! becomes `mosaic.<ns>.msg.order.>`, which matches `order._` as well as `order.x._`. The server
//! here (2.9) filters a consumer by one subject only, so a subscriber that needs more (several
//! patterns, or a `#` before the last word) gets a superset filter, and [`NatsConsumer`] acks and
//! skips what the exact topic rules reject. A replayed dead letter carries `Mosaic-Replay-To`,
//! and every other subscriber skips it the same way.
//!
//! The parts: [`names`] (subjects and stream names), [`headers`] (what a message carries),
//! [`connection`] (the client shared by everything, failing fast while it is disconnected, and
//! publishing with the stream's acknowledgement), [`streams`] (creating the streams and the
//! consumers, and repairing them), [`consumer`] (pulling one subscription's deliveries),
//! [`settle`] (acks, progress notes, dead letters and NAKs of one delivery) and
//! [`dead_letters`] (listing and replaying the dead-letter stream).

mod connection;
mod consumer;
mod dead_letters;
mod headers;
mod names;
mod settle;
mod streams;

use std::collections::BTreeMap;
use std::fmt::Display;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::connection::State as ConnectionState;
use async_nats::jetstream;
use async_nats::jetstream::context::ConsumerInfoErrorKind;
use async_nats::HeaderMap;

use self::connection::{Shared, API_TIMEOUT, CONNECT_GRACE};
use self::consumer::NatsConsumer;
use self::headers::{PUBLISHED_MS_HEADER, TRACEPARENT_HEADER};
use self::names::{subject_token, Names};
use super::{check_pattern, check_topic, now_unix_ms, Broker, BrokerError, Consumer, DeadLetter, SubscriptionSpec};
use crate::backends::redact_url;

/// How long `consume` waits for redelivery requests (NAKs) of dropped deliveries to go out first,
/// so that a restarted consumer gets those messages back before newer ones.
const NAK_SETTLE_LIMIT: Duration = Duration::from_secs(2);

/// A [`Broker`] on a NATS server with JetStream.
pub struct NatsBroker {
    shared: Arc<Shared>,
    /// Every subscription declared or consumed here, re-declared when the streams are (re)created.
    subscriptions: Mutex<BTreeMap<String, SubscriptionSpec>>,
    /// Whether the streams (and the remembered consumers) were ensured since the last failure.
    ready: AtomicBool,
}

impl NatsBroker {
    /// A broker for the application `namespace` on the NATS server at `url`. It never fails or
    /// waits because the server is down: the client connects in the background, and every
    /// operation fails with [`BrokerError::Unavailable`] while the server is unreachable.
    pub async fn connect(url: &str, namespace: &str) -> Result<NatsBroker, BrokerError> {
        let shown_url = redact_url(url);
        let server: async_nats::ServerAddr = url.parse().map_err(|err| {
            BrokerError::Invalid(format!(
                "`{shown_url}` is not a NATS address ({err}); [messaging] url in mosaic.toml should look like nats://127.0.0.1:4222"
            ))
        })?;
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connection_timeout(API_TIMEOUT)
            .name(format!("mosaic {namespace}"))
            .connect(server)
            .await
            .map_err(|err| BrokerError::Unavailable(format!("cannot start a NATS client for {shown_url}: {err}")))?;
        let jetstream = jetstream::ContextBuilder::new()
            .timeout(API_TIMEOUT)
            .ack_timeout(API_TIMEOUT)
            .build(client.clone());
        Ok(NatsBroker {
            shared: Arc::new(Shared {
                client,
                jetstream,
                shown_url,
                names: Names::new(namespace),
                naks: Arc::default(),
            }),
            subscriptions: Mutex::new(BTreeMap::new()),
            ready: AtomicBool::new(false),
        })
    }

    fn names(&self) -> &Names {
        &self.shared.names
    }

    /// An error that also makes the next operation ensure the streams again (the failure may
    /// have been a stream that was deleted, or a server that restarted without its data).
    fn failed(&self, what: &str, err: impl Display) -> BrokerError {
        self.ready.store(false, Ordering::Release);
        self.shared.unavailable(what, err)
    }

    fn remember(&self, subscriptions: &[SubscriptionSpec]) {
        let mut remembered = self
            .subscriptions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for subscription in subscriptions {
            remembered.insert(subscription.subscriber.clone(), subscription.clone());
        }
    }

    fn remembered(&self) -> Vec<SubscriptionSpec> {
        let remembered = self
            .subscriptions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        remembered.values().cloned().collect()
    }
}

#[async_trait::async_trait]
impl Broker for NatsBroker {
    fn kind(&self) -> &'static str {
        "nats"
    }

    async fn declare(&self, subscriptions: &[SubscriptionSpec]) -> Result<(), BrokerError> {
        for subscription in subscriptions {
            for pattern in &subscription.patterns {
                check_pattern(pattern)?;
            }
        }
        self.remember(subscriptions);
        // A first (or recovering) ensure_ready declares every remembered subscription already.
        if !self.ensure_ready().await? {
            for subscription in subscriptions {
                self.ensure_consumer(subscription, 0).await?;
            }
        }
        Ok(())
    }

    async fn check(&self) -> Result<(), BrokerError> {
        // Readiness is now, not after a grace period.
        if self.shared.client.connection_state() != ConnectionState::Connected {
            return Err(self.shared.unavailable("is unreachable", "not connected"));
        }
        self.ensure_ready().await?;
        match tokio::time::timeout(CONNECT_GRACE, self.shared.client.flush()).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(self.shared.unavailable("did not answer", format_args!("{err}"))),
            Err(_) => Err(self
                .shared
                .unavailable("did not answer", format_args!("no answer within {CONNECT_GRACE:?}"))),
        }
    }

    async fn publish(&self, topic: &str, payload: &[u8], traceparent: Option<&str>) -> Result<(), BrokerError> {
        check_topic(topic)?;
        self.ensure_ready().await?;
        let mut headers = HeaderMap::new();
        headers.insert(PUBLISHED_MS_HEADER, now_unix_ms().to_string());
        if let Some(traceparent) = traceparent {
            headers.insert(TRACEPARENT_HEADER, traceparent);
        }
        let subject = self.names().topic_subject(topic);
        self.publish_to_stream(subject, headers, payload, "did not accept the message")
            .await
            .map(|_| ())
    }

    async fn consume(&self, subscription: &SubscriptionSpec, prefetch: u32) -> Result<Box<dyn Consumer>, BrokerError> {
        for pattern in &subscription.patterns {
            check_pattern(pattern)?;
        }
        self.remember(std::slice::from_ref(subscription));
        self.ensure_ready().await?;
        let prefetch = usize::try_from(prefetch.max(1)).unwrap_or(usize::MAX);
        let consumer = self.ensure_consumer(subscription, prefetch).await?;
        // Messages dropped unsettled just before (a consumer being restarted) go back first.
        self.shared.naks.settled(NAK_SETTLE_LIMIT).await;
        Ok(Box::new(NatsConsumer::new(
            self.shared.clone(),
            subscription.clone(),
            consumer,
            prefetch,
        )))
    }

    async fn pending(&self, subscriber: &str) -> Result<u64, BrokerError> {
        self.ensure_ready().await?;
        let names = self.names();
        let stream = self.shared.stream(&names.msg_stream).await?;
        match stream.consumer_info(subject_token(subscriber)).await {
            Ok(info) => Ok(info.num_pending + u64::try_from(info.num_ack_pending).unwrap_or(u64::MAX)),
            Err(err) if err.kind() == ConsumerInfoErrorKind::NotFound => Err(BrokerError::Invalid(format!(
                "no subscriber `{subscriber}` is declared for the application `{}` on NATS at {}",
                names.namespace, self.shared.shown_url
            ))),
            Err(err) => Err(self.failed(&format!("could not report the consumer of `{subscriber}`"), err)),
        }
    }

    async fn dead_letters(&self, subscriber: Option<&str>) -> Result<Vec<DeadLetter>, BrokerError> {
        let letters = self.read_dead_letters(subscriber).await?;
        Ok(letters.into_iter().map(|(_, letter)| letter).collect())
    }

    async fn replay(&self, subscriber: Option<&str>, ids: &[String]) -> Result<Vec<DeadLetter>, BrokerError> {
        self.replay_dead_letters(subscriber, ids).await
    }
}
