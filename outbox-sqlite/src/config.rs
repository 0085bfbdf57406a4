//! Where the outbox lives (its table) and the limits it enforces, validated on construction.

use std::time::Duration;

use outbox_core::{DEFAULT_MAX_ATTEMPTS, DeadHead, EmitLimits, ValidationError};

/// Longest table name (the key and pause tables append up to 7 bytes to it).
pub const MAX_TABLE_LEN: usize = 56;

/// Settings of a [`SqliteStore`](crate::SqliteStore). Build with [`SqliteConfig::new`] and the
/// `with_*` methods; [`SqliteConfig::validate`] runs when the store is built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SqliteConfig {
    pub(crate) table: String,
    pub(crate) limits: EmitLimits,
    pub(crate) default_max_attempts: u32,
    pub(crate) delete_delivered: bool,
    pub(crate) dead_head: DeadHead,
    pub(crate) write_wait: Duration,
    pub(crate) locked_window: Duration,
}

impl Default for SqliteConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl SqliteConfig {
    /// Table `outbox_event`, [`EmitLimits::default`], [`DEFAULT_MAX_ATTEMPTS`] attempts, writers
    /// waiting up to 5 s for the database, locked claims keeping the write lock up to 5 ms.
    pub fn new() -> Self {
        Self {
            table: "outbox_event".into(),
            limits: EmitLimits::default(),
            default_max_attempts: DEFAULT_MAX_ATTEMPTS,
            delete_delivered: false,
            dead_head: DeadHead::Block,
            write_wait: Duration::from_secs(5),
            locked_window: Duration::from_millis(5),
        }
    }

    /// The outbox table's name (its ordering keys live in `<table>_keys`, paused types in
    /// `<table>_paused`).
    pub fn with_table(mut self, table: impl Into<String>) -> Self {
        self.table = table.into();
        self
    }

    /// What an emitted event may carry: the same [`EmitLimits`] every store enforces.
    pub fn with_limits(mut self, limits: EmitLimits) -> Self {
        self.limits = limits;
        self
    }

    /// The limits in force.
    pub fn limits(&self) -> &EmitLimits {
        &self.limits
    }

    /// Attempts an event gets when it does not say (at least 1).
    pub fn with_default_max_attempts(mut self, attempts: u32) -> Self {
        self.default_max_attempts = attempts.max(1);
        self
    }

    /// Whether acknowledged events are deleted instead of kept as delivered (default `false`);
    /// events with an idempotency key are kept all the same, so the key goes on refusing
    /// duplicates.
    pub fn with_delete_delivered(mut self, delete: bool) -> Self {
        self.delete_delivered = delete;
        self
    }

    /// Whether acknowledged events are deleted.
    pub fn delete_delivered(&self) -> bool {
        self.delete_delivered
    }

    /// What an ordering key whose head dies does (default [`DeadHead::Block`]).
    pub fn with_dead_head(mut self, policy: DeadHead) -> Self {
        self.dead_head = policy;
        self
    }

    /// The dead-head policy.
    pub fn dead_head(&self) -> DeadHead {
        self.dead_head
    }

    /// How long a write waits for the database before failing with
    /// [`StoreError::Unavailable`](outbox_core::StoreError::Unavailable) (default 5 s): for its
    /// turn among this process's writers, and again for another process's write transaction.
    pub fn with_write_wait(mut self, wait: Duration) -> Self {
        self.write_wait = wait;
        self
    }

    /// How long a write waits for the database.
    pub fn write_wait(&self) -> Duration {
        self.write_wait
    }

    /// How long a locked claim may keep the database's write lock while its batch is
    /// delivered (default 5 ms). A batch delivered within it is recorded in the claim's own
    /// transaction: one write transaction per batch, and nothing to undo if the relay dies,
    /// because the transaction dies with it. A batch still delivering when it ends is marked
    /// held and committed, giving the lock back, and recorded by a second transaction at the
    /// end; after that, the store marks batches at once until a marked batch is delivered
    /// within the window again, so a slow transport does not keep other writers waiting on
    /// every batch. Every writer, the application's emits included, waits while a claim holds
    /// the lock, so this bounds what a claim adds to their latency. Zero marks every batch at
    /// once.
    pub fn with_locked_window(mut self, window: Duration) -> Self {
        self.locked_window = window;
        self
    }

    /// How long a locked claim may keep the write lock while its batch is delivered.
    pub fn locked_window(&self) -> Duration {
        self.locked_window
    }

    /// The outbox table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Refuses a table name that is not a plain identifier, a zero write wait, a locked
    /// window not shorter than the write wait, and limits out of range.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let t = &self.table;
        let plain = t
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
            && t.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !plain || t.len() > MAX_TABLE_LEN || t.starts_with("sqlite_") {
            return Err(ValidationError::new(
                "table",
                format!(
                    "{t:?} must be 1 to {MAX_TABLE_LEN} lowercase letters, digits or '_', not starting with a digit or \"sqlite_\""
                ),
            ));
        }
        if self.write_wait.is_zero() {
            return Err(ValidationError::new(
                "write_wait",
                "must be longer than zero",
            ));
        }
        if self.locked_window >= self.write_wait {
            return Err(ValidationError::new(
                "locked_window",
                format!(
                    "{:?} must be shorter than the write wait ({:?}): other writers wait for it",
                    self.locked_window, self.write_wait
                ),
            ));
        }
        self.limits.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_names_are_plain_identifiers() {
        assert!(SqliteConfig::new().validate().is_ok());
        for bad in [
            "",
            "1t",
            "Outbox",
            "a-b",
            "a\"b",
            "sqlite_master",
            &"t".repeat(MAX_TABLE_LEN + 1),
        ] {
            let err = SqliteConfig::new().with_table(bad).validate().unwrap_err();
            assert_eq!(err.field(), "table", "{bad:?}");
        }
        let err = SqliteConfig::new()
            .with_write_wait(Duration::ZERO)
            .validate()
            .unwrap_err();
        assert_eq!(err.field(), "write_wait");
        let err = SqliteConfig::new()
            .with_write_wait(Duration::from_millis(100))
            .with_locked_window(Duration::from_millis(100))
            .validate()
            .unwrap_err();
        assert_eq!(err.field(), "locked_window");
        assert!(
            SqliteConfig::new()
                .with_locked_window(Duration::ZERO)
                .validate()
                .is_ok()
        );
    }
}
