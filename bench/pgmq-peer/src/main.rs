//! The pgmq side of the outbox benchmarks: the workloads `outbox-bench` measures on the outbox,
//! done through the `pgmq` crate (its SQL installed from the crate, no server extension) on the
//! same database, so both appear in one run. `outbox-bench` runs this program as a child, once
//! per workload, and reads the figures it prints (`<name> <value>` lines).

use std::collections::HashMap;
use std::process::ExitCode;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use clap::{Parser, Subcommand};
use hdrhistogram::Histogram;
use pgmq::PGMQueueExt;
use sqlx::postgres::PgPoolOptions;
use sqlx::{Executor, PgPool};

/// The queue the workloads use; dropped by `teardown`.
const QUEUE: &str = "outbox_bench_peer";
/// The schema of the business table written beside each message.
const SCHEMA: &str = "pgmq_peer";
/// Visibility timeout of a read, in seconds (the outbox's lease).
const VT: i32 = 30;

type Error = Box<dyn std::error::Error + Send + Sync>;

#[derive(Parser, Debug)]
#[command(name = "pgmq-peer")]
struct Args {
    /// The PostgreSQL to measure.
    #[arg(long, env = "DATABASE_URL")]
    database_url: String,
    #[command(subcommand)]
    workload: Workload,
}

#[derive(Subcommand, Debug)]
enum Workload {
    /// Installs pgmq's SQL (if missing) and creates the queue and business table; prints
    /// `installed 1` if this run installed pgmq.
    Setup,
    /// Transactions of one business row and one message (`pgmq.send`); prints `tx_per_s`.
    Enqueue {
        #[arg(long)]
        producers: usize,
        #[arg(long)]
        txs: usize,
    },
    /// Transactions of one business row and `per_tx` messages (`pgmq.send_batch`); prints
    /// `events_per_s`.
    Batch {
        #[arg(long)]
        producers: usize,
        #[arg(long)]
        txs: usize,
        #[arg(long, default_value_t = 100)]
        per_tx: usize,
    },
    /// Drains a backlog with `consumers` × `batch` (read, then delete on ack), two rounds of
    /// half the backlog; prints `events_per_s`.
    Drain {
        #[arg(long)]
        backlog: usize,
        #[arg(long, default_value_t = 4)]
        consumers: usize,
        #[arg(long, default_value_t = 100)]
        batch: i32,
    },
    /// Commit → read latency at a steady rate, woken by pgmq's insert notification (unthrottled)
    /// with a 1 s poll as the fallback; prints `p50_ms`, `p99_ms`, `max_ms`.
    Latency {
        #[arg(long, default_value_t = 1000)]
        rate: u32,
        #[arg(long)]
        seconds: u64,
    },
    /// Drops the queue and the business table; with `--drop-pgmq`, pgmq's schema too (only
    /// when `setup` installed it).
    Teardown {
        #[arg(long)]
        drop_pgmq: bool,
    },
}

/// The outbox benchmark's payload of `bytes` bytes, numbered `n`.
fn payload(n: usize, bytes: usize) -> serde_json::Value {
    let pad = "x".repeat(bytes.saturating_sub(40));
    serde_json::json!({ "n": n, "pad": pad })
}

fn per_second(count: usize, elapsed: Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64().max(1e-9)
}

async fn run(args: Args) -> Result<(), Error> {
    let pool = PgPoolOptions::new()
        .max_connections(16)
        .connect(&args.database_url)
        .await?;
    let queue = PGMQueueExt::new_with_pool(pool.clone()).await;
    match args.workload {
        Workload::Setup => {
            let installed = queue.installed_version().await.ok().flatten().is_none();
            queue.install_sql_from_embedded().await?;
            queue.create(QUEUE).await?;
            pool.execute(
                format!(
                    "CREATE SCHEMA IF NOT EXISTS {SCHEMA}; \
                     CREATE TABLE IF NOT EXISTS {SCHEMA}.business \
                     (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, name text NOT NULL)"
                )
                .as_str(),
            )
            .await?;
            println!("installed {}", u8::from(installed));
        }
        Workload::Enqueue { producers, txs } => {
            let rate = produce(&pool, &queue, producers, txs, 1).await?;
            println!("tx_per_s {rate:.1}");
        }
        Workload::Batch {
            producers,
            txs,
            per_tx,
        } => {
            let rate = produce(&pool, &queue, producers, txs, per_tx).await?;
            println!("events_per_s {:.1}", rate * per_tx as f64);
        }
        Workload::Drain {
            backlog,
            consumers,
            batch,
        } => {
            let mut total = Duration::ZERO;
            let mut count = 0;
            for _ in 0..2 {
                prepare(&pool, &queue).await?;
                fill(&queue, backlog / 2).await?;
                let (n, t) = drain(&queue, consumers, batch).await?;
                if n != backlog / 2 {
                    return Err(format!("drained {n} of {}", backlog / 2).into());
                }
                count += n;
                total += t;
            }
            println!("events_per_s {:.1}", per_second(count, total));
        }
        Workload::Latency { rate, seconds } => {
            prepare(&pool, &queue).await?;
            let h = latency(&pool, &queue, rate, seconds).await?;
            let ms = |v: u64| v as f64 / 1000.0;
            println!("p50_ms {:.3}", ms(h.value_at_quantile(0.50)));
            println!("p99_ms {:.3}", ms(h.value_at_quantile(0.99)));
            println!("max_ms {:.3}", ms(h.max()));
        }
        Workload::Teardown { drop_pgmq } => {
            queue.drop_queue(QUEUE).await?;
            pool.execute(format!("DROP SCHEMA IF EXISTS {SCHEMA} CASCADE").as_str())
                .await?;
            if drop_pgmq {
                pool.execute("DROP SCHEMA IF EXISTS pgmq CASCADE").await?;
            }
        }
    }
    pool.close().await;
    Ok(())
}

/// Empties the queue and the business table and refreshes their statistics.
async fn prepare(pool: &PgPool, queue: &PGMQueueExt) -> Result<(), Error> {
    queue.purge_queue(QUEUE).await?;
    pool.execute(format!("TRUNCATE {SCHEMA}.business").as_str())
        .await?;
    for table in [format!("pgmq.q_{QUEUE}"), format!("{SCHEMA}.business")] {
        pool.execute(format!("VACUUM ANALYZE {table}").as_str())
            .await?;
    }
    Ok(())
}

/// `producers` tasks, each committing `txs` transactions of one business row and `per_tx`
/// messages, after an unmeasured warm-up of a quarter as many; returns transactions per second.
async fn produce(
    pool: &PgPool,
    queue: &PGMQueueExt,
    producers: usize,
    txs: usize,
    per_tx: usize,
) -> Result<f64, Error> {
    prepare(pool, queue).await?;
    let mut elapsed = Duration::ZERO;
    for (round, count) in [(0, (txs / 4).max(1)), (1, txs)] {
        let start = Instant::now();
        let mut tasks = tokio::task::JoinSet::new();
        for p in 0..producers {
            let (pool, queue) = (pool.clone(), PGMQueueExt::new_with_pool(pool.clone()).await);
            tasks.spawn(async move {
                for t in 0..count {
                    let first = (p * count + t) * per_tx;
                    let mut tx = pool.begin().await?;
                    sqlx::query(&format!("INSERT INTO {SCHEMA}.business (name) VALUES ($1)"))
                        .bind("upload")
                        .execute(&mut *tx)
                        .await?;
                    if per_tx == 1 {
                        queue
                            .send_with_cxn(QUEUE, &payload(first, 256), &mut *tx)
                            .await?;
                    } else {
                        let messages: Vec<_> =
                            (first..first + per_tx).map(|n| payload(n, 256)).collect();
                        queue
                            .send_batch_with_cxn(QUEUE, &messages, &mut *tx)
                            .await?;
                    }
                    tx.commit().await?;
                }
                Ok::<(), Error>(())
            });
        }
        while let Some(done) = tasks.join_next().await {
            done??;
        }
        if round == 1 {
            elapsed = start.elapsed();
        }
    }
    Ok(per_second(producers * txs, elapsed))
}

/// Enqueues `count` messages, 1,000 per statement, then refreshes the queue's statistics.
async fn fill(queue: &PGMQueueExt, count: usize) -> Result<(), Error> {
    for chunk in (0..count).step_by(1000) {
        let messages: Vec<_> = (chunk..(chunk + 1000).min(count))
            .map(|n| payload(n, 256))
            .collect();
        queue.send_batch(QUEUE, &messages).await?;
    }
    queue
        .connection
        .execute(format!("VACUUM ANALYZE pgmq.q_{QUEUE}").as_str())
        .await?;
    Ok(())
}

/// Reads and deletes everything with `consumers` tasks; returns how many and how long.
async fn drain(
    queue: &PGMQueueExt,
    consumers: usize,
    batch: i32,
) -> Result<(usize, Duration), Error> {
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for _ in 0..consumers {
        let queue = PGMQueueExt::new_with_pool(queue.connection.clone()).await;
        tasks.spawn(async move {
            let mut n = 0;
            loop {
                let messages = queue
                    .read_batch::<serde_json::Value>(QUEUE, VT, batch)
                    .await?;
                if messages.is_empty() {
                    return Ok::<usize, Error>(n);
                }
                let ids: Vec<i64> = messages.iter().map(|m| m.msg_id).collect();
                n += queue.delete_batch(QUEUE, &ids).await?;
            }
        });
    }
    let mut count = 0;
    while let Some(done) = tasks.join_next().await {
        count += done??;
    }
    Ok((count, start.elapsed()))
}

type Stamps = Arc<Mutex<HashMap<u64, Instant>>>;

fn stamp(stamps: &Stamps, n: u64) {
    stamps
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .insert(n, Instant::now());
}

/// Offers `rate` messages/s (one per transaction with a business row) for `seconds` while one
/// consumer reads them; returns the commit → read histogram in microseconds.
async fn latency(
    pool: &PgPool,
    queue: &PGMQueueExt,
    rate: u32,
    seconds: u64,
) -> Result<Histogram<u64>, Error> {
    queue.enable_notify_insert(QUEUE, Duration::ZERO).await?;
    let listening = PgPoolOptions::new()
        .max_connections(1)
        .connect_with(pool.connect_options().as_ref().clone())
        .await?;
    let mut listener = queue
        .queue_insert_listener_with_pool(QUEUE, &listening)
        .await?;
    let total = u64::from(rate) * seconds;
    let (committed, arrived) = (Stamps::default(), Stamps::default());
    // The consumer reads on connections of its own, as the outbox's worker has its store's:
    // producers that fall behind must not starve it of the pool.
    let reading = PgPoolOptions::new()
        .max_connections(2)
        .connect_with(pool.connect_options().as_ref().clone())
        .await?;
    let consumer = {
        let queue = PGMQueueExt::new_with_pool(reading.clone()).await;
        let arrived = Arc::clone(&arrived);
        tokio::spawn(async move {
            let mut seen = 0;
            while seen < total {
                // Woken by an insert, or by the fallback poll.
                let _ = tokio::time::timeout(Duration::from_secs(1), listener.recv()).await;
                loop {
                    let messages = queue
                        .read_batch::<serde_json::Value>(QUEUE, VT, 100)
                        .await?;
                    if messages.is_empty() {
                        break;
                    }
                    for m in &messages {
                        if let Some(n) = m.message.get("n").and_then(serde_json::Value::as_u64) {
                            stamp(&arrived, n);
                        }
                    }
                    seen += messages.len() as u64;
                    let ids: Vec<i64> = messages.iter().map(|m| m.msg_id).collect();
                    queue.delete_batch(QUEUE, &ids).await?;
                }
            }
            Ok::<(), Error>(())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut ticker = tokio::time::interval(Duration::from_secs(1) / rate);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut producers = tokio::task::JoinSet::new();
    for n in 0..total {
        ticker.tick().await;
        let (pool, committed) = (pool.clone(), Arc::clone(&committed));
        let queue = PGMQueueExt::new_with_pool(pool.clone()).await;
        producers.spawn(async move {
            let mut tx = pool.begin().await?;
            sqlx::query(&format!("INSERT INTO {SCHEMA}.business (name) VALUES ($1)"))
                .bind("upload")
                .execute(&mut *tx)
                .await?;
            queue
                .send_with_cxn(QUEUE, &payload(n as usize, 256), &mut *tx)
                .await?;
            tx.commit().await?;
            stamp(&committed, n);
            Ok::<(), Error>(())
        });
        while let Some(done) = producers.try_join_next() {
            done??;
        }
    }
    while let Some(done) = producers.join_next().await {
        done??;
    }
    tokio::time::timeout(Duration::from_secs(10), consumer)
        .await
        .map_err(|_| "the consumer did not read every message within 10 s")???;
    queue.disable_notify_insert(QUEUE).await?;
    listening.close().await;
    reading.close().await;

    let committed = std::mem::take(&mut *committed.lock().unwrap_or_else(PoisonError::into_inner));
    let arrived = std::mem::take(&mut *arrived.lock().unwrap_or_else(PoisonError::into_inner));
    let mut histogram = Histogram::<u64>::new(3)?;
    for (n, at) in &committed {
        if let Some(read) = arrived.get(n) {
            histogram.record(read.saturating_duration_since(*at).as_micros() as u64)?;
        }
    }
    if histogram.len() < total {
        return Err(format!("only {} of {total} messages were read", histogram.len()).into());
    }
    Ok(histogram)
}

fn main() -> ExitCode {
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(e) => {
            eprintln!("pgmq-peer: cannot start tokio: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgmq-peer: {e}");
            ExitCode::FAILURE
        }
    }
}
