//! What a store keeps about an event besides its current state, for operators: its failed
//! attempts (the last [`ATTEMPT_HISTORY_LIMIT`]) and the notes left by operators who edited it
//! (the last [`NOTE_LIMIT`]). Read with
//! [`OutboxStore::history`](crate::OutboxStore::history).
//!
//! The rules are here and every store follows them: a transition that finishes an attempt
//! without delivering the event (a failure, or a lease that ran out) records one [`Attempt`]
//! ([`Attempt::recorded`]); an operator's payload edit records one [`AuditNote`] holding the
//! payload it replaced ([`PayloadEdit`]).

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::error::ValidationError;
use crate::limits::{EmitLimits, depth_within, json_has_nul};
use crate::status::{Lifecycle, Status};

/// Failed attempts kept per event; older ones are dropped as new ones are recorded.
pub const ATTEMPT_HISTORY_LIMIT: usize = 20;

/// Operator notes kept per event; older ones are dropped as new ones are recorded.
pub const NOTE_LIMIT: usize = 20;

/// One delivery attempt that ended without delivering the event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Attempt {
    /// When the attempt ended, on the store's clock.
    pub at: DateTime<Utc>,
    /// Its number: the event's attempt count once it ended (1 for the first).
    pub attempt: u32,
    /// The worker that held the event (its lease holder), if the store knew one.
    pub worker: Option<String>,
    /// Why it failed: the transport's error, or the expired lease.
    pub error: String,
}

impl Attempt {
    /// The attempt a transition from `before` to `after` at `at` finished without a delivery,
    /// if it finished one: the attempt count went up and the event was not delivered. The
    /// worker is the lease holder before the transition.
    pub fn recorded(before: &Lifecycle, after: &Lifecycle, at: DateTime<Utc>) -> Option<Self> {
        if after.attempts <= before.attempts || after.status == Status::Delivered {
            return None;
        }
        Some(Self {
            at,
            attempt: after.attempts,
            worker: before.lease.as_ref().map(|l| l.holder.clone()),
            error: after.last_error.clone().unwrap_or_default(),
        })
    }
}

/// An operator's change to a dead event's payload, kept on the event.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct AuditNote {
    /// When the change was made, on the store's clock.
    pub at: DateTime<Utc>,
    /// Who made it, as the operator's tool names them.
    pub by: String,
    /// Why, in the operator's words.
    pub note: String,
    /// The payload the change replaced.
    pub previous_payload: serde_json::Value,
}

/// An event's history: failed attempts and operator notes, each oldest first.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History {
    /// The last [`ATTEMPT_HISTORY_LIMIT`] failed attempts.
    pub attempts: Vec<Attempt>,
    /// The last [`NOTE_LIMIT`] payload edits.
    pub notes: Vec<AuditNote>,
}

impl History {
    /// Records a failed attempt, dropping the oldest beyond the limit.
    pub fn push_attempt(&mut self, attempt: Attempt) {
        push_bounded(&mut self.attempts, attempt, ATTEMPT_HISTORY_LIMIT);
    }

    /// Records an operator note, dropping the oldest beyond the limit.
    pub fn push_note(&mut self, note: AuditNote) {
        push_bounded(&mut self.notes, note, NOTE_LIMIT);
    }
}

fn push_bounded<T>(items: &mut Vec<T>, item: T, limit: usize) {
    items.push(item);
    if items.len() > limit {
        let excess = items.len() - limit;
        items.drain(..excess);
    }
}

/// Longest operator name or note a [`PayloadEdit`] may carry, in bytes.
pub const MAX_NOTE_BYTES: usize = 4096;

/// A new payload for a dead event, with who changes it and why
/// ([`OutboxStore::edit_dead`](crate::OutboxStore::edit_dead)).
#[derive(Clone, Debug, PartialEq)]
pub struct PayloadEdit {
    /// The payload the event is delivered with from now on.
    pub payload: serde_json::Value,
    /// Who makes the change.
    pub by: String,
    /// Why (required: an edit without a reason cannot be audited).
    pub note: String,
}

impl PayloadEdit {
    /// Checks the edit against `limits`, as an emitted payload is checked: the new payload's
    /// size, depth and characters, and a non-empty `by` and `note` of at most
    /// [`MAX_NOTE_BYTES`].
    pub fn check(&self, limits: &EmitLimits) -> Result<(), ValidationError> {
        for (field, text) in [("by", &self.by), ("note", &self.note)] {
            if text.trim().is_empty() {
                return Err(ValidationError::new(field, "must not be empty"));
            }
            if text.len() > MAX_NOTE_BYTES {
                return Err(ValidationError::new(
                    field,
                    format!("longer than {MAX_NOTE_BYTES} bytes"),
                ));
            }
            if text.contains('\0') {
                return Err(ValidationError::new(field, "contains a NUL character"));
            }
        }
        if depth_within(&self.payload, limits.max_depth) > limits.max_depth {
            return Err(ValidationError::new(
                "payload",
                format!(
                    "nested deeper than the limit of {} levels",
                    limits.max_depth
                ),
            ));
        }
        if json_has_nul(&self.payload) {
            return Err(ValidationError::new("payload", "contains a NUL character"));
        }
        let size = serde_json::to_vec(&self.payload)
            .map(|bytes| bytes.len())
            .map_err(|e| ValidationError::new("payload", e.to_string()))?;
        if size > limits.max_payload_bytes {
            return Err(ValidationError::new(
                "payload",
                format!(
                    "{size} bytes is over the limit of {} bytes",
                    limits.max_payload_bytes
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::{Lease, LeaseId, Transition, transition};
    use chrono::TimeDelta;

    #[test]
    fn a_failure_and_an_expiry_are_attempts_a_delivery_and_a_release_are_not() {
        let now = DateTime::<Utc>::UNIX_EPOCH + TimeDelta::days(20_000);
        let pending = Lifecycle::pending(3, now);
        let lease = Lease {
            id: LeaseId::new(),
            holder: "w1".into(),
            until: now + TimeDelta::seconds(30),
        };
        let held = transition(
            &pending,
            &Transition::Claim {
                lease: lease.clone(),
            },
            now,
        )
        .unwrap();
        let failed = transition(
            &held,
            &Transition::Nack {
                lease: lease.id,
                error: "503".into(),
                retry_at: Some(now),
            },
            now,
        )
        .unwrap();
        let attempt = Attempt::recorded(&held, &failed, now).unwrap();
        assert_eq!(
            (
                attempt.attempt,
                attempt.worker.as_deref(),
                attempt.error.as_str()
            ),
            (1, Some("w1"), "503")
        );
        let expired = transition(&held, &Transition::Expire, lease.until).unwrap();
        assert!(Attempt::recorded(&held, &expired, lease.until).is_some());
        let delivered = transition(&held, &Transition::Ack { lease: lease.id }, now).unwrap();
        assert_eq!(Attempt::recorded(&held, &delivered, now), None);
        let released = transition(&held, &Transition::Release { lease: lease.id }, now).unwrap();
        assert_eq!(Attempt::recorded(&held, &released, now), None);
    }

    #[test]
    fn the_history_keeps_the_newest_attempts() {
        let now = DateTime::<Utc>::UNIX_EPOCH;
        let mut history = History::default();
        for n in 1..=(ATTEMPT_HISTORY_LIMIT as u32 + 5) {
            history.push_attempt(Attempt {
                at: now,
                attempt: n,
                worker: None,
                error: String::new(),
            });
        }
        assert_eq!(history.attempts.len(), ATTEMPT_HISTORY_LIMIT);
        assert_eq!(history.attempts[0].attempt, 6);
    }

    #[test]
    fn an_edit_needs_a_reason_and_a_payload_within_the_limits() {
        let limits = EmitLimits {
            max_payload_bytes: 10,
            ..EmitLimits::default()
        };
        let edit = |payload, note: &str| PayloadEdit {
            payload,
            by: "ops".into(),
            note: note.into(),
        };
        assert!(
            edit(serde_json::json!({"a": 1}), "fix")
                .check(&limits)
                .is_ok()
        );
        let err = edit(serde_json::json!({"a": 1}), " ")
            .check(&limits)
            .unwrap_err();
        assert_eq!(err.field(), "note");
        let err = edit(serde_json::json!({"a": "0123456789"}), "fix")
            .check(&limits)
            .unwrap_err();
        assert_eq!(err.field(), "payload");
    }
}
