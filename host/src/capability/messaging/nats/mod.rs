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

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::{Display, Write as _};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_nats::connection::State as ConnectionState;
use async_nats::jetstream::consumer::pull::BatchConfig;
use async_nats::jetstream::consumer::{pull, AckPolicy, DeliverPolicy, PullConsumer};
use async_nats::jetstream::context::{ConsumerInfoErrorKind, PublishErrorKind};
use async_nats::jetstream::message::{Acker, StreamMessage};
use async_nats::jetstream::stream::{self, RawMessageErrorKind, RetentionPolicy, StorageType};
use async_nats::jetstream::{self, AckKind};
use async_nats::{HeaderMap, StatusCode, Subscriber};
use futures_util::{FutureExt, StreamExt};
use sha2::{Digest, Sha256};
use tokio::time::Instant;

use super::{
    check_pattern, check_topic, now_unix_ms, Broker, BrokerError, Consumer, DeadLetter, Delivery, NewDeadLetter,
    Settle, SubscriptionSpec,
};
use crate::backends::redact_url;

/// How long one JetStream API call or publish ack may take before the server counts as unavailable.
const API_TIMEOUT: Duration = Duration::from_secs(5);
/// How long an operation waits for a client that is still (re)connecting before it fails.
const CONNECT_GRACE: Duration = Duration::from_secs(3);
/// How long a delivery stays leased without an ack or a progress note before NATS redelivers it.
const ACK_WAIT: Duration = Duration::from_secs(30);
/// Deliveries a consumer may hold unacked; raised to the prefetch of a consumer that asks for more.
const DEFAULT_MAX_ACK_PENDING: i64 = 256;
/// How long one pull request waits at the server for messages before it is renewed.
const PULL_EXPIRES: Duration = Duration::from_secs(30);
/// While a pull request waits, the server sends a heartbeat this often; their absence means the
/// request or the connection is gone.
const PULL_HEARTBEAT: Duration = Duration::from_secs(5);
/// How often a waiting consumer checks that its connection is still up.
const CONNECTION_CHECK: Duration = Duration::from_secs(1);
/// How long `consume` waits for redelivery requests (NAKs) of dropped deliveries to go out first,
/// so that a restarted consumer gets those messages back before newer ones.
const NAK_SETTLE_LIMIT: Duration = Duration::from_secs(2);
/// The longest error text kept with a dead letter (it travels in a header).
const MAX_ERROR_BYTES: usize = 16 * 1024;

/// The token after every topic's words in a subject; see the module documentation.
const TERMINATOR: &str = "_";

const PUBLISHED_MS_HEADER: &str = "Mosaic-Published-Ms";
const REPLAY_TO_HEADER: &str = "Mosaic-Replay-To";
const SUBSCRIBER_HEADER: &str = "Mosaic-Subscriber";
const TOPIC_HEADER: &str = "Mosaic-Topic";
const ATTEMPTS_HEADER: &str = "Mosaic-Attempts";
const ERROR_HEADER: &str = "Mosaic-Error";
const DEAD_AT_MS_HEADER: &str = "Mosaic-Dead-At-Ms";
/// The W3C trace context of the publisher, under its standard name.
const TRACEPARENT_HEADER: &str = "traceparent";

/// A [`Broker`] on a NATS server with JetStream.
pub struct NatsBroker {
    shared: Arc<Shared>,
    /// Every subscription declared or consumed here, re-declared when the streams are (re)created.
    subscriptions: Mutex<BTreeMap<String, SubscriptionSpec>>,
    /// Whether the streams (and the remembered consumers) were ensured since the last failure.
    ready: AtomicBool,
}

/// What consumers and deliveries need from their broker.
struct Shared {
    client: async_nats::Client,
    jetstream: jetstream::Context,
    /// The server address without credentials, for error messages.
    shown_url: String,
    names: Names,
    naks: Arc<PendingNaks>,
}

/// Why a publish failed, and whether it was because the stream is gone (deleted, or a server
/// that restarted without its data), which creating the streams again repairs.
struct PublishFailed {
    error: BrokerError,
    stream_missing: bool,
}

impl PublishFailed {
    fn other(error: BrokerError) -> Self {
        Self {
            error,
            stream_missing: false,
        }
    }
}

/// The subjects and stream names of one namespace.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Names {
    namespace: String,
    /// `mosaic.<ns>.msg`
    msg_prefix: String,
    /// `mosaic.<ns>.dead`
    dead_prefix: String,
    msg_stream: String,
    dead_stream: String,
}

impl Names {
    fn new(namespace: &str) -> Self {
        let token = subject_token(namespace);
        let stream_base = format!("MOSAIC_{}", token.to_ascii_uppercase());
        Self {
            namespace: namespace.to_string(),
            msg_prefix: format!("mosaic.{token}.msg"),
            dead_prefix: format!("mosaic.{token}.dead"),
            dead_stream: format!("{stream_base}_DEAD"),
            msg_stream: stream_base,
        }
    }

    fn topic_subject(&self, topic: &str) -> String {
        format!("{}.{topic}.{TERMINATOR}", self.msg_prefix)
    }

    /// The topic a message subject was published for, if it is one of ours.
    fn subject_topic<'a>(&self, subject: &'a str) -> Option<&'a str> {
        subject
            .strip_prefix(self.msg_prefix.as_str())?
            .strip_prefix('.')?
            .strip_suffix(TERMINATOR)?
            .strip_suffix('.')
            .filter(|topic| !topic.is_empty())
    }

    /// The one filter subject of a subscriber's consumer: exact for a single pattern whose `#`,
    /// if any, is its last word, else a superset that `Consumer::next` narrows down.
    fn filter_subject(&self, patterns: &[String]) -> String {
        let [pattern] = patterns else {
            return format!("{}.>", self.msg_prefix);
        };
        let words: Vec<&str> = pattern.split('.').collect();
        match words.iter().position(|word| *word == "#") {
            None => format!("{}.{pattern}.{TERMINATOR}", self.msg_prefix),
            Some(first_hash) => {
                let mut tokens = vec![self.msg_prefix.as_str()];
                tokens.extend(&words[..first_hash]);
                tokens.push(">");
                tokens.join(".")
            }
        }
    }

    fn dead_subject(&self, subscriber: &str) -> String {
        format!("{}.{}", self.dead_prefix, subject_token(subscriber))
    }
}

/// `name` as one subject token (also a valid durable consumer name): letters, digits, `-`, `_`.
/// A name that had to be changed gets a short hash of the original, so that two names that
/// clean up alike (`a.b`, `a_b`) do not share a consumer or a subject.
fn subject_token(name: &str) -> String {
    let cleaned: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if cleaned == name && !name.is_empty() {
        return cleaned;
    }
    let digest = Sha256::digest(name.as_bytes());
    format!("{cleaned}_{}", hex::encode(&digest[..4]))
}

/// Header values cannot hold CR or LF, and surrounding spaces do not survive, so free text
/// (an error message, a component name) is percent-encoded: `%`, control characters, non-ASCII
/// bytes and spaces at either end.
fn encode_header_text(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut encoded = String::with_capacity(bytes.len());
    for (index, &byte) in bytes.iter().enumerate() {
        let edge_space = byte == b' ' && (index == 0 || index + 1 == bytes.len());
        if byte == b'%' || !(0x20..0x7f).contains(&byte) || edge_space {
            let _ = write!(encoded, "%{byte:02X}");
        } else {
            encoded.push(char::from(byte));
        }
    }
    encoded
}

fn decode_header_text(encoded: &str) -> String {
    let bytes = encoded.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut index = 0;
    while index < bytes.len() {
        let escaped = (bytes[index] == b'%')
            .then(|| bytes.get(index + 1..index + 3))
            .flatten()
            .and_then(|hex| std::str::from_utf8(hex).ok())
            .and_then(|hex| u8::from_str_radix(hex, 16).ok());
        match escaped {
            Some(byte) => {
                decoded.push(byte);
                index += 3;
            }
            None => {
                decoded.push(bytes[index]);
                index += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

/// `text` cut to at most `max` bytes on a character boundary.
fn truncate_text(text: &str, max: usize) -> String {
    if text.len() <= max {
        return text.to_string();
    }
    let mut end = max;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{} ... (cut at {max} bytes)", &text[..end])
}

fn header_text<'a>(headers: Option<&'a HeaderMap>, name: &str) -> Option<&'a str> {
    headers?.get(name).map(|value| value.as_str())
}

fn header_number(headers: Option<&HeaderMap>, name: &str) -> Option<u64> {
    header_text(headers, name)?.trim().parse().ok()
}

/// Counts redelivery requests (NAKs) still on their way to the server, so that `consume` can let
/// them go out before it pulls.
#[derive(Default)]
struct PendingNaks {
    in_flight: AtomicUsize,
    idle: tokio::sync::Notify,
}

/// One NAK on its way; dropping it marks it sent.
struct NakInFlight(Arc<PendingNaks>);

impl Drop for NakInFlight {
    fn drop(&mut self) {
        if self.0.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

impl PendingNaks {
    fn begin(self: &Arc<Self>) -> NakInFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        NakInFlight(self.clone())
    }

    /// Asks the server to redeliver a message now rather than after `ACK_WAIT`. Runs in the
    /// background because it is called from `Drop`, which cannot wait; without a runtime the
    /// message simply comes back after `ACK_WAIT`.
    fn spawn_nak(self: &Arc<Self>, acker: Acker) {
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let in_flight = self.begin();
        runtime.spawn(async move {
            let _in_flight = in_flight;
            if let Err(err) = acker.ack_with(AckKind::Nak(None)).await {
                tracing::debug!(error = %err, "could not ask NATS to redeliver a dropped message; it returns after the ack wait");
            }
        });
    }

    /// Waits (at most `limit`) until no NAK is on its way.
    async fn settled(&self, limit: Duration) {
        let deadline = Instant::now() + limit;
        loop {
            // Registered before the check, so that a notification in between is not missed.
            let idle = self.idle.notified();
            if self.in_flight.load(Ordering::Acquire) == 0 {
                return;
            }
            if tokio::time::timeout_at(deadline, idle).await.is_err() {
                return;
            }
        }
    }
}

impl Shared {
    /// An error for an operation the server did not carry out, saying where and what to check.
    fn unavailable(&self, what: &str, err: impl Display) -> BrokerError {
        BrokerError::Unavailable(format!(
            "NATS at {} {what} ({err}); is nats-server running with JetStream (-js)? The broker is set by [messaging] url in mosaic.toml",
            self.shown_url
        ))
    }

    /// Fails fast while the client is not connected, instead of queueing the request until a
    /// reconnect (when it would be sent after its caller was already told it failed).
    async fn wait_connected(&self) -> Result<(), BrokerError> {
        let deadline = Instant::now() + CONNECT_GRACE;
        loop {
            if self.client.connection_state() == ConnectionState::Connected {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(self.unavailable("is unreachable", format_args!("no connection after {CONNECT_GRACE:?}")));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Publishes to a stream subject and returns once the stream stored the message.
    async fn publish_acked(
        &self,
        subject: String,
        headers: HeaderMap,
        payload: &[u8],
        what: &str,
    ) -> Result<u64, PublishFailed> {
        self.wait_connected().await.map_err(PublishFailed::other)?;
        let payload = bytes::Bytes::copy_from_slice(payload);
        let publish = async {
            let ack = self.jetstream.publish_with_headers(subject, headers, payload).await?;
            ack.await
        };
        // The context bounds both steps by API_TIMEOUT; the outer bound only guards against a hang.
        match tokio::time::timeout(API_TIMEOUT * 2, publish).await {
            Ok(Ok(ack)) => Ok(ack.sequence),
            Ok(Err(err)) => match err.kind() {
                PublishErrorKind::MaxPayloadExceeded => Err(PublishFailed::other(BrokerError::Invalid(format!(
                    "the message is too large for NATS at {} ({err})",
                    self.shown_url
                )))),
                PublishErrorKind::StreamNotFound => Err(PublishFailed {
                    error: self.unavailable(what, "no stream takes the subject"),
                    stream_missing: true,
                }),
                _ => Err(PublishFailed::other(self.unavailable(what, err))),
            },
            Err(_) => Err(PublishFailed::other(
                self.unavailable(what, format_args!("no answer within {:?}", API_TIMEOUT * 2)),
            )),
        }
    }

    async fn stream(&self, name: &str) -> Result<stream::Stream<()>, BrokerError> {
        self.jetstream
            .get_stream_no_info(name)
            .await
            .map_err(|err| BrokerError::Invalid(format!("`{name}` cannot name a NATS stream ({err})")))
    }
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

    /// Creates the streams (and the remembered consumers) on first use and after a failure.
    /// Returns whether it did so now.
    async fn ensure_ready(&self) -> Result<bool, BrokerError> {
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
    async fn ensure_consumer(
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
    async fn publish_to_stream(
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

    /// The dead letters with their stream sequences, oldest first.
    async fn read_dead_letters(&self, subscriber: Option<&str>) -> Result<Vec<(u64, DeadLetter)>, BrokerError> {
        self.ensure_ready().await?;
        let names = self.names();
        let filter = match subscriber {
            Some(subscriber) => names.dead_subject(subscriber),
            None => format!("{}.>", names.dead_prefix),
        };
        let stream = self.shared.stream(&names.dead_stream).await?;
        let mut letters = Vec::new();
        let mut next_sequence = 1;
        loop {
            // The next stored message at or after the sequence, skipping deleted ones.
            let found = stream
                .raw_message_builder()
                .sequence(next_sequence)
                .next_by_subject(filter.clone())
                .send()
                .await;
            let message = match found {
                Ok(message) => message,
                Err(err) if err.kind() == RawMessageErrorKind::NoMessageFound => break,
                Err(err) => return Err(self.failed("could not read the dead letters", err)),
            };
            next_sequence = message.sequence + 1;
            let letter = self.dead_letter_of(message);
            if subscriber.is_none_or(|subscriber| letter.1.subscriber == subscriber) {
                letters.push(letter);
            }
        }
        Ok(letters)
    }

    fn dead_letter_of(&self, message: StreamMessage) -> (u64, DeadLetter) {
        let headers = Some(&message.headers);
        let subscriber = header_text(headers, SUBSCRIBER_HEADER).map_or_else(
            || {
                let token = message.subject.as_str().rsplit('.').next().unwrap_or_default();
                token.to_string()
            },
            decode_header_text,
        );
        let letter = NewDeadLetter {
            topic: header_text(headers, TOPIC_HEADER)
                .map(decode_header_text)
                .unwrap_or_default(),
            payload: message.payload.to_vec(),
            attempts: header_number(headers, ATTEMPTS_HEADER)
                .and_then(|attempts| u32::try_from(attempts).ok())
                .unwrap_or(0),
            error: header_text(headers, ERROR_HEADER)
                .map(decode_header_text)
                .unwrap_or_default(),
            published_at_ms: header_number(headers, PUBLISHED_MS_HEADER),
        };
        let dead_at_ms = header_number(headers, DEAD_AT_MS_HEADER).unwrap_or(0);
        (
            message.sequence,
            DeadLetter::new(message.sequence.to_string(), subscriber, &letter, dead_at_ms),
        )
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
        Ok(Box::new(NatsConsumer {
            shared: self.shared.clone(),
            subscription: subscription.clone(),
            consumer,
            prefetch,
            inbox: None,
            pull: None,
            last_heard: Instant::now(),
        }))
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
        let letters = self.read_dead_letters(subscriber).await?;
        let chosen: Vec<(u64, DeadLetter)> = if ids.is_empty() {
            letters
        } else {
            // Every id is checked before anything is replayed.
            let wanted: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
            if let Some(unknown) = wanted
                .iter()
                .find(|id| !letters.iter().any(|(_, letter)| letter.id == **id))
            {
                let scope = subscriber
                    .map(|subscriber| format!(" for `{subscriber}`"))
                    .unwrap_or_default();
                return Err(BrokerError::Invalid(format!(
                    "no dead letter with id `{unknown}`{scope} (see `mosaic dlq list`)"
                )));
            }
            letters
                .into_iter()
                .filter(|(_, letter)| wanted.contains(letter.id.as_str()))
                .collect()
        };
        let dead_stream = self.shared.stream(&self.names().dead_stream).await?;
        let mut replayed = Vec::with_capacity(chosen.len());
        for (sequence, letter) in chosen {
            check_topic(&letter.topic)?;
            let mut headers = HeaderMap::new();
            headers.insert(PUBLISHED_MS_HEADER, now_unix_ms().to_string());
            headers.insert(REPLAY_TO_HEADER, encode_header_text(&letter.subscriber));
            self.publish_to_stream(
                self.names().topic_subject(&letter.topic),
                headers,
                &letter.payload_bytes(),
                &format!("did not accept the replay of dead letter {}", letter.id),
            )
            .await?;
            dead_stream.delete_message(sequence).await.map_err(|err| {
                self.failed(
                    &format!(
                        "replayed dead letter {} but could not remove it from the dead letters, so it is still listed",
                        letter.id
                    ),
                    err,
                )
            })?;
            replayed.push(letter);
        }
        Ok(replayed)
    }
}

/// The pull request a consumer has outstanding at the server.
struct OutstandingPull {
    /// Messages the server may still send for it.
    remaining: usize,
    expires_at: Instant,
}

/// Delivers one subscription from its durable pull consumer. It pulls only when its caller asks
/// for a message and nothing is outstanding, so at most `prefetch` messages are leased ahead.
struct NatsConsumer {
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

/// The broker side of one NATS delivery.
struct NatsSettle {
    shared: Arc<Shared>,
    subscriber: String,
    /// Taken once the delivery is settled; still present on drop means unsettled.
    acker: Option<Acker>,
    /// Renews the lease while the delivery is unsettled; stopped when it is dropped.
    lease: Option<tokio::task::AbortHandle>,
}

/// A handler and its retries can take longer than ACK_WAIT: renewing the lease (a progress
/// note) every third of it keeps the server from delivering the message a second time while
/// this host still works on it. A host that dies stops renewing, and the message comes back.
fn keep_leased(acker: Acker) -> Option<tokio::task::AbortHandle> {
    let runtime = tokio::runtime::Handle::try_current().ok()?;
    let task = runtime.spawn(async move {
        loop {
            tokio::time::sleep(ACK_WAIT / 3).await;
            if let Err(err) = acker.ack_with(AckKind::Progress).await {
                tracing::debug!(error = %err, "could not renew the lease of a NATS delivery");
            }
        }
    });
    Some(task.abort_handle())
}

impl NatsSettle {
    fn acker(&self) -> Result<&Acker, BrokerError> {
        self.acker
            .as_ref()
            .ok_or_else(|| BrokerError::Invalid("the delivery was already settled".to_string()))
    }
}

#[async_trait::async_trait]
impl Settle for NatsSettle {
    async fn ack(mut self: Box<Self>) -> Result<(), BrokerError> {
        let acker = self.acker()?;
        // A double ack waits for the server's confirmation, so an acked message is gone (and
        // `pending` says so) by the time this returns.
        let result = acker.double_ack().await;
        self.acker = None;
        result.map_err(|err| self.shared.unavailable("did not confirm an ack", err))
    }

    async fn failed_attempt(&self, _attempts: u32) -> Result<(), BrokerError> {
        // NATS counts deliveries, not attempts, and the trigger retries in place: a progress
        // note keeps the message leased (restarting ACK_WAIT) while it waits for its retry.
        self.acker()?
            .ack_with(AckKind::Progress)
            .await
            .map_err(|err| self.shared.unavailable("did not take a progress note", err))
    }

    async fn dead_letter(mut self: Box<Self>, letter: NewDeadLetter) -> Result<(), BrokerError> {
        self.acker()?;
        let mut headers = HeaderMap::new();
        headers.insert(SUBSCRIBER_HEADER, encode_header_text(&self.subscriber));
        headers.insert(TOPIC_HEADER, encode_header_text(&letter.topic));
        headers.insert(ATTEMPTS_HEADER, letter.attempts.to_string());
        headers.insert(
            ERROR_HEADER,
            encode_header_text(&truncate_text(&letter.error, MAX_ERROR_BYTES)),
        );
        headers.insert(DEAD_AT_MS_HEADER, now_unix_ms().to_string());
        if let Some(published_at_ms) = letter.published_at_ms {
            headers.insert(PUBLISHED_MS_HEADER, published_at_ms.to_string());
        }
        let subject = self.shared.names.dead_subject(&self.subscriber);
        // Stored first, then acked: a failure in between leaves the message in the queue (it is
        // redelivered and may be dead-lettered twice) rather than losing it.
        self.shared
            .publish_acked(subject, headers, &letter.payload, "did not store the dead letter")
            .await
            .map_err(|failed| failed.error)?;
        let result = self.acker()?.double_ack().await;
        self.acker = None;
        result.map_err(|err| {
            self.shared.unavailable(
                "stored the dead letter but did not confirm the ack of the original",
                err,
            )
        })
    }
}

impl Drop for NatsSettle {
    fn drop(&mut self) {
        if let Some(lease) = self.lease.take() {
            lease.abort();
        }
        if let Some(acker) = self.acker.take() {
            self.shared.naks.spawn_nak(acker);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Names {
        Names::new("shop")
    }

    fn filter(patterns: &[&str]) -> String {
        let patterns: Vec<String> = patterns.iter().map(|p| p.to_string()).collect();
        names().filter_subject(&patterns)
    }

    #[test]
    fn namespace_names() {
        let names = names();
        assert_eq!(names.msg_prefix, "mosaic.shop.msg");
        assert_eq!(names.dead_prefix, "mosaic.shop.dead");
        assert_eq!(names.msg_stream, "MOSAIC_SHOP");
        assert_eq!(names.dead_stream, "MOSAIC_SHOP_DEAD");
        let odd = Names::new("my app.v2");
        assert!(odd.msg_prefix.starts_with("mosaic.my_app_v2_"), "{}", odd.msg_prefix);
        assert!(odd.msg_stream.starts_with("MOSAIC_MY_APP_V2_"), "{}", odd.msg_stream);
        assert_eq!(odd.msg_prefix.split('.').count(), 3);
    }

    #[test]
    fn tokens_are_clean_and_distinct() {
        assert_eq!(subject_token("order-worker_1"), "order-worker_1");
        let dotted = subject_token("a.b");
        let underscored = subject_token("a_b");
        assert_ne!(dotted, underscored);
        assert!(dotted.starts_with("a_b_"));
        assert!(dotted
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_'));
        assert!(!subject_token("").is_empty());
        assert_eq!(names().dead_subject("billing"), "mosaic.shop.dead.billing");
    }

    #[test]
    fn topics_round_trip_through_subjects() {
        let names = names();
        for topic in ["order", "order.created", "a._.b", "_", "tenant-1:orders/eu_west.x"] {
            let subject = names.topic_subject(topic);
            assert!(subject.ends_with("._"), "{subject}");
            assert_eq!(names.subject_topic(&subject), Some(topic), "{subject}");
        }
        assert_eq!(names.topic_subject("order.created"), "mosaic.shop.msg.order.created._");
        assert_eq!(names.subject_topic("mosaic.shop.msg._"), None);
        assert_eq!(names.subject_topic("mosaic.other.msg.order._"), None);
        assert_eq!(names.subject_topic("mosaic.shop.msg.order"), None);
    }

    #[test]
    fn patterns_map_to_filter_subjects() {
        assert_eq!(filter(&["order.created"]), "mosaic.shop.msg.order.created._");
        assert_eq!(filter(&["order.*"]), "mosaic.shop.msg.order.*._");
        assert_eq!(filter(&["*.paid"]), "mosaic.shop.msg.*.paid._");
        assert_eq!(filter(&["order.#"]), "mosaic.shop.msg.order.>");
        assert_eq!(filter(&["#"]), "mosaic.shop.msg.>");
        // Superset filters, narrowed by the exact rules in `next`.
        assert_eq!(filter(&["a.#.z"]), "mosaic.shop.msg.a.>");
        assert_eq!(filter(&["*.#.z"]), "mosaic.shop.msg.*.>");
        assert_eq!(filter(&["#.z"]), "mosaic.shop.msg.>");
        assert_eq!(filter(&["order.created", "payment.#"]), "mosaic.shop.msg.>");
        assert_eq!(filter(&[]), "mosaic.shop.msg.>");
    }

    /// NATS subject matching (`*` one token, `>` one or more at the end), for checking that
    /// every filter keeps at least what the exact topic rules accept.
    fn nats_matches(filter: &str, subject: &str) -> bool {
        let filter: Vec<&str> = filter.split('.').collect();
        let subject: Vec<&str> = subject.split('.').collect();
        for (index, token) in filter.iter().enumerate() {
            match *token {
                ">" => return subject.len() > index,
                "*" if index < subject.len() => {}
                literal if subject.get(index) == Some(&literal) => {}
                _ => return false,
            }
        }
        filter.len() == subject.len()
    }

    #[test]
    fn filters_keep_every_matching_topic_and_exact_ones_nothing_else() {
        let topics = [
            "order",
            "order.created",
            "order.created.eu",
            "order.paid",
            "order._",
            "payment",
            "payment.paid",
            "a.z",
            "a.b.c.z",
            "a.b.c",
            "_",
            "z",
        ];
        let patterns = [
            "order",
            "order.created",
            "order.*",
            "order.#",
            "*.paid",
            "#",
            "a.#.z",
            "#.z",
            "*.*",
        ];
        let names = names();
        for pattern in patterns {
            let filter = filter(&[pattern]);
            let exact = !pattern.split('.').rev().skip(1).any(|word| word == "#");
            for topic in topics {
                let wanted = super::super::topic_matches(pattern, topic);
                let kept = nats_matches(&filter, &names.topic_subject(topic));
                assert!(!wanted || kept, "{pattern} must keep {topic} (filter {filter})");
                if exact {
                    assert_eq!(kept, wanted, "{pattern} vs {topic} (filter {filter})");
                }
            }
        }
    }

    #[test]
    fn header_text_round_trips() {
        for text in [
            "handler returned an error",
            "line one\r\nline two",
            " padded ",
            "100% naïve",
            "",
            "%41",
        ] {
            let encoded = encode_header_text(text);
            assert!(!encoded.contains(['\r', '\n']), "{encoded}");
            assert_eq!(encoded.trim(), encoded, "{encoded:?}");
            assert_eq!(decode_header_text(&encoded), text);
        }
        assert_eq!(
            encode_header_text("handler returned an error"),
            "handler returned an error"
        );
        assert_eq!(decode_header_text("broken %4"), "broken %4");
    }

    #[test]
    fn long_errors_are_cut_on_a_character_boundary() {
        let text = "é".repeat(10);
        let cut = truncate_text(&text, 5);
        assert!(cut.starts_with("éé") && !cut.starts_with("ééé"), "{cut}");
        assert_eq!(truncate_text("short", 10), "short");
    }
}
