//! The NATS JetStream transport against the real server on loopback (`NATS_URL`, default
//! `nats://127.0.0.1:4222`), fed by a real PostgreSQL outbox.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;

use async_nats::jetstream;
use outbox_core::{DeliveryError, EventId, NewEvent, OutboxStoreExt, Transport};
use outbox_tests::conformance::Harness;
use outbox_tests::harness::{PgHarness, relay_committed_and_rolled_back, traceparent};
use outbox_transport_nats::NatsTransport;
use serde_json::json;

async fn nats() -> async_nats::Client {
    let url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    async_nats::connect(&url).await.unwrap_or_else(|e| {
        panic!("NATS tests need a NATS server with JetStream at {url} (set NATS_URL): {e}")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_events_arrive_once_with_their_id_and_headers() {
    let client = nats().await;
    let js = jetstream::new(client.clone());
    let tag = format!("t{}", uuid::Uuid::now_v7().simple());
    let mut stream = js
        .create_stream(jetstream::stream::Config {
            name: tag.to_uppercase(),
            subjects: vec![format!("{tag}.>")],
            ..Default::default()
        })
        .await
        .unwrap();

    let h = PgHarness::new().await;

    let transport = NatsTransport::with_prefix(client.clone(), &tag);
    let committed = relay_committed_and_rolled_back(&h, transport.clone()).await;

    assert_eq!(
        stream.info().await.unwrap().state.messages,
        3,
        "the rolled-back event never arrived"
    );
    let mut seen = HashSet::new();
    for seq in 1..=3 {
        let message = stream.get_raw_message(seq).await.unwrap();
        assert_eq!(message.subject.as_str(), format!("{tag}.file.stored"));
        let id = message
            .headers
            .get("Nats-Msg-Id")
            .unwrap()
            .as_str()
            .to_owned();
        assert_eq!(message.headers.get("Outbox-Event-Id").unwrap().as_str(), id);
        assert_eq!(
            outbox_transport_nats::event_id(Some(&message.headers)).map(|e| e.to_string()),
            Some(id.clone()),
            "the consumer's helper reads the id back"
        );
        assert_eq!(
            message.headers.get("Outbox-Event-Type").unwrap().as_str(),
            "file.stored"
        );
        let n: usize = message
            .headers
            .get("Outbox-Aggregate-Id")
            .unwrap()
            .as_str()
            .parse()
            .unwrap();
        assert_eq!(
            message.headers.get("traceparent").unwrap().as_str(),
            traceparent(n)
        );
        let payload: serde_json::Value = serde_json::from_slice(&message.payload).unwrap();
        assert_eq!(payload, json!({ "n": n }));
        seen.insert(id.parse::<EventId>().unwrap());
    }
    assert_eq!(seen, committed.iter().copied().collect::<HashSet<_>>());

    // A redelivery (say, after a lost ack) is dropped by the stream's duplicate window.
    let again = h.store().fetch(committed[0]).await.unwrap();
    transport.deliver(&again).await.unwrap();
    assert_eq!(
        stream.info().await.unwrap().state.messages,
        3,
        "the redelivery was stored twice"
    );

    js.delete_stream(tag.to_uppercase()).await.unwrap();
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subject_without_a_stream_is_a_permanent_error_naming_it() {
    let client = nats().await;
    let tag = format!("nostream{}", uuid::Uuid::now_v7().simple());
    let transport = NatsTransport::with_prefix(client, &tag);
    let event = NewEvent::builder("order.paid", "order", "1")
        .build()
        .unwrap()
        .into_event(EventId::new(), chrono::Utc::now(), 3);
    match transport.deliver(&event).await {
        Err(e @ DeliveryError::Permanent { .. }) => {
            assert!(e.to_string().contains(&format!("{tag}.order.paid")), "{e}")
        }
        other => panic!("expected a permanent error, got {other:?}"),
    }
}

/// Kills the server it holds when dropped.
struct Server(std::process::Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A server whose JetStream does not answer (here: a server of its own without JetStream, as
/// one restarting is until its JetStream is up) meets a publish with "no responders". That is
/// retryable: a broker restarting must not kill events, which the permanent "no stream stores
/// the subject" did in a chaos run's broker outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jetstream_that_does_not_answer_is_retryable() {
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let _server = Server(
        std::process::Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string()])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("this test starts its own nats-server (Debian's nats-server package)"),
    );
    let url = format!("nats://127.0.0.1:{port}");
    let client = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        loop {
            match async_nats::connect(&url).await {
                Ok(client) => return client,
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(50)).await,
            }
        }
    })
    .await
    .expect("the test's nats-server did not start within 30 s");
    let transport = NatsTransport::with_prefix(client, "events");
    let event = NewEvent::builder("order.paid", "order", "1")
        .build()
        .unwrap()
        .into_event(EventId::new(), chrono::Utc::now(), 3);
    match transport.deliver(&event).await {
        Err(e @ DeliveryError::Retryable { .. }) => {
            assert!(e.to_string().contains("events.order.paid"), "{e}")
        }
        other => panic!("expected a retryable error, got {other:?}"),
    }
}
