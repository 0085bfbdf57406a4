//! Every statement the store runs on its hot paths, built once per store from the validated
//! table name and reused, so sqlx's prepared-statement cache hits on every call.
//!
//! Values are always bound parameters; only the validated, quoted schema and table names are
//! spliced. Each statement encodes the same rule as [`outbox_core::transition`] for its
//! transition (the differential property test holds them together), and is fenced where the
//! transition is: `lease_id = $1 AND status = 'in_flight'`.
//!
//! **Time.** Every statement decides on one clock, `now`: the bound store time when the store
//! has an injected clock (tests), else the database's `statement_timestamp()`. A time the
//! caller passes (lease expiry, retry time, purge cutoff) is read relative to the caller's own
//! `now`, also bound: `now + (t − caller_now)`. So relays with skewed clocks agree on every
//! lease.

use std::sync::Arc;

use crate::config::PgConfig;

/// The columns read back into an [`OutboxEvent`](outbox_core::OutboxEvent), in order.
pub(crate) const COLUMNS: &str = "id, event_type, aggregate_type, aggregate_id, payload, headers, \
     idempotency_key, ordering_key, status, attempts, max_attempts, next_attempt_at, lease_id, \
     locked_by, locked_until, last_error, created_at, updated_at, delivered_at";

/// The prepared texts, shared by clones of a store.
#[derive(Debug)]
pub(crate) struct Statements {
    pub emit_one: Arc<str>,
    pub emit_one_plain: Arc<str>,
    pub emit_many: Arc<str>,
    pub emit_many_plain: Arc<str>,
    /// A batch whose events differ only in id, type, aggregate and payload (no key, header,
    /// delay or own attempt limit): the rest are constants, five arrays instead of ten.
    pub emit_many_uniform: Arc<str>,
    pub find_keys: Arc<str>,
    pub claim: Arc<str>,
    pub renew: Arc<str>,
    pub ack: Arc<str>,
    pub nack: Arc<str>,
    pub release: Arc<str>,
    pub defer: Arc<str>,
    pub reclaim: Arc<str>,
    pub purge: Arc<str>,
    pub get: Arc<str>,
    pub count: Arc<str>,
    pub revive: Arc<str>,
    pub skip_dead_head: Arc<str>,
    pub parked_keys: Arc<str>,
    /// Statements of locked claims (see [`outbox_core::locked`]).
    pub locked: Locked,
    pub notify: Arc<str>,
    /// The LISTEN/NOTIFY channel, computed once.
    pub channel: Arc<str>,
}

/// The statements of a locked claim: the claim, and the outcome statements of a leased claim
/// with the lease fence replaced by the lock (the rows are still `pending`; `$1` is NULL).
#[derive(Debug)]
pub(crate) struct Locked {
    pub claim: Arc<str>,
    pub ack: Arc<str>,
    pub nack: Arc<str>,
    pub defer: Arc<str>,
}

/// Which rows an outcome statement may change, `$1` being the lease (NULL for a locked claim,
/// whose transaction holds the rows' locks): `p` prefixes the columns.
fn fence(locked: bool, p: &str) -> String {
    if locked {
        format!("$1::uuid IS NULL AND {p}status = 'pending'")
    } else {
        format!("{p}lease_id = $1 AND {p}status = 'in_flight'")
    }
}

/// The store's `now` in a statement whose parameter `$n` carries the injected time, or NULL to
/// use the database's clock.
fn now(n: u8) -> String {
    format!("COALESCE(${n}::timestamptz, statement_timestamp())")
}

/// A caller's time `$t`, given with the caller's `$c`, read on the store's clock `$n`.
fn on_store_clock(t: &str, c: u8, n: u8) -> String {
    format!("({} + ({t}::timestamptz - ${c}::timestamptz))", now(n))
}

impl Statements {
    pub(crate) fn new(config: &PgConfig) -> Self {
        let t = config.qualified_table();
        let s = |sql: String| -> Arc<str> { sql.into() };
        // Events without an idempotency key cannot conflict: they take the plain statements,
        // which skip the conflict check and send nothing back, as a hand-written INSERT would.
        let columns = "(id, event_type, aggregate_type, aggregate_id, payload, headers, idempotency_key, \
             ordering_key, status, attempts, max_attempts, next_attempt_at, created_at, updated_at)";
        // $10 is deliver_after (NULL: due at once), $11 the injected time (NULL: the database's).
        let emitted_at = now(11);
        let insert_one = format!(
            "INSERT INTO {t} {columns} VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 'pending', 0, $9, \
             COALESCE($10::timestamptz, {emitted_at}), {emitted_at}, {emitted_at})"
        );
        let insert_many = format!(
            "INSERT INTO {t} {columns} SELECT u.id, u.event_type, u.aggregate_type, u.aggregate_id, u.payload, \
             u.headers, u.idempotency_key, u.ordering_key, 'pending', 0, u.max_attempts, \
             COALESCE(u.next_attempt_at, {emitted_at}), {emitted_at}, {emitted_at} \
             FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::jsonb[], $6::jsonb[], $7::text[], \
             $8::text[], $9::int4[], $10::timestamptz[])"
        );
        let alias = "id, event_type, aggregate_type, aggregate_id, payload, headers, idempotency_key, \
             ordering_key, max_attempts, next_attempt_at";
        let on_conflict =
            "ON CONFLICT (idempotency_key) WHERE idempotency_key IS NOT NULL DO NOTHING";
        let n = now(6);
        let until = on_store_clock("$3", 4, 6);
        Self {
            emit_one: s(format!("{insert_one} {on_conflict} RETURNING id")),
            emit_one_plain: s(insert_one.clone()),
            emit_many: s(format!(
                "{insert_many} WITH ORDINALITY AS u({alias}, n) ORDER BY u.n {on_conflict} RETURNING id"
            )),
            emit_many_plain: s(format!("{insert_many} AS u({alias})")),
            // $6 the attempt limit, $7 the injected time (NULL: the database's).
            emit_many_uniform: s({
                let at = now(7);
                format!(
                    "INSERT INTO {t} (id, event_type, aggregate_type, aggregate_id, payload, headers, \
                     status, attempts, max_attempts, next_attempt_at, created_at, updated_at) \
                     SELECT u.id, u.event_type, u.aggregate_type, u.aggregate_id, u.payload, '{{}}'::jsonb, \
                     'pending', 0, $6, {at}, {at}, {at} \
                     FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::jsonb[]) \
                     AS u(id, event_type, aggregate_type, aggregate_id, payload)"
                )
            }),
            find_keys: s(format!(
                "SELECT id, idempotency_key FROM {t} WHERE idempotency_key = ANY($1)"
            )),
            // $3 lease expiry and $4 now on the caller's clock, $6 the injected time.
            claim: s(format!(
                "UPDATE {t} SET status = 'in_flight', lease_id = $1, locked_by = $2, \
                 locked_until = {until}, updated_at = {n} \
                 WHERE id IN (SELECT id FROM {t} WHERE status = 'pending' AND next_attempt_at <= {n} \
                 AND attempts < max_attempts \
                 ORDER BY next_attempt_at, id LIMIT $5 FOR UPDATE SKIP LOCKED) \
                 RETURNING {COLUMNS}"
            )),
            // $2 new expiry and $3 now on the caller's clock, $4 the injected time.
            renew: s(format!(
                "UPDATE {t} SET locked_until = GREATEST(locked_until, {}), updated_at = {} \
                 WHERE lease_id = $1 AND status = 'in_flight'",
                on_store_clock("$2", 3, 4),
                now(4)
            )),
            // $3 the injected time.
            ack: s(ack(&t, config, false)),
            // $3 now on the caller's clock, $5 retry times on it, $6 the injected time.
            nack: s(nack(&t, config, false)),
            // $3 the injected time.
            release: s(format!(
                "UPDATE {t} SET status = 'pending', {CLEAR_LEASE}, next_attempt_at = {n}, updated_at = {n} \
                 WHERE id = ANY($2) AND lease_id = $1 AND status = 'in_flight' RETURNING id",
                n = now(3)
            )),
            // $3 now on the caller's clock, $4 the time it is due on it, $5 the reason, $6 the
            // injected time.
            defer: s(defer(&t, false)),
            // $1 the injected time.
            reclaim: s(format!(
                "UPDATE {t} SET attempts = LEAST(attempts + 1, max_attempts), \
                 status = CASE WHEN attempts + 1 < max_attempts THEN 'pending' ELSE 'dead' END, \
                 head_key = CASE WHEN attempts + 1 < max_attempts THEN head_key ELSE {dead} END, \
                 next_attempt_at = CASE WHEN attempts + 1 < max_attempts THEN {n} ELSE next_attempt_at END, \
                 last_error = 'lease held by ' || locked_by || ' expired at ' \
                     || to_char(locked_until AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || ' UTC', \
                 {CLEAR_LEASE}, updated_at = {n} \
                 WHERE id IN (SELECT id FROM {t} WHERE status = 'in_flight' AND locked_until <= {n} \
                 ORDER BY locked_until LIMIT $2 FOR UPDATE SKIP LOCKED) \
                 RETURNING status",
                n = now(1),
                dead = dead_head(config, "")
            )),
            // $1 cutoff and $3 now on the caller's clock, $4 the injected time.
            purge: s(format!(
                "DELETE FROM {t} WHERE id IN (SELECT id FROM {t} WHERE status = 'delivered' \
                 AND delivered_at < {} LIMIT $2)",
                on_store_clock("$1", 3, 4)
            )),
            get: s(format!("SELECT {COLUMNS} FROM {t} WHERE id = $1")),
            count: s(format!("SELECT status, count(*) FROM {t} GROUP BY status")),
            // $3 the injected time.
            revive: s(format!(
                "UPDATE {t} SET status = 'pending', max_attempts = attempts + $2, next_attempt_at = {n}, \
                 updated_at = {n} WHERE id = $1 AND status = 'dead' RETURNING {COLUMNS}",
                n = now(3)
            )),
            // $2 the injected time. Clearing `head_key` promotes the key's next event (the
            // table's triggers, see migration 4).
            skip_dead_head: s(format!(
                "UPDATE {t} SET head_key = NULL, updated_at = {n} \
                 WHERE id = $1 AND status = 'dead' AND head_key IS NOT NULL RETURNING {COLUMNS}",
                n = now(2)
            )),
            parked_keys: s(format!(
                "SELECT h.head_key, h.id, (SELECT count(*) FROM {t} AS w \
                 WHERE w.ordering_key = h.head_key AND w.status = 'waiting') \
                 FROM {t} AS h WHERE h.head_key IS NOT NULL AND h.status = 'dead' \
                 ORDER BY h.created_at, h.id LIMIT $1"
            )),
            locked: Locked {
                // $1 the limit, $2 the injected time, $3 the hold in milliseconds: the database
                // ends the transaction (and with it the locks) once it has been idle that long.
                claim: s(format!(
                    "SELECT {COLUMNS} FROM {t} AS e, \
                     set_config('idle_in_transaction_session_timeout', $3, true) AS hold \
                     WHERE e.status = 'pending' AND e.next_attempt_at <= {n2} AND e.attempts < e.max_attempts \
                     ORDER BY e.next_attempt_at, e.id LIMIT $1 FOR UPDATE OF e SKIP LOCKED",
                    n2 = now(2)
                )),
                ack: s(ack(&t, config, true)),
                nack: s(nack(&t, config, true)),
                defer: s(defer(&t, true)),
            },
            notify: s(format!("SELECT pg_notify('{}', '')", config.channel())),
            channel: config.channel().into(),
        }
    }
}

/// Clears the lease columns.
const CLEAR_LEASE: &str = "lease_id = NULL, locked_by = NULL, locked_until = NULL";

/// `($1 lease, $2 ids, $3 injected time)`: marks delivered (or deletes, if so configured).
fn ack(t: &str, config: &PgConfig, locked: bool) -> String {
    let n = now(3);
    let fence = fence(locked, "");
    let mark = format!(
        "UPDATE {t} SET status = 'delivered', attempts = LEAST(attempts + 1, max_attempts), \
         {CLEAR_LEASE}, head_key = NULL, delivered_at = {n}, last_error = NULL, updated_at = {n} \
         WHERE id = ANY($2) AND {fence}"
    );
    if config.delete_delivered {
        // Events with an idempotency key are kept (until the retention sweep), so the key goes
        // on refusing duplicates; the others go at once. The two parts touch disjoint rows
        // under the same fence.
        format!(
            "WITH gone AS (DELETE FROM {t} WHERE id = ANY($2) AND {fence} \
             AND idempotency_key IS NULL RETURNING id), \
             kept AS ({mark} AND idempotency_key IS NOT NULL RETURNING id) \
             SELECT id FROM gone UNION ALL SELECT id FROM kept"
        )
    } else {
        format!("{mark} RETURNING id")
    }
}

/// `($1 lease, $2 ids, $3 caller's now, $4 errors, $5 retry times, $6 injected time)`: records
/// failures, each retried or dead.
fn nack(t: &str, config: &PgConfig, locked: bool) -> String {
    format!(
        "UPDATE {t} AS e SET attempts = LEAST(e.attempts + 1, e.max_attempts), \
         status = CASE WHEN f.retry_at IS NOT NULL AND e.attempts + 1 < e.max_attempts \
             THEN 'pending' ELSE 'dead' END, \
         head_key = CASE WHEN f.retry_at IS NOT NULL AND e.attempts + 1 < e.max_attempts \
             THEN e.head_key ELSE {dead} END, \
         next_attempt_at = CASE WHEN f.retry_at IS NOT NULL AND e.attempts + 1 < e.max_attempts \
             THEN GREATEST({retry_at}, {n6}) ELSE e.next_attempt_at END, \
         last_error = f.error, {CLEAR_LEASE}, updated_at = {n6} \
         FROM UNNEST($2::uuid[], $4::text[], $5::timestamptz[]) AS f(id, error, retry_at) \
         WHERE e.id = f.id AND {fence} \
         RETURNING e.id, e.status, e.next_attempt_at",
        retry_at = on_store_clock("f.retry_at", 3, 6),
        n6 = now(6),
        fence = fence(locked, "e."),
        dead = dead_head(config, "e."),
    )
}

/// The `head_key` of a head that just died (`p` prefixes the column): kept under
/// `DeadHead::Block` (the key is parked), cleared under `DeadHead::Skip` (the table's
/// triggers promote the next event), as [`outbox_core::ordering::keeps_key`] decides.
fn dead_head(config: &PgConfig, p: &str) -> String {
    if outbox_core::ordering::keeps_key(outbox_core::Status::Dead, config.dead_head) {
        format!("{p}head_key")
    } else {
        "NULL".to_owned()
    }
}

/// `($1 lease, $2 ids, $3 caller's now, $4 due time, $5 reason, $6 injected time)`: gives
/// events back untried, due later.
fn defer(t: &str, locked: bool) -> String {
    format!(
        "UPDATE {t} SET status = 'pending', {CLEAR_LEASE}, \
         next_attempt_at = GREATEST({until}, {n6}), last_error = $5, updated_at = {n6} \
         WHERE id = ANY($2) AND {fence} \
         RETURNING id, next_attempt_at",
        until = on_store_clock("$4", 3, 6),
        n6 = now(6),
        fence = fence(locked, ""),
    )
}
