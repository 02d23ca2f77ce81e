use std::path::Path;
use std::time::Duration;

use anyhow::Result;

use super::load::CellLoad;
use super::report::write_section;
use super::{build_release_host, require_reachable, runtime, start_mosaic, WARMUP};

/// `cargo xtask bench kv`: key-value operations per second through a guest, the embedded
/// SQLite backend against Redis, in one run; appends its table to bench/README.md.
pub(super) fn run(root: &Path) -> Result<()> {
    const CONNECTIONS: usize = 8;
    const KV_MEASURE: Duration = Duration::from_secs(3);
    require_reachable("Redis", ([127, 0, 0, 1], 6379).into())?;
    build_release_host(root)?;
    let fixtures = root.join("target/fixtures");
    let manifest = format!(
        "spin_manifest_version = 2\n[application]\nname = \"bench-kv\"\n\
         [[trigger.http]]\nroute = \"/probe/...\"\ncomponent = \"probe\"\n\
         [component.probe]\nsource = \"{}\"\nkey_value_stores = [\"default\", \"remote\"]\n\
         [[trigger.http]]\nroute = \"/counter/...\"\ncomponent = \"counter\"\n\
         [component.counter]\nsource = \"{}\"\nkey_value_stores = [\"default\", \"remote\"]\n",
        fixtures.join("probe.wasm").display(),
        fixtures.join("counter.wasm").display()
    );
    let config = "[key_value_store.remote]\ntype = \"redis\"\nurl = \"redis://127.0.0.1:6379/10\"\n";
    let (_host, addr) = start_mosaic(root, "kv", &manifest, Some(config), None, &[])?;
    let runtime = runtime()?;
    let load = CellLoad {
        runtime: &runtime,
        connections: CONNECTIONS,
        duration: KV_MEASURE,
    };
    let operations: [(&str, &'static str, &'static str); 4] = [
        ("guest without key-value (baseline)", "/probe/hello", "/probe/hello"),
        (
            "set (spin key-value)",
            "/probe/kv?op=set&key=bench&value=0123456789",
            "/probe/kv?op=set&store=remote&key=bench&value=0123456789",
        ),
        (
            "get (spin key-value)",
            "/probe/kv?op=get&key=bench",
            "/probe/kv?op=get&store=remote&key=bench",
        ),
        (
            "increment (wasi:keyvalue atomics)",
            "/counter/incr?key=bench-counter",
            "/counter/incr?store=remote&key=bench-counter",
        ),
    ];
    let mut table = String::from(
        "| operation | embedded (SQLite) ops/s | p50 | p99 | Redis ops/s | p50 | p99 |\n|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for (name, embedded, remote) in operations {
        let mut cells = Vec::new();
        for path in [embedded, remote] {
            cells.push(load.measure(addr, name, "GET", path.to_string(), "")?);
        }
        table.push_str(&format!("| {name} | {} | {} |\n", cells[0], cells[1]));
    }
    let section = format!(
        "## Key-value through a guest\n\nWritten by `cargo xtask bench kv`. Each request is one HTTP request to a guest that does one operation on the store; \
         {CONNECTIONS} connections, {}s warm-up then {}s measured per cell, Mosaic release build, Redis on loopback (db 10).\n\n{table}",
        WARMUP.as_secs(),
        KV_MEASURE.as_secs()
    );
    write_section(root, "## Key-value through a guest", &section)
}
