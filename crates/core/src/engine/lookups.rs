//! Passes of lookups over every scanned file (index entries, trusted hashes): at a million
//! files their cache misses dominate, so the list is split over every core.

/// Lists shorter than this are looked up on one thread.
const PER_THREAD: usize = 16_384;

/// Maps each position `0..len` through `f`, in order, on every core. Each thread starts from
/// its own `state()` (marks, counters), handed back with the results. The results are written
/// into one list sized up front: no part is held twice while they are gathered.
pub(crate) fn on_every_core<S, R>(
    len: usize,
    state: impl Fn() -> S + Sync,
    f: impl Fn(&mut S, usize) -> R + Sync,
) -> (Vec<R>, Vec<S>)
where
    S: Send,
    R: Send + Default,
{
    let mut out: Vec<R> = Vec::with_capacity(len);
    out.resize_with(len, R::default);
    let one = |offset: usize, out: &mut [R]| {
        let mut s = state();
        for (i, slot) in out.iter_mut().enumerate() {
            *slot = f(&mut s, offset + i);
        }
        s
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().clamp(1, 8));
    let chunk = len.div_ceil(threads).max(PER_THREAD);
    if len <= chunk {
        let s = one(0, &mut out);
        return (out, vec![s]);
    }
    let states = std::thread::scope(|scope| {
        let mut parts = out.chunks_mut(chunk).enumerate();
        let Some((_, first_out)) = parts.next() else {
            return Vec::new();
        };
        let one = &one;
        let others: Vec<_> = parts
            .map(|(c, out)| scope.spawn(move || one(c * chunk, out)))
            .collect();
        let mut states = vec![one(0, first_out)];
        for other in others {
            match other.join() {
                Ok(s) => states.push(s),
                // A lookup that panicked is a bug: surface it as the panic it was.
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        states
    });
    (out, states)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_keep_their_order_and_every_item_is_seen_once() {
        for n in [0, 1, PER_THREAD, PER_THREAD * 3 + 7] {
            let (out, states) = on_every_core(
                n,
                || 0usize,
                |seen, i| {
                    *seen += 1;
                    i * 2
                },
            );
            assert_eq!(out, (0..n).map(|i| i * 2).collect::<Vec<_>>());
            assert_eq!(states.iter().sum::<usize>(), n);
        }
    }
}
