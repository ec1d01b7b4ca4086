//! Memcached backend settings and URL parsing.

use std::time::Duration;

use template_cache_core::Result;
use template_cache_core::url::{UrlQuery, check_count, check_duration, invalid};

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

/// The shortest and longest `ttl`: Memcached reads an expiry over 30 days as a Unix time.
pub const TTL_RANGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(30 * 86_400));
/// The shortest and longest `connect_timeout` and `io_timeout`.
pub const TIMEOUT_RANGE: (Duration, Duration) =
    (Duration::from_millis(1), Duration::from_secs(3600));
/// The fewest and most `batch_keys`.
pub const BATCH_KEYS_RANGE: (usize, usize) = (1, 100_000);

impl MemcachedConfig {
    /// Checks every setting against its range (the constants of this module); the error names
    /// the setting. [`crate::MemcachedBackend::connect_with`] calls it, so no setting can make
    /// connecting hang for years or overflow.
    pub fn validate(&self) -> Result<()> {
        let ((t0, t1), (l0, l1)) = (TIMEOUT_RANGE, TTL_RANGE);
        check_duration("Memcached connect_timeout", self.connect_timeout, t0, t1)?;
        check_duration("Memcached io_timeout", self.io_timeout, t0, t1)?;
        if let Some(ttl) = self.ttl {
            check_duration("Memcached ttl", ttl, l0, l1)?;
        }
        let (k0, k1) = BATCH_KEYS_RANGE;
        check_count("Memcached batch_keys", self.batch_max_keys, k0, k1)
    }
}

/// Parses `memcache://host:port[,host:port...][?params]` into server addresses and settings,
/// and checks the resulting settings. The URL is read as every backend and redaction read it
/// ([`BackendUrl`](template_cache_core::url::BackendUrl)); credentials are refused, since
/// Memcached has no authentication here.
pub(crate) fn parse(
    url: &str,
    mut config: MemcachedConfig,
) -> Result<(Vec<String>, MemcachedConfig)> {
    let (parts, mut q) = UrlQuery::parse("Memcached", url);
    if parts.scheme() != Some("memcache") {
        return Err(q.invalid("expected memcache://host:port[,host:port...]"));
    }
    if parts.userinfo().is_some() {
        return Err(
            q.invalid("Memcached has no authentication in this backend; remove user:password@")
        );
    }
    let ((t0, t1), (l0, l1)) = (TIMEOUT_RANGE, TTL_RANGE);
    if let Some(d) = q.duration_in("ttl", l0, l1)? {
        config.ttl = Some(d);
    }
    if let Some(d) = q.duration_in("connect_timeout", t0, t1)? {
        config.connect_timeout = d;
    }
    if let Some(d) = q.duration_in("io_timeout", t0, t1)? {
        config.io_timeout = d;
    }
    let (k0, k1) = BATCH_KEYS_RANGE;
    if let Some(n) = q.count_in("batch_keys", k0, k1)? {
        config.batch_max_keys = n;
    }
    q.finish()?;
    config.validate()?;
    if parts.fragment().is_some() {
        return Err(invalid("Memcached", url, "memcache:// takes no #fragment"));
    }
    let mut servers = Vec::new();
    for h in parts.location().trim_end_matches('/').split(',') {
        match h.rsplit_once(':') {
            Some((host, port))
                if !host.is_empty() && !host.contains('/') && port.parse::<u16>().is_ok() =>
            {
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
            ("memcache://a:1?ttl=60d", "from 1s to 30d"),
            ("memcache://a:1?nope=1", "unknown parameter"),
            ("memcache://u:secret@a:1", "authentication"),
            ("memcache://u:se/cr?et@a:1?ttl=soon", "authentication"),
            ("memcache://secret@a:1", "authentication"),
            ("redis://a:1", "expected memcache://"),
        ] {
            let e = parse(url, MemcachedConfig::default())
                .unwrap_err()
                .to_string();
            assert!(e.contains(want), "{url}: {e}");
            assert!(!e.contains("secret") && !e.contains("cr?et"), "{e}");
        }
    }

    #[test]
    fn every_setting_is_range_checked() {
        for (param, want) in [
            (
                "connect_timeout=100000000000s",
                "connect_timeout=\"100000000000s\" must be a duration from 1ms to 1h",
            ),
            (
                "io_timeout=18446744073709551615s",
                "io_timeout=\"18446744073709551615s\" must be a duration from 1ms to 1h",
            ),
            ("io_timeout=0s", "io_timeout"),
            ("ttl=0s", "ttl=\"0s\" must be a duration from 1s to 30d"),
            (
                "batch_keys=0",
                "batch_keys=\"0\" must be a whole number from 1 to 100000",
            ),
        ] {
            let e = parse(
                &format!("memcache://a:1?{param}"),
                MemcachedConfig::default(),
            )
            .unwrap_err();
            assert_eq!(e.kind(), template_cache_core::ErrorKind::ConfigInvalid);
            assert!(e.to_string().contains(want), "{param}: {e}");
        }
        let huge = MemcachedConfig {
            io_timeout: Duration::MAX,
            ..MemcachedConfig::default()
        };
        let e = parse("memcache://a:1", huge).unwrap_err().to_string();
        assert!(e.contains("Memcached io_timeout"), "{e}");
        assert!(MemcachedConfig::default().validate().is_ok());
    }
}
