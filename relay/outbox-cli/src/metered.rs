//! A transport wrapper that counts deliveries and times them, for `/metrics`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use async_trait::async_trait;
use outbox_core::{DeliveryError, OutboxEvent, Transport};

/// Upper bounds (seconds) of the delivery-duration histogram buckets.
const BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];

/// Counters shared by the wrapper and the metrics endpoint.
#[derive(Debug, Default)]
pub struct Meters {
    delivered: AtomicU64,
    retryable: AtomicU64,
    permanent: AtomicU64,
    /// Cumulative counts per bucket, then the +Inf bucket.
    buckets: [AtomicU64; BUCKETS.len() + 1],
    /// Sum of durations in microseconds.
    sum_micros: AtomicU64,
}

impl Meters {
    fn observe(&self, seconds: f64) {
        for (i, bound) in BUCKETS.iter().enumerate() {
            if seconds <= *bound {
                self.buckets[i].fetch_add(1, Ordering::Relaxed);
            }
        }
        self.buckets[BUCKETS.len()].fetch_add(1, Ordering::Relaxed);
        self.sum_micros
            .fetch_add((seconds * 1e6) as u64, Ordering::Relaxed);
    }

    /// Prometheus text for the counters and the histogram.
    pub fn render(&self) -> String {
        let get = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut out = String::new();
        out.push_str("# HELP outbox_delivered_total Deliveries the transport accepted.\n# TYPE outbox_delivered_total counter\n");
        out.push_str(&format!(
            "outbox_delivered_total {}\n",
            get(&self.delivered)
        ));
        out.push_str("# HELP outbox_failed_total Failed deliveries by kind.\n# TYPE outbox_failed_total counter\n");
        out.push_str(&format!(
            "outbox_failed_total{{kind=\"retryable\"}} {}\n",
            get(&self.retryable)
        ));
        out.push_str(&format!(
            "outbox_failed_total{{kind=\"permanent\"}} {}\n",
            get(&self.permanent)
        ));
        out.push_str("# HELP outbox_delivery_seconds Time one delivery took.\n# TYPE outbox_delivery_seconds histogram\n");
        for (i, bound) in BUCKETS.iter().enumerate() {
            out.push_str(&format!(
                "outbox_delivery_seconds_bucket{{le=\"{bound}\"}} {}\n",
                get(&self.buckets[i])
            ));
        }
        let count = get(&self.buckets[BUCKETS.len()]);
        out.push_str(&format!(
            "outbox_delivery_seconds_bucket{{le=\"+Inf\"}} {count}\n"
        ));
        out.push_str(&format!(
            "outbox_delivery_seconds_sum {}\n",
            get(&self.sum_micros) as f64 / 1e6
        ));
        out.push_str(&format!("outbox_delivery_seconds_count {count}\n"));
        out
    }
}

/// Wraps a transport, recording each delivery's outcome and duration in [`Meters`].
pub struct Metered<T> {
    inner: T,
    meters: Arc<Meters>,
}

impl<T> Metered<T> {
    /// Wraps `inner`, recording into `meters`.
    pub fn new(inner: T, meters: Arc<Meters>) -> Self {
        Self { inner, meters }
    }
}

#[async_trait]
impl<T: Transport> Transport for Metered<T> {
    async fn deliver(&self, event: &OutboxEvent) -> Result<(), DeliveryError> {
        let start = Instant::now();
        let result = self.inner.deliver(event).await;
        self.meters.observe(start.elapsed().as_secs_f64());
        let counter = match &result {
            Ok(()) => &self.meters.delivered,
            Err(e) if e.is_retryable() => &self.meters.retryable,
            Err(_) => &self.meters.permanent,
        };
        counter.fetch_add(1, Ordering::Relaxed);
        result
    }
}
