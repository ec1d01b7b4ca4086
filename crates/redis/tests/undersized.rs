//! A Redis too small for the tree: the warm that makes it evict says so and fails, with the
//! numbers; a roomy one succeeds quietly.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use template_cache_core::{CacheBackend, EngineConfig, SourceConfig, Warmer};
use template_cache_redis::RedisBackend;
use template_cache_test_servers::{RedisCluster, RedisServer};

/// `count` templates of about 2 KB each, all different (Redis does not compress).
fn tree(count: usize) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    for i in 0..count {
        let name = format!("pages/p{}/t{i:05}.html", i % 10);
        let line = format!("<p>template {i}: {}</p>\n", "lorem ipsum ".repeat(6));
        template_cache_testkit::fixtures::write(
            dir.path(),
            &name,
            &line.repeat(2048 / line.len() + 1),
        );
    }
    dir
}

fn config(dir: &std::path::Path) -> EngineConfig {
    let mut cfg = EngineConfig::new(SourceConfig::new(dir));
    cfg.namespace = template_cache_testkit::fresh_namespace();
    cfg
}

#[tokio::test]
async fn a_warm_that_makes_the_cache_evict_reports_it_with_the_numbers_and_fails() {
    let server =
        RedisServer::start_with(&["--maxmemory", "2mb", "--maxmemory-policy", "allkeys-lru"]);
    let backend: Arc<dyn CacheBackend> =
        Arc::new(RedisBackend::connect(&server.url()).await.unwrap());
    let stats = backend
        .server_stats()
        .await
        .unwrap()
        .expect("Redis keeps statistics");
    assert_eq!(stats.max_bytes, Some(2 << 20), "{stats:?}");
    assert_eq!(stats.policy.as_deref(), Some("allkeys-lru"));
    assert!(stats.used_bytes.is_some_and(|u| u > 0), "{stats:?}");

    // About 6 MB of templates into 2 MiB.
    let dir = tree(3000);
    let r = Warmer::new(Arc::clone(&backend), config(dir.path()))
        .unwrap()
        .run_once()
        .await
        .unwrap();
    assert!(r.written > 0, "{r:?}");
    assert!(
        r.evicted > 0,
        "the server evicted, the report must say so: {r:?}"
    );
    assert!(!r.is_success(), "{r:?}");
    let after = backend.server_stats().await.unwrap().unwrap();
    assert!(
        r.evicted <= after.evictions,
        "{} evicted during the run, {} since the server started",
        r.evicted,
        after.evictions
    );
    let message = r
        .eviction_warning
        .clone()
        .expect("a warning with the evictions");
    assert!(
        message.starts_with(&format!(
            "the cache evicted {} entries during this warm: about ",
            r.evicted
        )),
        "{message}"
    );
    assert!(message.contains(" 2.0 MiB available"), "{message}");
    assert!(message.contains("allkeys-lru"), "{message}");
    // Needed: at least what was written.
    let needed: f64 = message
        .split("about ")
        .nth(1)
        .and_then(|s| s.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no figure for the memory needed: {message}"));
    let written_mib = r.bytes_written as f64 / (1024.0 * 1024.0);
    assert!(
        needed >= written_mib - 0.1 && needed > 2.0,
        "{needed} MiB needed, {written_mib} MiB written: {message}"
    );
}

#[tokio::test]
async fn a_warm_into_a_roomy_cache_evicts_nothing_and_succeeds() {
    let server =
        RedisServer::start_with(&["--maxmemory", "64mb", "--maxmemory-policy", "allkeys-lru"]);
    let backend: Arc<dyn CacheBackend> =
        Arc::new(RedisBackend::connect(&server.url()).await.unwrap());
    let dir = tree(3000);
    let warmer = Warmer::new(Arc::clone(&backend), config(dir.path())).unwrap();
    let r = warmer.run_once().await.unwrap();
    assert_eq!(r.written, 3000, "{r:?}");
    assert_eq!(r.evicted, 0, "{r:?}");
    assert_eq!(r.eviction_warning, None);
    assert!(r.is_success(), "{r:?}");
    let again = warmer.run_once().await.unwrap();
    assert_eq!((again.written, again.evicted), (0, 0), "{again:?}");
    assert!(again.is_success());
    assert_eq!(backend.server_stats().await.unwrap().unwrap().evictions, 0);
}

#[tokio::test]
async fn a_server_without_a_memory_limit_has_no_maximum() {
    let server = RedisServer::start();
    let backend = RedisBackend::connect(&server.url()).await.unwrap();
    let stats = backend.server_stats().await.unwrap().unwrap();
    assert_eq!(stats.max_bytes, None, "maxmemory 0 is no limit: {stats:?}");
    assert_eq!(stats.evictions, 0);
}

#[tokio::test]
async fn cluster_statistics_are_summed_over_every_primary() {
    let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3))
        .await
        .unwrap();
    for node in cluster.nodes() {
        node.cli(&["CONFIG", "SET", "maxmemory", "10mb"]);
        node.cli(&["CONFIG", "SET", "maxmemory-policy", "allkeys-lfu"]);
    }
    let backend = RedisBackend::connect(&cluster.url()).await.unwrap();
    let stats = backend.server_stats().await.unwrap().unwrap();
    assert_eq!(stats.max_bytes, Some(3 * (10 << 20)), "{stats:?}");
    assert_eq!(stats.policy.as_deref(), Some("allkeys-lfu"));
    assert_eq!(stats.evictions, 0);
}
