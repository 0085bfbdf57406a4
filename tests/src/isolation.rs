//! One bad row never stops the others: cases every database store passes, over a harness
//! that can write rows behind the store's back ([`ForeignRows`]).

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use outbox_core::{
    EventFilter, EventId, NewEvent, OutboxStore, OutboxStoreExt, Outcome, StoreError,
};
use outbox_memory::RecordingTransport;
use outbox_worker::{ClaimMode, Worker};
use serde_json::json;

use crate::conformance::NowUtc;
use crate::harness::{ForeignRows, WaitingRows};

fn upload(n: usize) -> NewEvent {
    NewEvent::builder("file.stored", "upload", n.to_string())
        .payload(json!({ "n": n }))
        .build()
        .expect("valid event")
}

/// A row that cannot be read (a payload nested past the limit, headers that are not a string
/// map) never takes the events around it down: the claim (leased or locked, by `mode`) marks
/// it dead at once with the reason, the innocent events of the same batch are delivered, and
/// operator reads report it instead of failing.
pub async fn unreadable_rows_are_isolated<H: ForeignRows>(h: &H, mode: ClaimMode) {
    let store = h.store();
    let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    let innocent = h.emit(vec![upload(1)], true).await.expect("emit")[0].id();
    let bad_payload = h.foreign_row(&deep, "{}").await;
    let bad_headers = h.foreign_row("{}", r#"{"n": 1}"#).await;
    let innocent_too = h.emit(vec![upload(2)], true).await.expect("emit")[0].id();

    // Operator reads report the rows, before any claim.
    let page = store.list(&EventFilter::default()).await.expect("list");
    assert_eq!(
        page.events.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![innocent, innocent_too]
    );
    let unreadable: Vec<EventId> = page.undecodable.iter().map(|u| u.id).collect();
    assert_eq!(unreadable, vec![bad_payload, bad_headers]);
    assert_eq!(page.oldest_created_at(), Some(h.clock().now_utc()));
    match store.get(bad_payload).await {
        Err(StoreError::Undecodable { id, .. }) => assert_eq!(id, bad_payload),
        other => panic!("expected Undecodable, got {other:?}"),
    }

    let transport = RecordingTransport::new();
    let report = Worker::builder(store.clone(), transport.clone())
        .clock(Arc::new(h.clock().clone()))
        .claim_mode(mode)
        .build()
        .expect("worker")
        .run_until_idle()
        .await
        .expect("the worker gets past the unreadable rows");
    let delivered: HashSet<EventId> = transport.delivered().iter().map(|e| e.id).collect();
    assert_eq!(delivered, HashSet::from([innocent, innocent_too]));
    assert_eq!(report.delivered, 2);
    let counts = store.count_by_status().await.expect("count");
    assert_eq!((counts.delivered, counts.dead, counts.pending), (2, 2, 0));
    for id in [bad_payload, bad_headers] {
        let kept = h.last_error(id).await;
        assert!(
            kept.as_deref()
                .is_some_and(|e| e.starts_with("cannot be read")),
            "{kept:?}"
        );
    }
}

/// An unreadable event waiting behind its key's head never blocks the head's outcome: when the
/// head is delivered it is buried as the key's dead head (parking the key, as any dead head
/// does), and an operator deleting it lets the key go on. For stores that decide promotions
/// on rows they read (MySQL, SQLite).
pub async fn an_unreadable_waiting_event_parks_its_key_until_deleted<H: WaitingRows>(h: &H) {
    a_waiting_bad_row_parks_its_key_until_deleted(h, || h.foreign_row("{", "{}")).await;
}

/// [`an_unreadable_waiting_event_parks_its_key_until_deleted`], the unreadable row written by
/// `bad_row` (a store's own way to spoil a row).
pub async fn a_waiting_bad_row_parks_its_key_until_deleted<H, F, Fut>(h: &H, bad_row: F)
where
    H: WaitingRows,
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = EventId>,
{
    let store = h.store();
    let keyed = |n: usize| {
        NewEvent::builder("file.stored", "upload", n.to_string())
            .ordering_key("k")
            .build()
            .expect("valid event")
    };
    let head = h.emit(vec![keyed(1)], true).await.expect("emit")[0].id();
    let bad = bad_row().await;
    h.make_waiting(bad, "k").await;
    let last = h.emit(vec![keyed(3)], true).await.expect("emit")[0].id();

    let now = h.clock().now_utc();
    let lease = Duration::from_secs(30);
    let (held, got) = store.claim_for("w", 10, lease, now).await.expect("claim");
    assert_eq!(got.iter().map(|e| e.id).collect::<Vec<_>>(), vec![head]);
    let acked = store
        .ack(held.id, &[head], now)
        .await
        .expect("the ack gets past it");
    assert_eq!(acked[0].outcome, Outcome::Delivered);
    let parked = store.parked_keys(10).await.expect("parked keys");
    assert_eq!(parked.len(), 1);
    assert_eq!(
        (parked[0].key.as_str(), parked[0].head, parked[0].waiting),
        ("k", bad, 1)
    );
    let (_, none) = store.claim_for("w", 10, lease, now).await.expect("claim");
    assert!(none.is_empty(), "the key is parked behind its dead head");

    assert_eq!(
        store.delete_events(&[bad], now).await.expect("delete"),
        vec![bad]
    );
    let (_, got) = store.claim_for("w", 10, lease, now).await.expect("claim");
    assert_eq!(got.iter().map(|e| e.id).collect::<Vec<_>>(), vec![last]);
}
