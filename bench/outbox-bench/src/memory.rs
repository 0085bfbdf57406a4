//! The memory store: how cheap application unit tests on it are.

use std::time::Instant;

use async_trait::async_trait;
use outbox_core::{DeliveryError, Emit, NewEvent, OutboxEvent, Transport};
use outbox_memory::MemoryStore;
use outbox_worker::Worker;

use crate::{Args, BenchError, Summary, per_second};

/// Accepts every event at once.
#[derive(Clone, Copy, Debug)]
pub struct NoopTransport;

#[async_trait]
impl Transport for NoopTransport {
    async fn deliver(&self, _event: &OutboxEvent) -> Result<(), DeliveryError> {
        Ok(())
    }
}

/// A ~256-byte JSON payload.
pub fn payload(n: usize, bytes: usize) -> serde_json::Value {
    let pad = "x".repeat(bytes.saturating_sub(40));
    serde_json::json!({ "n": n, "pad": pad })
}

pub async fn run(args: &Args, summary: &mut Summary) -> Result<(), BenchError> {
    let n = if args.quick { 20_000 } else { 200_000 };
    let store = MemoryStore::new();
    let start = Instant::now();
    for i in 0..n {
        let mut uow = store.begin().await?;
        let event = NewEvent::builder("file.stored", "upload", i.to_string())
            .payload(payload(i, 256))
            .build()?;
        uow.emit(event).await?;
        uow.commit().await?;
    }
    summary.put(
        "memory_store.emits_per_s",
        per_second(n as u64, start.elapsed()),
        "events/s",
    );

    let worker = Worker::builder(store.clone(), NoopTransport)
        .batch_size(100)
        .concurrency(16)
        .build()?;
    let start = Instant::now();
    let report = worker.run_until_idle().await?;
    summary.put(
        "memory_store.deliveries_per_s",
        per_second(report.delivered, start.elapsed()),
        "events/s",
    );
    Ok(())
}
