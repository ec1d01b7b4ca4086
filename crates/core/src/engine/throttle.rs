//! Load control: bounded retries with backoff, and rate limits on templates and bytes.

use std::future::Future;
use std::time::Duration;

use tokio::sync::Mutex;
use tokio::time::Instant;

use crate::error::{Error, Result};

/// How failed backend operations are retried.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in total, including the first (at least 1).
    pub max_attempts: u32,
    /// Upper bound of the first backoff; doubled after each failure.
    pub initial_backoff: Duration,
    /// Upper bound of any backoff.
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 4,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
        }
    }
}

impl RetryPolicy {
    /// The fewest and most attempts accepted by [`Self::validate`].
    pub const MAX_ATTEMPTS_RANGE: (u32, u32) = (1, 1000);
    /// The longest backoff accepted by [`Self::validate`].
    pub const MAX_BACKOFF: Duration = Duration::from_secs(3600);

    /// Checks the policy, naming the setting out of range: attempts from 1 to 1000, backoffs
    /// up to 1 h with the first no longer than the bound.
    pub fn validate(&self) -> Result<()> {
        let (min, max) = Self::MAX_ATTEMPTS_RANGE;
        if !(min..=max).contains(&self.max_attempts) {
            return Err(invalid(format!(
                "RetryPolicy.max_attempts is {}; it must be from {min} to {max}",
                self.max_attempts
            )));
        }
        if self.max_backoff > Self::MAX_BACKOFF || self.initial_backoff > self.max_backoff {
            return Err(invalid(format!(
                "RetryPolicy backoffs are {:?} then up to {:?}; the first must not exceed the \
                 bound, which must be at most {:?}",
                self.initial_backoff,
                self.max_backoff,
                Self::MAX_BACKOFF
            )));
        }
        Ok(())
    }

    /// Runs `op` until it succeeds, fails permanently, or attempts run out. Temporary errors are
    /// retried after an exponential backoff with full jitter. Returns the result and the number
    /// of attempts made.
    pub async fn run<T, F, Fut>(&self, mut op: F) -> (Result<T>, u32)
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T>>,
    {
        let max = self.max_attempts.max(1);
        let mut attempt = 0;
        loop {
            attempt = u32::saturating_add(attempt, 1);
            match op().await {
                Ok(v) => return (Ok(v), attempt),
                Err(e) if e.is_temporary() && attempt < max => {
                    let delay = self.backoff(attempt);
                    tracing::debug!(error = %e, attempt, ?delay, "temporary error; retrying");
                    metrics::counter!("tcache_retries_total").increment(1);
                    tokio::time::sleep(delay).await;
                }
                Err(e) => return (Err(e), attempt),
            }
        }
    }

    /// The jittered delay after failed attempt number `attempt` (1-based).
    pub fn backoff(&self, attempt: u32) -> Duration {
        let exp = self
            .initial_backoff
            .saturating_mul(1u32 << attempt.saturating_sub(1).min(20))
            .min(self.max_backoff);
        exp.mul_f64(fastrand::f64())
    }
}

/// A token bucket that lets a request go into debt, so items larger than the bucket still pass
/// (and the next ones wait for the debt to be paid). Its burst is a tenth of a second's worth
/// (at least one unit), so the load stays smooth from the first request.
#[derive(Debug)]
pub struct RateLimiter {
    per_second: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl RateLimiter {
    /// A limiter admitting `per_second` units per second on average; must be finite and
    /// greater than 0.
    pub fn new(per_second: f64) -> Result<Self> {
        check_rate("rate limit", per_second)?;
        let burst = (per_second / 10.0).max(1.0);
        Ok(RateLimiter {
            per_second,
            burst,
            state: Mutex::new((burst, Instant::now())),
        })
    }

    /// Waits until `units` may pass.
    pub async fn acquire(&self, units: f64) {
        let wait = {
            let mut s = self.state.lock().await;
            let now = Instant::now();
            let refill = now.duration_since(s.1).as_secs_f64() * self.per_second;
            s.0 = (s.0 + refill).min(self.burst) - units;
            s.1 = now;
            if s.0 < 0.0 {
                // A tiny rate and a large debt may exceed any `Duration`: wait "forever".
                Duration::try_from_secs_f64(-s.0 / self.per_second).unwrap_or(Duration::MAX)
            } else {
                Duration::ZERO
            }
        };
        if !wait.is_zero() {
            tokio::time::sleep(wait).await;
        }
    }
}

/// Limits on the load a run puts on the backend.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Throttle {
    /// Batches in flight at once (at least 1).
    pub concurrency: usize,
    /// Templates per second, if limited.
    pub templates_per_second: Option<f64>,
    /// Bytes per second, if limited.
    pub bytes_per_second: Option<f64>,
    /// Templates per batch.
    pub batch_max_templates: usize,
    /// Encoded bytes per batch (a single larger template still forms its own batch).
    pub batch_max_bytes: usize,
}

impl Default for Throttle {
    fn default() -> Self {
        Throttle {
            concurrency: 4,
            templates_per_second: None,
            bytes_per_second: None,
            batch_max_templates: 256,
            batch_max_bytes: 4 * 1024 * 1024,
        }
    }
}

impl Throttle {
    /// The fewest and most batches in flight accepted by [`Self::validate`].
    pub const CONCURRENCY_RANGE: (usize, usize) = (1, 65_536);

    /// Checks the limits, naming the setting out of range: concurrency from 1 to 65536, batch
    /// sizes at least 1, rates finite and greater than 0. The engines call it before a run.
    pub fn validate(&self) -> Result<()> {
        let (min, max) = Self::CONCURRENCY_RANGE;
        if !(min..=max).contains(&self.concurrency) {
            return Err(invalid(format!(
                "Throttle.concurrency is {}; it must be from {min} to {max}",
                self.concurrency
            )));
        }
        for (name, value) in [
            ("Throttle.batch_max_templates", self.batch_max_templates),
            ("Throttle.batch_max_bytes", self.batch_max_bytes),
        ] {
            if value == 0 {
                return Err(invalid(format!("{name} is 0; it must be at least 1")));
            }
        }
        for (name, rate) in [
            ("Throttle.templates_per_second", self.templates_per_second),
            ("Throttle.bytes_per_second", self.bytes_per_second),
        ] {
            if let Some(r) = rate {
                check_rate(name, r)?;
            }
        }
        Ok(())
    }
}

/// A [`crate::ErrorKind::ConfigInvalid`] error.
fn invalid(message: String) -> Error {
    Error::new(crate::ErrorKind::ConfigInvalid, message)
}

/// Checks that rate `value` of setting `name` is finite and greater than 0.
fn check_rate(name: &str, value: f64) -> Result<()> {
    if value.is_finite() && value > 0.0 {
        Ok(())
    } else {
        Err(invalid(format!(
            "{name} is {value}; it must be a finite number greater than 0"
        )))
    }
}

/// The live limiters built from a [`Throttle`].
#[derive(Debug)]
pub(crate) struct Limiters {
    templates: Option<RateLimiter>,
    bytes: Option<RateLimiter>,
}

impl Limiters {
    pub(crate) fn new(t: &Throttle) -> Result<Self> {
        t.validate()?;
        Ok(Limiters {
            templates: t.templates_per_second.map(RateLimiter::new).transpose()?,
            bytes: t.bytes_per_second.map(RateLimiter::new).transpose()?,
        })
    }

    pub(crate) async fn admit(&self, templates: usize, bytes: usize) {
        if let Some(l) = &self.templates {
            l.acquire(templates as f64).await;
        }
        if let Some(l) = &self.bytes {
            l.acquire(bytes as f64).await;
        }
    }
}

/// Splits items into batches of at most `max_items` items and about `max_bytes` bytes.
pub(crate) fn batches<T>(
    items: Vec<T>,
    max_items: usize,
    max_bytes: usize,
    size: impl Fn(&T) -> usize,
) -> Vec<Vec<T>> {
    let ranges = batch_ranges(items.len(), max_items, max_bytes, |i| size(&items[i]));
    let mut items = items.into_iter();
    ranges
        .into_iter()
        .map(|r| items.by_ref().take(r.len()).collect())
        .collect()
}

/// Splits `len` items, item `i` weighing `size(i)` bytes, into consecutive ranges of at most
/// `max_items` items and about `max_bytes` bytes (a heavier item forms its own range).
pub(crate) fn batch_ranges(
    len: usize,
    max_items: usize,
    max_bytes: usize,
    size: impl Fn(usize) -> usize,
) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut bytes) = (0, 0usize);
    for i in 0..len {
        let s = size(i);
        if i > start && (i - start >= max_items || bytes.saturating_add(s) > max_bytes) {
            out.push(start..i);
            (start, bytes) = (i, 0);
        }
        bytes = bytes.saturating_add(s);
    }
    if len > start {
        out.push(start..len);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ErrorKind;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[tokio::test(start_paused = true)]
    async fn retries_only_temporary_errors_up_to_the_bound() {
        let p = RetryPolicy {
            max_attempts: 3,
            ..Default::default()
        };
        let calls = AtomicU32::new(0);
        let (r, n) = p
            .run(|| async {
                calls.fetch_add(1, Ordering::SeqCst);
                Err::<(), _>(Error::new(ErrorKind::Unavailable, "down"))
            })
            .await;
        assert!(r.is_err());
        assert_eq!((n, calls.load(Ordering::SeqCst)), (3, 3));

        let (r, n) = p
            .run(|| async { Err::<(), _>(Error::new(ErrorKind::Corrupt, "bad")) })
            .await;
        assert!(r.is_err());
        assert_eq!(n, 1);

        let calls = AtomicU32::new(0);
        let (r, n) = p
            .run(|| async {
                if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                    Err(Error::new(ErrorKind::Unavailable, "blip"))
                } else {
                    Ok(7)
                }
            })
            .await;
        assert_eq!((r.unwrap(), n), (7, 2));
    }

    #[test]
    fn backoff_is_bounded_and_grows() {
        let p = RetryPolicy {
            max_attempts: 10,
            initial_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_millis(800),
        };
        for attempt in 1..30 {
            assert!(p.backoff(attempt) <= Duration::from_millis(800));
        }
        assert!(p.backoff(1) <= Duration::from_millis(100));
    }

    #[tokio::test(start_paused = true)]
    async fn rate_limiter_spaces_requests() {
        let l = RateLimiter::new(10.0).unwrap();
        let start = Instant::now();
        for _ in 0..30 {
            l.acquire(1.0).await;
        }
        let took = start.elapsed();
        // A burst of one, then 29 more at ten a second.
        assert!(
            took >= Duration::from_millis(2850) && took <= Duration::from_millis(2950),
            "{took:?}"
        );
        assert!(RateLimiter::new(0.0).is_err());
    }

    #[tokio::test(start_paused = true)]
    async fn a_tiny_rate_waits_instead_of_panicking() {
        let l = RateLimiter::new(1e-300).unwrap();
        l.acquire(1.0).await;
        let waited = tokio::time::timeout(Duration::from_secs(3600), l.acquire(1e6)).await;
        assert!(waited.is_err(), "still waiting after an hour");
    }

    #[test]
    fn throttles_and_retry_policies_are_validated() {
        assert!(Throttle::default().validate().is_ok());
        assert!(RetryPolicy::default().validate().is_ok());
        for (t, want) in [
            (
                Throttle {
                    templates_per_second: Some(f64::NAN),
                    ..Throttle::default()
                },
                "Throttle.templates_per_second is NaN",
            ),
            (
                Throttle {
                    bytes_per_second: Some(-1.0),
                    ..Throttle::default()
                },
                "Throttle.bytes_per_second is -1",
            ),
            (
                Throttle {
                    bytes_per_second: Some(f64::INFINITY),
                    ..Throttle::default()
                },
                "finite number greater than 0",
            ),
            (
                Throttle {
                    concurrency: 0,
                    ..Throttle::default()
                },
                "Throttle.concurrency is 0; it must be from 1 to 65536",
            ),
            (
                Throttle {
                    batch_max_bytes: 0,
                    ..Throttle::default()
                },
                "Throttle.batch_max_bytes",
            ),
        ] {
            let e = Limiters::new(&t).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::ConfigInvalid);
            assert!(e.message().contains(want), "{e}");
        }
        for p in [
            RetryPolicy {
                max_attempts: 0,
                ..RetryPolicy::default()
            },
            RetryPolicy {
                max_backoff: Duration::MAX,
                ..RetryPolicy::default()
            },
            RetryPolicy {
                initial_backoff: Duration::from_secs(10),
                max_backoff: Duration::from_secs(1),
                ..RetryPolicy::default()
            },
        ] {
            assert!(p.validate().is_err(), "{p:?}");
        }
    }

    #[test]
    fn batch_ranges_cover_every_item_once_within_limits() {
        assert_eq!(
            batch_ranges(0, 4, 100, |_| 1),
            Vec::<std::ops::Range<usize>>::new()
        );
        assert_eq!(batch_ranges(10, 4, usize::MAX, |_| 0), [0..4, 4..8, 8..10]);
        let sizes = [600, 600, 100, 2000, 1];
        assert_eq!(
            batch_ranges(sizes.len(), 10, 1000, |i| sizes[i]),
            [0..1, 1..3, 3..4, 4..5]
        );
    }

    #[test]
    fn batches_respect_counts_and_bytes() {
        let b = batches((0..10).collect(), 4, 1000, |_| 1);
        assert_eq!(b.iter().map(Vec::len).collect::<Vec<_>>(), [4, 4, 2]);
        let b = batches(vec![600, 600, 100, 2000], 10, 1000, |x| *x);
        assert_eq!(b, vec![vec![600], vec![600, 100], vec![2000]]);
        let b = batches(vec![usize::MAX, usize::MAX, 1], 10, 1000, |x| *x);
        assert_eq!(b.len(), 3);
    }
}
