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

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::uri::AMQPUri;
use lapin::{Acker, BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ErrorKind, ExchangeKind};
use sha2::{Digest, Sha256};
use tokio::sync::Mutex as AsyncMutex;

use super::{
    now_unix_ms, Broker, BrokerError, Consumer, DeadLetter, Delivery, NewDeadLetter, Settle, SubscriptionSpec,
};
use crate::backends::redact_url;

/// How long opening a connection (TCP and AMQP handshake) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one AMQP request (declare, qos, get, close, sending a publish) may take.
const OPERATION_TIMEOUT: Duration = Duration::from_secs(5);
/// How long RabbitMQ may take to confirm that it stored a published message.
const CONFIRM_TIMEOUT: Duration = Duration::from_secs(5);
/// The bound on a whole publish (possibly reconnecting first), so that a guest never hangs on
/// a broker that is gone.
const PUBLISH_DEADLINE: Duration = Duration::from_secs(12);
/// After a failed connection attempt, operations fail at once with the same error for this
/// long instead of each waiting for its own attempt (many guests publish at once).
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);
/// The same after an attempt that timed out: the server accepts TCP but does not speak AMQP
/// (wedged, or not RabbitMQ), and lapin cannot abort a handshake it started, so each attempt
/// leaves a connection thread waiting on the server; attempts are spaced out to bound them.
const RECONNECT_PAUSE_AFTER_TIMEOUT: Duration = Duration::from_secs(10);
/// The heartbeat asked for when the URL does not say, so that a consumer on a connection to a
/// server that vanished without closing it notices within seconds rather than minutes.
const HEARTBEAT_SECS: u16 = 10;
/// AMQP delivery mode of a message that survives a broker restart.
const PERSISTENT: u8 = 2;

const TOPIC_HEADER: &str = "x-mosaic-topic";
const SUBSCRIBER_HEADER: &str = "x-mosaic-subscriber";
const ATTEMPTS_HEADER: &str = "x-mosaic-attempts";
const ERROR_HEADER: &str = "x-mosaic-error";
const DEAD_AT_HEADER: &str = "x-mosaic-dead-at-ms";
/// The W3C trace context of the publisher, under its standard name.
const TRACEPARENT_HEADER: &str = "traceparent";

/// Where the operator sets the broker; said in every error about reaching it.
const CONFIG_HINT: &str = "The broker is set by [messaging] url in mosaic.toml";

/// A [`Broker`] on a RabbitMQ server.
pub struct RabbitMqBroker {
    shared: Arc<Shared>,
}

/// What the broker, its consumers and their deliveries share.
struct Shared {
    uri: AMQPUri,
    /// The server's URL without the password, for messages.
    address: String,
    /// The sanitized application namespace.
    namespace: String,
    /// `mosaic.<ns>`: the topic exchange messages are published to.
    exchange: String,
    /// Every subscription declared so far, by subscriber; declared again on each new connection.
    subscriptions: std::sync::Mutex<BTreeMap<String, SubscriptionSpec>>,
    link: AsyncMutex<LinkState>,
    /// Held (shared) by each dropped consumer until its channel is closed; `consume` waits for
    /// them, so that the unacked messages of a consumer just dropped are back in the queue, in
    /// order, before a new consumer of the same queue starts.
    closing: Arc<tokio::sync::RwLock<()>>,
}

#[derive(Default)]
struct LinkState {
    current: Option<Link>,
    /// The last failed connection attempt, its error, and how long to fail fast with it.
    last_failure: Option<(Instant, BrokerError, Duration)>,
}

/// An open connection whose topology has been declared, with its publishing channel.
#[derive(Clone)]
struct Link {
    connection: Arc<Connection>,
    publisher: Arc<Publisher>,
    /// Set when an operation on this connection failed or timed out in a way that suggests the
    /// connection itself is bad; the next operation opens a new one.
    broken: Arc<AtomicBool>,
}

/// A channel in publisher-confirm mode.
struct Publisher {
    channel: Channel,
    /// Serializes sending: lapin numbers a confirm when the publish starts and queues its frames
    /// right after, so two concurrent publishes could otherwise swap numbers. Only the sending is
    /// serialized; the confirms are awaited concurrently.
    sending: AsyncMutex<()>,
}

/// Why an AMQP request did not succeed.
enum Failure {
    Amqp(lapin::Error),
    TimedOut(Duration),
}

impl Failure {
    /// A channel-level refusal (unknown queue, conflicting declaration): the connection is fine.
    fn is_channel_error(&self) -> bool {
        matches!(self, Failure::Amqp(err) if err.is_amqp_soft_error())
    }

    fn is_not_found(&self) -> bool {
        matches!(
            self,
            Failure::Amqp(err) if matches!(
                err.kind(),
                ErrorKind::ProtocolError(amqp) if *amqp.kind() == AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)
            )
        )
    }
}

/// Runs one AMQP request with a time limit.
async fn within<T>(limit: Duration, request: impl Future<Output = lapin::Result<T>>) -> Result<T, Failure> {
    match tokio::time::timeout(limit, request).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(Failure::Amqp(err)),
        Err(_) => Err(Failure::TimedOut(limit)),
    }
}

/// Runs one AMQP request on a connection; a failure that is not a channel-level refusal marks
/// the connection as broken (sets `broken`), so that the next operation reconnects.
async fn guarded<T>(
    broken: &AtomicBool,
    limit: Duration,
    request: impl Future<Output = lapin::Result<T>>,
) -> Result<T, Failure> {
    let result = within(limit, request).await;
    if let Err(failure) = &result {
        if !failure.is_channel_error() {
            broken.store(true, Ordering::SeqCst);
        }
    }
    result
}

impl Link {
    async fn run<T>(&self, limit: Duration, request: impl Future<Output = lapin::Result<T>>) -> Result<T, Failure> {
        guarded(&self.broken, limit, request).await
    }

    fn usable(&self) -> bool {
        !self.broken.load(Ordering::SeqCst) && self.connection.status().connected()
    }
}

/// Queue and binding names derived from the namespace and a subscriber.
fn sanitize(name: &str) -> String {
    name.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// An AMQP short string (names, routing keys), which RabbitMQ limits to 255 bytes.
fn short(text: &str, what: &str) -> Result<ShortString, BrokerError> {
    ShortString::try_new(text).map_err(|_| {
        BrokerError::Invalid(format!(
            "the RabbitMQ {what} `{text}` is {} bytes; the longest allowed is 255 (shorten the application or component name)",
            text.len()
        ))
    })
}

fn header_text(headers: &Option<FieldTable>, key: &str) -> Option<String> {
    match headers.as_ref()?.inner().get(key)? {
        AMQPValue::LongString(text) => Some(String::from_utf8_lossy(text.as_bytes()).into_owned()),
        AMQPValue::ShortString(text) => Some(text.as_str().to_string()),
        _ => None,
    }
}

fn header_number(headers: &Option<FieldTable>, key: &str) -> Option<u64> {
    match headers.as_ref()?.inner().get(key)? {
        AMQPValue::ShortShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::ShortShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::ShortInt(n) => u64::try_from(*n).ok(),
        AMQPValue::ShortUInt(n) => Some(u64::from(*n)),
        AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::LongUInt(n) => Some(u64::from(*n)),
        AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
        AMQPValue::Timestamp(n) => Some(*n),
        AMQPValue::LongString(text) => std::str::from_utf8(text.as_bytes()).ok()?.trim().parse().ok(),
        AMQPValue::ShortString(text) => text.as_str().trim().parse().ok(),
        _ => None,
    }
}

fn text_value(text: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(text))
}

fn number_value(number: u64) -> AMQPValue {
    // Signed 64-bit ('l') is the integer type every AMQP 0-9-1 client and RabbitMQ agree on.
    AMQPValue::LongLongInt(i64::try_from(number).unwrap_or(i64::MAX))
}

/// The AMQP timestamp property in milliseconds. Mosaic writes milliseconds; other publishers
/// follow the AMQP convention of seconds, which are told apart by size (a seconds value
/// stays below 10^11 until the year 5138).
fn timestamp_ms(properties: &BasicProperties) -> Option<u64> {
    let stamp = (*properties.timestamp())?;
    Some(if stamp < 100_000_000_000 {
        stamp.saturating_mul(1000)
    } else {
        stamp
    })
}

/// A fresh id for a dead letter, unique across hosts.
fn fresh_message_id() -> String {
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

async fn close_channel(channel: &Channel) {
    // Closing is awaited (not left to Drop) where what follows relies on RabbitMQ having
    // requeued the channel's unacked messages.
    if channel.status().connected() {
        let _ = within(OPERATION_TIMEOUT, channel.close(200, ShortString::from("OK"))).await;
    }
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

impl Shared {
    fn queue_name(&self, subscriber: &str) -> String {
        format!("mosaic.{}.{}", self.namespace, sanitize(subscriber))
    }

    fn dead_queue_name(&self, subscriber: &str) -> String {
        format!("{}.dead", self.queue_name(subscriber))
    }

    fn remembered(&self) -> BTreeMap<String, SubscriptionSpec> {
        self.subscriptions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The error for a request that failed; names the server and says what to do.
    fn explain(&self, doing: &str, failure: Failure) -> BrokerError {
        let address = &self.address;
        match failure {
            Failure::TimedOut(limit) => BrokerError::Unavailable(format!(
                "RabbitMQ at {address} did not answer within {} s while trying to {doing}; is it running and not overloaded? {CONFIG_HINT}",
                limit.as_secs()
            )),
            Failure::Amqp(err) if err.is_amqp_soft_error() => BrokerError::Unavailable(format!(
                "RabbitMQ at {address} refused to {doing} ({err}); check its logs and the permissions of the user in the url. {CONFIG_HINT}"
            )),
            Failure::Amqp(err) => BrokerError::Unavailable(format!(
                "RabbitMQ at {address} failed while trying to {doing} ({err}); is it running? {CONFIG_HINT}"
            )),
        }
    }

    /// The current connection, opened (with its topology declared) if there is none or the old
    /// one broke.
    async fn link(&self) -> Result<Link, BrokerError> {
        let mut state = self.link.lock().await;
        if let Some(link) = &state.current {
            if link.usable() {
                if link.publisher.channel.status().connected() {
                    return Ok(link.clone());
                }
                // The connection is fine but RabbitMQ closed the publishing channel (a channel
                // error, such as the exchange having been deleted): declare the topology again
                // and open a new publishing channel on the same connection, so that the
                // consumers on it keep running.
                let connection = link.connection.clone();
                let broken = link.broken.clone();
                let repaired = async {
                    self.declare_topology(&connection, &broken, &self.remembered()).await?;
                    self.open_publisher(&connection, &broken).await
                };
                if let Ok(publisher) = repaired.await {
                    let link = Link {
                        connection,
                        publisher,
                        broken,
                    };
                    state.current = Some(link.clone());
                    return Ok(link);
                }
            }
        }
        state.current = None;
        if let Some((failed_at, err, pause)) = &state.last_failure {
            if failed_at.elapsed() < *pause {
                return Err(err.clone());
            }
        }
        match self.open_link().await {
            Ok(link) => {
                tracing::info!(broker = %self.address, namespace = %self.namespace, "connected to RabbitMQ");
                state.last_failure = None;
                state.current = Some(link.clone());
                Ok(link)
            }
            Err((err, timed_out)) => {
                let pause = if timed_out {
                    RECONNECT_PAUSE_AFTER_TIMEOUT
                } else {
                    RECONNECT_PAUSE
                };
                state.last_failure = Some((Instant::now(), err.clone(), pause));
                Err(err)
            }
        }
    }

    /// Opens a connection and prepares it; the error says whether the attempt timed out.
    async fn open_link(&self) -> Result<Link, (BrokerError, bool)> {
        let properties = ConnectionProperties::default()
            .with_connection_name(LongString::from(format!("mosaic {}", self.namespace)));
        let connection = match within(CONNECT_TIMEOUT, Connection::connect_uri(self.uri.clone(), properties)).await {
            Ok(connection) => Arc::new(connection),
            Err(Failure::TimedOut(limit)) => {
                let message = format!(
                    "RabbitMQ at {} did not accept a connection within {} s; is it running, and is the address right? {CONFIG_HINT}",
                    self.address,
                    limit.as_secs()
                );
                return Err((BrokerError::Unavailable(message), true));
            }
            Err(Failure::Amqp(err)) => {
                let message = format!(
                    "RabbitMQ at {} is unreachable ({err}); is it running? {CONFIG_HINT}",
                    self.address
                );
                return Err((BrokerError::Unavailable(message), false));
            }
        };
        let broken = Arc::new(AtomicBool::new(false));
        // Before anything is published on the new connection: the queues must exist, or the
        // exchange would drop the messages meant for them.
        let prepared = async {
            self.declare_topology(&connection, &broken, &self.remembered()).await?;
            self.open_publisher(&connection, &broken).await
        };
        match prepared.await {
            Ok(publisher) => Ok(Link {
                connection,
                publisher,
                broken,
            }),
            Err(err) => Err((err, false)),
        }
    }

    async fn open_publisher(
        &self,
        connection: &Connection,
        broken: &AtomicBool,
    ) -> Result<Arc<Publisher>, BrokerError> {
        let channel = guarded(broken, OPERATION_TIMEOUT, connection.create_channel())
            .await
            .map_err(|failure| self.explain("open a channel", failure))?;
        guarded(
            broken,
            OPERATION_TIMEOUT,
            channel.confirm_select(ConfirmSelectOptions::default()),
        )
        .await
        .map_err(|failure| self.explain("enable publisher confirms", failure))?;
        Ok(Arc::new(Publisher {
            channel,
            sending: AsyncMutex::new(()),
        }))
    }

    /// Declares the exchange and, for each subscription, its queue, its bindings and its dead
    /// queue; on a channel of its own so that a refused declaration harms nothing else.
    async fn declare_topology(
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
    async fn unbind(&self, link: &Link, stale: &[(String, String)]) {
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

    /// Publishes one message and waits until RabbitMQ confirms that it stored it. `mandatory`:
    /// a message that reaches no queue is an error (for messages sent straight to one queue).
    async fn publish_confirmed(
        &self,
        exchange: &str,
        routing_key: &str,
        payload: &[u8],
        properties: BasicProperties,
        mandatory: bool,
    ) -> Result<(), BrokerError> {
        let exchange = short(exchange, "exchange name")?;
        let routing_key_short = short(routing_key, "routing key")?;
        let options = BasicPublishOptions {
            mandatory,
            immediate: false,
        };
        let attempt = async {
            // One retry, when the message could not even be sent: the connection may have died
            // since it was last used, and a fresh one usually works.
            let mut retried = false;
            loop {
                let link = self.link().await?;
                let sent = {
                    let _turn = link.publisher.sending.lock().await;
                    link.run(
                        OPERATION_TIMEOUT,
                        link.publisher.channel.basic_publish(
                            exchange.clone(),
                            routing_key_short.clone(),
                            options,
                            payload,
                            properties.clone(),
                        ),
                    )
                    .await
                };
                let confirm = match sent {
                    Ok(confirm) => confirm,
                    Err(Failure::Amqp(_)) if !retried => {
                        retried = true;
                        continue;
                    }
                    Err(failure) => return Err(self.explain("publish a message", failure)),
                };
                return match link.run(CONFIRM_TIMEOUT, confirm).await {
                    Ok(Confirmation::Ack(None)) => Ok(()),
                    Ok(Confirmation::Ack(Some(returned))) => Err(BrokerError::Unavailable(format!(
                        "RabbitMQ at {} could not deliver the message to `{routing_key}` ({}); the queue may have been deleted: restart the application to declare it again",
                        self.address, returned.reply_text
                    ))),
                    Ok(Confirmation::Nack(_)) => Err(BrokerError::Unavailable(format!(
                        "RabbitMQ at {} refused to store the message (negative confirm); it may be short of disk or memory: check its logs",
                        self.address
                    ))),
                    Ok(Confirmation::NotRequested) => Err(BrokerError::Unavailable(format!(
                        "RabbitMQ at {} did not confirm the message (publisher confirms are off on the channel); it may or may not have been stored",
                        self.address
                    ))),
                    Err(failure) => Err(self.explain("confirm a published message", failure)),
                };
            }
        };
        match tokio::time::timeout(PUBLISH_DEADLINE, attempt).await {
            Ok(result) => result,
            Err(_) => Err(BrokerError::Unavailable(format!(
                "RabbitMQ at {} did not accept the message within {} s; is it running? {CONFIG_HINT}",
                self.address,
                PUBLISH_DEADLINE.as_secs()
            ))),
        }
    }

    /// Takes every message of `subscriber`'s dead queue on a fresh channel, unacked: they stay
    /// taken until they are acked or the returned channel closes (which requeues them in order).
    async fn take_dead_letters(
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
    fn subscribers(&self, subscriber: Option<&str>) -> Vec<String> {
        match subscriber {
            Some(subscriber) => vec![subscriber.to_string()],
            None => self.remembered().into_keys().collect(),
        }
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
        let shared = &self.shared;
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

    async fn replay(&self, subscriber: Option<&str>, ids: &[String]) -> Result<Vec<DeadLetter>, BrokerError> {
        let shared = &self.shared;
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

        let mut replayed = Vec::new();
        let mut failure = None;
        'subscribers: for (subscriber, _, letters) in &taken {
            let queue = shared.queue_name(subscriber);
            for (letter, acker) in letters {
                if !wanted.is_empty() && !wanted.contains(letter.id.as_str()) {
                    continue;
                }
                let mut headers = FieldTable::default();
                headers.insert(ShortString::from(TOPIC_HEADER), text_value(&letter.topic));
                let properties = BasicProperties::default()
                    .with_delivery_mode(PERSISTENT)
                    .with_timestamp(now_unix_ms())
                    .with_headers(headers);
                // Straight to the subscriber's own queue through the default exchange: the other
                // subscribers of the topic handled the message already.
                let sent = shared
                    .publish_confirmed("", &queue, &letter.payload_bytes(), properties, true)
                    .await;
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

/// A subscription's stream of deliveries, on a channel of its own. Dropping it closes the
/// channel, and RabbitMQ requeues whatever it had delivered and nobody acked.
struct RabbitMqConsumer {
    shared: Arc<Shared>,
    subscriber: String,
    queue: String,
    deliveries: lapin::Consumer,
    /// Kept so that the channel lives exactly as long as the consumer.
    channel: Channel,
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

/// The broker side of one delivery: its acker on the consumer's channel.
struct RabbitMqSettle {
    acker: Acker,
    shared: Arc<Shared>,
    subscriber: String,
    settled: bool,
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_sanitized() {
        assert_eq!(sanitize("shop.eu west"), "shop_eu_west");
        assert_eq!(sanitize("order-worker_2"), "order-worker_2");
    }

    #[test]
    fn headers_are_read_whatever_their_integer_type() {
        let mut table = FieldTable::default();
        table.insert(ShortString::from("a"), AMQPValue::LongLongInt(5));
        table.insert(ShortString::from("b"), AMQPValue::LongUInt(6));
        table.insert(ShortString::from("c"), text_value("7"));
        table.insert(ShortString::from("t"), text_value("order.created"));
        let headers = Some(table);
        assert_eq!(header_number(&headers, "a"), Some(5));
        assert_eq!(header_number(&headers, "b"), Some(6));
        assert_eq!(header_number(&headers, "c"), Some(7));
        assert_eq!(header_number(&headers, "missing"), None);
        assert_eq!(header_text(&headers, "t").as_deref(), Some("order.created"));
        assert_eq!(header_text(&None, "t"), None);
    }

    #[test]
    fn timestamps_in_seconds_become_milliseconds() {
        let ms = BasicProperties::default().with_timestamp(1_700_000_000_123);
        let seconds = BasicProperties::default().with_timestamp(1_700_000_000);
        assert_eq!(timestamp_ms(&ms), Some(1_700_000_000_123));
        assert_eq!(timestamp_ms(&seconds), Some(1_700_000_000_000));
        assert_eq!(timestamp_ms(&BasicProperties::default()), None);
    }

    #[test]
    fn overlong_names_are_refused_not_panicked_on() {
        assert!(short(&"q".repeat(256), "queue name").is_err());
        assert!(short("mosaic.app.worker", "queue name").is_ok());
    }

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
