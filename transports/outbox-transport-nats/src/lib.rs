//! Delivers outbox events to NATS JetStream.
//!
//! Each event is published to a subject derived from it (by default `<prefix>.<event_type>`)
//! and the transport waits for the stream's acknowledgement: `Ok` means the stream stored it.
//!
//! What the consumer receives:
//! - **payload**: the event's JSON payload, as bytes;
//! - **headers**: `Nats-Msg-Id` = the event id (the stream's duplicate window drops a
//!   redelivered event), `Outbox-Event-Id`, `Outbox-Event-Type`, `Outbox-Aggregate-Type`,
//!   `Outbox-Aggregate-Id`, `Outbox-Created-At` (RFC 3339), `Outbox-Ordering-Key` when set, and
//!   every header of the event (trace context, correlation id) under its own name.
//!
//! Delivery is at least once: redeliveries outside the stream's duplicate window reach the
//! consumer again, so consumers de-duplicate by `Outbox-Event-Id`.
//!
//! Failures map honestly: no stream for the subject, or a message over the server's size limit,
//! is permanent (retrying cannot help); a timeout, a broken connection or a full stream is
//! retryable.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use outbox_transport_nats::NatsTransport;
//! let transport = NatsTransport::connect("nats://127.0.0.1:4222", "events").await?;
//! // Worker::builder(store, transport)… delivers `file.stored` to subject `events.file.stored`.
//! # Ok(()) }
//! ```

use std::sync::Arc;

use async_nats::jetstream::{self, context::PublishErrorKind};
use async_nats::{HeaderMap, header};
use async_trait::async_trait;
use outbox_core::{DeliveryError, OutboxEvent, Transport};

/// Maps an event to the subject it is published on.
pub type SubjectFn = Arc<dyn Fn(&OutboxEvent) -> String + Send + Sync>;

/// Publishes events to JetStream and waits for the stream's acknowledgement.
#[derive(Clone)]
pub struct NatsTransport {
    jetstream: jetstream::Context,
    subject: SubjectFn,
}

impl std::fmt::Debug for NatsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NatsTransport").finish_non_exhaustive()
    }
}

impl NatsTransport {
    /// Connects to `url` and publishes each event to `<prefix>.<event_type>`.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, async_nats::ConnectError> {
        let client = async_nats::connect(url).await?;
        Ok(Self::with_prefix(client, prefix))
    }

    /// Publishes through `client` to `<prefix>.<event_type>`.
    pub fn with_prefix(client: async_nats::Client, prefix: &str) -> Self {
        let prefix = prefix.trim_end_matches('.').to_owned();
        Self::new(
            client,
            Arc::new(move |e: &OutboxEvent| format!("{prefix}.{}", e.event_type)),
        )
    }

    /// Publishes through `client` to the subject `subject` picks for each event.
    pub fn new(client: async_nats::Client, subject: SubjectFn) -> Self {
        Self {
            jetstream: jetstream::new(client),
            subject,
        }
    }
}

/// The headers a consumer receives with an event.
pub fn headers_for(event: &OutboxEvent) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in &event.headers {
        headers.insert(name.as_str(), value.as_str());
    }
    let id = event.id.to_string();
    headers.insert(header::NATS_MESSAGE_ID, id.as_str());
    headers.insert("Outbox-Event-Id", id.as_str());
    headers.insert("Outbox-Event-Type", event.event_type.as_str());
    headers.insert("Outbox-Aggregate-Type", event.aggregate_type.as_str());
    headers.insert("Outbox-Aggregate-Id", event.aggregate_id.as_str());
    headers.insert("Outbox-Created-At", event.created_at.to_rfc3339().as_str());
    if let Some(key) = &event.ordering_key {
        headers.insert("Outbox-Ordering-Key", key.as_str());
    }
    headers
}

/// The id of the event a received message carries (its `Outbox-Event-Id` header, or else the
/// `Nats-Msg-Id` the transport sets to the same value), for the consumer's de-duplication (the
/// `outbox-inbox` crate). `None` if the message did not come from this transport.
pub fn event_id(headers: Option<&HeaderMap>) -> Option<outbox_core::EventId> {
    let headers = headers?;
    headers
        .get("Outbox-Event-Id")
        .or_else(|| headers.get(header::NATS_MESSAGE_ID))
        .and_then(|v| v.as_str().parse().ok())
}

fn classify(
    subject: &str,
    kind: PublishErrorKind,
    error: impl std::error::Error + Send + Sync + 'static,
) -> DeliveryError {
    match kind {
        PublishErrorKind::StreamNotFound => {
            DeliveryError::permanent(format!("no JetStream stream stores subject {subject:?}"))
                .with_source(error)
        }
        PublishErrorKind::MaxPayloadExceeded => DeliveryError::permanent(format!(
            "message for {subject:?} exceeds the server's max_payload"
        ))
        .with_source(error),
        _ => DeliveryError::retryable(format!("publishing to {subject:?} failed: {kind}"))
            .with_source(error),
    }
}

#[async_trait]
impl Transport for NatsTransport {
    async fn deliver(&self, event: &OutboxEvent) -> Result<(), DeliveryError> {
        let subject = (self.subject)(event);
        let payload = serde_json::to_vec(&event.payload)
            .map_err(|e| DeliveryError::permanent("payload is not serializable").with_source(e))?;
        let ack = self
            .jetstream
            .publish_with_headers(
                subject.clone(),
                headers_for(event),
                bytes::Bytes::from(payload),
            )
            .await
            .map_err(|e| classify(&subject, e.kind(), e))?;
        ack.await.map_err(|e| classify(&subject, e.kind(), e))?;
        Ok(())
    }
}

/// The NATS client type, re-exported so users need no direct `async-nats` dependency.
pub use async_nats::Client;

/// Connects a NATS client to `url`.
pub async fn connect_client(url: &str) -> Result<Client, async_nats::ConnectError> {
    async_nats::connect(url).await
}

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

#[cfg(test)]
mod event_id_tests {
    use super::{event_id, headers_for};
    use outbox_core::{NewEvent, OutboxEvent};

    fn event() -> OutboxEvent {
        NewEvent::builder("file.stored", "upload", "1")
            .build()
            .unwrap()
            .into_event(outbox_core::EventId::new(), chrono::Utc::now(), 3)
    }

    #[test]
    fn a_received_message_gives_back_its_event_id() {
        let event = event();
        assert_eq!(event_id(Some(&headers_for(&event))), Some(event.id));
        assert_eq!(event_id(None), None);
        let mut foreign = async_nats::HeaderMap::new();
        foreign.insert("Outbox-Event-Id", "not-an-id");
        assert_eq!(event_id(Some(&foreign)), None);
    }
}
