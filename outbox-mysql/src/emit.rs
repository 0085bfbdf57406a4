//! Emitting inside the caller's transaction: [`MySqlEmitter`] on any connection you hold,
//! [`MySqlTransaction`] for a transaction of the store's pool.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::{Deref, DerefMut};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use outbox_core::{
    Emit, Emitted, EventId, NewEvent, OutboxEvent, Status, StoreError, Transaction, Transactional,
};
use sqlx::mysql::MySqlArguments;
use sqlx::{AssertSqlSafe, MySql, MySqlConnection, Row};
use uuid::Uuid;

use crate::error::db_error;
use crate::row::{as_int, text};
use crate::store::MySqlStore;
use crate::work::{add, lock_keys, marks, set_key};

/// Rows inserted per statement.
const INSERT_CHUNK: usize = 1000;

/// An event about to be inserted: the row, when it becomes due, and its place in its key.
struct Prepared {
    event: OutboxEvent,
    deliver_after: Option<DateTime<Utc>>,
    status: Status,
    key_place: Option<i64>,
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
                event,
                deliver_after,
                status: Status::Pending,
                key_place: None,
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
        mut rows: Vec<Prepared>,
    ) -> Result<Vec<Emitted>, StoreError> {
        let table = self.config().table().to_owned();
        // Admission to ordering keys, decided under the keys' locks.
        let keys: BTreeSet<String> = rows
            .iter()
            .filter_map(|r| r.event.ordering_key.clone())
            .collect();
        let mut heads = lock_keys(conn, &table, &keys, true).await?;
        let before = heads.clone();
        for row in &mut rows {
            let Some(key) = &row.event.ordering_key else {
                continue;
            };
            let (head, place) = heads.entry(key.clone()).or_insert((None, 0));
            if head.is_none() {
                *head = Some(row.event.id);
            } else {
                row.status = Status::Waiting;
                row.key_place = Some(*place);
                *place += 1;
            }
        }
        let idempotent = rows.iter().any(|r| r.event.idempotency_key.is_some());
        let injected = self.injected_now();
        for chunk in rows.chunks(INSERT_CHUNK) {
            let mut args = MySqlArguments::default();
            for r in chunk {
                let e = &r.event;
                add(&mut args, *e.id.as_uuid())?;
                add(&mut args, e.event_type.as_bytes().to_vec())?;
                add(&mut args, e.aggregate_type.as_bytes().to_vec())?;
                add(&mut args, e.aggregate_id.as_bytes().to_vec())?;
                add(&mut args, json(&e.payload)?)?;
                add(&mut args, json(&e.headers)?)?;
                add(
                    &mut args,
                    e.idempotency_key.as_ref().map(|k| k.as_bytes().to_vec()),
                )?;
                add(
                    &mut args,
                    e.ordering_key.as_ref().map(|k| k.as_bytes().to_vec()),
                )?;
                add(&mut args, r.status.as_str())?;
                add(&mut args, as_int("max_attempts", e.lifecycle.max_attempts)?)?;
                add(&mut args, r.deliver_after.or(injected))?;
                add(&mut args, injected)?;
                add(&mut args, injected)?;
                add(&mut args, r.key_place)?;
            }
            let values = vec![
                "(?, ?, ?, ?, ?, ?, ?, ?, ?, 0, ?, COALESCE(?, UTC_TIMESTAMP(6)), \
                 COALESCE(?, UTC_TIMESTAMP(6)), COALESCE(?, UTC_TIMESTAMP(6)), ?)";
                chunk.len()
            ]
            .join(", ");
            let sql = format!(
                "INSERT INTO `{table}` (id, event_type, aggregate_type, aggregate_id, payload, \
                 headers, idempotency_key, ordering_key, status, attempts, max_attempts, \
                 next_attempt_at, created_at, updated_at, key_place) VALUES {values}{}",
                if idempotent {
                    " ON DUPLICATE KEY UPDATE seq = seq"
                } else {
                    ""
                }
            );
            sqlx::query_with(AssertSqlSafe(sql), args)
                .execute(&mut *conn)
                .await
                .map_err(db_error)?;
        }
        let holders = if idempotent {
            self.key_holders(conn, &rows).await?
        } else {
            HashMap::new()
        };
        let mut out = Vec::with_capacity(rows.len());
        let mut stored = BTreeSet::new();
        for r in &rows {
            let id = r.event.id;
            match &r.event.idempotency_key {
                Some(key) => {
                    let holder = holders
                        .get(key)
                        .copied()
                        .ok_or_else(|| StoreError::Backend {
                            source: format!(
                                "idempotency key {key:?} conflicted but no event holds it"
                            )
                            .into(),
                        })?;
                    if holder == id {
                        stored.insert(id);
                        out.push(Emitted::Created(id));
                    } else {
                        out.push(Emitted::Duplicate(holder));
                    }
                }
                None => {
                    stored.insert(id);
                    out.push(Emitted::Created(id));
                }
            }
        }
        // The keys' new heads and places, for the events stored (a duplicate takes nothing).
        let mut after: BTreeMap<String, (Option<EventId>, i64)> = BTreeMap::new();
        for r in rows.iter().filter(|r| stored.contains(&r.event.id)) {
            if let Some(key) = &r.event.ordering_key
                && let Some(state) = heads.get(key)
            {
                after.insert(key.clone(), *state);
            }
        }
        for (key, (head, place)) in after {
            if before.get(&key) != Some(&(head, place)) {
                set_key(&mut *conn, &table, &key, head, place).await?;
            }
        }
        Ok(out)
    }

    /// Which event holds each of the rows' idempotency keys (read with a shared lock, so a
    /// key committed by another transaction after this one began is seen).
    async fn key_holders(
        &self,
        conn: &mut MySqlConnection,
        rows: &[Prepared],
    ) -> Result<HashMap<String, EventId>, StoreError> {
        let keys: BTreeSet<&str> = rows
            .iter()
            .filter_map(|r| r.event.idempotency_key.as_deref())
            .collect();
        let keys: Vec<&str> = keys.into_iter().collect();
        let mut out = HashMap::new();
        for chunk in keys.chunks(INSERT_CHUNK) {
            let mut args = MySqlArguments::default();
            for key in chunk {
                add(&mut args, key.as_bytes().to_vec())?;
            }
            let sql = format!(
                "SELECT id, idempotency_key FROM `{}` WHERE idempotency_key IN ({}) LOCK IN SHARE MODE",
                self.config().table(),
                marks(chunk.len())
            );
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

/// A transaction of the store's pool that can emit: the MySQL [`Transaction`]. Run your own
/// statements on it through [`conn`](Transaction::conn) (or `&mut *tx`); nothing is visible to
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

impl Deref for MySqlTransaction {
    type Target = MySqlConnection;
    fn deref(&self) -> &MySqlConnection {
        &self.tx
    }
}

impl DerefMut for MySqlTransaction {
    fn deref_mut(&mut self) -> &mut MySqlConnection {
        &mut self.tx
    }
}

#[async_trait]
impl Emit for MySqlTransaction {
    async fn emit(&mut self, event: NewEvent) -> Result<Emitted, StoreError> {
        self.emitted = true;
        self.store.emit(&mut self.tx, event).await
    }
    async fn emit_all(&mut self, events: Vec<NewEvent>) -> Result<Vec<Emitted>, StoreError> {
        self.emitted = true;
        self.store.emit_all(&mut self.tx, events).await
    }
}

#[async_trait]
impl Transaction for MySqlTransaction {
    type Conn = MySqlConnection;

    fn conn(&mut self) -> &mut MySqlConnection {
        &mut self.tx
    }

    async fn commit(self) -> Result<(), StoreError> {
        MySqlTransaction::commit(self).await
    }

    async fn rollback(self) -> Result<(), StoreError> {
        MySqlTransaction::rollback(self).await
    }
}

#[async_trait]
impl Transactional for MySqlStore {
    type Tx = MySqlTransaction;

    async fn begin(&self) -> Result<MySqlTransaction, StoreError> {
        MySqlStore::begin(self).await
    }
}
