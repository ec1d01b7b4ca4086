//! Phase timings of a run, logged at info level (`tcache -v`): where a run's time goes, phase by
//! phase, including the fixed cost of a fresh process (state load, index read, existence checks).

use std::future::Future;
use std::time::{Duration, Instant};

/// Times consecutive phases: each [`Self::done`] logs the time since the previous one.
#[derive(Debug)]
pub(crate) struct Phases {
    last: Instant,
}

impl Phases {
    /// Starts timing the first phase now.
    pub fn start() -> Self {
        Phases {
            last: Instant::now(),
        }
    }

    /// Ends phase `name`, logging its duration with `items` (what it handled); the next phase
    /// starts now.
    pub fn done(&mut self, name: &'static str, items: usize) {
        let now = Instant::now();
        log(name, now - self.last, items);
        self.last = now;
    }
}

/// Runs `phase` (one of several running concurrently) and logs how long it took.
pub(crate) async fn timed<F: Future>(name: &'static str, phase: F) -> F::Output {
    let started = Instant::now();
    let out = phase.await;
    log(name, started.elapsed(), 0);
    out
}

/// Logs one phase's duration.
pub(crate) fn log(name: &'static str, took: Duration, items: usize) {
    tracing::info!(
        phase = name,
        ms = format_args!("{:.1}", took.as_secs_f64() * 1e3),
        items,
        "phase"
    );
}
