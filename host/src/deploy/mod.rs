//! The swap pipeline ([`Pipeline`]): receive → validate → compile → migrate → probe → flip →
//! journal → drain, one method per step.
//!
//! A failed step leaves the old version serving and says which step failed and why. Two
//! deploys of one component at once: the second gets [`DeployError::Conflict`].

pub mod artifacts;
mod canary;
mod dependency;
pub mod journal;
pub mod snapshots;

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use wasmtime_wasi_http::handler::ProxyPre;

use crate::app::manifest::HttpRoute;
use crate::app::routes::RoutePattern;
use crate::app::{App, ComponentSpec, Deployment};
use crate::capability::bindings::subscriber::SubscriberPre;
use crate::digest::Digest;
use crate::instance::InstanceState;
use crate::settings::ProbeSettings;
pub use canary::{CanaryCoordinator, CanaryDecision};
use journal::{Action, JournalEntry};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Step {
    Receive,
    Validate,
    Compile,
    Migrate,
    Probe,
    Flip,
    Journal,
    /// Cluster mode: writing the new desired version to the cluster store.
    Cluster,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = match self {
            Step::Receive => "receive",
            Step::Validate => "validate",
            Step::Compile => "compile",
            Step::Migrate => "migrate",
            Step::Probe => "probe",
            Step::Flip => "flip",
            Step::Journal => "journal",
            Step::Cluster => "cluster",
        };
        f.write_str(name)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    #[error("deploy of `{component}` failed at step `{step}`: {reason}; the previous version keeps serving")]
    Failed {
        component: String,
        step: Step,
        reason: String,
    },
    #[error("a deploy of `{component}` is already in progress; wait for it to finish and try again")]
    Conflict { component: String },
    #[error("`{component}`: {reason}")]
    NotFound { component: String, reason: String },
}

impl DeployError {
    pub(crate) fn at(component: &str, step: Step, reason: impl Into<String>) -> Self {
        DeployError::Failed {
            component: component.to_string(),
            step,
            reason: reason.into(),
        }
    }

    pub fn step(&self) -> Option<Step> {
        match self {
            DeployError::Failed { step, .. } => Some(*step),
            _ => None,
        }
    }
}

/// What a successful deploy reports.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct DeployReport {
    pub component: String,
    pub digest: Digest,
    pub previous: Option<Digest>,
    pub action: Action,
    /// Whether the compiled artifact came from the cache.
    pub cached: bool,
    pub warnings: Vec<String>,
    /// Migrations applied by this deploy.
    pub migrations: Vec<String>,
    /// Milliseconds per step, in order.
    pub timings_ms: Vec<(Step, f64)>,
    /// Requests still running on the replaced version at the flip; they finish on it.
    pub draining: u64,
    /// What the new version targets, e.g. `WASI 0.3 (wasi:http/handler@0.3.0)`.
    #[serde(default)]
    pub world: String,
    /// For a dependency or middleware: the components it is composed into, which swapped
    /// with it as one.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub composed_into: Vec<String>,
}

pub struct DeployRequest {
    pub component: String,
    pub bytes: Vec<u8>,
    /// For a component that is not in the manifest yet: where to serve it.
    pub route: Option<String>,
    pub action: Action,
    /// What the probe step runs, and what its failure does.
    pub probe: ProbeStep,
    /// Whether to append a journal entry (not when a start-up restores a journaled version).
    pub record: bool,
    /// Instead of the flip, the new version takes a share of the requests as a canary.
    pub canary: Option<crate::app::canary::CanaryPolicy>,
}

impl DeployRequest {
    /// A new version from an operator (admin API, CLI, `mosaic watch`): journaled, and refused
    /// if its probe fails.
    pub fn deploy(component: &str, bytes: Vec<u8>, route: Option<String>) -> Self {
        Self {
            component: component.to_string(),
            bytes,
            route,
            action: Action::Deploy,
            probe: ProbeStep::Refuse,
            record: true,
            canary: None,
        }
    }

    /// A new version as a canary of the live one: it takes `policy.percent` of the new
    /// requests once it passed every step up to the probe.
    pub fn canary(component: &str, bytes: Vec<u8>, policy: crate::app::canary::CanaryPolicy) -> Self {
        Self {
            action: Action::Canary,
            canary: Some(policy),
            ..Self::deploy(component, bytes, None)
        }
    }

    /// Back to an earlier version: journaled, refused if its probe fails.
    pub fn rollback(component: &str, bytes: Vec<u8>) -> Self {
        Self {
            action: Action::Rollback,
            ..Self::deploy(component, bytes, None)
        }
    }

    /// Back to the version a deploy just replaced, because the deploy could not be completed
    /// (the cluster store refused it): the old version served a moment ago, so a failed probe
    /// does not stop the way back.
    pub fn undo(component: &str, bytes: Vec<u8>) -> Self {
        Self {
            probe: ProbeStep::Warn,
            ..Self::rollback(component, bytes)
        }
    }

    /// The same action again, on another host of a cluster (its reconciler applies what a
    /// deploy or rollback through another host made the desired version).
    pub fn converge(component: &str, bytes: Vec<u8>, route: Option<String>, action: Action) -> Self {
        Self {
            action,
            ..Self::deploy(component, bytes, route)
        }
    }

    /// A start-up load of a component's version: it is only instantiated, and a failure is a
    /// warning (there is no old version to protect); `record` when it is a version the journal
    /// does not know yet. The host runs the `[probe.NAME]`s once every component is loaded.
    pub fn start_up(component: &str, bytes: Vec<u8>, route: Option<String>, record: bool) -> Self {
        Self {
            action: Action::Manifest,
            probe: ProbeStep::StartOnly,
            record,
            ..Self::deploy(component, bytes, route)
        }
    }
}

/// What the probe step of a deploy runs, and what its failure does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ProbeStep {
    /// The component's `[probe.NAME]`, or without one an instantiation; a failure refuses the
    /// version.
    Refuse,
    /// The same; a failure is a warning (the way back to a version that served a moment ago).
    Warn,
    /// An instantiation only, a failure a warning: a start-up load, whose `[probe.NAME]` runs
    /// once every component is loaded (a probe may call the others).
    StartOnly,
}

/// The deploy pipeline's probe of a new version before any user traffic reaches it (the
/// triggers implement it; `crate::host` wires it in).
#[async_trait::async_trait]
pub trait Probe: Send + Sync {
    /// Instantiates the version and calls nothing of it.
    async fn start(&self, spec: &ComponentSpec, deployment: Arc<Deployment>) -> Result<(), String>;
    /// The component's `[probe.NAME]`: the version must answer it.
    async fn check(
        &self,
        spec: &ComponentSpec,
        deployment: Arc<Deployment>,
        probe: &ProbeSettings,
    ) -> Result<(), String>;
}

struct StepClock {
    started: Instant,
    timings: Vec<(Step, f64)>,
}

impl StepClock {
    fn new() -> Self {
        Self {
            started: Instant::now(),
            timings: Vec::new(),
        }
    }
    fn done(&mut self, step: Step) {
        let now = Instant::now();
        self.timings.push((step, (now - self.started).as_secs_f64() * 1000.0));
        self.started = now;
    }
}

/// A validated, compiled version, not yet serving.
struct Validated {
    spec: ComponentSpec,
    digest: Digest,
    deployment: Arc<Deployment>,
    cached: bool,
    warnings: Vec<String>,
}

/// The swap pipeline of one application: what the admin API, `mosaic watch`, the cluster
/// reconciler and the start-up deploy through. Cheap to clone.
#[derive(Clone)]
pub struct Pipeline {
    app: Arc<App>,
    probe: Arc<dyn Probe>,
    /// In cluster mode, where canary decisions are agreed between hosts.
    canary_coordinator: Arc<std::sync::OnceLock<Arc<dyn CanaryCoordinator>>>,
}

impl Pipeline {
    pub fn new(app: Arc<App>, probe: Arc<dyn Probe>) -> Self {
        Self {
            app,
            probe,
            canary_coordinator: Arc::default(),
        }
    }

    pub fn app(&self) -> &Arc<App> {
        &self.app
    }

    /// Runs the whole pipeline for one component version, and counts the outcome. A new
    /// version of a component that has copies for its routes with middleware goes to each copy
    /// too, once it serves (a copy that refuses it keeps its version, and the report says so).
    pub async fn deploy(&self, request: DeployRequest) -> Result<DeployReport, DeployError> {
        let (component, action) = (request.component.clone(), request.action.as_str());
        let copies = match (&request.action, &request.canary) {
            (Action::Deploy | Action::Rollback, None) => self.app.manifest.copies_of(&component),
            _ => Vec::new(),
        };
        let for_copies = (!copies.is_empty()).then(|| (request.bytes.clone(), request.action.clone(), request.probe));
        let mut outcome = self.run(request).await;
        self.count(&component, action, &outcome);
        if let (Ok(report), Some((bytes, copy_action, probe))) = (&mut outcome, for_copies) {
            for copy in copies {
                let request = DeployRequest {
                    action: copy_action.clone(),
                    probe,
                    ..DeployRequest::deploy(&copy, bytes.clone(), None)
                };
                let copied = self.run(request).await;
                self.count(&copy, action, &copied);
                if let Err(err) = copied {
                    tracing::warn!(component = %component, %copy, error = %err, "the copy for a route with middleware kept its version");
                    report.warnings.push(format!(
                        "`{copy}` (its copy for a route with middleware) kept its version: {err}"
                    ));
                }
            }
        }
        outcome
    }

    /// Counts a deploy, promotion or rollback in `mosaic_deploys_total`: `ok`, or the step
    /// that failed, `conflict` or `not-found`.
    fn count(&self, component: &str, action: &str, outcome: &Result<DeployReport, DeployError>) {
        let label = match outcome {
            Ok(_) => "ok".to_string(),
            Err(DeployError::Failed { step, .. }) => step.to_string(),
            Err(DeployError::Conflict { .. }) => "conflict".to_string(),
            Err(DeployError::NotFound { .. }) => "not-found".to_string(),
        };
        self.app.metrics.record_deploy(component, action, &label);
    }

    async fn run(&self, request: DeployRequest) -> Result<DeployReport, DeployError> {
        let name = request.component.clone();
        if self.app.manifest.is_dependency_only(&name) {
            return self.deploy_dependency(request).await;
        }
        let Some(_lock) = self.app.try_lock_deploy(&name) else {
            return Err(DeployError::Conflict { component: name });
        };
        let mut clock = StepClock::new();
        // 1. receive (the admin API caps the upload at limits.max_component_bytes)
        let spec = self.spec_for(&name, request.route.as_deref())?;
        self.check_canary_request(&name, &request)?;
        clock.done(Step::Receive);
        // 2. validate and 3. compile
        let mut version = self.validate_and_compile(spec, request.bytes, &mut clock).await?;
        // 4. migrate: the service's new migrations, before any instance of the new version runs
        let migrations = self
            .app
            .migrate(&version.spec)
            .await
            .map_err(|reason| DeployError::at(&name, Step::Migrate, reason))?;
        clock.done(Step::Migrate);
        // 5. probe
        self.probe_step(&mut version, request.probe).await?;
        clock.done(Step::Probe);
        if let Some(policy) = request.canary {
            // 6. instead of the flip: the new version takes its share beside the live one.
            return self.start_canary(version, policy, request.record, migrations, clock);
        }
        // 6. flip
        let (previous, previous_digest) = self.flip(&version);
        let draining = previous.as_ref().map(|p| p.in_flight()).unwrap_or(0);
        clock.done(Step::Flip);
        // 8. journal (before the answer, so a restart right after comes back with this version)
        if request.record {
            self.journal(&version, previous_digest.clone(), &request.action)?;
        }
        clock.done(Step::Journal);
        // 7. drain: the replaced version lives until its last request ends.
        if let Some(previous) = previous {
            self.drain(&name, previous);
        }
        tracing::info!(component = %name, version = %version.digest.short(), cached = version.cached, action = ?request.action, "deployed");
        Ok(DeployReport {
            component: name,
            digest: version.digest,
            previous: previous_digest,
            action: request.action,
            cached: version.cached,
            warnings: version.warnings,
            migrations,
            timings_ms: clock.timings,
            draining,
            world: version.deployment.world.to_string(),
            composed_into: Vec::new(),
        })
    }

    /// Steps 2 and 3: the file is a component, it compiles (off the runtime, cached by
    /// digest), every import links and the exports fit its triggers.
    async fn validate_and_compile(
        &self,
        spec: ComponentSpec,
        bytes: Vec<u8>,
        clock: &mut StepClock,
    ) -> Result<Validated, DeployError> {
        self.validate_and_compile_with(spec, bytes, None, clock).await
    }

    /// [`Self::validate_and_compile`], composed with `replacing` (a dependency-only
    /// component's name and new code) in place of that component's running version.
    async fn validate_and_compile_with(
        &self,
        spec: ComponentSpec,
        bytes: Vec<u8>,
        replacing: Option<(&str, Arc<Vec<u8>>)>,
        clock: &mut StepClock,
    ) -> Result<Validated, DeployError> {
        let app = &self.app;
        let name = spec.name.clone();
        let digest = Digest::of(&bytes);
        artifacts::check_is_component(&bytes).map_err(|reason| DeployError::at(&name, Step::Validate, reason))?;
        let code_of = |component: &str| match &replacing {
            Some((replaced, bytes)) if *replaced == component => Some(bytes.clone()),
            _ => app.dependency_version(component).map(|version| version.bytes),
        };
        let dependencies = composed_parts(&spec, &spec.dependencies, PartRole::Dependency, &code_of)?;
        let middleware = composed_parts(&spec, &spec.middleware, PartRole::Middleware, &code_of)?;
        let composed = !dependencies.is_empty() || !middleware.is_empty();
        let engine = app.engine().clone();
        // A composed component is cached under the digest of all its parts.
        let artifact = match composed {
            false => app.state.artifact_of(digest.as_str()),
            true => app
                .state
                .artifact_of(crate::compose::composed_digest(&digest, &dependencies, &middleware).as_str()),
        };
        let bytes = Arc::new(bytes);
        let compile_bytes = bytes.clone();
        let composing = name.clone();
        let source = move || match composed {
            false => Ok(compile_bytes),
            true => crate::compose::compose(&composing, &compile_bytes, &dependencies, &middleware).map(Arc::new),
        };
        let (component, cached) =
            tokio::task::spawn_blocking(move || artifacts::load_or_compile(&engine, &artifact, source))
                .await
                .map_err(|err| DeployError::at(&name, Step::Compile, format!("the compiler task failed: {err}")))?
                .map_err(|reason| {
                    DeployError::at(
                        &name,
                        Step::Validate,
                        format!("the component does not compile: {reason}"),
                    )
                })?;
        clock.done(Step::Compile);

        let with_denials = crate::compose::deny::linker_for(&app.linker, &component, app.engine()).map_err(|err| {
            DeployError::at(
                &name,
                Step::Validate,
                format!("cannot link the denied imports of its dependencies: {err:#}"),
            )
        })?;
        let linker = with_denials.as_ref().unwrap_or(&app.linker);
        let (http, subscriber) = self.link(linker, &spec, &component)?;
        let mqtt = self.link_mqtt(linker, &spec, &component)?;
        let mut world = world_of(&component, app.engine(), http.as_ref(), subscriber.is_some());
        if mqtt.is_some() {
            world
                .entry_points
                .push("handle-message (spin:mqtt-trigger@3.0.0)".into());
            world.wasi = crate::app::Wasi::V0_3;
        }
        let mut warnings = grant_warnings(&component, app.engine(), &spec);
        warnings.extend(crate::compose::denial_warnings(&component, app.engine(), &spec));
        warnings.extend(literal_channel_warnings(&spec));
        for warning in &warnings {
            tracing::warn!(component = %name, "{warning}");
        }
        if let Err(err) = crate::state::write_once(&app.state.source_of(digest.as_str()), &bytes) {
            return Err(DeployError::at(
                &name,
                Step::Compile,
                format!("cannot store the source in the state directory: {err}"),
            ));
        }
        clock.done(Step::Validate);
        let deployment = Arc::new(Deployment::new(digest.clone(), http, subscriber, world).with_mqtt(mqtt));
        Ok(Validated {
            spec,
            digest,
            deployment,
            cached,
            warnings,
        })
    }

    /// Validation of the imports and exports: every import links (it is in the supported
    /// world), and the component exports what its triggers call.
    #[allow(clippy::type_complexity)]
    fn link(
        &self,
        linker: &wasmtime::component::Linker<InstanceState>,
        spec: &ComponentSpec,
        component: &wasmtime::component::Component,
    ) -> Result<(Option<ProxyPre<InstanceState>>, Option<SubscriberPre<InstanceState>>), DeployError> {
        let name = &spec.name;
        let instance_pre = linker.instantiate_pre(component).map_err(|err| {
            DeployError::at(
                name,
                Step::Validate,
                format!(
                    "it imports something outside Mosaic's supported world ({}). Mosaic links WASI 0.2 and 0.3 \
                     (cli, io, clocks, random, filesystem, sockets, http, and the 0.3.0-rc-2026-03-15 snapshot), \
                     the Spin platform world of spin-sdk 5.x (fermyon:spin/*@2.0.0, spin:sqlite@3.0.0, \
                     spin:postgres@3.0.0 and @4.0.0, wasi:keyvalue@0.2.0-draft2, wasi:config/store) and Spin 4's \
                     spin:up/platform@4.1.0 of spin-sdk 7 and the Python SDK 5 (spin:key-value@3.0.0, \
                     spin:sqlite@3.1.0, spin:postgres@4.2.0, spin:variables@3.0.0, spin:redis@3.0.0, \
                     spin:mqtt@3.0.0, spin:mysql@3.0.0, wasi:otel@0.2.0-rc.2)",
                    anyhow::Error::from(err)
                ),
            )
        })?;
        let http = if spec.serves_http() {
            let wasi_0_3 = wasmtime_wasi_http::p3::bindings::ServicePre::new(instance_pre.clone());
            match wasi_0_3 {
                Ok(pre) => Some(ProxyPre::P3(pre)),
                Err(_) => Some(ProxyPre::P2(
                    wasmtime_wasi_http::p2::bindings::ProxyPre::new(instance_pre.clone()).map_err(|err| {
                        DeployError::at(
                            name,
                            Step::Validate,
                            format!(
                                "it exports neither `wasi:http/handler@0.3.x` (WASI 0.3: spin-sdk 7's #[http_service], \
                                 Spin's Python SDK 5) nor `wasi:http/incoming-handler@0.2.x` (WASI 0.2: spin-sdk 5's \
                                 #[http_component]), so the HTTP trigger cannot call it: {}",
                                anyhow::Error::from(err)
                            ),
                        )
                    })?,
                )),
            }
        } else {
            None
        };
        let subscriber = match &spec.subscription {
            Some(subscription) => Some(SubscriberPre::new(instance_pre).map_err(|err| {
                DeployError::at(
                    name,
                    Step::Validate,
                    format!(
                        "it has a [[trigger.redis]] subscription ({}) but exports neither `spin:redis/inbound-redis@3.0.0` \
                         (spin-sdk 7's #[redis_subscriber]) nor `fermyon:spin/inbound-redis` (spin-sdk 5's \
                         #[redis_component]): {}",
                        subscription.patterns.join(", "),
                        anyhow::Error::from(err)
                    ),
                )
            })?),
            None => None,
        };
        Ok((http, subscriber))
    }

    /// The MQTT handler of a component with `[[trigger.mqtt]]` entries: the `handle-message`
    /// export of Spin's MQTT trigger plugin (`spin:mqtt-trigger@3.0.0`).
    fn link_mqtt(
        &self,
        linker: &wasmtime::component::Linker<InstanceState>,
        spec: &ComponentSpec,
        component: &wasmtime::component::Component,
    ) -> Result<Option<crate::capability::bindings::mqtt_handler::MqttHandlerPre<InstanceState>>, DeployError> {
        if !spec.mqtt {
            return Ok(None);
        }
        let name = &spec.name;
        let instance_pre = linker
            .instantiate_pre(component)
            .map_err(|err| DeployError::at(name, Step::Validate, format!("{:#}", anyhow::Error::from(err))))?;
        crate::capability::bindings::mqtt_handler::MqttHandlerPre::new(instance_pre)
            .map(Some)
            .map_err(|err| {
                DeployError::at(
                    name,
                    Step::Validate,
                    format!(
                        "it has [[trigger.mqtt]] entries but does not export `handle-message` of \
                         `spin:mqtt-trigger@3.0.0` (the spin-mqtt-sdk's #[mqtt_component], spin-trigger-mqtt 0.8): {}",
                        anyhow::Error::from(err)
                    ),
                )
            })
    }

    /// Step 5: the new version starts (and answers its `[probe.NAME]`, if it has one) before
    /// any user traffic reaches it.
    async fn probe_step(&self, version: &mut Validated, step: ProbeStep) -> Result<(), DeployError> {
        let name = &version.spec.name;
        let configured = match step {
            ProbeStep::StartOnly => None,
            ProbeStep::Refuse | ProbeStep::Warn => self.app.settings.probe.get(self.app.manifest.settings_name(name)),
        };
        let deployment = version.deployment.clone();
        let outcome = match configured {
            Some(probe) => self.probe.check(&version.spec, deployment, probe).await,
            None => self.probe.start(&version.spec, deployment).await,
        };
        if let Err(reason) = outcome {
            if step == ProbeStep::Refuse {
                return Err(DeployError::at(name, Step::Probe, reason));
            }
            tracing::warn!(component = %name, "probe failed: {reason}");
            version.warnings.push(format!("probe failed: {reason}"));
        }
        Ok(())
    }

    /// The `[probe.NAME]`s of mosaic.toml, on the live versions, once a start-up has loaded
    /// every component: a failure is a warning (there is no older version to keep). A probe
    /// of a component that is not loaded is a warning too. Returns the failures.
    pub async fn probe_live_versions(&self) -> Vec<String> {
        let mut failures = Vec::new();
        for (name, probe) in &self.app.settings.probe {
            let Some(slot) = self.app.slot(name) else {
                let mut known: Vec<_> = self.app.slots().iter().map(|slot| slot.spec.name.clone()).collect();
                known.sort();
                let reason = format!(
                    "`[probe.{name}]` of mosaic.toml names no component of the application (it has {}); \
                     fix the name or remove the section",
                    known.join(", ")
                );
                tracing::warn!(component = %name, "{reason}");
                failures.push(reason);
                continue;
            };
            if let Err(reason) = self.probe.check(&slot.spec, slot.live.load_full(), probe).await {
                tracing::warn!(component = %name, "probe failed at start-up: {reason}");
                failures.push(format!("`{name}`: {reason}"));
            }
        }
        failures
    }

    /// Step 6: the new version becomes the live one; returns the one it replaced (and, after a
    /// restart, the digest the journal last recorded, which it replaces).
    fn flip(&self, version: &Validated) -> (Option<Arc<Deployment>>, Option<Digest>) {
        let name = &version.spec.name;
        let previous = self.app.install(&version.spec, version.deployment.clone());
        let previous_digest = match &previous {
            Some(previous) => Some(previous.digest.clone()),
            // A first load after a restart replaces what the journal last recorded.
            None => self.last_journaled(name).filter(|last| *last != version.digest),
        };
        (previous, previous_digest)
    }

    /// Step 8: the journal entry, so a restart comes back with this version.
    fn journal(&self, version: &Validated, previous: Option<Digest>, action: &Action) -> Result<(), DeployError> {
        let name = &version.spec.name;
        let route = match (&version.spec.route, self.app.manifest.components.contains_key(name)) {
            (Some(HttpRoute::Public(pattern)), false) => Some(pattern.to_string()),
            _ => None,
        };
        self.append_journal(name, &version.digest, previous, action, route)
    }

    /// Appends one entry to the deploy journal; the flip already happened, so a failure says
    /// that the version serves but a restart would not know it.
    fn append_journal(
        &self,
        name: &str,
        digest: &Digest,
        previous: Option<Digest>,
        action: &Action,
        route: Option<String>,
    ) -> Result<(), DeployError> {
        let entry = JournalEntry {
            component: name.to_string(),
            digest: digest.clone(),
            previous,
            action: action.clone(),
            route,
            at_unix_ms: crate::clock::now_unix_ms(),
            canary: None,
            reason: None,
        };
        journal::append(&self.app.state.journal_path(), &entry).map_err(|err| {
            tracing::error!(component = %name, error = %err, "cannot write the deploy journal");
            DeployError::at(
                name,
                Step::Journal,
                format!("the new version serves, but the journal could not be written: {err}"),
            )
        })
    }

    /// The version the journal last recorded as live for `component`.
    fn last_journaled(&self, component: &str) -> Option<Digest> {
        journal::read(&self.app.state.journal_path()).ok().and_then(|entries| {
            journal::history(&entries, component)
                .last()
                .map(|e| e.live_digest().clone())
        })
    }

    /// Step 7: the replaced version lives until its last request ends, up to the drain deadline.
    fn drain(&self, component: &str, previous: Arc<Deployment>) {
        let drain = self.app.settings.limits.drain_timeout();
        let component = component.to_string();
        tokio::spawn(async move {
            let left = previous.drain(drain).await;
            if left > 0 {
                tracing::warn!(%component, version = %previous.short_digest(), left, ?drain, "requests still running on the replaced version at the drain deadline");
            } else {
                tracing::info!(%component, version = %previous.short_digest(), "replaced version drained");
            }
        });
    }

    /// The version the live one of `component` replaced, with its stored source.
    pub fn previous_version(&self, component: &str) -> Result<(Digest, Vec<u8>), DeployError> {
        let app = &self.app;
        let current = match (app.slot(component), app.dependency_version(component)) {
            (Some(slot), _) => slot.live.load().digest.clone(),
            (None, Some(dependency)) => dependency.digest,
            (None, None) => {
                return Err(DeployError::NotFound {
                    component: component.to_string(),
                    reason: "no such component is deployed".into(),
                })
            }
        };
        let entries = journal::read(&app.state.journal_path()).map_err(|err| {
            DeployError::at(
                component,
                Step::Receive,
                format!("cannot read the deploy journal: {err}"),
            )
        })?;
        let target = journal::history(&entries, component)
            .into_iter()
            .rev()
            .find(|entry| entry.action.changes_live() && entry.digest == current)
            .and_then(|entry| entry.previous.clone());
        let Some(target) = target else {
            return Err(DeployError::NotFound {
                component: component.to_string(),
                reason: "there is no earlier version to roll back to".into(),
            });
        };
        let bytes = std::fs::read(app.state.source_of(target.as_str())).map_err(|err| {
            DeployError::at(
                component,
                Step::Receive,
                format!("the stored source of version {} is gone: {err}", target.short()),
            )
        })?;
        Ok((target, bytes))
    }

    /// Deploys the version that the current one replaced; during a canary, ends the canary
    /// instead (the live version never stopped serving).
    pub async fn rollback(&self, component: &str) -> Result<DeployReport, DeployError> {
        if self
            .app
            .slot(component)
            .is_some_and(|slot| slot.canary.load().is_some())
        {
            return self.end_canary(component, Action::CanaryRollback, None);
        }
        let (_, bytes) = self.previous_version(component)?;
        self.deploy(DeployRequest::rollback(component, bytes)).await
    }

    /// Step 1: the grants of the component (its manifest entry, or none for one added with
    /// `--route`), and its route.
    fn spec_for(&self, name: &str, route: Option<&str>) -> Result<ComponentSpec, DeployError> {
        let app = &self.app;
        let existing = app
            .spec_for(name)
            .map_err(|reason| DeployError::at(name, Step::Receive, reason))?;
        let route = route
            .map(|route| RoutePattern::parse(route).map_err(|reason| DeployError::at(name, Step::Receive, reason)))
            .transpose()?;
        match (existing, route) {
            (Some(spec), None) => Ok(spec),
            (Some(spec), Some(route)) => {
                if spec.route == Some(HttpRoute::Public(route.clone())) {
                    Ok(spec)
                } else {
                    Err(DeployError::at(
                        name,
                        Step::Receive,
                        format!("`{name}` already exists with another route; a deploy replaces its code, not its route (drop --route {route})"),
                    ))
                }
            }
            (None, Some(route)) => {
                crate::app::manifest::check_component_name(name)
                    .map_err(|reason| DeployError::at(name, Step::Receive, reason))?;
                if let Some((_, owner)) = app.router().routes().find(|(pattern, _)| **pattern == route) {
                    return Err(DeployError::at(
                        name,
                        Step::Receive,
                        format!("the route {route} is already served by `{owner}`"),
                    ));
                }
                Ok(ComponentSpec::ungranted(name, route))
            }
            (None, None) => Err(DeployError::NotFound {
                component: name.to_string(),
                reason:
                    "no such component in the manifest or the host; to add a new one, give its route with --route /path/..."
                        .into(),
            }),
        }
    }
}

/// One warning per `[[trigger.redis]]` channel of the component that holds a wildcard: Mosaic
/// reads it as a pattern, Spin subscribes to it literally (a Redis `SUBSCRIBE`), so the same
/// application would receive those messages under Mosaic only.
fn literal_channel_warnings(spec: &ComponentSpec) -> Vec<String> {
    let Some(subscription) = &spec.subscription else {
        return Vec::new();
    };
    subscription
        .patterns
        .iter()
        .filter(|pattern| mosaic_manifest::topics::has_wildcard(pattern))
        .map(|pattern| {
            format!(
                "`{}` subscribes to the channel pattern `{pattern}` ([[trigger.redis]]): Mosaic matches it as a \
                 pattern (`*` one word, `#` zero or more), but Spin subscribes to the channel named `{pattern}` \
                 literally, so under Spin this trigger receives none of those messages; to behave the same on \
                 both, give one [[trigger.redis]] per exact channel (docs/messaging.md)",
                spec.name
            )
        })
        .collect()
}

/// Imports that will be refused on every call because the manifest grants nothing for them.
fn grant_warnings(
    component: &wasmtime::component::Component,
    engine: &wasmtime::Engine,
    spec: &ComponentSpec,
) -> Vec<String> {
    // (import prefixes, whether the manifest grants something for them, what is missing)
    let grants: [(&[&str], bool, &str); 4] = [
        (
            &[
                "wasi:http/outgoing-handler",
                "wasi:http/client@",
                "fermyon:spin/redis@",
                "spin:redis/",
            ],
            !spec.allowed_hosts.is_empty(),
            "allowed_outbound_hosts is empty: every outbound connection will be denied",
        ),
        (
            &["fermyon:spin/key-value", "spin:key-value/", "wasi:keyvalue/"],
            !spec.key_value_stores.is_empty(),
            "key_value_stores is empty: every open will be access-denied",
        ),
        (
            &["fermyon:spin/sqlite", "spin:sqlite/"],
            !spec.sqlite_databases.is_empty(),
            "sqlite_databases is empty: every open will be access-denied",
        ),
        (
            &["fermyon:spin/variables", "spin:variables/", "wasi:config/store"],
            !spec.variables.is_empty(),
            "component variables are empty: every read will be `undefined`",
        ),
    ];
    let mut warnings = Vec::new();
    for (import, _) in component.component_type().imports(engine) {
        if let Some((_, what)) = crate::capability::unsupported::WITHOUT_BACKEND
            .iter()
            .find(|(prefix, _)| import.starts_with(prefix))
        {
            warnings.push(format!(
                "`{}` imports {import}, but Mosaic has no {what} backend yet: every call returns an error",
                spec.name
            ));
        }
        for (prefixes, granted, missing) in &grants {
            if !granted && prefixes.iter().any(|prefix| import.starts_with(prefix)) {
                warnings.push(format!("`{}` imports {import} but its {missing}", spec.name));
            }
        }
    }
    warnings
}

/// The WASI release and the entry points of a linked component: WASI 0.3 when it exports the
/// 0.3 HTTP handler or imports any WASI 0.3 interface.
fn world_of(
    component: &wasmtime::component::Component,
    engine: &wasmtime::Engine,
    http: Option<&ProxyPre<InstanceState>>,
    subscriber: bool,
) -> crate::app::World {
    let ty = component.component_type();
    let imports_0_3 = ty
        .imports(engine)
        .any(|(name, _)| name.starts_with("wasi:") && name.contains("@0.3."));
    let mut entry_points = Vec::new();
    let export_named = |prefix: &str| {
        ty.exports(engine)
            .map(|(name, _)| name.to_string())
            .find(|name| name.starts_with(prefix))
    };
    let wasi = match http {
        Some(ProxyPre::P3(_)) => {
            entry_points.extend(export_named("wasi:http/handler@"));
            crate::app::Wasi::V0_3
        }
        Some(ProxyPre::P2(_)) => {
            entry_points.extend(export_named("wasi:http/incoming-handler@"));
            if imports_0_3 {
                crate::app::Wasi::V0_3
            } else {
                crate::app::Wasi::V0_2
            }
        }
        None if imports_0_3 => crate::app::Wasi::V0_3,
        None => crate::app::Wasi::V0_2,
    };
    let mut wasi = wasi;
    if subscriber {
        match export_named("spin:redis/inbound-redis@") {
            Some(v3) => {
                entry_points.push(v3);
                wasi = crate::app::Wasi::V0_3;
            }
            None => entry_points.extend(export_named("fermyon:spin/inbound-redis")),
        }
    }
    crate::app::World { wasi, entry_points }
}

#[derive(Clone, Copy)]
enum PartRole {
    Dependency,
    Middleware,
}

/// The code of each of `parts` (`spec`'s dependencies or middleware): for another component
/// of the app, its running version by `code_of` (what a deploy of it swapped in), else its
/// file; an error names the part and where it is declared.
fn composed_parts(
    spec: &ComponentSpec,
    parts: &[mosaic_manifest::dependencies::Dependency],
    role: PartRole,
    code_of: &dyn Fn(&str) -> Option<Arc<Vec<u8>>>,
) -> Result<Vec<crate::compose::Part>, DeployError> {
    parts
        .iter()
        .enumerate()
        .map(|(index, dependency)| {
            let path = dependency.source.path();
            let (what, declared) = match role {
                PartRole::Middleware => (
                    format!("middleware {}", index + 1),
                    "its trigger's dependencies.middleware".to_string(),
                ),
                PartRole::Dependency => (
                    format!("dependency `{}`", dependency.name),
                    format!("[component.{}.dependencies]", spec.name),
                ),
            };
            let running = match &dependency.source {
                mosaic_manifest::dependencies::DependencySource::Component { name, .. } => code_of(name),
                mosaic_manifest::dependencies::DependencySource::Path(_) => None,
            };
            if let Some(bytes) = running {
                return Ok(crate::compose::Part {
                    dependency: dependency.clone(),
                    bytes: bytes.to_vec(),
                });
            }
            let bytes = std::fs::read(path).map_err(|err| {
                DeployError::at(
                    &spec.name,
                    Step::Validate,
                    format!(
                        "cannot read its {what} ({}): {err}; build it, or fix the path in {declared}",
                        path.display(),
                    ),
                )
            })?;
            artifacts::check_is_component(&bytes).map_err(|reason| {
                DeployError::at(
                    &spec.name,
                    Step::Validate,
                    format!("its {what} ({}): {reason}", path.display()),
                )
            })?;
            Ok(crate::compose::Part {
                dependency: dependency.clone(),
                bytes,
            })
        })
        .collect()
}
