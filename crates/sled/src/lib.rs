#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use template_cache_core::{
    Bytes, CacheBackend, Capabilities, Error, ErrorKind, Expiry, IndexLayout, Result, async_trait,
};

/// A sled database used as a template cache.
#[derive(Clone, Debug)]
pub struct SledBackend {
    db: sled::Db,
    path: PathBuf,
}

/// sled's page cache: enough for a warm of 100,000 templates without sled's 1 GiB default.
const CACHE_CAPACITY_BYTES: u64 = 64 * 1024 * 1024;

impl SledBackend {
    /// Opens (creating if needed) the database at `path`.
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let db = sled::Config::new()
            .path(&path)
            .cache_capacity(CACHE_CAPACITY_BYTES)
            .open()
            .map_err(|e| convert(e).context(format!("opening sled database {}", path.display())))?;
        Ok(SledBackend { db, path })
    }

    /// A database in a temporary directory, removed when the last handle is dropped.
    pub fn temporary() -> Result<Self> {
        let db = sled::Config::new()
            .temporary(true)
            .open()
            .map_err(convert)?;
        Ok(SledBackend {
            db,
            path: PathBuf::from("(temporary)"),
        })
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&sled::Db) -> sled::Result<T> + Send + 'static,
    ) -> Result<T> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || f(&db))
            .await
            .map_err(|e| Error::new(ErrorKind::Unexpected, format!("sled task failed: {e}")))?
            .map_err(convert)
    }
}

fn convert(e: sled::Error) -> Error {
    match e {
        sled::Error::Io(io) => {
            let temporary = matches!(
                io.kind(),
                std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock
            );
            let err = Error::new(ErrorKind::Io, "sled I/O error").with_source(io);
            if temporary { err.temporary() } else { err }
        }
        sled::Error::Corruption { .. } => {
            Error::new(ErrorKind::Corrupt, format!("sled database is corrupt: {e}"))
        }
        other => Error::new(ErrorKind::Unexpected, format!("sled: {other}")),
    }
}

#[async_trait]
impl CacheBackend for SledBackend {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            list_keys: true,
            batch_max_keys: Some(10_000),
            max_value_bytes: Some(64 * 1024 * 1024),
            ..Capabilities::new()
        }
    }

    fn index_layout(&self) -> IndexLayout {
        IndexLayout::Sharded
    }

    fn describe(&self) -> String {
        format!("sled://{}", self.path.display())
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>> {
        let keys = keys.to_vec();
        self.blocking(move |db| {
            keys.iter()
                .map(|k| db.get(k).map(|v| v.map(|v| Bytes::copy_from_slice(&v))))
                .collect()
        })
        .await
    }

    /// Entries never expire here (sled has no TTL), whatever `expiry` says.
    async fn set_many(&self, entries: &[(String, Bytes)], _expiry: Expiry) -> Result<()> {
        let entries = entries.to_vec();
        self.blocking(move |db| {
            let mut batch = sled::Batch::default();
            for (k, v) in entries {
                batch.insert(k.as_bytes(), v.as_ref());
            }
            db.apply_batch(batch)
        })
        .await
    }

    async fn delete_many(&self, keys: &[String]) -> Result<()> {
        let keys = keys.to_vec();
        self.blocking(move |db| {
            let mut batch = sled::Batch::default();
            for k in keys {
                batch.remove(k.as_bytes());
            }
            db.apply_batch(batch)
        })
        .await
    }

    async fn exists_many(&self, keys: &[String]) -> Result<Vec<bool>> {
        let keys = keys.to_vec();
        self.blocking(move |db| keys.iter().map(|k| db.contains_key(k)).collect())
            .await
    }

    async fn list_keys(&self, prefix: &str) -> Result<Vec<String>> {
        let prefix = prefix.to_owned();
        self.blocking(move |db| {
            db.scan_prefix(prefix.as_bytes())
                .keys()
                .map(|k| k.map(|k| String::from_utf8_lossy(&k).into_owned()))
                .collect()
        })
        .await
    }

    /// sled keeps no expiry: the lease record's own expiry time frees an abandoned namespace.
    async fn put_if_absent(&self, key: &str, value: Bytes, _ttl: Duration) -> Result<bool> {
        let key = key.to_owned();
        self.blocking(move |db| {
            db.compare_and_swap(key, None::<&[u8]>, Some(value.as_ref()))
                .map(|r| r.is_ok())
        })
        .await
    }

    async fn swap_if_equal(
        &self,
        key: &str,
        expected: &[u8],
        new: Option<Bytes>,
        _ttl: Duration,
    ) -> Result<bool> {
        let (key, expected) = (key.to_owned(), expected.to_vec());
        self.blocking(move |db| {
            db.compare_and_swap(key, Some(expected), new.as_deref())
                .map(|r| r.is_ok())
        })
        .await
    }

    async fn flush(&self) -> Result<()> {
        self.db.flush_async().await.map(drop).map_err(convert)
    }
}

#[cfg(test)]
mod tests {
    template_cache_testkit::conformance_tests!(super::SledBackend::temporary().unwrap());

    #[tokio::test]
    async fn survives_reopening() {
        use std::sync::Arc;
        use template_cache_core::Cache;
        let dir = tempfile::tempdir().unwrap();
        {
            let b = Cache::new(Arc::new(
                super::SledBackend::open(dir.path().join("db")).unwrap(),
            ));
            b.set("k", "v".into()).await.unwrap();
            b.flush().await.unwrap();
        }
        let b = Cache::new(Arc::new(
            super::SledBackend::open(dir.path().join("db")).unwrap(),
        ));
        assert_eq!(b.get("k").await.unwrap().as_deref(), Some(&b"v"[..]));
    }
}
