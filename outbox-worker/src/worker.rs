//! The delivery loop.

use std::collections::{HashMap, HashSet};
use std::ops::AddAssign;
use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, Utc};
use futures_util::FutureExt;
use futures_util::StreamExt;
use futures_util::stream::FuturesUnordered;
use outbox_core::clock::{add, sub};
use outbox_core::{
    Clock, Deferral, DeliveryError, EventId, Failure, Lease, LeaseId, Lifecycle, LockedBatch,
    OutboxEvent, OutboxStore, Outcome, RandomSource, Recorded, Settlement, StoreError, Transport,
    Wakeups,
};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug, debug_span, info, info_span, warn};

use crate::config::{ClaimMode, WorkerBuilder, WorkerConfig};
use crate::metrics;

/// Why a worker entry point failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WorkerError {
    /// A store call failed (only [`Worker::run_until_idle`] stops for one; [`Worker::run`]
    /// logs it and tries again).
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The worker's task ended abnormally (a panic outside a delivery).
    #[error("the worker task ended abnormally: {0}")]
    Crashed(#[from] tokio::task::JoinError),
}

/// How often a leased batch that is still delivering records the outcomes it has so far.
const PARTIAL_SETTLE_EVERY: Duration = Duration::from_millis(100);

/// What a worker did: counts of outcomes recorded in the store.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WorkerReport {
    /// Batches claimed.
    pub batches: u64,
    /// Events acknowledged as delivered.
    pub delivered: u64,
    /// Failed deliveries rescheduled for another attempt.
    pub retried: u64,
    /// Events that died (permanent error or out of attempts).
    pub dead: u64,
    /// Events given back untried (shutdown).
    pub released: u64,
    /// Events given back untried for later, their destination paused (no attempt spent).
    pub deferred: u64,
    /// Outcomes refused because the lease had been lost to another worker.
    pub lease_lost: u64,
    /// Expired leases taken back from other (presumably dead) workers.
    pub reclaimed: u64,
    /// Delivered events deleted by the retention sweep.
    pub purged: u64,
    /// Streamed events handed to the table's own path untried (their key waiting behind an
    /// earlier event, not due yet, their type paused), by [`Worker::stream`].
    pub held: u64,
}

impl AddAssign for WorkerReport {
    fn add_assign(&mut self, o: Self) {
        self.batches += o.batches;
        self.delivered += o.delivered;
        self.retried += o.retried;
        self.dead += o.dead;
        self.released += o.released;
        self.deferred += o.deferred;
        self.lease_lost += o.lease_lost;
        self.reclaimed += o.reclaimed;
        self.purged += o.purged;
        self.held += o.held;
    }
}

/// Delivers committed events from a store `S` to a transport `T`.
///
/// [`run`](Self::run) serves until cancelled; [`run_until_idle`](Self::run_until_idle) delivers
/// everything due now and returns, for tests and one-shot jobs. Many workers, in one process or
/// many, may share a store: claims are leased and fenced.
pub struct Worker<S, T> {
    pub(crate) store: Arc<S>,
    pub(crate) transport: Arc<T>,
    pub(crate) config: WorkerConfig,
    pub(crate) clock: Arc<dyn Clock>,
    rng: Mutex<Box<dyn RandomSource>>,
}

/// How a claimed batch is held while it is delivered.
enum Hold {
    Lease(Lease),
    Locked(Box<dyn LockedBatch>),
}

/// How one delivery ended.
pub(crate) enum Delivery {
    Delivered,
    Failed(DeliveryError),
}

impl<S, T> Worker<S, T> {
    pub(crate) fn from_builder(b: WorkerBuilder<S, T>) -> Self {
        Self {
            store: Arc::new(b.store),
            transport: Arc::new(b.transport),
            config: b.config,
            clock: b.clock,
            rng: Mutex::new(b.rng),
        }
    }
}

impl<S, T> Worker<S, T>
where
    S: OutboxStore + 'static,
    T: Transport + 'static,
{
    /// Starts configuring a worker for `store` and `transport`.
    pub fn builder(store: S, transport: T) -> WorkerBuilder<S, T> {
        WorkerBuilder::new(store, transport)
    }

    /// The settings in force.
    pub fn config(&self) -> &WorkerConfig {
        &self.config
    }

    /// Serves until `cancel` fires: waits for a wake-up or the poll interval, claims, delivers,
    /// records outcomes, sweeps old delivered events. Store errors are logged and retried after
    /// `error_backoff`; they never stop the worker.
    ///
    /// On cancel it stops claiming, gives in-flight deliveries `shutdown_grace` to finish,
    /// releases what is left and returns what it did. It stops on one error only: a store that
    /// refuses what the worker's settings need ([`StoreError::Unsupported`], such as
    /// [`ClaimMode::Locked`](crate::ClaimMode::Locked) on a store without locked claims), which
    /// no retry can change.
    pub async fn run(&self, cancel: CancellationToken) -> Result<WorkerReport, WorkerError> {
        let mut report = WorkerReport::default();
        let mut wakeups = self.store.wakeups();
        let mut poll = tokio::time::interval(self.config.poll_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // Housekeeping runs on its own schedule, also while full batches keep the loop busy:
        // taking back expired leases once per poll interval, the retention sweep once per
        // retention interval.
        let mut next_reclaim = Instant::now();
        let mut next_sweep = Instant::now();
        info!(worker = %self.config.worker_id, "outbox worker started");
        while !cancel.is_cancelled() {
            if Instant::now() >= next_sweep {
                report.purged += self.sweep().await;
                next_sweep = later(self.config.retention_interval);
            }
            let reclaim = Instant::now() >= next_reclaim;
            let claimed = match self.step(Some(&cancel), reclaim).await {
                Ok((claimed, step)) => {
                    report += step;
                    if reclaim {
                        next_reclaim = later(self.config.poll_interval);
                    }
                    claimed
                }
                Err(error @ StoreError::Unsupported { .. }) => {
                    // Asking again cannot help: a setting asks what this store does not offer
                    // (a locked claim of a store without them, say).
                    warn!(worker = %self.config.worker_id, %error, "the store refuses what this worker needs; stopping");
                    return Err(WorkerError::Store(error));
                }
                Err(error) => {
                    ::metrics::counter!(metrics::STORE_ERRORS).increment(1);
                    warn!(worker = %self.config.worker_id, %error, "store error; retrying after backoff");
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(self.config.error_backoff) => continue,
                    }
                }
            };
            if claimed > 0 {
                // There may be more: look again before calling this worker idle (waiting tells
                // the store so, and a store may wake only workers that said they are idle).
                continue;
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                woke = wait(&mut wakeups) => if !woke { wakeups = None },
                _ = poll.tick() => {}
                _ = tokio::time::sleep_until(next_sweep) => {}
            }
        }
        info!(worker = %self.config.worker_id, ?report, "outbox worker stopped");
        Ok(report)
    }

    /// Delivers every event that is due now, retrying due failures, and returns once nothing
    /// due is left (events rescheduled into the future stay pending). Expired leases are taken
    /// back first, and once more before returning.
    pub async fn run_until_idle(&self) -> Result<WorkerReport, WorkerError> {
        let mut report = WorkerReport::default();
        let mut reclaim = true;
        loop {
            let (claimed, step) = self.step(None, reclaim).await?;
            report += step;
            if claimed == 0 {
                if reclaim {
                    return Ok(report);
                }
                reclaim = true;
            } else {
                reclaim = false;
            }
        }
    }

    /// Runs the retention sweep once; returns how many delivered events were deleted.
    pub async fn sweep(&self) -> u64 {
        let Some(keep) = self.config.retention else {
            return 0;
        };
        let now = self.clock.now();
        let before = sub(now, keep);
        match self.store.purge_delivered(before, now).await {
            Ok(n) => {
                if n > 0 {
                    info!(purged = n, %before, "retention sweep");
                }
                n
            }
            Err(error) => {
                warn!(%error, "retention sweep failed");
                0
            }
        }
    }

    /// Reclaims expired leases (if asked), claims one batch and delivers it. Returns how many
    /// were claimed.
    async fn step(
        &self,
        cancel: Option<&CancellationToken>,
        reclaim: bool,
    ) -> Result<(usize, WorkerReport), StoreError> {
        let mut report = WorkerReport::default();
        let now = self.clock.now();
        if reclaim {
            let reclaimed = self.store.reclaim_expired(now).await?;
            report.reclaimed = reclaimed.pending + reclaimed.dead;
            report.dead += reclaimed.dead;
            if report.reclaimed > 0 {
                ::metrics::counter!(metrics::RECLAIMED).increment(report.reclaimed);
                info!(
                    pending = reclaimed.pending,
                    dead = reclaimed.dead,
                    "reclaimed expired leases"
                );
            }
        }
        let (events, hold) = match self.config.claim_mode {
            ClaimMode::Lease => {
                let lease = Lease {
                    id: LeaseId::new(),
                    holder: self.config.worker_id.clone(),
                    until: add(now, self.config.lease),
                };
                let events = self
                    .store
                    .claim(&lease, self.config.batch_size, now)
                    .await?;
                (events, Hold::Lease(lease))
            }
            ClaimMode::Locked => {
                let claim = self
                    .store
                    .claim_locked(
                        &self.config.worker_id,
                        self.config.batch_size,
                        self.config.lease,
                        now,
                    )
                    .await?;
                (claim.events, Hold::Locked(claim.batch))
            }
        };
        if events.is_empty() {
            // A locked claim of nothing ends here, as a rollback.
            return Ok((0, report));
        }
        let claimed = events.len();
        report.batches = 1;
        ::metrics::counter!(metrics::BATCHES).increment(1);
        let span = match &hold {
            Hold::Lease(lease) => {
                info_span!("outbox_batch", worker = %lease.holder, lease = %lease.id, size = claimed)
            }
            Hold::Locked(_) => {
                info_span!("outbox_batch", worker = %self.config.worker_id, locked = true, size = claimed)
            }
        };
        report += self
            .deliver_batch(hold, events, cancel)
            .instrument(span)
            .await?;
        Ok((claimed, report))
    }

    /// Delivers a claimed batch with bounded concurrency, renewing its hold while it runs, and
    /// records the outcomes.
    ///
    /// The deliveries run as futures of this task, at most `concurrency` at once, not as tasks
    /// of their own: a hundred spawned tasks per batch cost more thread hand-offs than a fast
    /// transport's deliveries, and under a locked claim that time is the database's write
    /// lock. The store calls made meanwhile (renewing the hold, recording early outcomes) run
    /// alongside the deliveries, never holding them up.
    async fn deliver_batch(
        &self,
        mut hold: Hold,
        events: Vec<OutboxEvent>,
        cancel: Option<&CancellationToken>,
    ) -> Result<WorkerReport, StoreError> {
        let lifecycles: HashMap<EventId, Lifecycle> = events
            .iter()
            .map(|event| (event.id, event.lifecycle.clone()))
            .collect();
        let mut waiting = events.iter();
        let mut in_flight = FuturesUnordered::new();

        let renew_every = (self.config.lease / 3).max(Duration::from_millis(1));
        let mut renew = tokio::time::interval_at(later(renew_every), renew_every);
        // Under a lease, the outcomes of a batch still running are recorded as they come, every
        // PARTIAL_SETTLE_EVERY: a slow delivery then holds back only its own event, not the next
        // events of the ordering keys that shared its batch. (A locked batch commits once.)
        let partial = matches!(hold, Hold::Lease(_));
        let mut settle_partly =
            tokio::time::interval_at(later(PARTIAL_SETTLE_EVERY), PARTIAL_SETTLE_EVERY);
        let mut settled_early = WorkerReport::default();
        let never = CancellationToken::new();
        let cancel = cancel.unwrap_or(&never);
        let grace = tokio::time::sleep_until(later(Duration::MAX));
        tokio::pin!(grace);
        let mut draining = false;
        let mut outcomes = Vec::with_capacity(events.len());
        loop {
            // Shutting down: a delivery that has not started stays unstarted (released).
            while !draining && in_flight.len() < self.config.concurrency {
                let Some(event) = waiting.next() else { break };
                in_flight.push(self.deliver(event));
            }
            if in_flight.is_empty() {
                break;
            }
            tokio::select! {
                Some(done) = in_flight.next() => outcomes.push(done),
                _ = renew.tick() => {
                    let now = self.clock.now();
                    let renewing = async {
                        match &mut hold {
                            Hold::Lease(lease) => self
                                .store
                                .renew(lease.id, add(now, self.config.lease), now)
                                .await
                                .map(drop),
                            Hold::Locked(batch) => batch.keep().await,
                        }
                    };
                    if let Err(error) = alongside(&mut in_flight, &mut outcomes, renewing).await {
                        warn!(%error, "renewing the batch's hold failed");
                    }
                }
                _ = settle_partly.tick(), if partial && !outcomes.is_empty() && !draining => {
                    if let Hold::Lease(lease) = &hold {
                        let now = self.clock.now();
                        let done = std::mem::take(&mut outcomes);
                        let settlement = self.settle(done, &lifecycles, Vec::new(), now);
                        // A failure is logged by `record`; those events come back when the
                        // lease expires.
                        let recording = self.record(lease.id, settlement, now);
                        if let Ok(report) = alongside(&mut in_flight, &mut outcomes, recording).await {
                            settled_early += report;
                        }
                    }
                }
                _ = cancel.cancelled(), if !draining => {
                    draining = true;
                    grace.as_mut().reset(later(self.config.shutdown_grace));
                    debug!(in_flight = in_flight.len(), "shutting down: waiting for deliveries");
                }
                // Past the grace, the deliveries still running are dropped: released.
                _ = &mut grace, if draining => break,
            }
        }
        drop(in_flight);
        let finished: HashSet<EventId> = outcomes.iter().map(|(id, _)| *id).collect();
        let unfinished: Vec<EventId> = events
            .iter()
            .map(|event| event.id)
            .filter(|id| !finished.contains(id))
            .collect();
        let now = self.clock.now();
        let settlement = self.settle(outcomes, &lifecycles, unfinished, now);
        match hold {
            Hold::Lease(lease) => self
                .record(lease.id, settlement, now)
                .await
                .map(|mut report| {
                    report += settled_early;
                    report
                }),
            Hold::Locked(batch) => match batch.finish(&settlement, now).await {
                Ok(recorded) => Ok(tally(&recorded)),
                Err(error) => {
                    warn!(%error, "recording outcomes failed; the events come back untried");
                    Err(error)
                }
            },
        }
    }

    /// One event's delivery, as a future of the batch's task: its outcome, a panic in the
    /// transport counting as a retryable failure.
    fn deliver<'e>(
        &'e self,
        event: &'e OutboxEvent,
    ) -> impl Future<Output = (EventId, Delivery)> + 'e {
        let (id, attempt) = (event.id, event.attempts() + 1);
        let span =
            debug_span!("outbox_deliver", event_id = %id, event_type = %event.event_type, attempt);
        #[cfg(feature = "trace-context")]
        outbox_core::trace_context::link(&span, &event.headers);
        let delivery = deliver_timed(self.transport.as_ref(), event, self.config.delivery_timeout);
        async move {
            let outcome = match AssertUnwindSafe(delivery).catch_unwind().await {
                Ok(Ok(())) => Delivery::Delivered,
                Ok(Err(error)) => Delivery::Failed(error),
                Err(panic) => Delivery::Failed(DeliveryError::retryable(format!(
                    "the delivery panicked: {}",
                    panic_message(panic.as_ref())
                ))),
            };
            (id, outcome)
        }
        .instrument(span)
    }

    /// Decides what becomes of each event of a batch: delivered, failed (retried with backoff,
    /// or dead), deferred (its destination paused) or released (never started).
    pub(crate) fn settle(
        &self,
        outcomes: Vec<(EventId, Delivery)>,
        lifecycles: &HashMap<EventId, Lifecycle>,
        unfinished: Vec<EventId>,
        now: DateTime<Utc>,
    ) -> Settlement {
        let mut delivered = Vec::new();
        let mut failures = Vec::new();
        // Never tried, their destination paused: back for later, no attempt spent.
        let mut deferred = Vec::new();
        let mut defer_for = Duration::ZERO;
        let mut defer_reason = String::new();
        {
            let mut rng = self.rng.lock().unwrap_or_else(PoisonError::into_inner);
            for (id, outcome) in outcomes {
                match outcome {
                    Delivery::Delivered => delivered.push(id),
                    Delivery::Failed(error) if error.is_unavailable() => {
                        // Bounded both ways: never straight back (a pause of 0 would have the
                        // event claimed again at once, forever), never parked past an hour.
                        let retry_in = error
                            .retry_after_hint()
                            .unwrap_or_default()
                            .clamp(MIN_DEFERRAL, crate::bounds::MAX_INTERVAL);
                        if retry_in >= defer_for {
                            defer_for = retry_in;
                            defer_reason = error.to_string();
                        }
                        deferred.push(id);
                    }
                    Delivery::Failed(error) => {
                        let failures_so_far = lifecycles
                            .get(&id)
                            .map_or(0, |l| l.attempts)
                            .saturating_add(1);
                        // The worker's own cap on attempts, if set, ends retries sooner than
                        // the event's.
                        let out_of_attempts = self
                            .config
                            .max_attempts
                            .is_some_and(|cap| failures_so_far >= cap);
                        let retry_at = (error.is_retryable() && !out_of_attempts).then(|| {
                            let backoff = self.config.retry.delay(failures_so_far, rng.as_mut());
                            // A receiver's Retry-After is honoured up to the policy's cap: a
                            // peer cannot park an event for years.
                            let asked = error
                                .retry_after_hint()
                                .unwrap_or_default()
                                .min(self.config.retry.cap());
                            add(now, backoff.max(asked))
                        });
                        warn!(event_id = %id, %error, retryable = error.is_retryable(), "delivery failed");
                        failures.push(Failure {
                            id,
                            error: error.to_string(),
                            retry_at,
                        });
                    }
                }
            }
        }
        Settlement {
            delivered,
            failures,
            deferred: (!deferred.is_empty()).then(|| Deferral {
                ids: deferred,
                until: add(now, defer_for),
                reason: defer_reason,
            }),
            released: unfinished,
        }
    }

    /// Writes a leased batch's outcomes: one ack, one nack, one defer and one release call at
    /// most, each tried even when another failed (the first error is returned after all), and
    /// counts what the store reports it did.
    pub(crate) async fn record(
        &self,
        lease: LeaseId,
        settlement: Settlement,
        now: DateTime<Utc>,
    ) -> Result<WorkerReport, StoreError> {
        let mut report = WorkerReport::default();
        let mut first_error = None;
        let mut count = |result: Result<Vec<Recorded>, StoreError>| match result {
            Ok(recorded) => report += tally(&recorded),
            Err(error) => {
                warn!(%error, "recording outcomes failed; the events come back when the lease expires");
                first_error.get_or_insert(error);
            }
        };
        let Settlement {
            delivered,
            failures,
            deferred,
            released,
        } = settlement;
        if !delivered.is_empty() {
            count(
                self.persist(|| self.store.ack(lease, &delivered, now))
                    .await,
            );
        }
        if !failures.is_empty() {
            count(
                self.persist(|| self.store.nack(lease, &failures, now))
                    .await,
            );
        }
        if let Some(d) = deferred {
            count(
                self.persist(|| self.store.defer(lease, &d.ids, d.until, &d.reason, now))
                    .await,
            );
        }
        if !released.is_empty() {
            count(
                self.persist(|| self.store.release(lease, &released, now))
                    .await,
            );
        }
        match first_error {
            Some(error) => Err(error),
            None => Ok(report),
        }
    }
}

/// One delivery, cut off after `timeout` (a retryable failure), measured into the metrics.
pub(crate) async fn deliver_timed<T: Transport + ?Sized>(
    transport: &T,
    event: &OutboxEvent,
    timeout: Duration,
) -> Result<(), DeliveryError> {
    let started = Instant::now();
    let result = match tokio::time::timeout(timeout, transport.deliver(event)).await {
        Ok(result) => result,
        Err(_) => Err(DeliveryError::retryable(format!(
            "delivery timed out after {timeout:?}"
        ))),
    };
    metrics::delivery(
        &event.event_type,
        metrics::delivery_outcome(&result),
        started.elapsed(),
    );
    result
}

/// Runs `call` to its end while the deliveries in flight go on, their outcomes kept in
/// `outcomes`.
async fn alongside<F: Future<Output = (EventId, Delivery)>, T>(
    in_flight: &mut FuturesUnordered<F>,
    outcomes: &mut Vec<(EventId, Delivery)>,
    call: impl Future<Output = T>,
) -> T {
    tokio::pin!(call);
    loop {
        tokio::select! {
            out = &mut call => return out,
            Some(done) = in_flight.next(), if !in_flight.is_empty() => outcomes.push(done),
        }
    }
}

/// What a panic said, if it said it in text.
fn panic_message(panic: &(dyn std::any::Any + Send)) -> &str {
    panic
        .downcast_ref::<&str>()
        .copied()
        .or_else(|| panic.downcast_ref::<String>().map(String::as_str))
        .unwrap_or("no message")
}

/// Counts what the store reported doing.
fn tally(recorded: &[Recorded]) -> WorkerReport {
    let mut report = WorkerReport::default();
    for r in recorded {
        metrics::recorded(&r.outcome);
        match r.outcome {
            Outcome::Delivered => report.delivered += 1,
            Outcome::Retrying { .. } => report.retried += 1,
            Outcome::Dead => report.dead += 1,
            Outcome::Released => report.released += 1,
            Outcome::Deferred { .. } => report.deferred += 1,
            Outcome::LeaseLost => report.lease_lost += 1,
        }
    }
    if report.lease_lost > 0 {
        warn!(
            events = report.lease_lost,
            "lease lost: another worker took these events over"
        );
    }
    report
}

/// `after` from now, or as far ahead as tokio's clock goes.
fn later(after: Duration) -> Instant {
    let now = Instant::now();
    now.checked_add(after)
        .unwrap_or_else(|| now + Duration::from_secs(86_400 * 365 * 30))
}

/// The shortest time a deferred event waits before it is due again.
const MIN_DEFERRAL: Duration = Duration::from_millis(100);

/// How often recording a batch's outcomes is tried when the store is unavailable.
const PERSIST_TRIES: u32 = 5;

impl<S: OutboxStore, T> Worker<S, T> {
    /// Runs a store write that records delivery outcomes, retrying it (with growing pauses
    /// from `error_backoff`) while the store reports itself unavailable. The deliveries have
    /// already happened: giving up at once would leave them to be delivered again after the
    /// lease expires.
    async fn persist<'a, F, Fut, R>(&self, write: F) -> Result<R, StoreError>
    where
        F: Fn() -> Fut,
        Fut: std::future::Future<Output = Result<R, StoreError>> + 'a,
    {
        let mut tries = 1;
        loop {
            match write().await {
                Err(error) if error.is_retryable() && tries < PERSIST_TRIES => {
                    warn!(%error, tries, "recording outcomes failed; retrying");
                    let pause = self
                        .config
                        .error_backoff
                        .saturating_mul(2u32.saturating_pow(tries - 1));
                    tokio::time::sleep_until(later(pause)).await;
                    tries += 1;
                }
                other => return other,
            }
        }
    }
}

/// Waits for a wake-up; never returns when the store offers none. `false` once the sender is gone.
async fn wait(wakeups: &mut Option<Wakeups>) -> bool {
    match wakeups {
        Some(w) => w.wait().await,
        None => std::future::pending().await,
    }
}

/// A worker running in a tokio task; see [`Worker::spawn`].
#[derive(Debug)]
pub struct RunningWorker {
    cancel: CancellationToken,
    task: tokio::task::JoinHandle<Result<WorkerReport, WorkerError>>,
}

impl RunningWorker {
    /// The token that stops the worker (cancelling it is what [`shutdown`](Self::shutdown) does).
    pub fn cancel_token(&self) -> &CancellationToken {
        &self.cancel
    }

    /// Stops several workers together: every one stops claiming at once, then each finishes or
    /// releases its in-flight work within its own grace period, side by side — so the whole
    /// takes one grace period, not one per worker. Returns their reports added up, or the first
    /// error.
    pub async fn shutdown_all(
        workers: impl IntoIterator<Item = RunningWorker>,
    ) -> Result<WorkerReport, WorkerError> {
        let workers: Vec<RunningWorker> = workers.into_iter().collect();
        for worker in &workers {
            worker.cancel.cancel();
        }
        let mut total = WorkerReport::default();
        let mut first_error = None;
        for worker in workers {
            match worker.task.await {
                Ok(Ok(report)) => total += report,
                Ok(Err(e)) => {
                    first_error.get_or_insert(e);
                }
                Err(e) => {
                    first_error.get_or_insert(WorkerError::Crashed(e));
                }
            }
        }
        first_error.map_or(Ok(total), Err)
    }

    /// Whether the worker's task has ended (a stream reader stops by itself on an error no
    /// retry can fix; [`shutdown`](Self::shutdown) then returns it).
    pub fn is_finished(&self) -> bool {
        self.task.is_finished()
    }

    /// Stops the worker gracefully (see [`Worker::run`]) and returns what it did.
    pub async fn shutdown(self) -> Result<WorkerReport, WorkerError> {
        self.cancel.cancel();
        self.task.await?
    }
}

impl<S, T> Worker<S, T>
where
    S: OutboxStore + 'static,
    T: Transport + 'static,
{
    /// Runs the worker in a new tokio task until [`RunningWorker::shutdown`].
    pub fn spawn(self) -> RunningWorker {
        let cancel = CancellationToken::new();
        let token = cancel.clone();
        let task = tokio::spawn(async move { self.run(token).await });
        RunningWorker { cancel, task }
    }

    /// Delivers from `source` ([`Worker::stream`]) in a new tokio task until
    /// [`RunningWorker::shutdown`].
    pub fn spawn_stream<E: outbox_core::EventStream + 'static>(self, source: E) -> RunningWorker {
        let cancel = CancellationToken::new();
        let token = cancel.clone();
        let task = tokio::spawn(async move { self.stream(source, token).await });
        RunningWorker { cancel, task }
    }
}
