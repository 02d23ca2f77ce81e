//! The deploy journal: one JSON line per deployment in the state directory, appended and
//! synced before a deploy reports success. A restarted host reads it to come back with the last
//! deployed version of every component, and rollback reads it to find the version before.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// The manifest's source file, loaded at start-up because it changed since last time.
    Manifest,
    Deploy,
    Rollback,
    /// A canary started: `digest` takes a share of the requests, `previous` stays live.
    Canary,
    /// A canary's share was raised (`canary.share_bp`).
    CanaryStep,
    /// The canary became the live version; `previous` is the stable one it replaced.
    Promote,
    /// A canary ended without promotion by an operator's rollback: `digest` (the stable
    /// version) serves everything again, `previous` is the canary.
    CanaryRollback,
    /// The same, decided by the canary's error rate (`reason` says why).
    AutoRollback,
}

impl Action {
    pub fn as_str(&self) -> &'static str {
        match self {
            Action::Manifest => "manifest",
            Action::Deploy => "deploy",
            Action::Rollback => "rollback",
            Action::Canary => "canary",
            Action::CanaryStep => "canary_step",
            Action::Promote => "promote",
            Action::CanaryRollback => "canary_rollback",
            Action::AutoRollback => "auto_rollback",
        }
    }

    /// Whether the entry's `digest` became the live version (a canary entry leaves the live
    /// version as it was; an ended canary's entry names the live version, which it did not change).
    pub fn changes_live(&self) -> bool {
        matches!(
            self,
            Action::Manifest | Action::Deploy | Action::Rollback | Action::Promote
        )
    }
}

/// A canary's split as journaled, so that a restart comes back to it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CanaryRecord {
    pub policy: crate::app::canary::CanaryPolicy,
    /// Its share of new requests, in basis points (10,000: all).
    pub share_bp: u32,
    /// The step of `policy.steps` reached (0: the first share).
    pub step: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct JournalEntry {
    pub component: String,
    pub digest: Digest,
    /// The version this one replaced: where `rollback` goes.
    pub previous: Option<Digest>,
    pub action: Action,
    /// The route of a component added by `deploy --route` (absent for manifest components).
    pub route: Option<String>,
    pub at_unix_ms: u64,
    /// A canary's split (`canary`, `canary_step`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryRecord>,
    /// Why (an automatic rollback).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
}

impl JournalEntry {
    /// The version that serves (all, or the stable share of) the component after this entry.
    pub fn live_digest(&self) -> &Digest {
        match (&self.action, &self.previous) {
            (Action::Canary | Action::CanaryStep, Some(stable)) => stable,
            _ => &self.digest,
        }
    }
}

/// The canary in progress after `history` (a component's entries, oldest first), if any.
pub fn canary_in_progress<'a>(history: &[&'a JournalEntry]) -> Option<&'a JournalEntry> {
    history
        .last()
        .copied()
        .filter(|entry| matches!(entry.action, Action::Canary | Action::CanaryStep) && entry.canary.is_some())
}

pub fn append(path: &Path, entry: &JournalEntry) -> std::io::Result<()> {
    let mut line = serde_json::to_vec(entry).map_err(std::io::Error::other)?;
    line.push(b'\n');
    let mut file = std::fs::OpenOptions::new().create(true).append(true).open(path)?;
    file.write_all(&line)?;
    file.sync_data()
}

/// Every readable entry in order. A torn last line (a crash mid-write) is skipped.
pub fn read(path: &Path) -> std::io::Result<Vec<JournalEntry>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(err) => return Err(err),
    };
    Ok(text
        .lines()
        .filter(|line| !line.trim().is_empty())
        .filter_map(|line| match serde_json::from_str(line) {
            Ok(entry) => Some(entry),
            Err(err) => {
                tracing::warn!(error = %err, "skipping an unreadable line of the deploy journal");
                None
            }
        })
        .collect())
}

pub fn history<'a>(entries: &'a [JournalEntry], component: &str) -> Vec<&'a JournalEntry> {
    entries.iter().filter(|entry| entry.component == component).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn torn_line_is_skipped() {
        let dir = std::env::temp_dir().join(format!("mosaic-journal-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("journal.jsonl");
        let _ = std::fs::remove_file(&path);
        let entry = JournalEntry {
            component: "users".into(),
            digest: Digest::from_hex("abc"),
            previous: None,
            action: Action::Deploy,
            route: None,
            at_unix_ms: 1,
            canary: None,
            reason: None,
        };
        append(&path, &entry).unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(b"{\"component\":")
            .unwrap();
        let entries = read(&path).unwrap();
        assert_eq!(entries.len(), 1);
        assert_eq!(entries[0].digest, "abc");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
