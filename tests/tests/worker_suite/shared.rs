// The worker tests that hold in every claim mode, included by `worker.rs` (leases) and
// `worker_locked.rs` (locked claims), each of which sets `MODE`.

struct Fixture {
    clock: Arc<TokioClock>,
    store: MemoryStore,
    transport: RecordingTransport,
}

impl Fixture {
    fn new() -> Self {
        let clock = Arc::new(TokioClock::starting_at(t0()));
        Self {
            store: MemoryStore::with_clock(clock.clone()),
            clock,
            transport: RecordingTransport::new(),
        }
    }

    /// A worker with exact (unjittered) backoff: 10 s, 20 s, 40 s … up to 5 min, 5 attempts.
    fn worker(&self) -> WorkerBuilder<MemoryStore, RecordingTransport> {
        let policy = RetryPolicy::new(
            Duration::from_secs(10),
            2.0,
            Duration::from_secs(300),
            Jitter::None,
            5,
        )
        .unwrap();
        Worker::builder(self.store.clone(), self.transport.clone())
            .worker_id("test-worker")
            .clock(self.clock.clone())
            .random_source(FixedRandom(0.5))
            .retry_policy(policy)
            .lease(Duration::from_secs(60))
            .delivery_timeout(Duration::from_secs(5))
            .claim_mode(MODE)
    }

    async fn emit(&self, events: impl IntoIterator<Item = NewEvent>) -> Vec<EventId> {
        let mut uow = self.store.begin().await.unwrap();
        let emitted = uow.emit_all(events.into_iter().collect()).await.unwrap();
        uow.commit().await.unwrap();
        emitted.iter().map(|e| e.id()).collect()
    }

    async fn status(&self, id: EventId) -> (Status, u32) {
        let e = self.store.fetch(id).await.unwrap();
        (e.status(), e.attempts())
    }
}

fn uploads(n: usize) -> Vec<NewEvent> {
    (0..n)
        .map(|i| {
            NewEvent::builder("file.stored", "upload", format!("u-{i}"))
                .build()
                .unwrap()
        })
        .collect()
}

#[tokio::test(start_paused = true)]
async fn delivers_every_pending_event_once() {
    let f = Fixture::new();
    let ids = f.emit(uploads(250)).await;
    let report = f
        .worker()
        .batch_size(100)
        .concurrency(8)
        .build()
        .unwrap()
        .run_until_idle()
        .await
        .unwrap();
    assert_eq!(
        (
            report.delivered,
            report.batches,
            report.retried,
            report.dead
        ),
        (250, 3, 0, 0)
    );
    let delivered: Vec<EventId> = f.transport.delivered().iter().map(|e| e.id).collect();
    assert_eq!(delivered.len(), 250);
    let mut sorted = delivered.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted, ids, "each event delivered exactly once");
    for id in ids {
        assert_eq!(f.status(id).await, (Status::Delivered, 1));
    }
}

#[tokio::test(start_paused = true)]
async fn retryable_failure_waits_for_its_backoff() {
    let f = Fixture::new();
    let id = f.emit(uploads(1)).await[0];
    f.transport
        .script([Scripted::Retryable, Scripted::Retryable]);
    let worker = f.worker().build().unwrap();

    let first = worker.run_until_idle().await.unwrap();
    assert_eq!((first.retried, first.delivered), (1, 0));
    let e = f.store.fetch(id).await.unwrap();
    assert_eq!((e.status(), e.attempts()), (Status::Pending, 1));
    assert_eq!(
        e.lifecycle.next_attempt_at,
        f.clock.now() + chrono::TimeDelta::seconds(10)
    );

    tokio::time::advance(Duration::from_secs(9)).await;
    assert_eq!(
        worker.run_until_idle().await.unwrap().batches,
        0,
        "not delivered before next_attempt_at"
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(worker.run_until_idle().await.unwrap().retried, 1);
    assert_eq!(f.status(id).await, (Status::Pending, 2));

    tokio::time::advance(Duration::from_secs(19)).await;
    assert_eq!(
        worker.run_until_idle().await.unwrap().batches,
        0,
        "the second backoff doubles"
    );
    tokio::time::advance(Duration::from_secs(1)).await;
    assert_eq!(worker.run_until_idle().await.unwrap().delivered, 1);
    assert_eq!(f.status(id).await, (Status::Delivered, 3));
    assert_eq!(f.transport.attempts().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn retry_after_hint_lengthens_the_backoff() {
    let f = Fixture::new();
    let id = f.emit(uploads(1)).await[0];
    f.transport
        .script([Scripted::RetryAfter(Duration::from_secs(120))]);
    f.worker().build().unwrap().run_until_idle().await.unwrap();
    let e = f.store.fetch(id).await.unwrap();
    assert_eq!(
        e.lifecycle.next_attempt_at,
        f.clock.now() + chrono::TimeDelta::seconds(120)
    );
}

#[tokio::test(start_paused = true)]
async fn permanent_failure_kills_at_once() {
    let f = Fixture::new();
    let ids = f.emit(uploads(2)).await;
    f.transport.script([Scripted::Permanent]);
    let report = f
        .worker()
        .concurrency(1)
        .build()
        .unwrap()
        .run_until_idle()
        .await
        .unwrap();
    assert_eq!((report.dead, report.delivered), (1, 1));
    let dead = f.store.fetch(ids[0]).await.unwrap();
    assert_eq!((dead.status(), dead.attempts()), (Status::Dead, 1));
    assert_eq!(
        dead.lifecycle.last_error.as_deref(),
        Some("scripted permanent failure")
    );
}

#[tokio::test(start_paused = true)]
async fn max_attempts_ends_in_dead() {
    let f = Fixture::new();
    let id = f
        .emit([NewEvent::builder("file.stored", "upload", "x")
            .max_attempts(3)
            .build()
            .unwrap()])
        .await[0];
    f.transport.otherwise(Scripted::Retryable);
    let worker = f.worker().build().unwrap();
    let mut dead = 0;
    for _ in 0..5 {
        dead += worker.run_until_idle().await.unwrap().dead;
        tokio::time::advance(Duration::from_secs(300)).await;
    }
    assert_eq!(dead, 1);
    assert_eq!(
        f.status(id).await,
        (Status::Dead, 3),
        "three attempts, then no more"
    );
    assert_eq!(f.transport.attempts().len(), 3);
}

#[tokio::test(start_paused = true)]
async fn slow_delivery_times_out_as_retryable() {
    let f = Fixture::new();
    let id = f.emit(uploads(1)).await[0];
    f.transport.script([Scripted::Hang]);
    let report = f.worker().build().unwrap().run_until_idle().await.unwrap();
    assert_eq!(report.retried, 1);
    let e = f.store.fetch(id).await.unwrap();
    assert_eq!((e.status(), e.attempts()), (Status::Pending, 1));
    assert!(e.lifecycle.last_error.unwrap().contains("timed out"));
}

#[tokio::test(start_paused = true)]
async fn wakes_on_commit_without_waiting_for_the_poll() {
    let f = Fixture::new();
    let worker = f
        .worker()
        .poll_interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    let running = worker.spawn();
    tokio::task::yield_now().await; // the worker runs its first (empty) round and waits
    let ids = f.emit(uploads(1)).await;
    while f.transport.delivered().is_empty() {
        tokio::task::yield_now().await;
    }
    let e = f.store.fetch(ids[0]).await.unwrap();
    let waited = e.lifecycle.delivered_at.unwrap() - e.created_at;
    assert!(
        waited < chrono::TimeDelta::seconds(1),
        "woken by the commit, not the hourly poll: {waited}"
    );
    assert_eq!(running.shutdown().await.unwrap().delivered, 1);
}

#[tokio::test(start_paused = true)]
async fn polls_when_the_store_cannot_wake_it() {
    let mut f = Fixture::new();
    f.store = MemoryStore::builder()
        .clock(f.clock.clone())
        .wakeups(false)
        .build();
    let worker = Worker::builder(f.store.clone(), f.transport.clone())
        .claim_mode(MODE)
        .clock(f.clock.clone())
        .poll_interval(Duration::from_secs(2))
        .build()
        .unwrap();
    let running = worker.spawn();
    tokio::task::yield_now().await;
    let start = f.clock.now();
    f.emit(uploads(1)).await;
    while f.transport.delivered().is_empty() {
        tokio::time::advance(Duration::from_millis(100)).await;
    }
    let waited = f.clock.now() - start;
    // Found by the next 2 s poll (within one 100 ms step of it), not straight after the commit.
    assert!(
        waited >= chrono::TimeDelta::seconds(1),
        "delivered before any poll: {waited}"
    );
    assert!(
        waited <= chrono::TimeDelta::milliseconds(2100),
        "missed the poll: {waited}"
    );
    assert_eq!(running.shutdown().await.unwrap().delivered, 1);
}

#[tokio::test(start_paused = true)]
async fn shutdown_releases_unfinished_work_and_loses_nothing() {
    let f = Fixture::new();
    let ids = f.emit(uploads(4)).await;
    // Two deliveries succeed, two hang until the shutdown grace runs out.
    f.transport.script([
        Scripted::Deliver,
        Scripted::Hang,
        Scripted::Deliver,
        Scripted::Hang,
    ]);
    let worker = f
        .worker()
        .concurrency(4)
        .delivery_timeout(Duration::from_secs(50))
        .shutdown_grace(Duration::from_secs(3))
        .build()
        .unwrap();
    let running = worker.spawn();
    while f.transport.attempts().len() < 4 {
        tokio::task::yield_now().await;
    }
    let report = running.shutdown().await.unwrap();
    assert_eq!((report.delivered, report.released), (2, 2));
    let counts = f.store.count_by_status().await.unwrap();
    assert_eq!(
        (counts.delivered, counts.pending, counts.in_flight),
        (2, 2, 0)
    );
    for id in &ids {
        let (status, _) = f.status(*id).await;
        assert!(matches!(status, Status::Delivered | Status::Pending));
    }
    // A fresh worker delivers what was released, at once (a release is not a failed attempt).
    let rest = f.worker().build().unwrap().run_until_idle().await.unwrap();
    assert_eq!(rest.delivered, 2);
    for id in ids {
        assert_eq!(f.status(id).await.0, Status::Delivered);
    }
}

#[tokio::test(start_paused = true)]
async fn retention_sweep_deletes_old_deliveries() {
    let f = Fixture::new();
    let old = f.emit(uploads(2)).await;
    let worker = f
        .worker()
        .retention(Some(Duration::from_secs(3600)))
        .build()
        .unwrap();
    worker.run_until_idle().await.unwrap();
    tokio::time::advance(Duration::from_secs(1800)).await;
    let recent = f.emit(uploads(1)).await;
    worker.run_until_idle().await.unwrap();
    tokio::time::advance(Duration::from_secs(1801)).await;
    assert_eq!(worker.sweep().await, 2);
    assert!(f.store.get(old[0]).await.unwrap().is_none());
    assert!(f.store.get(recent[0]).await.unwrap().is_some());
    let keep_all = f.worker().retention(None).build().unwrap();
    tokio::time::advance(Duration::from_secs(7200)).await;
    assert_eq!(keep_all.sweep().await, 0);
}

/// The report counts what the store decided, not what the worker would have predicted: a
/// retryable failure of an event whose attempts the store has already used up is dead.
#[tokio::test(start_paused = true)]
async fn the_report_counts_what_the_store_decided() {
    let f = Fixture::new();
    let last_try = NewEvent::builder("file.stored", "upload", "x")
        .max_attempts(1)
        .build()
        .unwrap();
    f.emit([last_try]).await;
    f.transport.script([Scripted::Retryable]);
    let report = f.worker().build().unwrap().run_until_idle().await.unwrap();
    assert_eq!((report.dead, report.retried), (1, 0));
}

/// A worker on paused tokio time over a store on the system clock still delivers what the store
/// considers due: the store's clock decides, the worker's only measures lengths.
#[tokio::test(start_paused = true)]
async fn a_worker_on_another_clock_sees_what_is_due() {
    let store = MemoryStore::new();
    let transport = RecordingTransport::new();
    let mut uow = store.begin().await.unwrap();
    uow.emit(uploads(1).remove(0)).await.unwrap();
    uow.commit().await.unwrap();
    let worker = Worker::builder(store.clone(), transport.clone())
        .claim_mode(MODE)
        .clock(Arc::new(TokioClock::starting_at(t0())))
        .build()
        .unwrap();
    let report = worker.run_until_idle().await.unwrap();
    assert_eq!(report.delivered, 1);
    assert_eq!(transport.delivered().len(), 1);
}

#[tokio::test(start_paused = true)]
async fn running_worker_sweeps_on_its_interval_even_when_busy() {
    let f = Fixture::new();
    let worker = f
        .worker()
        .retention(Some(Duration::from_secs(3600)))
        .retention_interval(Duration::from_secs(600))
        .poll_interval(Duration::from_secs(3600))
        .build()
        .unwrap();
    let running = worker.spawn();
    let old = f.emit(uploads(3)).await;
    while f.transport.delivered().len() < 3 {
        tokio::task::yield_now().await;
    }
    // An hour and a bit later the next sweep (every 10 min) deletes them.
    tokio::time::advance(Duration::from_secs(3600 + 600)).await;
    for _ in 0..100 {
        if f.store.get(old[0]).await.unwrap().is_none() {
            break;
        }
        tokio::task::yield_now().await;
    }
    let report = running.shutdown().await.unwrap();
    assert_eq!((report.delivered, report.purged), (3, 3));
    assert!(f.store.events().is_empty());
}

/// With `RetryPolicy::immediate()`, a test's `run_until_idle` goes on retrying a failed
/// delivery until it succeeds (with the default policy the retry is seconds away, so it stays
/// pending after `run_until_idle` returns).
#[tokio::test(start_paused = true)]
async fn immediate_retries_finish_within_run_until_idle() {
    let f = Fixture::new();
    let ids = f.emit(uploads(1)).await;
    f.transport
        .script([Scripted::Retryable, Scripted::Retryable, Scripted::Deliver]);
    let report = Worker::builder(f.store.clone(), f.transport.clone())
        .claim_mode(MODE)
        .clock(f.clock.clone())
        .retry_policy(RetryPolicy::immediate())
        .build()
        .unwrap()
        .run_until_idle()
        .await
        .unwrap();
    assert_eq!((report.retried, report.delivered), (2, 1));
    assert_eq!(f.status(ids[0]).await, (Status::Delivered, 3));
}

/// On shutdown, deliveries still waiting for a slot are released, not started during the grace
/// period: with one slot, the first delivery finishes within the grace, the two behind it are
/// never attempted and come back pending, untried.
#[tokio::test(start_paused = true)]
async fn shutdown_releases_deliveries_that_have_not_started() {
    let f = Fixture::new();
    let ids = f.emit(uploads(3)).await;
    f.transport.script([
        Scripted::DeliverAfter(Duration::from_secs(2)),
        Scripted::Deliver,
        Scripted::Deliver,
    ]);
    let running = f
        .worker()
        .concurrency(1)
        .shutdown_grace(Duration::from_secs(10))
        .build()
        .unwrap()
        .spawn();
    // Let the worker claim the batch and start the first delivery.
    while f.transport.attempts().is_empty() {
        tokio::task::yield_now().await;
    }
    let report = running.shutdown().await.unwrap();
    assert_eq!(
        f.transport.attempts().len(),
        1,
        "only the started delivery ran"
    );
    assert_eq!((report.delivered, report.released), (1, 2));
    for id in &ids[1..] {
        assert_eq!(f.status(*id).await, (Status::Pending, 0));
    }
}

/// Several workers stop together: all stop claiming at once and drain side by side, so with a
/// transport that never answers the whole shutdown takes one grace period, not one per worker,
/// and every claimed event is released.
#[tokio::test(start_paused = true)]
async fn workers_shut_down_together_within_one_grace_period() {
    let f = Fixture::new();
    f.emit(uploads(6)).await;
    f.transport.otherwise(Scripted::Hang);
    let running: Vec<_> = (0..3)
        .map(|i| {
            f.worker()
                .worker_id(format!("w{i}"))
                .batch_size(2)
                .delivery_timeout(Duration::from_secs(30))
                .shutdown_grace(Duration::from_secs(10))
                .build()
                .unwrap()
                .spawn()
        })
        .collect();
    while f.transport.attempts().len() < 6 {
        tokio::task::yield_now().await;
    }
    let started = tokio::time::Instant::now();
    let report = outbox_worker::RunningWorker::shutdown_all(running)
        .await
        .unwrap();
    assert_eq!(
        started.elapsed(),
        Duration::from_secs(10),
        "one grace period"
    );
    assert_eq!(report.released, 6);
    let counts = f.store.count_by_status().await.unwrap();
    assert_eq!((counts.pending, counts.in_flight), (6, 0));
}

/// A receiver's Retry-After is honoured up to the retry policy's cap (5 min here): asking for a
/// year does not park the event for a year.
#[tokio::test(start_paused = true)]
async fn retry_after_is_capped_by_the_policy() {
    let f = Fixture::new();
    let ids = f.emit(uploads(1)).await;
    f.transport
        .script([Scripted::RetryAfter(Duration::from_secs(365 * 86_400))]);
    f.worker().build().unwrap().run_until_idle().await.unwrap();
    let event = f.store.fetch(ids[0]).await.unwrap();
    let wait = event.lifecycle.next_attempt_at - f.clock.now();
    assert_eq!(wait, chrono::TimeDelta::seconds(300));
}

/// A transport that says its destination is paused.
struct Paused;

#[outbox_core::async_trait]
impl outbox_core::Transport for Paused {
    async fn deliver(&self, _: &OutboxEvent) -> Result<(), outbox_core::DeliveryError> {
        Err(outbox_core::DeliveryError::unavailable(
            "route r paused",
            Duration::from_secs(30),
        ))
    }
}

/// A delivery that was not tried because its destination is paused is deferred: pending, due
/// when the pause ends, no attempt spent — however many times it happens, the event does not
/// die (with a retryable failure instead, 5 rounds would have killed it).
#[tokio::test(start_paused = true)]
async fn a_paused_destination_spends_no_attempts() {
    let f = Fixture::new();
    let ids = f.emit(uploads(2)).await;
    let worker = Worker::builder(f.store.clone(), Paused)
        .claim_mode(MODE)
        .clock(f.clock.clone())
        .retry_policy(RetryPolicy::immediate())
        .build()
        .unwrap();
    for round in 0..20 {
        let report = worker.run_until_idle().await.unwrap();
        assert_eq!((report.deferred, report.retried, report.dead), (2, 0, 0));
        let e = f.store.fetch(ids[0]).await.unwrap();
        assert_eq!(
            (e.status(), e.attempts()),
            (Status::Pending, 0),
            "round {round}"
        );
        assert_eq!(
            e.lifecycle.next_attempt_at,
            f.clock.now() + chrono::TimeDelta::seconds(30)
        );
        assert_eq!(e.lifecycle.last_error.as_deref(), Some("route r paused"));
        tokio::time::advance(Duration::from_secs(30)).await;
    }
}

/// The worker's own attempt cap ends retries before the event's larger `max_attempts`.
#[tokio::test(start_paused = true)]
async fn the_workers_attempt_cap_ends_retries_sooner() {
    let f = Fixture::new();
    let ids = f.emit(uploads(1)).await; // 10 attempts allowed by the event
    f.transport.otherwise(Scripted::Retryable);
    let report = f
        .worker()
        .retry_policy(RetryPolicy::immediate())
        .max_attempts(Some(3))
        .build()
        .unwrap()
        .run_until_idle()
        .await
        .unwrap();
    assert_eq!((report.retried, report.dead), (2, 1));
    assert_eq!(f.status(ids[0]).await, (Status::Dead, 3));
}

/// A transport that panics on the events of one aggregate and delivers the rest.
struct PanicsOn(&'static str);

#[outbox_core::async_trait]
impl outbox_core::Transport for PanicsOn {
    async fn deliver(&self, event: &OutboxEvent) -> Result<(), outbox_core::DeliveryError> {
        assert_ne!(event.aggregate_id, self.0, "the transport gave way");
        Ok(())
    }
}

/// A transport that panics fails that one delivery, retryably and saying so; the batch's
/// other events are delivered and the worker goes on.
#[tokio::test(start_paused = true)]
async fn a_panicking_delivery_fails_its_event_alone() {
    let f = Fixture::new();
    let ids = f.emit(uploads(3)).await;
    let report = Worker::builder(f.store.clone(), PanicsOn("u-1"))
        .clock(f.clock.clone())
        .claim_mode(MODE)
        .build()
        .unwrap()
        .run_until_idle()
        .await
        .unwrap();
    assert_eq!((report.delivered, report.retried), (2, 1));
    assert_eq!(f.status(ids[0]).await, (Status::Delivered, 1));
    assert_eq!(f.status(ids[2]).await, (Status::Delivered, 1));
    let failed = f.store.fetch(ids[1]).await.unwrap();
    assert_eq!((failed.status(), failed.attempts()), (Status::Pending, 1));
    let error = failed.lifecycle.last_error.unwrap_or_default();
    assert!(
        error.contains("panicked") && error.contains("the transport gave way"),
        "{error}"
    );
}
