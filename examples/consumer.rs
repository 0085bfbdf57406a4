//! The other side of the uploads service: a thumbnailer that receives `file.stored` from NATS
//! JetStream and makes one thumbnail row per upload — exactly once, even when the broker
//! delivers an event again.
//!
//! ```text
//! DATABASE_URL=postgres://root@127.0.0.1:5432/test NATS_URL=nats://127.0.0.1:4222 \
//!     cargo run --example consumer --features outbox-examples/consumer
//! ```
//!
//! The service saves three uploads with their events; a worker relays them to JetStream; the
//! thumbnailer handles each message through the inbox (`outbox-inbox`): the thumbnail row and the
//! inbox record commit in one transaction. To show a redelivery, it refuses to acknowledge the
//! first message after handling it (`nak`), as a consumer that died between its commit and its
//! acknowledgement would; JetStream delivers it again and the inbox skips it. Everything lives in
//! its own schema and stream, removed at the end.

use std::time::Duration;

use async_nats::jetstream::{self, AckKind};
use futures_util::StreamExt;
use outbox_core::NewEvent;
use outbox_inbox::{Handled, Inbox, InboxStore};
use outbox_postgres::{PgConfig, PgStore, PgTransaction};
use outbox_transport_nats::NatsTransport;
use outbox_worker::Worker;
use serde_json::json;
use sqlx::AssertSqlSafe;

type AppError = Box<dyn std::error::Error + Send + Sync>;

const SCHEMA: &str = "uploads_consumer_example";
const SUBJECTS: &str = "uploads-example";
const STREAM: &str = "UPLOADS_EXAMPLE";

/// The thumbnailer's effect, in the inbox's transaction: one thumbnail row per upload.
async fn make_thumbnail(tx: &mut PgTransaction, upload: &str) -> Result<(), sqlx::Error> {
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO {SCHEMA}.thumbnails (upload_id) VALUES ($1)"
    )))
    .bind(upload)
    .execute(&mut **tx)
    .await
    .map(drop)
}

#[tokio::main]
async fn main() -> Result<(), AppError> {
    let url = std::env::var("DATABASE_URL").map_err(|_| "set DATABASE_URL to a PostgreSQL")?;
    let nats_url = std::env::var("NATS_URL").unwrap_or_else(|_| "nats://127.0.0.1:4222".into());
    let pool = sqlx::postgres::PgPoolOptions::new()
        .max_connections(4)
        .connect(&url)
        .await?;
    sqlx::raw_sql(AssertSqlSafe(format!(
        "DROP SCHEMA IF EXISTS {SCHEMA} CASCADE; CREATE SCHEMA {SCHEMA}; \
         CREATE TABLE {SCHEMA}.thumbnails (upload_id text NOT NULL, made_at timestamptz NOT NULL DEFAULT now())"
    )))
    .execute(&pool)
    .await?;
    let store = PgStore::new(pool.clone(), PgConfig::new().with_schema(SCHEMA))?;
    store.migrate().await?;
    let inbox = Inbox::new("thumbnailer")?.with_schema(SCHEMA);
    store.migrate_inbox(&inbox).await?;

    let client = async_nats::connect(&nats_url).await.map_err(|e| {
        format!("the consumer example needs NATS with JetStream at {nats_url}: {e}")
    })?;
    let js = jetstream::new(client.clone());
    let _ = js.delete_stream(STREAM).await;
    let stream = js
        .create_stream(jetstream::stream::Config {
            name: STREAM.into(),
            subjects: vec![format!("{SUBJECTS}.>")],
            ..Default::default()
        })
        .await?;

    // The service: three uploads, each with its event, in one transaction each.
    for n in 1..=3 {
        let mut tx = store.begin().await?;
        let event = NewEvent::builder("file.stored", "upload", n.to_string())
            .payload(json!({ "name": format!("photo-{n}.jpg") }))
            .build()?;
        outbox_core::Emit::emit(&mut tx, event).await?;
        tx.commit().await?;
    }
    // The relay: deliver them to JetStream.
    let relayed = Worker::builder(store.clone(), NatsTransport::with_prefix(client, SUBJECTS))
        .build()?
        .run_until_idle()
        .await?;
    println!("relay: delivered {} events to NATS", relayed.delivered);

    // The thumbnailer.
    let consumer = stream
        .create_consumer(jetstream::consumer::pull::Config {
            durable_name: Some("thumbnailer".into()),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ..Default::default()
        })
        .await?;
    let mut messages = consumer.messages().await?;
    let (mut done, mut skipped, mut refused) = (0, 0, false);
    while done < 3 || skipped < 1 {
        let message = tokio::time::timeout(Duration::from_secs(30), messages.next())
            .await
            .map_err(|_| "no message for 30 s")?
            .ok_or("the subscription ended")??;
        let id = outbox_transport_nats::event_id(message.headers.as_ref())
            .ok_or("a message without an event id")?;
        let upload = message
            .headers
            .as_ref()
            .and_then(|h| h.get("Outbox-Aggregate-Id"))
            .map(|v| v.as_str().to_owned())
            .ok_or("a message without an aggregate id")?;
        let handled = inbox
            .handle_once(&store, id, async |tx| make_thumbnail(tx, &upload).await)
            .await?;
        match handled {
            Handled::Done(()) => {
                done += 1;
                println!("thumbnailer: made the thumbnail of upload {upload}");
            }
            Handled::Duplicate => {
                skipped += 1;
                println!("thumbnailer: upload {upload} was handled before; skipped");
            }
        }
        if !refused {
            // As if the consumer died after its commit, before acknowledging.
            refused = true;
            message.ack_with(AckKind::Nak(None)).await?;
            println!("thumbnailer: did not acknowledge upload {upload}; the broker will resend it");
        } else {
            message.ack().await?;
        }
    }

    let rows: i64 = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT count(*) FROM {SCHEMA}.thumbnails"
    )))
    .fetch_one(&pool)
    .await?;
    println!("thumbnailer: {done} handled, {skipped} redelivery skipped, {rows} thumbnails");
    js.delete_stream(STREAM).await?;
    sqlx::raw_sql(AssertSqlSafe(format!("DROP SCHEMA {SCHEMA} CASCADE")))
        .execute(&pool)
        .await?;
    if rows != 3 {
        return Err(format!("expected 3 thumbnails, found {rows}").into());
    }
    Ok(())
}
