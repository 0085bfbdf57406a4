//! Per-key ordering on PostgreSQL with real concurrency: producers committing real
//! transactions on shared keys while workers deliver, a worker killed on a key's head, and a
//! producer racing the head's acknowledgement. Each test owns a schema.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use outbox_core::{
    Clock, DeliveryError, Emit, EventId, FastRandom, NewEvent, OutboxEvent, OutboxStore,
    OutboxStoreExt, RandomSource, RetryPolicy, Status, SystemClock, Transport,
};
use outbox_tests::conformance::{Harness, NowUtc};
use outbox_tests::harness::{PgHarness, Stuck, wait_for_lock_wait};
use outbox_worker::{ClaimMode, Worker};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Longest a test waits for something that should take milliseconds; a guard, not a pace.
const GUARD: Duration = Duration::from_secs(30);

fn keyed(key: &str, n: u64) -> NewEvent {
    NewEvent::builder("order.changed", "order", key)
        .payload(json!({ "key": key, "n": n }))
        .ordering_key(key)
        .build()
        .unwrap()
}

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

/// What the consumer saw, per key: the last `n` acknowledged, events in delivery, and any
/// breach of order.
#[derive(Default)]
struct Consumer {
    last: Mutex<HashMap<String, u64>>,
    in_delivery: Mutex<HashSet<String>>,
    breaches: Mutex<Vec<String>>,
    failures: Mutex<u64>,
    rng: Mutex<Option<FastRandom>>,
}

#[async_trait]
impl Transport for Consumer {
    async fn deliver(&self, event: &OutboxEvent) -> Result<(), DeliveryError> {
        let key = event.payload["key"].as_str().unwrap_or_default().to_owned();
        let n = event.payload["n"].as_u64().unwrap_or_default();
        if !self.in_delivery.lock().unwrap().insert(key.clone()) {
            self.breaches
                .lock()
                .unwrap()
                .push(format!("{key}: two events in delivery at once"));
        }
        tokio::task::yield_now().await;
        self.in_delivery.lock().unwrap().remove(&key);
        let fail = self
            .rng
            .lock()
            .unwrap()
            .get_or_insert_with(|| FastRandom::with_seed(7))
            .next_unit()
            < 0.1;
        if fail {
            *self.failures.lock().unwrap() += 1;
            return Err(DeliveryError::retryable("the consumer is busy"));
        }
        let mut last = self.last.lock().unwrap();
        let seen = last.entry(key.clone()).or_insert(0);
        if n > *seen + 1 {
            self.breaches.lock().unwrap().push(format!(
                "{key}: {n} handed over before {} was delivered",
                *seen + 1
            ));
        }
        *seen = (*seen).max(n);
        Ok(())
    }
}

/// 8 producers commit 20,000 events on 50 shared keys (each transaction numbers its event by a
/// per-key counter row it updates, so `n` is the key's commit order) while 4 workers — two
/// leasing, two locking — deliver through a consumer that fails one delivery in ten: each key
/// reaches the consumer in commit order, one event at a time, every event delivered.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producers_and_workers_on_shared_keys_keep_each_keys_commit_order() {
    const KEYS: usize = 50;
    const PRODUCERS: usize = 8;
    const PER_PRODUCER: usize = 2_500;
    let h = PgHarness::with_pool_size(16).await;
    let store = h.store().with_clock(Arc::new(SystemClock));
    let counters = format!("{}.counters", h.schema());
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE {counters} (key text PRIMARY KEY, n bigint NOT NULL); \
         INSERT INTO {counters} SELECT 'k' || i, 0 FROM generate_series(0, {}) AS i",
        KEYS - 1
    )))
    .execute(store.pool())
    .await
    .unwrap();

    let consumer = Arc::new(Consumer::default());
    let mut workers = tokio::task::JoinSet::new();
    let stop = CancellationToken::new();
    for w in 0..4 {
        let mode = if w % 2 == 0 {
            ClaimMode::Lease
        } else {
            ClaimMode::Locked
        };
        let worker = Worker::builder(store.clone(), consumer.clone())
            .worker_id(format!("w{w}"))
            .claim_mode(mode)
            .batch_size(100)
            .concurrency(16)
            .retry_policy(RetryPolicy::immediate())
            .max_attempts(Some(1_000))
            .poll_interval(Duration::from_millis(50))
            .build()
            .unwrap();
        let stop = stop.clone();
        workers.spawn(async move { worker.run(stop).await.unwrap() });
    }

    let mut producers = tokio::task::JoinSet::new();
    for p in 0..PRODUCERS {
        let store = store.clone();
        let counters = counters.clone();
        producers.spawn(async move {
            let mut rng = FastRandom::with_seed(p as u64);
            for _ in 0..PER_PRODUCER {
                let key = format!("k{}", (rng.next_unit() * KEYS as f64) as usize % KEYS);
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
            }
        });
    }
    while let Some(done) = producers.join_next().await {
        done.unwrap();
    }
    // The producers are done; the workers finish what they hold and stop, and one more worker
    // delivers whatever is left (each of its runs ends when a claim finds nothing).
    stop.cancel();
    while let Some(done) = workers.join_next().await {
        done.unwrap();
    }
    let total = (PRODUCERS * PER_PRODUCER) as u64;
    let last_worker = Worker::builder(store.clone(), consumer.clone())
        .worker_id("last")
        .batch_size(100)
        .concurrency(16)
        .retry_policy(RetryPolicy::immediate())
        .max_attempts(Some(1_000))
        .build()
        .unwrap();
    let mut counts = store.count_by_status().await.unwrap();
    for _ in 0..1_000 {
        if counts.delivered == total {
            break;
        }
        last_worker.run_until_idle().await.unwrap();
        counts = store.count_by_status().await.unwrap();
    }
    assert_eq!(
        (
            counts.delivered,
            counts.waiting,
            counts.pending,
            counts.dead
        ),
        (total, 0, 0, 0)
    );
    let breaches = consumer.breaches.lock().unwrap().clone();
    assert!(
        breaches.is_empty(),
        "{:?}",
        &breaches[..breaches.len().min(5)]
    );
    let committed: Vec<(String, i64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT key, n FROM {counters}"
    )))
    .fetch_all(store.pool())
    .await
    .unwrap();
    let last = consumer.last.lock().unwrap().clone();
    for (key, n) in committed {
        assert_eq!(
            last.get(&key).copied().unwrap_or(0),
            u64::try_from(n).unwrap(),
            "{key}: the consumer did not reach the last event"
        );
    }
    assert!(
        *consumer.failures.lock().unwrap() > total / 20,
        "the consumer failed too rarely to test retries"
    );
    h.cleanup().await;
}
