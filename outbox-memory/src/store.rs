//! [`MemoryStore`]: the whole store contract in process memory.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use std::time::Duration;

use outbox_core::changes::deleted_on_delivery;
use outbox_core::clock::{add, translate};
use outbox_core::event::validate_event_type;
use outbox_core::locked::{settle, validate_hold, wakes_workers};
use outbox_core::ordering::{keeps_key, not_a_dead_head};
use outbox_core::{
    Attempt, AuditNote, Clock, DEFAULT_MAX_ATTEMPTS, DeadHead, EmitLimits, EventFilter, EventId,
    EventPage, Failure, History, Lease, LeaseId, Lifecycle, LockedBatch, LockedClaim, OutboxEvent,
    OutboxStore, Outcome, ParkedKey, PausedType, PayloadEdit, Reclaimed, Recorded, Settlement,
    Status, StatusCounts, StoreError, SystemClock, Transition, ValidationError, WakeupSender,
    Wakeups, distinct_ids, transition,
};

use crate::conn::Table;
use crate::unit_of_work::UnitOfWork;

/// An outbox store in process memory: thread-safe, cheap to clone (clones share the events),
/// with the same semantics as the PostgreSQL store. Emit through a [`UnitOfWork`].
///
/// Like PostgreSQL (whose clock is the database's), the store decides due-ness and lease expiry
/// on its own clock, the one given to [`MemoryStoreBuilder::clock`]; a worker's clock only
/// measures lease lengths and backoffs. So a worker on a different clock (a paused tokio clock,
/// say) still sees every event the store considers due. To drive time in a test, give the store
/// a [`ManualClock`](outbox_core::ManualClock) and move it.
#[derive(Clone, Debug)]
pub struct MemoryStore {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    state: Mutex<State>,
    /// The application's committed tables (see [`MemoryConn`](crate::MemoryConn)), by type.
    tables: Mutex<HashMap<std::any::TypeId, Table>>,
    /// Values shared outside transactions, by type (see [`MemoryStore::extension`]).
    extensions: Mutex<HashMap<std::any::TypeId, Arc<dyn std::any::Any + Send + Sync>>>,
    wake: Option<WakeupSender>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) default_max_attempts: u32,
    pub(crate) limits: EmitLimits,
    delete_delivered: bool,
}

#[derive(Debug, Default)]
pub(crate) struct State {
    /// What a key's dead head does (see [`DeadHead`]).
    dead_head: DeadHead,
    /// Ordering key → its head: the one event of the key that may be pending or in flight (or
    /// dead, parking the key under [`DeadHead::Block`]).
    heads: HashMap<String, EventId>,
    /// Ordering key → its waiting events, in commit order.
    queues: HashMap<String, BTreeMap<u64, EventId>>,
    /// The next waiting event's place in its queue.
    next_place: u64,
    events: BTreeMap<EventId, OutboxEvent>,
    /// Idempotency key → event.
    pub(crate) keys: HashMap<String, EventId>,
    /// Pending events by (next attempt, id): the claim order.
    due: BTreeSet<(DateTime<Utc>, EventId)>,
    /// In-flight events by (lease expiry, id).
    leased: BTreeSet<(DateTime<Utc>, EventId)>,
    /// Pending events held by a locked claim, and by which.
    locked: HashMap<EventId, u64>,
    /// Open locked claims and when their hold ends, on the store's clock.
    holds: HashMap<u64, DateTime<Utc>>,
    /// The next locked claim's number.
    next_hold: u64,
    /// Failed attempts and operator notes, by event (absent: none yet).
    history: HashMap<EventId, History>,
    /// Paused event types, and since when.
    paused: BTreeMap<String, DateTime<Utc>>,
}

impl State {
    fn index_remove(&mut self, event: &OutboxEvent) {
        let l = &event.lifecycle;
        match (l.status, &l.lease) {
            (Status::Pending, _) => {
                self.due.remove(&(l.next_attempt_at, event.id));
            }
            (Status::InFlight, Some(lease)) => {
                self.leased.remove(&(lease.until, event.id));
            }
            _ => {}
        }
    }

    fn index_add(&mut self, event: &OutboxEvent) {
        let l = &event.lifecycle;
        match (l.status, &l.lease) {
            (Status::Pending, _) => {
                self.due.insert((l.next_attempt_at, event.id));
            }
            (Status::InFlight, Some(lease)) => {
                self.leased.insert((lease.until, event.id));
            }
            _ => {}
        }
    }

    /// Stores a new or changed event, keeping the indexes in step.
    pub(crate) fn put(&mut self, event: OutboxEvent) {
        if let Some(old) = self.events.remove(&event.id) {
            self.index_remove(&old);
        }
        self.index_add(&event);
        if let Some(key) = &event.idempotency_key {
            self.keys.insert(key.clone(), event.id);
        }
        self.events.insert(event.id, event);
    }

    /// Stores a newly committed event: one with an ordering key heads its key if the key has no
    /// head, and waits behind it otherwise.
    pub(crate) fn admit(&mut self, mut event: OutboxEvent) {
        if let Some(key) = event.ordering_key.clone() {
            match self.heads.entry(key) {
                std::collections::hash_map::Entry::Occupied(head) => {
                    let l = &event.lifecycle;
                    event.lifecycle = Lifecycle::waiting(l.max_attempts, l.next_attempt_at);
                    let key = head.key().clone();
                    self.enqueue(key, event.id);
                }
                std::collections::hash_map::Entry::Vacant(free) => {
                    free.insert(event.id);
                }
            }
        }
        self.put(event);
    }

    /// Puts `id` at the back of its key's queue.
    fn enqueue(&mut self, key: String, id: EventId) {
        let place = self.next_place;
        self.next_place = place.wrapping_add(1);
        self.queues.entry(key).or_default().insert(place, id);
    }

    /// Whether `event` heads its ordering key.
    fn heads_key(&self, event: &OutboxEvent) -> bool {
        event
            .ordering_key
            .as_ref()
            .is_some_and(|k| self.heads.get(k) == Some(&event.id))
    }

    /// Stores a changed event; if it headed its key and no longer keeps it (see
    /// [`keeps_key`]), the key's next waiting event is promoted in the same change.
    fn update(&mut self, event: OutboxEvent, at: DateTime<Utc>) -> Result<(), StoreError> {
        let released = (self.heads_key(&event) && !keeps_key(event.status(), self.dead_head))
            .then(|| event.ordering_key.clone())
            .flatten();
        self.put(event);
        if let Some(key) = released {
            self.release_key(&key, at)?;
        }
        Ok(())
    }

    /// The key's head is gone: its first waiting event, if any, is promoted and heads it.
    fn release_key(&mut self, key: &str, at: DateTime<Utc>) -> Result<(), StoreError> {
        self.heads.remove(key);
        let next = self.queues.get_mut(key).and_then(|q| q.pop_first());
        if self.queues.get(key).is_some_and(BTreeMap::is_empty) {
            self.queues.remove(key);
        }
        if let Some((_, id)) = next {
            self.heads.insert(key.to_owned(), id);
            self.apply(id, &Transition::Promote, at)?;
        }
        Ok(())
    }

    fn remove(&mut self, id: EventId) {
        self.history.remove(&id);
        if let Some(old) = self.events.remove(&id) {
            self.index_remove(&old);
            if let Some(key) = &old.idempotency_key {
                self.keys.remove(key);
            }
        }
    }

    /// Applies `t` to event `id` through the core state machine.
    fn apply(
        &mut self,
        id: EventId,
        t: &Transition,
        now: DateTime<Utc>,
    ) -> Result<OutboxEvent, StoreError> {
        let event = self.events.get(&id).ok_or(StoreError::NotFound(id))?;
        let lifecycle = transition(&event.lifecycle, t, now)
            .map_err(|source| StoreError::Transition { id, source })?;
        let attempt = Attempt::recorded(&event.lifecycle, &lifecycle, now);
        let mut next = event.clone();
        next.lifecycle = lifecycle;
        next.updated_at = now;
        self.update(next.clone(), now)?;
        if let Some(attempt) = attempt {
            self.history.entry(id).or_default().push_attempt(attempt);
        }
        Ok(next)
    }

    /// Gives dead event `id` `extra_attempts` more attempts, due at `at`. A dead event that
    /// gave up its key (skipped) rejoins it: at the back of its queue, or as its head if the
    /// key has none now.
    fn revive(
        &mut self,
        id: EventId,
        extra_attempts: u32,
        at: DateTime<Utc>,
    ) -> Result<OutboxEvent, StoreError> {
        let mut event = self.apply(id, &Transition::Revive { extra_attempts }, at)?;
        if let Some(key) = event.ordering_key.clone() {
            match self.heads.get(&key) {
                Some(head) if *head == id => {}
                Some(_) => {
                    event = self.apply(id, &Transition::Wait, at)?;
                    self.enqueue(key, id);
                }
                None => {
                    self.heads.insert(key, id);
                }
            }
        }
        Ok(event)
    }

    /// Ends the locked claims whose hold ran out at `at`: their events are claimable again,
    /// untried, and finishing them fails (as a database ends an idle transaction).
    fn end_expired_holds(&mut self, at: DateTime<Utc>) {
        let ended: Vec<u64> = self
            .holds
            .iter()
            .filter(|(_, until)| **until <= at)
            .map(|(hold, _)| *hold)
            .collect();
        for hold in ended {
            self.end_hold(hold);
        }
    }

    /// Drops a locked claim's locks (a rollback).
    fn end_hold(&mut self, hold: u64) {
        if self.holds.remove(&hold).is_some() {
            self.locked.retain(|_, held_by| *held_by != hold);
        }
    }

    /// Up to `limit` events due at `at`, oldest due first, skipping those a locked claim holds
    /// and those of paused types.
    fn due_unlocked(&self, limit: usize, at: DateTime<Utc>) -> Vec<EventId> {
        self.due
            .iter()
            .take_while(|(due, _)| *due <= at)
            .map(|(_, id)| *id)
            .filter(|id| !self.locked.contains_key(id))
            .filter(|id| {
                self.paused.is_empty()
                    || self
                        .events
                        .get(id)
                        .is_some_and(|e| !self.paused.contains_key(&e.event_type))
            })
            .take(limit)
            .collect()
    }

    /// In a store that deletes acknowledged events: deletes those `recorded` says were just
    /// delivered, unless an idempotency key keeps them.
    fn forget_delivered(&mut self, recorded: &[Recorded]) {
        // In this mode a delivered event without a key exists only if this call delivered it.
        for r in recorded.iter().filter(|r| r.outcome == Outcome::Delivered) {
            let deleted = self
                .events
                .get(&r.id)
                .is_some_and(|e| deleted_on_delivery(true, &r.outcome, e));
            if deleted {
                self.remove(r.id);
            }
        }
    }

    /// Applies a lease-holder transition to each id and reports what became of each; ids not
    /// held under the lease are left alone and reported lost.
    fn apply_fenced(
        &mut self,
        items: Vec<(EventId, Transition)>,
        now: DateTime<Utc>,
    ) -> Result<Vec<Recorded>, StoreError> {
        distinct_ids(items.iter().map(|(id, _)| *id))?;
        Ok(items
            .into_iter()
            .map(|(id, t)| {
                let outcome = match self.apply(id, &t, now) {
                    Err(_) => Outcome::LeaseLost,
                    Ok(e) => Outcome::of(&t, &e),
                };
                Recorded { id, outcome }
            })
            .collect())
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        Self::new()
    }
}

impl MemoryStore {
    /// An empty store on the system clock.
    pub fn new() -> Self {
        Self::builder().build()
    }

    /// An empty store that stamps emitted events with `clock`.
    pub fn with_clock(clock: Arc<dyn Clock>) -> Self {
        Self::builder().clock(clock).build()
    }

    /// Configures a store: clock, default attempts, wake-ups.
    pub fn builder() -> MemoryStoreBuilder {
        MemoryStoreBuilder {
            clock: Arc::new(SystemClock),
            default_max_attempts: DEFAULT_MAX_ATTEMPTS,
            limits: EmitLimits::default(),
            wakeups: true,
            delete_delivered: false,
            dead_head: DeadHead::default(),
        }
    }

    /// Begins a transaction: events emitted through it, and the tables it changes through its
    /// [`conn`](outbox_core::Transaction::conn), are stored on [`commit`](UnitOfWork::commit)
    /// and dropped on rollback or drop. Never fails; fallible like every store's `begin`.
    pub async fn begin(&self) -> Result<UnitOfWork, StoreError> {
        Ok(UnitOfWork::new(self.clone()))
    }

    /// The committed table of type `T` (a copy, for assertions), empty until a transaction
    /// commits one; see [`MemoryConn`](crate::MemoryConn).
    pub fn state<T: Clone + Default + Send + Sync + 'static>(&self) -> T {
        self.tables()
            .get(&std::any::TypeId::of::<T>())
            .and_then(|t| t.value.downcast_ref::<T>().cloned())
            .unwrap_or_default()
    }

    /// The one value of type `T` that every clone of this store shares, outside any
    /// transaction (created as `T::default()` on first use). For coordination a database does
    /// with row locks, such as the inbox making a second delivery of an event wait for the
    /// first.
    pub fn extension<T: Default + Send + Sync + 'static>(&self) -> Arc<T> {
        let mut extensions = self
            .inner
            .extensions
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        let value = extensions
            .entry(std::any::TypeId::of::<T>())
            .or_insert_with(|| Arc::new(T::default()));
        match Arc::clone(value).downcast::<T>() {
            Ok(value) => value,
            Err(_) => unreachable!("the extension was stored as a T"),
        }
    }

    pub(crate) fn tables(&self) -> MutexGuard<'_, HashMap<std::any::TypeId, Table>> {
        self.inner
            .tables
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Every stored event, in id order (a snapshot, for assertions in tests).
    pub fn events(&self) -> Vec<OutboxEvent> {
        self.lock().events.values().cloned().collect()
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, State> {
        self.inner
            .state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The store's clock reading: the one time every decision is made on (and the time a
    /// consumer's inbox stamps its records with).
    pub fn now(&self) -> DateTime<Utc> {
        self.inner.clock.now()
    }

    pub(crate) fn wake(&self) {
        if let Some(wake) = &self.inner.wake {
            wake.wake();
        }
    }
}

/// Builds a [`MemoryStore`]; start with [`MemoryStore::builder`].
#[derive(Debug)]
#[must_use = "call build() to get the store"]
pub struct MemoryStoreBuilder {
    clock: Arc<dyn Clock>,
    default_max_attempts: u32,
    limits: EmitLimits,
    wakeups: bool,
    delete_delivered: bool,
    dead_head: DeadHead,
}

impl MemoryStoreBuilder {
    /// What happens to an ordering key whose head dies (default [`DeadHead::Block`]), as
    /// `PgConfig::with_dead_head` sets it for PostgreSQL; see [`outbox_core::ordering`].
    pub fn dead_head(mut self, policy: DeadHead) -> Self {
        self.dead_head = policy;
        self
    }

    /// The store's clock (default: system time): emitted events are stamped with it, and it
    /// decides when events are due and leases expire.
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }

    /// Attempts an event gets when it does not say (default [`DEFAULT_MAX_ATTEMPTS`]; at least 1).
    /// Pass the workers' [`RetryPolicy::max_attempts`](outbox_core::RetryPolicy::max_attempts)
    /// to keep the two in step.
    pub fn default_max_attempts(mut self, attempts: u32) -> Self {
        self.default_max_attempts = attempts.max(1);
        self
    }

    /// What an emitted event may carry (default [`EmitLimits::default`], as for PostgreSQL);
    /// refused if a limit is out of its range.
    pub fn limits(mut self, limits: EmitLimits) -> Result<Self, ValidationError> {
        limits.validate()?;
        self.limits = limits;
        Ok(self)
    }

    /// Whether commits wake waiting workers (default `true`). Turn off to exercise a worker's
    /// polling fallback, as with a store that cannot notice commits.
    pub fn wakeups(mut self, on: bool) -> Self {
        self.wakeups = on;
        self
    }

    /// Whether acknowledged events are deleted instead of kept as delivered (default `false`),
    /// as `PgConfig::with_delete_delivered` does for PostgreSQL: events with an idempotency key
    /// are kept all the same, so the key goes on refusing duplicates.
    pub fn delete_delivered(mut self, on: bool) -> Self {
        self.delete_delivered = on;
        self
    }

    /// The empty store.
    pub fn build(self) -> MemoryStore {
        MemoryStore {
            inner: Arc::new(Inner {
                state: Mutex::new(State {
                    dead_head: self.dead_head,
                    ..State::default()
                }),
                tables: Mutex::new(HashMap::new()),
                extensions: Mutex::new(HashMap::new()),
                wake: self.wakeups.then(WakeupSender::new),
                clock: self.clock,
                default_max_attempts: self.default_max_attempts,
                limits: self.limits,
                delete_delivered: self.delete_delivered,
            }),
        }
    }
}

#[async_trait]
impl outbox_core::Transactional for MemoryStore {
    type Tx = UnitOfWork;

    async fn begin(&self) -> Result<UnitOfWork, StoreError> {
        MemoryStore::begin(self).await
    }
}

#[async_trait]
impl OutboxStore for MemoryStore {
    async fn claim(
        &self,
        lease: &Lease,
        limit: usize,
        now: DateTime<Utc>,
    ) -> Result<Vec<OutboxEvent>, StoreError> {
        let at = self.now();
        let mut state = self.lock();
        state.end_expired_holds(at);
        let due = state.due_unlocked(limit, at);
        let claim = Transition::Claim {
            lease: Lease {
                until: translate(lease.until, now, at),
                ..lease.clone()
            },
        };
        due.into_iter()
            .map(|id| state.apply(id, &claim, at))
            .collect()
    }

    async fn renew(
        &self,
        lease: LeaseId,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let at = self.now();
        let mut state = self.lock();
        let held: Vec<EventId> = state
            .leased
            .iter()
            .filter(|(_, id)| {
                state
                    .events
                    .get(id)
                    .and_then(|e| e.lifecycle.lease.as_ref())
                    .is_some_and(|l| l.id == lease)
            })
            .map(|(_, id)| *id)
            .collect();
        let renew = Transition::Renew {
            lease,
            until: translate(until, now, at),
        };
        let mut renewed = 0;
        for id in held {
            state.apply(id, &renew, at)?;
            renewed += 1;
        }
        Ok(renewed)
    }

    async fn ack(
        &self,
        lease: LeaseId,
        ids: &[EventId],
        _now: DateTime<Utc>,
    ) -> Result<Vec<Recorded>, StoreError> {
        let at = self.now();
        let mut state = self.lock();
        let items = ids
            .iter()
            .map(|id| (*id, Transition::Ack { lease }))
            .collect();
        let recorded = state.apply_fenced(items, at)?;
        if self.inner.delete_delivered {
            state.forget_delivered(&recorded);
        }
        Ok(recorded)
    }

    async fn nack(
        &self,
        lease: LeaseId,
        failures: &[Failure],
        now: DateTime<Utc>,
    ) -> Result<Vec<Recorded>, StoreError> {
        let at = self.now();
        let items = failures
            .iter()
            .map(|f| {
                let nack = Transition::Nack {
                    lease,
                    error: f.error.clone(),
                    retry_at: f.retry_at.map(|t| translate(t, now, at)),
                };
                (f.id, nack)
            })
            .collect();
        let recorded = self.lock().apply_fenced(items, at)?;
        self.wake();
        Ok(recorded)
    }

    async fn release(
        &self,
        lease: LeaseId,
        ids: &[EventId],
        _now: DateTime<Utc>,
    ) -> Result<Vec<Recorded>, StoreError> {
        let at = self.now();
        let items = ids
            .iter()
            .map(|id| (*id, Transition::Release { lease }))
            .collect();
        let recorded = self.lock().apply_fenced(items, at)?;
        self.wake();
        Ok(recorded)
    }

    async fn defer(
        &self,
        lease: LeaseId,
        ids: &[EventId],
        until: DateTime<Utc>,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<Recorded>, StoreError> {
        let at = self.now();
        let until = translate(until, now, at);
        let items = ids
            .iter()
            .map(|id| {
                let t = Transition::Defer {
                    lease,
                    until,
                    reason: reason.to_owned(),
                };
                (*id, t)
            })
            .collect();
        let recorded = self.lock().apply_fenced(items, at)?;
        Ok(recorded)
    }

    async fn reclaim_expired(&self, _now: DateTime<Utc>) -> Result<Reclaimed, StoreError> {
        let at = self.now();
        let mut state = self.lock();
        let expired: Vec<EventId> = state
            .leased
            .iter()
            .take_while(|(until, _)| *until <= at)
            .map(|(_, id)| *id)
            .collect();
        let mut reclaimed = Reclaimed::default();
        for id in expired {
            match state.apply(id, &Transition::Expire, at)?.status() {
                Status::Dead => reclaimed.dead += 1,
                _ => reclaimed.pending += 1,
            }
        }
        Ok(reclaimed)
    }

    async fn purge_delivered(
        &self,
        before: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let before = translate(before, now, self.now());
        let mut state = self.lock();
        let old: Vec<EventId> = state
            .events
            .values()
            .filter(|e| {
                e.status() == Status::Delivered
                    && e.lifecycle.delivered_at.is_some_and(|at| at < before)
            })
            .map(|e| e.id)
            .collect();
        for id in &old {
            state.remove(*id);
        }
        Ok(old.len() as u64)
    }

    async fn get(&self, id: EventId) -> Result<Option<OutboxEvent>, StoreError> {
        Ok(self.lock().events.get(&id).cloned())
    }

    async fn list(&self, filter: &EventFilter) -> Result<EventPage, StoreError> {
        let state = self.lock();
        let all: Box<dyn Iterator<Item = &OutboxEvent>> = if filter.newest_first {
            Box::new(state.events.values().rev())
        } else {
            Box::new(state.events.values())
        };
        let events = all
            .filter(|e| filter.is_past_cursor(e.id) && filter.matches(e))
            .take(filter.limit)
            .cloned()
            .collect();
        Ok(EventPage {
            events,
            undecodable: Vec::new(),
        })
    }

    async fn count_by_status(&self) -> Result<StatusCounts, StoreError> {
        let mut counts = StatusCounts::default();
        for event in self.lock().events.values() {
            counts.add(event.status(), 1);
        }
        Ok(counts)
    }

    async fn retry_dead(
        &self,
        id: EventId,
        extra_attempts: u32,
        _now: DateTime<Utc>,
    ) -> Result<OutboxEvent, StoreError> {
        let at = self.now();
        let event = self.lock().revive(id, extra_attempts, at)?;
        self.wake();
        Ok(event)
    }

    async fn delete_events(
        &self,
        ids: &[EventId],
        _now: DateTime<Utc>,
    ) -> Result<Vec<EventId>, StoreError> {
        let at = self.now();
        let mut state = self.lock();
        state.end_expired_holds(at);
        let mut deleted = Vec::new();
        for id in ids {
            let Some(event) = state.events.get(id).cloned() else {
                continue;
            };
            if event.status() == Status::InFlight || state.locked.contains_key(id) {
                continue;
            }
            let headed = state.heads_key(&event);
            state.remove(*id);
            if let Some(key) = &event.ordering_key {
                if headed {
                    state.release_key(key, at)?;
                } else if let Some(queue) = state.queues.get_mut(key) {
                    queue.retain(|_, waiting| waiting != id);
                    if queue.is_empty() {
                        state.queues.remove(key);
                    }
                }
            }
            deleted.push(*id);
        }
        drop(state);
        self.wake();
        Ok(deleted)
    }

    async fn parked_keys(&self, limit: usize) -> Result<Vec<ParkedKey>, StoreError> {
        let state = self.lock();
        let mut parked: Vec<(DateTime<Utc>, ParkedKey)> = state
            .heads
            .iter()
            .filter_map(|(key, id)| {
                let head = state
                    .events
                    .get(id)
                    .filter(|e| e.status() == Status::Dead)?;
                let waiting = state.queues.get(key).map_or(0, |q| q.len() as u64);
                Some((
                    head.created_at,
                    ParkedKey {
                        key: key.clone(),
                        head: *id,
                        waiting,
                    },
                ))
            })
            .collect();
        parked.sort_by_key(|(created, p)| (*created, p.head));
        Ok(parked.into_iter().take(limit).map(|(_, p)| p).collect())
    }

    async fn skip_dead_head(
        &self,
        id: EventId,
        _now: DateTime<Utc>,
    ) -> Result<OutboxEvent, StoreError> {
        let at = self.now();
        let mut state = self.lock();
        let mut event = state
            .events
            .get(&id)
            .cloned()
            .ok_or(StoreError::NotFound(id))?;
        let key = event
            .ordering_key
            .clone()
            .filter(|_| event.status() == Status::Dead && state.heads_key(&event))
            .ok_or_else(|| not_a_dead_head(&event))?;
        // Giving up its key changes the event, as PostgreSQL's row records it.
        event.updated_at = at;
        state.put(event.clone());
        state.release_key(&key, at)?;
        drop(state);
        self.wake();
        Ok(event)
    }

    fn wakeups(&self) -> Option<Wakeups> {
        self.inner.wake.as_ref().map(WakeupSender::subscribe)
    }

    async fn history(&self, id: EventId) -> Result<History, StoreError> {
        let state = self.lock();
        if !state.events.contains_key(&id) {
            return Err(StoreError::NotFound(id));
        }
        Ok(state.history.get(&id).cloned().unwrap_or_default())
    }

    async fn edit_dead(
        &self,
        id: EventId,
        edit: &PayloadEdit,
        extra_attempts: u32,
        _now: DateTime<Utc>,
    ) -> Result<OutboxEvent, StoreError> {
        edit.check(&self.inner.limits)?;
        let at = self.now();
        let mut state = self.lock();
        let mut event = state
            .events
            .get(&id)
            .cloned()
            .ok_or(StoreError::NotFound(id))?;
        let previous_payload = std::mem::replace(&mut event.payload, edit.payload.clone());
        // Revived first, so a refused revive (not dead, too many attempts) changes nothing.
        let mut revived = state.revive(id, extra_attempts, at)?;
        revived.payload = event.payload;
        state.put(revived.clone());
        state.history.entry(id).or_default().push_note(AuditNote {
            at,
            by: edit.by.clone(),
            note: edit.note.clone(),
            previous_payload,
        });
        drop(state);
        self.wake();
        Ok(revived)
    }

    async fn pause_type(&self, event_type: &str, _now: DateTime<Utc>) -> Result<bool, StoreError> {
        validate_event_type(event_type)?;
        let at = self.now();
        let mut state = self.lock();
        if state.paused.contains_key(event_type) {
            return Ok(false);
        }
        state.paused.insert(event_type.to_owned(), at);
        Ok(true)
    }

    async fn resume_type(&self, event_type: &str, _now: DateTime<Utc>) -> Result<bool, StoreError> {
        validate_event_type(event_type)?;
        let resumed = self.lock().paused.remove(event_type).is_some();
        if resumed {
            self.wake();
        }
        Ok(resumed)
    }

    async fn delivered_since(
        &self,
        since: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let since = translate(since, now, self.now());
        let state = self.lock();
        let n = state
            .events
            .values()
            .filter(|e| e.lifecycle.delivered_at.is_some_and(|at| at >= since))
            .filter(|e| e.status() == Status::Delivered)
            .count();
        Ok(n as u64)
    }

    async fn paused_types(&self) -> Result<Vec<PausedType>, StoreError> {
        Ok(self
            .lock()
            .paused
            .iter()
            .map(|(event_type, since)| PausedType {
                event_type: event_type.clone(),
                since: *since,
            })
            .collect())
    }

    async fn claim_locked(
        &self,
        holder: &str,
        limit: usize,
        hold: Duration,
        _now: DateTime<Utc>,
    ) -> Result<LockedClaim, StoreError> {
        validate_hold(hold)?;
        let at = self.now();
        let mut state = self.lock();
        state.end_expired_holds(at);
        let ids = state.due_unlocked(limit, at);
        let number = state.next_hold;
        state.next_hold = number.wrapping_add(1);
        state.holds.insert(number, add(at, hold));
        let mut events = Vec::with_capacity(ids.len());
        for id in &ids {
            state.locked.insert(*id, number);
            events.extend(state.events.get(id).cloned());
        }
        let batch = Box::new(MemoryLockedBatch {
            store: self.clone(),
            holder: holder.to_owned(),
            number,
            hold,
            ids,
            open: true,
        });
        Ok(LockedClaim { events, batch })
    }
}

/// A locked claim on the memory store: the events stay pending, skipped by other claims, until
/// it is finished, dropped, or its hold runs out on the store's clock.
struct MemoryLockedBatch {
    store: MemoryStore,
    /// The worker that claimed the batch.
    holder: String,
    number: u64,
    hold: Duration,
    ids: Vec<EventId>,
    /// Whether dropping still has to give the events back.
    open: bool,
}

impl MemoryLockedBatch {
    /// Whether the hold is still in force at `at` (ending it, and every other run-out one, if
    /// not).
    fn held(&self, state: &mut State, at: DateTime<Utc>) -> Result<(), StoreError> {
        state.end_expired_holds(at);
        if state.holds.contains_key(&self.number) {
            Ok(())
        } else {
            Err(hold_ended())
        }
    }
}

fn hold_ended() -> StoreError {
    StoreError::Unavailable {
        source: "the locked claim's hold ran out; its events were given back untried".into(),
    }
}

#[async_trait]
impl LockedBatch for MemoryLockedBatch {
    async fn keep(&mut self) -> Result<(), StoreError> {
        let at = self.store.now();
        let mut state = self.store.lock();
        self.held(&mut state, at)?;
        state.holds.insert(self.number, add(at, self.hold));
        Ok(())
    }

    async fn finish(
        mut self: Box<Self>,
        settlement: &Settlement,
        now: DateTime<Utc>,
    ) -> Result<Vec<Recorded>, StoreError> {
        settlement.validate()?;
        let at = self.store.now();
        let recorded = {
            let mut state = self.store.lock();
            self.held(&mut state, at)?;
            // Decided in full before anything changes: the settlement is one commit.
            let mut settled = Vec::new();
            let recorded = settle(
                settlement,
                &self.ids,
                &self.holder,
                self.hold,
                at,
                now,
                |id, claim, t| {
                    let mut event = state
                        .events
                        .get(&id)
                        .cloned()
                        .ok_or(StoreError::NotFound(id))?;
                    let refused = |source| StoreError::Transition { id, source };
                    let claimed = transition(&event.lifecycle, claim, at).map_err(refused)?;
                    event.lifecycle = transition(&claimed, t, at).map_err(refused)?;
                    event.updated_at = at;
                    let attempt = Attempt::recorded(&claimed, &event.lifecycle, at);
                    let outcome = Outcome::of(t, &event);
                    settled.push((event, attempt));
                    Ok(outcome)
                },
            )?;
            for (event, attempt) in settled {
                let id = event.id;
                state.update(event, at)?;
                if let Some(attempt) = attempt {
                    state.history.entry(id).or_default().push_attempt(attempt);
                }
            }
            if self.store.inner.delete_delivered {
                state.forget_delivered(&recorded);
            }
            state.end_hold(self.number);
            recorded
        };
        self.open = false;
        if wakes_workers(&recorded) {
            self.store.wake();
        }
        Ok(recorded)
    }
}

impl Drop for MemoryLockedBatch {
    fn drop(&mut self) {
        if self.open {
            self.store.lock().end_hold(self.number);
            self.store.wake();
        }
    }
}
