//! `/healthz`, `/readyz` and `/metrics` for the relay.
//!
//! The process's metrics are the workers' own (`outbox_worker::metrics`), recorded through the
//! `metrics` facade into a Prometheus exporter; on each scrape the outbox table's gauges (events
//! by status, oldest pending age, and in stream mode the slot's lag) are read from the database
//! and set beside them. Errors go to
//! the log; the endpoints answer with their status code and a word, never a database message
//! (which can name hosts, users, schemas and tables).

use std::sync::{Arc, Mutex, PoisonError};

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use outbox_core::{Clock, DynOutboxStore, OutboxStore, Status, SystemClock};
use outbox_postgres::PgStore;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;

/// Upper bounds (seconds) of the delivery-duration histogram buckets.
const BUCKETS: [f64; 10] = [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0];

/// Gauge: events in the outbox table, by `status`.
const EVENTS: &str = "outbox_events";
/// Gauge: age of the oldest pending event in seconds.
const OLDEST_PENDING: &str = "outbox_oldest_pending_age_seconds";
/// Gauge: bytes of WAL the stream's slot has yet to read (`relay.mode = "stream"`).
const SLOT_LAG: &str = "outbox_stream_slot_lag_bytes";
/// Gauge: bytes of WAL the server keeps for the stream's slot.
const SLOT_RETAINED: &str = "outbox_stream_slot_retained_bytes";
/// Gauge: 1 while a reader holds the stream's slot, else 0.
const SLOT_ACTIVE: &str = "outbox_stream_slot_active";
/// Gauge: age in seconds of the oldest event still waiting to be streamed (0: none).
const STREAM_OLDEST: &str = "outbox_stream_oldest_age_seconds";

/// The slot whose gauges a scrape reads, in stream mode.
static SLOT: std::sync::OnceLock<String> = std::sync::OnceLock::new();

/// Reports `slot`'s lag on every scrape from now on.
pub fn watch_slot(slot: &str) {
    let _ = SLOT.set(slot.to_owned());
    metrics::describe_gauge!(SLOT_LAG, "Bytes of WAL the stream's slot has yet to read.");
    metrics::describe_gauge!(
        SLOT_RETAINED,
        "Bytes of WAL the server keeps for the stream's slot."
    );
    metrics::describe_gauge!(SLOT_ACTIVE, "1 while a reader holds the stream's slot.");
    metrics::describe_gauge!(
        STREAM_OLDEST,
        "Age in seconds of the oldest event still waiting to be streamed."
    );
}

/// Installs the process-wide Prometheus recorder (once, also when called from several threads
/// at the same time) and returns its handle.
pub fn recorder() -> Result<PrometheusHandle, BuildError> {
    static HANDLE: Mutex<Option<PrometheusHandle>> = Mutex::new(None);
    let mut slot = HANDLE.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(handle) = slot.as_ref() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(
            Matcher::Full(outbox_worker::metrics::DELIVERY_SECONDS.into()),
            &BUCKETS,
        )?
        .install_recorder()?;
    metrics::describe_gauge!(EVENTS, "Events in the outbox table by status.");
    metrics::describe_gauge!(
        OLDEST_PENDING,
        "Age of the oldest pending event in seconds (lag)."
    );
    *slot = Some(handle.clone());
    Ok(handle)
}

/// Serves the endpoints on a bound `listener` in a background task.
pub fn serve(
    listener: TcpListener,
    store: Served,
    handle: PrometheusHandle,
    admin: Option<axum::Router>,
) -> Result<JoinHandle<()>, std::io::Error> {
    tracing::info!(addr = %listener.local_addr()?, "health and metrics endpoint listening");
    let mut app = axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(scrape))
        .with_state((store, handle));
    if let Some(admin) = admin {
        tracing::info!("web admin under /admin");
        // The overview is /admin; /admin/ is where people type it.
        app = app
            .route(
                "/admin/",
                get(|| async { axum::response::Redirect::to("/admin") }),
            )
            .nest("/admin", admin);
    }
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "health endpoint stopped");
        }
    }))
}

/// The store the endpoint reads: any backend's, and PostgreSQL's own for the slot gauges.
#[derive(Clone)]
pub struct Served {
    store: Arc<DynOutboxStore>,
    pg: Option<PgStore>,
}

impl Served {
    /// A PostgreSQL store (slot gauges included when a slot is watched).
    pub fn postgres(store: PgStore) -> Self {
        Self {
            store: Arc::new(store.clone()),
            pg: Some(store),
        }
    }

    /// Any other store.
    pub fn other(store: Arc<DynOutboxStore>) -> Self {
        Self { store, pg: None }
    }
}

type AppState = State<(Served, PrometheusHandle)>;

/// Ready when the database answers.
async fn ready(State((store, _)): AppState) -> (StatusCode, &'static str) {
    // One row at most from each status's index: as cheap on ten million events as on none.
    match store.store.count_capped(1).await {
        Ok(_) => (StatusCode::OK, "ready\n"),
        Err(error) => {
            tracing::warn!(%error, "/readyz: the outbox table cannot be read");
            (StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n")
        }
    }
}

/// Prometheus text: the table's gauges read now, then everything the process recorded.
async fn scrape(State((store, handle)): AppState) -> (StatusCode, String) {
    match table_gauges(&store).await {
        Ok(()) => (StatusCode::OK, handle.render()),
        Err(error) => {
            tracing::warn!(%error, "/metrics: the outbox table cannot be read");
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "# database unavailable\n".into(),
            )
        }
    }
}

/// Sets the outbox table's gauges from the database.
async fn table_gauges(served: &Served) -> Result<(), outbox_core::StoreError> {
    let store = &served.store;
    let counts = store.count_by_status().await?;
    let oldest = store
        .oldest_pending()
        .await?
        .map(|(_, at)| (SystemClock.now() - at).num_milliseconds().max(0) as f64 / 1000.0)
        .unwrap_or(0.0);
    for s in Status::ALL {
        metrics::gauge!(EVENTS, "status" => s.as_str()).set(counts.get(s) as f64);
    }
    metrics::gauge!(OLDEST_PENDING).set(oldest);
    if let (Some(slot), Some(pg)) = (SLOT.get(), &served.pg) {
        let status = pg.stream_status(slot).await?;
        metrics::gauge!(SLOT_LAG).set(status.lag_bytes as f64);
        metrics::gauge!(SLOT_RETAINED).set(status.retained_bytes as f64);
        metrics::gauge!(SLOT_ACTIVE).set(if status.active { 1.0 } else { 0.0 });
        let oldest = status
            .oldest_streaming
            .map(|at| (SystemClock.now() - at).num_milliseconds().max(0) as f64 / 1000.0)
            .unwrap_or(0.0);
        metrics::gauge!(STREAM_OLDEST).set(oldest);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use outbox_tests::conformance::Harness;
    use outbox_tests::harness::{PgHarness, foreign_row};

    /// The oldest pending event's age counts a row no worker can read (it used to be swallowed:
    /// the gauge read 0 while the row sat there), and a failing query is an error, not a 0 —
    /// said without the database's message.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn metrics_report_an_unreadable_oldest_event() {
        let h = PgHarness::new().await;
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        foreign_row(&h, &deep, "{}").await;
        let handle = recorder().unwrap();
        let (status, body) = scrape(State((Served::postgres(h.store()), handle.clone()))).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let age: f64 = body
            .lines()
            .find_map(|l| l.strip_prefix("outbox_oldest_pending_age_seconds "))
            .expect("the gauge")
            .parse()
            .expect("a number");
        let expected = (SystemClock.now() - outbox_core::Clock::now(h.clock())).num_seconds();
        assert!((age - expected as f64).abs() < 60.0, "{age} vs {expected}");
        assert!(
            body.contains("outbox_events{status=\"pending\"} 1"),
            "{body}"
        );

        h.cleanup().await; // the table is gone: the next scrape must say so
        let (status, body) = scrape(State((Served::postgres(h.store()), handle))).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    }

    /// Health endpoints say what is wrong in a word; the database's message (here naming the
    /// schema and the missing relation) goes to the log only. They used to echo it.
    /// Installing the recorder from several threads at once gives each the one handle (two
    /// tests doing it at the same moment used to fail: the second install was refused).
    #[test]
    fn the_recorder_is_installed_once_from_any_thread() {
        let handles: Vec<_> = (0..8)
            .map(|_| std::thread::spawn(recorder))
            .collect::<Vec<_>>()
            .into_iter()
            .map(|t| t.join().unwrap())
            .collect();
        assert!(
            handles.iter().all(Result::is_ok),
            "{:?}",
            handles
                .iter()
                .filter_map(|h| h.as_ref().err())
                .collect::<Vec<_>>()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn health_endpoints_keep_internals_to_the_log() {
        let h = PgHarness::new().await;
        let schema = h.schema().to_owned();
        let handle = recorder().unwrap();
        assert_eq!(
            ready(State((Served::postgres(h.store()), handle.clone()))).await,
            (StatusCode::OK, "ready\n")
        );
        h.cleanup().await;
        let (status, body) = ready(State((Served::postgres(h.store()), handle.clone()))).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "database unavailable\n");
        let (_, body) = scrape(State((Served::postgres(h.store()), handle))).await;
        assert!(
            !body.contains(&schema) && !body.contains("relation"),
            "{body}"
        );
    }
}
