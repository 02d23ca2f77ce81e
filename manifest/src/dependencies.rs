//! `[component.NAME.dependencies]`: other components that satisfy some of a component's imports,
//! composed into it before it runs (Spin 3's component dependencies, with Spin 4's per-dependency
//! `inherit_configuration`).
//!
//! ```toml
//! [component.api.dependencies]
//! "mosaic:fixtures/greeting" = { path = "greeter.wasm" }                # one interface
//! "mosaic:calc@1.0.0" = { component = "calc", inherit_configuration = ["key_value_stores"] }
//! ```
//!
//! A key names what is satisfied: an interface (`ns:pkg/iface`, with or without `@version`), a
//! whole package (`ns:pkg[@version]`: each of its interfaces the component imports) or a plain
//! import name. A dependency inherits none of its parent's grants unless `inherit_configuration`
//! (or the component's `dependencies_inherit_configuration`) says so.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The grant keys a dependency may inherit, as `inherit_configuration` lists them.
pub const GRANT_KEYS: [&str; 7] = [
    "ai_models",
    "allowed_outbound_hosts",
    "environment",
    "files",
    "key_value_stores",
    "sqlite_databases",
    "variables",
];

/// One dependency of a component.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Dependency {
    /// The key: what of the component's imports it satisfies.
    pub name: DependencyName,
    pub source: DependencySource,
    /// The dependency's export that satisfies the import, when not the import's own name.
    pub export: Option<String>,
    /// The parent's grants the dependency may use.
    pub inherit: Inherit,
}

/// Where a dependency's code comes from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DependencySource {
    /// `path = "..."`, resolved against the manifest's directory.
    Path(PathBuf),
    /// `component = "OTHER"`: another component of the application, by its source.
    Component { name: String, path: PathBuf },
}

impl DependencySource {
    pub fn path(&self) -> &Path {
        match self {
            DependencySource::Path(path) | DependencySource::Component { path, .. } => path,
        }
    }

    /// How an error names it: `greeter.wasm` or `component \`calc\``.
    pub fn describe(&self) -> String {
        match self {
            DependencySource::Path(path) => path.display().to_string(),
            DependencySource::Component { name, .. } => format!("component `{name}`"),
        }
    }
}

/// Which of the parent's grants a dependency may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Inherit {
    /// `inherit_configuration = true`.
    All,
    /// `false` (nothing: the default) or a list of [`GRANT_KEYS`].
    Only(Vec<String>),
}

impl Inherit {
    pub fn includes(&self, grant_key: &str) -> bool {
        match self {
            Inherit::All => true,
            Inherit::Only(keys) => keys.iter().any(|key| key == grant_key),
        }
    }
}

/// A dependency's key, parsed: `ns:pkg/iface@version`, `ns:pkg@version` or a plain name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DependencyName {
    pub text: String,
    /// `ns:pkg` (None for a plain name).
    package: Option<String>,
    interface: Option<String>,
    version: Option<String>,
}

impl DependencyName {
    pub fn parse(text: &str) -> Result<Self, String> {
        let invalid = |why: &str| {
            Err(format!(
                "`{text}` is not a dependency name ({why}); write an interface (`ns:pkg/iface@1.0.0`), a \
                 package (`ns:pkg@1.0.0`) or a plain import name"
            ))
        };
        let (unversioned, version) = match text.split_once('@') {
            Some((_, "")) => return invalid("an empty version"),
            Some((name, version)) => (name, Some(version.to_string())),
            None => (text, None),
        };
        // The component model's kebab-case: words of lowercase or of uppercase letters and
        // digits, each starting with a letter.
        let word = |word: &str| {
            word.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
                && (word.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
                    || word.chars().all(|c| c.is_ascii_uppercase() || c.is_ascii_digit()))
        };
        let kebab = |part: &str| !part.is_empty() && part.split('-').all(word);
        let Some((namespace, rest)) = unversioned.split_once(':') else {
            if version.is_some() || !kebab(unversioned) {
                return invalid("a plain name is kebab-case, without a version");
            }
            return Ok(Self {
                text: text.to_string(),
                package: None,
                interface: None,
                version: None,
            });
        };
        let (package, interface) = match rest.split_once('/') {
            Some((package, interface)) => (package, Some(interface)),
            None => (rest, None),
        };
        if !kebab(namespace) || !kebab(package) || interface.is_some_and(|interface| !kebab(interface)) {
            return invalid("each part is kebab-case");
        }
        Ok(Self {
            text: text.to_string(),
            package: Some(format!("{namespace}:{package}")),
            interface: interface.map(str::to_string),
            version,
        })
    }

    /// Whether it names a whole package (then it satisfies several imports, and `export` does
    /// not apply).
    pub fn is_package(&self) -> bool {
        self.package.is_some() && self.interface.is_none()
    }

    /// Whether the component import `import` (`ns:pkg/iface@1.2.3` or a plain name) is one
    /// this dependency satisfies. A name without a version matches every version.
    pub fn matches(&self, import: &str) -> bool {
        let Some(package) = &self.package else {
            return import == self.text;
        };
        let (unversioned, version) = match import.split_once('@') {
            Some((name, version)) => (name, Some(version)),
            None => (import, None),
        };
        let Some((import_package, import_interface)) = unversioned.split_once('/') else {
            return false;
        };
        let version_matches = self.version.as_deref().is_none_or(|wanted| version == Some(wanted));
        import_package == package
            && version_matches
            && self
                .interface
                .as_deref()
                .is_none_or(|interface| interface == import_interface)
    }
}

impl std::fmt::Display for DependencyName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.text)
    }
}

/// The dependencies of `[component.KEY]` from its raw `dependencies` table; `inherit_default`
/// is its `dependencies_inherit_configuration`, `sources` every component's source path (for
/// `component = "OTHER"`). Errors name the key and what to write instead.
pub fn parse(
    key: &str,
    table: &toml::Table,
    inherit_default: bool,
    dir: &Path,
    sources: &BTreeMap<String, Option<PathBuf>>,
) -> Result<Vec<Dependency>, String> {
    let mut dependencies = Vec::new();
    let depender = key.trim_start_matches("component.");
    for (name_text, value) in table {
        let at = format!("`{key}.dependencies.\"{name_text}\"`");
        let name = DependencyName::parse(name_text).map_err(|why| format!("{at}: {why}"))?;
        let entry = match value {
            toml::Value::String(version) => {
                return Err(registry_refusal(&at, &format!("version {version}")));
            }
            toml::Value::Table(entry) => entry,
            _ => {
                return Err(format!(
                    "{at}: a dependency is a table such as {{ path = \"dep.wasm\" }} or {{ component = \"other\" }}"
                ))
            }
        };
        let inherit_default = match inherit_default {
            true => Inherit::All,
            false => Inherit::Only(Vec::new()),
        };
        let (source, export, inherit) = parse_entry(&at, entry, Some(&name), inherit_default, depender, dir, sources)?;
        dependencies.push(Dependency {
            name,
            source,
            export,
            inherit,
        });
    }
    Ok(dependencies)
}

/// The interface a middleware imports and exports (unversioned): it is called with the request,
/// and calls the next in the chain through its import.
pub const MIDDLEWARE_INTERFACE: &str = "wasi:http/handler";

/// `dependencies.middleware` of `[[trigger.http]]` (Spin 4.1): the middleware that wraps the
/// trigger's component `primary`, outermost (the first to see a request) first. Each is a
/// [`Dependency`] named [`MIDDLEWARE_INTERFACE`]; it inherits none of the component's grants
/// unless its `inherit_configuration` says so. `at` names the trigger in errors.
pub fn parse_middleware(
    at: &str,
    value: &toml::Value,
    primary: &str,
    dir: &Path,
    sources: &BTreeMap<String, Option<PathBuf>>,
) -> Result<Vec<Dependency>, String> {
    let shape = || {
        format!(
            "`{at}.dependencies.middleware` is a list such as [{{ component = \"auth\" }}, {{ path = \"mw.wasm\" }}], outermost first"
        )
    };
    let toml::Value::Array(entries) = value else {
        return Err(shape());
    };
    let name = DependencyName::parse(MIDDLEWARE_INTERFACE).expect("the middleware interface is a valid name");
    entries
        .iter()
        .enumerate()
        .map(|(index, entry)| {
            let at = format!("`{at}.dependencies.middleware[{index}]`");
            let toml::Value::Table(entry) = entry else {
                return Err(shape());
            };
            let (source, _, inherit) = parse_entry(&at, entry, None, Inherit::Only(Vec::new()), primary, dir, sources)?;
            if matches!(&source, DependencySource::Component { name, .. } if name == primary) {
                return Err(format!("{at}: `{primary}` cannot be its own middleware"));
            }
            Ok(Dependency {
                name: name.clone(),
                source,
                export: None,
                inherit,
            })
        })
        .collect()
}

/// One entry of a dependency table (`name` is its key) or of a middleware list (no key, no
/// `export`): where its code is, the export it satisfies the import with, what it inherits.
fn parse_entry(
    at: &str,
    entry: &toml::Table,
    name: Option<&DependencyName>,
    inherit_default: Inherit,
    depender: &str,
    dir: &Path,
    sources: &BTreeMap<String, Option<PathBuf>>,
) -> Result<(DependencySource, Option<String>, Inherit), String> {
    let text = |field: &str| -> Result<Option<String>, String> {
        match entry.get(field) {
            None => Ok(None),
            Some(toml::Value::String(value)) => Ok(Some(value.clone())),
            Some(_) => Err(format!("{at}.{field} must be a string")),
        }
    };
    let mut known = vec![
        "path",
        "component",
        "inherit_configuration",
        "version",
        "registry",
        "package",
        "url",
        "digest",
    ];
    if name.is_some() {
        known.push("export");
    }
    if let Some(unknown) = entry.keys().find(|field| !known.contains(&field.as_str())) {
        return Err(match name {
            Some(_) => format!(
                "{at}: unknown key `{unknown}`; a dependency has `path` or `component`, and may have `export` and `inherit_configuration`"
            ),
            None => format!(
                "{at}: unknown key `{unknown}`; a middleware has `path` or `component`, and may have `inherit_configuration`"
            ),
        });
    }
    if let Some(url) = text("url")? {
        return Err(format!(
            "{at}: dependencies from a URL ({url}) are not fetched by Mosaic; download the file \
             (check its digest) and write {{ path = \"FILE.wasm\" }}"
        ));
    }
    if let Some(version) = text("version")? {
        let package = match (text("package")?, name) {
            (Some(package), _) => package,
            (None, Some(name)) => name.text.clone(),
            (None, None) => "a package".to_string(),
        };
        return Err(registry_refusal(at, &format!("{package} version {version}")));
    }
    let source = match (text("path")?, text("component")?) {
        (Some(path), None) => DependencySource::Path(dir.join(path)),
        (None, Some(component)) => {
            if component == depender && name.is_some() {
                return Err(format!("{at}: a component cannot depend on itself"));
            }
            match sources.get(&component) {
                Some(Some(path)) => DependencySource::Component {
                    name: component,
                    path: path.clone(),
                },
                Some(None) => {
                    return Err(format!(
                        "{at}: component `{component}` has no local source file to compose"
                    ))
                }
                None => {
                    return Err(format!(
                        "{at}: no `[component.{component}]` is declared (the entry names it with `component`)"
                    ))
                }
            }
        }
        (Some(_), Some(_)) => return Err(format!("{at}: give `path` or `component`, not both")),
        (None, None) => {
            return Err(format!(
                "{at}: say where its code is: {{ path = \"dep.wasm\" }} or {{ component = \"other\" }}"
            ))
        }
    };
    let export = text("export")?;
    if export.is_some() && name.is_some_and(DependencyName::is_package) {
        return Err(format!(
            "{at}: `export` picks one export for one interface; `{}` names a whole package (name one of its interfaces)",
            name.map(|name| name.text.as_str()).unwrap_or_default()
        ));
    }
    let inherit = match entry.get("inherit_configuration") {
        None => inherit_default,
        Some(toml::Value::Boolean(true)) => Inherit::All,
        Some(toml::Value::Boolean(false)) => Inherit::Only(Vec::new()),
        Some(toml::Value::Array(keys)) => {
            let mut grants = Vec::new();
            for grant in keys {
                match grant.as_str() {
                    Some(grant) if GRANT_KEYS.contains(&grant) => grants.push(grant.to_string()),
                    _ => {
                        return Err(format!(
                            "{at}.inherit_configuration: `{grant}` is not a grant; the grants are {}",
                            GRANT_KEYS.join(", ")
                        ))
                    }
                }
            }
            Inherit::Only(grants)
        }
        Some(_) => {
            return Err(format!(
                "{at}.inherit_configuration is true, false or a list of grants such as [\"key_value_stores\"]"
            ))
        }
    };
    Ok((source, export, inherit))
}

/// Refuses dependencies on other components that lead back to where they started.
pub fn check_cycles(components: &BTreeMap<String, crate::manifest::ComponentDecl>) -> Result<(), String> {
    let depends_on = |name: &str| -> Vec<String> {
        components
            .get(name)
            .map(|decl| {
                decl.resolved_dependencies
                    .iter()
                    .filter_map(|dependency| match &dependency.source {
                        DependencySource::Component { name, .. } => Some(name.clone()),
                        DependencySource::Path(_) => None,
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    fn visit(
        name: &str,
        path: &mut Vec<String>,
        done: &mut std::collections::BTreeSet<String>,
        depends_on: &dyn Fn(&str) -> Vec<String>,
    ) -> Result<(), String> {
        if let Some(start) = path.iter().position(|seen| seen == name) {
            let mut cycle = path[start..].to_vec();
            cycle.push(name.to_string());
            return Err(format!(
                "component dependencies form a cycle: {}; a component cannot be composed into itself",
                cycle.join(" → ")
            ));
        }
        if done.contains(name) {
            return Ok(());
        }
        path.push(name.to_string());
        for next in depends_on(name) {
            visit(&next, path, done, depends_on)?;
        }
        path.pop();
        done.insert(name.to_string());
        Ok(())
    }
    let mut done = std::collections::BTreeSet::new();
    for name in components.keys() {
        visit(name, &mut Vec::new(), &mut done, &depends_on)?;
    }
    Ok(())
}

fn registry_refusal(at: &str, what: &str) -> String {
    format!(
        "{at}: a registry dependency ({what}) needs registry access, which Mosaic has none of; \
         fetch the package (e.g. `wkg get`) and write {{ path = \"FILE.wasm\" }}"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_match_interfaces_packages_and_versions() {
        let interface = DependencyName::parse("mosaic:fixtures/greeting@0.1.0").unwrap();
        assert!(interface.matches("mosaic:fixtures/greeting@0.1.0"));
        assert!(!interface.matches("mosaic:fixtures/greeting@0.2.0"));
        assert!(!interface.matches("mosaic:fixtures/other@0.1.0"));
        let unversioned = DependencyName::parse("mosaic:fixtures/greeting").unwrap();
        assert!(unversioned.matches("mosaic:fixtures/greeting@0.2.0"));
        let package = DependencyName::parse("mosaic:fixtures@0.1.0").unwrap();
        assert!(package.is_package());
        assert!(package.matches("mosaic:fixtures/greeting@0.1.0"));
        assert!(package.matches("mosaic:fixtures/counter@0.1.0"));
        assert!(!package.matches("mosaic:other/greeting@0.1.0"));
        let plain = DependencyName::parse("greeter").unwrap();
        assert!(plain.matches("greeter"));
        assert!(!plain.matches("greeter2"));
        for bad in ["", "Ns:pkg", "ns:", "ns:pkg/", "plain@1.0", "ns:pkg@", "a b"] {
            assert!(DependencyName::parse(bad).is_err(), "{bad}");
        }
    }

    fn parse_one(entry: &str) -> Result<Vec<Dependency>, String> {
        let table: toml::Table = toml::from_str(entry).unwrap();
        let sources = BTreeMap::from([
            ("calc".to_string(), Some(PathBuf::from("/app/calc.wasm"))),
            ("api".to_string(), Some(PathBuf::from("/app/api.wasm"))),
        ]);
        parse("component.api", &table, false, Path::new("/app"), &sources)
    }

    #[test]
    fn entries_give_a_source_an_export_and_what_is_inherited() {
        let deps = parse_one(
            r#""mosaic:fixtures/greeting" = { path = "greeter.wasm", export = "mosaic:fixtures/hello" }
               "mosaic:calc" = { component = "calc", inherit_configuration = ["key_value_stores"] }"#,
        )
        .unwrap();
        assert_eq!(deps.len(), 2);
        let calc = &deps[0];
        assert_eq!(
            calc.source,
            DependencySource::Component {
                name: "calc".into(),
                path: PathBuf::from("/app/calc.wasm")
            }
        );
        assert!(calc.inherit.includes("key_value_stores"));
        assert!(!calc.inherit.includes("variables"));
        let greeter = &deps[1];
        assert_eq!(
            greeter.source,
            DependencySource::Path(PathBuf::from("/app/greeter.wasm"))
        );
        assert_eq!(greeter.export.as_deref(), Some("mosaic:fixtures/hello"));
        assert_eq!(greeter.inherit, Inherit::Only(Vec::new()), "nothing by default");
    }

    #[test]
    fn registry_url_and_bad_entries_are_refused_with_what_to_do() {
        let registry = parse_one(r#""aws:client" = "1.0.0""#).unwrap_err();
        assert!(
            registry.contains("registry") && registry.contains("path ="),
            "{registry}"
        );
        let package = parse_one(r#""aws:client" = { version = "1.0.0", registry = "ghcr.io" }"#).unwrap_err();
        assert!(package.contains("registry"), "{package}");
        let url = parse_one(r#""aws:client" = { url = "https://x/y.wasm", digest = "sha256:00" }"#).unwrap_err();
        assert!(url.contains("download"), "{url}");
        let missing = parse_one(r#""a:b/c" = { component = "nope" }"#).unwrap_err();
        assert!(missing.contains("[component.nope]"), "{missing}");
        let itself = parse_one(r#""a:b/c" = { component = "api" }"#).unwrap_err();
        assert!(itself.contains("itself"), "{itself}");
        let grant = parse_one(r#""a:b/c" = { path = "x.wasm", inherit_configuration = ["keys"] }"#).unwrap_err();
        assert!(grant.contains("key_value_stores"), "{grant}");
        let export = parse_one(r#""a:b" = { path = "x.wasm", export = "a:b/c" }"#).unwrap_err();
        assert!(export.contains("whole package"), "{export}");
    }
}
