//! The [`Transport`] trait: where the worker delivers events, and how it reports failure.

use std::time::Duration;

use async_trait::async_trait;

use crate::error::BoxError;
use crate::event::OutboxEvent;

/// Why a delivery failed, and whether trying again may help.
///
/// The worker maps [`DeliveryError::Retryable`] onto a reschedule with backoff (at least
/// `retry_after`, if given), [`DeliveryError::Permanent`] onto `Dead` at once, and
/// [`DeliveryError::Unavailable`] onto a deferral that spends no attempt.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeliveryError {
    /// A transient failure (broker unreachable, timeout, throttling).
    #[error("{message}")]
    Retryable {
        /// What went wrong.
        message: String,
        /// The earliest retry the receiver asked for (an HTTP `Retry-After`, say).
        retry_after: Option<Duration>,
        /// The underlying error.
        #[source]
        source: Option<BoxError>,
    },
    /// Not tried: the destination as a whole is unavailable (a circuit breaker in front of it is
    /// open after consecutive failures). The worker gives the event back untried, due after
    /// `retry_in`, without spending one of its attempts.
    #[error("{message}")]
    Unavailable {
        /// Why the destination is paused.
        message: String,
        /// When to try again.
        retry_in: Duration,
    },
    /// A failure that no retry will fix (no route, rejected as malformed).
    #[error("{message}")]
    Permanent {
        /// What went wrong.
        message: String,
        /// The underlying error.
        #[source]
        source: Option<BoxError>,
    },
}

impl DeliveryError {
    /// A retryable failure.
    pub fn retryable(message: impl Into<String>) -> Self {
        Self::Retryable {
            message: message.into(),
            retry_after: None,
            source: None,
        }
    }

    /// A retryable failure that should not be retried before `after`.
    pub fn retry_after(message: impl Into<String>, after: Duration) -> Self {
        Self::Retryable {
            message: message.into(),
            retry_after: Some(after),
            source: None,
        }
    }

    /// The delivery was not tried: the destination is paused for `retry_in`.
    pub fn unavailable(message: impl Into<String>, retry_in: Duration) -> Self {
        Self::Unavailable {
            message: message.into(),
            retry_in,
        }
    }

    /// A permanent failure.
    pub fn permanent(message: impl Into<String>) -> Self {
        Self::Permanent {
            message: message.into(),
            source: None,
        }
    }

    /// Attaches the underlying error.
    pub fn with_source(mut self, error: impl Into<BoxError>) -> Self {
        match &mut self {
            Self::Retryable { source, .. } | Self::Permanent { source, .. } => {
                *source = Some(error.into())
            }
            Self::Unavailable { .. } => {}
        }
        self
    }

    /// Whether a retry may succeed (true of [`Unavailable`](Self::Unavailable) too).
    pub fn is_retryable(&self) -> bool {
        matches!(self, Self::Retryable { .. } | Self::Unavailable { .. })
    }

    /// Whether the delivery was never tried because the destination is paused.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable { .. })
    }

    /// The retry-after hint, if any.
    pub fn retry_after_hint(&self) -> Option<Duration> {
        match self {
            Self::Retryable { retry_after, .. } => *retry_after,
            Self::Unavailable { retry_in, .. } => Some(*retry_in),
            Self::Permanent { .. } => None,
        }
    }
}

/// Delivers events to the outside world (a broker, a webhook, a log).
///
/// Delivery is at least once: the same event may be handed over again after a crash or a lost
/// acknowledgement, so consumers de-duplicate by [`OutboxEvent::id`].
///
/// Implement it with `#[outbox_core::async_trait]` (no dependency of your own needed), and say
/// honestly whether a failure is worth retrying:
///
/// ```
/// use outbox_core::{DeliveryError, OutboxEvent, Transport};
///
/// /// Prints each event; refuses events it has no use for, for good.
/// struct Log;
///
/// #[outbox_core::async_trait]
/// impl Transport for Log {
///     async fn deliver(&self, event: &OutboxEvent) -> Result<(), DeliveryError> {
///         if !event.event_type.starts_with("file.") {
///             return Err(DeliveryError::permanent(format!("no route for {}", event.event_type)));
///         }
///         println!("{} {}", event.event_type, event.id);
///         Ok(())
///     }
/// }
/// ```
#[async_trait]
pub trait Transport: Send + Sync {
    /// Delivers one event. `Ok` means the receiver has it durably.
    async fn deliver(&self, event: &OutboxEvent) -> Result<(), DeliveryError>;

    /// Delivers several events, one result per event in the same order. The default delivers
    /// them one after the other; transports with a batch API override it.
    async fn deliver_batch(&self, events: &[OutboxEvent]) -> Vec<Result<(), DeliveryError>> {
        let mut results = Vec::with_capacity(events.len());
        for event in events {
            results.push(self.deliver(event).await);
        }
        results
    }
}

#[async_trait]
impl<T: Transport + ?Sized> Transport for std::sync::Arc<T> {
    async fn deliver(&self, event: &OutboxEvent) -> Result<(), DeliveryError> {
        (**self).deliver(event).await
    }
    async fn deliver_batch(&self, events: &[OutboxEvent]) -> Vec<Result<(), DeliveryError>> {
        (**self).deliver_batch(events).await
    }
}

#[async_trait]
impl<T: Transport + ?Sized> Transport for Box<T> {
    async fn deliver(&self, event: &OutboxEvent) -> Result<(), DeliveryError> {
        (**self).deliver(event).await
    }
    async fn deliver_batch(&self, events: &[OutboxEvent]) -> Vec<Result<(), DeliveryError>> {
        (**self).deliver_batch(events).await
    }
}
