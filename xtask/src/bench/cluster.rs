use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use bytes::Bytes;
use http_body_util::Full;

use super::client::{admin_call, connect, exchange, wait_for_body};
use super::cpu::{cpu_snapshot, CpuUse};
use super::load::{load_get, Stats};
use super::report::{cores, rate_cells, rate_progress, size_kb, write_section};
use super::{
    admin_endpoint, build_release_host, require_reachable, runtime, start_mosaic, unique_namespace, MEASURE, WARMUP,
};

/// `cargo xtask bench cluster`: one application on 1, 2 and 3 hosts of one cluster (PostgreSQL
/// on loopback as the store), total requests/s with the load spread over the hosts; then, at 3
/// hosts, the time a deploy through host 1 takes until every host answers the new version.
/// Writes its section of bench/README.md.
pub(super) fn run(root: &Path) -> Result<()> {
    const HOSTS: usize = 3;
    const CLUSTER_CONNECTIONS: usize = 32;
    const RECONCILE_INTERVAL_MS: u64 = 2_000;
    const HOST_TIMEOUT_MS: u64 = 10_000;
    const STORE: &str = "host=127.0.0.1 user=postgres dbname=test";
    const PATH: &str = "/probe/hello";
    const V1: &str = "hello from probe v1";
    const V2: &str = "hello from probe v2";
    /// Bounds a host's start-up and the rollout.
    const BOUND: Duration = Duration::from_secs(120);
    let begun = Instant::now();
    require_reachable("PostgreSQL", ([127, 0, 0, 1], 5432).into())?;
    build_release_host(root)?;
    let fixtures = root.join("target/fixtures");
    let v2_file = fixtures.join("probe-v2.wasm");
    let manifest = format!(
        "spin_manifest_version = 2\n[application]\nname = \"bench-cluster\"\n\
         [[trigger.http]]\nroute = \"/probe/...\"\ncomponent = \"probe\"\n\
         [component.probe]\nsource = \"{}\"\n",
        fixtures.join("probe.wasm").display()
    );
    // This run's desired versions stay apart from earlier runs' in the shared database.
    let namespace = unique_namespace()?;
    let settings = format!(
        "[cluster]\nnamespace = \"{namespace}\"\nreconcile_interval_ms = {RECONCILE_INTERVAL_MS}\n\
         host_timeout_ms = {HOST_TIMEOUT_MS}\n"
    );
    let runtime = runtime()?;
    let measure = |addrs: &[SocketAddr], pids: &[u32], label: &str| -> Result<(Stats, CpuUse)> {
        let load = |duration| runtime.block_on(load_get(addrs, PATH, CLUSTER_CONNECTIONS, duration));
        load(WARMUP)?;
        let before = (Instant::now(), cpu_snapshot(pids)?);
        let stats = load(MEASURE)?;
        let cpu = CpuUse::between(&before, &(Instant::now(), cpu_snapshot(pids)?), stats.requests);
        if stats.errors > 0 {
            bail!(
                "{label}: {} failed requests, the first: {}",
                stats.errors,
                stats.first_error.unwrap_or_default()
            );
        }
        let [hosts, kernel, generator, others, idle, per_request, per_request_kernel] = cpu.figures();
        eprintln!(
            "{label:<22} c={CLUSTER_CONNECTIONS} {}  ({} requests); hosts {hosts} cores (kernel {kernel}), load generator \
             {generator}, others {others}, idle {idle}%; host CPU {per_request} us/request (kernel {per_request_kernel})",
            rate_progress(&stats),
            stats.requests,
        );
        Ok((stats, cpu))
    };

    // The baseline: the same host alone, without --cluster.
    let (alone, addr) = start_mosaic(root, "cluster-alone", &manifest, None, None, &[])?;
    runtime.block_on(wait_for_body(addr, PATH, V1, BOUND))?;
    let (baseline, _) = measure(&[addr], &[alone.0.id()], "alone (no cluster)")?;
    drop(alone);

    // The hosts join one after the other; each row loads the hosts up at that point.
    let mut hosts = Vec::new();
    let mut rows: Vec<(usize, Stats, CpuUse)> = Vec::new();
    for n in 1..=HOSTS {
        let name = format!("cluster-{n}");
        let (host, addr) = start_mosaic(
            root,
            &name,
            &manifest,
            None,
            Some(&settings),
            &["--config", "mosaic.toml", "--cluster", STORE, "--state-dir", "state"],
        )?;
        runtime.block_on(wait_for_body(addr, PATH, V1, BOUND))?;
        hosts.push((host, addr, root.join("target/bench").join(&name).join("state")));
        let addrs: Vec<SocketAddr> = hosts.iter().map(|(_, addr, _)| *addr).collect();
        let pids: Vec<u32> = hosts.iter().map(|(host, _, _)| host.0.id()).collect();
        let (stats, cpu) = measure(&addrs, &pids, &format!("{n} host(s)"))?;
        rows.push((n, stats, cpu));
    }

    let addrs: Vec<SocketAddr> = hosts.iter().map(|(_, addr, _)| *addr).collect();
    let (admin, token) = admin_endpoint(&hosts[0].2)?;
    let v2 = Bytes::from(std::fs::read(&v2_file).with_context(|| format!("cannot read {}", v2_file.display()))?);
    let rollout = runtime.block_on(rollout(admin, &token, v2, &addrs, PATH, V2, BOUND))?;
    drop(hosts);
    let ms = |duration: Duration| duration.as_secs_f64() * 1000.0;
    let requests: u64 = rollout.watched.iter().map(|w| w.requests).sum();
    let non_200: u64 = rollout.watched.iter().map(|w| w.non_200).sum();
    let unanswered: u64 = rollout.watched.iter().map(|w| w.unanswered).sum();
    let back_to_old: u64 = rollout.watched.iter().map(|w| w.back_to_old).sum();
    let mut per_host = Vec::new();
    for (i, watched) in rollout.watched.iter().enumerate() {
        let Some(at) = watched.converged_after else {
            bail!(
                "host {} never answered v2 within {BOUND:?} of the deploy; the first error: {}",
                i + 1,
                watched.first_error.clone().unwrap_or_default()
            );
        };
        per_host.push(format!("host {}: {:.0} ms", i + 1, ms(at)));
    }
    let everywhere = rollout
        .watched
        .iter()
        .filter_map(|w| w.converged_after)
        .max()
        .unwrap_or_default();
    eprintln!(
        "rollout: every host answers v2 after {:.0} ms ({}; deploy call {:.0} ms); {requests} polls, {non_200} non-200, \
         {unanswered} unanswered, {back_to_old} old after new",
        ms(everywhere),
        per_host.join(", "),
        ms(rollout.deploy_call)
    );
    if let Some(error) = rollout.watched.iter().find_map(|w| w.first_error.clone()) {
        eprintln!("rollout: the first failed poll: {error}");
    }

    let one = rows[0].1.rps;
    let mut table = String::from(
        "| hosts | connections | requests/s | p50 | p99 | ratio vs 1 host |\n|---:|---:|---:|---:|---:|---:|\n",
    );
    let mut cpu_table = String::from(
        "| hosts | host CPU | of it kernel | load generator CPU | other processes | machine idle | host CPU per request | of it kernel |\n\
         |---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for (n, stats, cpu) in &rows {
        table.push_str(&format!(
            "| {n} | {CLUSTER_CONNECTIONS} | {} | {:.2}x |\n",
            rate_cells(stats, 3),
            stats.rps / one.max(1.0)
        ));
        let [hosts, kernel, generator, others, idle, per_request, per_request_kernel] = cpu.figures();
        cpu_table.push_str(&format!(
            "| {n} | {hosts} cores | {kernel} cores | {generator} cores | {others} cores | {idle}% | {per_request} µs \
             | {per_request_kernel} µs |\n"
        ));
    }
    let spread = |n: usize| {
        (0..n)
            .map(|host| (CLUSTER_CONNECTIONS + n - 1 - host) / n)
            .map(|c| c.to_string())
            .collect::<Vec<_>>()
            .join(" + ")
    };
    let cores = cores();
    let (first_cpu, (last_hosts, last_stats, last_cpu)) = (&rows[0].2, rows.last().expect("three rows"));
    let ratio = last_stats.rps / one.max(1.0);
    let busiest_idle = rows.iter().map(|(_, _, cpu)| cpu.idle).fold(0.0, f64::max);
    let generator = rows.iter().map(|(_, _, cpu)| cpu.generator_cores);
    let (generator_min, generator_max) = generator.fold((f64::MAX, 0.0f64), |(lo, hi), c| (lo.min(c), hi.max(c)));
    let saved = first_cpu.host_us_per_request - last_cpu.host_us_per_request;
    let saved_kernel = first_cpu.host_kernel_us_per_request - last_cpu.host_kernel_us_per_request;
    let why = if ratio > 1.05 && saved > 0.0 {
        format!(
            "{last_hosts} hosts still serve {ratio:.2}x the requests/s of 1 host, because each request costs the hosts \
             less CPU when the connections are spread over processes: {:.0} µs of host CPU per request at 1 host \
             ({:.0} µs of it in the kernel), {:.0} µs at {last_hosts} hosts ({:.0} µs in the kernel); {} of the \
             difference is kernel time. So the ratio measures how one host process fares with {CLUSTER_CONNECTIONS} \
             connections on this machine, not how a cluster scales.",
            first_cpu.host_us_per_request,
            first_cpu.host_kernel_us_per_request,
            last_cpu.host_us_per_request,
            last_cpu.host_kernel_us_per_request,
            if saved_kernel > 0.5 * saved { "most" } else { "less than half" },
        )
    } else {
        format!(
            "{last_hosts} hosts serve {ratio:.2}x the requests/s of 1 host ({:.0} and {:.0} µs of host CPU per \
             request): the processes share the same cores.",
            first_cpu.host_us_per_request, last_cpu.host_us_per_request,
        )
    };
    let difference = (one - baseline.rps) / baseline.rps.max(1.0) * 100.0;
    let overhead = if difference.abs() <= 5.0 {
        format!(
            "Cluster mode adds nothing measurable to the request path: 1 cluster host and the host alone differ by \
             {difference:+.1}%."
        )
    } else {
        format!(
            "1 cluster host served {:.1}% {} than the host alone, more than the few % that separate two runs.",
            difference.abs(),
            if difference < 0.0 {
                "fewer requests/s"
            } else {
                "more requests/s"
            }
        )
    };
    let others = rows.iter().map(|(_, _, cpu)| cpu.others_cores).fold(0.0, f64::max);
    let quiet = if others > 0.1 {
        format!(
            "**Not a quiet machine:** other processes took up to {others:.2} cores during a measured row of this run, so \
             the rows are not comparable with each other; run the benchmark again with nothing else running.\n\n"
        )
    } else {
        String::new()
    };
    let statements_per_s = |hosts: usize| hosts as f64 * 2.0 * 1000.0 / RECONCILE_INTERVAL_MS as f64;
    let section = format!(
        "## Cluster: 1, 2 and 3 hosts\n\nWritten by `cargo xtask bench cluster`. One application (the probe fixture; \
         `GET {PATH}` answers a short text) on 1, 2 and 3 Mosaic hosts (release build) of one cluster, each its own process \
         `mosaic up --cluster \"{STORE}\" --config mosaic.toml --state-dir DIR --listen 127.0.0.1:PORT` with \
         `[cluster] namespace = \"{namespace}\"` (new for each run), `reconcile_interval_ms = {RECONCILE_INTERVAL_MS}`, \
         `host_timeout_ms = {HOST_TIMEOUT_MS}`; the store is PostgreSQL on loopback. The hosts join one after the other, \
         and each row loads the hosts up at that point: {CLUSTER_CONNECTIONS} closed-loop HTTP/1.1 keep-alive connections \
         given to the hosts in turn (connection i to host i mod N: {}; {}; {}), {}s warm-up then {}s measured. Every \
         request answered 200. For reference, the same host alone (no `--cluster`): {:.0} requests/s, p50 {:.3} ms, \
         p99 {:.3} ms.\n\n{table}\n\
         Where the CPU went in each measured {}s (from /proc: user and kernel time of the host processes and of the load \
         generator, the benchmark's own process; busy and idle time of the machine):\n\n{cpu_table}\n{quiet}\
         **Rollout at {HOSTS} hosts.** `POST /v1/components/probe/deploy` of probe v2 ({} KB) through host 1's admin API, \
         while one connection per host polls `GET {PATH}` in a closed loop: every host answered v2 **{:.0} ms** after the \
         deploy call started ({}; the deploy call itself returned after {:.0} ms). Host 1 runs the whole pipeline before \
         the new desired version goes to the store; the others hear the `NOTIFY`, fetch the source from PostgreSQL by \
         digest and compile it themselves (each host has its own artifact cache, and v2 was new to all of them), on the \
         same cores that serve the polls. During the rollout the pollers sent {requests} requests: **{non_200} non-200 \
         answers**, {unanswered} requests without an answer, {back_to_old} answers of v1 from a host that had already \
         answered v2.\n\n\
         **What this shows, and what it does not.** All hosts and the load generator share this machine's {cores} cores, \
         so more hosts cannot add CPU here: in every row the machine was at most {:.0}% idle. {why} {overhead}\n\n\
         *Paper estimate, not measured*, for one host per machine of this kind with the load generated elsewhere, \
         behind a load balancer: in cluster mode the request path does not touch PostgreSQL at all (a request runs on \
         the host's own loaded version). PostgreSQL sees only deploys (one transaction writing the desired version and \
         its source, then one read of the source per host) and each host's reconcile every {RECONCILE_INTERVAL_MS} ms \
         (one read of the desired versions and one write of its report, its heartbeat: {:.0} statements/s at 3 hosts, \
         plus one idle `LISTEN` connection per host). That takes nothing measurable from the throughput, so N hosts \
         ≈ N × the 1-host rate: 2 hosts ≈ {:.0}, 3 hosts ≈ {:.0} requests/s. A floor rather than a ceiling: the load \
         generator took {generator_min:.2} to {generator_max:.2} cores here, which a host of its own would have; each \
         host would still carry the per-request cost measured at 1 host, as it runs with threads on all its cores. The \
         limit then moves to the load balancer and the network; PostgreSQL only sets how fast a rollout reaches every \
         host.\n",
        spread(1),
        spread(2),
        spread(3),
        WARMUP.as_secs(),
        MEASURE.as_secs(),
        baseline.rps,
        baseline.p50_us as f64 / 1000.0,
        baseline.p99_us as f64 / 1000.0,
        MEASURE.as_secs(),
        size_kb(&v2_file),
        ms(everywhere),
        per_host.join(", "),
        ms(rollout.deploy_call),
        busiest_idle * 100.0,
        statements_per_s(3),
        2.0 * one,
        3.0 * one,
    );
    eprintln!("bench cluster took {:.0} s", begun.elapsed().as_secs_f64());
    write_section(root, "## Cluster: 1, 2 and 3 hosts", &section)
}

/// What one host answered while a rollout went on.
#[derive(Default)]
pub(super) struct Watched {
    /// From the deploy call's start until the host first answered the new version.
    converged_after: Option<Duration>,
    requests: u64,
    /// Answers with a status other than 200.
    non_200: u64,
    /// Requests that got no (complete) answer: connection or protocol errors.
    unanswered: u64,
    /// Answers of the old version after the host had answered the new one.
    back_to_old: u64,
    first_error: Option<String>,
}

/// What a rollout through one host took.
pub(super) struct Rollout {
    deploy_call: Duration,
    /// Per host, in the order of `hosts`.
    watched: Vec<Watched>,
}

/// Deploys `file` as the probe through the admin API at `admin`, while one connection per host
/// polls `path` in a closed loop, until every host answered `new_body` (or `bound` is over).
pub(super) async fn rollout(
    admin: SocketAddr,
    token: &str,
    file: Bytes,
    hosts: &[SocketAddr],
    path: &'static str,
    new_body: &'static str,
    bound: Duration,
) -> Result<Rollout> {
    let converged = Arc::new(AtomicUsize::new(0));
    let deadline = Instant::now() + bound;
    let started = Arc::new(Mutex::new(None::<Instant>));
    let pollers: Vec<_> = hosts
        .iter()
        .map(|&addr| {
            tokio::spawn(watch_version(
                addr,
                path,
                new_body,
                converged.clone(),
                hosts.len(),
                started.clone(),
                deadline,
            ))
        })
        .collect();
    // Every poller is under way (and sees the old version) before the deploy starts.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let begun = Instant::now();
    *started.lock().expect("deploy start") = Some(begun);
    let deployed = admin_call(admin, token, "/v1/components/probe/deploy", file).await;
    let deploy_call = begun.elapsed();
    if deployed.is_err() {
        // Stops the pollers.
        converged.fetch_add(hosts.len(), Ordering::Relaxed);
    }
    let mut watched = Vec::new();
    for poller in pollers {
        watched.push(poller.await?);
    }
    deployed?;
    Ok(Rollout { deploy_call, watched })
}

/// One rollout poller: `GET path` on `addr` over a keep-alive connection, again and again, until
/// every one of the `hosts` pollers saw `new_body` (counted in `converged`) or `deadline`.
pub(super) async fn watch_version(
    addr: SocketAddr,
    path: &'static str,
    new_body: &'static str,
    converged: Arc<AtomicUsize>,
    hosts: usize,
    started: Arc<Mutex<Option<Instant>>>,
    deadline: Instant,
) -> Watched {
    let mut watched = Watched::default();
    let going = || converged.load(Ordering::Relaxed) < hosts && Instant::now() < deadline;
    'connect: while going() {
        let mut sender = match connect(addr).await {
            Ok(sender) => sender,
            Err(err) => {
                watched.unanswered += 1;
                watched.first_error.get_or_insert(err);
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        while going() {
            let request = hyper::Request::get(path)
                .header(http::header::HOST, addr.to_string())
                .body(Full::new(Bytes::new()))
                .expect("static request");
            let answer = exchange(&mut sender, request).await;
            watched.requests += 1;
            let (status, body) = match answer {
                Ok(answer) => answer,
                Err(err) => {
                    watched.unanswered += 1;
                    watched
                        .first_error
                        .get_or_insert_with(|| format!("GET {addr}{path}: {err}"));
                    continue 'connect;
                }
            };
            if status != http::StatusCode::OK {
                watched.non_200 += 1;
                watched
                    .first_error
                    .get_or_insert_with(|| format!("GET {addr}{path}: {status} {}", String::from_utf8_lossy(&body)));
                continue;
            }
            if body == new_body.as_bytes() {
                if watched.converged_after.is_none() {
                    let begun = started.lock().expect("deploy start").unwrap_or_else(Instant::now);
                    watched.converged_after = Some(begun.elapsed());
                    converged.fetch_add(1, Ordering::Relaxed);
                }
            } else if watched.converged_after.is_some() {
                watched.back_to_old += 1;
            }
        }
    }
    watched
}
