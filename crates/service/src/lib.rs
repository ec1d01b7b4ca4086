//! The template-cache service behind `tcache serve`: keeps one namespace warm and consistent
//! with one template tree, unattended.
//!
//! - [`watch`]: debounced change events from the tree, a root followed across deploys.
//! - [`windows`]: when scheduled checks may run (daily windows in a time zone, jitter).
//! - [`settings`]: every setting, validated.
//! - [`service`]: the loop: full runs, writes of changed files, orphan grace, scheduled checks,
//!   automatic resolution behind thresholds, the fleet role under the namespace write lease,
//!   backoff while the backend is unreachable.

pub mod service;
pub mod settings;
pub mod watch;
pub mod windows;

pub use service::{NoObserver, Observer, Role, Service};
pub use settings::{Mode, ResolveModes, ServeConfig, Thresholds};
pub use windows::CheckWindows;
