//! The consistency checker: compares tree and cache in both directions.
//!
//! A check runs in phases, each a function over one `Findings`: scan ‖ load index, hash,
//! compare with the index, confirm existence, verify fetched entries, classify orphans. The
//! result is a [`CheckReport`] carrying the `Plan` that [`super::resolve`] acts on.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tracing::Instrument;

use super::phases::{self, Phases};
use super::pipeline::{Ctx, chunk_failures};
use super::plan::{Deletion, Kind, Plan};
use super::report::{CheckMode, CheckReport, Failure};
use crate::backend::CacheBackend;
use crate::collections::IdSet;
use crate::config::EngineConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::format::key::ContentHash;
use crate::format::record::Record;
use crate::history::Recorder;
use crate::index::{IndexEntry, IndexSnapshot, Marks};
use crate::source::files::Files;
use crate::source::scan::{FileList, FileRef, Scan};
use crate::source::{KnownHashes, Source};

/// Compares a template tree with a cache namespace; [`Self::resolve`] repairs the differences.
#[derive(Debug)]
pub struct Checker {
    pub(super) ctx: Ctx,
    pub(super) history: Recorder,
}

/// The report under construction: every phase records what it found here, once, so the
/// report's lists and the resolution plan never disagree.
struct Findings {
    report: CheckReport,
    plan: Plan,
}

impl Findings {
    /// A template whose entry must be (re)written from its file.
    fn rewrite(&mut self, kind: Kind, file: FileRef<'_>) {
        self.list(kind).push(file.name.to_owned());
        self.plan.write.push((kind, file.to_owned()));
    }

    /// An entry to delete: an orphan (listed by name) or an unreadable entry (listed by key).
    fn remove(&mut self, kind: Kind, name: Option<String>, key: String) {
        let shown = name.clone().unwrap_or_else(|| key.clone());
        self.list(kind).push(shown);
        self.plan.delete.push(Deletion { kind, name, key });
    }

    fn list(&mut self, kind: Kind) -> &mut Vec<String> {
        match kind {
            Kind::Missing => &mut self.report.missing,
            Kind::Outdated => &mut self.report.outdated,
            Kind::Orphaned => &mut self.report.orphaned,
            Kind::Corrupt => &mut self.report.corrupt,
        }
    }

    fn errors(&mut self, failures: impl IntoIterator<Item = Failure>) {
        self.report.errors.extend(failures);
    }
}

/// Files the index cannot vouch for alone, split by what confirming them takes.
struct Comparison {
    /// Positions (in the scan) of files whose index entry holds the file's hash: only the
    /// entry's existence needs confirming.
    exist_check: Vec<usize>,
    /// Positions of files whose entry must be fetched and verified against the file's hash
    /// (deep mode, pending or unindexed templates).
    fetch: Vec<usize>,
    /// Positions of files whose fingerprint changed (or is new): to read and hash first.
    unknown: Vec<usize>,
    /// The index entries some scanned file matched: the others are orphans.
    marks: Marks,
}

/// What the index says of one file.
#[derive(Clone, Copy, Default)]
enum Verdict {
    /// Its hash is not known yet: read it.
    Unknown,
    /// The index holds the file's hash: confirm the entry exists.
    Indexed,
    /// The index holds another hash (quick mode): outdated without a fetch.
    Outdated,
    /// Fetch and verify the entry.
    #[default]
    Fetch,
}

/// The verdict on a file of hash `h` whose index entry is `entry`.
fn verdict(mode: CheckMode, entry: Option<IndexEntry>, h: ContentHash) -> Verdict {
    match entry {
        Some(e) if mode == CheckMode::Quick && !e.pending && e.hash == h => Verdict::Indexed,
        Some(e) if mode == CheckMode::Quick && !e.pending => Verdict::Outdated,
        _ => Verdict::Fetch,
    }
}

impl Comparison {
    /// Files the file at `i` under its verdict.
    fn place(&mut self, i: usize, verdict: Verdict, files: &FileList, found: &mut Findings) {
        match verdict {
            Verdict::Unknown => self.unknown.push(i),
            Verdict::Indexed => self.exist_check.push(i),
            Verdict::Outdated => found.rewrite(Kind::Outdated, files.at(i)),
            Verdict::Fetch => self.fetch.push(i),
        }
    }
}

impl Checker {
    /// Validates the configuration and loads persisted fingerprints.
    pub fn new(backend: Arc<dyn CacheBackend>, config: EngineConfig) -> Result<Self> {
        let record_history = config.record_history;
        let ctx = Ctx::new(backend, config)?;
        Ok(Checker {
            history: Recorder::new(&ctx.cache, &ctx.namespace, record_history),
            ctx,
        })
    }

    /// The template source (for its statistics).
    pub fn source(&self) -> &Arc<Source> {
        &self.ctx.source
    }

    /// Checks tree and cache in both directions. Errors only when the check cannot run at all
    /// (missing root, unreachable backend); per-item problems are in the report.
    pub async fn check(&self, mode: CheckMode) -> Result<CheckReport> {
        let span = tracing::info_span!("check", namespace = %self.ctx.namespace, ?mode, backend = %self.ctx.cache.describe());
        async {
            let started = self.history.start();
            let r = self.run_check(mode).await;
            self.ctx.finish();
            match &r {
                Ok(rep) => record_outcome(rep),
                Err(e) => {
                    metrics::counter!("tcache_runs_failed_total", "kind" => "check").increment(1);
                    tracing::error!(error = %e, "check failed")
                }
            }
            self.history.check(started, mode, &r).await;
            r
        }
        .instrument(span)
        .await
    }

    async fn run_check(&self, mode: CheckMode) -> Result<CheckReport> {
        let started = Instant::now();
        let ctx = &self.ctx;
        // The walk runs on the blocking pool while the index is read.
        let (scan, index) = tokio::join!(
            phases::timed("scan", ctx.scan()),
            phases::timed("index read", ctx.load_index(false))
        );
        let scan = scan?;
        let (index, index_exists) = index?;
        let mut found = Findings {
            report: CheckReport {
                mode,
                files: scan.files.len(),
                ..Default::default()
            },
            plan: Plan::default(),
        };
        found.errors(
            scan.failures
                .iter()
                .map(|f| Failure::new(f.name.clone(), &f.error, 0)),
        );
        let mut phases = Phases::start();
        found.errors(index.lost.iter().map(|lost| {
            Failure::new(
                "(index)".into(),
                &Error::new(
                    ErrorKind::NotFound,
                    format!(
                        "{lost}; orphans it listed can only be found on backends that list keys"
                    ),
                ),
                0,
            )
        }));

        // Files whose fingerprint vouches for their hash are compared at once; the others are
        // read and hashed, then compared. No list of every file's hash is held: the trusted
        // ones are looked up again where needed, the others kept aside (`read`).
        let mut cmp = {
            let known = ctx.source.known_hashes();
            compare(mode, &scan.files, &known, &index, &mut found)
        };
        phases.done("compare", scan.files.len());
        let to_read = std::mem::take(&mut cmp.unknown);
        let reading = to_read.len();
        let mut read = Vec::new();
        let failed = ctx
            .read_and_hash(&scan.files, to_read, |i, h| read.push((i, h)))
            .await;
        found.errors(failed);
        read.sort_unstable_by_key(|&(i, _)| i);
        {
            let known = ctx.source.known_hashes();
            read.retain(|&(i, h)| {
                let f = scan.files.at(i);
                let entry = index.entries.get(f.name);
                cmp.place(i, verdict(mode, entry, h), &scan.files, &mut found);
                // What the fingerprint store now vouches for is looked up again, like the rest.
                known.get(f.name, f.fingerprint) != Some(h)
            });
        }
        read.shrink_to_fit();
        phases.done("hash", reading);
        self.confirm_existence(&scan.files, &cmp.exist_check, &mut found)
            .await;
        phases.done("existence check", cmp.exist_check.len());
        self.verify(&scan.files, &read, &cmp.fetch, &index, &mut found)
            .await;
        drop(read);
        phases.done("verify", cmp.fetch.len());
        // Only the marks are needed to classify orphans: the lists go now, not at the end.
        let Comparison {
            marks,
            exist_check,
            fetch,
            unknown,
        } = cmp;
        drop((exist_check, fetch, unknown));
        // Every entry is indexed before it is written, so a quick check trusts an intact index
        // for orphans; a deep check, or a missing or damaged index, lists the keys as well.
        let list = mode == CheckMode::Deep || !index_exists || !index.lost.is_empty();
        // Resolution needs the index entries of what it may write (their hash stays while
        // pending); orphans add no writes, so the index can go with them.
        found.plan.previous = found
            .plan
            .write
            .iter()
            .filter_map(|(_, f)| index.entries.get(&f.name).map(|e| (f.name.clone(), e)))
            .collect();
        ctx.source.prune_state(&scan);
        let entries = index.entries.len();
        self.classify_orphans(scan, index, marks, list, &mut found)
            .await?;
        phases.done("orphans", entries);
        ctx.source.save_state();
        phases.done("state save", found.report.files);
        let Findings { mut report, plan } = found;
        for v in [
            &mut report.missing,
            &mut report.outdated,
            &mut report.orphaned,
            &mut report.corrupt,
        ] {
            v.sort();
        }
        report.consistent = report.inconsistencies() == 0 && report.errors.is_empty();
        report.plan = plan;
        report.duration = started.elapsed();
        Ok(report)
    }

    /// Confirms that the entries of files the index vouches for still exist.
    async fn confirm_existence(&self, files: &FileList, at: &[usize], found: &mut Findings) {
        let ns = &self.ctx.namespace;
        self.ctx.phase("checking", at.len());
        let results = self
            .ctx
            .exists_chunked_by(at.len(), |i| ns.key_for(files.name_at(at[i])), true, true)
            .await;
        for (range, r) in results {
            let at = &at[range];
            match r {
                Ok(exists) => {
                    for (&i, ok) in at.iter().zip(exists) {
                        if !ok {
                            found.rewrite(Kind::Missing, files.at(i));
                        }
                    }
                }
                Err(e) => found.errors(chunk_failures(&names(files, at), &e)),
            }
        }
    }

    /// Fetches the entries of the files at positions `fetch` and verifies each against the
    /// file's hash (from `read`, sorted by position, or else the fingerprint store), a window
    /// of chunks at a time: each value is dropped once
    /// verified, so a deep check holds no more content than its batches in flight. Verified
    /// content that the index does not describe becomes an index fix-up.
    async fn verify(
        &self,
        files: &FileList,
        read: &[(usize, ContentHash)],
        fetch: &[usize],
        index: &IndexSnapshot,
        found: &mut Findings,
    ) {
        let ctx = &self.ctx;
        ctx.phase("verifying", fetch.len());
        let key_of = |i: usize| ctx.namespace.key_for(files.name_at(fetch[i]));
        // A record weighs about its file plus its name and a header.
        let size_of = |i: usize| {
            let f = files.at(fetch[i]);
            f.fingerprint.size as usize + f.name.len() + 64
        };
        ctx.get_each(fetch.len(), key_of, size_of, |range, r| {
            let chunk = &fetch[range];
            let values = match r {
                Ok(v) => v,
                Err(e) => {
                    found.errors(chunk_failures(&names(files, chunk), &e));
                    return;
                }
            };
            // The hashes of this chunk: read this run, or vouched for by the fingerprint store.
            let hashes: Vec<Option<ContentHash>> = {
                let known = ctx.source.known_hashes();
                chunk
                    .iter()
                    .map(|&i| match read.binary_search_by_key(&i, |&(j, _)| j) {
                        Ok(k) => Some(read[k].1),
                        Err(_) => known.get(files.name_at(i), files.fingerprint_at(i)),
                    })
                    .collect()
            };
            for ((&i, value), h) in chunk.iter().zip(values).zip(hashes) {
                let (f, Some(h)) = (files.at(i), h) else {
                    continue; // unreadable files are never fetched
                };
                let kind = match value.map(|v| verify(&v, f.name)) {
                    None => Kind::Missing,
                    Some(Err(_)) => Kind::Corrupt,
                    Some(Ok(rec_hash)) if rec_hash != h => Kind::Outdated,
                    Some(Ok(_)) => {
                        let e = IndexEntry {
                            hash: h,
                            size: f.fingerprint.size,
                            pending: false,
                        };
                        if index.entries.get(f.name) != Some(e) {
                            found.plan.index_fixups.push((f.name.to_owned(), e));
                        }
                        continue;
                    }
                };
                found.rewrite(kind, f);
            }
        })
        .await;
    }

    /// Index names without a file are orphans; with `list` (and a backend that lists), keys
    /// nobody knows are fetched and classified as orphaned or corrupt. Nothing the scan could
    /// not see (a failed file, or anything under a directory that failed) is ever an orphan.
    async fn classify_orphans(
        &self,
        mut scan: Scan,
        index: IndexSnapshot,
        marks: Marks,
        list: bool,
        found: &mut Findings,
    ) -> Result<()> {
        let ctx = &self.ctx;
        let ns = &ctx.namespace;
        // What the scan could not see (an unreadable or vanished directory, a failed stat) may
        // still exist: nothing under it is ever an orphan.
        let unseen = scan.unknown();
        // The index was loaded without names: those of its unmatched entries are read again.
        let unmatched = ctx.unmatched_names(&index.entries, &marks).await?;
        for name in unmatched.iter().filter(|n| !unseen.covers(n)) {
            found.remove(Kind::Orphaned, Some(name.clone()), ns.key_for(name));
        }
        found.report.entries = index.entries.len();
        if !(list && ctx.cache.capabilities().list_keys) {
            return Ok(());
        }
        // Only a listing needs every known key: held as the name hashes that keys carry
        // (16 bytes each, sorted), not as key strings; the listing comes a page at a time. The
        // indexed names are the scanned files the index holds and the unmatched ones. The
        // index, then the scan, go as soon as their part is taken.
        let files = std::mem::take(&mut scan.files);
        let (indexed_files, _) = super::lookups::on_every_core(
            files.len(),
            || (),
            |(), i| index.entries.contains_key(files.name_at(i)),
        );
        drop((index, marks));
        let (ids, _) =
            super::lookups::on_every_core(files.len(), || (), |(), i| name_id(files.name_at(i)));
        drop(files);
        let mut indexed =
            Vec::with_capacity(indexed_files.iter().filter(|&&i| i).count() + unmatched.len());
        indexed.extend(
            ids.iter()
                .zip(&indexed_files)
                .filter(|(_, indexed)| **indexed)
                .map(|(id, _)| *id),
        );
        indexed.extend(unmatched.iter().map(|n| name_id(n)));
        drop((indexed_files, unmatched));
        // Each list becomes its set in place.
        let indexed = IdSet::new(indexed.into_iter());
        let files = IdSet::new(ids.into_iter());
        let prefix = ns.prefix();
        ctx.phase_unknown_total("listing");
        let listing = std::sync::Mutex::new((0usize, Vec::new()));
        let (r, _) = ctx
            .retry
            .run(|| async {
                // A retried listing starts over.
                *lock(&listing) = (0, Vec::new());
                ctx.cache
                    .list_keys_paged(&prefix, &mut |page| {
                        let (entries, unknown) = &mut *lock(&listing);
                        for key in page {
                            let Some(id) = ns.name_hash_of_key(&key).map(|h| id_of(&h)) else {
                                continue; // not a template key
                            };
                            if indexed.contains(id) {
                                continue;
                            }
                            *entries += 1;
                            if !files.contains(id) {
                                unknown.push(key);
                            }
                        }
                    })
                    .await
            })
            .await;
        r.map_err(|e| e.context("listing cache keys"))?;
        let (entries, mut unknown) = listing.into_inner().unwrap_or_else(|p| p.into_inner());
        // A listing may hand a key over twice.
        unknown.sort_unstable();
        unknown.dedup();
        found.report.entries += entries;
        drop((indexed, files));
        ctx.phase("verifying", unknown.len());
        // Sizes are unknown: a listing's chunks are bounded by count alone.
        ctx.get_each(
            unknown.len(),
            |i| unknown[i].clone(),
            |_| 0,
            |range, r| {
                let keys = &unknown[range];
                let values = match r {
                    Ok(values) => values,
                    Err(e) => {
                        found.errors(chunk_failures(keys, &e));
                        return;
                    }
                };
                for (key, value) in keys.iter().zip(values) {
                    let Some(value) = value else { continue };
                    match Record::decode(&value) {
                        Ok(rec) if unseen.covers(&rec.name) => {}
                        Ok(rec) if ns.key_for(&rec.name) == *key => {
                            found.remove(Kind::Orphaned, Some(rec.name), key.clone())
                        }
                        _ => found.remove(Kind::Corrupt, None, key.clone()),
                    }
                }
            },
        )
        .await;
        Ok(())
    }
}

/// Decides per file whether the index suffices or the entry must be fetched, for files whose
/// fingerprint vouches for their hash (the others are left to read); in quick mode, a
/// confirmed index hash that differs from the file's is outdated without a fetch.
///
/// Every scanned file marks its index entry, readable or not: an unreadable file still exists,
/// so its entry is never an orphan.
fn compare(
    mode: CheckMode,
    files: &FileList,
    known: &KnownHashes<'_>,
    index: &IndexSnapshot,
    found: &mut Findings,
) -> Comparison {
    // The lookups (cache misses at a million files) run on every core.
    let (verdicts, marks) = super::lookups::on_every_core(
        files.len(),
        || index.entries.marks(),
        |marks, i| {
            let name = files.name_at(i);
            let entry = index.entries.get_marking(name, marks);
            match known.get(name, files.fingerprint_at(i)) {
                Some(h) => verdict(mode, entry, h),
                None => Verdict::Unknown,
            }
        },
    );
    let mut marks = marks.into_iter();
    let count = |v: Verdict| {
        verdicts
            .iter()
            .filter(|&&w| std::mem::discriminant(&w) == std::mem::discriminant(&v))
            .count()
    };
    // Sized once: at a million files, growing these lists would hold each twice at times.
    let mut cmp = Comparison {
        exist_check: Vec::with_capacity(count(Verdict::Indexed)),
        fetch: Vec::with_capacity(count(Verdict::Fetch)),
        unknown: Vec::with_capacity(count(Verdict::Unknown)),
        marks: marks.next().unwrap_or_default(),
    };
    for m in marks {
        cmp.marks.absorb(&m);
    }
    for (i, v) in verdicts.into_iter().enumerate() {
        cmp.place(i, v, files, found);
    }
    cmp
}

/// Decodes and verifies a stored record of `name`, returning its content hash.
fn verify(value: &Bytes, name: &str) -> Result<ContentHash> {
    let rec = Record::decode(value)?;
    if rec.name != name {
        return Err(Error::new(
            ErrorKind::Corrupt,
            format!("entry of {name:?} holds the record of {:?}", rec.name),
        ));
    }
    Ok(rec.hash)
}

/// The first 16 bytes of a name's hash: what identifies it among the keys a listing returns
/// (a collision could only hide an orphan, never report a wrong one).
fn name_id(name: &str) -> u128 {
    id_of(&ContentHash::of(name.as_bytes()))
}

fn id_of(h: &ContentHash) -> u128 {
    let mut first = [0u8; 16];
    first.copy_from_slice(&h.0[..16]);
    u128::from_le_bytes(first)
}

/// The names of the files at positions `at`.
fn names(files: &FileList, at: &[usize]) -> Vec<String> {
    at.iter().map(|&i| files.name_at(i).to_owned()).collect()
}

fn record_outcome(rep: &CheckReport) {
    for (kind, n) in [
        ("missing", rep.missing.len()),
        ("outdated", rep.outdated.len()),
        ("orphaned", rep.orphaned.len()),
        ("corrupt", rep.corrupt.len()),
    ] {
        metrics::gauge!("tcache_inconsistencies", "kind" => kind).set(n as f64);
    }
    metrics::histogram!("tcache_run_duration_seconds", "kind" => "check")
        .record(rep.duration.as_secs_f64());
    metrics::gauge!("tcache_last_success_timestamp_seconds", "kind" => "check")
        .set(crate::time::now_ns() as f64 / 1e9);
    tracing::info!(
        consistent = rep.consistent,
        files = rep.files,
        entries = rep.entries,
        missing = rep.missing.len(),
        outdated = rep.outdated.len(),
        orphaned = rep.orphaned.len(),
        corrupt = rep.corrupt.len(),
        errors = rep.errors.len(),
        "check finished"
    );
}

fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
