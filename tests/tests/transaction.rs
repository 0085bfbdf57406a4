//! The transaction boundary: one piece of application code — a business row and its event in
//! one transaction — run unchanged on the memory store and on PostgreSQL.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use outbox_core::{EventFilter, NewEvent, OutboxStore, StoreError, Transaction, Transactional};
use outbox_memory::{MemoryConn, MemoryStore};
use outbox_tests::conformance::Harness;
use outbox_tests::harness::PgHarness;

/// The application's repository: one business write, implemented per backend.
#[outbox_core::async_trait]
trait Orders: Send {
    async fn insert_order(&mut self, amount: i64) -> Result<i64, StoreError>;
    async fn orders(&mut self) -> Result<Vec<i64>, StoreError>;
}

#[derive(Clone, Default)]
struct OrderTable(Vec<i64>);

#[outbox_core::async_trait]
impl Orders for MemoryConn {
    async fn insert_order(&mut self, amount: i64) -> Result<i64, StoreError> {
        let table = self.state::<OrderTable>();
        table.0.push(amount);
        Ok(table.0.len() as i64)
    }
    async fn orders(&mut self) -> Result<Vec<i64>, StoreError> {
        Ok(self.state::<OrderTable>().0.clone())
    }
}

#[outbox_core::async_trait]
impl Orders for sqlx::PgConnection {
    async fn insert_order(&mut self, amount: i64) -> Result<i64, StoreError> {
        sqlx::query_scalar("INSERT INTO orders (amount) VALUES ($1) RETURNING id")
            .bind(amount)
            .fetch_one(self)
            .await
            .map_err(|e| StoreError::Backend { source: e.into() })
    }
    async fn orders(&mut self) -> Result<Vec<i64>, StoreError> {
        sqlx::query_scalar("SELECT amount FROM orders ORDER BY id")
            .fetch_all(self)
            .await
            .map_err(|e| StoreError::Backend { source: e.into() })
    }
}

/// Written once: a paid order and its `order.paid` event.
async fn pay<T>(tx: &mut T, amount: i64) -> Result<i64, StoreError>
where
    T: Transaction,
    T::Conn: Orders,
{
    let id = tx.conn().insert_order(amount).await?;
    let event = NewEvent::builder("order.paid", "order", id.to_string()).build()?;
    tx.emit(event).await?;
    Ok(id)
}

/// Committed: the row and the event. Rolled back or dropped: neither. Read back inside the
/// transaction: the transaction's own change is visible to it.
async fn scenario<S>(store: &S)
where
    S: Transactional + OutboxStore,
    <S::Tx as Transaction>::Conn: Orders,
{
    let mut tx = store.begin().await.unwrap();
    let id = pay(&mut tx, 1250).await.unwrap();
    assert_eq!(id, 1, "the row's id comes back from the insert");
    assert_eq!(tx.conn().orders().await.unwrap(), vec![1250]);
    tx.commit().await.unwrap();

    let mut tx = store.begin().await.unwrap();
    pay(&mut tx, 99).await.unwrap();
    tx.rollback().await.unwrap();

    let mut tx = store.begin().await.unwrap();
    pay(&mut tx, 7).await.unwrap();
    drop(tx);

    let mut tx = store.begin().await.unwrap();
    assert_eq!(tx.conn().orders().await.unwrap(), vec![1250]);
    tx.rollback().await.unwrap();
    let page = store.list(&EventFilter::default()).await.unwrap();
    assert_eq!(
        page.events
            .iter()
            .map(|e| e.aggregate_id.as_str())
            .collect::<Vec<_>>(),
        ["1"]
    );
}

#[tokio::test]
async fn one_function_on_the_memory_store() {
    scenario(&MemoryStore::new()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_function_on_postgres() {
    let h = PgHarness::new().await;
    let ddl = format!(
        "CREATE TABLE {}.orders (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, amount bigint NOT NULL)",
        h.schema()
    );
    sqlx::raw_sql(sqlx::AssertSqlSafe(ddl))
        .execute(h.store().pool())
        .await
        .unwrap();
    // As an application would: its connections find its tables (and the outbox) by search_path.
    let pool = outbox_tests::harness::pool_with(
        h.schema(),
        sqlx::postgres::PgPoolOptions::new()
            .max_connections(2)
            .after_connect({
                let schema = h.schema().to_owned();
                move |conn, _| {
                    let schema = schema.clone();
                    Box::pin(async move {
                        sqlx::raw_sql(sqlx::AssertSqlSafe(format!("SET search_path TO {schema}")))
                            .execute(conn)
                            .await
                            .map(drop)
                    })
                }
            }),
    )
    .await;
    let store = outbox_postgres::PgStore::new(
        pool,
        outbox_postgres::PgConfig::new().with_schema(h.schema()),
    )
    .unwrap();
    scenario(&store).await;
    h.cleanup().await;
}

/// Two memory transactions that change the same table: the second to commit fails with a
/// retryable `Conflict` and keeps nothing, neither its row nor its event; run again, it commits.
#[tokio::test]
async fn memory_transactions_on_one_table_conflict_instead_of_losing_a_write() {
    let store = MemoryStore::new();
    let mut first = store.begin().await.unwrap();
    let mut second = store.begin().await.unwrap();
    pay(&mut first, 1).await.unwrap();
    pay(&mut second, 2).await.unwrap();
    first.commit().await.unwrap();
    match second.commit().await {
        Err(e @ StoreError::Conflict { .. }) => assert!(e.is_retryable()),
        other => panic!("expected Conflict, got {other:?}"),
    }
    assert_eq!(store.state::<OrderTable>().0, vec![1]);
    assert_eq!(store.events().len(), 1);

    let mut again = store.begin().await.unwrap();
    pay(&mut again, 2).await.unwrap();
    again.commit().await.unwrap();
    assert_eq!(store.state::<OrderTable>().0, vec![1, 2]);
    assert_eq!(store.events().len(), 2);
}
