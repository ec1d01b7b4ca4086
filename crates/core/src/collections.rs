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
