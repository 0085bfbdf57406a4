//! [`UnitOfWork`]: the memory store's stand-in for a database transaction.

use std::fmt;

use async_trait::async_trait;
use outbox_core::{Emit, Emitted, EventId, NewEvent, OutboxEvent, StoreError};

use crate::store::MemoryStore;

type Hook = Box<dyn FnOnce() + Send>;

/// Events staged for one unit of work. They reach the store, all together, on
/// [`commit`](Self::commit); [`rollback`](Self::rollback) or dropping the unit discards them.
///
/// Application state changed in the same unit registers an [`on_commit`](Self::on_commit) hook,
/// so it too happens exactly when the events do.
///
/// **Idempotency keys across concurrent units.** A key already committed answers
/// [`Emitted::Duplicate`] at once, as on PostgreSQL. Two units still open that emit the same key
/// both answer [`Emitted::Created`]; the one that commits second has that event dropped and
/// listed in [`Committed::duplicates`]. PostgreSQL instead makes the second transaction's emit
/// wait until the first commits and then answers `Duplicate` (or `Created`, if the first rolled
/// back). Either way exactly one event with the key is stored; only the moment the second
/// caller learns it differs.
///
/// ```
/// use outbox_core::{Emit, NewEvent};
/// use outbox_memory::MemoryStore;
///
/// # tokio_test_block_on(async {
/// let store = MemoryStore::new();
/// let mut uow = store.begin();
/// uow.emit(NewEvent::builder("file.stored", "upload", "1").build()?).await?;
/// assert!(store.events().is_empty()); // not visible before commit
/// uow.commit();
/// assert_eq!(store.events().len(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # }).unwrap();
/// # fn tokio_test_block_on<F: std::future::Future>(f: F) -> F::Output {
/// #     tokio::runtime::Builder::new_current_thread().build().unwrap().block_on(f)
/// # }
/// ```
pub struct UnitOfWork {
    store: MemoryStore,
    staged: Vec<OutboxEvent>,
    hooks: Vec<Hook>,
}

/// What a commit stored.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Committed {
    /// Events stored.
    pub stored: Vec<EventId>,
    /// Staged events dropped because another unit of work committed the same idempotency key
    /// first (PostgreSQL's unique index has the same effect).
    pub duplicates: Vec<EventId>,
}

impl fmt::Debug for UnitOfWork {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UnitOfWork")
            .field("staged", &self.staged)
            .field("hooks", &self.hooks.len())
            .finish()
    }
}

impl UnitOfWork {
    pub(crate) fn new(store: MemoryStore) -> Self {
        Self {
            store,
            staged: Vec::new(),
            hooks: Vec::new(),
        }
    }

    /// Runs `hook` when (and only if) this unit commits, together with storing its events.
    pub fn on_commit(&mut self, hook: impl FnOnce() + Send + 'static) {
        self.hooks.push(Box::new(hook));
    }

    /// Events staged so far.
    pub fn staged(&self) -> &[OutboxEvent] {
        &self.staged
    }

    /// Stores the staged events, runs the commit hooks and wakes waiting workers.
    ///
    /// The events are stored under the store's lock, all at once; the hooks run after it is
    /// released, so a hook may read or use the store.
    pub fn commit(mut self) -> Committed {
        let mut committed = Committed::default();
        {
            let mut state = self.store.lock();
            for event in std::mem::take(&mut self.staged) {
                let taken = event
                    .idempotency_key
                    .as_ref()
                    .is_some_and(|k| state.keys.contains_key(k));
                if taken {
                    committed.duplicates.push(event.id);
                } else {
                    committed.stored.push(event.id);
                    state.put(event);
                }
            }
        }
        for hook in std::mem::take(&mut self.hooks) {
            hook();
        }
        if !committed.stored.is_empty() {
            self.store.wake();
        }
        committed
    }

    /// Discards the staged events and hooks.
    pub fn rollback(self) {}
}

#[async_trait]
impl Emit for UnitOfWork {
    async fn emit(&mut self, event: NewEvent) -> Result<Emitted, StoreError> {
        let now = self.store.now();
        self.store.inner.limits.check(&event, now)?;
        if let Some(key) = event.idempotency_key() {
            if let Some(id) = self.store.lock().keys.get(key) {
                return Ok(Emitted::Duplicate(*id));
            }
            if let Some(staged) = self
                .staged
                .iter()
                .find(|e| e.idempotency_key.as_deref() == Some(key))
            {
                return Ok(Emitted::Duplicate(staged.id));
            }
        }
        let stored = event.into_event(EventId::new(), now, self.store.inner.default_max_attempts);
        let id = stored.id;
        self.staged.push(stored);
        Ok(Emitted::Created(id))
    }
}
