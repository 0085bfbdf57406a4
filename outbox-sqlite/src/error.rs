//! Maps driver errors onto [`StoreError`]: a busy or locked database is retryable, the rest is
//! not.

use outbox_core::StoreError;

/// Classifies a sqlx error as the stores do: a database another connection keeps busy past the
/// wait (`SQLITE_BUSY`, `SQLITE_LOCKED`), an exhausted or closed pool and I/O trouble are
/// retryable ([`StoreError::Unavailable`]); a transaction whose snapshot another writer
/// overtook (`SQLITE_BUSY_SNAPSHOT`) is a [`StoreError::Conflict`], to run again; an
/// interrupted statement is [`StoreError::TimedOut`]; the rest [`StoreError::Backend`].
pub fn db_error(error: sqlx::Error) -> StoreError {
    match classify(&error) {
        Kind::Conflict => StoreError::Conflict {
            reason: error.to_string(),
        },
        Kind::Transient => StoreError::Unavailable {
            source: Box::new(error),
        },
        Kind::Cancelled => StoreError::TimedOut {
            source: Box::new(error),
        },
        Kind::Other => StoreError::Backend {
            source: Box::new(error),
        },
    }
}

enum Kind {
    Conflict,
    Transient,
    Cancelled,
    Other,
}

/// SQLite's extended result code, when the error came from SQLite.
pub(crate) fn result_code(error: &sqlx::Error) -> Option<i32> {
    match error {
        sqlx::Error::Database(db) => db.code().and_then(|c| c.parse().ok()),
        _ => None,
    }
}

/// `SQLITE_CONSTRAINT_UNIQUE` and `SQLITE_CONSTRAINT_PRIMARYKEY`.
pub(crate) fn is_unique_violation(error: &sqlx::Error) -> bool {
    matches!(result_code(error), Some(2067 | 1555))
}

fn classify(error: &sqlx::Error) -> Kind {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed => Kind::Transient,
        sqlx::Error::Database(_) => match result_code(error) {
            // SQLITE_BUSY_SNAPSHOT: a deferred transaction read, another connection wrote,
            // and this one cannot write on its stale snapshot. Run it again.
            Some(517) => Kind::Conflict,
            // SQLITE_INTERRUPT.
            Some(9) => Kind::Cancelled,
            // SQLITE_BUSY and SQLITE_LOCKED, with their extended codes (recovery, timeout,
            // shared cache, …); SQLITE_IOERR and SQLITE_FULL, SQLITE_CANTOPEN.
            Some(code) if matches!(code & 0xff, 5 | 6 | 10 | 13 | 14) => Kind::Transient,
            _ => Kind::Other,
        },
        _ => Kind::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pool_trouble_is_retryable() {
        assert!(matches!(
            db_error(sqlx::Error::PoolTimedOut),
            StoreError::Unavailable { .. }
        ));
        assert!(matches!(
            db_error(sqlx::Error::RowNotFound),
            StoreError::Backend { .. }
        ));
    }
}
