use std::path::Path;
use std::time::Duration;

use anyhow::Result;

use super::client::post_once;
use super::load::CellLoad;
use super::report::write_section;
use super::{build_release_host, require_reachable, runtime, start_mosaic, WARMUP};

/// `cargo xtask bench sql`: SQL statements per second through a guest, embedded SQLite against
/// PostgreSQL, in one run; writes its section of bench/README.md.
pub(super) fn run(root: &Path) -> Result<()> {
    const CONNECTIONS: usize = 8;
    const SQL_MEASURE: Duration = Duration::from_secs(3);
    require_reachable("PostgreSQL", ([127, 0, 0, 1], 5432).into())?;
    build_release_host(root)?;
    let manifest = format!(
        "spin_manifest_version = 2\n[application]\nname = \"bench-sql\"\n\
         [[trigger.http]]\nroute = \"/...\"\ncomponent = \"probe\"\n\
         [component.probe]\nsource = \"{}\"\nsqlite_databases = [\"default\"]\n\
         allowed_outbound_hosts = [\"postgres://127.0.0.1:5432\"]\n",
        root.join("target/fixtures/probe.wasm").display()
    );
    let (_host, addr) = start_mosaic(root, "sql", &manifest, None, None, &[])?;
    let runtime = runtime()?;
    let load = CellLoad {
        runtime: &runtime,
        connections: CONNECTIONS,
        duration: SQL_MEASURE,
    };
    let pg = "/pg?addr=host=127.0.0.1%20user=postgres%20dbname=test";
    let setup = [
        (
            "/sql?db=default".to_string(),
            "CREATE TABLE IF NOT EXISTS bench (id INTEGER PRIMARY KEY, v TEXT)",
        ),
        ("/sql?db=default".to_string(), "DELETE FROM bench"),
        (
            format!("{pg}&op=execute"),
            "CREATE TABLE IF NOT EXISTS mosaic_bench (id SERIAL PRIMARY KEY, v TEXT)",
        ),
        (format!("{pg}&op=execute"), "TRUNCATE mosaic_bench"),
    ];
    for (path, statement) in setup {
        runtime.block_on(post_once(addr, &path, statement))?;
    }
    let operations: [(&str, String, String, &'static str, &'static str); 2] = [
        (
            "insert one row",
            "/sql?db=default&p=t:x".into(),
            format!("{pg}&op=execute&p=str:x"),
            "INSERT INTO bench (v) VALUES (?)",
            "INSERT INTO mosaic_bench (v) VALUES ($1)",
        ),
        (
            "select one row by key",
            "/sql?db=default&p=i:1".into(),
            format!("{pg}&p=i32:1"),
            "SELECT id, v FROM bench WHERE id = ?",
            "SELECT id, v FROM mosaic_bench WHERE id = $1",
        ),
    ];
    let mut table = String::from(
        "| statement | SQLite (embedded) stmts/s | p50 | p99 | PostgreSQL stmts/s | p50 | p99 |\n|---|---:|---:|---:|---:|---:|---:|\n",
    );
    for (name, sqlite_path, pg_path, sqlite_sql, pg_sql) in operations {
        let mut cells = Vec::new();
        for (path, statement) in [(sqlite_path, sqlite_sql), (pg_path, pg_sql)] {
            cells.push(load.measure(addr, name, "POST", path, statement)?);
        }
        table.push_str(&format!("| {name} | {} | {} |\n", cells[0], cells[1]));
    }
    let section = format!(
        "## SQL through a guest\n\nWritten by `cargo xtask bench sql`. Each request is one HTTP request to a guest that runs one \
         statement with a bound parameter (spin-sdk `sqlite` v2 against `pg4`); {CONNECTIONS} connections, {}s warm-up then {}s \
         measured per cell, Mosaic release build, PostgreSQL 15 on loopback.\n\n{table}",
        WARMUP.as_secs(),
        SQL_MEASURE.as_secs()
    );
    write_section(root, "## SQL through a guest", &section)
}
