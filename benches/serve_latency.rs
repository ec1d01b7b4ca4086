//! Change-to-cache latency of the service: from a file's write to its new content readable in
//! Redis, for single edits and for bursts of 1,000 files, with the default 100 ms debounce.
//!
//! The service runs in this process (the `template-cache-service` library, exactly what
//! `tcache serve` runs) against a real redis-server; a second connection polls the entry every
//! millisecond, as an application instance would read it.
//!
//! `cargo bench -p template-cache-bench --bench serve_latency`; the tree size and the number of
//! edits: `TCACHE_BENCH_FILES=100000 TCACHE_BENCH_EDITS=300 cargo bench ... --bench serve_latency`.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use template_cache::{
    Bytes, Cache, CancellationToken, EngineConfig, Namespace, Record, SharedLease, SourceConfig,
};
use template_cache_observe::health::Health;
use template_cache_service::{NoObserver, ServeConfig, Service};
use template_cache_test_servers::RedisServer;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` passes nothing: run only for bench.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    let files = env_usize("TCACHE_BENCH_FILES", 10_000);
    let edits = env_usize("TCACHE_BENCH_EDITS", 200);
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap();
    let redis = RedisServer::start();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path().join("t");
    template_cache_bench::generate(&root, files, 7).unwrap();
    let names = names_under(&root);
    rt.block_on(run(&redis.url(), &root, names, edits));
}

async fn run(url: &str, root: &Path, names: Vec<String>, edits: usize) {
    let backend = template_cache::open(url).await.unwrap();
    let reader = Cache::new(template_cache::open(url).await.unwrap());
    let ns = Namespace::new("bench").unwrap();
    let mut engine = EngineConfig::new(SourceConfig::new(root));
    engine.namespace = ns.clone();
    let mut config = ServeConfig::new(engine);
    config.check_every = None;
    config.deep_check_every = None;
    let health = Arc::new(Health::new());
    let service = Service::new(
        config.clone(),
        backend,
        SharedLease::new(),
        Arc::clone(&health),
        Arc::new(NoObserver),
    )
    .unwrap();
    let cancel = CancellationToken::new();
    let task = tokio::spawn(service.run(cancel.clone()));
    let started = Instant::now();
    while !health.is_ready() {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "tree: {} templates; first full warm ready after {:.2} s; debounce {:?}",
        names.len(),
        started.elapsed().as_secs_f64(),
        config.debounce
    );

    // Single edits, spaced so that each is debounced on its own.
    let mut rng = fastrand::Rng::with_seed(42);
    let mut single = Vec::with_capacity(edits);
    for i in 0..edits {
        let name = &names[rng.usize(..names.len())];
        let content = format!("single edit {i} of {name}\n");
        let t0 = Instant::now();
        std::fs::write(root.join(name), &content).unwrap();
        wait_for(&reader, &ns, &[(name.clone(), content)]).await;
        single.push(t0.elapsed());
        tokio::time::sleep(Duration::from_millis(150 + rng.u64(..100))).await;
    }
    report("single edit", &mut single);

    // Bursts: 1,000 existing files rewritten at once (a `git checkout`), and 1,000 new files
    // in a new directory (a tar extract: one directory event, then a rescan).
    for (label, fresh) in [
        ("burst of 1,000 edits", false),
        ("burst of 1,000 new files", true),
    ] {
        let mut bursts = Vec::new();
        let mut after_last = Vec::new();
        for round in 0..5 {
            let batch: Vec<(String, String)> = (0..1000)
                .map(|k| {
                    let name = if fresh {
                        format!("new{round}/f{k:04}.html")
                    } else {
                        names[(round * 1000 + k * 7) % names.len()].clone()
                    };
                    let content = format!("burst {round} file {k}\n");
                    (name, content)
                })
                .collect();
            let t0 = Instant::now();
            for (name, content) in &batch {
                let path = root.join(name);
                if let Some(parent) = path.parent() {
                    std::fs::create_dir_all(parent).unwrap();
                }
                std::fs::write(path, content).unwrap();
            }
            let written = t0.elapsed();
            wait_for(&reader, &ns, &batch).await;
            bursts.push(t0.elapsed());
            after_last.push(t0.elapsed() - written);
            println!(
                "  {label}, round {round}: files written in {:.0} ms, all readable after {:.0} ms",
                written.as_secs_f64() * 1e3,
                t0.elapsed().as_secs_f64() * 1e3
            );
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
        report(&format!("{label}, from the first write"), &mut bursts);
        report(&format!("{label}, from the last write"), &mut after_last);
    }
    cancel.cancel();
    task.await.unwrap().unwrap();
}

/// Polls until every `(name, content)` is readable with that content.
async fn wait_for(reader: &Cache, ns: &Namespace, want: &[(String, String)]) {
    let keys: Vec<String> = want.iter().map(|(n, _)| ns.key_for(n)).collect();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let got = reader.get_many(&keys).await.unwrap();
        let done = got.iter().zip(want).all(|(v, (_, content))| {
            v.as_ref()
                .and_then(|b| Record::decode(&Bytes::clone(b)).ok())
                .is_some_and(|r| r.content == content.as_bytes())
        });
        if done {
            return;
        }
        assert!(Instant::now() < deadline, "not readable within 60 s");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

fn report(label: &str, samples: &mut [Duration]) {
    samples.sort();
    let at = |q: f64| samples[((samples.len() as f64 - 1.0) * q).round() as usize];
    println!(
        "{label}: n={} p50={:.0} ms p99={:.0} ms max={:.0} ms",
        samples.len(),
        at(0.5).as_secs_f64() * 1e3,
        at(0.99).as_secs_f64() * 1e3,
        at(1.0).as_secs_f64() * 1e3
    );
}

fn names_under(root: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack: Vec<PathBuf> = vec![root.to_owned()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(root).unwrap().to_string_lossy().into_owned();
                out.push(rel);
            }
        }
    }
    out.sort();
    out
}
