//! The inbox on PostgreSQL: table `outbox_inbox` in the inbox's schema, one row per (consumer,
//! event), primary key on both. A second transaction recording the same pair waits on the key
//! until the first ends: if the first commits, the second finds a duplicate; if it rolls back,
//! the second records it. Times are the database's.

use std::time::Duration;

use async_trait::async_trait;
use outbox_core::{EventId, StoreError};
use outbox_postgres::{PgStore, PgTransaction, db_error as db, validate_identifier};
use sqlx::AssertSqlSafe;

use crate::{Inbox, InboxStore, InboxTransaction};

/// Rows deleted per statement by the purge, so it never holds an unbounded number of locks.
const PURGE_CHUNK: i64 = 10_000;

/// `"schema"."outbox_inbox"`, after checking the schema by the rule the stores use for every
/// identifier (a plain SQL identifier, so quoting is only a formality).
fn table(inbox: &Inbox) -> Result<String, StoreError> {
    validate_identifier("schema", inbox.schema())?;
    Ok(format!("\"{}\".\"outbox_inbox\"", inbox.schema()))
}

#[async_trait]
impl InboxTransaction for PgTransaction {
    async fn mark_handled(&mut self, inbox: &Inbox, event: EventId) -> Result<bool, StoreError> {
        let sql = format!(
            "INSERT INTO {} (consumer, event_id, handled_at) VALUES ($1, $2, statement_timestamp()) \
             ON CONFLICT (consumer, event_id) DO NOTHING",
            table(inbox)?
        );
        let done = sqlx::query(AssertSqlSafe(sql))
            .bind(inbox.consumer())
            .bind(event.as_uuid())
            .execute(&mut **self)
            .await
            .map_err(db)?;
        Ok(done.rows_affected() == 1)
    }
}

#[async_trait]
impl InboxStore for PgStore {
    async fn migrate_inbox(&self, inbox: &Inbox) -> Result<(), StoreError> {
        let t = table(inbox)?;
        let schema = format!("\"{}\"", inbox.schema());
        let mut tx = self.pool().begin().await.map_err(db)?;
        // One migrating process at a time (two `CREATE TABLE IF NOT EXISTS` can still collide).
        sqlx::query("SELECT pg_advisory_xact_lock(hashtext('outbox_inbox'))")
            .execute(&mut *tx)
            .await
            .map_err(db)?;
        sqlx::raw_sql(AssertSqlSafe(format!(
            "CREATE SCHEMA IF NOT EXISTS {schema}; \
             CREATE TABLE IF NOT EXISTS {t} ( \
                 consumer   text        NOT NULL, \
                 event_id   uuid        NOT NULL, \
                 handled_at timestamptz NOT NULL, \
                 PRIMARY KEY (consumer, event_id)); \
             CREATE INDEX IF NOT EXISTS \"outbox_inbox_handled_at\" ON {t} (handled_at);"
        )))
        .execute(&mut *tx)
        .await
        .map_err(db)?;
        tx.commit().await.map_err(db)
    }

    async fn purge_handled(&self, inbox: &Inbox, keep: Duration) -> Result<u64, StoreError> {
        let t = table(inbox)?;
        let sql = format!(
            "DELETE FROM {t} WHERE ctid IN (SELECT ctid FROM {t} WHERE consumer = $1 \
             AND handled_at < statement_timestamp() - make_interval(secs => $2) LIMIT $3)"
        );
        let mut purged = 0;
        loop {
            let done = sqlx::query(AssertSqlSafe(sql.clone()))
                .bind(inbox.consumer())
                .bind(keep.min(crate::MAX_RETENTION).as_secs_f64())
                .bind(PURGE_CHUNK)
                .execute(self.pool())
                .await
                .map_err(db)?;
            purged += done.rows_affected();
            if done.rows_affected() < PURGE_CHUNK as u64 {
                return Ok(purged);
            }
        }
    }

    async fn was_handled(&self, inbox: &Inbox, event: EventId) -> Result<bool, StoreError> {
        let sql = format!(
            "SELECT EXISTS (SELECT 1 FROM {} WHERE consumer = $1 AND event_id = $2)",
            table(inbox)?
        );
        sqlx::query_scalar(AssertSqlSafe(sql))
            .bind(inbox.consumer())
            .bind(event.as_uuid())
            .fetch_one(self.pool())
            .await
            .map_err(db)
    }
}
