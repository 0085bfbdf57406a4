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

mod conn;
mod recording;
mod store;
mod unit_of_work;

pub use conn::MemoryConn;
pub use recording::{RecordingTransport, Scripted};
pub use store::{MemoryStore, MemoryStoreBuilder};
pub use unit_of_work::{Committed, UnitOfWork};
