//! The consumer's side of the outbox: run each event's effect **exactly once**, however many
//! times the event is delivered.
//!
//! The outbox delivers at least once: after a crash, a lost acknowledgement or a broker
//! redelivery, a consumer can receive the same event again. The inbox records "consumer C
//! handled event E" **in the consumer's own transaction, together with the effect**. A
//! redelivered event finds the record and skips the effect; two deliveries of one event at the
//! same moment cannot both run it: the second waits until the first's transaction ends (on
//! PostgreSQL on the records' primary key, on the memory store on a claim of the same shape),
//! then finds the record — or records it itself, if the first rolled back. Either the effect and the record commit together or neither does, so a crash
//! between the effect and the broker's acknowledgement only leads to a redelivery that is
//! skipped.
//!
//! ```
//! # #[cfg(feature = "memory")]
//! # {
//! use outbox_core::{EventId, Transaction};
//! use outbox_inbox::{Handled, Inbox};
//! use outbox_memory::MemoryStore;
//!
//! #[derive(Clone, Default)]
//! struct Thumbnails(Vec<String>);
//!
//! # tokio::runtime::Builder::new_current_thread().build()?.block_on(async {
//! let store = MemoryStore::new();
//! let inbox = Inbox::new("thumbnailer")?;
//! let event = EventId::new(); // read from the message: see each transport's `event_id`
//! for _delivery in 0..2 {
//!     let handled = inbox
//!         .handle_once(&store, event, async |tx| {
//!             tx.conn().state::<Thumbnails>().0.push("cat.png".into());
//!             Ok::<_, std::convert::Infallible>(())
//!         })
//!         .await?;
//!     println!("{handled:?}"); // Done(()) the first time, Duplicate the second
//! }
//! assert_eq!(store.state::<Thumbnails>().0.len(), 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # }
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! Records are kept for a retention window ([`InboxStore::purge_handled`]): an event delivered
//! again after its record was purged is handled again. Keep the window longer than any
//! redelivery can take (the outbox's retries and a broker's redelivery together; seven days by
//! default, as MassTransit and NServiceBus do).
//!
//! Backends: `memory` (feature `memory`) and PostgreSQL (feature `postgres`, table
//! `outbox_inbox` in the inbox's schema, created by [`InboxStore::migrate_inbox`]).

/// Makes a handler span continue the trace a received event carries (feature `trace-context`);
/// create the span, call this, then run [`Inbox::handle_once`] inside it.
#[cfg(feature = "trace-context")]
pub use outbox_core::trace_context::continue_trace;

#[cfg(feature = "memory")]
mod memory;
#[cfg(feature = "postgres")]
mod postgres;

use std::time::Duration;

use async_trait::async_trait;
use outbox_core::{EventId, StoreError, Transaction, Transactional, ValidationError};

/// How many times [`Inbox::handle_once`] runs a handler again whose commit met a conflicting
/// transaction (the memory store's optimistic check on the effect's own tables) before giving
/// up.
const CONFLICT_RETRIES: usize = 16;

/// Longest consumer name, in bytes.
pub const MAX_CONSUMER_BYTES: usize = 200;

/// The default retention window: seven days.
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(7 * 24 * 3600);

/// The longest retention window: a hundred years (longer ones are taken as this, so that
/// "now minus the window" stays a time every store can represent).
pub const MAX_RETENTION: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// One consumer's inbox: its name (events are handled once *per consumer*) and where its
/// records live.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Inbox {
    consumer: String,
    schema: String,
    retention: Duration,
}

/// What [`Inbox::handle_once`] did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Handled<T> {
    /// The effect ran and committed with the record; the handler's answer.
    Done(T),
    /// The event was handled before (or by a concurrent delivery that committed first): the
    /// effect did not run. Acknowledge the message.
    Duplicate,
}

impl<T> Handled<T> {
    /// Whether this delivery ran the effect.
    pub fn is_done(&self) -> bool {
        matches!(self, Self::Done(_))
    }
}

/// Why [`Inbox::handle_once`] failed; nothing was committed, so the message should not be
/// acknowledged (it will be delivered again and handled then).
#[derive(Debug, thiserror::Error)]
pub enum InboxError<E> {
    /// The store failed (see [`StoreError::is_retryable`]).
    #[error("inbox store: {0}")]
    Store(#[from] StoreError),
    /// The handler failed; its transaction was rolled back, the event is not recorded.
    #[error("handler: {0}")]
    Handler(E),
}

impl Inbox {
    /// The inbox of `consumer` (a stable name: renaming it handles every event again), in the
    /// `public` schema, with the default retention. Fails on an empty name or one over
    /// [`MAX_CONSUMER_BYTES`].
    pub fn new(consumer: impl Into<String>) -> Result<Self, ValidationError> {
        let consumer = consumer.into();
        if consumer.trim().is_empty() {
            return Err(ValidationError::new("consumer", "must not be empty"));
        }
        if consumer.len() > MAX_CONSUMER_BYTES {
            return Err(ValidationError::new(
                "consumer",
                format!(
                    "{} bytes is over the limit of {MAX_CONSUMER_BYTES} bytes",
                    consumer.len()
                ),
            ));
        }
        if consumer.contains('\0') {
            return Err(ValidationError::new("consumer", "must not contain NUL"));
        }
        Ok(Self {
            consumer,
            schema: "public".into(),
            retention: DEFAULT_RETENTION,
        })
    }

    /// Keeps the records in `schema` (PostgreSQL; usually the outbox's schema). Like every
    /// identifier the PostgreSQL store takes, it must be a plain SQL identifier
    /// (`[a-z_][a-z0-9_]*`); the store refuses any other with `StoreError::InvalidInput`.
    pub fn with_schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// How long records are kept by [`purge`](Self::purge); at most [`MAX_RETENTION`].
    pub fn with_retention(mut self, retention: Duration) -> Self {
        self.retention = retention.min(MAX_RETENTION);
        self
    }

    /// The consumer's name.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

    /// The schema of the records (PostgreSQL).
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The retention window.
    pub fn retention(&self) -> Duration {
        self.retention
    }

    /// Records in `tx` that this consumer handles `event`; `true` the first time, `false` if a
    /// committed transaction recorded it already. Do the effect in the same transaction only if
    /// it answers `true`, then commit; the lower-level form of
    /// [`handle_once`](Self::handle_once).
    pub async fn mark<T: InboxTransaction>(
        &self,
        tx: &mut T,
        event: EventId,
    ) -> Result<bool, StoreError> {
        tx.mark_handled(self, event).await
    }

    /// Runs `effect` for `event` in a transaction of `store` that also records it, unless it was
    /// recorded before: begins, records, runs the effect, commits. A handler error rolls back
    /// (nothing recorded, so the next delivery runs it again). A concurrent delivery of the same
    /// event waits here until this one's transaction ends. On the memory store a commit that
    /// conflicts with another transaction on the effect's own tables is run again from the
    /// start, so the effect must only touch the transaction.
    pub async fn handle_once<S, F, R, E>(
        &self,
        store: &S,
        event: EventId,
        mut effect: F,
    ) -> Result<Handled<R>, InboxError<E>>
    where
        S: Transactional + ?Sized,
        S::Tx: InboxTransaction,
        F: AsyncFnMut(&mut S::Tx) -> Result<R, E>,
    {
        let mut tries = 0;
        loop {
            let mut tx = store.begin().await?;
            if !tx.mark_handled(self, event).await? {
                tx.rollback().await?;
                return Ok(Handled::Duplicate);
            }
            let answer = match effect(&mut tx).await {
                Ok(answer) => answer,
                Err(error) => {
                    // The handler's error is the one to report; a failed rollback leaves
                    // nothing committed either.
                    let _ = tx.rollback().await;
                    return Err(InboxError::Handler(error));
                }
            };
            match tx.commit().await {
                Ok(()) => return Ok(Handled::Done(answer)),
                Err(StoreError::Conflict { .. }) if tries < CONFLICT_RETRIES => tries += 1,
                Err(error) => return Err(error.into()),
            }
        }
    }

    /// Deletes this inbox's records older than its retention window; returns how many.
    pub async fn purge<S: InboxStore + ?Sized>(&self, store: &S) -> Result<u64, StoreError> {
        store.purge_handled(self, self.retention).await
    }
}

/// A transaction that can record handled events: implemented for the memory store's
/// `UnitOfWork` (feature `memory`) and PostgreSQL's `PgTransaction` (feature `postgres`).
#[async_trait]
pub trait InboxTransaction: Transaction + Send {
    /// Records that `inbox`'s consumer handles `event`; `true` if no committed transaction had.
    /// On PostgreSQL a concurrent transaction recording the same event waits here until the
    /// first ends.
    async fn mark_handled(&mut self, inbox: &Inbox, event: EventId) -> Result<bool, StoreError>;
}

/// A store that keeps inbox records: creates their table and purges them.
#[async_trait]
pub trait InboxStore: Send + Sync {
    /// Creates the records' table if it is missing (PostgreSQL; nothing to do in memory).
    async fn migrate_inbox(&self, inbox: &Inbox) -> Result<(), StoreError>;

    /// Deletes `inbox`'s records older than `keep` on the store's clock (at most
    /// [`MAX_RETENTION`]); returns how many.
    async fn purge_handled(&self, inbox: &Inbox, keep: Duration) -> Result<u64, StoreError>;

    /// Whether `inbox`'s consumer has a committed record of `event`.
    async fn was_handled(&self, inbox: &Inbox, event: EventId) -> Result<bool, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::Inbox;

    #[test]
    fn consumer_names_are_checked() {
        assert_eq!(Inbox::new("").unwrap_err().field(), "consumer");
        assert_eq!(Inbox::new("  ").unwrap_err().field(), "consumer");
        assert_eq!(Inbox::new("a\0b").unwrap_err().field(), "consumer");
        assert_eq!(Inbox::new("x".repeat(201)).unwrap_err().field(), "consumer");
        assert_eq!(Inbox::new("x".repeat(200)).unwrap().consumer().len(), 200);
    }
}
