//! A Kafka-protocol broker for tests: [tansu](https://github.com/tansu-io/tansu) (`TANSU`, else
//! `tansu` on `PATH`), started per test on a free port, with helpers to create topics and read
//! records back.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use outbox_core::EventId;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::message::{Headers, Message};
use rdkafka::{Offset, TopicPartitionList};

/// A tansu broker (a Kafka-protocol broker) a test started on a free loopback port, killed
/// (SIGKILL) when dropped.
pub struct Broker {
    child: Option<Child>,
    port: u16,
    storage: String,
    data: Option<PathBuf>,
}

fn tansu() -> String {
    std::env::var("TANSU").unwrap_or_else(|_| "tansu".into())
}

impl Broker {
    /// A broker keeping everything in memory.
    pub async fn in_memory() -> Self {
        Self::start_with("memory://tansu/".into(), None).await
    }

    /// A broker keeping its log in an SQLite file, so it survives being killed.
    pub async fn on_disk() -> Self {
        let dir = std::env::temp_dir().join(format!("outbox-kafka-{}", uuid::Uuid::now_v7()));
        std::fs::create_dir_all(&dir).unwrap();
        // A relative path: tansu opens it under its working directory, `dir`.
        Self::start_with("sqlite://tansu.db".into(), Some(dir)).await
    }

    async fn start_with(storage: String, data: Option<PathBuf>) -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut broker = Self {
            child: None,
            port,
            storage,
            data,
        };
        broker.restart().await;
        broker
    }

    /// `host:port` to bootstrap from.
    pub fn brokers(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Starts the broker process (again) on the same port and storage, and waits until it
    /// answers a metadata request.
    pub async fn restart(&mut self) {
        let url = format!("tcp://127.0.0.1:{}", self.port);
        let child = Command::new(tansu())
            .args(["broker", "--listener-url", &url, "--advertised-listener-url", &url])
            .args(["--storage-engine", &self.storage, "--silent"])
            .current_dir(self.data.clone().unwrap_or_else(std::env::temp_dir))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "Kafka tests need the tansu broker ({}: {e}): cargo install tansu --locked --features dynostore,libsql, or set TANSU",
                    tansu()
                )
            });
        self.child = Some(child);
        let brokers = self.brokers();
        let started = Instant::now();
        loop {
            let b = brokers.clone();
            let answered = tokio::task::spawn_blocking(move || {
                let consumer: BaseConsumer = ClientConfig::new()
                    .set("bootstrap.servers", &b)
                    .create()
                    .unwrap();
                consumer
                    .fetch_metadata(None, Duration::from_millis(500))
                    .is_ok()
            })
            .await
            .unwrap();
            if answered {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!(
                    "tansu exited at start with {status} ({url}, {})",
                    self.storage
                );
            }
            assert!(
                started.elapsed() < Duration::from_secs(30),
                "tansu did not answer at {brokers} within 30 s"
            );
        }
    }

    /// Kills the broker process (SIGKILL); [`restart`](Self::restart) brings it back.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Creates `topic` with `partitions` partitions.
    pub async fn topic(&self, topic: &str, partitions: i32) {
        let admin: AdminClient<DefaultClientContext> = ClientConfig::new()
            .set("bootstrap.servers", self.brokers())
            .create()
            .unwrap();
        let created = admin
            .create_topics(
                &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
                &AdminOptions::new().operation_timeout(Some(Duration::from_secs(10))),
            )
            .await
            .unwrap();
        for result in created {
            result.unwrap_or_else(|(t, e)| panic!("creating topic {t}: {e}"));
        }
    }

    /// Every record of `topic`'s `partitions`, from the beginning to the end of each partition
    /// (bounded: 60 s). The records asked for are acknowledged before, so they are all there.
    pub async fn read(&self, topic: &str, partitions: i32) -> Vec<Received> {
        let (brokers, topic) = (self.brokers(), topic.to_owned());
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = ClientConfig::new()
                .set("bootstrap.servers", &brokers)
                .set("group.id", format!("outbox-test-{}", uuid::Uuid::now_v7()))
                .set("enable.auto.commit", "false")
                .set("enable.partition.eof", "true")
                .create()
                .unwrap();
            let mut assignment = TopicPartitionList::new();
            for p in 0..partitions {
                assignment
                    .add_partition_offset(&topic, p, Offset::Beginning)
                    .unwrap();
            }
            consumer.assign(&assignment).unwrap();
            let mut received = Vec::new();
            let mut ended = HashSet::new();
            let started = Instant::now();
            while ended.len() < partitions as usize {
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "read {} records from {topic}, reached the end of partitions {ended:?} only",
                    received.len()
                );
                let Some(message) = consumer.poll(Duration::from_millis(200)) else {
                    continue;
                };
                let m = match message {
                    Err(rdkafka::error::KafkaError::PartitionEOF(p)) => {
                        ended.insert(p);
                        continue;
                    }
                    other => other.unwrap(),
                };
                let mut headers = BTreeMap::new();
                if let Some(h) = m.headers() {
                    for header in h.iter() {
                        headers.insert(
                            header.key.to_owned(),
                            String::from_utf8(header.value.unwrap_or_default().to_vec()).unwrap(),
                        );
                    }
                }
                received.push(Received {
                    partition: m.partition(),
                    key: String::from_utf8(m.key().unwrap_or_default().to_vec()).unwrap(),
                    value: m.payload().unwrap_or_default().to_vec(),
                    id: m.headers().and_then(outbox_transport_kafka::event_id),
                    headers,
                });
            }
            received
        })
        .await
        .unwrap()
    }
}

impl Drop for Broker {
    fn drop(&mut self) {
        self.kill();
        if let Some(dir) = &self.data {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// One record read back.
#[derive(Debug)]
pub struct Received {
    /// Its partition.
    pub partition: i32,
    /// Its key, as text.
    pub key: String,
    /// Its value.
    pub value: Vec<u8>,
    /// The event id its headers carry.
    pub id: Option<EventId>,
    /// Its headers, as text.
    pub headers: BTreeMap<String, String>,
}
