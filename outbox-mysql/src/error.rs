//! Maps driver errors onto [`StoreError`]: connection trouble and lock conflicts are
//! retryable, the rest is not.

use outbox_core::StoreError;

/// Classifies a sqlx error as the stores do: lost connections, an exhausted or closed pool, a
/// server going away, deadlocks and lock wait timeouts are retryable
/// ([`StoreError::Unavailable`], or [`StoreError::Conflict`] for a deadlock); a statement
/// interrupted for running too long ([`StoreError::TimedOut`]); the rest
/// [`StoreError::Backend`].
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

/// The server's error number, when it sent one.
pub(crate) fn error_number(error: &sqlx::Error) -> Option<u16> {
    match error {
        sqlx::Error::Database(db) => db
            .try_downcast_ref::<sqlx::mysql::MySqlDatabaseError>()
            .map(|e| e.number()),
        _ => None,
    }
}

/// 1062: a duplicate key.
pub(crate) const DUPLICATE_KEY: u16 = 1062;

fn classify(error: &sqlx::Error) -> Kind {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => Kind::Transient,
        sqlx::Error::Database(_) => match error_number(error) {
            // Deadlock found; the transaction was rolled back, run it again.
            Some(1213) => Kind::Conflict,
            // Lock wait timeout; too many connections; server shutting down; lost
            // connection; a read-only server (a fail-over in progress).
            Some(1205 | 1040 | 1053 | 2006 | 2013 | 1290 | 1836) => Kind::Transient,
            // Query execution was interrupted (max_statement_time, KILL QUERY).
            Some(1317 | 1969 | 3024) => Kind::Cancelled,
            _ => Kind::Other,
        },
        _ => Kind::Other,
    }
}
