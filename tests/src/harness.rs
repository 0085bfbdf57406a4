//! Harnesses: a fresh store per test, for each backend.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use outbox_core::{Emit, Emitted, ManualClock, NewEvent, StoreError};
use outbox_memory::{MemoryStore, MemoryStoreBuilder};
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};

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
        Self::built(|b| b)
    }

    /// As [`new`](Self::new), with a store that deletes acknowledged events.
    pub async fn deleting_delivered() -> Self {
        Self::built(|b| b.delete_delivered(true))
    }

    /// As [`new`](Self::new), with a store whose dead heads give up their ordering key.
    pub async fn skipping_dead_heads() -> Self {
        Self::built(|b| b.dead_head(outbox_core::DeadHead::Skip))
    }

    fn built(adjust: impl FnOnce(MemoryStoreBuilder) -> MemoryStoreBuilder) -> Self {
        let clock = ManualClock::new(t0());
        let builder = MemoryStore::builder().clock(Arc::new(clock.clone()));
        Self {
            store: adjust(builder).build(),
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
        let mut uow = self.store.begin().await?;
        let emitted = uow.emit_all(events).await?;
        if commit {
            uow.commit().await?;
        } else {
            uow.rollback().await?;
        }
        Ok(emitted)
    }
}

/// Where the PostgreSQL tests get their server: `DATABASE_URL`, else the local server `psql`
/// reaches with no arguments, else a throwaway container — the rule of
/// [`outbox_postgres::testing::connect_options`], which applications use too. Without any, the
/// test fails with one line saying how to provide a database.
pub async fn connect_options() -> PgConnectOptions {
    outbox_postgres::testing::connect_options()
        .await
        .unwrap_or_else(|e| panic!("{e}"))
}

/// A pool on [`connect_options`] whose connections carry `application_name`, so a test can
/// find (and terminate) its own connections.
pub async fn pool(application_name: &str, max_connections: u32) -> sqlx::PgPool {
    pool_with(
        application_name,
        PgPoolOptions::new().max_connections(max_connections),
    )
    .await
}

/// As [`pool`], with the pool options given.
pub async fn pool_with(application_name: &str, options: PgPoolOptions) -> sqlx::PgPool {
    let connect = connect_options().await.application_name(application_name);
    options
        .connect_with(connect.clone())
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot connect to PostgreSQL at {}: {e}",
                connect.get_host()
            )
        })
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
        Self::with_config(max_connections, |config| config).await
    }

    /// As [`with_pool_size`](Self::with_pool_size), with the store's settings adjusted by
    /// `adjust` (the schema is the harness's own).
    pub async fn with_config(
        max_connections: u32,
        adjust: impl FnOnce(outbox_postgres::PgConfig) -> outbox_postgres::PgConfig,
    ) -> Self {
        let schema = format!("t_{}", uuid::Uuid::now_v7().simple());
        let pool = pool(&schema, max_connections).await;
        let clock = ManualClock::new(t0());
        let config = adjust(outbox_postgres::PgConfig::new()).with_schema(&schema);
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

    /// Takes the outbox table's `ACCESS EXCLUSIVE` lock in a transaction of its own and keeps
    /// it until the returned transaction ends: every statement on the table waits meanwhile.
    pub async fn lock_table(&self) -> sqlx::Transaction<'static, sqlx::Postgres> {
        let mut holder = self.store().pool().begin().await.expect("begin");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "LOCK TABLE \"{}\".outbox_event IN ACCESS EXCLUSIVE MODE",
            self.schema()
        )))
        .execute(&mut *holder)
        .await
        .expect("lock the table");
        holder
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

/// The MySQL/MariaDB server the MySQL tests use: `MYSQL_URL`, else the local server at
/// `mysql://root@127.0.0.1:3306/test`.
pub fn mysql_url() -> String {
    std::env::var("MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306/test".to_owned())
}

/// A pool on [`mysql_url`], or a panic with one line saying how to provide a server.
pub async fn mysql_pool(max_connections: u32) -> sqlx::MySqlPool {
    let url = mysql_url();
    sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(max_connections)
        .connect(&url)
        .await
        .unwrap_or_else(|e| {
            panic!(
                "cannot connect to MySQL/MariaDB at {url} ({e}); start one (MariaDB: `service mariadb start`) or set MYSQL_URL"
            )
        })
}

/// A [`MySqlStore`](outbox_mysql::MySqlStore) on a table of its own (`t_<random>`), dropped
/// by [`Harness::cleanup`], on a [`ManualClock`].
#[derive(Debug, Clone)]
pub struct MySqlHarness {
    store: outbox_mysql::MySqlStore,
    clock: ManualClock,
    /// The database the harness made for itself, dropped by its cleanup.
    database: Option<String>,
}

impl MySqlHarness {
    /// A fresh, migrated, empty store on a table of its own.
    pub async fn new() -> Self {
        Self::with_config(4, |config| config).await
    }

    /// As [`new`](Self::new), with a pool of `max_connections` and the store's settings
    /// adjusted by `adjust` (the table is the harness's own).
    pub async fn with_config(
        max_connections: u32,
        adjust: impl FnOnce(outbox_mysql::MySqlConfig) -> outbox_mysql::MySqlConfig,
    ) -> Self {
        let table = format!("t_{}", uuid::Uuid::now_v7().simple());
        let pool = mysql_pool(max_connections).await;
        let clock = ManualClock::new(t0());
        let config = adjust(outbox_mysql::MySqlConfig::new()).with_table(&table);
        let store = outbox_mysql::MySqlStore::new(pool, config)
            .expect("valid config")
            .with_clock(Arc::new(clock.clone()));
        store.migrate().await.expect("migrate");
        Self {
            store,
            clock,
            database: None,
        }
    }

    /// A fresh, migrated, empty store on the table `table` — any name, such as an SQL keyword —
    /// in a database of its own (`outbox_<random>`, dropped by [`Harness::cleanup`]).
    pub async fn in_a_database_of_its_own(table: &str) -> Self {
        use std::str::FromStr;
        let database = format!("outbox_{}", uuid::Uuid::now_v7().simple());
        let admin = mysql_pool(1).await;
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("CREATE DATABASE {database}")))
            .execute(&admin)
            .await
            .expect("create a test database");
        admin.close().await;
        let url = mysql_url();
        let options = sqlx::mysql::MySqlConnectOptions::from_str(&url)
            .unwrap_or_else(|e| panic!("MYSQL_URL {url} cannot be read: {e}"))
            .database(&database);
        let pool = sqlx::mysql::MySqlPoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .expect("connect to the test database");
        let clock = ManualClock::new(t0());
        let store =
            outbox_mysql::MySqlStore::new(pool, outbox_mysql::MySqlConfig::new().with_table(table))
                .expect("valid config")
                .with_clock(Arc::new(clock.clone()));
        store.migrate().await.expect("migrate");
        Self {
            store,
            clock,
            database: Some(database),
        }
    }
}

#[async_trait]
impl Harness for MySqlHarness {
    type Store = outbox_mysql::MySqlStore;

    fn store(&self) -> outbox_mysql::MySqlStore {
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
        self.store
            .migrate_down()
            .await
            .expect("drop the test tables");
        if let Some(database) = &self.database {
            sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP DATABASE {database}")))
                .execute(self.store.pool())
                .await
                .expect("drop the test database");
        }
        self.store.pool().close().await;
    }
}

/// A fresh SQLite database file in the system's temporary directory (`outbox-<random>.db`),
/// removed with its log files by [`remove_sqlite_file`].
pub fn sqlite_file() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("outbox-{}.db", uuid::Uuid::now_v7().simple()))
}

/// Removes a database file [`sqlite_file`] named, with its write-ahead log and shared-memory
/// files.
pub fn remove_sqlite_file(path: &std::path::Path) {
    for suffix in ["", "-wal", "-shm"] {
        let mut name = path.as_os_str().to_owned();
        name.push(suffix);
        let _ = std::fs::remove_file(name);
    }
}

/// A [`SqliteStore`](outbox_sqlite::SqliteStore) on a database file of its own, removed by
/// [`Harness::cleanup`], on a [`ManualClock`].
#[derive(Debug, Clone)]
pub struct SqliteHarness {
    store: outbox_sqlite::SqliteStore,
    clock: ManualClock,
    path: std::path::PathBuf,
}

impl SqliteHarness {
    /// A fresh, migrated, empty store on a file of its own.
    pub async fn new() -> Self {
        Self::with_config(|config| config).await
    }

    /// As [`new`](Self::new), with the store's settings adjusted by `adjust`.
    pub async fn with_config(
        adjust: impl FnOnce(outbox_sqlite::SqliteConfig) -> outbox_sqlite::SqliteConfig,
    ) -> Self {
        let path = sqlite_file();
        let clock = ManualClock::new(t0());
        let store = outbox_sqlite::SqliteStore::connect(
            &format!("sqlite://{}", path.display()),
            adjust(outbox_sqlite::SqliteConfig::new()),
        )
        .await
        .unwrap_or_else(|e| panic!("cannot open a SQLite database at {}: {e}", path.display()))
        .with_clock(Arc::new(clock.clone()));
        store.migrate().await.expect("migrate");
        Self { store, clock, path }
    }

    /// Another store on the same file, with its own pool and its own turn among writers: what
    /// a second process sees.
    pub async fn second_process(&self) -> outbox_sqlite::SqliteStore {
        outbox_sqlite::SqliteStore::connect(
            &format!("sqlite://{}", self.path.display()),
            self.store.config().clone(),
        )
        .await
        .expect("open the same file again")
        .with_clock(Arc::new(self.clock.clone()))
    }

    /// The database file.
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }
}

#[async_trait]
impl Harness for SqliteHarness {
    type Store = outbox_sqlite::SqliteStore;

    fn store(&self) -> outbox_sqlite::SqliteStore {
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
        self.store.pool().close().await;
        remove_sqlite_file(&self.path);
    }
}

/// A harness whose table can be written behind the store's back, as another writer (raw SQL,
/// an older version of the library) could: for the cases that check one unreadable row never
/// stops the others ([`isolation`](crate::isolation)).
#[async_trait]
pub trait ForeignRows: Harness {
    /// Writes a pending row, due at the harness clock's time, with `payload` and `headers`
    /// stored as given (JSON text, not checked); returns its id.
    async fn foreign_row(&self, payload: &str, headers: &str) -> outbox_core::EventId;

    /// The row's last error as the table holds it.
    async fn last_error(&self, id: outbox_core::EventId) -> Option<String>;
}

/// A row-based store's harness that can also queue a row behind an ordering key's head.
#[async_trait]
pub trait WaitingRows: ForeignRows {
    /// Makes the row wait as `key`'s first waiting event (the key's next place after it).
    async fn make_waiting(&self, id: outbox_core::EventId, key: &str);
}

#[async_trait]
impl ForeignRows for PgHarness {
    async fn foreign_row(&self, payload: &str, headers: &str) -> outbox_core::EventId {
        foreign_row(self, payload, headers).await
    }

    async fn last_error(&self, id: outbox_core::EventId) -> Option<String> {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT last_error FROM {}.outbox_event WHERE id = $1",
            self.schema()
        )))
        .bind(id.as_uuid())
        .fetch_one(self.store.pool())
        .await
        .expect("read last_error")
    }
}

#[async_trait]
impl ForeignRows for MySqlHarness {
    async fn foreign_row(&self, payload: &str, headers: &str) -> outbox_core::EventId {
        let id = outbox_core::EventId::new();
        let at = outbox_core::Clock::now(&self.clock);
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO `{}` (id, event_type, aggregate_type, aggregate_id, payload, headers, \
             status, attempts, max_attempts, next_attempt_at, created_at, updated_at) \
             VALUES (?, 'file.stored', 'upload', 'bad', ?, ?, 'pending', 0, 5, ?, ?, ?)",
            self.store.config().table()
        )))
        .bind(*id.as_uuid())
        .bind(payload.as_bytes())
        .bind(headers.as_bytes())
        .bind(at)
        .bind(at)
        .bind(at)
        .execute(self.store.pool())
        .await
        .expect("insert a foreign row");
        id
    }

    async fn last_error(&self, id: outbox_core::EventId) -> Option<String> {
        let bytes: Option<Vec<u8>> = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT last_error FROM `{}` WHERE id = ?",
            self.store.config().table()
        )))
        .bind(*id.as_uuid())
        .fetch_one(self.store.pool())
        .await
        .expect("read last_error");
        bytes.map(|b| String::from_utf8_lossy(&b).into_owned())
    }
}

#[async_trait]
impl WaitingRows for MySqlHarness {
    async fn make_waiting(&self, id: outbox_core::EventId, key: &str) {
        let t = self.store.config().table();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE `{t}` SET status = 'waiting', ordering_key = ?, key_place = \
             (SELECT next_place FROM `{t}_keys` WHERE ordering_key = ?) WHERE id = ?"
        )))
        .bind(key.as_bytes())
        .bind(key.as_bytes())
        .bind(*id.as_uuid())
        .execute(self.store.pool())
        .await
        .expect("queue the row");
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE `{t}_keys` SET next_place = next_place + 1 WHERE ordering_key = ?"
        )))
        .bind(key.as_bytes())
        .execute(self.store.pool())
        .await
        .expect("move the key's next place");
    }
}

#[async_trait]
impl ForeignRows for SqliteHarness {
    async fn foreign_row(&self, payload: &str, headers: &str) -> outbox_core::EventId {
        let id = outbox_core::EventId::new();
        let at = outbox_core::Clock::now(&self.clock).timestamp_micros();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO \"{}\" (id, event_type, aggregate_type, aggregate_id, payload, headers, \
             status, attempts, max_attempts, next_attempt_at, created_at, updated_at) \
             VALUES (?, 'file.stored', 'upload', 'bad', ?, ?, 'pending', 0, 5, ?, ?, ?)",
            self.store.config().table()
        )))
        .bind(*id.as_uuid())
        .bind(payload)
        .bind(headers)
        .bind(at)
        .bind(at)
        .bind(at)
        .execute(self.store.pool())
        .await
        .expect("insert a foreign row");
        id
    }

    async fn last_error(&self, id: outbox_core::EventId) -> Option<String> {
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT last_error FROM \"{}\" WHERE id = ?",
            self.store.config().table()
        )))
        .bind(*id.as_uuid())
        .fetch_one(self.store.pool())
        .await
        .expect("read last_error")
    }
}

#[async_trait]
impl WaitingRows for SqliteHarness {
    async fn make_waiting(&self, id: outbox_core::EventId, key: &str) {
        let t = self.store.config().table();
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "UPDATE \"{t}\" SET status = 'waiting', ordering_key = ?1, key_place = \
             (SELECT next_place FROM \"{t}_keys\" WHERE ordering_key = ?1) WHERE id = ?2; \
             UPDATE \"{t}_keys\" SET next_place = next_place + 1 WHERE ordering_key = ?1"
        )))
        .bind(key)
        .bind(*id.as_uuid())
        .execute(self.store.pool())
        .await
        .expect("queue the row");
    }
}

/// Writes a row into the harness's outbox table as another writer could (raw SQL, an older
/// version of the library), bypassing every check: `payload` and `headers` are JSON text.
/// Returns its id; it is pending and due at the harness clock's time.
pub async fn foreign_row(h: &PgHarness, payload: &str, headers: &str) -> outbox_core::EventId {
    let id = outbox_core::EventId::new();
    let sql = format!(
        "INSERT INTO {}.outbox_event (id, event_type, aggregate_type, aggregate_id, payload, headers, \
         max_attempts, next_attempt_at, created_at, updated_at) \
         VALUES ($1, 'file.stored', 'upload', 'bad', $2::jsonb, $3::jsonb, 5, $4, $4, $4)",
        h.schema()
    );
    let at = outbox_core::Clock::now(&h.clock);
    sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(id.as_uuid())
        .bind(payload)
        .bind(headers)
        .bind(at)
        .execute(h.store.pool())
        .await
        .expect("insert a foreign row");
    id
}

/// The event the transport tests send: `file.stored` about upload `n`, payload `{"n": n}` and a
/// `traceparent` header derived from `n` (see [`traceparent`]).
pub fn traced_event(n: usize) -> NewEvent {
    NewEvent::builder("file.stored", "upload", n.to_string())
        .payload(serde_json::json!({ "n": n }))
        .header("traceparent", traceparent(n))
        .build()
        .expect("valid event")
}

/// The `traceparent` header [`traced_event`] carries.
pub fn traceparent(n: usize) -> String {
    format!("00-{n:032x}-{n:016x}-01")
}

/// The scenario every transport test starts with: events 0, 1 and 2 committed in one
/// PostgreSQL transaction, event 99 rolled back, then a worker delivering everything due to
/// `transport`. Asserts three deliveries; returns the committed ids.
pub async fn relay_committed_and_rolled_back<T>(
    h: &PgHarness,
    transport: T,
) -> Vec<outbox_core::EventId>
where
    T: outbox_core::Transport + 'static,
{
    let committed: Vec<outbox_core::EventId> = h
        .emit((0..3).map(traced_event).collect(), true)
        .await
        .expect("emit")
        .iter()
        .map(Emitted::id)
        .collect();
    let mut tx = h.store().begin().await.expect("begin");
    tx.emit(traced_event(99)).await.expect("emit");
    tx.rollback().await.expect("rollback");
    let report = outbox_worker::Worker::builder(h.store(), transport)
        .clock(Arc::new(h.clock().clone()))
        .build()
        .expect("worker")
        .run_until_idle()
        .await
        .expect("relay");
    assert_eq!(report.delivered, 3, "{report:?}");
    committed
}

/// A URL for the server [`connect_options`] found, for programs run as child processes:
/// `DATABASE_URL` itself when set, otherwise one rebuilt from the options (without a password).
pub async fn database_url() -> String {
    let container = std::env::var("OUTBOX_TEST_DATABASE").is_ok_and(|v| v == "container");
    if !container && let Ok(url) = std::env::var("DATABASE_URL") {
        return url;
    }
    let o = connect_options().await;
    let user = o.get_username();
    let database = o.get_database().unwrap_or(user);
    let host = o.get_host();
    if host.starts_with('/') {
        format!(
            "postgres://{user}@localhost:{}/{database}?host={host}",
            o.get_port()
        )
    } else {
        // A container's user has the password `postgres` (images with trust auth ignore it).
        let password = if container { ":postgres" } else { "" };
        format!(
            "postgres://{user}{password}@{host}:{}/{database}",
            o.get_port()
        )
    }
}

/// A TCP proxy on loopback in front of a real server, that a test can cut and restore to play
/// an outage: while cut, open connections are dropped and new ones are closed at once.
#[derive(Debug, Clone)]
pub struct Outage {
    port: u16,
    up: Arc<std::sync::atomic::AtomicBool>,
    links: Arc<std::sync::Mutex<Vec<tokio::task::AbortHandle>>>,
}

impl Outage {
    /// Starts forwarding a loopback port to `upstream` (`host:port`).
    pub async fn start(upstream: &str) -> Self {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind proxy");
        let port = listener.local_addr().expect("proxy address").port();
        let outage = Self {
            port,
            up: Arc::new(std::sync::atomic::AtomicBool::new(true)),
            links: Arc::default(),
        };
        let (up, links, upstream) = (outage.up.clone(), outage.links.clone(), upstream.to_owned());
        tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                if !up.load(std::sync::atomic::Ordering::SeqCst) {
                    continue; // dropped: the client sees the connection close
                }
                let upstream = upstream.clone();
                let link = tokio::spawn(async move {
                    if let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                links
                    .lock()
                    .unwrap_or_else(std::sync::PoisonError::into_inner)
                    .push(link.abort_handle());
            }
        });
        outage
    }

    /// The proxy's port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Cuts every connection and refuses new ones.
    pub fn cut(&self) {
        self.up.store(false, std::sync::atomic::Ordering::SeqCst);
        for link in self
            .links
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .drain(..)
        {
            link.abort();
        }
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.up.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

/// Longest a helper waits for something that should take milliseconds; a guard, not a pace.
const GUARD: std::time::Duration = std::time::Duration::from_secs(30);

/// Returns once one of the harness's connections waits on a lock (PostgreSQL's own view of its
/// sessions, so a test does not guess a delay); panics after 30 s.
pub async fn wait_for_lock_wait(h: &PgHarness) {
    let probe = pool("probe", 1).await;
    let waiting = async {
        loop {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND wait_event_type = 'Lock'",
            )
            .bind(h.schema())
            .fetch_one(&probe)
            .await
            .expect("pg_stat_activity");
            if n > 0 {
                return;
            }
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(GUARD, waiting)
        .await
        .expect("no connection of the test ever waited on a lock");
    probe.close().await;
}

/// A transport that delivers at once and hands each delivered event's id to the test.
pub struct Signal(pub tokio::sync::mpsc::UnboundedSender<outbox_core::EventId>);

#[async_trait]
impl outbox_core::Transport for Signal {
    async fn deliver(
        &self,
        event: &outbox_core::OutboxEvent,
    ) -> Result<(), outbox_core::DeliveryError> {
        let _ = self.0.send(event.id);
        Ok(())
    }
}

/// A transport that reports each delivery as it starts; the first `held` deliveries then wait
/// for the gate's permits.
pub struct Gated {
    started: tokio::sync::mpsc::UnboundedSender<outbox_core::EventId>,
    gate: Arc<tokio::sync::Semaphore>,
    held: std::sync::atomic::AtomicUsize,
}

impl Gated {
    /// Reports starts on `started`; the first `held` deliveries wait for a permit of `gate`.
    pub fn new(
        started: tokio::sync::mpsc::UnboundedSender<outbox_core::EventId>,
        gate: Arc<tokio::sync::Semaphore>,
        held: usize,
    ) -> Self {
        Self {
            started,
            gate,
            held: std::sync::atomic::AtomicUsize::new(held),
        }
    }
}

#[async_trait]
impl outbox_core::Transport for Gated {
    async fn deliver(
        &self,
        event: &outbox_core::OutboxEvent,
    ) -> Result<(), outbox_core::DeliveryError> {
        use std::sync::atomic::Ordering::SeqCst;
        let _ = self.started.send(event.id);
        let hold = self
            .held
            .fetch_update(SeqCst, SeqCst, |n| n.checked_sub(1))
            .is_ok();
        if hold {
            let _permit = self.gate.acquire().await;
        }
        Ok(())
    }
}

/// A locked batch cut off mid-delivery: four events are committed through `h`, a worker on
/// `fragile` (the same table; locked claims, four at once) starts delivering them, then `cut`
/// kills the worker's connections. Nothing may have been written; the events are delivered
/// again (the worker's settlement fails), and each ends delivered with one attempt counted.
pub async fn a_locked_batch_cut_mid_delivery<H, F>(h: &H, fragile: H::Store, cut: F)
where
    H: Harness,
    F: std::future::Future<Output = ()>,
{
    let store = h.store();
    let ids: Vec<_> = h
        .emit((0..4).map(crate::conformance::event).collect(), true)
        .await
        .expect("emit")
        .iter()
        .map(Emitted::id)
        .collect();
    let (started, mut starts) = tokio::sync::mpsc::unbounded_channel();
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    let running = outbox_worker::Worker::builder(fragile, Gated::new(started, gate.clone(), 4))
        .claim_mode(outbox_worker::ClaimMode::Locked)
        .concurrency(4)
        .poll_interval(std::time::Duration::from_millis(50))
        .error_backoff(std::time::Duration::from_millis(20))
        .build()
        .expect("worker")
        .spawn();
    four_starts(&mut starts, "the batch did not start").await;
    cut.await;
    let counts = outbox_core::OutboxStore::count_by_status(&store)
        .await
        .expect("counts");
    assert_eq!(
        (counts.pending, counts.in_flight),
        (4, 0),
        "nothing was written"
    );
    gate.add_permits(4);
    four_starts(&mut starts, "the events were not delivered again").await;
    let report = running.shutdown().await.expect("shutdown");
    assert_eq!(report.delivered, 4, "only the second settlement counted");
    for id in ids {
        let e = outbox_core::OutboxStore::get(&store, id)
            .await
            .expect("get")
            .expect("the event");
        assert_eq!(
            (e.status(), e.attempts()),
            (outbox_core::Status::Delivered, 1)
        );
    }
}

/// A locked claim whose holder goes quiet for longer than `hold` is ended by the database: its
/// event is claimable again, untried, and the late settlement fails, recording nothing. The
/// hold runs on the server's own clock, so this polls for it (bounded by 10 s).
pub async fn the_database_ends_a_quiet_locked_claim<H: Harness>(h: &H, hold: std::time::Duration) {
    use crate::conformance::NowUtc;
    use outbox_core::OutboxStore;
    const GUARD: std::time::Duration = std::time::Duration::from_secs(10);
    let store = h.store();
    let id = h
        .emit(vec![crate::conformance::event(1)], true)
        .await
        .expect("emit")[0]
        .id();
    let now = h.clock().now_utc();
    let stalled = store
        .claim_locked("w1", 10, hold, now)
        .await
        .expect("claim");
    assert_eq!(stalled.events.len(), 1);
    let deadline = std::time::Instant::now() + GUARD;
    loop {
        let again = store
            .claim_locked("w1", 10, GUARD, now)
            .await
            .expect("claim");
        if again.events.iter().any(|e| e.id == id) {
            again
                .batch
                .finish(&outbox_core::Settlement::default(), now)
                .await
                .expect("settle");
            break;
        }
        drop(again);
        assert!(
            std::time::Instant::now() < deadline,
            "the stalled claim still held its event after {GUARD:?}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    let late = outbox_core::Settlement {
        delivered: vec![id],
        ..Default::default()
    };
    assert!(
        stalled.batch.finish(&late, now).await.is_err(),
        "a settlement after the hold ended must fail"
    );
    let event = store.get(id).await.expect("get").expect("the event");
    assert_eq!(
        (event.status(), event.attempts()),
        (outbox_core::Status::Pending, 0)
    );
}

/// With the database's clock deciding (`store` has no injected clock), a relay whose clock runs
/// 120 s ahead cannot take an event inside another relay's 60 s lease, and the lease runs 60 s
/// on the database's clock (`db_now` reads it), whatever the claimer's clock said.
pub async fn relays_with_skewed_clocks_agree_on_leases<S, F, Fut>(store: &S, db_now: F)
where
    S: outbox_core::OutboxStore + outbox_core::Transactional,
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = DateTime<Utc>>,
{
    use outbox_core::{Clock, OutboxStoreExt, Transaction};
    let mut tx = store.begin().await.expect("begin");
    let id = tx
        .emit(crate::conformance::event(1))
        .await
        .expect("emit")
        .id();
    tx.commit().await.expect("commit");
    let honest = outbox_core::SystemClock.now();
    let lease = std::time::Duration::from_secs(60);
    let (_, taken) = store
        .claim_for("honest", 10, lease, honest)
        .await
        .expect("claim");
    assert_eq!(taken.iter().map(|e| e.id).collect::<Vec<_>>(), vec![id]);

    let ahead = honest + chrono::TimeDelta::seconds(120);
    let reclaimed = store.reclaim_expired(ahead).await.expect("reclaim");
    assert_eq!((reclaimed.pending, reclaimed.dead), (0, 0));
    let (_, stolen) = store
        .claim_for("ahead", 10, lease, ahead)
        .await
        .expect("claim");
    assert!(stolen.is_empty(), "a live lease was taken: {stolen:?}");

    let event = store.get(id).await.expect("get").expect("the event");
    let until = event.lifecycle.lease.expect("a lease").until;
    let left = until - db_now().await;
    assert!(
        left > chrono::TimeDelta::seconds(55) && left <= chrono::TimeDelta::seconds(60),
        "{left}"
    );
}

/// Waits (bounded) until four distinct events have started delivering; panics with `why`.
async fn four_starts(
    starts: &mut tokio::sync::mpsc::UnboundedReceiver<outbox_core::EventId>,
    why: &str,
) {
    let mut seen = std::collections::HashSet::new();
    while seen.len() < 4 {
        let id = tokio::time::timeout(std::time::Duration::from_secs(10), starts.recv())
            .await
            .unwrap_or_else(|_| panic!("{why}"))
            .expect("deliveries");
        seen.insert(id);
    }
}

/// A transport that signals when each delivery starts, then never finishes: a worker stuck
/// mid-delivery.
pub struct Stuck(pub tokio::sync::mpsc::UnboundedSender<outbox_core::EventId>);

#[async_trait]
impl outbox_core::Transport for Stuck {
    async fn deliver(
        &self,
        event: &outbox_core::OutboxEvent,
    ) -> Result<(), outbox_core::DeliveryError> {
        let _ = self.0.send(event.id);
        std::future::pending().await
    }
}

/// One multi-threaded runtime (2 workers) shared by a test binary's property cases.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RT: std::sync::OnceLock<tokio::runtime::Runtime> = std::sync::OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("a tokio runtime")
    })
}
