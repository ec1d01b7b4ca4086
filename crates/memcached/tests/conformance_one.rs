//! The conformance suite against one real memcached.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use template_cache_memcached::MemcachedBackend;
use template_cache_test_servers::MemcachedServer;

template_cache_testkit::conformance_tests!(guarded {
    let server = MemcachedServer::start();
    let backend = MemcachedBackend::connect(&format!("memcache://{}", server.addr())).await.expect("connect");
    (server, backend)
});
