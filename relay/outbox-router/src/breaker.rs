//! A circuit breaker in front of one destination.

use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use async_trait::async_trait;
use outbox_core::{DeliveryError, OutboxEvent, Transport, ValidationError};
use tokio::time::Instant;

/// How every message of a paused route begins (`route paused: <name>: …`); it is kept as the
/// deferred events' last error, so `outbox status` can say which routes hold events back.
pub const PAUSED_PREFIX: &str = "route paused: ";

/// Counter: times a route was paused, by `route`.
pub const PAUSES: &str = "outbox_route_pauses_total";
/// Gauge: 1 while a route is paused, by `route`.
pub const PAUSED: &str = "outbox_route_paused";

/// When a [`Breaker`] opens and how long it stays open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BreakerConfig {
    /// Consecutive retryable failures (timeouts included) that pause the destination.
    pub failures: u32,
    /// The first pause; it doubles each time a trial delivery fails.
    pub pause: Duration,
    /// The longest pause.
    pub max_pause: Duration,
    /// Longest a delivery may take before the breaker counts it as failed (retryable); set it
    /// a little below the worker's delivery timeout so that a destination that hangs rather
    /// than refuses is seen, and a hanging trial is deferred rather than charged an attempt.
    /// `None`: no limit of its own.
    pub timeout: Option<Duration>,
}

impl Default for BreakerConfig {
    /// 5 failures in a row; 1 s doubling to 60 s.
    fn default() -> Self {
        Self {
            failures: 5,
            pause: Duration::from_secs(1),
            max_pause: Duration::from_secs(60),
            timeout: None,
        }
    }
}

impl BreakerConfig {
    /// Checks the settings: at least one failure, a pause of at least 1 ms, `max_pause` ≥
    /// `pause` and at most an hour.
    pub fn validate(&self) -> Result<(), ValidationError> {
        if self.failures == 0 {
            return Err(ValidationError::new("failures", "must be at least 1"));
        }
        if self.pause < Duration::from_millis(1) {
            return Err(ValidationError::new("pause", "must be at least 1 ms"));
        }
        if self.max_pause < self.pause || self.max_pause > Duration::from_secs(3600) {
            return Err(ValidationError::new(
                "max_pause",
                "must be at least the pause and at most 1 h",
            ));
        }
        Ok(())
    }
}

#[derive(Debug)]
struct State {
    consecutive: u32,
    /// Open until then; `None` when closed.
    open_until: Option<Instant>,
    /// The pause the next opening gets.
    pause: Duration,
    /// A trial delivery is running (half-open): others wait for its verdict.
    trial: bool,
    last_error: String,
}

/// A circuit breaker around a transport: after `failures` consecutive retryable failures the
/// destination counts as down and is **paused**: deliveries are not tried but answered at once
/// with [`DeliveryError::Unavailable`], which the worker turns into a deferral that spends no
/// attempt (so an outage of any length kills no event). When the pause is over one trial
/// delivery goes through: success closes the breaker; failure pauses again for twice as long
/// (up to `max_pause`) and is answered as `Unavailable` too, so the trial event spends no
/// attempt either. A permanent failure means the destination answered, so it counts as a
/// sign of life.
///
/// A delivery abandoned before it answered (the worker's delivery timeout) counts as a
/// retryable failure. Pauses are logged, counted in [`PAUSES`] and shown by the [`PAUSED`]
/// gauge through the `metrics` facade, labelled with the breaker's name.
///
/// ```
/// use outbox_router::{Breaker, BreakerConfig};
/// use outbox_memory::RecordingTransport;
///
/// let guarded = Breaker::new("billing", RecordingTransport::new(), BreakerConfig::default())?;
/// # Ok::<(), outbox_core::ValidationError>(())
/// ```
pub struct Breaker<T> {
    name: Arc<str>,
    inner: T,
    config: BreakerConfig,
    state: Mutex<State>,
}

impl<T> std::fmt::Debug for Breaker<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Breaker")
            .field("name", &self.name)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// What the breaker lets a delivery do.
enum Admission {
    Go { trial: bool },
    Paused { retry_in: Duration, message: String },
}

impl<T> Breaker<T> {
    /// Guards `inner`; `name` labels its logs and metrics (the route's pattern, say).
    pub fn new(
        name: impl Into<Arc<str>>,
        inner: T,
        config: BreakerConfig,
    ) -> Result<Self, ValidationError> {
        config.validate()?;
        let name = name.into();
        metrics::gauge!(PAUSED, "route" => name.to_string()).set(0.0);
        Ok(Self {
            name,
            inner,
            state: Mutex::new(State {
                consecutive: 0,
                open_until: None,
                pause: config.pause,
                trial: false,
                last_error: String::new(),
            }),
            config,
        })
    }

    /// Whether deliveries are paused now.
    pub fn is_paused(&self) -> bool {
        let state = self.lock();
        state.open_until.is_some_and(|until| Instant::now() < until) || state.trial
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn admit(&self) -> Admission {
        let mut state = self.lock();
        let Some(until) = state.open_until else {
            return Admission::Go { trial: false };
        };
        let now = Instant::now();
        let paused = |retry_in| Admission::Paused {
            retry_in,
            message: format!(
                "{PAUSED_PREFIX}{}: {} consecutive failures (last: {}); not tried",
                self.name, state.consecutive, state.last_error
            ),
        };
        if now < until {
            return paused(until - now);
        }
        if state.trial {
            // Someone else's trial is deciding; ask again after a short while.
            return paused(self.config.pause);
        }
        state.trial = true;
        Admission::Go { trial: true }
    }

    /// Records a delivery's verdict: `Some(error)` for a retryable failure. Returns the pause
    /// when this verdict paused the destination.
    fn verdict(&self, trial: bool, failure: Option<&str>) -> Option<Duration> {
        let mut state = self.lock();
        if trial {
            state.trial = false;
        }
        match failure {
            None => {
                if state.open_until.take().is_some() {
                    tracing::info!(route = %self.name, "destination answers again; deliveries resume");
                    metrics::gauge!(PAUSED, "route" => self.name.to_string()).set(0.0);
                }
                state.consecutive = 0;
                state.pause = self.config.pause;
                None
            }
            Some(error) => {
                state.consecutive = state.consecutive.saturating_add(1);
                state.last_error = error.to_owned();
                let reopen = trial && state.open_until.is_some();
                if reopen
                    || (state.open_until.is_none() && state.consecutive >= self.config.failures)
                {
                    let pause = state.pause;
                    state.open_until = Instant::now().checked_add(pause);
                    state.pause = (pause * 2).min(self.config.max_pause);
                    tracing::warn!(
                        route = %self.name,
                        failures = state.consecutive,
                        pause_ms = pause.as_millis() as u64,
                        error,
                        "destination unavailable; deliveries paused, no attempts spent meanwhile"
                    );
                    metrics::counter!(PAUSES, "route" => self.name.to_string()).increment(1);
                    metrics::gauge!(PAUSED, "route" => self.name.to_string()).set(1.0);
                    Some(pause)
                } else {
                    None
                }
            }
        }
    }
}

/// Records a failure if the delivery is dropped before it answered.
struct Pending<'a, T> {
    breaker: &'a Breaker<T>,
    trial: bool,
    done: bool,
}

impl<T> Drop for Pending<'_, T> {
    fn drop(&mut self) {
        if !self.done {
            self.breaker
                .verdict(self.trial, Some("the delivery was abandoned (timed out)"));
        }
    }
}

#[async_trait]
impl<T: Transport> Transport for Breaker<T> {
    async fn deliver(&self, event: &OutboxEvent) -> Result<(), DeliveryError> {
        let trial = match self.admit() {
            Admission::Go { trial } => trial,
            Admission::Paused { retry_in, message } => {
                return Err(DeliveryError::unavailable(message, retry_in));
            }
        };
        let mut pending = Pending {
            breaker: self,
            trial,
            done: false,
        };
        let result = match self.config.timeout {
            None => self.inner.deliver(event).await,
            Some(limit) => match tokio::time::timeout(limit, self.inner.deliver(event)).await {
                Ok(result) => result,
                Err(_) => Err(DeliveryError::retryable(format!(
                    "no answer within {limit:?}"
                ))),
            },
        };
        pending.done = true;
        match result {
            Err(e) if e.is_retryable() && !e.is_unavailable() => {
                let paused = self.verdict(trial, Some(&e.to_string()));
                match paused {
                    // A failed trial only confirms the outage: the event is deferred like the
                    // ones that were not tried, so an outage of any length costs each event at
                    // most the failures that opened the breaker.
                    Some(pause) if trial => Err(DeliveryError::unavailable(
                        format!("{PAUSED_PREFIX}{}: still unavailable: {e}", self.name),
                        pause,
                    )),
                    _ => Err(e),
                }
            }
            other => {
                self.verdict(trial, None);
                other
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use outbox_core::{EventId, NewEvent};
    use outbox_memory::{RecordingTransport, Scripted};

    fn event() -> OutboxEvent {
        NewEvent::builder("t", "a", "1")
            .build()
            .unwrap()
            .into_event(EventId::new(), chrono::Utc::now(), 3)
    }

    fn breaker(transport: &RecordingTransport) -> Breaker<RecordingTransport> {
        Breaker::new(
            "r",
            transport.clone(),
            BreakerConfig {
                failures: 3,
                pause: Duration::from_secs(1),
                max_pause: Duration::from_secs(4),
                timeout: None,
            },
        )
        .unwrap()
    }

    /// Three failures in a row pause the destination: the next deliveries are not tried and
    /// say for how long; after the pause one trial goes through, and its failure doubles the
    /// pause; its success resumes deliveries.
    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_and_tries_again_after_the_pause() {
        let transport = RecordingTransport::new();
        let b = breaker(&transport);
        transport.script(vec![Scripted::Retryable; 4]);
        for _ in 0..3 {
            assert!(!b.deliver(&event()).await.unwrap_err().is_unavailable());
        }
        let paused = b.deliver(&event()).await.unwrap_err();
        assert!(paused.is_unavailable(), "{paused}");
        assert_eq!(paused.retry_after_hint(), Some(Duration::from_secs(1)));
        assert_eq!(
            transport.attempts().len(),
            3,
            "the paused delivery was not tried"
        );

        tokio::time::advance(Duration::from_secs(1)).await;
        // The trial is tried and fails: it is deferred too (no attempt spent), and the route is
        // paused again, twice as long.
        let trial = b.deliver(&event()).await.unwrap_err();
        assert!(trial.is_unavailable(), "{trial}");
        assert_eq!(trial.retry_after_hint(), Some(Duration::from_secs(2)));
        assert_eq!(transport.attempts().len(), 4, "the trial was tried");
        let paused = b.deliver(&event()).await.unwrap_err();
        assert_eq!(paused.retry_after_hint(), Some(Duration::from_secs(2)));

        tokio::time::advance(Duration::from_secs(2)).await;
        b.deliver(&event()).await.unwrap(); // the trial succeeds
        assert!(!b.is_paused());
        b.deliver(&event()).await.unwrap();
        assert_eq!(transport.delivered().len(), 2);
    }

    /// A permanent failure is an answer: it does not count towards a pause.
    #[tokio::test(start_paused = true)]
    async fn permanent_failures_do_not_pause() {
        let transport = RecordingTransport::new();
        let b = breaker(&transport);
        transport.script([
            Scripted::Retryable,
            Scripted::Retryable,
            Scripted::Permanent,
            Scripted::Retryable,
            Scripted::Retryable,
        ]);
        for _ in 0..5 {
            assert!(!b.deliver(&event()).await.unwrap_err().is_unavailable());
        }
        assert!(!b.is_paused());
    }

    /// A delivery abandoned by the worker's timeout counts as a failure.
    #[tokio::test(start_paused = true)]
    async fn abandoned_deliveries_count_as_failures() {
        let transport = RecordingTransport::new();
        let b = breaker(&transport);
        transport.script(vec![Scripted::DeliverAfter(Duration::from_secs(60)); 3]);
        for _ in 0..3 {
            let timed_out = tokio::time::timeout(Duration::from_secs(1), b.deliver(&event())).await;
            assert!(timed_out.is_err());
        }
        assert!(b.is_paused());
    }

    /// With a timeout of its own, a hanging trial is answered as unavailable (deferred, no
    /// attempt spent) before the worker's timeout would charge it one.
    #[tokio::test(start_paused = true)]
    async fn a_hanging_trial_is_deferred() {
        let transport = RecordingTransport::new();
        let b = Breaker::new(
            "r",
            transport.clone(),
            BreakerConfig {
                failures: 1,
                pause: Duration::from_secs(1),
                max_pause: Duration::from_secs(4),
                timeout: Some(Duration::from_secs(2)),
            },
        )
        .unwrap();
        transport.script(vec![Scripted::DeliverAfter(Duration::from_secs(60)); 2]);
        let first = b.deliver(&event()).await.unwrap_err();
        assert!(first.is_retryable() && !first.is_unavailable(), "{first}");
        tokio::time::advance(Duration::from_secs(1)).await;
        let trial = b.deliver(&event()).await.unwrap_err();
        assert!(trial.is_unavailable(), "{trial}");
    }
}
