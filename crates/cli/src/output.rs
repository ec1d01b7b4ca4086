//! Printing reports: readable text, or exactly one JSON object on stdout.

use template_cache::{CheckReport, Error, ResolveReport, WarmReport};

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
    println!("{value}");
}

/// Prints a warm report.
pub fn warm(json: bool, r: &WarmReport, backend: &str) {
    if json {
        print_json(&serde_json::to_value(r).unwrap_or_default());
        return;
    }
    print!("{}", warm_text(r, backend));
}

/// The human form of a warm report: a summary line, then one line per failure and one for
/// evictions during the run.
fn warm_text(r: &WarmReport, backend: &str) -> String {
    use std::fmt::Write as _;
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
    let mode = match r.mode {
        template_cache::CheckMode::Quick => "quick",
        template_cache::CheckMode::Deep => "deep",
    };
    println!(
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
            println!("  {kind:<9} {}", escaped(n));
        }
    }
    for e in &r.errors {
        println!("  error     {}: {}", escaped(&e.name), escaped(&e.error));
    }
    match fix {
        None => {}
        Some(Ok(f)) => {
            println!(
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
            for e in &f.failed {
                println!("  failed    {}: {}", escaped(&e.name), escaped(&e.error));
            }
        }
        Some(Err(e)) => println!("fix refused, nothing was changed: {}", e.message()),
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
        let text = super::warm_text(&r, "redis://x");
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
