//! The `outbox` binary end to end: migrate and status as commands, and a relay process that
//! delivers committed events, serves its health and metrics endpoints, and drains on SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use outbox_core::{EventId, NewEvent, OutboxStore, OutboxStoreExt, Status};
use outbox_tests::conformance::{Harness, emit_ids};
use outbox_tests::harness::{PgHarness, database_url, foreign_row, traced_event};

mod common;

use common::{
    Killed, admin_process, config_file, free_port, get, log_lines, relay_process, stdout_of,
    wait_for, which,
};

const BIN: &str = env!("CARGO_BIN_EXE_outbox");

fn outbox(args: &[&str], url: &str, schema: &str) -> String {
    stdout_of(
        Command::new(BIN)
            .args(args)
            .args(["--database-url", url, "--schema", schema]),
    )
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
    // The stdout transport prints an event before the batch's acknowledgement is written: wait
    // for the acknowledgement (another process's; a bounded guard, not a pace) before reading
    // the endpoint's counts.
    let acked = async {
        while h.store().count_by_status().await.unwrap().delivered < 5 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), acked)
        .await
        .expect("the relay never acknowledged what it printed");

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
    let status = common::terminate(child).await;
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

/// An event of type `event_type` about order `o-{n}`.
fn order_event(event_type: &str, n: usize) -> outbox_core::NewEventBuilder {
    NewEvent::builder(event_type, "order", format!("o-{n}")).payload(serde_json::json!({ "n": n }))
}

/// Runs `outbox` with `args` against `schema`, with extra environment; returns (success,
/// stdout, stderr).
fn run(args: &[&str], url: &str, schema: &str, env: &[(&str, &str)]) -> (bool, String, String) {
    let out = Command::new(BIN)
        .args(args)
        .args(["--database-url", url, "--schema", schema])
        .envs(env.iter().copied())
        .output()
        .expect("run outbox");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// `migrate --down` needs `--yes`; migrating logs no PostgreSQL NOTICEs; logs written to a file
/// or pipe carry no colour codes; an error is one line, with the fix when one is known.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_and_errors_speak_plainly() {
    let h = PgHarness::new().await;
    let url = database_url().await;
    let (ok, _, stderr) = run(&["migrate", "--down"], &url, h.schema(), &[]);
    assert!(!ok);
    assert_eq!(stderr.lines().count(), 1, "{stderr}");
    assert!(stderr.contains("--yes"), "{stderr}");
    assert_eq!(
        h.store().count_by_status().await.unwrap().total(),
        0,
        "the table is still there"
    );

    // Already migrated: every CREATE … IF NOT EXISTS would send a NOTICE.
    let (ok, _, stderr) = run(&["migrate"], &url, h.schema(), &[("RUST_LOG", "debug")]);
    assert!(ok, "{stderr}");
    assert!(
        !stderr.contains("skipping"),
        "a NOTICE reached the logs:\n{stderr}"
    );
    assert!(!stderr.is_empty(), "debug logs expected");
    assert!(
        !stderr.contains('\u{1b}'),
        "colour codes in a piped log:\n{stderr}"
    );

    let (ok, _, _) = run(&["migrate", "--down", "--yes"], &url, h.schema(), &[]);
    assert!(ok);
    let (ok, _, stderr) = run(&["status"], &url, h.schema(), &[]);
    assert!(!ok);
    assert_eq!(
        stderr.lines().count(),
        1,
        "printed more than once:\n{stderr}"
    );
    assert!(
        stderr.contains("does not exist") && stderr.contains("outbox migrate"),
        "{stderr}"
    );
    assert!(!stderr.contains("line "), "{stderr}");
    h.cleanup().await;
}

/// Dead events can be listed, shown whole, and revived by id or by type.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_events_are_listed_shown_and_revived() {
    let h = PgHarness::new().await;
    let url = database_url().await;
    let store = h.store();
    let ids: Vec<EventId> = h
        .emit((0..3).map(traced_event).collect(), true)
        .await
        .unwrap()
        .iter()
        .map(|e| e.id())
        .collect();
    let now = outbox_core::Clock::now(h.clock());
    let (lease, _) =
        outbox_core::OutboxStoreExt::claim_for(&store, "w", 10, Duration::from_secs(30), now)
            .await
            .unwrap();
    let failures: Vec<_> = ids
        .iter()
        .map(|id| outbox_core::Failure::permanent(*id, "no route"))
        .collect();
    store.nack(lease.id, &failures, now).await.unwrap();

    let list = outbox(&["dead", "list"], &url, h.schema());
    for id in &ids {
        assert!(list.contains(&id.to_string()), "{id} missing:\n{list}");
    }
    assert!(list.contains("no route"), "{list}");
    let shown = outbox(&["dead", "show", &ids[0].to_string()], &url, h.schema());
    let json: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(json["lifecycle"]["status"], "dead");
    assert_eq!(json["lifecycle"]["last_error"], "no route");

    let one = outbox(&["dead", "revive", &ids[0].to_string()], &url, h.schema());
    assert!(one.contains("revived 1 event"), "{one}");
    assert_eq!(
        store.get(ids[0]).await.unwrap().unwrap().status(),
        outbox_core::Status::Pending
    );
    let rest = outbox(
        &["dead", "revive", "--type", "file.stored", "--attempts", "2"],
        &url,
        h.schema(),
    );
    assert!(rest.contains("revived 2 event"), "{rest}");
    let counts = store.count_by_status().await.unwrap();
    assert_eq!((counts.pending, counts.dead), (3, 0));
    let event = store.get(ids[2]).await.unwrap().unwrap();
    assert_eq!(event.lifecycle.max_attempts, event.attempts() + 2);

    let (ok, _, stderr) = run(&["dead", "revive"], &url, h.schema(), &[]);
    assert!(!ok && stderr.contains("--all"), "{stderr}");
    h.cleanup().await;
}

/// The config format is one command away, and in `relay --help`.
#[test]
fn the_config_format_is_printed() {
    let example = Command::new(BIN)
        .args(["config", "example"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&example.stdout);
    assert!(example.status.success());
    assert!(
        text.contains("[relay]") && text.contains("[[routes]]"),
        "{text}"
    );
    let help = Command::new(BIN)
        .args(["relay", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    assert!(
        help.contains(text.trim()),
        "relay --help lacks the example:\n{help}"
    );
}

/// Writes a config file in a directory of its own; returns (directory, file).
/// A database that is not there at start-up is tried again with a log line per attempt naming
/// the real cause (it used to wait silently and report "pool timed out"), then, after the
/// start-up timeout, the relay exits naming the cause and the key that sets the wait.
#[test]
fn startup_names_the_real_error_of_each_attempt() {
    let port = free_port(); // nothing listens there
    let (dir, file) = config_file(
        "startup",
        "[relay]\nstartup_timeout_secs = 1\n[[routes]]\npattern = \"*\"\ntransport = \"stdout\"\n",
    );
    let out = Command::new(BIN)
        .args(["relay", "--config"])
        .arg(&file)
        .env(
            "DATABASE_URL",
            format!("postgres://root@127.0.0.1:{port}/test"),
        )
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let attempts = stderr
        .lines()
        .filter(|l| l.contains("PostgreSQL: not reachable yet"))
        .count();
    assert!(attempts >= 2, "{stderr}");
    assert!(
        stderr.to_lowercase().contains("connection refused"),
        "{stderr}"
    );
    assert!(!stderr.contains("pool timed out"), "{stderr}");
    let last = stderr.lines().last().unwrap();
    assert!(
        last.contains("relay.startup_timeout_secs") && last.contains("tried"),
        "{stderr}"
    );
    let _ = std::fs::remove_dir_all(dir);
}

/// A broker that comes up during start-up is waited for: the relay logs each failed attempt,
/// connects once it is there, and delivers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn startup_waits_for_a_broker_that_comes_up() {
    let h = PgHarness::new().await;
    let url = database_url().await;
    h.emit((0..2).map(traced_event).collect(), true)
        .await
        .unwrap();
    let nats_port = free_port();
    let (dir, file) = config_file(
        "startup-broker",
        &format!(
            "schema = \"{}\"\n[relay]\npoll_interval_ms = 100\nstartup_timeout_secs = 60\n\
             [[routes]]\npattern = \"never.*\"\ntransport = \"nats\"\nurl = \"nats://127.0.0.1:{nats_port}\"\nsubject = \"x\"\n\
             [[routes]]\npattern = \"*\"\ntransport = \"stdout\"\n",
            h.schema()
        ),
    );
    let mut relay = Command::new(BIN)
        .args(["relay", "--config"])
        .arg(&file)
        .env("DATABASE_URL", &url)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Wait for the first failed attempt in the log, then start the broker.
    let log_rx = log_lines(&mut relay);
    let mut log = Vec::new();
    wait_for(&log_rx, "NATS: not reachable yet", 1, &mut log);
    let nats = nats_server(nats_port, None);
    let stdout = relay.stdout.take().unwrap();
    let delivered = tokio::task::spawn_blocking(move || {
        BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .take(2)
            .count()
    });
    let delivered = tokio::time::timeout(Duration::from_secs(60), delivered)
        .await
        .expect("nothing delivered after the broker came up")
        .unwrap();
    assert_eq!(delivered, 2);
    while let Ok(line) = log_rx.try_recv() {
        log.push(line);
    }
    let _ = relay.kill();
    let _ = relay.wait();
    drop(nats);
    assert!(
        log.iter().any(|l| l.contains("NATS: connected")),
        "{}",
        log.join("\n")
    );
    let _ = std::fs::remove_dir_all(dir);
    h.cleanup().await;
}

/// A `nats-server` on loopback `port` (with JetStream storing in `store` when given).
fn nats_server(port: u16, store: Option<&std::path::Path>) -> Killed {
    let mut command = Command::new(which("nats-server", "nats-server"));
    command.args(["-a", "127.0.0.1", "-p", &port.to_string()]);
    if let Some(dir) = store {
        command.arg("-js").arg("-sd").arg(dir);
    }
    Killed(
        command
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// `[http] listen` problems name the key and the value, and are found before any worker
/// starts: the port is bound first (workers used to start, then the bind failed).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_or_taken_listen_address_is_named_before_workers_start() {
    let h = PgHarness::new().await;
    let url = database_url().await;
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap().to_string();
    for listen in ["nonsense", taken_addr.as_str()] {
        let (dir, file) = config_file(
            "listen",
            &format!(
                "schema = \"{}\"\n[http]\nlisten = \"{listen}\"\n[[routes]]\npattern = \"*\"\ntransport = \"stdout\"\n",
                h.schema()
            ),
        );
        let (ok, stderr) = relay_once(&file, &url);
        assert!(!ok, "{stderr}");
        assert!(
            stderr.contains(&format!("http.listen = \"{listen}\"")),
            "{stderr}"
        );
        assert!(!stderr.contains("worker started"), "{stderr}");
        let _ = std::fs::remove_dir_all(dir);
    }
    drop(taken);
    h.cleanup().await;
}

/// Runs `outbox relay --config file` against `url` to its end; (success, standard error).
fn relay_once(file: &std::path::Path, url: &str) -> (bool, String) {
    let out = Command::new(BIN)
        .args(["relay", "--config"])
        .arg(file)
        .env("DATABASE_URL", url)
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Only the URLs of databases the relay knows are taken: a misspelt scheme or another
/// database's URL is refused by name, without connecting (both used to be taken as PostgreSQL).
#[test]
fn database_urls_of_other_schemes_are_refused() {
    for (url, scheme) in [
        ("postgress://root@127.0.0.1:5432/test", "postgress"),
        ("sqlserver://root@127.0.0.1:1433/test", "sqlserver"),
    ] {
        let out = Command::new(BIN)
            .args(["status", "--database-url", url])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success());
        assert!(
            stderr.contains("database_url") && stderr.contains(&format!("{scheme:?}")),
            "{stderr}"
        );
    }
}

/// A reader that stops early (`outbox status | head -1`) ends the command quietly; it used to
/// panic on the broken pipe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_closed_pipe_ends_output_quietly() {
    let h = PgHarness::new().await;
    let url = database_url().await;
    let schema = h.schema().to_owned();
    let out = tokio::task::spawn_blocking(move || {
        let mut child = Command::new(BIN)
            .args(["status", "--database-url", &url, "--schema", &schema])
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        drop(child.stdout.take()); // the reader is gone before the first line
        child.wait_with_output().unwrap()
    })
    .await
    .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {stderr}", out.status);
    assert!(!stderr.contains("panicked"), "{stderr}");
    h.cleanup().await;
}

/// SIGTERM while start-up still waits for the database ends the relay cleanly (exit 0, said
/// in the log); it used to be killed by the signal mid-start-up.
#[test]
fn sigterm_during_startup_exits_cleanly() {
    let port = free_port(); // nothing listens there
    let (dir, file) = config_file(
        "startup-term",
        "[relay]\nstartup_timeout_secs = 120\n[[routes]]\npattern = \"*\"\ntransport = \"stdout\"\n",
    );
    let mut relay = Command::new(BIN)
        .args(["relay", "--config"])
        .arg(&file)
        .env(
            "DATABASE_URL",
            format!("postgres://root@127.0.0.1:{port}/test"),
        )
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(relay.stderr.take().unwrap()).lines();
    let mut log = Vec::new();
    for line in lines.by_ref().map_while(Result::ok) {
        let retrying = line.contains("not reachable yet");
        log.push(line);
        if retrying {
            break;
        }
    }
    assert!(
        Command::new("kill")
            .args(["-TERM", &relay.id().to_string()])
            .status()
            .unwrap()
            .success()
    );
    log.extend(lines.map_while(Result::ok));
    let status = relay.wait().unwrap();
    let log = log.join("\n");
    assert!(status.success(), "{status:?}\n{log}");
    assert!(log.contains("SIGTERM during start-up"), "{log}");
    let _ = std::fs::remove_dir_all(dir);
}

/// A broker outage longer than every event's retries kills nothing: after the failures that
/// open the route's breaker, its events go back untried (no attempts spent) until the broker
/// answers again, and then all are delivered. Without the breaker these events (3 attempts,
/// about one per second) were dead within a few seconds of the outage.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_broker_outage_kills_no_event() {
    let h = PgHarness::new().await;
    let url = database_url().await;
    let dir = std::env::temp_dir().join(format!("outbox-outage-{}", h.schema()));
    std::fs::create_dir_all(&dir).unwrap();
    let port = free_port();
    let nats_url = format!("nats://127.0.0.1:{port}");
    let start_nats = || nats_server(port, Some(&dir.join("nats")));
    let nats = start_nats();
    let client = {
        let mut tries = 0;
        loop {
            match async_nats::connect(&nats_url).await {
                Ok(c) => break c,
                Err(e) if tries > 100 => panic!("nats-server did not start: {e}"),
                Err(_) => tries += 1,
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    async_nats::jetstream::new(client)
        .create_stream(async_nats::jetstream::stream::Config {
            name: "OUTAGE".into(),
            subjects: vec!["outage.>".into()],
            storage: async_nats::jetstream::stream::StorageType::File,
            ..Default::default()
        })
        .await
        .unwrap();

    let config = dir.join("relay.toml");
    std::fs::write(
        &config,
        format!(
            "schema = \"{}\"\n[relay]\npoll_interval_ms = 100\ndelivery_timeout_secs = 1\n\
             [relay.retry]\nbase_ms = 100\nfactor = 1.0\ncap_secs = 1\njitter = \"none\"\n\
             [[routes]]\npattern = \"*\"\ntransport = \"nats\"\nurl = \"{nats_url}\"\nsubject = \"outage.{{event_type}}\"\n\
             [routes.breaker]\nfailures = 2\npause_ms = 200\nmax_pause_secs = 1\n",
            h.schema()
        ),
    )
    .unwrap();
    let mut relay = Killed(
        Command::new(BIN)
            .args(["relay", "--config"])
            .arg(&config)
            .env("DATABASE_URL", &url)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let log_rx = log_lines(&mut relay.0);
    let mut log = Vec::new();
    wait_for(&log_rx, "relay started", 1, &mut log);

    // The broker goes away; then events arrive, each allowed 3 attempts.
    drop(nats);
    let events: Vec<_> = (0..5)
        .map(|n| {
            NewEvent::builder("file.stored", "upload", n.to_string())
                .max_attempts(3)
                .build()
                .unwrap()
        })
        .collect();
    let ids: Vec<EventId> = h
        .emit(events, true)
        .await
        .unwrap()
        .iter()
        .map(|e| e.id())
        .collect();
    // Four pauses: the opening one and three failed trials, several seconds of outage.
    wait_for(&log_rx, "deliveries paused", 4, &mut log);
    let store = h.store();
    for id in &ids {
        let e = store.fetch(*id).await.unwrap();
        assert_ne!(e.status(), Status::Dead, "{e:?}\n{}", log.join("\n"));
        assert!(e.attempts() <= 1, "{e:?}");
    }
    // `outbox status` names the paused route and the events it holds back.
    let status = outbox(&["status"], &url, h.schema());
    let held_back = status.lines().find_map(|l| {
        let mut words = l.split_whitespace();
        (words.next() == Some("*"))
            .then(|| words.next().and_then(|n| n.parse::<u32>().ok()))
            .flatten()
    });
    assert!(held_back.is_some_and(|n| (1..=5).contains(&n)), "{status}");

    // The broker is back: everything is delivered, nothing died.
    let nats = start_nats();
    let delivered = async {
        loop {
            let counts = store.count_by_status().await.unwrap();
            if counts.delivered == 5 || counts.dead > 0 {
                return counts;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    };
    let counts = tokio::time::timeout(Duration::from_secs(60), delivered)
        .await
        .expect("not delivered after the broker came back");
    assert_eq!((counts.delivered, counts.dead), (5, 0));
    drop(relay);
    drop(nats);
    let _ = std::fs::remove_dir_all(dir);
    h.cleanup().await;
}

/// A dead head parks its ordering key: `outbox status` lists the key with its head and how many
/// events wait; `outbox dead skip` lets the next event go on, and the key leaves the list.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_lists_parked_keys_and_dead_skip_moves_them_on() {
    let h = PgHarness::new().await;
    let url = database_url().await;
    let keyed = |n: usize| {
        order_event("order.changed", n)
            .ordering_key("order-7")
            .build()
            .unwrap()
    };
    let ids = emit_ids(&h, vec![keyed(1), keyed(2), keyed(3)]).await;
    let store = h.store();
    let now = outbox_core::Clock::now(h.clock());
    let (lease, claimed) = OutboxStoreExt::claim_for(&store, "w", 10, Duration::from_secs(30), now)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1, "only the key's head is claimable");
    store
        .nack(
            lease.id,
            &[outbox_core::Failure::permanent(ids[0], "rejected")],
            now,
        )
        .await
        .unwrap();

    let status = outbox(&["status"], &url, h.schema());
    let row = status
        .lines()
        .find(|l| l.starts_with("order-7"))
        .unwrap_or_else(|| panic!("the parked key is not listed:\n{status}"));
    assert!(
        row.contains(&ids[0].to_string()) && row.trim_end().ends_with('2'),
        "{row}"
    );

    let (ok, out, err) = run(
        &["dead", "skip", &ids[1].to_string()],
        &url,
        h.schema(),
        &[],
    );
    assert!(!ok, "a waiting event is not a dead head: {out}");
    assert!(
        err.contains("cannot skip an event that is waiting"),
        "{err}"
    );
    let (ok, out, err) = run(
        &["dead", "skip", &ids[0].to_string()],
        &url,
        h.schema(),
        &[],
    );
    assert!(ok, "{err}");
    assert!(
        out.contains("the next event of \"order-7\" goes on"),
        "{out}"
    );
    let status = outbox(&["status"], &url, h.schema());
    assert!(!status.contains("parked ordering key"), "{status}");
    let next = OutboxStoreExt::fetch(&store, ids[1]).await.unwrap();
    assert_eq!(next.status(), Status::Pending);
    h.cleanup().await;
}

/// `outbox events list` filters (type prefix, status, newest first), pages with the `--after`
/// it prints, answers in JSON on request, and refuses a bad limit; `events show` prints one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_list_filters_pages_and_prints_json() {
    let h = PgHarness::new().await;
    let url = database_url().await;
    let typed = |t: &str, n: usize| order_event(t, n).build().unwrap();
    let ids = emit_ids(
        &h,
        vec![
            typed("order.paid", 1),
            typed("invoice.sent", 2),
            typed("order.shipped", 3),
            typed("order.paid", 4),
        ],
    )
    .await;

    let (ok, out, err) = run(
        &[
            "events",
            "list",
            "--type-prefix",
            "order.",
            "--newest-first",
            "--limit",
            "2",
        ],
        &url,
        h.schema(),
        &[],
    );
    assert!(ok, "{err}");
    let rows: Vec<&str> = out.lines().skip(1).collect();
    assert!(rows[0].starts_with(&ids[3].to_string()), "{out}");
    assert!(rows[1].starts_with(&ids[2].to_string()), "{out}");
    assert_eq!(rows[2], format!("more: --after {}", ids[2]), "{out}");

    let (ok, out, err) = run(
        &[
            "events",
            "list",
            "--type-prefix",
            "order.",
            "--newest-first",
            "--limit",
            "2",
            "--after",
            &ids[2].to_string(),
            "--json",
        ],
        &url,
        h.schema(),
        &[],
    );
    assert!(ok, "{err}");
    let json: serde_json::Value = serde_json::from_str(&out).unwrap();
    let listed: Vec<&str> = json["events"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["id"].as_str().unwrap())
        .collect();
    assert_eq!(listed, vec![ids[0].to_string()], "{out}");
    assert!(json["next_after"].is_null(), "the last page: {out}");

    let (ok, out, _) = run(
        &[
            "events",
            "list",
            "--status",
            "pending",
            "--type",
            "invoice.sent",
        ],
        &url,
        h.schema(),
        &[],
    );
    assert!(
        ok && out.contains(&ids[1].to_string()) && out.lines().count() == 2,
        "{out}"
    );
    let (ok, _, err) = run(&["events", "list", "--limit", "0"], &url, h.schema(), &[]);
    assert!(!ok && err.contains("--limit must be 1 to 10000"), "{err}");

    let shown = outbox(&["events", "show", &ids[1].to_string()], &url, h.schema());
    let event: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(event["event_type"], "invoice.sent");
    h.cleanup().await;
}

/// `outbox events retry|delete` act on the ids named or on every event matching the filters,
/// count first with --dry-run, and refuse to act on everything (or delete) unasked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_retry_and_delete_by_filter_with_dry_runs() {
    let h = PgHarness::new().await;
    let url = database_url().await;
    let typed = |t: &str, n: usize| order_event(t, n).max_attempts(1).build().unwrap();
    let ids = emit_ids(
        &h,
        vec![
            typed("order.paid", 1),
            typed("order.shipped", 2),
            typed("invoice.sent", 3),
        ],
    )
    .await;
    let store = h.store();
    let now = outbox_core::Clock::now(h.clock());
    let (lease, claimed) = OutboxStoreExt::claim_for(&store, "w", 2, Duration::from_secs(30), now)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 2);
    let failures: Vec<_> = ids[..2]
        .iter()
        .map(|id| outbox_core::Failure::permanent(*id, "rejected"))
        .collect();
    store.nack(lease.id, &failures, now).await.unwrap();
    let status = |id: EventId| {
        let store = store.clone();
        async move { store.get(id).await.unwrap().map(|e| e.status()) }
    };

    let (ok, out, err) = run(
        &["events", "retry", "--type-prefix", "order.", "--dry-run"],
        &url,
        h.schema(),
        &[],
    );
    assert!(ok && out.contains("would retry 2 event(s)"), "{out}{err}");
    assert_eq!(
        status(ids[0]).await,
        Some(Status::Dead),
        "a dry run changes nothing"
    );
    let (ok, out, err) = run(
        &["events", "retry", "--type-prefix", "order."],
        &url,
        h.schema(),
        &[],
    );
    assert!(ok && out.contains("retried 2 event(s)"), "{out}{err}");
    assert_eq!(status(ids[1]).await, Some(Status::Pending));

    let (ok, _, err) = run(
        &["events", "delete", "--type", "invoice.sent"],
        &url,
        h.schema(),
        &[],
    );
    assert!(!ok && err.contains("--yes"), "{err}");
    let (ok, _, err) = run(&["events", "delete", "--yes"], &url, h.schema(), &[]);
    assert!(!ok && err.contains("give a filter"), "{err}");
    let (ok, out, _) = run(
        &["events", "delete", "--type", "invoice.sent", "--dry-run"],
        &url,
        h.schema(),
        &[],
    );
    assert!(ok && out.contains("would delete 1 event(s)"), "{out}");
    assert_eq!(status(ids[2]).await, Some(Status::Pending));
    let (ok, out, err) = run(
        &["events", "delete", "--type", "invoice.sent", "--yes"],
        &url,
        h.schema(),
        &[],
    );
    assert!(ok && out.contains("deleted 1 event(s)"), "{out}{err}");
    assert_eq!(status(ids[2]).await, None);
    h.cleanup().await;
}

/// `outbox events retry ID` retries that event alone, not every dead event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_retry_by_id_retries_only_that_event() {
    let h = PgHarness::new().await;
    let url = database_url().await;
    let typed = |n: usize| {
        order_event("order.paid", n)
            .max_attempts(1)
            .build()
            .unwrap()
    };
    let ids = emit_ids(&h, vec![typed(1), typed(2)]).await;
    let store = h.store();
    let now = outbox_core::Clock::now(h.clock());
    let (lease, _) = OutboxStoreExt::claim_for(&store, "w", 2, Duration::from_secs(30), now)
        .await
        .unwrap();
    let failures: Vec<_> = ids
        .iter()
        .map(|id| outbox_core::Failure::permanent(*id, "rejected"))
        .collect();
    store.nack(lease.id, &failures, now).await.unwrap();

    let (ok, out, err) = run(
        &["events", "retry", &ids[0].to_string()],
        &url,
        h.schema(),
        &[],
    );
    assert!(ok && out.contains("retried 1 event(s)"), "{out}{err}");
    let status = |id| {
        let store = store.clone();
        async move { OutboxStoreExt::fetch(&store, id).await.unwrap().status() }
    };
    assert_eq!(status(ids[0]).await, Status::Pending);
    assert_eq!(status(ids[1]).await, Status::Dead, "not named, left dead");
    h.cleanup().await;
}

/// `outbox events pause|resume`: a paused type is claimed by no relay until resumed, and
/// `outbox status` lists it; `outbox events show` prints an event's failed attempts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_pause_resume_and_show_history() {
    let h = PgHarness::new().await;
    let url = database_url().await;
    let ids = emit_ids(
        &h,
        vec![
            order_event("order.paid", 1).build().unwrap(),
            order_event("user.created", 2).build().unwrap(),
        ],
    )
    .await;
    let (ok, out, err) = run(&["events", "pause", "order.paid"], &url, h.schema(), &[]);
    assert!(ok && out.contains("paused order.paid"), "{out}{err}");
    let (ok, out, _) = run(&["events", "pause", "order.paid"], &url, h.schema(), &[]);
    assert!(ok && out.contains("already paused"), "{out}");
    let (ok, _, err) = run(&["events", "pause", "Order Paid"], &url, h.schema(), &[]);
    assert!(!ok && err.contains("event_type"), "{err}");
    let (_, out, _) = run(&["events", "pause", "--json"], &url, h.schema(), &[]);
    let listed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(listed[0]["event_type"], "order.paid");
    let status = outbox(&["status"], &url, h.schema());
    assert!(
        status.contains("paused event type") && status.contains("order.paid"),
        "{status}"
    );

    let store = h.store();
    let now = outbox_core::Clock::now(h.clock());
    let (lease, claimed) =
        OutboxStoreExt::claim_for(&store, "w-9", 10, Duration::from_secs(30), now)
            .await
            .unwrap();
    assert_eq!(
        claimed.iter().map(|e| e.id).collect::<Vec<_>>(),
        vec![ids[1]]
    );
    store
        .nack(
            lease.id,
            &[outbox_core::Failure::retry(ids[1], "503 from sink", now)],
            now,
        )
        .await
        .unwrap();
    let shown = outbox(&["events", "show", &ids[1].to_string()], &url, h.schema());
    let shown: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(shown["history"]["attempts"][0]["worker"], "w-9");
    assert_eq!(shown["history"]["attempts"][0]["error"], "503 from sink");

    let (ok, out, err) = run(
        &["events", "resume", "order.paid", "--json"],
        &url,
        h.schema(),
        &[],
    );
    assert!(ok, "{err}");
    let resumed: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(resumed["was_paused"], true);
    let (_, claimed) = OutboxStoreExt::claim_for(&store, "w", 10, Duration::from_secs(30), now)
        .await
        .unwrap();
    let mut got: Vec<EventId> = claimed.iter().map(|e| e.id).collect();
    got.sort();
    assert_eq!(got, ids);
    h.cleanup().await;
}

/// `outbox admin` refuses weak or mixed credentials, serves the pages on loopback, and the
/// relay serves them under /admin when `[http] admin = true`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_is_served_by_its_command_and_by_the_relay() {
    let h = PgHarness::new().await;
    let url = database_url().await;
    let ids = emit_ids(&h, vec![order_event("order.paid", 1).build().unwrap()]).await;
    let (ok, _, err) = run(&["admin", "--admin-token", "short"], &url, h.schema(), &[]);
    assert!(!ok && err.contains("at least 16 characters"), "{err}");
    let (ok, _, err) = run(
        &["admin"],
        &url,
        h.schema(),
        &[
            ("OUTBOX_ADMIN_TOKEN", "0123456789abcdef0"),
            ("OUTBOX_ADMIN_USER", "ops"),
        ],
    );
    assert!(!ok && err.contains("not both"), "{err}");
    let (ok, _, err) = run(
        &["admin"],
        &url,
        h.schema(),
        &[("OUTBOX_ADMIN_USER", "ops")],
    );
    assert!(!ok && err.contains("needs --admin-password"), "{err}");

    let target = ["--database-url", url.as_str(), "--schema", h.schema()];
    let (admin, port, log) = admin_process(&target);
    assert!(log.iter().any(|l| l.contains("read-only")), "{log:?}");
    let page = get(port, &format!("/events/{}", ids[0]));
    assert!(
        page.starts_with("HTTP/1.0 200") || page.starts_with("HTTP/1.1 200"),
        "{page}"
    );
    assert!(
        page.contains("order.paid") && page.contains("read-only"),
        "{page}"
    );
    drop(admin);

    // Its queries are bounded: one that runs past the timeout is cancelled and the page says so.
    let mut args = vec!["--admin-query-timeout-ms", "200"];
    args.extend(target);
    let (admin, port, _) = admin_process(&args);
    let holder = h.lock_table().await;
    let page = get(port, "/events?aggregate_id=o-1");
    assert!(
        page.contains(" 504 ") && page.contains("ran longer"),
        "{page}"
    );
    holder.rollback().await.unwrap();
    drop(admin);

    let http = free_port();
    let (dir, file) = config_file(
        "admin",
        &format!(
            "schema = \"{}\"\n[http]\nlisten = \"127.0.0.1:{http}\"\nadmin = true\n[[routes]]\npattern = \"*\"\ntransport = \"stdout\"\n",
            h.schema()
        ),
    );
    let relay = relay_process(
        &file,
        &url,
        &[("OUTBOX_ADMIN_TOKEN", "0123456789abcdef-token")],
    );
    let login = get(http, "/admin");
    assert!(
        login.contains(" 303 ") && login.contains("/admin/login"),
        "{login}"
    );
    assert!(get(http, "/admin/").contains("location: /admin\r\n"));
    let page = get(http, "/admin/login");
    assert!(page.contains("Admin token"), "{page}");
    assert!(get(http, "/healthz").contains("ok"));
    drop(relay);
    let _ = std::fs::remove_dir_all(dir);
    h.cleanup().await;
}

/// A table at an older schema version than the build's is refused at start-up by the relay and
/// the admin, naming `outbox migrate` (the statements would fail on every claim otherwise).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outdated_schema_is_refused_with_the_fix() {
    let h = PgHarness::new().await;
    let url = database_url().await;
    let store = h.store();
    sqlx::query(sqlx::AssertSqlSafe(format!(
        "DELETE FROM \"{}\".outbox_migrations WHERE version = $1",
        h.schema()
    )))
    .bind(outbox_postgres::LATEST_VERSION)
    .execute(store.pool())
    .await
    .unwrap();
    let (dir, file) = config_file(
        "outdated",
        &format!(
            "schema = \"{}\"\n[[routes]]\npattern = \"*\"\ntransport = \"stdout\"\n",
            h.schema()
        ),
    );
    let (ok, stderr) = relay_once(&file, &url);
    let expected = format!(
        "schema version {}, this build needs {}",
        outbox_postgres::LATEST_VERSION - 1,
        outbox_postgres::LATEST_VERSION
    );
    assert!(!ok && stderr.contains(&expected), "{stderr}");
    assert!(stderr.contains("outbox migrate"), "{stderr}");
    let (ok, _, err) = run(&["admin", "--listen", "127.0.0.1:0"], &url, h.schema(), &[]);
    assert!(!ok && err.contains(&expected), "{err}");
    let _ = std::fs::remove_dir_all(dir);
    h.cleanup().await;
}

/// A `transport = "kafka"` route in `relay.toml`: the relay produces committed events to a
/// Kafka-protocol broker (tansu, started on a free port) and records them delivered only
/// once the broker acknowledged them; a topic the broker does not have kills its event with an
/// error naming the topic, and the other events still go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_route_delivers_through_the_relay() {
    let broker = outbox_tests::kafka::Broker::in_memory().await;
    broker.topic("outbox.event.upload", 3).await;

    let h = PgHarness::new().await;
    let url = database_url().await;
    let delivered: HashSet<EventId> = h
        .emit((0..5).map(traced_event).collect(), true)
        .await
        .unwrap()
        .iter()
        .map(|e| e.id())
        .collect();
    let lost = h
        .emit(
            vec![
                NewEvent::builder("order.paid", "order", "1")
                    .build()
                    .unwrap(),
            ],
            true,
        )
        .await
        .unwrap()[0]
        .id();
    let (dir, file) = config_file(
        "kafka-route",
        &format!(
            "schema = \"{}\"\n[relay]\npoll_interval_ms = 100\n\
             [[routes]]\npattern = \"*\"\ntransport = \"kafka\"\nbrokers = \"{}\"\n\
             properties = {{ \"topic.metadata.propagation.max.ms\" = \"1000\" }}\n",
            h.schema(),
            broker.brokers()
        ),
    );
    let _relay = Killed(
        Command::new(BIN)
            .args(["relay", "--config"])
            .arg(&file)
            .env("DATABASE_URL", &url)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let settled = async {
        loop {
            let c = h.store().count_by_status().await.unwrap();
            if c.delivered + c.dead == 6 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(60), settled)
        .await
        .expect("the relay settled nothing");
    for id in &delivered {
        let e = h.store().get(*id).await.unwrap().unwrap();
        assert_eq!(e.status(), Status::Delivered, "{e:?}");
    }
    let dead = h.store().get(lost).await.unwrap().unwrap();
    assert_eq!(dead.status(), Status::Dead);
    let error = dead.lifecycle.last_error.clone().unwrap_or_default();
    assert!(error.contains("outbox.event.order"), "{error}");
    let _ = std::fs::remove_dir_all(dir);
    h.cleanup().await;
}
