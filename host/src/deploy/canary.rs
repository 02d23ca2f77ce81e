//! Canary releases in the pipeline: a deploy with a canary policy runs every step up to the
//! probe, then, instead of the flip, the new version takes a share of the new requests beside
//! the live one. A supervisor task per canary raises its share in steps, promotes it (the
//! flip, journaled as `promote`) or rolls it back when its error rate crosses the limit
//! (`auto_rollback`); an operator's `rollback` ends it too. Every change is journaled, so a
//! restart comes back to the same split ([`Pipeline::restore_canary`]).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::journal::{self, Action, CanaryRecord, JournalEntry};
use super::{DeployError, DeployReport, DeployRequest, Pipeline, Step, StepClock, Validated};
use crate::app::canary::{basis_points, Canary, CanaryPolicy, Counts, ALL};
use crate::app::ComponentSlot;
use crate::digest::Digest;

/// How often a canary's supervisor looks at its numbers and its clock.
const SUPERVISION_TICK: Duration = Duration::from_millis(100);

/// How often, in cluster mode, a supervisor shares its host's counts and reads the others'.
const COUNT_EXCHANGE_EVERY: Duration = Duration::from_millis(250);

/// What a canary's supervisor decided.
#[derive(Debug, Clone, PartialEq)]
pub enum CanaryDecision {
    /// Raise the share to `share_bp`, step `step` of the policy.
    Step {
        share_bp: u32,
        step: u32,
    },
    Promote,
    /// End it in the stable version (`canary_rollback` or `auto_rollback`), saying why.
    End {
        action: Action,
        reason: Option<String>,
    },
}

/// Where the decisions about a canary are agreed when several hosts run it (cluster mode):
/// every host counts its own outcomes and reads the others', and a decision any host's
/// supervisor takes is the cluster's once the coordinator has it, then made on every host.
#[async_trait::async_trait]
pub trait CanaryCoordinator: Send + Sync {
    /// Shares this host's counts of `canary` and returns the other hosts' (stable, canary).
    async fn exchange_counts(&self, component: &str, canary: &Canary) -> Result<(Counts, Counts), String>;

    /// Makes `decision` the cluster's, then applies it on this host
    /// ([`Pipeline::apply_canary_decision`]); when another host decided otherwise first, this
    /// host follows that instead.
    async fn decide(
        &self,
        pipeline: &Pipeline,
        component: &str,
        canary: &Arc<Canary>,
        decision: CanaryDecision,
    ) -> Result<(), String>;
}

impl Pipeline {
    /// A canary needs a live version to split with and no other canary in progress; while one
    /// is in progress, a plain deploy is refused (promote or roll back first).
    pub(super) fn check_canary_request(&self, name: &str, request: &DeployRequest) -> Result<(), DeployError> {
        let slot = self.app.slot(name);
        if let Some(canary) = slot.as_ref().and_then(|slot| slot.canary.load_full()) {
            return Err(DeployError::at(
                name,
                Step::Receive,
                format!(
                    "a canary of `{name}` is in progress (version {} at {}%); `mosaic promote {name}` or \
                     `mosaic rollback {name}` first",
                    canary.deployment.short_digest(),
                    canary.share() as f64 / 100.0
                ),
            ));
        }
        let Some(policy) = &request.canary else {
            return Ok(());
        };
        policy
            .check()
            .map_err(|reason| DeployError::at(name, Step::Receive, reason))?;
        if slot.is_none() {
            return Err(DeployError::at(
                name,
                Step::Receive,
                format!("`{name}` has no live version to run a canary beside; deploy it first (without --canary)"),
            ));
        }
        Ok(())
    }

    /// Step 6 of a canary deploy: the validated version takes `policy.percent` of the new
    /// requests; journaled, then supervised.
    pub(super) fn start_canary(
        &self,
        version: Validated,
        policy: CanaryPolicy,
        record: bool,
        migrations: Vec<String>,
        mut clock: StepClock,
    ) -> Result<DeployReport, DeployError> {
        let name = version.spec.name.clone();
        let Some(slot) = self.app.slot(&name) else {
            return Err(DeployError::at(&name, Step::Flip, "the component is gone"));
        };
        let stable = slot.live.load().digest.clone();
        let share = basis_points(policy.percent);
        let canary = Arc::new(Canary::new(version.deployment.clone(), policy.clone(), share, 0));
        slot.canary.store(Some(canary.clone()));
        // Supervised from its first request on, even if the journal below fails.
        self.supervise(slot, canary);
        clock.done(Step::Flip);
        if record {
            let record = CanaryRecord {
                policy,
                share_bp: share,
                step: 0,
            };
            self.append(
                &name,
                version.digest.clone(),
                Some(stable.clone()),
                Action::Canary,
                Some(record),
                None,
            )?;
        }
        clock.done(Step::Journal);
        tracing::info!(component = %name, canary = %version.digest.short(), stable = %stable.short(), share_percent = share as f64 / 100.0, "canary started");
        Ok(DeployReport {
            component: name,
            digest: version.digest,
            previous: Some(stable),
            action: Action::Canary,
            cached: version.cached,
            warnings: version.warnings,
            migrations,
            timings_ms: clock.timings,
            draining: 0,
            world: version.deployment.world.to_string(),
            composed_into: Vec::new(),
        })
    }

    /// Makes the canary of `component` its live version (journaled as `promote`); the stable
    /// version it replaces drains and stays the way back for `rollback`.
    pub fn promote(&self, component: &str) -> Result<DeployReport, DeployError> {
        let outcome = self.promote_now(component);
        self.count(component, "promote", &outcome);
        outcome
    }

    fn promote_now(&self, component: &str) -> Result<DeployReport, DeployError> {
        let Some(_lock) = self.app.try_lock_deploy(component) else {
            return Err(DeployError::Conflict {
                component: component.to_string(),
            });
        };
        let (slot, canary) = self.canary_of(component)?;
        let previous = slot.live.swap(canary.deployment.clone());
        slot.canary.store(None);
        slot.last_canary.store(Some(Arc::new(format!(
            "promote of {}",
            canary.deployment.short_digest()
        ))));
        previous.retire_instances();
        let draining = previous.in_flight();
        let digest = canary.deployment.digest.clone();
        self.append(
            component,
            digest.clone(),
            Some(previous.digest.clone()),
            Action::Promote,
            None,
            None,
        )?;
        tracing::info!(%component, version = %digest.short(), replacing = %previous.short_digest(), "canary promoted");
        self.drain(component, previous.clone());
        Ok(DeployReport {
            component: component.to_string(),
            digest,
            previous: Some(previous.digest.clone()),
            action: Action::Promote,
            cached: true,
            warnings: Vec::new(),
            migrations: Vec::new(),
            timings_ms: Vec::new(),
            draining,
            world: canary.deployment.world.to_string(),
            composed_into: Vec::new(),
        })
    }

    /// Ends the canary of `component` without promoting it: every new request goes to the
    /// stable version again, the canary drains. `action` says who decided (`canary_rollback`
    /// for an operator, `auto_rollback` with its `reason`).
    pub fn end_canary(
        &self,
        component: &str,
        action: Action,
        reason: Option<String>,
    ) -> Result<DeployReport, DeployError> {
        let outcome = self.end_canary_now(component, action.clone(), reason);
        self.count(component, action.as_str(), &outcome);
        outcome
    }

    fn end_canary_now(
        &self,
        component: &str,
        action: Action,
        reason: Option<String>,
    ) -> Result<DeployReport, DeployError> {
        let Some(_lock) = self.app.try_lock_deploy(component) else {
            return Err(DeployError::Conflict {
                component: component.to_string(),
            });
        };
        let (slot, canary) = self.canary_of(component)?;
        slot.canary.store(None);
        canary.deployment.retire_instances();
        let draining = canary.deployment.in_flight();
        let stable = slot.live.load_full();
        let ended = canary.deployment.digest.clone();
        slot.last_canary.store(Some(Arc::new(format!(
            "{} of {}: {}",
            action.as_str(),
            ended.short(),
            reason.as_deref().unwrap_or("by the operator")
        ))));
        match &reason {
            Some(reason) => {
                tracing::warn!(%component, canary = %ended.short(), stable = %stable.short_digest(), "{reason}")
            }
            None => {
                tracing::info!(%component, canary = %ended.short(), stable = %stable.short_digest(), "canary rolled back")
            }
        }
        self.append(
            component,
            stable.digest.clone(),
            Some(ended.clone()),
            action.clone(),
            None,
            reason.clone(),
        )?;
        self.drain(component, canary.deployment.clone());
        Ok(DeployReport {
            component: component.to_string(),
            digest: stable.digest.clone(),
            previous: Some(ended),
            action,
            cached: true,
            warnings: reason.into_iter().collect(),
            migrations: Vec::new(),
            timings_ms: Vec::new(),
            draining,
            world: stable.world.to_string(),
            composed_into: Vec::new(),
        })
    }

    /// After a restart: the journal's canary in progress on `component` takes its share again
    /// (the stable version is already live), or, if its stored source is gone, ends in the
    /// stable version with a journal entry that says why.
    pub async fn restore_canary(&self, component: &str, record: &JournalEntry) {
        let Some(canary) = &record.canary else { return };
        let source = self.app.state.source_of(record.digest.as_str());
        let bytes = match std::fs::read(&source) {
            Ok(bytes) => bytes,
            Err(err) => {
                let reason = format!(
                    "the canary {} cannot come back after the restart: its source {} is gone ({err}); \
                     the stable version serves everything",
                    record.digest.short(),
                    source.display()
                );
                tracing::warn!(%component, "{reason}");
                if let Some(slot) = self.app.slot(component) {
                    let stable = slot.live.load().digest.clone();
                    let _ = self.append(
                        component,
                        stable,
                        Some(record.digest.clone()),
                        Action::CanaryRollback,
                        None,
                        Some(reason),
                    );
                }
                return;
            }
        };
        let mut request = DeployRequest::canary(component, bytes, canary.policy.clone());
        request.record = false;
        request.probe = super::ProbeStep::Warn;
        match self.deploy(request).await {
            Ok(_) => {
                if let Some(slot) = self.app.slot(component) {
                    if let Some(restored) = slot.canary.load_full() {
                        restored.set_share(canary.share_bp, canary.step);
                        tracing::info!(%component, canary = %record.digest.short(), share_percent = canary.share_bp as f64 / 100.0, "canary restored after the restart");
                    }
                }
            }
            Err(err) => {
                tracing::warn!(%component, error = %err, "the canary in progress cannot come back after the restart; the stable version serves everything")
            }
        }
    }

    fn canary_of(&self, component: &str) -> Result<(Arc<ComponentSlot>, Arc<Canary>), DeployError> {
        let not_found = |reason: &str| DeployError::NotFound {
            component: component.to_string(),
            reason: reason.to_string(),
        };
        let slot = self
            .app
            .slot(component)
            .ok_or_else(|| not_found("no such component is deployed"))?;
        let canary = slot.canary.load_full().ok_or_else(|| {
            not_found("no canary is in progress (start one with `mosaic deploy NAME FILE --canary PERCENT`)")
        })?;
        Ok((slot, canary))
    }

    fn append(
        &self,
        component: &str,
        digest: Digest,
        previous: Option<Digest>,
        action: Action,
        canary: Option<CanaryRecord>,
        reason: Option<String>,
    ) -> Result<(), DeployError> {
        let entry = JournalEntry {
            component: component.to_string(),
            digest,
            previous,
            action,
            route: None,
            at_unix_ms: crate::clock::now_unix_ms(),
            canary,
            reason,
        };
        journal::append(&self.app.state.journal_path(), &entry).map_err(|err| {
            tracing::error!(%component, error = %err, "cannot write the deploy journal");
            DeployError::at(
                component,
                Step::Journal,
                format!("the change is made, but the journal could not be written: {err}"),
            )
        })
    }

    /// The canary's supervisor: while `canary` is the slot's canary, it rolls it back once it
    /// fails, raises its share at each `step_every`, and promotes it when a step reaches 100%
    /// or it stayed healthy for `promote_after`. In cluster mode its decisions go through the
    /// coordinator, and the other hosts' counts are added to this host's.
    fn supervise(&self, slot: Arc<ComponentSlot>, canary: Arc<Canary>) {
        let pipeline = self.clone();
        let component = slot.spec.name.clone();
        tokio::spawn(async move {
            let mut last_exchange: Option<Instant> = None;
            let mut last_error: Option<String> = None;
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(SUPERVISION_TICK) => {}
                    _ = canary.failed.notified() => {}
                }
                let current = slot.canary.load_full();
                if !current.as_ref().is_some_and(|current| Arc::ptr_eq(current, &canary)) {
                    return;
                }
                let coordinator = pipeline.canary_coordinator.get().cloned();
                if let Some(coordinator) = &coordinator {
                    if last_exchange.is_none_or(|at| at.elapsed() >= COUNT_EXCHANGE_EVERY) {
                        last_exchange = Some(Instant::now());
                        match coordinator.exchange_counts(&component, &canary).await {
                            Ok((stable, counts)) => canary.set_peer_counts(stable, counts),
                            Err(err) => {
                                tracing::debug!(%component, error = %err, "cannot exchange the canary's counts; judging on this host's alone")
                            }
                        }
                    }
                }
                let Some(decision) = next_decision(&canary) else {
                    continue;
                };
                let outcome = match &coordinator {
                    Some(coordinator) => coordinator.decide(&pipeline, &component, &canary, decision).await,
                    None => pipeline
                        .apply_canary_decision(&component, &canary, decision)
                        .map_err(|err| err.to_string()),
                };
                // A decision that could not be made now is taken again at the next look; a
                // canary that must end serves nothing new meanwhile.
                match outcome {
                    Ok(()) => last_error = None,
                    Err(err) if last_error.as_ref() != Some(&err) => {
                        tracing::warn!(%component, error = %err, "the canary's supervisor could not act; retrying");
                        last_error = Some(err);
                    }
                    Err(_) => {}
                }
            }
        });
    }

    /// Makes a supervisor's decision on this host: journals a step and raises the share, or
    /// promotes, or ends the canary.
    pub fn apply_canary_decision(
        &self,
        component: &str,
        canary: &Arc<Canary>,
        decision: CanaryDecision,
    ) -> Result<(), DeployError> {
        match decision {
            CanaryDecision::Step { share_bp, step } => {
                let Some(slot) = self.app.slot(component) else {
                    return Err(DeployError::at(component, Step::Flip, "the component is gone"));
                };
                // Journaled first: a restart comes back at the share the journal says.
                let record = CanaryRecord {
                    policy: canary.policy.clone(),
                    share_bp,
                    step,
                };
                let stable = slot.live.load().digest.clone();
                let digest = canary.deployment.digest.clone();
                let journaled = self.append(component, digest, Some(stable), Action::CanaryStep, Some(record), None);
                let outcome = if journaled.is_ok() { "ok" } else { "journal" };
                self.app.metrics.record_deploy(component, "canary_step", outcome);
                canary.set_share(share_bp, step);
                tracing::info!(%component, share_percent = share_bp as f64 / 100.0, "canary share raised");
                Ok(())
            }
            CanaryDecision::Promote => self.promote(component).map(drop),
            CanaryDecision::End { action, reason } => {
                canary.withdraw();
                self.end_canary(component, action, reason).map(drop)
            }
        }
    }

    /// The coordinator of this host's canaries in cluster mode (set once, when the host joins).
    pub fn coordinate_canaries_through(&self, coordinator: Arc<dyn CanaryCoordinator>) {
        if self.canary_coordinator.set(coordinator).is_err() {
            tracing::warn!("a second canary coordinator was ignored");
        }
    }
}

/// What the supervisor of `canary` must do now, if anything: roll it back when it fails, raise
/// it at each `step_every` (promote at 100%), promote it once healthy for `promote_after`.
fn next_decision(canary: &Canary) -> Option<CanaryDecision> {
    if let Some(reason) = canary.failing() {
        return Some(CanaryDecision::End {
            action: Action::AutoRollback,
            reason: Some(reason),
        });
    }
    let policy = &canary.policy;
    let next_step = canary.step() as usize;
    if let (Some(every), Some(share)) = (policy.step_every_ms, policy.steps.get(next_step)) {
        if canary.since_last_change() < Duration::from_millis(every) {
            return None;
        }
        let share_bp = basis_points(*share);
        return Some(if share_bp >= ALL {
            CanaryDecision::Promote
        } else {
            CanaryDecision::Step {
                share_bp,
                step: next_step as u32 + 1,
            }
        });
    }
    let after = policy.promote_after_ms?;
    (canary.since_last_change() >= Duration::from_millis(after)).then_some(CanaryDecision::Promote)
}
