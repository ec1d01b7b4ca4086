//! A fault-injecting in-memory backend: for tests of engine behaviour under failures (retries,
//! isolation, cancellation) that real servers cannot produce on demand.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;

use template_cache_core::{
    Bytes, CacheBackend, Capabilities, Error, Expiry, IndexLayout, Result, async_trait,
};

/// Decides, per call, whether it fails: receives the operation (`"get_many"`, `"set_many"`,
/// `"delete_many"`) and its keys, and returns the error to fail with.
pub type Fault = Box<dyn Fn(&str, &[String]) -> Option<Error> + Send + Sync>;

/// An in-memory backend (sharded index layout) that records every key it writes and fails
/// calls on demand.
#[derive(Default)]
pub struct FaultyBackend {
    map: Mutex<HashMap<String, Bytes>>,
    writes: Mutex<Vec<String>>,
    fault: Mutex<Option<Fault>>,
    caps: Capabilities,
}

impl std::fmt::Debug for FaultyBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FaultyBackend")
    }
}

impl FaultyBackend {
    /// An empty backend without limits that never fails.
    pub fn new() -> Self {
        Self::default()
    }

    /// An empty backend declaring `caps` (limits are enforced by the core's `Cache`).
    pub fn with_capabilities(caps: Capabilities) -> Self {
        FaultyBackend {
            caps,
            ..Self::default()
        }
    }

    /// Fails the calls `fault` chooses, from now on.
    pub fn set_fault(
        &self,
        fault: impl Fn(&str, &[String]) -> Option<Error> + Send + Sync + 'static,
    ) {
        *lock(&self.fault) = Some(Box::new(fault));
    }

    /// Stops failing calls.
    pub fn clear_fault(&self) {
        *lock(&self.fault) = None;
    }

    /// Every key written so far, in order (index records included).
    pub fn writes(&self) -> Vec<String> {
        lock(&self.writes).clone()
    }

    /// How many keys are stored.
    pub fn len(&self) -> usize {
        lock(&self.map).len()
    }

    /// Whether nothing is stored.
    pub fn is_empty(&self) -> bool {
        lock(&self.map).is_empty()
    }

    fn fail(&self, op: &str, keys: &[String]) -> Result<()> {
        match lock(&self.fault).as_ref().and_then(|f| f(op, keys)) {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

#[async_trait]
impl CacheBackend for FaultyBackend {
    fn capabilities(&self) -> Capabilities {
        self.caps
    }

    fn index_layout(&self) -> IndexLayout {
        IndexLayout::Sharded
    }

    fn describe(&self) -> String {
        "faulty-memory://".into()
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>> {
        self.fail("get_many", keys)?;
        let map = lock(&self.map);
        Ok(keys.iter().map(|k| map.get(k).cloned()).collect())
    }

    async fn set_many(&self, entries: &[(String, Bytes)], _expiry: Expiry) -> Result<()> {
        let keys: Vec<String> = entries.iter().map(|(k, _)| k.clone()).collect();
        self.fail("set_many", &keys)?;
        let mut map = lock(&self.map);
        for (k, v) in entries {
            map.insert(k.clone(), v.clone());
        }
        lock(&self.writes).extend(keys);
        Ok(())
    }

    async fn delete_many(&self, keys: &[String]) -> Result<()> {
        self.fail("delete_many", keys)?;
        let mut map = lock(&self.map);
        for k in keys {
            map.remove(k);
        }
        Ok(())
    }

    async fn put_if_absent(&self, key: &str, value: Bytes, _ttl: Duration) -> Result<bool> {
        self.fail("put_if_absent", &[key.to_owned()])?;
        let mut map = lock(&self.map);
        if map.contains_key(key) {
            return Ok(false);
        }
        map.insert(key.to_owned(), value);
        Ok(true)
    }

    async fn swap_if_equal(
        &self,
        key: &str,
        expected: &[u8],
        new: Option<Bytes>,
        _ttl: Duration,
    ) -> Result<bool> {
        self.fail("swap_if_equal", &[key.to_owned()])?;
        let mut map = lock(&self.map);
        if map.get(key).map(|v| v.as_ref()) != Some(expected) {
            return Ok(false);
        }
        match new {
            Some(v) => map.insert(key.to_owned(), v),
            None => map.remove(key),
        };
        Ok(true)
    }

    async fn list_keys(&self, prefix: &str) -> Result<Vec<String>> {
        self.fail("list_keys", &[])?;
        Ok(lock(&self.map)
            .keys()
            .filter(|k| k.starts_with(prefix))
            .cloned()
            .collect())
    }
}

#[cfg(test)]
mod tests {
    crate::conformance_tests!(super::FaultyBackend::with_capabilities(
        template_cache_core::Capabilities {
            list_keys: true,
            batch_max_keys: Some(100),
            batch_max_bytes: Some(64 * 1024),
            max_value_bytes: Some(1 << 20),
            evicts: false,
        }
    ));
}
