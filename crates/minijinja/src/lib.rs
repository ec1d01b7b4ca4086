#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

mod collect;
mod environment;
mod loader;

pub use environment::CachedEnvironment;
pub use loader::{
    CacheLoader, LoadReport, LoadedTemplate, LoaderConfig, MAX_REFRESH_INTERVAL,
    MIN_REFRESH_INTERVAL, RefreshReport, Refresher,
};
/// The minijinja version this crate is built against, re-exported so that applications use the
/// same one.
pub use minijinja;
