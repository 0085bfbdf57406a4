//! Waking the workers after the commit of a transaction the store began — and only when a
//! worker is waiting.
//!
//! A `NOTIFY` inside a writing transaction makes PostgreSQL serialise its commit with every
//! other notifying transaction's (a database-wide lock held until the commit record is
//! flushed), so producers that notify on every commit cannot share WAL flushes. Transactions
//! begun by [`PgStore::begin`](crate::PgStore::begin) therefore switch the table's trigger off
//! and leave the wake-up to the store.
//!
//! A worker that keeps finding events claims again at once and needs no wake-up. So workers
//! announce on the channel when they run out of work (payload [`IDLE`]), every store's listener
//! hears it, and a producer wakes the workers only while some worker has announced itself idle
//! since its last wake-up: by a `NOTIFY` inside the next committing transaction, delivered with
//! its commit (one transaction per idle spell: the load is light and nothing contends). A
//! commit made while no worker was idle is remembered; if a worker announces itself idle
//! afterwards, it is woken at once for it (it may have looked just before that commit), from a
//! transaction of its own. Without a listener connection the producer cannot hear
//! announcements and wakes the workers after every commit, from a transaction of its own in the
//! background, one at a time per store, a burst of commits folded into one more. Whatever is
//! lost, the workers' poll interval bounds the delay.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use sqlx::PgPool;

/// The payload of a post-commit wake-up (the trigger's is empty).
pub(crate) const PAYLOAD: &str = "commit";
/// The payload of a worker's announcement that it ran out of work; not a wake-up.
pub(crate) const IDLE: &str = "idle";
/// The payload saying the table was switched to the log-reading relay: producers stop waking
/// anyone. Not a wake-up.
pub(crate) const STREAMING_ON: &str = "streaming";
/// The payload saying the table was switched back to claims: producers wake workers again.
pub(crate) const STREAMING_OFF: &str = "claiming";

/// Whether a commit of new events that did not wake the workers from inside wakes them after.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Wake {
    /// Not at all: no worker is waiting (they are busy, or absent).
    No,
    /// By a notification after the commit, from a transaction of its own, folded with other
    /// commits': a worker turned idle during the commit, or announcements cannot be heard (then
    /// every commit wakes, and a `NOTIFY` inside each would serialise the commits).
    After,
}

/// What a producer knows of the workers: whether to wake them after a commit.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Producer {
    /// Announcements can be heard (the store's listener is connected).
    listening: bool,
    /// A worker announced itself idle and has not been woken since.
    idle: bool,
    /// A commit happened that no wake-up covers (no worker was idle then).
    unannounced: bool,
}

impl Producer {
    /// Events are about to be committed: whether to wake the workers from inside the
    /// transaction (a worker said it is idle, and announcements can be heard).
    pub(crate) fn committing(&mut self) -> bool {
        if self.listening && self.idle {
            self.idle = false;
            self.unannounced = false;
            true
        } else {
            false
        }
    }

    /// The commit that was to wake an idle worker from inside failed: the worker still waits.
    pub(crate) fn wake_failed(&mut self) {
        self.idle = true;
    }

    /// Events were committed without a wake-up inside: whether to wake the workers now. Only
    /// once committed may a commit count as unannounced: an idle worker answered before the
    /// commit would look too early and find nothing.
    pub(crate) fn committed(&mut self) -> Wake {
        if !self.listening || self.idle {
            self.idle = false;
            self.unannounced = false;
            Wake::After
        } else {
            self.unannounced = true;
            Wake::No
        }
    }

    /// A worker announced that it ran out of work: whether to wake the workers now (for a
    /// commit it may not have seen).
    pub(crate) fn worker_idle(&mut self) -> bool {
        if std::mem::take(&mut self.unannounced) {
            true
        } else {
            self.idle = true;
            false
        }
    }

    /// The listener connected (`true`) or lost its connection (`false`): whether to wake the
    /// workers now. Announcements may have been missed meanwhile, so a fresh connection counts
    /// as one; a lost one no longer hears the announcement an unannounced commit waits for.
    pub(crate) fn listening(&mut self, on: bool) -> bool {
        self.listening = on;
        if on {
            self.worker_idle()
        } else {
            std::mem::take(&mut self.unannounced)
        }
    }
}

/// A store's producer side: decides when to wake the workers and sends the wake-ups.
#[derive(Debug, Default)]
pub(crate) struct Notifier {
    producer: Mutex<Producer>,
    /// A wake-up was asked for that no notification sent so far covers.
    pending: AtomicBool,
    /// A task is sending notifications.
    running: AtomicBool,
    /// The table is read by the log-reading relay: commits wake nobody (nobody waits for
    /// them), so producers send no notification at all.
    streamed: AtomicBool,
    /// Whether the table's mode has been read since the store was made (on its first
    /// transaction); the listener keeps it up to date after.
    mode_read: tokio::sync::OnceCell<()>,
}

impl Notifier {
    /// Whether the table is streamed (producers then send nothing).
    pub(crate) fn streamed(&self) -> bool {
        self.streamed.load(Ordering::SeqCst)
    }

    /// Records the table's mode, as read or announced.
    pub(crate) fn set_streamed(&self, on: bool) {
        self.streamed.store(on, Ordering::SeqCst);
    }

    /// Reads the table's mode once per store, before its first transaction's commit.
    pub(crate) async fn read_mode_once(&self, pool: &PgPool, schema: &str, table: &str) {
        self.mode_read
            .get_or_init(|| async {
                match crate::stream::table_streaming_on(pool, schema, table).await {
                    Ok(on) => self.set_streamed(on),
                    // Unknown: keep waking as a claim-based table needs; the listener reads
                    // it again when it connects.
                    Err(error) => tracing::debug!(%error, "reading the outbox table's mode failed"),
                }
            })
            .await;
    }

    /// Events are about to be committed through the store: whether to wake the workers from
    /// inside the transaction. Then report a failed commit to
    /// [`wake_failed`](Self::wake_failed); otherwise report the commit to
    /// [`committed`](Self::committed).
    pub(crate) fn committing(&self) -> bool {
        self.lock().committing()
    }

    /// The commit that was to wake an idle worker from inside failed.
    pub(crate) fn wake_failed(&self) {
        self.lock().wake_failed();
    }

    /// Events were committed without a wake-up inside; wakes the workers in the background if
    /// one is waiting (or announcements cannot be heard).
    pub(crate) fn committed(self: &Arc<Self>, pool: &PgPool, channel: &str) {
        let wake = self.lock().committed();
        if wake == Wake::After {
            self.poke(pool, channel);
        }
    }

    /// A worker announced that it is idle.
    pub(crate) fn worker_idle(self: &Arc<Self>, pool: &PgPool, channel: &str) {
        if self.update(Producer::worker_idle) {
            self.poke(pool, channel);
        }
    }

    /// The store's listener connected or lost its connection.
    pub(crate) fn listening(self: &Arc<Self>, on: bool, pool: &PgPool, channel: &str) {
        if self.update(|p| p.listening(on)) {
            self.poke(pool, channel);
        }
    }

    fn update(&self, f: impl FnOnce(&mut Producer) -> bool) -> bool {
        f(&mut self.lock())
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Producer> {
        self.producer.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends a wake-up on `channel`; returns at once. At most one notification is in flight
    /// per store; wake-ups asked for while it is become one more after it.
    fn poke(self: &Arc<Self>, pool: &PgPool, channel: &str) {
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
                if let Err(error) = send(&pool, &channel, PAYLOAD).await {
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

/// `pg_notify(channel, payload)` on `executor`: a pool (a transaction of its own) or a
/// connection in a transaction (sent with its commit).
pub(crate) async fn send<'e>(
    executor: impl sqlx::PgExecutor<'e>,
    channel: &str,
    payload: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_notify($1, $2)")
        .bind(channel)
        .bind(payload)
        .execute(executor)
        .await
        .map(drop)
}

#[cfg(test)]
mod tests {
    use super::{Producer, Wake};

    fn listening() -> Producer {
        let mut p = Producer::default();
        p.listening(true);
        p
    }

    /// One commit through the store: `Some(true)` woken inside, `Some(false)` after, `None` not.
    fn commit(p: &mut Producer) -> Option<bool> {
        if p.committing() {
            return Some(true);
        }
        (p.committed() == Wake::After).then_some(false)
    }

    #[test]
    fn without_a_listener_every_commit_wakes_after_it() {
        let mut p = Producer::default();
        assert_eq!(commit(&mut p), Some(false));
        assert_eq!(commit(&mut p), Some(false));
        assert!(!p.listening(false));
        assert_eq!(commit(&mut p), Some(false));
    }

    #[test]
    fn a_fresh_connection_counts_as_an_idle_worker_woken_from_inside() {
        let mut p = listening();
        assert_eq!(commit(&mut p), Some(true));
        assert_eq!(commit(&mut p), None, "no worker said it is idle since");
    }

    #[test]
    fn busy_workers_are_not_woken() {
        let mut p = listening();
        commit(&mut p);
        for _ in 0..100 {
            assert_eq!(commit(&mut p), None);
        }
    }

    #[test]
    fn an_idle_worker_is_woken_by_the_next_commit_once() {
        let mut p = listening();
        commit(&mut p);
        assert!(!p.worker_idle(), "nothing committed since the last wake-up");
        assert_eq!(commit(&mut p), Some(true));
        assert_eq!(commit(&mut p), None);
    }

    #[test]
    fn a_commit_unseen_by_a_worker_that_then_idles_wakes_it_at_once() {
        let mut p = listening();
        commit(&mut p);
        assert_eq!(commit(&mut p), None, "no worker idle: remembered, not sent");
        assert!(
            p.worker_idle(),
            "the idle worker may have looked before that commit"
        );
        assert_eq!(commit(&mut p), None, "that wake-up covered the idle worker");
    }

    #[test]
    fn a_worker_idle_during_a_commit_is_woken_after_it_not_before() {
        let mut p = listening();
        commit(&mut p);
        assert!(!p.committing(), "no worker idle as the commit starts");
        assert!(
            !p.worker_idle(),
            "announced mid-commit: a wake-up now would come before the events are visible"
        );
        assert_eq!(p.committed(), Wake::After, "so it comes after the commit");
    }

    #[test]
    fn a_failed_commit_leaves_the_idle_worker_to_the_next() {
        let mut p = listening();
        assert!(p.committing());
        p.wake_failed();
        assert_eq!(commit(&mut p), Some(true));
    }

    #[test]
    fn losing_the_listener_wakes_for_an_unannounced_commit() {
        let mut p = listening();
        commit(&mut p);
        assert_eq!(commit(&mut p), None);
        assert!(p.listening(false));
        assert_eq!(
            commit(&mut p),
            Some(false),
            "deaf again: every commit wakes"
        );
    }

    #[test]
    fn a_reconnect_wakes_for_commits_made_while_announcements_could_be_missed() {
        let mut p = listening();
        commit(&mut p);
        assert_eq!(commit(&mut p), None);
        assert!(p.listening(true));
    }
}
