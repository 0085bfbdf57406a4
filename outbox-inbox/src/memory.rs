//! The inbox on the memory store: records in a typed in-memory table of the unit of work, so
//! they commit (or vanish) with the effect's own tables. Two units recording at once both
//! proceed; the second to commit fails with a conflict and [`Inbox::handle_once`] runs it
//! again, when it finds the record.

use std::collections::HashMap;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use outbox_core::{EventId, StoreError, Transaction};
use outbox_memory::{MemoryStore, UnitOfWork};

use crate::{Inbox, InboxStore, InboxTransaction};

/// The inbox's table: when each (consumer, event) was handled.
#[derive(Clone, Debug, Default)]
struct Records(HashMap<(String, EventId), DateTime<Utc>>);

#[async_trait]
impl InboxTransaction for UnitOfWork {
    async fn mark_handled(&mut self, inbox: &Inbox, event: EventId) -> Result<bool, StoreError> {
        let now = self.now();
        let records = &mut self.conn().state::<Records>().0;
        let key = (inbox.consumer().to_owned(), event);
        if records.contains_key(&key) {
            return Ok(false);
        }
        records.insert(key, now);
        Ok(true)
    }
}

#[async_trait]
impl InboxStore for MemoryStore {
    async fn migrate_inbox(&self, _inbox: &Inbox) -> Result<(), StoreError> {
        Ok(())
    }

    async fn purge_handled(&self, inbox: &Inbox, keep: Duration) -> Result<u64, StoreError> {
        let keep = chrono::TimeDelta::from_std(keep).unwrap_or(chrono::TimeDelta::MAX);
        let mut tries = 0;
        loop {
            let mut tx = self.begin().await?;
            let before = tx.now().checked_sub_signed(keep);
            let records = &mut tx.conn().state::<Records>().0;
            let count = records.len();
            records.retain(|(consumer, _), at| {
                consumer != inbox.consumer() || before.is_none_or(|before| *at >= before)
            });
            let purged = (count - records.len()) as u64;
            match tx.commit().await {
                Ok(_) => return Ok(purged),
                Err(StoreError::Conflict { .. }) if tries < crate::CONFLICT_RETRIES => tries += 1,
                Err(error) => return Err(error),
            }
        }
    }

    async fn was_handled(&self, inbox: &Inbox, event: EventId) -> Result<bool, StoreError> {
        let records = self.state::<Records>();
        Ok(records
            .0
            .contains_key(&(inbox.consumer().to_owned(), event)))
    }
}
