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
