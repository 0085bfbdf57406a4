//! Test support for the outbox workspace: the [conformance suite](conformance) every store
//! passes, [harnesses](harness) that give each test a fresh store, and a [Kafka-protocol
//! broker](kafka) per test.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod conformance;
pub mod harness;
pub mod kafka;
pub mod logical;
