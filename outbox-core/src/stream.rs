//! Events read from a database's log of committed changes instead of claimed from the table.
//!
//! A store whose database keeps such a log (PostgreSQL's logical replication) can offer its
//! committed events as an [`EventStream`]: in commit order, each transaction once, from a
//! position the reader confirms when it is done with everything before it. Delivering from the
//! stream writes nothing per event while deliveries succeed; an event that cannot be delivered
//! now is handed to the table's own path — taken under a lease as a claim would take it
//! ([`take`](EventStream::take)), then recorded with the store's ordinary outcome calls (nack,
//! defer), or put back untried ([`hold`](EventStream::hold)) — so the same rules decide its
//! retries, its death and its ordering key as for any claimed event, and ordinary workers
//! deliver it.
//!
//! Per-key ordering holds across both paths: an event whose ordering key has an event in the
//! table's path ([`Streamed::hold`] is [`HoldReason::KeyWaiting`]) is held behind it, and so is
//! every later event of a key whose earlier event failed in the same batch.

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::error::StoreError;
use crate::event::{EventId, OutboxEvent};
use crate::status::Lease;

/// A place in the stream: everything committed before it has been read. Opaque to the reader,
/// ordered by the source (a log sequence number, for PostgreSQL).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct StreamPosition(pub u64);

/// Why a streamed event goes through the table's own path without being tried from the stream.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum HoldReason {
    /// Its ordering key has an earlier event in the table's path (retrying, dead and blocking,
    /// or revived); it waits behind it.
    KeyWaiting,
    /// It is not due yet (emitted with `deliver_after`).
    NotDue,
    /// Its event type is paused.
    Paused,
    /// Its row could not be decoded from the log; the table's path reads it again and reports
    /// what is wrong with it.
    Undecodable(String),
}

/// One event read from the stream.
#[derive(Clone, Debug)]
pub struct Streamed {
    /// The event as committed.
    pub event: OutboxEvent,
    /// Set when the event must not be delivered from the stream.
    pub hold: Option<HoldReason>,
}

/// What one read of the stream returned.
#[derive(Clone, Debug, Default)]
pub struct StreamBatch {
    /// Events committed after the confirmed position, in commit order (within a transaction,
    /// in insertion order).
    pub events: Vec<Streamed>,
    /// Where the stream may be confirmed once every event of the batch is delivered or handed
    /// to the table's path. Past the last event, and past any transaction without events.
    pub position: StreamPosition,
    /// Whether the read stopped because it reached `max`: more may be waiting.
    pub full: bool,
    /// When the batch's first transaction committed, if it had one (for the stream's lag).
    pub first_commit: Option<DateTime<Utc>>,
}

/// A source of committed events in commit order, confirmed by position.
///
/// One reader at a time: a source refuses or waits while another reader holds the stream.
/// After a crash the next reader starts again from the last confirmed position, so events read
/// but not confirmed are read again — at least once, duplicates only after the last
/// confirmation.
#[async_trait]
pub trait EventStream: Send {
    /// Reads the events committed after the confirmed position: whole transactions, stopping
    /// after the one that reaches `max` events. Empty when there is nothing new (a source may
    /// wait a short while for new events first).
    ///
    /// A batch read and not confirmed is read again: after an error anywhere in its
    /// settlement, the next read starts from the confirmed position, so nothing is skipped.
    async fn next_batch(&mut self, max: usize) -> Result<StreamBatch, StoreError>;

    /// Takes `ids` (streamed events of the current batch that failed or were deferred) into
    /// the table's path, in flight under `lease` and each its ordering key's head, as a claim
    /// would; the store's `nack`/`defer` then record their outcome. Returns the ids taken: an
    /// event the table no longer holds as streamed (already delivered and confirmed before a
    /// restart) is left out.
    async fn take(
        &mut self,
        lease: &Lease,
        ids: &[EventId],
        now: DateTime<Utc>,
    ) -> Result<Vec<EventId>, StoreError>;

    /// Hands `ids` to the table's path untried, in this order: pending, due when they were
    /// due, each at the back of its ordering key's queue. Returns how many were handed over.
    async fn hold(&mut self, ids: &[EventId], now: DateTime<Utc>) -> Result<u64, StoreError>;

    /// Records `delivered` as delivered (or forgets them, as the store keeps delivered events)
    /// and confirms the stream up to `position`.
    async fn confirm(
        &mut self,
        position: StreamPosition,
        delivered: &[EventId],
        now: DateTime<Utc>,
    ) -> Result<(), StoreError>;

    /// Ends reading: what was confirmed reaches the source before this returns, so a reader
    /// that takes over starts after it. The default does nothing (for sources that confirm
    /// synchronously).
    async fn close(&mut self) -> Result<(), StoreError> {
        Ok(())
    }
}
