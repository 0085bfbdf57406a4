//! The delivery state machine: [`Status`], the [`Lifecycle`] fields it governs, and
//! [`transition`], the one pure function that decides every change.
//!
//! ```text
//!  Waiting ──promote (the key's earlier event is delivered or skipped)──┐
//!                                                                      ▼
//!             claim (due, lease taken)            ack
//!  Pending ─────────────────────────▶ InFlight ─────────▶ Delivered ──(retention)──▶ purged
//!    ▲   ▲                              │  │
//!    │   └── nack retryable, release, ──┘  │ nack permanent, or attempts reach max
//!    │       defer,
//!    │       lease expired (backoff)       ▼
//!    └──────── operator retry ──────────  Dead
//! ```
//!
//! `attempts` counts *finished* attempts: an ack, a nack, or a lease that expired while the
//! event was in flight (the holder presumably died mid-delivery). A release (the worker gives the
//! event back without trying it, for example on shutdown) does not count, nor does a deferral (a
//! release that is due only later, for a destination that is paused).
//!
//! `Waiting` is where an event with an ordering key stays while an earlier event of its key is
//! not yet delivered (see [`ordering`](crate::ordering)); only the key's head is ever `Pending`.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::ValidationError;

/// Where an event is in its delivery.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// Behind an earlier event of its ordering key; promoted to `Pending` once that one is
    /// delivered (or skipped). Never claimed.
    Waiting,
    /// Waiting to be delivered; claimable once `next_attempt_at` has passed.
    Pending,
    /// Claimed by a worker that holds a lease on it until `locked_until`.
    InFlight,
    /// Acknowledged by the transport. Final; removed by the retention sweep.
    Delivered,
    /// Given up on: a permanent error, or `max_attempts` reached. Only an operator retry revives it.
    Dead,
}

impl Status {
    /// Every status, in lifecycle order.
    pub const ALL: [Status; 5] = [
        Status::Waiting,
        Status::Pending,
        Status::InFlight,
        Status::Delivered,
        Status::Dead,
    ];

    /// The stable lowercase name stores persist (`waiting`, `pending`, `in_flight`,
    /// `delivered`, `dead`).
    pub const fn as_str(self) -> &'static str {
        match self {
            Status::Waiting => "waiting",
            Status::Pending => "pending",
            Status::InFlight => "in_flight",
            Status::Delivered => "delivered",
            Status::Dead => "dead",
        }
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Status {
    type Err = ValidationError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Status::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or_else(|| ValidationError::new("status", format!("unknown status {s:?}")))
    }
}

/// Identifies one claim. Every claim gets a fresh id, so a worker whose lease expired and was
/// taken over holds a stale id and is fenced off, even if it reuses its worker name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct LeaseId(Uuid);

impl LeaseId {
    /// A fresh, unique lease id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }
    /// Wraps a UUID read back from storage.
    pub const fn from_uuid(uuid: Uuid) -> Self {
        Self(uuid)
    }
    /// The underlying UUID.
    pub const fn as_uuid(&self) -> &Uuid {
        &self.0
    }
}

impl Default for LeaseId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for LeaseId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A worker's time-limited hold on in-flight events.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    /// The claim this lease belongs to (the fencing token).
    pub id: LeaseId,
    /// Name of the worker holding it (`locked_by`).
    pub holder: String,
    /// When it expires (`locked_until`).
    pub until: DateTime<Utc>,
}

/// The fields of an event that the state machine changes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Lifecycle {
    /// Current status.
    pub status: Status,
    /// Finished attempts (ack, nack or expired lease); never decreases, never exceeds `max_attempts`.
    pub attempts: u32,
    /// Attempts allowed before the event is dead.
    pub max_attempts: u32,
    /// Earliest time the event may be claimed (meaningful while pending).
    pub next_attempt_at: DateTime<Utc>,
    /// The lease, present exactly while in flight.
    pub lease: Option<Lease>,
    /// The last delivery error, if any.
    pub last_error: Option<String>,
    /// When the event was delivered.
    pub delivered_at: Option<DateTime<Utc>>,
}

impl Lifecycle {
    /// The lifecycle of a freshly emitted event.
    pub fn pending(max_attempts: u32, next_attempt_at: DateTime<Utc>) -> Self {
        Self {
            status: Status::Pending,
            attempts: 0,
            max_attempts,
            next_attempt_at,
            lease: None,
            last_error: None,
            delivered_at: None,
        }
    }

    /// The lifecycle of a freshly emitted event that waits behind an earlier event of its
    /// ordering key.
    pub fn waiting(max_attempts: u32, next_attempt_at: DateTime<Utc>) -> Self {
        Self {
            status: Status::Waiting,
            ..Self::pending(max_attempts, next_attempt_at)
        }
    }

    /// Whether the event may be claimed at `now`.
    pub fn is_due(&self, now: DateTime<Utc>) -> bool {
        self.status == Status::Pending
            && self.next_attempt_at <= now
            && self.attempts < self.max_attempts
    }
}

/// A requested change of an event's lifecycle.
#[derive(Clone, Debug, PartialEq)]
pub enum Transition {
    /// A worker takes a due pending event under `lease`.
    Claim {
        /// The new lease.
        lease: Lease,
    },
    /// The lease holder extends its lease to `until`.
    Renew {
        /// The holder's lease id.
        lease: LeaseId,
        /// The new expiry.
        until: DateTime<Utc>,
    },
    /// The lease holder reports a successful delivery.
    Ack {
        /// The holder's lease id.
        lease: LeaseId,
    },
    /// The lease holder reports a failed delivery: retry at `retry_at`, or never (`None`: a
    /// permanent error). The attempt counts; if it was the last one the event is dead.
    Nack {
        /// The holder's lease id.
        lease: LeaseId,
        /// Why the delivery failed.
        error: String,
        /// When to try again; `None` for a permanent failure.
        retry_at: Option<DateTime<Utc>>,
    },
    /// The lease holder gives the event back untried; the attempt does not count.
    Release {
        /// The holder's lease id.
        lease: LeaseId,
    },
    /// The lease holder gives the event back untried, not due before `until`, keeping `reason`
    /// as its last error; the attempt does not count.
    Defer {
        /// The holder's lease id.
        lease: LeaseId,
        /// The earliest time it is due again.
        until: DateTime<Utc>,
        /// Why it was not tried.
        reason: String,
    },
    /// The lease ran out without an outcome; the attempt counts.
    Expire,
    /// An operator gives a dead event `extra_attempts` more attempts.
    Revive {
        /// Further attempts granted (at least 1).
        extra_attempts: u32,
    },
    /// The earlier event of a waiting event's ordering key is gone (delivered or skipped): it
    /// is its key's head now, pending.
    Promote,
    /// A pending event that is not its key's head (a revived event whose key moved on) goes to
    /// the back of its key's queue.
    Wait,
}

impl Transition {
    /// A short name for the transition, used in errors and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Transition::Claim { .. } => "claim",
            Transition::Renew { .. } => "renew",
            Transition::Ack { .. } => "ack",
            Transition::Nack { .. } => "nack",
            Transition::Release { .. } => "release",
            Transition::Defer { .. } => "defer",
            Transition::Expire => "expire",
            Transition::Revive { .. } => "revive",
            Transition::Promote => "promote",
            Transition::Wait => "wait",
        }
    }
}

/// Why a transition was refused. The event is unchanged.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TransitionError {
    /// The transition does not leave this status.
    #[error("cannot {transition} an event that is {from}")]
    Illegal {
        /// The event's status.
        from: Status,
        /// The refused transition.
        transition: &'static str,
    },
    /// The caller's lease is not the event's current lease: it expired and the event was
    /// reclaimed or claimed by someone else since.
    #[error("lease lost: the event is no longer held under this lease")]
    LeaseLost,
    /// The event is pending but not due yet (or has no attempts left).
    #[error("event is not due until {next_attempt_at}")]
    NotDue {
        /// When it becomes due.
        next_attempt_at: DateTime<Utc>,
    },
    /// The lease has not expired yet.
    #[error("lease has not expired (held until {until})")]
    LeaseActive {
        /// When the lease expires.
        until: DateTime<Utc>,
    },
    /// A revive must grant at least one attempt.
    #[error("a revive must grant at least one attempt")]
    NoAttemptsGranted,
    /// A revive would give the event more attempts than any event may have.
    #[error("a revive may bring an event to at most {limit} attempts")]
    TooManyAttempts {
        /// [`MAX_ATTEMPTS_CEILING`](crate::limits::MAX_ATTEMPTS_CEILING).
        limit: u32,
    },
}

/// Decides the lifecycle that follows `current` under `transition` at `now`.
///
/// Every store persists what this function returns and nothing else; a store that evaluates the
/// rules elsewhere (in SQL, say) must agree with it, which the conformance suite checks.
pub fn transition(
    current: &Lifecycle,
    transition: &Transition,
    now: DateTime<Utc>,
) -> Result<Lifecycle, TransitionError> {
    let illegal = || TransitionError::Illegal {
        from: current.status,
        transition: transition.name(),
    };
    let held_by = |lease: &LeaseId| -> Result<(), TransitionError> {
        match (&current.status, &current.lease) {
            (Status::InFlight, Some(held)) if held.id == *lease => Ok(()),
            (Status::InFlight, _) | (Status::Pending, _) => Err(TransitionError::LeaseLost),
            _ => Err(illegal()),
        }
    };
    let mut next = current.clone();
    match transition {
        Transition::Claim { lease } => {
            if current.status != Status::Pending {
                return Err(illegal());
            }
            if !current.is_due(now) {
                return Err(TransitionError::NotDue {
                    next_attempt_at: current.next_attempt_at,
                });
            }
            next.status = Status::InFlight;
            next.lease = Some(lease.clone());
        }
        Transition::Renew { lease, until } => {
            held_by(lease)?;
            if let Some(held) = next.lease.as_mut() {
                held.until = (*until).max(held.until);
            }
        }
        Transition::Ack { lease } => {
            held_by(lease)?;
            next.status = Status::Delivered;
            next.attempts = current.attempts.saturating_add(1).min(current.max_attempts);
            next.lease = None;
            next.delivered_at = Some(now);
            next.last_error = None;
        }
        Transition::Nack {
            lease,
            error,
            retry_at,
        } => {
            held_by(lease)?;
            next.attempts = current.attempts.saturating_add(1).min(current.max_attempts);
            next.lease = None;
            next.last_error = Some(error.clone());
            match retry_at {
                Some(at) if next.attempts < next.max_attempts => {
                    next.status = Status::Pending;
                    next.next_attempt_at = (*at).max(now);
                }
                _ => next.status = Status::Dead,
            }
        }
        Transition::Release { lease } => {
            held_by(lease)?;
            next.status = Status::Pending;
            next.lease = None;
            next.next_attempt_at = now;
        }
        Transition::Defer {
            lease,
            until,
            reason,
        } => {
            held_by(lease)?;
            next.status = Status::Pending;
            next.lease = None;
            next.next_attempt_at = (*until).max(now);
            next.last_error = Some(reason.clone());
        }
        Transition::Expire => {
            let Some(held) = current
                .lease
                .as_ref()
                .filter(|_| current.status == Status::InFlight)
            else {
                return Err(illegal());
            };
            if held.until > now {
                return Err(TransitionError::LeaseActive { until: held.until });
            }
            next.attempts = current.attempts.saturating_add(1).min(current.max_attempts);
            next.lease = None;
            // Microseconds always shown, as PostgreSQL's to_char renders them, so every store
            // writes the same text.
            next.last_error = Some(format!(
                "lease held by {} expired at {}",
                held.holder,
                held.until.format("%Y-%m-%d %H:%M:%S%.6f UTC")
            ));
            if next.attempts < next.max_attempts {
                next.status = Status::Pending;
                next.next_attempt_at = now;
            } else {
                next.status = Status::Dead;
            }
        }
        Transition::Revive { extra_attempts } => {
            if current.status != Status::Dead {
                return Err(illegal());
            }
            if *extra_attempts == 0 {
                return Err(TransitionError::NoAttemptsGranted);
            }
            let limit = crate::limits::MAX_ATTEMPTS_CEILING;
            next.max_attempts = current
                .attempts
                .checked_add(*extra_attempts)
                .filter(|n| *n <= limit)
                .ok_or(TransitionError::TooManyAttempts { limit })?;
            next.status = Status::Pending;
            next.next_attempt_at = now;
        }
        Transition::Promote => {
            if current.status != Status::Waiting {
                return Err(illegal());
            }
            next.status = Status::Pending;
        }
        Transition::Wait => {
            if current.status != Status::Pending {
                return Err(illegal());
            }
            next.status = Status::Waiting;
        }
    }
    Ok(next)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeDelta;

    fn t0() -> DateTime<Utc> {
        DateTime::from_timestamp(1_700_000_000, 0).unwrap()
    }

    fn lease(id: LeaseId, secs: i64) -> Lease {
        Lease {
            id,
            holder: "w1".into(),
            until: t0() + TimeDelta::seconds(secs),
        }
    }

    fn in_flight(max: u32, attempts: u32) -> (Lifecycle, LeaseId) {
        let id = LeaseId::new();
        let mut l = Lifecycle::pending(max, t0());
        l.attempts = attempts;
        let l = transition(
            &l,
            &Transition::Claim {
                lease: lease(id, 30),
            },
            t0(),
        )
        .unwrap();
        (l, id)
    }

    #[test]
    fn claim_takes_a_due_pending_event() {
        let (l, id) = in_flight(3, 0);
        assert_eq!(l.status, Status::InFlight);
        assert_eq!(l.lease.as_ref().map(|l| l.id), Some(id));
        assert_eq!(l.attempts, 0);
    }

    #[test]
    fn claim_refuses_an_event_that_is_not_due() {
        let l = Lifecycle::pending(3, t0() + TimeDelta::seconds(5));
        let err = transition(
            &l,
            &Transition::Claim {
                lease: lease(LeaseId::new(), 30),
            },
            t0(),
        );
        assert_eq!(
            err,
            Err(TransitionError::NotDue {
                next_attempt_at: t0() + TimeDelta::seconds(5)
            })
        );
    }

    #[test]
    fn ack_delivers_and_counts_the_attempt() {
        let (l, id) = in_flight(3, 1);
        let next = transition(&l, &Transition::Ack { lease: id }, t0()).unwrap();
        assert_eq!(next.status, Status::Delivered);
        assert_eq!(next.attempts, 2);
        assert_eq!(next.delivered_at, Some(t0()));
        assert!(next.lease.is_none());
    }

    #[test]
    fn retryable_nack_reschedules_until_attempts_run_out() {
        let at = t0() + TimeDelta::seconds(10);
        let (l, id) = in_flight(3, 1);
        let nack = Transition::Nack {
            lease: id,
            error: "boom".into(),
            retry_at: Some(at),
        };
        let next = transition(&l, &nack, t0()).unwrap();
        assert_eq!(
            (next.status, next.attempts, next.next_attempt_at),
            (Status::Pending, 2, at)
        );
        assert_eq!(next.last_error.as_deref(), Some("boom"));

        let (l, id) = in_flight(3, 2);
        let nack = Transition::Nack {
            lease: id,
            error: "boom".into(),
            retry_at: Some(at),
        };
        let next = transition(&l, &nack, t0()).unwrap();
        assert_eq!((next.status, next.attempts), (Status::Dead, 3));
    }

    #[test]
    fn permanent_nack_kills_at_once() {
        let (l, id) = in_flight(10, 0);
        let nack = Transition::Nack {
            lease: id,
            error: "bad".into(),
            retry_at: None,
        };
        let next = transition(&l, &nack, t0()).unwrap();
        assert_eq!((next.status, next.attempts), (Status::Dead, 1));
    }

    #[test]
    fn release_returns_the_event_without_counting() {
        let (l, id) = in_flight(3, 1);
        let next = transition(&l, &Transition::Release { lease: id }, t0()).unwrap();
        assert_eq!((next.status, next.attempts), (Status::Pending, 1));
    }

    #[test]
    fn defer_returns_the_event_for_later_without_counting() {
        let (l, id) = in_flight(3, 1);
        let later = t0() + TimeDelta::seconds(30);
        let defer = |until| Transition::Defer {
            lease: id,
            until,
            reason: "paused".into(),
        };
        let next = transition(&l, &defer(later), t0()).unwrap();
        assert_eq!(
            (next.status, next.attempts, next.next_attempt_at),
            (Status::Pending, 1, later)
        );
        assert_eq!(next.last_error.as_deref(), Some("paused"));
        assert!(next.lease.is_none());
        // A time in the past means now.
        let next = transition(&l, &defer(t0() - TimeDelta::seconds(5)), t0()).unwrap();
        assert_eq!(next.next_attempt_at, t0());
    }

    #[test]
    fn expire_counts_the_attempt_and_may_kill() {
        let (l, _) = in_flight(3, 1);
        let early = transition(&l, &Transition::Expire, t0());
        assert!(matches!(early, Err(TransitionError::LeaseActive { .. })));
        let later = t0() + TimeDelta::seconds(31);
        let next = transition(&l, &Transition::Expire, later).unwrap();
        assert_eq!((next.status, next.attempts), (Status::Pending, 2));
        let (l, _) = in_flight(3, 2);
        let next = transition(&l, &Transition::Expire, later).unwrap();
        assert_eq!((next.status, next.attempts), (Status::Dead, 3));
    }

    #[test]
    fn stale_lease_is_fenced_off() {
        let (l, _) = in_flight(3, 0);
        let stale = LeaseId::new();
        for t in [
            Transition::Ack { lease: stale },
            Transition::Nack {
                lease: stale,
                error: "x".into(),
                retry_at: None,
            },
            Transition::Release { lease: stale },
            Transition::Renew {
                lease: stale,
                until: t0(),
            },
        ] {
            assert_eq!(
                transition(&l, &t, t0()),
                Err(TransitionError::LeaseLost),
                "{}",
                t.name()
            );
        }
    }

    #[test]
    fn revive_grants_more_attempts_to_a_dead_event() {
        let (l, id) = in_flight(1, 0);
        let dead = transition(&l, &Transition::Ack { lease: id }, t0()).unwrap();
        assert_eq!(dead.status, Status::Delivered);
        let nack = Transition::Nack {
            lease: id,
            error: "x".into(),
            retry_at: Some(t0()),
        };
        let dead = transition(&l, &nack, t0()).unwrap();
        assert_eq!(dead.status, Status::Dead);
        let revived = transition(&dead, &Transition::Revive { extra_attempts: 2 }, t0()).unwrap();
        assert_eq!(
            (revived.status, revived.attempts, revived.max_attempts),
            (Status::Pending, 1, 3)
        );
        assert_eq!(
            transition(&dead, &Transition::Revive { extra_attempts: 0 }, t0()),
            Err(TransitionError::NoAttemptsGranted)
        );
    }

    /// Every (status, transition) pair: which are legal is exactly the table in the module docs.
    #[test]
    fn transition_table_is_exactly_the_documented_one() {
        let lease_id = LeaseId::new();
        let late = t0() + TimeDelta::seconds(60);
        let states = |status: Status| {
            let mut l = Lifecycle::pending(5, t0());
            l.status = status;
            if status == Status::InFlight {
                l.lease = Some(lease(lease_id, 30));
            }
            l
        };
        let transitions = [
            Transition::Claim {
                lease: lease(LeaseId::new(), 90),
            },
            Transition::Renew {
                lease: lease_id,
                until: late,
            },
            Transition::Ack { lease: lease_id },
            Transition::Nack {
                lease: lease_id,
                error: "e".into(),
                retry_at: Some(late),
            },
            Transition::Release { lease: lease_id },
            Transition::Defer {
                lease: lease_id,
                until: late,
                reason: "paused".into(),
            },
            Transition::Expire,
            Transition::Revive { extra_attempts: 1 },
            Transition::Promote,
            Transition::Wait,
        ];
        let legal = |from: Status, t: &Transition| -> bool {
            matches!(
                (from, t),
                (Status::Pending, Transition::Claim { .. })
                    | (Status::InFlight, Transition::Renew { .. })
                    | (Status::InFlight, Transition::Ack { .. })
                    | (Status::InFlight, Transition::Nack { .. })
                    | (Status::InFlight, Transition::Release { .. })
                    | (Status::InFlight, Transition::Defer { .. })
                    | (Status::InFlight, Transition::Expire)
                    | (Status::Dead, Transition::Revive { .. })
                    | (Status::Waiting, Transition::Promote)
                    | (Status::Pending, Transition::Wait)
            )
        };
        for from in Status::ALL {
            for t in &transitions {
                let got = transition(&states(from), t, late);
                assert_eq!(
                    got.is_ok(),
                    legal(from, t),
                    "{from} --{}--> {got:?}",
                    t.name()
                );
            }
        }
    }
}
