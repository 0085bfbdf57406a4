//! The log-reading relay on a scratch PostgreSQL cluster with `wal_level = logical` (created by
//! each test on a spare port and dropped after; see `outbox_tests::logical`): commit order per
//! key over concurrent producers, no notification from producers, failures handed to the
//! table's path without stopping the stream, a reader killed mid-stream, the database crashed
//! mid-stream, and a slot dropped from under the reader.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use outbox_core::{
    DeliveryError, Emit, EventId, NewEvent, OutboxEvent, OutboxStore, OutboxStoreExt, RetryPolicy,
    Status, Transport,
};
use outbox_postgres::{PgConfig, PgStore};
use outbox_tests::logical::{Cluster, cluster};
use outbox_worker::{Worker, WorkerError, WorkerReport};
use serde_json::json;
use sqlx::postgres::PgPoolOptions;
use tokio_util::sync::CancellationToken;

/// Longest a test waits for something that should take well under a second; a guard.
const GUARD: Duration = Duration::from_secs(60);
const SLOT: &str = "outbox_test";

/// Records what it is given; fails an event whose payload says `"fail": n` its first `n`
/// times, and parks any delivery of an event whose payload says `"stall": true`.
#[derive(Clone, Default)]
struct Recorder {
    delivered: Arc<Mutex<Vec<OutboxEvent>>>,
    failures: Arc<Mutex<HashMap<EventId, u64>>>,
    /// Delivers stalling events at once when set.
    no_stall: bool,
}

impl Recorder {
    fn ids(&self) -> Vec<EventId> {
        self.delivered
            .lock()
            .unwrap()
            .iter()
            .map(|e| e.id)
            .collect()
    }
    fn count(&self) -> usize {
        self.delivered.lock().unwrap().len()
    }
}

#[async_trait]
impl Transport for Recorder {
    async fn deliver(&self, event: &OutboxEvent) -> Result<(), DeliveryError> {
        if event.payload["stall"] == json!(true) && !self.no_stall {
            std::future::pending::<()>().await;
        }
        if let Some(n) = event.payload["fail"].as_u64() {
            let mut failures = self.failures.lock().unwrap();
            let seen = failures.entry(event.id).or_default();
            if *seen < n {
                *seen += 1;
                return Err(DeliveryError::retryable(format!(
                    "refused {} time(s)",
                    *seen
                )));
            }
        }
        self.delivered.lock().unwrap().push(event.clone());
        Ok(())
    }
}

async fn store_on(cluster: &Cluster) -> PgStore {
    let pool = PgPoolOptions::new()
        .max_connections(20)
        .connect(&cluster.url())
        .await
        .unwrap();
    let store = PgStore::new(pool, PgConfig::new()).unwrap();
    store.migrate().await.unwrap();
    store
}

fn stream_worker(store: &PgStore, transport: Recorder) -> Worker<PgStore, Recorder> {
    Worker::builder(store.clone(), transport)
        .batch_size(200)
        .concurrency(8)
        .poll_interval(Duration::from_millis(10))
        .error_backoff(Duration::from_millis(100))
        .retry_policy(RetryPolicy::immediate())
        .build()
        .unwrap()
}

fn spawn_stream(
    store: &PgStore,
    url: &str,
    transport: Recorder,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<Result<WorkerReport, WorkerError>>,
) {
    let cancel = CancellationToken::new();
    let worker = stream_worker(store, transport);
    let source = store.stream(SLOT, url).unwrap();
    let stop = cancel.clone();
    let task = tokio::spawn(async move { worker.stream(source, stop).await });
    (cancel, task)
}

/// Polls until `done` holds (a bounded wait on an outcome, not a pace).
async fn until(what: &str, mut done: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + GUARD;
    while !done() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn event(key: Option<&str>, payload: serde_json::Value) -> NewEvent {
    let mut b = NewEvent::builder("order.changed", "order", key.unwrap_or("none")).payload(payload);
    if let Some(key) = key {
        b = b.ordering_key(key);
    }
    b.build().unwrap()
}

async fn emit(store: &PgStore, events: Vec<NewEvent>) -> Vec<EventId> {
    let mut tx = store.begin().await.unwrap();
    let ids = tx
        .emit_all(events)
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id())
        .collect();
    tx.commit().await.unwrap();
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_producers_events_arrive_in_commit_order_per_key_without_a_notification() {
    let cluster = cluster();
    let store = store_on(&cluster).await;
    let setup = store.start_streaming(SLOT).await.unwrap();
    assert!(setup.created_publication && setup.created_slot && setup.switched);
    let again = store.start_streaming(SLOT).await.unwrap();
    assert_eq!(again, Default::default(), "a second start changes nothing");

    // Producers notify nobody: the trigger is off and `begin` sends nothing after commit.
    let mut listener = sqlx::postgres::PgListener::connect(&cluster.url())
        .await
        .unwrap();
    listener.listen(&store.config().channel()).await.unwrap();

    // Each key's counter row is locked until its producer commits, so the counter's order
    // is the commit order of the key's events.
    sqlx::query("CREATE TABLE counters (key text PRIMARY KEY, n int NOT NULL)")
        .execute(store.pool())
        .await
        .unwrap();
    let keys: Vec<String> = (0..6).map(|k| format!("k{k}")).collect();
    for k in &keys {
        sqlx::query("INSERT INTO counters VALUES ($1, 0)")
            .bind(k)
            .execute(store.pool())
            .await
            .unwrap();
    }
    let transport = Recorder::default();
    let (cancel, task) = spawn_stream(&store, &cluster.url(), transport.clone());
    let mut producers = Vec::new();
    for p in 0..4u64 {
        let store = store.clone();
        let keys = keys.clone();
        producers.push(tokio::spawn(async move {
            for i in 0..50u64 {
                let key = &keys[((p * 7 + i * 5) % keys.len() as u64) as usize];
                let mut tx = store.begin().await.unwrap();
                let n: i32 =
                    sqlx::query_scalar("UPDATE counters SET n = n + 1 WHERE key = $1 RETURNING n")
                        .bind(key)
                        .fetch_one(&mut *tx)
                        .await
                        .unwrap();
                tx.emit(event(Some(key), json!({ "n": n }))).await.unwrap();
                // Unkeyed events in between, and one rolled back now and then.
                tx.emit(event(None, json!({ "p": p, "i": i })))
                    .await
                    .unwrap();
                if i % 10 == 9 {
                    tx.rollback().await.unwrap();
                    sqlx::query("UPDATE counters SET n = n + 1 WHERE key = $1")
                        .bind(key)
                        .execute(store.pool())
                        .await
                        .unwrap();
                } else {
                    tx.commit().await.unwrap();
                }
            }
        }));
    }
    for p in producers {
        p.await.unwrap();
    }
    // 4 × 50 transactions, 20 rolled back, 2 events each.
    until("360 events", || transport.count() >= 360).await;
    cancel.cancel();
    let report = task.await.unwrap().unwrap();
    assert_eq!(transport.count(), 360, "each committed event exactly once");
    assert_eq!(report.delivered, 360);
    assert_eq!((report.retried, report.held), (0, 0));

    let mut per_key: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for e in transport.delivered.lock().unwrap().iter() {
        if let Some(k) = &e.ordering_key {
            per_key
                .entry(k.clone())
                .or_default()
                .push(e.payload["n"].as_i64().unwrap());
        }
    }
    assert_eq!(per_key.len(), keys.len());
    for (key, ns) in &per_key {
        let mut sorted = ns.clone();
        sorted.sort_unstable();
        assert_eq!(ns, &sorted, "key {key} out of commit order");
    }

    // Anything sent on the channel would be read before this query's answer.
    sqlx::query("SELECT 1")
        .execute(&mut listener)
        .await
        .unwrap();
    let heard = listener.next_buffered();
    assert!(heard.is_none(), "a producer sent a notification: {heard:?}");
    // Delivered events without an idempotency key left the table; the slot has confirmed.
    let left: i64 = sqlx::query_scalar("SELECT count(*) FROM outbox_event")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(left, 0);
    let status = store.stream_status(SLOT).await.unwrap();
    assert!(status.exists && status.table_streaming);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_event_goes_to_the_table_and_later_events_of_its_key_wait_behind_it() {
    let cluster = cluster();
    let store = store_on(&cluster).await;
    store.start_streaming(SLOT).await.unwrap();
    let transport = Recorder::default();
    let (cancel, task) = spawn_stream(&store, &cluster.url(), transport.clone());

    let failing = emit(&store, vec![event(Some("a"), json!({ "n": 1, "fail": 1 }))]).await[0];
    let mut later = Vec::new();
    for n in 2..=4 {
        later.extend(emit(&store, vec![event(Some("a"), json!({ "n": n }))]).await);
        emit(&store, vec![event(Some("b"), json!({ "n": n }))]).await;
    }
    // Key b and unkeyed events go on streaming past the failure.
    until("key b", || transport.count() >= 3).await;
    let table_state = async |id| store.fetch(id).await.unwrap();
    let failed = table_state(failing).await;
    assert_eq!(failed.status(), Status::Pending);
    assert_eq!(failed.attempts(), 1);
    assert!(
        failed
            .lifecycle
            .last_error
            .unwrap()
            .contains("refused 1 time")
    );
    for id in &later {
        assert_eq!(
            table_state(*id).await.status(),
            Status::Waiting,
            "key a waits behind its failed event"
        );
    }
    // An event of key a committed now still waits (the key has a head in the table).
    let newest = emit(&store, vec![event(Some("a"), json!({ "n": 5 }))]).await[0];
    emit(&store, vec![event(None, json!({ "marker": true }))]).await;
    until("the marker", || transport.count() >= 4).await;
    assert_eq!(table_state(newest).await.status(), Status::Waiting);
    cancel.cancel();
    let report = task.await.unwrap().unwrap();
    assert_eq!((report.retried, report.held), (1, 4));

    // The ordinary worker delivers key a from the table, in order.
    let worker = stream_worker(&store, transport.clone());
    worker.run_until_idle().await.unwrap();
    let a: Vec<i64> = transport
        .delivered
        .lock()
        .unwrap()
        .iter()
        .filter(|e| e.ordering_key.as_deref() == Some("a"))
        .map(|e| e.payload["n"].as_i64().unwrap())
        .collect();
    assert_eq!(a, vec![1, 2, 3, 4, 5]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_killed_mid_stream_resumes_from_the_confirmed_position() {
    let cluster = cluster();
    let store = store_on(&cluster).await;
    store.start_streaming(SLOT).await.unwrap();
    let first = Recorder::default();
    let (_cancel, task) = spawn_stream(&store, &cluster.url(), first.clone());
    let early: Vec<EventId> = emit(
        &store,
        (0..50).map(|n| event(None, json!({ "n": n }))).collect(),
    )
    .await;
    until("the first 50", || first.count() == 50).await;
    // The reader reports what it settled to the server asynchronously (within a second):
    // wait until the server has the first 50 confirmed.
    let after_early: String = sqlx::query_scalar("SELECT pg_current_wal_lsn()::text")
        .fetch_one(store.pool())
        .await
        .unwrap();
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        let confirmed: bool = sqlx::query_scalar(
            "SELECT confirmed_flush_lsn >= $1::pg_lsn FROM pg_replication_slots WHERE slot_name = $2",
        )
        .bind(&after_early)
        .bind(SLOT)
        .fetch_one(store.pool())
        .await
        .unwrap();
        if confirmed {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the first 50 were never confirmed"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // A batch that never finishes delivering: the reader is killed inside it.
    let stalled = emit(
        &store,
        vec![
            event(None, json!({ "n": 50 })),
            event(None, json!({ "stall": true })),
        ],
    )
    .await;
    until("the delivery before the stall", || first.count() == 51).await;
    task.abort();
    let _ = task.await;
    // Committed while no reader runs.
    let late: Vec<EventId> = emit(
        &store,
        (0..50)
            .map(|n| event(None, json!({ "n": 100 + n })))
            .collect(),
    )
    .await;

    let second = Recorder {
        no_stall: true,
        ..Recorder::default()
    };
    let (cancel, task) = spawn_stream(&store, &cluster.url(), second.clone());
    until("everything after the kill", || second.count() >= 52).await;
    cancel.cancel();
    task.await.unwrap().unwrap();
    let again: HashSet<EventId> = second.ids().into_iter().collect();
    // Nothing confirmed was read again; the unconfirmed batch was, whole.
    assert!(early.iter().all(|id| !again.contains(id)));
    assert!(stalled.iter().all(|id| again.contains(id)));
    assert!(late.iter().all(|id| again.contains(id)));
    assert_eq!(second.count(), 52);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_crashing_mid_stream_loses_nothing() {
    let cluster = cluster();
    let store = store_on(&cluster).await;
    store.start_streaming(SLOT).await.unwrap();
    let transport = Recorder::default();
    let (cancel, task) = spawn_stream(&store, &cluster.url(), transport.clone());
    let mut emitted = Vec::new();
    for chunk in 0..10 {
        emitted.extend(
            emit(
                &store,
                (0..50)
                    .map(|n| event(Some(&format!("k{}", n % 5)), json!({ "n": chunk * 50 + n })))
                    .collect(),
            )
            .await,
        );
    }
    until("some deliveries", || transport.count() > 0).await;
    cluster.crash().unwrap();
    cluster.restart().unwrap();
    for chunk in 10..20 {
        let events: Vec<NewEvent> = (0..50)
            .map(|n| event(Some(&format!("k{}", n % 5)), json!({ "n": chunk * 50 + n })))
            .collect();
        // The pool's connections died with the server: retry until it answers again.
        let deadline = tokio::time::Instant::now() + GUARD;
        loop {
            let attempt = async {
                let mut tx = store.begin().await?;
                let ids = tx.emit_all(events.clone()).await?;
                tx.commit().await?;
                Ok::<_, outbox_core::StoreError>(ids)
            };
            match attempt.await {
                Ok(ids) => {
                    emitted.extend(ids.into_iter().map(|e| e.id()));
                    break;
                }
                Err(e) => {
                    assert!(tokio::time::Instant::now() < deadline, "{e}");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }
    let want: HashSet<EventId> = emitted.iter().copied().collect();
    until("every event", || {
        let got: HashSet<EventId> = transport.ids().into_iter().collect();
        want.is_subset(&got)
    })
    .await;
    cancel.cancel();
    task.await.unwrap().unwrap();
    // Per key, the first delivery of each event is in emit order.
    let mut seen = HashSet::new();
    let mut per_key: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for e in transport.delivered.lock().unwrap().iter() {
        if seen.insert(e.id) {
            per_key
                .entry(e.ordering_key.clone().unwrap())
                .or_default()
                .push(e.payload["n"].as_i64().unwrap());
        }
    }
    for (key, ns) in per_key {
        let mut sorted = ns.clone();
        sorted.sort_unstable();
        assert_eq!(ns, sorted, "key {key}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slot_dropped_from_under_the_reader_fails_clearly_and_migrate_recovers() {
    let cluster = cluster();
    let store = store_on(&cluster).await;
    store.start_streaming(SLOT).await.unwrap();
    let transport = Recorder::default();
    let (_cancel, task) = spawn_stream(&store, &cluster.url(), transport.clone());
    emit(&store, vec![event(None, json!({ "n": 0 }))]).await;
    until("the first event", || transport.count() == 1).await;
    // The reader's replication connection holds the slot: end it, and drop the slot before
    // the reader is back (it reconnects after its error backoff).
    let deadline = tokio::time::Instant::now() + GUARD;
    loop {
        sqlx::query(
            "SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots \
             WHERE slot_name = $1 AND active_pid IS NOT NULL",
        )
        .bind(SLOT)
        .execute(store.pool())
        .await
        .unwrap();
        match sqlx::query("SELECT pg_drop_replication_slot($1)")
            .bind(SLOT)
            .execute(store.pool())
            .await
        {
            Ok(_) => break,
            Err(e) => assert!(tokio::time::Instant::now() < deadline, "{e}"),
        }
    }
    let lost = emit(
        &store,
        (1..=3).map(|n| event(None, json!({ "n": n }))).collect(),
    )
    .await;
    let error = tokio::time::timeout(GUARD, task)
        .await
        .unwrap()
        .unwrap()
        .expect_err("the reader stops");
    let message = error.to_string();
    assert!(
        message.contains(SLOT) && message.contains("outbox migrate"),
        "{message}"
    );

    // Setting up again creates the slot and hands what it had not confirmed to the table.
    let setup = store.start_streaming(SLOT).await.unwrap();
    assert!(setup.created_slot && !setup.switched);
    assert_eq!(setup.handed_back, 3);
    stream_worker(&store, transport.clone())
        .run_until_idle()
        .await
        .unwrap();
    let got: HashSet<EventId> = transport.ids().into_iter().collect();
    assert!(lost.iter().all(|id| got.contains(id)));
}

/// A reader stopped (not killed) leaves the slot confirmed up to what it delivered: the next
/// one repeats nothing, however soon it starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_stopped_gracefully_hands_over_without_repeats() {
    let cluster = cluster();
    let store = store_on(&cluster).await;
    store.start_streaming(SLOT).await.unwrap();
    let first = Recorder::default();
    let (cancel, task) = spawn_stream(&store, &cluster.url(), first.clone());
    for chunk in 0..20 {
        emit(
            &store,
            (0..50)
                .map(|n| event(None, json!({ "n": chunk * 50 + n })))
                .collect(),
        )
        .await;
    }
    until("the first reader's 1,000", || first.count() == 1000).await;
    cancel.cancel();
    task.await.unwrap().unwrap();
    let second = Recorder::default();
    let (cancel, task) = spawn_stream(&store, &cluster.url(), second.clone());
    let last = emit(&store, vec![event(None, json!({ "n": "after" }))]).await;
    until("the event after the hand-over", || second.count() >= 1).await;
    cancel.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(
        second.ids(),
        last,
        "nothing delivered before the stop came again"
    );
}

/// An event with an idempotency key is kept, delivered, once streamed: the key goes on
/// refusing duplicates; the events without one leave the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_idempotency_key_goes_on_refusing_duplicates() {
    let cluster = cluster();
    let store = store_on(&cluster).await;
    store.start_streaming(SLOT).await.unwrap();
    let transport = Recorder::default();
    let (cancel, task) = spawn_stream(&store, &cluster.url(), transport.clone());
    let keyed = || {
        NewEvent::builder("order.paid", "order", "7")
            .idempotency_key("order-7-paid")
            .build()
            .unwrap()
    };
    let first = emit(&store, vec![keyed(), event(None, json!({ "n": 1 }))]).await;
    until("both events", || transport.count() == 2).await;
    cancel.cancel();
    task.await.unwrap().unwrap();
    assert_eq!(
        store.fetch(first[0]).await.unwrap().status(),
        Status::Delivered
    );
    assert!(
        store.get(first[1]).await.unwrap().is_none(),
        "the unkeyed one is gone"
    );
    let mut tx = store.begin().await.unwrap();
    let again = tx.emit(keyed()).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(again, outbox_core::Emitted::Duplicate(first[0]));
}

/// Many small transactions committed while the reader runs, as a service's requests would:
/// each arrives, none is left behind in a half-read batch.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_steady_trickle_of_small_transactions_arrives_whole() {
    let cluster = cluster();
    let store = store_on(&cluster).await;
    store.start_streaming(SLOT).await.unwrap();
    let transport = Recorder::default();
    let (cancel, task) = spawn_stream(&store, &cluster.url(), transport.clone());
    // One transaction per event, each on a task of its own, a thousand a second.
    let mut producers = tokio::task::JoinSet::new();
    let mut ticker = tokio::time::interval(Duration::from_millis(1));
    for n in 0..2000 {
        ticker.tick().await;
        let store = store.clone();
        producers.spawn(async move { emit(&store, vec![event(None, json!({ "n": n }))]).await });
    }
    let mut want = HashSet::new();
    while let Some(ids) = producers.join_next().await {
        want.extend(ids.unwrap());
    }
    let arrived = tokio::time::timeout(GUARD, async {
        loop {
            let got: HashSet<EventId> = transport.ids().into_iter().collect();
            if want.is_subset(&got) {
                return;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    cancel.cancel();
    let report = task.await.unwrap().unwrap();
    let got: HashSet<EventId> = transport.ids().into_iter().collect();
    let missing: Vec<&EventId> = want.difference(&got).collect();
    assert!(
        arrived.is_ok(),
        "{} missing, e.g. {:?}; {report:?}",
        missing.len(),
        missing.first()
    );
    assert_eq!(report.held + report.retried, 0);
}

#[tokio::test]
async fn a_server_without_logical_wal_is_refused_naming_the_setting() {
    use outbox_tests::conformance::Harness;
    let h = outbox_tests::harness::PgHarness::new().await;
    let error = h.store().start_streaming(SLOT).await.unwrap_err();
    let message = error.to_string();
    assert!(message.contains("wal_level = logical"), "{message}");
    h.cleanup().await;
}

/// A stream reader delivering to `transport` with `concurrency` deliveries at once.
fn stream_at<T: Transport + 'static>(
    store: &PgStore,
    url: &str,
    transport: T,
    concurrency: usize,
) -> (
    CancellationToken,
    tokio::task::JoinHandle<Result<WorkerReport, WorkerError>>,
) {
    let worker = Worker::builder(store.clone(), transport)
        .batch_size(200)
        .concurrency(concurrency)
        .poll_interval(Duration::from_millis(10))
        .build()
        .unwrap();
    let cancel = CancellationToken::new();
    let source = store.stream(SLOT, url).unwrap();
    let stop = cancel.clone();
    (
        cancel,
        tokio::spawn(async move { worker.stream(source, stop).await }),
    )
}

/// Counts deliveries in flight; the first `gate` deliveries wait for one another at a barrier.
struct Gate {
    barrier: tokio::sync::Barrier,
    gate: usize,
    started: std::sync::atomic::AtomicUsize,
    in_flight: std::sync::atomic::AtomicUsize,
    most: std::sync::atomic::AtomicUsize,
    keyed: Mutex<Vec<u64>>,
    delivered: std::sync::atomic::AtomicUsize,
}

#[async_trait]
impl Transport for Gate {
    async fn deliver(&self, event: &OutboxEvent) -> Result<(), DeliveryError> {
        use std::sync::atomic::Ordering::SeqCst;
        let now = self.in_flight.fetch_add(1, SeqCst) + 1;
        self.most.fetch_max(now, SeqCst);
        if self.started.fetch_add(1, SeqCst) < self.gate {
            self.barrier.wait().await;
        }
        if let Some(n) = event.payload["n"]
            .as_u64()
            .filter(|_| event.ordering_key.is_some())
        {
            self.keyed.lock().unwrap().push(n);
        }
        self.delivered.fetch_add(1, SeqCst);
        self.in_flight.fetch_sub(1, SeqCst);
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stream_deliveries_run_at_the_workers_concurrency_and_never_beyond() {
    use std::sync::atomic::Ordering::SeqCst;
    let cluster = cluster();
    let store = store_on(&cluster).await;
    store.start_streaming(SLOT).await.unwrap();
    // One transaction, so one batch: 100 events without a key, 10 of key `k` among them.
    let events = (0..110)
        .map(|n| {
            let key = (n % 11 == 0).then_some("k");
            event(key, json!({ "n": n }))
        })
        .collect();
    emit(&store, events).await;
    // The first 8 deliveries pass only once 8 are in flight together.
    let gate = Arc::new(Gate {
        barrier: tokio::sync::Barrier::new(8),
        gate: 8,
        started: Default::default(),
        in_flight: Default::default(),
        most: Default::default(),
        keyed: Mutex::default(),
        delivered: Default::default(),
    });
    let (cancel, task) = stream_at(&store, &cluster.url(), Arc::clone(&gate), 8);
    let delivered = tokio::time::timeout(GUARD, async {
        while gate.delivered.load(SeqCst) < 110 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    cancel.cancel();
    let report = task.await.unwrap().unwrap();
    assert!(
        delivered.is_ok(),
        "{} of 110 delivered (fewer than 8 deliveries at once would hold the first 8 at the \
         barrier); {report:?}",
        gate.delivered.load(SeqCst)
    );
    assert_eq!(
        gate.most.load(SeqCst),
        8,
        "at most the worker's concurrency at once"
    );
    let keyed = gate.keyed.lock().unwrap().clone();
    assert_eq!(
        keyed,
        (0..110).filter(|n| n % 11 == 0).collect::<Vec<u64>>()
    );
    assert_eq!(report.delivered, 110);
}

/// Panics on an event whose payload says `"panic": true` (counting its panics); records the
/// rest.
#[derive(Clone, Default)]
struct Panicky {
    delivered: Arc<Mutex<Vec<u64>>>,
    panics: Arc<std::sync::atomic::AtomicUsize>,
}

#[async_trait]
impl Transport for Panicky {
    async fn deliver(&self, event: &OutboxEvent) -> Result<(), DeliveryError> {
        if event.payload["panic"] == json!(true) {
            self.panics
                .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            panic!("a transport bug");
        }
        if let Some(n) = event.payload["n"].as_u64() {
            self.delivered.lock().unwrap().push(n);
        }
        Ok(())
    }
}

/// A transport that panics takes down only what it had not delivered: the events delivered
/// before the panic are settled as delivered (their rows gone, never handed back), the rest go
/// to the table's path, where the ordinary workers deliver them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_transport_hands_back_only_what_it_had_not_delivered() {
    let cluster = cluster();
    let store = store_on(&cluster).await;
    store.start_streaming(SLOT).await.unwrap();
    let events = (0..5u64)
        .map(|n| event(None, json!({ "n": n, "panic": n == 2 })))
        .collect();
    let ids = emit(&store, events).await;
    let transport = Panicky::default();
    // One delivery at a time, in commit order: 0 and 1 are delivered before 2 panics.
    let (cancel, task) = stream_at(&store, &cluster.url(), transport.clone(), 1);
    until("the transport to panic", || {
        transport.panics.load(std::sync::atomic::Ordering::SeqCst) > 0
    })
    .await;
    // The batch is settled before the reader stops: handed back, confirmed, rows deleted.
    cancel.cancel();
    let report = task.await.unwrap().unwrap();
    assert_eq!(*transport.delivered.lock().unwrap(), vec![0, 1]);
    assert_eq!((report.delivered, report.held), (2, 3), "{report:?}");
    for id in &ids[..2] {
        assert!(
            store.get(*id).await.unwrap().is_none(),
            "a delivered event was handed back"
        );
    }
    for id in &ids[2..] {
        let event = store.get(*id).await.unwrap().expect("handed to the table");
        assert_eq!(event.lifecycle.status, Status::Pending);
        assert_eq!(event.attempts(), 0, "handed back untried");
    }
}
