#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

mod config;

use futures_util::future::try_join_all;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, FromRedisValue, Pipeline, RedisError, Value};
use template_cache_core::{
    Bytes, CacheBackend, Capabilities, Error, ErrorKind, Expiry, IndexLayout, Result, async_trait,
    url::redact,
};

pub use config::RedisConfig;
use config::Target;

/// Redis limits a bulk string to 512 MiB.
const MAX_VALUE_BYTES: usize = 512 * 1024 * 1024;
/// Elements per `SCAN`/`HSCAN` page: large pages keep round trips few on big namespaces.
const SCAN_COUNT: usize = 10_000;

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

/// `SET key value PX ttl`: a template entry with the configured expiry.
fn set_px_cmd(key: &str, value: &[u8], ttl: std::time::Duration) -> Cmd {
    let mut c = redis::cmd("SET");
    c.arg(key)
        .arg(value)
        .arg("PX")
        .arg(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1));
    c
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
            batch_max_keys: Some(self.config.batch_max_keys),
            batch_max_bytes: Some(self.config.batch_max_bytes),
            max_value_bytes: Some(MAX_VALUE_BYTES),
            evicts: true,
        }
    }

    fn index_layout(&self) -> IndexLayout {
        IndexLayout::Hash
    }

    fn describe(&self) -> String {
        self.describe.clone()
    }

    async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>> {
        let vals: Vec<Option<Vec<u8>>> = self.query(redis::cmd("MGET").arg(keys), "MGET").await?;
        Ok(vals.into_iter().map(|v| v.map(Bytes::from)).collect())
    }

    async fn set_many(&self, entries: &[(String, Bytes)], expiry: Expiry) -> Result<()> {
        if entries.is_empty() {
            return Ok(());
        }
        let ttl = self.config.ttl.filter(|_| expiry == Expiry::Entry);
        match (&self.conn, ttl) {
            (_, None) => {
                let mut cmd = redis::cmd("MSET");
                for (k, v) in entries {
                    cmd.arg(k).arg(v.as_ref());
                }
                self.query::<()>(&cmd, "MSET").await
            }
            (Conn::Single(_), Some(ttl)) => {
                let mut pipe = redis::pipe();
                for (k, v) in entries {
                    pipe.add_command(set_px_cmd(k, v, ttl)).ignore();
                }
                self.pipe::<()>(&pipe, "SET pipeline").await
            }
            // Pipelines cannot span slots; concurrent commands are multiplexed instead.
            (Conn::Cluster(_), Some(ttl)) => {
                try_join_all(entries.iter().map(|(k, v)| async move {
                    self.query::<()>(&set_px_cmd(k, v, ttl), "SET").await
                }))
                .await?;
                Ok(())
            }
        }
    }

    async fn delete_many(&self, keys: &[String]) -> Result<()> {
        if keys.is_empty() {
            return Ok(());
        }
        self.query::<()>(redis::cmd("UNLINK").arg(keys), "UNLINK")
            .await
    }

    async fn exists_many(&self, keys: &[String]) -> Result<Vec<bool>> {
        if keys.is_empty() {
            return Ok(Vec::new());
        }
        // One multi-key EXISTS counts the batch: when all exist (the common case) that is the
        // answer; otherwise ask key by key.
        let count: usize = self.query(redis::cmd("EXISTS").arg(keys), "EXISTS").await?;
        if count == keys.len() {
            return Ok(vec![true; keys.len()]);
        }
        match &self.conn {
            Conn::Single(_) => {
                let mut pipe = redis::pipe();
                for k in keys {
                    pipe.cmd("EXISTS").arg(k);
                }
                self.pipe(&pipe, "EXISTS pipeline").await
            }
            Conn::Cluster(_) => {
                try_join_all(keys.iter().map(|k| async move {
                    self.query::<bool>(redis::cmd("EXISTS").arg(k), "EXISTS")
                        .await
                }))
                .await
            }
        }
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

    async fn hash_scan(&self, key: &str, cursor: u64) -> Result<(u64, Vec<(Bytes, Bytes)>)> {
        let (next, flat): (u64, Vec<Vec<u8>>) = self
            .query(
                redis::cmd("HSCAN")
                    .arg(key)
                    .arg(cursor)
                    .arg("COUNT")
                    .arg(SCAN_COUNT),
                "HSCAN",
            )
            .await?;
        if flat.len() % 2 != 0 {
            return Err(Error::new(
                ErrorKind::Unexpected,
                format!(
                    "{}: HSCAN of {key} answered an odd number ({}) of fields and values",
                    self.describe,
                    flat.len()
                ),
            ));
        }
        let mut page = Vec::with_capacity(flat.len() / 2);
        let mut it = flat.into_iter();
        while let (Some(field), Some(value)) = (it.next(), it.next()) {
            page.push((Bytes::from(field), Bytes::from(value)));
        }
        Ok((next, page))
    }

    async fn hash_update(
        &self,
        key: &str,
        set: &[(String, Bytes)],
        remove: &[String],
    ) -> Result<()> {
        let hset = (!set.is_empty()).then(|| {
            let mut cmd = redis::cmd("HSET");
            cmd.arg(key);
            for (field, value) in set {
                cmd.arg(field).arg(value.as_ref());
            }
            cmd
        });
        let hdel = (!remove.is_empty()).then(|| {
            let mut cmd = redis::cmd("HDEL");
            cmd.arg(key).arg(remove);
            cmd
        });
        match (hset, hdel) {
            (None, None) => Ok(()),
            (Some(cmd), None) => self.query::<()>(&cmd, "HSET").await,
            (None, Some(cmd)) => self.query::<()>(&cmd, "HDEL").await,
            // Both commands address one key (one slot): one pipeline, one round trip.
            (Some(hset), Some(hdel)) => {
                let mut pipe = redis::pipe();
                pipe.add_command(hset).ignore();
                pipe.add_command(hdel).ignore();
                self.pipe::<()>(&pipe, "HSET/HDEL pipeline").await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_are_escaped() {
        assert_eq!(glob_escape("a*b?[c]\\"), "a\\*b\\?\\[c\\]\\\\");
    }

    #[test]
    fn set_px_carries_the_ttl_in_milliseconds() {
        let cmd = set_px_cmd("k", b"v", std::time::Duration::from_millis(1500));
        let args: Vec<Vec<u8>> = cmd
            .args_iter()
            .map(|a| match a {
                redis::Arg::Simple(b) => b.to_vec(),
                _ => Vec::new(),
            })
            .collect();
        assert_eq!(args, [&b"SET"[..], b"k", b"v", b"PX", b"1500"]);
    }
}
