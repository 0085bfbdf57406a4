//! An uploads service, the outbox's first consumer.
//!
//! Saving an upload writes the file record **and** its `file.stored` event in one unit of work;
//! a worker then delivers each event to a transport that prints one line per delivery. It runs
//! with zero setup on the in-memory store and exits once every event is delivered:
//!
//! ```text
//! cargo run --example uploads
//! ```

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use outbox_core::{
    DeliveryError, Emit, Emitted, EventId, NewEvent, OutboxEvent, OutboxStore, StoreError,
    Transport,
};
use outbox_memory::{MemoryStore, UnitOfWork};
use outbox_worker::Worker;
use serde_json::json;
use tokio_util::sync::CancellationToken;

/// A stored file, the service's own business row.
#[derive(Clone, Debug)]
struct FileRecord {
    id: u64,
    name: String,
    bytes: u64,
}

/// What the service needs from one transaction: its own table, and the outbox.
#[async_trait]
trait UploadTx: Emit {
    async fn insert_file(&mut self, file: &FileRecord) -> Result<(), StoreError>;
}

/// The service logic, written once against [`UploadTx`]: the same code runs on any backend.
async fn save_upload(
    tx: &mut impl UploadTx,
    file: FileRecord,
) -> Result<EventId, Box<dyn std::error::Error>> {
    tx.insert_file(&file).await?;
    let event = NewEvent::builder("file.stored", "upload", file.id.to_string())
        .payload(json!({ "name": file.name, "bytes": file.bytes }))
        .idempotency_key(format!("upload-{}-stored", file.id))
        .build()?;
    Ok(tx.emit(event).await?.id())
}

/// The in-memory "database": a files table next to the memory outbox.
#[derive(Clone, Default)]
struct Files(Arc<Mutex<Vec<FileRecord>>>);

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
    async fn insert_file(&mut self, file: &FileRecord) -> Result<(), StoreError> {
        let (files, file) = (self.files.clone(), file.clone());
        self.uow.on_commit(move || {
            files
                .0
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push(file)
        });
        Ok(())
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
    .enumerate()
    .map(|(i, (name, bytes))| FileRecord {
        id: i as u64 + 1,
        name: name.into(),
        bytes,
    })
    .collect()
}

/// Runs a worker until every event in `store` is delivered (or dead), then stops it.
async fn deliver_all<S: OutboxStore + Clone + 'static>(
    store: S,
) -> Result<(), Box<dyn std::error::Error>> {
    let worker = Worker::builder(store.clone(), PrintTransport)
        .worker_id("uploads-demo")
        .poll_interval(Duration::from_millis(100))
        .build()?;
    let cancel = CancellationToken::new();
    let running = tokio::spawn({
        let cancel = cancel.clone();
        async move { worker.run(cancel).await }
    });
    loop {
        let counts = store.count_by_status().await?;
        if counts.pending + counts.in_flight == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cancel.cancel();
    let report = running.await?;
    println!(
        "worker stopped: {} delivered, {} retried, {} dead",
        report.delivered, report.retried, report.dead
    );
    Ok(())
}

async fn run_in_memory() -> Result<(), Box<dyn std::error::Error>> {
    println!("outbox: in-memory store (zero setup)");
    let store = MemoryStore::new();
    let files = Files::default();
    for file in uploads() {
        let mut tx = MemoryTx {
            uow: store.begin(),
            files: files.clone(),
        };
        let id = save_upload(&mut tx, file.clone()).await?;
        tx.uow.commit();
        println!("saved {} ({} bytes) with event {id}", file.name, file.bytes);
    }
    // A failed request: its unit of work rolls back, so neither the file nor the event exists.
    let mut tx = MemoryTx {
        uow: store.begin(),
        files: files.clone(),
    };
    save_upload(
        &mut tx,
        FileRecord {
            id: 99,
            name: "aborted.bin".into(),
            bytes: 1,
        },
    )
    .await?;
    tx.uow.rollback();

    deliver_all(store.clone()).await?;
    let stored = files.0.lock().unwrap_or_else(PoisonError::into_inner).len();
    println!(
        "files stored: {stored}, events delivered: {}",
        store.count_by_status().await?.delivered
    );
    Ok(())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    run_in_memory().await
}
