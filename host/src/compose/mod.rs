//! Component dependencies (`[component.NAME.dependencies]`): each dependency's exports satisfy
//! the imports of the component its key names, composed with the Bytecode Alliance's composition
//! graph (`wac-graph`) into one component before it is compiled, at start-up and at each deploy.
//!
//! A dependency uses only the grants it inherits (`inherit_configuration`): each of its imports
//! of a capability it does not inherit is renamed (`mosaic-denied-wasi:keyvalue/store`) in the
//! composition, and the host answers those imports with denials ([`deny`]): an error value
//! (`access-denied` where the interface has one) or nothing (an empty environment, no
//! preopened directory), never the parent's grant.
//!
//! The composed artifact is cached under a digest of every part (the component, each
//! dependency's bytes, key, export and inheritance), so a restart or a rollback neither
//! composes nor compiles again.

pub mod deny;

use std::collections::BTreeSet;

use mosaic_manifest::dependencies::{Dependency, Inherit};
use sha2::Digest as _;
use wac_graph::types::Package;
use wac_graph::{CompositionGraph, EncodeOptions};

use crate::digest::Digest;

/// What the namespace of an import a dependency may not use starts with: `wasi:keyvalue/store`
/// becomes `mosaic-denied-wasi:keyvalue/store`, which the host answers with denials.
pub const DENIED_PREFIX: &str = "mosaic-denied-";

/// Capability interfaces (unversioned) and the grant a dependency needs to reach each, as
/// `inherit_configuration` names the grants. An import of one of them by a dependency that
/// does not inherit its grant is denied.
pub const CAPABILITY_INTERFACES: &[(&str, &str)] = &[
    ("fermyon:spin/llm", "ai_models"),
    ("fermyon:spin/http", "allowed_outbound_hosts"),
    ("fermyon:spin/mysql", "allowed_outbound_hosts"),
    ("fermyon:spin/postgres", "allowed_outbound_hosts"),
    ("fermyon:spin/redis", "allowed_outbound_hosts"),
    ("fermyon:spin/mqtt", "allowed_outbound_hosts"),
    ("spin:mqtt/mqtt", "allowed_outbound_hosts"),
    ("spin:mysql/mysql", "allowed_outbound_hosts"),
    ("spin:postgres/postgres", "allowed_outbound_hosts"),
    ("spin:redis/redis", "allowed_outbound_hosts"),
    ("wasi:http/outgoing-handler", "allowed_outbound_hosts"),
    ("wasi:http/client", "allowed_outbound_hosts"),
    ("wasi:sockets/ip-name-lookup", "allowed_outbound_hosts"),
    ("wasi:sockets/tcp-create-socket", "allowed_outbound_hosts"),
    ("wasi:sockets/udp-create-socket", "allowed_outbound_hosts"),
    ("wasi:cli/environment", "environment"),
    ("wasi:filesystem/preopens", "files"),
    ("fermyon:spin/key-value", "key_value_stores"),
    ("spin:key-value/key-value", "key_value_stores"),
    ("wasi:keyvalue/store", "key_value_stores"),
    ("fermyon:spin/sqlite", "sqlite_databases"),
    ("spin:sqlite/sqlite", "sqlite_databases"),
    ("fermyon:spin/config", "variables"),
    ("fermyon:spin/variables", "variables"),
    ("spin:variables/variables", "variables"),
    ("wasi:config/store", "variables"),
];

/// The grant `import` (`ns:pkg/iface@version`) needs, if it is a capability interface.
pub fn grant_of(import: &str) -> Option<&'static str> {
    let unversioned = import.split_once('@').map_or(import, |(name, _)| name);
    CAPABILITY_INTERFACES
        .iter()
        .find(|(interface, _)| *interface == unversioned)
        .map(|(_, grant)| *grant)
}

/// The name a denied import takes in the composition: `mosaic-denied-ns:pkg/iface@version`.
pub fn denied_name(import: &str) -> String {
    format!("{DENIED_PREFIX}{import}")
}

/// The import a denied name stands for (the inverse of [`denied_name`]).
pub fn original_of_denied(name: &str) -> Option<&str> {
    name.strip_prefix(DENIED_PREFIX)
        .filter(|original| original.contains(':'))
}

/// A dependency with its code, as read for one composition.
pub struct Part {
    pub dependency: Dependency,
    pub bytes: Vec<u8>,
}

/// The digest the composed artifact of `parent` (of digest `parent_digest`) with its
/// `dependencies` and `middleware` is cached under: every part's bytes and how it is wired.
pub fn composed_digest(parent_digest: &Digest, dependencies: &[Part], middleware: &[Part]) -> Digest {
    let mut hasher = sha2::Sha256::new();
    hasher.update(b"mosaic-composition-v1\n");
    hasher.update(parent_digest.as_str().as_bytes());
    let roles = dependencies
        .iter()
        .map(|part| ("dependency", part))
        .chain(middleware.iter().map(|part| ("middleware", part)));
    for (role, part) in roles {
        let dependency = &part.dependency;
        hasher.update(b"\n");
        // Without middleware the digest is the one composition v1 always gave.
        if role == "middleware" {
            hasher.update(b"middleware\n");
        }
        hasher.update(dependency.name.text.as_bytes());
        hasher.update(b"\n");
        hasher.update(dependency.export.as_deref().unwrap_or("").as_bytes());
        hasher.update(b"\n");
        match &dependency.inherit {
            Inherit::All => hasher.update(b"inherit all"),
            Inherit::Only(grants) => hasher.update(format!("inherit {grants:?}").as_bytes()),
        }
        hasher.update(b"\n");
        hasher.update(Digest::of(&part.bytes).as_str().as_bytes());
    }
    Digest::from_hex(hex::encode(hasher.finalize()))
}

/// Whether `name` is the WASI 0.3 HTTP handler interface middleware wraps: `wasi:http/handler`
/// at 0.3.0 or at a 0.3.0 release candidate Spin 4.0 builds for.
pub fn is_wasi_http_handler(name: &str) -> bool {
    name.strip_prefix(mosaic_manifest::dependencies::MIDDLEWARE_INTERFACE)
        .and_then(|rest| rest.strip_prefix('@'))
        .is_some_and(|version| version == "0.3.0" || version.starts_with("0.3.0-"))
}

/// One part's package in a composition graph, instantiated: the imports it may not use are
/// wired to the shared denied imports.
struct Placed {
    instance: wac_graph::NodeId,
    imports: Vec<String>,
    exports: Vec<String>,
}

/// The composition of one component with its dependencies and middleware.
struct Composition {
    graph: CompositionGraph,
    /// One import per denied interface, shared by every part that may not use it.
    denied_nodes: std::collections::HashMap<String, wac_graph::NodeId>,
    parts: usize,
}

impl Composition {
    fn place(&mut self, part: &Part, about: &str) -> Result<Placed, String> {
        let graph = &mut self.graph;
        let package = Package::from_bytes(
            &format!("mosaic:dependency{}", self.parts),
            None,
            part.bytes.clone(),
            graph.types_mut(),
        )
        .map_err(|err| format!("{about} is not a component: {err:#}"))?;
        self.parts += 1;
        let package_id = graph
            .register_package(package)
            .map_err(|err| format!("{about} cannot be composed: {err}"))?;
        let world = graph[package_id].ty();
        let imports: Vec<(String, wac_graph::types::ItemKind)> = graph.types()[world]
            .imports
            .iter()
            .map(|(name, kind)| (name.clone(), *kind))
            .collect();
        let exports: Vec<String> = graph.types()[world].exports.keys().cloned().collect();
        let instance = graph.instantiate(package_id);
        // Each denied import is a copy of its interface under the denied name (the same
        // interface id would be merged with the host's), and so is every import that uses its
        // types (`wasi:keyvalue/atomics` works on `store`'s buckets), rewired to the copies.
        let denied = denied_imports_of(graph.types(), &imports, &part.dependency.inherit);
        let mut copies = std::collections::HashMap::new();
        for (import, kind) in &imports {
            let (true, wac_graph::types::ItemKind::Instance(interface)) = (denied.contains(import), kind) else {
                continue;
            };
            let name = denied_name(import);
            let mut copy = graph.types()[*interface].clone();
            copy.id = Some(name.clone());
            for used in copy.uses.values_mut() {
                if let Some(copied) = copies.get(&used.interface) {
                    used.interface = *copied;
                }
            }
            let copy = graph.types_mut().add_interface(copy);
            copies.insert(*interface, copy);
            let node = match self.denied_nodes.get(&name) {
                Some(node) => *node,
                None => {
                    let node = graph
                        .import(name.clone(), wac_graph::types::ItemKind::Instance(copy))
                        .map_err(|err| format!("{about}: cannot deny `{import}`: {err}"))?;
                    self.denied_nodes.insert(name, node);
                    node
                }
            };
            graph
                .set_instantiation_argument(instance, import, node)
                .map_err(|err| format!("{about}: cannot deny `{import}`: {err}"))?;
        }
        Ok(Placed {
            instance,
            imports: imports.into_iter().map(|(name, _)| name).collect(),
            exports,
        })
    }
}

/// Composes `parent` (the code of component `component`) with its dependencies and its HTTP
/// middleware. Every import a dependency's key names is satisfied by that dependency's export
/// of the same name (or its `export`); each middleware (outermost first) exports the WASI 0.3
/// handler in place of the component's and calls the next one (the component last) through
/// its import of it. Everything else stays an import of the result. Errors name the
/// component, the dependency or middleware, and the import.
pub fn compose(component: &str, parent: &[u8], dependencies: &[Part], middleware: &[Part]) -> Result<Vec<u8>, String> {
    let mut composition = Composition {
        graph: CompositionGraph::new(),
        denied_nodes: std::collections::HashMap::new(),
        parts: 0,
    };
    let graph = &mut composition.graph;
    let parent_package = Package::from_bytes("mosaic:component", None, parent.to_vec(), graph.types_mut())
        .map_err(|err| format!("`{component}` cannot be read as a component: {err:#}"))?;
    let parent_id = graph
        .register_package(parent_package)
        .map_err(|err| format!("`{component}` cannot be composed: {err}"))?;
    let parent_world = graph[parent_id].ty();
    let parent_imports: Vec<String> = graph.types()[parent_world].imports.keys().cloned().collect();
    let parent_exports: Vec<String> = graph.types()[parent_world].exports.keys().cloned().collect();
    let parent_instance = graph.instantiate(parent_id);
    let mut satisfied = BTreeSet::new();
    for part in dependencies {
        let dependency = &part.dependency;
        let about = format!(
            "dependency `{}` of `{component}` ({})",
            dependency.name,
            dependency.source.describe()
        );
        let placed = composition.place(part, &about)?;
        let graph = &mut composition.graph;
        let matching: Vec<&String> = parent_imports
            .iter()
            .filter(|import| dependency.name.matches(import))
            .collect();
        if matching.is_empty() {
            return Err(format!(
                "{about} satisfies no import of `{component}`: it imports {}",
                list_or_nothing(&parent_imports)
            ));
        }
        for import in matching {
            if !satisfied.insert(import.clone()) {
                return Err(format!(
                    "`{import}` of `{component}` is named by two dependencies; keep one"
                ));
            }
            let export = dependency.export.clone().unwrap_or_else(|| import.clone());
            if !placed.exports.contains(&export) {
                return Err(format!(
                    "{about} does not export `{export}`, which `{component}` imports; it exports {}",
                    list_or_nothing(&placed.exports)
                ));
            }
            let alias = graph
                .alias_instance_export(placed.instance, &export)
                .map_err(|err| format!("{about}: cannot use its export `{export}`: {err}"))?;
            graph
                .set_instantiation_argument(parent_instance, import, alias)
                .map_err(|err| {
                    format!("{about}: its export `{export}` does not fit the import `{import}` of `{component}`: {err}")
                })?;
        }
    }
    // The handler the outermost middleware exports in place of the component's.
    let mut wrapped: Option<(String, wac_graph::NodeId)> = None;
    if !middleware.is_empty() {
        let Some(handler) = parent_exports.iter().find(|export| is_wasi_http_handler(export)) else {
            return Err(format!(
                "`{component}` has middleware, which wraps a WASI 0.3 HTTP handler (`wasi:http/handler@0.3.0`), \
                 but it exports {}: build it with spin-sdk 7 (or another WASI 0.3 toolchain), or remove the \
                 trigger's `dependencies.middleware`",
                list_or_nothing(&parent_exports)
            ));
        };
        let mut next = composition
            .graph
            .alias_instance_export(parent_instance, handler)
            .map_err(|err| format!("`{component}`: cannot use its export `{handler}`: {err}"))?;
        for (index, part) in middleware.iter().enumerate().rev() {
            let about = format!(
                "middleware {} of `{component}` ({})",
                index + 1,
                part.dependency.source.describe()
            );
            let placed = composition.place(part, &about)?;
            let graph = &mut composition.graph;
            if !placed.imports.contains(handler) || !placed.exports.contains(handler) {
                return Err(format!(
                    "{about} is not a middleware for it: a middleware imports and exports `{handler}` \
                     (the world `wasi:http/middleware`); it imports {} and exports {}",
                    list_or_nothing(&placed.imports),
                    list_or_nothing(&placed.exports)
                ));
            }
            graph
                .set_instantiation_argument(placed.instance, handler, next)
                .map_err(|err| {
                    format!("{about}: the handler it calls does not fit `{handler}` of `{component}`: {err}")
                })?;
            next = graph
                .alias_instance_export(placed.instance, handler)
                .map_err(|err| format!("{about}: cannot use its export `{handler}`: {err}"))?;
        }
        wrapped = Some((handler.clone(), next));
    }
    let graph = &mut composition.graph;
    for export in &parent_exports {
        let alias = match &wrapped {
            Some((handler, outermost)) if handler == export => *outermost,
            _ => graph
                .alias_instance_export(parent_instance, export)
                .map_err(|err| format!("`{component}`: cannot re-export `{export}`: {err}"))?,
        };
        graph
            .export(alias, export.clone())
            .map_err(|err| format!("`{component}`: cannot re-export `{export}`: {err}"))?;
    }
    graph
        .encode(EncodeOptions::default())
        .map_err(|err| format!("`{component}`, its dependencies and middleware cannot be composed: {err:#}"))
}

/// One warning per capability a dependency or middleware of `spec` imports without inheriting
/// its grant, where `spec` has that grant: its calls are denied. Read from the composed
/// component's imports, so a cached artifact says the same as a fresh composition.
pub fn denial_warnings(
    component: &wasmtime::component::Component,
    engine: &wasmtime::Engine,
    spec: &crate::capability::grants::ComponentSpec,
) -> Vec<String> {
    component
        .component_type()
        .imports(engine)
        .filter_map(|(name, _)| original_of_denied(name))
        .filter_map(|interface| Some((interface, grant_of(interface)?)))
        // A grant the component itself lacks is no loss: inherited, it would give nothing.
        .filter(|(_, grant)| component_has(spec, grant))
        .map(|(interface, grant)| {
            format!(
                "a dependency or middleware of `{}` imports `{interface}` but does not inherit `{grant}`: \
                 its calls are denied (inherit_configuration = [\"{grant}\"] in its entry of \
                 [component.{}.dependencies] or the trigger's dependencies.middleware allows them)",
                spec.name, spec.name
            )
        })
        .collect()
}

/// Whether `spec` has the grant `grant` (a key of `inherit_configuration`) to give.
fn component_has(spec: &crate::capability::grants::ComponentSpec, grant: &str) -> bool {
    match grant {
        "allowed_outbound_hosts" => !spec.allowed_hosts.is_empty(),
        "environment" => !spec.environment.is_empty(),
        "files" => spec.files_dir.is_some(),
        "key_value_stores" => !spec.key_value_stores.is_empty(),
        "sqlite_databases" => !spec.sqlite_databases.is_empty(),
        "variables" => !spec.variables.is_empty(),
        // ai_models: not in the spec (Mosaic has no LLM backend); say so when it is imported.
        _ => true,
    }
}

/// The imports of a dependency it may not use: the capabilities whose grant it does not
/// inherit, and every import that uses types of one of those.
fn denied_imports_of(
    types: &wac_graph::types::Types,
    imports: &[(String, wac_graph::types::ItemKind)],
    inherit: &Inherit,
) -> BTreeSet<String> {
    let mut denied: BTreeSet<String> = imports
        .iter()
        .filter(|(import, _)| grant_of(import).is_some_and(|grant| !inherit.includes(grant)))
        .map(|(import, _)| import.clone())
        .collect();
    loop {
        let users: Vec<String> = imports
            .iter()
            .filter(|(import, _)| !denied.contains(import))
            .filter(|(_, kind)| match kind {
                wac_graph::types::ItemKind::Instance(interface) => types[*interface]
                    .uses
                    .values()
                    .any(|used| types[used.interface].id.as_ref().is_some_and(|id| denied.contains(id))),
                _ => false,
            })
            .map(|(import, _)| import.clone())
            .collect();
        if users.is_empty() {
            return denied;
        }
        denied.extend(users);
    }
}

fn list_or_nothing(names: &[String]) -> String {
    if names.is_empty() {
        "nothing".to_string()
    } else {
        names
            .iter()
            .map(|name| format!("`{name}`"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn denied_names_go_back_to_their_interface() {
        for import in [
            "fermyon:spin/key-value@2.0.0",
            "wasi:filesystem/preopens@0.2.6",
            "spin:key-value/key-value@3.0.0",
            "wasi:cli/environment",
        ] {
            let denied = denied_name(import);
            assert!(denied.starts_with("mosaic-denied-"), "{denied}");
            assert_eq!(original_of_denied(&denied), Some(import));
        }
        assert_eq!(grant_of("wasi:keyvalue/store@0.2.0-draft2"), Some("key_value_stores"));
        assert_eq!(grant_of("wasi:io/streams@0.2.6"), None);
    }
}
