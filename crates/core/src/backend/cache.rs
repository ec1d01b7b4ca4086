//! [`Cache`]: the one place where the rules of [`CacheBackend`] are enforced.

use std::sync::Arc;

use bytes::Bytes;

use std::future::Future;
use std::time::{Duration, Instant};

use super::{CacheBackend, Capabilities, Expiry, Fence, IndexLayout, ServerStats};
use crate::error::{Error, ErrorKind, Result};
use crate::format::key::is_entry_key;

/// The longest key any backend must accept (Memcached's limit).
pub const MAX_KEY_BYTES: usize = 250;

/// Checks that `key` is 1 to [`MAX_KEY_BYTES`] bytes of printable ASCII without spaces, the
/// keys every backend accepts.
pub fn validate_key(key: &str) -> Result<()> {
    let why = if key.is_empty() {
        "it is empty"
    } else if key.len() > MAX_KEY_BYTES {
        "it is longer than 250 bytes"
    } else if !key.bytes().all(|b| b.is_ascii_graphic()) {
        "it holds a space, a control character or a non-ASCII byte"
    } else {
        return Ok(());
    };
    Err(Error::new(
        ErrorKind::ConfigInvalid,
        format!("cache key {:?} is invalid: {why}", truncate(key)),
    ))
}

fn truncate(key: &str) -> String {
    key.chars().take(80).collect()
}

/// A backend behind its contract: every call is checked and shaped here, once for every
/// backend, before the backend sees it.
///
/// - keys are validated ([`validate_key`]);
/// - values over [`Capabilities::max_value_bytes`] are refused with
///   [`ErrorKind::ValueTooLarge`] before anything is sent, so nothing stored changes;
/// - batches are split to [`Capabilities::batch_max_keys`] and
///   [`Capabilities::batch_max_bytes`];
/// - template entries (`<namespace>:<64 hex>`) are written with [`Expiry::Entry`], every other
///   key (the index) with [`Expiry::Never`];
/// - a backend that answers a batch with the wrong number of results is an error, never a
///   silent misalignment.
///
/// Cloning is cheap (one `Arc`).
#[derive(Clone, Debug)]
pub struct Cache {
    backend: Arc<dyn CacheBackend>,
    caps: Capabilities,
}

impl Cache {
    /// Wraps `backend`, reading its capabilities once.
    pub fn new(backend: Arc<dyn CacheBackend>) -> Self {
        let caps = backend.capabilities();
        Cache { backend, caps }
    }

    /// The wrapped backend.
    pub fn backend(&self) -> &Arc<dyn CacheBackend> {
        &self.backend
    }

    /// The backend's capabilities.
    pub fn capabilities(&self) -> Capabilities {
        self.caps
    }

    /// Where the backend keeps namespace indexes.
    pub fn index_layout(&self) -> IndexLayout {
        self.backend.index_layout()
    }

    /// The backend's description, secrets redacted.
    pub fn describe(&self) -> String {
        self.backend.describe()
    }

    /// Keys per batch call: the backend's limit, or everything at once.
    pub fn batch_keys(&self) -> usize {
        self.caps.batch_max_keys.unwrap_or(usize::MAX).max(1)
    }

    /// The value of `key`, or `None` if it is absent.
    pub async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        let mut v = self.get_many(&[key.to_owned()]).await?;
        Ok(v.pop().flatten())
    }

    /// Stores `value` under `key`.
    pub async fn set(&self, key: &str, value: Bytes) -> Result<()> {
        self.set_many(&[(key.to_owned(), value)]).await
    }

    /// Removes `key`; succeeds whether or not it existed.
    pub async fn delete(&self, key: &str) -> Result<()> {
        self.delete_many(&[key.to_owned()]).await
    }

    /// The values of `keys`, in order.
    pub async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>> {
        validate_keys(keys)?;
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(self.batch_keys()) {
            let values = timed("get", self.backend.get_many(chunk)).await?;
            self.expect_len("get_many", chunk.len(), values.len())?;
            out.extend(values);
        }
        Ok(out)
    }

    /// Whether each key exists, in order.
    pub async fn exists_many(&self, keys: &[String]) -> Result<Vec<bool>> {
        validate_keys(keys)?;
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(self.batch_keys()) {
            let found = timed("exists", self.backend.exists_many(chunk)).await?;
            self.expect_len("exists_many", chunk.len(), found.len())?;
            out.extend(found);
        }
        Ok(out)
    }

    /// Removes every key in `keys`.
    pub async fn delete_many(&self, keys: &[String]) -> Result<()> {
        validate_keys(keys)?;
        for chunk in keys.chunks(self.batch_keys()) {
            timed("delete", self.backend.delete_many(chunk)).await?;
        }
        Ok(())
    }

    /// Stores every pair. Every key and value is checked before anything is sent: one invalid
    /// key or oversize value fails the whole call and changes nothing.
    ///
    /// On a backend error, any subset of the pairs may have been stored.
    pub async fn set_many(&self, entries: &[(String, Bytes)]) -> Result<()> {
        for (key, value) in entries {
            validate_key(key)?;
            self.caps.check_value_len(key, value.len())?;
        }
        // Template entries and index records go in separate calls, each with its expiry.
        let (mut start, mut bytes) = (0, 0usize);
        let (max_keys, max_bytes) = (
            self.batch_keys(),
            self.caps.batch_max_bytes.unwrap_or(usize::MAX),
        );
        let mut expiry = entries.first().map_or(Expiry::Never, |(k, _)| expiry_of(k));
        for (i, (key, value)) in entries.iter().enumerate() {
            let size = key.len() + value.len();
            let this = expiry_of(key);
            if i > start
                && (i - start >= max_keys
                    || bytes.saturating_add(size) > max_bytes
                    || this != expiry)
            {
                timed("set", self.backend.set_many(&entries[start..i], expiry)).await?;
                (start, bytes) = (i, 0);
            }
            expiry = this;
            bytes = bytes.saturating_add(size);
        }
        if start < entries.len() {
            timed("set", self.backend.set_many(&entries[start..], expiry)).await?;
        }
        Ok(())
    }

    /// Every key starting with `prefix`; [`ErrorKind::Unsupported`] unless the backend lists.
    pub async fn list_keys(&self, prefix: &str) -> Result<Vec<String>> {
        self.can_list()?;
        timed("list_keys", self.backend.list_keys(prefix)).await
    }

    /// Every key starting with `prefix`, handed to `each` a page at a time (see
    /// [`CacheBackend::list_keys_paged`]); [`ErrorKind::Unsupported`] unless the backend lists.
    pub async fn list_keys_paged(
        &self,
        prefix: &str,
        each: &mut (dyn FnMut(Vec<String>) + Send),
    ) -> Result<()> {
        self.can_list()?;
        timed("list_keys", self.backend.list_keys_paged(prefix, each)).await
    }

    fn can_list(&self) -> Result<()> {
        if self.caps.list_keys {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::Unsupported,
            format!("{} cannot list its keys", self.describe()),
        ))
    }

    /// How many fields hash `key` has, if the backend tells (see [`CacheBackend::hash_len`]).
    pub async fn hash_len(&self, key: &str) -> Result<Option<u64>> {
        validate_key(key)?;
        timed("hash_len", self.backend.hash_len(key)).await
    }

    /// One page of the fields of hash `key` (see [`CacheBackend::hash_scan`]).
    pub async fn hash_scan(&self, key: &str, cursor: u64) -> Result<(u64, Vec<(Bytes, Bytes)>)> {
        validate_key(key)?;
        timed("hash_scan", self.backend.hash_scan(key, cursor)).await
    }

    /// Sets and removes fields of hash `key`, in calls of at most
    /// [`Capabilities::batch_max_keys`] fields: every set first, then every removal. With a
    /// `fence`, each call applies only while the fence holds (see
    /// [`CacheBackend::hash_update_fenced`]).
    pub async fn hash_update(
        &self,
        key: &str,
        set: &[(String, Bytes)],
        remove: &[String],
        fence: Option<&Fence>,
    ) -> Result<()> {
        validate_key(key)?;
        for (field, value) in set {
            self.caps
                .check_value_len(key, value.len())
                .map_err(|e| e.context(format!("field {field:?}")))?;
        }
        for chunk in set.chunks(self.batch_keys()) {
            match fence {
                Some(f) => {
                    timed(
                        "hash_update",
                        self.backend.hash_update_fenced(key, chunk, &[], f),
                    )
                    .await?
                }
                None => timed("hash_update", self.backend.hash_update(key, chunk, &[])).await?,
            }
        }
        for chunk in remove.chunks(self.batch_keys()) {
            match fence {
                Some(f) => {
                    timed(
                        "hash_update",
                        self.backend.hash_update_fenced(key, &[], chunk, f),
                    )
                    .await?
                }
                None => timed("hash_update", self.backend.hash_update(key, &[], chunk)).await?,
            }
        }
        Ok(())
    }

    /// Writes `value` under `key` only if absent (see [`CacheBackend::put_if_absent`]).
    pub async fn put_if_absent(&self, key: &str, value: Bytes, ttl: Duration) -> Result<bool> {
        validate_key(key)?;
        self.caps.check_value_len(key, value.len())?;
        timed("put_if_absent", self.backend.put_if_absent(key, value, ttl)).await
    }

    /// Replaces or deletes `key` only if it holds `expected` (see
    /// [`CacheBackend::swap_if_equal`]).
    pub async fn swap_if_equal(
        &self,
        key: &str,
        expected: &[u8],
        new: Option<Bytes>,
        ttl: Duration,
    ) -> Result<bool> {
        validate_key(key)?;
        if let Some(v) = &new {
            self.caps.check_value_len(key, v.len())?;
        }
        timed(
            "swap_if_equal",
            self.backend.swap_if_equal(key, expected, new, ttl),
        )
        .await
    }

    /// The server's memory and eviction statistics (see [`CacheBackend::server_stats`]).
    pub async fn server_stats(&self) -> Result<Option<ServerStats>> {
        timed("server_stats", self.backend.server_stats()).await
    }

    /// Makes completed writes durable.
    pub async fn flush(&self) -> Result<()> {
        timed("flush", self.backend.flush()).await
    }

    fn expect_len(&self, op: &str, want: usize, got: usize) -> Result<()> {
        if want == got {
            return Ok(());
        }
        Err(Error::new(
            ErrorKind::Unexpected,
            format!(
                "{}: {op} answered {got} results for {want} keys (a backend bug)",
                self.describe()
            ),
        ))
    }
}

/// Awaits one backend call, recording its wall time in `tcache_backend_op_duration_seconds`
/// and an error in `tcache_backend_errors_total`, labelled `op`: one clock read per batch.
async fn timed<T>(op: &'static str, call: impl Future<Output = Result<T>>) -> Result<T> {
    let started = Instant::now();
    let r = call.await;
    metrics::histogram!("tcache_backend_op_duration_seconds", "op" => op)
        .record(started.elapsed().as_secs_f64());
    if r.is_err() {
        metrics::counter!("tcache_backend_errors_total", "op" => op).increment(1);
    }
    r
}

fn validate_keys(keys: &[String]) -> Result<()> {
    keys.iter().try_for_each(|k| validate_key(k))
}

fn expiry_of(key: &str) -> Expiry {
    if is_entry_key(key) {
        Expiry::Entry
    } else {
        Expiry::Never
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use async_trait::async_trait;

    use super::*;

    /// Records the calls it receives; stores nothing.
    #[derive(Debug, Default)]
    struct Recorder {
        caps: Capabilities,
        sets: Mutex<Vec<(usize, Expiry)>>,
        gets: Mutex<Vec<usize>>,
    }

    #[async_trait]
    impl CacheBackend for Recorder {
        fn capabilities(&self) -> Capabilities {
            self.caps
        }
        fn index_layout(&self) -> IndexLayout {
            IndexLayout::Sharded
        }
        fn describe(&self) -> String {
            "recorder".into()
        }
        async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>> {
            self.gets.lock().unwrap().push(keys.len());
            Ok(vec![None; keys.len()])
        }
        async fn set_many(&self, entries: &[(String, Bytes)], expiry: Expiry) -> Result<()> {
            self.sets.lock().unwrap().push((entries.len(), expiry));
            Ok(())
        }
        async fn delete_many(&self, _: &[String]) -> Result<()> {
            Ok(())
        }
        async fn put_if_absent(&self, _: &str, _: Bytes, _: Duration) -> Result<bool> {
            Ok(true)
        }
        async fn swap_if_equal(
            &self,
            _: &str,
            _: &[u8],
            _: Option<Bytes>,
            _: Duration,
        ) -> Result<bool> {
            Ok(true)
        }
    }

    fn cache(caps: Capabilities) -> (Arc<Recorder>, Cache) {
        let r = Arc::new(Recorder {
            caps,
            ..Default::default()
        });
        (Arc::clone(&r), Cache::new(r))
    }

    fn entry_key(i: usize) -> String {
        crate::Namespace::default().key_for(&i.to_string())
    }

    #[tokio::test]
    async fn batches_are_split_by_keys_and_bytes() {
        let (r, c) = cache(Capabilities {
            batch_max_keys: Some(3),
            batch_max_bytes: Some(250),
            ..Capabilities::new()
        });
        let keys: Vec<String> = (0..7).map(entry_key).collect();
        assert_eq!(c.get_many(&keys).await.unwrap().len(), 7);
        assert_eq!(*r.gets.lock().unwrap(), [3, 3, 1]);
        // Keys are 68 bytes: with values of 50 bytes, two entries fit in 250 bytes.
        let entries: Vec<(String, Bytes)> = keys
            .iter()
            .map(|k| (k.clone(), Bytes::from(vec![0; 50])))
            .collect();
        c.set_many(&entries).await.unwrap();
        let sets: Vec<usize> = r.sets.lock().unwrap().iter().map(|s| s.0).collect();
        assert_eq!(sets, [2, 2, 2, 1]);
    }

    #[tokio::test]
    async fn oversize_values_and_bad_keys_change_nothing() {
        let (r, c) = cache(Capabilities {
            max_value_bytes: Some(10),
            ..Capabilities::new()
        });
        let e = c
            .set_many(&[
                (entry_key(1), Bytes::from_static(b"small")),
                (entry_key(2), Bytes::from(vec![0; 11])),
            ])
            .await
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ValueTooLarge);
        assert!(r.sets.lock().unwrap().is_empty());
        for bad in ["", "has space", &"k".repeat(251), "tab\t"] {
            let e = c.get(bad).await.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::ConfigInvalid, "{bad:?}");
        }
        assert!(r.gets.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn index_records_never_expire() {
        let (r, c) = cache(Capabilities::new());
        let ns = crate::Namespace::default();
        c.set_many(&[
            (entry_key(1), Bytes::new()),
            (ns.index_root_key(), Bytes::new()),
            (ns.index_shard_key(1, 0), Bytes::new()),
            (entry_key(2), Bytes::new()),
        ])
        .await
        .unwrap();
        assert_eq!(
            *r.sets.lock().unwrap(),
            [(1, Expiry::Entry), (2, Expiry::Never), (1, Expiry::Entry)]
        );
    }
}
