//! Routes and handlers: read the request, ask the store, render a page.

use std::collections::BTreeMap;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{Path, RawQuery, Request, State};
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use chrono::{DateTime, NaiveDateTime, Utc};
use outbox_core::{
    EventFilter, EventId, OutboxEvent, PayloadEdit, Status, StoreError, ValidationError,
};

use crate::auth::{COOKIE, Viewer, same_secret};
use crate::pages::{self, Overview};
use crate::{Admin, bulk};

/// Dead events read to group by error on the overview.
pub(crate) const DEAD_SCANNED: usize = 500;

/// Most events a filter-wide action counts before asking for confirmation.
const CONFIRM_CAP: u64 = 1_000_000;

pub(crate) fn router(admin: Admin) -> Router {
    Router::new()
        .route("/", get(overview))
        .route("/overview.json", get(overview_json))
        .route("/events", get(list))
        .route("/events/bulk", post(bulk_action))
        .route("/events/{id}", get(detail))
        .route("/events/{id}/retry", post(retry_one))
        .route("/events/{id}/edit", post(edit_one))
        .route("/events/{id}/delete", post(delete_one))
        .route("/types/pause", post(pause))
        .route("/types/resume", post(resume))
        .route("/login", get(login_page).post(login))
        .route("/logout", post(logout))
        .route("/assets/admin.js", get(script))
        .route("/assets/admin.css", get(style))
        .layer(middleware::from_fn_with_state(admin.clone(), guard))
        .with_state(admin)
}

/// Why a request failed, as the page says it. Store failures say nothing of the store's
/// details (they are logged).
#[derive(Debug)]
pub(crate) enum Problem {
    NotFound(String),
    BadRequest(String),
    Conflict(String),
    Forbidden(String),
    Unsupported(String),
    TimedOut,
    Unavailable,
}

impl From<StoreError> for Problem {
    fn from(error: StoreError) -> Self {
        match error {
            StoreError::NotFound(id) => Problem::NotFound(format!("No event has the id {id}.")),
            StoreError::InvalidInput(e) => Problem::BadRequest(e.to_string()),
            e @ (StoreError::Transition { .. } | StoreError::Conflict { .. }) => {
                Problem::Conflict(e.to_string())
            }
            e @ StoreError::Undecodable { .. } => Problem::Conflict(e.to_string()),
            StoreError::Unsupported { operation } => {
                Problem::Unsupported(format!("This store does not support {operation}."))
            }
            StoreError::TimedOut { source } => {
                tracing::warn!(error = %source, "an admin query ran too long and was cancelled");
                Problem::TimedOut
            }
            other => {
                tracing::error!(error = %other, "the admin's store request failed");
                Problem::Unavailable
            }
        }
    }
}

impl From<ValidationError> for Problem {
    fn from(error: ValidationError) -> Self {
        Problem::BadRequest(error.to_string())
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            Problem::NotFound(m) => (StatusCode::NOT_FOUND, m),
            Problem::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            Problem::Conflict(m) => (StatusCode::CONFLICT, m),
            Problem::Forbidden(m) => (StatusCode::FORBIDDEN, m),
            Problem::Unsupported(m) => (StatusCode::NOT_IMPLEMENTED, m),
            Problem::TimedOut => (
                StatusCode::GATEWAY_TIMEOUT,
                "The query ran longer than the store allows the admin and was cancelled. Narrow \
                 it with a filter the table indexes (status, event type, idempotency key, or an \
                 event id in the search), or see docs/admin.md for the index a search by \
                 aggregate id wants on a big table."
                    .to_owned(),
            ),
            Problem::Unavailable => (
                StatusCode::SERVICE_UNAVAILABLE,
                "The store failed or could not be reached; the admin's log has the details."
                    .to_owned(),
            ),
        };
        (status, pages::problem(status, &message)).into_response()
    }
}

type Result<T> = std::result::Result<T, Problem>;

/// Who may do what, checked before every handler; and the headers every answer carries.
async fn guard(State(admin): State<Admin>, mut request: Request, next: Next) -> Response {
    let viewer = admin.inner.sessions.viewer(request.headers());
    let path = request.uri().path();
    let open = path == "/login" || path.starts_with("/assets/");
    let refused = match &viewer {
        Viewer::Unauthorized => Some(
            (
                StatusCode::UNAUTHORIZED,
                [(header::WWW_AUTHENTICATE, "Basic realm=\"outbox admin\"")],
                pages::problem(StatusCode::UNAUTHORIZED, "Sign in to use the admin."),
            )
                .into_response(),
        ),
        Viewer::Anonymous if !open => Some(if request.method() == axum::http::Method::GET {
            Redirect::to(&admin.link("/login")).into_response()
        } else {
            (
                StatusCode::UNAUTHORIZED,
                pages::problem(StatusCode::UNAUTHORIZED, "Log in to use the admin."),
            )
                .into_response()
        }),
        _ => None,
    };
    let mut response = match refused {
        Some(response) => response,
        None => {
            request.extensions_mut().insert(viewer);
            next.run(request).await
        }
    };
    let headers = response.headers_mut();
    for (name, value) in [
        (
            header::CONTENT_SECURITY_POLICY,
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; \
             connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
        (header::X_FRAME_OPTIONS, "DENY"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
        (header::CACHE_CONTROL, "no-store"),
    ] {
        headers.insert(name, HeaderValue::from_static(value));
    }
    response
}

/// A form or query string, every pair in order (a name may repeat, as checkboxes do).
pub(crate) struct Params(Vec<(String, String)>);

impl Params {
    fn parse(text: &[u8]) -> Self {
        Self(
            form_urlencoded::parse(text)
                .map(|(k, v)| (k.into_owned(), v.into_owned()))
                .collect(),
        )
    }

    fn query(raw: Option<String>) -> Self {
        Self::parse(raw.unwrap_or_default().as_bytes())
    }

    /// The first non-empty value of `name`, trimmed.
    pub(crate) fn get(&self, name: &str) -> Option<&str> {
        self.0
            .iter()
            .filter(|(k, _)| k == name)
            .map(|(_, v)| v.trim())
            .find(|v| !v.is_empty())
    }

    fn all(&self, name: &str) -> impl Iterator<Item = &str> {
        self.0
            .iter()
            .filter(move |(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// The list's filters, as the query string and the forms carry them.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct Filters {
    pub status: Option<Status>,
    pub event_type: Option<String>,
    pub type_prefix: Option<String>,
    pub aggregate_type: Option<String>,
    pub aggregate_id: Option<String>,
    pub idempotency_key: Option<String>,
    pub from: Option<DateTime<Utc>>,
    pub before: Option<DateTime<Utc>>,
    pub oldest_first: bool,
    /// Free text: an event id, an aggregate id or an idempotency key.
    pub q: Option<String>,
}

fn time(field: &'static str, text: &str) -> std::result::Result<DateTime<Utc>, ValidationError> {
    // RFC 3339, or what a datetime-local input sends (read as UTC).
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .or_else(|_| {
            NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M")
                .or_else(|_| NaiveDateTime::parse_from_str(text, "%Y-%m-%dT%H:%M:%S"))
                .map(|t| t.and_utc())
        })
        .map_err(|_| {
            ValidationError::new(field, format!("{text:?} is not a time (2026-11-27T10:00Z)"))
        })
}

impl Filters {
    fn from_params(p: &Params) -> std::result::Result<Self, ValidationError> {
        let text = |name: &str| p.get(name).map(str::to_owned);
        Ok(Self {
            status: p
                .get("status")
                .map(|s| {
                    s.parse::<Status>().map_err(|_| {
                        ValidationError::new("status", format!("unknown status {s:?}"))
                    })
                })
                .transpose()?,
            event_type: text("type"),
            type_prefix: text("type_prefix"),
            aggregate_type: text("aggregate_type"),
            aggregate_id: text("aggregate_id"),
            idempotency_key: text("key"),
            from: p.get("from").map(|t| time("from", t)).transpose()?,
            before: p.get("before").map(|t| time("before", t)).transpose()?,
            oldest_first: p.get("order") == Some("oldest"),
            q: text("q"),
        })
    }

    /// The filters as `(name, value)` pairs, for links and hidden fields.
    pub(crate) fn pairs(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        let mut put = |name: &'static str, value: Option<String>| {
            if let Some(v) = value {
                out.push((name, v));
            }
        };
        put("status", self.status.map(|s| s.as_str().to_owned()));
        put("type", self.event_type.clone());
        put("type_prefix", self.type_prefix.clone());
        put("aggregate_type", self.aggregate_type.clone());
        put("aggregate_id", self.aggregate_id.clone());
        put("key", self.idempotency_key.clone());
        put("from", self.from.map(|t| t.to_rfc3339()));
        put("before", self.before.map(|t| t.to_rfc3339()));
        put("order", self.oldest_first.then(|| "oldest".to_owned()));
        put("q", self.q.clone());
        out
    }

    /// The query string of these filters (and `extra`).
    pub(crate) fn query(&self, extra: &[(&str, String)]) -> String {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for (k, v) in self.pairs() {
            q.append_pair(k, &v);
        }
        for (k, v) in extra {
            q.append_pair(k, v);
        }
        q.finish()
    }

    /// Whether any filter narrows the list.
    pub(crate) fn any(&self) -> bool {
        self.pairs().iter().any(|(k, _)| *k != "order")
    }

    /// The store filters these stand for: one, or with a search text that is not an id, one
    /// per field it may be (aggregate id, idempotency key).
    fn store_filters(&self, limit: usize) -> Vec<EventFilter> {
        let base = EventFilter {
            status: self.status,
            event_type: self.event_type.clone(),
            event_type_prefix: self.type_prefix.clone(),
            aggregate_type: self.aggregate_type.clone(),
            aggregate_id: self.aggregate_id.clone(),
            idempotency_key: self.idempotency_key.clone(),
            created_from: self.from,
            created_before: self.before,
            newest_first: !self.oldest_first,
            limit,
            ..EventFilter::default()
        };
        match &self.q {
            None => vec![base],
            Some(q) => vec![
                EventFilter {
                    aggregate_id: Some(q.clone()),
                    ..base.clone()
                },
                EventFilter {
                    idempotency_key: Some(q.clone()),
                    ..base
                },
            ],
        }
    }
}

async fn overview(
    State(admin): State<Admin>,
    axum::Extension(viewer): axum::Extension<Viewer>,
    RawQuery(raw): RawQuery,
) -> Result<Response> {
    let overview = gather(&admin).await?;
    let flash = Params::query(raw);
    Ok(pages::overview(&admin, &viewer, &overview, flash.get("done")).into_response())
}

/// The overview's live figures, for the page's script.
async fn overview_json(State(admin): State<Admin>) -> Result<Response> {
    let o = gather(&admin).await?;
    let counts: BTreeMap<&str, u64> = Status::ALL
        .iter()
        .map(|s| (s.as_str(), o.counts.get(*s)))
        .collect();
    let body = serde_json::json!({
        "counts": counts,
        "cap": o.cap,
        "oldest_pending_age": o.oldest_pending.map(|(_, at)| crate::age(o.now - at)),
        "samples": o.samples,
        "chart": pages::chart(&o.samples).into_string(),
    });
    Ok(axum::Json(body).into_response())
}

/// What the overview shows, read with bounded queries.
async fn gather(admin: &Admin) -> Result<Overview> {
    let store = admin.store();
    let cap = admin.config().count_cap;
    let counts = store.count_capped(cap).await?;
    let oldest_pending = store.oldest_pending().await?;
    let paused = optional(store.paused_types().await)?;
    let parked = optional(store.parked_keys(20).await)?;
    let dead = store
        .list(&EventFilter {
            status: Some(Status::Dead),
            newest_first: true,
            limit: DEAD_SCANNED,
            ..EventFilter::default()
        })
        .await?;
    let mut groups: BTreeMap<String, (u64, OutboxEvent)> = BTreeMap::new();
    for event in &dead.events {
        let error = event.lifecycle.last_error.clone().unwrap_or_default();
        let error: String = error.chars().take(300).collect();
        groups
            .entry(error)
            .and_modify(|(n, _)| *n += 1)
            .or_insert((1, event.clone()));
    }
    let mut dead_groups: Vec<(String, u64, OutboxEvent)> = groups
        .into_iter()
        .map(|(error, (n, example))| (error, n, example))
        .collect();
    dead_groups.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
    let (samples, rate_note) = admin.samples();
    Ok(Overview {
        counts,
        cap,
        now: admin.now(),
        oldest_pending,
        paused,
        parked,
        dead_groups,
        dead_scanned: dead.events.len(),
        samples,
        rate_note,
    })
}

/// A result of an operation the store may not offer: `None` if it does not.
fn optional<T>(result: std::result::Result<T, StoreError>) -> Result<Option<T>> {
    match result {
        Ok(v) => Ok(Some(v)),
        Err(StoreError::Unsupported { .. }) => Ok(None),
        Err(e) => Err(e.into()),
    }
}

async fn list(
    State(admin): State<Admin>,
    axum::Extension(viewer): axum::Extension<Viewer>,
    RawQuery(raw): RawQuery,
) -> Result<Response> {
    let params = Params::query(raw);
    let filters = Filters::from_params(&params)?;
    let after = params
        .get("after")
        .map(|a| a.parse::<EventId>())
        .transpose()?;
    // A search text that is an event id opens that event.
    if let Some(q) = &filters.q
        && let Ok(id) = q.parse::<EventId>()
    {
        return Ok(match admin.store().get(id).await? {
            Some(_) => Redirect::to(&admin.link(&format!("/events/{id}"))).into_response(),
            None => Problem::NotFound(format!("No event has the id {id}.")).into_response(),
        });
    }
    let size = admin.config().page_size;
    let mut events: Vec<OutboxEvent> = Vec::new();
    let mut unreadable = Vec::new();
    for mut filter in filters.store_filters(size) {
        filter.after = after;
        let page = admin.store().list(&filter).await?;
        events.extend(page.events);
        unreadable.extend(page.undecodable);
    }
    // Two searches (aggregate id, key) merge in the page's order, each event once.
    events.sort_by_key(|e| e.id);
    events.dedup_by_key(|e| e.id);
    if !filters.oldest_first {
        events.reverse();
    }
    events.truncate(size);
    let next = (events.len() >= size)
        .then(|| events.last().map(|e| e.id))
        .flatten();
    let flash = params.get("done");
    Ok(pages::list(&admin, &viewer, &filters, &events, &unreadable, next, flash).into_response())
}

async fn detail(
    State(admin): State<Admin>,
    axum::Extension(viewer): axum::Extension<Viewer>,
    Path(id): Path<String>,
    RawQuery(raw): RawQuery,
) -> Result<Response> {
    let id = event_id(&id)?;
    let event = admin
        .store()
        .get(id)
        .await?
        .ok_or_else(|| Problem::NotFound(format!("No event has the id {id}.")))?;
    let history = optional(admin.store().history(id).await)?;
    let paused = optional(admin.store().paused_types().await)?
        .is_some_and(|p| p.iter().any(|t| t.event_type == event.event_type));
    let flash = Params::query(raw).get("done").map(str::to_owned);
    Ok(pages::detail(
        &admin,
        &viewer,
        &event,
        history.as_ref(),
        paused,
        flash.as_deref(),
    )
    .into_response())
}

fn event_id(text: &str) -> Result<EventId> {
    text.parse::<EventId>()
        .map_err(|_| Problem::NotFound(format!("{text:?} is not an event id.")))
}

/// The form of a change, once its sender may make it: a writer with the page's CSRF token.
fn change(admin: &Admin, viewer: &Viewer, body: &Bytes) -> Result<Params> {
    let form = Params::parse(body);
    match viewer {
        Viewer::Writer { csrf } => {
            if form.get("csrf").is_some_and(|sent| same_secret(sent, csrf)) {
                Ok(form)
            } else {
                Err(Problem::Forbidden(
                    "The form's security token is missing or out of date: reload the page and try again."
                        .to_owned(),
                ))
            }
        }
        _ if admin.inner.sessions.is_read_only() => Err(Problem::Forbidden(
            "This admin is read-only: start it with a token or basic-auth credentials to make changes."
                .to_owned(),
        )),
        _ => Err(Problem::Forbidden("Log in to make changes.".to_owned())),
    }
}

/// Attempts given to a retried event, from the form (default 1).
fn attempts(form: &Params) -> Result<u32> {
    match form.get("attempts") {
        None => Ok(1),
        Some(text) => text.parse::<u32>().ok().filter(|n| *n >= 1).ok_or_else(|| {
            Problem::BadRequest(format!(
                "attempts must be a whole number from 1, got {text:?}"
            ))
        }),
    }
}

fn see(admin: &Admin, path: &str, done: &str) -> Response {
    let mut q = form_urlencoded::Serializer::new(String::new());
    q.append_pair("done", done);
    Redirect::to(&admin.link(&format!("{path}?{}", q.finish()))).into_response()
}

async fn retry_one(
    State(admin): State<Admin>,
    axum::Extension(viewer): axum::Extension<Viewer>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response> {
    let form = change(&admin, &viewer, &body)?;
    let id = event_id(&id)?;
    let attempts = attempts(&form)?;
    admin.store().retry_dead(id, attempts, admin.now()).await?;
    tracing::info!(%id, attempts, "admin: dead event retried");
    Ok(see(
        &admin,
        &format!("/events/{id}"),
        &format!("Retried with {attempts} more attempt(s)."),
    ))
}

async fn edit_one(
    State(admin): State<Admin>,
    axum::Extension(viewer): axum::Extension<Viewer>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response> {
    let form = change(&admin, &viewer, &body)?;
    let id = event_id(&id)?;
    let payload: serde_json::Value = serde_json::from_str(form.get("payload").unwrap_or(""))
        .map_err(|e| Problem::BadRequest(format!("The payload is not JSON: {e}.")))?;
    let edit = PayloadEdit {
        payload,
        by: form.get("by").unwrap_or("admin").to_owned(),
        note: form.get("note").unwrap_or("").to_owned(),
    };
    let attempts = attempts(&form)?;
    admin
        .store()
        .edit_dead(id, &edit, attempts, admin.now())
        .await?;
    tracing::info!(%id, by = %edit.by, "admin: dead event edited and retried");
    Ok(see(
        &admin,
        &format!("/events/{id}"),
        "Payload replaced and event retried.",
    ))
}

async fn delete_one(
    State(admin): State<Admin>,
    axum::Extension(viewer): axum::Extension<Viewer>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Response> {
    change(&admin, &viewer, &body)?;
    let id = event_id(&id)?;
    let gone = admin.store().delete_events(&[id], admin.now()).await?;
    if gone.is_empty() {
        return Err(Problem::Conflict(format!(
            "Event {id} was not deleted: a worker holds it, or it is gone."
        )));
    }
    tracing::info!(%id, "admin: event deleted");
    Ok(see(&admin, "/events", &format!("Deleted event {id}.")))
}

/// Retry or delete the selected events, or every event matching the filters (after a
/// confirmation page that says how many).
async fn bulk_action(
    State(admin): State<Admin>,
    axum::Extension(viewer): axum::Extension<Viewer>,
    RawQuery(raw): RawQuery,
    body: Bytes,
) -> Result<Response> {
    let form = change(&admin, &viewer, &body)?;
    let whole_filter =
        Params::query(raw).get("scope") == Some("filter") || form.get("scope") == Some("filter");
    let action = form.get("action").unwrap_or("");
    if !matches!(action, "retry" | "delete") {
        return Err(Problem::BadRequest(format!("unknown action {action:?}")));
    }
    let filters = Filters::from_params(&form)?;
    let now = admin.now();
    let store = admin.store();
    let (ids, selection) = if whole_filter {
        let mut filter = filters
            .store_filters(bulk::PAGE)
            .into_iter()
            .next()
            .unwrap_or_default();
        if filters.q.is_some() {
            return Err(Problem::BadRequest(
                "Acting on every match of a search is not offered: filter by aggregate id or key instead."
                    .to_owned(),
            ));
        }
        filter.newest_first = false;
        if action == "retry" {
            filter = bulk::dead_only(Some(filter))?.unwrap_or_default();
        }
        let matching = bulk::count_matching(store, &filter, CONFIRM_CAP).await?;
        let confirmed = form.get("confirm").and_then(|n| n.parse::<u64>().ok());
        if confirmed != Some(matching) {
            // First the count; the confirmation carries it, so a changed count asks again.
            return Ok(pages::confirm(&admin, &viewer, action, &filters, matching).into_response());
        }
        (Vec::new(), Some(filter))
    } else {
        let ids = form
            .all("id")
            .map(event_id)
            .collect::<Result<Vec<EventId>>>()?;
        if ids.is_empty() {
            return Err(Problem::BadRequest("Select at least one event.".to_owned()));
        }
        (ids, None)
    };
    let done = match action {
        "retry" => {
            let attempts = attempts(&form)?;
            let outcome = bulk::retry(store, ids, selection, attempts, false, now).await?;
            format!("Retried {} event(s).", outcome.changed)
        }
        _ => {
            let outcome = bulk::delete(store, ids, selection, false, now).await?;
            format!(
                "Deleted {} event(s); {} skipped (held by a worker, or gone).",
                outcome.changed,
                outcome.matched - outcome.changed
            )
        }
    };
    tracing::info!(action, %done, "admin: bulk action");
    let back = filters.query(&[("done", done)]);
    Ok(Redirect::to(&admin.link(&format!("/events?{back}"))).into_response())
}

async fn pause(
    State(admin): State<Admin>,
    axum::Extension(viewer): axum::Extension<Viewer>,
    body: Bytes,
) -> Result<Response> {
    pause_or_resume(&admin, &viewer, &body, true).await
}

async fn resume(
    State(admin): State<Admin>,
    axum::Extension(viewer): axum::Extension<Viewer>,
    body: Bytes,
) -> Result<Response> {
    pause_or_resume(&admin, &viewer, &body, false).await
}

/// Pauses (or resumes) the event type the form names, then shows the overview.
async fn pause_or_resume(
    admin: &Admin,
    viewer: &Viewer,
    body: &Bytes,
    pause: bool,
) -> Result<Response> {
    let form = change(admin, viewer, body)?;
    let event_type = form.get("type").unwrap_or("");
    let now = admin.now();
    if pause {
        admin.store().pause_type(event_type, now).await?;
        tracing::info!(event_type, "admin: event type paused");
        Ok(see(admin, "/", &format!("Paused {event_type}.")))
    } else {
        admin.store().resume_type(event_type, now).await?;
        tracing::info!(event_type, "admin: event type resumed");
        Ok(see(admin, "/", &format!("Resumed {event_type}.")))
    }
}

async fn login_page(State(admin): State<Admin>) -> Response {
    if !admin.inner.sessions.uses_login() {
        return Redirect::to(&admin.link("/")).into_response();
    }
    pages::login(&admin, None).into_response()
}

async fn login(State(admin): State<Admin>, body: Bytes) -> Response {
    let form = Params::parse(&body);
    match admin.inner.sessions.login(form.get("token").unwrap_or("")) {
        Some(session) => {
            let cookie = format!(
                "{COOKIE}={session}; HttpOnly; SameSite=Strict; Path={}",
                if admin.config().base_path.is_empty() {
                    "/"
                } else {
                    &admin.config().base_path
                }
            );
            let mut response = Redirect::to(&admin.link("/")).into_response();
            if let Ok(value) = HeaderValue::from_str(&cookie) {
                response.headers_mut().insert(header::SET_COOKIE, value);
            }
            response
        }
        None => (
            StatusCode::UNAUTHORIZED,
            pages::login(&admin, Some("That token is not the admin's token.")),
        )
            .into_response(),
    }
}

async fn logout(
    State(admin): State<Admin>,
    axum::Extension(viewer): axum::Extension<Viewer>,
    request_headers: axum::http::HeaderMap,
    body: Bytes,
) -> Result<Response> {
    change(&admin, &viewer, &body)?;
    admin.inner.sessions.logout(&request_headers);
    Ok(Redirect::to(&admin.link("/login")).into_response())
}

async fn script() -> Response {
    (
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        include_str!("../assets/admin.js"),
    )
        .into_response()
}

async fn style() -> Response {
    (
        [(header::CONTENT_TYPE, "text/css; charset=utf-8")],
        include_str!("../assets/admin.css"),
    )
        .into_response()
}
