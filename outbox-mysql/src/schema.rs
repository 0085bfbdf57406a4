//! The outbox tables as versioned migrations with a way back.
//!
//! History is kept in `outbox_migrations` of the connection's database, one row per (table,
//! version), apart from any migration history the application keeps. MySQL commits every DDL
//! statement on its own, so the steps run under a named lock (`GET_LOCK`) instead of in one
//! transaction: several processes starting at once apply each step exactly once, and a step
//! is recorded only after all its statements ran.

use sqlx::{AssertSqlSafe, MySqlPool, Row};

use crate::config::MySqlConfig;
use crate::error::db_error;
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

/// Placeholder: `{t}`, the table's name. Text columns that are compared or indexed are
/// `VARBINARY`: byte-exact like PostgreSQL's `text` (no case-insensitive collation deciding that
/// two idempotency keys are one), and within InnoDB's index length at the longest key the
/// limits allow (1024 bytes).
const MIGRATIONS: &[Migration] = &[Migration {
    version: 1,
    name: "create outbox, key and pause tables",
    up: &[
        r"CREATE TABLE `{t}` (
    seq             BIGINT UNSIGNED NOT NULL AUTO_INCREMENT PRIMARY KEY,
    id              BINARY(16)      NOT NULL,
    event_type      VARBINARY(1024) NOT NULL,
    aggregate_type  VARBINARY(1024) NOT NULL,
    aggregate_id    VARBINARY(1024) NOT NULL,
    payload         LONGBLOB        NOT NULL,
    headers         MEDIUMBLOB      NOT NULL,
    idempotency_key VARBINARY(1024) NULL,
    ordering_key    VARBINARY(1024) NULL,
    status          VARCHAR(16)     NOT NULL,
    attempts        INT             NOT NULL,
    max_attempts    INT             NOT NULL,
    next_attempt_at DATETIME(6)     NOT NULL,
    lease_id        BINARY(16)      NULL,
    locked_by       VARBINARY(1024) NULL,
    locked_until    DATETIME(6)     NULL,
    last_error      MEDIUMBLOB      NULL,
    created_at      DATETIME(6)     NOT NULL,
    updated_at      DATETIME(6)     NOT NULL,
    delivered_at    DATETIME(6)     NULL,
    attempt_log     MEDIUMBLOB      NULL,
    audit_notes     LONGBLOB        NULL,
    key_place       BIGINT          NULL,
    UNIQUE KEY `{t}_id` (id),
    UNIQUE KEY `{t}_idempotency_key` (idempotency_key),
    KEY `{t}_due` (status, next_attempt_at, id),
    KEY `{t}_leased` (status, locked_until),
    KEY `{t}_waiting` (ordering_key, status, key_place),
    KEY `{t}_delivered` (status, delivered_at),
    CHECK (status IN ('waiting', 'pending', 'in_flight', 'delivered', 'dead')),
    CHECK (attempts >= 0 AND attempts <= max_attempts AND max_attempts >= 1)
) ENGINE = InnoDB",
        r"CREATE TABLE `{t}_keys` (
    ordering_key VARBINARY(1024) NOT NULL PRIMARY KEY,
    head         BINARY(16)      NULL,
    next_place   BIGINT          NOT NULL DEFAULT 0
) ENGINE = InnoDB",
        r"CREATE TABLE `{t}_paused` (
    event_type VARBINARY(1024) NOT NULL PRIMARY KEY,
    paused_at  DATETIME(6)     NOT NULL
) ENGINE = InnoDB",
    ],
    down: &[
        "DROP TABLE IF EXISTS `{t}_paused`",
        "DROP TABLE IF EXISTS `{t}_keys`",
        "DROP TABLE IF EXISTS `{t}`",
    ],
}];

const HISTORY: &str = "CREATE TABLE IF NOT EXISTS outbox_migrations (
    table_name VARCHAR(64)  NOT NULL,
    version    INT          NOT NULL,
    name       VARCHAR(255) NOT NULL,
    applied_at DATETIME(6)  NOT NULL,
    PRIMARY KEY (table_name, version)
) ENGINE = InnoDB";

fn render(statement: &str, config: &MySqlConfig) -> String {
    statement.replace("{t}", config.table())
}

/// Runs `steps` on one connection under the table's migration lock.
async fn locked<F, T>(pool: &MySqlPool, config: &MySqlConfig, steps: F) -> Result<T, StoreError>
where
    F: AsyncFnOnce(&mut sqlx::MySqlConnection) -> Result<T, StoreError>,
{
    let mut conn = pool.acquire().await.map_err(db_error)?;
    let name = format!("outbox_migrate:{}", config.table());
    let got: Option<i64> = sqlx::query_scalar("SELECT GET_LOCK(?, 60)")
        .bind(&name)
        .fetch_one(&mut *conn)
        .await
        .map_err(db_error)?;
    if got != Some(1) {
        return Err(StoreError::Unavailable {
            source: format!("another process held the migration lock {name:?} for 60 s").into(),
        });
    }
    let result = steps(&mut conn).await;
    let released = sqlx::query("SELECT RELEASE_LOCK(?)")
        .bind(&name)
        .execute(&mut *conn)
        .await
        .map_err(db_error);
    let value = result?;
    released?;
    Ok(value)
}

async fn current(
    conn: &mut sqlx::MySqlConnection,
    config: &MySqlConfig,
) -> Result<i32, StoreError> {
    sqlx::raw_sql(AssertSqlSafe(HISTORY))
        .execute(&mut *conn)
        .await
        .map_err(db_error)?;
    let row =
        sqlx::query("SELECT COALESCE(MAX(version), 0) FROM outbox_migrations WHERE table_name = ?")
            .bind(config.table())
            .fetch_one(&mut *conn)
            .await
            .map_err(db_error)?;
    let version: i64 = row.try_get(0).map_err(db_error)?;
    i32::try_from(version).map_err(|_| StoreError::Backend {
        source: format!("schema version {version} is out of range").into(),
    })
}

/// Applies every migration not yet applied to this table; returns how many ran.
pub(crate) async fn migrate_up(
    pool: &MySqlPool,
    config: &MySqlConfig,
) -> Result<usize, StoreError> {
    locked(pool, config, async |conn| {
        let from = current(conn, config).await?;
        let mut applied = 0;
        for m in MIGRATIONS.iter().filter(|m| m.version > from) {
            for statement in m.up {
                sqlx::raw_sql(AssertSqlSafe(render(statement, config)))
                    .execute(&mut *conn)
                    .await
                    .map_err(db_error)?;
            }
            sqlx::query(
                "INSERT INTO outbox_migrations (table_name, version, name, applied_at) VALUES (?, ?, ?, UTC_TIMESTAMP(6))",
            )
            .bind(config.table())
            .bind(m.version)
            .bind(m.name)
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
pub(crate) async fn migrate_down(
    pool: &MySqlPool,
    config: &MySqlConfig,
) -> Result<usize, StoreError> {
    locked(pool, config, async |conn| {
        let from = current(conn, config).await?;
        let mut reverted = 0;
        for m in MIGRATIONS.iter().rev().filter(|m| m.version <= from) {
            for statement in m.down {
                sqlx::raw_sql(AssertSqlSafe(render(statement, config)))
                    .execute(&mut *conn)
                    .await
                    .map_err(db_error)?;
            }
            sqlx::query("DELETE FROM outbox_migrations WHERE table_name = ? AND version = ?")
                .bind(config.table())
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
pub(crate) async fn version(pool: &MySqlPool, config: &MySqlConfig) -> Result<i32, StoreError> {
    let mut conn = pool.acquire().await.map_err(db_error)?;
    current(&mut conn, config).await
}
