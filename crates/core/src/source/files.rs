//! The files a scan finds: [`SourceFile`] with its [`Fingerprint`], and [`FileList`], many of
//! them held compactly, every name in one buffer and 48 bytes per file with no allocation per
//! file, where a list of [`SourceFile`]s costs 80 bytes and an allocation per file (over twice
//! as much at a million templates).

use std::path::{Path, PathBuf};
use std::sync::Arc;

/// The identity of a file version as `stat` sees it; if it is unchanged the content is assumed
/// unchanged. ctime catches rewrites that preserve mtime and size (`cp -p`, `touch -r`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Fingerprint {
    /// Device number.
    pub dev: u64,
    /// Inode number.
    pub ino: u64,
    /// Size in bytes.
    pub size: u64,
    /// Modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
    /// Status change time, nanoseconds since the Unix epoch.
    pub ctime_ns: i64,
}

impl Fingerprint {
    /// The fingerprint of `meta`.
    pub fn of(meta: &std::fs::Metadata) -> Self {
        #[cfg(unix)]
        {
            use std::os::unix::fs::MetadataExt;
            Fingerprint {
                dev: meta.dev(),
                ino: meta.ino(),
                size: meta.size(),
                mtime_ns: meta
                    .mtime()
                    .saturating_mul(1_000_000_000)
                    .saturating_add(meta.mtime_nsec()),
                ctime_ns: meta
                    .ctime()
                    .saturating_mul(1_000_000_000)
                    .saturating_add(meta.ctime_nsec()),
            }
        }
        #[cfg(not(unix))]
        {
            let mtime_ns = meta
                .modified()
                .ok()
                .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                .map_or(0, |d| d.as_nanos() as i64);
            Fingerprint {
                dev: 0,
                ino: 0,
                size: meta.len(),
                mtime_ns,
                ctime_ns: mtime_ns,
            }
        }
    }
}

/// One template file found by a scan.
#[derive(Clone, Debug)]
pub struct SourceFile {
    /// The template name: path relative to the root, `/`-separated.
    pub name: String,
    /// The root the name is relative to (the canonical root of the scan that found it), shared
    /// by every file of a scan: the path to read is [`SourceFile::path`].
    pub root: Arc<Path>,
    /// Its fingerprint when scanned.
    pub fingerprint: Fingerprint,
}

impl SourceFile {
    /// The path to read it from: its name under its root.
    pub fn path(&self) -> PathBuf {
        self.root.join(&self.name)
    }
}

/// Bits of [`Listed::place`] holding the name's length; the rest hold where it starts.
const LEN_BITS: u32 = 24;
/// The longest name a list holds (16 MiB: far beyond any path a scan accepts).
pub(super) const MAX_NAME: usize = (1 << LEN_BITS) - 1;
/// The furthest a name can start in the buffer (1 TiB).
const MAX_START: usize = (1 << (64 - LEN_BITS)) - 1;

/// One file: its fingerprint and where its name lies in the names buffer.
#[derive(Clone, Copy, Debug)]
pub(super) struct Listed {
    /// Start (high bits) and length (low [`LEN_BITS`] bits) of the name.
    place: u64,
    pub(super) fingerprint: Fingerprint,
}

/// Template files under one root (the canonical root of the scan that found them), in the
/// order they were pushed: a compact `Vec<SourceFile>`.
#[derive(Clone)]
pub struct FileList {
    root: Arc<Path>,
    names: String,
    pub(super) files: Vec<Listed>,
}

/// One file of a [`FileList`], borrowed.
#[derive(Clone, Copy, Debug)]
pub struct FileRef<'a> {
    /// The template name.
    pub name: &'a str,
    /// Its fingerprint when scanned.
    pub fingerprint: &'a Fingerprint,
    root: &'a Arc<Path>,
}

impl FileRef<'_> {
    /// The path to read it from: its name under its root.
    pub fn path(&self) -> PathBuf {
        self.root.join(self.name)
    }

    /// An owned copy.
    pub fn to_owned(&self) -> SourceFile {
        SourceFile {
            name: self.name.to_owned(),
            root: Arc::clone(self.root),
            fingerprint: *self.fingerprint,
        }
    }
}

impl Default for FileList {
    fn default() -> Self {
        FileList::new(Arc::from(Path::new("")))
    }
}

impl FileList {
    /// An empty list of files under `root`.
    pub fn new(root: Arc<Path>) -> Self {
        FileList {
            root,
            names: String::new(),
            files: Vec::new(),
        }
    }

    /// The root the names are relative to.
    pub fn root(&self) -> &Arc<Path> {
        &self.root
    }

    /// How many files it holds.
    pub fn len(&self) -> usize {
        self.files.len()
    }

    /// Whether it holds no file.
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }

    /// The file at `i`, if there is one.
    pub fn get(&self, i: usize) -> Option<FileRef<'_>> {
        self.files.get(i).map(|l| self.file_ref(l))
    }

    /// The file at `i`, a position below [`Self::len`].
    pub(crate) fn at(&self, i: usize) -> FileRef<'_> {
        self.file_ref(&self.files[i])
    }

    /// Every file, in order.
    pub fn iter(&self) -> impl ExactSizeIterator<Item = FileRef<'_>> + '_ {
        self.files.iter().map(|l| self.file_ref(l))
    }

    /// Appends a file; `false` (nothing appended) for a name no list can hold (over 16 MiB).
    pub fn push(&mut self, name: &str, fingerprint: Fingerprint) -> bool {
        let start = self.names.len();
        if name.len() > MAX_NAME || start > MAX_START {
            return false;
        }
        self.names.push_str(name);
        self.files.push(Listed {
            place: ((start as u64) << LEN_BITS) | name.len() as u64,
            fingerprint,
        });
        true
    }

    /// Keeps the files for which `keep(position, file)` holds, in order; the names of the
    /// others leave the buffer.
    pub fn retain(&mut self, mut keep: impl FnMut(usize, FileRef<'_>) -> bool) {
        let decisions: Vec<bool> = self.iter().enumerate().map(|(i, f)| keep(i, f)).collect();
        if decisions.iter().all(|&k| k) {
            return;
        }
        let kept_bytes: usize = self
            .iter()
            .zip(&decisions)
            .filter(|(_, keep)| **keep)
            .map(|(f, _)| f.name.len())
            .sum();
        let old = std::mem::replace(&mut self.names, String::with_capacity(kept_bytes));
        let mut decisions = decisions.into_iter();
        let names = &mut self.names;
        self.files.retain_mut(|l| {
            if !decisions.next().unwrap_or(false) {
                return false;
            }
            let r = range(l);
            let (start, len) = (names.len(), r.len());
            names.push_str(old.get(r).unwrap_or_default());
            l.place = ((start as u64) << LEN_BITS) | len as u64;
            true
        });
        self.shrink_to_fit();
    }

    /// Sorts the files by `key` (computed once per file), keeping the names where they are.
    pub fn sort_by_cached_key<K: Ord>(&mut self, mut key: impl FnMut(FileRef<'_>) -> K) {
        let names = &self.names;
        let root = &self.root;
        self.files.sort_by_cached_key(|l| {
            key(FileRef {
                name: names.get(range(l)).unwrap_or_default(),
                fingerprint: &l.fingerprint,
                root,
            })
        });
    }

    /// Frees unused capacity.
    pub fn shrink_to_fit(&mut self) {
        self.names.shrink_to_fit();
        self.files.shrink_to_fit();
    }

    pub(super) fn name_of(&self, l: &Listed) -> &str {
        name_in(&self.names, l)
    }

    /// The names buffer and the files, apart: to fill in fingerprints on many threads.
    pub(super) fn parts_mut(&mut self) -> (&str, &mut [Listed]) {
        (&self.names, &mut self.files)
    }

    fn file_ref<'a>(&'a self, l: &'a Listed) -> FileRef<'a> {
        FileRef {
            name: self.name_of(l),
            fingerprint: &l.fingerprint,
            root: &self.root,
        }
    }
}

/// The name of `l` in `names` (the buffer of its list).
pub(super) fn name_in<'a>(names: &'a str, l: &Listed) -> &'a str {
    names.get(range(l)).unwrap_or_default()
}

fn range(l: &Listed) -> std::ops::Range<usize> {
    let start = (l.place >> LEN_BITS) as usize;
    start..start + (l.place & MAX_NAME as u64) as usize
}

impl std::fmt::Debug for FileList {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_list().entries(self.iter().map(|f| f.name)).finish()
    }
}

/// Files the engines read and write, by position: a [`FileList`] (a whole scan) or a few
/// [`SourceFile`]s (what a watcher reported, what a check found).
pub(crate) trait Files: Sync {
    /// How many files.
    fn count(&self) -> usize;
    /// The name of the file at `i` (`i < count()`).
    fn name_at(&self, i: usize) -> &str;
    /// The fingerprint of the file at `i`.
    fn fingerprint_at(&self, i: usize) -> &Fingerprint;
    /// An owned copy of the file at `i`.
    fn owned_at(&self, i: usize) -> SourceFile;
}

impl Files for FileList {
    fn count(&self) -> usize {
        self.len()
    }
    fn name_at(&self, i: usize) -> &str {
        self.files.get(i).map_or("", |l| self.name_of(l))
    }
    fn fingerprint_at(&self, i: usize) -> &Fingerprint {
        &self.files[i].fingerprint
    }
    fn owned_at(&self, i: usize) -> SourceFile {
        self.file_ref(&self.files[i]).to_owned()
    }
}

impl Files for [SourceFile] {
    fn count(&self) -> usize {
        self.len()
    }
    fn name_at(&self, i: usize) -> &str {
        &self[i].name
    }
    fn fingerprint_at(&self, i: usize) -> &Fingerprint {
        &self[i].fingerprint
    }
    fn owned_at(&self, i: usize) -> SourceFile {
        self[i].clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn fp(n: u64) -> Fingerprint {
        Fingerprint {
            dev: 1,
            ino: n,
            size: n,
            mtime_ns: n as i64,
            ctime_ns: 0,
        }
    }

    #[test]
    fn files_stay_small() {
        assert_eq!(std::mem::size_of::<Listed>(), 48);
    }

    #[test]
    fn behaves_as_a_list_of_source_files() {
        let mut l = FileList::new(Arc::from(Path::new("/t")));
        assert!(l.is_empty() && l.get(0).is_none());
        for (i, n) in ["b.html", "a/c.html", "a.html"].iter().enumerate() {
            assert!(l.push(n, fp(i as u64)));
        }
        let f = l.at(1);
        assert_eq!(
            (f.name, f.fingerprint, f.path()),
            ("a/c.html", &fp(1), "/t/a/c.html".into())
        );
        let owned = f.to_owned();
        assert_eq!(
            (owned.name.as_str(), owned.fingerprint),
            ("a/c.html", fp(1))
        );
        assert_eq!(owned.path(), Path::new("/t/a/c.html"));
        l.sort_by_cached_key(|f| f.name.to_owned());
        assert_eq!(
            l.iter().map(|f| f.name).collect::<Vec<_>>(),
            ["a.html", "a/c.html", "b.html"]
        );
        l.retain(|i, f| i != 1 && f.name != "nope");
        assert_eq!(
            l.iter()
                .map(|f| (f.name, f.fingerprint.ino))
                .collect::<Vec<_>>(),
            [("a.html", 2), ("b.html", 0)]
        );
        assert_eq!(
            (l.count(), l.name_at(1), l.fingerprint_at(1)),
            (2, "b.html", &fp(0))
        );
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        #[test]
        fn agrees_with_a_vec(
            names in proptest::collection::vec("[a-zé/]{0,12}", 0..60),
            keep in proptest::collection::vec(any::<bool>(), 60),
            sort_first in any::<bool>(),
        ) {
            let mut l = FileList::default();
            let mut model: Vec<(String, Fingerprint)> = Vec::new();
            for (i, n) in names.iter().enumerate() {
                prop_assert!(l.push(n, fp(i as u64)));
                model.push((n.clone(), fp(i as u64)));
            }
            if sort_first {
                l.sort_by_cached_key(|f| std::cmp::Reverse(f.name.to_owned()));
                model.sort_by_cached_key(|(n, _)| std::cmp::Reverse(n.clone()));
            }
            l.retain(|i, _| keep[i]);
            let mut k = keep.iter();
            model.retain(|_| *k.next().unwrap());
            let got: Vec<(String, Fingerprint)> =
                l.iter().map(|f| (f.name.to_owned(), *f.fingerprint)).collect();
            prop_assert_eq!(got, model);
        }
    }
}
