//! The per-namespace index (manifest): template name → content hash, size and state.
//!
//! The index lets a quick check compare hashes without transferring content and find orphaned
//! entries on backends that cannot list keys. Engines write it *before* the entries it
//! describes (marking them `pending`) and clear `pending` after, so a crash at any point leaves
//! every written entry findable (see `docs/format.md`).
//!
//! This module holds the model; each layout a backend can declare
//! ([`crate::backend::IndexLayout`]) has its own file: [`sharded`] and [`hash`].

mod entries;
pub mod hash;
pub mod sharded;

pub use entries::{IndexEntries, Marks};

use crate::backend::{Cache, Fence, IndexLayout};
use crate::error::{Error, ErrorKind, Result};
use crate::format::key::{ContentHash, Namespace};

/// Reads the index of `namespace` in the layout the backend declares; `None` if there is none.
pub async fn load(cache: &Cache, namespace: &Namespace) -> Result<Option<IndexSnapshot>> {
    load_as(cache, namespace, true).await
}

/// [`load`], keeping no names ([`IndexEntries::without_names`]): what comparing with a scan
/// needs, in three quarters of the memory. The names of entries no file matched are read
/// again with [`names_where`].
pub async fn load_without_names(
    cache: &Cache,
    namespace: &Namespace,
) -> Result<Option<IndexSnapshot>> {
    load_as(cache, namespace, false).await
}

async fn load_as(
    cache: &Cache,
    namespace: &Namespace,
    names: bool,
) -> Result<Option<IndexSnapshot>> {
    match cache.index_layout() {
        IndexLayout::Sharded => sharded::load_as(cache, namespace, names).await,
        IndexLayout::Hash => hash::load_as(cache, namespace, names).await,
    }
}

/// Reads the index of `namespace` again, a page (or shard) at a time, returning the names for
/// which `wanted` holds, sorted: the names behind a few entries of an index loaded without
/// names, never the whole index at once. Unreadable parts are skipped (the load that came
/// before reported them).
pub async fn names_where(
    cache: &Cache,
    namespace: &Namespace,
    wanted: impl FnMut(&str) -> bool,
) -> Result<Vec<String>> {
    let mut names = match cache.index_layout() {
        IndexLayout::Sharded => sharded::names_where(cache, namespace, wanted).await?,
        IndexLayout::Hash => hash::names_where(cache, namespace, wanted).await?,
    };
    names.sort_unstable();
    names.dedup();
    Ok(names)
}

/// Applies `changes` to the index of `namespace`, creating it if needed. Each call leaves a
/// readable index, even if the process stops in the middle.
///
/// With a `fence` (the writer's lease), nothing is written unless the lease still holds:
/// checked atomically with each write in the hash layout, and before the writes in the sharded
/// layout (whose writes are whole shards, last writer wins).
pub async fn update(
    cache: &Cache,
    namespace: &Namespace,
    changes: &IndexChanges,
    fence: Option<&Fence>,
) -> Result<()> {
    if changes.is_empty() {
        return Ok(());
    }
    match cache.index_layout() {
        IndexLayout::Sharded => {
            if let Some(f) = fence {
                check_fence(cache, f).await?;
            }
            sharded::update(cache, namespace, changes).await
        }
        IndexLayout::Hash => hash::update(cache, namespace, changes, fence).await,
    }
}

async fn check_fence(cache: &Cache, fence: &Fence) -> Result<()> {
    match cache.get(&fence.key).await? {
        Some(v) if v.starts_with(&fence.token) => Ok(()),
        _ => Err(Error::new(
            ErrorKind::Conflict,
            format!(
                "the write lease {} is no longer ours; index left unchanged",
                fence.key
            ),
        )),
    }
}

/// What the index knows of one template.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IndexEntry {
    /// Hash of the content last written (or about to be written, if `pending`).
    pub hash: ContentHash,
    /// Content size in bytes.
    pub size: u64,
    /// A write was started but not confirmed: the stored entry must be fetched to be trusted.
    pub pending: bool,
}

/// The index as read from a backend.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct IndexSnapshot {
    /// Every entry that could be read.
    pub entries: IndexEntries,
    /// Descriptions of parts of the index that were lost (evicted) or unreadable. Names in them
    /// are unknown: orphans they held can only be found on backends that list keys.
    pub lost: Vec<String>,
}

/// A set of changes to apply to an index.
#[derive(Clone, Debug, Default)]
pub struct IndexChanges {
    /// Entries to insert or replace.
    pub upserts: Vec<(String, IndexEntry)>,
    /// Names to remove.
    pub removals: Vec<String>,
}

impl IndexChanges {
    /// Whether there is nothing to change.
    pub fn is_empty(&self) -> bool {
        self.upserts.is_empty() && self.removals.is_empty()
    }
}
