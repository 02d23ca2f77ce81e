//! Variables: application variables (`[variables]` with `default`, `required`, `secret`),
//! resolved from the environment (`SPIN_VARIABLE_NAME`) or the manifest, and component
//! variables (`[component.NAME.variables]`, `{{ name }}` templates over them). Guests read
//! their component's variables through `fermyon:spin/variables@2.0.0`, Spin 4's
//! `spin:variables/variables@3.0.0` and `wasi:config/store`.
//!
//! A secret's value never appears in a log line or an error message.

use std::collections::BTreeMap;
use std::fmt;

use crate::capability::bindings::{config_store, spin_variables3 as variables3, variables};
use mosaic_manifest::allowed_hosts::{AllowedHosts, TemplateValue};
use mosaic_manifest::manifest::Manifest;
use mosaic_manifest::template::render;

/// The rendered variables one component may read. `Debug` shows names only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ComponentVariables(BTreeMap<String, String>);

impl fmt::Debug for ComponentVariables {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

impl ComponentVariables {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
    pub fn get(&self, name: &str) -> Option<&str> {
        self.0.get(name).map(String::as_str)
    }
}

/// The environment variable that provides application variable `name`.
pub fn env_name(name: &str) -> String {
    format!("SPIN_VARIABLE_{}", name.to_ascii_uppercase())
}

/// Resolves every application variable: environment first, then the manifest's default.
/// A required variable with no value is an error naming the variable and what to set.
pub fn resolve_application(
    manifest: &Manifest,
    env: impl Fn(&str) -> Option<String>,
) -> Result<BTreeMap<String, String>, String> {
    let mut values = BTreeMap::new();
    for (name, decl) in &manifest.variables {
        let value = env(&env_name(name)).or_else(|| decl.default.clone());
        match value {
            Some(value) => {
                values.insert(name.clone(), value);
            }
            None if decl.required => {
                return Err(format!(
                    "the application variable `{name}` is required and has no value: set the environment variable {}",
                    env_name(name)
                ))
            }
            None => {}
        }
    }
    Ok(values)
}

/// Renders one component's variables against the application's values.
pub fn render_component(
    manifest: &Manifest,
    component: &str,
    application: &BTreeMap<String, String>,
) -> Result<ComponentVariables, String> {
    let Some(decl) = manifest.components.get(component) else {
        return Ok(ComponentVariables::default());
    };
    let mut rendered = BTreeMap::new();
    for (key, template) in &decl.variables {
        let value = render(template, |name| {
            if !manifest.variables.contains_key(name) {
                return Err(format!(
                    "`component.{component}.variables.{key}` refers to `{{{{ {name} }}}}`, which `[variables]` does not declare"
                ));
            }
            application.get(name).cloned().ok_or_else(|| {
                format!(
                    "`component.{component}.variables.{key}` needs the application variable `{name}`, which has no value: set {} or give it a default",
                    env_name(name)
                )
            })
        })?;
        rendered.insert(key.clone(), value);
    }
    Ok(ComponentVariables(rendered))
}

fn valid_name(name: &str) -> bool {
    name.starts_with(|c: char| c.is_ascii_lowercase())
        && name
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

impl ComponentVariables {
    /// A guest's read of variable `name` (Spin 2.0 and 3.0 alike): its value, or the error
    /// `invalid` (not a variable name) or `undefined` (not one of this component's) makes of
    /// the reason.
    fn lookup<E>(&self, name: &str, invalid: fn(String) -> E, undefined: fn(String) -> E) -> Result<String, E> {
        if !valid_name(name) {
            return Err(invalid(format!(
                "`{name}` is not a variable name (lowercase letters, digits and `_`)"
            )));
        }
        match self.get(name) {
            Some(value) => Ok(value.to_string()),
            None => Err(undefined(format!(
                "no variable `{name}` in this component's [component.NAME.variables]"
            ))),
        }
    }
}

impl variables::Host for ComponentVariables {
    async fn get(&mut self, name: String) -> Result<String, variables::Error> {
        self.lookup(&name, variables::Error::InvalidName, variables::Error::Undefined)
    }
}

/// The `HasData` marker of `spin:variables/variables@3.0.0`, whose `get` is a concurrent
/// (component-model async) call: the view is the component's variables.
pub struct VariablesImports;

impl wasmtime::component::HasData for VariablesImports {
    type Data<'a> = &'a mut ComponentVariables;
}

impl variables3::Host for ComponentVariables {}

impl<T> variables3::HostWithStore<T> for VariablesImports {
    async fn get(accessor: &wasmtime::component::Accessor<T, Self>, name: String) -> Result<String, variables3::Error> {
        super::with_view(accessor, |variables| {
            variables.lookup(&name, variables3::Error::InvalidName, variables3::Error::Undefined)
        })
    }
}

impl config_store::Host for ComponentVariables {
    async fn get(&mut self, key: String) -> Result<Option<String>, config_store::Error> {
        Ok(ComponentVariables::get(self, &key).map(str::to_string))
    }

    async fn get_all(&mut self) -> Result<Vec<(String, String)>, config_store::Error> {
        Ok(self.0.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
    }
}

/// The variables capability, app-wide: the application's variables, resolved once at start-up
/// (values may be secrets: never log them). Each component reads its own rendered
/// [`ComponentVariables`], which its grants carry.
pub struct ApplicationVariables(BTreeMap<String, String>);

impl ApplicationVariables {
    /// Resolves `[variables]` from `SPIN_VARIABLE_*` (through `env`) and the defaults.
    pub fn resolve(manifest: &Manifest, env: impl Fn(&str) -> Option<String>) -> Result<Self, String> {
        resolve_application(manifest, env).map(ApplicationVariables)
    }

    /// The rendered `[component.NAME.variables]` of `component`.
    pub fn for_component(&self, manifest: &Manifest, component: &str) -> Result<ComponentVariables, String> {
        render_component(manifest, component, &self.0)
    }

    /// `component`'s `allowed_outbound_hosts`, their `{{ name }}` templates expanded with the
    /// application's variables (as Spin does); a secret's value stays out of every error.
    pub fn allowed_hosts(&self, manifest: &Manifest, component: &str) -> Result<AllowedHosts, String> {
        let Some(decl) = manifest.components.get(component) else {
            return Ok(AllowedHosts::default());
        };
        AllowedHosts::parse_with(&decl.outbound_hosts(), |name| {
            let Some(declared) = manifest.variables.get(name) else {
                return Err(format!("`{{{{ {name} }}}}` is not declared in `[variables]`"));
            };
            match self.0.get(name) {
                Some(value) => Ok(TemplateValue {
                    value: value.clone(),
                    secret: declared.secret,
                }),
                None => Err(format!(
                    "the application variable `{name}` has no value: set {} or give it a default",
                    env_name(name)
                )),
            }
        })
        .map_err(|why| format!("component `{component}`: `allowed_outbound_hosts`: {why}"))
    }
}

/// Resolved at start-up: nothing to check for readiness.
impl super::Capability for ApplicationVariables {}

fn variables_view<T: super::HasInstance<ComponentVariables>>(data: &mut T) -> &mut ComponentVariables {
    data.instance_parts().state
}

impl super::GuestCapability for ApplicationVariables {
    type Instance = ComponentVariables;

    fn instance(self: &std::sync::Arc<Self>, component: &super::grants::ComponentSpec) -> ComponentVariables {
        component.variables.clone()
    }

    fn add_to_linker<T: super::HasInstance<ComponentVariables> + Send + 'static>(
        linker: &mut wasmtime::component::Linker<T>,
    ) -> anyhow::Result<()> {
        use wasmtime::component::HasSelf;
        // fermyon:spin/variables@2.0.0, spin:variables/variables@3.0.0 and wasi:config/store
        variables::add_to_linker::<T, HasSelf<ComponentVariables>>(linker, variables_view::<T>)?;
        variables3::add_to_linker::<T, VariablesImports>(linker, variables_view::<T>)?;
        config_store::add_to_linker::<T, HasSelf<ComponentVariables>>(linker, variables_view::<T>)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::Path;

    fn manifest(text: &str) -> Manifest {
        Manifest::parse(Path::new("spin.toml"), text).unwrap()
    }

    const APP: &str = r#"
spin_manifest_version = 2
[application]
name = "vars"
[variables]
api_key = { required = true, secret = true }
region = { default = "eu" }
[component.api]
source = "api.wasm"
variables = { key = "{{ api_key }}", url = "https://{{region}}.example.com/{{ region }}" }
"#;

    #[test]
    fn environment_overrides_default_and_templates_render() {
        let m = manifest(APP);
        let env = |name: &str| match name {
            "SPIN_VARIABLE_API_KEY" => Some("s3cret".to_string()),
            "SPIN_VARIABLE_REGION" => Some("us".to_string()),
            _ => None,
        };
        let app = resolve_application(&m, env).unwrap();
        let vars = render_component(&m, "api", &app).unwrap();
        assert_eq!(vars.get("key"), Some("s3cret"));
        assert_eq!(vars.get("url"), Some("https://us.example.com/us"));
        assert!(!format!("{vars:?}").contains("s3cret"), "Debug never shows values");
    }

    #[test]
    fn required_without_value_names_the_env_var() {
        let err = resolve_application(&manifest(APP), |_| None).unwrap_err();
        assert!(
            err.contains("api_key") && err.contains("SPIN_VARIABLE_API_KEY"),
            "{err}"
        );
    }

    #[test]
    fn undeclared_reference_is_an_error() {
        let m = manifest(&APP.replace("{{ api_key }}", "{{ nope }}"));
        let app = resolve_application(&m, |_| Some("x".into())).unwrap();
        let err = render_component(&m, "api", &app).unwrap_err();
        assert!(
            err.contains("component.api.variables.key") && err.contains("nope"),
            "{err}"
        );
        assert!(!err.contains("x\""), "{err}");
    }

    #[test]
    fn allowed_hosts_expand_with_application_variables_and_keep_secrets() {
        let m = manifest(&APP.replace(
            "[component.api]\n",
            "[component.api]\nallowed_outbound_hosts = [\"https://{{ region }}.example.com\", \"https://{{ api_key }}\"]\n",
        ));
        let env = |value: &'static str| move |name: &str| (name == "SPIN_VARIABLE_API_KEY").then(|| value.to_string());
        let app = ApplicationVariables::resolve(&m, env("keys.example.com")).unwrap();
        let allowed = app.allowed_hosts(&m, "api").unwrap();
        assert!(allowed.allows("https", "eu.example.com", None) && allowed.allows("https", "keys.example.com", None));
        let app = ApplicationVariables::resolve(&m, env("s3cret/path")).unwrap();
        let err = app.allowed_hosts(&m, "api").unwrap_err();
        assert!(
            err.contains("component `api`") && err.contains("secret") && !err.contains("s3cret"),
            "{err}"
        );
    }
}
