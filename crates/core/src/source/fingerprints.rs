//! Persisted fingerprints: the content hash of each file, trusted while its fingerprint
//! (device, inode, size, mtime, ctime) is unchanged, so a fresh process never re-reads an
//! unchanged tree.
//!
//! Names are not kept: a file is known by the xxh3-128 of its name ([`FingerprintStore::id_of`]),
//! in a table sorted by id (64 bytes per file, no allocation per file), with a small overlay of
//! this run's changes merged in on save. Directories holding known files are kept as ids too.
//!
//! State file (little-endian): `TCFP`, version `u32`, root length `u32` and root bytes, entry
//! count `u64`, directory count `u64`, 64-byte entries in id order (id `u128`, fingerprint digest
//! `u64`, settled-before `i64`, hash `[u8; 32]`), 16-byte directory ids in order, then the
//! xxh3-64 of everything before it.

use std::io::Write;
use std::path::Path;

use xxhash_rust::xxh3::{Xxh3Default, xxh3_64, xxh3_128};

use crate::collections::{FastMap, FastSet};
use crate::error::{Error, Result};
use crate::format::key::ContentHash;
use crate::source::scan::Fingerprint;

/// Files whose mtime or ctime is this close to the moment they were hashed are hashed again on
/// the next run: a write in the same timestamp tick would otherwise go unnoticed.
/// Two seconds: coarse filesystems (FAT, some network mounts) keep mtimes in 2 s steps.
const RACY_WINDOW_NS: i64 = 2_000_000_000;
const MAGIC: &[u8; 4] = b"TCFP";
const STATE_VERSION: u32 = 2;
const ENTRY_LEN: usize = 64;
const DIR_LEN: usize = 16;
/// The overlay is merged into the table once it holds more than this share of the table...
const OVERLAY_SHARE: usize = 8;
/// ...and more than this many changes (so that a first run does not merge at every record).
const OVERLAY_MIN: usize = 4096;

/// What the store knows of one file: 64 bytes, no heap.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Entry {
    /// xxh3-128 of the name.
    id: u128,
    /// [`digest`] of the fingerprint the file had when hashed.
    fp: u64,
    /// Hashing time minus [`RACY_WINDOW_NS`]: the fingerprint is trusted only if the file's
    /// mtime and ctime are before it.
    settled_before_ns: i64,
    hash: [u8; 32],
}

impl Entry {
    fn encode(&self, out: &mut [u8; ENTRY_LEN]) {
        out[..16].copy_from_slice(&self.id.to_le_bytes());
        out[16..24].copy_from_slice(&self.fp.to_le_bytes());
        out[24..32].copy_from_slice(&self.settled_before_ns.to_le_bytes());
        out[32..].copy_from_slice(&self.hash);
    }

    /// Decodes one entry; `b` is exactly [`ENTRY_LEN`] bytes long.
    fn decode(b: &[u8]) -> Self {
        Entry {
            id: u128::from_le_bytes(arr(&b[..16])),
            fp: u64::from_le_bytes(arr(&b[16..24])),
            settled_before_ns: i64::from_le_bytes(arr(&b[24..32])),
            hash: arr(&b[32..64]),
        }
    }
}

/// The first `N` bytes of `s` (callers pass slices of at least `N` bytes).
fn arr<const N: usize>(s: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&s[..N]);
    a
}

/// The xxh3-64 of a fingerprint's fields, little-endian, concatenated.
fn digest(fp: &Fingerprint) -> u64 {
    let mut b = [0u8; 40];
    b[..8].copy_from_slice(&fp.dev.to_le_bytes());
    b[8..16].copy_from_slice(&fp.ino.to_le_bytes());
    b[16..24].copy_from_slice(&fp.size.to_le_bytes());
    b[24..32].copy_from_slice(&fp.mtime_ns.to_le_bytes());
    b[32..].copy_from_slice(&fp.ctime_ns.to_le_bytes());
    xxh3_64(&b)
}

/// The ids of every ancestor directory of `name` ("a" and "a/b" for "a/b/c.html").
fn ancestor_ids(name: &str) -> impl Iterator<Item = u128> + '_ {
    name.bytes()
        .enumerate()
        .filter(|&(_, b)| b == b'/')
        .map(move |(i, _)| FingerprintStore::id_of(&name[..i]))
}

/// The fingerprint state file of template tree `root` under state directory `state_dir`: one
/// per canonical root, so that two trees (or two releases behind one symlink) never share one.
pub fn state_file(state_dir: &Path, root: &Path) -> Result<std::path::PathBuf> {
    use sha2::Digest;
    let canonical = std::fs::canonicalize(root).map_err(|e| Error::io(root, e))?;
    let digest = sha2::Sha256::digest(canonical.to_string_lossy().as_bytes());
    Ok(state_dir.join(format!("fingerprints-{}", &hex::encode(digest)[..16])))
}

/// Content hashes of files keyed by name, trusted while a file's fingerprint is unchanged.
/// Persisted to a local file so a fresh process does not re-hash an unchanged tree.
#[derive(Default)]
pub struct FingerprintStore {
    root: String,
    /// Entries sorted by id, ids strictly increasing.
    table: Vec<Entry>,
    /// Where the entries whose ids share their top [`BUCKET_BITS`] bits start in `table`, and
    /// `table.len()` last: a lookup searches one bucket (about 16 entries at a million files,
    /// ids being uniform) instead of the whole table. Empty while `table` is.
    buckets: Vec<usize>,
    /// Ids of the ancestor directories of known files, sorted, strictly increasing (a superset
    /// after removals).
    dirs: Vec<u128>,
    /// This run's changes, consulted before `table`; `None` = removed.
    overlay: FastMap<u128, Option<Entry>>,
    /// The overlay's changes sorted for a merge, and the new entries among them: kept between
    /// merges, like the overlay's own capacity. A run of a million records merges a dozen
    /// times from whichever reading thread records; buffers allocated afresh each time left
    /// tens of MB of freed holes in as many allocator arenas.
    scratch: (Vec<(u128, Option<Entry>)>, Vec<Entry>),
    /// Directory ids recorded this run that `dirs` lacks.
    new_dirs: FastSet<u128>,
    /// The parent directory of the last recorded name: its ancestors are known (files are
    /// mostly recorded directory by directory).
    last_parent: String,
    /// How many files the store knows (table and overlay together).
    len: usize,
    dirty: bool,
}

impl std::fmt::Debug for FingerprintStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FingerprintStore")
            .field("root", &self.root)
            .field("len", &self.len)
            .field("table", &self.table.len())
            .field("overlay", &self.overlay.len())
            .field("dirs", &(self.dirs.len() + self.new_dirs.len()))
            .field("dirty", &self.dirty)
            .finish()
    }
}

/// Why a state file was not used.
#[derive(Debug, PartialEq, Eq)]
enum Invalid {
    /// A well-formed header for another root: silently ignored, as another tree's state.
    ForeignRoot,
    /// Anything else: reported.
    Corrupt(&'static str),
}

/// Bits of an id that pick its bucket (see `FingerprintStore::buckets`).
const BUCKET_BITS: u32 = 16;

fn bucket(id: u128) -> usize {
    (id >> (128 - BUCKET_BITS)) as usize
}

/// The bucket starts of a table sorted by id, then its length; empty for an empty table.
fn buckets_of(table: &[Entry]) -> Vec<usize> {
    if table.is_empty() {
        return Vec::new();
    }
    let mut starts = Vec::with_capacity((1 << BUCKET_BITS) + 1);
    let mut i = 0;
    for b in 0..1usize << BUCKET_BITS {
        while i < table.len() && bucket(table[i].id) < b {
            i += 1;
        }
        starts.push(i);
    }
    starts.push(table.len());
    starts
}

/// A little-endian cursor over the state file.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize) -> std::result::Result<&'a [u8], Invalid> {
        let s = self
            .pos
            .checked_add(n)
            .and_then(|end| self.bytes.get(self.pos..end))
            .ok_or(Invalid::Corrupt("truncated"))?;
        self.pos += n;
        Ok(s)
    }
    fn u32(&mut self) -> std::result::Result<u32, Invalid> {
        self.take(4).map(|s| u32::from_le_bytes(arr(s)))
    }
    fn u64(&mut self) -> std::result::Result<u64, Invalid> {
        self.take(8).map(|s| u64::from_le_bytes(arr(s)))
    }
}

/// Parses a state file for `root` into its entry table and directory ids.
fn parse(bytes: &[u8], root: &str) -> std::result::Result<(Vec<Entry>, Vec<u128>), Invalid> {
    let mut c = Cursor { bytes, pos: 0 };
    if c.take(MAGIC.len()).ok() != Some(MAGIC.as_slice()) {
        return Err(Invalid::Corrupt(
            "not a fingerprint state file (or an older version)",
        ));
    }
    if c.u32()? != STATE_VERSION {
        return Err(Invalid::Corrupt("unsupported version"));
    }
    let root_len = usize::try_from(c.u32()?).map_err(|_| Invalid::Corrupt("bad root length"))?;
    let file_root = c.take(root_len)?;
    let entries = c.u64()?;
    let dirs = c.u64()?;
    let sizes = usize::try_from(entries)
        .ok()
        .and_then(|n| n.checked_mul(ENTRY_LEN))
        .zip(
            usize::try_from(dirs)
                .ok()
                .and_then(|n| n.checked_mul(DIR_LEN)),
        );
    let Some((entries_len, dirs_len)) = sizes.filter(|&(e, d)| {
        c.pos
            .checked_add(e)
            .and_then(|n| n.checked_add(d))
            .and_then(|n| n.checked_add(8))
            == Some(bytes.len())
    }) else {
        return Err(Invalid::Corrupt("lengths do not match the file size"));
    };
    let entry_bytes = c.take(entries_len)?;
    let dir_bytes = c.take(dirs_len)?;
    let sum = c.take(8)?;
    if xxh3_64(&bytes[..c.pos - 8]) != u64::from_le_bytes(arr(sum)) {
        return Err(Invalid::Corrupt("checksum mismatch"));
    }
    if file_root != root.as_bytes() {
        return Err(Invalid::ForeignRoot);
    }
    let mut table = Vec::with_capacity(entries_len / ENTRY_LEN);
    for chunk in entry_bytes.chunks_exact(ENTRY_LEN) {
        let e = Entry::decode(chunk);
        if table.last().is_some_and(|p: &Entry| p.id >= e.id) {
            return Err(Invalid::Corrupt("entries out of order"));
        }
        table.push(e);
    }
    let mut dir_ids = Vec::with_capacity(dirs_len / DIR_LEN);
    for chunk in dir_bytes.chunks_exact(DIR_LEN) {
        let id = u128::from_le_bytes(arr(chunk));
        if dir_ids.last().is_some_and(|&p| p >= id) {
            return Err(Invalid::Corrupt("directories out of order"));
        }
        dir_ids.push(id);
    }
    Ok((table, dir_ids))
}

/// A buffered writer that also computes the xxh3-64 of what went through it.
struct Summing<W: Write> {
    out: W,
    sum: Xxh3Default,
}

impl<W: Write> Summing<W> {
    fn put(&mut self, b: &[u8]) -> std::io::Result<()> {
        self.sum.update(b);
        self.out.write_all(b)
    }
}

impl FingerprintStore {
    /// The id of `name`: the xxh3-128 of its bytes (stable, so persisted).
    pub fn id_of(name: &str) -> u128 {
        xxh3_128(name.as_bytes())
    }

    /// Loads the store for `root` from `path`; a missing, unreadable or foreign file yields an
    /// empty store (it is only a cache), with a warning for the unreadable case.
    pub fn load(path: Option<&Path>, root: &Path) -> Self {
        let root = root.to_string_lossy().into_owned();
        let Some(path) = path else {
            return Self::empty(root);
        };
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Self::empty(root),
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the fingerprint state; re-hashing every file");
                return Self::empty(root);
            }
        };
        match parse(&bytes, &root) {
            Ok((table, dirs)) => FingerprintStore {
                root,
                len: table.len(),
                buckets: buckets_of(&table),
                table,
                dirs,
                ..Default::default()
            },
            Err(Invalid::ForeignRoot) => Self::empty(root),
            Err(Invalid::Corrupt(why)) => {
                tracing::warn!(path = %path.display(), error = why, "fingerprint state is unusable; re-hashing every file");
                Self::empty(root)
            }
        }
    }

    fn empty(root: String) -> Self {
        FingerprintStore {
            root,
            ..Default::default()
        }
    }

    /// The current entry of `id`, overlay first.
    fn get(&self, id: u128) -> Option<&Entry> {
        match self.overlay.get(&id) {
            Some(e) => e.as_ref(),
            None => self.in_table(id),
        }
    }

    fn in_table(&self, id: u128) -> Option<&Entry> {
        self.position(id).map(|i| &self.table[i])
    }

    /// Where `id` is in `table`.
    fn position(&self, id: u128) -> Option<usize> {
        let b = bucket(id);
        let (start, end) = (*self.buckets.get(b)?, *self.buckets.get(b + 1)?);
        let part = self.table.get(start..end)?;
        part.binary_search_by_key(&id, |e| e.id)
            .ok()
            .map(|i| start + i)
    }

    /// The trusted hash of `name` if its fingerprint is unchanged and was not racy.
    pub fn lookup(&self, name: &str, fp: &Fingerprint) -> Option<ContentHash> {
        let e = self.get(Self::id_of(name))?;
        let settled = fp.mtime_ns.max(fp.ctime_ns) < e.settled_before_ns;
        (e.fp == digest(fp) && settled).then_some(ContentHash(e.hash))
    }

    /// Records that `name` with fingerprint `fp` hashed to `hash` at `hashed_at_ns`.
    pub fn record(
        &mut self,
        name: &str,
        fingerprint: Fingerprint,
        hash: ContentHash,
        hashed_at_ns: i64,
    ) {
        let id = Self::id_of(name);
        let entry = Entry {
            id,
            fp: digest(&fingerprint),
            settled_before_ns: hashed_at_ns.saturating_sub(RACY_WINDOW_NS),
            hash: hash.0,
        };
        // Nothing to learn when the store already vouches for this hash, as of an earlier
        // hashing (a deep check of an unchanged tree records nothing).
        if self.get(id).is_some_and(|e| {
            e.fp == entry.fp
                && e.hash == entry.hash
                && fingerprint.mtime_ns.max(fingerprint.ctime_ns) < e.settled_before_ns
                && e.settled_before_ns <= entry.settled_before_ns
        }) {
            return;
        }
        let known = match self.overlay.insert(id, Some(entry)) {
            Some(before) => before.is_some(),
            None => self.in_table(id).is_some(),
        };
        self.len += usize::from(!known);
        let parent = name.rfind('/').map_or("", |i| &name[..i]);
        if parent != self.last_parent {
            for dir in ancestor_ids(name) {
                if self.dirs.binary_search(&dir).is_err() {
                    self.new_dirs.insert(dir);
                }
            }
            parent.clone_into(&mut self.last_parent);
        }
        self.dirty = true;
        self.merge_if_large();
    }

    /// Whether the store knows `name` (whatever its fingerprint).
    pub fn contains(&self, name: &str) -> bool {
        self.get(Self::id_of(name)).is_some()
    }

    /// Whether the store knows a file under directory `dir` (a name starting with `dir/`; `dir`
    /// without a trailing slash). May answer yes for a directory whose files were all removed.
    pub fn any_under(&self, dir: &str) -> bool {
        let id = Self::id_of(dir);
        self.dirs.binary_search(&id).is_ok() || self.new_dirs.contains(&id)
    }

    /// Forgets `name`: its file is hashed again next time.
    pub fn remove(&mut self, name: &str) {
        let id = Self::id_of(name);
        if self.get(id).is_none() {
            return;
        }
        self.len -= 1;
        self.dirty = true;
        if self.in_table(id).is_some() {
            self.overlay.insert(id, None);
        } else {
            self.overlay.remove(&id);
        }
        self.merge_if_large();
    }

    /// How many files the store knows.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the store knows no file.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Forgets files whose id (see [`FingerprintStore::id_of`]) `keep` rejects.
    pub fn retain_ids(&mut self, keep: impl Fn(u128) -> bool) {
        self.merge();
        self.table.retain(|e| keep(e.id));
        if self.table.len() != self.len {
            self.len = self.table.len();
            self.buckets = buckets_of(&self.table);
            self.dirty = true;
        }
    }

    fn merge_if_large(&mut self) {
        if self.overlay.len() > (self.table.len() / OVERLAY_SHARE).max(OVERLAY_MIN) {
            self.merge();
        }
    }

    /// Merges the overlay into the table (and new directories into `dirs`) in place: changes
    /// of known ids are written over their entries, removed ones dropped, and new ones merged
    /// in from the back after the table grows (a large table's growth is remapped by the
    /// allocator, not copied: there is never a second table).
    fn merge(&mut self) {
        if !self.overlay.is_empty() {
            let (mut changes, mut added) = std::mem::take(&mut self.scratch);
            changes.extend(self.overlay.drain());
            changes.sort_unstable_by_key(|&(id, _)| id);
            // Positions of removed entries, increasing (the changes are sorted by id).
            let mut removed: Vec<usize> = Vec::new();
            for (id, change) in changes.drain(..) {
                match (self.position(id), change) {
                    (Some(i), Some(e)) => self.table[i] = e,
                    (Some(i), None) => removed.push(i),
                    (None, Some(e)) => added.push(e),
                    (None, None) => {}
                }
            }
            if !removed.is_empty() {
                let (mut at, mut next) = (0, removed.iter().peekable());
                self.table.retain(|_| {
                    let keep = next.next_if_eq(&&at).is_none();
                    at += 1;
                    keep
                });
            }
            let old_len = self.table.len();
            self.table.reserve_exact(added.len());
            self.table.resize(old_len + added.len(), Entry::default());
            // Merge from the back: every slot written is free or already moved.
            let (mut i, mut k) = (old_len, self.table.len());
            while let Some(new) = added.last() {
                k -= 1;
                if i > 0 && self.table[i - 1].id > new.id {
                    self.table[k] = self.table[i - 1];
                    i -= 1;
                } else {
                    self.table[k] = *new;
                    added.pop();
                }
            }
            debug_assert_eq!(self.table.len(), self.len);
            debug_assert!(self.table.windows(2).all(|w| w[0].id < w[1].id));
            self.buckets = buckets_of(&self.table);
            self.scratch = (changes, added);
        }
        if !self.new_dirs.is_empty() {
            let mut added: Vec<u128> = self.new_dirs.drain().collect();
            added.sort_unstable();
            let mut dirs = Vec::with_capacity(self.dirs.len() + added.len());
            let mut old = std::mem::take(&mut self.dirs).into_iter().peekable();
            for id in added {
                while let Some(d) = old.next_if(|&d| d < id) {
                    dirs.push(d);
                }
                old.next_if(|&d| d == id);
                dirs.push(id);
            }
            dirs.extend(old);
            self.new_dirs.shrink_to_fit();
            self.dirs = dirs;
        }
    }

    /// Writes the store atomically (temporary file, then rename) if it changed.
    pub fn save(&mut self, path: &Path) -> Result<()> {
        if !self.dirty {
            return Ok(());
        }
        self.merge();
        // The run is over: what merging kept for the next merge goes (a service idles here).
        self.scratch = Default::default();
        self.overlay.shrink_to_fit();
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        if let Err(e) = self.write_to(&tmp) {
            let _ = std::fs::remove_file(&tmp);
            return Err(Error::io(&tmp, e));
        }
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
        self.dirty = false;
        Ok(())
    }

    /// Writes the merged store in the state file format to `path`.
    fn write_to(&self, path: &Path) -> std::io::Result<()> {
        let file = std::fs::File::create(path)?;
        let mut w = Summing {
            out: std::io::BufWriter::with_capacity(1 << 20, file),
            sum: Xxh3Default::new(),
        };
        let root_len = u32::try_from(self.root.len())
            .map_err(|_| std::io::Error::other("root path too long"))?;
        w.put(MAGIC)?;
        w.put(&STATE_VERSION.to_le_bytes())?;
        w.put(&root_len.to_le_bytes())?;
        w.put(self.root.as_bytes())?;
        w.put(&(self.table.len() as u64).to_le_bytes())?;
        w.put(&(self.dirs.len() as u64).to_le_bytes())?;
        let mut buf = [0u8; ENTRY_LEN];
        for e in &self.table {
            e.encode(&mut buf);
            w.put(&buf)?;
        }
        for d in &self.dirs {
            w.put(&d.to_le_bytes())?;
        }
        let sum = w.sum.digest();
        w.out.write_all(&sum.to_le_bytes())?;
        w.out.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashMap;

    fn fp(m: i64, c: i64) -> Fingerprint {
        Fingerprint {
            dev: 1,
            ino: 2,
            size: 3,
            mtime_ns: m,
            ctime_ns: c,
        }
    }

    #[test]
    fn lookups_need_equal_settled_fingerprints() {
        let mut s = FingerprintStore::default();
        let h = ContentHash::of(b"x");
        s.record("a", fp(10, 10), h, 10 + 2 * RACY_WINDOW_NS);
        assert_eq!(s.lookup("a", &fp(10, 10)), Some(h));
        assert_eq!(
            s.lookup("a", &fp(10, 11)),
            None,
            "ctime change (cp -p / touch -r)"
        );
        s.record("c", fp(10, 10), h, 10 + 1_500_000_000);
        assert_eq!(
            s.lookup("c", &fp(10, 10)),
            None,
            "1.5 s is still racy where timestamps have 2 s steps"
        );
        s.record("b", fp(10, 10), h, 10 + RACY_WINDOW_NS / 2);
        assert_eq!(
            s.lookup("b", &fp(10, 10)),
            None,
            "racy entries are re-hashed"
        );
        s.record("d", fp(10, 10), h, i64::MIN);
        assert_eq!(
            s.lookup("d", &fp(10, 10)),
            None,
            "saturating, never trusted"
        );
        assert_eq!(s.len(), 4);
    }

    #[test]
    fn persists_per_root_and_survives_garbage() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state/fp");
        let mut s = FingerprintStore::load(Some(&path), Path::new("/r"));
        s.record("a", fp(1, 1), ContentHash::of(b"a"), i64::MAX);
        s.save(&path).unwrap();
        let again = FingerprintStore::load(Some(&path), Path::new("/r"));
        assert_eq!(again.lookup("a", &fp(1, 1)), Some(ContentHash::of(b"a")));
        assert_eq!(again.len(), 1);
        assert!(FingerprintStore::load(Some(&path), Path::new("/other")).is_empty());
        std::fs::write(&path, b"garbage").unwrap();
        assert!(FingerprintStore::load(Some(&path), Path::new("/r")).is_empty());
    }

    #[test]
    fn saves_only_when_dirty() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fp");
        let mut s = FingerprintStore::load(Some(&path), Path::new("/r"));
        s.save(&path).unwrap();
        assert!(!path.exists(), "nothing recorded, nothing written");
        s.remove("absent");
        s.save(&path).unwrap();
        assert!(!path.exists(), "removing an unknown name changes nothing");
        s.record("a", fp(1, 1), ContentHash::of(b"a"), i64::MAX);
        s.save(&path).unwrap();
        assert!(path.exists());
        std::fs::remove_file(&path).unwrap();
        s.save(&path).unwrap();
        assert!(!path.exists(), "saved state is not written again");
    }

    /// A valid state file for root "/r" with a few entries and directories.
    fn valid_file(path: &Path) -> Vec<u8> {
        let mut s = FingerprintStore::load(None, Path::new("/r"));
        for n in ["a/b/c.html", "a/d.html", "e.html"] {
            s.record(n, fp(1, 1), ContentHash::of(n.as_bytes()), i64::MAX);
        }
        s.save(path).unwrap();
        let bytes = std::fs::read(path).unwrap();
        assert_eq!(FingerprintStore::load(Some(path), Path::new("/r")).len(), 3);
        bytes
    }

    /// Replaces the trailing checksum of `bytes` by a correct one.
    fn reseal(bytes: &mut [u8]) {
        let n = bytes.len() - 8;
        let sum = xxh3_64(&bytes[..n]);
        bytes[n..].copy_from_slice(&sum.to_le_bytes());
    }

    #[test]
    fn damaged_files_yield_an_empty_store() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fp");
        let good = valid_file(&path);
        let header = 4 + 4 + 4 + 2 + 8 + 8;
        assert_eq!(
            good.len(),
            header + 3 * ENTRY_LEN + 2 * DIR_LEN + 8,
            "directories a and a/b"
        );
        let load = |bytes: &[u8]| {
            std::fs::write(&path, bytes).unwrap();
            FingerprintStore::load(Some(&path), Path::new("/r"))
        };
        for n in 0..good.len() {
            assert!(load(&good[..n]).is_empty(), "truncated to {n} bytes");
            let mut flipped = good.clone();
            flipped[n] ^= 0x10;
            assert!(load(&flipped).is_empty(), "byte {n} flipped");
        }
        let mut longer = good.clone();
        longer.push(0);
        assert!(load(&longer).is_empty(), "trailing byte");

        let mut version = good.clone();
        version[4..8].copy_from_slice(&1u32.to_le_bytes());
        reseal(&mut version);
        assert!(load(&version).is_empty(), "other version");

        let mut root = good.clone();
        root[12..14].copy_from_slice(b"/x");
        reseal(&mut root);
        assert!(load(&root).is_empty(), "other root");

        let mut swapped = good.clone();
        let (a, b) = (header, header + ENTRY_LEN);
        let first: Vec<u8> = swapped[a..b].to_vec();
        swapped.copy_within(b..b + ENTRY_LEN, a);
        swapped[b..b + ENTRY_LEN].copy_from_slice(&first);
        reseal(&mut swapped);
        assert!(load(&swapped).is_empty(), "entries out of order");

        let mut dup_dir = good.clone();
        let d = header + 3 * ENTRY_LEN;
        dup_dir.copy_within(d..d + DIR_LEN, d + DIR_LEN);
        reseal(&mut dup_dir);
        assert!(
            load(&dup_dir).is_empty(),
            "directories not strictly increasing"
        );

        let mut huge = good.clone();
        huge[14..22].copy_from_slice(&u64::MAX.to_le_bytes());
        reseal(&mut huge);
        assert!(load(&huge).is_empty(), "absurd entry count");

        assert_eq!(load(&good).len(), 3, "the untouched file still loads");
    }

    #[test]
    fn directories_are_known_after_record_and_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("fp");
        let mut s = FingerprintStore::load(Some(&path), Path::new("/r"));
        s.record("a/b/c.html", fp(1, 1), ContentHash::of(b"c"), i64::MAX);
        s.record("top.html", fp(1, 1), ContentHash::of(b"t"), i64::MAX);
        let check = |s: &FingerprintStore| {
            assert!(s.any_under("a"));
            assert!(s.any_under("a/b"));
            assert!(!s.any_under("a/b/c.html"), "a file is no directory");
            assert!(!s.any_under("a/b/c"));
            assert!(!s.any_under("ab"));
            assert!(!s.any_under("b"));
            assert!(!s.any_under(""));
            assert!(!s.any_under("top.html"));
        };
        check(&s);
        s.save(&path).unwrap();
        let mut again = FingerprintStore::load(Some(&path), Path::new("/r"));
        check(&again);
        again.record("x/y.html", fp(1, 1), ContentHash::of(b"y"), i64::MAX);
        assert!(again.any_under("x"));
        again.save(&path).unwrap();
        let again = FingerprintStore::load(Some(&path), Path::new("/r"));
        assert!(again.any_under("x") && again.any_under("a/b"));
    }

    #[test]
    fn large_overlays_merge_on_the_way() {
        let mut s = FingerprintStore::default();
        let h = ContentHash::of(b"x");
        let name = |i: usize| format!("d{}/f{i}.html", i % 17);
        for i in 0..20_000 {
            s.record(&name(i), fp(1, 1), h, i64::MAX);
            if i % 3 == 0 {
                s.remove(&name(i / 2));
            }
        }
        assert!(s.table.len() > 10_000, "merged while recording");
        assert!(s.overlay.len() <= (s.table.len() / OVERLAY_SHARE).max(OVERLAY_MIN));
        let mut known = std::collections::HashSet::new();
        for i in 0..20_000 {
            known.insert(i);
            if i % 3 == 0 {
                known.remove(&(i / 2));
            }
        }
        assert_eq!(s.len(), known.len());
        for i in 0..20_000 {
            assert_eq!(s.contains(&name(i)), known.contains(&i), "{i}");
        }
        s.retain_ids(|id| id % 2 == 0);
        let kept = known
            .iter()
            .filter(|&&i| FingerprintStore::id_of(&name(i)).is_multiple_of(2))
            .count();
        assert_eq!(s.len(), kept);
        assert!(s.table.windows(2).all(|w| w[0].id < w[1].id));
    }

    #[derive(Clone, Debug)]
    enum Op {
        Record { name: usize, ino: u64, at: i64 },
        Remove(usize),
        Merge,
        SaveLoad,
        Retain(u8),
    }

    fn op() -> impl Strategy<Value = Op> {
        let at = prop_oneof![
            Just(i64::MIN),
            Just(0i64),
            Just(10 + 2 * RACY_WINDOW_NS),
            Just(i64::MAX)
        ];
        prop_oneof![
            6 => (0..40usize, 0..3u64, at).prop_map(|(name, ino, at)| Op::Record { name, ino, at }),
            3 => (0..40usize).prop_map(Op::Remove),
            1 => Just(Op::Merge),
            1 => Just(Op::SaveLoad),
            1 => (2..5u8).prop_map(Op::Retain),
        ]
    }

    fn pool(i: usize) -> String {
        if i.is_multiple_of(7) {
            format!("f{i}.html")
        } else {
            format!("d{}/e{}/f{i}.html", i % 3, i % 5)
        }
    }

    fn file_fp(ino: u64) -> Fingerprint {
        Fingerprint {
            dev: 1,
            ino,
            size: 3,
            mtime_ns: 10,
            ctime_ns: 10,
        }
    }

    /// Compares `s` with the model: what the old name-keyed store would answer.
    fn agree(s: &FingerprintStore, model: &HashMap<String, (u64, i64)>) {
        assert_eq!(s.len(), model.len());
        assert_eq!(s.is_empty(), model.is_empty());
        for i in 0..40 {
            let name = pool(i);
            assert_eq!(s.contains(&name), model.contains_key(&name), "{name}");
            for ino in 0..3 {
                let expected = model.get(&name).and_then(|&(known, at)| {
                    let settled = 10 < at.saturating_sub(RACY_WINDOW_NS);
                    (known == ino && settled).then(|| ContentHash::of(name.as_bytes()))
                });
                assert_eq!(s.lookup(&name, &file_fp(ino)), expected, "{name} {ino}");
            }
        }
        for name in model.keys() {
            for (i, _) in name.match_indices('/') {
                assert!(s.any_under(&name[..i]), "{name}");
            }
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn overlay_and_table_agree_with_a_map(ops in proptest::collection::vec(op(), 0..80)) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("fp");
            let mut s = FingerprintStore::load(Some(&path), Path::new("/r"));
            let mut model: HashMap<String, (u64, i64)> = HashMap::new();
            for op in ops {
                match op {
                    Op::Record { name, ino, at } => {
                        let name = pool(name);
                        s.record(&name, file_fp(ino), ContentHash::of(name.as_bytes()), at);
                        model.insert(name, (ino, at));
                    }
                    Op::Remove(name) => {
                        let name = pool(name);
                        s.remove(&name);
                        model.remove(&name);
                    }
                    Op::Merge => s.merge(),
                    Op::SaveLoad => {
                        s.save(&path).unwrap();
                        s = FingerprintStore::load(Some(&path), Path::new("/r"));
                    }
                    Op::Retain(m) => {
                        let keep = |id: u128| !id.is_multiple_of(u128::from(m));
                        s.retain_ids(keep);
                        model.retain(|n, _| keep(FingerprintStore::id_of(n)));
                    }
                }
                agree(&s, &model);
            }
            s.save(&path).unwrap();
            let again = FingerprintStore::load(Some(&path), Path::new("/r"));
            agree(&again, &model);
            prop_assert!(again.table.windows(2).all(|w| w[0].id < w[1].id));
            prop_assert!(again.dirs.windows(2).all(|w| w[0] < w[1]));
        }

        #[test]
        fn any_state_file_loads_without_panic(data in proptest::collection::vec(any::<u8>(), 0..300)) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("fp");
            std::fs::write(&path, &data).unwrap();
            let _ = FingerprintStore::load(Some(&path), Path::new("/r"));
        }

        #[test]
        fn any_body_after_a_valid_header_loads_without_panic(
            entries in 0..4u64,
            dirs in 0..4u64,
            body in proptest::collection::vec(any::<u8>(), 0..300),
        ) {
            let mut data = Vec::new();
            data.extend_from_slice(MAGIC);
            data.extend_from_slice(&STATE_VERSION.to_le_bytes());
            data.extend_from_slice(&2u32.to_le_bytes());
            data.extend_from_slice(b"/r");
            data.extend_from_slice(&entries.to_le_bytes());
            data.extend_from_slice(&dirs.to_le_bytes());
            data.extend_from_slice(&body);
            if data.len() >= 8 {
                reseal(&mut data);
            }
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("fp");
            std::fs::write(&path, &data).unwrap();
            let s = FingerprintStore::load(Some(&path), Path::new("/r"));
            prop_assert!(s.len() as u64 <= entries);
        }
    }
}
