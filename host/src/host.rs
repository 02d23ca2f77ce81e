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
use crate::app::{App, Backends};
use crate::capability::key_value::KeyValueStores;
use crate::capability::sqlite::Databases;
use crate::deploy::journal::{self, Action};
use crate::deploy::{self, artifacts, DeployRequest};
use crate::engine::{build_engine, EpochTicker};
use crate::settings::Settings;
use crate::state::{AdminEndpoint, StateDir};
use crate::trigger::http::HttpTrigger;

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
}

pub struct Host {
    trigger: HttpTrigger,
    http_addr: SocketAddr,
    admin_addr: SocketAddr,
    admin_token: String,
    stop: watch::Sender<bool>,
    tasks: Vec<JoinHandle<()>>,
    _ticker: EpochTicker,
}

impl Host {
    pub async fn start(options: HostOptions) -> anyhow::Result<Host> {
        let manifest = Manifest::load(&options.manifest)?;
        let mut settings = match options.settings {
            Some(settings) => settings,
            None => Settings::load_beside(&options.manifest)?,
        };
        settings
            .check()
            .map_err(|message| anyhow::anyhow!("invalid Mosaic settings: {message}"))?;
        if let Some(listen) = options.listen {
            settings.http.listen = listen;
        }
        if let Some(listen) = options.admin_listen {
            settings.admin.listen = listen;
        }
        if let Some(cluster) = options.cluster {
            settings.cluster.postgres = Some(cluster);
        }
        let runtime_config = match &options.runtime_config_file {
            Some(path) => RuntimeConfig::load(path).map_err(anyhow::Error::msg)?,
            None => RuntimeConfig::default(),
        };
        for trigger_type in &manifest.other_trigger_types {
            tracing::warn!(trigger = %trigger_type, "Mosaic runs HTTP and Redis (message) triggers only; `[[trigger.{trigger_type}]]` entries are not run");
        }
        let state_root = options
            .state_dir
            .clone()
            .unwrap_or_else(|| StateDir::beside(&options.manifest));
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
        let variables = crate::capability::variables::resolve_application(&manifest, |name| std::env::var(name).ok())
            .map_err(|message| anyhow::anyhow!("{}: {message}", options.manifest.display()))?;
        let metrics: Arc<crate::observe::Metrics> = Arc::default();
        let key_value = Arc::new(KeyValueStores::new(
            runtime_config.key_value_stores,
            state.root().join("kv"),
            metrics.clone(),
        ));
        let sqlite = Arc::new(Databases::new(
            runtime_config.sqlite_databases,
            state.root().join("sqlite"),
        ));
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
        if let Err(err) = broker.declare(&manifest.subscriptions()).await {
            tracing::warn!(broker = broker.kind(), error = %err, "cannot declare the subscriptions yet; publishing fails until the broker is reachable");
        }
        let backends = Backends {
            variables,
            key_value,
            sqlite,
            broker,
            metrics,
        };
        let app = Arc::new(App::new(engine, linker, settings.clone(), manifest, state, backends));
        let trigger = HttpTrigger::new(app.clone());
        restore(&trigger).await?;

        let http_listener = TcpListener::bind(settings.http.listen).await.with_context(|| {
            format!(
                "cannot listen for HTTP on {}; pass another address with --listen (port 0 picks a free one) or stop the process using it",
                settings.http.listen
            )
        })?;
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
        let cluster = match &settings.cluster.postgres {
            Some(_) => Some(join_cluster(&trigger, &settings, http_addr, admin_addr).await?),
            None => None,
        };
        let drain = settings.limits.drain_timeout();
        let mut tasks = vec![
            tokio::spawn(crate::trigger::http::serve(
                http_listener,
                trigger.clone(),
                stopped.clone(),
                drain,
            )),
            tokio::spawn(crate::admin::serve(
                admin_listener,
                trigger.clone(),
                admin_token.clone(),
                stopped.clone(),
            )),
        ];
        tasks.extend(crate::trigger::messages::start(&trigger, stopped.clone()));
        if let Some(cluster) = cluster {
            tasks.extend(cluster.start(&trigger, stopped));
        }
        tracing::info!(%http_addr, %admin_addr, components = app.slots().len(), "serving");
        Ok(Host {
            trigger,
            http_addr,
            admin_addr,
            admin_token,
            stop,
            tasks,
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
        self.trigger.app()
    }
    pub fn trigger(&self) -> &HttpTrigger {
        &self.trigger
    }

    /// Stops accepting, lets requests in progress finish (up to the drain deadline), stops.
    pub async fn shutdown(self) {
        let _ = self.stop.send(true);
        for task in self.tasks {
            let _ = task.await;
        }
        self.trigger.app().state.clear_endpoint();
        tracing::info!("stopped");
    }
}

/// Joins the cluster of `[cluster]` and converges on its desired versions before serving, so a
/// new host never answers with an outdated version.
async fn join_cluster(
    trigger: &HttpTrigger,
    settings: &Settings,
    http_addr: SocketAddr,
    admin_addr: SocketAddr,
) -> anyhow::Result<Arc<crate::cluster::Cluster>> {
    let app = trigger.app();
    let namespace = settings
        .cluster
        .namespace
        .clone()
        .unwrap_or_else(|| app.manifest.application.name.clone());
    let cluster = crate::cluster::Cluster::join(&settings.cluster, &namespace, http_addr, admin_addr)
        .await
        .map_err(|err| anyhow::anyhow!("cannot join the cluster: {err}"))?;
    if app.broker.kind() == "embedded" {
        tracing::warn!("cluster mode with the embedded broker: each host keeps its own messages (published on one host, handled there only); set [messaging] broker = \"rabbitmq\" or \"nats\" to share them");
    }
    if let Err(err) = cluster.reconcile(trigger).await {
        tracing::warn!(error = %err, "cannot converge on the cluster's desired versions yet; serving this host's versions and retrying");
    }
    let _ = app.cluster.set(cluster.clone());
    tracing::info!(host = %cluster.host_name(), %namespace, "joined the cluster");
    Ok(cluster)
}

/// Loads every component at start-up. A component whose manifest source is unchanged since the
/// last start comes back as the journal's last version of it (what was deployed or rolled
/// back to); a changed source is a new version and is journaled as such.
async fn restore(trigger: &HttpTrigger) -> anyhow::Result<()> {
    let app = trigger.app().clone();
    let entries = journal::read(&app.state.journal_path()).context("cannot read the deploy journal")?;
    for name in app.manifest.components.keys() {
        let Some(path) = app.manifest.source_path(name) else {
            continue;
        };
        let manifest_bytes = std::fs::read(&path).with_context(|| {
            format!(
                "component `{name}`: cannot read its source {}. Build it first (`mosaic up --build` runs each component's build command)",
                path.display()
            )
        })?;
        let manifest_digest = artifacts::digest_of(&manifest_bytes);
        let history = journal::history(&entries, name);
        let manifest_unchanged = history
            .iter()
            .rev()
            .find(|entry| entry.action == Action::Manifest)
            .is_some_and(|entry| entry.digest == manifest_digest);
        let last_journaled = history.last().map(|entry| entry.digest.clone());
        let (bytes, record) = match last_journaled {
            Some(last) if manifest_unchanged => match std::fs::read(app.state.source_of(&last)) {
                Ok(bytes) => (bytes, false),
                Err(err) => {
                    tracing::warn!(component = %name, error = %err, "the journal's last version is gone from the state directory; loading the manifest's source");
                    (manifest_bytes, true)
                }
            },
            _ => (manifest_bytes, true),
        };
        load(trigger, name, bytes, None, record).await?;
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
        match std::fs::read(app.state.source_of(&last.digest)) {
            Ok(bytes) => load(trigger, name, bytes, route, false).await?,
            Err(err) => {
                tracing::warn!(component = %name, error = %err, "cannot restore a deployed component: its source is gone from the state directory")
            }
        }
    }
    Ok(())
}

async fn load(
    trigger: &HttpTrigger,
    name: &str,
    bytes: Vec<u8>,
    route: Option<String>,
    record: bool,
) -> anyhow::Result<()> {
    let request = DeployRequest {
        component: name.to_string(),
        bytes,
        route,
        action: Action::Manifest,
        probe_is_fatal: false,
        record,
    };
    // The pipeline logs its warnings itself.
    deploy::deploy(trigger, request).await?;
    Ok(())
}
