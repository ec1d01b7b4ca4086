//! The conformance suite against a real 3-primary Redis Cluster.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use template_cache_redis::RedisBackend;
use template_cache_test_servers::RedisCluster;

template_cache_testkit::conformance_tests!(guarded {
    let cluster = tokio::task::spawn_blocking(|| RedisCluster::start(3)).await.unwrap();
    let backend = RedisBackend::connect(&cluster.url()).await.expect("connect to the cluster");
    (cluster, backend)
});
