//! MySQL/MariaDB specifics beyond the conformance suite: what row locks must never hold up.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use outbox_core::{NewEvent, OutboxStore, OutboxStoreExt};
use outbox_tests::conformance::{Harness, NowUtc};
use outbox_tests::harness::MySqlHarness;

/// Longest a store call may take here; a guard against a lock wait, not a pace.
const GUARD: Duration = Duration::from_secs(10);

fn event(n: usize) -> NewEvent {
    NewEvent::builder("file.stored", "upload", n.to_string())
        .build()
        .expect("valid event")
}

/// A locked claim holds its own events' rows and nothing else: renewing, acknowledging and
/// reviving other events, and answering for its own, never wait for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_claim_holds_up_no_other_call() {
    let h = MySqlHarness::new().await;
    h.emit((0..4).map(event).collect(), true)
        .await
        .expect("emit");
    let store = h.store();
    let now = h.clock().now_utc();
    let (lease, leased) = store
        .claim_for("w", 3, Duration::from_secs(30), now)
        .await
        .expect("claim");
    assert_eq!(leased.len(), 3);
    let locked = store
        .claim_locked("l", 1, Duration::from_secs(30), now)
        .await
        .expect("locked claim");
    assert_eq!(locked.events.len(), 1);
    let renewed = tokio::time::timeout(GUARD, store.renew(lease.id, now, now))
        .await
        .expect("renew waited for the locked claim")
        .expect("renew");
    assert_eq!(renewed, 3);
    let ids: Vec<_> = leased.iter().map(|e| e.id).collect();
    let acked = tokio::time::timeout(GUARD, store.ack(lease.id, &ids, now))
        .await
        .expect("ack waited for the locked claim")
        .expect("ack");
    assert_eq!(acked.len(), 3);
    drop(locked);
    h.cleanup().await;
}

/// A locked claim holds only the rows it takes: an event of a paused type that its search
/// passed over is not held (deleting it, which skips what a worker holds, deletes it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_claim_holds_no_row_it_passed_over() {
    let h = MySqlHarness::new().await;
    let store = h.store();
    let now = h.clock().now_utc();
    store.pause_type("order.paid", now).await.expect("pause");
    let paused = NewEvent::builder("order.paid", "order", "1")
        .build()
        .expect("valid event");
    let ids: Vec<_> = h
        .emit(vec![paused, event(1)], true)
        .await
        .expect("emit")
        .iter()
        .map(outbox_core::Emitted::id)
        .collect();
    let locked = store
        .claim_locked("l", 1, Duration::from_secs(30), now)
        .await
        .expect("locked claim");
    let taken: Vec<_> = locked.events.iter().map(|e| e.id).collect();
    assert_eq!(taken, ids[1..].to_vec());
    let deleted = tokio::time::timeout(GUARD, store.delete_events(&ids[..1], now))
        .await
        .expect("delete waited")
        .expect("delete");
    assert_eq!(deleted, ids[..1].to_vec(), "the paused event was not held");
    drop(locked);
    h.cleanup().await;
}
