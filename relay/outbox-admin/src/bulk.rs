//! Actions on many events at once — the ids named, or every event matching a filter — shared by
//! the web admin and the `outbox events` command. A filter is walked a page at a time
//! ([`PAGE`] events, keyset-paged), so no action holds more than a page in memory or runs one
//! unbounded query.

use chrono::{DateTime, Utc};
use outbox_core::{EventFilter, EventId, OutboxStore, Status, StoreError, ValidationError};

/// Events read and acted on per page.
pub const PAGE: usize = 1_000;

/// What a bulk action did (or, in a dry run, would do).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BulkOutcome {
    /// Events named or matched.
    pub matched: u64,
    /// Events changed (in a dry run, none).
    pub changed: u64,
}

/// The events a bulk action acts on: the ids named, then every event `selection` matches, a
/// page at a time, handed to `act` (which returns how many it changed).
async fn each_page<S, F, Fut>(
    store: &S,
    ids: Vec<EventId>,
    selection: Option<EventFilter>,
    mut act: F,
) -> Result<BulkOutcome, StoreError>
where
    S: OutboxStore + ?Sized,
    F: FnMut(Vec<EventId>) -> Fut,
    Fut: std::future::Future<Output = Result<u64, StoreError>>,
{
    let mut outcome = BulkOutcome::default();
    if !ids.is_empty() {
        outcome.matched += ids.len() as u64;
        outcome.changed += act(ids).await?;
    }
    if let Some(mut filter) = selection {
        filter.limit = PAGE;
        loop {
            let page = store.list(&filter).await?;
            let Some(next) = page.next_after(&filter) else {
                break;
            };
            let ids: Vec<EventId> = page.events.iter().map(|e| e.id).collect();
            outcome.matched += ids.len() as u64;
            outcome.changed += act(ids).await?;
            filter.after = Some(next);
        }
    }
    Ok(outcome)
}

/// How many events `filter` matches, counting at most `cap` (a page at a time).
pub async fn count_matching<S: OutboxStore + ?Sized>(
    store: &S,
    filter: &EventFilter,
    cap: u64,
) -> Result<u64, StoreError> {
    let mut filter = EventFilter {
        limit: PAGE,
        after: None,
        ..filter.clone()
    };
    let mut n = 0u64;
    while n < cap {
        let page = store.list(&filter).await?;
        let Some(next) = page.next_after(&filter) else {
            break;
        };
        n += (page.events.len() + page.undecodable.len()) as u64;
        filter.after = Some(next);
    }
    Ok(n.min(cap))
}

/// Only dead events can be retried: a selection for a retry is narrowed to them, and refused if
/// it asks for another status.
pub fn dead_only(selection: Option<EventFilter>) -> Result<Option<EventFilter>, ValidationError> {
    match selection {
        Some(filter) if filter.status.is_some_and(|s| s != Status::Dead) => Err(
            ValidationError::new("status", "only dead events can be retried"),
        ),
        Some(filter) => Ok(Some(EventFilter {
            status: Some(Status::Dead),
            ..filter
        })),
        None => Ok(None),
    }
}

/// Gives `attempts` more attempts, due at once, to the dead events named and to every dead
/// event `selection` matches; with `dry_run`, only counts them. Stops at the first event that
/// cannot be retried (a named one that is not dead, say), those before it retried.
pub async fn retry<S: OutboxStore + ?Sized>(
    store: &S,
    ids: Vec<EventId>,
    selection: Option<EventFilter>,
    attempts: u32,
    dry_run: bool,
    now: DateTime<Utc>,
) -> Result<BulkOutcome, StoreError> {
    let selection = dead_only(selection)?;
    each_page(store, ids, selection, |ids| async move {
        if !dry_run {
            for id in &ids {
                store.retry_dead(*id, attempts, now).await?;
            }
            return Ok(ids.len() as u64);
        }
        Ok(0)
    })
    .await
}

/// Deletes, for good, the events named and every event `selection` matches, except those a
/// worker holds; with `dry_run`, only counts them.
pub async fn delete<S: OutboxStore + ?Sized>(
    store: &S,
    ids: Vec<EventId>,
    selection: Option<EventFilter>,
    dry_run: bool,
    now: DateTime<Utc>,
) -> Result<BulkOutcome, StoreError> {
    each_page(store, ids, selection, |ids| async move {
        if dry_run {
            return Ok(0);
        }
        Ok(store.delete_events(&ids, now).await?.len() as u64)
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use outbox_core::{Emit, NewEvent, OutboxStoreExt};
    use outbox_memory::MemoryStore;

    async fn emit(store: &MemoryStore, n: usize, event_type: &str) -> Vec<EventId> {
        let mut tx = store.begin().await.unwrap();
        let mut ids = Vec::new();
        for i in 0..n {
            let e = NewEvent::builder(event_type, "t", i.to_string())
                .build()
                .unwrap();
            ids.push(tx.emit(e).await.unwrap().id());
        }
        tx.commit().await.unwrap();
        ids
    }

    #[tokio::test]
    async fn a_filter_is_walked_page_by_page_and_a_dry_run_changes_nothing() {
        let store = MemoryStore::new();
        emit(&store, PAGE + 7, "a.b").await;
        emit(&store, 3, "c.d").await;
        let filter = EventFilter {
            event_type: Some("a.b".into()),
            ..EventFilter::default()
        };
        assert_eq!(
            count_matching(&store, &filter, 10_000).await.unwrap(),
            PAGE as u64 + 7
        );
        assert_eq!(count_matching(&store, &filter, 5).await.unwrap(), 5);
        let now = store.now();
        let dry = delete(&store, vec![], Some(filter.clone()), true, now)
            .await
            .unwrap();
        assert_eq!(
            dry,
            BulkOutcome {
                matched: PAGE as u64 + 7,
                changed: 0
            }
        );
        assert_eq!(store.events().len(), PAGE + 10);
        let done = delete(&store, vec![], Some(filter), false, now)
            .await
            .unwrap();
        assert_eq!(done.changed, PAGE as u64 + 7);
        assert_eq!(store.events().len(), 3);
    }

    #[tokio::test]
    async fn a_retry_selects_dead_events_only() {
        let store = MemoryStore::new();
        let ids = emit(&store, 3, "a.b").await;
        let (lease, _) = store
            .claim_for("w", 1, std::time::Duration::from_secs(30), store.now())
            .await
            .unwrap();
        store
            .nack(
                lease.id,
                &[outbox_core::Failure::permanent(ids[0], "no")],
                store.now(),
            )
            .await
            .unwrap();
        let wrong = EventFilter {
            status: Some(Status::Pending),
            ..EventFilter::default()
        };
        let refused = retry(&store, vec![], Some(wrong), 1, false, store.now()).await;
        assert!(
            matches!(refused, Err(StoreError::InvalidInput(_))),
            "{refused:?}"
        );
        let done = retry(
            &store,
            vec![],
            Some(EventFilter::default()),
            1,
            false,
            store.now(),
        )
        .await
        .unwrap();
        assert_eq!(
            done,
            BulkOutcome {
                matched: 1,
                changed: 1
            }
        );
        assert_eq!(store.fetch(ids[0]).await.unwrap().status(), Status::Pending);
    }
}
