//! The conformance suite against the in-memory store.

outbox_tests::conformance_tests!(outbox_tests::harness::MemoryHarness::new());
