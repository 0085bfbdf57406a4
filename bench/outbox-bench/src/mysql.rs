//! MySQL/MariaDB workloads: emit inside transactions and relay a backlog, each beside the
//! raw SQL a user would otherwise write, on a table of the same columns and indexes (MySQL has
//! no trigger of the outbox's to strip), alternating round by round.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use outbox_core::Emit;
use outbox_mysql::{MySqlConfig, MySqlStore};
use outbox_worker::ClaimMode;
use sqlx::mysql::{MySqlArguments, MySqlPoolOptions};
use sqlx::{Arguments, AssertSqlSafe, MySqlPool, Row};
use uuid::Uuid;

use crate::memory::payload;
use crate::pg::event;
use crate::{Args, BenchError, Summary, pair, per_second};

const TABLE: &str = "outbox_bench_event";
const RAW: &str = "outbox_bench_raw";
const BUSINESS: &str = "outbox_bench_business";

struct Setup {
    pool: MySqlPool,
    store: MySqlStore,
    raw: MySqlStore,
}

async fn setup(url: &str, connections: u32) -> Result<Setup, BenchError> {
    let pool = MySqlPoolOptions::new()
        .max_connections(connections)
        .connect(url)
        .await?;
    let mut held = Vec::new();
    for _ in 0..connections {
        held.push(pool.acquire().await?);
    }
    drop(held);
    let store = MySqlStore::new(pool.clone(), MySqlConfig::new().with_table(TABLE))?;
    // The baseline's table comes from the same migration: the same columns and indexes.
    let raw = MySqlStore::new(pool.clone(), MySqlConfig::new().with_table(RAW))?;
    for s in [&store, &raw] {
        s.migrate_down().await?;
        s.migrate().await?;
    }
    sqlx::raw_sql(AssertSqlSafe(format!(
        "DROP TABLE IF EXISTS {BUSINESS}; \
         CREATE TABLE {BUSINESS} (id BIGINT AUTO_INCREMENT PRIMARY KEY, name TEXT NOT NULL)"
    )))
    .execute(&pool)
    .await?;
    Ok(Setup { pool, store, raw })
}

async fn truncate(pool: &MySqlPool) -> Result<(), BenchError> {
    for table in [TABLE, RAW, BUSINESS] {
        sqlx::raw_sql(AssertSqlSafe(format!("TRUNCATE TABLE {table}")))
            .execute(pool)
            .await?;
    }
    Ok(())
}

/// The baseline's insert of events numbered `range`: one multi-row statement.
async fn raw_insert(
    conn: &mut sqlx::MySqlConnection,
    range: std::ops::Range<usize>,
    bytes: usize,
) -> Result<(), BenchError> {
    let mut args = MySqlArguments::default();
    let now = Utc::now();
    let mut values = Vec::new();
    for n in range {
        args.add(Uuid::now_v7())?;
        args.add("file.stored")?;
        args.add("upload")?;
        args.add(n.to_string())?;
        args.add(serde_json::to_vec(&payload(n, bytes))?)?;
        args.add(now)?;
        values
            .push("(?, ?, ?, ?, ?, '{}', 'pending', 0, 10, ?, UTC_TIMESTAMP(6), UTC_TIMESTAMP(6))");
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
    let business = format!("INSERT INTO {BUSINESS} (name) VALUES (?)");
    for t in 0..txs {
        let n = base + t;
        if raw {
            let mut tx = s.pool.begin().await?;
            sqlx::query(AssertSqlSafe(business.clone()))
                .bind("upload")
                .execute(&mut *tx)
                .await?;
            raw_insert(&mut tx, n..n + 1, bytes).await?;
            tx.commit().await?;
        } else {
            let mut tx = s.store.begin().await?;
            sqlx::query(AssertSqlSafe(business.clone()))
                .bind("upload")
                .execute(&mut *tx)
                .await?;
            tx.emit(event(n, bytes)?).await?;
            tx.commit().await?;
        }
    }
    Ok(())
}

/// Fills both tables with `backlog` pending events each.
async fn fill(s: &Setup, backlog: usize) -> Result<(), BenchError> {
    for chunk in (0..backlog).step_by(1000) {
        let end = (chunk + 1000).min(backlog);
        let events = (chunk..end)
            .map(|n| event(n, 256))
            .collect::<Result<Vec<_>, _>>()?;
        let mut tx = s.pool.begin().await?;
        s.store.emitter(&mut tx).emit_all(events).await?;
        raw_insert(&mut tx, chunk..end, 256).await?;
        tx.commit().await?;
    }
    for table in [TABLE, RAW] {
        sqlx::raw_sql(AssertSqlSafe(format!("ANALYZE TABLE {table}")))
            .execute(&s.pool)
            .await?;
    }
    Ok(())
}

/// The relay a user would write by hand: take a batch with `FOR UPDATE SKIP LOCKED`, mark it
/// delivered by primary key, commit.
async fn drain_raw(s: &Setup, workers: usize, batch: usize) -> Result<(u64, Duration), BenchError> {
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let pool = s.pool.clone();
        tasks.spawn(async move {
            let mut n = 0u64;
            loop {
                // READ COMMITTED, as the store's own transactions: under the default REPEATABLE
                // READ the locking read takes gap locks and concurrent batches deadlock.
                let mut tx = pool
                    .begin_with("SET TRANSACTION ISOLATION LEVEL READ COMMITTED; START TRANSACTION")
                    .await?;
                let rows = sqlx::query(AssertSqlSafe(format!(
                    "SELECT seq, payload FROM {RAW} WHERE status = 'pending' \
                     AND next_attempt_at <= UTC_TIMESTAMP(6) ORDER BY next_attempt_at, id \
                     LIMIT ? FOR UPDATE SKIP LOCKED"
                )))
                .bind(batch as u64)
                .fetch_all(&mut *tx)
                .await?;
                if rows.is_empty() {
                    tx.commit().await?;
                    return Ok::<u64, BenchError>(n);
                }
                let mut args = MySqlArguments::default();
                for row in &rows {
                    args.add(row.try_get::<u64, _>("seq")?)?;
                }
                let marks = vec!["?"; rows.len()].join(", ");
                sqlx::query_with(
                    AssertSqlSafe(format!(
                        "UPDATE {RAW} SET status = 'delivered', attempts = attempts + 1, \
                         delivered_at = UTC_TIMESTAMP(6), updated_at = UTC_TIMESTAMP(6) \
                         WHERE seq IN ({marks})"
                    )),
                    args,
                )
                .execute(&mut *tx)
                .await?;
                tx.commit().await?;
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

/// Drains `backlog` events with the outbox and with the raw baseline, two rounds each side
/// going first once; returns both rates in events/s.
async fn relay_pair(
    s: &Setup,
    mode: ClaimMode,
    workers: usize,
    batch: usize,
    backlog: usize,
) -> Result<(f64, f64), BenchError> {
    let refill = || async {
        truncate(&s.pool).await?;
        fill(s, backlog / 2).await
    };
    pair::relay_pair(backlog, refill, |raw| async move {
        if raw {
            drain_raw(s, workers, batch).await
        } else {
            pair::drain(&s.store, mode, workers, batch).await
        }
    })
    .await
}

/// The `mysql.*` figures.
pub async fn run(args: &Args, url: &str, summary: &mut Summary) -> Result<(), BenchError> {
    let s = Arc::new(setup(url, 40).await?);
    let (txs_each, backlog) = if args.quick {
        (400, 20_000)
    } else {
        (2_000, 100_000)
    };
    for producers in [4, 16] {
        truncate(&s.pool).await?;
        let (outbox, raw) = pair::emit_pair(producers, txs_each, |raw, txs, base| {
            let s = Arc::clone(&s);
            async move { produce(&s, raw, txs, 256, base).await }
        })
        .await?;
        let total = pair::emitted(producers, txs_each);
        let (o, r) = (per_second(total, outbox), per_second(total, raw));
        summary.put(
            &format!("mysql.emit_p{producers}_outbox_tx_per_s"),
            o,
            "tx/s",
        );
        summary.put(&format!("mysql.emit_p{producers}_raw_tx_per_s"), r, "tx/s");
        summary.put(
            &format!("mysql.emit_p{producers}_ratio"),
            o / r,
            "outbox/raw",
        );
        if producers == 4 {
            summary.put("mysql.emit_ratio", o / r, "outbox/raw");
        }
    }
    for (mode, name) in [(ClaimMode::Locked, "locked"), (ClaimMode::Lease, "lease")] {
        let (o, r) = relay_pair(&s, mode, 4, 100, backlog).await?;
        summary.put(&format!("mysql.relay_{name}_events_per_s"), o, "events/s");
        summary.put(
            &format!("mysql.relay_{name}_raw_events_per_s"),
            r,
            "events/s",
        );
        summary.put(&format!("mysql.relay_{name}_ratio"), o / r, "outbox/raw");
        if mode == ClaimMode::Locked {
            summary.put("mysql.relay_ratio", o / r, "outbox/raw");
        }
    }
    truncate(&s.pool).await?;
    for store in [&s.store, &s.raw] {
        store.migrate_down().await?;
    }
    sqlx::raw_sql(AssertSqlSafe(format!("DROP TABLE IF EXISTS {BUSINESS}")))
        .execute(&s.pool)
        .await?;
    Ok(())
}
