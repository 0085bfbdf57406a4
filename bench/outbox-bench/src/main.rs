//! Outbox benchmarks: the framework and a raw-SQL baseline doing the same job on the same schema,
//! run in one process and alternated round by round so their ratio holds on a noisy machine.
//!
//! Run through `cargo xtask bench [--quick]` (release mode). Prints a table and writes
//! `target/outbox-bench/summary.json`.

mod admin;
mod cdc;
mod growth;
mod latency;
mod memory;
mod mysql;
mod ordering;
mod pair;
mod peers;
mod pg;
mod plot;
mod sqlite;
mod transports;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;

/// Benchmarks of the outbox against raw SQL.
#[derive(Parser, Debug, Clone)]
#[command(name = "outbox-bench")]
struct Args {
    /// Smaller counts, for a quick check (well under two minutes).
    #[arg(long)]
    quick: bool,
    /// PostgreSQL to measure; the tables live in a schema of their own, dropped afterwards.
    #[arg(long, env = "DATABASE_URL")]
    database_url: Option<String>,
    /// MySQL/MariaDB to measure (the `mysql` workload); its tables are dropped afterwards.
    #[arg(
        long,
        env = "MYSQL_URL",
        default_value = "mysql://root@127.0.0.1:3306/test"
    )]
    mysql_url: String,
    /// Measure delivery through the real transports (NATS, RabbitMQ, Redis, a webhook receiver
    /// on loopback, Kafka on a tansu broker the run starts) instead
    /// of the storage workloads.
    #[arg(long)]
    transports: bool,
    /// Run only these workloads (comma-separated: memory-store, emit, relay, ordering, latency,
    /// growth, rss, admin, cdc, mysql, sqlite); summary.json then holds only their keys.
    #[arg(long, value_delimiter = ',')]
    only: Vec<Workload>,
    /// Internal: drain the benchmark schema with one worker and report this process's peak
    /// memory (run as a child process, so the figure is the worker's alone).
    #[arg(long, hide = true)]
    drain_rss_child: bool,
    /// The `pgmq-peer` program (bench/pgmq-peer), to run pgmq's side of each workload in the
    /// same run; `cargo xtask bench` builds and passes it. Without it, no `peers.*` figures.
    #[arg(long)]
    pgmq_peer: Option<PathBuf>,
    /// Where to write summary.json.
    #[arg(long, default_value = "target/outbox-bench")]
    out: PathBuf,
}

/// One workload of the storage benchmark, for `--only`.
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum Workload {
    /// Emits and deliveries on the memory store.
    MemoryStore,
    /// Emit inside transactions, beside plain inserts.
    Emit,
    /// Draining a backlog, beside the raw claim-and-mark.
    Relay,
    /// Commit-to-delivery latency.
    Latency,
    /// Per-key ordering: keyed emit, relay and claim beside the same without keys.
    Ordering,
    /// Claim cost as the backlog grows.
    Growth,
    /// Peak memory of a worker draining the largest backlog (needs the growth backlog).
    Rss,
    /// The web admin's pages, search and counts on ten million kept events.
    Admin,
    /// The log-reading relay on a cluster of its own (`wal_level = logical`), beside the
    /// claim-based relay, pgmq and plain inserts.
    Cdc,
    /// Emit and relay on MySQL/MariaDB, beside the raw SQL a user would write.
    Mysql,
    /// Emit and relay on SQLite (a file in the temporary directory), beside the raw SQL a user
    /// would write.
    Sqlite,
}

impl Args {
    /// Whether `workload` is to run.
    pub fn runs(&self, workload: Workload) -> bool {
        self.only.is_empty() || self.only.contains(&workload)
    }
}

/// Collected figures, by dotted key.
#[derive(Default, Debug)]
pub struct Summary(BTreeMap<String, f64>);

impl Summary {
    /// Records one figure and prints it as a table row.
    pub fn put(&mut self, key: &str, value: f64, unit: &str) {
        if unit.contains('/') && value < 100.0 {
            println!("{key:<44} {value:>14.3} {unit}");
        } else {
            println!("{key:<44} {value:>14.1} {unit}");
        }
        self.0.insert(key.to_owned(), value);
    }

    /// A figure recorded earlier.
    pub fn get(&self, key: &str) -> Option<f64> {
        self.0.get(key).copied()
    }

    fn to_json(&self) -> serde_json::Value {
        let mut root = serde_json::Map::new();
        for (key, value) in &self.0 {
            let (group, name) = key.split_once('.').unwrap_or(("misc", key));
            let entry = root
                .entry(group)
                .or_insert_with(|| serde_json::Value::Object(Default::default()));
            if let serde_json::Value::Object(map) = entry {
                map.insert(name.to_owned(), serde_json::json!(value));
            }
        }
        serde_json::Value::Object(root)
    }
}

/// Events per second, guarding against a zero duration.
pub fn per_second(count: u64, elapsed: std::time::Duration) -> f64 {
    count as f64 / elapsed.as_secs_f64().max(1e-9)
}

type BenchError = Box<dyn std::error::Error + Send + Sync>;

async fn run(args: Args) -> Result<Summary, BenchError> {
    let mut summary = Summary::default();
    println!("{:<44} {:>14} unit", "figure", "value");
    if args.transports {
        let url = args
            .database_url
            .clone()
            .ok_or("set DATABASE_URL (or --database-url)")?;
        transports::run(&url, args.quick, &mut summary).await?;
        return Ok(summary);
    }
    if args.runs(Workload::MemoryStore) {
        memory::run(&args, &mut summary).await?;
    }
    if args.runs(Workload::Mysql) {
        mysql::run(&args, &args.mysql_url, &mut summary).await?;
    }
    if args.runs(Workload::Sqlite) {
        sqlite::run(&args, &mut summary).await?;
    }
    if args.runs(Workload::Cdc) {
        cdc::run(&args, &mut summary).await?;
    }
    if !args.only.is_empty()
        && args.only.iter().all(|w| {
            matches!(
                w,
                Workload::Cdc | Workload::Mysql | Workload::Sqlite | Workload::MemoryStore
            )
        })
    {
        return Ok(summary);
    }
    let url = args
        .database_url
        .clone()
        .ok_or("set DATABASE_URL (or --database-url) to a PostgreSQL the benchmark may use")?;
    pg::run(&args, &url, &mut summary).await?;
    Ok(summary)
}

fn main() -> ExitCode {
    let args = Args::parse();
    if args.drain_rss_child {
        return pg::drain_rss_child(&args);
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("outbox-bench: cannot start tokio: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args.clone())) {
        Ok(summary) => {
            let path = args.out.join(if args.transports {
                "transports.json"
            } else {
                "summary.json"
            });
            let written = std::fs::create_dir_all(&args.out)
                .and_then(|()| std::fs::write(&path, format!("{:#}\n", summary.to_json())));
            match written {
                Ok(()) => {
                    println!("wrote {}", path.display());
                    ExitCode::SUCCESS
                }
                Err(e) => {
                    eprintln!("outbox-bench: cannot write {}: {e}", path.display());
                    ExitCode::FAILURE
                }
            }
        }
        Err(e) => {
            eprintln!("outbox-bench: {e}");
            ExitCode::FAILURE
        }
    }
}
