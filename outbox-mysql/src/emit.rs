//! Emitting inside the caller's transaction: [`MySqlEmitter`] on any connection you hold,
//! [`MySqlTransaction`] for a transaction of the store's pool.

use std::collections::{BTreeSet, HashMap};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use outbox_core::changes::admit;
use outbox_core::{Emit, Emitted, EventId, NewEvent, OutboxEvent, Status, StoreError};
use outbox_sql::{Dialect, NewRow};
use sea_query::extension::mysql::{IndexHintScope, MySqlSelectStatementExt};
use sea_query::{Alias, Expr, LockType, MysqlQueryBuilder, Value};
use sea_query_sqlx::SqlxBinder;
use sqlx::{AssertSqlSafe, MySql, MySqlConnection, Row};
use uuid::Uuid;

use crate::error::{DUPLICATE_KEY, db_error, error_number};
use crate::row::text;
use crate::store::{MySqlDialect, MySqlStore};
use crate::work::{lock_keys, set_key};

/// Rows inserted per statement.
const INSERT_CHUNK: usize = 1000;

/// An event about to be inserted: the row, when it becomes due, and its place in its key.
struct Prepared {
    event: OutboxEvent,
    deliver_after: Option<DateTime<Utc>>,
    /// The payload and headers as stored (JSON).
    payload: Vec<u8>,
    headers: Vec<u8>,
}

impl MySqlStore {
    /// An emitter writing through `conn`: pass `&mut *tx` of your own `sqlx::Transaction` so
    /// the events commit or roll back with your business rows.
    pub fn emitter<'c>(&self, conn: &'c mut MySqlConnection) -> MySqlEmitter<'c> {
        MySqlEmitter {
            store: self.clone(),
            conn,
        }
    }

    /// Begins a transaction on the store's pool; emit through it, run your own statements on
    /// it (it dereferences to a [`MySqlConnection`]), then [`commit`](MySqlTransaction::commit),
    /// which wakes this process's waiting workers.
    pub async fn begin(&self) -> Result<MySqlTransaction, StoreError> {
        let tx = self.pool().begin().await.map_err(db_error)?;
        Ok(MySqlTransaction {
            store: self.clone(),
            tx,
            emitted: false,
        })
    }

    /// Emits one event on `conn`, inside whatever transaction it is in.
    pub async fn emit(
        &self,
        conn: &mut MySqlConnection,
        event: NewEvent,
    ) -> Result<Emitted, StoreError> {
        let mut out = self.emit_all(conn, vec![event]).await?;
        out.pop().ok_or_else(|| StoreError::Backend {
            source: "an emit answered nothing".into(),
        })
    }

    /// Emits several events on `conn` (one statement per thousand); one answer per event, in
    /// order.
    ///
    /// Events with an ordering key take their keys' row locks first (in key order, held until
    /// the transaction ends), so a key's events are admitted in commit order. An idempotency
    /// key already taken answers [`Emitted::Duplicate`]; one taken by a transaction still open
    /// makes this one wait for it, as the unique index does.
    pub async fn emit_all(
        &self,
        conn: &mut MySqlConnection,
        events: Vec<NewEvent>,
    ) -> Result<Vec<Emitted>, StoreError> {
        let now = self.local_now();
        let limits = self.config().limits;
        let mut rows = Vec::with_capacity(events.len());
        for event in events {
            limits.check(&event, now)?;
            let deliver_after = event.deliver_after();
            let event = event.into_event(EventId::new(), now, self.config().default_max_attempts);
            rows.push(Prepared {
                payload: json(&event.payload)?,
                headers: json(&event.headers)?,
                event,
                deliver_after,
            });
        }
        let idempotent = rows.iter().any(|r| r.event.idempotency_key.is_some());
        let ordered = rows.iter().any(|r| r.event.ordering_key.is_some());
        if idempotent && ordered && rows.len() > 1 {
            // Whether an event heads its key depends on whether the ones before it were
            // stored: one at a time.
            let mut out = Vec::with_capacity(rows.len());
            for row in rows {
                out.extend(self.insert(conn, vec![row]).await?);
            }
            return Ok(out);
        }
        self.insert(conn, rows).await
    }

    async fn insert(
        &self,
        conn: &mut MySqlConnection,
        rows: Vec<Prepared>,
    ) -> Result<Vec<Emitted>, StoreError> {
        let table = self.config().table().to_owned();
        // Admission to ordering keys is decided under the keys' locks, taken first.
        let keys: BTreeSet<String> = rows
            .iter()
            .filter_map(|r| r.event.ordering_key.clone())
            .collect();
        let before = lock_keys(conn, &table, &keys, true).await?;
        let idempotent = rows.iter().any(|r| r.event.idempotency_key.is_some());
        let mut locking = false;
        let mut round = 0;
        loop {
            round += 1;
            // Keys already taken are answered without an insert: a conflicting insert would
            // wait for the row's lock, which a worker's locked claim may hold for long.
            let holders = if idempotent {
                self.key_holders(conn, &rows, locking).await?
            } else {
                HashMap::new()
            };
            let mut answers = Vec::with_capacity(rows.len());
            let mut firsts: HashMap<&str, EventId> = HashMap::new();
            let mut stored = Vec::with_capacity(rows.len());
            for r in &rows {
                let id = r.event.id;
                if let Some(key) = r.event.idempotency_key.as_deref() {
                    if let Some(holder) = holders.get(key).or_else(|| firsts.get(key)) {
                        answers.push(Emitted::Duplicate(*holder));
                        continue;
                    }
                    firsts.insert(key, id);
                }
                answers.push(Emitted::Created(id));
                stored.push(r);
            }
            let mut heads = before.clone();
            let mut admitted = Vec::with_capacity(stored.len());
            for r in &stored {
                let admission = match &r.event.ordering_key {
                    None => (Status::Pending, None),
                    Some(key) => {
                        let (head, place) = heads.entry(key.clone()).or_insert((None, 0));
                        admit(r.event.id, head, place)
                    }
                };
                admitted.push(admission);
            }
            match self.insert_rows(conn, &stored, &admitted).await {
                Ok(()) => {}
                // A transaction that committed the same key meanwhile: read the keys again,
                // this time waiting for their rows.
                Err(e) if error_number(&e) == Some(DUPLICATE_KEY) && idempotent && round < 3 => {
                    locking = true;
                    continue;
                }
                Err(e) => return Err(db_error(e)),
            }
            for (key, state) in heads {
                if before.get(&key) != Some(&state) {
                    set_key(&mut *conn, &table, &key, state.0, state.1).await?;
                }
            }
            return Ok(answers);
        }
    }

    /// Inserts `rows`, each with its admission (status, place in its key's queue).
    async fn insert_rows(
        &self,
        conn: &mut MySqlConnection,
        rows: &[&Prepared],
        admitted: &[(Status, Option<i64>)],
    ) -> Result<(), sqlx::Error> {
        let injected = self.injected_now();
        let table = self.config().table();
        // Times the caller did not give are the server's clock.
        let time = |t: Option<DateTime<Utc>>| {
            Expr::cust_with_values(
                "COALESCE(?, UTC_TIMESTAMP(6))",
                [Value::ChronoDateTimeUtc(t)],
            )
        };
        let text = |t: &str| MySqlDialect.text(t);
        let opt_text = |t: &Option<String>| t.as_deref().map_or(Value::Bytes(None), text);
        for (chunk, admitted) in rows.chunks(INSERT_CHUNK).zip(admitted.chunks(INSERT_CHUNK)) {
            let new_rows = chunk.iter().zip(admitted).map(|(r, (status, place))| {
                let e = &r.event;
                NewRow {
                    id: MySqlDialect.id(e.id),
                    event_type: text(&e.event_type),
                    aggregate_type: text(&e.aggregate_type),
                    aggregate_id: text(&e.aggregate_id),
                    payload: r.payload.clone().into(),
                    headers: r.headers.clone().into(),
                    idempotency_key: opt_text(&e.idempotency_key),
                    ordering_key: opt_text(&e.ordering_key),
                    status: *status,
                    max_attempts: i64::from(e.lifecycle.max_attempts),
                    next_attempt_at: time(r.deliver_after.or(injected)),
                    created_at: time(injected),
                    updated_at: time(injected),
                    key_place: *place,
                }
            });
            let (sql, args) = outbox_sql::insert_events(Alias::new(table), new_rows)
                .map_err(|e| sqlx::Error::Encode(Box::new(e)))?
                .build_sqlx(MysqlQueryBuilder);
            sqlx::query_with(AssertSqlSafe(sql), args)
                .execute(&mut *conn)
                .await?;
        }
        Ok(())
    }

    /// Which event holds each of the rows' idempotency keys: a plain read, or with `locking` a
    /// shared-lock read, which also sees a key committed after this transaction's snapshot.
    async fn key_holders(
        &self,
        conn: &mut MySqlConnection,
        rows: &[Prepared],
        locking: bool,
    ) -> Result<HashMap<String, EventId>, StoreError> {
        let keys: BTreeSet<&str> = rows
            .iter()
            .filter_map(|r| r.event.idempotency_key.as_deref())
            .collect();
        let keys: Vec<&str> = keys.into_iter().collect();
        let mut out = HashMap::new();
        let table = self.config().table();
        for chunk in keys.chunks(INSERT_CHUNK) {
            let keys = chunk.iter().map(|key| MySqlDialect.text(key)).collect();
            let mut select = outbox_sql::rows_in(
                Alias::new(table),
                "id, idempotency_key",
                "idempotency_key",
                keys,
            );
            select.force_index(
                Alias::new(format!("{table}_idempotency_key")),
                IndexHintScope::All,
            );
            if locking {
                // MySQL's and MariaDB's LOCK IN SHARE MODE.
                select.lock(LockType::Share);
            }
            let (sql, args) = select.build_sqlx(MysqlQueryBuilder);
            let found = sqlx::query_with(AssertSqlSafe(sql), args)
                .fetch_all(&mut *conn)
                .await
                .map_err(db_error)?;
            for row in &found {
                let id: Uuid = row.try_get("id").map_err(db_error)?;
                out.insert(text(row, "idempotency_key")?, EventId::from_uuid(id));
            }
        }
        Ok(out)
    }
}

fn json<T: serde::Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, StoreError> {
    serde_json::to_vec(value).map_err(|e| StoreError::Backend {
        source: Box::new(e),
    })
}

/// Emits through a connection you hold (usually `&mut *tx` of your transaction); your own
/// statements go through [`conn`](Self::conn) meanwhile.
#[derive(Debug)]
pub struct MySqlEmitter<'c> {
    store: MySqlStore,
    conn: &'c mut MySqlConnection,
}

impl MySqlEmitter<'_> {
    /// The connection the emitter writes through, for your own statements in between.
    pub fn conn(&mut self) -> &mut MySqlConnection {
        self.conn
    }
}

#[async_trait]
impl Emit for MySqlEmitter<'_> {
    async fn emit(&mut self, event: NewEvent) -> Result<Emitted, StoreError> {
        self.store.emit(self.conn, event).await
    }
    async fn emit_all(&mut self, events: Vec<NewEvent>) -> Result<Vec<Emitted>, StoreError> {
        self.store.emit_all(self.conn, events).await
    }
}

/// A transaction of the store's pool that can emit: the MySQL [`Transaction`](outbox_core::Transaction). Run your own
/// statements on it through [`conn`](outbox_core::Transaction::conn) (or `&mut *tx`); nothing is visible to
/// workers until [`commit`](Self::commit), and dropping it rolls back.
#[derive(Debug)]
pub struct MySqlTransaction {
    store: MySqlStore,
    tx: sqlx::Transaction<'static, MySql>,
    emitted: bool,
}

impl MySqlTransaction {
    /// Commits the business rows and the events together, then wakes this process's waiting
    /// workers if an event was emitted.
    pub async fn commit(self) -> Result<(), StoreError> {
        self.tx.commit().await.map_err(db_error)?;
        if self.emitted {
            self.store.wake();
        }
        Ok(())
    }

    /// Rolls back: no event, no business row.
    pub async fn rollback(self) -> Result<(), StoreError> {
        self.tx.rollback().await.map_err(db_error)
    }
}

outbox_core::sql_transaction!(MySqlTransaction, MySqlConnection, MySqlStore);
