//! The interface of the Spin platform world that Mosaic has no backend for yet: LLM
//! (`fermyon:spin/llm@2.0.0`). It is linked, so that a component importing it deploys and runs
//! like under Spin (some SDKs import the whole world whatever the code uses), and every call
//! returns an error value naming what is missing. A deploy of a component that imports it gets
//! a warning.

use std::sync::Arc;

use crate::capability::bindings::spin_llm as llm;

/// The app-wide state of the interfaces without a backend: there is none.
#[derive(Debug, Default)]
pub struct NoBackend;

/// What an instance holds of them: nothing.
pub struct NoBackendAccess;

/// Nothing to check for readiness.
impl super::Capability for NoBackend {}

fn no_backend_view<T: super::HasInstance<NoBackendAccess>>(data: &mut T) -> &mut NoBackendAccess {
    data.instance_parts().state
}

impl super::GuestCapability for NoBackend {
    type Instance = NoBackendAccess;

    fn instance(self: &Arc<Self>, _component: &super::grants::ComponentSpec) -> NoBackendAccess {
        NoBackendAccess
    }

    /// Links the LLM interface.
    fn add_to_linker<T: super::HasInstance<NoBackendAccess> + Send + 'static>(
        linker: &mut wasmtime::component::Linker<T>,
    ) -> anyhow::Result<()> {
        use wasmtime::component::HasSelf;
        llm::add_to_linker::<T, HasSelf<NoBackendAccess>>(linker, no_backend_view::<T>)?;
        Ok(())
    }
}

/// The interfaces linked without a backend, by import name prefix, for the deploy warning.
pub const WITHOUT_BACKEND: &[(&str, &str)] = &[("fermyon:spin/llm", "LLM inferencing")];

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
