//! The conformance suite, unchanged, against MySQL/MariaDB (`MYSQL_URL`, or the local server).

outbox_tests::conformance_tests!(outbox_tests::harness::MySqlHarness::new());

outbox_tests::conformance_tests!(@cases outbox_tests::harness::MySqlHarness::with_config(4, |c| c.with_delete_delivered(true));
    deleting_delivered_keeps_keys_and_the_dead, a_locked_settlement_deletes_as_an_ack_does,
    deleting_a_delivered_head_promotes_the_next);

outbox_tests::conformance_tests!(@cases outbox_tests::harness::MySqlHarness::with_config(4, |c| c.with_dead_head(outbox_core::DeadHead::Skip));
    a_dead_head_under_skip_lets_its_key_go_on);

/// The whole suite again on a table named after an SQL keyword: every statement quotes it.
mod keyword_table {
    outbox_tests::conformance_tests!(
        outbox_tests::harness::MySqlHarness::in_a_database_of_its_own("order")
    );
}
