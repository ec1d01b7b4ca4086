//! What a service does and when: every setting of `tcache serve`, validated as a whole.

use std::path::PathBuf;
use std::time::Duration;

use template_cache_core::{EngineConfig, Error, ErrorKind, ResolvePolicy, Result};

use crate::windows::CheckWindows;

/// Whether the service repairs an inconsistency it finds or only reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Mode {
    /// Repair it, behind the thresholds.
    Auto,
    /// Report it (log, metrics, alerts); change nothing.
    Report,
}

/// The resolution mode of each kind of inconsistency.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResolveModes {
    /// Templates with a file but no cache entry.
    pub missing: Mode,
    /// Entries holding other content than their file.
    pub outdated: Mode,
    /// Entries that do not decode or do not match their hash.
    pub corrupt: Mode,
    /// Entries whose file is gone (deleted only after [`ServeConfig::orphan_grace`]).
    pub orphaned: Mode,
}

impl Default for ResolveModes {
    /// Everything repaired automatically.
    fn default() -> Self {
        ResolveModes {
            missing: Mode::Auto,
            outdated: Mode::Auto,
            corrupt: Mode::Auto,
            orphaned: Mode::Auto,
        }
    }
}

/// Bounds on what one resolution may change; above them nothing is changed.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Thresholds {
    /// At most this many deletions.
    pub max_delete: Option<usize>,
    /// At most this fraction of the entries deleted.
    pub max_delete_ratio: Option<f64>,
    /// At most this many writes.
    pub max_change: Option<usize>,
    /// At most this fraction of the entries written.
    pub max_change_ratio: Option<f64>,
}

impl Default for Thresholds {
    /// Deletions bounded to a quarter of the entries, as `check --fix`.
    fn default() -> Self {
        Thresholds {
            max_delete: None,
            max_delete_ratio: Some(0.25),
            max_change: None,
            max_change_ratio: None,
        }
    }
}

/// Everything a service runs with.
#[derive(Clone, Debug)]
pub struct ServeConfig {
    /// The engines' configuration: tree, namespace, throttle, retries, lease TTL.
    pub engine: EngineConfig,
    /// Where fingerprint state files live (one per canonical root; a root that changes, as a
    /// symlink swapped by a deploy, gets its own). `None`: fingerprints are not persisted.
    pub state_dir: Option<PathBuf>,
    /// Quiet time after a file's last change before it is written (default 100 ms).
    pub debounce: Duration,
    /// A full rescan runs this often as a backstop for missed events (default 5 min).
    pub rescan_interval: Duration,
    /// Watch the tree for changes (default). Off (or when watching cannot be set up): full
    /// rescans every [`Self::poll_interval`] instead, for filesystems that deliver no change
    /// events (NFS, SMB).
    pub watch: bool,
    /// Full rescans this often when the tree is not watched (default 10 s).
    pub poll_interval: Duration,
    /// An orphaned entry is deleted only once its file has been gone this long (default
    /// 10 min); `None` keeps orphans forever.
    pub orphan_grace: Option<Duration>,
    /// Quick checks this often (default 1 h); `None`: never.
    pub check_every: Option<Duration>,
    /// Deep checks this often (default 24 h); `None`: never.
    pub deep_check_every: Option<Duration>,
    /// Checks run only inside these windows, in their time zone (empty: any time).
    pub check_windows: CheckWindows,
    /// Each check starts up to this much later than due, at random, so that a fleet does not
    /// check at the same second (default 1 min).
    pub check_jitter: Duration,
    /// What to repair automatically.
    pub resolve: ResolveModes,
    /// Bounds on each automatic resolution.
    pub thresholds: Thresholds,
    /// Longest pause between two attempts while the backend is unreachable (default 30 s).
    pub max_backoff: Duration,
}

impl ServeConfig {
    /// Defaults for the engines configured by `engine`.
    pub fn new(engine: EngineConfig) -> Self {
        ServeConfig {
            engine,
            state_dir: None,
            debounce: Duration::from_millis(100),
            rescan_interval: Duration::from_secs(300),
            watch: true,
            poll_interval: Duration::from_secs(10),
            orphan_grace: Some(Duration::from_secs(600)),
            check_every: Some(Duration::from_secs(3600)),
            deep_check_every: Some(Duration::from_secs(86_400)),
            check_windows: CheckWindows::always(),
            check_jitter: Duration::from_secs(60),
            resolve: ResolveModes::default(),
            thresholds: Thresholds::default(),
            max_backoff: Duration::from_secs(30),
        }
    }

    /// Checks every setting, naming the one out of range.
    pub fn validate(&self) -> Result<()> {
        let ms = Duration::from_millis;
        let day = Duration::from_secs(86_400);
        let check = |name: &str, d: Duration, min: Duration, max: Duration| {
            template_cache_core::url::check_duration(name, d, min, max)
        };
        check("debounce", self.debounce, ms(1), Duration::from_secs(60))?;
        check(
            "rescan-interval",
            self.rescan_interval,
            Duration::from_secs(1),
            30 * day,
        )?;
        check(
            "poll-interval",
            self.poll_interval,
            Duration::from_secs(1),
            day,
        )?;
        check(
            "max-backoff",
            self.max_backoff,
            Duration::from_secs(1),
            Duration::from_secs(3600),
        )?;
        check("check-jitter", self.check_jitter, Duration::ZERO, day)?;
        if let Some(g) = self.orphan_grace {
            check("orphan-grace", g, ms(1), 365 * day)?;
        }
        if let Some(e) = self.check_every {
            check("check-every", e, Duration::from_secs(1), 365 * day)?;
        }
        if let Some(e) = self.deep_check_every {
            check("deep-check-every", e, Duration::from_secs(1), 365 * day)?;
        }
        for (name, r) in [
            ("max-delete-ratio", self.thresholds.max_delete_ratio),
            ("max-change-ratio", self.thresholds.max_change_ratio),
        ] {
            if let Some(r) = r
                && !(0.0..=1.0).contains(&r)
            {
                return Err(Error::new(
                    ErrorKind::ConfigInvalid,
                    format!("{name} is {r}; it must be a number from 0 to 1"),
                ));
            }
        }
        self.engine.lease.validate()
    }

    /// The resolution policy of an automatic resolution: the kinds in `auto` mode, behind the
    /// thresholds; deletions of orphans only if their mode is auto.
    pub fn policy(&self) -> ResolvePolicy {
        let auto = |m: Mode| m == Mode::Auto;
        ResolvePolicy {
            add_missing: auto(self.resolve.missing),
            update_outdated: auto(self.resolve.outdated),
            repair_corrupt: auto(self.resolve.corrupt),
            delete_orphans: auto(self.resolve.orphaned) && self.orphan_grace.is_some(),
            dry_run: false,
            max_delete: self.thresholds.max_delete,
            max_delete_ratio: self.thresholds.max_delete_ratio,
            max_change: self.thresholds.max_change,
            max_change_ratio: self.thresholds.max_change_ratio,
            allow_empty_source: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use template_cache_core::SourceConfig;

    fn config() -> ServeConfig {
        ServeConfig::new(EngineConfig::new(SourceConfig::new("/tmp")))
    }

    #[test]
    fn defaults_are_valid_and_bounded() {
        let c = config();
        c.validate().unwrap();
        assert_eq!(c.debounce, Duration::from_millis(100));
        let p = c.policy();
        assert!(p.add_missing && p.delete_orphans && !p.allow_empty_source);
        assert_eq!(p.max_delete_ratio, Some(0.25));
    }

    #[test]
    fn out_of_range_settings_are_named() {
        for (c, want) in [
            (
                ServeConfig {
                    debounce: Duration::ZERO,
                    ..config()
                },
                "debounce",
            ),
            (
                ServeConfig {
                    check_every: Some(Duration::from_millis(10)),
                    ..config()
                },
                "check-every",
            ),
            (
                ServeConfig {
                    thresholds: Thresholds {
                        max_delete_ratio: Some(1.5),
                        ..Thresholds::default()
                    },
                    ..config()
                },
                "max-delete-ratio",
            ),
        ] {
            let e = c.validate().unwrap_err();
            assert!(e.message().contains(want), "{e}");
        }
    }

    #[test]
    fn report_modes_and_keeping_orphans_forever_turn_repairs_off() {
        let mut c = config();
        c.resolve.outdated = Mode::Report;
        c.orphan_grace = None;
        let p = c.policy();
        assert!(!p.update_outdated && !p.delete_orphans && p.add_missing);
    }
}
