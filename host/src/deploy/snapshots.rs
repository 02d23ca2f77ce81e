//! WASI 0.3 release-candidate snapshots, served by the WASI 0.3.0 implementation.
//!
//! Spin 4.0 and Spin's Python SDK 5 import `wasi:*@0.3.0-rc-2026-03-15` beside (or instead of)
//! `wasi:*@0.3.0`. That snapshot's interfaces are the 0.3.0 ones, item for item (checked
//! against the WIT vendored in `wit/wasi-0.3` by `snapshot_wit_matches_0_3_0` below), but a prerelease version
//! never matches another version in wasmtime's linker. Rather than link every function twice,
//! the component's top-level import and export names are renamed before it is compiled:
//!
//! - an import `NAME@0.3.0-rc-2026-03-15` becomes `NAME@0.3.0+rc-2026-03-15`: build metadata,
//!   which keeps the name distinct from a `NAME@0.3.0` import of the same component while the
//!   linker's semver matching resolves it to the 0.3.0 implementation;
//! - an export `NAME@0.3.0-rc-2026-03-15` becomes `NAME@0.3.0`, so the HTTP trigger finds
//!   `wasi:http/handler@0.3.0`.
//!
//! Only names change: the section's items keep their bytes, so the types are checked by the
//! linker exactly as they would be against the snapshot.

/// The WASI 0.3 snapshots that are renamed onto 0.3.0.
const SNAPSHOTS: &[&str] = &["0.3.0-rc-2026-03-15"];

const IMPORT_SECTION: u8 = 10;
const EXPORT_SECTION: u8 = 11;

/// `bytes` with the snapshot names mapped, or `None` when the component names no snapshot
/// (the common case: nothing is copied). Only the outermost sections are read: nested
/// modules and components are copied whole, their names do not link.
pub fn map_snapshot_names(bytes: &[u8]) -> Result<Option<Vec<u8>>, String> {
    if !SNAPSHOTS.iter().any(|snapshot| contains(bytes, snapshot.as_bytes())) {
        return Ok(None);
    }
    const PREAMBLE: usize = 8;
    if bytes.len() < PREAMBLE {
        return Err("the component is truncated".into());
    }
    let mut out = Vec::with_capacity(bytes.len() + 64);
    out.extend_from_slice(&bytes[..PREAMBLE]);
    let mut reader = Reader { bytes, at: PREAMBLE };
    let mut changed = false;
    while reader.at < bytes.len() {
        let section_start = reader.at;
        let id = reader.byte()?;
        let size = usize::try_from(reader.leb()?).map_err(|_| "a section is too large")?;
        let contents_start = reader.at;
        let contents_end = contents_start
            .checked_add(size)
            .filter(|end| *end <= bytes.len())
            .ok_or("a section of the component runs past its end")?;
        reader.at = contents_end;
        let renamed = match id {
            IMPORT_SECTION | EXPORT_SECTION => rename_section(&bytes[contents_start..contents_end], id)?,
            _ => None,
        };
        match renamed {
            Some(contents) => {
                out.push(id);
                write_leb(&mut out, contents.len() as u64);
                out.extend_from_slice(&contents);
                changed = true;
            }
            None => out.extend_from_slice(&bytes[section_start..contents_end]),
        }
    }
    Ok(changed.then_some(out))
}

/// The section's contents with snapshot names mapped, or `None` if it names none.
fn rename_section(contents: &[u8], section: u8) -> Result<Option<Vec<u8>>, String> {
    let mut reader = Reader { bytes: contents, at: 0 };
    let count = reader.leb()?;
    let mut out = Vec::with_capacity(contents.len());
    write_leb(&mut out, count);
    let mut changed = false;
    for _ in 0..count {
        let start = reader.at;
        // importname' / exportname': a discriminant byte, then the name as a string.
        let kind = reader.byte()?;
        let name = reader.string()?;
        let rest_start = reader.at;
        // What follows the name (its options, then the extern description, or an export's
        // sort, index and optional type) is copied as it is, up to the next item.
        let rest_end = item_end(contents, start, section)?;
        reader.at = rest_end;
        match mapped(name, section) {
            Some(renamed) => {
                out.push(kind);
                write_leb(&mut out, renamed.len() as u64);
                out.extend_from_slice(renamed.as_bytes());
                out.extend_from_slice(&contents[rest_start..rest_end]);
                changed = true;
            }
            None => out.extend_from_slice(&contents[start..rest_end]),
        }
    }
    if reader.at != contents.len() {
        return Err("the component's import or export section has trailing bytes".into());
    }
    Ok(changed.then_some(out))
}

/// The name an item gets: imports keep the snapshot as build metadata, exports become 0.3.0.
fn mapped(name: &str, section: u8) -> Option<String> {
    SNAPSHOTS.iter().find_map(|snapshot| {
        let base = name.strip_suffix(snapshot)?.strip_suffix('@')?;
        let release = snapshot.split_once('-').map_or(*snapshot, |(release, _)| release);
        let tag = &snapshot[release.len() + 1..];
        Some(if section == IMPORT_SECTION {
            format!("{base}@{release}+{tag}")
        } else {
            format!("{base}@{release}")
        })
    })
}

/// Where the item that starts at `at` ends, found by letting wasmparser read it whole.
fn item_end(contents: &[u8], at: usize, section: u8) -> Result<usize, String> {
    let mut reader = wasmparser::BinaryReader::new_features(&contents[at..], 0, wasmparser::WasmFeatures::all());
    let read = if section == IMPORT_SECTION {
        reader.read::<wasmparser::ComponentImport>().map(|_| ())
    } else {
        reader.read::<wasmparser::ComponentExport>().map(|_| ())
    };
    read.map_err(|err| format!("the component's import or export section cannot be read: {err}"))?;
    Ok(at + reader.original_position())
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, String> {
        let byte = *self.bytes.get(self.at).ok_or("the component ends inside a section")?;
        self.at += 1;
        Ok(byte)
    }

    fn leb(&mut self) -> Result<u64, String> {
        let mut value = 0u64;
        for shift in (0..35).step_by(7) {
            let byte = self.byte()?;
            value |= u64::from(byte & 0x7f) << shift;
            if byte & 0x80 == 0 {
                return Ok(value);
            }
        }
        Err("the component has an over-long number".into())
    }

    fn string(&mut self) -> Result<&'a str, String> {
        let len = usize::try_from(self.leb()?).map_err(|_| "a name is too long")?;
        let end = self
            .at
            .checked_add(len)
            .filter(|end| *end <= self.bytes.len())
            .ok_or("a name runs past its section")?;
        let name = std::str::from_utf8(&self.bytes[self.at..end]).map_err(|_| "a name is not UTF-8")?;
        self.at = end;
        Ok(name)
    }
}

fn write_leb(out: &mut Vec<u8>, mut value: u64) {
    loop {
        let byte = (value & 0x7f) as u8;
        value >>= 7;
        if value == 0 {
            out.push(byte);
            return;
        }
        out.push(byte | 0x80);
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|window| window == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn snapshot_names_are_mapped_and_others_kept() {
        assert_eq!(
            mapped("wasi:http/types@0.3.0-rc-2026-03-15", IMPORT_SECTION).as_deref(),
            Some("wasi:http/types@0.3.0+rc-2026-03-15")
        );
        assert_eq!(
            mapped("wasi:http/handler@0.3.0-rc-2026-03-15", EXPORT_SECTION).as_deref(),
            Some("wasi:http/handler@0.3.0")
        );
        assert_eq!(mapped("wasi:http/types@0.3.0", IMPORT_SECTION), None);
        assert_eq!(mapped("wasi:cli/stdout@0.2.6", IMPORT_SECTION), None);
    }

    fn component_importing(names: &[&str], export: &str) -> Vec<u8> {
        let imports: String = names
            .iter()
            .map(|name| format!("(import \"{name}\" (instance (export \"f\" (func))))\n"))
            .collect();
        wat::parse_str(format!(
            "(component {imports} (core module $m (func (export \"g\"))) (core instance $i (instantiate $m)) \
             (func $g (canon lift (core func $i \"g\"))) (instance $e (export \"g\" (func $g))) (export \"{export}\" (instance $e)))"
        ))
        .expect("the test component is valid")
    }

    #[test]
    fn a_component_naming_the_snapshot_beside_0_3_0_stays_valid() {
        let bytes = component_importing(
            &[
                "wasi:clocks/monotonic-clock@0.3.0-rc-2026-03-15",
                "wasi:clocks/monotonic-clock@0.3.0",
                "wasi:cli/stdout@0.2.6",
            ],
            "wasi:http/handler@0.3.0-rc-2026-03-15",
        );
        let mapped = map_snapshot_names(&bytes).unwrap().expect("the snapshot is named");
        let mut validator = wasmparser::Validator::new_with_features(wasmparser::WasmFeatures::all());
        validator.validate_all(&mapped).expect("the mapped component is valid");
        let (imports, exports) = top_level_names(&mapped);
        assert_eq!(
            imports,
            [
                "wasi:clocks/monotonic-clock@0.3.0+rc-2026-03-15",
                "wasi:clocks/monotonic-clock@0.3.0",
                "wasi:cli/stdout@0.2.6"
            ]
        );
        assert_eq!(exports, ["wasi:http/handler@0.3.0"]);
    }

    fn top_level_names(bytes: &[u8]) -> (Vec<String>, Vec<String>) {
        let (mut imports, mut exports) = (Vec::new(), Vec::new());
        let mut depth = 0;
        for payload in wasmparser::Parser::new(0).parse_all(bytes) {
            match payload.unwrap() {
                wasmparser::Payload::ModuleSection { .. } | wasmparser::Payload::ComponentSection { .. } => depth += 1,
                wasmparser::Payload::End(_) => depth -= 1,
                wasmparser::Payload::ComponentImportSection(reader) if depth == 0 => {
                    imports.extend(reader.into_iter().map(|import| import.unwrap().name.name.to_string()))
                }
                wasmparser::Payload::ComponentExportSection(reader) if depth == 0 => {
                    exports.extend(reader.into_iter().map(|export| export.unwrap().name.name.to_string()))
                }
                _ => {}
            }
        }
        (imports, exports)
    }

    /// wasmtime's linker resolves the renamed import to the 0.3.0 definition.
    #[test]
    fn the_renamed_import_links_to_the_0_3_0_definition() {
        let bytes = component_importing(
            &[
                "wasi:clocks/monotonic-clock@0.3.0-rc-2026-03-15",
                "wasi:clocks/monotonic-clock@0.3.0",
            ],
            "wasi:http/handler@0.3.0-rc-2026-03-15",
        );
        let mapped = map_snapshot_names(&bytes).unwrap().unwrap();
        let engine = wasmtime::Engine::default();
        let mut linker = wasmtime::component::Linker::<()>::new(&engine);
        linker
            .instance("wasi:clocks/monotonic-clock@0.3.0")
            .unwrap()
            .func_wrap("f", |_, (): ()| Ok(()))
            .unwrap();
        let unmapped = wasmtime::component::Component::new(&engine, &bytes).unwrap();
        assert!(
            linker.instantiate_pre(&unmapped).is_err(),
            "the snapshot itself does not link"
        );
        let component = wasmtime::component::Component::new(&engine, &mapped).unwrap();
        linker.instantiate_pre(&component).expect("the renamed snapshot links");
        assert!(component.get_export_index(None, "wasi:http/handler@0.3.0").is_some());
    }

    #[test]
    fn a_component_without_the_snapshot_is_not_copied() {
        let bytes = component_importing(&["wasi:cli/stdout@0.2.6"], "wasi:http/handler@0.3.0");
        assert_eq!(map_snapshot_names(&bytes).unwrap(), None);
    }

    /// The snapshot's WIT as vendored in wit/wasi-0.3 is the 0.3.0 WIT with another version: the
    /// renaming above relies on it.
    #[test]
    fn snapshot_wit_matches_0_3_0() {
        let vendored = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../wit/wasi-0.3");
        for package in ["http", "cli", "clocks", "filesystem", "random", "sockets"] {
            let release = vendored.join(format!("release/{package}@0.3.0"));
            let snapshot = vendored.join(format!("rc-2026-03-15/{package}@0.3.0-rc-2026-03-15"));
            assert_eq!(
                normalized_wit(&snapshot).replace("0.3.0-rc-2026-03-15", "0.3.0"),
                normalized_wit(&release),
                "{package}: the snapshot differs from 0.3.0"
            );
        }
    }

    /// The WIT of a package directory without comments, attributes and layout.
    fn normalized_wit(dir: &std::path::Path) -> String {
        let mut files: Vec<_> = std::fs::read_dir(dir)
            .unwrap()
            .map(|entry| entry.unwrap().path())
            .collect();
        files.sort();
        let mut tokens = Vec::new();
        for file in files {
            let text = std::fs::read_to_string(file).unwrap();
            for line in text.lines() {
                let line = line.split("//").next().unwrap_or_default().trim();
                if line.starts_with('@') {
                    continue;
                }
                tokens.extend(line.split_whitespace().map(str::to_string));
            }
        }
        tokens
            .join(" ")
            .replace(" ,", ",")
            .replace(",)", ")")
            .replace(", }", " }")
    }
}
