//! Harnesses: a fresh store per test, for each backend.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use outbox_core::{Emit, Emitted, ManualClock, NewEvent, StoreError};
use outbox_memory::MemoryStore;

use crate::conformance::Harness;

/// A fixed, round starting time for test clocks (2026-01-01T00:00:00Z).
pub fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_767_225_600, 0).unwrap_or(DateTime::UNIX_EPOCH)
}

/// A [`MemoryStore`] on a [`ManualClock`].
#[derive(Debug, Clone)]
pub struct MemoryHarness {
    store: MemoryStore,
    clock: ManualClock,
}

impl MemoryHarness {
    /// A fresh, empty store whose clock reads [`t0`].
    pub async fn new() -> Self {
        let clock = ManualClock::new(t0());
        Self {
            store: MemoryStore::with_clock(Arc::new(clock.clone())),
            clock,
        }
    }
}

#[async_trait]
impl Harness for MemoryHarness {
    type Store = MemoryStore;

    fn store(&self) -> MemoryStore {
        self.store.clone()
    }

    fn clock(&self) -> &ManualClock {
        &self.clock
    }

    async fn emit(&self, events: Vec<NewEvent>, commit: bool) -> Result<Vec<Emitted>, StoreError> {
        let mut uow = self.store.begin();
        let emitted = uow.emit_all(events).await?;
        if commit {
            uow.commit();
        } else {
            uow.rollback();
        }
        Ok(emitted)
    }
}

/// Where the PostgreSQL tests get their server: `DATABASE_URL` when set; otherwise a throwaway
/// container through testcontainers when a Docker engine is reachable; otherwise the test fails
/// with one line saying how to provide a database.
pub async fn database_url() -> String {
    static URL: tokio::sync::OnceCell<String> = tokio::sync::OnceCell::const_new();
    URL.get_or_init(|| async {
        if let Ok(url) = std::env::var("DATABASE_URL") {
            return url;
        }
        if docker_reachable() {
            return start_container().await;
        }
        panic!(
            "PostgreSQL tests need a database: set DATABASE_URL (e.g. postgres://root@127.0.0.1:5432/test) \
             or make a Docker engine reachable for testcontainers"
        );
    })
    .await
    .clone()
}

fn docker_reachable() -> bool {
    if std::env::var_os("DOCKER_HOST").is_some() {
        return true;
    }
    std::os::unix::net::UnixStream::connect("/var/run/docker.sock").is_ok()
}

async fn start_container() -> String {
    use testcontainers_modules::postgres::Postgres;
    use testcontainers_modules::testcontainers::ContainerAsync;
    use testcontainers_modules::testcontainers::runners::AsyncRunner;
    // Kept for the whole test process; testcontainers' reaper removes it afterwards.
    static CONTAINER: std::sync::OnceLock<ContainerAsync<Postgres>> = std::sync::OnceLock::new();
    let container = Postgres::default()
        .start()
        .await
        .expect("start a PostgreSQL container");
    let port = container
        .get_host_port_ipv4(5432)
        .await
        .expect("container port");
    let _ = CONTAINER.set(container);
    format!("postgres://postgres:postgres@127.0.0.1:{port}/postgres")
}

/// A pool on [`database_url`] whose connections carry `application_name`, so a test can find
/// (and terminate) its own connections.
pub async fn pool(application_name: &str, max_connections: u32) -> sqlx::PgPool {
    use std::str::FromStr;
    let url = database_url().await;
    let options = sqlx::postgres::PgConnectOptions::from_str(&url)
        .expect("DATABASE_URL is a valid PostgreSQL URL")
        .application_name(application_name);
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(max_connections)
        .connect_with(options)
        .await
        .unwrap_or_else(|e| panic!("cannot connect to PostgreSQL at {url}: {e}"))
}

/// A [`PgStore`](outbox_postgres::PgStore) in a schema of its own (`t_<random>`), dropped by
/// [`Harness::cleanup`], on a [`ManualClock`].
#[derive(Debug, Clone)]
pub struct PgHarness {
    store: outbox_postgres::PgStore,
    clock: ManualClock,
    schema: String,
}

impl PgHarness {
    /// A fresh, migrated, empty store in its own schema.
    pub async fn new() -> Self {
        Self::with_pool_size(4).await
    }

    /// As [`new`](Self::new), with a pool of `max_connections`.
    pub async fn with_pool_size(max_connections: u32) -> Self {
        let schema = format!("t_{}", uuid::Uuid::now_v7().simple());
        let pool = pool(&schema, max_connections).await;
        let clock = ManualClock::new(t0());
        let config = outbox_postgres::PgConfig::new().with_schema(&schema);
        let store = outbox_postgres::PgStore::new(pool, config)
            .expect("valid config")
            .with_clock(Arc::new(clock.clone()));
        store.migrate().await.expect("migrate");
        Self {
            store,
            clock,
            schema,
        }
    }

    /// The schema this harness owns (also the pool's `application_name`).
    pub fn schema(&self) -> &str {
        &self.schema
    }
}

#[async_trait]
impl Harness for PgHarness {
    type Store = outbox_postgres::PgStore;

    fn store(&self) -> outbox_postgres::PgStore {
        self.store.clone()
    }

    fn clock(&self) -> &ManualClock {
        &self.clock
    }

    async fn emit(&self, events: Vec<NewEvent>, commit: bool) -> Result<Vec<Emitted>, StoreError> {
        let mut tx = self.store.begin().await?;
        let emitted = tx.emit_all(events).await?;
        if commit {
            tx.commit().await?;
        } else {
            tx.rollback().await?;
        }
        Ok(emitted)
    }

    async fn cleanup(&self) {
        let drop = format!("DROP SCHEMA IF EXISTS {} CASCADE", self.schema);
        sqlx::raw_sql(sqlx::AssertSqlSafe(drop))
            .execute(self.store.pool())
            .await
            .expect("drop test schema");
        self.store.pool().close().await;
    }
}
