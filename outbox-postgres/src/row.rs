//! Reads a row of the outbox table back into an [`OutboxEvent`].

use std::collections::BTreeMap;

use outbox_core::{
    EventId, Lease, LeaseId, Lifecycle, OutboxEvent, Status, StoreError, Undecodable,
    ValidationError,
};
use sqlx::Row;
use sqlx::postgres::PgRow;
use sqlx::types::Json;
use uuid::Uuid;

use crate::error::db_error;

fn count(field: &'static str, value: i32) -> Result<u32, StoreError> {
    u32::try_from(value)
        .map_err(|_| StoreError::InvalidInput(ValidationError::new(field, "negative in the table")))
}

/// The status a row's `status` column stands for: a parked event of a paused type
/// (`paused`) and a streamed one not yet delivered (`streaming`) are pending, as far as anyone reading it is concerned.
pub(crate) fn status_of(column: &str) -> Result<Status, StoreError> {
    match column {
        PARKED | STREAMING => Ok(Status::Pending),
        other => Ok(other.parse::<Status>()?),
    }
}

/// The `status` of a pending event parked while its type is paused.
pub(crate) const PARKED: &str = "paused";

/// The `status` of an event committed to a streamed table and not yet handed to the table's
/// own path: the log-reading relay delivers it (`docs/stream.md`).
pub(crate) const STREAMING: &str = "streaming";

/// Decodes one row selected with [`COLUMNS`](crate::sql::COLUMNS), on its own: a row whose
/// fields cannot be read (a payload nested deeper than the decoder accepts, headers that are not
/// a string map — written by something other than this library) comes back as
/// [`Undecodable`], so it never fails the rows around it. The outer error is for a row whose
/// id, status or creation time cannot be read, which the table's constraints rule out.
pub(crate) fn decode(row: &PgRow) -> Result<Result<OutboxEvent, Undecodable>, StoreError> {
    let id = EventId::from_uuid(row.try_get("id").map_err(db_error)?);
    let status: String = row.try_get("status").map_err(db_error)?;
    let status = status_of(&status)?;
    let created_at = row.try_get("created_at").map_err(db_error)?;
    Ok(event_from_row(row).map_err(|error| Undecodable::new(id, status, created_at, error)))
}

/// Decodes one row, or fails on the first field that cannot be read.
fn event_from_row(row: &PgRow) -> Result<OutboxEvent, StoreError> {
    let status: String = row.try_get("status").map_err(db_error)?;
    let lease_id: Option<Uuid> = row.try_get("lease_id").map_err(db_error)?;
    let locked_by: Option<String> = row.try_get("locked_by").map_err(db_error)?;
    let locked_until = row.try_get("locked_until").map_err(db_error)?;
    let lease = match (lease_id, locked_until) {
        (Some(id), Some(until)) => Some(Lease {
            id: LeaseId::from_uuid(id),
            holder: locked_by.unwrap_or_default(),
            until,
        }),
        _ => None,
    };
    let headers: Json<BTreeMap<String, String>> = row.try_get("headers").map_err(db_error)?;
    Ok(OutboxEvent {
        id: EventId::from_uuid(row.try_get("id").map_err(db_error)?),
        event_type: row.try_get("event_type").map_err(db_error)?,
        aggregate_type: row.try_get("aggregate_type").map_err(db_error)?,
        aggregate_id: row.try_get("aggregate_id").map_err(db_error)?,
        payload: row.try_get("payload").map_err(db_error)?,
        headers: headers.0,
        idempotency_key: row.try_get("idempotency_key").map_err(db_error)?,
        ordering_key: row.try_get("ordering_key").map_err(db_error)?,
        lifecycle: Lifecycle {
            status: status_of(&status)?,
            attempts: count("attempts", row.try_get("attempts").map_err(db_error)?)?,
            max_attempts: count(
                "max_attempts",
                row.try_get("max_attempts").map_err(db_error)?,
            )?,
            next_attempt_at: row.try_get("next_attempt_at").map_err(db_error)?,
            lease,
            last_error: row.try_get("last_error").map_err(db_error)?,
            delivered_at: row.try_get("delivered_at").map_err(db_error)?,
        },
        created_at: row.try_get("created_at").map_err(db_error)?,
        updated_at: row.try_get("updated_at").map_err(db_error)?,
    })
}
