//! The `outbox` binary end to end: migrate and status as commands, and a relay process that
//! delivers committed events, serves its health and metrics endpoints, and drains on SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use outbox_core::{EventId, OutboxStore};
use outbox_tests::conformance::Harness;
use outbox_tests::harness::{PgHarness, database_url, foreign_row, traced_event};

const BIN: &str = env!("CARGO_BIN_EXE_outbox");

fn outbox(args: &[&str], url: &str, schema: &str) -> String {
    let out = Command::new(BIN)
        .args(args)
        .args(["--database-url", url, "--schema", schema])
        .output()
        .expect("run outbox");
    assert!(
        out.status.success(),
        "outbox {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A plain HTTP/1.0 GET on loopback; returns the response text.
fn get(port: u16, path: &str) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    write!(s, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_process_delivers_serves_metrics_and_drains_on_sigterm() {
    let h = PgHarness::new().await;
    let url = database_url().await;
    let schema = h.schema().to_owned();
    // The harness already migrated; the command agrees it is current.
    assert!(outbox(&["migrate"], &url, &schema).contains("applied 0 migration(s)"));

    let committed: HashSet<EventId> = h
        .emit((0..5).map(traced_event).collect(), true)
        .await
        .unwrap()
        .iter()
        .map(|e| e.id())
        .collect();
    let status = outbox(&["status"], &url, &schema);
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("pending") && l.trim_end().ends_with(" 5")),
        "{status}"
    );

    let port = free_port();
    let dir = std::env::temp_dir().join(format!("outbox-relay-{schema}"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("relay.toml");
    std::fs::write(
        &config,
        format!(
            "schema = \"{schema}\"\n[relay]\nworkers = 2\npoll_interval_ms = 200\n[http]\nlisten = \"127.0.0.1:{port}\"\n\
             [[routes]]\npattern = \"*\"\ntransport = \"stdout\"\n"
        ),
    )
    .unwrap();
    let mut child = Command::new(BIN)
        .args(["--log-format", "json", "relay", "--config"])
        .arg(&config)
        .env("DATABASE_URL", &url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();

    // Every committed event arrives as one JSON line on the relay's standard output.
    let stdout = child.stdout.take().unwrap();
    let lines = tokio::task::spawn_blocking(move || {
        let mut seen = HashSet::new();
        for line in BufReader::new(stdout).lines() {
            let line = line.unwrap();
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            seen.insert(v["id"].as_str().unwrap().parse::<EventId>().unwrap());
            if seen.len() == 5 {
                break;
            }
        }
        seen
    });
    let seen = tokio::time::timeout(Duration::from_secs(60), lines)
        .await
        .expect("relay delivered nothing")
        .unwrap();
    assert_eq!(seen, committed);

    let health = tokio::task::spawn_blocking(move || {
        (
            get(port, "/healthz"),
            get(port, "/readyz"),
            get(port, "/metrics"),
        )
    })
    .await
    .unwrap();
    assert!(
        health.0.starts_with("HTTP/1.0 200") || health.0.starts_with("HTTP/1.1 200"),
        "{}",
        health.0
    );
    assert!(health.1.contains(" 200 "), "{}", health.1);
    assert!(
        health.2.contains("outbox_events{status=\"delivered\"} 5"),
        "{}",
        health.2
    );
    assert!(
        health.2.contains("outbox_oldest_pending_age_seconds 0"),
        "{}",
        health.2
    );

    // SIGTERM: the relay stops gracefully and exits 0.
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    let stderr = String::from_utf8_lossy(&status.stderr);
    assert!(
        status.status.success(),
        "relay exit {:?}: {stderr}",
        status.status
    );
    assert!(stderr.contains("relay stopped"), "{stderr}");
    let counts = h.store().count_by_status().await.unwrap();
    assert_eq!(
        (counts.delivered, counts.pending, counts.in_flight),
        (5, 0, 0)
    );
    let _ = std::fs::remove_dir_all(dir);
    h.cleanup().await;
}

#[test]
fn bad_config_is_refused_with_a_clear_message() {
    let dir = std::env::temp_dir().join(format!("outbox-badcfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("relay.toml");
    std::fs::write(
        &config,
        "[[routes]]\npattern = \"File*\"\ntransport = \"stdout\"\n",
    )
    .unwrap();
    let out = Command::new(BIN)
        .args(["relay", "--config"])
        .arg(&config)
        .env("DATABASE_URL", "postgres://nobody@127.0.0.1:1/none")
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("routes[0].pattern") && stderr.contains("File*"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// `outbox status` reports a row no worker can read (here, a payload nested 200 levels deep)
/// instead of failing: as the oldest pending event first, then, once a claim has marked it
/// dead, in its own table with the reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_reports_unreadable_rows() {
    let h = PgHarness::new().await;
    let url = database_url().await;
    let deep = format!("{}1{}", "[".repeat(200), "]".repeat(200));
    let bad = foreign_row(&h, &deep, "{}").await;
    h.emit(vec![traced_event(1)], true).await.unwrap();

    let before = outbox(&["status"], &url, h.schema());
    assert!(
        before.contains(&format!("oldest pending: {bad}")),
        "{before}"
    );

    let store = h.store();
    let (_, claimed) = outbox_core::OutboxStoreExt::claim_for(
        &store,
        "w",
        10,
        Duration::from_secs(30),
        outbox_core::Clock::now(h.clock()),
    )
    .await
    .unwrap();
    assert_eq!(claimed.len(), 1, "the readable event is claimed");
    let after = outbox(&["status"], &url, h.schema());
    let row = after
        .lines()
        .find(|l| l.starts_with(&bad.to_string()))
        .unwrap_or_else(|| panic!("{bad} not listed:\n{after}"));
    assert!(
        row.contains("dead") && row.contains("recursion limit"),
        "{row}"
    );
    assert!(after.contains("unreadable row"), "{after}");
    h.cleanup().await;
}
