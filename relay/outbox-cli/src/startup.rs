//! Start-up with dependencies that are not there yet: each is tried again with a log line per
//! failed attempt naming the real error, until the start-up deadline.

use std::fmt::Display;
use std::future::Future;
use std::time::Duration;

use tokio::time::Instant;

/// First pause between attempts; it doubles up to [`MAX_PAUSE`].
const FIRST_PAUSE: Duration = Duration::from_millis(250);
/// Longest pause between attempts.
const MAX_PAUSE: Duration = Duration::from_secs(5);

/// How long start-up may wait for its dependencies.
#[derive(Clone, Copy, Debug)]
pub struct Startup {
    deadline: Instant,
    timeout: Duration,
}

impl Startup {
    /// Start-up that gives up `timeout` from now (zero: one attempt each).
    pub fn within(timeout: Duration) -> Self {
        let now = Instant::now();
        Self {
            deadline: now.checked_add(timeout).unwrap_or(now),
            timeout,
        }
    }

    /// Runs `attempt` until it succeeds or the deadline passes; logs each failure with `what`
    /// and the error. The last error is returned with how long was tried.
    pub async fn retry<T, E, F, Fut>(&self, what: &str, mut attempt: F) -> Result<T, String>
    where
        E: Display,
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let mut pause = FIRST_PAUSE;
        for tries in 1u32.. {
            let error = match attempt().await {
                Ok(value) => {
                    if tries > 1 {
                        tracing::info!(tries, "{what}: connected");
                    }
                    return Ok(value);
                }
                Err(error) => error.to_string(),
            };
            let now = Instant::now();
            if now >= self.deadline {
                return Err(if tries == 1 {
                    format!("{what}: {error}")
                } else {
                    format!(
                        "{what}: {error} (tried {tries} times for {}s; relay.startup_timeout_secs sets how long)",
                        self.timeout.as_secs()
                    )
                });
            }
            let wait = pause.min(self.deadline - now);
            tracing::warn!(attempt = tries, retry_in_ms = wait.as_millis() as u64, %error, "{what}: not reachable yet");
            tokio::time::sleep(wait).await;
            pause = (pause * 2).min(MAX_PAUSE);
        }
        Err(format!("{what}: gave up"))
    }
}
