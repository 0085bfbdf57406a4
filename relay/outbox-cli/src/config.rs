//! The relay's TOML configuration, and building the router it describes.
//!
//! [`EXAMPLE`] is the documented format, every key with its default and range (printed by
//! `outbox config example` and shown by `outbox relay --help`).

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use outbox_core::OutboxEvent;
use outbox_router::{Pattern, Router, StdoutTransport, Syntax, Template};
use outbox_worker::{ClaimMode, WorkerConfig};

/// An example config with every key, its default and its range, and one route per transport.
pub const EXAMPLE: &str = include_str!("example.toml");
use serde::Deserialize;

/// The whole file.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// PostgreSQL URL (overridden by `--database-url` / `DATABASE_URL`).
    pub database_url: Option<String>,
    /// Schema of the outbox table.
    #[serde(default = "default_schema")]
    pub schema: String,
    /// The outbox table.
    #[serde(default = "default_table")]
    pub table: String,
    /// Delete events once acknowledged instead of keeping them as delivered.
    #[serde(default)]
    pub delete_delivered: bool,
    /// What happens to an ordering key whose head dies: `block` (parked) or `skip`.
    #[serde(default)]
    pub dead_head: outbox_core::DeadHead,
    /// Worker settings.
    #[serde(default)]
    pub relay: RelayConfig,
    /// The health and metrics endpoint.
    #[serde(default)]
    pub http: HttpConfig,
    /// Where events go, first match wins.
    #[serde(default)]
    pub routes: Vec<RouteConfig>,
}

fn default_schema() -> String {
    "public".into()
}
fn default_table() -> String {
    "outbox_event".into()
}

/// `[relay]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RelayConfig {
    /// Workers in this process.
    pub workers: usize,
    /// Events per claim.
    pub batch_size: usize,
    /// Deliveries at once, per worker.
    pub concurrency: usize,
    /// Poll interval in milliseconds.
    pub poll_interval_ms: u64,
    /// Lease length in seconds.
    pub lease_secs: u64,
    /// Per-delivery timeout in seconds.
    pub delivery_timeout_secs: u64,
    /// Time in-flight deliveries get on shutdown, in seconds.
    pub shutdown_grace_secs: u64,
    /// Retention of delivered events in hours; 0 keeps them.
    pub retention_hours: u64,
    /// How long start-up waits for the database and the brokers, in seconds, retrying with a
    /// log line per failed attempt; 0 tries each once.
    pub startup_timeout_secs: u64,
    /// How claimed events are held while delivered: `locked` or `lease`.
    pub claim: Claim,
    /// Backoff between attempts, and a cap on attempts.
    pub retry: RetryConfig,
    /// Where new events are read from: `claim` (the table) or `stream` (the write-ahead log).
    pub mode: Mode,
    /// The log-reading relay's settings (`mode = "stream"`).
    pub stream: StreamConfig,
}

/// `relay.mode`: how the relay finds new events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Workers claim due events from the table, woken by LISTEN/NOTIFY.
    #[default]
    Claim,
    /// One reader streams committed events from a logical replication slot, in commit order;
    /// workers deliver only what is handed to the table (retries, delayed events, paused
    /// types). Needs `wal_level = logical`; see docs/stream.md.
    Stream,
}

/// `[relay.stream]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StreamConfig {
    /// The logical replication slot read (created by `outbox migrate`).
    pub slot: String,
    /// How long an idle read waits for the first event, in milliseconds.
    pub poll_ms: u64,
    /// Events per read (whole transactions: a larger transaction is read whole).
    pub batch_size: usize,
}

impl Default for StreamConfig {
    fn default() -> Self {
        Self {
            slot: "outbox_relay".into(),
            poll_ms: 10,
            batch_size: 1000,
        }
    }
}

impl RelayConfig {
    /// The stream reader's settings: the workers' (timeouts, retry policy, concurrency) with the
    /// stream's batch size and poll interval, or an error naming the key.
    pub fn stream_worker_config(&self) -> Result<WorkerConfig, ConfigError> {
        let key = |k: &str, reason: &dyn std::fmt::Display| {
            ConfigError(format!("relay.stream.{k}: {reason}"))
        };
        outbox_postgres::validate_slot(&self.stream.slot).map_err(|e| key("slot", &e.reason()))?;
        if self.stream.poll_ms == 0 || self.stream.poll_ms > 60_000 {
            return Err(key("poll_ms", &"must be from 1 to 60000"));
        }
        if self.stream.batch_size == 0 || self.stream.batch_size > 100_000 {
            return Err(key("batch_size", &"must be from 1 to 100000"));
        }
        let mut config = self.worker_config()?;
        config.batch_size = self.stream.batch_size;
        config.poll_interval = Duration::from_millis(self.stream.poll_ms);
        Ok(config)
    }
}

/// `relay.claim`: how a worker holds the events it claims (see `outbox_worker::ClaimMode`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Claim {
    /// Row locks held by a transaction open while the batch is delivered; one write and one
    /// commit per batch. For deliveries that take milliseconds (brokers).
    #[default]
    Locked,
    /// A lease written to each event, renewed while deliveries run. For deliveries that can
    /// take seconds (webhooks to slow receivers): nothing is held open meanwhile.
    Lease,
}

impl From<Claim> for ClaimMode {
    fn from(claim: Claim) -> Self {
        match claim {
            Claim::Locked => ClaimMode::Locked,
            Claim::Lease => ClaimMode::Lease,
        }
    }
}

/// `[relay.retry]`: the backoff after a failed delivery, and an optional cap on attempts.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetryConfig {
    /// The first retry's delay in milliseconds.
    pub base_ms: u64,
    /// Each further retry waits this many times longer.
    pub factor: f64,
    /// The longest delay, in seconds.
    pub cap_secs: u64,
    /// `full`, `equal` or `none`.
    pub jitter: outbox_core::Jitter,
    /// At most this many attempts per event (fewer if the event allows fewer); unset leaves it
    /// to each event's own `max_attempts`.
    pub max_attempts: Option<u32>,
}

impl Default for RetryConfig {
    fn default() -> Self {
        Self {
            base_ms: 1000,
            factor: 2.0,
            cap_secs: 600,
            jitter: outbox_core::Jitter::Full,
            max_attempts: None,
        }
    }
}

/// `[routes.breaker]`: when a route's destination counts as down, and for how long its
/// deliveries are paused (no attempts spent meanwhile).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BreakerSettings {
    /// `false` turns the breaker off for this route.
    pub enabled: bool,
    /// Consecutive retryable failures (timeouts included) that pause the route.
    pub failures: u32,
    /// The first pause in milliseconds; it doubles while trials fail.
    pub pause_ms: u64,
    /// The longest pause in seconds.
    pub max_pause_secs: u64,
}

impl Default for BreakerSettings {
    fn default() -> Self {
        let d = outbox_router::BreakerConfig::default();
        Self {
            enabled: true,
            failures: d.failures,
            pause_ms: d.pause.as_millis() as u64,
            max_pause_secs: d.max_pause.as_secs(),
        }
    }
}

impl Default for RelayConfig {
    fn default() -> Self {
        Self {
            workers: 2,
            batch_size: 100,
            concurrency: 16,
            poll_interval_ms: 1000,
            lease_secs: 60,
            delivery_timeout_secs: 30,
            shutdown_grace_secs: 10,
            retention_hours: 168,
            startup_timeout_secs: 60,
            claim: Claim::default(),
            retry: RetryConfig::default(),
            mode: Mode::default(),
            stream: StreamConfig::default(),
        }
    }
}

/// Most workers one relay process runs.
pub const MAX_WORKERS: usize = 256;

/// Longest start-up wait.
pub const MAX_STARTUP_TIMEOUT: Duration = Duration::from_secs(3600);

impl RelayConfig {
    /// `startup_timeout_secs` as a duration, at most [`MAX_STARTUP_TIMEOUT`].
    pub fn startup_timeout(&self) -> Result<Duration, ConfigError> {
        let timeout = Duration::from_secs(self.startup_timeout_secs);
        if timeout > MAX_STARTUP_TIMEOUT {
            return Err(ConfigError(format!(
                "relay.startup_timeout_secs = {}: at most {}",
                self.startup_timeout_secs,
                MAX_STARTUP_TIMEOUT.as_secs()
            )));
        }
        Ok(timeout)
    }

    /// The worker settings these keys describe, or an error naming the first key that is out
    /// of range (`relay.shutdown_grace_secs: at most 1h`). Every conversion is checked, so no
    /// value can overflow into something else.
    pub fn worker_config(&self) -> Result<WorkerConfig, ConfigError> {
        let key =
            |k: &str, reason: &dyn std::fmt::Display| ConfigError(format!("relay.{k}: {reason}"));
        if self.workers == 0 || self.workers > MAX_WORKERS {
            return Err(key("workers", &format!("must be from 1 to {MAX_WORKERS}")));
        }
        let retention = match self.retention_hours {
            0 => None,
            h => Some(Duration::from_secs(
                h.checked_mul(3600)
                    .ok_or_else(|| key("retention_hours", &"far too large"))?,
            )),
        };
        let r = &self.retry;
        let retry = outbox_core::RetryPolicy::builder()
            .base(Duration::from_millis(r.base_ms))
            .factor(r.factor)
            .cap(Duration::from_secs(r.cap_secs))
            .jitter(r.jitter)
            .build()
            .map_err(|e| {
                let name = match e.field() {
                    "base" => "base_ms",
                    "cap" => "cap_secs",
                    other => other,
                };
                key(&format!("retry.{name}"), &e.reason())
            })?;
        if r.max_attempts == Some(0) {
            return Err(key("retry.max_attempts", &"must be at least 1"));
        }
        if r.cap_secs > 30 * 24 * 3600 {
            return Err(key("retry.cap_secs", &"at most 30 days"));
        }
        let config = WorkerConfig {
            retry,
            max_attempts: r.max_attempts,
            batch_size: self.batch_size,
            concurrency: self.concurrency,
            poll_interval: Duration::from_millis(self.poll_interval_ms),
            lease: Duration::from_secs(self.lease_secs),
            delivery_timeout: Duration::from_secs(self.delivery_timeout_secs),
            shutdown_grace: Duration::from_secs(self.shutdown_grace_secs),
            retention,
            claim_mode: self.claim.into(),
            ..WorkerConfig::default()
        };
        config.validate().map_err(|e| {
            let name = match e.field() {
                "poll_interval" => "poll_interval_ms",
                "lease" => "lease_secs",
                "delivery_timeout" => "delivery_timeout_secs",
                "shutdown_grace" => "shutdown_grace_secs",
                "retention" => "retention_hours",
                other => other,
            };
            key(name, &e.reason())
        })?;
        Ok(config)
    }
}

/// `[http]`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address for `/healthz`, `/readyz` and `/metrics`; none when unset.
    pub listen: Option<String>,
    /// Also serve the web admin under `/admin` there (default `false`); credentials come from
    /// `OUTBOX_ADMIN_TOKEN`, or `OUTBOX_ADMIN_USER` and `OUTBOX_ADMIN_PASSWORD` (read-only
    /// without them).
    #[serde(default)]
    pub admin: bool,
}

/// One `[[routes]]` entry: a pattern and a transport.
#[derive(Debug, Clone, Deserialize)]
pub struct RouteConfig {
    /// `file.stored`, `file.*` or `*`.
    pub pattern: String,
    /// The route's circuit breaker.
    #[serde(default)]
    pub breaker: BreakerSettings,
    /// The transport and its settings.
    #[serde(flatten)]
    pub transport: TransportConfig,
}

/// The transports a route can use.
#[derive(Debug, Clone, Deserialize)]
#[serde(tag = "transport", rename_all = "lowercase", deny_unknown_fields)]
pub enum TransportConfig {
    /// One JSON line per event on standard output.
    Stdout,
    /// NATS JetStream.
    Nats {
        /// Server URL.
        url: String,
        /// Subject template, e.g. `events.{event_type}`.
        subject: String,
    },
    /// RabbitMQ.
    Amqp {
        /// Broker URI.
        url: String,
        /// Exchange (`""` for the default exchange).
        exchange: String,
        /// Routing key template, e.g. `{event_type}`.
        routing_key: String,
    },
    /// Redis Streams.
    Redis {
        /// Server URL.
        url: String,
        /// Stream key template, e.g. `events:{event_type}`.
        stream: String,
        /// Approximate maximum stream length.
        max_len: Option<u64>,
    },
    /// Kafka, through an idempotent producer (`acks=all`).
    Kafka {
        /// Bootstrap brokers, `host:port[,host:port…]`.
        brokers: String,
        /// Topic template (`{event_type}`, `{aggregate_type}`); default
        /// `outbox.event.{aggregate_type}`, Debezium's route.
        topic: Option<String>,
        /// What the message key is: `ordering_key` (the event's ordering key, else its
        /// aggregate id; the default) or `aggregate_id` (the default under `shape = "debezium"`).
        key: Option<KafkaKey>,
        /// The wire layout: `native` (default) or `debezium` (what Debezium's outbox event
        /// router produces).
        #[serde(default)]
        shape: KafkaShape,
        /// Under `shape = "debezium"`: the value is the payload itself, as with the router's
        /// `table.expand.json.payload = true` (default `false`: the payload's text as a string).
        #[serde(default)]
        expand_payload: bool,
        /// librdkafka producer properties passed through: `compression.type`, `linger.ms`,
        /// `security.protocol`, `sasl.mechanism`, `sasl.username`, `ssl.ca.location`, …
        #[serde(default)]
        properties: std::collections::BTreeMap<String, String>,
        /// Properties whose values are read from environment variables, e.g.
        /// `sasl.password = "KAFKA_PASSWORD"`: secrets stay out of the file.
        #[serde(default)]
        properties_env: std::collections::BTreeMap<String, String>,
    },
    /// HTTP webhook.
    Webhook {
        /// Endpoint.
        url: String,
        /// HMAC secret (or `secret_env`, the name of a variable holding it).
        secret: Option<String>,
        /// Environment variable holding the secret.
        secret_env: Option<String>,
        /// Total timeout in seconds.
        timeout_secs: Option<u64>,
    },
}

/// `key` of a Kafka route.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum KafkaKey {
    /// The ordering key, else the aggregate id.
    OrderingKey,
    /// The aggregate id.
    AggregateId,
}

/// `shape` of a Kafka route.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum KafkaShape {
    /// Payload as value, `outbox-*` headers.
    #[default]
    Native,
    /// Debezium's outbox event router's key, value and `id` header.
    Debezium,
}

/// A configuration problem, naming where it is.
#[derive(Debug)]
pub struct ConfigError(pub String);

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for ConfigError {}

impl Config {
    /// Advice when batches are held under locked claims while a route delivers to webhooks:
    /// a receiver that takes seconds keeps each worker's transaction open as long, and
    /// `claim = "lease"` holds nothing open meanwhile. `None` when there is nothing to say.
    pub fn claim_advice(&self) -> Option<String> {
        if self.relay.claim != Claim::Locked {
            return None;
        }
        let webhooks: Vec<&str> = self
            .routes
            .iter()
            .filter(|r| matches!(r.transport, TransportConfig::Webhook { .. }))
            .map(|r| r.pattern.as_str())
            .collect();
        (!webhooks.is_empty()).then(|| {
            format!(
                "relay.claim is \"locked\" and route(s) {} deliver to webhooks: while a receiver \
                 answers slowly each worker keeps a database transaction open for its whole batch; \
                 set claim = \"lease\" if receivers can take seconds",
                webhooks.join(", ")
            )
        })
    }

    /// Reads and parses a file.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigError(format!("cannot read {}: {e}", path.display())))?;
        toml::from_str(&text).map_err(|e| ConfigError(format!("{}: {e}", path.display())))
    }
}

/// Picks a destination (subject, routing key, stream) for an event.
type DestinationFn = Arc<dyn Fn(&OutboxEvent) -> String + Send + Sync>;

/// A route's destination template, escaping event values for the transport's `syntax`.
fn template(
    route: usize,
    field: &str,
    text: &str,
    syntax: Syntax,
) -> Result<DestinationFn, ConfigError> {
    let t = Template::parse(text)
        .map_err(|e| ConfigError(format!("routes[{route}].{field}: {e}")))?
        .syntax(syntax);
    Ok(Arc::new(move |e: &OutboxEvent| t.render(e)))
}

/// The route's destination template (subject, routing key, stream), escaping event values for
/// its transport; `None` for transports without one.
fn destination(
    i: usize,
    transport: &TransportConfig,
) -> Result<Option<DestinationFn>, ConfigError> {
    Ok(Some(match transport {
        TransportConfig::Nats { subject, .. } => {
            template(i, "subject", subject, Syntax::NatsSubject)?
        }
        TransportConfig::Amqp { routing_key, .. } => {
            template(i, "routing_key", routing_key, Syntax::AmqpRoutingKey)?
        }
        TransportConfig::Redis { stream, .. } => template(i, "stream", stream, Syntax::RedisKey)?,
        TransportConfig::Kafka { topic, .. } => {
            let text = topic
                .as_deref()
                .unwrap_or(outbox_transport_kafka::DEFAULT_TOPIC);
            // Topics are few and long-lived: per-aggregate data belongs in the key.
            for per_event in ["{aggregate_id}", "{id}"] {
                if text.contains(per_event) {
                    return Err(ConfigError(format!(
                        "routes[{i}].topic: {per_event} would make a topic per aggregate or event; \
                         the aggregate goes in the message key (see `key`)"
                    )));
                }
            }
            template(i, "topic", text, Syntax::Plain)?
        }
        TransportConfig::Stdout | TransportConfig::Webhook { .. } => return Ok(None),
    }))
}

/// The Kafka producer a route describes. Its message timeout stays under the worker's delivery
/// timeout, so a message is never still queued in the producer when its delivery is given up.
fn kafka_transport(
    i: usize,
    transport: &TransportConfig,
    topic: DestinationFn,
    delivery_timeout: Duration,
) -> Result<outbox_transport_kafka::KafkaTransport, ConfigError> {
    let TransportConfig::Kafka {
        brokers,
        key,
        shape,
        expand_payload,
        properties,
        properties_env,
        ..
    } = transport
    else {
        return Err(ConfigError(format!("routes[{i}]: not a Kafka route")));
    };
    use outbox_transport_kafka::{KafkaTransport, KeyFrom, Shape};
    let mut b = KafkaTransport::builder(brokers.clone())
        .topic(topic)
        .shape(match shape {
            KafkaShape::Native if *expand_payload => {
                return Err(ConfigError(format!(
                    "routes[{i}].expand_payload: only means something with shape = \"debezium\""
                )));
            }
            KafkaShape::Native => Shape::Native,
            KafkaShape::Debezium => Shape::Debezium {
                expand_payload: *expand_payload,
            },
        })
        .message_timeout(
            delivery_timeout
                .saturating_sub(delivery_timeout / 10)
                .max(Duration::from_millis(1)),
        );
    if let Some(key) = key {
        b = b.key(match key {
            KafkaKey::OrderingKey => KeyFrom::OrderingKey,
            KafkaKey::AggregateId => KeyFrom::AggregateId,
        });
    }
    for (name, value) in properties {
        b = b.property(name, value);
    }
    for (name, var) in properties_env {
        if properties.contains_key(name) {
            return Err(ConfigError(format!(
                "routes[{i}].properties_env.{name}: also set in routes[{i}].properties"
            )));
        }
        let value = std::env::var(var).map_err(|_| {
            ConfigError(format!(
                "routes[{i}].properties_env.{name}: variable {var} is not set"
            ))
        })?;
        b = b.property(name, value);
    }
    b.build()
        .map_err(|e| ConfigError(format!("routes[{i}]: Kafka: {e}")))
}

/// Connects every route's transport and builds the router. `*` becomes the default route.
/// Brokers are connected through `startup`: retried, each failure logged, until its deadline.
pub async fn build_router(
    routes: &[RouteConfig],
    startup: &crate::startup::Startup,
    delivery_timeout: Duration,
) -> Result<Router, ConfigError> {
    if routes.is_empty() {
        return Err(ConfigError(
            "no [[routes]]: every event would fail; add at least one".into(),
        ));
    }
    let mut builder = Router::builder();
    for (i, route) in routes.iter().enumerate() {
        let pattern = Pattern::parse(&route.pattern)
            .map_err(|e| ConfigError(format!("routes[{i}].pattern: {e}")))?;
        let connect_error = |what: &str, e: &dyn std::fmt::Display| {
            ConfigError(format!("routes[{i}]: {what}: {e}"))
        };
        let destination = || {
            destination(i, &route.transport)?
                .ok_or_else(|| ConfigError(format!("routes[{i}]: no destination template")))
        };
        let transport: Box<dyn outbox_core::Transport> = match &route.transport {
            TransportConfig::Stdout => Box::new(StdoutTransport::new()),
            TransportConfig::Nats { url, .. } => {
                let client = startup
                    .retry(&format!("routes[{i}]: NATS"), || {
                        outbox_transport_nats_connect(url)
                    })
                    .await
                    .map_err(ConfigError)?;
                Box::new(outbox_transport_nats::NatsTransport::new(
                    client,
                    destination()?,
                ))
            }
            TransportConfig::Amqp { url, exchange, .. } => {
                Box::new(outbox_transport_amqp::AmqpTransport::with_routing_key(
                    url.clone(),
                    exchange.clone(),
                    destination()?,
                ))
            }
            TransportConfig::Redis { url, max_len, .. } => {
                let client = startup
                    .retry(&format!("routes[{i}]: Redis"), || redis_connect(url))
                    .await
                    .map_err(ConfigError)?;
                let mut t = outbox_transport_redis::RedisTransport::new(client, destination()?);
                if let Some(n) = max_len {
                    t = t.with_max_len(*n);
                }
                Box::new(t)
            }
            TransportConfig::Kafka { .. } => Box::new(kafka_transport(
                i,
                &route.transport,
                destination()?,
                delivery_timeout,
            )?),
            TransportConfig::Webhook {
                url,
                secret,
                secret_env,
                timeout_secs,
            } => {
                let mut b = outbox_transport_webhook::WebhookTransport::builder(url.clone());
                let secret = match (secret, secret_env) {
                    (Some(s), _) => Some(s.clone()),
                    (None, Some(var)) => Some(std::env::var(var).map_err(|_| {
                        ConfigError(format!("routes[{i}].secret_env: variable {var} is not set"))
                    })?),
                    (None, None) => None,
                };
                if let Some(s) = secret {
                    b = b.secret(s.into_bytes());
                }
                if let Some(t) = timeout_secs {
                    b = b.timeout(Duration::from_secs(*t));
                }
                Box::new(b.build().map_err(|e| connect_error("webhook", &e))?)
            }
        };
        let b = &route.breaker;
        let transport: Box<dyn outbox_core::Transport> = if b.enabled {
            let config = outbox_router::BreakerConfig {
                failures: b.failures,
                pause: Duration::from_millis(b.pause_ms),
                max_pause: Duration::from_secs(b.max_pause_secs),
                // A little under the worker's timeout, so the breaker sees a hang first.
                timeout: Some(delivery_timeout.mul_f64(0.95)),
            };
            let guarded = outbox_router::Breaker::new(route.pattern.clone(), transport, config)
                .map_err(|e| {
                    let name = match e.field() {
                        "pause" => "pause_ms",
                        "max_pause" => "max_pause_secs",
                        other => other,
                    };
                    ConfigError(format!("routes[{i}].breaker.{name}: {}", e.reason()))
                })?;
            Box::new(guarded)
        } else {
            transport
        };
        builder = if pattern == Pattern::Any {
            builder.default_route(transport)
        } else {
            builder.route(pattern, transport)
        };
    }
    Ok(builder.build())
}

async fn outbox_transport_nats_connect(url: &str) -> Result<outbox_transport_nats::Client, String> {
    outbox_transport_nats::connect_client(url)
        .await
        .map_err(|e| e.to_string())
}

async fn redis_connect(url: &str) -> Result<outbox_transport_redis::ConnectionManager, String> {
    outbox_transport_redis::connect_manager(url)
        .await
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn relay(toml: &str) -> RelayConfig {
        let config: Config = toml::from_str(&format!("[relay]\n{toml}")).expect("parses");
        config.relay
    }

    fn refused(toml: &str) -> String {
        match relay(toml).worker_config() {
            Ok(c) => panic!("{toml} was accepted: {c:?}"),
            Err(e) => e.0,
        }
    }

    #[test]
    fn stream_settings_are_checked_with_the_key_named() {
        let refused = |toml: &str| match relay(toml).stream_worker_config() {
            Ok(c) => panic!("{toml} was accepted: {c:?}"),
            Err(e) => e.0,
        };
        assert!(
            refused("[relay.stream]\nslot = \"Outbox-Relay\"").starts_with("relay.stream.slot:")
        );
        assert!(refused("[relay.stream]\npoll_ms = 0").starts_with("relay.stream.poll_ms:"));
        assert!(refused("[relay.stream]\nbatch_size = 0").starts_with("relay.stream.batch_size:"));
        let ok = relay("mode = \"stream\"\n[relay.stream]\npoll_ms = 5\nbatch_size = 500")
            .stream_worker_config()
            .unwrap();
        assert_eq!(
            (ok.batch_size, ok.poll_interval),
            (500, Duration::from_millis(5))
        );
        assert_eq!(relay("").mode, Mode::Claim);
    }

    #[test]
    fn the_example_is_a_valid_config() {
        let config: Config = toml::from_str(EXAMPLE).expect("the example parses");
        config.relay.worker_config().expect("valid settings");
        assert_eq!(config.routes.len(), 6);
    }

    /// Each transport's template escapes event values for its destination syntax: an aggregate
    /// id `x.other` stays one token of a NATS subject or AMQP routing key (it used to be
    /// inserted verbatim and landed on `events.x.other`), and `a:b` one part of a Redis key.
    #[test]
    fn route_templates_escape_values_for_their_transport() {
        let config: Config = toml::from_str(
            r#"
            [[routes]]
            pattern = "a"
            transport = "nats"
            url = "nats://127.0.0.1:4222"
            subject = "events.{aggregate_id}"
            [[routes]]
            pattern = "b"
            transport = "amqp"
            url = "amqp://127.0.0.1:5672"
            exchange = "x"
            routing_key = "{aggregate_type}.{aggregate_id}"
            [[routes]]
            pattern = "c"
            transport = "redis"
            url = "redis://127.0.0.1:6379"
            stream = "events:{aggregate_id}"
            [[routes]]
            pattern = "*"
            transport = "stdout"
            "#,
        )
        .expect("parses");
        let event = |id: &str| {
            outbox_core::NewEvent::builder("t", "order", id)
                .build()
                .expect("valid")
                .into_event(outbox_core::EventId::new(), chrono::Utc::now(), 3)
        };
        let render = |i: usize, id: &str| {
            destination(i, &config.routes[i].transport)
                .expect("valid")
                .map(|d| d(&event(id)))
        };
        assert_eq!(render(0, "x.other").as_deref(), Some("events.x%2Eother"));
        assert_eq!(render(0, "x*").as_deref(), Some("events.x%2A"));
        assert_eq!(render(1, "x.#").as_deref(), Some("order.x%2E%23"));
        assert_eq!(render(2, "a:b").as_deref(), Some("events:a%3Ab"));
        assert_eq!(render(3, "x"), None);
    }

    /// `[relay.retry]` reaches the worker: backoff and the attempt cap.
    #[test]
    fn retry_settings_reach_the_worker() {
        let c = relay("[relay.retry]\nbase_ms = 250\nfactor = 3.0\ncap_secs = 60\njitter = \"none\"\nmax_attempts = 4")
            .worker_config()
            .expect("valid");
        assert_eq!(c.max_attempts, Some(4));
        assert_eq!(c.retry.raw_delay(1), Duration::from_millis(250));
        assert_eq!(c.retry.raw_delay(2), Duration::from_millis(750));
        assert_eq!(c.retry.cap(), Duration::from_secs(60));
        assert_eq!(c.retry.jitter(), outbox_core::Jitter::None);
    }

    /// A route's breaker settings are checked with the key named.
    #[tokio::test]
    async fn breaker_settings_are_checked() {
        let startup = crate::startup::Startup::within(Duration::ZERO);
        for (breaker, key) in [
            ("failures = 0", "routes[0].breaker.failures"),
            ("pause_ms = 0", "routes[0].breaker.pause_ms"),
            (
                "max_pause_secs = 100000",
                "routes[0].breaker.max_pause_secs",
            ),
        ] {
            let config: Config = toml::from_str(&format!(
                "[[routes]]\npattern = \"*\"\ntransport = \"stdout\"\n[routes.breaker]\n{breaker}\n"
            ))
            .expect("parses");
            let error = build_router(&config.routes, &startup, Duration::from_secs(30))
                .await
                .unwrap_err()
                .0;
            assert!(error.starts_with(key), "{breaker}: {error}");
        }
        let config: Config = toml::from_str(
            "[[routes]]\npattern = \"*\"\ntransport = \"stdout\"\n[routes.breaker]\nenabled = false\n",
        )
        .expect("parses");
        assert!(
            build_router(&config.routes, &startup, Duration::from_secs(30))
                .await
                .is_ok()
        );
    }

    /// A Kafka route builds its producer from the file; every mistake names its key, and a
    /// property the guarantees depend on cannot be overridden.
    #[tokio::test]
    async fn kafka_routes_are_checked_with_the_key_named() {
        let startup = crate::startup::Startup::within(Duration::ZERO);
        let route = |extra: &str| {
            format!(
                "[[routes]]\npattern = \"*\"\ntransport = \"kafka\"\nbrokers = \"127.0.0.1:1\"\n{extra}\n"
            )
        };
        let build = |text: String| async move {
            let config: Config = toml::from_str(&text).expect("parses");
            build_router(&config.routes, &startup, Duration::from_secs(30))
                .await
                .map(drop)
                .map_err(|e| e.0)
        };
        build(route("")).await.expect("the defaults are valid");
        build(route(
            "shape = \"debezium\"\nexpand_payload = true\nkey = \"ordering_key\"\nproperties = { \"linger.ms\" = \"2\" }",
        ))
        .await
        .expect("valid");
        for (extra, names) in [
            ("topic = \"t.{aggregate_id}\"", "routes[0].topic"),
            ("topic = \"t.{nope}\"", "routes[0].topic"),
            ("expand_payload = true", "routes[0].expand_payload"),
            ("properties = { acks = \"1\" }", "acks"),
            ("properties = { \"no.such\" = \"1\" }", "no.such"),
            (
                "properties_env = { \"sasl.password\" = \"OUTBOX_TEST_UNSET_VARIABLE\" }",
                "OUTBOX_TEST_UNSET_VARIABLE",
            ),
        ] {
            let error = build(route(extra)).await.expect_err(extra);
            assert!(error.contains(names), "{extra}: {error}");
        }
        let error = toml::from_str::<Config>(&route("key = \"partition\""))
            .expect_err("an unknown key is refused")
            .to_string();
        assert!(error.contains("aggregate_id"), "{error}");
    }

    #[test]
    fn defaults_make_a_valid_worker() {
        let c = RelayConfig::default().worker_config().expect("valid");
        assert_eq!(c.retention, Some(Duration::from_secs(168 * 3600)));
        assert_eq!(c.claim_mode, ClaimMode::Locked);
    }

    #[test]
    fn locked_claims_with_webhooks_come_with_advice() {
        let webhook = "[[routes]]\npattern = \"billing.*\"\ntransport = \"webhook\"\nurl = \"http://127.0.0.1:1/\"\n";
        let parse = |text: &str| toml::from_str::<Config>(text).expect("parses");
        let advice = parse(webhook)
            .claim_advice()
            .expect("locked by default: advice");
        assert!(
            advice.contains("billing.*") && advice.contains("lease"),
            "{advice}"
        );
        let leased = parse(&format!("[relay]\nclaim = \"lease\"\n{webhook}"));
        assert_eq!(leased.claim_advice(), None);
        let brokers = parse("[[routes]]\npattern = \"*\"\ntransport = \"stdout\"\n");
        assert_eq!(brokers.claim_advice(), None);
    }

    #[test]
    fn the_claim_mode_is_chosen_by_name() {
        let lease = relay("claim = \"lease\"").worker_config().expect("valid");
        assert_eq!(lease.claim_mode, ClaimMode::Lease);
        let locked = relay("claim = \"locked\"").worker_config().expect("valid");
        assert_eq!(locked.claim_mode, ClaimMode::Locked);
        let error = toml::from_str::<Config>("[relay]\nclaim = \"borrowed\"")
            .expect_err("an unknown mode is refused")
            .to_string();
        assert!(
            error.contains("claim") && error.contains("locked"),
            "{error}"
        );
    }

    #[test]
    fn every_setting_is_bounded_and_named() {
        let max = u64::MAX;
        for (toml, key) in [
            (
                format!("shutdown_grace_secs = {}", i64::MAX),
                "relay.shutdown_grace_secs",
            ),
            (
                "retention_hours = 10000000000".to_owned(),
                "relay.retention_hours",
            ),
            (
                format!("retention_hours = {}", i64::MAX),
                "relay.retention_hours",
            ),
            ("lease_secs = 1000000000".to_owned(), "relay.lease_secs"),
            ("workers = 100000000000".to_owned(), "relay.workers"),
            ("workers = 0".to_owned(), "relay.workers"),
            (
                "poll_interval_ms = 100000000000".to_owned(),
                "relay.poll_interval_ms",
            ),
            ("batch_size = 100000000000".to_owned(), "relay.batch_size"),
            ("concurrency = 0".to_owned(), "relay.concurrency"),
            (
                "[relay.retry]\nfactor = 0.5".to_owned(),
                "relay.retry.factor",
            ),
            (
                "[relay.retry]\nbase_ms = 5000\ncap_secs = 1".to_owned(),
                "relay.retry.cap_secs",
            ),
            (
                "[relay.retry]\nmax_attempts = 0".to_owned(),
                "relay.retry.max_attempts",
            ),
            (
                "[relay.retry]\ncap_secs = 100000000".to_owned(),
                "relay.retry.cap_secs",
            ),
        ] {
            let error = refused(&toml);
            assert!(error.starts_with(key), "{toml}: {error} ({max})");
        }
    }
}
