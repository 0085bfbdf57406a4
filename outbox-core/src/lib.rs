//! The core of the transactional outbox: the event, its state machine, retry policy, and the
//! traits every backend and transport implements.
//!
//! An application writes its business change and an event describing it **in one
//! transaction** through [`Emit`]; a worker later claims committed events from an
//! [`OutboxStore`], hands them to a [`Transport`] and records the outcome. Delivery is at least
//! once: consumers de-duplicate by [`EventId`].
//!
//! ```
//! use chrono::Utc;
//! use outbox_core::{transition, EventId, Lease, LeaseId, NewEvent, Status, Transition};
//!
//! // What an application emits; validated on build.
//! let new = NewEvent::builder("file.stored", "upload", "42")
//!     .payload(serde_json::json!({ "path": "/u/42.png" }))
//!     .build()?;
//!
//! // What a store keeps, and the one function that decides every status change.
//! let now = Utc::now();
//! let event = new.into_event(EventId::new(), now, 5);
//! assert_eq!(event.status(), Status::Pending);
//!
//! let lease = Lease { id: LeaseId::new(), holder: "worker-1".into(), until: now + chrono::TimeDelta::seconds(30) };
//! let claimed = transition(&event.lifecycle, &Transition::Claim { lease: lease.clone() }, now)?;
//! let delivered = transition(&claimed, &Transition::Ack { lease: lease.id }, now)?;
//! assert_eq!((delivered.status, delivered.attempts), (Status::Delivered, 1));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod backoff;
pub mod changes;
pub mod clock;
pub mod error;
pub mod event;
pub mod history;
pub mod limits;
pub mod locked;
pub mod ordering;
pub mod status;
pub mod store;
pub mod stream;
#[cfg(feature = "trace-context")]
pub mod trace_context;
pub mod transaction;
pub mod transport;

/// The `async_trait` attribute the store and transport traits are written with, for
/// implementing them: `#[outbox_core::async_trait]`.
pub use async_trait::async_trait;
pub use backoff::{FastRandom, FixedRandom, Jitter, RandomSource, RetryPolicy, RetryPolicyBuilder};
pub use clock::{Clock, ManualClock, SystemClock};
pub use error::{BoxError, StoreError, ValidationError};
pub use event::{DEFAULT_MAX_ATTEMPTS, EventId, NewEvent, NewEventBuilder, OutboxEvent};
pub use history::{Attempt, AuditNote, History, PayloadEdit};
pub use limits::EmitLimits;
pub use locked::{Deferral, LockedBatch, LockedClaim, Settlement};
pub use ordering::{DeadHead, ParkedKey};
pub use status::{Lease, LeaseId, Lifecycle, Status, Transition, TransitionError, transition};
pub use store::{
    DynOutboxStore, Emit, Emitted, EventFilter, EventPage, Failure, OutboxStore, OutboxStoreExt,
    Outcome, PausedType, Reclaimed, Recorded, StatusCounts, Undecodable, WakeupSender, Wakeups,
    distinct_ids,
};
pub use stream::{EventStream, HoldReason, StreamBatch, StreamPosition, Streamed};
pub use transaction::{Transaction, Transactional};
pub use transport::{DeliveryError, Transport};

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
