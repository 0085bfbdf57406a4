//! Waking the workers after the commit of a transaction the store began: one `NOTIFY` at a time
//! per store, in its own tiny transaction, coalescing the commits that happen meanwhile.
//!
//! A `NOTIFY` inside a writing transaction makes PostgreSQL serialise its commit with every
//! other notifying transaction's (a database-wide lock held until the commit record is
//! flushed), so producers that notify cannot share WAL flushes. Sent afterwards, from a
//! transaction that writes nothing, it holds that lock only for a moment, and a burst of
//! commits costs one notification.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use sqlx::PgPool;

/// The payload of a post-commit wake-up (the trigger's is empty).
pub(crate) const PAYLOAD: &str = "commit";

#[derive(Debug, Default)]
pub(crate) struct Notifier {
    /// A commit happened that no notification sent so far covers.
    pending: AtomicBool,
    /// A task is sending notifications.
    running: AtomicBool,
}

impl Notifier {
    /// Asks for a wake-up on `channel`; returns at once. At most one notification is in flight
    /// per store; commits made while it is become one more after it.
    pub(crate) fn poke(self: &Arc<Self>, pool: &PgPool, channel: &str) {
        self.pending.store(true, Ordering::SeqCst);
        if self
            .running
            .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
            .is_err()
        {
            return; // the running task sees `pending` and sends one more
        }
        let me = Arc::clone(self);
        let pool = pool.clone();
        let channel = channel.to_owned();
        tokio::spawn(async move {
            loop {
                me.pending.store(false, Ordering::SeqCst);
                if let Err(error) = sqlx::query("SELECT pg_notify($1, $2)")
                    .bind(&channel)
                    .bind(PAYLOAD)
                    .execute(&pool)
                    .await
                {
                    // The workers still poll: a lost wake-up delays, never loses, an event.
                    tracing::warn!(%error, "waking the workers after a commit failed");
                }
                me.running.store(false, Ordering::SeqCst);
                let again = me.pending.load(Ordering::SeqCst)
                    && me
                        .running
                        .compare_exchange(false, true, Ordering::SeqCst, Ordering::SeqCst)
                        .is_ok();
                if !again {
                    break;
                }
            }
        });
    }
}
