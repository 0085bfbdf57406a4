//! Commit → delivery latency under a steady offered load, with LISTEN/NOTIFY and polling only.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use hdrhistogram::Histogram;
use outbox_core::{DeliveryError, Emit, EventId, NewEvent, OutboxEvent, Transport};
use outbox_postgres::{PgConfig, PgStore};
use outbox_worker::Worker;
use sqlx::PgPool;

use crate::memory::payload;
use crate::{BenchError, Summary};

/// Delivery instants by event id.
#[derive(Default, Clone)]
struct Stamps(Arc<Mutex<HashMap<EventId, Instant>>>);

impl Stamps {
    fn put(&self, id: EventId, at: Instant) {
        self.0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .insert(id, at);
    }
    fn take(&self) -> HashMap<EventId, Instant> {
        std::mem::take(&mut *self.0.lock().unwrap_or_else(PoisonError::into_inner))
    }
}

/// Notes when each event arrives.
struct StampTransport(Stamps);

#[async_trait]
impl Transport for StampTransport {
    async fn deliver(&self, event: &OutboxEvent) -> Result<(), DeliveryError> {
        self.0.put(event.id, Instant::now());
        Ok(())
    }
}

/// Offers `rate` events/s (one per transaction) for `seconds`, with one worker delivering
/// (claiming, or reading the replication slot `stream`: its name and the database's URL);
/// returns the commit → delivery histogram in microseconds.
pub(crate) async fn measure(
    pool: &PgPool,
    config: PgConfig,
    poll: Duration,
    rate: u32,
    seconds: u64,
    stream: Option<(&str, &str)>,
) -> Result<Histogram<u64>, BenchError> {
    let store = PgStore::new(pool.clone(), config)?;
    let delivered = Stamps::default();
    let worker = Worker::builder(store.clone(), StampTransport(delivered.clone()))
        .claim_mode(outbox_worker::ClaimMode::Locked)
        .poll_interval(poll)
        .batch_size(if stream.is_some() { 1000 } else { 100 })
        .concurrency(16)
        .retention(None)
        .build()?;
    let running = match stream {
        Some((slot, url)) => worker.spawn_stream(store.stream(slot, url)?),
        None => worker.spawn(),
    };
    // Let the listener connect before the clock starts.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let committed = Stamps::default();
    let total = u64::from(rate) * seconds;
    let mut ticker = tokio::time::interval(Duration::from_secs(1) / rate);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Burst);
    let mut producers = tokio::task::JoinSet::new();
    for n in 0..total {
        ticker.tick().await;
        let (store, committed) = (store.clone(), committed.clone());
        producers.spawn(async move {
            let event = NewEvent::builder("file.stored", "upload", n.to_string())
                .payload(payload(n as usize, 256))
                .build()?;
            let mut tx = store.begin().await?;
            let id = tx.emit(event).await?.id();
            tx.commit().await?;
            committed.put(id, Instant::now());
            Ok::<(), BenchError>(())
        });
        while let Some(done) = producers.try_join_next() {
            done??;
        }
    }
    while let Some(done) = producers.join_next().await {
        done??;
    }
    // Wait (bounded) for the last deliveries.
    let deadline = Instant::now() + poll * 3 + Duration::from_secs(5);
    while delivered
        .0
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .len()
        < total as usize
        && Instant::now() < deadline
    {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let report = running.shutdown().await?;

    let (committed, delivered) = (committed.take(), delivered.take());
    let mut histogram = Histogram::<u64>::new(3)?;
    for (id, at) in &committed {
        if let Some(arrived) = delivered.get(id) {
            // A delivery can land before the producer noted its commit: count it as zero.
            histogram.record(arrived.saturating_duration_since(*at).as_micros() as u64)?;
        }
    }
    if histogram.len() < total {
        return Err(format!(
            "only {} of {total} events were delivered in time ({report:?})",
            histogram.len()
        )
        .into());
    }
    Ok(histogram)
}

pub(crate) fn ms(h: &Histogram<u64>, q: f64) -> f64 {
    h.value_at_quantile(q) as f64 / 1000.0
}

/// How long each latency run offers its load.
pub fn seconds(quick: bool) -> u64 {
    if quick { 4 } else { 15 }
}

pub async fn run(
    pool: &PgPool,
    schema: &str,
    quick: bool,
    summary: &mut Summary,
) -> Result<(), BenchError> {
    let seconds = seconds(quick);
    let config = PgConfig::new().with_schema(schema);
    let notify = measure(
        pool,
        config.clone(),
        Duration::from_secs(1),
        1000,
        seconds,
        None,
    )
    .await?;
    summary.put("latency.notify_p50_ms", ms(&notify, 0.50), "ms");
    summary.put("latency.notify_p99_ms", ms(&notify, 0.99), "ms");
    summary.put("latency.notify_max_ms", notify.max() as f64 / 1000.0, "ms");
    let poll = Duration::from_millis(100);
    let polled = measure(pool, config.with_listen(false), poll, 1000, seconds, None).await?;
    summary.put("latency.poll_100ms_p50_ms", ms(&polled, 0.50), "ms");
    summary.put("latency.poll_p99_ms", ms(&polled, 0.99), "ms");
    summary.put(
        "latency.poll_100ms_max_ms",
        polled.max() as f64 / 1000.0,
        "ms",
    );
    Ok(())
}
