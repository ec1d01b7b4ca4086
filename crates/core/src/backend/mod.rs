//! The storage trait every cache backend implements, and the [`Cache`] wrapper that enforces its
//! contract once for all of them.
//!
//! A backend only stores bytes under keys and declares what it can do ([`Capabilities`]) and
//! where the namespace index lives ([`IndexLayout`]). Everything the trait promises callers
//! (value limits, batch sizes, key validity, index keys never expiring) is enforced by
//! [`Cache`], so a backend does not re-check it.

mod cache;
pub mod url;

use std::fmt::Debug;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::{Error, ErrorKind, Result};

pub use cache::{Cache, MAX_KEY_BYTES, validate_key};

/// What a backend can do and the limits it declares. [`Cache`] reads the limits to split batches
/// and refuse oversize values before a backend sees them; the engines read the flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// [`CacheBackend::list_keys`] is supported. Checks then find orphaned and corrupt entries
    /// the index does not know.
    pub list_keys: bool,
    /// The most keys one batch call may carry; [`Cache`] splits larger batches.
    pub batch_max_keys: Option<usize>,
    /// The most key and value bytes one [`CacheBackend::set_many`] call may carry; [`Cache`]
    /// splits larger batches (a single larger entry is sent alone).
    pub batch_max_bytes: Option<usize>,
    /// The largest value the backend accepts, in bytes; [`Cache`] refuses larger values with
    /// [`ErrorKind::ValueTooLarge`].
    pub max_value_bytes: Option<usize>,
    /// Entries may disappear without a delete (eviction, expiry). Warms then verify that
    /// indexed entries still exist.
    pub evicts: bool,
}

impl Capabilities {
    /// Capabilities with every flag off and no limits; set fields with struct update syntax
    /// (`Capabilities { list_keys: true, ..Capabilities::new() }`) so new fields stay compatible.
    pub fn new() -> Self {
        Self::default()
    }

    /// Returns a [`ErrorKind::ValueTooLarge`] error if `len` exceeds [`Self::max_value_bytes`].
    pub fn check_value_len(&self, key: &str, len: usize) -> Result<()> {
        match self.max_value_bytes {
            Some(max) if len > max => Err(Error::new(
                ErrorKind::ValueTooLarge,
                format!(
                    "value for key {key} is {len} bytes, over the backend's limit of {max} bytes"
                ),
            )),
            _ => Ok(()),
        }
    }
}

/// Where a backend keeps the per-namespace index (name → content hash). Declared by every
/// backend through [`CacheBackend::index_layout`]; nothing guesses it. Both layouts are specified
/// in `docs/format.md` and implemented in [`crate::index`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IndexLayout {
    /// A root record and shards of at most 512 KiB (or the value limit) under ordinary keys: for
    /// stores that only hold values (Memcached, moka, sled).
    Sharded,
    /// One hash per namespace, one field per template, through [`CacheBackend::hash_scan`] and
    /// [`CacheBackend::hash_update`]: for stores with a native hash (Redis).
    Hash,
}

/// A write fence: a write guarded by it happens only while `key` holds `token` (the namespace
/// write lease of the writer).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Fence {
    /// The lease key.
    pub key: String,
    /// The holder's lease record, as stored.
    pub token: Bytes,
}

/// What a cache server says about its memory, summed over its servers.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ServerStats {
    /// Entries evicted since the server started (Redis `evicted_keys`, Memcached `evictions`).
    pub evictions: u64,
    /// Bytes in use, where known.
    pub used_bytes: Option<u64>,
    /// The memory limit in bytes, where there is one.
    pub max_bytes: Option<u64>,
    /// The eviction policy, where the server has a choice (Redis `maxmemory-policy`).
    pub policy: Option<String>,
    /// A value that changes whenever a server may have dropped entries on its own: restarted,
    /// evicted or expired anything (Redis: each server's `run_id`, `evicted_keys` and
    /// `expired_keys`). While it is unchanged, every entry stored before is still there, short
    /// of a deletion by hand; a warm then skips its existence check. `None` where the backend
    /// cannot tell.
    pub drop_stamp: Option<String>,
}

/// How long a written value lives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Expiry {
    /// A template entry: the backend's configured expiry (TTL) applies, if it has one.
    Entry,
    /// An index record: it never expires, whatever the backend's configured TTL.
    Never,
}

/// An async key-value store that template-cache can keep warm and check.
///
/// Implement it in your own crate to add a backend, then prove it with
/// `template-cache-testkit`. Callers reach a backend through [`Cache`], which enforces the rules
/// below that are marked *enforced*; an implementation may rely on them.
///
/// # Behavior (every implementation)
/// - A missing key is `None` / `false`, never an error; deleting a missing key succeeds.
/// - Batch methods return results in the order of their input.
/// - Failures that may pass (connection lost, timeout, overload) are temporary errors
///   ([`Error::is_temporary`]); the engines retry them. Everything else is permanent.
/// - Errors and [`Self::describe`] never contain secrets such as passwords.
/// - *Enforced:* keys are 1 to [`MAX_KEY_BYTES`] printable ASCII bytes without spaces; a batch
///   holds at most [`Capabilities::batch_max_keys`] keys and [`Capabilities::batch_max_bytes`]
///   bytes; no value exceeds [`Capabilities::max_value_bytes`]; index records are written with
///   [`Expiry::Never`].
#[async_trait]
pub trait CacheBackend: Send + Sync + Debug + 'static {
    /// What this backend can do, and its limits.
    fn capabilities(&self) -> Capabilities;

    /// Where this backend keeps namespace indexes.
    fn index_layout(&self) -> IndexLayout;

    /// A human-readable description for logs and reports, with any secret redacted
    /// (for example `redis://127.0.0.1:6379/0`).
    fn describe(&self) -> String;

    /// The values of `keys`, in order (`None` for an absent key).
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>>;

    /// Stores every `(key, value)` pair, replacing previous values, with `expiry`.
    ///
    /// On error, any subset of the pairs may have been stored.
    async fn set_many(&self, entries: &[(String, Bytes)], expiry: Expiry) -> Result<()>;

    /// Removes every key in `keys`; absent keys are not an error.
    async fn delete_many(&self, keys: &[String]) -> Result<()>;

    /// Whether each key exists, in order. The default fetches the values; override it where
    /// the backend can answer without transferring them.
    async fn exists_many(&self, keys: &[String]) -> Result<Vec<bool>> {
        Ok(self
            .get_many(keys)
            .await?
            .into_iter()
            .map(|v| v.is_some())
            .collect())
    }

    /// Every key starting with `prefix`, in no particular order.
    ///
    /// Requires [`Capabilities::list_keys`]; the default returns [`ErrorKind::Unsupported`].
    async fn list_keys(&self, prefix: &str) -> Result<Vec<String>> {
        let _ = prefix;
        Err(unsupported(self, "list its keys"))
    }

    /// Hands every key starting with `prefix` to `each`, a page at a time, in no particular
    /// order: a namespace of millions of keys is never listed into memory whole. A key may be
    /// handed over more than once (as Redis `SCAN` may return it twice).
    ///
    /// Requires [`Capabilities::list_keys`]; the default hands over [`Self::list_keys`] as one
    /// page. Override it where the server lists in pages.
    async fn list_keys_paged(
        &self,
        prefix: &str,
        each: &mut (dyn FnMut(Vec<String>) + Send),
    ) -> Result<()> {
        each(self.list_keys(prefix).await?);
        Ok(())
    }

    /// One page of the fields of hash `key` from `cursor` (`0` starts), and the cursor of the
    /// next page (`0` when done). An absent hash is an empty page with cursor `0`; a field may
    /// appear on more than one page.
    ///
    /// Required by [`IndexLayout::Hash`]; the default returns [`ErrorKind::Unsupported`].
    async fn hash_scan(&self, key: &str, cursor: u64) -> Result<(u64, Vec<(Bytes, Bytes)>)> {
        let _ = (key, cursor);
        Err(unsupported(self, "hold hashes"))
    }

    /// How many fields hash `key` has (`0` when absent), or `None` when the backend cannot
    /// tell cheaply: a hint to size what reads the hash, never trusted for anything else.
    ///
    /// Optional for [`IndexLayout::Hash`]; the default returns `None`.
    async fn hash_len(&self, key: &str) -> Result<Option<u64>> {
        let _ = key;
        Ok(None)
    }

    /// Sets the fields `set` and removes the fields `remove` of hash `key`, creating it if
    /// needed. The hash never expires; a hash left without fields may vanish.
    ///
    /// Required by [`IndexLayout::Hash`]; the default returns [`ErrorKind::Unsupported`].
    async fn hash_update(
        &self,
        key: &str,
        set: &[(String, Bytes)],
        remove: &[String],
    ) -> Result<()> {
        let _ = (key, set, remove);
        Err(unsupported(self, "hold hashes"))
    }

    /// Writes `value` under `key` only if `key` is absent, atomically, expiring after `ttl`
    /// where the backend can expire keys. Returns whether it wrote. Used for the namespace
    /// write lease.
    async fn put_if_absent(&self, key: &str, value: Bytes, ttl: Duration) -> Result<bool>;

    /// Atomically replaces the value of `key` with `new` (expiring after `ttl` where the backend
    /// can expire keys), or deletes `key` when `new` is `None`, only if `key` currently holds
    /// exactly `expected`. Returns whether it did. Used for the namespace write lease.
    async fn swap_if_equal(
        &self,
        key: &str,
        expected: &[u8],
        new: Option<Bytes>,
        ttl: Duration,
    ) -> Result<bool>;

    /// Like [`Self::hash_update`], applied only while `fence.key` holds `fence.token`, checked
    /// atomically with the update; otherwise nothing changes and the error is
    /// [`ErrorKind::Conflict`]. Required by [`IndexLayout::Hash`]; the default returns
    /// [`ErrorKind::Unsupported`].
    async fn hash_update_fenced(
        &self,
        key: &str,
        set: &[(String, Bytes)],
        remove: &[String],
        fence: &Fence,
    ) -> Result<()> {
        let _ = (key, set, remove, fence);
        Err(unsupported(self, "hold hashes"))
    }

    /// The server's own statistics on memory and evictions, summed over its servers, for
    /// diagnosing an undersized cache; `None` for backends that keep none (the default).
    async fn server_stats(&self) -> Result<Option<ServerStats>> {
        Ok(None)
    }

    /// Makes every completed write durable. A no-op unless the backend buffers writes.
    async fn flush(&self) -> Result<()> {
        Ok(())
    }
}

fn unsupported<B: CacheBackend + ?Sized>(b: &B, what: &str) -> Error {
    Error::new(
        ErrorKind::Unsupported,
        format!("{} cannot {what}", b.describe()),
    )
}
