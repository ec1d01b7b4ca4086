//! The configuration both engines share.

use crate::key::Namespace;
use crate::scan::SourceConfig;
use crate::throttle::{RetryPolicy, Throttle};

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
    /// Warmer: check that entries the index calls current still exist (caches evict) and
    /// rewrite those that do not. Costs one batched existence check per template.
    pub verify_existing: bool,
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
        }
    }
}
