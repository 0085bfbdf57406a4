//! [`SqliteStore`]: the outbox contract on SQLite.

use std::ops::{Deref, DerefMut};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use outbox_core::changes;
use outbox_core::clock::{add as add_time, translate};
use outbox_core::event::validate_event_type;
use outbox_core::locked::{held_nothing, settle, validate_hold, wakes_workers};
use outbox_core::{
    AuditNote, Clock, EventFilter, EventId, EventPage, Failure, History, Lease, LeaseId,
    LockedBatch, LockedClaim, OutboxEvent, OutboxStore, ParkedKey, PausedType, PayloadEdit,
    Reclaimed, Recorded, Settlement, Status, StatusCounts, StoreError, SystemClock, Transition,
    ValidationError, WakeupSender, Wakeups,
};
use outbox_sql::Dialect;
use sea_query::{Alias, Expr, ExprTrait, SqliteQueryBuilder, Value};
use sea_query_sqlx::SqlxBinder;
use sqlx::sqlite::{
    SqliteArguments, SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous,
};
use sqlx::{AssertSqlSafe, Row, Sqlite, SqliteConnection, SqlitePool};
use tokio::sync::{Mutex, OwnedMutexGuard};
use uuid::Uuid;

use crate::config::SqliteConfig;
use crate::error::{db_error, is_unique_violation};
use crate::row::{COLUMNS, decode, json, micros, time};
use crate::schema;
use crate::work::{ROWID, Work, add};

/// Rows changed per transaction by the sweeps (reclaim, purge), so one call never keeps other
/// writers waiting long; the sweeps loop until done.
const SWEEP_CHUNK: usize = 5_000;

/// Rows a statement may read ahead of its reader (sqlx's default is 50). A claim's batch (100
/// by default) then comes out of SQLite without its thread stopping to wait for the reader
/// row by row, inside the write lock. Every read of the store collects its rows whole, so
/// this adds nothing to what a read holds in memory; a stream of your own on a pool built from
/// these options may read up to this many rows ahead of you.
pub const ROW_BUFFER: usize = 256;

/// The connection settings the store is meant for, from a `sqlite://` URL (or a path): the
/// file created if missing, write-ahead logging (readers never wait for the writer), full
/// sync (a commit survives a power cut), foreign keys on, `busy_timeout` as long as the
/// default write wait (5 s), and room for [`ROW_BUFFER`] rows between SQLite's thread and the
/// reader. Change what you like before building your pool; the store needs only WAL for
/// readers and writers to run side by side.
pub fn connect_options(url: &str) -> Result<SqliteConnectOptions, StoreError> {
    if let Some((scheme, _)) = url.split_once("://")
        && scheme != "sqlite"
    {
        return Err(ValidationError::new(
            "url",
            format!("{scheme}:// is not SQLite's; use sqlite://path/to/file.db or a path"),
        )
        .into());
    }
    let options = SqliteConnectOptions::from_str(url).map_err(|e| {
        StoreError::from(ValidationError::new(
            "url",
            format!("not a SQLite URL or path ({e})"),
        ))
    })?;
    Ok(options
        .create_if_missing(true)
        .journal_mode(SqliteJournalMode::Wal)
        .synchronous(SqliteSynchronous::Full)
        .foreign_keys(true)
        .busy_timeout(SqliteConfig::new().write_wait())
        .row_buffer_size(ROW_BUFFER))
}

/// The outbox on SQLite, for one process or several on one machine sharing the file. Cheap
/// to clone; clones share the pool, the wake-ups and the writers' turn.
///
/// Emit through [`SqliteStore::begin`] (a write transaction of the store's pool, taking this
/// process's writers' turn) or [`SqliteStore::emitter`] (any connection or transaction of
/// yours, best begun with `BEGIN IMMEDIATE`); workers use the [`OutboxStore`] methods.
///
/// **One writer at a time.** SQLite lets one transaction write the file at a time. The store's
/// writes take turns within the process (no busy-waiting between them), then wait up to the
/// connection's `busy_timeout` for any other process's write; past
/// [`SqliteConfig::with_write_wait`] a write fails as
/// [`StoreError::Unavailable`], to be retried. Reads never wait (write-ahead logging).
///
/// **Time comes from the store's clock**: the system clock, shared by every process on the
/// machine ([`with_clock`](Self::with_clock) injects one for tests).
///
/// **Wake-ups** are in-process: a commit through [`begin`](Self::begin) wakes the workers of
/// this process at once. Events committed elsewhere (another process, or your own transaction
/// through [`emitter`](Self::emitter)) are found by the workers' polling.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    /// Where reads run when they are bounded ([`with_read_bound`](Self::with_read_bound)): a
    /// pool of their own whose connections interrupt a statement once the bound has passed.
    bounded: Option<SqlitePool>,
    config: Arc<SqliteConfig>,
    clock: Arc<dyn Clock>,
    wake: Arc<WakeupSender>,
    /// This process's writers take turns here before they ask SQLite for the write lock.
    turn: Arc<Mutex<()>>,
    /// Claims queue here before they take their turn, so that one at a time waits among the
    /// writers (see [`begin_claim`](Self::begin_claim)).
    claims: Arc<Mutex<()>>,
    /// Whether a locked batch outlasted its window (see
    /// [`SqliteConfig::with_locked_window`]) and no marked batch has finished within it
    /// since: locked claims then mark their batches at once.
    outlasted: Arc<AtomicBool>,
}

impl SqliteStore {
    /// A store for `config`'s table on `pool`. Fails if the configuration is invalid; touches
    /// no database (call [`migrate`](Self::migrate) to create the tables). Build the pool from
    /// [`connect_options`], or see [`connect`](Self::connect).
    pub fn new(pool: SqlitePool, config: SqliteConfig) -> Result<Self, ValidationError> {
        config.validate()?;
        Ok(Self {
            pool,
            bounded: None,
            config: Arc::new(config),
            clock: Arc::new(SystemClock),
            wake: Arc::new(WakeupSender::new()),
            turn: Arc::new(Mutex::new(())),
            claims: Arc::new(Mutex::new(())),
            outlasted: Arc::new(AtomicBool::new(false)),
        })
    }

    /// Opens (creating if missing) the database at `url` (`sqlite://path/to/file.db`, or a
    /// path) with [`connect_options`] and `config`'s write wait as its `busy_timeout`, on a
    /// pool of four connections.
    pub async fn connect(url: &str, config: SqliteConfig) -> Result<Self, StoreError> {
        config.validate()?;
        let options = connect_options(url)?.busy_timeout(config.write_wait());
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await
            .map_err(db_error)?;
        Ok(Self::new(pool, config)?)
    }

    /// Decides every time on `clock` instead of the system's. For tests.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// The pool the store uses.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// This store with its reads bounded: a read that has run for `bound` is interrupted and
    /// fails as [`StoreError::TimedOut`], as PostgreSQL's `statement_timeout` would cancel it.
    /// SQLite has no statement timeout of its own; the reads run on a pool of their own (two
    /// connections to the same file) whose connections check the time every few thousand
    /// steps of a statement. For an operator's queries (the web admin's searches): a search
    /// the table has no index for then cannot hold a connection for long.
    ///
    /// Only reads are bounded ([`get`](OutboxStore::get), [`list`](OutboxStore::list), the
    /// counts, [`history`](OutboxStore::history), [`parked_keys`](OutboxStore::parked_keys),
    /// [`paused_types`](OutboxStore::paused_types),
    /// [`delivered_since`](OutboxStore::delivered_since)). Changes are not: each runs in a
    /// write transaction over at most a bounded number of events, and interrupting it would
    /// only roll it back. The clone shares everything else with this store: its writers' turn,
    /// its wake-ups, its pool for changes.
    pub fn with_read_bound(&self, bound: Duration) -> Self {
        let pool = SqlitePoolOptions::new()
            .max_connections(2)
            .after_connect(move |conn, _| Box::pin(bound_from_now(conn, bound)))
            .before_acquire(move |conn, _| {
                Box::pin(async move { bound_from_now(conn, bound).await.map(|()| true) })
            })
            .connect_lazy_with(self.pool.connect_options().as_ref().clone());
        Self {
            bounded: Some(pool),
            ..self.clone()
        }
    }

    /// The pool reads run on: the bounded one, if there is one.
    fn reader(&self) -> &SqlitePool {
        self.bounded.as_ref().unwrap_or(&self.pool)
    }

    /// The store's settings.
    pub fn config(&self) -> &SqliteConfig {
        &self.config
    }

    /// Creates or upgrades the outbox tables; returns how many migrations ran (0 when current).
    pub async fn migrate(&self) -> Result<usize, StoreError> {
        schema::migrate_up(self).await
    }

    /// Reverts every migration of this table (drops its tables and their events); returns how
    /// many ran.
    pub async fn migrate_down(&self) -> Result<usize, StoreError> {
        schema::migrate_down(self).await
    }

    /// The table's schema version (0 before [`migrate`](Self::migrate)).
    pub async fn schema_version(&self) -> Result<i32, StoreError> {
        schema::version(self).await
    }

    /// The store's clock reading.
    pub(crate) fn now(&self) -> DateTime<Utc> {
        self.clock.now()
    }

    pub(crate) fn wake(&self) {
        self.wake.wake();
    }

    /// Whether a locked claim may keep its transaction open while its batch is delivered: a
    /// window is set, and the last batch that outlasted it was followed by one delivered
    /// within it. A slow transport thus costs other writers the window once, not per batch.
    fn keeps_claims_open(&self) -> bool {
        !self.config.locked_window().is_zero() && !self.outlasted.load(Ordering::Relaxed)
    }

    fn table(&self) -> &str {
        self.config.table()
    }

    /// The reads every SQL store runs alike, on this store's pool.
    fn reads(&self) -> outbox_sql::run::Reads<'_, sqlx::Sqlite, SqliteQueryBuilder> {
        outbox_sql::run::Reads {
            pool: self.reader(),
            builder: std::marker::PhantomData,
            error: db_error,
            decode: decode_event,
        }
    }

    /// The table of paused event types.
    fn paused_table(&self) -> Alias {
        Alias::new(format!("{}_paused", self.table()))
    }

    /// Begins a write transaction: this process's turn first, then SQLite's write lock
    /// (`BEGIN IMMEDIATE`, waiting up to the connection's `busy_timeout` for another process).
    pub(crate) async fn begin_write(&self) -> Result<WriteTx, StoreError> {
        let wait = self.config.write_wait();
        let turn = tokio::time::timeout(wait, self.turn.clone().lock_owned())
            .await
            .map_err(|_| held_for(wait))?;
        let tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(db_error)?;
        Ok(WriteTx { tx, _turn: turn })
    }

    /// Begins a claim's write transaction. Claims first queue among themselves, so at most one
    /// of them waits among the process's writers at a time: an application's write waits for
    /// the claim holding the database and at most one more, not for every worker's batch in
    /// turn (a locked claim can hold the database for its window).
    async fn begin_claim(&self) -> Result<Work, StoreError> {
        let wait = self.config.write_wait();
        let _claims = tokio::time::timeout(wait, self.claims.lock())
            .await
            .map_err(|_| held_for(wait))?;
        Work::begin(self).await
    }

    /// Takes up to `limit` due, unpaused pending events that no locked claim holds, oldest
    /// due first; returns their ids.
    async fn take_due(&self, work: &mut Work, limit: usize) -> Result<Vec<EventId>, StoreError> {
        let t = self.table();
        let sql = format!(
            "SELECT {COLUMNS}, attempt_log, rowid AS {ROWID} FROM \"{t}\" INDEXED BY \"{t}_due\" \
             WHERE status = 'pending' AND next_attempt_at <= ? \
             AND (hold_until IS NULL OR hold_until <= ?) \
             AND event_type NOT IN (SELECT event_type FROM \"{t}_paused\") \
             ORDER BY next_attempt_at, id LIMIT ?"
        );
        let at = micros(work.at);
        let mut args = SqliteArguments::default();
        add(&mut args, at)?;
        add(&mut args, at)?;
        add(&mut args, i64::try_from(limit).unwrap_or(i64::MAX))?;
        work.load(sql, args).await
    }

    /// Applies a lease-holder transition to each named event — `transition(i, at)` for the
    /// `i`th, at the store's clock reading `at` — and reports what became of each; events not
    /// held under the lease are left alone and reported lost. With `delete_delivered`, a
    /// delivered event without an idempotency key is deleted.
    async fn fenced(
        &self,
        lease: LeaseId,
        ids: &[EventId],
        delete_delivered: bool,
        transition: impl Fn(usize, DateTime<Utc>) -> Transition + Send,
    ) -> Result<Vec<Recorded>, StoreError> {
        let work = Work::begin(self).await?;
        changes::fenced(work, lease, ids, delete_delivered, transition).await
    }
}

/// How SQLite's outbox table differs, for the statements built in `outbox-sql`: text is
/// `TEXT`, ids 16-byte blobs, times microseconds since the epoch; a prefix is matched on the
/// bytes (`substr` on text counts characters).
pub(crate) struct SqliteDialect;

impl Dialect for SqliteDialect {
    fn text(&self, s: &str) -> Value {
        s.into()
    }
    fn id(&self, id: EventId) -> Value {
        id.as_uuid().as_bytes().to_vec().into()
    }
    fn time(&self, t: DateTime<Utc>) -> Value {
        micros(t).into()
    }
    fn starts_with(&self, column: &str, prefix: &str) -> Expr {
        let len = i64::try_from(prefix.len()).unwrap_or(i64::MAX);
        Expr::cust_with_values(
            format!("substr(CAST({column} AS BLOB), 1, ?) = ?"),
            [Value::from(len), Value::from(prefix.as_bytes().to_vec())],
        )
    }
}

/// Steps of SQLite's virtual machine between two looks at a bounded read's deadline: a few
/// microseconds of work, so a read ends within a hair of its bound.
const BOUND_CHECK_STEPS: i32 = 1_000;

/// Makes `conn` interrupt any statement still running `bound` from now (none, if that time
/// cannot be told). Run as a bounded pool hands the connection out, so each read has its
/// whole bound.
async fn bound_from_now(conn: &mut SqliteConnection, bound: Duration) -> Result<(), sqlx::Error> {
    let Some(deadline) = std::time::Instant::now().checked_add(bound) else {
        conn.lock_handle().await?.remove_progress_handler();
        return Ok(());
    };
    conn.lock_handle()
        .await?
        .set_progress_handler(BOUND_CHECK_STEPS, move || {
            std::time::Instant::now() < deadline
        });
    Ok(())
}

/// A write transaction of the store, holding this process's writers' turn until it ends.
pub(crate) struct WriteTx {
    tx: sqlx::Transaction<'static, Sqlite>,
    _turn: OwnedMutexGuard<()>,
}

impl WriteTx {
    /// Commits, then lets the next writer of this process go.
    pub(crate) async fn commit(self) -> Result<(), StoreError> {
        self.tx.commit().await.map_err(db_error)
    }

    /// Rolls back, then lets the next writer of this process go.
    pub(crate) async fn rollback(self) -> Result<(), StoreError> {
        self.tx.rollback().await.map_err(db_error)
    }
}

impl std::fmt::Debug for WriteTx {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WriteTx").finish_non_exhaustive()
    }
}

impl Deref for WriteTx {
    type Target = SqliteConnection;
    fn deref(&self) -> &SqliteConnection {
        &self.tx
    }
}

impl DerefMut for WriteTx {
    fn deref_mut(&mut self) -> &mut SqliteConnection {
        &mut self.tx
    }
}

#[async_trait]
impl OutboxStore for SqliteStore {
    async fn claim(
        &self,
        lease: &Lease,
        limit: usize,
        now: DateTime<Utc>,
    ) -> Result<Vec<OutboxEvent>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut work = self.begin_claim().await?;
        let at = work.at;
        let ids = self.take_due(&mut work, limit).await?;
        let claim = Transition::Claim {
            lease: Lease {
                until: translate(lease.until, now, at),
                ..lease.clone()
            },
        };
        let mut events = Vec::with_capacity(ids.len());
        for id in ids {
            events.push(work.apply(id, &claim)?);
        }
        work.commit().await?;
        Ok(events)
    }

    async fn renew(
        &self,
        lease: LeaseId,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let mut work = Work::begin(self).await?;
        let at = work.at;
        let sql = format!(
            "SELECT {COLUMNS}, attempt_log FROM \"{}\" WHERE status = 'in_flight' AND lease_id = ?",
            self.table()
        );
        let mut args = SqliteArguments::default();
        add(&mut args, *lease.as_uuid())?;
        let ids = work.load(sql, args).await?;
        let renew = Transition::Renew {
            lease,
            until: translate(until, now, at),
        };
        for id in &ids {
            work.apply(*id, &renew)?;
        }
        work.commit().await?;
        Ok(ids.len() as u64)
    }

    async fn ack(
        &self,
        lease: LeaseId,
        ids: &[EventId],
        _now: DateTime<Utc>,
    ) -> Result<Vec<Recorded>, StoreError> {
        self.fenced(lease, ids, self.config.delete_delivered(), |_, _| {
            Transition::Ack { lease }
        })
        .await
    }

    async fn nack(
        &self,
        lease: LeaseId,
        failures: &[Failure],
        now: DateTime<Utc>,
    ) -> Result<Vec<Recorded>, StoreError> {
        // The caller's times are read relative to `now`, against the store's reading.
        let ids: Vec<EventId> = failures.iter().map(|f| f.id).collect();
        let recorded = self
            .fenced(lease, &ids, false, |i, at| Transition::Nack {
                lease,
                error: failures[i].error.clone(),
                retry_at: failures[i].retry_at.map(|r| translate(r, now, at)),
            })
            .await?;
        self.wake();
        Ok(recorded)
    }

    async fn release(
        &self,
        lease: LeaseId,
        ids: &[EventId],
        _now: DateTime<Utc>,
    ) -> Result<Vec<Recorded>, StoreError> {
        let recorded = self
            .fenced(lease, ids, false, |_, _| Transition::Release { lease })
            .await?;
        self.wake();
        Ok(recorded)
    }

    async fn defer(
        &self,
        lease: LeaseId,
        ids: &[EventId],
        until: DateTime<Utc>,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<Recorded>, StoreError> {
        self.fenced(lease, ids, false, |_, at| Transition::Defer {
            lease,
            until: translate(until, now, at),
            reason: reason.to_owned(),
        })
        .await
    }

    async fn reclaim_expired(&self, _now: DateTime<Utc>) -> Result<Reclaimed, StoreError> {
        let mut reclaimed = Reclaimed::default();
        loop {
            let mut work = Work::begin(self).await?;
            let t = self.table();
            let sql = format!(
                "SELECT {COLUMNS}, attempt_log FROM \"{t}\" INDEXED BY \"{t}_leased\" \
                 WHERE status = 'in_flight' AND locked_until <= ? ORDER BY locked_until \
                 LIMIT {SWEEP_CHUNK}"
            );
            let mut args = SqliteArguments::default();
            add(&mut args, micros(work.at))?;
            let ids = work.load(sql, args).await?;
            for id in &ids {
                match work.apply(*id, &Transition::Expire)?.status() {
                    Status::Dead => reclaimed.dead += 1,
                    _ => reclaimed.pending += 1,
                }
            }
            work.commit().await?;
            if ids.len() < SWEEP_CHUNK {
                break;
            }
        }
        if reclaimed.pending > 0 {
            self.wake();
        }
        Ok(reclaimed)
    }

    async fn purge_delivered(
        &self,
        before: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let before = micros(translate(before, now, self.now()));
        let t = self.table();
        let mut purged = 0;
        loop {
            let mut tx = self.begin_write().await?;
            let sql = format!(
                "DELETE FROM \"{t}\" WHERE rowid IN (SELECT rowid FROM \"{t}\" \
                 INDEXED BY \"{t}_delivered\" WHERE status = 'delivered' AND delivered_at < ? \
                 LIMIT {SWEEP_CHUNK})"
            );
            let n = sqlx::query(AssertSqlSafe(sql))
                .bind(before)
                .execute(&mut *tx)
                .await
                .map_err(db_error)?
                .rows_affected();
            tx.commit().await?;
            purged += n;
            if n < SWEEP_CHUNK as u64 {
                break;
            }
        }
        Ok(purged)
    }

    async fn get(&self, id: EventId) -> Result<Option<OutboxEvent>, StoreError> {
        self.reads()
            .event(Alias::new(self.table()), COLUMNS, id, &SqliteDialect)
            .await
    }

    async fn list(&self, filter: &EventFilter) -> Result<EventPage, StoreError> {
        self.reads()
            .page(Alias::new(self.table()), COLUMNS, filter, &SqliteDialect)
            .await
    }

    async fn count_by_status(&self) -> Result<StatusCounts, StoreError> {
        self.reads().counts(Alias::new(self.table())).await
    }

    async fn count_capped(&self, cap: u64) -> Result<StatusCounts, StoreError> {
        self.reads()
            .counts_capped(self.table(), cap, &SqliteDialect)
            .await
    }

    async fn retry_dead(
        &self,
        id: EventId,
        extra_attempts: u32,
        _now: DateTime<Utc>,
    ) -> Result<OutboxEvent, StoreError> {
        let event = changes::revive(Work::begin(self).await?, id, extra_attempts).await?;
        self.wake();
        Ok(event)
    }

    fn wakeups(&self) -> Option<Wakeups> {
        Some(self.wake.subscribe())
    }

    async fn claim_locked(
        &self,
        holder: &str,
        limit: usize,
        hold: Duration,
        _now: DateTime<Utc>,
    ) -> Result<LockedClaim, StoreError> {
        validate_hold(hold)?;
        let mut batch = SqliteLockedBatch {
            store: self.clone(),
            holder: holder.to_owned(),
            hold,
            number: Uuid::now_v7(),
            ids: Vec::new(),
            held: Arc::new(Mutex::new(Held::Done)),
            claimed: tokio::time::Instant::now(),
        };
        if limit == 0 {
            return Ok(LockedClaim {
                events: Vec::new(),
                batch: Box::new(batch),
            });
        }
        let mut work = self.begin_claim().await?;
        let ids = self.take_due(&mut work, limit).await?;
        if ids.is_empty() {
            work.commit().await?;
            return Ok(LockedClaim {
                events: Vec::new(),
                batch: Box::new(batch),
            });
        }
        let events = ids.iter().filter_map(|id| work.hand_out(*id)).collect();
        batch.ids = ids;
        batch.claimed = tokio::time::Instant::now();
        if self.keeps_claims_open() {
            batch.held = Arc::new(Mutex::new(Held::Open(Box::new(work))));
            batch.mark_after(self.config.locked_window());
        } else {
            let until = add_time(work.at, hold);
            let rows = work.hold(&batch.ids, batch.number, until).await?;
            work.commit().await?;
            batch.held = Arc::new(Mutex::new(Held::Marked(rows)));
        }
        Ok(LockedClaim {
            events,
            batch: Box::new(batch),
        })
    }

    async fn delete_events(
        &self,
        ids: &[EventId],
        _now: DateTime<Utc>,
    ) -> Result<Vec<EventId>, StoreError> {
        let deleted = changes::delete_events(Work::begin(self).await?, ids).await?;
        self.wake();
        Ok(deleted)
    }

    async fn parked_keys(&self, limit: usize) -> Result<Vec<ParkedKey>, StoreError> {
        let t = self.table();
        let (sql, values) = outbox_sql::parked_keys(
            t,
            &format!("{t}_keys"),
            u64::try_from(limit).unwrap_or(u64::MAX),
        )
        .build_sqlx(SqliteQueryBuilder);
        let rows = sqlx::query_with(AssertSqlSafe(sql), values)
            .fetch_all(self.reader())
            .await
            .map_err(db_error)?;
        rows.iter()
            .map(|row| {
                let waiting: i64 = row.try_get("waiting").map_err(db_error)?;
                Ok(ParkedKey {
                    key: row.try_get("ordering_key").map_err(db_error)?,
                    head: crate::row::id_of(row)?,
                    waiting: u64::try_from(waiting).unwrap_or(0),
                })
            })
            .collect()
    }

    async fn skip_dead_head(
        &self,
        id: EventId,
        _now: DateTime<Utc>,
    ) -> Result<OutboxEvent, StoreError> {
        let event = changes::skip_dead_head(Work::begin(self).await?, id).await?;
        self.wake();
        Ok(event)
    }

    async fn history(&self, id: EventId) -> Result<History, StoreError> {
        let (sql, values) = outbox_sql::by_id(
            Alias::new(self.table()),
            "attempt_log, audit_notes",
            id,
            &SqliteDialect,
        )
        .build_sqlx(SqliteQueryBuilder);
        let row = sqlx::query_with(AssertSqlSafe(sql), values)
            .fetch_optional(self.reader())
            .await
            .map_err(db_error)?
            .ok_or(StoreError::NotFound(id))?;
        let read = |column: &str| -> Result<Option<String>, StoreError> {
            row.try_get(column).map_err(db_error)
        };
        let undecodable = |e: serde_json::Error| StoreError::Undecodable {
            id,
            reason: e.to_string(),
        };
        let mut history = History::default();
        if let Some(log) = read("attempt_log")? {
            history.attempts = serde_json::from_str(&log).map_err(undecodable)?;
        }
        if let Some(notes) = read("audit_notes")? {
            history.notes = serde_json::from_str(&notes).map_err(undecodable)?;
        }
        Ok(history)
    }

    async fn edit_dead(
        &self,
        id: EventId,
        edit: &PayloadEdit,
        extra_attempts: u32,
        _now: DateTime<Utc>,
    ) -> Result<OutboxEvent, StoreError> {
        edit.check(&self.config.limits)?;
        let mut work = Work::begin(self).await?;
        let previous = work.read_one(id).await?;
        // Revived first, so a refused revive (not dead, too many attempts) changes nothing.
        work.apply(id, &Transition::Revive { extra_attempts })?;
        work.rejoin_key(id).await?;
        let at = work.at;
        let (notes_sql, values) =
            outbox_sql::by_id(Alias::new(self.table()), "audit_notes", id, &SqliteDialect)
                .build_sqlx(SqliteQueryBuilder);
        let notes: Option<String> = sqlx::query_scalar_with(AssertSqlSafe(notes_sql), values)
            .fetch_one(&mut *work.tx)
            .await
            .map_err(db_error)?;
        let mut history = History::default();
        if let Some(notes) = notes {
            history.notes = serde_json::from_str(&notes).map_err(|e| StoreError::Undecodable {
                id,
                reason: e.to_string(),
            })?;
        }
        history.push_note(AuditNote {
            at,
            by: edit.by.clone(),
            note: edit.note.clone(),
            previous_payload: previous.payload,
        });
        let set = vec![
            ("payload", Value::from(json(&edit.payload)?)),
            ("audit_notes", Value::from(json(&history.notes)?)),
        ];
        let edit_row = outbox_sql::set_in(
            Alias::new(self.table()),
            set,
            "id",
            vec![SqliteDialect.id(id)],
        );
        crate::work::run(&mut work.tx, edit_row).await?;
        let mut event = work.event(id).cloned().ok_or(StoreError::NotFound(id))?;
        event.payload = edit.payload.clone();
        work.commit().await?;
        self.wake();
        Ok(event)
    }

    async fn pause_type(&self, event_type: &str, _now: DateTime<Utc>) -> Result<bool, StoreError> {
        validate_event_type(event_type)?;
        let mut tx = self.begin_write().await?;
        let (sql, values) = outbox_sql::pause(
            self.paused_table(),
            SqliteDialect.text(event_type),
            SqliteDialect.time(self.now()),
        )
        .build_sqlx(SqliteQueryBuilder);
        let done = sqlx::query_with(AssertSqlSafe(sql), values)
            .execute(&mut *tx)
            .await;
        match done {
            Ok(_) => {
                tx.commit().await?;
                Ok(true)
            }
            Err(e) if is_unique_violation(&e) => {
                tx.rollback().await?;
                Ok(false)
            }
            Err(e) => Err(db_error(e)),
        }
    }

    async fn resume_type(&self, event_type: &str, _now: DateTime<Utc>) -> Result<bool, StoreError> {
        validate_event_type(event_type)?;
        let mut tx = self.begin_write().await?;
        let (sql, values) = outbox_sql::resume(self.paused_table(), SqliteDialect.text(event_type))
            .build_sqlx(SqliteQueryBuilder);
        let done = sqlx::query_with(AssertSqlSafe(sql), values)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        tx.commit().await?;
        let resumed = done.rows_affected() > 0;
        if resumed {
            self.wake();
        }
        Ok(resumed)
    }

    async fn paused_types(&self) -> Result<Vec<PausedType>, StoreError> {
        let (sql, values) =
            outbox_sql::paused_types(self.paused_table()).build_sqlx(SqliteQueryBuilder);
        let rows = sqlx::query_with(AssertSqlSafe(sql), values)
            .fetch_all(self.reader())
            .await
            .map_err(db_error)?;
        rows.iter()
            .map(|row| {
                let since: i64 = row.try_get("paused_at").map_err(db_error)?;
                Ok(PausedType {
                    event_type: row.try_get("event_type").map_err(db_error)?,
                    since: time("paused_at", since)?,
                })
            })
            .collect()
    }

    async fn delivered_since(
        &self,
        since: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let since = translate(since, now, self.now());
        let (sql, values) =
            outbox_sql::delivered_since(Alias::new(self.table()), since, &SqliteDialect)
                .build_sqlx(SqliteQueryBuilder);
        let n: i64 = sqlx::query_scalar_with(AssertSqlSafe(sql), values)
            .fetch_one(self.reader())
            .await
            .map_err(db_error)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

/// A locked claim on SQLite. Its events stay pending to every reader while it holds them,
/// first by the claim's own write transaction, kept open (nothing else can write the file, so
/// nothing can touch them), then, if the batch outlasts the store's locked window, by marks:
/// the claim's number and when its hold ends (on the store's clock), committed, which every
/// claim and every other writer respects until then.
struct SqliteLockedBatch {
    store: SqliteStore,
    holder: String,
    hold: Duration,
    number: Uuid,
    ids: Vec<EventId>,
    held: Arc<Mutex<Held>>,
    /// When its events were read, to tell whether their deliveries fit in the store's window.
    claimed: tokio::time::Instant,
}

/// How a locked batch holds its events.
enum Held {
    /// By the claim's write transaction, still open, with the rows it read.
    Open(Box<Work>),
    /// By marks, committed; the rows as read and marked (no one changes them while the hold
    /// lasts).
    Marked(Vec<crate::row::Stored>),
    /// Not at all: settled, given back, or the marking failed (the claim's transaction was
    /// rolled back and the events are claimable again, untried).
    Done,
}

/// Another writer of this process kept the database past the write wait.
fn held_for(wait: Duration) -> StoreError {
    StoreError::Unavailable {
        source: format!("another write transaction of this process held the database for {wait:?}")
            .into(),
    }
}

fn hold_ended() -> StoreError {
    StoreError::Unavailable {
        source: "the locked claim's hold ran out; its events were given back untried".into(),
    }
}

impl SqliteLockedBatch {
    /// Once `window` has passed, marks the events held and commits the claim's transaction if
    /// it is still open, so the batch stops keeping every other writer waiting.
    fn mark_after(&self, window: Duration) {
        let held = Arc::clone(&self.held);
        let store = self.store.clone();
        let ids = self.ids.clone();
        let (number, hold) = (self.number, self.hold);
        tokio::spawn(async move {
            tokio::time::sleep(window).await;
            let mut held = held.lock().await;
            let Held::Open(mut work) = std::mem::replace(&mut *held, Held::Done) else {
                return;
            };
            store.outlasted.store(true, Ordering::Relaxed);
            let marked = async {
                let until = add_time(store.now(), hold);
                let rows = work.hold(&ids, number, until).await?;
                work.commit().await?;
                Ok::<_, StoreError>(rows)
            };
            match marked.await {
                Ok(rows) => *held = Held::Marked(rows),
                Err(error) => {
                    tracing::warn!(%error, "a locked batch that outlasted its window could not be marked held; its events come back untried");
                    store.wake();
                }
            }
        });
    }

    /// Fails unless every event of the batch is still under its hold at the transaction's
    /// clock reading. With `until`, restarts the hold to end then.
    async fn marked(
        &self,
        work: &mut Work,
        until: Option<DateTime<Utc>>,
    ) -> Result<(), StoreError> {
        let t = self.store.table();
        let at = micros(work.at);
        // Found by id (the batch knows its events), so the marks need no index of their own.
        let mut touched = 0;
        for chunk in self.ids.chunks(crate::work::ID_CHUNK) {
            let condition = format!(
                "id IN ({}) AND hold_id = ? AND hold_until > ?",
                crate::work::marks(chunk.len())
            );
            let mut args = SqliteArguments::default();
            if let Some(until) = until {
                add(&mut args, micros(until))?;
            }
            for id in chunk {
                add(&mut args, *id.as_uuid())?;
            }
            add(&mut args, self.number)?;
            add(&mut args, at)?;
            touched += match until {
                // Renewed by the statement that checks, so both see the same rows.
                Some(_) => sqlx::query_with(
                    AssertSqlSafe(format!(
                        "UPDATE \"{t}\" SET hold_until = ? WHERE {condition}"
                    )),
                    args,
                )
                .execute(&mut *work.tx)
                .await
                .map_err(db_error)?
                .rows_affected(),
                None => {
                    let n: i64 = sqlx::query_scalar_with(
                        AssertSqlSafe(format!("SELECT COUNT(*) FROM \"{t}\" WHERE {condition}")),
                        args,
                    )
                    .fetch_one(&mut *work.tx)
                    .await
                    .map_err(db_error)?;
                    u64::try_from(n).unwrap_or(0)
                }
            };
        }
        if touched != self.ids.len() as u64 {
            return Err(hold_ended());
        }
        Ok(())
    }

    /// Records `settlement` in `work`, which holds the batch's rows as read, and commits.
    async fn record(
        &self,
        mut work: Work,
        settlement: &Settlement,
        now: DateTime<Utc>,
    ) -> Result<Vec<Recorded>, StoreError> {
        let at = work.at;
        let delete_delivered = self.store.config.delete_delivered();
        let recorded = settle(
            settlement,
            &self.ids,
            &self.holder,
            self.hold,
            at,
            now,
            |id, claim, t| work.settle_locked(id, claim, t, delete_delivered),
        )?;
        // The released ones lose the claim's mark, and nothing else.
        for id in &self.ids {
            if work.hold_of(*id).is_some_and(|(n, _)| n == self.number) {
                work.set_hold(*id, None);
            }
        }
        work.commit().await?;
        if wakes_workers(&recorded) {
            self.store.wake();
        }
        Ok(recorded)
    }
}

#[async_trait]
impl LockedBatch for SqliteLockedBatch {
    async fn keep(&mut self) -> Result<(), StoreError> {
        if self.ids.is_empty() {
            return Ok(());
        }
        let mut held = self.held.lock().await;
        let rows = match &mut *held {
            // Nothing can touch the events while the claim's transaction is open.
            Held::Open(_) => return Ok(()),
            Held::Marked(rows) => rows,
            Held::Done => return Err(hold_ended()),
        };
        let mut work = Work::begin(&self.store).await?;
        let until = add_time(work.at, self.hold);
        self.marked(&mut work, Some(until)).await?;
        work.commit().await?;
        for stored in rows {
            stored.extra = crate::row::Hold(Some((self.number, until)));
        }
        Ok(())
    }

    async fn finish(
        self: Box<Self>,
        settlement: &Settlement,
        now: DateTime<Utc>,
    ) -> Result<Vec<Recorded>, StoreError> {
        settlement.validate()?;
        if self.ids.is_empty() {
            return Ok(held_nothing(settlement));
        }
        let held = std::mem::replace(&mut *self.held.lock().await, Held::Done);
        match held {
            Held::Open(mut work) => {
                // The outcomes happen now, in the claim's own transaction.
                work.read_clock();
                self.record(*work, settlement, now).await
            }
            Held::Marked(rows) => {
                if self.claimed.elapsed() < self.store.config.locked_window() {
                    // Delivered within the window: the next claims may keep theirs open again.
                    self.store.outlasted.store(false, Ordering::Relaxed);
                }
                let recorded = async {
                    let mut work = Work::begin(&self.store).await?;
                    self.marked(&mut work, None).await?;
                    work.keep_rows(rows)?;
                    self.record(work, settlement, now).await
                };
                let recorded = recorded.await;
                if recorded.is_err() {
                    // Not settled: dropping gives the marked events back.
                    *self.held.lock().await = Held::Marked(Vec::new());
                }
                recorded
            }
            Held::Done => Err(hold_ended()),
        }
    }
}

impl Drop for SqliteLockedBatch {
    fn drop(&mut self) {
        if self.ids.is_empty() {
            return;
        }
        // An open claim is rolled back at once, by dropping its transaction.
        if let Ok(mut held) = self.held.try_lock() {
            match std::mem::replace(&mut *held, Held::Done) {
                Held::Open(work) => {
                    drop(work);
                    self.store.wake();
                    return;
                }
                Held::Done => return,
                marked @ Held::Marked(_) => *held = marked,
            }
        }
        // Gives the events back now, in the background; without a runtime to run on, the hold
        // runs out on its own.
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let held = Arc::clone(&self.held);
        let store = self.store.clone();
        let number = self.number;
        let ids = std::mem::take(&mut self.ids);
        runtime.spawn(async move {
            let taken = std::mem::replace(&mut *held.lock().await, Held::Done);
            if !matches!(taken, Held::Marked(_)) {
                // Rolled back as it dropped (it was still open), or already given back.
                drop(taken);
                store.wake();
                return;
            }
            let given_back = async {
                let mut tx = store.begin_write().await?;
                for chunk in ids.chunks(crate::work::ID_CHUNK) {
                    let set = vec![
                        ("hold_id", Value::Bytes(None)),
                        ("hold_until", Value::BigInt(None)),
                    ];
                    let ids = chunk.iter().map(|id| SqliteDialect.id(*id)).collect();
                    let mut give_back = outbox_sql::set_in(Alias::new(store.table()), set, "id", ids);
                    give_back.and_where(
                        Expr::col(Alias::new("hold_id")).eq(number.as_bytes().to_vec()),
                    );
                    crate::work::run(&mut tx, give_back).await?;
                }
                tx.commit().await
            };
            match given_back.await {
                Ok(()) => store.wake(),
                Err(error) => tracing::warn!(
                    %error,
                    "a dropped locked claim could not give its events back; they come back when its hold runs out"
                ),
            }
        });
    }
}

/// A row read as an event, or why it cannot be.
fn decode_event(row: &sqlx::sqlite::SqliteRow) -> Result<outbox_sql::run::Decoded, StoreError> {
    Ok(decode(row)?.map(|stored| stored.event))
}
