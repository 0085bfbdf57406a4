//! The emit policy: what an event may carry, checked the same way by every store.
//!
//! Two layers, both here and nowhere else:
//! - **Ceilings** no configuration can raise, because something downstream would break past
//!   them: JSON nesting deeper than [`MAX_DEPTH_CEILING`] could not be read back (decoders stop
//!   at 128 levels), more attempts than [`MAX_ATTEMPTS_CEILING`] do not fit a database integer
//!   once revived a few times. [`NewEventBuilder::build`](crate::NewEventBuilder::build) checks
//!   them.
//! - **Limits** ([`EmitLimits`]), with defaults, configurable per store within the ceilings.
//!   Every store calls [`EmitLimits::check`] on every emit, so the memory store refuses exactly
//!   what PostgreSQL refuses.
//!
//! Every check walks the payload without recursion, so even a payload nested a million levels
//! deep is refused with a [`ValidationError`] instead of overflowing the stack.

use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};

use crate::error::ValidationError;
use crate::event::NewEvent;

/// Deepest JSON nesting any store accepts (arrays and objects inside each other). Decoders such
/// as serde_json refuse 128 levels; staying well under keeps every stored payload readable.
pub const MAX_DEPTH_CEILING: usize = 100;

/// Most attempts an event may ever be given, including those an operator adds on revive.
pub const MAX_ATTEMPTS_CEILING: u32 = 1_000_000;

/// Longest key (event type, aggregate type and id, idempotency and ordering key) any store
/// accepts: long enough for any sensible key, short enough for a unique index entry.
pub const MAX_KEY_CEILING: usize = 1024;

/// What an emitted event may carry. Defaults suit most applications; every store takes one
/// (`MemoryStore::builder().limits(…)`, `PgConfig::with_limits(…)`) and enforces it through
/// [`check`](Self::check).
///
/// ```
/// use outbox_core::{EmitLimits, NewEvent};
///
/// let limits = EmitLimits { max_payload_bytes: 16, ..EmitLimits::default() };
/// let big = NewEvent::builder("a.b", "t", "1").payload(serde_json::json!({"text": "x".repeat(20)})).build()?;
/// let err = limits.check(&big, chrono::Utc::now()).unwrap_err();
/// assert_eq!(err.field(), "payload");
/// # Ok::<(), outbox_core::ValidationError>(())
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EmitLimits {
    /// Largest payload, in bytes of serialized JSON (default 1 MiB).
    pub max_payload_bytes: usize,
    /// Deepest nesting of arrays and objects in the payload (default 64, at most
    /// [`MAX_DEPTH_CEILING`]).
    pub max_depth: usize,
    /// Most headers on one event (default 64).
    pub max_headers: usize,
    /// Most bytes of header names and values together (default 16 KiB).
    pub max_header_bytes: usize,
    /// Longest key, in bytes (default 255, at most [`MAX_KEY_CEILING`]).
    pub max_key_bytes: usize,
    /// Most attempts an event may ask for (default 10,000, at most [`MAX_ATTEMPTS_CEILING`]).
    pub max_attempts: u32,
    /// How far `deliver_after` may lie from the time of emit, either way (default 366 days).
    pub max_delay: Duration,
}

impl Default for EmitLimits {
    fn default() -> Self {
        Self {
            max_payload_bytes: 1024 * 1024,
            max_depth: 64,
            max_headers: 64,
            max_header_bytes: 16 * 1024,
            max_key_bytes: 255,
            max_attempts: 10_000,
            max_delay: Duration::from_secs(366 * 24 * 3600),
        }
    }
}

impl EmitLimits {
    /// Checks the limits themselves: each within its ceiling and above zero. Stores call this
    /// when they are configured.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let positive = [
            ("max_payload_bytes", self.max_payload_bytes),
            ("max_depth", self.max_depth),
            ("max_key_bytes", self.max_key_bytes),
            ("max_attempts", self.max_attempts as usize),
        ];
        for (field, value) in positive {
            if value == 0 {
                return Err(ValidationError::new(field, "must be at least 1"));
            }
        }
        if self.max_depth > MAX_DEPTH_CEILING {
            return Err(ValidationError::new(
                "max_depth",
                format!("at most {MAX_DEPTH_CEILING}: deeper payloads cannot be read back"),
            ));
        }
        if self.max_key_bytes > MAX_KEY_CEILING {
            return Err(ValidationError::new(
                "max_key_bytes",
                format!("at most {MAX_KEY_CEILING}"),
            ));
        }
        if self.max_attempts > MAX_ATTEMPTS_CEILING {
            return Err(ValidationError::new(
                "max_attempts",
                format!("at most {MAX_ATTEMPTS_CEILING}"),
            ));
        }
        if TimeDelta::from_std(self.max_delay)
            .ok()
            .filter(|d| *d <= TimeDelta::days(100 * 366))
            .is_none()
        {
            return Err(ValidationError::new("max_delay", "at most 100 years"));
        }
        Ok(())
    }

    /// Checks `event` against these limits at `now` (the time of emit, for `deliver_after`).
    /// Every store calls this before writing anything; the error names the field at fault.
    pub fn check(&self, event: &NewEvent, now: DateTime<Utc>) -> Result<(), ValidationError> {
        event.validate()?;
        for (field, key) in [
            ("event_type", Some(event.event_type())),
            ("aggregate_type", Some(event.aggregate_type())),
            ("aggregate_id", Some(event.aggregate_id())),
            ("idempotency_key", event.idempotency_key()),
            ("ordering_key", event.ordering_key()),
        ] {
            if let Some(key) = key.filter(|k| k.len() > self.max_key_bytes) {
                return Err(ValidationError::new(
                    field,
                    format!(
                        "{} bytes is over the limit of {} bytes",
                        key.len(),
                        self.max_key_bytes
                    ),
                ));
            }
        }
        let headers = event.headers();
        if headers.len() > self.max_headers {
            return Err(ValidationError::new(
                "headers",
                format!(
                    "{} headers is over the limit of {}",
                    headers.len(),
                    self.max_headers
                ),
            ));
        }
        let header_bytes: usize = headers.iter().map(|(k, v)| k.len() + v.len()).sum();
        if header_bytes > self.max_header_bytes {
            return Err(ValidationError::new(
                "headers",
                format!(
                    "{header_bytes} bytes is over the limit of {} bytes",
                    self.max_header_bytes
                ),
            ));
        }
        let depth = depth_within(event.payload(), self.max_depth);
        if depth > self.max_depth {
            return Err(ValidationError::new(
                "payload",
                format!("nested deeper than the limit of {} levels", self.max_depth),
            ));
        }
        let size = event.payload_len();
        if size > self.max_payload_bytes {
            return Err(ValidationError::new(
                "payload",
                format!(
                    "{size} bytes is over the limit of {} bytes",
                    self.max_payload_bytes
                ),
            ));
        }
        if let Some(attempts) = event.max_attempts()
            && attempts > self.max_attempts
        {
            return Err(ValidationError::new(
                "max_attempts",
                format!("{attempts} is over the limit of {}", self.max_attempts),
            ));
        }
        if let Some(at) = event.deliver_after() {
            let window = TimeDelta::from_std(self.max_delay).unwrap_or(TimeDelta::MAX);
            let distance = at.signed_duration_since(now).abs();
            if distance > window {
                return Err(ValidationError::new(
                    "deliver_after",
                    format!(
                        "{at} is more than {} days from now",
                        self.max_delay.as_secs() / 86_400
                    ),
                ));
            }
        }
        Ok(())
    }
}

/// The nesting depth of `value` (a scalar is 0, `[1]` is 1), counted without recursion and
/// without looking further once `stop_after` is passed (the answer is then `stop_after + 1`).
pub fn depth_within(value: &serde_json::Value, stop_after: usize) -> usize {
    let mut deepest = 0;
    let mut stack: Vec<(&serde_json::Value, usize)> = vec![(value, 0)];
    while let Some((v, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &serde_json::Value>> = match v {
            serde_json::Value::Array(items) => Box::new(items.iter()),
            serde_json::Value::Object(map) => Box::new(map.values()),
            _ => continue,
        };
        let depth = depth + 1;
        deepest = deepest.max(depth);
        if deepest > stop_after {
            return deepest;
        }
        stack.extend(children.map(|c| (c, depth)));
    }
    deepest
}

/// Whether any string or object key in `value` contains a NUL character (which PostgreSQL's
/// `jsonb` cannot store), checked without recursion.
pub fn json_has_nul(value: &serde_json::Value) -> bool {
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        match v {
            serde_json::Value::String(s) if s.contains('\0') => return true,
            serde_json::Value::Array(items) => stack.extend(items.iter()),
            serde_json::Value::Object(map) => {
                if map.keys().any(|k| k.contains('\0')) {
                    return true;
                }
                stack.extend(map.values());
            }
            _ => {}
        }
    }
    false
}

/// Drops `value` without recursion. serde_json drops nested values recursively, so dropping a
/// payload nested hundreds of thousands of levels deep would overflow the stack; refused
/// payloads are taken apart with this instead.
pub fn drop_flat(value: serde_json::Value) {
    let mut stack = vec![value];
    while let Some(v) = stack.pop() {
        match v {
            serde_json::Value::Array(items) => stack.extend(items),
            serde_json::Value::Object(map) => stack.extend(map.into_iter().map(|(_, v)| v)),
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn nested(levels: usize) -> Value {
        let mut v = json!(1);
        for _ in 0..levels {
            v = Value::Array(vec![v]);
        }
        v
    }

    #[test]
    fn depth_is_counted_without_recursion() {
        assert_eq!(depth_within(&json!(1), 10), 0);
        assert_eq!(depth_within(&json!({"a": [1, {"b": []}]}), 10), 4);
        let deep = nested(1_000_000);
        assert_eq!(depth_within(&deep, 64), 65);
        assert!(!json_has_nul(&deep));
        drop_flat(deep);
    }

    /// A payload a million levels deep is refused by the builder with an error naming it, and
    /// taken apart without overflowing the stack (validating or dropping it used to abort).
    #[test]
    fn a_very_deep_payload_is_refused_cleanly() {
        let built = crate::NewEvent::builder("a.b", "t", "1")
            .payload(nested(1_000_000))
            .build();
        assert_eq!(built.map(|_| ()).unwrap_err().field(), "payload");
        let at_ceiling = crate::NewEvent::builder("a.b", "t", "1")
            .payload(nested(MAX_DEPTH_CEILING))
            .build();
        assert!(at_ceiling.is_ok());
    }

    #[test]
    fn nul_is_found_in_keys_and_strings() {
        assert!(json_has_nul(&json!({"a": ["x\u{0}"]})));
        assert!(json_has_nul(&json!({"a\u{0}": 1})));
        assert!(!json_has_nul(&json!({"a": ["x"]})));
    }

    #[test]
    fn limits_are_checked_against_their_ceilings() {
        assert!(EmitLimits::default().validate().is_ok());
        let over = EmitLimits {
            max_depth: MAX_DEPTH_CEILING + 1,
            ..EmitLimits::default()
        };
        assert_eq!(over.validate().unwrap_err().field(), "max_depth");
        let zero = EmitLimits {
            max_payload_bytes: 0,
            ..EmitLimits::default()
        };
        assert_eq!(zero.validate().unwrap_err().field(), "max_payload_bytes");
        let far = EmitLimits {
            max_delay: Duration::MAX,
            ..EmitLimits::default()
        };
        assert_eq!(far.validate().unwrap_err().field(), "max_delay");
    }
}
