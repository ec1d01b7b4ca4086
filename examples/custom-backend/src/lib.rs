#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

mod error;
pub mod layout;
mod lock;

use std::sync::Arc;
use std::time::Duration;

use futures_util::{StreamExt, TryStreamExt, stream};
use object_store::local::LocalFileSystem;
use object_store::path::Path;
use object_store::{GetOptions, ObjectStore, PutMode, PutOptions, PutPayload, UpdateVersion};
use template_cache_core::{
    Bytes, CacheBackend, Capabilities, Error, ErrorKind, Expiry, IndexLayout, Result, async_trait,
};

use crate::error::convert;
use crate::lock::DirLock;

/// The `object_store` this crate is built against, so callers build stores of the same version.
pub use object_store;

/// Requests in flight at once within one batch call, unless set with
/// [`ObjectStoreBackend::with_concurrency`].
pub const DEFAULT_CONCURRENCY: usize = 32;

/// Keys per batch call (what one S3 `DeleteObjects` request or one list page holds).
pub const BATCH_MAX_KEYS: usize = 1000;

/// The largest value accepted unless set with [`ObjectStoreBackend::with_max_value_bytes`]:
/// 5,000 MiB, the largest single-request upload of the three clouds (Azure's Put Blob; S3 takes
/// 5 GiB, Google Cloud Storage 5 TiB). Values are written in one request, never in parts.
pub const DEFAULT_MAX_VALUE_BYTES: u64 = 5000 * 1024 * 1024;

/// The lock file of the local-directory flavour, in the directory itself (it is not a key:
/// [`layout::key_of`] never decodes it).
pub const LOCK_FILE: &str = ".tcache-lock";

/// Conditional writes give up after this many attempts in a row lost to other writers, with a
/// temporary error the engines retry.
const MAX_CONDITIONAL_ATTEMPTS: usize = 32;

/// A template cache in an object store: S3, Google Cloud Storage, Azure Blob Storage (with this
/// crate's `aws`, `gcp` or `azure` feature), any other [`ObjectStore`], or a local directory.
///
/// Every key is one object (see [`layout`] for its path). Objects never expire: object stores
/// keep no TTL, so the lease record's own expiry time frees an abandoned namespace (as on sled).
#[derive(Clone, Debug)]
pub struct ObjectStoreBackend {
    store: Arc<dyn ObjectStore>,
    root: Path,
    swaps: Swaps,
    concurrency: usize,
    max_value_bytes: usize,
    evicts: bool,
}

/// How a read–compare–write of the lease primitives is made atomic.
#[derive(Clone, Debug)]
enum Swaps {
    /// The store's conditional update: the write names the e-tag (or version) read, and fails
    /// if the object changed since (`PutMode::Update`, HTTP `If-Match`).
    Conditional,
    /// The store has no conditional update (`LocalFileSystem`): a lock file excludes every other
    /// conditional writer, in this process and others, while it reads, compares and writes.
    Locked(Arc<DirLock>),
}

impl ObjectStoreBackend {
    /// A cache in `store`, under `root` (`Path::default()` for the whole store; a prefix lets
    /// several caches share a bucket).
    ///
    /// The store must implement conditional puts (`PutMode::Create` and `PutMode::Update`), as
    /// `InMemory`, Amazon S3, Google Cloud Storage and Azure Blob Storage do. For a local
    /// directory use [`Self::local`]: `LocalFileSystem` has no conditional update, and the lease
    /// primitives fail on it with [`ErrorKind::Unsupported`].
    pub fn new(store: Arc<dyn ObjectStore>, root: Path) -> Self {
        ObjectStoreBackend {
            store,
            root,
            swaps: Swaps::Conditional,
            concurrency: DEFAULT_CONCURRENCY,
            max_value_bytes: usize::try_from(DEFAULT_MAX_VALUE_BYTES).unwrap_or(usize::MAX),
            evicts: false,
        }
    }

    /// A cache in the local directory `dir` (created if needed), safe for several processes at
    /// once: the lease primitives take an exclusive lock on `dir/.tcache-lock`.
    pub fn local(dir: impl AsRef<std::path::Path>) -> Result<Self> {
        let dir = dir.as_ref();
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
        let store = LocalFileSystem::new_with_prefix(dir)
            .map_err(|e| convert(e, &format!("opening directory {}", dir.display())))?;
        Ok(ObjectStoreBackend {
            swaps: Swaps::Locked(Arc::new(DirLock::new(dir.join(LOCK_FILE)))),
            ..Self::new(Arc::new(store), Path::default())
        })
    }

    /// At most `requests` requests in flight within one batch call (at least 1).
    pub fn with_concurrency(mut self, requests: usize) -> Self {
        self.concurrency = requests.max(1);
        self
    }

    /// Declares the largest value accepted, in bytes (a bucket policy or a proxy may impose a
    /// smaller one than [`DEFAULT_MAX_VALUE_BYTES`]).
    pub fn with_max_value_bytes(mut self, bytes: usize) -> Self {
        self.max_value_bytes = bytes;
        self
    }

    /// Declares that objects may disappear without a delete: set it when a lifecycle rule
    /// expires objects under the root, so that warms check that indexed entries still exist.
    pub fn with_evicts(mut self, evicts: bool) -> Self {
        self.evicts = evicts;
        self
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The path every object of this cache is under.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// The object path of cache key `key` (see [`layout`]).
    pub fn path_of(&self, key: &str) -> Path {
        layout::path_of(&self.root, key)
    }

    // Batches run these with bounded concurrency (`buffered`: results in input order). The
    // futures are collected before they are streamed: a closure returning an `async` block in
    // the stream trips the compiler's `Send` check of the `async_trait` future.

    async fn get_one(&self, key: &str) -> Result<Option<Bytes>> {
        let found = self.fetch(&self.path_of(key), key).await?;
        Ok(found.and_then(|(body, _)| frame::decode(body)))
    }

    async fn put_one(&self, key: &str, value: &Bytes) -> Result<()> {
        let body = PutPayload::from(frame::encode(value));
        self.store
            .put_opts(&self.path_of(key), body, PutOptions::default())
            .await
            .map(drop)
            .map_err(|e| convert(e, &format!("writing key {key}")))
    }

    /// One `HEAD`; a tombstone (an empty object) is absent.
    async fn exists_one(&self, key: &str) -> Result<bool> {
        let head = GetOptions::new().with_head(true);
        match self.store.get_opts(&self.path_of(key), head).await {
            Ok(got) => Ok(got.meta.size > 0),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(convert(e, &format!("checking key {key}"))),
        }
    }

    /// The stored body at `path` and its version, or `None` if there is no object.
    async fn fetch(&self, path: &Path, key: &str) -> Result<Option<(Bytes, UpdateVersion)>> {
        let got = match self.store.get_opts(path, GetOptions::default()).await {
            Ok(got) => got,
            Err(object_store::Error::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(convert(e, &format!("reading key {key}"))),
        };
        let version = UpdateVersion {
            e_tag: got.meta.e_tag.clone(),
            version: got.meta.version.clone(),
        };
        match got.bytes().await {
            Ok(body) => Ok(Some((body, version))),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(convert(e, &format!("reading key {key}"))),
        }
    }

    /// Writes the body `decide` returns for the current value of `key` (`None` when absent),
    /// atomically with respect to every other conditional write of `key`. Returns `false`, having
    /// written nothing, when `decide` declines.
    ///
    /// An object that does not exist is created with `PutMode::Create`, which fails if another
    /// writer created it first. An existing object is replaced with `PutMode::Update` naming the
    /// version just read, which fails if another writer replaced it first; either failure means
    /// the value changed since it was read: read it again and decide again. On the local flavour,
    /// which has no `PutMode::Update`, the whole read–decide–write runs under the directory lock
    /// that every conditional writer takes, and an existing object is simply overwritten.
    async fn write_if(
        &self,
        key: &str,
        decide: impl Fn(Option<&[u8]>) -> Option<Bytes> + Send + Sync,
    ) -> Result<bool> {
        let _held = match &self.swaps {
            Swaps::Locked(lock) => Some(lock.lock().await?),
            Swaps::Conditional => None,
        };
        let path = self.path_of(key);
        for _ in 0..MAX_CONDITIONAL_ATTEMPTS {
            let seen = self.fetch(&path, key).await?;
            let current = seen
                .as_ref()
                .and_then(|(body, _)| frame::decode(body.clone()));
            let Some(body) = decide(current.as_deref()) else {
                return Ok(false);
            };
            let mode = match (seen, &self.swaps) {
                (None, _) => PutMode::Create,
                (Some(_), Swaps::Locked(_)) => PutMode::Overwrite,
                (Some((_, version)), Swaps::Conditional) => {
                    if version.e_tag.is_none() && version.version.is_none() {
                        return Err(Error::new(
                            ErrorKind::Unsupported,
                            format!(
                                "{} returned neither an e-tag nor a version for key {key}: it \
                                 cannot update conditionally",
                                self.store
                            ),
                        ));
                    }
                    PutMode::Update(version)
                }
            };
            match self
                .store
                .put_opts(&path, PutPayload::from(body), PutOptions::from(mode))
                .await
            {
                Ok(_) => return Ok(true),
                // Another writer got there first.
                Err(
                    object_store::Error::AlreadyExists { .. }
                    | object_store::Error::Precondition { .. }
                    | object_store::Error::NotFound { .. },
                ) => continue,
                Err(e @ object_store::Error::NotImplemented { .. }) => {
                    return Err(convert(e, &format!("updating key {key}")).context(
                        "this store has no conditional update; for a local directory use \
                         ObjectStoreBackend::local, which locks instead",
                    ));
                }
                Err(e) => return Err(convert(e, &format!("updating key {key}"))),
            }
        }
        Err(Error::new(
            ErrorKind::Unavailable,
            format!(
                "key {key} changed under {MAX_CONDITIONAL_ATTEMPTS} conditional writes in a row"
            ),
        ))
    }
}

/// How values are stored: the object's bytes are the value, with two exceptions that make room
/// for a *tombstone*, the empty object that a conditional delete leaves (object stores have no
/// conditional delete; see [`CacheBackend::swap_if_equal`] below).
///
/// - An empty object is a tombstone: the key is absent.
/// - A value that is empty or starts with byte `0xFF` is stored with one `0xFF` byte in front.
///
/// Template records (`TPLC`), index records (`TPLX`, `TPLS`) and lease records (`tcache-lease/1`)
/// never start with `0xFF`, so every object template-cache writes holds exactly its value.
mod frame {
    use template_cache_core::Bytes;

    const ESCAPE: u8 = 0xFF;

    /// The body of a tombstone.
    pub(crate) const TOMBSTONE: Bytes = Bytes::new();

    /// The object body for `value`.
    pub(crate) fn encode(value: &Bytes) -> Bytes {
        if value.first().is_none_or(|&b| b == ESCAPE) {
            let mut body = Vec::with_capacity(value.len() + 1);
            body.push(ESCAPE);
            body.extend_from_slice(value);
            Bytes::from(body)
        } else {
            value.clone()
        }
    }

    /// The value an object body holds; `None` for a tombstone.
    pub(crate) fn decode(body: Bytes) -> Option<Bytes> {
        match body.first() {
            None => None,
            Some(&ESCAPE) => Some(body.slice(1..)),
            Some(_) => Some(body),
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn every_value_round_trips_and_none_is_a_tombstone() {
            for value in [
                &b""[..],
                b"\xff",
                b"\xff\xff",
                b"\xffx",
                b"x\xff",
                b"TPLC\x01",
                b"\0",
            ] {
                let value = Bytes::copy_from_slice(value);
                let body = encode(&value);
                assert!(!body.is_empty());
                assert_eq!(decode(body), Some(value));
            }
            assert_eq!(decode(TOMBSTONE), None);
            let record = Bytes::from_static(b"TPLC...");
            assert_eq!(encode(&record), record, "records are stored as they are");
        }
    }
}

#[async_trait]
impl CacheBackend for ObjectStoreBackend {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            list_keys: true,
            batch_max_keys: Some(BATCH_MAX_KEYS),
            max_value_bytes: Some(self.max_value_bytes),
            evicts: self.evicts,
            ..Capabilities::new()
        }
    }

    fn index_layout(&self) -> IndexLayout {
        IndexLayout::Sharded
    }

    /// `object-store:<store>[/<root>]`, for example `object-store:AmazonS3(my-bucket)/templates`:
    /// `object_store` displays a store by its bucket or directory, never its credentials.
    fn describe(&self) -> String {
        if self.root.is_root() {
            format!("object-store:{}", self.store)
        } else {
            format!("object-store:{}/{}", self.store, self.root)
        }
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>> {
        let gets: Vec<_> = keys.iter().map(|key| self.get_one(key)).collect();
        stream::iter(gets)
            .buffered(self.concurrency)
            .try_collect()
            .await
    }

    /// Object stores keep no TTL: entries stay until deleted, whatever `expiry` says.
    async fn set_many(&self, entries: &[(String, Bytes)], _expiry: Expiry) -> Result<()> {
        let puts: Vec<_> = entries
            .iter()
            .map(|(key, value)| self.put_one(key, value))
            .collect();
        stream::iter(puts)
            .buffer_unordered(self.concurrency)
            .try_collect::<()>()
            .await
    }

    async fn delete_many(&self, keys: &[String]) -> Result<()> {
        // `delete_stream` lets each store batch (S3 deletes 1,000 keys per request).
        let paths: Vec<object_store::Result<Path>> =
            keys.iter().map(|k| Ok(self.path_of(k))).collect();
        let mut deleted = self.store.delete_stream(stream::iter(paths).boxed());
        while let Some(result) = deleted.next().await {
            match result {
                // Deleting a missing key succeeds (LocalFileSystem reports it, S3 does not).
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(convert(e, &format!("deleting {} keys", keys.len()))),
            }
        }
        Ok(())
    }

    /// One `HEAD` per key; a tombstone (an empty object) is absent.
    async fn exists_many(&self, keys: &[String]) -> Result<Vec<bool>> {
        let heads: Vec<_> = keys.iter().map(|key| self.exists_one(key)).collect();
        stream::iter(heads)
            .buffered(self.concurrency)
            .try_collect()
            .await
    }

    /// Lists the prefix's directory (the whole root when the prefix holds no `:`), decodes each
    /// path and keeps the keys that start with `prefix`; tombstones and objects this crate did not
    /// name are skipped.
    async fn list_keys(&self, prefix: &str) -> Result<Vec<String>> {
        let dir = layout::dir_of(&self.root, prefix).unwrap_or_else(|| self.root.clone());
        let mut listing = self.store.list((!dir.is_root()).then_some(&dir));
        let mut keys = Vec::new();
        while let Some(meta) = listing.next().await {
            let meta = match meta {
                Ok(meta) => meta,
                // Deleted while we listed.
                Err(object_store::Error::NotFound { .. }) => continue,
                Err(e) => return Err(convert(e, &format!("listing keys under {prefix:?}"))),
            };
            if meta.size == 0 {
                continue;
            }
            if let Some(key) = layout::key_of(&self.root, &meta.location)
                && key.starts_with(prefix)
            {
                keys.push(key);
            }
        }
        Ok(keys)
    }

    /// `PutMode::Create`: one request, atomic in the store. If the object exists but is a
    /// tombstone (a released lease), it is replaced conditionally, as by
    /// [`Self::swap_if_equal`]. Object stores keep no TTL: the lease record's own expiry time
    /// frees an abandoned namespace.
    async fn put_if_absent(&self, key: &str, value: Bytes, _ttl: Duration) -> Result<bool> {
        let body = frame::encode(&value);
        let create = PutOptions::from(PutMode::Create);
        match self
            .store
            .put_opts(&self.path_of(key), PutPayload::from(body.clone()), create)
            .await
        {
            Ok(_) => return Ok(true),
            Err(
                object_store::Error::AlreadyExists { .. }
                | object_store::Error::Precondition { .. },
            ) => {}
            Err(e) => return Err(convert(e, &format!("creating key {key}"))),
        }
        self.write_if(key, |current| current.is_none().then(|| body.clone()))
            .await
    }

    /// Reads the value and its e-tag, compares, and writes with `PutMode::Update` naming that
    /// e-tag (retrying from the read if another writer got in between); on a local directory,
    /// under the directory's lock instead. Deleting writes a tombstone the same way: object
    /// stores have no conditional delete, and an unconditional one could remove a lease another
    /// writer had just taken over.
    async fn swap_if_equal(
        &self,
        key: &str,
        expected: &[u8],
        new: Option<Bytes>,
        _ttl: Duration,
    ) -> Result<bool> {
        let body = new.as_ref().map_or(frame::TOMBSTONE, frame::encode);
        self.write_if(key, |current| {
            (current == Some(expected)).then(|| body.clone())
        })
        .await
    }
}
