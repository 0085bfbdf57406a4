//! The outbox delivery worker: generic over any [`OutboxStore`](outbox_core::OutboxStore) and
//! [`Transport`](outbox_core::Transport), on tokio.
//!
//! A worker waits for a wake-up from the store (or its poll interval), claims a batch of due
//! events under a lease, delivers them with bounded concurrency and a per-delivery timeout,
//! renews the lease while they run, and records the outcomes in one call per kind: delivered,
//! rescheduled with backoff, or dead. With [`ClaimMode::Locked`] it holds the batch under row
//! locks instead and records every outcome in one commit (fewer writes, for fast transports). A retention sweep deletes old delivered events. On
//! cancellation it stops claiming, lets in-flight deliveries finish within a grace period and
//! releases the rest, so nothing is lost. Every worker reports deliveries, their durations and
//! outcomes through the `metrics` facade ([`metrics`] lists the names), to whatever recorder
//! the application installed.
//!
//! ```
//! use std::time::Duration;
//! use outbox_core::{Emit, NewEvent};
//! use outbox_memory::{MemoryStore, RecordingTransport};
//! use outbox_worker::Worker;
//!
//! # tokio::runtime::Builder::new_current_thread().enable_time().build()?.block_on(async {
//! let store = MemoryStore::new();
//! let transport = RecordingTransport::new();
//! let worker = Worker::builder(store.clone(), transport.clone())
//!     .batch_size(50)
//!     .concurrency(8)
//!     .poll_interval(Duration::from_millis(200))
//!     .build()?;
//!
//! let running = worker.spawn();
//!
//! let mut uow = store.begin().await?;
//! uow.emit(NewEvent::builder("order.paid", "order", "o-1").build()?).await?;
//! uow.commit().await?; // wakes the worker
//!
//! while transport.delivered().is_empty() {
//!     tokio::task::yield_now().await;
//! }
//! let report = running.shutdown().await?;
//! assert_eq!(report.delivered, 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! # })?;
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod clock;
mod config;
pub mod metrics;
mod stream;
mod worker;

pub use clock::TokioClock;
pub use config::{ClaimMode, WorkerBuilder, WorkerConfig, bounds};
pub use worker::{RunningWorker, Worker, WorkerError, WorkerReport};

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
