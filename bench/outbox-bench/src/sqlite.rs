//! SQLite workloads: emit inside transactions and relay a backlog, each beside the raw SQL a
//! user would otherwise write, on a table of the same columns and indexes in the same file,
//! alternating round by round. Both sides run on the store's connection settings (WAL, full
//! sync) and take their turns as a careful hand-written program would: the baseline's
//! writers queue on a mutex of their own before `BEGIN IMMEDIATE`, as the store's do, so
//! neither side busy-waits on SQLite's lock.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use chrono::Utc;
use hdrhistogram::Histogram;
use outbox_core::{Emit, NewEvent};
use outbox_sqlite::{SqliteConfig, SqliteStore, connect_options};
use outbox_worker::ClaimMode;
use sqlx::sqlite::{SqliteArguments, SqlitePoolOptions};
use sqlx::{Arguments, AssertSqlSafe, Row, SqlitePool};
use uuid::Uuid;

use crate::latency::ms;
use crate::memory::payload;
use crate::pg::event;
use crate::{Args, BenchError, Summary, pair, per_second};

const TABLE: &str = "outbox_bench_event";
const RAW: &str = "outbox_bench_raw";
const BUSINESS: &str = "outbox_bench_business";

struct Setup {
    /// The store's pool (its writers take turns inside the store).
    store: SqliteStore,
    /// The same table and pool, locked claims marking every batch at once (no window): how a
    /// batch is held once it outlasts the window.
    marked: SqliteStore,
    /// The baseline's pool, the same size as the store's.
    writer: SqlitePool,
    /// The baseline's writers take turns here, so they queue instead of busy-waiting.
    turn: Arc<tokio::sync::Mutex<()>>,
    path: std::path::PathBuf,
}

async fn setup() -> Result<Setup, BenchError> {
    let path = std::env::temp_dir().join(format!("outbox-bench-{}.db", std::process::id()));
    let url = format!("sqlite://{}", path.display());
    let store = SqliteStore::connect(&url, SqliteConfig::new().with_table(TABLE)).await?;
    let writer = SqlitePoolOptions::new()
        .max_connections(4)
        .connect_with(connect_options(&url)?)
        .await?;
    // The baseline's table comes from the same migration: the same columns and indexes.
    let raw = SqliteStore::new(store.pool().clone(), SqliteConfig::new().with_table(RAW))?;
    for s in [&store, &raw] {
        s.migrate_down().await?;
        s.migrate().await?;
    }
    sqlx::raw_sql(AssertSqlSafe(format!(
        "DROP TABLE IF EXISTS {BUSINESS}; \
         CREATE TABLE {BUSINESS} (id INTEGER PRIMARY KEY, name TEXT NOT NULL)"
    )))
    .execute(store.pool())
    .await?;
    let marked = SqliteStore::new(
        store.pool().clone(),
        SqliteConfig::new()
            .with_table(TABLE)
            .with_locked_window(Duration::ZERO),
    )?;
    Ok(Setup {
        store,
        marked,
        writer,
        turn: Arc::new(tokio::sync::Mutex::new(())),
        path,
    })
}

async fn truncate(s: &Setup) -> Result<(), BenchError> {
    for table in [TABLE, RAW, BUSINESS] {
        sqlx::raw_sql(AssertSqlSafe(format!("DELETE FROM {table}")))
            .execute(&s.writer)
            .await?;
    }
    sqlx::raw_sql("PRAGMA wal_checkpoint(TRUNCATE)")
        .execute(&s.writer)
        .await?;
    Ok(())
}

/// How far in the future events emitted during a drain are due: the drain leaves them alone,
/// so it ends when its backlog does.
const LATER_MICROS: i64 = 3_600_000_000;

/// The baseline's insert of events numbered `range`, due now or (`later`) in an hour: one
/// multi-row statement.
async fn raw_insert(
    conn: &mut sqlx::SqliteConnection,
    range: std::ops::Range<usize>,
    bytes: usize,
    later: bool,
) -> Result<(), BenchError> {
    let mut args = SqliteArguments::default();
    let now = Utc::now().timestamp_micros();
    let due = if later { now + LATER_MICROS } else { now };
    let mut values = Vec::new();
    for n in range {
        args.add(Uuid::now_v7())?;
        args.add("file.stored")?;
        args.add("upload")?;
        args.add(n.to_string())?;
        args.add(serde_json::to_string(&payload(n, bytes))?)?;
        args.add(due)?;
        args.add(now)?;
        args.add(now)?;
        values.push("(?, ?, ?, ?, ?, '{}', 'pending', 0, 10, ?, ?, ?)");
    }
    let sql = format!(
        "INSERT INTO {RAW} (id, event_type, aggregate_type, aggregate_id, payload, headers, \
         status, attempts, max_attempts, next_attempt_at, created_at, updated_at) VALUES {}",
        values.join(", ")
    );
    sqlx::query_with(AssertSqlSafe(sql), args)
        .execute(conn)
        .await?;
    Ok(())
}

/// One producer's share of a round: `txs` transactions of one business row and one event.
async fn produce(
    s: &Setup,
    raw: bool,
    txs: usize,
    bytes: usize,
    base: usize,
) -> Result<(), BenchError> {
    let store = if raw { None } else { Some(&s.store) };
    for t in 0..txs {
        transaction(s, store, base + t, bytes, false).await?;
    }
    Ok(())
}

/// One producer transaction, event number `n`, due now or (`later`) in an hour: through
/// `store`, or by hand (on the baseline's pool, in turn with its other writers) without one.
async fn transaction(
    s: &Setup,
    store: Option<&SqliteStore>,
    n: usize,
    bytes: usize,
    later: bool,
) -> Result<(), BenchError> {
    let business = format!("INSERT INTO {BUSINESS} (name) VALUES (?)");
    match store {
        None => {
            let _turn = s.turn.lock().await;
            let mut tx = s.writer.begin_with("BEGIN IMMEDIATE").await?;
            sqlx::query(AssertSqlSafe(business))
                .bind("upload")
                .execute(&mut *tx)
                .await?;
            raw_insert(&mut tx, n..n + 1, bytes, later).await?;
            tx.commit().await?;
        }
        Some(store) => {
            let mut tx = store.begin().await?;
            sqlx::query(AssertSqlSafe(business))
                .bind("upload")
                .execute(&mut *tx)
                .await?;
            let event = if later {
                let at = Utc::now() + chrono::Duration::microseconds(LATER_MICROS);
                NewEvent::builder("file.stored", "upload", n.to_string())
                    .payload(payload(n, bytes))
                    .deliver_after(at)
                    .build()?
            } else {
                event(n, bytes)?
            };
            tx.emit(event).await?;
            tx.commit().await?;
        }
    }
    Ok(())
}

/// What one producer's transactions take (µs) while a relay drains half of `backlog`: the
/// store's own relay with its producer on the same store, or (`store` none) the hand-written
/// one-step relay beside hand-written producers. Both sides' writers take turns in-process;
/// the producer's events are due in an hour, so the drain ends with its backlog.
async fn emit_while_draining(
    s: &Arc<Setup>,
    store: Option<&SqliteStore>,
    backlog: usize,
) -> Result<Histogram<u64>, BenchError> {
    truncate(s).await?;
    fill(s, backlog / 2).await?;
    let done = Arc::new(AtomicBool::new(false));
    let producer = {
        let (s, done, store) = (Arc::clone(s), Arc::clone(&done), store.cloned());
        tokio::spawn(async move {
            let mut histogram = Histogram::<u64>::new(3)?;
            let mut n = backlog;
            while !done.load(Ordering::Relaxed) {
                let started = Instant::now();
                transaction(&s, store.as_ref(), n, 256, true).await?;
                histogram.record(started.elapsed().as_micros() as u64)?;
                n += 1;
            }
            Ok::<_, BenchError>(histogram)
        })
    };
    let drained = match store {
        Some(store) => pair::drain(store, ClaimMode::Locked, 4, 100).await,
        None => drain_raw(s, 4, 100, false).await,
    };
    done.store(true, Ordering::Relaxed);
    let histogram = producer.await??;
    drained?;
    Ok(histogram)
}

/// Fills both tables with `backlog` pending events each.
async fn fill(s: &Setup, backlog: usize) -> Result<(), BenchError> {
    for chunk in (0..backlog).step_by(1000) {
        let end = (chunk + 1000).min(backlog);
        let events = (chunk..end)
            .map(|n| event(n, 256))
            .collect::<Result<Vec<_>, _>>()?;
        let mut tx = s.store.begin().await?;
        tx.emit_all(events).await?;
        raw_insert(&mut tx, chunk..end, 256, false).await?;
        tx.commit().await?;
    }
    sqlx::raw_sql("ANALYZE").execute(&s.writer).await?;
    Ok(())
}

/// The relay a user would write by hand: in one write transaction, take the oldest due batch
/// and mark it delivered by rowid; commit. With `two_step`, as a relay must that does not keep
/// every producer waiting while it delivers: mark the batch in flight and commit, then mark it
/// delivered and commit.
async fn drain_raw(
    s: &Setup,
    workers: usize,
    batch: usize,
    two_step: bool,
) -> Result<(u64, Duration), BenchError> {
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let pool = s.writer.clone();
        let turn = Arc::clone(&s.turn);
        tasks.spawn(async move {
            let mut n = 0u64;
            loop {
                let mut held = turn.lock().await;
                let mut tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                let now = Utc::now().timestamp_micros();
                let rows = sqlx::query(AssertSqlSafe(format!(
                    "SELECT rowid, payload FROM {RAW} WHERE status = 'pending' \
                     AND next_attempt_at <= ? ORDER BY next_attempt_at, id LIMIT ?"
                )))
                .bind(now)
                .bind(batch as i64)
                .fetch_all(&mut *tx)
                .await?;
                if rows.is_empty() {
                    tx.commit().await?;
                    return Ok::<u64, BenchError>(n);
                }
                let rowids = rows
                    .iter()
                    .map(|row| row.try_get::<i64, _>("rowid"))
                    .collect::<Result<Vec<_>, _>>()?;
                let marks = vec!["?"; rows.len()].join(", ");
                if two_step {
                    let mut args = SqliteArguments::default();
                    args.add(now + 30_000_000)?;
                    for rowid in &rowids {
                        args.add(*rowid)?;
                    }
                    sqlx::query_with(
                        AssertSqlSafe(format!(
                            "UPDATE {RAW} SET status = 'in_flight', locked_until = ? \
                             WHERE rowid IN ({marks})"
                        )),
                        args,
                    )
                    .execute(&mut *tx)
                    .await?;
                    tx.commit().await?;
                    drop(held);
                    held = turn.lock().await;
                    tx = pool.begin_with("BEGIN IMMEDIATE").await?;
                }
                let mut args = SqliteArguments::default();
                args.add(now)?;
                args.add(now)?;
                for rowid in &rowids {
                    args.add(*rowid)?;
                }
                sqlx::query_with(
                    AssertSqlSafe(format!(
                        "UPDATE {RAW} SET status = 'delivered', attempts = attempts + 1, \
                         delivered_at = ?, updated_at = ?, locked_until = NULL \
                         WHERE rowid IN ({marks})"
                    )),
                    args,
                )
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
                drop(held);
                n += rows.len() as u64;
            }
        });
    }
    let mut delivered = 0;
    while let Some(done) = tasks.join_next().await {
        delivered += done??;
    }
    Ok((delivered, start.elapsed()))
}

/// Drains `backlog` events with the outbox and with the raw baseline (`two_step` or not), two
/// rounds each side going first once; returns both rates in events/s.
async fn relay_pair(
    s: &Setup,
    store: &SqliteStore,
    mode: ClaimMode,
    two_step: bool,
    workers: usize,
    batch: usize,
    backlog: usize,
) -> Result<(f64, f64), BenchError> {
    let refill = || async {
        truncate(s).await?;
        fill(s, backlog / 2).await
    };
    pair::relay_pair(backlog, refill, |raw| async move {
        if raw {
            drain_raw(s, workers, batch, two_step).await
        } else {
            pair::drain(store, mode, workers, batch).await
        }
    })
    .await
}

/// The `sqlite.*` figures.
pub async fn run(args: &Args, summary: &mut Summary) -> Result<(), BenchError> {
    let s = Arc::new(setup().await?);
    let (txs_each, backlog) = if args.quick {
        (200, 20_000)
    } else {
        (1_000, 100_000)
    };
    for producers in [4, 16] {
        truncate(&s).await?;
        let (outbox, raw) = pair::emit_pair(producers, txs_each, |raw, txs, base| {
            let s = Arc::clone(&s);
            async move { produce(&s, raw, txs, 256, base).await }
        })
        .await?;
        let total = pair::emitted(producers, txs_each);
        let (o, r) = (per_second(total, outbox), per_second(total, raw));
        summary.put(
            &format!("sqlite.emit_p{producers}_outbox_tx_per_s"),
            o,
            "tx/s",
        );
        summary.put(&format!("sqlite.emit_p{producers}_raw_tx_per_s"), r, "tx/s");
        summary.put(
            &format!("sqlite.emit_p{producers}_ratio"),
            o / r,
            "outbox/raw",
        );
        if producers == 4 {
            summary.put("sqlite.emit_ratio", o / r, "outbox/raw");
        }
    }
    for (mode, name) in [(ClaimMode::Locked, "locked"), (ClaimMode::Lease, "lease")] {
        let (o, r) = relay_pair(&s, &s.store, mode, false, 4, 100, backlog).await?;
        summary.put(&format!("sqlite.relay_{name}_events_per_s"), o, "events/s");
        summary.put(
            &format!("sqlite.relay_{name}_raw_events_per_s"),
            r,
            "events/s",
        );
        summary.put(&format!("sqlite.relay_{name}_ratio"), o / r, "outbox/raw");
        if mode == ClaimMode::Locked {
            summary.put("sqlite.relay_ratio", o / r, "outbox/raw");
        }
    }
    // Batches marked as they are claimed, as a slow transport's are, beside the hand-written
    // relay that, like them, commits a batch's claim before delivering it.
    let (o, r) = relay_pair(&s, &s.marked, ClaimMode::Locked, true, 4, 100, backlog).await?;
    summary.put("sqlite.relay_marked_events_per_s", o, "events/s");
    summary.put("sqlite.relay_two_step_raw_events_per_s", r, "events/s");
    summary.put("sqlite.relay_marked_ratio", o / r, "outbox/raw");
    // What producers pay while the relay holds the write lock: the store's window, every batch
    // marked at once, and the hand-written one-step relay, which holds it for its whole batch.
    for (name, store) in [
        ("locked", Some(&s.store)),
        ("marked", Some(&s.marked)),
        ("raw", None),
    ] {
        let h = emit_while_draining(&s, store, backlog).await?;
        summary.put(
            &format!("sqlite.emit_while_draining_{name}_p50_ms"),
            ms(&h, 0.5),
            "ms",
        );
        summary.put(
            &format!("sqlite.emit_while_draining_{name}_p99_ms"),
            ms(&h, 0.99),
            "ms",
        );
    }
    s.store.pool().close().await;
    s.writer.close().await;
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", s.path.display()));
    }
    Ok(())
}
