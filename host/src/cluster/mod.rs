//! Cluster mode: several hosts serve one application behind a load balancer and behave as one
//! platform. The desired version of every component lives in PostgreSQL ([`store`]); nothing
//! else is shared between hosts but the backends the application already uses (PostgreSQL,
//! Redis, RabbitMQ or NATS), so there is no consensus of Mosaic's own.
//!
//! - A deploy or rollback through any host runs the whole pipeline on that host first (so a
//!   bad version is refused before any other host sees it), then writes the new desired
//!   version and its source to the store in one transaction and `NOTIFY`s the other hosts.
//! - Every host listens for that notification and also compares its versions with the desired
//!   ones every `reconcile_interval_ms`; a difference goes through the same local pipeline
//!   (fetch the source by digest, compile or take the cached artifact, migrate, probe, flip),
//!   so each host swaps with no failed request, exactly as a single host does.
//! - Each reconcile also reports what the host runs (its heartbeat), which `mosaic status`
//!   shows per host while a rollout happens. A new host converges before it serves.
//! - A canary through any host is written to the store once it runs there; every host runs it
//!   with the store's share. Each host's supervisor shares its counts through the store and
//!   judges on the sum; its decisions (a step, a promotion, an automatic rollback) become the
//!   cluster's with a conditional write, then every host follows them.

pub mod store;

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::Serialize;
use tokio::sync::{watch, Notify};
use tokio::task::JoinHandle;

use crate::app::canary::{basis_points, Canary, Counts};
use crate::deploy::journal::Action;
use crate::deploy::{CanaryCoordinator, CanaryDecision, DeployError, DeployReport, DeployRequest, Pipeline, Step};
use crate::digest::{short, Digest};
use crate::settings::ClusterSettings;
use crate::stop::stopped;
use store::{ClusterCanary, ClusterStore, Desired, HostReport, NewCanary, NewDesired, StoreError};

/// Longest wait between two attempts to reach the store's notification channel.
const LISTEN_RETRY_MAX: Duration = Duration::from_secs(10);

/// This host's membership in a cluster.
pub struct Cluster {
    store: ClusterStore,
    host_name: String,
    settings: ClusterSettings,
    http_addr: String,
    admin_addr: String,
    started_at_ms: i64,
    /// Per component: held by a deploy through this host from its local flip until the store
    /// has the new desired version, and by the reconciler while it applies one, so that
    /// neither undoes the other.
    component_locks: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
    /// Per component: why this host does not run the desired version, if it does not.
    errors: Mutex<BTreeMap<String, String>>,
    /// Woken by a notification from the store.
    wake: Notify,
}

/// The cluster as `mosaic status` shows it.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct ClusterStatus {
    pub namespace: String,
    pub this_host: String,
    /// component → desired digest.
    pub desired: BTreeMap<String, String>,
    /// component → the canary every host runs beside it.
    #[serde(default)]
    pub canaries: BTreeMap<String, ClusterCanary>,
    pub hosts: Vec<HostStatus>,
}

#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct HostStatus {
    #[serde(flatten)]
    pub report: HostReport,
    /// Milliseconds since its last report.
    pub silent_ms: i64,
    /// Whether it reported within `cluster.host_timeout_ms`.
    pub alive: bool,
}

impl Cluster {
    /// Joins the cluster whose store `settings.postgres` names.
    pub async fn join(
        settings: &ClusterSettings,
        namespace: &str,
        http_addr: std::net::SocketAddr,
        admin_addr: std::net::SocketAddr,
    ) -> Result<Arc<Cluster>, StoreError> {
        let Some(address) = &settings.postgres else {
            return Err(StoreError(
                "cluster mode needs [cluster] postgres in mosaic.toml (or --cluster)".into(),
            ));
        };
        let store = ClusterStore::open(address, namespace).await?;
        let host_name = settings
            .host_name
            .clone()
            .unwrap_or_else(|| format!("{}:{}", machine_name(), http_addr.port()));
        Ok(Arc::new(Cluster {
            store,
            host_name,
            settings: settings.clone(),
            http_addr: http_addr.to_string(),
            admin_addr: admin_addr.to_string(),
            started_at_ms: now_ms(),
            component_locks: Mutex::default(),
            errors: Mutex::default(),
            wake: Notify::new(),
        }))
    }

    pub fn host_name(&self) -> &str {
        &self.host_name
    }

    fn lock_of(&self, component: &str) -> Arc<tokio::sync::Mutex<()>> {
        let mut locks = self
            .component_locks
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        locks.entry(component.to_string()).or_default().clone()
    }

    fn set_error(&self, component: &str, error: Option<String>) {
        let mut errors = self.errors.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        match error {
            Some(error) => {
                if errors.get(component) != Some(&error) {
                    tracing::warn!(%component, %error, "this host cannot run the cluster's desired version; retrying at each reconcile");
                }
                errors.insert(component.to_string(), error);
            }
            None => {
                errors.remove(component);
            }
        }
    }

    /// Deploys on this host, then makes the version the desired one of every host. If the
    /// store cannot take it, this host goes back to the version it replaced, so that the
    /// cluster does not split.
    pub async fn deploy(&self, pipeline: &Pipeline, request: DeployRequest) -> Result<DeployReport, DeployError> {
        let component = request.component.clone();
        let lock = self.lock_of(&component);
        let Ok(_held) = lock.try_lock() else {
            return Err(DeployError::Conflict { component });
        };
        let route = request.route.clone();
        let action = request.action.clone();
        let source = Arc::new(request.bytes.clone());
        let policy = request.canary.clone();
        let report = pipeline.deploy(request).await?;
        match policy {
            Some(policy) => self.publish_canary(pipeline, &report, &source, &policy).await?,
            None => {
                self.publish(pipeline, &report, &source, route.as_deref(), &action)
                    .await?
            }
        }
        Ok(report)
    }

    /// Writes a canary this host now runs as the cluster's; if the store cannot take it, this
    /// host ends it (the stable version serves everything again).
    async fn publish_canary(
        &self,
        pipeline: &Pipeline,
        report: &DeployReport,
        source: &[u8],
        policy: &crate::app::canary::CanaryPolicy,
    ) -> Result<(), DeployError> {
        let stable = report.previous.as_ref().map(Digest::as_str).unwrap_or_default();
        let stable_source = std::fs::read(pipeline.app().state.source_of(stable)).ok();
        let canary = NewCanary {
            component: &report.component,
            digest: report.digest.as_str(),
            source,
            stable,
            stable_source: stable_source.as_deref(),
            policy,
            share_bp: basis_points(policy.percent),
        };
        match self.store.start_canary(&canary, &self.host_name).await {
            Ok(()) => {
                self.wake.notify_one();
                tracing::info!(component = %report.component, canary = %report.digest.short(), "canary of the cluster");
                Ok(())
            }
            Err(err) => {
                let reason = format!("the cluster did not take the canary: {err}");
                let _ = pipeline.end_canary(&report.component, Action::CanaryRollback, Some(reason.clone()));
                Err(DeployError::at(
                    &report.component,
                    Step::Cluster,
                    format!("{err}; this host ended the canary"),
                ))
            }
        }
    }

    /// Promotes the canary of `component` on every host.
    pub async fn promote(&self, pipeline: &Pipeline, component: &str) -> Result<DeployReport, DeployError> {
        let lock = self.lock_of(component);
        let Ok(_held) = lock.try_lock() else {
            return Err(DeployError::Conflict {
                component: component.to_string(),
            });
        };
        let canary = local_canary(pipeline, component)?;
        let promoted = self
            .record_decision(component, &canary, &CanaryDecision::Promote)
            .await
            .map_err(|err| DeployError::at(component, Step::Cluster, err.to_string()))?;
        if !promoted {
            return Err(self.not_the_clusters_canary(component, &canary.deployment.digest));
        }
        self.wake.notify_one();
        pipeline.promote(component)
    }

    /// Makes `decision` about this host's `canary` the cluster's, if the store's canary is
    /// still that one (and, for a step, still at its step); false when another host decided
    /// first.
    async fn record_decision(
        &self,
        component: &str,
        canary: &Canary,
        decision: &CanaryDecision,
    ) -> Result<bool, StoreError> {
        let digest = canary.deployment.digest.as_str();
        match decision {
            CanaryDecision::Step { share_bp, .. } => {
                self.store
                    .step_canary(component, digest, canary.step(), *share_bp, &self.host_name)
                    .await
            }
            CanaryDecision::Promote => self.store.promote_canary(component, digest, &self.host_name).await,
            CanaryDecision::End { action, reason } => {
                self.store
                    .end_canary(component, digest, action.as_str(), reason.as_deref(), &self.host_name)
                    .await
            }
        }
    }

    fn not_the_clusters_canary(&self, component: &str, digest: &Digest) -> DeployError {
        self.wake.notify_one();
        DeployError::NotFound {
            component: component.to_string(),
            reason: format!(
                "the cluster has no canary {} of it in progress (another host ended or replaced it); \
                 this host follows the cluster at its next reconcile",
                digest.short()
            ),
        }
    }

    /// Rolls the whole cluster back: to the version the desired one replaced (or, before any
    /// cluster-wide change, to the one this host's current version replaced).
    pub async fn rollback(&self, pipeline: &Pipeline, component: &str) -> Result<DeployReport, DeployError> {
        let lock = self.lock_of(component);
        let Ok(_held) = lock.try_lock() else {
            return Err(DeployError::Conflict {
                component: component.to_string(),
            });
        };
        if let Ok(canary) = local_canary(pipeline, component) {
            // During a canary, a rollback ends it on every host.
            let operators = CanaryDecision::End {
                action: Action::CanaryRollback,
                reason: None,
            };
            let ended = self
                .record_decision(component, &canary, &operators)
                .await
                .map_err(|err| DeployError::at(component, Step::Cluster, err.to_string()))?;
            if !ended {
                return Err(self.not_the_clusters_canary(component, &canary.deployment.digest));
            }
            self.wake.notify_one();
            return pipeline.end_canary(component, Action::CanaryRollback, None);
        }
        let store_failed = |err: StoreError| DeployError::at(component, Step::Cluster, err.to_string());
        let target = self.store.rollback_target(component).await.map_err(store_failed)?;
        let source = match target {
            Some((_, None)) => {
                return Err(DeployError::NotFound {
                    component: component.to_string(),
                    reason: "the cluster has no earlier version of it to roll back to".into(),
                })
            }
            Some((_, Some(previous))) => self
                .source_of(pipeline, &previous)
                .await
                .map_err(|reason| DeployError::at(component, Step::Receive, reason))?,
            None => pipeline.previous_version(component)?.1,
        };
        let report = pipeline
            .deploy(DeployRequest::rollback(component, source.clone()))
            .await?;
        self.publish(pipeline, &report, &source, None, &Action::Rollback)
            .await?;
        Ok(report)
    }

    /// Writes a version this host now runs as the cluster's desired one.
    async fn publish(
        &self,
        pipeline: &Pipeline,
        report: &DeployReport,
        source: &[u8],
        route: Option<&str>,
        action: &Action,
    ) -> Result<(), DeployError> {
        let replaced_source = match &report.previous {
            Some(previous) => std::fs::read(pipeline.app().state.source_of(previous.as_str())).ok(),
            None => None,
        };
        let change = NewDesired {
            component: &report.component,
            digest: report.digest.as_str(),
            source,
            route,
            action: action.as_str(),
            replaced: report
                .previous
                .as_ref()
                .map(Digest::as_str)
                .zip(replaced_source.as_deref()),
        };
        match self.store.set_desired(&change, &self.host_name).await {
            Ok(_) => {
                self.set_error(&report.component, None);
                self.wake.notify_one();
                tracing::info!(component = %report.component, version = %report.digest.short(), "desired version of the cluster");
                Ok(())
            }
            Err(err) => {
                let undone = match (&report.previous, replaced_source) {
                    (Some(_), Some(bytes)) => pipeline
                        .deploy(DeployRequest::undo(&report.component, bytes))
                        .await
                        .is_ok(),
                    _ => false,
                };
                let what = if undone {
                    "this host went back to the version it replaced"
                } else {
                    "this host serves the new version until the store is back, then the cluster's desired one"
                };
                Err(DeployError::at(
                    &report.component,
                    Step::Cluster,
                    format!("{err}; {what}"),
                ))
            }
        }
    }

    /// The source of `digest`: from this host's state directory, else from the store.
    async fn source_of(&self, pipeline: &Pipeline, digest: &str) -> Result<Vec<u8>, String> {
        if let Ok(bytes) = std::fs::read(pipeline.app().state.source_of(digest)) {
            if Digest::of(&bytes) == digest {
                return Ok(bytes);
            }
        }
        match self.store.source(digest).await {
            Ok(Some(bytes)) if Digest::of(&bytes) == digest => Ok(bytes),
            Ok(Some(_)) => Err(format!(
                "the cluster store's source of version {} does not match its digest",
                short(digest)
            )),
            Ok(None) => Err(format!("the cluster store has no source of version {}", short(digest))),
            Err(err) => Err(err.to_string()),
        }
    }

    /// Brings every component to its desired version (those not being deployed through this
    /// host right now), then reports what this host runs.
    pub async fn reconcile(&self, pipeline: &Pipeline) -> Result<(), StoreError> {
        let desired = self.store.desired().await?;
        let canaries = self.store.canaries().await?;
        // A canary this host runs that the cluster promoted, ended or changed goes first: a
        // plain deploy is refused while a canary is in progress.
        for slot in pipeline.app().slots() {
            if let Some(local) = slot.canary.load_full() {
                let name = &slot.spec.name;
                let in_store = canaries.iter().find(|canary| canary.component == *name);
                let wanted = desired.iter().find(|wanted| wanted.component == *name);
                self.follow_canary_end(pipeline, name, &local, in_store, wanted).await;
            }
        }
        for wanted in &desired {
            self.converge(pipeline, wanted).await;
        }
        for canary in &canaries {
            self.follow_canary(pipeline, canary).await;
        }
        self.report(pipeline).await
    }

    /// Brings this host's canary of `component` to the cluster's: the store's share, or its
    /// end (promoted: the desired version is the canary; else rolled back, saying why).
    async fn follow_canary_end(
        &self,
        pipeline: &Pipeline,
        component: &str,
        local: &Arc<Canary>,
        in_store: Option<&ClusterCanary>,
        desired: Option<&Desired>,
    ) {
        let lock = self.lock_of(component);
        let Ok(_held) = lock.try_lock() else { return };
        let digest = &local.deployment.digest;
        let outcome = match in_store {
            Some(canary) if canary.digest == digest.as_str() => {
                if (canary.share_bp, canary.step) == (local.share(), local.step()) || local.share() == 0 {
                    return;
                }
                let step = CanaryDecision::Step {
                    share_bp: canary.share_bp,
                    step: canary.step,
                };
                pipeline.apply_canary_decision(component, local, step)
            }
            _ if desired.is_some_and(|wanted| wanted.digest == digest.as_str()) => {
                pipeline.promote(component).map(drop)
            }
            _ => {
                let reason = match self.store.canary_end(component, digest.as_str()).await {
                    Ok(Some((action, reason, by))) => {
                        let why = reason.unwrap_or_else(|| "by an operator".to_string());
                        (
                            action == Action::AutoRollback.as_str(),
                            format!("{why} (decided on host {by})"),
                        )
                    }
                    Ok(None) => (false, "the cluster runs another canary or none".to_string()),
                    Err(err) => {
                        tracing::debug!(%component, error = %err, "cannot read how the cluster's canary ended");
                        return;
                    }
                };
                let action = if reason.0 {
                    Action::AutoRollback
                } else {
                    Action::CanaryRollback
                };
                local.withdraw();
                pipeline.end_canary(component, action, Some(reason.1)).map(drop)
            }
        };
        match outcome {
            Ok(()) | Err(DeployError::Conflict { .. }) => {}
            Err(err) => self.set_error(component, Some(err.to_string())),
        }
    }

    /// Starts on this host a canary of the cluster it does not run yet, at the store's share.
    async fn follow_canary(&self, pipeline: &Pipeline, canary: &ClusterCanary) {
        let app = pipeline.app();
        let Some(slot) = app.slot(&canary.component) else {
            return;
        };
        if slot.canary.load().is_some() {
            return;
        }
        let live = slot.live.load().digest.clone();
        if live.as_str() != canary.stable {
            self.set_error(
                &canary.component,
                Some(format!(
                    "the cluster's canary {} runs beside {}, but this host serves {}",
                    short(&canary.digest),
                    short(&canary.stable),
                    live.short()
                )),
            );
            return;
        }
        let lock = self.lock_of(&canary.component);
        let Ok(_held) = lock.try_lock() else { return };
        let bytes = match self.source_of(pipeline, &canary.digest).await {
            Ok(bytes) => bytes,
            Err(reason) => {
                self.set_error(&canary.component, Some(format!("receive: {reason}")));
                return;
            }
        };
        let request = DeployRequest::canary(&canary.component, bytes, canary.policy.clone());
        match pipeline.deploy(request).await {
            Ok(_) => {
                if let Some(started) = slot.canary.load_full() {
                    if started.share() != canary.share_bp {
                        started.set_share(canary.share_bp, canary.step);
                    }
                }
                self.set_error(&canary.component, None);
                tracing::info!(component = %canary.component, canary = %short(&canary.digest), by = %canary.updated_by, "now running the cluster's canary");
            }
            Err(DeployError::Conflict { .. }) => {}
            Err(err) => self.set_error(&canary.component, Some(err.to_string())),
        }
    }

    async fn converge(&self, pipeline: &Pipeline, wanted: &Desired) {
        let app = pipeline.app();
        let live = app.slot(&wanted.component).map(|slot| slot.live.load().digest.clone());
        if live.as_ref().is_some_and(|live| *live == wanted.digest) {
            self.set_error(&wanted.component, None);
            return;
        }
        let lock = self.lock_of(&wanted.component);
        let Ok(_held) = lock.try_lock() else {
            // A deploy through this host is under way; the next reconcile looks again.
            return;
        };
        let bytes = match self.source_of(pipeline, &wanted.digest).await {
            Ok(bytes) => bytes,
            Err(reason) => {
                self.set_error(&wanted.component, Some(format!("receive: {reason}")));
                return;
            }
        };
        let route = match app.manifest.components.contains_key(&wanted.component) {
            true => None,
            false => wanted.route.clone(),
        };
        let action = match wanted.action.as_str() {
            "rollback" => Action::Rollback,
            _ => Action::Deploy,
        };
        let request = DeployRequest::converge(&wanted.component, bytes, route, action);
        match pipeline.deploy(request).await {
            Ok(report) => {
                self.set_error(&wanted.component, None);
                tracing::info!(component = %wanted.component, version = %report.digest.short(), by = %wanted.updated_by, "now on the cluster's desired version");
            }
            Err(DeployError::Conflict { .. }) => {}
            Err(err) => self.set_error(&wanted.component, Some(err.to_string())),
        }
    }

    async fn report(&self, pipeline: &Pipeline) -> Result<(), StoreError> {
        let versions = pipeline
            .app()
            .slots()
            .iter()
            .map(|slot| (slot.spec.name.clone(), slot.live.load().digest.to_string()))
            .collect();
        let errors = self
            .errors
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone();
        self.store
            .report(&HostReport {
                host: self.host_name.clone(),
                http_addr: self.http_addr.clone(),
                admin_addr: self.admin_addr.clone(),
                started_at_ms: self.started_at_ms,
                seen_at_ms: now_ms(),
                versions,
                errors,
            })
            .await
    }

    /// Whether the cluster store answers (for `/readyz`).
    pub async fn check(&self) -> Result<(), StoreError> {
        self.store.desired().await.map(|_| ())
    }

    /// The desired versions and every host's, for `mosaic status`.
    pub async fn status(&self) -> Result<ClusterStatus, StoreError> {
        let desired = self.store.desired().await?;
        let canaries = self.store.canaries().await?;
        let hosts = self.store.hosts().await?;
        let now = now_ms();
        let timeout = i64::try_from(self.settings.host_timeout_ms).unwrap_or(i64::MAX);
        Ok(ClusterStatus {
            namespace: self.store.namespace.clone(),
            this_host: self.host_name.clone(),
            desired: desired.into_iter().map(|d| (d.component, d.digest)).collect(),
            canaries: canaries
                .into_iter()
                .map(|canary| (canary.component.clone(), canary))
                .collect(),
            hosts: hosts
                .into_iter()
                .map(|report| {
                    let silent_ms = (now - report.seen_at_ms).max(0);
                    HostStatus {
                        report,
                        silent_ms,
                        alive: silent_ms <= timeout,
                    }
                })
                .collect(),
        })
    }

    /// Runs the listener and the reconciler until `stop`; then leaves the host list.
    pub fn start(self: &Arc<Self>, pipeline: &Pipeline, stop: watch::Receiver<bool>) -> Vec<JoinHandle<()>> {
        let listener = tokio::spawn(self.clone().listen(stop.clone()));
        let reconciler = tokio::spawn(self.clone().run_reconciler(pipeline.clone(), stop));
        vec![listener, reconciler]
    }

    async fn run_reconciler(self: Arc<Self>, pipeline: Pipeline, mut stop: watch::Receiver<bool>) {
        let interval = self.settings.reconcile_interval();
        let mut store_was_down = false;
        let mut rounds: u64 = 0;
        loop {
            tokio::select! {
                _ = self.wake.notified() => {}
                _ = tokio::time::sleep(interval) => {}
                _ = stopped(&mut stop) => break,
            }
            match self.reconcile(&pipeline).await {
                Ok(()) if store_was_down => {
                    tracing::info!("the cluster store answers again");
                    store_was_down = false;
                }
                Ok(()) => {}
                Err(err) if !store_was_down => {
                    tracing::warn!(error = %err, "cannot reconcile with the cluster store; this host keeps its versions and retries");
                    store_was_down = true;
                }
                Err(_) => {}
            }
            rounds += 1;
            // Now and then, forget hosts that have been silent for a long time.
            if rounds.is_multiple_of(100) {
                let forget_before =
                    now_ms() - 10 * i64::try_from(self.settings.host_timeout_ms).unwrap_or(i64::MAX / 20);
                let _ = self.store.forget_hosts_silent_since(forget_before).await;
            }
        }
        if let Err(err) = self.store.leave(&self.host_name).await {
            tracing::warn!(error = %err, "cannot remove this host from the cluster's list; it shows as gone after cluster.host_timeout_ms");
        }
    }

    /// Keeps a connection that `LISTEN`s for changes of the desired versions; reconnects with
    /// a backoff, and wakes the reconciler after each (re)connect in case it missed one.
    async fn listen(self: Arc<Self>, mut stop: watch::Receiver<bool>) {
        let mut retry_in = Duration::from_millis(200);
        loop {
            let outcome = tokio::select! {
                outcome = self.listen_once() => outcome,
                _ = stopped(&mut stop) => return,
            };
            if let Err(err) = outcome {
                tracing::debug!(error = %err, ?retry_in, "the cluster notification channel is down; the reconciler still polls");
            }
            tokio::select! {
                _ = tokio::time::sleep(retry_in) => {}
                _ = stopped(&mut stop) => return,
            }
            retry_in = (retry_in * 2).min(LISTEN_RETRY_MAX);
        }
    }

    async fn listen_once(&self) -> Result<(), String> {
        use std::str::FromStr;
        let mut config = tokio_postgres::Config::from_str(self.store.address()).map_err(|err| err.to_string())?;
        config.connect_timeout(crate::backends::POSTGRES_CONNECT_TIMEOUT);
        let (client, mut connection) = config
            .connect(tokio_postgres::NoTls)
            .await
            .map_err(|err| err.to_string())?;
        let (notifications, mut received) = tokio::sync::mpsc::unbounded_channel();
        let driver = tokio::spawn(async move {
            loop {
                match futures_util::future::poll_fn(|cx| connection.poll_message(cx)).await {
                    Some(Ok(tokio_postgres::AsyncMessage::Notification(notification))) => {
                        if notifications.send(notification.payload().to_string()).is_err() {
                            return;
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(_)) | None => return,
                }
            }
        });
        let listening = client
            .batch_execute(&format!("LISTEN {}", store::CHANNEL))
            .await
            .map_err(|err| err.to_string());
        if let Err(err) = listening {
            driver.abort();
            return Err(err);
        }
        self.wake.notify_one();
        while let Some(namespace) = received.recv().await {
            if namespace == self.store.namespace {
                self.wake.notify_one();
            }
        }
        driver.abort();
        Err("the notification connection closed".into())
    }
}

#[async_trait::async_trait]
impl CanaryCoordinator for Cluster {
    async fn exchange_counts(&self, component: &str, canary: &Canary) -> Result<(Counts, Counts), String> {
        // A host that stopped reporting for longer than this is gone; its counts with it.
        let since = now_ms() - i64::try_from(self.settings.host_timeout_ms).unwrap_or(i64::MAX / 2);
        self.store
            .exchange_canary_counts(
                component,
                canary.deployment.digest.as_str(),
                &self.host_name,
                canary.local_counts(),
                since,
            )
            .await
            .map_err(|err| err.to_string())
    }

    async fn decide(
        &self,
        pipeline: &Pipeline,
        component: &str,
        canary: &Arc<Canary>,
        decision: CanaryDecision,
    ) -> Result<(), String> {
        if let CanaryDecision::End { .. } = decision {
            // Whatever the store says, it serves nothing new from now on.
            canary.withdraw();
        }
        let lock = self.lock_of(component);
        let _held = lock.lock().await;
        let still_running = pipeline
            .app()
            .slot(component)
            .and_then(|slot| slot.canary.load_full())
            .is_some_and(|current| Arc::ptr_eq(&current, canary));
        if !still_running {
            return Ok(());
        }
        let taken = self
            .record_decision(component, canary, &decision)
            .await
            .map_err(|err| err.to_string())?;
        self.wake.notify_one();
        if !taken {
            // Another host decided first; the reconciler brings this host to what it decided.
            return Ok(());
        }
        pipeline
            .apply_canary_decision(component, canary, decision)
            .map_err(|err| err.to_string())
    }
}

/// The canary of `component` this host runs.
fn local_canary(pipeline: &Pipeline, component: &str) -> Result<Arc<Canary>, DeployError> {
    pipeline
        .app()
        .slot(component)
        .and_then(|slot| slot.canary.load_full())
        .ok_or_else(|| DeployError::NotFound {
            component: component.to_string(),
            reason: "no canary is in progress (start one with `mosaic deploy NAME FILE --canary PERCENT`)".into(),
        })
}

/// The machine's host name, for the default host name in the cluster.
fn machine_name() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|name| name.trim().to_string())
        .filter(|name| !name.is_empty())
        .unwrap_or_else(|| "host".to_string())
}

fn now_ms() -> i64 {
    crate::clock::now_unix_ms_i64()
}
