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
//! 3. with the `testcontainers` feature, a throwaway container of [`test_image`], when a
//!    Docker engine is reachable (`DOCKER_HOST` or `/var/run/docker.sock`), shared by the test
//!    process;
//!
//! and otherwise [`TestDatabaseError::NoServer`] says how to provide one.
//! `OUTBOX_TEST_DATABASE=container` skips the first two and always uses a container.
//!
//! For a container of a test's own, removed when dropped, use `TestContainer` (feature
//! `testcontainers`): `TestContainer::start().await?.database().await?`.
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
    /// No Docker engine answers (the container path).
    #[error(
        "no Docker engine answers at DOCKER_HOST or /var/run/docker.sock: install one \
         (apt-get install docker.io) and start it (dockerd &), or give the tests a server with DATABASE_URL"
    )]
    NoDocker,
    /// The container path needs the `testcontainers` feature.
    #[error("the container path needs outbox-postgres's `testcontainers` feature")]
    NoContainerFeature,
    /// The container did not start or never accepted connections.
    #[error(
        "a PostgreSQL container from {image} did not start: {error}; if the image is missing, \
         pull it, or build it without a registry with scripts/postgres-image.sh {image}, \
         or choose another with OUTBOX_TEST_IMAGE"
    )]
    Container {
        /// The image.
        image: String,
        /// What went wrong.
        error: String,
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
    if container_only() {
        return container::shared().await;
    }
    let mut local = PgConnectOptions::new();
    if std::env::var_os("PGUSER").is_none()
        && let Some(user) = login_name()
    {
        local = local.username(&user);
    }
    find_server_from(std::env::var("DATABASE_URL").ok().as_deref(), local, true).await
}

/// The discovery rule itself, with its inputs given: `database_url` if any, else `local` if it
/// answers, else (when `container` allows it) the shared container. [`connect_options`] calls
/// it with `DATABASE_URL`, the libpq defaults and `true`.
pub async fn find_server_from(
    database_url: Option<&str>,
    local: PgConnectOptions,
    container: bool,
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
    if !container {
        return Err(TestDatabaseError::NoServer {
            local: local_error,
            docker: "let it start a Docker container (the container path is off here)".into(),
        });
    }
    match container::shared().await {
        Ok(options) => Ok(options),
        Err(e @ TestDatabaseError::Container { .. }) => Err(e),
        Err(docker) => Err(TestDatabaseError::NoServer {
            local: local_error,
            docker: docker.to_string(),
        }),
    }
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

/// The image the container path starts when `OUTBOX_TEST_IMAGE` (`name:tag`) is not set: the
/// official PostgreSQL image, for machines that reach a registry. Where none can be reached,
/// build one from Debian's packages with the project's `scripts/postgres-image.sh` and set
/// `OUTBOX_TEST_IMAGE=outbox-local/postgres:15`.
pub const DEFAULT_IMAGE: &str = "postgres:16-alpine";

/// The label every container started here carries (`docker ps --filter label=…`).
pub const CONTAINER_LABEL: &str = "org.outbox.test";

/// The image to start: `OUTBOX_TEST_IMAGE`, else [`DEFAULT_IMAGE`].
pub fn test_image() -> String {
    std::env::var("OUTBOX_TEST_IMAGE")
        .ok()
        .filter(|i| !i.trim().is_empty())
        .unwrap_or_else(|| DEFAULT_IMAGE.to_owned())
}

/// Whether `OUTBOX_TEST_DATABASE=container` asks for the container path only.
fn container_only() -> bool {
    std::env::var("OUTBOX_TEST_DATABASE").is_ok_and(|v| v == "container")
}

#[cfg(feature = "testcontainers")]
pub use container::{TestContainer, TestContainerBuilder};

#[cfg(feature = "testcontainers")]
mod container {
    use std::time::Duration;

    use sqlx::postgres::PgConnectOptions;
    use sqlx::{ConnectOptions, Connection};
    use testcontainers_modules::postgres::Postgres;
    use testcontainers_modules::testcontainers::core::WaitFor;
    use testcontainers_modules::testcontainers::runners::AsyncRunner;
    use testcontainers_modules::testcontainers::{ContainerAsync, ImageExt};

    use super::{CONTAINER_LABEL, TestDatabase, TestDatabaseError};

    fn docker_reachable() -> Result<(), TestDatabaseError> {
        if std::env::var_os("DOCKER_HOST").is_some()
            || std::os::unix::net::UnixStream::connect("/var/run/docker.sock").is_ok()
        {
            Ok(())
        } else {
            Err(TestDatabaseError::NoDocker)
        }
    }

    /// A throwaway PostgreSQL container for a test, **removed when dropped** (also when the
    /// test panics). [`database`](Self::database) gives a migrated, isolated outbox on it.
    ///
    /// ```
    /// use outbox_core::{Emit, NewEvent, OutboxStore};
    /// use outbox_postgres::testing::TestContainer;
    ///
    /// # tokio::runtime::Builder::new_current_thread().enable_all().build()?.block_on(async {
    /// let postgres = TestContainer::start().await?;     // image: OUTBOX_TEST_IMAGE or postgres:16-alpine
    /// let db = postgres.database().await?;              // a schema with the outbox migrated
    /// let mut tx = db.store().begin().await?;
    /// tx.emit(NewEvent::builder("file.stored", "upload", "1").build()?).await?;
    /// tx.commit().await?;
    /// assert_eq!(db.store().count_by_status().await?.pending, 1);
    /// drop(postgres);                                   // the container is removed
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// # })?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub struct TestContainer {
        container: ContainerAsync<Postgres>,
        options: PgConnectOptions,
        image: String,
    }

    impl std::fmt::Debug for TestContainer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.debug_struct("TestContainer")
                .field("id", &self.id())
                .field("image", &self.image)
                .finish_non_exhaustive()
        }
    }

    /// Settings for [`TestContainer`]: the image and how long it may take to be ready.
    #[derive(Clone, Debug)]
    pub struct TestContainerBuilder {
        image: String,
        startup_timeout: Duration,
    }

    impl TestContainerBuilder {
        /// The image, `name:tag` (default: `OUTBOX_TEST_IMAGE`, else
        /// [`DEFAULT_IMAGE`](super::DEFAULT_IMAGE)). It must run PostgreSQL on port 5432 with
        /// user `postgres` able to log in without a password or with password `postgres`.
        pub fn image(mut self, image: impl Into<String>) -> Self {
            self.image = image.into();
            self
        }

        /// How long the container may take to accept connections (default 60 s).
        pub fn startup_timeout(mut self, timeout: Duration) -> Self {
            self.startup_timeout = timeout;
            self
        }

        /// Starts the container and waits until PostgreSQL accepts a connection.
        pub async fn start(self) -> Result<TestContainer, TestDatabaseError> {
            docker_reachable()?;
            let (name, tag) = self
                .image
                .rsplit_once(':')
                .filter(|(_, tag)| !tag.contains('/'))
                .unwrap_or((self.image.as_str(), "latest"));
            let failed = |error: String| TestDatabaseError::Container {
                image: self.image.clone(),
                error,
            };
            let container = Postgres::default()
                .with_name(name)
                .with_tag(tag)
                .with_label(CONTAINER_LABEL, "1")
                // The official image says it is ready twice (during and after its set-up); the
                // connection check below decides.
                .with_ready_conditions(vec![WaitFor::message_on_stderr(
                    "database system is ready to accept connections",
                )])
                .with_startup_timeout(self.startup_timeout)
                .start()
                .await
                .map_err(|e| failed(e.to_string()))?;
            let port = container
                .get_host_port_ipv4(5432)
                .await
                .map_err(|e| failed(e.to_string()))?;
            let options = PgConnectOptions::new()
                .host("127.0.0.1")
                .port(port)
                .username("postgres")
                .password("postgres")
                .database("postgres");
            let deadline = tokio::time::Instant::now() + self.startup_timeout;
            loop {
                match options.connect().await {
                    Ok(conn) => {
                        let _ = conn.close().await;
                        break;
                    }
                    Err(e) if tokio::time::Instant::now() >= deadline => {
                        return Err(failed(format!(
                            "no connection within {:?}: {e}",
                            self.startup_timeout
                        )));
                    }
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
            Ok(TestContainer {
                container,
                options,
                image: self.image,
            })
        }
    }

    impl TestContainer {
        /// Settings other than the defaults.
        pub fn builder() -> TestContainerBuilder {
            TestContainerBuilder {
                image: super::test_image(),
                startup_timeout: Duration::from_secs(60),
            }
        }

        /// Starts a container of the default image ([`builder`](Self::builder) for others).
        pub async fn start() -> Result<Self, TestDatabaseError> {
            Self::builder().start().await
        }

        /// How to connect to it (user `postgres`, database `postgres`).
        pub fn connect_options(&self) -> PgConnectOptions {
            self.options.clone()
        }

        /// The container's id.
        pub fn id(&self) -> &str {
            self.container.id()
        }

        /// The image it runs.
        pub fn image(&self) -> &str {
            &self.image
        }

        /// A fresh schema on this container with the outbox migrated (see [`TestDatabase`]).
        pub async fn database(&self) -> Result<TestDatabase, TestDatabaseError> {
            TestDatabase::on(self.connect_options(), 4, |c| c).await
        }
    }

    /// The process-wide container of the discovery path: started once, kept for the test
    /// process (statics are never dropped: remove leftovers with
    /// `docker rm -f $(docker ps -aq --filter label=org.outbox.test)`).
    pub(super) async fn shared() -> Result<PgConnectOptions, TestDatabaseError> {
        static SHARED: tokio::sync::OnceCell<TestContainer> = tokio::sync::OnceCell::const_new();
        SHARED
            .get_or_try_init(TestContainer::start)
            .await
            .map(TestContainer::connect_options)
    }
}

#[cfg(not(feature = "testcontainers"))]
mod container {
    use sqlx::postgres::PgConnectOptions;

    use super::TestDatabaseError;

    pub(super) async fn shared() -> Result<PgConnectOptions, TestDatabaseError> {
        Err(TestDatabaseError::NoContainerFeature)
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
        Self::on(connect_options().await?, max_connections, adjust).await
    }

    /// As [`with_config`](Self::with_config), on the server `options` reach.
    pub async fn on(
        options: PgConnectOptions,
        max_connections: u32,
        adjust: impl FnOnce(PgConfig) -> PgConfig,
    ) -> Result<Self, TestDatabaseError> {
        let schema = format!("t_{}", uuid::Uuid::now_v7().simple());
        let options = options
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
