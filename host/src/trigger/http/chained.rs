//! In-process chaining: `http://NAME.spin.internal` and `http://self` requests of a guest are
//! served by the dispatcher without a socket, like incoming requests one hop deeper.

use http::StatusCode;
use wasmtime_wasi_http::{Error as HttpError, WasiBody};

use super::headers::RouteInfo;
use super::IN_PROCESS_CLIENT;
use crate::capability::http_outbound::{BoxFuture, ChainTarget, ChainedRequests};
use crate::trigger::body::json_error;
use crate::trigger::Dispatcher;

impl ChainedRequests for Dispatcher {
    fn serve_chained(
        &self,
        target: ChainTarget,
        request: http::Request<WasiBody>,
        depth: u32,
        generation: u64,
    ) -> BoxFuture<Result<http::Response<WasiBody>, HttpError>> {
        let dispatcher = self.clone();
        Box::pin(async move {
            let path = request.uri().path().to_string();
            let (component, route) = match target {
                ChainTarget::Component(name) => {
                    let Some(slot) = dispatcher.app.slot(&name) else {
                        tracing::warn!(target_component = %name, "chained request to a component that does not exist");
                        return Err(HttpError::DestinationNotFound);
                    };
                    let route = RouteInfo::for_component(&slot.spec, &path);
                    (name, route)
                }
                ChainTarget::App => {
                    let router = dispatcher.app.router();
                    let Some((pattern, component, matched)) = router.route(&path) else {
                        return Ok(json_error(
                            StatusCode::NOT_FOUND,
                            "not found",
                            format!("no route matches {path}"),
                        ));
                    };
                    (component.to_string(), RouteInfo::new(Some(pattern), matched))
                }
            };
            Ok(dispatcher
                .serve_live(&component, request, route, IN_PROCESS_CLIENT, depth, Some(generation))
                .await)
        })
    }
}
