//! [`RecordingTransport`]: captures deliveries and fails when a test tells it to.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use outbox_core::{DeliveryError, EventId, OutboxEvent, Transport};

/// What the transport answers to one delivery.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Scripted {
    /// Accept the event.
    Deliver,
    /// Fail, retryably.
    Retryable,
    /// Fail, retryably, asking for at least this delay.
    RetryAfter(Duration),
    /// Fail permanently.
    Permanent,
    /// Never answer (to exercise delivery timeouts and shutdown).
    Hang,
    /// Accept the event after this long (on tokio's clock, so a paused test drives it).
    DeliverAfter(Duration),
}

#[derive(Debug, Default)]
struct Recorded {
    script: VecDeque<Scripted>,
    otherwise: Option<Scripted>,
    delivered: Vec<OutboxEvent>,
    attempts: Vec<(EventId, Scripted)>,
}

/// A transport for tests: records every delivery and answers from a script.
///
/// Each delivery takes the next scripted answer ([`script`](Self::script)); once the script is
/// used up it answers the [`otherwise`](Self::otherwise) default, which starts as
/// [`Scripted::Deliver`]. Clones share the record.
#[derive(Clone, Debug, Default)]
pub struct RecordingTransport(Arc<Mutex<Recorded>>);

impl RecordingTransport {
    /// A transport that accepts everything.
    pub fn new() -> Self {
        Self::default()
    }

    /// Queues answers for the next deliveries, in order.
    pub fn script(&self, answers: impl IntoIterator<Item = Scripted>) -> &Self {
        self.lock().script.extend(answers);
        self
    }

    /// Sets the answer once the script is used up.
    pub fn otherwise(&self, answer: Scripted) -> &Self {
        self.lock().otherwise = Some(answer);
        self
    }

    /// Events accepted, in delivery order (a redelivered event appears each time it was accepted).
    pub fn delivered(&self) -> Vec<OutboxEvent> {
        self.lock().delivered.clone()
    }

    /// Event types accepted, in delivery order.
    pub fn delivered_types(&self) -> Vec<String> {
        self.lock()
            .delivered
            .iter()
            .map(|e| e.event_type.clone())
            .collect()
    }

    /// Every delivery attempt and the answer given, in order.
    pub fn attempts(&self) -> Vec<(EventId, Scripted)> {
        self.lock().attempts.clone()
    }

    fn lock(&self) -> MutexGuard<'_, Recorded> {
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

#[async_trait]
impl Transport for RecordingTransport {
    async fn deliver(&self, event: &OutboxEvent) -> Result<(), DeliveryError> {
        let answer = {
            let mut rec = self.lock();
            let answer = rec
                .script
                .pop_front()
                .or_else(|| rec.otherwise.clone())
                .unwrap_or(Scripted::Deliver);
            rec.attempts.push((event.id, answer.clone()));
            if answer == Scripted::Deliver {
                rec.delivered.push(event.clone());
            }
            answer
        };
        match answer {
            Scripted::Deliver => Ok(()),
            Scripted::Retryable => Err(DeliveryError::retryable("scripted retryable failure")),
            Scripted::RetryAfter(d) => Err(DeliveryError::retry_after("scripted throttling", d)),
            Scripted::Permanent => Err(DeliveryError::permanent("scripted permanent failure")),
            Scripted::Hang => std::future::pending().await,
            Scripted::DeliverAfter(d) => {
                tokio::time::sleep(d).await;
                self.lock().delivered.push(event.clone());
                Ok(())
            }
        }
    }
}
