//! Developer tasks for the outbox workspace, run as `cargo xtask <task>`.
//!
//! - `cargo xtask ci`: formatting check, clippy with warnings denied, rustdoc (all features,
//!   `--cfg docsrs`) with warnings denied, `cargo deny` (licences, bans, sources), the uploads
//!   example, every test, the PostgreSQL suites again on throwaway containers (testcontainers),
//!   the quick chaos test on PostgreSQL, MariaDB and SQLite, then `cargo package` of every
//!   published crate. What CI runs.
//! - `cargo xtask test`: every test in the workspace.
//! - `cargo xtask bench [--quick]`: release-mode benchmarks, the outbox beside raw SQL.
//! - `cargo xtask chaos [--quick] [--database postgres|mysql|sqlite]`: relays killed at random,
//!   the database crashed and the broker stopped while events are emitted; then nothing lost,
//!   nothing rolled back delivered (`tests/src/bin/outbox-chaos.rs`). `--quick` (about half a
//!   minute each) on every database is part of `ci`.

mod tidy;

use std::env;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    about = "Developer tasks for the outbox workspace"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Everything CI checks: fmt, clippy (-D warnings), rustdoc (-D warnings), all tests.
    Ci,
    /// Release-mode benchmarks against PostgreSQL (DATABASE_URL) and the memory store; writes
    /// target/outbox-bench/summary.json.
    Bench {
        /// Smaller counts, for a quick check.
        #[arg(long)]
        quick: bool,
        /// Measure the real transports (NATS, RabbitMQ, Redis, webhook, Kafka on loopback) instead.
        #[arg(long)]
        transports: bool,
        /// Run only these workloads, comma-separated (memory-store, emit, relay, latency,
        /// growth, rss).
        #[arg(long)]
        only: Option<String>,
    },
    /// The chaos test: its own database (a PostgreSQL cluster, a MariaDB server or a SQLite
    /// file) and NATS server on spare ports, several relay processes killed at random, one
    /// database crash (no server to crash on SQLite), one broker outage; checks nothing was
    /// lost or delivered from a rolled-back transaction. Needs root, postgresql,
    /// mariadb-server and nats-server.
    Chaos {
        /// 20,000 events in about 30 s (the full run: 100,000).
        #[arg(long)]
        quick: bool,
        /// Extra arguments for the chaos program (`--database mysql`, `--events N`, `--seed S`).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Runs every test in the workspace; extra arguments go to `cargo test`.
    Test {
        /// Passed through to `cargo test`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.task {
        Task::Ci => ci(),
        Task::Test { args } => test(&args),
        Task::Chaos { quick, args } => chaos(quick, &args),
        Task::Bench {
            quick,
            transports,
            only,
        } => bench(quick, transports, only.as_deref()),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("xtask: {message}");
            ExitCode::FAILURE
        }
    }
}

fn ci() -> Result<(), String> {
    cargo(&["fmt", "--all", "--", "--check"], &[])?;
    // The pgmq benchmark peer lives outside the workspace (`cargo xtask bench` builds it).
    cargo(
        &[
            "fmt",
            "--manifest-path",
            "bench/pgmq-peer/Cargo.toml",
            "--",
            "--check",
        ],
        &[],
    )?;
    // The workspace, then the examples behind features (the consumer needs PostgreSQL and NATS
    // to run, not to lint).
    for selection in [
        &["--workspace"][..],
        &[
            "-p",
            "outbox-examples",
            "--features",
            "consumer,mysql,sqlite",
        ],
    ] {
        let mut args = vec!["clippy"];
        args.extend(selection);
        args.extend(["--all-targets", "--locked", "--", "-D", "warnings"]);
        cargo(&args, &[])?;
    }
    // As docs.rs builds them: every feature, `--cfg docsrs`.
    cargo(
        &[
            "doc",
            "--workspace",
            "--all-features",
            "--no-deps",
            "--locked",
        ],
        &[("RUSTDOCFLAGS", "--cfg docsrs -D warnings")],
    )?;
    deny()?;
    example()?;
    test(&[])?;
    containers()?;
    for database in ["postgres", "mysql", "sqlite"] {
        chaos(true, &["--database".to_owned(), database.to_owned()])?;
    }
    package()
}

/// The PostgreSQL suites once more, each test process on a throwaway container
/// (`OUTBOX_TEST_DATABASE=container`; the image is `OUTBOX_TEST_IMAGE`, which `.ci/run` builds
/// locally), then removes the containers the test processes kept.
fn containers() -> Result<(), String> {
    let result = cargo(
        &[
            "test",
            "--locked",
            "-p",
            "outbox-tests",
            "--test",
            "conformance_postgres",
            "--test",
            "postgres",
            "--test",
            "differential",
        ],
        &[("OUTBOX_TEST_DATABASE", "container")],
    );
    let leftovers = Command::new("docker")
        .args(["ps", "-aq", "--filter", "label=org.outbox.test"])
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
        .unwrap_or_default();
    let ids: Vec<&str> = leftovers.split_whitespace().collect();
    if !ids.is_empty() {
        let _ = Command::new("docker")
            .arg("rm")
            .arg("-f")
            .args(&ids)
            .output();
    }
    result
}

/// Builds the `outbox` binary, then runs the chaos program against it.
fn chaos(quick: bool, extra: &[String]) -> Result<(), String> {
    cargo(&["build", "--locked", "-p", "outbox-cli"], &[])?;
    let target = env::var_os("CARGO_TARGET_DIR")
        .map_or_else(|| workspace_root().join("target"), PathBuf::from);
    let outbox = target.join("debug").join("outbox");
    let outbox = outbox.to_string_lossy();
    let mut args = vec![
        "run",
        "--locked",
        "-p",
        "outbox-tests",
        "--bin",
        "outbox-chaos",
        "--",
        "--outbox",
        &outbox,
    ];
    if quick {
        args.push("--quick");
    }
    args.extend(extra.iter().map(String::as_str));
    cargo(&args, &[])
}

/// The dependency tree's licences, banned crates and sources (`deny.toml`). Advisories need the
/// RustSec database from the network and are checked where it can be reached.
fn deny() -> Result<(), String> {
    let args = [
        "deny",
        "--all-features",
        "check",
        "--hide-inclusion-graph",
        "licenses",
        "bans",
        "sources",
    ];
    cargo(&args, &[]).map_err(|e| {
        format!(
            "{e} (cargo-deny missing? `cargo install cargo-deny --locked`; .ci/run installs it)"
        )
    })
}

/// Packages every published crate and builds each from its package, in dependency order: what
/// `cargo publish` would upload, proven to compile on its own.
fn package() -> Result<(), String> {
    // Verification builds our packages as registry crates, and cargo treats a registry crate of
    // the same name and version as unchanged: in a target directory of its own, drop every
    // earlier build of ours (third-party builds stay, so later runs are quick), and cargo's
    // unpacked copies of our packages, which it reuses by name and version too.
    let target = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"))
        .join("package-check");
    let ours = |name: &str| name.starts_with("outbox-") || name.starts_with("liboutbox_");
    let mut stale: Vec<PathBuf> = vec![target.join("package")];
    for dir in [".fingerprint", "deps", "build"] {
        let dir = target.join("debug").join(dir);
        for entry in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            if ours(&entry.file_name().to_string_lossy()) {
                stale.push(entry.path());
            }
        }
    }
    let cargo_home = env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .or_else(|| env::var_os("HOME").map(|h| PathBuf::from(h).join(".cargo")));
    if let Some(home) = cargo_home {
        for kind in ["src", "cache"] {
            let registries = home.join("registry").join(kind);
            for registry in std::fs::read_dir(&registries)
                .into_iter()
                .flatten()
                .flatten()
            {
                for entry in std::fs::read_dir(registry.path())
                    .into_iter()
                    .flatten()
                    .flatten()
                {
                    if ours(&entry.file_name().to_string_lossy()) {
                        stale.push(entry.path());
                    }
                }
            }
        }
    }
    for path in stale.iter().filter(|p| p.exists()) {
        let removed = if path.is_dir() {
            std::fs::remove_dir_all(path)
        } else {
            std::fs::remove_file(path)
        };
        removed.map_err(|e| format!("cannot clear {}: {e}", path.display()))?;
    }
    let unpublished = ["outbox-tests", "outbox-bench", "outbox-examples", "xtask"];
    let mut args = vec!["package", "--workspace", "--locked", "--allow-dirty"];
    for crate_name in unpublished {
        args.extend(["--exclude", crate_name]);
    }
    let target = target.to_string_lossy().into_owned();
    cargo(&args, &[("CARGO_TARGET_DIR", target.as_str())])
}

/// Runs the README's first command (the zero-setup uploads example) and checks that it
/// delivered its three events and rolled the fourth back; then the same example on a fresh
/// SQLite file, on PostgreSQL when `DATABASE_URL` is set, and on MySQL/MariaDB when `MYSQL_URL`
/// is.
fn example() -> Result<(), String> {
    let memory = ["run", "--quiet", "--locked", "--example", "uploads"];
    run_example(&memory, None)?;
    let file = env::temp_dir().join(format!("outbox-uploads-{}.db", std::process::id()));
    let sqlite = [&memory[..], &["--features", "outbox-examples/sqlite"]].concat();
    let ran = run_example(&sqlite, Some(format!("sqlite://{}", file.display()).into()));
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", file.display()));
    }
    ran?;
    if let Some(url) = env::var_os("DATABASE_URL") {
        let postgres = [&memory[..], &["--features", "outbox-examples/postgres"]].concat();
        run_example(&postgres, Some(url))?;
        consumer_example()?;
    }
    if let Some(url) = env::var_os("MYSQL_URL") {
        let mysql = [&memory[..], &["--features", "outbox-examples/mysql"]].concat();
        run_example(&mysql, Some(url))?;
    }
    Ok(())
}

/// Runs the consumer example (PostgreSQL and NATS): three events relayed to JetStream, each
/// handled once through the inbox, one redelivery skipped.
fn consumer_example() -> Result<(), String> {
    let args = [
        "run",
        "--quiet",
        "--locked",
        "--example",
        "consumer",
        "--features",
        "outbox-examples/consumer",
    ];
    eprintln!("$ cargo {}", args.join(" "));
    let output = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
        .args(args)
        .current_dir(workspace_root())
        .output()
        .map_err(|e| format!("could not run cargo: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    print!("{stdout}");
    let expected = "thumbnailer: 3 handled, 1 redelivery skipped, 3 thumbnails";
    if !output.status.success() || !stdout.lines().any(|l| l == expected) {
        return Err(format!(
            "the consumer example did not print {expected:?} ({}): {}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(())
}

fn run_example(args: &[&str], database_url: Option<std::ffi::OsString>) -> Result<(), String> {
    eprintln!("$ cargo {}", args.join(" "));
    let mut command = Command::new(env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    command.args(args).current_dir(workspace_root());
    match database_url {
        Some(url) => command.env("DATABASE_URL", url),
        None => command.env_remove("DATABASE_URL"),
    };
    let output = command
        .output()
        .map_err(|e| format!("could not run cargo: {e}"))?;
    let stdout = String::from_utf8_lossy(&output.stdout);
    print!("{stdout}");
    let delivered = stdout
        .lines()
        .filter(|l| l.starts_with("delivered file.stored "))
        .count();
    let rolled_back = stdout.lines().any(|l| l.starts_with("rolled back upload"));
    if !output.status.success() || delivered != 3 || !rolled_back {
        return Err(format!(
            "the uploads example printed {delivered} deliveries instead of 3{} ({}): {}",
            if rolled_back { "" } else { " and no rollback" },
            output.status,
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    Ok(())
}

fn bench(quick: bool, transports: bool, only: Option<&str>) -> Result<(), String> {
    let out = workspace_root().join("target").join("outbox-bench");
    let out = out.to_string_lossy();
    // pgmq's side of the workloads: a program of its own (bench/pgmq-peer, outside the
    // workspace), built into the same target directory.
    let target = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    let manifest = workspace_root().join("bench/pgmq-peer/Cargo.toml");
    let target_env = target.to_string_lossy().into_owned();
    cargo(
        &[
            "build",
            "--release",
            "--locked",
            "--manifest-path",
            &manifest.to_string_lossy(),
        ],
        &[("CARGO_TARGET_DIR", &target_env)],
    )?;
    let peer = target.join("release").join("pgmq-peer");
    let peer = peer.to_string_lossy();
    let mut args = vec![
        "run",
        "--release",
        "--locked",
        "-p",
        "outbox-bench",
        "--",
        "--out",
        &out,
        "--pgmq-peer",
        &peer,
    ];
    if quick {
        args.push("--quick");
    }
    if transports {
        args.push("--transports");
    }
    if let Some(only) = only {
        args.extend(["--only", only]);
    }
    cargo(&args, &[])
}

fn test(extra: &[String]) -> Result<(), String> {
    let mut args = vec!["test", "--workspace", "--locked", "--no-fail-fast"];
    args.extend(extra.iter().map(String::as_str));
    cargo(&args, &[])
}

/// Runs `$CARGO args…` at the workspace root, failing if it fails.
fn cargo(args: &[&str], envs: &[(&str, &str)]) -> Result<(), String> {
    let cargo = env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    eprintln!("$ cargo {}", args.join(" "));
    let status = Command::new(cargo)
        .args(args)
        .envs(envs.iter().copied())
        .current_dir(workspace_root())
        .status()
        .map_err(|e| format!("could not run cargo: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`cargo {}` failed ({status})", args.join(" ")))
    }
}

/// The workspace this run is for. `cargo run` sets `CARGO_MANIFEST_DIR` for the process, which
/// is right even when the binary was built from another checkout sharing the target directory
/// (cargo reuses it when the sources match, with the other checkout's path compiled in).
fn workspace_root() -> PathBuf {
    let manifest_dir = std::env::var_os("CARGO_MANIFEST_DIR")
        .map_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")), PathBuf::from);
    manifest_dir
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_default()
}
