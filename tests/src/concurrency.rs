//! Concurrency cases every database backend passes, as plain async functions over a
//! [`Harness`]: several workers on many events, a crashed worker, producers and workers on
//! shared ordering keys. Each backend's test file calls them with its harness and a store of it
//! on the system clock (workers there run in real time).

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures_util::future::BoxFuture;
use outbox_core::{
    Clock, DeliveryError, EventFilter, EventId, FastRandom, NewEvent, OutboxEvent, OutboxStore,
    OutboxStoreExt, RandomSource, RetryPolicy, Status, Transport,
};
use outbox_worker::{ClaimMode, Worker};
use serde_json::json;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::conformance::Harness;
use crate::harness::Stuck;

/// Longest a case waits for something that should take milliseconds; a guard, not a pace.
const GUARD: Duration = Duration::from_secs(30);

fn upload(n: usize) -> NewEvent {
    NewEvent::builder("file.stored", "upload", n.to_string())
        .payload(json!({ "n": n }))
        .build()
        .expect("valid event")
}

/// An event on ordering key `key`, numbered `n` in the key's commit order.
pub fn keyed(key: &str, n: u64) -> NewEvent {
    NewEvent::builder("order.changed", "order", key)
        .payload(json!({ "key": key, "n": n }))
        .ordering_key(key)
        .build()
        .expect("valid event")
}

/// Records deliveries and flags any event delivered by two workers at once.
#[derive(Default)]
struct Exclusive {
    in_delivery: Mutex<HashSet<EventId>>,
    delivered: Mutex<Vec<EventId>>,
    overlaps: Mutex<Vec<EventId>>,
}

fn locked<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

#[async_trait]
impl Transport for Exclusive {
    async fn deliver(&self, event: &OutboxEvent) -> Result<(), DeliveryError> {
        if !locked(&self.in_delivery).insert(event.id) {
            locked(&self.overlaps).push(event.id);
        }
        tokio::task::yield_now().await;
        locked(&self.in_delivery).remove(&event.id);
        locked(&self.delivered).push(event.id);
        Ok(())
    }
}

/// 10,000 events, four workers claiming in `mode` on `store` (the harness's store on the system
/// clock): each event delivered exactly once, never by two workers at once, the work shared.
pub async fn four_workers_drain<H: Harness>(h: &H, store: H::Store, mode: ClaimMode) {
    for chunk in 0..10 {
        let events = (chunk * 1000..(chunk + 1) * 1000).map(upload).collect();
        h.emit(events, true).await.expect("emit");
    }
    let transport = Arc::new(Exclusive::default());
    let mut workers = tokio::task::JoinSet::new();
    for w in 0..4 {
        let worker = Worker::builder(store.clone(), transport.clone())
            .worker_id(format!("w{w}"))
            .claim_mode(mode)
            .batch_size(100)
            .concurrency(8)
            .build()
            .expect("worker");
        workers.spawn(async move { worker.run_until_idle().await.expect("worker run") });
    }
    let mut delivered_by_reports = 0;
    let mut busy_workers = 0;
    while let Some(report) = tokio::time::timeout(Duration::from_secs(300), workers.join_next())
        .await
        .expect("the workers finished within 300 s")
    {
        let report = report.expect("worker task");
        busy_workers += usize::from(report.batches > 0);
        delivered_by_reports += report.delivered;
    }
    assert_eq!(delivered_by_reports, 10_000);
    assert!(
        busy_workers >= 2,
        "the workers did not share the work: {busy_workers} took part"
    );
    assert!(
        locked(&transport.overlaps).is_empty(),
        "events held by two workers at once"
    );
    let delivered = locked(&transport.delivered).clone();
    let unique: HashSet<EventId> = delivered.iter().copied().collect();
    assert_eq!(
        (delivered.len(), unique.len()),
        (10_000, 10_000),
        "each event delivered exactly once"
    );
    let counts = store.count_by_status().await.expect("count");
    assert_eq!(
        (
            counts.delivered,
            counts.pending,
            counts.in_flight,
            counts.dead
        ),
        (10_000, 0, 0, 0)
    );
    let odd: Vec<OutboxEvent> = store
        .list(&EventFilter {
            limit: 20_000,
            ..Default::default()
        })
        .await
        .expect("list")
        .events
        .into_iter()
        .filter(|e| {
            e.attempts() != 1 || e.lifecycle.lease.is_some() || e.lifecycle.delivered_at.is_none()
        })
        .collect();
    assert!(
        odd.is_empty(),
        "inconsistent rows: {:?}",
        &odd[..odd.len().min(3)]
    );
}

/// A worker killed mid-delivery: its events stay in flight until the lease runs out on the
/// store's clock, then another worker delivers them, the crashed attempt counted.
pub async fn a_crashed_workers_events_are_delivered_after_its_lease_expires<H: Harness>(h: &H) {
    let ids: Vec<EventId> = h
        .emit((0..5).map(upload).collect(), true)
        .await
        .expect("emit")
        .iter()
        .map(|e| e.id())
        .collect();
    let clock: Arc<dyn Clock> = Arc::new(h.clock().clone());

    let (started, mut starts) = mpsc::unbounded_channel();
    let doomed = Worker::builder(h.store(), Stuck(started))
        .worker_id("doomed")
        .clock(clock.clone())
        .lease(Duration::from_secs(30))
        .delivery_timeout(Duration::from_secs(20))
        .build()
        .expect("worker");
    let task = tokio::spawn(async move { doomed.run_until_idle().await });
    for _ in 0..5 {
        tokio::time::timeout(GUARD, starts.recv())
            .await
            .expect("deliveries started")
            .expect("a delivery");
    }
    task.abort(); // dies mid-delivery: no ack, no release
    let _ = task.await;
    let held = h.store().count_by_status().await.expect("count");
    assert_eq!(held.in_flight, 5);

    let transport = outbox_memory::RecordingTransport::new();
    let rescuer = Worker::builder(h.store(), transport.clone())
        .worker_id("rescuer")
        .clock(clock)
        .build()
        .expect("worker");
    assert_eq!(
        rescuer.run_until_idle().await.expect("run").delivered,
        0,
        "the lease is still live"
    );
    h.clock().advance(Duration::from_secs(30));
    let report = rescuer.run_until_idle().await.expect("run");
    assert_eq!((report.reclaimed, report.delivered), (5, 5));
    for id in ids {
        let e = h.store().fetch(id).await.expect("fetch");
        assert_eq!(
            (e.status(), e.attempts()),
            (Status::Delivered, 2),
            "the crashed attempt counts"
        );
    }
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
        if !locked(&self.in_delivery).insert(key.clone()) {
            self.breaches
                .lock()
                .unwrap()
                .push(format!("{key}: two events in delivery at once"));
        }
        tokio::task::yield_now().await;
        locked(&self.in_delivery).remove(&key);
        let fail = self
            .rng
            .lock()
            .unwrap()
            .get_or_insert_with(|| FastRandom::with_seed(7))
            .next_unit()
            < 0.1;
        if fail {
            *locked(&self.failures) += 1;
            return Err(DeliveryError::retryable("the consumer is busy"));
        }
        let mut last = locked(&self.last);
        let seen = last.entry(key.clone()).or_insert(0);
        if n > *seen + 1 {
            locked(&self.breaches).push(format!(
                "{key}: {n} handed over before {} was delivered",
                *seen + 1
            ));
        }
        *seen = (*seen).max(n);
        Ok(())
    }
}

/// Commits one event on the key it is given, numbered by the key's commit order (a counter row
/// the transaction updates), in a transaction of the backend's.
pub type Produce = Arc<dyn Fn(String) -> BoxFuture<'static, ()> + Send + Sync>;

/// 8 producers commit 20,000 events on 50 shared keys (`produce` numbers each by its key's
/// commit order) while 4 workers on `store` — two leasing, two locking — deliver through a
/// consumer that fails one delivery in ten: each key reaches the consumer in commit order, one
/// event at a time, every event delivered. `committed` reads back each key's last number.
pub async fn producers_and_workers_on_shared_keys_keep_each_keys_commit_order<S, C>(
    store: S,
    produce: Produce,
    committed: C,
) where
    S: OutboxStore + Clone + 'static,
    C: std::future::Future<Output = Vec<(String, u64)>>,
{
    const KEYS: usize = 50;
    const PRODUCERS: usize = 8;
    const PER_PRODUCER: usize = 2_500;
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
            .expect("worker");
        let stop = stop.clone();
        workers.spawn(async move { worker.run(stop).await.expect("worker run") });
    }

    let mut producers = tokio::task::JoinSet::new();
    for p in 0..PRODUCERS {
        let produce = produce.clone();
        producers.spawn(async move {
            let mut rng = FastRandom::with_seed(p as u64);
            for _ in 0..PER_PRODUCER {
                let key = format!("k{}", (rng.next_unit() * KEYS as f64) as usize % KEYS);
                produce(key).await;
            }
        });
    }
    while let Some(done) = producers.join_next().await {
        done.expect("producer");
    }
    // The producers are done; the workers finish what they hold and stop, and one more worker
    // delivers whatever is left (each of its runs ends when a claim finds nothing).
    stop.cancel();
    while let Some(done) = workers.join_next().await {
        done.expect("worker task");
    }
    let total = (PRODUCERS * PER_PRODUCER) as u64;
    let last_worker = Worker::builder(store.clone(), consumer.clone())
        .worker_id("last")
        .batch_size(100)
        .concurrency(16)
        .retry_policy(RetryPolicy::immediate())
        .max_attempts(Some(1_000))
        .build()
        .expect("worker");
    let mut counts = store.count_by_status().await.expect("count");
    for _ in 0..1_000 {
        if counts.delivered == total {
            break;
        }
        last_worker.run_until_idle().await.expect("run");
        counts = store.count_by_status().await.expect("count");
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
    let breaches = locked(&consumer.breaches).clone();
    assert!(
        breaches.is_empty(),
        "{:?}",
        &breaches[..breaches.len().min(5)]
    );
    let last = locked(&consumer.last).clone();
    for (key, n) in committed.await {
        assert_eq!(
            last.get(&key).copied().unwrap_or(0),
            n,
            "{key}: the consumer did not reach the last event"
        );
    }
    assert!(
        *locked(&consumer.failures) > total / 20,
        "the consumer failed too rarely to test retries"
    );
}

/// A batch emit in one unit of work resolves idempotency keys within the batch and against
/// committed events, over more than one insert statement's worth of rows, and keeps keys
/// byte-exact (`"K-NEW"` is not `"k-new"`).
pub async fn batch_emit_resolves_duplicates_within_and_across_batches<H: Harness>(h: &H) {
    let keyed_once = |n: usize, key: &str| {
        NewEvent::builder("order.paid", "order", n.to_string())
            .idempotency_key(key)
            .build()
            .expect("valid event")
    };
    let earlier = h
        .emit(vec![keyed_once(0, "k-old")], true)
        .await
        .expect("emit")[0]
        .id();
    let mut events: Vec<NewEvent> = (1..=1500).map(upload).collect();
    events.push(keyed_once(1501, "k-new"));
    events.push(keyed_once(1502, "k-new")); // same key twice in one batch
    events.push(keyed_once(1503, "k-old")); // key already committed
    events.push(keyed_once(1504, "K-NEW")); // keys are byte-exact, not case-folded
    let emitted = h.emit(events, true).await.expect("emit");
    assert_eq!(emitted.len(), 1504);
    assert!(
        emitted[..1501]
            .iter()
            .all(|e| matches!(e, outbox_core::Emitted::Created(_)))
    );
    assert_eq!(
        emitted[1501],
        outbox_core::Emitted::Duplicate(emitted[1500].id())
    );
    assert_eq!(emitted[1502], outbox_core::Emitted::Duplicate(earlier));
    assert!(matches!(emitted[1503], outbox_core::Emitted::Created(_)));
    assert_eq!(
        h.store().count_by_status().await.expect("count").pending,
        1503
    );
}
