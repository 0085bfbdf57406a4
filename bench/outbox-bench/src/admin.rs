//! The operator's view of a big table: the web admin's list pages, search, overview and counts
//! with millions of events kept (most delivered, some pending, a few dead, twenty types), each
//! as the admin answers it (query and page), beside the full count a naive dashboard runs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{Request, StatusCode};
use http_body_util::BodyExt;
use outbox_core::OutboxStore;
use outbox_postgres::{PgConfig, PgStore};
use sqlx::{AssertSqlSafe, PgPool};
use tower::ServiceExt;

use crate::{BenchError, Summary};

/// Event types: `domain00.happened` … `domain19.happened`.
const TYPES: u64 = 20;

/// Fills the outbox table with `total` events: one in 200 dead (five different errors), the
/// newest 1% pending, the rest delivered, types spread by a hash of the row number (so no type
/// lines up with the dead ones); ids rise with the row number as UUID v7 ids do.
async fn fill(pool: &PgPool, schema: &str, total: u64) -> Result<(), BenchError> {
    sqlx::raw_sql(AssertSqlSafe(format!("TRUNCATE {schema}.outbox_event")))
        .execute(pool)
        .await?;
    let chunk = 1_000_000u64;
    let mut from = 1u64;
    while from <= total {
        let to = (from + chunk - 1).min(total);
        let sql = format!(
            "INSERT INTO {schema}.outbox_event (id, event_type, aggregate_type, aggregate_id, payload, headers, \
             status, attempts, max_attempts, next_attempt_at, created_at, updated_at, delivered_at, last_error) \
             SELECT ('01900000-0000-7000-8000-' || lpad(to_hex(g), 12, '0'))::uuid, \
             'domain' || lpad((abs(hashint8(g)) % {TYPES})::text, 2, '0') || '.happened', 'order', 'o-' || g, \
             jsonb_build_object('n', g, 'pad', repeat('x', 200)), '{{}}', s.status, \
             CASE s.status WHEN 'pending' THEN 0 ELSE 1 END, 10, now(), \
             now() - make_interval(secs => ($2 - g) / 100.0), now(), \
             CASE s.status WHEN 'delivered' THEN now() - make_interval(secs => ($2 - g) / 100.0) END, \
             CASE s.status WHEN 'dead' THEN 'sink answered ' || (400 + g % 5) END \
             FROM generate_series($1::bigint, $3::bigint) AS g, \
             LATERAL (SELECT CASE WHEN g % 200 = 0 THEN 'dead' WHEN g > $2 - $2 / 100 THEN 'pending' \
                                  ELSE 'delivered' END AS status) AS s"
        );
        sqlx::query(AssertSqlSafe(sql))
            .bind(from as i64)
            .bind(total as i64)
            .bind(to as i64)
            .execute(pool)
            .await?;
        from = to + 1;
    }
    sqlx::raw_sql(AssertSqlSafe(format!(
        "VACUUM ANALYZE {schema}.outbox_event"
    )))
    .execute(pool)
    .await?;
    Ok(())
}

/// Median of `samples` runs of `f` (after two unmeasured ones), in milliseconds.
async fn median_ms<F, Fut>(samples: usize, mut f: F) -> Result<f64, BenchError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), BenchError>>,
{
    f().await?;
    f().await?;
    let mut times: Vec<Duration> = Vec::with_capacity(samples);
    for _ in 0..samples {
        let start = Instant::now();
        f().await?;
        times.push(start.elapsed());
    }
    times.sort();
    Ok(times[times.len() / 2].as_secs_f64() * 1000.0)
}

/// One page of the admin, read whole; fails unless it answers 200.
async fn page(router: &axum::Router, uri: &str) -> Result<(), BenchError> {
    let response = router
        .clone()
        .oneshot(Request::get(uri).body(Body::empty())?)
        .await?;
    let status = response.status();
    let body = response.into_body().collect().await?.to_bytes();
    if status != StatusCode::OK {
        return Err(format!("{uri}: {status}: {}", String::from_utf8_lossy(&body)).into());
    }
    Ok(())
}

pub async fn run(
    pool: &PgPool,
    schema: &str,
    quick: bool,
    summary: &mut Summary,
) -> Result<(), BenchError> {
    let (total, label) = if quick {
        (1_000_000, "1m")
    } else {
        (10_000_000, "10m")
    };
    let started = Instant::now();
    fill(pool, schema, total).await?;
    summary.put(
        &format!("admin.fill_s_{label}"),
        started.elapsed().as_secs_f64(),
        "s",
    );
    let store = PgStore::new(pool.clone(), PgConfig::new().with_schema(schema))?;
    let admin = outbox_admin::Admin::new(Arc::new(store.clone()), Default::default());
    let router = admin.router();
    let n = 15;
    let mut figure =
        |name: &str, ms: f64| summary.put(&format!("admin.{name}_ms_{label}"), ms, "ms");

    // The key with a target (docs/benchmarks.md): the first page filtered by status and type.
    figure(
        "list",
        median_ms(n, || {
            page(&router, "/events?status=dead&type=domain07.happened")
        })
        .await?,
    );
    figure(
        "list_pending",
        median_ms(n, || {
            page(&router, "/events?status=pending&type_prefix=domain1")
        })
        .await?,
    );
    figure(
        "list_delivered",
        median_ms(n, || {
            page(&router, "/events?status=delivered&type=domain03.happened")
        })
        .await?,
    );
    figure("list_all", median_ms(n, || page(&router, "/events")).await?);
    let middle = total / 2;
    let search = format!("/events?q=o-{middle}");
    let detail = format!("/events/01900000-0000-7000-8000-{middle:012x}");
    figure(
        "search_aggregate",
        median_ms(n, || page(&router, &search)).await?,
    );
    figure("detail", median_ms(n, || page(&router, &detail)).await?);
    figure(
        "overview",
        median_ms(n, || page(&router, "/overview.json")).await?,
    );
    figure(
        "count_capped",
        median_ms(n, || async {
            store.count_capped(100_000).await?;
            Ok(())
        })
        .await?,
    );
    // What a dashboard that counts everything pays, for comparison.
    figure(
        "count_full",
        median_ms(3, || async {
            store.count_by_status().await?;
            Ok(())
        })
        .await?,
    );
    sqlx::raw_sql(AssertSqlSafe(format!("TRUNCATE {schema}.outbox_event")))
        .execute(pool)
        .await?;
    Ok(())
}
