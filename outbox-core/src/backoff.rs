//! Retry policy and backoff: a pure delay function with an injectable random source.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::error::ValidationError;
use crate::event::DEFAULT_MAX_ATTEMPTS;

/// How randomness spreads the retry delays of many events that failed together.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Jitter {
    /// The exact exponential delay `d`.
    None,
    /// Uniform in `[0, d]`: spreads retries the most.
    #[default]
    Full,
    /// Uniform in `[d/2, d]`: spreads retries but keeps at least half the delay.
    Equal,
}

/// A source of uniform random numbers in `[0, 1)`, injected so tests can fix the jitter.
pub trait RandomSource: Send {
    /// The next number, in `[0, 1)`.
    fn next_unit(&mut self) -> f64;
}

/// The default random source: a small, fast, non-cryptographic generator.
#[derive(Clone, Debug)]
pub struct FastRandom(fastrand::Rng);

impl FastRandom {
    /// Seeded from the operating system.
    pub fn new() -> Self {
        Self(fastrand::Rng::new())
    }
    /// Seeded deterministically.
    pub fn with_seed(seed: u64) -> Self {
        Self(fastrand::Rng::with_seed(seed))
    }
}

impl Default for FastRandom {
    fn default() -> Self {
        Self::new()
    }
}

impl RandomSource for FastRandom {
    fn next_unit(&mut self) -> f64 {
        self.0.f64()
    }
}

/// A random source that always answers the same number (clamped into `[0, 1)`), for tests.
#[derive(Clone, Copy, Debug)]
pub struct FixedRandom(pub f64);

impl RandomSource for FixedRandom {
    fn next_unit(&mut self) -> f64 {
        self.0.clamp(0.0, 1.0 - f64::EPSILON)
    }
}

/// When and how often a failed delivery is retried.
///
/// The delay before retry `n` (the `n`th failure, counting from 1) is
/// `min(cap, base × factorⁿ⁻¹)`, then spread by [`Jitter`].
///
/// ```
/// use std::time::Duration;
/// use outbox_core::{FixedRandom, Jitter, RetryPolicy};
///
/// let policy = RetryPolicy::new(Duration::from_millis(100), 2.0, Duration::from_secs(1), Jitter::None, 5)?;
/// let mut rng = FixedRandom(0.5);
/// assert_eq!(policy.delay(1, &mut rng), Duration::from_millis(100));
/// assert_eq!(policy.delay(3, &mut rng), Duration::from_millis(400));
/// assert_eq!(policy.delay(9, &mut rng), Duration::from_secs(1)); // capped
/// # Ok::<(), outbox_core::ValidationError>(())
/// ```
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RetryPolicy {
    base: Duration,
    factor: f64,
    cap: Duration,
    jitter: Jitter,
    max_attempts: u32,
}

impl Default for RetryPolicy {
    /// 1 s doubling up to 10 min, full jitter, [`DEFAULT_MAX_ATTEMPTS`] attempts.
    fn default() -> Self {
        Self {
            base: Duration::from_secs(1),
            factor: 2.0,
            cap: Duration::from_secs(600),
            jitter: Jitter::Full,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
        }
    }
}

impl RetryPolicy {
    /// Retries due at once, without jitter, [`DEFAULT_MAX_ATTEMPTS`] attempts: for tests, where
    /// `Worker::run_until_idle` should go on retrying until each event is delivered or dead.
    ///
    /// ```
    /// use outbox_core::{FixedRandom, RetryPolicy};
    /// assert_eq!(RetryPolicy::immediate().delay(3, &mut FixedRandom(0.5)), std::time::Duration::ZERO);
    /// ```
    pub fn immediate() -> Self {
        Self {
            base: Duration::ZERO,
            factor: 1.0,
            cap: Duration::ZERO,
            jitter: Jitter::None,
            max_attempts: DEFAULT_MAX_ATTEMPTS,
        }
    }

    /// Starts from [`RetryPolicy::default`] and changes what is named:
    ///
    /// ```
    /// use std::time::Duration;
    /// use outbox_core::{Jitter, RetryPolicy};
    ///
    /// let policy = RetryPolicy::builder()
    ///     .base(Duration::from_millis(200))
    ///     .cap(Duration::from_secs(30))
    ///     .jitter(Jitter::Equal)
    ///     .max_attempts(8)
    ///     .build()?;
    /// assert_eq!(policy.factor(), 2.0);
    /// # Ok::<(), outbox_core::ValidationError>(())
    /// ```
    pub fn builder() -> RetryPolicyBuilder {
        RetryPolicyBuilder(Self::default())
    }

    /// A validated policy: `factor` ≥ 1 and finite, `cap` ≥ `base`, `max_attempts` ≥ 1.
    pub fn new(
        base: Duration,
        factor: f64,
        cap: Duration,
        jitter: Jitter,
        max_attempts: u32,
    ) -> Result<Self, ValidationError> {
        if !factor.is_finite() || factor < 1.0 {
            return Err(ValidationError::new(
                "factor",
                "must be a finite number of at least 1",
            ));
        }
        if cap < base {
            return Err(ValidationError::new("cap", "must not be below base"));
        }
        if max_attempts == 0 {
            return Err(ValidationError::new("max_attempts", "must be at least 1"));
        }
        Ok(Self {
            base,
            factor,
            cap,
            jitter,
            max_attempts,
        })
    }

    /// Delay before the first retry.
    pub fn base(&self) -> Duration {
        self.base
    }
    /// Growth per failure.
    pub fn factor(&self) -> f64 {
        self.factor
    }
    /// Largest delay.
    pub fn cap(&self) -> Duration {
        self.cap
    }
    /// The jitter mode.
    pub fn jitter(&self) -> Jitter {
        self.jitter
    }
    /// The attempt budget this policy is meant for. An event's budget is fixed when it is
    /// emitted (its own `max_attempts`, or the store's default), and the worker obeys the
    /// event's: configure stores with this value (`MemoryStoreBuilder::default_max_attempts`,
    /// `PgConfig::with_default_max_attempts`) to keep the two in step.
    pub fn max_attempts(&self) -> u32 {
        self.max_attempts
    }

    /// The delay without jitter before retry `failures` (1 for the first failure).
    pub fn raw_delay(&self, failures: u32) -> Duration {
        let exponent = failures.saturating_sub(1).min(1024) as i32;
        let secs = self.base.as_secs_f64() * self.factor.powi(exponent);
        let cap = self.cap.as_secs_f64();
        if !secs.is_finite() || secs >= cap {
            self.cap
        } else {
            Duration::from_secs_f64(secs)
        }
    }

    /// The delay before retry `failures` (1 for the first failure), jittered with `rng`.
    ///
    /// Always within `[0, cap]`; with [`Jitter::None`] non-decreasing in `failures`; with
    /// [`Jitter::Full`] in `[0, raw]`, with [`Jitter::Equal`] in `[raw/2, raw]`.
    pub fn delay(&self, failures: u32, rng: &mut dyn RandomSource) -> Duration {
        let raw = self.raw_delay(failures);
        match self.jitter {
            Jitter::None => raw,
            Jitter::Full => raw.mul_f64(unit(rng)),
            Jitter::Equal => {
                let half = raw / 2;
                half + (raw - half).mul_f64(unit(rng))
            }
        }
    }
}

fn unit(rng: &mut dyn RandomSource) -> f64 {
    let u = rng.next_unit();
    if u.is_finite() {
        u.clamp(0.0, 1.0)
    } else {
        0.0
    }
}

/// Builds a [`RetryPolicy`] by named fields; see [`RetryPolicy::builder`].
#[derive(Clone, Debug)]
#[must_use = "call build() to get the policy"]
pub struct RetryPolicyBuilder(RetryPolicy);

impl RetryPolicyBuilder {
    /// Delay before the first retry.
    pub fn base(mut self, base: Duration) -> Self {
        self.0.base = base;
        self
    }
    /// Growth per failure (at least 1).
    pub fn factor(mut self, factor: f64) -> Self {
        self.0.factor = factor;
        self
    }
    /// Largest delay (at least `base`).
    pub fn cap(mut self, cap: Duration) -> Self {
        self.0.cap = cap;
        self
    }
    /// The jitter mode.
    pub fn jitter(mut self, jitter: Jitter) -> Self {
        self.0.jitter = jitter;
        self
    }
    /// The attempt budget (at least 1).
    pub fn max_attempts(mut self, attempts: u32) -> Self {
        self.0.max_attempts = attempts;
        self
    }
    /// The policy, or the first field out of range.
    pub fn build(self) -> Result<RetryPolicy, ValidationError> {
        let p = self.0;
        RetryPolicy::new(p.base, p.factor, p.cap, p.jitter, p.max_attempts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn policy(base_ms: u64, factor: f64, cap_ms: u64, jitter: Jitter) -> RetryPolicy {
        RetryPolicy::new(
            Duration::from_millis(base_ms),
            factor,
            Duration::from_millis(cap_ms.max(base_ms)),
            jitter,
            5,
        )
        .unwrap()
    }

    fn any_jitter() -> impl Strategy<Value = Jitter> {
        prop_oneof![Just(Jitter::None), Just(Jitter::Full), Just(Jitter::Equal)]
    }

    #[test]
    fn bad_policies_are_refused_naming_the_field() {
        let d = Duration::from_secs(1);
        let field = |r: Result<RetryPolicy, ValidationError>| r.unwrap_err().field();
        assert_eq!(
            field(RetryPolicy::new(d, 0.5, d, Jitter::None, 3)),
            "factor"
        );
        assert_eq!(
            field(RetryPolicy::new(d, f64::NAN, d, Jitter::None, 3)),
            "factor"
        );
        assert_eq!(
            field(RetryPolicy::new(d, 2.0, d / 2, Jitter::None, 3)),
            "cap"
        );
        assert_eq!(
            field(RetryPolicy::new(d, 2.0, d, Jitter::None, 0)),
            "max_attempts"
        );
    }

    #[test]
    fn equal_jitter_keeps_half() {
        let p = policy(1000, 2.0, 60_000, Jitter::Equal);
        assert_eq!(
            p.delay(2, &mut FixedRandom(0.0)),
            Duration::from_millis(1000)
        );
        assert_eq!(
            p.delay(2, &mut FixedRandom(0.5)),
            Duration::from_millis(1500)
        );
    }

    // Invariant: every delay lies in [0, cap] and inside its jitter mode's band around the raw delay.
    proptest! {
        #[test]
        fn delay_stays_within_its_band(
            base in 0u64..10_000, factor in 1.0f64..10.0, cap in 0u64..1_000_000,
            jitter in any_jitter(), failures in 0u32..200, r in 0.0f64..1.0,
        ) {
            let p = policy(base, factor, cap, jitter);
            let raw = p.raw_delay(failures);
            let d = p.delay(failures, &mut FixedRandom(r));
            prop_assert!(d <= p.cap());
            prop_assert!(raw <= p.cap());
            match jitter {
                Jitter::None => prop_assert_eq!(d, raw),
                Jitter::Full => prop_assert!(d <= raw),
                Jitter::Equal => prop_assert!(d >= raw / 2 && d <= raw),
            }
        }
    }

    // Invariant: without jitter, the delay never decreases as failures grow.
    proptest! {
        #[test]
        fn delay_without_jitter_never_decreases(
            base in 0u64..10_000, factor in 1.0f64..10.0, cap in 0u64..1_000_000, failures in 0u32..200,
        ) {
            let p = policy(base, factor, cap, Jitter::None);
            let mut rng = FixedRandom(0.0);
            prop_assert!(p.delay(failures, &mut rng) <= p.delay(failures + 1, &mut rng));
        }
    }
}
