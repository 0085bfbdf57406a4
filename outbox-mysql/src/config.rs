//! Where the outbox lives (its table) and the limits it enforces, validated on construction.

use outbox_core::{DEFAULT_MAX_ATTEMPTS, DeadHead, EmitLimits, ValidationError};

/// Longest table name: the key and pause tables append up to 7 bytes to it, within MySQL's 64.
pub const MAX_TABLE_LEN: usize = 56;

/// Settings of a [`MySqlStore`](crate::MySqlStore). Build with [`MySqlConfig::new`] and the
/// `with_*` methods; [`MySqlConfig::validate`] runs when the store is built.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MySqlConfig {
    pub(crate) table: String,
    pub(crate) limits: EmitLimits,
    pub(crate) default_max_attempts: u32,
    pub(crate) delete_delivered: bool,
    pub(crate) dead_head: DeadHead,
}

impl Default for MySqlConfig {
    fn default() -> Self {
        Self::new()
    }
}

impl MySqlConfig {
    /// Table `outbox_event` in the connection's database, [`EmitLimits::default`],
    /// [`DEFAULT_MAX_ATTEMPTS`] attempts.
    pub fn new() -> Self {
        Self {
            table: "outbox_event".into(),
            limits: EmitLimits::default(),
            default_max_attempts: DEFAULT_MAX_ATTEMPTS,
            delete_delivered: false,
            dead_head: DeadHead::Block,
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

    /// The outbox table's name.
    pub fn table(&self) -> &str {
        &self.table
    }

    /// Refuses a table name that is not a plain identifier, and limits out of range.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let t = &self.table;
        let plain = t
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_lowercase() || c == '_')
            && t.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_');
        if !plain || t.len() > MAX_TABLE_LEN {
            return Err(ValidationError::new(
                "table",
                format!(
                    "{t:?} must be 1 to {MAX_TABLE_LEN} lowercase letters, digits or '_', not starting with a digit"
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
        assert!(MySqlConfig::new().validate().is_ok());
        for bad in [
            "",
            "1t",
            "Outbox",
            "a-b",
            "a`b",
            &"t".repeat(MAX_TABLE_LEN + 1),
        ] {
            let err = MySqlConfig::new().with_table(bad).validate().unwrap_err();
            assert_eq!(err.field(), "table", "{bad:?}");
        }
    }
}
