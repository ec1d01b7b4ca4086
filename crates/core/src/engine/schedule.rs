//! Scheduled checks: periodic, optionally off-peak, optionally resolving, with alerts.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use crate::engine::check::Checker;
use crate::engine::report::{CheckMode, CheckReport, ResolveReport};
use crate::engine::resolve::ResolvePolicy;
use crate::error::{Error, ErrorKind, Result};

/// A daily window of UTC time of day, in minutes since midnight; it may wrap past midnight
/// (for example 22:00–05:00).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TimeWindow {
    start_min: u32,
    end_min: u32,
}

impl TimeWindow {
    /// Parses `HH:MM-HH:MM` (UTC).
    pub fn parse(s: &str) -> Result<Self> {
        let bad = || {
            Error::new(
                ErrorKind::ConfigInvalid,
                format!("time window {s:?} is invalid: expected HH:MM-HH:MM (UTC)"),
            )
        };
        let (a, b) = s.split_once('-').ok_or_else(bad)?;
        let parse = |t: &str| -> Option<u32> {
            let (h, m) = t.trim().split_once(':')?;
            let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
            (h < 24 && m < 60).then_some(h * 60 + m)
        };
        Ok(TimeWindow {
            start_min: parse(a).ok_or_else(bad)?,
            end_min: parse(b).ok_or_else(bad)?,
        })
    }

    /// Whether `minute_of_day` (UTC) lies inside the window.
    pub fn contains(&self, minute_of_day: u32) -> bool {
        if self.start_min <= self.end_min {
            (self.start_min..self.end_min).contains(&minute_of_day)
        } else {
            minute_of_day >= self.start_min || minute_of_day < self.end_min
        }
    }

    /// How long from `minute_of_day` until the window opens (zero if it is open).
    pub fn wait_from(&self, minute_of_day: u32) -> Duration {
        let minute_of_day = minute_of_day % 1440;
        if self.contains(minute_of_day) {
            return Duration::ZERO;
        }
        let mins = (self.start_min + 1440 - minute_of_day) % 1440;
        Duration::from_secs(u64::from(mins) * 60)
    }
}

/// When an inconsistency count or ratio warrants an alert.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct AlertThreshold {
    /// Alert when at least this many inconsistencies are found.
    pub min_count: Option<usize>,
    /// Alert when inconsistencies reach this fraction of `max(files, entries)`.
    pub min_ratio: Option<f64>,
}

impl AlertThreshold {
    /// Whether `report` crosses the threshold.
    pub fn is_crossed(&self, report: &CheckReport) -> bool {
        let n = report.inconsistencies();
        let base = report.files.max(report.entries).max(1) as f64;
        self.min_count.is_some_and(|c| n >= c.max(1))
            || self
                .min_ratio
                .is_some_and(|r| n > 0 && n as f64 / base >= r)
    }
}

/// Receives alerts from scheduled checks. Implement it to page someone.
#[async_trait]
pub trait AlertSink: Send + Sync {
    /// Called when a scheduled check crosses its [`AlertThreshold`] or fails outright.
    async fn alert(&self, alert: &Alert);
}

/// What an alert is about.
#[derive(Debug)]
pub enum Alert {
    /// A check found inconsistencies over the threshold.
    Inconsistent(Box<CheckReport>),
    /// A check could not run.
    Failed(Error),
}

/// A periodic check.
#[derive(Clone, Debug)]
pub struct CheckSchedule {
    /// Time between checks.
    pub interval: Duration,
    /// Random spread of the interval, as a fraction (0.1 = ±10%).
    pub jitter: f64,
    /// Run only inside this window.
    pub window: Option<TimeWindow>,
    /// Quick or deep.
    pub mode: CheckMode,
    /// Resolve what each check finds with this policy.
    pub resolve: Option<ResolvePolicy>,
    /// When to alert.
    pub alert: AlertThreshold,
}

impl CheckSchedule {
    /// The shortest and longest interval accepted by [`Self::validate`].
    pub const INTERVAL_RANGE: (Duration, Duration) =
        (Duration::from_millis(1), Duration::from_secs(365 * 86_400));

    /// Checks the schedule, naming the setting out of range: the interval from 1 ms to 365 days
    /// (never zero: that would check in a busy loop), the jitter and the alert ratio finite and
    /// from 0 to 1.
    pub fn validate(&self) -> Result<()> {
        let (min, max) = Self::INTERVAL_RANGE;
        crate::backend::url::check_duration("CheckSchedule.interval", self.interval, min, max)?;
        for (name, value) in [
            ("CheckSchedule.jitter", Some(self.jitter)),
            ("CheckSchedule.alert.min_ratio", self.alert.min_ratio),
        ] {
            if let Some(v) = value
                && !(0.0..=1.0).contains(&v)
            {
                return Err(Error::new(
                    ErrorKind::ConfigInvalid,
                    format!("{name} is {v}; it must be a number from 0 to 1"),
                ));
            }
        }
        Ok(())
    }
}

/// Runs checks on `schedule` until `cancel` fires. Each outcome goes to `on_run`; alerts go to
/// `sinks` and are logged at error level.
///
/// A schedule that fails [`CheckSchedule::validate`] runs no check: its error goes to `on_run`
/// and the sinks (as [`Alert::Failed`]), and the function returns.
pub async fn run_scheduled_checks(
    checker: &Checker,
    schedule: &CheckSchedule,
    sinks: &[Arc<dyn AlertSink>],
    cancel: CancellationToken,
    mut on_run: impl FnMut(&Result<(CheckReport, Option<Result<ResolveReport>>)>) + Send,
) {
    if let Err(e) = schedule.validate() {
        tracing::error!(error = %e, "invalid check schedule");
        let alert = Alert::Failed(e.clone());
        for s in sinks {
            s.alert(&alert).await;
        }
        on_run(&Err(e));
        return;
    }
    loop {
        if let Some(w) = schedule.window {
            let wait = w.wait_from(minute_of_day_utc());
            if !wait.is_zero() {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(wait) => {}
                }
            }
        }
        let outcome = match checker.check(schedule.mode).await {
            Ok(report) => {
                if schedule.alert.is_crossed(&report) {
                    tracing::error!(
                        missing = report.missing.len(),
                        outdated = report.outdated.len(),
                        orphaned = report.orphaned.len(),
                        corrupt = report.corrupt.len(),
                        "cache inconsistencies over the alert threshold"
                    );
                    let alert = Alert::Inconsistent(Box::new(report.clone()));
                    for s in sinks {
                        s.alert(&alert).await;
                    }
                }
                let resolved = match &schedule.resolve {
                    Some(p) if report.inconsistencies() > 0 => {
                        Some(checker.resolve(&report, p).await)
                    }
                    _ => None,
                };
                Ok((report, resolved))
            }
            Err(e) => {
                tracing::error!(error = %e, "scheduled check failed");
                let alert = Alert::Failed(e.clone());
                for s in sinks {
                    s.alert(&alert).await;
                }
                Err(e)
            }
        };
        on_run(&outcome);
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(crate::time::jittered(schedule.interval, schedule.jitter)) => {}
        }
    }
}

fn minute_of_day_utc() -> u32 {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    ((secs % 86_400) / 60) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse_and_wrap() {
        let w = TimeWindow::parse("22:00-05:30").unwrap();
        assert!(w.contains(23 * 60) && w.contains(60) && !w.contains(12 * 60));
        assert_eq!(w.wait_from(21 * 60), Duration::from_secs(3600));
        let d = TimeWindow::parse("01:00-02:00").unwrap();
        assert!(d.contains(60) && !d.contains(120));
        assert_eq!(d.wait_from(120), Duration::from_secs(23 * 3600));
        for bad in ["", "1-2", "25:00-01:00", "01:00"] {
            assert!(TimeWindow::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(d.wait_from(u32::MAX), d.wait_from(u32::MAX % 1440));
    }

    #[test]
    fn schedules_are_validated() {
        let ok = CheckSchedule {
            interval: Duration::from_secs(60),
            jitter: 0.1,
            window: None,
            mode: CheckMode::Quick,
            resolve: None,
            alert: AlertThreshold::default(),
        };
        assert!(ok.validate().is_ok());
        for (bad, want) in [
            (
                CheckSchedule {
                    interval: Duration::ZERO,
                    ..ok.clone()
                },
                "CheckSchedule.interval is 0s; it must be from 1ms to 365d",
            ),
            (
                CheckSchedule {
                    interval: Duration::MAX,
                    ..ok.clone()
                },
                "CheckSchedule.interval",
            ),
            (
                CheckSchedule {
                    jitter: f64::NAN,
                    ..ok.clone()
                },
                "CheckSchedule.jitter is NaN",
            ),
            (
                CheckSchedule {
                    alert: AlertThreshold {
                        min_count: None,
                        min_ratio: Some(2.0),
                    },
                    ..ok.clone()
                },
                "CheckSchedule.alert.min_ratio is 2",
            ),
        ] {
            let e = bad.validate().unwrap_err();
            assert!(e.message().contains(want), "{e}");
        }
    }

    #[test]
    fn thresholds() {
        let mut r = CheckReport {
            files: 100,
            entries: 100,
            ..Default::default()
        };
        let t = AlertThreshold {
            min_count: Some(3),
            min_ratio: Some(0.5),
        };
        assert!(!t.is_crossed(&r));
        r.missing = vec!["a".into(), "b".into(), "c".into()];
        assert!(t.is_crossed(&r));
        let ratio = AlertThreshold {
            min_count: None,
            min_ratio: Some(0.02),
        };
        assert!(ratio.is_crossed(&r));
        assert!(!AlertThreshold::default().is_crossed(&r));
    }
}
