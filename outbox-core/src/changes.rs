//! The changes one transaction of a row-based store makes, decided here once: stores that keep
//! events as table rows and change them in Rust (MySQL, SQLite) read the rows an operation
//! touches into a [`Changes`], apply the state machine's transitions to them through it, and
//! write back what it says changed. Which rows to read, and how to write them, stays the
//! store's; how a transition changes an event, records a failed attempt and gives up an
//! ordering key is the same everywhere and lives here.

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Utc};

use async_trait::async_trait;

use crate::error::StoreError;
use crate::event::{EventId, OutboxEvent};
use crate::history::{Attempt, History};
use crate::ordering::{DeadHead, keeps_key, not_a_dead_head};
use crate::status::{LeaseId, Status, Transition, transition};
use crate::store::{Outcome, Recorded, distinct_ids};

/// An event as a row-based store holds it: the event, its place in its ordering key's queue
/// while it waits, its failed attempts, and what else the store keeps in the row (`extra`).
#[derive(Clone, Debug)]
pub struct Row<X> {
    /// The event.
    pub event: OutboxEvent,
    /// Its place in its key's queue while it waits.
    pub key_place: Option<i64>,
    /// Its failed attempts, newest last.
    pub attempts: Vec<Attempt>,
    /// The store's own columns (a row number, a claim's mark, …).
    pub extra: X,
}

/// What a store keeps in a row beside the event, and what becomes of it when the event
/// changes.
pub trait Extra {
    /// Called when a transition changes the event. Default: nothing.
    fn on_transition(&mut self) {}
}

impl Extra for () {}

/// The rows one transaction read for change and what it did to them.
#[derive(Debug)]
pub struct Changes<X> {
    at: DateTime<Utc>,
    dead_head: DeadHead,
    rows: BTreeMap<EventId, Row<X>>,
    dirty: BTreeSet<EventId>,
    /// Ordering keys whose head may have given them up, and the events that may have headed
    /// them.
    leaving: BTreeMap<String, BTreeSet<EventId>>,
    gone: BTreeSet<EventId>,
}

impl<X: Extra> Changes<X> {
    /// No rows yet; every transition happens at `at` (the store's clock reading), dead heads
    /// follow `dead_head`.
    pub fn new(at: DateTime<Utc>, dead_head: DeadHead) -> Self {
        Self {
            at,
            dead_head,
            rows: BTreeMap::new(),
            dirty: BTreeSet::new(),
            leaving: BTreeMap::new(),
            gone: BTreeSet::new(),
        }
    }

    /// The store's clock reading every change happens at.
    pub fn at(&self) -> DateTime<Utc> {
        self.at
    }

    /// Makes every later change happen at `at` instead: for a transaction kept open while its
    /// rows' events are delivered, whose outcomes happen when they are known.
    pub fn set_at(&mut self, at: DateTime<Utc>) {
        self.at = at;
    }

    /// Adds a row as read, unless it was read before (the first reading, with any changes made
    /// to it since, stands); returns whether it was new.
    pub fn read(&mut self, row: Row<X>) -> bool {
        match self.rows.entry(row.event.id) {
            std::collections::btree_map::Entry::Vacant(slot) => {
                slot.insert(row);
                true
            }
            std::collections::btree_map::Entry::Occupied(_) => false,
        }
    }

    /// The event as read and changed so far, if it was read.
    pub fn event(&self, id: EventId) -> Option<&OutboxEvent> {
        self.rows.get(&id).map(|r| &r.event)
    }

    /// The claimed event `id`, handed to its deliverer: its payload moves out of the copy kept
    /// here (which goes on with `null`), the rest is cloned. Only for rows that nothing reads
    /// the payload of again, as a claim's: no change writes a payload back, so the kept copy
    /// serves every later transition as well without it, and a batch of payloads is not
    /// copied while its claim holds the database.
    pub fn hand_out(&mut self, id: EventId) -> Option<OutboxEvent> {
        let event = &mut self.rows.get_mut(&id)?.event;
        let payload = std::mem::take(&mut event.payload);
        let mut out = event.clone();
        out.payload = payload;
        Some(out)
    }

    /// The row as read and changed so far.
    pub fn row(&self, id: EventId) -> Option<&Row<X>> {
        self.rows.get(&id)
    }

    /// The row, to change its store's columns (it will be written back).
    pub fn row_mut(&mut self, id: EventId) -> Option<&mut Row<X>> {
        let row = self.rows.get_mut(&id)?;
        self.dirty.insert(id);
        Some(row)
    }

    /// Applies `t` to a read event through the state machine, recording a failed attempt in its
    /// history; a head whose new status no longer keeps its key is noted, for
    /// [`take_leaving`](Self::take_leaving). Refused ([`StoreError::Transition`]) as the state
    /// machine refuses, [`StoreError::NotFound`] if the event was not read.
    pub fn apply(&mut self, id: EventId, t: &Transition) -> Result<OutboxEvent, StoreError> {
        self.transit(id, t).cloned()
    }

    /// Settles one event of a locked batch: the state machine's `claim` and the outcome `t`
    /// at once, as every store settles a locked claim; a delivered event without an
    /// idempotency key is then deleted if `delete_delivered`. Returns what `t` did (see
    /// [`Outcome::of`]). Refused as [`apply`](Self::apply) refuses.
    pub fn settle_locked(
        &mut self,
        id: EventId,
        claim: &Transition,
        t: &Transition,
        delete_delivered: bool,
    ) -> Result<Outcome, StoreError> {
        self.transit(id, claim)?;
        let event = self.transit(id, t)?;
        let outcome = Outcome::of(t, event);
        if deleted_on_delivery(delete_delivered, &outcome, event) {
            self.delete(id);
        }
        Ok(outcome)
    }

    /// [`apply`](Self::apply), answering with the changed event in place.
    fn transit(&mut self, id: EventId, t: &Transition) -> Result<&OutboxEvent, StoreError> {
        let at = self.at;
        let row = self.rows.get_mut(&id).ok_or(StoreError::NotFound(id))?;
        let before = &row.event.lifecycle;
        let lifecycle =
            transition(before, t, at).map_err(|source| StoreError::Transition { id, source })?;
        if let Some(attempt) = Attempt::recorded(before, &lifecycle, at) {
            let mut history = History {
                attempts: std::mem::take(&mut row.attempts),
                notes: Vec::new(),
            };
            history.push_attempt(attempt);
            row.attempts = history.attempts;
        }
        row.event.lifecycle = lifecycle;
        row.event.updated_at = at;
        row.extra.on_transition();
        if row.event.status() != Status::Waiting {
            row.key_place = None;
        }
        if let Some(key) = &row.event.ordering_key
            && !keeps_key(row.event.status(), self.dead_head)
        {
            self.leaving.entry(key.clone()).or_default().insert(id);
        }
        self.dirty.insert(id);
        Ok(&row.event)
    }

    /// Marks a read event changed without a transition (its `updated_at` moves to now).
    pub fn touch(&mut self, id: EventId) {
        if let Some(row) = self.rows.get_mut(&id) {
            row.event.updated_at = self.at;
            self.dirty.insert(id);
        }
    }

    /// Deletes a read event; if it headed its key, the key moves on.
    pub fn delete(&mut self, id: EventId) {
        if let Some(key) = self.event(id).and_then(|e| e.ordering_key.clone()) {
            self.leaving.entry(key).or_default().insert(id);
        }
        self.dirty.remove(&id);
        self.gone.insert(id);
    }

    /// A row that could not be read, buried dead by the store: as any dead head, it keeps its
    /// key (`block`) or gives it up.
    pub fn buried(&mut self, id: EventId, key: Option<String>) {
        if let Some(key) = key
            && !keeps_key(Status::Dead, self.dead_head)
        {
            self.leave_key(key, id);
        }
    }

    /// Gives up `key` for `head` (an operator's skip).
    pub fn leave_key(&mut self, key: String, head: EventId) {
        self.leaving.entry(key).or_default().insert(head);
    }

    /// Makes a read event wait at `place` in its key's queue.
    pub fn wait_at(&mut self, id: EventId, place: i64) -> Result<(), StoreError> {
        self.apply(id, &Transition::Wait)?;
        if let Some(row) = self.rows.get_mut(&id) {
            row.key_place = Some(place);
        }
        Ok(())
    }

    /// The keys that may move on since last asked, with the events that may have headed them.
    pub fn take_leaving(&mut self) -> BTreeMap<String, BTreeSet<EventId>> {
        std::mem::take(&mut self.leaving)
    }

    /// The rows deleted since last asked, as read.
    pub fn take_gone(&mut self) -> Vec<Row<X>> {
        std::mem::take(&mut self.gone)
            .into_iter()
            .filter_map(|id| self.rows.remove(&id))
            .collect()
    }

    /// The rows changed since last asked, to write back.
    pub fn take_dirty(&mut self) -> Vec<&Row<X>> {
        let dirty = std::mem::take(&mut self.dirty);
        dirty.iter().filter_map(|id| self.rows.get(id)).collect()
    }

    /// Takes the named rows out, to carry into a later transaction ([`keep`](Self::keep)).
    pub fn take(&mut self, ids: &[EventId]) -> Vec<Row<X>> {
        ids.iter().filter_map(|id| self.rows.remove(id)).collect()
    }

    /// Rows read by an earlier transaction and unchanged since (the store guarantees it: a
    /// lock or a mark kept them), as if read now.
    pub fn keep(&mut self, rows: Vec<Row<X>>) {
        for row in rows {
            self.rows.insert(row.event.id, row);
        }
    }
}

/// One transaction of a row-based store, as the operations below see it: the rows it read (a
/// [`Changes`] underneath) and the reads and key moves only the store can do.
#[async_trait]
pub trait RowWork: Send + Sized {
    /// The store's clock reading every change happens at.
    fn at(&self) -> DateTime<Utc>;
    /// The event as read and changed so far.
    fn event(&self, id: EventId) -> Option<&OutboxEvent>;
    /// [`Changes::apply`].
    fn apply(&mut self, id: EventId, t: &Transition) -> Result<OutboxEvent, StoreError>;
    /// [`Changes::touch`].
    fn touch(&mut self, id: EventId);
    /// [`Changes::delete`].
    fn delete(&mut self, id: EventId);
    /// [`Changes::leave_key`].
    fn leave_key(&mut self, key: String, head: EventId);
    /// Reads the named events held under `lease` (in flight); the others are not read.
    async fn read_held(&mut self, ids: &[EventId], lease: LeaseId) -> Result<(), StoreError>;
    /// Reads event `id` for an operator's change to a dead event; [`StoreError::NotFound`] if
    /// there is none.
    async fn read_dead(&mut self, id: EventId) -> Result<OutboxEvent, StoreError>;
    /// Reads the named events for an operator's delete.
    async fn read_for_delete(&mut self, ids: &[EventId]) -> Result<(), StoreError>;
    /// Whether a worker holds a read event (in flight, or under a locked claim).
    fn held(&self, id: EventId) -> bool;
    /// Deletes an event whose row could not be read, if this transaction found it so;
    /// whether it did.
    fn delete_unreadable(&mut self, id: EventId) -> bool;
    /// A pending event that does not head its key rejoins it (at the back, or as its head).
    async fn rejoin_key(&mut self, id: EventId) -> Result<(), StoreError>;
    /// Whether `id` heads its ordering key.
    async fn heads_key(&mut self, id: EventId) -> Result<bool, StoreError>;
    /// Writes every change back and commits.
    async fn commit(self) -> Result<(), StoreError>;
}

/// A lease holder's change to each named event — `transition(i, at)` for the `i`th — and
/// what became of each; events not held under the lease are left alone and reported lost.
/// With `delete_delivered`, a delivered event without an idempotency key is deleted (a key
/// keeps its event, so it goes on refusing duplicates).
pub async fn fenced<W: RowWork>(
    mut work: W,
    lease: LeaseId,
    ids: &[EventId],
    delete_delivered: bool,
    transition: impl Fn(usize, DateTime<Utc>) -> Transition + Send,
) -> Result<Vec<Recorded>, StoreError> {
    distinct_ids(ids.iter().copied())?;
    let at = work.at();
    work.read_held(ids, lease).await?;
    let mut recorded = Vec::with_capacity(ids.len());
    for (i, id) in ids.iter().enumerate() {
        let t = transition(i, at);
        let outcome = match work.apply(*id, &t) {
            Err(_) => Outcome::LeaseLost,
            Ok(event) => Outcome::of(&t, &event),
        };
        if work
            .event(*id)
            .is_some_and(|e| deleted_on_delivery(delete_delivered, &outcome, e))
        {
            work.delete(*id);
        }
        recorded.push(Recorded { id: *id, outcome });
    }
    work.commit().await?;
    Ok(recorded)
}

/// Whether a store that deletes delivered events (`delete_delivered`) deletes `event` after
/// `outcome`: it was delivered, and no idempotency key keeps it (a key's event goes on
/// refusing duplicates).
pub fn deleted_on_delivery(delete_delivered: bool, outcome: &Outcome, event: &OutboxEvent) -> bool {
    delete_delivered && *outcome == Outcome::Delivered && event.idempotency_key.is_none()
}

/// Gives a dead event `extra_attempts` more attempts, due now, back in its key's queue.
pub async fn revive<W: RowWork>(
    mut work: W,
    id: EventId,
    extra_attempts: u32,
) -> Result<OutboxEvent, StoreError> {
    work.read_dead(id).await?;
    work.apply(id, &Transition::Revive { extra_attempts })?;
    work.rejoin_key(id).await?;
    let event = work.event(id).cloned().ok_or(StoreError::NotFound(id))?;
    work.commit().await?;
    Ok(event)
}

/// Lets the events behind a dead head go on: the head gives up its key (it stays dead).
/// Refused unless the event is dead and heads its key.
pub async fn skip_dead_head<W: RowWork>(
    mut work: W,
    id: EventId,
) -> Result<OutboxEvent, StoreError> {
    let event = work.read_dead(id).await?;
    let key = event
        .ordering_key
        .clone()
        .filter(|_| event.status() == Status::Dead);
    let Some(key) = key else {
        return Err(not_a_dead_head(&event));
    };
    if !work.heads_key(id).await? {
        return Err(not_a_dead_head(&event));
    }
    work.touch(id);
    work.leave_key(key, id);
    let event = work.event(id).cloned().ok_or(StoreError::NotFound(id))?;
    work.commit().await?;
    Ok(event)
}

/// Deletes the named events except those a worker holds; returns the ids deleted, each once.
pub async fn delete_events<W: RowWork>(
    mut work: W,
    ids: &[EventId],
) -> Result<Vec<EventId>, StoreError> {
    work.read_for_delete(ids).await?;
    let mut deleted = Vec::new();
    let mut seen = BTreeSet::new();
    for id in ids {
        if !seen.insert(*id) {
            continue;
        }
        let deletable = work
            .event(*id)
            .is_some_and(|e| e.status() != Status::InFlight && !work.held(*id));
        if deletable {
            work.delete(*id);
            deleted.push(*id);
        } else if work.event(*id).is_none() && work.delete_unreadable(*id) {
            deleted.push(*id);
        }
    }
    work.commit().await?;
    Ok(deleted)
}

/// What becomes of an event that rejoins its ordering key (revived, say), given the key's
/// head and next queue place: it already heads it, it waits behind the head, or it heads it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rejoin {
    /// It heads the key already: nothing changes.
    Heads,
    /// Another event heads the key: it waits at `place`; the key's next place is `place + 1`.
    Waits {
        /// The key's head.
        head: EventId,
        /// Its place in the queue.
        place: i64,
    },
    /// The key has no head: it becomes the head.
    Leads,
}

impl Rejoin {
    /// How `id` rejoins a key whose head is `head` (none if the key has no row).
    pub fn of(id: EventId, head: Option<EventId>, next_place: i64) -> Self {
        match head {
            Some(head) if head == id => Self::Heads,
            Some(head) => Self::Waits {
                head,
                place: next_place,
            },
            None => Self::Leads,
        }
    }
}

/// Whether a key moves on: its current `head` is among the events that may have given it up.
/// If so, its first waiting event is promoted (or, with none, the key's row goes).
pub fn moves_on(head: Option<EventId>, candidates: &BTreeSet<EventId>) -> bool {
    head.is_some_and(|head| candidates.contains(&head))
}

/// How a key's events are admitted when emitted: given the key's head and next place (as
/// stored, or as admitted so far in this emit), the first event of a key without a head heads
/// it (pending), the others wait in place order. Returns the event's status and place, and
/// updates `head` and `next_place`.
pub fn admit(
    id: EventId,
    head: &mut Option<EventId>,
    next_place: &mut i64,
) -> (Status, Option<i64>) {
    if head.is_none() {
        *head = Some(id);
        (Status::Pending, None)
    } else {
        *next_place += 1;
        (Status::Waiting, Some(*next_place - 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::NewEvent;
    use crate::status::{Lease, LeaseId};

    fn row(key: Option<&str>) -> Row<()> {
        let mut b = NewEvent::builder("a.b", "t", "1");
        if let Some(key) = key {
            b = b.ordering_key(key);
        }
        let at = DateTime::UNIX_EPOCH;
        Row {
            event: b.build().unwrap().into_event(EventId::new(), at, 1),
            key_place: None,
            attempts: Vec::new(),
            extra: (),
        }
    }

    #[test]
    fn a_last_failed_attempt_is_recorded_and_gives_up_the_key() {
        let at = DateTime::UNIX_EPOCH;
        let mut changes = Changes::new(at, DeadHead::Skip);
        let r = row(Some("k"));
        let id = r.event.id;
        assert!(changes.read(r.clone()));
        assert!(
            !changes.read(r),
            "a second reading does not replace the first"
        );
        let lease = Lease {
            id: LeaseId::new(),
            holder: "w".into(),
            until: at + chrono::TimeDelta::seconds(30),
        };
        changes
            .apply(
                id,
                &Transition::Claim {
                    lease: lease.clone(),
                },
            )
            .unwrap();
        let dead = changes
            .apply(
                id,
                &Transition::Nack {
                    lease: lease.id,
                    error: "boom".into(),
                    retry_at: None,
                },
            )
            .unwrap();
        assert_eq!(dead.status(), Status::Dead);
        assert_eq!(changes.row(id).unwrap().attempts.len(), 1);
        let leaving = changes.take_leaving();
        assert!(leaving["k"].contains(&id));
        assert_eq!(changes.take_dirty().len(), 1);
        assert!(changes.take_dirty().is_empty());
    }

    #[test]
    fn admission_and_rejoining_follow_the_queue() {
        let (a, b) = (EventId::new(), EventId::new());
        let (mut head, mut next) = (None, 0);
        assert_eq!(admit(a, &mut head, &mut next), (Status::Pending, None));
        assert_eq!(admit(b, &mut head, &mut next), (Status::Waiting, Some(0)));
        assert_eq!((head, next), (Some(a), 1));
        assert_eq!(Rejoin::of(a, Some(a), 1), Rejoin::Heads);
        assert_eq!(
            Rejoin::of(b, Some(a), 1),
            Rejoin::Waits { head: a, place: 1 }
        );
        assert_eq!(Rejoin::of(b, None, 1), Rejoin::Leads);
        assert!(moves_on(Some(a), &BTreeSet::from([a])));
        assert!(!moves_on(Some(a), &BTreeSet::from([b])));
        assert!(!moves_on(None, &BTreeSet::from([a])));
    }
}
