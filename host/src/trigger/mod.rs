//! How work reaches a component: incoming HTTP requests (and in-process chained requests),
//! messages of its `[[trigger.redis]]` subscription and of its `[[trigger.mqtt]]` topics. Both go through one [`Dispatcher`].

pub mod body;
pub mod http;
pub mod messages;
pub mod mqtt;
pub mod probe;

use std::sync::Arc;

use crate::app::App;
use crate::capability::http_outbound::ChainedRequests;
use http::admission::Admission;

/// Runs work on a component's live version: shared by the HTTP trigger, in-process chaining
/// (it is the guests' [`ChainedRequests`]), the message trigger and the deploy probe. Cheap to
/// clone.
#[derive(Clone)]
pub struct Dispatcher {
    app: Arc<App>,
    admission: Arc<Admission>,
}

impl Dispatcher {
    pub fn new(app: Arc<App>) -> Self {
        let limit = app
            .settings
            .http
            .in_flight_per_component(app.settings.limits.max_concurrent_instances);
        let admission = Arc::new(Admission::new(limit));
        Self { app, admission }
    }

    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    /// What an instance started by this dispatcher sends its in-process requests to.
    pub fn chained(&self) -> Arc<dyn ChainedRequests> {
        Arc::new(self.clone())
    }
}
