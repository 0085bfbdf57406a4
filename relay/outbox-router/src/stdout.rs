//! [`StdoutTransport`]: one JSON line per event on standard output, for local runs.

use std::io::Write;

use async_trait::async_trait;
use outbox_core::{DeliveryError, OutboxEvent, Transport};

/// Prints each event as one JSON line (`id`, `event_type`, `aggregate_type`, `aggregate_id`,
/// `created_at`, `headers`, `payload`) on standard output. A failed write is retryable.
#[derive(Clone, Copy, Debug, Default)]
pub struct StdoutTransport;

impl StdoutTransport {
    /// The transport.
    pub fn new() -> Self {
        Self
    }
}

/// The line printed for `event`.
pub fn line_for(event: &OutboxEvent) -> serde_json::Value {
    serde_json::json!({
        "id": event.id,
        "event_type": event.event_type,
        "aggregate_type": event.aggregate_type,
        "aggregate_id": event.aggregate_id,
        "created_at": event.created_at,
        "headers": event.headers,
        "payload": event.payload,
    })
}

#[async_trait]
impl Transport for StdoutTransport {
    async fn deliver(&self, event: &OutboxEvent) -> Result<(), DeliveryError> {
        let mut out = std::io::stdout().lock();
        writeln!(out, "{}", line_for(event))
            .and_then(|()| out.flush())
            .map_err(|e| DeliveryError::retryable("cannot write to standard output").with_source(e))
    }
}
