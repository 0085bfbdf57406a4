//! `outbox`: run the relay against PostgreSQL or MySQL/MariaDB, migrate the schema, show
//! status.
//!
//! ```text
//! outbox relay --config relay.toml          # deliver until SIGTERM/SIGINT
//! outbox migrate [--down --yes]             # create/upgrade (or drop) the outbox table
//! outbox status                             # counts by status, oldest pending, dead events
//! outbox dead list | show ID | revive ID…   # look at dead events and give them more attempts
//! outbox events list|show|retry|delete|pause|resume   # search, repair, pause
//! outbox admin [--listen 127.0.0.1:8089]    # the web admin (read-only without credentials)
//! outbox config example                     # the config format, every key documented
//! ```

mod config;
mod events;
mod http;
mod startup;

use std::io::{Write, stdout};
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, Subcommand, ValueEnum};
use outbox_core::{
    Clock, DynOutboxStore, EventFilter, EventId, EventPage, OutboxEvent, OutboxStore, Status,
    StoreError, SystemClock,
};
use outbox_mysql::{MySqlConfig, MySqlStore};
use outbox_postgres::{PgConfig, PgStore};
use outbox_sqlite::{SqliteConfig, SqliteStore};
use outbox_worker::Worker;
use sqlx::Connection;
use sqlx::mysql::{MySqlConnectOptions, MySqlConnection};
use sqlx::postgres::{PgConnectOptions, PgConnection};
use std::str::FromStr;
use tracing::{info, warn};

use crate::config::Config;
use crate::startup::Startup;

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
    /// A TOML config file (`outbox config example` prints one, every key documented).
    #[arg(long, short, env = "OUTBOX_CONFIG")]
    config: Option<PathBuf>,
    /// Database URL: `postgres://…`, or `mysql://…` / `mariadb://…`.
    #[arg(long, env = "DATABASE_URL")]
    database_url: Option<String>,
    /// Schema of the outbox table [default: public] (PostgreSQL; on MySQL the URL's database).
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
    #[command(after_long_help = concat!("Config file format (`outbox config example`):\n\n", include_str!("example.toml")))]
    Relay {
        #[command(flatten)]
        target: Target,
        /// Workers in this process (overrides [relay] workers).
        #[arg(long, env = "OUTBOX_WORKERS")]
        workers: Option<usize>,
        /// Address for the health and metrics endpoint (overrides [http] listen).
        #[arg(long, env = "OUTBOX_LISTEN")]
        listen: Option<String>,
        /// Credentials of the web admin served under /admin when `[http] admin = true`.
        #[command(flatten)]
        credentials: AdminCredentials,
    },
    /// Create or upgrade the outbox table (idempotent), or with --down drop it and every event
    /// in it.
    ///
    /// Example: `DATABASE_URL=postgres://… outbox migrate`.
    Migrate {
        #[command(flatten)]
        target: Target,
        /// Revert: drop the table, its trigger and history. Deletes every event; needs --yes.
        #[arg(long)]
        down: bool,
        /// Confirms --down.
        #[arg(long)]
        yes: bool,
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
    /// List events with filters, or show one.
    Events {
        #[command(subcommand)]
        action: events::EventsAction,
    },
    /// Look at dead events and give them more attempts.
    Dead {
        #[command(subcommand)]
        action: DeadAction,
    },
    /// Serve the web admin: overview, event search and detail with attempt history, retry,
    /// edit-and-replay, delete, bulk actions, pause and resume.
    ///
    /// Read-only unless credentials are given: a token (OUTBOX_ADMIN_TOKEN, entered once on
    /// the login page) or basic-auth credentials (OUTBOX_ADMIN_USER, OUTBOX_ADMIN_PASSWORD);
    /// then every request needs them and every change a CSRF token.
    ///
    /// Example: `OUTBOX_ADMIN_TOKEN=$(openssl rand -hex 24) outbox admin --listen 127.0.0.1:8089`.
    Admin {
        #[command(flatten)]
        target: Target,
        /// Address to serve on (loopback unless told otherwise).
        #[arg(long, env = "OUTBOX_ADMIN_LISTEN", default_value = "127.0.0.1:8089")]
        listen: String,
        #[command(flatten)]
        credentials: AdminCredentials,
    },
    /// The config file format.
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
}

/// Who may change things in the web admin.
#[derive(clap::Args, Debug, Clone)]
struct AdminCredentials {
    /// Admin token (at least 16 characters); prefer the variable to the flag, which other
    /// users can see in the process list.
    #[arg(
        long = "admin-token",
        env = "OUTBOX_ADMIN_TOKEN",
        hide_env_values = true
    )]
    token: Option<String>,
    /// Basic-auth user.
    #[arg(long = "admin-user", env = "OUTBOX_ADMIN_USER")]
    user: Option<String>,
    /// Basic-auth password.
    #[arg(
        long = "admin-password",
        env = "OUTBOX_ADMIN_PASSWORD",
        hide_env_values = true
    )]
    password: Option<String>,
    /// Longest one admin query may run, in milliseconds, before the database cancels it (the
    /// page then says so): a search the table has no index for cannot load the database.
    /// PostgreSQL and MariaDB bound every statement, MySQL and SQLite their reads.
    #[arg(
        long = "admin-query-timeout-ms",
        env = "OUTBOX_ADMIN_QUERY_TIMEOUT_MS",
        default_value_t = 5_000,
        value_parser = clap::value_parser!(u64).range(1..=600_000)
    )]
    query_timeout_ms: u64,
}

/// Shortest admin token accepted.
const MIN_TOKEN: usize = 16;

impl AdminCredentials {
    fn auth(&self) -> Result<outbox_admin::Auth, CliError> {
        match (&self.token, &self.user, &self.password) {
            (Some(_), Some(_), _) => {
                Err("give the admin a token or basic-auth credentials, not both".into())
            }
            (Some(token), None, _) if token.chars().count() < MIN_TOKEN => Err(format!(
                "the admin token must be at least {MIN_TOKEN} characters (openssl rand -hex 24 makes one)"
            )
            .into()),
            (Some(token), None, _) => Ok(outbox_admin::Auth::Token(token.clone())),
            (None, Some(user), Some(password)) if !password.is_empty() => {
                Ok(outbox_admin::Auth::Basic {
                    user: user.clone(),
                    password: password.clone(),
                })
            }
            (None, Some(_), _) => Err("--admin-user needs --admin-password (OUTBOX_ADMIN_PASSWORD)".into()),
            (None, None, Some(_)) => Err("--admin-password needs --admin-user (OUTBOX_ADMIN_USER)".into()),
            (None, None, None) => Ok(outbox_admin::Auth::ReadOnly),
        }
    }
}

/// The connection options of the admin's own pool: PostgreSQL cancels any of its statements
/// that runs past the admin's query timeout.
fn admin_options(
    config: &Config,
    credentials: &AdminCredentials,
) -> Result<PgConnectOptions, CliError> {
    Ok(database_options(config)?.options([(
        "statement_timeout",
        credentials.query_timeout_ms.to_string(),
    )]))
}

/// The admin's own store on the backend the URL's scheme names, checked to be at this build's
/// schema version. Its statements are bounded by the admin's query timeout where the database
/// can bound them: PostgreSQL's `statement_timeout`, MariaDB's `max_statement_time`, MySQL's
/// `max_execution_time` (reads only). SQLite has no statement timeout: there the store's own
/// bound on reads serves ([`SqliteStore::with_read_bound`]), on `shared` (the relay's own
/// store, when there is one), so that a retry wakes the relay's workers at once.
async fn admin_store(
    config: &Config,
    credentials: &AdminCredentials,
    target: &Target,
    shared: Option<SqliteStore>,
) -> Result<Arc<DynOutboxStore>, CliError> {
    let now = Startup::within(Duration::ZERO);
    let timeout = Duration::from_millis(credentials.query_timeout_ms);
    Ok(match database_url(config)?.1 {
        Backend::Postgres => {
            let options = admin_options(config, credentials)?;
            let store = store_with(config, options, 4, now).await?;
            current_schema(&store, target).await?;
            Arc::new(store)
        }
        Backend::MySql => {
            let store = mysql_store_bounded(config, 4, now, Some(timeout)).await?;
            sql_current(&store).await?;
            Arc::new(store)
        }
        Backend::Sqlite => {
            let store = match shared {
                Some(store) => store,
                None => sqlite_store(config).await?,
            }
            .with_read_bound(timeout);
            sql_current(&store).await?;
            Arc::new(store)
        }
    })
}

/// The web admin over `store`, mounted at `base_path`, its rate sampler running.
fn admin(
    store: Arc<DynOutboxStore>,
    credentials: &AdminCredentials,
    base_path: &str,
) -> Result<axum::Router, CliError> {
    let auth = credentials.auth()?;
    if matches!(auth, outbox_admin::Auth::ReadOnly) {
        info!(
            "admin is read-only: set OUTBOX_ADMIN_TOKEN (or OUTBOX_ADMIN_USER and OUTBOX_ADMIN_PASSWORD) to make changes"
        );
    }
    let admin = outbox_admin::Admin::new(
        store,
        outbox_admin::AdminConfig {
            auth,
            base_path: base_path.to_owned(),
            ..outbox_admin::AdminConfig::default()
        },
    );
    tokio::spawn(admin.clone().run_sampler());
    Ok(admin.router())
}

async fn serve_admin(
    target: Target,
    listen: String,
    credentials: AdminCredentials,
) -> Result<(), CliError> {
    credentials.auth()?;
    let config = load(&target)?;
    let store = admin_store(&config, &credentials, &target, None).await?;
    let router = admin(store, &credentials, "")?;
    let listener = bind(&listen, "--listen").await?;
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback()
        && credentials
            .auth()
            .is_ok_and(|a| matches!(a, outbox_admin::Auth::ReadOnly))
    {
        warn!(%addr, "the admin is reachable from other hosts and anyone there can read every event");
    }
    info!(%addr, "admin listening: http://{addr}/");
    let mut signals = Signals::new()?;
    axum::serve(listener, router)
        .with_graceful_shutdown(async move {
            let signal = signals.recv().await;
            info!("{signal}: admin stopping");
        })
        .await?;
    Ok(())
}

#[derive(Subcommand, Debug)]
enum DeadAction {
    /// List dead events, oldest first, with their last error.
    ///
    /// Example: `outbox dead list --type file.stored`.
    List {
        #[command(flatten)]
        target: Target,
        /// Only this event type.
        #[arg(long = "type")]
        event_type: Option<String>,
        /// At most this many.
        #[arg(long, default_value_t = 100)]
        limit: usize,
    },
    /// Print one event, every field, as JSON.
    ///
    /// Example: `outbox dead show 0190f1c2-…`.
    Show {
        #[command(flatten)]
        target: Target,
        /// The event's id.
        id: EventId,
    },
    /// Give dead events more attempts, due now: the ones named, or every dead one matching
    /// --type, or with --all every dead event.
    ///
    /// Example: `outbox dead revive --type file.stored --attempts 3`.
    Revive {
        #[command(flatten)]
        target: Target,
        /// Events to revive.
        ids: Vec<EventId>,
        /// Every dead event of this type.
        #[arg(long = "type", conflicts_with = "ids")]
        event_type: Option<String>,
        /// Every dead event.
        #[arg(long, conflicts_with_all = ["ids", "event_type"])]
        all: bool,
        /// Attempts to give each.
        #[arg(long, default_value_t = 1)]
        attempts: u32,
    },
    /// Let the events of an ordering key parked behind a dead head go on: each named dead event
    /// gives up its key (it stays dead) and the key's next event is delivered. `outbox status`
    /// lists the parked keys with their heads.
    ///
    /// Example: `outbox dead skip 0190f1c2-…`.
    Skip {
        #[command(flatten)]
        target: Target,
        /// The dead heads to skip.
        #[arg(required = true)]
        ids: Vec<EventId>,
    },
}

#[derive(Subcommand, Debug)]
enum ConfigAction {
    /// Print an example config with every key, its default and range.
    Example,
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

/// Longest one connection attempt may take (an unreachable host can hold a TCP connect for
/// minutes).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The database a URL names, by its scheme.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Backend {
    /// `postgres://`, `postgresql://`.
    Postgres,
    /// `mysql://`, `mariadb://`.
    MySql,
    /// `sqlite://`.
    Sqlite,
}

/// The database URL and its backend, checked by scheme (a misspelt scheme such as
/// `postgress://` used to be taken as PostgreSQL and fail later, or connect somewhere
/// unexpected).
fn database_url(config: &Config) -> Result<(&str, Backend), CliError> {
    let url = config
        .database_url
        .as_deref()
        .ok_or("no database: set database_url in the config, DATABASE_URL, or --database-url")?;
    let scheme = url.split_once("://").map(|(scheme, _)| scheme);
    match scheme {
        Some("postgres" | "postgresql") => Ok((url, Backend::Postgres)),
        Some("mysql" | "mariadb") => Ok((url, Backend::MySql)),
        Some("sqlite") => Ok((url, Backend::Sqlite)),
        Some(other) => Err(format!(
            "database_url: scheme {other:?} is not a database this relay knows; write \
             postgres://user@host:port/database, mysql://user@host:port/database or \
             sqlite://path/to/file.db"
        )
        .into()),
        None => Err(
            "database_url: not a URL; write postgres://user@host:port/database, \
             mysql://user@host:port/database or sqlite://path/to/file.db"
                .into(),
        ),
    }
}

/// The database URL, checked: PostgreSQL's scheme, for the commands only PostgreSQL serves.
fn database_options(config: &Config) -> Result<PgConnectOptions, CliError> {
    let (url, backend) = database_url(config)?;
    if backend != Backend::Postgres {
        return Err(
            "this needs PostgreSQL; on MySQL/MariaDB and SQLite every command works, but not \
             relay.mode = \"stream\" (see docs/mysql.md, docs/sqlite.md)"
                .into(),
        );
    }
    PgConnectOptions::from_str(url).map_err(|e| format!("database_url: cannot be read: {e}").into())
}

/// Connects to MySQL/MariaDB (retrying until `startup`'s deadline, each failure logged) and
/// opens a pool of `connections` for the config's table.
async fn mysql_store(
    config: &Config,
    connections: u32,
    startup: Startup,
) -> Result<MySqlStore, CliError> {
    mysql_store_bounded(config, connections, startup, None).await
}

/// [`mysql_store`], each statement of its connections bounded by `timeout` when one is given.
async fn mysql_store_bounded(
    config: &Config,
    connections: u32,
    startup: Startup,
    timeout: Option<Duration>,
) -> Result<MySqlStore, CliError> {
    let (url, _) = database_url(config)?;
    // sqlx reads MySQL's scheme; MariaDB speaks the same protocol.
    let url = url.replacen("mariadb://", "mysql://", 1);
    let options = MySqlConnectOptions::from_str(&url)
        .map_err(|e| format!("database_url: cannot be read: {e}"))?;
    startup
        .retry("MySQL", || async {
            match tokio::time::timeout(CONNECT_TIMEOUT, MySqlConnection::connect_with(&options))
                .await
            {
                Ok(Ok(connection)) => {
                    let _ = connection.close().await;
                    Ok(())
                }
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {}s", CONNECT_TIMEOUT.as_secs())),
            }
        })
        .await?;
    let mut pool = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(connections)
        .acquire_timeout(CONNECT_TIMEOUT);
    if let Some(timeout) = timeout {
        pool = pool.after_connect(move |conn, _| Box::pin(bound_statements(conn, timeout)));
    }
    let pool = pool.connect_lazy_with(options);
    let store_config = MySqlConfig::new()
        .with_table(&config.table)
        .with_delete_delivered(config.delete_delivered)
        .with_dead_head(config.dead_head);
    Ok(MySqlStore::new(pool, store_config)?)
}

/// Bounds every statement of `conn` to `timeout`: MariaDB's `max_statement_time` (seconds,
/// every statement), else MySQL's `max_execution_time` (milliseconds, reads only). The server
/// then interrupts a statement that runs longer, which the store reports as timed out.
async fn bound_statements(
    conn: &mut MySqlConnection,
    timeout: Duration,
) -> Result<(), sqlx::Error> {
    let version: String = sqlx::query_scalar("SELECT VERSION()")
        .fetch_one(&mut *conn)
        .await?;
    let millis = u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX);
    if version.contains("MariaDB") {
        sqlx::query("SET SESSION max_statement_time = ?")
            .bind(timeout.as_secs_f64())
            .execute(&mut *conn)
            .await?;
    } else {
        sqlx::query("SET SESSION max_execution_time = ?")
            .bind(millis)
            .execute(&mut *conn)
            .await?;
    }
    Ok(())
}

/// Opens the SQLite database file for the config's table. The file must be there: only
/// `outbox migrate` makes it, so that a mistyped path is an error, not a new empty database.
async fn sqlite_store(config: &Config) -> Result<SqliteStore, CliError> {
    sqlite_open(config, false).await
}

/// Opens the SQLite database file, creating it if missing when `create` says so.
async fn sqlite_open(config: &Config, create: bool) -> Result<SqliteStore, CliError> {
    let (url, _) = database_url(config)?;
    let store_config = SqliteConfig::new()
        .with_table(&config.table)
        .with_delete_delivered(config.delete_delivered)
        .with_dead_head(config.dead_head);
    let options = outbox_sqlite::connect_options(url)?
        .create_if_missing(create)
        .busy_timeout(store_config.write_wait());
    let file = options.get_filename();
    if !create && file != std::path::Path::new(":memory:") && !file.exists() {
        return Err(format!(
            "no SQLite database at {}: `outbox migrate` with the same URL creates it",
            file.display()
        )
        .into());
    }
    let pool = sqlx::sqlite::SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(options)
        .await
        .map_err(outbox_sqlite::db_error)?;
    Ok(SqliteStore::new(pool, store_config)?)
}

/// A store other than PostgreSQL's, as the relay, `migrate` and `status` use it: its tables
/// and their version, without stream mode or the operator's pages.
#[outbox_core::async_trait]
trait SqlStore: OutboxStore + Clone + 'static {
    /// The database's name in messages.
    const NAME: &'static str;
    /// The newest schema version this build knows.
    const LATEST: i32;
    /// The outbox table's name.
    fn table(&self) -> &str;
    /// The table's schema version (0 before the first migration).
    async fn schema_version(&self) -> Result<i32, StoreError>;
    /// Applies missing migrations; how many ran.
    async fn migrate(&self) -> Result<usize, StoreError>;
    /// Reverts every migration; how many ran.
    async fn migrate_down(&self) -> Result<usize, StoreError>;
}

#[outbox_core::async_trait]
impl SqlStore for MySqlStore {
    const NAME: &'static str = "MySQL/MariaDB";
    const LATEST: i32 = outbox_mysql::LATEST_VERSION;
    fn table(&self) -> &str {
        self.config().table()
    }
    async fn schema_version(&self) -> Result<i32, StoreError> {
        MySqlStore::schema_version(self).await
    }
    async fn migrate(&self) -> Result<usize, StoreError> {
        MySqlStore::migrate(self).await
    }
    async fn migrate_down(&self) -> Result<usize, StoreError> {
        MySqlStore::migrate_down(self).await
    }
}

#[outbox_core::async_trait]
impl SqlStore for SqliteStore {
    const NAME: &'static str = "SQLite";
    const LATEST: i32 = outbox_sqlite::LATEST_VERSION;
    fn table(&self) -> &str {
        self.config().table()
    }
    async fn schema_version(&self) -> Result<i32, StoreError> {
        SqliteStore::schema_version(self).await
    }
    async fn migrate(&self) -> Result<usize, StoreError> {
        SqliteStore::migrate(self).await
    }
    async fn migrate_down(&self) -> Result<usize, StoreError> {
        SqliteStore::migrate_down(self).await
    }
}

/// Connects to PostgreSQL (retrying until `startup`'s deadline, each failure logged with its
/// real cause) and opens a pool of `connections`.
async fn store(config: &Config, connections: u32, startup: Startup) -> Result<PgStore, CliError> {
    store_with(config, database_options(config)?, connections, startup).await
}

/// [`store`] on connections made with `options`.
async fn store_with(
    config: &Config,
    options: PgConnectOptions,
    connections: u32,
    startup: Startup,
) -> Result<PgStore, CliError> {
    startup
        .retry("PostgreSQL", || async {
            match tokio::time::timeout(CONNECT_TIMEOUT, PgConnection::connect_with(&options)).await
            {
                Ok(Ok(connection)) => {
                    let _ = connection.close().await;
                    Ok(())
                }
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err(format!("no answer within {}s", CONNECT_TIMEOUT.as_secs())),
            }
        })
        .await?;
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(connections)
        .acquire_timeout(CONNECT_TIMEOUT)
        .connect_lazy_with(options);
    Ok(PgStore::new(pool, pg_config(config))?)
}

/// The store's settings from the config file.
fn pg_config(config: &Config) -> PgConfig {
    PgConfig::new()
        .with_schema(&config.schema)
        .with_table(&config.table)
        .with_delete_delivered(config.delete_delivered)
        .with_dead_head(config.dead_head)
}

async fn relay(
    target: Target,
    workers: Option<usize>,
    listen: Option<String>,
    credentials: AdminCredentials,
) -> Result<(), CliError> {
    // Signals are ours from the first moment: a SIGTERM while start-up still waits for the
    // database or a broker ends the process cleanly (it used to kill it mid-start-up).
    let mut signals = Signals::new()?;
    let started = tokio::select! {
        started = start(&target, workers, listen, &credentials) => started?,
        signal = signals.recv() => {
            info!("{signal} during start-up: nothing was claimed; stopped");
            return Ok(());
        }
    };
    let (mut running, stream, server) = started;

    let signal = match stream {
        None => signals.recv().await,
        Some(stream) => {
            // A stream reader stops by itself only on an error no retry can fix (its slot is
            // gone): the relay stops with it, naming the error.
            let mut check = tokio::time::interval(Duration::from_millis(200));
            let signal = loop {
                tokio::select! {
                    signal = signals.recv() => break Some(signal),
                    _ = check.tick() => if stream.is_finished() { break None },
                }
            };
            match signal {
                Some(signal) => {
                    running.push(stream);
                    signal
                }
                None => {
                    let ended = stream.shutdown().await;
                    let _ = outbox_worker::RunningWorker::shutdown_all(running).await;
                    if let Some(server) = server {
                        server.abort();
                    }
                    ended?;
                    return Err("the stream reader stopped".into());
                }
            }
        }
    };
    info!("{signal}: stopping, finishing or releasing in-flight deliveries");
    // All workers stop claiming at once and drain side by side: one grace period in all.
    let total = outbox_worker::RunningWorker::shutdown_all(running).await?;
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

/// Refuses a table at an older schema version than this build's (or missing: version 0),
/// naming the fix.
async fn sql_current<S: SqlStore>(store: &S) -> Result<(), CliError> {
    let (version, latest) = (store.schema_version().await?, S::LATEST);
    if version < latest {
        return Err(format!(
            "the outbox table {} is at schema version {version}, this build needs {latest}: \
             run `outbox migrate` with the same database and table first",
            store.table()
        )
        .into());
    }
    Ok(())
}

/// The relay's workers (and endpoint, with the admin's routes if given) on a store other than
/// PostgreSQL's, once its table is at this build's version.
async fn start_on<S: SqlStore>(
    store: S,
    workers: usize,
    settings: &outbox_worker::WorkerConfig,
    router: &Arc<outbox_router::Router>,
    listener: Option<tokio::net::TcpListener>,
    metrics: metrics_exporter_prometheus::PrometheusHandle,
    admin: Option<axum::Router>,
) -> Result<
    (
        Vec<outbox_worker::RunningWorker>,
        Option<outbox_worker::RunningWorker>,
        Option<tokio::task::JoinHandle<()>>,
    ),
    CliError,
> {
    sql_current(&store).await?;
    let server = match listener {
        Some(listener) => Some(http::serve(
            listener,
            http::Served::other(Arc::new(store.clone())),
            metrics,
            admin,
        )?),
        None => None,
    };
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "relay".into());
    let mut running = Vec::new();
    for i in 0..workers {
        let worker = Worker::builder(store.clone(), Arc::clone(router))
            .config(settings.clone())
            .worker_id(format!("{host}-{}-{i}", std::process::id()))
            .build()?;
        running.push(worker.spawn());
    }
    info!(workers, table = %store.table(), "relay started on {}", S::NAME);
    Ok((running, None, server))
}

/// Everything before delivering: config, endpoint, brokers, database, then the workers.
async fn start(
    target: &Target,
    workers: Option<usize>,
    listen: Option<String>,
    credentials: &AdminCredentials,
) -> Result<
    (
        Vec<outbox_worker::RunningWorker>,
        Option<outbox_worker::RunningWorker>,
        Option<tokio::task::JoinHandle<()>>,
    ),
    CliError,
> {
    let mut config = load(target)?;
    if let Some(n) = workers {
        config.relay.workers = n;
    }
    if listen.is_some() {
        config.http.listen = listen;
    }
    let r = &config.relay;
    let settings = r.worker_config()?;
    let stream_settings = match r.mode {
        config::Mode::Stream => Some(r.stream_worker_config()?),
        config::Mode::Claim => None,
    };
    if let Some(advice) = config.claim_advice() {
        warn!("{advice}");
    }
    let startup = Startup::within(r.startup_timeout()?);
    // The endpoint's address first, then the routes: a mistake in the file is reported before
    // anything connects, and the port is ours before any worker claims an event.
    let listener = match &config.http.listen {
        Some(addr) => Some(bind(addr, "http.listen").await?),
        None => None,
    };
    if config.http.admin && listener.is_none() {
        return Err("[http] admin = true needs [http] listen (or --listen)".into());
    }
    // Credentials are checked before anything connects.
    if config.http.admin {
        credentials.auth()?;
    }
    let metrics = http::recorder()?;
    let router =
        Arc::new(config::build_router(&config.routes, &startup, settings.delivery_timeout).await?);
    let backend = database_url(&config)?.1;
    if backend != Backend::Postgres {
        if stream_settings.is_some() {
            return Err(STREAM_NEEDS_POSTGRES.into());
        }
        let connections =
            u32::try_from(r.workers.saturating_mul(2).saturating_add(2)).unwrap_or(u32::MAX);
        let (workers, settings) = (r.workers, &settings);
        return match backend {
            Backend::Sqlite => {
                let store = sqlite_store(&config).await?;
                let admin = if config.http.admin {
                    let shared = Some(store.clone());
                    let admin_store = admin_store(&config, credentials, target, shared).await?;
                    Some(admin(admin_store, credentials, "/admin")?)
                } else {
                    None
                };
                start_on(store, workers, settings, &router, listener, metrics, admin).await
            }
            _ => {
                let store = mysql_store(&config, connections, startup).await?;
                let admin = if config.http.admin {
                    let admin_store = admin_store(&config, credentials, target, None).await?;
                    Some(admin(admin_store, credentials, "/admin")?)
                } else {
                    None
                };
                start_on(store, workers, settings, &router, listener, metrics, admin).await
            }
        };
    }
    let store = store(
        &config,
        u32::try_from(r.workers.saturating_mul(2).saturating_add(2)).unwrap_or(u32::MAX),
        startup,
    )
    .await?;
    // The table must be there, at this version, before workers start, or each would log the
    // same error forever.
    current_schema(&store, target).await?;
    let slot = &r.stream.slot;
    let streaming = store.stream_status(slot).await?;
    match (r.mode, streaming.table_streaming, streaming.exists) {
        (config::Mode::Stream, true, true) | (config::Mode::Claim, false, _) => {}
        (config::Mode::Stream, _, _) => {
            return Err(format!(
                "relay.mode = \"stream\" but the outbox table is not set up for it (slot {slot:?} \
                 {}, table {}): run `outbox migrate` with this config first",
                if streaming.exists {
                    "exists"
                } else {
                    "is missing"
                },
                if streaming.table_streaming {
                    "streaming"
                } else {
                    "not streaming"
                },
            )
            .into());
        }
        (config::Mode::Claim, true, _) => {
            return Err(format!(
                "the outbox table is set up for the log-reading relay: set relay.mode = \"stream\", \
                 or run `outbox migrate` with relay.mode = \"claim\" to switch it back (slot {slot:?})"
            )
            .into());
        }
    }
    let admin_routes = if config.http.admin {
        let store = admin_store(&config, credentials, target, None).await?;
        Some(admin(store, credentials, "/admin")?)
    } else {
        None
    };
    let server = match listener {
        Some(listener) => Some(http::serve(
            listener,
            http::Served::postgres(store.clone()),
            metrics,
            admin_routes,
        )?),
        None => None,
    };
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "relay".into());
    let mut running = Vec::new();
    for i in 0..r.workers {
        let worker = Worker::builder(store.clone(), Arc::clone(&router))
            .config(settings.clone())
            .worker_id(format!("{host}-{}-{i}", std::process::id()))
            .build()?;
        running.push(worker.spawn());
    }
    let stream = match stream_settings {
        Some(settings) => {
            http::watch_slot(slot);
            let reader = Worker::builder(store.clone(), Arc::clone(&router))
                .config(settings)
                .worker_id(format!("{host}-{}-stream", std::process::id()))
                .build()?;
            let url = config.database_url.as_deref().unwrap_or_default();
            let source = store
                .stream(slot, url)?
                .with_poll(Duration::from_millis(r.stream.poll_ms));
            Some(reader.spawn_stream(source))
        }
        None => None,
    };
    info!(workers = r.workers, mode = ?r.mode, table = %store.config().qualified_table(), "relay started");
    Ok((running, stream, server))
}

/// Refuses a table that is missing or at an older schema version than this build's, naming
/// the fix.
async fn current_schema(store: &PgStore, target: &Target) -> Result<(), CliError> {
    let version = store.schema_version().await?;
    let latest = outbox_postgres::LATEST_VERSION;
    if version == 0 {
        // Not migrated at all: the table is missing.
        store
            .count_by_status()
            .await
            .map_err(|e| explain(e.into(), target))?;
    }
    if version < latest {
        return Err(format!(
            "the outbox table {} is at schema version {version}, this build needs {latest}: run \
             `outbox migrate` with the same database, schema and table first",
            store.config().qualified_table()
        )
        .into());
    }
    Ok(())
}

/// Binds `addr`, given as `what` (`http.listen`, `--listen`), naming both when it cannot.
async fn bind(addr: &str, what: &str) -> Result<tokio::net::TcpListener, CliError> {
    let not_an_address =
        || format!("{what} = {addr:?}: not an address; write host:port, e.g. 127.0.0.1:9090");
    let parsed = tokio::net::lookup_host(addr)
        .await
        .map_err(|_| not_an_address())?
        .next()
        .ok_or_else(not_an_address)?;
    tokio::net::TcpListener::bind(parsed)
        .await
        .map_err(|e| format!("{what} = {addr:?}: cannot listen there: {e}").into())
}

/// SIGTERM and SIGINT, listened for from creation on.
struct Signals {
    term: tokio::signal::unix::Signal,
    int: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> std::io::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        Ok(Self {
            term: signal(SignalKind::terminate())?,
            int: signal(SignalKind::interrupt())?,
        })
    }

    /// The next signal's name.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.term.recv() => "SIGTERM",
            _ = self.int.recv() => "SIGINT",
        }
    }
}

async fn migrate(target: Target, down: bool, yes: bool) -> Result<(), CliError> {
    if down && !yes {
        return Err(
            "migrate --down drops the outbox table and every event in it; \
                    run it again with --yes to confirm"
                .into(),
        );
    }
    let config = load(&target)?;
    match database_url(&config)?.1 {
        Backend::MySql => {
            let store = mysql_store(&config, 2, Startup::within(Duration::ZERO)).await?;
            return migrate_on(store, &config, down).await;
        }
        Backend::Sqlite => {
            return migrate_on(sqlite_open(&config, !down).await?, &config, down).await;
        }
        Backend::Postgres => {}
    }
    let store = store(&config, 2, Startup::within(Duration::ZERO)).await?;
    let table = store.config().qualified_table();
    let slot = &config.relay.stream.slot;
    if down {
        if store.stream_status(slot).await?.exists {
            // The slot would go on retaining WAL for a table that is gone.
            store.stop_streaming(slot, true).await?;
            writeln!(stdout(), "dropped replication slot {slot}")?;
        }
        let n = store.migrate_down().await?;
        writeln!(stdout(), "reverted {n} migration(s); {table} is gone")?;
    } else {
        let n = store.migrate().await?;
        writeln!(
            stdout(),
            "applied {n} migration(s); {table} is at version {}",
            outbox_postgres::LATEST_VERSION
        )?;
        match config.relay.mode {
            config::Mode::Stream => {
                let setup = store.start_streaming(slot).await?;
                let said = |created: bool| if created { "created" } else { "exists" };
                writeln!(
                    stdout(),
                    "streaming: publication {} {}, slot {slot} {}, table {}",
                    store.publication(),
                    said(setup.created_publication),
                    said(setup.created_slot),
                    if setup.switched {
                        "switched to streaming"
                    } else {
                        "already streaming"
                    }
                )?;
                if setup.handed_back > 0 {
                    writeln!(
                        stdout(),
                        "the slot was made anew: {} event(s) it had not confirmed were handed to \
                         the workers",
                        setup.handed_back
                    )?;
                }
            }
            config::Mode::Claim => {
                if store.stream_status(slot).await?.table_streaming {
                    let handed = store.stop_streaming(slot, true).await?;
                    writeln!(
                        stdout(),
                        "switched back from streaming to claims: slot {slot} dropped, {handed} \
                         event(s) handed to the workers"
                    )?;
                }
            }
        }
    }
    Ok(())
}

/// `outbox migrate` on a store other than PostgreSQL's: the tables and their history (no
/// stream mode there).
async fn migrate_on<S: SqlStore>(store: S, config: &Config, down: bool) -> Result<(), CliError> {
    if config.relay.mode == config::Mode::Stream {
        return Err(STREAM_NEEDS_POSTGRES.into());
    }
    let table = store.table().to_owned();
    if down {
        let n = store.migrate_down().await?;
        writeln!(stdout(), "reverted {n} migration(s); {table} is gone")?;
    } else {
        let n = store.migrate().await?;
        writeln!(
            stdout(),
            "applied {n} migration(s); {table} is at version {}",
            S::LATEST
        )?;
    }
    Ok(())
}

/// Why stream mode is refused on MySQL/MariaDB and SQLite.
const STREAM_NEEDS_POSTGRES: &str = "relay.mode = \"stream\" reads PostgreSQL's write-ahead \
    log; on MySQL/MariaDB and SQLite use relay.mode = \"claim\"";

async fn status(target: Target, dead: usize) -> Result<(), CliError> {
    let config = load(&target)?;
    match database_url(&config)?.1 {
        Backend::MySql => {
            let store = mysql_store(&config, 2, Startup::within(Duration::ZERO)).await?;
            return status_on(&store, dead).await;
        }
        Backend::Sqlite => return status_on(&sqlite_store(&config).await?, dead).await,
        Backend::Postgres => {}
    }
    let store = store(&config, 2, Startup::within(Duration::ZERO)).await?;
    print_counts(&store).await?;
    print_stream(&store, &config).await?;
    print_paused(&store).await?;
    print_rest(&store, dead).await
}

/// `outbox status` on a store other than PostgreSQL's: counts, oldest pending, paused types,
/// parked keys, dead events.
async fn status_on<S: SqlStore>(store: &S, dead: usize) -> Result<(), CliError> {
    if store.schema_version().await? == 0 {
        return Err(format!(
            "the outbox table {} does not exist: run `outbox migrate` with this config first",
            store.table()
        )
        .into());
    }
    print_counts(store).await?;
    print_rest(store, dead).await
}

/// Counts by status and the oldest pending event's age.
async fn print_counts<S: OutboxStore>(store: &S) -> Result<(), CliError> {
    let counts = store.count_by_status().await?;
    writeln!(stdout(), "{:<10} {:>12}", "status", "events")?;
    for s in Status::ALL {
        writeln!(stdout(), "{:<10} {:>12}", s.as_str(), counts.get(s))?;
    }
    match store.oldest_pending().await? {
        Some((id, at)) => writeln!(
            stdout(),
            "oldest pending: {id} ({}s old)",
            (SystemClock.now() - at).num_seconds()
        )?,
        None => writeln!(stdout(), "oldest pending: none")?,
    }
    Ok(())
}

/// Paused types, parked keys and the newest dead events.
async fn print_rest<S: OutboxStore>(store: &S, dead: usize) -> Result<(), CliError> {
    let types = store.paused_types().await?;
    if !types.is_empty() {
        writeln!(stdout())?;
        writeln!(
            stdout(),
            "{:<32} paused since (resume: outbox events resume TYPE)",
            "paused event type"
        )?;
        for t in types {
            writeln!(stdout(), "{:<32} {}", t.event_type, t.since)?;
        }
    }
    print_parked(store).await?;
    let dead_events = store
        .list(&EventFilter {
            status: Some(Status::Dead),
            limit: dead,
            ..Default::default()
        })
        .await?;
    if !dead_events.is_empty() {
        writeln!(stdout())?;
        print_dead(&dead_events)?;
    }
    Ok(())
}

/// The log-reading relay's slot: lag, whether a relay reads it, and a loud warning for a slot
/// nobody reads that keeps WAL (it fills the disk) or one that lost it.
async fn print_stream(store: &PgStore, config: &Config) -> Result<(), CliError> {
    let slot = &config.relay.stream.slot;
    let status = store.stream_status(slot).await?;
    if !status.exists && !status.table_streaming {
        return Ok(());
    }
    writeln!(stdout())?;
    if !status.exists {
        writeln!(
            stdout(),
            "WARNING: the table is streaming but slot {slot} does not exist: run `outbox migrate`"
        )?;
        return Ok(());
    }
    let mib = |b: i64| b as f64 / (1024.0 * 1024.0);
    writeln!(
        stdout(),
        "stream slot {slot}: {} by a relay, lag {:.1} MiB / {}, retaining {:.1} MiB of WAL ({})",
        if status.active { "read" } else { "NOT read" },
        mib(status.lag_bytes),
        match status.oldest_streaming {
            Some(at) => format!(
                "oldest undelivered event {}s old",
                (SystemClock.now() - at).num_seconds().max(0)
            ),
            None => "nothing undelivered".to_owned(),
        },
        mib(status.retained_bytes),
        status.wal_status.as_deref().unwrap_or("unknown"),
    )?;
    if matches!(status.wal_status.as_deref(), Some("lost" | "unreserved")) {
        writeln!(
            stdout(),
            "WARNING: slot {slot} has lost (or is about to lose) WAL it needs: run `outbox \
             migrate` to make it anew; its unconfirmed events go to the workers"
        )?;
    } else if !status.active && status.retained_bytes > ABANDONED_SLOT_BYTES {
        writeln!(
            stdout(),
            "WARNING: no relay reads slot {slot} and the server keeps {:.0} MiB of WAL for it; \
             it grows until the disk is full. Start a relay with relay.mode = \"stream\", or \
             switch back with relay.mode = \"claim\" and `outbox migrate` (drops the slot)",
            mib(status.retained_bytes)
        )?;
    }
    Ok(())
}

/// WAL retained by a slot nobody reads beyond which `outbox status` warns.
const ABANDONED_SLOT_BYTES: i64 = 64 * 1024 * 1024;

/// Routes a relay has paused (their circuit breaker is open): the pending events they gave back
/// untried, by route, from the events' last error.
async fn print_paused(store: &PgStore) -> Result<(), CliError> {
    let prefix = outbox_router::PAUSED_PREFIX;
    let sql = format!(
        "SELECT split_part(substr(last_error, {}), ': ', 1), count(*), max(updated_at)::text \
         FROM {} WHERE status = 'pending' AND starts_with(last_error, $1) GROUP BY 1 ORDER BY 1",
        prefix.len() + 1,
        store.config().qualified_table()
    );
    let paused: Vec<(String, i64, String)> = sqlx::query_as(sqlx::AssertSqlSafe(sql))
        .bind(prefix)
        .fetch_all(store.pool())
        .await?;
    if !paused.is_empty() {
        writeln!(stdout())?;
        writeln!(
            stdout(),
            "{:<24} {:>12}  last deferred (events wait untried, no attempts spent)",
            "paused route",
            "events"
        )?;
        for (route, events, last) in paused {
            writeln!(stdout(), "{route:<24} {events:>12}  {last}")?;
        }
    }
    Ok(())
}

/// Ordering keys parked behind a dead head.
async fn print_parked<S: OutboxStore>(store: &S) -> Result<(), CliError> {
    let parked = store.parked_keys(PARKED_SHOWN).await?;
    if !parked.is_empty() {
        writeln!(stdout())?;
        writeln!(
            stdout(),
            "{:<24} {:<36} {:>8}  (revive or skip the head: outbox dead revive|skip ID)",
            "parked ordering key",
            "dead head",
            "waiting"
        )?;
        for p in parked {
            writeln!(
                stdout(),
                "{:<24} {:<36} {:>8}",
                p.key,
                p.head.to_string(),
                p.waiting
            )?;
        }
    }
    Ok(())
}

/// How many parked keys `outbox status` lists.
const PARKED_SHOWN: usize = 50;

/// A table of dead events, and of rows no worker could read (marked dead when claimed).
fn print_dead(page: &EventPage) -> std::io::Result<()> {
    if !page.events.is_empty() {
        writeln!(
            stdout(),
            "{:<36}  {:<24} {:>8}  last error",
            "dead event",
            "type",
            "attempts"
        )?;
        for e in &page.events {
            writeln!(
                stdout(),
                "{:<36}  {:<24} {:>8}  {}",
                e.id.to_string(),
                e.event_type,
                e.attempts(),
                e.lifecycle.last_error.as_deref().unwrap_or_default()
            )?;
        }
    }
    if !page.undecodable.is_empty() {
        writeln!(
            stdout(),
            "{:<36}  {:<10}  why it cannot be read",
            "unreadable row",
            "status"
        )?;
        for u in &page.undecodable {
            writeln!(
                stdout(),
                "{:<36}  {:<10}  {}",
                u.id.to_string(),
                u.status.as_str(),
                u.error
            )?;
        }
    }
    Ok(())
}

fn dead_filter(event_type: Option<String>, limit: usize) -> EventFilter {
    EventFilter {
        status: Some(Status::Dead),
        event_type,
        limit,
        ..Default::default()
    }
}

impl DeadAction {
    fn target(&self) -> &Target {
        match self {
            DeadAction::List { target, .. }
            | DeadAction::Show { target, .. }
            | DeadAction::Revive { target, .. }
            | DeadAction::Skip { target, .. } => target,
        }
    }
}

/// An operator's command made of contract calls only: it runs on any store.
trait OnAnyStore: Sized {
    /// Where the command connects.
    fn target(&self) -> &Target;

    /// What is wrong with the command itself, found before anything connects.
    fn check(&self) -> Result<(), CliError> {
        Ok(())
    }

    /// Runs the command on `store`.
    async fn run<S: OutboxStore>(self, store: &S) -> Result<(), CliError>;
}

/// Runs `command` on the store the URL's scheme names.
async fn on_any_store(command: impl OnAnyStore) -> Result<(), CliError> {
    command.check()?;
    let config = load(command.target())?;
    let now = Startup::within(Duration::ZERO);
    match database_url(&config)?.1 {
        Backend::Postgres => command.run(&store(&config, 2, now).await?).await,
        Backend::MySql => {
            let store = mysql_store(&config, 2, now).await?;
            sql_current(&store).await?;
            command.run(&store).await
        }
        Backend::Sqlite => {
            let store = sqlite_store(&config).await?;
            sql_current(&store).await?;
            command.run(&store).await
        }
    }
}

impl OnAnyStore for DeadAction {
    fn target(&self) -> &Target {
        DeadAction::target(self)
    }

    async fn run<S: OutboxStore>(self, store: &S) -> Result<(), CliError> {
        dead_on(store, self).await
    }
}

async fn dead_on<S: OutboxStore>(store: &S, action: DeadAction) -> Result<(), CliError> {
    match action {
        DeadAction::List {
            event_type, limit, ..
        } => {
            let page = store.list(&dead_filter(event_type, limit)).await?;
            if page.is_empty() {
                writeln!(stdout(), "no dead events")?;
            }
            print_dead(&page)?;
        }
        DeadAction::Show { id, .. } => {
            let event: OutboxEvent = store.get(id).await?.ok_or(StoreError::NotFound(id))?;
            writeln!(stdout(), "{}", serde_json::to_string_pretty(&event)?)?;
        }
        DeadAction::Revive {
            ids,
            event_type,
            all,
            attempts,
            ..
        } => {
            if ids.is_empty() && event_type.is_none() && !all {
                return Err("name the events to revive, or use --type TYPE or --all".into());
            }
            let selection = (event_type.is_some() || all).then(|| dead_filter(event_type, 1000));
            let revived = outbox_admin::bulk::retry(
                store,
                ids,
                selection,
                attempts,
                false,
                SystemClock.now(),
            )
            .await?;
            writeln!(
                stdout(),
                "revived {} event(s) with {attempts} more attempt(s) each",
                revived.changed
            )?;
        }
        DeadAction::Skip { ids, .. } => {
            for id in ids {
                let event = store.skip_dead_head(id, SystemClock.now()).await?;
                writeln!(
                    stdout(),
                    "skipped {id}: the next event of {:?} goes on",
                    event.ordering_key.unwrap_or_default()
                )?;
            }
        }
    }
    Ok(())
}

/// The error in plain words, with the fix where one is known.
fn explain(error: CliError, target: &Target) -> CliError {
    let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error.as_ref());
    while let Some(e) = cause {
        let code = e
            .downcast_ref::<sqlx::Error>()
            .and_then(|e| e.as_database_error())
            .and_then(|d| d.code().map(|c| c.into_owned()));
        if code.as_deref() == Some("42P01") {
            let (schema, table) = load(target)
                .map(|c| (c.schema, c.table))
                .unwrap_or_else(|_| ("public".into(), "outbox_event".into()));
            return format!(
                "the outbox table {schema}.{table} does not exist here: run `outbox migrate` \
                 with the same database, schema and table first"
            )
            .into();
        }
        cause = e.source();
    }
    error
}

/// Whether `error` is (or wraps) a write to a closed pipe.
fn is_broken_pipe(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
        {
            return true;
        }
        cause = e.source();
    }
    false
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
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
                credentials,
            } => relay(target, workers, listen, credentials).await,
            Command::Admin {
                target,
                listen,
                credentials,
            } => {
                let t = target.clone();
                serve_admin(target, listen, credentials)
                    .await
                    .map_err(|e| explain(e, &t))
            }
            Command::Migrate { target, down, yes } => {
                let t = target.clone();
                migrate(target, down, yes).await.map_err(|e| explain(e, &t))
            }
            Command::Status { target, dead } => {
                let t = target.clone();
                status(target, dead).await.map_err(|e| explain(e, &t))
            }
            Command::Events { action } => {
                let t = action.target().clone();
                on_any_store(action).await.map_err(|e| explain(e, &t))
            }
            Command::Dead { action } => {
                let t = match &action {
                    DeadAction::List { target, .. }
                    | DeadAction::Show { target, .. }
                    | DeadAction::Revive { target, .. }
                    | DeadAction::Skip { target, .. } => target.clone(),
                };
                on_any_store(action).await.map_err(|e| explain(e, &t))
            }
            Command::Config {
                action: ConfigAction::Example,
            } => {
                write!(stdout(), "{}", config::EXAMPLE)?;
                Ok(())
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        // The reader went away (`outbox status | head -1`): nothing more to say to anyone.
        Err(e) if is_broken_pipe(e.as_ref()) => ExitCode::SUCCESS,
        Err(e) => {
            // Once, on standard error; not also as a log line.
            eprintln!("outbox: {e}");
            ExitCode::FAILURE
        }
    }
}
