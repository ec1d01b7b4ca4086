//! The warmer: writes new and changed templates to the cache, once or periodically.

use std::sync::Arc;
use std::time::{Duration, Instant};

use globset::GlobSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::drops::DropStamps;
use super::phases::{self, Phases};
use super::pipeline::Ctx;
use super::report::{Failure, WarmReport};
use crate::backend::{CacheBackend, ServerStats};
use crate::collections::{FastMap, FastSet};
use crate::config::EngineConfig;
use crate::error::Result;
use crate::history::Recorder;
use crate::index::{IndexEntries, IndexEntry, IndexSnapshot, Marks};
use crate::source::files::Files;
use crate::source::scan::{FileList, Probe, SourceFile, compile_globs};
use crate::source::{KnownHashes, Source};

/// Keeps a cache warm with the templates of one tree.
#[derive(Debug)]
pub struct Warmer {
    ctx: Ctx,
    priority: Vec<GlobSet>,
    verify_existing: bool,
    drops: DropStamps,
    history: Recorder,
}

impl Warmer {
    /// Validates the configuration (patterns, limits) and loads persisted fingerprints.
    pub fn new(backend: Arc<dyn CacheBackend>, config: EngineConfig) -> Result<Self> {
        let priority = config
            .priority
            .iter()
            .map(|p| compile_globs("priority", std::slice::from_ref(p)))
            .collect::<Result<_>>()?;
        let verify_existing = config.verify_existing;
        let record_history = config.record_history;
        let ctx = Ctx::new(backend, config)?;
        Ok(Warmer {
            drops: DropStamps::new(
                ctx.source.config().state_path.as_deref(),
                &ctx.cache.describe(),
                &ctx.namespace,
            ),
            history: Recorder::new(&ctx.cache, &ctx.namespace, record_history),
            ctx,
            priority,
            verify_existing,
        })
    }

    /// A checker of the same tree and namespace that shares this warmer's fingerprints, rate
    /// limits and (shared) lease: a service's checks then never re-read what the warmer read.
    pub fn checker(&self) -> crate::Checker {
        crate::Checker {
            ctx: self.ctx.sibling(),
            history: self.history.clone(),
        }
    }

    /// The rank of `name` among the priority rules (lower goes first).
    fn rank(&self, name: &str) -> usize {
        self.priority
            .iter()
            .position(|g| g.is_match(name))
            .unwrap_or(self.priority.len())
    }

    /// The template source (for its statistics).
    pub fn source(&self) -> &Arc<Source> {
        &self.ctx.source
    }

    /// Warms once and reports. Errors only when the whole run cannot proceed (missing root,
    /// unreachable backend); anything wrong with single templates is in the report.
    pub async fn run_once(&self) -> Result<WarmReport> {
        self.run_once_until(&CancellationToken::new()).await
    }

    /// Like [`Self::run_once`], but stops starting batches once `cancel` fires; batches in
    /// flight finish and are recorded.
    pub async fn run_once_until(&self, cancel: &CancellationToken) -> Result<WarmReport> {
        let span = tracing::info_span!("warm", namespace = %self.ctx.namespace, backend = %self.ctx.cache.describe());
        async {
            let started = self.history.start();
            let r = self.warm(cancel).await;
            self.ctx.release_lease().await;
            self.ctx.finish();
            match &r {
                Ok(rep) => {
                    record_metrics(rep);
                    tracing::info!(
                        scanned = rep.scanned,
                        written = rep.written,
                        unchanged = rep.unchanged,
                        failed = rep.failed.len(),
                        bytes = rep.bytes_written,
                        ms = rep.duration.as_millis() as u64,
                        "warm finished"
                    );
                }
                Err(e) => {
                    metrics::counter!("tcache_runs_failed_total", "kind" => "warm").increment(1);
                    tracing::error!(error = %e, "warm failed");
                }
            }
            self.history.warm(started, &r).await;
            r
        }
        .instrument(span)
        .await
    }

    async fn warm(&self, cancel: &CancellationToken) -> Result<WarmReport> {
        let started = Instant::now();
        let hashed_before = self.ctx.source.files_hashed();
        // The walk runs on the blocking pool while the index is read and verified.
        let (scan, indexed) = tokio::join!(
            phases::timed("scan", self.ctx.scan()),
            self.verified_index()
        );
        let mut scan = scan?;
        let (index, evicted, drop_stamp) = indexed?;
        let mut phases = Phases::start();
        self.ctx.source.prune_state(&scan);
        let mut report = WarmReport {
            scanned: scan.files.len() + scan.failures.len(),
            failed: scan
                .failures
                .iter()
                .map(|f| Failure::new(f.name.clone(), &f.error, 0))
                .collect(),
            ..Default::default()
        };
        // Clean: the index confirms the hash the fingerprint vouches for, and the entry exists.
        // Suspect: the entry holds the index's hash but the fingerprint changed (touched, copied
        // again, checked out again): hash first, and write only if the content changed.
        let mut previous: FastMap<String, IndexEntry> = FastMap::default();
        // What is to be written stays in the scan's own list, filtered in place: on a cold warm
        // (every file to write) there is never a second list of the tree.
        let mut dirty = std::mem::take(&mut scan.files);
        let mut suspect = FileList::new(Arc::clone(dirty.root()));
        // The lookups (index entry, trusted hash: cache misses at a million files) run on every
        // core, read-only; the list is then filtered in one pass.
        let (classes, marks, indexed) = {
            // One lock for every lookup; released before any await.
            let known = self.ctx.source.known_hashes();
            classify(&dirty, &index.entries, &evicted, &known)
        };
        for (f, class) in dirty.iter().zip(&classes) {
            match class {
                Class::Clean => {
                    report.unchanged += 1;
                    continue;
                }
                Class::Suspect => {
                    suspect.push(f.name, *f.fingerprint);
                }
                Class::Dirty => {}
            }
            if let Some(e) = index.entries.get(f.name) {
                previous.insert(f.name.to_owned(), e);
            }
        }
        dirty.retain(|i, _| classes[i] == Class::Dirty);
        drop(classes);
        if indexed < index.entries.len() {
            match self.ctx.unmatched_names(&index.entries, &marks).await {
                Ok(mut names) => {
                    let unknown = scan.unknown();
                    names.retain(|n| !unknown.covers(n));
                    report.orphans = names;
                }
                Err(e) => report.failed.push(Failure::new("(index)".into(), &e, 0)),
            }
        }
        // `previous` holds the entries still needed.
        drop((scan, index, evicted, marks));
        let hashed_suspects = suspect.len();
        phases.done("compare", report.scanned);
        if !suspect.is_empty() {
            let (hashes, failed) = self.ctx.hash_all(&suspect).await;
            report.failed.extend(failed);
            // Per suspect: `Some(true)` unchanged, `Some(false)` changed, `None` unreadable.
            for (f, h) in suspect.iter().zip(hashes) {
                match h.map(|h| previous.get(f.name).is_some_and(|e| e.hash == h)) {
                    Some(true) => report.unchanged += 1,
                    Some(false) => {
                        dirty.push(f.name, *f.fingerprint);
                    }
                    None => {} // unreadable: already reported as failed
                }
            }
        }
        phases.done("hash", hashed_suspects);
        dirty.sort_by_cached_key(|f| self.rank(f.name));

        // A cache smaller than the tree evicts while we write, and only the server knows: read
        // its eviction counter around the writes (not on a run with nothing to write).
        let stats_before = if dirty.is_empty() {
            None
        } else {
            self.server_stats("before writing").await
        };
        let outcome = self.ctx.write_files(&dirty, &previous, cancel).await?;
        report.written = outcome.written;
        report.failed.extend(outcome.failed);
        report.bytes_written = outcome.bytes;
        report.cancelled = cancel.is_cancelled()
            && report.written + report.unchanged + report.failed.len() < report.scanned;

        if let Err(e) = self.ctx.cache.flush().await {
            report.failed.push(Failure::new("(flush)".into(), &e, 1));
        }
        if let Some(before) = stats_before.filter(|_| report.written > 0)
            && let Some(after) = self.server_stats("after writing").await
        {
            note_evictions(&mut report, &before, &after);
        }
        phases.done("write", report.written);
        self.ctx.source.save_state();
        if let Some(stamp) = drop_stamp {
            self.drops.save(&stamp);
        }
        phases.done("state save", report.scanned);
        report.files_hashed = self.ctx.source.files_hashed() - hashed_before;
        report.duration = started.elapsed();
        Ok(report)
    }

    /// The server's statistics, or `None` when the backend keeps none or reading them failed
    /// (which never fails the run).
    async fn server_stats(&self, when: &str) -> Option<ServerStats> {
        match self.ctx.cache.server_stats().await {
            Ok(stats) => stats,
            Err(e) => {
                tracing::debug!(error = %e, "reading the server's statistics {when} failed; evictions during this run go unnoticed");
                None
            }
        }
    }

    /// Loads the index and, on backends that may evict, the names of confirmed entries that no
    /// longer exist, with the server's drop stamp read before checking ([`DropStamps`]): when it
    /// is the one the last verified warm saw, nothing was dropped and nothing is checked.
    async fn verified_index(&self) -> Result<(IndexSnapshot, FastSet<String>, Option<String>)> {
        let mut evicted = FastSet::default();
        if !(self.verify_existing && self.ctx.cache.capabilities().evicts) {
            // Compared with the scan only: no names needed.
            let (index, _) = phases::timed("index read", self.ctx.load_index(false)).await?;
            return Ok((index, evicted, None));
        }
        let stamp = self
            .server_stats("before checking that entries exist")
            .await
            .and_then(|s| s.drop_stamp);
        if stamp.as_deref().is_some_and(|s| self.drops.matches(s)) {
            tracing::info!(
                "the server dropped nothing since the last verified warm: existence check skipped"
            );
            let (index, _) = phases::timed("index read", self.ctx.load_index(false)).await?;
            return Ok((index, evicted, stamp));
        }
        // The entries' keys are built from their names.
        let (index, _) = phases::timed("index read", self.ctx.load_index(true)).await?;
        let names: Vec<&str> = index
            .entries
            .iter()
            .filter(|(_, e)| !e.pending)
            .map(|(n, _)| n)
            .collect();
        // Runs while the tree is scanned: the scan is the phase shown. Keys are built per chunk.
        let ns = &self.ctx.namespace;
        let results = phases::timed(
            "existence check",
            self.ctx
                .exists_chunked_by(names.len(), |i| ns.key_for(names[i]), false, false),
        )
        .await;
        for (range, r) in results {
            let exists = r.map_err(|e| e.context("checking that cached templates exist"))?;
            for (name, ok) in names[range].iter().zip(exists) {
                if !ok {
                    evicted.insert((*name).to_owned());
                }
            }
        }
        Ok((index, evicted, stamp))
    }

    /// Writes the templates among `names` (reported changed by a file watcher) whose file
    /// changed since it was last read, without scanning the tree or reading the index.
    ///
    /// Trusts that the cache holds what this process last read of every other file, which
    /// holds after a full run ([`Self::run_once`]) by the same writer: a service runs one at
    /// start, after taking the lease, after an outage, and as a periodic backstop. Names that
    /// are gone and were known are listed in [`WarmReport::orphans`] (nothing is deleted); the
    /// files of a directory among them are listed and written too (more than 50,000, or a gone
    /// directory that held templates, set [`WarmReport::needs_full_run`]). Files that fail are forgotten,
    /// so the next run reads them again. Fails as a whole when the root is missing or the
    /// write lease cannot be held.
    pub async fn warm_changed(
        &self,
        names: Vec<String>,
        cancel: &CancellationToken,
    ) -> Result<WarmReport> {
        let started = Instant::now();
        let hashed_before = self.ctx.source.files_hashed();
        let source = &self.ctx.source;
        let mut report = WarmReport::default();
        let mut dirty = Vec::new();
        let mut probed = source.probe(names).await?;
        // A directory that appeared (a tar extract, a move): its files, read now, since events
        // of files created before the watcher saw the directory are lost.
        let dirs: Vec<String> = probed
            .iter()
            .filter(|(_, p)| matches!(p, Probe::Directory))
            .map(|(n, _)| n.clone())
            .collect();
        if !dirs.is_empty() {
            match source.files_under(dirs, MAX_EXPANDED_FILES).await? {
                Some(files) => probed.extend(source.probe(files).await?),
                None => report.needs_full_run = true,
            }
        }
        let mut seen = FastSet::default();
        for (name, probe) in probed {
            if !seen.insert(name.clone()) {
                continue;
            }
            match probe {
                Probe::File(f) => {
                    report.scanned += 1;
                    if source.known_hash(&f).is_some() {
                        report.unchanged += 1;
                    } else {
                        dirty.push(f);
                    }
                }
                Probe::Gone if source.knows(&name) => report.orphans.push(name),
                Probe::Gone => report.needs_full_run |= source.knows_under(&name),
                Probe::Directory => {}
                Probe::Skipped => {}
                Probe::Failed(e) => {
                    report.scanned += 1;
                    report.failed.push(Failure::new(name, &e, 0));
                }
            }
        }
        dirty.sort_by_cached_key(|f| self.rank(&f.name));
        // The pending marks of these writes carry no previous hash: a pending entry is never
        // trusted, whatever hash it carries.
        let outcome = self
            .ctx
            .write_files(dirty.as_slice(), &FastMap::default(), cancel)
            .await?;
        for f in &outcome.failed {
            source.forget(&f.name);
        }
        report.written = outcome.written;
        report.failed.extend(outcome.failed);
        report.bytes_written = outcome.bytes;
        if report.written > 0
            && let Err(e) = self.ctx.cache.flush().await
        {
            report.failed.push(Failure::new("(flush)".into(), &e, 1));
        }
        report.orphans.sort();
        report.files_hashed = source.files_hashed() - hashed_before;
        report.duration = started.elapsed();
        record_metrics(&report);
        Ok(report)
    }

    /// Reads and hashes the files among `names` whose fingerprint changed, writing nothing: a
    /// standby keeps its fingerprints current so that it can take over without re-reading the
    /// tree. Returns how many files were read.
    pub async fn rehash_changed(&self, names: Vec<String>) -> Result<u64> {
        let hashed_before = self.ctx.source.files_hashed();
        let files: Vec<SourceFile> = self
            .ctx
            .source
            .probe(names)
            .await?
            .into_iter()
            .filter_map(|(_, p)| match p {
                Probe::File(f) => Some(f),
                _ => None,
            })
            .collect();
        let _ = self.ctx.hash_all(files.as_slice()).await;
        Ok(self.ctx.source.files_hashed() - hashed_before)
    }

    /// Warms every `interval` (± `jitter`, a fraction such as 0.1) until `cancel` fires, then
    /// returns after the batch in flight. `on_run` receives each run's outcome.
    pub async fn run_periodic(
        &self,
        interval: Duration,
        jitter: f64,
        cancel: CancellationToken,
        mut on_run: impl FnMut(Result<WarmReport>) + Send,
    ) {
        loop {
            let r = self.run_once_until(&cancel).await;
            on_run(r);
            if cancel.is_cancelled() {
                return;
            }
            let delay = crate::time::jittered(interval, jitter);
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }
}

/// Records in `report` the evictions the server counted between `before` and `after` (a counter
/// that went down, after a restart, counts as none).
fn note_evictions(report: &mut WarmReport, before: &ServerStats, after: &ServerStats) {
    let evicted = after.evictions.saturating_sub(before.evictions);
    if evicted == 0 {
        return;
    }
    let needed = before
        .used_bytes
        .map(|used| used.saturating_add(report.bytes_written));
    let available = after.max_bytes.or(before.max_bytes);
    let policy = after.policy.as_ref().or(before.policy.as_ref());
    let message = eviction_message(evicted, needed, available, policy.map(String::as_str));
    tracing::warn!(evicted, "{message}");
    report.evicted = evicted;
    report.eviction_warning = Some(message);
}

/// "the cache evicted N entries during this warm: about X needed, Y available ...".
fn eviction_message(
    evicted: u64,
    needed: Option<u64>,
    available: Option<u64>,
    policy: Option<&str>,
) -> String {
    let size = |b: Option<u64>| b.map_or_else(|| "unknown".to_owned(), mib);
    let policy = policy.map_or_else(String::new, |p| format!(" (maxmemory-policy {p})"));
    format!(
        "the cache evicted {evicted} {} during this warm: about {} needed, {} available{policy}; \
         evicted templates are missing until the cache has room for the whole tree",
        if evicted == 1 { "entry" } else { "entries" },
        size(needed),
        size(available),
    )
}

/// `bytes` in MiB, the unit of Redis `maxmemory 60mb` and Memcached `-m 60`.
fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// More files than this under new directories: a full run instead of reading them one by one.
const MAX_EXPANDED_FILES: usize = 50_000;

/// What a warm does with a scanned file (a write unless shown otherwise).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Class {
    /// The index confirms the hash the fingerprint vouches for, and the entry exists: nothing.
    Clean,
    /// The entry holds the index's hash but the fingerprint changed: hash, write if changed.
    Suspect,
    /// New, pending, evicted: write.
    #[default]
    Dirty,
}

/// The class of each of `files`, in order, with the index entries they matched and how many
/// did (looked up on every core).
fn classify(
    files: &FileList,
    entries: &IndexEntries,
    evicted: &FastSet<String>,
    known: &KnownHashes<'_>,
) -> (Vec<Class>, Marks, usize) {
    let (classes, states) = super::lookups::on_every_core(
        files.len(),
        || (entries.marks(), 0usize),
        |(marks, indexed), i| {
            let (name, fingerprint) = (files.name_at(i), files.fingerprint_at(i));
            let entry = entries.get_marking(name, marks);
            *indexed += usize::from(entry.is_some());
            match entry.filter(|e| !e.pending && !evicted.contains(name)) {
                Some(e) if known.get(name, fingerprint) == Some(e.hash) => Class::Clean,
                Some(_) => Class::Suspect,
                None => Class::Dirty,
            }
        },
    );
    let mut states = states.into_iter();
    let (mut marks, mut indexed) = states.next().unwrap_or_default();
    for (m, n) in states {
        marks.absorb(&m);
        indexed += n;
    }
    (classes, marks, indexed)
}

/// Metrics of a completed warm run (names and meanings: `template_cache_observe::metrics`).
fn record_metrics(r: &WarmReport) {
    metrics::counter!("tcache_templates_scanned_total").increment(r.scanned as u64);
    metrics::counter!("tcache_templates_written_total").increment(r.written as u64);
    metrics::counter!("tcache_templates_unchanged_total").increment(r.unchanged as u64);
    metrics::counter!("tcache_templates_failed_total").increment(r.failed.len() as u64);
    metrics::counter!("tcache_bytes_written_total").increment(r.bytes_written);
    metrics::counter!("tcache_files_hashed_total").increment(r.files_hashed);
    metrics::counter!("tcache_evictions_during_warm_total").increment(r.evicted);
    metrics::histogram!("tcache_run_duration_seconds", "kind" => "warm")
        .record(r.duration.as_secs_f64());
    // A completed run is a success; templates that failed are counted above.
    if !r.cancelled {
        metrics::gauge!("tcache_last_success_timestamp_seconds", "kind" => "warm")
            .set(crate::time::now_ns() as f64 / 1e9);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stats(evictions: u64, used: Option<u64>, max: Option<u64>) -> ServerStats {
        ServerStats {
            evictions,
            used_bytes: used,
            max_bytes: max,
            policy: Some("allkeys-lru".into()),
            drop_stamp: None,
        }
    }

    #[test]
    fn evictions_during_the_run_fail_it_with_the_numbers() {
        let mut r = WarmReport {
            written: 10,
            bytes_written: 3 * 1024 * 1024,
            ..Default::default()
        };
        let before = stats(5, Some(1024 * 1024), Some(2 * 1024 * 1024));
        note_evictions(&mut r, &before, &stats(5, Some(2 << 20), Some(2 << 20)));
        assert_eq!(r.evicted, 0);
        assert!(r.eviction_warning.is_none() && r.is_success());

        note_evictions(&mut r, &before, &stats(47, Some(2 << 20), Some(2 << 20)));
        assert_eq!(r.evicted, 42);
        assert!(!r.is_success());
        assert_eq!(
            r.eviction_warning.as_deref(),
            Some(
                "the cache evicted 42 entries during this warm: about 4.0 MiB needed, 2.0 MiB \
                 available (maxmemory-policy allkeys-lru); evicted templates are missing until \
                 the cache has room for the whole tree"
            )
        );
        let json = serde_json::to_value(&r).unwrap_or_default();
        assert_eq!(json["evicted"], 42);
        assert!(json["eviction_warning"].is_string());
    }

    #[test]
    fn unknown_sizes_are_said_to_be_unknown_and_a_restart_counts_no_evictions() {
        let mut r = WarmReport::default();
        let before = ServerStats {
            evictions: 100,
            ..Default::default()
        };
        note_evictions(&mut r, &before, &ServerStats::default());
        assert_eq!(r.evicted, 0, "the counter went down: the server restarted");
        let after = ServerStats {
            evictions: 103,
            ..Default::default()
        };
        note_evictions(&mut r, &before, &after);
        assert_eq!(r.evicted, 3);
        let msg = r.eviction_warning.unwrap_or_default();
        assert!(
            msg.starts_with("the cache evicted 3 entries during"),
            "{msg}"
        );
        assert!(
            eviction_message(1, None, None, None).starts_with("the cache evicted 1 entry during")
        );
        assert!(
            msg.contains("about unknown needed, unknown available;"),
            "{msg}"
        );
    }
}
