//! Error types shared by every store: [`ValidationError`] for bad input and [`StoreError`] for
//! everything a store operation can answer.

use std::borrow::Cow;

use crate::event::EventId;
use crate::status::TransitionError;

/// A boxed error from a driver or broker, kept as a `source`.
pub type BoxError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// Bad input, naming the field at fault. Nothing was stored.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {field}: {reason}")]
pub struct ValidationError {
    field: &'static str,
    reason: Cow<'static, str>,
}

impl ValidationError {
    /// A validation error for `field`.
    pub fn new(field: &'static str, reason: impl Into<Cow<'static, str>>) -> Self {
        Self {
            field,
            reason: reason.into(),
        }
    }
    /// The field at fault (`"event_type"`, `"payload"`, `"table"` …).
    pub fn field(&self) -> &'static str {
        self.field
    }
    /// What is wrong with it.
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

/// What a store operation can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StoreError {
    /// The input was refused before anything was written.
    #[error(transparent)]
    InvalidInput(#[from] ValidationError),
    /// No event has this id.
    #[error("no event with id {0}")]
    NotFound(EventId),
    /// The event's row exists but cannot be read back (written by something other than this
    /// library, or damaged); see [`Undecodable`](crate::Undecodable).
    #[error("event {id} cannot be read: {reason}")]
    Undecodable {
        /// The event.
        id: EventId,
        /// Why.
        reason: String,
    },
    /// The state machine refused the change; the event is unchanged.
    #[error("event {id}: {source}")]
    Transition {
        /// The event.
        id: EventId,
        /// Why it was refused.
        #[source]
        source: TransitionError,
    },
    /// The transaction could not commit because a concurrent one changed what it read (the
    /// memory store's tables; a serialization failure). Nothing was kept; running the whole
    /// transaction again may succeed.
    #[error("conflict: {reason}")]
    Conflict {
        /// What conflicted.
        reason: String,
    },
    /// The store could not be reached (connection lost, pool exhausted, database restarting).
    /// Retrying later may succeed.
    #[error("store unavailable: {source}")]
    Unavailable {
        /// The driver's error.
        #[source]
        source: BoxError,
    },
    /// The backend cancelled the operation because it ran longer than the time allowed it (a
    /// statement timeout set on the connection, or an operator's cancel); nothing it would
    /// have written was kept. The same operation will likely take as long again: narrow it.
    #[error("cancelled after running too long: {source}")]
    TimedOut {
        /// The driver's error.
        #[source]
        source: BoxError,
    },
    /// The backend does not offer this operation.
    #[error("{operation} is not supported by this store")]
    Unsupported {
        /// The operation asked for.
        operation: &'static str,
    },
    /// Any other backend failure.
    #[error("store error: {source}")]
    Backend {
        /// The driver's error.
        #[source]
        source: BoxError,
    },
}

impl StoreError {
    /// Whether trying the same operation again later may succeed.
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            StoreError::Unavailable { .. } | StoreError::Conflict { .. }
        )
    }
}
