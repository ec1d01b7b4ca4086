//! The consistency checker and resolver: compares tree and cache both ways and repairs drift
//! behind safety thresholds.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::backend::CacheBackend;
use crate::config::EngineConfig;
use crate::error::{Error, ErrorKind, Result};
use crate::index::{IndexChanges, IndexEntry};
use crate::key::ContentHash;
use crate::pipeline::{Ctx, chunk_failures};
use crate::record::Record;
use crate::report::{CheckMode, CheckReport, Failure, ResolveReport};
use crate::scan::SourceFile;
use crate::source::Source;

/// The kind of an inconsistency.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Missing,
    Outdated,
    Orphaned,
    Corrupt,
}

/// What a resolution would act on, gathered by a check.
#[derive(Clone, Default)]
pub(crate) struct Plan {
    /// Templates to (re)write from their file.
    write: Vec<(Kind, SourceFile)>,
    /// Entries to delete: kind, name if known, key.
    delete: Vec<(Kind, Option<String>, String)>,
    /// Index entries before the check, for the write protocol.
    previous: HashMap<String, IndexEntry>,
    /// Index entries that disagree with verified cache content.
    index_fixups: Vec<(String, IndexEntry)>,
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan")
            .field("write", &self.write.len())
            .field("delete", &self.delete.len())
            .field("index_fixups", &self.index_fixups.len())
            .finish_non_exhaustive()
    }
}

/// What a resolution may do, and the safety thresholds that bound it.
#[derive(Clone, Debug, PartialEq)]
pub struct ResolvePolicy {
    /// Write templates missing from the cache.
    pub add_missing: bool,
    /// Rewrite outdated entries.
    pub update_outdated: bool,
    /// Rewrite corrupt entries from their file, or delete them if the file is gone.
    pub repair_corrupt: bool,
    /// Delete orphaned entries.
    pub delete_orphans: bool,
    /// Compute what would be done, change nothing.
    pub dry_run: bool,
    /// Refuse if more than this many entries would be deleted.
    pub max_delete: Option<usize>,
    /// Refuse if more than this fraction of the entries would be deleted.
    pub max_delete_ratio: Option<f64>,
    /// Refuse if more than this many entries would be written.
    pub max_change: Option<usize>,
    /// Refuse if more than this fraction of the entries would be written.
    pub max_change_ratio: Option<f64>,
    /// Allow deletions when the source tree has no template at all (normally refused: an empty
    /// or unmounted directory must never wipe a cache).
    pub allow_empty_source: bool,
}

impl Default for ResolvePolicy {
    /// Everything on, deletions bounded to 25% of the entries, no write bound.
    fn default() -> Self {
        ResolvePolicy {
            add_missing: true,
            update_outdated: true,
            repair_corrupt: true,
            delete_orphans: true,
            dry_run: false,
            max_delete: None,
            max_delete_ratio: Some(0.25),
            max_change: None,
            max_change_ratio: None,
            allow_empty_source: false,
        }
    }
}

/// Compares a template tree with a cache namespace and resolves the differences.
#[derive(Debug)]
pub struct Checker {
    ctx: Ctx,
}

impl Checker {
    /// Validates the configuration and loads persisted fingerprints.
    pub fn new(backend: Arc<dyn CacheBackend>, config: EngineConfig) -> Result<Self> {
        Ok(Checker {
            ctx: Ctx::new(backend, config)?,
        })
    }

    /// The template source (for its statistics).
    pub fn source(&self) -> &Arc<Source> {
        &self.ctx.source
    }

    /// Checks tree and cache in both directions. Errors only when the check cannot run at all
    /// (missing root, unreachable backend); per-item problems are in the report.
    pub async fn check(&self, mode: CheckMode) -> Result<CheckReport> {
        let span = tracing::info_span!("check", namespace = %self.ctx.namespace, ?mode, backend = %self.ctx.backend.describe());
        async {
            let r = self.run_check(mode).await;
            self.ctx.finish();
            match &r {
                Ok(rep) => {
                    for (kind, n) in [
                        ("missing", rep.missing.len()),
                        ("outdated", rep.outdated.len()),
                        ("orphaned", rep.orphaned.len()),
                        ("corrupt", rep.corrupt.len()),
                    ] {
                        metrics::gauge!("tcache_inconsistencies", "kind" => kind).set(n as f64);
                    }
                    metrics::histogram!("tcache_check_duration_seconds")
                        .record(rep.duration.as_secs_f64());
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
                Err(e) => tracing::error!(error = %e, "check failed"),
            }
            r
        }
        .instrument(span)
        .await
    }

    async fn run_check(&self, mode: CheckMode) -> Result<CheckReport> {
        let started = Instant::now();
        let ctx = &self.ctx;
        let ns = &ctx.namespace;
        // The walk runs on the blocking pool while the index is read.
        let (scan, index) = tokio::join!(ctx.source.scan(), ctx.load_index());
        let scan = scan?;
        let (index, index_exists) = index?;
        let mut report = CheckReport {
            mode,
            files: scan.files.len(),
            ..Default::default()
        };
        report.errors.extend(
            scan.failures
                .iter()
                .map(|f| Failure::new(f.name.clone(), &f.error, 0)),
        );
        let (hashes, failed) = ctx.hash_all(&scan.files).await;
        report.errors.extend(failed);
        for lost in &index.lost {
            report.errors.push(Failure::new(
                "(index)".into(),
                &Error::new(
                    ErrorKind::NotFound,
                    format!(
                        "{lost}; orphans it listed can only be found on backends that list keys"
                    ),
                ),
                0,
            ));
        }
        let mut plan = Plan::default();

        // Files: decide per file whether the index suffices or the entry must be fetched.
        let mut exist_check: Vec<&SourceFile> = Vec::new();
        let mut fetch: Vec<&SourceFile> = Vec::new();
        for f in &scan.files {
            let Some(&h) = hashes.get(&f.name) else {
                continue;
            };
            match index.entries.get(&f.name) {
                Some(e) if mode == CheckMode::Quick && !e.pending && e.hash == h => {
                    exist_check.push(f)
                }
                Some(e) if mode == CheckMode::Quick && !e.pending => {
                    report.outdated.push(f.name.clone());
                    plan.write.push((Kind::Outdated, f.clone()));
                }
                _ => fetch.push(f),
            }
        }
        let keys: Vec<String> = exist_check.iter().map(|f| ns.key_for(&f.name)).collect();
        let backend = Arc::clone(&ctx.backend);
        for (range, r) in ctx
            .chunked(&keys, ctx.key_chunk(), true, move |k| {
                let b = Arc::clone(&backend);
                async move { b.exists_many(&k).await }
            })
            .await
        {
            let files = &exist_check[range];
            match r {
                Ok(exists) => {
                    for (f, ok) in files.iter().zip(exists) {
                        if !ok {
                            report.missing.push(f.name.clone());
                            plan.write.push((Kind::Missing, (*f).clone()));
                        }
                    }
                }
                Err(e) => report.errors.extend(chunk_failures(&names(files), &e)),
            }
        }
        let keys: Vec<String> = fetch.iter().map(|f| ns.key_for(&f.name)).collect();
        ctx.phase("verifying", keys.len());
        let backend = Arc::clone(&ctx.backend);
        for (range, r) in ctx
            .chunked(&keys, ctx.chunk(), true, move |k| {
                let b = Arc::clone(&backend);
                async move { b.get_many(&k).await }
            })
            .await
        {
            let files = &fetch[range];
            ctx.advance(files.len());
            let values = match r {
                Ok(v) => v,
                Err(e) => {
                    report.errors.extend(chunk_failures(&names(files), &e));
                    continue;
                }
            };
            for (f, value) in files.iter().zip(values) {
                let h = hashes[&f.name];
                let kind = match value.map(|v| verify(&v, &f.name)) {
                    None => Some(Kind::Missing),
                    Some(Err(_)) => Some(Kind::Corrupt),
                    Some(Ok(rec_hash)) if rec_hash != h => Some(Kind::Outdated),
                    Some(Ok(_)) => {
                        let e = IndexEntry {
                            hash: h,
                            size: f.fingerprint.size,
                            pending: false,
                        };
                        if index.entries.get(&f.name) != Some(&e) {
                            plan.index_fixups.push((f.name.clone(), e));
                        }
                        None
                    }
                };
                if let Some(kind) = kind {
                    push_kind(&mut report, kind, f.name.clone());
                    plan.write.push((kind, (*f).clone()));
                }
            }
        }

        // Entries: index names without a file, then (where possible) listed keys nobody knows.
        let file_names: HashSet<&str> = scan.files.iter().map(|f| f.name.as_str()).collect();
        let failed_names: HashSet<&str> = scan.failures.iter().map(|f| f.name.as_str()).collect();
        let mut known_keys: HashSet<String> =
            scan.files.iter().map(|f| ns.key_for(&f.name)).collect();
        for name in index.entries.keys() {
            let key = ns.key_for(name);
            if !file_names.contains(name.as_str()) && !failed_names.contains(name.as_str()) {
                report.orphaned.push(name.clone());
                plan.delete
                    .push((Kind::Orphaned, Some(name.clone()), key.clone()));
            }
            known_keys.insert(key);
        }
        // Templates that exist but failed to scan are neither checked nor orphaned.
        for name in &failed_names {
            known_keys.insert(ns.key_for(name));
        }
        report.entries = index.entries.len();
        // Every entry is indexed before it is written, so a quick check trusts an intact index
        // for orphans; a deep check, or a missing or damaged index, lists the keys as well.
        let list = mode == CheckMode::Deep || !index_exists || !index.lost.is_empty();
        if list && ctx.backend.capabilities().list_keys {
            let prefix = ns.prefix();
            let (r, _) = ctx.retry.run(|| ctx.backend.list_keys(&prefix)).await;
            let listed = r.map_err(|e| e.context("listing cache keys"))?;
            let listed: Vec<String> = listed
                .into_iter()
                .filter(|k| ns.is_template_key(k))
                .collect();
            let index_keys: HashSet<String> = index.entries.keys().map(|n| ns.key_for(n)).collect();
            report.entries += listed.iter().filter(|k| !index_keys.contains(*k)).count();
            let unknown: Vec<String> = listed
                .into_iter()
                .filter(|k| !known_keys.contains(k))
                .collect();
            let backend = Arc::clone(&ctx.backend);
            for (range, r) in ctx
                .chunked(&unknown, ctx.chunk(), true, move |k| {
                    let b = Arc::clone(&backend);
                    async move { b.get_many(&k).await }
                })
                .await
            {
                let keys = &unknown[range];
                match r {
                    Ok(values) => {
                        for (key, value) in keys.iter().zip(values) {
                            let Some(value) = value else { continue };
                            match Record::decode(&value) {
                                Ok(rec) if ns.key_for(&rec.name) == *key => {
                                    report.orphaned.push(rec.name.clone());
                                    plan.delete
                                        .push((Kind::Orphaned, Some(rec.name), key.clone()));
                                }
                                _ => {
                                    report.corrupt.push(key.clone());
                                    plan.delete.push((Kind::Corrupt, None, key.clone()));
                                }
                            }
                        }
                    }
                    Err(e) => report.errors.extend(chunk_failures(keys, &e)),
                }
            }
        }
        for v in [
            &mut report.missing,
            &mut report.outdated,
            &mut report.orphaned,
            &mut report.corrupt,
        ] {
            v.sort();
        }
        report.consistent = report.inconsistencies() == 0 && report.errors.is_empty();
        ctx.source.prune_state(&scan);
        ctx.source.save_state();
        // Resolution needs the index entries of what it may write (their hash stays while pending).
        plan.previous = plan
            .write
            .iter()
            .filter_map(|(_, f)| index.entries.get(&f.name).map(|e| (f.name.clone(), *e)))
            .collect();
        report.plan = plan;
        report.duration = started.elapsed();
        Ok(report)
    }

    /// Resolves what `report` (from [`Self::check`] on this checker) found, as `policy` allows.
    ///
    /// Thresholds are checked before anything is changed: exceeding one returns an
    /// [`ErrorKind::Refused`] error and changes nothing. So does any deletion when the tree has
    /// no template at all, unless [`ResolvePolicy::allow_empty_source`] is set.
    pub async fn resolve(
        &self,
        report: &CheckReport,
        policy: &ResolvePolicy,
    ) -> Result<ResolveReport> {
        let span = tracing::info_span!("resolve", namespace = %self.ctx.namespace, dry_run = policy.dry_run);
        let r = self.run_resolve(report, policy).instrument(span).await;
        self.ctx.finish();
        r
    }

    async fn run_resolve(
        &self,
        report: &CheckReport,
        policy: &ResolvePolicy,
    ) -> Result<ResolveReport> {
        let plan = &report.plan;
        let wanted = |k: Kind| match k {
            Kind::Missing => policy.add_missing,
            Kind::Outdated => policy.update_outdated,
            Kind::Corrupt => policy.repair_corrupt,
            Kind::Orphaned => policy.delete_orphans,
        };
        let writes: Vec<&(Kind, SourceFile)> =
            plan.write.iter().filter(|(k, _)| wanted(*k)).collect();
        let deletes: Vec<&(Kind, Option<String>, String)> =
            plan.delete.iter().filter(|(k, ..)| wanted(*k)).collect();
        let count = |k: Kind| {
            writes.iter().filter(|(x, _)| *x == k).count()
                + deletes.iter().filter(|(x, ..)| *x == k).count()
        };
        let mut out = ResolveReport {
            dry_run: policy.dry_run,
            added: count(Kind::Missing),
            updated: count(Kind::Outdated),
            repaired: count(Kind::Corrupt),
            deleted: count(Kind::Orphaned),
            ..Default::default()
        };
        if let Some(reason) = refusal(report, policy, writes.len(), deletes.len()) {
            metrics::counter!("tcache_resolutions_refused_total").increment(1);
            tracing::error!(%reason, "resolution refused; nothing was changed");
            return Err(Error::new(ErrorKind::Refused, reason));
        }
        if policy.dry_run {
            return Ok(out);
        }
        let ctx = &self.ctx;
        // Deletions: entries first, then their index entries, so the index never forgets an
        // entry that still exists.
        let del_keys: Vec<String> = deletes.iter().map(|(_, _, k)| k.clone()).collect();
        let backend = Arc::clone(&ctx.backend);
        let mut removals = Vec::new();
        for (range, r) in ctx
            .chunked(&del_keys, ctx.key_chunk(), true, move |k| {
                let b = Arc::clone(&backend);
                async move { b.delete_many(&k).await.map(|()| Vec::<()>::new()) }
            })
            .await
        {
            match r {
                Ok(_) => removals.extend(deletes[range].iter().filter_map(|(_, n, _)| n.clone())),
                Err(e) => {
                    for (kind, name, key) in &deletes[range] {
                        let who = name.clone().unwrap_or_else(|| key.clone());
                        out.failed
                            .push(Failure::new(who, &e, ctx.retry.max_attempts));
                        match kind {
                            Kind::Orphaned => out.deleted -= 1,
                            _ => out.repaired -= 1,
                        }
                    }
                }
            }
        }
        let fix = IndexChanges {
            upserts: plan.index_fixups.clone(),
            removals,
        };
        ctx.update_index(&fix).await?;

        // Writes, through the same protocol as the warmer.
        let kinds: HashMap<&str, Kind> =
            writes.iter().map(|(k, f)| (f.name.as_str(), *k)).collect();
        let files: Vec<SourceFile> = writes.iter().map(|(_, f)| f.clone()).collect();
        let outcome = ctx
            .write_files(files, &plan.previous, &CancellationToken::new())
            .await?;
        for f in &outcome.failed {
            match kinds.get(f.name.as_str()) {
                Some(Kind::Missing) => out.added -= 1,
                Some(Kind::Outdated) => out.updated -= 1,
                Some(Kind::Corrupt) => out.repaired -= 1,
                _ => {}
            }
        }
        out.failed.extend(outcome.failed);
        if let Err(e) = ctx.backend.flush().await {
            out.failed.push(Failure::new("(flush)".into(), &e, 1));
        }
        tracing::info!(
            added = out.added,
            updated = out.updated,
            repaired = out.repaired,
            deleted = out.deleted,
            failed = out.failed.len(),
            "resolution finished"
        );
        Ok(out)
    }
}

/// Why a resolution must be refused, if it must.
fn refusal(
    report: &CheckReport,
    p: &ResolvePolicy,
    writes: usize,
    deletes: usize,
) -> Option<String> {
    if deletes > 0 && report.files == 0 && !p.allow_empty_source {
        return Some(format!(
            "the template tree has no templates but {deletes} cache entries would be deleted; \
             an empty or unmounted directory is never taken as \"delete everything\""
        ));
    }
    let base = report.entries.max(1) as f64;
    if let Some(max) = p.max_delete.filter(|&m| deletes > m) {
        return Some(format!(
            "{deletes} entries would be deleted, over the limit of {max} (max_delete)"
        ));
    }
    if let Some(r) = p.max_delete_ratio.filter(|&r| deletes as f64 / base > r) {
        return Some(format!(
            "{deletes} of {} entries ({:.1}%) would be deleted, over the limit of {:.1}% (max_delete_ratio)",
            report.entries,
            100.0 * deletes as f64 / base,
            100.0 * r
        ));
    }
    if let Some(max) = p.max_change.filter(|&m| writes > m) {
        return Some(format!(
            "{writes} entries would be written, over the limit of {max} (max_change)"
        ));
    }
    if let Some(r) = p
        .max_change_ratio
        .filter(|&r| report.entries > 0 && writes as f64 / base > r)
    {
        return Some(format!(
            "{writes} of {} entries ({:.1}%) would be written, over the limit of {:.1}% (max_change_ratio)",
            report.entries,
            100.0 * writes as f64 / base,
            100.0 * r
        ));
    }
    None
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

fn push_kind(report: &mut CheckReport, kind: Kind, name: String) {
    match kind {
        Kind::Missing => report.missing.push(name),
        Kind::Outdated => report.outdated.push(name),
        Kind::Orphaned => report.orphaned.push(name),
        Kind::Corrupt => report.corrupt.push(name),
    }
}

fn names(files: &[&SourceFile]) -> Vec<String> {
    files.iter().map(|f| f.name.clone()).collect()
}
