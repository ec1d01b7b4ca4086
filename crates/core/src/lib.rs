#![doc = include_str!("../README.md")]
#![deny(missing_docs)]

// Arrows point one way: format ← backend ← index ← engine; source and config sit beside them.
pub mod backend;
pub mod collections;
pub mod config;
pub mod engine;
pub mod error;
pub mod format;
pub mod history;
pub mod host;
pub mod index;
pub mod reader;
pub mod source;
mod time;

pub use async_trait::async_trait;
pub use backend::url;
pub use backend::{Cache, CacheBackend, Capabilities, Expiry, Fence, IndexLayout, ServerStats};
pub use bytes::Bytes;
pub use config::EngineConfig;
pub use engine::check::Checker;
pub use engine::lease::{Lease, LeaseConfig, SharedLease};
pub use engine::report::{CheckMode, CheckReport, Failure, ResolveReport, WarmReport};
pub use engine::resolve::ResolvePolicy;
pub use engine::schedule::{
    Alert, AlertSink, AlertThreshold, CheckSchedule, TimeWindow, run_scheduled_checks,
};
pub use engine::throttle::{RetryPolicy, Throttle};
pub use engine::warm::Warmer;
pub use error::{Error, ErrorKind, Result};
pub use format::key::{self as key, ContentHash, DEFAULT_NAMESPACE, Namespace};
pub use format::record::{self as record, Record};
pub use history::{History, HistoryLimits, RunKind, RunRecord, Timestamp};
pub use index::{IndexChanges, IndexEntry, IndexSnapshot};
pub use reader::{Origin, Template, TemplateReader};
pub use source::scan::{self as scan, SourceConfig};
pub use tokio_util::sync::CancellationToken;
