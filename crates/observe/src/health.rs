//! Liveness and readiness: set by the service, read by `/healthz` and `/readyz`.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

/// The state `/readyz` reports: ready once the backend is reachable and the first warm is done.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
    why_not: Mutex<String>,
    role: Mutex<String>,
}

impl Health {
    /// A service that is not ready yet.
    pub fn new() -> Self {
        Health {
            ready: AtomicBool::new(false),
            why_not: Mutex::new("starting".into()),
            role: Mutex::new("starting".into()),
        }
    }

    /// Marks the service ready.
    pub fn set_ready(&self) {
        self.ready.store(true, Ordering::SeqCst);
        if let Ok(mut w) = self.why_not.lock() {
            w.clear();
        }
    }

    /// Marks the service not ready, saying why (shown by `/readyz`).
    pub fn set_not_ready(&self, why: impl Into<String>) {
        self.ready.store(false, Ordering::SeqCst);
        if let Ok(mut w) = self.why_not.lock() {
            *w = why.into();
        }
    }

    /// Whether the service is ready.
    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::SeqCst)
    }

    /// Why the service is not ready (empty when it is).
    pub fn why_not_ready(&self) -> String {
        self.why_not.lock().map(|w| w.clone()).unwrap_or_default()
    }

    /// Records the service's role in its fleet (`holder`, `standby`).
    pub fn set_role(&self, role: &str) {
        if let Ok(mut r) = self.role.lock() {
            role.clone_into(&mut r);
        }
    }

    /// The service's role in its fleet.
    pub fn role(&self) -> String {
        self.role.lock().map(|r| r.clone()).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn readiness_follows_the_last_call() {
        let h = Health::new();
        assert!(!h.is_ready());
        assert_eq!(h.why_not_ready(), "starting");
        h.set_ready();
        assert!(h.is_ready() && h.why_not_ready().is_empty());
        h.set_not_ready("backend unreachable");
        assert!(!h.is_ready());
        assert_eq!(h.why_not_ready(), "backend unreachable");
        h.set_role("standby");
        assert_eq!(h.role(), "standby");
    }
}
