//! `outbox_postgres::testing::TestDatabase`, the helper applications use for their own
//! PostgreSQL tests: isolated, migrated, cleaned up, and a clear error without a server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use outbox_core::{NewEvent, OutboxStore, Transaction};
use outbox_postgres::testing::{TestDatabase, TestDatabaseError, find_server_from};
use sqlx::postgres::PgConnectOptions;

async fn schema_exists(db: &TestDatabase, schema: &str) -> bool {
    sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = $1)")
        .bind(schema)
        .fetch_one(db.pool())
        .await
        .unwrap()
}

/// Two tests' databases do not see each other: the same table name in each, events in one only;
/// the application's unqualified statements land in the test's own schema; cleanup drops it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_test_gets_its_own_migrated_schema_and_leaves_nothing() {
    let a = TestDatabase::new().await.unwrap();
    let b = TestDatabase::new().await.unwrap();
    assert_ne!(a.schema(), b.schema());
    for db in [&a, &b] {
        sqlx::query("CREATE TABLE uploads (id bigint GENERATED ALWAYS AS IDENTITY, name text)")
            .execute(db.pool())
            .await
            .unwrap();
    }
    let mut tx = a.store().begin().await.unwrap();
    sqlx::query("INSERT INTO uploads (name) VALUES ('cat.png')")
        .execute(tx.conn())
        .await
        .unwrap();
    outbox_core::Emit::emit(
        &mut tx,
        NewEvent::builder("file.stored", "upload", "1")
            .build()
            .unwrap(),
    )
    .await
    .unwrap();
    tx.commit().await.unwrap();

    let rows = |db: &TestDatabase| {
        let sql = format!("SELECT count(*) FROM \"{}\".uploads", db.schema());
        let pool = db.pool().clone();
        async move {
            sqlx::query_scalar::<_, i64>(sqlx::AssertSqlSafe(sql))
                .fetch_one(&pool)
                .await
                .unwrap()
        }
    };
    assert_eq!((rows(&a).await, rows(&b).await), (1, 0));
    assert_eq!(a.store().count_by_status().await.unwrap().pending, 1);
    assert_eq!(b.store().count_by_status().await.unwrap().total(), 0);

    let gone = a.schema().to_owned();
    a.cleanup().await.unwrap();
    assert!(!schema_exists(&b, &gone).await, "{gone} was left behind");
    b.cleanup().await.unwrap();
}

/// Without a server the error is one line that says how to provide one; a bad `DATABASE_URL`
/// is named as such.
#[tokio::test]
async fn no_server_is_one_clear_line() {
    let nowhere = PgConnectOptions::new()
        .host("127.0.0.1")
        .port(1)
        .username("nobody");
    let error = find_server_from(None, nowhere).await.unwrap_err();
    assert!(
        matches!(error, TestDatabaseError::NoServer { .. }),
        "{error:?}"
    );
    let line = error.to_string();
    assert!(!line.contains('\n'), "{line}");
    assert!(
        line.contains("DATABASE_URL") && line.contains("Docker"),
        "{line}"
    );

    let bad = find_server_from(Some("mysql://x"), PgConnectOptions::new()).await;
    assert!(matches!(bad, Err(TestDatabaseError::BadUrl(_))), "{bad:?}");
}
