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
//! retryable. JetStream answers "no responders" both when no stream stores the subject and
//! while it is not ready (a server restarting, a stream recovering), so on that answer the
//! transport asks JetStream which stream stores the subject: permanent only if JetStream says
//! none does, retryable otherwise.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use outbox_transport_nats::NatsTransport;
//! let transport = NatsTransport::connect("nats://127.0.0.1:4222", "events").await?;
//! // Worker::builder(store, transport)… delivers `file.stored` to subject `events.file.stored`.
//! # Ok(()) }
//! ```

use std::sync::Arc;

use async_nats::jetstream::{
    self,
    context::{GetStreamByNameErrorKind, PublishErrorKind},
};
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
        let published = self
            .jetstream
            .publish_with_headers(
                subject.clone(),
                headers_for(event),
                bytes::Bytes::from(payload),
            )
            .await;
        let stored = match published {
            Ok(ack) => ack.await.map(drop),
            Err(e) => Err(e),
        };
        match stored {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == PublishErrorKind::StreamNotFound => {
                let lookup = match self.jetstream.stream_by_subject(subject.as_str()).await {
                    Ok(_) => StreamLookup::Found,
                    Err(l) if l.kind() == GetStreamByNameErrorKind::NotFound => {
                        StreamLookup::Missing
                    }
                    Err(l) => StreamLookup::NoAnswer(l.to_string()),
                };
                Err(no_responders(&subject, lookup).with_source(e))
            }
            Err(e) => Err(classify(&subject, e.kind(), e)),
        }
    }
}

/// What JetStream said when asked which stream stores a subject it had no responder for.
#[derive(Debug)]
enum StreamLookup {
    /// A stream stores it: the missing responder was transient.
    Found,
    /// No stream stores it.
    Missing,
    /// JetStream did not answer (not ready), with why.
    NoAnswer(String),
}

/// A publish that JetStream had no responder for: permanent only when JetStream confirms that
/// no stream stores the subject.
fn no_responders(subject: &str, lookup: StreamLookup) -> DeliveryError {
    match lookup {
        StreamLookup::Missing => {
            DeliveryError::permanent(format!("no JetStream stream stores subject {subject:?}"))
        }
        StreamLookup::Found => DeliveryError::retryable(format!(
            "JetStream had no responder for subject {subject:?}, though a stream stores it (recovering?)"
        )),
        StreamLookup::NoAnswer(why) => DeliveryError::retryable(format!(
            "JetStream had no responder for subject {subject:?} and did not say which stream stores it: {why}"
        )),
    }
}

#[cfg(test)]
mod no_responder_tests {
    use super::{StreamLookup, no_responders};

    /// A broker restarting answers "no responders" for a subject its stream stores: that must
    /// not kill the event (it did, as a permanent error, in a chaos run's broker outage).
    #[test]
    fn only_a_confirmed_missing_stream_is_permanent() {
        let missing = no_responders("chaos.x", StreamLookup::Missing);
        assert!(!missing.is_retryable(), "{missing}");
        assert!(missing.to_string().contains("chaos.x"));
        assert!(no_responders("chaos.x", StreamLookup::Found).is_retryable());
        let silent = no_responders("chaos.x", StreamLookup::NoAnswer("timed out".into()));
        assert!(
            silent.is_retryable() && silent.to_string().contains("timed out"),
            "{silent}"
        );
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
