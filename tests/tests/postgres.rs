//! PostgreSQL-specific behaviour: transactions, batch emit, idempotency races, many workers,
//! crashed workers, LISTEN/NOTIFY, bad input and lost connections. Each test owns a schema.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use outbox_core::{
    Clock, DeliveryError, Emit, Emitted, EventFilter, NewEvent, OutboxEvent, OutboxStore,
    OutboxStoreExt, StoreError, SystemClock, Transport,
};
use outbox_postgres::{PgConfig, PgStore};
use outbox_tests::concurrency;
use outbox_tests::conformance::{self, Harness, NowUtc};
use outbox_tests::harness::{
    PgHarness, a_locked_batch_cut_mid_delivery, database_url, pool, pool_with,
    the_database_ends_a_quiet_locked_claim, wait_for_lock_wait,
};
use outbox_worker::{ClaimMode, Worker};
use serde_json::json;
use tokio::sync::mpsc;

/// Longest a test waits for something that should take milliseconds; a guard, not a pace.
const GUARD: Duration = Duration::from_secs(30);

fn upload(n: usize) -> NewEvent {
    NewEvent::builder("file.stored", "upload", n.to_string())
        .payload(json!({ "n": n }))
        .build()
        .unwrap()
}

async fn business_table(h: &PgHarness) -> String {
    let table = format!("{}.uploads", h.schema());
    let ddl = format!("CREATE TABLE {table} (id bigint PRIMARY KEY, name text NOT NULL)");
    sqlx::raw_sql(sqlx::AssertSqlSafe(ddl))
        .execute(h.store().pool())
        .await
        .unwrap();
    table
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn business_row_and_event_commit_or_roll_back_together() {
    let h = PgHarness::new().await;
    let store = h.store();
    let table = business_table(&h).await;
    let insert = format!("INSERT INTO {table} (id, name) VALUES ($1, $2)");

    // Rolled back: neither the row nor the event.
    let mut tx = store.pool().begin().await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(insert.clone()))
        .bind(1_i64)
        .bind("a.png")
        .execute(&mut *tx)
        .await
        .unwrap();
    let lost = store.emitter(&mut tx).emit(upload(1)).await.unwrap().id();
    tx.rollback().await.unwrap();
    assert!(store.get(lost).await.unwrap().is_none());

    // Committed: both, and the event is claimable.
    let mut tx = store.pool().begin().await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(insert))
        .bind(2_i64)
        .bind("b.png")
        .execute(&mut *tx)
        .await
        .unwrap();
    let kept = store.emitter(&mut tx).emit(upload(2)).await.unwrap().id();
    // Not visible to a worker before the commit.
    let (_, seen) = store
        .claim_for("w", 10, Duration::from_secs(30), h.clock().now_utc())
        .await
        .unwrap();
    assert!(seen.is_empty(), "an uncommitted event was claimed");
    tx.commit().await.unwrap();

    let rows: i64 =
        sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {table}")))
            .fetch_one(store.pool())
            .await
            .unwrap();
    assert_eq!(rows, 1);
    assert_eq!(store.count_by_status().await.unwrap().total(), 1);
    let (_, claimed) = store
        .claim_for("w", 10, Duration::from_secs(30), h.clock().now_utc())
        .await
        .unwrap();
    assert_eq!(claimed.iter().map(|e| e.id).collect::<Vec<_>>(), vec![kept]);
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_emit_writes_many_in_one_statement_with_duplicates_resolved() {
    let h = PgHarness::new().await;
    let store = h.store();
    let keyed = |n: usize, key: &str| {
        NewEvent::builder("order.paid", "order", n.to_string())
            .idempotency_key(key)
            .build()
            .unwrap()
    };
    let earlier = h.emit(vec![keyed(0, "k-old")], true).await.unwrap()[0].id();

    let mut events: Vec<NewEvent> = (1..=500).map(upload).collect();
    events.push(keyed(501, "k-new"));
    events.push(keyed(502, "k-new")); // same key twice in one batch
    events.push(keyed(503, "k-old")); // key already committed
    let emitted = h.emit(events, true).await.unwrap();
    assert_eq!(emitted.len(), 503);
    assert!(
        emitted[..501]
            .iter()
            .all(|e| matches!(e, Emitted::Created(_)))
    );
    assert_eq!(emitted[501], Emitted::Duplicate(emitted[500].id()));
    assert_eq!(emitted[502], Emitted::Duplicate(earlier));

    let counts = store.count_by_status().await.unwrap();
    assert_eq!(counts.pending, 502);
    let stored = store.fetch(emitted[499].id()).await.unwrap();
    assert_eq!(
        (stored.aggregate_id.as_str(), &stored.payload),
        ("500", &json!({ "n": 500 }))
    );
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_transactions_on_one_idempotency_key_store_one_event() {
    let h = PgHarness::new().await;
    let store = h.store();
    let keyed = |n: usize| {
        NewEvent::builder("file.stored", "upload", n.to_string())
            .idempotency_key("same")
            .build()
    };

    // The first transaction holds the key uncommitted; the second blocks on the unique index
    // until the first commits, then learns the committed event's id.
    let mut first = store.begin().await.unwrap();
    let first_id = first.emit(keyed(1).unwrap()).await.unwrap();
    let second = tokio::spawn({
        let store = store.clone();
        async move {
            let mut tx = store.begin().await.unwrap();
            let answer = tx.emit(keyed(2).unwrap()).await.unwrap();
            tx.commit().await.unwrap();
            answer
        }
    });
    // Let the second transaction reach the index and wait there.
    wait_for_lock_wait(&h).await;
    first.commit().await.unwrap();
    let second_id = tokio::time::timeout(GUARD, second).await.unwrap().unwrap();
    assert_eq!(first_id, Emitted::Created(first_id.id()));
    assert_eq!(second_id, Emitted::Duplicate(first_id.id()));
    assert_eq!(store.count_by_status().await.unwrap().total(), 1);

    // If the holder rolls back instead, the waiting transaction stores its own event.
    let mut holder = store.begin().await.unwrap();
    let keyed2 = |n: usize| {
        NewEvent::builder("file.stored", "upload", n.to_string())
            .idempotency_key("other")
            .build()
    };
    holder.emit(keyed2(3).unwrap()).await.unwrap();
    let waiter = tokio::spawn({
        let store = store.clone();
        async move {
            let mut tx = store.begin().await.unwrap();
            let answer = tx.emit(keyed2(4).unwrap()).await.unwrap();
            tx.commit().await.unwrap();
            answer
        }
    });
    wait_for_lock_wait(&h).await;
    holder.rollback().await.unwrap();
    let answer = tokio::time::timeout(GUARD, waiter).await.unwrap().unwrap();
    assert!(matches!(answer, Emitted::Created(_)));
    let kept = store.fetch(answer.id()).await.unwrap();
    assert_eq!(kept.aggregate_id, "4");
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_workers_drain_ten_thousand_events_without_overlap() {
    let h = PgHarness::with_pool_size(10).await;
    let store = h.store().with_clock(Arc::new(SystemClock));
    concurrency::four_workers_drain(&h, store, ClaimMode::Lease).await;
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_locked_workers_drain_ten_thousand_events_without_overlap() {
    let h = PgHarness::with_pool_size(10).await;
    let store = h.store().with_clock(Arc::new(SystemClock));
    concurrency::four_workers_drain(&h, store, ClaimMode::Locked).await;
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_workers_events_are_delivered_after_its_lease_expires() {
    let h = PgHarness::new().await;
    concurrency::a_crashed_workers_events_are_delivered_after_its_lease_expires(&h).await;
    h.cleanup().await;
}

/// Forwards each delivered event to a channel.
struct Signal(mpsc::UnboundedSender<OutboxEvent>);

#[async_trait]
impl Transport for Signal {
    async fn deliver(&self, event: &OutboxEvent) -> Result<(), DeliveryError> {
        let _ = self.0.send(event.clone());
        Ok(())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listen_notify_wakes_an_idle_worker_promptly() {
    let h = PgHarness::new().await;
    let store = h.store().with_clock(Arc::new(SystemClock));
    let (tx, mut delivered) = mpsc::unbounded_channel();
    let worker = Worker::builder(store.clone(), Signal(tx))
        .poll_interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    let running = worker.spawn();
    for round in 0..3 {
        let mut txn = store.begin().await.unwrap();
        txn.emit_all((0..3).map(|i| upload(round * 10 + i)).collect())
            .await
            .unwrap();
        txn.commit().await.unwrap();
        let committed = SystemClock.now();
        for _ in 0..3 {
            tokio::time::timeout(GUARD, delivered.recv())
                .await
                .expect("not woken by the commit")
                .unwrap();
        }
        let waited = SystemClock.now() - committed;
        assert!(
            waited < chrono::TimeDelta::seconds(5),
            "round {round}: {waited} after commit, poll is 1 h"
        );
    }
    assert_eq!(running.shutdown().await.unwrap().delivered, 9);
    h.cleanup().await;
}

/// The payload of the next notification (bounded wait).
async fn next_payload(listener: &mut sqlx::postgres::PgListener) -> String {
    tokio::time::timeout(GUARD, listener.recv())
        .await
        .expect("no wake-up")
        .unwrap()
        .payload()
        .to_owned()
}

/// A transaction the store began does not notify from inside itself (which would serialise
/// its commit with every other notifying transaction's): the table's trigger stays quiet and
/// the wake-up comes after the commit, payload `commit`. A transaction of the application's own
/// (`PgStore::emitter`) keeps the trigger's wake-up, payload empty.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_transactions_wake_the_workers_after_commit() {
    let h = PgHarness::new().await;
    let store = h.store();
    // A pool of its own: the listener keeps its connection.
    let listening = pool(&format!("{}_listen", h.schema()), 1).await;
    let mut listener = sqlx::postgres::PgListener::connect_with(&listening)
        .await
        .unwrap();
    listener.listen(&store.config().channel()).await.unwrap();
    let mut tx = store.begin().await.unwrap();
    tx.emit(upload(1)).await.unwrap();
    tx.commit().await.unwrap();
    // Notifications arrive in commit order: a trigger's NOTIFY would come first.
    assert_eq!(next_payload(&mut listener).await, "commit");

    let mut own = store.pool().begin().await.unwrap();
    store.emitter(&mut own).emit(upload(2)).await.unwrap();
    own.commit().await.unwrap();
    assert_eq!(next_payload(&mut listener).await, "");
    h.cleanup().await;
}

/// A transaction the store began does not even call the trigger's function (its WHEN condition
/// reads the setting), while one of the application's own does: counted by PostgreSQL's
/// per-transaction function statistics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn store_transactions_do_not_call_the_trigger_function() {
    let h = PgHarness::new().await;
    let store = h.store();
    let function = format!("{}_notify", store.config().table());
    let calls = async |conn: &mut sqlx::PgConnection| -> i64 {
        sqlx::query_scalar(
            "SELECT COALESCE(sum(calls), 0)::bigint FROM pg_stat_xact_user_functions \
             WHERE schemaname = $1 AND funcname = $2",
        )
        .bind(h.schema())
        .bind(&function)
        .fetch_one(conn)
        .await
        .unwrap()
    };
    let mut tx = store.begin().await.unwrap();
    sqlx::query("SET LOCAL track_functions = 'pl'")
        .execute(&mut *tx)
        .await
        .unwrap();
    tx.emit(upload(1)).await.unwrap();
    assert_eq!(calls(&mut tx).await, 0, "the store's own transaction");
    tx.rollback().await.unwrap();

    let mut own = store.pool().begin().await.unwrap();
    sqlx::query("SET LOCAL track_functions = 'pl'")
        .execute(&mut *own)
        .await
        .unwrap();
    store.emitter(&mut own).emit(upload(2)).await.unwrap();
    assert_eq!(
        calls(&mut own).await,
        1,
        "the application's own transaction"
    );
    own.rollback().await.unwrap();
    h.cleanup().await;
}

/// A store with a pool of its own (named `<schema>_<role>`, to find its listener in
/// `pg_stat_activity`), and a listener of the test's on its channel.
struct Watched {
    store: PgStore,
    name: String,
    channel: String,
    listener: sqlx::postgres::PgListener,
    admin: sqlx::PgPool,
}

impl Watched {
    async fn new(h: &PgHarness, role: &str) -> Self {
        let name = format!("{}_{role}", h.schema());
        let store = PgStore::new(
            pool(&name, 2).await,
            PgConfig::new().with_schema(h.schema()),
        )
        .unwrap();
        let channel = store.config().channel();
        let listening = pool(&format!("{}_listen", h.schema()), 1).await;
        let mut listener = sqlx::postgres::PgListener::connect_with(&listening)
            .await
            .unwrap();
        listener.listen(&channel).await.unwrap();
        let admin = pool("admin", 1).await;
        Self {
            store,
            name,
            channel,
            listener,
            admin,
        }
    }

    /// Sends `payload` on the channel, as a worker's announcement or a marker.
    async fn send(&self, payload: &str) {
        sqlx::query("SELECT pg_notify($1, $2)")
            .bind(&self.channel)
            .bind(payload)
            .execute(&self.admin)
            .await
            .unwrap();
    }

    /// The payload of the next notification on the channel.
    async fn next(&mut self) -> String {
        next_payload(&mut self.listener).await
    }

    /// Commits one event through the store.
    async fn commit(&self, n: usize) {
        let mut tx = self.store.begin().await.unwrap();
        tx.emit(upload(n)).await.unwrap();
        tx.commit().await.unwrap();
    }

    /// Waits until the store's own listener has sent its `LISTEN`.
    async fn until_listening(&self) {
        tokio::time::timeout(GUARD, async {
            loop {
                let n: i64 = sqlx::query_scalar(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND query LIKE 'LISTEN%'",
                )
                .bind(&self.name)
                .fetch_one(&self.admin)
                .await
                .unwrap();
                if n > 0 {
                    break;
                }
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the store's listener never connected");
    }
}

/// Producers wake the workers only while one has said it is idle. Commits made while none has
/// (the workers are busy, or absent) send no wake-up; a worker announcing itself idle after such
/// commits is answered at once, since it may have looked before them; an idle worker is woken
/// by the next commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producers_wake_the_workers_only_when_one_is_idle() {
    let h = PgHarness::new().await;
    let mut w = Watched::new(&h, "producer").await;
    // The first transaction starts the store's listener; wait until it listens.
    w.commit(0).await;
    w.until_listening().await;
    // A fresh connection may have missed announcements: the next commit wakes; then no worker
    // said it is idle, so the next hundred are silent.
    for n in 1..=100 {
        w.commit(n).await;
    }
    w.send("idle").await;
    let mut wakes_before = 0;
    loop {
        match w.next().await.as_str() {
            "commit" => wakes_before += 1,
            "idle" => break,
            other => panic!("unexpected payload {other:?}"),
        }
    }
    assert!(
        (1..=2).contains(&wakes_before),
        "{wakes_before} wake-ups for 101 commits with no idle worker"
    );
    assert_eq!(
        w.next().await,
        "commit",
        "an idle worker hears of the commits it may have missed"
    );
    // Announced idle with nothing unseen: the next commit wakes it, and nothing else does.
    w.send("idle").await;
    w.commit(101).await;
    assert_eq!(w.next().await, "idle");
    assert_eq!(w.next().await, "commit");
    w.send("end").await;
    assert_eq!(w.next().await, "end", "one wake-up only");
    w.admin.close().await;
    h.cleanup().await;
}

/// A commit that was to wake an idle worker from inside, and failed, leaves the worker to the
/// next commit: the failed transaction's `NOTIFY` is discarded with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_commit_leaves_the_idle_worker_to_the_next_one() {
    let h = PgHarness::new().await;
    let mut w = Watched::new(&h, "failing").await;
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE \"{}\".once (k int UNIQUE DEFERRABLE INITIALLY DEFERRED)",
        h.schema()
    )))
    .execute(w.store.pool())
    .await
    .unwrap();
    // Start the store's listener (as a worker does) and wait until it listens: a fresh
    // connection counts as an idle worker, so the next commit is to wake it from inside.
    let _wakeups = outbox_core::OutboxStore::wakeups(&w.store);
    w.until_listening().await;

    // A transaction whose commit fails (a deferred unique constraint).
    let mut failing = w.store.begin().await.unwrap();
    for _ in 0..2 {
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "INSERT INTO \"{}\".once VALUES (1)",
            h.schema()
        )))
        .execute(&mut *failing)
        .await
        .unwrap();
    }
    failing.emit(upload(1)).await.unwrap();
    assert!(failing.commit().await.is_err());
    // The next commit wakes the worker, which is still waiting.
    w.commit(2).await;
    w.send("m2").await;
    assert_eq!(w.next().await, "commit");
    assert_eq!(w.next().await, "m2");
    w.admin.close().await;
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_before_anything_is_written() {
    let h = PgHarness::new().await;
    let store = h.store();
    // NUL characters, which PostgreSQL refuses in text and JSONB, caught first.
    let nul_payload = NewEvent::builder("a.b", "t", "1")
        .payload(json!({ "x": "a\u{0}b" }))
        .build();
    assert_eq!(nul_payload.unwrap_err().field(), "payload");
    let limited = PgStore::new(
        store.pool().clone(),
        PgConfig::new()
            .with_schema(h.schema())
            .with_max_payload_bytes(64),
    )
    .unwrap();
    conformance::bad_input_is_refused_before_anything_is_written(&h, &limited).await;
    // Identifiers are validated, never spliced as given.
    for (schema, table) in [
        ("public", "outbox; drop table x"),
        ("Public", "t"),
        ("public", "\"t\""),
    ] {
        let config = PgConfig::new().with_schema(schema).with_table(table);
        assert!(
            PgStore::new(store.pool().clone(), config).is_err(),
            "{schema}.{table} accepted"
        );
    }
    h.cleanup().await;
}

/// A store on a pool of `connections` of its own, not tested before use (so a dropped
/// connection surfaces to the caller), named `<schema>_<suffix>` for `terminate`.
async fn fragile_store(h: &PgHarness, suffix: &str, connections: u32) -> (PgStore, String) {
    let name = format!("{}_{suffix}", h.schema());
    let options = sqlx::postgres::PgPoolOptions::new()
        .max_connections(connections)
        .test_before_acquire(false);
    let store = PgStore::new(
        pool_with(&name, options).await,
        PgConfig::new().with_schema(h.schema()),
    )
    .unwrap();
    (store, name)
}

/// Cuts every connection named `name`, and waits (up to 10 s) until their backends are gone:
/// without the timeout `pg_terminate_backend` only signals a backend, which may still answer a
/// quick next statement.
async fn terminate(admin: &sqlx::PgPool, name: &str) {
    sqlx::query(
        "SELECT pg_terminate_backend(pid, 10000) FROM pg_stat_activity WHERE application_name = $1",
    )
    .bind(name)
    .execute(admin)
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_is_retryable_and_the_worker_carries_on() {
    let h = PgHarness::new().await;
    // One connection, not tested before use, so a dropped connection surfaces to the caller.
    let (fragile, name) = fragile_store(&h, "fragile", 1).await;
    let admin = pool("admin", 1).await;
    // The connection is cut once it is back in the pool: cut while the pool still checks it
    // in, it would be replaced, and the next call would not see the loss.
    let kill = || async {
        let idle = async {
            while fragile.pool().num_idle() < 1 {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        tokio::time::timeout(GUARD, idle)
            .await
            .expect("the connection never came back to the pool");
        terminate(&admin, &name).await;
    };

    fragile.count_by_status().await.unwrap(); // the one connection is open
    kill().await;
    let error = fragile
        .claim_for("w", 10, Duration::from_secs(30), SystemClock.now())
        .await
        .unwrap_err();
    assert!(
        error.is_retryable(),
        "a dropped connection must be retryable: {error:?}"
    );
    assert_eq!(
        fragile.count_by_status().await.unwrap().total(),
        0,
        "the next call reconnects"
    );

    // A worker on that store keeps going across repeated connection losses.
    let (tx, mut delivered) = mpsc::unbounded_channel();
    let worker = Worker::builder(fragile.clone(), Signal(tx))
        .poll_interval(Duration::from_millis(50))
        .error_backoff(Duration::from_millis(20))
        .build()
        .unwrap();
    let running = worker.spawn();
    let store = h.store().with_clock(Arc::new(SystemClock));
    let mut seen = HashSet::new();
    for round in 0..3 {
        kill().await;
        let mut txn = store.begin().await.unwrap();
        let ids = txn
            .emit_all((0..4).map(|i| upload(round * 10 + i)).collect())
            .await
            .unwrap();
        txn.commit().await.unwrap();
        for _ in 0..4 {
            let e = tokio::time::timeout(GUARD, delivered.recv())
                .await
                .expect("worker stalled")
                .unwrap();
            seen.insert(e.id);
        }
        assert!(ids.iter().all(|e| seen.contains(&e.id())));
    }
    running.shutdown().await.unwrap();
    let counts = store.count_by_status().await.unwrap();
    assert_eq!(
        (counts.delivered, counts.pending, counts.in_flight),
        (12, 0, 0),
        "nothing lost"
    );
    admin.close().await;
    h.cleanup().await;
}

/// A locked batch whose connection dies while it is being delivered records nothing: the
/// database ended its transaction, so its events are pending again, untried, and the worker
/// (which finds its settlement refused) claims and delivers them again — at least once, and
/// each event ends delivered with one attempt counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_batch_whose_connection_dies_is_delivered_again() {
    let h = PgHarness::new().await;
    let (fragile, name) = fragile_store(&h, "fragile_locked", 2).await;
    let admin = pool("admin", 1).await;
    // Mid-batch: every connection of the worker's pool is cut, the locked one among them.
    a_locked_batch_cut_mid_delivery(&h, fragile, terminate(&admin, &name)).await;
    admin.close().await;
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_apply_once_and_roll_back() {
    let h = PgHarness::new().await;
    let store = h.store();
    assert_eq!(store.migrate().await.unwrap(), 0, "already current");
    let other = PgStore::new(
        store.pool().clone(),
        PgConfig::new()
            .with_schema(h.schema())
            .with_table("second_outbox"),
    )
    .unwrap();
    // Two processes migrating at once: the advisory lock lets each step run once.
    let twin = other.clone();
    let (a, b) = tokio::join!(other.migrate(), twin.migrate());
    assert_eq!(
        a.unwrap() + b.unwrap(),
        outbox_postgres::LATEST_VERSION as usize
    );
    other.begin().await.unwrap().emit(upload(1)).await.unwrap();

    assert_eq!(
        other.migrate_down().await.unwrap(),
        outbox_postgres::LATEST_VERSION as usize
    );
    let exists: Option<String> = sqlx::query_scalar("SELECT to_regclass($1)::text")
        .bind(format!("{}.second_outbox", h.schema()))
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(exists, None, "the table is gone");
    assert!(
        store.count_by_status().await.is_ok(),
        "the other outbox table is untouched"
    );
    assert_eq!(
        other.migrate().await.unwrap(),
        outbox_postgres::LATEST_VERSION as usize,
        "and can be created again"
    );
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_listener_reconnects_after_its_connection_is_killed() {
    let h = PgHarness::new().await;
    let name = format!("{}_listener", h.schema());
    let pool_for_worker = pool(&name, 2).await;
    let store = PgStore::new(pool_for_worker, PgConfig::new().with_schema(h.schema()))
        .unwrap()
        .with_clock(Arc::new(SystemClock));
    let (tx, mut delivered) = mpsc::unbounded_channel();
    // A one-hour poll: only a wake-up can deliver within the test's guard.
    let worker = Worker::builder(store.clone(), Signal(tx))
        .poll_interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    let running = worker.spawn();
    let admin = pool("admin", 1).await;
    let listening = || async {
        sqlx::query_scalar::<_, i64>(
            "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1 AND query LIKE 'LISTEN%'",
        )
        .bind(&name)
        .fetch_one(&admin)
        .await
        .unwrap()
    };
    for round in 0..2 {
        // Wait until the listener is connected, then kill its connection (only that one).
        tokio::time::timeout(GUARD, async {
            while listening().await == 0 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the listener never connected");
        sqlx::query(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE application_name = $1 AND query LIKE 'LISTEN%'",
        )
        .bind(&name)
        .execute(&admin)
        .await
        .unwrap();
        h.emit(vec![upload(round)], true).await.unwrap();
        let event = tokio::time::timeout(GUARD, delivered.recv())
            .await
            .expect("no wake-up after the listener's connection was killed")
            .unwrap();
        assert_eq!(event.aggregate_id, round.to_string());
    }
    assert_eq!(running.shutdown().await.unwrap().delivered, 2);
    admin.close().await;
    h.cleanup().await;
}

/// A row that cannot be read back (a payload nested 200 levels deep, headers that are not a
/// string map) never takes the events around it down: the claim marks it dead at once with
/// the reason, the innocent events of the same batch are delivered, and operator reads report
/// it instead of failing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_row_is_isolated_and_reported() {
    let h = PgHarness::new().await;
    outbox_tests::isolation::unreadable_rows_are_isolated(&h, ClaimMode::Lease).await;
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_row_is_isolated_by_a_locked_claim_too() {
    let h = PgHarness::new().await;
    outbox_tests::isolation::unreadable_rows_are_isolated(&h, ClaimMode::Locked).await;
    h.cleanup().await;
}

/// With the database's clock (the default), a relay whose clock runs 120 s ahead cannot take an
/// event inside another relay's 60 s lease: expiry and due-ness are the database's to decide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_with_skewed_clocks_agree_on_leases() {
    let h = PgHarness::new().await;
    let store = PgStore::new(
        h.store().pool().clone(),
        PgConfig::new().with_schema(h.schema()),
    )
    .unwrap();
    let pool = store.pool().clone();
    outbox_tests::harness::relays_with_skewed_clocks_agree_on_leases(&store, || async move {
        sqlx::query_scalar("SELECT now()")
            .fetch_one(&pool)
            .await
            .unwrap()
    })
    .await;
    h.cleanup().await;
}

/// Schema names that are also SQL keywords work: every name the store splices is quoted. A
/// `pg_` schema, which PostgreSQL reserves, is refused when the store is built.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keyword_schema_names_work() {
    let h = PgHarness::new().await;
    for keyword in ["offset", "with", "current_user", "user", "select", "order"] {
        let schema = keyword.to_owned();
        let store = PgStore::new(
            h.store().pool().clone(),
            PgConfig::new().with_schema(&schema).with_table(keyword),
        )
        .unwrap();
        store
            .migrate()
            .await
            .unwrap_or_else(|e| panic!("{keyword}: {e}"));
        let mut tx = store.begin().await.unwrap();
        tx.emit(upload(1)).await.unwrap();
        tx.commit().await.unwrap();
        let (lease, events) = store
            .claim_for("w", 10, Duration::from_secs(30), SystemClock.now())
            .await
            .unwrap();
        assert_eq!(events.len(), 1, "{keyword}");
        store
            .ack(lease.id, &[events[0].id], SystemClock.now())
            .await
            .unwrap();
        assert_eq!(store.count_by_status().await.unwrap().delivered, 1);
        assert_eq!(
            store.migrate_down().await.unwrap(),
            outbox_postgres::LATEST_VERSION as usize
        );
        sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
            "DROP SCHEMA \"{schema}\" CASCADE"
        )))
        .execute(h.store().pool())
        .await
        .unwrap();
    }
    let reserved = PgStore::new(
        h.store().pool().clone(),
        PgConfig::new().with_schema("pg_x"),
    );
    assert_eq!(reserved.unwrap_err().field(), "schema");
    h.cleanup().await;
}

/// A locked claim whose holder goes quiet for longer than its hold is ended by the database
/// (`idle_in_transaction_session_timeout`, set for that transaction only): its events are
/// claimable again, untried, and the late settlement fails, recording nothing. The hold runs on
/// the server's wall clock, so this waits for it (bounded by `GUARD`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_database_ends_a_locked_claim_past_its_hold() {
    let h = PgHarness::new().await;
    the_database_ends_a_quiet_locked_claim(&h, Duration::from_millis(200)).await;
    let store = h.store();
    // The setting was the claim's transaction's alone: the pool's sessions keep no limit.
    let limit: String = sqlx::query_scalar("SHOW idle_in_transaction_session_timeout")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(limit, "0");
    h.cleanup().await;
}

/// A statement PostgreSQL cancels for running past the connection's `statement_timeout` is
/// `StoreError::TimedOut`, not a generic backend failure (the admin bounds its queries so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_past_its_timeout_is_timed_out() {
    let h = PgHarness::new().await;
    let url = database_url().await;
    let options: sqlx::postgres::PgConnectOptions = url.parse().unwrap();
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(1)
        .connect_with(options.options([("statement_timeout", "100")]))
        .await
        .unwrap();
    let store = PgStore::new(pool, PgConfig::new().with_schema(h.schema())).unwrap();
    // Another transaction holds the table: the store's read waits, then is cancelled.
    let holder = h.lock_table().await;
    let listed = store.list(&EventFilter::default()).await;
    assert!(
        matches!(listed, Err(StoreError::TimedOut { .. })),
        "{listed:?}"
    );
    holder.rollback().await.unwrap();
    assert!(store.list(&EventFilter::default()).await.is_ok());
    h.cleanup().await;
}

/// A claim walks the `_due` index and stops at its limit, with nothing paused (and the paused
/// types' table never analyzed) as with a type paused: it used to be planned as a hash
/// anti-join over every pending row and a sort, which made the relay 30 times slower.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_claim_walks_the_due_index_whether_or_not_a_type_is_paused() {
    let h = PgHarness::new().await;
    let store = h.store();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "INSERT INTO \"{s}\".outbox_event (id, event_type, aggregate_type, aggregate_id, payload, \
         status, attempts, max_attempts, next_attempt_at, created_at, updated_at) \
         SELECT gen_random_uuid(), 'file.stored', 'upload', g::text, '{{}}', 'pending', 0, 10, \
         now() - interval '1 hour', now(), now() FROM generate_series(1, 20000) AS g; \
         ANALYZE \"{s}\".outbox_event",
        s = h.schema()
    )))
    .execute(store.pool())
    .await
    .unwrap();
    for paused in [false, true] {
        if paused {
            store
                .pause_type("other.type", SystemClock.now())
                .await
                .unwrap();
        }
        let plan = store.explain_claim(100).await.unwrap();
        assert!(
            plan.contains("outbox_event_due"),
            "paused {paused}:\n{plan}"
        );
        assert!(
            !plan.contains("Seq Scan on outbox_event ") && !plan.contains("Anti Join"),
            "paused {paused}:\n{plan}"
        );
    }
    h.cleanup().await;
}

/// Emits never look at the paused types; the housekeeping that rides on every worker's reclaim
/// tick parks a paused type's new pending events (so claims stop walking them) and unparks
/// events whose type is no longer paused (a resume that raced a park).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn housekeeping_parks_a_paused_types_new_events_and_unparks_orphans() {
    let h = PgHarness::new().await;
    let store = h.store();
    let now = h.clock().now_utc();
    store.pause_type("order.paid", now).await.unwrap();
    let paid = |n: usize| {
        NewEvent::builder("order.paid", "order", n.to_string())
            .build()
            .unwrap()
    };
    h.emit(vec![paid(1), paid(2), paid(3)], true).await.unwrap();
    let parked = || async {
        let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
            "SELECT count(*) FROM \"{}\".outbox_event WHERE status = 'paused'",
            h.schema()
        )))
        .fetch_one(store.pool())
        .await
        .unwrap();
        n
    };
    assert_eq!(parked().await, 0, "emits store events pending");
    store.reclaim_expired(now).await.unwrap();
    assert_eq!(parked().await, 3, "the tick parks them");
    assert_eq!(
        store.count_by_status().await.unwrap().pending,
        3,
        "parked events read as pending"
    );
    let (_, claimed) = store
        .claim_for("w", 10, Duration::from_secs(30), now)
        .await
        .unwrap();
    assert!(claimed.is_empty());
    // The pause goes without its resume (as when a resume commits between a park's snapshot
    // and its write): the next tick lets the events go.
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM \"{}\".outbox_event_paused",
        h.schema()
    )))
    .execute(store.pool())
    .await
    .unwrap();
    store.reclaim_expired(now).await.unwrap();
    assert_eq!(parked().await, 0);
    let (_, claimed) = store
        .claim_for("w", 10, Duration::from_secs(30), now)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 3);
    h.cleanup().await;
}
