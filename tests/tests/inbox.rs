//! The inbox suite, run on the memory store and on PostgreSQL alike: an event's effect happens
//! exactly once per consumer, whether the event is delivered twice, twice at the same moment,
//! again after a crash between the effect and the acknowledgement, or after a handler failed.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use outbox_core::{EventId, ManualClock, Transaction, Transactional};
use outbox_inbox::{Handled, Inbox, InboxError, InboxStore, InboxTransaction};
use outbox_memory::{MemoryStore, UnitOfWork};
use outbox_postgres::{PgStore, PgTransaction};
use outbox_tests::conformance::Harness;
use outbox_tests::harness::PgHarness;
use sqlx::AssertSqlSafe;

/// A backend under test: a store, a business effect that counts, and its count.
#[async_trait]
trait Fixture: Send + Sync + 'static {
    type Store: Transactional<Tx = Self::Tx> + InboxStore + Clone + Send + Sync + 'static;
    type Tx: InboxTransaction + Send;
    fn store(&self) -> Self::Store;
    fn inbox(&self, consumer: &str) -> Inbox;
    /// The effect: one more in the business table, inside `tx`.
    async fn bump(tx: &mut Self::Tx);
    /// How many effects committed.
    async fn effects(&self) -> i64;
    /// Moves the store's clock on (PostgreSQL's moves by itself).
    fn advance(&self, by: Duration);
    async fn cleanup(&self);
}

struct Memory {
    store: MemoryStore,
    clock: ManualClock,
}

#[derive(Clone, Default)]
struct Count(i64);

#[async_trait]
impl Fixture for Memory {
    type Store = MemoryStore;
    type Tx = UnitOfWork;
    fn store(&self) -> MemoryStore {
        self.store.clone()
    }
    fn inbox(&self, consumer: &str) -> Inbox {
        Inbox::new(consumer).unwrap()
    }
    async fn bump(tx: &mut UnitOfWork) {
        tx.conn().state::<Count>().0 += 1;
    }
    async fn effects(&self) -> i64 {
        self.store.state::<Count>().0
    }
    fn advance(&self, by: Duration) {
        self.clock.advance(by);
    }
    async fn cleanup(&self) {}
}

impl Memory {
    fn new() -> Self {
        let clock = ManualClock::new(chrono::Utc::now());
        let store = MemoryStore::with_clock(Arc::new(clock.clone()));
        Self { store, clock }
    }
}

struct Postgres {
    h: PgHarness,
}

impl Postgres {
    async fn new() -> Self {
        let h = PgHarness::new().await;
        let store = h.store();
        sqlx::raw_sql(AssertSqlSafe(format!(
            "CREATE TABLE \"{0}\".effects (n bigint NOT NULL); INSERT INTO \"{0}\".effects VALUES (0)",
            h.schema()
        )))
        .execute(store.pool())
        .await
        .unwrap();
        let me = Self { h };
        store.migrate_inbox(&me.inbox("any")).await.unwrap();
        me
    }
}

#[async_trait]
impl Fixture for Postgres {
    type Store = PgStore;
    type Tx = PgTransaction;
    fn store(&self) -> PgStore {
        self.h.store()
    }
    fn inbox(&self, consumer: &str) -> Inbox {
        Inbox::new(consumer).unwrap().with_schema(self.h.schema())
    }
    async fn bump(tx: &mut PgTransaction) {
        // The schema is the connection's application name (the harness sets both).
        let schema: String = sqlx::query_scalar("SELECT current_setting('application_name')")
            .fetch_one(&mut **tx)
            .await
            .unwrap();
        sqlx::query(AssertSqlSafe(format!(
            "UPDATE \"{schema}\".effects SET n = n + 1"
        )))
        .execute(&mut **tx)
        .await
        .unwrap();
    }
    async fn effects(&self) -> i64 {
        sqlx::query_scalar(AssertSqlSafe(format!(
            "SELECT n FROM \"{}\".effects",
            self.h.schema()
        )))
        .fetch_one(self.h.store().pool())
        .await
        .unwrap()
    }
    fn advance(&self, _by: Duration) {}
    async fn cleanup(&self) {
        self.h.cleanup().await;
    }
}

/// One delivery of `event` to `inbox`: the effect, at most once.
async fn deliver<F: Fixture>(f: &F, inbox: &Inbox, event: EventId) -> Handled<()> {
    inbox
        .handle_once(&f.store(), event, async |tx| {
            F::bump(tx).await;
            Ok::<(), std::convert::Infallible>(())
        })
        .await
        .unwrap()
}

async fn a_redelivered_event_is_skipped<F: Fixture>(f: F) {
    let inbox = f.inbox("thumbnailer");
    let event = EventId::new();
    assert_eq!(deliver(&f, &inbox, event).await, Handled::Done(()));
    assert_eq!(deliver(&f, &inbox, event).await, Handled::Duplicate);
    assert_eq!(f.effects().await, 1);
    assert!(f.store().was_handled(&inbox, event).await.unwrap());
    assert!(!f.store().was_handled(&inbox, EventId::new()).await.unwrap());
    f.cleanup().await;
}

async fn concurrent_duplicates_run_one_effect<F: Fixture>(f: F) {
    let inbox = f.inbox("billing");
    let event = EventId::new();
    let runs = std::sync::atomic::AtomicUsize::new(0);
    let store = f.store();
    // Eight deliveries at once, interleaved at every await (on PostgreSQL each on a connection
    // of its own).
    let deliveries = (0..8).map(|_| {
        inbox.handle_once(&store, event, async |tx| {
            runs.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            tokio::task::yield_now().await; // let the others reach the inbox meanwhile
            F::bump(tx).await;
            Ok::<(), std::convert::Infallible>(())
        })
    });
    let handled = futures_util::future::join_all(deliveries).await;
    let done = handled
        .iter()
        .filter(|h| h.as_ref().unwrap().is_done())
        .count();
    assert_eq!(done, 1, "exactly one delivery ran the effect");
    assert_eq!(
        runs.load(std::sync::atomic::Ordering::SeqCst),
        1,
        "the duplicates waited for the first and never ran the handler"
    );
    assert_eq!(f.effects().await, 1);
    f.cleanup().await;
}

async fn a_delivery_waiting_on_one_that_rolls_back_handles_the_event<F: Fixture>(f: F) {
    let inbox = f.inbox("mailer");
    let event = EventId::new();
    let store = f.store();
    // The first delivery records the event and holds its transaction open …
    let mut first = store.begin().await.unwrap();
    assert!(inbox.mark(&mut first, event).await.unwrap());
    // … while a second arrives; then the first gives up.
    let second = inbox.handle_once(&store, event, async |tx| {
        F::bump(tx).await;
        Ok::<(), std::convert::Infallible>(())
    });
    let give_up = async {
        for _ in 0..10 {
            tokio::task::yield_now().await; // the second reaches the inbox and waits
        }
        first.rollback().await.unwrap();
    };
    let ((), handled) = tokio::join!(give_up, second);
    assert_eq!(handled.unwrap(), Handled::Done(()), "the second handles it");
    assert_eq!(f.effects().await, 1);
    f.cleanup().await;
}

async fn a_crash_before_commit_leaves_the_event_to_the_next_delivery<F: Fixture>(f: F) {
    let inbox = f.inbox("mailer");
    let event = EventId::new();
    // The consumer records the event and does the effect, then dies before committing.
    let mut tx = f.store().begin().await.unwrap();
    assert!(inbox.mark(&mut tx, event).await.unwrap());
    F::bump(&mut tx).await;
    drop(tx);
    assert_eq!(f.effects().await, 0, "nothing committed");
    assert_eq!(deliver(&f, &inbox, event).await, Handled::Done(()));
    // It commits, then dies before acknowledging: the broker delivers again.
    assert_eq!(deliver(&f, &inbox, event).await, Handled::Duplicate);
    assert_eq!(f.effects().await, 1);
    f.cleanup().await;
}

async fn a_failed_handler_records_nothing<F: Fixture>(f: F) {
    let inbox = f.inbox("search-index");
    let event = EventId::new();
    let failed = inbox
        .handle_once(&f.store(), event, async |tx| {
            F::bump(tx).await;
            Err::<(), _>("index unavailable")
        })
        .await;
    assert!(matches!(
        failed,
        Err(InboxError::Handler("index unavailable"))
    ));
    assert_eq!(f.effects().await, 0);
    assert!(!f.store().was_handled(&inbox, event).await.unwrap());
    assert_eq!(deliver(&f, &inbox, event).await, Handled::Done(()));
    assert_eq!(f.effects().await, 1);
    f.cleanup().await;
}

async fn each_consumer_handles_an_event_once<F: Fixture>(f: F) {
    let event = EventId::new();
    let (a, b) = (f.inbox("thumbnailer"), f.inbox("billing"));
    assert!(deliver(&f, &a, event).await.is_done());
    assert!(deliver(&f, &b, event).await.is_done());
    assert!(!deliver(&f, &a, event).await.is_done());
    assert_eq!(f.effects().await, 2);
    f.cleanup().await;
}

async fn records_are_purged_after_the_retention_window<F: Fixture>(f: F) {
    let inbox = f.inbox("auditor");
    let other = f.inbox("billing");
    let event = EventId::new();
    deliver(&f, &inbox, event).await;
    deliver(&f, &other, event).await;
    assert_eq!(
        inbox.purge(&f.store()).await.unwrap(),
        0,
        "within seven days"
    );
    let forever = inbox.clone().with_retention(Duration::MAX);
    assert_eq!(forever.purge(&f.store()).await.unwrap(), 0, "kept for ever");
    f.advance(Duration::from_secs(1));
    let short = inbox.clone().with_retention(Duration::ZERO);
    assert_eq!(short.purge(&f.store()).await.unwrap(), 1);
    assert!(!f.store().was_handled(&inbox, event).await.unwrap());
    assert!(
        f.store().was_handled(&other, event).await.unwrap(),
        "another consumer's records stay"
    );
    // Past the window an event counts as new: the window must outlast redeliveries.
    assert!(deliver(&f, &inbox, event).await.is_done());
    f.cleanup().await;
}

macro_rules! suite {
    ($($name:ident),* $(,)?) => {
        mod memory {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Memory::new()).await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(super::Postgres::new().await).await;
                }
            )*
        }
    };
}

suite!(
    a_redelivered_event_is_skipped,
    concurrent_duplicates_run_one_effect,
    a_delivery_waiting_on_one_that_rolls_back_handles_the_event,
    a_crash_before_commit_leaves_the_event_to_the_next_delivery,
    a_failed_handler_records_nothing,
    each_consumer_handles_an_event_once,
    records_are_purged_after_the_retention_window,
);
