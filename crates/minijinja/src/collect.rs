//! Miss collection: while [`crate::CachedEnvironment::render`] runs a render on this thread, the
//! loader records the names it does not hold instead of waiting for them, so the render never
//! blocks; the caller loads them asynchronously and renders again.

use std::cell::RefCell;
use std::collections::HashSet;

/// What one collecting render found.
#[derive(Debug, Default)]
pub(crate) struct Collect {
    /// Names the render asked for that were not loaded (in the order asked).
    pub(crate) missing: Vec<String>,
    /// Names already looked up for this render and known not to exist: the loader answers
    /// `Ok(None)` for them (so `ignore missing` and "template not found" behave as usual).
    pub(crate) absent: HashSet<String>,
}

thread_local! {
    static ACTIVE: RefCell<Option<Collect>> = const { RefCell::new(None) };
}

/// Runs `f` with miss collection active on this thread and returns its result with what was
/// collected. Nesting restores the outer collection afterwards, also when `f` panics.
pub(crate) fn collecting<R>(state: Collect, f: impl FnOnce() -> R) -> (R, Collect) {
    struct Restore(Option<Collect>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let outer = self.0.take();
            ACTIVE.with(|a| *a.borrow_mut() = outer);
        }
    }
    let outer = ACTIVE.with(|a| a.borrow_mut().replace(state));
    let restore = Restore(outer);
    let result = f();
    let ours = ACTIVE.with(|a| a.borrow_mut().take());
    drop(restore); // puts the outer collection (or none) back
    (result, ours.unwrap_or_default())
}

/// What the loader should answer for a name it does not hold.
pub(crate) enum Miss {
    /// No collection is active: load the template (blocking the thread).
    NotCollecting,
    /// Known not to exist for this render.
    Absent,
    /// Recorded; answer with a "not loaded yet" error.
    Recorded,
}

/// Records a miss of `name` if a collecting render is running on this thread.
pub(crate) fn record_miss(name: &str) -> Miss {
    ACTIVE.with(|a| match a.borrow_mut().as_mut() {
        None => Miss::NotCollecting,
        Some(c) if c.absent.contains(name) => Miss::Absent,
        Some(c) => {
            if !c.missing.iter().any(|m| m == name) {
                c.missing.push(name.to_owned());
            }
            Miss::Recorded
        }
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::panic)]
    use super::*;

    #[test]
    fn records_only_while_collecting_and_restores_the_outer_state() {
        assert!(matches!(record_miss("a"), Miss::NotCollecting));
        let mut absent = HashSet::new();
        absent.insert("gone".to_owned());
        let ((), got) = collecting(
            Collect {
                missing: Vec::new(),
                absent,
            },
            || {
                assert!(matches!(record_miss("a"), Miss::Recorded));
                assert!(matches!(record_miss("a"), Miss::Recorded));
                assert!(matches!(record_miss("gone"), Miss::Absent));
                let ((), inner) = collecting(Collect::default(), || {
                    assert!(matches!(record_miss("b"), Miss::Recorded));
                });
                assert_eq!(inner.missing, ["b"]);
                assert!(matches!(record_miss("c"), Miss::Recorded));
            },
        );
        assert_eq!(got.missing, ["a", "c"]);
        assert!(matches!(record_miss("a"), Miss::NotCollecting));
    }

    #[test]
    fn a_panicking_render_leaves_no_collection_behind() {
        let r = std::panic::catch_unwind(|| {
            collecting(Collect::default(), || panic!("render panicked"));
        });
        assert!(r.is_err());
        assert!(matches!(record_miss("a"), Miss::NotCollecting));
    }
}
