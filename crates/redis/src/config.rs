//! Redis backend settings and URL parsing.

use std::time::Duration;

use template_cache_core::url::{UrlQuery, check_count, check_duration, invalid, redact};
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

/// The shortest and longest `connect_timeout` and `response_timeout`.
pub const TIMEOUT_RANGE: (Duration, Duration) =
    (Duration::from_millis(1), Duration::from_secs(3600));
/// The shortest and longest `ttl`.
pub const TTL_RANGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(365 * 86_400));
/// The fewest and most `reconnect_attempts`.
pub const RECONNECT_ATTEMPTS_RANGE: (usize, usize) = (1, 100);
/// The fewest and most `batch_keys`.
pub const BATCH_KEYS_RANGE: (usize, usize) = (1, 100_000);
/// The fewest and most `batch_bytes` (a Redis bulk string holds at most 512 MiB).
pub const BATCH_BYTES_RANGE: (usize, usize) = (1, 512 * 1024 * 1024);

impl RedisConfig {
    /// Checks every setting against its range (the constants of this module); the error names
    /// the setting. [`crate::RedisBackend::connect_with`] calls it, so no setting can make
    /// connecting hang for years or overflow.
    pub fn validate(&self) -> Result<()> {
        let ((t0, t1), (l0, l1)) = (TIMEOUT_RANGE, TTL_RANGE);
        check_duration("Redis connect_timeout", self.connect_timeout, t0, t1)?;
        check_duration("Redis response_timeout", self.response_timeout, t0, t1)?;
        if let Some(ttl) = self.ttl {
            check_duration("Redis ttl", ttl, l0, l1)?;
        }
        let counts = [
            (
                "Redis reconnect_attempts",
                self.reconnect_attempts,
                RECONNECT_ATTEMPTS_RANGE,
            ),
            ("Redis batch_keys", self.batch_max_keys, BATCH_KEYS_RANGE),
            ("Redis batch_bytes", self.batch_max_bytes, BATCH_BYTES_RANGE),
        ];
        for (name, value, (min, max)) in counts {
            check_count(name, value, min, max)?;
        }
        Ok(())
    }
}

/// Where to connect.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// One server: the URL for the `redis` crate (credentials percent-encoded), without our
    /// parameters.
    Single(String),
    /// A cluster: seed nodes as `redis://host:port` plus credentials.
    Cluster {
        nodes: Vec<String>,
        username: Option<String>,
        password: Option<String>,
    },
}

impl std::fmt::Debug for Target {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Target::Single(u) => f.debug_tuple("Single").field(&redact(u)).finish(),
            Target::Cluster {
                nodes, username, ..
            } => f
                .debug_struct("Cluster")
                .field("nodes", nodes)
                .field("username", username)
                .finish_non_exhaustive(),
        }
    }
}

/// Parses `redis://`, `rediss://` and `redis+cluster://` URLs, applying our query parameters to
/// `config`, and checks the resulting settings.
///
/// The credentials are read by the one URL reading every backend and redaction share
/// ([`BackendUrl`](template_cache_core::url::BackendUrl)): everything up to the last `@` is userinfo, so a password may contain `/`,
/// `?`, `#`, `@` or `:` unencoded; it is percent-decoded, then percent-encoded again for the
/// `redis` crate (which decodes it).
pub(crate) fn parse(url: &str, mut config: RedisConfig) -> Result<(Target, RedisConfig)> {
    let (parts, mut q) = UrlQuery::parse("Redis", url);
    let Some(scheme) = parts.scheme() else {
        return Err(invalid(
            "Redis",
            url,
            "expected redis://, rediss:// or redis+cluster://",
        ));
    };
    let ((t0, t1), (l0, l1)) = (TIMEOUT_RANGE, TTL_RANGE);
    if let Some(d) = q.duration_in("ttl", l0, l1)? {
        config.ttl = Some(d);
    }
    if let Some(d) = q.duration_in("connect_timeout", t0, t1)? {
        config.connect_timeout = d;
    }
    if let Some(d) = q.duration_in("response_timeout", t0, t1)? {
        config.response_timeout = d;
    }
    let (r0, r1) = RECONNECT_ATTEMPTS_RANGE;
    if let Some(n) = q.count_in("reconnect_attempts", r0, r1)? {
        config.reconnect_attempts = n;
    }
    let (k0, k1) = BATCH_KEYS_RANGE;
    if let Some(n) = q.count_in("batch_keys", k0, k1)? {
        config.batch_max_keys = n;
    }
    let (b0, b1) = BATCH_BYTES_RANGE;
    if let Some(n) = q.count_in("batch_bytes", b0, b1)? {
        config.batch_max_bytes = n;
    }
    if let Some(p) = q.path("tls_ca")? {
        config.tls_ca = Some(p);
    }
    match (q.path("tls_cert")?, q.path("tls_key")?) {
        (Some(c), Some(k)) => config.tls_client = Some((c, k)),
        (None, None) => {}
        _ => return Err(q.invalid("tls_cert and tls_key go together")),
    }
    config.validate()?;
    if scheme != "rediss" && (config.tls_ca.is_some() || config.tls_client.is_some()) {
        return Err(invalid(
            "Redis",
            url,
            "tls_ca, tls_cert and tls_key need rediss://",
        ));
    }
    let (username, password) = parts.credentials("Redis")?;
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
            if parts.location().is_empty() || parts.location().starts_with('/') {
                return Err(invalid("Redis", url, "no host"));
            }
            // Parameters we do not read are the `redis` crate's own (`protocol=resp3`, ...).
            let single = parts.rebuild(username.as_deref(), password.as_deref(), &q.rest());
            Ok((Target::Single(single), config))
        }
        "redis+cluster" => {
            q.finish()?;
            if parts.fragment().is_some() {
                return Err(invalid("Redis", url, "redis+cluster:// takes no #fragment"));
            }
            let hosts = parts.location().trim_end_matches('/');
            let mut nodes = Vec::new();
            for h in hosts.split(',') {
                let (host, port) = h
                    .rsplit_once(':')
                    .ok_or_else(|| invalid("Redis", url, format!("node {h:?} is not host:port")))?;
                if host.is_empty() || host.contains('/') || port.parse::<u16>().is_err() {
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
        let (t, _) = parse("rediss://h:1#insecure", RedisConfig::default()).unwrap();
        assert_eq!(t, Target::Single("rediss://h:1#insecure".into()));
    }

    #[test]
    fn passwords_may_contain_anything() {
        for (pw, encoded) in [
            ("p/ss", "p%2Fss"),
            ("p?ss", "p%3Fss"),
            ("p#ss", "p%23ss"),
            ("p@ss", "p%40ss"),
            ("p:ss", "p%3Ass"),
            ("p%2Fss", "p%2Fss"),
            ("pä", "p%C3%A4"),
        ] {
            let (t, c) = parse(
                &format!("redis://us:{pw}@h:1/0?ttl=1h"),
                RedisConfig::default(),
            )
            .unwrap();
            assert_eq!(t, Target::Single(format!("redis://us:{encoded}@h:1/0")));
            assert_eq!(c.ttl, Some(Duration::from_secs(3600)));
            let (t, _) = parse(
                &format!("redis+cluster://:{pw}@h:1,h:2"),
                RedisConfig::default(),
            )
            .unwrap();
            let Target::Cluster { password, .. } = t else {
                panic!("not a cluster")
            };
            let decoded = String::from_utf8(template_cache_core::url::percent_decode(pw)).unwrap();
            assert_eq!(password.as_deref(), Some(decoded.as_str()));
        }
    }

    #[test]
    fn tls_parameters() {
        let (t, c) = parse(
            "rediss://h:1?tls_ca=/ca%40x.pem&tls_cert=/c.pem&tls_key=/k.pem",
            RedisConfig::default(),
        )
        .unwrap();
        assert_eq!(t, Target::Single("rediss://h:1".into()));
        assert_eq!(c.tls_ca.as_deref(), Some(std::path::Path::new("/ca@x.pem")));
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
        let debug = format!("{t:?}");
        assert!(debug.contains("admin") && !debug.contains("pw"), "{debug}");
    }

    #[test]
    fn errors_name_the_problem_and_hide_the_password() {
        for (url, want) in [
            ("redis://u:secret@h?ttl=soon", "ttl"),
            ("redis+cluster://u:secret@h", "host:port"),
            ("redis+cluster://h:1?x=1", "unknown parameter"),
            ("http://u:secret@h", "unknown scheme"),
            ("redis://h?batch_keys=0", "batch_keys"),
            ("redis://u:se/cr@et@", "no host"),
            ("redis//u:se/cr@et@h", "expected redis://"),
        ] {
            let e = parse(url, RedisConfig::default()).unwrap_err().to_string();
            assert!(e.contains(want), "{url}: {e}");
            assert!(!e.contains("secret") && !e.contains("cr@et"), "{url}: {e}");
        }
    }

    #[test]
    fn every_setting_is_range_checked() {
        for (param, want) in [
            (
                "connect_timeout=100000000000s",
                "connect_timeout=\"100000000000s\" must be a duration from 1ms to 1h",
            ),
            ("connect_timeout=0s", "from 1ms to 1h"),
            ("response_timeout=2h", "response_timeout"),
            (
                "ttl=500ms",
                "ttl=\"500ms\" must be a duration from 1s to 365d",
            ),
            ("ttl=366d", "from 1s to 365d"),
            (
                "reconnect_attempts=18446744073709551615",
                "reconnect_attempts=\"18446744073709551615\" must be a whole number from 1 to 100",
            ),
            ("batch_keys=100001", "batch_keys"),
            ("batch_bytes=1g", "batch_bytes"),
            ("batch_bytes=536870913", "from 1 to 536870912"),
        ] {
            let e = parse(&format!("redis://h:1?{param}"), RedisConfig::default()).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::ConfigInvalid);
            assert!(e.to_string().contains(want), "{param}: {e}");
        }
        let huge = RedisConfig {
            connect_timeout: Duration::MAX,
            ..RedisConfig::default()
        };
        let e = parse("redis://h:1", huge).unwrap_err().to_string();
        assert!(
            e.contains("Redis connect_timeout") && e.contains("1ms to 1h"),
            "{e}"
        );
        let zero = RedisConfig {
            batch_max_keys: 0,
            ..RedisConfig::default()
        };
        assert!(parse("redis://h:1", zero).is_err());
        assert!(RedisConfig::default().validate().is_ok());
    }
}
