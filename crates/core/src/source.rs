//! The template source: scanning plus content hashing that never re-reads an unchanged file.

use std::collections::HashMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::error::{Error, ErrorKind, Result};
use crate::key::ContentHash;
use crate::scan::{Filter, Fingerprint, Scan, SourceConfig, SourceFile};

/// Files whose mtime or ctime is this close to the moment they were hashed are hashed again on
/// the next run: a write in the same timestamp tick would otherwise go unnoticed.
const RACY_WINDOW_NS: i64 = 1_000_000_000;
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

/// A template's content as read from its file.
#[derive(Clone, Debug)]
pub struct Loaded {
    /// The bytes read.
    pub content: Bytes,
    /// Their SHA-256.
    pub hash: ContentHash,
    /// The file's modification time, nanoseconds since the Unix epoch.
    pub mtime_ns: i64,
}

/// Scans a template tree and hashes its files, reading only those whose fingerprint changed.
#[derive(Debug)]
pub struct Source {
    config: SourceConfig,
    filter: Filter,
    root: PathBuf,
    fingerprints: Mutex<FingerprintStore>,
    files_hashed: std::sync::atomic::AtomicU64,
}

impl Source {
    /// Validates `config` (glob patterns) and loads persisted fingerprints.
    pub fn new(config: SourceConfig) -> Result<Arc<Self>> {
        let filter = Filter::new(&config)?;
        let root = std::fs::canonicalize(&config.root).unwrap_or_else(|_| config.root.clone());
        let store = FingerprintStore::load(config.state_path.as_deref(), &root);
        Ok(Arc::new(Source {
            config,
            filter,
            root,
            fingerprints: Mutex::new(store),
            files_hashed: Default::default(),
        }))
    }

    /// The configuration.
    pub fn config(&self) -> &SourceConfig {
        &self.config
    }

    /// How many files this source has read and hashed since it was created.
    pub fn files_hashed(&self) -> u64 {
        self.files_hashed.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Walks the tree (off the async executor).
    pub async fn scan(self: &Arc<Self>) -> Result<Scan> {
        let this = Arc::clone(self);
        let scan =
            tokio::task::spawn_blocking(move || crate::scan::scan(&this.config, &this.filter))
                .await
                .map_err(|e| {
                    Error::new(ErrorKind::Unexpected, format!("scan task failed: {e}"))
                })??;
        Ok(scan)
    }

    /// The hash of `file` if it is known and its fingerprint is unchanged (never with `checksum`).
    pub fn known_hash(&self, file: &SourceFile) -> Option<ContentHash> {
        if self.config.checksum {
            return None;
        }
        self.lock().lookup(&file.name, &file.fingerprint)
    }

    /// Reads and hashes `files` off the executor, recording their fingerprints.
    pub async fn load_many(
        self: &Arc<Self>,
        files: Vec<SourceFile>,
    ) -> Vec<(SourceFile, Result<Loaded>)> {
        let this = Arc::clone(self);
        let n = files.len();
        match tokio::task::spawn_blocking(move || {
            files
                .into_iter()
                .map(|f| {
                    let r = this.load_one(&f);
                    (f, r)
                })
                .collect::<Vec<_>>()
        })
        .await
        {
            Ok(v) => v,
            Err(e) => {
                tracing::error!(error = %e, files = n, "file reading task failed");
                Vec::new()
            }
        }
    }

    /// Reads and hashes one file, retrying if it changes while being read.
    pub fn load_one(&self, file: &SourceFile) -> Result<Loaded> {
        let path = &file.path;
        for _ in 0..3 {
            let mut f = std::fs::File::open(path).map_err(|e| Error::io(path, e))?;
            let before = Fingerprint::of(&f.metadata().map_err(|e| Error::io(path, e))?);
            if before.size > self.config.max_template_bytes {
                return Err(Error::new(
                    ErrorKind::ValueTooLarge,
                    format!(
                        "{} is {} bytes, over the maximum template size of {} bytes",
                        path.display(),
                        before.size,
                        self.config.max_template_bytes
                    ),
                ));
            }
            let mut buf = Vec::with_capacity(before.size as usize);
            (&mut f)
                .take(self.config.max_template_bytes + 1)
                .read_to_end(&mut buf)
                .map_err(|e| Error::io(path, e))?;
            let after = Fingerprint::of(&f.metadata().map_err(|e| Error::io(path, e))?);
            if before != after || buf.len() as u64 != after.size {
                continue;
            }
            let hash = ContentHash::of(&buf);
            self.files_hashed
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            self.lock().record(&file.name, after, hash, crate::now_ns());
            return Ok(Loaded {
                content: Bytes::from(buf),
                hash,
                mtime_ns: after.mtime_ns,
            });
        }
        Err(Error::new(
            ErrorKind::Io,
            format!("{} kept changing while being read", path.display()),
        )
        .temporary())
    }

    /// Forgets fingerprints of files that `scan` no longer found.
    pub fn prune_state(&self, scan: &Scan) {
        let mut store = self.lock();
        // Every scanned file that was hashed is in the store, so extra entries mean files are
        // gone: only then is pruning worth a pass.
        if store.entries.len() > scan.files.len() {
            let names: std::collections::HashSet<&str> =
                scan.files.iter().map(|f| f.name.as_str()).collect();
            store.retain(|n| names.contains(n));
        }
    }

    /// Persists the fingerprint store, if a state path is configured and it changed.
    pub fn save_state(&self) {
        let Some(path) = &self.config.state_path else {
            return;
        };
        if let Err(e) = self.lock().save(path) {
            tracing::warn!(error = %e, "cannot save the fingerprint state; the next run re-hashes");
        }
    }

    /// The canonical root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, FingerprintStore> {
        self.fingerprints.lock().unwrap_or_else(|p| p.into_inner())
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
}
