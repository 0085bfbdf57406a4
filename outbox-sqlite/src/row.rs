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

/// The columns every event read selects, in this order. SQLite's driver copies every value a
/// statement returns, one allocation each, and a claim reads its batch inside the write lock;
/// so the fields a reader never needs apart travel as one JSON array, [`FIELDS`], built by
/// `json_array`, which quotes text and never fails on a row's contents. The fields an
/// unreadable row is reported by (id, status, creation time, ordering key) and the JSON the
/// application wrote (payload, headers) stay columns of their own: a row whose payload is not
/// JSON is one bad row, never a failed read.
pub(crate) const COLUMNS: &str = "id, status, created_at, payload, headers, ordering_key, \
    json_array(event_type, aggregate_type, aggregate_id, idempotency_key, attempts, \
    max_attempts, next_attempt_at, hex(lease_id), locked_by, locked_until, last_error, \
    updated_at, delivered_at, key_place, hex(hold_id), hold_until) AS fields";

/// A column of [`COLUMNS`]: its place in every event read, which is where a row is read from
/// (no lookup by name per value), and its name, for errors.
#[derive(Clone, Copy)]
struct Col(usize, &'static str);

const ID: Col = Col(0, "id");
const STATUS: Col = Col(1, "status");
const CREATED_AT: Col = Col(2, "created_at");
const PAYLOAD: Col = Col(3, "payload");
const HEADERS: Col = Col(4, "headers");
const ORDERING_KEY: Col = Col(5, "ordering_key");
const FIELDS: Col = Col(6, "fields");

/// The `fields` array of [`COLUMNS`], read in its order (by place, not by name). Ids come as
/// hex (JSON holds no blobs), empty for none.
#[derive(serde::Deserialize)]
struct Fields {
    event_type: String,
    aggregate_type: String,
    aggregate_id: String,
    idempotency_key: Option<String>,
    attempts: i64,
    max_attempts: i64,
    next_attempt_at: i64,
    lease_id: String,
    locked_by: Option<String>,
    locked_until: Option<i64>,
    last_error: Option<String>,
    updated_at: i64,
    delivered_at: Option<i64>,
    key_place: Option<i64>,
    hold_id: String,
    hold_until: Option<i64>,
}

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

/// An id the `fields` array holds as hex; empty for none.
fn hex_uuid(name: &str, hex: &str) -> Result<Option<Uuid>, StoreError> {
    if hex.is_empty() {
        return Ok(None);
    }
    Uuid::try_parse(hex)
        .map(Some)
        .map_err(|_| bad(format!("{name} is not 16 bytes")))
}

fn opt_time(name: &str, micros: Option<i64>) -> Result<Option<DateTime<Utc>>, StoreError> {
    micros.map(|m| time(name, m)).transpose()
}

fn count(name: &str, value: i64) -> Result<u32, StoreError> {
    u32::try_from(value).map_err(|_| bad(format!("{name} is out of range in the table")))
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
    let created_at = time(CREATED_AT.1, get(row, CREATED_AT)?)?;
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
    let f: Fields =
        serde_json::from_str(get(row, FIELDS)?).map_err(|e| bad(format!("fields: {e}")))?;
    let lease = match (
        hex_uuid("lease_id", &f.lease_id)?,
        opt_time("locked_until", f.locked_until)?,
    ) {
        (Some(lease), Some(until)) => Some(Lease {
            id: LeaseId::from_uuid(lease),
            holder: f.locked_by.unwrap_or_default(),
            until,
        }),
        _ => None,
    };
    let payload =
        serde_json::from_str(get(row, PAYLOAD)?).map_err(|e| bad(format!("payload: {e}")))?;
    let headers: BTreeMap<String, String> =
        serde_json::from_str(get(row, HEADERS)?).map_err(|e| bad(format!("headers: {e}")))?;
    let attempt_log = match row.try_get::<Option<&str>, _>("attempt_log") {
        Ok(Some(log)) => serde_json::from_str(log).map_err(|e| bad(format!("attempt_log: {e}")))?,
        Ok(None) | Err(sqlx::Error::ColumnNotFound(_)) => Vec::new(),
        Err(e) => return Err(db_error(e)),
    };
    let hold = match (
        hex_uuid("hold_id", &f.hold_id)?,
        opt_time("hold_until", f.hold_until)?,
    ) {
        (Some(hold), Some(until)) => Some((hold, until)),
        _ => None,
    };
    Ok(Stored {
        key_place: f.key_place,
        attempts: attempt_log,
        extra: Hold(hold),
        event: OutboxEvent {
            id,
            event_type: f.event_type,
            aggregate_type: f.aggregate_type,
            aggregate_id: f.aggregate_id,
            payload,
            headers,
            idempotency_key: f.idempotency_key,
            ordering_key: get(row, ORDERING_KEY)?,
            lifecycle: Lifecycle {
                status,
                attempts: count("attempts", f.attempts)?,
                max_attempts: count("max_attempts", f.max_attempts)?,
                next_attempt_at: time("next_attempt_at", f.next_attempt_at)?,
                lease,
                last_error: f.last_error,
                delivered_at: opt_time("delivered_at", f.delivered_at)?,
            },
            created_at,
            updated_at: time("updated_at", f.updated_at)?,
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
