//! Where the outbox lives (schema, table) and the limits it enforces, validated on construction.

use outbox_core::{DEFAULT_MAX_ATTEMPTS, DeadHead, EmitLimits, ValidationError};

/// Longest table name: index and trigger names append up to 16 bytes to it, within PostgreSQL's 63.
pub const MAX_TABLE_LEN: usize = 47;

/// Settings of a [`PgStore`](crate::PgStore). Build with [`PgConfig::new`] and the `with_*`
/// methods; [`PgConfig::validate`] runs when the store is built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PgConfig {
    pub(crate) schema: String,
    pub(crate) table: String,
    pub(crate) limits: EmitLimits,
    pub(crate) default_max_attempts: u32,
    pub(crate) listen: bool,
    pub(crate) delete_delivered: bool,
    pub(crate) dead_head: DeadHead,
}

impl Default for PgConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl PgConfig {
    /// Table `public.outbox_event`, [`EmitLimits::default`], [`DEFAULT_MAX_ATTEMPTS`] attempts.
    pub fn new() -> Self {
        Self {
            schema: "public".into(),
            table: "outbox_event".into(),
            limits: EmitLimits::default(),
            default_max_attempts: DEFAULT_MAX_ATTEMPTS,
            listen: true,
            delete_delivered: false,
            dead_head: DeadHead::Block,
        }
    }

    /// The schema holding the outbox table and its migration history (created if missing).
    pub fn with_schema(mut self, schema: impl Into<String>) -> Self {
        self.schema = schema.into();
        self
    }

    /// The outbox table's name.
    pub fn with_table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }

    /// What an emitted event may carry: the same [`EmitLimits`] the memory store enforces.
    pub fn with_limits(mut self, limits: EmitLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The largest payload accepted, in bytes of serialized JSON (a shorthand for one field of
    /// [`with_limits`](Self::with_limits)).
    pub fn with_max_payload_bytes(mut self, bytes: usize) -> Self {
        self.limits.max_payload_bytes = bytes;
        self
    }

    /// The limits emitted events are checked against.
    pub fn limits(&self) -> &EmitLimits {
        &self.limits
    }

    /// Attempts an event gets when it does not say (at least 1).
    pub fn with_default_max_attempts(mut self, attempts: u32) -> Self {
        self.default_max_attempts = attempts;
        self
    }

    /// Whether workers are woken by LISTEN/NOTIFY (default `true`). Turn it off behind a
    /// connection pooler in transaction mode (PgBouncer), where LISTEN does not work; workers
    /// then find new events by polling alone.
    pub fn with_listen(mut self, listen: bool) -> Self {
        self.listen = listen;
        self
    }

    /// Whether an acknowledged event is deleted at once instead of kept as `delivered`
    /// (default `false`: kept until the worker's retention sweep purges it).
    ///
    /// Deleting writes no second row version per event, so relaying costs the database less
    /// work (see `docs/benchmarks.md`); in exchange nothing is left to show that an event was
    /// delivered: [`get`](outbox_core::OutboxStore::get) answers `None` for it and the
    /// `delivered` count only counts the events kept below. Delivery guarantees are
    /// unchanged: the delete is fenced by the lease like the update it replaces.
    ///
    /// Two kinds of events are kept all the same: dead ones, and delivered ones with an
    /// idempotency key (until the retention sweep), since deleting those would let the key be
    /// used again and a retried request emit its event twice.
    pub fn with_delete_delivered(mut self, delete: bool) -> Self {
        self.delete_delivered = delete;
        self
    }

    /// Whether acknowledged events are deleted (see
    /// [`with_delete_delivered`](Self::with_delete_delivered)).
    pub fn delete_delivered(&self) -> bool {
        self.delete_delivered
    }

    /// What happens to an ordering key whose head dies (default [`DeadHead::Block`]: the key is
    /// parked until an operator retries or skips the head); see [`outbox_core::ordering`].
    /// Every store on one table should use the same policy: it is applied by whichever
    /// records the death.
    pub fn with_dead_head(mut self, policy: DeadHead) -> Self {
        self.dead_head = policy;
        self
    }

    /// The policy for dead heads (see [`with_dead_head`](Self::with_dead_head)).
    pub fn dead_head(&self) -> DeadHead {
        self.dead_head
    }

    /// The schema name.
    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// The table name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// `"schema"."table"`, as spliced into SQL: both parts validated identifiers, quoted so
    /// that a name which is also an SQL keyword (`user`, `offset`) is still just a name.
    pub fn qualified_table(&self) -> String {
        format!("\"{}\".\"{}\"", self.schema, self.table)
    }

    /// The table of paused event types, quoted and qualified for SQL.
    pub(crate) fn qualified_paused(&self) -> String {
        format!("\"{}\".\"{}_paused\"", self.schema, self.table)
    }

    /// The schema, quoted for SQL.
    pub(crate) fn quoted_schema(&self) -> String {
        format!("\"{}\"", self.schema)
    }

    /// The LISTEN/NOTIFY channel: `schema.table`.
    pub fn channel(&self) -> String {
        format!("{}.{}", self.schema, self.table)
    }

    /// Checks every setting; identifiers must be plain lowercase SQL identifiers, since they
    /// are spliced into statements (values never are).
    pub fn validate(&self) -> Result<(), ValidationError> {
        validate_identifier("schema", &self.schema)?;
        validate_identifier("table", &self.table)?;
        if self.table.len() > MAX_TABLE_LEN {
            return Err(ValidationError::new(
                "table",
                format!("longer than {MAX_TABLE_LEN} bytes (index names add a suffix to it)"),
            ));
        }
        if self.channel().len() > 63 {
            return Err(ValidationError::new(
                "table",
                "schema.table must fit in 63 bytes (PostgreSQL's limit for a NOTIFY channel)",
            ));
        }
        if self.default_max_attempts == 0 || self.default_max_attempts > self.limits.max_attempts {
            return Err(ValidationError::new(
                "default_max_attempts",
                format!(
                    "must be from 1 to max_attempts ({})",
                    self.limits.max_attempts
                ),
            ));
        }
        if self.schema.starts_with("pg_") {
            return Err(ValidationError::new(
                "schema",
                format!(
                    "{:?}: names starting with pg_ are reserved for PostgreSQL's own schemas",
                    self.schema
                ),
            ));
        }
        self.limits.validate()
    }
}

/// A plain SQL identifier: `[a-z_][a-z0-9_]*`, at most 63 bytes. Anything else is refused, so a
/// name can never alter a statement; the store quotes every name it splices, so keywords such as
/// `user` or `offset` are fine.
pub fn validate_identifier(field: &'static str, name: &str) -> Result<(), ValidationError> {
    let mut chars = name.chars();
    let valid_start = chars
        .next()
        .is_some_and(|c| c.is_ascii_lowercase() || c == '_');
    if !valid_start || !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_') {
        return Err(ValidationError::new(
            field,
            format!("{name:?} is not a plain SQL identifier ([a-z_][a-z0-9_]*)"),
        ));
    }
    if name.len() > 63 {
        return Err(ValidationError::new(
            field,
            format!("{name:?} is longer than 63 bytes"),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn identifiers_are_checked() {
        for ok in ["outbox_event", "_x", "a1", "public"] {
            assert!(validate_identifier("table", ok).is_ok(), "{ok}");
        }
        for bad in [
            "",
            "1abc",
            "Outbox",
            "a-b",
            "a.b",
            "x; drop table y",
            "a\"b",
            &"a".repeat(64),
        ] {
            let err = validate_identifier("table", bad).unwrap_err();
            assert_eq!(err.field(), "table", "{bad}");
        }
    }

    #[test]
    fn config_validation_names_the_field() {
        assert!(PgConfig::new().validate().is_ok());
        let cases = [
            (PgConfig::new().with_schema("Bad"), "schema"),
            (PgConfig::new().with_schema("pg_x"), "schema"),
            (PgConfig::new().with_table("t t"), "table"),
            (PgConfig::new().with_table("t".repeat(48)), "table"),
            (
                PgConfig::new()
                    .with_schema("s".repeat(40))
                    .with_table("t".repeat(40)),
                "table",
            ),
            (
                PgConfig::new().with_max_payload_bytes(0),
                "max_payload_bytes",
            ),
            (
                PgConfig::new().with_default_max_attempts(0),
                "default_max_attempts",
            ),
        ];
        for (config, field) in cases {
            assert_eq!(config.validate().unwrap_err().field(), field, "{config:?}");
        }
    }
}
