#![doc = include_str!("../README.md")]
#![deny(missing_docs)]
// A test kit: failing loudly with the reason is its job.
#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use template_cache_core::{
    Bytes, CacheBackend, CheckMode, Checker, ContentHash, EngineConfig, ErrorKind, IndexChanges,
    IndexEntry, Namespace, Origin, ResolvePolicy, RetryPolicy, SourceConfig, TemplateReader,
    Warmer,
};

#[doc(hidden)]
pub use tokio as __tokio;

/// A fresh namespace that no other test uses.
pub fn fresh_namespace() -> Namespace {
    match Namespace::new(format!("tk{:016x}", fastrand::u64(..))) {
        Ok(ns) => ns,
        Err(e) => panic!("generated namespace is invalid: {e}"),
    }
}

fn key(ns: &Namespace, s: &str) -> String {
    ns.key_for(s)
}

/// Set, get, overwrite.
pub async fn round_trip(b: Arc<dyn CacheBackend>) {
    let ns = fresh_namespace();
    let k = key(&ns, "a");
    b.set(&k, Bytes::from_static(b"one")).await.expect("set");
    assert_eq!(b.get(&k).await.expect("get").as_deref(), Some(&b"one"[..]));
    b.set(&k, Bytes::from_static(b"two"))
        .await
        .expect("overwrite");
    assert_eq!(b.get(&k).await.expect("get").as_deref(), Some(&b"two"[..]));
    b.delete(&k).await.expect("cleanup");
}

/// A missing key is `None`, not an error; existence agrees.
pub async fn missing_key(b: Arc<dyn CacheBackend>) {
    let ns = fresh_namespace();
    let k = key(&ns, "never-written");
    assert_eq!(b.get(&k).await.expect("get of a missing key"), None);
    assert_eq!(
        b.get_many(std::slice::from_ref(&k))
            .await
            .expect("get_many"),
        vec![None]
    );
    assert_eq!(b.exists_many(&[k]).await.expect("exists_many"), vec![false]);
}

/// Deleting twice, or deleting a key that never existed, succeeds.
pub async fn idempotent_delete(b: Arc<dyn CacheBackend>) {
    let ns = fresh_namespace();
    let k = key(&ns, "d");
    b.set(&k, Bytes::from_static(b"x")).await.expect("set");
    b.delete(&k).await.expect("first delete");
    b.delete(&k).await.expect("second delete");
    b.delete_many(&[k.clone(), key(&ns, "never")])
        .await
        .expect("delete_many of missing keys");
    assert_eq!(b.get(&k).await.expect("get"), None);
}

/// Batch calls return exactly what the single-key calls do, in input order.
pub async fn batch_matches_single(b: Arc<dyn CacheBackend>) {
    let ns = fresh_namespace();
    let entries: Vec<(String, Bytes)> = (0..300)
        .map(|i| {
            (
                key(&ns, &format!("t{i}")),
                Bytes::from(format!("value {i}").repeat(i % 7 + 1)),
            )
        })
        .collect();
    b.set_many(&entries).await.expect("set_many");
    let mut keys: Vec<String> = entries.iter().map(|(k, _)| k.clone()).collect();
    keys.insert(150, key(&ns, "absent"));
    let many = b.get_many(&keys).await.expect("get_many");
    assert_eq!(many.len(), keys.len());
    for (k, v) in keys.iter().zip(&many) {
        assert_eq!(&b.get(k).await.expect("get"), v, "key {k}");
    }
    assert_eq!(many[150], None);
    let exists = b.exists_many(&keys).await.expect("exists_many");
    assert_eq!(exists, many.iter().map(Option::is_some).collect::<Vec<_>>());
    b.delete_many(&keys[..100]).await.expect("delete_many");
    let after = b.get_many(&keys).await.expect("get_many after delete");
    assert!(after[..100].iter().all(Option::is_none));
    assert_eq!(&after[100..], &many[100..]);
    b.delete_many(&keys).await.expect("cleanup");
}

/// Values hold any bytes, including none at all.
pub async fn binary_values(b: Arc<dyn CacheBackend>) {
    let ns = fresh_namespace();
    let all: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    for (i, v) in [
        Bytes::new(),
        Bytes::from(all),
        Bytes::from_static(b"\0\r\n\xff"),
    ]
    .into_iter()
    .enumerate()
    {
        let k = key(&ns, &i.to_string());
        b.set(&k, v.clone()).await.expect("set binary");
        assert_eq!(b.get(&k).await.expect("get binary"), Some(v));
        b.delete(&k).await.expect("cleanup");
    }
}

/// Values up to the capability limit (or 4 MiB) round-trip; one byte more is a clear
/// `ValueTooLarge` error that leaves the stored value unchanged.
pub async fn large_values(b: Arc<dyn CacheBackend>) {
    let ns = fresh_namespace();
    let k = key(&ns, "large");
    let max = b.capabilities().max_value_bytes;
    let size = max.unwrap_or(4 << 20).min(4 << 20);
    let big = Bytes::from(vec![b'x'; size]);
    b.set(&k, big.clone())
        .await
        .expect("a value at the size limit");
    assert_eq!(
        b.get(&k).await.expect("get large").map(|v| v.len()),
        Some(size)
    );
    if let Some(max) = max.filter(|&m| m < (64 << 20)) {
        let err = b
            .set(&k, Bytes::from(vec![b'y'; max + 1]))
            .await
            .expect_err("a value over the limit");
        assert_eq!(err.kind(), ErrorKind::ValueTooLarge, "{err}");
        assert!(
            err.to_string().contains(&max.to_string()),
            "the error names the limit: {err}"
        );
        let err = b
            .set_many(&[(k.clone(), Bytes::from(vec![b'y'; max + 1]))])
            .await
            .expect_err("batch over the limit");
        assert_eq!(err.kind(), ErrorKind::ValueTooLarge, "{err}");
        assert_eq!(
            b.get(&k).await.expect("get").map(|v| v.len()),
            Some(size),
            "old value kept"
        );
    }
    b.delete(&k).await.expect("cleanup");
}

/// Listing by prefix returns exactly the keys under it, or `Unsupported` without the capability.
pub async fn enumeration(b: Arc<dyn CacheBackend>) {
    let ns = fresh_namespace();
    let other = fresh_namespace();
    let keys: Vec<String> = (0..50).map(|i| key(&ns, &i.to_string())).collect();
    let entries: Vec<(String, Bytes)> = keys
        .iter()
        .map(|k| (k.clone(), Bytes::from_static(b"v")))
        .collect();
    b.set_many(&entries).await.expect("set_many");
    b.set(&key(&other, "x"), Bytes::from_static(b"v"))
        .await
        .expect("set other");
    let r = b.list_keys(&ns.prefix()).await;
    if b.capabilities().list_keys {
        let mut listed = r.expect("list_keys");
        listed.sort();
        let mut want = keys.clone();
        want.sort();
        assert_eq!(listed, want);
    } else {
        assert_eq!(
            r.expect_err("list_keys without the capability").kind(),
            ErrorKind::Unsupported
        );
    }
    b.delete_many(&keys).await.expect("cleanup");
    b.delete(&key(&other, "x")).await.expect("cleanup");
}

/// Concurrent writers of distinct keys all land; concurrent writers of one key leave one of
/// their values, whole.
pub async fn concurrent_writers(b: Arc<dyn CacheBackend>) {
    let ns = fresh_namespace();
    let shared = key(&ns, "shared");
    let mut tasks = Vec::new();
    for w in 0..8 {
        let (b, ns, shared) = (Arc::clone(&b), ns.clone(), shared.clone());
        tasks.push(tokio::spawn(async move {
            for i in 0..25 {
                b.set(
                    &key(&ns, &format!("{w}-{i}")),
                    Bytes::from(format!("{w}-{i}")),
                )
                .await
                .expect("set");
                b.set(&shared, Bytes::from(vec![b'a' + w as u8; 1000]))
                    .await
                    .expect("set shared");
            }
        }));
    }
    for t in tasks {
        t.await.expect("writer task");
    }
    for w in 0..8 {
        let keys: Vec<String> = (0..25).map(|i| key(&ns, &format!("{w}-{i}"))).collect();
        let vals = b.get_many(&keys).await.expect("get_many");
        for (i, v) in vals.into_iter().enumerate() {
            assert_eq!(v.as_deref(), Some(format!("{w}-{i}").as_bytes()));
        }
        b.delete_many(&keys).await.expect("cleanup");
    }
    let v = b
        .get(&shared)
        .await
        .expect("get shared")
        .expect("shared key present");
    assert_eq!(v.len(), 1000);
    assert!(v.iter().all(|&c| c == v[0]), "a value is never torn");
    b.delete(&shared).await.expect("cleanup");
}

/// The index stores, updates, removes and reshards entries (20,000 names force several
/// shards on every backend).
pub async fn index_round_trip(b: Arc<dyn CacheBackend>) {
    let ns = fresh_namespace();
    assert!(b.load_index(&ns).await.expect("load empty").is_none());
    let entry = |i: u64| IndexEntry {
        hash: ContentHash::of(&i.to_be_bytes()),
        size: i,
        pending: i % 2 == 0,
    };
    let upserts: Vec<(String, IndexEntry)> = (0..20_000u64)
        .map(|i| (format!("dir{}/template-{i}.html", i % 50), entry(i)))
        .collect();
    b.update_index(
        &ns,
        &IndexChanges {
            upserts: upserts[..10].to_vec(),
            removals: vec![],
        },
    )
    .await
    .expect("create");
    b.update_index(
        &ns,
        &IndexChanges {
            upserts: upserts[10..].to_vec(),
            removals: vec![],
        },
    )
    .await
    .expect("grow");
    let snap = b
        .load_index(&ns)
        .await
        .expect("load")
        .expect("index exists");
    assert!(snap.lost.is_empty(), "{:?}", snap.lost);
    assert_eq!(snap.entries.len(), upserts.len());
    assert_eq!(snap.entries.get("dir7/template-7.html"), Some(&entry(7)));
    let removals: Vec<String> = upserts[..5000].iter().map(|(n, _)| n.clone()).collect();
    let changed = (
        upserts[6000].0.clone(),
        IndexEntry {
            pending: false,
            ..entry(1)
        },
    );
    b.update_index(
        &ns,
        &IndexChanges {
            upserts: vec![changed.clone()],
            removals,
        },
    )
    .await
    .expect("update");
    let snap = b
        .load_index(&ns)
        .await
        .expect("load")
        .expect("index exists");
    assert_eq!(snap.entries.len(), 15_000);
    assert_eq!(snap.entries.get(&changed.0), Some(&changed.1));
    assert!(!snap.entries.contains_key(&upserts[0].0));
    if b.capabilities().list_keys {
        let keys = b.list_keys(&ns.prefix()).await.expect("list");
        b.delete_many(&keys).await.expect("cleanup");
    }
}

// ---- engine scenarios -------------------------------------------------------------------

fn write(root: &Path, name: &str, content: &str) {
    let p = root.join(name);
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir).expect("create dir");
    }
    std::fs::write(p, content).expect("write template");
}

/// A small template tree: `count` templates under a few directories.
pub fn sample_tree(root: &Path, count: usize) {
    for i in 0..count {
        let dir = ["pages", "partials", "emails", "admin"][i % 4];
        write(
            root,
            &format!("{dir}/t{i:03}.html"),
            &format!(
                "<h1>{{{{ title }}}}</h1>\n<p>template {i}</p>\n{}",
                "x".repeat(i * 13 % 500)
            ),
        );
    }
}

/// Engine settings for tests: small batches (to exercise batching), fast retries.
pub fn test_config(root: &Path, ns: &Namespace) -> EngineConfig {
    let mut cfg = EngineConfig::new(SourceConfig::new(root));
    cfg.namespace = ns.clone();
    cfg.throttle.batch_max_templates = 7;
    cfg.retry = RetryPolicy {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
    };
    cfg
}

/// Warm, warm again (nothing written), check quick and deep: consistent.
pub async fn scenario_warm_and_check(b: Arc<dyn CacheBackend>) {
    let dir = tempfile::tempdir().expect("tempdir");
    sample_tree(dir.path(), 40);
    let ns = fresh_namespace();
    let cfg = test_config(dir.path(), &ns);
    let warmer = Warmer::new(Arc::clone(&b), cfg.clone()).expect("warmer");
    let r = warmer.run_once().await.expect("warm");
    assert_eq!((r.scanned, r.written, r.unchanged), (40, 40, 0), "{r:?}");
    assert!(r.failed.is_empty(), "{:?}", r.failed);
    assert!(r.bytes_written > 0);
    let r = warmer.run_once().await.expect("second warm");
    assert_eq!((r.written, r.unchanged), (0, 40), "{r:?}");
    let checker = Checker::new(Arc::clone(&b), cfg).expect("checker");
    for mode in [CheckMode::Quick, CheckMode::Deep] {
        let c = checker.check(mode).await.expect("check");
        assert!(c.consistent, "{mode:?}: {c:?}");
        assert_eq!((c.files, c.entries), (40, 40));
    }
    let reader = TemplateReader::new(Arc::clone(&b), ns.clone());
    let t = reader
        .get("emails/t002.html")
        .await
        .expect("read")
        .expect("present");
    assert_eq!(t.origin, Origin::Cache);
    assert!(
        std::str::from_utf8(&t.content)
            .expect("utf8")
            .contains("template 2")
    );
    cleanup(&b, &ns).await;
}

/// Every inconsistency kind is found, and resolution fixes each.
pub async fn scenario_drift_and_resolve(b: Arc<dyn CacheBackend>) {
    let dir = tempfile::tempdir().expect("tempdir");
    sample_tree(dir.path(), 40);
    let ns = fresh_namespace();
    let cfg = test_config(dir.path(), &ns);
    Warmer::new(Arc::clone(&b), cfg.clone())
        .expect("warmer")
        .run_once()
        .await
        .expect("warm");
    // Drift: change one, delete one, add one, corrupt one, evict one.
    write(dir.path(), "pages/t000.html", "changed content");
    std::fs::remove_file(dir.path().join("partials/t001.html")).expect("rm");
    write(dir.path(), "pages/new.html", "brand new");
    b.set(
        &ns.key_for("emails/t002.html"),
        Bytes::from_static(b"garbage"),
    )
    .await
    .expect("corrupt");
    b.delete(&ns.key_for("admin/t003.html"))
        .await
        .expect("evict");

    let checker = Checker::new(Arc::clone(&b), cfg).expect("checker");
    let quick = checker.check(CheckMode::Quick).await.expect("quick check");
    assert!(!quick.consistent);
    assert_eq!(quick.outdated, ["pages/t000.html"]);
    assert_eq!(quick.orphaned, ["partials/t001.html"]);
    assert!(
        quick.missing.contains(&"pages/new.html".to_owned())
            && quick.missing.contains(&"admin/t003.html".to_owned()),
        "{quick:?}"
    );
    assert!(
        quick.corrupt.is_empty(),
        "quick mode trusts the index for content: {quick:?}"
    );
    let deep = checker.check(CheckMode::Deep).await.expect("deep check");
    assert_eq!(deep.missing, ["admin/t003.html", "pages/new.html"]);
    assert_eq!(deep.outdated, ["pages/t000.html"]);
    assert_eq!(deep.orphaned, ["partials/t001.html"]);
    assert_eq!(deep.corrupt, ["emails/t002.html"]);

    // A dry run changes nothing.
    let dry = checker
        .resolve(
            &deep,
            &ResolvePolicy {
                dry_run: true,
                ..Default::default()
            },
        )
        .await
        .expect("dry run");
    assert_eq!(
        (dry.added, dry.updated, dry.repaired, dry.deleted),
        (2, 1, 1, 1)
    );
    assert_eq!(
        checker
            .check(CheckMode::Deep)
            .await
            .expect("check")
            .inconsistencies(),
        5
    );

    // Each switch is honoured: keep orphans first.
    let keep = ResolvePolicy {
        delete_orphans: false,
        ..Default::default()
    };
    let r = checker
        .resolve(&deep, &keep)
        .await
        .expect("resolve without deletes");
    assert_eq!((r.added, r.updated, r.repaired, r.deleted), (2, 1, 1, 0));
    let after = checker.check(CheckMode::Deep).await.expect("check");
    assert_eq!(after.orphaned, ["partials/t001.html"]);
    assert_eq!(after.inconsistencies(), 1, "{after:?}");
    let r = checker
        .resolve(&after, &ResolvePolicy::default())
        .await
        .expect("resolve");
    assert_eq!(r.deleted, 1);
    assert!(r.failed.is_empty(), "{:?}", r.failed);
    for mode in [CheckMode::Quick, CheckMode::Deep] {
        let c = checker.check(mode).await.expect("final check");
        assert!(c.consistent, "{mode:?} {c:?}");
        assert_eq!(c.entries, 40);
    }
    let t = TemplateReader::new(Arc::clone(&b), ns.clone())
        .get("pages/t000.html")
        .await
        .expect("read")
        .expect("present");
    assert_eq!(&t.content[..], b"changed content");
    cleanup(&b, &ns).await;
}

/// Deleting more than the thresholds allow, or anything from an empty tree, is refused and
/// changes nothing.
pub async fn scenario_threshold_refusal(b: Arc<dyn CacheBackend>) {
    let dir = tempfile::tempdir().expect("tempdir");
    sample_tree(dir.path(), 20);
    let ns = fresh_namespace();
    let cfg = test_config(dir.path(), &ns);
    Warmer::new(Arc::clone(&b), cfg.clone())
        .expect("warmer")
        .run_once()
        .await
        .expect("warm");
    for i in 0..6 {
        let dir_name = ["pages", "partials", "emails", "admin"][i % 4];
        std::fs::remove_file(dir.path().join(format!("{dir_name}/t{i:03}.html"))).expect("rm");
    }
    let checker = Checker::new(Arc::clone(&b), cfg.clone()).expect("checker");
    let report = checker.check(CheckMode::Quick).await.expect("check");
    assert_eq!(report.orphaned.len(), 6);
    let err = checker
        .resolve(&report, &ResolvePolicy::default())
        .await
        .expect_err("30% > 25%");
    assert_eq!(err.kind(), ErrorKind::Refused);
    assert!(err.to_string().contains("max_delete_ratio"), "{err}");
    let err = checker
        .resolve(
            &report,
            &ResolvePolicy {
                max_delete: Some(5),
                max_delete_ratio: None,
                ..Default::default()
            },
        )
        .await
        .expect_err("6 > 5");
    assert!(err.to_string().contains("max_delete"), "{err}");
    let err = checker
        .resolve(
            &report,
            &ResolvePolicy {
                max_change: Some(0),
                ..Default::default()
            },
        )
        .await;
    assert!(err.is_err() || report.missing.is_empty());
    assert_eq!(
        checker
            .check(CheckMode::Deep)
            .await
            .expect("check")
            .orphaned
            .len(),
        6,
        "nothing changed"
    );

    // An emptied tree never wipes the cache, whatever the ratio allows.
    let empty = tempfile::tempdir().expect("tempdir");
    let checker = Checker::new(Arc::clone(&b), test_config(empty.path(), &ns)).expect("checker");
    let report = checker
        .check(CheckMode::Quick)
        .await
        .expect("check of an empty tree");
    assert_eq!(report.files, 0);
    let everything = ResolvePolicy {
        max_delete_ratio: None,
        ..Default::default()
    };
    let err = checker
        .resolve(&report, &everything)
        .await
        .expect_err("empty source");
    assert_eq!(err.kind(), ErrorKind::Refused);
    assert!(err.to_string().contains("empty"), "{err}");
    let deep = Checker::new(Arc::clone(&b), cfg)
        .expect("checker")
        .check(CheckMode::Deep)
        .await
        .expect("check");
    assert_eq!(deep.files + deep.orphaned.len(), 20, "nothing was deleted");
    cleanup(&b, &ns).await;
}

/// An evicted entry is reported missing and restored (by the next warm on backends that evict,
/// by resolution elsewhere); read-through fills a miss.
pub async fn scenario_eviction_and_read_through(b: Arc<dyn CacheBackend>) {
    let dir = tempfile::tempdir().expect("tempdir");
    sample_tree(dir.path(), 12);
    let ns = fresh_namespace();
    let cfg = test_config(dir.path(), &ns);
    let warmer = Warmer::new(Arc::clone(&b), cfg.clone()).expect("warmer");
    warmer.run_once().await.expect("warm");
    b.delete(&ns.key_for("pages/t004.html"))
        .await
        .expect("evict");
    let checker = Checker::new(Arc::clone(&b), cfg).expect("checker");
    let c = checker.check(CheckMode::Quick).await.expect("check");
    assert_eq!(c.missing, ["pages/t004.html"]);
    if b.capabilities().evicts {
        // Where entries can vanish, every warm verifies them and restores the missing.
        let r = warmer.run_once().await.expect("warm restores");
        assert_eq!((r.written, r.unchanged), (1, 11), "{r:?}");
    } else {
        let r = checker
            .resolve(&c, &ResolvePolicy::default())
            .await
            .expect("resolve restores");
        assert_eq!(r.added, 1, "{r:?}");
    }
    assert!(
        checker
            .check(CheckMode::Deep)
            .await
            .expect("check")
            .consistent
    );

    b.delete(&ns.key_for("pages/t008.html"))
        .await
        .expect("evict");
    let plain = TemplateReader::new(Arc::clone(&b), ns.clone());
    assert!(plain.get("pages/t008.html").await.expect("read").is_none());
    let through = plain.clone().with_read_through(dir.path(), 1 << 20);
    let t = through
        .get("pages/t008.html")
        .await
        .expect("read")
        .expect("from file");
    assert_eq!(t.origin, Origin::File);
    assert_eq!(
        plain
            .get("pages/t008.html")
            .await
            .expect("read")
            .expect("written back")
            .content,
        t.content
    );
    assert!(through.get("nope.html").await.expect("read").is_none());
    assert!(through.get("../etc/passwd").await.is_err());
    cleanup(&b, &ns).await;
}

/// Removes a test namespace's keys (all known ones; listing where supported).
pub async fn cleanup(b: &Arc<dyn CacheBackend>, ns: &Namespace) {
    let mut keys = b.list_keys(&ns.prefix()).await.unwrap_or_default();
    if let Ok(Some(idx)) = b.load_index(ns).await {
        keys.extend(idx.entries.keys().map(|n| ns.key_for(n)));
    }
    keys.push(ns.index_root_key());
    let _ = b.delete_many(&keys).await;
}

/// Expands to one `#[tokio::test]` per conformance function.
///
/// - `conformance_tests!(EXPR)`: each test evaluates `EXPR` (which may `.await`) to a value of a
///   type implementing `CacheBackend`.
/// - `conformance_tests!(guarded EXPR)`: `EXPR` evaluates to `(guard, backend)`; the guard (a
///   server process, a temporary directory) lives until the test ends.
#[macro_export]
macro_rules! conformance_tests {
    (guarded $make:expr) => {
        $crate::conformance_tests!(@tests (guard) $make;
            round_trip, missing_key, idempotent_delete, batch_matches_single, binary_values,
            large_values, enumeration, concurrent_writers, index_round_trip,
            scenario_warm_and_check, scenario_drift_and_resolve, scenario_threshold_refusal,
            scenario_eviction_and_read_through);
    };
    ($make:expr) => {
        $crate::conformance_tests!(guarded ((), $make));
    };
    (@tests (guard) $make:expr; $($name:ident),* $(,)?) => {
        $(
            #[$crate::__tokio::test(flavor = "multi_thread", worker_threads = 2, crate = "template_cache_testkit::__tokio")]
            async fn $name() {
                let (_guard, backend) = $make;
                let backend: ::std::sync::Arc<dyn $crate::__core::CacheBackend> = ::std::sync::Arc::new(backend);
                $crate::$name(backend).await;
            }
        )*
    };
}

#[doc(hidden)]
pub use template_cache_core as __core;

/// Warms 3,000 templates at a throttled pace (about two seconds) while `outage` runs on a
/// blocking thread (stop a server, wait, start it again, return its handle). Checks that the run
/// finishes in bounded time, fails only with temporary errors after at most the configured two
/// attempts, and that the following runs converge to a consistent cache. Returns the outage's
/// value and the interrupted run's report for backend-specific assertions.
pub async fn scenario_outage_during_warm<G: Send + 'static>(
    b: Arc<dyn CacheBackend>,
    outage: impl FnOnce() -> G + Send + 'static,
) -> (G, template_cache_core::WarmReport) {
    let dir = tempfile::tempdir().expect("tempdir");
    sample_tree(dir.path(), 3000);
    let mut cfg = test_config(dir.path(), &fresh_namespace());
    cfg.throttle.batch_max_templates = 50;
    cfg.throttle.concurrency = 2;
    cfg.throttle.templates_per_second = Some(1500.0);
    cfg.retry = RetryPolicy {
        max_attempts: 2,
        initial_backoff: Duration::from_millis(20),
        max_backoff: Duration::from_millis(50),
    };
    let warmer = Warmer::new(Arc::clone(&b), cfg.clone()).expect("warmer");
    let outage = tokio::task::spawn_blocking(outage);
    let report = tokio::time::timeout(Duration::from_secs(120), warmer.run_once())
        .await
        .expect("the warm neither hangs nor waits unboundedly")
        .expect("the run itself completes");
    let guard = outage.await.expect("outage task");
    assert!(
        !report.failed.is_empty(),
        "the outage caused failures: {report:?}"
    );
    assert!(report.written > 0, "{report:?}");
    for f in &report.failed {
        assert!(f.kind == ErrorKind::Unavailable && f.attempts <= 2, "{f:?}");
    }
    let mut converged = false;
    for _ in 0..3 {
        if warmer.run_once().await.expect("warm").failed.is_empty() {
            converged = true;
            break;
        }
    }
    assert!(converged, "later runs converge");
    let check = Checker::new(Arc::clone(&b), cfg)
        .expect("checker")
        .check(CheckMode::Deep)
        .await
        .expect("check");
    assert!(check.consistent, "{check:?}");
    assert_eq!(check.files, 3000);
    (guard, report)
}
