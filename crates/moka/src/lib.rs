#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

use std::time::Duration;

use template_cache_core::{
    Bytes, CacheBackend, Capabilities, Expiry, IndexLayout, Result, async_trait,
};

/// The default capacity: 1 GiB of keys and values.
pub const DEFAULT_CAPACITY_BYTES: u64 = 1 << 30;

/// An in-process cache bounded by the total size of its keys and values.
#[derive(Clone, Debug)]
pub struct MokaBackend {
    cache: moka::future::Cache<String, Bytes>,
    capacity: u64,
    /// Makes compare-and-swap atomic against other compare-and-swaps.
    swap: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl MokaBackend {
    /// A cache holding at most [`DEFAULT_CAPACITY_BYTES`].
    pub fn new() -> Self {
        Self::with_capacity_bytes(DEFAULT_CAPACITY_BYTES)
    }

    /// A cache holding at most `bytes` of keys and values; the least useful entries are evicted
    /// beyond that (the checker then reports them missing and the warmer restores them).
    pub fn with_capacity_bytes(bytes: u64) -> Self {
        let cache = moka::future::Cache::builder()
            .max_capacity(bytes)
            .weigher(|k: &String, v: &Bytes| u32::try_from(k.len() + v.len()).unwrap_or(u32::MAX))
            .build();
        MokaBackend {
            cache,
            capacity: bytes,
            swap: Default::default(),
        }
    }
}

impl Default for MokaBackend {
    fn default() -> Self {
        Self::new()
    }
}

#[async_trait]
impl CacheBackend for MokaBackend {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            list_keys: true,
            max_value_bytes: Some(
                usize::try_from(self.capacity.min(u64::from(u32::MAX))).unwrap_or(usize::MAX),
            ),
            evicts: true,
            ..Capabilities::new()
        }
    }

    fn index_layout(&self) -> IndexLayout {
        IndexLayout::Sharded
    }

    fn describe(&self) -> String {
        "moka://".to_owned()
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>> {
        let mut out = Vec::with_capacity(keys.len());
        for key in keys {
            out.push(self.cache.get(key).await);
        }
        Ok(out)
    }

    /// Entries never expire here (moka evicts by size only), whatever `expiry` says.
    async fn set_many(&self, entries: &[(String, Bytes)], _expiry: Expiry) -> Result<()> {
        for (key, value) in entries {
            self.cache.insert(key.clone(), value.clone()).await;
        }
        Ok(())
    }

    async fn delete_many(&self, keys: &[String]) -> Result<()> {
        for key in keys {
            self.cache.invalidate(key).await;
        }
        Ok(())
    }

    /// Lives as long as the process: the lease record's own expiry frees the namespace.
    async fn put_if_absent(&self, key: &str, value: Bytes, _ttl: Duration) -> Result<bool> {
        let _guard = self.swap.lock().await;
        if self.cache.contains_key(key) {
            return Ok(false);
        }
        self.cache.insert(key.to_owned(), value).await;
        Ok(true)
    }

    async fn swap_if_equal(
        &self,
        key: &str,
        expected: &[u8],
        new: Option<Bytes>,
        _ttl: Duration,
    ) -> Result<bool> {
        let _guard = self.swap.lock().await;
        if self.cache.get(key).await.as_deref() != Some(expected) {
            return Ok(false);
        }
        match new {
            Some(v) => self.cache.insert(key.to_owned(), v).await,
            None => self.cache.invalidate(key).await,
        }
        Ok(true)
    }

    async fn list_keys(&self, prefix: &str) -> Result<Vec<String>> {
        Ok(self
            .cache
            .iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .map(|(k, _)| k.as_ref().clone())
            .collect())
    }
}

#[cfg(test)]
mod tests {
    template_cache_testkit::conformance_tests!(super::MokaBackend::new());
}
