//! Wake-up on commit: one LISTEN connection per store, outside the store's pool, feeds every
//! worker's [`Wakeups`].

use std::sync::{Arc, Mutex, PoisonError, Weak};
use std::time::Duration;

use outbox_core::{WakeupSender, Wakeups};
use sqlx::PgPool;
use sqlx::postgres::{PgListener, PgPoolOptions};
use tokio::task::JoinHandle;
use tracing::{debug, warn};

/// Pause before reconnecting a listener whose connection failed.
const RECONNECT_DELAY: Duration = Duration::from_secs(1);

/// Owns the LISTEN task; started on the first subscription, restarted if it ended.
#[derive(Debug, Default)]
pub(crate) struct Listener {
    sender: Arc<WakeupSender>,
    task: Mutex<Option<JoinHandle<()>>>,
}

impl Listener {
    /// A receiver of wake-ups; starts the LISTEN task if none is running (needs a tokio runtime;
    /// outside one, the receiver simply never fires and workers poll).
    pub(crate) fn subscribe(&self, pool: &PgPool, channel: &str) -> Wakeups {
        let wakeups = self.sender.subscribe();
        let mut task = self.task.lock().unwrap_or_else(PoisonError::into_inner);
        let runtime = tokio::runtime::Handle::try_current();
        if let (true, Ok(runtime)) = (task.as_ref().is_none_or(JoinHandle::is_finished), runtime) {
            // A pool of its own, so the long-lived LISTEN connection never takes one of the
            // application's connections (a pool of one would starve otherwise).
            let options = pool.connect_options().as_ref().clone();
            let own = PgPoolOptions::new()
                .max_connections(1)
                .connect_lazy_with(options);
            let sender = Arc::downgrade(&self.sender);
            *task = Some(runtime.spawn(listen(own, channel.to_owned(), sender)));
        }
        wakeups
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        if let Some(task) = self
            .task
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take()
        {
            task.abort();
        }
    }
}

/// Listens on `channel` and wakes subscribers on every notification, reconnecting on its own.
/// After any reconnect it wakes them once too, since commits may have been missed meanwhile.
/// Ends when the store is gone or its pool is closed.
async fn listen(pool: PgPool, channel: String, sender: Weak<WakeupSender>) {
    let wake = || match sender.upgrade() {
        Some(sender) => {
            sender.wake();
            true
        }
        None => false,
    };
    loop {
        if pool.is_closed() {
            return;
        }
        let mut listener = match PgListener::connect_with(&pool).await {
            Ok(listener) => listener,
            Err(error) => {
                warn!(%error, %channel, "outbox listener could not connect; retrying");
                tokio::time::sleep(RECONNECT_DELAY).await;
                continue;
            }
        };
        if let Err(error) = listener.listen(&channel).await {
            warn!(%error, %channel, "outbox listener could not LISTEN; retrying");
            tokio::time::sleep(RECONNECT_DELAY).await;
            continue;
        }
        debug!(%channel, "outbox listener connected");
        if !wake() {
            return;
        }
        loop {
            match listener.try_recv().await {
                Ok(Some(_)) => {
                    if !wake() {
                        return;
                    }
                }
                // The connection was lost; the next call reconnects and re-subscribes.
                Ok(None) => {
                    debug!(%channel, "outbox listener lost its connection; reconnecting");
                    if !wake() {
                        return;
                    }
                }
                Err(sqlx::Error::PoolClosed) => return,
                Err(error) => {
                    warn!(%error, %channel, "outbox listener failed; reconnecting");
                    tokio::time::sleep(RECONNECT_DELAY).await;
                    break;
                }
            }
        }
    }
}
