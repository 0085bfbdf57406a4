//! Per-key ordering on PostgreSQL with real concurrency: producers committing real
//! transactions on shared keys while workers deliver, a worker killed on a key's head, and a
//! producer racing the head's acknowledgement. Each test owns a schema.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use outbox_core::{Clock, Emit, EventId, OutboxStore, OutboxStoreExt, Status, SystemClock};
use outbox_tests::conformance::{Harness, NowUtc};
use outbox_tests::harness::{PgHarness, Stuck, wait_for_lock_wait};
use outbox_worker::Worker;
use tokio::sync::mpsc;

/// Longest a test waits for something that should take milliseconds; a guard, not a pace.
const GUARD: Duration = Duration::from_secs(30);

use outbox_tests::concurrency::{self, keyed};

/// The classic way to strand a successor: a producer's event on the key is not yet committed
/// when the head is acknowledged. The acknowledgement waits for the producer's transaction and
/// then promotes its event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_committing_while_the_head_is_acknowledged_is_not_stranded() {
    let h = PgHarness::new().await;
    let store = h.store();
    let head = h.emit(vec![keyed("k", 1)], true).await.unwrap()[0].id();
    let (lease, claimed) = store
        .claim_for("w", 10, GUARD, h.clock().now_utc())
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);

    let mut producer = store.begin().await.unwrap();
    let successor = producer.emit(keyed("k", 2)).await.unwrap().id();
    let acking = {
        let store = store.clone();
        let now = h.clock().now_utc();
        tokio::spawn(async move { store.ack(lease.id, &[head], now).await })
    };
    wait_for_lock_wait(&h).await;
    producer.commit().await.unwrap();
    let recorded = tokio::time::timeout(GUARD, acking)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(recorded[0].outcome, outbox_core::Outcome::Delivered);
    assert_eq!(
        store.fetch(successor).await.unwrap().status(),
        Status::Pending,
        "the successor committed during the acknowledgement is promoted"
    );
    h.cleanup().await;
}

/// The other order: the head's settlement is not yet committed when a producer emits on the
/// key. The producer waits for it, and its event heads the key (the head is gone) instead of
/// waiting behind a head that no longer exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_producer_emitting_during_the_heads_settlement_heads_the_key() {
    let h = PgHarness::new().await;
    let store = h.store();
    let head = h.emit(vec![keyed("k", 1)], true).await.unwrap()[0].id();
    // A settlement in progress: the head delivered and its key released (as the store's
    // acknowledgement does, with the table's `_promote`), in a transaction still open.
    let mut settling = store.pool().begin().await.unwrap();
    let sql = format!(
        "UPDATE {schema}.outbox_event SET status = 'delivered', head_key = NULL, attempts = 1, \
         delivered_at = now() WHERE id = $1",
        schema = h.schema()
    );
    let delivered = sqlx::query(sqlx::AssertSqlSafe(sql))
        .bind(head.as_uuid())
        .execute(&mut *settling)
        .await
        .unwrap();
    assert_eq!(delivered.rows_affected(), 1);
    let promoted: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT {}.outbox_event_promote(ARRAY['k'], now())",
        h.schema()
    )))
    .fetch_one(&mut *settling)
    .await
    .unwrap();
    assert_eq!(promoted, 0, "nothing waits on the key yet");
    let producing = {
        let h = h.clone();
        tokio::spawn(async move { h.emit(vec![keyed("k", 2)], true).await })
    };
    wait_for_lock_wait(&h).await;
    settling.commit().await.unwrap();
    let successor = tokio::time::timeout(GUARD, producing)
        .await
        .unwrap()
        .unwrap()
        .unwrap()[0]
        .id();
    assert_eq!(
        store.fetch(successor).await.unwrap().status(),
        Status::Pending,
        "the key's new head"
    );
    h.cleanup().await;
}

/// A worker killed while delivering a key's head: nothing of the key is delivered until the
/// head's lease runs out and the head is delivered again, then its successor.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_worker_killed_on_a_head_holds_its_key_until_the_head_is_redelivered() {
    let h = PgHarness::new().await;
    let head = h.emit(vec![keyed("k", 1)], true).await.unwrap()[0].id();
    let clock: Arc<dyn Clock> = Arc::new(h.clock().clone());
    let (started, mut starts) = mpsc::unbounded_channel();
    let doomed = Worker::builder(h.store(), Stuck(started))
        .worker_id("doomed")
        .clock(clock.clone())
        .lease(Duration::from_secs(30))
        .delivery_timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let task = tokio::spawn(async move { doomed.run_until_idle().await });
    let got = tokio::time::timeout(GUARD, starts.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, head);
    task.abort();
    let _ = task.await;
    let successor = h.emit(vec![keyed("k", 2)], true).await.unwrap()[0].id();

    let transport = outbox_memory::RecordingTransport::new();
    let rescuer = Worker::builder(h.store(), transport.clone())
        .worker_id("rescuer")
        .clock(clock)
        .build()
        .unwrap();
    let report = rescuer.run_until_idle().await.unwrap();
    assert_eq!(
        report.delivered, 0,
        "the head's lease is live: the key waits"
    );
    h.clock().advance(Duration::from_secs(30));
    let report = rescuer.run_until_idle().await.unwrap();
    assert_eq!(report.delivered, 2);
    let order: Vec<EventId> = transport.delivered().iter().map(|e| e.id).collect();
    assert_eq!(order, vec![head, successor]);
    h.cleanup().await;
}

/// 8 producers commit 20,000 events on 50 shared keys while 4 workers deliver them: each key
/// reaches the consumer in commit order (see
/// [`concurrency`](outbox_tests::concurrency::producers_and_workers_on_shared_keys_keep_each_keys_commit_order)).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producers_and_workers_on_shared_keys_keep_each_keys_commit_order() {
    let h = PgHarness::with_pool_size(16).await;
    let store = h.store().with_clock(Arc::new(SystemClock));
    let counters = format!("{}.counters", h.schema());
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {counters} (key text PRIMARY KEY, n bigint NOT NULL); \
         INSERT INTO {counters} SELECT 'k' || i, 0 FROM generate_series(0, 49) AS i"
    )))
    .execute(store.pool())
    .await
    .unwrap();
    let produce: concurrency::Produce = {
        let (store, counters) = (store.clone(), counters.clone());
        Arc::new(move |key: String| {
            let (store, counters) = (store.clone(), counters.clone());
            Box::pin(async move {
                let mut tx = store.begin().await.unwrap();
                let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "UPDATE {counters} SET n = n + 1 WHERE key = $1 RETURNING n"
                )))
                .bind(&key)
                .fetch_one(&mut *tx)
                .await
                .unwrap();
                tx.emit(keyed(&key, u64::try_from(n).unwrap()))
                    .await
                    .unwrap();
                tx.commit().await.unwrap();
            })
        })
    };
    let committed = async {
        let rows: Vec<(String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
            "SELECT key, n FROM {counters}"
        )))
        .fetch_all(store.pool())
        .await
        .unwrap();
        rows.into_iter()
            .map(|(k, n)| (k, u64::try_from(n).unwrap()))
            .collect()
    };
    concurrency::producers_and_workers_on_shared_keys_keep_each_keys_commit_order(
        store.clone(),
        produce,
        committed,
    )
    .await;
    h.cleanup().await;
}
