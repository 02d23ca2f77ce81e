//! Validation of an uploaded file and the compile step with its cache: a compiled artifact is
//! stored by the digest of its source (with its dependencies, of every part), so a restart or
//! a rollback never compiles again.

use std::path::Path;

use wasmtime::component::Component;
use wasmtime::Engine;

/// Checks that `bytes` is a Wasm component (not random bytes, not a core module).
pub fn check_is_component(bytes: &[u8]) -> Result<(), String> {
    if bytes.len() < 8 || &bytes[0..4] != b"\0asm" {
        return Err("the file is not WebAssembly (it does not start with `\\0asm`); \
                    deploy the .wasm file your build produced"
            .into());
    }
    match bytes[4..8] {
        [0x0d, 0x00, 0x01, 0x00] => Ok(()),
        [0x01, 0x00, 0x00, 0x00] => Err("the file is a core WebAssembly module, not a component; \
             build it for the wasm32-wasip2 target (or wrap it with `wasm-tools component new`)"
            .into()),
        _ => Err(format!(
            "the file has an unknown WebAssembly version or layer {:02x?}",
            &bytes[4..8]
        )),
    }
}

/// Loads the cached artifact at `artifact`, or compiles what `source` gives (the component, or
/// its composition with its dependencies) and caches the result. Returns the component and
/// whether the cache was hit. Blocking: run it off the runtime.
pub fn load_or_compile(
    engine: &Engine,
    artifact: &Path,
    source: impl FnOnce() -> Result<std::sync::Arc<Vec<u8>>, String>,
) -> Result<(Component, bool), String> {
    if artifact.exists() {
        // SAFETY: the artifact was written by `Component::serialize` of this host into its own
        // state directory under the digest of its source; wasmtime checks that it was built
        // by a compatible engine and configuration and refuses it otherwise.
        match unsafe { Component::deserialize_file(engine, artifact) } {
            Ok(component) => return Ok((component, true)),
            Err(err) => tracing::info!(
                artifact = %artifact.display(),
                error = %err,
                "cached artifact unusable (another wasmtime build?); compiling again"
            ),
        }
    }
    let bytes = source()?;
    let mapped = super::snapshots::map_snapshot_names(&bytes)?;
    let component = Component::new(engine, mapped.as_deref().unwrap_or(&bytes)).map_err(|err| format!("{err:#}"))?;
    match component.serialize() {
        Ok(serialized) => {
            if let Err(err) = crate::state::write_private(artifact, &serialized) {
                tracing::warn!(artifact = %artifact.display(), error = %err, "cannot cache the compiled artifact");
            }
        }
        Err(err) => tracing::warn!(error = %err, "cannot serialize the compiled artifact"),
    }
    Ok((component, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn random_bytes_and_core_modules_are_refused() {
        assert!(check_is_component(b"hello world, not wasm")
            .unwrap_err()
            .contains("not WebAssembly"));
        assert!(check_is_component(b"\0asm\x01\0\0\0")
            .unwrap_err()
            .contains("core WebAssembly module"));
        assert!(check_is_component(b"\0asm").is_err());
        assert!(check_is_component(b"\0asm\x0d\0\x01\0").is_ok());
    }
}
