//! The conformance suite, unchanged, against PostgreSQL (`DATABASE_URL`, or testcontainers).

outbox_tests::conformance_tests!(outbox_tests::harness::PgHarness::new());
