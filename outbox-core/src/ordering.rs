//! Per-key ordering: events that carry the same ordering key are handed to the transport in the
//! order their transactions committed (within one transaction, in emit order), one at a time.
//!
//! **The rule.** Each key has at most one *head*: the oldest of its events that is not yet
//! delivered. Only the head is ever `Pending` or `InFlight`; every later event of the key is
//! [`Waiting`](Status::Waiting), in commit order, and no claim ever visits it. When the head is
//! delivered, the next waiting event is promoted ([`Transition::Promote`](crate::Transition))
//! and becomes the head. So an event is never handed over while an earlier event of its key is
//! undelivered, whatever the number of workers, and claiming costs the same at any key skew.
//! Events without a key are never held back.
//!
//! **A failing head blocks only its key**: retried with backoff, it stays the head and its
//! successors wait. When it dies, the store's [`DeadHead`] policy decides: [`DeadHead::Block`]
//! (the default) keeps the dead event as the head — the key is *parked*
//! ([`OutboxStore::parked_keys`](crate::OutboxStore::parked_keys)) until an operator retries the
//! head ([`OutboxStore::retry_dead`](crate::OutboxStore::retry_dead)) or skips it
//! ([`OutboxStore::skip_dead_head`](crate::OutboxStore::skip_dead_head)); [`DeadHead::Skip`]
//! lets the successors go on at once and the dead event stays dead.
//!
//! A dead event that no longer heads its key (skipped), when retried, goes to the back of its
//! key's queue: it is delivered after the events already waiting, never beside them.
//!
//! What a consumer may still see: the head delivered more than once (at least once), never a
//! successor before its head is delivered (or, by the policy or an operator, skipped).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

use crate::error::ValidationError;
use crate::event::EventId;
use crate::status::Status;

/// What happens to a key whose head dies (a permanent error, or its last attempt).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum DeadHead {
    /// The dead event stays its key's head: the key is parked, its successors wait until an
    /// operator retries or skips the head.
    #[default]
    Block,
    /// The dead event gives up its key: the next event of the key is promoted at once.
    Skip,
}

impl DeadHead {
    /// The stable lowercase name (`block`, `skip`).
    pub const fn as_str(self) -> &'static str {
        match self {
            DeadHead::Block => "block",
            DeadHead::Skip => "skip",
        }
    }
}

impl fmt::Display for DeadHead {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for DeadHead {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "block" => Ok(DeadHead::Block),
            "skip" => Ok(DeadHead::Skip),
            other => Err(ValidationError::new(
                "dead_head",
                format!("expected \"block\" or \"skip\", got {other:?}"),
            )),
        }
    }
}

/// Whether a key's head that is now in `status` still heads its key under `policy`: a head
/// keeps its key until it is delivered, or dies under [`DeadHead::Skip`]. Every store releases a
/// key, and promotes the next event, exactly when this turns false.
pub fn keeps_key(status: Status, policy: DeadHead) -> bool {
    match status {
        Status::Pending | Status::InFlight => true,
        Status::Dead => policy == DeadHead::Block,
        Status::Waiting | Status::Delivered => false,
    }
}

/// Why [`OutboxStore::skip_dead_head`](crate::OutboxStore::skip_dead_head) refuses `event`: it
/// is not a dead event heading its key.
pub fn not_a_dead_head(event: &crate::OutboxEvent) -> crate::StoreError {
    crate::StoreError::Transition {
        id: event.id,
        source: crate::TransitionError::Illegal {
            from: event.status(),
            transition: "skip",
        },
    }
}

/// A key whose head is dead under [`DeadHead::Block`]: nothing of it is delivered until an
/// operator retries or skips the head.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ParkedKey {
    /// The ordering key.
    pub key: String,
    /// Its dead head.
    pub head: EventId,
    /// Events waiting behind it.
    pub waiting: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_head_keeps_its_key_until_delivered_or_dead_under_skip() {
        for policy in [DeadHead::Block, DeadHead::Skip] {
            assert!(keeps_key(Status::Pending, policy));
            assert!(keeps_key(Status::InFlight, policy));
            assert!(!keeps_key(Status::Delivered, policy));
            assert!(!keeps_key(Status::Waiting, policy));
        }
        assert!(keeps_key(Status::Dead, DeadHead::Block));
        assert!(!keeps_key(Status::Dead, DeadHead::Skip));
    }

    #[test]
    fn policies_are_named() {
        assert_eq!("skip".parse::<DeadHead>(), Ok(DeadHead::Skip));
        assert_eq!(DeadHead::default().to_string(), "block");
        assert_eq!(
            "Skip".parse::<DeadHead>().map_err(|e| e.field()),
            Err("dead_head")
        );
    }
}
