//! A `[probe.NAME]` of mosaic.toml, sent to a new version of an HTTP component before any user
//! traffic reaches it.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};

use super::headers::RouteInfo;
use super::{Origin, IN_PROCESS_CLIENT};
use crate::app::{ComponentSpec, Deployment};
use crate::settings::ProbeSettings;
use crate::trigger::Dispatcher;

impl Dispatcher {
    /// Sends `GET probe.path` to `deployment` (an instance of its own) and reads the whole
    /// answer: a status `probe.statuses` does not pass, a trap or the timeout fails.
    pub async fn probe_http(
        &self,
        spec: &ComponentSpec,
        deployment: Arc<Deployment>,
        probe: &ProbeSettings,
    ) -> Result<(), String> {
        let path = probe.path.as_str();
        let request = hyper::Request::get(path)
            .header(http::header::HOST, "mosaic.probe")
            .header("user-agent", "mosaic-deploy-probe")
            .body(Empty::<Bytes>::new())
            .map_err(|err| format!("cannot build the probe request for {path}: {err}"))?;
        // The route matches the path alone; the query stays in the request's URI.
        let route = RouteInfo::for_component(spec, path.split_once('?').map_or(path, |(path, _)| path));
        let origin = Origin {
            client: IN_PROCESS_CLIENT,
            depth: 0,
            generation: self.app.set_generation(),
            trace: None,
        };
        let timeout = probe.timeout(&self.app.settings.limits);
        let answering = async {
            let response = self
                .serve_version(spec, deployment, request, route, origin, timeout, None)
                .await
                .map_err(|err| err.to_string())?;
            let status = response.status();
            // The whole answer: a guest must be able to finish writing its body.
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|err| format!("GET {path} answered {status} but its body failed: {err}"))?
                .to_bytes();
            Ok::<_, String>((status, body))
        };
        let (status, body) = tokio::time::timeout(timeout, answering)
            .await
            .map_err(|_| format!("GET {path} got no whole answer within {timeout:?}"))??;
        if !probe.passes(status.as_u16()) {
            let excerpt = String::from_utf8_lossy(&body[..body.len().min(200)]);
            return Err(format!(
                "GET {path} answered {status}, which `[probe.{}]` does not pass: {excerpt}",
                spec.name
            ));
        }
        Ok(())
    }
}
