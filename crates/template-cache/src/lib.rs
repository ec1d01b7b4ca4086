//! # template-cache
//!
//! Keeps a cache of templates warm and consistent with the files they come from. This facade
//! re-exports the core (engines, storage trait, formats) and each backend behind a cargo feature
//! of its name: `moka` (in-process) and `sled` (embedded, persistent), both on by default, and
//! `redis` (Redis and Redis Cluster) and `memcached` (one or several Memcached servers).
//!
//! ```no_run
//! use std::sync::Arc;
//! use template_cache::{CheckMode, Checker, EngineConfig, SourceConfig, Warmer};
//! use template_cache::moka::MokaBackend;
//!
//! # async fn demo() -> template_cache::Result<()> {
//! let backend = Arc::new(MokaBackend::new());
//! let config = EngineConfig::new(SourceConfig::new("templates"));
//! let report = Warmer::new(backend.clone(), config.clone())?.run_once().await?;
//! println!("wrote {} templates", report.written);
//! let check = Checker::new(backend, config)?.check(CheckMode::Deep).await?;
//! assert!(check.consistent);
//! # Ok(()) }
//! ```
#![deny(missing_docs)]

pub use template_cache_core::*;

/// The in-process backend (feature `moka`).
#[cfg(feature = "moka")]
pub mod moka {
    pub use template_cache_moka::*;
}

/// The embedded, persistent backend (feature `sled`).
#[cfg(feature = "sled")]
pub mod sled {
    pub use template_cache_sled::*;
}

/// The Redis and Redis Cluster backend (feature `redis`).
#[cfg(feature = "redis")]
pub mod redis {
    pub use template_cache_redis::*;
}

/// The Memcached backend (feature `memcached`).
#[cfg(feature = "memcached")]
pub mod memcached {
    pub use template_cache_memcached::*;
}
