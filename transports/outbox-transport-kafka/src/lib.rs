//! Delivers outbox events to Kafka through an idempotent producer.
//!
//! Every message is produced with `acks=all` and `enable.idempotence=true`, and the transport
//! awaits the broker's delivery report: `Ok` means every in-sync replica has the record. The
//! producer's retries never reorder or duplicate records within a partition, so the events of
//! one key — handed over one at a time by the worker when they share an ordering key — land on
//! their partition in order. Many deliveries are in flight at once (the worker's concurrency).
//!
//! **Key**: the ordering key, or the aggregate id for events without one ([`KeyFrom`]), so one
//! aggregate stays on one partition. **Topic**: from the event ([`KafkaTransportBuilder::topic`]),
//! `outbox.event.{aggregate_type}` by default.
//!
//! **What the consumer receives** ([`Shape::Native`]): the event's JSON payload as the value,
//! and headers `outbox-event-id`, `outbox-event-type`, `outbox-aggregate-type`,
//! `outbox-aggregate-id`, `outbox-created-at` (RFC 3339), `outbox-ordering-key` (when set),
//! `content-type: application/json`, plus every header of the event under its own name (trace
//! context, correlation id). [`Shape::Debezium`] produces what Debezium's outbox event router
//! produces for the same row instead, so consumers written for it need no change.
//!
//! Delivery is at least once (a delivery report lost with the connection means a retry):
//! consumers de-duplicate by the event id ([`event_id`]).
//!
//! **Failures**: an unreachable broker, a leader election, a timeout or a full producer queue
//! is retryable; an unknown topic (auto-creation off), a record larger than the broker takes, an
//! invalid topic name or a refused authorisation on the topic is permanent, and the error names
//! the topic. A producer that hits a fatal error, a timed-out record or a broker that no longer
//! knows its idempotence state is replaced by a fresh one before the next delivery.
//!
//! ```no_run
//! use outbox_transport_kafka::KafkaTransport;
//! let transport = KafkaTransport::builder("127.0.0.1:9092")
//!     .topic_name("outbox-events")
//!     .build()?;
//! // Worker::builder(store, transport)… produces each event to `outbox-events`, keyed by aggregate.
//! # Ok::<(), outbox_transport_kafka::ConfigError>(())
//! ```

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use outbox_core::{DeliveryError, EventId, OutboxEvent, Transport};
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord, Producer};
use rdkafka::util::Timeout;

/// Maps an event to the topic it is produced to.
pub type TopicFn = Arc<dyn Fn(&OutboxEvent) -> String + Send + Sync>;

/// The topic template used when none is given: Debezium's default route.
pub const DEFAULT_TOPIC: &str = "outbox.event.{aggregate_type}";

/// How long a delivery waits for room in the producer's queue before failing retryably.
const QUEUE_WAIT: Duration = Duration::from_secs(5);

/// The longest topic name Kafka accepts.
pub const MAX_TOPIC_LEN: usize = 249;

/// Which field of the event becomes the message key (and so picks the partition).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum KeyFrom {
    /// The event's ordering key, or its aggregate id when it has none.
    #[default]
    OrderingKey,
    /// The aggregate id, always.
    AggregateId,
}

/// The layout of key, value and headers on the wire.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Shape {
    /// The payload as the value, the key as plain text, `outbox-*` headers.
    #[default]
    Native,
    /// What Debezium's outbox event router produces with its default settings and Kafka
    /// Connect's JSON converters (schemas off): the key is the aggregate id as a JSON string
    /// (`"1"`), the value the payload's JSON text as a JSON string (the payload column is read
    /// as text), and one header `id` carrying the event id. With `expand_payload` (the
    /// router's `table.expand.json.payload = true`) the value is the payload itself.
    Debezium {
        /// The value is the payload itself rather than its text as a JSON string.
        expand_payload: bool,
    },
}

/// A configuration the producer cannot be built from, naming the property.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    /// The property at fault (`acks`, `bootstrap.servers`, a librdkafka property).
    pub property: String,
    /// What is wrong with it.
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.property, self.message)
    }
}

impl std::error::Error for ConfigError {}

/// One message as it goes on the wire, before the topic is chosen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The message key.
    pub key: Vec<u8>,
    /// The message value.
    pub value: Vec<u8>,
    /// Headers in order.
    pub headers: Vec<(String, Vec<u8>)>,
}

/// Builds a [`KafkaTransport`].
pub struct KafkaTransportBuilder {
    brokers: String,
    topic: TopicFn,
    key: Option<KeyFrom>,
    shape: Shape,
    message_timeout: Duration,
    properties: Vec<(String, String)>,
}

impl std::fmt::Debug for KafkaTransportBuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaTransportBuilder")
            .field("brokers", &self.brokers)
            .field("key", &self.key)
            .field("shape", &self.shape)
            .finish_non_exhaustive()
    }
}

/// Properties the transport sets itself; passing them is refused, since each carries part of
/// the delivery guarantee (or, for `bootstrap.servers`, has its own setting).
const OWN_PROPERTIES: &[(&str, &str)] = &[
    ("bootstrap.servers", "set the brokers instead"),
    (
        "acks",
        "always \"all\": a delivery counts only once every in-sync replica has it",
    ),
    (
        "request.required.acks",
        "always \"all\": a delivery counts only once every in-sync replica has it",
    ),
    (
        "enable.idempotence",
        "always on: retries must neither duplicate nor reorder records",
    ),
    (
        "message.timeout.ms",
        "set the message timeout instead (the relay derives it from its delivery timeout)",
    ),
    (
        "delivery.timeout.ms",
        "set the message timeout instead (the relay derives it from its delivery timeout)",
    ),
    (
        "transactional.id",
        "the transport does not use transactions",
    ),
];

impl KafkaTransportBuilder {
    /// Produces every event to the topic `topic`.
    #[must_use]
    pub fn topic_name(self, topic: impl Into<String>) -> Self {
        let topic = topic.into();
        self.topic(Arc::new(move |_: &OutboxEvent| topic.clone()))
    }

    /// Produces each event to the topic `topic` picks for it.
    #[must_use]
    pub fn topic(mut self, topic: TopicFn) -> Self {
        self.topic = topic;
        self
    }

    /// Which field becomes the key: [`KeyFrom::OrderingKey`] by default,
    /// [`KeyFrom::AggregateId`] by default under [`Shape::Debezium`].
    #[must_use]
    pub fn key(mut self, key: KeyFrom) -> Self {
        self.key = Some(key);
        self
    }

    /// The wire layout, [`Shape::Native`] by default.
    #[must_use]
    pub fn shape(mut self, shape: Shape) -> Self {
        self.shape = shape;
        self
    }

    /// How long the producer keeps trying one message (librdkafka's `message.timeout.ms`)
    /// before reporting it failed, retryably; 30 s by default. Keep it below the worker's
    /// delivery timeout, so a message is never still queued when its delivery is given up.
    #[must_use]
    pub fn message_timeout(mut self, timeout: Duration) -> Self {
        self.message_timeout = timeout;
        self
    }

    /// Passes a librdkafka producer property through (`compression.type`, `linger.ms`,
    /// `security.protocol`, `sasl.mechanism`, `ssl.ca.location`, …). The guarantees' own
    /// properties (`acks`, `enable.idempotence`, `message.timeout.ms`, …) are refused.
    #[must_use]
    pub fn property(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.properties.push((name.into(), value.into()));
        self
    }

    /// Builds the producer. Nothing is connected yet; a property librdkafka does not accept is
    /// an error naming it.
    pub fn build(self) -> Result<KafkaTransport, ConfigError> {
        if self.brokers.trim().is_empty() {
            return Err(ConfigError {
                property: "bootstrap.servers".into(),
                message: "no brokers given".into(),
            });
        }
        let timeout_ms = self.message_timeout.as_millis();
        if timeout_ms == 0 || timeout_ms > i32::MAX as u128 {
            return Err(ConfigError {
                property: "message.timeout.ms".into(),
                message: format!(
                    "{:?} is out of range (1 ms to {} ms)",
                    self.message_timeout,
                    i32::MAX
                ),
            });
        }
        let mut config = ClientConfig::new();
        for (name, value) in &self.properties {
            if let Some((_, why)) = OWN_PROPERTIES.iter().find(|(own, _)| own == name) {
                return Err(ConfigError {
                    property: name.clone(),
                    message: format!("cannot be set: {why}"),
                });
            }
            config.set(name, value);
        }
        config
            .set("bootstrap.servers", &self.brokers)
            .set("acks", "all")
            .set("enable.idempotence", "true")
            .set("message.timeout.ms", timeout_ms.to_string());
        let producer = create(&config)?;
        Ok(KafkaTransport {
            inner: Arc::new(Inner {
                config,
                producer: RwLock::new(Current::new(producer)),
                // A fresh producer gets this long to connect, get its id and deliver before a
                // timeout may replace it: replacing it sooner would only start over.
                settle: self.message_timeout.saturating_mul(2),
                topic: self.topic,
                key: self.key.unwrap_or(match self.shape {
                    Shape::Native => KeyFrom::OrderingKey,
                    Shape::Debezium { .. } => KeyFrom::AggregateId,
                }),
                shape: self.shape,
            }),
        })
    }
}

fn create(config: &ClientConfig) -> Result<FutureProducer, ConfigError> {
    config.create().map_err(|e| match e {
        KafkaError::ClientConfig(_, description, property, _) => ConfigError {
            property,
            message: description,
        },
        other => ConfigError {
            property: "producer".into(),
            message: other.to_string(),
        },
    })
}

/// The producer in use, and when it was made.
struct Current {
    producer: Arc<FutureProducer>,
    made: Instant,
}

impl Current {
    fn new(producer: FutureProducer) -> Self {
        Self {
            producer: Arc::new(producer),
            made: Instant::now(),
        }
    }
}

/// Produces events to Kafka, one message per event, waiting for each delivery report.
#[derive(Clone)]
pub struct KafkaTransport {
    inner: Arc<Inner>,
}

struct Inner {
    config: ClientConfig,
    /// Replaced when stuck; readers clone the `Arc` and never hold the lock across an await.
    producer: RwLock<Current>,
    /// How old a producer must be before a timed-out record replaces it.
    settle: Duration,
    topic: TopicFn,
    key: KeyFrom,
    shape: Shape,
}

impl std::fmt::Debug for KafkaTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KafkaTransport")
            .field("brokers", &self.inner.config.get("bootstrap.servers"))
            .field("key", &self.inner.key)
            .field("shape", &self.inner.shape)
            .finish_non_exhaustive()
    }
}

impl KafkaTransport {
    /// A builder producing to `brokers` (`host:port[,host:port…]`), to the topic
    /// [`DEFAULT_TOPIC`] names until [`topic`](KafkaTransportBuilder::topic) is set.
    pub fn builder(brokers: impl Into<String>) -> KafkaTransportBuilder {
        KafkaTransportBuilder {
            brokers: brokers.into(),
            topic: Arc::new(|e: &OutboxEvent| format!("outbox.event.{}", e.aggregate_type)),
            key: None,
            shape: Shape::default(),
            message_timeout: Duration::from_secs(30),
            properties: Vec::new(),
        }
    }

    /// The topic `event` is produced to.
    pub fn topic_for(&self, event: &OutboxEvent) -> String {
        (self.inner.topic)(event)
    }

    /// The key, value and headers produced for `event`.
    pub fn record(&self, event: &OutboxEvent) -> Result<Record, DeliveryError> {
        record(event, self.inner.key, self.inner.shape)
    }

    fn producer(&self) -> Arc<FutureProducer> {
        match self.inner.producer.read() {
            Ok(current) => Arc::clone(&current.producer),
            Err(poisoned) => Arc::clone(&poisoned.into_inner().producer),
        }
    }

    /// Replaces `broken` with a fresh producer, unless another delivery already did or —
    /// without `now` — `broken` is younger than the settling time.
    fn replace(&self, broken: &Arc<FutureProducer>, now: bool) -> Result<(), ConfigError> {
        {
            let current = match self.inner.producer.read() {
                Ok(current) => current,
                Err(poisoned) => poisoned.into_inner(),
            };
            if !Arc::ptr_eq(&current.producer, broken)
                || (!now && current.made.elapsed() < self.inner.settle)
            {
                return Ok(());
            }
        }
        let fresh = Current::new(create(&self.inner.config)?);
        let mut slot = match self.inner.producer.write() {
            Ok(slot) => slot,
            Err(poisoned) => poisoned.into_inner(),
        };
        if Arc::ptr_eq(&slot.producer, broken) {
            let old = std::mem::replace(&mut *slot, fresh);
            drop(slot);
            // Dropping a producer purges what it still holds and waits up to 500 ms for the
            // purge to be reported: not on an async worker thread.
            tokio::task::spawn_blocking(move || drop(old));
        }
        Ok(())
    }
}

fn key_of(event: &OutboxEvent, key: KeyFrom) -> &str {
    match key {
        KeyFrom::OrderingKey => event.ordering_key.as_deref().unwrap_or(&event.aggregate_id),
        KeyFrom::AggregateId => &event.aggregate_id,
    }
}

fn json<T: serde::Serialize + ?Sized>(value: &T) -> Result<Vec<u8>, DeliveryError> {
    serde_json::to_vec(value)
        .map_err(|e| DeliveryError::permanent("payload is not serializable").with_source(e))
}

/// The key, value and headers for `event` in `shape`, keyed by `key`.
pub fn record(event: &OutboxEvent, key: KeyFrom, shape: Shape) -> Result<Record, DeliveryError> {
    let key = key_of(event, key);
    match shape {
        Shape::Native => {
            let own = [
                ("outbox-event-id", event.id.to_string()),
                ("outbox-event-type", event.event_type.clone()),
                ("outbox-aggregate-type", event.aggregate_type.clone()),
                ("outbox-aggregate-id", event.aggregate_id.clone()),
                ("outbox-created-at", event.created_at.to_rfc3339()),
                ("content-type", "application/json".to_owned()),
            ];
            let mut headers: Vec<(String, Vec<u8>)> = own
                .into_iter()
                .map(|(name, value)| (name.to_owned(), value.into_bytes()))
                .collect();
            if let Some(ordering) = &event.ordering_key {
                headers.push(("outbox-ordering-key".into(), ordering.clone().into_bytes()));
            }
            push_event_headers(&mut headers, event);
            Ok(Record {
                key: key.as_bytes().to_vec(),
                value: json(&event.payload)?,
                headers,
            })
        }
        Shape::Debezium { expand_payload } => {
            let value = if expand_payload {
                json(&event.payload)?
            } else {
                json(&String::from_utf8(json(&event.payload)?).map_err(|e| {
                    DeliveryError::permanent("payload is not UTF-8").with_source(e)
                })?)?
            };
            let mut headers = vec![("id".to_owned(), event.id.to_string().into_bytes())];
            push_event_headers(&mut headers, event);
            Ok(Record {
                key: json(key)?,
                value,
                headers,
            })
        }
    }
}

/// The event's own headers (trace context, correlation id), except any that would shadow one
/// the shape already set.
fn push_event_headers(headers: &mut Vec<(String, Vec<u8>)>, event: &OutboxEvent) {
    for (name, value) in &event.headers {
        if !headers.iter().any(|(own, _)| own == name) {
            headers.push((name.clone(), value.clone().into_bytes()));
        }
    }
}

/// Why `topic` is not a name Kafka accepts, if it is not.
pub fn invalid_topic(topic: &str) -> Option<String> {
    if topic.is_empty() {
        return Some("it is empty".into());
    }
    if topic == "." || topic == ".." {
        return Some("\".\" and \"..\" are reserved".into());
    }
    if topic.len() > MAX_TOPIC_LEN {
        return Some(format!(
            "it is {} bytes long, at most {MAX_TOPIC_LEN}",
            topic.len()
        ));
    }
    topic
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
        .map(|c| format!("{c:?} is not allowed (only ASCII letters, digits, '.', '_' and '-')"))
}

/// The id of the event a received message carries (its `outbox-event-id` header, or `id` in the
/// Debezium shape), for the consumer's de-duplication. `None` if the message did not come from
/// this transport.
pub fn event_id<H: Headers>(headers: &H) -> Option<EventId> {
    let value = |name: &str| {
        headers
            .iter()
            .find(|h| h.key == name)
            .and_then(|h| h.value)
            .and_then(|v| std::str::from_utf8(v).ok())
            .and_then(|s| s.parse().ok())
    };
    value("outbox-event-id").or_else(|| value("id"))
}

/// Whether the producer that reported `error` should be replaced by a fresh one (new producer
/// id, epoch 0, sequences from 0) before the next delivery.
///
/// After a record times out, librdkafka's idempotent producer cannot know whether the broker
/// wrote it, so it bumps its epoch on its own (KIP-360) and carries on. A broker that does not
/// follow — seen with tansu 0.6 after a restart: every later record answered with an unknown
/// error or timing out, while a new producer was accepted at once — leaves that producer stuck
/// for good. The same holds when the broker no longer knows the producer's id, epoch or
/// sequence numbers. A fresh producer costs one `InitProducerId` request and changes no
/// guarantee: the timed-out record is produced again either way (at least once). A producer
/// younger than twice the message timeout is left to settle (a slow start is not a stuck
/// producer, and replacing it would only start over).
fn needs_fresh_producer(error: &KafkaError) -> bool {
    use RDKafkaErrorCode as C;
    matches!(
        error.rdkafka_error_code(),
        Some(
            C::MessageTimedOut
                | C::Unknown
                | C::OutOfOrderSequenceNumber
                | C::UnknownProducerId
                | C::InvalidProducerEpoch
                | C::InvalidProducerIdMapping
                | C::ProducerFenced
                | C::Fatal
        )
    )
}

/// The delivery error for a failed produce to `topic`: permanent when no retry can succeed,
/// retryable otherwise (unknown codes included, so nothing dies of a surprise).
fn classify(topic: &str, error: &KafkaError) -> DeliveryError {
    use RDKafkaErrorCode as C;
    let permanent = |why: &str| {
        DeliveryError::permanent(format!("topic {topic:?}: {why} ({error})"))
            .with_source(error.clone())
    };
    match error.rdkafka_error_code() {
        Some(C::UnknownTopic | C::UnknownTopicOrPartition | C::UnknownPartition) => {
            permanent("the topic does not exist and the broker does not create it")
        }
        Some(C::MessageSizeTooLarge | C::InvalidMessageSize | C::MessageBatchTooLarge) => {
            permanent("the record is larger than the broker or producer accepts")
        }
        Some(C::InvalidTopic) => permanent("the broker refuses the topic name"),
        Some(C::TopicAuthorizationFailed) => permanent("not authorised to write to the topic"),
        Some(C::InvalidRecord | C::PolicyViolation) => permanent("the broker refuses the record"),
        _ => DeliveryError::retryable(format!("producing to topic {topic:?} failed: {error}"))
            .with_source(error.clone()),
    }
}

#[async_trait]
impl Transport for KafkaTransport {
    async fn deliver(&self, event: &OutboxEvent) -> Result<(), DeliveryError> {
        let topic = self.topic_for(event);
        if let Some(why) = invalid_topic(&topic) {
            return Err(DeliveryError::permanent(format!(
                "invalid topic name {topic:?}: {why}"
            )));
        }
        let record = self.record(event)?;
        let headers = record.headers.iter().fold(
            OwnedHeaders::new_with_capacity(record.headers.len()),
            |h, (name, value)| {
                h.insert(Header {
                    key: name,
                    value: Some(value),
                })
            },
        );
        let message = FutureRecord::to(&topic)
            .key(&record.key)
            .payload(&record.value)
            .headers(headers);
        let producer = self.producer();
        let sent = producer.send(message, Timeout::After(QUEUE_WAIT)).await;
        let result = self.outcome(&topic, &producer, sent.map(drop).map_err(|(e, _)| e));
        self.release(producer);
        result
    }
}

impl KafkaTransport {
    /// What a produce's result means for the event, replacing `producer` when it is stuck.
    fn outcome(
        &self,
        topic: &str,
        producer: &Arc<FutureProducer>,
        sent: Result<(), KafkaError>,
    ) -> Result<(), DeliveryError> {
        match sent {
            Ok(()) => Ok(()),
            Err(error) => {
                if needs_fresh_producer(&error) {
                    // A fresh producer (new id, epoch and sequences) is what recovers from these.
                    let mut failure = classify(topic, &error);
                    if let Err(e) = self.replace(producer, false) {
                        failure = DeliveryError::retryable(format!(
                            "{failure}; a new producer could not be built: {e}"
                        ))
                        .with_source(error);
                    }
                    return Err(failure);
                }
                if let Some((code, reason)) = producer.client().fatal_error() {
                    let replaced = self.replace(producer, true);
                    let mut failure = DeliveryError::retryable(format!(
                        "the producer failed fatally ({code:?}: {reason}); replaced{}",
                        replaced
                            .err()
                            .map(|e| format!(" — but a new one could not be built: {e}"))
                            .unwrap_or_default()
                    ));
                    failure = failure.with_source(error);
                    return Err(failure);
                }
                Err(classify(topic, &error))
            }
        }
    }

    /// Lets go of a delivery's handle on `producer`. The last handle on a replaced producer is
    /// dropped on a blocking thread: dropping purges what it still holds and waits up to
    /// 500 ms for that to be reported.
    fn release(&self, producer: Arc<FutureProducer>) {
        if !Arc::ptr_eq(&producer, &self.producer()) {
            tokio::task::spawn_blocking(move || drop(producer));
        }
    }
}

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use outbox_core::NewEvent;
    use serde_json::json;

    fn event(ordering: Option<&str>) -> OutboxEvent {
        let mut b = NewEvent::builder("order.paid", "order", "o-7")
            .payload(json!({ "total": 12, "items": ["a", "b"] }))
            .header(
                "traceparent",
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
            );
        if let Some(k) = ordering {
            b = b.ordering_key(k);
        }
        b.build()
            .unwrap()
            .into_event(EventId::new(), chrono::Utc::now(), 3)
    }

    fn header<'a>(r: &'a Record, name: &str) -> Option<&'a str> {
        r.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| std::str::from_utf8(v).unwrap())
    }

    #[test]
    fn the_native_shape_keys_by_ordering_key_then_aggregate() {
        let e = event(Some("customer-1"));
        let r = record(&e, KeyFrom::OrderingKey, Shape::Native).unwrap();
        assert_eq!(r.key, b"customer-1");
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&r.value).unwrap(),
            e.payload
        );
        assert_eq!(
            header(&r, "outbox-event-id"),
            Some(e.id.to_string().as_str())
        );
        assert_eq!(header(&r, "outbox-event-type"), Some("order.paid"));
        assert_eq!(header(&r, "outbox-aggregate-id"), Some("o-7"));
        assert_eq!(header(&r, "outbox-ordering-key"), Some("customer-1"));
        assert_eq!(
            header(&r, "traceparent"),
            e.headers.get("traceparent").map(String::as_str)
        );
        let by_aggregate = record(&e, KeyFrom::AggregateId, Shape::Native).unwrap();
        assert_eq!(by_aggregate.key, b"o-7");
        let unordered = record(&event(None), KeyFrom::OrderingKey, Shape::Native).unwrap();
        assert_eq!(unordered.key, b"o-7");
        assert_eq!(header(&unordered, "outbox-ordering-key"), None);
    }

    /// Debezium's documented example: key `"1"`, header `id=<uuid>`, the payload's JSON text as
    /// a JSON string value; expanded, the payload itself.
    #[test]
    fn the_debezium_shape_matches_the_event_router() {
        let e = event(None);
        let r = record(
            &e,
            KeyFrom::AggregateId,
            Shape::Debezium {
                expand_payload: false,
            },
        )
        .unwrap();
        assert_eq!(r.key, br#""o-7""#);
        assert_eq!(
            r.headers[0],
            ("id".to_owned(), e.id.to_string().into_bytes())
        );
        let text: String = serde_json::from_slice(&r.value).unwrap();
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&text).unwrap(),
            e.payload
        );
        assert!(
            r.value.starts_with(b"\"{"),
            "{:?}",
            String::from_utf8_lossy(&r.value)
        );
        let expanded = record(
            &e,
            KeyFrom::AggregateId,
            Shape::Debezium {
                expand_payload: true,
            },
        )
        .unwrap();
        assert_eq!(
            serde_json::from_slice::<serde_json::Value>(&expanded.value).unwrap(),
            e.payload
        );
        assert_eq!(header(&expanded, "traceparent").map(str::len), Some(55));
    }

    #[test]
    fn the_debezium_shape_keys_by_aggregate_unless_told_otherwise() {
        let e = event(Some("customer-1"));
        let t = KafkaTransport::builder("127.0.0.1:1")
            .shape(Shape::Debezium {
                expand_payload: false,
            })
            .build()
            .unwrap();
        assert_eq!(t.record(&e).unwrap().key, br#""o-7""#);
        assert_eq!(t.topic_for(&e), "outbox.event.order");
        let t = KafkaTransport::builder("127.0.0.1:1").build().unwrap();
        assert_eq!(t.record(&e).unwrap().key, b"customer-1");
    }

    #[test]
    fn topic_names_are_checked_as_kafka_does() {
        assert_eq!(invalid_topic("outbox.event.order_v2-x"), None);
        assert!(invalid_topic("").is_some());
        assert!(invalid_topic("..").is_some());
        assert!(invalid_topic("a b").unwrap().contains("' '"));
        assert!(invalid_topic("a/b").is_some());
        assert!(invalid_topic("é").is_some());
        assert!(invalid_topic(&"x".repeat(MAX_TOPIC_LEN)).is_none());
        assert!(invalid_topic(&"x".repeat(MAX_TOPIC_LEN + 1)).is_some());
    }

    #[test]
    fn the_guarantees_cannot_be_configured_away() {
        for (name, value) in [
            ("acks", "1"),
            ("enable.idempotence", "false"),
            ("bootstrap.servers", "x:1"),
            ("message.timeout.ms", "5"),
        ] {
            let e = KafkaTransport::builder("127.0.0.1:1")
                .property(name, value)
                .build()
                .unwrap_err();
            assert_eq!(e.property, name);
        }
        let e = KafkaTransport::builder("127.0.0.1:1")
            .property("no.such.property", "1")
            .build()
            .unwrap_err();
        assert_eq!(e.property, "no.such.property", "{e}");
        assert!(KafkaTransport::builder(" ").build().is_err());
        assert!(
            KafkaTransport::builder("127.0.0.1:1")
                .message_timeout(Duration::ZERO)
                .build()
                .is_err()
        );
        KafkaTransport::builder("127.0.0.1:1")
            .property("compression.type", "lz4")
            .property("linger.ms", "2")
            .build()
            .unwrap();
    }

    #[test]
    fn errors_name_the_topic_and_say_whether_a_retry_helps() {
        let permanent = [
            RDKafkaErrorCode::UnknownTopicOrPartition,
            RDKafkaErrorCode::UnknownTopic,
            RDKafkaErrorCode::MessageSizeTooLarge,
            RDKafkaErrorCode::InvalidTopic,
        ];
        for code in permanent {
            let e = classify("orders", &KafkaError::MessageProduction(code));
            assert!(!e.is_retryable(), "{code:?}");
            assert!(e.to_string().contains("\"orders\""), "{e}");
        }
        let retryable = [
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::BrokerTransportFailure,
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::QueueFull,
            RDKafkaErrorCode::LeaderNotAvailable,
            RDKafkaErrorCode::NotLeaderForPartition,
            RDKafkaErrorCode::RequestTimedOut,
            RDKafkaErrorCode::NotEnoughReplicas,
        ];
        for code in retryable {
            let e = classify("orders", &KafkaError::MessageProduction(code));
            assert!(e.is_retryable(), "{code:?}");
            assert!(e.to_string().contains("\"orders\""), "{e}");
        }
    }

    /// A timed-out record or lost idempotence state gets a fresh producer; an outage alone
    /// (the producer reconnects by itself) does not.
    #[test]
    fn a_stuck_producer_is_replaced_and_a_disconnected_one_is_not() {
        for code in [
            RDKafkaErrorCode::MessageTimedOut,
            RDKafkaErrorCode::Unknown,
            RDKafkaErrorCode::OutOfOrderSequenceNumber,
            RDKafkaErrorCode::UnknownProducerId,
            RDKafkaErrorCode::InvalidProducerEpoch,
        ] {
            assert!(
                needs_fresh_producer(&KafkaError::MessageProduction(code)),
                "{code:?}"
            );
        }
        for code in [
            RDKafkaErrorCode::AllBrokersDown,
            RDKafkaErrorCode::QueueFull,
            RDKafkaErrorCode::UnknownTopicOrPartition,
            RDKafkaErrorCode::NotLeaderForPartition,
        ] {
            assert!(
                !needs_fresh_producer(&KafkaError::MessageProduction(code)),
                "{code:?}"
            );
        }
    }

    #[test]
    fn a_received_message_gives_back_its_event_id() {
        let e = event(None);
        for shape in [
            Shape::Native,
            Shape::Debezium {
                expand_payload: false,
            },
        ] {
            let r = record(&e, KeyFrom::AggregateId, shape).unwrap();
            let headers = r.headers.iter().fold(OwnedHeaders::new(), |h, (n, v)| {
                h.insert(Header {
                    key: n,
                    value: Some(v),
                })
            });
            assert_eq!(event_id(&headers), Some(e.id));
        }
        assert_eq!(event_id(&OwnedHeaders::new()), None);
    }
}
