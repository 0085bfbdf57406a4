//! An uploads service, the outbox's first consumer.
//!
//! Saving an upload writes the file record **and** its `file.stored` event in one unit of work;
//! a worker then delivers each event to a transport that prints one line per delivery, and the
//! program exits once every event is delivered.
//!
//! ```text
//! cargo run --example uploads                                              # in memory, zero setup
//! DATABASE_URL=postgres://root@127.0.0.1:5432/test cargo run --example uploads   # on PostgreSQL
//! ```
//!
//! On PostgreSQL it creates the outbox table (`public.outbox_event`) and an `uploads` table, and
//! leaves the delivered rows there for inspection with psql.

use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use outbox_core::{
    DeliveryError, Emit, Emitted, EventId, NewEvent, OutboxEvent, OutboxStore, StoreError,
    Transport,
};
use outbox_memory::{MemoryStore, UnitOfWork};
use outbox_postgres::{PgConfig, PgStore, PgTransaction};
use outbox_worker::Worker;
use serde_json::json;

type AppError = Box<dyn std::error::Error + Send + Sync>;

/// A stored file, the service's own business row.
#[derive(Clone, Debug)]
struct FileRecord {
    name: String,
    bytes: i64,
}

/// What the service needs from one transaction: its own table, and the outbox.
#[async_trait]
trait UploadTx: Emit {
    /// Inserts the file record; returns its id.
    async fn insert_file(&mut self, file: &FileRecord) -> Result<i64, AppError>;
}

/// The service logic, written once against [`UploadTx`]: the same code runs on any backend.
async fn save_upload(tx: &mut impl UploadTx, file: &FileRecord) -> Result<EventId, AppError> {
    let id = tx.insert_file(file).await?;
    let event = NewEvent::builder("file.stored", "upload", id.to_string())
        .payload(json!({ "name": file.name, "bytes": file.bytes }))
        .idempotency_key(format!("upload-{id}-stored"))
        .build()?;
    Ok(tx.emit(event).await?.id())
}

/// The in-memory "database": a files table next to the memory outbox.
#[derive(Clone)]
struct Files {
    rows: Arc<Mutex<Vec<FileRecord>>>,
    next_id: Arc<AtomicI64>,
}

impl Default for Files {
    fn default() -> Self {
        Self {
            rows: Arc::default(),
            next_id: Arc::new(AtomicI64::new(1)),
        }
    }
}

/// One memory unit of work that also writes the files table on commit.
struct MemoryTx {
    uow: UnitOfWork,
    files: Files,
}

#[async_trait]
impl Emit for MemoryTx {
    async fn emit(&mut self, event: NewEvent) -> Result<Emitted, StoreError> {
        self.uow.emit(event).await
    }
}

#[async_trait]
impl UploadTx for MemoryTx {
    async fn insert_file(&mut self, file: &FileRecord) -> Result<i64, AppError> {
        let id = self.files.next_id.fetch_add(1, Ordering::Relaxed);
        let (files, file) = (self.files.clone(), file.clone());
        self.uow.on_commit(move || {
            files
                .rows
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(file)
        });
        Ok(id)
    }
}

/// A PostgreSQL transaction: the `uploads` row and the event commit together.
struct PgUploadTx(PgTransaction);

#[async_trait]
impl Emit for PgUploadTx {
    async fn emit(&mut self, event: NewEvent) -> Result<Emitted, StoreError> {
        self.0.emit(event).await
    }
}

#[async_trait]
impl UploadTx for PgUploadTx {
    async fn insert_file(&mut self, file: &FileRecord) -> Result<i64, AppError> {
        let id =
            sqlx::query_scalar("INSERT INTO uploads (name, bytes) VALUES ($1, $2) RETURNING id")
                .bind(&file.name)
                .bind(file.bytes)
                .fetch_one(&mut *self.0)
                .await?;
        Ok(id)
    }
}

/// Prints one line per delivered event.
struct PrintTransport;

#[async_trait]
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

fn aborted() -> FileRecord {
    FileRecord {
        name: "aborted.bin".into(),
        bytes: 1,
    }
}

/// Runs a worker until every event in `store` is delivered (or dead), then stops it.
async fn deliver_all<S: OutboxStore + Clone + 'static>(store: S) -> Result<(), AppError> {
    let worker = Worker::builder(store.clone(), PrintTransport)
        .worker_id("uploads-demo")
        .poll_interval(Duration::from_millis(100))
        .build()?;
    let running = worker.spawn();
    loop {
        let counts = store.count_by_status().await?;
        if counts.pending + counts.in_flight == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let report = running.shutdown().await?;
    println!(
        "worker stopped: {} delivered, {} retried, {} dead",
        report.delivered, report.retried, report.dead
    );
    Ok(())
}

async fn run_in_memory() -> Result<(), AppError> {
    println!("outbox: in-memory store (zero setup; set DATABASE_URL to run on PostgreSQL)");
    let store = MemoryStore::new();
    let files = Files::default();
    for file in uploads() {
        let mut tx = MemoryTx {
            uow: store.begin(),
            files: files.clone(),
        };
        let id = save_upload(&mut tx, &file).await?;
        tx.uow.commit();
        println!("saved {} ({} bytes) with event {id}", file.name, file.bytes);
    }
    // A failed request: its unit of work rolls back, so neither the file nor the event exists.
    let mut tx = MemoryTx {
        uow: store.begin(),
        files: files.clone(),
    };
    save_upload(&mut tx, &aborted()).await?;
    tx.uow.rollback();

    deliver_all(store.clone()).await?;
    let stored = files
        .rows
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .len();
    println!(
        "files stored: {stored}, events delivered: {}",
        store.count_by_status().await?.delivered
    );
    Ok(())
}

async fn run_on_postgres(url: &str) -> Result<(), AppError> {
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
    for file in uploads() {
        let mut tx = PgUploadTx(store.begin().await?);
        let id = save_upload(&mut tx, &file).await?;
        tx.0.commit().await?;
        println!("saved {} ({} bytes) with event {id}", file.name, file.bytes);
    }
    let mut tx = PgUploadTx(store.begin().await?);
    let never = save_upload(&mut tx, &aborted()).await?;
    tx.0.rollback().await?;
    println!(
        "rolled back {} and its event {never}: neither is stored",
        aborted().name
    );

    deliver_all(store.clone()).await?;
    let counts = store.count_by_status().await?;
    println!(
        "outbox now holds {} delivered, {} pending, {} dead; inspect with:\n  psql {url} -c \"SELECT id, event_type, \
         aggregate_id, status, attempts, delivered_at FROM outbox_event ORDER BY id DESC LIMIT 5\"",
        counts.delivered, counts.pending, counts.dead
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), AppError> {
    match std::env::var("DATABASE_URL") {
        Ok(url) if !url.is_empty() => run_on_postgres(&url).await,
        _ => run_in_memory().await,
    }
}
