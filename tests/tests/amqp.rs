//! The RabbitMQ transport against the real broker on loopback (`AMQP_URL`, default
//! `amqp://guest:guest@127.0.0.1:5672/%2f`), fed by a real PostgreSQL outbox.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::sync::Arc;

use lapin::options::{BasicGetOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Connection, ConnectionProperties};
use outbox_core::{DeliveryError, EventId, NewEvent, OutboxEvent, Transport};
use outbox_tests::conformance::Harness;
use outbox_tests::harness::{PgHarness, relay_committed_and_rolled_back, traceparent};
use outbox_transport_amqp::AmqpTransport;
use serde_json::json;

fn url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

async fn broker() -> lapin::Channel {
    let url = url();
    let connection = Connection::connect(&url, ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("AMQP tests need RabbitMQ at {url} (set AMQP_URL): {e}"));
    connection.create_channel().await.unwrap()
}

/// Runs a test against the broker within two minutes. A broker that accepts connections but
/// stops answering (queue operations hanging) then fails the test, saying how to fix it,
/// instead of holding up the whole run.
async fn bounded(test: impl std::future::Future<Output = ()>) {
    if tokio::time::timeout(std::time::Duration::from_secs(120), test)
        .await
        .is_err()
    {
        panic!(
            "RabbitMQ at {} stopped answering for 120 s; restart it: rabbitmqctl stop; rabbitmq-server -detached",
            url()
        );
    }
}

fn header(headers: &FieldTable, name: &str) -> String {
    match headers.inner().get(name) {
        Some(AMQPValue::LongString(s)) => s.to_string(),
        other => panic!("header {name}: {other:?}"),
    }
}

fn stored(t: &str) -> OutboxEvent {
    NewEvent::builder(t, "order", "1")
        .build()
        .unwrap()
        .into_event(EventId::new(), chrono::Utc::now(), 3)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_events_arrive_persistent_with_their_id_and_headers() {
    bounded(committed_events_arrive_persistent_with_their_id_and_headers_body()).await;
}

async fn committed_events_arrive_persistent_with_their_id_and_headers_body() {
    let channel = broker().await;
    let queue = format!("q{}", uuid::Uuid::now_v7().simple());
    channel
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();

    let h = PgHarness::new().await;

    // The default exchange routes by queue name.
    let target = queue.clone();
    let transport =
        AmqpTransport::with_routing_key(url(), "", Arc::new(move |_: &OutboxEvent| target.clone()));
    let committed = relay_committed_and_rolled_back(&h, transport).await;

    let mut seen = HashSet::new();
    for _ in 0..3 {
        let message = channel
            .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
            .await
            .unwrap()
            .expect("a delivered event is missing from the queue");
        let props = &message.delivery.properties;
        assert_eq!(props.delivery_mode(), &Some(2), "persistent");
        let id: EventId = props
            .message_id()
            .as_ref()
            .unwrap()
            .as_str()
            .parse()
            .unwrap();
        assert_eq!(outbox_transport_amqp::event_id(props), Some(id));
        let headers = props.headers().as_ref().unwrap();
        assert_eq!(header(headers, "outbox-event-type"), "file.stored");
        let n: usize = header(headers, "outbox-aggregate-id").parse().unwrap();
        assert_eq!(header(headers, "traceparent"), traceparent(n));
        let payload: serde_json::Value = serde_json::from_slice(&message.delivery.data).unwrap();
        assert_eq!(payload, json!({ "n": n }));
        seen.insert(id);
    }
    assert_eq!(seen, committed.iter().copied().collect::<HashSet<_>>());
    let extra = channel
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap();
    assert!(extra.is_none(), "the rolled-back event arrived");

    channel
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unroutable_is_permanent_and_an_unreachable_broker_is_retryable() {
    bounded(unroutable_is_permanent_and_an_unreachable_broker_is_retryable_body()).await;
}

async fn unroutable_is_permanent_and_an_unreachable_broker_is_retryable_body() {
    let nowhere = format!("nobody-listens-{}", uuid::Uuid::now_v7().simple());
    let key = nowhere.clone();
    let transport =
        AmqpTransport::with_routing_key(url(), "", Arc::new(move |_: &OutboxEvent| key.clone()));
    match transport.deliver(&stored("order.paid")).await {
        Err(e @ DeliveryError::Permanent { .. }) => {
            assert!(e.to_string().contains(&nowhere), "{e}")
        }
        other => panic!("an unroutable message must be a permanent error, got {other:?}"),
    }
    // The same transport still delivers once a queue is bound (the channel survived).
    let channel = broker().await;
    channel
        .queue_declare(
            nowhere.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    transport.deliver(&stored("order.paid")).await.unwrap();
    channel
        .queue_delete(nowhere.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();

    let closed = {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        format!("amqp://guest:guest@{}/%2f", listener.local_addr().unwrap())
    };
    let down = AmqpTransport::new(closed, "events");
    assert!(matches!(
        down.deliver(&stored("order.paid")).await,
        Err(DeliveryError::Retryable { .. })
    ));
}
