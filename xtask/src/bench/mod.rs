//! `cargo xtask bench http`: requests/s and latency of one hello component under Mosaic,
//! under `wasmtime serve` of the same wasmtime version, and of a native hyper hello (the
//! ceiling), at 1 and 32 connections, all on loopback in one run; then swap latency (deploy
//! call until the new version answers) from a cold and a warm artifact cache. Writes the table
//! to bench/README.md. Bounded: a few seconds per measurement.
//!
//! `cargo xtask bench kv`, `sql` and `messaging` each write their own section of bench/README.md:
//! key-value and SQL operations through a guest per backend, and publish-to-handled latency and
//! messages/s through two guests on the embedded broker, RabbitMQ and NATS JetStream.
//!
//! `cargo xtask bench breaker` writes the latency of a call to a dead dependency with the
//! outbound circuit breaker off against the breaker open.
//!
//! `cargo xtask bench cluster` writes requests/s of one application on 1, 2 and 3 hosts of a
//! cluster (PostgreSQL as the store), and the time a deploy takes to reach every host.
//!
//! `cargo xtask bench load ADDR PATH CONNECTIONS SECONDS` loads one server already running
//! (for a profile under `perf record`) with the benchmarks' closed-loop client, and prints
//! requests/s and latency; it writes nothing.

mod breaker;
mod client;
mod cluster;
mod cpu;
mod http;
mod kv;
mod load;
mod messaging;
mod report;
mod sink;
mod sql;

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::{cargo, run as run_command};

/// How long each measurement warms up before it is measured.
pub(super) const WARMUP: Duration = Duration::from_secs(1);
/// How long a measurement of the HTTP and cluster benchmarks runs.
pub(super) const MEASURE: Duration = Duration::from_secs(5);

pub fn run(root: &Path, args: &[String]) -> Result<()> {
    match args.first().map(String::as_str) {
        Some("http") => http::run(root),
        Some("kv") => kv::run(root),
        Some("sql") => sql::run(root),
        Some("messaging") => messaging::run(root),
        Some("breaker") => breaker::run(root),
        Some("cluster") => cluster::run(root),
        Some("native-server") => http::native_server(args.get(1).context("native-server PORT")?.parse()?),
        Some("load") => load::run_standalone(&args[1..]),
        Some(other) => {
            bail!("no benchmark named `{other}`; try `cargo xtask bench http`, `kv`, `sql`, `messaging`, `breaker`, `cluster` or `load`")
        }
        None => bail!("name a benchmark: cargo xtask bench http"),
    }
}

/// A child process that is killed (and reaped) when this is dropped.
pub(super) struct Killed(pub(super) Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

pub(super) fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

pub(super) fn wait_for_port(addr: SocketAddr, what: &str) -> Result<()> {
    let started = Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        if started.elapsed() > Duration::from_secs(120) {
            bail!("{what} did not start listening on {addr}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

/// The admin API's address and token of the host serving from the state directory `state`.
pub(super) fn admin_endpoint(state: &Path) -> Result<(SocketAddr, String)> {
    let endpoint: serde_json::Value = serde_json::from_slice(&std::fs::read(state.join("admin.json"))?)?;
    let admin: SocketAddr = endpoint["addr"].as_str().context("admin.json has no addr")?.parse()?;
    let token = std::fs::read_to_string(state.join("admin-token"))?.trim().to_string();
    Ok((admin, token))
}

/// Builds the release `mosaic` that every benchmark runs.
pub(super) fn build_release_host(root: &Path) -> Result<()> {
    run_command(
        Command::new(cargo())
            .current_dir(root)
            .args(["build", "--release", "-p", "mosaic"]),
    )
}

/// Starts the release `mosaic up` on `manifest` (and a runtime config, and a `mosaic.toml`
/// beside the manifest) in a fresh directory target/bench/NAME, with `extra` arguments after
/// `up --listen ADDR` (relative paths in them are relative to that directory).
pub(super) fn start_mosaic(
    root: &Path,
    name: &str,
    manifest: &str,
    runtime_config: Option<&str>,
    settings: Option<&str>,
    extra: &[&str],
) -> Result<(Killed, SocketAddr)> {
    let work = root.join("target/bench").join(name);
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    std::fs::write(work.join("spin.toml"), manifest)?;
    if let Some(settings) = settings {
        std::fs::write(work.join("mosaic.toml"), settings)?;
    }
    let port = free_port()?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut command = Command::new(root.join("target/release/mosaic"));
    command
        .current_dir(&work)
        .env("MOSAIC_LOG", "warn")
        .args(["up", "--listen", &addr.to_string()])
        .args(extra)
        .stdout(Stdio::null());
    if let Some(config) = runtime_config {
        std::fs::write(work.join("runtime-config.toml"), config)?;
        command.args(["--runtime-config-file", "runtime-config.toml"]);
    }
    let host = Killed(command.spawn().context("cannot start mosaic")?);
    wait_for_port(addr, "mosaic")?;
    Ok((host, addr))
}

/// A name no earlier run used: keeps this run's queues, streams or cluster rows apart from
/// earlier runs' on shared servers.
pub(super) fn unique_namespace() -> Result<String> {
    Ok(format!(
        "bench-{}-{}",
        std::process::id(),
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos()
    ))
}

/// The multi-threaded runtime a benchmark drives its load (and its own servers) on.
fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the tokio runtime of the load generator")
}

/// Fails, saying what to do, unless `service` (which the benchmark needs running) listens at `addr`.
fn require_reachable(service: &str, addr: SocketAddr) -> Result<()> {
    if std::net::TcpStream::connect(addr).is_err() {
        bail!("{service} is not reachable at {addr}; start it (see the README) and run the benchmark again");
    }
    Ok(())
}
