//! How an operator's deploy or rollback reaches the components: on this host alone, or, in
//! cluster mode, on this host first and then as the cluster's desired version. The admin API
//! and `mosaic watch` deploy through a [`Rollout`]; the cluster reconciler uses the local
//! pipeline underneath it.

use std::sync::Arc;

use crate::app::App;
use crate::cluster::Cluster;
use crate::deploy::{DeployError, DeployReport, DeployRequest, Pipeline};

#[derive(Clone)]
pub struct Rollout {
    pipeline: Pipeline,
    cluster: Option<Arc<Cluster>>,
}

impl Rollout {
    /// Deploys on this host alone.
    pub fn local(pipeline: Pipeline) -> Self {
        Self {
            pipeline,
            cluster: None,
        }
    }

    /// Deploys cluster-wide through `cluster`.
    pub fn clustered(pipeline: Pipeline, cluster: Arc<Cluster>) -> Self {
        Self {
            pipeline,
            cluster: Some(cluster),
        }
    }

    pub fn app(&self) -> &Arc<App> {
        self.pipeline.app()
    }

    /// This host's cluster membership, in cluster mode.
    pub fn cluster(&self) -> Option<&Arc<Cluster>> {
        self.cluster.as_ref()
    }

    pub async fn deploy(&self, request: DeployRequest) -> Result<DeployReport, DeployError> {
        match &self.cluster {
            Some(_) if self.pipeline.app().manifest.is_dependency_only(&request.component) => {
                Err(dependency_in_cluster(&request.component))
            }
            Some(cluster) => cluster.deploy(&self.pipeline, request).await,
            None => self.pipeline.deploy(request).await,
        }
    }

    /// Makes the canary of `component` its live version (on every host, in cluster mode).
    pub async fn promote(&self, component: &str) -> Result<DeployReport, DeployError> {
        match &self.cluster {
            Some(cluster) => cluster.promote(&self.pipeline, component).await,
            None => self.pipeline.promote(component),
        }
    }

    pub async fn rollback(&self, component: &str) -> Result<DeployReport, DeployError> {
        match &self.cluster {
            Some(_) if self.pipeline.app().manifest.is_dependency_only(component) => {
                Err(dependency_in_cluster(component))
            }
            Some(cluster) => cluster.rollback(&self.pipeline, component).await,
            None => self.pipeline.rollback(component).await,
        }
    }
}

/// The cluster store keeps one desired version per served component; a dependency's version
/// would have to move every dependent's on every host at once, which it cannot say yet.
fn dependency_in_cluster(component: &str) -> DeployError {
    DeployError::at(
        component,
        crate::deploy::Step::Receive,
        format!(
            "`{component}` runs only composed into other components, and a deploy of such a component is not \
             supported in cluster mode yet: replace its file and restart the hosts one by one, or deploy it \
             on a host outside the cluster"
        ),
    )
}
