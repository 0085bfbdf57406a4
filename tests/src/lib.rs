//! Test support for the outbox workspace: the [conformance suite](conformance) every store
//! passes, and [harnesses](harness) that give each test a fresh store.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

pub mod conformance;
pub mod harness;
