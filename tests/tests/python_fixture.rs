//! The Python fixture (tests/fixtures/python: Spin's Python SDK 5, componentize-py, world
//! `spin:up/http-trigger@4.1.0`), built by `cargo xtask build`: it is a component, and it
//! exports the WASI 0.3 HTTP handler. Serving it waits for the host's WASI 0.3 HTTP trigger.

use mosaic_tests::fixture;
use wasmparser::{Encoding, Parser, Payload};

/// The top-level imports and exports of a component, by full name; the sections of nested
/// modules and components are skipped.
fn interfaces(bytes: &[u8]) -> (Vec<String>, Vec<String>) {
    let (mut imports, mut exports) = (Vec::new(), Vec::new());
    let mut depth = 0usize;
    for payload in Parser::new(0).parse_all(bytes) {
        match payload.expect("the fixture decodes") {
            Payload::ModuleSection { .. } | Payload::ComponentSection { .. } => depth += 1,
            Payload::End(_) => depth = depth.saturating_sub(1),
            Payload::ComponentImportSection(section) if depth == 0 => {
                for import in section {
                    imports.push(import.expect("an import decodes").name.full_name().into_owned());
                }
            }
            Payload::ComponentExportSection(section) if depth == 0 => {
                for export in section {
                    exports.push(export.expect("an export decodes").name.full_name().into_owned());
                }
            }
            _ => {}
        }
    }
    (imports, exports)
}

#[test]
fn python_fixture_is_a_component() {
    let bytes = std::fs::read(fixture("python")).unwrap();
    // `\0asm`, then version 0x0d and layer 1: a component, not a core module (layer 0).
    assert_eq!(&bytes[..4], b"\0asm", "not Wasm");
    assert_eq!(&bytes[4..8], &[0x0d, 0x00, 0x01, 0x00], "not a component");
    let mut parser = Parser::new(0);
    let first = parser.parse(&bytes, true).expect("a Wasm header");
    assert!(
        matches!(
            first,
            wasmparser::Chunk::Parsed {
                payload: Payload::Version {
                    encoding: Encoding::Component,
                    ..
                },
                ..
            }
        ),
        "wasmparser does not read it as a component"
    );
}

#[test]
fn python_fixture_exports_the_wasi_0_3_http_handler() {
    let bytes = std::fs::read(fixture("python")).unwrap();
    let (imports, exports) = interfaces(&bytes);
    assert!(
        exports.iter().any(|name| name == "wasi:http/handler@0.3.0"),
        "exports: {exports:?}"
    );
    // What app.py uses, from the world's imports.
    for used in ["spin:key-value/key-value@3.0.0", "spin:variables/variables@3.0.0"] {
        assert!(
            imports.iter().any(|name| name == used),
            "{used} not among imports: {imports:?}"
        );
    }
}
