//! Routing for the outbox: send each event to the transport its type selects.
//!
//! - [`Router`] is itself a [`Transport`]: a table of event-type [`Pattern`]s (`file.stored`,
//!   `file.*`, `*`) to transports, first match wins, with an optional default. An event no route
//!   matches is a **permanent** error naming its type, so it goes `dead` visibly instead of
//!   being dropped.
//! - [`Template`] renders destinations such as `events.{event_type}` or
//!   `{aggregate_type}.{aggregate_id}` from an event, for transports that take a subject,
//!   routing key or stream per event, with each value escaped for the destination's
//!   [`Syntax`] so that it cannot reach another subject, key or stream.
//! - [`StdoutTransport`] prints one JSON line per event, for local runs.
//! - [`Breaker`] pauses a destination that keeps failing: its events are given back untried,
//!   spending no attempts, until a trial delivery succeeds.
//!
//! ```
//! use outbox_router::{Pattern, Router, StdoutTransport};
//! use outbox_memory::RecordingTransport;
//!
//! let files = RecordingTransport::new();
//! let router = Router::builder()
//!     .route(Pattern::parse("file.*")?, files.clone())
//!     .default_route(StdoutTransport::new())
//!     .build();
//! # Ok::<(), outbox_core::ValidationError>(())
//! ```

mod breaker;
mod pattern;
mod stdout;
mod template;

use std::sync::Arc;

use async_trait::async_trait;
use outbox_core::{DeliveryError, OutboxEvent, Transport};

pub use breaker::{Breaker, BreakerConfig, PAUSED, PAUSED_PREFIX, PAUSES};
pub use pattern::Pattern;
pub use stdout::StdoutTransport;
pub use template::{Syntax, Template};

/// Sends each event to the first route whose pattern matches its type.
#[derive(Clone)]
pub struct Router {
    routes: Arc<[(Pattern, Arc<dyn Transport>)]>,
    default: Option<Arc<dyn Transport>>,
}

impl std::fmt::Debug for Router {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let patterns: Vec<&Pattern> = self.routes.iter().map(|(p, _)| p).collect();
        f.debug_struct("Router")
            .field("routes", &patterns)
            .field("default", &self.default.is_some())
            .finish()
    }
}

/// Builds a [`Router`]; start with [`Router::builder`].
#[derive(Default)]
#[must_use = "call build() to get the router"]
pub struct RouterBuilder {
    routes: Vec<(Pattern, Arc<dyn Transport>)>,
    default: Option<Arc<dyn Transport>>,
}

impl RouterBuilder {
    /// Adds a route; routes are tried in the order added.
    pub fn route(mut self, pattern: Pattern, transport: impl Transport + 'static) -> Self {
        self.routes.push((pattern, Arc::new(transport)));
        self
    }

    /// Where events no route matches go (otherwise they fail permanently).
    pub fn default_route(mut self, transport: impl Transport + 'static) -> Self {
        self.default = Some(Arc::new(transport));
        self
    }

    /// The router.
    pub fn build(self) -> Router {
        Router {
            routes: self.routes.into(),
            default: self.default,
        }
    }
}

impl Router {
    /// Starts an empty routing table.
    pub fn builder() -> RouterBuilder {
        <RouterBuilder as Default>::default()
    }

    /// The transport `event_type` goes to, if any.
    pub fn transport_for(&self, event_type: &str) -> Option<&Arc<dyn Transport>> {
        self.routes
            .iter()
            .find(|(p, _)| p.matches(event_type))
            .map(|(_, t)| t)
            .or(self.default.as_ref())
    }
}

#[async_trait]
impl Transport for Router {
    async fn deliver(&self, event: &OutboxEvent) -> Result<(), DeliveryError> {
        match self.transport_for(&event.event_type) {
            Some(transport) => transport.deliver(event).await,
            None => Err(DeliveryError::permanent(format!(
                "no route for event type {:?} and no default route",
                event.event_type
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use outbox_core::{EventId, NewEvent};
    use outbox_memory::RecordingTransport;

    fn event(t: &str) -> OutboxEvent {
        NewEvent::builder(t, "a", "1").build().unwrap().into_event(
            EventId::new(),
            chrono::Utc::now(),
            3,
        )
    }

    #[tokio::test]
    async fn first_matching_route_wins_then_the_default() {
        let (exact, files, rest) = (
            RecordingTransport::new(),
            RecordingTransport::new(),
            RecordingTransport::new(),
        );
        let router = Router::builder()
            .route(Pattern::parse("file.deleted").unwrap(), exact.clone())
            .route(Pattern::parse("file.*").unwrap(), files.clone())
            .default_route(rest.clone())
            .build();
        for t in [
            "file.deleted",
            "file.stored",
            "file.stored.thumb",
            "order.paid",
        ] {
            router.deliver(&event(t)).await.unwrap();
        }
        assert_eq!(exact.delivered_types(), ["file.deleted"]);
        assert_eq!(
            files.delivered_types(),
            ["file.stored", "file.stored.thumb"]
        );
        assert_eq!(rest.delivered_types(), ["order.paid"]);
    }

    #[tokio::test]
    async fn no_route_is_a_permanent_error_naming_the_type() {
        let router = Router::builder()
            .route(Pattern::parse("file.*").unwrap(), RecordingTransport::new())
            .build();
        match router.deliver(&event("order.paid")).await {
            Err(e @ DeliveryError::Permanent { .. }) => {
                assert!(e.to_string().contains("order.paid"))
            }
            other => panic!("expected a permanent error, got {other:?}"),
        }
    }
}

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
