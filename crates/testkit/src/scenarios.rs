//! Engine scenarios every backend runs: warm and check, drift and resolution, threshold
//! refusals, eviction and read-through, and an outage during a warm.

use std::sync::Arc;
use std::time::Duration;

use template_cache_core::{
    Bytes, Cache, CacheBackend, CheckMode, Checker, ErrorKind, Origin, ResolvePolicy, RetryPolicy,
    TemplateReader, Warmer,
};

use crate::fixtures::{cleanup, fresh_namespace, sample_tree, test_config, write};

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
    Cache::new(Arc::clone(&b))
        .set(
            &ns.key_for("emails/t002.html"),
            Bytes::from_static(b"garbage"),
        )
        .await
        .expect("corrupt");
    Cache::new(Arc::clone(&b))
        .delete(&ns.key_for("admin/t003.html"))
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
/// by resolution elsewhere); read-through serves the file on a miss and writes nothing.
pub async fn scenario_eviction_and_read_through(b: Arc<dyn CacheBackend>) {
    let dir = tempfile::tempdir().expect("tempdir");
    sample_tree(dir.path(), 12);
    let ns = fresh_namespace();
    let cfg = test_config(dir.path(), &ns);
    let warmer = Warmer::new(Arc::clone(&b), cfg.clone()).expect("warmer");
    warmer.run_once().await.expect("warm");
    Cache::new(Arc::clone(&b))
        .delete(&ns.key_for("pages/t004.html"))
        .await
        .expect("evict");
    let checker = Checker::new(Arc::clone(&b), cfg.clone()).expect("checker");
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

    Cache::new(Arc::clone(&b))
        .delete(&ns.key_for("pages/t008.html"))
        .await
        .expect("evict");
    let plain = TemplateReader::new(Arc::clone(&b), ns.clone());
    assert!(plain.get("pages/t008.html").await.expect("read").is_none());
    let through = plain
        .clone()
        .with_read_through(cfg.source.clone())
        .expect("read-through");
    let t = through
        .get("pages/t008.html")
        .await
        .expect("read")
        .expect("from file");
    assert_eq!(t.origin, Origin::File);
    assert_eq!(
        t.content,
        std::fs::read(dir.path().join("pages/t008.html")).expect("file")
    );
    // Read-through is read-only: the entry is still missing, for the cache and for a check.
    assert!(
        plain.get("pages/t008.html").await.expect("read").is_none(),
        "read-through never writes"
    );
    assert_eq!(
        checker.check(CheckMode::Deep).await.expect("check").missing,
        ["pages/t008.html"]
    );
    assert!(through.get("nope.html").await.expect("read").is_none());
    assert!(through.get("../etc/passwd").await.is_err());
    cleanup(&b, &ns).await;
}

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
