#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

use template_cache_core::{Bytes, CacheBackend, Capabilities, Result, async_trait};

/// The default capacity: 1 GiB of keys and values.
pub const DEFAULT_CAPACITY_BYTES: u64 = 1 << 30;

/// An in-process cache bounded by the total size of its keys and values.
#[derive(Clone, Debug)]
pub struct MokaBackend {
    cache: moka::future::Cache<String, Bytes>,
    capacity: u64,
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
            native_batch: false,
            max_value_bytes: Some(
                usize::try_from(self.capacity.min(u64::from(u32::MAX))).unwrap_or(usize::MAX),
            ),
            evicts: true,
            ..Capabilities::new()
        }
    }

    fn describe(&self) -> String {
        "moka://".to_owned()
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        Ok(self.cache.get(key).await)
    }

    async fn set(&self, key: &str, value: Bytes) -> Result<()> {
        self.capabilities().check_value_len(key, value.len())?;
        self.cache.insert(key.to_owned(), value).await;
        Ok(())
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.cache.invalidate(key).await;
        Ok(())
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
