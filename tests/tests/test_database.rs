//! `outbox_postgres::testing::TestDatabase`, the helper applications use for their own
//! PostgreSQL tests: isolated, migrated, cleaned up, and a clear error without a server.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use outbox_core::{Emit, NewEvent, OutboxStore, Transaction};
use outbox_postgres::testing::{TestDatabase, TestDatabaseError, find_server_from};
use sqlx::postgres::PgConnectOptions;

/// The event these tests emit.
fn stored() -> NewEvent {
    NewEvent::builder("file.stored", "upload", "1")
        .build()
        .unwrap()
}

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
    tx.emit(stored()).await.unwrap();
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
    let error = find_server_from(None, nowhere, false).await.unwrap_err();
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

    let bad = find_server_from(Some("mysql://x"), PgConnectOptions::new(), true).await;
    assert!(matches!(bad, Err(TestDatabaseError::BadUrl(_))), "{bad:?}");
}

/// Whether the Docker engine still has a container with this id.
fn container_exists(id: &str) -> bool {
    let out = std::process::Command::new("docker")
        .args(["ps", "-aq", "--no-trunc", "--filter", &format!("id={id}")])
        .output()
        .expect("docker is installed (apt-get install docker.io)");
    !String::from_utf8_lossy(&out.stdout).trim().is_empty()
}

/// Waits (bounded) until the engine has removed the container.
async fn removed(id: &str) -> bool {
    for _ in 0..300 {
        if !container_exists(id) {
            return true;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    false
}

/// Two containers at once, each with a migrated outbox of its own, and each removed when its
/// `TestContainer` is dropped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_are_separate_and_removed_when_dropped() {
    use outbox_postgres::testing::TestContainer;
    let (a, b) = tokio::join!(TestContainer::start(), TestContainer::start());
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_ne!(a.id(), b.id());
    assert_ne!(
        a.connect_options().get_port(),
        b.connect_options().get_port()
    );
    let (db_a, db_b) = (a.database().await.unwrap(), b.database().await.unwrap());
    let mut tx = db_a.store().begin().await.unwrap();
    tx.emit(stored()).await.unwrap();
    tx.commit().await.unwrap();
    assert_eq!(db_a.store().count_by_status().await.unwrap().pending, 1);
    assert_eq!(db_b.store().count_by_status().await.unwrap().pending, 0);
    let ids = [a.id().to_owned(), b.id().to_owned()];
    assert!(ids.iter().all(|id| container_exists(id)));
    drop((db_a, db_b));
    drop((a, b));
    for id in ids {
        assert!(removed(&id).await, "container {id} is still there");
    }
}

/// A test that panics while holding a container leaves none behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panicking_test_leaves_no_container() {
    let (tx, rx) = std::sync::mpsc::channel();
    let test = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let container = outbox_postgres::testing::TestContainer::start()
                .await
                .unwrap();
            tx.send(container.id().to_owned()).unwrap();
            panic!("the test failed while its container ran");
        })
    });
    let id = rx.recv().expect("the container started");
    assert!(test.join().is_err(), "the thread panicked");
    assert!(
        removed(&id).await,
        "container {id} outlived its panicking test"
    );
}

/// An image the engine does not have is one line naming it and how to provide it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_image_is_one_clear_line() {
    let error = outbox_postgres::testing::TestContainer::builder()
        .image("outbox-local/no-such-image:1")
        .start()
        .await
        .unwrap_err();
    let text = error.to_string();
    assert!(
        matches!(error, TestDatabaseError::Container { .. }),
        "{error:?}"
    );
    assert!(
        text.contains("outbox-local/no-such-image:1")
            && text.contains("scripts/postgres-image.sh")
            && !text.contains('\n'),
        "{text}"
    );
}
