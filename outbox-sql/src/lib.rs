//! The statements the outbox's SQL stores share, described once with sea-query.
//!
//! Where the dialects agree (which rows an [`EventFilter`] selects, in which order, how many;
//! how new events are inserted; how a key's queue or a pause is written), the statement is
//! built here; where they differ — how a table holds text, event ids and
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

#[cfg(feature = "sqlx")]
pub mod run;

use chrono::{DateTime, Utc};
use outbox_core::{EventFilter, EventId, Status};
use sea_query::{
    Alias, DeleteStatement, Expr, ExprTrait, InsertStatement, IntoTableRef, JoinType, OnConflict,
    Order, Query, SelectStatement, UpdateStatement, Value,
};

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

/// `columns` (SQL the store wrote, never input) of the rows of `table` whose `column` is one
/// of `keys`. A store adds its conditions, index hints and locks.
pub fn rows_in(
    table: impl IntoTableRef,
    columns: &str,
    column: &str,
    keys: Vec<Value>,
) -> SelectStatement {
    Query::select()
        .expr(Expr::cust(columns.to_owned()))
        .from(table)
        .and_where(col(column).is_in(keys))
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

/// A new event's row, each value as the store holds it; a time may be an expression (the
/// server's clock where the caller gave none).
#[derive(Clone, Debug)]
pub struct NewRow {
    /// The event id.
    pub id: Value,
    /// `event_type`.
    pub event_type: Value,
    /// `aggregate_type`.
    pub aggregate_type: Value,
    /// `aggregate_id`.
    pub aggregate_id: Value,
    /// The payload, as JSON.
    pub payload: Value,
    /// The headers, as JSON.
    pub headers: Value,
    /// The idempotency key, if any.
    pub idempotency_key: Value,
    /// The ordering key, if any.
    pub ordering_key: Value,
    /// `pending`, or `waiting` behind its key's head.
    pub status: Status,
    /// How many attempts it gets.
    pub max_attempts: i64,
    /// When it is first due.
    pub next_attempt_at: Expr,
    /// When it was created.
    pub created_at: Expr,
    /// When it last changed (its creation).
    pub updated_at: Expr,
    /// Its place in its key's queue, if it waits in one.
    pub key_place: Option<i64>,
}

/// Inserts new events (no attempt made yet), all in one statement.
pub fn insert_events(
    table: impl IntoTableRef,
    rows: impl IntoIterator<Item = NewRow>,
) -> Result<InsertStatement, sea_query::error::Error> {
    let mut insert = Query::insert();
    insert.into_table(table).columns(
        [
            "id",
            "event_type",
            "aggregate_type",
            "aggregate_id",
            "payload",
            "headers",
            "idempotency_key",
            "ordering_key",
            "status",
            "attempts",
            "max_attempts",
            "next_attempt_at",
            "created_at",
            "updated_at",
            "key_place",
        ]
        .map(Alias::new),
    );
    for r in rows {
        insert.values([
            Expr::val(r.id),
            Expr::val(r.event_type),
            Expr::val(r.aggregate_type),
            Expr::val(r.aggregate_id),
            Expr::val(r.payload),
            Expr::val(r.headers),
            Expr::val(r.idempotency_key),
            Expr::val(r.ordering_key),
            Expr::val(r.status.as_str()),
            Expr::val(0i64),
            Expr::val(r.max_attempts),
            r.next_attempt_at,
            r.created_at,
            r.updated_at,
            Expr::val(r.key_place),
        ])?;
    }
    Ok(insert)
}

/// Marks the row of `table` whose `column` is `key` dead at once because it cannot be read:
/// its attempt counted (up to its maximum), `error` as its last error, any lease and queue
/// place gone, and the store's own `also_cleared` columns set to NULL.
pub fn bury(
    table: impl IntoTableRef,
    column: &str,
    key: Value,
    error: Value,
    at: Value,
    also_cleared: &[&str],
) -> UpdateStatement {
    let attempts = Expr::case(
        col("attempts").add(1).lt(col("max_attempts")),
        col("attempts").add(1),
    )
    .finally(col("max_attempts"));
    let mut update = Query::update();
    update
        .table(table)
        .value(Alias::new("status"), Status::Dead.as_str())
        .value(Alias::new("attempts"), attempts)
        .value(Alias::new("last_error"), Expr::val(error))
        .value(Alias::new("updated_at"), Expr::val(at));
    for cleared in ["lease_id", "locked_by", "locked_until", "key_place"]
        .iter()
        .chain(also_cleared)
    {
        update.value(Alias::new(*cleared), Expr::cust("NULL"));
    }
    update.and_where(col(column).eq(key)).to_owned()
}

/// Pauses `event_type` in a pause table: fails as a unique violation if it is paused already
/// (the store answers `false` then).
pub fn pause(paused: impl IntoTableRef, event_type: Value, at: Value) -> InsertStatement {
    Query::insert()
        .into_table(paused)
        .columns([Alias::new("event_type"), Alias::new("paused_at")])
        .values_panic([Expr::val(event_type), Expr::val(at)])
        .to_owned()
}

/// Resumes `event_type`: deletes its row of a pause table (none if it was not paused).
pub fn resume(paused: impl IntoTableRef, event_type: Value) -> DeleteStatement {
    Query::delete()
        .from_table(paused)
        .and_where(col("event_type").eq(event_type))
        .to_owned()
}

/// Deletes the rows of `table` whose `column` is one of `keys` (ids, or a store's own row
/// numbers).
pub fn delete_in(table: impl IntoTableRef, column: &str, keys: Vec<Value>) -> DeleteStatement {
    Query::delete()
        .from_table(table)
        .and_where(col(column).is_in(keys))
        .to_owned()
}

/// Sets `changed` columns to the same values on every row of `table` whose `column` is one of
/// `keys`.
pub fn set_in(
    table: impl IntoTableRef,
    changed: Vec<(&str, Value)>,
    column: &str,
    keys: Vec<Value>,
) -> UpdateStatement {
    Query::update()
        .table(table)
        .values(
            changed
                .into_iter()
                .map(|(name, value)| (Alias::new(name), Expr::val(value))),
        )
        .and_where(col(column).is_in(keys))
        .to_owned()
}

/// The key table's rows of `keys`, in key order: columns `ordering_key`, `head`,
/// `next_place`. A store that locks what it reads adds its lock.
pub fn key_heads(keys_table: impl IntoTableRef, keys: Vec<Value>) -> SelectStatement {
    Query::select()
        .columns([
            Alias::new("ordering_key"),
            Alias::new("head"),
            Alias::new("next_place"),
        ])
        .from(keys_table)
        .and_where(col("ordering_key").is_in(keys))
        .order_by(Alias::new("ordering_key"), Order::Asc)
        .to_owned()
}

/// Sets a key's head and next queue place, creating the key's row if it has none.
pub fn set_key(
    keys_table: impl IntoTableRef,
    key: Value,
    head: Value,
    next_place: i64,
) -> InsertStatement {
    Query::insert()
        .into_table(keys_table)
        .columns([
            Alias::new("ordering_key"),
            Alias::new("head"),
            Alias::new("next_place"),
        ])
        .values_panic([Expr::val(key), Expr::val(head), Expr::val(next_place)])
        .on_conflict(
            OnConflict::column(Alias::new("ordering_key"))
                .update_columns([Alias::new("head"), Alias::new("next_place")])
                .to_owned(),
        )
        .to_owned()
}

/// Creates the key table's rows of `keys` that do not exist yet (next place 0, no head).
pub fn create_keys(keys_table: impl IntoTableRef, keys: Vec<Value>) -> InsertStatement {
    let mut insert = Query::insert();
    insert
        .into_table(keys_table)
        .columns([Alias::new("ordering_key")])
        .on_conflict(
            OnConflict::column(Alias::new("ordering_key"))
                .do_nothing_on([Alias::new("ordering_key")])
                .to_owned(),
        );
    for key in keys {
        insert.values_panic([Expr::val(key)]);
    }
    insert
}

/// Deletes a key's row (its queue is empty).
pub fn delete_key(keys_table: impl IntoTableRef, key: Value) -> DeleteStatement {
    Query::delete()
        .from_table(keys_table)
        .and_where(col("ordering_key").eq(key))
        .to_owned()
}

/// The keys whose head is dead (parked under the `block` dead-head policy), oldest head
/// first, at most `limit`: columns `ordering_key`, `id` (the head) and `waiting` (how many
/// events wait behind it).
pub fn parked_keys(table: &str, keys_table: &str, limit: u64) -> SelectStatement {
    let (k, e, w) = (Alias::new("k"), Alias::new("e"), Alias::new("w"));
    let waiting = Query::select()
        .expr(Expr::cust("COUNT(*)"))
        .from_as(Alias::new(table), w.clone())
        .and_where(
            Expr::col((w.clone(), Alias::new("ordering_key")))
                .equals((k.clone(), Alias::new("ordering_key"))),
        )
        .and_where(Expr::col((w, Alias::new("status"))).eq(Status::Waiting.as_str()))
        .to_owned();
    Query::select()
        .column((k.clone(), Alias::new("ordering_key")))
        .column((e.clone(), Alias::new("id")))
        .expr_as(
            Expr::SubQuery(None, Box::new(waiting.into())),
            Alias::new("waiting"),
        )
        .from_as(Alias::new(keys_table), k.clone())
        .join_as(
            JoinType::InnerJoin,
            Alias::new(table),
            e.clone(),
            Expr::col((e.clone(), Alias::new("id"))).equals((k, Alias::new("head"))),
        )
        .and_where(Expr::col((e.clone(), Alias::new("status"))).eq(Status::Dead.as_str()))
        .order_by((e.clone(), Alias::new("created_at")), Order::Asc)
        .order_by((e, Alias::new("id")), Order::Asc)
        .limit(limit)
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

    #[test]
    fn the_shared_writes_render_for_sqlite_and_mysql() {
        use sea_query::MysqlQueryBuilder;
        let (sql, values) =
            set_key("t_keys", "k".into(), Value::Bytes(None), 3).build(SqliteQueryBuilder);
        assert_eq!(
            sql,
            r#"INSERT INTO "t_keys" ("ordering_key", "head", "next_place") VALUES (?, ?, ?) ON CONFLICT ("ordering_key") DO UPDATE SET "head" = "excluded"."head", "next_place" = "excluded"."next_place""#
        );
        assert_eq!(values.0.len(), 3);
        let (sql, _) =
            set_key("t_keys", "k".into(), Value::Bytes(None), 3).build(MysqlQueryBuilder);
        assert_eq!(
            sql,
            "INSERT INTO `t_keys` (`ordering_key`, `head`, `next_place`) VALUES (?, ?, ?) ON DUPLICATE KEY UPDATE `head` = VALUES(`head`), `next_place` = VALUES(`next_place`)"
        );
        let (sql, values) =
            create_keys("t_keys", vec!["a".into(), "b".into()]).build(MysqlQueryBuilder);
        assert_eq!(
            sql,
            "INSERT INTO `t_keys` (`ordering_key`) VALUES (?), (?) ON DUPLICATE KEY UPDATE `ordering_key` = `ordering_key`"
        );
        assert_eq!(values.0.len(), 2);
        let (sql, values) = key_heads("t_keys", vec!["a".into()]).build(SqliteQueryBuilder);
        assert_eq!(
            sql,
            r#"SELECT "ordering_key", "head", "next_place" FROM "t_keys" WHERE "ordering_key" IN (?) ORDER BY "ordering_key" ASC"#
        );
        assert_eq!(values.0.len(), 1);
        let (sql, _) = delete_key("t_keys", "a".into()).build(MysqlQueryBuilder);
        assert_eq!(sql, "DELETE FROM `t_keys` WHERE `ordering_key` = ?");
        let (sql, values) =
            delete_in("t", "seq", vec![1u64.into(), 2u64.into()]).build(MysqlQueryBuilder);
        assert_eq!(sql, "DELETE FROM `t` WHERE `seq` IN (?, ?)");
        assert_eq!(values.0.len(), 2);
        let (sql, values) = set_in(
            "t",
            vec![
                ("status", "delivered".into()),
                ("hold_id", Value::Bytes(None)),
            ],
            "rowid",
            vec![7i64.into()],
        )
        .build(SqliteQueryBuilder);
        assert_eq!(
            sql,
            r#"UPDATE "t" SET "status" = ?, "hold_id" = ? WHERE "rowid" IN (?)"#
        );
        assert_eq!(values.0.len(), 3);
        let (sql, values) = pause("t_paused", "x".into(), 5i64.into()).build(SqliteQueryBuilder);
        assert_eq!(
            sql,
            r#"INSERT INTO "t_paused" ("event_type", "paused_at") VALUES (?, ?)"#
        );
        assert_eq!(values.0.len(), 2);
        let (sql, _) = resume("t_paused", "x".into()).build(MysqlQueryBuilder);
        assert_eq!(sql, "DELETE FROM `t_paused` WHERE `event_type` = ?");
        let (sql, values) = parked_keys("t", "t_keys", 10).build(MysqlQueryBuilder);
        assert_eq!(
            sql,
            "SELECT `k`.`ordering_key`, `e`.`id`, (SELECT COUNT(*) FROM `t` AS `w` WHERE `w`.`ordering_key` = `k`.`ordering_key` AND `w`.`status` = ?) AS `waiting` FROM `t_keys` AS `k` INNER JOIN `t` AS `e` ON `e`.`id` = `k`.`head` WHERE `e`.`status` = ? ORDER BY `e`.`created_at` ASC, `e`.`id` ASC LIMIT ?"
        );
        assert_eq!(values.0.len(), 3);

        let row = NewRow {
            id: vec![0u8; 16].into(),
            event_type: "t".into(),
            aggregate_type: "a".into(),
            aggregate_id: "1".into(),
            payload: "{}".into(),
            headers: "{}".into(),
            idempotency_key: Value::String(None),
            ordering_key: Value::String(None),
            status: Status::Pending,
            max_attempts: 10,
            next_attempt_at: Expr::cust_with_values(
                "COALESCE(?, UTC_TIMESTAMP(6))",
                [Value::from(1i64)],
            ),
            created_at: Expr::val(2i64),
            updated_at: Expr::val(2i64),
            key_place: None,
        };
        let (sql, values) = insert_events("t", [row.clone(), row])
            .expect("fifteen values a row")
            .build(MysqlQueryBuilder);
        let one = "(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, COALESCE(?, UTC_TIMESTAMP(6)), ?, ?, ?)";
        assert_eq!(
            sql,
            format!(
                "INSERT INTO `t` (`id`, `event_type`, `aggregate_type`, `aggregate_id`, `payload`, `headers`, `idempotency_key`, `ordering_key`, `status`, `attempts`, `max_attempts`, `next_attempt_at`, `created_at`, `updated_at`, `key_place`) VALUES {one}, {one}"
            )
        );
        assert_eq!(values.0.len(), 30);

        let (sql, values) =
            rows_in("t", "a, b", "id", vec![1i64.into(), 2i64.into()]).build(SqliteQueryBuilder);
        assert_eq!(sql, r#"SELECT a, b FROM "t" WHERE "id" IN (?, ?)"#);
        assert_eq!(values.0.len(), 2);

        // What MySQL adds to it where it locks what it reads.
        use sea_query::extension::mysql::{IndexHintScope, MySqlSelectStatementExt};
        let (sql, _) = rows_in("t", "a", "id", vec![1i64.into()])
            .force_index(Alias::new("t_id"), IndexHintScope::All)
            .lock_with_behavior(
                sea_query::LockType::Update,
                sea_query::LockBehavior::SkipLocked,
            )
            .build(MysqlQueryBuilder);
        assert_eq!(
            sql,
            "SELECT a FROM `t` FORCE INDEX (`t_id`) WHERE `id` IN (?) FOR UPDATE SKIP LOCKED"
        );

        let (sql, values) = bury(
            "t",
            "id",
            1i64.into(),
            "x".into(),
            2i64.into(),
            &["hold_id"],
        )
        .build(MysqlQueryBuilder);
        assert_eq!(
            sql,
            "UPDATE `t` SET `status` = ?, `attempts` = (CASE WHEN (`attempts` + ? < `max_attempts`) THEN `attempts` + ? ELSE `max_attempts` END), `last_error` = ?, `updated_at` = ?, `lease_id` = NULL, `locked_by` = NULL, `locked_until` = NULL, `key_place` = NULL, `hold_id` = NULL WHERE `id` = ?"
        );
        assert_eq!(values.0.len(), 6);
    }
}
