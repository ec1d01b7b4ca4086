//! Observability for template-cache: what an operator sees of the warmer and the checker.
//!
//! - [`health`]: liveness and readiness shared by a running service and its HTTP endpoints.
//! - [`metrics`]: the Prometheus registry (installed once per process), the name and meaning of
//!   every metric, node_exporter textfile output.
//! - [`http`]: `/metrics`, `/healthz` and `/readyz` of a running process.
//! - [`alerts`]: deduplicated alerts to a webhook, a command and the log.

pub mod alerts;
pub mod health;
pub mod http;
pub mod metrics;

pub use alerts::{AlertBody, AlertConfig, AlertContext, Alerter, Condition, Status};
pub use health::Health;
pub use http::MetricsServer;
