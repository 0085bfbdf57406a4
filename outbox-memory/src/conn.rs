//! [`MemoryConn`]: the memory store's "connection" for business state — typed in-memory tables
//! that a transaction changes and its commit applies, together with its events.

use std::any::{Any, TypeId};
use std::collections::HashMap;

use crate::store::MemoryStore;

/// A committed table: its value and how many commits have changed it.
#[derive(Debug)]
pub(crate) struct Table {
    pub(crate) version: u64,
    pub(crate) value: Box<dyn Any + Send + Sync>,
}

/// The business state a memory transaction works on: one table per Rust type, which the
/// application defines (a `Vec` of rows, a map by id — anything `Clone + Default`).
///
/// [`state`](Self::state) gives the transaction its own copy of a table, taken when the
/// transaction first touches it; the copy replaces the committed table when the transaction
/// commits, and is dropped on rollback. If another transaction committed a change to the same
/// table in between, the commit fails with
/// [`StoreError::Conflict`](outbox_core::StoreError::Conflict) and keeps nothing (as a
/// serializable database transaction would); run the transaction again.
///
/// ```
/// use outbox_core::{Emit, NewEvent, Transaction};
/// use outbox_memory::MemoryStore;
///
/// #[derive(Clone, Default)]
/// struct Uploads(Vec<String>);
///
/// # tokio::runtime::Builder::new_current_thread().build()?.block_on(async {
/// let store = MemoryStore::new();
/// let mut tx = store.begin().await?;
/// tx.conn().state::<Uploads>().0.push("cat.png".into());
/// tx.emit(NewEvent::builder("file.stored", "upload", "1").build()?).await?;
/// tx.rollback().await?;
/// assert!(store.state::<Uploads>().0.is_empty() && store.events().is_empty());
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// # })?;
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct MemoryConn {
    store: MemoryStore,
    /// Copies this transaction works on, with the version each was taken at.
    pub(crate) copies: HashMap<TypeId, (u64, Box<dyn Any + Send + Sync>)>,
}

impl MemoryConn {
    pub(crate) fn new(store: MemoryStore) -> Self {
        Self {
            store,
            copies: HashMap::new(),
        }
    }

    /// This transaction's copy of the table of type `T`, if it took one already (without taking
    /// one).
    pub fn peek<T: Clone + Default + Send + Sync + 'static>(&self) -> Option<&T> {
        self.copies
            .get(&TypeId::of::<T>())
            .and_then(|(_, value)| value.downcast_ref::<T>())
    }

    /// This transaction's copy of the table of type `T` (empty, `T::default()`, until some
    /// transaction commits one).
    pub fn state<T: Clone + Default + Send + Sync + 'static>(&mut self) -> &mut T {
        let id = TypeId::of::<T>();
        let store = &self.store;
        let entry = self.copies.entry(id).or_insert_with(|| {
            let tables = store.tables();
            let (version, value) = tables.get(&id).map_or((0, T::default()), |t| {
                let value = t.value.downcast_ref::<T>().cloned().unwrap_or_default();
                (t.version, value)
            });
            (version, Box::new(value))
        });
        if !entry.1.is::<T>() {
            entry.1 = Box::new(T::default());
        }
        match entry.1.downcast_mut::<T>() {
            Some(table) => table,
            None => unreachable!("the copy was just made a T"),
        }
    }
}
