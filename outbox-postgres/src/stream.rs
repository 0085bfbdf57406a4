//! The log-reading relay's source: committed outbox rows read from a logical replication slot
//! (`pgoutput` over the streaming replication protocol), in commit order, confirmed by LSN.
//!
//! - [`PgStore::start_streaming`] checks `wal_level`, creates the publication (inserts into the
//!   outbox table only) and the slot, then switches the table: new rows take status `streaming`
//!   (the column's default, so producers need not know) and the wake-up trigger is disabled —
//!   producers send no notification at all.
//! - [`PgStore::stream`] opens the one reader of a slot ([`PgStream`], an
//!   [`EventStream`]): a replication connection (`replication=database`, through the
//!   `pgwire-replication` client) on which the server pushes the slot's committed
//!   transactions as `pgoutput` messages, and to which the reader reports the position it has
//!   settled (the slot's confirmed position) only after delivery. The server lets one
//!   connection stream a slot: a second reader waits (its
//!   [`next_batch`](EventStream::next_batch) answers "unavailable") and takes over when the
//!   first one's connection ends.
//! - [`PgStore::stream_status`] reports the slot's lag, whether a reader holds it, and whether
//!   it still retains the WAL it needs.
//!
//! See `docs/stream.md` for why the streaming protocol and not the SQL-level slot functions,
//! what the server needs, and the failure behaviour.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use outbox_core::{
    EventId, EventStream, HoldReason, Lease, Lifecycle, OutboxEvent, StoreError, StreamBatch,
    StreamPosition, Streamed, ValidationError,
};
use sqlx::{AssertSqlSafe, Connection, PgConnection, Row};
use uuid::Uuid;

use crate::error::db_error;
use crate::pgoutput::{self, Column, Message, Value, pg_time};
use crate::row::STREAMING;
use crate::store::PgStore;
use pgwire_replication::{
    Lsn, PgWireError, ReplicationClient, ReplicationConfig, ReplicationEvent, TlsConfig,
};

/// Longest replication slot name PostgreSQL accepts.
const MAX_SLOT_LEN: usize = 63;

/// Checks a replication slot name as PostgreSQL does: lowercase letters, digits and
/// underscores, at most 63 bytes.
pub fn validate_slot(slot: &str) -> Result<(), ValidationError> {
    if slot.is_empty() || slot.len() > MAX_SLOT_LEN {
        return Err(ValidationError::new(
            "slot",
            format!("must be 1 to {MAX_SLOT_LEN} bytes long"),
        ));
    }
    if !slot
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
    {
        return Err(ValidationError::new(
            "slot",
            format!("{slot:?} may hold only lowercase letters, digits and underscores"),
        ));
    }
    Ok(())
}

/// What [`PgStore::start_streaming`] did.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StreamSetup {
    /// The publication was created now (it existed otherwise).
    pub created_publication: bool,
    /// The slot was created now (it existed otherwise).
    pub created_slot: bool,
    /// The table was switched to streaming now (it was already otherwise).
    pub switched: bool,
    /// Streamed events handed to the table's own path because the slot was created anew while
    /// the table was already streaming (the old slot was lost): the ordinary worker delivers
    /// them, so none is lost.
    pub handed_back: u64,
}

/// A replication slot's state, as `outbox status` shows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotStatus {
    /// The slot's name.
    pub slot: String,
    /// Whether the slot exists.
    pub exists: bool,
    /// Whether a reader is streaming it.
    pub active: bool,
    /// Bytes of WAL written since the confirmed position: what a reader has yet to go through.
    pub lag_bytes: i64,
    /// Bytes of WAL the server keeps for the slot (from its restart position).
    pub retained_bytes: i64,
    /// PostgreSQL's `wal_status` for the slot: `reserved`, `extended`, `unreserved` or `lost`.
    pub wal_status: Option<String>,
    /// Whether the table takes new events as `streaming`.
    pub table_streaming: bool,
    /// When the oldest event still waiting to be streamed was created: the lag in time (the
    /// table keeps only what is not yet delivered, so this reads few rows).
    pub oldest_streaming: Option<DateTime<Utc>>,
}

impl PgStore {
    /// The publication carrying the outbox table's inserts: `"<schema>.<table>_stream"`.
    pub fn publication(&self) -> String {
        format!("{}_stream", self.config.channel())
    }

    /// Prepares the table for the log-reading relay: checks that the server runs with
    /// `wal_level = logical`, creates the publication and the logical replication slot `slot`
    /// (`pgoutput`) if missing, then switches the table so that new events are streamed and
    /// producers send no notification. Run it after [`migrate`](Self::migrate); running it
    /// again changes nothing, except that a slot created anew (the old one was dropped) hands
    /// every event still waiting to be streamed to the table's own path, where the ordinary
    /// worker delivers it.
    ///
    /// Needs a role that may create publications and replication slots (the `REPLICATION`
    /// attribute, or a superuser) and owns the table.
    pub async fn start_streaming(&self, slot: &str) -> Result<StreamSetup, StoreError> {
        validate_slot(slot)?;
        let mut conn = self.pool.acquire().await.map_err(db_error)?;
        let wal_level: String = sqlx::query_scalar("SELECT current_setting('wal_level')")
            .fetch_one(&mut *conn)
            .await
            .map_err(db_error)?;
        if wal_level != "logical" {
            return Err(ValidationError::new(
                "wal_level",
                format!(
                    "the server runs with wal_level = {wal_level}; the log-reading relay needs \
                     wal_level = logical (set it in postgresql.conf and restart the server)"
                ),
            )
            .into());
        }
        let version = self.schema_version().await?;
        if version < 6 {
            return Err(ValidationError::new(
                "schema",
                format!("the outbox table is at version {version}; run the migrations first"),
            )
            .into());
        }
        let mut setup = StreamSetup::default();
        let publication = self.publication();
        let exists: bool =
            sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)")
                .bind(&publication)
                .fetch_one(&mut *conn)
                .await
                .map_err(db_error)?;
        if !exists {
            let create = format!(
                "CREATE PUBLICATION \"{publication}\" FOR TABLE {} WITH (publish = 'insert')",
                self.config.qualified_table()
            );
            sqlx::raw_sql(AssertSqlSafe(create))
                .execute(&mut *conn)
                .await
                .map_err(db_error)?;
            setup.created_publication = true;
        }
        let plugin: Option<String> = sqlx::query_scalar(
            "SELECT plugin::text FROM pg_replication_slots WHERE slot_name = $1",
        )
        .bind(slot)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_error)?;
        match plugin.as_deref() {
            Some("pgoutput") => {}
            Some(other) => {
                return Err(ValidationError::new(
                    "slot",
                    format!("slot {slot:?} exists with plugin {other:?}, not pgoutput"),
                )
                .into());
            }
            None => {
                // Created before the table switches: every streamed row is in the slot's range.
                sqlx::query("SELECT pg_create_logical_replication_slot($1, 'pgoutput')")
                    .bind(slot)
                    .execute(&mut *conn)
                    .await
                    .map_err(db_error)?;
                setup.created_slot = true;
            }
        }
        let t = self.config.qualified_table();
        let mut tx = conn.begin().await.map_err(db_error)?;
        let streaming = table_streaming(&mut tx, &self.config.schema, &self.config.table).await?;
        if !streaming {
            self.switch(&mut tx, true).await?;
            setup.switched = true;
        } else if setup.created_slot {
            // The old slot is gone, and with it the events committed before the new one: the
            // table still holds them, so its own path delivers them (some perhaps again).
            setup.handed_back = hand_back(&mut tx, &t).await?;
        }
        // Producers' stores hear it and stop waking anyone.
        crate::notify::send(&mut *tx, &self.sql.channel, crate::notify::STREAMING_ON)
            .await
            .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        self.notifier.set_streamed(true);
        Ok(setup)
    }

    /// Switches the table back to the claim-based relay: new events are `pending` and wake the
    /// workers again, and every event still waiting to be streamed is handed to the table's own
    /// path (so an event streamed but not yet confirmed may be delivered twice). With
    /// `drop_slot`, drops the slot too, releasing the WAL it retains. Returns how many events
    /// were handed over.
    pub async fn stop_streaming(&self, slot: &str, drop_slot: bool) -> Result<u64, StoreError> {
        validate_slot(slot)?;
        let t = self.config.qualified_table();
        let mut tx = self.pool.begin().await.map_err(db_error)?;
        self.switch(&mut tx, false).await?;
        let handed = hand_back(&mut tx, &t).await?;
        crate::notify::send(&mut *tx, &self.sql.channel, crate::notify::STREAMING_OFF)
            .await
            .map_err(db_error)?;
        tx.commit().await.map_err(db_error)?;
        self.notifier.set_streamed(false);
        if drop_slot {
            sqlx::query(
                "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots \
                 WHERE slot_name = $1",
            )
            .bind(slot)
            .execute(&self.pool)
            .await
            .map_err(db_error)?;
        }
        Ok(handed)
    }

    /// The slot's lag and health, and whether the table is streaming.
    pub async fn stream_status(&self, slot: &str) -> Result<SlotStatus, StoreError> {
        validate_slot(slot)?;
        let mut conn = self.pool.acquire().await.map_err(db_error)?;
        let table_streaming =
            table_streaming(&mut conn, &self.config.schema, &self.config.table).await?;
        let row = sqlx::query(
            "SELECT active, \
             wal_status::text, \
             COALESCE(pg_wal_lsn_diff(pg_current_wal_lsn(), confirmed_flush_lsn), 0)::int8, \
             COALESCE(pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn), 0)::int8 \
             FROM pg_replication_slots WHERE slot_name = $1",
        )
        .bind(slot)
        .fetch_optional(&mut *conn)
        .await
        .map_err(db_error)?;
        let mut status = SlotStatus {
            slot: slot.to_owned(),
            exists: false,
            active: false,
            lag_bytes: 0,
            retained_bytes: 0,
            wal_status: None,
            table_streaming,
            oldest_streaming: None,
        };
        if table_streaming {
            status.oldest_streaming = sqlx::query_scalar(AssertSqlSafe(format!(
                "SELECT min(created_at) FROM {} WHERE status = '{STREAMING}'",
                self.config.qualified_table()
            )))
            .fetch_one(&mut *conn)
            .await
            .map_err(db_error)?;
        }
        if let Some(row) = row {
            status.exists = true;
            status.active = row.try_get(0).map_err(db_error)?;
            status.wal_status = row.try_get(1).map_err(db_error)?;
            status.lag_bytes = row.try_get(2).map_err(db_error)?;
            status.retained_bytes = row.try_get(3).map_err(db_error)?;
        }
        Ok(status)
    }

    /// Switches the table's mode: what `status` defaults to, and whether the notify trigger
    /// runs.
    async fn switch(&self, conn: &mut PgConnection, streaming: bool) -> Result<(), StoreError> {
        let t = self.config.qualified_table();
        let (status, trigger) = if streaming {
            (STREAMING, "DISABLE")
        } else {
            ("pending", "ENABLE")
        };
        let switch = format!(
            "ALTER TABLE {t} ALTER COLUMN status SET DEFAULT '{status}'; \
             ALTER TABLE {t} {trigger} TRIGGER \"{}_notify\"",
            self.config.table
        );
        sqlx::raw_sql(AssertSqlSafe(switch))
            .execute(&mut *conn)
            .await
            .map_err(db_error)?;
        Ok(())
    }

    /// Opens the reader of `slot` over a replication connection to `database_url` (the
    /// same database as the store's pool; a URL because the pool's options do not give its
    /// password back). Connects when first read from.
    ///
    /// The URL takes `postgres://user:password@host:port/database`, `?host=/socket/dir` for a
    /// Unix socket and `?sslmode=`: `disable`, `allow` and `prefer` connect without TLS;
    /// `require`, `verify-ca` and `verify-full` are refused: the replication connection has no
    /// TLS yet.
    pub fn stream(&self, slot: &str, database_url: &str) -> Result<PgStream, StoreError> {
        validate_slot(slot)?;
        let target = Target::parse(database_url)?;
        Ok(PgStream {
            store: self.clone(),
            slot: slot.to_owned(),
            publication: self.publication(),
            target,
            poll: std::time::Duration::from_millis(10),
            client: None,
            relations: HashMap::new(),
            keyed: HashSet::new(),
            idempotent: HashSet::new(),
            confirmed: 0,
            unsettled: false,
            idle_end: 0,
            pending: None,
        })
    }
}

/// Whether the table's `status` defaults to `streaming`, read through `pool`.
pub(crate) async fn table_streaming_on(
    pool: &sqlx::PgPool,
    schema: &str,
    table: &str,
) -> Result<bool, StoreError> {
    let mut conn = pool.acquire().await.map_err(db_error)?;
    table_streaming(&mut conn, schema, table).await
}

/// Whether the table's `status` defaults to `streaming`.
async fn table_streaming(
    conn: &mut PgConnection,
    schema: &str,
    table: &str,
) -> Result<bool, StoreError> {
    let default: Option<String> = sqlx::query_scalar(
        "SELECT column_default FROM information_schema.columns \
         WHERE table_schema = $1 AND table_name = $2 AND column_name = 'status'",
    )
    .bind(schema)
    .bind(table)
    .fetch_optional(&mut *conn)
    .await
    .map_err(db_error)?
    .flatten();
    Ok(default.is_some_and(|d| d.contains(STREAMING)))
}

/// Hands every `streaming` row to the table's path: pending, admitted to its ordering key in
/// creation order. Returns how many.
async fn hand_back(conn: &mut PgConnection, t: &str) -> Result<u64, StoreError> {
    let plain = format!(
        "UPDATE {t} SET status = 'pending' WHERE status = '{STREAMING}' AND ordering_key IS NULL"
    );
    let mut handed = sqlx::query(AssertSqlSafe(plain))
        .execute(&mut *conn)
        .await
        .map_err(db_error)?
        .rows_affected();
    let keyed: Vec<Uuid> = sqlx::query_scalar(AssertSqlSafe(format!(
        "SELECT id FROM {t} WHERE status = '{STREAMING}' ORDER BY created_at, id"
    )))
    .fetch_all(&mut *conn)
    .await
    .map_err(db_error)?;
    let one = format!("UPDATE {t} SET status = 'pending' WHERE id = $1 AND status = '{STREAMING}'");
    for id in keyed {
        handed += sqlx::query(AssertSqlSafe(one.clone()))
            .bind(id)
            .execute(&mut *conn)
            .await
            .map_err(db_error)?
            .rows_affected();
    }
    Ok(handed)
}

/// The reader of one replication slot: an [`EventStream`] of the outbox table's committed
/// inserts. See `docs/stream.md` in the repository for how it reads, settles and fails.
pub struct PgStream {
    store: PgStore,
    slot: String,
    publication: String,
    target: Target,
    /// How long a read waits for a first event before answering "nothing new".
    poll: std::time::Duration,
    /// The replication connection, while it is open.
    client: Option<ReplicationClient>,
    /// The relations seen (whether each is the outbox table, its column positions), by id.
    relations: HashMap<u32, Relation>,
    /// The current batch's events that carry an ordering key.
    keyed: HashSet<EventId>,
    /// The current batch's events that carry an idempotency key.
    idempotent: HashSet<EventId>,
    /// The position last confirmed.
    confirmed: u64,
    /// A batch was read and not confirmed: the next read starts again from the confirmed
    /// position (on a new connection), so nothing read is ever skipped.
    unsettled: bool,
    /// The server's WAL end as of its last keepalive outside a transaction: an idle stream may
    /// be confirmed up to it.
    idle_end: u64,
    /// The last confirmed batch's delivered rows being deleted, and its position, reported
    /// once they are.
    pending: Option<(tokio::task::JoinHandle<Result<(), StoreError>>, u64)>,
}

impl std::fmt::Debug for PgStream {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PgStream")
            .field("slot", &self.slot)
            .field("publication", &self.publication)
            .field("connected", &self.client.is_some())
            .finish_non_exhaustive()
    }
}

/// A relation the stream has described: whether it is the outbox table, and where each
/// column the reader needs sits in its tuples (found once per description, not per row).
#[derive(Debug, Clone)]
struct Relation {
    ours: bool,
    at: [Option<usize>; Col::ALL.len()],
}

impl Relation {
    fn new(ours: bool, columns: &[Column]) -> Self {
        let at = Col::ALL.map(|col| columns.iter().position(|c| c.name == col.name()));
        Relation { ours, at }
    }
}

/// The columns a streamed event is read from.
#[derive(Debug, Clone, Copy)]
enum Col {
    Id,
    Status,
    EventType,
    AggregateType,
    AggregateId,
    Payload,
    Headers,
    IdempotencyKey,
    OrderingKey,
    Attempts,
    MaxAttempts,
    NextAttemptAt,
    CreatedAt,
    UpdatedAt,
}

impl Col {
    const ALL: [Col; 14] = [
        Col::Id,
        Col::Status,
        Col::EventType,
        Col::AggregateType,
        Col::AggregateId,
        Col::Payload,
        Col::Headers,
        Col::IdempotencyKey,
        Col::OrderingKey,
        Col::Attempts,
        Col::MaxAttempts,
        Col::NextAttemptAt,
        Col::CreatedAt,
        Col::UpdatedAt,
    ];

    fn name(self) -> &'static str {
        match self {
            Col::Id => "id",
            Col::Status => "status",
            Col::EventType => "event_type",
            Col::AggregateType => "aggregate_type",
            Col::AggregateId => "aggregate_id",
            Col::Payload => "payload",
            Col::Headers => "headers",
            Col::IdempotencyKey => "idempotency_key",
            Col::OrderingKey => "ordering_key",
            Col::Attempts => "attempts",
            Col::MaxAttempts => "max_attempts",
            Col::NextAttemptAt => "next_attempt_at",
            Col::CreatedAt => "created_at",
            Col::UpdatedAt => "updated_at",
        }
    }
}

/// One inserted row, read by column through its relation's positions.
struct Tuple<'r, 'a> {
    relation: &'r Relation,
    values: &'r [Value<'a>],
}

impl<'a> Tuple<'_, 'a> {
    /// The column's value, if the relation has the column.
    fn get(&self, col: Col) -> Option<&Value<'a>> {
        // `at` follows `Col::ALL`, which lists the columns in their declared order.
        let at = self.relation.at.get(col as usize).copied().flatten();
        at.and_then(|i| self.values.get(i))
    }
}

/// Where the replication connection goes, read from a connection URL.
#[derive(Clone)]
struct Target {
    host: String,
    port: u16,
    user: String,
    password: String,
    database: String,
    tls: TlsConfig,
}

impl Target {
    fn parse(database_url: &str) -> Result<Self, StoreError> {
        let bad =
            |reason: String| -> StoreError { ValidationError::new("database_url", reason).into() };
        // libpq takes `user@/db?host=/socket/dir`; the URL parser wants a host after `@`.
        let url = match url::Url::parse(database_url) {
            Err(url::ParseError::EmptyHost) => {
                url::Url::parse(&database_url.replacen("@/", "@localhost/", 1))
            }
            parsed => parsed,
        }
        .map_err(|e| bad(e.to_string()))?;
        if !matches!(url.scheme(), "postgres" | "postgresql") {
            return Err(bad(format!("scheme {:?} is not postgres://", url.scheme())));
        }
        let decode = |s: &str| -> Result<String, StoreError> {
            percent_decode(s).ok_or_else(|| bad("a part is not valid percent-encoded UTF-8".into()))
        };
        let query: HashMap<String, String> = url.query_pairs().into_owned().collect();
        let host = match query.get("host") {
            Some(h) => h.clone(),
            None => url.host_str().unwrap_or("localhost").to_owned(),
        };
        let user = match url.username() {
            "" => query
                .get("user")
                .cloned()
                .or_else(|| std::env::var("USER").ok())
                .unwrap_or_else(|| "postgres".into()),
            u => decode(u)?,
        };
        let password = match url.password() {
            Some(p) => decode(p)?,
            None => query.get("password").cloned().unwrap_or_default(),
        };
        let database = match url.path().trim_start_matches('/') {
            "" => query.get("dbname").cloned().unwrap_or_else(|| user.clone()),
            d => decode(d)?,
        };
        let tls = match query.get("sslmode").map(String::as_str) {
            None | Some("disable" | "allow" | "prefer") => TlsConfig::disabled(),
            Some(mode @ ("require" | "verify-ca" | "verify-full")) => tls_for(mode).map_err(bad)?,
            Some(other) => return Err(bad(format!("unknown sslmode {other:?}"))),
        };
        Ok(Self {
            host,
            port: url.port().unwrap_or(5432),
            user,
            password,
            database,
            tls,
        })
    }
}

/// TLS for the replication connection: not offered yet.
fn tls_for(mode: &str) -> Result<TlsConfig, String> {
    Err(format!(
        "sslmode={mode}: the stream's replication connection cannot use TLS yet; connect it \
         over a trusted network or a Unix socket (?host=/run/postgresql)"
    ))
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = s.get(i + 1..i + 3)?;
            out.push(u8::from_str_radix(hex, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

impl PgStream {
    /// The slot read.
    pub fn slot(&self) -> &str {
        &self.slot
    }

    /// How long a read waits for the first new event before answering that there is none
    /// (default 10 ms; events are pushed by the server, so this bounds only how often an idle
    /// reader comes back to its caller).
    pub fn with_poll(mut self, poll: std::time::Duration) -> Self {
        self.poll = poll;
        self
    }

    /// The replication connection, opened (from the confirmed position) if it is not.
    async fn client(&mut self) -> Result<&mut ReplicationClient, StoreError> {
        if self.client.is_none() {
            let t = &self.target;
            let config = ReplicationConfig::new(
                t.host.clone(),
                t.user.clone(),
                t.password.clone(),
                t.database.clone(),
                self.slot.clone(),
                self.publication.clone(),
            )
            .with_port(t.port)
            .with_tls(t.tls.clone())
            .with_binary(true)
            .with_status_interval(STATUS_INTERVAL)
            .with_wakeup_interval(std::time::Duration::from_secs(1))
            .with_application_name(format!("outbox stream {}", self.slot));
            let mut client = ReplicationClient::connect(config)
                .await
                .map_err(|e| self.classify(e))?;
            // The server starts from the slot's confirmed position; a first event (or
            // keepalive) tells whether it accepted the slot at all.
            client.wait_started().await.map_err(|e| self.classify(e))?;
            self.relations.clear();
            self.client = Some(client);
        }
        self.client.as_mut().ok_or_else(|| StoreError::Backend {
            source: "stream connection missing".into(),
        })
    }

    fn slot_missing(&self) -> StoreError {
        StoreError::Backend {
            source: format!(
                "replication slot {:?} does not exist (dropped, or never created): run `outbox \
                 migrate` to create it again; the events it had not confirmed are then handed to \
                 the table's own path, so none is lost",
                self.slot
            )
            .into(),
        }
    }

    /// Maps a replication error: a missing slot stops the reader; a slot another reader
    /// holds, a lost connection or a server restarting can pass.
    fn classify(&self, error: PgWireError) -> StoreError {
        let text = error.to_string();
        match error {
            PgWireError::Server(_)
                if text.contains("does not exist") && text.contains(&self.slot) =>
            {
                self.slot_missing()
            }
            PgWireError::Server(_) if text.contains("is active for PID") => {
                StoreError::Unavailable {
                    source: format!(
                        "another relay is reading slot {:?}; this one takes over when it stops",
                        self.slot
                    )
                    .into(),
                }
            }
            PgWireError::Auth(_) | PgWireError::Tls(_) => StoreError::Backend {
                source: format!("replication connection to slot {:?}: {text}", self.slot).into(),
            },
            PgWireError::Server(_)
                if !text.contains("SQLSTATE 08")
                    && !text.contains("SQLSTATE 57P")
                    && !text.contains("SQLSTATE 53") =>
            {
                StoreError::Backend {
                    source: format!("replication of slot {:?}: {text}", self.slot).into(),
                }
            }
            _ => StoreError::Unavailable {
                source: format!("replication of slot {:?}: {text}", self.slot).into(),
            },
        }
    }

    /// Drops the replication connection (the next read reconnects from the confirmed
    /// position) and passes the error on.
    fn reset(&mut self, error: StoreError) -> StoreError {
        self.disconnect();
        error
    }

    /// Waits for the last batch's rows to be deleted, then reports its position.
    async fn settle_pending(&mut self) -> Result<(), StoreError> {
        if let Some((task, position)) = self.pending.take() {
            match task.await {
                Ok(Ok(())) => self.report(position),
                Ok(Err(error)) => return Err(error),
                Err(error) => {
                    return Err(StoreError::Backend {
                        source: format!("deleting delivered events failed: {error}").into(),
                    });
                }
            }
        }
        Ok(())
    }

    /// Reports `position` as settled: to the server with the client's next status update.
    fn report(&mut self, position: u64) {
        if position > self.confirmed {
            if let Some(client) = &self.client {
                client.update_applied_lsn(Lsn::from_u64(position));
            }
            self.confirmed = position;
        }
    }

    /// Closes the replication connection, if open.
    fn disconnect(&mut self) {
        if let Some(mut client) = self.client.take() {
            client.abort();
        }
    }

    fn decode_insert(&self, row: &Tuple<'_, '_>, now: DateTime<Utc>) -> Option<Streamed> {
        let id = match row.get(Col::Id).map(uuid) {
            Some(Ok(id)) => EventId::from_uuid(id),
            _ => {
                tracing::warn!(slot = %self.slot, "a streamed row without a readable id; skipped");
                return None;
            }
        };
        match row.get(Col::Status).map(bytes) {
            Some(Ok(status)) if status == STREAMING.as_bytes() => {}
            // Inserted before the table was switched, or by something else: the table's own
            // path has it.
            _ => return None,
        }
        match event_from(id, row) {
            Ok(event) => {
                let not_due = event.lifecycle.next_attempt_at > event.created_at
                    && event.lifecycle.next_attempt_at > now;
                Some(Streamed {
                    hold: not_due.then_some(HoldReason::NotDue),
                    event,
                })
            }
            Err(reason) => {
                let event = OutboxEvent {
                    id,
                    event_type: String::new(),
                    aggregate_type: String::new(),
                    aggregate_id: String::new(),
                    payload: serde_json::Value::Null,
                    headers: Default::default(),
                    idempotency_key: None,
                    // Kept when readable: the event holds its key's place in the table.
                    ordering_key: row.get(Col::OrderingKey).and_then(|v| text(v).ok()),
                    lifecycle: Lifecycle::pending(1, now),
                    created_at: now,
                    updated_at: now,
                };
                Some(Streamed {
                    event,
                    hold: Some(HoldReason::Undecodable(reason)),
                })
            }
        }
    }
}

fn bytes<'a>(value: &Value<'a>) -> Result<&'a [u8], String> {
    match value {
        Value::Binary(b) | Value::Text(b) => Ok(b),
        Value::Null => Err("is null".into()),
        Value::Unchanged => Err("is missing (unchanged TOAST)".into()),
    }
}

fn text(value: &Value<'_>) -> Result<String, String> {
    std::str::from_utf8(bytes(value)?)
        .map(str::to_owned)
        .map_err(|_| "is not UTF-8".to_owned())
}

fn uuid(value: &Value<'_>) -> Result<Uuid, String> {
    Uuid::from_slice(bytes(value)?).map_err(|e| e.to_string())
}

fn int4(value: &Value<'_>) -> Result<u32, String> {
    let b: [u8; 4] = bytes(value)?
        .try_into()
        .map_err(|_| "is not a 4-byte integer".to_owned())?;
    u32::try_from(i32::from_be_bytes(b)).map_err(|_| "is negative".to_owned())
}

fn time(value: &Value<'_>) -> Result<DateTime<Utc>, String> {
    let b: [u8; 8] = bytes(value)?
        .try_into()
        .map_err(|_| "is not an 8-byte timestamp".to_owned())?;
    pg_time(i64::from_be_bytes(b)).ok_or_else(|| "is out of range".to_owned())
}

/// A `jsonb` value in its binary form (a version byte, 1, then the JSON text), read as `T`.
fn json<T: serde::de::DeserializeOwned>(value: &Value<'_>) -> Result<T, String> {
    let b = bytes(value)?;
    let body = match (value, b.split_first()) {
        (Value::Binary(_), Some((1, body))) => body,
        (Value::Binary(_), _) => return Err("has an unknown jsonb version".into()),
        _ => b,
    };
    serde_json::from_slice(body).map_err(|e| e.to_string())
}

fn optional<T>(
    value: Option<&Value<'_>>,
    read: impl Fn(&Value<'_>) -> Result<T, String>,
) -> Result<Option<T>, String> {
    match value {
        None | Some(Value::Null) => Ok(None),
        Some(v) => read(v).map(Some),
    }
}

/// The event of a streamed row, or what is wrong with it.
fn event_from(id: EventId, row: &Tuple<'_, '_>) -> Result<OutboxEvent, String> {
    let get = |col: Col| {
        row.get(col)
            .ok_or_else(|| format!("column {} is missing", col.name()))
    };
    let field = |col: Col, e: String| format!("{} {e}", col.name());
    let text_of = |col: Col| get(col).and_then(|v| text(v).map_err(|e| field(col, e)));
    // Read straight into the map: no intermediate JSON tree per event.
    let headers: std::collections::BTreeMap<String, String> =
        json(get(Col::Headers)?).map_err(|e| field(Col::Headers, e))?;
    let created_at = time(get(Col::CreatedAt)?).map_err(|e| field(Col::CreatedAt, e))?;
    let max_attempts = int4(get(Col::MaxAttempts)?).map_err(|e| field(Col::MaxAttempts, e))?;
    let next_attempt_at =
        time(get(Col::NextAttemptAt)?).map_err(|e| field(Col::NextAttemptAt, e))?;
    let mut lifecycle = Lifecycle::pending(max_attempts, next_attempt_at);
    lifecycle.attempts = int4(get(Col::Attempts)?).map_err(|e| field(Col::Attempts, e))?;
    Ok(OutboxEvent {
        id,
        event_type: text_of(Col::EventType)?,
        aggregate_type: text_of(Col::AggregateType)?,
        aggregate_id: text_of(Col::AggregateId)?,
        payload: json(get(Col::Payload)?).map_err(|e| field(Col::Payload, e))?,
        headers,
        idempotency_key: optional(row.get(Col::IdempotencyKey), text)
            .map_err(|e| field(Col::IdempotencyKey, e))?,
        ordering_key: optional(row.get(Col::OrderingKey), text)
            .map_err(|e| field(Col::OrderingKey, e))?,
        lifecycle,
        created_at,
        updated_at: time(get(Col::UpdatedAt)?).map_err(|e| field(Col::UpdatedAt, e))?,
    })
}

#[async_trait]
impl EventStream for PgStream {
    async fn next_batch(&mut self, max: usize) -> Result<StreamBatch, StoreError> {
        if std::mem::take(&mut self.unsettled) {
            // The last batch was not confirmed (its settlement failed): read it again.
            self.disconnect();
        }
        let max = max.max(1);
        let poll = self.poll;
        let mut batch = StreamBatch::default();
        let mut last_end = None;
        let mut in_transaction = false;
        let now = self.store.local_now();
        loop {
            let client = match self.client().await {
                Ok(client) => client,
                Err(e) => return Err(self.reset(e)),
            };
            // Wait for the first event up to `poll`, and inside a transaction for the rest of
            // it; otherwise take only what has already arrived.
            let wait = if in_transaction {
                TRANSACTION_WAIT
            } else if last_end.is_none() && batch.events.is_empty() {
                poll
            } else {
                std::time::Duration::ZERO
            };
            let event = match tokio::time::timeout(wait, client.recv()).await {
                Err(_) if in_transaction => {
                    let e = StoreError::Unavailable {
                        source: format!(
                            "slot {:?}: a transaction's changes stopped arriving",
                            self.slot
                        )
                        .into(),
                    };
                    return Err(self.reset(e));
                }
                Err(_) => break,
                Ok(Ok(Some(event))) => event,
                Ok(Ok(None)) => {
                    let e = StoreError::Unavailable {
                        source: format!("slot {:?}: the replication stream ended", self.slot)
                            .into(),
                    };
                    return Err(self.reset(e));
                }
                Ok(Err(e)) => {
                    let e = self.classify(e);
                    return Err(self.reset(e));
                }
            };
            match event {
                ReplicationEvent::Begin {
                    commit_time_micros, ..
                } => {
                    in_transaction = true;
                    if batch.first_commit.is_none() {
                        batch.first_commit = pg_time(commit_time_micros);
                    }
                }
                ReplicationEvent::Commit { end_lsn, .. } => {
                    in_transaction = false;
                    last_end = Some(end_lsn.as_u64());
                    if batch.events.len() >= max {
                        batch.full = true;
                        break;
                    }
                }
                ReplicationEvent::XLogData { data, .. } => {
                    let message = pgoutput::decode(&data).map_err(|e| StoreError::Backend {
                        source: e.to_string().into(),
                    });
                    let message = match message {
                        Ok(m) => m,
                        Err(e) => return Err(self.reset(e)),
                    };
                    self.absorb(message, now, &mut batch);
                }
                // Everything before a keepalive's position has been sent (and read, the
                // connection being ordered): an idle stream may be confirmed up to it.
                ReplicationEvent::KeepAlive { wal_end, .. }
                    if !in_transaction && last_end.is_none() =>
                {
                    self.idle_end = self.idle_end.max(wal_end.as_u64());
                }
                _ => {}
            }
        }
        let position = match last_end {
            Some(end) => end,
            None => self.idle_end,
        };
        batch.position = StreamPosition(position.max(self.confirmed));
        if let Err(e) = self.mark_holds(&mut batch.events).await {
            return Err(self.reset(e));
        }
        self.keyed = batch
            .events
            .iter()
            .filter(|s| s.event.ordering_key.is_some())
            .map(|s| s.event.id)
            .collect();
        self.idempotent = batch
            .events
            .iter()
            .filter(|s| s.event.idempotency_key.is_some())
            .map(|s| s.event.id)
            .collect();
        // A batch of transactions without events needs no settling; a later confirmation
        // covers its position.
        self.unsettled = !batch.events.is_empty();
        Ok(batch)
    }

    async fn take(
        &mut self,
        lease: &Lease,
        ids: &[EventId],
        now: DateTime<Utc>,
    ) -> Result<Vec<EventId>, StoreError> {
        if ids.is_empty() {
            return Ok(Vec::new());
        }
        let t = self.store.config.qualified_table();
        let sql = format!(
            "UPDATE {t} SET status = 'in_flight', lease_id = $1, locked_by = $2, \
             locked_until = {until}, head_key = ordering_key, updated_at = {n} \
             WHERE id = ANY($5) AND status = '{STREAMING}' RETURNING id",
            until = "(COALESCE($6::timestamptz, statement_timestamp()) + ($3::timestamptz - $4::timestamptz))",
            n = "COALESCE($6::timestamptz, statement_timestamp())",
        );
        let taken: Vec<Uuid> = sqlx::query_scalar(AssertSqlSafe(sql))
            .bind(lease.id.as_uuid())
            .bind(&lease.holder)
            .bind(lease.until)
            .bind(now)
            .bind(ids.iter().map(|id| *id.as_uuid()).collect::<Vec<_>>())
            .bind(self.store.injected_now())
            .fetch_all(&self.store.pool)
            .await
            .map_err(db_error)?;
        Ok(taken.into_iter().map(EventId::from_uuid).collect())
    }

    async fn hold(&mut self, ids: &[EventId], _now: DateTime<Utc>) -> Result<u64, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let t = self.store.config.qualified_table();
        let n = "COALESCE($2::timestamptz, statement_timestamp())";
        let (keyed, plain): (Vec<EventId>, Vec<EventId>) =
            ids.iter().partition(|id| self.keyed.contains(id));
        let mut tx = self.store.pool.begin().await.map_err(db_error)?;
        let mut handed = 0;
        if !plain.is_empty() {
            let sql = format!(
                "UPDATE {t} SET status = 'pending', updated_at = {n} \
                 WHERE id = ANY($1) AND status = '{STREAMING}'"
            );
            handed += sqlx::query(AssertSqlSafe(sql))
                .bind(plain.iter().map(|id| *id.as_uuid()).collect::<Vec<_>>())
                .bind(self.store.injected_now())
                .execute(&mut *tx)
                .await
                .map_err(db_error)?
                .rows_affected();
        }
        // One by one, in commit order: each is admitted at the back of its key's queue.
        let one = format!(
            "UPDATE {t} SET status = 'pending', updated_at = {n} \
             WHERE id = $1 AND status = '{STREAMING}'"
        );
        for id in keyed {
            handed += sqlx::query(AssertSqlSafe(one.clone()))
                .bind(id.as_uuid())
                .bind(self.store.injected_now())
                .execute(&mut *tx)
                .await
                .map_err(db_error)?
                .rows_affected();
        }
        tx.commit().await.map_err(db_error)?;
        Ok(handed)
    }

    async fn confirm(
        &mut self,
        position: StreamPosition,
        delivered: &[EventId],
        _now: DateTime<Utc>,
    ) -> Result<(), StoreError> {
        // The previous batch's rows are gone before its position is reported.
        self.settle_pending().await?;
        if delivered.is_empty() {
            self.report(position.0);
        } else {
            let t = self.store.config.qualified_table();
            let n = "COALESCE($2::timestamptz, statement_timestamp())";
            // Delivered events leave the table, their delivery recorded by the slot's
            // position; those with an idempotency key stay, delivered, so the key goes on
            // refusing duplicates until the retention sweep. The statement runs while the next
            // batch is read and delivered; the position is reported once it is done.
            let delete = format!(
                "DELETE FROM {t} WHERE id = ANY($1) AND status = '{STREAMING}' \
                 AND idempotency_key IS NULL"
            );
            let keep = delivered.iter().any(|id| self.idempotent.contains(id));
            let sql = if keep {
                format!(
                    "WITH gone AS ({delete}) \
                     UPDATE {t} SET status = 'delivered', attempts = LEAST(attempts + 1, max_attempts), \
                     delivered_at = {n}, updated_at = {n} \
                     WHERE id = ANY($1) AND status = '{STREAMING}' AND idempotency_key IS NOT NULL"
                )
            } else {
                // The usual batch: nothing to keep.
                delete
            };
            let ids: Vec<Uuid> = delivered.iter().map(|id| *id.as_uuid()).collect();
            let (pool, now) = (self.store.pool.clone(), self.store.injected_now());
            let task = tokio::spawn(async move {
                let query = sqlx::query(AssertSqlSafe(sql)).bind(ids);
                let query = if keep { query.bind(now) } else { query };
                query.execute(&pool).await.map(drop).map_err(db_error)
            });
            self.pending = Some((task, position.0));
        }
        self.unsettled = false;
        self.keyed.clear();
        self.idempotent.clear();
        Ok(())
    }

    /// Reports the last settled position over the replication connection, stops it, and
    /// makes sure the slot got there: one settled since the client's last status update would
    /// otherwise be delivered again by the next reader. If the status update did not go out in
    /// time, the slot is moved with `pg_replication_slot_advance`, which decodes again from the
    /// slot's restart position (tens of milliseconds behind a large backlog); the walsender
    /// takes a status update as it is.
    async fn close(&mut self) -> Result<(), StoreError> {
        let settled = self.settle_pending().await;
        if let Some(mut client) = self.client.take() {
            if settled.is_ok() && self.confirmed > 0 {
                let metrics = client.metrics();
                let deadline = tokio::time::Instant::now() + 3 * STATUS_INTERVAL;
                while metrics.last_applied_lsn().as_u64() < self.confirmed
                    && client.is_running()
                    && tokio::time::Instant::now() < deadline
                {
                    tokio::time::sleep(std::time::Duration::from_millis(1)).await;
                }
            }
            let _ = client.shutdown().await;
        }
        settled?;
        if self.confirmed == 0 {
            return Ok(());
        }
        let position = Lsn::from_u64(self.confirmed).to_pg_string();
        let reached: Option<bool> = sqlx::query_scalar(
            "SELECT bool_and(confirmed_flush_lsn >= $2::pg_lsn) FROM pg_replication_slots \
             WHERE slot_name = $1",
        )
        .bind(&self.slot)
        .bind(&position)
        .fetch_one(&self.store.pool)
        .await
        .map_err(db_error)?;
        if reached != Some(false) {
            return Ok(());
        }
        // The server needs a moment to release the slot after the connection ends.
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(5);
        loop {
            let advanced = sqlx::query(
                "SELECT pg_replication_slot_advance(slot_name, $2::pg_lsn) FROM pg_replication_slots \
                 WHERE slot_name = $1 AND confirmed_flush_lsn < $2::pg_lsn",
            )
            .bind(&self.slot)
            .bind(&position)
            .execute(&self.store.pool)
            .await;
            match advanced {
                Ok(_) => return Ok(()),
                Err(sqlx::Error::Database(db))
                    if db.code().as_deref() == Some("55006")
                        && tokio::time::Instant::now() < deadline =>
                {
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                Err(e) => return Err(db_error(e)),
            }
        }
    }
}

/// How soon a settled position is reported to the server: what a crash may deliver again, and
/// the longest a graceful stop waits for its last report to go out.
const STATUS_INTERVAL: std::time::Duration = std::time::Duration::from_millis(20);

/// Longest wait for the rest of a transaction whose beginning has arrived.
const TRANSACTION_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

impl PgStream {
    /// Takes one decoded message into the batch being read.
    fn absorb(&mut self, message: Message<'_>, now: DateTime<Utc>, batch: &mut StreamBatch) {
        match message {
            Message::Relation {
                id,
                namespace,
                name,
                columns,
            } => {
                let ours = namespace == self.store.config.schema && name == self.store.config.table;
                self.relations.insert(id, Relation::new(ours, &columns));
            }
            Message::Insert { relation, values } => {
                let Some(relation) = self.relations.get(&relation).filter(|r| r.ours) else {
                    return;
                };
                let row = Tuple {
                    relation,
                    values: &values,
                };
                if let Some(streamed) = self.decode_insert(&row, now) {
                    batch.events.push(streamed);
                }
            }
            // Transaction boundaries arrive as events of their own; the rest is not ours.
            Message::Begin { .. } | Message::Commit { .. } | Message::Other(_) => {}
        }
    }

    /// Marks the events that must go through the table's path: their type is paused, or their
    /// ordering key has an event there already.
    async fn mark_holds(&mut self, events: &mut [Streamed]) -> Result<(), StoreError> {
        if events.iter().all(|s| s.hold.is_some()) {
            return Ok(());
        }
        let paused: HashSet<String> = sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT event_type FROM {}",
            self.store.config.qualified_paused()
        )))
        .fetch_all(&self.store.pool)
        .await
        .map_err(db_error)?
        .into_iter()
        .collect();
        let keys: Vec<&str> = events
            .iter()
            .filter_map(|s| s.event.ordering_key.as_deref())
            .collect::<HashSet<_>>()
            .into_iter()
            .collect();
        let waiting: HashSet<String> = if keys.is_empty() {
            HashSet::new()
        } else {
            sqlx::query_scalar(AssertSqlSafe(format!(
                "SELECT head_key FROM {} WHERE head_key = ANY($1)",
                self.store.config.qualified_table()
            )))
            .bind(keys)
            .fetch_all(&self.store.pool)
            .await
            .map_err(db_error)?
            .into_iter()
            .collect()
        };
        for s in events.iter_mut().filter(|s| s.hold.is_none()) {
            if paused.contains(&s.event.event_type) {
                s.hold = Some(HoldReason::Paused);
            } else if s
                .event
                .ordering_key
                .as_ref()
                .is_some_and(|k| waiting.contains(k))
            {
                s.hold = Some(HoldReason::KeyWaiting);
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A relation whose columns come in another order than the reader's, with columns it does
    /// not read among them.
    fn relation(names: &[&str]) -> Relation {
        let columns: Vec<Column> = names
            .iter()
            .map(|n| Column {
                name: (*n).to_owned(),
                type_oid: 0,
            })
            .collect();
        Relation::new(true, &columns)
    }

    #[test]
    fn a_row_is_read_by_its_relations_column_positions() {
        let names = [
            "payload",
            "lease_id",
            "status",
            "created_at",
            "id",
            "headers",
            "event_type",
            "aggregate_id",
            "aggregate_type",
            "idempotency_key",
            "ordering_key",
            "attempts",
            "max_attempts",
            "next_attempt_at",
            "updated_at",
            "audit_notes",
        ];
        let id = Uuid::from_u128(7);
        let at = 86_400_000_000i64.to_be_bytes(); // 2000-01-02 00:00 UTC
        let (attempts, max) = (2i32.to_be_bytes(), 5i32.to_be_bytes());
        let payload = b"\x01{\"size\": 3}";
        let headers = b"\x01{\"trace\": \"t-1\"}";
        let values = vec![
            Value::Binary(payload),
            Value::Null,
            Value::Binary(b"streaming"),
            Value::Binary(&at),
            Value::Binary(id.as_bytes()),
            Value::Binary(headers),
            Value::Binary(b"file.stored"),
            Value::Binary(b"f-1"),
            Value::Binary(b"file"),
            Value::Null,
            Value::Binary(b"k"),
            Value::Binary(&attempts),
            Value::Binary(&max),
            Value::Binary(&at),
            Value::Binary(&at),
            Value::Null,
        ];
        let rel = relation(&names);
        let row = Tuple {
            relation: &rel,
            values: &values,
        };
        let event = event_from(EventId::from_uuid(id), &row).unwrap();
        assert_eq!(event.event_type, "file.stored");
        assert_eq!(
            (event.aggregate_type.as_str(), event.aggregate_id.as_str()),
            ("file", "f-1")
        );
        assert_eq!(event.payload, serde_json::json!({"size": 3}));
        assert_eq!(event.headers.get("trace").map(String::as_str), Some("t-1"));
        assert_eq!(event.idempotency_key, None);
        assert_eq!(event.ordering_key.as_deref(), Some("k"));
        assert_eq!((event.attempts(), event.lifecycle.max_attempts), (2, 5));
        assert_eq!(event.created_at, pg_time(86_400_000_000).unwrap());

        // A column the reader needs is missing from the relation: named, not a panic.
        let without: Vec<&str> = names
            .iter()
            .copied()
            .filter(|n| *n != "aggregate_id")
            .collect();
        let values_without: Vec<Value<'_>> = values
            .iter()
            .enumerate()
            .filter(|(i, _)| names[*i] != "aggregate_id")
            .map(|(_, v)| v.clone())
            .collect();
        let rel = relation(&without);
        let row = Tuple {
            relation: &rel,
            values: &values_without,
        };
        let error = event_from(EventId::from_uuid(id), &row).unwrap_err();
        assert_eq!(error, "column aggregate_id is missing");

        // A value that cannot be read names its column.
        let mut bad = values.clone();
        bad[0] = Value::Binary(b"\x02{}");
        let rel = relation(&names);
        let row = Tuple {
            relation: &rel,
            values: &bad,
        };
        let error = event_from(EventId::from_uuid(id), &row).unwrap_err();
        assert_eq!(error, "payload has an unknown jsonb version");
    }

    #[test]
    fn connection_urls_are_read_as_libpq_reads_them() {
        let t = Target::parse("postgres://relay:p%40ss@db.example:6432/app").unwrap();
        assert_eq!(
            (
                t.host.as_str(),
                t.port,
                t.user.as_str(),
                t.password.as_str()
            ),
            ("db.example", 6432, "relay", "p@ss")
        );
        assert_eq!(t.database, "app");
        let socket = Target::parse("postgresql://root@/test?host=/run/postgresql").unwrap();
        assert_eq!(
            (socket.host.as_str(), socket.port),
            ("/run/postgresql", 5432)
        );
        let no_db = Target::parse("postgres://ann@localhost").unwrap();
        assert_eq!(no_db.database, "ann", "the user's name, as libpq does");
        assert!(Target::parse("postgres://a@h/d?sslmode=prefer").is_ok());
    }

    #[test]
    fn urls_it_cannot_serve_are_refused_with_the_reason() {
        let refused = |url: &str| match Target::parse(url) {
            Err(StoreError::InvalidInput(e)) => e.to_string(),
            Err(other) => panic!("{url}: {other}"),
            Ok(_) => panic!("{url} was accepted"),
        };
        assert!(refused("mysql://a@h/d").contains("not postgres://"));
        assert!(refused("postgres://a@h/d?sslmode=require").contains("cannot use TLS"));
        assert!(refused("postgres://a@h/d?sslmode=sometimes").contains("unknown sslmode"));
        assert!(refused("not a url").contains("database_url"));
    }

    #[test]
    fn slot_names_are_checked_as_postgresql_does() {
        assert!(validate_slot("outbox_relay_2").is_ok());
        for bad in ["", "Outbox", "outbox-relay", &"x".repeat(64)] {
            assert_eq!(validate_slot(bad).unwrap_err().field(), "slot", "{bad:?}");
        }
    }
}
