//! The conformance suite: what every [`OutboxStore`] must do, as plain async functions over a
//! [`Harness`]. A backend is done when [`conformance_tests!`](crate::conformance_tests) passes on
//! it unchanged.

use std::time::Duration;

use async_trait::async_trait;
use chrono::TimeDelta;
use outbox_core::{Deferral, LockedBatch, PayloadEdit, Settlement};
use outbox_core::{
    Emitted, EventFilter, EventId, Failure, Lease, LeaseId, ManualClock, NewEvent, OutboxStore,
    OutboxStoreExt, Outcome, Recorded, Status, StoreError, TransitionError,
};
use serde_json::json;

/// One fresh, empty store for one test, with the clock it stamps emits with.
#[async_trait]
pub trait Harness: Send + Sync {
    /// The store under test.
    type Store: OutboxStore + Clone + 'static;

    /// The store.
    fn store(&self) -> Self::Store;

    /// The clock the store stamps emitted events with; tests move it.
    fn clock(&self) -> &ManualClock;

    /// Emits `events` in one unit of work (a transaction), then commits or rolls back.
    async fn emit(&self, events: Vec<NewEvent>, commit: bool) -> Result<Vec<Emitted>, StoreError>;

    /// Removes what the test left behind (its schema, say); called when a case passes.
    async fn cleanup(&self) {}
}

const LEASE: Duration = Duration::from_secs(30);

pub(crate) fn event(n: usize) -> NewEvent {
    NewEvent::builder("file.stored", "upload", format!("u-{n}"))
        .payload(json!({ "n": n }))
        .build()
        .expect("valid event")
}

async fn emit_n<H: Harness>(h: &H, n: usize) -> Vec<EventId> {
    emit_ids(h, (0..n).map(event).collect()).await
}

/// Emits and commits `events` in one unit of work; their ids, in order.
pub async fn emit_ids<H: Harness>(h: &H, events: Vec<NewEvent>) -> Vec<EventId> {
    let emitted = h.emit(events, true).await.expect("emit");
    emitted.iter().map(Emitted::id).collect()
}

async fn claim<H: Harness>(h: &H, worker: &str, limit: usize) -> (Lease, Vec<EventId>) {
    let (lease, events) = h
        .store()
        .claim_for(worker, limit, LEASE, h.clock().now_utc())
        .await
        .expect("claim");
    (lease, events.iter().map(|e| e.id).collect())
}

/// The events a call reported as [`Outcome::LeaseLost`].
pub fn lost(recorded: &[Recorded]) -> Vec<EventId> {
    recorded
        .iter()
        .filter(|r| r.outcome == Outcome::LeaseLost)
        .map(|r| r.id)
        .collect()
}

/// Reads "now" from a manual clock (small helper so tests read naturally).
pub trait NowUtc {
    /// The clock's current time.
    fn now_utc(&self) -> chrono::DateTime<chrono::Utc>;
}

impl NowUtc for ManualClock {
    fn now_utc(&self) -> chrono::DateTime<chrono::Utc> {
        outbox_core::Clock::now(self)
    }
}

/// A committed emit stores exactly the events asked for, every field intact, pending and due.
pub async fn commit_stores_exactly_what_was_emitted<H: Harness>(h: &H) {
    let now = h.clock().now_utc();
    let later = now + TimeDelta::seconds(90);
    let full = NewEvent::builder("order.paid", "order", "o-17")
        .payload(json!({ "amount": 1250, "currency": "EUR", "lines": [1, 2], "note": "é ✓" }))
        .header("traceparent", "00-abc-def-01")
        .header("correlation-id", "c-1")
        .idempotency_key("order-17-paid")
        .ordering_key("o-17")
        .deliver_after(later)
        .max_attempts(3)
        .build()
        .expect("valid");
    let emitted = h
        .emit(vec![full.clone(), event(1)], true)
        .await
        .expect("emit");
    assert!(
        matches!(emitted[..], [Emitted::Created(_), Emitted::Created(_)]),
        "{emitted:?}"
    );

    let store = h.store();
    let stored = store.fetch(emitted[0].id()).await.expect("stored");
    assert_eq!(stored.event_type, "order.paid");
    assert_eq!(
        (stored.aggregate_type.as_str(), stored.aggregate_id.as_str()),
        ("order", "o-17")
    );
    assert_eq!(&stored.payload, full.payload());
    assert_eq!(&stored.headers, full.headers());
    assert_eq!(stored.idempotency_key.as_deref(), Some("order-17-paid"));
    assert_eq!(stored.ordering_key.as_deref(), Some("o-17"));
    assert_eq!(stored.status(), Status::Pending);
    assert_eq!((stored.attempts(), stored.lifecycle.max_attempts), (0, 3));
    assert_eq!(stored.lifecycle.next_attempt_at, later);
    assert_eq!(stored.created_at, now);
    assert!(stored.lifecycle.lease.is_none() && stored.lifecycle.last_error.is_none());

    let plain = store.fetch(emitted[1].id()).await.expect("stored");
    assert_eq!(
        plain.lifecycle.next_attempt_at, now,
        "without deliver_after an event is due at once"
    );
    assert!(plain.lifecycle.max_attempts >= 1);
    assert_eq!(store.count_by_status().await.expect("count").total(), 2);
}

/// A rolled-back unit of work leaves no event behind.
pub async fn rollback_stores_nothing<H: Harness>(h: &H) {
    let emitted = h.emit(vec![event(1), event(2)], false).await.expect("emit");
    assert_eq!(emitted.len(), 2);
    let store = h.store();
    assert_eq!(store.count_by_status().await.expect("count").total(), 0);
    assert!(store.get(emitted[0].id()).await.expect("get").is_none());
    let (_, claimed) = claim(h, "w", 10).await;
    assert!(claimed.is_empty());
}

/// Emitting the same idempotency key twice stores one event and says which.
pub async fn idempotency_key_stores_one_event<H: Harness>(h: &H) {
    let keyed = |n| {
        NewEvent::builder("file.stored", "upload", format!("{n}"))
            .idempotency_key("k-1")
            .build()
    };
    let first = h
        .emit(vec![keyed(1).expect("valid")], true)
        .await
        .expect("emit");
    let again = h
        .emit(vec![keyed(2).expect("valid")], true)
        .await
        .expect("emit");
    assert!(matches!(first[0], Emitted::Created(_)));
    assert_eq!(again[0], Emitted::Duplicate(first[0].id()));
    // Twice in one unit of work, too.
    let both = h
        .emit(
            vec![keyed(3).expect("valid"), keyed(4).expect("valid")],
            true,
        )
        .await
        .expect("emit");
    assert_eq!(both, vec![Emitted::Duplicate(first[0].id()); 2]);
    let all = h
        .store()
        .list(&EventFilter::default())
        .await
        .expect("list")
        .events;
    assert_eq!(all.len(), 1);
    assert_eq!(
        all[0].aggregate_id, "1",
        "the first event is kept, not replaced"
    );
}

/// Only due events are claimed, earliest due first, at most `limit`, never twice.
pub async fn claim_takes_due_events_in_order<H: Harness>(h: &H) {
    let now = h.clock().now_utc();
    let delayed = NewEvent::builder("file.stored", "upload", "later")
        .deliver_after(now + TimeDelta::seconds(60))
        .build()
        .expect("valid");
    let ids = emit_n(h, 3).await;
    let later = h.emit(vec![delayed], true).await.expect("emit")[0].id();

    let (lease_a, a) = claim(h, "a", 2).await;
    assert_eq!(a, ids[..2].to_vec());
    let (_, b) = claim(h, "b", 10).await;
    assert_eq!(
        b,
        ids[2..].to_vec(),
        "claimed events are skipped; not-yet-due ones too"
    );
    let held = h.store().fetch(ids[0]).await.expect("get");
    assert_eq!(held.status(), Status::InFlight);
    let lease = held.lifecycle.lease.expect("lease");
    assert_eq!(
        (lease.id, lease.holder.as_str(), lease.until),
        (lease_a.id, "a", lease_a.until)
    );

    h.clock().advance(Duration::from_secs(60));
    let (_, c) = claim(h, "c", 10).await;
    assert_eq!(c, vec![later]);
    let (_, none) = claim(h, "d", 10).await;
    assert!(none.is_empty());
}

/// An ack marks events delivered, counts the attempt and drops the lease.
pub async fn ack_marks_delivered<H: Harness>(h: &H) {
    let ids = emit_n(h, 2).await;
    let (lease, _) = claim(h, "w", 10).await;
    h.clock().advance(Duration::from_secs(1));
    let now = h.clock().now_utc();
    h.store().ack(lease.id, &ids, now).await.expect("ack");
    for id in ids {
        let e = h.store().fetch(id).await.expect("get");
        assert_eq!((e.status(), e.attempts()), (Status::Delivered, 1));
        assert_eq!(e.lifecycle.delivered_at, Some(now));
        assert_eq!(e.updated_at, now);
        assert!(e.lifecycle.lease.is_none());
    }
    let counts = h.store().count_by_status().await.expect("count");
    assert_eq!(
        (counts.delivered, counts.pending, counts.in_flight),
        (2, 0, 0)
    );
}

/// A retryable nack reschedules; a permanent one, or the last attempt, kills.
pub async fn nack_reschedules_or_kills<H: Harness>(h: &H) {
    let two = NewEvent::builder("file.stored", "upload", "two")
        .max_attempts(2)
        .build()
        .expect("valid");
    let ids: Vec<EventId> = h
        .emit(vec![event(0), event(1), two], true)
        .await
        .expect("emit")
        .iter()
        .map(Emitted::id)
        .collect();
    let (lease, _) = claim(h, "w", 10).await;
    let now = h.clock().now_utc();
    let retry_at = now + TimeDelta::seconds(30);
    let failures = vec![
        Failure::retry(ids[0], "broker down", retry_at),
        Failure::permanent(ids[1], "no route"),
        Failure::retry(ids[2], "broker down", retry_at),
    ];
    h.store()
        .nack(lease.id, &failures, now)
        .await
        .expect("nack");

    let retried = h.store().fetch(ids[0]).await.expect("get");
    assert_eq!((retried.status(), retried.attempts()), (Status::Pending, 1));
    assert_eq!(retried.lifecycle.next_attempt_at, retry_at);
    assert_eq!(retried.lifecycle.last_error.as_deref(), Some("broker down"));
    assert!(retried.lifecycle.lease.is_none());
    let killed = h.store().fetch(ids[1]).await.expect("get");
    assert_eq!((killed.status(), killed.attempts()), (Status::Dead, 1));
    assert_eq!(killed.lifecycle.last_error.as_deref(), Some("no route"));

    let (_, early) = claim(h, "w", 10).await;
    assert!(
        early.is_empty(),
        "rescheduled events are not due before retry_at"
    );

    h.clock().advance(Duration::from_secs(30));
    let (lease, again) = claim(h, "w", 10).await;
    assert_eq!(again, vec![ids[0], ids[2]]);
    let now = h.clock().now_utc();
    let last = Failure::retry(ids[2], "still down", now);
    h.store().nack(lease.id, &[last], now).await.expect("nack");
    let exhausted = h.store().fetch(ids[2]).await.expect("get");
    assert_eq!(
        (exhausted.status(), exhausted.attempts()),
        (Status::Dead, 2),
        "the last attempt kills"
    );
}

/// A worker whose lease expired and was taken over cannot ack, nack, release or renew; the
/// event is left unchanged, while the rest of the same call is applied.
pub async fn stale_lease_is_fenced<H: Harness>(h: &H) {
    let ids = emit_n(h, 2).await;
    let (stale, _) = claim(h, "slow", 1).await;
    let (mine, _) = claim(h, "fast", 1).await;
    h.clock().advance(LEASE + Duration::from_secs(1));
    let store = h.store();
    let now = h.clock().now_utc();
    let reclaimed = store.reclaim_expired(now).await.expect("reclaim");
    assert_eq!((reclaimed.pending, reclaimed.dead), (2, 0));
    let (fresh, taken) = claim(h, "rescuer", 1).await;
    assert_eq!(taken, vec![ids[0]]);
    let before = store.fetch(ids[0]).await.expect("get");

    let lost = |r: Result<Vec<Recorded>, StoreError>| lost(&r.expect("recorded"));
    assert_eq!(
        lost(store.ack(stale.id, &[ids[0]], now).await),
        vec![ids[0]]
    );
    let failure = Failure::permanent(ids[0], "x");
    assert_eq!(
        lost(store.nack(stale.id, &[failure], now).await),
        vec![ids[0]]
    );
    assert_eq!(
        lost(store.release(stale.id, &[ids[0]], now).await),
        vec![ids[0]]
    );
    assert_eq!(
        store
            .renew(stale.id, now + TimeDelta::hours(1), now)
            .await
            .expect("renew"),
        0
    );
    assert_eq!(
        store.fetch(ids[0]).await.expect("get"),
        before,
        "the stale holder changed nothing"
    );

    // A mixed call: the held event is applied, the lost one reported.
    let (again, _) = claim(h, "fast", 1).await;
    assert_eq!(
        lost(store.ack(again.id, &[ids[1], ids[0]], now).await),
        vec![ids[0]]
    );
    assert_eq!(
        store.fetch(ids[1]).await.expect("get").status(),
        Status::Delivered
    );
    let _ = mine;
    store
        .ack(fresh.id, &[ids[0]], now)
        .await
        .expect("the current holder may ack");
    let done = store.fetch(ids[0]).await.expect("get");
    assert_eq!(
        (done.status(), done.attempts()),
        (Status::Delivered, 2),
        "the expired attempt counted"
    );
}

/// A release gives events back untried: pending, due now, attempt not counted.
pub async fn release_returns_events_untried<H: Harness>(h: &H) {
    let ids = emit_n(h, 1).await;
    let (lease, _) = claim(h, "w", 1).await;
    h.clock().advance(Duration::from_secs(2));
    let now = h.clock().now_utc();
    h.store()
        .release(lease.id, &ids, now)
        .await
        .expect("release");
    let e = h.store().fetch(ids[0]).await.expect("get");
    assert_eq!(
        (e.status(), e.attempts(), e.lifecycle.next_attempt_at),
        (Status::Pending, 0, now)
    );
    assert!(e.lifecycle.lease.is_none());
    assert_eq!(claim(h, "w2", 1).await.1, ids);
}

/// A deferral gives events back untried for later: pending, due at the time asked (read on the
/// store's clock), the attempt not counted, the reason kept; not claimable before then; a
/// stale lease is fenced.
pub async fn defer_returns_events_untried_for_later<H: Harness>(h: &H) {
    let ids = emit_n(h, 2).await;
    let (lease, _) = claim(h, "w", 2).await;
    let store = h.store();
    let now = h.clock().now_utc();
    let until = now + TimeDelta::seconds(30);
    let recorded = store
        .defer(lease.id, &ids[..1], until, "route paused", now)
        .await
        .expect("defer");
    assert_eq!(
        recorded,
        vec![Recorded {
            id: ids[0],
            outcome: Outcome::Deferred { at: until }
        }]
    );
    let e = store.fetch(ids[0]).await.expect("get");
    assert_eq!(
        (e.status(), e.attempts(), e.lifecycle.next_attempt_at),
        (Status::Pending, 0, until)
    );
    assert_eq!(e.lifecycle.last_error.as_deref(), Some("route paused"));
    assert!(e.lifecycle.lease.is_none());
    // Not before its time; then claimable again.
    h.clock().advance(Duration::from_secs(29));
    assert!(claim(h, "w2", 1).await.1.is_empty());
    h.clock().advance(Duration::from_secs(1));
    assert_eq!(claim(h, "w2", 1).await.1, vec![ids[0]]);
    // The first lease no longer holds it: fenced.
    let now = h.clock().now_utc();
    assert_eq!(
        store
            .defer(lease.id, &ids[..1], now, "again", now)
            .await
            .expect("defer"),
        vec![Recorded {
            id: ids[0],
            outcome: Outcome::LeaseLost
        }]
    );
}

/// Renewing a lease keeps its events from being reclaimed at the old expiry.
pub async fn renew_extends_the_lease<H: Harness>(h: &H) {
    let ids = emit_n(h, 2).await;
    let (lease, _) = claim(h, "w", 2).await;
    let store = h.store();
    h.clock().advance(Duration::from_secs(20));
    let now = h.clock().now_utc();
    let until = now + TimeDelta::seconds(30);
    assert_eq!(store.renew(lease.id, until, now).await.expect("renew"), 2);
    assert_eq!(
        store
            .fetch(ids[0])
            .await
            .expect("get")
            .lifecycle
            .lease
            .map(|l| l.until),
        Some(until)
    );
    h.clock().advance(Duration::from_secs(20)); // past the first expiry, before the renewed one
    let reclaimed = store
        .reclaim_expired(h.clock().now_utc())
        .await
        .expect("reclaim");
    assert_eq!((reclaimed.pending, reclaimed.dead), (0, 0));
    store
        .ack(lease.id, &ids, h.clock().now_utc())
        .await
        .expect("still held");
}

/// Expired leases are reclaimed (the attempt counts); an event out of attempts dies.
pub async fn reclaim_expired_counts_the_attempt<H: Harness>(h: &H) {
    let once = NewEvent::builder("file.stored", "upload", "once")
        .max_attempts(1)
        .build()
        .expect("valid");
    let ids: Vec<EventId> = h
        .emit(vec![event(0), once], true)
        .await
        .expect("emit")
        .iter()
        .map(Emitted::id)
        .collect();
    claim(h, "crashed", 10).await;
    let store = h.store();
    let early = store
        .reclaim_expired(h.clock().now_utc())
        .await
        .expect("reclaim");
    assert_eq!(
        (early.pending, early.dead),
        (0, 0),
        "live leases are left alone"
    );
    h.clock().advance(LEASE);
    let r = store
        .reclaim_expired(h.clock().now_utc())
        .await
        .expect("reclaim");
    assert_eq!((r.pending, r.dead), (1, 1));
    let back = store.fetch(ids[0]).await.expect("get");
    assert_eq!((back.status(), back.attempts()), (Status::Pending, 1));
    assert!(
        back.lifecycle
            .last_error
            .as_deref()
            .is_some_and(|e| e.contains("crashed"))
    );
    let dead = store.fetch(ids[1]).await.expect("get");
    assert_eq!((dead.status(), dead.attempts()), (Status::Dead, 1));
}

/// Purging deletes delivered events older than the cut-off and nothing else.
pub async fn purge_deletes_only_old_delivered<H: Harness>(h: &H) {
    let ids = emit_n(h, 3).await;
    let (lease, _) = claim(h, "w", 1).await;
    h.store()
        .ack(lease.id, &ids[..1], h.clock().now_utc())
        .await
        .expect("ack");
    h.clock().advance(Duration::from_secs(3600));
    let (lease, _) = claim(h, "w", 1).await;
    h.store()
        .ack(lease.id, &ids[1..2], h.clock().now_utc())
        .await
        .expect("ack");
    let cutoff = h.clock().now_utc() - TimeDelta::seconds(60);
    let now = h.clock().now_utc();
    assert_eq!(
        h.store().purge_delivered(cutoff, now).await.expect("purge"),
        1
    );
    assert!(h.store().get(ids[0]).await.expect("get").is_none());
    assert!(
        h.store().get(ids[1]).await.expect("get").is_some(),
        "recent delivery kept"
    );
    assert!(
        h.store().get(ids[2]).await.expect("get").is_some(),
        "pending kept"
    );
}

/// Listing filters by status, type and aggregate, and pages by id.
pub async fn list_filters_and_pages<H: Harness>(h: &H) {
    let other = NewEvent::builder("order.paid", "order", "o-1")
        .build()
        .expect("valid");
    let mut ids = emit_n(h, 5).await;
    let order = h.emit(vec![other], true).await.expect("emit")[0].id();
    let store = h.store();
    let (lease, _) = claim(h, "w", 1).await;
    store
        .ack(lease.id, &ids[..1], h.clock().now_utc())
        .await
        .expect("ack");

    let list = |f: EventFilter| {
        let store = store.clone();
        async move {
            store
                .list(&f)
                .await
                .expect("list")
                .events
                .iter()
                .map(|e| e.id)
                .collect::<Vec<_>>()
        }
    };
    let by_type = EventFilter {
        event_type: Some("order.paid".into()),
        ..Default::default()
    };
    assert_eq!(list(by_type).await, vec![order]);
    let by_status = EventFilter {
        status: Some(Status::Delivered),
        ..Default::default()
    };
    assert_eq!(list(by_status).await, ids[..1].to_vec());
    let by_aggregate = EventFilter {
        aggregate_type: Some("upload".into()),
        aggregate_id: Some("u-3".into()),
        ..Default::default()
    };
    assert_eq!(list(by_aggregate).await, vec![ids[3]]);

    ids.push(order);
    let page1 = list(EventFilter {
        limit: 4,
        ..Default::default()
    })
    .await;
    let page2 = list(EventFilter {
        limit: 4,
        after: page1.last().copied(),
        ..Default::default()
    })
    .await;
    assert_eq!(
        [page1, page2].concat(),
        ids,
        "pages cover every event once, in id order"
    );
}

/// Listing filters by type prefix, idempotency key and creation time, and pages newest first:
/// `next_after` continues each order where its page ended.
pub async fn list_filters_by_prefix_key_and_time_newest_first<H: Harness>(h: &H) {
    let typed = |event_type: &str, key: Option<&str>| {
        let mut b = NewEvent::builder(event_type, "order", "o-1");
        if let Some(k) = key {
            b = b.idempotency_key(k);
        }
        b.build().expect("valid")
    };
    let early = emit_ids(
        h,
        vec![
            typed("order.paid", None),
            typed("order.shipped", Some("ship-1")),
        ],
    )
    .await;
    h.clock().advance(Duration::from_secs(60));
    let late = emit_ids(
        h,
        vec![typed("orders.archived", None), typed("order.paid", None)],
    )
    .await;
    let store = h.store();
    let list = |f: EventFilter| {
        let store = store.clone();
        async move {
            let page = store.list(&f).await.expect("list");
            let ids: Vec<EventId> = page.events.iter().map(|e| e.id).collect();
            (ids, page.next_after(&f))
        }
    };
    let prefix = EventFilter {
        event_type_prefix: Some("order.".into()),
        ..Default::default()
    };
    assert_eq!(list(prefix).await.0, vec![early[0], early[1], late[1]]);
    let key = EventFilter {
        idempotency_key: Some("ship-1".into()),
        ..Default::default()
    };
    assert_eq!(list(key).await.0, vec![early[1]]);
    let boundary = h.clock().now_utc();
    let since = EventFilter {
        created_from: Some(boundary),
        ..Default::default()
    };
    assert_eq!(
        list(since).await.0,
        late,
        "created at the boundary or later"
    );
    let before = EventFilter {
        created_before: Some(boundary),
        ..Default::default()
    };
    assert_eq!(list(before).await.0, early, "created before the boundary");

    let all: Vec<EventId> = early.iter().chain(&late).copied().collect();
    let newest = EventFilter {
        newest_first: true,
        limit: 3,
        ..Default::default()
    };
    let (page1, next) = list(newest.clone()).await;
    let (page2, _) = list(EventFilter {
        after: next,
        ..newest
    })
    .await;
    let mut expected = all.clone();
    expected.reverse();
    assert_eq!(
        [page1, page2].concat(),
        expected,
        "newest first, every event once"
    );
}

/// Deleting events removes whatever it names except what a worker holds (in flight, or locked):
/// a deleted head hands its key to the next event, a deleted waiting event leaves the queue.
pub async fn delete_events_removes_all_but_what_a_worker_holds<H: Harness>(h: &H) {
    let held = emit_n(h, 2).await;
    let (lease, leased) = claim(h, "w", 1).await;
    assert_eq!(leased, held[..1].to_vec());
    let (batch, locked) = claim_locked(h, 1).await;
    assert_eq!(locked, held[1..].to_vec());
    let keyed_ids = emit_ids(
        h,
        vec![keyed("k", 1), keyed("k", 2), keyed("k", 3), event(9)],
    )
    .await;
    let store = h.store();
    let now = h.clock().now_utc();
    let mut asked = held.clone();
    asked.extend([keyed_ids[0], keyed_ids[2], keyed_ids[3], EventId::new()]);
    let mut deleted = store.delete_events(&asked, now).await.expect("delete");
    deleted.sort();
    let mut expected = vec![keyed_ids[0], keyed_ids[2], keyed_ids[3]];
    expected.sort();
    assert_eq!(deleted, expected, "held and unknown events are skipped");
    for id in &expected {
        assert!(store.get(*id).await.expect("get").is_none());
    }
    assert_eq!(
        status_of(h, keyed_ids[1]).await,
        Status::Pending,
        "promoted"
    );
    drop(batch);
    let (_, got) = claim(h, "w2", 10).await;
    assert!(got.contains(&keyed_ids[1]), "{got:?}");
    assert_eq!(status_of(h, held[0]).await, Status::InFlight);
    let recorded = store
        .ack(lease.id, &held[..1], h.clock().now_utc())
        .await
        .expect("ack");
    assert_eq!(
        recorded[0].outcome,
        Outcome::Delivered,
        "still the worker's"
    );
}

/// Counting by status sees every status.
pub async fn count_by_status_sees_every_status<H: Harness>(h: &H) {
    let ids = emit_n(h, 4).await;
    let store = h.store();
    let (lease, _) = claim(h, "w", 3).await;
    let now = h.clock().now_utc();
    store.ack(lease.id, &ids[..1], now).await.expect("ack");
    store
        .nack(lease.id, &[Failure::permanent(ids[1], "x")], now)
        .await
        .expect("nack");
    let c = store.count_by_status().await.expect("count");
    assert_eq!((c.pending, c.in_flight, c.delivered, c.dead), (1, 1, 1, 1));
    assert_eq!(c.get(Status::InFlight), 1);
}

/// An operator retry revives a dead event with more attempts; other statuses are refused.
pub async fn retry_dead_revives<H: Harness>(h: &H) {
    let ids = emit_n(h, 2).await;
    let store = h.store();
    let (lease, _) = claim(h, "w", 1).await;
    let now = h.clock().now_utc();
    store
        .nack(lease.id, &[Failure::permanent(ids[0], "bad")], now)
        .await
        .expect("nack");
    let revived = store.retry_dead(ids[0], 3, now).await.expect("revive");
    assert_eq!(
        (
            revived.status(),
            revived.attempts(),
            revived.lifecycle.max_attempts
        ),
        (Status::Pending, 1, 4)
    );
    assert_eq!(revived.lifecycle.next_attempt_at, now);
    assert_eq!(store.fetch(ids[0]).await.expect("get"), revived);
    assert_eq!(
        claim(h, "w", 10).await.1,
        ids,
        "the revived event is claimable again"
    );

    match store.retry_dead(ids[1], 1, now).await {
        Err(StoreError::Transition {
            id,
            source: TransitionError::Illegal { from, .. },
        }) => {
            assert_eq!((id, from), (ids[1], Status::InFlight))
        }
        other => panic!("expected an illegal transition, got {other:?}"),
    }
    let missing = EventId::new();
    assert!(
        matches!(store.retry_dead(missing, 1, now).await, Err(StoreError::NotFound(id)) if id == missing)
    );
}

/// A claim with a fresh lease id never returns an event another claim holds (fencing token).
pub async fn claims_get_distinct_leases<H: Harness>(h: &H) {
    emit_n(h, 2).await;
    let now = h.clock().now_utc();
    let a = Lease {
        id: LeaseId::new(),
        holder: "w".into(),
        until: now + TimeDelta::seconds(30),
    };
    let b = Lease {
        id: LeaseId::new(),
        holder: "w".into(),
        until: now + TimeDelta::seconds(30),
    };
    let first = h.store().claim(&a, 1, now).await.expect("claim");
    let second = h.store().claim(&b, 1, now).await.expect("claim");
    assert_ne!(first[0].id, second[0].id);
    let refused = h.store().ack(b.id, &[first[0].id], now).await.expect("ack");
    assert_eq!(lost(&refused), vec![first[0].id]);
}

/// For a store set to delete delivered events (`PgConfig::with_delete_delivered`,
/// `MemoryStoreBuilder::delete_delivered`): an ack deletes keyless events, under the lease
/// fence, and keeps dead events and keyed ones (whose key must go on refusing duplicates).
/// Not in [`conformance_tests!`](crate::conformance_tests)'s default list: it needs such a store.
pub async fn deleting_delivered_keeps_keys_and_the_dead<H: Harness>(h: &H) {
    let keyed = || {
        NewEvent::builder("file.stored", "upload", "keyed")
            .idempotency_key("upload-keyed-stored")
            .build()
            .expect("valid event")
    };
    let mut events: Vec<NewEvent> = (0..4).map(event).collect();
    events.push(keyed());
    let ids = emit_ids(h, events).await;
    let (lease, claimed) = claim(h, "w", 10).await;
    assert_eq!(claimed.len(), 5);
    let now = h.clock().now_utc();

    // A lease that is not held deletes nothing.
    let refused = h
        .store()
        .ack(LeaseId::new(), &ids[..1], now)
        .await
        .expect("ack");
    assert_eq!(lost(&refused), ids[..1].to_vec());
    let held = h.store().fetch(ids[0]).await.expect("still there");
    assert_eq!(held.status(), Status::InFlight);

    let delivered = [ids[0], ids[1], ids[2], ids[4]];
    h.store().ack(lease.id, &delivered, now).await.expect("ack");
    let failure = Failure::permanent(ids[3], "refused");
    h.store()
        .nack(lease.id, &[failure], now)
        .await
        .expect("nack");

    for id in &ids[..3] {
        assert!(
            h.store().get(*id).await.expect("get").is_none(),
            "{id} was kept"
        );
    }
    assert_eq!(
        h.store().fetch(ids[3]).await.expect("dead").status(),
        Status::Dead
    );
    let kept = h.store().fetch(ids[4]).await.expect("keyed");
    assert_eq!((kept.status(), kept.attempts()), (Status::Delivered, 1));
    let left = h
        .store()
        .list(&EventFilter::default())
        .await
        .expect("list")
        .events;
    assert_eq!(
        left.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![ids[3], ids[4]]
    );
    let c = h.store().count_by_status().await.expect("count");
    assert_eq!((c.pending, c.in_flight, c.delivered, c.dead), (0, 0, 1, 1));
    let again = h.emit(vec![keyed()], true).await.expect("emit again");
    assert_eq!(again, vec![Emitted::Duplicate(ids[4])]);
}

/// Claims under locks for `HOLD`.
async fn claim_locked<H: Harness>(h: &H, limit: usize) -> (Box<dyn LockedBatch>, Vec<EventId>) {
    let claim = h
        .store()
        .claim_locked("w1", limit, HOLD, h.clock().now_utc())
        .await
        .expect("locked claim");
    let ids = claim.events.iter().map(|e| e.id).collect();
    (claim.batch, ids)
}

const HOLD: Duration = Duration::from_secs(30);

/// A locked claim takes due events oldest first, handing each out whole, and leaves them
/// pending to every reader, while every other claim, locked or leased, skips them; settling
/// them all delivered writes what an ack under a lease would.
pub async fn a_locked_claim_is_skipped_by_every_other_claim<H: Harness>(h: &H) {
    let ids = emit_n(h, 3).await;
    let taken = h
        .store()
        .claim_locked("w1", 2, HOLD, h.clock().now_utc())
        .await
        .expect("locked claim");
    let claimed: Vec<EventId> = taken.events.iter().map(|e| e.id).collect();
    assert_eq!(claimed, ids[..2].to_vec());
    for (n, event) in taken.events.iter().enumerate() {
        assert_eq!(
            event.payload,
            json!({ "n": n }),
            "handed out with its payload"
        );
        let stored = h.store().fetch(event.id).await.expect("get");
        assert_eq!(event, &stored, "handed out whole, as stored");
    }
    let batch = taken.batch;
    let c = h.store().count_by_status().await.expect("count");
    assert_eq!((c.pending, c.in_flight), (3, 0), "still pending to readers");
    let (other, rest) = claim_locked(h, 10).await;
    assert_eq!(
        rest,
        vec![ids[2]],
        "a second locked claim skips the locked events"
    );
    // Given back and awaited (a drop gives back in the background, which the leased claim
    // below could overtake).
    let released = other
        .finish(&Settlement::default(), h.clock().now_utc())
        .await
        .expect("give back");
    assert_eq!(released[0].outcome, Outcome::Released);
    let (lease, leased) = claim(h, "w", 10).await;
    assert_eq!(leased, vec![ids[2]], "a leased claim skips them too");
    h.store()
        .release(lease.id, &leased, h.clock().now_utc())
        .await
        .expect("release");

    h.clock().advance(Duration::from_secs(1));
    let now = h.clock().now_utc();
    let settlement = Settlement {
        delivered: claimed.clone(),
        ..Settlement::default()
    };
    let recorded = batch.finish(&settlement, now).await.expect("finish");
    assert_eq!(
        recorded
            .iter()
            .map(|r| (r.id, r.outcome))
            .collect::<Vec<_>>(),
        claimed
            .iter()
            .map(|id| (*id, Outcome::Delivered))
            .collect::<Vec<_>>()
    );
    for id in &claimed {
        let e = h.store().fetch(*id).await.expect("get");
        assert_eq!((e.status(), e.attempts()), (Status::Delivered, 1));
        assert_eq!(e.lifecycle.delivered_at, Some(now));
        assert_eq!(e.updated_at, now);
        assert!(e.lifecycle.lease.is_none() && e.lifecycle.last_error.is_none());
    }
    let (_, last) = claim_locked(h, 10).await;
    assert_eq!(last, vec![ids[2]], "the settled events do not come back");
}

/// A locked claim dropped unfinished (its holder gone) gives every event back untouched:
/// pending, due, no attempt counted. The store lets go without waiting for the hold to run out
/// (PostgreSQL rolls back on a connection of its pool, so the test waits for that, bounded).
pub async fn a_dropped_locked_claim_gives_its_events_back_untried<H: Harness>(h: &H) {
    let ids = emit_n(h, 2).await;
    let before = h.store().fetch(ids[0]).await.expect("get");
    let (batch, claimed) = claim_locked(h, 10).await;
    assert_eq!(claimed, ids);
    drop(batch);
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let (again, got) = claim_locked(h, 10).await;
        if got == ids {
            drop(again);
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the dropped claim's events did not come back within 10 s (the hold is {HOLD:?})"
        );
        drop(again);
        tokio::task::yield_now().await;
    }
    let after = h.store().fetch(ids[0]).await.expect("get");
    assert_eq!(after, before, "untouched");
}

/// Settling a locked claim records each outcome as the lease transitions would: a retry is
/// rescheduled with the attempt counted, a permanent failure or the last attempt kills, a
/// deferral comes back later with no attempt spent, a release (named or not) leaves the event
/// as it was, and an event the claim does not hold is reported lost and left alone.
pub async fn a_locked_settlement_records_every_outcome<H: Harness>(h: &H) {
    let last = NewEvent::builder("file.stored", "upload", "last")
        .max_attempts(1)
        .build()
        .expect("valid");
    let mut events: Vec<NewEvent> = (0..6).map(event).collect();
    events.push(last);
    let ids = emit_ids(h, events).await;
    let outsider = emit_n(h, 1).await[0];
    let (batch, claimed) = claim_locked(h, 7).await;
    assert_eq!(claimed, ids);
    h.clock().advance(Duration::from_secs(1));
    let now = h.clock().now_utc();
    let retry_at = now + TimeDelta::seconds(30);
    let until = now + TimeDelta::seconds(60);
    let settlement = Settlement {
        delivered: vec![ids[0], outsider],
        failures: vec![
            Failure::retry(ids[1], "broker down", retry_at),
            Failure::permanent(ids[2], "no route"),
            Failure::retry(ids[6], "broker down", retry_at),
        ],
        deferred: Some(Deferral {
            ids: vec![ids[3]],
            until,
            reason: "paused".into(),
        }),
        released: vec![ids[4]],
    };
    let recorded = batch.finish(&settlement, now).await.expect("finish");
    let got: Vec<(EventId, Outcome)> = recorded.iter().map(|r| (r.id, r.outcome)).collect();
    assert_eq!(
        got,
        vec![
            (ids[0], Outcome::Delivered),
            (outsider, Outcome::LeaseLost),
            (ids[1], Outcome::Retrying { at: retry_at }),
            (ids[2], Outcome::Dead),
            (ids[6], Outcome::Dead),
            (ids[3], Outcome::Deferred { at: until }),
            (ids[4], Outcome::Released),
            (ids[5], Outcome::Released),
        ]
    );
    let get = |id| async move { h.store().fetch(id).await.expect("get") };
    let e = get(outsider).await;
    assert_eq!(
        (e.status(), e.attempts()),
        (Status::Pending, 0),
        "not held: unchanged"
    );
    let e = get(ids[1]).await;
    assert_eq!((e.status(), e.attempts()), (Status::Pending, 1));
    assert_eq!(e.lifecycle.next_attempt_at, retry_at);
    assert_eq!(e.lifecycle.last_error.as_deref(), Some("broker down"));
    let e = get(ids[2]).await;
    assert_eq!((e.status(), e.attempts()), (Status::Dead, 1));
    let e = get(ids[6]).await;
    assert_eq!(
        (e.status(), e.attempts()),
        (Status::Dead, 1),
        "the last attempt kills"
    );
    let e = get(ids[3]).await;
    assert_eq!((e.status(), e.attempts()), (Status::Pending, 0));
    assert_eq!(e.lifecycle.next_attempt_at, until);
    assert_eq!(e.lifecycle.last_error.as_deref(), Some("paused"));
    for id in [ids[4], ids[5]] {
        let e = get(id).await;
        assert_eq!((e.status(), e.attempts()), (Status::Pending, 0));
        assert!(e.lifecycle.next_attempt_at < now, "left as it was");
    }
    let (_, again) = claim_locked(h, 10).await;
    assert_eq!(
        again,
        vec![ids[4], ids[5], outsider],
        "released ones are due at once"
    );
}

/// A settlement that names an event twice is refused whole; a hold of zero or beyond the
/// bound is refused before anything is locked.
pub async fn a_locked_claim_refuses_bad_input<H: Harness>(h: &H) {
    let ids = emit_n(h, 1).await;
    let (batch, _) = claim_locked(h, 10).await;
    let twice = Settlement {
        delivered: ids.clone(),
        released: ids.clone(),
        ..Settlement::default()
    };
    match batch.finish(&twice, h.clock().now_utc()).await {
        Err(StoreError::InvalidInput(e)) => assert_eq!(e.field(), "ids"),
        other => panic!("expected InvalidInput, got {other:?}"),
    }
    assert_eq!(
        h.store().fetch(ids[0]).await.expect("get").status(),
        Status::Pending
    );
    for hold in [
        Duration::ZERO,
        outbox_core::locked::MAX_HOLD + Duration::from_secs(1),
    ] {
        match h
            .store()
            .claim_locked("w1", 10, hold, h.clock().now_utc())
            .await
        {
            Err(StoreError::InvalidInput(e)) => assert_eq!(e.field(), "hold"),
            other => panic!("hold {hold:?}: expected InvalidInput, got {other:?}"),
        }
    }
    let (_, again) = claim_locked(h, 10).await;
    assert_eq!(again, ids, "nothing stayed locked");
}

/// A locked claim neither finished nor kept within its hold is ended by the store: its events
/// are claimable again, untried, and its finish fails without recording anything. The hold runs
/// on the store's clock; not in the default list, since PostgreSQL's is the server's idle
/// timeout on the wall clock (`tests/tests/postgres.rs` covers it there).
pub async fn a_locked_claim_past_its_hold_is_ended<H: Harness>(h: &H) {
    let ids = emit_n(h, 2).await;
    let (mut kept, first) = claim_locked(h, 1).await;
    let (stalled, second) = claim_locked(h, 1).await;
    assert_eq!((first, second), (vec![ids[0]], vec![ids[1]]));
    h.clock().advance(HOLD - Duration::from_secs(1));
    kept.keep().await.expect("kept within its hold");
    h.clock().advance(Duration::from_secs(2));
    let (_, free) = claim_locked(h, 10).await;
    assert_eq!(
        free,
        vec![ids[1]],
        "only the stalled claim's event is free again"
    );
    let settlement = Settlement {
        delivered: vec![ids[1]],
        ..Settlement::default()
    };
    assert!(
        stalled
            .finish(&settlement, h.clock().now_utc())
            .await
            .is_err(),
        "a finish after the hold ended must fail"
    );
    let e = h.store().fetch(ids[1]).await.expect("get");
    assert_eq!((e.status(), e.attempts()), (Status::Pending, 0));
    let done = Settlement {
        delivered: vec![ids[0]],
        ..Settlement::default()
    };
    kept.finish(&done, h.clock().now_utc())
        .await
        .expect("the kept claim still finishes");
}

/// For a store set to delete delivered events: a locked settlement deletes keyless delivered
/// events and keeps keyed and failed ones, as an ack does.
pub async fn a_locked_settlement_deletes_as_an_ack_does<H: Harness>(h: &H) {
    let keyed = NewEvent::builder("file.stored", "upload", "keyed")
        .idempotency_key("locked-keyed")
        .build()
        .expect("valid event");
    let ids = emit_ids(h, vec![event(0), keyed, event(2)]).await;
    let (batch, claimed) = claim_locked(h, 10).await;
    assert_eq!(claimed, ids);
    let settlement = Settlement {
        delivered: vec![ids[0], ids[1]],
        failures: vec![Failure::permanent(ids[2], "refused")],
        ..Settlement::default()
    };
    batch
        .finish(&settlement, h.clock().now_utc())
        .await
        .expect("finish");
    assert!(h.store().get(ids[0]).await.expect("get").is_none());
    assert_eq!(
        h.store().fetch(ids[1]).await.expect("kept").status(),
        Status::Delivered
    );
    assert_eq!(
        h.store().fetch(ids[2]).await.expect("dead").status(),
        Status::Dead
    );
}

/// Builds a [`NewEvent`] the way one arrives deserialized (from a queue, an API), without the
/// builder's checks: the store must refuse what the builder would.
fn unchecked(fields: serde_json::Value) -> NewEvent {
    let mut event = json!({
        "event_type": "file.stored", "aggregate_type": "upload", "aggregate_id": "1",
        "payload": null, "headers": {}, "idempotency_key": null, "ordering_key": null,
        "deliver_after": null, "max_attempts": null,
    });
    if let (Some(e), serde_json::Value::Object(f)) = (event.as_object_mut(), fields) {
        e.extend(f);
    }
    serde_json::from_value(event).expect("a NewEvent")
}

fn nested(levels: usize) -> serde_json::Value {
    let mut v = json!(1);
    for _ in 0..levels {
        v = json!([v]);
    }
    v
}

/// What each store refuses beside the suite's limits: an event that skipped the builder (a NUL
/// in its aggregate id) in a batch with a good one, and a payload over the limit a store of its
/// own configured (`limited`: the same table, `max_payload_bytes` 64). Nothing is written.
pub async fn bad_input_is_refused_before_anything_is_written<H, L>(h: &H, limited: &L)
where
    H: Harness,
    L: outbox_core::Transactional,
{
    use outbox_core::{Emit, Transaction};
    let sneaky: NewEvent = serde_json::from_value(json!({
        "event_type": "a.b", "aggregate_type": "t", "aggregate_id": "1\u{0}", "payload": null,
        "headers": {}, "idempotency_key": null, "ordering_key": null, "deliver_after": null,
        "max_attempts": null
    }))
    .expect("an event that skipped the builder");
    match h.emit(vec![event(1), sneaky], true).await {
        Err(StoreError::InvalidInput(e)) => assert_eq!(e.field(), "aggregate_id"),
        other => panic!("expected InvalidInput, got {other:?}"),
    }
    let big = NewEvent::builder("a.b", "t", "1")
        .payload(json!({ "blob": "x".repeat(100) }))
        .build()
        .expect("valid event");
    let mut tx = limited.begin().await.expect("begin");
    match tx.emit(big).await {
        Err(StoreError::InvalidInput(e)) => assert_eq!(e.field(), "payload"),
        other => panic!("expected a payload error, got {other:?}"),
    }
    tx.rollback().await.expect("rollback");
    assert_eq!(
        h.store().count_by_status().await.expect("count").total(),
        0,
        "nothing was written"
    );
}

/// Every emit limit ([`EmitLimits::default`](outbox_core::EmitLimits)) is enforced the same way
/// by every store: a [`ValidationError`](outbox_core::ValidationError) naming the field, and
/// nothing written — also for events that arrive deserialized, past the builder's checks.
pub async fn emit_limits_are_enforced<H: Harness>(h: &H) {
    let many_headers: serde_json::Map<String, serde_json::Value> =
        (0..65).map(|i| (format!("h{i}"), json!("v"))).collect();
    let cases: Vec<(&str, NewEvent)> = vec![
        (
            "payload",
            unchecked(json!({ "payload": "x".repeat(2 * 1024 * 1024) })),
        ),
        ("payload", unchecked(json!({ "payload": nested(65) }))),
        ("payload", unchecked(json!({ "payload": nested(200) }))),
        ("headers", unchecked(json!({ "headers": many_headers }))),
        (
            "headers",
            unchecked(json!({ "headers": { "big": "x".repeat(17 * 1024) } })),
        ),
        ("max_attempts", unchecked(json!({ "max_attempts": 10_001 }))),
        (
            "max_attempts",
            unchecked(json!({ "max_attempts": u32::MAX })),
        ),
        ("max_attempts", unchecked(json!({ "max_attempts": 0 }))),
        (
            "deliver_after",
            unchecked(json!({ "deliver_after": "+262142-12-31T23:59:59Z" })),
        ),
        (
            "deliver_after",
            unchecked(json!({ "deliver_after": "1900-01-01T00:00:00Z" })),
        ),
        ("deliver_after", {
            let far = h.clock().now_utc() + TimeDelta::days(367);
            unchecked(json!({ "deliver_after": far }))
        }),
        (
            "aggregate_id",
            unchecked(json!({ "aggregate_id": "a".repeat(256) })),
        ),
        (
            "idempotency_key",
            unchecked(json!({ "idempotency_key": "k".repeat(256) })),
        ),
        (
            "event_type",
            unchecked(json!({ "event_type": "Not A Type" })),
        ),
    ];
    for (field, bad) in cases {
        for batch in [vec![bad.clone()], vec![event(1), bad]] {
            let n = batch.len();
            match h.emit(batch, true).await {
                Err(StoreError::InvalidInput(e)) => {
                    assert_eq!(e.field(), field, "{field} (batch of {n}): {e}")
                }
                other => panic!("{field} (batch of {n}): expected InvalidInput, got {other:?}"),
            }
        }
    }
    assert_eq!(
        h.store().count_by_status().await.expect("count").total(),
        0,
        "nothing was written"
    );

    // Just inside every limit is accepted.
    let headers: serde_json::Map<String, serde_json::Value> =
        (0..64).map(|i| (format!("h{i:02}"), json!("v"))).collect();
    let edge = unchecked(json!({
        "payload": nested(64),
        "headers": headers,
        "max_attempts": 10_000,
        "aggregate_id": "a".repeat(255),
        "deliver_after": h.clock().now_utc() + TimeDelta::days(366),
    }));
    let emitted = h
        .emit(vec![edge.clone()], true)
        .await
        .expect("at the limits");
    let stored = h.store().fetch(emitted[0].id()).await.expect("stored");
    assert_eq!(&stored.payload, edge.payload());
    assert_eq!(stored.lifecycle.max_attempts, 10_000);
}

/// Payloads come back exactly as emitted, floats to the last bit and integers at the ends of
/// their range.
pub async fn payloads_round_trip_exactly<H: Harness>(h: &H) {
    let payload = json!({
        "floats": [0.1, 1e-7, 0.30000000000000004, 1.7976931348623157e308, 5e-324, -2.5,
                   123456789.12345679, 1e21, 2.2250738585072014e-308, 1.0],
        "ints": [u64::MAX, i64::MIN, 0, -1],
        "text": "é ✓ \u{1F600} \\ \"",
        "empty": [{}, [], ""],
    });
    let e = NewEvent::builder("a.b", "t", "1")
        .payload(payload.clone())
        .build()
        .expect("valid");
    let id = h.emit(vec![e], true).await.expect("emit")[0].id();
    let stored = h.store().fetch(id).await.expect("stored");
    assert_eq!(stored.payload, payload);
    let bits = |v: &serde_json::Value| -> Vec<u64> {
        v["floats"]
            .as_array()
            .expect("floats")
            .iter()
            .map(|f| f.as_f64().expect("a float").to_bits())
            .collect()
    };
    assert_eq!(bits(&stored.payload), bits(&payload));
}

/// A call recording outcomes may name each event once; naming one twice is refused whole and
/// changes nothing.
pub async fn an_event_is_named_once_per_call<H: Harness>(h: &H) {
    let ids = emit_n(h, 1).await;
    let (lease, _) = claim(h, "w", 1).await;
    let store = h.store();
    let now = h.clock().now_utc();
    let twice = [ids[0], ids[0]];
    let failure = Failure::permanent(ids[0], "x");
    let results = [
        store.ack(lease.id, &twice, now).await,
        store.nack(lease.id, &[failure.clone(), failure], now).await,
        store.release(lease.id, &twice, now).await,
    ];
    for result in results {
        match result {
            Err(StoreError::InvalidInput(e)) => assert_eq!(e.field(), "ids"),
            other => panic!("expected InvalidInput, got {other:?}"),
        }
    }
    assert_eq!(
        store.fetch(ids[0]).await.expect("get").status(),
        Status::InFlight
    );
}

/// Each outcome call reports what the store did to each event, in the order asked.
pub async fn outcomes_say_what_the_store_did<H: Harness>(h: &H) {
    let events = (0..4)
        .map(|n| {
            NewEvent::builder("file.stored", "upload", n.to_string())
                .max_attempts(if n == 2 { 1 } else { 5 })
                .build()
                .expect("valid")
        })
        .collect();
    let ids = emit_ids(h, events).await;
    let (lease, _) = claim(h, "w", 4).await;
    let store = h.store();
    let now = h.clock().now_utc();
    let in_5s = now + TimeDelta::seconds(5);
    let failures = [
        Failure::retry(ids[1], "busy", in_5s),
        Failure::retry(ids[2], "busy", in_5s),
        Failure::permanent(ids[3], "malformed"),
    ];
    let nacked = store.nack(lease.id, &failures, now).await.expect("nack");
    assert_eq!(
        nacked.iter().map(|r| (r.id, r.outcome)).collect::<Vec<_>>(),
        vec![
            (ids[1], Outcome::Retrying { at: in_5s }),
            (ids[2], Outcome::Dead),
            (ids[3], Outcome::Dead),
        ],
        "retrying, out of attempts, permanent"
    );
    let acked = store
        .ack(lease.id, &[ids[0], ids[1]], now)
        .await
        .expect("ack");
    assert_eq!(
        acked.iter().map(|r| (r.id, r.outcome)).collect::<Vec<_>>(),
        vec![(ids[0], Outcome::Delivered), (ids[1], Outcome::LeaseLost)]
    );
    h.clock().advance(Duration::from_secs(5));
    let (again, taken) = claim(h, "w", 4).await;
    assert_eq!(taken, vec![ids[1]]);
    let released = store
        .release(again.id, &[ids[1]], h.clock().now_utc())
        .await
        .expect("release");
    assert_eq!(released[0].outcome, Outcome::Released);
}

/// A revive may not take an event past
/// [`MAX_ATTEMPTS_CEILING`](outbox_core::limits::MAX_ATTEMPTS_CEILING); refused, it stays dead.
pub async fn revive_is_bounded<H: Harness>(h: &H) {
    let ids = emit_n(h, 1).await;
    let (lease, _) = claim(h, "w", 1).await;
    let now = h.clock().now_utc();
    let failure = Failure::permanent(ids[0], "x");
    h.store()
        .nack(lease.id, &[failure], now)
        .await
        .expect("nack");
    for extra in [u32::MAX, outbox_core::limits::MAX_ATTEMPTS_CEILING] {
        match h.store().retry_dead(ids[0], extra, now).await {
            Err(StoreError::Transition {
                source: TransitionError::TooManyAttempts { .. },
                ..
            }) => {}
            other => panic!("revive by {extra}: expected TooManyAttempts, got {other:?}"),
        }
    }
    assert_eq!(
        h.store().fetch(ids[0]).await.expect("get").status(),
        Status::Dead
    );
    let revived = h
        .store()
        .retry_dead(ids[0], 1000, now)
        .await
        .expect("revive");
    assert_eq!(revived.lifecycle.max_attempts, 1001);
}

/// Due-ness and lease expiry are decided on the store's clock; a caller's clock only measures
/// lengths. A relay whose clock runs 120 s ahead can neither reclaim nor claim an event inside
/// another relay's 60 s lease, and a retry 5 s out is due 5 s later on the store's clock.
pub async fn a_skewed_clock_cannot_take_a_live_lease<H: Harness>(h: &H) {
    let ids = emit_n(h, 1).await;
    let store = h.store();
    let honest = h.clock().now_utc();
    let (lease, taken) = store
        .claim_for("honest", 10, Duration::from_secs(60), honest)
        .await
        .expect("claim");
    assert_eq!(taken.len(), 1);
    let ahead = honest + TimeDelta::seconds(120);
    let reclaimed = store.reclaim_expired(ahead).await.expect("reclaim");
    assert_eq!(
        (reclaimed.pending, reclaimed.dead),
        (0, 0),
        "the lease is live"
    );
    let (_, stolen) = store
        .claim_for("ahead", 10, Duration::from_secs(60), ahead)
        .await
        .expect("claim");
    assert!(stolen.is_empty(), "claimed inside a live lease: {stolen:?}");

    // The honest relay's retry, 5 s out on its clock, is 5 s out on the store's.
    let failure = Failure {
        id: ids[0],
        error: "busy".into(),
        retry_at: Some(honest + TimeDelta::seconds(5)),
    };
    store
        .nack(lease.id, &[failure], honest)
        .await
        .expect("nack");
    let later_ahead = ahead + TimeDelta::seconds(4);
    h.clock().advance(Duration::from_secs(4));
    let (_, early) = store
        .claim_for("ahead", 10, Duration::from_secs(60), later_ahead)
        .await
        .expect("claim");
    assert!(early.is_empty(), "due early: {early:?}");
    h.clock().advance(Duration::from_secs(1));
    let (_, due) = store
        .claim_for(
            "ahead",
            10,
            Duration::from_secs(60),
            later_ahead + TimeDelta::seconds(1),
        )
        .await
        .expect("claim");
    assert_eq!(due.len(), 1);
    let held_for = due[0]
        .lifecycle
        .lease
        .as_ref()
        .map(|l| l.until - h.clock().now_utc());
    assert_eq!(
        held_for,
        Some(TimeDelta::seconds(60)),
        "the lease is 60 s of the store's clock"
    );
}

/// A batch whose events differ only in type, aggregate and payload (which a store may write with
/// a leaner statement) is stored exactly as any other: every field, each event's own attempt
/// limit when they differ, the store's default when none is given.
pub async fn a_uniform_batch_is_stored_like_any_other<H: Harness>(h: &H) {
    let now = h.clock().now_utc();
    let limited = |n: usize, attempts: u32| {
        NewEvent::builder("file.stored", "upload", format!("u-{n}"))
            .payload(json!({ "n": n }))
            .max_attempts(attempts)
            .build()
            .expect("valid")
    };
    let store = h.store();
    let same = emit_ids(h, (0..3).map(|n| limited(n, 4)).collect()).await;
    for (n, id) in same.iter().enumerate() {
        let stored = store.fetch(*id).await.expect("stored");
        assert_eq!(
            (stored.event_type.as_str(), stored.aggregate_type.as_str()),
            ("file.stored", "upload")
        );
        assert_eq!(stored.aggregate_id, format!("u-{n}"));
        assert_eq!(stored.payload, json!({ "n": n }));
        assert!(stored.headers.is_empty());
        assert!(stored.idempotency_key.is_none() && stored.ordering_key.is_none());
        assert_eq!(stored.status(), Status::Pending);
        assert_eq!((stored.attempts(), stored.lifecycle.max_attempts), (0, 4));
        assert_eq!(
            (stored.lifecycle.next_attempt_at, stored.created_at),
            (now, now)
        );
    }
    let mixed = emit_ids(h, vec![limited(10, 4), limited(11, 5)]).await;
    let limits = [
        store
            .fetch(mixed[0])
            .await
            .expect("stored")
            .lifecycle
            .max_attempts,
        store
            .fetch(mixed[1])
            .await
            .expect("stored")
            .lifecycle
            .max_attempts,
    ];
    assert_eq!(limits, [4, 5], "each event keeps its own limit");
    let defaults = emit_ids(h, vec![event(20), event(21)]).await;
    let single = emit_ids(h, vec![event(22)]).await;
    let default = store
        .fetch(single[0])
        .await
        .expect("stored")
        .lifecycle
        .max_attempts;
    for id in defaults {
        assert_eq!(
            store
                .fetch(id)
                .await
                .expect("stored")
                .lifecycle
                .max_attempts,
            default
        );
    }
}

fn keyed(key: &str, n: usize) -> NewEvent {
    NewEvent::builder("order.changed", "order", key)
        .payload(json!({ "n": n }))
        .ordering_key(key)
        .build()
        .expect("valid event")
}

async fn status_of<H: Harness>(h: &H, id: EventId) -> Status {
    h.store().fetch(id).await.expect("get").status()
}

async fn statuses<H: Harness>(h: &H, ids: &[EventId]) -> Vec<Status> {
    let mut out = Vec::with_capacity(ids.len());
    for id in ids {
        out.push(status_of(h, *id).await);
    }
    out
}

async fn ack<H: Harness>(h: &H, lease: &Lease, ids: &[EventId]) {
    let recorded = h
        .store()
        .ack(lease.id, ids, h.clock().now_utc())
        .await
        .expect("ack");
    assert!(lost(&recorded).is_empty(), "{recorded:?}");
}

/// Moves the clock past every lease taken so far and takes the expired ones back.
async fn expire_leases<H: Harness>(h: &H) -> outbox_core::Reclaimed {
    h.clock().advance(LEASE + Duration::from_secs(1));
    h.store()
        .reclaim_expired(h.clock().now_utc())
        .await
        .expect("reclaim")
}

async fn kill<H: Harness>(h: &H, lease: &Lease, id: EventId) {
    let recorded = h
        .store()
        .nack(
            lease.id,
            &[Failure::permanent(id, "rejected")],
            h.clock().now_utc(),
        )
        .await
        .expect("nack");
    assert_eq!(recorded[0].outcome, Outcome::Dead);
}

/// Events of one ordering key are claimable one at a time, in commit order (in emit order within
/// a transaction): the key's head is pending, the others wait and are never claimed; each
/// acknowledgement promotes the next. Events without a key, and other keys, are not held back; a
/// rolled-back emit leaves no trace on its key.
pub async fn a_key_is_delivered_one_event_at_a_time_in_commit_order<H: Harness>(h: &H) {
    h.emit(vec![keyed("k", 0)], false).await.expect("rollback");
    let first = emit_ids(h, vec![keyed("k", 1), keyed("k", 2)]).await;
    let second = emit_ids(h, vec![keyed("k", 3), event(9), keyed("other", 4)]).await;
    assert_eq!(
        statuses(h, &[first[0], first[1], second[0], second[1], second[2]]).await,
        [
            Status::Pending,
            Status::Waiting,
            Status::Waiting,
            Status::Pending,
            Status::Pending
        ]
    );
    let c = h.store().count_by_status().await.expect("count");
    assert_eq!((c.waiting, c.pending), (2, 3));

    let (lease, got) = claim(h, "w1", 10).await;
    assert_eq!(got, vec![first[0], second[1], second[2]]);
    let (_, more) = claim(h, "w2", 10).await;
    assert!(more.is_empty(), "the key's next event waits: {more:?}");
    ack(h, &lease, &got).await;

    let mut delivered = vec![first[0]];
    for _ in 0..5 {
        let (lease, got) = claim(h, "w", 10).await;
        assert!(got.len() <= 1, "one event of the key at a time: {got:?}");
        if got.is_empty() {
            break;
        }
        ack(h, &lease, &got).await;
        delivered.extend(got);
    }
    assert_eq!(delivered, vec![first[0], first[1], second[0]]);
    let c = h.store().count_by_status().await.expect("count");
    assert_eq!((c.waiting, c.pending, c.delivered), (0, 0, 5));

    let later = emit_ids(h, vec![keyed("k", 5)]).await;
    assert_eq!(
        status_of(h, later[0]).await,
        Status::Pending,
        "a drained key takes a new head at once"
    );
}

/// A head that fails, or whose lease runs out, stays its key's head: retried with backoff while
/// its successors wait.
pub async fn a_failing_head_keeps_its_successors_waiting<H: Harness>(h: &H) {
    let ids = emit_ids(h, vec![keyed("k", 1), keyed("k", 2)]).await;
    let (lease, got) = claim(h, "w", 10).await;
    assert_eq!(got, vec![ids[0]]);
    let retry_at = h.clock().now_utc() + TimeDelta::seconds(10);
    h.store()
        .nack(
            lease.id,
            &[Failure::retry(ids[0], "timeout", retry_at)],
            h.clock().now_utc(),
        )
        .await
        .expect("nack");
    assert_eq!(statuses(h, &ids).await, [Status::Pending, Status::Waiting]);
    let (_, none) = claim(h, "w", 10).await;
    assert!(none.is_empty(), "{none:?}");

    h.clock().advance(Duration::from_secs(11));
    let (_, got) = claim(h, "w", 10).await;
    assert_eq!(got, vec![ids[0]], "the head again, not its successor");
    let reclaimed = expire_leases(h).await;
    assert_eq!(reclaimed.pending, 1);
    assert_eq!(statuses(h, &ids).await, [Status::Pending, Status::Waiting]);
    let (lease, got) = claim(h, "w", 10).await;
    assert_eq!(got, vec![ids[0]]);
    ack(h, &lease, &got).await;
    let (_, got) = claim(h, "w", 10).await;
    assert_eq!(got, vec![ids[1]]);
}

/// Under the default policy a dead head parks its key: nothing of the key is delivered, the
/// store lists the key with its head, and other keys go on. Retrying the head resumes the key;
/// skipping it promotes the next event (it stays dead, and a later retry puts it at the back of
/// its key). Skipping anything but a dead head is refused.
pub async fn a_dead_head_parks_its_key_until_retried_or_skipped<H: Harness>(h: &H) {
    let ids = emit_ids(
        h,
        vec![keyed("k", 1), keyed("k", 2), keyed("k", 3), keyed("j", 4)],
    )
    .await;
    let store = h.store();
    let (lease, got) = claim(h, "w", 10).await;
    assert_eq!(got, vec![ids[0], ids[3]]);
    kill(h, &lease, ids[0]).await;
    ack(h, &lease, &[ids[3]]).await;
    let (_, none) = claim(h, "w", 10).await;
    assert!(none.is_empty(), "a parked key delivers nothing: {none:?}");
    let parked = store.parked_keys(10).await.expect("parked");
    assert_eq!(
        parked,
        vec![outbox_core::ParkedKey {
            key: "k".into(),
            head: ids[0],
            waiting: 2
        }]
    );
    let j = emit_ids(h, vec![keyed("j", 5)]).await;
    assert_eq!(
        status_of(h, j[0]).await,
        Status::Pending,
        "other keys go on"
    );

    let now = h.clock().now_utc();
    let revived = store.retry_dead(ids[0], 1, now).await.expect("retry");
    assert_eq!(revived.status(), Status::Pending, "still the key's head");
    assert!(store.parked_keys(10).await.expect("parked").is_empty());
    let (lease, got) = claim(h, "w", 10).await;
    assert_eq!(got, vec![ids[0], j[0]]);
    kill(h, &lease, ids[0]).await;
    ack(h, &lease, &j).await;

    for refused in [ids[1], j[0]] {
        let err = store.skip_dead_head(refused, now).await;
        assert!(
            matches!(err, Err(StoreError::Transition { .. })),
            "only a dead head can be skipped: {err:?}"
        );
    }
    let skipped = store.skip_dead_head(ids[0], now).await.expect("skip");
    assert_eq!(skipped.status(), Status::Dead);
    assert_eq!(
        statuses(h, &ids[..3]).await,
        [Status::Dead, Status::Pending, Status::Waiting]
    );
    assert!(store.parked_keys(10).await.expect("parked").is_empty());
    assert!(matches!(
        store.skip_dead_head(ids[0], now).await,
        Err(StoreError::Transition { .. })
    ));

    let back = store.retry_dead(ids[0], 1, now).await.expect("retry");
    assert_eq!(
        back.status(),
        Status::Waiting,
        "a skipped event retried goes to the back of its key"
    );
    let mut delivered = Vec::new();
    for _ in 0..5 {
        let (lease, got) = claim(h, "w", 10).await;
        if got.is_empty() {
            break;
        }
        ack(h, &lease, &got).await;
        delivered.extend(got);
    }
    assert_eq!(delivered, vec![ids[1], ids[2], ids[0]]);
}

/// Under [`DeadHead::Skip`](outbox_core::DeadHead::Skip) a head that dies — by a permanent error
/// or by running out of attempts when its lease expires — gives up its key at once.
pub async fn a_dead_head_under_skip_lets_its_key_go_on<H: Harness>(h: &H) {
    let once = NewEvent::builder("order.changed", "order", "j")
        .ordering_key("j")
        .max_attempts(1)
        .build()
        .expect("valid");
    let ids = emit_ids(h, vec![keyed("k", 1), keyed("k", 2), once, keyed("j", 3)]).await;
    let (lease, got) = claim(h, "w", 10).await;
    assert_eq!(got, vec![ids[0], ids[2]]);
    kill(h, &lease, ids[0]).await;
    assert_eq!(status_of(h, ids[1]).await, Status::Pending);
    let reclaimed = expire_leases(h).await;
    assert_eq!(reclaimed.dead, 1);
    assert_eq!(
        statuses(h, &ids).await,
        [Status::Dead, Status::Pending, Status::Dead, Status::Pending]
    );
    assert!(h.store().parked_keys(10).await.expect("parked").is_empty());
}

/// A locked claim's settlement moves keys on as leased outcomes do: a delivered head promotes
/// the next event, a dead one parks its key.
pub async fn a_locked_settlement_moves_a_key_on<H: Harness>(h: &H) {
    let ids = emit_ids(h, vec![keyed("k", 1), keyed("k", 2), keyed("k", 3)]).await;
    let (batch, got) = claim_locked(h, 10).await;
    assert_eq!(got, vec![ids[0]]);
    let settlement = Settlement {
        delivered: got,
        ..Settlement::default()
    };
    batch
        .finish(&settlement, h.clock().now_utc())
        .await
        .expect("finish");
    let (batch, got) = claim_locked(h, 10).await;
    assert_eq!(got, vec![ids[1]]);
    let settlement = Settlement {
        failures: vec![Failure::permanent(ids[1], "rejected")],
        ..Settlement::default()
    };
    batch
        .finish(&settlement, h.clock().now_utc())
        .await
        .expect("finish");
    assert_eq!(
        statuses(h, &ids).await,
        [Status::Delivered, Status::Dead, Status::Waiting]
    );
    let parked = h.store().parked_keys(10).await.expect("parked");
    assert_eq!(parked.len(), 1);
    assert_eq!((parked[0].head, parked[0].waiting), (ids[1], 1));
}

/// A store that deletes acknowledged events still hands the key on when its head goes.
pub async fn deleting_a_delivered_head_promotes_the_next<H: Harness>(h: &H) {
    let ids = emit_ids(h, vec![keyed("k", 1), keyed("k", 2)]).await;
    let (lease, got) = claim(h, "w", 10).await;
    assert_eq!(got, vec![ids[0]]);
    ack(h, &lease, &got).await;
    assert!(h.store().get(ids[0]).await.expect("get").is_none());
    let (_, got) = claim(h, "w", 10).await;
    assert_eq!(got, vec![ids[1]]);
}

/// Every attempt that ends without a delivery is kept with its time, worker and error (a
/// leased failure, an expired lease, a locked claim's failure), at most
/// [`ATTEMPT_HISTORY_LIMIT`](outbox_core::history::ATTEMPT_HISTORY_LIMIT) of them, newest
/// last; deliveries and releases are not attempts that failed.
pub async fn failed_attempts_are_kept_with_worker_and_error<H: Harness>(h: &H) {
    let mut ids = emit_ids(
        h,
        vec![
            NewEvent::builder("file.stored", "upload", "u-1")
                .max_attempts(100)
                .build()
                .expect("valid"),
        ],
    )
    .await;
    let store = h.store();
    assert_eq!(
        store.history(ids[0]).await.expect("history"),
        Default::default()
    );
    let (lease, _) = claim(h, "w-a", 1).await;
    let t1 = h.clock().now_utc();
    let retry = |n: u32| Failure::retry(ids[0], format!("503 from sink ({n})"), t1);
    store.nack(lease.id, &[retry(1)], t1).await.expect("nack");
    let (_, got) = claim(h, "w-b", 1).await;
    assert_eq!(got, vec![ids[0]]);
    expire_leases(h).await;
    let (batch, got) = claim_locked(h, 1).await;
    assert_eq!(got, vec![ids[0]]);
    let settlement = Settlement {
        failures: vec![retry(3)],
        ..Settlement::default()
    };
    batch
        .finish(&settlement, h.clock().now_utc())
        .await
        .expect("finish");
    let history = store.history(ids[0]).await.expect("history");
    let seen: Vec<(u32, Option<&str>)> = history
        .attempts
        .iter()
        .map(|a| (a.attempt, a.worker.as_deref()))
        .collect();
    assert_eq!(
        seen,
        vec![(1, Some("w-a")), (2, Some("w-b")), (3, Some("w1"))]
    );
    assert_eq!(history.attempts[0].error, "503 from sink (1)");
    assert_eq!(history.attempts[0].at, t1);
    assert!(
        history.attempts[1].error.contains("w-b"),
        "{:?}",
        history.attempts[1]
    );
    assert_eq!(history.attempts[2].error, "503 from sink (3)");

    // Bounded: the oldest go.
    let limit = outbox_core::history::ATTEMPT_HISTORY_LIMIT;
    for n in 4..=(limit as u32 + 5) {
        let (lease, got) = claim(h, "w-a", 1).await;
        assert_eq!(got, vec![ids[0]]);
        store.nack(lease.id, &[retry(n)], t1).await.expect("nack");
    }
    let history = store.history(ids[0]).await.expect("history");
    assert_eq!(history.attempts.len(), limit);
    assert_eq!(history.attempts[0].attempt, 6);
    assert_eq!(history.attempts[limit - 1].attempt, limit as u32 + 5);

    // A delivered event's history holds no delivery.
    ids.extend(emit_n(h, 1).await);
    let (lease, got) = claim(h, "w-a", 10).await;
    assert!(got.contains(&ids[1]), "{got:?}");
    ack(h, &lease, &got).await;
    assert!(
        store
            .history(ids[1])
            .await
            .expect("history")
            .attempts
            .is_empty()
    );
    let missing = EventId::new();
    assert!(matches!(
        store.history(missing).await,
        Err(StoreError::NotFound(id)) if id == missing
    ));
}

/// An operator replaces a dead event's payload with a reason: the event is pending again with
/// the new payload (delivered with it), and the note keeps who, why and the old payload. Only a
/// dead event can be edited, and only with a reason and a payload within the limits.
pub async fn editing_a_dead_event_replays_it_and_keeps_a_note<H: Harness>(h: &H) {
    let ids = emit_n(h, 2).await;
    let store = h.store();
    let (lease, _) = claim(h, "w", 1).await;
    kill(h, &lease, ids[0]).await;
    let edit = PayloadEdit {
        payload: json!({ "n": 0, "fixed": true }),
        by: "ops@example".into(),
        note: "sink wants `fixed`".into(),
    };
    let now = h.clock().now_utc();
    let refused = store.edit_dead(ids[1], &edit, 1, now).await;
    assert!(
        matches!(refused, Err(StoreError::Transition { .. })),
        "{refused:?}"
    );
    let no_reason = PayloadEdit {
        note: " ".into(),
        ..edit.clone()
    };
    let refused = store.edit_dead(ids[0], &no_reason, 1, now).await;
    assert!(
        matches!(&refused, Err(StoreError::InvalidInput(e)) if e.field() == "note"),
        "{refused:?}"
    );
    assert_eq!(status_of(h, ids[0]).await, Status::Dead);

    let edited = store.edit_dead(ids[0], &edit, 2, now).await.expect("edit");
    assert_eq!(edited.status(), Status::Pending);
    assert_eq!(edited.payload, edit.payload);
    let stored = store.fetch(ids[0]).await.expect("get");
    assert_eq!(
        (stored.payload.clone(), stored.status()),
        (edit.payload.clone(), Status::Pending)
    );
    let notes = store.history(ids[0]).await.expect("history").notes;
    assert_eq!(notes.len(), 1);
    assert_eq!(
        (notes[0].by.as_str(), notes[0].note.as_str()),
        ("ops@example", "sink wants `fixed`")
    );
    assert_eq!(notes[0].previous_payload, json!({ "n": 0 }));
    assert_eq!(notes[0].at, now);
    let (lease, got) = claim(h, "w", 10).await;
    assert!(got.contains(&ids[0]), "{got:?}");
    let claimed = store.fetch(ids[0]).await.expect("get");
    assert_eq!(claimed.payload, edit.payload);
    ack(h, &lease, &got).await;
}

/// A paused event type is claimed by no one (leased or locked claims) until resumed, whether
/// its events were pending when it was paused, emitted during the pause, or retried during
/// it; they stay pending with their schedule. Other types go on.
pub async fn a_paused_type_is_not_delivered_until_resumed<H: Harness>(h: &H) {
    let store = h.store();
    let now = h.clock().now_utc();
    let paid = |n: usize| {
        NewEvent::builder("order.paid", "order", format!("o-{n}"))
            .build()
            .expect("valid")
    };
    let before = emit_ids(h, vec![paid(1), paid(2), event(1)]).await;
    let (lease, got) = claim(h, "w", 1).await;
    assert_eq!(got, vec![before[0]]);
    assert!(store.pause_type("order.paid", now).await.expect("pause"));
    assert!(
        !store
            .pause_type("order.paid", now)
            .await
            .expect("pause again")
    );
    let refused = store.pause_type("Order Paid", now).await;
    assert!(
        matches!(refused, Err(StoreError::InvalidInput(_))),
        "{refused:?}"
    );
    let paused = store.paused_types().await.expect("paused");
    assert_eq!(paused.len(), 1);
    assert_eq!(
        (paused[0].event_type.as_str(), paused[0].since),
        ("order.paid", now)
    );
    // The one in flight finishes its attempt, and is retried during the pause.
    store
        .nack(lease.id, &[Failure::retry(before[0], "503", now)], now)
        .await
        .expect("nack");
    let during = emit_ids(h, vec![paid(3), event(2)]).await;
    let (lease, mut got) = claim(h, "w", 10).await;
    got.sort();
    assert_eq!(got, vec![before[2], during[1]]);
    ack(h, &lease, &got).await;
    let (batch, got) = claim_locked(h, 10).await;
    assert!(got.is_empty(), "{got:?}");
    drop(batch);
    for id in [before[0], before[1], during[0]] {
        assert_eq!(status_of(h, id).await, Status::Pending);
    }
    let pending = store
        .list(&EventFilter {
            status: Some(Status::Pending),
            ..EventFilter::default()
        })
        .await
        .expect("list");
    assert_eq!(pending.events.len(), 3);
    assert_eq!(
        store
            .count_by_status()
            .await
            .expect("count")
            .get(Status::Pending),
        3
    );

    assert!(store.resume_type("order.paid", now).await.expect("resume"));
    assert!(
        !store
            .resume_type("order.paid", now)
            .await
            .expect("resume again")
    );
    assert!(store.paused_types().await.expect("paused").is_empty());
    let (_, mut got) = claim(h, "w", 10).await;
    got.sort();
    let mut expected = vec![before[0], before[1], during[0]];
    expected.sort();
    assert_eq!(got, expected);
}

/// The oldest pending event is found among the pending events alone: a delivered one, however
/// old, does not count, and nothing pending answers `None`.
pub async fn the_oldest_pending_event_ignores_delivered_ones<H: Harness>(h: &H) {
    let store = h.store();
    assert_eq!(store.oldest_pending().await.expect("oldest"), None);
    let first = h.emit(vec![event(1)], true).await.expect("emit")[0].id();
    h.clock().advance(Duration::from_secs(5));
    let second = h.emit(vec![event(2)], true).await.expect("emit")[0].id();
    let second_at = store
        .get(second)
        .await
        .expect("get")
        .expect("the event")
        .created_at;
    let (lease, claimed) = store
        .claim_for("w", 1, LEASE, h.clock().now_utc())
        .await
        .expect("claim");
    assert_eq!(claimed[0].id, first);
    store
        .ack(lease.id, &[first], h.clock().now_utc())
        .await
        .expect("ack");
    assert_eq!(
        store.oldest_pending().await.expect("oldest"),
        Some((second, second_at))
    );
}

/// Capped counts count each status up to the cap and agree with the full count below it;
/// deliveries since a time count the delivered events kept.
pub async fn capped_counts_and_deliveries_since<H: Harness>(h: &H) {
    let store = h.store();
    emit_n(h, 5).await;
    let t0 = h.clock().now_utc();
    let (lease, got) = claim(h, "w", 2).await;
    ack(h, &lease, &got).await;
    h.clock().advance(Duration::from_secs(10));
    let (lease, got) = claim(h, "w", 1).await;
    kill(h, &lease, got[0]).await;
    let full = store.count_by_status().await.expect("count");
    assert_eq!((full.pending, full.delivered, full.dead), (2, 2, 1));
    assert_eq!(store.count_capped(100).await.expect("capped"), full);
    let capped = store.count_capped(1).await.expect("capped");
    assert_eq!(
        (
            capped.waiting,
            capped.pending,
            capped.in_flight,
            capped.delivered,
            capped.dead
        ),
        (0, 1, 0, 1, 1)
    );
    let now = h.clock().now_utc();
    assert_eq!(store.delivered_since(t0, now).await.expect("since"), 2);
    let later = t0 + TimeDelta::seconds(1);
    assert_eq!(store.delivered_since(later, now).await.expect("since"), 0);
}

/// Pausing a type does not wait for a locked claim holding some of its events: it settles
/// them as usual, and one it gives back for a retry is not claimed while the type is paused.
pub async fn pausing_does_not_wait_for_a_locked_claim<H: Harness>(h: &H) {
    let store = h.store();
    let paid = |n: usize| {
        NewEvent::builder("order.paid", "order", format!("o-{n}"))
            .build()
            .expect("valid")
    };
    let ids = emit_ids(h, vec![paid(1), paid(2)]).await;
    let (batch, held) = claim_locked(h, 1).await;
    assert_eq!(held.len(), 1);
    let now = h.clock().now_utc();
    let paused = tokio::time::timeout(Duration::from_secs(30), store.pause_type("order.paid", now))
        .await
        .expect("the pause waited for the locked claim");
    assert!(paused.expect("pause"));
    let settlement = Settlement {
        failures: vec![Failure::retry(held[0], "503", now)],
        ..Settlement::default()
    };
    batch.finish(&settlement, now).await.expect("finish");
    let (_, got) = claim(h, "w", 10).await;
    assert!(got.is_empty(), "{got:?}");
    store.resume_type("order.paid", now).await.expect("resume");
    let (_, mut got) = claim(h, "w", 10).await;
    got.sort();
    assert_eq!(got, ids);
}

/// Generates one `#[tokio::test]` per conformance case for a backend.
///
/// `$make` is an async expression producing a fresh [`Harness`]; every case gets its own.
#[macro_export]
macro_rules! conformance_tests {
    ($make:expr) => {
        $crate::conformance_tests!(@cases $make;
            commit_stores_exactly_what_was_emitted, rollback_stores_nothing,
            idempotency_key_stores_one_event, claim_takes_due_events_in_order, ack_marks_delivered,
            nack_reschedules_or_kills, stale_lease_is_fenced, release_returns_events_untried,
            defer_returns_events_untried_for_later,
            renew_extends_the_lease, reclaim_expired_counts_the_attempt, purge_deletes_only_old_delivered,
            list_filters_and_pages, list_filters_by_prefix_key_and_time_newest_first,
            delete_events_removes_all_but_what_a_worker_holds,
            count_by_status_sees_every_status, retry_dead_revives,
            claims_get_distinct_leases, emit_limits_are_enforced, payloads_round_trip_exactly,
            an_event_is_named_once_per_call, outcomes_say_what_the_store_did, revive_is_bounded,
            a_skewed_clock_cannot_take_a_live_lease, a_uniform_batch_is_stored_like_any_other,
            a_locked_claim_is_skipped_by_every_other_claim,
            a_dropped_locked_claim_gives_its_events_back_untried,
            a_locked_settlement_records_every_outcome, a_locked_claim_refuses_bad_input,
            a_key_is_delivered_one_event_at_a_time_in_commit_order,
            a_failing_head_keeps_its_successors_waiting,
            a_dead_head_parks_its_key_until_retried_or_skipped,
            a_locked_settlement_moves_a_key_on,
            failed_attempts_are_kept_with_worker_and_error,
            editing_a_dead_event_replays_it_and_keeps_a_note,
            a_paused_type_is_not_delivered_until_resumed,
            capped_counts_and_deliveries_since,
            pausing_does_not_wait_for_a_locked_claim,
            the_oldest_pending_event_ignores_delivered_ones);
    };
    (@cases $make:expr; $($case:ident),* $(,)?) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn $case() {
                let harness = $make.await;
                $crate::conformance::$case(&harness).await;
                $crate::conformance::Harness::cleanup(&harness).await;
            }
        )*
    };
}
