//! `outbox`: run the relay against PostgreSQL, migrate the schema, show status.
//!
//! ```text
//! outbox relay --config relay.toml          # deliver until SIGTERM/SIGINT
//! outbox migrate [--down]                   # create/upgrade (or drop) the outbox table
//! outbox status                             # counts by status, oldest pending, dead events
//! ```

mod config;
mod http;
mod metered;

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use outbox_core::{Clock, EventFilter, OutboxStore, Status, SystemClock};
use outbox_postgres::{PgConfig, PgStore};
use outbox_worker::Worker;
use tracing::{error, info};

use crate::config::Config;

/// The transactional outbox's relay and operator tool.
#[derive(Parser, Debug)]
#[command(name = "outbox", version, about, long_about = None)]
struct Cli {
    /// Log format on standard error.
    #[arg(
        long,
        value_enum,
        default_value = "text",
        global = true,
        env = "OUTBOX_LOG_FORMAT"
    )]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Where the outbox table is; flags and variables override the config file.
#[derive(clap::Args, Debug, Clone)]
struct Target {
    /// A TOML config file (see `outbox relay --help`).
    #[arg(long, short, env = "OUTBOX_CONFIG")]
    config: Option<PathBuf>,
    /// PostgreSQL URL.
    #[arg(long, env = "DATABASE_URL")]
    database_url: Option<String>,
    /// Schema of the outbox table [default: public].
    #[arg(long, env = "OUTBOX_SCHEMA")]
    schema: Option<String>,
    /// The outbox table [default: outbox_event].
    #[arg(long, env = "OUTBOX_TABLE")]
    table: Option<String>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Deliver committed events to the routes in the config file until SIGTERM or SIGINT, then
    /// finish or release in-flight work and exit.
    ///
    /// Example: `outbox relay --config relay.toml --workers 4 --listen 0.0.0.0:9090`.
    /// Serves /healthz (alive), /readyz (database reachable) and /metrics (Prometheus text:
    /// events by status, oldest pending age) when `[http] listen` or --listen is set.
    Relay {
        #[command(flatten)]
        target: Target,
        /// Workers in this process (overrides [relay] workers).
        #[arg(long, env = "OUTBOX_WORKERS")]
        workers: Option<usize>,
        /// Address for the health and metrics endpoint (overrides [http] listen).
        #[arg(long, env = "OUTBOX_LISTEN")]
        listen: Option<String>,
    },
    /// Create or upgrade the outbox table (idempotent), or with --down drop it and every event
    /// in it.
    ///
    /// Example: `DATABASE_URL=postgres://… outbox migrate`.
    Migrate {
        #[command(flatten)]
        target: Target,
        /// Revert: drop the table, its trigger and history. Deletes every event.
        #[arg(long)]
        down: bool,
    },
    /// Print events by status, the oldest pending event's age and the dead events.
    ///
    /// Example: `outbox status --database-url postgres://…`.
    Status {
        #[command(flatten)]
        target: Target,
        /// How many dead events to list.
        #[arg(long, default_value_t = 20)]
        dead: usize,
    },
}

type CliError = Box<dyn std::error::Error + Send + Sync>;

fn load(target: &Target) -> Result<Config, CliError> {
    let mut config = match &target.config {
        Some(path) => Config::load(path)?,
        None => toml::from_str::<Config>("")?,
    };
    if let Some(url) = &target.database_url {
        config.database_url = Some(url.clone());
    }
    if let Some(schema) = &target.schema {
        config.schema = schema.clone();
    }
    if let Some(table) = &target.table {
        config.table = table.clone();
    }
    Ok(config)
}

async fn store(config: &Config, connections: u32) -> Result<PgStore, CliError> {
    let url = config
        .database_url
        .as_deref()
        .ok_or("no database: set database_url in the config, DATABASE_URL, or --database-url")?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(connections)
        .acquire_timeout(Duration::from_secs(10))
        .connect(url)
        .await
        .map_err(|e| format!("cannot connect to PostgreSQL: {e}"))?;
    Ok(PgStore::new(
        pool,
        PgConfig::new()
            .with_schema(&config.schema)
            .with_table(&config.table)
            .with_delete_delivered(config.delete_delivered),
    )?)
}

async fn relay(
    target: Target,
    workers: Option<usize>,
    listen: Option<String>,
) -> Result<(), CliError> {
    let mut config = load(&target)?;
    if let Some(n) = workers {
        config.relay.workers = n;
    }
    if listen.is_some() {
        config.http.listen = listen;
    }
    let r = &config.relay;
    let settings = r.worker_config()?;
    // Routes first: a mistake in the file is reported before anything connects to the database.
    let meters = Arc::new(metered::Meters::default());
    let router = Arc::new(metered::Metered::new(
        config::build_router(&config.routes).await?,
        meters.clone(),
    ));
    let store = store(
        &config,
        u32::try_from(r.workers.saturating_mul(2).saturating_add(2)).unwrap_or(u32::MAX),
    )
    .await?;
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "relay".into());
    let mut running = Vec::new();
    for i in 0..r.workers {
        let worker = Worker::builder(store.clone(), Arc::clone(&router))
            .config(settings.clone())
            .worker_id(format!("{host}-{}-{i}", std::process::id()))
            .build()?;
        running.push(worker.spawn());
    }
    let server = match &config.http.listen {
        Some(addr) => Some(http::serve(addr, store.clone(), meters).await?),
        None => None,
    };
    info!(workers = r.workers, table = %store.config().qualified_table(), "relay started");

    wait_for_signal().await?;
    info!("stopping: finishing or releasing in-flight deliveries");
    let mut total = outbox_worker::WorkerReport::default();
    for worker in running {
        total += worker.shutdown().await?;
    }
    if let Some(server) = server {
        server.abort();
    }
    info!(
        delivered = total.delivered,
        retried = total.retried,
        dead = total.dead,
        released = total.released,
        "relay stopped"
    );
    Ok(())
}

async fn wait_for_signal() -> Result<(), CliError> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => info!("SIGTERM"),
        result = tokio::signal::ctrl_c() => { result?; info!("SIGINT") }
    }
    Ok(())
}

async fn migrate(target: Target, down: bool) -> Result<(), CliError> {
    let config = load(&target)?;
    let store = store(&config, 2).await?;
    let table = store.config().qualified_table();
    if down {
        let n = store.migrate_down().await?;
        println!("reverted {n} migration(s); {table} is gone");
    } else {
        let n = store.migrate().await?;
        println!(
            "applied {n} migration(s); {table} is at version {}",
            outbox_postgres::LATEST_VERSION
        );
    }
    Ok(())
}

async fn status(target: Target, dead: usize) -> Result<(), CliError> {
    let config = load(&target)?;
    let store = store(&config, 2).await?;
    let counts = store.count_by_status().await?;
    println!("{:<10} {:>12}", "status", "events");
    for s in Status::ALL {
        println!("{:<10} {:>12}", s.as_str(), counts.get(s));
    }
    let oldest = store
        .list(&EventFilter {
            status: Some(Status::Pending),
            limit: 1,
            ..Default::default()
        })
        .await?;
    match oldest.oldest_created_at() {
        Some(at) => println!(
            "oldest pending: {} ({}s old)",
            oldest
                .last_id()
                .map(|id| id.to_string())
                .unwrap_or_default(),
            (SystemClock.now() - at).num_seconds()
        ),
        None => println!("oldest pending: none"),
    }
    let dead_events = store
        .list(&EventFilter {
            status: Some(Status::Dead),
            limit: dead,
            ..Default::default()
        })
        .await?;
    if !dead_events.events.is_empty() {
        println!(
            "\n{:<36}  {:<24} {:>8}  last error",
            "dead event", "type", "attempts"
        );
        for e in dead_events.events {
            println!(
                "{:<36}  {:<24} {:>8}  {}",
                e.id.to_string(),
                e.event_type,
                e.attempts(),
                e.lifecycle.last_error.unwrap_or_default()
            );
        }
    }
    // Rows no worker could read are marked dead when claimed: they show here, with why.
    if !dead_events.undecodable.is_empty() {
        println!(
            "\n{:<36}  {:<10}  why it cannot be read",
            "unreadable row", "status"
        );
        for u in dead_events.undecodable {
            println!(
                "{:<36}  {:<10}  {}",
                u.id.to_string(),
                u.status.as_str(),
                u.error
            );
        }
    }
    Ok(())
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match cli.log_format {
        LogFormat::Text => logs.init(),
        LogFormat::Json => logs.json().init(),
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("outbox: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async move {
        match cli.command {
            Command::Relay {
                target,
                workers,
                listen,
            } => relay(target, workers, listen).await,
            Command::Migrate { target, down } => migrate(target, down).await,
            Command::Status { target, dead } => status(target, dead).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            eprintln!("outbox: {e}");
            ExitCode::FAILURE
        }
    }
}
