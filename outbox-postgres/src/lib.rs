//! The transactional outbox on PostgreSQL.
//!
//! - **Emit inside your transaction.** [`PgStore::emitter`] writes through the connection you
//!   pass (`&mut *tx`), or [`PgStore::begin`] opens a [`PgTransaction`] that emits and runs your
//!   own statements alike. Rolled back ⇒ no event; committed ⇒ visible to workers.
//! - **Claim safely from many workers.** One `UPDATE … WHERE id IN (SELECT … FOR UPDATE SKIP
//!   LOCKED LIMIT n) RETURNING …` claims a batch under a lease; acks, nacks and releases are one
//!   statement per batch, fenced by the lease id.
//! - **Wake on commit.** A statement-level trigger sends one `NOTIFY` per inserting statement
//!   (PostgreSQL folds repeats within a transaction into one); [`PgStore`] listens on one
//!   connection and wakes every worker, reconnecting on its own. Polling remains the fallback.
//!
//! ```no_run
//! use outbox_core::{Emit, NewEvent};
//! use outbox_postgres::{PgConfig, PgStore};
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! let pool = sqlx::PgPool::connect("postgres://localhost/app").await?;
//! let store = PgStore::new(pool.clone(), PgConfig::new())?;
//! store.migrate().await?;
//!
//! let mut tx = pool.begin().await?;
//! sqlx::query("INSERT INTO uploads (id, name) VALUES ($1, $2)").bind(42).bind("cat.png").execute(&mut *tx).await?;
//! store.emitter(&mut *tx).emit(NewEvent::builder("file.stored", "upload", "42").build()?).await?;
//! tx.commit().await?; // the upload and its event, or neither
//! # Ok(()) }
//! ```
//!
//! See `docs/postgres.md` in the repository for the schema, statuses, leases, guarantees, the
//! role a worker needs and how to roll the schema back.

mod config;
mod emit;
mod error;
mod listen;
mod notify;
mod pgoutput;
mod row;
mod schema;
#[cfg(feature = "testing")]
pub mod scratch;
mod sql;
mod store;
mod stream;
#[cfg(feature = "testing")]
pub mod testing;

pub use config::{MAX_TABLE_LEN, PgConfig, validate_identifier};
pub use emit::{PgEmitter, PgTransaction};
pub use error::db_error;
pub use schema::LATEST_VERSION;
pub use store::PgStore;
pub use stream::{PgStream, SlotStatus, StreamSetup, validate_slot};

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
