//! The `mosaic` command line: parse, call the library, print.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context;
use bytes::Bytes;
use clap::{Parser, Subcommand, ValueEnum};
use http::Method;
use mosaic::client::{AdminClient, AdminError};
use mosaic::{Host, HostOptions};

#[derive(Parser)]
#[command(
    name = "mosaic",
    version,
    about = "Serve a Spin application and hot-swap its components"
)]
struct Cli {
    /// The application manifest.
    #[arg(short = 'f', long = "file", global = true, default_value = "spin.toml")]
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
}

#[derive(Subcommand)]
enum Command {
    /// Serve the application.
    Up(ServeArgs),
    /// Serve the application and rebuild + redeploy a component whenever its files change.
    Watch(ServeArgs),
    /// Replace a component with a new version (or add one with --route).
    Deploy {
        component: String,
        file: PathBuf,
        /// Route for a component that is not in the manifest yet, e.g. /hello/...
        #[arg(long)]
        route: Option<String>,
    },
    /// Go back to the version the current one replaced.
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
    let cli = Cli::parse();
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
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Up(args) => serve(&cli.manifest, cli.state_dir, args, false).await,
        Command::Watch(args) => serve(&cli.manifest, cli.state_dir, args, true).await,
        Command::Deploy { component, file, route } => {
            let bytes = std::fs::read(&file).with_context(|| format!("cannot read {}", file.display()))?;
            let client = AdminClient::discover(&cli.manifest, cli.state_dir.as_deref())?;
            let mut path = format!("/v1/components/{component}/deploy");
            if let Some(route) = route {
                path.push_str(&format!("?route={}", encode_query(&route)));
            }
            let report = client
                .call(Method::POST, &path, Bytes::from(bytes))
                .await
                .map_err(explain)?;
            print_report("deployed", &report);
            Ok(())
        }
        Command::Rollback { component } => {
            let client = AdminClient::discover(&cli.manifest, cli.state_dir.as_deref())?;
            let report = client
                .call(
                    Method::POST,
                    &format!("/v1/components/{component}/rollback"),
                    Bytes::new(),
                )
                .await
                .map_err(explain)?;
            print_report("rolled back", &report);
            Ok(())
        }
        Command::Status { json } => {
            let client = AdminClient::discover(&cli.manifest, cli.state_dir.as_deref())?;
            let status = client
                .call(Method::GET, "/v1/status", Bytes::new())
                .await
                .map_err(explain)?;
            // In cluster mode, every host's versions too; alone, 404.
            let cluster = client.call(Method::GET, "/v1/cluster", Bytes::new()).await.ok();
            if json {
                let shown = match cluster {
                    Some(cluster) => serde_json::json!({ "components": status, "cluster": cluster }),
                    None => status,
                };
                println!("{}", serde_json::to_string_pretty(&shown)?);
                return Ok(());
            }
            println!(
                "{:<16} {:<18} {:<14} {:<20} {:>9} {:>9} {:>7}",
                "COMPONENT", "ROUTE", "VERSION", "DEPLOYED", "IN-FLIGHT", "REQUESTS", "ERRORS"
            );
            for component in status.as_array().into_iter().flatten() {
                let text = |key: &str| component.get(key).and_then(|v| v.as_str()).unwrap_or("-").to_string();
                let number = |key: &str| component.get(key).and_then(|v| v.as_u64()).unwrap_or(0);
                let version = text("version");
                println!(
                    "{:<16} {:<18} {:<14} {:<20} {:>9} {:>9} {:>7}",
                    text("name"),
                    text("route"),
                    &version[..version.len().min(12)],
                    format_unix_ms(number("deployed_at_unix_ms")),
                    number("in_flight"),
                    number("requests"),
                    number("errors"),
                );
            }
            if let Some(cluster) = cluster {
                print_cluster(&cluster);
            }
            Ok(())
        }
        Command::Dlq { command } => {
            let client = AdminClient::discover(&cli.manifest, cli.state_dir.as_deref())?;
            dead_letters(&client, command).await
        }
        Command::History { component } => {
            let client = AdminClient::discover(&cli.manifest, cli.state_dir.as_deref())?;
            let history = client
                .call(
                    Method::GET,
                    &format!("/v1/components/{component}/history"),
                    Bytes::new(),
                )
                .await
                .map_err(explain)?;
            let current = history.get("current").and_then(|v| v.as_str()).unwrap_or("");
            let entries = history
                .get("history")
                .and_then(|v| v.as_array())
                .cloned()
                .unwrap_or_default();
            if entries.is_empty() {
                println!("no deployments of `{component}` are recorded");
            }
            for entry in entries {
                let digest = entry.get("digest").and_then(|v| v.as_str()).unwrap_or("");
                let action = entry.get("action").and_then(|v| v.as_str()).unwrap_or("");
                let at = entry.get("at_unix_ms").and_then(|v| v.as_u64()).unwrap_or(0);
                let marker = if digest == current { "  <- live" } else { "" };
                println!(
                    "{}  {:<9} {}{marker}",
                    format_unix_ms(at),
                    action,
                    &digest[..digest.len().min(12)]
                );
            }
            Ok(())
        }
    }
}

async fn dead_letters(client: &AdminClient, command: DlqCommand) -> anyhow::Result<()> {
    let component_query = |component: &Option<String>| {
        component
            .as_ref()
            .map(|name| format!("component={}", encode_query(name)))
    };
    match command {
        DlqCommand::List { component, json } => {
            let path = match component_query(&component) {
                Some(query) => format!("/v1/dlq?{query}"),
                None => "/v1/dlq".to_string(),
            };
            let answer = client.call(Method::GET, &path, Bytes::new()).await.map_err(explain)?;
            let letters = answer.get("dead_letters").cloned().unwrap_or_default();
            if json {
                println!("{}", serde_json::to_string_pretty(&letters)?);
                return Ok(());
            }
            let letters = letters.as_array().cloned().unwrap_or_default();
            if letters.is_empty() {
                println!("the dead-letter store is empty");
                return Ok(());
            }
            println!(
                "{:<12} {:<16} {:<20} {:<20} {:>8}  {:<32} ERROR",
                "ID", "COMPONENT", "TOPIC", "DEAD SINCE", "ATTEMPTS", "PAYLOAD"
            );
            for letter in letters {
                let text = |key: &str| letter.get(key).and_then(|v| v.as_str()).unwrap_or("").to_string();
                let payload = match letter.get("payload").and_then(|v| v.as_str()) {
                    Some(text) => text.to_string(),
                    None => format!("hex:{}", text("payload_hex")),
                };
                let payload: String = payload.chars().take(32).collect();
                println!(
                    "{:<12} {:<16} {:<20} {:<20} {:>8}  {:<32} {}",
                    text("id"),
                    text("subscriber"),
                    text("topic"),
                    format_unix_ms(letter.get("dead_at_ms").and_then(|v| v.as_u64()).unwrap_or(0)),
                    letter.get("attempts").and_then(|v| v.as_u64()).unwrap_or(0),
                    payload.replace(['\n', '\r'], " "),
                    text("error")
                );
            }
            Ok(())
        }
        DlqCommand::Replay { ids, component, all } => {
            if ids.is_empty() && !all {
                anyhow::bail!("name the dead letters to replay (ids from `mosaic dlq list`), or pass --all");
            }
            let mut query: Vec<String> = component_query(&component).into_iter().collect();
            if !ids.is_empty() {
                query.push(format!("ids={}", encode_query(&ids.join(","))));
            }
            let path = format!("/v1/dlq/replay?{}", query.join("&"));
            let answer = client.call(Method::POST, &path, Bytes::new()).await.map_err(explain)?;
            let replayed = answer
                .get("dead_letters")
                .and_then(|v| v.as_array())
                .cloned()
                .unwrap_or_default();
            for letter in &replayed {
                let text = |key: &str| letter.get(key).and_then(|v| v.as_str()).unwrap_or("").to_string();
                println!(
                    "replayed {} to `{}` ({})",
                    text("id"),
                    text("subscriber"),
                    text("topic")
                );
            }
            println!("{} dead letter(s) replayed", replayed.len());
            Ok(())
        }
    }
}

async fn serve(manifest: &Path, state_dir: Option<PathBuf>, args: ServeArgs, watch: bool) -> anyhow::Result<()> {
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
    let settings = match &args.config {
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
    })
    .await?;
    println!("Serving http://{}", host.http_addr());
    for (pattern, component) in host.app().router().routes() {
        println!("  {component}: http://{}{}", host.http_addr(), pattern);
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
    Ok(())
}

/// Every host of the cluster and the version of each component on it; a version that is not
/// the desired one is marked (a rollout in progress, or a host that cannot take it: its error).
fn print_cluster(cluster: &serde_json::Value) {
    let text = |value: &serde_json::Value| value.as_str().unwrap_or("-").to_string();
    let short = |digest: &str| digest[..digest.len().min(12)].to_string();
    println!();
    println!(
        "CLUSTER {} (this host: {})",
        text(&cluster["namespace"]),
        text(&cluster["this_host"])
    );
    println!(
        "{:<24} {:<14} {:<16} {:<14} DESIRED",
        "HOST", "SEEN", "COMPONENT", "VERSION"
    );
    let desired = &cluster["desired"];
    for host in cluster["hosts"].as_array().into_iter().flatten() {
        let silent = host["silent_ms"].as_i64().unwrap_or(0) as f64 / 1000.0;
        let seen = match host["alive"].as_bool().unwrap_or(false) {
            true => format!("{silent:.1}s ago"),
            false => format!("gone {silent:.0}s"),
        };
        let mut first = true;
        for (component, version) in host["versions"].as_object().into_iter().flatten() {
            let version = text(version);
            let mark = match desired[component].as_str() {
                None => "(not set)".to_string(),
                Some(wanted) if wanted == version => "yes".to_string(),
                Some(wanted) => match host["errors"][component].as_str() {
                    Some(error) => format!("no: {} wanted; {error}", short(wanted)),
                    None => format!("no: {} rolling out", short(wanted)),
                },
            };
            let (name, seen) = match first {
                true => (text(&host["host"]), seen.clone()),
                false => (String::new(), String::new()),
            };
            first = false;
            println!(
                "{:<24} {:<14} {:<16} {:<14} {}",
                name,
                seen,
                component,
                short(&version),
                mark
            );
        }
    }
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

fn print_report(verb: &str, report: &serde_json::Value) {
    let text = |key: &str| report.get(key).and_then(|v| v.as_str()).unwrap_or("").to_string();
    let digest = text("digest");
    let previous = text("previous");
    let cached = report.get("cached").and_then(|v| v.as_bool()).unwrap_or(false);
    println!(
        "{verb} `{}`: version {}{} ({})",
        text("component"),
        &digest[..digest.len().min(12)],
        if previous.is_empty() {
            String::new()
        } else {
            format!(", replacing {}", &previous[..previous.len().min(12)])
        },
        if cached {
            "compiled artifact from cache"
        } else {
            "compiled"
        }
    );
    for warning in report.get("warnings").and_then(|v| v.as_array()).into_iter().flatten() {
        println!("warning: {}", warning.as_str().unwrap_or(""));
    }
}

fn encode_query(value: &str) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b'/' | b',' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

fn format_unix_ms(ms: u64) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (year, month, day) = civil_from_days(days as i64);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to a calendar date (Howard Hinnant's algorithm).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let month = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let year = yoe + era * 400 + i64::from(month <= 2);
    (year, month, day)
}
