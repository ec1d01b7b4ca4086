//! Passes of lookups over every scanned file (index entries, trusted hashes): at a million
//! files their cache misses dominate, so the list is split over every core.

/// Lists shorter than this are looked up on one thread.
const PER_THREAD: usize = 16_384;

/// Maps each of `items` (with its position) through `f`, in order, on every core. Each thread
/// starts from its own `state()` (marks, counters), handed back with the results.
pub(crate) fn on_every_core<T, S, R>(
    items: &[T],
    state: impl Fn() -> S + Sync,
    f: impl Fn(&mut S, usize, &T) -> R + Sync,
) -> (Vec<R>, Vec<S>)
where
    T: Sync,
    S: Send,
    R: Send,
{
    let one = |offset: usize, part: &[T]| {
        let mut s = state();
        let out: Vec<R> = part
            .iter()
            .enumerate()
            .map(|(i, item)| f(&mut s, offset + i, item))
            .collect();
        (out, s)
    };
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get().clamp(1, 8));
    let chunk = items.len().div_ceil(threads).max(PER_THREAD);
    if items.len() <= chunk {
        let (out, s) = one(0, items);
        return (out, vec![s]);
    }
    std::thread::scope(|scope| {
        let others: Vec<_> = items[chunk..]
            .chunks(chunk)
            .enumerate()
            .map(|(c, part)| scope.spawn(move || one((c + 1) * chunk, part)))
            .collect();
        let (mut out, first) = one(0, &items[..chunk]);
        let mut states = vec![first];
        for other in others {
            match other.join() {
                Ok((o, s)) => {
                    out.extend(o);
                    states.push(s);
                }
                // A lookup that panicked is a bug: surface it as the panic it was.
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
        (out, states)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn results_keep_their_order_and_every_item_is_seen_once() {
        for n in [0, 1, PER_THREAD, PER_THREAD * 3 + 7] {
            let items: Vec<usize> = (0..n).collect();
            let (out, states) = on_every_core(
                &items,
                || 0usize,
                |seen, at, &i| {
                    assert_eq!(at, i, "the position handed over");
                    *seen += 1;
                    i * 2
                },
            );
            assert_eq!(out, items.iter().map(|i| i * 2).collect::<Vec<_>>());
            assert_eq!(states.iter().sum::<usize>(), n);
        }
    }
}
