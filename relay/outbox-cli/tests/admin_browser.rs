//! The web admin in a real browser (headless Chromium through ChromeDriver), served by a
//! running relay on PostgreSQL, MySQL/MariaDB and SQLite: log in, filter the list, open an
//! event, retry a dead event and see the relay deliver it, and delete every event matching a
//! filter after the confirmation.
//!
//! Needs Debian's `chromium` and `chromium-driver` (`.ci/run` installs them). With
//! `OUTBOX_ADMIN_SCREENSHOTS=DIR` the pages are also saved there as PNG.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::{Command, Stdio};
use std::sync::mpsc::Receiver;
use std::time::Duration;

use common::{
    Killed, KilledGroup, config_file, free_port, log_lines, output_lines, wait_for, which,
};
use fantoccini::{Client, ClientBuilder, Locator};
use outbox_core::{EventId, Failure, NewEvent, OutboxStore, OutboxStoreExt, Status};
use outbox_tests::conformance::{Harness, emit_ids};
use outbox_tests::harness::{MySqlHarness, PgHarness, SqliteHarness, database_url, mysql_url};

const BIN: &str = env!("CARGO_BIN_EXE_outbox");
const TOKEN: &str = "browser-test-token-0123456789";

/// ChromeDriver on a free port, ready (it says so on standard output); dropped, it goes with
/// the browsers it started.
fn chromedriver() -> (KilledGroup, u16) {
    let driver = which("chromedriver", "chromium-driver");
    which("chromium", "chromium");
    let port = free_port();
    let mut driver = KilledGroup::spawn(
        Command::new(driver)
            .arg(format!("--port={port}"))
            .stdout(Stdio::piped())
            .stderr(Stdio::null()),
    );
    let lines = output_lines(&mut driver.0);
    let mut seen = Vec::new();
    wait_for(&lines, "started successfully", 1, &mut seen);
    (driver, port)
}

async fn browser(port: u16) -> Client {
    let mut capabilities = serde_json::Map::new();
    capabilities.insert(
        "goog:chromeOptions".to_owned(),
        serde_json::json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--window-size=1280,1000"],
        }),
    );
    let connector = hyper_util::client::legacy::connect::HttpConnector::new();
    ClientBuilder::new(connector)
        .capabilities(capabilities)
        .connect(&format!("http://127.0.0.1:{port}"))
        .await
        .expect("a ChromeDriver session")
}

/// Saves the page as `name`.png when screenshots are asked for.
async fn screenshot(client: &Client, name: &str) {
    if let Ok(dir) = std::env::var("OUTBOX_ADMIN_SCREENSHOTS") {
        let png = client.screenshot().await.unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(std::path::Path::new(&dir).join(format!("{name}.png")), png).unwrap();
    }
}

/// Waits (bounded) for the relay's stdout transport to print event `id`.
fn delivered(lines: &Receiver<String>, id: EventId, seen: &mut Vec<String>) {
    wait_for(lines, &id.to_string(), 1, seen);
}

/// The text of the element `css` selects, once the page shows one (a click that submits a
/// form returns before the next page has loaded).
async fn text(client: &Client, css: &str) -> String {
    arrived(client, css).await;
    client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no {css}: {e}"))
        .text()
        .await
        .unwrap()
}

/// Clicks the element `locator` finds.
async fn click(client: &Client, locator: Locator<'_>) {
    client
        .find(locator)
        .await
        .unwrap_or_else(|e| panic!("nothing to click: {e}"))
        .click()
        .await
        .unwrap();
}

/// Types `text` into the field `css` selects.
async fn fill(client: &Client, css: &str, text: &str) {
    client
        .find(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("no field {css}: {e}"))
        .send_keys(text)
        .await
        .unwrap();
}

/// Waits (bounded) until the page has an element `css` selects.
async fn arrived(client: &Client, css: &str) {
    client
        .wait()
        .at_most(Duration::from_secs(30))
        .for_element(Locator::Css(css))
        .await
        .unwrap_or_else(|e| panic!("the page never showed {css}: {e}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_filters_opens_retries_and_bulk_deletes_in_a_browser() {
    let h = PgHarness::new().await;
    let url = database_url().await;
    let table = format!("schema = \"{}\"\n", h.schema());
    an_operator_at_work(&h, &url, &table, true).await;
    h.cleanup().await;
}

/// The same on SQLite: the relay and its admin share the file with this process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_does_the_same_on_sqlite() {
    let h = SqliteHarness::new().await;
    let url = format!("sqlite://{}", h.path().display());
    an_operator_at_work(&h, &url, "", false).await;
    h.cleanup().await;
}

/// The same on MySQL/MariaDB, the admin on a pool of its own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_does_the_same_on_mysql() {
    let h = MySqlHarness::new().await;
    let table = format!("table = \"{}\"\n", h.store().config().table());
    an_operator_at_work(&h, &mysql_url(), &table, false).await;
    h.cleanup().await;
}

/// The operator's session on the store `h` holds, with a relay on `url` (`table` says where
/// the table is in `relay.toml`); `shots` saves the pages when screenshots are asked for.
async fn an_operator_at_work<H: Harness>(h: &H, url: &str, table: &str, shots: bool) {
    let store = h.store();
    // One dead event (killed before the relay starts), three to delete by filter later, two
    // others; the relay delivers all the live ones.
    let event = |t: &str, n: usize| {
        NewEvent::builder(t, "order", format!("o-{n}"))
            .payload(serde_json::json!({ "n": n, "amount": 1250 }))
            .max_attempts(1)
            .build()
            .unwrap()
    };
    let dead = emit_ids(h, vec![event("order.paid", 1)]).await[0];
    let now = outbox_core::Clock::now(h.clock());
    let (lease, claimed) = store
        .claim_for("worker-7", 1, Duration::from_secs(30), now)
        .await
        .unwrap();
    assert_eq!(claimed[0].id, dead);
    store
        .nack(
            lease.id,
            &[Failure::permanent(dead, "422 from sink: amount missing")],
            now,
        )
        .await
        .unwrap();
    let audit = emit_ids(h, (2..5).map(|n| event("audit.logged", n)).collect()).await;
    let users = emit_ids(h, (5..7).map(|n| event("user.created", n)).collect()).await;

    let http = free_port();
    // A directory of this run's own: the three stores' sessions run side by side.
    let (dir, file) = config_file(
        &format!("browser-{http}"),
        &format!(
            "{table}[relay]\npoll_interval_ms = 100\n[http]\nlisten = \"127.0.0.1:{http}\"\nadmin = true\n\
             [[routes]]\npattern = \"*\"\ntransport = \"stdout\"\n"
        ),
    );
    let mut child = Command::new(BIN)
        .args(["relay", "--config"])
        .arg(&file)
        .env("DATABASE_URL", url)
        .env("OUTBOX_ADMIN_TOKEN", TOKEN)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deliveries = output_lines(&mut child);
    let logs = log_lines(&mut child);
    let _relay = Killed(child);
    let (mut seen, mut log) = (Vec::new(), Vec::new());
    wait_for(&logs, "relay started", 1, &mut log);
    for id in audit.iter().chain(&users) {
        delivered(&deliveries, *id, &mut seen);
    }

    let (_driver, driver_port) = chromedriver();
    let client = browser(driver_port).await;
    let base = format!("http://127.0.0.1:{http}/admin");

    // Logging in.
    client.goto(&base).await.unwrap();
    assert!(
        client
            .current_url()
            .await
            .unwrap()
            .path()
            .ends_with("/admin/login")
    );
    fill(&client, "input[name=token]", TOKEN).await;
    click(&client, Locator::Css("form button[type=submit]")).await;
    arrived(&client, "#counts").await;
    assert_eq!(text(&client, "h1").await, "Overview");
    assert_eq!(text(&client, "[data-status=dead] .value").await, "1");
    assert!(
        client
            .source()
            .await
            .unwrap()
            .contains("422 from sink: amount missing")
    );
    if shots {
        screenshot(&client, "admin-overview").await;
    }

    // Filtering the list by status.
    client.goto(&format!("{base}/events")).await.unwrap();
    client
        .find(Locator::Css("select[name=status]"))
        .await
        .unwrap()
        .select_by_value("dead")
        .await
        .unwrap();
    click(&client, Locator::Css("form.filters button[type=submit]")).await;
    arrived(&client, "select[name=status] option[value=dead][selected]").await;
    let rows = client
        .find_all(Locator::Css("table.events tbody tr"))
        .await
        .unwrap();
    assert_eq!(rows.len(), 1, "one dead event");
    if shots {
        screenshot(&client, "admin-events").await;
    }

    // Opening it, retrying it, and seeing the relay deliver it.
    click(&client, Locator::LinkText(&dead.to_string())).await;
    assert_eq!(text(&client, "#status").await, "dead");
    let page = client.source().await.unwrap();
    assert!(
        page.contains("worker-7") && page.contains("amount missing"),
        "the failed attempt"
    );
    if shots {
        screenshot(&client, "admin-event").await;
    }
    click(&client, Locator::Css("#retry")).await;
    assert!(text(&client, ".flash").await.contains("Retried"));
    delivered(&deliveries, dead, &mut seen);
    client.refresh().await.unwrap();
    // The delivery is printed before its acknowledgement commits: read until it shows.
    let mut status = text(&client, "#status").await;
    for _ in 0..50 {
        if status == "delivered" {
            break;
        }
        tokio::task::yield_now().await;
        client.refresh().await.unwrap();
        status = text(&client, "#status").await;
    }
    assert_eq!(status, "delivered");

    // Deleting every event matching a filter, after the confirmation says how many.
    client.goto(&format!("{base}/events")).await.unwrap();
    fill(&client, "input[name=type]", "audit.logged").await;
    click(&client, Locator::Css("form.filters button[type=submit]")).await;
    arrived(&client, "input[name=type][value='audit.logged']").await;
    click(
        &client,
        Locator::XPath("//button[contains(., 'Delete all matching')]"),
    )
    .await;
    assert!(
        text(&client, "#matching")
            .await
            .starts_with("3 event(s) match")
    );
    assert_eq!(
        store.list(&Default::default()).await.unwrap().events.len(),
        6
    );
    click(&client, Locator::Css("#confirm")).await;
    assert!(text(&client, ".flash").await.contains("Deleted 3 event(s)"));
    for id in &audit {
        assert!(store.get(*id).await.unwrap().is_none());
    }
    for id in &users {
        let event = store.get(*id).await.unwrap().unwrap();
        assert_eq!(event.status(), Status::Delivered);
    }
    client.close().await.unwrap();
    let _ = std::fs::remove_dir_all(dir);
}
