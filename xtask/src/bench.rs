//! `cargo xtask bench http`: requests/s and latency of one hello component under Mosaic,
//! under `wasmtime serve` of the same wasmtime version, and of a native hyper hello (the
//! ceiling), at 1 and 32 connections, all on loopback in one run; then swap latency (deploy
//! call until the new version answers) from a cold and a warm artifact cache. Writes the table
//! to bench/README.md. Bounded: a few seconds per measurement.

use std::net::{SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;

use crate::{cargo, run as run_command};

const WARMUP: Duration = Duration::from_secs(1);
const MEASURE: Duration = Duration::from_secs(5);
const CONNECTIONS: [usize; 2] = [1, 32];
const SWAP_SAMPLES: usize = 5;

pub fn run(root: &Path, args: &[String]) -> Result<()> {
    match args.first().map(String::as_str) {
        Some("http") => http(root),
        Some("kv") => key_value(root),
        Some("sql") => sql(root),
        Some("native-server") => native_server(args.get(1).context("native-server PORT")?.parse()?),
        Some(other) => bail!("no benchmark named `{other}`; try `cargo xtask bench http`, `kv` or `sql`"),
        None => bail!("name a benchmark: cargo xtask bench http"),
    }
}

struct Stats {
    requests: u64,
    errors: u64,
    rps: f64,
    p50_us: u64,
    p99_us: u64,
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn wait_for_port(addr: SocketAddr, what: &str) -> Result<()> {
    let started = Instant::now();
    while std::net::TcpStream::connect(addr).is_err() {
        if started.elapsed() > Duration::from_secs(120) {
            bail!("{what} did not start listening on {addr}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}

fn wasmtime_version(root: &Path) -> Result<String> {
    let lock = std::fs::read_to_string(root.join("Cargo.lock"))?;
    let mut lines = lock.lines();
    while let Some(line) = lines.next() {
        if line == "name = \"wasmtime\"" {
            if let Some(version) = lines.next().and_then(|l| l.strip_prefix("version = \"")) {
                return Ok(version.trim_end_matches('"').to_string());
            }
        }
    }
    bail!("wasmtime is not in Cargo.lock")
}

/// `wasmtime` of the same version as Mosaic's, installed from the wasmtime-cli crate once.
fn wasmtime_cli(root: &Path) -> Result<PathBuf> {
    let version = wasmtime_version(root)?;
    let tools = root.join("target/bench-tools").join(format!("wasmtime-{version}"));
    let binary = tools.join("bin/wasmtime");
    if !binary.exists() {
        eprintln!("installing wasmtime-cli {version} (once; this compiles wasmtime)");
        run_command(
            Command::new(cargo())
                .args(["install", "wasmtime-cli", "--locked", "--version"])
                .arg(format!("={version}"))
                .arg("--root")
                .arg(&tools),
        )?;
    }
    Ok(binary)
}

fn http(root: &Path) -> Result<()> {
    run_command(
        Command::new(cargo())
            .current_dir(root)
            .args(["build", "--release", "-p", "mosaic"]),
    )?;
    let wasmtime = wasmtime_cli(root)?;
    let mosaic = root.join("target/release/mosaic");
    // Throughput: the reference app's hello (imports only WASI and wasi:http, so `wasmtime
    // serve` runs it too). Swaps: the probe fixture, which has a v1 and a v2.
    let hello = root.join("components/target/wasm32-wasip2/release/hello.wasm");
    let probe = root.join("target/fixtures/probe.wasm");
    let probe_v2 = root.join("target/fixtures/probe-v2.wasm");
    let work = root.join("target/bench/http");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    std::fs::write(
        work.join("spin.toml"),
        format!(
            "spin_manifest_version = 2\n[application]\nname = \"bench\"\n[[trigger.http]]\nroute = \"/...\"\ncomponent = \"hello\"\n\
             [component.hello]\nsource = \"{}\"\n[[trigger.http]]\nroute = \"/probe/...\"\ncomponent = \"probe\"\n\
             [component.probe]\nsource = \"{}\"\n",
            hello.display(),
            probe.display()
        ),
    )?;

    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    let mut rows = Vec::new();

    let native_port = free_port()?;
    let native_addr: SocketAddr = ([127, 0, 0, 1], native_port).into();
    let native = Killed(
        Command::new(std::env::current_exe()?)
            .args(["bench", "native-server", &native_port.to_string()])
            .spawn()?,
    );
    wait_for_port(native_addr, "the native hyper server")?;

    let wasmtime_port = free_port()?;
    let wasmtime_addr: SocketAddr = ([127, 0, 0, 1], wasmtime_port).into();
    let serve = Killed(
        Command::new(&wasmtime)
            .args(["serve", "-S", "cli=y", "--addr", &wasmtime_addr.to_string()])
            .arg(&hello)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("cannot start wasmtime serve")?,
    );
    wait_for_port(wasmtime_addr, "wasmtime serve")?;

    let mosaic_port = free_port()?;
    let mosaic_addr: SocketAddr = ([127, 0, 0, 1], mosaic_port).into();
    let host = Killed(
        Command::new(&mosaic)
            .current_dir(&work)
            .env("MOSAIC_LOG", "warn")
            .args(["up", "--listen", &mosaic_addr.to_string()])
            .stdout(Stdio::null())
            .spawn()
            .context("cannot start mosaic")?,
    );
    wait_for_port(mosaic_addr, "mosaic")?;

    for (name, addr) in [
        ("Mosaic", mosaic_addr),
        ("wasmtime serve", wasmtime_addr),
        ("native hyper (ceiling)", native_addr),
    ] {
        for connections in CONNECTIONS {
            runtime.block_on(load(addr, connections, WARMUP))?;
            let stats = runtime.block_on(load(addr, connections, MEASURE))?;
            eprintln!(
                "{name:<24} c={connections:<3} {:>9.0} req/s  p50 {:>6} us  p99 {:>6} us  ({} requests, {} errors)",
                stats.rps, stats.p50_us, stats.p99_us, stats.requests, stats.errors
            );
            rows.push((name, connections, stats));
        }
    }
    drop(serve);
    drop(native);

    let (cold, warm) = runtime.block_on(swap_latency(&work, mosaic_addr, &probe, &probe_v2))?;
    drop(host);

    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_default();
    let version = wasmtime_version(root)?;
    let throughput = |name: &str, c: usize| {
        rows.iter()
            .find(|(n, conns, _)| *n == name && *conns == c)
            .map(|(_, _, s)| s.rps)
            .unwrap_or(0.0)
    };
    let mut table = String::new();
    table.push_str("| server | connections | requests/s | p50 | p99 | errors |\n|---|---:|---:|---:|---:|---:|\n");
    for (name, connections, stats) in &rows {
        table.push_str(&format!(
            "| {name} | {connections} | {:.0} | {:.3} ms | {:.3} ms | {} |\n",
            stats.rps,
            stats.p50_us as f64 / 1000.0,
            stats.p99_us as f64 / 1000.0,
            stats.errors
        ));
    }
    let mut ratios = String::new();
    for c in CONNECTIONS {
        ratios.push_str(&format!(
            "- {c} connection(s): Mosaic / wasmtime serve = {:.2}x, Mosaic / native = {:.2}x\n",
            throughput("Mosaic", c) / throughput("wasmtime serve", c).max(1.0),
            throughput("Mosaic", c) / throughput("native hyper (ceiling)", c).max(1.0),
        ));
    }
    let swap = format!(
        "| artifact cache | samples | median | min | max |\n|---|---:|---:|---:|---:|\n| cold (compile) | {} | {:.1} ms | {:.1} ms | {:.1} ms |\n| warm (cached) | {} | {:.1} ms | {:.1} ms | {:.1} ms |\n",
        cold.len(),
        median(&cold),
        cold.iter().cloned().fold(f64::MAX, f64::min),
        cold.iter().cloned().fold(0.0, f64::max),
        warm.len(),
        median(&warm),
        warm.iter().cloned().fold(f64::MAX, f64::min),
        warm.iter().cloned().fold(0.0, f64::max),
    );
    let report = format!(
        "# Benchmarks\n\nWritten by `cargo xtask bench http` (do not edit by hand). One run, on this machine: {cpu}, {cores} cores shared by the load generator and the server.\n\n\
         ## HTTP: one hello component\n\nThe same component (`components/hello`, spin-sdk 5.2, `GET /` answers a short text) under Mosaic (release build) and `wasmtime serve -S cli=y` of wasmtime {version}, and a native hyper hello as the ceiling. Closed-loop HTTP/1.1 keep-alive load from a Rust client on loopback, {warm}s warm-up then {measure}s measured per row.\n\n{table}\n{ratios}\n\
         ## Swap latency\n\nOn the probe fixture (`tests/fixtures/probe`, {probe_kb} KB, v1 and v2): from the start of the deploy call (`POST /v1/components/probe/deploy` with the file) until a request answers from the new version, {SWAP_SAMPLES} samples each. Cold: the new version's compiled artifact was removed from the cache first; warm: the artifact was cached.\n\n{swap}",
        probe_kb = std::fs::metadata(&probe).map(|m| m.len() / 1024).unwrap_or(0),
        cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        warm = WARMUP.as_secs(),
        measure = MEASURE.as_secs(),
    );
    std::fs::create_dir_all(root.join("bench"))?;
    // Keep the sections other benchmarks wrote.
    let existing = std::fs::read_to_string(root.join("bench/README.md")).unwrap_or_default();
    let others = existing
        .find("## Key-value through a guest")
        .map(|start| &existing[start..])
        .unwrap_or("");
    std::fs::write(root.join("bench/README.md"), format!("{report}\n{others}"))?;
    println!("{report}");
    Ok(())
}

fn median(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
}

async fn load(addr: SocketAddr, connections: usize, duration: Duration) -> Result<Stats> {
    load_path(addr, "/", connections, duration).await
}

async fn load_path(addr: SocketAddr, path: &'static str, connections: usize, duration: Duration) -> Result<Stats> {
    load_request(addr, "GET", path.to_string(), "", connections, duration).await
}

/// Closed-loop load: `connections` clients each sending `method path` with `body` until
/// `duration` is over.
async fn load_request(
    addr: SocketAddr,
    method: &'static str,
    path: String,
    body: &'static str,
    connections: usize,
    duration: Duration,
) -> Result<Stats> {
    let deadline = Instant::now() + duration;
    let mut tasks = Vec::new();
    for _ in 0..connections {
        let path = path.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies: Vec<u32> = Vec::new();
            let mut errors = 0u64;
            'connect: while Instant::now() < deadline {
                let Ok(stream) = tokio::net::TcpStream::connect(addr).await else {
                    errors += 1;
                    continue;
                };
                let _ = stream.set_nodelay(true);
                let Ok((mut sender, connection)) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await
                else {
                    errors += 1;
                    continue;
                };
                tokio::spawn(connection);
                while Instant::now() < deadline {
                    let request = hyper::Request::builder()
                        .method(method)
                        .uri(path.as_str())
                        .header(http::header::HOST, addr.to_string())
                        .body(Full::new(Bytes::from_static(body.as_bytes())))
                        .expect("static request");
                    let started = Instant::now();
                    let ok = match sender.send_request(request).await {
                        Ok(response) => response.status().is_success() && response.into_body().collect().await.is_ok(),
                        Err(_) => false,
                    };
                    if !ok {
                        errors += 1;
                        continue 'connect;
                    }
                    latencies.push(started.elapsed().as_micros().min(u32::MAX as u128) as u32);
                }
            }
            (latencies, errors)
        }));
    }
    let mut all = Vec::new();
    let mut errors = 0;
    for task in tasks {
        let (latencies, task_errors) = task.await?;
        all.extend(latencies);
        errors += task_errors;
    }
    all.sort_unstable();
    let at = |q: f64| {
        all.get(((all.len() as f64 * q) as usize).min(all.len().saturating_sub(1)))
            .copied()
            .unwrap_or(0) as u64
    };
    Ok(Stats {
        requests: all.len() as u64,
        errors,
        rps: all.len() as f64 / duration.as_secs_f64(),
        p50_us: at(0.50),
        p99_us: at(0.99),
    })
}

async fn admin_call(addr: SocketAddr, token: &str, path: &str, body: Bytes) -> Result<()> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = hyper::Request::post(path)
        .header(http::header::HOST, addr.to_string())
        .header(http::header::AUTHORIZATION, format!("Bearer {token}"))
        .body(Full::new(body))?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let text = response.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!("deploy failed: {status} {}", String::from_utf8_lossy(&text));
    }
    Ok(())
}

/// One POST; fails unless it answers 2xx.
async fn post_once(addr: SocketAddr, path: &str, body: &'static str) -> Result<()> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = hyper::Request::post(path)
        .header(http::header::HOST, addr.to_string())
        .body(Full::new(Bytes::from_static(body.as_bytes())))?;
    let response = sender.send_request(request).await?;
    let status = response.status();
    let text = response.into_body().collect().await?.to_bytes();
    if !status.is_success() {
        bail!("POST {path} failed: {status} {}", String::from_utf8_lossy(&text));
    }
    Ok(())
}

async fn body_of(addr: SocketAddr) -> Result<String> {
    let stream = tokio::net::TcpStream::connect(addr).await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
    tokio::spawn(connection);
    let request = hyper::Request::get("/probe/hello")
        .header(http::header::HOST, addr.to_string())
        .body(Full::new(Bytes::new()))?;
    let response = sender.send_request(request).await?;
    Ok(String::from_utf8_lossy(&response.into_body().collect().await?.to_bytes()).to_string())
}

/// Deploys alternately v2 (artifact removed first: cold) and v1 (cached since start-up:
/// warm), timing each from the deploy call until the new version answers.
async fn swap_latency(work: &Path, app: SocketAddr, v1: &Path, v2: &Path) -> Result<(Vec<f64>, Vec<f64>)> {
    let state = work.join(".mosaic");
    let endpoint: serde_json::Value = serde_json::from_slice(&std::fs::read(state.join("admin.json"))?)?;
    let admin: SocketAddr = endpoint["addr"].as_str().context("admin.json has no addr")?.parse()?;
    let token = std::fs::read_to_string(state.join("admin-token"))?.trim().to_string();
    let (v1_bytes, v2_bytes) = (Bytes::from(std::fs::read(v1)?), Bytes::from(std::fs::read(v2)?));
    let cached_at_start: Vec<std::ffi::OsString> = std::fs::read_dir(state.join("artifacts"))?
        .flatten()
        .map(|entry| entry.file_name())
        .collect();
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    for _ in 0..SWAP_SAMPLES {
        for (bytes, expected, is_cold) in [
            (&v2_bytes, "hello from probe v2", true),
            (&v1_bytes, "hello from probe v1", false),
        ] {
            if is_cold {
                // Only v2's artifact goes: the ones compiled at start-up (v1, hello) stay cached.
                for entry in std::fs::read_dir(state.join("artifacts"))?.flatten() {
                    if !cached_at_start.contains(&entry.file_name()) {
                        let _ = std::fs::remove_file(entry.path());
                    }
                }
            }
            let started = Instant::now();
            admin_call(admin, &token, "/v1/components/probe/deploy", bytes.clone()).await?;
            loop {
                let body = body_of(app).await?;
                if body == expected {
                    break;
                }
                if started.elapsed() > Duration::from_secs(30) {
                    bail!("the new version never answered: expected {expected:?}, the probe answers {body:?}");
                }
            }
            let ms = started.elapsed().as_secs_f64() * 1000.0;
            if is_cold {
                cold.push(ms)
            } else {
                warm.push(ms)
            }
        }
    }
    Ok((cold, warm))
}

/// The ceiling: a native hyper server answering the same short text.
fn native_server(port: u16) -> Result<()> {
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(("127.0.0.1", port)).await?;
        loop {
            let (stream, _) = listener.accept().await?;
            let _ = stream.set_nodelay(true);
            tokio::spawn(async move {
                let service = hyper::service::service_fn(|_request| async {
                    Ok::<_, std::convert::Infallible>(hyper::Response::new(Full::new(Bytes::from_static(
                        b"hello from native",
                    ))))
                });
                let _ = hyper::server::conn::http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    })
}

/// Starts the release `mosaic up` on `manifest` (and a runtime config) in a fresh directory.
fn start_mosaic(root: &Path, name: &str, manifest: &str, runtime_config: Option<&str>) -> Result<(Killed, SocketAddr)> {
    let work = root.join("target/bench").join(name);
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    std::fs::write(work.join("spin.toml"), manifest)?;
    let port = free_port()?;
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let mut command = Command::new(root.join("target/release/mosaic"));
    command
        .current_dir(&work)
        .env("MOSAIC_LOG", "warn")
        .args(["up", "--listen", &addr.to_string()])
        .stdout(Stdio::null());
    if let Some(config) = runtime_config {
        std::fs::write(work.join("runtime-config.toml"), config)?;
        command.args(["--runtime-config-file", "runtime-config.toml"]);
    }
    let host = Killed(command.spawn().context("cannot start mosaic")?);
    wait_for_port(addr, "mosaic")?;
    Ok((host, addr))
}

/// `cargo xtask bench kv`: key-value operations per second through a guest, the embedded
/// SQLite backend against Redis, in one run; appends its table to bench/README.md.
fn key_value(root: &Path) -> Result<()> {
    const CONNECTIONS: usize = 8;
    const KV_MEASURE: Duration = Duration::from_secs(3);
    let redis: SocketAddr = ([127, 0, 0, 1], 6379).into();
    if std::net::TcpStream::connect(redis).is_err() {
        bail!("Redis is not reachable at {redis}; start it (see the README) and run the benchmark again");
    }
    run_command(
        Command::new(cargo())
            .current_dir(root)
            .args(["build", "--release", "-p", "mosaic"]),
    )?;
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
    let (_host, addr) = start_mosaic(root, "kv", &manifest, Some(config))?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
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
            cells.push(measure_cell(
                &runtime,
                addr,
                name,
                "GET",
                path.to_string(),
                "",
                CONNECTIONS,
                KV_MEASURE,
            )?);
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

/// Warms up, then measures one request shape; returns the table cell "rate | p50 | p99".
#[allow(clippy::too_many_arguments)]
fn measure_cell(
    runtime: &tokio::runtime::Runtime,
    addr: SocketAddr,
    name: &str,
    method: &'static str,
    path: String,
    body: &'static str,
    connections: usize,
    duration: Duration,
) -> Result<String> {
    runtime.block_on(load_request(addr, method, path.clone(), body, connections, WARMUP))?;
    let stats = runtime.block_on(load_request(addr, method, path.clone(), body, connections, duration))?;
    if stats.errors > 0 {
        bail!("{name} on {path}: {} errors", stats.errors);
    }
    eprintln!(
        "{name:<36} {path:<70} {:>8.0}/s p50 {} us p99 {} us",
        stats.rps, stats.p50_us, stats.p99_us
    );
    Ok(format!(
        "{:.0} | {:.2} ms | {:.2} ms",
        stats.rps,
        stats.p50_us as f64 / 1000.0,
        stats.p99_us as f64 / 1000.0
    ))
}

/// Replaces (or appends) the section starting with `heading` in bench/README.md.
fn write_section(root: &Path, heading: &str, section: &str) -> Result<()> {
    let readme = root.join("bench/README.md");
    let existing = std::fs::read_to_string(&readme).unwrap_or_default();
    let updated = match existing.find(heading) {
        Some(start) => {
            let end = existing[start + heading.len()..]
                .find("\n## ")
                .map(|i| start + heading.len() + i + 1)
                .unwrap_or(existing.len());
            format!("{}{section}\n{}", &existing[..start], &existing[end..])
        }
        None => format!("{}\n\n{section}", existing.trim_end()),
    };
    std::fs::write(&readme, updated.trim_end().to_string() + "\n")?;
    println!("{section}");
    Ok(())
}

/// `cargo xtask bench sql`: SQL statements per second through a guest, embedded SQLite against
/// PostgreSQL, in one run; writes its section of bench/README.md.
fn sql(root: &Path) -> Result<()> {
    const CONNECTIONS: usize = 8;
    const SQL_MEASURE: Duration = Duration::from_secs(3);
    let postgres: SocketAddr = ([127, 0, 0, 1], 5432).into();
    if std::net::TcpStream::connect(postgres).is_err() {
        bail!("PostgreSQL is not reachable at {postgres}; start it (see the README) and run the benchmark again");
    }
    run_command(
        Command::new(cargo())
            .current_dir(root)
            .args(["build", "--release", "-p", "mosaic"]),
    )?;
    let manifest = format!(
        "spin_manifest_version = 2\n[application]\nname = \"bench-sql\"\n\
         [[trigger.http]]\nroute = \"/...\"\ncomponent = \"probe\"\n\
         [component.probe]\nsource = \"{}\"\nsqlite_databases = [\"default\"]\n\
         allowed_outbound_hosts = [\"postgres://127.0.0.1:5432\"]\n",
        root.join("target/fixtures/probe.wasm").display()
    );
    let (_host, addr) = start_mosaic(root, "sql", &manifest, None)?;
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
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
            cells.push(measure_cell(
                &runtime,
                addr,
                name,
                "POST",
                path,
                statement,
                CONNECTIONS,
                SQL_MEASURE,
            )?);
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
