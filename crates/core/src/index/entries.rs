//! [`IndexEntries`]: the entries of an index by template name, held compactly: every name in
//! one buffer, every entry in one vector, and a hash table of 4-byte positions. About 66 bytes
//! per entry plus its name, with no allocation per entry, where a `HashMap<String, IndexEntry>`
//! costs twice that at a million templates.

use std::hash::BuildHasher;

use hashbrown::HashTable;

use super::IndexEntry;
use crate::collections::FastHasher;

/// Bits of [`Slot::place`] holding the name's length; the bit above them flags a removed
/// slot, and the rest hold where the name starts.
const LEN_BITS: u32 = 23;
const REMOVED: u64 = 1 << LEN_BITS;
const START_SHIFT: u32 = LEN_BITS + 1;
/// The longest name a slot can hold (8 MiB: far beyond any path a scan accepts).
const MAX_NAME: usize = (1 << LEN_BITS) - 1;
/// The furthest a name can start in the buffer (1 TiB).
const MAX_START: usize = (1 << (64 - START_SHIFT)) - 1;

/// One entry and where its name lies in the names buffer: 56 bytes.
#[derive(Clone, Copy, Debug)]
struct Slot {
    entry: IndexEntry,
    /// Start (high bits), removed flag, length (low [`LEN_BITS`] bits).
    place: u64,
}

impl Slot {
    fn range(&self) -> std::ops::Range<usize> {
        let start = (self.place >> START_SHIFT) as usize;
        start..start + (self.place & MAX_NAME as u64) as usize
    }

    fn removed(&self) -> bool {
        self.place & REMOVED != 0
    }
}

/// Index entries by template name: a compact map (see the module documentation).
#[derive(Clone, Default)]
pub struct IndexEntries {
    names: String,
    slots: Vec<Slot>,
    table: HashTable<u32>,
    hasher: FastHasher,
    removed: usize,
}

impl IndexEntries {
    /// An empty map with room for `n` entries.
    pub fn with_capacity(n: usize) -> Self {
        IndexEntries {
            slots: Vec::with_capacity(n),
            table: HashTable::with_capacity(n),
            ..Default::default()
        }
    }

    /// How many names it holds.
    pub fn len(&self) -> usize {
        self.slots.len() - self.removed
    }

    /// Whether it holds no name.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The entry of `name`.
    pub fn get(&self, name: &str) -> Option<&IndexEntry> {
        let hash = self.hasher.hash_one(name);
        self.table
            .find(hash, |&i| self.name_at(i) == name)
            .map(|&i| &self.slots[i as usize].entry)
    }

    /// Whether it holds `name`.
    pub fn contains_key(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Sets the entry of `name`, returning the previous one.
    pub fn insert(&mut self, name: &str, entry: IndexEntry) -> Option<IndexEntry> {
        let hash = self.hasher.hash_one(name);
        let (names, slots) = (&self.names, &mut self.slots);
        if let Some(&i) = self
            .table
            .find(hash, |&i| name_of(names, &slots[i as usize]) == name)
        {
            return Some(std::mem::replace(&mut slots[i as usize].entry, entry));
        }
        let (start, Ok(i)) = (self.names.len(), u32::try_from(slots.len())) else {
            return None; // over 4 billion entries: no index comes near
        };
        if name.len() > MAX_NAME || start > MAX_START {
            return None; // no template name comes near (the scan refuses long paths first)
        }
        slots.push(Slot {
            entry,
            place: ((start as u64) << START_SHIFT) | name.len() as u64,
        });
        self.names.push_str(name);
        let (names, slots, hasher) = (&self.names, &self.slots, &self.hasher);
        self.table.insert_unique(hash, i, |&j| {
            hasher.hash_one(name_of(names, &slots[j as usize]))
        });
        None
    }

    /// Removes `name`, returning its entry. Its name's bytes stay in the buffer until the map
    /// is dropped (removals are few: what one run deletes).
    pub fn remove(&mut self, name: &str) -> Option<IndexEntry> {
        let hash = self.hasher.hash_one(name);
        let (names, slots) = (&self.names, &self.slots);
        let found = self
            .table
            .find_entry(hash, |&i| name_of(names, &slots[i as usize]) == name)
            .ok()?;
        let (i, _) = found.remove();
        let slot = &mut self.slots[i as usize];
        slot.place |= REMOVED;
        self.removed += 1;
        Some(slot.entry)
    }

    /// Every name, in insertion order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.iter().map(|(n, _)| n)
    }

    /// Every name and entry, in insertion order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &IndexEntry)> {
        self.slots
            .iter()
            .filter(|s| !s.removed())
            .map(|s| (name_of(&self.names, s), &s.entry))
    }

    /// A blank set of marks for [`Self::get_marking`].
    pub fn marks(&self) -> Marks {
        Marks(vec![false; self.slots.len()])
    }

    /// The entry of `name`, marking it in `marks` (made by [`Self::marks`] of this map, before
    /// any insertion) as matched: [`Self::unmarked`] then lists the names nothing matched,
    /// with no set of the other side's names.
    pub fn get_marking(&self, name: &str, marks: &mut Marks) -> Option<&IndexEntry> {
        let hash = self.hasher.hash_one(name);
        let i = *self.table.find(hash, |&i| self.name_at(i) == name)? as usize;
        if let Some(m) = marks.0.get_mut(i) {
            *m = true;
        }
        Some(&self.slots[i].entry)
    }

    /// The names that no [`Self::get_marking`] call marked in `marks`.
    pub fn unmarked<'a>(&'a self, marks: &'a Marks) -> impl Iterator<Item = &'a str> {
        self.slots
            .iter()
            .enumerate()
            .filter(|(i, s)| !s.removed() && !marks.0.get(*i).copied().unwrap_or(false))
            .map(|(_, s)| name_of(&self.names, s))
    }

    fn name_at(&self, i: u32) -> &str {
        name_of(&self.names, &self.slots[i as usize])
    }
}

/// Which entries of an [`IndexEntries`] a pass matched: one flag per entry.
#[derive(Clone, Debug, Default)]
pub struct Marks(Vec<bool>);

impl Marks {
    /// Adds the marks of `other` (another part of the same pass over the same entries).
    pub fn absorb(&mut self, other: &Marks) {
        for (mine, theirs) in self.0.iter_mut().zip(&other.0) {
            *mine |= *theirs;
        }
    }
}

fn name_of<'a>(names: &'a str, slot: &Slot) -> &'a str {
    names.get(slot.range()).unwrap_or_default()
}

impl std::fmt::Debug for IndexEntries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_map().entries(self.iter()).finish()
    }
}

/// Equal when they hold the same names with the same entries, whatever the order.
impl PartialEq for IndexEntries {
    fn eq(&self, other: &Self) -> bool {
        self.len() == other.len() && self.iter().all(|(n, e)| other.get(n) == Some(e))
    }
}

impl Eq for IndexEntries {}

impl<N: AsRef<str>> Extend<(N, IndexEntry)> for IndexEntries {
    fn extend<I: IntoIterator<Item = (N, IndexEntry)>>(&mut self, items: I) {
        for (n, e) in items {
            self.insert(n.as_ref(), e);
        }
    }
}

impl<N: AsRef<str>> FromIterator<(N, IndexEntry)> for IndexEntries {
    fn from_iter<I: IntoIterator<Item = (N, IndexEntry)>>(items: I) -> Self {
        let mut out = IndexEntries::default();
        out.extend(items);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::key::ContentHash;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn entry(n: u8) -> IndexEntry {
        IndexEntry {
            hash: ContentHash([n; 32]),
            size: u64::from(n),
            pending: n.is_multiple_of(2),
        }
    }

    #[test]
    fn behaves_as_a_map() {
        let mut m = IndexEntries::with_capacity(2);
        assert!(m.is_empty());
        assert_eq!(m.insert("a/b.html", entry(1)), None);
        assert_eq!(m.insert("a/c.html", entry(2)), None);
        assert_eq!(m.insert("a/b.html", entry(3)), Some(entry(1)));
        assert_eq!((m.len(), m.get("a/b.html")), (2, Some(&entry(3))));
        assert_eq!(m.remove("a/b.html"), Some(entry(3)));
        assert_eq!(m.remove("a/b.html"), None);
        assert!(!m.contains_key("a/b.html") && m.contains_key("a/c.html"));
        assert_eq!(m.insert("a/b.html", entry(4)), None);
        assert_eq!(m.keys().collect::<Vec<_>>(), ["a/c.html", "a/b.html"]);
        let mut marks = m.marks();
        assert_eq!(m.get_marking("a/b.html", &mut marks), Some(&entry(4)));
        assert_eq!(m.get_marking("nope", &mut marks), None);
        assert_eq!(m.unmarked(&marks).collect::<Vec<_>>(), ["a/c.html"]);
        let same: IndexEntries = [("a/b.html", entry(4)), ("a/c.html", entry(2))]
            .into_iter()
            .collect();
        assert_eq!(m, same);
    }

    #[test]
    fn slots_stay_small_and_hold_long_names() {
        assert_eq!(std::mem::size_of::<Slot>(), 56);
        let mut m = IndexEntries::default();
        let long = "d/".repeat(2000) + "x.html";
        assert_eq!(m.insert(&long, entry(1)), None);
        assert_eq!(m.insert("after", entry(2)), None);
        assert_eq!(
            (m.get(&long), m.get("after")),
            (Some(&entry(1)), Some(&entry(2)))
        );
        assert_eq!(m.remove(&long), Some(entry(1)));
        assert_eq!(m.keys().collect::<Vec<_>>(), ["after"]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn agrees_with_a_hash_map(ops in proptest::collection::vec((any::<bool>(), 0u8..40, any::<u8>()), 0..300)) {
            let (mut m, mut model) = (IndexEntries::default(), HashMap::new());
            for (insert, name, e) in ops {
                let name = format!("dir/{name}.html");
                if insert {
                    prop_assert_eq!(m.insert(&name, entry(e)), model.insert(name, entry(e)));
                } else {
                    prop_assert_eq!(m.remove(&name), model.remove(&name));
                }
            }
            prop_assert_eq!(m.len(), model.len());
            for (n, e) in &model {
                prop_assert_eq!(m.get(n), Some(e));
            }
            prop_assert_eq!(m.iter().count(), model.len());
        }
    }
}
