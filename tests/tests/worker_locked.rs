//! The worker end to end on the memory store with locked claims (`ClaimMode::Locked`): the
//! shared worker tests, then what only a locked claim does. Tokio's paused clock drives both
//! the worker's timers and the stored timestamps: nothing here waits on the wall clock.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use outbox_core::{
    Clock, Emit, EventId, FixedRandom, Jitter, NewEvent, OutboxEvent, OutboxStore, OutboxStoreExt,
    RetryPolicy, Status,
};

use outbox_memory::{MemoryStore, RecordingTransport, Scripted};
use outbox_tests::harness::t0;
use outbox_worker::{ClaimMode, TokioClock, Worker, WorkerBuilder};

/// Every shared test claims under locks here.
const MODE: ClaimMode = ClaimMode::Locked;

include!("worker_suite/shared.rs");

/// Claimed events stay pending while a locked batch is delivered: nothing is written until
/// the batch is settled.
#[tokio::test(start_paused = true)]
async fn a_locked_batch_writes_nothing_until_it_is_settled() {
    let f = Fixture::new();
    let ids = f.emit(uploads(2)).await;
    f.transport.script([
        Scripted::DeliverAfter(Duration::from_secs(5)),
        Scripted::DeliverAfter(Duration::from_secs(5)),
    ]);
    let running = f.worker().concurrency(2).build().unwrap().spawn();
    while f.transport.attempts().len() < 2 {
        tokio::task::yield_now().await;
    }
    let counts = f.store.count_by_status().await.unwrap();
    assert_eq!((counts.pending, counts.in_flight), (2, 0));
    for id in &ids {
        let e = f.store.fetch(*id).await.unwrap();
        assert!(e.lifecycle.lease.is_none() && e.updated_at == e.created_at);
    }
    while f.transport.delivered().len() < 2 {
        tokio::time::advance(Duration::from_millis(100)).await;
    }
    let report = running.shutdown().await.unwrap();
    assert_eq!((report.delivered, report.batches), (2, 1));
    for id in ids {
        assert_eq!(f.status(id).await, (Status::Delivered, 1));
    }
}

/// A batch that takes longer than the hold keeps its locks by renewing the hold (every third
/// of it), as a leased batch renews its lease: another claim finds nothing, and the outcomes
/// are recorded at the end.
#[tokio::test(start_paused = true)]
async fn a_long_batch_keeps_its_locks_by_renewing_the_hold() {
    let f = Fixture::new();
    let ids = f.emit(uploads(2)).await;
    f.transport.script([Scripted::Hang, Scripted::Hang]);
    let worker = f
        .worker()
        .concurrency(1)
        .lease(Duration::from_secs(30))
        .delivery_timeout(Duration::from_secs(29))
        .build()
        .unwrap();
    let running = tokio::spawn(async move { worker.run_until_idle().await });
    // 45 s in: past the first 30 s hold, inside the second delivery.
    tokio::time::sleep(Duration::from_secs(45)).await;
    let other = f
        .store
        .claim_locked("w1", 10, Duration::from_secs(30), f.clock.now())
        .await
        .unwrap();
    assert!(other.events.is_empty(), "the hold was renewed");
    drop(other);
    let report = running.await.unwrap().unwrap();
    assert_eq!(report.retried, 2, "both timed out and were rescheduled");
    for id in ids {
        assert_eq!(f.status(id).await, (Status::Pending, 1));
    }
}

/// A worker that dies mid-batch (its task aborted) gives its events back at once and untried:
/// no lease to wait out, no attempt counted.
#[tokio::test(start_paused = true)]
async fn a_worker_that_dies_mid_batch_gives_its_events_back_at_once() {
    let f = Fixture::new();
    let ids = f.emit(uploads(3)).await;
    f.transport.otherwise(Scripted::Hang);
    let worker = f.worker().concurrency(3).build().unwrap();
    let task = tokio::spawn(async move { worker.run_until_idle().await });
    while f.transport.attempts().len() < 3 {
        tokio::task::yield_now().await;
    }
    task.abort();
    assert!(task.await.unwrap_err().is_cancelled());
    let (lease, back) = f
        .store
        .claim_for("next", 10, Duration::from_secs(60), f.clock.now())
        .await
        .unwrap();
    assert_eq!(back.iter().map(|e| e.id).collect::<Vec<_>>(), ids);
    assert!(back.iter().all(|e| e.attempts() == 0));
    f.store
        .release(lease.id, &ids, f.clock.now())
        .await
        .unwrap();
}
