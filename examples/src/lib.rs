//! Runnable examples of the outbox; the code is in `uploads.rs` beside this folder:
//! `cargo run --example uploads` (in memory) or, with `DATABASE_URL` set,
//! `cargo run --example uploads --features outbox-examples/postgres`.
