//! The conformance suite against two real memcached servers (keys sharded by rendezvous).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use template_cache_memcached::MemcachedBackend;
use template_cache_test_servers::MemcachedServer;

template_cache_testkit::conformance_tests!(guarded {
    let servers = (MemcachedServer::start(), MemcachedServer::start());
    let url = format!("memcache://{},{}", servers.0.addr(), servers.1.addr());
    let backend = MemcachedBackend::connect(&url).await.expect("connect");
    (servers, backend)
});
