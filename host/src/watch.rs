//! `mosaic watch`: polls each component's `build.watch` files and its source, rebuilds only the
//! component whose files changed and deploys just that one through the swap pipeline. The
//! others keep serving; a failed build or deploy leaves the running version in place.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use crate::app::manifest::Manifest;
use crate::deploy::DeployRequest;
use crate::digest::Digest;
use crate::rollout::Rollout;

pub const POLL_INTERVAL: Duration = Duration::from_millis(400);

type Fingerprint = Vec<(PathBuf, SystemTime, u64)>;

#[derive(Default, Clone, PartialEq, Eq)]
struct Seen {
    inputs: Fingerprint,
    source: Fingerprint,
}

/// What to do about one component whose files changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Change {
    pub component: String,
    /// The build inputs changed (rebuild, then deploy); otherwise only the source did.
    pub rebuild: bool,
}

pub struct Watcher {
    manifest: Manifest,
    seen: BTreeMap<String, Seen>,
}

impl Watcher {
    pub fn new(manifest: Manifest) -> Self {
        let mut watcher = Self {
            manifest,
            seen: BTreeMap::new(),
        };
        // A copy for a route with middleware is rebuilt and deployed with its original.
        let names: Vec<String> = watcher
            .manifest
            .components
            .iter()
            .filter(|(_, decl)| decl.copy_of.is_none())
            .map(|(name, _)| name.clone())
            .collect();
        for name in names {
            let seen = watcher.look(&name);
            watcher.seen.insert(name, seen);
        }
        watcher
    }

    fn look(&self, component: &str) -> Seen {
        let dir = self.manifest.build_dir(component);
        let patterns = self
            .manifest
            .components
            .get(component)
            .and_then(|c| c.build.as_ref())
            .map(|b| b.watch.clone())
            .unwrap_or_default();
        let mut inputs = Vec::new();
        for pattern in patterns {
            let full = dir.join(&pattern);
            if let Ok(paths) = glob::glob(&full.to_string_lossy()) {
                inputs.extend(paths.flatten().filter_map(fingerprint_of));
            }
        }
        inputs.sort();
        let source = self
            .manifest
            .source_path(component)
            .and_then(fingerprint_of)
            .into_iter()
            .collect();
        Seen { inputs, source }
    }

    /// The components whose watched files changed since the last call.
    pub fn changes(&mut self) -> Vec<Change> {
        let mut changes = Vec::new();
        let names: Vec<String> = self.seen.keys().cloned().collect();
        for name in names {
            let now = self.look(&name);
            let before = self.seen.get(&name).cloned().unwrap_or_default();
            if now != before {
                changes.push(Change {
                    component: name.clone(),
                    rebuild: now.inputs != before.inputs,
                });
                self.seen.insert(name, now);
            }
        }
        changes
    }

    /// Forgets changes made by our own build (the rebuilt source file).
    pub fn settle(&mut self, component: &str) {
        let now = self.look(component);
        self.seen.insert(component.to_string(), now);
    }

    pub fn manifest(&self) -> &Manifest {
        &self.manifest
    }
}

fn fingerprint_of(path: PathBuf) -> Option<(PathBuf, SystemTime, u64)> {
    let meta = std::fs::metadata(&path).ok()?;
    if !meta.is_file() {
        return None;
    }
    Some((path, meta.modified().ok()?, meta.len()))
}

/// Watches until `stop` resolves.
pub async fn run(rollout: Rollout, mut watcher: Watcher, stop: impl std::future::Future<Output = ()>) {
    tokio::pin!(stop);
    loop {
        tokio::select! {
            _ = &mut stop => return,
            _ = tokio::time::sleep(POLL_INTERVAL) => {}
        }
        let changes = watcher.changes();
        for change in changes {
            // Let an editor or a compiler finish writing before acting.
            tokio::time::sleep(POLL_INTERVAL).await;
            let _ = watcher.changes();
            rebuild_and_deploy(&rollout, &mut watcher, &change).await;
        }
    }
}

async fn rebuild_and_deploy(rollout: &Rollout, watcher: &mut Watcher, change: &Change) {
    let name = change.component.clone();
    if change.rebuild {
        let manifest = watcher.manifest().clone();
        let build_name = name.clone();
        let built = tokio::task::spawn_blocking(move || crate::build::build_component(&manifest, &build_name)).await;
        watcher.settle(&name);
        match built {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => {
                tracing::error!(component = %name, error = %format!("{err:#}"), "build failed; the running version keeps serving");
                return;
            }
            Err(err) => {
                tracing::error!(component = %name, error = %err, "build task failed");
                return;
            }
        }
    }
    let Some(source) = watcher.manifest().source_path(&name) else {
        return;
    };
    let bytes = match std::fs::read(&source) {
        Ok(bytes) => bytes,
        Err(err) => {
            tracing::error!(component = %name, source = %source.display(), error = %err, "cannot read the rebuilt component");
            return;
        }
    };
    let app = rollout.app();
    let running = match app.slot(&name) {
        Some(slot) => Some(slot.live.load().digest.clone()),
        None => app.dependency_version(&name).map(|dependency| dependency.digest),
    };
    if running.is_some_and(|digest| digest == Digest::of(&bytes)) {
        tracing::info!(component = %name, "unchanged after the build; nothing to deploy");
        return;
    }
    // In a cluster, what watch deploys becomes the desired version of every host.
    match rollout.deploy(DeployRequest::deploy(&name, bytes, None)).await {
        Ok(report) => tracing::info!(component = %name, version = %report.digest.short(), "watch: deployed"),
        Err(err) => tracing::error!(component = %name, error = %err, "watch: deploy failed"),
    }
}
