//! The running application: its manifest, the component slots (one live deployment each,
//! swapped atomically) and the router that maps paths to components.

pub mod canary;
pub mod files;
pub mod migrate;
pub mod runtime_config;

// The manifest and route parsers live in the `mosaic-manifest` crate (fuzzed on their own).
pub use mosaic_manifest::{manifest, routes};

use std::collections::{BTreeMap, HashSet};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use arc_swap::{ArcSwap, ArcSwapOption};
use tokio::sync::Notify;
use wasmtime::Engine;
use wasmtime_wasi_http::handler::ProxyPre;

use crate::capability::bindings::subscriber::SubscriberPre;
pub use crate::capability::grants::ComponentSpec;
use crate::digest::Digest;
use crate::instance::{Capabilities, InstanceFactory, InstanceState};
use crate::instance_pool::InstancePool;
use crate::settings::Settings;
use crate::state::StateDir;
use manifest::{HttpRoute, Manifest};
use routes::{RoutePattern, Router};

/// The WASI release a component targets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wasi {
    /// WASI 0.2 (spin-sdk 5.x, `wasi:http/incoming-handler@0.2`).
    V0_2,
    /// WASI 0.3, component-model async (spin-sdk 7, Spin's Python SDK 5, `wasi:http/handler@0.3`).
    V0_3,
}

/// What a component targets, as `validate` found it: shown by `mosaic status` and in a
/// deploy's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct World {
    pub wasi: Wasi,
    /// The exports its triggers call, e.g. `wasi:http/handler@0.3.0`.
    pub entry_points: Vec<String>,
}

impl std::fmt::Display for World {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let release = match self.wasi {
            Wasi::V0_2 => "WASI 0.2",
            Wasi::V0_3 => "WASI 0.3",
        };
        if self.entry_points.is_empty() {
            write!(f, "{release}")
        } else {
            write!(f, "{release} ({})", self.entry_points.join(", "))
        }
    }
}

/// One compiled, linked version of a component, with the exports its triggers call.
pub struct Deployment {
    pub digest: Digest,
    pub deployed_at: SystemTime,
    /// `wasi:http/incoming-handler@0.2` or `wasi:http/handler@0.3`, when the component serves
    /// HTTP.
    pub http: Option<ProxyPre<InstanceState>>,
    /// `fermyon:spin/inbound-redis`, when the component has a message subscription.
    pub subscriber: Option<SubscriberPre<InstanceState>>,
    /// The MQTT trigger plugin's `handle-message`, when the component has `[[trigger.mqtt]]`
    /// entries.
    pub mqtt: Option<crate::capability::bindings::mqtt_handler::MqttHandlerPre<InstanceState>>,
    pub world: World,
    /// The reused instances that serve this version's requests (when it reuses instances),
    /// made on the first request; taken away when the version stops being live.
    pool: ArcSwapOption<InstancePool>,
    pool_creation: Mutex<()>,
    /// This version's instances in pools (reused ones, and those made for one probe or one
    /// chained request), alive now.
    pooled_instances: Arc<AtomicUsize>,
    in_flight: AtomicU64,
    drained: Notify,
}

impl Deployment {
    pub fn new(
        digest: Digest,
        http: Option<ProxyPre<InstanceState>>,
        subscriber: Option<SubscriberPre<InstanceState>>,
        world: World,
    ) -> Self {
        Self {
            digest,
            deployed_at: SystemTime::now(),
            http,
            subscriber,
            mqtt: None,
            world,
            pool: ArcSwapOption::empty(),
            pool_creation: Mutex::new(()),
            pooled_instances: Arc::new(AtomicUsize::new(0)),
            in_flight: AtomicU64::new(0),
            drained: Notify::new(),
        }
    }

    /// This version with the MQTT handler its `[[trigger.mqtt]]` entries call.
    pub fn with_mqtt(
        mut self,
        mqtt: Option<crate::capability::bindings::mqtt_handler::MqttHandlerPre<InstanceState>>,
    ) -> Self {
        self.mqtt = mqtt;
        self
    }

    /// The pool of reused instances, made by `make` if there is none.
    pub fn pool(&self, make: impl FnOnce() -> InstancePool) -> Arc<InstancePool> {
        if let Some(pool) = self.pool.load_full() {
            return pool;
        }
        let _creating = self
            .pool_creation
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(pool) = self.pool.load_full() {
            return pool;
        }
        let pool = Arc::new(make());
        self.pool.store(Some(pool.clone()));
        pool
    }

    /// How many of this version's pooled instances are alive, serving or idle (0 when it
    /// makes a fresh instance per request).
    pub fn pooled_instances(&self) -> usize {
        self.pooled_instances.load(Ordering::SeqCst)
    }

    /// The counter a new pool of this version counts its instances in.
    pub fn pooled_instance_counter(&self) -> Arc<AtomicUsize> {
        self.pooled_instances.clone()
    }

    /// This version is no longer live: its reused instances end once their requests have.
    /// (If it becomes live again, by a rollback, its next request makes a new pool.)
    pub fn retire_instances(&self) {
        if let Some(pool) = self.pool.swap(None) {
            pool.retire();
        }
    }

    /// Counts a request (or a message delivery) as in flight on this version until the guard
    /// drops.
    pub fn enter(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::SeqCst);
        InFlight {
            deployment: self.clone(),
        }
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::SeqCst)
    }

    /// Waits until no request runs on this version, up to `timeout`; returns how many were
    /// still running at the deadline.
    pub async fn drain(&self, timeout: std::time::Duration) -> u64 {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let notified = self.drained.notified();
            if self.in_flight() == 0 {
                return 0;
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.in_flight();
            }
        }
    }

    pub fn short_digest(&self) -> &str {
        self.digest.short()
    }
}

pub struct InFlight {
    deployment: Arc<Deployment>,
}

impl Drop for InFlight {
    fn drop(&mut self) {
        if self.deployment.in_flight.fetch_sub(1, Ordering::SeqCst) == 1 {
            self.deployment.drained.notify_waiters();
        }
    }
}

#[derive(Default)]
pub struct SlotStats {
    pub requests: AtomicU64,
    pub errors: AtomicU64,
}

/// A named place where one version of a component is live, and, during a canary, a second
/// version takes a share of the new requests.
pub struct ComponentSlot {
    pub spec: ComponentSpec,
    pub live: ArcSwap<Deployment>,
    /// The version the last deploy set replaced, still reached by the in-process calls of
    /// chains that began before that flip (see [`App::pick`]), until they have ended.
    pub superseded: ArcSwapOption<Superseded>,
    pub canary: ArcSwapOption<canary::Canary>,
    /// How the last canary ended (`auto_rollback of VERSION: why`), for `mosaic status`.
    pub last_canary: ArcSwapOption<String>,
    pub stats: SlotStats,
}

/// A version a deploy set's flip replaced: what a chain that began before the flip runs on,
/// while the version the flip installed is still the live one.
pub struct Superseded {
    pub deployment: Arc<Deployment>,
    /// The deploy-set generation the flip began.
    pub flipped_at: u64,
    /// The version the flip installed in its place.
    pub installed: Arc<Deployment>,
}

/// The version a request or a delivery runs on; during a canary, which of the two it is, so
/// that its outcome counts for that one.
pub struct Picked {
    pub deployment: Arc<Deployment>,
    pub canary: Option<(Arc<canary::Canary>, canary::Arm)>,
}

impl Picked {
    /// Counts the outcome for the canary's judgement (nothing without a canary).
    pub fn record(&self, failed: bool) {
        if let Some((canary, arm)) = &self.canary {
            canary.record(*arm, failed);
        }
    }
}

impl ComponentSlot {
    pub fn new(spec: ComponentSpec, deployment: Arc<Deployment>) -> Self {
        Self {
            spec,
            live: ArcSwap::new(deployment),
            superseded: ArcSwapOption::empty(),
            canary: ArcSwapOption::empty(),
            last_canary: ArcSwapOption::empty(),
            stats: SlotStats::default(),
        }
    }

    /// The version a request of a chain that began in deploy-set `generation` runs on: the
    /// version a later set's flip replaced, while the flip's version is still live; else as
    /// [`Self::pick`].
    pub fn pick_in_chain<'h>(
        &self,
        generation: u64,
        sticky: impl FnOnce(&http::HeaderName) -> Option<&'h [u8]>,
    ) -> Picked {
        if let Some(old) = self.superseded.load_full() {
            if generation < old.flipped_at && Arc::ptr_eq(&self.live.load(), &old.installed) {
                return Picked {
                    deployment: old.deployment.clone(),
                    canary: None,
                };
            }
        }
        self.pick(sticky)
    }

    /// The version a new request runs on: the live one, or during a canary the canary's for
    /// its share (`sticky` gives the value of the canary's sticky header, if it has one).
    pub fn pick<'h>(&self, sticky: impl FnOnce(&http::HeaderName) -> Option<&'h [u8]>) -> Picked {
        let Some(canary) = self.canary.load_full() else {
            return Picked {
                deployment: self.live.load_full(),
                canary: None,
            };
        };
        let value = canary.sticky_header().and_then(sticky);
        if canary.takes(value) {
            Picked {
                deployment: canary.deployment.clone(),
                canary: Some((canary, canary::Arm::Canary)),
            }
        } else {
            Picked {
                deployment: self.live.load_full(),
                canary: Some((canary, canary::Arm::Stable)),
            }
        }
    }
}

/// The whole running application.
pub struct App {
    pub linker: wasmtime::component::Linker<InstanceState>,
    pub settings: Settings,
    pub manifest: Manifest,
    pub state: StateDir,
    /// Makes the instances: the engine, the limits and every capability.
    pub instances: InstanceFactory,
    pub metrics: Arc<crate::observe::Metrics>,
    slots: RwLock<BTreeMap<String, Arc<ComponentSlot>>>,
    router: ArcSwap<Router>,
    deploying: Mutex<HashSet<String>>,
    /// The running version of each component that runs only composed into others.
    dependency_versions: RwLock<BTreeMap<String, DependencyVersion>>,
    /// Written while a deploy set flips, read while a request picks its version: no pick sees
    /// half a set.
    set_flip: RwLock<()>,
    /// How many deploy sets have flipped (the generation a chain begins in).
    set_generations: AtomicU64,
}

/// The running version of a component that runs only as a dependency or middleware of
/// others: what they are composed with.
#[derive(Clone)]
pub struct DependencyVersion {
    pub digest: Digest,
    pub bytes: Arc<Vec<u8>>,
    pub deployed_at: SystemTime,
}

/// Held while a deploy of one component runs; a second deploy of the same one is refused.
pub struct DeployLock<'a> {
    app: &'a App,
    component: String,
}

impl Drop for DeployLock<'_> {
    fn drop(&mut self) {
        if let Ok(mut deploying) = self.app.deploying.lock() {
            deploying.remove(&self.component);
        }
    }
}

impl App {
    pub fn new(
        linker: wasmtime::component::Linker<InstanceState>,
        settings: Settings,
        manifest: Manifest,
        state: StateDir,
        instances: InstanceFactory,
    ) -> Self {
        let router = Router::new(manifest_routes(&manifest));
        let metrics = instances.metrics.clone();
        Self {
            linker,
            settings,
            manifest,
            state,
            instances,
            metrics,
            slots: RwLock::new(BTreeMap::new()),
            router: ArcSwap::from_pointee(router),
            deploying: Mutex::new(HashSet::new()),
            dependency_versions: RwLock::new(BTreeMap::new()),
            set_flip: RwLock::new(()),
            set_generations: AtomicU64::new(0),
        }
    }

    pub fn engine(&self) -> &Engine {
        &self.instances.engine
    }

    /// Every capability's app-wide state.
    pub fn capabilities(&self) -> &Arc<Capabilities> {
        &self.instances.capabilities
    }

    pub fn slot(&self, component: &str) -> Option<Arc<ComponentSlot>> {
        self.slots.read().ok()?.get(component).cloned()
    }

    pub fn slots(&self) -> Vec<Arc<ComponentSlot>> {
        self.slots
            .read()
            .map(|slots| slots.values().cloned().collect())
            .unwrap_or_default()
    }

    pub fn router(&self) -> Arc<Router> {
        self.router.load_full()
    }

    /// What the metrics read at the moment they are written rather than count as it happens:
    /// (component, version, requests running) for the live and canary version of each
    /// component, and (subscriber, messages waiting) from the messaging backends.
    pub async fn metric_gauges(&self) -> (Vec<(String, String, u64)>, Vec<(String, u64)>) {
        let in_flight: Vec<(String, String, u64)> = self
            .slots()
            .iter()
            .flat_map(|slot| {
                let canary = slot.canary.load_full().map(|canary| canary.deployment.clone());
                std::iter::once(slot.live.load_full()).chain(canary).map(|version| {
                    (
                        slot.spec.name.clone(),
                        version.short_digest().to_string(),
                        version.in_flight(),
                    )
                })
            })
            .collect();
        let mut scrape = crate::capability::Scrape::default();
        for capability in self.capabilities().all() {
            capability.scrape(&mut scrape).await;
        }
        (in_flight, scrape.pending)
    }

    /// Takes the per-component deploy lock, or `None` if a deploy of it is running.
    pub fn try_lock_deploy(&self, component: &str) -> Option<DeployLock<'_>> {
        let mut deploying = self.deploying.lock().ok()?;
        if !deploying.insert(component.to_string()) {
            return None;
        }
        Some(DeployLock {
            app: self,
            component: component.to_string(),
        })
    }

    /// The version of `slot` a request runs on, and the deploy-set generation of its chain:
    /// for an in-process call, the caller's (`chain_generation`), whose versions it keeps to;
    /// for a request that begins a chain, the current one. Never one of half a set's flip:
    /// the flip holds the other side of the lock.
    pub fn pick<'h>(
        &self,
        slot: &ComponentSlot,
        chain_generation: Option<u64>,
        sticky: impl FnOnce(&http::HeaderName) -> Option<&'h [u8]>,
    ) -> (Picked, u64) {
        let _not_mid_flip = self.set_flip.read().unwrap_or_else(|poisoned| poisoned.into_inner());
        let generation = chain_generation.unwrap_or_else(|| self.set_generation());
        (slot.pick_in_chain(generation, sticky), generation)
    }

    /// The deploy-set generation now: how many sets have flipped.
    pub fn set_generation(&self) -> u64 {
        self.set_generations.load(Ordering::SeqCst)
    }

    /// The running version of the dependency-only component `component`.
    pub fn dependency_version(&self, component: &str) -> Option<DependencyVersion> {
        self.dependency_versions.read().ok()?.get(component).cloned()
    }

    /// The running versions of every dependency-only component, by name.
    pub fn dependency_versions(&self) -> BTreeMap<String, DependencyVersion> {
        self.dependency_versions
            .read()
            .map(|versions| versions.clone())
            .unwrap_or_default()
    }

    pub fn set_dependency_version(&self, component: &str, version: DependencyVersion) {
        if let Ok(mut versions) = self.dependency_versions.write() {
            versions.insert(component.to_string(), version);
        }
    }

    /// The flip of a deploy set: every one of `versions` (each with its component's spec)
    /// becomes live at once, as requests see it, and begins a new deploy-set generation; the
    /// chains that began before keep to the versions it replaced ([`ComponentSlot::superseded`]).
    /// Returns the replaced versions.
    pub fn install_set(&self, versions: &[(ComponentSpec, Arc<Deployment>)]) -> Vec<Arc<Deployment>> {
        let _flip = self.set_flip.write().unwrap_or_else(|poisoned| poisoned.into_inner());
        let flipped_at = self.set_generations.fetch_add(1, Ordering::SeqCst) + 1;
        let mut replaced = Vec::new();
        for (spec, deployment) in versions {
            let Some(slot) = self.slot(&spec.name) else {
                continue;
            };
            let previous = slot.live.swap(deployment.clone());
            previous.retire_instances();
            slot.superseded.store(Some(Arc::new(Superseded {
                deployment: previous.clone(),
                flipped_at,
                installed: deployment.clone(),
            })));
            replaced.push(previous);
        }
        replaced
    }

    /// Once the chains that began before a deploy set's flip have ended, `replaced` (a version
    /// the flip replaced in `component`) is let go.
    pub fn forget_superseded(&self, component: &str, replaced: &Arc<Deployment>) {
        let Some(slot) = self.slot(component) else { return };
        let current = slot.superseded.load_full();
        if current
            .as_ref()
            .is_some_and(|old| Arc::ptr_eq(&old.deployment, replaced))
        {
            slot.superseded.compare_and_swap(&current, None);
        }
    }

    /// The flip: makes `deployment` the live version of the slot (creating the slot and its
    /// route for a new component) and returns the version it replaced.
    pub fn install(&self, spec: &ComponentSpec, deployment: Arc<Deployment>) -> Option<Arc<Deployment>> {
        let existing = self.slot(&spec.name);
        if let Some(slot) = existing {
            let previous = slot.live.swap(deployment);
            previous.retire_instances();
            // A version of its own: no deploy set's chain is pinned to this slot any longer.
            slot.superseded.store(None);
            return Some(previous);
        }
        let slot = Arc::new(ComponentSlot::new(spec.clone(), deployment));
        if let Ok(mut slots) = self.slots.write() {
            slots.insert(spec.name.clone(), slot);
        }
        // Manifest components are routed from the start (a component may have several
        // routes); one added by `deploy --route` gets its route now.
        if let (Some(HttpRoute::Public(pattern)), false) =
            (&spec.route, self.manifest.components.contains_key(&spec.name))
        {
            self.router.rcu(|router| router.with_route(pattern.clone(), &spec.name));
        }
        None
    }

    /// The grants a component has under the manifest (or none, for one added by deploy).
    /// Stages its `files` grant on first use.
    pub fn spec_for(&self, component: &str) -> Result<Option<ComponentSpec>, String> {
        if let Some(slot) = self.slot(component) {
            return Ok(Some(slot.spec.clone()));
        }
        let Some(decl) = self.manifest.components.get(component) else {
            return Ok(None);
        };
        let allowed = self.capabilities().variables.allowed_hosts(&self.manifest, component)?;
        let files_dir = files::stage(&self.manifest, component, &self.state.files_dir())?;
        let variables = self.capabilities().variables.for_component(&self.manifest, component)?;
        Ok(Some(ComponentSpec {
            name: component.to_string(),
            route: self.manifest.route_of(component).cloned(),
            allowed_hosts: Arc::new(allowed),
            environment: decl.environment.iter().map(|(k, v)| (k.clone(), v.clone())).collect(),
            files_dir,
            variables,
            key_value_stores: Arc::from(decl.key_value_stores.clone()),
            sqlite_databases: Arc::from(decl.sqlite_databases.clone()),
            subscription: self.manifest.subscription_of(component),
            mqtt: !self.manifest.mqtt_triggers_of(component).is_empty(),
            dependencies: Arc::from(decl.resolved_dependencies.clone()),
            middleware: Arc::from(decl.middleware.clone()),
        }))
    }

    /// Applies `migrations/<component>/` to the component's database ([`migrate::MigrationPlan`]).
    /// Returns the migrations applied now.
    pub async fn migrate(&self, spec: &ComponentSpec) -> Result<Vec<String>, String> {
        let capabilities = self.capabilities();
        let plan = migrate::MigrationPlan {
            manifest_dir: &self.manifest.dir,
            targets: &self.settings.migrations,
        };
        let backends = migrate::MigrationBackends {
            sqlite: &capabilities.sqlite,
            postgres: &capabilities.postgres,
            mysql: &capabilities.mysql,
        };
        let (target, applied) = plan.apply(&backends, &spec.name, &spec.sqlite_databases).await?;
        if !applied.is_empty() {
            tracing::info!(component = %spec.name, database = target, ?applied, "migrations applied");
        }
        Ok(applied)
    }
}

fn manifest_routes(manifest: &Manifest) -> Vec<(RoutePattern, String)> {
    manifest
        .http_triggers
        .iter()
        .filter_map(|trigger| match &trigger.route {
            HttpRoute::Public(pattern) => Some((pattern.clone(), trigger.component.clone())),
            HttpRoute::Private => None,
        })
        .collect()
}

pub(crate) fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}
