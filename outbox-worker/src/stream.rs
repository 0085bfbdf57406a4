//! Delivering from an [`EventStream`]: committed events in commit order, no claim written.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use outbox_core::clock::add;
use outbox_core::{
    DeliveryError, EventId, EventStream, Lease, LeaseId, OutboxStore, Settlement, StoreError,
    Streamed, Transport,
};
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tracing::{Instrument, debug_span, info, warn};

use crate::metrics;
use crate::worker::{Delivery, Worker, WorkerError, WorkerReport, deliver_timed};

/// How often an idle stream confirms the position it has read to, letting the server recycle
/// WAL written by other tables meanwhile.
const IDLE_CONFIRM_EVERY: Duration = Duration::from_secs(1);

/// An empty read that took at least this long waited for events: no pause after it.
const SOURCE_WAITED: Duration = Duration::from_millis(1);

/// What became of one streamed event.
enum Fate {
    Delivered,
    Failed(DeliveryError),
    /// Not tried: held (or shutting down); handed to the table's path.
    Held,
}

impl<S, T> Worker<S, T>
where
    S: OutboxStore + 'static,
    T: Transport + 'static,
{
    /// Delivers from `source` until `cancel` fires: reads committed events in commit order,
    /// delivers them (the events of one ordering key one after the other, the rest with the
    /// worker's concurrency), hands what fails to the table's path — taken under a lease and
    /// recorded by this worker's store (`nack`/`defer`) with its retry policy, so the ordinary
    /// workers retry it — and confirms the stream past the batch. Nothing is written per
    /// delivered event beyond the confirmation.
    ///
    /// A source may wait a little for new events before answering that there are none; a
    /// source that answers at once is read again after `poll_interval`. Store errors that may
    /// pass (a lost connection, a restarting database, another reader holding the stream) are
    /// logged and retried after `error_backoff`; any other error (the stream's slot is gone,
    /// say) stops it: the events are still in the table, and the error says how to go on.
    pub async fn stream<E: EventStream>(
        &self,
        mut source: E,
        cancel: CancellationToken,
    ) -> Result<WorkerReport, WorkerError> {
        let mut report = WorkerReport::default();
        let mut last_idle_confirm = Instant::now();
        info!(worker = %self.config.worker_id, "outbox stream reader started");
        while !cancel.is_cancelled() {
            let asked = Instant::now();
            match self
                .stream_step(&mut source, &cancel, &mut last_idle_confirm)
                .await
            {
                Ok((read, full, step)) => {
                    report += step;
                    // A source that waited for new events paces the loop itself.
                    if full || read > 0 || asked.elapsed() >= SOURCE_WAITED {
                        continue;
                    }
                }
                Err(error)
                    if error.is_retryable() || matches!(error, StoreError::TimedOut { .. }) =>
                {
                    ::metrics::counter!(metrics::STORE_ERRORS).increment(1);
                    warn!(worker = %self.config.worker_id, %error, "stream error; retrying after backoff");
                    tokio::select! {
                        _ = cancel.cancelled() => break,
                        _ = tokio::time::sleep(self.config.error_backoff) => continue,
                    }
                }
                Err(error) => {
                    warn!(worker = %self.config.worker_id, %error, "the stream cannot go on; stopping");
                    let _ = source.close().await;
                    return Err(WorkerError::Store(error));
                }
            }
            tokio::select! {
                _ = cancel.cancelled() => break,
                _ = tokio::time::sleep(self.config.poll_interval) => {}
            }
        }
        if let Err(error) = source.close().await {
            warn!(worker = %self.config.worker_id, %error, "closing the stream failed; the next reader repeats what this one delivered since its last report");
        }
        info!(worker = %self.config.worker_id, ?report, "outbox stream reader stopped");
        Ok(report)
    }

    /// Reads one batch, delivers it, settles it and confirms it. Returns how many events were
    /// read and whether the read was full.
    async fn stream_step<E: EventStream>(
        &self,
        source: &mut E,
        cancel: &CancellationToken,
        last_idle_confirm: &mut Instant,
    ) -> Result<(usize, bool, WorkerReport), StoreError> {
        let mut report = WorkerReport::default();
        let batch = source.next_batch(self.config.batch_size).await?;
        let now = self.clock.now();
        let lag = match (batch.first_commit, batch.full || !batch.events.is_empty()) {
            (Some(first), true) => (now - first).to_std().unwrap_or_default(),
            _ => Duration::ZERO,
        };
        ::metrics::gauge!(metrics::STREAM_LAG_SECONDS).set(lag.as_secs_f64());
        if batch.events.is_empty() {
            if batch.full || last_idle_confirm.elapsed() >= IDLE_CONFIRM_EVERY {
                source.confirm(batch.position, &[], now).await?;
                *last_idle_confirm = Instant::now();
            }
            return Ok((0, batch.full, report));
        }
        let read = batch.events.len();
        report.batches = 1;
        ::metrics::counter!(metrics::BATCHES).increment(1);
        let events = Arc::new(batch.events);
        let fates = self.deliver_chains(&events, cancel).await;

        let mut delivered = Vec::new();
        let mut failed = Vec::new();
        let mut held = Vec::new();
        let mut lifecycles = HashMap::new();
        for (i, fate) in fates.into_iter().enumerate() {
            let Some(streamed) = events.get(i) else {
                continue;
            };
            let id = streamed.event.id;
            match fate {
                Fate::Delivered => delivered.push(id),
                Fate::Failed(error) => {
                    lifecycles.insert(id, streamed.event.lifecycle.clone());
                    failed.push((id, Delivery::Failed(error)));
                }
                Fate::Held => held.push(id),
            }
        }
        let now = self.clock.now();
        if !failed.is_empty() {
            let Settlement {
                failures, deferred, ..
            } = self.settle(failed, &lifecycles, Vec::new(), now);
            let mut ids: Vec<EventId> = failures.iter().map(|f| f.id).collect();
            if let Some(d) = &deferred {
                ids.extend(d.ids.iter().copied());
            }
            let lease = Lease {
                id: LeaseId::new(),
                holder: self.config.worker_id.clone(),
                until: add(now, self.config.lease),
            };
            // Failures first: each becomes its key's head, and the held events of its key
            // queue behind it.
            let taken = source.take(&lease, &ids, now).await?;
            let taken: std::collections::HashSet<EventId> = taken.into_iter().collect();
            let settlement = Settlement {
                delivered: Vec::new(),
                failures: failures
                    .into_iter()
                    .filter(|f| taken.contains(&f.id))
                    .collect(),
                deferred: deferred.and_then(|mut d| {
                    d.ids.retain(|id| taken.contains(id));
                    (!d.ids.is_empty()).then_some(d)
                }),
                released: Vec::new(),
            };
            report += self.record(lease.id, settlement, now).await?;
        }
        if !held.is_empty() {
            report.held += source.hold(&held, now).await?;
        }
        source.confirm(batch.position, &delivered, now).await?;
        for _ in &delivered {
            metrics::recorded(&outbox_core::Outcome::Delivered);
        }
        report.delivered += delivered.len() as u64;
        *last_idle_confirm = Instant::now();
        Ok((read, batch.full, report))
    }

    /// Delivers a batch: each ordering key's events one after the other in order (after a
    /// failure or a hold, the rest of the key is held), everything else concurrently, at most
    /// `concurrency` deliveries at once. One fate per event, in batch order.
    async fn deliver_chains(
        &self,
        events: &Arc<Vec<Streamed>>,
        cancel: &CancellationToken,
    ) -> Vec<Fate> {
        let mut chains: Vec<Vec<usize>> = Vec::new();
        let mut by_key: HashMap<&str, usize> = HashMap::new();
        for (i, s) in events.iter().enumerate() {
            match s.event.ordering_key.as_deref() {
                Some(key) => match by_key.get(key) {
                    Some(&chain) => chains[chain].push(i),
                    None => {
                        by_key.insert(key, chains.len());
                        chains.push(vec![i]);
                    }
                },
                None => chains.push(vec![i]),
            }
        }
        // `concurrency` tasks, each taking the next chain and delivering it through: at most
        // that many deliveries at once, without a task per event. Each fate is kept as soon as
        // it is known, so a task that dies (a panicking transport) loses only what it had not
        // delivered yet.
        let chains = Arc::new(chains);
        let next = Arc::new(AtomicUsize::new(0));
        let fates: Arc<Mutex<Vec<Option<Fate>>>> =
            Arc::new(Mutex::new((0..events.len()).map(|_| None).collect()));
        let mut tasks = JoinSet::new();
        for _ in 0..self.config.concurrency.max(1).min(chains.len()) {
            let (chains, next, fates) =
                (Arc::clone(&chains), Arc::clone(&next), Arc::clone(&fates));
            let events = Arc::clone(events);
            let transport = Arc::clone(&self.transport);
            let timeout = self.config.delivery_timeout;
            let stop = cancel.clone();
            tasks.spawn(async move {
                let keep = |i: usize, fate: Fate| {
                    let mut fates = fates.lock().unwrap_or_else(PoisonError::into_inner);
                    if let Some(slot) = fates.get_mut(i) {
                        *slot = Some(fate);
                    }
                };
                while let Some(chain) = chains.get(next.fetch_add(1, Ordering::Relaxed)) {
                    let mut blocked = false;
                    for &i in chain {
                        let Some(s) = events.get(i) else { continue };
                        if blocked || s.hold.is_some() || stop.is_cancelled() {
                            blocked = true;
                            keep(i, Fate::Held);
                            continue;
                        }
                        let event = &s.event;
                        let span = debug_span!("outbox_deliver", event_id = %event.id, event_type = %event.event_type, attempt = event.attempts() + 1, streamed = true);
                        let result = deliver_timed(transport.as_ref(), event, timeout)
                            .instrument(span)
                            .await;
                        match result {
                            Ok(()) => keep(i, Fate::Delivered),
                            Err(error) => {
                                blocked = true;
                                keep(i, Fate::Failed(error));
                            }
                        }
                    }
                }
            });
        }
        while let Some(joined) = tasks.join_next().await {
            if let Err(error) = joined {
                warn!(%error, "a stream delivery task failed");
            }
        }
        let fates = std::mem::take(&mut *fates.lock().unwrap_or_else(PoisonError::into_inner));
        // What a failed task had not delivered goes to the table's path untried.
        fates.into_iter().map(|f| f.unwrap_or(Fate::Held)).collect()
    }
}
