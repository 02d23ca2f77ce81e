//! The `files` grant: the files a component may read, staged into a directory of their own in
//! the state directory and preopened read-only at `/`. Nothing outside the grant is visible.

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
                        copy_file(&path, &stage.join(relative))?;
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
                copy_tree(&source, &stage.join(destination))?;
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

fn copy_file(from: &Path, to: &Path) -> Result<(), String> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).map_err(|err| format!("cannot create {}: {err}", parent.display()))?;
    }
    std::fs::copy(from, to)
        .map(drop)
        .map_err(|err| format!("cannot copy {}: {err}", from.display()))
}

fn copy_tree(from: &Path, to: &Path) -> Result<(), String> {
    if from.is_file() {
        return copy_file(from, to);
    }
    let entries = std::fs::read_dir(from).map_err(|err| format!("cannot read {}: {err}", from.display()))?;
    for entry in entries.flatten() {
        copy_tree(&entry.path(), &to.join(entry.file_name()))?;
    }
    Ok(())
}
