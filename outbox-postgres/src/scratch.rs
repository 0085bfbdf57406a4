//! A PostgreSQL cluster of a test's (or a benchmark's) own with `wal_level = logical`, for the
//! log-reading relay: created with Debian's `pg_createcluster` (postgresql-common) on a free
//! loopback port, started, crashed or restarted by its owner, and dropped when the value is.
//! A shared server is never touched. Needs root, as `pg_createcluster` does.

use std::process::Command;

/// A scratch cluster (superuser `postgres`, trust authentication on 127.0.0.1), dropped with
/// everything in it when this value is dropped.
pub struct Cluster {
    version: String,
    name: String,
    port: u16,
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e} (install Debian's postgresql-common)"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

impl Cluster {
    /// Creates and starts a cluster of the newest installed PostgreSQL version, or says what
    /// is missing (`pg_createcluster`, run as root). `fsync` is off: for tests, whose data
    /// need not survive the machine (an immediate shutdown still loses nothing).
    pub fn start() -> Result<Self, String> {
        Self::start_with(false)
    }

    /// The same, with `fsync` on, as a production server runs: for benchmarks.
    pub fn start_durable() -> Result<Self, String> {
        Self::start_with(true)
    }

    fn start_with(fsync: bool) -> Result<Self, String> {
        let version = std::fs::read_dir("/usr/lib/postgresql")
            .map_err(|e| format!("/usr/lib/postgresql: {e} (install Debian's postgresql)"))?
            .filter_map(|e| e.ok()?.file_name().into_string().ok())
            .filter(|v| v.parse::<u32>().is_ok())
            .max_by_key(|v| v.parse::<u32>().unwrap_or(0))
            .ok_or("no PostgreSQL under /usr/lib/postgresql")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .map_err(|e| e.to_string())?
            .port();
        let name = format!("outbox_logical_{port}");
        // A cluster left by a test that was killed before it could drop its own.
        let _ = run("pg_dropcluster", &["--stop", &version, &name]);
        run(
            "pg_createcluster",
            &[
                &version,
                &name,
                "-p",
                &port.to_string(),
                "--",
                "--auth=trust",
            ],
        )?;
        let cluster = Self {
            version,
            name,
            port,
        };
        let conf = format!(
            "/etc/postgresql/{}/{}/conf.d/outbox-logical.conf",
            cluster.version, cluster.name
        );
        let fsync = if fsync { "on" } else { "off" };
        std::fs::write(
            &conf,
            format!(
                "wal_level = logical\nmax_replication_slots = 10\nmax_wal_senders = 10\n\
                 listen_addresses = '127.0.0.1'\nfsync = {fsync}\nmax_connections = 200\n"
            ),
        )
        .map_err(|e| format!("{conf}: {e}"))?;
        cluster.ctl("start")?;
        Ok(cluster)
    }

    fn ctl(&self, action: &str) -> Result<(), String> {
        run(
            "pg_ctlcluster",
            &[
                "--skip-systemctl-redirect",
                &self.version,
                &self.name,
                action,
            ],
        )
    }

    /// The connection URL of its `postgres` database.
    pub fn url(&self) -> String {
        format!("postgres://postgres@127.0.0.1:{}/postgres", self.port)
    }

    /// Stops the server as a crash would (immediate shutdown: no checkpoint, connections cut).
    pub fn crash(&self) -> Result<(), String> {
        run(
            "pg_ctlcluster",
            &[
                "--skip-systemctl-redirect",
                &self.version,
                &self.name,
                "stop",
                "-m",
                "immediate",
            ],
        )
    }

    /// Starts it again after [`crash`](Self::crash).
    pub fn restart(&self) -> Result<(), String> {
        self.ctl("start")
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = run("pg_dropcluster", &["--stop", &self.version, &self.name]);
        // pg_dropcluster leaves the configuration directory behind when it holds a file of
        // its own making (ours, in conf.d): without this, `pg_lsclusters` reports a corrupted
        // cluster for every test run.
        let _ = std::fs::remove_dir_all(format!("/etc/postgresql/{}/{}", self.version, self.name));
    }
}
