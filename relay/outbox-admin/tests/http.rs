//! Every route of the admin over HTTP (the router served in process), with the memory store:
//! pages, filters, actions, and the refusals — read-only, missing login, wrong credentials,
//! missing or wrong CSRF token — and that no store failure shows the store's details.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode, header};
use base64::Engine as _;
use chrono::{DateTime, Utc};
use http_body_util::BodyExt;
use outbox_admin::{Admin, AdminConfig, Auth};
use outbox_core::{
    Emit, EventId, Failure, ManualClock, NewEvent, OutboxStore, OutboxStoreExt, Status, StoreError,
};
use outbox_memory::MemoryStore;
use tower::ServiceExt;

struct App {
    store: MemoryStore,
    clock: ManualClock,
    admin: Admin,
    router: Router,
    /// Headers every request sends (a session cookie, basic credentials).
    auth: Vec<(header::HeaderName, String)>,
}

struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: String,
}

impl Answer {
    fn location(&self) -> &str {
        self.headers
            .get(header::LOCATION)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    }

    /// The page's CSRF token.
    fn csrf(&self) -> String {
        let marker = "name=\"csrf\" value=\"";
        let start = self.body.find(marker).expect("the page has a CSRF field") + marker.len();
        let end = self.body[start..].find('"').unwrap();
        self.body[start..start + end].to_owned()
    }
}

fn start() -> DateTime<Utc> {
    "2026-11-27T10:00:00Z".parse().unwrap()
}

fn app(auth: Auth) -> App {
    app_with(auth, 50)
}

fn app_with(auth: Auth, page_size: usize) -> App {
    let clock = ManualClock::new(start());
    let store = MemoryStore::builder()
        .clock(Arc::new(clock.clone()))
        .build();
    let admin = Admin::new(
        Arc::new(store.clone()),
        AdminConfig {
            auth,
            clock: Arc::new(clock.clone()),
            page_size,
            ..AdminConfig::default()
        },
    );
    let router = admin.router();
    App {
        store,
        clock,
        admin,
        router,
        auth: Vec::new(),
    }
}

impl App {
    async fn send(&self, method: &str, uri: &str, form: Option<&[(&str, &str)]>) -> Answer {
        let mut request = Request::builder().method(method).uri(uri);
        for (name, value) in &self.auth {
            request = request.header(name, value);
        }
        let body = match form {
            Some(pairs) => {
                request = request.header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
                let mut s = form_urlencoded::Serializer::new(String::new());
                for (k, v) in pairs {
                    s.append_pair(k, v);
                }
                Body::from(s.finish())
            }
            None => Body::empty(),
        };
        let response = self
            .router
            .clone()
            .oneshot(request.body(body).unwrap())
            .await
            .unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        Answer {
            status,
            headers,
            body: String::from_utf8(bytes.to_vec()).unwrap(),
        }
    }

    async fn get(&self, uri: &str) -> Answer {
        self.send("GET", uri, None).await
    }

    async fn post(&self, uri: &str, form: &[(&str, &str)]) -> Answer {
        self.send("POST", uri, Some(form)).await
    }

    async fn emit(&self, events: Vec<NewEvent>) -> Vec<EventId> {
        let mut tx = self.store.begin().await.unwrap();
        let mut ids = Vec::new();
        for e in events {
            ids.push(tx.emit(e).await.unwrap().id());
        }
        tx.commit().await.unwrap();
        ids
    }

    /// Emits `n` events of `event_type` and kills the first `dead` of them.
    async fn seed(&self, event_type: &str, n: usize, dead: usize) -> Vec<EventId> {
        let ids = self
            .emit(
                (0..n)
                    .map(|i| {
                        NewEvent::builder(event_type, "order", format!("o-{i}"))
                            .payload(
                                serde_json::json!({ "n": i, "note": "<script>alert(1)</script>" }),
                            )
                            .idempotency_key(format!("{event_type}-{i}"))
                            .build()
                            .unwrap()
                    })
                    .collect(),
            )
            .await;
        for id in ids.iter().take(dead) {
            self.kill(*id).await;
        }
        ids
    }

    /// Claims every due event, fails `id` for good and gives the others back.
    async fn kill(&self, id: EventId) {
        let now = self.clock_now();
        let (lease, events) = self
            .store
            .claim_for("w-1", 1_000, Duration::from_secs(30), now)
            .await
            .unwrap();
        let others: Vec<EventId> = events.iter().map(|e| e.id).filter(|e| *e != id).collect();
        assert_eq!(others.len() + 1, events.len(), "{id} was not due");
        self.store
            .nack(
                lease.id,
                &[Failure::permanent(id, "422 from sink: bad amount")],
                now,
            )
            .await
            .unwrap();
        self.store.release(lease.id, &others, now).await.unwrap();
    }

    fn clock_now(&self) -> DateTime<Utc> {
        outbox_core::Clock::now(&self.clock)
    }

    async fn status(&self, id: EventId) -> Status {
        self.store.fetch(id).await.unwrap().status()
    }

    /// Logs in to a token admin with `token`; keeps the session cookie.
    async fn log_in(&mut self, token: &str) {
        let answer = self.post("/login", &[("token", token)]).await;
        assert_eq!(answer.status, StatusCode::SEE_OTHER, "{}", answer.body);
        let cookie = answer
            .headers
            .get(header::SET_COOKIE)
            .unwrap()
            .to_str()
            .unwrap();
        assert!(
            cookie.contains("HttpOnly") && cookie.contains("SameSite=Strict"),
            "{cookie}"
        );
        let pair = cookie.split(';').next().unwrap().to_owned();
        self.auth = vec![(header::COOKIE, pair)];
    }
}

#[tokio::test]
async fn a_read_only_admin_shows_everything_and_changes_nothing() {
    let app = app(Auth::ReadOnly);
    let ids = app.seed("order.paid", 3, 1).await;
    let overview = app.get("/").await;
    assert_eq!(overview.status, StatusCode::OK);
    assert!(overview.body.contains("read-only"), "{}", overview.body);
    assert!(overview.body.contains("422 from sink: bad amount"));
    // Every answer carries the protective headers.
    let csp = overview
        .headers
        .get(header::CONTENT_SECURITY_POLICY)
        .unwrap();
    assert!(csp.to_str().unwrap().contains("script-src 'self'"));
    assert_eq!(
        overview.headers.get(header::X_FRAME_OPTIONS).unwrap(),
        "DENY"
    );

    let list = app.get("/events").await;
    assert_eq!(list.status, StatusCode::OK);
    for id in &ids {
        assert!(list.body.contains(&id.to_string()));
    }
    assert!(
        !list.body.contains("name=\"csrf\""),
        "no forms that change things"
    );
    let detail = app.get(&format!("/events/{}", ids[0])).await;
    assert_eq!(detail.status, StatusCode::OK);
    // Payloads are escaped, never run.
    assert!(
        detail
            .body
            .contains("&lt;script&gt;alert(1)&lt;/script&gt;")
    );
    assert!(!detail.body.contains("<script>alert(1)"));

    for (uri, form) in [
        (format!("/events/{}/retry", ids[0]), vec![("csrf", "x")]),
        (format!("/events/{}/delete", ids[1]), vec![]),
        ("/types/pause".to_owned(), vec![("type", "order.paid")]),
        (
            "/events/bulk".to_owned(),
            vec![("action", "delete"), ("id", "x")],
        ),
    ] {
        let refused = app.post(&uri, &form).await;
        assert_eq!(refused.status, StatusCode::FORBIDDEN, "{uri}");
        assert!(refused.body.contains("read-only"), "{}", refused.body);
    }
    assert_eq!(app.status(ids[0]).await, Status::Dead);
    assert_eq!(app.store.events().len(), 3);
    assert!(app.store.paused_types().await.unwrap().is_empty());

    let js = app.get("/assets/admin.js").await;
    assert_eq!(js.status, StatusCode::OK);
    assert!(
        js.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/javascript")
    );
    let css = app.get("/assets/admin.css").await;
    assert!(
        css.headers[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/css")
    );
    // A read-only admin has no login page.
    assert_eq!(app.get("/login").await.status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn a_token_admin_needs_a_login_and_every_change_needs_the_csrf_token() {
    let mut app = app(Auth::Token("correct horse".into()));
    let ids = app.seed("order.paid", 2, 1).await;
    let anonymous = app.get("/").await;
    assert_eq!(anonymous.status, StatusCode::SEE_OTHER);
    assert_eq!(anonymous.location(), "/login");
    assert_eq!(
        app.get(&format!("/events/{}", ids[0])).await.status,
        StatusCode::SEE_OTHER
    );
    let refused = app.post(&format!("/events/{}/retry", ids[0]), &[]).await;
    assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    assert_eq!(app.get("/login").await.status, StatusCode::OK);
    let wrong = app.post("/login", &[("token", "battery staple")]).await;
    assert_eq!(wrong.status, StatusCode::UNAUTHORIZED);
    assert!(wrong.headers.get(header::SET_COOKIE).is_none());

    app.log_in("correct horse").await;
    let detail = app.get(&format!("/events/{}", ids[0])).await;
    assert_eq!(detail.status, StatusCode::OK);
    let csrf = detail.csrf();
    let retry = format!("/events/{}/retry", ids[0]);
    let missing = app.post(&retry, &[("attempts", "2")]).await;
    assert_eq!(missing.status, StatusCode::FORBIDDEN);
    let wrong = app
        .post(&retry, &[("attempts", "2"), ("csrf", "0123")])
        .await;
    assert_eq!(wrong.status, StatusCode::FORBIDDEN);
    assert_eq!(app.status(ids[0]).await, Status::Dead);
    let done = app
        .post(&retry, &[("attempts", "2"), ("csrf", &csrf)])
        .await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
    assert!(
        done.location()
            .starts_with(&format!("/events/{}?done=", ids[0]))
    );
    let event = app.store.fetch(ids[0]).await.unwrap();
    assert_eq!(
        (event.status(), event.lifecycle.max_attempts),
        (Status::Pending, 3)
    );
    let bad = app
        .post(&retry, &[("attempts", "0"), ("csrf", &csrf)])
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);

    // Logging out ends the session.
    let out = app.post("/logout", &[("csrf", &csrf)]).await;
    assert_eq!(out.status, StatusCode::SEE_OTHER);
    assert_eq!(app.get("/").await.status, StatusCode::SEE_OTHER);
}

#[tokio::test]
async fn a_basic_auth_admin_refuses_wrong_credentials() {
    let mut app = app(Auth::Basic {
        user: "ops".into(),
        password: "pw".into(),
    });
    let ids = app.seed("order.paid", 1, 1).await;
    let none = app.get("/").await;
    assert_eq!(none.status, StatusCode::UNAUTHORIZED);
    assert!(
        none.headers[header::WWW_AUTHENTICATE]
            .to_str()
            .unwrap()
            .starts_with("Basic")
    );
    let basic = |credentials: &str| {
        format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode(credentials)
        )
    };
    app.auth = vec![(header::AUTHORIZATION, basic("ops:wrong"))];
    assert_eq!(app.get("/").await.status, StatusCode::UNAUTHORIZED);
    app.auth = vec![(header::AUTHORIZATION, basic("ops:pw"))];
    let page = app.get(&format!("/events/{}", ids[0])).await;
    assert_eq!(page.status, StatusCode::OK);
    let csrf = page.csrf();
    let delete = format!("/events/{}/delete", ids[0]);
    assert_eq!(app.post(&delete, &[]).await.status, StatusCode::FORBIDDEN);
    let done = app.post(&delete, &[("csrf", &csrf)]).await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
    assert!(app.store.get(ids[0]).await.unwrap().is_none());
}

/// A token admin, logged in; the CSRF token of its pages.
async fn writer() -> (App, String) {
    let mut app = app(Auth::Token("t".into()));
    app.log_in("t").await;
    let csrf = app.get("/").await.csrf();
    (app, csrf)
}

#[tokio::test]
async fn the_list_filters_searches_and_pages() {
    let mut app = app_with(Auth::ReadOnly, 2);
    let paid = app.seed("order.paid", 3, 1).await;
    let shipped = app.seed("order.shipped", 2, 0).await;
    let user = app.seed("user.created", 1, 0).await;
    app.auth.clear();

    let dead = app.get("/events?status=dead").await;
    assert!(dead.body.contains(&paid[0].to_string()));
    assert!(!dead.body.contains(&paid[1].to_string()));
    let prefix = app.get("/events?type_prefix=order.&order=oldest").await;
    assert!(
        prefix.body.contains(&paid[0].to_string()) && prefix.body.contains(&paid[1].to_string())
    );
    assert!(
        !prefix.body.contains(&paid[2].to_string()),
        "a page holds 2"
    );
    assert!(!prefix.body.contains(&user[0].to_string()));
    // The next page continues after the last event shown.
    let marker = "rel=\"next\" href=\"";
    let start = prefix.body.find(marker).expect("a next link") + marker.len();
    let next =
        prefix.body[start..start + prefix.body[start..].find('"').unwrap()].replace("&amp;", "&");
    let second = app.get(&next).await;
    assert!(
        second.body.contains(&paid[2].to_string()) && second.body.contains(&shipped[0].to_string())
    );
    assert!(!second.body.contains(&paid[0].to_string()));

    let exact = app.get("/events?type=order.shipped").await;
    assert!(
        exact.body.contains(&shipped[1].to_string()) && !exact.body.contains(&paid[1].to_string())
    );
    let by_aggregate = app
        .get("/events?aggregate_type=order&aggregate_id=o-2")
        .await;
    assert!(by_aggregate.body.contains(&paid[2].to_string()));
    assert!(!by_aggregate.body.contains(&paid[1].to_string()));
    // Search: an aggregate id or an idempotency key…
    let search = app.get("/events?q=order.shipped-1").await;
    assert!(search.body.contains(&shipped[1].to_string()));
    assert!(!search.body.contains(&shipped[0].to_string()));
    // …or an event id, which opens it.
    let found = app.get(&format!("/events?q={}", user[0])).await;
    assert_eq!(found.status, StatusCode::SEE_OTHER);
    assert_eq!(found.location(), format!("/events/{}", user[0]));
    let later = app.get("/events?from=2026-11-27T10:01").await;
    assert!(later.body.contains("No events match."));
    let earlier = app
        .get("/events?before=2026-11-27T10:01:00Z&type=user.created")
        .await;
    assert!(earlier.body.contains(&user[0].to_string()));

    assert_eq!(
        app.get("/events?status=lost").await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        app.get("/events?from=yesterday").await.status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        app.get("/events/not-an-id").await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.get(&format!("/events/{}", EventId::new())).await.status,
        StatusCode::NOT_FOUND
    );
    assert_eq!(
        app.get(&format!("/events?q={}", EventId::new()))
            .await
            .status,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn a_dead_event_is_edited_and_replayed_with_a_note() {
    let (app, csrf) = writer().await;
    let ids = app.seed("order.paid", 1, 1).await;
    let edit = format!("/events/{}/edit", ids[0]);
    let not_json = app
        .post(
            &edit,
            &[
                ("csrf", &csrf),
                ("payload", "{nope"),
                ("by", "ann"),
                ("note", "fix"),
            ],
        )
        .await;
    assert_eq!(not_json.status, StatusCode::BAD_REQUEST);
    assert!(not_json.body.contains("not JSON"));
    let no_note = app
        .post(
            &edit,
            &[("csrf", &csrf), ("payload", "{\"n\": 1}"), ("by", "ann")],
        )
        .await;
    assert_eq!(no_note.status, StatusCode::BAD_REQUEST);
    assert_eq!(app.status(ids[0]).await, Status::Dead);
    let done = app
        .post(
            &edit,
            &[
                ("csrf", &csrf),
                ("payload", "{\"n\": 0, \"amount\": 12}"),
                ("by", "ann"),
                ("note", "amount was missing"),
            ],
        )
        .await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
    let event = app.store.fetch(ids[0]).await.unwrap();
    assert_eq!(event.status(), Status::Pending);
    assert_eq!(event.payload, serde_json::json!({ "n": 0, "amount": 12 }));
    let page = app.get(&format!("/events/{}", ids[0])).await;
    assert!(page.body.contains("amount was missing") && page.body.contains("ann"));
    assert!(
        page.body.contains("422 from sink: bad amount"),
        "the failed attempt is listed"
    );
    assert!(page.body.contains("w-1"), "with its worker");
    // A pending event cannot be edited.
    let again = app
        .post(
            &edit,
            &[
                ("csrf", &csrf),
                ("payload", "{}"),
                ("by", "ann"),
                ("note", "again"),
            ],
        )
        .await;
    assert_eq!(again.status, StatusCode::CONFLICT);
}

#[tokio::test]
async fn bulk_actions_work_on_the_selection_or_on_every_match_after_a_confirmation() {
    let (app, csrf) = writer().await;
    let paid = app.seed("order.paid", 4, 3).await;
    let other = app.seed("user.created", 2, 1).await;

    let selected = app
        .post(
            "/events/bulk",
            &[
                ("csrf", &csrf),
                ("action", "retry"),
                ("id", &paid[0].to_string()),
                ("id", &paid[1].to_string()),
            ],
        )
        .await;
    assert_eq!(selected.status, StatusCode::SEE_OTHER, "{}", selected.body);
    assert!(
        selected.location().contains("done=Retried+2"),
        "{}",
        selected.location()
    );
    assert_eq!(app.status(paid[0]).await, Status::Pending);
    assert_eq!(app.status(paid[2]).await, Status::Dead);
    let nothing = app
        .post("/events/bulk", &[("csrf", &csrf), ("action", "retry")])
        .await;
    assert_eq!(nothing.status, StatusCode::BAD_REQUEST);

    // Every event matching the filter: first a count to confirm.
    let filter = [
        ("csrf", csrf.as_str()),
        ("action", "delete"),
        ("type", "order.paid"),
        ("scope", "filter"),
    ];
    let ask = app.post("/events/bulk", &filter).await;
    assert_eq!(ask.status, StatusCode::OK);
    assert!(
        ask.body.contains("<strong>4</strong> event(s) match"),
        "{}",
        ask.body
    );
    assert_eq!(
        app.store.events().len(),
        6,
        "nothing deleted before the confirmation"
    );
    // A confirmation of another count (the events changed since) asks again.
    let stale = [&filter[..], &[("confirm", "3")]].concat();
    assert_eq!(
        app.post("/events/bulk", &stale).await.status,
        StatusCode::OK
    );
    assert_eq!(app.store.events().len(), 6);
    let confirmed = [&filter[..], &[("confirm", "4")]].concat();
    let done = app.post("/events/bulk", &confirmed).await;
    assert_eq!(done.status, StatusCode::SEE_OTHER, "{}", done.body);
    assert!(done.location().contains("Deleted+4"), "{}", done.location());
    let left: Vec<EventId> = app.store.events().iter().map(|e| e.id).collect();
    assert_eq!(left, other);

    // Retrying every match retries the dead ones only.
    let retry = [
        ("csrf", csrf.as_str()),
        ("action", "retry"),
        ("type_prefix", "user."),
        ("scope", "filter"),
    ];
    let ask = app.post("/events/bulk", &retry).await;
    assert!(
        ask.body.contains("<strong>1</strong> event(s) match"),
        "{}",
        ask.body
    );
    let done = app
        .post("/events/bulk", &[&retry[..], &[("confirm", "1")]].concat())
        .await;
    assert_eq!(done.status, StatusCode::SEE_OTHER);
    assert_eq!(app.status(other[0]).await, Status::Pending);
    let wrong_status = [
        ("csrf", csrf.as_str()),
        ("action", "retry"),
        ("status", "pending"),
        ("scope", "filter"),
    ];
    assert_eq!(
        app.post("/events/bulk", &wrong_status).await.status,
        StatusCode::BAD_REQUEST
    );
}

#[tokio::test]
async fn pausing_a_type_from_the_overview_stops_its_claims_until_resumed() {
    let (app, csrf) = writer().await;
    let ids = app.seed("order.paid", 1, 0).await;
    let paused = app
        .post("/types/pause", &[("csrf", &csrf), ("type", "order.paid")])
        .await;
    assert_eq!(paused.status, StatusCode::SEE_OTHER, "{}", paused.body);
    let overview = app.get("/").await;
    assert!(overview.body.contains("order.paid") && overview.body.contains("Resume"));
    let now = app.clock_now();
    let (_, claimed) = app
        .store
        .claim_for("w", 10, Duration::from_secs(30), now)
        .await
        .unwrap();
    assert!(claimed.is_empty());
    let detail = app.get(&format!("/events/{}", ids[0])).await;
    assert!(detail.body.contains("its type is paused"));
    let bad = app
        .post("/types/pause", &[("csrf", &csrf), ("type", "Not A Type")])
        .await;
    assert_eq!(bad.status, StatusCode::BAD_REQUEST);
    let resumed = app
        .post("/types/resume", &[("csrf", &csrf), ("type", "order.paid")])
        .await;
    assert_eq!(resumed.status, StatusCode::SEE_OTHER);
    let (_, claimed) = app
        .store
        .claim_for("w", 10, Duration::from_secs(30), now)
        .await
        .unwrap();
    assert_eq!(claimed.len(), 1);
}

#[tokio::test]
async fn the_overview_counts_and_the_delivery_rate_refresh_as_json() {
    let app = app(Auth::ReadOnly);
    app.seed("order.paid", 5, 1).await;
    app.admin.sample().await.unwrap();
    let now = app.clock_now();
    let (lease, events) = app
        .store
        .claim_for("w", 3, Duration::from_secs(30), now)
        .await
        .unwrap();
    let ids: Vec<EventId> = events.iter().map(|e| e.id).collect();
    app.store.ack(lease.id, &ids, now).await.unwrap();
    app.clock.advance(Duration::from_secs(10));
    app.admin.sample().await.unwrap();
    let answer = app.get("/overview.json").await;
    assert_eq!(answer.status, StatusCode::OK);
    let o: serde_json::Value = serde_json::from_str(&answer.body).unwrap();
    assert_eq!(o["counts"]["delivered"], 3);
    assert_eq!(o["counts"]["dead"], 1);
    assert_eq!(o["counts"]["pending"], 1);
    assert_eq!(o["oldest_pending_age"], "10 s");
    assert_eq!(o["samples"][0]["per_second"], 0.3);
    // One sample: one bar, at the right end of a well-formed chart.
    let chart = o["chart"].as_str().unwrap();
    assert!(chart.contains("viewBox=\"0 0 600 136\""), "{chart}");
    assert_eq!(chart.matches("<rect").count(), 1, "{chart}");
    assert!(chart.contains("<rect x=\"590.0\""), "{chart}");
    let page = app.get("/").await;
    assert!(page.body.contains("peak 0.3/s"), "{}", page.body);
}

/// A store whose every call fails with an error naming its connection string.
struct Broken;

fn leak() -> StoreError {
    StoreError::Unavailable {
        source: "connecting to postgres://app:hunter2@db.internal/app failed".into(),
    }
}

#[async_trait::async_trait]
impl OutboxStore for Broken {
    async fn claim(
        &self,
        _: &outbox_core::Lease,
        _: usize,
        _: DateTime<Utc>,
    ) -> Result<Vec<outbox_core::OutboxEvent>, StoreError> {
        Err(leak())
    }
    async fn renew(
        &self,
        _: outbox_core::LeaseId,
        _: DateTime<Utc>,
        _: DateTime<Utc>,
    ) -> Result<u64, StoreError> {
        Err(leak())
    }
    async fn ack(
        &self,
        _: outbox_core::LeaseId,
        _: &[EventId],
        _: DateTime<Utc>,
    ) -> Result<Vec<outbox_core::Recorded>, StoreError> {
        Err(leak())
    }
    async fn nack(
        &self,
        _: outbox_core::LeaseId,
        _: &[Failure],
        _: DateTime<Utc>,
    ) -> Result<Vec<outbox_core::Recorded>, StoreError> {
        Err(leak())
    }
    async fn release(
        &self,
        _: outbox_core::LeaseId,
        _: &[EventId],
        _: DateTime<Utc>,
    ) -> Result<Vec<outbox_core::Recorded>, StoreError> {
        Err(leak())
    }
    async fn defer(
        &self,
        _: outbox_core::LeaseId,
        _: &[EventId],
        _: DateTime<Utc>,
        _: &str,
        _: DateTime<Utc>,
    ) -> Result<Vec<outbox_core::Recorded>, StoreError> {
        Err(leak())
    }
    async fn reclaim_expired(
        &self,
        _: DateTime<Utc>,
    ) -> Result<outbox_core::Reclaimed, StoreError> {
        Err(leak())
    }
    async fn purge_delivered(&self, _: DateTime<Utc>, _: DateTime<Utc>) -> Result<u64, StoreError> {
        Err(leak())
    }
    async fn get(&self, _: EventId) -> Result<Option<outbox_core::OutboxEvent>, StoreError> {
        Err(leak())
    }
    async fn list(
        &self,
        _: &outbox_core::EventFilter,
    ) -> Result<outbox_core::EventPage, StoreError> {
        Err(leak())
    }
    async fn count_by_status(&self) -> Result<outbox_core::StatusCounts, StoreError> {
        Err(leak())
    }
    async fn retry_dead(
        &self,
        _: EventId,
        _: u32,
        _: DateTime<Utc>,
    ) -> Result<outbox_core::OutboxEvent, StoreError> {
        Err(leak())
    }
}

#[tokio::test]
async fn a_failing_store_is_reported_without_its_details() {
    let admin = Admin::new(Arc::new(Broken), AdminConfig::default());
    let app = App {
        store: MemoryStore::new(),
        clock: ManualClock::new(start()),
        router: admin.router(),
        admin,
        auth: Vec::new(),
    };
    for uri in [
        "/",
        "/events",
        "/overview.json",
        &format!("/events/{}", EventId::new()),
    ] {
        let answer = app.get(uri).await;
        assert_eq!(answer.status, StatusCode::SERVICE_UNAVAILABLE, "{uri}");
        assert!(
            !answer.body.contains("hunter2") && !answer.body.contains("postgres://"),
            "{}",
            answer.body
        );
        assert!(answer.body.contains("log has the details"));
    }
}
