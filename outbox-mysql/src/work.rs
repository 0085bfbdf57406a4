//! One store operation as a transaction: the rows it changes are read under row locks, changed
//! in Rust by the core state machine ([`transition`]) exactly as the memory store changes
//! them, and written back together before the commit. The rules live in `outbox-core`; this
//! module only moves rows.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};
use outbox_core::changes::{Changes, Rejoin, RowWork, moves_on};
use outbox_core::{EventId, LeaseId, OutboxEvent, Status, StoreError, Transition};
use outbox_sql::Dialect;
use sea_query::extension::mysql::{IndexHintScope, MySqlSelectStatementExt};
use sea_query::{Alias, Expr, ExprTrait, LockBehavior, LockType, MysqlQueryBuilder, Value};
use sea_query_sqlx::SqlxBinder;
use sqlx::mysql::MySqlArguments;
use sqlx::{Arguments, AssertSqlSafe, MySql, Row};
use uuid::Uuid;

use crate::error::db_error;
use crate::row::{COLUMNS, Seq, Stored, as_int, decode, opt_text, text};
use crate::store::{MySqlDialect, MySqlStore};

/// Rows written back per statement.
const WRITE_CHUNK: usize = 500;
/// Ids looked up per statement.
const ID_CHUNK: usize = 1000;

/// An open transaction of the store with the rows it read for change (what a transition does
/// to them is decided in `outbox_core::changes`).
pub(crate) struct Work<'s> {
    store: &'s MySqlStore,
    pub(crate) tx: sqlx::Transaction<'static, MySql>,
    /// The store's clock reading for this operation: every transition happens at it.
    pub(crate) at: DateTime<Utc>,
    changes: Changes<Seq>,
    /// The rows the last read buried, unreadable.
    buried: Vec<EventId>,
    /// Every row found unreadable (and so dead) in this transaction: its row number and
    /// ordering key.
    unreadable: BTreeMap<EventId, (u64, Option<String>)>,
    /// Unreadable rows to delete at the end, by row number.
    gone_unreadable: Vec<u64>,
}

/// `?, ?, …` for `n` values.
pub(crate) fn marks(n: usize) -> String {
    let mut s = String::with_capacity(n * 3);
    for i in 0..n {
        if i > 0 {
            s.push_str(", ");
        }
        s.push('?');
    }
    s
}

/// Adds a value to a statement's arguments.
pub(crate) fn add<'q, T>(args: &mut MySqlArguments, value: T) -> Result<(), StoreError>
where
    T: 'q + sqlx::Encode<'q, MySql> + sqlx::Type<MySql>,
{
    args.add(value)
        .map_err(|source| StoreError::Backend { source })
}

impl<'s> Work<'s> {
    /// Begins a transaction (`READ COMMITTED`: each statement reads what is committed when it
    /// starts, so a read after taking a lock sees what the lock's previous holder wrote).
    ///
    /// The connection's idle limit is set in the same round trip: the server's default, or with
    /// `hold` (a locked claim) that many seconds, after which the server closes the connection
    /// and rolls the transaction back.
    pub(crate) async fn begin(
        store: &'s MySqlStore,
        hold: Option<std::time::Duration>,
    ) -> Result<Self, StoreError> {
        let idle = match hold {
            Some(hold) => {
                (Ord::max(hold.as_secs(), 1) + u64::from(hold.subsec_nanos() > 0)).to_string()
            }
            None => "@@GLOBAL.wait_timeout".to_owned(),
        };
        let begin = format!(
            "SET SESSION wait_timeout = {idle}; \
             SET TRANSACTION ISOLATION LEVEL READ COMMITTED; START TRANSACTION"
        );
        let mut tx = store
            .pool()
            .begin_with(AssertSqlSafe(begin))
            .await
            .map_err(db_error)?;
        let at = store.now_on(&mut tx).await?;
        Ok(Self::on(store, tx, at))
    }

    /// The rows read so far, to carry into a later [`Work`] on the same transaction.
    pub(crate) fn take_rows(&mut self, ids: &[EventId]) -> Vec<Stored> {
        self.changes.take(ids)
    }

    /// Rows read earlier in this transaction (and still locked by it), as if read now.
    pub(crate) fn keep_rows(&mut self, rows: Vec<Stored>) {
        self.changes.keep(rows);
    }

    /// Continues an open transaction.
    pub(crate) fn on(
        store: &'s MySqlStore,
        tx: sqlx::Transaction<'static, MySql>,
        at: DateTime<Utc>,
    ) -> Self {
        Self {
            store,
            tx,
            at,
            changes: Changes::new(at, store.config().dead_head()),
            buried: Vec::new(),
            unreadable: BTreeMap::new(),
            gone_unreadable: Vec::new(),
        }
    }

    fn table(&self) -> &str {
        self.store.config().table()
    }

    /// Runs a locking `SELECT` of [`COLUMNS`] (and `attempt_log`) and keeps its rows for
    /// change; returns their ids in the order read. A row that cannot be read is buried (see
    /// [`bury`](Self::bury)) and left out, so it never stops the rows around it.
    pub(crate) async fn load(
        &mut self,
        sql: String,
        args: impl sqlx::IntoArguments<MySql>,
    ) -> Result<Vec<EventId>, StoreError> {
        self.read_rows(sql, args, true).await
    }

    /// [`load`](Self::load); with `locked` false (a plain read) an unreadable row is left out
    /// but not buried, since another transaction may hold its lock.
    async fn read_rows(
        &mut self,
        sql: String,
        args: impl sqlx::IntoArguments<MySql>,
        locked: bool,
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
                    let key = opt_text(row, "ordering_key").unwrap_or(None);
                    if locked {
                        if bad.status != Status::Dead {
                            self.bury(bad.id, &bad.error, key.clone()).await?;
                        }
                        let seq: u64 = row.try_get("seq").map_err(db_error)?;
                        self.unreadable.insert(bad.id, (seq, key));
                    }
                    continue;
                }
            };
            ids.push(stored.event.id);
            self.changes.read(stored);
        }
        Ok(ids)
    }

    /// Marks a row that cannot be read, and that this transaction holds, dead at once, saying
    /// why in its last error (its attempt counted, as a permanent failure's): it can never be
    /// delivered, and left pending it would fail every claim that reached it. A dead head keeps
    /// or gives up its ordering key as any dead head does.
    async fn bury(
        &mut self,
        id: EventId,
        error: &str,
        key: Option<String>,
    ) -> Result<(), StoreError> {
        tracing::warn!(event_id = %id, %error, "outbox row cannot be read; marked dead");
        let bury = outbox_sql::bury(
            Alias::new(self.table()),
            "id",
            MySqlDialect.id(id),
            MySqlDialect.text(&format!("cannot be read: {error}")),
            MySqlDialect.time(self.at),
            &[],
        );
        run(&mut self.tx, bury).await?;
        self.changes.buried(id, key);
        self.buried.push(id);
        Ok(())
    }

    /// Whether a row read under lock in this transaction could not be read (it is dead).
    pub(crate) fn is_unreadable(&self, id: EventId) -> bool {
        self.unreadable.contains_key(&id)
    }

    /// Deletes a row found unreadable before the commit (an operator's way to be rid of it);
    /// if it headed its key, the key moves on.
    pub(crate) fn delete_unreadable(&mut self, id: EventId) {
        if let Some((seq, key)) = self.unreadable.get(&id).cloned() {
            if let Some(key) = key {
                self.changes.leave_key(key, id);
            }
            self.gone_unreadable.push(seq);
        }
    }

    /// Reads the named events under row locks (skipping those another transaction holds, with
    /// `skip_locked`); events that do not exist are simply not read.
    pub(crate) async fn lock_ids(
        &mut self,
        ids: &[EventId],
        skip_locked: bool,
    ) -> Result<(), StoreError> {
        let columns = format!("{COLUMNS}, attempt_log");
        for chunk in ids.chunks(ID_CHUNK) {
            let ids = chunk.iter().map(|id| MySqlDialect.id(*id)).collect();
            let mut select = outbox_sql::rows_in(Alias::new(self.table()), &columns, "id", ids);
            select.force_index(
                Alias::new(format!("{}_id", self.table())),
                IndexHintScope::All,
            );
            if skip_locked {
                select.lock_with_behavior(LockType::Update, LockBehavior::SkipLocked);
            } else {
                select.lock(LockType::Update);
            }
            let (sql, values) = select.build_sqlx(MysqlQueryBuilder);
            self.load(sql, values).await?;
        }
        Ok(())
    }

    /// Reads under row locks those of the named events that match `condition` now (a plain
    /// read first, so a row another transaction holds for another reason — a locked claim's
    /// pending event, say — is never waited for).
    pub(crate) async fn lock_ids_where(
        &mut self,
        ids: &[EventId],
        condition: Expr,
    ) -> Result<(), StoreError> {
        let mut matching = Vec::new();
        for chunk in ids.chunks(ID_CHUNK) {
            let ids = chunk.iter().map(|id| MySqlDialect.id(*id)).collect();
            let (sql, values) = outbox_sql::rows_in(Alias::new(self.table()), "id", "id", ids)
                .and_where(condition.clone())
                .build_sqlx(MysqlQueryBuilder);
            let rows = sqlx::query_with(AssertSqlSafe(sql), values)
                .fetch_all(&mut *self.tx)
                .await
                .map_err(db_error)?;
            for row in &rows {
                let id: Uuid = row.try_get("id").map_err(db_error)?;
                matching.push(EventId::from_uuid(id));
            }
        }
        self.lock_ids(&matching, false).await
    }

    /// Reads under row locks the named events held under `lease`; the others are not read (a
    /// change to them is refused as a lost lease).
    pub(crate) async fn lock_held(
        &mut self,
        ids: &[EventId],
        lease: LeaseId,
    ) -> Result<(), StoreError> {
        let held = Expr::col(Alias::new("status"))
            .eq(Status::InFlight.as_str())
            .and(Expr::col(Alias::new("lease_id")).eq(*lease.as_uuid()));
        self.lock_ids_where(ids, held).await
    }

    /// Reads event `id` under its row lock if it is dead, and without a lock otherwise (an
    /// operator's change to it is then refused by the state machine, without waiting for a
    /// worker that holds it); [`StoreError::NotFound`] if there is no such event.
    pub(crate) async fn lock_dead(&mut self, id: EventId) -> Result<(), StoreError> {
        let dead = Expr::col(Alias::new("status")).eq(Status::Dead.as_str());
        self.lock_ids_where(&[id], dead).await?;
        if self.event(id).is_none() {
            self.peek(&[id]).await?;
        }
        if self.event(id).is_none() {
            return Err(StoreError::NotFound(id));
        }
        Ok(())
    }

    /// Reads the named events without locking them (to answer why a change is refused).
    pub(crate) async fn peek(&mut self, ids: &[EventId]) -> Result<(), StoreError> {
        let columns = format!("{COLUMNS}, attempt_log");
        for chunk in ids.chunks(ID_CHUNK) {
            let ids = chunk.iter().map(|id| MySqlDialect.id(*id)).collect();
            let (sql, values) = outbox_sql::rows_in(Alias::new(self.table()), &columns, "id", ids)
                .build_sqlx(MysqlQueryBuilder);
            self.read_rows(sql, values, false).await?;
        }
        Ok(())
    }

    /// The event as read (and changed so far), if it was read.
    pub(crate) fn event(&self, id: EventId) -> Option<&OutboxEvent> {
        self.changes.event(id)
    }

    /// A claimed event, for its deliverer (see [`Changes::hand_out`]).
    pub(crate) fn hand_out(&mut self, id: EventId) -> Option<OutboxEvent> {
        self.changes.hand_out(id)
    }

    /// Applies `t` to a read event (see [`Changes::apply`]).
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

    /// Locks the keys' rows, creating missing ones, in key order; returns each key's head and
    /// next queue place.
    pub(crate) async fn lock_keys(
        &mut self,
        keys: &BTreeSet<String>,
        create: bool,
    ) -> Result<BTreeMap<String, (Option<EventId>, i64)>, StoreError> {
        lock_keys(&mut self.tx, self.store.config().table(), keys, create).await
    }

    /// A pending event that does not head its key rejoins it: at the back of its queue if the
    /// key has a head, as its head if not.
    pub(crate) async fn rejoin_key(&mut self, id: EventId) -> Result<(), StoreError> {
        let Some(key) = self.event(id).and_then(|e| e.ordering_key.clone()) else {
            return Ok(());
        };
        let keys = BTreeSet::from([key.clone()]);
        let table = self.table_name();
        let (head, place) = self
            .lock_keys(&keys, true)
            .await?
            .remove(&key)
            .unwrap_or((None, 0));
        match Rejoin::of(id, head, place) {
            Rejoin::Heads => {}
            Rejoin::Waits { head, place } => {
                self.changes.wait_at(id, place)?;
                set_key(&mut self.tx, &table, &key, Some(head), place + 1).await?;
            }
            Rejoin::Leads => set_key(&mut self.tx, &table, &key, Some(id), place).await?,
        }
        Ok(())
    }

    fn table_name(&self) -> String {
        self.table().to_owned()
    }

    /// Whether `id` heads its ordering key.
    pub(crate) async fn heads_key(&mut self, id: EventId) -> Result<bool, StoreError> {
        let Some(key) = self.event(id).and_then(|e| e.ordering_key.clone()) else {
            return Ok(false);
        };
        let keys = BTreeSet::from([key.clone()]);
        let heads = self.lock_keys(&keys, false).await?;
        Ok(heads.get(&key).and_then(|(head, _)| *head) == Some(id))
    }

    /// Moves on every key whose head gave it up: its first waiting event is promoted, or the
    /// key's row goes.
    async fn release_keys(&mut self) -> Result<(), StoreError> {
        loop {
            let leaving = self.changes.take_leaving();
            if leaving.is_empty() {
                return Ok(());
            }
            let keys: BTreeSet<String> = leaving.keys().cloned().collect();
            let heads = self.lock_keys(&keys, false).await?;
            for (key, candidates) in leaving {
                match heads.get(&key) {
                    Some((head, place)) if moves_on(*head, &candidates) => {
                        let sql = format!(
                            "SELECT {COLUMNS}, attempt_log FROM `{t}` FORCE INDEX (`{t}_waiting`) \
                             WHERE ordering_key = ? AND status = 'waiting' ORDER BY key_place \
                             LIMIT 1 FOR UPDATE",
                            t = self.table()
                        );
                        let mut args = MySqlArguments::default();
                        add(&mut args, key.as_bytes().to_vec())?;
                        let next = self.load(sql, args).await?.into_iter().next();
                        let table = self.table_name();
                        match (next, self.buried.first().copied()) {
                            (Some(next), _) => {
                                self.apply(next, &Transition::Promote)?;
                                set_key(&mut self.tx, table, &key, Some(next), *place).await?;
                            }
                            // The next event cannot be read: buried, it heads the key as a
                            // dead head.
                            (None, Some(dead)) => {
                                set_key(&mut self.tx, table, &key, Some(dead), *place).await?;
                            }
                            (None, None) => {
                                let key = MySqlDialect.text(&key);
                                let delete = outbox_sql::delete_key(keys_table(&table), key);
                                run(&mut self.tx, delete).await?;
                            }
                        }
                    }
                    _ => {}
                }
            }
        }
    }

    /// Deletes what was deleted, moves released keys on (a deleted event is never promoted),
    /// writes every changed row back.
    pub(crate) async fn flush(&mut self) -> Result<(), StoreError> {
        let mut gone: Vec<u64> = self
            .changes
            .take_gone()
            .iter()
            .map(|row| row.extra.0)
            .collect();
        gone.append(&mut self.gone_unreadable);
        for chunk in gone.chunks(ID_CHUNK) {
            let seqs = chunk.iter().map(|seq| Value::from(*seq)).collect();
            let delete = outbox_sql::delete_in(Alias::new(self.table()), "seq", seqs);
            run(&mut self.tx, delete).await?;
        }
        self.release_keys().await?;
        let table = self.store.config().table();
        let dirty = self.changes.take_dirty();
        for chunk in dirty.chunks(WRITE_CHUNK) {
            write_back(&mut self.tx, table, chunk).await?;
        }
        Ok(())
    }

    /// Flushes and commits.
    pub(crate) async fn commit(mut self) -> Result<(), StoreError> {
        self.flush().await?;
        self.tx.commit().await.map_err(db_error)
    }
}

/// Locks the keys' rows in key order (creating missing ones with `create`); returns each
/// key's head and next queue place.
pub(crate) async fn lock_keys(
    conn: &mut sqlx::MySqlConnection,
    table: &str,
    keys: &BTreeSet<String>,
    create: bool,
) -> Result<BTreeMap<String, (Option<EventId>, i64)>, StoreError> {
    let mut out = BTreeMap::new();
    if keys.is_empty() {
        return Ok(out);
    }
    let keys: Vec<&String> = keys.iter().collect();
    for chunk in keys.chunks(ID_CHUNK) {
        let keys: Vec<Value> = chunk.iter().map(|key| MySqlDialect.text(key)).collect();
        if create {
            run(
                conn,
                outbox_sql::create_keys(keys_table(table), keys.clone()),
            )
            .await?;
        }
        let (sql, values) = outbox_sql::key_heads(keys_table(table), keys)
            .force_index(Alias::new("PRIMARY"), IndexHintScope::All)
            .lock(LockType::Update)
            .build_sqlx(MysqlQueryBuilder);
        let rows = sqlx::query_with(AssertSqlSafe(sql), values)
            .fetch_all(&mut *conn)
            .await
            .map_err(db_error)?;
        for row in &rows {
            let key = text(row, "ordering_key")?;
            let head: Option<Uuid> = row.try_get("head").map_err(db_error)?;
            let place: i64 = row.try_get("next_place").map_err(db_error)?;
            out.insert(key, (head.map(EventId::from_uuid), place));
        }
    }
    Ok(out)
}

/// Sets a key's head and next queue place.
pub(crate) async fn set_key(
    conn: &mut sqlx::MySqlConnection,
    table: impl AsRef<str>,
    key: &str,
    head: Option<EventId>,
    next_place: i64,
) -> Result<(), StoreError> {
    let set = vec![
        (
            "head",
            head.map_or(Value::Uuid(None), |h| MySqlDialect.id(h)),
        ),
        ("next_place", Value::from(next_place)),
    ];
    let keys = vec![MySqlDialect.text(key)];
    let update = outbox_sql::set_in(keys_table(table.as_ref()), set, "ordering_key", keys);
    run(conn, update).await.map(|_| ())
}

/// The key table of the outbox table `table`.
fn keys_table(table: &str) -> Alias {
    Alias::new(format!("{table}_keys"))
}

/// Runs a statement described in `outbox-sql`; returns how many rows it changed.
pub(crate) async fn run(
    conn: &mut sqlx::MySqlConnection,
    statement: impl SqlxBinder,
) -> Result<u64, StoreError> {
    let (sql, values) = statement.build_sqlx(MysqlQueryBuilder);
    Ok(sqlx::query_with(AssertSqlSafe(sql), values)
        .execute(&mut *conn)
        .await
        .map_err(db_error)?
        .rows_affected())
}

/// Writes the changeable columns of `rows` back in one statement.
async fn write_back(
    conn: &mut sqlx::MySqlConnection,
    table: &str,
    rows: &[&Stored],
) -> Result<(), StoreError> {
    if rows.is_empty() {
        return Ok(());
    }
    let mut args = MySqlArguments::default();
    let mut values = String::new();
    for (i, stored) in rows.iter().enumerate() {
        let e = &stored.event;
        let l = &e.lifecycle;
        if i == 0 {
            values.push_str(
                "SELECT ? AS seq, ? AS status, ? AS attempts, ? AS max_attempts, \
                 ? AS next_attempt_at, ? AS lease_id, ? AS locked_by, ? AS locked_until, \
                 ? AS last_error, ? AS updated_at, ? AS delivered_at, ? AS attempt_log, \
                 ? AS key_place",
            );
        } else {
            values.push_str(" UNION ALL SELECT ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?");
        }
        add(&mut args, stored.extra.0)?;
        add(&mut args, l.status.as_str())?;
        add(&mut args, as_int("attempts", l.attempts)?)?;
        add(&mut args, as_int("max_attempts", l.max_attempts)?)?;
        add(&mut args, l.next_attempt_at)?;
        add(&mut args, l.lease.as_ref().map(|x| *x.id.as_uuid()))?;
        add(
            &mut args,
            l.lease.as_ref().map(|x| x.holder.as_bytes().to_vec()),
        )?;
        add(&mut args, l.lease.as_ref().map(|x| x.until))?;
        add(
            &mut args,
            l.last_error.as_ref().map(|x| x.as_bytes().to_vec()),
        )?;
        add(&mut args, e.updated_at)?;
        add(&mut args, l.delivered_at)?;
        let log = if stored.attempts.is_empty() {
            None
        } else {
            Some(
                serde_json::to_vec(&stored.attempts).map_err(|e| StoreError::Backend {
                    source: Box::new(e),
                })?,
            )
        };
        add(&mut args, log)?;
        add(&mut args, stored.key_place)?;
    }
    let sql = format!(
        "UPDATE ({values}) AS v STRAIGHT_JOIN `{table}` AS e FORCE INDEX (PRIMARY) \
         ON e.seq = v.seq SET \
         e.status = v.status, e.attempts = v.attempts, e.max_attempts = v.max_attempts, \
         e.next_attempt_at = v.next_attempt_at, e.lease_id = v.lease_id, \
         e.locked_by = v.locked_by, e.locked_until = v.locked_until, \
         e.last_error = v.last_error, e.updated_at = v.updated_at, \
         e.delivered_at = v.delivered_at, e.attempt_log = v.attempt_log, \
         e.key_place = v.key_place"
    );
    sqlx::query_with(AssertSqlSafe(sql), args)
        .execute(&mut *conn)
        .await
        .map_err(db_error)?;
    Ok(())
}

#[async_trait::async_trait]
impl RowWork for Work<'_> {
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
        self.lock_held(ids, lease).await
    }
    async fn read_dead(&mut self, id: EventId) -> Result<OutboxEvent, StoreError> {
        self.lock_dead(id).await?;
        Work::event(self, id)
            .cloned()
            .ok_or(StoreError::NotFound(id))
    }
    async fn read_for_delete(&mut self, ids: &[EventId]) -> Result<(), StoreError> {
        // Rows another transaction holds (a worker's locked claim) are skipped, not waited on.
        self.lock_ids(ids, true).await
    }
    fn held(&self, _id: EventId) -> bool {
        // What a locked claim holds was skipped by the read; what is in flight is checked by
        // its status.
        false
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
