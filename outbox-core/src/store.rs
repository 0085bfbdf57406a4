//! The store contract: [`OutboxStore`] (what a worker and an operator need), [`Emit`] (what
//! application code writes through, inside its own transaction), and the types they exchange.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use tokio::sync::{Notify, watch};

use crate::error::{StoreError, ValidationError};
use crate::event::{EventId, NewEvent, OutboxEvent};
use crate::history::{History, PayloadEdit};
use crate::locked::LockedClaim;
use crate::ordering::ParkedKey;
use crate::status::{Lease, LeaseId, Status, Transition};

/// What emitting an event did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Emitted {
    /// A new event was stored with this id.
    Created(EventId),
    /// An event with the same idempotency key already exists; nothing new was stored.
    Duplicate(EventId),
}

impl Emitted {
    /// The id of the stored event (new or existing).
    pub fn id(&self) -> EventId {
        match self {
            Emitted::Created(id) | Emitted::Duplicate(id) => *id,
        }
    }
    /// Whether the idempotency key had been used before.
    pub fn is_duplicate(&self) -> bool {
        matches!(self, Emitted::Duplicate(_))
    }
}

/// Writes events inside the caller's unit of work: they become visible to workers when it
/// commits and vanish if it rolls back.
///
/// Application code written against this trait runs on every backend: unit-tested on the memory
/// store's `UnitOfWork`, run in production on a PostgreSQL transaction. Every
/// [`Transaction`](crate::Transaction) is one.
///
/// Implement it with `#[outbox_core::async_trait]`; a wrapper that adds something to every emit
/// (a header, say) forwards to the inner emitter:
///
/// ```
/// use outbox_core::{Emit, Emitted, NewEvent, StoreError};
///
/// /// Counts what goes through an inner emitter.
/// struct Counted<E> { inner: E, emitted: usize }
///
/// #[outbox_core::async_trait]
/// impl<E: Emit> Emit for Counted<E> {
///     async fn emit(&mut self, event: NewEvent) -> Result<Emitted, StoreError> {
///         let emitted = self.inner.emit(event).await?;
///         self.emitted += 1;
///         Ok(emitted)
///     }
/// }
/// ```
#[async_trait]
pub trait Emit: Send {
    /// Emits one event.
    async fn emit(&mut self, event: NewEvent) -> Result<Emitted, StoreError>;

    /// Emits several events, one answer per event in the same order. Backends override this to
    /// write them in one statement.
    async fn emit_all(&mut self, events: Vec<NewEvent>) -> Result<Vec<Emitted>, StoreError> {
        let mut out = Vec::with_capacity(events.len());
        for event in events {
            out.push(self.emit(event).await?);
        }
        Ok(out)
    }
}

/// A failed delivery to record: retry at `retry_at`, or never (`None`, a permanent error).
#[derive(Clone, Debug, PartialEq)]
pub struct Failure {
    /// The event.
    pub id: EventId,
    /// The error message kept in `last_error`.
    pub error: String,
    /// When to try again; `None` kills the event.
    pub retry_at: Option<DateTime<Utc>>,
}

impl Failure {
    /// A permanent failure of `id`: the event dies.
    pub fn permanent(id: EventId, error: impl Into<String>) -> Self {
        Self {
            id,
            error: error.into(),
            retry_at: None,
        }
    }

    /// A retryable failure of `id`, to be tried again at `at`.
    pub fn retry(id: EventId, error: impl Into<String>, at: DateTime<Utc>) -> Self {
        Self {
            id,
            error: error.into(),
            retry_at: Some(at),
        }
    }
}

/// What recording an outcome did to one event, as the store decided it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Marked delivered (or deleted, in a store that deletes acknowledged events).
    Delivered,
    /// Rescheduled: pending again, due at this time of the store's clock.
    Retrying {
        /// When the event is due again.
        at: DateTime<Utc>,
    },
    /// Dead: a permanent failure, or its last attempt.
    Dead,
    /// Given back untried, due now.
    Released,
    /// Given back untried, due at this time of the store's clock: the destination was paused
    /// (see [`OutboxStore::defer`]); the attempt does not count.
    Deferred {
        /// When the event is due again.
        at: DateTime<Utc>,
    },
    /// Not held under the caller's lease any more (it expired, and the event was reclaimed or
    /// claimed by another worker since); left unchanged.
    LeaseLost,
}

impl Outcome {
    /// What a lease holder's transition `t`, applied, did to `event` (now after it), as every
    /// store reports it.
    pub fn of(t: &Transition, event: &OutboxEvent) -> Self {
        match (t, event.status()) {
            (Transition::Release { .. }, _) => Outcome::Released,
            (Transition::Defer { .. }, _) => Outcome::Deferred {
                at: event.lifecycle.next_attempt_at,
            },
            (_, Status::Delivered) => Outcome::Delivered,
            (_, Status::Dead) => Outcome::Dead,
            _ => Outcome::Retrying {
                at: event.lifecycle.next_attempt_at,
            },
        }
    }
}

/// One event's [`Outcome`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Recorded {
    /// The event.
    pub id: EventId,
    /// What happened to it.
    pub outcome: Outcome,
}

/// Refuses a call that names the same event twice: each event gets exactly one outcome.
/// Every store calls this first in `ack`, `nack` and `release`.
pub fn distinct_ids(ids: impl IntoIterator<Item = EventId>) -> Result<(), ValidationError> {
    let mut seen = std::collections::HashSet::new();
    for id in ids {
        if !seen.insert(id) {
            return Err(ValidationError::new(
                "ids",
                format!("event {id} is named twice"),
            ));
        }
    }
    Ok(())
}

/// A row the store holds but cannot read back as an [`OutboxEvent`] (written by something
/// other than this library, or damaged). Reported, never delivered; a claim marks it dead.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Undecodable {
    /// The row's id.
    pub id: EventId,
    /// Its status.
    pub status: Status,
    /// When it was written.
    pub created_at: DateTime<Utc>,
    /// Why it cannot be read.
    pub error: String,
}

impl Undecodable {
    /// The row `id` (`status`, written at `created_at`), which `error` kept from being read:
    /// a store error's own words, without the error kind's.
    pub fn new(id: EventId, status: Status, created_at: DateTime<Utc>, error: StoreError) -> Self {
        let error = match error {
            StoreError::Backend { source } | StoreError::Unavailable { source } => {
                source.to_string()
            }
            other => other.to_string(),
        };
        Self {
            id,
            status,
            created_at,
            error,
        }
    }
}

/// What [`OutboxStore::list`] found: the events, and any rows in the same range that could not
/// be read (so one bad row never hides the others, nor is hidden itself).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct EventPage {
    /// The matching events, in id order.
    pub events: Vec<OutboxEvent>,
    /// Matching rows that could not be read, in id order.
    pub undecodable: Vec<Undecodable>,
}

impl EventPage {
    /// The highest id on the page, to pass as [`EventFilter::after`] for the next one of an
    /// oldest-first listing (see [`next_after`](Self::next_after) for either order).
    pub fn last_id(&self) -> Option<EventId> {
        let event = self.events.last().map(|e| e.id);
        let row = self.undecodable.last().map(|u| u.id);
        event.max(row)
    }

    /// Where the next page of `filter`'s listing starts: the page's last id in its order (the
    /// highest oldest first, the lowest newest first), to pass as [`EventFilter::after`].
    pub fn next_after(&self, filter: &EventFilter) -> Option<EventId> {
        let ids = self
            .events
            .iter()
            .map(|e| e.id)
            .chain(self.undecodable.iter().map(|u| u.id));
        if filter.newest_first {
            ids.min()
        } else {
            ids.max()
        }
    }

    /// The earliest creation time on the page, readable rows and unreadable ones alike.
    pub fn oldest_created_at(&self) -> Option<DateTime<Utc>> {
        let events = self.events.iter().map(|e| e.created_at);
        let rows = self.undecodable.iter().map(|u| u.created_at);
        events.chain(rows).min()
    }

    /// Whether nothing matched.
    pub fn is_empty(&self) -> bool {
        self.events.is_empty() && self.undecodable.is_empty()
    }
}

/// What [`OutboxStore::reclaim_expired`] did with events whose lease ran out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reclaimed {
    /// Returned to pending, to be claimed again.
    pub pending: u64,
    /// Out of attempts, marked dead.
    pub dead: u64,
}

/// Events by status.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct StatusCounts {
    /// Behind an earlier event of their ordering key.
    pub waiting: u64,
    /// Waiting for delivery.
    pub pending: u64,
    /// Held by a worker.
    pub in_flight: u64,
    /// Delivered and not yet purged.
    pub delivered: u64,
    /// Given up on.
    pub dead: u64,
}

impl StatusCounts {
    /// The count for one status.
    pub fn get(&self, status: Status) -> u64 {
        match status {
            Status::Waiting => self.waiting,
            Status::Pending => self.pending,
            Status::InFlight => self.in_flight,
            Status::Delivered => self.delivered,
            Status::Dead => self.dead,
        }
    }
    /// Adds one event in `status`.
    pub fn add(&mut self, status: Status, n: u64) {
        let count = match status {
            Status::Waiting => &mut self.waiting,
            Status::Pending => &mut self.pending,
            Status::InFlight => &mut self.in_flight,
            Status::Delivered => &mut self.delivered,
            Status::Dead => &mut self.dead,
        };
        *count += n;
    }
    /// All events.
    pub fn total(&self) -> u64 {
        self.waiting + self.pending + self.in_flight + self.delivered + self.dead
    }
}

/// Which events [`OutboxStore::list`] returns: every set field must match. Results come in id
/// (creation) order, oldest first or, with `newest_first`, newest first; pass
/// [`EventPage::next_after`] as `after` for the next page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct EventFilter {
    /// Only this status.
    pub status: Option<Status>,
    /// Only this event type.
    pub event_type: Option<String>,
    /// Only event types that start with this (`"order."` for `order.paid`, `order.shipped`…).
    pub event_type_prefix: Option<String>,
    /// Only this aggregate type.
    pub aggregate_type: Option<String>,
    /// Only this aggregate id.
    pub aggregate_id: Option<String>,
    /// Only the event with this idempotency key.
    pub idempotency_key: Option<String>,
    /// Only events created at or after this time.
    pub created_from: Option<DateTime<Utc>>,
    /// Only events created before this time.
    pub created_before: Option<DateTime<Utc>>,
    /// Newest first instead of oldest first.
    pub newest_first: bool,
    /// Only events past this id in the page's order (keyset paging): later ids oldest first,
    /// earlier ids newest first.
    pub after: Option<EventId>,
    /// At most this many events.
    pub limit: usize,
}

impl Default for EventFilter {
    fn default() -> Self {
        Self {
            status: None,
            event_type: None,
            event_type_prefix: None,
            aggregate_type: None,
            aggregate_id: None,
            idempotency_key: None,
            created_from: None,
            created_before: None,
            newest_first: false,
            after: None,
            limit: 100,
        }
    }
}

impl EventFilter {
    /// Whether `event` matches every set field except the page (`after`, `limit`).
    pub fn matches(&self, event: &OutboxEvent) -> bool {
        self.status.is_none_or(|s| s == event.status())
            && self
                .event_type
                .as_deref()
                .is_none_or(|t| t == event.event_type)
            && self
                .event_type_prefix
                .as_deref()
                .is_none_or(|p| event.event_type.starts_with(p))
            && self
                .aggregate_type
                .as_deref()
                .is_none_or(|t| t == event.aggregate_type)
            && self
                .aggregate_id
                .as_deref()
                .is_none_or(|t| t == event.aggregate_id)
            && self
                .idempotency_key
                .as_deref()
                .is_none_or(|k| event.idempotency_key.as_deref() == Some(k))
            && self.created_from.is_none_or(|t| event.created_at >= t)
            && self.created_before.is_none_or(|t| event.created_at < t)
    }

    /// Whether `id` lies past [`after`](Self::after) in the page's order.
    pub fn is_past_cursor(&self, id: EventId) -> bool {
        match (self.after, self.newest_first) {
            (None, _) => true,
            (Some(after), false) => id > after,
            (Some(after), true) => id < after,
        }
    }
}

/// Sends wake-ups from a store to the workers waiting on it, and tells the store when one of
/// them has run out of work.
///
/// The second half lets a backend wake workers only when one is waiting: a worker that keeps
/// finding events needs no wake-up, and sending one per commit costs the producers (see
/// `outbox-postgres`, whose producers notify only while a worker has said it is idle).
#[derive(Debug)]
pub struct WakeupSender {
    wake: watch::Sender<u64>,
    idle: Arc<Notify>,
}

impl WakeupSender {
    /// A new sender with no receivers yet.
    pub fn new() -> Self {
        Self {
            wake: watch::Sender::new(0),
            idle: Arc::new(Notify::new()),
        }
    }
    /// Wakes every receiver (once, however many times this is called before they look).
    pub fn wake(&self) {
        self.wake.send_modify(|n| *n = n.wrapping_add(1));
    }
    /// A new receiver.
    pub fn subscribe(&self) -> Wakeups {
        Wakeups {
            wake: self.wake.subscribe(),
            idle: Arc::clone(&self.idle),
        }
    }
    /// Completes once a receiver has started waiting with no wake-up unseen since this last
    /// completed (at once if one did meanwhile): "a worker ran out of work".
    pub async fn idle(&self) {
        self.idle.notified().await;
    }
}

impl Default for WakeupSender {
    fn default() -> Self {
        Self::new()
    }
}

/// Receives wake-ups: "events may have been committed".
#[derive(Debug, Clone)]
pub struct Wakeups {
    wake: watch::Receiver<u64>,
    idle: Arc<Notify>,
}

impl Wakeups {
    /// Waits for the next wake-up. Returns `false` once the sender is gone and none will come.
    ///
    /// Call it when out of work: unless a wake-up is already waiting to be seen, it first tells
    /// the sender that this receiver is idle ([`WakeupSender::idle`]).
    pub async fn wait(&mut self) -> bool {
        match self.wake.has_changed() {
            Ok(true) => {}
            Ok(false) => self.idle.notify_one(),
            Err(_) => return false,
        }
        self.wake.changed().await.is_ok()
    }
}

/// The contract every backend implements: claiming with leases, recording outcomes, operator
/// queries. Writes of new events go through [`Emit`], inside the caller's transaction.
///
/// **One clock decides.** Due-ness and lease expiry are decided on the store's own clock (the
/// database's, for PostgreSQL; the injected one for the memory store and in tests), never on a
/// caller's. Each `now` argument is the caller's clock reading at the call, and every other time
/// a caller passes is read relative to it: a lease `until` 30 s after `now` holds for 30 s of the
/// store's clock, a `retry_at` 5 s after `now` is due 5 s later on the store's clock. A relay
/// whose clock runs ahead therefore cannot take over a live lease or make an event due early.
///
/// Every lifecycle change follows [`transition`](crate::transition); calls naming a lease are
/// fenced: events no longer held under that lease are left unchanged and reported as
/// [`Outcome::LeaseLost`]. Calls that record outcomes report one [`Recorded`] per event, in the
/// order asked.
///
/// Used as a trait object through [`DynOutboxStore`]; `Arc<S>` and `Box<S>` forward every method.
///
/// Implement it with `#[outbox_core::async_trait]`. A new backend passes the conformance suite
/// (the `tests` crate) unchanged; a wrapper forwards every method it does not change:
///
/// ```
/// use std::sync::atomic::{AtomicU64, Ordering};
/// use chrono::{DateTime, Utc};
/// use outbox_core::{
///     EventFilter, EventId, EventPage, Failure, Lease, LeaseId, LockedClaim, OutboxEvent,
///     OutboxStore, Reclaimed, Recorded, StatusCounts, StoreError, Wakeups,
/// };
///
/// /// Counts claimed events, forwarding everything to the store it wraps.
/// struct Counting<S> { inner: S, claimed: AtomicU64 }
///
/// #[outbox_core::async_trait]
/// impl<S: OutboxStore> OutboxStore for Counting<S> {
///     async fn claim(&self, lease: &Lease, limit: usize, now: DateTime<Utc>) -> Result<Vec<OutboxEvent>, StoreError> {
///         let events = self.inner.claim(lease, limit, now).await?;
///         self.claimed.fetch_add(events.len() as u64, Ordering::Relaxed);
///         Ok(events)
///     }
///     async fn renew(&self, lease: LeaseId, until: DateTime<Utc>, now: DateTime<Utc>) -> Result<u64, StoreError> {
///         self.inner.renew(lease, until, now).await
///     }
///     async fn ack(&self, lease: LeaseId, ids: &[EventId], now: DateTime<Utc>) -> Result<Vec<Recorded>, StoreError> {
///         self.inner.ack(lease, ids, now).await
///     }
///     async fn nack(&self, lease: LeaseId, failures: &[Failure], now: DateTime<Utc>) -> Result<Vec<Recorded>, StoreError> {
///         self.inner.nack(lease, failures, now).await
///     }
///     async fn release(&self, lease: LeaseId, ids: &[EventId], now: DateTime<Utc>) -> Result<Vec<Recorded>, StoreError> {
///         self.inner.release(lease, ids, now).await
///     }
///     async fn defer(&self, lease: LeaseId, ids: &[EventId], until: DateTime<Utc>, reason: &str, now: DateTime<Utc>) -> Result<Vec<Recorded>, StoreError> {
///         self.inner.defer(lease, ids, until, reason, now).await
///     }
///     async fn reclaim_expired(&self, now: DateTime<Utc>) -> Result<Reclaimed, StoreError> {
///         self.inner.reclaim_expired(now).await
///     }
///     async fn purge_delivered(&self, before: DateTime<Utc>, now: DateTime<Utc>) -> Result<u64, StoreError> {
///         self.inner.purge_delivered(before, now).await
///     }
///     async fn get(&self, id: EventId) -> Result<Option<OutboxEvent>, StoreError> {
///         self.inner.get(id).await
///     }
///     async fn list(&self, filter: &EventFilter) -> Result<EventPage, StoreError> {
///         self.inner.list(filter).await
///     }
///     async fn count_by_status(&self) -> Result<StatusCounts, StoreError> {
///         self.inner.count_by_status().await
///     }
///     async fn retry_dead(&self, id: EventId, extra: u32, now: DateTime<Utc>) -> Result<OutboxEvent, StoreError> {
///         self.inner.retry_dead(id, extra, now).await
///     }
///     fn wakeups(&self) -> Option<Wakeups> {
///         self.inner.wakeups() // forward this one too, or workers fall back to polling
///     }
///     async fn claim_locked(&self, holder: &str, limit: usize, hold: std::time::Duration, now: DateTime<Utc>) -> Result<LockedClaim, StoreError> {
///         self.inner.claim_locked(holder, limit, hold, now).await // and this one, or locked claims are refused
///     }
/// }
/// ```
#[async_trait]
pub trait OutboxStore: Send + Sync {
    /// Claims up to `limit` due pending events (oldest due first) under `lease`, marking them in
    /// flight. Events held by another worker are skipped, never waited on.
    async fn claim(
        &self,
        lease: &Lease,
        limit: usize,
        now: DateTime<Utc>,
    ) -> Result<Vec<OutboxEvent>, StoreError>;

    /// Extends `lease` to `until` on every event still held under it; returns how many are.
    async fn renew(
        &self,
        lease: LeaseId,
        until: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError>;

    /// Marks events delivered: [`Outcome::Delivered`] or [`Outcome::LeaseLost`] for each.
    async fn ack(
        &self,
        lease: LeaseId,
        ids: &[EventId],
        now: DateTime<Utc>,
    ) -> Result<Vec<Recorded>, StoreError>;

    /// Records failed deliveries: reschedules each ([`Outcome::Retrying`]), or kills it
    /// ([`Outcome::Dead`]) on a permanent error or when its attempts are used up.
    async fn nack(
        &self,
        lease: LeaseId,
        failures: &[Failure],
        now: DateTime<Utc>,
    ) -> Result<Vec<Recorded>, StoreError>;

    /// Gives events back untried ([`Outcome::Released`]: pending, due now); the attempt does
    /// not count.
    async fn release(
        &self,
        lease: LeaseId,
        ids: &[EventId],
        now: DateTime<Utc>,
    ) -> Result<Vec<Recorded>, StoreError>;

    /// Gives events back untried, not due before `until` (a time on the caller's clock, read
    /// relatively like every other), keeping `reason` as their last error
    /// ([`Outcome::Deferred`]); the attempt does not count. For deliveries that were never
    /// tried because their destination as a whole is unavailable (a circuit breaker is open):
    /// unlike a failure, an outage spends none of the event's attempts, and unlike a release
    /// the event does not come straight back to be claimed again.
    async fn defer(
        &self,
        lease: LeaseId,
        ids: &[EventId],
        until: DateTime<Utc>,
        reason: &str,
        now: DateTime<Utc>,
    ) -> Result<Vec<Recorded>, StoreError>;

    /// Takes back in-flight events whose lease expired on the store's clock (the attempt
    /// counts).
    async fn reclaim_expired(&self, now: DateTime<Utc>) -> Result<Reclaimed, StoreError>;

    /// Deletes delivered events delivered before `before` (read relative to `now`, like every
    /// time argument); returns how many.
    async fn purge_delivered(
        &self,
        before: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError>;

    /// One event; [`StoreError::Undecodable`] if its row cannot be read.
    async fn get(&self, id: EventId) -> Result<Option<OutboxEvent>, StoreError>;

    /// Events matching `filter`, in id order, with the matching rows that cannot be read.
    async fn list(&self, filter: &EventFilter) -> Result<EventPage, StoreError>;

    /// How many events are in each status.
    async fn count_by_status(&self) -> Result<StatusCounts, StoreError>;

    /// Gives a dead event `extra_attempts` more attempts, due at `now`.
    async fn retry_dead(
        &self,
        id: EventId,
        extra_attempts: u32,
        now: DateTime<Utc>,
    ) -> Result<OutboxEvent, StoreError>;

    /// Wake-ups sent when events are committed, if the store can notice commits. Workers fall
    /// back to polling when this is `None` (the default).
    fn wakeups(&self) -> Option<Wakeups> {
        None
    }

    /// Claims up to `limit` due pending events (oldest due first) for the worker `holder` under
    /// locks held until the
    /// returned batch is finished or dropped, instead of under a lease: nothing is written until
    /// [`LockedBatch::finish`](crate::LockedBatch::finish) records every outcome in one commit
    /// (see [`locked`](crate::locked)). Events locked or in flight elsewhere are skipped, never
    /// waited on. If the batch is neither finished nor kept within `hold`, the store ends the
    /// hold and the events are claimable again, untried.
    ///
    /// The default refuses ([`StoreError::Unsupported`]); a wrapper store forwards it.
    async fn claim_locked(
        &self,
        holder: &str,
        limit: usize,
        hold: Duration,
        now: DateTime<Utc>,
    ) -> Result<LockedClaim, StoreError> {
        let _ = (holder, limit, hold, now);
        Err(StoreError::Unsupported {
            operation: "claim_locked",
        })
    }

    /// Deletes events for good, whatever their status, except those a worker holds (in flight
    /// under a lease, or locked by a locked claim), which are skipped; returns the ids deleted.
    /// An event that headed its ordering key gives it up (the next event is promoted); a
    /// waiting one leaves its key's queue. For an operator cleaning up: deleting an undelivered
    /// event means it is never delivered.
    ///
    /// The default refuses ([`StoreError::Unsupported`]); a wrapper store forwards it.
    async fn delete_events(
        &self,
        ids: &[EventId],
        now: DateTime<Utc>,
    ) -> Result<Vec<EventId>, StoreError> {
        let _ = (ids, now);
        Err(StoreError::Unsupported {
            operation: "delete_events",
        })
    }

    /// Keys parked behind a dead head (see [`ordering`](crate::ordering)), up to `limit`, oldest
    /// head first.
    ///
    /// The default refuses ([`StoreError::Unsupported`]); a wrapper store forwards it.
    async fn parked_keys(&self, limit: usize) -> Result<Vec<ParkedKey>, StoreError> {
        let _ = limit;
        Err(StoreError::Unsupported {
            operation: "parked_keys",
        })
    }

    /// Lets the events behind a dead head go on: the dead event gives up its ordering key (it
    /// stays dead) and the key's next event is promoted. Refused
    /// ([`StoreError::Transition`]) unless the event is dead and heads its key.
    ///
    /// The default refuses ([`StoreError::Unsupported`]); a wrapper store forwards it.
    async fn skip_dead_head(
        &self,
        id: EventId,
        now: DateTime<Utc>,
    ) -> Result<OutboxEvent, StoreError> {
        let _ = (id, now);
        Err(StoreError::Unsupported {
            operation: "skip_dead_head",
        })
    }

    /// The event's failed attempts and operator notes (see [`history`](crate::history));
    /// [`StoreError::NotFound`] if there is no such event.
    ///
    /// The default refuses ([`StoreError::Unsupported`]); a wrapper store forwards it.
    async fn history(&self, id: EventId) -> Result<History, StoreError> {
        let _ = id;
        Err(StoreError::Unsupported {
            operation: "history",
        })
    }

    /// Replaces a dead event's payload and gives it `extra_attempts` more attempts, due at
    /// `now`, as [`retry_dead`](Self::retry_dead) does; the replaced payload is kept with the
    /// edit's author and reason as an [`AuditNote`](crate::history::AuditNote). The edit is
    /// checked against the store's [`EmitLimits`](crate::EmitLimits)
    /// ([`PayloadEdit::check`]); refused ([`StoreError::Transition`]) unless the event is dead.
    ///
    /// The default refuses ([`StoreError::Unsupported`]); a wrapper store forwards it.
    async fn edit_dead(
        &self,
        id: EventId,
        edit: &PayloadEdit,
        extra_attempts: u32,
        now: DateTime<Utc>,
    ) -> Result<OutboxEvent, StoreError> {
        let _ = (id, edit, extra_attempts, now);
        Err(StoreError::Unsupported {
            operation: "edit_dead",
        })
    }

    /// Pauses delivery of `event_type`: no claim, in any process using this store, hands out
    /// its events until it is resumed; they stay `pending` (or `waiting`) and keep their
    /// schedule. An event already in flight finishes its attempt. Returns whether the type was
    /// not paused before.
    ///
    /// The default refuses ([`StoreError::Unsupported`]); a wrapper store forwards it.
    async fn pause_type(&self, event_type: &str, now: DateTime<Utc>) -> Result<bool, StoreError> {
        let _ = (event_type, now);
        Err(StoreError::Unsupported {
            operation: "pause_type",
        })
    }

    /// Resumes delivery of a paused `event_type`; returns whether it was paused.
    ///
    /// The default refuses ([`StoreError::Unsupported`]); a wrapper store forwards it.
    async fn resume_type(&self, event_type: &str, now: DateTime<Utc>) -> Result<bool, StoreError> {
        let _ = (event_type, now);
        Err(StoreError::Unsupported {
            operation: "resume_type",
        })
    }

    /// The paused event types, by name.
    ///
    /// The default refuses ([`StoreError::Unsupported`]); a wrapper store forwards it.
    async fn paused_types(&self) -> Result<Vec<PausedType>, StoreError> {
        Err(StoreError::Unsupported {
            operation: "paused_types",
        })
    }

    /// How many events are in each status, each counted only up to `cap` (a count of `cap`
    /// means "at least `cap`"): a cost bounded by the cap whatever the table's size, for
    /// dashboards and metrics that refresh often. The default counts everything
    /// ([`count_by_status`](Self::count_by_status)) and caps the result.
    async fn count_capped(&self, cap: u64) -> Result<StatusCounts, StoreError> {
        let counts = self.count_by_status().await?;
        let mut capped = StatusCounts::default();
        for status in Status::ALL {
            capped.add(status, counts.get(status).min(cap));
        }
        Ok(capped)
    }

    /// The oldest pending event by creation time — its id and when it was created — or `None`
    /// when nothing is pending: the lag an operator watches. The default takes the first
    /// pending event in [`list`](Self::list) order; a store with many events kept reads it
    /// from the pending ones alone.
    async fn oldest_pending(&self) -> Result<Option<(EventId, DateTime<Utc>)>, StoreError> {
        let page = self
            .list(&EventFilter {
                status: Some(Status::Pending),
                limit: 1,
                ..EventFilter::default()
            })
            .await?;
        Ok(page.events.first().map(|e| (e.id, e.created_at)))
    }

    /// How many events were delivered at or after `since` (read relative to `now`) and are
    /// still kept; for a delivery rate. A store that deletes delivered events keeps none.
    ///
    /// The default refuses ([`StoreError::Unsupported`]); a wrapper store forwards it.
    async fn delivered_since(
        &self,
        since: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        let _ = (since, now);
        Err(StoreError::Unsupported {
            operation: "delivered_since",
        })
    }
}

/// An event type whose delivery is paused ([`OutboxStore::pause_type`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PausedType {
    /// The event type.
    pub event_type: String,
    /// When it was paused, on the store's clock.
    pub since: DateTime<Utc>,
}

/// The store as a trait object.
pub type DynOutboxStore = dyn OutboxStore;

macro_rules! forward_store {
    ($ptr:ident) => {
        #[async_trait]
        impl<S: OutboxStore + ?Sized> OutboxStore for $ptr<S> {
            async fn claim(
                &self,
                lease: &Lease,
                limit: usize,
                now: DateTime<Utc>,
            ) -> Result<Vec<OutboxEvent>, StoreError> {
                (**self).claim(lease, limit, now).await
            }
            async fn renew(
                &self,
                lease: LeaseId,
                until: DateTime<Utc>,
                now: DateTime<Utc>,
            ) -> Result<u64, StoreError> {
                (**self).renew(lease, until, now).await
            }
            async fn ack(
                &self,
                lease: LeaseId,
                ids: &[EventId],
                now: DateTime<Utc>,
            ) -> Result<Vec<Recorded>, StoreError> {
                (**self).ack(lease, ids, now).await
            }
            async fn nack(
                &self,
                lease: LeaseId,
                failures: &[Failure],
                now: DateTime<Utc>,
            ) -> Result<Vec<Recorded>, StoreError> {
                (**self).nack(lease, failures, now).await
            }
            async fn release(
                &self,
                lease: LeaseId,
                ids: &[EventId],
                now: DateTime<Utc>,
            ) -> Result<Vec<Recorded>, StoreError> {
                (**self).release(lease, ids, now).await
            }
            async fn defer(
                &self,
                lease: LeaseId,
                ids: &[EventId],
                until: DateTime<Utc>,
                reason: &str,
                now: DateTime<Utc>,
            ) -> Result<Vec<Recorded>, StoreError> {
                (**self).defer(lease, ids, until, reason, now).await
            }
            async fn reclaim_expired(&self, now: DateTime<Utc>) -> Result<Reclaimed, StoreError> {
                (**self).reclaim_expired(now).await
            }
            async fn purge_delivered(
                &self,
                before: DateTime<Utc>,
                now: DateTime<Utc>,
            ) -> Result<u64, StoreError> {
                (**self).purge_delivered(before, now).await
            }
            async fn get(&self, id: EventId) -> Result<Option<OutboxEvent>, StoreError> {
                (**self).get(id).await
            }
            async fn list(&self, filter: &EventFilter) -> Result<EventPage, StoreError> {
                (**self).list(filter).await
            }
            async fn count_by_status(&self) -> Result<StatusCounts, StoreError> {
                (**self).count_by_status().await
            }
            async fn retry_dead(
                &self,
                id: EventId,
                extra_attempts: u32,
                now: DateTime<Utc>,
            ) -> Result<OutboxEvent, StoreError> {
                (**self).retry_dead(id, extra_attempts, now).await
            }
            fn wakeups(&self) -> Option<Wakeups> {
                (**self).wakeups()
            }
            async fn claim_locked(
                &self,
                holder: &str,
                limit: usize,
                hold: Duration,
                now: DateTime<Utc>,
            ) -> Result<LockedClaim, StoreError> {
                (**self).claim_locked(holder, limit, hold, now).await
            }
            async fn history(&self, id: EventId) -> Result<History, StoreError> {
                (**self).history(id).await
            }
            async fn edit_dead(
                &self,
                id: EventId,
                edit: &PayloadEdit,
                extra_attempts: u32,
                now: DateTime<Utc>,
            ) -> Result<OutboxEvent, StoreError> {
                (**self).edit_dead(id, edit, extra_attempts, now).await
            }
            async fn pause_type(
                &self,
                event_type: &str,
                now: DateTime<Utc>,
            ) -> Result<bool, StoreError> {
                (**self).pause_type(event_type, now).await
            }
            async fn resume_type(
                &self,
                event_type: &str,
                now: DateTime<Utc>,
            ) -> Result<bool, StoreError> {
                (**self).resume_type(event_type, now).await
            }
            async fn paused_types(&self) -> Result<Vec<PausedType>, StoreError> {
                (**self).paused_types().await
            }
            async fn oldest_pending(&self) -> Result<Option<(EventId, DateTime<Utc>)>, StoreError> {
                (**self).oldest_pending().await
            }
            async fn count_capped(&self, cap: u64) -> Result<StatusCounts, StoreError> {
                (**self).count_capped(cap).await
            }
            async fn delivered_since(
                &self,
                since: DateTime<Utc>,
                now: DateTime<Utc>,
            ) -> Result<u64, StoreError> {
                (**self).delivered_since(since, now).await
            }
            async fn delete_events(
                &self,
                ids: &[EventId],
                now: DateTime<Utc>,
            ) -> Result<Vec<EventId>, StoreError> {
                (**self).delete_events(ids, now).await
            }
            async fn parked_keys(&self, limit: usize) -> Result<Vec<ParkedKey>, StoreError> {
                (**self).parked_keys(limit).await
            }
            async fn skip_dead_head(
                &self,
                id: EventId,
                now: DateTime<Utc>,
            ) -> Result<OutboxEvent, StoreError> {
                (**self).skip_dead_head(id, now).await
            }
        }
    };
}

forward_store!(Arc);
forward_store!(Box);

/// Conveniences over [`OutboxStore`], for every store (blanket impl). Not part of what a backend
/// implements, so a wrapper store can never forget to forward them.
#[async_trait]
pub trait OutboxStoreExt: OutboxStore {
    /// Claims up to `limit` events for `worker` under a fresh lease of `lease_for`.
    async fn claim_for(
        &self,
        worker: &str,
        limit: usize,
        lease_for: Duration,
        now: DateTime<Utc>,
    ) -> Result<(Lease, Vec<OutboxEvent>), StoreError> {
        let lease = Lease {
            id: LeaseId::new(),
            holder: worker.to_owned(),
            until: crate::clock::add(now, lease_for),
        };
        let events = self.claim(&lease, limit, now).await?;
        Ok((lease, events))
    }

    /// The event, or [`StoreError::NotFound`].
    async fn fetch(&self, id: EventId) -> Result<OutboxEvent, StoreError> {
        self.get(id).await?.ok_or(StoreError::NotFound(id))
    }
}

impl<S: OutboxStore + ?Sized> OutboxStoreExt for S {}

#[cfg(test)]
mod tests {
    use super::WakeupSender;

    /// Whether the sender heard an idle signal (one is stored until taken).
    async fn heard_idle(sender: &WakeupSender) -> bool {
        tokio::select! {
            biased;
            () = sender.idle() => true,
            () = std::future::ready(()) => false,
        }
    }

    #[tokio::test]
    async fn a_receiver_that_waits_with_nothing_unseen_says_it_is_idle() {
        let sender = WakeupSender::new();
        let mut wakeups = sender.subscribe();
        assert!(!heard_idle(&sender).await);
        tokio::select! {
            biased;
            _ = wakeups.wait() => panic!("no wake-up was sent"),
            () = std::future::ready(()) => {}
        }
        assert!(heard_idle(&sender).await);
        assert!(!heard_idle(&sender).await, "one signal, taken once");
    }

    #[tokio::test]
    async fn a_receiver_with_a_wake_up_unseen_is_not_idle() {
        let sender = WakeupSender::new();
        let mut wakeups = sender.subscribe();
        sender.wake();
        assert!(
            wakeups.wait().await,
            "the wake-up sent before waiting is seen"
        );
        assert!(!heard_idle(&sender).await);
    }
}
