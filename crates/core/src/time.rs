//! Clock and jitter helpers.

/// Nanoseconds since the Unix epoch, now.
pub(crate) fn now_ns() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
}

/// `base` spread randomly by ±`jitter` (a fraction, clamped to 0..=1).
pub(crate) fn jittered(base: std::time::Duration, jitter: f64) -> std::time::Duration {
    let j = if jitter.is_finite() {
        jitter.clamp(0.0, 1.0)
    } else {
        0.0
    };
    base.mul_f64(1.0 + j * (2.0 * fastrand::f64() - 1.0))
}
