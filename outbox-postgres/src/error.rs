//! Maps driver errors onto [`StoreError`]: connection trouble is retryable, the rest is not.

use outbox_core::StoreError;

/// Classifies a sqlx error as the stores do: lost connections, an exhausted or closed pool,
/// a server shutting down, serialization failures and deadlocks are
/// [`StoreError::Unavailable`] (retryable); a statement cancelled for running past the
/// connection's `statement_timeout` (or by an operator) is [`StoreError::TimedOut`]; the rest
/// [`StoreError::Backend`]. For code that
/// runs its own statements beside the store's (the inbox, for one).
pub fn db_error(error: sqlx::Error) -> StoreError {
    if is_cancel(&error) {
        StoreError::TimedOut {
            source: Box::new(error),
        }
    } else if is_transient(&error) {
        StoreError::Unavailable {
            source: Box::new(error),
        }
    } else {
        StoreError::Backend {
            source: Box::new(error),
        }
    }
}

/// Whether PostgreSQL cancelled the statement (57014: statement timeout or a cancel request).
fn is_cancel(error: &sqlx::Error) -> bool {
    matches!(error, sqlx::Error::Database(db) if db.code().as_deref() == Some("57014"))
}

/// Whether `error` is worth retrying: the connection or the server went away, the pool is
/// exhausted, or PostgreSQL asked for a retry (serialization failure, deadlock).
fn is_transient(error: &sqlx::Error) -> bool {
    match error {
        sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::WorkerCrashed
        | sqlx::Error::Protocol(_) => true,
        sqlx::Error::Database(db) => db.code().is_some_and(|code| {
            // 08: connection exception; 57P0x: admin/crash shutdown, cannot connect now;
            // 40001/40P01: serialization failure, deadlock; 53300: too many connections.
            code.starts_with("08")
                || code.starts_with("57P0")
                || matches!(code.as_ref(), "40001" | "40P01" | "53300")
        }),
        _ => false,
    }
}
