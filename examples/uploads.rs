//! An uploads service, the outbox's first consumer.
//!
//! Saving an upload writes the file record **and** its `file.stored` event in one transaction;
//! a worker then delivers each event to a transport that prints one line per delivery. The
//! service logic (`save_upload`) is written once, against the store-independent transaction
//! boundary, and runs unchanged on every store:
//!
//! ```text
//! cargo run --example uploads                                          # in memory, zero setup
//! DATABASE_URL=postgres://root@127.0.0.1:5432/test \
//!     cargo run --example uploads --features outbox-examples/postgres   # on PostgreSQL
//! DATABASE_URL=mysql://root@127.0.0.1:3306/test \
//!     cargo run --example uploads --features outbox-examples/mysql      # on MySQL/MariaDB
//! DATABASE_URL=sqlite:///tmp/uploads.db \
//!     cargo run --example uploads --features outbox-examples/sqlite     # on SQLite
//! ```
//!
//! On a database it creates the outbox table (`outbox_event`) and an `uploads` table, and
//! leaves the delivered rows there for inspection. `examples/consumer.rs` is the other
//! side: a thumbnailer that receives `file.stored` from NATS and handles each event once.

use outbox_core::{
    DeliveryError, EventId, NewEvent, OutboxEvent, OutboxStore, Transaction, Transactional,
    Transport,
};
use outbox_memory::{MemoryConn, MemoryStore};
use outbox_worker::Worker;
use serde_json::json;

type AppError = Box<dyn std::error::Error + Send + Sync>;

/// A stored file, the service's own business row.
#[derive(Clone, Debug)]
struct FileRecord {
    name: String,
    bytes: i64,
}

/// The service's repository: its one business write. Implemented once per backend, on the
/// backend's own connection, because the statement itself is the backend's.
#[outbox_core::async_trait]
trait Files: Send {
    /// Inserts the file record; returns its id.
    async fn insert_file(&mut self, file: &FileRecord) -> Result<i64, AppError>;
}

/// The service logic, written once: the file and its event, in the caller's transaction.
async fn save_upload<T>(tx: &mut T, file: &FileRecord) -> Result<(i64, EventId), AppError>
where
    T: Transaction,
    T::Conn: Files,
{
    let id = tx.conn().insert_file(file).await?;
    let event = NewEvent::builder("file.stored", "upload", id.to_string())
        .payload(json!({ "name": file.name, "bytes": file.bytes }))
        .idempotency_key(format!("upload-{id}-stored"))
        .build()?;
    Ok((id, tx.emit(event).await?.id()))
}

/// The memory store's "uploads table": a typed table its transactions change and commit.
#[derive(Clone, Debug, Default)]
struct UploadsTable {
    rows: Vec<(i64, FileRecord)>,
}

#[outbox_core::async_trait]
impl Files for MemoryConn {
    async fn insert_file(&mut self, file: &FileRecord) -> Result<i64, AppError> {
        let table = self.state::<UploadsTable>();
        let id = table.rows.last().map_or(1, |(id, _)| id + 1);
        table.rows.push((id, file.clone()));
        Ok(id)
    }
}

#[cfg(feature = "postgres")]
#[outbox_core::async_trait]
impl Files for sqlx::PgConnection {
    async fn insert_file(&mut self, file: &FileRecord) -> Result<i64, AppError> {
        let id =
            sqlx::query_scalar("INSERT INTO uploads (name, bytes) VALUES ($1, $2) RETURNING id")
                .bind(&file.name)
                .bind(file.bytes)
                .fetch_one(self)
                .await?;
        Ok(id)
    }
}

#[cfg(feature = "mysql")]
#[outbox_core::async_trait]
impl Files for sqlx::MySqlConnection {
    async fn insert_file(&mut self, file: &FileRecord) -> Result<i64, AppError> {
        let done = sqlx::query("INSERT INTO uploads (name, bytes) VALUES (?, ?)")
            .bind(&file.name)
            .bind(file.bytes)
            .execute(self)
            .await?;
        Ok(i64::try_from(done.last_insert_id())?)
    }
}

#[cfg(feature = "sqlite")]
#[outbox_core::async_trait]
impl Files for sqlx::SqliteConnection {
    async fn insert_file(&mut self, file: &FileRecord) -> Result<i64, AppError> {
        let id = sqlx::query_scalar("INSERT INTO uploads (name, bytes) VALUES (?, ?) RETURNING id")
            .bind(&file.name)
            .bind(file.bytes)
            .fetch_one(self)
            .await?;
        Ok(id)
    }
}

/// Prints one line per delivered event.
struct PrintTransport;

#[outbox_core::async_trait]
impl Transport for PrintTransport {
    async fn deliver(&self, event: &OutboxEvent) -> Result<(), DeliveryError> {
        println!(
            "delivered {} {} (upload {})",
            event.event_type, event.id, event.aggregate_id
        );
        Ok(())
    }
}

fn uploads() -> Vec<FileRecord> {
    [
        ("cat.png", 48_213),
        ("report.pdf", 1_204_551),
        ("notes.txt", 912),
    ]
    .into_iter()
    .map(|(name, bytes)| FileRecord {
        name: name.into(),
        bytes,
    })
    .collect()
}

/// Saves three uploads, rolls a fourth back, then delivers every committed event. The same
/// function for every store.
async fn run<S>(store: S) -> Result<(), AppError>
where
    S: Transactional + OutboxStore + Clone + 'static,
    <S::Tx as Transaction>::Conn: Files,
{
    for file in uploads() {
        let mut tx = store.begin().await?;
        let (id, event) = save_upload(&mut tx, &file).await?;
        tx.commit().await?;
        println!(
            "saved upload {id} ({}, {} bytes) with event {event}",
            file.name, file.bytes
        );
    }
    // A request that fails after saving: its transaction rolls back, file and event alike.
    let aborted = FileRecord {
        name: "aborted.bin".into(),
        bytes: 1,
    };
    let mut tx = store.begin().await?;
    let (id, event) = save_upload(&mut tx, &aborted).await?;
    tx.rollback().await?;
    println!(
        "rolled back upload {id} ({}) and its event {event}: neither is stored",
        aborted.name
    );

    let report = Worker::builder(store.clone(), PrintTransport)
        .worker_id("uploads-demo")
        .build()?
        .run_until_idle()
        .await?;
    println!(
        "worker: {} delivered, {} retried, {} dead",
        report.delivered, report.retried, report.dead
    );
    Ok(())
}

async fn run_in_memory() -> Result<(), AppError> {
    println!("outbox: in-memory store (zero setup)");
    let store = MemoryStore::new();
    run(store.clone()).await?;
    let files = store.state::<UploadsTable>().rows;
    println!(
        "uploads stored: {} ({}); events stored: {}",
        files.len(),
        files
            .iter()
            .map(|(_, f)| f.name.as_str())
            .collect::<Vec<_>>()
            .join(", "),
        store.events().len()
    );
    Ok(())
}

#[cfg(feature = "postgres")]
async fn run_on_postgres(url: &str) -> Result<(), AppError> {
    use outbox_postgres::{PgConfig, PgStore};
    println!("outbox: PostgreSQL store");
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(url)
        .await?;
    let store = PgStore::new(pool.clone(), PgConfig::new())?;
    let applied = store.migrate().await?;
    println!(
        "migrations applied: {applied} (table {})",
        store.config().qualified_table()
    );
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS uploads (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, \
         name text NOT NULL, bytes bigint NOT NULL, stored_at timestamptz NOT NULL DEFAULT now())",
    )
    .execute(&pool)
    .await?;
    run(store.clone()).await?;
    println!(
        "inspect with:\n  psql {url} -c \"SELECT id, event_type, aggregate_id, status, attempts, \
         delivered_at FROM outbox_event ORDER BY id DESC LIMIT 5\""
    );
    Ok(())
}

#[cfg(feature = "mysql")]
async fn run_on_mysql(url: &str) -> Result<(), AppError> {
    use outbox_mysql::{MySqlConfig, MySqlStore};
    println!("outbox: MySQL/MariaDB store");
    let pool = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(4)
        .connect(&url.replacen("mariadb://", "mysql://", 1))
        .await?;
    let store = MySqlStore::new(pool.clone(), MySqlConfig::new())?;
    let applied = store.migrate().await?;
    println!(
        "migrations applied: {applied} (table {})",
        store.config().table()
    );
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS uploads (id BIGINT AUTO_INCREMENT PRIMARY KEY, \
         name TEXT NOT NULL, bytes BIGINT NOT NULL, \
         stored_at DATETIME(6) NOT NULL DEFAULT CURRENT_TIMESTAMP(6))",
    )
    .execute(&pool)
    .await?;
    run(store.clone()).await?;
    println!(
        "inspect with:\n  mysql -e \"SELECT HEX(id), event_type, status, attempts, delivered_at \
         FROM outbox_event ORDER BY seq DESC LIMIT 5\""
    );
    Ok(())
}

#[cfg(feature = "sqlite")]
async fn run_on_sqlite(url: &str) -> Result<(), AppError> {
    use outbox_sqlite::{SqliteConfig, SqliteStore};
    println!("outbox: SQLite store");
    let store = SqliteStore::connect(url, SqliteConfig::new()).await?;
    let applied = store.migrate().await?;
    println!(
        "migrations applied: {applied} (table {})",
        store.config().table()
    );
    sqlx::query(
        "CREATE TABLE IF NOT EXISTS uploads (id INTEGER PRIMARY KEY, name TEXT NOT NULL, \
         bytes INTEGER NOT NULL, stored_at TEXT NOT NULL DEFAULT CURRENT_TIMESTAMP)",
    )
    .execute(store.pool())
    .await?;
    run(store.clone()).await?;
    let file = url.trim_start_matches("sqlite://");
    println!(
        "inspect with:\n  sqlite3 {file} \"SELECT hex(id), event_type, status, attempts, \
         delivered_at FROM outbox_event ORDER BY created_at DESC LIMIT 5\""
    );
    Ok(())
}

/// The feature a URL's database needs, when this build lacks it.
#[cfg(not(all(feature = "postgres", feature = "mysql", feature = "sqlite")))]
fn missing(feature: &str) -> Result<(), AppError> {
    eprintln!(
        "DATABASE_URL names a database this build has no store for: run\n  \
         cargo run --example uploads --features outbox-examples/{feature}"
    );
    std::process::exit(2)
}

#[tokio::main]
async fn main() -> Result<(), AppError> {
    let url = std::env::var("DATABASE_URL").ok().filter(|u| !u.is_empty());
    let Some(url) = url else {
        return run_in_memory().await;
    };
    if url.starts_with("mysql://") || url.starts_with("mariadb://") {
        #[cfg(feature = "mysql")]
        return run_on_mysql(&url).await;
        #[cfg(not(feature = "mysql"))]
        return missing("mysql");
    }
    if url.starts_with("sqlite:") {
        #[cfg(feature = "sqlite")]
        return run_on_sqlite(&url).await;
        #[cfg(not(feature = "sqlite"))]
        return missing("sqlite");
    }
    #[cfg(feature = "postgres")]
    return run_on_postgres(&url).await;
    #[cfg(not(feature = "postgres"))]
    return missing("postgres");
}
