//! Delivers outbox events to RabbitMQ (AMQP 0-9-1) with publisher confirms.
//!
//! Each event is published to one exchange with a routing key derived from it (by default the
//! event type), **persistent** (delivery mode 2) and **mandatory**, and the transport waits for
//! the broker's confirm: `Ok` means the broker routed and took responsibility for it.
//!
//! What the consumer receives: the event's JSON payload as the body
//! (`content-type: application/json`), the event id as the AMQP `message_id`, and headers
//! `outbox-event-type`, `outbox-aggregate-type`, `outbox-aggregate-id`, `outbox-created-at`
//! (RFC 3339), `outbox-ordering-key` (when set) plus every header of the event under its own
//! name (trace context, correlation id).
//!
//! Delivery is at least once and RabbitMQ does not de-duplicate: consumers de-duplicate by
//! `message_id`.
//!
//! Failures: a message no queue is bound to receive comes back (mandatory) and is a permanent
//! error naming the exchange and routing key — never a silent drop. A broker nack, a lost or
//! refused connection, or a closed channel is retryable; the connection is re-established on the
//! next delivery.
//!
//! ```no_run
//! use outbox_transport_amqp::AmqpTransport;
//! let transport = AmqpTransport::new("amqp://guest:guest@127.0.0.1:5672/%2f", "events");
//! // Worker::builder(store, transport)… publishes `file.stored` to exchange `events`, key `file.stored`.
//! ```

use std::sync::Arc;

use async_trait::async_trait;
use lapin::Confirmation;
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use outbox_core::{DeliveryError, OutboxEvent, Transport};
use tokio::sync::Mutex;

/// Maps an event to its routing key.
pub type RoutingKeyFn = Arc<dyn Fn(&OutboxEvent) -> String + Send + Sync>;

/// Publishes events to one exchange with publisher confirms, reconnecting as needed.
#[derive(Clone)]
pub struct AmqpTransport {
    uri: String,
    exchange: String,
    routing_key: RoutingKeyFn,
    channel: Arc<Mutex<Option<(Connection, Channel)>>>,
}

impl std::fmt::Debug for AmqpTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpTransport")
            .field("exchange", &self.exchange)
            .finish_non_exhaustive()
    }
}

impl AmqpTransport {
    /// Publishes to `exchange` at `uri` with the event type as routing key. Connects on the
    /// first delivery.
    pub fn new(uri: impl Into<String>, exchange: impl Into<String>) -> Self {
        Self::with_routing_key(
            uri,
            exchange,
            Arc::new(|e: &OutboxEvent| e.event_type.clone()),
        )
    }

    /// Publishes to `exchange` with the routing key `routing_key` picks for each event.
    pub fn with_routing_key(
        uri: impl Into<String>,
        exchange: impl Into<String>,
        routing_key: RoutingKeyFn,
    ) -> Self {
        Self {
            uri: uri.into(),
            exchange: exchange.into(),
            routing_key,
            channel: Arc::new(Mutex::new(None)),
        }
    }

    /// A confirm-mode channel, connecting first if there is none or the last one broke.
    async fn channel(&self) -> Result<Channel, DeliveryError> {
        let mut slot = self.channel.lock().await;
        if let Some((connection, channel)) = slot.as_ref()
            && connection.status().connected()
            && channel.status().connected()
        {
            return Ok(channel.clone());
        }
        *slot = None;
        let unavailable = |e: lapin::Error| {
            DeliveryError::retryable("cannot reach the AMQP broker").with_source(e)
        };
        let connection = Connection::connect(&self.uri, ConnectionProperties::default())
            .await
            .map_err(unavailable)?;
        let channel = connection.create_channel().await.map_err(unavailable)?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(unavailable)?;
        *slot = Some((connection, channel.clone()));
        Ok(channel)
    }

    async fn forget_channel(&self) {
        *self.channel.lock().await = None;
    }
}

/// The AMQP properties sent with `event`.
pub fn properties_for(event: &OutboxEvent) -> BasicProperties {
    let mut headers = FieldTable::default();
    let mut put = |name: &str, value: &str| {
        headers.insert(name.into(), AMQPValue::LongString(value.into()));
    };
    for (name, value) in &event.headers {
        put(name, value);
    }
    put("outbox-event-type", &event.event_type);
    put("outbox-aggregate-type", &event.aggregate_type);
    put("outbox-aggregate-id", &event.aggregate_id);
    put("outbox-created-at", &event.created_at.to_rfc3339());
    if let Some(key) = &event.ordering_key {
        put("outbox-ordering-key", key);
    }
    BasicProperties::default()
        .with_message_id(event.id.to_string().into())
        .with_content_type("application/json".into())
        .with_delivery_mode(2)
        .with_headers(headers)
}

/// The id of the event a received message carries (its AMQP `message-id` property), for the
/// consumer's de-duplication (the `outbox-inbox` crate). `None` if the message did not come
/// from this transport.
pub fn event_id(properties: &BasicProperties) -> Option<outbox_core::EventId> {
    properties.message_id().as_ref()?.as_str().parse().ok()
}

#[async_trait]
impl Transport for AmqpTransport {
    async fn deliver(&self, event: &OutboxEvent) -> Result<(), DeliveryError> {
        let routing_key = (self.routing_key)(event);
        let payload = serde_json::to_vec(&event.payload)
            .map_err(|e| DeliveryError::permanent("payload is not serializable").with_source(e))?;
        let channel = self.channel().await?;
        let options = BasicPublishOptions {
            mandatory: true,
            ..BasicPublishOptions::default()
        };
        let published = channel
            .basic_publish(
                self.exchange.as_str().into(),
                routing_key.as_str().into(),
                options,
                &payload,
                properties_for(event),
            )
            .await;
        let confirm = match published {
            Ok(confirm) => confirm.await,
            Err(e) => Err(e),
        };
        match confirm {
            Ok(Confirmation::Ack(None)) => Ok(()),
            Ok(Confirmation::Ack(Some(_returned))) => Err(DeliveryError::permanent(format!(
                "no queue is bound for routing key {routing_key:?} on exchange {:?}",
                self.exchange
            ))),
            Ok(Confirmation::Nack(_)) => Err(DeliveryError::retryable(format!(
                "the broker refused the message for {routing_key:?}"
            ))),
            Ok(Confirmation::NotRequested) => {
                self.forget_channel().await;
                Err(DeliveryError::retryable(
                    "the channel was not in confirm mode",
                ))
            }
            Err(e) => {
                self.forget_channel().await;
                Err(
                    DeliveryError::retryable(format!("publishing {routing_key:?} failed"))
                        .with_source(e),
                )
            }
        }
    }
}

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

#[cfg(test)]
mod event_id_tests {
    use super::{event_id, properties_for};
    use outbox_core::NewEvent;

    #[test]
    fn a_received_message_gives_back_its_event_id() {
        let event = NewEvent::builder("file.stored", "upload", "1")
            .build()
            .unwrap()
            .into_event(outbox_core::EventId::new(), chrono::Utc::now(), 3);
        assert_eq!(event_id(&properties_for(&event)), Some(event.id));
        assert_eq!(event_id(&lapin::BasicProperties::default()), None);
    }
}
