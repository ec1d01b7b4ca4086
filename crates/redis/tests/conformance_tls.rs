//! The conformance suite against a real redis-server that accepts only TLS (`rediss://`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use template_cache_redis::RedisBackend;
use template_cache_test_servers::RedisServer;

template_cache_testkit::conformance_tests!(guarded {
    let server = tokio::task::spawn_blocking(RedisServer::start_tls).await.unwrap();
    let backend = RedisBackend::connect(&server.url()).await.expect("connect over TLS");
    (server, backend)
});
