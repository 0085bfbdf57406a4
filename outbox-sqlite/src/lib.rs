//! The transactional outbox on SQLite: a durable outbox without a database server, for one
//! process or several on one machine sharing the file.
//!
//! - **Emit inside your transaction.** [`SqliteStore::begin`] opens a [`SqliteTransaction`]
//!   that emits and runs your own statements alike, or [`SqliteStore::emitter`] writes through
//!   a connection you hold (`&mut *tx`). Rolled back ⇒ no event; committed ⇒ visible to
//!   workers.
//! - **One writer at a time.** SQLite lets one transaction write the file at a time: the
//!   store's writes take turns within the process and wait, bounded, for other processes
//!   (write-ahead logging keeps readers from waiting at all). A busy database past the wait is
//!   [`StoreError::Unavailable`](outbox_core::StoreError::Unavailable), to retry.
//! - **One set of rules.** Every change to an event is decided by the core state machine in
//!   Rust, inside one write transaction, exactly as the memory store decides it.
//! - **Wake-ups** are in-process (a commit through [`SqliteStore::begin`] wakes this process's
//!   workers); other processes' events are found by polling.
//!
//! ```no_run
//! use outbox_core::{Emit, NewEvent};
//! use outbox_sqlite::{SqliteConfig, SqliteStore};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let store = SqliteStore::connect("sqlite://app.db", SqliteConfig::new()).await?;
//! store.migrate().await?;
//!
//! let mut tx = store.begin().await?;
//! sqlx::query("INSERT INTO uploads (id, name) VALUES (?, ?)").bind(42).bind("cat.png").execute(&mut *tx).await?;
//! tx.emit(NewEvent::builder("file.stored", "upload", "42").build()?).await?;
//! tx.commit().await?; // the upload and its event, or neither
//! # Ok(()) }
//! ```
//!
//! See `docs/sqlite.md` in the repository for the schema, locking and what differs from
//! PostgreSQL.

mod config;
mod emit;
mod error;
mod row;
mod schema;
mod store;
mod work;

pub use config::{MAX_TABLE_LEN, SqliteConfig};
pub use emit::{SqliteEmitter, SqliteTransaction};
pub use error::db_error;
pub use schema::LATEST_VERSION;
pub use store::{ROW_BUFFER, SqliteStore, connect_options};

/// The README's examples, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
