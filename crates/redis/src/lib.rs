#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

mod config;

use std::collections::HashMap;

use futures_util::future::try_join_all;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, FromRedisValue, Pipeline, RedisError, Value};
use template_cache_core::index::{IndexChanges, IndexEntry, IndexSnapshot};
use template_cache_core::{
    Bytes, CacheBackend, Capabilities, ContentHash, Error, ErrorKind, Namespace, Result,
    async_trait, url::redact,
};

pub use config::RedisConfig;
use config::Target;

/// Redis limits a bulk string to 512 MiB.
const MAX_VALUE_BYTES: usize = 512 * 1024 * 1024;
/// Fields per `HSET`/`HDEL`.
const INDEX_CHUNK: usize = 1000;
/// Elements per `SCAN`/`HSCAN` page: large pages keep round trips few on big namespaces.
const SCAN_COUNT: usize = 10_000;
/// Bytes of one index value: SHA-256, size, flags.
const INDEX_VALUE_LEN: usize = 32 + 8 + 1;

#[derive(Clone)]
enum Conn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

/// A Redis server or cluster used as a template cache.
#[derive(Clone)]
pub struct RedisBackend {
    conn: Conn,
    config: RedisConfig,
    describe: String,
}

impl std::fmt::Debug for RedisBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RedisBackend")
            .field("url", &self.describe)
            .field("config", &self.config)
            .finish()
    }
}

impl RedisBackend {
    /// Connects to the server or cluster named by `url` with default settings (overridden by
    /// the URL's query parameters).
    pub async fn connect(url: &str) -> Result<Self> {
        Self::connect_with(url, RedisConfig::default()).await
    }

    /// Connects with `config` (the URL's query parameters override it).
    pub async fn connect_with(url: &str, config: RedisConfig) -> Result<Self> {
        let (target, config) = config::parse(url, config)?;
        let describe = redact(url);
        let fail = |e: RedisError| convert(e, &describe, "connecting");
        let connect = async {
            Ok::<_, Error>(match target {
                Target::Single(u) => {
                    let client = open_client(&u, &config).map_err(|e| {
                        Error::new(
                            ErrorKind::ConfigInvalid,
                            format!(
                                "invalid Redis URL {describe:?}: {}",
                                scrub(&e.to_string(), &u)
                            ),
                        )
                    })?;
                    let cfg = ConnectionManagerConfig::new()
                        .set_connection_timeout(Some(config.connect_timeout))
                        .set_response_timeout(Some(config.response_timeout))
                        .set_number_of_retries(config.reconnect_attempts)
                        .set_max_delay(std::time::Duration::from_secs(2));
                    Conn::Single(
                        ConnectionManager::new_with_config(client, cfg)
                            .await
                            .map_err(fail)?,
                    )
                }
                Target::Cluster {
                    nodes,
                    username,
                    password,
                } => {
                    let mut b = redis::cluster::ClusterClientBuilder::new(nodes)
                        .connection_timeout(config.connect_timeout)
                        .response_timeout(config.response_timeout)
                        .retries(u32::try_from(config.reconnect_attempts).unwrap_or(u32::MAX));
                    if let Some(u) = username {
                        b = b.username(u);
                    }
                    if let Some(p) = password {
                        b = b.password(p);
                    }
                    let client = b.build().map_err(|e| {
                        Error::new(
                            ErrorKind::ConfigInvalid,
                            format!("invalid Redis Cluster URL {describe:?}: {e}"),
                        )
                    })?;
                    Conn::Cluster(client.get_async_connection().await.map_err(fail)?)
                }
            })
        };
        // The client's own timeouts apply per attempt; bound the whole connection phase too.
        let budget = (config.connect_timeout + config.response_timeout)
            * (config.reconnect_attempts as u32 + 2);
        let conn = tokio::time::timeout(budget, connect).await.map_err(|_| {
            Error::new(
                ErrorKind::Unavailable,
                format!("{describe}: connecting timed out after {budget:?}"),
            )
        })??;
        let backend = RedisBackend {
            conn,
            config,
            describe,
        };
        // Fail fast on a wrong password or an unreachable server.
        backend.query::<String>(&redis::cmd("PING"), "PING").await?;
        Ok(backend)
    }

    /// The effective settings.
    pub fn config(&self) -> &RedisConfig {
        &self.config
    }

    async fn query<T: FromRedisValue>(&self, cmd: &Cmd, what: &str) -> Result<T> {
        let r = match &self.conn {
            Conn::Single(c) => cmd.query_async(&mut c.clone()).await,
            Conn::Cluster(c) => cmd.query_async(&mut c.clone()).await,
        };
        r.map_err(|e| convert(e, &self.describe, what))
    }

    async fn pipe<T: FromRedisValue>(&self, pipe: &Pipeline, what: &str) -> Result<T> {
        let r = match &self.conn {
            Conn::Single(c) => pipe.query_async(&mut c.clone()).await,
            Conn::Cluster(c) => pipe.query_async(&mut c.clone()).await,
        };
        r.map_err(|e| convert(e, &self.describe, what))
    }

    fn set_cmd(&self, key: &str, value: &[u8]) -> Cmd {
        let mut c = redis::cmd("SET");
        c.arg(key).arg(value);
        if let Some(ttl) = self.config.ttl {
            c.arg("PX")
                .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX));
        }
        c
    }

    /// Splits `entries` into chunks within the key and byte limits.
    fn chunks<'a>(&self, entries: &'a [(String, Bytes)]) -> Vec<&'a [(String, Bytes)]> {
        let mut out = Vec::new();
        let (mut start, mut bytes) = (0, 0);
        for (i, (k, v)) in entries.iter().enumerate() {
            let size = k.len() + v.len();
            if i > start
                && (i - start >= self.config.batch_max_keys
                    || bytes + size > self.config.batch_max_bytes)
            {
                out.push(&entries[start..i]);
                start = i;
                bytes = 0;
            }
            bytes += size;
        }
        if start < entries.len() {
            out.push(&entries[start..]);
        }
        out
    }

    /// The primaries of the cluster as `(host, port)`.
    async fn primaries(&self) -> Result<Vec<(String, u16)>> {
        let nodes: String = self
            .query(&redis::cmd("CLUSTER").arg("NODES").clone(), "CLUSTER NODES")
            .await?;
        let mut out = Vec::new();
        for line in nodes.lines() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            let (Some(addr), Some(flags)) = (fields.get(1), fields.get(2)) else {
                continue;
            };
            if !flags.split(',').any(|f| f == "master") || flags.contains("fail") {
                continue;
            }
            let addr = addr.split('@').next().unwrap_or(addr);
            if let Some((host, port)) = addr
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h, p.parse().ok()?)))
            {
                out.push((host.to_owned(), port));
            }
        }
        if out.is_empty() {
            return Err(Error::new(
                ErrorKind::Unexpected,
                format!("{}: CLUSTER NODES lists no primary", self.describe),
            ));
        }
        Ok(out)
    }

    async fn scan_all(&self, pattern: &str, target: Option<(&str, u16)>) -> Result<Vec<String>> {
        let mut keys = Vec::new();
        let mut cursor: u64 = 0;
        loop {
            let mut cmd = redis::cmd("SCAN");
            cmd.arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(SCAN_COUNT);
            let (next, page): (u64, Vec<String>) = match (target, &self.conn) {
                (Some((host, port)), Conn::Cluster(c)) => {
                    let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                        host: host.to_owned(),
                        port,
                    });
                    let v: Value = c
                        .clone()
                        .route_command(cmd, routing)
                        .await
                        .map_err(|e| convert(e, &self.describe, "SCAN"))?;
                    redis::from_redis_value(v).map_err(|e| {
                        Error::new(
                            ErrorKind::Unexpected,
                            format!("{}: SCAN reply: {e}", self.describe),
                        )
                    })?
                }
                _ => self.query(&cmd, "SCAN").await?,
            };
            keys.extend(page);
            cursor = next;
            if cursor == 0 {
                return Ok(keys);
            }
        }
    }
}

/// A client for one server; with TLS settings, trusting the configured authorities.
fn open_client(
    url: &str,
    config: &RedisConfig,
) -> std::result::Result<redis::Client, Box<dyn std::error::Error>> {
    #[cfg(feature = "tls")]
    if config.tls_ca.is_some() || config.tls_client.is_some() {
        let read = |p: &std::path::Path| {
            std::fs::read(p).map_err(|e| format!("reading {}: {e}", p.display()))
        };
        let root_cert = config.tls_ca.as_deref().map(read).transpose()?;
        let client_tls = match &config.tls_client {
            Some((cert, key)) => Some(redis::ClientTlsConfig {
                client_cert: read(cert)?,
                client_key: read(key)?,
            }),
            None => None,
        };
        return Ok(redis::Client::build_with_tls(
            url,
            redis::TlsCertificates {
                client_tls,
                root_cert,
            },
        )?);
    }
    let _ = config;
    Ok(redis::Client::open(url)?)
}

/// Removes the raw URL (which may hold a password) from a message.
fn scrub(message: &str, raw_url: &str) -> String {
    message.replace(raw_url, &redact(raw_url))
}

/// Classifies a Redis error: connection trouble and cluster transitions are temporary.
fn convert(e: RedisError, describe: &str, what: &str) -> Error {
    use redis::{ErrorKind as K, ServerErrorKind as S};
    let kind = e.kind();
    let code = e.code().unwrap_or("");
    let text = e.to_string();
    let (ours, temporary) = if text.contains("certificate") {
        // A TLS verification failure will not pass by retrying.
        (ErrorKind::PermissionDenied, false)
    } else if e.is_io_error()
        || e.is_timeout()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
    {
        (ErrorKind::Unavailable, true)
    } else {
        match kind {
            K::AuthenticationFailed => (ErrorKind::PermissionDenied, false),
            K::Server(S::NoPerm) => (ErrorKind::PermissionDenied, false),
            _ if matches!(code, "NOAUTH" | "WRONGPASS" | "NOPERM") => {
                (ErrorKind::PermissionDenied, false)
            }
            K::Server(
                S::BusyLoading
                | S::TryAgain
                | S::ClusterDown
                | S::MasterDown
                | S::Moved
                | S::Ask
                | S::ReadOnly,
            ) => (ErrorKind::Unavailable, true),
            K::ClusterConnectionNotFound => (ErrorKind::Unavailable, true),
            K::InvalidClientConfig => (ErrorKind::ConfigInvalid, false),
            K::Server(S::ResponseError) if code == "WRONGTYPE" || text.contains("WRONGTYPE") => {
                (ErrorKind::Corrupt, false)
            }
            K::Parse | K::UnexpectedReturnType => (ErrorKind::Unexpected, false),
            _ => (ErrorKind::Unexpected, false),
        }
    };
    let err = Error::new(ours, format!("{describe}: {what}: {e}"));
    if temporary {
        err.temporary()
    } else {
        err.permanent()
    }
}

fn encode_index_value(e: &IndexEntry) -> [u8; INDEX_VALUE_LEN] {
    let mut v = [0u8; INDEX_VALUE_LEN];
    v[..32].copy_from_slice(&e.hash.0);
    v[32..40].copy_from_slice(&e.size.to_be_bytes());
    v[40] = u8::from(e.pending);
    v
}

fn decode_index_value(v: &[u8]) -> Option<IndexEntry> {
    if v.len() != INDEX_VALUE_LEN {
        return None;
    }
    let hash = ContentHash(v[..32].try_into().ok()?);
    let size = u64::from_be_bytes(v[32..40].try_into().ok()?);
    Some(IndexEntry {
        hash,
        size,
        pending: v[40] & 1 == 1,
    })
}

/// Escapes glob metacharacters for `SCAN MATCH`.
fn glob_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, '*' | '?' | '[' | ']' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

#[async_trait]
impl CacheBackend for RedisBackend {
    fn capabilities(&self) -> Capabilities {
        Capabilities {
            list_keys: true,
            native_batch: true,
            batch_max_keys: Some(self.config.batch_max_keys),
            max_value_bytes: Some(MAX_VALUE_BYTES),
            persistent: true,
            shared: true,
            evicts: true,
        }
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }

    async fn get(&self, key: &str) -> Result<Option<Bytes>> {
        let v: Option<Vec<u8>> = self.query(redis::cmd("GET").arg(key), "GET").await?;
        Ok(v.map(Bytes::from))
    }

    async fn set(&self, key: &str, value: Bytes) -> Result<()> {
        self.capabilities().check_value_len(key, value.len())?;
        self.query::<()>(&self.set_cmd(key, &value), "SET").await
    }

    async fn delete(&self, key: &str) -> Result<()> {
        self.query::<()>(redis::cmd("UNLINK").arg(key), "UNLINK")
            .await
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>> {
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(self.config.batch_max_keys) {
            let vals: Vec<Option<Vec<u8>>> =
                self.query(redis::cmd("MGET").arg(chunk), "MGET").await?;
            out.extend(vals.into_iter().map(|v| v.map(Bytes::from)));
        }
        Ok(out)
    }

    async fn set_many(&self, entries: &[(String, Bytes)]) -> Result<()> {
        let caps = self.capabilities();
        for (k, v) in entries {
            caps.check_value_len(k, v.len())?;
        }
        for chunk in self.chunks(entries) {
            match (&self.conn, self.config.ttl) {
                (_, None) => {
                    let mut cmd = redis::cmd("MSET");
                    for (k, v) in chunk {
                        cmd.arg(k).arg(v.as_ref());
                    }
                    self.query::<()>(&cmd, "MSET").await?;
                }
                (Conn::Single(_), Some(_)) => {
                    let mut pipe = redis::pipe();
                    for (k, v) in chunk {
                        pipe.add_command(self.set_cmd(k, v)).ignore();
                    }
                    self.pipe::<()>(&pipe, "SET pipeline").await?;
                }
                // Pipelines cannot span slots; concurrent commands are multiplexed instead.
                (Conn::Cluster(_), Some(_)) => {
                    try_join_all(chunk.iter().map(|(k, v)| async move {
                        self.query::<()>(&self.set_cmd(k, v), "SET").await
                    }))
                    .await?;
                }
            }
        }
        Ok(())
    }

    async fn delete_many(&self, keys: &[String]) -> Result<()> {
        for chunk in keys.chunks(self.config.batch_max_keys) {
            self.query::<()>(redis::cmd("UNLINK").arg(chunk), "UNLINK")
                .await?;
        }
        Ok(())
    }

    async fn exists_many(&self, keys: &[String]) -> Result<Vec<bool>> {
        let mut out = Vec::with_capacity(keys.len());
        for chunk in keys.chunks(self.config.batch_max_keys) {
            // One multi-key EXISTS counts the chunk: when all exist (the common case) that is
            // the answer; otherwise ask key by key.
            let count: usize = self
                .query(redis::cmd("EXISTS").arg(chunk), "EXISTS")
                .await?;
            if count == chunk.len() {
                out.extend(std::iter::repeat_n(true, chunk.len()));
                continue;
            }
            match &self.conn {
                Conn::Single(_) => {
                    let mut pipe = redis::pipe();
                    for k in chunk {
                        pipe.cmd("EXISTS").arg(k);
                    }
                    let found: Vec<bool> = self.pipe(&pipe, "EXISTS pipeline").await?;
                    out.extend(found);
                }
                Conn::Cluster(_) => {
                    let found = try_join_all(chunk.iter().map(|k| async move {
                        self.query::<bool>(redis::cmd("EXISTS").arg(k), "EXISTS")
                            .await
                    }))
                    .await?;
                    out.extend(found);
                }
            }
        }
        Ok(out)
    }

    async fn list_keys(&self, prefix: &str) -> Result<Vec<String>> {
        let pattern = format!("{}*", glob_escape(prefix));
        match &self.conn {
            Conn::Single(_) => self.scan_all(&pattern, None).await,
            Conn::Cluster(_) => {
                let mut keys = Vec::new();
                for (host, port) in self.primaries().await? {
                    keys.extend(self.scan_all(&pattern, Some((&host, port))).await?);
                }
                Ok(keys)
            }
        }
    }

    async fn load_index(&self, namespace: &Namespace) -> Result<Option<IndexSnapshot>> {
        let key = namespace.index_root_key();
        let exists: bool = self.query(redis::cmd("EXISTS").arg(&key), "EXISTS").await?;
        if !exists {
            return Ok(None);
        }
        let mut snap = IndexSnapshot::default();
        let mut cursor: u64 = 0;
        loop {
            let (next, flat): (u64, Vec<Vec<u8>>) = self
                .query(
                    redis::cmd("HSCAN")
                        .arg(&key)
                        .arg(cursor)
                        .arg("COUNT")
                        .arg(SCAN_COUNT),
                    "HSCAN",
                )
                .await
                .map_err(|e| e.context(format!("reading index {key}")))?;
            for pair in flat.chunks(2) {
                let [name, value] = pair else { continue };
                match (std::str::from_utf8(name), decode_index_value(value)) {
                    (Ok(n), Some(e)) => {
                        snap.entries.insert(n.to_owned(), e);
                    }
                    _ => snap.lost.push(format!(
                        "{key}: malformed field {:?}",
                        String::from_utf8_lossy(name)
                    )),
                }
            }
            cursor = next;
            if cursor == 0 {
                return Ok(Some(snap));
            }
        }
    }

    async fn update_index(&self, namespace: &Namespace, changes: &IndexChanges) -> Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        let key = namespace.index_root_key();
        // Later upserts of a name win, as in the sharded layout.
        let mut upserts: HashMap<&str, &IndexEntry> = HashMap::new();
        for (n, e) in &changes.upserts {
            upserts.insert(n, e);
        }
        let upserts: Vec<(&str, &IndexEntry)> = upserts.into_iter().collect();
        // Pipelines of a few commands each: bounded memory, few round trips.
        let mut pipe = redis::pipe();
        let mut queued = 0;
        for chunk in upserts.chunks(INDEX_CHUNK) {
            let cmd = pipe.cmd("HSET").arg(&key);
            for (n, e) in chunk {
                cmd.arg(*n).arg(&encode_index_value(e)[..]);
            }
            cmd.ignore();
            queued += 1;
            if queued == 8 {
                self.pipe::<()>(&pipe, "HSET pipeline")
                    .await
                    .map_err(|e| e.context(format!("updating index {key}")))?;
                pipe = redis::pipe();
                queued = 0;
            }
        }
        for chunk in changes.removals.chunks(INDEX_CHUNK) {
            pipe.cmd("HDEL").arg(&key).arg(chunk).ignore();
            queued += 1;
        }
        if queued > 0 {
            self.pipe::<()>(&pipe, "HSET/HDEL pipeline")
                .await
                .map_err(|e| e.context(format!("updating index {key}")))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_values_round_trip() {
        let e = IndexEntry {
            hash: ContentHash::of(b"x"),
            size: 42,
            pending: true,
        };
        assert_eq!(decode_index_value(&encode_index_value(&e)), Some(e));
        assert_eq!(decode_index_value(b"short"), None);
    }

    #[test]
    fn globs_are_escaped() {
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }
}
