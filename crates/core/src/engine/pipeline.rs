//! The machinery both engines share: backend calls with retries, chunking, and the write
//! pipeline that marks the index, writes records in throttled batches, and confirms the index.

use std::sync::Arc;

use bytes::Bytes;
use futures_util::StreamExt;
use tokio_util::sync::CancellationToken;

use super::lease::{LeaseConfig, SharedLease};
use crate::backend::{Cache, CacheBackend, Fence};
use crate::collections::FastMap;
use crate::config::{EngineConfig, ProgressHandle};
use crate::engine::report::Failure;
use crate::engine::throttle::{Limiters, RetryPolicy, Throttle, batch_ranges, batches};
use crate::error::{Error, Result};
use crate::format::key::{ContentHash, Namespace};
use crate::format::record::Record;
use crate::index::{IndexChanges, IndexEntry, IndexSnapshot};
use crate::source::files::Files;
use crate::source::scan::{Scan, SourceFile};
use crate::source::{Loaded, Source};

/// Everything an engine run needs: backend, namespace, source and load limits.
#[derive(Debug)]
pub(crate) struct Ctx {
    pub cache: Cache,
    pub namespace: Namespace,
    pub source: Arc<Source>,
    pub throttle: Throttle,
    pub retry: RetryPolicy,
    pub limiters: Arc<Limiters>,
    pub progress: Option<ProgressHandle>,
    pub lease_config: LeaseConfig,
    /// The namespace write lease, while this run writes.
    lease: SharedLease,
    /// The lease is shared with other engines ([`EngineConfig::shared_lease`]): runs leave it
    /// held; its owner releases it.
    lease_shared: bool,
}

/// What the write pipeline did.
#[derive(Debug, Default)]
pub(crate) struct WriteOutcome {
    /// How many templates were written (the names of the others are in `failed`).
    pub written: usize,
    /// Names that failed.
    pub failed: Vec<Failure>,
    /// Encoded bytes written.
    pub bytes: u64,
}

/// Names per index update (mark or confirmation) of the write pipeline where the index takes
/// updates by field: a few batches, so that marking stays ahead of the writers.
const INDEX_UPDATE_UNIT: usize = 2048;

/// What one batch of the write pipeline did.
#[derive(Debug, Default)]
struct BatchOutcome {
    /// Names written, with their new index entries (to confirm).
    written: Vec<(String, IndexEntry)>,
    /// Names that failed.
    failed: Vec<Failure>,
    /// Encoded bytes written.
    bytes: u64,
}

/// A batch handed from the marker to the writers.
enum Marked {
    /// Marked pending: to be written.
    Ready(Vec<SourceFile>),
    /// Its mark failed: not to be written.
    Unmarked(Vec<SourceFile>, Arc<Error>),
}

/// Batches from `groups` until they hold at least `unit` names (or `groups` ends).
fn take_unit(
    groups: &mut impl Iterator<Item = Vec<SourceFile>>,
    unit: usize,
) -> Vec<Vec<SourceFile>> {
    let (mut taken, mut names) = (Vec::new(), 0);
    while names < unit
        && let Some(group) = groups.next()
    {
        names += group.len();
        taken.push(group);
    }
    taken
}

/// The index changes that mark the files of `batches` pending, keeping each one's hash from
/// `previous`.
fn pending_marks(
    batches: &[Vec<SourceFile>],
    previous: &FastMap<String, IndexEntry>,
) -> IndexChanges {
    IndexChanges {
        upserts: batches
            .iter()
            .flatten()
            .map(|f| {
                let prev = previous.get(&f.name);
                let entry = IndexEntry {
                    hash: prev.map(|e| e.hash).unwrap_or_default(),
                    size: prev.map_or(f.fingerprint.size, |e| e.size),
                    pending: true,
                };
                (f.name.clone(), entry)
            })
            .collect(),
        removals: Vec::new(),
    }
}

impl Ctx {
    pub fn new(backend: Arc<dyn CacheBackend>, config: EngineConfig) -> Result<Self> {
        let limiters = Arc::new(Limiters::new(&config.throttle)?);
        config.lease.validate()?;
        config.retry.validate()?;
        let source = Source::new(config.source)?;
        Ok(Ctx {
            cache: Cache::new(backend),
            namespace: config.namespace,
            source,
            throttle: config.throttle,
            retry: config.retry,
            limiters,
            progress: config.progress,
            lease_config: config.lease,
            lease_shared: config.shared_lease.is_some(),
            lease: config.shared_lease.unwrap_or_default(),
        })
    }

    /// Another context over the same cache, source (fingerprints), rate limits and lease: for
    /// a second engine of the same process.
    pub fn sibling(&self) -> Ctx {
        Ctx {
            cache: self.cache.clone(),
            namespace: self.namespace.clone(),
            source: Arc::clone(&self.source),
            throttle: self.throttle,
            retry: self.retry,
            limiters: Arc::clone(&self.limiters),
            progress: self.progress.clone(),
            lease_config: self.lease_config,
            lease_shared: self.lease_shared,
            lease: self.lease.clone(),
        }
    }

    /// Announces a phase of `total` items to the progress receiver, if any.
    pub fn phase(&self, name: &'static str, total: usize) {
        if let Some(p) = &self.progress {
            p.0.phase(name, total as u64);
        }
    }

    /// Announces a phase whose amount of work is unknown in advance.
    pub fn phase_unknown_total(&self, name: &'static str) {
        if let Some(p) = &self.progress {
            p.0.phase_unknown_total(name);
        }
    }

    /// Reports `n` items done.
    pub fn advance(&self, n: usize) {
        if let Some(p) = &self.progress {
            p.0.advance(n as u64);
        }
    }

    /// Reports `bytes` more bytes moved in the current phase.
    pub fn advance_bytes(&self, bytes: u64) {
        if let Some(p) = &self.progress
            && bytes > 0
        {
            p.0.advance_bytes(bytes);
        }
    }

    /// Walks the template tree as the `"scanning"` phase, counting the files found.
    pub async fn scan(&self) -> Result<Scan> {
        self.phase_unknown_total("scanning");
        let progress = self.progress.clone();
        self.source
            .scan_counting(move |n| {
                if let Some(p) = &progress {
                    p.0.advance(n);
                }
            })
            .await
    }

    /// Ends progress reporting.
    pub fn finish(&self) {
        if let Some(p) = &self.progress {
            p.0.finish();
        }
    }

    /// Keys per backend call that transfers no values (existence, deletion): the backend's
    /// batch limit, or 1,000.
    pub fn key_chunk(&self) -> usize {
        self.cache
            .capabilities()
            .batch_max_keys
            .unwrap_or(1000)
            .max(1)
    }

    /// Keys per backend batch call that transfers values.
    pub fn chunk(&self) -> usize {
        let cap = self
            .cache
            .capabilities()
            .batch_max_keys
            .unwrap_or(usize::MAX);
        self.throttle.batch_max_templates.min(cap).max(1)
    }

    /// Loads the index with retries, with names or without ([`crate::index::load_without_names`]);
    /// a namespace without one yields an empty snapshot.
    pub async fn load_index(&self, names: bool) -> Result<(IndexSnapshot, bool)> {
        let (r, _) = self
            .retry
            .run(|| async {
                if names {
                    crate::index::load(&self.cache, &self.namespace).await
                } else {
                    crate::index::load_without_names(&self.cache, &self.namespace).await
                }
            })
            .await;
        let r =
            r.map_err(|e| e.context(format!("reading the index of namespace {}", self.namespace)))?;
        Ok(match r {
            Some(s) => (s, true),
            None => (IndexSnapshot::default(), false),
        })
    }

    /// The names of the entries of `entries` (loaded without names) that no scanned file
    /// matched (unmarked in `marks`), read again from the index; none when every entry matched.
    pub async fn unmatched_names(
        &self,
        entries: &crate::index::IndexEntries,
        marks: &crate::index::Marks,
    ) -> Result<Vec<String>> {
        if entries.has_names() {
            let mut names: Vec<String> = entries.unmarked(marks).map(str::to_owned).collect();
            names.sort_unstable();
            return Ok(names);
        }
        if entries.unmarked_count(marks) == 0 {
            return Ok(Vec::new());
        }
        let (r, _) = self
            .retry
            .run(|| {
                crate::index::names_where(&self.cache, &self.namespace, |n| {
                    entries.is_unmarked(n, marks)
                })
            })
            .await;
        r.map_err(|e| {
            e.context(format!(
                "reading the names of unmatched entries of the index of namespace {}",
                self.namespace
            ))
        })
    }

    /// Takes the namespace write lease unless this run holds it already.
    pub async fn hold_lease(&self) -> Result<()> {
        self.lease
            .hold(&self.cache, &self.namespace, &self.lease_config)
            .await
    }

    /// The fence of the held lease, if it still holds.
    async fn fence(&self) -> Result<Fence> {
        self.lease.fence().await
    }

    /// Releases the lease if this run holds it (a shared lease stays held).
    pub async fn release_lease(&self) {
        if !self.lease_shared {
            self.lease.release().await;
        }
    }

    /// Applies index changes with retries, under the write lease (taken if needed).
    pub async fn update_index(&self, changes: &IndexChanges) -> Result<()> {
        if changes.is_empty() {
            return Ok(());
        }
        self.hold_lease().await?;
        let fence = self.fence().await?;
        let update = || async {
            let r = crate::index::update(&self.cache, &self.namespace, changes, Some(&fence)).await;
            match r {
                // The fence failed: the record may have vanished with a restarted server. Take
                // it again if nobody else did, then retry; otherwise stop.
                Err(e) if e.kind() == crate::error::ErrorKind::Conflict => {
                    self.lease.reassert().await?;
                    crate::index::update(&self.cache, &self.namespace, changes, Some(&fence)).await
                }
                other => other,
            }
        };
        let (r, _) = self.retry.run(update).await;
        r.map_err(|e| {
            e.context(format!(
                "updating the index of namespace {}",
                self.namespace
            ))
        })
    }

    /// Runs `op` over `keys` in chunks, `concurrency` chunks at a time, with retries; returns the
    /// per-chunk results in input order. With `rate_limited`, each key counts against the
    /// templates-per-second limit (checks and resolutions are throttled like warms). With
    /// `report`, each finished chunk advances the current progress phase by its keys and the
    /// bytes it fetched.
    pub async fn chunked<T, F, Fut>(
        &self,
        keys: &[String],
        chunk: usize,
        rate_limited: bool,
        report: bool,
        op: F,
    ) -> Vec<(std::ops::Range<usize>, Result<Vec<T>>)>
    where
        T: Weight,
        F: Fn(Vec<String>) -> Fut + Clone,
        Fut: std::future::Future<Output = Result<Vec<T>>>,
    {
        self.chunked_by(
            keys.len(),
            |range| keys[range].to_vec(),
            chunk,
            rate_limited,
            report,
            op,
        )
        .await
    }

    /// [`Self::chunked`] over `len` keys that `keys_of` builds one chunk at a time (from the
    /// chunk's range of indices): only the chunks in flight hold their keys.
    pub async fn chunked_by<T, K, F, Fut>(
        &self,
        len: usize,
        keys_of: K,
        chunk: usize,
        rate_limited: bool,
        report: bool,
        op: F,
    ) -> Vec<(std::ops::Range<usize>, Result<Vec<T>>)>
    where
        T: Weight,
        K: Fn(std::ops::Range<usize>) -> Vec<String>,
        F: Fn(Vec<String>) -> Fut + Clone,
        Fut: std::future::Future<Output = Result<Vec<T>>>,
    {
        let mut out = Vec::new();
        let ranges = batch_ranges(len, chunk.max(1), usize::MAX, |_| 0);
        self.for_each_chunk(ranges, keys_of, rate_limited, report, op, |range, r| {
            out.push((range, r))
        })
        .await;
        out
    }

    /// Runs `op` over the keys of `ranges` (chunks of indices) as [`Self::chunked_by`] does,
    /// handing each chunk's result to `each` in input order as soon as it is ready: at most
    /// `concurrency` chunks (keys and values) are held at once, however many there are.
    pub async fn for_each_chunk<T, K, F, Fut>(
        &self,
        ranges: Vec<std::ops::Range<usize>>,
        keys_of: K,
        rate_limited: bool,
        report: bool,
        op: F,
        mut each: impl FnMut(std::ops::Range<usize>, Result<Vec<T>>),
    ) where
        T: Weight,
        K: Fn(std::ops::Range<usize>) -> Vec<String>,
        F: Fn(Vec<String>) -> Fut + Clone,
        Fut: std::future::Future<Output = Result<Vec<T>>>,
    {
        let mut results = futures_util::stream::iter(ranges)
            .map(|range| {
                let op = op.clone();
                let slice = keys_of(range.clone());
                async move {
                    if rate_limited {
                        self.limiters.admit(slice.len(), 0).await;
                    }
                    let (r, _) = self.retry.run(|| op(slice.clone())).await;
                    if report {
                        self.advance(range.len());
                        if let Ok(values) = &r {
                            self.advance_bytes(values.iter().map(Weight::bytes).sum());
                        }
                    }
                    (range, r)
                }
            })
            .buffered(self.throttle.concurrency);
        while let Some((range, r)) = results.next().await {
            each(range, r);
        }
    }

    /// [`Self::chunked`] over [`Cache::exists_many`], in chunks of [`Self::key_chunk`], for `len`
    /// keys built one chunk at a time: `key_of(i)` is the `i`th key.
    pub async fn exists_chunked_by(
        &self,
        len: usize,
        key_of: impl Fn(usize) -> String,
        rate_limited: bool,
        report: bool,
    ) -> Vec<(std::ops::Range<usize>, Result<Vec<bool>>)> {
        let cache = self.cache.clone();
        self.chunked_by(
            len,
            |range| range.map(&key_of).collect(),
            self.key_chunk(),
            rate_limited,
            report,
            move |k| {
                let c = cache.clone();
                async move { c.exists_many(&k).await }
            },
        )
        .await
    }

    /// Fetches `len` values over [`Cache::get_many`], rate limited and reported as progress, in
    /// chunks of at most [`Self::chunk`] keys and about the batch byte limit, value `i` being
    /// expected to weigh `size_of(i)` bytes: `key_of(i)` is the `i`th key, and `each` receives
    /// every chunk's values in order as they arrive, so only the chunks in flight are held.
    pub async fn get_each(
        &self,
        len: usize,
        key_of: impl Fn(usize) -> String,
        size_of: impl Fn(usize) -> usize,
        each: impl FnMut(std::ops::Range<usize>, Result<Vec<Option<Bytes>>>),
    ) {
        let cache = self.cache.clone();
        let ranges = batch_ranges(len, self.chunk(), self.throttle.batch_max_bytes, size_of);
        self.for_each_chunk(
            ranges,
            |range| range.map(&key_of).collect(),
            true,
            true,
            move |k| {
                let c = cache.clone();
                async move { c.get_many(&k).await }
            },
            each,
        )
        .await
    }

    /// Hashes every file, reading only those whose fingerprint changed. Returns each file's
    /// hash (`None` where it could not be read), in the order of `files`, and the failures.
    pub async fn hash_all<F: Files + ?Sized>(
        &self,
        files: &F,
    ) -> (Vec<Option<ContentHash>>, Vec<Failure>) {
        let mut hashes = {
            let known = self.source.known_hashes();
            super::lookups::on_every_core(
                files.count(),
                || (),
                |(), i| known.get(files.name_at(i), files.fingerprint_at(i)),
            )
            .0
        };
        let to_read: Vec<usize> = (0..files.count())
            .filter(|&i| hashes[i].is_none())
            .collect();
        let failed = self
            .read_and_hash(files, to_read, |i, h| hashes[i] = Some(h))
            .await;
        (hashes, failed)
    }

    /// Reads and hashes the files at positions `to_read` of `files` (recording their
    /// fingerprints), a batch at a time, handing each hash to `each` with its position.
    /// Returns the files that could not be read.
    pub async fn read_and_hash<F: Files + ?Sized>(
        &self,
        files: &F,
        to_read: Vec<usize>,
        mut each: impl FnMut(usize, ContentHash),
    ) -> Vec<Failure> {
        let groups = batches(
            to_read,
            self.throttle.batch_max_templates,
            self.throttle.batch_max_bytes,
            |&i| files.fingerprint_at(i).size as usize,
        );
        let mut failed = Vec::new();
        self.phase("hashing", groups.iter().map(Vec::len).sum());
        // Files are copied for reading one batch at a time; results come back in batch order.
        let mut stream = futures_util::stream::iter(groups)
            .map(|g| async move {
                let loaded = self
                    .source
                    .load_many(g.iter().map(|&i| files.owned_at(i)).collect())
                    .await;
                (g, loaded)
            })
            .buffer_unordered(self.throttle.concurrency.min(4));
        while let Some((group, results)) = stream.next().await {
            self.advance(results.len());
            self.advance_bytes(
                results
                    .iter()
                    .filter_map(|(_, r)| r.as_ref().ok())
                    .map(|l| l.content.len() as u64)
                    .sum(),
            );
            for (i, (f, r)) in group.into_iter().zip(results) {
                match r {
                    Ok(l) => each(i, l.hash),
                    Err(e) => failed.push(Failure::new(f.name, &e, 1)),
                }
            }
        }
        failed
    }

    /// Writes `files` (in the given order) through the index protocol: mark them pending,
    /// write records in throttled batches, then confirm the written ones.
    ///
    /// Three stages run at once: a marker marks units of batches pending ahead of the writers,
    /// the writers write records `concurrency` batches at a time, and a confirmer confirms what
    /// they wrote, a unit at a time. Where the index takes updates by field (the hash layout) a
    /// unit is [`INDEX_UPDATE_UNIT`] names, so index updates overlap the writes; the sharded
    /// layout rewrites shards per update, so its unit is the whole run.
    ///
    /// `previous` holds each name's index entry before the run (its hash is kept while pending).
    /// When the first mark fails nothing is written and the run fails; a later unit whose mark
    /// fails is reported as failed, unwritten. Batches not started when `cancel` fires are not
    /// written (those already marked are left pending).
    pub async fn write_files<F: Files + ?Sized>(
        &self,
        files: &F,
        previous: &FastMap<String, IndexEntry>,
        cancel: &CancellationToken,
    ) -> Result<WriteOutcome> {
        let mut out = WriteOutcome::default();
        if files.count() == 0 {
            return Ok(out);
        }
        let total = files.count();
        let unit = match self.cache.index_layout() {
            crate::backend::IndexLayout::Hash => INDEX_UPDATE_UNIT,
            crate::backend::IndexLayout::Sharded => usize::MAX,
        };
        let ranges = batch_ranges(
            total,
            self.throttle.batch_max_templates.min(self.chunk()),
            self.throttle.batch_max_bytes,
            |i| files.fingerprint_at(i).size as usize + files.name_at(i).len() + 64,
        );
        // Batches are copied out of `files` as the marker reaches them: no second list of files.
        let mut groups = ranges
            .into_iter()
            .map(move |r| r.map(|i| files.owned_at(i)).collect::<Vec<_>>());
        let first = take_unit(&mut groups, unit);
        self.update_index(&pending_marks(&first, previous)).await?;
        self.phase("writing", total);

        let depth = self.throttle.concurrency.saturating_mul(2);
        let (marked_tx, marked_rx) = tokio::sync::mpsc::channel::<Marked>(depth);
        let (confirm_tx, mut confirm_rx) = tokio::sync::mpsc::channel(2);
        let marker = async move {
            let mut batches = first;
            let mut failed = None;
            loop {
                for group in batches {
                    let marked = match &failed {
                        None => Marked::Ready(group),
                        Some(e) => Marked::Unmarked(group, Arc::clone(e)),
                    };
                    if marked_tx.send(marked).await.is_err() {
                        return; // the writers stopped (cancelled)
                    }
                }
                batches = take_unit(&mut groups, unit);
                if batches.is_empty() || cancel.is_cancelled() {
                    return;
                }
                failed = self
                    .update_index(&pending_marks(&batches, previous))
                    .await
                    .err()
                    .map(Arc::new);
            }
        };
        let writers = async {
            // Owned here, so that the marker stops when the writers do.
            let mut marked_rx = marked_rx;
            let marked = futures_util::stream::poll_fn(|cx| marked_rx.poll_recv(cx));
            let mut stream = marked
                .take_while(|_| std::future::ready(!cancel.is_cancelled()))
                .map(|marked| async move {
                    match marked {
                        Marked::Ready(group) => self.write_records(group).await,
                        Marked::Unmarked(group, e) => BatchOutcome {
                            failed: group
                                .into_iter()
                                .map(|f| Failure::new(f.name, &e, self.retry.max_attempts))
                                .collect(),
                            ..Default::default()
                        },
                    }
                })
                .buffer_unordered(self.throttle.concurrency);
            let mut to_confirm = Vec::new();
            while let Some(b) = stream.next().await {
                self.advance(b.written.len() + b.failed.len());
                self.advance_bytes(b.bytes);
                to_confirm.extend(b.written);
                out.failed.extend(b.failed);
                out.bytes += b.bytes;
                if to_confirm.len() >= unit {
                    // The confirmer outlives the writers: it only stops when this side does.
                    let _ = confirm_tx.send(std::mem::take(&mut to_confirm)).await;
                }
            }
            drop(stream);
            drop(marked_rx);
            if !to_confirm.is_empty() {
                let _ = confirm_tx.send(to_confirm).await;
            }
            drop(confirm_tx);
        };
        let confirmer = async {
            let mut written = 0;
            let mut unconfirmed = None;
            while let Some(upserts) = confirm_rx.recv().await {
                // Confirmed entries are dropped: a run never holds every written name.
                written += upserts.len();
                let confirm = IndexChanges {
                    upserts,
                    removals: Vec::new(),
                };
                if let Err(e) = self.update_index(&confirm).await {
                    unconfirmed.get_or_insert(e);
                }
            }
            (written, unconfirmed)
        };
        let ((), (), (written, unconfirmed)) = tokio::join!(marker, writers, confirmer);
        out.written = written;
        if let Some(e) = unconfirmed {
            // The entries were written but stay marked pending: a check verifies them by content.
            tracing::error!(error = %e, "could not confirm written templates in the index");
            out.failed
                .push(Failure::new("(index)".into(), &e, self.retry.max_attempts));
        }
        Ok(out)
    }

    /// Reads, encodes and writes one batch of records (no index update).
    async fn write_records(&self, group: Vec<SourceFile>) -> BatchOutcome {
        let mut out = BatchOutcome::default();
        let loaded = self.source.load_many(group).await;
        let caps = self.cache.capabilities();
        let now = crate::time::now_ns();
        let mut entries: Vec<(String, Bytes)> = Vec::new();
        let mut names: Vec<(String, IndexEntry)> = Vec::new();
        for (f, r) in loaded {
            let Loaded {
                content,
                hash,
                mtime_ns,
            } = match r {
                Ok(l) => l,
                Err(e) => {
                    out.failed.push(Failure::new(f.name, &e, 1));
                    continue;
                }
            };
            let entry = IndexEntry {
                hash,
                size: content.len() as u64,
                pending: false,
            };
            let key = self.namespace.key_for(&f.name);
            // The hash was computed while reading: do not hash the content again.
            let record = Record {
                name: f.name.clone(),
                hash,
                mtime_ns,
                warmed_ns: now,
                content,
            };
            let encoded = match record.encode() {
                Ok(v) => v,
                Err(e) => {
                    out.failed.push(Failure::new(f.name, &e, 1));
                    continue;
                }
            };
            if let Err(e) = caps.check_value_len(&key, encoded.len()) {
                out.failed
                    .push(Failure::new(f.name.clone(), &e.context(&f.name), 1));
                continue;
            }
            entries.push((key, encoded));
            names.push((f.name, entry));
        }
        if entries.is_empty() {
            return out;
        }
        let bytes: usize = entries.iter().map(|(_, v)| v.len()).sum();
        self.limiters.admit(entries.len(), bytes).await;
        // A writer that lost its lease writes nothing more.
        if let Err(e) = self.fence().await {
            out.failed
                .extend(names.into_iter().map(|(name, _)| Failure::new(name, &e, 0)));
            return out;
        }
        let (r, attempts) = self.retry.run(|| self.cache.set_many(&entries)).await;
        match r {
            Ok(()) => {
                out.bytes = bytes as u64;
                out.written = names;
            }
            Err(e) if !e.is_temporary() && entries.len() > 1 => {
                // A permanent batch error may come from one bad entry: isolate it.
                tracing::debug!(error = %e, "batch write failed permanently; writing one by one");
                for ((key, value), (name, entry)) in entries.into_iter().zip(names) {
                    let len = value.len() as u64;
                    let (r, attempts) =
                        self.retry.run(|| self.cache.set(&key, value.clone())).await;
                    match r {
                        Ok(()) => {
                            out.bytes += len;
                            out.written.push((name, entry));
                        }
                        Err(e) => out.failed.push(Failure::new(name, &e, attempts + 1)),
                    }
                }
            }
            Err(e) => {
                for (name, _) in names {
                    out.failed.push(Failure::new(name, &e, attempts));
                }
            }
        }
        out
    }
}

/// The bytes a backend call's result for one key carries, for progress.
pub(crate) trait Weight {
    /// Bytes transferred (none by default: existence checks, deletions).
    fn bytes(&self) -> u64 {
        0
    }
}

impl Weight for bool {}

impl Weight for () {}

impl Weight for Option<Bytes> {
    fn bytes(&self) -> u64 {
        self.as_ref().map_or(0, |b| b.len() as u64)
    }
}

/// Turns a per-chunk error into one error entry per name in the chunk.
pub(crate) fn chunk_failures(names: &[String], e: &Error) -> Vec<Failure> {
    names
        .iter()
        .map(|n| Failure::new(n.clone(), e, 0))
        .collect()
}
