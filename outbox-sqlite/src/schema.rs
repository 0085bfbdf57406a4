//! The outbox tables as versioned migrations with a way back.
//!
//! History is kept in `outbox_migrations` of the database file, one row per (table, version),
//! apart from any migration history the application keeps. SQLite's DDL is transactional and
//! one writer holds the file at a time, so each run is one `BEGIN IMMEDIATE` transaction:
//! several processes starting at once apply each step exactly once, and a step that fails
//! leaves nothing behind.

use sqlx::{AssertSqlSafe, Row, SqliteConnection};

use crate::error::db_error;
use crate::store::SqliteStore;
use outbox_core::StoreError;

/// One schema step: `up` applies it, `down` reverts it, each a list of statements.
struct Migration {
    version: i32,
    name: &'static str,
    up: &'static [&'static str],
    down: &'static [&'static str],
}

/// The newest schema version this build knows.
pub const LATEST_VERSION: i32 = 1;

/// Placeholder: `{t}`, the table's name. `STRICT` tables: a value of the wrong type is refused,
/// never converted. Times are microseconds since the Unix epoch (UTC), as integers: exact, and
/// ordered as numbers. Text compares byte by byte (SQLite's `BINARY` collation), so two
/// idempotency keys differing only in case are two keys. `hold_id`/`hold_until` mark the
/// events a locked claim holds (see `docs/sqlite.md`).
const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "create outbox, key and pause tables",
    up: &[
        r#"CREATE TABLE "{t}" (
    id              BLOB    NOT NULL UNIQUE CHECK (length(id) = 16),
    event_type      TEXT    NOT NULL,
    aggregate_type  TEXT    NOT NULL,
    aggregate_id    TEXT    NOT NULL,
    payload         TEXT    NOT NULL,
    headers         TEXT    NOT NULL,
    idempotency_key TEXT    UNIQUE,
    ordering_key    TEXT,
    status          TEXT    NOT NULL
        CHECK (status IN ('waiting', 'pending', 'in_flight', 'delivered', 'dead')),
    attempts        INTEGER NOT NULL,
    max_attempts    INTEGER NOT NULL,
    next_attempt_at INTEGER NOT NULL,
    lease_id        BLOB,
    locked_by       TEXT,
    locked_until    INTEGER,
    last_error      TEXT,
    created_at      INTEGER NOT NULL,
    updated_at      INTEGER NOT NULL,
    delivered_at    INTEGER,
    attempt_log     TEXT,
    audit_notes     TEXT,
    key_place       INTEGER,
    hold_id         BLOB,
    hold_until      INTEGER,
    CHECK (attempts >= 0 AND attempts <= max_attempts AND max_attempts >= 1)
) STRICT"#,
        r#"CREATE INDEX "{t}_due" ON "{t}" (status, next_attempt_at, id)"#,
        r#"CREATE INDEX "{t}_leased" ON "{t}" (status, locked_until)"#,
        r#"CREATE INDEX "{t}_waiting" ON "{t}" (ordering_key, status, key_place)"#,
        r#"CREATE INDEX "{t}_delivered" ON "{t}" (status, delivered_at)"#,
        r#"CREATE TABLE "{t}_keys" (
    ordering_key TEXT    NOT NULL PRIMARY KEY,
    head         BLOB,
    next_place   INTEGER NOT NULL DEFAULT 0
) STRICT"#,
        r#"CREATE TABLE "{t}_paused" (
    event_type TEXT    NOT NULL PRIMARY KEY,
    paused_at  INTEGER NOT NULL
) STRICT"#,
    ],
    down: &[
        r#"DROP TABLE IF EXISTS "{t}_paused""#,
        r#"DROP TABLE IF EXISTS "{t}_keys""#,
        r#"DROP TABLE IF EXISTS "{t}""#,
    ],
}];

const HISTORY: &str = "CREATE TABLE IF NOT EXISTS outbox_migrations (
    table_name TEXT    NOT NULL,
    version    INTEGER NOT NULL,
    name       TEXT    NOT NULL,
    applied_at INTEGER NOT NULL,
    PRIMARY KEY (table_name, version)
) STRICT";

fn render(statement: &str, table: &str) -> String {
    statement.replace("{t}", table)
}

/// Runs `steps` in one write transaction, then commits.
async fn in_transaction<F, T>(store: &SqliteStore, steps: F) -> Result<T, StoreError>
where
    F: AsyncFnOnce(&mut SqliteConnection) -> Result<T, StoreError>,
{
    let mut tx = store.begin_write().await?;
    let value = steps(&mut tx).await?;
    tx.commit().await?;
    Ok(value)
}

async fn current(conn: &mut SqliteConnection, table: &str) -> Result<i32, StoreError> {
    sqlx::raw_sql(AssertSqlSafe(HISTORY))
        .execute(&mut *conn)
        .await
        .map_err(db_error)?;
    let row =
        sqlx::query("SELECT COALESCE(MAX(version), 0) FROM outbox_migrations WHERE table_name = ?")
            .bind(table)
            .fetch_one(&mut *conn)
            .await
            .map_err(db_error)?;
    let version: i64 = row.try_get(0).map_err(db_error)?;
    i32::try_from(version).map_err(|_| StoreError::Backend {
        source: format!("schema version {version} is out of range").into(),
    })
}

/// Applies every migration not yet applied to this table; returns how many ran.
pub(crate) async fn migrate_up(store: &SqliteStore) -> Result<usize, StoreError> {
    let table = store.config().table().to_owned();
    let at = crate::row::micros(store.now());
    in_transaction(store, async |conn| {
        let from = current(conn, &table).await?;
        let mut applied = 0;
        for m in MIGRATIONS.iter().filter(|m| m.version > from) {
            for statement in m.up {
                sqlx::raw_sql(AssertSqlSafe(render(statement, &table)))
                    .execute(&mut *conn)
                    .await
                    .map_err(db_error)?;
            }
            sqlx::query(
                "INSERT INTO outbox_migrations (table_name, version, name, applied_at) VALUES (?, ?, ?, ?)",
            )
            .bind(&table)
            .bind(m.version)
            .bind(m.name)
            .bind(at)
            .execute(&mut *conn)
            .await
            .map_err(db_error)?;
            applied += 1;
        }
        Ok(applied)
    })
    .await
}

/// Reverts every applied migration of this table, newest first; returns how many.
pub(crate) async fn migrate_down(store: &SqliteStore) -> Result<usize, StoreError> {
    let table = store.config().table().to_owned();
    in_transaction(store, async |conn| {
        let from = current(conn, &table).await?;
        let mut reverted = 0;
        for m in MIGRATIONS.iter().rev().filter(|m| m.version <= from) {
            for statement in m.down {
                sqlx::raw_sql(AssertSqlSafe(render(statement, &table)))
                    .execute(&mut *conn)
                    .await
                    .map_err(db_error)?;
            }
            sqlx::query("DELETE FROM outbox_migrations WHERE table_name = ? AND version = ?")
                .bind(&table)
                .bind(m.version)
                .execute(&mut *conn)
                .await
                .map_err(db_error)?;
            reverted += 1;
        }
        Ok(reverted)
    })
    .await
}

/// The table's schema version (0 before the first migration).
pub(crate) async fn version(store: &SqliteStore) -> Result<i32, StoreError> {
    let table = store.config().table().to_owned();
    in_transaction(store, async |conn| current(conn, &table).await).await
}
