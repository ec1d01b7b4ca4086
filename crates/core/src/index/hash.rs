//! The hash index layout ([`crate::backend::IndexLayout::Hash`]): one hash per namespace under
//! `<namespace>:index`, one field per template name whose value is the entry's SHA-256, size and
//! flags (41 bytes, `docs/format.md`).

use bytes::Bytes;

use super::{IndexChanges, IndexEntries, IndexEntry, IndexSnapshot};
use crate::backend::{Cache, Fence};
use crate::collections::FastMap;
use crate::error::Result;
use crate::format::bytes::Reader;
use crate::format::key::Namespace;

/// Bytes of one field value: SHA-256, size, flags.
pub const VALUE_LEN: usize = 32 + 8 + 1;

/// Encodes one index entry as a field value.
pub fn encode_value(e: &IndexEntry) -> [u8; VALUE_LEN] {
    let mut v = [0u8; VALUE_LEN];
    v[..32].copy_from_slice(&e.hash.0);
    v[32..40].copy_from_slice(&e.size.to_be_bytes());
    v[40] = u8::from(e.pending);
    v
}

/// Decodes a field value; `None` unless it is exactly [`VALUE_LEN`] bytes.
pub fn decode_value(v: &[u8]) -> Option<IndexEntry> {
    let mut r = Reader { bytes: v, pos: 0 };
    let (hash, size, flags) = (r.hash()?, r.u64()?, r.u8()?);
    r.is_empty().then_some(IndexEntry {
        hash,
        size,
        pending: flags & 1 == 1,
    })
}

/// The most entries an index is sized for before its pages arrive (a hint from the server is
/// not allowed to reserve unbounded memory).
const MAX_PRESIZE: usize = 16 << 20;

/// Reads every field; malformed fields are reported in [`IndexSnapshot::lost`].
pub async fn load(cache: &Cache, ns: &Namespace) -> Result<Option<IndexSnapshot>> {
    load_as(cache, ns, true).await
}

/// [`load`], keeping names or not ([`IndexEntries::without_names`]).
pub async fn load_as(cache: &Cache, ns: &Namespace, names: bool) -> Result<Option<IndexSnapshot>> {
    let key = ns.index_root_key();
    // Sized up front where the backend tells the field count: no regrowth of a million
    // entries while the pages come. Only a hint: a failure here is the scan's to report.
    let n = match cache.hash_len(&key).await {
        Ok(Some(n)) => usize::try_from(n).unwrap_or(0).min(MAX_PRESIZE),
        _ => 0,
    };
    let mut snap = IndexSnapshot {
        entries: if names {
            IndexEntries::with_capacity(n)
        } else {
            IndexEntries::without_names(n)
        },
        lost: Vec::new(),
    };
    let mut any = false;
    let at = key.as_str();
    let read = move |cursor: u64| async move {
        cache
            .hash_scan(at, cursor)
            .await
            .map_err(|e| e.context(format!("reading index {at}")))
    };
    let (mut next, mut page) = read(0).await?;
    loop {
        any |= !page.is_empty();
        // The next page is asked for before this one is decoded: the server pages while the
        // process decodes (a cursor only comes with the page before it).
        let following = (next != 0).then(|| read(next));
        let decode = async {
            for (name, value) in std::mem::take(&mut page) {
                match (std::str::from_utf8(&name), decode_value(&value)) {
                    (Ok(n), Some(e)) => {
                        snap.entries.insert(n, e);
                    }
                    _ => snap.lost.push(format!(
                        "{key}: malformed field {:?}",
                        String::from_utf8_lossy(&name)
                    )),
                }
            }
        };
        let Some(following) = following else {
            decode.await;
            // A hash without fields does not exist (Redis removes empty hashes).
            return Ok(any.then_some(snap));
        };
        let (r, ()) = tokio::join!(following, decode);
        (next, page) = r?;
    }
}

/// The field names for which `wanted` holds, a page at a time (malformed fields skipped).
pub async fn names_where(
    cache: &Cache,
    ns: &Namespace,
    mut wanted: impl FnMut(&str) -> bool,
) -> Result<Vec<String>> {
    let key = ns.index_root_key();
    let mut out = Vec::new();
    let mut cursor = 0;
    loop {
        let (next, page) = cache
            .hash_scan(&key, cursor)
            .await
            .map_err(|e| e.context(format!("reading index {key}")))?;
        for (name, _) in page {
            if let Ok(n) = std::str::from_utf8(&name)
                && wanted(n)
            {
                out.push(n.to_owned());
            }
        }
        cursor = next;
        if cursor == 0 {
            return Ok(out);
        }
    }
}

/// Upserts per call: the fields of one call are built just before it, so an update of a
/// million names never holds a copy of them all.
const UPSERTS_PER_CALL: usize = 1000;

/// Sets upserted fields in order (the last upsert of a name wins), then removes removed ones.
pub async fn update(
    cache: &Cache,
    ns: &Namespace,
    changes: &IndexChanges,
    fence: Option<&Fence>,
) -> Result<()> {
    let key = ns.index_root_key();
    let context = |e: crate::error::Error| e.context(format!("updating index {key}"));
    for upserts in changes.upserts.chunks(UPSERTS_PER_CALL) {
        // Within a call the last upsert of a name wins; later calls overwrite earlier ones.
        let mut last: FastMap<&str, &IndexEntry> =
            crate::collections::map_with_capacity(upserts.len());
        for (n, e) in upserts {
            last.insert(n, e);
        }
        let set: Vec<(String, Bytes)> = last
            .into_iter()
            .map(|(n, e)| (n.to_owned(), Bytes::copy_from_slice(&encode_value(e))))
            .collect();
        cache
            .hash_update(&key, &set, &[], fence)
            .await
            .map_err(context)?;
    }
    if !changes.removals.is_empty() {
        cache
            .hash_update(&key, &[], &changes.removals, fence)
            .await
            .map_err(context)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::key::ContentHash;
    use proptest::prelude::*;

    #[test]
    fn values_round_trip() {
        let e = IndexEntry {
            hash: ContentHash::of(b"x"),
            size: 42,
            pending: true,
        };
        assert_eq!(decode_value(&encode_value(&e)), Some(e));
        assert_eq!(decode_value(b"short"), None);
        let mut long = encode_value(&e).to_vec();
        long.push(0);
        assert_eq!(decode_value(&long), None);
    }

    proptest! {
        #[test]
        fn decode_never_panics(data in proptest::collection::vec(any::<u8>(), 0..100)) {
            let _ = decode_value(&data);
        }
    }
}
