//! The deploy pipeline's probe of an HTTP component: a health request to the new version
//! before any user traffic reaches it.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};

use super::headers::RouteInfo;
use super::{Origin, IN_PROCESS_CLIENT};
use crate::app::manifest::HttpRoute;
use crate::app::{ComponentSpec, Deployment};
use crate::trigger::Dispatcher;

impl Dispatcher {
    /// The deploy pipeline's probe: instantiates `deployment` and calls its health route
    /// before any user traffic reaches it. A component without a health route (404) passes;
    /// a 5xx, a trap or a timeout fails.
    pub async fn probe_http(&self, spec: &ComponentSpec, deployment: Arc<Deployment>) -> Result<(), String> {
        let prefix = match &spec.route {
            Some(HttpRoute::Public(pattern)) => pattern.literal_prefix(),
            _ => String::new(),
        };
        let path = format!("{prefix}/health");
        let request = hyper::Request::get(path.as_str())
            .header(http::header::HOST, "mosaic.probe")
            .header("user-agent", "mosaic-deploy-probe")
            .body(Empty::<Bytes>::new())
            .map_err(|err| format!("cannot build the probe request for {path}: {err}"))?;
        let route = RouteInfo::for_component(spec, &path);
        let origin = Origin {
            client: IN_PROCESS_CLIENT,
            depth: 0,
            trace: None,
        };
        let timeout = self.app.settings.limits.probe_timeout();
        let response = self
            .serve_version(spec, deployment, request, route, origin, timeout, None)
            .await
            .map_err(|err| err.to_string())?;
        let status = response.status();
        // Read the whole answer: a guest must be able to finish writing its body.
        let body = tokio::time::timeout(timeout, response.into_body().collect())
            .await
            .ok()
            .and_then(Result::ok)
            .map(|collected| collected.to_bytes())
            .unwrap_or_default();
        if status.is_server_error() {
            let excerpt = String::from_utf8_lossy(&body[..body.len().min(200)]).to_string();
            return Err(format!("the health route GET {path} answered {status}: {excerpt}"));
        }
        Ok(())
    }
}
