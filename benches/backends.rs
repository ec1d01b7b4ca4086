//! Criterion benchmarks run the same code across all four backends: batch set and get of
//! realistic templates, and the engines (cold warm, no-change rescan, quick and deep check) at
//! 1,000 and 10,000 templates. Redis and Memcached run as real local servers started by the test
//! harness.
//!
//! `cargo bench -p template-cache-bench` (all), or filter: `cargo bench -p template-cache-bench -- redis`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use template_cache::{
    Bytes, Cache, CacheBackend, CheckMode, Checker, EngineConfig, Namespace, SourceConfig, Warmer,
};
use template_cache_test_servers::{MemcachedServer, RedisServer};
use tokio::runtime::Runtime;

/// The backends under test, with the servers they need kept alive.
struct Backends {
    list: Vec<(&'static str, Arc<dyn CacheBackend>)>,
    _redis: RedisServer,
    _memcached: MemcachedServer,
    _sled_dir: tempfile::TempDir,
}

fn backends(rt: &Runtime) -> Backends {
    let redis = RedisServer::start();
    let memcached = MemcachedServer::start_with(&["-m", "1024"]);
    let sled_dir = tempfile::tempdir().unwrap();
    let list: Vec<(&'static str, Arc<dyn CacheBackend>)> = rt.block_on(async {
        vec![
            (
                "moka",
                Arc::new(template_cache::moka::MokaBackend::new()) as Arc<dyn CacheBackend>,
            ),
            (
                "sled",
                Arc::new(
                    template_cache::sled::SledBackend::open(sled_dir.path().join("db")).unwrap(),
                ),
            ),
            (
                "redis",
                Arc::new(
                    template_cache::redis::RedisBackend::connect(&redis.url())
                        .await
                        .unwrap(),
                ),
            ),
            (
                "memcached",
                Arc::new(
                    template_cache::memcached::MemcachedBackend::connect(&format!(
                        "memcache://{}",
                        memcached.addr()
                    ))
                    .await
                    .unwrap(),
                ),
            ),
        ]
    });
    Backends {
        list,
        _redis: redis,
        _memcached: memcached,
        _sled_dir: sled_dir,
    }
}

fn fresh_namespace() -> Namespace {
    Namespace::new(format!("b{:016x}", fastrand::u64(..))).unwrap()
}

fn config(root: &Path, ns: Namespace) -> EngineConfig {
    let mut cfg = EngineConfig::new(SourceConfig::new(root));
    cfg.namespace = ns;
    cfg
}

fn batch_ops(c: &mut Criterion, rt: &Runtime, b: &Backends) {
    let mut rng = fastrand::Rng::with_seed(1);
    let values: Vec<Bytes> = (0..256)
        .map(|_| Bytes::from(vec![b'x'; template_cache_bench::sample_size(&mut rng)]))
        .collect();
    let bytes: u64 = values.iter().map(|v| v.len() as u64).sum();
    let mut group = c.benchmark_group("batch");
    group.throughput(Throughput::Bytes(bytes));
    for (name, backend) in &b.list {
        // Through the contract wrapper, as the engines call every backend.
        let backend = Cache::new(Arc::clone(backend));
        let ns = fresh_namespace();
        let entries: Vec<(String, Bytes)> = values
            .iter()
            .enumerate()
            .map(|(i, v)| (ns.key_for(&i.to_string()), v.clone()))
            .collect();
        let keys: Vec<String> = entries.iter().map(|(k, _)| k.clone()).collect();
        group.bench_function(BenchmarkId::new("set_many_256", name), |bench| {
            bench
                .to_async(rt)
                .iter(|| async { backend.set_many(black_box(&entries)).await.unwrap() })
        });
        group.bench_function(BenchmarkId::new("get_many_256", name), |bench| {
            bench
                .to_async(rt)
                .iter(|| async { black_box(backend.get_many(black_box(&keys)).await.unwrap()) })
        });
    }
    group.finish();
}

fn engines(c: &mut Criterion, rt: &Runtime) {
    for count in [1_000usize, 10_000] {
        // Fresh servers per size, and cold warms last, so that leftover namespaces never inflate
        // the key listing of a deep check.
        let b = backends(rt);
        let dir = tempfile::tempdir().unwrap();
        template_cache_bench::generate(dir.path(), count, 42).unwrap();
        // Let timestamps settle past the racy window so fingerprints are trusted.
        std::thread::sleep(Duration::from_millis(2100));
        let mut group = c.benchmark_group(format!("engine_{count}"));
        group.throughput(Throughput::Elements(count as u64));
        group.sample_size(10);
        for (name, backend) in &b.list {
            let ns = fresh_namespace();
            let warmer = Warmer::new(Arc::clone(backend), config(dir.path(), ns.clone())).unwrap();
            rt.block_on(warmer.run_once()).unwrap();
            group.bench_function(BenchmarkId::new("no_change_rescan", name), |bench| {
                bench
                    .to_async(rt)
                    .iter(|| async { assert_eq!(warmer.run_once().await.unwrap().written, 0) })
            });
            let checker = Checker::new(Arc::clone(backend), config(dir.path(), ns)).unwrap();
            for (label, mode) in [
                ("quick_check", CheckMode::Quick),
                ("deep_check", CheckMode::Deep),
            ] {
                group.bench_function(BenchmarkId::new(label, name), |bench| {
                    bench
                        .to_async(rt)
                        .iter(|| async { assert!(checker.check(mode).await.unwrap().consistent) })
                });
            }
            group.bench_function(BenchmarkId::new("cold_warm", name), |bench| {
                bench.to_async(rt).iter_batched(
                    || {
                        Warmer::new(Arc::clone(backend), config(dir.path(), fresh_namespace()))
                            .unwrap()
                    },
                    |w| async move { assert_eq!(w.run_once().await.unwrap().written, count) },
                    BatchSize::PerIteration,
                )
            });
        }
        group.finish();
    }
}

fn all(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    batch_ops(c, &rt, &backends(&rt));
    engines(c, &rt);
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = all
}
criterion_main!(benches);
