//! The configuration both engines share.

use std::sync::Arc;

use crate::engine::lease::{LeaseConfig, SharedLease};
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
    /// A lease slot shared with other engines of this process: runs keep the lease held when
    /// they end, for a service that writes continuously (`None`: each run takes and releases
    /// its own).
    pub shared_lease: Option<SharedLease>,
    /// Append a summary of every warm, check and resolution to the namespace's run history
    /// ([`crate::history`]; default on). A failed append is logged, never an error of the run.
    pub record_history: bool,
}

/// Receives progress of an engine run: phases, and advances within the current phase.
///
/// The engines announce these phases, one at a time, in this order where they apply:
/// `"scanning"` (the tree walk; its total is unknown, see [`Self::phase_unknown_total`]),
/// `"hashing"` (files whose fingerprint changed), `"checking"` (a check confirming that entries
/// exist), `"verifying"` (a check fetching and verifying entries), `"listing"` (a check listing
/// the cache's keys; unknown total), `"deleting"` and `"writing"`. A phase may have no item at
/// all. A receiver may see another run's phases after [`Self::finish`] (a periodic warm, or a
/// check followed by its resolution).
pub trait Progress: Send + Sync {
    /// A phase of `total` items starts.
    fn phase(&self, name: &'static str, total: u64);
    /// A phase whose amount of work is not known in advance starts (the tree walk counts the
    /// files it finds). The default announces it as a phase of 0 items.
    fn phase_unknown_total(&self, name: &'static str) {
        self.phase(name, 0);
    }
    /// `n` more items of the current phase are done.
    fn advance(&self, n: u64);
    /// `bytes` more bytes were read, written or fetched in the current phase (reported along
    /// with [`Self::advance`] where a phase moves template content). The default ignores them.
    fn advance_bytes(&self, bytes: u64) {
        let _ = bytes;
    }
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
            shared_lease: None,
            record_history: true,
        }
    }
}
