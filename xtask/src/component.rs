//! `cargo xtask component-imports FILE`: the top-level imports and exports of a Wasm component
//! (the interface names a host must provide and may call, e.g. `wasi:http/handler@0.3.0`).

use std::path::Path;

use anyhow::{bail, Context, Result};
use wasmparser::{Encoding, Parser, Payload};

/// One top-level import or export: its full name (with any version suffix) and its kind
/// (`instance`, `func`, `type`, ...).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Item {
    pub name: String,
    pub kind: &'static str,
}

#[derive(Debug, Default)]
pub struct Interfaces {
    pub imports: Vec<Item>,
    pub exports: Vec<Item>,
}

/// Reads the component's own import and export sections; those of the core modules and
/// components nested inside it are skipped. Nothing is validated beyond what decoding needs.
pub fn interfaces(bytes: &[u8]) -> Result<Interfaces> {
    let mut found = Interfaces::default();
    // 0 while in the outer component; nested modules and components each open a level that
    // their `End` closes.
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        match payload? {
            Payload::Version { encoding, .. } if depth == 0 && encoding != Encoding::Component => {
                bail!("a core Wasm module, not a component: it has no component imports or exports")
            }
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(section) if depth == 0 => {
                for import in section {
                    let import = import?;
                    found.imports.push(Item {
                        name: import.name.full_name().into_owned(),
                        kind: import.ty.kind().desc(),
                    });
                }
            }
            Payload::ComponentExportSection(section) if depth == 0 => {
                for export in section {
                    let export = export?;
                    found.exports.push(Item {
                        name: export.name.full_name().into_owned(),
                        kind: export.kind.desc(),
                    });
                }
            }
            _ => {}
        }
    }
    Ok(found)
}

/// Prints the imports, then the exports, one a line: the name, then its kind.
pub fn print(file: &Path) -> Result<()> {
    let bytes = std::fs::read(file).with_context(|| format!("cannot read {}", file.display()))?;
    let found = interfaces(&bytes).with_context(|| format!("cannot read {} as a component", file.display()))?;
    let width = found
        .imports
        .iter()
        .chain(&found.exports)
        .map(|item| item.name.len())
        .max()
        .unwrap_or(0);
    for (title, items) in [("imports", &found.imports), ("exports", &found.exports)] {
        println!("{title} ({}):", items.len());
        for item in items {
            println!("  {:width$}  {}", item.name, item.kind);
        }
    }
    Ok(())
}
