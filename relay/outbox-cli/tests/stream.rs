//! The `outbox` binary in stream mode (`relay.mode = "stream"`) on a scratch cluster with
//! `wal_level = logical`: `outbox migrate` sets it up, `outbox status` reports the slot, and a
//! relay killed (SIGKILL) again and again while producers commit delivers every event to Redis,
//! each key in commit order.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, HashMap, HashSet};
use std::process::{Command, Stdio};
use std::time::Duration;

use outbox_core::{Emit, EventId, NewEvent};
use outbox_postgres::{PgConfig, PgStore};
use outbox_tests::logical::cluster;

mod common;

use common::{Killed, config_file, stdout_of};

const BIN: &str = env!("CARGO_BIN_EXE_outbox");

/// `outbox <args> --config <file> --database-url <url>`: the flag, since a `DATABASE_URL` in
/// the environment (CI sets one, for the shared server) would win over the file.
fn run(args: &[&str], file: &std::path::Path, url: &str) -> String {
    stdout_of(
        Command::new(BIN)
            .args(args)
            .arg("--config")
            .arg(file)
            .args(["--database-url", url]),
    )
}

fn relay(file: &std::path::Path, url: &str) -> Killed {
    Killed(
        Command::new(BIN)
            .args(["relay", "--config"])
            .arg(file)
            .args(["--database-url", url])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

async fn redis() -> redis::aio::ConnectionManager {
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    redis::Client::open(url.as_str())
        .unwrap()
        .get_connection_manager()
        .await
        .unwrap_or_else(|e| panic!("this test needs a Redis server at {url} (set REDIS_URL): {e}"))
}

/// Every entry of `stream`: (event id, ordering key, n).
async fn read_all(
    conn: &mut redis::aio::ConnectionManager,
    stream: &str,
) -> Vec<(EventId, String, i64)> {
    let entries: Vec<(String, HashMap<String, String>)> = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query_async(conn)
        .await
        .unwrap();
    entries
        .into_iter()
        .map(|(_, fields)| {
            let payload: serde_json::Value =
                serde_json::from_str(&fields["payload"]).expect("payload");
            (
                fields["event_id"].parse().expect("event id"),
                fields["ordering_key"].clone(),
                payload["n"].as_i64().expect("n"),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stream_relay_killed_again_and_again_delivers_every_event_in_key_order() {
    let cluster = cluster();
    let stream = format!("outbox-stream-test-{}", uuid::Uuid::now_v7());
    let (_dir, file) = config_file(
        "stream-relay",
        &format!(
            "[relay]\nmode = \"stream\"\nworkers = 1\npoll_interval_ms = 100\n\
             [relay.stream]\nslot = \"outbox_relay\"\n\
             [[routes]]\npattern = \"*\"\ntransport = \"redis\"\nurl = \"redis://127.0.0.1:6379\"\n\
             stream = \"{stream}\"\n"
        ),
    );
    let migrated = run(&["migrate"], &file, &cluster.url());
    assert!(
        migrated.contains("publication public.outbox_event_stream created")
            && migrated.contains("slot outbox_relay created")
            && migrated.contains("switched to streaming"),
        "{migrated}"
    );
    let idle = run(&["status"], &file, &cluster.url());
    assert!(
        idle.contains("stream slot outbox_relay: NOT read") && idle.contains("nothing undelivered"),
        "{idle}"
    );

    let pool = sqlx::PgPool::connect(&cluster.url()).await.unwrap();
    let store = PgStore::new(pool, PgConfig::new()).unwrap();
    let mut conn = redis().await;

    // One producer, so that emit order is commit order: 10 keys, 40 transactions of 25.
    let producer = {
        let store = store.clone();
        tokio::spawn(async move {
            let mut ids = Vec::new();
            for t in 0..40i64 {
                let mut tx = store.begin().await.unwrap();
                let events: Vec<NewEvent> = (0..25)
                    .map(|i| {
                        let n = t * 25 + i;
                        NewEvent::builder("order.changed", "order", format!("{}", n % 10))
                            .ordering_key(format!("k{}", n % 10))
                            .payload(serde_json::json!({ "n": n }))
                            .build()
                            .unwrap()
                    })
                    .collect();
                ids.extend(tx.emit_all(events).await.unwrap().iter().map(|e| e.id()));
                tx.commit().await.unwrap();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            ids
        })
    };
    // Killed three times while events keep coming, each time once it has delivered more.
    let mut seen = 0;
    for _ in 0..3 {
        let _relay = relay(&file, &cluster.url());
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        loop {
            let len: usize = redis::cmd("XLEN")
                .arg(&stream)
                .query_async(&mut conn)
                .await
                .unwrap();
            if len > seen + 50 {
                seen = len;
                break;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the relay delivered nothing"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // `_relay` is dropped here: SIGKILL.
    }
    let emitted: Vec<EventId> = producer.await.unwrap();
    // No relay runs now: the undelivered events' age is the lag in time.
    let behind = run(&["status"], &file, &cluster.url());
    assert!(behind.contains("s old"), "{behind}");
    let relay_now = relay(&file, &cluster.url());
    let want: HashSet<EventId> = emitted.iter().copied().collect();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let entries = loop {
        let entries = read_all(&mut conn, &stream).await;
        let got: HashSet<EventId> = entries.iter().map(|e| e.0).collect();
        if want.is_subset(&got) {
            break entries;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {} events arrived",
            want.intersection(&got).count(),
            want.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let reading = run(&["status"], &file, &cluster.url());
    assert!(
        reading.contains("stream slot outbox_relay: read by a relay"),
        "{reading}"
    );
    drop(relay_now);

    // Each key's events, first arrivals, in commit order; duplicates only of a kill's batch.
    let mut first = HashSet::new();
    let mut per_key: BTreeMap<String, Vec<i64>> = BTreeMap::new();
    for (id, key, n) in &entries {
        if first.insert(*id) {
            per_key.entry(key.clone()).or_default().push(*n);
        }
    }
    for (key, ns) in &per_key {
        let mut sorted = ns.clone();
        sorted.sort_unstable();
        assert_eq!(ns, &sorted, "key {key} out of commit order");
    }
    let duplicates = entries.len() - first.len();
    assert!(duplicates < 3 * 1000, "{duplicates} duplicates");
    eprintln!(
        "{} events, {} entries, {duplicates} duplicates after 3 kills",
        want.len(),
        entries.len()
    );
    let _: () = redis::cmd("DEL")
        .arg(&stream)
        .query_async(&mut conn)
        .await
        .unwrap();
}
