//! [`PgStore`]: the outbox contract on PostgreSQL.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use outbox_core::{
    Clock, EventFilter, EventId, Failure, Lease, LeaseId, OutboxEvent, OutboxStore, Reclaimed,
    Status, StatusCounts, StoreError, SystemClock, Transition, ValidationError, Wakeups,
    transition,
};
use sea_query::{Alias, Expr, ExprTrait, Order, PostgresQueryBuilder, Query};
use sea_query_sqlx::SqlxBinder;
use sqlx::{AssertSqlSafe, PgPool, Row};
use uuid::Uuid;

use crate::config::PgConfig;
use crate::error::db_error;
use crate::listen::Listener;
use crate::row::event_from_row;
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
#[derive(Clone, Debug)]
pub struct PgStore {
    pub(crate) pool: PgPool,
    pub(crate) config: Arc<PgConfig>,
    pub(crate) sql: Arc<Statements>,
    pub(crate) clock: Arc<dyn Clock>,
    listener: Arc<Listener>,
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
            clock: Arc::new(SystemClock),
            listener: Arc::new(Listener::default()),
        })
    }

    /// Stamps emitted events with `clock` instead of the system time.
    pub fn with_clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
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

    /// Reverts the outbox's migrations: drops the table, its indexes and trigger. **Every
    /// stored event is deleted.** Returns how many migrations were reverted.
    pub async fn migrate_down(&self) -> Result<usize, StoreError> {
        schema::migrate_down(&self.pool, &self.config).await
    }

    /// Sends a wake-up to every listening worker, as a commit of new events does.
    async fn notify(&self) -> Result<(), StoreError> {
        sqlx::query(AssertSqlSafe(self.sql.notify.clone()))
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    /// Runs a fenced statement returning the ids it changed; reports the rest as lost.
    async fn fenced(
        &self,
        query: sqlx::query::Query<'_, sqlx::Postgres, sqlx::postgres::PgArguments>,
        asked: &[EventId],
    ) -> Result<(), StoreError> {
        let rows = query.fetch_all(&self.pool).await.map_err(db_error)?;
        let changed: HashSet<Uuid> = rows
            .iter()
            .map(|r| r.try_get::<Uuid, _>(0))
            .collect::<Result<_, _>>()
            .map_err(db_error)?;
        let lost: Vec<EventId> = asked
            .iter()
            .filter(|id| !changed.contains(id.as_uuid()))
            .copied()
            .collect();
        if lost.is_empty() {
            Ok(())
        } else {
            Err(StoreError::LeaseLost { ids: lost })
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
        let rows = sqlx::query(AssertSqlSafe(self.sql.claim.clone()))
            .bind(lease.id.as_uuid())
            .bind(&lease.holder)
            .bind(lease.until)
            .bind(now)
            .bind(limit(limit_to))
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        let mut events = rows
            .iter()
            .map(event_from_row)
            .collect::<Result<Vec<_>, _>>()?;
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
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        Ok(done.rows_affected())
    }

    async fn ack(
        &self,
        lease: LeaseId,
        ids: &[EventId],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let query = sqlx::query(AssertSqlSafe(self.sql.ack.clone()))
            .bind(lease.as_uuid())
            .bind(uuids(ids))
            .bind(now);
        self.fenced(query, ids).await
    }

    async fn nack(
        &self,
        lease: LeaseId,
        failures: &[Failure],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        if failures.is_empty() {
            return Ok(());
        }
        let ids: Vec<EventId> = failures.iter().map(|f| f.id).collect();
        let errors: Vec<&str> = failures.iter().map(|f| f.error.as_str()).collect();
        let retry_at: Vec<Option<DateTime<Utc>>> = failures.iter().map(|f| f.retry_at).collect();
        let query = sqlx::query(AssertSqlSafe(self.sql.nack.clone()))
            .bind(lease.as_uuid())
            .bind(uuids(&ids))
            .bind(now)
            .bind(errors)
            .bind(retry_at);
        self.fenced(query, &ids).await
    }

    async fn release(
        &self,
        lease: LeaseId,
        ids: &[EventId],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        if ids.is_empty() {
            return Ok(());
        }
        let query = sqlx::query(AssertSqlSafe(self.sql.release.clone()))
            .bind(lease.as_uuid())
            .bind(uuids(ids))
            .bind(now);
        let result = self.fenced(query, ids).await;
        // Released events are due now: let idle workers know.
        self.notify().await?;
        result
    }

    async fn reclaim_expired(&self, now: DateTime<Utc>) -> Result<Reclaimed, StoreError> {
        let mut reclaimed = Reclaimed::default();
        loop {
            let statuses: Vec<String> = sqlx::query_scalar(AssertSqlSafe(self.sql.reclaim.clone()))
                .bind(now)
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

    async fn purge_delivered(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
        let mut purged = 0;
        loop {
            let done = sqlx::query(AssertSqlSafe(self.sql.purge.clone()))
                .bind(before)
                .bind(SWEEP_CHUNK)
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
        row.as_ref().map(event_from_row).transpose()
    }

    async fn list(&self, filter: &EventFilter) -> Result<Vec<OutboxEvent>, StoreError> {
        let col = |name: &str| Expr::col(Alias::new(name));
        let mut query = Query::select();
        query
            .expr(Expr::cust(COLUMNS))
            .from((
                Alias::new(self.config.schema()),
                Alias::new(self.config.table()),
            ))
            .order_by(Alias::new("id"), Order::Asc)
            .limit(u64::try_from(filter.limit).unwrap_or(u64::MAX));
        if let Some(status) = filter.status {
            query.and_where(col("status").eq(status.as_str()));
        }
        if let Some(event_type) = &filter.event_type {
            query.and_where(col("event_type").eq(event_type.as_str()));
        }
        if let Some(aggregate_type) = &filter.aggregate_type {
            query.and_where(col("aggregate_type").eq(aggregate_type.as_str()));
        }
        if let Some(aggregate_id) = &filter.aggregate_id {
            query.and_where(col("aggregate_id").eq(aggregate_id.as_str()));
        }
        if let Some(after) = filter.after {
            query.and_where(col("id").gt(*after.as_uuid()));
        }
        let (sql, values) = query.build_sqlx(PostgresQueryBuilder);
        let rows = sqlx::query_with(AssertSqlSafe(sql), values)
            .fetch_all(&self.pool)
            .await
            .map_err(db_error)?;
        rows.iter().map(event_from_row).collect()
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
            match status.parse::<Status>()? {
                Status::Pending => counts.pending = n,
                Status::InFlight => counts.in_flight = n,
                Status::Delivered => counts.delivered = n,
                Status::Dead => counts.dead = n,
            }
        }
        Ok(counts)
    }

    async fn retry_dead(
        &self,
        id: EventId,
        extra_attempts: u32,
        now: DateTime<Utc>,
    ) -> Result<OutboxEvent, StoreError> {
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
        let row = sqlx::query(AssertSqlSafe(self.sql.revive.clone()))
            .bind(id.as_uuid())
            .bind(extra)
            .bind(now)
            .fetch_optional(&self.pool)
            .await
            .map_err(db_error)?;
        let revived = match row {
            Some(row) => event_from_row(&row)?,
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

    fn wakeups(&self) -> Option<Wakeups> {
        self.config
            .listen
            .then(|| self.listener.subscribe(&self.pool, &self.config.channel()))
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
