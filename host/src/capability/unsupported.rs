//! The interfaces of the Spin platform world that Mosaic has no backend for yet: LLM, MQTT and
//! MySQL. They are linked, so that a
//! component importing them deploys and runs like under Spin (some SDKs import the whole world
//! whatever the code uses), and every call returns an error value naming what is missing. A
//! deploy of a component that imports one of them gets a warning.
//!
//! Connections can never be opened, so the connection resources are an uninhabited type.

use wasmtime::component::Resource;

use crate::capability::bindings::{spin_llm as llm, spin_mqtt as mqtt, spin_mysql as mysql};

/// The per-instance state of the interfaces without a backend: there is none.
#[derive(Debug, Default)]
pub struct NoBackend;

/// Nothing to check for readiness.
impl super::Capability for NoBackend {}

fn no_backend_view<T: super::HasInstance<NoBackend>>(data: &mut T) -> &mut NoBackend {
    data.instance_parts().state
}

impl super::GuestCapability for NoBackend {
    type Instance = NoBackend;

    fn instance(self: &std::sync::Arc<Self>, _component: &super::grants::ComponentSpec) -> NoBackend {
        NoBackend
    }

    /// Links the LLM, MQTT and MySQL interfaces (`rdbms-types` comes with PostgreSQL).
    fn add_to_linker<T: super::HasInstance<NoBackend> + Send + 'static>(
        linker: &mut wasmtime::component::Linker<T>,
    ) -> anyhow::Result<()> {
        use wasmtime::component::HasSelf;
        llm::add_to_linker::<T, HasSelf<NoBackend>>(linker, no_backend_view::<T>)?;
        mqtt::add_to_linker::<T, HasSelf<NoBackend>>(linker, no_backend_view::<T>)?;
        mysql::add_to_linker::<T, HasSelf<NoBackend>>(linker, no_backend_view::<T>)?;
        Ok(())
    }
}

/// A connection of an interface without a backend: never constructed.
pub enum NoConnection {}

/// The interfaces linked without a backend, by import name prefix, for the deploy warning.
pub const WITHOUT_BACKEND: &[(&str, &str)] = &[
    ("fermyon:spin/llm", "LLM inferencing"),
    ("fermyon:spin/mqtt", "MQTT"),
    ("fermyon:spin/mysql", "MySQL"),
];

fn missing(what: &str) -> String {
    format!("Mosaic has no {what} backend yet, so this call is not available; see the README's list of supported interfaces")
}

impl llm::Host for NoBackend {
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

impl mqtt::Host for NoBackend {}

impl mqtt::HostConnection for NoBackend {
    async fn open(
        &mut self,
        _address: String,
        _user: String,
        _password: String,
        _keep_alive: u64,
    ) -> Result<Resource<NoConnection>, mqtt::Error> {
        Err(mqtt::Error::ConnectionFailed(missing("MQTT")))
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

macro_rules! no_rdbms_connection {
    ($module:ident, $what:literal, $execute:ty) => {
        impl $module::Host for NoBackend {}

        impl $module::HostConnection for NoBackend {
            async fn open(&mut self, _address: String) -> Result<Resource<NoConnection>, $module::Error> {
                Err($module::Error::ConnectionFailed(missing($what)))
            }

            async fn query(
                &mut self,
                _c: Resource<NoConnection>,
                _statement: String,
                _params: Vec<$module::ParameterValue>,
            ) -> Result<$module::RowSet, $module::Error> {
                Err($module::Error::Other(missing($what)))
            }

            async fn execute(
                &mut self,
                _c: Resource<NoConnection>,
                _statement: String,
                _params: Vec<$module::ParameterValue>,
            ) -> Result<$execute, $module::Error> {
                Err($module::Error::Other(missing($what)))
            }

            async fn drop(&mut self, _c: Resource<NoConnection>) -> wasmtime::Result<()> {
                Ok(())
            }
        }
    };
}

no_rdbms_connection!(mysql, "MySQL", ());
