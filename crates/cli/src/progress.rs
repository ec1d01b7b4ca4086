//! Progress on stderr when it is a terminal: each engine phase by name, with its count, rate,
//! bytes and ETA (a spinner with a count for the tree walk, whose total is unknown).
//!
//! Never shown when stderr is not a terminal, with `--json` or with `-q` (`commands::engine_config`
//! decides). Log lines written while a bar is shown suspend it ([`suspended`]), so they never
//! tear it.

use std::io::IsTerminal;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use indicatif::{
    HumanBytes, HumanCount, ProgressBar, ProgressDrawTarget, ProgressState, ProgressStyle,
};
use template_cache::config::{Progress, ProgressHandle};

/// A phase with a known number of items: a bar.
const BAR_TEMPLATE: &str = "{msg:>9} [{bar:30}] {human_pos}/{human_len} ({rate}{moved}, ETA {eta})";
/// A phase whose total is unknown (the tree walk): a spinner with the count so far.
const SPINNER_TEMPLATE: &str = "{msg:>9} {spinner} {human_pos} ({rate}, {elapsed})";
/// How often the display refreshes while nothing advances (a stalled backend, a rate limit).
const TICK: Duration = Duration::from_millis(100);

/// The bar on screen, if any: log lines suspend it while they are written.
static SHOWN: Mutex<Option<ProgressBar>> = Mutex::new(None);

/// Runs `write` (a log line to stderr) with the progress bar, if one is shown, cleared first and
/// redrawn after.
pub fn suspended<R>(write: impl FnOnce() -> R) -> R {
    let bar = SHOWN.lock().ok().and_then(|b| b.clone());
    match bar {
        Some(bar) => bar.suspend(write),
        None => write(),
    }
}

/// The progress display fed by the engines: one indicatif bar (or spinner) per phase.
pub struct Bar {
    /// The phase on screen.
    current: Mutex<Option<Phase>>,
    /// Where each phase draws (stderr; hidden in tests).
    target: fn() -> ProgressDrawTarget,
    /// Whether log lines suspend this display ([`SHOWN`]).
    shown: bool,
}

/// One phase's bar, and the bytes it moved.
struct Phase {
    bar: ProgressBar,
    bytes: Arc<AtomicU64>,
}

impl Bar {
    /// A display on stderr if it is a terminal, otherwise none.
    pub fn for_terminal() -> Option<ProgressHandle> {
        if !std::io::stderr().is_terminal() {
            return None;
        }
        let mut bar = Bar::new(ProgressDrawTarget::stderr);
        bar.shown = true;
        Some(ProgressHandle(Arc::new(bar)))
    }

    /// A display whose phases draw to `target()`.
    fn new(target: fn() -> ProgressDrawTarget) -> Self {
        Bar {
            current: Mutex::new(None),
            target,
            shown: false,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Option<Phase>> {
        self.current.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Replaces the phase on screen with `name`, drawn with `template`. The new bar is set up
    /// completely before it draws, so no line ever shows one phase's name with another's
    /// numbers.
    fn start(&self, name: &'static str, template: &str, total: Option<u64>) {
        let bytes = Arc::new(AtomicU64::new(0));
        let bar =
            ProgressBar::with_draw_target(total, ProgressDrawTarget::hidden()).with_message(name);
        if let Some(style) = style(template, &bytes) {
            bar.set_style(style);
        }
        let mut current = self.lock();
        if let Some(old) = current.take() {
            end(&old.bar);
        }
        bar.set_draw_target((self.target)());
        bar.enable_steady_tick(TICK);
        // Every phase is shown at least once, however short.
        bar.force_draw();
        if self.shown
            && let Ok(mut shown) = SHOWN.lock()
        {
            *shown = Some(bar.clone());
        }
        *current = Some(Phase { bar, bytes });
    }
}

/// Stops `bar` and clears its line.
fn end(bar: &ProgressBar) {
    bar.disable_steady_tick();
    bar.finish_and_clear();
}

/// The style of `template`, with the keys `{rate}` (items per second) and `{moved}` (the
/// phase's `bytes`).
fn style(template: &str, bytes: &Arc<AtomicU64>) -> Option<ProgressStyle> {
    let bytes = Arc::clone(bytes);
    let style = ProgressStyle::with_template(template)
        .ok()?
        .progress_chars("=> ")
        .tick_chars("-\\|/ ")
        .with_key("rate", |s: &ProgressState, w: &mut dyn std::fmt::Write| {
            let _ = write!(w, "{}/s", HumanCount(s.per_sec().max(0.0) as u64));
        })
        .with_key(
            "moved",
            move |s: &ProgressState, w: &mut dyn std::fmt::Write| {
                let _ = w.write_str(&moved(bytes.load(Ordering::Relaxed), s.elapsed()));
            },
        );
    Some(style)
}

/// The bytes part of a progress line: `, 12.5 MiB, 3.1 MiB/s`, or nothing before any byte moved.
fn moved(bytes: u64, elapsed: Duration) -> String {
    if bytes == 0 {
        return String::new();
    }
    let secs = elapsed.as_secs_f64();
    let rate = if secs > 0.0 {
        (bytes as f64 / secs) as u64
    } else {
        0
    };
    format!(", {}, {}/s", HumanBytes(bytes), HumanBytes(rate))
}

impl Progress for Bar {
    fn phase(&self, name: &'static str, total: u64) {
        self.start(name, BAR_TEMPLATE, Some(total));
    }

    fn phase_unknown_total(&self, name: &'static str) {
        self.start(name, SPINNER_TEMPLATE, None);
    }

    fn advance(&self, n: u64) {
        if let Some(p) = self.lock().as_ref() {
            p.bar.inc(n);
        }
    }

    fn advance_bytes(&self, bytes: u64) {
        if let Some(p) = self.lock().as_ref() {
            p.bytes.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    fn finish(&self) {
        if let Some(p) = self.lock().take() {
            end(&p.bar);
        }
        if self.shown
            && let Ok(mut shown) = SHOWN.lock()
        {
            *shown = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hidden() -> Bar {
        Bar::new(ProgressDrawTarget::hidden)
    }

    /// The phase on screen: its bar, name, position, length and bytes.
    fn shown(bar: &Bar) -> (ProgressBar, String, u64, Option<u64>, u64) {
        let current = bar.lock();
        let p = current.as_ref().expect("a phase is shown");
        (
            p.bar.clone(),
            p.bar.message(),
            p.bar.position(),
            p.bar.length(),
            p.bytes.load(Ordering::Relaxed),
        )
    }

    #[test]
    fn each_phase_starts_from_zero_with_its_name_and_total() {
        let bar = hidden();
        bar.phase_unknown_total("scanning");
        let (scanning, name, pos, len, _) = shown(&bar);
        assert_eq!(
            (name.as_str(), pos, len),
            ("scanning", 0, None),
            "no known total"
        );
        bar.advance(256);
        bar.advance(44);
        assert_eq!(shown(&bar).2, 300, "the spinner counts");

        bar.phase("hashing", 120);
        assert!(scanning.is_finished(), "the previous phase is cleared");
        let (hashing, name, pos, len, bytes) = shown(&bar);
        assert_eq!(
            (name.as_str(), pos, len, bytes),
            ("hashing", 0, Some(120), 0),
            "a new phase starts from zero"
        );
        bar.advance(100);
        bar.advance_bytes(4096);
        bar.advance(20);
        let (_, _, pos, len, bytes) = shown(&bar);
        assert_eq!((pos, len, bytes), (120, Some(120), 4096));

        bar.phase("writing", 7);
        assert!(hashing.is_finished());
        let (writing, name, pos, len, bytes) = shown(&bar);
        assert_eq!(
            (name.as_str(), pos, len, bytes),
            ("writing", 0, Some(7), 0),
            "counts and bytes are per phase"
        );
        bar.advance(7);
        bar.finish();
        assert!(writing.is_finished());
        assert!(bar.lock().is_none(), "nothing left on screen");
        // Advances after the run are ignored.
        bar.advance(1);
        bar.advance_bytes(1);
    }

    #[test]
    fn a_finished_display_comes_back_for_the_next_run() {
        // A check and then its resolution, or the runs of a periodic warm, share one display.
        let bar = hidden();
        bar.phase("verifying", 3);
        bar.advance(3);
        bar.finish();
        bar.phase("deleting", 5);
        let (deleting, name, pos, len, _) = shown(&bar);
        assert!(!deleting.is_finished());
        assert_eq!((name.as_str(), pos, len), ("deleting", 0, Some(5)));
        bar.finish();
    }

    #[test]
    fn the_styles_parse_and_bytes_read_as_sizes_and_rates() {
        let bytes = Arc::new(AtomicU64::new(0));
        assert!(style(BAR_TEMPLATE, &bytes).is_some());
        assert!(style(SPINNER_TEMPLATE, &bytes).is_some());
        assert_eq!(moved(0, Duration::from_secs(1)), "");
        assert_eq!(
            moved(3 * 1024 * 1024, Duration::from_secs(2)),
            ", 3.00 MiB, 1.50 MiB/s"
        );
        assert_eq!(moved(10, Duration::ZERO), ", 10 B, 0 B/s");
    }
}
