//! Broker outages: while a broker is unreachable, deliveries fail retryably and are retried
//! with backoff; once it is back, every event arrives. Nothing is lost. Each broker sits behind
//! a loopback proxy the test cuts and restores.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream;
use lapin::options::{BasicGetOptions, QueueDeclareOptions, QueueDeleteOptions};
use lapin::types::FieldTable;
use outbox_core::{Jitter, OutboxEvent, OutboxStore, RetryPolicy, SystemClock, Transport};
use outbox_tests::conformance::Harness;
use outbox_tests::harness::{Outage, PgHarness, traced_event};
use outbox_worker::Worker;

const EVENTS: usize = 20;

/// Emits events while the broker is cut off, runs a worker until some deliveries have failed,
/// restores the broker and waits until every event is delivered. Returns how many attempts
/// failed during the outage.
async fn ride_out<T: Transport + 'static>(h: &PgHarness, outage: &Outage, transport: T) -> u64 {
    let store = h.store().with_clock(Arc::new(SystemClock));
    let policy = RetryPolicy::new(
        Duration::from_millis(50),
        2.0,
        Duration::from_millis(400),
        Jitter::None,
        1000,
    )
    .unwrap();
    outage.cut();
    let mut tx = store.begin().await.unwrap();
    outbox_core::Emit::emit_all(&mut tx, (0..EVENTS).map(traced_event).collect())
        .await
        .unwrap();
    tx.commit().await.unwrap();
    let worker = Worker::builder(store.clone(), transport)
        .retry_policy(policy)
        .poll_interval(Duration::from_millis(50))
        .delivery_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let running = worker.spawn();
    let failed_attempts = |store: outbox_postgres::PgStore| async move {
        let pending = store
            .list(&outbox_core::EventFilter {
                limit: 1000,
                ..Default::default()
            })
            .await
            .unwrap();
        pending
            .events
            .iter()
            .map(OutboxEvent::attempts)
            .sum::<u32>() as u64
    };
    // Wait (bounded) until the outage has cost some attempts.
    tokio::time::timeout(Duration::from_secs(30), async {
        while failed_attempts(store.clone()).await == 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("no delivery was attempted during the outage");
    let failed = failed_attempts(store.clone()).await;
    outage.restore();
    tokio::time::timeout(Duration::from_secs(60), async {
        while store.count_by_status().await.unwrap().delivered < EVENTS as u64 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("events were lost after the broker came back");
    let report = running.shutdown().await.unwrap();
    assert_eq!(report.dead, 0, "an outage must not kill events");
    let counts = store.count_by_status().await.unwrap();
    assert_eq!(
        (
            counts.delivered,
            counts.pending,
            counts.in_flight,
            counts.dead
        ),
        (EVENTS as u64, 0, 0, 0)
    );
    failed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_outage_loses_nothing() {
    let outage = Outage::start("127.0.0.1:6379").await;
    let h = PgHarness::new().await;
    let prefix = format!("t{}", uuid::Uuid::now_v7().simple());
    let url = format!("redis://127.0.0.1:{}", outage.port());
    let transport = outbox_transport_redis::RedisTransport::connect(&url, &prefix)
        .await
        .unwrap();
    let failed = ride_out(&h, &outage, transport).await;
    assert!(failed > 0);
    let mut conn = outbox_transport_redis::connect_manager("redis://127.0.0.1:6379")
        .await
        .unwrap();
    let stream = format!("{prefix}:file.stored");
    let len: usize = redis::cmd("XLEN")
        .arg(&stream)
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(len >= EVENTS, "{len} entries for {EVENTS} events");
    let _: () = redis::cmd("DEL")
        .arg(&stream)
        .query_async(&mut conn)
        .await
        .unwrap();
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_outage_loses_nothing() {
    let outage = Outage::start("127.0.0.1:5672").await;
    let h = PgHarness::new().await;
    let queue = format!("q{}", uuid::Uuid::now_v7().simple());
    let direct = lapin::Connection::connect(
        "amqp://guest:guest@127.0.0.1:5672/%2f",
        lapin::ConnectionProperties::default(),
    )
    .await
    .unwrap()
    .create_channel()
    .await
    .unwrap();
    direct
        .queue_declare(
            queue.as_str().into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await
        .unwrap();
    let url = format!("amqp://guest:guest@127.0.0.1:{}/%2f", outage.port());
    let target = queue.clone();
    let transport = outbox_transport_amqp::AmqpTransport::with_routing_key(
        url,
        "",
        Arc::new(move |_: &OutboxEvent| target.clone()),
    );
    let failed = ride_out(&h, &outage, transport).await;
    assert!(failed > 0);
    let mut got = 0;
    while direct
        .basic_get(queue.as_str().into(), BasicGetOptions { no_ack: true })
        .await
        .unwrap()
        .is_some()
    {
        got += 1;
    }
    assert!(got >= EVENTS, "{got} messages for {EVENTS} events");
    direct
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await
        .unwrap();
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nats_outage_loses_nothing() {
    let outage = Outage::start("127.0.0.1:4222").await;
    let h = PgHarness::new().await;
    let tag = format!("t{}", uuid::Uuid::now_v7().simple());
    let direct = outbox_transport_nats::connect_client("nats://127.0.0.1:4222")
        .await
        .unwrap();
    let js = jetstream::new(direct);
    let mut stream = js
        .create_stream(jetstream::stream::Config {
            name: tag.to_uppercase(),
            subjects: vec![format!("{tag}.>")],
            ..Default::default()
        })
        .await
        .unwrap();
    let client =
        outbox_transport_nats::connect_client(&format!("nats://127.0.0.1:{}", outage.port()))
            .await
            .unwrap();
    let transport = outbox_transport_nats::NatsTransport::with_prefix(client, &tag);
    let failed = ride_out(&h, &outage, transport).await;
    assert!(failed > 0);
    // The duplicate window keeps retried publishes from doubling up.
    assert_eq!(stream.info().await.unwrap().state.messages, EVENTS as u64);
    js.delete_stream(tag.to_uppercase()).await.unwrap();
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhook_receiver_outage_loses_nothing() {
    use axum::routing::post;
    let received = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = received.clone();
    let app = axum::Router::new().route(
        "/hook",
        post(move || {
            let counter = counter.clone();
            async move {
                counter.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                "ok"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap().to_string();
    tokio::spawn(async move { axum::serve(listener, app).await });
    let outage = Outage::start(&upstream).await;
    let h = PgHarness::new().await;
    let url = format!("http://127.0.0.1:{}/hook", outage.port());
    let transport = outbox_transport_webhook::WebhookTransport::builder(url)
        .build()
        .unwrap();
    let failed = ride_out(&h, &outage, transport).await;
    assert!(failed > 0);
    assert!(received.load(std::sync::atomic::Ordering::SeqCst) >= EVENTS);
    h.cleanup().await;
}
