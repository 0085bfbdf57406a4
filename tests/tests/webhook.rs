//! The webhook transport against a local HTTP server on loopback, fed by a real PostgreSQL
//! outbox.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use outbox_core::{DeliveryError, EventId, NewEvent, OutboxEvent, Transport};
use outbox_tests::conformance::Harness;
use outbox_tests::harness::{PgHarness, relay_committed_and_rolled_back, traceparent};
use outbox_transport_webhook::{
    Envelope, SIGNATURE_HEADER, Signed, WebhookTransport, verify_signature,
};
use serde_json::json;

/// What the server answers next: a status and an optional `Retry-After`; `None` never answers.
type Answer = Option<(u16, Option<&'static str>)>;

#[derive(Default)]
struct Receiver {
    script: Mutex<VecDeque<Answer>>,
    received: Mutex<Vec<(HeaderMap, Bytes)>>,
}

async fn hook(State(r): State<Arc<Receiver>>, headers: HeaderMap, body: Bytes) -> Response {
    r.received.lock().unwrap().push((headers, body));
    let answer = r
        .script
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or(Some((200, None)));
    match answer {
        None => std::future::pending().await,
        Some((status, retry_after)) => {
            let status = StatusCode::from_u16(status).unwrap();
            match retry_after {
                Some(value) => (status, [("Retry-After", value)]).into_response(),
                None => status.into_response(),
            }
        }
    }
}

/// Starts a receiver on an ephemeral loopback port; returns its URL.
async fn serve(receiver: Arc<Receiver>) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .with_state(receiver);
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/hook")
}

fn event(n: usize) -> NewEvent {
    NewEvent::builder("file.stored", "upload", n.to_string())
        .payload(json!({ "n": n }))
        .header("traceparent", traceparent(n))
        .build()
        .unwrap()
}

fn stored(n: usize) -> OutboxEvent {
    event(n).into_event(EventId::new(), chrono::Utc::now(), 3)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_events_arrive_signed() {
    let receiver = Arc::new(Receiver::default());
    let url = serve(receiver.clone()).await;
    let h = PgHarness::new().await;

    let transport = WebhookTransport::builder(url)
        .secret(b"s3cret".to_vec())
        .build()
        .unwrap();
    let committed = relay_committed_and_rolled_back(&h, transport).await;

    let received = receiver.received.lock().unwrap().clone();
    assert_eq!(received.len(), 3, "the rolled-back event was never posted");
    let now = chrono::Utc::now().timestamp();
    let mut ids = Vec::new();
    for (headers, body) in &received {
        let signature = headers.get(SIGNATURE_HEADER).unwrap().to_str().unwrap();
        let header = |name: &str| headers.get(name).unwrap().to_str().unwrap();
        let signed = Signed {
            event_id: header("Outbox-Event-Id"),
            event_type: header("Outbox-Event-Type"),
            body,
        };
        let tolerance = Duration::from_secs(300);
        verify_signature(b"s3cret", signature, signed, now, tolerance).unwrap();
        assert!(verify_signature(b"wrong", signature, signed, now, tolerance).is_err());
        let envelope: Envelope = serde_json::from_slice(body).unwrap();
        assert_eq!(
            headers.get("Outbox-Event-Id").unwrap().to_str().unwrap(),
            envelope.id.to_string()
        );
        let header = headers
            .get(outbox_transport_webhook::EVENT_ID_HEADER)
            .unwrap();
        assert_eq!(
            outbox_transport_webhook::event_id(header.to_str().unwrap()),
            Some(envelope.id)
        );
        assert_eq!(headers.get("content-type").unwrap(), "application/json");
        let n: usize = envelope.aggregate_id.parse().unwrap();
        assert_eq!(envelope.payload, json!({ "n": n }));
        assert_eq!(envelope.headers["traceparent"], traceparent(n));
        assert_eq!(
            headers.get("traceparent").unwrap().to_str().unwrap(),
            traceparent(n),
            "trace context as an HTTP header too"
        );
        ids.push(envelope.id);
    }
    ids.sort();
    let mut expected = committed.clone();
    expected.sort();
    assert_eq!(ids, expected);
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_codes_map_to_delivered_retryable_or_permanent() {
    let receiver = Arc::new(Receiver::default());
    let url = serve(receiver.clone()).await;
    let transport = WebhookTransport::builder(url).build().unwrap();
    let http_date =
        (chrono::Utc::now() + chrono::TimeDelta::seconds(120)).format("%a, %d %b %Y %H:%M:%S GMT");
    let http_date: &'static str = Box::leak(http_date.to_string().into_boxed_str());
    // (answer, expected outcome, accepted range of the Retry-After hint in seconds)
    type Case = (Answer, &'static str, Option<(u64, u64)>);
    let cases: Vec<Case> = vec![
        (Some((200, None)), "ok", None),
        (Some((204, None)), "ok", None),
        (Some((408, None)), "retryable", None),
        (Some((429, Some("7"))), "retryable", Some((7, 7))),
        (Some((503, Some(http_date))), "retryable", Some((100, 120))),
        (Some((500, None)), "retryable", None),
        (Some((400, None)), "permanent", None),
        (Some((404, None)), "permanent", None),
        (Some((410, None)), "permanent", None),
    ];
    for (answer, expected, hint) in cases {
        receiver.script.lock().unwrap().push_back(answer);
        let got = transport.deliver(&stored(1)).await;
        let kind = match &got {
            Ok(()) => "ok",
            Err(DeliveryError::Retryable { .. }) => "retryable",
            Err(_) => "permanent",
        };
        assert_eq!(kind, expected, "{answer:?} gave {got:?}");
        if let Some((low, high)) = hint {
            let after = got.unwrap_err().retry_after_hint().unwrap().as_secs();
            assert!(
                (low..=high).contains(&after),
                "{answer:?}: Retry-After read as {after} s"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_and_slow_receivers_are_retryable() {
    // Nothing listens on this port once the listener is dropped.
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("http://{}/hook", listener.local_addr().unwrap())
    };
    let down = WebhookTransport::builder(closed).build().unwrap();
    assert!(matches!(
        down.deliver(&stored(1)).await,
        Err(DeliveryError::Retryable { .. })
    ));

    let receiver = Arc::new(Receiver::default());
    receiver.script.lock().unwrap().push_back(None); // never answers
    let url = serve(receiver).await;
    let slow = WebhookTransport::builder(url)
        .timeout(Duration::from_millis(200))
        .build()
        .unwrap();
    match slow.deliver(&stored(1)).await {
        Err(e @ DeliveryError::Retryable { .. }) => {
            assert!(e.to_string().contains("timed out"), "{e}")
        }
        other => panic!("expected a retryable timeout, got {other:?}"),
    }
}

/// Every message of an error and its sources, as a log line or `last_error` could show them.
fn chain(error: &DeliveryError) -> String {
    let mut text = error.to_string();
    let mut source = std::error::Error::source(error);
    while let Some(e) = source {
        text.push_str(&format!(" / {e}"));
        source = e.source();
    }
    text
}

/// A redirect is never followed: the signed request does not reach the server it points to,
/// and the delivery fails permanently, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redirects_are_not_followed() {
    let elsewhere = Arc::new(Receiver::default());
    let elsewhere_url = serve(elsewhere.clone()).await;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move || {
            let to = elsewhere_url.clone();
            async move { (StatusCode::TEMPORARY_REDIRECT, [("Location", to)]).into_response() }
        }),
    );
    tokio::spawn(async move { axum::serve(listener, app).await });

    let transport = WebhookTransport::builder(format!("http://{addr}/hook"))
        .secret(b"s3cret".to_vec())
        .build()
        .unwrap();
    match transport.deliver(&stored(1)).await {
        Err(e @ DeliveryError::Permanent { .. }) => {
            assert!(e.to_string().contains("redirects are not followed"), "{e}")
        }
        other => panic!("expected a permanent error, got {other:?}"),
    }
    assert!(
        elsewhere.received.lock().unwrap().is_empty(),
        "the signed request reached the redirect's target"
    );
}

/// Credentials and query tokens in the receiver's URL appear in no error message or source:
/// not for a refused status, not for a refused connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn urls_are_redacted_in_every_error() {
    let receiver = Arc::new(Receiver::default());
    receiver.script.lock().unwrap().push_back(Some((500, None)));
    let url = serve(receiver).await;
    let with_secrets = url.replace("http://", "http://hookuser:R0utePW@") + "?token=TOK3N";
    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!(
            "http://hookuser:R0utePW@{}/hook?token=TOK3N",
            listener.local_addr().unwrap()
        )
    };
    for url in [with_secrets, closed] {
        let transport = WebhookTransport::builder(url).build().unwrap();
        let error = transport.deliver(&stored(1)).await.unwrap_err();
        let text = chain(&error);
        assert!(text.contains("/hook?…"), "{text}");
        assert!(
            !text.contains("R0utePW") && !text.contains("hookuser") && !text.contains("TOK3N"),
            "a secret leaked: {text}"
        );
    }
}
