//! `tcache history`: the run history kept in the cache namespace (every warm, check and
//! resolution of every host, `template_cache::history`), newest first, then its trends: runs per
//! day, p50/p95 duration per kind, inconsistencies found and resolved per day.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Arc;
use std::time::Duration;

use template_cache::history::{self, History, Loaded, RunCounts, RunKind, RunRecord, Timestamp};
use template_cache::{Cache, CacheBackend, CheckMode, Error, ErrorKind, Namespace};

use crate::args::{Cli, HistoryArgs, RunKindArg};
use crate::{EXIT_OK, output};

/// Runs `tcache history`.
pub async fn run(
    cli: &Cli,
    backend: Arc<dyn CacheBackend>,
    ns: Namespace,
    args: &HistoryArgs,
) -> template_cache::Result<u8> {
    let describe = backend.describe();
    let cache = Cache::new(backend);
    let loaded = history::load(&cache, &ns)
        .await
        .map_err(|e| e.context("reading the run history"))?;
    let (history, missing) = match loaded {
        Loaded::Found(h) => (h, None),
        Loaded::Missing { index_exists } => {
            (History::default(), Some(missing_note(&ns, index_exists)))
        }
    };
    if history.skipped > 0 {
        tracing::warn!(
            "{} line(s) of the run history could not be read and were skipped",
            history.skipped
        );
    }
    let kind = args.kind.map(|k| match k {
        RunKindArg::Warm => RunKind::Warm,
        RunKindArg::Check => RunKind::Check,
        RunKindArg::Resolve => RunKind::Resolve,
    });
    let runs = select(&history, kind, args.since, Timestamp::now());
    let shown = &runs[..args.limit.map_or(runs.len(), |n| n.min(runs.len()))];
    if cli.json {
        if let Some(note) = &missing
            && !cli.quiet
        {
            output::eprint(&format!("tcache: {note}"));
        }
        let json = serde_json::to_string(shown).map_err(|e| {
            Error::new(
                ErrorKind::Unexpected,
                format!("encoding the run history: {e}"),
            )
        })?;
        output::print(&format!("{json}\n"));
        return Ok(EXIT_OK);
    }
    let mut out = String::new();
    match &missing {
        Some(note) => {
            let _ = writeln!(out, "{note}");
        }
        None => summary(&mut out, &ns, &describe, &history),
    }
    if missing.is_none() {
        table(&mut out, shown, runs.len());
        trends(&mut out, &runs);
    }
    output::print(&out);
    Ok(EXIT_OK)
}

/// What to say when no history is stored.
fn missing_note(ns: &Namespace, index_exists: bool) -> String {
    if index_exists {
        format!(
            "no run history in namespace {ns}, although it has an index: the history was lost \
             (evicted, expired after 30 days without a run, or deleted), or every run predates \
             history recording; the next run starts a new one"
        )
    } else {
        format!("no run history in namespace {ns}: nothing recorded yet (or it was evicted)")
    }
}

/// The runs of `kind` (or all) started at most `since` before `now`, newest first.
fn select(
    history: &History,
    kind: Option<RunKind>,
    since: Option<Duration>,
    now: Timestamp,
) -> Vec<&RunRecord> {
    let cutoff = since.map(|d| {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        Timestamp::from_millis(now.as_millis().saturating_sub(ms))
    });
    let mut runs: Vec<&RunRecord> = history
        .records
        .iter()
        .rev()
        .filter(|r| kind.is_none_or(|k| r.kind == k))
        .filter(|r| cutoff.is_none_or(|c| r.started_at >= c))
        .collect();
    // Stored in the order runs ended; shown by start, the latest appended first among equals.
    runs.sort_by_key(|r| std::cmp::Reverse(r.started_at));
    runs
}

/// The first line: what is kept, since when, and what the bound dropped.
fn summary(out: &mut String, ns: &Namespace, backend: &str, h: &History) {
    let since = h
        .since
        .map_or_else(|| "an unknown time".to_owned(), |t| t.to_string());
    let _ = write!(
        out,
        "run history of namespace {ns} on {backend}: {} runs kept since {since} ({} recorded, {} \
         dropped to keep it bounded",
        h.records.len(),
        h.appended,
        h.dropped()
    );
    if h.skipped > 0 {
        let _ = write!(out, ", {} unreadable", h.skipped);
    }
    out.push_str(")\n");
}

/// One line per run, newest first.
fn table(out: &mut String, shown: &[&RunRecord], matching: usize) {
    if shown.is_empty() {
        out.push_str("no run matches\n");
        return;
    }
    if shown.len() < matching {
        let _ = writeln!(
            out,
            "the newest {} of {matching} matching runs",
            shown.len()
        );
    }
    let hosts: Vec<String> = shown
        .iter()
        .map(|r| output::escaped(&r.host).into_owned())
        .collect();
    let width = hosts
        .iter()
        .map(|h| h.chars().count())
        .max()
        .unwrap_or(0)
        .max(4);
    let _ = writeln!(
        out,
        "\n{:<24}  {:<7}  {:<width$}  {:>9}  RESULT",
        "STARTED (UTC)", "KIND", "HOST", "DURATION"
    );
    for (r, host) in shown.iter().zip(&hosts) {
        let _ = writeln!(
            out,
            "{:<24}  {:<7}  {host:<width$}  {:>9}  {}",
            r.started_at.to_string(),
            r.kind.as_str(),
            seconds(r.duration),
            result(r)
        );
    }
}

/// What a run did, in a few words.
fn result(r: &RunRecord) -> String {
    if let Some(error) = &r.error {
        let refused = matches!(&r.counts, RunCounts::Resolve(c) if c.refused);
        let what = if refused { "refused" } else { "failed" };
        return format!("{what}: {}", output::escaped(error));
    }
    match &r.counts {
        RunCounts::Warm(c) => {
            let mut s = format!(
                "{} scanned, {} written, {} unchanged, {} failed, {} bytes written",
                c.scanned, c.written, c.unchanged, c.failed, c.bytes_written
            );
            if c.evicted > 0 {
                let _ = write!(s, ", {} evicted", c.evicted);
            }
            if c.cancelled {
                s.push_str(" (interrupted)");
            }
            s
        }
        RunCounts::Check(c) => {
            let mode = match c.mode {
                CheckMode::Quick => "quick",
                CheckMode::Deep => "deep",
            };
            let mut s = format!("{mode}: {} files, {} entries, ", c.files, c.entries);
            if c.inconsistencies() == 0 {
                s.push_str("no inconsistency");
            } else {
                let n = c.inconsistencies();
                let _ = write!(
                    s,
                    "{n} {} ({} missing, {} outdated, {} orphaned, {} corrupt)",
                    if n == 1 {
                        "inconsistency"
                    } else {
                        "inconsistencies"
                    },
                    c.missing,
                    c.outdated,
                    c.orphaned,
                    c.corrupt
                );
            }
            if c.errors > 0 {
                let _ = write!(s, ", {} errors", c.errors);
            }
            s
        }
        RunCounts::Resolve(c) => format!(
            "{}: {} added, {} updated, {} repaired, {} deleted, {} failed",
            if c.dry_run {
                "dry run, would have"
            } else {
                "fixed"
            },
            c.added,
            c.updated,
            c.repaired,
            c.deleted,
            c.failed
        ),
    }
}

/// `d` in seconds, to the millisecond.
fn seconds(d: Duration) -> String {
    format!("{:.3}s", d.as_secs_f64())
}

/// The value below which `q` (0 to 1) of `sorted` lie (nearest rank).
fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// Runs per day and kind, duration percentiles per kind, inconsistencies found and resolved
/// per day, over `runs`.
fn trends(out: &mut String, runs: &[&RunRecord]) {
    if runs.is_empty() {
        return;
    }
    let mut per_day: BTreeMap<String, [usize; 3]> = BTreeMap::new();
    let mut durations: BTreeMap<RunKind, Vec<Duration>> = BTreeMap::new();
    let mut repairs: BTreeMap<String, (u64, u64)> = BTreeMap::new();
    for r in runs {
        let day = r.started_at.date();
        let slot = RunKind::ALL.iter().position(|k| *k == r.kind).unwrap_or(0);
        per_day.entry(day.clone()).or_default()[slot] += 1;
        durations.entry(r.kind).or_default().push(r.duration);
        match &r.counts {
            RunCounts::Check(c) if r.ok => repairs.entry(day).or_default().0 += c.inconsistencies(),
            RunCounts::Resolve(c) if r.ok => repairs.entry(day).or_default().1 += c.resolved(),
            _ => {}
        }
    }
    out.push_str("\ntrends\n");
    let _ = writeln!(
        out,
        "  {:<12}  {:>7}  {:>7}  {:>7}",
        "RUNS/DAY", "warm", "check", "resolve"
    );
    for (day, [w, c, r]) in per_day.iter().rev() {
        let _ = writeln!(out, "  {day:<12}  {w:>7}  {c:>7}  {r:>7}");
    }
    let _ = writeln!(
        out,
        "\n  {:<12}  {:>7}  {:>9}  {:>9}",
        "DURATION", "runs", "p50", "p95"
    );
    for (kind, mut d) in durations {
        d.sort();
        let _ = writeln!(
            out,
            "  {:<12}  {:>7}  {:>9}  {:>9}",
            kind.as_str(),
            d.len(),
            seconds(percentile(&d, 0.5)),
            seconds(percentile(&d, 0.95))
        );
    }
    if !repairs.is_empty() {
        let _ = writeln!(
            out,
            "\n  {:<12}  {:>7}  {:>9}",
            "INCONSISTENT", "found", "resolved"
        );
        for (day, (found, resolved)) in repairs.iter().rev() {
            let _ = writeln!(out, "  {day:<12}  {found:>7}  {resolved:>9}");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use template_cache::history::{CheckCounts, ResolveCounts, WarmCounts};

    use super::*;

    const DAY: u64 = 86_400_000;
    const T0: u64 = 1_700_000_000_000; // 2023-11-14T22:13:20Z

    fn run(kind: RunKind, at: u64, ms: u64) -> RunRecord {
        let counts = match kind {
            RunKind::Warm => RunCounts::Warm(WarmCounts {
                scanned: 5,
                written: 2,
                ..WarmCounts::default()
            }),
            RunKind::Check => RunCounts::Check(CheckCounts {
                files: 5,
                entries: 5,
                missing: 1,
                orphaned: 2,
                ..CheckCounts::default()
            }),
            RunKind::Resolve => RunCounts::Resolve(ResolveCounts {
                added: 1,
                deleted: 2,
                ..ResolveCounts::default()
            }),
        };
        RunRecord {
            kind,
            host: "web\n1".into(),
            pid: 1,
            started_at: Timestamp::from_millis(at),
            duration: Duration::from_millis(ms),
            ok: true,
            error: None,
            counts,
        }
    }

    fn sample() -> History {
        let mut refused = run(RunKind::Resolve, T0 + DAY + 3, 1);
        refused.ok = false;
        refused.error = Some("would delete 9 of 10 entries".into());
        refused.counts = RunCounts::Resolve(ResolveCounts {
            refused: true,
            ..ResolveCounts::default()
        });
        History {
            since: Some(Timestamp::from_millis(T0)),
            appended: 9,
            records: vec![
                run(RunKind::Warm, T0, 1000),
                run(RunKind::Check, T0 + 1, 40),
                run(RunKind::Resolve, T0 + 2, 30),
                run(RunKind::Warm, T0 + DAY, 3000),
                run(RunKind::Check, T0 + DAY + 1, 20),
                refused,
            ],
            skipped: 0,
        }
    }

    #[test]
    fn runs_are_selected_newest_first_by_kind_and_age() {
        let h = sample();
        let now = Timestamp::from_millis(T0 + DAY + 10);
        let all = select(&h, None, None, now);
        let starts: Vec<u64> = all.iter().map(|r| r.started_at.as_millis() - T0).collect();
        assert_eq!(starts, [DAY + 3, DAY + 1, DAY, 2, 1, 0]);
        let checks = select(&h, Some(RunKind::Check), None, now);
        assert!(checks.iter().all(|r| r.kind == RunKind::Check) && checks.len() == 2);
        let recent = select(&h, None, Some(Duration::from_secs(3600)), now);
        assert_eq!(recent.len(), 3);
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let d: Vec<Duration> = (1..=20).map(Duration::from_secs).collect();
        assert_eq!(percentile(&d, 0.5), Duration::from_secs(10));
        assert_eq!(percentile(&d, 0.95), Duration::from_secs(19));
        assert_eq!(percentile(&d[..1], 0.95), Duration::from_secs(1));
        assert_eq!(percentile(&[], 0.5), Duration::ZERO);
    }

    #[test]
    fn the_table_and_trends_read_well() {
        let h = sample();
        let runs = select(&h, None, None, Timestamp::from_millis(T0 + 2 * DAY));
        let mut out = String::new();
        summary(&mut out, &Namespace::default(), "mem://", &h);
        table(&mut out, &runs[..4], runs.len());
        trends(&mut out, &runs);
        assert!(
            out.starts_with(
                "run history of namespace tpl on mem://: 6 runs kept since \
                 2023-11-14T22:13:20.000Z (9 recorded, 3 dropped to keep it bounded)\n\
                 the newest 4 of 6 matching runs\n"
            ),
            "{out}"
        );
        for line in [
            "2023-11-15T22:13:20.003Z  resolve  web\\n1     0.001s  refused: would delete 9 of 10 entries",
            "2023-11-15T22:13:20.001Z  check    web\\n1     0.020s  quick: 5 files, 5 entries, 3 inconsistencies (1 missing, 0 outdated, 2 orphaned, 0 corrupt)",
            "2023-11-15T22:13:20.000Z  warm     web\\n1     3.000s  5 scanned, 2 written, 0 unchanged, 0 failed, 0 bytes written",
            "  2023-11-15          1        1        1",
            "  2023-11-14          1        1        1",
            "  warm                2     1.000s     3.000s",
            "  2023-11-15          3          0",
            "  2023-11-14          3          3",
        ] {
            assert!(out.contains(&format!("{line}\n")), "{line:?} in\n{out}");
        }
        assert!(
            !out.contains("2023-11-14T22:13:20.001Z"),
            "limited to 4 rows:\n{out}"
        );
    }
}
