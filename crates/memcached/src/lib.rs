#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

mod config;
pub mod rendezvous;

use std::time::Duration;

use memcache::exp::{AsyncMetaClient, Delete, Error as McError, Get, Meta, Set};
use template_cache_core::{
    Bytes, CacheBackend, Capabilities, Error, ErrorKind, Expiry, IndexLayout, Result, ServerStats,
    async_trait, url::redact,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};

pub use config::MemcachedConfig;

/// A lease expiry in whole seconds (at least 1; Memcached reads over 30 days as a date).
fn lease_secs(ttl: Duration) -> u32 {
    u32::try_from(ttl.as_secs().clamp(1, 30 * 24 * 3600)).unwrap_or(1)
}

/// Bytes kept free below the server's item size limit for the key and item header.
const ITEM_OVERHEAD: usize = 512;

/// One or several Memcached servers used as a template cache.
#[derive(Clone)]
pub struct MemcachedBackend {
    client: AsyncMetaClient,
    config: MemcachedConfig,
    servers: Vec<String>,
    max_value: usize,
    describe: String,
}

impl std::fmt::Debug for MemcachedBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemcachedBackend")
            .field("url", &self.describe)
            .field("max_value", &self.max_value)
            .field("config", &self.config)
            .finish()
    }
}

impl MemcachedBackend {
    /// Connects to the servers named by `url` with default settings (overridden by the URL's
    /// query parameters), and checks that every server answers.
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, MemcachedConfig::default()).await
    }

    /// Connects with `config` (the URL's query parameters override it).
    pub async fn connect_with(url: &str, config: MemcachedConfig) -> Result<Self> {
        let (servers, config) = config::parse(url, config)?;
        let describe = redact(url);
        let client = AsyncMetaClient::builder()
            .router(rendezvous::Rendezvous)
            .connect_timeout(Some(config.connect_timeout))
            .io_timeout(Some(config.io_timeout))
            .connect_multiple_async(servers.iter().map(String::as_str))
            .await
            .map_err(|e| convert(e, &describe, "connecting"))?;
        let mut max_item = usize::MAX;
        for server in &servers {
            let size = item_size_max(server, config.connect_timeout + config.io_timeout)
                .await
                .map_err(|e| e.context(format!("{describe}: asking {server} for its settings")))?;
            max_item = max_item.min(size);
        }
        client
            .noop()
            .await
            .map_err(|e| convert(e, &describe, "checking the servers"))?;
        Ok(MemcachedBackend {
            client,
            max_value: max_item.saturating_sub(ITEM_OVERHEAD),
            config,
            servers,
            describe,
        })
    }

    /// The servers, as `host:port`, in URL order.
    pub fn servers(&self) -> &[String] {
        &self.servers
    }

    /// The effective settings.
    pub fn config(&self) -> &MemcachedConfig {
        &self.config
    }

    fn ttl_secs(&self) -> u32 {
        self.config
            .ttl
            .map_or(0, |t| u32::try_from(t.as_secs().max(1)).unwrap_or(u32::MAX))
    }

    /// Memcached's expiry for a write: the configured TTL for [`Expiry::Entry`], `0` (never)
    /// otherwise.
    fn ttl_for(&self, expiry: Expiry) -> u32 {
        match expiry {
            Expiry::Entry => self.ttl_secs(),
            Expiry::Never => 0,
        }
    }

    /// Runs a batch and turns per-operation errors into one error (the first, temporary if any
    /// was), since the engines retry batches as a whole.
    fn collect<T>(
        &self,
        what: &str,
        r: std::result::Result<Vec<std::result::Result<T, McError>>, McError>,
    ) -> Result<Vec<T>> {
        let results = r.map_err(|e| convert(e, &self.describe, what))?;
        let mut out = Vec::with_capacity(results.len());
        let mut first: Option<Error> = None;
        let mut any_temporary = false;
        for r in results {
            match r {
                Ok(v) => out.push(v),
                Err(e) => {
                    let e = convert(e, &self.describe, what);
                    any_temporary |= e.is_temporary();
                    first.get_or_insert(e);
                }
            }
        }
        match first {
            None => Ok(out),
            Some(e) if any_temporary => Err(e.temporary()),
            Some(e) => Err(e),
        }
    }
}

/// Reads `item_size_max` from `stats settings` on one server.
async fn item_size_max(server: &str, timeout: Duration) -> Result<usize> {
    let ask = async {
        let stream = tokio::net::TcpStream::connect(server).await?;
        let (read, mut write) = stream.into_split();
        write.write_all(b"stats settings\r\n").await?;
        let mut lines = BufReader::new(read).lines();
        let mut size = None;
        while let Some(line) = lines.next_line().await? {
            if line == "END" {
                break;
            }
            if let Some(v) = line.strip_prefix("STAT item_size_max ") {
                size = v.trim().parse::<usize>().ok();
            }
        }
        Ok::<_, std::io::Error>(size)
    };
    match tokio::time::timeout(timeout, ask).await {
        Ok(Ok(Some(size))) => Ok(size),
        Ok(Ok(None)) => Err(Error::new(
            ErrorKind::Unexpected,
            "no item_size_max in `stats settings`",
        )),
        Ok(Err(e)) => Err(Error::new(ErrorKind::Unavailable, format!("{e}")).temporary()),
        Err(_) => Err(Error::new(
            ErrorKind::Unavailable,
            format!("no answer within {timeout:?}"),
        )
        .temporary()),
    }
}

/// Classifies a client error: transport trouble is temporary (every operation we send is
/// idempotent, so even an ambiguous outcome is safe to retry).
fn convert(e: McError, describe: &str, what: &str) -> Error {
    let (kind, temporary) = match &e {
        McError::Io(_)
        | McError::Timeout { .. }
        | McError::Ambiguous { .. }
        | McError::Protocol(_) => (ErrorKind::Unavailable, true),
        McError::Server(m) if m.contains("too large") => (ErrorKind::ValueTooLarge, false),
        McError::Server(m) if m.contains("out of memory") || m.contains("busy") => {
            (ErrorKind::Unavailable, true)
        }
        McError::Server(_) => (ErrorKind::Unexpected, false),
        McError::Rejected(_) | McError::Usage(_) => (ErrorKind::ConfigInvalid, false),
        _ => (ErrorKind::Unexpected, false),
    };
    let err = Error::new(kind, format!("{describe}: {what}: {e}"));
    if temporary {
        err.temporary()
    } else {
        err.permanent()
    }
}

#[async_trait]
impl CacheBackend for MemcachedBackend {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            list_keys: false,
            batch_max_keys: Some(self.config.batch_max_keys),
            batch_max_bytes: None,
            max_value_bytes: Some(self.max_value),
            evicts: true,
        }
    }

    fn index_layout(&self) -> IndexLayout {
        IndexLayout::Sharded
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>> {
        let r = self.client.run_many(keys.iter().map(Get::new)).await;
        Ok(self
            .collect("multi-get", r)?
            .into_iter()
            .map(|g| g.hit().then(|| Bytes::from(g.value.unwrap_or_default())))
            .collect())
    }

    async fn set_many(&self, entries: &[(String, Bytes)], expiry: Expiry) -> Result<()> {
        let ttl = self.ttl_for(expiry);
        let r = self
            .client
            .run_many(
                entries
                    .iter()
                    .map(|(k, v)| Set::new(k, v.as_ref()).ttl_raw(ttl)),
            )
            .await;
        for (m, (k, _)) in self.collect("multi-set", r)?.into_iter().zip(entries) {
            if !m.applied() {
                return Err(Error::new(
                    ErrorKind::Unexpected,
                    format!("{}: set of {k} was not stored", self.describe),
                ));
            }
        }
        Ok(())
    }

    async fn delete_many(&self, keys: &[String]) -> Result<()> {
        let r = self.client.run_many(keys.iter().map(Delete::new)).await;
        self.collect("multi-delete", r)?;
        Ok(())
    }

    async fn exists_many(&self, keys: &[String]) -> Result<Vec<bool>> {
        let r = self
            .client
            .run_many(
                keys.iter()
                    .map(|k| Get::new(k).without_value().no_lru_bump()),
            )
            .await;
        Ok(self
            .collect("multi-exists", r)?
            .iter()
            .map(|g| g.hit())
            .collect())
    }
    async fn put_if_absent(&self, key: &str, value: Bytes, ttl: Duration) -> Result<bool> {
        let r = self
            .client
            .run(Set::new(key, &value).add().ttl_raw(lease_secs(ttl)))
            .await
            .map_err(|e| convert(e, &self.describe, "add"))?;
        Ok(r.applied())
    }

    async fn swap_if_equal(
        &self,
        key: &str,
        expected: &[u8],
        new: Option<Bytes>,
        ttl: Duration,
    ) -> Result<bool> {
        // Read the value with its CAS version, compare, then write only that version.
        let current = self
            .client
            .run(Get::new(key).meta(Meta::NONE.cas()))
            .await
            .map_err(|e| convert(e, &self.describe, "get with cas"))?;
        let (Some(cas), true) = (
            current.item.cas,
            current.hit() && current.value.as_deref() == Some(expected),
        ) else {
            return Ok(false);
        };
        let applied = match new {
            Some(v) => self
                .client
                .run(Set::new(key, &v).ttl_raw(lease_secs(ttl)).compare_cas(cas))
                .await
                .map_err(|e| convert(e, &self.describe, "set with cas"))?
                .applied(),
            None => self
                .client
                .run(Delete::new(key).compare_cas(cas))
                .await
                .map_err(|e| convert(e, &self.describe, "delete with cas"))?
                .applied(),
        };
        Ok(applied)
    }

    async fn server_stats(&self) -> Result<Option<ServerStats>> {
        let timeout = self.config.connect_timeout + self.config.io_timeout;
        let mut sum = ServerStats {
            used_bytes: Some(0),
            max_bytes: Some(0),
            ..ServerStats::default()
        };
        for server in &self.servers {
            let s = server_stats_of(server, timeout).await.map_err(|e| {
                e.context(format!(
                    "{}: asking {server} for its statistics",
                    self.describe
                ))
            })?;
            sum.evictions = sum.evictions.saturating_add(s.evictions);
            sum.used_bytes = sum
                .used_bytes
                .zip(s.used_bytes)
                .map(|(a, b)| a.saturating_add(b));
            sum.max_bytes = sum
                .max_bytes
                .zip(s.max_bytes)
                .map(|(a, b)| a.saturating_add(b));
        }
        Ok(Some(sum))
    }
}

/// `evictions`, `bytes` and `limit_maxbytes` from `stats` on one server.
async fn server_stats_of(server: &str, timeout: Duration) -> Result<ServerStats> {
    let ask = async {
        let stream = tokio::net::TcpStream::connect(server).await?;
        let (read, mut write) = stream.into_split();
        write.write_all(b"stats\r\n").await?;
        let mut lines = BufReader::new(read).lines();
        let mut stats = Vec::new();
        while let Some(line) = lines.next_line().await? {
            if line == "END" || line.ends_with("ERROR") || line.contains("ERROR ") {
                break;
            }
            stats.push(line);
        }
        Ok::<_, std::io::Error>(stats)
    };
    let lines = match tokio::time::timeout(timeout, ask).await {
        Ok(Ok(lines)) => lines,
        Ok(Err(e)) => {
            return Err(Error::new(ErrorKind::Unavailable, format!("{e}")).temporary());
        }
        Err(_) => {
            return Err(Error::new(
                ErrorKind::Unavailable,
                format!("no answer within {timeout:?}"),
            )
            .temporary());
        }
    };
    parse_stats(&lines)
}

/// Reads the figures we need from `STAT name value` lines.
fn parse_stats(lines: &[String]) -> Result<ServerStats> {
    let number = |name: &str| {
        lines
            .iter()
            .find_map(|l| {
                l.strip_prefix("STAT ")?
                    .strip_prefix(name)?
                    .strip_prefix(' ')
            })
            .and_then(|v| v.trim().parse::<u64>().ok())
            .ok_or_else(|| {
                Error::new(
                    ErrorKind::Unexpected,
                    format!("no numeric {name} in `stats`"),
                )
            })
    };
    Ok(ServerStats {
        evictions: number("evictions")?,
        used_bytes: Some(number("bytes")?),
        max_bytes: Some(number("limit_maxbytes")?),
        policy: None,
        // Memcached counts evictions, but not every expiry of an item nobody read again.
        drop_stamp: None,
    })
}

#[cfg(test)]
mod stats_tests {
    use super::*;

    #[test]
    fn stats_are_read_by_exact_name() {
        let lines: Vec<String> = [
            "STAT bytes_read 999",
            "STAT bytes 1234",
            "STAT limit_maxbytes 2097152",
            "STAT evictions 7",
        ]
        .map(String::from)
        .to_vec();
        let s = parse_stats(&lines).unwrap_or_default();
        assert_eq!(
            s,
            ServerStats {
                evictions: 7,
                used_bytes: Some(1234),
                max_bytes: Some(2 << 20),
                policy: None,
                drop_stamp: None,
            }
        );
        let err = parse_stats(&lines[..3]).unwrap_err();
        assert!(err.to_string().contains("evictions"), "{err}");
    }
}
