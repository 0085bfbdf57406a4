//! The `outbox` binary on SQLite: the backend chosen by the URL's scheme; migrate, status and
//! a relay process sharing the database file with this one, delivering what this process
//! commits before and while it runs, serving its endpoints and draining on SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use outbox_core::{EventId, OutboxStore};
use outbox_sqlite::{SqliteConfig, SqliteStore};
use outbox_tests::harness::{remove_sqlite_file, sqlite_file};

mod common;

use common::{
    admin_pages_on, dead_commands_list_show_and_revive, emit_uploads,
    events_commands_list_show_pause_and_delete, free_port, stdout_of,
};

const BIN: &str = env!("CARGO_BIN_EXE_outbox");

fn outbox(args: &[&str], url: &str) -> String {
    stdout_of(Command::new(BIN).args(args).args(["--database-url", url]))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_status_and_a_relay_on_sqlite() {
    let path = sqlite_file();
    let url = format!("sqlite://{}", path.display());
    let applied = outbox(&["migrate"], &url);
    assert!(applied.contains("applied 1 migration(s)"), "{applied}");
    assert!(outbox(&["migrate"], &url).contains("applied 0 migration(s)"));

    let store = SqliteStore::connect(&url, SqliteConfig::new())
        .await
        .unwrap();
    let mut committed: HashSet<EventId> = emit_uploads(&store, 0, 5).await.into_iter().collect();
    let status = outbox(&["status"], &url);
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("pending") && l.trim_end().ends_with(" 5")),
        "{status}"
    );

    let port = free_port();
    let dir = std::env::temp_dir().join(format!("outbox-sqlite-{port}"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("relay.toml");
    std::fs::write(
        &config,
        format!(
            "[relay]\nworkers = 2\npoll_interval_ms = 200\n[http]\nlisten = \"127.0.0.1:{port}\"\n\
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
    let stdout = child.stdout.take().unwrap();
    let (first, rest) = tokio::sync::oneshot::channel();
    let lines = tokio::task::spawn_blocking(move || {
        let mut seen = HashSet::new();
        let mut first = Some(first);
        for line in BufReader::new(stdout).lines() {
            let v: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
            seen.insert(v["id"].as_str().unwrap().parse::<EventId>().unwrap());
            if seen.len() == 5
                && let Some(first) = first.take()
            {
                let _ = first.send(());
            }
            if seen.len() == 10 {
                break;
            }
        }
        seen
    });
    // Five more, committed by this process while the relay runs: found by its polling.
    tokio::time::timeout(Duration::from_secs(60), rest)
        .await
        .expect("relay delivered nothing")
        .unwrap();
    committed.extend(emit_uploads(&store, 5, 5).await);
    let seen = tokio::time::timeout(Duration::from_secs(60), lines)
        .await
        .expect("relay did not deliver what was committed while it ran")
        .unwrap();
    assert_eq!(seen, committed);
    // The acknowledgement follows the print (another process's; a bounded guard, not a pace).
    let acked = async {
        while store.count_by_status().await.unwrap().delivered < 10 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(Duration::from_secs(30), acked)
        .await
        .expect("the relay never acknowledged what it printed");
    let metrics = tokio::task::spawn_blocking(move || common::get(port, "/metrics"))
        .await
        .unwrap();
    assert!(
        metrics.contains("outbox_events{status=\"delivered\"} 10"),
        "{metrics}"
    );
    let out = common::terminate(child).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "relay exit {:?}: {stderr}",
        out.status
    );
    assert!(stderr.contains("relay started on SQLite"), "{stderr}");
    assert!(stderr.contains("relay stopped"), "{stderr}");

    // Stream mode is PostgreSQL's; asked for on SQLite it is refused by name.
    std::fs::write(
        &config,
        "[relay]\nmode = \"stream\"\n[[routes]]\npattern = \"*\"\ntransport = \"stdout\"\n",
    )
    .unwrap();
    let refused = Command::new(BIN)
        .args(["migrate", "--config"])
        .arg(&config)
        .env("DATABASE_URL", &url)
        .output()
        .unwrap();
    assert!(!refused.status.success());
    assert!(
        String::from_utf8_lossy(&refused.stderr).contains("relay.mode = \"claim\""),
        "{}",
        String::from_utf8_lossy(&refused.stderr)
    );

    store.pool().close().await;
    let down = outbox(&["migrate", "--down", "--yes"], &url);
    assert!(down.contains("reverted 1 migration(s)"), "{down}");
    let _ = std::fs::remove_dir_all(dir);
    remove_sqlite_file(&path);
}

/// `outbox dead` lists, shows and revives dead events on SQLite too (the URL's scheme picks
/// the store).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_events_are_listed_shown_and_revived_on_sqlite() {
    let (path, url, store, ids) = three_events().await;
    dead_commands_list_show_and_revive(&store, &ids, |args| outbox(args, &url)).await;
    store.pool().close().await;
    remove_sqlite_file(&path);
}

/// A fresh file, made by `outbox migrate`, its URL and store, and three pending `file.stored`
/// events in it.
async fn three_events() -> (std::path::PathBuf, String, SqliteStore, Vec<EventId>) {
    let path = sqlite_file();
    let url = format!("sqlite://{}", path.display());
    outbox(&["migrate"], &url);
    let store = SqliteStore::connect(&url, SqliteConfig::new())
        .await
        .unwrap();
    let ids = emit_uploads(&store, 0, 3).await;
    (path, url, store, ids)
}

/// `outbox events` lists, shows, pauses, resumes and deletes on SQLite too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_listed_shown_paused_and_deleted_on_sqlite() {
    let (path, url, store, ids) = three_events().await;
    events_commands_list_show_pause_and_delete(&store, &ids, |args| outbox(args, &url)).await;
    store.pool().close().await;
    remove_sqlite_file(&path);
}

/// A delete without `--yes` is refused before anything connects: here the database's
/// directory does not exist, and the answer is still the missing `--yes`.
#[test]
fn a_delete_without_yes_is_refused_before_connecting() {
    let refused = Command::new(BIN)
        .args(["events", "delete", "--all", "--database-url"])
        .arg("sqlite:///nonexistent-outbox-dir/app.db")
        .output()
        .unwrap();
    assert!(!refused.status.success());
    let stderr = String::from_utf8_lossy(&refused.stderr);
    assert!(stderr.contains("add --yes"), "{stderr}");
}

/// The web admin on SQLite: `outbox admin` and the relay's `/admin` serve the pages, and a
/// change made through the relay's admin reaches the file; a search that runs past
/// `--admin-query-timeout-ms` is interrupted and answered with a 504 saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_is_served_on_sqlite() {
    let (path, url, store, ids) = three_events().await;
    admin_pages_on(&store, &ids, &["--database-url", url.as_str()], "").await;

    // 98,304 events: a search by aggregate id (no index covers it) reads every one, far
    // longer than the 1 ms the admin is given.
    copy_events(&store, 15).await;
    let (admin, port, _) = common::admin_process(&[
        "--admin-query-timeout-ms",
        "1",
        "--database-url",
        url.as_str(),
    ]);
    common::search_is_cut_short(port, "none").await;
    drop(admin);
    store.pool().close().await;
    remove_sqlite_file(&path);
}

/// Doubles the events in `store`'s table `times` times, each copy under a new id.
async fn copy_events(store: &SqliteStore, times: u32) {
    let table = store.config().table();
    let columns: Vec<String> = sqlx::query_scalar("SELECT name FROM pragma_table_info(?)")
        .bind(table)
        .fetch_all(store.pool())
        .await
        .unwrap();
    let copied = columns
        .iter()
        .map(|c| match c.as_str() {
            "id" => "randomblob(16)",
            "idempotency_key" => "NULL",
            other => other,
        })
        .collect::<Vec<_>>()
        .join(", ");
    let sql = format!(
        "INSERT INTO \"{table}\" ({}) SELECT {copied} FROM \"{table}\"",
        columns.join(", ")
    );
    for _ in 0..times {
        sqlx::query(sqlx::AssertSqlSafe(sql.clone()))
            .execute(store.pool())
            .await
            .unwrap();
    }
}

/// A mistyped path is an error naming the fix, and no command but `migrate` leaves a new,
/// empty database file behind; a file without the table is refused the same way.
#[test]
fn a_missing_database_file_is_refused_not_created() {
    let path = sqlite_file();
    let url = format!("sqlite://{}", path.display());
    let (dir, config) = common::config_file(
        "missing-file",
        "[[routes]]\npattern = \"*\"\ntransport = \"stdout\"\n",
    );
    let config = config.display().to_string();
    // Runs `outbox` with `args` on the URL; its standard error, once it has failed.
    let refused = |args: &[&str]| {
        let out = Command::new(BIN)
            .args(args)
            .args(["--database-url", &url])
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        assert!(!out.status.success(), "{args:?}: {stderr}");
        stderr
    };
    for args in [
        &["status"][..],
        &["events", "list"],
        &["dead", "list"],
        &["admin", "--listen", "127.0.0.1:0"],
        &["relay", "--config", &config],
        &["migrate", "--down", "--yes"],
    ] {
        let stderr = refused(args);
        assert!(
            stderr.contains("no SQLite database at") && stderr.contains("outbox migrate"),
            "{args:?}: {stderr}"
        );
        assert!(!path.exists(), "{args:?} created {}", path.display());
    }
    // An empty file: every command names the migration it needs.
    std::fs::write(&path, b"").unwrap();
    for args in [&["events", "list"][..], &["dead", "list"]] {
        let stderr = refused(args);
        assert!(
            stderr.contains("run `outbox migrate`"),
            "{args:?}: {stderr}"
        );
    }
    remove_sqlite_file(&path);
    let _ = std::fs::remove_dir_all(dir);
}
