//! Locked claims: a batch held by row locks in an open transaction instead of a lease, with
//! every outcome recorded by one write and one commit at the end
//! ([`OutboxStore::claim_locked`](crate::OutboxStore::claim_locked)).
//!
//! A leased claim writes each event twice (in flight, then delivered) and commits twice. A
//! locked claim writes nothing until the batch is settled: the events stay `pending`, locked by
//! the claiming transaction, which other claims skip; [`LockedBatch::finish`] records every
//! outcome and commits once. If the holder dies, its transaction ends with its connection and
//! the events are claimable again at once, untried (the attempt does not count: unlike an
//! expired lease, a lost lock leaves no trace). If it stalls, the store ends the hold after the
//! `hold` it was given (renewed by [`LockedBatch::keep`]), as an unrenewed lease expires.
//!
//! The rules are the state machine's: settling a locked event applies
//! [`Transition::Claim`] and then the outcome's transition, exactly as a leased claim followed
//! by its ack, nack or defer would ([`Settlement::transitions`]).

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::error::{StoreError, ValidationError};
use crate::event::{EventId, OutboxEvent};
use crate::status::{LeaseId, Transition};
use crate::store::{Failure, Outcome, Recorded, distinct_ids};

/// Events given back untried, due again only at `until` (a time on the caller's clock, read
/// relatively like every other): their destination is paused. See
/// [`OutboxStore::defer`](crate::OutboxStore::defer).
#[derive(Clone, Debug, PartialEq)]
pub struct Deferral {
    /// The events.
    pub ids: Vec<EventId>,
    /// When they are due again, on the caller's clock.
    pub until: DateTime<Utc>,
    /// Kept as their last error.
    pub reason: String,
}

/// How a batch's deliveries ended, recorded in one go. Each event is named at most once; an
/// event of the batch that is named nowhere is given back untried, like one in `released`.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Settlement {
    /// Delivered: acknowledged by the transport.
    pub delivered: Vec<EventId>,
    /// Failed deliveries, to retry or kill (see [`Failure`]).
    pub failures: Vec<Failure>,
    /// Not tried, their destination paused.
    pub deferred: Option<Deferral>,
    /// Not tried (shutting down): due again at once, the attempt not counted.
    pub released: Vec<EventId>,
}

impl Settlement {
    /// Every event named, in the order outcomes are reported: delivered, failed, deferred,
    /// released.
    pub fn ids(&self) -> impl Iterator<Item = EventId> + '_ {
        self.delivered
            .iter()
            .copied()
            .chain(self.failures.iter().map(|f| f.id))
            .chain(self.deferred.iter().flat_map(|d| d.ids.iter().copied()))
            .chain(self.released.iter().copied())
    }

    /// Refuses a settlement that names an event twice: each event gets exactly one outcome.
    pub fn validate(&self) -> Result<(), ValidationError> {
        distinct_ids(self.ids())
    }

    /// What settling does to each named event, as the state machine's transitions under
    /// `lease`, in [`ids`](Self::ids) order: for a locked event, apply [`Transition::Claim`]
    /// under the same lease first. Released events have none (a locked event given back is
    /// left exactly as it was). Times are the caller's; `on_store_clock` reads one on the
    /// store's.
    pub fn transitions(
        &self,
        lease: LeaseId,
        on_store_clock: impl Fn(DateTime<Utc>) -> DateTime<Utc>,
    ) -> Vec<(EventId, Option<Transition>)> {
        let mut out = Vec::new();
        for id in &self.delivered {
            out.push((*id, Some(Transition::Ack { lease })));
        }
        for f in &self.failures {
            let nack = Transition::Nack {
                lease,
                error: f.error.clone(),
                retry_at: f.retry_at.map(&on_store_clock),
            };
            out.push((f.id, Some(nack)));
        }
        if let Some(d) = &self.deferred {
            for id in &d.ids {
                let defer = Transition::Defer {
                    lease,
                    until: on_store_clock(d.until),
                    reason: d.reason.clone(),
                };
                out.push((*id, Some(defer)));
            }
        }
        for id in &self.released {
            out.push((*id, None));
        }
        out
    }
}

/// A batch claimed by [`OutboxStore::claim_locked`](crate::OutboxStore::claim_locked): its
/// events are locked, still `pending` to every reader, until [`finish`](Self::finish) records
/// their outcomes and commits. Dropping it unfinished gives them all back untried, as a
/// rollback.
#[async_trait]
pub trait LockedBatch: Send {
    /// Restarts the hold: the store keeps the locks for another `hold` (as given to the claim)
    /// from now. Fails if the hold already ended (then the events are claimable again and
    /// [`finish`](Self::finish) will fail too).
    async fn keep(&mut self) -> Result<(), StoreError>;

    /// Records `settlement` and releases the locks, in one commit; one [`Recorded`] per event of
    /// the batch, in [`Settlement::ids`] order, then the batch's events it did not name
    /// (released). An id not in the batch is reported [`Outcome::LeaseLost`](crate::Outcome)
    /// and left alone. If this fails, nothing was recorded: the events are pending, untried.
    async fn finish(
        self: Box<Self>,
        settlement: &Settlement,
        now: DateTime<Utc>,
    ) -> Result<Vec<Recorded>, StoreError>;
}

/// What settling a batch that holds no events records, with nothing to touch in the store:
/// every event named was not its to settle ([`Outcome::LeaseLost`]).
pub fn held_nothing(settlement: &Settlement) -> Vec<Recorded> {
    settlement
        .ids()
        .map(|id| Recorded {
            id,
            outcome: Outcome::LeaseLost,
        })
        .collect()
}

/// Settles a locked batch, the same way on every store: `held` are the batch's events (in
/// claim order), `holder` and `hold` what it was claimed with, `at` the store's clock reading
/// and `now` the caller's. Each event of the batch that `settlement` gives an outcome gets
/// `change(id, claim, outcome)`, which applies the state machine's claim and then the outcome
/// to the stored event and says what the outcome did ([`Outcome::of`]; a SQL store's
/// [`Changes::settle_locked`](crate::changes::Changes::settle_locked) does all of it, and may
/// delete a delivered event, as the store's acks do); an id not in the batch is reported lost
/// and left alone; the batch's events named nowhere, or released, are reported released and
/// left as they were. The answer is in [`Settlement::ids`] order, then the unnamed ones.
pub fn settle(
    settlement: &Settlement,
    held: &[EventId],
    holder: &str,
    hold: Duration,
    at: DateTime<Utc>,
    now: DateTime<Utc>,
    mut change: impl FnMut(EventId, &Transition, &Transition) -> Result<Outcome, StoreError>,
) -> Result<Vec<Recorded>, StoreError> {
    settlement.validate()?;
    // The state machine's claim needs a lease: one that stands for the lock.
    let lease = crate::status::Lease {
        id: LeaseId::new(),
        holder: holder.to_owned(),
        until: crate::clock::add(at, hold),
    };
    let claim = Transition::Claim {
        lease: lease.clone(),
    };
    let mine: std::collections::BTreeSet<EventId> = held.iter().copied().collect();
    let mut recorded = Vec::with_capacity(held.len());
    for (id, t) in settlement.transitions(lease.id, |t| crate::clock::translate(t, now, at)) {
        let outcome = match (mine.contains(&id), t) {
            (false, _) => Outcome::LeaseLost,
            (true, None) => Outcome::Released,
            (true, Some(t)) => change(id, &claim, &t)?,
        };
        recorded.push(Recorded { id, outcome });
    }
    let named: std::collections::BTreeSet<EventId> = settlement.ids().collect();
    recorded.extend(
        held.iter()
            .filter(|id| !named.contains(id))
            .map(|id| Recorded {
                id: *id,
                outcome: Outcome::Released,
            }),
    );
    Ok(recorded)
}

/// Whether a settlement's outcomes made events claimable again (retries, releases, revivals
/// of keys), so idle workers should be woken.
pub fn wakes_workers(recorded: &[Recorded]) -> bool {
    recorded.iter().any(|r| {
        !matches!(
            r.outcome,
            Outcome::Delivered | Outcome::Deferred { .. } | Outcome::LeaseLost
        )
    })
}

/// What [`OutboxStore::claim_locked`](crate::OutboxStore::claim_locked) returns: the events
/// (none if nothing was due) and the batch that holds them.
pub struct LockedClaim {
    /// The claimed events, oldest due first.
    pub events: Vec<OutboxEvent>,
    /// The hold on them.
    pub batch: Box<dyn LockedBatch>,
}

impl std::fmt::Debug for LockedClaim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LockedClaim")
            .field("events", &self.events.len())
            .finish_non_exhaustive()
    }
}

/// The longest hold a store accepts for a locked claim: the same bound as the longest lease.
pub const MAX_HOLD: Duration = Duration::from_secs(24 * 3600);

/// Checks a hold asked of [`OutboxStore::claim_locked`](crate::OutboxStore::claim_locked): more
/// than zero, at most [`MAX_HOLD`].
pub fn validate_hold(hold: Duration) -> Result<(), ValidationError> {
    if hold.is_zero() {
        return Err(ValidationError::new("hold", "must be longer than zero"));
    }
    if hold > MAX_HOLD {
        return Err(ValidationError::new("hold", "at most 24 h"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_settlement_naming_an_event_twice_is_refused() {
        let id = EventId::new();
        let s = Settlement {
            delivered: vec![id],
            released: vec![id],
            ..Settlement::default()
        };
        assert_eq!(s.validate().unwrap_err().field(), "ids");
    }

    #[test]
    fn transitions_follow_the_reporting_order_and_release_changes_nothing() {
        let (a, b, c, d) = (
            EventId::new(),
            EventId::new(),
            EventId::new(),
            EventId::new(),
        );
        let now = DateTime::from_timestamp(1_700_000_000, 0).unwrap();
        let s = Settlement {
            delivered: vec![a],
            failures: vec![Failure::permanent(b, "no")],
            deferred: Some(Deferral {
                ids: vec![c],
                until: now,
                reason: "paused".into(),
            }),
            released: vec![d],
        };
        let lease = LeaseId::new();
        let names: Vec<(EventId, Option<&str>)> = s
            .transitions(lease, |t| t)
            .iter()
            .map(|(id, t)| (*id, t.as_ref().map(Transition::name)))
            .collect();
        assert_eq!(
            names,
            vec![
                (a, Some("ack")),
                (b, Some("nack")),
                (c, Some("defer")),
                (d, None)
            ]
        );
        assert_eq!(s.ids().collect::<Vec<_>>(), vec![a, b, c, d]);
    }

    #[test]
    fn a_hold_is_bounded_both_ways() {
        assert!(validate_hold(Duration::ZERO).is_err());
        assert!(validate_hold(MAX_HOLD + Duration::from_secs(1)).is_err());
        assert!(validate_hold(Duration::from_secs(60)).is_ok());
    }
}
