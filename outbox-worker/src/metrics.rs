//! What a worker reports through the [`metrics`](https://docs.rs/metrics) facade.
//!
//! Every worker records these, embedded in an application or in the `outbox` relay alike; they
//! reach whatever recorder the process installed (a Prometheus exporter, StatsD, OpenTelemetry,
//! …) and cost nothing when none is installed. Event types are label values, so keep them a
//! bounded set of names (as they are meant to be), not data.
//!
//! | name | kind | labels | what |
//! |---|---|---|---|
//! | [`DELIVERIES`] | counter | `event_type`, `outcome` | deliveries tried; `outcome` is `delivered`, `retryable`, `permanent` (a timeout is `retryable`) or `unavailable` (not tried: the destination is paused) |
//! | [`DELIVERY_SECONDS`] | histogram | `event_type`, `outcome` | how long each delivery took, in seconds |
//! | [`RECORDED`] | counter | `outcome` | outcomes the store recorded: `delivered`, `retrying`, `dead`, `released`, `deferred`, `lease_lost` |
//! | [`BATCHES`] | counter | — | batches claimed |
//! | [`RECLAIMED`] | counter | — | expired leases taken back from other workers |
//! | [`STORE_ERRORS`] | counter | — | store calls that failed (the worker backs off and tries again) |
//! | [`STREAM_LAG_SECONDS`] | gauge | — | age of the oldest commit in the batch a stream reader is delivering; 0 when caught up |

use std::time::Duration;

use outbox_core::{DeliveryError, Outcome};

/// Counter: deliveries tried, by `event_type` and `outcome`.
pub const DELIVERIES: &str = "outbox_deliveries_total";
/// Histogram: seconds each delivery took, by `event_type` and `outcome`.
pub const DELIVERY_SECONDS: &str = "outbox_delivery_seconds";
/// Counter: outcomes recorded in the store, by `outcome`.
pub const RECORDED: &str = "outbox_recorded_total";
/// Counter: batches claimed.
pub const BATCHES: &str = "outbox_batches_total";
/// Counter: expired leases taken back.
pub const RECLAIMED: &str = "outbox_reclaimed_total";
/// Counter: failed store calls.
pub const STORE_ERRORS: &str = "outbox_store_errors_total";
/// Gauge: how long ago the oldest transaction of the batch being delivered from a stream
/// committed; 0 while the stream is caught up.
pub const STREAM_LAG_SECONDS: &str = "outbox_stream_lag_seconds";

/// The `outcome` label of one delivery.
pub(crate) fn delivery_outcome(result: &Result<(), DeliveryError>) -> &'static str {
    match result {
        Ok(()) => "delivered",
        Err(e) if e.is_unavailable() => "unavailable",
        Err(e) if e.is_retryable() => "retryable",
        Err(_) => "permanent",
    }
}

/// Records one delivery of an event of `event_type`.
pub(crate) fn delivery(event_type: &str, outcome: &'static str, took: Duration) {
    let labels = [
        ("event_type", event_type.to_owned()),
        ("outcome", outcome.to_owned()),
    ];
    metrics::counter!(DELIVERIES, &labels).increment(1);
    metrics::histogram!(DELIVERY_SECONDS, &labels).record(took.as_secs_f64());
}

/// Records what the store did with one event.
pub(crate) fn recorded(outcome: &Outcome) {
    let name = match outcome {
        Outcome::Delivered => "delivered",
        Outcome::Retrying { .. } => "retrying",
        Outcome::Dead => "dead",
        Outcome::Released => "released",
        Outcome::Deferred { .. } => "deferred",
        Outcome::LeaseLost => "lease_lost",
    };
    metrics::counter!(RECORDED, "outcome" => name).increment(1);
}
