//! One store operation as a write transaction: SQLite lets one writer at a time hold the
//! file, so the rows an operation changes are read inside its `BEGIN IMMEDIATE` transaction,
//! changed in Rust by the core state machine ([`transition`]) exactly as the memory store
//! changes them, and written back together before the commit. The rules live in
//! `outbox-core`; this module only moves rows.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use outbox_core::changes::{Changes, Rejoin, RowWork, moves_on};
use outbox_core::{EventId, LeaseId, OutboxEvent, Status, StoreError, Transition};
use outbox_sql::Dialect;
use sea_query::{Alias, Expr, ExprTrait, SqliteQueryBuilder, Value};
use sea_query_sqlx::SqlxBinder;
use sqlx::sqlite::SqliteArguments;
use sqlx::{Arguments, AssertSqlSafe, Row, Sqlite, SqliteConnection};
use uuid::Uuid;

use crate::error::db_error;
use crate::row::{COLUMNS, Hold, Stored, decode, json, micros};
use crate::store::{SqliteDialect, SqliteStore, WriteTx};

/// The name a read gives the rowid when it selects it (see [`Work::load`]).
pub(crate) const ROWID: &str = "row_number";

/// Rows written back per statement.
const WRITE_CHUNK: usize = 500;
/// Ids looked up per statement.
pub(crate) const ID_CHUNK: usize = 1000;

/// `?, ?, …` for `n` values.
pub(crate) fn marks(n: usize) -> String {
    vec!["?"; n].join(", ")
}

/// Adds a value to a statement's arguments.
pub(crate) fn add<'q, T>(args: &mut SqliteArguments, value: T) -> Result<(), StoreError>
where
    T: 'q + sqlx::Encode<'q, Sqlite> + sqlx::Type<Sqlite>,
{
    args.add(value)
        .map_err(|source| StoreError::Backend { source })
}

/// A count (`attempts`, `max_attempts`) as the table stores it.
pub(crate) fn as_int(n: u32) -> i64 {
    i64::from(n)
}

/// An open write transaction of the store with the rows it read for change.
pub(crate) struct Work {
    store: SqliteStore,
    pub(crate) tx: WriteTx,
    /// The store's clock reading for this operation: every transition happens at it.
    pub(crate) at: DateTime<Utc>,
    changes: Changes<Hold>,
    /// The changeable columns of each row as the table holds them, to write back only what
    /// changed.
    read: BTreeMap<EventId, Vec<Cell>>,
    /// The rowid of each row read in this transaction with one (a claim's), so that its
    /// changes are written by rowid, not looked up by id in the id index. Only rows read in
    /// this transaction: a `VACUUM` may renumber rows between transactions, never within one.
    rowids: BTreeMap<EventId, i64>,
    /// The rows the last read buried, unreadable.
    buried: Vec<EventId>,
    /// Every row found unreadable (and so dead) in this transaction, with its ordering key.
    unreadable: BTreeMap<EventId, Option<String>>,
    /// Unreadable rows to delete at the end.
    gone_unreadable: Vec<EventId>,
}

impl Work {
    /// Begins a write transaction (after this process's other writers, then any other
    /// process's), at the store's clock reading.
    pub(crate) async fn begin(store: &SqliteStore) -> Result<Self, StoreError> {
        let tx = store.begin_write().await?;
        let at = store.now();
        Ok(Self {
            store: store.clone(),
            tx,
            at,
            changes: Changes::new(at, store.config().dead_head()),
            read: BTreeMap::new(),
            rowids: BTreeMap::new(),
            buried: Vec::new(),
            unreadable: BTreeMap::new(),
            gone_unreadable: Vec::new(),
        })
    }

    /// Reads the store's clock again: every later change happens at the new reading (a claim's
    /// transaction kept open across its deliveries records their outcomes when they are known).
    pub(crate) fn read_clock(&mut self) {
        self.at = self.store.now();
        self.changes.set_at(self.at);
    }

    fn table(&self) -> &str {
        self.store.config().table()
    }

    /// The outbox table, for statements described in `outbox-sql`.
    fn table_ref(&self) -> Alias {
        Alias::new(self.table())
    }

    /// Runs a `SELECT` of [`COLUMNS`] (and `attempt_log`, and the rowid named [`ROWID`] if the
    /// changes are to be written by rowid) and keeps its rows for change; returns their ids in
    /// the order read. A row that cannot be read is buried (see
    /// [`bury`](Self::bury)) and left out, so it never stops the rows around it.
    pub(crate) async fn load(
        &mut self,
        sql: String,
        args: impl sqlx::IntoArguments<Sqlite>,
    ) -> Result<Vec<EventId>, StoreError> {
        let rows = sqlx::query_with(AssertSqlSafe(sql), args)
            .fetch_all(&mut *self.tx)
            .await
            .map_err(db_error)?;
        let mut ids = Vec::with_capacity(rows.len());
        self.buried.clear();
        for row in &rows {
            let stored = match decode(row)? {
                Ok(stored) => stored,
                Err(bad) => {
                    let key: Option<String> = row.try_get("ordering_key").unwrap_or(None);
                    if bad.status != Status::Dead {
                        self.bury(bad.id, &bad.error, key.clone()).await?;
                    }
                    self.unreadable.insert(bad.id, key);
                    continue;
                }
            };
            let id = stored.event.id;
            if let Ok(rowid) = row.try_get::<i64, _>(ROWID) {
                self.rowids.insert(id, rowid);
            }
            let as_read = columns(&stored)?;
            if self.changes.read(stored) {
                self.read.insert(id, as_read);
            }
            ids.push(id);
        }
        Ok(ids)
    }

    /// Marks a row that cannot be read dead at once, saying why in its last error (its attempt
    /// counted, as a permanent failure's): it can never be delivered, and left pending it would
    /// fail every claim that reached it. A dead head keeps or gives up its ordering key as any
    /// dead head does.
    async fn bury(
        &mut self,
        id: EventId,
        error: &str,
        key: Option<String>,
    ) -> Result<(), StoreError> {
        tracing::warn!(event_id = %id, %error, "outbox row cannot be read; marked dead");
        let bury = outbox_sql::bury(
            self.table_ref(),
            "id",
            SqliteDialect.id(id),
            SqliteDialect.text(&format!("cannot be read: {error}")),
            SqliteDialect.time(self.at),
            &["hold_id", "hold_until"],
        );
        run(&mut self.tx, bury).await?;
        self.changes.buried(id, key);
        self.buried.push(id);
        Ok(())
    }

    /// Whether a row read in this transaction could not be read (it is dead).
    pub(crate) fn is_unreadable(&self, id: EventId) -> bool {
        self.unreadable.contains_key(&id)
    }

    /// Deletes a row found unreadable before the commit (an operator's way to be rid of it);
    /// if it headed its key, the key moves on.
    pub(crate) fn delete_unreadable(&mut self, id: EventId) {
        if let Some(key) = self.unreadable.get(&id).cloned() {
            if let Some(key) = key {
                self.changes.leave_key(key, id);
            }
            self.gone_unreadable.push(id);
        }
    }

    /// Reads those of the named events that match `condition`, if any; events that do not
    /// exist or do not match are not read.
    pub(crate) async fn read_where(
        &mut self,
        ids: &[EventId],
        condition: Option<Expr>,
    ) -> Result<(), StoreError> {
        let columns = format!("{COLUMNS}, attempt_log");
        for chunk in ids.chunks(ID_CHUNK) {
            let ids = chunk.iter().map(|id| SqliteDialect.id(*id)).collect();
            let mut select = outbox_sql::rows_in(self.table_ref(), &columns, "id", ids);
            if let Some(condition) = &condition {
                select.and_where(condition.clone());
            }
            let (sql, values) = select.build_sqlx(SqliteQueryBuilder);
            self.load(sql, values).await?;
        }
        Ok(())
    }

    /// Reads the named events; events that do not exist are simply not read.
    pub(crate) async fn read(&mut self, ids: &[EventId]) -> Result<(), StoreError> {
        self.read_where(ids, None).await
    }

    /// Reads the named events held under `lease`; the others are not read (a change to them
    /// is refused as a lost lease).
    pub(crate) async fn read_held(
        &mut self,
        ids: &[EventId],
        lease: LeaseId,
    ) -> Result<(), StoreError> {
        let held = Expr::col(Alias::new("status"))
            .eq(Status::InFlight.as_str())
            .and(Expr::col(Alias::new("lease_id")).eq(lease.as_uuid().as_bytes().to_vec()));
        self.read_where(ids, Some(held)).await
    }

    /// Reads event `id`; [`StoreError::NotFound`] if there is no such event.
    pub(crate) async fn read_one(&mut self, id: EventId) -> Result<OutboxEvent, StoreError> {
        self.read(&[id]).await?;
        self.event(id).cloned().ok_or(StoreError::NotFound(id))
    }

    /// The event as read (and changed so far), if it was read.
    pub(crate) fn event(&self, id: EventId) -> Option<&OutboxEvent> {
        self.changes.event(id)
    }

    /// A claimed event, for its deliverer (see [`Changes::hand_out`]).
    pub(crate) fn hand_out(&mut self, id: EventId) -> Option<OutboxEvent> {
        self.changes.hand_out(id)
    }

    /// The locked claim marking a read event, and until when.
    pub(crate) fn hold_of(&self, id: EventId) -> Option<(Uuid, DateTime<Utc>)> {
        self.changes.row(id).and_then(|r| r.extra.0)
    }

    /// Marks a read event held by the locked claim `hold` until `until` (or by none); the
    /// event itself does not change.
    pub(crate) fn set_hold(&mut self, id: EventId, hold: Option<(Uuid, DateTime<Utc>)>) {
        if let Some(row) = self.changes.row_mut(id) {
            row.extra = Hold(hold);
        }
    }

    /// Marks the named events, as read, held by the locked claim `hold` until `until`, with
    /// one narrow statement at once (the rest of each row is unchanged); returns the rows, to
    /// settle later without reading them again.
    pub(crate) async fn hold(
        &mut self,
        ids: &[EventId],
        hold: Uuid,
        until: DateTime<Utc>,
    ) -> Result<Vec<Stored>, StoreError> {
        for chunk in ids.chunks(ID_CHUNK) {
            let set = vec![
                ("hold_id", Value::Bytes(Some(hold.as_bytes().to_vec()))),
                ("hold_until", Value::BigInt(Some(micros(until)))),
            ];
            let ids = chunk.iter().map(|id| SqliteDialect.id(*id)).collect();
            let mark = outbox_sql::set_in(self.table_ref(), set, "id", ids);
            run(&mut self.tx, mark).await?;
        }
        let mut rows = self.changes.take(ids);
        for row in &mut rows {
            row.extra = Hold(Some((hold, until)));
        }
        Ok(rows)
    }

    /// Rows read earlier (by a locked claim, and unchanged since: every writer leaves an event
    /// under a live hold alone), as if read now.
    pub(crate) fn keep_rows(&mut self, rows: Vec<Stored>) -> Result<(), StoreError> {
        for row in &rows {
            self.read.insert(row.event.id, columns(row)?);
        }
        self.changes.keep(rows);
        Ok(())
    }

    /// Applies `t` to a read event (see [`Changes::apply`]); any locked claim's mark on it goes.
    pub(crate) fn apply(&mut self, id: EventId, t: &Transition) -> Result<OutboxEvent, StoreError> {
        self.changes.apply(id, t)
    }

    /// Settles one event of a locked batch (see [`Changes::settle_locked`]).
    pub(crate) fn settle_locked(
        &mut self,
        id: EventId,
        claim: &Transition,
        t: &Transition,
        delete_delivered: bool,
    ) -> Result<outbox_core::Outcome, StoreError> {
        self.changes.settle_locked(id, claim, t, delete_delivered)
    }

    /// Marks a read event changed (its `updated_at` moved to now).
    pub(crate) fn touch(&mut self, id: EventId) {
        self.changes.touch(id);
    }

    /// Deletes a read event before the commit; if it headed its key, the key moves on.
    pub(crate) fn delete(&mut self, id: EventId) {
        self.changes.delete(id);
    }

    /// Gives up `key` for `head` (an operator's skip).
    pub(crate) fn leave_key(&mut self, key: String, head: EventId) {
        self.changes.leave_key(key, head);
    }

    /// A pending event that does not head its key rejoins it: at the back of its queue if the
    /// key has a head, as its head if not.
    pub(crate) async fn rejoin_key(&mut self, id: EventId) -> Result<(), StoreError> {
        let Some(key) = self.event(id).and_then(|e| e.ordering_key.clone()) else {
            return Ok(());
        };
        let table = &self.table().to_owned();
        let keys = BTreeSet::from([key.clone()]);
        let (head, place) = read_keys(&mut self.tx, table, &keys)
            .await?
            .remove(&key)
            .unwrap_or((None, 0));
        match Rejoin::of(id, head, place) {
            Rejoin::Heads => {}
            Rejoin::Waits { head, place } => {
                self.changes.wait_at(id, place)?;
                set_key(&mut self.tx, table, &key, Some(head), place + 1).await?;
            }
            Rejoin::Leads => set_key(&mut self.tx, table, &key, Some(id), place).await?,
        }
        Ok(())
    }

    /// Whether `id` heads its ordering key.
    pub(crate) async fn heads_key(&mut self, id: EventId) -> Result<bool, StoreError> {
        let Some(key) = self.event(id).and_then(|e| e.ordering_key.clone()) else {
            return Ok(false);
        };
        let keys = BTreeSet::from([key.clone()]);
        let table = &self.table().to_owned();
        let heads = read_keys(&mut self.tx, table, &keys).await?;
        Ok(heads.get(&key).and_then(|(head, _)| *head) == Some(id))
    }

    /// Moves on every key whose head gave it up: its first waiting event is promoted, or the
    /// key's row goes.
    async fn release_keys(&mut self) -> Result<(), StoreError> {
        let table = &self.table().to_owned();
        loop {
            let leaving = self.changes.take_leaving();
            if leaving.is_empty() {
                return Ok(());
            }
            let keys: BTreeSet<String> = leaving.keys().cloned().collect();
            let heads = read_keys(&mut self.tx, table, &keys).await?;
            for (key, candidates) in leaving {
                let Some((head, place)) = heads.get(&key) else {
                    continue;
                };
                if !moves_on(*head, &candidates) {
                    continue;
                }
                let sql = format!(
                    "SELECT {COLUMNS}, attempt_log FROM \"{table}\" \
                     WHERE ordering_key = ? AND status = 'waiting' ORDER BY key_place LIMIT 1"
                );
                let mut args = SqliteArguments::default();
                add(&mut args, key.clone())?;
                let next = self.load(sql, args).await?.into_iter().next();
                match (next, self.buried.first().copied()) {
                    (Some(next), _) => {
                        self.apply(next, &Transition::Promote)?;
                        set_key(&mut self.tx, table, &key, Some(next), *place).await?;
                    }
                    // The next event cannot be read: buried, it heads the key as a dead head.
                    (None, Some(dead)) => {
                        set_key(&mut self.tx, table, &key, Some(dead), *place).await?;
                    }
                    (None, None) => {
                        let delete = outbox_sql::delete_key(keys_table(table), key.as_str().into());
                        run(&mut self.tx, delete).await?;
                    }
                }
            }
        }
    }

    /// Deletes what was deleted, moves released keys on (a deleted event is never promoted),
    /// writes every changed row back.
    pub(crate) async fn flush(&mut self) -> Result<(), StoreError> {
        let mut gone: Vec<EventId> = self
            .changes
            .take_gone()
            .iter()
            .map(|row| row.event.id)
            .collect();
        gone.append(&mut self.gone_unreadable);
        for chunk in gone.chunks(ID_CHUNK) {
            let ids = chunk.iter().map(|id| SqliteDialect.id(*id)).collect();
            let delete = outbox_sql::delete_in(self.table_ref(), "id", ids);
            run(&mut self.tx, delete).await?;
        }
        self.release_keys().await?;
        // Rows whose changes are alike (a batch delivered, say) go back in one narrow statement
        // per kind of change; a batch of unlike changes in one statement of every column.
        let table = &self.store.config().table().to_owned();
        let dirty = self.changes.take_dirty();
        let mut alike: BTreeMap<Vec<(&'static str, Cell)>, Vec<&Stored>> = BTreeMap::new();
        for row in dirty {
            let id = row.event.id;
            let now = columns(row)?;
            let changed: Vec<(&'static str, Cell)> = match self.read.get(&id) {
                Some(before) => WRITTEN
                    .iter()
                    .zip(now.iter().zip(before))
                    .filter(|(_, (now, before))| now != before)
                    .map(|(name, (now, _))| (*name, now.clone()))
                    .collect(),
                None => WRITTEN.iter().copied().zip(now.iter().cloned()).collect(),
            };
            if !changed.is_empty() {
                alike.entry(changed).or_default().push(row);
            }
            self.read.insert(id, now);
        }
        if alike.len() <= MAX_ALIKE {
            for (changed, rows) in &alike {
                let rowids: Option<Vec<Value>> = rows
                    .iter()
                    .map(|r| self.rowids.get(&r.event.id).map(|n| Value::from(*n)))
                    .collect();
                let (column, keys) = match rowids {
                    Some(rowids) => ("rowid", rowids),
                    None => (
                        "id",
                        rows.iter().map(|r| SqliteDialect.id(r.event.id)).collect(),
                    ),
                };
                write_alike(&mut self.tx, table, changed, column, keys).await?;
            }
        } else {
            let rows: Vec<&Stored> = alike.into_values().flatten().collect();
            for chunk in rows.chunks(WRITE_CHUNK) {
                write_back(&mut self.tx, table, chunk).await?;
            }
        }
        Ok(())
    }

    /// Flushes and commits.
    pub(crate) async fn commit(mut self) -> Result<(), StoreError> {
        self.flush().await?;
        self.tx.commit().await
    }
}

/// Each key's head and next queue place, for the keys that have a row.
pub(crate) async fn read_keys(
    conn: &mut SqliteConnection,
    table: &str,
    keys: &BTreeSet<String>,
) -> Result<BTreeMap<String, (Option<EventId>, i64)>, StoreError> {
    let mut out = BTreeMap::new();
    let keys: Vec<&String> = keys.iter().collect();
    for chunk in keys.chunks(ID_CHUNK) {
        let keys = chunk.iter().map(|key| key.as_str().into()).collect();
        let (sql, values) =
            outbox_sql::key_heads(keys_table(table), keys).build_sqlx(SqliteQueryBuilder);
        let rows = sqlx::query_with(AssertSqlSafe(sql), values)
            .fetch_all(&mut *conn)
            .await
            .map_err(db_error)?;
        for row in &rows {
            let key: String = row.try_get("ordering_key").map_err(db_error)?;
            let head: Option<Uuid> = row.try_get("head").map_err(db_error)?;
            let place: i64 = row.try_get("next_place").map_err(db_error)?;
            out.insert(key, (head.map(EventId::from_uuid), place));
        }
    }
    Ok(out)
}

/// Sets a key's head and next queue place, creating its row if need be.
pub(crate) async fn set_key(
    conn: &mut SqliteConnection,
    table: &str,
    key: &str,
    head: Option<EventId>,
    next_place: i64,
) -> Result<(), StoreError> {
    let head = head.map_or(Value::Bytes(None), |h| SqliteDialect.id(h));
    run(
        conn,
        outbox_sql::set_key(keys_table(table), key.into(), head, next_place),
    )
    .await
    .map(|_| ())
}

/// The key table of the outbox table `table`.
fn keys_table(table: &str) -> Alias {
    Alias::new(format!("{table}_keys"))
}

/// Runs a statement described in `outbox-sql`; returns how many rows it changed.
pub(crate) async fn run(
    conn: &mut SqliteConnection,
    statement: impl SqlxBinder,
) -> Result<u64, StoreError> {
    let (sql, values) = statement.build_sqlx(SqliteQueryBuilder);
    Ok(sqlx::query_with(AssertSqlSafe(sql), values)
        .execute(&mut *conn)
        .await
        .map_err(db_error)?
        .rows_affected())
}

/// Kinds of change written back one narrow statement each before a batch goes back whole.
const MAX_ALIKE: usize = 4;

/// One value of a changeable column, as bound to a statement.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(crate) enum Cell {
    Null,
    Int(i64),
    Text(String),
    Blob(Uuid),
}

impl Cell {
    /// The value as a statement described in `outbox-sql` binds it.
    fn value(&self) -> Value {
        match self {
            Cell::Null => Value::BigInt(None),
            Cell::Int(n) => Value::BigInt(Some(*n)),
            Cell::Text(t) => Value::String(Some(t.clone())),
            Cell::Blob(u) => Value::Bytes(Some(u.as_bytes().to_vec())),
        }
    }

    fn bind(&self, args: &mut SqliteArguments) -> Result<(), StoreError> {
        match self {
            Cell::Null => add(args, None::<i64>),
            Cell::Int(n) => add(args, *n),
            Cell::Text(t) => add(args, t.clone()),
            Cell::Blob(u) => add(args, *u),
        }
    }
}

fn opt<T>(value: Option<T>, cell: impl FnOnce(T) -> Cell) -> Cell {
    value.map_or(Cell::Null, cell)
}

/// The changeable columns, in the order [`columns`] gives their values.
const WRITTEN: [&str; 14] = [
    "status",
    "attempts",
    "max_attempts",
    "next_attempt_at",
    "lease_id",
    "locked_by",
    "locked_until",
    "last_error",
    "updated_at",
    "delivered_at",
    "attempt_log",
    "key_place",
    "hold_id",
    "hold_until",
];

/// A row's changeable columns as the table stores them.
fn columns(stored: &Stored) -> Result<Vec<Cell>, StoreError> {
    let e = &stored.event;
    let l = &e.lifecycle;
    let log = if stored.attempts.is_empty() {
        Cell::Null
    } else {
        Cell::Text(json(&stored.attempts)?)
    };
    Ok(vec![
        Cell::Text(l.status.as_str().to_owned()),
        Cell::Int(as_int(l.attempts)),
        Cell::Int(as_int(l.max_attempts)),
        Cell::Int(micros(l.next_attempt_at)),
        opt(l.lease.as_ref(), |x| Cell::Blob(*x.id.as_uuid())),
        opt(l.lease.as_ref(), |x| Cell::Text(x.holder.clone())),
        opt(l.lease.as_ref(), |x| Cell::Int(micros(x.until))),
        opt(l.last_error.as_ref(), |x| Cell::Text(x.clone())),
        Cell::Int(micros(e.updated_at)),
        opt(l.delivered_at, |x| Cell::Int(micros(x))),
        log,
        opt(stored.key_place, Cell::Int),
        opt(stored.extra.0, |(id, _)| Cell::Blob(id)),
        opt(stored.extra.0, |(_, until)| Cell::Int(micros(until))),
    ])
}

/// Sets `changed` columns to the same values on every row whose `column` (`id` or `rowid`)
/// is one of `keys`.
async fn write_alike(
    conn: &mut SqliteConnection,
    table: &str,
    changed: &[(&'static str, Cell)],
    column: &str,
    keys: Vec<Value>,
) -> Result<(), StoreError> {
    for chunk in keys.chunks(ID_CHUNK) {
        let set = changed
            .iter()
            .map(|(name, cell)| (*name, cell.value()))
            .collect();
        run(
            conn,
            outbox_sql::set_in(Alias::new(table), set, column, chunk.to_vec()),
        )
        .await?;
    }
    Ok(())
}

/// Writes the changeable columns of `rows` back in one statement.
async fn write_back(
    conn: &mut SqliteConnection,
    table: &str,
    rows: &[&Stored],
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut args = SqliteArguments::default();
    for stored in rows {
        add(&mut args, *stored.event.id.as_uuid())?;
        for cell in columns(stored)? {
            cell.bind(&mut args)?;
        }
    }
    let values = vec!["(?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"; rows.len()].join(", ");
    // `VALUES` names its columns column1, column2, … in order.
    let sql = format!(
        "UPDATE \"{table}\" SET status = v.column2, attempts = v.column3, \
         max_attempts = v.column4, next_attempt_at = v.column5, lease_id = v.column6, \
         locked_by = v.column7, locked_until = v.column8, last_error = v.column9, \
         updated_at = v.column10, delivered_at = v.column11, attempt_log = v.column12, \
         key_place = v.column13, hold_id = v.column14, hold_until = v.column15 \
         FROM (VALUES {values}) AS v WHERE \"{table}\".id = v.column1"
    );
    sqlx::query_with(AssertSqlSafe(sql), args)
        .execute(&mut *conn)
        .await
        .map_err(db_error)?;
    Ok(())
}

#[async_trait::async_trait]
impl RowWork for Work {
    fn at(&self) -> DateTime<Utc> {
        self.at
    }
    fn event(&self, id: EventId) -> Option<&OutboxEvent> {
        Work::event(self, id)
    }
    fn apply(&mut self, id: EventId, t: &Transition) -> Result<OutboxEvent, StoreError> {
        Work::apply(self, id, t)
    }
    fn touch(&mut self, id: EventId) {
        Work::touch(self, id);
    }
    fn delete(&mut self, id: EventId) {
        Work::delete(self, id);
    }
    fn leave_key(&mut self, key: String, head: EventId) {
        Work::leave_key(self, key, head);
    }
    async fn read_held(&mut self, ids: &[EventId], lease: LeaseId) -> Result<(), StoreError> {
        Work::read_held(self, ids, lease).await
    }
    async fn read_dead(&mut self, id: EventId) -> Result<OutboxEvent, StoreError> {
        self.read_one(id).await
    }
    async fn read_for_delete(&mut self, ids: &[EventId]) -> Result<(), StoreError> {
        self.read(ids).await
    }
    fn held(&self, id: EventId) -> bool {
        // A locked claim's mark counts until its hold runs out.
        self.hold_of(id).is_some_and(|(_, until)| until > self.at)
    }
    fn delete_unreadable(&mut self, id: EventId) -> bool {
        let found = self.is_unreadable(id);
        Work::delete_unreadable(self, id);
        found
    }
    async fn rejoin_key(&mut self, id: EventId) -> Result<(), StoreError> {
        Work::rejoin_key(self, id).await
    }
    async fn heads_key(&mut self, id: EventId) -> Result<bool, StoreError> {
        Work::heads_key(self, id).await
    }
    async fn commit(self) -> Result<(), StoreError> {
        Work::commit(self).await
    }
}
