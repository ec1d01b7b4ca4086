//! The configuration both engines share.

use std::sync::Arc;

use crate::engine::lease::LeaseConfig;
use crate::engine::throttle::{RetryPolicy, Throttle};
use crate::format::key::Namespace;
use crate::source::scan::SourceConfig;

/// How the warmer and the checker run against one tree and one namespace.
#[derive(Clone, Debug)]
pub struct EngineConfig {
    /// Key namespace.
    pub namespace: Namespace,
    /// The template tree.
    pub source: SourceConfig,
    /// Load limits on the backend (warms and checks alike).
    pub throttle: Throttle,
    /// Retries of temporary backend errors.
    pub retry: RetryPolicy,
    /// Glob patterns, highest priority first: matching templates are written first.
    pub priority: Vec<String>,
    /// Warmer: on backends that may evict ([`crate::Capabilities::evicts`]), check that entries
    /// the index calls current still exist and rewrite those that do not. Costs one batched
    /// existence check per template.
    pub verify_existing: bool,
    /// Receives progress of long phases (a progress bar, for example).
    pub progress: Option<ProgressHandle>,
    /// The namespace write lease every writing run takes.
    pub lease: LeaseConfig,
}

/// Receives progress of an engine run: phases with a known amount of work, and advances.
pub trait Progress: Send + Sync {
    /// A phase (`"hashing"`, `"writing"`, `"verifying"`) of `total` items starts.
    fn phase(&self, name: &'static str, total: u64);
    /// `n` more items of the current phase are done.
    fn advance(&self, n: u64);
    /// The run is over.
    fn finish(&self);
}

/// A shared [`Progress`] receiver.
#[derive(Clone)]
pub struct ProgressHandle(pub Arc<dyn Progress>);

impl std::fmt::Debug for ProgressHandle {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ProgressHandle")
    }
}

impl EngineConfig {
    /// Defaults for the tree described by `source`.
    pub fn new(source: SourceConfig) -> Self {
        EngineConfig {
            namespace: Namespace::default(),
            source,
            throttle: Throttle::default(),
            retry: RetryPolicy::default(),
            priority: Vec::new(),
            verify_existing: true,
            progress: None,
            lease: LeaseConfig::default(),
        }
    }
}
