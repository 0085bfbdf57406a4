//! What the `outbox` binary's tests share: ports, config files, child processes and their logs.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader};
use std::time::Duration;

/// Runs `command` to the end and returns its standard output; panics with its standard error
/// if it failed.
pub fn stdout_of(command: &mut std::process::Command) -> String {
    let out = command.output().expect("run outbox");
    assert!(
        out.status.success(),
        "{command:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A plain HTTP/1.0 GET on loopback; returns the response text.
pub fn get(port: u16, path: &str) -> String {
    request(port, "GET", path, &[], "")
}

/// An HTTP/1.0 request on loopback with `headers` (name, value) and a form `body`; returns the
/// response text.
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    let mut head = format!("{method} {path} HTTP/1.0\r\nHost: localhost\r\n");
    for (name, value) in headers {
        head.push_str(&format!("{name}: {value}\r\n"));
    }
    if !body.is_empty() {
        head.push_str(&format!(
            "Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n",
            body.len()
        ));
    }
    write!(s, "{head}\r\n{body}").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out)
        .unwrap_or_else(|e| panic!("{method} {path}: no whole answer within 60 s: {e}"));
    out
}

/// Sends SIGTERM to `child` and waits for it to exit; its status and what it wrote.
pub async fn terminate(child: std::process::Child) -> std::process::Output {
    let pid = child.id().to_string();
    assert!(
        std::process::Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap()
}

/// A port free on loopback now.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Writes `text` as `relay.toml` in a fresh directory named after `name`; (directory, file).
pub fn config_file(name: &str, text: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = std::env::temp_dir().join(format!("outbox-{name}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("relay.toml");
    std::fs::write(&file, text).unwrap();
    (dir, file)
}

/// The lines of a child's standard error, as they come.
pub fn log_lines(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    lines_of(child.stderr.take().unwrap())
}

/// The lines of a child's standard output, as they come.
pub fn output_lines(child: &mut std::process::Child) -> std::sync::mpsc::Receiver<String> {
    lines_of(child.stdout.take().unwrap())
}

fn lines_of(from: impl std::io::Read + Send + 'static) -> std::sync::mpsc::Receiver<String> {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    rx
}

/// Reads `rx` into `log` until a line containing `what` has come `times` times (bounded).
pub fn wait_for(
    rx: &std::sync::mpsc::Receiver<String>,
    what: &str,
    times: usize,
    log: &mut Vec<String>,
) {
    while log.iter().filter(|l| l.contains(what)).count() < times {
        match rx.recv_timeout(Duration::from_secs(60)) {
            Ok(line) => log.push(line),
            Err(_) => panic!("no {what:?} ×{times} in the log:\n{}", log.join("\n")),
        }
    }
}

/// A child process killed (SIGKILL) and reaped when dropped, also when a test fails.
pub struct Killed(pub std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A child started as the leader of a process group of its own, killed with the whole group
/// when dropped: a program that starts others (ChromeDriver starts the browser) leaves none
/// behind, also when a test fails.
pub struct KilledGroup(pub std::process::Child);

impl KilledGroup {
    /// Spawns `command` in a new process group.
    pub fn spawn(command: &mut std::process::Command) -> Self {
        use std::os::unix::process::CommandExt;
        Self(command.process_group(0).spawn().unwrap())
    }
}

impl Drop for KilledGroup {
    fn drop(&mut self) {
        let group = format!("-{}", self.0.id());
        let _ = std::process::Command::new("kill")
            .args(["-KILL", "--", &group])
            .status();
        let _ = self.0.wait();
    }
}

/// The first of `name` on PATH or in the system directories; a missing one fails the test
/// naming the Debian `package` that brings it.
pub fn which(name: &str, package: &str) -> std::path::PathBuf {
    let path = std::env::var("PATH").unwrap_or_default();
    path.split(':')
        .chain(["/usr/sbin", "/usr/local/sbin", "/sbin"])
        .map(|d| std::path::Path::new(d).join(name))
        .find(|p| p.exists())
        .unwrap_or_else(|| panic!("{name} is not installed: apt-get install {package}"))
}

/// Kills the events `ids` through `store` (claimed, then failed for good with "no route"),
/// then runs `outbox dead list|show|revive` through `outbox` (the binary on the store's URL)
/// and checks each answer and the store after it.
pub async fn dead_commands_list_show_and_revive<S: outbox_core::OutboxStore>(
    store: &S,
    ids: &[outbox_core::EventId],
    outbox: impl Fn(&[&str]) -> String,
) {
    let now = chrono::Utc::now();
    let (lease, claimed) =
        outbox_core::OutboxStoreExt::claim_for(store, "w", 10, Duration::from_secs(30), now)
            .await
            .unwrap();
    assert_eq!(claimed.len(), ids.len());
    let failures: Vec<_> = ids
        .iter()
        .map(|id| outbox_core::Failure::permanent(*id, "no route"))
        .collect();
    store.nack(lease.id, &failures, now).await.unwrap();

    let list = outbox(&["dead", "list"]);
    for id in ids {
        assert!(list.contains(&id.to_string()), "{id} missing:\n{list}");
    }
    assert!(list.contains("no route"), "{list}");
    let shown = outbox(&["dead", "show", &ids[0].to_string()]);
    let json: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(json["lifecycle"]["status"], "dead");

    let one = outbox(&["dead", "revive", &ids[0].to_string()]);
    assert!(one.contains("revived 1 event"), "{one}");
    let rest = outbox(&["dead", "revive", "--type", "file.stored"]);
    assert!(
        rest.contains(&format!("revived {} event", ids.len() - 1)),
        "{rest}"
    );
    let counts = store.count_by_status().await.unwrap();
    assert_eq!((counts.pending, counts.dead), (ids.len() as u64, 0));
}

/// Runs `outbox events list|show|pause|resume|delete` through `outbox` (the binary on the
/// store's URL) on the pending events `ids` (of type `file.stored`), and checks each answer
/// and the store after it.
pub async fn events_commands_list_show_pause_and_delete<S: outbox_core::OutboxStore>(
    store: &S,
    ids: &[outbox_core::EventId],
    outbox: impl Fn(&[&str]) -> String,
) {
    let table = outbox(&["events", "list"]);
    for id in ids {
        assert!(table.contains(&id.to_string()), "{id} missing:\n{table}");
    }
    let listed: serde_json::Value = serde_json::from_str(&outbox(&[
        "events", "list", "--json", "--status", "pending",
    ]))
    .unwrap();
    assert_eq!(listed["events"].as_array().map(Vec::len), Some(ids.len()));
    let shown: serde_json::Value =
        serde_json::from_str(&outbox(&["events", "show", &ids[0].to_string()])).unwrap();
    assert_eq!(shown["id"], ids[0].to_string());
    assert!(shown["history"].is_object(), "{shown}");

    let paused = outbox(&["events", "pause", "file.stored"]);
    assert!(paused.contains("paused file.stored"), "{paused}");
    let types = store.paused_types().await.unwrap();
    assert_eq!(types.len(), 1);
    assert_eq!(types[0].event_type, "file.stored");
    let resumed = outbox(&["events", "resume", "file.stored"]);
    assert!(resumed.contains("resumed file.stored"), "{resumed}");
    assert!(store.paused_types().await.unwrap().is_empty());

    let deleted = outbox(&["events", "delete", &ids[0].to_string(), "--yes"]);
    assert!(deleted.contains("deleted 1 event(s)"), "{deleted}");
    assert!(store.get(ids[0]).await.unwrap().is_none());
    assert_eq!(
        store.count_by_status().await.unwrap().pending,
        ids.len() as u64 - 1
    );
}

/// Commits pending `file.stored` events with aggregate ids `from..from + n` through `store`'s
/// own transaction, in one transaction; their ids, in order.
pub async fn emit_uploads<S: outbox_core::Transactional>(
    store: &S,
    from: usize,
    n: usize,
) -> Vec<outbox_core::EventId> {
    use outbox_core::{Emit, Transaction};
    let mut tx = store.begin().await.unwrap();
    let mut ids = Vec::new();
    for i in from..from + n {
        let event = outbox_core::NewEvent::builder("file.stored", "upload", i.to_string())
            .build()
            .unwrap();
        ids.push(tx.emit(event).await.unwrap().id());
    }
    tx.commit().await.unwrap();
    ids
}

/// `outbox admin` on a free loopback port with `args` (the store's flags and any others),
/// started: the process (killed when dropped), its port, and its log up to "admin listening".
pub fn admin_process(args: &[&str]) -> (Killed, u16, Vec<String>) {
    let port = free_port();
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_outbox"));
    command
        .args(["admin", "--listen", &format!("127.0.0.1:{port}")])
        .args(args);
    let (admin, log) = started(command, "admin listening");
    (admin, port, log)
}

/// `outbox relay --config file` on the database `url`, with the variables `env`, started: the
/// process (killed when dropped), once its log says "relay started".
pub fn relay_process(file: &std::path::Path, url: &str, env: &[(&str, &str)]) -> Killed {
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_outbox"));
    command
        .args(["relay", "--config"])
        .arg(file)
        .env("DATABASE_URL", url)
        .envs(env.iter().copied());
    started(command, "relay started").0
}

/// `command` spawned with its log read, once the log says `marker`: the process (killed when
/// dropped) and its log up to there.
fn started(mut command: std::process::Command, marker: &str) -> (Killed, Vec<String>) {
    let mut child = command
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let lines = log_lines(&mut child);
    let process = Killed(child);
    let mut log = Vec::new();
    wait_for(&lines, marker, 1, &mut log);
    (process, log)
}

/// Searches the admin on `port` by aggregate id `id` and checks the search was cut short: a
/// 504 saying the query ran longer than allowed.
pub async fn search_is_cut_short(port: u16, id: &str) {
    let path = format!("/events?aggregate_id={id}");
    let page = tokio::task::spawn_blocking(move || get(port, &path))
        .await
        .unwrap();
    assert!(
        page.contains(" 504 ") && page.contains("ran longer"),
        "{page}"
    );
}

/// `ops:correct-horse-battery` for HTTP basic auth.
const BASIC: &str = "Basic b3BzOmNvcnJlY3QtaG9yc2UtYmF0dGVyeQ==";

/// The web admin on `store`, whose table `target` names to the binary (`--database-url …`
/// and, where not the default, `--table …`; `table_line` says the same in `relay.toml`):
/// `outbox admin` serves the pending events `ids` read-only, and a relay with `[http] admin =
/// true` serves the pages under `/admin` behind basic auth, where a pause made through a form
/// reaches the store.
pub async fn admin_pages_on<S: outbox_core::OutboxStore>(
    store: &S,
    ids: &[outbox_core::EventId],
    target: &[&str],
    table_line: &str,
) {
    let (admin, port, _) = admin_process(target);
    let page = get(port, &format!("/events/{}", ids[0]));
    assert!(page.split(' ').nth(1) == Some("200"), "{page}");
    assert!(
        page.contains("file.stored") && page.contains("read-only"),
        "{page}"
    );
    let list = get(port, "/events?status=pending");
    for id in ids {
        assert!(list.contains(&id.to_string()), "{id} missing:\n{list}");
    }
    drop(admin);

    let http = free_port();
    let (dir, file) = config_file(
        &format!("admin-{http}"),
        &format!(
            "{table_line}[relay]\npoll_interval_ms = 200\n[http]\nlisten = \"127.0.0.1:{http}\"\n\
             admin = true\n[[routes]]\npattern = \"*\"\ntransport = \"stdout\"\n"
        ),
    );
    let relay = relay_process(
        &file,
        target[1],
        &[
            ("OUTBOX_ADMIN_USER", "ops"),
            ("OUTBOX_ADMIN_PASSWORD", "correct-horse-battery"),
        ],
    );
    let path = format!("/admin/events/{}", ids[1]);
    let refused = get(http, &path);
    assert!(refused.split(' ').nth(1) == Some("401"), "{refused}");
    let page = request(http, "GET", &path, &[("Authorization", BASIC)], "");
    assert!(page.split(' ').nth(1) == Some("200"), "{page}");
    let csrf = page
        .split("name=\"csrf\" value=\"")
        .nth(1)
        .and_then(|rest| rest.split('"').next())
        .unwrap_or_else(|| panic!("no CSRF token on the page:\n{page}"));
    let paused = request(
        http,
        "POST",
        "/admin/types/pause",
        &[("Authorization", BASIC)],
        &format!("csrf={csrf}&type=file.stored"),
    );
    assert!(paused.split(' ').nth(1) == Some("303"), "{paused}");
    let types = store.paused_types().await.unwrap();
    assert_eq!(types.len(), 1, "{types:?}");
    assert_eq!(types[0].event_type, "file.stored");
    drop(relay);
    store
        .resume_type("file.stored", chrono::Utc::now())
        .await
        .unwrap();
    let _ = std::fs::remove_dir_all(dir);
}
