//! `outbox events`: list events with the filters every store offers, and show one.

use std::io::{Write, stdout};
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::Subcommand;
use outbox_core::{EventFilter, EventId, EventPage, OutboxStore, Status, StoreError};

use crate::startup::Startup;
use crate::{CliError, Target, load, store};

/// Most events one `outbox events list` prints.
const MAX_LIMIT: usize = 10_000;

#[derive(Subcommand, Debug)]
pub(crate) enum EventsAction {
    /// List events, oldest first (newest first with --newest-first), filtered; prints the
    /// `--after` that continues the listing when the page is full.
    ///
    /// Example: `outbox events list --status dead --type-prefix order. --since 2026-11-27T00:00:00Z`.
    List {
        #[command(flatten)]
        target: Target,
        #[command(flatten)]
        filter: FilterArgs,
        /// Print `{"events": […], "unreadable": […], "next_after": …}` instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print one event, every field, as JSON.
    ///
    /// Example: `outbox events show 0190f1c2-…`.
    Show {
        #[command(flatten)]
        target: Target,
        /// The event's id.
        id: EventId,
    },
}

impl EventsAction {
    /// Where the command looks for the outbox.
    pub(crate) fn target(&self) -> &Target {
        match self {
            EventsAction::List { target, .. } | EventsAction::Show { target, .. } => target,
        }
    }
}

/// The filters of `outbox events list`, as `EventFilter` takes them.
#[derive(clap::Args, Debug)]
pub(crate) struct FilterArgs {
    /// Only this status (waiting, pending, in_flight, delivered, dead).
    #[arg(long)]
    status: Option<Status>,
    /// Only this event type.
    #[arg(long = "type")]
    event_type: Option<String>,
    /// Only event types starting with this (`order.`).
    #[arg(long)]
    type_prefix: Option<String>,
    /// Only this aggregate type.
    #[arg(long)]
    aggregate_type: Option<String>,
    /// Only this aggregate id.
    #[arg(long)]
    aggregate_id: Option<String>,
    /// Only the event with this idempotency key.
    #[arg(long)]
    key: Option<String>,
    /// Only events created at or after this time (RFC 3339).
    #[arg(long)]
    since: Option<DateTime<Utc>>,
    /// Only events created before this time (RFC 3339).
    #[arg(long)]
    before: Option<DateTime<Utc>>,
    /// Newest first.
    #[arg(long)]
    newest_first: bool,
    /// Continue a listing after this id (printed at the end of a full page).
    #[arg(long)]
    after: Option<EventId>,
    /// At most this many (1 to 10,000).
    #[arg(long, default_value_t = 50)]
    limit: usize,
}

impl FilterArgs {
    fn filter(self) -> Result<EventFilter, CliError> {
        if !(1..=MAX_LIMIT).contains(&self.limit) {
            return Err(format!("--limit must be 1 to {MAX_LIMIT}, got {}", self.limit).into());
        }
        Ok(EventFilter {
            status: self.status,
            event_type: self.event_type,
            event_type_prefix: self.type_prefix,
            aggregate_type: self.aggregate_type,
            aggregate_id: self.aggregate_id,
            idempotency_key: self.key,
            created_from: self.since,
            created_before: self.before,
            newest_first: self.newest_first,
            after: self.after,
            limit: self.limit,
        })
    }
}

pub(crate) async fn events(action: EventsAction) -> Result<(), CliError> {
    match action {
        EventsAction::List {
            target,
            filter,
            json,
        } => {
            let filter = filter.filter()?;
            let store = store(&load(&target)?, 2, Startup::within(Duration::ZERO)).await?;
            let page = store.list(&filter).await?;
            let full = page.events.len() + page.undecodable.len() >= filter.limit;
            let next = page.next_after(&filter).filter(|_| full);
            if json {
                print_json(&page, next)?;
            } else {
                print_table(&page, next)?;
            }
        }
        EventsAction::Show { target, id } => {
            let store = store(&load(&target)?, 2, Startup::within(Duration::ZERO)).await?;
            let event = store.get(id).await?.ok_or(StoreError::NotFound(id))?;
            writeln!(stdout(), "{}", serde_json::to_string_pretty(&event)?)?;
        }
    }
    Ok(())
}

fn print_json(page: &EventPage, next: Option<EventId>) -> Result<(), CliError> {
    let unreadable: Vec<serde_json::Value> = page
        .undecodable
        .iter()
        .map(|u| {
            serde_json::json!({
                "id": u.id,
                "status": u.status,
                "created_at": u.created_at,
                "error": u.error,
            })
        })
        .collect();
    let out = serde_json::json!({
        "events": page.events,
        "unreadable": unreadable,
        "next_after": next,
    });
    writeln!(stdout(), "{}", serde_json::to_string_pretty(&out)?)?;
    Ok(())
}

fn print_table(page: &EventPage, next: Option<EventId>) -> Result<(), CliError> {
    let mut out = stdout().lock();
    writeln!(
        out,
        "{:<36}  {:<9}  {:<24}  {:<28}  {:>8}  created",
        "id", "status", "type", "aggregate", "attempts"
    )?;
    for e in &page.events {
        writeln!(
            out,
            "{:<36}  {:<9}  {:<24}  {:<28}  {:>8}  {}",
            e.id.to_string(),
            e.status().as_str(),
            e.event_type,
            format!("{}/{}", e.aggregate_type, e.aggregate_id),
            e.attempts(),
            e.created_at.format("%Y-%m-%d %H:%M:%S%.3f")
        )?;
    }
    for u in &page.undecodable {
        writeln!(
            out,
            "{:<36}  {:<9}  unreadable: {}",
            u.id.to_string(),
            u.status.as_str(),
            u.error
        )?;
    }
    if let Some(next) = next {
        writeln!(out, "more: --after {next}")?;
    }
    Ok(())
}
