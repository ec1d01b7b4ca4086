//! Backend URLs: parsing, redaction, and opening the backend they name.

use std::sync::Arc;

use template_cache::{CacheBackend, Error, ErrorKind, Result};

/// The backend used when neither `--backend` nor `TCACHE_BACKEND` is given.
pub const DEFAULT_BACKEND: &str = "sled://.tcache";

pub use template_cache::url::redact;

fn invalid(url: &str, why: impl std::fmt::Display) -> Error {
    Error::new(
        ErrorKind::ConfigInvalid,
        format!("invalid backend URL {:?}: {why}", redact(url)),
    )
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
            "backend URL {:?} needs the `{feature}` backend, which this tcache was built without \
             (rebuild with `--features {feature}`)",
            redact(url)
        ),
    )
}

/// Opens the backend named by `url`.
pub async fn open(url: &str) -> Result<Arc<dyn CacheBackend>> {
    let Some((scheme, rest)) = url.split_once("://") else {
        return Err(invalid(
            url,
            "expected SCHEME://..., for example sled://.tcache, moka://, redis://host:6379",
        ));
    };
    match scheme {
        "sled" => open_sled(url, rest),
        "moka" => open_moka(url, rest),
        "redis" | "rediss" | "redis+cluster" => open_redis(url).await,
        "memcache" => open_memcached(url).await,
        other => Err(invalid(
            url,
            format!(
                "unknown scheme {other:?} (known: sled, moka, redis, rediss, redis+cluster, memcache)"
            ),
        )),
    }
}

#[cfg(feature = "sled")]
fn open_sled(url: &str, path: &str) -> Result<Arc<dyn CacheBackend>> {
    if path.is_empty() {
        return Err(invalid(
            url,
            "sled:// needs a directory, for example sled://.tcache",
        ));
    }
    Ok(Arc::new(template_cache::sled::SledBackend::open(path)?))
}

#[cfg(not(feature = "sled"))]
fn open_sled(url: &str, _: &str) -> Result<Arc<dyn CacheBackend>> {
    Err(not_compiled(url, "sled"))
}

#[cfg(feature = "moka")]
fn open_moka(url: &str, rest: &str) -> Result<Arc<dyn CacheBackend>> {
    if !rest.is_empty() {
        return Err(invalid(url, "moka:// takes nothing after the scheme"));
    }
    Ok(Arc::new(template_cache::moka::MokaBackend::new()))
}

#[cfg(not(feature = "moka"))]
fn open_moka(url: &str, _: &str) -> Result<Arc<dyn CacheBackend>> {
    Err(not_compiled(url, "moka"))
}

#[cfg(feature = "redis")]
async fn open_redis(url: &str) -> Result<Arc<dyn CacheBackend>> {
    Ok(Arc::new(
        template_cache::redis::RedisBackend::connect(url).await?,
    ))
}

#[cfg(not(feature = "redis"))]
async fn open_redis(url: &str) -> Result<Arc<dyn CacheBackend>> {
    Err(not_compiled(url, "redis"))
}

#[cfg(feature = "memcached")]
async fn open_memcached(url: &str) -> Result<Arc<dyn CacheBackend>> {
    Ok(Arc::new(
        template_cache::memcached::MemcachedBackend::connect(url).await?,
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
    async fn bad_urls_are_clear_errors_without_secrets() {
        let err = open("nonsense").await.unwrap_err();
        assert_eq!(err.kind(), ErrorKind::ConfigInvalid);
        let err = open("ftp://u:pw@h").await.unwrap_err();
        assert!(err.to_string().contains("unknown scheme"), "{err}");
        assert!(!err.to_string().contains("pw@"), "{err}");
        assert!(open("sled://").await.is_err());
    }
}
