//! Claim cost as the backlog grows, and a worker's peak memory while draining the largest one.

use std::time::Instant;

use chrono::Utc;
use outbox_core::{Lease, LeaseId, OutboxStore};
use outbox_postgres::{PgConfig, PgStore};
use sqlx::{AssertSqlSafe, PgPool};

use crate::{BenchError, Summary};

/// Adds pending events to the outbox table in one server-side statement until it holds `target`.
/// Ids rise with the row number, as UUID v7 ids rise with time, so the heap and the indexes have
/// the locality a real backlog has.
async fn fill_to(pool: &PgPool, schema: &str, have: u64, target: u64) -> Result<(), BenchError> {
    if target <= have {
        return Ok(());
    }
    let sql = format!(
        "INSERT INTO {schema}.outbox_event (id, event_type, aggregate_type, aggregate_id, payload, headers, \
         status, attempts, max_attempts, next_attempt_at, created_at, updated_at) \
         SELECT ('01900000-0000-7000-8000-' || lpad(to_hex(g), 12, '0'))::uuid, 'file.stored', 'upload', g::text, \
         jsonb_build_object('n', g, 'pad', repeat('x', 216)), '{{}}', 'pending', 0, 10, now(), now(), now() \
         FROM generate_series($1::bigint, $2::bigint) AS g"
    );
    sqlx::query(AssertSqlSafe(sql))
        .bind(have as i64 + 1)
        .bind(target as i64)
        .execute(pool)
        .await?;
    sqlx::raw_sql(AssertSqlSafe(format!(
        "VACUUM ANALYZE {schema}.outbox_event"
    )))
    .execute(pool)
    .await?;
    Ok(())
}

/// Median time of one claim of 100 events (over `samples` claims).
pub(crate) async fn claim_ms(store: &PgStore, samples: usize) -> Result<f64, BenchError> {
    let mut times = Vec::with_capacity(samples);
    for _ in 0..samples {
        let now = Utc::now();
        let lease = Lease {
            id: LeaseId::new(),
            holder: "growth".into(),
            until: now + chrono::TimeDelta::seconds(600),
        };
        let start = Instant::now();
        let claimed = store.claim(&lease, 100, now).await?;
        times.push(start.elapsed());
        if claimed.len() != 100 {
            return Err(format!("a claim returned {} events, expected 100", claimed.len()).into());
        }
    }
    times.sort();
    Ok(times[times.len() / 2].as_secs_f64() * 1000.0)
}

pub async fn run(
    pool: &PgPool,
    schema: &str,
    quick: bool,
    summary: &mut Summary,
) -> Result<u64, BenchError> {
    sqlx::raw_sql(AssertSqlSafe(format!("TRUNCATE {schema}.outbox_event")))
        .execute(pool)
        .await?;
    let store = PgStore::new(pool.clone(), PgConfig::new().with_schema(schema))?;
    let sizes: [(u64, &str); 3] = if quick {
        [(10_000, "10k"), (100_000, "100k"), (300_000, "1m")]
    } else {
        [(10_000, "10k"), (100_000, "100k"), (1_000_000, "1m")]
    };
    let reset = format!(
        "UPDATE {schema}.outbox_event SET status = 'pending', lease_id = NULL, locked_by = NULL, \
         locked_until = NULL WHERE status = 'in_flight'"
    );
    let mut have = 0;
    let mut first = None;
    for (size, label) in sizes {
        fill_to(pool, schema, have, size).await?;
        have = size;
        // Warm up once (plans, caches), then measure.
        claim_ms(&store, 3).await?;
        let ms = claim_ms(&store, 25).await?;
        // Claimed events go back to pending, so the backlog is exactly `size` again.
        sqlx::query(AssertSqlSafe(reset.clone()))
            .execute(pool)
            .await?;
        summary.put(&format!("growth.claim_ms_{label}"), ms, "ms");
        first.get_or_insert(ms);
        if label == "1m" {
            summary.put("growth.ratio", ms / first.unwrap_or(ms), "1m/10k");
        }
    }
    Ok(sizes[2].0)
}

/// Peak resident memory of this process, from /proc (Linux), in MiB.
pub fn peak_rss_mib() -> Option<f64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    let kib: f64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib / 1024.0)
}
