//! The Spin application manifest (`spin.toml`, manifest version 2): parsing and validation.
//!
//! Only what a Spin application can say is accepted here; Mosaic's own settings live in
//! `mosaic.toml`. Every error names the file, the key and what to do.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::routes::RoutePattern;

#[derive(Debug, thiserror::Error)]
#[error("{}: {message}", path.display())]
pub struct ManifestError {
    pub path: PathBuf,
    pub message: String,
}

/// A loaded, validated manifest with paths resolved against its directory.
#[derive(Debug, Clone)]
pub struct Manifest {
    pub path: PathBuf,
    pub dir: PathBuf,
    pub application: Application,
    pub variables: BTreeMap<String, VariableDecl>,
    pub http_triggers: Vec<HttpTrigger>,
    /// Trigger types other than HTTP that the manifest declares (e.g. `redis`).
    pub other_trigger_types: Vec<String>,
    pub components: BTreeMap<String, ComponentDecl>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Application {
    pub name: String,
    #[serde(default)]
    pub version: Option<String>,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub authors: Vec<String>,
    #[serde(default)]
    pub trigger: Option<toml::Table>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct VariableDecl {
    #[serde(default)]
    pub default: Option<String>,
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub secret: bool,
    #[serde(default)]
    pub description: Option<String>,
}

#[derive(Debug, Clone)]
pub struct HttpTrigger {
    pub component: String,
    pub route: HttpRoute,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpRoute {
    Public(RoutePattern),
    /// `route = { private = true }`: reachable only through `NAME.spin.internal`.
    Private,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttpTrigger {
    #[serde(default)]
    id: Option<String>,
    route: RawRoute,
    component: RawComponentRef,
    #[serde(default)]
    executor: Option<toml::Table>,
    #[serde(default)]
    static_response: Option<toml::Table>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum RawRoute {
    Path(String),
    Private { private: bool },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum RawComponentRef {
    Name(String),
    Inline(toml::Table),
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComponentDecl {
    pub source: ComponentSource,
    #[serde(default)]
    pub description: Option<String>,
    #[serde(default)]
    pub allowed_outbound_hosts: Vec<String>,
    /// Spin 1 spelling of `allowed_outbound_hosts`; still accepted by Spin.
    #[serde(default)]
    pub allowed_http_hosts: Vec<String>,
    #[serde(default)]
    pub key_value_stores: Vec<String>,
    #[serde(default)]
    pub sqlite_databases: Vec<String>,
    #[serde(default)]
    pub ai_models: Vec<String>,
    #[serde(default)]
    pub environment: BTreeMap<String, String>,
    #[serde(default)]
    pub files: Vec<FileMount>,
    #[serde(default)]
    pub exclude_files: Vec<String>,
    #[serde(default)]
    pub variables: BTreeMap<String, String>,
    #[serde(default)]
    pub build: Option<BuildDecl>,
    #[serde(default)]
    pub tool: Option<toml::Table>,
    #[serde(default)]
    pub dependencies_inherit_configuration: bool,
    #[serde(default)]
    pub dependencies: Option<toml::Table>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum ComponentSource {
    Path(PathBuf),
    Remote {
        url: String,
        digest: String,
    },
    Registry {
        registry: Option<String>,
        package: String,
        version: String,
    },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum FileMount {
    Pattern(String),
    Mapping { source: PathBuf, destination: String },
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BuildDecl {
    pub command: BuildCommand,
    #[serde(default)]
    pub workdir: Option<PathBuf>,
    #[serde(default)]
    pub watch: Vec<String>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum BuildCommand {
    One(String),
    Many(Vec<String>),
}

impl BuildCommand {
    pub fn commands(&self) -> Vec<&str> {
        match self {
            BuildCommand::One(command) => vec![command.as_str()],
            BuildCommand::Many(commands) => commands.iter().map(String::as_str).collect(),
        }
    }
}

impl ComponentDecl {
    /// The hosts this component may call: both Spin spellings together.
    pub fn outbound_hosts(&self) -> Vec<String> {
        self.allowed_outbound_hosts
            .iter()
            .chain(&self.allowed_http_hosts)
            .cloned()
            .collect()
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    spin_manifest_version: toml::Value,
    application: Application,
    #[serde(default)]
    variables: BTreeMap<String, VariableDecl>,
    #[serde(default)]
    trigger: BTreeMap<String, Vec<toml::Table>>,
    #[serde(default)]
    component: BTreeMap<String, ComponentDecl>,
}

impl Manifest {
    pub fn load(path: &Path) -> Result<Self, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|err| ManifestError {
            path: path.to_owned(),
            message: format!(
                "cannot read the application manifest: {err}. Run from the directory of your \
                 spin.toml or name it with -f"
            ),
        })?;
        Self::parse(path, &text)
    }

    pub fn parse(path: &Path, text: &str) -> Result<Self, ManifestError> {
        let fail = |message: String| ManifestError {
            path: path.to_owned(),
            message,
        };
        let raw: RawManifest = toml::from_str(text).map_err(|err| fail(err.to_string()))?;
        match raw.spin_manifest_version {
            toml::Value::Integer(2) => {}
            toml::Value::Integer(1) | toml::Value::String(_) => {
                return Err(fail(
                    "`spin_manifest_version`: this is a version 1 manifest; Mosaic reads \
                     version 2 (`spin_manifest_version = 2`). `spin doctor` converts it"
                        .into(),
                ))
            }
            other => return Err(fail(format!("`spin_manifest_version` must be 2, found {other}"))),
        }
        if raw.application.name.trim().is_empty() {
            return Err(fail("`application.name` must not be empty".into()));
        }
        for (name, decl) in &raw.variables {
            check_variable_name(name).map_err(|why| fail(format!("`variables.{name}`: {why}")))?;
            if decl.required && decl.default.is_some() {
                return Err(fail(format!(
                    "`variables.{name}`: a variable is either `required` or has a `default`, not both"
                )));
            }
        }
        for (name, decl) in &raw.component {
            check_component_name(name).map_err(|why| fail(format!("`component.{name}`: {why}")))?;
            let key = format!("component.{name}");
            match &decl.source {
                ComponentSource::Path(_) => {}
                ComponentSource::Remote { url, .. } => {
                    return Err(fail(format!(
                        "`{key}.source`: remote sources ({url}) are not fetched by Mosaic; \
                         download the file and set `source` to its path"
                    )))
                }
                ComponentSource::Registry { package, .. } => {
                    return Err(fail(format!(
                        "`{key}.source`: registry sources ({package}) are not supported; \
                         set `source` to the path of a .wasm file"
                    )))
                }
            }
            if decl.dependencies.as_ref().is_some_and(|deps| !deps.is_empty()) {
                return Err(fail(format!(
                    "`{key}.dependencies`: component dependencies are not supported yet; \
                     compose the component with `wasm-tools compose` and point `source` at the result"
                )));
            }
            for variable in decl.variables.keys() {
                check_variable_name(variable).map_err(|why| fail(format!("`{key}.variables.{variable}`: {why}")))?;
            }
            for host in decl.outbound_hosts() {
                crate::capability::http_outbound::AllowedHosts::parse(std::slice::from_ref(&host))
                    .map_err(|why| fail(format!("`{key}.allowed_outbound_hosts`: {why}")))?;
            }
        }

        let mut http_triggers = Vec::new();
        let mut other_trigger_types = Vec::new();
        for (trigger_type, entries) in raw.trigger {
            if trigger_type != "http" {
                other_trigger_types.push(trigger_type);
                continue;
            }
            for (index, entry) in entries.into_iter().enumerate() {
                let key = format!("trigger.http[{index}]");
                let trigger: RawHttpTrigger = toml::Value::Table(entry)
                    .try_into()
                    .map_err(|err: toml::de::Error| fail(format!("`{key}`: {}", err.message())))?;
                let _ = (&trigger.id, &trigger.static_response);
                if let Some(executor) = &trigger.executor {
                    let kind = executor.get("type").and_then(|v| v.as_str()).unwrap_or("");
                    if kind != "spin" && kind != "wasi" {
                        return Err(fail(format!(
                            "`{key}.executor`: executor type `{kind}` is not supported; Mosaic \
                             runs `wasi:http` components (the default `spin` executor)"
                        )));
                    }
                }
                let component = match trigger.component {
                    RawComponentRef::Name(name) => name,
                    RawComponentRef::Inline(table) => {
                        let keys: Vec<&String> = table.keys().collect();
                        return Err(fail(format!(
                            "`{key}.component`: an inline component table ({keys:?}) is not supported; \
                             declare `[component.NAME]` and set `component = \"NAME\"`"
                        )));
                    }
                };
                let route = match trigger.route {
                    RawRoute::Path(route) => HttpRoute::Public(
                        RoutePattern::parse(&route).map_err(|why| fail(format!("`{key}.route`: {why}")))?,
                    ),
                    RawRoute::Private { private: true } => HttpRoute::Private,
                    RawRoute::Private { private: false } => {
                        return Err(fail(format!(
                            "`{key}.route`: `{{ private = false }}` is not a route; give a path such as \"/api/...\""
                        )))
                    }
                };
                http_triggers.push(HttpTrigger { component, route });
            }
        }
        for (index, trigger) in http_triggers.iter().enumerate() {
            if !raw.component.contains_key(&trigger.component) {
                return Err(fail(format!(
                    "`trigger.http[{index}].component`: no `[component.{}]` is declared",
                    trigger.component
                )));
            }
            if let HttpRoute::Public(route) = &trigger.route {
                if let Some(earlier) = http_triggers[..index].iter().find(|other| other.route == trigger.route) {
                    return Err(fail(format!(
                        "`trigger.http[{index}].route`: the route \"{route}\" is already taken by component `{}`",
                        earlier.component
                    )));
                }
            }
        }

        let dir = path
            .parent()
            .map(Path::to_owned)
            .filter(|dir| !dir.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."));
        Ok(Manifest {
            path: path.to_owned(),
            dir,
            application: raw.application,
            variables: raw.variables,
            http_triggers,
            other_trigger_types,
            components: raw.component,
        })
    }

    /// The source file of a component, resolved against the manifest's directory.
    pub fn source_path(&self, component: &str) -> Option<PathBuf> {
        match &self.components.get(component)?.source {
            ComponentSource::Path(path) => Some(self.dir.join(path)),
            _ => None,
        }
    }

    /// The directory a component's build runs in.
    pub fn build_dir(&self, component: &str) -> PathBuf {
        match self
            .components
            .get(component)
            .and_then(|c| c.build.as_ref())
            .and_then(|b| b.workdir.as_ref())
        {
            Some(workdir) => self.dir.join(workdir),
            None => self.dir.clone(),
        }
    }

    pub fn route_of(&self, component: &str) -> Option<&HttpRoute> {
        self.http_triggers
            .iter()
            .find(|t| t.component == component)
            .map(|t| &t.route)
    }
}

pub fn check_component_name(name: &str) -> Result<(), String> {
    let valid = !name.is_empty()
        && name
            .split('-')
            .all(|word| !word.is_empty() && word.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()))
        && name.starts_with(|c: char| c.is_ascii_lowercase());
    if valid {
        Ok(())
    } else {
        Err("a component name is lowercase words of letters and digits joined by `-`, starting with a letter (e.g. `order-service`)".into())
    }
}

fn check_variable_name(name: &str) -> Result<(), String> {
    let valid = name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
    if valid {
        Ok(())
    } else {
        Err("a variable name is lowercase letters, digits and `_`, starting with a letter".into())
    }
}
