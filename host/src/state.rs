//! The state directory (default `.mosaic/` beside the manifest): compiled artifacts, the
//! sources of every deployed version, the deploy journal, staged files and the admin token.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone)]
pub struct StateDir {
    root: PathBuf,
}

/// Written by a running host so that the CLI can find and authenticate to its admin API.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AdminEndpoint {
    pub addr: std::net::SocketAddr,
    pub pid: u32,
}

impl StateDir {
    /// The default state directory of a manifest: `.mosaic/` beside it.
    pub fn beside(manifest: &Path) -> PathBuf {
        manifest
            .parent()
            .filter(|p| !p.as_os_str().is_empty())
            .unwrap_or(Path::new("."))
            .join(".mosaic")
    }

    pub fn open(root: PathBuf) -> std::io::Result<Self> {
        let state = Self { root };
        for dir in [state.artifacts_dir(), state.sources_dir(), state.files_dir()] {
            std::fs::create_dir_all(&dir)?;
        }
        Ok(state)
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn artifacts_dir(&self) -> PathBuf {
        self.root.join("artifacts")
    }
    pub fn sources_dir(&self) -> PathBuf {
        self.root.join("components")
    }
    pub fn files_dir(&self) -> PathBuf {
        self.root.join("files")
    }
    pub fn journal_path(&self) -> PathBuf {
        self.root.join("journal.jsonl")
    }
    pub fn token_path(&self) -> PathBuf {
        self.root.join("admin-token")
    }
    pub fn endpoint_path(&self) -> PathBuf {
        self.root.join("admin.json")
    }

    /// The stored source of a deployed version.
    pub fn source_of(&self, digest: &str) -> PathBuf {
        self.sources_dir().join(format!("{digest}.wasm"))
    }

    /// The compiled artifact of a version, valid for one wasmtime build and configuration.
    pub fn artifact_of(&self, digest: &str) -> PathBuf {
        self.artifacts_dir().join(format!("{digest}.cwasm"))
    }

    /// Creates a fresh admin token readable by the owner only (0600).
    pub fn write_token(&self) -> std::io::Result<String> {
        use rand::RngCore;
        let mut bytes = [0u8; 32];
        rand::rng().fill_bytes(&mut bytes);
        let token = hex::encode(bytes);
        write_private(&self.token_path(), token.as_bytes())?;
        Ok(token)
    }

    pub fn read_token(&self) -> std::io::Result<String> {
        Ok(std::fs::read_to_string(self.token_path())?.trim().to_string())
    }

    pub fn write_endpoint(&self, endpoint: &AdminEndpoint) -> std::io::Result<()> {
        let json = serde_json::to_vec_pretty(endpoint).map_err(std::io::Error::other)?;
        write_private(&self.endpoint_path(), &json)
    }

    pub fn read_endpoint(&self) -> std::io::Result<AdminEndpoint> {
        let bytes = std::fs::read(self.endpoint_path())?;
        serde_json::from_slice(&bytes).map_err(std::io::Error::other)
    }

    pub fn clear_endpoint(&self) {
        let _ = std::fs::remove_file(self.endpoint_path());
    }
}

/// Writes a file atomically (temp file + rename) with mode 0600.
pub fn write_private(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    let tmp = path.with_extension("tmp");
    {
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create(true).truncate(true);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            options.mode(0o600);
        }
        let mut file = options.open(&tmp)?;
        file.write_all(bytes)?;
        file.sync_all()?;
    }
    std::fs::rename(&tmp, path)
}

/// Writes a file atomically (temp file + rename), unless it already exists.
pub fn write_once(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    if path.exists() {
        return Ok(());
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, bytes)?;
    std::fs::rename(&tmp, path)
}
