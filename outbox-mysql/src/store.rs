//! [`MySqlStore`]: the outbox contract on MySQL and MariaDB.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use outbox_core::changes;
use outbox_core::clock::translate;
use outbox_core::event::validate_event_type;
use outbox_core::locked::{held_nothing, settle, validate_hold, wakes_workers};
use outbox_core::{
    AuditNote, Clock, EventFilter, EventId, EventPage, Failure, History, Lease, LeaseId,
    LockedBatch, LockedClaim, OutboxEvent, OutboxStore, ParkedKey, PausedType, PayloadEdit,
    Reclaimed, Recorded, Settlement, Status, StatusCounts, StoreError, ValidationError,
    WakeupSender, Wakeups,
};
use outbox_sql::Dialect;
use sea_query::{Alias, Expr, MysqlQueryBuilder, Value};
use sea_query_sqlx::SqlxBinder;
use sqlx::mysql::MySqlArguments;
use sqlx::{AssertSqlSafe, MySql, MySqlPool, Row};
use uuid::Uuid;

use crate::config::MySqlConfig;
use crate::error::{DUPLICATE_KEY, db_error, error_number};
use crate::row::{COLUMNS, decode, text};
use crate::schema;
use crate::work::{Work, add};

/// Rows changed per statement by the sweeps (reclaim, purge), so one call never holds a huge
/// number of row locks; the sweeps loop until done.
const SWEEP_CHUNK: usize = 5_000;

/// The outbox on MySQL 8 or MariaDB 10.6 and later. Cheap to clone; clones share the pool and
/// the wake-ups.
///
/// Emit through [`MySqlStore::begin`] (a transaction of the store's pool) or
/// [`MySqlStore::emitter`] (any connection or transaction of yours); workers use the
/// [`OutboxStore`] methods.
///
/// **Time comes from the database** (`UTC_TIMESTAMP(6)`), so relays whose clocks disagree
/// still agree on every lease; [`with_clock`](Self::with_clock) injects one for tests.
///
/// **Wake-ups** are in-process: a commit through [`begin`](Self::begin) wakes the workers of
/// this process at once. Events committed elsewhere (another process, or your own transaction
/// through [`emitter`](Self::emitter)) are found by the workers' polling.
#[derive(Clone, Debug)]
pub struct MySqlStore {
    pool: MySqlPool,
    config: Arc<MySqlConfig>,
    clock: Option<Arc<dyn Clock>>,
    wake: Arc<WakeupSender>,
}

impl MySqlStore {
    /// A store for `config`'s table on `pool`. Fails if the configuration is invalid; touches
    /// no database (call [`migrate`](Self::migrate) to create the tables).
    pub fn new(pool: MySqlPool, config: MySqlConfig) -> Result<Self, ValidationError> {
        config.validate()?;
        Ok(Self {
            pool,
            config: Arc::new(config),
            clock: None,
            wake: Arc::new(WakeupSender::new()),
        })
    }

    /// Decides every time on `clock` instead of the database's. For tests.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// The pool the store uses.
    pub fn pool(&self) -> &MySqlPool {
        &self.pool
    }

    /// The store's settings.
    pub fn config(&self) -> &MySqlConfig {
        &self.config
    }

    /// Creates or upgrades the outbox tables; returns how many migrations ran (0 when current).
    pub async fn migrate(&self) -> Result<usize, StoreError> {
        schema::migrate_up(&self.pool, &self.config).await
    }

    /// Reverts every migration of this table (drops its tables and their events); returns how
    /// many ran.
    pub async fn migrate_down(&self) -> Result<usize, StoreError> {
        schema::migrate_down(&self.pool, &self.config).await
    }

    /// The table's schema version (0 before [`migrate`](Self::migrate)).
    pub async fn schema_version(&self) -> Result<i32, StoreError> {
        schema::version(&self.pool, &self.config).await
    }

    /// The injected clock's time; `None` lets the database decide.
    pub(crate) fn injected_now(&self) -> Option<DateTime<Utc>> {
        self.clock.as_ref().map(|c| c.now())
    }

    /// This process's idea of now, for checks that tolerate skew.
    pub(crate) fn local_now(&self) -> DateTime<Utc> {
        self.injected_now().unwrap_or_else(Utc::now)
    }

    /// The store's clock reading, on `conn` (the database's, unless one was injected).
    pub(crate) async fn now_on(
        &self,
        conn: &mut sqlx::MySqlConnection,
    ) -> Result<DateTime<Utc>, StoreError> {
        if let Some(now) = self.injected_now() {
            return Ok(now);
        }
        sqlx::query_scalar("SELECT UTC_TIMESTAMP(6)")
            .fetch_one(&mut *conn)
            .await
            .map_err(db_error)
    }

    pub(crate) fn wake(&self) {
        self.wake.wake();
    }

    fn table(&self) -> &str {
        self.config.table()
    }

    /// The reads every SQL store runs alike, on this store's pool.
    fn reads(&self) -> outbox_sql::run::Reads<'_, sqlx::MySql, MysqlQueryBuilder> {
        outbox_sql::run::Reads {
            pool: &self.pool,
            builder: std::marker::PhantomData,
            error: db_error,
            decode: decode_event,
        }
    }

    /// The table of paused event types.
    fn paused_table(&self) -> Alias {
        Alias::new(format!("{}_paused", self.table()))
    }

    /// Takes up to `limit` due, unpaused pending events, oldest due first, under row locks
    /// (skipping rows other transactions hold); returns their ids.
    ///
    /// A claim under a lease (`exact` false) takes them with one locking read. A locked claim
    /// (`exact`) finds candidates by a plain read and then locks them by id, page by page: MariaDB
    /// keeps the lock of every row a locking read examined, matching or not, until the
    /// transaction ends, so a locking read that walked the due index could hold rows it does
    /// not take — for as long as a locked claim lasts. A candidate another transaction changed
    /// and committed between the two reads is locked all the same and left alone, and no more
    /// candidates than still wanted are locked.
    async fn take_due(
        &self,
        work: &mut Work<'_>,
        limit: usize,
        exact: bool,
    ) -> Result<Vec<EventId>, StoreError> {
        let t = self.table();
        let at = work.at;
        if !exact {
            // A claim that commits at once: one locking read along the due index. The rows it
            // passes over (a paused type's) stay locked only until that commit.
            let sql = format!(
                "SELECT {COLUMNS}, attempt_log FROM `{t}` FORCE INDEX (`{t}_due`) \
                 WHERE status = 'pending' AND next_attempt_at <= ? \
                 AND NOT EXISTS (SELECT 1 FROM `{t}_paused` p WHERE p.event_type = `{t}`.event_type) \
                 ORDER BY next_attempt_at, id LIMIT ? FOR UPDATE SKIP LOCKED"
            );
            let mut args = MySqlArguments::default();
            add(&mut args, at)?;
            add(&mut args, u64::try_from(limit).unwrap_or(u64::MAX))?;
            return work.load(sql, args).await;
        }
        let mut due: Vec<(DateTime<Utc>, EventId)> = Vec::new();
        let mut cursor: Option<(DateTime<Utc>, EventId)> = None;
        while due.len() < limit {
            let want = limit - due.len();
            let after = if cursor.is_some() {
                "AND (next_attempt_at > ? OR (next_attempt_at = ? AND id > ?))"
            } else {
                ""
            };
            let sql = format!(
                "SELECT id, next_attempt_at FROM `{t}` FORCE INDEX (`{t}_due`) \
                 WHERE status = 'pending' AND next_attempt_at <= ? {after} \
                 AND NOT EXISTS (SELECT 1 FROM `{t}_paused` p WHERE p.event_type = `{t}`.event_type) \
                 ORDER BY next_attempt_at, id LIMIT ?"
            );
            let mut args = MySqlArguments::default();
            add(&mut args, at)?;
            if let Some((due_at, id)) = cursor {
                add(&mut args, due_at)?;
                add(&mut args, due_at)?;
                add(&mut args, *id.as_uuid())?;
            }
            add(&mut args, u64::try_from(want).unwrap_or(u64::MAX))?;
            let rows = sqlx::query_with(AssertSqlSafe(sql), args)
                .fetch_all(&mut *work.tx)
                .await
                .map_err(db_error)?;
            let mut candidates = Vec::with_capacity(rows.len());
            for row in &rows {
                let id: Uuid = row.try_get("id").map_err(db_error)?;
                let due_at: DateTime<Utc> = row.try_get("next_attempt_at").map_err(db_error)?;
                candidates.push(EventId::from_uuid(id));
                cursor = Some((due_at, EventId::from_uuid(id)));
            }
            work.lock_ids(&candidates, true).await?;
            for id in &candidates {
                let Some(event) = work.event(*id) else {
                    continue; // held by another transaction: skipped
                };
                if event.status() == Status::Pending && event.lifecycle.next_attempt_at <= at {
                    due.push((event.lifecycle.next_attempt_at, *id));
                }
            }
            if rows.len() < want {
                break;
            }
        }
        due.sort();
        Ok(due.into_iter().take(limit).map(|(_, id)| id).collect())
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
        transition: impl Fn(usize, DateTime<Utc>) -> outbox_core::Transition + Send,
    ) -> Result<Vec<Recorded>, StoreError> {
        let work = Work::begin(self, None).await?;
        changes::fenced(work, lease, ids, delete_delivered, transition).await
    }
}

/// How MySQL's outbox table differs, for the statements built in `outbox-sql`: text is
/// `VARBINARY` (byte-exact), ids `BINARY(16)`, times `DATETIME(6)`.
pub(crate) struct MySqlDialect;

impl Dialect for MySqlDialect {
    fn text(&self, s: &str) -> Value {
        s.as_bytes().to_vec().into()
    }
    fn id(&self, id: EventId) -> Value {
        (*id.as_uuid()).into()
    }
    fn time(&self, t: DateTime<Utc>) -> Value {
        t.into()
    }
    fn starts_with(&self, column: &str, prefix: &str) -> Expr {
        let len = u64::try_from(prefix.len()).unwrap_or(u64::MAX);
        Expr::cust_with_values(
            format!("LEFT({column}, ?) = ?"),
            [Value::from(len), Value::from(prefix.as_bytes().to_vec())],
        )
    }
}

fn bytes_of<T: serde::Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Backend {
        source: Box::new(e),
    })
}

#[async_trait]
impl OutboxStore for MySqlStore {
    async fn claim(
        &self,
        lease: &Lease,
        limit: usize,
        now: DateTime<Utc>,
    ) -> Result<Vec<OutboxEvent>, StoreError> {
        if limit == 0 {
            return Ok(Vec::new());
        }
        let mut work = Work::begin(self, None).await?;
        let at = work.at;
        let ids = self.take_due(&mut work, limit, false).await?;
        let claim = outbox_core::Transition::Claim {
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
        let mut work = Work::begin(self, None).await?;
        let at = work.at;
        let sql = format!(
            "SELECT id FROM `{}` WHERE status = 'in_flight' AND lease_id = ?",
            self.table()
        );
        let held: Vec<Uuid> = sqlx::query_scalar(AssertSqlSafe(sql))
            .bind(*lease.as_uuid())
            .fetch_all(&mut *work.tx)
            .await
            .map_err(db_error)?;
        let held: Vec<EventId> = held.into_iter().map(EventId::from_uuid).collect();
        work.lock_held(&held, lease).await?;
        let ids: Vec<EventId> = held
            .into_iter()
            .filter(|id| work.event(*id).is_some())
            .collect();
        let renew = outbox_core::Transition::Renew {
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
            outbox_core::Transition::Ack { lease }
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
            .fenced(lease, &ids, false, |i, at| outbox_core::Transition::Nack {
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
            .fenced(lease, ids, false, |_, _| outbox_core::Transition::Release {
                lease,
            })
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
        self.fenced(lease, ids, false, |_, at| outbox_core::Transition::Defer {
            lease,
            until: translate(until, now, at),
            reason: reason.to_owned(),
        })
        .await
    }

    async fn reclaim_expired(&self, _now: DateTime<Utc>) -> Result<Reclaimed, StoreError> {
        let mut reclaimed = Reclaimed::default();
        loop {
            let mut work = Work::begin(self, None).await?;
            let sql = format!(
                "SELECT {COLUMNS}, attempt_log FROM `{t}` FORCE INDEX (`{t}_leased`) \
                 WHERE status = 'in_flight' AND locked_until <= ? ORDER BY locked_until \
                 LIMIT {SWEEP_CHUNK} FOR UPDATE SKIP LOCKED",
                t = self.table()
            );
            let mut args = MySqlArguments::default();
            add(&mut args, work.at)?;
            let ids = work.load(sql, args).await?;
            for id in &ids {
                match work.apply(*id, &outbox_core::Transition::Expire)?.status() {
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
        let mut conn = self.pool.acquire().await.map_err(db_error)?;
        let at = self.now_on(&mut conn).await?;
        let before = translate(before, now, at);
        let mut purged = 0;
        let t = self.table();
        loop {
            // Found by a plain read and deleted by primary key: a statement that scanned the
            // table would wait on every row a worker holds.
            let find = format!(
                "SELECT seq FROM `{t}` WHERE status = 'delivered' AND delivered_at < ? \
                 LIMIT {SWEEP_CHUNK}"
            );
            let seqs: Vec<u64> = sqlx::query_scalar(AssertSqlSafe(find))
                .bind(before)
                .fetch_all(&mut *conn)
                .await
                .map_err(db_error)?;
            if seqs.is_empty() {
                break;
            }
            let mut args = MySqlArguments::default();
            for seq in &seqs {
                add(&mut args, *seq)?;
            }
            add(&mut args, before)?;
            let delete = format!(
                "DELETE FROM `{t}` WHERE seq IN ({}) AND status = 'delivered' AND delivered_at < ?",
                crate::work::marks(seqs.len())
            );
            purged += sqlx::query_with(AssertSqlSafe(delete), args)
                .execute(&mut *conn)
                .await
                .map_err(db_error)?
                .rows_affected();
            if seqs.len() < SWEEP_CHUNK {
                break;
            }
        }
        Ok(purged)
    }

    async fn get(&self, id: EventId) -> Result<Option<OutboxEvent>, StoreError> {
        self.reads()
            .event(Alias::new(self.table()), COLUMNS, id, &MySqlDialect)
            .await
    }

    async fn list(&self, filter: &EventFilter) -> Result<EventPage, StoreError> {
        self.reads()
            .page(Alias::new(self.table()), COLUMNS, filter, &MySqlDialect)
            .await
    }

    async fn count_by_status(&self) -> Result<StatusCounts, StoreError> {
        self.reads().counts(Alias::new(self.table())).await
    }

    async fn count_capped(&self, cap: u64) -> Result<StatusCounts, StoreError> {
        self.reads()
            .counts_capped(self.table(), cap, &MySqlDialect)
            .await
    }

    async fn retry_dead(
        &self,
        id: EventId,
        extra_attempts: u32,
        _now: DateTime<Utc>,
    ) -> Result<OutboxEvent, StoreError> {
        let event = changes::revive(Work::begin(self, None).await?, id, extra_attempts).await?;
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
        let mut work = Work::begin(self, Some(hold)).await?;
        let ids = if limit == 0 {
            Vec::new()
        } else {
            self.take_due(&mut work, limit, true).await?
        };
        let events = ids.iter().filter_map(|id| work.hand_out(*id)).collect();
        // The rows as read under their locks, which no one else can change while they last:
        // the settlement needs not read them again.
        let rows = work.take_rows(&ids);
        let tx = if ids.is_empty() {
            // Nothing locked: end the transaction now rather than hold a connection for it.
            end_hold(&mut work.tx).await?;
            work.tx.rollback().await.map_err(db_error)?;
            None
        } else {
            Some(work.tx)
        };
        let batch = Box::new(MySqlLockedBatch {
            store: self.clone(),
            holder: holder.to_owned(),
            hold,
            ids,
            rows,
            tx,
        });
        Ok(LockedClaim { events, batch })
    }

    async fn delete_events(
        &self,
        ids: &[EventId],
        _now: DateTime<Utc>,
    ) -> Result<Vec<EventId>, StoreError> {
        let deleted = changes::delete_events(Work::begin(self, None).await?, ids).await?;
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
        .build_sqlx(MysqlQueryBuilder);
        let rows = sqlx::query_with(AssertSqlSafe(sql), values)
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        rows.iter()
            .map(|row| {
                let head: Uuid = row.try_get("id").map_err(db_error)?;
                let waiting: i64 = row.try_get("waiting").map_err(db_error)?;
                Ok(ParkedKey {
                    key: text(row, "ordering_key")?,
                    head: EventId::from_uuid(head),
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
        let event = changes::skip_dead_head(Work::begin(self, None).await?, id).await?;
        self.wake();
        Ok(event)
    }

    async fn history(&self, id: EventId) -> Result<History, StoreError> {
        let (sql, values) = outbox_sql::by_id(
            Alias::new(self.table()),
            "attempt_log, audit_notes",
            id,
            &MySqlDialect,
        )
        .build_sqlx(MysqlQueryBuilder);
        let row = sqlx::query_with(AssertSqlSafe(sql), values)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?
            .ok_or(StoreError::NotFound(id))?;
        let read = |column: &str| -> Result<Option<Vec<u8>>, StoreError> {
            row.try_get(column).map_err(db_error)
        };
        let undecodable = |e: serde_json::Error| StoreError::Undecodable {
            id,
            reason: e.to_string(),
        };
        let mut history = History::default();
        if let Some(log) = read("attempt_log")? {
            history.attempts = serde_json::from_slice(&log).map_err(undecodable)?;
        }
        if let Some(notes) = read("audit_notes")? {
            history.notes = serde_json::from_slice(&notes).map_err(undecodable)?;
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
        let mut work = Work::begin(self, None).await?;
        work.lock_dead(id).await?;
        let previous = work.event(id).cloned().ok_or(StoreError::NotFound(id))?;
        // Revived first, so a refused revive (not dead, too many attempts) changes nothing.
        work.apply(id, &outbox_core::Transition::Revive { extra_attempts })?;
        work.rejoin_key(id).await?;
        let at = work.at;
        let (notes_sql, values) =
            outbox_sql::by_id(Alias::new(self.table()), "audit_notes", id, &MySqlDialect)
                .build_sqlx(MysqlQueryBuilder);
        let notes: Option<Vec<u8>> = sqlx::query_scalar_with(AssertSqlSafe(notes_sql), values)
            .fetch_one(&mut *work.tx)
            .await
            .map_err(db_error)?;
        let mut history = History::default();
        if let Some(notes) = notes {
            history.notes =
                serde_json::from_slice(&notes).map_err(|e| StoreError::Undecodable {
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
            ("payload", Value::from(bytes_of(&edit.payload)?)),
            ("audit_notes", Value::from(bytes_of(&history.notes)?)),
        ];
        let edit_row = outbox_sql::set_in(
            Alias::new(self.table()),
            set,
            "id",
            vec![MySqlDialect.id(id)],
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
        let mut conn = self.pool.acquire().await.map_err(db_error)?;
        let at = self.now_on(&mut conn).await?;
        let (sql, values) = outbox_sql::pause(
            self.paused_table(),
            MySqlDialect.text(event_type),
            MySqlDialect.time(at),
        )
        .build_sqlx(MysqlQueryBuilder);
        let done = sqlx::query_with(AssertSqlSafe(sql), values)
            .execute(&mut *conn)
            .await;
        match done {
            Ok(_) => Ok(true),
            Err(e) if error_number(&e) == Some(DUPLICATE_KEY) => Ok(false),
            Err(e) => Err(db_error(e)),
        }
    }

    async fn resume_type(&self, event_type: &str, _now: DateTime<Utc>) -> Result<bool, StoreError> {
        validate_event_type(event_type)?;
        let (sql, values) = outbox_sql::resume(self.paused_table(), MySqlDialect.text(event_type))
            .build_sqlx(MysqlQueryBuilder);
        let done = sqlx::query_with(AssertSqlSafe(sql), values)
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        let resumed = done.rows_affected() > 0;
        if resumed {
            self.wake();
        }
        Ok(resumed)
    }

    async fn paused_types(&self) -> Result<Vec<PausedType>, StoreError> {
        let (sql, values) =
            outbox_sql::paused_types(self.paused_table()).build_sqlx(MysqlQueryBuilder);
        let rows = sqlx::query_with(AssertSqlSafe(sql), values)
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        rows.iter()
            .map(|row| {
                Ok(PausedType {
                    event_type: text(row, "event_type")?,
                    since: row.try_get("paused_at").map_err(db_error)?,
                })
            })
            .collect()
    }

    async fn delivered_since(
        &self,
        since: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let mut conn = self.pool.acquire().await.map_err(db_error)?;
        let at = self.now_on(&mut conn).await?;
        let since = translate(since, now, at);
        let (sql, values) =
            outbox_sql::delivered_since(Alias::new(self.table()), since, &MySqlDialect)
                .build_sqlx(MysqlQueryBuilder);
        let n: i64 = sqlx::query_scalar_with(AssertSqlSafe(sql), values)
            .fetch_one(&mut *conn)
            .await
            .map_err(db_error)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }
}

/// A locked claim on MySQL: a transaction holding its events' row locks, ended by the server
/// if the connection stays idle longer than the hold.
struct MySqlLockedBatch {
    store: MySqlStore,
    holder: String,
    hold: Duration,
    ids: Vec<EventId>,
    /// The claimed rows as read.
    rows: Vec<crate::row::Stored>,
    tx: Option<sqlx::Transaction<'static, MySql>>,
}

/// Gives a locked claim's connection back the server's own idle limit before its transaction
/// ends: the hold was set on the session (`wait_timeout`), and the pool's next user may be the
/// application's own code.
async fn end_hold(tx: &mut sqlx::Transaction<'static, MySql>) -> Result<(), StoreError> {
    sqlx::query("SET SESSION wait_timeout = @@GLOBAL.wait_timeout")
        .execute(&mut **tx)
        .await
        .map_err(db_error)?;
    Ok(())
}

fn hold_ended() -> StoreError {
    StoreError::Unavailable {
        source: "the locked claim's hold ran out; its events were given back untried".into(),
    }
}

#[async_trait]
impl LockedBatch for MySqlLockedBatch {
    async fn keep(&mut self) -> Result<(), StoreError> {
        if self.ids.is_empty() {
            return Ok(());
        }
        let tx = self.tx.as_mut().ok_or_else(hold_ended)?;
        sqlx::query("SELECT 1")
            .execute(&mut **tx)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    async fn finish(
        mut self: Box<Self>,
        settlement: &Settlement,
        now: DateTime<Utc>,
    ) -> Result<Vec<Recorded>, StoreError> {
        settlement.validate()?;
        if self.ids.is_empty() {
            return Ok(held_nothing(settlement));
        }
        let mut tx = self.tx.take().ok_or_else(hold_ended)?;
        let at = self.store.now_on(&mut tx).await?;
        let mut work = Work::on(&self.store, tx, at);
        work.keep_rows(std::mem::take(&mut self.rows));
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
        work.flush().await?;
        end_hold(&mut work.tx).await?;
        work.tx.commit().await.map_err(db_error)?;
        if wakes_workers(&recorded) {
            self.store.wake();
        }
        Ok(recorded)
    }
}

impl Drop for MySqlLockedBatch {
    fn drop(&mut self) {
        let Some(mut tx) = self.tx.take() else {
            return;
        };
        let store = self.store.clone();
        match tokio::runtime::Handle::try_current() {
            // Ended now, its hold given back first, and the workers woken once its rows are
            // free.
            Ok(runtime) => {
                runtime.spawn(async move {
                    let _ = end_hold(&mut tx).await;
                    let _ = tx.rollback().await;
                    store.wake();
                });
            }
            // No runtime to end it on: the driver rolls it back on the connection's next use.
            Err(_) => {
                drop(tx);
                store.wake();
            }
        }
    }
}

/// A row read as an event, or why it cannot be.
fn decode_event(row: &sqlx::mysql::MySqlRow) -> Result<outbox_sql::run::Decoded, StoreError> {
    Ok(decode(row)?.map(|stored| stored.event))
}
