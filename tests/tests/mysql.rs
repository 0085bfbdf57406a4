//! MySQL/MariaDB beyond the conformance suite: transactions of the application's own, batch
//! emit and idempotency races, many workers, crashed workers, per-key commit order under
//! concurrent producers, bad input, migrations, and what row locks must never hold up. Each
//! test owns its tables.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use outbox_core::{Emit, NewEvent, OutboxStore, OutboxStoreExt, StoreError, SystemClock};
use outbox_mysql::{MySqlConfig, MySqlStore};
use outbox_tests::concurrency::{self, keyed};
use outbox_tests::conformance::{self, Harness, NowUtc};
use outbox_tests::harness::{
    self, MySqlHarness, a_locked_batch_cut_mid_delivery, mysql_pool,
    the_database_ends_a_quiet_locked_claim,
};
use outbox_tests::isolation;
use outbox_worker::ClaimMode;
use serde_json::json;

/// Longest a store call may take here; a guard against a lock wait, not a pace.
const GUARD: Duration = Duration::from_secs(10);

fn event(n: usize) -> NewEvent {
    NewEvent::builder("file.stored", "upload", n.to_string())
        .build()
        .expect("valid event")
}

/// A locked claim holds its own events' rows and nothing else: renewing, acknowledging and
/// reviving other events, and answering for its own, never wait for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_claim_holds_up_no_other_call() {
    let h = MySqlHarness::new().await;
    h.emit((0..4).map(event).collect(), true)
        .await
        .expect("emit");
    let store = h.store();
    let now = h.clock().now_utc();
    let (lease, leased) = store
        .claim_for("w", 3, Duration::from_secs(30), now)
        .await
        .expect("claim");
    assert_eq!(leased.len(), 3);
    let locked = store
        .claim_locked("l", 1, Duration::from_secs(30), now)
        .await
        .expect("locked claim");
    assert_eq!(locked.events.len(), 1);
    let renewed = tokio::time::timeout(GUARD, store.renew(lease.id, now, now))
        .await
        .expect("renew waited for the locked claim")
        .expect("renew");
    assert_eq!(renewed, 3);
    let ids: Vec<_> = leased.iter().map(|e| e.id).collect();
    let acked = tokio::time::timeout(GUARD, store.ack(lease.id, &ids, now))
        .await
        .expect("ack waited for the locked claim")
        .expect("ack");
    assert_eq!(acked.len(), 3);
    drop(locked);
    h.cleanup().await;
}

/// A locked claim holds only the rows it takes: an event of a paused type that its search
/// passed over is not held (deleting it, which skips what a worker holds, deletes it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_claim_holds_no_row_it_passed_over() {
    let h = MySqlHarness::new().await;
    let store = h.store();
    let now = h.clock().now_utc();
    store.pause_type("order.paid", now).await.expect("pause");
    let paused = NewEvent::builder("order.paid", "order", "1")
        .build()
        .expect("valid event");
    let ids: Vec<_> = h
        .emit(vec![paused, event(1)], true)
        .await
        .expect("emit")
        .iter()
        .map(outbox_core::Emitted::id)
        .collect();
    let locked = store
        .claim_locked("l", 1, Duration::from_secs(30), now)
        .await
        .expect("locked claim");
    let taken: Vec<_> = locked.events.iter().map(|e| e.id).collect();
    assert_eq!(taken, ids[1..].to_vec());
    let deleted = tokio::time::timeout(GUARD, store.delete_events(&ids[..1], now))
        .await
        .expect("delete waited")
        .expect("delete");
    assert_eq!(deleted, ids[..1].to_vec(), "the paused event was not held");
    drop(locked);
    h.cleanup().await;
}

fn upload(n: usize) -> NewEvent {
    NewEvent::builder("file.stored", "upload", n.to_string())
        .payload(json!({ "n": n }))
        .build()
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn business_row_and_event_commit_or_roll_back_together() {
    let h = MySqlHarness::new().await;
    let store = h.store();
    let table = format!("{}_uploads", store.config().table());
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE `{table}` (id BIGINT PRIMARY KEY, name TEXT NOT NULL)"
    )))
    .execute(store.pool())
    .await
    .unwrap();
    let insert = format!("INSERT INTO `{table}` (id, name) VALUES (?, ?)");

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

    // Committed: both, and the event is claimable, but not before the commit.
    let mut tx = store.pool().begin().await.unwrap();
    sqlx::query(sqlx::AssertSqlSafe(insert))
        .bind(2_i64)
        .bind("b.png")
        .execute(&mut *tx)
        .await
        .unwrap();
    let kept = store.emitter(&mut tx).emit(upload(2)).await.unwrap().id();
    let (_, seen) = store
        .claim_for("w", 10, Duration::from_secs(30), h.clock().now_utc())
        .await
        .unwrap();
    assert!(seen.is_empty(), "an uncommitted event was claimed");
    tx.commit().await.unwrap();
    let rows: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT COUNT(*) FROM `{table}`"
    )))
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(rows, 1);
    let (_, claimed) = store
        .claim_for("w", 10, Duration::from_secs(30), h.clock().now_utc())
        .await
        .unwrap();
    assert_eq!(claimed.iter().map(|e| e.id).collect::<Vec<_>>(), vec![kept]);
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP TABLE `{table}`")))
        .execute(store.pool())
        .await
        .unwrap();
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_emit_resolves_duplicates_within_and_across_batches() {
    let h = MySqlHarness::new().await;
    concurrency::batch_emit_resolves_duplicates_within_and_across_batches(&h).await;
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_workers_drain_ten_thousand_events_without_overlap() {
    let h = MySqlHarness::with_config(10, |c| c).await;
    let store = h.store().with_clock(Arc::new(SystemClock));
    concurrency::four_workers_drain(&h, store, ClaimMode::Lease).await;
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn four_locked_workers_drain_ten_thousand_events_without_overlap() {
    let h = MySqlHarness::with_config(10, |c| c).await;
    let store = h.store().with_clock(Arc::new(SystemClock));
    concurrency::four_workers_drain(&h, store, ClaimMode::Locked).await;
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashed_workers_events_are_delivered_after_its_lease_expires() {
    let h = MySqlHarness::new().await;
    concurrency::a_crashed_workers_events_are_delivered_after_its_lease_expires(&h).await;
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn producers_and_workers_on_shared_keys_keep_each_keys_commit_order() {
    let h = MySqlHarness::with_config(16, |c| c).await;
    let store = h.store().with_clock(Arc::new(SystemClock));
    let counters = format!("{}_counters", store.config().table());
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "CREATE TABLE `{counters}` (k VARCHAR(16) PRIMARY KEY, n BIGINT NOT NULL)"
    )))
    .execute(store.pool())
    .await
    .unwrap();
    let values: Vec<String> = (0..50).map(|i| format!("('k{i}', 0)")).collect();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!(
        "INSERT INTO `{counters}` (k, n) VALUES {}",
        values.join(", ")
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
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "UPDATE `{counters}` SET n = n + 1 WHERE k = ?"
                )))
                .bind(&key)
                .execute(&mut *tx)
                .await
                .unwrap();
                let n: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
                    "SELECT n FROM `{counters}` WHERE k = ?"
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
            "SELECT k, n FROM `{counters}`"
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
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("DROP TABLE `{counters}`")))
        .execute(store.pool())
        .await
        .unwrap();
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_refused_before_anything_is_written() {
    let h = MySqlHarness::new().await;
    let store = h.store();
    let limited = MySqlStore::new(
        store.pool().clone(),
        MySqlConfig::new()
            .with_table(store.config().table())
            .with_limits(outbox_core::EmitLimits {
                max_payload_bytes: 64,
                ..Default::default()
            }),
    )
    .unwrap();
    conformance::bad_input_is_refused_before_anything_is_written(&h, &limited).await;
    // Table names are validated, never spliced as given.
    for table in ["outbox; drop table x", "Outbox", "`t`", ""] {
        let config = MySqlConfig::new().with_table(table);
        assert!(
            MySqlStore::new(store.pool().clone(), config).is_err(),
            "{table:?} accepted"
        );
    }
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrations_apply_once_and_roll_back() {
    let table = format!("t_{}", uuid::Uuid::now_v7().simple());
    let pool = mysql_pool(4).await;
    let store = MySqlStore::new(pool.clone(), MySqlConfig::new().with_table(&table)).unwrap();
    assert_eq!(store.schema_version().await.unwrap(), 0);
    // Several processes starting at once apply each step exactly once.
    let runs = futures_util::future::join_all((0..4).map(|_| store.migrate())).await;
    let applied: usize = runs.into_iter().map(|r| r.unwrap()).sum();
    assert_eq!(applied, outbox_mysql::LATEST_VERSION as usize);
    assert_eq!(store.migrate().await.unwrap(), 0);
    assert_eq!(
        store.schema_version().await.unwrap(),
        outbox_mysql::LATEST_VERSION
    );
    h_emit(&store).await;
    assert_eq!(
        store.migrate_down().await.unwrap(),
        outbox_mysql::LATEST_VERSION as usize
    );
    let left: i64 = sqlx::query_scalar(
        "SELECT COUNT(*) FROM information_schema.tables WHERE table_schema = DATABASE() AND table_name LIKE CONCAT(?, '%')",
    )
    .bind(&table)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(left, 0, "the way back drops every table");
    assert_eq!(store.schema_version().await.unwrap(), 0);
}

async fn h_emit(store: &MySqlStore) {
    let mut tx = store.begin().await.unwrap();
    tx.emit(upload(1)).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(store.count_by_status().await.unwrap().pending, 1);
}

/// A row that cannot be read never takes the events around it down.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_row_is_isolated_and_reported() {
    let h = MySqlHarness::new().await;
    isolation::unreadable_rows_are_isolated(&h, ClaimMode::Lease).await;
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_row_is_isolated_by_a_locked_claim_too() {
    let h = MySqlHarness::new().await;
    isolation::unreadable_rows_are_isolated(&h, ClaimMode::Locked).await;
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreadable_waiting_event_parks_its_key_until_deleted() {
    let h = MySqlHarness::new().await;
    isolation::an_unreadable_waiting_event_parks_its_key_until_deleted(&h).await;
    h.cleanup().await;
}

/// Kills the one connection of `store`'s pool (whose id it reads first) from `admin`, and
/// waits (bounded) until the server has closed it: `KILL` only flags a connection, which may
/// still answer a quick next statement.
async fn kill_connection(store: &MySqlStore, admin: &sqlx::MySqlPool) {
    let id: u64 = sqlx::query_scalar("SELECT CONNECTION_ID()")
        .fetch_one(store.pool())
        .await
        .unwrap();
    sqlx::query(sqlx::AssertSqlSafe(format!("KILL CONNECTION {id}")))
        .execute(admin)
        .await
        .unwrap();
    let gone = async {
        loop {
            let left: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM information_schema.PROCESSLIST WHERE ID = ?",
            )
            .bind(id)
            .fetch_one(admin)
            .await
            .unwrap();
            if left == 0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(GUARD, gone)
        .await
        .expect("the server never closed the killed connection");
}

/// A connection the server drops under the store is a retryable error, the next call
/// reconnects, and a worker on that store keeps delivering across repeated losses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_lost_connection_is_retryable_and_the_worker_carries_on() {
    let h = MySqlHarness::new().await;
    // One connection, not tested before use, so a dropped connection surfaces to the caller.
    let pool = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(1)
        .test_before_acquire(false)
        .connect(&outbox_tests::harness::mysql_url())
        .await
        .unwrap();
    let fragile = MySqlStore::new(
        pool,
        MySqlConfig::new().with_table(h.store().config().table()),
    )
    .unwrap();
    let admin = mysql_pool(1).await;

    kill_connection(&fragile, &admin).await;
    let error = fragile
        .claim_for(
            "w",
            10,
            Duration::from_secs(30),
            outbox_core::Clock::now(&SystemClock),
        )
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

    let (tx, mut delivered) = tokio::sync::mpsc::unbounded_channel();
    let running =
        outbox_worker::Worker::builder(fragile.clone(), outbox_tests::harness::Signal(tx))
            .poll_interval(Duration::from_millis(50))
            .error_backoff(Duration::from_millis(20))
            .build()
            .unwrap()
            .spawn();
    let store = h.store().with_clock(Arc::new(SystemClock));
    let mut seen = std::collections::HashSet::new();
    for round in 0..3 {
        if round > 0 {
            // Between rounds the worker is idle, so its one connection is in the pool.
            kill_connection(&fragile, &admin).await;
        }
        let mut txn = store.begin().await.unwrap();
        let ids = txn
            .emit_all((0..4).map(|i| upload(round * 10 + i)).collect())
            .await
            .unwrap();
        txn.commit().await.unwrap();
        for _ in 0..4 {
            let id = tokio::time::timeout(GUARD, delivered.recv())
                .await
                .expect("worker stalled")
                .unwrap();
            seen.insert(id);
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

/// A locked batch whose connections die while it is being delivered records nothing: the
/// server rolled back its transaction, so its events are pending again, untried, and the
/// worker (whose settlement fails) claims and delivers them again — at least once, and each
/// event ends delivered with one attempt counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_batch_whose_connection_dies_is_delivered_again() {
    let h = MySqlHarness::new().await;
    // Two connections, opened now so that their ids are known, and not tested before use.
    let pool = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(2)
        .min_connections(2)
        .test_before_acquire(false)
        .connect(&outbox_tests::harness::mysql_url())
        .await
        .unwrap();
    let mut ids_of_pool = Vec::new();
    let held = (pool.acquire().await.unwrap(), pool.acquire().await.unwrap());
    for mut conn in [held.0, held.1] {
        let id: u64 = sqlx::query_scalar("SELECT CONNECTION_ID()")
            .fetch_one(&mut *conn)
            .await
            .unwrap();
        ids_of_pool.push(id);
    }
    let fragile = MySqlStore::new(
        pool,
        MySqlConfig::new().with_table(h.store().config().table()),
    )
    .unwrap();
    let admin = mysql_pool(1).await;
    // Mid-batch: both of the worker's connections are killed, the locked one among them.
    let cut = async {
        for id in &ids_of_pool {
            sqlx::query(sqlx::AssertSqlSafe(format!("KILL CONNECTION {id}")))
                .execute(&admin)
                .await
                .unwrap();
        }
    };
    a_locked_batch_cut_mid_delivery(&h, fragile, cut).await;
    admin.close().await;
    h.cleanup().await;
}

/// A statement the server interrupts for running past the session's `max_statement_time`
/// (MariaDB) is `StoreError::TimedOut`, not a generic backend failure (the admin bounds its
/// queries so).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_statement_past_its_timeout_is_timed_out() {
    let h = MySqlHarness::new().await;
    let table = h.store().config().table().to_owned();
    let pool = sqlx::mysql::MySqlPoolOptions::new()
        .max_connections(1)
        .after_connect(|conn, _| {
            Box::pin(async move {
                sqlx::raw_sql("SET SESSION max_statement_time = 0.1")
                    .execute(conn)
                    .await
                    .map(|_| ())
            })
        })
        .connect(&outbox_tests::harness::mysql_url())
        .await
        .unwrap();
    let store = MySqlStore::new(pool, MySqlConfig::new().with_table(&table)).unwrap();
    // Another session holds the table: the store's read waits, then is interrupted.
    let mut holder = mysql_pool(1).await.acquire().await.unwrap().detach();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("LOCK TABLES `{table}` WRITE")))
        .execute(&mut holder)
        .await
        .unwrap();
    let listed = store.list(&outbox_core::EventFilter::default()).await;
    assert!(
        matches!(listed, Err(StoreError::TimedOut { .. })),
        "{listed:?}"
    );
    sqlx::raw_sql("UNLOCK TABLES")
        .execute(&mut holder)
        .await
        .unwrap();
    assert!(
        store
            .list(&outbox_core::EventFilter::default())
            .await
            .is_ok()
    );
    h.cleanup().await;
}

/// With the database's clock (the default), a relay whose clock runs 120 s ahead cannot take an
/// event inside another relay's 60 s lease: expiry and due-ness are the database's to decide.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relays_with_skewed_clocks_agree_on_leases() {
    let h = MySqlHarness::new().await;
    let store = MySqlStore::new(
        h.store().pool().clone(),
        MySqlConfig::new().with_table(h.store().config().table()),
    )
    .unwrap();
    let pool = store.pool().clone();
    harness::relays_with_skewed_clocks_agree_on_leases(&store, || async move {
        let now: chrono::NaiveDateTime = sqlx::query_scalar("SELECT UTC_TIMESTAMP(6)")
            .fetch_one(&pool)
            .await
            .unwrap();
        now.and_utc()
    })
    .await;
    h.cleanup().await;
}

/// A locked claim whose holder goes quiet for longer than its hold is ended by the server (the
/// connection's `wait_timeout`, set for the claim): its events are claimable again, untried,
/// and the late settlement fails, recording nothing. The hold runs on the server's clock in
/// whole seconds, so this waits for it (bounded by `GUARD`). A settled claim leaves no limit
/// behind on the pool's connections, which the application may share.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_server_ends_a_locked_claim_past_its_hold() {
    let h = MySqlHarness::new().await;
    the_database_ends_a_quiet_locked_claim(&h, Duration::from_secs(1)).await;
    let store = h.store();
    // Every connection of the pool is back at the server's own idle limit.
    let mut held = Vec::new();
    for _ in 0..store.pool().size() {
        let mut conn = store.pool().acquire().await.unwrap();
        let (session, global): (u64, u64) =
            sqlx::query_as("SELECT @@SESSION.wait_timeout, @@GLOBAL.wait_timeout")
                .fetch_one(&mut *conn)
                .await
                .unwrap();
        assert_eq!(
            session, global,
            "a claim's hold was left on a pooled connection"
        );
        held.push(conn);
    }
    drop(held);
    h.cleanup().await;
}

/// A locked claim dropped unsettled gives its events back and its connection the server's own
/// idle limit, as a settled one does.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dropped_locked_claim_leaves_no_hold_on_the_pool() {
    let h = MySqlHarness::with_config(1, |c| c).await;
    let store = h.store();
    let id = h.emit(vec![upload(1)], true).await.unwrap()[0].id();
    let now = h.clock().now_utc();
    let claim = store
        .claim_locked("w1", 10, Duration::from_secs(5), now)
        .await
        .unwrap();
    assert_eq!(claim.events.len(), 1);
    drop(claim);
    // The pool's one connection: once the claim has ended, it is free for this read.
    let (session, global): (u64, u64) = tokio::time::timeout(
        GUARD,
        sqlx::query_as("SELECT @@SESSION.wait_timeout, @@GLOBAL.wait_timeout")
            .fetch_one(store.pool()),
    )
    .await
    .expect("the dropped claim kept the connection")
    .unwrap();
    assert_eq!(
        session, global,
        "the dropped claim's hold stayed on the connection"
    );
    let (_, again) = store
        .claim_for("w2", 10, Duration::from_secs(30), now)
        .await
        .unwrap();
    assert_eq!(again.iter().map(|e| e.id).collect::<Vec<_>>(), vec![id]);
    h.cleanup().await;
}
