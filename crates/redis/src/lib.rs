#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

mod config;

use std::time::Duration;

use futures_util::future::try_join_all;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{Cmd, FromRedisValue, Pipeline, RedisError, Value};
use template_cache_core::{
    Bytes, CacheBackend, Capabilities, Error, ErrorKind, Expiry, Fence, IndexLayout, Result,
    ServerStats, async_trait, url::redact,
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
        // The `redis` crate may echo credentials in its messages: scrub them all.
        let secrets = template_cache_core::url::Secrets::of(url);
        let fail = |e: RedisError| secrets.scrub_error(convert(e, &describe, "connecting"));
        let connect = async {
            Ok::<_, Error>(match target {
                Target::Single(u) => {
                    let client = open_client(&u, &config).map_err(|e| {
                        Error::new(
                            ErrorKind::ConfigInvalid,
                            format!(
                                "invalid Redis URL {describe:?}: {}",
                                secrets.scrub(&scrub(&e.to_string(), &u))
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
                            format!(
                                "invalid Redis Cluster URL {describe:?}: {}",
                                secrets.scrub(&e.to_string())
                            ),
                        )
                    })?;
                    Conn::Cluster(client.get_async_connection().await.map_err(fail)?)
                }
            })
        };
        // The client's own timeouts apply per attempt; bound the whole connection phase too.
        let budget = config
            .connect_timeout
            .saturating_add(config.response_timeout)
            .saturating_mul(
                u32::try_from(config.reconnect_attempts)
                    .unwrap_or(u32::MAX)
                    .saturating_add(2),
            );
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
        backend
            .query::<String>(&redis::cmd("PING"), "PING")
            .await
            .map_err(|e| secrets.scrub_error(e))?;
        backend.warn_if_evicting().await;
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

    /// `SCAN`s one server (`target`, or the connection's) for `pattern`, handing each page to
    /// `each`.
    async fn scan_each(
        &self,
        pattern: &str,
        target: Option<(&str, u16)>,
        each: &mut (dyn FnMut(Vec<String>) + Send),
    ) -> Result<()> {
        let mut cursor: u64 = 0;
        loop {
            let mut cmd = redis::cmd("SCAN");
            cmd.arg(cursor)
                .arg("MATCH")
                .arg(pattern)
                .arg("COUNT")
                .arg(SCAN_COUNT);
            let (next, page): (u64, Vec<String>) = self.query_at(&cmd, target, "SCAN").await?;
            each(page);
            cursor = next;
            if cursor == 0 {
                return Ok(());
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
    } else if kind == K::AuthenticationFailed
        || matches!(code, "NOAUTH" | "WRONGPASS")
        || ["AuthenticationFailed", "WRONGPASS", "NOAUTH"]
            .iter()
            .any(|w| text.contains(w))
    {
        // A cluster wraps a wrong password of its nodes in an I/O error: still not temporary.
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
        let mut keys = Vec::new();
        self.list_keys_paged(prefix, &mut |page| keys.extend(page))
            .await?;
        Ok(keys)
    }

    async fn list_keys_paged(
        &self,
        prefix: &str,
        each: &mut (dyn FnMut(Vec<String>) + Send),
    ) -> Result<()> {
        let pattern = format!("{}*", glob_escape(prefix));
        match &self.conn {
            Conn::Single(_) => self.scan_each(&pattern, None, each).await,
            Conn::Cluster(_) => {
                for (host, port) in self.primaries().await? {
                    self.scan_each(&pattern, Some((&host, port)), each).await?;
                }
                Ok(())
            }
        }
    }

    async fn hash_len(&self, key: &str) -> Result<Option<u64>> {
        self.query(redis::cmd("HLEN").arg(key), "HLEN")
            .await
            .map(Some)
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

    async fn hash_update_fenced(
        &self,
        key: &str,
        set: &[(String, Bytes)],
        remove: &[String],
        fence: &Fence,
    ) -> Result<()> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(FENCED_HASH_UPDATE)
            .arg(2)
            .arg(key)
            .arg(&fence.key)
            .arg(fence.token.as_ref())
            .arg(set.len());
        for (field, value) in set {
            cmd.arg(field).arg(value.as_ref());
        }
        cmd.arg(remove);
        self.query::<i64>(&cmd, "fenced HSET/HDEL")
            .await
            .map(drop)
            .map_err(fence_error)
    }

    async fn put_if_absent(&self, key: &str, value: Bytes, ttl: Duration) -> Result<bool> {
        let mut cmd = redis::cmd("SET");
        cmd.arg(key)
            .arg(value.as_ref())
            .arg("NX")
            .arg("PX")
            .arg(millis(ttl));
        let r: Option<String> = self.query(&cmd, "SET NX").await?;
        Ok(r.is_some())
    }

    async fn swap_if_equal(
        &self,
        key: &str,
        expected: &[u8],
        new: Option<Bytes>,
        ttl: Duration,
    ) -> Result<bool> {
        let mut cmd = redis::cmd("EVAL");
        cmd.arg(SWAP_IF_EQUAL).arg(1).arg(key).arg(expected);
        match &new {
            Some(v) => cmd.arg("set").arg(v.as_ref()).arg(millis(ttl)),
            None => cmd.arg("del"),
        };
        let done: i64 = self.query(&cmd, "compare-and-swap").await?;
        Ok(done == 1)
    }

    async fn server_stats(&self) -> Result<Option<ServerStats>> {
        Ok(Some(sum_stats(self.stats_per_server().await?)))
    }
}

impl RedisBackend {
    /// `INFO memory` and `INFO stats` of the server, or of every primary of the cluster.
    async fn stats_per_server(&self) -> Result<Vec<ServerStats>> {
        match &self.conn {
            Conn::Single(_) => Ok(vec![self.stats_of(None).await?]),
            Conn::Cluster(_) => {
                let primaries = self.primaries().await?;
                try_join_all(
                    primaries
                        .iter()
                        .map(|(host, port)| self.stats_of(Some((host, *port)))),
                )
                .await
            }
        }
    }

    async fn stats_of(&self, target: Option<(&str, u16)>) -> Result<ServerStats> {
        let (memory, stats, server) = futures_util::future::try_join3(
            self.info("memory", target),
            self.info("stats", target),
            self.info("server", target),
        )
        .await?;
        let field = |text: &str, name: &str| -> Result<String> {
            info_field(text, name).map(str::to_owned).ok_or_else(|| {
                Error::new(
                    ErrorKind::Unexpected,
                    format!("{}: INFO has no {name}", self.describe),
                )
            })
        };
        let number = |text: &str, name: &str| -> Result<u64> {
            field(text, name)?.parse().map_err(|_| {
                Error::new(
                    ErrorKind::Unexpected,
                    format!("{}: INFO {name} is not a number", self.describe),
                )
            })
        };
        let max = number(&memory, "maxmemory")?;
        let evictions = number(&stats, "evicted_keys")?;
        // Every way a server drops keys by itself: a restart (a new run_id), evictions, expiry.
        let drop_stamp = format!(
            "{}/{evictions}/{}",
            field(&server, "run_id")?,
            number(&stats, "expired_keys")?
        );
        Ok(ServerStats {
            evictions,
            drop_stamp: Some(drop_stamp),
            used_bytes: Some(number(&memory, "used_memory")?),
            // 0 is no limit.
            max_bytes: (max > 0).then_some(max),
            policy: Some(field(&memory, "maxmemory_policy")?),
        })
    }

    /// `INFO <section>` of the server, or of the cluster node at `target`.
    async fn info(&self, section: &str, target: Option<(&str, u16)>) -> Result<String> {
        let mut cmd = redis::cmd("INFO");
        cmd.arg(section);
        self.query_at(&cmd, target, "INFO").await
    }

    /// Runs `cmd` on the cluster node at `target`, or as usual (without a target, or on a
    /// single server).
    async fn query_at<T: FromRedisValue>(
        &self,
        cmd: &Cmd,
        target: Option<(&str, u16)>,
        what: &str,
    ) -> Result<T> {
        let (Some((host, port)), Conn::Cluster(c)) = (target, &self.conn) else {
            return self.query(cmd, what).await;
        };
        let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
            host: host.to_owned(),
            port,
        });
        let v: Value = c
            .clone()
            .route_command(cmd.clone(), routing)
            .await
            .map_err(|e| convert(e, &self.describe, what))?;
        redis::from_redis_value(v).map_err(|e| {
            Error::new(
                ErrorKind::Unexpected,
                format!("{}: {what} reply: {e}", self.describe),
            )
        })
    }

    /// Warns when the server may evict the index and entries whenever memory runs out.
    async fn warn_if_evicting(&self) {
        match self.stats_per_server().await {
            Ok(all) => {
                if let Some(warning) = all.iter().find_map(eviction_risk) {
                    tracing::warn!(backend = %self.describe, "{warning}");
                }
            }
            Err(e) => {
                tracing::debug!(backend = %self.describe, error = %e, "cannot read the eviction policy")
            }
        }
    }
}

/// The value of `name` in an `INFO` reply (`name:value` lines).
fn info_field<'a>(text: &'a str, name: &str) -> Option<&'a str> {
    text.lines()
        .find_map(|line| line.strip_prefix(name)?.strip_prefix(':').map(str::trim))
}

/// The statistics of a cluster's primaries as one: counts and sizes summed (a size unknown or
/// unlimited on one primary is so for the whole), policies listed when they differ.
fn sum_stats(all: Vec<ServerStats>) -> ServerStats {
    let mut sum = ServerStats {
        used_bytes: Some(0),
        max_bytes: Some(0),
        ..ServerStats::default()
    };
    let mut policies: Vec<String> = Vec::new();
    // One stamp per server, in a stable order; any server without one leaves the whole without.
    let mut stamps: Option<Vec<String>> = Some(Vec::new());
    for s in all {
        match (&mut stamps, s.drop_stamp) {
            (Some(all), Some(one)) => all.push(one),
            _ => stamps = None,
        }
        sum.evictions = sum.evictions.saturating_add(s.evictions);
        sum.used_bytes = sum
            .used_bytes
            .zip(s.used_bytes)
            .map(|(a, b)| a.saturating_add(b));
        sum.max_bytes = sum
            .max_bytes
            .zip(s.max_bytes)
            .map(|(a, b)| a.saturating_add(b));
        if let Some(p) = s.policy
            && !policies.contains(&p)
        {
            policies.push(p);
        }
    }
    sum.policy = (!policies.is_empty()).then(|| policies.join("/"));
    sum.drop_stamp = stamps.map(|mut all| {
        all.sort();
        all.join(",")
    });
    sum
}

/// Why a server's memory settings put the index and the entries at risk, if they do.
fn eviction_risk(s: &ServerStats) -> Option<String> {
    let (Some(max), Some(policy)) = (s.max_bytes, s.policy.as_deref()) else {
        return None;
    };
    policy.starts_with("allkeys-").then(|| {
        format!(
            "maxmemory is {:.1} MiB with maxmemory-policy {policy}: when memory runs out, Redis \
             evicts any key, the namespace index and templates included, and warms and checks \
             then find them missing. Safe policies: noeviction (writes fail loudly instead), or \
             a volatile-* policy with no `ttl` on entries (only keys with an expiry are evicted, \
             never the index or an entry without a TTL)",
            max as f64 / (1024.0 * 1024.0)
        )
    })
}

/// `KEYS[1]` = key; `ARGV` = expected value, `set` new value ttl-ms | `del`.
const SWAP_IF_EQUAL: &str = r#"
if redis.call('GET', KEYS[1]) ~= ARGV[1] then return 0 end
if ARGV[2] == 'set' then
  redis.call('SET', KEYS[1], ARGV[3], 'PX', ARGV[4])
else
  redis.call('DEL', KEYS[1])
end
return 1
"#;

/// `KEYS` = index hash, lease key; `ARGV` = fence token, number of fields to set, the field
/// and value pairs, then the fields to remove. Applied only while the lease record starts
/// with the token. Arguments are unpacked 4,000 at a time (Lua's C stack holds 8,000).
const FENCED_HASH_UPDATE: &str = r#"
local lease = redis.call('GET', KEYS[2])
if not lease or string.sub(lease, 1, #ARGV[1]) ~= ARGV[1] then
  return redis.error_reply('TCACHE_FENCE the write lease is no longer held')
end
local n = tonumber(ARGV[2])
local i = 3
while i < 3 + 2 * n do
  local last = math.min(i + 3999, 2 + 2 * n)
  redis.call('HSET', KEYS[1], unpack(ARGV, i, last))
  i = last + 1
end
while i <= #ARGV do
  local last = math.min(i + 3999, #ARGV)
  redis.call('HDEL', KEYS[1], unpack(ARGV, i, last))
  i = last + 1
end
return 1
"#;

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX).max(1)
}

/// A fence refusal from the script is a conflict, not a backend failure.
fn fence_error(e: Error) -> Error {
    if e.message().contains("TCACHE_FENCE") {
        Error::new(
            ErrorKind::Conflict,
            "the write lease is no longer held; index left unchanged",
        )
    } else {
        e
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn info_fields_are_read_by_exact_name() {
        let info = "# Memory\r\nused_memory:1024\r\nused_memory_human:1.00K\r\nmaxmemory:0\r\n\
                    maxmemory_policy:allkeys-lru\r\n";
        assert_eq!(info_field(info, "used_memory"), Some("1024"));
        assert_eq!(info_field(info, "maxmemory"), Some("0"));
        assert_eq!(info_field(info, "maxmemory_policy"), Some("allkeys-lru"));
        assert_eq!(info_field(info, "evicted_keys"), None);
    }

    #[test]
    fn cluster_stats_are_summed_and_an_unlimited_primary_makes_the_whole_unlimited() {
        let s = |evictions, max: Option<u64>, policy: &str| ServerStats {
            evictions,
            used_bytes: Some(10),
            max_bytes: max,
            policy: Some(policy.into()),
            drop_stamp: Some(format!("run{evictions}/{evictions}/0")),
        };
        let sum = sum_stats(vec![
            s(2, Some(50), "allkeys-lru"),
            s(1, Some(100), "allkeys-lru"),
        ]);
        assert_eq!(
            sum,
            ServerStats {
                evictions: 3,
                used_bytes: Some(20),
                max_bytes: Some(150),
                policy: Some("allkeys-lru".into()),
                drop_stamp: Some("run1/1/0,run2/2/0".into()),
            }
        );
        let without = ServerStats {
            drop_stamp: None,
            ..s(1, Some(100), "allkeys-lru")
        };
        assert_eq!(sum_stats(vec![s(2, None, "x"), without]).drop_stamp, None);
        let sum = sum_stats(vec![
            s(1, Some(100), "allkeys-lru"),
            s(0, None, "noeviction"),
        ]);
        assert_eq!(sum.max_bytes, None);
        assert_eq!(sum.policy.as_deref(), Some("allkeys-lru/noeviction"));
    }

    #[test]
    fn only_a_limit_with_an_allkeys_policy_is_a_risk() {
        let s = |max: Option<u64>, policy: &str| ServerStats {
            max_bytes: max,
            policy: Some(policy.into()),
            ..ServerStats::default()
        };
        let risk = eviction_risk(&s(Some(60 << 20), "allkeys-lru")).unwrap_or_default();
        assert!(
            risk.contains("60.0 MiB") && risk.contains("allkeys-lru"),
            "{risk}"
        );
        assert!(
            risk.contains("noeviction") && risk.contains("volatile-"),
            "{risk}"
        );
        assert_eq!(eviction_risk(&s(None, "allkeys-lru")), None);
        assert_eq!(eviction_risk(&s(Some(60 << 20), "noeviction")), None);
        assert_eq!(eviction_risk(&s(Some(60 << 20), "volatile-lru")), None);
    }

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
