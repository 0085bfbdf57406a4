//! pgmq beside the outbox in the same run: the `pgmq-peer` program (bench/pgmq-peer, built by
//! `cargo xtask bench`; it brings pgmq's own sqlx version, so it is a program of its own) runs
//! each workload on the same database, between the outbox's.

use std::path::{Path, PathBuf};
use std::process::Command;

use crate::BenchError;

/// The pgmq side; `None` when no `pgmq-peer` program was given.
pub struct Pgmq {
    program: PathBuf,
    url: String,
    /// Whether this run installed pgmq's SQL (then teardown drops it again).
    installed: bool,
}

impl Pgmq {
    /// Installs pgmq's SQL if missing and creates the queue.
    pub fn setup(program: &Path, url: &str) -> Result<Self, BenchError> {
        let mut pgmq = Self {
            program: program.to_owned(),
            url: url.to_owned(),
            installed: false,
        };
        pgmq.installed = pgmq
            .run(&["setup"])?
            .iter()
            .any(|(k, v)| k == "installed" && *v == 1.0);
        Ok(pgmq)
    }

    /// Runs one workload; returns the figures it printed.
    pub fn run(&self, args: &[&str]) -> Result<Vec<(String, f64)>, BenchError> {
        let output = Command::new(&self.program)
            .args(args)
            .env("DATABASE_URL", &self.url)
            .output()
            .map_err(|e| format!("cannot run {}: {e}", self.program.display()))?;
        if !output.status.success() {
            return Err(format!(
                "pgmq-peer {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr).trim()
            )
            .into());
        }
        Ok(String::from_utf8_lossy(&output.stdout)
            .lines()
            .filter_map(|line| {
                let (key, value) = line.split_once(' ')?;
                Some((key.to_owned(), value.trim().parse().ok()?))
            })
            .collect())
    }

    /// One figure of a workload.
    pub fn figure(&self, args: &[&str], name: &str) -> Result<f64, BenchError> {
        self.run(args)?
            .into_iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v)
            .ok_or_else(|| format!("pgmq-peer {} printed no {name}", args.join(" ")).into())
    }

    /// Drops the queue, and pgmq's SQL if this run installed it.
    pub fn teardown(self) -> Result<(), BenchError> {
        let mut args = vec!["teardown"];
        if self.installed {
            args.push("--drop-pgmq");
        }
        self.run(&args).map(drop)
    }
}
