//! Resolution: repairs what a check found, as a [`ResolvePolicy`] allows, behind safety
//! thresholds checked before anything changes.

use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use super::check::Checker;
use super::plan::{Deletion, Kind};
use super::report::{CheckReport, Failure, ResolveReport};
use crate::collections::{FastMap, FastSet};
use crate::error::{Error, ErrorKind, Result};
use crate::index::{IndexChanges, IndexEntry};
use crate::source::scan::SourceFile;

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

impl ResolvePolicy {
    fn wants(&self, kind: Kind) -> bool {
        match kind {
            Kind::Missing => self.add_missing,
            Kind::Outdated => self.update_outdated,
            Kind::Corrupt => self.repair_corrupt,
            Kind::Orphaned => self.delete_orphans,
        }
    }
}

impl ResolveReport {
    /// Counts one resolved item of `kind`.
    fn count(&mut self, kind: Kind) {
        match kind {
            Kind::Missing => self.added += 1,
            Kind::Outdated => self.updated += 1,
            Kind::Corrupt => self.repaired += 1,
            Kind::Orphaned => self.deleted += 1,
        }
    }
}

impl Checker {
    /// Resolves what `report` (from [`Self::check`] on this checker) found, as `policy` allows.
    ///
    /// Thresholds are checked before anything is changed: exceeding one returns an
    /// [`ErrorKind::Refused`] error and changes nothing. So does any deletion when the tree has
    /// no template at all, unless [`ResolvePolicy::allow_empty_source`] is set. The counts of
    /// the returned report are what succeeded (in a dry run, what would be done).
    pub async fn resolve(
        &self,
        report: &CheckReport,
        policy: &ResolvePolicy,
    ) -> Result<ResolveReport> {
        let span = tracing::info_span!("resolve", namespace = %self.ctx.namespace, dry_run = policy.dry_run);
        let started = self.history.start();
        let began = std::time::Instant::now();
        let r = self.run_resolve(report, policy).instrument(span).await;
        self.ctx.release_lease().await;
        self.ctx.finish();
        record_metrics(&r, began.elapsed());
        self.history.resolve(started, policy.dry_run, &r).await;
        r
    }

    async fn run_resolve(
        &self,
        report: &CheckReport,
        policy: &ResolvePolicy,
    ) -> Result<ResolveReport> {
        let plan = &report.plan;
        let writes: Vec<&(Kind, SourceFile)> = plan
            .write
            .iter()
            .filter(|(k, _)| policy.wants(*k))
            .collect();
        let deletes: Vec<&Deletion> = plan
            .delete
            .iter()
            .filter(|d| policy.wants(d.kind))
            .collect();
        let mut out = ResolveReport {
            dry_run: policy.dry_run,
            ..Default::default()
        };
        if let Some(reason) = refusal(report, policy, writes.len(), deletes.len()) {
            metrics::counter!("tcache_resolutions_refused_total").increment(1);
            tracing::error!(%reason, "resolution refused; nothing was changed");
            return Err(Error::new(ErrorKind::Refused, reason));
        }
        if policy.dry_run {
            writes.iter().for_each(|(k, _)| out.count(*k));
            deletes.iter().for_each(|d| out.count(d.kind));
            return Ok(out);
        }
        // Nothing is deleted or written without the namespace write lease.
        if !(writes.is_empty() && deletes.is_empty() && plan.index_fixups.is_empty()) {
            self.ctx.hold_lease().await?;
        }
        self.delete_entries(&deletes, &plan.index_fixups, &mut out)
            .await?;
        self.write_entries(&writes, &plan.previous, &mut out)
            .await?;
        if let Err(e) = self.ctx.cache.flush().await {
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

    /// Deletes entries first, then their index entries (with the check's index fix-ups), so
    /// the index never forgets an entry that still exists.
    async fn delete_entries(
        &self,
        deletes: &[&Deletion],
        index_fixups: &[(String, IndexEntry)],
        out: &mut ResolveReport,
    ) -> Result<()> {
        let ctx = &self.ctx;
        let keys: Vec<String> = deletes.iter().map(|d| d.key.clone()).collect();
        let cache = ctx.cache.clone();
        let mut removals = Vec::new();
        if !keys.is_empty() {
            ctx.phase("deleting", keys.len());
        }
        for (range, r) in ctx
            .chunked(&keys, ctx.key_chunk(), true, true, move |k| {
                let c = cache.clone();
                async move { c.delete_many(&k).await.map(|()| Vec::<()>::new()) }
            })
            .await
        {
            for d in &deletes[range] {
                match &r {
                    Ok(_) => {
                        out.count(d.kind);
                        removals.extend(d.name.clone());
                    }
                    Err(e) => {
                        let who = d.name.clone().unwrap_or_else(|| d.key.clone());
                        out.failed
                            .push(Failure::new(who, e, ctx.retry.max_attempts));
                    }
                }
            }
        }
        let fix = IndexChanges {
            upserts: index_fixups.to_vec(),
            removals,
        };
        ctx.update_index(&fix).await
    }

    /// Writes templates through the same mark–write–confirm protocol as the warmer.
    async fn write_entries(
        &self,
        writes: &[&(Kind, SourceFile)],
        previous: &FastMap<String, IndexEntry>,
        out: &mut ResolveReport,
    ) -> Result<()> {
        let files: Vec<SourceFile> = writes.iter().map(|(_, f)| f.clone()).collect();
        let outcome = self
            .ctx
            .write_files(files.as_slice(), previous, &CancellationToken::new())
            .await?;
        // Every template not reported failed was written.
        let failed: FastSet<&str> = outcome.failed.iter().map(|f| f.name.as_str()).collect();
        for (kind, f) in writes {
            if !failed.contains(f.name.as_str()) {
                out.count(*kind);
            }
        }
        out.failed.extend(outcome.failed);
        Ok(())
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

/// Metrics of a resolution (names and meanings: `template_cache_observe::metrics`); a refusal
/// is counted where it is decided.
fn record_metrics(r: &Result<ResolveReport>, took: std::time::Duration) {
    match r {
        Ok(rep) => {
            metrics::histogram!("tcache_run_duration_seconds", "kind" => "resolve")
                .record(took.as_secs_f64());
            if !rep.dry_run {
                metrics::gauge!("tcache_last_success_timestamp_seconds", "kind" => "resolve")
                    .set(crate::time::now_ns() as f64 / 1e9);
            }
        }
        Err(e) if e.kind() == ErrorKind::Refused => {}
        Err(_) => {
            metrics::counter!("tcache_runs_failed_total", "kind" => "resolve").increment(1);
        }
    }
}
