//! Delivered events per second through each real transport, from a backlog, with 4 workers.

use std::sync::Arc;

use outbox_core::{OutboxEvent, Transport};

use crate::pg::{Setup, fill, setup, truncate};
use crate::{BenchError, Summary, per_second};
use outbox_worker::ClaimMode;

async fn drain<T: Transport + Clone + 'static>(s: &Setup, transport: T) -> Result<f64, BenchError> {
    let (delivered, took) =
        crate::pg::drain_with(&s.store, transport, ClaimMode::Locked, 4, 100, 64).await?;
    Ok(per_second(delivered, took))
}

pub async fn run(url: &str, quick: bool, summary: &mut Summary) -> Result<(), BenchError> {
    let backlog = if quick { 10_000 } else { 100_000 };
    let s = setup(url, 16).await?;
    let tag = format!("bench{}", std::process::id());

    // NATS JetStream: a stream for the benchmark's subjects.
    let client = outbox_transport_nats::connect_client("nats://127.0.0.1:4222").await?;
    let js = async_nats::jetstream::new(client.clone());
    js.create_stream(async_nats::jetstream::stream::Config {
        name: tag.to_uppercase(),
        subjects: vec![format!("{tag}.>")],
        ..Default::default()
    })
    .await?;
    truncate(&s.pool).await?;
    fill(&s, backlog).await?;
    let nats = drain(
        &s,
        outbox_transport_nats::NatsTransport::with_prefix(client, &tag),
    )
    .await?;
    js.delete_stream(tag.to_uppercase()).await?;
    summary.put("transport.nats_events_per_s", nats, "events/s");

    // RabbitMQ: a queue on the default exchange.
    let amqp_url = "amqp://guest:guest@127.0.0.1:5672/%2f";
    let channel = lapin::Connection::connect(amqp_url, lapin::ConnectionProperties::default())
        .await?
        .create_channel()
        .await?;
    channel
        .queue_declare(
            tag.as_str().into(),
            lapin::options::QueueDeclareOptions::default(),
            Default::default(),
        )
        .await?;
    truncate(&s.pool).await?;
    fill(&s, backlog).await?;
    let queue = tag.clone();
    let amqp = outbox_transport_amqp::AmqpTransport::with_routing_key(
        amqp_url,
        "",
        Arc::new(move |_: &OutboxEvent| queue.clone()),
    );
    let rabbit = drain(&s, amqp).await?;
    channel
        .queue_delete(
            tag.as_str().into(),
            lapin::options::QueueDeleteOptions::default(),
        )
        .await?;
    summary.put("transport.amqp_events_per_s", rabbit, "events/s");

    // Redis Streams.
    truncate(&s.pool).await?;
    fill(&s, backlog).await?;
    let redis =
        outbox_transport_redis::RedisTransport::connect("redis://127.0.0.1:6379", &tag).await?;
    let streams = drain(&s, redis).await?;
    let mut conn = outbox_transport_redis::connect_manager("redis://127.0.0.1:6379").await?;
    let _: () = redis::cmd("DEL")
        .arg(format!("{tag}:file.stored"))
        .query_async(&mut conn)
        .await?;
    summary.put("transport.redis_events_per_s", streams, "events/s");

    // HTTP webhook to a receiver on loopback that answers 204 at once.
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(|| async { axum::http::StatusCode::NO_CONTENT }),
    );
    let server = tokio::spawn(async move { axum::serve(listener, app).await });
    truncate(&s.pool).await?;
    fill(&s, backlog).await?;
    let webhook =
        outbox_transport_webhook::WebhookTransport::builder(format!("http://{addr}/hook"))
            .secret(b"bench".to_vec())
            .build()?;
    let posts = drain(&s, webhook).await?;
    server.abort();
    summary.put("transport.webhook_events_per_s", posts, "events/s");

    // Kafka: a tansu broker (memory storage) started for the run, a 3-partition topic.
    truncate(&s.pool).await?;
    fill(&s, backlog).await?;
    let broker = kafka::Broker::start().await?;
    broker.create_topic(&tag, 3).await?;
    let kafka = outbox_transport_kafka::KafkaTransport::builder(broker.brokers())
        .topic_name(&tag)
        .build()?;
    let produced = drain(&s, kafka).await?;
    drop(broker);
    summary.put("transport.kafka_events_per_s", produced, "events/s");
    summary.put("transport.backlog_events", backlog as f64, "events");
    Ok(())
}

/// A tansu broker (`TANSU`, else `tansu` on `PATH`) on a free loopback port, killed on drop.
mod kafka {
    use std::process::{Child, Command, Stdio};
    use std::time::{Duration, Instant};

    use rdkafka::ClientConfig;
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::consumer::Consumer;

    use crate::BenchError;

    pub struct Broker {
        child: Child,
        port: u16,
    }

    impl Broker {
        pub async fn start() -> Result<Self, BenchError> {
            let port = std::net::TcpListener::bind("127.0.0.1:0")?
                .local_addr()?
                .port();
            let url = format!("tcp://127.0.0.1:{port}");
            let tansu = std::env::var("TANSU").unwrap_or_else(|_| "tansu".into());
            let child = Command::new(&tansu)
                .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
                .args(["--storage-engine", "memory://tansu/", "--silent"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .map_err(|e| {
                    format!("the Kafka row needs tansu ({tansu}: {e}): cargo install tansu --locked --features dynostore,libsql")
                })?;
            let broker = Self { child, port };
            let started = Instant::now();
            while !broker.answers().await? {
                if started.elapsed() > Duration::from_secs(30) {
                    return Err(format!("tansu did not answer on port {port} within 30 s").into());
                }
            }
            Ok(broker)
        }

        pub fn brokers(&self) -> String {
            format!("127.0.0.1:{}", self.port)
        }

        async fn answers(&self) -> Result<bool, BenchError> {
            let brokers = self.brokers();
            Ok(tokio::task::spawn_blocking(move || {
                ClientConfig::new()
                    .set("bootstrap.servers", &brokers)
                    .create::<rdkafka::consumer::BaseConsumer>()
                    .map(|c| c.fetch_metadata(None, Duration::from_millis(500)).is_ok())
                    .unwrap_or(false)
            })
            .await?)
        }

        pub async fn create_topic(&self, topic: &str, partitions: i32) -> Result<(), BenchError> {
            let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
                .set("bootstrap.servers", self.brokers())
                .create()?;
            for result in admin
                .create_topics(
                    &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
                    &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
                )
                .await?
            {
                result.map_err(|(t, e)| format!("creating topic {t}: {e}"))?;
            }
            Ok(())
        }
    }

    impl Drop for Broker {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}
