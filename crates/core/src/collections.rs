//! Maps and sets over every template of a tree (names, hashes, index entries): foldhash instead
//! of SipHash, seeded per map, so that a million lookups cost their cache misses, not their
//! hashing.

/// The hasher of [`FastMap`] and [`FastSet`] (randomly seeded per instance).
pub type FastHasher = foldhash::fast::RandomState;

/// A `HashMap` with [`FastHasher`].
pub type FastMap<K, V> = std::collections::HashMap<K, V, FastHasher>;

/// A `HashSet` with [`FastHasher`].
pub type FastSet<K> = std::collections::HashSet<K, FastHasher>;

/// An empty [`FastMap`] with room for `n` entries.
pub fn map_with_capacity<K, V>(n: usize) -> FastMap<K, V> {
    FastMap::with_capacity_and_hasher(n, FastHasher::default())
}

/// A set of uniformly distributed 128-bit ids (hash prefixes): sorted, 16 bytes per id plus an
/// index of up to 65,536 buckets by the top bits, about half the memory of a [`FastSet`] of
/// them; a lookup searches one bucket (a dozen ids).
#[derive(Debug, Default)]
pub struct IdSet {
    ids: Vec<u128>,
    /// Where each bucket starts in `ids`, and `ids.len()` last.
    starts: Vec<usize>,
    /// Bits of an id that choose its bucket.
    bits: u32,
}

impl IdSet {
    /// The set of `ids` (duplicates allowed).
    pub fn new(ids: impl Iterator<Item = u128>) -> Self {
        let mut ids: Vec<u128> = ids.collect();
        ids.sort_unstable();
        ids.dedup();
        ids.shrink_to_fit();
        // About 16 ids per bucket.
        let bits = (usize::BITS - (ids.len() / 16).leading_zeros()).min(16);
        let mut starts = Vec::with_capacity((1 << bits) + 1);
        let mut i = 0;
        for b in 0..1u128 << bits {
            while i < ids.len() && bucket(ids[i], bits) < b {
                i += 1;
            }
            starts.push(i);
        }
        starts.push(ids.len());
        IdSet { ids, starts, bits }
    }

    /// Whether `id` is in the set.
    pub fn contains(&self, id: u128) -> bool {
        let b = bucket(id, self.bits) as usize;
        match (self.starts.get(b), self.starts.get(b + 1)) {
            (Some(&start), Some(&end)) => self.ids[start..end].binary_search(&id).is_ok(),
            _ => false,
        }
    }

    /// How many ids the set holds.
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    /// Whether the set is empty.
    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }
}

/// The bucket of `id` among `2^bits`: its top bits.
fn bucket(id: u128, bits: u32) -> u128 {
    id.checked_shr(128 - bits).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn id_sets_agree_with_hash_sets(
            ids in proptest::collection::vec(any::<u128>(), 0..3000),
            probes in proptest::collection::vec(any::<u128>(), 0..100),
            top in 0u32..128,
        ) {
            // Ids of every spread: uniform, and crowded into few buckets (high bits cleared).
            let ids: Vec<u128> = ids.into_iter().map(|i| i.checked_shr(top).unwrap_or(0)).collect();
            let set = IdSet::new(ids.iter().copied());
            let model: FastSet<u128> = ids.iter().copied().collect();
            prop_assert_eq!(set.len(), model.len());
            for id in ids.iter().chain(&probes) {
                prop_assert_eq!(set.contains(*id), model.contains(id));
            }
        }
    }
}
