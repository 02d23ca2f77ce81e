//! The deploy journal: one JSON line per deployment in the state directory, appended and
//! synced before a deploy reports success. A restarted host reads it to come back with the last
//! deployed version of every component, and rollback reads it to find the version before.

use std::io::Write;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::digest::Digest;

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Action {
    /// The manifest's source file, loaded at start-up because it changed since last time.
    Manifest,
    Deploy,
    Rollback,
}

impl Action {
    pub fn as_str(&self) -> &'static str {
        match self {
            Action::Manifest => "manifest",
            Action::Deploy => "deploy",
            Action::Rollback => "rollback",
        }
    }
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
