//! The Spin application manifest (`spin.toml`, manifest version 2): parsing and validation.
//!
//! Only what a Spin application can say is accepted here; Mosaic's own settings live in
//! `mosaic.toml`. Every error names the file, the key and what to do.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::allowed_hosts::AllowedHosts;
use crate::dependencies::Dependency;
use crate::routes::RoutePattern;
use crate::topics::{check_pattern, SubscriptionSpec};

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
    /// `[[trigger.redis]]`: message subscriptions.
    pub redis_triggers: Vec<RedisTrigger>,
    /// `[[trigger.mqtt]]`: MQTT subscriptions (Spin's MQTT trigger plugin).
    pub mqtt_triggers: Vec<MqttTrigger>,
    /// `[application.trigger.mqtt]`: the broker of the MQTT triggers.
    pub mqtt_broker: Option<MqttBroker>,
    /// Trigger types Mosaic does not run that the manifest declares (e.g. `cron`).
    pub other_trigger_types: Vec<String>,
    /// Keys Mosaic does not use that ignoring changes nothing here (`component.x.tool`, a
    /// newer Spin's key): the host warns once, naming them all.
    pub ignored_keys: Vec<String>,
    pub components: BTreeMap<String, ComponentDecl>,
}

#[derive(Debug, Clone, Deserialize, Default)]
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
    /// Keys Mosaic does not know, reported as ignored (a warning, never a refusal).
    #[serde(flatten)]
    pub(crate) unknown: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Clone, Deserialize, Default)]
pub struct VariableDecl {
    #[serde(default)]
    pub default: Option<String>,
    #[serde(default)]
    pub required: bool,
    #[serde(default)]
    pub secret: bool,
    #[serde(default)]
    pub description: Option<String>,
    /// Keys Mosaic does not know, reported as ignored (a warning, never a refusal).
    #[serde(flatten)]
    pub(crate) unknown: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Clone)]
pub struct HttpTrigger {
    pub component: String,
    pub route: HttpRoute,
}

/// `[[trigger.redis]]`: the component receives every message published to a channel that
/// matches `channel` (`*` one word, `#` zero or more).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RedisTrigger {
    pub component: String,
    pub channel: String,
}

/// `[[trigger.mqtt]]` (Spin's MQTT trigger plugin): the component receives every message on a
/// topic that matches `topic` (MQTT wildcards: `+` one level, `#` the rest), subscribed at `qos`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MqttTrigger {
    pub component: String,
    pub topic: String,
    pub qos: u8,
}

/// `[application.trigger.mqtt]`: the broker the MQTT triggers subscribe at. `Debug` leaves the
/// password out.
#[derive(Clone, PartialEq, Eq)]
pub struct MqttBroker {
    /// `mqtt://HOST[:PORT]` (port 1883 by default).
    pub address: String,
    pub username: String,
    pub password: String,
    pub keep_alive_interval_secs: u64,
}

impl std::fmt::Debug for MqttBroker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttBroker")
            .field("address", &self.address)
            .field("username", &self.username)
            .field("keep_alive_interval_secs", &self.keep_alive_interval_secs)
            .finish_non_exhaustive()
    }
}

/// A number the plugin's manifest spells as a string (`qos = "1"`) or as an integer.
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
enum NumberOrString {
    Number(i64),
    Text(String),
}

impl NumberOrString {
    fn value(&self) -> Option<i64> {
        match self {
            NumberOrString::Number(n) => Some(*n),
            NumberOrString::Text(text) => text.trim().parse().ok(),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMqttTrigger {
    #[serde(default)]
    id: Option<String>,
    component: RawComponentRef,
    topic: String,
    qos: NumberOrString,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMqttBroker {
    address: String,
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    keep_alive_interval: NumberOrString,
}

/// Checks an MQTT topic filter: not empty, `+` alone in its level, `#` alone in the last one.
pub fn check_mqtt_filter(topic: &str) -> Result<(), String> {
    if topic.is_empty() {
        return Err("the topic is empty".into());
    }
    let levels: Vec<&str> = topic.split('/').collect();
    for (index, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || index + 1 != levels.len()) {
            return Err(format!(
                "`#` must be a level of its own and the last one, in \"{topic}\""
            ));
        }
        if level.contains('+') && *level != "+" {
            return Err(format!("`+` must be a level of its own, in \"{topic}\""));
        }
    }
    Ok(())
}

fn check_mqtt_address(address: &str) -> Result<(), String> {
    let rest = address
        .strip_prefix("mqtt://")
        .or_else(|| address.strip_prefix("tcp://"))
        .ok_or_else(|| {
            format!("\"{address}\" is not an MQTT address: give mqtt://HOST[:PORT] (mqtts is not supported)")
        })?;
    let authority = rest.trim_end_matches('/');
    let (host, port) = match authority.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (authority, None),
    };
    if host.is_empty() || authority.contains(['/', '?', '@']) {
        return Err(format!("\"{address}\" is not an MQTT address: give mqtt://HOST[:PORT]"));
    }
    if let Some(port) = port {
        port.parse::<u16>()
            .map_err(|_| format!("\"{address}\": the port `{port}` is not a number"))?;
    }
    Ok(())
}

#[derive(Debug, Clone, Deserialize)]
struct RawRedisTrigger {
    #[serde(default)]
    id: Option<String>,
    channel: String,
    component: RawComponentRef,
    /// Spin's Redis server for this trigger; Mosaic's broker is set in mosaic.toml instead.
    #[serde(default)]
    address: Option<String>,
    /// Keys Mosaic does not know, reported as ignored (a warning, never a refusal).
    #[serde(flatten)]
    unknown: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpRoute {
    Public(RoutePattern),
    /// `route = { private = true }`: reachable only through `NAME.spin.internal`.
    Private,
}

#[derive(Debug, Clone, Deserialize)]
struct RawHttpTrigger {
    #[serde(default)]
    id: Option<String>,
    route: RawRoute,
    component: RawComponentRef,
    #[serde(default)]
    executor: Option<toml::Table>,
    #[serde(default)]
    static_response: Option<toml::Table>,
    /// Spin 4.1's trigger dependencies (`dependencies.middleware = [...]`).
    #[serde(default)]
    dependencies: Option<toml::Table>,
    /// Keys Mosaic does not know, reported as ignored (a warning, never a refusal).
    #[serde(flatten)]
    unknown: BTreeMap<String, toml::Value>,
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
    dependencies: Option<toml::Table>,
    /// `dependencies`, parsed and checked (paths resolved against the manifest's directory).
    #[serde(skip)]
    pub resolved_dependencies: Vec<Dependency>,
    /// The `dependencies.middleware` of the HTTP trigger that reaches it, outermost first
    /// (moved here from the trigger, as Spin does: see [`Manifest::parse`]).
    #[serde(skip)]
    pub middleware: Vec<Dependency>,
    /// For the copy a trigger with middleware gets of a component other triggers reach too:
    /// the component it is a copy of.
    #[serde(skip)]
    pub copy_of: Option<String>,
    /// Keys Mosaic does not know, reported as ignored (a warning, never a refusal).
    #[serde(flatten)]
    pub(crate) unknown: BTreeMap<String, toml::Value>,
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
pub struct BuildDecl {
    pub command: BuildCommand,
    #[serde(default)]
    pub workdir: Option<PathBuf>,
    #[serde(default)]
    pub watch: Vec<String>,
    /// Keys Mosaic does not know, reported as ignored (a warning, never a refusal).
    #[serde(flatten)]
    pub(crate) unknown: BTreeMap<String, toml::Value>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum BuildCommand {
    One(String),
    Many(Vec<String>),
}

/// Moves each HTTP trigger's middleware onto its component, as Spin does, so that a
/// component's composition is its own: a component reached by other triggers as well is
/// copied for the trigger with middleware (`NAME-for-TRIGGER_ID`, the trigger then names the
/// copy), and the other triggers keep reaching it unwrapped.
fn assign_middleware(
    components: &mut BTreeMap<String, ComponentDecl>,
    http_triggers: &mut [HttpTrigger],
    redis_triggers: &[RedisTrigger],
    mqtt_triggers: &[MqttTrigger],
    pending: Vec<(usize, String, toml::Value)>,
    dir: &Path,
    sources: &BTreeMap<String, Option<PathBuf>>,
) -> Result<(), String> {
    // Counted before any trigger is moved to a copy: a component other triggers reach keeps
    // serving them unwrapped, and each of its triggers with middleware gets a copy.
    let references = |component: &str, http_triggers: &[HttpTrigger]| {
        http_triggers.iter().filter(|t| t.component == component).count()
            + redis_triggers.iter().filter(|t| t.component == component).count()
            + mqtt_triggers.iter().filter(|t| t.component == component).count()
    };
    let shared: Vec<bool> = http_triggers
        .iter()
        .map(|trigger| references(&trigger.component, http_triggers) > 1)
        .collect();
    for (index, id, value) in pending {
        let at = format!("trigger.http[{index}]");
        let primary = http_triggers[index].component.clone();
        let middleware = crate::dependencies::parse_middleware(&at, &value, &primary, dir, sources)?;
        if middleware.is_empty() {
            continue;
        }
        let target = if !shared[index] {
            primary.clone()
        } else {
            let base = format!("{primary}-for-{}", kebab_id(&id));
            let mut name = base.clone();
            let mut n = 1;
            while components.contains_key(&name) {
                n += 1;
                name = format!("{base}-{n}");
            }
            let mut copy = components[&primary].clone();
            copy.copy_of = Some(primary.clone());
            components.insert(name.clone(), copy);
            http_triggers[index].component = name.clone();
            name
        };
        components
            .get_mut(&target)
            .expect("the trigger's component is declared")
            .middleware = middleware;
    }
    Ok(())
}

/// A trigger id as part of a component name: lowercase words of letters and digits.
fn kebab_id(id: &str) -> String {
    let words: Vec<String> = id
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|word| !word.is_empty())
        .map(str::to_ascii_lowercase)
        .collect();
    match words.first() {
        Some(first) if first.starts_with(|c: char| c.is_ascii_alphabetic()) => words.join("-"),
        _ => format!("trigger-{}", words.join("-")),
    }
}

/// Refuses, as Spin does, a component that another names as a dependency or middleware
/// (`component = "..."`) while it has grants or dependencies of its own: composed, it runs
/// with what it inherits from the component it is composed into, so they would not apply.
fn check_composed_components(components: &BTreeMap<String, ComponentDecl>) -> Result<(), String> {
    for (depender, decl) in components {
        let roles = decl
            .resolved_dependencies
            .iter()
            .map(|dependency| ("a dependency", dependency))
            .chain(decl.middleware.iter().map(|dependency| ("middleware", dependency)));
        for (role, dependency) in roles {
            let crate::dependencies::DependencySource::Component { name, .. } = &dependency.source else {
                continue;
            };
            let Some(used) = components.get(name) else { continue };
            let mut own: Vec<&str> = Vec::new();
            for (grant, present) in [
                ("ai_models", !used.ai_models.is_empty()),
                ("allowed_outbound_hosts", !used.outbound_hosts().is_empty()),
                (
                    "dependencies",
                    used.dependencies.as_ref().is_some_and(|deps| !deps.is_empty()),
                ),
                ("environment", !used.environment.is_empty()),
                ("files", !used.files.is_empty()),
                ("key_value_stores", !used.key_value_stores.is_empty()),
                ("sqlite_databases", !used.sqlite_databases.is_empty()),
                ("variables", !used.variables.is_empty()),
            ] {
                if present {
                    own.push(grant);
                }
            }
            if !own.is_empty() {
                return Err(format!(
                    "`component.{name}` is {role} of `{depender}` but has {} of its own, which would not apply \
                     there: composed into `{depender}`, it runs with only what it inherits from it (grant them to \
                     `{depender}` and list them in the entry's `inherit_configuration`; the dependencies of a \
                     dependency are not composed: declare them on `{depender}`)",
                    own.join(", ")
                ));
            }
        }
    }
    Ok(())
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
struct RawManifest {
    spin_manifest_version: toml::Value,
    application: Application,
    #[serde(default)]
    variables: BTreeMap<String, VariableDecl>,
    #[serde(default)]
    trigger: BTreeMap<String, Vec<toml::Table>>,
    #[serde(default)]
    component: BTreeMap<String, ComponentDecl>,
    /// Keys Mosaic does not know, reported as ignored (a warning, never a refusal).
    #[serde(flatten)]
    unknown: BTreeMap<String, toml::Value>,
}

impl Manifest {
    /// Keeps only the components `ids` and their triggers (`mosaic up -c ID`, as `spin up
    /// --component-id`): the others are neither loaded nor reachable, in-process included.
    pub fn retain_components(&mut self, ids: &[String]) -> Result<(), String> {
        if let Some(unknown) = ids.iter().find(|id| !self.components.contains_key(id.as_str())) {
            let known: Vec<&str> = self.components.keys().map(String::as_str).collect();
            return Err(format!(
                "--component-id {unknown}: the application has no component `{unknown}` (it has {})",
                known.join(", ")
            ));
        }
        // A component's copies for its routes with middleware go with it.
        let kept: Vec<String> = self
            .components
            .iter()
            .filter(|(name, decl)| ids.contains(name) || decl.copy_of.as_ref().is_some_and(|of| ids.contains(of)))
            .map(|(name, _)| name.clone())
            .collect();
        let keep = |name: &String| kept.contains(name);
        self.components.retain(|name, _| keep(name));
        self.http_triggers.retain(|trigger| keep(&trigger.component));
        self.redis_triggers.retain(|trigger| keep(&trigger.component));
        self.mqtt_triggers.retain(|trigger| keep(&trigger.component));
        Ok(())
    }

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
        let mut raw: RawManifest = toml::from_str(text).map_err(|err| fail(err.to_string()))?;
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
        check_misspellings(&raw).map_err(fail)?;
        let mut ignored_keys: Vec<String> = raw.unknown.keys().cloned().collect();
        ignored_keys.extend(raw.application.unknown.keys().map(|key| format!("application.{key}")));
        for (name, decl) in &raw.variables {
            ignored_keys.extend(decl.unknown.keys().map(|key| format!("variables.{name}.{key}")));
        }
        for (name, decl) in &raw.component {
            let key = format!("component.{name}");
            ignored_keys.extend(decl.unknown.keys().map(|unknown| format!("{key}.{unknown}")));
            if decl.tool.is_some() {
                ignored_keys.push(format!("{key}.tool"));
            }
            if decl.dependencies_inherit_configuration && decl.dependencies.as_ref().is_none_or(|deps| deps.is_empty())
            {
                ignored_keys.push(format!("{key}.dependencies_inherit_configuration"));
            }
            if let Some(build) = &decl.build {
                ignored_keys.extend(build.unknown.keys().map(|unknown| format!("{key}.build.{unknown}")));
            }
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
            for variable in decl.variables.keys() {
                check_variable_name(variable).map_err(|why| fail(format!("`{key}.variables.{variable}`: {why}")))?;
            }
            for host in decl.outbound_hosts() {
                AllowedHosts::check_entry(&host, |name| raw.variables.contains_key(name))
                    .map_err(|why| fail(format!("`{key}.allowed_outbound_hosts`: {why}")))?;
            }
        }

        let mut http_triggers = Vec::new();
        let mut other_trigger_types = Vec::new();
        let mut redis_triggers = Vec::new();
        let mut mqtt_triggers = Vec::new();
        // (index in http_triggers, trigger id, its `dependencies.middleware`)
        let mut pending_middleware: Vec<(usize, String, toml::Value)> = Vec::new();
        for (trigger_type, entries) in raw.trigger {
            if trigger_type == "mqtt" {
                for (index, entry) in entries.into_iter().enumerate() {
                    let key = format!("trigger.mqtt[{index}]");
                    let trigger: RawMqttTrigger = toml::Value::Table(entry)
                        .try_into()
                        .map_err(|err: toml::de::Error| fail(format!("`{key}`: {}", err.message())))?;
                    let _ = &trigger.id;
                    check_mqtt_filter(&trigger.topic).map_err(|why| fail(format!("`{key}.topic`: {why}")))?;
                    let qos = match trigger.qos.value() {
                        Some(qos @ 0..=2) => qos as u8,
                        _ => return Err(fail(format!("`{key}.qos`: the QoS is 0, 1 or 2 (e.g. qos = \"1\")"))),
                    };
                    let component = component_name(trigger.component, &key).map_err(fail)?;
                    if !raw.component.contains_key(&component) {
                        return Err(fail(format!(
                            "`{key}.component`: no `[component.{component}]` is declared"
                        )));
                    }
                    mqtt_triggers.push(MqttTrigger {
                        component,
                        topic: trigger.topic,
                        qos,
                    });
                }
                continue;
            }
            if trigger_type == "redis" {
                for (index, entry) in entries.into_iter().enumerate() {
                    let key = format!("trigger.redis[{index}]");
                    let trigger: RawRedisTrigger = toml::Value::Table(entry)
                        .try_into()
                        .map_err(|err: toml::de::Error| fail(format!("`{key}`: {}", err.message())))?;
                    let _ = (&trigger.id, &trigger.address);
                    ignored_keys.extend(trigger.unknown.keys().map(|unknown| format!("{key}.{unknown}")));
                    check_pattern(&trigger.channel).map_err(|why| fail(format!("`{key}.channel`: {why}")))?;
                    let component = component_name(trigger.component, &key).map_err(fail)?;
                    if !raw.component.contains_key(&component) {
                        return Err(fail(format!(
                            "`{key}.component`: no `[component.{component}]` is declared"
                        )));
                    }
                    redis_triggers.push(RedisTrigger {
                        component,
                        channel: trigger.channel,
                    });
                }
                continue;
            }
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
                ignored_keys.extend(trigger.unknown.keys().map(|unknown| format!("{key}.{unknown}")));
                let middleware = match trigger.dependencies.as_ref().filter(|deps| !deps.is_empty()) {
                    None => None,
                    Some(dependencies) => {
                        if let Some(other) = dependencies.keys().find(|kind| *kind != "middleware") {
                            return Err(fail(format!(
                                "`{key}.dependencies.{other}`: an HTTP trigger's only dependencies are `middleware`"
                            )));
                        }
                        dependencies.get("middleware").cloned()
                    }
                };
                if let Some(executor) = &trigger.executor {
                    let kind = executor.get("type").and_then(|v| v.as_str()).unwrap_or("");
                    if kind != "spin" && kind != "wasi" {
                        return Err(fail(format!(
                            "`{key}.executor`: executor type `{kind}` is not supported; Mosaic \
                             runs `wasi:http` components (the default `spin` executor)"
                        )));
                    }
                }
                let component = component_name(trigger.component, &key).map_err(fail)?;
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
                if let Some(middleware) = middleware {
                    let id = trigger.id.clone().unwrap_or_else(|| format!("http-trigger{index}"));
                    pending_middleware.push((http_triggers.len(), id, middleware));
                }
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

        let mqtt_broker = match raw.application.trigger.as_ref().and_then(|t| t.get("mqtt")) {
            Some(value) => {
                let key = "application.trigger.mqtt";
                let broker: RawMqttBroker = value
                    .clone()
                    .try_into()
                    .map_err(|err: toml::de::Error| fail(format!("`{key}`: {}", err.message())))?;
                check_mqtt_address(&broker.address).map_err(|why| fail(format!("`{key}.address`: {why}")))?;
                let keep_alive = match broker.keep_alive_interval.value() {
                    Some(secs @ 0..=65535) => secs as u64,
                    _ => {
                        return Err(fail(format!(
                            "`{key}.keep_alive_interval`: seconds from 0 to 65535 (e.g. keep_alive_interval = \"30\")"
                        )))
                    }
                };
                Some(MqttBroker {
                    address: broker.address,
                    username: broker.username,
                    password: broker.password,
                    keep_alive_interval_secs: keep_alive,
                })
            }
            None => None,
        };
        if !mqtt_triggers.is_empty() && mqtt_broker.is_none() {
            return Err(fail(
                "`trigger.mqtt`: MQTT triggers need their broker in `[application.trigger.mqtt]` \
                 (address, username, password, keep_alive_interval)"
                    .into(),
            ));
        }

        let dir = path
            .parent()
            .map(Path::to_owned)
            .filter(|dir| !dir.as_os_str().is_empty())
            .unwrap_or_else(|| PathBuf::from("."));
        let sources: BTreeMap<String, Option<PathBuf>> = raw
            .component
            .iter()
            .map(|(name, decl)| {
                let path = match &decl.source {
                    ComponentSource::Path(path) => Some(dir.join(path)),
                    _ => None,
                };
                (name.clone(), path)
            })
            .collect();
        for (name, decl) in raw.component.iter_mut() {
            if let Some(table) = decl.dependencies.as_ref().filter(|deps| !deps.is_empty()) {
                let key = format!("component.{name}");
                decl.resolved_dependencies =
                    crate::dependencies::parse(&key, table, decl.dependencies_inherit_configuration, &dir, &sources)
                        .map_err(fail)?;
            }
        }
        assign_middleware(
            &mut raw.component,
            &mut http_triggers,
            &redis_triggers,
            &mqtt_triggers,
            pending_middleware,
            &dir,
            &sources,
        )
        .map_err(fail)?;
        crate::dependencies::check_cycles(&raw.component).map_err(fail)?;
        check_composed_components(&raw.component).map_err(fail)?;
        Ok(Manifest {
            path: path.to_owned(),
            dir,
            application: raw.application,
            variables: raw.variables,
            http_triggers,
            redis_triggers,
            mqtt_triggers,
            mqtt_broker,
            other_trigger_types,
            ignored_keys,
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

    /// The components that name `component` as a dependency or a middleware (`component = "..."`).
    pub fn dependents_of(&self, component: &str) -> Vec<String> {
        self.components
            .iter()
            .filter(|(_, decl)| {
                decl.resolved_dependencies.iter().chain(&decl.middleware).any(|dependency| {
                    matches!(&dependency.source, crate::dependencies::DependencySource::Component { name, .. } if name == component)
                })
            })
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// The name `component`'s settings in mosaic.toml (`[probe.NAME]`, `[instance_reuse.NAME]`)
    /// and its build are under: a copy's are its original's.
    pub fn settings_name<'a>(&'a self, component: &'a str) -> &'a str {
        self.components
            .get(component)
            .and_then(|decl| decl.copy_of.as_deref())
            .unwrap_or(component)
    }

    /// The copies of `component` made for its triggers with middleware (see `assign_middleware`).
    pub fn copies_of(&self, component: &str) -> Vec<String> {
        self.components
            .iter()
            .filter(|(_, decl)| decl.copy_of.as_deref() == Some(component))
            .map(|(name, _)| name.clone())
            .collect()
    }

    /// Whether `component` is only a dependency of others: no trigger reaches it, so it runs
    /// only composed into its dependents, as in Spin.
    pub fn is_dependency_only(&self, component: &str) -> bool {
        let triggered = self.http_triggers.iter().any(|t| t.component == component)
            || self.redis_triggers.iter().any(|t| t.component == component)
            || self.mqtt_triggers.iter().any(|t| t.component == component);
        !triggered && !self.dependents_of(component).is_empty()
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

    /// The message subscription of a component (its `[[trigger.redis]]` channels), if any.
    pub fn subscription_of(&self, component: &str) -> Option<SubscriptionSpec> {
        let patterns: Vec<String> = self
            .redis_triggers
            .iter()
            .filter(|t| t.component == component)
            .map(|t| t.channel.clone())
            .collect();
        (!patterns.is_empty()).then(|| SubscriptionSpec {
            subscriber: component.to_string(),
            patterns,
        })
    }

    /// Every component's subscription.
    pub fn subscriptions(&self) -> Vec<SubscriptionSpec> {
        let mut components: Vec<&str> = self.redis_triggers.iter().map(|t| t.component.as_str()).collect();
        components.sort();
        components.dedup();
        components.into_iter().filter_map(|c| self.subscription_of(c)).collect()
    }

    /// The `[[trigger.mqtt]]` entries of a component.
    pub fn mqtt_triggers_of(&self, component: &str) -> Vec<MqttTrigger> {
        self.mqtt_triggers
            .iter()
            .filter(|t| t.component == component)
            .cloned()
            .collect()
    }

    pub fn route_of(&self, component: &str) -> Option<&HttpRoute> {
        self.http_triggers
            .iter()
            .find(|t| t.component == component)
            .map(|t| &t.route)
    }
}

fn component_name(reference: RawComponentRef, key: &str) -> Result<String, String> {
    match reference {
        RawComponentRef::Name(name) => Ok(name),
        RawComponentRef::Inline(table) => {
            let keys: Vec<&String> = table.keys().collect();
            Err(format!(
                "`{key}.component`: an inline component table ({keys:?}) is not supported; \
                 declare `[component.NAME]` and set `component = \"NAME\"`"
            ))
        }
    }
}

/// The keys each table of a manifest may hold, as Spin 3 and 4 define them.
const COMPONENT_KEYS: &[&str] = &[
    "source",
    "description",
    "allowed_outbound_hosts",
    "allowed_http_hosts",
    "key_value_stores",
    "sqlite_databases",
    "ai_models",
    "environment",
    "files",
    "exclude_files",
    "variables",
    "build",
    "tool",
    "dependencies_inherit_configuration",
    "dependencies",
];
const TOP_KEYS: &[&str] = &[
    "spin_manifest_version",
    "application",
    "variables",
    "trigger",
    "component",
];
const APPLICATION_KEYS: &[&str] = &["name", "version", "description", "authors", "trigger"];
const VARIABLE_KEYS: &[&str] = &["default", "required", "secret", "description"];
const BUILD_KEYS: &[&str] = &["command", "workdir", "watch"];

/// An unknown key one or two letters away from a known one (`allowed_outbound_host`) is a
/// typo, and ignoring it would change what the application does (a grant gone): refused,
/// naming the key meant. Other unknown keys are ignored with a warning.
fn check_misspellings(raw: &RawManifest) -> Result<(), String> {
    let check = |table: &str, unknown: &BTreeMap<String, toml::Value>, known: &[&str]| {
        for key in unknown.keys() {
            if let Some(meant) = known
                .iter()
                .find(|known| key.len() > 3 && edit_distance(key, known) <= 2)
            {
                let at = if table.is_empty() {
                    key.clone()
                } else {
                    format!("{table}.{key}")
                };
                return Err(format!("`{at}` is not a manifest key; did you mean `{meant}`?"));
            }
        }
        Ok(())
    };
    check("", &raw.unknown, TOP_KEYS)?;
    check("application", &raw.application.unknown, APPLICATION_KEYS)?;
    for (name, decl) in &raw.variables {
        check(&format!("variables.{name}"), &decl.unknown, VARIABLE_KEYS)?;
    }
    for (name, decl) in &raw.component {
        check(&format!("component.{name}"), &decl.unknown, COMPONENT_KEYS)?;
        if let Some(build) = &decl.build {
            check(&format!("component.{name}.build"), &build.unknown, BUILD_KEYS)?;
        }
    }
    Ok(())
}

/// Levenshtein distance of two short ASCII keys.
fn edit_distance(a: &str, b: &str) -> usize {
    let b = b.as_bytes();
    let mut row: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.bytes().enumerate() {
        let mut diagonal = row[0];
        row[0] = i + 1;
        for (j, cb) in b.iter().enumerate() {
            let above = row[j + 1];
            row[j + 1] = (above + 1).min(row[j] + 1).min(diagonal + usize::from(ca != *cb));
            diagonal = above;
        }
    }
    row[b.len()]
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dependencies::{DependencySource, Inherit};

    fn parse(text: &str) -> Result<Manifest, String> {
        Manifest::parse(Path::new("app/spin.toml"), text).map_err(|err| err.to_string())
    }

    const HEAD: &str = "spin_manifest_version = 2\n[application]\nname = \"shop\"\n";

    #[test]
    fn a_full_manifest_parses() {
        let manifest = parse(&format!(
            r#"{HEAD}
[variables]
token = {{ required = true, secret = true }}
greeting = {{ default = "hi" }}
[[trigger.http]]
route = "/api/..."
component = "api"
[[trigger.http]]
route = {{ private = true }}
component = "users"
[[trigger.redis]]
channel = "order.*"
component = "users"
[[trigger.redis]]
channel = "payment.#"
component = "users"
address = "redis://127.0.0.1:6379"
[[trigger.cron]]
cron_expression = "* * * * *"
component = "api"
[component.api]
source = "target/api.wasm"
allowed_outbound_hosts = ["http://*.spin.internal"]
key_value_stores = ["default"]
environment = {{ MODE = "test" }}
files = ["static/*", {{ source = "assets", destination = "/assets" }}]
variables = {{ greeting = "{{{{ greeting }}}}" }}
[component.api.build]
command = "cargo build --target wasm32-wasip2 --release"
workdir = "api"
watch = ["src/**/*.rs"]
[component.users]
source = "users.wasm"
"#
        ))
        .unwrap();
        assert_eq!(manifest.http_triggers.len(), 2);
        assert_eq!(manifest.route_of("users"), Some(&HttpRoute::Private));
        assert_eq!(manifest.other_trigger_types, vec!["cron".to_string()]);
        assert!(manifest.ignored_keys.is_empty(), "{:?}", manifest.ignored_keys);
        let subscription = manifest.subscription_of("users").unwrap();
        assert_eq!(subscription.patterns, ["order.*", "payment.#"]);
        assert_eq!(manifest.subscriptions(), vec![subscription]);
        assert!(manifest.subscription_of("api").is_none());
        assert_eq!(manifest.source_path("api").unwrap(), Path::new("app/target/api.wasm"));
        assert_eq!(manifest.build_dir("api"), Path::new("app/api"));
        assert!(manifest.variables["token"].secret);
    }

    #[test]
    fn wrong_type_names_the_key_and_line() {
        let err = parse(&format!("{HEAD}[component.api]\nsource = 42\n")).unwrap_err();
        assert!(err.starts_with("app/spin.toml"), "{err}");
        assert!(err.contains("line 5") && err.contains("source"), "{err}");
    }

    #[test]
    fn a_misspelled_key_is_refused_naming_the_key_meant() {
        let err = parse(&format!(
            "{HEAD}[component.api]\nsource = \"a.wasm\"\nallowed_outbound_host = []\n"
        ))
        .unwrap_err();
        assert!(
            err.contains(
                "`component.api.allowed_outbound_host` is not a manifest key; did you mean `allowed_outbound_hosts`?"
            ),
            "{err}"
        );
    }

    #[test]
    fn bad_redis_triggers_are_named() {
        let component = "[component.sub]\nsource = \"s.wasm\"\n";
        let err = parse(&format!(
            "{HEAD}[[trigger.redis]]\nchannel = \"a..b\"\ncomponent = \"sub\"\n{component}"
        ))
        .unwrap_err();
        assert!(
            err.contains("trigger.redis[0].channel") && err.contains("empty word"),
            "{err}"
        );
        let err = parse(&format!(
            "{HEAD}[[trigger.redis]]\nchannel = \"a\"\ncomponent = \"ghost\"\n{component}"
        ))
        .unwrap_err();
        assert!(
            err.contains("trigger.redis[0].component") && err.contains("[component.ghost]"),
            "{err}"
        );
        let err = parse(&format!("{HEAD}[[trigger.redis]]\ncomponent = \"sub\"\n{component}")).unwrap_err();
        assert!(err.contains("trigger.redis[0]") && err.contains("channel"), "{err}");
    }

    #[test]
    fn mqtt_triggers_parse_in_the_plugins_format() {
        let component = "[component.sub]\nsource = \"s.wasm\"\n";
        let broker = "[application.trigger.mqtt]\naddress = \"mqtt://localhost:1883\"\nusername = \"admin\"\npassword = \"pw\"\nkeep_alive_interval = \"30\"\n";
        let manifest = parse(&format!(
            "{HEAD}{broker}[[trigger.mqtt]]\nid = \"t1\"\ncomponent = \"sub\"\ntopic = \"a/+/c\"\nqos = \"1\"\n\
             [[trigger.mqtt]]\ncomponent = \"sub\"\ntopic = \"b/#\"\nqos = 2\n{component}"
        ))
        .unwrap();
        assert!(manifest.other_trigger_types.is_empty());
        let parsed = manifest.mqtt_broker.clone().unwrap();
        assert_eq!(parsed.keep_alive_interval_secs, 30);
        assert!(!format!("{parsed:?}").contains("pw"));
        let triggers = manifest.mqtt_triggers_of("sub");
        assert_eq!((triggers[0].topic.as_str(), triggers[0].qos), ("a/+/c", 1));
        assert_eq!((triggers[1].topic.as_str(), triggers[1].qos), ("b/#", 2));

        let err = parse(&format!(
            "{HEAD}{broker}[[trigger.mqtt]]\ncomponent = \"sub\"\ntopic = \"a/#/c\"\nqos = \"1\"\n{component}"
        ))
        .unwrap_err();
        assert!(err.contains("trigger.mqtt[0].topic"), "{err}");
        let err = parse(&format!(
            "{HEAD}{broker}[[trigger.mqtt]]\ncomponent = \"sub\"\ntopic = \"a\"\nqos = \"3\"\n{component}"
        ))
        .unwrap_err();
        assert!(err.contains("trigger.mqtt[0].qos"), "{err}");
        let err = parse(&format!(
            "{HEAD}[[trigger.mqtt]]\ncomponent = \"sub\"\ntopic = \"a\"\nqos = \"0\"\n{component}"
        ))
        .unwrap_err();
        assert!(err.contains("[application.trigger.mqtt]"), "{err}");
        let bad_address = broker.replace("mqtt://localhost:1883", "http://x");
        let err = parse(&format!(
            "{HEAD}{bad_address}[[trigger.mqtt]]\ncomponent = \"sub\"\ntopic = \"a\"\nqos = \"0\"\n{component}"
        ))
        .unwrap_err();
        assert!(err.contains("application.trigger.mqtt.address"), "{err}");
    }

    #[test]
    fn trigger_to_missing_component() {
        let err = parse(&format!(
            "{HEAD}[[trigger.http]]\nroute = \"/...\"\ncomponent = \"ghost\"\n"
        ))
        .unwrap_err();
        assert!(
            err.contains("trigger.http[0].component") && err.contains("[component.ghost]"),
            "{err}"
        );
    }

    #[test]
    fn duplicate_route() {
        let err = parse(&format!(
            "{HEAD}[[trigger.http]]\nroute = \"/a/...\"\ncomponent = \"x\"\n[[trigger.http]]\nroute = \"/a/...\"\ncomponent = \"y\"\n\
             [component.x]\nsource = \"x.wasm\"\n[component.y]\nsource = \"y.wasm\"\n"
        ))
        .unwrap_err();
        assert!(
            err.contains("trigger.http[1].route") && err.contains("already taken by component `x`"),
            "{err}"
        );
    }

    #[test]
    fn version_one_and_bad_names() {
        let err = parse("spin_manifest_version = \"1\"\n[application]\nname = \"a\"\n").unwrap_err();
        assert!(err.contains("version 1"), "{err}");
        let err = parse(&format!("{HEAD}[component.Bad_Name]\nsource = \"a.wasm\"\n")).unwrap_err();
        assert!(err.contains("component.Bad_Name"), "{err}");
        let err = parse(&format!(
            "{HEAD}[component.a]\nsource = \"a.wasm\"\nallowed_outbound_hosts = [\"example.com\"]\n"
        ))
        .unwrap_err();
        assert!(
            err.contains("component.a.allowed_outbound_hosts") && err.contains("needs a scheme"),
            "{err}"
        );
        let err = parse(&format!(
            "{HEAD}[component.a]\nsource = {{ url = \"https://x/a.wasm\", digest = \"sha256:0\" }}\n"
        ))
        .unwrap_err();
        assert!(err.contains("remote sources"), "{err}");
    }

    #[test]
    fn the_fuzz_seeds_parse() {
        // The seeds of fuzz/ start libFuzzer from valid manifests: keep them valid.
        let seeds = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/seeds/manifest");
        for seed in ["every-key.toml", "reference-app.toml"] {
            let manifest = Manifest::load(&seeds.join(seed)).unwrap_or_else(|err| panic!("{err}"));
            assert!(!manifest.http_triggers.is_empty(), "{seed}");
        }
    }

    #[test]
    fn missing_file_is_explained() {
        let err = Manifest::load(Path::new("/nonexistent/spin.toml"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/spin.toml") && err.contains("-f"), "{err}");
    }

    #[test]
    fn keys_mosaic_does_not_use_are_accepted_and_named() {
        let text = r#"
spin_manifest_version = 2
future_top_level = 1
[application]
name = "x"
targets = ["spin-up:3.3"]
[variables]
v = { default = "1", kind = "new" }
[[trigger.http]]
route = "/..."
component = "a"
middleware = []
[[trigger.cron]]
component = "a"
cron_expression = "* * * * *"
[component.a]
source = "a.wasm"
dependencies_inherit_configuration = true
profile = "release"
[component.a.tool.spin-test]
source = "test.wasm"
[component.a.build]
command = "true"
environment = { X = "1" }
"#;
        let manifest = Manifest::parse(Path::new("spin.toml"), text).unwrap();
        assert_eq!(
            manifest.ignored_keys,
            [
                "future_top_level",
                "application.targets",
                "variables.v.kind",
                "component.a.profile",
                "component.a.tool",
                "component.a.dependencies_inherit_configuration",
                "component.a.build.environment",
                "trigger.http[0].middleware",
            ]
        );
        assert_eq!(manifest.other_trigger_types, ["cron"]);
    }

    #[test]
    fn middleware_moves_onto_its_component_and_a_shared_component_is_copied_per_trigger() {
        let text = r#"
spin_manifest_version = 2
[application]
name = "mw"
[[trigger.http]]
route = "/guarded/..."
component = "api"
dependencies.middleware = [{ component = "auth" }, { path = "tag.wasm", inherit_configuration = ["key_value_stores"] }]
[[trigger.http]]
route = "/open/..."
component = "api"
[[trigger.http]]
route = "/alone/..."
component = "solo"
dependencies.middleware = [{ component = "auth" }]
[component.api]
source = "api.wasm"
key_value_stores = ["default"]
[component.solo]
source = "solo.wasm"
[component.auth]
source = "auth.wasm"
"#;
        let manifest = Manifest::parse(Path::new("/app/spin.toml"), text).unwrap();
        let routed: Vec<(&str, String)> = manifest
            .http_triggers
            .iter()
            .map(|t| (t.component.as_str(), format!("{:?}", t.route)))
            .collect();
        assert_eq!(routed[0].0, "api-for-http-trigger0", "{routed:?}");
        assert_eq!(routed[1].0, "api", "the unwrapped route keeps the component");
        assert_eq!(routed[2].0, "solo", "a component of one trigger is wrapped in place");
        let copy = &manifest.components["api-for-http-trigger0"];
        assert_eq!(copy.key_value_stores, ["default"], "the copy keeps the grants");
        assert_eq!(copy.middleware.len(), 2);
        assert!(matches!(&copy.middleware[0].source, DependencySource::Component { name, .. } if name == "auth"));
        assert_eq!(
            copy.middleware[0].inherit,
            Inherit::Only(vec![]),
            "nothing inherited by default"
        );
        assert_eq!(
            copy.middleware[1].source,
            DependencySource::Path(PathBuf::from("/app/tag.wasm"))
        );
        assert_eq!(
            copy.middleware[1].inherit,
            Inherit::Only(vec!["key_value_stores".into()])
        );
        assert!(manifest.components["api"].middleware.is_empty());
        assert_eq!(manifest.copies_of("api"), ["api-for-http-trigger0"]);
        assert_eq!(manifest.components["solo"].middleware.len(), 1);
        assert!(
            manifest.is_dependency_only("auth"),
            "a middleware has no service of its own"
        );
        assert_eq!(manifest.dependents_of("auth"), ["api-for-http-trigger0", "solo"]);
        // `mosaic up -c api` keeps its copy, and the route to it.
        let mut only_api = manifest.clone();
        only_api.retain_components(&["api".to_string()]).unwrap();
        let kept: Vec<&String> = only_api.components.keys().collect();
        assert_eq!(kept, ["api", "api-for-http-trigger0"]);
        assert_eq!(only_api.http_triggers.len(), 2);
    }

    #[test]
    fn bad_middleware_is_refused_with_what_to_write() {
        let with = |middleware: &str, extra: &str| {
            let text = format!(
                "spin_manifest_version = 2\n[application]\nname = \"mw\"\n[[trigger.http]]\nroute = \"/...\"\ncomponent = \"api\"\n{middleware}\n[component.api]\nsource = \"api.wasm\"\n[component.auth]\nsource = \"auth.wasm\"\n{extra}"
            );
            Manifest::parse(Path::new("spin.toml"), &text).unwrap_err().to_string()
        };
        let cases = [
            ("dependencies.middleware = { component = \"auth\" }", "", "is a list"),
            (
                "dependencies.middleware = [{ component = \"nope\" }]",
                "",
                "no `[component.nope]`",
            ),
            (
                "dependencies.middleware = [{ component = \"api\" }]",
                "",
                "its own middleware",
            ),
            (
                "dependencies.middleware = [{ version = \"1.0.0\", package = \"acme:auth\" }]",
                "",
                "registry",
            ),
            (
                "dependencies.middleware = [{ component = \"auth\", export = \"x\" }]",
                "",
                "unknown key `export`",
            ),
            (
                "dependencies.cache = [{ component = \"auth\" }]",
                "",
                "only dependencies are `middleware`",
            ),
            (
                "dependencies.middleware = [{ component = \"auth\" }]",
                "key_value_stores = [\"default\"]\n",
                "key_value_stores of its own",
            ),
        ];
        for (middleware, extra, expected) in cases {
            let err = with(middleware, extra);
            assert!(err.contains(expected), "{middleware}: {err}");
        }
    }
}
