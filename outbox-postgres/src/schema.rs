//! The outbox table, its indexes and wake-up trigger, as versioned migrations with a way back.
//!
//! History is kept in `<schema>.outbox_migrations`, one row per (table, version), apart from any
//! migration history the application keeps (sqlx's `_sqlx_migrations`, refinery, diesel…): the
//! library never reads or writes the application's history, and the application's tools never
//! see the outbox's. Migrations run in one transaction under an advisory lock, so several
//! processes starting at once apply each step exactly once.

use sqlx::{AssertSqlSafe, PgPool};

use crate::config::PgConfig;
use crate::error::db_error;
use outbox_core::StoreError;

/// One schema step: `up` applies it, `down` reverts it.
struct Migration {
    version: i32,
    name: &'static str,
    up: &'static str,
    down: &'static str,
}

/// The steps, in order. Placeholders: `{schema}`, `{table}`, `{qualified}`, `{channel}`.
const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "create outbox table",
        up: r#"
CREATE TABLE {qualified} (
    id              uuid        PRIMARY KEY,
    event_type      text        NOT NULL,
    aggregate_type  text        NOT NULL,
    aggregate_id    text        NOT NULL,
    payload         jsonb       NOT NULL,
    headers         jsonb       NOT NULL DEFAULT '{}'::jsonb,
    idempotency_key text,
    ordering_key    text,
    status          text        NOT NULL DEFAULT 'pending'
                    CHECK (status IN ('pending', 'in_flight', 'delivered', 'dead')),
    attempts        integer     NOT NULL DEFAULT 0 CHECK (attempts >= 0),
    max_attempts    integer     NOT NULL CHECK (max_attempts >= 1),
    next_attempt_at timestamptz NOT NULL,
    lease_id        uuid,
    locked_by       text,
    locked_until    timestamptz,
    last_error      text,
    created_at      timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL,
    delivered_at    timestamptz,
    CHECK (attempts <= max_attempts),
    CHECK ((status = 'in_flight') = (lease_id IS NOT NULL AND locked_until IS NOT NULL))
);
CREATE UNIQUE INDEX "{table}_idempotency_key" ON {qualified} (idempotency_key) WHERE idempotency_key IS NOT NULL;
CREATE INDEX "{table}_due" ON {qualified} (next_attempt_at, id) WHERE status = 'pending';
CREATE INDEX "{table}_leased" ON {qualified} (locked_until) WHERE status = 'in_flight';
CREATE INDEX "{table}_delivered" ON {qualified} (delivered_at) WHERE status = 'delivered';
CREATE FUNCTION {schema}."{table}_notify"() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM pg_notify('{channel}', '');
    RETURN NULL;
END
$fn$;
CREATE TRIGGER "{table}_notify" AFTER INSERT ON {qualified}
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}."{table}_notify"();
"#,
        down: r#"
DROP TABLE IF EXISTS {qualified};
DROP FUNCTION IF EXISTS {schema}."{table}_notify"();
"#,
    },
    // Transactions begun by the store (`PgStore::begin`) set `outbox.notify = off` and wake
    // the workers after their commit instead (debounced, off the commit path): a NOTIFY inside
    // a transaction serialises its commit with every other notifying transaction's.
    // Transactions of the application's own (`PgStore::emitter`) keep the trigger's wake-up.
    Migration {
        version: 2,
        name: "notify only when the transaction does not wake the workers itself",
        up: r#"
CREATE OR REPLACE FUNCTION {schema}."{table}_notify"() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    IF current_setting('outbox.notify', true) IS DISTINCT FROM 'off' THEN
        PERFORM pg_notify('{channel}', '');
    END IF;
    RETURN NULL;
END
$fn$;
"#,
        down: r#"
CREATE OR REPLACE FUNCTION {schema}."{table}_notify"() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM pg_notify('{channel}', '');
    RETURN NULL;
END
$fn$;
"#,
    },
    // The same rule as migration 2, decided by the trigger's WHEN condition: a transaction
    // that switched the wake-up off no longer calls the PL/pgSQL function at all (measured with
    // pgbench at 16 clients: ~3.5% of an emitting transaction's throughput for the call, ~1%
    // for the condition).
    Migration {
        version: 3,
        name: "skip the notification trigger by its WHEN condition",
        up: r#"
DROP TRIGGER "{table}_notify" ON {qualified};
CREATE TRIGGER "{table}_notify" AFTER INSERT ON {qualified}
    FOR EACH STATEMENT
    WHEN (current_setting('outbox.notify', true) IS DISTINCT FROM 'off')
    EXECUTE FUNCTION {schema}."{table}_notify"();
"#,
        down: r#"
DROP TRIGGER "{table}_notify" ON {qualified};
CREATE TRIGGER "{table}_notify" AFTER INSERT ON {qualified}
    FOR EACH STATEMENT EXECUTE FUNCTION {schema}."{table}_notify"();
"#,
    },
    // Per-key ordering (see `outbox_core::ordering`):
    // - admission, in a trigger, so that it holds for every emit: a new event with an ordering
    //   key takes the key's lock (held until its transaction ends, so a key's events are
    //   admitted in commit order) and heads the key if it has no head (`head_key` set), or
    //   waits behind it (`waiting`, at the back of the key's queue, `key_place`). A revived
    //   event that had given up its key is admitted again, at the back;
    // - release: the store's statements that make a head give up its key (`head_key` cleared:
    //   delivered, dead under the skip policy, skipped by an operator) call `_promote` with the
    //   released keys, in the same statement after the rows changed. It takes the keys' locks
    //   and then, in a statement of its own (a snapshot taken after the locks), promotes each
    //   key's first waiting event: a successor whose producer still held the lock when the head
    //   was released is committed by then and is seen.
    Migration {
        version: 4,
        name: "per-key ordering: waiting events, one head per key",
        up: r#"
ALTER TABLE {qualified} DROP CONSTRAINT "{table}_status_check";
ALTER TABLE {qualified} ADD CONSTRAINT "{table}_status_check"
    CHECK (status IN ('waiting', 'pending', 'in_flight', 'delivered', 'dead'));
ALTER TABLE {qualified} ADD COLUMN head_key text, ADD COLUMN key_place bigint;
CREATE UNIQUE INDEX "{table}_head" ON {qualified} (head_key) WHERE head_key IS NOT NULL;
CREATE INDEX "{table}_waiting" ON {qualified} (ordering_key, key_place) WHERE status = 'waiting';
CREATE SEQUENCE {schema}."{table}_key_place";
CREATE FUNCTION {schema}."{table}_admit"() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('{channel}:' || NEW.ordering_key, 0));
    -- A statement of its own: its snapshot is taken after the lock, so it sees every head
    -- committed by the lock's previous holders.
    IF EXISTS (SELECT 1 FROM {qualified} WHERE head_key = NEW.ordering_key) THEN
        NEW.status := 'waiting';
        NEW.head_key := NULL;
        NEW.key_place := nextval('{schema}."{table}_key_place"');
    ELSE
        NEW.head_key := NEW.ordering_key;
        NEW.key_place := NULL;
    END IF;
    RETURN NEW;
END
$fn$;
CREATE TRIGGER "{table}_admit" BEFORE INSERT ON {qualified} FOR EACH ROW
    WHEN (NEW.ordering_key IS NOT NULL)
    EXECUTE FUNCTION {schema}."{table}_admit"();
CREATE TRIGGER "{table}_readmit" BEFORE UPDATE ON {qualified} FOR EACH ROW
    WHEN (OLD.status = 'dead' AND NEW.status = 'pending' AND NEW.ordering_key IS NOT NULL
          AND OLD.head_key IS NULL)
    EXECUTE FUNCTION {schema}."{table}_admit"();
CREATE FUNCTION {schema}."{table}_promote"(keys text[], at timestamptz) RETURNS bigint
LANGUAGE plpgsql AS $fn$
DECLARE
    promoted bigint;
BEGIN
    PERFORM pg_advisory_xact_lock(hashtextextended('{channel}:' || k, 0))
    FROM (SELECT DISTINCT k FROM unnest(keys) AS u(k) WHERE k IS NOT NULL ORDER BY k) AS s;
    UPDATE {qualified} SET status = 'pending', head_key = ordering_key, key_place = NULL,
        updated_at = at
    WHERE id IN (
        SELECT w.id FROM (SELECT DISTINCT k FROM unnest(keys) AS u(k) WHERE k IS NOT NULL) AS s,
        LATERAL (SELECT id FROM {qualified} WHERE status = 'waiting' AND ordering_key = s.k
                 ORDER BY key_place LIMIT 1) AS w
        WHERE NOT EXISTS (SELECT 1 FROM {qualified} WHERE head_key = s.k));
    GET DIAGNOSTICS promoted = ROW_COUNT;
    RETURN promoted;
END
$fn$;
"#,
        down: r#"
DROP FUNCTION {schema}."{table}_promote"(text[], timestamptz);
DROP TRIGGER "{table}_readmit" ON {qualified};
DROP TRIGGER "{table}_admit" ON {qualified};
DROP FUNCTION {schema}."{table}_admit"();
DROP SEQUENCE {schema}."{table}_key_place";
UPDATE {qualified} SET status = 'pending' WHERE status = 'waiting';
ALTER TABLE {qualified} DROP COLUMN head_key, DROP COLUMN key_place;
ALTER TABLE {qualified} DROP CONSTRAINT "{table}_status_check";
ALTER TABLE {qualified} ADD CONSTRAINT "{table}_status_check"
    CHECK (status IN ('pending', 'in_flight', 'delivered', 'dead'));
"#,
    },
    // Operators' tools. Failed attempts (`attempt_log`) and payload edits (`audit_notes`) are
    // JSON arrays on the row, appended by the statements that record them and bounded there:
    // no second table to keep in step when events are deleted. A paused type's pending events
    // are parked in status `paused` (read back as pending), out of the `_due` index, so claims
    // never walk a paused backlog; `_paused_events` finds them again on resume. `_dead` keeps
    // dead events' listing and count cheap however many events are kept. Still no index on
    // the aggregate (docs/postgres.md says why): a search by aggregate id scans.
    Migration {
        version: 5,
        name: "attempt history, audit notes, paused event types",
        up: r#"
ALTER TABLE {qualified} DROP CONSTRAINT "{table}_status_check";
ALTER TABLE {qualified} ADD CONSTRAINT "{table}_status_check"
    CHECK (status IN ('waiting', 'pending', 'paused', 'in_flight', 'delivered', 'dead'));
ALTER TABLE {qualified} ADD COLUMN attempt_log jsonb, ADD COLUMN audit_notes jsonb;
CREATE TABLE {schema}."{table}_paused" (
    event_type text        PRIMARY KEY,
    paused_at  timestamptz NOT NULL
);
CREATE INDEX "{table}_paused_events" ON {qualified} (event_type) WHERE status = 'paused';
CREATE INDEX "{table}_dead" ON {qualified} (id) WHERE status = 'dead';
"#,
        down: r#"
DROP INDEX {schema}."{table}_dead";
DROP INDEX {schema}."{table}_paused_events";
DROP TABLE {schema}."{table}_paused";
UPDATE {qualified} SET status = 'pending' WHERE status = 'paused';
ALTER TABLE {qualified} DROP COLUMN attempt_log, DROP COLUMN audit_notes;
ALTER TABLE {qualified} DROP CONSTRAINT "{table}_status_check";
ALTER TABLE {qualified} ADD CONSTRAINT "{table}_status_check"
    CHECK (status IN ('waiting', 'pending', 'in_flight', 'delivered', 'dead'));
"#,
    },
    // The log-reading relay (`docs/stream.md`). A table switched to streaming takes new events
    // as `streaming` (the column's default, set by `PgStore::start_streaming`): read from the
    // write-ahead log through a publication, never claimed. Admission to an ordering key
    // happens when a streamed event is handed to the table's path instead (`_unstream`), not on
    // insert: in commit order, by the one reader of the stream.
    Migration {
        version: 6,
        name: "streamed events: status streaming, admitted when handed to the table",
        up: r#"
ALTER TABLE {qualified} DROP CONSTRAINT "{table}_status_check";
ALTER TABLE {qualified} ADD CONSTRAINT "{table}_status_check"
    CHECK (status IN ('streaming', 'waiting', 'pending', 'paused', 'in_flight', 'delivered', 'dead'));
DROP TRIGGER "{table}_admit" ON {qualified};
CREATE TRIGGER "{table}_admit" BEFORE INSERT ON {qualified} FOR EACH ROW
    WHEN (NEW.ordering_key IS NOT NULL AND NEW.status <> 'streaming')
    EXECUTE FUNCTION {schema}."{table}_admit"();
CREATE TRIGGER "{table}_unstream" BEFORE UPDATE ON {qualified} FOR EACH ROW
    WHEN (OLD.status = 'streaming' AND NEW.status = 'pending' AND NEW.ordering_key IS NOT NULL)
    EXECUTE FUNCTION {schema}."{table}_admit"();
"#,
        down: r#"
ALTER TABLE {qualified} ALTER COLUMN status SET DEFAULT 'pending';
ALTER TABLE {qualified} ENABLE TRIGGER "{table}_notify";
UPDATE {qualified} SET status = 'pending' WHERE status = 'streaming';
DROP PUBLICATION IF EXISTS "{channel}_stream";
DROP TRIGGER "{table}_unstream" ON {qualified};
DROP TRIGGER "{table}_admit" ON {qualified};
CREATE TRIGGER "{table}_admit" BEFORE INSERT ON {qualified} FOR EACH ROW
    WHEN (NEW.ordering_key IS NOT NULL)
    EXECUTE FUNCTION {schema}."{table}_admit"();
ALTER TABLE {qualified} DROP CONSTRAINT "{table}_status_check";
ALTER TABLE {qualified} ADD CONSTRAINT "{table}_status_check"
    CHECK (status IN ('waiting', 'pending', 'paused', 'in_flight', 'delivered', 'dead'));
"#,
    },
];

fn render(template: &str, config: &PgConfig) -> String {
    template
        .replace("{qualified}", &config.qualified_table())
        .replace("{channel}", &config.channel())
        .replace("{schema}", &config.quoted_schema())
        .replace("{table}", config.table())
}

const HISTORY: &str = "outbox_migrations";

/// Applies every migration not yet applied to this table; returns how many ran.
pub(crate) async fn migrate_up(pool: &PgPool, config: &PgConfig) -> Result<usize, StoreError> {
    let mut tx = pool.begin().await.map_err(db_error)?;
    prepare(&mut tx, config).await?;
    let current = current_version(&mut tx, config).await?;
    let mut applied = 0;
    for m in MIGRATIONS.iter().filter(|m| m.version > current) {
        sqlx::raw_sql(AssertSqlSafe(render(m.up, config)))
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        let record = format!(
            "INSERT INTO {}.{HISTORY} (table_name, version, name, applied_at) VALUES ($1, $2, $3, now())",
            config.quoted_schema()
        );
        sqlx::query(AssertSqlSafe(record))
            .bind(config.table())
            .bind(m.version)
            .bind(m.name)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        applied += 1;
    }
    tx.commit().await.map_err(db_error)?;
    Ok(applied)
}

/// Reverts every applied migration of this table, newest first: the outbox table, its
/// indexes, trigger and history rows are gone afterwards. **Deletes every stored event.**
pub(crate) async fn migrate_down(pool: &PgPool, config: &PgConfig) -> Result<usize, StoreError> {
    let mut tx = pool.begin().await.map_err(db_error)?;
    prepare(&mut tx, config).await?;
    let current = current_version(&mut tx, config).await?;
    let mut reverted = 0;
    for m in MIGRATIONS.iter().rev().filter(|m| m.version <= current) {
        sqlx::raw_sql(AssertSqlSafe(render(m.down, config)))
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        let forget = format!(
            "DELETE FROM {}.{HISTORY} WHERE table_name = $1 AND version = $2",
            config.quoted_schema()
        );
        sqlx::query(AssertSqlSafe(forget))
            .bind(config.table())
            .bind(m.version)
            .execute(&mut *tx)
            .await
            .map_err(db_error)?;
        reverted += 1;
    }
    tx.commit().await.map_err(db_error)?;
    Ok(reverted)
}

/// Takes the per-table migration lock and makes sure the schema and history table exist.
async fn prepare(tx: &mut sqlx::PgConnection, config: &PgConfig) -> Result<(), StoreError> {
    sqlx::query("SELECT pg_advisory_xact_lock(hashtext($1))")
        .bind(format!("outbox-migrate:{}", config.channel()))
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
    // "already exists, skipping" and the like are expected here: keep them out of the logs.
    let ddl = format!(
        "SET LOCAL client_min_messages TO warning;
         CREATE SCHEMA IF NOT EXISTS {schema};
         CREATE TABLE IF NOT EXISTS {schema}.{HISTORY} (
             table_name text        NOT NULL,
             version    integer     NOT NULL,
             name       text        NOT NULL,
             applied_at timestamptz NOT NULL,
             PRIMARY KEY (table_name, version)
         );",
        schema = config.quoted_schema()
    );
    sqlx::raw_sql(AssertSqlSafe(ddl))
        .execute(&mut *tx)
        .await
        .map_err(db_error)?;
    Ok(())
}

async fn current_version(
    tx: &mut sqlx::PgConnection,
    config: &PgConfig,
) -> Result<i32, StoreError> {
    let sql = format!(
        "SELECT coalesce(max(version), 0) FROM {}.{HISTORY} WHERE table_name = $1",
        config.quoted_schema()
    );
    sqlx::query_scalar(AssertSqlSafe(sql))
        .bind(config.table())
        .fetch_one(&mut *tx)
        .await
        .map_err(db_error)
}

/// The table's schema version: the last migration applied to it, 0 when none is (or when
/// there is no history at all).
pub(crate) async fn version(pool: &PgPool, config: &PgConfig) -> Result<i32, StoreError> {
    let history = format!("{}.{HISTORY}", config.quoted_schema());
    let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
        .bind(&history)
        .fetch_one(pool)
        .await
        .map_err(db_error)?;
    if !exists {
        return Ok(0);
    }
    let sql = format!("SELECT coalesce(max(version), 0) FROM {history} WHERE table_name = $1");
    sqlx::query_scalar(AssertSqlSafe(sql))
        .bind(config.table())
        .fetch_one(pool)
        .await
        .map_err(db_error)
}

/// The newest schema version this library knows: the last migration's.
pub const LATEST_VERSION: i32 = MIGRATIONS[MIGRATIONS.len() - 1].version;
