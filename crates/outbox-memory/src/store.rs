//! [`MemoryStore`]: the whole store contract in process memory.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use outbox_core::{
    Clock, DEFAULT_MAX_ATTEMPTS, EventFilter, EventId, Failure, Lease, LeaseId, OutboxEvent,
    OutboxStore, Reclaimed, Status, StatusCounts, StoreError, SystemClock, Transition,
    WakeupSender, Wakeups, transition,
};

use crate::unit_of_work::UnitOfWork;

/// An outbox store in process memory: thread-safe, cheap to clone (clones share the events),
/// with the same semantics as the PostgreSQL store. Emit through a [`UnitOfWork`].
#[derive(Clone, Debug)]
pub struct MemoryStore {
    pub(crate) inner: Arc<Inner>,
}

#[derive(Debug)]
pub(crate) struct Inner {
    state: Mutex<State>,
    wake: Option<WakeupSender>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) default_max_attempts: u32,
    delete_delivered: bool,
}

#[derive(Debug, Default)]
pub(crate) struct State {
    events: BTreeMap<EventId, OutboxEvent>,
    /// Idempotency key → event.
    pub(crate) keys: HashMap<String, EventId>,
    /// Pending events by (next attempt, id): the claim order.
    due: BTreeSet<(DateTime<Utc>, EventId)>,
    /// In-flight events by (lease expiry, id).
    leased: BTreeSet<(DateTime<Utc>, EventId)>,
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

    fn remove(&mut self, id: EventId) {
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
        let mut next = event.clone();
        next.lifecycle = lifecycle;
        next.updated_at = now;
        self.put(next.clone());
        Ok(next)
    }

    /// Applies a lease-holder transition to each id; ids not held under the lease are reported.
    fn apply_fenced<'a>(
        &mut self,
        items: impl IntoIterator<Item = (EventId, Transition)> + 'a,
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let lost: Vec<EventId> = items
            .into_iter()
            .filter_map(|(id, t)| self.apply(id, &t, now).err().map(|_| id))
            .collect();
        if lost.is_empty() {
            Ok(())
        } else {
            Err(StoreError::LeaseLost { ids: lost })
        }
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
            wakeups: true,
            delete_delivered: false,
        }
    }

    /// Starts a unit of work: events emitted through it are stored on
    /// [`commit`](UnitOfWork::commit) and dropped on rollback or drop.
    pub fn begin(&self) -> UnitOfWork {
        UnitOfWork::new(self.clone())
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
    wakeups: bool,
    delete_delivered: bool,
}

impl MemoryStoreBuilder {
    /// The clock emitted events are stamped with (default: system time).
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
                state: Mutex::new(State::default()),
                wake: self.wakeups.then(WakeupSender::new),
                clock: self.clock,
                default_max_attempts: self.default_max_attempts,
                delete_delivered: self.delete_delivered,
            }),
        }
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
        let mut state = self.lock();
        let due: Vec<EventId> = state
            .due
            .iter()
            .take_while(|(at, _)| *at <= now)
            .map(|(_, id)| *id)
            .take(limit)
            .collect();
        let claim = Transition::Claim {
            lease: lease.clone(),
        };
        due.into_iter()
            .map(|id| state.apply(id, &claim, now))
            .collect()
    }

    async fn renew(
        &self,
        lease: LeaseId,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
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
        let renew = Transition::Renew { lease, until };
        let mut renewed = 0;
        for id in held {
            state.apply(id, &renew, now)?;
            renewed += 1;
        }
        Ok(renewed)
    }

    async fn ack(
        &self,
        lease: LeaseId,
        ids: &[EventId],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let mut state = self.lock();
        let result = state.apply_fenced(ids.iter().map(|id| (*id, Transition::Ack { lease })), now);
        if self.inner.delete_delivered {
            // In this mode a delivered event without a key exists only if this ack delivered it.
            for id in ids {
                let delivered_keyless = state.events.get(id).is_some_and(|e| {
                    e.status() == Status::Delivered && e.idempotency_key.is_none()
                });
                if delivered_keyless {
                    state.remove(*id);
                }
            }
        }
        result
    }

    async fn nack(
        &self,
        lease: LeaseId,
        failures: &[Failure],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let items = failures.iter().map(|f| {
            (
                f.id,
                Transition::Nack {
                    lease,
                    error: f.error.clone(),
                    retry_at: f.retry_at,
                },
            )
        });
        let result = self.lock().apply_fenced(items, now);
        self.wake();
        result
    }

    async fn release(
        &self,
        lease: LeaseId,
        ids: &[EventId],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        let result = self.lock().apply_fenced(
            ids.iter().map(|id| (*id, Transition::Release { lease })),
            now,
        );
        self.wake();
        result
    }

    async fn reclaim_expired(&self, now: DateTime<Utc>) -> Result<Reclaimed, StoreError> {
        let mut state = self.lock();
        let expired: Vec<EventId> = state
            .leased
            .iter()
            .take_while(|(until, _)| *until <= now)
            .map(|(_, id)| *id)
            .collect();
        let mut reclaimed = Reclaimed::default();
        for id in expired {
            match state.apply(id, &Transition::Expire, now)?.status() {
                Status::Dead => reclaimed.dead += 1,
                _ => reclaimed.pending += 1,
            }
        }
        Ok(reclaimed)
    }

    async fn purge_delivered(&self, before: DateTime<Utc>) -> Result<u64, StoreError> {
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

    async fn list(&self, filter: &EventFilter) -> Result<Vec<OutboxEvent>, StoreError> {
        Ok(self
            .lock()
            .events
            .values()
            .filter(|e| filter.matches(e))
            .take(filter.limit)
            .cloned()
            .collect())
    }

    async fn count_by_status(&self) -> Result<StatusCounts, StoreError> {
        let mut counts = StatusCounts::default();
        for event in self.lock().events.values() {
            match event.status() {
                Status::Pending => counts.pending += 1,
                Status::InFlight => counts.in_flight += 1,
                Status::Delivered => counts.delivered += 1,
                Status::Dead => counts.dead += 1,
            }
        }
        Ok(counts)
    }

    async fn retry_dead(
        &self,
        id: EventId,
        extra_attempts: u32,
        now: DateTime<Utc>,
    ) -> Result<OutboxEvent, StoreError> {
        let event = self
            .lock()
            .apply(id, &Transition::Revive { extra_attempts }, now)?;
        self.wake();
        Ok(event)
    }

    fn wakeups(&self) -> Option<Wakeups> {
        self.inner.wake.as_ref().map(WakeupSender::subscribe)
    }
}
