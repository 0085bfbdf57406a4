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
    /// The leased claim under `EXPLAIN` (same parameters).
    pub explain_claim: Arc<str>,
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
    pub delete_events: Arc<str>,
    pub oldest_pending: Arc<str>,
    pub parked_keys: Arc<str>,
    pub edit_dead: Arc<str>,
    pub history: Arc<str>,
    pub pause: Arc<str>,
    pub resume: Arc<str>,
    pub park: Arc<str>,
    pub paused_types: Arc<str>,
    pub count_capped: Arc<str>,
    pub delivered_since: Arc<str>,
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
        // The status is the column's default: `pending`, or `streaming` on a table switched to
        // the log-reading relay (`PgStore::start_streaming`), so producers need not know.
        // Events without an idempotency key cannot conflict: they take the plain statements,
        // which skip the conflict check and send nothing back, as a hand-written INSERT would.
        let columns = "(id, event_type, aggregate_type, aggregate_id, payload, headers, idempotency_key, \
             ordering_key, attempts, max_attempts, next_attempt_at, created_at, updated_at)";
        // $10 is deliver_after (NULL: due at once), $11 the injected time (NULL: the database's).
        let emitted_at = now(11);
        let paused = config.qualified_paused();
        let insert_one = format!(
            "INSERT INTO {t} {columns} VALUES ($1, $2, $3, $4, $5, $6, $7, $8, 0, $9, \
             COALESCE($10::timestamptz, {emitted_at}), {emitted_at}, {emitted_at})"
        );
        let insert_many = format!(
            "INSERT INTO {t} {columns} SELECT u.id, u.event_type, u.aggregate_type, u.aggregate_id, u.payload, \
             u.headers, u.idempotency_key, u.ordering_key, 0, u.max_attempts, \
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
        // An event parked by a pause is out of the claims' index; this keeps out the few that
        // become pending while their type is paused (retried, reclaimed, promoted, revived).
        // Written so that it stays a filter on the `_due` index scan, whatever the statistics
        // say: a plain NOT EXISTS becomes an anti-join, which on a never-analyzed (empty)
        // paused table is planned as a hash join over every pending row, then a sort. The
        // first EXISTS is evaluated once per statement; while nothing is paused it decides.
        let unpaused = format!(
            "(NOT EXISTS (SELECT 1 FROM {paused}) \
             OR NOT EXISTS (SELECT 1 FROM {paused} AS p WHERE p.event_type = c.event_type))"
        );
        let unpaused_e = unpaused.replace("c.event_type", "e.event_type");
        // $3 lease expiry and $4 now on the caller's clock, $6 the injected time.
        let claim = format!(
            "UPDATE {t} SET status = 'in_flight', lease_id = $1, locked_by = $2, \
             locked_until = {until}, updated_at = {n} \
             WHERE id IN (SELECT id FROM {t} AS c WHERE status = 'pending' AND next_attempt_at <= {n} \
             AND attempts < max_attempts AND {unpaused} \
             ORDER BY next_attempt_at, id LIMIT $5 FOR UPDATE SKIP LOCKED) \
             RETURNING {COLUMNS}"
        );
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
                     attempts, max_attempts, next_attempt_at, created_at, updated_at) \
                     SELECT u.id, u.event_type, u.aggregate_type, u.aggregate_id, u.payload, '{{}}'::jsonb, \
                     0, $6, {at}, {at}, {at} \
                     FROM UNNEST($1::uuid[], $2::text[], $3::text[], $4::text[], $5::jsonb[]) \
                     AS u(id, event_type, aggregate_type, aggregate_id, payload)"
                )
            }),
            find_keys: s(format!(
                "SELECT id, idempotency_key FROM {t} WHERE idempotency_key = ANY($1)"
            )),
            // $3 lease expiry and $4 now on the caller's clock, $6 the injected time.
            claim: s(claim.clone()),
            explain_claim: s(format!("EXPLAIN {claim}")),
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
            reclaim: s({
                let n = now(1);
                let error = "'lease held by ' || locked_by || ' expired at ' \
                    || to_char(locked_until AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI:SS.US') || ' UTC'";
                let log = append_attempt("", &n, "locked_by", error);
                let update = format!(
                    "UPDATE {t} SET attempts = LEAST(attempts + 1, max_attempts), attempt_log = {log}, \
                     status = CASE WHEN attempts + 1 < max_attempts THEN 'pending' ELSE 'dead' END, \
                     head_key = CASE WHEN attempts + 1 < max_attempts THEN head_key ELSE {dead} END, \
                     next_attempt_at = CASE WHEN attempts + 1 < max_attempts THEN {n} ELSE next_attempt_at END, \
                     last_error = {error}, {CLEAR_LEASE}, updated_at = {n} \
                     WHERE id IN (SELECT id FROM {t} WHERE status = 'in_flight' AND locked_until <= {n} \
                     ORDER BY locked_until LIMIT $2 FOR UPDATE SKIP LOCKED) \
                     RETURNING status",
                    dead = dead_head(config, "")
                );
                if releases_dead_heads(config) {
                    let update = format!(
                        "{update}, CASE WHEN head_key IS NULL THEN ordering_key END AS released"
                    );
                    releasing(config, &update, "done.status", &n)
                } else {
                    update
                }
            }),
            // $1 cutoff and $3 now on the caller's clock, $4 the injected time.
            purge: s(format!(
                "DELETE FROM {t} WHERE id IN (SELECT id FROM {t} WHERE status = 'delivered' \
                 AND delivered_at < {} LIMIT $2)",
                on_store_clock("$1", 3, 4)
            )),
            get: s(format!("SELECT {COLUMNS} FROM {t} WHERE id = $1")),
            count: s(format!("SELECT status, count(*) FROM {t} GROUP BY status")),
            // $3 the injected time.
            revive: s(revive(&t, "")),
            // $4 the new payload, $5 who, $6 why.
            edit_dead: s(revive(
                &t,
                &format!(
                    ", payload = $4, audit_notes = {}",
                    append_bounded(
                        "",
                        "audit_notes",
                        outbox_core::history::NOTE_LIMIT,
                        &format!(
                            "jsonb_build_object('at', {}, 'by', $5::text, 'note', $6::text, \
                             'previous_payload', payload)",
                            now(3)
                        )
                    )
                ),
            )),
            history: s(format!(
                "SELECT attempt_log, audit_notes FROM {t} WHERE id = $1"
            )),
            // $1 the type, $2 the injected time: pauses it, and parks its pending events but
            // those a locked claim holds (it settles them; the claims' check keeps them back).
            pause: s(format!(
                "WITH added AS (INSERT INTO {paused} (event_type, paused_at) VALUES ($1, {n2}) \
                 ON CONFLICT (event_type) DO NOTHING RETURNING 1), \
                 parked AS (UPDATE {t} SET status = 'paused' WHERE id IN (SELECT id FROM {t} \
                 WHERE status = 'pending' AND event_type = $1 FOR UPDATE SKIP LOCKED) RETURNING 1) \
                 SELECT (SELECT count(*) FROM added), (SELECT count(*) FROM parked)",
                n2 = now(2)
            )),
            // $1 the type: resumes it, and unparks its events.
            resume: s(format!(
                "WITH gone AS (DELETE FROM {paused} WHERE event_type = $1 RETURNING 1), \
                 unparked AS (UPDATE {t} SET status = 'pending' WHERE status = 'paused' \
                 AND event_type = $1 RETURNING 1) \
                 SELECT count(*) FROM gone"
            )),
            // $1 how many to park at most. A worker's housekeeping (with its reclaim): parks the
            // pending events of paused types that became pending after their pause (emitted,
            // retried, promoted, revived), so that claims do not walk them again and again, and
            // unparks any parked event whose type is no longer paused (a resume that raced a
            // park). While nothing is paused the first part is a one-time filter that is false.
            park: s(format!(
                "WITH parked AS (UPDATE {t} SET status = 'paused' WHERE EXISTS (SELECT 1 FROM {paused}) \
                 AND id IN (SELECT id FROM {t} AS c WHERE status = 'pending' \
                 AND EXISTS (SELECT 1 FROM {paused} AS p WHERE p.event_type = c.event_type) \
                 LIMIT $1 FOR UPDATE SKIP LOCKED) RETURNING 1), \
                 unparked AS (UPDATE {t} SET status = 'pending' WHERE status = 'paused' \
                 AND NOT EXISTS (SELECT 1 FROM {paused} AS p WHERE p.event_type = {t}.event_type) \
                 RETURNING 1) \
                 SELECT (SELECT count(*) FROM parked), (SELECT count(*) FROM unparked)"
            )),
            // $1 the cap: each count reads at most that many entries of its status's index.
            count_capped: s({
                let capped = |condition: &str| {
                    format!(
                        "(SELECT count(*) FROM (SELECT 1 FROM {t} WHERE {condition} LIMIT $1) AS s)"
                    )
                };
                format!(
                    "SELECT {}, {}, {}, {}, {}",
                    capped("status = 'waiting'"),
                    capped("status = 'pending'")
                        + " + "
                        + &capped("status = 'paused'")
                        + " + "
                        + &capped("status = 'streaming'"),
                    capped("status = 'in_flight'"),
                    capped("status = 'delivered'"),
                    capped("status = 'dead'"),
                )
            }),
            // $1 since and $2 now on the caller's clock, $3 the injected time.
            delivered_since: s(format!(
                "SELECT count(*) FROM {t} WHERE status = 'delivered' AND delivered_at >= {}",
                on_store_clock("$1", 2, 3)
            )),
            paused_types: s(format!(
                "SELECT event_type, paused_at FROM {paused} ORDER BY event_type"
            )),
            // $2 the injected time.
            skip_dead_head: s({
                let n = now(2);
                let update = format!(
                    "UPDATE {t} AS e SET head_key = NULL, updated_at = {n} \
                     FROM (SELECT id, head_key FROM {t} WHERE id = $1 AND status = 'dead' \
                           AND head_key IS NOT NULL FOR UPDATE) AS old \
                     WHERE e.id = old.id RETURNING {returned}, old.head_key AS released",
                    returned = COLUMNS
                        .split(", ")
                        .map(|c| format!("e.{c}"))
                        .collect::<Vec<_>>()
                        .join(", ")
                );
                let columns = COLUMNS
                    .split(", ")
                    .map(|c| format!("done.{c}"))
                    .collect::<Vec<_>>()
                    .join(", ");
                releasing(config, &update, &columns, &n)
            }),
            // $1 the ids, $2 the injected time. Rows a worker holds (in flight, or locked by a
            // locked claim) are skipped; a deleted head's key goes to its next event.
            delete_events: s(releasing(
                config,
                &format!(
                    "DELETE FROM {t} WHERE id IN (SELECT id FROM {t} WHERE id = ANY($1) \
                     AND status <> 'in_flight' FOR UPDATE SKIP LOCKED) \
                     RETURNING id, head_key AS released"
                ),
                "done.id",
                &now(2),
            )),
            // The pending rows only (the due index's predicate), sorted by creation.
            // Each status on its own, so each reads its own partial index.
            oldest_pending: s(format!(
                "(SELECT id, created_at FROM {t} WHERE status = 'pending' ORDER BY created_at, id LIMIT 1) \
                 UNION ALL \
                 (SELECT id, created_at FROM {t} WHERE status = 'paused' ORDER BY created_at, id LIMIT 1) \
                 ORDER BY 2, 1 LIMIT 1"
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
                     AND {unpaused_e} \
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

/// `($1 lease, $2 ids, $3 injected time)`: marks delivered (or deletes, if so configured), and
/// promotes the next event of every ordering key a delivered head gave up.
fn ack(t: &str, config: &PgConfig, locked: bool) -> String {
    let n = now(3);
    let fence = fence(locked, "");
    let mark = format!(
        "UPDATE {t} SET status = 'delivered', attempts = LEAST(attempts + 1, max_attempts), \
         {CLEAR_LEASE}, head_key = NULL, delivered_at = {n}, last_error = NULL, updated_at = {n} \
         WHERE id = ANY($2) AND {fence}"
    );
    let done = if config.delete_delivered {
        // Events with an idempotency key are kept (until the retention sweep), so the key goes
        // on refusing duplicates; the others go at once. The two parts touch disjoint rows
        // under the same fence. A deleted row returns its old `head_key`.
        let parts = format!(
            "gone AS (DELETE FROM {t} WHERE id = ANY($2) AND {fence} \
             AND idempotency_key IS NULL RETURNING id, head_key AS released), \
             kept AS ({mark} AND idempotency_key IS NOT NULL RETURNING id, ordering_key AS released), "
        );
        let done = "SELECT id, released FROM gone UNION ALL SELECT id, released FROM kept";
        return releasing_after(config, &parts, done, "done.id", &n);
    } else {
        format!("{mark} RETURNING id, ordering_key AS released")
    };
    releasing(config, &done, "done.id", &n)
}

/// Wraps `statement` — an UPDATE or DELETE (or a query over them) whose rows end with a
/// `released` column, the ordering key the row gave up or NULL — so that the same statement then
/// promotes each released key's next event (`_promote`, migration 4: it takes the keys' locks
/// and reads the queues after them). Returns `columns` of each row, then the number promoted.
/// A row with an ordering key that was not its key's head releases nothing: `_promote` leaves
/// a key that still has a head alone.
fn releasing(config: &PgConfig, statement: &str, columns: &str, at: &str) -> String {
    releasing_after(config, "", statement, columns, at)
}

/// [`releasing`], with `parts` (data-modifying CTEs, each followed by a comma) that `statement`
/// reads: a data-modifying statement must be at the top level.
fn releasing_after(
    config: &PgConfig,
    parts: &str,
    statement: &str,
    columns: &str,
    at: &str,
) -> String {
    let promote = format!("{}.\"{}_promote\"", config.quoted_schema(), config.table());
    format!(
        "WITH {parts}done AS ({statement}), \
         promoted AS MATERIALIZED (SELECT {promote}(array_agg(released), {at}) AS promoted \
             FROM done WHERE released IS NOT NULL HAVING count(*) > 0) \
         SELECT {columns}, promoted.promoted FROM done LEFT JOIN promoted ON true"
    )
}

/// `($1 lease, $2 ids, $3 caller's now, $4 errors, $5 retry times, $6 injected time, $7 the
/// locked claim's worker)`: records failures, each retried or dead.
fn nack(t: &str, config: &PgConfig, locked: bool) -> String {
    let retried = "f.retry_at IS NOT NULL AND e.attempts + 1 < e.max_attempts";
    // A locked claim's rows have no holder: its worker is bound as $7.
    let log = append_attempt("e.", &now(6), "COALESCE(e.locked_by, $7::text)", "f.error");
    let update = format!(
        "UPDATE {t} AS e SET attempts = LEAST(e.attempts + 1, e.max_attempts), attempt_log = {log}, \
         status = CASE WHEN {retried} THEN 'pending' ELSE 'dead' END, \
         head_key = CASE WHEN {retried} THEN e.head_key ELSE {dead} END, \
         next_attempt_at = CASE WHEN {retried} \
             THEN GREATEST({retry_at}, {n6}) ELSE e.next_attempt_at END, \
         last_error = f.error, {CLEAR_LEASE}, updated_at = {n6} \
         FROM UNNEST($2::uuid[], $4::text[], $5::timestamptz[]) AS f(id, error, retry_at) \
         WHERE e.id = f.id AND {fence} \
         RETURNING e.id, e.status, e.next_attempt_at",
        retry_at = on_store_clock("f.retry_at", 3, 6),
        n6 = now(6),
        fence = fence(locked, "e."),
        dead = dead_head(config, "e."),
    );
    if releases_dead_heads(config) {
        let update =
            format!("{update}, CASE WHEN e.head_key IS NULL THEN e.ordering_key END AS released");
        releasing(
            config,
            &update,
            "done.id, done.status, done.next_attempt_at",
            &now(6),
        )
    } else {
        update
    }
}

/// `$1 id, $2 extra attempts, $3 injected time`: a dead event pending again, due now, with
/// `set` (more assignments) applied.
fn revive(t: &str, set: &str) -> String {
    format!(
        "UPDATE {t} SET status = 'pending', max_attempts = attempts + $2, next_attempt_at = {n}, \
         updated_at = {n}{set} WHERE id = $1 AND status = 'dead' RETURNING {COLUMNS}",
        n = now(3)
    )
}

/// The event's attempt log (`p` prefixes the columns) with one failed attempt appended: the
/// attempt number it ends, at `at`, by `worker`, failing with `error`; bounded as
/// [`outbox_core::History::push_attempt`] bounds it.
fn append_attempt(p: &str, at: &str, worker: &str, error: &str) -> String {
    append_bounded(
        p,
        "attempt_log",
        outbox_core::history::ATTEMPT_HISTORY_LIMIT,
        &format!(
            "jsonb_build_object('at', {at}, 'attempt', LEAST({p}attempts + 1, {p}max_attempts), \
             'worker', {worker}, 'error', {error})"
        ),
    )
}

/// JSON array column `{p}{column}` with `item` appended, its oldest items dropped beyond `limit`.
fn append_bounded(p: &str, column: &str, limit: usize, item: &str) -> String {
    format!(
        "(CASE WHEN jsonb_array_length(COALESCE({p}{column}, '[]'::jsonb)) >= {limit} \
         THEN {p}{column} - 0 ELSE COALESCE({p}{column}, '[]'::jsonb) END) || jsonb_build_array({item})"
    )
}

/// Whether a head that dies gives up its key (`DeadHead::Skip`), so that the statements that
/// can kill one must promote the next event.
fn releases_dead_heads(config: &PgConfig) -> bool {
    !outbox_core::ordering::keeps_key(outbox_core::Status::Dead, config.dead_head)
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

/// The `head_key` of a head that just died (`p` prefixes the column): kept under
/// `DeadHead::Block` (the key is parked), cleared under `DeadHead::Skip` (the statement then
/// promotes the next event), as [`outbox_core::ordering::keeps_key`] decides.
fn dead_head(config: &PgConfig, p: &str) -> String {
    if releases_dead_heads(config) {
        "NULL".to_owned()
    } else {
        format!("{p}head_key")
    }
}
