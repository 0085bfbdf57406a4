//! Trace context end to end (feature `trace-context`): the request that emits an event, the
//! worker's delivery and the consumer's handler form one trace, checked with an in-memory span
//! exporter.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider};
use outbox_core::{Emit, NewEvent};
use outbox_inbox::{Inbox, continue_trace};
use outbox_memory::{MemoryStore, RecordingTransport};
use outbox_worker::Worker;
use tracing::Instrument;
use tracing_subscriber::layer::SubscriberExt;

#[tokio::test]
async fn one_trace_from_the_emitting_request_to_the_handler() {
    let exporter = InMemorySpanExporter::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(exporter.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("outbox-tests")));
    let _default = tracing::subscriber::set_default(subscriber);
    let store = MemoryStore::new();

    // The request that saves an upload and emits its event.
    async {
        let mut tx = store.begin().await.unwrap();
        let event = NewEvent::builder("file.stored", "upload", "1")
            .build()
            .unwrap();
        tx.emit(event).await.unwrap();
        tx.commit().await.unwrap();
    }
    .instrument(tracing::info_span!("upload_request"))
    .await;
    // An event that brings its own traceparent keeps it.
    let own = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    async {
        let mut tx = store.begin().await.unwrap();
        let event = NewEvent::builder("file.stored", "upload", "2")
            .header("traceparent", own)
            .build()
            .unwrap();
        tx.emit(event).await.unwrap();
        tx.commit().await.unwrap();
    }
    .instrument(tracing::info_span!("another_request"))
    .await;

    // The relay.
    let transport = RecordingTransport::new();
    Worker::builder(store.clone(), transport.clone())
        .build()
        .unwrap()
        .run_until_idle()
        .await
        .unwrap();
    let delivered = transport.delivered();
    let by_upload = |id: &str| {
        delivered
            .iter()
            .find(|e| e.aggregate_id == id)
            .cloned()
            .unwrap()
    };
    assert_eq!(by_upload("2").headers["traceparent"], own);
    let delivered = by_upload("1");

    // The consumer: its handler span continues the event's trace.
    let inbox = Inbox::new("thumbnailer").unwrap();
    let handler = tracing::info_span!("handle_file_stored");
    let header = |name: &str| delivered.headers.get(name).map(String::as_str);
    continue_trace(&handler, header("traceparent"), header("tracestate"));
    inbox
        .handle_once(&store, delivered.id, async |_tx| Ok::<(), Infallible>(()))
        .instrument(handler)
        .await
        .unwrap();

    provider.force_flush().unwrap();
    let spans = exporter.get_finished_spans().unwrap();
    let span = |name: &str| {
        spans.iter().find(|s| s.name == name).unwrap_or_else(|| {
            panic!(
                "no {name} span among {:?}",
                spans.iter().map(|s| &s.name).collect::<Vec<_>>()
            )
        })
    };
    let (request, delivery, handled) = (
        span("upload_request"),
        span("outbox_deliver"),
        span("handle_file_stored"),
    );
    let request_context = &request.span_context;
    assert_eq!(
        header("traceparent").unwrap(),
        format!(
            "00-{}-{}-01",
            request_context.trace_id(),
            request_context.span_id()
        ),
        "the event carries the emitting request's context"
    );
    assert_eq!(handled.span_context.trace_id(), request_context.trace_id());
    assert_eq!(handled.parent_span_id, request_context.span_id());
    assert!(
        delivery
            .links
            .iter()
            .any(
                |link| link.span_context.trace_id() == request_context.trace_id()
                    && link.span_context.span_id() == request_context.span_id()
            ),
        "the delivery is linked to the request"
    );
}
