//! One LISTEN connection per store, outside the store's pool: it feeds every worker's
//! [`Wakeups`], announces when this process's workers run out of work, and tells the store's
//! producer side ([`Notifier`]) when a worker anywhere did (see [`crate::notify`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use outbox_core::{WakeupSender, Wakeups};
use sqlx::PgPool;
use sqlx::postgres::{PgListener, PgPoolOptions};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use crate::notify::{self, IDLE, Notifier, STREAMING_OFF, STREAMING_ON};

/// Pause before reconnecting a listener whose connection failed.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// Owns the listening and announcing tasks; started on first use, restarted if they ended, and
/// stopped when the last clone of the store is dropped.
#[derive(Debug, Default)]
pub(crate) struct Listener {
    sender: Arc<WakeupSender>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

/// What the tasks need of the store.
#[derive(Clone)]
pub(crate) struct Context {
    /// The store's pool, for announcements and wake-ups.
    pub(crate) pool: PgPool,
    pub(crate) channel: String,
    pub(crate) notifier: Arc<Notifier>,
    /// The table's schema and name, to read its mode (streamed or claimed) on connecting.
    pub(crate) schema: String,
    pub(crate) table: String,
}

impl Listener {
    /// A receiver of wake-ups; starts the tasks if they are not running.
    pub(crate) fn subscribe(&self, context: impl FnOnce() -> Context) -> Wakeups {
        let wakeups = self.sender.subscribe();
        self.start(context);
        wakeups
    }

    /// Starts the tasks if they are not running (needs a tokio runtime; outside one, nothing
    /// starts: receivers never fire, workers poll, producers wake after every commit).
    /// `context` is only built when they start (this runs for every transaction the store
    /// begins).
    pub(crate) fn start(&self, context: impl FnOnce() -> Context) {
        let mut tasks = self.tasks.lock().unwrap_or_else(PoisonError::into_inner);
        if !tasks.is_empty() && !tasks.iter().any(JoinHandle::is_finished) {
            return;
        }
        let Ok(runtime) = tokio::runtime::Handle::try_current() else {
            return;
        };
        for task in tasks.drain(..) {
            task.abort();
        }
        let context = &context();
        // A pool of its own, so the long-lived LISTEN connection never takes one of the
        // application's connections (a pool of one would starve otherwise).
        let options = context.pool.connect_options().as_ref().clone();
        let own = PgPoolOptions::new()
            .max_connections(1)
            .connect_lazy_with(options);
        let announced = Arc::new(AtomicBool::new(false));
        tasks.push(runtime.spawn(listen(
            own,
            context.clone(),
            Arc::clone(&self.sender),
            Arc::clone(&announced),
        )));
        tasks.push(runtime.spawn(announce(
            context.clone(),
            Arc::clone(&self.sender),
            announced,
        )));
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        for task in self
            .tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            task.abort();
        }
    }
}

/// Listens on the channel: wakes subscribers on every wake-up, passes idle announcements to the
/// producer side, reconnects on its own. After any reconnect it wakes subscribers once, since
/// commits may have been missed meanwhile. Ends when the store's pool is closed.
async fn listen(
    own: PgPool,
    context: Context,
    sender: Arc<WakeupSender>,
    announced: Arc<AtomicBool>,
) {
    let Context {
        pool,
        channel,
        notifier,
        schema,
        table,
    } = &context;
    // Announcements of a switch may have been missed while disconnected: read the mode.
    let read_mode = || async {
        if let Ok(on) = crate::stream::table_streaming_on(pool, schema, table).await {
            notifier.set_streamed(on);
        }
    };
    let wake = || {
        // Our workers may be woken: they announce again if they find nothing.
        announced.store(false, Ordering::SeqCst);
        sender.wake();
    };
    loop {
        if own.is_closed() || pool.is_closed() {
            return;
        }
        let mut listener = match PgListener::connect_with(&own).await {
            Ok(listener) => listener,
            Err(error) => {
                warn!(%error, %channel, "outbox listener could not connect; retrying");
                tokio::time::sleep(RECONNECT_DELAY).await;
                continue;
            }
        };
        if let Err(error) = listener.listen(channel).await {
            warn!(%error, %channel, "outbox listener could not LISTEN; retrying");
            tokio::time::sleep(RECONNECT_DELAY).await;
            continue;
        }
        debug!(%channel, "outbox listener connected");
        // Listening first: a commit while the mode is read must already count as heard.
        notifier.listening(true, pool, channel);
        wake();
        read_mode().await;
        loop {
            match listener.try_recv().await {
                Ok(Some(message)) if message.payload() == IDLE => {
                    notifier.worker_idle(pool, channel);
                }
                Ok(Some(message)) if message.payload() == STREAMING_ON => {
                    notifier.set_streamed(true);
                }
                Ok(Some(message)) if message.payload() == STREAMING_OFF => {
                    notifier.set_streamed(false);
                }
                Ok(Some(_)) => wake(),
                // The connection was lost and made anew (notifications meanwhile are lost).
                Ok(None) => {
                    debug!(%channel, "outbox listener lost its connection; reconnected");
                    notifier.listening(true, pool, channel);
                    wake();
                    read_mode().await;
                }
                Err(sqlx::Error::PoolClosed) => {
                    notifier.listening(false, pool, channel);
                    return;
                }
                Err(error) => {
                    warn!(%error, %channel, "outbox listener failed; reconnecting");
                    notifier.listening(false, pool, channel);
                    tokio::time::sleep(RECONNECT_DELAY).await;
                    break;
                }
            }
        }
    }
}

/// Announces on the channel that this process's workers ran out of work: once per idle spell
/// (until a wake-up arrives), however many of them wait.
async fn announce(context: Context, sender: Arc<WakeupSender>, announced: Arc<AtomicBool>) {
    loop {
        sender.idle().await;
        if context.pool.is_closed() {
            return;
        }
        if announced.swap(true, Ordering::SeqCst) {
            continue;
        }
        if let Err(error) = notify::send(&context.pool, &context.channel, IDLE).await {
            // Announce again next time; meanwhile producers may not wake this worker, which
            // then finds their events at its next poll.
            announced.store(false, Ordering::SeqCst);
            debug!(%error, channel = %context.channel, "announcing idle workers failed");
        }
    }
}
