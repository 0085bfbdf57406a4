//! `/healthz`, `/readyz` and `/metrics` for the relay.

use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use outbox_core::{Clock, EventFilter, OutboxStore, Status, SystemClock};
use outbox_postgres::PgStore;
use tokio::task::JoinHandle;

use crate::metered::Meters;
use std::sync::Arc;

/// Serves the endpoints on `addr` in a background task.
pub async fn serve(
    addr: &str,
    store: PgStore,
    meters: Arc<Meters>,
) -> Result<JoinHandle<()>, std::io::Error> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(addr = %listener.local_addr()?, "health and metrics endpoint listening");
    let app = axum::Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .route("/metrics", get(metrics))
        .with_state((store, meters));
    Ok(tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            tracing::error!(error = %e, "health endpoint stopped");
        }
    }))
}

/// Ready when the database answers.
async fn ready(State((store, _)): State<(PgStore, Arc<Meters>)>) -> (StatusCode, String) {
    match store.count_by_status().await {
        Ok(_) => (StatusCode::OK, "ready\n".into()),
        Err(e) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("database unavailable: {e}\n"),
        ),
    }
}

/// Prometheus text: events by status, the age of the oldest pending event, and this process's
/// delivery counters and duration histogram.
async fn metrics(State((store, meters)): State<(PgStore, Arc<Meters>)>) -> (StatusCode, String) {
    let counts = match store.count_by_status().await {
        Ok(c) => c,
        Err(e) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("# database unavailable: {e}\n"),
            );
        }
    };
    let mut out = String::from(
        "# HELP outbox_events Events in the outbox table by status.\n# TYPE outbox_events gauge\n",
    );
    for s in Status::ALL {
        out.push_str(&format!(
            "outbox_events{{status=\"{}\"}} {}\n",
            s.as_str(),
            counts.get(s)
        ));
    }
    let oldest = match store
        .list(&EventFilter {
            status: Some(Status::Pending),
            limit: 1,
            ..Default::default()
        })
        .await
    {
        Ok(page) => page
            .oldest_created_at()
            .map(|at| (SystemClock.now() - at).num_milliseconds().max(0) as f64 / 1000.0)
            .unwrap_or(0.0),
        Err(e) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                format!("# cannot read the oldest pending event: {e}\n"),
            );
        }
    };
    out.push_str(
        "# HELP outbox_oldest_pending_age_seconds Age of the oldest pending event (lag).\n",
    );
    out.push_str("# TYPE outbox_oldest_pending_age_seconds gauge\n");
    out.push_str(&format!("outbox_oldest_pending_age_seconds {oldest}\n"));
    out.push_str(&meters.render());
    (StatusCode::OK, out)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use outbox_tests::conformance::Harness;
    use outbox_tests::harness::{PgHarness, foreign_row};

    /// The oldest pending event's age counts a row no worker can read (it used to be swallowed:
    /// the gauge read 0 while the row sat there), and a failing query is an error, not a 0.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn metrics_report_an_unreadable_oldest_event() {
        let h = PgHarness::new().await;
        let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
        foreign_row(&h, &deep, "{}").await;
        let meters = Arc::new(Meters::default());
        let (status, body) = metrics(State((h.store(), meters.clone()))).await;
        assert_eq!(status, StatusCode::OK, "{body}");
        let age: f64 = body
            .lines()
            .find_map(|l| l.strip_prefix("outbox_oldest_pending_age_seconds "))
            .expect("the gauge")
            .parse()
            .expect("a number");
        let expected = (SystemClock.now() - outbox_core::Clock::now(h.clock())).num_seconds();
        assert!((age - expected as f64).abs() < 60.0, "{age} vs {expected}");

        h.cleanup().await; // the table is gone: the next scrape must say so
        let (status, body) = metrics(State((h.store(), meters))).await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
    }
}
