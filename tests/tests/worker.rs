//! The worker end to end on the memory store, with tokio's paused clock driving both the
//! worker's timers and the stored timestamps: nothing here waits on the wall clock.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use outbox_core::{
    Clock, Emit, EventFilter, EventId, EventPage, Failure, FixedRandom, Jitter, Lease, LeaseId,
    NewEvent, OutboxEvent, OutboxStore, OutboxStoreExt, Reclaimed, Recorded, RetryPolicy, Status,
    StatusCounts, StoreError,
};

type Time = chrono::DateTime<chrono::Utc>;
use outbox_memory::{MemoryStore, RecordingTransport, Scripted};
use outbox_tests::harness::t0;
use outbox_worker::{ClaimMode, TokioClock, Worker, WorkerBuilder};

/// Every shared test claims under leases here.
const MODE: ClaimMode = ClaimMode::Lease;

include!("worker_suite/shared.rs");

#[tokio::test(start_paused = true)]
async fn expired_lease_of_a_dead_worker_is_reclaimed() {
    let f = Fixture::new();
    let ids = f.emit(uploads(3)).await;
    // A worker claims and dies without a word.
    let (_, held) = f
        .store
        .claim_for("crashed", 10, Duration::from_secs(60), f.clock.now())
        .await
        .unwrap();
    assert_eq!(held.len(), 3);
    let worker = f.worker().build().unwrap();
    assert_eq!(
        worker.run_until_idle().await.unwrap().delivered,
        0,
        "a live lease is respected"
    );

    tokio::time::advance(Duration::from_secs(60)).await;
    let report = worker.run_until_idle().await.unwrap();
    assert_eq!((report.reclaimed, report.delivered), (3, 3));
    for id in ids {
        assert_eq!(
            f.status(id).await,
            (Status::Delivered, 2),
            "the crashed attempt counts"
        );
    }
}

#[tokio::test(start_paused = true)]
async fn long_delivery_keeps_its_lease_by_renewing() {
    let f = Fixture::new();
    let id = f.emit(uploads(1)).await[0];
    f.transport.script([Scripted::Hang]);
    let worker = f
        .worker()
        .lease(Duration::from_secs(60))
        .delivery_timeout(Duration::from_secs(150))
        .build();
    assert_eq!(
        worker.err().map(|e| e.field()),
        Some("lease"),
        "a lease shorter than the timeout is refused"
    );

    let worker = f
        .worker()
        .lease(Duration::from_secs(60))
        .delivery_timeout(Duration::from_secs(55))
        .build()
        .unwrap();
    let store = f.store.clone();
    let clock = f.clock.clone();
    let running = tokio::spawn(async move { worker.run_until_idle().await });
    // 50 s in, the first renewal (every lease/3) has pushed the expiry beyond the original 60 s.
    tokio::time::sleep(Duration::from_secs(50)).await;
    let e = store.fetch(id).await.unwrap();
    let until = e.lifecycle.lease.unwrap().until;
    assert!(
        until > t0() + chrono::TimeDelta::seconds(60),
        "lease renewed to {until}"
    );
    assert_eq!(store.reclaim_expired(clock.now()).await.unwrap().pending, 0);
    let report = running.await.unwrap().unwrap();
    assert_eq!(
        report.retried, 1,
        "the hung delivery timed out at 55 s and was rescheduled"
    );
}

#[tokio::test(start_paused = true)]
async fn bad_settings_are_refused_naming_the_field() {
    let f = Fixture::new();
    let field =
        |b: WorkerBuilder<MemoryStore, RecordingTransport>| b.build().err().map(|e| e.field());
    assert_eq!(field(f.worker().batch_size(0)), Some("batch_size"));
    assert_eq!(field(f.worker().concurrency(0)), Some("concurrency"));
    assert_eq!(field(f.worker().worker_id(" ")), Some("worker_id"));
    assert_eq!(
        field(f.worker().poll_interval(Duration::ZERO)),
        Some("poll_interval")
    );
    // Upper bounds: a grace of u64::MAX seconds used to overflow the timer on shutdown, a lease
    // of years would keep a crashed worker's events from everyone.
    assert_eq!(
        field(f.worker().shutdown_grace(Duration::from_secs(u64::MAX))),
        Some("shutdown_grace")
    );
    assert_eq!(
        field(
            f.worker()
                .lease(Duration::from_secs(10 * 86_400))
                .delivery_timeout(Duration::from_secs(5))
        ),
        Some("lease")
    );
    assert_eq!(
        field(f.worker().retention(Some(Duration::from_secs(u64::MAX)))),
        Some("retention")
    );
    assert_eq!(
        field(f.worker().error_backoff(Duration::from_secs(u64::MAX))),
        Some("error_backoff")
    );
}

/// A store whose `ack` always fails (not retryably), to check that the worker still records the
/// batch's other outcomes.
#[derive(Clone)]
struct AckFails(MemoryStore);

#[outbox_core::async_trait]
impl OutboxStore for AckFails {
    async fn claim(
        &self,
        lease: &Lease,
        limit: usize,
        now: Time,
    ) -> Result<Vec<OutboxEvent>, StoreError> {
        self.0.claim(lease, limit, now).await
    }
    async fn renew(&self, lease: LeaseId, until: Time, now: Time) -> Result<u64, StoreError> {
        self.0.renew(lease, until, now).await
    }
    async fn ack(&self, _: LeaseId, _: &[EventId], _: Time) -> Result<Vec<Recorded>, StoreError> {
        Err(StoreError::Backend {
            source: "ack refused".into(),
        })
    }
    async fn nack(
        &self,
        lease: LeaseId,
        failures: &[Failure],
        now: Time,
    ) -> Result<Vec<Recorded>, StoreError> {
        self.0.nack(lease, failures, now).await
    }
    async fn release(
        &self,
        lease: LeaseId,
        ids: &[EventId],
        now: Time,
    ) -> Result<Vec<Recorded>, StoreError> {
        self.0.release(lease, ids, now).await
    }
    async fn defer(
        &self,
        lease: LeaseId,
        ids: &[EventId],
        until: Time,
        reason: &str,
        now: Time,
    ) -> Result<Vec<Recorded>, StoreError> {
        self.0.defer(lease, ids, until, reason, now).await
    }
    async fn reclaim_expired(&self, now: Time) -> Result<Reclaimed, StoreError> {
        self.0.reclaim_expired(now).await
    }
    async fn purge_delivered(&self, before: Time, now: Time) -> Result<u64, StoreError> {
        self.0.purge_delivered(before, now).await
    }
    async fn get(&self, id: EventId) -> Result<Option<OutboxEvent>, StoreError> {
        self.0.get(id).await
    }
    async fn list(&self, filter: &EventFilter) -> Result<EventPage, StoreError> {
        self.0.list(filter).await
    }
    async fn count_by_status(&self) -> Result<StatusCounts, StoreError> {
        self.0.count_by_status().await
    }
    async fn retry_dead(
        &self,
        id: EventId,
        extra: u32,
        now: Time,
    ) -> Result<OutboxEvent, StoreError> {
        self.0.retry_dead(id, extra, now).await
    }
}

/// When recording one kind of outcome fails, the others of the batch are recorded all the same:
/// the failed delivery gets its backoff and the permanent failure dies now, instead of both
/// coming back at lease expiry.
#[tokio::test(start_paused = true)]
async fn every_outcome_is_recorded_when_one_kind_fails() {
    let f = Fixture::new();
    let ids = f.emit(uploads(3)).await;
    f.transport
        .script([Scripted::Deliver, Scripted::Retryable, Scripted::Permanent]);
    let worker = Worker::builder(AckFails(f.store.clone()), f.transport.clone())
        .clock(f.clock.clone())
        .concurrency(1)
        .build()
        .unwrap();
    let error = worker.run_until_idle().await.unwrap_err();
    assert!(error.to_string().contains("ack refused"), "{error}");
    assert_eq!(
        f.status(ids[0]).await,
        (Status::InFlight, 0),
        "the ack failed"
    );
    assert_eq!(
        f.status(ids[1]).await,
        (Status::Pending, 1),
        "retry recorded"
    );
    assert_eq!(f.status(ids[2]).await, (Status::Dead, 1), "death recorded");
}

/// A commit hook may use the store: hooks run after the store's lock is released.
#[test]
fn a_commit_hook_may_read_the_store() {
    let (done, finished) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let store = MemoryStore::new();
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let mut uow = rt.block_on(store.begin()).unwrap();
        rt.block_on(uow.emit(uploads(1).remove(0))).unwrap();
        let seen = Arc::new(std::sync::Mutex::new(None));
        let (s2, seen2) = (store.clone(), seen.clone());
        uow.on_commit(move || {
            *seen2.lock().unwrap() = Some(s2.events().len());
        });
        rt.block_on(uow.commit()).unwrap();
        let _ = done.send(*seen.lock().unwrap());
    });
    // Only a deadlock would make this wait; the guard turns it into a failure.
    let seen = finished.recv_timeout(Duration::from_secs(30));
    assert_eq!(
        seen,
        Ok(Some(1)),
        "the hook deadlocked or did not see the event"
    );
}

/// An embedded worker reports through the `metrics` facade to the application's recorder:
/// deliveries and their durations by event type and outcome, and what the store recorded.
#[test]
fn the_worker_reports_through_the_metrics_facade() {
    use metrics_util::debugging::{DebugValue, DebuggingRecorder};
    use outbox_worker::metrics as names;

    let recorder = DebuggingRecorder::new();
    let snapshotter = recorder.snapshotter();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_time()
        .start_paused(true)
        .build()
        .unwrap();
    // A current-thread runtime runs every delivery task on this thread, inside the local
    // recorder's scope.
    let report = metrics::with_local_recorder(&recorder, || {
        rt.block_on(async {
            let f = Fixture::new();
            f.emit(uploads(3)).await;
            f.emit([NewEvent::builder("order.paid", "order", "o-1")
                .build()
                .unwrap()])
                .await;
            f.transport.script([
                Scripted::DeliverAfter(Duration::from_millis(250)),
                Scripted::Permanent,
            ]);
            f.worker()
                .concurrency(1)
                .build()
                .unwrap()
                .run_until_idle()
                .await
                .unwrap()
        })
    });
    assert_eq!((report.delivered, report.dead), (3, 1));

    let mut counters = std::collections::BTreeMap::new();
    let mut slow = Vec::new();
    for (key, _, _, value) in snapshotter.snapshot().into_vec() {
        let key = key.key();
        let labels: Vec<String> = key
            .labels()
            .map(|l| format!("{}={}", l.key(), l.value()))
            .collect();
        match value {
            DebugValue::Counter(n) => {
                counters.insert(format!("{} {}", key.name(), labels.join(",")), n);
            }
            DebugValue::Histogram(values) if key.name() == names::DELIVERY_SECONDS => {
                let total: f64 = values.iter().map(|v| v.into_inner()).sum();
                slow.push((labels.join(","), values.len(), total));
            }
            _ => {}
        }
    }
    let get = |k: &str| counters.get(k).copied().unwrap_or_default();
    assert_eq!(
        get("outbox_deliveries_total event_type=file.stored,outcome=delivered"),
        2
    );
    assert_eq!(
        get("outbox_deliveries_total event_type=file.stored,outcome=permanent"),
        1
    );
    assert_eq!(
        get("outbox_deliveries_total event_type=order.paid,outcome=delivered"),
        1
    );
    assert_eq!(get("outbox_recorded_total outcome=delivered"), 3);
    assert_eq!(get("outbox_recorded_total outcome=dead"), 1);
    assert!(get("outbox_batches_total ") >= 1, "{counters:?}");
    // The one slow delivery (250 ms on tokio's paused clock) is in its series' histogram.
    let delivered = slow
        .iter()
        .find(|(labels, _, _)| labels == "event_type=file.stored,outcome=delivered")
        .unwrap();
    assert_eq!(delivered.1, 2);
    assert!((delivered.2 - 0.25).abs() < 0.01, "{slow:?}");
}

/// A worker set to claim under locks, on a store that does not offer locked claims (this
/// wrapper forwards only the lease methods), stops at once with the store's refusal instead of
/// retrying it for ever.
#[tokio::test(start_paused = true)]
async fn a_store_without_locked_claims_stops_a_locked_worker_with_the_reason() {
    let f = Fixture::new();
    f.emit(uploads(1)).await;
    let worker = Worker::builder(AckFails(f.store.clone()), f.transport.clone())
        .clock(f.clock.clone())
        .claim_mode(ClaimMode::Locked)
        .build()
        .unwrap();
    // Left alone (never cancelled), it must end by itself; an hour of paused time is the guard.
    let ended = tokio::time::timeout(
        Duration::from_secs(3600),
        worker.run(tokio_util::sync::CancellationToken::new()),
    )
    .await
    .expect("the worker kept retrying what the store refuses");
    match ended {
        Err(outbox_worker::WorkerError::Store(StoreError::Unsupported { operation })) => {
            assert_eq!(operation, "claim_locked")
        }
        other => panic!("expected the store's refusal, got {other:?}"),
    }
    assert!(f.transport.attempts().is_empty());
}

/// Holds the deliveries of one aggregate until told; delivers every other event at once.
#[derive(Clone, Default)]
struct Gate {
    open: Arc<tokio::sync::Notify>,
    delivered: Arc<std::sync::Mutex<Vec<EventId>>>,
}

#[outbox_core::async_trait]
impl outbox_core::Transport for Gate {
    async fn deliver(&self, event: &OutboxEvent) -> Result<(), outbox_core::DeliveryError> {
        if event.aggregate_id == "slow" {
            self.open.notified().await;
        }
        self.delivered.lock().unwrap().push(event.id);
        Ok(())
    }
}

/// Under leases, a batch records its finished deliveries while a slow one is still running, so
/// the next event of a key that shared the batch goes out without waiting for the slow one.
#[tokio::test(start_paused = true)]
async fn a_slow_delivery_does_not_hold_back_the_other_keys_of_its_batch() {
    let f = Fixture::new();
    let keyed = |key: &str| {
        NewEvent::builder("order.changed", "order", key)
            .ordering_key(key)
            .build()
            .unwrap()
    };
    let first = f.emit([keyed("slow"), keyed("fast")]).await;
    let next = f.emit([keyed("fast")]).await[0];
    let gate = Gate::default();
    let worker = |name: &str| {
        Worker::builder(f.store.clone(), gate.clone())
            .worker_id(name)
            .clock(f.clock.clone())
            .lease(Duration::from_secs(60))
            .delivery_timeout(Duration::from_secs(30))
            .poll_interval(Duration::from_millis(200))
            .claim_mode(ClaimMode::Lease)
            .build()
            .unwrap()
    };
    let (one, two) = (worker("one"), worker("two"));
    let stop = tokio_util::sync::CancellationToken::new();
    let running = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let (a, b) = tokio::join!(one.run(stop.clone()), two.run(stop));
            a.unwrap();
            b.unwrap();
        })
    };
    let delivered = |id: EventId| gate.delivered.lock().unwrap().contains(&id);
    let waited = tokio::time::timeout(Duration::from_secs(10), async {
        while !delivered(next) {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    assert!(
        waited.is_ok(),
        "the fast key's next event waited for the slow delivery"
    );
    assert!(!delivered(first[0]), "the slow delivery is still running");
    gate.open.notify_one();
    while !delivered(first[0]) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.cancel();
    running.await.unwrap();
    assert_eq!(f.status(first[0]).await.0, Status::Delivered);
}
