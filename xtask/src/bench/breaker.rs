use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Result};

use super::client::body_of;
use super::load::CellLoad;
use super::report::write_section;
use super::sink::Sink;
use super::{build_release_host, runtime, start_mosaic, WARMUP};

/// `cargo xtask bench breaker`: the probe calls a dead dependency (a listener in this process
/// that accepts connections and never answers) with `request_timeout_ms = 200` and no retries:
/// with the circuit breaker off every call waits for the timeout; with it on, once open (the
/// warm-up opens it), every call fails at once. A live dependency (answers at once) is the
/// baseline. Writes its section of bench/README.md.
pub(super) fn run(root: &Path) -> Result<()> {
    const CONNECTIONS: usize = 8;
    const BREAKER_MEASURE: Duration = Duration::from_secs(3);
    const TIMEOUT_MS: u64 = 200;
    build_release_host(root)?;
    let runtime = runtime()?;
    let load = CellLoad {
        runtime: &runtime,
        connections: CONNECTIONS,
        duration: BREAKER_MEASURE,
    };
    let live = runtime.block_on(Sink::start())?;
    let dead = runtime.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
    let dead_addr = dead.local_addr()?;
    runtime.spawn(async move {
        let mut held = Vec::new();
        while let Ok((stream, _)) = dead.accept().await {
            held.push(stream);
        }
    });
    let manifest = format!(
        "spin_manifest_version = 2\n[application]\nname = \"bench-breaker\"\n\
         [[trigger.http]]\nroute = \"/probe/...\"\ncomponent = \"probe\"\n\
         [component.probe]\nsource = \"{}\"\nallowed_outbound_hosts = [\"http://127.0.0.1:*\"]\n",
        root.join("target/fixtures/probe.wasm").display()
    );
    // The probe answers 200 with the error text when its call fails (`error_status=200`), so
    // that a failed call is a measured request.
    let call = |addr: SocketAddr| format!("/probe/outbound?url=http://{addr}/&error_status=200");
    let off = format!("[outbound]\nrequest_timeout_ms = {TIMEOUT_MS}\nretries = 0\nbreaker_failures = 0\n");
    let on = format!("[outbound]\nrequest_timeout_ms = {TIMEOUT_MS}\nretries = 0\n");

    let (host, addr) = start_mosaic(root, "breaker-off", &manifest, None, Some(&off), &[])?;
    let dead_off = load.measure(addr, "dead dependency, breaker off", "GET", call(dead_addr), "")?;
    drop(host);

    let (_host, addr) = start_mosaic(root, "breaker-on", &manifest, None, Some(&on), &[])?;
    let live_on = load.measure(addr, "live dependency, breaker on", "GET", call(live.addr), "")?;
    let dead_open = load.measure(addr, "dead dependency, breaker open", "GET", call(dead_addr), "")?;
    let answer = runtime.block_on(body_of(addr, &call(dead_addr)))?;
    if !answer.contains("circuit open") {
        bail!("the breaker did not open for the dead dependency; the probe answered: {answer}");
    }

    let table = format!(
        "| dependency | outbound policy | calls/s | p50 | p99 |\n|---|---|---:|---:|---:|\n\
         | live (answers 200 at once) | breaker on (default) | {live_on} |\n\
         | dead (accepts, never answers) | breaker off (`breaker_failures = 0`) | {dead_off} |\n\
         | dead (accepts, never answers) | breaker on, open | {dead_open} |\n"
    );
    let section = format!(
        "## Outbound circuit breaker\n\nWritten by `cargo xtask bench breaker`. Each request is one HTTP request to the probe, \
         which makes one outbound GET (`/probe/outbound?url=...`) to a dependency on loopback; `[outbound] request_timeout_ms = {TIMEOUT_MS}`, \
         `retries = 0`, the breaker otherwise at its defaults (opens after 5 failures in a row within 10 s, stays open 5 s). \
         {CONNECTIONS} connections, {}s warm-up (which opens the breaker) then {}s measured per row, Mosaic release build. \
         An open breaker answers the guest at once with `ErrorCode::InternalError(Some(\"circuit open for 127.0.0.1:PORT: ...\"))`.\n\n{table}",
        WARMUP.as_secs(),
        BREAKER_MEASURE.as_secs()
    );
    write_section(root, "## Outbound circuit breaker", &section)
}
