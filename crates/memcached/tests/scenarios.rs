//! Memcached-specific behaviour against real servers: eviction, item limits, outages, raw
//! corruption, a 100,000-template index.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use template_cache_core::{
    Cache, CacheBackend, CheckMode, Checker, ContentHash, EngineConfig, ErrorKind, IndexChanges,
    IndexEntry, Namespace, ResolvePolicy, SourceConfig, Warmer, index,
};
use template_cache_memcached::MemcachedBackend;
use template_cache_test_servers::MemcachedServer;

fn config(dir: &std::path::Path, ns: &str) -> EngineConfig {
    let mut cfg = EngineConfig::new(SourceConfig::new(dir));
    cfg.namespace = Namespace::new(ns).unwrap();
    cfg
}

#[tokio::test]
async fn evicted_entries_are_reported_missing_and_restored_by_a_warm() {
    // 2 MiB of memory and 1 MiB pages: writing far more than fits forces evictions.
    let server = MemcachedServer::start_with(&["-m", "2"]);
    let backend: Arc<dyn CacheBackend> = Arc::new(
        MemcachedBackend::connect(&format!("memcache://{}", server.addr()))
            .await
            .unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    for i in 0..40 {
        std::fs::write(
            dir.path().join(format!("t{i:02}.html")),
            format!("{i}").repeat(2000),
        )
        .unwrap();
    }
    let cfg = config(dir.path(), "evict");
    let warmer = Warmer::new(Arc::clone(&backend), cfg.clone()).unwrap();
    assert_eq!(warmer.run_once().await.unwrap().written, 40);
    // Flood the server with other data of the same sizes (eviction is per slab class) to push
    // ours out.
    let filler: Vec<(String, template_cache_core::Bytes)> = (0..2000)
        .map(|i| {
            (
                format!("filler:{i}"),
                vec![b'f'; if i % 2 == 0 { 2080 } else { 4080 }].into(),
            )
        })
        .collect();
    let cache = Cache::new(Arc::clone(&backend));
    for chunk in filler.chunks(50) {
        cache.set_many(chunk).await.unwrap();
    }
    let checker = Checker::new(Arc::clone(&backend), cfg).unwrap();
    let report = checker.check(CheckMode::Quick).await.unwrap();
    let evicted = report.missing.len();
    assert!(
        evicted > 0 || !report.errors.is_empty(),
        "nothing was evicted: {report:?}"
    );
    // The index may have been evicted too; either way the next warm restores every template.
    let r = warmer.run_once().await.unwrap();
    assert!(r.failed.is_empty(), "{r:?}");
    assert!(r.written >= evicted, "{r:?}");
    let again = checker.check(CheckMode::Deep).await.unwrap();
    assert!(
        again.missing.is_empty() && again.corrupt.is_empty(),
        "{again:?}"
    );
}

#[tokio::test]
async fn a_warm_that_makes_the_servers_evict_reports_it_and_fails() {
    // 2 MiB of memory on each of two servers, about 6 MB of templates.
    let a = MemcachedServer::start_with(&["-m", "2"]);
    let b = MemcachedServer::start_with(&["-m", "2"]);
    let backend: Arc<dyn CacheBackend> = Arc::new(
        MemcachedBackend::connect(&format!("memcache://{},{}", a.addr(), b.addr()))
            .await
            .unwrap(),
    );
    let stats = backend.server_stats().await.unwrap().unwrap();
    assert_eq!(stats.max_bytes, Some(2 * (2 << 20)), "summed: {stats:?}");
    assert_eq!(stats.evictions, 0);
    let dir = tempfile::tempdir().unwrap();
    for i in 0..3000 {
        std::fs::write(
            dir.path().join(format!("t{i:04}.html")),
            format!("<p>{i}</p>").repeat(200),
        )
        .unwrap();
    }
    let r = Warmer::new(Arc::clone(&backend), config(dir.path(), "undersized"))
        .unwrap()
        .run_once()
        .await
        .unwrap();
    assert!(
        r.evicted > 0,
        "the servers evicted, the report must say so: {r:?}"
    );
    assert!(!r.is_success(), "{r:?}");
    let message = r.eviction_warning.clone().unwrap();
    assert!(
        message.starts_with(&format!(
            "the cache evicted {} entries during this warm",
            r.evicted
        )),
        "{message}"
    );
    assert!(message.contains(" 4.0 MiB available"), "{message}");
    assert!(r.evicted <= backend.server_stats().await.unwrap().unwrap().evictions);
}

#[tokio::test]
async fn a_warm_into_roomy_servers_reports_no_evictions() {
    let server = MemcachedServer::start();
    let backend: Arc<dyn CacheBackend> = Arc::new(
        MemcachedBackend::connect(&format!("memcache://{}", server.addr()))
            .await
            .unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    template_cache_testkit::sample_tree(dir.path(), 200);
    let r = Warmer::new(backend, config(dir.path(), "roomy"))
        .unwrap()
        .run_once()
        .await
        .unwrap();
    assert_eq!((r.written, r.evicted), (200, 0), "{r:?}");
    assert!(r.eviction_warning.is_none() && r.is_success(), "{r:?}");
}

#[tokio::test]
async fn a_template_over_the_item_limit_fails_alone_naming_the_limit() {
    let server = MemcachedServer::start_with(&["-m", "64", "-I", "1m"]);
    let backend = MemcachedBackend::connect(&format!("memcache://{}", server.addr()))
        .await
        .unwrap();
    let limit = backend.capabilities().max_value_bytes.unwrap();
    assert!(limit > 1_000_000 && limit < 1 << 20, "{limit}");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("small.html"), "ok").unwrap();
    std::fs::write(dir.path().join("huge.html"), vec![b'x'; 1 << 20]).unwrap();
    let mut cfg = config(dir.path(), "big");
    cfg.source.max_template_bytes = 4 << 20;
    let r = Warmer::new(Arc::new(backend), cfg)
        .unwrap()
        .run_once()
        .await
        .unwrap();
    assert_eq!(r.written, 1);
    assert_eq!(r.failed.len(), 1);
    assert_eq!(r.failed[0].name, "huge.html");
    assert_eq!(r.failed[0].kind, ErrorKind::ValueTooLarge);
    assert!(
        r.failed[0].error.contains(&limit.to_string()),
        "{}",
        r.failed[0].error
    );
}

#[tokio::test]
async fn an_index_of_100k_templates_fits_the_item_limit() {
    let server = MemcachedServer::start_with(&["-m", "256"]);
    let backend = MemcachedBackend::connect(&format!("memcache://{}", server.addr()))
        .await
        .unwrap();
    let ns = Namespace::new("big-index").unwrap();
    let upserts: Vec<(String, IndexEntry)> = (0..100_000u64)
        .map(|i| {
            let name = format!("site{}/section{}/template-{i:06}.html", i % 7, i % 97);
            (
                name,
                IndexEntry {
                    hash: ContentHash::of(&i.to_be_bytes()),
                    size: i,
                    pending: false,
                },
            )
        })
        .collect();
    let cache = Cache::new(Arc::new(backend));
    index::update(
        &cache,
        &ns,
        &IndexChanges {
            upserts: upserts.clone(),
            removals: vec![],
        },
        None,
    )
    .await
    .unwrap();
    let snap = index::load(&cache, &ns).await.unwrap().unwrap();
    assert!(snap.lost.is_empty(), "{:?}", snap.lost);
    assert_eq!(snap.entries.len(), 100_000);
    assert_eq!(
        snap.entries.get(&upserts[12_345].0),
        Some(upserts[12_345].1)
    );
}

#[tokio::test]
async fn raw_corruption_is_found_by_deep_checks_and_repaired_across_two_servers() {
    let a = MemcachedServer::start();
    let b = MemcachedServer::start();
    let backend: Arc<dyn CacheBackend> = Arc::new(
        MemcachedBackend::connect(&format!("memcache://{},{}", a.addr(), b.addr()))
            .await
            .unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    template_cache_testkit::sample_tree(dir.path(), 60);
    let cfg = config(dir.path(), "raw");
    Warmer::new(Arc::clone(&backend), cfg.clone())
        .unwrap()
        .run_once()
        .await
        .unwrap();
    let key = cfg.namespace.key_for("emails/t002.html");
    // Write garbage with a raw protocol client on whichever server holds the key.
    let servers = [a.addr(), b.addr()];
    let holder = template_cache_memcached::rendezvous::pick(key.as_bytes(), &servers);
    let server = if holder == 0 { &a } else { &b };
    server.raw(
        format!("set {key} 0 0 7\r\ngarbage\r\n").as_bytes(),
        "STORED",
    );
    let checker = Checker::new(Arc::clone(&backend), cfg).unwrap();
    assert!(
        checker.check(CheckMode::Quick).await.unwrap().consistent,
        "quick checks trust the index"
    );
    let deep = checker.check(CheckMode::Deep).await.unwrap();
    assert_eq!(deep.corrupt, ["emails/t002.html"]);
    let fix = checker
        .resolve(&deep, &ResolvePolicy::default())
        .await
        .unwrap();
    assert_eq!(fix.repaired, 1);
    assert!(checker.check(CheckMode::Deep).await.unwrap().consistent);
}

#[tokio::test]
async fn one_of_two_servers_restarting_mid_warm_is_survived_and_the_next_run_converges() {
    let a = MemcachedServer::start();
    let mut b = MemcachedServer::start();
    let url = format!(
        "memcache://{},{}?io_timeout=1s&connect_timeout=300ms",
        a.addr(),
        b.addr()
    );
    let backend: Arc<dyn CacheBackend> = Arc::new(MemcachedBackend::connect(&url).await.unwrap());
    let (_b, report) = template_cache_testkit::scenario_outage_during_warm(backend, move || {
        std::thread::sleep(Duration::from_millis(600));
        b.stop();
        std::thread::sleep(Duration::from_millis(700));
        b.restart();
        b
    })
    .await;
    assert!(
        report.written > 1500,
        "the healthy server kept taking writes: {report:?}"
    );
}

#[tokio::test]
async fn ttl_expires_entries_but_not_the_index() {
    let server = MemcachedServer::start();
    let backend: Arc<dyn CacheBackend> = Arc::new(
        MemcachedBackend::connect(&format!("memcache://{}?ttl=1s", server.addr()))
            .await
            .unwrap(),
    );
    let dir = tempfile::tempdir().unwrap();
    template_cache_testkit::sample_tree(dir.path(), 5);
    let cfg = config(dir.path(), "ttl");
    let warmer = Warmer::new(Arc::clone(&backend), cfg.clone()).unwrap();
    warmer.run_once().await.unwrap();
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let check = Checker::new(Arc::clone(&backend), cfg)
        .unwrap()
        .check(CheckMode::Quick)
        .await
        .unwrap();
    assert_eq!(check.missing.len(), 5, "{check:?}");
    assert_eq!(check.entries, 5, "the index survived");
    assert_eq!(warmer.run_once().await.unwrap().written, 5);
}

#[tokio::test]
async fn unreachable_servers_are_a_clear_temporary_error() {
    let server = MemcachedServer::start();
    let url = format!("memcache://{}", server.addr());
    drop(server);
    let err = MemcachedBackend::connect(&url).await.unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unavailable, "{err}");
    assert!(err.is_temporary());
}
