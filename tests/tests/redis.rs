//! The Redis Streams transport against the real server on loopback (`REDIS_URL`, default
//! `redis://127.0.0.1:6379`), fed by a real PostgreSQL outbox.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap, HashSet};

use outbox_core::{DeliveryError, EventId, NewEvent, Transport};
use outbox_tests::conformance::Harness;
use outbox_tests::harness::{PgHarness, relay_committed_and_rolled_back, traceparent};
use outbox_transport_redis::RedisTransport;
use redis::aio::ConnectionManager;
use serde_json::json;

fn url() -> String {
    std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

async fn redis() -> ConnectionManager {
    let url = url();
    let client = redis::Client::open(url.as_str()).unwrap();
    client
        .get_connection_manager()
        .await
        .unwrap_or_else(|e| panic!("Redis tests need a Redis server at {url} (set REDIS_URL): {e}"))
}

type Entry = (String, HashMap<String, String>);

async fn entries(conn: &mut ConnectionManager, stream: &str) -> Vec<Entry> {
    redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query_async(conn)
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn committed_events_arrive_with_their_id_and_headers() {
    let mut conn = redis().await;
    let prefix = format!("t{}", uuid::Uuid::now_v7().simple());
    let stream = format!("{prefix}:file.stored");

    let h = PgHarness::new().await;

    let transport = RedisTransport::connect(&url(), &prefix).await.unwrap();
    let committed = relay_committed_and_rolled_back(&h, transport).await;

    let got = entries(&mut conn, &stream).await;
    assert_eq!(got.len(), 3, "the rolled-back event never arrived");
    let mut seen = HashSet::new();
    for (_, fields) in &got {
        let n: usize = fields["aggregate_id"].parse().unwrap();
        assert_eq!(fields["event_type"], "file.stored");
        assert_eq!(fields["aggregate_type"], "upload");
        let headers: BTreeMap<String, String> = serde_json::from_str(&fields["headers"]).unwrap();
        assert_eq!(headers["traceparent"], traceparent(n));
        assert_eq!(
            fields["traceparent"],
            traceparent(n),
            "and as a field of its own"
        );
        let payload: serde_json::Value = serde_json::from_str(&fields["payload"]).unwrap();
        assert_eq!(payload, json!({ "n": n }));
        seen.insert(fields["event_id"].parse::<EventId>().unwrap());
    }
    assert_eq!(seen, committed.iter().copied().collect::<HashSet<_>>());
    // A consumer reading the entries as redis-rs stream entries gets the ids back by the helper.
    let reply: redis::streams::StreamRangeReply = redis::cmd("XRANGE")
        .arg(&stream)
        .arg("-")
        .arg("+")
        .query_async(&mut conn)
        .await
        .unwrap();
    let ids: HashSet<EventId> = reply
        .ids
        .iter()
        .map(|entry| outbox_transport_redis::event_id(entry).unwrap())
        .collect();
    assert_eq!(ids, seen);

    let _: () = redis::cmd("DEL")
        .arg(&stream)
        .query_async(&mut conn)
        .await
        .unwrap();
    h.cleanup().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_len_trims_the_stream_and_a_wrong_key_type_is_permanent() {
    let mut conn = redis().await;
    let prefix = format!("t{}", uuid::Uuid::now_v7().simple());
    let transport = RedisTransport::connect(&url(), &prefix)
        .await
        .unwrap()
        .with_max_len(10);
    let event = |n: usize| {
        NewEvent::builder("order.paid", "order", n.to_string())
            .build()
            .unwrap()
            .into_event(EventId::new(), chrono::Utc::now(), 3)
    };
    for n in 0..500 {
        transport.deliver(&event(n)).await.unwrap();
    }
    let len: u64 = redis::cmd("XLEN")
        .arg(format!("{prefix}:order.paid"))
        .query_async(&mut conn)
        .await
        .unwrap();
    assert!(
        (10..500).contains(&len),
        "MAXLEN ~ 10 left {len} entries of 500"
    );

    // A key holding a string is not a stream: retrying cannot help.
    let taken = format!("{prefix}:file.stored");
    let _: () = redis::cmd("SET")
        .arg(&taken)
        .arg("x")
        .query_async(&mut conn)
        .await
        .unwrap();
    let wrong = NewEvent::builder("file.stored", "upload", "1")
        .build()
        .unwrap()
        .into_event(EventId::new(), chrono::Utc::now(), 3);
    match transport.deliver(&wrong).await {
        Err(e @ DeliveryError::Permanent { .. }) => assert!(e.to_string().contains(&taken), "{e}"),
        other => panic!("expected a permanent error, got {other:?}"),
    }
    let _: () = redis::cmd("DEL")
        .arg(&taken)
        .arg(format!("{prefix}:order.paid"))
        .query_async(&mut conn)
        .await
        .unwrap();
}
