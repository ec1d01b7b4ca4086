#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

mod open;

pub use open::open;
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

/// Rendering minijinja templates from the cache, picking up re-warmed versions (feature
/// `minijinja`).
#[cfg(feature = "minijinja")]
pub mod minijinja {
    pub use template_cache_minijinja::*;
}
