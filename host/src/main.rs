//! The `mosaic` command line: parse, call the library, print.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use mosaic::admin::{ComponentHistory, ComponentStatus};
use mosaic::capability::messaging::DeadLetter;
use mosaic::client::{AdminClient, AdminError};
use mosaic::cluster::ClusterStatus;
use mosaic::deploy::DeployReport;
use mosaic::{Host, HostOptions};

mod spin_flags;

/// mimalloc, not glibc's malloc: a request is allocated on the connection's thread and often
/// freed on the instance's, and glibc serialises such frees on the owning arena's lock. In a
/// `perf record` of a spin-sdk 7 hello at 32 connections, glibc's malloc, free and that lock's
/// futex took 17% of the host's CPU; with mimalloc, allocation takes about 6% (docs/wasi-0.3.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(
    name = "mosaic",
    version,
    about = "Serve a Spin application and hot-swap its components"
)]
struct Cli {
    /// The application manifest, or a single Wasm component to serve at /... (`--from`, as
    /// `spin up --from`).
    #[arg(
        short = 'f',
        long = "file",
        visible_alias = "from",
        global = true,
        default_value = "spin.toml"
    )]
    manifest: PathBuf,
    /// The state directory (default: .mosaic/ beside the manifest).
    #[arg(long, global = true)]
    state_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address of the application's HTTP listener [default: http.listen of mosaic.toml, 127.0.0.1:3000].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Address of the admin API [default: admin.listen of mosaic.toml, 127.0.0.1 on a free port].
    #[arg(long)]
    admin_listen: Option<SocketAddr>,
    /// Run each component's build command first, like `spin up --build`.
    #[arg(long)]
    build: bool,
    /// Spin runtime configuration (stores and databases to backends).
    #[arg(long)]
    runtime_config_file: Option<PathBuf>,
    /// Mosaic's own settings [default: mosaic.toml beside the manifest, if there is one].
    #[arg(long)]
    config: Option<PathBuf>,
    /// Join a cluster whose store is this PostgreSQL address (like [cluster] postgres in mosaic.toml).
    #[arg(long, value_name = "POSTGRES_URL")]
    cluster: Option<String>,
    #[arg(long, value_enum, default_value = "text")]
    log_format: LogFormat,
    /// Set an application variable, over SPIN_VARIABLE_* and the default (NAME=VALUE,
    /// NAME=@FILE for a file's content, or @FILE.json / @FILE.toml for a table of them).
    #[arg(long = "variable", value_name = "NAME=VALUE")]
    variables: Vec<String>,
    /// Set an environment variable of every component.
    #[arg(short = 'e', long = "env", value_name = "NAME=VALUE")]
    env: Vec<String>,
    /// Set a key in the default key-value store before the application starts.
    #[arg(long = "key-value", value_name = "KEY=VALUE")]
    key_values: Vec<String>,
    /// Run a SQLite statement (or @FILE of them) on the default database before the application starts.
    #[arg(long = "sqlite", value_name = "STATEMENT")]
    sqlite: Vec<String>,
    /// Serve only this component (repeatable); the others are not loaded.
    #[arg(short = 'c', long = "component-id", value_name = "ID")]
    component_ids: Vec<String>,
    /// When the listen port is taken, listen on the next free one.
    #[arg(long)]
    find_free_port: bool,
    /// Serve HTTPS with this certificate chain (PEM); needs --tls-key.
    #[arg(long, value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert (PEM).
    #[arg(long, value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// A throw-away state directory, removed at exit (or the state in DIR).
    #[arg(long, value_name = "DIR", num_args = 0..=1)]
    temp: Option<Option<PathBuf>>,
}

impl ServeArgs {
    fn spin_flags(&self) -> spin_flags::SpinFlags {
        spin_flags::SpinFlags {
            variables: self.variables.clone(),
            env: self.env.clone(),
            key_values: self.key_values.clone(),
            sqlite: self.sqlite.clone(),
            component_ids: self.component_ids.clone(),
            find_free_port: self.find_free_port,
            tls_cert: self.tls_cert.clone(),
            tls_key: self.tls_key.clone(),
        }
    }
}

#[derive(Subcommand)]
enum Command {
    /// Serve the application.
    Up(ServeArgs),
    /// Serve the application and rebuild + redeploy a component whenever its files change.
    Watch(ServeArgs),
    /// Apply every component's migrations/<component>/ to its database and exit, as `mosaic up`
    /// does before it serves (e.g. to prepare the databases a Spin runtime config names).
    Migrate {
        /// Spin runtime configuration: the files of the SQLite databases.
        #[arg(long)]
        runtime_config_file: Option<PathBuf>,
        /// Mosaic's own settings ([migrations.NAME] for PostgreSQL and MySQL) [default: mosaic.toml beside the manifest].
        #[arg(long)]
        config: Option<PathBuf>,
        /// Only this component (repeatable).
        #[arg(short = 'c', long = "component-id", value_name = "ID")]
        component_ids: Vec<String>,
    },
    /// Replace a component with a new version (or add one with --route), or run it as a canary.
    Deploy {
        component: String,
        file: PathBuf,
        /// Route for a component that is not in the manifest yet, e.g. /hello/...
        #[arg(long)]
        route: Option<String>,
        #[command(flatten)]
        canary: CanaryArgs,
    },
    /// Make the canary of a component its live version.
    Promote { component: String },
    /// Go back to the version the current one replaced; during a canary, end the canary.
    Rollback { component: String },
    /// Every component: version, deployed at, in-flight, requests, errors.
    Status {
        #[arg(long)]
        json: bool,
    },
    /// The deployments of one component, oldest first.
    History { component: String },
    /// The dead-letter store: messages that failed `max_deliver` times.
    Dlq {
        #[command(subcommand)]
        command: DlqCommand,
    },
}

/// `mosaic deploy ... --canary PERCENT` and its decisions (docs/canary.md).
#[derive(clap::Args)]
struct CanaryArgs {
    /// Run the new version as a canary taking about PERCENT of the new requests (and message
    /// deliveries); the live version keeps the rest.
    #[arg(long, value_name = "PERCENT")]
    canary: Option<f64>,
    /// Keep every request with the same value of this header on one version.
    #[arg(long, value_name = "HEADER", requires = "canary")]
    sticky: Option<String>,
    /// Roll the canary back once more than this share (0..1) of its requests failed in the window [default: 0.05].
    #[arg(long, value_name = "RATE", requires = "canary")]
    max_error_rate: Option<f64>,
    /// Judge the canary only once it had this many requests in the window [default: 20].
    #[arg(long, value_name = "N", requires = "canary")]
    min_requests: Option<u64>,
    /// The sliding window of the error rate [default: 60s].
    #[arg(long, value_name = "DURATION", requires = "canary")]
    window: Option<String>,
    /// Promote a canary that stayed healthy this long (e.g. 10m).
    #[arg(long, value_name = "DURATION", requires = "canary")]
    promote_after: Option<String>,
    /// Raise the share in these steps, in percent (e.g. 5,25,50,100; 100 promotes).
    #[arg(long, value_name = "P,P,...", requires = "canary", requires = "step_every")]
    steps: Option<String>,
    /// The time between steps (e.g. 2m).
    #[arg(long, value_name = "DURATION", requires = "steps")]
    step_every: Option<String>,
}

impl CanaryArgs {
    /// The policy these flags ask for, read by the same parser as the admin API's query (the
    /// durations as milliseconds), so that both accept and refuse the same.
    fn policy(&self) -> anyhow::Result<Option<mosaic::app::canary::CanaryPolicy>> {
        let millis = |flag: &str, text: &Option<String>| -> anyhow::Result<Option<String>> {
            text.as_deref()
                .map(|text| {
                    mosaic::app::canary::parse_duration(text)
                        .map(|duration| duration.as_millis().to_string())
                        .map_err(|err| anyhow::anyhow!("--{flag}: {err}"))
                })
                .transpose()
        };
        let values = [
            ("canary", self.canary.map(|percent| percent.to_string())),
            ("sticky", self.sticky.clone()),
            ("max_error_rate", self.max_error_rate.map(|rate| rate.to_string())),
            ("min_requests", self.min_requests.map(|min| min.to_string())),
            ("window_ms", millis("window", &self.window)?),
            ("promote_after_ms", millis("promote-after", &self.promote_after)?),
            ("steps", self.steps.clone()),
            ("step_every_ms", millis("step-every", &self.step_every)?),
        ];
        let value = |key: &str| {
            values
                .iter()
                .find(|(name, _)| *name == key)
                .and_then(|(_, v)| v.clone())
        };
        mosaic::app::canary::CanaryPolicy::from_query(value).map_err(anyhow::Error::msg)
    }
}

#[derive(Subcommand)]
enum DlqCommand {
    /// List dead letters, oldest first.
    List {
        /// Only those of this subscribing component.
        #[arg(long)]
        component: Option<String>,
        #[arg(long)]
        json: bool,
    },
    /// Send dead letters back to their subscriber (and remove them from the store).
    Replay {
        /// The ids to replay (from `mosaic dlq list`).
        ids: Vec<String>,
        /// Only those of this subscribing component.
        #[arg(long)]
        component: Option<String>,
        /// Replay every dead letter (of --component, if given). Needed when no id is given.
        #[arg(long)]
        all: bool,
    },
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(err) => {
            use clap::error::{ContextKind, ContextValue, ErrorKind};
            if err.kind() == ErrorKind::UnknownArgument {
                if let Some(ContextValue::String(flag)) = err.get(ContextKind::InvalidArg) {
                    if let Some(explained) = spin_flags::explain_unknown(flag) {
                        eprintln!("error: {explained}");
                        return ExitCode::from(2);
                    }
                }
            }
            err.exit()
        }
    };
    let log_format = match &cli.command {
        Command::Up(args) | Command::Watch(args) => args.log_format,
        _ => LogFormat::Text,
    };
    init_logging(log_format);
    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("error: {err:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("MOSAIC_LOG").unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new("info,wasmtime=warn,cranelift=warn,tokio_postgres=warn")
    });
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    // The OTLP log layer sees the events the console does (after the filter) and forwards
    // them only once a host exports logs.
    use tracing_subscriber::layer::SubscriberExt as _;
    use tracing_subscriber::util::SubscriberInitExt as _;
    match format {
        LogFormat::Text => builder.finish().with(mosaic::observe::OtlpLogLayer).init(),
        LogFormat::Json => builder.json().finish().with(mosaic::observe::OtlpLogLayer).init(),
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Up(args) => serve(&cli.manifest, cli.state_dir, args, false).await,
        Command::Watch(args) => serve(&cli.manifest, cli.state_dir, args, true).await,
        Command::Migrate {
            runtime_config_file,
            config,
            component_ids,
        } => {
            if cli.manifest.extension().is_some_and(|ext| ext == "wasm") {
                anyhow::bail!(
                    "`mosaic migrate -f {}`: a single component has no migrations; give the spin.toml whose \
                     migrations/<component>/ folders should be applied",
                    cli.manifest.display()
                );
            }
            let settings = match &config {
                Some(path) => Some(mosaic::settings::Settings::load(path)?),
                None => None,
            };
            let outcomes = mosaic::host::migrate(HostOptions {
                manifest: cli.manifest.clone(),
                state_dir: cli.state_dir,
                settings,
                runtime_config_file,
                run: mosaic::host::RunOptions {
                    components: component_ids,
                    ..Default::default()
                },
                ..Default::default()
            })
            .await?;
            print!("{}", migrated_text(&outcomes));
            Ok(())
        }
        Command::Deploy {
            component,
            file,
            route,
            canary,
        } => {
            let policy = canary.policy()?;
            if policy.is_some() && route.is_some() {
                anyhow::bail!("--canary runs beside a live version; a component added with --route has none yet: deploy it without --canary first");
            }
            let bytes = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let client = AdminClient::discover(&cli.manifest, cli.state_dir.as_deref())?;
            let report = match &policy {
                Some(policy) => client.deploy_canary(&component, bytes, policy).await,
                None => client.deploy(&component, bytes, route.as_deref()).await,
            }
            .map_err(explain)?;
            print!("{}", report_text("deployed", &report));
            Ok(())
        }
        Command::Promote { component } => {
            let client = AdminClient::discover(&cli.manifest, cli.state_dir.as_deref())?;
            let report = client.promote(&component).await.map_err(explain)?;
            print!("{}", report_text("promoted", &report));
            Ok(())
        }
        Command::Rollback { component } => {
            let client = AdminClient::discover(&cli.manifest, cli.state_dir.as_deref())?;
            let report = client.rollback(&component).await.map_err(explain)?;
            print!("{}", report_text("rolled back", &report));
            Ok(())
        }
        Command::Status { json } => {
            let client = AdminClient::discover(&cli.manifest, cli.state_dir.as_deref())?;
            let status = client.status().await.map_err(explain)?;
            // In cluster mode, every host's versions too; alone, 404.
            let cluster = client.cluster().await.ok();
            if json {
                // Through `Value`, whose keys print sorted, as this output always has.
                let status = serde_json::to_value(&status)?;
                let shown = match cluster {
                    Some(cluster) => serde_json::json!({ "components": status, "cluster": cluster }),
                    None => status,
                };
                println!("{}", serde_json::to_string_pretty(&shown)?);
                return Ok(());
            }
            print!("{}", status_text(&status));
            if let Some(cluster) = cluster {
                print!("{}", cluster_text(&cluster));
            }
            Ok(())
        }
        Command::Dlq { command } => {
            let client = AdminClient::discover(&cli.manifest, cli.state_dir.as_deref())?;
            dead_letters(&client, command).await
        }
        Command::History { component } => {
            let client = AdminClient::discover(&cli.manifest, cli.state_dir.as_deref())?;
            let history = client.history(&component).await.map_err(explain)?;
            print!("{}", history_text(&history));
            Ok(())
        }
    }
}

async fn dead_letters(client: &AdminClient, command: DlqCommand) -> anyhow::Result<()> {
    match command {
        DlqCommand::List { component, json } => {
            let letters = client.dead_letters(component.as_deref()).await.map_err(explain)?;
            if json {
                // Through `Value`, whose keys print sorted, as this output always has.
                println!("{}", serde_json::to_string_pretty(&serde_json::to_value(&letters)?)?);
                return Ok(());
            }
            print!("{}", dead_letters_text(&letters));
            Ok(())
        }
        DlqCommand::Replay { ids, component, all } => {
            if ids.is_empty() && !all {
                anyhow::bail!("name the dead letters to replay (ids from `mosaic dlq list`), or pass --all");
            }
            let replayed = client.replay(component.as_deref(), &ids).await.map_err(explain)?;
            for letter in &replayed {
                println!("replayed {} to `{}` ({})", letter.id, letter.subscriber, letter.topic);
            }
            println!("{} dead letter(s) replayed", replayed.len());
            Ok(())
        }
    }
}

async fn serve(manifest: &Path, state_dir: Option<PathBuf>, args: ServeArgs, watch: bool) -> anyhow::Result<()> {
    let run = args.spin_flags().run_options()?;
    // `--temp`: a state directory of its own, removed at exit; `--temp DIR`: the state in DIR.
    let temporary = match &args.temp {
        Some(None) => Some(TemporaryDir::new()?),
        _ => None,
    };
    let state_dir = match (&args.temp, &temporary) {
        (Some(Some(dir)), _) => Some(dir.clone()),
        (_, Some(temporary)) => Some(temporary.0.clone()),
        _ => state_dir,
    };
    // `-f app.wasm`: the component alone, at /..., with its generated manifest in the state
    // directory beside it (where `mosaic deploy -f app.wasm` finds the host).
    let generated;
    let mut settings_file = args.config.clone();
    let (manifest, state_dir) = if manifest.extension().is_some_and(|ext| ext == "wasm") {
        let dir = state_dir.unwrap_or_else(|| mosaic::state::StateDir::beside(manifest));
        let (path, beside) = spin_flags::manifest_for_component(manifest, &dir)?;
        settings_file = settings_file.or(beside);
        generated = path;
        (generated.as_path(), Some(dir))
    } else {
        (manifest, state_dir)
    };
    if args.build {
        let loaded = mosaic::app::manifest::Manifest::load(manifest)?;
        tokio::task::spawn_blocking(move || mosaic::build::build_all(&loaded)).await??;
    }
    // Look at the watched files before serving, so that no change made once the host is up
    // can slip in before the first look.
    let watcher = match watch {
        true => Some(mosaic::watch::Watcher::new(mosaic::app::manifest::Manifest::load(
            manifest,
        )?)),
        false => None,
    };
    let settings = match &settings_file {
        Some(path) => Some(mosaic::settings::Settings::load(path)?),
        None => None,
    };
    let host = Host::start(HostOptions {
        manifest: manifest.to_owned(),
        listen: args.listen,
        admin_listen: args.admin_listen,
        state_dir,
        settings,
        runtime_config_file: args.runtime_config_file,
        cluster: args.cluster,
        run,
    })
    .await?;
    let scheme = if args.tls_cert.is_some() { "https" } else { "http" };
    println!("Serving {scheme}://{}", host.http_addr());
    for (pattern, component) in host.app().router().routes() {
        println!("  {component}: {scheme}://{}{}", host.http_addr(), pattern);
    }
    println!(
        "Admin API on {} (token in {})",
        host.admin_addr(),
        host.app().state.token_path().display()
    );
    if let Some(watcher) = watcher {
        mosaic::watch::run(host.rollout().clone(), watcher, shutdown_signal()).await;
    } else {
        shutdown_signal().await;
    }
    tracing::info!("shutting down: draining in-flight requests");
    host.shutdown().await;
    drop(temporary);
    Ok(())
}

/// One line per component: what was applied, or that its database was up to date.
fn migrated_text(outcomes: &[mosaic::Migrated]) -> String {
    let mut out = String::new();
    for outcome in outcomes {
        let line = match (outcome.database, outcome.applied.as_slice()) {
            ("none", _) => continue,
            (database, []) => format!("{}: {database} database up to date\n", outcome.component),
            (database, applied) => format!(
                "{}: applied to its {database} database: {}\n",
                outcome.component,
                applied.join(", ")
            ),
        };
        out.push_str(&line);
    }
    if out.is_empty() {
        out.push_str("no component has migrations (migrations/<component>/NNNN_name.sql beside the manifest)\n");
    }
    out
}

/// `--temp`'s state directory: removed when the host has stopped.
struct TemporaryDir(PathBuf);

impl TemporaryDir {
    fn new() -> anyhow::Result<Self> {
        let dir = std::env::temp_dir().join(format!(
            "mosaic-temp-{}-{}",
            std::process::id(),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |elapsed| elapsed.as_nanos())
        ));
        std::fs::create_dir_all(&dir).with_context(|| format!("--temp: cannot create {}", dir.display()))?;
        Ok(Self(dir))
    }
}

impl Drop for TemporaryDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Every host of the cluster and the version of each component on it; a version that is not
/// the desired one is marked (a rollout in progress, or a host that cannot take it: its error).
fn cluster_text(cluster: &ClusterStatus) -> String {
    let mut out = String::new();
    out.push('\n');
    out.push_str(&format!(
        "CLUSTER {} (this host: {})\n",
        cluster.namespace, cluster.this_host
    ));
    out.push_str(&format!(
        "{:<24} {:<14} {:<16} {:<14} DESIRED\n",
        "HOST", "SEEN", "COMPONENT", "VERSION"
    ));
    for host in &cluster.hosts {
        let silent = host.silent_ms as f64 / 1000.0;
        let seen = match host.alive {
            true => format!("{silent:.1}s ago"),
            false => format!("gone {silent:.0}s"),
        };
        for (index, (component, version)) in host.report.versions.iter().enumerate() {
            let mark = match cluster.desired.get(component) {
                None => "(not set)".to_string(),
                Some(wanted) if wanted == version => "yes".to_string(),
                Some(wanted) => match host.report.errors.get(component) {
                    Some(error) => format!("no: {} wanted; {error}", short(wanted)),
                    None => format!("no: {} rolling out", short(wanted)),
                },
            };
            // The host's name and when it was seen only on its first line.
            let (name, seen) = match index {
                0 => (host.report.host.as_str(), seen.as_str()),
                _ => ("", ""),
            };
            out.push_str(&format!(
                "{:<24} {:<14} {:<16} {:<14} {}\n",
                name,
                seen,
                component,
                short(version),
                mark
            ));
        }
    }
    for canary in cluster.canaries.values() {
        out.push_str(&format!(
            "canary of {} on every host: {} at {}% beside {} (last changed through {})\n",
            canary.component,
            short(&canary.digest),
            canary.share_bp as f64 / 100.0,
            short(&canary.stable),
            canary.updated_by
        ));
    }
    out
}

async fn shutdown_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{signal, SignalKind};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = tokio::signal::ctrl_c() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

fn explain(err: anyhow::Error) -> anyhow::Error {
    match err.downcast_ref::<AdminError>() {
        Some(admin) => anyhow::anyhow!("{} (HTTP {})", admin.detail, admin.status.as_u16()),
        None => err,
    }
}

fn report_text(verb: &str, report: &DeployReport) -> String {
    let replacing = match &report.previous {
        Some(previous) if !previous.as_str().is_empty() => format!(", replacing {}", short(previous)),
        _ => String::new(),
    };
    let compiled = match report.cached {
        true => "compiled artifact from cache",
        false => "compiled",
    };
    let world = match report.world.as_str() {
        "" => String::new(),
        world => format!(", {world}"),
    };
    let mut out = match report.action {
        mosaic::deploy::journal::Action::Canary => format!(
            "canary of `{}`: version {} takes its share of new requests beside {} ({compiled}{world}); \
             `mosaic status` shows both, `mosaic promote {}` or `mosaic rollback {}` ends it\n",
            report.component,
            short(&report.digest),
            report.previous.as_ref().map(short).unwrap_or_default(),
            report.component,
            report.component,
        ),
        mosaic::deploy::journal::Action::CanaryRollback | mosaic::deploy::journal::Action::AutoRollback => format!(
            "ended the canary of `{}`: every new request goes to version {} again; the canary {} drains\n",
            report.component,
            short(&report.digest),
            report.previous.as_ref().map(short).unwrap_or_default(),
        ),
        _ => format!(
            "{verb} `{}`: version {}{replacing} ({compiled}{world})\n",
            report.component,
            short(&report.digest),
        ),
    };
    if !report.composed_into.is_empty() {
        out.push_str(&format!(
            "composed again into {}, which swapped with it as one\n",
            report.composed_into.join(", ")
        ));
    }
    for warning in &report.warnings {
        out.push_str(&format!("warning: {warning}\n"));
    }
    out
}

fn status_text(status: &[ComponentStatus]) -> String {
    let mut out = format!(
        "{:<16} {:<18} {:<14} {:<20} {:>9} {:>9} {:>7} {:>9}  {}\n",
        "COMPONENT", "ROUTE", "VERSION", "DEPLOYED", "IN-FLIGHT", "REQUESTS", "ERRORS", "INSTANCES", "WORLD"
    );
    for component in status {
        out.push_str(&format!(
            "{:<16} {:<18} {:<14} {:<20} {:>9} {:>9} {:>7} {:>9}  {}\n",
            component.name,
            component.route.as_deref().unwrap_or("-"),
            short(&component.version),
            format_unix_ms(component.deployed_at_unix_ms),
            component.in_flight,
            component.requests,
            component.errors,
            component.instances,
            component.world,
        ));
        if let Some(canary) = &component.canary {
            let rate =
                |counts: &mosaic::app::canary::Counts| format!("{} of {} failed", counts.errors, counts.requests);
            out.push_str(&format!(
                "  canary {} takes {}% of new requests{} (stable {} {}%); last {:.0} s: canary {}, stable {}\n",
                short(&canary.version),
                canary.share_percent,
                canary
                    .sticky
                    .as_ref()
                    .map(|header| format!(", sticky by {header}"))
                    .unwrap_or_default(),
                short(&component.version),
                100.0 - canary.share_percent,
                canary.window_seconds,
                rate(&canary.canary),
                rate(&canary.stable),
            ));
        } else if let Some(ended) = &component.last_canary {
            out.push_str(&format!("  last canary: {ended}\n"));
        }
        if !component.composed_into.is_empty() {
            out.push_str(&format!("  composed into {}\n", component.composed_into.join(", ")));
        }
    }
    out
}

/// The deployments, oldest first; the one serving now is marked. A rollback to an earlier
/// version repeats its digest, so only the latest entry with the live digest is the live one.
fn history_text(history: &ComponentHistory) -> String {
    if history.history.is_empty() {
        return format!("no deployments of `{}` are recorded\n", history.component);
    }
    let live = history.current.as_ref().and_then(|current| {
        history
            .history
            .iter()
            .rposition(|entry| entry.action.changes_live() && &entry.digest == current)
    });
    let mut out = String::new();
    for (index, entry) in history.history.iter().enumerate() {
        let marker = if Some(index) == live { "  <- live" } else { "" };
        let detail = match (&entry.canary, &entry.reason, &entry.previous) {
            (Some(canary), _, Some(stable)) => format!(
                "  {}% of new requests (stable {})",
                canary.share_bp as f64 / 100.0,
                short(stable)
            ),
            (_, Some(reason), _) => format!("  {reason}"),
            _ => String::new(),
        };
        out.push_str(&format!(
            "{}  {:<15} {}{marker}{detail}\n",
            format_unix_ms(entry.at_unix_ms),
            entry.action.as_str(),
            short(&entry.digest)
        ));
    }
    out
}

fn dead_letters_text(letters: &[DeadLetter]) -> String {
    if letters.is_empty() {
        return "the dead-letter store is empty\n".to_string();
    }
    let mut out = format!(
        "{:<12} {:<16} {:<20} {:<20} {:>8}  {:<32} ERROR\n",
        "ID", "COMPONENT", "TOPIC", "DEAD SINCE", "ATTEMPTS", "PAYLOAD"
    );
    for letter in letters {
        let payload = match &letter.payload {
            Some(text) => text.clone(),
            None => format!("hex:{}", letter.payload_hex.as_deref().unwrap_or("")),
        };
        let payload: String = payload.chars().take(32).collect();
        out.push_str(&format!(
            "{:<12} {:<16} {:<20} {:<20} {:>8}  {:<32} {}\n",
            letter.id,
            letter.subscriber,
            letter.topic,
            format_unix_ms(letter.dead_at_ms),
            letter.attempts,
            payload.replace(['\n', '\r'], " "),
            letter.error
        ));
    }
    out
}

/// The first 12 characters of a digest, as every listing shows versions.
fn short(digest: &(impl AsRef<str> + ?Sized)) -> &str {
    mosaic::digest::short(digest.as_ref())
}

/// A time as `YYYY-MM-DD HH:MM:SS` in UTC.
fn format_unix_ms(ms: u64) -> String {
    match i64::try_from(ms).ok().and_then(chrono::DateTime::from_timestamp_millis) {
        Some(at) => at.format("%Y-%m-%d %H:%M:%S").to_string(),
        // Beyond chrono's range (year 262143): no date to show, say what the host sent.
        None => format!("{ms} ms since 1970"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mosaic::deploy::journal::{Action, JournalEntry};

    fn entry(action: Action, digest: &str, at_unix_ms: u64) -> JournalEntry {
        JournalEntry {
            component: "probe".into(),
            digest: mosaic::digest::Digest::from_hex(digest),
            previous: None,
            action,
            route: None,
            at_unix_ms,
            canary: None,
            reason: None,
        }
    }

    #[test]
    fn dates_print_in_utc_to_the_second() {
        assert_eq!(format_unix_ms(0), "1970-01-01 00:00:00");
        assert_eq!(format_unix_ms(951_782_400_999), "2000-02-29 00:00:00");
        assert_eq!(format_unix_ms(1_700_000_000_123), "2023-11-14 22:13:20");
        assert_eq!(format_unix_ms(4_107_542_399_000), "2100-02-28 23:59:59");
    }

    #[test]
    fn history_marks_only_the_live_deployment_after_a_rollback() {
        let v1 = "1111111111111111aaaa";
        let v2 = "2222222222222222bbbb";
        let history = ComponentHistory {
            component: "probe".into(),
            current: Some(mosaic::digest::Digest::from_hex(v1)),
            history: vec![
                entry(Action::Manifest, v1, 0),
                entry(Action::Deploy, v2, 1_000),
                entry(Action::Rollback, v1, 2_000),
            ],
        };
        assert_eq!(
            history_text(&history),
            "1970-01-01 00:00:00  manifest        111111111111\n\
             1970-01-01 00:00:01  deploy          222222222222\n\
             1970-01-01 00:00:02  rollback        111111111111  <- live\n"
        );
        let empty = ComponentHistory {
            component: "ghost".into(),
            current: None,
            history: Vec::new(),
        };
        assert_eq!(history_text(&empty), "no deployments of `ghost` are recorded\n");
    }

    #[test]
    fn report_names_the_versions_and_the_warnings() {
        let report: DeployReport = serde_json::from_value(serde_json::json!({
            "component": "probe", "digest": "abcdefabcdef0123", "previous": "0123456789abcdef",
            "action": "deploy", "cached": false, "warnings": ["no grant for key-value"],
            "migrations": [], "timings_ms": [["validate", 1.5]], "draining": 0,
            "world": "WASI 0.3 (wasi:http/handler@0.3.0)"
        }))
        .unwrap();
        assert_eq!(
            report_text("deployed", &report),
            "deployed `probe`: version abcdefabcdef, replacing 0123456789ab (compiled, WASI 0.3 (wasi:http/handler@0.3.0))\n\
             warning: no grant for key-value\n"
        );
    }

    #[test]
    fn dead_letters_show_text_or_hex_payloads_on_one_line() {
        let letter = |id: &str, payload: Option<&str>, payload_hex: Option<&str>| DeadLetter {
            id: id.into(),
            subscriber: "notifications".into(),
            topic: "order.created".into(),
            payload: payload.map(str::to_string),
            payload_hex: payload_hex.map(str::to_string),
            attempts: 5,
            error: "handler failed".into(),
            dead_at_ms: 1_700_000_000_123,
        };
        let text = dead_letters_text(&[
            letter("1", Some("line one\nline two"), None),
            letter("2", None, Some("ff00")),
        ]);
        assert_eq!(
            text,
            "ID           COMPONENT        TOPIC                DEAD SINCE           ATTEMPTS  PAYLOAD                          ERROR\n\
             1            notifications    order.created        2023-11-14 22:13:20         5  line one line two                handler failed\n\
             2            notifications    order.created        2023-11-14 22:13:20         5  hex:ff00                         handler failed\n"
        );
        assert_eq!(dead_letters_text(&[]), "the dead-letter store is empty\n");
    }
}
