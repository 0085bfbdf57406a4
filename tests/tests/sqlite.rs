//! SQLite beyond the conformance suite: transactions of the application's own, batch emit and
//! idempotency, many workers, crashed workers, per-key commit order under concurrent
//! producers, two processes on one file, a busy database, bad input and migrations. Each test
//! owns its database file.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use outbox_core::{Emit, Emitted, NewEvent, OutboxStore, OutboxStoreExt, StoreError, SystemClock};
use outbox_sqlite::{SqliteConfig, SqliteStore};
use outbox_tests::concurrency::{self, keyed};
use outbox_tests::conformance::{self, Harness, NowUtc};
use outbox_tests::harness::{ForeignRows, SqliteHarness, remove_sqlite_file, sqlite_file};
use outbox_tests::isolation;
use outbox_worker::ClaimMode;
use serde_json::json;

const LEASE: Duration = Duration::from_secs(30);

fn upload(n: usize) -> NewEvent {
    NewEvent::builder("file.stored", "upload", n.to_string())
        .payload(json!({ "n": n }))
        .build()
        .unwrap()
}

async fn create_uploads(store: &SqliteStore) {
    sqlx::raw_sql("CREATE TABLE uploads (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
        .execute(store.pool())
        .await
        .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn business_row_and_event_commit_or_roll_back_together() {
    let h = SqliteHarness::new().await;
    let store = h.store();
    create_uploads(&store).await;
    let insert = "INSERT INTO uploads (id, name) VALUES (?, ?)";

    // Through the store's transaction. Rolled back: neither the row nor the event.
    let mut tx = store.begin().await.unwrap();
    sqlx::query(insert)
        .bind(1_i64)
        .bind("a.png")
        .execute(&mut *tx)
        .await
        .unwrap();
    let lost = tx.emit(upload(1)).await.unwrap().id();
    tx.rollback().await.unwrap();
    assert!(store.get(lost).await.unwrap().is_none());

    // Through the application's own transaction. Committed: both, and the event is not
    // claimable before the commit (a reader sees the last commit).
    let mut tx = store.pool().begin_with("BEGIN IMMEDIATE").await.unwrap();
    sqlx::query(insert)
        .bind(2_i64)
        .bind("b.png")
        .execute(&mut *tx)
        .await
        .unwrap();
    let kept = store.emitter(&mut tx).emit(upload(2)).await.unwrap().id();
    let before: Vec<_> = store.list(&Default::default()).await.unwrap().events;
    assert!(before.is_empty(), "an uncommitted event was visible");
    tx.commit().await.unwrap();
    let rows: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM uploads")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(rows, 1);
    let (_, claimed) = store
        .claim_for("w", 10, LEASE, h.clock().now_utc())
        .await
        .unwrap();
    assert_eq!(claimed.iter().map(|e| e.id).collect::<Vec<_>>(), vec![kept]);
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_emit_resolves_duplicates_within_and_across_batches() {
    let h = SqliteHarness::new().await;
    concurrency::batch_emit_resolves_duplicates_within_and_across_batches(&h).await;
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_workers_drain_ten_thousand_events_without_overlap() {
    let h = SqliteHarness::new().await;
    let store = h.store().with_clock(Arc::new(SystemClock));
    concurrency::four_workers_drain(&h, store, ClaimMode::Lease).await;
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_locked_workers_drain_ten_thousand_events_without_overlap() {
    let h = SqliteHarness::new().await;
    let store = h.store().with_clock(Arc::new(SystemClock));
    concurrency::four_workers_drain(&h, store, ClaimMode::Locked).await;
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_workers_events_are_delivered_after_its_lease_expires() {
    let h = SqliteHarness::new().await;
    concurrency::a_crashed_workers_events_are_delivered_after_its_lease_expires(&h).await;
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producers_and_workers_on_shared_keys_keep_each_keys_commit_order() {
    let h = SqliteHarness::new().await;
    let store = h.store().with_clock(Arc::new(SystemClock));
    sqlx::raw_sql("CREATE TABLE counters (k TEXT PRIMARY KEY, n INTEGER NOT NULL)")
        .execute(store.pool())
        .await
        .unwrap();
    let values: Vec<String> = (0..50).map(|i| format!("('k{i}', 0)")).collect();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "INSERT INTO counters (k, n) VALUES {}",
        values.join(", ")
    )))
    .execute(store.pool())
    .await
    .unwrap();
    let produce: concurrency::Produce = {
        let store = store.clone();
        Arc::new(move |key: String| {
            let store = store.clone();
            Box::pin(async move {
                let mut tx = store.begin().await.unwrap();
                let n: i64 =
                    sqlx::query_scalar("UPDATE counters SET n = n + 1 WHERE k = ? RETURNING n")
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
        let rows: Vec<(String, i64)> = sqlx::query_as("SELECT k, n FROM counters")
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

/// Two processes on one file: what one emits the other claims, a locked claim made by one is
/// skipped by the other, and each sees the other's settlement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_processes_share_one_file() {
    let h = SqliteHarness::new().await;
    let (a, b) = (h.store(), h.second_process().await);
    let now = h.clock().now_utc();
    let mut tx = a.begin().await.unwrap();
    let ids: Vec<_> = tx
        .emit_all((0..3).map(upload).collect())
        .await
        .unwrap()
        .iter()
        .map(Emitted::id)
        .collect();
    tx.commit().await.unwrap();
    let held = b.claim_locked("b", 2, LEASE, now).await.unwrap();
    assert_eq!(
        held.events.iter().map(|e| e.id).collect::<Vec<_>>(),
        ids[..2]
    );
    let (lease, rest) = a.claim_for("a", 10, LEASE, now).await.unwrap();
    assert_eq!(rest.iter().map(|e| e.id).collect::<Vec<_>>(), vec![ids[2]]);
    let settled = held
        .batch
        .finish(
            &outbox_core::Settlement {
                delivered: ids[..2].to_vec(),
                ..Default::default()
            },
            now,
        )
        .await
        .unwrap();
    assert_eq!(settled.len(), 2);
    b.ack(lease.id, &[ids[2]], now).await.unwrap();
    let counts = a.count_by_status().await.unwrap();
    assert_eq!((counts.delivered, counts.total()), (3, 3));
    b.pool().close().await;
    h.cleanup().await;
}

/// Finishes a locked claim with every event delivered; returns how many were recorded.
async fn deliver_all(claim: outbox_core::LockedClaim, now: chrono::DateTime<chrono::Utc>) -> usize {
    let delivered = claim.events.iter().map(|e| e.id).collect();
    claim
        .batch
        .finish(
            &outbox_core::Settlement {
                delivered,
                ..Default::default()
            },
            now,
        )
        .await
        .unwrap()
        .len()
}

/// A store whose locked claims keep their transaction open for 20 s, far longer than any test
/// step, with writers waiting up to 30 s.
async fn claims_held_open() -> SqliteHarness {
    SqliteHarness::with_config(|c| {
        c.with_write_wait(Duration::from_secs(30))
            .with_locked_window(Duration::from_secs(20))
    })
    .await
}

/// How many events carry a locked claim's committed mark, as another process reads the file.
async fn marked(store: &SqliteStore) -> i64 {
    sqlx::query_scalar("SELECT COUNT(*) FROM outbox_event WHERE hold_id IS NOT NULL")
        .fetch_one(store.pool())
        .await
        .unwrap()
}

/// A locked batch delivered within the store's window is held by the claim's own write
/// transaction: nothing is written until its outcomes are, in that transaction, and the write
/// lock is the claim's meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_batch_within_its_window_is_recorded_by_the_claims_own_transaction() {
    let h = claims_held_open().await;
    let store = h.store();
    let impatient = SqliteStore::connect(
        &format!("sqlite://{}", h.path().display()),
        SqliteConfig::new().with_write_wait(Duration::from_millis(200)),
    )
    .await
    .unwrap();
    let now = h.clock().now_utc();
    h.emit((0..3).map(upload).collect(), true).await.unwrap();
    let claim = store.claim_locked("w", 10, LEASE, now).await.unwrap();
    assert_eq!(claim.events.len(), 3);
    assert_eq!(
        marked(&impatient).await,
        0,
        "a claim in its window marked its events"
    );
    assert_eq!(impatient.count_by_status().await.unwrap().pending, 3);
    match impatient.begin().await {
        Err(e @ StoreError::Unavailable { .. }) => assert!(e.is_retryable(), "{e}"),
        Err(other) => panic!("expected Unavailable while the claim is open, got {other:?}"),
        Ok(_) => panic!("another process wrote while a locked claim held its transaction open"),
    }
    let ids = claim.events.iter().map(|e| e.id).collect::<Vec<_>>();
    assert_eq!(deliver_all(claim, now).await, 3);
    for id in ids {
        let event = impatient.get(id).await.unwrap().unwrap();
        assert_eq!(event.status(), outbox_core::Status::Delivered);
        assert_eq!(event.attempts(), 1);
    }
    assert_eq!(marked(&impatient).await, 0);
    impatient.pool().close().await;
    h.cleanup().await;
}

/// A locked batch still delivering when the store's window ends stops keeping other writers
/// waiting: its events are marked held and the claim's transaction committed, so another
/// process writes and claims (skipping them) while it delivers; then the store marks the next
/// batch at once, and both batches still settle.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_batch_that_outlasts_its_window_gives_the_write_lock_back() {
    let h = SqliteHarness::with_config(|c| c.with_locked_window(Duration::from_millis(50))).await;
    let (store, other) = (h.store(), h.second_process().await);
    let now = h.clock().now_utc();
    h.emit((0..2).map(upload).collect(), true).await.unwrap();
    let slow = store.claim_locked("slow", 10, LEASE, now).await.unwrap();
    assert_eq!(slow.events.len(), 2);
    // Waits for the write lock, which the slow batch gives back when its window ends.
    let mut tx = other.begin().await.unwrap();
    let third = tx.emit(upload(2)).await.unwrap().id();
    tx.commit().await.unwrap();
    assert_eq!(marked(&other).await, 2);
    let quick = other.claim_locked("quick", 10, LEASE, now).await.unwrap();
    assert_eq!(
        quick.events.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![third]
    );
    assert_eq!(deliver_all(quick, now).await, 1);
    // A batch outlasted the window: the next one is marked as it is claimed.
    h.emit(vec![upload(3)], true).await.unwrap();
    let next = store.claim_locked("next", 10, LEASE, now).await.unwrap();
    assert_eq!(next.events.len(), 1);
    assert_eq!(
        marked(&other).await,
        3,
        "the claim after a slow batch did not mark at once"
    );
    assert_eq!(deliver_all(slow, now).await, 2);
    assert_eq!(deliver_all(next, now).await, 1);
    let counts = other.count_by_status().await.unwrap();
    assert_eq!((counts.delivered, counts.total()), (4, 4));
    assert_eq!(marked(&other).await, 0);
    other.pool().close().await;
    h.cleanup().await;
}

/// While the workers' claims queue for the database, an application's write waits for the
/// claim that holds it and at most one more, not for every queued claim in turn.
#[tokio::test(flavor = "current_thread")]
async fn a_write_waits_behind_at_most_one_queued_claim() {
    let h = claims_held_open().await;
    let store = h.store();
    let now = h.clock().now_utc();
    h.emit((0..3).map(upload).collect(), true).await.unwrap();
    let first = store.claim_locked("first", 1, LEASE, now).await.unwrap();
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let claimer = |name: &'static str| {
        let (store, order) = (store.clone(), Arc::clone(&order));
        tokio::spawn(async move {
            let claim = store.claim_locked(name, 1, LEASE, now).await.unwrap();
            order.lock().unwrap().push(name);
            assert_eq!(deliver_all(claim, now).await, 1);
        })
    };
    let (second, third) = (claimer("second"), claimer("third"));
    let write = {
        let (store, order) = (store.clone(), Arc::clone(&order));
        tokio::spawn(async move {
            let mut tx = store.begin().await.unwrap();
            order.lock().unwrap().push("write");
            tx.emit(upload(3)).await.unwrap();
            tx.commit().await.unwrap();
        })
    };
    // Each of them runs until it waits for its turn, in the order spawned.
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
    assert!(
        order.lock().unwrap().is_empty(),
        "a writer went ahead of an open claim"
    );
    assert_eq!(deliver_all(first, now).await, 1);
    for task in [second, third, write] {
        task.await.unwrap();
    }
    assert_eq!(*order.lock().unwrap(), ["second", "write", "third"]);
    h.cleanup().await;
}

/// A database another process keeps busy is waited for up to the write wait, then refused as
/// retryable; once it is free, the same write goes through. Reads never wait.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_busy_database_is_waited_for_then_refused_as_retryable() {
    let h = SqliteHarness::new().await;
    let other = h.store();
    let patient = SqliteStore::connect(
        &format!("sqlite://{}", h.path().display()),
        SqliteConfig::new().with_write_wait(Duration::from_millis(200)),
    )
    .await
    .unwrap();
    let mut busy = other.begin().await.unwrap();
    busy.emit(upload(1)).await.unwrap();
    let started = std::time::Instant::now();
    let mut tx = match patient.begin().await {
        Err(e @ StoreError::Unavailable { .. }) => {
            assert!(e.is_retryable(), "{e}");
            assert!(
                started.elapsed() >= Duration::from_millis(150),
                "refused before waiting: {:?}",
                started.elapsed()
            );
            // Readers are not held up by the writer.
            assert_eq!(patient.count_by_status().await.unwrap().total(), 0);
            busy.commit().await.unwrap();
            patient.begin().await.expect("free again")
        }
        other => panic!("expected Unavailable while another process writes, got {other:?}"),
    };
    tx.emit(upload(2)).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(patient.count_by_status().await.unwrap().pending, 2);
    patient.pool().close().await;
    h.cleanup().await;
}

/// A store with bounded reads interrupts a read once its bound has passed and says so as a
/// timeout, as PostgreSQL's `statement_timeout` would; the same read, unbounded or within a
/// bound it keeps, answers. A bound of zero has passed at the first look, so the search (a scan:
/// no index covers aggregate ids) is interrupted whatever the machine's speed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bounded_read_is_interrupted_once_its_bound_has_passed() {
    let h = SqliteHarness::new().await;
    let store = h.store();
    let mut tx = store.begin().await.unwrap();
    tx.emit_all((0..2_000).map(upload).collect()).await.unwrap();
    tx.commit().await.unwrap();
    let search = outbox_core::EventFilter {
        aggregate_id: Some("1999".into()),
        ..Default::default()
    };

    match store.with_read_bound(Duration::ZERO).list(&search).await {
        Err(e @ StoreError::TimedOut { .. }) => assert!(!e.is_retryable(), "{e}"),
        other => panic!("expected the bounded search to time out, got {other:?}"),
    }
    let found = |page: outbox_core::EventPage| {
        page.events
            .iter()
            .map(|e| e.aggregate_id.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(found(store.list(&search).await.unwrap()), ["1999"]);
    let patient = store.with_read_bound(Duration::from_secs(600));
    for _ in 0..3 {
        assert_eq!(found(patient.list(&search).await.unwrap()), ["1999"]);
    }
    assert_eq!(patient.count_by_status().await.unwrap().pending, 2_000);
    h.cleanup().await;
}

/// An application transaction begun deferred (`BEGIN`) that read before another connection
/// wrote cannot write on its stale snapshot: its emit is refused as a conflict to run again,
/// never answered from what it read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stale_deferred_transaction_is_refused_as_a_conflict() {
    let h = SqliteHarness::new().await;
    let store = h.store();
    let once = |n| {
        NewEvent::builder("order.paid", "order", "1")
            .idempotency_key("k")
            .payload(json!({ "n": n }))
            .build()
            .unwrap()
    };
    let mut stale = store.pool().begin().await.unwrap();
    let seen: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT COUNT(*) FROM \"{}\"",
        store.config().table()
    )))
    .fetch_one(&mut *stale)
    .await
    .unwrap();
    assert_eq!(seen, 0);
    let first = h.emit(vec![once(1)], true).await.unwrap()[0];
    match store.emitter(&mut stale).emit(once(2)).await {
        Err(e @ StoreError::Conflict { .. }) => assert!(e.is_retryable(), "{e}"),
        other => panic!("expected Conflict, got {other:?}"),
    }
    stale.rollback().await.unwrap();
    assert_eq!(
        h.emit(vec![once(3)], true).await.unwrap(),
        vec![Emitted::Duplicate(first.id())]
    );
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_before_anything_is_written() {
    let h = SqliteHarness::new().await;
    let store = h.store();
    let limited = SqliteStore::new(
        store.pool().clone(),
        SqliteConfig::new().with_limits(outbox_core::EmitLimits {
            max_payload_bytes: 64,
            ..Default::default()
        }),
    )
    .unwrap();
    conformance::bad_input_is_refused_before_anything_is_written(&h, &limited).await;
    // Table names are validated, never spliced as given.
    for table in ["outbox; drop table x", "Outbox", "\"t\"", "", "sqlite_t"] {
        let config = SqliteConfig::new().with_table(table);
        assert!(
            SqliteStore::new(store.pool().clone(), config).is_err(),
            "{table:?} accepted"
        );
    }
    // A URL that is not SQLite's.
    match SqliteStore::connect("postgres://localhost/x", SqliteConfig::new()).await {
        Err(StoreError::InvalidInput(e)) => assert_eq!(e.field(), "url"),
        other => panic!("expected InvalidInput, got {other:?}"),
    }
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_apply_once_and_roll_back() {
    let path = sqlite_file();
    let url = format!("sqlite://{}", path.display());
    // Two processes starting at once apply each step exactly once.
    let a = SqliteStore::connect(&url, SqliteConfig::new())
        .await
        .unwrap();
    let b = SqliteStore::connect(&url, SqliteConfig::new())
        .await
        .unwrap();
    assert_eq!(a.schema_version().await.unwrap(), 0);
    let runs =
        futures_util::future::join_all([a.migrate(), b.migrate(), a.migrate(), b.migrate()]).await;
    let applied: usize = runs.into_iter().map(|r| r.unwrap()).sum();
    assert_eq!(applied, outbox_sqlite::LATEST_VERSION as usize);
    assert_eq!(b.migrate().await.unwrap(), 0);
    assert_eq!(
        a.schema_version().await.unwrap(),
        outbox_sqlite::LATEST_VERSION
    );
    let mut tx = a.begin().await.unwrap();
    tx.emit(upload(1)).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(b.count_by_status().await.unwrap().pending, 1);
    assert_eq!(
        a.migrate_down().await.unwrap(),
        outbox_sqlite::LATEST_VERSION as usize
    );
    let left: i64 =
        sqlx::query_scalar("SELECT COUNT(*) FROM sqlite_master WHERE name LIKE 'outbox_event%'")
            .fetch_one(a.pool())
            .await
            .unwrap();
    assert_eq!(left, 0, "the way back drops every table and index");
    assert_eq!(a.schema_version().await.unwrap(), 0);
    a.pool().close().await;
    b.pool().close().await;
    remove_sqlite_file(&path);
}

/// A row that cannot be read never takes the events around it down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_row_is_isolated_and_reported() {
    let h = SqliteHarness::new().await;
    isolation::unreadable_rows_are_isolated(&h, ClaimMode::Lease).await;
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_row_is_isolated_by_a_locked_claim_too() {
    let h = SqliteHarness::new().await;
    isolation::unreadable_rows_are_isolated(&h, ClaimMode::Locked).await;
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_waiting_event_parks_its_key_until_deleted() {
    let h = SqliteHarness::new().await;
    isolation::an_unreadable_waiting_event_parks_its_key_until_deleted(&h).await;
    h.cleanup().await;
}

/// A row whose small fields cannot be read (they travel together, as one JSON array; here
/// text that is not UTF-8) is one bad row too, and its ordering key, a column of its own, is
/// still found: it parks its key, and deleting it lets the key go on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_row_whose_fields_cannot_be_read_still_parks_its_key() {
    let h = SqliteHarness::new().await;
    let spoiled = || async {
        let id = h.foreign_row("{}", "{}").await;
        let spoil = format!(
            "UPDATE \"{}\" SET aggregate_id = CAST(x'ff' AS TEXT) WHERE id = ?",
            h.store().config().table()
        );
        sqlx::query(sqlx::AssertSqlSafe(spoil))
            .bind(*id.as_uuid())
            .execute(h.store().pool())
            .await
            .unwrap();
        id
    };
    isolation::a_waiting_bad_row_parks_its_key_until_deleted(&h, spoiled).await;
    h.cleanup().await;
}

/// A commit through the store's transaction wakes this process's idle worker at once: with a
/// poll of an hour, every event is delivered within seconds of its commit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_wakes_an_idle_worker_of_the_process() {
    let h = SqliteHarness::new().await;
    let store = h.store().with_clock(Arc::new(SystemClock));
    let (tx, mut delivered) = tokio::sync::mpsc::unbounded_channel();
    let running = outbox_worker::Worker::builder(store.clone(), outbox_tests::harness::Signal(tx))
        .poll_interval(Duration::from_secs(3600))
        .build()
        .unwrap()
        .spawn();
    for round in 0..3 {
        let mut txn = store.begin().await.unwrap();
        txn.emit_all((0..3).map(|i| upload(round * 10 + i)).collect())
            .await
            .unwrap();
        txn.commit().await.unwrap();
        for _ in 0..3 {
            tokio::time::timeout(Duration::from_secs(10), delivered.recv())
                .await
                .expect("not woken by the commit (the poll is an hour)")
                .unwrap();
        }
    }
    assert_eq!(running.shutdown().await.unwrap().delivered, 9);
    h.cleanup().await;
}

/// Two transactions emitting the same idempotency key at once, in one process or from two:
/// the second waits for the first's commit (one writer at a time), then answers
/// `Duplicate` of the first's event. One event is stored.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_transactions_on_one_idempotency_key_store_one_event() {
    let h = SqliteHarness::new().await;
    let once = || {
        NewEvent::builder("order.paid", "order", "1")
            .idempotency_key("pay-1")
            .build()
            .unwrap()
    };
    for other in [h.store(), h.second_process().await] {
        let store = h.store();
        let mut first = store.begin().await.unwrap();
        let created = first.emit(once()).await.unwrap();
        let second = tokio::spawn(async move {
            let mut tx = other.begin().await?;
            let answer = tx.emit(once()).await?;
            tx.commit().await?;
            Ok::<_, StoreError>(answer)
        });
        // The second has not answered yet: the first still holds the write lock.
        tokio::task::yield_now().await;
        assert!(!second.is_finished());
        first.commit().await.unwrap();
        let answer = second.await.unwrap().unwrap();
        match created {
            Emitted::Created(id) => assert_eq!(answer, Emitted::Duplicate(id)),
            Emitted::Duplicate(id) => assert_eq!(answer, Emitted::Duplicate(id)),
        }
    }
    assert_eq!(h.store().count_by_status().await.unwrap().total(), 1);
    h.cleanup().await;
}
