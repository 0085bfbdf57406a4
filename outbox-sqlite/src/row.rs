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

/// A column of [`COLUMNS`]: its place in every event read, which is where a row is read from
/// (no lookup by name per value), and its name, for errors.
#[derive(Clone, Copy)]
struct Col(usize, &'static str);

const ID: Col = Col(0, "id");
const EVENT_TYPE: Col = Col(1, "event_type");
const AGGREGATE_TYPE: Col = Col(2, "aggregate_type");
const AGGREGATE_ID: Col = Col(3, "aggregate_id");
const PAYLOAD: Col = Col(4, "payload");
const HEADERS: Col = Col(5, "headers");
const IDEMPOTENCY_KEY: Col = Col(6, "idempotency_key");
const ORDERING_KEY: Col = Col(7, "ordering_key");
const STATUS: Col = Col(8, "status");
const ATTEMPTS: Col = Col(9, "attempts");
const MAX_ATTEMPTS: Col = Col(10, "max_attempts");
const NEXT_ATTEMPT_AT: Col = Col(11, "next_attempt_at");
const LEASE_ID: Col = Col(12, "lease_id");
const LOCKED_BY: Col = Col(13, "locked_by");
const LOCKED_UNTIL: Col = Col(14, "locked_until");
const LAST_ERROR: Col = Col(15, "last_error");
const CREATED_AT: Col = Col(16, "created_at");
const UPDATED_AT: Col = Col(17, "updated_at");
const DELIVERED_AT: Col = Col(18, "delivered_at");
const KEY_PLACE: Col = Col(19, "key_place");
const HOLD_ID: Col = Col(20, "hold_id");
const HOLD_UNTIL: Col = Col(21, "hold_until");

/// The value of `column` in a row selected with [`COLUMNS`] first.
fn get<'r, T>(row: &'r SqliteRow, column: Col) -> Result<T, StoreError>
where
    T: sqlx::Decode<'r, sqlx::Sqlite> + sqlx::Type<sqlx::Sqlite>,
{
    debug_assert_eq!(
        sqlx::Column::name(&row.columns()[column.0]),
        column.1,
        "an event read selects COLUMNS first"
    );
    row.try_get(column.0).map_err(db_error)
}

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

fn opt_uuid(row: &SqliteRow, column: Col) -> Result<Option<Uuid>, StoreError> {
    let bytes: Option<&[u8]> = get(row, column)?;
    bytes.map(|b| uuid(column.1, b)).transpose()
}

fn at(row: &SqliteRow, column: Col) -> Result<DateTime<Utc>, StoreError> {
    time(column.1, get(row, column)?)
}

fn opt_at(row: &SqliteRow, column: Col) -> Result<Option<DateTime<Utc>>, StoreError> {
    let micros: Option<i64> = get(row, column)?;
    micros.map(|m| time(column.1, m)).transpose()
}

fn count(row: &SqliteRow, column: Col) -> Result<u32, StoreError> {
    let value: i64 = get(row, column)?;
    u32::try_from(value).map_err(|_| bad(format!("{} is out of range in the table", column.1)))
}

/// The event id of a row (the one field every read needs first).
pub(crate) fn id_of(row: &SqliteRow) -> Result<EventId, StoreError> {
    let bytes: Vec<u8> = row.try_get("id").map_err(db_error)?;
    Ok(EventId::from_uuid(uuid("id", &bytes)?))
}

/// Decodes one row selected with [`COLUMNS`] first on its own: a row whose fields cannot be
/// read comes back as [`Undecodable`], so it never fails the rows around it. The outer error
/// is for a row whose id, status or creation time cannot be read.
pub(crate) fn decode(row: &SqliteRow) -> Result<Result<Stored, Undecodable>, StoreError> {
    let id = EventId::from_uuid(uuid(ID.1, get(row, ID)?)?);
    let status = get::<&str>(row, STATUS)?.parse::<Status>()?;
    let created_at = at(row, CREATED_AT)?;
    Ok(stored_from_row(row, id, status, created_at)
        .map_err(|error| Undecodable::new(id, status, created_at, error)))
}

/// Decodes the rest of one row (its id, status and creation time read already), or fails on
/// the first field that cannot be read.
fn stored_from_row(
    row: &SqliteRow,
    id: EventId,
    status: Status,
    created_at: DateTime<Utc>,
) -> Result<Stored, StoreError> {
    let lease = match (opt_uuid(row, LEASE_ID)?, opt_at(row, LOCKED_UNTIL)?) {
        (Some(lease), Some(until)) => Some(Lease {
            id: LeaseId::from_uuid(lease),
            holder: get::<Option<String>>(row, LOCKED_BY)?.unwrap_or_default(),
            until,
        }),
        _ => None,
    };
    let payload =
        serde_json::from_str(get(row, PAYLOAD)?).map_err(|e| bad(format!("payload: {e}")))?;
    let headers: BTreeMap<String, String> =
        serde_json::from_str(get(row, HEADERS)?).map_err(|e| bad(format!("headers: {e}")))?;
    let attempts = match row.try_get::<Option<&str>, _>("attempt_log") {
        Ok(Some(log)) => serde_json::from_str(log).map_err(|e| bad(format!("attempt_log: {e}")))?,
        Ok(None) | Err(sqlx::Error::ColumnNotFound(_)) => Vec::new(),
        Err(e) => return Err(db_error(e)),
    };
    let hold = match (opt_uuid(row, HOLD_ID)?, opt_at(row, HOLD_UNTIL)?) {
        (Some(hold), Some(until)) => Some((hold, until)),
        _ => None,
    };
    Ok(Stored {
        key_place: get(row, KEY_PLACE)?,
        attempts,
        extra: Hold(hold),
        event: OutboxEvent {
            id,
            event_type: get(row, EVENT_TYPE)?,
            aggregate_type: get(row, AGGREGATE_TYPE)?,
            aggregate_id: get(row, AGGREGATE_ID)?,
            payload,
            headers,
            idempotency_key: get(row, IDEMPOTENCY_KEY)?,
            ordering_key: get(row, ORDERING_KEY)?,
            lifecycle: Lifecycle {
                status,
                attempts: count(row, ATTEMPTS)?,
                max_attempts: count(row, MAX_ATTEMPTS)?,
                next_attempt_at: at(row, NEXT_ATTEMPT_AT)?,
                lease,
                last_error: get(row, LAST_ERROR)?,
                delivered_at: opt_at(row, DELIVERED_AT)?,
            },
            created_at,
            updated_at: at(row, UPDATED_AT)?,
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
