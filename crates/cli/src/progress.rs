//! A progress bar on stderr when it is a terminal.

use std::io::IsTerminal;
use std::sync::Arc;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use template_cache::config::{Progress, ProgressHandle};

/// An indicatif bar fed by the engines.
pub struct Bar(ProgressBar);

impl Bar {
    /// A bar if stderr is a terminal, otherwise none.
    pub fn for_terminal() -> Option<ProgressHandle> {
        if !std::io::stderr().is_terminal() {
            return None;
        }
        let bar = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
        Some(ProgressHandle(Arc::new(Bar(bar))))
    }
}

impl Progress for Bar {
    fn phase(&self, name: &'static str, total: u64) {
        if let Ok(style) =
            ProgressStyle::with_template("{msg:>10} [{bar:40}] {pos}/{len} ({per_sec}, {eta})")
        {
            self.0.set_style(style.progress_chars("=> "));
        }
        self.0.set_message(name);
        self.0.set_length(total);
        self.0.set_position(0);
    }

    fn advance(&self, n: u64) {
        self.0.inc(n);
    }

    fn finish(&self) {
        self.0.finish_and_clear();
    }
}
