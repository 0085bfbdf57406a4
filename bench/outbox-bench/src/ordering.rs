//! Per-key ordering: what keys cost on emit, on relay and on a claim, each beside the same work
//! without keys in the same run.

use std::sync::Arc;
use std::time::{Duration, Instant};

use outbox_core::{Emit, NewEvent, OutboxStore};
use outbox_worker::ClaimMode;
use sqlx::{AssertSqlSafe, PgPool};

use crate::memory::{NoopTransport, payload};
use crate::pg::{SCHEMA, Setup, drain_with, truncate};
use crate::{BenchError, Summary, per_second};

/// Rows per fill statement: each statement takes one lock per distinct key it admits, and
/// PostgreSQL's lock table is shared (`max_locks_per_transaction` × connections).
const FILL_CHUNK: u64 = 2_000;

/// Adds `count` pending events of 256 B, numbered from `first`, in server-side statements;
/// event `g` carries ordering key `k{g % keys}` (none when `keys` is 0), so a key's events are
/// admitted in their numbers' order.
async fn fill(
    pool: &PgPool,
    first: u64,
    count: u64,
    keys: u64,
    prefix: &str,
) -> Result<(), BenchError> {
    let key = if keys == 0 {
        "NULL".to_owned()
    } else {
        format!("$3 || (g % {keys})::text")
    };
    let sql = format!(
        "INSERT INTO {SCHEMA}.outbox_event (id, event_type, aggregate_type, aggregate_id, payload, headers, \
         ordering_key, status, attempts, max_attempts, next_attempt_at, created_at, updated_at) \
         SELECT ('01900000-0000-7000-8000-' || lpad(to_hex(g), 12, '0'))::uuid, 'order.changed', 'order', g::text, \
         jsonb_build_object('n', g, 'pad', repeat('x', 216)), '{{}}', {key}, 'pending', 0, 10, now(), now(), now() \
         FROM generate_series($1::bigint, $2::bigint) AS g ORDER BY g"
    );
    let mut at = first;
    while at < first + count {
        let end = (at + FILL_CHUNK).min(first + count);
        sqlx::query(AssertSqlSafe(sql.clone()))
            .bind(at as i64)
            .bind(end as i64 - 1)
            .bind(prefix)
            .execute(pool)
            .await?;
        at = end;
    }
    sqlx::raw_sql(AssertSqlSafe(format!(
        "VACUUM ANALYZE {SCHEMA}.outbox_event"
    )))
    .execute(pool)
    .await?;
    Ok(())
}

/// Drains the outbox table with 4 locked workers × 100 until nothing is left (a worker stops
/// when a claim comes back empty, which with keys can happen while other workers' settlements
/// are about to promote more); returns how many were delivered and how long it took.
async fn drain(s: &Setup) -> Result<(u64, Duration), BenchError> {
    let start = Instant::now();
    let mut delivered = 0;
    loop {
        let (n, _) = drain_with(&s.store, NoopTransport, ClaimMode::Locked, 4, 100, 32).await?;
        delivered += n;
        let c = s.store.count_by_status().await?;
        if c.waiting + c.pending + c.in_flight == 0 {
            return Ok((delivered, start.elapsed()));
        }
        if n == 0 {
            return Err(format!("the drain stalled with {c:?}").into());
        }
    }
}

/// One producer's transactions: a business row and one event, with a key of its own or none.
async fn produce(s: &Setup, keyed: bool, txs: usize, base: usize) -> Result<(), BenchError> {
    for t in 0..txs {
        let n = base + t;
        let mut event =
            NewEvent::builder("order.changed", "order", n.to_string()).payload(payload(n, 256));
        if keyed {
            event = event.ordering_key(format!("order-{n}"));
        }
        let mut tx = s.store.begin().await?;
        sqlx::query("INSERT INTO outbox_bench.business (name) VALUES ($1)")
            .bind("order")
            .execute(&mut *tx)
            .await?;
        tx.emit(event.build()?).await?;
        tx.commit().await?;
    }
    Ok(())
}

/// Keyed and unkeyed emits by 4 producers, alternating rounds; returns both rates in tx/s.
async fn emit_pair(s: &Arc<Setup>, txs_each: usize) -> Result<(f64, f64), BenchError> {
    const PRODUCERS: usize = 4;
    const ROUNDS: usize = 4;
    let per_round = (txs_each / ROUNDS).max(1);
    let mut totals = [Duration::ZERO; 2];
    for round in 0..=ROUNDS {
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for keyed in order {
            let txs = if round == 0 {
                (per_round / 4).max(1)
            } else {
                per_round
            };
            let start = Instant::now();
            let mut tasks = tokio::task::JoinSet::new();
            for p in 0..PRODUCERS {
                let s = Arc::clone(s);
                let base = (usize::from(keyed) * (ROUNDS + 1) + round) * PRODUCERS * per_round
                    + p * per_round;
                tasks.spawn(async move { produce(&s, keyed, txs, base).await });
            }
            while let Some(done) = tasks.join_next().await {
                done??;
            }
            if round > 0 {
                totals[usize::from(!keyed)] += start.elapsed();
            }
        }
    }
    let total = (per_round * ROUNDS * PRODUCERS) as u64;
    Ok((per_second(total, totals[0]), per_second(total, totals[1])))
}

/// Median time of one claim of 100 over 25 claims (after 3 to warm up), the claimed events put
/// back afterwards.
async fn claim_ms(s: &Setup) -> Result<f64, BenchError> {
    crate::growth::claim_ms(&s.store, 3).await?;
    let ms = crate::growth::claim_ms(&s.store, 25).await?;
    sqlx::query(AssertSqlSafe(format!(
        "UPDATE {SCHEMA}.outbox_event SET status = 'pending', lease_id = NULL, locked_by = NULL, \
         locked_until = NULL WHERE status = 'in_flight'"
    )))
    .execute(&s.pool)
    .await?;
    Ok(ms)
}

pub async fn run(s: &Arc<Setup>, quick: bool, summary: &mut Summary) -> Result<(), BenchError> {
    let (txs_each, backlog, keys, hot) = if quick {
        (400, 100_000, 1_000, 20_000)
    } else {
        (2_000, 1_000_000, 10_000, 100_000)
    };

    truncate(&s.pool).await?;
    let (keyed, plain) = emit_pair(s, txs_each).await?;
    summary.put("ordering.emit_keyed_tx_per_s", keyed, "tx/s");
    summary.put("ordering.emit_unkeyed_tx_per_s", plain, "tx/s");
    summary.put("ordering.emit_ratio", keyed / plain, "keyed/unkeyed");

    // The same backlog with keys and without, half each round, each side going first once.
    let mut times = [Duration::ZERO; 2];
    let mut counts = [0u64; 2];
    for round in 0..2 {
        for ordered in [round == 0, round == 1] {
            truncate(&s.pool).await?;
            fill(&s.pool, 1, backlog / 2, if ordered { keys } else { 0 }, "k").await?;
            let (n, t) = drain(s).await?;
            counts[usize::from(!ordered)] += n;
            times[usize::from(!ordered)] += t;
        }
    }
    if counts != [backlog / 2 * 2; 2] {
        return Err(format!("the ordering relay delivered {counts:?} of {backlog} each").into());
    }
    let (o, u) = (
        per_second(counts[0], times[0]),
        per_second(counts[1], times[1]),
    );
    summary.put("ordering.uniform_events_per_s", o, "events/s");
    summary.put("ordering.unordered_events_per_s", u, "events/s");
    summary.put("ordering.ratio", o / u, "keyed/unkeyed");

    // One claim when the oldest `hot` pending events share one key, and when they are spread
    // over `keys` keys; the same number of events either way.
    truncate(&s.pool).await?;
    fill(&s.pool, 1, hot, 1, "hot").await?;
    fill(&s.pool, hot + 1, hot, keys, "k").await?;
    let hot_ms = claim_ms(s).await?;
    truncate(&s.pool).await?;
    fill(&s.pool, 1, 2 * hot, keys, "k").await?;
    let uniform_ms = claim_ms(s).await?;
    summary.put("ordering.hot_claim_ms", hot_ms, "ms");
    summary.put("ordering.uniform_claim_ms", uniform_ms, "ms");
    summary.put(
        "ordering.hot_claim_ratio",
        hot_ms / uniform_ms,
        "hot/uniform",
    );
    truncate(&s.pool).await?;
    Ok(())
}
