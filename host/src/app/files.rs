//! The `files` grant: the files a component may read, staged into a directory of their own in
//! the state directory and preopened read-only at `/`. Nothing outside the grant is visible:
//! a symlink under the application directory is not followed (it could lead anywhere).

use std::path::{Component, Path, PathBuf};

use super::manifest::{FileMount, Manifest};

/// Copies what `component`'s `files` grant names into `stage_root/component` and returns that
/// directory, or `None` when the component has no `files` grant.
pub fn stage(manifest: &Manifest, component: &str, stage_root: &Path) -> Result<Option<PathBuf>, String> {
    let Some(decl) = manifest.components.get(component) else {
        return Ok(None);
    };
    if decl.files.is_empty() {
        return Ok(None);
    }
    let stage = stage_root.join(component);
    if stage.exists() {
        std::fs::remove_dir_all(&stage).map_err(|err| format!("cannot clear {}: {err}", stage.display()))?;
    }
    std::fs::create_dir_all(&stage).map_err(|err| format!("cannot create {}: {err}", stage.display()))?;
    let key = format!("component.{component}.files");
    let app_root = manifest
        .dir
        .canonicalize()
        .map_err(|err| format!("cannot resolve {}: {err}", manifest.dir.display()))?;
    let copy = Copier {
        app_dir: &manifest.dir,
        app_root: &app_root,
    };
    for mount in &decl.files {
        match mount {
            FileMount::Pattern(pattern) => {
                check_relative(Path::new(pattern)).map_err(|why| format!("`{key}`: \"{pattern}\" {why}"))?;
                let full = manifest.dir.join(pattern);
                let matches = glob::glob(&full.to_string_lossy())
                    .map_err(|err| format!("`{key}`: \"{pattern}\" is not a valid glob: {err}"))?;
                for path in matches.flatten() {
                    if path.is_file() && !excluded(manifest, &decl.exclude_files, &path) {
                        let relative = path.strip_prefix(&manifest.dir).unwrap_or(&path);
                        copy.file(&path, &stage.join(relative))?;
                    }
                }
            }
            FileMount::Mapping { source, destination } => {
                check_relative(source).map_err(|why| format!("`{key}`: source \"{}\" {why}", source.display()))?;
                let destination = destination.trim_start_matches('/');
                check_relative(Path::new(destination))
                    .map_err(|why| format!("`{key}`: destination \"{destination}\" {why}"))?;
                let source = manifest.dir.join(source);
                if !source.exists() {
                    return Err(format!("`{key}`: source {} does not exist", source.display()));
                }
                copy.tree(&source, &stage.join(destination))?;
            }
        }
    }
    Ok(Some(stage))
}

fn excluded(manifest: &Manifest, patterns: &[String], path: &Path) -> bool {
    let relative = path.strip_prefix(&manifest.dir).unwrap_or(path);
    patterns
        .iter()
        .filter_map(|pattern| glob::Pattern::new(pattern).ok())
        .any(|pattern| pattern.matches_path(relative))
}

fn check_relative(path: &Path) -> Result<(), &'static str> {
    if path.is_absolute() || path.components().any(|c| matches!(c, Component::ParentDir)) {
        return Err("must be a path inside the application directory (no absolute paths, no `..`)");
    }
    Ok(())
}

/// Copies the files of a grant, refusing any that is reached through a symlink under the
/// application directory: a link in a granted folder may point at anything (`../secret`,
/// `/etc`), and the grant names the link, not what it points to.
struct Copier<'a> {
    /// The manifest's directory as given, and resolved.
    app_dir: &'a Path,
    app_root: &'a Path,
}

impl Copier<'_> {
    /// Whether `path` (below the application directory) is where it appears to be: no symlink
    /// on its way from the application directory.
    fn inside_app(&self, path: &Path) -> bool {
        let relative = path.strip_prefix(self.app_dir).unwrap_or(path);
        let inside = path
            .canonicalize()
            .is_ok_and(|resolved| resolved == self.app_root.join(relative));
        if !inside {
            tracing::warn!(path = %path.display(), "not staged for the `files` grant: it is a symlink (or under one); copy the file itself into the granted folder");
        }
        inside
    }

    fn file(&self, from: &Path, to: &Path) -> Result<(), String> {
        if !self.inside_app(from) {
            return Ok(());
        }
        if let Some(parent) = to.parent() {
            std::fs::create_dir_all(parent).map_err(|err| format!("cannot create {}: {err}", parent.display()))?;
        }
        std::fs::copy(from, to)
            .map(drop)
            .map_err(|err| format!("cannot copy {}: {err}", from.display()))
    }

    fn tree(&self, from: &Path, to: &Path) -> Result<(), String> {
        if from.is_file() {
            return self.file(from, to);
        }
        if !self.inside_app(from) {
            return Ok(());
        }
        let entries = std::fs::read_dir(from).map_err(|err| format!("cannot read {}: {err}", from.display()))?;
        for entry in entries.flatten() {
            self.tree(&entry.path(), &to.join(entry.file_name()))?;
        }
        Ok(())
    }
}
