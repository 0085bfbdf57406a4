//! The conformance suite, unchanged, against SQLite (a temporary database file per case).

outbox_tests::conformance_tests!(outbox_tests::harness::SqliteHarness::new());

outbox_tests::conformance_tests!(@cases outbox_tests::harness::SqliteHarness::with_config(|c| c.with_delete_delivered(true));
    deleting_delivered_keeps_keys_and_the_dead, a_locked_settlement_deletes_as_an_ack_does,
    deleting_a_delivered_head_promotes_the_next);

outbox_tests::conformance_tests!(@cases outbox_tests::harness::SqliteHarness::with_config(|c| c.with_dead_head(outbox_core::DeadHead::Skip));
    a_dead_head_under_skip_lets_its_key_go_on);

// Holds run on the store's clock here, as on the memory store.
outbox_tests::conformance_tests!(@cases outbox_tests::harness::SqliteHarness::new();
    a_locked_claim_past_its_hold_is_ended);

/// The whole suite again on a table named after an SQL keyword: every statement quotes it.
mod keyword_table {
    outbox_tests::conformance_tests!(outbox_tests::harness::SqliteHarness::with_config(
        |c| c.with_table("order")
    ));
}

/// The whole suite again with locked claims marking their batches as they claim them (no
/// window): the way a batch is held once it outlasts the store's window.
mod marked_at_once {
    outbox_tests::conformance_tests!(outbox_tests::harness::SqliteHarness::with_config(
        |c| c.with_locked_window(std::time::Duration::ZERO)
    ));
}
