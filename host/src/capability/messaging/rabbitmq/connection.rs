//! The one connection shared by everything, opened lazily and again after it breaks: time
//! limits on every AMQP request, marking a connection broken, failing fast for a pause after a
//! failed attempt, and declaring the topology before anything is published on a new
//! connection.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{LongString, ShortString};
use lapin::uri::AMQPUri;
use lapin::{Channel, Connection, ConnectionProperties, ErrorKind};
use tokio::sync::Mutex as AsyncMutex;

use super::publish::Publisher;
use super::CONFIG_HINT;
use crate::capability::messaging::{BrokerError, SubscriptionSpec};

/// How long opening a connection (TCP and AMQP handshake) may take.
pub(super) const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long one AMQP request (declare, qos, get, close, sending a publish) may take.
pub(super) const OPERATION_TIMEOUT: Duration = Duration::from_secs(5);
/// After a failed connection attempt, operations fail at once with the same error for this
/// long instead of each waiting for its own attempt (many guests publish at once).
const RECONNECT_PAUSE: Duration = Duration::from_secs(1);
/// The same after an attempt that timed out: the server accepts TCP but does not speak AMQP
/// (wedged, or not RabbitMQ), and lapin cannot abort a handshake it started, so each attempt
/// leaves a connection thread waiting on the server; attempts are spaced out to bound them.
const RECONNECT_PAUSE_AFTER_TIMEOUT: Duration = Duration::from_secs(10);
/// The heartbeat asked for when the URL does not say, so that a consumer on a connection to a
/// server that vanished without closing it notices within seconds rather than minutes.
pub(super) const HEARTBEAT_SECS: u16 = 10;

/// What the broker, its consumers and their deliveries share.
pub(super) struct Shared {
    pub(super) uri: AMQPUri,
    /// The server's URL without the password, for messages.
    pub(super) address: String,
    /// The sanitized application namespace.
    pub(super) namespace: String,
    /// `mosaic.<ns>`: the topic exchange messages are published to.
    pub(super) exchange: String,
    /// Every subscription declared so far, by subscriber; declared again on each new connection.
    pub(super) subscriptions: std::sync::Mutex<BTreeMap<String, SubscriptionSpec>>,
    pub(super) link: AsyncMutex<LinkState>,
    /// Held (shared) by each dropped consumer until its channel is closed; `consume` waits for
    /// them, so that the unacked messages of a consumer just dropped are back in the queue, in
    /// order, before a new consumer of the same queue starts.
    pub(super) closing: Arc<tokio::sync::RwLock<()>>,
}

#[derive(Default)]
pub(super) struct LinkState {
    current: Option<Link>,
    /// The last failed connection attempt, its error, and how long to fail fast with it.
    last_failure: Option<(Instant, BrokerError, Duration)>,
}

/// An open connection whose topology has been declared, with its publishing channel.
#[derive(Clone)]
pub(super) struct Link {
    pub(super) connection: Arc<Connection>,
    pub(super) publisher: Arc<Publisher>,
    /// Set when an operation on this connection failed or timed out in a way that suggests the
    /// connection itself is bad; the next operation opens a new one.
    pub(super) broken: Arc<AtomicBool>,
}

/// Why an AMQP request did not succeed.
pub(super) enum Failure {
    Amqp(lapin::Error),
    TimedOut(Duration),
}

impl Failure {
    /// A channel-level refusal (unknown queue, conflicting declaration): the connection is fine.
    fn is_channel_error(&self) -> bool {
        matches!(self, Failure::Amqp(err) if err.is_amqp_soft_error())
    }

    pub(super) fn is_not_found(&self) -> bool {
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
pub(super) async fn within<T>(limit: Duration, request: impl Future<Output = lapin::Result<T>>) -> Result<T, Failure> {
    match tokio::time::timeout(limit, request).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(err)) => Err(Failure::Amqp(err)),
        Err(_) => Err(Failure::TimedOut(limit)),
    }
}

/// Runs one AMQP request on a connection; a failure that is not a channel-level refusal marks
/// the connection as broken (sets `broken`), so that the next operation reconnects.
pub(super) async fn guarded<T>(
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
    pub(super) async fn run<T>(
        &self,
        limit: Duration,
        request: impl Future<Output = lapin::Result<T>>,
    ) -> Result<T, Failure> {
        guarded(&self.broken, limit, request).await
    }

    pub(super) fn usable(&self) -> bool {
        !self.broken.load(Ordering::SeqCst) && self.connection.status().connected()
    }
}

pub(super) async fn close_channel(channel: &Channel) {
    // Closing is awaited (not left to Drop) where what follows relies on RabbitMQ having
    // requeued the channel's unacked messages.
    if channel.status().connected() {
        let _ = within(OPERATION_TIMEOUT, channel.close(200, ShortString::from("OK"))).await;
    }
}

impl Shared {
    pub(super) fn remembered(&self) -> BTreeMap<String, SubscriptionSpec> {
        self.subscriptions
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// The error for a request that failed; names the server and says what to do.
    pub(super) fn explain(&self, doing: &str, failure: Failure) -> BrokerError {
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
    pub(super) async fn link(&self) -> Result<Link, BrokerError> {
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
}
