//! Emitting inside the caller's transaction: [`SqliteEmitter`] on any connection you hold,
//! [`SqliteTransaction`] for a write transaction of the store's pool.

use std::collections::{BTreeSet, HashMap};

use async_trait::async_trait;
use outbox_core::changes::admit;
use outbox_core::{Emit, Emitted, EventId, NewEvent, Status, StoreError};
use outbox_sql::{Dialect, NewRow};
use sea_query::{Alias, Expr, SqliteQueryBuilder};
use sea_query_sqlx::SqlxBinder;
use sqlx::{AssertSqlSafe, Row, SqliteConnection};
use uuid::Uuid;

use crate::error::{db_error, is_unique_violation};
use crate::row::{json, micros};
use crate::store::{SqliteDialect, SqliteStore, WriteTx};
use crate::work::{ID_CHUNK, as_int, read_keys, set_key};

/// Rows inserted per statement (14 values each, well within SQLite's 32,766).
const INSERT_CHUNK: usize = 1000;

impl SqliteStore {
    /// An emitter writing through `conn`: pass `&mut *tx` of your own `sqlx::Transaction` so
    /// the events commit or roll back with your business rows. Begin that transaction with
    /// `BEGIN IMMEDIATE` (`pool.begin_with("BEGIN IMMEDIATE")`): a deferred one that reads
    /// before it writes fails with [`StoreError::Conflict`] if another connection wrote
    /// meanwhile.
    pub fn emitter<'c>(&self, conn: &'c mut SqliteConnection) -> SqliteEmitter<'c> {
        SqliteEmitter {
            store: self.clone(),
            conn,
        }
    }

    /// Begins a write transaction on the store's pool (in turn with this process's other
    /// writers); emit through it, run your own statements on it (it dereferences to a
    /// [`SqliteConnection`]), then [`commit`](SqliteTransaction::commit), which wakes this
    /// process's waiting workers. Other writers of the process wait until it ends: keep it
    /// short.
    pub async fn begin(&self) -> Result<SqliteTransaction, StoreError> {
        Ok(SqliteTransaction {
            store: self.clone(),
            tx: self.begin_write().await?,
            emitted: false,
        })
    }

    /// Emits one event on `conn`, inside whatever transaction it is in.
    pub async fn emit(
        &self,
        conn: &mut SqliteConnection,
        event: NewEvent,
    ) -> Result<Emitted, StoreError> {
        let mut out = self.emit_all(conn, vec![event]).await?;
        out.pop().ok_or_else(|| StoreError::Backend {
            source: "an emit answered nothing".into(),
        })
    }

    /// Emits several events on `conn` (one statement per thousand); one answer per event, in
    /// order. One writer holds the database at a time, so what this reads of idempotency and
    /// ordering keys stays true until the commit: an idempotency key already taken answers
    /// [`Emitted::Duplicate`], and a key's events are admitted in commit order.
    pub async fn emit_all(
        &self,
        conn: &mut SqliteConnection,
        events: Vec<NewEvent>,
    ) -> Result<Vec<Emitted>, StoreError> {
        let now = self.now();
        let limits = self.config().limits;
        let mut prepared = Vec::with_capacity(events.len());
        for event in events {
            limits.check(&event, now)?;
            let due = event.deliver_after().unwrap_or(now);
            let event = event.into_event(EventId::new(), now, self.config().default_max_attempts);
            prepared.push((event, due));
        }
        let holders = self
            .key_holders(
                conn,
                prepared
                    .iter()
                    .filter_map(|(e, _)| e.idempotency_key.as_deref()),
            )
            .await?;
        let mut answers = Vec::with_capacity(prepared.len());
        let mut firsts: HashMap<&str, EventId> = HashMap::new();
        let mut stored = Vec::with_capacity(prepared.len());
        for (event, due) in &prepared {
            if let Some(key) = event.idempotency_key.as_deref() {
                if let Some(holder) = holders.get(key).or_else(|| firsts.get(key)) {
                    answers.push(Emitted::Duplicate(*holder));
                    continue;
                }
                firsts.insert(key, event.id);
            }
            answers.push(Emitted::Created(event.id));
            stored.push((event, *due));
        }
        // Admission to ordering keys: the first event of a key without a head heads it, the
        // rest wait in place order.
        let table = self.config().table();
        let keys: BTreeSet<String> = stored
            .iter()
            .filter_map(|(e, _)| e.ordering_key.clone())
            .collect();
        let before = read_keys(conn, table, &keys).await?;
        let mut heads = before.clone();
        let mut rows = Vec::with_capacity(stored.len());
        for (event, due) in stored {
            let (status, place) = match &event.ordering_key {
                None => (Status::Pending, None),
                Some(key) => {
                    let (head, place) = heads.entry(key.clone()).or_insert((None, 0));
                    admit(event.id, head, place)
                }
            };
            rows.push(Admitted {
                event,
                due,
                status,
                place,
            });
        }
        for chunk in rows.chunks(INSERT_CHUNK) {
            self.insert_rows(conn, chunk).await?;
        }
        for (key, (head, place)) in heads {
            if before.get(&key) != Some(&(head, place)) {
                set_key(conn, table, &key, head, place).await?;
            }
        }
        Ok(answers)
    }

    /// Inserts `rows` in one statement.
    async fn insert_rows(
        &self,
        conn: &mut SqliteConnection,
        rows: &[Admitted<'_>],
    ) -> Result<(), StoreError> {
        let mut new_rows = Vec::with_capacity(rows.len());
        for r in rows {
            let e = r.event;
            new_rows.push(NewRow {
                id: SqliteDialect.id(e.id),
                event_type: e.event_type.as_str().into(),
                aggregate_type: e.aggregate_type.as_str().into(),
                aggregate_id: e.aggregate_id.as_str().into(),
                payload: json(&e.payload)?.into(),
                headers: json(&e.headers)?.into(),
                idempotency_key: e.idempotency_key.clone().into(),
                ordering_key: e.ordering_key.clone().into(),
                status: r.status,
                max_attempts: as_int(e.lifecycle.max_attempts),
                next_attempt_at: Expr::val(micros(r.due)),
                created_at: Expr::val(micros(e.created_at)),
                updated_at: Expr::val(micros(e.updated_at)),
                key_place: r.place,
            });
        }
        let (sql, args) = outbox_sql::insert_events(Alias::new(self.config().table()), new_rows)
            .map_err(|e| StoreError::Backend {
                source: Box::new(e),
            })?
            .build_sqlx(SqliteQueryBuilder);
        match sqlx::query_with(AssertSqlSafe(sql), args)
            .execute(&mut *conn)
            .await
        {
            Ok(_) => Ok(()),
            // Only possible when this transaction read the keys on a snapshot another writer
            // has since overtaken: run it again.
            Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict {
                reason: format!(
                    "an idempotency key was taken by another transaction meanwhile ({e}); begin with BEGIN IMMEDIATE"
                ),
            }),
            Err(e) => Err(db_error(e)),
        }
    }

    /// Which event holds each of `keys`.
    async fn key_holders(
        &self,
        conn: &mut SqliteConnection,
        keys: impl Iterator<Item = &str>,
    ) -> Result<HashMap<String, EventId>, StoreError> {
        let keys: Vec<&str> = keys.collect::<BTreeSet<_>>().into_iter().collect();
        let mut out = HashMap::new();
        for chunk in keys.chunks(ID_CHUNK) {
            let keys = chunk.iter().map(|key| SqliteDialect.text(key)).collect();
            let (sql, args) = outbox_sql::rows_in(
                Alias::new(self.config().table()),
                "id, idempotency_key",
                "idempotency_key",
                keys,
            )
            .build_sqlx(SqliteQueryBuilder);
            let found = sqlx::query_with(AssertSqlSafe(sql), args)
                .fetch_all(&mut *conn)
                .await
                .map_err(db_error)?;
            for row in &found {
                let id: Uuid = row.try_get("id").map_err(db_error)?;
                let key: String = row.try_get("idempotency_key").map_err(db_error)?;
                out.insert(key, EventId::from_uuid(id));
            }
        }
        Ok(out)
    }
}

/// An event about to be inserted, with when it is due and its admission to its key.
struct Admitted<'e> {
    event: &'e outbox_core::OutboxEvent,
    due: chrono::DateTime<chrono::Utc>,
    status: Status,
    place: Option<i64>,
}

/// Emits through a connection you hold (usually `&mut *tx` of your transaction); your own
/// statements go through [`conn`](Self::conn) meanwhile.
#[derive(Debug)]
pub struct SqliteEmitter<'c> {
    store: SqliteStore,
    conn: &'c mut SqliteConnection,
}

impl SqliteEmitter<'_> {
    /// The connection the emitter writes through, for your own statements in between.
    pub fn conn(&mut self) -> &mut SqliteConnection {
        self.conn
    }
}

#[async_trait]
impl Emit for SqliteEmitter<'_> {
    async fn emit(&mut self, event: NewEvent) -> Result<Emitted, StoreError> {
        self.store.emit(self.conn, event).await
    }
    async fn emit_all(&mut self, events: Vec<NewEvent>) -> Result<Vec<Emitted>, StoreError> {
        self.store.emit_all(self.conn, events).await
    }
}

/// A write transaction of the store's pool that can emit: the SQLite [`Transaction`](outbox_core::Transaction). Run
/// your own statements on it through [`conn`](outbox_core::Transaction::conn) (or `&mut *tx`); nothing is
/// visible to workers until [`commit`](Self::commit), and dropping it rolls back.
#[derive(Debug)]
pub struct SqliteTransaction {
    store: SqliteStore,
    tx: WriteTx,
    emitted: bool,
}

impl SqliteTransaction {
    /// Commits the business rows and the events together, then wakes this process's waiting
    /// workers if an event was emitted.
    pub async fn commit(self) -> Result<(), StoreError> {
        self.tx.commit().await?;
        if self.emitted {
            self.store.wake();
        }
        Ok(())
    }

    /// Rolls back: no event, no business row.
    pub async fn rollback(self) -> Result<(), StoreError> {
        self.tx.rollback().await
    }
}

outbox_core::sql_transaction!(SqliteTransaction, SqliteConnection, SqliteStore);
