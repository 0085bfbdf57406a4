//! Test support for the outbox workspace: the [conformance suite](conformance) every store
//! passes, the [concurrency cases](concurrency) every database backend passes, [harnesses](harness) that give each test a fresh store, and a [Kafka-protocol
//! broker](kafka) per test.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod concurrency;
pub mod conformance;
pub mod harness;
pub mod isolation;
pub mod kafka;

/// A PostgreSQL cluster with `wal_level = logical` per test (the log-reading relay's tests).
pub mod logical {
    pub use outbox_postgres::scratch::Cluster;

    /// A scratch cluster, or a panic with one line saying what is missing.
    pub fn cluster() -> Cluster {
        Cluster::start().unwrap_or_else(|e| {
            panic!("cannot start a scratch PostgreSQL cluster with wal_level = logical: {e}")
        })
    }
}
