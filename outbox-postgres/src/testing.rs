//! Test support for applications (feature `testing`): [`TestDatabase`] gives each test a
//! schema of its own on a real PostgreSQL server, with the outbox migrated into it and the
//! connections' `search_path` pointing there, so the application's own tables land beside it;
//! [`TestDatabase::cleanup`] drops it.
//!
//! The server is found, in this order ([`connect_options`]):
//! 1. `DATABASE_URL`, when set;
//! 2. the server the standard libpq variables point to (`PGHOST`, `PGPORT`, `PGUSER`,
//!    `PGDATABASE`, defaulting to the local server and the current user), when it answers — the
//!    tests run wherever `psql` with no arguments would;
//! 3. with the `testcontainers` feature, a throwaway container, when a Docker engine is
//!    reachable (`DOCKER_HOST` or `/var/run/docker.sock`; the image must be available to it);
//!
//! and otherwise [`TestDatabaseError::NoServer`] says how to provide one.
//!
//! ```no_run
//! use outbox_core::{Emit, NewEvent, Transaction};
//! use outbox_postgres::testing::TestDatabase;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let db = TestDatabase::new().await?;            // a fresh schema, outbox migrated
//! sqlx::query("CREATE TABLE uploads (id bigint GENERATED ALWAYS AS IDENTITY, name text)")
//!     .execute(db.pool())
//!     .await?;                                     // lands in the test's schema
//! let mut tx = db.store().begin().await?;
//! sqlx::query("INSERT INTO uploads (name) VALUES ('cat.png')").execute(tx.conn()).await?;
//! tx.emit(NewEvent::builder("file.stored", "upload", "1").build()?).await?;
//! tx.commit().await?;
//! db.cleanup().await?;                             // drops the schema
//! # Ok(()) }
//! ```

use std::str::FromStr;
use std::time::Duration;

use outbox_core::StoreError;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{AssertSqlSafe, ConnectOptions, Connection, PgPool};

use crate::{PgConfig, PgStore};

/// Why no test database could be had.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TestDatabaseError {
    /// No server was found by any of the ways tried.
    #[error(
        "PostgreSQL tests need a database: set DATABASE_URL (e.g. postgres://user@127.0.0.1:5432/db), \
         run a local server that `psql` reaches without arguments ({local}), or {docker}"
    )]
    NoServer {
        /// Why the local server did not answer.
        local: String,
        /// What the container path said.
        docker: String,
    },
    /// `DATABASE_URL` is not a PostgreSQL URL.
    #[error("DATABASE_URL is not a PostgreSQL URL: {0}")]
    BadUrl(#[source] sqlx::Error),
    /// Connecting, creating the schema or migrating failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Where the tests' server is, found once per process (see the [module docs](self)).
pub async fn connect_options() -> Result<PgConnectOptions, TestDatabaseError> {
    static OPTIONS: tokio::sync::OnceCell<PgConnectOptions> = tokio::sync::OnceCell::const_new();
    OPTIONS.get_or_try_init(find_server).await.cloned()
}

async fn find_server() -> Result<PgConnectOptions, TestDatabaseError> {
    let mut local = PgConnectOptions::new();
    if std::env::var_os("PGUSER").is_none()
        && let Some(user) = login_name()
    {
        local = local.username(&user);
    }
    find_server_from(std::env::var("DATABASE_URL").ok().as_deref(), local).await
}

/// The discovery rule itself, with its inputs given: `database_url` if any, else `local` if it
/// answers, else a container. [`connect_options`] calls it with `DATABASE_URL` and the libpq
/// defaults.
pub async fn find_server_from(
    database_url: Option<&str>,
    local: PgConnectOptions,
) -> Result<PgConnectOptions, TestDatabaseError> {
    if let Some(url) = database_url {
        if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
            let why = format!("{url:?} does not start with postgres:// or postgresql://");
            return Err(TestDatabaseError::BadUrl(sqlx::Error::Configuration(
                why.into(),
            )));
        }
        return PgConnectOptions::from_str(url).map_err(TestDatabaseError::BadUrl);
    }
    let local_error = match tokio::time::timeout(Duration::from_secs(5), local.connect()).await {
        Ok(Ok(conn)) => {
            let _ = conn.close().await;
            return Ok(local);
        }
        Ok(Err(e)) => e.to_string(),
        Err(_) => "timed out".to_owned(),
    };
    let docker = container::start().await?;
    docker.map_err(|docker| TestDatabaseError::NoServer {
        local: local_error,
        docker,
    })
}

/// The login name of the current user, as libpq finds it: `USER`/`LOGNAME`, else the password
/// database entry of this process's uid.
fn login_name() -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    if let Some(user) = std::env::var("USER")
        .ok()
        .or_else(|| std::env::var("LOGNAME").ok())
    {
        return Some(user);
    }
    let uid = std::fs::metadata("/proc/self").ok()?.uid().to_string();
    let passwd = std::fs::read_to_string("/etc/passwd").ok()?;
    passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .find(|f| f.get(2) == Some(&uid.as_str()))?
        .first()
        .map(|n| (*n).to_owned())
}

#[cfg(feature = "testcontainers")]
mod container {
    use sqlx::postgres::PgConnectOptions;
    use testcontainers_modules::postgres::Postgres;
    use testcontainers_modules::testcontainers::ContainerAsync;
    use testcontainers_modules::testcontainers::runners::AsyncRunner;

    use super::TestDatabaseError;

    fn docker_reachable() -> bool {
        std::env::var_os("DOCKER_HOST").is_some()
            || std::os::unix::net::UnixStream::connect("/var/run/docker.sock").is_ok()
    }

    /// A container's connect options; `Ok(Err(why))` when no Docker engine answers.
    pub(super) async fn start() -> Result<Result<PgConnectOptions, String>, TestDatabaseError> {
        // Kept for the whole test process; testcontainers' reaper removes it afterwards.
        static CONTAINER: std::sync::OnceLock<ContainerAsync<Postgres>> =
            std::sync::OnceLock::new();
        if !docker_reachable() {
            return Ok(Err("make a Docker engine reachable".into()));
        }
        let failed = |e: &dyn std::fmt::Display| {
            Ok(Err(format!("a PostgreSQL container did not start: {e}")))
        };
        let container = match Postgres::default().start().await {
            Ok(c) => c,
            Err(e) => return failed(&e),
        };
        let port = match container.get_host_port_ipv4(5432).await {
            Ok(p) => p,
            Err(e) => return failed(&e),
        };
        let _ = CONTAINER.set(container);
        Ok(Ok(PgConnectOptions::new()
            .host("127.0.0.1")
            .port(port)
            .username("postgres")
            .password("postgres")
            .database("postgres")))
    }
}

#[cfg(not(feature = "testcontainers"))]
mod container {
    use sqlx::postgres::PgConnectOptions;

    use super::TestDatabaseError;

    pub(super) async fn start() -> Result<Result<PgConnectOptions, String>, TestDatabaseError> {
        Ok(Err(
            "enable outbox-postgres's `testcontainers` feature and make a Docker engine reachable"
                .into(),
        ))
    }
}

/// A schema of its own for one test, with the outbox migrated into it; see the
/// [module docs](self).
#[derive(Debug)]
pub struct TestDatabase {
    store: PgStore,
    schema: String,
}

impl TestDatabase {
    /// A fresh schema (`t_<uuid>`) with the outbox table in it, on a pool of 4 connections whose
    /// `search_path` is that schema, then `public`.
    pub async fn new() -> Result<Self, TestDatabaseError> {
        Self::with_config(4, |config| config).await
    }

    /// As [`new`](Self::new), with `max_connections` and the store's settings adjusted by
    /// `adjust` (the schema is the test's own).
    pub async fn with_config(
        max_connections: u32,
        adjust: impl FnOnce(PgConfig) -> PgConfig,
    ) -> Result<Self, TestDatabaseError> {
        let schema = format!("t_{}", uuid::Uuid::now_v7().simple());
        let options = connect_options()
            .await?
            .application_name(&schema)
            .options([("search_path", format!("{schema},public"))]);
        let pool = PgPoolOptions::new()
            .max_connections(max_connections)
            .connect_with(options)
            .await
            .map_err(crate::error::db_error)?;
        let config = adjust(PgConfig::new()).with_schema(&schema);
        let store = PgStore::new(pool, config).map_err(StoreError::from)?;
        store.migrate().await?;
        Ok(Self { store, schema })
    }

    /// The store, on the test's schema.
    pub fn store(&self) -> &PgStore {
        &self.store
    }

    /// The pool: its connections find the test's tables by `search_path`.
    pub fn pool(&self) -> &PgPool {
        self.store.pool()
    }

    /// The schema this test owns (also its connections' `application_name`).
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Drops the schema, with everything the test created in it, and closes the pool.
    pub async fn cleanup(self) -> Result<(), StoreError> {
        let drop = format!("DROP SCHEMA IF EXISTS \"{}\" CASCADE", self.schema);
        sqlx::raw_sql(AssertSqlSafe(drop))
            .execute(self.pool())
            .await
            .map_err(crate::error::db_error)?;
        self.pool().close().await;
        Ok(())
    }
}
