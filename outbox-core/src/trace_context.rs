//! W3C trace context carried by events (feature `trace-context`): one trace from the request
//! that emits an event to the consumer that handles it.
//!
//! - On emit (every store turns the event into its row with
//!   [`NewEvent::into_event`](crate::NewEvent::into_event)), the current `tracing` span's
//!   OpenTelemetry context is written into the event's `traceparent` (and `tracestate`)
//!   headers, unless the caller set a `traceparent` or no span is being traced.
//! - The worker links each delivery's span to it ([`link`]); every transport carries the
//!   headers in its native place (NATS and AMQP headers, HTTP headers, Redis stream fields).
//! - A consumer's handler span continues it ([`continue_trace`]).
//!
//! Spans reach OpenTelemetry through `tracing-opentelemetry`'s layer, installed by the
//! application; without it nothing is written.

use std::collections::BTreeMap;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The W3C `traceparent` header.
pub const TRACEPARENT: &str = "traceparent";
/// The W3C `tracestate` header.
pub const TRACESTATE: &str = "tracestate";

struct Write<'a>(&'a mut BTreeMap<String, String>);

impl Injector for Write<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), value);
    }
}

struct Read<'a>(&'a BTreeMap<String, String>);

impl Extractor for Read<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// Writes the current span's context into `headers`, unless they carry a `traceparent`
/// already or the current span is not traced by OpenTelemetry.
pub fn inject_current(headers: &mut BTreeMap<String, String>) {
    if headers.contains_key(TRACEPARENT) {
        return;
    }
    let context = tracing::Span::current().context();
    if context.span().span_context().is_valid() {
        TraceContextPropagator::new().inject_context(&context, &mut Write(headers));
    }
}

/// The trace context `headers` carry (an empty context if none, or if malformed).
pub fn extract(headers: &BTreeMap<String, String>) -> opentelemetry::Context {
    TraceContextPropagator::new().extract(&Read(headers))
}

/// Links `span` to the trace `headers` carry (the worker's delivery span: a delivery is its own
/// unit of work, caused by the emitting request).
pub fn link(span: &tracing::Span, headers: &BTreeMap<String, String>) {
    let context = extract(headers);
    let linked = context.span().span_context().clone();
    if linked.is_valid() {
        span.add_link(linked);
    }
}

/// Makes `span` continue the trace of a received event, from its `traceparent` and
/// `tracestate` values (a consumer's handler span, before it is entered). Does nothing without
/// a valid `traceparent`.
pub fn continue_trace(span: &tracing::Span, traceparent: Option<&str>, tracestate: Option<&str>) {
    let mut headers = BTreeMap::new();
    if let Some(value) = traceparent {
        headers.insert(TRACEPARENT.to_owned(), value.to_owned());
    }
    if let Some(value) = tracestate {
        headers.insert(TRACESTATE.to_owned(), value.to_owned());
    }
    let context = extract(&headers);
    if context.span().span_context().is_valid() {
        // Fails only if the span was already entered; the span then keeps its own parent.
        let _ = span.set_parent(context);
    }
}
