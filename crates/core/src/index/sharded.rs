//! The sharded index layout ([`crate::backend::IndexLayout::Sharded`]): a root record and
//! generation-tagged shards stored under ordinary keys, for stores that only hold values.
use std::collections::BTreeMap;

use bytes::{BufMut, Bytes, BytesMut};

use super::{IndexChanges, IndexEntries, IndexEntry, IndexSnapshot};
use crate::backend::Cache;
use crate::error::{Error, ErrorKind, Result};
use crate::format::bytes::Reader;
use crate::format::key::{ContentHash, Namespace};

/// Magic of the index root record.
pub const ROOT_MAGIC: &[u8; 4] = b"TPLX";
/// Magic of an index shard record.
pub const SHARD_MAGIC: &[u8; 4] = b"TPLS";
/// Index format version.
pub const INDEX_VERSION: u8 = 1;
/// Target encoded size of one shard; a shard over this triggers a reshard.
pub const SHARD_TARGET_BYTES: usize = 512 * 1024;
/// The most shards an index may have (a power of two): 32 GiB of index at 512 KiB a shard. A
/// root claiming more is corrupt, so a hostile root cannot make a reader allocate without bound.
pub const MAX_SHARDS: u32 = 1 << 16;
const ENTRY_FIXED: usize = 2 + 32 + 8 + 1;
const SHARD_HEADER: usize = 4 + 1 + 1 + 2 + 8 + 4 + 4 + 4;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Root {
    generation: u64,
    shard_count: u32,
    entries: u64,
}

type Shard = BTreeMap<String, IndexEntry>;

/// The shard that holds `name` among `shard_count` shards.
pub fn shard_of(name: &str, shard_count: u32) -> u32 {
    let h = ContentHash::of(name.as_bytes());
    u32::from_be_bytes([h.0[0], h.0[1], h.0[2], h.0[3]]) % shard_count.max(1)
}

fn encode_root(root: &Root) -> Bytes {
    let mut b = BytesMut::with_capacity(28);
    b.put_slice(ROOT_MAGIC);
    b.put_u8(INDEX_VERSION);
    b.put_u8(0);
    b.put_u16(0);
    b.put_u64(root.generation);
    b.put_u32(root.shard_count);
    b.put_u64(root.entries);
    b.freeze()
}

fn decode_root(bytes: &[u8]) -> Result<Root> {
    let mut r = Reader { bytes, pos: 0 };
    let ok = r.take(4) == Some(ROOT_MAGIC.as_slice()) && r.u8() == Some(INDEX_VERSION);
    let (_, _, generation, shard_count, entries) = (r.u8(), r.u16(), r.u64(), r.u32(), r.u64());
    match (ok, generation, shard_count, entries) {
        (true, Some(generation), Some(shard_count), Some(entries))
            if shard_count.is_power_of_two() && shard_count <= MAX_SHARDS && r.is_empty() =>
        {
            Ok(Root {
                generation,
                shard_count,
                entries,
            })
        }
        (true, _, Some(n), _) if !(n.is_power_of_two() && n <= MAX_SHARDS) => Err(Error::new(
            ErrorKind::Corrupt,
            format!(
                "index root record claims {n} shards (a power of two up to {MAX_SHARDS} expected)"
            ),
        )),
        _ => Err(Error::new(
            ErrorKind::Corrupt,
            "index root record is malformed",
        )),
    }
}

/// Decodes `bytes` as an index root, then as shard 0 of a one-shard root of generation 1:
/// the entry point of the fuzz targets under `fuzz/`. Returns how many entries decoded.
#[doc(hidden)]
pub fn fuzz_decode(bytes: &[u8]) -> usize {
    let _ = decode_root(bytes);
    let root = Root {
        generation: u64::from_be_bytes([0, 0, 0, 0, 0, 0, 0, 1]),
        shard_count: 1,
        entries: 0,
    };
    decode_shard(bytes, &root, 0).map_or(0, |s| s.len())
}

fn shard_len(shard: &Shard) -> usize {
    SHARD_HEADER + shard.keys().map(|n| n.len() + ENTRY_FIXED).sum::<usize>()
}

fn encode_shard(root: &Root, shard_no: u32, shard: &Shard) -> Result<Bytes> {
    let mut b = BytesMut::with_capacity(shard_len(shard));
    b.put_slice(SHARD_MAGIC);
    b.put_u8(INDEX_VERSION);
    b.put_u8(0);
    b.put_u16(0);
    b.put_u64(root.generation);
    b.put_u32(shard_no);
    b.put_u32(root.shard_count);
    b.put_u32(u32::try_from(shard.len()).map_err(|_| {
        Error::new(
            ErrorKind::ValueTooLarge,
            "index shard holds over 2^32 entries",
        )
    })?);
    for (name, e) in shard {
        let len = u16::try_from(name.len()).map_err(|_| {
            Error::new(
                ErrorKind::ConfigInvalid,
                format!("template name too long: {name:.60}"),
            )
        })?;
        b.put_u16(len);
        b.put_slice(name.as_bytes());
        b.put_slice(&e.hash.0);
        b.put_u64(e.size);
        b.put_u8(u8::from(e.pending));
    }
    Ok(b.freeze())
}

fn decode_shard(bytes: &[u8], root: &Root, shard_no: u32) -> Result<Shard> {
    let bad = |why: &str| Error::new(ErrorKind::Corrupt, format!("index shard {shard_no}: {why}"));
    let mut r = Reader { bytes, pos: 0 };
    if r.take(4) != Some(SHARD_MAGIC.as_slice()) || r.u8() != Some(INDEX_VERSION) {
        return Err(bad("bad magic or version"));
    }
    let (_, _) = (r.u8(), r.u16());
    let (Some(generation), Some(no), Some(count), Some(n)) = (r.u64(), r.u32(), r.u32(), r.u32())
    else {
        return Err(bad("truncated header"));
    };
    if generation != root.generation || no != shard_no || count != root.shard_count {
        return Err(bad("belongs to another index generation"));
    }
    let mut shard = Shard::new();
    for _ in 0..n {
        let name = r
            .u16()
            .and_then(|l| r.take(l as usize))
            .and_then(|s| std::str::from_utf8(s).ok())
            .ok_or_else(|| bad("truncated or non-UTF-8 name"))?;
        let (Some(hash), Some(size), Some(flags)) = (r.hash(), r.u64(), r.u8()) else {
            return Err(bad("truncated entry"));
        };
        shard.insert(
            name.to_owned(),
            IndexEntry {
                hash,
                size,
                pending: flags & 1 == 1,
            },
        );
    }
    if !r.is_empty() {
        return Err(bad("trailing bytes"));
    }
    Ok(shard)
}

async fn read_root(b: &Cache, ns: &Namespace) -> Result<Option<Root>> {
    let key = ns.index_root_key();
    match b.get(&key).await? {
        None => Ok(None),
        Some(v) => decode_root(&v).map(Some).map_err(|e| e.context(&key)),
    }
}

/// Reads shards `nos` of `root`; unreadable ones are reported in the second vector.
async fn read_shards(
    b: &Cache,
    ns: &Namespace,
    root: &Root,
    nos: &[u32],
) -> Result<(Vec<(u32, Shard)>, Vec<String>)> {
    let mut shards = Vec::with_capacity(nos.len());
    let lost = read_shards_each(b, ns, root, nos, |no, shard| shards.push((no, shard))).await?;
    Ok((shards, lost))
}

/// Reads shards `nos` of `root`, 16 per call, handing each decoded shard to `each` as it
/// arrives (so that no more than one call's shards are held); returns the unreadable ones.
async fn read_shards_each(
    b: &Cache,
    ns: &Namespace,
    root: &Root,
    nos: &[u32],
    mut each: impl FnMut(u32, Shard),
) -> Result<Vec<String>> {
    let mut lost = Vec::new();
    for chunk_nos in nos.chunks(16) {
        let chunk_keys: Vec<String> = chunk_nos
            .iter()
            .map(|&i| ns.index_shard_key(root.generation, i))
            .collect();
        let values = b.get_many(&chunk_keys).await?;
        for ((&no, key), value) in chunk_nos.iter().zip(&chunk_keys).zip(values) {
            match value.map(|v| decode_shard(&v, root, no)) {
                Some(Ok(shard)) => each(no, shard),
                Some(Err(e)) => lost.push(format!("{key}: {}", e.message())),
                None => lost.push(format!("{key}: index shard missing (evicted?)")),
            }
        }
    }
    Ok(lost)
}

/// Loads the whole index; `None` if the namespace has no index root.
pub async fn load(b: &Cache, ns: &Namespace) -> Result<Option<IndexSnapshot>> {
    load_as(b, ns, true).await
}

/// [`load`], keeping names or not ([`IndexEntries::without_names`]).
pub async fn load_as(b: &Cache, ns: &Namespace, names: bool) -> Result<Option<IndexSnapshot>> {
    let root = match read_root(b, ns).await {
        Ok(Some(root)) => root,
        Ok(None) => return Ok(None),
        Err(e) if e.kind() == ErrorKind::Corrupt => {
            return Ok(Some(IndexSnapshot {
                entries: IndexEntries::default(),
                lost: vec![e.to_string()],
            }));
        }
        Err(e) => return Err(e),
    };
    let nos: Vec<u32> = (0..root.shard_count).collect();
    // Shards go into the compact map as they arrive: never every shard's map at once. The map
    // grows with what was decoded, never by the root's (untrusted) entry count.
    let mut entries = if names {
        IndexEntries::default()
    } else {
        IndexEntries::without_names(0)
    };
    let lost = read_shards_each(b, ns, &root, &nos, |_, shard| entries.extend(shard)).await?;
    Ok(Some(IndexSnapshot { entries, lost }))
}

/// The names for which `wanted` holds, a shard at a time (unreadable shards skipped).
pub async fn names_where(
    b: &Cache,
    ns: &Namespace,
    mut wanted: impl FnMut(&str) -> bool,
) -> Result<Vec<String>> {
    let root = match read_root(b, ns).await {
        Ok(Some(root)) => root,
        Err(e) if e.kind() != ErrorKind::Corrupt => return Err(e),
        // Gone or damaged since it was loaded: the load reported what it could not read.
        _ => return Ok(Vec::new()),
    };
    let nos: Vec<u32> = (0..root.shard_count).collect();
    let mut out = Vec::new();
    read_shards_each(b, ns, &root, &nos, |_, shard| {
        out.extend(shard.into_keys().filter(|n| wanted(n)));
    })
    .await?;
    Ok(out)
}

fn shard_count_for(total_bytes: usize, max_value: Option<usize>) -> u32 {
    let target = max_value
        .map_or(SHARD_TARGET_BYTES, |m| m.min(SHARD_TARGET_BYTES))
        .max(4096);
    let needed = (total_bytes * 4 / 3) / target + 1;
    u32::try_from(needed.next_power_of_two()).unwrap_or(u32::MAX)
}

/// Applies `changes`, creating the index if needed and resharding when a shard outgrows
/// [`SHARD_TARGET_BYTES`] or the backend's maximum value size.
pub async fn update(b: &Cache, ns: &Namespace, changes: &IndexChanges) -> Result<()> {
    if changes.is_empty() {
        return Ok(());
    }
    let max_value = b.capabilities().max_value_bytes;
    let root = read_root(b, ns).await.or_else(|e| {
        if e.kind() == ErrorKind::Corrupt {
            Ok(None)
        } else {
            Err(e)
        }
    })?;
    let Some(root) = root else {
        // No index yet (or it was evicted): write a fresh generation from the changes alone.
        let mut all = IndexEntries::default();
        apply(&mut all, changes);
        return write_generation(b, ns, all, None, max_value).await;
    };
    // Group the changes by shard, hashing each name once.
    type Group<'a> = (Vec<&'a (String, IndexEntry)>, Vec<&'a String>);
    let mut groups: BTreeMap<u32, Group<'_>> = BTreeMap::new();
    for u in &changes.upserts {
        groups
            .entry(shard_of(&u.0, root.shard_count))
            .or_default()
            .0
            .push(u);
    }
    for name in &changes.removals {
        groups
            .entry(shard_of(name, root.shard_count))
            .or_default()
            .1
            .push(name);
    }
    let nos: Vec<u32> = groups.keys().copied().collect();
    let (mut shards, lost) = read_shards(b, ns, &root, &nos).await?;
    // A lost shard is recreated from the changes alone: its other names are unknown anyway.
    // Say so: the orphans it listed can no longer be found through the index.
    for what in &lost {
        tracing::warn!(
            lost = %what,
            "an index shard was lost (evicted or damaged) and is re-created from this update alone; \
             the orphans it listed can only be found by listing keys (a deep check, where the \
             backend can list)"
        );
        metrics::counter!("tcache_index_shards_lost_total").increment(1);
    }
    for &no in &nos {
        if !shards.iter().any(|(n, _)| *n == no) {
            shards.push((no, Shard::new()));
        }
    }
    let mut delta: i64 = 0;
    for (no, shard) in &mut shards {
        let before = shard.len() as i64;
        if let Some((upserts, removals)) = groups.get(no) {
            for (name, e) in upserts {
                shard.insert(name.clone(), *e);
            }
            for name in removals {
                shard.remove(*name);
            }
        }
        delta += shard.len() as i64 - before;
    }
    let limit = max_value
        .map_or(SHARD_TARGET_BYTES, |m| m.min(SHARD_TARGET_BYTES))
        .max(4096);
    if shards.iter().any(|(_, s)| shard_len(s) > limit) {
        // Reshard: load everything, write a new generation, switch the root, drop the old one.
        let mut all = load(b, ns).await?.map(|s| s.entries).unwrap_or_default();
        apply(&mut all, changes);
        return write_generation(b, ns, all, Some(root), max_value).await;
    }
    let entries = root.entries.saturating_add_signed(delta);
    let new_root = Root { entries, ..root };
    let mut writes = Vec::with_capacity(shards.len());
    for (no, shard) in &shards {
        writes.push((
            ns.index_shard_key(root.generation, *no),
            encode_shard(&new_root, *no, shard)?,
        ));
    }
    for chunk in writes.chunks(16) {
        b.set_many(chunk).await?;
    }
    if new_root != root {
        b.set(&ns.index_root_key(), encode_root(&new_root)).await?;
    }
    Ok(())
}

fn apply(all: &mut IndexEntries, changes: &IndexChanges) {
    for (name, e) in &changes.upserts {
        all.insert(name, *e);
    }
    for name in &changes.removals {
        all.remove(name);
    }
}

async fn write_generation(
    b: &Cache,
    ns: &Namespace,
    all: IndexEntries,
    old: Option<Root>,
    max_value: Option<usize>,
) -> Result<()> {
    let total: usize = all.keys().map(|n| n.len() + ENTRY_FIXED).sum();
    let shard_count = shard_count_for(total, max_value);
    let mut generation = fastrand::u64(1..);
    while old.is_some_and(|o| o.generation == generation) {
        generation = fastrand::u64(1..);
    }
    let root = Root {
        generation,
        shard_count,
        entries: all.len() as u64,
    };
    let mut shards: Vec<Shard> = (0..shard_count).map(|_| Shard::new()).collect();
    for (name, e) in all.iter() {
        let no = shard_of(name, shard_count) as usize;
        shards[no].insert(name.to_owned(), e);
    }
    let mut batch = Vec::new();
    for (no, shard) in shards.iter().enumerate() {
        let value = encode_shard(&root, no as u32, shard)?;
        let key = ns.index_shard_key(generation, no as u32);
        batch.push((key, value));
        if batch.len() == 16 {
            b.set_many(&batch).await?;
            batch.clear();
        }
    }
    if !batch.is_empty() {
        b.set_many(&batch).await?;
    }
    b.set(&ns.index_root_key(), encode_root(&root)).await?;
    if let Some(old) = old {
        let stale: Vec<String> = (0..old.shard_count)
            .map(|i| ns.index_shard_key(old.generation, i))
            .collect();
        for chunk in stale.chunks(256) {
            // Stale shards are unreferenced garbage: failing to delete them is harmless.
            if let Err(e) = b.delete_many(chunk).await {
                tracing::warn!(error = %e, "could not delete a stale index generation");
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shard_round_trip_and_garbage() {
        let root = Root {
            generation: 9,
            shard_count: 2,
            entries: 1,
        };
        let mut s = Shard::new();
        s.insert(
            "a/b".into(),
            IndexEntry {
                hash: ContentHash::of(b"x"),
                size: 1,
                pending: true,
            },
        );
        let enc = encode_shard(&root, 1, &s).unwrap();
        assert_eq!(enc.len(), shard_len(&s));
        assert_eq!(decode_shard(&enc, &root, 1).unwrap(), s);
        assert!(decode_shard(&enc, &root, 0).is_err());
        assert!(decode_shard(&enc[..enc.len() - 1], &root, 1).is_err());
        assert_eq!(decode_root(&encode_root(&root)).unwrap(), root);
        assert!(decode_root(b"TPLX").is_err());
    }

    #[test]
    fn shard_counts_grow_with_size_and_respect_value_limits() {
        assert_eq!(shard_count_for(0, None), 1);
        assert_eq!(shard_count_for(100_000 * 90, None), 32);
        assert!(shard_count_for(100_000 * 90, Some(1 << 20)) >= 16);
    }

    #[test]
    fn hostile_roots_are_corrupt_not_fatal() {
        for shard_count in [0, 3, MAX_SHARDS * 2, u32::MAX] {
            let root = Root {
                generation: 1,
                shard_count,
                entries: u64::MAX,
            };
            let e = decode_root(&encode_root(&root)).unwrap_err();
            assert_eq!(e.kind(), ErrorKind::Corrupt, "{shard_count}");
        }
        let root = Root {
            generation: 1,
            shard_count: MAX_SHARDS,
            entries: u64::MAX,
        };
        assert_eq!(decode_root(&encode_root(&root)).unwrap(), root);
    }

    use proptest::prelude::*;

    fn sample_shard() -> (Root, Bytes) {
        let root = Root {
            generation: 7,
            shard_count: 4,
            entries: 3,
        };
        let mut s = Shard::new();
        for (i, n) in ["a.html", "b/c.html", "d"].iter().enumerate() {
            s.insert(
                (*n).into(),
                IndexEntry {
                    hash: ContentHash::of(n.as_bytes()),
                    size: i as u64,
                    pending: i == 1,
                },
            );
        }
        let enc = encode_shard(&root, 2, &s).unwrap();
        (root, enc)
    }

    proptest! {
        #[test]
        fn decoders_never_panic_on_any_bytes(data in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = decode_root(&data);
            let (root, _) = sample_shard();
            let _ = decode_shard(&data, &root, 2);
        }

        #[test]
        fn decoders_never_panic_on_mutated_records(
            flips in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..6),
            cut in any::<prop::sample::Index>(),
        ) {
            let (root, enc) = sample_shard();
            for original in [enc.to_vec(), encode_root(&root).to_vec()] {
                let mut v = original.clone();
                for (i, b) in &flips {
                    let i = i.index(v.len());
                    v[i] ^= b;
                }
                let v = &v[..cut.index(v.len() + 1)];
                // A decoded shard never holds more entries than its bytes can describe.
                if let Ok(shard) = decode_shard(v, &root, 2) {
                    prop_assert!(shard.len() * ENTRY_FIXED <= v.len());
                }
                if let Ok(r) = decode_root(v) {
                    prop_assert!(r.shard_count.is_power_of_two() && r.shard_count <= MAX_SHARDS);
                }
            }
        }
    }
}
