//! A fault-injecting in-memory backend: for tests of engine behaviour under failures (retries,
//! isolation, cancellation) that real servers cannot produce on demand.

use std::collections::{BTreeMap, HashMap};
use std::sync::Mutex;
use std::time::Duration;

use template_cache_core::{
    Bytes, CacheBackend, Capabilities, Error, ErrorKind, Expiry, Fence, IndexLayout, Result,
    async_trait,
};

/// Decides, per call, whether it fails: receives the operation (`"get_many"`, `"set_many"`,
/// `"delete_many"`) and its keys, and returns the error to fail with.
pub type Fault = Box<dyn Fn(&str, &[String]) -> Option<Error> + Send + Sync>;

/// An in-memory backend (sharded index layout, or the hash layout with
/// [`FaultyBackend::hash_indexed`]) that records every key it writes and fails calls on demand.
/// Hash updates (`"hash_update"`) pass the fields they set as the keys.
#[derive(Default)]
pub struct FaultyBackend {
    map: Mutex<HashMap<String, Bytes>>,
    hashes: Mutex<HashMap<String, BTreeMap<Bytes, Bytes>>>,
    writes: Mutex<Vec<String>>,
    fault: Mutex<Option<Fault>>,
    caps: Capabilities,
    hash_layout: bool,
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

    /// The same backend keeping indexes in the hash layout (one hash per namespace, updated by
    /// field), like Redis.
    pub fn hash_indexed(self) -> Self {
        FaultyBackend {
            hash_layout: true,
            ..self
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
        if self.hash_layout {
            IndexLayout::Hash
        } else {
            IndexLayout::Sharded
        }
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

    async fn hash_len(&self, key: &str) -> Result<Option<u64>> {
        self.fail("hash_len", &[key.to_owned()])?;
        Ok(Some(
            lock(&self.hashes).get(key).map_or(0, |h| h.len() as u64),
        ))
    }

    async fn hash_scan(&self, key: &str, cursor: u64) -> Result<(u64, Vec<(Bytes, Bytes)>)> {
        self.fail("hash_scan", &[key.to_owned()])?;
        // Pages of 100 fields; the cursor is the number of fields already returned.
        let hashes = lock(&self.hashes);
        let Some(fields) = hashes.get(key) else {
            return Ok((0, Vec::new()));
        };
        let start = usize::try_from(cursor).unwrap_or(usize::MAX);
        let page: Vec<_> = fields
            .iter()
            .skip(start)
            .take(100)
            .map(|(f, v)| (f.clone(), v.clone()))
            .collect();
        let next = start + page.len();
        Ok((if next >= fields.len() { 0 } else { next as u64 }, page))
    }

    async fn hash_update(
        &self,
        key: &str,
        set: &[(String, Bytes)],
        remove: &[String],
    ) -> Result<()> {
        let fields: Vec<String> = set.iter().map(|(f, _)| f.clone()).collect();
        self.fail("hash_update", &fields)?;
        let mut hashes = lock(&self.hashes);
        let hash = hashes.entry(key.to_owned()).or_default();
        for (f, v) in set {
            hash.insert(Bytes::copy_from_slice(f.as_bytes()), v.clone());
        }
        for f in remove {
            hash.remove(f.as_bytes());
        }
        if hash.is_empty() {
            hashes.remove(key);
        }
        Ok(())
    }

    async fn hash_update_fenced(
        &self,
        key: &str,
        set: &[(String, Bytes)],
        remove: &[String],
        fence: &Fence,
    ) -> Result<()> {
        let held = lock(&self.map)
            .get(&fence.key)
            .is_some_and(|v| v.starts_with(&fence.token));
        if !held {
            return Err(Error::new(
                ErrorKind::Conflict,
                "the write lease is no longer held",
            ));
        }
        self.hash_update(key, set, remove).await
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
    const CAPS: template_cache_core::Capabilities = template_cache_core::Capabilities {
        list_keys: true,
        batch_max_keys: Some(100),
        batch_max_bytes: Some(64 * 1024),
        max_value_bytes: Some(1 << 20),
        evicts: false,
    };

    crate::conformance_tests!(super::FaultyBackend::with_capabilities(CAPS));

    mod hash_indexed {
        crate::conformance_tests!(
            super::super::FaultyBackend::with_capabilities(super::CAPS).hash_indexed()
        );
    }
}
