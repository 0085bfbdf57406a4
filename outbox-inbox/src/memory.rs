//! The inbox on the memory store: records in a typed in-memory table of the unit of work, so
//! they commit (or vanish) with the effect's own tables. A second unit recording an event that
//! an open unit is recording waits until that one ends, as on PostgreSQL (where it waits on the
//! primary key): then it finds the record, or records it itself if the first rolled back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use outbox_core::{EventId, StoreError, Transaction};
use outbox_memory::{MemoryStore, UnitOfWork};
use tokio::sync::watch;

use crate::{Inbox, InboxStore, InboxTransaction};

type Key = (String, EventId);

/// The inbox's table: when each (consumer, event) was handled.
#[derive(Clone, Debug, Default)]
struct Records(HashMap<Key, DateTime<Utc>>);

/// Events being recorded by open units, each with a signal sent when its unit ends (the
/// memory store's stand-in for the row lock PostgreSQL takes on the key).
#[derive(Debug, Default)]
struct Claims(Mutex<HashMap<Key, watch::Receiver<bool>>>);

/// Held by the recording unit until it ends.
struct Claim {
    claims: Arc<Claims>,
    key: Key,
    ended: watch::Sender<bool>,
}

impl Drop for Claim {
    fn drop(&mut self) {
        self.claims
            .0
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(&self.key);
        self.ended.send_replace(true);
    }
}

#[async_trait]
impl InboxTransaction for UnitOfWork {
    async fn mark_handled(&mut self, inbox: &Inbox, event: EventId) -> Result<bool, StoreError> {
        let key = (inbox.consumer().to_owned(), event);
        if self
            .conn()
            .peek::<Records>()
            .is_some_and(|records| records.0.contains_key(&key))
        {
            return Ok(false); // recorded by this unit
        }
        let claims = self.store().extension::<Claims>();
        loop {
            if self.store().state::<Records>().0.contains_key(&key) {
                return Ok(false); // committed by another unit
            }
            let other = {
                let mut open = claims.0.lock().unwrap_or_else(PoisonError::into_inner);
                match open.get(&key) {
                    Some(ended) => Some(ended.clone()),
                    None => {
                        let (ended, watching) = watch::channel(false);
                        open.insert(key.clone(), watching);
                        self.hold(Claim {
                            claims: Arc::clone(&claims),
                            key: key.clone(),
                            ended,
                        });
                        None
                    }
                }
            };
            match other {
                // Another unit is recording it: wait until it ends, then look again.
                Some(mut ended) => {
                    let _ = ended.wait_for(|ended| *ended).await;
                }
                None => break,
            }
        }
        let now = self.now();
        self.conn().state::<Records>().0.insert(key, now);
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
