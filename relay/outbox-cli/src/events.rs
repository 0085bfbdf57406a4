//! `outbox events`: list events with the filters every store offers, and show one.

use std::io::{Write, stdout};

use chrono::{DateTime, Utc};
use clap::Subcommand;
use outbox_core::{
    Clock, EventFilter, EventId, EventPage, OutboxStore, Status, StoreError, SystemClock,
};

use outbox_admin::bulk;

use crate::{CliError, OnAnyStore, Target};

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
    /// Print one event, every field, as JSON, with its `history`: failed attempts (time,
    /// worker, error) and payload edits.
    ///
    /// Example: `outbox events show 0190f1c2-…`.
    Show {
        #[command(flatten)]
        target: Target,
        /// The event's id.
        id: EventId,
    },
    /// Give dead events more attempts, due at once: the ids named, or every dead event matching
    /// the filters (or --all). --dry-run prints how many would be retried.
    ///
    /// Example: `outbox events retry --type-prefix order. --since 2026-11-27T00:00:00Z --dry-run`.
    Retry {
        #[command(flatten)]
        target: Target,
        /// Events to retry.
        ids: Vec<EventId>,
        #[command(flatten)]
        matching: MatchArgs,
        /// Attempts to give each.
        #[arg(long, default_value_t = 1)]
        attempts: u32,
        /// Count, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Print `{"matched": …, "changed": …, "dry_run": …}`.
        #[arg(long)]
        json: bool,
    },
    /// Delete events for good: the ids named, or every event matching the filters (or --all),
    /// except those a worker holds. An undelivered event deleted is never delivered; needs --yes
    /// unless --dry-run, which prints how many would be deleted.
    ///
    /// Example: `outbox events delete --status dead --before 2026-11-01T00:00:00Z --yes`.
    Delete {
        #[command(flatten)]
        target: Target,
        /// Events to delete.
        ids: Vec<EventId>,
        #[command(flatten)]
        matching: MatchArgs,
        /// Count, change nothing.
        #[arg(long)]
        dry_run: bool,
        /// Confirms the deletion.
        #[arg(long)]
        yes: bool,
        /// Print `{"matched": …, "changed": …, "dry_run": …}`.
        #[arg(long)]
        json: bool,
    },
    /// Pause delivery of an event type: no relay claims its events (they stay pending, in
    /// order) until it is resumed. Without a type, list the paused types.
    ///
    /// Example: `outbox events pause order.paid`.
    Pause {
        #[command(flatten)]
        target: Target,
        /// The event type.
        event_type: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
    /// Resume delivery of a paused event type.
    ///
    /// Example: `outbox events resume order.paid`.
    Resume {
        #[command(flatten)]
        target: Target,
        /// The event type.
        event_type: String,
        /// Print JSON.
        #[arg(long)]
        json: bool,
    },
}

impl EventsAction {
    /// Where the command looks for the outbox.
    pub(crate) fn target(&self) -> &Target {
        match self {
            EventsAction::List { target, .. }
            | EventsAction::Show { target, .. }
            | EventsAction::Retry { target, .. }
            | EventsAction::Delete { target, .. }
            | EventsAction::Pause { target, .. }
            | EventsAction::Resume { target, .. } => target,
        }
    }
}

/// Which events a command matches, as `EventFilter` takes them.
#[derive(clap::Args, Debug, Default)]
pub(crate) struct MatchArgs {
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
    /// Every event (for retry and delete, which otherwise need ids or a filter).
    #[arg(long)]
    all: bool,
}

impl MatchArgs {
    /// Whether any filter is set.
    fn any(&self) -> bool {
        self.status.is_some()
            || self.event_type.is_some()
            || self.type_prefix.is_some()
            || self.aggregate_type.is_some()
            || self.aggregate_id.is_some()
            || self.key.is_some()
            || self.since.is_some()
            || self.before.is_some()
    }

    /// What a bulk command selects beyond the ids it names: every event matching the filters
    /// (or every event, with --all), or nothing more when none is given; naming nothing at all
    /// is refused.
    fn selection(self, named: bool) -> Result<Option<EventFilter>, CliError> {
        if self.any() || self.all {
            Ok(Some(self.filter(bulk::PAGE)))
        } else if named {
            Ok(None)
        } else {
            Err("name the events, or give a filter (--status, --type, …) or --all".into())
        }
    }

    fn filter(self, limit: usize) -> EventFilter {
        EventFilter {
            status: self.status,
            event_type: self.event_type,
            event_type_prefix: self.type_prefix,
            aggregate_type: self.aggregate_type,
            aggregate_id: self.aggregate_id,
            idempotency_key: self.key,
            created_from: self.since,
            created_before: self.before,
            limit,
            ..EventFilter::default()
        }
    }
}

/// The filters of `outbox events list`, with its page.
#[derive(clap::Args, Debug)]
pub(crate) struct FilterArgs {
    #[command(flatten)]
    matching: MatchArgs,
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
            newest_first: self.newest_first,
            after: self.after,
            ..self.matching.filter(self.limit)
        })
    }
}

/// `outbox events …`: every action is a contract call, so it runs on any store.
impl OnAnyStore for EventsAction {
    fn target(&self) -> &Target {
        EventsAction::target(self)
    }

    fn check(&self) -> Result<(), CliError> {
        match self {
            EventsAction::Delete {
                dry_run: false,
                yes: false,
                ..
            } => Err("deleting is for good: add --yes (or --dry-run to count)".into()),
            _ => Ok(()),
        }
    }

    async fn run<S: OutboxStore>(self, store: &S) -> Result<(), CliError> {
        events_on(store, self).await
    }
}

async fn events_on<S: OutboxStore>(store: &S, action: EventsAction) -> Result<(), CliError> {
    match action {
        EventsAction::List {
            target: _,
            filter,
            json,
        } => {
            let filter = filter.filter()?;
            let page = store.list(&filter).await?;
            let full = page.events.len() + page.undecodable.len() >= filter.limit;
            let next = page.next_after(&filter).filter(|_| full);
            if json {
                print_json(&page, next)?;
            } else {
                print_table(&page, next)?;
            }
        }
        EventsAction::Show { target: _, id } => {
            let event = store.get(id).await?.ok_or(StoreError::NotFound(id))?;
            let history = store.history(id).await?;
            let mut shown = serde_json::to_value(&event)?;
            if let Some(fields) = shown.as_object_mut() {
                fields.insert("history".to_owned(), serde_json::to_value(&history)?);
            }
            writeln!(stdout(), "{}", serde_json::to_string_pretty(&shown)?)?;
        }
        EventsAction::Retry {
            target: _,
            ids,
            matching,
            attempts,
            dry_run,
            json,
        } => {
            let selection = matching.selection(!ids.is_empty())?;
            let outcome =
                bulk::retry(store, ids, selection, attempts, dry_run, SystemClock.now()).await?;
            if json {
                print_outcome(outcome, dry_run)?;
            } else if dry_run {
                writeln!(
                    stdout(),
                    "would retry {} event(s); nothing changed",
                    outcome.matched
                )?;
            } else {
                writeln!(
                    stdout(),
                    "retried {} event(s) with {attempts} more attempt(s) each",
                    outcome.changed
                )?;
            }
        }
        EventsAction::Delete {
            target: _,
            ids,
            matching,
            dry_run,
            yes: _,
            json,
        } => {
            let selection = matching.selection(!ids.is_empty())?;
            let outcome = bulk::delete(store, ids, selection, dry_run, SystemClock.now()).await?;
            if json {
                print_outcome(outcome, dry_run)?;
            } else if dry_run {
                writeln!(
                    stdout(),
                    "would delete {} event(s); nothing changed",
                    outcome.matched
                )?;
            } else {
                writeln!(
                    stdout(),
                    "deleted {} event(s); {} skipped (held by a worker, or gone)",
                    outcome.changed,
                    outcome.matched - outcome.changed
                )?;
            }
        }
        EventsAction::Pause {
            target: _,
            event_type,
            json,
        } => {
            if let Some(event_type) = event_type {
                let newly = store.pause_type(&event_type, SystemClock.now()).await?;
                if json {
                    let out = serde_json::json!({ "paused": event_type, "newly": newly });
                    writeln!(stdout(), "{out}")?;
                } else if newly {
                    writeln!(
                        stdout(),
                        "paused {event_type}: no relay claims its events until `outbox events resume {event_type}`"
                    )?;
                } else {
                    writeln!(stdout(), "{event_type} was already paused")?;
                }
            } else {
                let paused = store.paused_types().await?;
                if json {
                    writeln!(stdout(), "{}", serde_json::to_string_pretty(&paused)?)?;
                } else if paused.is_empty() {
                    writeln!(stdout(), "no event type is paused")?;
                } else {
                    for p in paused {
                        writeln!(stdout(), "{:<32} paused since {}", p.event_type, p.since)?;
                    }
                }
            }
        }
        EventsAction::Resume {
            target: _,
            event_type,
            json,
        } => {
            let was = store.resume_type(&event_type, SystemClock.now()).await?;
            if json {
                let out = serde_json::json!({ "resumed": event_type, "was_paused": was });
                writeln!(stdout(), "{out}")?;
            } else if was {
                writeln!(stdout(), "resumed {event_type}")?;
            } else {
                writeln!(stdout(), "{event_type} was not paused")?;
            }
        }
    }
    Ok(())
}

fn print_outcome(outcome: bulk::BulkOutcome, dry_run: bool) -> Result<(), CliError> {
    let out = serde_json::json!({
        "matched": outcome.matched,
        "changed": outcome.changed,
        "dry_run": dry_run,
    });
    writeln!(stdout(), "{out}")?;
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
