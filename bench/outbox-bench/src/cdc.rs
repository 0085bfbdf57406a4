//! The log-reading relay (`relay.mode = "stream"`) on a cluster of the run's own with
//! `wal_level = logical` and `fsync` on, beside the claim-based relay and pgmq's drain on the
//! same cluster, and its producers beside plain inserts.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use outbox_core::{DeliveryError, Emit, OutboxEvent, Transport};
use outbox_postgres::PgConfig;
use outbox_postgres::scratch::Cluster;
use outbox_worker::{ClaimMode, Worker};

use crate::latency::{measure, ms};
use crate::peers::Pgmq;
use crate::pg::{self, SCHEMA};
use crate::{Args, BenchError, Summary, per_second};

const SLOT: &str = "outbox_bench";

/// Counts deliveries.
#[derive(Clone, Default)]
struct Counting(Arc<AtomicU64>);

#[async_trait]
impl Transport for Counting {
    async fn deliver(&self, _event: &OutboxEvent) -> Result<(), DeliveryError> {
        self.0.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }
}

pub async fn run(args: &Args, summary: &mut Summary) -> Result<(), BenchError> {
    let cluster = Cluster::start_durable()
        .map_err(|e| format!("the cdc workload needs a cluster with wal_level = logical: {e}"))?;
    let url = cluster.url();
    let s = Arc::new(pg::setup(&url, 40).await?);
    let (backlog, txs_each) = if args.quick {
        (20_000, 400)
    } else {
        (100_000, 2_000)
    };

    // The claim-based relay's headline setting (4 workers, locked claims of 100), same backlog.
    pg::truncate(&s.pool).await?;
    pg::fill(&s, backlog).await?;
    let (claimed, took) =
        pg::drain_with(&s.store, Counting::default(), ClaimMode::Locked, 4, 100, 32).await?;
    let claim_rate = per_second(claimed, took);
    summary.put("cdc.claim_events_per_s", claim_rate, "events/s");
    let pgmq_rate = match &args.pgmq_peer {
        Some(program) => {
            let pgmq = Pgmq::setup(program, &url)?;
            let rate = pgmq.figure(
                &["drain", "--backlog", &backlog.to_string()],
                "events_per_s",
            )?;
            pgmq.teardown()?;
            summary.put("cdc.pgmq_drain_per_s", rate, "events/s");
            Some(rate)
        }
        None => None,
    };
    // Producers on the claim-based table, for the same comparison as in streaming below.
    pg::truncate(&s.pool).await?;
    let (outbox, raw) = pg::emit_pair(&s, 16, txs_each / 4, 1, 256).await?;
    summary.put(
        "cdc.claim_emit_ratio",
        raw.as_secs_f64() / outbox.as_secs_f64(),
        "outbox/raw",
    );

    // Switched to streaming: the same backlog, committed in transactions of 100, then read.
    pg::truncate(&s.pool).await?;
    s.store.start_streaming(SLOT).await?;
    for chunk in (0..backlog).step_by(100) {
        let events = (chunk..(chunk + 100).min(backlog))
            .map(|n| pg::event(n, 256))
            .collect::<Result<Vec<_>, _>>()?;
        let mut tx = s.store.begin().await?;
        tx.emit_all(events).await?;
        tx.commit().await?;
    }
    let counting = Counting::default();
    let reader = Worker::builder(s.store.clone(), counting.clone())
        .worker_id("bench-stream")
        .batch_size(1000)
        .concurrency(32)
        .poll_interval(Duration::from_millis(10))
        .retention(None)
        .build()?;
    let start = Instant::now();
    let running = reader.spawn_stream(s.store.stream(SLOT, &url)?);
    let deadline = start + Duration::from_secs(600);
    while counting.0.load(Ordering::Relaxed) < backlog as u64 {
        if Instant::now() > deadline {
            return Err("the stream did not deliver the backlog within 10 minutes".into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let report = running.shutdown().await?;
    let took = start.elapsed();
    if report.delivered != backlog as u64 {
        return Err(format!("the stream delivered {} of {backlog}", report.delivered).into());
    }
    let rate = per_second(report.delivered, took);
    summary.put("cdc.events_per_s", rate, "events/s");
    summary.put("cdc.vs_claim", rate / claim_rate, "stream/claim");
    if let Some(pgmq) = pgmq_rate {
        summary.put("cdc.vs_pgmq", rate / pgmq, "stream/pgmq");
    }
    let left: i64 = sqlx::query_scalar(sqlx::AssertSqlSafe(format!(
        "SELECT count(*) FROM {SCHEMA}.outbox_event"
    )))
    .fetch_one(&s.pool)
    .await?;
    summary.put("cdc.rows_left", left as f64, "rows");

    // Commit → delivery at 1k/s, one reader on the replication connection.
    let seconds = crate::latency::seconds(args.quick);
    let config = PgConfig::new().with_schema(SCHEMA);
    let h = measure(
        &s.pool,
        config,
        Duration::from_millis(10),
        1000,
        seconds,
        Some((SLOT, &url)),
    )
    .await?;
    summary.put("cdc.p50_ms", ms(&h, 0.50), "ms");
    summary.put("cdc.p99_ms", ms(&h, 0.99), "ms");

    // 16 producers on the streamed table beside the same plain inserts.
    pg::truncate(&s.pool).await?;
    let (outbox, raw) = pg::emit_pair(&s, 16, txs_each / 4, 1, 256).await?;
    summary.put(
        "cdc.emit_ratio",
        raw.as_secs_f64() / outbox.as_secs_f64(),
        "outbox/raw",
    );
    s.store.stop_streaming(SLOT, true).await?;
    s.pool.close().await;
    drop(cluster);
    Ok(())
}
