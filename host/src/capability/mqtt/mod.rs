//! Outbound MQTT: `fermyon:spin/mqtt@2.0.0` and Spin 4's `spin:mqtt/mqtt@3.0.0` (the same
//! functions, async). A guest opens `mqtt://HOST[:PORT]?client_id=ID` with a user name, a
//! password and a keep-alive interval; as in Spin, the address is checked against its
//! `allowed_outbound_hosts` first (`connection-failed("address ADDR is not permitted")`), and
//! the broker is reached on the first publish. Publishes go through the shared connection of
//! that address and those credentials ([`client::MqttClients`]); QoS 1 and 2 return once the
//! broker acknowledged. No password appears in an error or a log.

pub mod client;

use std::sync::Arc;
use std::time::Duration;

use mosaic_manifest::allowed_hosts::AllowedHosts;
use wasmtime::component::{Accessor, Resource};

use crate::capability::bindings::{spin_mqtt as v2, spin_mqtt3 as v3};
use crate::capability::with_view;
use client::{redact, BrokerKey, MqttClients};

/// The MQTT capability, app-wide: the shared connections.
pub struct Mqtt {
    clients: Arc<MqttClients>,
    metrics: Arc<crate::observe::Metrics>,
}

impl Mqtt {
    pub fn new(metrics: Arc<crate::observe::Metrics>) -> Mqtt {
        Mqtt {
            clients: Arc::default(),
            metrics,
        }
    }
}

/// No readiness check: a broker is the guests' (each names its own), not the host's; a broker
/// that is down makes their publishes fail, and the trigger logs its reconnects.
impl super::Capability for Mqtt {}

/// An open guest connection: the broker and credentials its publishes use.
pub struct MqttConnection {
    key: BrokerKey,
}

/// What one instance may reach: the shared connections, through its `allowed_outbound_hosts`.
pub struct MqttAccess {
    clients: Arc<MqttClients>,
    allowed: Arc<AllowedHosts>,
    metrics: Arc<crate::observe::Metrics>,
}

super::guest_view!(
    /// The guest's view of MQTT: its instance's access and resource table.
    MqttView,
    MqttImports,
    MqttAccess,
    mqtt,
    mqtt_view
);

impl super::GuestCapability for Mqtt {
    type Instance = MqttAccess;

    fn instance(self: &Arc<Self>, component: &super::grants::ComponentSpec) -> MqttAccess {
        MqttAccess {
            clients: self.clients.clone(),
            allowed: component.allowed_hosts.clone(),
            metrics: self.metrics.clone(),
        }
    }

    fn add_to_linker<T: super::HasInstance<MqttAccess> + Send + 'static>(
        linker: &mut wasmtime::component::Linker<T>,
    ) -> anyhow::Result<()> {
        v2::add_to_linker::<T, MqttImports>(linker, mqtt_view::<T>)?;
        v3::add_to_linker::<T, MqttImports>(linker, mqtt_view::<T>)?;
        Ok(())
    }
}

/// Why an open or a publish failed, before it becomes either version's error.
enum Failure {
    InvalidAddress,
    TooManyConnections,
    ConnectionFailed(String),
    Other(String),
}

macro_rules! mqtt_types {
    ($module:ident) => {
        impl From<Failure> for $module::Error {
            fn from(failure: Failure) -> Self {
                match failure {
                    Failure::InvalidAddress => $module::Error::InvalidAddress,
                    Failure::TooManyConnections => $module::Error::TooManyConnections,
                    Failure::ConnectionFailed(why) => $module::Error::ConnectionFailed(why),
                    Failure::Other(why) => $module::Error::Other(why),
                }
            }
        }

        impl From<$module::Qos> for rumqttc::QoS {
            fn from(qos: $module::Qos) -> Self {
                match qos {
                    $module::Qos::AtMostOnce => rumqttc::QoS::AtMostOnce,
                    $module::Qos::AtLeastOnce => rumqttc::QoS::AtLeastOnce,
                    $module::Qos::ExactlyOnce => rumqttc::QoS::ExactlyOnce,
                }
            }
        }
    };
}

mqtt_types!(v2);
mqtt_types!(v3);

impl MqttAccess {
    /// Spin's checks of an open: the address is granted (`connection-failed("address ADDR is
    /// not permitted")` if not), then it parses as an MQTT address with a client id.
    fn check_open(
        &self,
        address: &str,
        username: String,
        password: String,
        keep_alive: u64,
    ) -> Result<BrokerKey, Failure> {
        let granted = address.parse::<http::Uri>().ok().is_some_and(|uri| {
            matches!((uri.scheme_str(), uri.host()), (Some(scheme), Some(host)) if self.allowed.allows(scheme, host, uri.port_u16()))
        });
        if !granted {
            let shown = redact(address);
            tracing::warn!(address = %shown, "an MQTT connection was refused: add the address to the component's allowed_outbound_hosts");
            return Err(Failure::ConnectionFailed(format!("address {shown} is not permitted")));
        }
        let key = BrokerKey {
            address: address.to_string(),
            username,
            password,
            keep_alive: Duration::from_secs(keep_alive),
        };
        if let Err(why) = client::options(&key) {
            tracing::warn!(address = %redact(address), %why, "an MQTT connection was refused (invalid-address)");
            return Err(Failure::InvalidAddress);
        }
        Ok(key)
    }
}

/// A publish taken out of the instance before any await.
struct Publish {
    clients: Arc<MqttClients>,
    metrics: Arc<crate::observe::Metrics>,
    key: BrokerKey,
}

impl Publish {
    async fn run(self, topic: String, payload: Vec<u8>, qos: rumqttc::QoS) -> Result<(), Failure> {
        if topic.is_empty() || topic.contains(['+', '#']) {
            return Err(Failure::Other(format!(
                "invalid topic `{topic}`: a publish names one topic, without the wildcards + and #"
            )));
        }
        self.clients
            .publish(&self.key, &topic, payload, qos)
            .await
            .map_err(|why| {
                self.metrics.record_backend_error("mqtt", "mqtt");
                Failure::ConnectionFailed(why)
            })
    }
}

impl MqttView<'_> {
    fn open_connection(
        &mut self,
        address: String,
        username: String,
        password: String,
        keep_alive: u64,
    ) -> Result<Resource<MqttConnection>, Failure> {
        let key = self.mqtt().check_open(&address, username, password, keep_alive)?;
        self.table_mut()
            .push(MqttConnection { key })
            .map_err(|_| Failure::TooManyConnections)
    }

    fn publish_of(&self, connection: &Resource<MqttConnection>) -> Result<Publish, Failure> {
        let key = self
            .table()
            .get(connection)
            .map(|open| open.key.clone())
            .map_err(|err| Failure::Other(format!("invalid connection handle: {err}")))?;
        let access = self.mqtt();
        Ok(Publish {
            clients: access.clients.clone(),
            metrics: access.metrics.clone(),
            key,
        })
    }
}

impl v2::Host for MqttView<'_> {}

impl v2::HostConnection for MqttView<'_> {
    async fn open(
        &mut self,
        address: String,
        username: String,
        password: String,
        keep_alive_interval_in_secs: u64,
    ) -> Result<Resource<MqttConnection>, v2::Error> {
        Ok(self.open_connection(address, username, password, keep_alive_interval_in_secs)?)
    }

    async fn publish(
        &mut self,
        c: Resource<MqttConnection>,
        topic: String,
        payload: Vec<u8>,
        qos: v2::Qos,
    ) -> Result<(), v2::Error> {
        let publish = self.publish_of(&c)?;
        Ok(publish.run(topic, payload, qos.into()).await?)
    }

    async fn drop(&mut self, c: Resource<MqttConnection>) -> wasmtime::Result<()> {
        self.table_mut().delete(c)?;
        Ok(())
    }
}

impl v3::Host for MqttView<'_> {}

impl v3::HostConnection for MqttView<'_> {
    async fn drop(&mut self, c: Resource<MqttConnection>) -> wasmtime::Result<()> {
        self.table_mut().delete(c)?;
        Ok(())
    }
}

impl<T> v3::HostConnectionWithStore<T> for MqttImports {
    async fn open(
        accessor: &Accessor<T, Self>,
        address: String,
        username: String,
        password: String,
        keep_alive_interval_in_secs: u64,
    ) -> Result<Resource<MqttConnection>, v3::Error> {
        Ok(with_view(accessor, |mut view| {
            view.open_connection(address, username, password, keep_alive_interval_in_secs)
        })?)
    }

    async fn publish(
        accessor: &Accessor<T, Self>,
        c: Resource<MqttConnection>,
        topic: String,
        payload: Vec<u8>,
        qos: v3::Qos,
    ) -> Result<(), v3::Error> {
        let publish = with_view(accessor, |view| view.publish_of(&c))?;
        Ok(publish.run(topic, payload, qos.into()).await?)
    }
}
