//! Delivers outbox events to Redis Streams with `XADD`.
//!
//! Each event becomes one stream entry (by default on the stream `<prefix>:<event_type>`), with
//! an optional approximate `MAXLEN` to bound the stream. `Ok` means Redis accepted the entry.
//!
//! What the consumer receives, as the entry's fields:
//! `event_id`, `event_type`, `aggregate_type`, `aggregate_id`, `created_at` (RFC 3339),
//! `ordering_key` (when set), `headers` (a JSON object of the event's headers, trace context
//! included) and `payload` (the event's JSON). The entry id is Redis's own (`*`).
//!
//! Redis Streams do not de-duplicate: a redelivered event (after a lost acknowledgement or a
//! crash) appears as a second entry, so consumers de-duplicate by `event_id`.
//!
//! Failures: a key of another type (`WRONGTYPE`) is permanent; connection loss, timeouts and
//! other server errors are retryable. The connection reconnects on its own.
//!
//! ```no_run
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! use outbox_transport_redis::RedisTransport;
//! let transport = RedisTransport::connect("redis://127.0.0.1:6379", "events").await?.with_max_len(100_000);
//! // Worker::builder(store, transport)… appends `file.stored` to the stream `events:file.stored`.
//! # Ok(()) }
//! ```

use std::sync::Arc;

use async_trait::async_trait;
use outbox_core::{DeliveryError, OutboxEvent, Transport};

/// Maps an event to the stream key it is appended to.
pub type StreamFn = Arc<dyn Fn(&OutboxEvent) -> String + Send + Sync>;

/// Appends events to Redis Streams.
#[derive(Clone)]
pub struct RedisTransport {
    connection: ConnectionManager,
    stream: StreamFn,
    max_len: Option<u64>,
}

impl std::fmt::Debug for RedisTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisTransport")
            .field("max_len", &self.max_len)
            .finish_non_exhaustive()
    }
}

impl RedisTransport {
    /// Connects to `url` and appends each event to `<prefix>:<event_type>`.
    pub async fn connect(url: &str, prefix: &str) -> Result<Self, redis::RedisError> {
        let connection = redis::Client::open(url)?.get_connection_manager().await?;
        let prefix = prefix.trim_end_matches(':').to_owned();
        Ok(Self::new(
            connection,
            Arc::new(move |e: &OutboxEvent| format!("{prefix}:{}", e.event_type)),
        ))
    }

    /// Appends through `connection` to the stream `stream` picks for each event.
    pub fn new(connection: ConnectionManager, stream: StreamFn) -> Self {
        Self {
            connection,
            stream,
            max_len: None,
        }
    }

    /// Trims each stream to about `max_len` entries (`MAXLEN ~`) as entries are added.
    pub fn with_max_len(mut self, max_len: u64) -> Self {
        self.max_len = Some(max_len);
        self
    }
}

/// The fields of the stream entry for `event`, in order.
pub fn fields_for(event: &OutboxEvent) -> Result<Vec<(&'static str, String)>, serde_json::Error> {
    let mut fields = vec![
        ("event_id", event.id.to_string()),
        ("event_type", event.event_type.clone()),
        ("aggregate_type", event.aggregate_type.clone()),
        ("aggregate_id", event.aggregate_id.clone()),
        ("created_at", event.created_at.to_rfc3339()),
        ("headers", serde_json::to_string(&event.headers)?),
        ("payload", serde_json::to_string(&event.payload)?),
    ];
    if let Some(key) = &event.ordering_key {
        fields.push(("ordering_key", key.clone()));
    }
    // Trace context also as fields of their own, for consumers that continue the trace.
    for name in ["traceparent", "tracestate"] {
        if let Some(value) = event.headers.get(name) {
            fields.push((name, value.clone()));
        }
    }
    Ok(fields)
}

/// The id of the event a stream entry carries (its `event_id` field), for the consumer's
/// de-duplication (the `outbox-inbox` crate). `None` if the entry did not come from this
/// transport.
pub fn event_id(entry: &redis::streams::StreamId) -> Option<outbox_core::EventId> {
    entry.get::<String>("event_id")?.parse().ok()
}

fn classify(stream: &str, error: redis::RedisError) -> DeliveryError {
    if error.code() == Some("WRONGTYPE") {
        return DeliveryError::permanent(format!(
            "key {stream:?} holds something other than a stream"
        ))
        .with_source(error);
    }
    DeliveryError::retryable(format!("XADD to {stream:?} failed")).with_source(error)
}

#[async_trait]
impl Transport for RedisTransport {
    async fn deliver(&self, event: &OutboxEvent) -> Result<(), DeliveryError> {
        let stream = (self.stream)(event);
        let fields = fields_for(event)
            .map_err(|e| DeliveryError::permanent("event is not serializable").with_source(e))?;
        let mut command = redis::cmd("XADD");
        command.arg(&stream);
        if let Some(max_len) = self.max_len {
            command.arg("MAXLEN").arg("~").arg(max_len);
        }
        command.arg("*");
        for (name, value) in &fields {
            command.arg(*name).arg(value);
        }
        let mut connection = self.connection.clone();
        let _entry: String = command
            .query_async(&mut connection)
            .await
            .map_err(|e| classify(&stream, e))?;
        Ok(())
    }
}

/// The reconnecting connection type, re-exported so users need no direct `redis` dependency.
pub use redis::aio::ConnectionManager;

/// Opens a reconnecting connection to `url`.
pub async fn connect_manager(url: &str) -> Result<ConnectionManager, redis::RedisError> {
    redis::Client::open(url)?.get_connection_manager().await
}

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

#[cfg(test)]
mod event_id_tests {
    use super::{event_id, fields_for};
    use outbox_core::NewEvent;

    #[test]
    fn a_stream_entry_gives_back_its_event_id() {
        let event = NewEvent::builder("file.stored", "upload", "1")
            .build()
            .unwrap()
            .into_event(outbox_core::EventId::new(), chrono::Utc::now(), 3);
        let mut entry = redis::streams::StreamId::default();
        for (name, value) in fields_for(&event).unwrap() {
            entry.map.insert(
                name.to_owned(),
                redis::Value::BulkString(value.into_bytes()),
            );
        }
        assert_eq!(event_id(&entry), Some(event.id));
        assert_eq!(event_id(&redis::streams::StreamId::default()), None);
    }
}
