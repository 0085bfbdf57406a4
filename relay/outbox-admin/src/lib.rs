//! A web admin for the outbox table, on any [`OutboxStore`]: an overview (counts, oldest
//! pending event, delivery rate, dead events grouped by error, paused types, parked keys),
//! a filtered, searchable, keyset-paged event list, each event in full with its attempt
//! history, and the operator's actions — retry, edit-and-replay, delete, on the selected events
//! or on everything matching a filter, and pausing or resuming an event type.
//!
//! Server-rendered HTML (maud) and one small script of its own for live refresh; no build step.
//!
//! **Safe by default.** [`Auth::ReadOnly`] (the default) serves every page and refuses every
//! change. With a token ([`Auth::Token`], entered once on a login page, then an HTTP-only,
//! same-site session cookie) or basic-auth credentials ([`Auth::Basic`]), every request must
//! carry them and every change must also carry the page's CSRF token. Pages and errors never
//! show a store's connection details: a store failure is logged and answered with a generic
//! message. Every query is bounded: keyset pages of at most [`MAX_PAGE`] events, counts capped
//! ([`AdminConfig::count_cap`]), bulk actions a page at a time ([`bulk`]).
//!
//! ```no_run
//! use std::sync::Arc;
//! use outbox_admin::{Admin, AdminConfig, Auth};
//! use outbox_memory::MemoryStore;
//!
//! # async fn run() -> std::io::Result<()> {
//! let store = MemoryStore::new();
//! let admin = Admin::new(Arc::new(store), AdminConfig {
//!     auth: Auth::Token("a long random secret".into()),
//!     ..AdminConfig::default()
//! });
//! tokio::spawn(admin.clone().run_sampler());
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8089").await?;
//! axum::serve(listener, admin.router()).await
//! # }
//! ```

pub mod bulk;

mod auth;
mod pages;
mod web;

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use chrono::{DateTime, TimeDelta, Utc};
use outbox_core::{Clock, OutboxStore, StoreError, SystemClock};

pub use auth::Auth;

/// Most events one page of the list shows.
pub const MAX_PAGE: usize = 200;

/// Delivery-rate samples kept (at the default interval, the last ten minutes).
const SAMPLES: usize = 60;

/// How the admin behaves.
#[derive(Clone, Debug)]
pub struct AdminConfig {
    /// Who may look and who may change (default [`Auth::ReadOnly`]).
    pub auth: Auth,
    /// The clock actions and samples are timed with (default: system time).
    pub clock: Arc<dyn Clock>,
    /// Time between delivery-rate samples ([`Admin::run_sampler`]; default 10 s).
    pub sample_every: Duration,
    /// Counts on the overview stop at this (shown as "at least"; default 100,000), so the page
    /// costs the same on ten million events as on ten thousand.
    pub count_cap: u64,
    /// Events per page of the list (default 50, at most [`MAX_PAGE`]).
    pub page_size: usize,
    /// The path the admin is mounted under (`""` at the root, `"/admin"` when nested there),
    /// for the links it writes.
    pub base_path: String,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            auth: Auth::ReadOnly,
            clock: Arc::new(SystemClock),
            sample_every: Duration::from_secs(10),
            count_cap: 100_000,
            page_size: 50,
            base_path: String::new(),
        }
    }
}

/// One delivery-rate sample: events delivered in the interval ending at `at`.
#[derive(Clone, Copy, Debug, PartialEq, serde::Serialize)]
pub struct Sample {
    /// End of the interval.
    pub at: DateTime<Utc>,
    /// Events delivered per second over the interval.
    pub per_second: f64,
}

/// The admin: its store, settings, sessions and rate samples. Cheap to clone.
#[derive(Clone)]
pub struct Admin {
    inner: Arc<Inner>,
}

struct Inner {
    store: Arc<dyn OutboxStore>,
    config: AdminConfig,
    sessions: auth::Sessions,
    samples: Mutex<Samples>,
}

#[derive(Default)]
struct Samples {
    kept: VecDeque<Sample>,
    last: Option<DateTime<Utc>>,
    /// Why no rate can be shown, if the store keeps no delivered events.
    unavailable: Option<String>,
}

impl Admin {
    /// An admin over `store`.
    pub fn new(store: Arc<dyn OutboxStore>, mut config: AdminConfig) -> Self {
        config.page_size = config.page_size.clamp(1, MAX_PAGE);
        config.base_path = config.base_path.trim_end_matches('/').to_owned();
        Self {
            inner: Arc::new(Inner {
                store,
                sessions: auth::Sessions::new(&config.auth),
                config,
                samples: Mutex::new(Samples::default()),
            }),
        }
    }

    /// The routes, to serve or to nest under [`AdminConfig::base_path`] in an application's
    /// own router (`Router::nest("/admin", admin.router())`, where the overview is `/admin`).
    pub fn router(&self) -> axum::Router {
        web::router(self.clone())
    }

    /// Takes one delivery-rate sample: the events delivered since the previous one.
    pub async fn sample(&self) -> Result<(), StoreError> {
        let now = self.inner.config.clock.now();
        let last = self.lock_samples().last;
        let Some(since) = last else {
            self.lock_samples().last = Some(now);
            return Ok(());
        };
        let delivered = match self.inner.store.delivered_since(since, now).await {
            Ok(n) => n,
            Err(StoreError::Unsupported { .. }) => {
                self.lock_samples().unavailable =
                    Some("this store does not report deliveries".to_owned());
                return Ok(());
            }
            Err(e) => return Err(e),
        };
        let seconds = (now - since).num_milliseconds().max(1) as f64 / 1000.0;
        let mut samples = self.lock_samples();
        samples.last = Some(now);
        samples.kept.push_back(Sample {
            at: now,
            per_second: delivered as f64 / seconds,
        });
        while samples.kept.len() > SAMPLES {
            samples.kept.pop_front();
        }
        Ok(())
    }

    /// Samples the delivery rate every [`AdminConfig::sample_every`], for ever (spawn it).
    /// A failed sample is logged and skipped.
    pub async fn run_sampler(self) {
        let mut tick = tokio::time::interval(self.inner.config.sample_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            if let Err(error) = self.sample().await {
                tracing::warn!(%error, "sampling the delivery rate failed");
            }
        }
    }

    /// The samples kept, oldest first, or why there are none.
    fn samples(&self) -> (Vec<Sample>, Option<String>) {
        let samples = self.lock_samples();
        (
            samples.kept.iter().copied().collect(),
            samples.unavailable.clone(),
        )
    }

    fn lock_samples(&self) -> std::sync::MutexGuard<'_, Samples> {
        self.inner
            .samples
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn store(&self) -> &dyn OutboxStore {
        self.inner.store.as_ref()
    }

    fn config(&self) -> &AdminConfig {
        &self.inner.config
    }

    fn now(&self) -> DateTime<Utc> {
        self.inner.config.clock.now()
    }

    /// `path` under the admin's base path (the root of a nested admin is the base path itself:
    /// `/admin`, not `/admin/`).
    fn link(&self, path: &str) -> String {
        let base = &self.inner.config.base_path;
        if path == "/" && !base.is_empty() {
            base.clone()
        } else {
            format!("{base}{path}")
        }
    }
}

/// A duration for people: `42 s`, `3 min`, `5 h 2 min`, `2 d 4 h`.
fn age(delta: TimeDelta) -> String {
    let s = delta.num_seconds().max(0);
    match s {
        0..60 => format!("{s} s"),
        60..3_600 => format!("{} min", s / 60),
        3_600..86_400 => format!("{} h {} min", s / 3_600, s % 3_600 / 60),
        _ => format!("{} d {} h", s / 86_400, s % 86_400 / 3_600),
    }
}

/// The README's examples, compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
