//! [`open`]: a backend from its URL, whichever backends this build enables.

use std::sync::Arc;

use crate::url::{BackendUrl, invalid, redact};
use crate::{CacheBackend, Error, ErrorKind, Result};

/// Opens the backend named by `url`, dispatching on its scheme:
///
/// | URL | Backend | Feature |
/// |-----|---------|---------|
/// | `sled://PATH` | a sled database in directory `PATH` | `sled` |
/// | `moka://` | an in-process cache (nothing may follow the scheme) | `moka` |
/// | `redis://`, `rediss://`, `redis+cluster://` | Redis or Redis Cluster | `redis` |
/// | `memcache://` | one or several Memcached servers | `memcached` |
///
/// A scheme whose backend this build does not enable is an [`ErrorKind::Unsupported`] error
/// naming the missing feature; a malformed URL or an unknown scheme is an
/// [`ErrorKind::ConfigInvalid`] error listing the known schemes. Errors never contain the
/// URL's password, whatever it contains: every backend reads the URL with
/// [`BackendUrl`](crate::url::BackendUrl), which takes everything up to the last `@` for
/// credentials, and redaction hides exactly those.
///
/// ```no_run
/// use template_cache::{Cache, EngineConfig, Namespace, SourceConfig, Warmer};
///
/// # async fn demo() -> template_cache::Result<()> {
/// let backend = template_cache::open("sled://.tcache").await?;
/// let config = EngineConfig::new(SourceConfig::new("templates"));
/// Warmer::new(backend.clone(), config)?.run_once().await?;
/// let cache = Cache::new(backend); // direct reads: the stored record of one template
/// let record = cache.get(&Namespace::default().key_for("emails/welcome.html")).await?;
/// # Ok(()) }
/// ```
pub async fn open(url: &str) -> Result<Arc<dyn CacheBackend>> {
    let parts = BackendUrl::parse(url);
    let (Some(scheme), Some((_, rest))) = (parts.scheme(), url.split_once("://")) else {
        return Err(invalid(
            "backend",
            url,
            "expected SCHEME://..., for example sled://.tcache, moka://, redis://host:6379",
        ));
    };
    match scheme {
        // A sled path is taken as written: an `@` in it is no credential.
        "sled" => open_sled(url, rest),
        "moka" => open_moka(url, rest),
        "redis" | "rediss" | "redis+cluster" => open_redis(url).await,
        "memcache" => open_memcached(url).await,
        other => Err(invalid(
            "backend",
            url,
            format!(
                "unknown scheme {other:?} (known: sled, moka, redis, rediss, redis+cluster, memcache)"
            ),
        )),
    }
}

#[cfg_attr(
    all(
        feature = "sled",
        feature = "moka",
        feature = "redis",
        feature = "memcached"
    ),
    allow(dead_code)
)]
fn not_compiled(url: &str, feature: &str) -> Error {
    Error::new(
        ErrorKind::Unsupported,
        format!(
            "backend URL {:?} needs the `{feature}` backend, which this build was compiled \
             without (enable the `{feature}` cargo feature)",
            redact(url)
        ),
    )
}

#[cfg(feature = "sled")]
fn open_sled(url: &str, path: &str) -> Result<Arc<dyn CacheBackend>> {
    if path.is_empty() {
        return Err(invalid(
            "backend",
            url,
            "sled:// needs a directory, for example sled://.tcache",
        ));
    }
    Ok(Arc::new(crate::sled::SledBackend::open(path)?))
}

#[cfg(not(feature = "sled"))]
fn open_sled(url: &str, _: &str) -> Result<Arc<dyn CacheBackend>> {
    Err(not_compiled(url, "sled"))
}

#[cfg(feature = "moka")]
fn open_moka(url: &str, rest: &str) -> Result<Arc<dyn CacheBackend>> {
    if !rest.is_empty() {
        return Err(invalid(
            "backend",
            url,
            "moka:// takes nothing after the scheme",
        ));
    }
    Ok(Arc::new(crate::moka::MokaBackend::new()))
}

#[cfg(not(feature = "moka"))]
fn open_moka(url: &str, _: &str) -> Result<Arc<dyn CacheBackend>> {
    Err(not_compiled(url, "moka"))
}

#[cfg(feature = "redis")]
async fn open_redis(url: &str) -> Result<Arc<dyn CacheBackend>> {
    Ok(Arc::new(crate::redis::RedisBackend::connect(url).await?))
}

#[cfg(not(feature = "redis"))]
async fn open_redis(url: &str) -> Result<Arc<dyn CacheBackend>> {
    Err(not_compiled(url, "redis"))
}

#[cfg(feature = "memcached")]
async fn open_memcached(url: &str) -> Result<Arc<dyn CacheBackend>> {
    Ok(Arc::new(
        crate::memcached::MemcachedBackend::connect(url).await?,
    ))
}

#[cfg(not(feature = "memcached"))]
async fn open_memcached(url: &str) -> Result<Arc<dyn CacheBackend>> {
    Err(not_compiled(url, "memcached"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn hostile_passwords_never_show() {
        for pw in ["p/ss", "p?ss", "p#ss", "p@ss", "p:ss", "%41%41", "pässwörd"] {
            for url in [
                format!("nonsense:{pw}@h"),
                format!("ftp://:{pw}@h"),
                format!("moka://:{pw}@h"),
                format!("memcache://:{pw}@127.0.0.1:1"),
                format!("redis://:{pw}@"),
                format!("redis+cluster://:{pw}@h"),
            ] {
                let err = open(&url).await.unwrap_err().to_report_string();
                assert!(!err.contains(pw), "{url}: {err}");
            }
        }
    }

    #[tokio::test]
    async fn bad_urls_are_clear_errors_without_secrets() {
        let err = open("nonsense").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConfigInvalid);
        assert!(err.to_string().contains("backend URL"), "{err}");
        let err = open("ftp://u:pw@h").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConfigInvalid);
        assert!(err.to_string().contains("unknown scheme"), "{err}");
        assert!(err.to_string().contains("redis+cluster"), "{err}");
        assert!(!err.to_string().contains("pw@"), "{err}");
        assert!(open("sled://").await.is_err());
        assert!(open("moka://extra").await.is_err());
    }

    #[cfg(not(feature = "redis"))]
    #[tokio::test]
    async fn a_backend_left_out_names_its_feature() {
        let err = open("redis://u:pw@h:6379").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::Unsupported);
        assert!(err.to_string().contains("`redis` cargo feature"), "{err}");
        assert!(!err.to_string().contains("pw@"), "{err}");
    }
}
