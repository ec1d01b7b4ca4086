#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

pub mod backend;
pub mod check;
pub mod config;
pub mod error;
pub mod index;
pub mod key;
mod pipeline;
pub mod reader;
pub mod record;
pub mod report;
pub mod scan;
pub mod schedule;
pub mod source;
pub mod throttle;
pub mod url;
pub mod warm;

pub use async_trait::async_trait;
pub use backend::{CacheBackend, Capabilities};
pub use bytes::Bytes;
pub use check::{Checker, ResolvePolicy};
pub use config::EngineConfig;
pub use error::{Error, ErrorKind, Result};
pub use index::{IndexChanges, IndexEntry, IndexSnapshot};
pub use key::{ContentHash, DEFAULT_NAMESPACE, Namespace};
pub use reader::{Origin, Template, TemplateReader};
pub use record::Record;
pub use report::{CheckMode, CheckReport, Failure, ResolveReport, WarmReport};
pub use scan::SourceConfig;
pub use schedule::{
    Alert, AlertSink, AlertThreshold, CheckSchedule, TimeWindow, run_scheduled_checks,
};
pub use throttle::{RetryPolicy, Throttle};
pub use tokio_util::sync::CancellationToken;
pub use warm::Warmer;

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
