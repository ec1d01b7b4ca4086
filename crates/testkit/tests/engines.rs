//! Engine behaviour that needs fault injection: retries, isolation, ordering, fingerprints,
//! cancellation, scheduling. Uses the testkit's in-memory backend with a fault hook (the real
//! backends run the same scenarios through the conformance kit).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use template_cache_core::*;
use template_cache_testkit::faults::FaultyBackend;
use template_cache_testkit::fixtures::numbered_tree;

fn tree(root: &Path, names: &[&str]) {
    for n in names {
        let p = root.join(n);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, format!("content of {n}")).unwrap();
    }
}

fn config(root: &Path, ns: &str) -> EngineConfig {
    let mut c = EngineConfig::new(SourceConfig::new(root));
    c.namespace = Namespace::new(ns).unwrap();
    c.retry = RetryPolicy {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(1),
        max_backoff: Duration::from_millis(5),
    };
    c.throttle.batch_max_templates = 2;
    c
}

fn template_writes(m: &FaultyBackend, ns: &Namespace) -> Vec<String> {
    m.writes()
        .iter()
        .filter(|k| ns.is_template_key(k))
        .cloned()
        .collect()
}

#[tokio::test]
async fn temporary_errors_are_retried_then_reported_and_retried_next_cycle() {
    let dir = tempfile::tempdir().unwrap();
    tree(dir.path(), &["a.html", "b.html", "c.html", "d.html"]);
    let m = Arc::new(FaultyBackend::new());
    let cfg = config(dir.path(), "t");
    let bad = cfg.namespace.key_for("c.html");
    let calls = Arc::new(Mutex::new(0u32));
    let calls2 = Arc::clone(&calls);
    m.set_fault(move |op, keys| {
        (op == "set_many" && keys.contains(&bad)).then(|| {
            *calls2.lock().unwrap() += 1;
            Error::new(ErrorKind::Unavailable, "connection reset")
        })
    });
    let warmer = Warmer::new(m.clone(), cfg.clone()).unwrap();
    let r = warmer.run_once().await.unwrap();
    assert_eq!(r.written, 2, "{r:?}");
    let mut failed: Vec<_> = r
        .failed
        .iter()
        .map(|f| (f.name.as_str(), f.attempts))
        .collect();
    failed.sort();
    assert_eq!(
        failed,
        [("c.html", 3), ("d.html", 3)],
        "the whole batch shares the fate"
    );
    assert_eq!(*calls.lock().unwrap(), 3, "bounded by max_attempts");
    assert!(r.failed[0].error.contains("connection reset"));

    // The failed ones stay pending in the index: a check sees them as missing.
    let c = Checker::new(m.clone(), cfg.clone())
        .unwrap()
        .check(CheckMode::Quick)
        .await
        .unwrap();
    assert_eq!(c.missing, ["c.html", "d.html"]);

    m.clear_fault();
    let r = warmer.run_once().await.unwrap();
    assert_eq!((r.written, r.unchanged, r.failed.len()), (2, 2, 0), "{r:?}");
    assert!(
        Checker::new(m, cfg)
            .unwrap()
            .check(CheckMode::Deep)
            .await
            .unwrap()
            .consistent
    );
}

#[tokio::test]
async fn a_permanently_failing_template_does_not_stop_the_others() {
    let dir = tempfile::tempdir().unwrap();
    tree(
        dir.path(),
        &["a.html", "b.html", "c.html", "d.html", "e.html"],
    );
    std::fs::write(dir.path().join("big.html"), vec![b'x'; 5000]).unwrap();
    let m = Arc::new(FaultyBackend::with_capabilities(Capabilities {
        max_value_bytes: Some(4000),
        ..Capabilities::new()
    }));
    let mut cfg = config(dir.path(), "t");
    cfg.throttle.batch_max_templates = 10;
    let bad = cfg.namespace.key_for("b.html");
    m.set_fault(move |op, keys| {
        (op.starts_with("set") && keys.contains(&bad))
            .then(|| Error::new(ErrorKind::PermissionDenied, "NOPERM this key"))
    });
    let r = Warmer::new(m.clone(), cfg.clone())
        .unwrap()
        .run_once()
        .await
        .unwrap();
    assert_eq!(r.written, 4, "{r:?}");
    let mut failed: Vec<_> = r.failed.iter().map(|f| (f.name.as_str(), f.kind)).collect();
    failed.sort_by_key(|f| f.0);
    assert_eq!(
        failed,
        [
            ("b.html", ErrorKind::PermissionDenied),
            ("big.html", ErrorKind::ValueTooLarge)
        ]
    );
    assert!(
        r.failed.iter().any(|f| f.error.contains("4000")),
        "the limit is named: {:?}",
        r.failed
    );
}

#[tokio::test]
async fn priority_rules_order_the_writes() {
    let dir = tempfile::tempdir().unwrap();
    tree(
        dir.path(),
        &[
            "admin/a.html",
            "emails/e.html",
            "pages/p.html",
            "admin/b.html",
            "emails/f.html",
        ],
    );
    let m = Arc::new(FaultyBackend::new());
    let mut cfg = config(dir.path(), "t");
    cfg.throttle.concurrency = 1;
    cfg.throttle.batch_max_templates = 1;
    cfg.priority = vec!["emails/**".into(), "pages/**".into()];
    Warmer::new(m.clone(), cfg.clone())
        .unwrap()
        .run_once()
        .await
        .unwrap();
    let ns = &cfg.namespace;
    let order: Vec<String> = [
        "emails/e.html",
        "emails/f.html",
        "pages/p.html",
        "admin/a.html",
        "admin/b.html",
    ]
    .iter()
    .map(|n| ns.key_for(n))
    .collect();
    assert_eq!(template_writes(&m, ns), order);
    cfg.priority = vec!["[".into()];
    let err = Warmer::new(m, cfg).unwrap_err();
    assert!(err.to_string().contains("priority pattern"), "{err}");
}

#[tokio::test]
async fn unchanged_files_are_not_reread_even_in_a_fresh_process_but_cp_p_is_caught() {
    let dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    tree(dir.path(), &["a.html", "b.html", "c.html"]);
    // Let the files' timestamps settle past the racy window.
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let m = Arc::new(FaultyBackend::new());
    let mut cfg = config(dir.path(), "t");
    cfg.source.state_path = Some(state.path().join("fingerprints"));
    let r = Warmer::new(m.clone(), cfg.clone())
        .unwrap()
        .run_once()
        .await
        .unwrap();
    assert_eq!((r.written, r.files_hashed), (3, 3));
    // A fresh warmer (as in a new process) trusts the persisted fingerprints.
    let warmer = Warmer::new(m.clone(), cfg.clone()).unwrap();
    let r = warmer.run_once().await.unwrap();
    assert_eq!((r.written, r.unchanged, r.files_hashed), (0, 3, 0), "{r:?}");
    let c = Checker::new(m.clone(), cfg.clone()).unwrap();
    let report = c.check(CheckMode::Quick).await.unwrap();
    assert!(report.consistent);
    assert_eq!(
        c.source().files_hashed(),
        0,
        "a quick check of an unchanged tree reads no file"
    );

    // Same size, mtime restored (as `cp -p` or `touch -r` leave it): the ctime still differs.
    let p = dir.path().join("b.html");
    let mtime = std::fs::metadata(&p).unwrap().modified().unwrap();
    std::fs::write(&p, "content of X.html").unwrap();
    std::fs::File::options()
        .write(true)
        .open(&p)
        .unwrap()
        .set_modified(mtime)
        .unwrap();
    let r = warmer.run_once().await.unwrap();
    // Read once to compare with the index, once more to write (a file whose content turns out
    // unchanged is never written, and the index is left alone).
    assert_eq!((r.written, r.unchanged, r.files_hashed), (1, 2, 2), "{r:?}");

    // --checksum re-hashes everything but still writes nothing unchanged.
    cfg.source.checksum = true;
    let r = Warmer::new(m, cfg).unwrap().run_once().await.unwrap();
    assert_eq!((r.written, r.files_hashed), (0, 3), "{r:?}");
}

#[tokio::test]
async fn cancelled_runs_leave_a_describable_cache_and_periodic_mode_stops() {
    let dir = tempfile::tempdir().unwrap();
    tree(dir.path(), &["a.html", "b.html", "c.html", "d.html"]);
    let m = Arc::new(FaultyBackend::new());
    let cfg = config(dir.path(), "t");
    let warmer = Warmer::new(m.clone(), cfg.clone()).unwrap();
    let cancel = CancellationToken::new();
    cancel.cancel();
    let r = warmer.run_once_until(&cancel).await.unwrap();
    assert!(r.cancelled && r.written == 0, "{r:?}");
    let c = Checker::new(m.clone(), cfg.clone())
        .unwrap()
        .check(CheckMode::Quick)
        .await
        .unwrap();
    assert_eq!(
        c.missing.len(),
        4,
        "pending entries are described as missing: {c:?}"
    );

    let cancel = CancellationToken::new();
    let runs = Arc::new(Mutex::new(Vec::new()));
    let runs2 = Arc::clone(&runs);
    let stopper = cancel.clone();
    let task = tokio::spawn(async move {
        warmer
            .run_periodic(Duration::from_millis(20), 0.5, cancel, move |r| {
                runs2.lock().unwrap().push(r.map(|r| r.written))
            })
            .await;
    });
    tokio::time::sleep(Duration::from_millis(150)).await;
    stopper.cancel();
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("stops promptly")
        .unwrap();
    let runs = runs.lock().unwrap();
    assert!(runs.len() >= 2, "{} runs", runs.len());
    assert_eq!(runs[0].as_ref().ok(), Some(&4));
    assert!(runs[1..].iter().all(|r| r.as_ref().ok() == Some(&0)));
}

#[tokio::test]
async fn a_crash_between_index_and_entries_is_visible_to_quick_checks() {
    let dir = tempfile::tempdir().unwrap();
    tree(dir.path(), &["a.html"]);
    let m = Arc::new(FaultyBackend::new());
    let cfg = config(dir.path(), "t");
    Warmer::new(m.clone(), cfg.clone())
        .unwrap()
        .run_once()
        .await
        .unwrap();
    std::fs::write(dir.path().join("a.html"), "new content, new size").unwrap();
    // The index is updated (pending) but the record write never happens.
    let key = cfg.namespace.key_for("a.html");
    m.set_fault(move |op, keys| {
        (op == "set_many" && keys.contains(&key))
            .then(|| Error::new(ErrorKind::Unexpected, "crash"))
    });
    let r = Warmer::new(m.clone(), cfg.clone())
        .unwrap()
        .run_once()
        .await
        .unwrap();
    assert_eq!(r.failed.len(), 1);
    m.clear_fault();
    let c = Checker::new(m, cfg)
        .unwrap()
        .check(CheckMode::Quick)
        .await
        .unwrap();
    assert_eq!(c.outdated, ["a.html"], "{c:?}");
}

#[tokio::test]
async fn missing_root_and_bad_settings_are_clear_errors() {
    let m = Arc::new(FaultyBackend::new());
    let cfg = config(Path::new("/no/such/templates"), "t");
    let err = Warmer::new(m.clone(), cfg.clone())
        .unwrap()
        .run_once()
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    assert!(err.to_string().contains("/no/such/templates"), "{err}");
    let err = Checker::new(m.clone(), cfg.clone())
        .unwrap()
        .check(CheckMode::Quick)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::NotFound);
    let mut bad = cfg;
    bad.throttle.concurrency = 0;
    assert_eq!(
        Warmer::new(m.clone(), bad.clone()).unwrap_err().kind(),
        ErrorKind::ConfigInvalid
    );
    bad.throttle.concurrency = 1;
    bad.throttle.templates_per_second = Some(-1.0);
    assert!(
        Warmer::new(m, bad)
            .unwrap_err()
            .to_string()
            .contains("templates_per_second")
    );
}

#[tokio::test]
async fn rate_limits_slow_a_warm_down() {
    let dir = tempfile::tempdir().unwrap();
    numbered_tree(dir.path(), 30);
    let m = Arc::new(FaultyBackend::new());
    let mut cfg = config(dir.path(), "t");
    cfg.throttle.batch_max_templates = 5;
    cfg.throttle.templates_per_second = Some(20.0);
    let start = std::time::Instant::now();
    let r = Warmer::new(m, cfg).unwrap().run_once().await.unwrap();
    assert_eq!(r.written, 30);
    // A full bucket admits one second's worth (20) at once; the other 10 take half a second.
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

struct Recorder(Mutex<Vec<usize>>);

#[async_trait]
impl AlertSink for Recorder {
    async fn alert(&self, alert: &Alert) {
        if let Alert::Inconsistent(r) = alert {
            self.0.lock().unwrap().push(r.inconsistencies());
        }
    }
}

#[tokio::test]
async fn scheduled_checks_alert_and_resolve() {
    let dir = tempfile::tempdir().unwrap();
    tree(
        dir.path(),
        &["a.html", "b.html", "c.html", "d.html", "e.html"],
    );
    let m = Arc::new(FaultyBackend::new());
    let cfg = config(dir.path(), "t");
    Warmer::new(m.clone(), cfg.clone())
        .unwrap()
        .run_once()
        .await
        .unwrap();
    Cache::new(m.clone())
        .delete(&cfg.namespace.key_for("a.html"))
        .await
        .unwrap();
    let checker = Checker::new(m.clone(), cfg.clone()).unwrap();
    let recorder = Arc::new(Recorder(Mutex::new(Vec::new())));
    let sinks: Vec<Arc<dyn AlertSink>> = vec![recorder.clone()];
    let schedule = CheckSchedule {
        interval: Duration::from_millis(30),
        jitter: 0.0,
        window: None,
        mode: CheckMode::Quick,
        resolve: Some(ResolvePolicy::default()),
        alert: AlertThreshold {
            min_count: Some(1),
            min_ratio: None,
        },
    };
    let cancel = CancellationToken::new();
    let stopper = cancel.clone();
    let outcomes = Arc::new(Mutex::new(Vec::new()));
    let o2 = Arc::clone(&outcomes);
    let run = run_scheduled_checks(&checker, &schedule, &sinks, cancel, move |r| {
        o2.lock().unwrap().push(
            r.as_ref()
                .map(|(c, res)| (c.consistent, res.is_some()))
                .ok(),
        );
    });
    let stop = async {
        tokio::time::sleep(Duration::from_millis(200)).await;
        stopper.cancel();
    };
    tokio::join!(run, stop);
    assert_eq!(
        recorder.0.lock().unwrap().as_slice(),
        [1],
        "one alert, then resolved"
    );
    let outcomes = outcomes.lock().unwrap();
    assert_eq!(outcomes[0], Some((false, true)));
    assert!(
        outcomes[1..].iter().all(|o| *o == Some((true, false))),
        "{outcomes:?}"
    );
}

#[tokio::test]
async fn each_resolution_switch_is_honoured() {
    let dir = tempfile::tempdir().unwrap();
    tree(
        dir.path(),
        &[
            "keep.html",
            "old.html",
            "gone.html",
            "bad.html",
            "a.html",
            "b.html",
            "c.html",
            "d.html",
        ],
    );
    let m = Arc::new(FaultyBackend::new());
    let cfg = config(dir.path(), "t");
    Warmer::new(m.clone(), cfg.clone())
        .unwrap()
        .run_once()
        .await
        .unwrap();
    std::fs::write(dir.path().join("old.html"), "new content").unwrap();
    std::fs::remove_file(dir.path().join("gone.html")).unwrap();
    std::fs::write(dir.path().join("fresh.html"), "fresh").unwrap();
    Cache::new(m.clone())
        .set(
            &cfg.namespace.key_for("bad.html"),
            Bytes::from_static(b"junk"),
        )
        .await
        .unwrap();
    let checker = Checker::new(m.clone(), cfg).unwrap();
    let all_off = ResolvePolicy {
        add_missing: false,
        update_outdated: false,
        repair_corrupt: false,
        delete_orphans: false,
        max_delete_ratio: None,
        ..Default::default()
    };
    type Case = (
        &'static str,
        fn(&mut ResolvePolicy),
        (usize, usize, usize, usize),
    );
    let cases: [Case; 4] = [
        ("add_missing", |p| p.add_missing = true, (1, 0, 0, 0)),
        (
            "update_outdated",
            |p| p.update_outdated = true,
            (0, 1, 0, 0),
        ),
        ("repair_corrupt", |p| p.repair_corrupt = true, (0, 0, 1, 0)),
        ("delete_orphans", |p| p.delete_orphans = true, (0, 0, 0, 1)),
    ];
    let mut remaining = 4;
    for (name, enable, want) in cases {
        let report = checker.check(CheckMode::Deep).await.unwrap();
        assert_eq!(report.inconsistencies(), remaining, "{name}: {report:?}");
        let mut policy = all_off.clone();
        enable(&mut policy);
        let r = checker.resolve(&report, &policy).await.unwrap();
        assert_eq!((r.added, r.updated, r.repaired, r.deleted), want, "{name}");
        remaining -= 1;
    }
    assert!(checker.check(CheckMode::Deep).await.unwrap().consistent);
}

#[tokio::test]
async fn re_copied_unchanged_files_cause_no_writes_at_all() {
    let dir = tempfile::tempdir().unwrap();
    tree(dir.path(), &["a.html", "b.html", "c/d.html"]);
    let m = Arc::new(FaultyBackend::new());
    let cfg = config(dir.path(), "t");
    let warmer = Warmer::new(m.clone(), cfg).unwrap();
    assert_eq!(warmer.run_once().await.unwrap().written, 3);
    let writes_before = m.writes().len();
    // A deploy copies the same content again: new mtimes and ctimes, same bytes.
    for n in ["a.html", "b.html", "c/d.html"] {
        let p = dir.path().join(n);
        let content = std::fs::read(&p).unwrap();
        std::fs::write(&p, content).unwrap();
    }
    let r = warmer.run_once().await.unwrap();
    assert_eq!((r.written, r.unchanged, r.files_hashed), (0, 3, 3), "{r:?}");
    assert_eq!(
        m.writes().len(),
        writes_before,
        "neither entries nor the index were written"
    );
}

#[tokio::test]
async fn checks_are_throttled_like_warms() {
    let dir = tempfile::tempdir().unwrap();
    numbered_tree(dir.path(), 30);
    let m = Arc::new(FaultyBackend::new());
    let mut cfg = config(dir.path(), "t");
    Warmer::new(m.clone(), cfg.clone())
        .unwrap()
        .run_once()
        .await
        .unwrap();
    cfg.throttle.templates_per_second = Some(20.0);
    let start = std::time::Instant::now();
    assert!(
        Checker::new(m, cfg)
            .unwrap()
            .check(CheckMode::Deep)
            .await
            .unwrap()
            .consistent
    );
    // A burst of 2, then 28 more fetches at 20 a second.
    let took = start.elapsed();
    assert!(
        took >= Duration::from_millis(1300) && took < Duration::from_secs(5),
        "{took:?}"
    );
}

#[tokio::test]
async fn a_unit_whose_index_mark_fails_is_reported_and_left_unwritten() {
    // Where the index is updated by field, the warmer marks units of batches pending ahead of
    // the writers. A unit whose mark fails must not be written (the cache would hold records
    // the index does not describe); the units around it are written and confirmed.
    let dir = tempfile::tempdir().unwrap();
    numbered_tree(dir.path(), 5000);
    let mut names: Vec<String> = (0..5000).map(|i| format!("t{i}.html")).collect();
    names.sort();
    let m = Arc::new(FaultyBackend::new().hash_indexed());
    let mut cfg = config(dir.path(), "t");
    cfg.throttle.batch_max_templates = 64;
    let ns = cfg.namespace.clone();

    // Index updates that include `name` are refused.
    let refuse_updates_of = |name: &String| {
        let name = name.clone();
        move |op: &str, fields: &[String]| {
            (op == "hash_update" && fields.contains(&name))
                .then(|| Error::new(ErrorKind::Io, "index refused"))
        }
    };

    // The first mark failing fails the run before anything is written.
    m.set_fault(refuse_updates_of(&names[10]));
    let err = Warmer::new(m.clone(), cfg.clone())
        .unwrap()
        .run_once()
        .await
        .unwrap_err();
    assert!(err.to_string().contains("index refused"), "{err}");
    assert!(template_writes(&m, &ns).is_empty());

    // A later unit (names 2048.. of 64-template batches) failing fails that unit alone.
    m.set_fault(refuse_updates_of(&names[3000]));
    let r = Warmer::new(m.clone(), cfg.clone())
        .unwrap()
        .run_once()
        .await
        .unwrap();
    let mut failed: Vec<String> = r.failed.iter().map(|f| f.name.clone()).collect();
    failed.sort();
    assert_eq!(
        failed,
        names[2048..4096],
        "the whole unit, and nothing else"
    );
    assert_eq!(r.written, 5000 - 2048);
    let written = template_writes(&m, &ns);
    assert!(!written.contains(&ns.key_for(&names[3000])));
    assert!(written.contains(&ns.key_for(&names[4096])));

    // What was written is confirmed; the unmarked unit is simply missing, then written.
    let checker = Checker::new(m.clone(), cfg.clone()).unwrap();
    let c = checker.check(CheckMode::Deep).await.unwrap();
    let mut missing = c.missing.clone();
    missing.sort();
    assert_eq!(missing, names[2048..4096]);
    assert_eq!(c.inconsistencies(), 2048, "{c:?}");
    m.clear_fault();
    let r = Warmer::new(m.clone(), cfg.clone())
        .unwrap()
        .run_once()
        .await
        .unwrap();
    assert_eq!((r.written, r.failed.len()), (2048, 0));
    assert!(checker.check(CheckMode::Deep).await.unwrap().consistent);
}

#[tokio::test]
async fn a_warm_cancelled_mid_write_stops_promptly_on_either_index_layout() {
    let dir = tempfile::tempdir().unwrap();
    numbered_tree(dir.path(), 3000);
    for m in [FaultyBackend::new(), FaultyBackend::new().hash_indexed()] {
        let m = Arc::new(m);
        let mut cfg = config(dir.path(), "t");
        cfg.throttle.batch_max_templates = 16;
        cfg.throttle.concurrency = 1;
        let cancel = CancellationToken::new();
        let writes = Arc::new(Mutex::new(0u32));
        let (stopper, counted) = (cancel.clone(), Arc::clone(&writes));
        m.set_fault(move |op, _| {
            if op == "set_many" {
                let mut n = counted.lock().unwrap();
                *n += 1;
                if *n == 3 {
                    stopper.cancel();
                }
            }
            None
        });
        let warmer = Warmer::new(m.clone(), cfg.clone()).unwrap();
        let r = tokio::time::timeout(Duration::from_secs(10), warmer.run_once_until(&cancel))
            .await
            .expect("a cancelled warm returns")
            .unwrap();
        assert!(r.cancelled && r.written > 0 && r.written < 3000, "{r:?}");
        // What was written is confirmed; the rest is described as missing, never lost.
        let c = Checker::new(m.clone(), cfg)
            .unwrap()
            .check(CheckMode::Deep)
            .await
            .unwrap();
        assert_eq!(c.missing.len(), 3000 - r.written, "{c:?}");
        assert_eq!(c.inconsistencies(), c.missing.len(), "{c:?}");
    }
}
