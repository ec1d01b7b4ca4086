//! Persisted fingerprints: the content hash of each file, trusted while its fingerprint
//! (device, inode, size, mtime, ctime) is unchanged, so a fresh process never re-reads an
//! unchanged tree.

use std::collections::HashMap;
use std::path::Path;

use crate::error::{Error, ErrorKind, Result};
use crate::format::key::ContentHash;
use crate::source::scan::Fingerprint;

/// Files whose mtime or ctime is this close to the moment they were hashed are hashed again on
/// the next run: a write in the same timestamp tick would otherwise go unnoticed.
/// Two seconds: coarse filesystems (FAT, some network mounts) keep mtimes in 2 s steps.
const RACY_WINDOW_NS: i64 = 2_000_000_000;
const STATE_VERSION: u32 = 1;

#[derive(Clone, Copy, Debug, serde::Serialize, serde::Deserialize)]
struct Known {
    fingerprint: Fingerprint,
    hash: [u8; 32],
    hashed_at_ns: i64,
}

#[derive(serde::Deserialize)]
struct StateFile {
    version: u32,
    root: String,
    entries: HashMap<String, Known>,
}

/// The same layout as [`StateFile`], borrowed, for writing without copying the entries.
#[derive(serde::Serialize)]
struct StateFileRef<'a> {
    version: u32,
    root: &'a str,
    entries: &'a HashMap<String, Known>,
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
#[derive(Debug, Default)]
pub struct FingerprintStore {
    root: String,
    entries: HashMap<String, Known>,
    dirty: bool,
}

impl FingerprintStore {
    /// Loads the store for `root` from `path`; a missing, unreadable or foreign file yields an
    /// empty store (it is only a cache), with a warning for the unreadable case.
    pub fn load(path: Option<&Path>, root: &Path) -> Self {
        let root = root.to_string_lossy().into_owned();
        let empty = FingerprintStore {
            root: root.clone(),
            ..Default::default()
        };
        let Some(path) = path else { return empty };
        let bytes = match std::fs::read(path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return empty,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "cannot read the fingerprint state; re-hashing every file");
                return empty;
            }
        };
        match postcard::from_bytes::<StateFile>(&bytes) {
            Ok(f) if f.version == STATE_VERSION && f.root == root => FingerprintStore {
                root,
                entries: f.entries,
                dirty: false,
            },
            Ok(_) => empty,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "fingerprint state is corrupt; re-hashing every file");
                empty
            }
        }
    }

    /// The trusted hash of `name` if its fingerprint is unchanged and was not racy.
    pub fn lookup(&self, name: &str, fp: &Fingerprint) -> Option<ContentHash> {
        let k = self.entries.get(name)?;
        let settled = fp.mtime_ns.max(fp.ctime_ns) < k.hashed_at_ns.saturating_sub(RACY_WINDOW_NS);
        (k.fingerprint == *fp && settled).then_some(ContentHash(k.hash))
    }

    /// Records that `name` with fingerprint `fp` hashed to `hash` at `hashed_at_ns`.
    pub fn record(
        &mut self,
        name: &str,
        fingerprint: Fingerprint,
        hash: ContentHash,
        hashed_at_ns: i64,
    ) {
        self.entries.insert(
            name.to_owned(),
            Known {
                fingerprint,
                hash: hash.0,
                hashed_at_ns,
            },
        );
        self.dirty = true;
    }

    /// Whether the store knows `name` (whatever its fingerprint).
    pub fn contains(&self, name: &str) -> bool {
        self.entries.contains_key(name)
    }

    /// Whether the store knows a file under directory `dir` (a name starting with `dir/`).
    pub fn any_under(&self, dir: &str) -> bool {
        self.entries
            .keys()
            .any(|n| n.len() > dir.len() && n.starts_with(dir) && n.as_bytes()[dir.len()] == b'/')
    }

    /// Forgets `name`: its file is hashed again next time.
    pub fn remove(&mut self, name: &str) {
        self.dirty |= self.entries.remove(name).is_some();
    }

    /// How many files the store knows.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether the store knows no file.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Forgets names for which `keep` is false.
    pub fn retain(&mut self, keep: impl Fn(&str) -> bool) {
        let before = self.entries.len();
        self.entries.retain(|n, _| keep(n));
        self.dirty |= self.entries.len() != before;
    }

    /// Writes the store atomically (temporary file, then rename) if it changed.
    pub fn save(&mut self, path: &Path) -> Result<()> {
        if !self.dirty {
            return Ok(());
        }
        let file = StateFileRef {
            version: STATE_VERSION,
            root: &self.root,
            entries: &self.entries,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        }
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let out = std::fs::File::create(&tmp).map_err(|e| Error::io(&tmp, e))?;
        let mut out = postcard::to_io(&file, std::io::BufWriter::new(out)).map_err(|e| {
            Error::new(
                ErrorKind::Io,
                format!("{}: writing fingerprint state: {e}", tmp.display()),
            )
        })?;
        std::io::Write::flush(&mut out).map_err(|e| Error::io(&tmp, e))?;
        drop(out);
        std::fs::rename(&tmp, path).map_err(|e| Error::io(path, e))?;
        self.dirty = false;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        assert!(
            FingerprintStore::load(Some(&path), Path::new("/other"))
                .entries
                .is_empty()
        );
        std::fs::write(&path, b"garbage").unwrap();
        assert!(
            FingerprintStore::load(Some(&path), Path::new("/r"))
                .entries
                .is_empty()
        );
    }

    proptest::proptest! {
        #[test]
        fn any_state_file_loads_without_panic(data in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("fp");
            std::fs::write(&path, &data).unwrap();
            let _ = FingerprintStore::load(Some(&path), Path::new("/r"));
        }
    }
}
