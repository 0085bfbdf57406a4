//! Property tests: random operation sequences against the state machine and against a store.

#![allow(clippy::expect_used)]

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use outbox_core::{
    Clock, Emit, EventId, Failure, Lease, LeaseId, Lifecycle, ManualClock, NewEvent, OutboxEvent,
    OutboxStore, Status, Transition, transition,
};
use outbox_memory::MemoryStore;
use outbox_tests::harness::t0;
use proptest::prelude::*;

/// Whether a status may follow another in one step (staying put is always allowed).
fn legal_edge(from: Status, to: Status) -> bool {
    from == to
        || matches!(
            (from, to),
            (Status::Pending, Status::InFlight)
                | (
                    Status::InFlight,
                    Status::Pending | Status::Delivered | Status::Dead
                )
                | (Status::Dead, Status::Pending)
        )
}

/// The invariants between two successive states of one event, `permanent` saying whether the
/// step was a permanent failure.
fn check_step(before: &Lifecycle, after: &Lifecycle, permanent: bool) -> Result<(), TestCaseError> {
    prop_assert!(
        legal_edge(before.status, after.status),
        "{:?} -> {:?}",
        before.status,
        after.status
    );
    prop_assert!(after.attempts >= before.attempts, "attempts decreased");
    prop_assert!(after.attempts <= after.max_attempts, "attempts passed max");
    if before.status == Status::Delivered {
        prop_assert_eq!(before, after, "no way out of Delivered");
    }
    if after.status == Status::Dead && before.status != Status::Dead {
        prop_assert!(
            permanent || after.attempts == after.max_attempts,
            "dead without cause"
        );
    }
    prop_assert_eq!(
        after.status == Status::InFlight,
        after.lease.is_some(),
        "lease iff in flight"
    );
    Ok(())
}

#[derive(Clone, Debug)]
enum Step {
    Claim { lease: u8 },
    Renew { lease: u8, secs: u16 },
    Ack { lease: u8 },
    Nack { lease: u8, retry_in: Option<u16> },
    Release { lease: u8 },
    Expire,
    Revive { extra: u8 },
    Wait { secs: u16 },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0u8..3).prop_map(|lease| Step::Claim { lease }),
        (0u8..3, 0u16..120).prop_map(|(lease, secs)| Step::Renew { lease, secs }),
        (0u8..3).prop_map(|lease| Step::Ack { lease }),
        (0u8..3, proptest::option::of(0u16..120))
            .prop_map(|(lease, retry_in)| Step::Nack { lease, retry_in }),
        (0u8..3).prop_map(|lease| Step::Release { lease }),
        Just(Step::Expire),
        (0u8..3).prop_map(|extra| Step::Revive { extra }),
        (0u16..120).prop_map(|secs| Step::Wait { secs }),
    ]
}

// Invariant: whatever sequence of transitions is asked for, the state machine only moves along
// the documented edges, attempts never decrease nor pass max, Delivered is final, Dead comes only
// from a permanent failure or the last attempt, and a lease exists exactly while in flight.
proptest! {
    #[test]
    fn state_machine_keeps_its_invariants(max in 1u32..5, steps in proptest::collection::vec(step(), 1..60)) {
        let leases: Vec<LeaseId> = (0..3).map(|_| LeaseId::new()).collect();
        let mut now = t0();
        let mut state = Lifecycle::pending(max, now);
        for s in steps {
            let t = match &s {
                Step::Claim { lease } => Transition::Claim {
                    lease: Lease { id: leases[*lease as usize], holder: "w".into(), until: now + TimeDelta::seconds(30) },
                },
                Step::Renew { lease, secs } => Transition::Renew {
                    lease: leases[*lease as usize], until: now + TimeDelta::seconds(i64::from(*secs)),
                },
                Step::Ack { lease } => Transition::Ack { lease: leases[*lease as usize] },
                Step::Nack { lease, retry_in } => Transition::Nack {
                    lease: leases[*lease as usize],
                    error: "e".into(),
                    retry_at: retry_in.map(|s| now + TimeDelta::seconds(i64::from(s))),
                },
                Step::Release { lease } => Transition::Release { lease: leases[*lease as usize] },
                Step::Expire => Transition::Expire,
                Step::Revive { extra } => Transition::Revive { extra_attempts: u32::from(*extra) },
                Step::Wait { secs } => {
                    now += TimeDelta::seconds(i64::from(*secs));
                    continue;
                }
            };
            // A refused transition leaves the state unchanged (the function is pure).
            if let Ok(next) = transition(&state, &t, now) {
                    let permanent = matches!(t, Transition::Nack { retry_at: None, .. });
                    check_step(&state, &next, permanent)?;
                    // Fencing: only the current lease holder moves an in-flight event.
                    if let (Status::InFlight, Transition::Ack { lease } | Transition::Nack { lease, .. }
                        | Transition::Release { lease } | Transition::Renew { lease, .. }) = (state.status, &t)
                    {
                        prop_assert_eq!(state.lease.as_ref().map(|l| l.id), Some(*lease));
                    }
                    state = next;
                }
        }
    }
}

#[derive(Clone, Debug)]
enum Op {
    Emit {
        max_attempts: u32,
    },
    Claim {
        worker: usize,
        limit: usize,
    },
    Ack {
        worker: usize,
        stale: bool,
        pick: usize,
    },
    Nack {
        worker: usize,
        stale: bool,
        pick: usize,
        retry_in: Option<u16>,
    },
    Release {
        worker: usize,
        stale: bool,
        pick: usize,
    },
    Renew {
        worker: usize,
    },
    Advance {
        secs: u16,
    },
    Reclaim,
    Revive {
        pick: usize,
    },
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (1u32..4).prop_map(|max_attempts| Op::Emit { max_attempts }),
        3 => (0usize..3, 1usize..4).prop_map(|(worker, limit)| Op::Claim { worker, limit }),
        2 => (0usize..3, any::<bool>(), any::<usize>()).prop_map(|(worker, stale, pick)| Op::Ack { worker, stale, pick }),
        2 => (0usize..3, any::<bool>(), any::<usize>(), proptest::option::of(0u16..60))
            .prop_map(|(worker, stale, pick, retry_in)| Op::Nack { worker, stale, pick, retry_in }),
        1 => (0usize..3, any::<bool>(), any::<usize>()).prop_map(|(worker, stale, pick)| Op::Release { worker, stale, pick }),
        1 => (0usize..3).prop_map(|worker| Op::Renew { worker }),
        2 => (0u16..90).prop_map(|secs| Op::Advance { secs }),
        1 => Just(Op::Reclaim),
        1 => any::<usize>().prop_map(|pick| Op::Revive { pick }),
    ]
}

/// One worker's view: every lease it was given and the events claimed under each.
#[derive(Default, Clone)]
struct WorkerView {
    leases: Vec<(LeaseId, Vec<EventId>)>,
}

impl WorkerView {
    /// The current lease (`stale == false`) or an older one, with one of its events.
    fn pick(&self, stale: bool, pick: usize) -> Option<(LeaseId, EventId)> {
        let (lease, ids) = if stale && self.leases.len() > 1 {
            &self.leases[pick % (self.leases.len() - 1)]
        } else {
            self.leases.last()?
        };
        let id = *ids.get(pick % ids.len().max(1))?;
        Some((*lease, id))
    }
}

fn snapshot(store: &MemoryStore) -> HashMap<EventId, OutboxEvent> {
    store.events().into_iter().map(|e| (e.id, e)).collect()
}

fn block_on<F: std::future::Future>(f: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("runtime")
        .block_on(f)
}

// Invariant: driven by any sequence of emits, claims by three workers (with current and stale
// leases), acks, nacks, releases, renewals, clock moves, reclaims and revives, the store keeps
// every state-machine invariant, and an operation under a lease that no longer holds an event
// leaves that event exactly as it was.
proptest! {
    #![proptest_config(ProptestConfig { cases: 128, ..ProptestConfig::default() })]
    #[test]
    fn store_keeps_the_invariants_under_random_operations(ops in proptest::collection::vec(op(), 1..80)) {
        block_on(async {
            let clock = ManualClock::new(t0());
            let store = MemoryStore::with_clock(Arc::new(clock.clone()));
            let mut workers = vec![WorkerView::default(); 3];
            let mut permanent: HashSet<EventId> = HashSet::new();
            for op in ops {
                let before = snapshot(&store);
                let now: DateTime<Utc> = clock.now();
                // (lease used, event it named), for the fencing check.
                let mut fenced: Option<(LeaseId, EventId)> = None;
                let mut killed_on_purpose = None;
                match op {
                    Op::Emit { max_attempts } => {
                        let mut uow = store.begin().await.expect("begin");
                        let e = NewEvent::builder("t.e", "a", "1").max_attempts(max_attempts).build().expect("valid");
                        uow.emit(e).await.expect("emit");
                        uow.commit().await.expect("commit");
                    }
                    Op::Claim { worker, limit } => {
                        let lease = Lease { id: LeaseId::new(), holder: format!("w{worker}"), until: now + TimeDelta::seconds(30) };
                        let got = store.claim(&lease, limit, now).await.expect("claim");
                        workers[worker].leases.push((lease.id, got.iter().map(|e| e.id).collect()));
                    }
                    Op::Ack { worker, stale, pick } => {
                        if let Some((lease, id)) = workers[worker].pick(stale, pick) {
                            let _ = store.ack(lease, &[id], now).await;
                            fenced = Some((lease, id));
                        }
                    }
                    Op::Nack { worker, stale, pick, retry_in } => {
                        if let Some((lease, id)) = workers[worker].pick(stale, pick) {
                            let retry_at = retry_in.map(|s| now + TimeDelta::seconds(i64::from(s)));
                            let failure = Failure { id, error: "e".into(), retry_at };
                            let _ = store.nack(lease, &[failure], now).await;
                            fenced = Some((lease, id));
                            if retry_at.is_none() {
                                killed_on_purpose = Some(id);
                            }
                        }
                    }
                    Op::Release { worker, stale, pick } => {
                        if let Some((lease, id)) = workers[worker].pick(stale, pick) {
                            let _ = store.release(lease, &[id], now).await;
                            fenced = Some((lease, id));
                        }
                    }
                    Op::Renew { worker } => {
                        if let Some((lease, _)) = workers[worker].leases.last() {
                            store.renew(*lease, now + TimeDelta::seconds(30), now).await.expect("renew");
                        }
                    }
                    Op::Advance { secs } => clock.advance(Duration::from_secs(u64::from(secs))),
                    Op::Reclaim => {
                        store.reclaim_expired(now).await.expect("reclaim");
                    }
                    Op::Revive { pick } => {
                        let dead: Vec<EventId> =
                            before.values().filter(|e| e.status() == Status::Dead).map(|e| e.id).collect();
                        if let Some(id) = dead.get(pick % dead.len().max(1)) {
                            store.retry_dead(*id, 2, now).await.expect("revive");
                        }
                    }
                }
                let after = snapshot(&store);
                prop_assert_eq!(after.len(), before.len() + usize::from(after.len() > before.len()));
                for (id, old) in &before {
                    let new = after.get(id).expect("nothing disappears without a purge");
                    let was_permanent = killed_on_purpose == Some(*id);
                    if was_permanent && new.status() == Status::Dead {
                        permanent.insert(*id);
                    }
                    check_step(&old.lifecycle, &new.lifecycle, was_permanent)?;
                    if let Some((lease, named)) = fenced {
                        let held = old.lifecycle.lease.as_ref().is_some_and(|l| l.id == lease);
                        if named == *id && !held {
                            prop_assert_eq!(old, new, "a stale lease changed an event");
                        }
                    }
                }
                for e in after.values() {
                    if e.status() == Status::Dead {
                        prop_assert!(permanent.contains(&e.id) || e.attempts() == e.lifecycle.max_attempts);
                    }
                }
            }
            Ok(())
        })?;
    }
}
