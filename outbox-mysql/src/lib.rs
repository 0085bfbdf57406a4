//! The transactional outbox on MySQL 8 and MariaDB 10.6 or later.
//!
//! - **Emit inside your transaction.** [`MySqlStore::emitter`] writes through the connection
//!   you pass (`&mut *tx`), or [`MySqlStore::begin`] opens a [`MySqlTransaction`] that emits and
//!   runs your own statements alike. Rolled back ⇒ no event; committed ⇒ visible to workers.
//! - **Claim safely from many workers.** `SELECT … FOR UPDATE SKIP LOCKED` takes a batch, and
//!   the claim is written under a lease id that fences every later outcome.
//! - **One set of rules.** Every change to an event is decided by the core state machine in
//!   Rust, on rows read under their row locks, exactly as the memory store decides it.
//! - **Wake-ups** are in-process (a commit through [`MySqlStore::begin`] wakes this process's
//!   workers); other writers' events are found by polling.
//!
//! ```no_run
//! use outbox_core::{Emit, NewEvent};
//! use outbox_mysql::{MySqlConfig, MySqlStore};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = sqlx::MySqlPool::connect("mysql://root@localhost/app").await?;
//! let store = MySqlStore::new(pool.clone(), MySqlConfig::new())?;
//! store.migrate().await?;
//!
//! let mut tx = pool.begin().await?;
//! sqlx::query("INSERT INTO uploads (id, name) VALUES (?, ?)").bind(42).bind("cat.png").execute(&mut *tx).await?;
//! store.emitter(&mut *tx).emit(NewEvent::builder("file.stored", "upload", "42").build()?).await?;
//! tx.commit().await?; // the upload and its event, or neither
//! # Ok(()) }
//! ```
//!
//! See `docs/mysql.md` in the repository for the schema, locking and what differs from
//! PostgreSQL.

mod config;
mod emit;
mod error;
mod row;
mod schema;
mod store;
mod work;

pub use config::{MAX_TABLE_LEN, MySqlConfig};
pub use emit::{MySqlEmitter, MySqlTransaction};
pub use error::db_error;
pub use schema::LATEST_VERSION;
pub use store::MySqlStore;
