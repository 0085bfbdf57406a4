//! The outbox event: what a caller emits ([`NewEvent`]) and what a store keeps ([`OutboxEvent`]).

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::ValidationError;
use crate::limits::{
    MAX_ATTEMPTS_CEILING, MAX_DEPTH_CEILING, MAX_KEY_CEILING, depth_within, drop_flat, json_has_nul,
};
use crate::status::{Lifecycle, Status};

/// Attempts an event gets when neither the event nor the store says otherwise.
pub const DEFAULT_MAX_ATTEMPTS: u32 = 10;

/// Identifier of an outbox event: a UUID v7, so ids sort by creation time and index well.
///
/// Consumers de-duplicate deliveries by this id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct EventId(Uuid);

impl EventId {
    /// A fresh time-ordered id (UUID v7) for the current system time.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }

    /// A time-ordered id (UUID v7) for the given instant; ids made for later instants sort later.
    pub fn at(time: DateTime<Utc>) -> Self {
        let secs = u64::try_from(time.timestamp()).unwrap_or(0);
        let ts = uuid::Timestamp::from_unix(uuid::NoContext, secs, time.timestamp_subsec_nanos());
        Self(Uuid::new_v7(ts))
    }

    /// Wraps an existing UUID (for example one read back from a database).
    pub const fn from_uuid(uuid: Uuid) -> Self {
        Self(uuid)
    }

    /// The underlying UUID.
    pub const fn as_uuid(&self) -> &Uuid {
        &self.0
    }
}

impl Default for EventId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for EventId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for EventId {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s)
            .map(Self)
            .map_err(|e| ValidationError::new("id", format!("not a UUID: {e}")))
    }
}

impl From<Uuid> for EventId {
    fn from(uuid: Uuid) -> Self {
        Self(uuid)
    }
}

/// An event as a caller emits it, validated on construction.
///
/// Build one with [`NewEvent::builder`]; [`NewEventBuilder::build`] checks every field and names
/// the first bad one in its [`ValidationError`], so nothing invalid reaches a store.
///
/// ```
/// use outbox_core::NewEvent;
///
/// let event = NewEvent::builder("file.stored", "upload", "42")
///     .payload(serde_json::json!({ "path": "/u/42.png", "bytes": 1024 }))
///     .header("traceparent", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01")
///     .idempotency_key("upload-42-stored")
///     .build()?;
/// assert_eq!(event.event_type(), "file.stored");
///
/// let bad = NewEvent::builder("File Stored", "upload", "42").build();
/// assert_eq!(bad.unwrap_err().field(), "event_type");
/// # Ok::<(), outbox_core::ValidationError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewEvent {
    event_type: String,
    aggregate_type: String,
    aggregate_id: String,
    payload: serde_json::Value,
    headers: BTreeMap<String, String>,
    idempotency_key: Option<String>,
    ordering_key: Option<String>,
    deliver_after: Option<DateTime<Utc>>,
    max_attempts: Option<u32>,
}

impl NewEvent {
    /// Starts an event of `event_type` (for example `"file.stored"`) about one aggregate.
    pub fn builder(
        event_type: impl Into<String>,
        aggregate_type: impl Into<String>,
        aggregate_id: impl Into<String>,
    ) -> NewEventBuilder {
        NewEventBuilder {
            event: NewEvent {
                event_type: event_type.into(),
                aggregate_type: aggregate_type.into(),
                aggregate_id: aggregate_id.into(),
                payload: serde_json::Value::Null,
                headers: BTreeMap::new(),
                idempotency_key: None,
                ordering_key: None,
                deliver_after: None,
                max_attempts: None,
            },
        }
    }

    /// The event type, `segment(.segment)*`.
    pub fn event_type(&self) -> &str {
        &self.event_type
    }
    /// The kind of aggregate the event is about (`"upload"`).
    pub fn aggregate_type(&self) -> &str {
        &self.aggregate_type
    }
    /// The aggregate's id, as text (never a foreign key).
    pub fn aggregate_id(&self) -> &str {
        &self.aggregate_id
    }
    /// The JSON payload.
    pub fn payload(&self) -> &serde_json::Value {
        &self.payload
    }
    /// String headers carried to the consumer (trace context, correlation id).
    pub fn headers(&self) -> &BTreeMap<String, String> {
        &self.headers
    }
    /// The idempotency key: emitting the same key twice stores one event.
    pub fn idempotency_key(&self) -> Option<&str> {
        self.idempotency_key.as_deref()
    }
    /// The ordering key: events that share one are delivered one at a time in commit order
    /// (see [`ordering`](crate::ordering)); carried to transports that partition by key.
    pub fn ordering_key(&self) -> Option<&str> {
        self.ordering_key.as_deref()
    }
    /// The earliest time the event may be delivered (delayed delivery).
    pub fn deliver_after(&self) -> Option<DateTime<Utc>> {
        self.deliver_after
    }
    /// Per-event override of the store's maximum attempts.
    pub fn max_attempts(&self) -> Option<u32> {
        self.max_attempts
    }

    /// The payload's size in bytes once serialized as JSON (counted, not allocated).
    ///
    /// ```
    /// let e = outbox_core::NewEvent::builder("a.b", "t", "1").payload(serde_json::json!({"k": "é"})).build()?;
    /// assert_eq!(e.payload_len(), r#"{"k":"é"}"#.len());
    /// # Ok::<(), outbox_core::ValidationError>(())
    /// ```
    pub fn payload_len(&self) -> usize {
        struct Count(usize);
        impl std::io::Write for Count {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0 += buf.len();
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let mut count = Count(0);
        // Writing a Value into a sink that never fails cannot fail.
        let _ = serde_json::to_writer(&mut count, &self.payload);
        count.0
    }

    /// Turns the validated event into a stored, pending [`OutboxEvent`] created at `now`.
    ///
    /// Stores call this so that every backend fills the fields the same way. With the
    /// `trace-context` feature, this is where an event without a `traceparent` header gets the
    /// emitting span's OpenTelemetry context ([`trace_context`](crate::trace_context)).
    #[cfg_attr(not(feature = "trace-context"), allow(unused_mut))]
    pub fn into_event(
        mut self,
        id: EventId,
        now: DateTime<Utc>,
        default_max_attempts: u32,
    ) -> OutboxEvent {
        #[cfg(feature = "trace-context")]
        crate::trace_context::inject_current(&mut self.headers);
        let max_attempts = self.max_attempts.unwrap_or(default_max_attempts).max(1);
        OutboxEvent {
            id,
            event_type: self.event_type,
            aggregate_type: self.aggregate_type,
            aggregate_id: self.aggregate_id,
            payload: self.payload,
            headers: self.headers,
            idempotency_key: self.idempotency_key,
            ordering_key: self.ordering_key,
            lifecycle: Lifecycle::pending(max_attempts, self.deliver_after.unwrap_or(now)),
            created_at: now,
            updated_at: now,
        }
    }
}

/// Builder for [`NewEvent`]; see [`NewEvent::builder`].
#[derive(Clone, Debug)]
#[must_use = "call build() to get the event"]
pub struct NewEventBuilder {
    event: NewEvent,
}

impl NewEventBuilder {
    /// Sets the JSON payload (default `null`).
    pub fn payload(mut self, payload: serde_json::Value) -> Self {
        self.event.payload = payload;
        self
    }

    /// Serializes `value` as the payload.
    pub fn payload_from<T: Serialize>(mut self, value: &T) -> Result<Self, ValidationError> {
        self.event.payload = serde_json::to_value(value).map_err(|e| {
            ValidationError::new("payload", format!("not serializable as JSON: {e}"))
        })?;
        Ok(self)
    }

    /// Adds one header.
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.event.headers.insert(name.into(), value.into());
        self
    }

    /// Sets the idempotency key.
    pub fn idempotency_key(mut self, key: impl Into<String>) -> Self {
        self.event.idempotency_key = Some(key.into());
        self
    }

    /// Sets the ordering key: events that share one are delivered one at a time, in the order
    /// their transactions committed (see [`ordering`](crate::ordering)).
    pub fn ordering_key(mut self, key: impl Into<String>) -> Self {
        self.event.ordering_key = Some(key.into());
        self
    }

    /// Delays delivery until `at`.
    pub fn deliver_after(mut self, at: DateTime<Utc>) -> Self {
        self.event.deliver_after = Some(at);
        self
    }

    /// Overrides the store's maximum attempts for this event (at least 1).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.event.max_attempts = Some(attempts);
        self
    }

    /// Validates every field's form and the [ceilings](crate::limits) no store can raise, and
    /// returns the event, or the first problem found. Each store checks its own
    /// [`EmitLimits`](crate::EmitLimits) again on emit.
    ///
    /// A refused payload is taken apart without recursion, so even one nested far too deep to
    /// drop the ordinary way is refused cleanly.
    pub fn build(self) -> Result<NewEvent, ValidationError> {
        match self.event.validate() {
            Ok(()) => Ok(self.event),
            Err(error) => {
                drop_flat(self.event.payload);
                Err(error)
            }
        }
    }
}

impl NewEvent {
    /// Checks every field's form and the ceilings, naming the first bad one, without recursion.
    /// [`NewEventBuilder::build`] runs this; stores run it again on emit (through
    /// [`EmitLimits::check`](crate::EmitLimits::check)), since an event can also arrive
    /// deserialized.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let e = self;
        validate_event_type(&e.event_type)?;
        validate_key("aggregate_type", &e.aggregate_type)?;
        validate_key("aggregate_id", &e.aggregate_id)?;
        if let Some(key) = &e.idempotency_key {
            validate_key("idempotency_key", key)?;
        }
        if let Some(key) = &e.ordering_key {
            validate_key("ordering_key", key)?;
        }
        for (name, value) in &e.headers {
            if name.is_empty() {
                return Err(ValidationError::new("headers", "header name is empty"));
            }
            if name.contains('\0') || value.contains('\0') {
                return Err(ValidationError::new(
                    "headers",
                    format!("header {name:?} contains a NUL character"),
                ));
            }
        }
        if depth_within(&e.payload, MAX_DEPTH_CEILING) > MAX_DEPTH_CEILING {
            return Err(ValidationError::new(
                "payload",
                format!("nested deeper than {MAX_DEPTH_CEILING} levels"),
            ));
        }
        if json_has_nul(&e.payload) {
            return Err(ValidationError::new("payload", "contains a NUL character"));
        }
        match e.max_attempts {
            Some(0) => Err(ValidationError::new("max_attempts", "must be at least 1")),
            Some(n) if n > MAX_ATTEMPTS_CEILING => Err(ValidationError::new(
                "max_attempts",
                format!("at most {MAX_ATTEMPTS_CEILING}"),
            )),
            _ => Ok(()),
        }
    }
}

/// Checks an event type's form, `segment(.segment)*` of lowercase letters, digits, `_` and `-`,
/// at most [`MAX_KEY_CEILING`] bytes (as [`NewEventBuilder::build`] does).
pub fn validate_event_type(value: &str) -> Result<(), ValidationError> {
    const FIELD: &str = "event_type";
    if value.is_empty() {
        return Err(ValidationError::new(FIELD, "must not be empty"));
    }
    if value.len() > MAX_KEY_CEILING {
        return Err(ValidationError::new(
            FIELD,
            format!("longer than {MAX_KEY_CEILING} bytes"),
        ));
    }
    for segment in value.split('.') {
        if segment.is_empty() {
            return Err(ValidationError::new(
                FIELD,
                format!("{value:?} has an empty segment; expected segment(.segment)*"),
            ));
        }
        if let Some(c) = segment
            .chars()
            .find(|c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_' || *c == '-'))
        {
            return Err(ValidationError::new(
                FIELD,
                format!(
                    "{value:?} contains {c:?}; segments use lowercase letters, digits, '_' and '-'"
                ),
            ));
        }
    }
    Ok(())
}

fn validate_key(field: &'static str, value: &str) -> Result<(), ValidationError> {
    if value.trim().is_empty() {
        return Err(ValidationError::new(field, "must not be empty"));
    }
    if value.len() > MAX_KEY_CEILING {
        return Err(ValidationError::new(
            field,
            format!("longer than {MAX_KEY_CEILING} bytes"),
        ));
    }
    if value.contains('\0') {
        return Err(ValidationError::new(field, "contains a NUL character"));
    }
    Ok(())
}

/// An event as a store keeps it: what was emitted plus its delivery [`Lifecycle`].
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct OutboxEvent {
    /// Time-ordered id; consumers de-duplicate by it.
    pub id: EventId,
    /// The event type, `segment(.segment)*`.
    pub event_type: String,
    /// The kind of aggregate the event is about.
    pub aggregate_type: String,
    /// The aggregate's id as text.
    pub aggregate_id: String,
    /// JSON payload.
    pub payload: serde_json::Value,
    /// String headers (trace context, correlation id).
    pub headers: BTreeMap<String, String>,
    /// Unique idempotency key, if one was given.
    pub idempotency_key: Option<String>,
    /// Ordering key, if one was given: the event is delivered after every earlier-committed
    /// event of the key (see [`ordering`](crate::ordering)).
    pub ordering_key: Option<String>,
    /// Status, attempts, schedule, lease and last error.
    pub lifecycle: Lifecycle,
    /// When the event was emitted.
    pub created_at: DateTime<Utc>,
    /// When the event last changed.
    pub updated_at: DateTime<Utc>,
}

impl OutboxEvent {
    /// The event's current status.
    pub fn status(&self) -> Status {
        self.lifecycle.status
    }

    /// Finished delivery attempts so far.
    pub fn attempts(&self) -> u32 {
        self.lifecycle.attempts
    }
}
