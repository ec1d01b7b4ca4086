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
            attempt += 1;
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
    /// A limiter admitting `per_second` units per second on average; must be positive.
    pub fn new(per_second: f64) -> Result<Self> {
        if !(per_second.is_finite() && per_second > 0.0) {
            return Err(Error::new(
                crate::ErrorKind::ConfigInvalid,
                format!("rate limit must be a positive number, not {per_second}"),
            ));
        }
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
                Duration::from_secs_f64(-s.0 / self.per_second)
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

/// The live limiters built from a [`Throttle`].
#[derive(Debug)]
pub(crate) struct Limiters {
    templates: Option<RateLimiter>,
    bytes: Option<RateLimiter>,
}

impl Limiters {
    pub(crate) fn new(t: &Throttle) -> Result<Self> {
        if t.concurrency == 0 || t.batch_max_templates == 0 || t.batch_max_bytes == 0 {
            return Err(Error::new(
                crate::ErrorKind::ConfigInvalid,
                "concurrency and batch sizes must be at least 1",
            ));
        }
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
    let mut out = Vec::new();
    let mut cur = Vec::new();
    let mut cur_bytes = 0;
    for item in items {
        let s = size(&item);
        if !cur.is_empty() && (cur.len() >= max_items || cur_bytes + s > max_bytes) {
            out.push(std::mem::take(&mut cur));
            cur_bytes = 0;
        }
        cur_bytes += s;
        cur.push(item);
    }
    if !cur.is_empty() {
        out.push(cur);
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

    #[test]
    fn batches_respect_counts_and_bytes() {
        let b = batches((0..10).collect(), 4, 1000, |_| 1);
        assert_eq!(b.iter().map(Vec::len).collect::<Vec<_>>(), [4, 4, 2]);
        let b = batches(vec![600, 600, 100, 2000], 10, 1000, |x| *x);
        assert_eq!(b, vec![vec![600], vec![600, 100], vec![2000]]);
    }
}
