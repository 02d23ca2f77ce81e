//! The deploy of a component that runs only composed into others (a dependency or middleware
//! named by `component = "..."`): every dependent is composed again with the new code,
//! compiled, linked and probed, and then all of them flip as one deploy set
//! ([`crate::app::App::install_set`]): a request sees either every dependent on the old
//! dependency or every one on the new, in-process chains included. A failure at any dependent
//! fails the deploy at that step, naming the dependent, and changes nothing. A rollback of the
//! dependency is a deploy of its previous version: the whole set goes back.

use std::sync::Arc;

use super::journal::Action;
use super::{artifacts, DeployError, DeployReport, DeployRequest, Pipeline, Step, StepClock};
use crate::app::DependencyVersion;
use crate::digest::Digest;

impl Pipeline {
    pub(super) async fn deploy_dependency(&self, request: DeployRequest) -> Result<DeployReport, DeployError> {
        let app = self.app.clone();
        let name = request.component.clone();
        if request.canary.is_some() {
            return Err(DeployError::at(
                &name,
                Step::Receive,
                "a canary of a dependency is not supported: deploy it (every component it is composed into \
                 swaps with it) and roll it back if need be",
            ));
        }
        if request.route.is_some() {
            return Err(DeployError::at(
                &name,
                Step::Receive,
                "a dependency has no route of its own: drop `--route`",
            ));
        }
        let dependents = app.manifest.dependents_of(&name);
        let mut locks = Vec::new();
        for component in std::iter::once(&name).chain(&dependents) {
            match app.try_lock_deploy(component) {
                Some(lock) => locks.push(lock),
                None => {
                    return Err(DeployError::Conflict {
                        component: component.clone(),
                    })
                }
            }
        }
        let mut clock = StepClock::new();
        artifacts::check_is_component(&request.bytes)
            .map_err(|reason| DeployError::at(&name, Step::Validate, reason))?;
        let digest = Digest::of(&request.bytes);
        let bytes = Arc::new(request.bytes);
        clock.done(Step::Receive);

        // Every dependent can take part before any is composed.
        let mut slots = Vec::new();
        for dependent in &dependents {
            let Some(slot) = app.slot(dependent) else {
                return Err(DeployError::at(
                    &name,
                    Step::Validate,
                    format!(
                        "`{dependent}`, which it is composed into, is not running (it failed to load): fix it first"
                    ),
                ));
            };
            if slot.canary.load().is_some() {
                return Err(DeployError::at(
                    &name,
                    Step::Receive,
                    format!("`{dependent}`, which it is composed into, has a canary in progress: promote or roll it back first"),
                ));
            }
            slots.push(slot);
        }
        let mut versions = Vec::new();
        let (mut cached, mut warnings) = (true, Vec::new());
        for slot in slots {
            let dependent = &slot.spec.name;
            let composing = |err: DeployError| composing_failed(&name, dependent, err);
            let own_digest = slot.live.load().digest.clone();
            let own_source = std::fs::read(app.state.source_of(own_digest.as_str())).map_err(|err| {
                DeployError::at(
                    &name,
                    Step::Validate,
                    format!(
                        "the stored source of `{dependent}` (version {}) is gone, so it cannot be composed again: {err}",
                        own_digest.short()
                    ),
                )
            })?;
            let mut version = self
                .validate_and_compile_with(slot.spec.clone(), own_source, Some((&name, bytes.clone())), &mut clock)
                .await
                .map_err(composing)?;
            self.probe_step(&mut version, request.probe).await.map_err(composing)?;
            clock.done(Step::Probe);
            cached &= version.cached;
            warnings.extend(version.warnings.iter().map(|warning| format!("{dependent}: {warning}")));
            versions.push(version);
        }
        if let Err(err) = crate::state::write_once(&app.state.source_of(digest.as_str()), &bytes) {
            return Err(DeployError::at(
                &name,
                Step::Compile,
                format!("cannot store the source in the state directory: {err}"),
            ));
        }

        // The flip: every dependent at once, and the dependency's running version with them.
        let set: Vec<_> = versions
            .iter()
            .map(|version| (version.spec.clone(), version.deployment.clone()))
            .collect();
        let replaced = app.install_set(&set);
        let previous = app.dependency_version(&name).map(|version| version.digest);
        app.set_dependency_version(
            &name,
            DependencyVersion {
                digest: digest.clone(),
                bytes,
                deployed_at: std::time::SystemTime::now(),
            },
        );
        let draining = replaced.iter().map(|version| version.in_flight()).sum();
        clock.done(Step::Flip);
        if request.record {
            self.journal_dependency(&name, &digest, previous.clone(), &request.action)?;
        }
        clock.done(Step::Journal);
        for (version, old) in versions.iter().zip(replaced) {
            self.drain(&version.spec.name, old.clone());
            // A chain that began before the flip may call it until the chain's first request
            // ends, which its deadline bounds (the version may have drained long before: the
            // chain can begin elsewhere); then no one needs it.
            let needed_for = app
                .settings
                .limits
                .request_timeout()
                .max(app.settings.limits.drain_timeout());
            // Weak: a host that stops meanwhile is not kept alive for it.
            let (app, component) = (Arc::downgrade(&app), version.spec.name.clone());
            tokio::spawn(async move {
                tokio::time::sleep(needed_for).await;
                if let Some(app) = app.upgrade() {
                    app.forget_superseded(&component, &old);
                }
            });
        }
        tracing::info!(component = %name, version = %digest.short(), composed_into = ?dependents, action = ?request.action, "deployed a dependency");
        Ok(DeployReport {
            component: name,
            digest,
            previous,
            action: request.action,
            cached,
            warnings,
            migrations: Vec::new(),
            timings_ms: clock.timings,
            draining,
            world: String::new(),
            composed_into: dependents,
        })
    }

    /// The journal entry of a dependency-only component's version (a deploy, a rollback, or a
    /// start-up's first load of its manifest source).
    pub(crate) fn journal_dependency(
        &self,
        name: &str,
        digest: &Digest,
        previous: Option<Digest>,
        action: &Action,
    ) -> Result<(), DeployError> {
        self.append_journal(name, digest, previous, action, None)
    }

    /// At start-up, the version of the dependency-only component `name` its dependents are
    /// composed with: the journal's last one while its manifest source is unchanged, else the
    /// manifest's (journaled as a new version).
    pub(crate) fn restore_dependency(&self, name: &str, manifest_bytes: Vec<u8>, journaled: Option<Vec<u8>>) {
        let app = &self.app;
        let (bytes, record) = match journaled {
            Some(bytes) => (bytes, false),
            None => (manifest_bytes, true),
        };
        let digest = Digest::of(&bytes);
        if record {
            let previous = self.last_journaled(name).filter(|last| *last != digest);
            let stored = crate::state::write_once(&app.state.source_of(digest.as_str()), &bytes);
            let journaled = stored.map_err(|err| err.to_string()).and_then(|()| {
                self.journal_dependency(name, &digest, previous, &Action::Manifest)
                    .map_err(|err| err.to_string())
            });
            if let Err(err) = journaled {
                tracing::warn!(component = %name, error = %err, "cannot record the dependency's version; a rollback will not find it");
            }
        }
        app.set_dependency_version(
            name,
            DependencyVersion {
                digest,
                bytes: Arc::new(bytes),
                deployed_at: std::time::SystemTime::now(),
            },
        );
    }
}

/// A dependent's failure as the dependency's: the deploy was of the dependency.
fn composing_failed(dependency: &str, dependent: &str, err: DeployError) -> DeployError {
    match err {
        DeployError::Failed { step, reason, .. } => {
            DeployError::at(dependency, step, format!("composed into `{dependent}`: {reason}"))
        }
        DeployError::Conflict { component } => DeployError::Conflict { component },
        DeployError::NotFound { reason, .. } => DeployError::NotFound {
            component: dependency.to_string(),
            reason: format!("composed into `{dependent}`: {reason}"),
        },
    }
}
