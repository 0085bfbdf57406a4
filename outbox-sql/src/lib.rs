//! The statements the outbox's SQL stores share, described once with sea-query.
//!
//! Where the dialects agree (which rows an [`EventFilter`] selects, in which order, how many),
//! the statement is built here; where they differ — how a table holds text, event ids and
//! times, how a prefix is matched, which stored statuses a status stands for — each store
//! says so in its [`Dialect`], one visible place per backend. Values are always bound.
//!
//! ```
//! use outbox_core::{EventFilter, EventId, Status};
//! use outbox_sql::{Dialect, list};
//! use sea_query::{Expr, SqliteQueryBuilder, Value};
//!
//! struct Plain;
//! impl Dialect for Plain {
//!     fn text(&self, s: &str) -> Value { s.into() }
//!     fn id(&self, id: EventId) -> Value { id.as_uuid().as_bytes().to_vec().into() }
//!     fn time(&self, t: chrono::DateTime<chrono::Utc>) -> Value { t.timestamp_micros().into() }
//!     fn starts_with(&self, column: &str, prefix: &str) -> Expr {
//!         Expr::cust_with_values(format!("substr({column}, 1, ?) = ?"), [Value::from(prefix.len() as i64), prefix.into()])
//!     }
//! }
//!
//! let filter = EventFilter { status: Some(Status::Dead), limit: 10, ..EventFilter::default() };
//! let (sql, values) = list("outbox_event", "id, status", &filter, &Plain).build(SqliteQueryBuilder);
//! assert_eq!(sql, r#"SELECT id, status FROM "outbox_event" WHERE "status" = ? ORDER BY "id" ASC LIMIT ?"#);
//! assert_eq!(values.0.len(), 2);
//! ```

use chrono::{DateTime, Utc};
use outbox_core::{EventFilter, EventId, Status};
use sea_query::{Alias, Expr, ExprTrait, IntoTableRef, Order, Query, SelectStatement, Value};

/// What differs between the SQL stores, for the statements built here.
pub trait Dialect {
    /// A text column's value (`event_type`, `aggregate_id`, keys) as the table holds it.
    fn text(&self, s: &str) -> Value;

    /// An event id as the table holds it.
    fn id(&self, id: EventId) -> Value;

    /// A time as the table holds it.
    fn time(&self, t: DateTime<Utc>) -> Value;

    /// `column` starts with `prefix`, byte for byte.
    fn starts_with(&self, column: &str, prefix: &str) -> Expr;

    /// The stored statuses a status filter matches (a store may keep finer statuses than the
    /// contract's). Default: the status itself.
    fn statuses(&self, status: Status) -> Vec<&'static str> {
        vec![status.as_str()]
    }
}

/// The events [`OutboxStore::list`](outbox_core::OutboxStore::list) returns for `filter`:
/// `columns` (SQL the store wrote, never input) of `table`, in id order (newest first if
/// asked), from the cursor on, at most `filter.limit`.
pub fn list(
    table: impl IntoTableRef,
    columns: &str,
    filter: &EventFilter,
    dialect: &impl Dialect,
) -> SelectStatement {
    let mut query = Query::select();
    query
        .expr(Expr::cust(columns.to_owned()))
        .from(table)
        .order_by(
            Alias::new("id"),
            if filter.newest_first {
                Order::Desc
            } else {
                Order::Asc
            },
        )
        .limit(u64::try_from(filter.limit).unwrap_or(u64::MAX));
    if let Some(status) = filter.status {
        match dialect.statuses(status).as_slice() {
            [one] => query.and_where(col("status").eq(*one)),
            many => query.and_where(col("status").is_in(many.iter().copied())),
        };
    }
    let text_filters = [
        ("event_type", &filter.event_type),
        ("aggregate_type", &filter.aggregate_type),
        ("aggregate_id", &filter.aggregate_id),
        ("idempotency_key", &filter.idempotency_key),
    ];
    for (column, value) in text_filters {
        if let Some(value) = value {
            query.and_where(col(column).eq(dialect.text(value)));
        }
    }
    if let Some(prefix) = &filter.event_type_prefix {
        query.and_where(dialect.starts_with("event_type", prefix));
    }
    if let Some(from) = filter.created_from {
        query.and_where(col("created_at").gte(dialect.time(from)));
    }
    if let Some(before) = filter.created_before {
        query.and_where(col("created_at").lt(dialect.time(before)));
    }
    match (filter.after, filter.newest_first) {
        (Some(after), false) => query.and_where(col("id").gt(dialect.id(after))),
        (Some(after), true) => query.and_where(col("id").lt(dialect.id(after))),
        (None, _) => &mut query,
    };
    query
}

fn col(name: &str) -> Expr {
    Expr::col(Alias::new(name))
}

/// One event's `columns` by id ([`OutboxStore::get`](outbox_core::OutboxStore::get), and its
/// history with the history's columns).
pub fn by_id(
    table: impl IntoTableRef,
    columns: &str,
    id: EventId,
    dialect: &impl Dialect,
) -> SelectStatement {
    Query::select()
        .expr(Expr::cust(columns.to_owned()))
        .from(table)
        .and_where(col("id").eq(dialect.id(id)))
        .to_owned()
}

/// How many events each stored status holds: columns `status`, `n`.
pub fn count_by_status(table: impl IntoTableRef) -> SelectStatement {
    Query::select()
        .column(Alias::new("status"))
        .expr_as(Expr::cust("COUNT(*)"), Alias::new("n"))
        .from(table)
        .group_by_col(Alias::new("status"))
        .to_owned()
}

/// How many events hold `status`, counted only up to `cap` (a cost bounded by the cap):
/// column `n`.
pub fn count_capped(
    table: impl IntoTableRef,
    status: Status,
    cap: u64,
    dialect: &impl Dialect,
) -> SelectStatement {
    let statuses = dialect.statuses(status);
    let capped = Query::select()
        .expr(Expr::cust("1"))
        .from(table)
        .and_where(col("status").is_in(statuses))
        .limit(cap)
        .to_owned();
    Query::select()
        .expr_as(Expr::cust("COUNT(*)"), Alias::new("n"))
        .from_subquery(capped, Alias::new("c"))
        .to_owned()
}

/// How many kept events were delivered at or after `since` (on the store's clock): column
/// `n`.
pub fn delivered_since(
    table: impl IntoTableRef,
    since: DateTime<Utc>,
    dialect: &impl Dialect,
) -> SelectStatement {
    Query::select()
        .expr_as(Expr::cust("COUNT(*)"), Alias::new("n"))
        .from(table)
        .and_where(col("status").eq(Status::Delivered.as_str()))
        .and_where(col("delivered_at").gte(dialect.time(since)))
        .to_owned()
}

/// The paused event types of a pause table, by name: columns `event_type`, `paused_at`.
pub fn paused_types(paused: impl IntoTableRef) -> SelectStatement {
    Query::select()
        .columns([Alias::new("event_type"), Alias::new("paused_at")])
        .from(paused)
        .order_by(Alias::new("event_type"), Order::Asc)
        .to_owned()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sea_query::SqliteQueryBuilder;

    struct Plain;
    impl Dialect for Plain {
        fn text(&self, s: &str) -> Value {
            s.into()
        }
        fn id(&self, id: EventId) -> Value {
            id.as_uuid().as_bytes().to_vec().into()
        }
        fn time(&self, t: DateTime<Utc>) -> Value {
            t.timestamp_micros().into()
        }
        fn starts_with(&self, column: &str, prefix: &str) -> Expr {
            Expr::cust_with_values(format!("{column} LIKE ?"), [format!("{prefix}%")])
        }
    }

    #[test]
    fn the_shared_statements_bind_every_value() {
        let (sql, values) = count_capped("t", Status::Dead, 7, &Plain).build(SqliteQueryBuilder);
        assert_eq!(
            sql,
            r#"SELECT COUNT(*) AS "n" FROM (SELECT 1 FROM "t" WHERE "status" IN (?) LIMIT ?) AS "c""#
        );
        assert_eq!(values.0.len(), 2);
        let (sql, _) = count_by_status("t").build(SqliteQueryBuilder);
        assert_eq!(
            sql,
            r#"SELECT "status", COUNT(*) AS "n" FROM "t" GROUP BY "status""#
        );
        let (sql, values) =
            delivered_since("t", DateTime::UNIX_EPOCH, &Plain).build(SqliteQueryBuilder);
        assert_eq!(
            sql,
            r#"SELECT COUNT(*) AS "n" FROM "t" WHERE "status" = ? AND "delivered_at" >= ?"#
        );
        assert_eq!(values.0.len(), 2);
        let (sql, values) = by_id("t", "a, b", EventId::new(), &Plain).build(SqliteQueryBuilder);
        assert_eq!(sql, r#"SELECT a, b FROM "t" WHERE "id" = ?"#);
        assert_eq!(values.0.len(), 1);
        let (sql, _) = paused_types("t_paused").build(SqliteQueryBuilder);
        assert_eq!(
            sql,
            r#"SELECT "event_type", "paused_at" FROM "t_paused" ORDER BY "event_type" ASC"#
        );
    }
}
