//! Harnesses: a fresh store per test, for each backend.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use outbox_core::{Emit, Emitted, ManualClock, NewEvent, StoreError};
use outbox_memory::MemoryStore;

use crate::conformance::Harness;

/// A fixed, round starting time for test clocks (2026-01-01T00:00:00Z).
pub fn t0() -> DateTime<Utc> {
    DateTime::from_timestamp(1_767_225_600, 0).unwrap_or(DateTime::UNIX_EPOCH)
}

/// A [`MemoryStore`] on a [`ManualClock`].
#[derive(Debug, Clone)]
pub struct MemoryHarness {
    store: MemoryStore,
    clock: ManualClock,
}

impl MemoryHarness {
    /// A fresh, empty store whose clock reads [`t0`].
    pub async fn new() -> Self {
        let clock = ManualClock::new(t0());
        Self {
            store: MemoryStore::with_clock(Arc::new(clock.clone())),
            clock,
        }
    }
}

#[async_trait]
impl Harness for MemoryHarness {
    type Store = MemoryStore;

    fn store(&self) -> MemoryStore {
        self.store.clone()
    }

    fn clock(&self) -> &ManualClock {
        &self.clock
    }

    async fn emit(&self, events: Vec<NewEvent>, commit: bool) -> Result<Vec<Emitted>, StoreError> {
        let mut uow = self.store.begin();
        let emitted = uow.emit_all(events).await?;
        if commit {
            uow.commit();
        } else {
            uow.rollback();
        }
        Ok(emitted)
    }
}
