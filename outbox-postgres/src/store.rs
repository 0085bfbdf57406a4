//! [`PgStore`]: the outbox contract on PostgreSQL.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use outbox_core::event::validate_event_type;
use outbox_core::locked::{held_nothing, validate_hold};
use outbox_core::{
    Attempt, AuditNote, Clock, EventFilter, EventId, EventPage, Failure, History, Lease, LeaseId,
    LockedBatch, LockedClaim, OutboxEvent, OutboxStore, Outcome, ParkedKey, PausedType,
    PayloadEdit, Reclaimed, Recorded, Settlement, Status, StatusCounts, StoreError, SystemClock,
    Transition, ValidationError, Wakeups, distinct_ids, transition,
};
use sea_query::{Alias, Expr, PostgresQueryBuilder, Value};
use sea_query_sqlx::SqlxBinder;
use sqlx::types::Json;
use sqlx::{AssertSqlSafe, PgPool, Row};
use uuid::Uuid;

use crate::config::PgConfig;
use crate::error::db_error;
use crate::listen::Listener;
use crate::row::{PARKED, STREAMING, decode, status_of};
use crate::schema;
use crate::sql::{COLUMNS, Statements};

/// Rows changed per statement by the sweeps (reclaim, purge), so one call never holds a huge
/// number of row locks; the sweeps loop until done.
const SWEEP_CHUNK: i64 = 10_000;

/// The outbox on PostgreSQL. Cheap to clone; clones share the pool, statements and listener.
///
/// Emit through [`PgStore::begin`] (a transaction of the store's own pool) or
/// [`PgStore::emitter`] (any connection or transaction of yours); workers use the
/// [`OutboxStore`] methods.
///
/// **Time comes from the database.** Emit times, due-ness and lease expiry are read from the
/// database server's clock (`statement_timestamp()`), so relays on machines whose clocks
/// disagree still agree on every lease; a relay's own clock only measures lease lengths and
/// backoffs. [`with_clock`](Self::with_clock) replaces the database's clock with an injected
/// one, for tests.
#[derive(Clone, Debug)]
pub struct PgStore {
    pub(crate) pool: PgPool,
    pub(crate) config: Arc<PgConfig>,
    pub(crate) sql: Arc<Statements>,
    /// The injected clock; `None` for the database's.
    pub(crate) clock: Option<Arc<dyn Clock>>,
    listener: Arc<Listener>,
    pub(crate) notifier: Arc<crate::notify::Notifier>,
}

impl PgStore {
    /// A store for `config`'s table on `pool`. Fails if the configuration is invalid; touches
    /// no database (call [`migrate`](Self::migrate) to create the table).
    pub fn new(pool: PgPool, config: PgConfig) -> Result<Self, ValidationError> {
        config.validate()?;
        Ok(Self {
            pool,
            sql: Arc::new(Statements::new(&config)),
            config: Arc::new(config),
            clock: None,
            listener: Arc::new(Listener::default()),
            notifier: Arc::default(),
        })
    }

    /// Decides every time on `clock` instead of the database's: emit times, due-ness, lease
    /// expiry. For tests, which drive the clock; in production keep the database's, the one
    /// clock every relay shares.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = Some(clock);
        self
    }

    /// The injected clock's time, bound into statements; `None` lets the database's decide.
    pub(crate) fn injected_now(&self) -> Option<DateTime<Utc>> {
        self.clock.as_ref().map(|c| c.now())
    }

    /// This process's idea of now (the injected clock's, else the system's), for checks that
    /// tolerate skew, such as how far ahead `deliver_after` may lie.
    pub(crate) fn local_now(&self) -> DateTime<Utc> {
        self.injected_now().unwrap_or_else(|| SystemClock.now())
    }

    /// The pool the store uses.
    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    /// The store's settings.
    pub fn config(&self) -> &PgConfig {
        &self.config
    }

    /// Creates or upgrades the outbox table; returns how many migrations ran (0 when current).
    pub async fn migrate(&self) -> Result<usize, StoreError> {
        schema::migrate_up(&self.pool, &self.config).await
    }

    /// PostgreSQL's plan for a leased claim of `limit` events now (`EXPLAIN`, nothing is
    /// claimed), one line per plan node: for finding out why claims are slow. A healthy plan
    /// walks the `<table>_due` index and stops after `limit` rows.
    pub async fn explain_claim(&self, limit_to: usize) -> Result<String, StoreError> {
        let now = self.injected_now().unwrap_or_else(Utc::now);
        let lease = Lease {
            id: LeaseId::new(),
            holder: "explain".to_owned(),
            until: now,
        };
        let rows = self
            .claim_query(&self.sql.explain_claim, &lease, limit_to, now)
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        let lines = rows
            .iter()
            .map(|row| row.try_get::<String, _>(0))
            .collect::<Result<Vec<_>, _>>()
            .map_err(db_error)?;
        Ok(lines.join("\n"))
    }

    /// A leased claim's statement (or its `EXPLAIN`) with its parameters bound.
    fn claim_query<'q>(
        &self,
        sql: &Arc<str>,
        lease: &'q Lease,
        limit_to: usize,
        now: DateTime<Utc>,
    ) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
        sqlx::query(AssertSqlSafe(sql.clone()))
            .bind(lease.id.as_uuid())
            .bind(&lease.holder)
            .bind(lease.until)
            .bind(now)
            .bind(limit(limit_to))
            .bind(self.injected_now())
    }

    /// The table's schema version (the last migration applied; 0 before any). Below
    /// [`LATEST_VERSION`](crate::LATEST_VERSION) this library's statements may fail: run
    /// [`migrate`](Self::migrate) first.
    pub async fn schema_version(&self) -> Result<i32, StoreError> {
        schema::version(&self.pool, &self.config).await
    }

    /// Reverts the outbox's migrations: drops the table, its indexes and trigger. **Every
    /// stored event is deleted.** Returns how many migrations were reverted.
    pub async fn migrate_down(&self) -> Result<usize, StoreError> {
        schema::migrate_down(&self.pool, &self.config).await
    }

    /// What the listener's tasks need.
    fn listen_context(&self) -> crate::listen::Context {
        crate::listen::Context {
            pool: self.pool.clone(),
            channel: self.sql.channel.to_string(),
            notifier: Arc::clone(&self.notifier),
            schema: self.config.schema.clone(),
            table: self.config.table.clone(),
        }
    }

    /// Starts the listener, unless the store does not listen (then producers wake the workers
    /// after every commit).
    pub(crate) fn start_listener(&self) {
        if self.config.listen {
            self.listener.start(|| self.listen_context());
        }
    }

    /// Sends a wake-up to every listening worker, as a commit of new events does.
    async fn notify(&self) -> Result<(), StoreError> {
        sqlx::query(AssertSqlSafe(self.sql.notify.clone()))
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    /// Runs a fenced `($1 lease, $2 ids, $3 injected time)` statement that gives every event it
    /// changes the same `outcome` (ack, release), on the pool or a locked claim's transaction.
    async fn mark<'c>(
        &self,
        exec: impl sqlx::PgExecutor<'c>,
        sql: &Arc<str>,
        lease: Option<LeaseId>,
        ids: &[EventId],
        outcome: Outcome,
    ) -> Result<Vec<Recorded>, StoreError> {
        let Some(query) = fenced_statement(sql, lease, ids)? else {
            return Ok(Vec::new());
        };
        let query = query.bind(self.injected_now());
        fenced(exec, query, ids, |_| Ok(outcome)).await
    }

    /// Revives dead event `id` with `extra_attempts`, replacing its payload if `edit` says so.
    async fn revive(
        &self,
        id: EventId,
        extra_attempts: u32,
        edit: Option<&PayloadEdit>,
        now: DateTime<Utc>,
    ) -> Result<OutboxEvent, StoreError> {
        if let Some(edit) = edit {
            edit.check(&self.config.limits)?;
        }
        // The core state machine decides whether the revive is legal (and which error to give);
        // the statement re-checks `status = 'dead'` in case the event changed meanwhile.
        let current = self.get(id).await?.ok_or(StoreError::NotFound(id))?;
        transition(
            &current.lifecycle,
            &Transition::Revive { extra_attempts },
            now,
        )
        .map_err(|source| StoreError::Transition { id, source })?;
        let extra = i32::try_from(extra_attempts)
            .map_err(|_| ValidationError::new("extra_attempts", "too large"))?;
        let query = match edit {
            None => sqlx::query(AssertSqlSafe(self.sql.revive.clone())),
            Some(_) => sqlx::query(AssertSqlSafe(self.sql.edit_dead.clone())),
        }
        .bind(id.as_uuid())
        .bind(extra)
        .bind(self.injected_now());
        let query = match edit {
            None => query,
            Some(edit) => query
                .bind(Json(&edit.payload))
                .bind(&edit.by)
                .bind(&edit.note),
        };
        let row = query.fetch_optional(&self.pool).await.map_err(db_error)?;
        let revived = match row.as_ref().map(decode).transpose()? {
            Some(Ok(event)) => event,
            Some(Err(bad)) => {
                return Err(StoreError::Undecodable {
                    id,
                    reason: bad.error,
                });
            }
            None => {
                let from = self
                    .get(id)
                    .await?
                    .ok_or(StoreError::NotFound(id))?
                    .status();
                let source = outbox_core::TransitionError::Illegal {
                    from,
                    transition: "revive",
                };
                return Err(StoreError::Transition { id, source });
            }
        };
        self.notify().await?;
        Ok(revived)
    }

    /// Records failures with `sql` (the nack of a leased or a locked claim).
    async fn record_failures<'c>(
        &self,
        exec: impl sqlx::PgExecutor<'c>,
        sql: &Arc<str>,
        lease: Option<LeaseId>,
        worker: Option<&str>,
        failures: &[Failure],
        now: DateTime<Utc>,
    ) -> Result<Vec<Recorded>, StoreError> {
        let ids: Vec<EventId> = failures.iter().map(|f| f.id).collect();
        let Some(query) = fenced_statement(sql, lease, &ids)? else {
            return Ok(Vec::new());
        };
        let errors: Vec<&str> = failures.iter().map(|f| f.error.as_str()).collect();
        let retry_at: Vec<Option<DateTime<Utc>>> = failures.iter().map(|f| f.retry_at).collect();
        let query = query
            .bind(now)
            .bind(errors)
            .bind(retry_at)
            .bind(self.injected_now())
            .bind(worker);
        fenced(exec, query, &ids, |row| {
            let status: String = row.try_get(1)?;
            Ok(if status == Status::Dead.as_str() {
                Outcome::Dead
            } else {
                Outcome::Retrying {
                    at: row.try_get(2)?,
                }
            })
        })
        .await
    }

    /// Gives events back untried until `until` with `sql` (the defer of a leased or a locked
    /// claim).
    #[allow(clippy::too_many_arguments)]
    async fn record_deferral<'c>(
        &self,
        exec: impl sqlx::PgExecutor<'c>,
        sql: &Arc<str>,
        lease: Option<LeaseId>,
        ids: &[EventId],
        until: DateTime<Utc>,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<Recorded>, StoreError> {
        let Some(query) = fenced_statement(sql, lease, ids)? else {
            return Ok(Vec::new());
        };
        let query = query
            .bind(now)
            .bind(until)
            .bind(reason)
            .bind(self.injected_now());
        fenced(exec, query, ids, |row| {
            Ok(Outcome::Deferred {
                at: row.try_get(1)?,
            })
        })
        .await
    }

    /// Decodes claimed rows one by one. A row that cannot be read is marked dead at once, with
    /// the reason as its error, so it can never hold up the batch it came in or come back.
    async fn decode_claimed(
        &self,
        lease: &Lease,
        rows: &[sqlx::postgres::PgRow],
        now: DateTime<Utc>,
    ) -> Result<Vec<OutboxEvent>, StoreError> {
        let (events, bad) = decode_rows(rows)?;
        if !bad.is_empty() {
            self.nack(lease.id, &bad, now).await?;
        }
        Ok(events)
    }
}

/// Claimed rows as events, and the rows that cannot be read as permanent failures naming why.
fn decode_rows(
    rows: &[sqlx::postgres::PgRow],
) -> Result<(Vec<OutboxEvent>, Vec<Failure>), StoreError> {
    let mut events = Vec::with_capacity(rows.len());
    let mut bad = Vec::new();
    for row in rows {
        match decode(row)? {
            Ok(event) => events.push(event),
            Err(undecodable) => {
                tracing::warn!(event_id = %undecodable.id, error = %undecodable.error,
                    "outbox row cannot be read; marked dead");
                bad.push(Failure::permanent(
                    undecodable.id,
                    format!("cannot be read: {}", undecodable.error),
                ));
            }
        }
    }
    Ok((events, bad))
}

/// The start of a fenced statement about `ids`, `$1` the lease (NULL for a locked claim) and
/// `$2` the ids; refused if an event is named twice, `None` if none is named.
fn fenced_statement(
    sql: &Arc<str>,
    lease: Option<LeaseId>,
    ids: &[EventId],
) -> Result<
    Option<sqlx::query::Query<'static, sqlx::Postgres, sqlx::postgres::PgArguments>>,
    StoreError,
> {
    distinct_ids(ids.iter().copied())?;
    if ids.is_empty() {
        return Ok(None);
    }
    Ok(Some(
        sqlx::query(AssertSqlSafe(sql.clone()))
            .bind(lease.map(|l| *l.as_uuid()))
            .bind(uuids(ids)),
    ))
}

/// Runs a fenced statement returning the ids it changed, each with the outcome `changed` reads
/// off its row; the ids it did not change were not held under the lease.
async fn fenced<'c>(
    exec: impl sqlx::PgExecutor<'c>,
    query: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
    asked: &[EventId],
    changed: impl Fn(&sqlx::postgres::PgRow) -> Result<Outcome, sqlx::Error>,
) -> Result<Vec<Recorded>, StoreError> {
    let rows = query.fetch_all(exec).await.map_err(db_error)?;
    let mut outcomes = HashMap::with_capacity(rows.len());
    for row in &rows {
        let id: Uuid = row.try_get(0).map_err(db_error)?;
        outcomes.insert(id, changed(row).map_err(db_error)?);
    }
    Ok(asked
        .iter()
        .map(|id| Recorded {
            id: *id,
            outcome: outcomes
                .get(id.as_uuid())
                .copied()
                .unwrap_or(Outcome::LeaseLost),
        })
        .collect())
}

/// How PostgreSQL's outbox table differs, for the statements built in `outbox-sql`: text is
/// `text`, ids `uuid`, times `timestamptz`; a pending event may be stored as parked (its type
/// paused) or streaming (handed to the log-reading relay).
struct PgDialect;

impl outbox_sql::Dialect for PgDialect {
    fn text(&self, s: &str) -> Value {
        s.into()
    }
    fn id(&self, id: EventId) -> Value {
        (*id.as_uuid()).into()
    }
    fn time(&self, t: DateTime<Utc>) -> Value {
        t.into()
    }
    fn starts_with(&self, column: &str, prefix: &str) -> Expr {
        Expr::cust_with_values(format!("starts_with({column}, $1)"), [prefix])
    }
    fn statuses(&self, status: Status) -> Vec<&'static str> {
        match status {
            Status::Pending => vec![Status::Pending.as_str(), PARKED, STREAMING],
            other => vec![other.as_str()],
        }
    }
}

fn uuids(ids: &[EventId]) -> Vec<Uuid> {
    ids.iter().map(|id| *id.as_uuid()).collect()
}

fn limit(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

#[async_trait]
impl OutboxStore for PgStore {
    async fn claim(
        &self,
        lease: &Lease,
        limit_to: usize,
        now: DateTime<Utc>,
    ) -> Result<Vec<OutboxEvent>, StoreError> {
        if limit_to == 0 {
            return Ok(Vec::new());
        }
        let rows = self
            .claim_query(&self.sql.claim, lease, limit_to, now)
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        let mut events = self.decode_claimed(lease, &rows, now).await?;
        events.sort_by_key(|e| (e.lifecycle.next_attempt_at, e.id));
        Ok(events)
    }

    async fn renew(
        &self,
        lease: LeaseId,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let done = sqlx::query(AssertSqlSafe(self.sql.renew.clone()))
            .bind(lease.as_uuid())
            .bind(until)
            .bind(now)
            .bind(self.injected_now())
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(done.rows_affected())
    }

    async fn ack(
        &self,
        lease: LeaseId,
        ids: &[EventId],
        _now: DateTime<Utc>,
    ) -> Result<Vec<Recorded>, StoreError> {
        self.mark(
            &self.pool,
            &self.sql.ack,
            Some(lease),
            ids,
            Outcome::Delivered,
        )
        .await
    }

    async fn nack(
        &self,
        lease: LeaseId,
        failures: &[Failure],
        now: DateTime<Utc>,
    ) -> Result<Vec<Recorded>, StoreError> {
        self.record_failures(&self.pool, &self.sql.nack, Some(lease), None, failures, now)
            .await
    }

    async fn defer(
        &self,
        lease: LeaseId,
        ids: &[EventId],
        until: DateTime<Utc>,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<Recorded>, StoreError> {
        let sql = &self.sql.defer;
        self.record_deferral(&self.pool, sql, Some(lease), ids, until, reason, now)
            .await
    }

    async fn release(
        &self,
        lease: LeaseId,
        ids: &[EventId],
        _now: DateTime<Utc>,
    ) -> Result<Vec<Recorded>, StoreError> {
        let recorded = self
            .mark(
                &self.pool,
                &self.sql.release,
                Some(lease),
                ids,
                Outcome::Released,
            )
            .await?;
        if !ids.is_empty() {
            // Released events are due now: let idle workers know.
            self.notify().await?;
        }
        Ok(recorded)
    }

    async fn reclaim_expired(&self, _now: DateTime<Utc>) -> Result<Reclaimed, StoreError> {
        // Housekeeping of paused types rides on the reclaim tick every worker runs.
        let (_parked, unparked): (i64, i64) = sqlx::query_as(AssertSqlSafe(self.sql.park.clone()))
            .bind(SWEEP_CHUNK)
            .fetch_one(&self.pool)
            .await
            .map_err(db_error)?;
        if unparked > 0 {
            self.notify().await?;
        }
        let mut reclaimed = Reclaimed::default();
        loop {
            let statuses: Vec<String> = sqlx::query_scalar(AssertSqlSafe(self.sql.reclaim.clone()))
                .bind(self.injected_now())
                .bind(SWEEP_CHUNK)
                .fetch_all(&self.pool)
                .await
                .map_err(db_error)?;
            for status in &statuses {
                if status == Status::Dead.as_str() {
                    reclaimed.dead += 1;
                } else {
                    reclaimed.pending += 1;
                }
            }
            if (statuses.len() as i64) < SWEEP_CHUNK {
                return Ok(reclaimed);
            }
        }
    }

    async fn purge_delivered(
        &self,
        before: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let mut purged = 0;
        loop {
            let done = sqlx::query(AssertSqlSafe(self.sql.purge.clone()))
                .bind(before)
                .bind(SWEEP_CHUNK)
                .bind(now)
                .bind(self.injected_now())
                .execute(&self.pool)
                .await
                .map_err(db_error)?;
            purged += done.rows_affected();
            if (done.rows_affected() as i64) < SWEEP_CHUNK {
                return Ok(purged);
            }
        }
    }

    async fn get(&self, id: EventId) -> Result<Option<OutboxEvent>, StoreError> {
        let row = sqlx::query(AssertSqlSafe(self.sql.get.clone()))
            .bind(id.as_uuid())
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?;
        match row.as_ref().map(decode).transpose()? {
            None => Ok(None),
            Some(Ok(event)) => Ok(Some(event)),
            Some(Err(bad)) => Err(StoreError::Undecodable {
                id: bad.id,
                reason: bad.error,
            }),
        }
    }

    async fn list(&self, filter: &EventFilter) -> Result<EventPage, StoreError> {
        let table = (
            Alias::new(self.config.schema()),
            Alias::new(self.config.table()),
        );
        let query = outbox_sql::list(table, COLUMNS, filter, &PgDialect);
        let (sql, values) = query.build_sqlx(PostgresQueryBuilder);
        let rows = sqlx::query_with(AssertSqlSafe(sql), values)
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        let mut page = EventPage::default();
        for row in &rows {
            match decode(row)? {
                Ok(event) => page.events.push(event),
                Err(bad) => page.undecodable.push(bad),
            }
        }
        Ok(page)
    }

    async fn count_by_status(&self) -> Result<StatusCounts, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(self.sql.count.clone()))
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        let mut counts = StatusCounts::default();
        for row in rows {
            let status: String = row.try_get(0).map_err(db_error)?;
            let n = u64::try_from(row.try_get::<i64, _>(1).map_err(db_error)?).unwrap_or(0);
            counts.add(status_of(&status)?, n);
        }
        Ok(counts)
    }

    async fn retry_dead(
        &self,
        id: EventId,
        extra_attempts: u32,
        now: DateTime<Utc>,
    ) -> Result<OutboxEvent, StoreError> {
        self.revive(id, extra_attempts, None, now).await
    }

    async fn delete_events(
        &self,
        ids: &[EventId],
        _now: DateTime<Utc>,
    ) -> Result<Vec<EventId>, StoreError> {
        let ids: Vec<Uuid> = ids.iter().map(|id| *id.as_uuid()).collect();
        let rows = sqlx::query(AssertSqlSafe(self.sql.delete_events.clone()))
            .bind(ids)
            .bind(self.injected_now())
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        rows.iter()
            .map(|row| {
                row.try_get::<Uuid, _>(0)
                    .map(EventId::from_uuid)
                    .map_err(db_error)
            })
            .collect()
    }

    async fn parked_keys(&self, limit_to: usize) -> Result<Vec<ParkedKey>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(self.sql.parked_keys.clone()))
            .bind(limit(limit_to))
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        rows.iter()
            .map(|row| {
                let key: String = row.try_get(0).map_err(db_error)?;
                let head: Uuid = row.try_get(1).map_err(db_error)?;
                let waiting: i64 = row.try_get(2).map_err(db_error)?;
                Ok(ParkedKey {
                    key,
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
        let row = sqlx::query(AssertSqlSafe(self.sql.skip_dead_head.clone()))
            .bind(id.as_uuid())
            .bind(self.injected_now())
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?;
        match row.as_ref().map(decode).transpose()? {
            Some(Ok(event)) => {
                self.notify().await?;
                Ok(event)
            }
            Some(Err(bad)) => Err(StoreError::Undecodable {
                id,
                reason: bad.error,
            }),
            None => {
                let current = self.get(id).await?.ok_or(StoreError::NotFound(id))?;
                let source = outbox_core::TransitionError::Illegal {
                    from: current.status(),
                    transition: "skip",
                };
                Err(StoreError::Transition { id, source })
            }
        }
    }

    async fn history(&self, id: EventId) -> Result<History, StoreError> {
        let row = sqlx::query(AssertSqlSafe(self.sql.history.clone()))
            .bind(id.as_uuid())
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?
            .ok_or(StoreError::NotFound(id))?;
        let undecodable = |e: sqlx::Error| StoreError::Undecodable {
            id,
            reason: e.to_string(),
        };
        let attempts: Option<Json<Vec<Attempt>>> = row.try_get(0).map_err(undecodable)?;
        let notes: Option<Json<Vec<AuditNote>>> = row.try_get(1).map_err(undecodable)?;
        Ok(History {
            attempts: attempts.map(|j| j.0).unwrap_or_default(),
            notes: notes.map(|j| j.0).unwrap_or_default(),
        })
    }

    async fn edit_dead(
        &self,
        id: EventId,
        edit: &PayloadEdit,
        extra_attempts: u32,
        now: DateTime<Utc>,
    ) -> Result<OutboxEvent, StoreError> {
        self.revive(id, extra_attempts, Some(edit), now).await
    }

    async fn pause_type(&self, event_type: &str, _now: DateTime<Utc>) -> Result<bool, StoreError> {
        validate_event_type(event_type)?;
        let (added, _parked): (i64, i64) = sqlx::query_as(AssertSqlSafe(self.sql.pause.clone()))
            .bind(event_type)
            .bind(self.injected_now())
            .fetch_one(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(added > 0)
    }

    async fn resume_type(&self, event_type: &str, _now: DateTime<Utc>) -> Result<bool, StoreError> {
        validate_event_type(event_type)?;
        let removed: i64 = sqlx::query_scalar(AssertSqlSafe(self.sql.resume.clone()))
            .bind(event_type)
            .fetch_one(&self.pool)
            .await
            .map_err(db_error)?;
        self.notify().await?;
        Ok(removed > 0)
    }

    /// Read from the pending rows alone (through the partial indexes claims and resumes use),
    /// so it stays cheap however many delivered events the table keeps; rows no worker can
    /// read count too.
    async fn oldest_pending(&self) -> Result<Option<(EventId, DateTime<Utc>)>, StoreError> {
        let row: Option<(Uuid, DateTime<Utc>)> =
            sqlx::query_as(AssertSqlSafe(self.sql.oldest_pending.clone()))
                .fetch_optional(&self.pool)
                .await
                .map_err(db_error)?;
        Ok(row.map(|(id, at)| (EventId::from_uuid(id), at)))
    }

    async fn count_capped(&self, cap: u64) -> Result<StatusCounts, StoreError> {
        let cap = i64::try_from(cap).unwrap_or(i64::MAX);
        let (waiting, pending, in_flight, delivered, dead): (i64, i64, i64, i64, i64) =
            sqlx::query_as(AssertSqlSafe(self.sql.count_capped.clone()))
                .bind(cap)
                .fetch_one(&self.pool)
                .await
                .map_err(db_error)?;
        let n = |count: i64| u64::try_from(Ord::min(count, cap)).unwrap_or(0);
        Ok(StatusCounts {
            waiting: n(waiting),
            pending: n(pending),
            in_flight: n(in_flight),
            delivered: n(delivered),
            dead: n(dead),
        })
    }

    async fn delivered_since(
        &self,
        since: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let n: i64 = sqlx::query_scalar(AssertSqlSafe(self.sql.delivered_since.clone()))
            .bind(since)
            .bind(now)
            .bind(self.injected_now())
            .fetch_one(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(u64::try_from(n).unwrap_or(0))
    }

    async fn paused_types(&self) -> Result<Vec<PausedType>, StoreError> {
        let rows: Vec<(String, DateTime<Utc>)> =
            sqlx::query_as(AssertSqlSafe(self.sql.paused_types.clone()))
                .fetch_all(&self.pool)
                .await
                .map_err(db_error)?;
        Ok(rows
            .into_iter()
            .map(|(event_type, since)| PausedType { event_type, since })
            .collect())
    }

    fn wakeups(&self) -> Option<Wakeups> {
        self.config
            .listen
            .then(|| self.listener.subscribe(|| self.listen_context()))
    }

    async fn claim_locked(
        &self,
        holder: &str,
        limit_to: usize,
        hold: Duration,
        now: DateTime<Utc>,
    ) -> Result<LockedClaim, StoreError> {
        validate_hold(hold)?;
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        let rows = sqlx::query(AssertSqlSafe(self.sql.locked.claim.clone()))
            .bind(limit(limit_to))
            .bind(self.injected_now())
            .bind(hold_millis(hold))
            .fetch_all(&mut *tx)
            .await
            .map_err(db_error)?;
        let (mut events, bad) = decode_rows(&rows)?;
        if !bad.is_empty() {
            // Dead with the settlement (or claimed and marked again, if it never comes).
            self.record_failures(
                &mut *tx,
                &self.sql.locked.nack,
                None,
                Some(holder),
                &bad,
                now,
            )
            .await?;
        }
        events.sort_by_key(|e| (e.lifecycle.next_attempt_at, e.id));
        let tx = if rows.is_empty() {
            // Nothing locked: end the transaction now rather than hold a connection for it.
            tx.rollback().await.map_err(db_error)?;
            None
        } else {
            Some(tx)
        };
        let ids = events.iter().map(|e| e.id).collect();
        let batch = Box::new(PgLockedBatch {
            store: self.clone(),
            holder: holder.to_owned(),
            tx,
            ids,
        });
        Ok(LockedClaim { events, batch })
    }
}

/// The hold as `idle_in_transaction_session_timeout` takes it: whole milliseconds, at least 1
/// (0 would mean no limit), at most what the setting holds.
fn hold_millis(hold: Duration) -> String {
    hold.as_millis().clamp(1, i32::MAX as u128).to_string()
}

/// A locked claim on PostgreSQL: the transaction that locked the rows (`FOR UPDATE SKIP
/// LOCKED`), kept open while the events are delivered. The database ends it, locks and all, if
/// it stays idle longer than the hold, or when the connection drops.
struct PgLockedBatch {
    store: PgStore,
    /// The worker that claimed the batch, recorded with its failed attempts.
    holder: String,
    /// `None` once finished, or when nothing was claimed.
    tx: Option<sqlx::Transaction<'static, sqlx::Postgres>>,
    ids: Vec<EventId>,
}

impl Drop for PgLockedBatch {
    fn drop(&mut self) {
        // Dropped unfinished: roll back now, so the events are free at once rather than when
        // the pool next uses the connection (or the hold runs out).
        if let Some(tx) = self.tx.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn(async move {
                if let Err(error) = tx.rollback().await {
                    tracing::warn!(%error, "rolling back an abandoned locked claim failed");
                }
            });
        }
    }
}

#[async_trait]
impl LockedBatch for PgLockedBatch {
    async fn keep(&mut self) -> Result<(), StoreError> {
        // Any statement restarts the database's idle timer.
        if let Some(tx) = self.tx.as_mut() {
            sqlx::query("SELECT 1")
                .execute(&mut **tx)
                .await
                .map_err(db_error)?;
        }
        Ok(())
    }

    async fn finish(
        self: Box<Self>,
        settlement: &Settlement,
        now: DateTime<Utc>,
    ) -> Result<Vec<Recorded>, StoreError> {
        let mut this = *self;
        if let Err(error) = settlement.validate() {
            // Give the rows back now: a transaction merely dropped is rolled back only when its
            // connection is next used, and until then a claim skips the rows it still locks.
            if let Some(tx) = this.tx.take() {
                let _ = tx.rollback().await;
            }
            return Err(error.into());
        }
        let (store, ids) = (this.store.clone(), std::mem::take(&mut this.ids));
        let sql = &store.sql.locked;
        let mine: HashSet<EventId> = ids.iter().copied().collect();
        let held = |ids: &[EventId]| -> Vec<EventId> {
            ids.iter().copied().filter(|id| mine.contains(id)).collect()
        };
        let mut outcomes: HashMap<EventId, Outcome> = HashMap::new();
        let mut note = |recorded: Vec<Recorded>| {
            outcomes.extend(recorded.into_iter().map(|r| (r.id, r.outcome)));
        };
        let delivered = held(&settlement.delivered);
        let Some(mut tx) = this.tx.take() else {
            // Nothing was claimed: nothing is held.
            return Ok(held_nothing(settlement));
        };
        note(
            store
                .mark(&mut *tx, &sql.ack, None, &delivered, Outcome::Delivered)
                .await?,
        );
        let failures: Vec<Failure> = settlement
            .failures
            .iter()
            .filter(|f| mine.contains(&f.id))
            .cloned()
            .collect();
        note(
            store
                .record_failures(
                    &mut *tx,
                    &sql.nack,
                    None,
                    Some(&this.holder),
                    &failures,
                    now,
                )
                .await?,
        );
        if let Some(d) = &settlement.deferred {
            let deferred = held(&d.ids);
            note(
                store
                    .record_deferral(
                        &mut *tx, &sql.defer, None, &deferred, d.until, &d.reason, now,
                    )
                    .await?,
            );
        }
        tx.commit().await.map_err(db_error)?;
        let named: HashSet<EventId> = settlement.ids().collect();
        let recorded: Vec<Recorded> = settlement
            .ids()
            .chain(ids.iter().copied().filter(|id| !named.contains(id)))
            .map(|id| Recorded {
                id,
                outcome: match outcomes.get(&id) {
                    Some(outcome) => *outcome,
                    None if mine.contains(&id) => Outcome::Released,
                    None => Outcome::LeaseLost,
                },
            })
            .collect();
        if recorded.iter().any(|r| r.outcome == Outcome::Released) {
            // Given back untried and due now: let idle workers know.
            store.notify().await?;
        }
        Ok(recorded)
    }
}

/// Maps emitted ids to duplicates, shared by the emit paths.
pub(crate) fn keyed_ids(
    rows: &[sqlx::postgres::PgRow],
) -> Result<HashMap<String, EventId>, StoreError> {
    rows.iter()
        .map(|r| {
            let id: Uuid = r.try_get(0).map_err(db_error)?;
            let key: String = r.try_get(1).map_err(db_error)?;
            Ok((key, EventId::from_uuid(id)))
        })
        .collect()
}
