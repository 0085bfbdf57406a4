//! The conformance suite against the in-memory store.

outbox_tests::conformance_tests!(outbox_tests::harness::MemoryHarness::new());

outbox_tests::conformance_tests!(@cases outbox_tests::harness::MemoryHarness::deleting_delivered();
    deleting_delivered_keeps_keys_and_the_dead, a_locked_settlement_deletes_as_an_ack_does,
    deleting_a_delivered_head_promotes_the_next);

outbox_tests::conformance_tests!(@cases outbox_tests::harness::MemoryHarness::new();
    a_locked_claim_past_its_hold_is_ended);

outbox_tests::conformance_tests!(@cases outbox_tests::harness::MemoryHarness::skipping_dead_heads();
    a_dead_head_under_skip_lets_its_key_go_on);
