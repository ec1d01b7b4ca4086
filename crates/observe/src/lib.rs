//! Observability for template-cache: what an operator sees of the warmer and the checker.
//!
//! - [`health`]: liveness and readiness shared by a running service and its HTTP endpoints.

pub mod health;
