//! The transaction boundary every store implements: [`Transactional::begin`] opens a
//! [`Transaction`] in which application code writes its business change through the backend's
//! own connection ([`Transaction::conn`]) and emits the events that announce it ([`Emit`]);
//! [`commit`](Transaction::commit) keeps both, [`rollback`](Transaction::rollback) (or dropping
//! the transaction) keeps neither.
//!
//! Application code written against these traits runs unchanged on every store; only the
//! business statement itself is the backend's (SQL on PostgreSQL, an in-memory table on the
//! memory store), behind a small repository trait of the application's:
//!
//! ```
//! use outbox_core::{Emit, NewEvent, StoreError, Transaction, Transactional};
//!
//! /// The application's own repository: one method per business write.
//! #[outbox_core::async_trait]
//! pub trait Uploads: Send {
//!     async fn insert_upload(&mut self, name: &str) -> Result<i64, StoreError>;
//! }
//!
//! /// Written once: runs on PostgreSQL in production and on the memory store in tests.
//! async fn save_upload<S>(store: &S, name: &str) -> Result<i64, StoreError>
//! where
//!     S: Transactional,
//!     <S::Tx as Transaction>::Conn: Uploads,
//! {
//!     let mut tx = store.begin().await?;
//!     let id = tx.conn().insert_upload(name).await?;
//!     tx.emit(NewEvent::builder("file.stored", "upload", id.to_string()).build()?).await?;
//!     tx.commit().await?; // the upload and its event, or neither
//!     Ok(id)
//! }
//! ```

use async_trait::async_trait;

use crate::error::StoreError;
use crate::store::Emit;

/// One transaction of a store: emits events ([`Emit`]) and gives the backend's own connection
/// for the business change; both are kept by [`commit`](Self::commit) and discarded by
/// [`rollback`](Self::rollback) or by dropping the transaction.
///
/// Implement it with `#[outbox_core::async_trait]`:
///
/// ```
/// use outbox_core::{Emit, Emitted, EventId, NewEvent, StoreError, Transaction};
///
/// /// A transaction that only counts what it emits (a stand-in for a real backend).
/// struct Counting { emitted: usize }
///
/// #[outbox_core::async_trait]
/// impl Emit for Counting {
///     async fn emit(&mut self, _event: NewEvent) -> Result<Emitted, StoreError> {
///         self.emitted += 1;
///         Ok(Emitted::Created(EventId::new()))
///     }
/// }
///
/// #[outbox_core::async_trait]
/// impl Transaction for Counting {
///     type Conn = usize;
///     fn conn(&mut self) -> &mut usize { &mut self.emitted }
///     async fn commit(self) -> Result<(), StoreError> { Ok(()) }
///     async fn rollback(self) -> Result<(), StoreError> { Ok(()) }
/// }
/// ```
#[async_trait]
pub trait Transaction: Emit + Sized {
    /// The backend's connection for business statements: `sqlx::PgConnection` on PostgreSQL,
    /// `outbox_memory::MemoryConn` (typed in-memory tables) on the memory store.
    type Conn: Send + ?Sized;

    /// The connection, inside this transaction.
    fn conn(&mut self) -> &mut Self::Conn;

    /// Commits the business change and the events together. On an error nothing was kept.
    async fn commit(self) -> Result<(), StoreError>;

    /// Discards the business change and the events.
    async fn rollback(self) -> Result<(), StoreError>;
}

/// A store that opens [`Transaction`]s. Implement it with `#[outbox_core::async_trait]`; a
/// wrapper forwards `begin`:
///
/// ```
/// use outbox_core::{StoreError, Transactional};
///
/// /// Counts transactions begun on the store it wraps.
/// struct Counted<S> { inner: S, begun: std::sync::atomic::AtomicU64 }
///
/// #[outbox_core::async_trait]
/// impl<S: Transactional> Transactional for Counted<S> {
///     type Tx = S::Tx;
///     async fn begin(&self) -> Result<S::Tx, StoreError> {
///         self.begun.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
///         self.inner.begin().await
///     }
/// }
/// ```
#[async_trait]
pub trait Transactional: Send + Sync {
    /// Its transaction.
    type Tx: Transaction + Send;

    /// Begins a transaction.
    async fn begin(&self) -> Result<Self::Tx, StoreError>;
}

/// Implements the transaction boundary for a SQL store's transaction type: `Deref`/`DerefMut`
/// to its connection, [`Emit`] (which marks the transaction as having emitted),
/// [`Transaction`] and the store's [`Transactional`].
///
/// The type must have the fields `store` (the store), `tx` (the open transaction, which
/// dereferences to `$conn`) and `emitted: bool`, and inherent `commit` and `rollback`
/// methods; the store must have inherent `begin`, and `emit`/`emit_all` taking
/// `&mut $conn`. The three SQL stores (PostgreSQL, MySQL, SQLite) differ only in those.
#[macro_export]
macro_rules! sql_transaction {
    ($tx:ident, $conn:ty, $store:ident) => {
        impl ::std::ops::Deref for $tx {
            type Target = $conn;
            fn deref(&self) -> &$conn {
                &self.tx
            }
        }

        impl ::std::ops::DerefMut for $tx {
            fn deref_mut(&mut self) -> &mut $conn {
                &mut self.tx
            }
        }

        #[$crate::async_trait]
        impl $crate::Emit for $tx {
            async fn emit(
                &mut self,
                event: $crate::NewEvent,
            ) -> ::std::result::Result<$crate::Emitted, $crate::StoreError> {
                self.emitted = true;
                self.store.emit(&mut self.tx, event).await
            }
            async fn emit_all(
                &mut self,
                events: ::std::vec::Vec<$crate::NewEvent>,
            ) -> ::std::result::Result<::std::vec::Vec<$crate::Emitted>, $crate::StoreError> {
                self.emitted = true;
                self.store.emit_all(&mut self.tx, events).await
            }
        }

        #[$crate::async_trait]
        impl $crate::Transaction for $tx {
            type Conn = $conn;

            fn conn(&mut self) -> &mut $conn {
                &mut self.tx
            }

            async fn commit(self) -> ::std::result::Result<(), $crate::StoreError> {
                $tx::commit(self).await
            }

            async fn rollback(self) -> ::std::result::Result<(), $crate::StoreError> {
                $tx::rollback(self).await
            }
        }

        #[$crate::async_trait]
        impl $crate::Transactional for $store {
            type Tx = $tx;

            async fn begin(&self) -> ::std::result::Result<$tx, $crate::StoreError> {
                $store::begin(self).await
            }
        }
    };
}
