//! Per-key ordering under random interleavings: units of work committing (or rolling back)
//! events on a few keys — on the memory store several open at once, ending in any order —,
//! three workers claiming, deliveries that succeed, fail retryably or
//! permanently, and leases that run out — on the memory store, and with fewer cases on
//! PostgreSQL. After every step: no key has two deliverable events, no key is stranded (events
//! waiting and no head), and every event handed to a worker has all its key's earlier events
//! delivered (or dead, under the skip policy). At the end, with nothing failing any more, every
//! committed event is delivered (dead heads retried, under the block policy), each key's in
//! commit order.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::Duration;

use chrono::TimeDelta;
use outbox_core::{
    DeadHead, Emit, EventFilter, EventId, Failure, Lease, LeaseId, NewEvent, OutboxStore, Outcome,
    Status, Transaction, Transactional,
};
use outbox_tests::conformance::{Harness, NowUtc};
use outbox_tests::harness::{MemoryHarness, PgHarness, runtime};
use proptest::prelude::*;

#[derive(Clone, Debug)]
enum Op {
    /// One unit of work: its events (a key from 0..3, or none), committed or rolled back.
    Unit {
        keys: Vec<Option<u8>>,
        commit: bool,
    },
    /// One event into the unit of work open in `unit` (opened first if none is): units stay open
    /// across other steps and end in any order. Memory store only: on PostgreSQL a unit holding
    /// a key blocks another unit's emit on it until it ends, which a sequential script cannot
    /// wait for (the PostgreSQL tests race real producers instead).
    Emit {
        unit: usize,
        key: Option<u8>,
    },
    /// Ends the unit of work open in `unit`, if any.
    End {
        unit: usize,
        commit: bool,
    },
    Claim {
        worker: usize,
        limit: usize,
    },
    /// The worker's deliveries end: per event, 0 delivered, 1 retryable, 2 permanent, 3 no
    /// answer (the worker dies; its lease will run out).
    Deliver {
        worker: usize,
        kinds: Vec<u8>,
    },
    /// Time passes; leases that ran out are taken back.
    Advance {
        secs: u8,
    },
}

/// [`op`], with units of work open at once.
fn op_with_open_units() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => op(),
        3 => (0usize..3, proptest::option::weighted(0.85, 0u8..3))
            .prop_map(|(unit, key)| Op::Emit { unit, key }),
        2 => (0usize..3, proptest::bool::weighted(0.8))
            .prop_map(|(unit, commit)| Op::End { unit, commit }),
    ]
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        3 => (proptest::collection::vec(proptest::option::weighted(0.85, 0u8..3), 1..4),
              proptest::bool::weighted(0.85))
            .prop_map(|(keys, commit)| Op::Unit { keys, commit }),
        3 => (0usize..3, 1usize..5).prop_map(|(worker, limit)| Op::Claim { worker, limit }),
        3 => (0usize..3, proptest::collection::vec(
                prop_oneof![6 => Just(0u8), 2 => Just(1u8), 1 => Just(2u8), 1 => Just(3u8)], 4))
            .prop_map(|(worker, kinds)| Op::Deliver { worker, kinds }),
        1 => (0u8..60).prop_map(|secs| Op::Advance { secs }),
    ]
}

const LEASE: i64 = 30;

/// A unit of work left open, with the keyed events emitted into it.
type Open<S> = (<S as Transactional>::Tx, Vec<(String, EventId)>);

/// The model: what was committed on each key, in commit order, and what was delivered.
struct Run<H: Harness>
where
    H::Store: Transactional,
{
    h: H,
    open: Vec<Option<Open<H::Store>>>,
    policy: DeadHead,
    committed: BTreeMap<String, Vec<EventId>>,
    key_of: HashMap<EventId, String>,
    delivered: BTreeMap<String, Vec<EventId>>,
    held: Vec<(Lease, Vec<EventId>)>,
    units: usize,
}

impl<H: Harness> Run<H>
where
    H::Store: Transactional,
{
    fn new(h: H, policy: DeadHead) -> Self {
        let lease = Lease {
            id: LeaseId::new(),
            holder: "none".into(),
            until: h.clock().now_utc(),
        };
        Self {
            h,
            open: (0..3).map(|_| None).collect(),
            policy,
            committed: BTreeMap::new(),
            key_of: HashMap::new(),
            delivered: BTreeMap::new(),
            held: vec![(lease, Vec::new()); 3],
            units: 0,
        }
    }

    async fn step(&mut self, op: &Op) -> Result<(), TestCaseError> {
        let store = self.h.store();
        let now = self.h.clock().now_utc();
        match op {
            Op::Unit { keys, commit } => {
                self.units += 1;
                let events = keys
                    .iter()
                    .enumerate()
                    .map(|(i, key)| {
                        let mut b = NewEvent::builder("order.changed", "order", "o")
                            .payload(serde_json::json!({ "unit": self.units, "i": i }))
                            .max_attempts(3);
                        if let Some(k) = key {
                            b = b.ordering_key(format!("k{k}"));
                        }
                        b.build().unwrap()
                    })
                    .collect();
                let emitted = self.h.emit(events, *commit).await.unwrap();
                if *commit {
                    for (key, e) in keys.iter().zip(emitted) {
                        if let Some(k) = key {
                            let key = format!("k{k}");
                            self.committed.entry(key.clone()).or_default().push(e.id());
                            self.key_of.insert(e.id(), key);
                        }
                    }
                }
            }
            Op::Emit { unit, key } => {
                self.units += 1;
                if self.open[*unit].is_none() {
                    let tx = store.begin().await.unwrap();
                    self.open[*unit] = Some((tx, Vec::new()));
                }
                let Some((tx, keyed)) = self.open[*unit].as_mut() else {
                    unreachable!("opened above");
                };
                let mut b = NewEvent::builder("order.changed", "order", "o")
                    .payload(serde_json::json!({ "unit": self.units }))
                    .max_attempts(3);
                if let Some(k) = key {
                    b = b.ordering_key(format!("k{k}"));
                }
                let id = tx.emit(b.build().unwrap()).await.unwrap().id();
                if let Some(k) = key {
                    keyed.push((format!("k{k}"), id));
                }
            }
            Op::End { unit, commit } => {
                if let Some((tx, keyed)) = self.open[*unit].take() {
                    if *commit {
                        tx.commit().await.unwrap();
                        for (key, id) in keyed {
                            self.committed.entry(key.clone()).or_default().push(id);
                            self.key_of.insert(id, key);
                        }
                    } else {
                        tx.rollback().await.unwrap();
                    }
                }
            }
            Op::Claim { worker, limit } => {
                let lease = Lease {
                    id: LeaseId::new(),
                    holder: format!("w{worker}"),
                    until: now + TimeDelta::seconds(LEASE),
                };
                let claimed = store.claim(&lease, *limit, now).await.unwrap();
                let ids: Vec<EventId> = claimed.iter().map(|e| e.id).collect();
                for id in &ids {
                    self.check_handed_over(*id).await?;
                }
                self.held[*worker] = (lease, ids);
            }
            Op::Deliver { worker, kinds } => {
                let lease = self.held[*worker].0.clone();
                let ids = std::mem::take(&mut self.held[*worker].1);
                let mut acks = Vec::new();
                let mut failures = Vec::new();
                for (i, id) in ids.iter().enumerate() {
                    match kinds[i % kinds.len()] {
                        0 => acks.push(*id),
                        1 => failures.push(Failure::retry(
                            *id,
                            "try again",
                            now + TimeDelta::seconds(5),
                        )),
                        2 => failures.push(Failure::permanent(*id, "rejected")),
                        _ => {}
                    }
                }
                if !acks.is_empty() {
                    let recorded = store.ack(lease.id, &acks, now).await.unwrap();
                    self.record(&recorded);
                }
                if !failures.is_empty() {
                    store.nack(lease.id, &failures, now).await.unwrap();
                }
            }
            Op::Advance { secs } => {
                self.h
                    .clock()
                    .advance(Duration::from_secs(u64::from(*secs)));
                store
                    .reclaim_expired(self.h.clock().now_utc())
                    .await
                    .unwrap();
            }
        }
        self.check_keys().await
    }

    fn record(&mut self, recorded: &[outbox_core::Recorded]) {
        for r in recorded.iter().filter(|r| r.outcome == Outcome::Delivered) {
            if let Some(key) = self.key_of.get(&r.id) {
                self.delivered.entry(key.clone()).or_default().push(r.id);
            }
        }
    }

    /// An event handed to a worker has every earlier event of its key delivered (or, under the
    /// skip policy, dead).
    async fn check_handed_over(&self, id: EventId) -> Result<(), TestCaseError> {
        let Some(key) = self.key_of.get(&id) else {
            return Ok(());
        };
        let store = self.h.store();
        for earlier in self.committed[key].iter().take_while(|e| **e != id) {
            let status = store.fetch_status(*earlier).await;
            let settled = status == Status::Delivered
                || (status == Status::Dead && self.policy == DeadHead::Skip);
            prop_assert!(
                settled,
                "{id} of {key} handed over while the earlier {earlier} is {status}"
            );
        }
        Ok(())
    }

    /// Every key has at most one deliverable event, and a key with waiting events has a head.
    async fn check_keys(&self) -> Result<(), TestCaseError> {
        let store = self.h.store();
        let parked: HashSet<String> = store
            .parked_keys(100)
            .await
            .unwrap()
            .into_iter()
            .map(|p| p.key)
            .collect();
        for (key, ids) in &self.committed {
            let mut heads = usize::from(parked.contains(key));
            let mut waiting = 0;
            for id in ids {
                match store.fetch_status(*id).await {
                    Status::Pending | Status::InFlight => heads += 1,
                    Status::Waiting => waiting += 1,
                    _ => {}
                }
            }
            prop_assert!(heads <= 1, "{key} has {heads} heads");
            prop_assert!(
                waiting == 0 || heads == 1,
                "{key} has {waiting} waiting events and no head"
            );
        }
        Ok(())
    }

    /// Nothing fails any more: dead heads are retried (block policy), and everything is
    /// delivered; each key's deliveries are its commit order (less its dead, under skip).
    async fn drain(&mut self) -> Result<(), TestCaseError> {
        // Units still open end now, in slot order.
        for unit in 0..self.open.len() {
            self.step(&Op::End { unit, commit: true }).await?;
        }
        let store = self.h.store();
        for _ in 0..200 {
            let now = self.h.clock().now_utc();
            if self.policy == DeadHead::Block {
                for p in store.parked_keys(100).await.unwrap() {
                    store.retry_dead(p.head, 1, now).await.unwrap();
                }
            }
            let lease = Lease {
                id: LeaseId::new(),
                holder: "drain".into(),
                until: now + TimeDelta::seconds(LEASE),
            };
            let claimed = store.claim(&lease, 100, now).await.unwrap();
            let ids: Vec<EventId> = claimed.iter().map(|e| e.id).collect();
            for id in &ids {
                self.check_handed_over(*id).await?;
            }
            if !ids.is_empty() {
                let recorded = store.ack(lease.id, &ids, now).await.unwrap();
                self.record(&recorded);
            }
            self.check_keys().await?;
            let c = store.count_by_status().await.unwrap();
            if c.waiting + c.pending + c.in_flight == 0 {
                break;
            }
            self.h.clock().advance(Duration::from_secs(60));
            store
                .reclaim_expired(self.h.clock().now_utc())
                .await
                .unwrap();
        }
        let c = store.count_by_status().await.unwrap();
        prop_assert_eq!(
            c.waiting + c.pending + c.in_flight,
            0,
            "not everything was delivered: {:?}",
            c
        );
        for (key, ids) in &self.committed {
            let mut expected = Vec::new();
            for id in ids {
                if store.fetch_status(*id).await == Status::Delivered {
                    expected.push(*id);
                }
            }
            if self.policy == DeadHead::Block {
                prop_assert_eq!(expected.len(), ids.len(), "{} has undelivered events", key);
            }
            let delivered = self.delivered.get(key).cloned().unwrap_or_default();
            prop_assert_eq!(
                &delivered,
                &expected,
                "{} delivered out of commit order",
                key
            );
        }
        Ok(())
    }
}

/// A status read that a test can rely on.
trait FetchStatus {
    async fn fetch_status(&self, id: EventId) -> Status;
}

impl<S: OutboxStore> FetchStatus for S {
    async fn fetch_status(&self, id: EventId) -> Status {
        self.get(id).await.unwrap().expect("event kept").status()
    }
}

async fn run<H: Harness>(h: H, policy: DeadHead, ops: Vec<Op>) -> Result<(), TestCaseError>
where
    H::Store: Transactional,
{
    let mut run = Run::new(h, policy);
    for op in &ops {
        run.step(op).await?;
    }
    run.drain().await?;
    let page = run
        .h
        .store()
        .list(&EventFilter {
            limit: 10_000,
            ..EventFilter::default()
        })
        .await
        .unwrap();
    prop_assert!(page.undecodable.is_empty());
    run.h.cleanup().await;
    Ok(())
}

fn policy() -> impl Strategy<Value = DeadHead> {
    prop_oneof![Just(DeadHead::Block), Just(DeadHead::Skip)]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]
    #[test]
    fn memory_keeps_every_key_in_commit_order(
        policy in policy(),
        ops in proptest::collection::vec(op_with_open_units(), 1..80),
    ) {
        runtime().block_on(async {
            let h = match policy {
                DeadHead::Skip => MemoryHarness::skipping_dead_heads().await,
                _ => MemoryHarness::new().await,
            };
            run(h, policy, ops).await
        })?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn postgres_keeps_every_key_in_commit_order(
        policy in policy(),
        ops in proptest::collection::vec(op(), 1..60),
    ) {
        runtime().block_on(async {
            let h = PgHarness::with_config(4, |c| c.with_dead_head(policy)).await;
            run(h, policy, ops).await
        })?;
    }
}
