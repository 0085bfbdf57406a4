//! The log-reading relay delivers through every transport: events committed to a streamed table
//! (a scratch cluster with `wal_level = logical`) arrive at NATS JetStream, RabbitMQ, Redis
//! Streams, a webhook receiver and Kafka (tansu), each read back at the destination by id.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use outbox_core::{DeliveryError, Emit, EventId, NewEvent, OutboxEvent, Transport};
use outbox_postgres::{PgConfig, PgStore};
use outbox_tests::logical::cluster;
use outbox_worker::Worker;
use serde_json::json;
use tokio_util::sync::CancellationToken;

const SLOT: &str = "outbox_transports";

/// Counts what its transport acknowledged.
struct Counted<T> {
    inner: T,
    ok: Arc<AtomicUsize>,
}

#[async_trait]
impl<T: Transport> Transport for Counted<T> {
    async fn deliver(&self, event: &OutboxEvent) -> Result<(), DeliveryError> {
        self.inner.deliver(event).await?;
        self.ok.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }
}

/// Commits three events of `event_type`, streams them through `transport` until it has
/// acknowledged them, stops the reader, and returns their ids.
async fn through<T: Transport + 'static>(
    store: &PgStore,
    url: &str,
    event_type: &str,
    transport: T,
) -> HashSet<EventId> {
    let mut tx = store.begin().await.unwrap();
    let ids = tx
        .emit_all(
            (0..3)
                .map(|n| {
                    NewEvent::builder(event_type, "order", n.to_string())
                        .payload(json!({ "n": n }))
                        .build()
                        .unwrap()
                })
                .collect(),
        )
        .await
        .unwrap()
        .into_iter()
        .map(|e| e.id())
        .collect();
    tx.commit().await.unwrap();
    let ok = Arc::new(AtomicUsize::new(0));
    let counted = Counted {
        inner: transport,
        ok: Arc::clone(&ok),
    };
    let worker = Worker::builder(store.clone(), counted)
        .poll_interval(Duration::from_millis(10))
        .error_backoff(Duration::from_millis(100))
        .build()
        .unwrap();
    let cancel = CancellationToken::new();
    let source = store.stream(SLOT, url).unwrap();
    let task = {
        let cancel = cancel.clone();
        tokio::spawn(async move { worker.stream(source, cancel).await })
    };
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while ok.load(Ordering::SeqCst) < 3 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{event_type}: {} of 3 acknowledged",
            ok.load(Ordering::SeqCst)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    cancel.cancel();
    let report = task.await.unwrap().unwrap();
    assert_eq!((report.delivered, report.held), (3, 0), "{event_type}");
    ids
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_transport_delivers_from_the_stream() {
    let cluster = cluster();
    let url = cluster.url();
    let pool = sqlx::PgPool::connect(&url).await.unwrap();
    let store = PgStore::new(pool, PgConfig::new()).unwrap();
    store.migrate().await.unwrap();
    store.start_streaming(SLOT).await.unwrap();
    let tag = format!("t{}", uuid::Uuid::now_v7().simple());

    // NATS JetStream.
    let nats_url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let client = async_nats::connect(&nats_url)
        .await
        .unwrap_or_else(|e| panic!("this test needs NATS with JetStream at {nats_url}: {e}"));
    let js = async_nats::jetstream::new(client.clone());
    let mut nats_stream = js
        .create_stream(async_nats::jetstream::stream::Config {
            name: tag.to_uppercase(),
            subjects: vec![format!("{tag}.>")],
            ..Default::default()
        })
        .await
        .unwrap();
    let sent = through(
        &store,
        &url,
        "nats.sent",
        outbox_transport_nats::NatsTransport::with_prefix(client.clone(), &tag),
    )
    .await;
    let mut got = HashSet::new();
    for seq in 1..=3 {
        let message = nats_stream.get_raw_message(seq).await.unwrap();
        got.insert(outbox_transport_nats::event_id(Some(&message.headers)).unwrap());
    }
    assert_eq!(got, sent, "NATS");
    assert_eq!(nats_stream.info().await.unwrap().state.messages, 3);
    js.delete_stream(tag.to_uppercase()).await.unwrap();

    // RabbitMQ, through the default exchange to a queue of the test's own.
    let amqp_url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let connection = lapin::Connection::connect(&amqp_url, lapin::ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| panic!("this test needs RabbitMQ at {amqp_url}: {e}"));
    let channel = connection.create_channel().await.unwrap();
    let queue = format!("q{tag}");
    channel
        .queue_declare(
            queue.as_str().into(),
            lapin::options::QueueDeclareOptions::default(),
            lapin::types::FieldTable::default(),
        )
        .await
        .unwrap();
    let target = queue.clone();
    let sent = through(
        &store,
        &url,
        "amqp.sent",
        outbox_transport_amqp::AmqpTransport::with_routing_key(
            amqp_url.clone(),
            "",
            Arc::new(move |_: &OutboxEvent| target.clone()),
        ),
    )
    .await;
    let mut got = HashSet::new();
    for _ in 0..3 {
        let message = channel
            .basic_get(
                queue.as_str().into(),
                lapin::options::BasicGetOptions { no_ack: true },
            )
            .await
            .unwrap()
            .expect("a message");
        let id = message
            .properties
            .message_id()
            .as_ref()
            .map(|id| id.to_string())
            .expect("message id");
        got.insert(id.parse::<EventId>().unwrap());
    }
    assert_eq!(got, sent, "RabbitMQ");
    channel
        .queue_delete(queue.as_str().into(), Default::default())
        .await
        .unwrap();

    // Redis Streams.
    let redis_url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let transport = outbox_transport_redis::RedisTransport::connect(&redis_url, &tag)
        .await
        .unwrap_or_else(|e| panic!("this test needs Redis at {redis_url}: {e}"));
    let sent = through(&store, &url, "redis.sent", transport).await;
    let mut conn = redis::Client::open(redis_url.as_str())
        .unwrap()
        .get_connection_manager()
        .await
        .unwrap();
    let key = format!("{tag}:redis.sent");
    let entries: Vec<(String, std::collections::HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg(&key)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    let got: HashSet<EventId> = entries
        .iter()
        .map(|(_, fields)| fields["event_id"].parse().unwrap())
        .collect();
    assert_eq!(got, sent, "Redis");
    let _: () = redis::cmd("DEL")
        .arg(&key)
        .query_async(&mut conn)
        .await
        .unwrap();

    // A webhook receiver on loopback.
    let posted: Arc<Mutex<Vec<String>>> = Arc::default();
    let app = {
        let posted = Arc::clone(&posted);
        axum::Router::new().route(
            "/hook",
            axum::routing::post(move |headers: axum::http::HeaderMap| {
                let posted = Arc::clone(&posted);
                async move {
                    let id = headers
                        .get("Outbox-Event-Id")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    posted.lock().unwrap().push(id);
                    axum::http::StatusCode::OK
                }
            }),
        )
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    let sent = through(
        &store,
        &url,
        "webhook.sent",
        outbox_transport_webhook::WebhookTransport::builder(format!("http://{addr}/hook"))
            .build()
            .unwrap(),
    )
    .await;
    let got: HashSet<EventId> = posted
        .lock()
        .unwrap()
        .iter()
        .map(|id| id.parse().unwrap())
        .collect();
    assert_eq!(got, sent, "webhook");
    server.abort();

    // Kafka, on a tansu broker of the test's own.
    let broker = outbox_tests::kafka::Broker::in_memory().await;
    let topic = format!("outbox-stream-{tag}");
    broker.topic(&topic, 1).await;
    let sent = through(
        &store,
        &url,
        "kafka.sent",
        outbox_transport_kafka::KafkaTransport::builder(broker.brokers())
            .topic_name(&topic)
            .build()
            .unwrap(),
    )
    .await;
    let got: HashSet<EventId> = broker
        .read(&topic, 1)
        .await
        .iter()
        .map(|r| r.id.unwrap())
        .collect();
    assert_eq!(got, sent, "Kafka");
}
