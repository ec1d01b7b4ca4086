//! The template source: the tree walk ([`scan`]), persisted fingerprints ([`fingerprints`]),
//! and content hashing that never re-reads an unchanged file.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use crate::error::{Error, ErrorKind, Result};
use crate::format::key::ContentHash;

pub mod files;
pub mod fingerprints;
pub mod scan;

pub use fingerprints::FingerprintStore;
use scan::{Filter, Fingerprint, Probe, Scan, SourceConfig, SourceFile};

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

/// The fingerprint store, locked for a run of lookups: [`Source::known_hash`] a million times
/// would take and release the lock a million times, and each atomic operation keeps the
/// processor from overlapping one lookup's cache misses with the next one's.
pub struct KnownHashes<'a> {
    store: std::sync::MutexGuard<'a, FingerprintStore>,
    checksum: bool,
}

impl KnownHashes<'_> {
    /// [`Source::known_hash`] of the file `name` with fingerprint `fingerprint`.
    pub fn get(&self, name: &str, fingerprint: &Fingerprint) -> Option<ContentHash> {
        if self.checksum {
            return None;
        }
        self.store.lookup(name, fingerprint)
    }
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
        let started = std::time::Instant::now();
        let store = FingerprintStore::load(config.state_path.as_deref(), &root);
        crate::engine::phases::log("state load", started.elapsed(), store.len());
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
        self.scan_counting(|_| {}).await
    }

    /// Walks the tree (off the async executor), calling `found` with the number of files found
    /// since its last call as the walk goes ([`scan::scan_counting`]).
    pub async fn scan_counting(
        self: &Arc<Self>,
        found: impl Fn(u64) + Send + 'static,
    ) -> Result<Scan> {
        let this = Arc::clone(self);
        let scan = tokio::task::spawn_blocking(move || {
            crate::source::scan::scan_counting(&this.config, &this.filter, &found)
        })
        .await
        .map_err(|e| Error::new(ErrorKind::Unexpected, format!("scan task failed: {e}")))??;
        Ok(scan)
    }

    /// Examines `names` (reported changed by a file watcher) off the executor, as a scan would
    /// see them. Fails as a whole, examining nothing, when the root itself is missing: nothing
    /// under it may then be taken as deleted.
    pub async fn probe(self: &Arc<Self>, names: Vec<String>) -> Result<Vec<(String, Probe)>> {
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let root = std::fs::canonicalize(&this.config.root)
                .map_err(|e| Error::io(&this.config.root, e).context("template root"))?;
            Ok(names
                .into_iter()
                .map(|n| {
                    let p = scan::probe(&root, &n, &this.config, &this.filter);
                    (n, p)
                })
                .collect())
        })
        .await
        .map_err(|e| Error::new(ErrorKind::Unexpected, format!("probe task failed: {e}")))?
    }

    /// The names of the files under directories `dirs` (names relative to the root), off the
    /// executor, or `None` when there are more than `limit` (a full scan is then cheaper to
    /// reason about). Symlinked directories are not descended, as in a scan; unreadable parts
    /// are skipped (a full scan reports them).
    pub async fn files_under(
        self: &Arc<Self>,
        dirs: Vec<String>,
        limit: usize,
    ) -> Result<Option<Vec<String>>> {
        let this = Arc::clone(self);
        tokio::task::spawn_blocking(move || {
            let root = std::fs::canonicalize(&this.config.root)
                .map_err(|e| Error::io(&this.config.root, e).context("template root"))?;
            let mut names = Vec::new();
            for dir in dirs {
                let walker = walkdir::WalkDir::new(root.join(&dir)).follow_links(false);
                for entry in walker.into_iter().flatten() {
                    if entry.file_type().is_dir() {
                        continue;
                    }
                    if let Ok(name) = scan::template_name(&root, entry.path()) {
                        names.push(name);
                        if names.len() > limit {
                            return Ok(None);
                        }
                    }
                }
            }
            Ok(Some(names))
        })
        .await
        .map_err(|e| Error::new(ErrorKind::Unexpected, format!("walk task failed: {e}")))?
    }

    /// Whether a file `name` was hashed before (whatever its fingerprint now).
    pub fn knows(&self, name: &str) -> bool {
        self.lock().contains(name)
    }

    /// Whether a file under directory `dir` was hashed before.
    pub fn knows_under(&self, dir: &str) -> bool {
        self.lock().any_under(dir)
    }

    /// Forgets the fingerprint of `name`, so that its file is read again next time.
    pub fn forget(&self, name: &str) {
        self.lock().remove(name);
    }

    /// The hash of `file` if it is known and its fingerprint is unchanged (never with `checksum`).
    pub fn known_hash(&self, file: &SourceFile) -> Option<ContentHash> {
        self.known_hashes().get(&file.name, &file.fingerprint)
    }

    /// The known hashes, for many lookups under one lock (see [`KnownHashes`]). Hold it only
    /// for a loop without awaits: files are hashed under the same lock.
    pub fn known_hashes(&self) -> KnownHashes<'_> {
        KnownHashes {
            store: self.lock(),
            checksum: self.config.checksum,
        }
    }

    /// Reads and hashes `files` off the executor, recording their fingerprints.
    pub async fn load_many(
        self: &Arc<Self>,
        files: Vec<SourceFile>,
    ) -> Vec<(SourceFile, Result<Loaded>)> {
        let this = Arc::clone(self);
        let n = files.len();
        let names = files.clone();
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
                // Every file of a failed task is reported, never silently dropped.
                tracing::error!(error = %e, files = n, "file reading task failed");
                let err = Error::new(
                    ErrorKind::Unexpected,
                    format!("file reading task failed: {e}"),
                );
                names.into_iter().map(|f| (f, Err(err.clone()))).collect()
            }
        }
    }

    /// Reads and hashes one file, retrying if it changes while being read.
    pub fn load_one(&self, file: &SourceFile) -> Result<Loaded> {
        let path = &file.path();
        for _ in 0..3 {
            let (mut f, meta) = scan::open_confined(&self.root, file)?;
            let before = Fingerprint::of(&meta);
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
            self.lock()
                .record(&file.name, after, hash, crate::time::now_ns());
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
        if store.len() > scan.files.len() {
            let ids: std::collections::HashSet<u128> = scan
                .files
                .iter()
                .map(|f| FingerprintStore::id_of(f.name))
                .collect();
            store.retain_ids(|id| ids.contains(&id));
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
