//! The pages, as maud templates (every value escaped).

use axum::http::StatusCode;
use axum::response::Html;
use chrono::{DateTime, Utc};
use maud::{DOCTYPE, Markup, html};
use outbox_core::{
    EventId, History, OutboxEvent, ParkedKey, PausedType, Status, StatusCounts, Undecodable,
};

use crate::auth::Viewer;
use crate::web::Filters;
use crate::{Admin, Sample, age};

/// What the overview shows.
pub(crate) struct Overview {
    pub counts: StatusCounts,
    pub cap: u64,
    pub now: DateTime<Utc>,
    pub oldest_pending: Option<(EventId, DateTime<Utc>)>,
    /// `None`: the store cannot pause.
    pub paused: Option<Vec<PausedType>>,
    /// `None`: the store has no ordering keys.
    pub parked: Option<Vec<ParkedKey>>,
    /// (error, how many, one of them), most frequent first.
    pub dead_groups: Vec<(String, u64, OutboxEvent)>,
    pub dead_scanned: usize,
    pub samples: Vec<Sample>,
    pub rate_note: Option<String>,
}

/// A rendered page.
fn page(markup: Markup) -> Html<String> {
    Html(markup.into_string())
}

fn csrf_field(viewer: &Viewer) -> Markup {
    match viewer {
        Viewer::Writer { csrf } => html! { input type="hidden" name="csrf" value=(csrf); },
        _ => html! {},
    }
}

fn can_change(viewer: &Viewer) -> bool {
    matches!(viewer, Viewer::Writer { .. })
}

fn layout(
    admin: &Admin,
    viewer: &Viewer,
    title: &str,
    flash: Option<&str>,
    body: Markup,
) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · outbox admin" }
                link rel="stylesheet" href=(admin.link("/assets/admin.css"));
                script src=(admin.link("/assets/admin.js")) defer {}
            }
            body {
                header.top {
                    a.brand href=(admin.link("/")) { "outbox admin" }
                    nav {
                        a href=(admin.link("/")) { "Overview" }
                        a href=(admin.link("/events")) { "Events" }
                        a href=(admin.link("/events?status=dead")) { "Dead" }
                    }
                    @match viewer {
                        Viewer::Writer { .. } if admin.inner.sessions.uses_login() => {
                            form.inline method="post" action=(admin.link("/logout")) {
                                (csrf_field(viewer))
                                button type="submit" { "Log out" }
                            }
                        }
                        Viewer::Reader => { span.badge { "read-only" } }
                        _ => {}
                    }
                }
                main {
                    @if let Some(flash) = flash { p.flash role="status" { (flash) } }
                    (body)
                }
            }
        }
    }
}

/// The delivery-rate chart: a bar per sample, as inline SVG.
pub(crate) fn chart(samples: &[Sample]) -> Markup {
    let (w, h) = (600.0_f64, 120.0_f64);
    let peak = samples.iter().map(|s| s.per_second).fold(0.0_f64, f64::max);
    let scale = if peak > 0.0 { peak } else { 1.0 };
    let slots = crate::SAMPLES as f64;
    let bar = w / slots;
    let offset = slots - samples.len() as f64;
    html! {
        svg.chart viewBox=(format!("0 0 {w} {}", h + 16.0)) role="img"
            aria-label=(format!("delivery rate, peak {peak:.1} per second")) {
            @for (i, s) in samples.iter().enumerate() {
                @let height = (s.per_second / scale * h).max(if s.per_second > 0.0 { 1.0 } else { 0.0 });
                rect x=(format!("{:.1}", (offset + i as f64) * bar)) y=(format!("{:.1}", h - height))
                    width=(format!("{:.1}", (bar - 1.0).max(1.0))) height=(format!("{height:.1}")) {
                    title { (s.at.format("%H:%M:%S")) " — " (format!("{:.1}", s.per_second)) "/s" }
                }
            }
            line x1="0" y1=(h) x2=(w) y2=(h) {}
            text x="0" y=(h + 14.0) { (format!("peak {peak:.1}/s")) }
            @if let Some(last) = samples.last() {
                text x=(w) y=(h + 14.0) text-anchor="end" { (format!("now {:.1}/s", last.per_second)) }
            }
        }
    }
}

fn count(n: u64, cap: u64) -> String {
    if n >= cap {
        format!("{}+", group(cap))
    } else {
        group(n)
    }
}

/// `1234567` as `1,234,567`.
fn group(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn status_link(admin: &Admin, status: Status) -> String {
    admin.link(&format!("/events?status={}", status.as_str()))
}

pub(crate) fn overview(
    admin: &Admin,
    viewer: &Viewer,
    o: &Overview,
    flash: Option<&str>,
) -> Html<String> {
    let body = html! {
        h1 { "Overview" }
        section.cards #counts data-refresh=(admin.link("/overview.json")) {
            @for status in Status::ALL {
                a.card href=(status_link(admin, status)) data-status=(status.as_str()) {
                    span.label { (status.as_str().replace('_', " ")) }
                    span.value { (count(o.counts.get(status), o.cap)) }
                }
            }
            div.card {
                span.label { "oldest pending" }
                span.value #oldest-pending {
                    @match o.oldest_pending {
                        Some((id, at)) => a href=(admin.link(&format!("/events/{id}"))) { (age(o.now - at)) },
                        None => "—",
                    }
                }
            }
        }
        section {
            h2 { "Delivery rate" }
            @if let Some(note) = &o.rate_note {
                p.muted { (note) }
            } @else if o.samples.is_empty() {
                p.muted #chart { "Sampling; the first figures appear within a minute." }
            } @else {
                div #chart { (chart(&o.samples)) }
            }
        }
        section {
            h2 { "Dead events by error" }
            @if o.dead_groups.is_empty() {
                p.muted { "No dead events." }
            } @else {
                p.muted { "The newest " (o.dead_scanned) " dead events, grouped by their last error." }
                table.groups {
                    thead { tr { th { "events" } th { "error" } th { "type (one of them)" } th {} } }
                    tbody {
                        @for (error, n, example) in &o.dead_groups {
                            tr {
                                td.num { (n) }
                                td { code { (error) } }
                                td { (example.event_type) }
                                td { a href=(admin.link(&format!("/events?status=dead&type={}", example.event_type))) { "list" } }
                            }
                        }
                    }
                }
            }
        }
        section {
            h2 { "Paused event types" }
            @match &o.paused {
                None => p.muted { "This store cannot pause event types." },
                Some(paused) => {
                    @if paused.is_empty() { p.muted { "Nothing is paused." } }
                    @else {
                        table {
                            thead { tr { th { "type" } th { "paused" } th {} } }
                            tbody {
                                @for p in paused {
                                    tr {
                                        td { (p.event_type) }
                                        td { (age(o.now - p.since)) " ago" }
                                        td {
                                            @if can_change(viewer) {
                                                form.inline method="post" action=(admin.link("/types/resume")) {
                                                    (csrf_field(viewer))
                                                    input type="hidden" name="type" value=(p.event_type);
                                                    button type="submit" { "Resume" }
                                                }
                                            }
                                        }
                                    }
                                }
                            }
                        }
                    }
                    @if can_change(viewer) {
                        form.inline method="post" action=(admin.link("/types/pause")) {
                            (csrf_field(viewer))
                            label { "Pause delivery of " input type="text" name="type" placeholder="order.paid" required; }
                            button type="submit" { "Pause" }
                        }
                    }
                }
            }
        }
        @if let Some(parked) = &o.parked {
            @if !parked.is_empty() {
                section {
                    h2 { "Ordering keys parked behind a dead event" }
                    table {
                        thead { tr { th { "key" } th { "dead head" } th { "waiting" } } }
                        tbody {
                            @for p in parked {
                                tr {
                                    td { (p.key) }
                                    td { a href=(admin.link(&format!("/events/{}", p.head))) { (p.head) } }
                                    td.num { (p.waiting) }
                                }
                            }
                        }
                    }
                }
            }
        }
    };
    page(layout(admin, viewer, "Overview", flash, body))
}

fn filter_form(admin: &Admin, f: &Filters) -> Markup {
    let value = |v: &Option<String>| v.clone().unwrap_or_default();
    let time = |t: &Option<DateTime<Utc>>| {
        t.map(|t| t.format("%Y-%m-%dT%H:%M").to_string())
            .unwrap_or_default()
    };
    html! {
        form.filters method="get" action=(admin.link("/events")) {
            label { "Status "
                select name="status" {
                    option value="" { "any" }
                    @for s in Status::ALL {
                        option value=(s.as_str()) selected[f.status == Some(s)] { (s.as_str()) }
                    }
                }
            }
            label { "Type " input type="text" name="type" value=(value(&f.event_type)) placeholder="order.paid"; }
            label { "Type prefix " input type="text" name="type_prefix" value=(value(&f.type_prefix)) placeholder="order."; }
            label { "Aggregate type " input type="text" name="aggregate_type" value=(value(&f.aggregate_type)); }
            label { "Aggregate id " input type="text" name="aggregate_id" value=(value(&f.aggregate_id)); }
            label { "Idempotency key " input type="text" name="key" value=(value(&f.idempotency_key)); }
            label { "Created from (UTC) " input type="datetime-local" name="from" value=(time(&f.from)); }
            label { "before (UTC) " input type="datetime-local" name="before" value=(time(&f.before)); }
            label { "Order "
                select name="order" {
                    option value="newest" selected[!f.oldest_first] { "newest first" }
                    option value="oldest" selected[f.oldest_first] { "oldest first" }
                }
            }
            label { "Search " input type="search" name="q" value=(value(&f.q)) placeholder="event id, aggregate id or key"; }
            button type="submit" { "Filter" }
            a href=(admin.link("/events")) { "clear" }
        }
    }
}

fn hidden_filters(f: &Filters) -> Markup {
    html! {
        @for (name, value) in f.pairs() {
            input type="hidden" name=(name) value=(value);
        }
    }
}

pub(crate) fn list(
    admin: &Admin,
    viewer: &Viewer,
    f: &Filters,
    events: &[OutboxEvent],
    unreadable: &[Undecodable],
    next: Option<EventId>,
    flash: Option<&str>,
) -> Html<String> {
    let body = html! {
        h1 { "Events" }
        (filter_form(admin, f))
        form #bulk method="post" action=(admin.link("/events/bulk")) {
            (csrf_field(viewer))
            (hidden_filters(f))
            @if can_change(viewer) {
                div.actions {
                    span { "Selected: " }
                    button type="submit" name="action" value="retry" { "Retry selected" }
                    button type="submit" name="action" value="delete" data-confirm="Delete the selected events for good?" { "Delete selected" }
                    @if f.any() && f.q.is_none() {
                        span { " · Every event matching the filter: " }
                        button type="submit" name="action" value="retry" formaction=(admin.link("/events/bulk?scope=filter")) { "Retry all matching" }
                        button type="submit" name="action" value="delete" formaction=(admin.link("/events/bulk?scope=filter")) { "Delete all matching…" }
                    }
                }
            }
            table.events {
                thead {
                    tr {
                        th { @if can_change(viewer) { input type="checkbox" #select-all title="select all"; } }
                        th { "id" } th { "status" } th { "type" } th { "aggregate" } th { "attempts" } th { "created (UTC)" } th { "last error" }
                    }
                }
                tbody {
                    @for e in events {
                        tr data-status=(e.status().as_str()) {
                            td { @if can_change(viewer) { input type="checkbox" name="id" value=(e.id); } }
                            td { a href=(admin.link(&format!("/events/{}", e.id))) { code { (e.id) } } }
                            td { span class=(format!("status {}", e.status().as_str())) { (e.status().as_str()) } }
                            td { (e.event_type) }
                            td { (e.aggregate_type) "/" (e.aggregate_id) }
                            td.num { (e.attempts()) "/" (e.lifecycle.max_attempts) }
                            td { (e.created_at.format("%Y-%m-%d %H:%M:%S")) }
                            td.error { (e.lifecycle.last_error.as_deref().unwrap_or("")) }
                        }
                    }
                    @for u in unreadable {
                        tr {
                            td {} td { code { (u.id) } } td { (u.status.as_str()) } td colspan="5" { "unreadable: " (u.error) }
                        }
                    }
                }
            }
        }
        @if events.is_empty() && unreadable.is_empty() { p.muted { "No events match." } }
        @if let Some(next) = next {
            p { a rel="next" href=(admin.link(&format!("/events?{}", f.query(&[("after", next.to_string())])))) { "Next page →" } }
        }
    };
    page(layout(admin, viewer, "Events", flash, body))
}

fn pretty(value: &impl serde::Serialize) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|e| format!("(cannot show: {e})"))
}

pub(crate) fn detail(
    admin: &Admin,
    viewer: &Viewer,
    e: &OutboxEvent,
    history: Option<&History>,
    paused: bool,
    flash: Option<&str>,
) -> Html<String> {
    let l = &e.lifecycle;
    let time = |t: DateTime<Utc>| t.format("%Y-%m-%d %H:%M:%S%.3f UTC").to_string();
    let body = html! {
        h1 { "Event " code { (e.id) } }
        dl.fields {
            dt { "status" } dd { span class=(format!("status {}", e.status().as_str())) #status { (e.status().as_str()) }
                @if paused { " (its type is paused)" } }
            dt { "type" } dd { (e.event_type) }
            dt { "aggregate" } dd { (e.aggregate_type) " / " (e.aggregate_id) }
            dt { "idempotency key" } dd { (e.idempotency_key.as_deref().unwrap_or("—")) }
            dt { "ordering key" } dd { (e.ordering_key.as_deref().unwrap_or("—")) }
            dt { "attempts" } dd { (l.attempts) " of " (l.max_attempts) }
            dt { "next attempt" } dd { (time(l.next_attempt_at)) }
            dt { "lease" } dd {
                @match &l.lease {
                    Some(lease) => { "held by " code { (lease.holder) } " until " (time(lease.until)) }
                    None => "—",
                }
            }
            dt { "last error" } dd.error { (l.last_error.as_deref().unwrap_or("—")) }
            dt { "created" } dd { (time(e.created_at)) }
            dt { "updated" } dd { (time(e.updated_at)) }
            dt { "delivered" } dd { (l.delivered_at.map(time).unwrap_or_else(|| "—".to_owned())) }
        }
        h2 { "Payload" }
        pre #payload { (pretty(&e.payload)) }
        h2 { "Headers" }
        pre { (pretty(&e.headers)) }
        h2 { "Failed attempts" }
        @match history {
            None => p.muted { "This store keeps no attempt history." },
            Some(h) if h.attempts.is_empty() => p.muted { "None." },
            Some(h) => {
                table.history {
                    thead { tr { th { "#" } th { "ended (UTC)" } th { "worker" } th { "error" } } }
                    tbody {
                        @for a in h.attempts.iter().rev() {
                            tr { td.num { (a.attempt) } td { (time(a.at)) } td { (a.worker.as_deref().unwrap_or("—")) } td.error { (a.error) } }
                        }
                    }
                }
            }
        }
        @if let Some(h) = history {
            @if !h.notes.is_empty() {
                h2 { "Edits" }
                @for n in h.notes.iter().rev() {
                    div.note {
                        p { (time(n.at)) " — " strong { (n.by) } ": " (n.note) }
                        details { summary { "payload before the edit" } pre { (pretty(&n.previous_payload)) } }
                    }
                }
            }
        }
        @if can_change(viewer) {
            h2 { "Actions" }
            @if e.status() == Status::Dead {
                form.inline method="post" action=(admin.link(&format!("/events/{}/retry", e.id))) {
                    (csrf_field(viewer))
                    label { "More attempts " input type="number" name="attempts" value="1" min="1"; }
                    button #retry type="submit" { "Retry" }
                }
                form.edit method="post" action=(admin.link(&format!("/events/{}/edit", e.id))) {
                    (csrf_field(viewer))
                    h3 { "Edit the payload and retry" }
                    textarea name="payload" rows="10" spellcheck="false" { (pretty(&e.payload)) }
                    label { "Your name " input type="text" name="by" required; }
                    label { "Why (kept on the event) " input type="text" name="note" required; }
                    button type="submit" { "Save and retry" }
                }
            }
            form.inline method="post" action=(admin.link(&format!("/events/{}/delete", e.id))) {
                (csrf_field(viewer))
                button.danger type="submit" data-confirm="Delete this event for good? An undelivered event deleted is never delivered." { "Delete" }
            }
        }
    };
    page(layout(
        admin,
        viewer,
        &format!("Event {}", e.id),
        flash,
        body,
    ))
}

pub(crate) fn confirm(
    admin: &Admin,
    viewer: &Viewer,
    action: &str,
    f: &Filters,
    matching: u64,
) -> Html<String> {
    let verb = if action == "retry" { "Retry" } else { "Delete" };
    let body = html! {
        h1 { (verb) " every matching event?" }
        p #matching {
            strong { (group(matching)) } " event(s) match"
            @if action == "retry" { " (dead ones only: only dead events can be retried)" }
            "."
            @if action == "delete" { " Deleting is for good; an undelivered event deleted is never delivered; events a worker holds are skipped." }
        }
        ul {
            @for (name, value) in f.pairs() { li { (name) ": " code { (value) } } }
        }
        form method="post" action=(admin.link("/events/bulk?scope=filter")) {
            (csrf_field(viewer))
            (hidden_filters(f))
            input type="hidden" name="scope" value="filter";
            input type="hidden" name="action" value=(action);
            input type="hidden" name="confirm" value=(matching);
            button.danger #confirm type="submit" { (verb) " " (group(matching)) " event(s)" }
            " "
            a href=(admin.link(&format!("/events?{}", f.query(&[])))) { "Cancel" }
        }
    };
    page(layout(admin, viewer, "Confirm", None, body))
}

pub(crate) fn login(admin: &Admin, error: Option<&str>) -> Html<String> {
    let body = html! {
        h1 { "Log in" }
        @if let Some(error) = error { p.error role="alert" { (error) } }
        form method="post" action=(admin.link("/login")) {
            label { "Admin token " input type="password" name="token" autocomplete="current-password" required autofocus; }
            button type="submit" { "Log in" }
        }
    };
    page(layout(admin, &Viewer::Anonymous, "Log in", None, body))
}

pub(crate) fn problem(status: StatusCode, message: &str) -> Html<String> {
    page(html! {
        (DOCTYPE)
        html lang="en" {
            head { meta charset="utf-8"; title { (status.as_u16()) " · outbox admin" } }
            body {
                h1 { (status.as_u16()) " " (status.canonical_reason().unwrap_or("")) }
                p.error { (message) }
            }
        }
    })
}
