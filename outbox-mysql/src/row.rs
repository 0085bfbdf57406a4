//! Reads rows of the outbox table back into events, and writes changed events back.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use outbox_core::{
    EventId, Lease, LeaseId, Lifecycle, OutboxEvent, Status, StoreError, Undecodable,
};
use sqlx::Row;
use sqlx::mysql::MySqlRow;
use uuid::Uuid;

use crate::error::db_error;

/// The columns every event read selects, in this order.
pub(crate) const COLUMNS: &str = "seq, id, event_type, aggregate_type, aggregate_id, payload, \
    headers, idempotency_key, ordering_key, status, attempts, max_attempts, next_attempt_at, \
    lease_id, locked_by, locked_until, last_error, created_at, updated_at, delivered_at, key_place";

/// A row's number (`seq`, the primary key), the one column the store keeps beside the event.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Seq(pub(crate) u64);

impl outbox_core::changes::Extra for Seq {}

/// An event as the table holds it: the event, its place in its key's queue, (for rows read to
/// be changed) its failed attempts, and its row number.
pub(crate) type Stored = outbox_core::changes::Row<Seq>;

fn bad(reason: impl Into<String>) -> StoreError {
    StoreError::Backend {
        source: reason.into().into(),
    }
}

/// A `VARBINARY` column holding text.
pub(crate) fn text(row: &MySqlRow, column: &str) -> Result<String, StoreError> {
    let bytes: Vec<u8> = row.try_get(column).map_err(db_error)?;
    String::from_utf8(bytes).map_err(|_| bad(format!("{column} is not UTF-8")))
}

/// A nullable `VARBINARY` column holding text.
pub(crate) fn opt_text(row: &MySqlRow, column: &str) -> Result<Option<String>, StoreError> {
    let bytes: Option<Vec<u8>> = row.try_get(column).map_err(db_error)?;
    bytes
        .map(|b| String::from_utf8(b).map_err(|_| bad(format!("{column} is not UTF-8"))))
        .transpose()
}

fn count(column: &str, value: i32) -> Result<u32, StoreError> {
    u32::try_from(value).map_err(|_| bad(format!("{column} is negative in the table")))
}

/// The event id of a row (the one field every read needs first).
pub(crate) fn id_of(row: &MySqlRow) -> Result<EventId, StoreError> {
    let id: Uuid = row.try_get("id").map_err(db_error)?;
    Ok(EventId::from_uuid(id))
}

/// Decodes one row selected with [`COLUMNS`] on its own: a row whose fields cannot be read
/// comes back as [`Undecodable`], so it never fails the rows around it. The outer error is
/// for a row whose id, status or creation time cannot be read.
pub(crate) fn decode(row: &MySqlRow) -> Result<Result<Stored, Undecodable>, StoreError> {
    let id = id_of(row)?;
    let status = row
        .try_get::<String, _>("status")
        .map_err(db_error)?
        .parse::<Status>()?;
    let created_at = row.try_get("created_at").map_err(db_error)?;
    Ok(stored_from_row(row).map_err(|error| Undecodable::new(id, status, created_at, error)))
}

/// Decodes one row, or fails on the first field that cannot be read.
fn stored_from_row(row: &MySqlRow) -> Result<Stored, StoreError> {
    let status: String = row.try_get("status").map_err(db_error)?;
    let lease_id: Option<Uuid> = row.try_get("lease_id").map_err(db_error)?;
    let locked_until: Option<DateTime<Utc>> = row.try_get("locked_until").map_err(db_error)?;
    let lease = match (lease_id, locked_until) {
        (Some(id), Some(until)) => Some(Lease {
            id: LeaseId::from_uuid(id),
            holder: opt_text(row, "locked_by")?.unwrap_or_default(),
            until,
        }),
        _ => None,
    };
    let payload: Vec<u8> = row.try_get("payload").map_err(db_error)?;
    let payload = serde_json::from_slice(&payload).map_err(|e| bad(format!("payload: {e}")))?;
    let headers: Vec<u8> = row.try_get("headers").map_err(db_error)?;
    let headers: BTreeMap<String, String> =
        serde_json::from_slice(&headers).map_err(|e| bad(format!("headers: {e}")))?;
    let seq: u64 = row.try_get("seq").map_err(db_error)?;
    let attempts = match row.try_get::<Option<Vec<u8>>, _>("attempt_log") {
        Ok(Some(log)) => {
            serde_json::from_slice(&log).map_err(|e| bad(format!("attempt_log: {e}")))?
        }
        Ok(None) | Err(sqlx::Error::ColumnNotFound(_)) => Vec::new(),
        Err(e) => return Err(db_error(e)),
    };
    Ok(Stored {
        extra: Seq(seq),
        key_place: row.try_get("key_place").map_err(db_error)?,
        attempts,
        event: OutboxEvent {
            id: id_of(row)?,
            event_type: text(row, "event_type")?,
            aggregate_type: text(row, "aggregate_type")?,
            aggregate_id: text(row, "aggregate_id")?,
            payload,
            headers,
            idempotency_key: opt_text(row, "idempotency_key")?,
            ordering_key: opt_text(row, "ordering_key")?,
            lifecycle: Lifecycle {
                status: status.parse()?,
                attempts: count("attempts", row.try_get("attempts").map_err(db_error)?)?,
                max_attempts: count(
                    "max_attempts",
                    row.try_get("max_attempts").map_err(db_error)?,
                )?,
                next_attempt_at: row.try_get("next_attempt_at").map_err(db_error)?,
                lease,
                last_error: opt_text(row, "last_error")?,
                delivered_at: row.try_get("delivered_at").map_err(db_error)?,
            },
            created_at: row.try_get("created_at").map_err(db_error)?,
            updated_at: row.try_get("updated_at").map_err(db_error)?,
        },
    })
}

/// A count column (`attempts`, `max_attempts`) as the table stores it.
pub(crate) fn as_int(field: &'static str, n: u32) -> Result<i32, StoreError> {
    i32::try_from(n)
        .map_err(|_| outbox_core::ValidationError::new(field, "too large for the table").into())
}
