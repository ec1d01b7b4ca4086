//! [`IndexEntries`]: the entries of an index by template name, held compactly: every entry in
//! one vector under a 127-bit id of its name, and a hash table of 4-byte positions. With names
//! (every name in one buffer) that is about 74 bytes per entry plus its name; without names
//! (what a comparison with a scan needs, see [`super::load_without_names`]) about 66 bytes,
//! where a `HashMap<String, IndexEntry>` costs twice as much at a million templates.

use hashbrown::HashTable;
use xxhash_rust::xxh3::xxh3_128_with_seed;

use super::IndexEntry;
use crate::format::key::ContentHash;

/// Bits of a name's place holding its length; the rest hold where it starts.
const LEN_BITS: u32 = 24;
/// The longest name the map holds (16 MiB: far beyond any path a scan accepts).
const MAX_NAME: usize = (1 << LEN_BITS) - 1;
/// The furthest a name can start in the buffer (1 TiB).
const MAX_START: usize = (1 << (64 - LEN_BITS)) - 1;

/// One entry and the id of its name: 56 bytes.
#[derive(Clone, Copy, Debug)]
struct Slot {
    hash: ContentHash,
    size: u64,
    /// The name's id (its lowest bit clear) with the entry's `pending` flag in that bit, as
    /// two words: a `u128` would align the slot to 64 bytes.
    id_pending: [u64; 2],
}

impl Slot {
    fn new(id: u128, e: IndexEntry) -> Self {
        let id = id | u128::from(e.pending);
        Slot {
            hash: e.hash,
            size: e.size,
            id_pending: [id as u64, (id >> 64) as u64],
        }
    }

    fn id(&self) -> u128 {
        (u128::from(self.id_pending[1]) << 64 | u128::from(self.id_pending[0])) & !1
    }

    fn entry(&self) -> IndexEntry {
        IndexEntry {
            hash: self.hash,
            size: self.size,
            pending: self.id_pending[0] & 1 == 1,
        }
    }
}

/// The names of the entries, by slot.
#[derive(Clone, Debug, Default)]
struct Names {
    buffer: String,
    /// Start (high bits) and length (low [`LEN_BITS`] bits) of each slot's name.
    places: Vec<u64>,
}

impl Names {
    fn get(&self, slot: usize) -> &str {
        let Some(&place) = self.places.get(slot) else {
            return "";
        };
        let start = (place >> LEN_BITS) as usize;
        let end = start + (place & MAX_NAME as u64) as usize;
        self.buffer.get(start..end).unwrap_or_default()
    }
}

/// Index entries by template name: a compact map (see the module documentation).
///
/// Names are known by a 127-bit hash keyed with a seed drawn per map, so that no one can
/// choose two names that collide. A map made [`Self::without_names`] answers lookups by name
/// but cannot list its names: [`Self::keys`], [`Self::iter`] and [`Self::unmarked`] yield
/// nothing, and [`Self::is_unmarked`] recognises unmatched names read again from the index.
#[derive(Clone)]
pub struct IndexEntries {
    slots: Vec<Slot>,
    table: HashTable<u32>,
    names: Option<Names>,
    /// One flag per slot once any entry was removed (empty before).
    removed: Vec<bool>,
    removed_count: usize,
    seed: u64,
}

impl Default for IndexEntries {
    fn default() -> Self {
        IndexEntries::with_capacity(0)
    }
}

impl IndexEntries {
    /// An empty map with room for `n` entries and their names.
    pub fn with_capacity(n: usize) -> Self {
        let mut m = IndexEntries::without_names(n);
        m.names = Some(Names {
            buffer: String::new(),
            places: Vec::with_capacity(n),
        });
        m
    }

    /// An empty map with room for `n` entries that keeps no names (see the type's
    /// documentation).
    pub fn without_names(n: usize) -> Self {
        IndexEntries {
            slots: Vec::with_capacity(n),
            table: HashTable::with_capacity(n),
            names: None,
            removed: Vec::new(),
            removed_count: 0,
            seed: fastrand::u64(..),
        }
    }

    /// Whether it keeps names (made by [`Self::with_capacity`] or [`Default`]).
    pub fn has_names(&self) -> bool {
        self.names.is_some()
    }

    /// How many names it holds.
    pub fn len(&self) -> usize {
        self.slots.len() - self.removed_count
    }

    /// Whether it holds no name.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn id_of(&self, name: &str) -> u128 {
        // The lowest bit holds a slot's pending flag.
        xxh3_128_with_seed(name.as_bytes(), self.seed) & !1
    }

    fn find(&self, id: u128) -> Option<usize> {
        let slots = &self.slots;
        self.table
            .find(table_hash(id), |&i| slots[i as usize].id() == id)
            .map(|&i| i as usize)
    }

    /// The entry of `name`.
    pub fn get(&self, name: &str) -> Option<IndexEntry> {
        self.find(self.id_of(name)).map(|i| self.slots[i].entry())
    }

    /// Whether it holds `name`.
    pub fn contains_key(&self, name: &str) -> bool {
        self.get(name).is_some()
    }

    /// Sets the entry of `name`, returning the previous one.
    pub fn insert(&mut self, name: &str, entry: IndexEntry) -> Option<IndexEntry> {
        let id = self.id_of(name);
        if let Some(i) = self.find(id) {
            let old = self.slots[i].entry();
            self.slots[i] = Slot::new(id, entry);
            return Some(old);
        }
        let Ok(i) = u32::try_from(self.slots.len()) else {
            return None; // over 4 billion entries: no index comes near
        };
        if let Some(names) = &mut self.names {
            let start = names.buffer.len();
            if name.len() > MAX_NAME || start > MAX_START {
                return None; // no template name comes near (the scan refuses long paths first)
            }
            names.buffer.push_str(name);
            names
                .places
                .push(((start as u64) << LEN_BITS) | name.len() as u64);
        }
        self.slots.push(Slot::new(id, entry));
        if !self.removed.is_empty() {
            self.removed.push(false);
        }
        let slots = &self.slots;
        self.table
            .insert_unique(table_hash(id), i, |&j| table_hash(slots[j as usize].id()));
        None
    }

    /// Removes `name`, returning its entry. Its slot (and name) stay until the map is dropped
    /// (removals are few: what one run deletes).
    pub fn remove(&mut self, name: &str) -> Option<IndexEntry> {
        let id = self.id_of(name);
        let slots = &self.slots;
        let found = self
            .table
            .find_entry(table_hash(id), |&i| slots[i as usize].id() == id)
            .ok()?;
        let (i, _) = found.remove();
        let i = i as usize;
        if self.removed.is_empty() {
            self.removed = vec![false; self.slots.len()];
        }
        self.removed[i] = true;
        self.removed_count += 1;
        Some(self.slots[i].entry())
    }

    fn is_removed(&self, i: usize) -> bool {
        self.removed.get(i).copied().unwrap_or(false)
    }

    /// Every name, in insertion order (none without names).
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.iter().map(|(n, _)| n)
    }

    /// Every name and entry, in insertion order (none without names).
    pub fn iter(&self) -> impl Iterator<Item = (&str, IndexEntry)> {
        let names = self.names.as_ref();
        self.slots
            .iter()
            .enumerate()
            .filter(move |(i, _)| names.is_some() && !self.is_removed(*i))
            .map(move |(i, s)| (names.map_or("", |n| n.get(i)), s.entry()))
    }

    /// A blank set of marks for [`Self::get_marking`].
    pub fn marks(&self) -> Marks {
        Marks(vec![false; self.slots.len()])
    }

    /// The entry of `name`, marking it in `marks` (made by [`Self::marks`] of this map, before
    /// any insertion) as matched: [`Self::unmarked`] then lists the names nothing matched,
    /// with no set of the other side's names.
    pub fn get_marking(&self, name: &str, marks: &mut Marks) -> Option<IndexEntry> {
        let i = self.find(self.id_of(name))?;
        if let Some(m) = marks.0.get_mut(i) {
            *m = true;
        }
        Some(self.slots[i].entry())
    }

    /// How many entries no [`Self::get_marking`] call marked in `marks`.
    pub fn unmarked_count(&self, marks: &Marks) -> usize {
        (0..self.slots.len())
            .filter(|&i| !self.is_removed(i) && !marks.get(i))
            .count()
    }

    /// Whether `name` has an entry that no [`Self::get_marking`] call marked in `marks`.
    pub fn is_unmarked(&self, name: &str, marks: &Marks) -> bool {
        self.find(self.id_of(name)).is_some_and(|i| !marks.get(i))
    }

    /// The names that no [`Self::get_marking`] call marked in `marks` (none without names).
    pub fn unmarked<'a>(&'a self, marks: &'a Marks) -> impl Iterator<Item = &'a str> {
        let names = self.names.as_ref();
        (0..self.slots.len())
            .filter(move |&i| names.is_some() && !self.is_removed(i) && !marks.get(i))
            .map(move |i| names.map_or("", |n| n.get(i)))
    }
}

/// The table's hash of an id (itself a hash): its high word, whose bits are all the id's own.
fn table_hash(id: u128) -> u64 {
    (id >> 64) as u64
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

    fn get(&self, i: usize) -> bool {
        self.0.get(i).copied().unwrap_or(false)
    }
}

impl std::fmt::Debug for IndexEntries {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.has_names() {
            f.debug_map().entries(self.iter()).finish()
        } else {
            write!(f, "IndexEntries({} entries without names)", self.len())
        }
    }
}

/// Equal when they hold the same names with the same entries, whatever the order (maps
/// without names: the same count of entries with the same multiset of entries).
impl PartialEq for IndexEntries {
    fn eq(&self, other: &Self) -> bool {
        if self.len() != other.len() {
            return false;
        }
        if self.has_names() {
            return self.iter().all(|(n, e)| other.get(n) == Some(e));
        }
        if other.has_names() {
            return other.iter().all(|(n, e)| self.get(n) == Some(e));
        }
        let live = |m: &IndexEntries| {
            let mut v: Vec<([u8; 32], u64, bool)> = (0..m.slots.len())
                .filter(|&i| !m.is_removed(i))
                .map(|i| {
                    let e = m.slots[i].entry();
                    (e.hash.0, e.size, e.pending)
                })
                .collect();
            v.sort_unstable();
            v
        };
        live(self) == live(other)
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
        assert_eq!((m.len(), m.get("a/b.html")), (2, Some(entry(3))));
        assert_eq!(m.remove("a/b.html"), Some(entry(3)));
        assert_eq!(m.remove("a/b.html"), None);
        assert!(!m.contains_key("a/b.html") && m.contains_key("a/c.html"));
        assert_eq!(m.insert("a/b.html", entry(4)), None);
        assert_eq!(m.keys().collect::<Vec<_>>(), ["a/c.html", "a/b.html"]);
        let mut marks = m.marks();
        assert_eq!(m.get_marking("a/b.html", &mut marks), Some(entry(4)));
        assert_eq!(m.get_marking("nope", &mut marks), None);
        assert_eq!(m.unmarked(&marks).collect::<Vec<_>>(), ["a/c.html"]);
        let same: IndexEntries = [("a/b.html", entry(4)), ("a/c.html", entry(2))]
            .into_iter()
            .collect();
        assert_eq!(m, same);
    }

    #[test]
    fn without_names_it_answers_lookups_and_recognises_unmatched_names() {
        let mut m = IndexEntries::without_names(4);
        assert!(!m.has_names());
        m.extend([("a", entry(1)), ("b", entry(2)), ("c", entry(3))]);
        assert_eq!(m.insert("a", entry(4)), Some(entry(1)));
        assert_eq!(m.remove("c"), Some(entry(3)));
        assert_eq!((m.len(), m.get("a"), m.get("c")), (2, Some(entry(4)), None));
        assert_eq!((m.keys().count(), m.iter().count()), (0, 0));
        let mut marks = m.marks();
        assert!(m.get_marking("a", &mut marks).is_some());
        assert_eq!(m.unmarked_count(&marks), 1);
        assert!(m.is_unmarked("b", &marks));
        assert!(!m.is_unmarked("a", &marks) && !m.is_unmarked("c", &marks));
        assert_eq!(m.unmarked(&marks).count(), 0);
        let named: IndexEntries = [("a", entry(4)), ("b", entry(2))].into_iter().collect();
        assert_eq!(m, named);
        assert_eq!(named, m);
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
            (Some(entry(1)), Some(entry(2)))
        );
        assert_eq!(m.remove(&long), Some(entry(1)));
        assert_eq!(m.keys().collect::<Vec<_>>(), ["after"]);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn agrees_with_a_hash_map(
            ops in proptest::collection::vec((any::<bool>(), 0u8..40, any::<u8>()), 0..300),
            named in any::<bool>(),
        ) {
            let mut m = if named { IndexEntries::default() } else { IndexEntries::without_names(0) };
            let mut model = HashMap::new();
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
                prop_assert_eq!(m.get(n), Some(*e));
            }
            prop_assert_eq!(m.iter().count(), if named { model.len() } else { 0 });
            let mut marks = m.marks();
            for n in model.keys().filter(|n| n.len() % 2 == 0) {
                prop_assert!(m.get_marking(n, &mut marks).is_some());
            }
            let unmarked = model.keys().filter(|n| n.len() % 2 == 1).count();
            prop_assert_eq!(m.unmarked_count(&marks), unmarked);
            for n in model.keys() {
                prop_assert_eq!(m.is_unmarked(n, &marks), n.len() % 2 == 1);
            }
        }
    }
}
