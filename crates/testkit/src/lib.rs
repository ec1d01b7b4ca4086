#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
// A test kit: failing loudly with the reason is its job.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

// Lets `conformance_tests!` run inside this crate too (on the fault-injecting backend).
extern crate self as template_cache_testkit;

mod cases;
pub mod faults;
pub mod fixtures;
mod scenarios;

pub use cases::*;
pub use fixtures::{cleanup, fresh_namespace, sample_tree, test_config};
pub use scenarios::*;

#[doc(hidden)]
pub use tokio as __tokio;

#[doc(hidden)]
pub use template_cache_core as __core;

/// Expands to one `#[tokio::test]` per conformance function.
///
/// - `conformance_tests!(EXPR)`: each test evaluates `EXPR` (which may `.await`) to a value of a
///   type implementing `CacheBackend`.
/// - `conformance_tests!(guarded EXPR)`: `EXPR` evaluates to `(guard, backend)`; the guard (a
///   server process, a temporary directory) lives until the test ends.
#[macro_export]
macro_rules! conformance_tests {
    (guarded $make:expr) => {
        $crate::conformance_tests!(@tests (guard) $make;
            round_trip, missing_key, idempotent_delete, batch_matches_single, binary_values,
            large_values, enumeration, concurrent_writers, index_round_trip, contract_limits,
            atomic_swaps, lease_excludes_other_writers,
            scenario_warm_and_check, scenario_drift_and_resolve, scenario_threshold_refusal,
            scenario_eviction_and_read_through);
    };
    ($make:expr) => {
        $crate::conformance_tests!(guarded ((), $make));
    };
    (@tests (guard) $make:expr; $($name:ident),* $(,)?) => {
        $(
            #[$crate::__tokio::test(flavor = "multi_thread", worker_threads = 2, crate = "template_cache_testkit::__tokio")]
            async fn $name() {
                let (_guard, backend) = $make;
                let backend: ::std::sync::Arc<dyn $crate::__core::CacheBackend> = ::std::sync::Arc::new(backend);
                $crate::$name(backend).await;
            }
        )*
    };
}
