//! An outbox that lives in process memory: [`MemoryStore`] implements the whole
//! [`OutboxStore`](outbox_core::OutboxStore) contract, [`UnitOfWork`] gives it
//! transaction-like emits, and [`RecordingTransport`] captures deliveries and fails on cue.
//!
//! It is for application unit tests and zero-setup demos: the same application code, written
//! against [`Emit`](outbox_core::Emit), runs on PostgreSQL in production.
//!
//! ```
//! use outbox_core::{Emit, NewEvent};
//! use outbox_memory::{MemoryStore, RecordingTransport};
//! use outbox_worker::Worker;
//!
//! # tokio::runtime::Builder::new_current_thread().enable_time().build()?.block_on(async {
//! let store = MemoryStore::new();
//! let transport = RecordingTransport::new();
//!
//! let mut uow = store.begin().await?;
//! uow.emit(NewEvent::builder("file.stored", "upload", "7").build()?).await?;
//! uow.commit().await?;
//!
//! Worker::builder(store.clone(), transport.clone()).build()?.run_until_idle().await?;
//! assert_eq!(transport.delivered_types(), ["file.stored"]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

//! The uploads service of the README, written once against the transaction boundary and run
//! here on the memory store: the business write is a repository method on the backend's own
//! connection (an in-memory table here, an `INSERT … RETURNING id` on `sqlx::PgConnection` in
//! production), and nothing wraps the store's transaction.
//!
//! ```
//! use outbox_core::{Emit, NewEvent, StoreError, Transaction, Transactional};
//! use outbox_memory::{MemoryConn, MemoryStore, RecordingTransport};
//! use outbox_worker::Worker;
//!
//! #[outbox_core::async_trait]
//! trait Files: Send {
//!     async fn insert_file(&mut self, name: &str) -> Result<i64, StoreError>;
//! }
//!
//! #[derive(Clone, Default)]
//! struct FileTable(Vec<String>);
//!
//! #[outbox_core::async_trait]
//! impl Files for MemoryConn {
//!     async fn insert_file(&mut self, name: &str) -> Result<i64, StoreError> {
//!         let table = self.state::<FileTable>();
//!         table.0.push(name.to_owned());
//!         Ok(table.0.len() as i64)
//!     }
//! }
//!
//! async fn save_upload<S>(store: &S, name: &str, fail: bool) -> Result<i64, StoreError>
//! where
//!     S: Transactional,
//!     <S::Tx as Transaction>::Conn: Files,
//! {
//!     let mut tx = store.begin().await?;
//!     let id = tx.conn().insert_file(name).await?;
//!     tx.emit(NewEvent::builder("file.stored", "upload", id.to_string()).build()?).await?;
//!     if fail {
//!         tx.rollback().await?; // neither the file nor the event
//!     } else {
//!         tx.commit().await?;
//!     }
//!     Ok(id)
//! }
//!
//! # tokio::runtime::Builder::new_current_thread().enable_time().build()?.block_on(async {
//! let store = MemoryStore::new();
//! save_upload(&store, "cat.png", false).await?;
//! save_upload(&store, "broken.bin", true).await?;
//! let transport = RecordingTransport::new();
//! Worker::builder(store.clone(), transport.clone()).build()?.run_until_idle().await?;
//! assert_eq!(store.state::<FileTable>().0, ["cat.png"]);
//! assert_eq!(transport.delivered_types(), ["file.stored"]);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod conn;
mod recording;
mod store;
mod unit_of_work;

pub use conn::MemoryConn;
pub use recording::{RecordingTransport, Scripted};
pub use store::{MemoryStore, MemoryStoreBuilder};
pub use unit_of_work::{Committed, UnitOfWork};

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
