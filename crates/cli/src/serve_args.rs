//! The options of `tcache serve`. Every one is also a key of the `[serve]` table of a
//! `--config` file (docs/serve.md).

use std::time::Duration;

use clap::{Args, ValueEnum};

use crate::args::{SourceArgs, count_in, duration_in, ratio};

/// `--debounce`: from 1 ms to 1 min.
pub const DEBOUNCE_RANGE: (Duration, Duration) =
    (Duration::from_millis(1), Duration::from_secs(60));
/// `--rescan-interval`: from 1 s to 30 days.
pub const RESCAN_RANGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(30 * 86_400));
/// `--poll-interval`: from 1 s to a day.
pub const POLL_RANGE: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(86_400));
/// `--orphan-grace`, `--check-every`, `--deep-check-every`: 0 (off) or 1 s to 365 days.
pub const PERIOD_RANGE: (Duration, Duration) = (Duration::ZERO, Duration::from_secs(365 * 86_400));
/// `--check-jitter`: up to a day.
pub const JITTER_RANGE: (Duration, Duration) = (Duration::ZERO, Duration::from_secs(86_400));
/// `--shutdown-timeout`: from 1 s to 10 min.
pub const SHUTDOWN_RANGE: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(600));
/// `--max-backoff`: from 1 s to 1 h.
pub const BACKOFF_RANGE: (Duration, Duration) = (Duration::from_secs(1), Duration::from_secs(3600));

/// What the service does with an inconsistency of one kind.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ResolveMode {
    /// Repair it, behind the thresholds.
    Auto,
    /// Only report it (log, metrics, alerts).
    Report,
}

#[derive(Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Templates matching this glob are written first (repeatable, highest priority first).
    #[arg(long = "priority", value_name = "GLOB")]
    pub priority: Vec<String>,
    /// Write a changed file once it has been quiet this long (1ms to 1m).
    #[arg(long, value_name = "DURATION", default_value = "100ms", value_parser = duration_in(DEBOUNCE_RANGE.0, DEBOUNCE_RANGE.1))]
    pub debounce: Duration,
    /// A full rescan runs this often, as a backstop for missed file events (1s to 30d).
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = duration_in(RESCAN_RANGE.0, RESCAN_RANGE.1))]
    pub rescan_interval: Duration,
    /// Do not watch the tree: rescan it every --poll-interval (for NFS or SMB mounts, whose
    /// changes raise no events). Also the fallback when watches cannot be set up.
    #[arg(long)]
    pub no_watch: bool,
    /// How often to rescan when the tree is not watched (1s to 1d).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = duration_in(POLL_RANGE.0, POLL_RANGE.1))]
    pub poll_interval: Duration,
    /// Delete an orphaned entry only once its file has been gone this long; 0 keeps orphans
    /// forever (0 to 365d).
    #[arg(long, value_name = "DURATION", default_value = "10m", value_parser = duration_in(PERIOD_RANGE.0, PERIOD_RANGE.1))]
    pub orphan_grace: Duration,
    /// Run a quick check this often; 0 never (0, or 1s to 365d).
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = period)]
    pub check_every: Duration,
    /// Run a deep check (every entry fetched and verified) this often; 0 never (0, or 1s to
    /// 365d).
    #[arg(long, value_name = "DURATION", default_value = "24h", value_parser = period)]
    pub deep_check_every: Duration,
    /// Run checks only inside this daily window of local time, HH:MM-HH:MM (repeatable; may
    /// wrap past midnight) [default: any time].
    #[arg(long = "check-windows", value_name = "HH:MM-HH:MM")]
    pub check_windows: Vec<String>,
    /// The IANA time zone of --check-windows (e.g. Europe/Paris), or `local`.
    #[arg(long, value_name = "ZONE", default_value = "UTC")]
    pub time_zone: String,
    /// Start each check up to this much later than due, at random, so that a fleet does not
    /// check at once (0 to 1d).
    #[arg(long, value_name = "DURATION", default_value = "1m", value_parser = duration_in(JITTER_RANGE.0, JITTER_RANGE.1))]
    pub check_jitter: Duration,
    /// Missing templates found by a check: written (auto) or only reported.
    #[arg(long, value_enum, value_name = "MODE", default_value = "auto")]
    pub resolve_missing: ResolveMode,
    /// Outdated entries found by a check: rewritten (auto) or only reported.
    #[arg(long, value_enum, value_name = "MODE", default_value = "auto")]
    pub resolve_outdated: ResolveMode,
    /// Corrupt entries found by a check: repaired (auto) or only reported.
    #[arg(long, value_enum, value_name = "MODE", default_value = "auto")]
    pub resolve_corrupt: ResolveMode,
    /// Orphaned entries: deleted after --orphan-grace (auto) or only reported.
    #[arg(long, value_enum, value_name = "MODE", default_value = "auto")]
    pub resolve_orphaned: ResolveMode,
    /// Refuse a resolution that would delete more than N entries (0 to 1000000000).
    #[arg(long, value_name = "N", value_parser = count_in::<usize>(crate::args::MAX_DELETE_RANGE))]
    pub max_delete: Option<usize>,
    /// Refuse a resolution that would delete more than this fraction of the entries (0 to 1).
    #[arg(long, value_name = "F", default_value_t = 0.25, value_parser = ratio)]
    pub max_delete_ratio: f64,
    /// Refuse a resolution that would write more than N entries (0 to 1000000000).
    #[arg(long, value_name = "N", value_parser = count_in::<usize>(crate::args::MAX_CHANGE_RANGE))]
    pub max_change: Option<usize>,
    /// Refuse a resolution that would write more than this fraction of the entries (0 to 1).
    #[arg(long, value_name = "F", value_parser = ratio)]
    pub max_change_ratio: Option<f64>,
    /// Longest pause between attempts while the backend is unreachable (1s to 1h).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = duration_in(BACKOFF_RANGE.0, BACKOFF_RANGE.1))]
    pub max_backoff: Duration,
    /// After SIGTERM/SIGINT, exit after at most this long even if work is still in flight
    /// (1s to 10m); a second signal exits at once.
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = duration_in(SHUTDOWN_RANGE.0, SHUTDOWN_RANGE.1))]
    pub shutdown_timeout: Duration,
    #[command(flatten)]
    pub observe: crate::observe_args::ObserveArgs,
}

/// A parser of periods: 0 (off), or from 1 s to 365 days.
fn period(s: &str) -> Result<Duration, String> {
    match humantime::parse_duration(s) {
        Ok(d) if d.is_zero() || (Duration::from_secs(1)..=PERIOD_RANGE.1).contains(&d) => Ok(d),
        _ => Err("must be 0 (never) or a duration from 1s to 365d (for example 30m, 1h)".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn periods_are_zero_or_at_least_a_second() {
        assert_eq!(period("0s"), Ok(Duration::ZERO));
        assert_eq!(period("1h"), Ok(Duration::from_secs(3600)));
        for bad in ["500ms", "366d", "often"] {
            assert!(period(bad).is_err(), "{bad}");
        }
    }
}
