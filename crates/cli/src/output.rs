//! Printing reports: readable text, or exactly one JSON object on stdout.
//!
//! Everything goes through [`print`] and [`eprint`]: a reader that closes the pipe early
//! (`tcache list | head`) stops the output quietly (no panic, no "Broken pipe" message; the exit
//! code stays the command's own), and any other error writing stdout (a full disk) fails the
//! run with exit 2 ([`stdout_error`]).

use std::fmt::Write as _;
use std::io::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use template_cache::{CheckReport, Error, ResolveReport, WarmReport};

/// Set once writing stdout failed: everything after is dropped.
static STDOUT_CLOSED: AtomicBool = AtomicBool::new(false);
/// The first error writing stdout other than a closed pipe.
static STDOUT_ERROR: Mutex<Option<String>> = Mutex::new(None);

/// Writes `bytes` to stdout. Once the reader has gone (a broken pipe), this and every later
/// write are dropped quietly; another error is kept for [`stdout_error`].
pub fn print_bytes(bytes: &[u8]) {
    if STDOUT_CLOSED.load(Ordering::Relaxed) {
        return;
    }
    let mut out = std::io::stdout().lock();
    if let Err(e) = out.write_all(bytes).and_then(|()| out.flush()) {
        STDOUT_CLOSED.store(true, Ordering::Relaxed);
        if e.kind() != std::io::ErrorKind::BrokenPipe
            && let Ok(mut first) = STDOUT_ERROR.lock()
        {
            first.get_or_insert_with(|| e.to_string());
        }
    }
}

/// Writes `text` to stdout (see [`print_bytes`]).
pub fn print(text: &str) {
    print_bytes(text.as_bytes());
}

/// The error that stopped output to stdout, unless it was the reader closing the pipe.
pub fn stdout_error() -> Option<String> {
    STDOUT_ERROR.lock().ok().and_then(|e| e.clone())
}

/// Writes `text` and a newline to stderr, around the progress display; an error (stderr
/// closed) is ignored: there is nowhere left to report it.
pub fn eprint(text: &str) {
    let line = format!("{text}\n");
    crate::progress::suspended(|| {
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(line.as_bytes()).and_then(|()| err.flush());
    });
}

/// `text` with control characters escaped (`\n`, `\u{1b}`), so that a hostile file name
/// cannot forge lines or terminal sequences in human output.
pub fn escaped(text: &str) -> std::borrow::Cow<'_, str> {
    if text.chars().any(char::is_control) {
        text.chars()
            .map(|c| {
                if c.is_control() {
                    c.escape_debug().to_string()
                } else {
                    c.to_string()
                }
            })
            .collect::<String>()
            .into()
    } else {
        text.into()
    }
}

/// Prints `value` as one line of JSON on stdout.
pub fn print_json(value: &serde_json::Value) {
    print(&format!("{value}\n"));
}

/// Prints a warm report and, with `--prune`, what the prune did (or why it was refused).
pub fn warm(
    json: bool,
    r: &WarmReport,
    prune: Option<&Result<ResolveReport, Error>>,
    backend: &str,
) {
    if json {
        let mut v = serde_json::to_value(r).unwrap_or_default();
        if let (Some(prune), Some(obj)) = (prune, v.as_object_mut()) {
            let prune_value = match prune {
                Ok(p) => serde_json::json!({
                    "deleted": p.deleted, "refused": null, "failed": p.failed,
                }),
                Err(e) => serde_json::json!({
                    "deleted": 0, "refused": e.to_report_string(), "failed": [],
                }),
            };
            obj.insert("prune".into(), prune_value);
        }
        print_json(&v);
        return;
    }
    print(&warm_text(r, prune, backend));
}

/// The human form of a warm report: a summary line, then one line per failure and one for
/// evictions during the run; then what the prune did.
fn warm_text(
    r: &WarmReport,
    prune: Option<&Result<ResolveReport, Error>>,
    backend: &str,
) -> String {
    let mut out = format!(
        "warmed {backend}: {} scanned, {} written, {} unchanged, {} failed, {} bytes written, {} files hashed, {} ms{}\n",
        r.scanned,
        r.written,
        r.unchanged,
        r.failed.len(),
        r.bytes_written,
        r.files_hashed,
        r.duration.as_millis(),
        if r.cancelled { " (interrupted)" } else { "" }
    );
    for f in &r.failed {
        let _ = writeln!(
            out,
            "  failed    {}  ({} attempts): {}",
            escaped(&f.name),
            f.attempts,
            escaped(&f.error)
        );
    }
    if let Some(warning) = &r.eviction_warning {
        let _ = writeln!(out, "  evicted   {}", escaped(warning));
    }
    match prune {
        None => {}
        Some(Ok(p)) => {
            let _ = writeln!(
                out,
                "pruned: {} orphaned entries deleted, {} failed",
                p.deleted,
                p.failed.len()
            );
            failure_lines(&mut out, &p.failed);
        }
        Some(Err(e)) => {
            let _ = writeln!(out, "prune refused, nothing was deleted: {}", e.message());
        }
    }
    out
}

/// Prints a check report and, with `--fix`, the resolution.
pub fn check(
    json: bool,
    r: &CheckReport,
    fix: Option<&Result<ResolveReport, Error>>,
    backend: &str,
) {
    if json {
        let mut v = serde_json::to_value(r).unwrap_or_default();
        if let (Some(fix), Some(obj)) = (fix, v.as_object_mut()) {
            let fix_value = match fix {
                Ok(f) => serde_json::to_value(f).unwrap_or_default(),
                Err(e) => serde_json::json!({
                    "dry_run": false, "added": 0, "updated": 0, "repaired": 0, "deleted": 0,
                    "refused": e.to_report_string(), "failed": [],
                }),
            };
            obj.insert("fix".into(), fix_value);
        }
        print_json(&v);
        return;
    }
    print(&check_text(r, fix, backend));
}

/// The human form of a check report: a summary line, one line per inconsistency and error,
/// then the resolution's summary and failures.
fn check_text(
    r: &CheckReport,
    fix: Option<&Result<ResolveReport, Error>>,
    backend: &str,
) -> String {
    let mut out = String::new();
    let mode = match r.mode {
        template_cache::CheckMode::Quick => "quick",
        template_cache::CheckMode::Deep => "deep",
    };
    let _ = writeln!(
        out,
        "{mode} check of {backend}: {} files, {} entries, {} ms: {}",
        r.files,
        r.entries,
        r.duration.as_millis(),
        match (r.consistent, r.errors.len()) {
            (true, _) => "consistent".to_owned(),
            (false, 0) => format!("{} inconsistencies", r.inconsistencies()),
            (false, n) => format!(
                "{} inconsistencies, {n} errors (what could not be read is never taken as deleted)",
                r.inconsistencies()
            ),
        }
    );
    for (kind, names) in [
        ("missing", &r.missing),
        ("outdated", &r.outdated),
        ("orphaned", &r.orphaned),
        ("corrupt", &r.corrupt),
    ] {
        for n in names {
            let _ = writeln!(out, "  {kind:<9} {}", escaped(n));
        }
    }
    for e in &r.errors {
        let _ = writeln!(
            out,
            "  error     {}: {}",
            escaped(&e.name),
            escaped(&e.error)
        );
    }
    match fix {
        None => {}
        Some(Ok(f)) => {
            let _ = writeln!(
                out,
                "{}: {} added, {} updated, {} repaired, {} deleted, {} failed",
                if f.dry_run {
                    "dry run, would have"
                } else {
                    "fixed"
                },
                f.added,
                f.updated,
                f.repaired,
                f.deleted,
                f.failed.len()
            );
            failure_lines(&mut out, &f.failed);
        }
        Some(Err(e)) => {
            let _ = writeln!(out, "fix refused, nothing was changed: {}", e.message());
        }
    }
    out
}

/// One `failed` line per failure, names and errors escaped.
fn failure_lines(out: &mut String, failed: &[template_cache::Failure]) {
    for e in failed {
        let _ = writeln!(
            out,
            "  failed    {}: {}",
            escaped(&e.name),
            escaped(&e.error)
        );
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn evictions_during_a_warm_are_printed() {
        let r = template_cache::WarmReport {
            scanned: 3,
            written: 3,
            evicted: 2,
            eviction_warning: Some(
                "the cache evicted 2 entries during this warm: about 3.0 MiB needed, 2.0 MiB available".into(),
            ),
            ..Default::default()
        };
        assert!(!r.is_success(), "tcache warm exits 1");
        let text = super::warm_text(&r, None, "redis://x");
        assert!(
            text.starts_with("warmed redis://x: 3 scanned, 3 written"),
            "{text}"
        );
        assert!(
            text.ends_with(
                "\n  evicted   the cache evicted 2 entries during this warm: about 3.0 MiB needed, \
                 2.0 MiB available\n"
            ),
            "{text}"
        );
    }

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(super::escaped("a/b.html"), "a/b.html");
        assert_eq!(
            super::escaped("evil\n  missing   x\u{1b}[31m.html"),
            "evil\\n  missing   x\\u{1b}[31m.html"
        );
    }
}
