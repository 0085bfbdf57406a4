//! The chaos test: several `outbox relay` processes deliver to NATS JetStream (half of them
//! holding their batches under locked claims, half under leases) while events are emitted (some in transactions that roll back), relays are killed with SIGKILL at random, the
//! database is crashed and restarted once and the broker is stopped and restarted once. Then
//! what the broker stored is checked against what was committed:
//!
//! - lost = 0: every committed event reached the stream;
//! - rolled-back delivered = 0: no event of a rolled-back transaction did;
//! - duplicates counted, and at most what the faults can explain (each kill or restart can
//!   repeat at most the batches in flight at the time);
//! - every row's final state is delivered, with no lease left;
//! - order per key: half the events carry one of 32 ordering keys; on each key, the first
//!   copies the stream holds are in commit order (the producer commits one transaction at a
//!   time, so commit order is emission order).
//!
//! It starts everything it uses on spare loopback ports, so the shared services are never
//! restarted: its own `nats-server`, and its own database — a PostgreSQL cluster
//! (`pg_createcluster`, dropped at the end), a MariaDB server (`mariadb-install-db` and
//! `mariadbd` in the run's directory; crashed with SIGKILL), or a SQLite file (no server to
//! crash: the relays killed mid-write are its crashes). Run it through `cargo xtask chaos
//! [--quick]`; it needs root (for `pg_createcluster` and `mariadbd`), PostgreSQL's and MariaDB's
//! server packages and `nats-server`.
//!
//! ```text
//! outbox-chaos --outbox target/debug/outbox [--database postgres|mysql|sqlite] [--quick]
//!              [--events N] [--seed S]
//! ```

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use async_nats::jetstream;
use futures_util::StreamExt;
use outbox_core::{
    Emit, EventFilter, EventId, NewEvent, OutboxStore, Status, Transaction, Transactional,
};
use outbox_mysql::{MySqlConfig, MySqlStore};
use outbox_postgres::{PgConfig, PgStore};
use outbox_sqlite::{SqliteConfig, SqliteStore};

/// The run's shape.
#[derive(Clone, Debug)]
struct Plan {
    events: usize,
    relays: usize,
    workers: usize,
    batch: usize,
    /// How long emitting takes; the faults happen meanwhile.
    emit_for: Duration,
    broker_down: Duration,
    seed: u64,
    database: Backend,
}

/// The database the run starts for itself.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Backend {
    Postgres,
    MySql,
    Sqlite,
}

impl Plan {
    fn from_args() -> Result<(Self, PathBuf), String> {
        let mut args = std::env::args().skip(1);
        let mut outbox = None;
        let mut quick = false;
        let mut events = None;
        let mut seed = None;
        let mut database = Backend::Postgres;
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--outbox" => outbox = args.next().map(PathBuf::from),
                "--database" => {
                    database = match args.next().as_deref() {
                        Some("postgres") => Backend::Postgres,
                        Some("mysql") => Backend::MySql,
                        Some("sqlite") => Backend::Sqlite,
                        other => {
                            return Err(format!(
                                "--database takes postgres, mysql or sqlite, not {other:?}"
                            ));
                        }
                    }
                }
                "--quick" => quick = true,
                "--events" => events = args.next().and_then(|n| n.parse().ok()),
                "--seed" => seed = args.next().and_then(|n| n.parse().ok()),
                other => return Err(format!("unknown argument {other:?}")),
            }
        }
        let outbox = outbox.ok_or("--outbox PATH (the outbox binary) is required")?;
        let seed = seed.unwrap_or_else(|| fastrand::u64(..));
        let plan = if quick {
            Plan {
                events: events.unwrap_or(20_000),
                relays: 3,
                workers: 2,
                batch: 50,
                emit_for: Duration::from_secs(20),
                broker_down: Duration::from_secs(3),
                seed,
                database,
            }
        } else {
            Plan {
                events: events.unwrap_or(100_000),
                relays: 4,
                workers: 2,
                batch: 100,
                emit_for: Duration::from_secs(100),
                broker_down: Duration::from_secs(10),
                seed,
                database,
            }
        };
        Ok((plan, outbox))
    }
}

fn main() -> ExitCode {
    let (plan, outbox) = match Plan::from_args() {
        Ok(p) => p,
        Err(e) => {
            eprintln!("outbox-chaos: {e}");
            return ExitCode::FAILURE;
        }
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .expect("a runtime");
    match runtime.block_on(run(plan, outbox)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("outbox-chaos: FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

/// A free loopback port.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

fn sh(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("cannot run {program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

/// A PostgreSQL cluster of the run's own, dropped when this is.
struct Cluster {
    version: String,
    name: String,
    port: u16,
}

impl Cluster {
    fn create() -> Result<Self, String> {
        let version = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|d| d.filter_map(Result::ok).map(|e| e.file_name()).max())
            .map(|v| v.to_string_lossy().into_owned())
            .ok_or("PostgreSQL's server is not installed: apt-get install postgresql")?;
        let port = free_port();
        let name = format!("chaos{}", std::process::id());
        let port_text = port.to_string();
        sh(
            "pg_createcluster",
            &[
                &version,
                &name,
                "-p",
                &port_text,
                "-o",
                "max_connections=200",
                "--",
                "--auth=trust",
            ],
        )
        .map_err(|e| format!("{e} (the chaos test needs root and postgresql-common)"))?;
        let cluster = Self {
            version,
            name,
            port,
        };
        cluster.ctl(&["start"])?;
        Ok(cluster)
    }

    fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    fn ctl(&self, action: &[&str]) -> Result<(), String> {
        let mut args = vec!["--skip-systemctl-redirect", &self.version, &self.name];
        args.extend(action);
        sh("pg_ctlcluster", &args)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = sh("pg_dropcluster", &["--stop", &self.version, &self.name]);
    }
}

/// A MariaDB server of the run's own: its data directory in the run's, on a spare port.
struct MariaDb {
    dir: PathBuf,
    port: u16,
    child: Option<Child>,
}

impl MariaDb {
    fn create(dir: &Path) -> Result<Self, String> {
        let dir = dir.join("mariadb");
        let data = dir.join("data");
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        sh(
            "mariadb-install-db",
            &[
                "--no-defaults",
                &format!("--datadir={}", data.display()),
                "--auth-root-authentication-method=normal",
                "--skip-test-db",
                "--user=root",
            ],
        )
        .map_err(|e| format!("{e} (the chaos test needs root and mariadb-server)"))?;
        let mut server = Self {
            dir,
            port: free_port(),
            child: None,
        };
        server.up()?;
        Ok(server)
    }

    fn url(&self) -> String {
        format!("mysql://root@127.0.0.1:{}/chaos", self.port)
    }

    fn up(&mut self) -> Result<(), String> {
        let child = Command::new("mariadbd")
            .arg("--no-defaults")
            .arg(format!("--datadir={}", self.dir.join("data").display()))
            .arg(format!("--port={}", self.port))
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--socket={}", self.dir.join("sock").display()))
            .arg(format!(
                "--log-error={}",
                self.dir.join("error.log").display()
            ))
            .args(["--user=root", "--max-connections=300"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start mariadbd: {e} (apt-get install mariadb-server)"))?;
        self.child = Some(child);
        Ok(())
    }

    /// Kills the server (SIGKILL): a crash, from which InnoDB recovers on the next start.
    fn crash(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        self.crash();
    }
}

/// The run's database.
enum Database {
    Postgres(Cluster),
    MariaDb(MariaDb),
    /// A file in the run's directory.
    Sqlite(PathBuf),
}

impl Database {
    fn create(backend: Backend, dir: &Path) -> Result<Self, String> {
        Ok(match backend {
            Backend::Postgres => Self::Postgres(Cluster::create()?),
            Backend::MySql => Self::MariaDb(MariaDb::create(dir)?),
            Backend::Sqlite => Self::Sqlite(dir.join("chaos.db")),
        })
    }

    fn url(&self) -> String {
        match self {
            Self::Postgres(cluster) => cluster.url(),
            Self::MariaDb(server) => server.url(),
            Self::Sqlite(path) => format!("sqlite://{}", path.display()),
        }
    }

    /// Crashes the server and starts it again after `down`; false if there is no server.
    async fn crash(&mut self, down: Duration) -> Result<bool, String> {
        match self {
            Self::Postgres(cluster) => {
                cluster.ctl(&["stop", "-m", "immediate"])?;
                tokio::time::sleep(down).await;
                cluster.ctl(&["start"])?;
            }
            Self::MariaDb(server) => {
                server.crash();
                tokio::time::sleep(down).await;
                server.up()?;
            }
            Self::Sqlite(_) => return Ok(false),
        }
        Ok(true)
    }
}

/// The run's own `nats-server` with JetStream, its store in a directory of the run's.
struct Nats {
    port: u16,
    dir: PathBuf,
    child: Option<Child>,
}

impl Nats {
    fn start(dir: &Path) -> Result<Self, String> {
        let mut nats = Self {
            port: free_port(),
            dir: dir.join("nats"),
            child: None,
        };
        nats.up()?;
        Ok(nats)
    }

    fn url(&self) -> String {
        format!("nats://127.0.0.1:{}", self.port)
    }

    fn up(&mut self) -> Result<(), String> {
        let program = [
            "/usr/sbin/nats-server",
            "/usr/local/bin/nats-server",
            "/usr/bin/nats-server",
        ]
        .into_iter()
        .find(|p| Path::new(p).exists())
        .ok_or("nats-server is not installed: apt-get install nats-server")?;
        let child = Command::new(program)
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(&self.dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start nats-server: {e}"))?;
        self.child = Some(child);
        Ok(())
    }

    /// Stops the server gracefully (SIGTERM): what it acknowledged is on disk.
    fn down(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = sh("kill", &["-TERM", &child.id().to_string()]);
            let _ = child.wait();
        }
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.down();
    }
}

/// The relay processes, each restartable in its slot.
struct Relays {
    outbox: PathBuf,
    /// One configuration per claim mode; slot `i` runs `configs[i % 2]`, so locked and leased
    /// workers share the table through every fault.
    configs: Vec<PathBuf>,
    database_url: String,
    logs: PathBuf,
    slots: Vec<Option<Child>>,
    started: usize,
}

impl Relays {
    fn start(&mut self, slot: usize) -> Result<(), String> {
        self.started += 1;
        let log = std::fs::File::create(self.logs.join(format!("relay-{}.log", self.started)))
            .map_err(|e| e.to_string())?;
        let child = Command::new(&self.outbox)
            .args(["relay", "--config"])
            .arg(&self.configs[slot % self.configs.len()])
            .env("DATABASE_URL", &self.database_url)
            .env("HOSTNAME", format!("chaos-{slot}"))
            .env("RUST_LOG", "warn")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", self.outbox.display()))?;
        self.slots[slot] = Some(child);
        Ok(())
    }

    fn kill(&mut self, slot: usize) {
        if let Some(mut child) = self.slots[slot].take() {
            let _ = child.kill(); // SIGKILL
            let _ = child.wait();
        }
    }

    /// SIGTERM to every relay, then waits for each to exit. A relay restarted a moment ago may
    /// not have its SIGTERM handler yet (the signal would kill it before its first line of
    /// code): each gets the signal once the kernel says it catches it (bounded).
    fn stop_all(&mut self) -> Vec<(usize, bool)> {
        for child in self.slots.iter().flatten() {
            let deadline = Instant::now() + Duration::from_secs(10);
            while !catches_sigterm(child.id()) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = sh("kill", &["-TERM", &child.id().to_string()]);
        }
        let mut exits = Vec::new();
        for (slot, child) in self.slots.iter_mut().enumerate() {
            if let Some(mut child) = child.take() {
                exits.push((slot, child.wait().map(|s| s.success()).unwrap_or(false)));
            }
        }
        exits
    }
}

/// Whether process `pid` has a handler for SIGTERM (`SigCgt` in `/proc/PID/status`); false
/// once it is gone.
fn catches_sigterm(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|status| {
            status
                .lines()
                .find_map(|l| l.strip_prefix("SigCgt:"))
                .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        })
        .is_some_and(|mask| mask & (1 << (15 - 1)) != 0)
}

impl Drop for Relays {
    fn drop(&mut self) {
        for slot in 0..self.slots.len() {
            self.kill(slot);
        }
    }
}

/// What the producer did.
#[derive(Default)]
struct Emitted {
    committed: HashSet<EventId>,
    rolled_back: HashSet<EventId>,
    /// The commit call failed (the database went away during it): committed or not.
    uncertain: HashSet<EventId>,
    failed_transactions: u64,
    /// Events that carry an ordering key: the key and the event's place in emission order.
    keyed: HashMap<EventId, (usize, usize)>,
}

/// Ordering keys the keyed half of the events share.
const ORDERING_KEYS: usize = 32;

/// Events whose first copy in the stream comes after the first copy of a later event of their
/// key (`received` in stream order).
fn out_of_order(received: &[EventId], keyed: &HashMap<EventId, (usize, usize)>) -> Vec<String> {
    let mut seen = HashSet::new();
    let mut last: HashMap<usize, usize> = HashMap::new();
    let mut wrong = Vec::new();
    for id in received {
        let Some((key, n)) = keyed.get(id) else {
            continue;
        };
        if !seen.insert(*id) {
            continue;
        }
        if let Some(before) = last.insert(*key, *n)
            && before > *n
        {
            wrong.push(format!("k{key}: {n} after {before}"));
        }
    }
    wrong
}

async fn emit_all<S: Transactional>(store: S, plan: Plan) -> Emitted {
    let mut rng = fastrand::Rng::with_seed(plan.seed ^ 0x5eed);
    let mut out = Emitted::default();
    let start = Instant::now();
    let mut made = 0usize;
    while made < plan.events {
        // Paced so that emitting spans the faults.
        let due = plan.emit_for.mul_f64(made as f64 / plan.events as f64);
        if let Some(wait) = due.checked_sub(start.elapsed()) {
            tokio::time::sleep(wait).await;
        }
        let size = rng.usize(1..=20).min(plan.events - made);
        let roll_back = rng.u8(..10) == 0;
        let mut ids = Vec::with_capacity(size);
        let mut keyed = Vec::new();
        let result: Result<(), outbox_core::StoreError> = async {
            let mut tx = store.begin().await?;
            for i in 0..size {
                let n = made + i;
                let mut event = NewEvent::builder("chaos.tick", "chaos", format!("{n}"))
                    .payload(serde_json::json!({ "n": n }))
                    .max_attempts(1_000);
                let key = n.is_multiple_of(2).then_some((n / 2) % ORDERING_KEYS);
                if let Some(key) = key {
                    event = event.ordering_key(format!("k{key}"));
                }
                let id = tx.emit(event.build().expect("a valid event")).await?.id();
                if let Some(key) = key {
                    keyed.push((id, (key, n)));
                }
                ids.push(id);
            }
            if roll_back {
                tx.rollback().await
            } else {
                match tx.commit().await {
                    Ok(()) => Ok(()),
                    Err(e) => {
                        out.uncertain.extend(ids.drain(..));
                        Err(e)
                    }
                }
            }
        }
        .await;
        out.keyed.extend(keyed);
        match result {
            Ok(()) if roll_back => out.rolled_back.extend(ids),
            Ok(()) => out.committed.extend(ids),
            Err(_) => {
                // Failed before the commit: the transaction is gone, nothing of it committed.
                out.rolled_back.extend(ids);
                out.failed_transactions += 1;
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue; // the same events again
            }
        }
        made += size;
    }
    out
}

async fn run(plan: Plan, outbox: PathBuf) -> Result<(), String> {
    let began = Instant::now();
    eprintln!("outbox-chaos: {plan:?}");
    let dir = std::env::temp_dir().join(format!("outbox-chaos-{}", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let db = Database::create(plan.database, &dir)?;
    let nats = Nats::start(&dir)?;
    let run = Run {
        plan,
        outbox,
        dir,
        db,
        nats,
        began,
    };
    // The database, migrated, and the producer's store on it.
    let url = run.db.url();
    let store_error = |e: outbox_core::StoreError| e.to_string();
    match run.plan.database {
        Backend::Postgres => {
            let pool = connect(&url).await?;
            let store = PgStore::new(pool, PgConfig::new()).map_err(|e| e.to_string())?;
            store.migrate().await.map_err(store_error)?;
            chaos_on(store, run).await
        }
        Backend::MySql => {
            let pool = connect_mysql(&url).await?;
            let store = MySqlStore::new(pool, MySqlConfig::new()).map_err(|e| e.to_string())?;
            store.migrate().await.map_err(store_error)?;
            chaos_on(store, run).await
        }
        Backend::Sqlite => {
            let store = SqliteStore::connect(&url, SqliteConfig::new())
                .await
                .map_err(store_error)?;
            store.migrate().await.map_err(store_error)?;
            chaos_on(store, run).await
        }
    }
}

/// What a run started for itself.
struct Run {
    plan: Plan,
    outbox: PathBuf,
    dir: PathBuf,
    db: Database,
    nats: Nats,
    began: Instant,
}

async fn chaos_on<S>(store: S, run: Run) -> Result<(), String>
where
    S: OutboxStore + Transactional + Clone + 'static,
{
    let Run {
        plan,
        outbox,
        dir,
        mut db,
        mut nats,
        began,
    } = run;
    // The stream that receives everything, keeping duplicates: JetStream would drop a repeat of
    // a message id inside its duplicate window, which would hide what the relays sent.
    let client = connect_nats(&nats.url()).await?;
    let js = jetstream::new(client);
    js.create_stream(jetstream::stream::Config {
        name: "CHAOS".into(),
        subjects: vec!["chaos.>".into()],
        storage: jetstream::stream::StorageType::File,
        duplicate_window: Duration::from_millis(100),
        ..Default::default()
    })
    .await
    .map_err(|e| format!("cannot create the stream: {e}"))?;

    let mut configs = Vec::new();
    for claim in ["locked", "lease"] {
        let config = dir.join(format!("relay-{claim}.toml"));
        std::fs::write(
            &config,
            format!(
                "[relay]\nworkers = {}\nbatch_size = {}\nconcurrency = 16\npoll_interval_ms = 200\n\
                 claim = \"{claim}\"\nlease_secs = 5\ndelivery_timeout_secs = 2\nshutdown_grace_secs = 3\n\
                 startup_timeout_secs = 120\n\
                 [[routes]]\npattern = \"*\"\ntransport = \"nats\"\nurl = \"{}\"\nsubject = \"chaos.{{event_type}}\"\n",
                plan.workers,
                plan.batch,
                nats.url()
            ),
        )
        .map_err(|e| e.to_string())?;
        configs.push(config);
    }
    let mut relays = Relays {
        outbox,
        configs,
        database_url: db.url(),
        logs: dir.clone(),
        slots: (0..plan.relays).map(|_| None).collect(),
        started: 0,
    };
    for slot in 0..plan.relays {
        relays.start(slot)?;
    }

    let producer = tokio::spawn(emit_all(store.clone(), plan.clone()));

    // Faults while the producer runs: a relay killed every 1–2 s, the database crashed once
    // (at 30%; SQLite has no server), the broker stopped once (at 60%).
    let mut rng = fastrand::Rng::with_seed(plan.seed);
    let mut kills = 0u64;
    let (mut db_restarted, mut broker_restarted) = (false, false);
    let mut db_crashes = 0u64;
    let chaos_start = Instant::now();
    while !producer.is_finished() {
        tokio::time::sleep(Duration::from_millis(rng.u64(1000..2000))).await;
        let slot = rng.usize(..plan.relays);
        relays.kill(slot);
        kills += 1;
        tokio::time::sleep(Duration::from_millis(rng.u64(0..500))).await;
        relays.start(slot)?;
        let progress = chaos_start.elapsed().as_secs_f64() / plan.emit_for.as_secs_f64();
        if !db_restarted && progress >= 0.3 {
            if !matches!(db, Database::Sqlite(_)) {
                eprintln!("outbox-chaos: crashing the database, 2 s down");
            }
            if db.crash(Duration::from_secs(2)).await? {
                db_crashes += 1;
            }
            db_restarted = true;
        }
        if !broker_restarted && progress >= 0.6 {
            eprintln!(
                "outbox-chaos: stopping the broker for {}s",
                plan.broker_down.as_secs()
            );
            nats.down();
            tokio::time::sleep(plan.broker_down).await;
            nats.up()?;
            broker_restarted = true;
        }
    }
    let emitted = producer.await.map_err(|e| e.to_string())?;
    eprintln!(
        "outbox-chaos: emitted {} committed, {} rolled back, {} uncertain, {} transactions failed; {kills} kills",
        emitted.committed.len(),
        emitted.rolled_back.len(),
        emitted.uncertain.len(),
        emitted.failed_transactions
    );

    // Drain: every row leaves pending and in-flight (bounded; a stuck run fails).
    let drain_start = Instant::now();
    loop {
        match store.count_by_status().await {
            Ok(c) if c.waiting == 0 && c.pending == 0 && c.in_flight == 0 => break,
            _ if drain_start.elapsed() > Duration::from_secs(300) => {
                return Err("the relays did not drain the outbox within 300 s".into());
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let drained_in = drain_start.elapsed();
    let exits = relays.stop_all();

    // What the broker stored.
    let received = read_stream(&js).await?;
    let mut copies: HashMap<EventId, u64> = HashMap::new();
    for id in &received {
        *copies.entry(*id).or_default() += 1;
    }
    let rows = final_rows(&store).await?;
    let lost: Vec<&EventId> = emitted
        .committed
        .iter()
        .filter(|id| !copies.contains_key(id))
        .collect();
    let rolled_back_delivered = emitted
        .rolled_back
        .iter()
        .filter(|id| copies.contains_key(id))
        .count();
    let uncertain_committed = emitted
        .uncertain
        .iter()
        .filter(|id| rows.contains_key(id))
        .count();
    let uncertain_inconsistent = emitted
        .uncertain
        .iter()
        .filter(|id| rows.contains_key(id) != copies.contains_key(id))
        .count();
    let foreign = copies.keys().filter(|id| !rows.contains_key(id)).count();
    let bad_rows: Vec<_> = rows
        .iter()
        .filter(|(_, (status, locked))| *status != Some(Status::Delivered) || *locked)
        .take(5)
        .collect();
    let duplicates = received.len() as u64 - copies.len() as u64;
    let disordered = out_of_order(&received, &emitted.keyed);
    let keyed_delivered = emitted
        .keyed
        .keys()
        .filter(|id| copies.contains_key(id))
        .count();
    // Each fault can repeat at most what was in flight then: every worker's batch.
    let faults = kills + db_crashes + 1;
    let bound = faults * (plan.workers * plan.batch) as u64;
    let unclean_exits: Vec<usize> = exits
        .iter()
        .filter(|(_, ok)| !ok)
        .map(|(slot, _)| *slot)
        .collect();

    let summary = serde_json::json!({
        "events": plan.events,
        "committed": emitted.committed.len(),
        "rolled_back": emitted.rolled_back.len(),
        "uncertain_commits": emitted.uncertain.len(),
        "uncertain_committed": uncertain_committed,
        "relays": plan.relays,
        "kills": kills,
        "database": format!("{:?}", plan.database),
        "database_restarts": db_crashes,
        "broker_restarts": u8::from(broker_restarted),
        "received": received.len(),
        "lost": lost.len(),
        "rolled_back_delivered": rolled_back_delivered,
        "duplicates": duplicates,
        "duplicate_bound": bound,
        "keyed_delivered": keyed_delivered,
        "out_of_order": disordered.len(),
        "drain_seconds": drained_in.as_secs_f64(),
        "total_seconds": began.elapsed().as_secs_f64(),
        "seed": plan.seed,
    });
    println!("{summary}");
    if let Some(out) = std::env::var_os("OUTBOX_CHAOS_SUMMARY") {
        let _ = std::fs::write(out, format!("{summary:#}\n"));
    }

    let mut failures = Vec::new();
    if !lost.is_empty() {
        failures.push(format!(
            "{} committed events lost, e.g. {}",
            lost.len(),
            lost[0]
        ));
    }
    if rolled_back_delivered > 0 {
        failures.push(format!(
            "{rolled_back_delivered} rolled-back events delivered"
        ));
    }
    if uncertain_inconsistent > 0 {
        failures.push(format!(
            "{uncertain_inconsistent} events of commits with an unknown outcome are in the table but not delivered, or delivered but not in the table"
        ));
    }
    if foreign > 0 {
        failures.push(format!("{foreign} delivered ids are not in the table"));
    }
    if !bad_rows.is_empty() {
        failures.push(format!("rows not cleanly delivered: {bad_rows:?}"));
    }
    if rows.len() != emitted.committed.len() + uncertain_committed {
        failures.push(format!(
            "{} rows, expected {} committed",
            rows.len(),
            emitted.committed.len() + uncertain_committed
        ));
    }
    if !disordered.is_empty() {
        failures.push(format!(
            "{} keyed events reached the stream out of commit order, e.g. {}",
            disordered.len(),
            disordered[0]
        ));
    }
    if duplicates > bound {
        failures.push(format!(
            "{duplicates} duplicates, more than {faults} faults × {} in flight can explain",
            plan.workers * plan.batch
        ));
    }
    if !db_restarted || !broker_restarted {
        failures.push("the run ended before both restarts happened".into());
    }
    if !unclean_exits.is_empty() {
        failures.push(format!(
            "relays in slots {unclean_exits:?} did not exit cleanly on SIGTERM (logs in {})",
            dir.display()
        ));
    }
    drop(relays);
    drop(nats);
    drop(db);
    if failures.is_empty() {
        let _ = std::fs::remove_dir_all(&dir);
        eprintln!(
            "outbox-chaos: passed on {:?}: {} committed events delivered, 0 lost, 0 rolled back delivered, {} keyed in commit order, {duplicates} duplicates ({kills} kills, {db_crashes} database crash, 1 broker outage) in {:.0}s",
            plan.database,
            emitted.committed.len() + uncertain_committed,
            keyed_delivered,
            began.elapsed().as_secs_f64()
        );
        Ok(())
    } else {
        Err(failures.join("; "))
    }
}

async fn connect(url: &str) -> Result<sqlx::PgPool, String> {
    sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .acquire_timeout(Duration::from_secs(30))
        .connect(url)
        .await
        .map_err(|e| format!("cannot connect to the run's database: {e}"))
}

/// A pool on the run's MariaDB server once it answers, its `chaos` database created.
async fn connect_mysql(url: &str) -> Result<sqlx::MySqlPool, String> {
    use std::str::FromStr;
    let options = sqlx::mysql::MySqlConnectOptions::from_str(url).map_err(|e| e.to_string())?;
    let mut last = String::new();
    for _ in 0..300 {
        match sqlx::MySqlPool::connect_with(options.clone().database("mysql")).await {
            Ok(server) => {
                sqlx::query("CREATE DATABASE IF NOT EXISTS chaos")
                    .execute(&server)
                    .await
                    .map_err(|e| e.to_string())?;
                server.close().await;
                return sqlx::mysql::MySqlPoolOptions::new()
                    .max_connections(4)
                    .acquire_timeout(Duration::from_secs(30))
                    .connect_with(options)
                    .await
                    .map_err(|e| format!("cannot connect to the run's database: {e}"));
            }
            Err(e) => last = e.to_string(),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("the run's mariadbd did not come up: {last}"))
}

/// Every row's status (`None` if it cannot be read) and whether a worker still holds it,
/// through the store's own listing.
async fn final_rows<S: OutboxStore>(
    store: &S,
) -> Result<HashMap<EventId, (Option<Status>, bool)>, String> {
    let mut rows = HashMap::new();
    let mut after = None;
    loop {
        let page = store
            .list(&EventFilter {
                after,
                limit: 1000,
                ..Default::default()
            })
            .await
            .map_err(|e| e.to_string())?;
        for event in &page.events {
            let held = event.lifecycle.lease.is_some();
            rows.insert(event.id, (Some(event.status()), held));
        }
        for row in &page.undecodable {
            rows.insert(row.id, (None, false));
        }
        match page.last_id() {
            Some(last) => after = Some(last),
            None => return Ok(rows),
        }
    }
}

async fn connect_nats(url: &str) -> Result<async_nats::Client, String> {
    for _ in 0..100 {
        if let Ok(client) = async_nats::connect(url).await {
            return Ok(client);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Err(format!("the run's nats-server at {url} did not come up"))
}

/// Every message in the stream, as event ids (from the `Outbox-Event-Id` header).
async fn read_stream(js: &jetstream::Context) -> Result<Vec<EventId>, String> {
    let mut stream = js
        .get_stream("CHAOS")
        .await
        .map_err(|e| format!("the stream is gone: {e}"))?;
    let total = stream
        .info()
        .await
        .map_err(|e| e.to_string())?
        .state
        .messages;
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            deliver_policy: jetstream::consumer::DeliverPolicy::All,
            ack_policy: jetstream::consumer::AckPolicy::None,
            ..Default::default()
        })
        .await
        .map_err(|e| e.to_string())?;
    let mut messages = consumer.messages().await.map_err(|e| e.to_string())?;
    let mut ids = Vec::with_capacity(total as usize);
    while (ids.len() as u64) < total {
        let next = tokio::time::timeout(Duration::from_secs(30), messages.next())
            .await
            .map_err(|_| format!("read {} of {total} messages, then nothing", ids.len()))?;
        let message = next
            .ok_or("the stream ended early")?
            .map_err(|e| e.to_string())?;
        let id = outbox_transport_nats::event_id(message.headers.as_ref())
            .ok_or("a message without an Outbox-Event-Id header")?;
        ids.push(id);
    }
    Ok(ids)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_later_event_of_a_key_first_seen_before_an_earlier_one_is_out_of_order() {
        let (a, b, c) = (EventId::new(), EventId::new(), EventId::new());
        let keyed = HashMap::from([(a, (0, 0)), (b, (0, 2)), (c, (1, 1))]);
        assert!(
            out_of_order(&[a, c, b, a], &keyed).is_empty(),
            "a repeat is fine"
        );
        assert_eq!(out_of_order(&[b, c, a], &keyed), vec!["k0: 0 after 2"]);
    }
}
