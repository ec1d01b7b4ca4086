//! Memcached backend settings and URL parsing.

use std::time::Duration;

use template_cache_core::Result;
use template_cache_core::url::{UrlQuery, invalid};

/// Settings of a [`crate::MemcachedBackend`]. URL query parameters of the same names override
/// them (`memcache://h1:11211,h2:11211?ttl=1d&io_timeout=2s`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MemcachedConfig {
    /// Time allowed to establish a connection (`connect_timeout`, default 1 s).
    pub connect_timeout: Duration,
    /// Time allowed for one exchange, a whole pipelined batch included (`io_timeout`,
    /// default 5 s).
    pub io_timeout: Duration,
    /// Keys per pipelined batch (`batch_keys`, default 500).
    pub batch_max_keys: usize,
    /// Expiry of template entries (`ttl`, default never; Memcached treats more than 30 days as
    /// an absolute Unix time, so longer values are refused). The index never expires.
    pub ttl: Option<Duration>,
}

impl Default for MemcachedConfig {
    fn default() -> Self {
        MemcachedConfig {
            connect_timeout: Duration::from_secs(1),
            io_timeout: Duration::from_secs(5),
            batch_max_keys: 500,
            ttl: None,
        }
    }
}

/// The longest `ttl`: Memcached reads a larger expiry as an absolute Unix time.
const MAX_TTL: Duration = Duration::from_secs(30 * 24 * 3600);

/// Parses `memcache://host:port[,host:port...][?params]` into server addresses and settings.
pub(crate) fn parse(
    url: &str,
    mut config: MemcachedConfig,
) -> Result<(Vec<String>, MemcachedConfig)> {
    let (base, mut q) = UrlQuery::parse("Memcached", url);
    let Some(hosts) = base.strip_prefix("memcache://") else {
        return Err(q.invalid("expected memcache://host:port[,host:port...]"));
    };
    if let Some(d) = q.duration("ttl")? {
        if d > MAX_TTL {
            return Err(q.invalid(
                "ttl must be at most 30 days (Memcached reads a longer expiry as a Unix time)",
            ));
        }
        config.ttl = Some(d);
    }
    if let Some(d) = q.duration("connect_timeout")? {
        config.connect_timeout = d;
    }
    if let Some(d) = q.duration("io_timeout")? {
        config.io_timeout = d;
    }
    if let Some(n) = q.count("batch_keys")? {
        config.batch_max_keys = n;
    }
    q.finish()?;
    if hosts.contains('@') {
        return Err(invalid(
            "Memcached",
            url,
            "Memcached has no authentication in this backend; remove user:password@",
        ));
    }
    let mut servers = Vec::new();
    for h in hosts.trim_end_matches('/').split(',') {
        match h.rsplit_once(':') {
            Some((host, port)) if !host.is_empty() && port.parse::<u16>().is_ok() => {
                servers.push(h.to_owned())
            }
            _ => {
                return Err(invalid(
                    "Memcached",
                    url,
                    format!("server {h:?} is not host:port"),
                ));
            }
        }
    }
    Ok((servers, config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_servers_and_parameters() {
        let (s, c) = parse(
            "memcache://a:1,b:2?ttl=1h&batch_keys=9",
            MemcachedConfig::default(),
        )
        .unwrap();
        assert_eq!(s, ["a:1", "b:2"]);
        assert_eq!(
            (c.ttl, c.batch_max_keys),
            (Some(Duration::from_secs(3600)), 9)
        );
    }

    #[test]
    fn rejects_bad_urls_clearly() {
        for (url, want) in [
            ("memcache://", "host:port"),
            ("memcache://a:x", "host:port"),
            ("memcache://a:1?ttl=60d", "30 days"),
            ("memcache://a:1?nope=1", "unknown parameter"),
            ("memcache://u:secret@a:1", "authentication"),
            ("redis://a:1", "expected memcache://"),
        ] {
            let e = parse(url, MemcachedConfig::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{url}: {e}");
            assert!(!e.contains("secret"), "{e}");
        }
    }
}
