//! The conformance suite against a real standalone redis-server.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use template_cache_redis::RedisBackend;
use template_cache_test_servers::RedisServer;

template_cache_testkit::conformance_tests!(guarded {
    let server = RedisServer::start();
    let backend = RedisBackend::connect(&server.url()).await.expect("connect to redis-server");
    (server, backend)
});
