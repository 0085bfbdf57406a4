//! The `outbox` binary on MySQL/MariaDB: the backend chosen by the URL's scheme; migrate,
//! status and a relay process that delivers committed events, serves its endpoints and drains
//! on SIGTERM.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use outbox_core::{EventId, OutboxStore};
use outbox_mysql::{MySqlConfig, MySqlStore};
use outbox_tests::harness::{mysql_pool, mysql_url};
use sqlx::Connection;

mod common;

use common::{
    admin_pages_on, admin_process, dead_commands_list_show_and_revive, emit_uploads,
    events_commands_list_show_pause_and_delete, free_port, stdout_of,
};

const BIN: &str = env!("CARGO_BIN_EXE_outbox");

fn outbox(args: &[&str], url: &str, table: &str) -> String {
    stdout_of(
        Command::new(BIN)
            .args(args)
            .args(["--database-url", url, "--table", table]),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migrate_status_and_a_relay_on_mysql() {
    let table = format!("t_{}", uuid::Uuid::now_v7().simple());
    // MariaDB's scheme is taken as well as MySQL's.
    let url = mysql_url().replacen("mysql://", "mariadb://", 1);
    let applied = outbox(&["migrate"], &url, &table);
    assert!(applied.contains("applied 1 migration(s)"), "{applied}");
    assert!(outbox(&["migrate"], &url, &table).contains("applied 0 migration(s)"));

    let store =
        MySqlStore::new(mysql_pool(2).await, MySqlConfig::new().with_table(&table)).unwrap();
    let committed: HashSet<EventId> = emit_uploads(&store, 0, 5).await.into_iter().collect();
    let status = outbox(&["status"], &url, &table);
    assert!(
        status
            .lines()
            .any(|l| l.starts_with("pending") && l.trim_end().ends_with(" 5")),
        "{status}"
    );

    let port = free_port();
    let dir = std::env::temp_dir().join(format!("outbox-mysql-{table}"));
    std::fs::create_dir_all(&dir).unwrap();
    let config = dir.join("relay.toml");
    std::fs::write(
        &config,
        format!(
            "table = \"{table}\"\n[relay]\nworkers = 2\npoll_interval_ms = 200\n[http]\nlisten = \"127.0.0.1:{port}\"\n\
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
    let lines = tokio::task::spawn_blocking(move || {
        let mut seen = HashSet::new();
        for line in BufReader::new(stdout).lines() {
            let v: serde_json::Value = serde_json::from_str(&line.unwrap()).unwrap();
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
    // The acknowledgement follows the print (another process's; a bounded guard, not a pace).
    let acked = async {
        while store.count_by_status().await.unwrap().delivered < 5 {
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
        metrics.contains("outbox_events{status=\"delivered\"} 5"),
        "{metrics}"
    );
    let out = common::terminate(child).await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "relay exit {:?}: {stderr}",
        out.status
    );
    assert!(stderr.contains("relay stopped"), "{stderr}");

    // Stream mode is PostgreSQL's; asked for on MySQL it is refused by name.
    std::fs::write(
        &config,
        format!("table = \"{table}\"\n[relay]\nmode = \"stream\"\n[[routes]]\npattern = \"*\"\ntransport = \"stdout\"\n"),
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

    let down = outbox(&["migrate", "--down", "--yes"], &url, &table);
    assert!(down.contains("reverted 1 migration(s)"), "{down}");
    let _ = std::fs::remove_dir_all(dir);
}

/// A table of its own, made by `outbox migrate`, its store, and three pending `file.stored`
/// events in it.
async fn three_events(url: &str, table: &str) -> (MySqlStore, Vec<EventId>) {
    outbox(&["migrate"], url, table);
    let store = MySqlStore::new(mysql_pool(2).await, MySqlConfig::new().with_table(table)).unwrap();
    let ids = emit_uploads(&store, 0, 3).await;
    (store, ids)
}

/// `outbox dead` lists, shows and revives dead events on MySQL/MariaDB too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_events_are_listed_shown_and_revived_on_mysql() {
    let table = format!("t_{}", uuid::Uuid::now_v7().simple());
    let url = mysql_url();
    let (store, ids) = three_events(&url, &table).await;
    dead_commands_list_show_and_revive(&store, &ids, |args| outbox(args, &url, &table)).await;
    let down = outbox(&["migrate", "--down", "--yes"], &url, &table);
    assert!(down.contains("reverted 1 migration(s)"), "{down}");
}

/// `outbox events` lists, shows, pauses, resumes and deletes on MySQL/MariaDB too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_are_listed_shown_paused_and_deleted_on_mysql() {
    let table = format!("t_{}", uuid::Uuid::now_v7().simple());
    let url = mysql_url();
    let (store, ids) = three_events(&url, &table).await;
    events_commands_list_show_pause_and_delete(&store, &ids, |args| outbox(args, &url, &table))
        .await;
    let down = outbox(&["migrate", "--down", "--yes"], &url, &table);
    assert!(down.contains("reverted 1 migration(s)"), "{down}");
}

/// The web admin on MySQL/MariaDB: `outbox admin` and the relay's `/admin` serve the pages,
/// and a query that runs past `--admin-query-timeout-ms` is interrupted by the server and
/// answered with a 504 saying so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_is_served_on_mysql() {
    let table = format!("t_{}", uuid::Uuid::now_v7().simple());
    let url = mysql_url();
    let (store, ids) = three_events(&url, &table).await;
    let target = ["--database-url", url.as_str(), "--table", table.as_str()];
    admin_pages_on(&store, &ids, &target, &format!("table = \"{table}\"\n")).await;

    let mut args = vec!["--admin-query-timeout-ms", "200"];
    args.extend(target);
    let (admin, port, _) = admin_process(&args);
    // Another session holds the table: the admin's search waits for it until the server
    // interrupts the search.
    let mut holder = sqlx::MySqlConnection::connect(&url).await.unwrap();
    sqlx::raw_sql(sqlx::AssertSqlSafe(format!("LOCK TABLES `{table}` WRITE")))
        .execute(&mut holder)
        .await
        .unwrap();
    common::search_is_cut_short(port, "1").await;
    sqlx::raw_sql("UNLOCK TABLES")
        .execute(&mut holder)
        .await
        .unwrap();
    drop(admin);

    let down = outbox(&["migrate", "--down", "--yes"], &url, &table);
    assert!(down.contains("reverted 1 migration(s)"), "{down}");
}
