//! The interfaces of the Spin platform world that Mosaic has no backend for yet: LLM and MQTT
//! (`fermyon:spin/*@2.0.0`, and Spin 4's `spin:mqtt/mqtt@3.0.0`). They are linked, so that a
//! component importing them deploys and runs like under Spin (some SDKs import the whole world
//! whatever the code uses), and every call returns an error value naming what is missing. A
//! deploy of a component that imports one of them gets a warning.
//!
//! Connections can never be opened, so the connection resources are an uninhabited type. As in
//! Spin, an MQTT open checks the address against `allowed_outbound_hosts` first: one
//! not granted is `connection-failed("address ADDR is not permitted")`.

use std::sync::Arc;

use mosaic_manifest::allowed_hosts::AllowedHosts;
use wasmtime::component::Resource;

use wasmtime::component::Accessor;

use crate::capability::with_view;

use crate::capability::bindings::{spin_llm as llm, spin_mqtt as mqtt, spin_mqtt3 as mqtt3};

/// The app-wide state of the interfaces without a backend: there is none.
#[derive(Debug, Default)]
pub struct NoBackend;

/// What an instance holds of them: its grants, checked before saying there is no backend.
pub struct NoBackendAccess {
    allowed: Arc<AllowedHosts>,
}

impl NoBackendAccess {
    /// `connection-failed("address ADDR is not permitted")` (Spin's words) unless `address`
    /// is in the component's `allowed_outbound_hosts`; else the error that there is no backend.
    fn refuse_open(&self, address: &str, what: &str) -> String {
        let granted = address.parse::<http::Uri>().ok().is_some_and(|uri| {
            matches!((uri.scheme_str(), uri.host()), (Some(scheme), Some(host)) if self.allowed.allows(scheme, host, uri.port_u16()))
        });
        if granted {
            missing(what)
        } else {
            format!("address {address} is not permitted")
        }
    }
}

/// Nothing to check for readiness.
impl super::Capability for NoBackend {}

fn no_backend_view<T: super::HasInstance<NoBackendAccess>>(data: &mut T) -> &mut NoBackendAccess {
    data.instance_parts().state
}

/// The `HasData` marker of the Spin 4 interfaces without a backend (their functions are
/// concurrent calls, implemented on the marker).
pub struct NoBackendImports;

impl wasmtime::component::HasData for NoBackendImports {
    type Data<'a> = &'a mut NoBackendAccess;
}

impl super::GuestCapability for NoBackend {
    type Instance = NoBackendAccess;

    fn instance(self: &Arc<Self>, component: &super::grants::ComponentSpec) -> NoBackendAccess {
        NoBackendAccess {
            allowed: component.allowed_hosts.clone(),
        }
    }

    /// Links the LLM and MQTT interfaces, 2.0 and Spin 4's.
    fn add_to_linker<T: super::HasInstance<NoBackendAccess> + Send + 'static>(
        linker: &mut wasmtime::component::Linker<T>,
    ) -> anyhow::Result<()> {
        use wasmtime::component::HasSelf;
        llm::add_to_linker::<T, HasSelf<NoBackendAccess>>(linker, no_backend_view::<T>)?;
        mqtt::add_to_linker::<T, HasSelf<NoBackendAccess>>(linker, no_backend_view::<T>)?;
        mqtt3::add_to_linker::<T, NoBackendImports>(linker, no_backend_view::<T>)?;
        Ok(())
    }
}

/// A connection of an interface without a backend: never constructed.
pub enum NoConnection {}

/// The interfaces linked without a backend, by import name prefix, for the deploy warning.
pub const WITHOUT_BACKEND: &[(&str, &str)] = &[
    ("fermyon:spin/llm", "LLM inferencing"),
    ("fermyon:spin/mqtt", "MQTT"),
    ("spin:mqtt/mqtt", "MQTT"),
];

fn missing(what: &str) -> String {
    format!("Mosaic has no {what} backend yet, so this call is not available; see the README's list of supported interfaces")
}

impl llm::Host for NoBackendAccess {
    async fn infer(
        &mut self,
        _model: String,
        _prompt: String,
        _params: Option<llm::InferencingParams>,
    ) -> Result<llm::InferencingResult, llm::Error> {
        Err(llm::Error::RuntimeError(missing("LLM inferencing")))
    }

    async fn generate_embeddings(
        &mut self,
        _model: String,
        _text: Vec<String>,
    ) -> Result<llm::EmbeddingsResult, llm::Error> {
        Err(llm::Error::RuntimeError(missing("LLM embeddings")))
    }
}

impl mqtt::Host for NoBackendAccess {}

impl mqtt::HostConnection for NoBackendAccess {
    async fn open(
        &mut self,
        address: String,
        _user: String,
        _password: String,
        _keep_alive: u64,
    ) -> Result<Resource<NoConnection>, mqtt::Error> {
        Err(mqtt::Error::ConnectionFailed(self.refuse_open(&address, "MQTT")))
    }

    async fn publish(
        &mut self,
        _c: Resource<NoConnection>,
        _topic: String,
        _payload: Vec<u8>,
        _qos: mqtt::Qos,
    ) -> Result<(), mqtt::Error> {
        Err(mqtt::Error::Other(missing("MQTT")))
    }

    async fn drop(&mut self, _c: Resource<NoConnection>) -> wasmtime::Result<()> {
        Ok(())
    }
}

impl mqtt3::Host for NoBackendAccess {}

impl mqtt3::HostConnection for NoBackendAccess {
    async fn drop(&mut self, _c: Resource<NoConnection>) -> wasmtime::Result<()> {
        Ok(())
    }
}

impl<T> mqtt3::HostConnectionWithStore<T> for NoBackendImports {
    async fn open(
        accessor: &Accessor<T, Self>,
        address: String,
        _username: String,
        _password: String,
        _keep_alive_interval_in_secs: u64,
    ) -> Result<Resource<NoConnection>, mqtt3::Error> {
        let refusal = with_view(accessor, |access| access.refuse_open(&address, "MQTT"));
        Err(mqtt3::Error::ConnectionFailed(refusal))
    }

    async fn publish(
        _accessor: &Accessor<T, Self>,
        _c: Resource<NoConnection>,
        _topic: String,
        _payload: Vec<u8>,
        _qos: mqtt3::Qos,
    ) -> Result<(), mqtt3::Error> {
        Err(mqtt3::Error::Other(missing("MQTT")))
    }
}
