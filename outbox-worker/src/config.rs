//! Worker settings and the builder that validates them.

use std::sync::Arc;
use std::time::Duration;

use outbox_core::{
    Clock, FastRandom, LeaseId, RandomSource, RetryPolicy, SystemClock, ValidationError,
};

use crate::worker::Worker;

/// How a [`Worker`] claims, delivers and cleans up. Built through [`WorkerBuilder`].
#[derive(Clone, Debug)]
pub struct WorkerConfig {
    /// Name recorded as the lease holder (`locked_by`).
    pub worker_id: String,
    /// Events claimed per batch.
    pub batch_size: usize,
    /// Deliveries running at once.
    pub concurrency: usize,
    /// How long a claim holds its events before another worker may take them over. Renewed
    /// while deliveries run.
    pub lease: Duration,
    /// How often to look for due events when no wake-up comes.
    pub poll_interval: Duration,
    /// Longest a single delivery may take; then it counts as a retryable failure.
    pub delivery_timeout: Duration,
    /// Backoff between attempts.
    pub retry: RetryPolicy,
    /// At most this many attempts per event, whatever the event allows (each event still
    /// stops at its own `max_attempts` if that is fewer); `None` leaves it to the event.
    pub max_attempts: Option<u32>,
    /// Delivered events older than this are deleted by the retention sweep; `None` keeps them.
    pub retention: Option<Duration>,
    /// How often the retention sweep runs.
    pub retention_interval: Duration,
    /// On shutdown, how long in-flight deliveries may still finish before they are abandoned
    /// and their events released.
    pub shutdown_grace: Duration,
    /// Pause after a store error before trying again.
    pub error_backoff: Duration,
    /// How claimed events are held while they are delivered.
    pub claim_mode: ClaimMode,
}

/// How a worker holds the events it claims while delivering them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum ClaimMode {
    /// Under a lease written to each event (`in_flight`), renewed while deliveries run; the
    /// outcomes are written after. Two writes and two commits per batch besides the deliveries;
    /// nothing held open in between, so any delivery time is fine. Every store offers it.
    #[default]
    Lease,
    /// Under row locks held by a transaction left open while the batch is delivered; every
    /// outcome is written at the end, in one commit ([`outbox_core::locked`]). Half the writes
    /// of a lease, and a worker that dies gives its events back at once instead of when a
    /// lease runs out; in exchange each worker keeps a database connection and a transaction
    /// open for as long as its batch takes, which suits fast transports (brokers), not slow
    /// receivers. The `lease` setting bounds the hold: the store ends a batch not heard from
    /// for that long. An attempt cut short by a crash is not counted. The store must support
    /// it ([`OutboxStore::claim_locked`](outbox_core::OutboxStore::claim_locked)).
    Locked,
}

impl Default for WorkerConfig {
    fn default() -> Self {
        Self {
            worker_id: format!("worker-{}", LeaseId::new()),
            batch_size: 100,
            concurrency: 16,
            lease: Duration::from_secs(60),
            poll_interval: Duration::from_secs(1),
            delivery_timeout: Duration::from_secs(30),
            retry: RetryPolicy::default(),
            max_attempts: None,
            retention: Some(Duration::from_secs(7 * 24 * 3600)),
            retention_interval: Duration::from_secs(600),
            shutdown_grace: Duration::from_secs(10),
            error_backoff: Duration::from_secs(1),
            claim_mode: ClaimMode::Lease,
        }
    }
}

/// Upper bounds on a worker's settings: beyond these a setting is a mistake (a lease of a
/// year would keep a crashed worker's events from everyone), and they keep every sum of
/// durations far inside what clocks and timers can hold.
pub mod bounds {
    use std::time::Duration;

    /// Most events claimed per batch.
    pub const MAX_BATCH_SIZE: usize = 100_000;
    /// Most deliveries running at once.
    pub const MAX_CONCURRENCY: usize = 100_000;
    /// Longest lease: a crashed worker's events come back within this.
    pub const MAX_LEASE: Duration = Duration::from_secs(24 * 3600);
    /// Longest poll interval, shutdown grace, error backoff and sweep interval.
    pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);
    /// Longest retention of delivered events.
    pub const MAX_RETENTION: Duration = Duration::from_secs(100 * 366 * 24 * 3600);
}

impl WorkerConfig {
    /// Checks the settings fit together and lie within [`bounds`]; names the first field
    /// that does not.
    pub fn validate(&self) -> Result<(), ValidationError> {
        let too_big = |field: &'static str, limit: String| {
            Err(ValidationError::new(field, format!("at most {limit}")))
        };
        if self.batch_size > bounds::MAX_BATCH_SIZE {
            return too_big("batch_size", bounds::MAX_BATCH_SIZE.to_string());
        }
        if self.concurrency > bounds::MAX_CONCURRENCY {
            return too_big("concurrency", bounds::MAX_CONCURRENCY.to_string());
        }
        if self.lease > bounds::MAX_LEASE {
            return too_big("lease", format!("{:?}", bounds::MAX_LEASE));
        }
        for (field, d) in [
            ("poll_interval", self.poll_interval),
            ("shutdown_grace", self.shutdown_grace),
            ("error_backoff", self.error_backoff),
            ("retention_interval", self.retention_interval),
        ] {
            if d > bounds::MAX_INTERVAL {
                return too_big(field, format!("{:?}", bounds::MAX_INTERVAL));
            }
        }
        if self.retention.is_some_and(|r| r > bounds::MAX_RETENTION) {
            return too_big("retention", "100 years".into());
        }
        if self.worker_id.trim().is_empty() {
            return Err(ValidationError::new("worker_id", "must not be empty"));
        }
        if self.max_attempts == Some(0) {
            return Err(ValidationError::new("max_attempts", "must be at least 1"));
        }
        if self.batch_size == 0 {
            return Err(ValidationError::new("batch_size", "must be at least 1"));
        }
        if self.concurrency == 0 {
            return Err(ValidationError::new("concurrency", "must be at least 1"));
        }
        for (field, d) in [
            ("poll_interval", self.poll_interval),
            ("delivery_timeout", self.delivery_timeout),
            ("retention_interval", self.retention_interval),
        ] {
            if d.is_zero() {
                return Err(ValidationError::new(field, "must be longer than zero"));
            }
        }
        if self.lease <= self.delivery_timeout {
            return Err(ValidationError::new(
                "lease",
                format!(
                    "must be longer than delivery_timeout ({:?}), or a slow delivery outlives its lease",
                    self.delivery_timeout
                ),
            ));
        }
        Ok(())
    }
}

/// Builds a [`Worker`]; start with [`Worker::builder`].
#[must_use = "call build() to get the worker"]
pub struct WorkerBuilder<S, T> {
    pub(crate) store: S,
    pub(crate) transport: T,
    pub(crate) config: WorkerConfig,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) rng: Box<dyn RandomSource>,
}

impl<S, T> WorkerBuilder<S, T> {
    pub(crate) fn new(store: S, transport: T) -> Self {
        Self {
            store,
            transport,
            config: WorkerConfig::default(),
            clock: Arc::new(SystemClock),
            rng: Box::new(FastRandom::new()),
        }
    }

    /// Replaces every setting at once.
    pub fn config(mut self, config: WorkerConfig) -> Self {
        self.config = config;
        self
    }
    /// Name recorded as the lease holder.
    pub fn worker_id(mut self, id: impl Into<String>) -> Self {
        self.config.worker_id = id.into();
        self
    }
    /// Events claimed per batch (default 100).
    pub fn batch_size(mut self, n: usize) -> Self {
        self.config.batch_size = n;
        self
    }
    /// Deliveries running at once (default 16). They are futures of the worker's own task,
    /// waiting on I/O side by side on one thread; spread CPU-heavy delivery over cores with
    /// more workers.
    pub fn concurrency(mut self, n: usize) -> Self {
        self.config.concurrency = n;
        self
    }
    /// Lease length (default 60 s); must exceed the delivery timeout.
    pub fn lease(mut self, d: Duration) -> Self {
        self.config.lease = d;
        self
    }
    /// Poll interval when no wake-up comes (default 1 s).
    pub fn poll_interval(mut self, d: Duration) -> Self {
        self.config.poll_interval = d;
        self
    }
    /// Per-delivery timeout (default 30 s).
    pub fn delivery_timeout(mut self, d: Duration) -> Self {
        self.config.delivery_timeout = d;
        self
    }
    /// Backoff between attempts.
    pub fn retry_policy(mut self, policy: RetryPolicy) -> Self {
        self.config.retry = policy;
        self
    }
    /// At most this many attempts per event, whatever the event allows (default: the event's
    /// own `max_attempts`).
    pub fn max_attempts(mut self, attempts: Option<u32>) -> Self {
        self.config.max_attempts = attempts;
        self
    }
    /// Age after which delivered events are deleted (default 7 days); `None` keeps them.
    pub fn retention(mut self, keep_for: Option<Duration>) -> Self {
        self.config.retention = keep_for;
        self
    }
    /// How often the retention sweep runs (default 10 min).
    pub fn retention_interval(mut self, d: Duration) -> Self {
        self.config.retention_interval = d;
        self
    }
    /// Time in-flight deliveries get to finish on shutdown (default 10 s).
    pub fn shutdown_grace(mut self, d: Duration) -> Self {
        self.config.shutdown_grace = d;
        self
    }
    /// Pause after a store error (default 1 s).
    pub fn error_backoff(mut self, d: Duration) -> Self {
        self.config.error_backoff = d;
        self
    }
    /// How claimed events are held (default [`ClaimMode::Lease`]).
    pub fn claim_mode(mut self, mode: ClaimMode) -> Self {
        self.config.claim_mode = mode;
        self
    }
    /// The clock for stored timestamps (default: system time).
    pub fn clock(mut self, clock: Arc<dyn Clock>) -> Self {
        self.clock = clock;
        self
    }
    /// The random source for backoff jitter.
    pub fn random_source(mut self, rng: impl RandomSource + 'static) -> Self {
        self.rng = Box::new(rng);
        self
    }

    /// Validates the settings and returns the worker.
    pub fn build(self) -> Result<Worker<S, T>, ValidationError> {
        self.config.validate()?;
        Ok(Worker::from_builder(self))
    }
}
