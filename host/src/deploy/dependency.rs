//! The deploy of a component that runs only composed into others (a dependency or middleware
//! named by `component = "..."`): every dependent is composed again with the new code,
//! compiled, linked and probed, and then all of them flip as one deploy set
//! ([`crate::app::App::install_set`]): a request sees either every dependent on the old
//! dependency or every one on the new, in-process chains included. A failure at any dependent
//! fails the deploy at that step, naming the dependent, and changes nothing. A rollback of the
//! dependency is a deploy of its previous version: the whole set goes back.

use std::sync::Arc;

use super::journal::{self, Action, JournalEntry};
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

        let mut versions = Vec::new();
        let (mut cached, mut warnings) = (true, Vec::new());
        for dependent in &dependents {
            let composing = |err: DeployError| composing_failed(&name, dependent, err);
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
            cached &= version.cached;
            warnings.extend(version.warnings.iter().map(|warning| format!("{dependent}: {warning}")));
            versions.push(version);
        }
        clock.done(Step::Probe);
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
            self.drain(&version.spec.name, old);
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
        let entry = JournalEntry {
            component: name.to_string(),
            digest: digest.clone(),
            previous,
            action: action.clone(),
            route: None,
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
            let previous = journal::read(&app.state.journal_path())
                .ok()
                .and_then(|entries| {
                    journal::history(&entries, name)
                        .last()
                        .map(|entry| entry.digest.clone())
                })
                .filter(|last| *last != digest);
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
