//! Running the shared reads on a store's sqlx pool (feature `sqlx`): the statement from this
//! crate, its rows turned into the contract's answers here, each row decoded by the store.

use outbox_core::{EventId, EventPage, OutboxEvent, Status, StatusCounts, StoreError, Undecodable};
use sea_query::{IntoTableRef, QueryBuilder};
use sea_query_sqlx::{SqlxBinder, SqlxValues};
use sqlx::{AssertSqlSafe, ColumnIndex, Database, Decode, Pool, Type};

use crate::Dialect;

/// One row read as an event, or why it cannot be.
pub type Decoded = Result<OutboxEvent, Undecodable>;

/// A store's pool with what the shared reads need of the store: its query builder, its
/// mapping of database errors, and its reading of a row.
pub struct Reads<'p, DB: Database, B> {
    /// The store's pool.
    pub pool: &'p Pool<DB>,
    /// The store's query builder.
    pub builder: std::marker::PhantomData<B>,
    /// The store's mapping of a database error (which ones may pass).
    pub error: fn(sqlx::Error) -> StoreError,
    /// The store's reading of an event row (an unreadable row is `Ok(Err(_))`).
    pub decode: fn(&DB::Row) -> Result<Decoded, StoreError>,
}

impl<DB, B> Reads<'_, DB, B>
where
    DB: Database,
    B: QueryBuilder + Default,
    SqlxValues: sqlx::IntoArguments<DB>,
    for<'c> &'c Pool<DB>: sqlx::Executor<'c, Database = DB>,
    for<'r> String: Decode<'r, DB> + Type<DB>,
    for<'r> i64: Decode<'r, DB> + Type<DB>,
    usize: ColumnIndex<DB::Row>,
    for<'s> &'s str: ColumnIndex<DB::Row>,
{
    /// The event `id` ([`by_id`](crate::by_id)), for `OutboxStore::get`: an unreadable row is
    /// an error naming it.
    pub async fn event(
        &self,
        table: impl IntoTableRef,
        columns: &str,
        id: EventId,
        dialect: &impl Dialect,
    ) -> Result<Option<OutboxEvent>, StoreError> {
        let (sql, values) = crate::by_id(table, columns, id, dialect).build_sqlx(B::default());
        let row = sqlx::query_with(AssertSqlSafe(sql), values)
            .fetch_optional(self.pool)
            .await
            .map_err(self.error)?;
        match row {
            None => Ok(None),
            Some(row) => match (self.decode)(&row)? {
                Ok(event) => Ok(Some(event)),
                Err(bad) => Err(StoreError::Undecodable {
                    id,
                    reason: bad.error,
                }),
            },
        }
    }

    /// One page of [`list`](crate::list), for `OutboxStore::list`: unreadable rows go beside
    /// the events, never fail the page.
    pub async fn page(
        &self,
        table: impl IntoTableRef,
        columns: &str,
        filter: &outbox_core::EventFilter,
        dialect: &impl Dialect,
    ) -> Result<EventPage, StoreError> {
        let (sql, values) = crate::list(table, columns, filter, dialect).build_sqlx(B::default());
        let rows = sqlx::query_with(AssertSqlSafe(sql), values)
            .fetch_all(self.pool)
            .await
            .map_err(self.error)?;
        let mut page = EventPage::default();
        for row in &rows {
            match (self.decode)(row)? {
                Ok(event) => page.events.push(event),
                Err(bad) => page.undecodable.push(bad),
            }
        }
        Ok(page)
    }

    /// Every status's count ([`count_by_status`](crate::count_by_status)).
    pub async fn counts(&self, table: impl IntoTableRef) -> Result<StatusCounts, StoreError> {
        let (sql, values) = crate::count_by_status(table).build_sqlx(B::default());
        let rows = sqlx::query_with(AssertSqlSafe(sql), values)
            .fetch_all(self.pool)
            .await
            .map_err(self.error)?;
        let mut counts = StatusCounts::default();
        for row in &rows {
            let status: String = sqlx::Row::try_get(row, "status").map_err(self.error)?;
            let n: i64 = sqlx::Row::try_get(row, "n").map_err(self.error)?;
            counts.add(status.parse()?, u64::try_from(n).unwrap_or(0));
        }
        Ok(counts)
    }

    /// Every status's count, each read no further than `cap` rows
    /// ([`count_capped`](crate::count_capped)).
    pub async fn counts_capped(
        &self,
        table: &str,
        cap: u64,
        dialect: &impl Dialect,
    ) -> Result<StatusCounts, StoreError> {
        let mut counts = StatusCounts::default();
        for status in Status::ALL {
            let (sql, values) =
                crate::count_capped(sea_query::Alias::new(table), status, cap, dialect)
                    .build_sqlx(B::default());
            let n: i64 = sqlx::query_scalar_with(AssertSqlSafe(sql), values)
                .fetch_one(self.pool)
                .await
                .map_err(self.error)?;
            counts.add(status, u64::try_from(n).unwrap_or(0));
        }
        Ok(counts)
    }
}
