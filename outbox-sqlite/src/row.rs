//! Reads rows of the outbox table back into events, and the time and id encodings the table
//! uses.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use outbox_core::{
    EventId, Lease, LeaseId, Lifecycle, OutboxEvent, Status, StoreError, Undecodable,
};
use sqlx::Row;
use sqlx::sqlite::SqliteRow;
use uuid::Uuid;

use crate::error::db_error;

/// The columns every event read selects, in this order.
pub(crate) const COLUMNS: &str = "id, event_type, aggregate_type, aggregate_id, payload, \
    headers, idempotency_key, ordering_key, status, attempts, max_attempts, next_attempt_at, \
    lease_id, locked_by, locked_until, last_error, created_at, updated_at, delivered_at, \
    key_place, hold_id, hold_until";

/// The locked claim marking a row, and until when (the mark may outlive the hold): the one
/// thing the store keeps beside the event. Any change to the event ends it.
#[derive(Clone, Copy, Debug, Default)]
pub(crate) struct Hold(pub(crate) Option<(Uuid, DateTime<Utc>)>);

impl outbox_core::changes::Extra for Hold {
    fn on_transition(&mut self) {
        self.0 = None;
    }
}

/// An event as the table holds it: the event, its place in its key's queue, (for rows read to
/// be changed) its failed attempts, and the locked claim marking it.
pub(crate) type Stored = outbox_core::changes::Row<Hold>;

/// A time as the table stores it: microseconds since the Unix epoch.
pub(crate) fn micros(t: DateTime<Utc>) -> i64 {
    t.timestamp_micros()
}

/// A time read from the table.
pub(crate) fn time(column: &str, micros: i64) -> Result<DateTime<Utc>, StoreError> {
    DateTime::from_timestamp_micros(micros).ok_or_else(|| bad(format!("{column} is out of range")))
}

fn bad(reason: impl Into<String>) -> StoreError {
    StoreError::Backend {
        source: reason.into().into(),
    }
}

fn uuid(column: &str, bytes: &[u8]) -> Result<Uuid, StoreError> {
    Uuid::from_slice(bytes).map_err(|_| bad(format!("{column} is not 16 bytes")))
}

fn opt_uuid(row: &SqliteRow, column: &str) -> Result<Option<Uuid>, StoreError> {
    let bytes: Option<Vec<u8>> = row.try_get(column).map_err(db_error)?;
    bytes.map(|b| uuid(column, &b)).transpose()
}

fn at(row: &SqliteRow, column: &str) -> Result<DateTime<Utc>, StoreError> {
    let micros: i64 = row.try_get(column).map_err(db_error)?;
    time(column, micros)
}

fn opt_at(row: &SqliteRow, column: &str) -> Result<Option<DateTime<Utc>>, StoreError> {
    let micros: Option<i64> = row.try_get(column).map_err(db_error)?;
    micros.map(|m| time(column, m)).transpose()
}

fn count(row: &SqliteRow, column: &str) -> Result<u32, StoreError> {
    let value: i64 = row.try_get(column).map_err(db_error)?;
    u32::try_from(value).map_err(|_| bad(format!("{column} is out of range in the table")))
}

/// The event id of a row (the one field every read needs first).
pub(crate) fn id_of(row: &SqliteRow) -> Result<EventId, StoreError> {
    let bytes: Vec<u8> = row.try_get("id").map_err(db_error)?;
    Ok(EventId::from_uuid(uuid("id", &bytes)?))
}

/// Decodes one row selected with [`COLUMNS`] on its own: a row whose fields cannot be read
/// comes back as [`Undecodable`], so it never fails the rows around it. The outer error is
/// for a row whose id, status or creation time cannot be read.
pub(crate) fn decode(row: &SqliteRow) -> Result<Result<Stored, Undecodable>, StoreError> {
    let id = id_of(row)?;
    let status = row
        .try_get::<String, _>("status")
        .map_err(db_error)?
        .parse::<Status>()?;
    let created_at = at(row, "created_at")?;
    Ok(stored_from_row(row).map_err(|error| Undecodable {
        id,
        status,
        created_at,
        error: match error {
            StoreError::Backend { source } | StoreError::Unavailable { source } => {
                source.to_string()
            }
            other => other.to_string(),
        },
    }))
}

/// Decodes one row, or fails on the first field that cannot be read.
fn stored_from_row(row: &SqliteRow) -> Result<Stored, StoreError> {
    let status: String = row.try_get("status").map_err(db_error)?;
    let lease = match (opt_uuid(row, "lease_id")?, opt_at(row, "locked_until")?) {
        (Some(id), Some(until)) => Some(Lease {
            id: LeaseId::from_uuid(id),
            holder: row
                .try_get::<Option<String>, _>("locked_by")
                .map_err(db_error)?
                .unwrap_or_default(),
            until,
        }),
        _ => None,
    };
    let payload: String = row.try_get("payload").map_err(db_error)?;
    let payload = serde_json::from_str(&payload).map_err(|e| bad(format!("payload: {e}")))?;
    let headers: String = row.try_get("headers").map_err(db_error)?;
    let headers: BTreeMap<String, String> =
        serde_json::from_str(&headers).map_err(|e| bad(format!("headers: {e}")))?;
    let attempts = match row.try_get::<Option<String>, _>("attempt_log") {
        Ok(Some(log)) => {
            serde_json::from_str(&log).map_err(|e| bad(format!("attempt_log: {e}")))?
        }
        Ok(None) | Err(sqlx::Error::ColumnNotFound(_)) => Vec::new(),
        Err(e) => return Err(db_error(e)),
    };
    let hold = match (opt_uuid(row, "hold_id")?, opt_at(row, "hold_until")?) {
        (Some(id), Some(until)) => Some((id, until)),
        _ => None,
    };
    Ok(Stored {
        key_place: row.try_get("key_place").map_err(db_error)?,
        attempts,
        extra: Hold(hold),
        event: OutboxEvent {
            id: id_of(row)?,
            event_type: row.try_get("event_type").map_err(db_error)?,
            aggregate_type: row.try_get("aggregate_type").map_err(db_error)?,
            aggregate_id: row.try_get("aggregate_id").map_err(db_error)?,
            payload,
            headers,
            idempotency_key: row.try_get("idempotency_key").map_err(db_error)?,
            ordering_key: row.try_get("ordering_key").map_err(db_error)?,
            lifecycle: Lifecycle {
                status: status.parse()?,
                attempts: count(row, "attempts")?,
                max_attempts: count(row, "max_attempts")?,
                next_attempt_at: at(row, "next_attempt_at")?,
                lease,
                last_error: row.try_get("last_error").map_err(db_error)?,
                delivered_at: opt_at(row, "delivered_at")?,
            },
            created_at: at(row, "created_at")?,
            updated_at: at(row, "updated_at")?,
        },
    })
}

/// JSON text of a value, as payloads, headers and logs are stored.
pub(crate) fn json<T: serde::Serialize + ?Sized>(value: &T) -> Result<String, StoreError> {
    serde_json::to_string(value).map_err(|e| StoreError::Backend {
        source: Box::new(e),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_round_trip_to_the_microsecond() {
        let t = DateTime::from_timestamp(1_767_225_600, 123_456_000).unwrap();
        assert_eq!(time("t", micros(t)).unwrap(), t);
        assert!(time("t", i64::MAX).is_err());
    }
}
