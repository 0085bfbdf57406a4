//! [`UnitOfWork`]: the memory store's transaction.

use std::fmt;

use async_trait::async_trait;
use outbox_core::{Emit, Emitted, EventId, NewEvent, OutboxEvent, StoreError, Transaction};

use crate::conn::{MemoryConn, Table};
use crate::store::MemoryStore;

type Hook = Box<dyn FnOnce() + Send>;

/// The memory store's [`Transaction`]: events staged for one unit of work and the business
/// state it changed ([`conn`](Transaction::conn), typed in-memory tables). Both reach the
/// store, all together, on [`commit`](Self::commit); [`rollback`](Self::rollback) or dropping
/// the unit discards them.
///
/// An [`on_commit`](Self::on_commit) hook runs something else (a message to a test, say)
/// exactly when the unit commits.
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
/// # tokio::runtime::Builder::new_current_thread().build()?.block_on(async {
/// let store = MemoryStore::new();
/// let mut uow = store.begin().await?;
/// uow.emit(NewEvent::builder("file.stored", "upload", "1").build()?).await?;
/// assert!(store.events().is_empty()); // not visible before commit
/// uow.commit().await?;
/// assert_eq!(store.events().len(), 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
pub struct UnitOfWork {
    store: MemoryStore,
    staged: Vec<OutboxEvent>,
    conn: MemoryConn,
    hooks: Vec<Hook>,
    /// Values kept until the unit ends (see [`UnitOfWork::hold`]); declared last, so they are
    /// dropped after everything else.
    held: Vec<Box<dyn Send>>,
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
            .field("tables", &self.conn.copies.len())
            .field("hooks", &self.hooks.len())
            .field("held", &self.held.len())
            .finish()
    }
}

impl UnitOfWork {
    pub(crate) fn new(store: MemoryStore) -> Self {
        Self {
            conn: MemoryConn::new(store.clone()),
            store,
            staged: Vec::new(),
            hooks: Vec::new(),
            held: Vec::new(),
        }
    }

    /// The store this unit belongs to.
    pub fn store(&self) -> &MemoryStore {
        &self.store
    }

    /// Keeps `guard` until this unit ends — after its commit has stored everything, or on
    /// rollback or drop — and then drops it: a lock of the application's that lasts as long as
    /// the transaction, as a database's row lock does.
    pub fn hold(&mut self, guard: impl Send + 'static) {
        self.held.push(Box::new(guard));
    }

    /// Runs `hook` when (and only if) this unit commits, together with storing its events.
    pub fn on_commit(&mut self, hook: impl FnOnce() + Send + 'static) {
        self.hooks.push(Box::new(hook));
    }

    /// The store's clock reading ([`MemoryStore::now`]).
    pub fn now(&self) -> chrono::DateTime<chrono::Utc> {
        self.store.now()
    }

    /// Events staged so far.
    pub fn staged(&self) -> &[OutboxEvent] {
        &self.staged
    }

    /// Stores the staged events and the changed tables, runs the commit hooks and wakes
    /// waiting workers; reports which events were stored.
    ///
    /// Events and tables are stored under the store's locks, all at once; the hooks run after
    /// they are released, so a hook may read or use the store. Fails with
    /// [`StoreError::Conflict`], keeping nothing, if another unit committed a change to a table
    /// this one touched since it took its copy.
    pub async fn commit(mut self) -> Result<Committed, StoreError> {
        let mut committed = Committed::default();
        {
            let mut tables = self.store.tables();
            let changed = self
                .conn
                .copies
                .iter()
                .any(|(id, (read, _))| tables.get(id).map_or(0, |t| t.version) != *read);
            if changed {
                return Err(StoreError::Conflict {
                    reason: "another transaction committed a change to a table this one used"
                        .into(),
                });
            }
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
                    state.admit(event);
                }
            }
            for (id, (read, value)) in self.conn.copies.drain() {
                let version = read.saturating_add(1);
                tables.insert(id, Table { version, value });
            }
        }
        for hook in std::mem::take(&mut self.hooks) {
            hook();
        }
        if !committed.stored.is_empty() {
            self.store.wake();
        }
        Ok(committed)
    }

    /// Discards the staged events, the table copies and the hooks.
    pub async fn rollback(self) -> Result<(), StoreError> {
        Ok(())
    }
}

#[async_trait]
impl Transaction for UnitOfWork {
    type Conn = MemoryConn;

    fn conn(&mut self) -> &mut MemoryConn {
        &mut self.conn
    }

    async fn commit(self) -> Result<(), StoreError> {
        UnitOfWork::commit(self).await.map(drop)
    }

    async fn rollback(self) -> Result<(), StoreError> {
        UnitOfWork::rollback(self).await
    }
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

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use outbox_core::Transaction;

    use crate::MemoryStore;

    #[derive(Clone, Default)]
    struct Count(u32);

    /// Notes, when dropped, what the store's committed `Count` was then.
    struct Witness {
        store: MemoryStore,
        seen: Arc<Mutex<Option<u32>>>,
    }

    impl Drop for Witness {
        fn drop(&mut self) {
            *self.seen.lock().unwrap() = Some(self.store.state::<Count>().0);
        }
    }

    #[tokio::test]
    async fn held_values_are_dropped_after_the_commit_stored_everything() {
        let store = MemoryStore::new();
        let seen = Arc::new(Mutex::new(None));
        let mut tx = store.begin().await.unwrap();
        tx.conn().state::<Count>().0 = 7;
        tx.hold(Witness {
            store: store.clone(),
            seen: Arc::clone(&seen),
        });
        assert_eq!(*seen.lock().unwrap(), None, "held while the unit is open");
        tx.commit().await.unwrap();
        assert_eq!(
            *seen.lock().unwrap(),
            Some(7),
            "the commit was visible when it let go"
        );
    }

    #[tokio::test]
    async fn held_values_are_dropped_on_rollback_and_drop() {
        let store = MemoryStore::new();
        for roll_back in [true, false] {
            let seen = Arc::new(Mutex::new(None));
            let mut tx = store.begin().await.unwrap();
            tx.hold(Witness {
                store: store.clone(),
                seen: Arc::clone(&seen),
            });
            if roll_back {
                tx.rollback().await.unwrap();
            } else {
                drop(tx);
            }
            assert_eq!(*seen.lock().unwrap(), Some(0));
        }
        assert!(Arc::ptr_eq(
            &store.extension::<Mutex<u8>>(),
            &store.clone().extension::<Mutex<u8>>()
        ));
    }
}
