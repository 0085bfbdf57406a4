//! The memory store beside PostgreSQL, MySQL and SQLite: the same random operations on both
//! stores of a pair, every answer and every event's lifecycle compared after each step.
//! PostgreSQL re-encodes each transition in SQL; MySQL and SQLite apply
//! `outbox_core::transition` to rows read in their transactions. This is what holds each
//! equal to the core state machine, and the memory store equal to what applications run in
//! production.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::Duration;

use chrono::TimeDelta;
use outbox_core::{
    Deferral, Emitted, EventFilter, EventId, Failure, History, Lease, LeaseId, LockedBatch,
    NewEvent, OutboxEvent, OutboxStore, Outcome, PausedType, Settlement, StoreError,
    TransitionError,
};
use outbox_tests::conformance::{Harness, NowUtc};
use outbox_tests::harness::{MemoryHarness, MySqlHarness, PgHarness, SqliteHarness, runtime};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    /// Emits `keys.len()` events in one unit of work (a key from a small set, so keys repeat),
    /// some delayed, then commits or rolls back.
    Emit {
        keys: Vec<Option<u8>>,
        /// Ordering keys, by position (from a smaller set still, so keys queue up).
        orders: Vec<Option<u8>>,
        delay: Option<u8>,
        /// Few attempts, so that the last attempt, death and revival are reached often.
        attempts: u8,
        commit: bool,
    },
    Claim {
        worker: usize,
        limit: usize,
        lease_secs: u8,
    },
    /// `pick` names events: mostly ones the worker's last claim took, else any emitted so far
    /// (so stale and foreign ids occur too).
    Ack {
        worker: usize,
        pick: Vec<u8>,
    },
    Nack {
        worker: usize,
        pick: Vec<u8>,
        /// Seconds from now; negative ones ask for a retry in the past.
        retry_in: Option<i8>,
    },
    Release {
        worker: usize,
        pick: Vec<u8>,
    },
    Defer {
        worker: usize,
        pick: Vec<u8>,
        /// Seconds from now; negative ones ask for a time in the past.
        secs: i8,
    },
    Renew {
        worker: usize,
        secs: u8,
    },
    Advance {
        secs: u8,
    },
    Reclaim,
    Purge {
        age_secs: u8,
    },
    RetryDead {
        pick: u8,
        extra: u8,
    },
    /// Skips a dead head (mostly a dead event, else any).
    SkipDeadHead {
        pick: u8,
    },
    /// Lists the parked keys.
    Parked,
    /// Pauses (or resumes) one of the two event types.
    Pause {
        deleted: bool,
        resume: bool,
    },
    /// Replaces a picked (mostly dead) event's payload and retries it.
    EditDead {
        pick: u8,
        extra: u8,
    },
    /// Deletes the picked events (mostly dead ones, else any).
    Delete {
        pick: Vec<u8>,
    },
    /// Opens a locked claim in `slot` (settling the one open there first, giving its events
    /// back).
    LockClaim {
        slot: usize,
        limit: usize,
    },
    /// Settles the locked claim in `slot`: each picked event (mostly its own, some foreign)
    /// named once, its outcome chosen by `kinds`.
    LockFinish {
        slot: usize,
        pick: Vec<u8>,
        kinds: Vec<u8>,
        retry_in: Option<i8>,
        secs: i8,
    },
}

/// Where the open locked claims' events are kept in `held`: slots 4 and 5.
const LOCK_SLOTS: usize = 2;

fn op() -> impl Strategy<Value = Op> {
    let worker = 0usize..3;
    let pick = proptest::collection::vec(any::<u8>(), 0..4);
    prop_oneof![
        3 => (proptest::collection::vec(proptest::option::of(0u8..3), 1..4),
              proptest::collection::vec(proptest::option::of(0u8..2), 0..4),
              proptest::option::weighted(0.2, 1u8..60), 1u8..4, proptest::bool::weighted(0.8))
            .prop_map(|(keys, orders, delay, attempts, commit)| Op::Emit { keys, orders, delay, attempts, commit }),
        1 => any::<u8>().prop_map(|pick| Op::SkipDeadHead { pick }),
        1 => Just(Op::Parked),
        1 => (any::<bool>(), any::<bool>()).prop_map(|(deleted, resume)| Op::Pause { deleted, resume }),
        1 => (any::<u8>(), 0u8..3).prop_map(|(pick, extra)| Op::EditDead { pick, extra }),
        1 => proptest::collection::vec(any::<u8>(), 0..3).prop_map(|pick| Op::Delete { pick }),
        3 => (worker.clone(), 1usize..4, 5u8..60)
            .prop_map(|(worker, limit, lease_secs)| Op::Claim { worker, limit, lease_secs }),
        2 => (worker.clone(), pick.clone()).prop_map(|(worker, pick)| Op::Ack { worker, pick }),
        2 => (worker.clone(), pick.clone(), proptest::option::of(-30i8..90))
            .prop_map(|(worker, pick, retry_in)| Op::Nack { worker, pick, retry_in }),
        1 => (worker.clone(), pick.clone()).prop_map(|(worker, pick)| Op::Release { worker, pick }),
        1 => (worker.clone(), pick, -30i8..90)
            .prop_map(|(worker, pick, secs)| Op::Defer { worker, pick, secs }),
        1 => (worker, 0u8..90).prop_map(|(worker, secs)| Op::Renew { worker, secs }),
        2 => (0u8..90).prop_map(|secs| Op::Advance { secs }),
        1 => Just(Op::Reclaim),
        1 => (0u8..120).prop_map(|age_secs| Op::Purge { age_secs }),
        2 => (any::<u8>(), 0u8..3).prop_map(|(pick, extra)| Op::RetryDead { pick, extra }),
        2 => (0..LOCK_SLOTS, 1usize..4).prop_map(|(slot, limit)| Op::LockClaim { slot, limit }),
        2 => (0..LOCK_SLOTS, proptest::collection::vec(any::<u8>(), 0..5),
              proptest::collection::vec(0u8..4, 5), proptest::option::of(-30i8..90), -30i8..90)
            .prop_map(|(slot, pick, kinds, retry_in, secs)| Op::LockFinish { slot, pick, kinds, retry_in, secs }),
    ]
}

/// An answer with the store's own ids replaced by emission order, comparable across stores.
#[derive(Debug, PartialEq)]
enum Answer {
    Emitted(Vec<(bool, usize)>),
    Claimed(Vec<usize>),
    Outcomes(Vec<(usize, Outcome)>),
    Count(u64),
    Reclaimed(u64, u64),
    Revived(usize),
    Skipped(usize),
    /// Deleted events, sorted.
    Deleted(Vec<usize>),
    /// Parked keys: key, head, waiting.
    Parked(Vec<(String, usize, u64)>),
    /// Whether a pause or resume changed anything.
    Paused(bool),
    /// What settling the slot's previous claim did, and what the new one took.
    Locked(Box<Answer>, Vec<usize>),
    Refused(String),
    Nothing,
}

fn refused(e: StoreError) -> Answer {
    Answer::Refused(match e {
        StoreError::InvalidInput(v) => format!("invalid {}", v.field()),
        StoreError::NotFound(_) => "not found".into(),
        StoreError::Transition { source, .. } => match source {
            TransitionError::Illegal { from, transition } => format!("illegal {from} {transition}"),
            other => other.to_string(),
        },
        other => panic!("a store failed: {other}"),
    })
}

/// One store under test, with its ids in emission order and its open locked claims.
struct Side<H: Harness> {
    h: H,
    ids: Vec<EventId>,
    index: HashMap<EventId, usize>,
    locked: Vec<Option<Box<dyn LockedBatch>>>,
}

/// A locked claim's hold: longer than every run's clock moves, so that it never runs out on the
/// memory store's clock while PostgreSQL's (the wall clock) has not moved.
const HOLD: Duration = outbox_core::locked::MAX_HOLD;

impl<H: Harness> Side<H> {
    fn new(h: H) -> Self {
        Self {
            h,
            ids: Vec::new(),
            index: HashMap::new(),
            locked: (0..LOCK_SLOTS).map(|_| None).collect(),
        }
    }

    /// Settles the locked claim open in `slot`, if any, giving all its events back.
    async fn give_back(&mut self, slot: usize) -> Answer {
        let Some(batch) = self.locked[slot].take() else {
            return Answer::Nothing;
        };
        let now = self.h.clock().now_utc();
        match batch.finish(&Settlement::default(), now).await {
            Ok(rs) => Answer::Outcomes(rs.iter().map(|r| (self.idx(r.id), r.outcome)).collect()),
            Err(e) => refused(e),
        }
    }

    fn idx(&self, id: EventId) -> usize {
        self.index[&id]
    }

    /// The events `pick` names: three in four from `held` (what the worker's last claim took),
    /// the rest from every event emitted so far.
    fn picked(&self, pick: &[u8], held: &[usize]) -> Vec<EventId> {
        if self.ids.is_empty() {
            return Vec::new();
        }
        pick.iter()
            .map(|p| {
                let p = usize::from(*p);
                match held.len() {
                    n if n > 0 && p % 4 != 0 => self.ids[held[(p / 4) % n]],
                    _ => self.ids[p % self.ids.len()],
                }
            })
            .collect()
    }

    async fn run(&mut self, op: &Op, leases: &[Option<Lease>], held: &[Vec<usize>]) -> Answer {
        let store = self.h.store();
        let now = self.h.clock().now_utc();
        let outcomes = |r: Result<Vec<outbox_core::Recorded>, StoreError>, s: &Self| match r {
            Ok(rs) => Answer::Outcomes(rs.iter().map(|r| (s.idx(r.id), r.outcome)).collect()),
            Err(e) => refused(e),
        };
        match op {
            Op::Emit {
                keys,
                orders,
                delay,
                attempts,
                commit,
            } => {
                let events = keys
                    .iter()
                    .enumerate()
                    .map(|(i, key)| {
                        // Two types, so a paused one leaves the other flowing.
                        let kind = if i % 3 == 2 {
                            "file.deleted"
                        } else {
                            "file.stored"
                        };
                        let mut b = NewEvent::builder(kind, "upload", "u")
                            .max_attempts(u32::from(*attempts));
                        if let Some(k) = key {
                            b = b.idempotency_key(format!("key-{k}"));
                        }
                        if let Some(Some(o)) = orders.get(i) {
                            b = b.ordering_key(format!("order-{o}"));
                        }
                        if let Some(d) = delay {
                            b = b.deliver_after(now + TimeDelta::seconds(i64::from(*d)));
                        }
                        b.build().unwrap()
                    })
                    .collect();
                let emitted = self.h.emit(events, *commit).await.unwrap();
                let mut answer = Vec::new();
                for e in emitted {
                    if let Emitted::Created(id) = e {
                        self.index.insert(id, self.ids.len());
                        self.ids.push(id);
                    }
                    answer.push((e.is_duplicate(), self.idx(e.id())));
                }
                Answer::Emitted(answer)
            }
            Op::Claim { worker, limit, .. } => {
                let lease = leases[*worker].as_ref().unwrap();
                let claimed = store.claim(lease, *limit, now).await.unwrap();
                Answer::Claimed(claimed.iter().map(|e| self.idx(e.id)).collect())
            }
            Op::Ack { worker, pick } => {
                let Some(lease) = &leases[*worker] else {
                    return Answer::Nothing;
                };
                let r = store
                    .ack(lease.id, &self.picked(pick, &held[*worker]), now)
                    .await;
                outcomes(r, self)
            }
            Op::Nack {
                worker,
                pick,
                retry_in,
            } => {
                let Some(lease) = &leases[*worker] else {
                    return Answer::Nothing;
                };
                let failures: Vec<Failure> = self
                    .picked(pick, &held[*worker])
                    .into_iter()
                    .map(|id| Failure {
                        id,
                        error: "boom".into(),
                        retry_at: retry_in.map(|s| now + TimeDelta::seconds(i64::from(s))),
                    })
                    .collect();
                let r = store.nack(lease.id, &failures, now).await;
                outcomes(r, self)
            }
            Op::Release { worker, pick } => {
                let Some(lease) = &leases[*worker] else {
                    return Answer::Nothing;
                };
                let r = store
                    .release(lease.id, &self.picked(pick, &held[*worker]), now)
                    .await;
                outcomes(r, self)
            }
            Op::Defer { worker, pick, secs } => {
                let Some(lease) = &leases[*worker] else {
                    return Answer::Nothing;
                };
                let until = now + TimeDelta::seconds(i64::from(*secs));
                let r = store
                    .defer(
                        lease.id,
                        &self.picked(pick, &held[*worker]),
                        until,
                        "paused",
                        now,
                    )
                    .await;
                outcomes(r, self)
            }
            Op::Renew { worker, secs } => {
                let Some(lease) = &leases[*worker] else {
                    return Answer::Nothing;
                };
                let until = now + TimeDelta::seconds(i64::from(*secs));
                Answer::Count(store.renew(lease.id, until, now).await.unwrap())
            }
            Op::Advance { secs } => {
                self.h
                    .clock()
                    .advance(Duration::from_secs(u64::from(*secs)));
                Answer::Nothing
            }
            Op::Reclaim => {
                let r = store.reclaim_expired(now).await.unwrap();
                Answer::Reclaimed(r.pending, r.dead)
            }
            Op::Purge { age_secs } => {
                let before = now - TimeDelta::seconds(i64::from(*age_secs));
                Answer::Count(store.purge_delivered(before, now).await.unwrap())
            }
            Op::LockClaim { slot, limit } => {
                let given_back = self.give_back(*slot).await;
                let claim = store.claim_locked("w1", *limit, HOLD, now).await.unwrap();
                let taken = claim.events.iter().map(|e| self.idx(e.id)).collect();
                self.locked[*slot] = Some(claim.batch);
                Answer::Locked(Box::new(given_back), taken)
            }
            Op::LockFinish {
                slot,
                pick,
                kinds,
                retry_in,
                secs,
            } => {
                let Some(batch) = self.locked[*slot].take() else {
                    return Answer::Nothing;
                };
                let mut settlement = Settlement::default();
                let mut named = std::collections::HashSet::new();
                let picked = self.picked(pick, &held[4 + *slot]);
                for (id, kind) in picked.into_iter().zip(kinds.iter().cycle()) {
                    if !named.insert(id) {
                        continue;
                    }
                    match kind {
                        0 => settlement.delivered.push(id),
                        1 => settlement.failures.push(Failure {
                            id,
                            error: "boom".into(),
                            retry_at: retry_in.map(|s| now + TimeDelta::seconds(i64::from(s))),
                        }),
                        2 => settlement
                            .deferred
                            .get_or_insert_with(|| Deferral {
                                ids: Vec::new(),
                                until: now + TimeDelta::seconds(i64::from(*secs)),
                                reason: "paused".into(),
                            })
                            .ids
                            .push(id),
                        _ => settlement.released.push(id),
                    }
                }
                outcomes(batch.finish(&settlement, now).await, self)
            }
            Op::RetryDead { pick, extra } => {
                // Mostly a dead event (the last slot of `held`), else any.
                let Some(id) = self.picked(&[*pick], &held[3]).first().copied() else {
                    return Answer::Nothing;
                };
                match store.retry_dead(id, u32::from(*extra), now).await {
                    Ok(e) => Answer::Revived(self.idx(e.id)),
                    Err(e) => refused(e),
                }
            }
            Op::SkipDeadHead { pick } => {
                let Some(id) = self.picked(&[*pick], &held[3]).first().copied() else {
                    return Answer::Nothing;
                };
                match store.skip_dead_head(id, now).await {
                    Ok(e) => Answer::Skipped(self.idx(e.id)),
                    Err(e) => refused(e),
                }
            }
            Op::Delete { pick } => {
                let ids = self.picked(pick, &held[3]);
                match store.delete_events(&ids, now).await {
                    Ok(gone) => {
                        let mut gone: Vec<usize> = gone.iter().map(|id| self.idx(*id)).collect();
                        gone.sort_unstable();
                        Answer::Deleted(gone)
                    }
                    Err(e) => refused(e),
                }
            }
            Op::Pause { deleted, resume } => {
                let kind = if *deleted {
                    "file.deleted"
                } else {
                    "file.stored"
                };
                let changed = if *resume {
                    store.resume_type(kind, now).await
                } else {
                    store.pause_type(kind, now).await
                };
                match changed {
                    Ok(changed) => Answer::Paused(changed),
                    Err(e) => refused(e),
                }
            }
            Op::EditDead { pick, extra } => {
                let Some(id) = self.picked(&[*pick], &held[3]).first().copied() else {
                    return Answer::Nothing;
                };
                let edit = outbox_core::PayloadEdit {
                    payload: serde_json::json!({ "edited": pick }),
                    by: "ops".into(),
                    note: format!("fix {pick}"),
                };
                match store.edit_dead(id, &edit, u32::from(*extra), now).await {
                    Ok(e) => Answer::Revived(self.idx(e.id)),
                    Err(e) => refused(e),
                }
            }
            Op::Parked => {
                let parked = store.parked_keys(100).await.unwrap();
                Answer::Parked(
                    parked
                        .into_iter()
                        .map(|p| (p.key, self.idx(p.head), p.waiting))
                        .collect(),
                )
            }
        }
    }

    /// Every stored event with its history, keyed by emission order, and the paused types.
    async fn snapshot(&self) -> (Vec<(usize, OutboxEvent, History)>, Vec<PausedType>) {
        let page = self
            .h
            .store()
            .list(&EventFilter {
                limit: 10_000,
                ..Default::default()
            })
            .await
            .unwrap();
        assert!(page.undecodable.is_empty());
        let mut events = Vec::with_capacity(page.events.len());
        for mut e in page.events {
            let i = self.idx(e.id);
            let history = self.h.store().history(e.id).await.unwrap();
            e.id = EventId::from_uuid(uuid::Uuid::nil());
            events.push((i, e, history));
        }
        events.sort_by_key(|(i, _, _)| *i);
        (events, self.h.store().paused_types().await.unwrap())
    }
}

async fn differential<H: Harness>(ops: Vec<Op>, other: H, name: &str) -> Result<(), TestCaseError> {
    let mut memory = Side::new(MemoryHarness::new().await);
    let mut pg = Side::new(other);
    let mut leases: Vec<Option<Lease>> = vec![None; 3];
    // What each worker's last claim took, and (last) the dead events.
    let mut held: Vec<Vec<usize>> = vec![Vec::new(); 4 + LOCK_SLOTS];
    let mut result = Ok(());
    for (step, op) in ops.iter().enumerate() {
        if let Op::Claim {
            worker, lease_secs, ..
        } = op
        {
            let now = memory.h.clock().now_utc();
            leases[*worker] = Some(Lease {
                id: LeaseId::new(),
                holder: format!("w{worker}"),
                until: now + TimeDelta::seconds(i64::from(*lease_secs)),
            });
        }
        let m = memory.run(op, &leases, &held).await;
        let p = pg.run(op, &leases, &held).await;
        if let (Op::Claim { worker, .. }, Answer::Claimed(taken)) = (op, &m) {
            held[*worker].clone_from(taken);
        }
        if let (Op::LockClaim { slot, .. }, Answer::Locked(_, taken)) = (op, &m) {
            held[4 + *slot].clone_from(taken);
        }
        if m != p {
            result = Err(TestCaseError::fail(format!(
                "step {step} {op:?}: memory answered {m:?}, {name} {p:?}"
            )));
            break;
        }
        let ((ms, m_paused), (ps, p_paused)) = (memory.snapshot().await, pg.snapshot().await);
        held[3] = ms
            .iter()
            .filter(|(_, e, _)| e.status() == outbox_core::Status::Dead)
            .map(|(i, _, _)| *i)
            .collect();
        if m_paused != p_paused {
            result = Err(TestCaseError::fail(format!(
                "after step {step} {op:?}: paused {m_paused:?} vs {p_paused:?}"
            )));
            break;
        }
        if ms != ps {
            let first = ms
                .iter()
                .zip(&ps)
                .find(|(a, b)| a != b)
                .map(|(a, b)| format!("memory {a:#?}\n{name} {b:#?}"))
                .unwrap_or_else(|| format!("{} vs {} events", ms.len(), ps.len()));
            result = Err(TestCaseError::fail(format!(
                "after step {step} {op:?}, the stores differ:\n{first}"
            )));
            break;
        }
        let (mc, pc) = (
            memory.h.store().count_by_status().await.unwrap(),
            pg.h.store().count_by_status().await.unwrap(),
        );
        let (mcap, pcap) = (
            memory.h.store().count_capped(2).await.unwrap(),
            pg.h.store().count_capped(2).await.unwrap(),
        );
        if mc != pc || mcap != pcap {
            result = Err(TestCaseError::fail(format!(
                "after step {step}: counts {mc:?} vs {pc:?}, capped {mcap:?} vs {pcap:?}"
            )));
            break;
        }
    }
    // Open locked claims hold row locks that dropping the schema would wait for.
    for slot in 0..LOCK_SLOTS {
        memory.give_back(slot).await;
        pg.give_back(slot).await;
    }
    pg.h.cleanup().await;
    result
}

// Invariant: for any sequence of operations, the memory store and PostgreSQL give the same
// answer to every call and hold the same events with the same lifecycles after every step.
proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]
    #[test]
    fn memory_and_postgres_agree(ops in proptest::collection::vec(op(), 1..50)) {
        runtime().block_on(async { differential(ops, PgHarness::new().await, "PostgreSQL").await })?;
    }

    #[test]
    fn memory_and_mysql_agree(ops in proptest::collection::vec(op(), 1..50)) {
        runtime().block_on(async { differential(ops, MySqlHarness::new().await, "MySQL").await })?;
    }

    #[test]
    fn memory_and_sqlite_agree(ops in proptest::collection::vec(op(), 1..50)) {
        runtime().block_on(async { differential(ops, SqliteHarness::new().await, "SQLite").await })?;
    }
}
