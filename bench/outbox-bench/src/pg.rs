//! PostgreSQL workloads: emit inside transactions and relay a backlog, each beside its raw-SQL
//! baseline on an identical table, alternating round by round.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use outbox_core::{Emit, NewEvent, Transport};
use outbox_postgres::{PgConfig, PgStore};
use outbox_worker::{ClaimMode, Worker};
use sqlx::postgres::PgPoolOptions;
use sqlx::{AssertSqlSafe, PgPool};
use uuid::Uuid;

use crate::memory::{NoopTransport, payload};
use crate::peers::Pgmq;
use crate::{Args, BenchError, Summary, Workload, per_second};

pub(crate) const SCHEMA: &str = "outbox_bench";
const ROUNDS: usize = 4;

pub(crate) struct Setup {
    pub(crate) pool: PgPool,
    pub(crate) store: PgStore,
}

pub(crate) async fn setup(url: &str, connections: u32) -> Result<Setup, BenchError> {
    let pool = PgPoolOptions::new()
        .max_connections(connections)
        .connect(url)
        .await?;
    // Open every connection now, so that no measured run pays for connecting.
    let mut held = Vec::new();
    for _ in 0..connections {
        held.push(pool.acquire().await?);
    }
    drop(held);
    sqlx::raw_sql(AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS {SCHEMA} CASCADE; CREATE SCHEMA {SCHEMA}; \
         CREATE TABLE {SCHEMA}.business (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text NOT NULL);"
    )))
    .execute(&pool)
    .await?;
    let store = PgStore::new(pool.clone(), PgConfig::new().with_schema(SCHEMA))?;
    store.migrate().await?;
    // The baseline's table: the same migration, so the same columns, constraints and indexes,
    // but without the notification trigger: the baseline is what a user would write by hand,
    // and must not carry the cost being measured (a NOTIFY serialises committing transactions).
    PgStore::new(
        pool.clone(),
        PgConfig::new().with_schema(SCHEMA).with_table("raw_event"),
    )?
    .migrate()
    .await?;
    // Nor the per-key ordering triggers (they fire only for keyed rows, which the baseline never
    // writes, but their conditions would still be evaluated on every row), nor the streamed
    // rows' admission on update.
    for trigger in ["notify", "admit", "readmit", "unstream"] {
        sqlx::raw_sql(AssertSqlSafe(format!(
            "DROP TRIGGER raw_event_{trigger} ON {SCHEMA}.raw_event"
        )))
        .execute(&pool)
        .await?;
    }
    Ok(Setup { pool, store })
}

pub(crate) async fn truncate(pool: &PgPool) -> Result<(), BenchError> {
    sqlx::raw_sql(AssertSqlSafe(format!(
        "TRUNCATE {SCHEMA}.outbox_event, {SCHEMA}.raw_event, {SCHEMA}.business"
    )))
    .execute(pool)
    .await?;
    analyze(pool).await
}

/// VACUUM ANALYZE both event tables (one statement each: VACUUM refuses a transaction block).
async fn analyze(pool: &PgPool) -> Result<(), BenchError> {
    for table in ["outbox_event", "raw_event"] {
        sqlx::raw_sql(AssertSqlSafe(format!("VACUUM ANALYZE {SCHEMA}.{table}")))
            .execute(pool)
            .await?;
    }
    Ok(())
}

pub(crate) fn event(n: usize, bytes: usize) -> Result<NewEvent, BenchError> {
    Ok(NewEvent::builder("file.stored", "upload", n.to_string())
        .payload(payload(n, bytes))
        .build()?)
}

const BUSINESS: &str = "INSERT INTO outbox_bench.business (name) VALUES ($1)";
const RAW_INSERT: &str = "INSERT INTO outbox_bench.raw_event (id, event_type, aggregate_type, aggregate_id, \
     payload, headers, status, attempts, max_attempts, next_attempt_at, created_at, updated_at) \
     VALUES ($1, $2, $3, $4, $5, '{}', 'pending', 0, 10, $6, $6, $6)";
const RAW_INSERT_MANY: &str = "INSERT INTO outbox_bench.raw_event (id, event_type, aggregate_type, aggregate_id, \
     payload, headers, status, attempts, max_attempts, next_attempt_at, created_at, updated_at) \
     SELECT u.id, 'file.stored', 'upload', u.agg, u.payload, '{}', 'pending', 0, 10, $4, $4, $4 \
     FROM UNNEST($1::uuid[], $2::text[], $3::jsonb[]) AS u(id, agg, payload)";
const RAW_RELAY: &str = "UPDATE outbox_bench.raw_event SET status = 'delivered', attempts = attempts + 1, \
     delivered_at = now(), updated_at = now() \
     WHERE id IN (SELECT id FROM outbox_bench.raw_event WHERE status = 'pending' AND next_attempt_at <= now() \
     ORDER BY next_attempt_at, id LIMIT $1 FOR UPDATE SKIP LOCKED) RETURNING id, payload";

/// The baseline's multi-row insert of events numbered `range`.
async fn raw_insert_many(
    conn: &mut sqlx::PgConnection,
    range: std::ops::Range<usize>,
    bytes: usize,
) -> Result<(), BenchError> {
    let ids: Vec<Uuid> = range.clone().map(|_| Uuid::now_v7()).collect();
    let aggs: Vec<String> = range.clone().map(|n| n.to_string()).collect();
    let payloads: Vec<serde_json::Value> = range.map(|n| payload(n, bytes)).collect();
    sqlx::query(RAW_INSERT_MANY)
        .bind(ids)
        .bind(aggs)
        .bind(payloads)
        .bind(Utc::now())
        .execute(conn)
        .await?;
    Ok(())
}

/// One producer's share of a round: `txs` transactions of one business row plus `per_tx` events.
async fn produce(
    s: &Setup,
    raw: bool,
    txs: usize,
    per_tx: usize,
    bytes: usize,
    base: usize,
) -> Result<(), BenchError> {
    for t in 0..txs {
        let first = base + t * per_tx;
        if raw {
            let mut tx = s.pool.begin().await?;
            sqlx::query(BUSINESS)
                .bind("upload")
                .execute(&mut *tx)
                .await?;
            if per_tx == 1 {
                sqlx::query(RAW_INSERT)
                    .bind(Uuid::now_v7())
                    .bind("file.stored")
                    .bind("upload")
                    .bind(first.to_string())
                    .bind(payload(first, bytes))
                    .bind(Utc::now())
                    .execute(&mut *tx)
                    .await?;
            } else {
                raw_insert_many(&mut tx, first..first + per_tx, bytes).await?;
            }
            tx.commit().await?;
        } else {
            // The store's transaction boundary, as applications use it.
            let mut tx = s.store.begin().await?;
            sqlx::query(BUSINESS)
                .bind("upload")
                .execute(&mut *tx)
                .await?;
            let events = (first..first + per_tx)
                .map(|n| event(n, bytes))
                .collect::<Result<Vec<_>, _>>()?;
            tx.emit_all(events).await?;
            tx.commit().await?;
        }
    }
    Ok(())
}

/// `producers` concurrent producers, alternating outbox and raw rounds; returns the total time
/// of each side.
///
/// An unmeasured warm-up round of each side comes first, so that neither side pays for opening
/// the pool's connections or preparing statements on them; then the sides take turns going
/// first, so that neither always runs on the other's leftovers (dirty buffers, WAL to flush).
pub(crate) async fn emit_pair(
    s: &Arc<Setup>,
    producers: usize,
    txs_each: usize,
    per_tx: usize,
    bytes: usize,
) -> Result<(Duration, Duration), BenchError> {
    let mut totals = [Duration::ZERO; 2];
    let per_round = (txs_each / ROUNDS).max(1);
    let warm_up = (per_round / 4).max(1);
    for round in 0..=ROUNDS {
        let order = if round % 2 == 0 {
            [false, true]
        } else {
            [true, false]
        };
        for raw in order {
            let txs = if round == 0 { warm_up } else { per_round };
            let start = Instant::now();
            let mut tasks = tokio::task::JoinSet::new();
            for p in 0..producers {
                let s = Arc::clone(s);
                let base = ((round * producers + p) * per_round) * per_tx;
                tasks.spawn(async move { produce(&s, raw, txs, per_tx, bytes, base).await });
            }
            while let Some(done) = tasks.join_next().await {
                done??;
            }
            if round > 0 {
                totals[usize::from(raw)] += start.elapsed();
            }
        }
    }
    Ok((totals[0], totals[1]))
}

/// Fills both tables with `backlog` pending events each.
pub(crate) async fn fill(s: &Setup, backlog: usize) -> Result<(), BenchError> {
    for chunk in (0..backlog).step_by(1000) {
        let end = (chunk + 1000).min(backlog);
        let events = (chunk..end)
            .map(|n| event(n, 256))
            .collect::<Result<Vec<_>, _>>()?;
        let mut tx = s.pool.begin().await?;
        s.store.emitter(&mut tx).emit_all(events).await?;
        raw_insert_many(&mut tx, chunk..end, 256).await?;
        tx.commit().await?;
    }
    analyze(&s.pool).await
}

/// Drains `backlog` events with the outbox (through `store`) and with the raw baseline, two
/// rounds each side going first once; returns both rates in events/s.
async fn relay_pair(
    s: &Setup,
    store: &PgStore,
    mode: ClaimMode,
    workers: usize,
    batch: usize,
    backlog: usize,
) -> Result<(f64, f64), BenchError> {
    let mut times = [Duration::ZERO; 2];
    let mut counts = [0u64; 2];
    for round in 0..2 {
        truncate(&s.pool).await?;
        fill(s, backlog / 2).await?;
        for raw in [round == 1, round == 0] {
            let (n, t) = if raw {
                drain_raw(s, workers, batch).await?
            } else {
                drain_with(store, NoopTransport, mode, workers, batch, 32).await?
            };
            counts[usize::from(raw)] += n;
            times[usize::from(raw)] += t;
        }
    }
    if counts != [backlog as u64 / 2 * 2; 2] {
        return Err(format!("relay delivered {counts:?} of {backlog} each").into());
    }
    Ok((
        per_second(counts[0], times[0]),
        per_second(counts[1], times[1]),
    ))
}

/// Drains the store's backlog with `workers` workers delivering through `transport`, claiming
/// in `mode`; returns how many events were delivered and how long it took.
pub(crate) async fn drain_with<T: Transport + Clone + 'static>(
    store: &PgStore,
    transport: T,
    mode: ClaimMode,
    workers: usize,
    batch: usize,
    concurrency: usize,
) -> Result<(u64, Duration), BenchError> {
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for w in 0..workers {
        let worker = Worker::builder(store.clone(), transport.clone())
            .worker_id(format!("bench-{w}"))
            .batch_size(batch)
            .concurrency(concurrency)
            .claim_mode(mode)
            .retention(None)
            .build()?;
        tasks.spawn(async move { worker.run_until_idle().await });
    }
    let mut delivered = 0;
    while let Some(done) = tasks.join_next().await {
        delivered += done??.delivered;
    }
    Ok((delivered, start.elapsed()))
}

async fn drain_raw(s: &Setup, workers: usize, batch: usize) -> Result<(u64, Duration), BenchError> {
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..workers {
        let pool = s.pool.clone();
        tasks.spawn(async move {
            let mut n = 0u64;
            loop {
                let rows = sqlx::query(RAW_RELAY)
                    .bind(batch as i64)
                    .fetch_all(&pool)
                    .await?;
                if rows.is_empty() {
                    return Ok::<u64, sqlx::Error>(n);
                }
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

pub async fn run(args: &Args, url: &str, summary: &mut Summary) -> Result<(), BenchError> {
    let s = Arc::new(setup(url, 72).await?);
    let (txs_each, batch_txs, backlog) = if args.quick {
        (400, 40, 20_000)
    } else {
        (2_000, 200, 100_000)
    };
    let sizes: &[usize] = if args.quick { &[256] } else { &[256, 4096] };
    let pgmq = match &args.pgmq_peer {
        Some(program) => Some(Pgmq::setup(program, url)?),
        None => {
            println!("note: no --pgmq-peer given (cargo xtask bench passes it): no pgmq figures");
            None
        }
    };

    for &bytes in sizes.iter().filter(|_| args.runs(Workload::Emit)) {
        for producers in [1, 4, 16, 64] {
            truncate(&s.pool).await?;
            let each = txs_each / producers.min(4);
            let (outbox, raw) = emit_pair(&s, producers, each, 1, bytes).await?;
            let total = ((each / ROUNDS).max(1) * ROUNDS * producers) as u64;
            let key = format!("emit.p{producers}_{bytes}b");
            let (o, r) = (per_second(total, outbox), per_second(total, raw));
            summary.put(&format!("{key}_outbox_tx_per_s"), o, "tx/s");
            summary.put(&format!("{key}_raw_tx_per_s"), r, "tx/s");
            if producers == 4 && bytes == 256 {
                summary.put("emit.outbox_tx_per_s", o, "tx/s");
                summary.put("emit.raw_tx_per_s", r, "tx/s");
                summary.put("emit.ratio", o / r, "outbox/raw");
            }
            if producers >= 16 && bytes == 256 {
                summary.put(&format!("emit.p{producers}_ratio"), o / r, "outbox/raw");
            }
        }
        if let (Some(pgmq), 256) = (&pgmq, bytes) {
            // The same transactions as the outbox's 4 producers: one business row, one message.
            let txs = ((txs_each / 4) / ROUNDS).max(1) * ROUNDS;
            let rate = pgmq.figure(
                &["enqueue", "--producers", "4", "--txs", &txs.to_string()],
                "tx_per_s",
            )?;
            summary.put("peers.pgmq_enqueue_tx_per_s", rate, "tx/s");
            if let Some(o) = summary.get("emit.outbox_tx_per_s") {
                summary.put("emit.vs_pgmq", o / rate, "outbox/pgmq");
            }
        }
        truncate(&s.pool).await?;
        let (outbox, raw) = emit_pair(&s, 4, batch_txs, 100, bytes).await?;
        let total = ((batch_txs / ROUNDS).max(1) * ROUNDS * 4 * 100) as u64;
        let (o, r) = (per_second(total, outbox), per_second(total, raw));
        summary.put(
            &format!("emit.batch100_p4_{bytes}b_outbox_events_per_s"),
            o,
            "events/s",
        );
        summary.put(
            &format!("emit.batch100_p4_{bytes}b_raw_events_per_s"),
            r,
            "events/s",
        );
        if bytes == 256 {
            summary.put("emit.batch_events_per_s", o, "events/s");
            summary.put("emit.batch_raw_events_per_s", r, "events/s");
            if let Some(pgmq) = &pgmq {
                let txs = ((batch_txs / ROUNDS).max(1) * ROUNDS).to_string();
                let rate = pgmq.figure(
                    &[
                        "batch",
                        "--producers",
                        "4",
                        "--txs",
                        &txs,
                        "--per-tx",
                        "100",
                    ],
                    "events_per_s",
                )?;
                summary.put("peers.pgmq_batch_per_s", rate, "events/s");
                summary.put("emit.batch_vs_pgmq", o / rate, "outbox/pgmq");
            }
        }
    }

    let batches: &[usize] = if args.quick { &[100] } else { &[10, 100, 1000] };
    let mut plot = Vec::new();
    // The relay's default claim mode (locked) is the headline; leases beside it at batch 100.
    let deleting = PgStore::new(
        s.pool.clone(),
        PgConfig::new()
            .with_schema(SCHEMA)
            .with_delete_delivered(true),
    )?;
    for &batch in batches.iter().filter(|_| args.runs(Workload::Relay)) {
        for workers in [1, 4] {
            let key = format!("relay.w{workers}_b{batch}");
            let (o, r) =
                relay_pair(&s, &s.store, ClaimMode::Locked, workers, batch, backlog).await?;
            summary.put(&format!("{key}_outbox_events_per_s"), o, "events/s");
            summary.put(&format!("{key}_raw_events_per_s"), r, "events/s");
            plot.push((workers, batch, o, r, None));
            if batch != 100 {
                continue;
            }
            let (lo, lr) =
                relay_pair(&s, &s.store, ClaimMode::Lease, workers, batch, backlog).await?;
            summary.put(&format!("{key}_lease_events_per_s"), lo, "events/s");
            summary.put(&format!("{key}_lease_raw_events_per_s"), lr, "events/s");
            // The same with acknowledged events deleted instead of kept as delivered.
            let (d, dr) =
                relay_pair(&s, &deleting, ClaimMode::Locked, workers, batch, backlog).await?;
            summary.put(&format!("{key}_delete_events_per_s"), d, "events/s");
            summary.put(&format!("{key}_delete_raw_events_per_s"), dr, "events/s");
            if workers != 4 {
                continue;
            }
            summary.put("relay.outbox_events_per_s", o, "events/s");
            summary.put("relay.raw_events_per_s", r, "events/s");
            summary.put("relay.ratio", o / r, "outbox/raw");
            summary.put("relay.lease_events_per_s", lo, "events/s");
            summary.put("relay.lease_ratio", lo / lr, "outbox/raw");
            summary.put("relay.delete_events_per_s", d, "events/s");
            summary.put("relay.delete_ratio", d / dr, "outbox/raw");
            let (ld, ldr) =
                relay_pair(&s, &deleting, ClaimMode::Lease, workers, batch, backlog).await?;
            summary.put("relay.lease_delete_events_per_s", ld, "events/s");
            summary.put("relay.lease_delete_ratio", ld / ldr, "outbox/raw");
            if let Some(pgmq) = &pgmq {
                // 4 consumers × 100, read then delete on ack, the same backlog.
                let rate = pgmq.figure(
                    &["drain", "--backlog", &backlog.to_string()],
                    "events_per_s",
                )?;
                summary.put("peers.pgmq_drain_per_s", rate, "events/s");
                if let Some(row) = plot.last_mut() {
                    row.4 = Some(rate);
                }
                summary.put("relay.vs_pgmq", o / rate, "outbox/pgmq");
                summary.put("relay.lease_vs_pgmq", lo / rate, "outbox/pgmq");
                summary.put("relay.delete_vs_pgmq", d / rate, "outbox/pgmq");
            }
        }
    }
    if !plot.is_empty() {
        let svg = crate::plot::relay_svg(&plot);
        std::fs::create_dir_all(&args.out)?;
        std::fs::write(args.out.join("relay.svg"), svg)?;
    }

    if args.runs(Workload::Ordering) {
        crate::ordering::run(&s, args.quick, summary).await?;
    }

    // Flush the relay runs' writes first, so the latency run does not pay for their write-back.
    truncate(&s.pool).await?;
    if let Err(e) = sqlx::query("CHECKPOINT").execute(&s.pool).await {
        eprintln!("note: CHECKPOINT refused ({e}); latency may include earlier write-back");
    }
    if args.runs(Workload::Latency) {
        crate::latency::run(&s.pool, SCHEMA, args.quick, summary).await?;
        if let Some(pgmq) = &pgmq {
            let seconds = crate::latency::seconds(args.quick).to_string();
            let figures = pgmq.run(&["latency", "--rate", "1000", "--seconds", &seconds])?;
            for (name, value) in figures {
                summary.put(&format!("peers.pgmq_{name}"), value, "ms");
            }
        }
    }
    // The worker's peak memory is measured draining the growth workload's largest backlog.
    if args.runs(Workload::Growth) || args.runs(Workload::Rss) {
        let backlog = crate::growth::run(&s.pool, SCHEMA, args.quick, summary).await?;
        if args.runs(Workload::Rss) {
            let (delivered, rss) = drain_in_child(url)?;
            if delivered != backlog {
                return Err(
                    format!("the memory run delivered {delivered} of {backlog} events").into(),
                );
            }
            summary.put("memory.worker_peak_rss_mib", rss, "MiB");
            summary.put("memory.backlog_events", backlog as f64, "events");
        }
    }

    if args.runs(Workload::Admin) {
        crate::admin::run(&s.pool, SCHEMA, args.quick, summary).await?;
    }

    sqlx::raw_sql(AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"
    )))
    .execute(&s.pool)
    .await?;
    if let Some(pgmq) = pgmq {
        pgmq.teardown()?;
    }
    Ok(())
}

/// Runs this program again as a child that drains the backlog with one worker; returns what it
/// delivered and its peak RSS in MiB.
fn drain_in_child(url: &str) -> Result<(u64, f64), BenchError> {
    let exe = std::env::current_exe()?;
    let output = std::process::Command::new(exe)
        .args(["--drain-rss-child", "--database-url", url])
        .output()?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout
        .lines()
        .find(|l| l.starts_with("drained "))
        .ok_or_else(|| {
            format!(
                "the drain child failed: {}",
                String::from_utf8_lossy(&output.stderr)
            )
        })?;
    let mut parts = line.split_whitespace().skip(1);
    let delivered = parts
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or("bad child output")?;
    let rss = parts
        .next()
        .and_then(|n| n.parse().ok())
        .ok_or("bad child output")?;
    Ok((delivered, rss))
}

/// The child's side of [`drain_in_child`]: prints `drained <events> <peak RSS MiB>`.
pub fn drain_rss_child(args: &Args) -> std::process::ExitCode {
    let run = async {
        let url = args.database_url.clone().ok_or("no database URL")?;
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .connect(&url)
            .await?;
        let store = PgStore::new(pool, PgConfig::new().with_schema(SCHEMA))?;
        let worker = Worker::builder(store, NoopTransport)
            .claim_mode(ClaimMode::Locked)
            .batch_size(100)
            .concurrency(32)
            .retention(None)
            .build()?;
        let report = worker.run_until_idle().await?;
        Ok::<u64, BenchError>(report.delivered)
    };
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(BenchError::from)
        .and_then(|rt| rt.block_on(run));
    match (result, crate::growth::peak_rss_mib()) {
        (Ok(delivered), Some(rss)) => {
            println!("drained {delivered} {rss:.1}");
            std::process::ExitCode::SUCCESS
        }
        (Err(e), _) => {
            eprintln!("drain child: {e}");
            std::process::ExitCode::FAILURE
        }
        (Ok(_), None) => {
            eprintln!("drain child: no /proc/self/status on this system");
            std::process::ExitCode::FAILURE
        }
    }
}
