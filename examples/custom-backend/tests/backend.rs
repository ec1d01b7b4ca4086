//! What the conformance suite does not see: several handles on one directory, the on-disk
//! layout, tombstones, foreign objects, and a store without conditional updates.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::Duration;

use template_cache_core::{Bytes, Cache, ErrorKind, Namespace};
use template_cache_object_store::ObjectStoreBackend;
use template_cache_object_store::object_store::local::LocalFileSystem;
use template_cache_object_store::object_store::memory::InMemory;
use template_cache_object_store::object_store::path::Path;
use template_cache_object_store::object_store::throttle::{ThrottleConfig, ThrottledStore};
use template_cache_object_store::object_store::{ObjectStoreExt, PutPayload};

const TTL: Duration = Duration::from_secs(30);

/// Handles opened separately on one directory exclude each other as separate processes do:
/// the lock is `flock`, which belongs to an open file, not to a process.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn separate_handles_on_one_directory_have_one_winner() {
    let dir = tempfile::tempdir().unwrap();
    let key = Namespace::new("race").unwrap().lease_key();
    for round in 0..5 {
        let handles: Vec<Cache> = (0..4)
            .map(|_| Cache::new(Arc::new(ObjectStoreBackend::local(dir.path()).unwrap())))
            .collect();
        // Everyone races to take the key, then everyone who saw the winner's value races to
        // replace it: exactly one of each race wins.
        let takes: Vec<_> = (0..16)
            .map(|i| {
                let (c, key) = (handles[i % 4].clone(), key.clone());
                tokio::spawn(async move {
                    c.put_if_absent(&key, Bytes::from(format!("{round}-{i}")), TTL)
                        .await
                        .unwrap()
                })
            })
            .collect();
        let mut winners = 0;
        for t in takes {
            winners += usize::from(t.await.unwrap());
        }
        assert_eq!(winners, 1, "round {round}: one put_if_absent wins");
        let held = handles[0].get(&key).await.unwrap().unwrap();
        let swaps: Vec<_> = (0..16)
            .map(|i| {
                let (c, key, held) = (handles[i % 4].clone(), key.clone(), held.clone());
                tokio::spawn(async move {
                    let new = Bytes::from(format!("swap {i}"));
                    c.swap_if_equal(&key, &held, Some(new), TTL).await.unwrap()
                })
            })
            .collect();
        let mut winners = 0;
        for t in swaps {
            winners += usize::from(t.await.unwrap());
        }
        assert_eq!(winners, 1, "round {round}: one swap_if_equal wins");
        // Release (a tombstone), so the next round races on an existing, absent key.
        let now = handles[1].get(&key).await.unwrap().unwrap();
        assert!(
            handles[2]
                .swap_if_equal(&key, &now, None, TTL)
                .await
                .unwrap()
        );
    }
}

const COUNTER_DIR: &str = "TCACHE_TEST_COUNTER_DIR";
const PROCESSES: usize = 4;
const INCREMENTS: u64 = 50;

/// Separate processes incrementing one counter with get + `swap_if_equal` lose no update: the
/// read–compare–write of the local flavour is atomic across processes. This test runs its own
/// binary as the child processes ([`counter_child`]).
#[tokio::test]
async fn a_counter_shared_by_processes_loses_no_update() {
    let dir = tempfile::tempdir().unwrap();
    let cache = Cache::new(Arc::new(ObjectStoreBackend::local(dir.path()).unwrap()));
    let key = Namespace::new("counter").unwrap().lease_key();
    assert!(
        cache
            .put_if_absent(&key, Bytes::from_static(b"0"), TTL)
            .await
            .unwrap()
    );
    let exe = std::env::current_exe().unwrap();
    let children: Vec<_> = (0..PROCESSES)
        .map(|_| {
            std::process::Command::new(&exe)
                .args(["--exact", "counter_child", "--ignored", "--test-threads=1"])
                .env(COUNTER_DIR, dir.path())
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    for child in children {
        let out = child.wait_with_output().unwrap();
        assert!(
            out.status.success(),
            "child failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(stdout.contains("1 passed"), "the child ran: {stdout}");
    }
    let total = cache.get(&key).await.unwrap().unwrap();
    let want = PROCESSES as u64 * INCREMENTS;
    assert_eq!(std::str::from_utf8(&total).unwrap(), want.to_string());
}

/// One child of [`a_counter_shared_by_processes_loses_no_update`]: two tasks, each
/// incrementing the counter [`INCREMENTS`] / 2 times.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a child process of a_counter_shared_by_processes_loses_no_update"]
async fn counter_child() {
    let dir = std::env::var_os(COUNTER_DIR).expect("run by the parent test");
    let cache = Cache::new(Arc::new(ObjectStoreBackend::local(dir).unwrap()));
    let key = Namespace::new("counter").unwrap().lease_key();
    let tasks: Vec<_> = (0..2)
        .map(|_| {
            let (cache, key) = (cache.clone(), key.clone());
            tokio::spawn(async move {
                for _ in 0..INCREMENTS / 2 {
                    loop {
                        let current = cache.get(&key).await.unwrap().unwrap();
                        let n: u64 = std::str::from_utf8(&current).unwrap().parse().unwrap();
                        let next = Bytes::from((n + 1).to_string());
                        if cache
                            .swap_if_equal(&key, &current, Some(next), TTL)
                            .await
                            .unwrap()
                        {
                            break;
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
}

/// The conditional flavour (`PutMode::Update` with the e-tag read) loses no update either. The
/// store answers after a millisecond, as a remote one would, so that writers interleave.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_counter_in_a_conditional_store_loses_no_update() {
    let slow = ThrottleConfig {
        wait_get_per_call: Duration::from_millis(1),
        wait_put_per_call: Duration::from_millis(1),
        ..ThrottleConfig::default()
    };
    let store = Arc::new(ThrottledStore::new(InMemory::new(), slow));
    let cache = Cache::new(Arc::new(ObjectStoreBackend::new(store, Path::default())));
    let key = "counter".to_owned();
    assert!(
        cache
            .put_if_absent(&key, Bytes::from_static(b"0"), TTL)
            .await
            .unwrap()
    );
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let (cache, key) = (cache.clone(), key.clone());
            tokio::spawn(async move {
                for _ in 0..25 {
                    loop {
                        let current = cache.get(&key).await.unwrap().unwrap();
                        let n: u64 = std::str::from_utf8(&current).unwrap().parse().unwrap();
                        let next = Bytes::from((n + 1).to_string());
                        if cache
                            .swap_if_equal(&key, &current, Some(next), TTL)
                            .await
                            .unwrap()
                        {
                            break;
                        }
                    }
                }
            })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    assert_eq!(cache.get(&key).await.unwrap().as_deref(), Some(&b"200"[..]));
}

/// Keys are files where `layout` says; a released lease is an empty file nobody sees.
#[tokio::test]
async fn files_are_where_the_layout_says_and_tombstones_are_absent() {
    let dir = tempfile::tempdir().unwrap();
    let backend = ObjectStoreBackend::local(dir.path()).unwrap();
    let cache = Cache::new(Arc::new(backend.clone()));
    let ns = Namespace::new("Site.v2").unwrap();
    let entry = ns.key_for("emails/welcome.html");
    cache
        .set(&entry, Bytes::from_static(b"TPLC"))
        .await
        .unwrap();
    let file = dir
        .path()
        .join("_53ite.v2_3a")
        .join(entry.split_once(':').unwrap().1);
    assert_eq!(std::fs::read(&file).unwrap(), b"TPLC");
    assert_eq!(
        backend.path_of(&entry).as_ref(),
        format!("_53ite.v2_3a/{}", &entry[8..])
    );

    let lease = ns.lease_key();
    assert!(
        cache
            .put_if_absent(&lease, Bytes::from_static(b"me"), TTL)
            .await
            .unwrap()
    );
    assert!(cache.swap_if_equal(&lease, b"me", None, TTL).await.unwrap());
    let tombstone = dir.path().join("_7b_53ite.v2_3a").join("index_7d_3alease");
    assert_eq!(
        std::fs::read(&tombstone).unwrap(),
        b"",
        "a tombstone is an empty file"
    );
    assert_eq!(cache.get(&lease).await.unwrap(), None);
    assert_eq!(
        cache
            .exists_many(std::slice::from_ref(&lease))
            .await
            .unwrap(),
        [false]
    );
    assert!(!cache.list_keys("").await.unwrap().contains(&lease));
    assert!(!cache.swap_if_equal(&lease, b"", None, TTL).await.unwrap());
    assert!(
        cache
            .put_if_absent(&lease, Bytes::from_static(b"you"), TTL)
            .await
            .unwrap()
    );
    assert_eq!(
        cache.get(&lease).await.unwrap().as_deref(),
        Some(&b"you"[..])
    );
    cache.delete(&lease).await.unwrap();
    assert!(!tombstone.exists(), "a plain delete removes the file");

    // Values the tombstone encoding makes room for still round-trip.
    for v in [&b""[..], b"\xff", b"\xff\xfe"] {
        cache.set(&entry, Bytes::copy_from_slice(v)).await.unwrap();
        assert_eq!(cache.get(&entry).await.unwrap().as_deref(), Some(v));
    }
}

/// Objects the layout did not name (a README in the bucket, the lock file, another tool's
/// files) are not keys; listing skips them.
#[tokio::test]
async fn foreign_objects_are_not_listed() {
    let store = Arc::new(InMemory::new());
    let root = Path::from("cache");
    for p in [
        "cache/README.txt",
        "cache/tpl_3a/NOT-OURS",
        "cache/tpl_3a/a/b",
        "other/tpl_3a/x",
    ] {
        store
            .put(&Path::from(p), PutPayload::from(&b"x"[..]))
            .await
            .unwrap();
    }
    let cache = Cache::new(Arc::new(ObjectStoreBackend::new(store, root)));
    cache.set("tpl:x", Bytes::from_static(b"v")).await.unwrap();
    cache.set("plain", Bytes::from_static(b"v")).await.unwrap();
    assert_eq!(cache.list_keys("tpl:").await.unwrap(), ["tpl:x"]);
    let mut all = cache.list_keys("").await.unwrap();
    all.sort();
    assert_eq!(all, ["plain", "tpl:x"]);
    assert_eq!(cache.list_keys("pl").await.unwrap(), ["plain"]);
}

/// `LocalFileSystem` has no conditional update: handed to `new` instead of `local`, the lease
/// primitives say so (permanently, naming the remedy) instead of racing.
#[tokio::test]
async fn a_store_without_conditional_updates_is_refused_not_raced() {
    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
    let cache = Cache::new(Arc::new(ObjectStoreBackend::new(store, Path::default())));
    let key = Namespace::default().lease_key();
    assert!(
        cache
            .put_if_absent(&key, Bytes::from_static(b"a"), TTL)
            .await
            .unwrap()
    );
    let err = cache
        .swap_if_equal(&key, b"a", Some(Bytes::from_static(b"b")), TTL)
        .await
        .unwrap_err();
    assert_eq!(err.kind(), ErrorKind::Unsupported, "{err}");
    assert!(!err.is_temporary());
    assert!(
        err.to_string().contains("ObjectStoreBackend::local"),
        "{err}"
    );
    assert_eq!(cache.get(&key).await.unwrap().as_deref(), Some(&b"a"[..]));
}

#[test]
fn describe_names_the_store_and_root_only() {
    let b = ObjectStoreBackend::new(Arc::new(InMemory::new()), Path::from("caches/prod"));
    use template_cache_core::CacheBackend;
    assert_eq!(b.describe(), "object-store:InMemory/caches/prod");
    assert_eq!(b.index_layout(), template_cache_core::IndexLayout::Sharded);
    let caps = b.capabilities();
    assert!(caps.list_keys && !caps.evicts);
    assert!(b.with_evicts(true).capabilities().evicts);
}
