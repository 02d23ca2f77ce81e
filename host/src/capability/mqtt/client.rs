//! The shared MQTT connections: one per broker address and credentials, used by every instance
//! in turn (an MQTT client id holds one session at a broker at a time, so one connection per
//! `client_id`). A background task drives each connection's event loop (keep-alive pings); a
//! publish returns once the broker took it as its QoS says: QoS 0 when it is written, QoS 1 at
//! the broker's PUBACK, QoS 2 at its PUBCOMP. A broker that is down is an error within
//! [`PUBLISH_DEADLINE`]; the next publish connects again.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, Incoming, MqttOptions, Outgoing, QoS};
use tokio::sync::mpsc;

/// How long a publish may take, connecting included.
pub const PUBLISH_DEADLINE: Duration = Duration::from_secs(10);
/// How long the TCP connect and the MQTT handshake may take.
const CONNECT_TIMEOUT_SECS: u64 = 5;
/// Requests queued in one connection's client.
const CHANNEL_CAPACITY: usize = 64;

/// A broker and the credentials a connection logs in with. `Debug` leaves the password out.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct BrokerKey {
    pub address: String,
    pub username: String,
    pub password: String,
    pub keep_alive: Duration,
}

impl std::fmt::Debug for BrokerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerKey")
            .field("address", &redact(&self.address))
            .field("username", &self.username)
            .finish_non_exhaustive()
    }
}

/// `address` without the credentials a URL may carry (`mqtt://user:pass@host`) and without its
/// query: what errors and logs may show.
pub fn redact(address: &str) -> String {
    let without_query = address.split('?').next().unwrap_or_default();
    match without_query.split_once("://") {
        Some((scheme, rest)) => {
            let authority = rest.rsplit_once('@').map(|(_, host)| host).unwrap_or(rest);
            format!("{scheme}://{authority}")
        }
        None => without_query.to_string(),
    }
}

/// The options of a connection to `key`'s broker: Spin's address format,
/// `mqtt://HOST[:PORT]?client_id=ID` (rumqttc's URL parser, as Spin uses it).
pub fn options(key: &BrokerKey) -> Result<MqttOptions, String> {
    let mut options = MqttOptions::parse_url(key.address.as_str())
        .map_err(|err| format!("invalid MQTT address {}: {err}", redact(&key.address)))?;
    if !key.username.is_empty() || !key.password.is_empty() {
        options.set_credentials(key.username.clone(), key.password.clone());
    }
    if key.keep_alive >= Duration::from_secs(1) {
        options.set_keep_alive(key.keep_alive);
    }
    Ok(options)
}

/// An event loop with its connection settings applied (the connect timeout).
pub fn event_loop(options: MqttOptions, capacity: usize) -> (AsyncClient, EventLoop) {
    let (client, mut event_loop) = AsyncClient::new(options, capacity);
    let mut network = rumqttc::NetworkOptions::new();
    network.set_connection_timeout(CONNECT_TIMEOUT_SECS);
    network.set_tcp_nodelay(true);
    event_loop.set_network_options(network);
    (client, event_loop)
}

/// One live connection: its client and the events its event loop produced.
struct Session {
    client: AsyncClient,
    events: mpsc::UnboundedReceiver<Result<Event, String>>,
    driver: tokio::task::JoinHandle<()>,
}

impl Drop for Session {
    fn drop(&mut self) {
        self.driver.abort();
    }
}

impl Session {
    fn start(key: &BrokerKey) -> Result<Session, String> {
        let (client, mut event_loop) = event_loop(options(key)?, CHANNEL_CAPACITY);
        let (sender, events) = mpsc::unbounded_channel();
        let driver = tokio::spawn(async move {
            loop {
                let event = event_loop.poll().await;
                let failed = event.is_err();
                if sender.send(event.map_err(|err| err.to_string())).is_err() || failed {
                    return;
                }
            }
        });
        Ok(Session { client, events, driver })
    }

    /// Publishes and waits for what `qos` asks of the broker. Any error ends the session.
    async fn publish(&mut self, topic: &str, payload: Vec<u8>, qos: QoS) -> Result<(), String> {
        // Events from before this publish (pings, a connect) say nothing about it, except that
        // the connection broke.
        while let Ok(event) = self.events.try_recv() {
            event?;
        }
        self.client
            .publish(topic, qos, false, payload)
            .await
            .map_err(|err| format!("the MQTT client stopped: {err}"))?;
        loop {
            let event = self
                .events
                .recv()
                .await
                .ok_or_else(|| "the MQTT connection closed".to_string())??;
            match (qos, event) {
                (QoS::AtMostOnce, Event::Outgoing(Outgoing::Publish(_)))
                | (QoS::AtLeastOnce, Event::Incoming(Incoming::PubAck(_)))
                | (QoS::ExactlyOnce, Event::Incoming(Incoming::PubComp(_))) => return Ok(()),
                (_, Event::Incoming(Incoming::ConnAck(ack))) if ack.code != rumqttc::ConnectReturnCode::Success => {
                    return Err(format!("the broker refused the connection: {:?}", ack.code));
                }
                _ => continue,
            }
        }
    }
}

/// A connection to one broker, opened on the first publish and again after it broke.
#[derive(Default)]
struct Shared {
    session: tokio::sync::Mutex<Option<Session>>,
}

/// Every shared connection, by broker and credentials.
#[derive(Default)]
pub struct MqttClients {
    by_key: Mutex<HashMap<BrokerKey, Arc<Shared>>>,
}

impl MqttClients {
    fn shared(&self, key: &BrokerKey) -> Arc<Shared> {
        let mut by_key = self.by_key.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        by_key.entry(key.clone()).or_default().clone()
    }

    /// Publishes on `key`'s shared connection (connecting first if it has none), within
    /// [`PUBLISH_DEADLINE`]. The error never shows the password.
    pub async fn publish(&self, key: &BrokerKey, topic: &str, payload: Vec<u8>, qos: QoS) -> Result<(), String> {
        let shared = self.shared(key);
        let attempt = async {
            let mut session = shared.session.lock().await;
            if session.as_ref().is_none_or(|live| live.driver.is_finished()) {
                *session = Some(Session::start(key)?);
            }
            let live = session.as_mut().expect("just set");
            let outcome = live.publish(topic, payload, qos).await;
            if outcome.is_err() {
                *session = None;
            }
            outcome
        };
        let broker = redact(&key.address);
        match tokio::time::timeout(PUBLISH_DEADLINE, attempt).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(format!("MQTT broker {broker}: {}", scrub(&err, &key.password))),
            Err(_) => {
                // The connection that did not answer is not reused.
                if let Ok(mut session) = shared.session.try_lock() {
                    *session = None;
                }
                Err(format!(
                    "MQTT broker {broker}: no acknowledgement within {PUBLISH_DEADLINE:?}"
                ))
            }
        }
    }
}

/// `message` with every occurrence of `password` masked (a client error could echo it).
pub fn scrub(message: &str, password: &str) -> String {
    if password.is_empty() {
        message.to_string()
    } else {
        message.replace(password, "***")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redact_drops_credentials_and_query() {
        assert_eq!(redact("mqtt://u:secret@host:1883?client_id=a"), "mqtt://host:1883");
        assert_eq!(redact("mqtt://127.0.0.1:1883?client_id=a"), "mqtt://127.0.0.1:1883");
        let key = BrokerKey {
            address: "mqtt://h?client_id=a".into(),
            username: "u".into(),
            password: "secret".into(),
            keep_alive: Duration::from_secs(5),
        };
        assert!(!format!("{key:?}").contains("secret"));
    }

    #[test]
    fn the_address_needs_a_client_id_as_in_spin() {
        let key = |address: &str| BrokerKey {
            address: address.into(),
            username: String::new(),
            password: String::new(),
            keep_alive: Duration::from_secs(5),
        };
        assert!(options(&key("mqtt://127.0.0.1:1883?client_id=a")).is_ok());
        assert!(options(&key("mqtt://127.0.0.1:1883")).is_err());
    }

    #[tokio::test]
    async fn a_closed_port_fails_within_the_deadline() {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let clients = MqttClients::default();
        let key = BrokerKey {
            address: format!("mqtt://127.0.0.1:{port}?client_id=t"),
            username: "u".into(),
            password: "hunter2".into(),
            keep_alive: Duration::from_secs(5),
        };
        let started = std::time::Instant::now();
        let err = clients
            .publish(&key, "t", b"x".to_vec(), QoS::AtLeastOnce)
            .await
            .unwrap_err();
        assert!(started.elapsed() < PUBLISH_DEADLINE, "{:?}", started.elapsed());
        assert!(!err.contains("hunter2"), "{err}");
    }
}
