//! The deploy pipeline's probe of a new version, served by the triggers: the version is
//! instantiated and nothing of it is called, unless its component opts into a `[probe.NAME]`
//! of mosaic.toml, which it must then answer. Spin never calls a handler without a request, and
//! a handler that answers every path (most do) would otherwise run its side effects (an insert,
//! a payment, a message) for a request nobody sent.

use std::sync::Arc;

use wasmtime_wasi_http::handler::ProxyPre;

use crate::app::{ComponentSpec, Deployment};
use crate::capability::http_outbound::ChainPosition;
use crate::deploy::Probe;
use crate::settings::ProbeSettings;
use crate::trigger::Dispatcher;

pub struct TriggerProbe(pub Dispatcher);

#[async_trait::async_trait]
impl Probe for TriggerProbe {
    async fn start(&self, spec: &ComponentSpec, deployment: Arc<Deployment>) -> Result<(), String> {
        let app = self.0.app();
        let timeout = app.settings.limits.probe_timeout();
        let mut store = app
            .instances
            .new_store(
                spec,
                self.0.chained(),
                ChainPosition::start(app.set_generation()),
                timeout,
            )
            .map_err(|err| format!("{err:#}"))?;
        // One instance of the component, through whichever export it is served by: the HTTP
        // and the subscriber pre-instances are of the same component.
        let instantiating = async {
            match (&deployment.http, &deployment.subscriber) {
                (Some(ProxyPre::P2(pre)), _) => pre.instance_pre().instantiate_async(&mut store).await.map(drop),
                (Some(ProxyPre::P3(pre)), _) => pre.instance_pre().instantiate_async(&mut store).await.map(drop),
                (None, Some(pre)) => pre.instantiate_async(&mut store).await.map(drop),
                (None, None) => match &deployment.mqtt {
                    Some(pre) => pre.instantiate_async(&mut store).await.map(drop),
                    None => Ok(()),
                },
            }
        };
        match tokio::time::timeout(timeout, instantiating).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(err)) => Err(format!("the new version does not start: {err:#}")),
            Err(_) => Err(format!(
                "the new version did not start within {timeout:?} (limits.probe_timeout_ms)"
            )),
        }
    }

    async fn check(
        &self,
        spec: &ComponentSpec,
        deployment: Arc<Deployment>,
        probe: &ProbeSettings,
    ) -> Result<(), String> {
        if deployment.http.is_none() {
            return Err(format!(
                "`[probe.{name}]` of mosaic.toml asks for GET {path}, but `{name}` serves no HTTP \
                 (it only handles messages); remove the section: a subscriber's new version is \
                 probed by starting it",
                name = spec.name,
                path = probe.path
            ));
        }
        self.0.probe_http(spec, deployment, probe).await
    }
}
