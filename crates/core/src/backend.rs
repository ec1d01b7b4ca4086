//! The storage trait every cache backend implements.

use std::fmt::Debug;

use async_trait::async_trait;
use bytes::Bytes;

use crate::error::{Error, ErrorKind, Result};
use crate::index::{self, IndexChanges, IndexSnapshot};
use crate::key::Namespace;

/// What a backend can do. Engines read it to size batches, check values before sending them, and
/// decide how to find orphaned entries.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Capabilities {
    /// [`CacheBackend::list_keys`] is supported.
    pub list_keys: bool,
    /// The batch methods are real batches (pipelines, multi-get), not loops over single keys.
    pub native_batch: bool,
    /// The most keys one batch call should carry; engines split larger batches.
    pub batch_max_keys: Option<usize>,
    /// The largest value the backend accepts, in bytes.
    pub max_value_bytes: Option<usize>,
    /// Values survive a restart of the process or server.
    pub persistent: bool,
    /// Other processes see the same entries (a server or a shared file).
    pub shared: bool,
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

/// An async key-value cache that template-cache can keep warm and check.
///
/// Implement it in your own crate to add a backend, then prove it with
/// `template-cache-testkit`. Keys are ASCII, at most 250 bytes, without spaces or control
/// characters; values are opaque bytes.
///
/// # Behavior (every implementation)
/// - A missing key is `Ok(None)` / `Ok(false)`, never an error; deleting a missing key succeeds.
/// - Batch methods behave exactly like the single-key methods applied in order, and return results
///   in the order of their input.
/// - Failures that may pass (connection lost, timeout, overload) are temporary errors
///   ([`Error::is_temporary`]); the engines retry them. Everything else is permanent.
/// - A value over [`Capabilities::max_value_bytes`] is refused with [`ErrorKind::ValueTooLarge`]
///   and leaves the stored value unchanged.
/// - Errors and [`Self::describe`] never contain secrets such as passwords.
#[async_trait]
pub trait CacheBackend: Send + Sync + Debug + 'static {
    /// What this backend can do.
    fn capabilities(&self) -> Capabilities;

    /// A human-readable description for logs and reports, with any secret redacted
    /// (for example `redis://127.0.0.1:6379/0`).
    fn describe(&self) -> String;

    /// The value of `key`, or `None` if it is absent.
    async fn get(&self, key: &str) -> Result<Option<Bytes>>;

    /// Stores `value` under `key`, replacing any previous value.
    async fn set(&self, key: &str, value: Bytes) -> Result<()>;

    /// Removes `key`; succeeds whether or not it existed.
    async fn delete(&self, key: &str) -> Result<()>;

    /// The values of `keys`, in order. Backends with native batching override this.
    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>> {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            out.push(self.get(key).await?);
        }
        Ok(out)
    }

    /// Stores every `(key, value)` pair. Backends with native batching override this.
    ///
    /// On error, any subset of the pairs may have been stored.
    async fn set_many(&self, entries: &[(String, Bytes)]) -> Result<()> {
        for (key, value) in entries {
            self.set(key, value.clone()).await?;
        }
        Ok(())
    }

    /// Removes every key in `keys`. Backends with native batching override this.
    async fn delete_many(&self, keys: &[String]) -> Result<()> {
        for key in keys {
            self.delete(key).await?;
        }
        Ok(())
    }

    /// Whether each key exists, in order, without transferring values where the backend can.
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
        Err(Error::new(
            ErrorKind::Unsupported,
            format!("{} cannot list its keys", self.describe()),
        ))
    }

    /// Makes every completed write durable. A no-op unless the backend buffers writes.
    async fn flush(&self) -> Result<()> {
        Ok(())
    }

    /// Reads the namespace's index (name → content hash); `None` if there is none.
    ///
    /// The default stores the index as sharded records under ordinary keys (`docs/format.md`).
    /// Backends with a better native structure may override this together with
    /// [`Self::update_index`].
    async fn load_index(&self, namespace: &Namespace) -> Result<Option<IndexSnapshot>> {
        index::sharded::load(self, namespace).await
    }

    /// Applies upserts and removals to the namespace's index, creating it if needed.
    ///
    /// Each call leaves a readable index, even if the process stops in the middle.
    async fn update_index(&self, namespace: &Namespace, changes: &IndexChanges) -> Result<()> {
        index::sharded::update(self, namespace, changes).await
    }
}
