//! What a component is granted and how it is reached: the input every capability builds an
//! instance's state from. Fixed for a component's slot, whatever version of its code runs.

use std::sync::Arc;

use mosaic_manifest::allowed_hosts::AllowedHosts;
use mosaic_manifest::manifest::HttpRoute;
use mosaic_manifest::routes::RoutePattern;
use mosaic_manifest::topics::SubscriptionSpec;

use super::variables::ComponentVariables;

/// What a component is granted and how it is reached: fixed for a slot, whatever version of
/// the code runs in it.
#[derive(Debug, Clone)]
pub struct ComponentSpec {
    pub name: String,
    pub route: Option<HttpRoute>,
    pub allowed_hosts: Arc<AllowedHosts>,
    pub environment: Vec<(String, String)>,
    /// Host directory preopened at `/` when the manifest grants `files`.
    pub files_dir: Option<std::path::PathBuf>,
    pub variables: ComponentVariables,
    /// The key-value store labels this component may open.
    pub key_value_stores: Arc<[String]>,
    /// The SQLite database labels this component may open.
    pub sqlite_databases: Arc<[String]>,
    /// The channels of its `[[trigger.redis]]` entries, if it has any.
    pub subscription: Option<SubscriptionSpec>,
    /// Whether it has `[[trigger.mqtt]]` entries (then it must export the MQTT handler).
    pub mqtt: bool,
    /// Its `[component.NAME.dependencies]`, composed into every version of it.
    pub dependencies: Arc<[mosaic_manifest::dependencies::Dependency]>,
    /// The HTTP middleware of its trigger, outermost first, composed around every version.
    pub middleware: Arc<[mosaic_manifest::dependencies::Dependency]>,
}

impl ComponentSpec {
    /// Whether the component must export `wasi:http/incoming-handler`: it has a route, or no
    /// trigger at all (then it is an HTTP component reached by `deploy --route`).
    pub fn serves_http(&self) -> bool {
        self.route.is_some() || (self.subscription.is_none() && !self.mqtt)
    }
}

impl ComponentSpec {
    /// A component added by `mosaic deploy --route` with no manifest entry: no grants.
    pub fn ungranted(name: &str, route: RoutePattern) -> Self {
        Self {
            name: name.to_string(),
            route: Some(HttpRoute::Public(route)),
            allowed_hosts: Arc::new(AllowedHosts::default()),
            environment: Vec::new(),
            files_dir: None,
            variables: ComponentVariables::default(),
            key_value_stores: Arc::from(Vec::new()),
            sqlite_databases: Arc::from(Vec::new()),
            subscription: None,
            mqtt: false,
            dependencies: Arc::from(Vec::new()),
            middleware: Arc::from(Vec::new()),
        }
    }
}
