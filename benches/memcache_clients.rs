//! Why the Memcached backend uses the memcache crate's async meta-protocol client: 256 sets and
//! 256 gets of realistic templates through (a) the classic blocking client, eight pooled
//! connections driven by eight blocking tasks (how a backend would have to use it), and (b) the
//! async meta client's pipelined batch (`run_many`), against the same real memcached.
//!
//! `cargo bench -p template-cache-bench --bench memcache_clients`
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use memcache::exp::{AsyncMetaClient, Get, Set};
use template_cache_test_servers::MemcachedServer;

fn clients(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let server = MemcachedServer::start_with(&["-m", "256"]);
    let mut rng = fastrand::Rng::with_seed(3);
    let entries: Arc<Vec<(String, Vec<u8>)>> = Arc::new(
        (0..256)
            .map(|i| {
                (
                    format!("bench:{i}"),
                    vec![b'x'; template_cache_bench::sample_size(&mut rng)],
                )
            })
            .collect(),
    );
    let bytes: u64 = entries.iter().map(|(_, v)| v.len() as u64).sum();
    let classic = Arc::new(
        memcache::Client::builder()
            .add_server(format!("memcache://{}", server.addr()))
            .unwrap()
            .with_max_pool_size(8)
            .build()
            .unwrap(),
    );
    let meta = rt
        .block_on(AsyncMetaClient::connect(server.addr()))
        .unwrap();

    let mut group = c.benchmark_group("memcache_256");
    group.throughput(Throughput::Bytes(bytes));
    group.bench_function("classic_pool8_set", |b| {
        b.to_async(&rt).iter(|| {
            let (classic, entries) = (Arc::clone(&classic), Arc::clone(&entries));
            async move {
                let tasks: Vec<_> = (0..8)
                    .map(|t| {
                        let (classic, entries) = (Arc::clone(&classic), Arc::clone(&entries));
                        tokio::task::spawn_blocking(move || {
                            for (k, v) in entries.iter().skip(t).step_by(8) {
                                classic.set(k, v.as_slice(), 0).unwrap();
                            }
                        })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
            }
        })
    });
    group.bench_function("meta_pipelined_set", |b| {
        b.to_async(&rt).iter(|| async {
            for r in meta
                .run_many(entries.iter().map(|(k, v)| Set::new(k, v)))
                .await
                .unwrap()
            {
                r.unwrap();
            }
        })
    });
    group.bench_function("classic_multiget", |b| {
        b.to_async(&rt).iter(|| {
            let (classic, entries) = (Arc::clone(&classic), Arc::clone(&entries));
            async move {
                tokio::task::spawn_blocking(move || {
                    let keys: Vec<&str> = entries.iter().map(|(k, _)| k.as_str()).collect();
                    let got: std::collections::HashMap<String, Vec<u8>> =
                        classic.gets(&keys).unwrap();
                    assert_eq!(got.len(), 256);
                })
                .await
                .unwrap()
            }
        })
    });
    group.bench_function("meta_pipelined_get", |b| {
        b.to_async(&rt).iter(|| async {
            let got = meta
                .run_many(entries.iter().map(|(k, _)| Get::new(k)))
                .await
                .unwrap();
            assert_eq!(got.len(), 256);
        })
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = clients
}
criterion_main!(benches);
