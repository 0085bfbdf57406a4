//! Emitting inside the caller's transaction: [`PgEmitter`] on any connection you hold,
//! [`PgTransaction`] for a transaction of the store's pool.

use std::collections::HashSet;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use outbox_core::{Emit, Emitted, EventId, NewEvent, OutboxEvent, StoreError, ValidationError};
use sqlx::types::Json;
use sqlx::{AssertSqlSafe, PgConnection, Postgres, Row};
use uuid::Uuid;

use crate::error::db_error;
use crate::notify;
use crate::store::{PgStore, keyed_ids};

impl PgStore {
    /// An emitter writing through `conn`: pass `&mut *tx` of your own `sqlx::Transaction` so
    /// the events commit or roll back with your business rows. The emitter never touches the
    /// store's pool.
    pub fn emitter<'c>(&self, conn: &'c mut PgConnection) -> PgEmitter<'c> {
        PgEmitter {
            store: self.clone(),
            conn,
        }
    }

    /// Begins a transaction on the store's pool; emit through it, run your own statements on
    /// it (it dereferences to a [`PgConnection`]), then [`commit`](PgTransaction::commit).
    ///
    /// Its commit wakes the workers afterwards, not from inside the transaction (the table's
    /// trigger stays quiet for it), and only if one of them is waiting for work: see
    /// "Wake-ups" in `docs/postgres.md`. The first call starts the store's listener (one
    /// connection of its own), through which it hears the workers say so.
    pub async fn begin(&self) -> Result<PgTransaction, StoreError> {
        self.start_listener();
        self.notifier
            .read_mode_once(&self.pool, &self.config.schema, &self.config.table)
            .await;
        // A streamed table's notify trigger is off for everyone: the setting would only cost
        // the server a statement per transaction.
        let begin = if self.notifier.streamed() {
            "BEGIN"
        } else {
            "BEGIN; SET LOCAL outbox.notify = 'off'"
        };
        let tx = self.pool.begin_with(begin).await.map_err(db_error)?;
        Ok(PgTransaction {
            store: self.clone(),
            tx,
            emitted: false,
        })
    }

    /// Emits one event on `conn`, inside whatever transaction it is in.
    pub async fn emit(
        &self,
        conn: &mut PgConnection,
        event: NewEvent,
    ) -> Result<Emitted, StoreError> {
        let (row, deliver_after) = self.prepare(event)?;
        let keyed = row.idempotency_key.is_some();
        let sql = if keyed {
            &self.sql.emit_one
        } else {
            &self.sql.emit_one_plain
        };
        let query = sqlx::query(AssertSqlSafe(sql.clone()))
            .bind(row.id.as_uuid())
            .bind(&row.event_type)
            .bind(&row.aggregate_type)
            .bind(&row.aggregate_id)
            .bind(&row.payload)
            .bind(Json(&row.headers))
            .bind(&row.idempotency_key)
            .bind(&row.ordering_key)
            .bind(attempts(row.lifecycle.max_attempts)?)
            .bind(deliver_after)
            .bind(self.injected_now());
        if !keyed {
            query.execute(&mut *conn).await.map_err(db_error)?;
            return Ok(Emitted::Created(row.id));
        }
        let inserted = query.fetch_optional(&mut *conn).await.map_err(db_error)?;
        if inserted.is_some() {
            return Ok(Emitted::Created(row.id));
        }
        let key = row.idempotency_key.clone().unwrap_or_default();
        let existing = self.find_keys(conn, vec![key.clone()]).await?;
        existing
            .get(&key)
            .map(|id| Emitted::Duplicate(*id))
            .ok_or_else(|| {
                // Only possible if the conflicting row was deleted between the two statements.
                StoreError::Backend {
                    source: format!("idempotency key {key:?} conflicted but no event holds it")
                        .into(),
                }
            })
    }

    /// Emits several events on `conn` in one statement; one answer per event, in order.
    pub async fn emit_all(
        &self,
        conn: &mut PgConnection,
        events: Vec<NewEvent>,
    ) -> Result<Vec<Emitted>, StoreError> {
        if events.len() <= 1 {
            let mut out = Vec::with_capacity(1);
            for event in events {
                out.push(self.emit(conn, event).await?);
            }
            return Ok(out);
        }
        let (rows, deliver_after): (Vec<_>, Vec<_>) = events
            .into_iter()
            .map(|e| self.prepare(e))
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .unzip();
        let max_attempts = rows
            .iter()
            .map(|r| attempts(r.lifecycle.max_attempts))
            .collect::<Result<Vec<_>, _>>()?;
        let keyed = rows.iter().any(|r| r.idempotency_key.is_some());
        // Events of one ordering key are admitted in the order they are inserted: the ordered
        // statement inserts in emit order.
        let ordered = rows.iter().any(|r| r.ordering_key.is_some());
        // The common batch — no keys, headers, delays or attempt limits of their own — binds
        // five arrays and constants instead of ten arrays.
        let uniform = !keyed
            && max_attempts.windows(2).all(|w| w[0] == w[1])
            && deliver_after.iter().all(Option::is_none)
            && rows
                .iter()
                .all(|r| r.headers.is_empty() && r.ordering_key.is_none());
        let sql = if uniform {
            &self.sql.emit_many_uniform
        } else if keyed || ordered {
            &self.sql.emit_many
        } else {
            &self.sql.emit_many_plain
        };
        // The columns every statement binds first, in this order.
        let query = sqlx::query(AssertSqlSafe(sql.clone()))
            .bind(rows.iter().map(|r| *r.id.as_uuid()).collect::<Vec<Uuid>>())
            .bind(
                rows.iter()
                    .map(|r| r.event_type.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                rows.iter()
                    .map(|r| r.aggregate_type.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(
                rows.iter()
                    .map(|r| r.aggregate_id.as_str())
                    .collect::<Vec<_>>(),
            )
            .bind(rows.iter().map(|r| &r.payload).collect::<Vec<_>>());
        let query = if uniform {
            query
                .bind(max_attempts.first().copied().unwrap_or(1))
                .bind(self.injected_now())
        } else {
            query
                .bind(rows.iter().map(|r| Json(&r.headers)).collect::<Vec<_>>())
                .bind(
                    rows.iter()
                        .map(|r| r.idempotency_key.as_deref())
                        .collect::<Vec<_>>(),
                )
                .bind(
                    rows.iter()
                        .map(|r| r.ordering_key.as_deref())
                        .collect::<Vec<_>>(),
                )
                .bind(max_attempts)
                .bind(deliver_after)
                .bind(self.injected_now())
        };
        if !keyed && !ordered {
            query.execute(&mut *conn).await.map_err(db_error)?;
            return Ok(rows.iter().map(|r| Emitted::Created(r.id)).collect());
        }
        let inserted = query.fetch_all(&mut *conn).await.map_err(db_error)?;
        let created: HashSet<Uuid> = inserted
            .iter()
            .map(|r| r.try_get::<Uuid, _>(0))
            .collect::<Result<_, _>>()
            .map_err(db_error)?;
        let missing: Vec<String> = rows
            .iter()
            .filter(|r| !created.contains(r.id.as_uuid()))
            .filter_map(|r| r.idempotency_key.clone())
            .collect();
        let existing = if missing.is_empty() {
            Default::default()
        } else {
            self.find_keys(conn, missing).await?
        };
        rows.iter()
            .map(|r| {
                if created.contains(r.id.as_uuid()) {
                    return Ok(Emitted::Created(r.id));
                }
                let key = r.idempotency_key.as_deref().unwrap_or_default();
                existing
                    .get(key)
                    .map(|id| Emitted::Duplicate(*id))
                    .ok_or_else(|| StoreError::Backend {
                        source: format!("idempotency key {key:?} conflicted but no event holds it")
                            .into(),
                    })
            })
            .collect()
    }

    /// Checks an event against the store's limits and gives it its id; returns it with its
    /// `deliver_after`, since the row's times come from the store's clock in the statement.
    fn prepare(&self, event: NewEvent) -> Result<(OutboxEvent, Option<DateTime<Utc>>), StoreError> {
        let now = self.local_now();
        self.config.limits.check(&event, now)?;
        let deliver_after = event.deliver_after();
        let row = event.into_event(EventId::new(), now, self.config.default_max_attempts);
        Ok((row, deliver_after))
    }

    async fn find_keys(
        &self,
        conn: &mut PgConnection,
        keys: Vec<String>,
    ) -> Result<std::collections::HashMap<String, EventId>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(self.sql.find_keys.clone()))
            .bind(keys)
            .fetch_all(&mut *conn)
            .await
            .map_err(db_error)?;
        keyed_ids(&rows)
    }
}

fn attempts(n: u32) -> Result<i32, StoreError> {
    i32::try_from(n).map_err(|_| ValidationError::new("max_attempts", "too large").into())
}

/// Emits through a connection you hold (usually `&mut *tx` of your transaction); your own
/// statements go through [`conn`](Self::conn) meanwhile.
#[derive(Debug)]
pub struct PgEmitter<'c> {
    store: PgStore,
    conn: &'c mut PgConnection,
}

impl PgEmitter<'_> {
    /// The connection the emitter writes through, for your own statements in between.
    pub fn conn(&mut self) -> &mut PgConnection {
        self.conn
    }
}

#[async_trait]
impl Emit for PgEmitter<'_> {
    async fn emit(&mut self, event: NewEvent) -> Result<Emitted, StoreError> {
        self.store.emit(self.conn, event).await
    }
    async fn emit_all(&mut self, events: Vec<NewEvent>) -> Result<Vec<Emitted>, StoreError> {
        self.store.emit_all(self.conn, events).await
    }
}

/// A transaction of the store's pool that can emit: the PostgreSQL [`Transaction`](outbox_core::Transaction). Run your own
/// statements on it through [`conn`](outbox_core::Transaction::conn) (or `&mut *tx`, as it dereferences to a
/// [`PgConnection`]); nothing is visible to workers until [`commit`](Self::commit), and dropping
/// it rolls back.
#[derive(Debug)]
pub struct PgTransaction {
    store: PgStore,
    tx: sqlx::Transaction<'static, Postgres>,
    /// Whether an event was emitted through it (only then does its commit wake the workers).
    emitted: bool,
}

impl PgTransaction {
    /// Commits the business rows and the events together.
    pub async fn commit(self) -> Result<(), StoreError> {
        let Self {
            store,
            mut tx,
            emitted,
        } = self;
        // A streamed table's events are read from the log: nobody waits for a wake-up.
        let emitted = emitted && !store.notifier.streamed();
        let inside = emitted && store.notifier.committing();
        let channel = &store.sql.channel;
        let committed = async {
            if inside {
                notify::send(&mut *tx, channel, notify::PAYLOAD).await?;
            }
            tx.commit().await
        };
        if let Err(error) = committed.await {
            if inside {
                store.notifier.wake_failed();
            }
            return Err(db_error(error));
        }
        if emitted && !inside {
            store.notifier.committed(&store.pool, channel);
        }
        Ok(())
    }

    /// Rolls back: no event, no business row.
    pub async fn rollback(self) -> Result<(), StoreError> {
        self.tx.rollback().await.map_err(db_error)
    }
}

outbox_core::sql_transaction!(PgTransaction, PgConnection, PgStore);
