//! The swap pipeline: receive → validate → compile → probe → flip → drain → journal.
//!
//! A failed step leaves the old version serving and says which step failed and why. Two
//! deploys of one component at once: the second gets [`DeployError::Conflict`].

pub mod artifacts;
pub mod journal;

use std::fmt;
use std::sync::Arc;
use std::time::Instant;

use serde::{Deserialize, Serialize};
use wasmtime_wasi_http::p2::bindings::ProxyPre;

use crate::app::manifest::HttpRoute;
use crate::app::routes::RoutePattern;
use crate::app::{ComponentSpec, Deployment};
use crate::bindings::subscriber::RedisSubscriberPre;
use crate::trigger::http::HttpTrigger;
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
    pub digest: String,
    pub previous: Option<String>,
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
}

pub struct DeployRequest {
    pub component: String,
    pub bytes: Vec<u8>,
    /// For a component that is not in the manifest yet: where to serve it.
    pub route: Option<String>,
    pub action: Action,
    /// Start-up loads have no old version to protect: a failed probe is a warning.
    pub probe_is_fatal: bool,
    /// Whether to append a journal entry (not when a start-up restores a journaled version).
    pub record: bool,
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

/// Runs the whole pipeline for one component version, and counts the outcome.
pub async fn deploy(trigger: &HttpTrigger, request: DeployRequest) -> Result<DeployReport, DeployError> {
    let (component, action) = (request.component.clone(), request.action.as_str());
    let outcome = run_pipeline(trigger, request).await;
    let label = match &outcome {
        Ok(_) => "ok".to_string(),
        Err(DeployError::Failed { step, .. }) => step.to_string(),
        Err(DeployError::Conflict { .. }) => "conflict".to_string(),
        Err(DeployError::NotFound { .. }) => "not-found".to_string(),
    };
    trigger.app().metrics.record_deploy(&component, action, &label);
    outcome
}

async fn run_pipeline(trigger: &HttpTrigger, request: DeployRequest) -> Result<DeployReport, DeployError> {
    let app = trigger.app().clone();
    let name = request.component.clone();
    let Some(_lock) = app.try_lock_deploy(&name) else {
        return Err(DeployError::Conflict { component: name });
    };
    let mut clock = StepClock::new();

    // 1. receive (the admin API caps the upload at limits.max_component_bytes)
    let spec = spec_for_deploy(trigger, &name, request.route.as_deref())?;
    let digest = artifacts::digest_of(&request.bytes);
    clock.done(Step::Receive);

    // 2. validate (the file) and 3. compile (off the runtime, cached by digest)
    artifacts::check_is_component(&request.bytes).map_err(|reason| DeployError::at(&name, Step::Validate, reason))?;
    let engine = app.engine.clone();
    let artifact = app.state.artifact_of(&digest);
    let bytes = Arc::new(request.bytes);
    let compile_bytes = bytes.clone();
    let (component, cached) =
        tokio::task::spawn_blocking(move || artifacts::load_or_compile(&engine, &artifact, &compile_bytes))
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

    // 2 (continued). validate: every import links, the export fits the trigger.
    let instance_pre = app.linker.instantiate_pre(&component).map_err(|err| {
        DeployError::at(
            &name,
            Step::Validate,
            format!(
                "it imports something outside Mosaic's supported world ({}). Mosaic links WASI 0.2 \
                 (cli, io, clocks, random, filesystem, sockets, http) and the Spin platform world of spin-sdk 5.x: \
                 fermyon:spin/*@2.0.0, spin:sqlite@3.0.0, spin:postgres@3.0.0 and @4.0.0, wasi:keyvalue@0.2.0-draft2, \
                 wasi:config/store",
                anyhow::Error::from(err)
            ),
        )
    })?;
    let http = if spec.serves_http() {
        Some(ProxyPre::new(instance_pre.clone()).map_err(|err| {
            DeployError::at(
                &name,
                Step::Validate,
                format!(
                    "it does not export `wasi:http/incoming-handler@0.2.x`, so the HTTP trigger cannot call it \
                     (build it with spin-sdk's #[http_component] or export the handler): {}",
                    anyhow::Error::from(err)
                ),
            )
        })?)
    } else {
        None
    };
    let subscriber = match &spec.subscription {
        Some(subscription) => Some(RedisSubscriberPre::new(instance_pre).map_err(|err| {
            DeployError::at(
                &name,
                Step::Validate,
                format!(
                    "it has a [[trigger.redis]] subscription ({}) but does not export `fermyon:spin/inbound-redis` \
                     (build it with spin-sdk's #[redis_component]): {}",
                    subscription.patterns.join(", "),
                    anyhow::Error::from(err)
                ),
            )
        })?),
        None => None,
    };
    let warnings = grant_warnings(&component, &app.engine, &spec);
    for warning in &warnings {
        tracing::warn!(component = %name, "{warning}");
    }
    if let Err(err) = crate::state::write_once(&app.state.source_of(&digest), &bytes) {
        return Err(DeployError::at(
            &name,
            Step::Compile,
            format!("cannot store the source in the state directory: {err}"),
        ));
    }
    clock.done(Step::Validate);

    // 4. migrate: the service's new migrations, before any instance of the new version runs
    let migrations = app
        .migrate(&spec)
        .await
        .map_err(|reason| DeployError::at(&name, Step::Migrate, reason))?;
    clock.done(Step::Migrate);

    // 5. probe
    let deployment = Arc::new(Deployment::new(digest.clone(), http, subscriber));
    let mut warnings = warnings;
    let probed = if deployment.http.is_some() {
        trigger.probe(&spec, deployment.clone()).await
    } else {
        crate::trigger::messages::probe(trigger, &spec, deployment.clone()).await
    };
    if let Err(reason) = probed {
        if request.probe_is_fatal {
            return Err(DeployError::at(&name, Step::Probe, reason));
        }
        tracing::warn!(component = %name, "health probe failed: {reason}");
        warnings.push(format!("health probe failed: {reason}"));
    }
    clock.done(Step::Probe);

    // 6. flip
    let previous = app.install(&spec, deployment);
    let previous_digest = match &previous {
        Some(previous) => Some(previous.digest.clone()),
        // A first load after a restart replaces what the journal last recorded.
        None => journal::read(&app.state.journal_path())
            .ok()
            .and_then(|entries| journal::history(&entries, &name).last().map(|e| e.digest.clone()))
            .filter(|last| *last != digest),
    };
    let draining = previous.as_ref().map(|p| p.in_flight()).unwrap_or(0);
    clock.done(Step::Flip);

    // 8. journal (before the answer, so a restart right after comes back with this version)
    let entry = JournalEntry {
        component: name.clone(),
        digest: digest.clone(),
        previous: previous_digest.clone(),
        action: request.action.clone(),
        route: match (&spec.route, app.manifest.components.contains_key(&name)) {
            (Some(HttpRoute::Public(pattern)), false) => Some(pattern.to_string()),
            _ => None,
        },
        at_unix_ms: journal::now_unix_ms(),
    };
    if !request.record {
    } else if let Err(err) = journal::append(&app.state.journal_path(), &entry) {
        // The flip already happened; the version serves but a restart would not know it.
        tracing::error!(component = %name, error = %err, "cannot write the deploy journal");
        return Err(DeployError::at(
            &name,
            Step::Journal,
            format!("the new version serves, but the journal could not be written: {err}"),
        ));
    }
    clock.done(Step::Journal);

    // 7. drain: the replaced version lives until its last request ends.
    if let Some(previous) = previous {
        let drain = app.settings.limits.drain_timeout();
        let component = name.clone();
        tokio::spawn(async move {
            let left = previous.drain(drain).await;
            if left > 0 {
                tracing::warn!(%component, version = %previous.short_digest(), left, ?drain, "requests still running on the replaced version at the drain deadline");
            } else {
                tracing::info!(%component, version = %previous.short_digest(), "replaced version drained");
            }
        });
    }

    tracing::info!(component = %name, version = %&digest[..12], cached, action = ?request.action, "deployed");
    Ok(DeployReport {
        component: name,
        digest,
        previous: previous_digest,
        action: request.action,
        cached,
        warnings,
        migrations,
        timings_ms: clock.timings,
        draining,
    })
}

/// Deploys the version that the current one replaced.
pub async fn rollback(trigger: &HttpTrigger, component: &str) -> Result<DeployReport, DeployError> {
    let app = trigger.app();
    let Some(slot) = app.slot(component) else {
        return Err(DeployError::NotFound {
            component: component.to_string(),
            reason: "no such component is deployed".into(),
        });
    };
    let current = slot.live.load().digest.clone();
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
        .find(|entry| entry.digest == current)
        .and_then(|entry| entry.previous.clone());
    let Some(target) = target else {
        return Err(DeployError::NotFound {
            component: component.to_string(),
            reason: "there is no earlier version to roll back to".into(),
        });
    };
    let bytes = std::fs::read(app.state.source_of(&target)).map_err(|err| {
        DeployError::at(
            component,
            Step::Receive,
            format!(
                "the stored source of version {} is gone: {err}",
                &target[..12.min(target.len())]
            ),
        )
    })?;
    deploy(
        trigger,
        DeployRequest {
            component: component.to_string(),
            bytes,
            route: None,
            action: Action::Rollback,
            probe_is_fatal: true,
            record: true,
        },
    )
    .await
}

fn spec_for_deploy(trigger: &HttpTrigger, name: &str, route: Option<&str>) -> Result<ComponentSpec, DeployError> {
    let app = trigger.app();
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

/// Imports that will be refused on every call because the manifest grants nothing for them.
fn grant_warnings(
    component: &wasmtime::component::Component,
    engine: &wasmtime::Engine,
    spec: &ComponentSpec,
) -> Vec<String> {
    // (import prefixes, whether the manifest grants something for them, what is missing)
    let grants: [(&[&str], bool, &str); 4] = [
        (
            &["wasi:http/outgoing-handler", "fermyon:spin/redis@"],
            !spec.allowed_hosts.is_empty(),
            "allowed_outbound_hosts is empty: every outbound connection will be denied",
        ),
        (
            &["fermyon:spin/key-value", "wasi:keyvalue/"],
            !spec.key_value_stores.is_empty(),
            "key_value_stores is empty: every open will be access-denied",
        ),
        (
            &["fermyon:spin/sqlite", "spin:sqlite/"],
            !spec.sqlite_databases.is_empty(),
            "sqlite_databases is empty: every open will be access-denied",
        ),
        (
            &["fermyon:spin/variables", "wasi:config/store"],
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
