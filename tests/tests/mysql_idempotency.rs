//! MySQL/MariaDB: two transactions racing on one idempotency key, in a binary of its own so
//! that no other test's lock waits can pass for this one's.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use outbox_core::{Emit, Emitted, NewEvent, OutboxStore};
use outbox_tests::conformance::Harness;
use outbox_tests::harness::MySqlHarness;

/// Longest a store call may take here; a guard against a lock wait, not a pace.
const GUARD: Duration = Duration::from_secs(10);

/// The first transaction holds an idempotency key uncommitted; a second emitting the same key
/// waits on the unique index until the first commits, then learns the committed event's id.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_transactions_on_one_idempotency_key_store_one_event() {
    let h = MySqlHarness::new().await;
    let store = h.store();
    let same = |n: usize| {
        NewEvent::builder("file.stored", "upload", n.to_string())
            .idempotency_key("same")
            .build()
            .unwrap()
    };
    let mut first = store.begin().await.unwrap();
    let first_id = first.emit(same(1)).await.unwrap();
    let mut second = tokio::spawn({
        let store = store.clone();
        async move {
            let mut tx = store.begin().await.unwrap();
            let answer = tx.emit(same(2)).await.unwrap();
            tx.commit().await.unwrap();
            answer
        }
    });
    // The second transaction must wait on the key; if it ends first, say how.
    tokio::select! {
        () = wait_for_lock_wait(&h) => {}
        ended = &mut second => panic!("the second emit did not wait for the first: {ended:?}"),
    }
    first.commit().await.unwrap();
    let second_id = tokio::time::timeout(GUARD, second).await.unwrap().unwrap();
    assert_eq!(second_id, Emitted::Duplicate(first_id.id()));
    assert_eq!(store.count_by_status().await.unwrap().total(), 1);
    h.cleanup().await;
}

/// Returns once an insert into the harness's table is held up (the server's own view), or panics after 60 s
/// (a guard for a loaded machine, not a pace).
async fn wait_for_lock_wait(h: &MySqlHarness) {
    let waiting = async {
        loop {
            // An insert into the test's table still running: it can only be waiting on the
            // key (MariaDB does not list this wait as `LOCK WAIT` in innodb_trx).
            let n: i64 = sqlx::query_scalar(
                "SELECT COUNT(*) FROM information_schema.processlist \
                 WHERE info LIKE CONCAT('INSERT INTO `', ?, '`%')",
            )
            .bind(h.store().config().table())
            .fetch_one(h.store().pool())
            .await
            .unwrap();
            if n > 0 {
                return;
            }
            tokio::task::yield_now().await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), waiting)
        .await
        .expect("no transaction ever waited on a lock");
}
