//! When scheduled checks may run: daily windows of local time in an IANA time zone, and the
//! next due time of a check given the last one, with jitter. Pure functions of the clock they
//! are given, so they are tested with any clock.

use std::time::Duration;

use jiff::civil::Time;
use jiff::tz::TimeZone;
use jiff::{Timestamp, ToSpan};
use template_cache_core::{Error, ErrorKind, Result};

/// Daily windows (`01:00-05:00`; one may wrap past midnight, `22:00-02:00`) of local time in a
/// time zone. No window at all means any time.
#[derive(Clone, Debug)]
pub struct CheckWindows {
    zone: TimeZone,
    zone_name: String,
    /// Start and end, in minutes since local midnight.
    spans: Vec<(u32, u32)>,
}

impl CheckWindows {
    /// No restriction: checks run whenever due.
    pub fn always() -> Self {
        CheckWindows {
            zone: TimeZone::UTC,
            zone_name: "UTC".into(),
            spans: Vec::new(),
        }
    }

    /// Parses `windows` (`HH:MM-HH:MM` each) in time zone `zone` (an IANA name such as
    /// `Europe/Paris`, `UTC`, or `local` for the system's). Errors name the bad value.
    pub fn parse(zone: &str, windows: &[String]) -> Result<Self> {
        let tz = if zone == "local" {
            TimeZone::system()
        } else {
            TimeZone::get(zone).map_err(|e| {
                Error::new(
                    ErrorKind::ConfigInvalid,
                    format!("time-zone {zone:?} is not a known IANA time zone: {e}"),
                )
            })?
        };
        let spans = windows
            .iter()
            .map(|w| parse_window(w))
            .collect::<Result<Vec<_>>>()?;
        Ok(CheckWindows {
            zone: tz,
            zone_name: zone.to_owned(),
            spans,
        })
    }

    /// Whether no window restricts checks.
    pub fn is_always(&self) -> bool {
        self.spans.is_empty()
    }

    /// The time zone's name as configured.
    pub fn zone_name(&self) -> &str {
        &self.zone_name
    }

    /// Whether `t` lies inside a window.
    pub fn contains(&self, t: Timestamp) -> bool {
        if self.spans.is_empty() {
            return true;
        }
        let local = self.zone.to_datetime(t);
        let minute =
            u32::try_from(i32::from(local.hour()) * 60 + i32::from(local.minute())).unwrap_or(0);
        self.spans.iter().any(|&(start, end)| {
            if start <= end {
                (start..end).contains(&minute)
            } else {
                minute >= start || minute < end
            }
        })
    }

    /// `t` if it lies inside a window, else the next moment a window opens.
    pub fn next_open(&self, t: Timestamp) -> Timestamp {
        if self.contains(t) {
            return t;
        }
        let local = self.zone.to_datetime(t);
        let mut best: Option<Timestamp> = None;
        for day in 0..=2i64 {
            let Ok(date) = local.date().checked_add(day.days()) else {
                continue;
            };
            for &(start, _) in &self.spans {
                let (h, m) = ((start / 60) as i8, (start % 60) as i8);
                let Ok(time) = Time::new(h, m, 0, 0) else {
                    continue;
                };
                // A start inside a daylight-saving gap opens at the first moment after it.
                let Ok(at) = self.zone.to_timestamp(date.to_datetime(time)) else {
                    continue;
                };
                if at > t && best.is_none_or(|b| at < b) {
                    best = Some(at);
                }
            }
        }
        best.unwrap_or(t)
    }

    /// When a check whose last run started at `last` (or that never ran, by a service started
    /// at `started`) runs next: `every` after the last run (at `started` for the first),
    /// plus `jitter`, moved into the next window. A jittered time that falls out of a window
    /// moves to the next one.
    pub fn next_run(
        &self,
        started: Timestamp,
        last: Option<Timestamp>,
        every: Duration,
        jitter: Duration,
    ) -> Timestamp {
        let due = match last {
            Some(l) => add(l, every),
            None => started,
        };
        let mut at = add(self.next_open(due), jitter);
        for _ in 0..3 {
            if self.contains(at) {
                return at;
            }
            at = add(self.next_open(at), jitter);
        }
        self.next_open(at)
    }
}

/// `t + d`, saturating at the largest timestamp.
pub(crate) fn add(t: Timestamp, d: Duration) -> Timestamp {
    jiff::SignedDuration::try_from(d)
        .ok()
        .and_then(|d| t.checked_add(d).ok())
        .unwrap_or(Timestamp::MAX)
}

/// A random duration from zero to `max`.
pub(crate) fn jitter(max: Duration) -> Duration {
    if max.is_zero() {
        return Duration::ZERO;
    }
    Duration::from_nanos(fastrand::u64(
        ..=u64::try_from(max.as_nanos()).unwrap_or(u64::MAX),
    ))
}

fn parse_window(w: &str) -> Result<(u32, u32)> {
    let bad = || {
        Error::new(
            ErrorKind::ConfigInvalid,
            format!(
                "check-windows: {w:?} is not a window: expected HH:MM-HH:MM (24-hour local time)"
            ),
        )
    };
    let (a, b) = w.split_once('-').ok_or_else(bad)?;
    let minute = |t: &str| -> Option<u32> {
        let (h, m) = t.trim().split_once(':')?;
        let (h, m): (u32, u32) = (h.parse().ok()?, m.parse().ok()?);
        ((h < 24 && m < 60) || (h == 24 && m == 0)).then_some(h * 60 + m)
    };
    let (start, end) = (minute(a).ok_or_else(bad)?, minute(b).ok_or_else(bad)?);
    if start == end {
        return Err(Error::new(
            ErrorKind::ConfigInvalid,
            format!("check-windows: {w:?} is empty (it starts where it ends)"),
        ));
    }
    Ok((start % 1440, end))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn windows_in_a_time_zone() {
        // 01:00-05:00 in Paris is 00:00-04:00 UTC in winter (UTC+1).
        let w = CheckWindows::parse("Europe/Paris", &["01:00-05:00".into()]).unwrap();
        assert!(w.contains(ts("2026-01-10T00:30:00Z")));
        assert!(!w.contains(ts("2026-01-10T04:30:00Z")));
        assert_eq!(
            w.next_open(ts("2026-01-10T12:00:00Z")),
            ts("2026-01-11T00:00:00Z")
        );
        // In summer (UTC+2) the same window opens an hour earlier in UTC.
        assert_eq!(
            w.next_open(ts("2026-07-10T12:00:00Z")),
            ts("2026-07-10T23:00:00Z")
        );
    }

    #[test]
    fn windows_may_wrap_past_midnight() {
        let w = CheckWindows::parse("UTC", &["22:00-02:00".into(), "12:00-12:30".into()]).unwrap();
        assert!(w.contains(ts("2026-03-01T23:59:00Z")));
        assert!(w.contains(ts("2026-03-02T01:59:00Z")));
        assert!(!w.contains(ts("2026-03-02T02:00:00Z")));
        assert_eq!(
            w.next_open(ts("2026-03-02T02:00:00Z")),
            ts("2026-03-02T12:00:00Z")
        );
        assert_eq!(
            w.next_open(ts("2026-03-02T12:30:00Z")),
            ts("2026-03-02T22:00:00Z")
        );
    }

    #[test]
    fn a_check_runs_inside_its_window_and_not_outside_it() {
        let w = CheckWindows::parse("UTC", &["01:00-05:00".into()]).unwrap();
        let hour = Duration::from_secs(3600);
        let started = ts("2026-03-01T12:00:00Z");
        // The first check waits for the window.
        let first = w.next_run(started, None, hour, Duration::ZERO);
        assert_eq!(first, ts("2026-03-02T01:00:00Z"));
        // Then hourly inside it, and the one due at 05:00 waits for the next night.
        let mut at = first;
        let mut runs = vec![at];
        for _ in 0..5 {
            at = w.next_run(started, Some(at), hour, Duration::ZERO);
            runs.push(at);
        }
        assert_eq!(runs[3], ts("2026-03-02T04:00:00Z"));
        assert_eq!(runs[4], ts("2026-03-03T01:00:00Z"));
        assert!(runs.iter().all(|&r| w.contains(r)));
        // With jitter, every run still lands in a window.
        for _ in 0..200 {
            let r = w.next_run(started, Some(runs[3]), hour, Duration::from_secs(30 * 60));
            assert!(w.contains(r), "{r}");
        }
    }

    #[test]
    fn no_window_means_any_time() {
        let w = CheckWindows::always();
        let t = ts("2026-03-01T12:00:00Z");
        assert!(w.is_always() && w.contains(t));
        assert_eq!(
            w.next_run(t, Some(t), Duration::from_secs(60), Duration::ZERO),
            ts("2026-03-01T12:01:00Z")
        );
        let j = w.next_run(t, None, Duration::from_secs(60), Duration::from_secs(10));
        assert!(j >= t && j <= ts("2026-03-01T12:00:10Z"));
    }

    #[test]
    fn bad_windows_and_zones_are_named() {
        for (zone, w, want) in [
            ("Mars/Olympus", "01:00-02:00", "Mars/Olympus"),
            ("UTC", "1-2", "\"1-2\""),
            ("UTC", "25:00-01:00", "25:00-01:00"),
            ("UTC", "03:00-03:00", "empty"),
        ] {
            let e = CheckWindows::parse(zone, &[w.into()]).unwrap_err();
            assert!(e.message().contains(want), "{e}");
        }
        let ok = CheckWindows::parse("UTC", &["00:00-24:00".into()]).unwrap();
        assert!(ok.contains(ts("2026-03-01T23:59:59Z")));
    }
}
