//! Redis backend settings and URL parsing.

use std::time::Duration;

use template_cache_core::url::{UrlQuery, invalid, redact};
use template_cache_core::{Error, ErrorKind, Result};

/// Settings of a [`crate::RedisBackend`]. URL query parameters of the same names override them
/// (`redis://host:6379/0?ttl=1h&response_timeout=5s`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RedisConfig {
    /// Time allowed to establish a connection (`connect_timeout`, default 1 s).
    pub connect_timeout: Duration,
    /// Time allowed for one reply (`response_timeout`, default 2 s).
    pub response_timeout: Duration,
    /// Reconnection attempts behind one failing call (`reconnect_attempts`, default 3); the
    /// engines retry on top of that.
    pub reconnect_attempts: usize,
    /// Keys per batch command (`batch_keys`, default 1000).
    pub batch_max_keys: usize,
    /// Value bytes per batch command (`batch_bytes`, default 8 MiB).
    pub batch_max_bytes: usize,
    /// Expiry of template entries (`ttl`, default none). The index never expires.
    pub ttl: Option<Duration>,
    /// `rediss://` only: PEM file of the certificate authorities to trust instead of the
    /// system's (`tls_ca`).
    pub tls_ca: Option<std::path::PathBuf>,
    /// `rediss://` only: PEM files of a client certificate and its key, for servers that
    /// authenticate clients (`tls_cert`, `tls_key`).
    pub tls_client: Option<(std::path::PathBuf, std::path::PathBuf)>,
}

impl Default for RedisConfig {
    fn default() -> Self {
        RedisConfig {
            connect_timeout: Duration::from_secs(1),
            response_timeout: Duration::from_secs(2),
            reconnect_attempts: 3,
            batch_max_keys: 1000,
            batch_max_bytes: 8 * 1024 * 1024,
            ttl: None,
            tls_ca: None,
            tls_client: None,
        }
    }
}

/// Where to connect.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Target {
    /// One server: the URL for the `redis` crate, without our parameters.
    Single(String),
    /// A cluster: seed nodes as `redis://host:port` plus credentials.
    Cluster {
        nodes: Vec<String>,
        username: Option<String>,
        password: Option<String>,
    },
}

/// Parses `redis://`, `rediss://` and `redis+cluster://` URLs, applying our query parameters to
/// `config`.
pub(crate) fn parse(url: &str, mut config: RedisConfig) -> Result<(Target, RedisConfig)> {
    let (base, mut q) = UrlQuery::parse("Redis", url);
    if let Some(d) = q.duration("ttl")? {
        config.ttl = Some(d);
    }
    if let Some(d) = q.duration("connect_timeout")? {
        config.connect_timeout = d;
    }
    if let Some(d) = q.duration("response_timeout")? {
        config.response_timeout = d;
    }
    if let Some(n) = q.count("reconnect_attempts")? {
        config.reconnect_attempts = n;
    }
    if let Some(n) = q.count("batch_keys")? {
        config.batch_max_keys = n;
    }
    if let Some(n) = q.count("batch_bytes")? {
        config.batch_max_bytes = n;
    }
    if let Some(p) = q.path("tls_ca") {
        config.tls_ca = Some(p);
    }
    match (q.path("tls_cert"), q.path("tls_key")) {
        (Some(c), Some(k)) => config.tls_client = Some((c, k)),
        (None, None) => {}
        _ => return Err(q.invalid("tls_cert and tls_key go together")),
    }
    let Some((scheme, rest)) = base.split_once("://") else {
        return Err(invalid(
            "Redis",
            url,
            "expected redis://, rediss:// or redis+cluster://",
        ));
    };
    if scheme != "rediss" && (config.tls_ca.is_some() || config.tls_client.is_some()) {
        return Err(invalid(
            "Redis",
            url,
            "tls_ca, tls_cert and tls_key need rediss://",
        ));
    }
    match scheme {
        "redis" | "rediss" => {
            if scheme == "rediss" && !cfg!(feature = "tls") {
                return Err(Error::new(
                    ErrorKind::Unsupported,
                    format!(
                        "{:?}: TLS (rediss://) needs template-cache-redis built with its `tls` feature",
                        redact(url)
                    ),
                ));
            }
            if rest.is_empty() {
                return Err(invalid("Redis", url, "no host"));
            }
            // Parameters we do not read are the `redis` crate's own (`protocol=resp3`, ...).
            let mut single = base.to_owned();
            let passthrough = q.rest();
            if !passthrough.is_empty() {
                single.push('?');
                single.push_str(&passthrough);
            }
            Ok((Target::Single(single), config))
        }
        "redis+cluster" => {
            q.finish()?;
            let (userinfo, hosts) = match rest.rsplit_once('@') {
                Some((u, h)) => (Some(u), h),
                None => (None, rest),
            };
            let (username, password) = match userinfo.map(|u| u.split_once(':').unwrap_or((u, "")))
            {
                Some((u, p)) => (
                    (!u.is_empty()).then(|| u.to_owned()),
                    (!p.is_empty()).then(|| p.to_owned()),
                ),
                None => (None, None),
            };
            let hosts = hosts.trim_end_matches('/');
            let mut nodes = Vec::new();
            for h in hosts.split(',') {
                let (host, port) = h
                    .rsplit_once(':')
                    .ok_or_else(|| invalid("Redis", url, format!("node {h:?} is not host:port")))?;
                if host.is_empty() || port.parse::<u16>().is_err() {
                    return Err(invalid(
                        "Redis",
                        url,
                        format!("node {h:?} is not host:port"),
                    ));
                }
                nodes.push(format!("redis://{h}"));
            }
            Ok((
                Target::Cluster {
                    nodes,
                    username,
                    password,
                },
                config,
            ))
        }
        other => Err(invalid("Redis", url, format!("unknown scheme {other:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn single_urls_keep_foreign_params_and_take_ours() {
        let (t, c) = parse(
            "redis://u:pw@h:1/2?ttl=1h&protocol=resp3&batch_keys=10",
            RedisConfig::default(),
        )
        .unwrap();
        assert_eq!(
            t,
            Target::Single("redis://u:pw@h:1/2?protocol=resp3".into())
        );
        assert_eq!(c.ttl, Some(Duration::from_secs(3600)));
        assert_eq!(c.batch_max_keys, 10);
    }

    #[test]
    fn tls_parameters() {
        let (t, c) = parse(
            "rediss://h:1?tls_ca=/ca.pem&tls_cert=/c.pem&tls_key=/k.pem",
            RedisConfig::default(),
        )
        .unwrap();
        assert_eq!(t, Target::Single("rediss://h:1".into()));
        assert_eq!(c.tls_ca.as_deref(), Some(std::path::Path::new("/ca.pem")));
        assert!(c.tls_client.is_some());
        assert!(parse("rediss://h:1?tls_cert=/c.pem", RedisConfig::default()).is_err());
        assert!(parse("redis://h:1?tls_ca=/ca.pem", RedisConfig::default()).is_err());
    }

    #[test]
    fn cluster_urls() {
        let (t, _) = parse(
            "redis+cluster://admin:pw@127.0.0.1:7000,127.0.0.1:7001",
            RedisConfig::default(),
        )
        .unwrap();
        assert_eq!(
            t,
            Target::Cluster {
                nodes: vec![
                    "redis://127.0.0.1:7000".into(),
                    "redis://127.0.0.1:7001".into()
                ],
                username: Some("admin".into()),
                password: Some("pw".into()),
            }
        );
    }

    #[test]
    fn errors_name_the_problem_and_hide_the_password() {
        for (url, want) in [
            ("redis://u:secret@h?ttl=soon", "ttl"),
            ("redis+cluster://u:secret@h", "host:port"),
            ("redis+cluster://h:1?x=1", "unknown parameter"),
            ("http://u:secret@h", "unknown scheme"),
            ("redis://h?batch_keys=0", "batch_keys"),
        ] {
            let e = parse(url, RedisConfig::default()).unwrap_err().to_string();
            assert!(e.contains(want), "{url}: {e}");
            assert!(!e.contains("secret"), "{url}: {e}");
        }
    }
}
