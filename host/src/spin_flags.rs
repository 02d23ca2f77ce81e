//! `spin up`'s flags, as `mosaic up` takes them: their values parsed into the host's
//! [`RunOptions`], a single `.wasm` served as an application, and the flags of `spin up` that
//! Mosaic has no equivalent for, explained instead of refused as unknown.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use mosaic::host::RunOptions;
use mosaic::listener::TlsFiles;

/// The values of the Spin flags of `mosaic up` / `mosaic watch`.
pub struct SpinFlags {
    pub variables: Vec<String>,
    pub env: Vec<String>,
    pub key_values: Vec<String>,
    pub sqlite: Vec<String>,
    pub component_ids: Vec<String>,
    pub find_free_port: bool,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
}

impl SpinFlags {
    pub fn run_options(&self) -> anyhow::Result<RunOptions> {
        let mut variables = BTreeMap::new();
        for flag in &self.variables {
            variables.extend(variable_flag(flag)?);
        }
        let tls = match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Some(TlsFiles {
                cert: cert.clone(),
                key: key.clone(),
            }),
            (None, None) => None,
            (Some(_), None) => bail!("--tls-cert needs --tls-key (the certificate's private key, PEM)"),
            (None, Some(_)) => bail!("--tls-key needs --tls-cert (the certificate chain, PEM)"),
        };
        Ok(RunOptions {
            variables,
            environment: self
                .env
                .iter()
                .map(|flag| pair("-e/--env", flag))
                .collect::<anyhow::Result<_>>()?,
            components: self.component_ids.clone(),
            key_values: self
                .key_values
                .iter()
                .map(|flag| pair("--key-value", flag))
                .collect::<anyhow::Result<_>>()?,
            sqlite_statements: self
                .sqlite
                .iter()
                .map(|flag| match flag.strip_prefix('@') {
                    Some(file) => {
                        std::fs::read_to_string(file).with_context(|| format!("--sqlite @{file}: cannot read the file"))
                    }
                    None => Ok(flag.clone()),
                })
                .collect::<anyhow::Result<_>>()?,
            find_free_port: self.find_free_port,
            tls,
        })
    }
}

/// `NAME=VALUE`.
fn pair(flag: &str, text: &str) -> anyhow::Result<(String, String)> {
    match text.split_once('=') {
        Some((name, value)) if !name.is_empty() => Ok((name.to_string(), value.to_string())),
        _ => bail!("{flag} {text}: expected NAME=VALUE"),
    }
}

/// `--variable NAME=VALUE`, `--variable NAME=@FILE` (the value is the file's content) or
/// `--variable @FILE` (a JSON or TOML table of names and values), as Spin reads them.
fn variable_flag(text: &str) -> anyhow::Result<BTreeMap<String, String>> {
    if let Some(file) = text.strip_prefix('@') {
        let content =
            std::fs::read_to_string(file).with_context(|| format!("--variable @{file}: cannot read the file"))?;
        let table: BTreeMap<String, toml::Value> = if file.ends_with(".json") {
            serde_json::from_str::<BTreeMap<String, serde_json::Value>>(&content)
                .with_context(|| format!("--variable @{file}: not a JSON object of names and values"))?
                .into_iter()
                .map(|(name, value)| {
                    let value = match value {
                        serde_json::Value::String(text) => toml::Value::String(text),
                        other => toml::Value::String(other.to_string()),
                    };
                    (name, value)
                })
                .collect()
        } else {
            toml::from_str(&content)
                .with_context(|| format!("--variable @{file}: not a TOML table of names and values"))?
        };
        return table
            .into_iter()
            .map(|(name, value)| match value {
                toml::Value::String(text) => Ok((name, text)),
                toml::Value::Integer(_) | toml::Value::Float(_) | toml::Value::Boolean(_) => {
                    Ok((name, value.to_string()))
                }
                _ => bail!("--variable @{file}: `{name}` must be a string, number or boolean"),
            })
            .collect();
    }
    let (name, value) = pair("--variable", text)?;
    let value = match value.strip_prefix('@') {
        Some(file) => {
            std::fs::read_to_string(file).with_context(|| format!("--variable {name}=@{file}: cannot read the file"))?
        }
        None => value,
    };
    Ok(BTreeMap::from([(name, value)]))
}

/// `-f app.wasm`: a generated manifest that serves the component at `/...`, under the name of
/// its file, in the state directory beside it (as `spin up -f app.wasm`). Returns the manifest
/// and the mosaic.toml beside the component, if there is one.
pub fn manifest_for_component(wasm: &Path, state_dir: &Path) -> anyhow::Result<(PathBuf, Option<PathBuf>)> {
    let source = std::fs::canonicalize(wasm).with_context(|| format!("cannot read {}", wasm.display()))?;
    let stem = source.file_stem().and_then(|stem| stem.to_str()).unwrap_or("app");
    let mut name: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect();
    name = name
        .split('-')
        .filter(|word| !word.is_empty())
        .collect::<Vec<_>>()
        .join("-");
    if !name.starts_with(|c: char| c.is_ascii_lowercase()) {
        name = format!("app-{name}").trim_end_matches('-').to_string();
    }
    let manifest = format!(
        "# Generated by `mosaic up -f {}`: the component alone, at /...\n\
         spin_manifest_version = 2\n\
         [application]\nname = \"{name}\"\n\
         [[trigger.http]]\nroute = \"/...\"\ncomponent = \"{name}\"\n\
         [component.{name}]\nsource = {}\n",
        wasm.display(),
        toml::Value::String(source.to_string_lossy().to_string())
    );
    std::fs::create_dir_all(state_dir)
        .with_context(|| format!("cannot create the state directory {}", state_dir.display()))?;
    let path = state_dir.join("spin.toml");
    std::fs::write(&path, manifest).with_context(|| format!("cannot write {}", path.display()))?;
    let settings = source
        .parent()
        .map(|dir| dir.join("mosaic.toml"))
        .filter(|path| path.exists());
    Ok((path, settings))
}

/// `spin up` flags `mosaic up` does not take, and what to do instead.
const WITHOUT_EQUIVALENT: &[(&str, &str)] = &[
    (
        "--direct-mounts",
        "Mosaic stages each component's `files` read-only under the state directory; drop the flag",
    ),
    (
        "--allow-transient-write",
        "a component's files are read-only in Mosaic; write to a key-value store or a database",
    ),
    (
        "--log-dir",
        "Mosaic logs to stderr (add --log-format json for JSON lines); redirect it to a file",
    ),
    (
        "--disable-pooling",
        "Mosaic always uses wasmtime's pooling allocator; size it with limits.max_concurrent_instances in mosaic.toml",
    ),
    ("--max-instance-memory", "set limits.instance_memory_mb in mosaic.toml"),
    (
        "--cache",
        "Mosaic caches compiled components by digest in its state directory; drop the flag",
    ),
    (
        "--disable-cache",
        "Mosaic's artifact cache lives in the state directory; use --temp for a fresh one",
    ),
    (
        "--follow",
        "guest output always goes to Mosaic's log, tagged with the component; drop the flag",
    ),
    (
        "--follow-all",
        "guest output always goes to Mosaic's log, tagged with the component; drop the flag",
    ),
    ("--quiet", "filter the log with MOSAIC_LOG=warn"),
    ("--insecure", "Mosaic runs only local files and has no registry access"),
    (
        "--registry",
        "Mosaic runs only local files; pull the application with `spin registry pull` first",
    ),
    ("--key-value-file", "pass --key-value KEY=VALUE for each pair"),
    ("--runtime-config", "the flag is --runtime-config-file"),
];

/// When clap refuses an unknown argument of `up`/`watch`: whether it is a `spin up` flag, and
/// what Mosaic has instead.
pub fn explain_unknown(flag: &str) -> Option<String> {
    let name = flag.split('=').next().unwrap_or(flag);
    if name == "-q" {
        return explain_unknown("--quiet");
    }
    WITHOUT_EQUIVALENT
        .iter()
        .find(|(known, _)| *known == name)
        .map(|(known, instead)| format!("`spin up {known}` has no equivalent in Mosaic: {instead}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variables_from_pairs_and_files() {
        let dir = std::env::temp_dir().join(format!("mosaic-spin-flags-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let json = dir.join("vars.json");
        std::fs::write(&json, r#"{"a": "1", "b": 2}"#).unwrap();
        let toml = dir.join("vars.toml");
        std::fs::write(&toml, "c = \"x\"\nd = true\n").unwrap();
        let secret = dir.join("secret.txt");
        std::fs::write(&secret, "s3cret").unwrap();
        let flags = SpinFlags {
            variables: vec![
                "name=value=with=equals".into(),
                format!("@{}", json.display()),
                format!("@{}", toml.display()),
                format!("token=@{}", secret.display()),
            ],
            env: vec!["A=1".into()],
            key_values: vec!["k=v".into()],
            sqlite: vec!["CREATE TABLE t (x)".into()],
            component_ids: vec![],
            find_free_port: false,
            tls_cert: None,
            tls_key: None,
        };
        let run = flags.run_options().unwrap();
        let expected: BTreeMap<String, String> = [
            ("name", "value=with=equals"),
            ("a", "1"),
            ("b", "2"),
            ("c", "x"),
            ("d", "true"),
            ("token", "s3cret"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        assert_eq!(run.variables, expected);
        assert_eq!(run.environment, [("A".to_string(), "1".to_string())]);
        assert!(variable_flag("novalue").unwrap_err().to_string().contains("NAME=VALUE"));
        assert!(explain_unknown("--direct-mounts").unwrap().contains("no equivalent"));
        assert!(explain_unknown("--nope").is_none());
        let _ = std::fs::remove_dir_all(&dir);
    }
}
