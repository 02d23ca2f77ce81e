//! Runs a component's `[component.NAME.build]` command, like `spin build`.

use std::process::Command;

use crate::app::manifest::Manifest;

/// Builds one component; `Ok(false)` when it has no build command.
pub fn build_component(manifest: &Manifest, component: &str) -> anyhow::Result<bool> {
    let Some(build) = manifest.components.get(component).and_then(|c| c.build.as_ref()) else {
        return Ok(false);
    };
    let workdir = manifest.build_dir(component);
    for command in build.command.commands() {
        tracing::info!(%component, %command, workdir = %workdir.display(), "building");
        let status = Command::new("sh")
            .arg("-c")
            .arg(command)
            .current_dir(&workdir)
            .status()
            .map_err(|err| {
                anyhow::anyhow!("component `{component}`: cannot run its build command `{command}`: {err}")
            })?;
        if !status.success() {
            anyhow::bail!(
                "component `{component}`: its build command `{command}` failed ({status}) in {}",
                workdir.display()
            );
        }
    }
    Ok(true)
}

pub fn build_all(manifest: &Manifest) -> anyhow::Result<()> {
    // A copy for a route with middleware is built as its original.
    for (component, _) in manifest.components.iter().filter(|(_, decl)| decl.copy_of.is_none()) {
        build_component(manifest, component)?;
    }
    Ok(())
}
