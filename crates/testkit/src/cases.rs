//! Conformance cases of the storage contract: what every backend must do, called through
//! [`Cache`] as the engines call it.

use std::sync::Arc;
use std::time::Duration;

use template_cache_core::{
    Bytes, Cache, CacheBackend, ContentHash, ErrorKind, IndexChanges, IndexEntry, IndexLayout,
    Namespace, index,
};

use crate::fixtures::fresh_namespace;

fn key(ns: &Namespace, s: &str) -> String {
    ns.key_for(s)
}

/// Set, get, overwrite.
pub async fn round_trip(b: Arc<dyn CacheBackend>) {
    let b = Cache::new(b);
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
    let b = Cache::new(b);
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
    let b = Cache::new(b);
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
    let b = Cache::new(b);
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
    let b = Cache::new(b);
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
    let b = Cache::new(b);
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

/// Listing by prefix (whole or in pages) returns exactly the keys under it, or `Unsupported`
/// without the capability.
pub async fn enumeration(b: Arc<dyn CacheBackend>) {
    let b = Cache::new(b);
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
    let mut paged = Vec::new();
    let r_paged = b
        .list_keys_paged(&ns.prefix(), &mut |page| paged.extend(page))
        .await;
    if b.capabilities().list_keys {
        let mut listed = r.expect("list_keys");
        listed.sort();
        let mut want = keys.clone();
        want.sort();
        assert_eq!(listed, want);
        r_paged.expect("list_keys_paged");
        paged.sort();
        paged.dedup();
        assert_eq!(paged, want, "the pages hold the same keys");
    } else {
        for r in [r.map(drop), r_paged] {
            assert_eq!(
                r.expect_err("listing without the capability").kind(),
                ErrorKind::Unsupported
            );
        }
    }
    b.delete_many(&keys).await.expect("cleanup");
    b.delete(&key(&other, "x")).await.expect("cleanup");
}

/// Concurrent writers of distinct keys all land; concurrent writers of one key leave one of
/// their values, whole.
pub async fn concurrent_writers(b: Arc<dyn CacheBackend>) {
    let b = Cache::new(b);
    let ns = fresh_namespace();
    let shared = key(&ns, "shared");
    let mut tasks = Vec::new();
    for w in 0..8 {
        let (b, ns, shared) = (b.clone(), ns.clone(), shared.clone());
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
    let b = Cache::new(b);
    let ns = fresh_namespace();
    assert!(index::load(&b, &ns).await.expect("load empty").is_none());
    let entry = |i: u64| IndexEntry {
        hash: ContentHash::of(&i.to_be_bytes()),
        size: i,
        pending: i.is_multiple_of(2),
    };
    let upserts: Vec<(String, IndexEntry)> = (0..20_000u64)
        .map(|i| (format!("dir{}/template-{i}.html", i % 50), entry(i)))
        .collect();
    index::update(
        &b,
        &ns,
        &IndexChanges {
            upserts: upserts[..10].to_vec(),
            removals: vec![],
        },
        None,
    )
    .await
    .expect("create");
    index::update(
        &b,
        &ns,
        &IndexChanges {
            upserts: upserts[10..].to_vec(),
            removals: vec![],
        },
        None,
    )
    .await
    .expect("grow");
    let snap = index::load(&b, &ns)
        .await
        .expect("load")
        .expect("index exists");
    assert!(snap.lost.is_empty(), "{:?}", snap.lost);
    assert_eq!(snap.entries.len(), upserts.len());
    assert_eq!(snap.entries.get("dir7/template-7.html"), Some(entry(7)));
    if b.index_layout() == IndexLayout::Hash {
        // A field count, where the backend tells one, is the true one.
        let told = b.hash_len(&ns.index_root_key()).await.expect("hash_len");
        assert!(matches!(told, None | Some(20_000)), "{told:?}");
    }
    let removals: Vec<String> = upserts[..5000].iter().map(|(n, _)| n.clone()).collect();
    let changed = (
        upserts[6000].0.clone(),
        IndexEntry {
            pending: false,
            ..entry(1)
        },
    );
    index::update(
        &b,
        &ns,
        &IndexChanges {
            upserts: vec![changed.clone()],
            removals,
        },
        None,
    )
    .await
    .expect("update");
    let snap = index::load(&b, &ns)
        .await
        .expect("load")
        .expect("index exists");
    assert_eq!(snap.entries.len(), 15_000);
    assert_eq!(snap.entries.get(&changed.0), Some(changed.1));
    assert!(!snap.entries.contains_key(&upserts[0].0));
    if b.capabilities().list_keys {
        let keys = b.list_keys(&ns.prefix()).await.expect("list");
        b.delete_many(&keys).await.expect("cleanup");
    }
}

/// The contract is enforced in front of the backend: a value over
/// [`Capabilities::max_value_bytes`](template_cache_core::Capabilities) is refused before the
/// backend sees anything (the stored value stays), and a batch over the backend's limits reaches
/// it split into calls within [`Capabilities::batch_max_keys`](template_cache_core::Capabilities)
/// and `batch_max_bytes`, with every result in order.
pub async fn contract_limits(b: Arc<dyn CacheBackend>) {
    let caps = b.capabilities();
    let seen = Arc::new(Recording::new(b));
    let c = Cache::new(Arc::clone(&seen) as Arc<dyn CacheBackend>);
    let ns = fresh_namespace();

    // A batch over twice the key limit (2,001 keys when the backend declares none).
    let keys_limit = caps.batch_max_keys.unwrap_or(1000);
    let count = (keys_limit * 2 + 1).min(30_001);
    let value_len = caps
        .batch_max_bytes
        .map_or(64, |b| (b / keys_limit.max(1)).clamp(64, 64 * 1024));
    let entries: Vec<(String, Bytes)> = (0..count)
        .map(|i| {
            (
                key(&ns, &format!("limit-{i}")),
                Bytes::from(vec![b'v'; value_len]),
            )
        })
        .collect();
    c.set_many(&entries)
        .await
        .expect("an oversize batch is split");
    let keys: Vec<String> = entries.iter().map(|(k, _)| k.clone()).collect();
    let got = c
        .get_many(&keys)
        .await
        .expect("get_many of an oversize batch");
    assert_eq!(got.len(), count);
    assert!(
        got.iter()
            .all(|v| v.as_ref().map(Bytes::len) == Some(value_len))
    );
    let exists = c.exists_many(&keys).await.expect("exists_many");
    assert!(exists.iter().all(|&e| e));
    c.delete_many(&keys).await.expect("delete_many");
    for call in seen.calls() {
        if let Some(max) = caps.batch_max_keys {
            assert!(call.keys <= max, "{call:?} over batch_max_keys {max}");
        }
        if let (Some(max), true) = (caps.batch_max_bytes, call.keys > 1) {
            assert!(call.bytes <= max, "{call:?} over batch_max_bytes {max}");
        }
    }
    if caps.batch_max_keys.is_some() {
        assert!(
            seen.calls().iter().filter(|c| c.op == "set_many").count() >= 3,
            "the batch was split: {:?}",
            seen.calls()
        );
    }

    // One oversize value fails the whole call before the backend sees it.
    let Some(max) = caps.max_value_bytes.filter(|&m| m < (64 << 20)) else {
        return;
    };
    let k = key(&ns, "oversize");
    c.set(&k, Bytes::from_static(b"old")).await.expect("set");
    let before = seen.calls().len();
    let err = c
        .set_many(&[
            (key(&ns, "small"), Bytes::from_static(b"fine")),
            (k.clone(), Bytes::from(vec![b'y'; max + 1])),
        ])
        .await
        .expect_err("a value over the limit");
    assert_eq!(err.kind(), ErrorKind::ValueTooLarge, "{err}");
    assert!(err.to_string().contains(&max.to_string()), "{err}");
    assert_eq!(seen.calls().len(), before, "nothing reached the backend");
    assert_eq!(c.get(&k).await.expect("get").as_deref(), Some(&b"old"[..]));
    assert_eq!(c.get(&key(&ns, "small")).await.expect("get"), None);
    c.delete(&k).await.expect("cleanup");
}

/// One call that reached the backend.
#[derive(Clone, Debug)]
struct Call {
    op: &'static str,
    keys: usize,
    bytes: usize,
}

/// Passes every call to the backend it wraps and records its shape.
#[derive(Debug)]
struct Recording {
    inner: Arc<dyn CacheBackend>,
    calls: std::sync::Mutex<Vec<Call>>,
}

impl Recording {
    fn new(inner: Arc<dyn CacheBackend>) -> Self {
        Recording {
            inner,
            calls: Default::default(),
        }
    }

    fn record(&self, op: &'static str, keys: &[String], bytes: usize) {
        let bytes = bytes + keys.iter().map(String::len).sum::<usize>();
        self.calls.lock().unwrap().push(Call {
            op,
            keys: keys.len(),
            bytes,
        });
    }

    fn calls(&self) -> Vec<Call> {
        self.calls.lock().unwrap().clone()
    }
}

#[template_cache_core::async_trait]
impl CacheBackend for Recording {
    fn capabilities(&self) -> template_cache_core::Capabilities {
        self.inner.capabilities()
    }
    fn index_layout(&self) -> template_cache_core::IndexLayout {
        self.inner.index_layout()
    }
    fn describe(&self) -> String {
        self.inner.describe()
    }
    async fn get_many(&self, keys: &[String]) -> template_cache_core::Result<Vec<Option<Bytes>>> {
        self.record("get_many", keys, 0);
        self.inner.get_many(keys).await
    }
    async fn set_many(
        &self,
        entries: &[(String, Bytes)],
        expiry: template_cache_core::Expiry,
    ) -> template_cache_core::Result<()> {
        let keys: Vec<String> = entries.iter().map(|(k, _)| k.clone()).collect();
        self.record(
            "set_many",
            &keys,
            entries.iter().map(|(_, v)| v.len()).sum(),
        );
        self.inner.set_many(entries, expiry).await
    }
    async fn delete_many(&self, keys: &[String]) -> template_cache_core::Result<()> {
        self.record("delete_many", keys, 0);
        self.inner.delete_many(keys).await
    }
    async fn exists_many(&self, keys: &[String]) -> template_cache_core::Result<Vec<bool>> {
        self.record("exists_many", keys, 0);
        self.inner.exists_many(keys).await
    }
    async fn put_if_absent(
        &self,
        key: &str,
        value: Bytes,
        ttl: Duration,
    ) -> template_cache_core::Result<bool> {
        self.record("put_if_absent", &[key.to_owned()], value.len());
        self.inner.put_if_absent(key, value, ttl).await
    }
    async fn swap_if_equal(
        &self,
        key: &str,
        expected: &[u8],
        new: Option<Bytes>,
        ttl: Duration,
    ) -> template_cache_core::Result<bool> {
        self.record("swap_if_equal", &[key.to_owned()], expected.len());
        self.inner.swap_if_equal(key, expected, new, ttl).await
    }
}

/// The lease primitives are atomic: of many concurrent `put_if_absent` calls exactly one wins;
/// `swap_if_equal` replaces or deletes only the expected value; an absent key never matches.
pub async fn atomic_swaps(b: Arc<dyn CacheBackend>) {
    let c = Cache::new(b);
    let ns = fresh_namespace();
    let k = ns.lease_key();
    let ttl = Duration::from_secs(30);
    let tasks: Vec<_> = (0..8)
        .map(|i| {
            let (c, k) = (c.clone(), k.clone());
            tokio::spawn(async move {
                c.put_if_absent(&k, Bytes::from(format!("writer {i}")), ttl)
                    .await
                    .expect("put_if_absent")
            })
        })
        .collect();
    let mut winners = 0;
    for t in tasks {
        winners += usize::from(t.await.expect("task"));
    }
    assert_eq!(winners, 1, "exactly one put_if_absent wins");
    let held = c.get(&k).await.expect("get").expect("the winner's value");
    assert!(
        !c.swap_if_equal(&k, b"someone else", Some(Bytes::from_static(b"x")), ttl)
            .await
            .expect("swap")
    );
    assert!(
        c.swap_if_equal(&k, &held, Some(Bytes::from_static(b"renewed")), ttl)
            .await
            .expect("swap")
    );
    assert_eq!(
        c.get(&k).await.expect("get").as_deref(),
        Some(&b"renewed"[..])
    );
    assert!(
        !c.swap_if_equal(&k, &held, None, ttl)
            .await
            .expect("stale delete")
    );
    assert!(
        c.swap_if_equal(&k, b"renewed", None, ttl)
            .await
            .expect("delete")
    );
    assert_eq!(c.get(&k).await.expect("get"), None);
    assert!(
        !c.swap_if_equal(&k, b"renewed", Some(Bytes::new()), ttl)
            .await
            .expect("swap of an absent key")
    );
    assert_eq!(c.get(&k).await.expect("get"), None);
}

/// One writer per namespace: while a lease is held a second acquisition is refused with
/// `Conflict` (or waits, then succeeds once the holder releases); an index update fenced by a
/// lease that was taken over is refused and changes nothing.
pub async fn lease_excludes_other_writers(b: Arc<dyn CacheBackend>) {
    use template_cache_core::{ErrorKind, Lease, LeaseConfig};
    let c = Cache::new(b);
    let ns = fresh_namespace();
    let cfg = LeaseConfig::default();
    let first = Lease::acquire(&c, &ns, &cfg).await.expect("first writer");
    let err = Lease::acquire(&c, &ns, &cfg)
        .await
        .expect_err("second writer");
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    assert!(err.to_string().contains("busy"), "{err}");
    let fence = first.fence();
    let entry = IndexEntry {
        hash: ContentHash::of(b"x"),
        size: 1,
        pending: false,
    };
    let change = |name: &str| IndexChanges {
        upserts: vec![(name.to_owned(), entry)],
        removals: vec![],
    };
    index::update(&c, &ns, &change("a"), Some(&fence))
        .await
        .expect("fenced update by the holder");
    // A waiting writer gets the namespace once the holder releases it.
    let waiting = {
        let (c, ns) = (c.clone(), ns.clone());
        let cfg = LeaseConfig {
            wait: Some(Duration::from_secs(20)),
            ..cfg
        };
        tokio::spawn(async move { Lease::acquire(&c, &ns, &cfg).await })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    first.release().await;
    let second = waiting.await.expect("task").expect("the waiting writer");
    // The first writer's fence no longer holds: its index updates change nothing.
    let err = index::update(&c, &ns, &change("b"), Some(&fence))
        .await
        .expect_err("a stale fence");
    assert_eq!(err.kind(), ErrorKind::Conflict, "{err}");
    let snap = index::load(&c, &ns).await.expect("load").expect("index");
    assert!(snap.entries.contains_key("a") && !snap.entries.contains_key("b"));
    second.release().await;
    assert_eq!(c.get(&ns.lease_key()).await.expect("get"), None, "released");
    crate::fixtures::cleanup(c.backend(), &ns).await;
}
