//! A running Mosaic host: loads the manifest, restores every component (the journal's last
//! version, or the manifest's source when that changed), serves HTTP and the admin API, and
//! shuts down gracefully.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::Context;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::app::manifest::Manifest;
use crate::app::runtime_config::RuntimeConfig;
use crate::app::App;
use crate::capability::http_outbound::OutboundPolicies;
use crate::capability::key_value::KeyValueStores;
use crate::capability::messaging::Messaging;
use crate::capability::mqtt::Mqtt;
use crate::capability::mysql::MysqlPools;
use crate::capability::otel::Otel;
use crate::capability::postgres::PgPools;
use crate::capability::redis_client::{Redis, RedisClients};
use crate::capability::sqlite::Databases;
use crate::capability::unsupported::NoBackend;
use crate::capability::variables::ApplicationVariables;
use crate::deploy::journal::{self, Action};
use crate::deploy::{DeployRequest, Pipeline};
use crate::digest::Digest;
use crate::engine::{build_engine, EpochTicker};
use crate::instance::{Capabilities, InstanceFactory};
use crate::rollout::Rollout;
use crate::settings::Settings;
use crate::state::{AdminEndpoint, StateDir};
use crate::trigger::probe::TriggerProbe;
use crate::trigger::Dispatcher;

#[derive(Debug, Clone, Default)]
pub struct HostOptions {
    pub manifest: PathBuf,
    /// Overrides `http.listen` of mosaic.toml.
    pub listen: Option<SocketAddr>,
    /// Overrides `admin.listen` of mosaic.toml.
    pub admin_listen: Option<SocketAddr>,
    /// Defaults to `.mosaic/` beside the manifest.
    pub state_dir: Option<PathBuf>,
    /// Replaces mosaic.toml entirely (tests use this).
    pub settings: Option<Settings>,
    pub runtime_config_file: Option<PathBuf>,
    /// Overrides `cluster.postgres` of mosaic.toml: join the cluster whose store this is.
    pub cluster: Option<String>,
    /// What `spin up`'s flags change for this run (`mosaic up` takes them too).
    pub run: RunOptions,
}

impl HostOptions {
    /// The manifest, with only the components of `-c` when it names some.
    fn load_manifest(&self) -> anyhow::Result<Manifest> {
        let mut manifest = Manifest::load(&self.manifest)?;
        if !self.run.components.is_empty() {
            manifest
                .retain_components(&self.run.components)
                .map_err(anyhow::Error::msg)?;
        }
        Ok(manifest)
    }

    /// The settings given, or mosaic.toml beside the manifest; checked.
    fn load_settings(&self) -> anyhow::Result<Settings> {
        let settings = match &self.settings {
            Some(settings) => settings.clone(),
            None => Settings::load_beside(&self.manifest)?,
        };
        settings
            .check()
            .map_err(|message| anyhow::anyhow!("invalid Mosaic settings: {message}"))?;
        Ok(settings)
    }

    fn load_runtime_config(&self) -> anyhow::Result<RuntimeConfig> {
        match &self.runtime_config_file {
            Some(path) => RuntimeConfig::load(path).map_err(anyhow::Error::msg),
            None => Ok(RuntimeConfig::default()),
        }
    }

    /// `--state-dir`, or `.mosaic/` beside the manifest.
    fn state_root(&self) -> PathBuf {
        self.state_dir
            .clone()
            .unwrap_or_else(|| StateDir::beside(&self.manifest))
    }
}

/// `spin up`'s flags that change one run of the application, never its files.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// `--variable NAME=VALUE`: application variables, over `SPIN_VARIABLE_*` and defaults.
    pub variables: std::collections::BTreeMap<String, String>,
    /// `-e NAME=VALUE`: set in every component's environment (over the manifest's).
    pub environment: Vec<(String, String)>,
    /// `-c ID`: serve only these components (empty: all).
    pub components: Vec<String>,
    /// `--key-value KEY=VALUE`: set in the default key-value store before anything runs.
    pub key_values: Vec<(String, String)>,
    /// `--sqlite STATEMENT`: run, in order, on the default SQLite database before anything runs.
    pub sqlite_statements: Vec<String>,
    /// `--find-free-port`: when the HTTP listen address is taken, the next free port.
    pub find_free_port: bool,
    /// `--tls-cert`, `--tls-key`: serve HTTPS with this certificate chain and key (PEM).
    pub tls: Option<crate::listener::TlsFiles>,
}

/// How long a stopping host waits for the OTLP endpoint to take the last spans.
const TELEMETRY_FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(2);

pub struct Host {
    app: Arc<App>,
    pipeline: Pipeline,
    rollout: Rollout,
    http_addr: SocketAddr,
    admin_addr: SocketAddr,
    admin_token: String,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    telemetry: Telemetry,
    _ticker: EpochTicker,
}

/// The OTLP exporters a host runs (each `None` when its signal is not exported).
struct Telemetry {
    spans: crate::observe::Spans,
    metrics: Option<Arc<crate::observe::MetricExport>>,
    logs: Option<Arc<crate::observe::LogExport>>,
    counters: Arc<crate::observe::TelemetryCounters>,
}

/// Starts the exporters `[telemetry]` and the `OTEL_*` variables ask for; the log export is
/// armed at once, so that the host's own start is in it.
fn start_telemetry(settings: &Settings, app_name: &str) -> anyhow::Result<Telemetry> {
    let counters = Arc::new(crate::observe::TelemetryCounters::default());
    let mut telemetry = Telemetry {
        spans: crate::observe::Spans::default(),
        metrics: None,
        logs: None,
        counters: counters.clone(),
    };
    let failed = |message: String| anyhow::anyhow!("telemetry: {message}");
    let Some(config) = settings
        .telemetry
        .resolve(|name| std::env::var(name).ok(), app_name)
        .map_err(failed)?
    else {
        return Ok(telemetry);
    };
    if let Some(target) = &config.traces {
        telemetry.spans = crate::observe::Spans::export(target, &config, counters.traces.clone()).map_err(failed)?;
    }
    if let Some(target) = &config.metrics {
        telemetry.metrics = Some(Arc::new(
            crate::observe::MetricExport::new(target, &config, counters.metrics.clone()).map_err(failed)?,
        ));
    }
    if let Some(target) = &config.logs {
        let logs = crate::observe::LogExport::start(target, &config, counters.logs.clone()).map_err(failed)?;
        crate::observe::arm_log_export(&logs);
        telemetry.logs = Some(logs);
    }
    Ok(telemetry)
}

/// Exports the metrics every interval until the host stops (the last export is
/// [`Host::shutdown`]'s, once the requests have drained).
async fn export_metrics_until_stopped(
    export: Arc<crate::observe::MetricExport>,
    app: Arc<App>,
    mut stopped: watch::Receiver<bool>,
) {
    let mut ticks = tokio::time::interval(export.interval());
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // The first tick is at once: skip it, the host has served nothing yet.
    ticks.tick().await;
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            _ = stopped.wait_for(|stop| *stop) => return,
        }
        let (in_flight, pending) = app.metric_gauges().await;
        export.export(&app.metrics, &in_flight, &pending).await;
    }
}

impl Host {
    pub async fn start(options: HostOptions) -> anyhow::Result<Host> {
        let mut manifest = options.load_manifest()?;
        let run = &options.run;
        for decl in manifest.components.values_mut() {
            decl.environment.extend(run.environment.iter().cloned());
        }
        if let Some(unknown) = run
            .variables
            .keys()
            .find(|name| !manifest.variables.contains_key(*name))
        {
            let declared: Vec<&str> = manifest.variables.keys().map(String::as_str).collect();
            anyhow::bail!(
                "--variable {unknown}: the application declares no variable `{unknown}` in [variables] (it declares: {})",
                if declared.is_empty() { "none".to_string() } else { declared.join(", ") }
            );
        }
        let tls = match &run.tls {
            Some(files) => Some(crate::listener::tls_acceptor(files)?),
            None => None,
        };
        let mut settings = options.load_settings()?;
        if let Some(listen) = options.listen {
            settings.http.listen = listen;
        }
        if let Some(listen) = options.admin_listen {
            settings.admin.listen = listen;
        }
        if let Some(cluster) = options.cluster.clone() {
            settings.cluster.postgres = Some(cluster);
        }
        let runtime_config = options.load_runtime_config()?;
        if !manifest.ignored_keys.is_empty() {
            tracing::warn!(
                manifest = %options.manifest.display(),
                "Mosaic does not use these keys of the manifest, and ignoring them changes nothing it runs: {}",
                manifest.ignored_keys.join(", ")
            );
        }
        for trigger_type in &manifest.other_trigger_types {
            tracing::warn!(trigger = %trigger_type, "Mosaic runs HTTP, Redis (message) and MQTT triggers only; `[[trigger.{trigger_type}]]` entries are not run");
        }
        let state_root = options.state_root();
        let state = StateDir::open(state_root.clone())
            .with_context(|| format!("cannot create the state directory {}", state_root.display()))?;

        if let Ok(running) = state.read_endpoint() {
            let alive = running.pid != std::process::id() && Path::new(&format!("/proc/{}", running.pid)).exists();
            if alive {
                anyhow::bail!(
                    "another Mosaic host (pid {}) is serving from the state directory {} (admin API on {}); \
                     stop it first, or give this one its own --state-dir",
                    running.pid,
                    state.root().display(),
                    running.addr
                );
            }
        }
        let engine = build_engine(&settings.limits)?;
        let ticker = EpochTicker::start(&engine);
        let linker = crate::instance::build_linker(&engine)?;
        let telemetry = start_telemetry(&settings, &manifest.application.name)?;
        let metrics = Arc::new(crate::observe::Metrics::with_telemetry(
            telemetry.spans.clone(),
            telemetry.counters.clone(),
        ));
        let capabilities = build_capabilities(
            &manifest,
            &options.manifest,
            &settings,
            runtime_config,
            &state,
            &metrics,
            &options.run.variables,
        )
        .await?;
        seed(&capabilities, &options.run).await?;
        let instances = InstanceFactory {
            engine,
            limits: settings.limits.clone(),
            capabilities: Arc::new(capabilities),
            metrics,
        };
        let app = Arc::new(App::new(linker, settings.clone(), manifest, state, instances));
        let dispatcher = Dispatcher::new(app.clone());
        let pipeline = Pipeline::new(app.clone(), Arc::new(TriggerProbe(dispatcher.clone())));
        restore(&pipeline).await?;
        pipeline.probe_live_versions().await;

        let http_listener = bind_http(settings.http.listen, options.run.find_free_port).await?;
        let admin_listener = TcpListener::bind(settings.admin.listen).await.with_context(|| {
            format!(
                "cannot listen for the admin API on {}; set admin.listen in mosaic.toml",
                settings.admin.listen
            )
        })?;
        let http_addr = http_listener.local_addr()?;
        let admin_addr = admin_listener.local_addr()?;
        let admin_token = app
            .state
            .write_token()
            .context("cannot write the admin token to the state directory")?;
        app.state
            .write_endpoint(&AdminEndpoint {
                addr: admin_addr,
                pid: std::process::id(),
            })
            .context("cannot write the admin endpoint to the state directory")?;

        let (stop, stopped) = watch::channel(false);
        let rollout = match &settings.cluster.postgres {
            Some(_) => {
                let cluster = join_cluster(&pipeline, &settings, http_addr, admin_addr).await?;
                Rollout::clustered(pipeline.clone(), cluster)
            }
            None => Rollout::local(pipeline.clone()),
        };
        let drain = settings.limits.drain_timeout();
        let mut tasks = vec![
            tokio::spawn(crate::trigger::http::serve(
                http_listener,
                tls,
                dispatcher.clone(),
                stopped.clone(),
                drain,
            )),
            tokio::spawn(crate::admin::serve(
                admin_listener,
                rollout.clone(),
                admin_token.clone(),
                stopped.clone(),
            )),
        ];
        tasks.extend(crate::trigger::messages::start(&dispatcher, stopped.clone()));
        tasks.extend(crate::trigger::mqtt::start(&dispatcher, stopped.clone()));
        if let Some(metric_export) = &telemetry.metrics {
            tasks.push(tokio::spawn(export_metrics_until_stopped(
                metric_export.clone(),
                app.clone(),
                stopped.clone(),
            )));
        }
        if let Some(cluster) = rollout.cluster() {
            tasks.extend(cluster.start(&pipeline, stopped));
        }
        tracing::info!(%http_addr, %admin_addr, components = app.slots().len(), "serving");
        Ok(Host {
            app,
            pipeline,
            rollout,
            http_addr,
            admin_addr,
            admin_token,
            stop,
            tasks,
            telemetry,
            _ticker: ticker,
        })
    }

    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }
    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }
    pub fn admin_token(&self) -> &str {
        &self.admin_token
    }
    pub fn app(&self) -> &Arc<App> {
        &self.app
    }
    /// This host's deploy pipeline (deploys on this host alone, even in a cluster).
    pub fn pipeline(&self) -> &Pipeline {
        &self.pipeline
    }
    /// How an operator's deploy reaches the components: this host, or the whole cluster.
    pub fn rollout(&self) -> &Rollout {
        &self.rollout
    }

    /// Stops accepting, lets requests in progress finish (up to the drain deadline), stops.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        // The listeners have drained: the reused instances end now rather than at their idle
        // timeout.
        for slot in self.app.slots() {
            slot.live.load().retire_instances();
            if let Some(canary) = slot.canary.load_full() {
                canary.deployment.retire_instances();
            }
        }
        self.app.metrics.spans().flush(TELEMETRY_FLUSH_TIMEOUT).await;
        if let Some(export) = &self.telemetry.metrics {
            let (in_flight, pending) = self.app.metric_gauges().await;
            let last = export.export(&self.app.metrics, &in_flight, &pending);
            let _ = tokio::time::timeout(TELEMETRY_FLUSH_TIMEOUT, last).await;
        }
        self.app.state.clear_endpoint();
        tracing::info!("stopped");
        if let Some(logs) = &self.telemetry.logs {
            logs.flush(TELEMETRY_FLUSH_TIMEOUT).await;
            crate::observe::disarm_log_export(logs);
        }
    }
}

/// What `mosaic migrate` applied to one component's database.
#[derive(Debug, Clone)]
pub struct Migrated {
    pub component: String,
    /// `SQLite`, `PostgreSQL`, `MySQL`, or `none` for a component without migrations.
    pub database: &'static str,
    pub applied: Vec<String>,
}

/// `mosaic migrate`: applies every component's `migrations/<component>/` to its database, as
/// `mosaic up` does before it serves, and runs nothing else (no component is loaded, no broker
/// opened). The databases are where `mosaic up` with the same options finds them: a runtime
/// config's `[sqlite_database.LABEL] path`, else the state directory; `[migrations.NAME]` of
/// the settings for PostgreSQL and MySQL. Stops at the first failure, which names the file.
pub async fn migrate(options: HostOptions) -> anyhow::Result<Vec<Migrated>> {
    let manifest = options.load_manifest()?;
    let settings = options.load_settings()?;
    let runtime_config = options.load_runtime_config()?;
    let state_root = options.state_root();
    let metrics: Arc<crate::observe::Metrics> = Arc::default();
    let sqlite = Databases::new(
        runtime_config.sqlite_databases,
        state_root.join("sqlite"),
        metrics.clone(),
    );
    let postgres = PgPools::new(metrics.clone());
    let mysql = MysqlPools::new(metrics);
    let backends = crate::app::migrate::MigrationBackends {
        sqlite: &sqlite,
        postgres: &postgres,
        mysql: &mysql,
    };
    let plan = crate::app::migrate::MigrationPlan {
        manifest_dir: &manifest.dir,
        targets: &settings.migrations,
    };
    let mut outcomes = Vec::new();
    for (name, decl) in &manifest.components {
        let (database, applied) = plan
            .apply(&backends, name, &decl.sqlite_databases)
            .await
            .map_err(|err| anyhow::anyhow!("component `{name}`: {err}"))?;
        outcomes.push(Migrated {
            component: name.clone(),
            database,
            applied,
        });
    }
    Ok(outcomes)
}

/// Joins the cluster of `[cluster]` and converges on its desired versions before serving, so a
/// new host never answers with an outdated version.
async fn join_cluster(
    pipeline: &Pipeline,
    settings: &Settings,
    http_addr: SocketAddr,
    admin_addr: SocketAddr,
) -> anyhow::Result<Arc<crate::cluster::Cluster>> {
    let app = pipeline.app();
    let namespace = settings
        .cluster
        .namespace
        .clone()
        .unwrap_or_else(|| app.manifest.application.name.clone());
    let cluster = crate::cluster::Cluster::join(&settings.cluster, &namespace, http_addr, admin_addr)
        .await
        .map_err(|err| anyhow::anyhow!("cannot join the cluster: {err}"))?;
    // Canaries restored from the journal before this line were supervised alone until now; a
    // decision one took in that window is undone by the reconcile below if the cluster differs.
    pipeline.coordinate_canaries_through(cluster.clone());
    if app.capabilities().messaging.broker.kind() == "embedded" {
        tracing::warn!("cluster mode with the embedded broker: each host keeps its own messages (published on one host, handled there only); set [messaging] broker = \"rabbitmq\" or \"nats\" to share them");
    }
    if let Err(err) = cluster.reconcile(pipeline).await {
        tracing::warn!(error = %err, "cannot converge on the cluster's desired versions yet; serving this host's versions and retrying");
    }
    tracing::info!(host = %cluster.host_name(), %namespace, "joined the cluster");
    Ok(cluster)
}

/// Loads every component at start-up. A component whose manifest source is unchanged since the
/// last start comes back as the journal's last version of it (what was deployed or rolled
/// back to); a changed source is a new version and is journaled as such.
async fn restore(pipeline: &Pipeline) -> anyhow::Result<()> {
    let app = pipeline.app().clone();
    let entries = journal::read(&app.state.journal_path()).context("cannot read the deploy journal")?;
    // Canaries in progress come back once every stable version is loaded.
    let mut canaries = Vec::new();
    // The components that run only composed into others first: their dependents are composed
    // with the version of theirs that runs (the journal's, when one was deployed).
    let (dependencies, services): (Vec<&String>, Vec<&String>) = app
        .manifest
        .components
        .keys()
        .partition(|name| app.manifest.is_dependency_only(name));
    for name in dependencies.into_iter().chain(services) {
        let Some(path) = app.manifest.source_path(name) else {
            continue;
        };
        let manifest_bytes = std::fs::read(&path).with_context(|| {
            format!(
                "component `{name}`: cannot read its source {}. Build it first (`mosaic up --build` runs each component's build command)",
                path.display()
            )
        })?;
        let manifest_digest = Digest::of(&manifest_bytes);
        let history = journal::history(&entries, name);
        let manifest_unchanged = history
            .iter()
            .rev()
            .find(|entry| entry.action == Action::Manifest)
            .is_some_and(|entry| entry.digest == manifest_digest);
        let last_journaled = history.last().map(|entry| entry.live_digest().clone());
        if app.manifest.is_dependency_only(name) {
            let journaled = last_journaled
                .filter(|_| manifest_unchanged)
                .and_then(|last| match std::fs::read(app.state.source_of(last.as_str())) {
                    Ok(bytes) => Some(bytes),
                    Err(err) => {
                        tracing::warn!(component = %name, error = %err, "the journal's last version is gone from the state directory; composing with the manifest's source");
                        None
                    }
                });
            pipeline.restore_dependency(name, manifest_bytes, journaled);
            continue;
        }
        let (bytes, record) = match last_journaled {
            Some(last) if manifest_unchanged => match std::fs::read(app.state.source_of(last.as_str())) {
                Ok(bytes) => {
                    if let Some(canary) = journal::canary_in_progress(&history) {
                        canaries.push((name.clone(), canary.clone()));
                    }
                    (bytes, false)
                }
                Err(err) => {
                    tracing::warn!(component = %name, error = %err, "the journal's last version is gone from the state directory; loading the manifest's source");
                    (manifest_bytes, true)
                }
            },
            _ => (manifest_bytes, true),
        };
        load(pipeline, name, bytes, None, record).await?;
    }
    // Components added with `deploy --route` live only in the journal.
    let mut restored = std::collections::HashSet::new();
    for entry in &entries {
        let name = entry.component.as_str();
        if entry.route.is_none() || app.manifest.components.contains_key(name) || !restored.insert(name) {
            continue;
        }
        let history = journal::history(&entries, name);
        let Some(last) = history.last() else { continue };
        let route = history.iter().rev().find_map(|entry| entry.route.clone());
        match std::fs::read(app.state.source_of(last.live_digest().as_str())) {
            Ok(bytes) => {
                load(pipeline, name, bytes, route, false).await?;
                if let Some(canary) = journal::canary_in_progress(&history) {
                    canaries.push((name.to_string(), canary.clone()));
                }
            }
            Err(err) => {
                tracing::warn!(component = %name, error = %err, "cannot restore a deployed component: its source is gone from the state directory")
            }
        }
    }
    for (name, canary) in canaries {
        pipeline.restore_canary(&name, &canary).await;
    }
    Ok(())
}

async fn load(
    pipeline: &Pipeline,
    name: &str,
    bytes: Vec<u8>,
    route: Option<String>,
    record: bool,
) -> anyhow::Result<()> {
    // The pipeline logs its warnings itself.
    pipeline
        .deploy(DeployRequest::start_up(name, bytes, route, record))
        .await?;
    Ok(())
}

/// Builds every capability's app-wide state once, from the manifest, the runtime config and
/// the settings (the list is `crate::instance::Capabilities`).
async fn build_capabilities(
    manifest: &Manifest,
    manifest_path: &Path,
    settings: &Settings,
    runtime_config: RuntimeConfig,
    state: &StateDir,
    metrics: &Arc<crate::observe::Metrics>,
    variable_flags: &std::collections::BTreeMap<String, String>,
) -> anyhow::Result<Capabilities> {
    // `--variable` first, then the environment, then the manifest's default (as Spin).
    let variables = ApplicationVariables::resolve(manifest, |env_name| {
        variable_flags
            .iter()
            .find(|(name, _)| crate::capability::variables::env_name(name) == env_name)
            .map(|(_, value)| value.clone())
            .or_else(|| std::env::var(env_name).ok())
    })
    .map_err(|message| anyhow::anyhow!("{}: {message}", manifest_path.display()))?;
    let namespace = settings
        .messaging
        .namespace
        .clone()
        .unwrap_or_else(|| manifest.application.name.clone());
    let broker = crate::capability::messaging::open(&settings.messaging, state.root(), &namespace)
        .await
        .map_err(|err| anyhow::anyhow!("cannot start the message broker: {err}"))?;
    // Queues first: from now on every publish is kept for every subscription. A broker
    // that is down now is declared again when it comes back.
    let subscriptions = manifest.subscriptions();
    if let Err(err) = broker.declare(&subscriptions).await {
        tracing::warn!(broker = broker.kind(), error = %err, "cannot declare the subscriptions yet; publishing fails until the broker is reachable");
    }
    let messaging = Messaging::new(
        broker,
        settings.messaging.max_message_bytes,
        metrics.clone(),
        &subscriptions,
    );
    Ok(Capabilities {
        redis: Arc::new(Redis::new(RedisClients::new(metrics.clone()), messaging.publisher())),
        messaging: Arc::new(messaging),
        variables: Arc::new(variables),
        key_value: Arc::new(KeyValueStores::new(
            runtime_config.key_value_stores,
            state.root().join("kv"),
            metrics.clone(),
        )),
        sqlite: Arc::new(Databases::new(
            runtime_config.sqlite_databases,
            state.root().join("sqlite"),
            metrics.clone(),
        )),
        postgres: Arc::new(PgPools::new(metrics.clone())),
        mqtt: Arc::new(Mqtt::new(metrics.clone())),
        mysql: Arc::new(MysqlPools::new(metrics.clone())),
        unsupported: Arc::new(NoBackend),
        otel: Arc::new(Otel::new(metrics.spans().clone())),
        outbound: Arc::new(OutboundPolicies::new(&settings.outbound, metrics.clone())),
    })
}

/// `--key-value` and `--sqlite`: the default store and database get their seed before any
/// component runs (so the start-up probes see it too).
async fn seed(capabilities: &Capabilities, run: &RunOptions) -> anyhow::Result<()> {
    if !run.key_values.is_empty() {
        let store = capabilities
            .key_value
            .open("default")
            .await
            .map_err(|err| anyhow::anyhow!("--key-value: cannot open the default key-value store: {err}"))?;
        for (key, value) in &run.key_values {
            store
                .set(key, value.as_bytes())
                .await
                .map_err(|err| anyhow::anyhow!("--key-value {key}=...: {err}"))?;
        }
    }
    if !run.sqlite_statements.is_empty() {
        let database = capabilities
            .sqlite
            .open("default")
            .await
            .map_err(|err| anyhow::anyhow!("--sqlite: cannot open the default SQLite database: {err}"))?;
        for statement in &run.sqlite_statements {
            database
                .run_script(statement)
                .await
                .map_err(|err| anyhow::anyhow!("--sqlite: the statement failed, nothing of it was applied: {err}"))?;
        }
    }
    Ok(())
}

/// Binds the HTTP listener; with `find_free_port`, the next free port after a taken one (as
/// `spin up --find-free-port`), up to 100 ports on.
async fn bind_http(listen: SocketAddr, find_free_port: bool) -> anyhow::Result<TcpListener> {
    let tries = if find_free_port && listen.port() != 0 { 100 } else { 1 };
    let mut address = listen;
    for _ in 0..tries {
        match TcpListener::bind(address).await {
            Ok(listener) => return Ok(listener),
            Err(err) if err.kind() == std::io::ErrorKind::AddrInUse && address.port() < u16::MAX && tries > 1 => {
                address.set_port(address.port() + 1);
            }
            Err(err) => {
                return Err(anyhow::Error::new(err).context(format!(
                "cannot listen for HTTP on {address}; pass another address with --listen (port 0 picks a free one), \
                     add --find-free-port, or stop the process using it"
            )))
            }
        }
    }
    anyhow::bail!(
        "cannot listen for HTTP on {listen}: it and the next {} ports are taken; pass another address with --listen",
        tries - 1
    )
}
