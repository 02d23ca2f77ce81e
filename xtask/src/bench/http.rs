use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;

use super::client::{admin_call, body_of};
use super::cpu::{cpu_snapshot, CpuUse};
use super::load::load_get;
use super::report::{cores, rate_cells, rate_progress, size_kb, write_head};
use super::{admin_endpoint, build_release_host, free_port, runtime, wait_for_port, Killed, MEASURE, WARMUP};
use crate::{cargo, run as run_command};

pub(super) const CONNECTIONS: [usize; 2] = [1, 32];

pub(super) const SWAP_SAMPLES: usize = 5;

/// One server under load: its name in the table, its address, the path it is asked for and
/// its process (whose CPU time per request the table shows).
struct Target {
    name: &'static str,
    addr: SocketAddr,
    path: &'static str,
    pid: u32,
}

const MOSAIC_P2: &str = "Mosaic, WASI 0.2 (fresh instance per request)";
const WASMTIME_P2: &str = "wasmtime serve, WASI 0.2 (fresh instance per request)";
const MOSAIC_P2_REUSE: &str = "Mosaic, WASI 0.2, [instance_reuse] 128";
const WASMTIME_P2_REUSE: &str = "wasmtime serve, WASI 0.2, --max-instance-reuse-count 128";
const MOSAIC_P3: &str = "Mosaic, WASI 0.3 (reuse: 128, 16 at once)";
const WASMTIME_P3: &str = "wasmtime serve, WASI 0.3 (reuse: 128, 16 at once)";
const MOSAIC_P2_OTLP_DOWN: &str = "Mosaic, WASI 0.2 fresh, OTLP export to an endpoint that is down";
const NATIVE: &str = "native hyper (ceiling)";
const MOSAIC_PROBE_V1: &str = "Mosaic, probe fixture v1 alone";
const MOSAIC_PROBE_V2: &str = "Mosaic, probe fixture v2 alone";
const MOSAIC_CANARY: &str = "Mosaic, probe fixture v1 with a 50% canary of v2";

pub(super) fn run(root: &Path) -> Result<()> {
    build_release_host(root)?;
    let wasmtime = wasmtime_cli(root)?;
    let mosaic = root.join("target/release/mosaic");
    // Throughput: the reference app's hello (spin-sdk 5.2, WASI 0.2) and the spin-sdk 7 fixture
    // (WASI 0.3); both import only WASI and wasi:http, so `wasmtime serve` runs them too. Swaps:
    // the probe fixture, which has a v1 and a v2.
    let hello = root.join("components/target/wasm32-wasip2/release/hello.wasm");
    let hello_p3 = root.join("target/fixtures/spin7.wasm");
    let probe = root.join("target/fixtures/probe.wasm");
    let probe_v2 = root.join("target/fixtures/probe-v2.wasm");
    let work = root.join("target/bench/http");
    let _ = std::fs::remove_dir_all(&work);
    std::fs::create_dir_all(&work)?;
    std::fs::write(
        work.join("spin.toml"),
        format!(
            "spin_manifest_version = 2\n[application]\nname = \"bench\"\n\
             [[trigger.http]]\nroute = \"/...\"\ncomponent = \"hello\"\n[component.hello]\nsource = \"{hello}\"\n\
             [[trigger.http]]\nroute = \"/reused/...\"\ncomponent = \"hello-reused\"\n[component.hello-reused]\nsource = \"{hello}\"\n\
             [[trigger.http]]\nroute = \"/p3/...\"\ncomponent = \"hello-p3\"\n[component.hello-p3]\nsource = \"{hello_p3}\"\n\
             [[trigger.http]]\nroute = \"/probe/...\"\ncomponent = \"probe\"\n[component.probe]\nsource = \"{probe}\"\n",
            hello = hello.display(),
            hello_p3 = hello_p3.display(),
            probe = probe.display()
        ),
    )?;
    // The WASI 0.2 component opted into reuse, as `wasmtime serve --max-instance-reuse-count`.
    std::fs::write(
        work.join("mosaic.toml"),
        "[instance_reuse.hello-reused]\nmax_instance_reuse_count = 128\n",
    )?;

    let runtime = runtime()?;
    let mut rows = Vec::new();

    let native_port = free_port()?;
    let native_addr: SocketAddr = ([127, 0, 0, 1], native_port).into();
    let native = Killed(
        Command::new(std::env::current_exe()?)
            .args(["bench", "native-server", &native_port.to_string()])
            .spawn()?,
    );
    wait_for_port(native_addr, "the native hyper server")?;

    let serve = |component: &Path, extra: &[&str]| -> Result<(Killed, SocketAddr)> {
        let addr: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
        let process = Killed(
            Command::new(&wasmtime)
                .args(["serve", "-S", "cli=y"])
                .args(extra)
                .args(["--addr", &addr.to_string()])
                .arg(component)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("cannot start wasmtime serve")?,
        );
        wait_for_port(addr, "wasmtime serve")?;
        Ok((process, addr))
    };
    let (serve_p2, serve_p2_addr) = serve(&hello, &[])?;
    let (serve_p2_reuse, serve_p2_reuse_addr) = serve(&hello, &["--max-instance-reuse-count", "128"])?;
    // WASI 0.3 in wasmtime 48's CLI: component-model async and the p3 interfaces; its reuse
    // defaults for WASI 0.3 (128 in all, 16 at once) are Spin 4's and Mosaic's.
    let (serve_p3, serve_p3_addr) = serve(&hello_p3, &["-W", "component-model-async=y", "-S", "p3=y"])?;

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
    // The same app on a second host that exports its spans over OTLP to a port nothing listens
    // on: every span is dropped and counted, and requests must not pay for it.
    let otlp_down_addr: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let otlp_down_port = free_port()?;
    let host_otlp_down = Killed(
        Command::new(&mosaic)
            .current_dir(&work)
            .env("MOSAIC_LOG", "error")
            .env(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://127.0.0.1:{otlp_down_port}"),
            )
            .args([
                "--state-dir",
                ".mosaic-otlp-down",
                "up",
                "--listen",
                &otlp_down_addr.to_string(),
            ])
            .stdout(Stdio::null())
            .spawn()
            .context("cannot start mosaic (OTLP export)")?,
    );
    wait_for_port(otlp_down_addr, "mosaic (OTLP export)")?;

    let targets = [
        Target {
            name: MOSAIC_P2,
            addr: mosaic_addr,
            path: "/",
            pid: host.0.id(),
        },
        Target {
            name: MOSAIC_P2_OTLP_DOWN,
            addr: otlp_down_addr,
            path: "/",
            pid: host_otlp_down.0.id(),
        },
        Target {
            name: WASMTIME_P2,
            addr: serve_p2_addr,
            path: "/",
            pid: serve_p2.0.id(),
        },
        Target {
            name: MOSAIC_P2_REUSE,
            addr: mosaic_addr,
            path: "/reused/",
            pid: host.0.id(),
        },
        Target {
            name: WASMTIME_P2_REUSE,
            addr: serve_p2_reuse_addr,
            path: "/",
            pid: serve_p2_reuse.0.id(),
        },
        Target {
            name: MOSAIC_P3,
            addr: mosaic_addr,
            path: "/p3/hello",
            pid: host.0.id(),
        },
        Target {
            name: WASMTIME_P3,
            addr: serve_p3_addr,
            path: "/hello",
            pid: serve_p3.0.id(),
        },
        Target {
            name: NATIVE,
            addr: native_addr,
            path: "/",
            pid: native.0.id(),
        },
    ];
    let measure = |target: &Target, rows: &mut Vec<_>| -> Result<()> {
        for connections in CONNECTIONS {
            runtime.block_on(load_get(&[target.addr], target.path, connections, WARMUP))?;
            let before = (Instant::now(), cpu_snapshot(&[target.pid])?);
            let stats = runtime.block_on(load_get(&[target.addr], target.path, connections, MEASURE))?;
            let cpu = CpuUse::between(&before, &(Instant::now(), cpu_snapshot(&[target.pid])?), stats.requests);
            eprintln!(
                "{:<58} c={connections:<3} {}  ({} requests, {} errors, server {:.1} µs CPU a request)",
                target.name,
                rate_progress(&stats),
                stats.requests,
                stats.errors,
                cpu.host_us_per_request
            );
            rows.push((target.name, connections, stats, cpu));
        }
        Ok(())
    };
    for target in &targets {
        measure(target, &mut rows)?;
    }
    drop((serve_p2, serve_p2_reuse, serve_p3, host_otlp_down));
    drop(native);

    let (cold, warm) = runtime.block_on(swap_latency(&work, mosaic_addr, &probe, &probe_v2))?;

    // The cost of a canary split on the request path (after the swaps, which need v2's
    // artifact out of the cache): each version alone (v1 is live after the last swap), then v1
    // with a 50% canary of v2 taking half of the requests. Without a cost of its own, the split
    // serves as the even mix of the two versions alone would.
    let probe_target = |name| Target {
        name,
        addr: mosaic_addr,
        path: "/probe/hello",
        pid: host.0.id(),
    };
    measure(&probe_target(MOSAIC_PROBE_V1), &mut rows)?;
    let (admin, token) = admin_endpoint(&work.join(".mosaic"))?;
    let v2 = Bytes::from(std::fs::read(&probe_v2)?);
    runtime.block_on(admin_call(admin, &token, "/v1/components/probe/deploy", v2.clone()))?;
    measure(&probe_target(MOSAIC_PROBE_V2), &mut rows)?;
    runtime.block_on(admin_call(admin, &token, "/v1/components/probe/rollback", Bytes::new()))?;
    runtime.block_on(admin_call(admin, &token, "/v1/components/probe/deploy?canary=50", v2))?;
    measure(&probe_target(MOSAIC_CANARY), &mut rows)?;
    runtime.block_on(admin_call(admin, &token, "/v1/components/probe/rollback", Bytes::new()))?;
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
    // (requests/s, server CPU µs a request) of one row; 0 for a row that is missing.
    let figures = |name: &str, c: usize| {
        rows.iter()
            .find(|(n, conns, _, _)| *n == name && *conns == c)
            .map_or((0.0, 0.0), |(_, _, stats, cpu)| (stats.rps, cpu.host_us_per_request))
    };
    let throughput = |name: &str, c: usize| figures(name, c).0;
    let server_cpu = |name: &str, c: usize| figures(name, c).1;
    let mut table = String::new();
    table.push_str(
        "| server | connections | requests/s | p50 | p99 | errors | server CPU a request | load generator |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (name, connections, stats, cpu) in &rows {
        table.push_str(&format!(
            "| {name} | {connections} | {} | {} | {:.1} µs | {:.2} cores |\n",
            rate_cells(stats, 3),
            stats.errors,
            cpu.host_us_per_request,
            cpu.generator_cores
        ));
    }
    let ratio = |a: &str, b: &str, c: usize| throughput(a, c) / throughput(b, c).max(1.0);
    let mut ratios = String::new();
    let cpu_ratio = |a: &str, b: &str| server_cpu(a, 32) / server_cpu(b, 32).max(1e-9);
    ratios.push_str(&format!(
        "- server CPU a request at 32 connections, Mosaic / wasmtime serve: WASI 0.2 fresh {:.2}x, \
         WASI 0.2 with reuse {:.2}x, WASI 0.3 {:.2}x (below 1: Mosaic spends less)\n",
        cpu_ratio(MOSAIC_P2, WASMTIME_P2),
        cpu_ratio(MOSAIC_P2_REUSE, WASMTIME_P2_REUSE),
        cpu_ratio(MOSAIC_P3, WASMTIME_P3),
    ));
    for c in CONNECTIONS {
        ratios.push_str(&format!(
            "- {c} connection(s): WASI 0.2 Mosaic / wasmtime serve = {:.2}x; with reuse {:.2}x; \
             WASI 0.3 Mosaic / wasmtime serve = {:.2}x; Mosaic WASI 0.3 / Mosaic WASI 0.2 fresh = {:.2}x; \
             Mosaic WASI 0.2 / native = {:.2}x\n",
            ratio(MOSAIC_P2, WASMTIME_P2, c),
            ratio(MOSAIC_P2_REUSE, WASMTIME_P2_REUSE, c),
            ratio(MOSAIC_P3, WASMTIME_P3, c),
            ratio(MOSAIC_P3, MOSAIC_P2, c),
            ratio(MOSAIC_P2, NATIVE, c),
        ));
    }
    ratios.push_str(&format!(
        "- OTLP export to an endpoint that is down / no export (WASI 0.2 fresh): requests/s {:.2}x at 1 \
         connection, {:.2}x at 32; server CPU a request at 32 connections {:.2}x\n",
        ratio(MOSAIC_P2_OTLP_DOWN, MOSAIC_P2, 1),
        ratio(MOSAIC_P2_OTLP_DOWN, MOSAIC_P2, 32),
        cpu_ratio(MOSAIC_P2_OTLP_DOWN, MOSAIC_P2),
    ));
    // An even mix of v1 and v2 takes the mean time (and CPU) a request of the two: its
    // requests/s is their harmonic mean.
    let mix_throughput = |c: usize| {
        2.0 / (1.0 / throughput(MOSAIC_PROBE_V1, c).max(1.0) + 1.0 / throughput(MOSAIC_PROBE_V2, c).max(1.0))
    };
    let mix_cpu = (server_cpu(MOSAIC_PROBE_V1, 32) + server_cpu(MOSAIC_PROBE_V2, 32)) / 2.0;
    ratios.push_str(&format!(
        "- a 50% canary on the request path, against the even mix of its two versions alone: requests/s \
         {:.2}x at 1 connection, {:.2}x at 32; server CPU a request at 32 connections {:.2}x (1.00x: the \
         split itself costs nothing); v2 alone / v1 alone: requests/s {:.2}x at 32, CPU a request {:.2}x\n",
        throughput(MOSAIC_CANARY, 1) / mix_throughput(1),
        throughput(MOSAIC_CANARY, 32) / mix_throughput(32),
        server_cpu(MOSAIC_CANARY, 32) / mix_cpu.max(1e-9),
        ratio(MOSAIC_PROBE_V2, MOSAIC_PROBE_V1, 32),
        cpu_ratio(MOSAIC_PROBE_V2, MOSAIC_PROBE_V1),
    ));
    let swap = format!(
        "| artifact cache | samples | median | min | max |\n|---|---:|---:|---:|---:|\n{}{}",
        swap_row("cold (compile)", &cold),
        swap_row("warm (cached)", &warm),
    );
    let report = format!(
        "# Benchmarks\n\nWritten by `cargo xtask bench http` (do not edit by hand). One run, on this machine: {cpu}, {cores} cores shared by the load generator and the server.\n\n\
         ## HTTP: one hello component\n\nWASI 0.2: the same component (`components/hello`, spin-sdk 5.2, `GET /` answers a short text) under Mosaic (release build) and `wasmtime serve -S cli=y` of wasmtime {version}, with a fresh instance per request (both servers' default) and with instance reuse (Mosaic: `[instance_reuse.NAME] max_instance_reuse_count = 128`; wasmtime: `--max-instance-reuse-count 128`). WASI 0.3: the spin-sdk 7 fixture (`tests/fixtures/spin7`, `GET /hello`) under both, with their default reuse (128 requests per instance, 16 at once). A native hyper hello is the ceiling. The OTLP row: the WASI 0.2 hello on a second Mosaic host whose `OTEL_EXPORTER_OTLP_ENDPOINT` names a port nothing listens on (every span dropped and counted). The canary rows: the probe fixture (`GET /probe/hello`), v1 alone, v2 alone (a deploy), then v1 with a 50% canary of v2 (`deploy --canary 50`), which takes half of the requests; the split is compared with the even mix of the two versions alone. Closed-loop HTTP/1.1 keep-alive load from a Rust client on loopback, {warm}s warm-up then {measure}s measured per row. Server CPU a request: the server process's user and kernel time (/proc) over the measured seconds, divided by the requests it answered; it is what the server spends whatever the load generator leaves it, so it compares servers more steadily than requests/s on 2 shared cores.\n\n{table}\n{ratios}\n\
         ## Swap latency\n\nOn the probe fixture (`tests/fixtures/probe`, {probe_kb} KB, v1 and v2): from the start of the deploy call (`POST /v1/components/probe/deploy` with the file) until a request answers from the new version, {SWAP_SAMPLES} samples each. Cold: the new version's compiled artifact was removed from the cache first; warm: the artifact was cached.\n\n{swap}",
        probe_kb = size_kb(&probe),
        cores = cores(),
        warm = WARMUP.as_secs(),
        measure = MEASURE.as_secs(),
    );
    // The sections after it are other benchmarks'.
    write_head(root, "## Swap latency", &report)
}

pub(super) fn wasmtime_version(root: &Path) -> Result<String> {
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
pub(super) fn wasmtime_cli(root: &Path) -> Result<PathBuf> {
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

/// A row of the swap latency table: `| label | samples | median | min | max |`.
fn swap_row(label: &str, samples: &[f64]) -> String {
    format!(
        "| {label} | {} | {:.1} ms | {:.1} ms | {:.1} ms |\n",
        samples.len(),
        median(samples),
        samples.iter().cloned().fold(f64::MAX, f64::min),
        samples.iter().cloned().fold(0.0, f64::max),
    )
}

fn median(samples: &[f64]) -> f64 {
    let mut sorted = samples.to_vec();
    sorted.sort_by(|a, b| a.total_cmp(b));
    sorted.get(sorted.len() / 2).copied().unwrap_or(0.0)
}

/// Deploys alternately v2 (artifact removed first: cold) and v1 (cached since start-up:
/// warm), timing each from the deploy call until the new version answers.
pub(super) async fn swap_latency(work: &Path, app: SocketAddr, v1: &Path, v2: &Path) -> Result<(Vec<f64>, Vec<f64>)> {
    let state = work.join(".mosaic");
    let (admin, token) = admin_endpoint(&state)?;
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
                let body = body_of(app, "/probe/hello").await?;
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
pub(super) fn native_server(port: u16) -> Result<()> {
    let runtime = runtime()?;
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
