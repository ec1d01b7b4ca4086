//! The reports engines return. Their JSON form (serde) is a stable contract.

use std::time::Duration;

use crate::error::{Error, ErrorKind};

/// One template that failed, and why.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Failure {
    /// The template name.
    pub name: String,
    /// The error, as text (secrets already redacted by the backend).
    pub error: String,
    /// The error's kind.
    #[serde(skip)]
    pub kind: ErrorKind,
    /// How many times the operation was attempted (0 if it was never sent).
    pub attempts: u32,
}

impl Failure {
    /// A failure of `name` with `error` after `attempts` attempts.
    pub fn new(name: String, error: &Error, attempts: u32) -> Self {
        Failure {
            name,
            error: error.to_report_string(),
            kind: error.kind(),
            attempts,
        }
    }
}

/// What one warming run did.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct WarmReport {
    /// Templates found in the tree (including those that failed to be read).
    pub scanned: usize,
    /// Templates written to the cache.
    pub written: usize,
    /// Templates already current in the cache.
    pub unchanged: usize,
    /// Templates that failed, with their errors and attempts.
    pub failed: Vec<Failure>,
    /// Encoded bytes written.
    pub bytes_written: u64,
    /// Files read and hashed (the rest were trusted by fingerprint).
    pub files_hashed: u64,
    /// The run was cancelled before every batch was started.
    pub cancelled: bool,
    /// Entries the cache server evicted while this run wrote (ours or, on a shared server,
    /// anyone's), from the server's own counters; `0` when none were, or when the backend keeps
    /// no statistics.
    pub evicted: u64,
    /// Why evictions during the run matter, with the memory needed and available, when
    /// [`Self::evicted`] is not `0`.
    pub eviction_warning: Option<String>,
    /// Wall time of the run.
    #[serde(rename = "duration_ms", serialize_with = "as_millis")]
    pub duration: Duration,
    /// Templates the index holds whose file the scan did not find (and that do not lie under a
    /// part of the tree the scan could not read): orphans this run left alone, sorted. A full
    /// run fills it; [`crate::Warmer::warm_changed`] lists the changed names that are gone.
    #[serde(skip)]
    pub orphans: Vec<String>,
    /// [`crate::Warmer::warm_changed`]: a directory that held known templates is gone, or a
    /// new one holds too many files to read one by one: only a full run sees it right.
    #[serde(skip)]
    pub needs_full_run: bool,
}

impl WarmReport {
    /// Whether every template is current in the cache: nothing failed, the run was not
    /// cancelled, and the cache evicted nothing while it wrote (evicted templates are missing).
    pub fn is_success(&self) -> bool {
        self.failed.is_empty() && !self.cancelled && self.evicted == 0
    }
}

/// Quick compares file hashes with the index and checks entries exist; deep fetches and
/// verifies every entry.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CheckMode {
    /// Hashes against the index, plus an existence check of each entry.
    #[default]
    Quick,
    /// Fetch, decode and verify every entry.
    Deep,
}

/// What a consistency check found. Names are sorted.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct CheckReport {
    /// The mode the check ran in.
    pub mode: CheckMode,
    /// `true` when nothing is missing, outdated, orphaned or corrupt, and there were no errors.
    pub consistent: bool,
    /// Template files in the tree.
    pub files: usize,
    /// Entries known in the cache (index entries, plus listed keys on backends that list).
    pub entries: usize,
    /// Templates with a file but no cache entry.
    pub missing: Vec<String>,
    /// Templates whose cache entry holds other content than the file.
    pub outdated: Vec<String>,
    /// Cache entries whose file is gone.
    pub orphaned: Vec<String>,
    /// Entries that do not decode or whose content does not match its hash (by name, or by key
    /// where the name is unreadable).
    pub corrupt: Vec<String>,
    /// Items that could not be checked.
    pub errors: Vec<Failure>,
    /// Wall time of the check.
    #[serde(rename = "duration_ms", serialize_with = "as_millis")]
    pub duration: Duration,
    /// What resolution would act on.
    #[serde(skip)]
    pub(crate) plan: super::plan::Plan,
}

impl CheckReport {
    /// Number of inconsistencies of every kind.
    pub fn inconsistencies(&self) -> usize {
        self.missing.len() + self.outdated.len() + self.orphaned.len() + self.corrupt.len()
    }

    /// Keeps only the orphans (as listed in [`Self::orphaned`]) for which `keep` is true, in the
    /// list and in what a resolution of this report would delete: a service deletes orphans
    /// only once their grace period is over.
    pub fn retain_orphans(&mut self, keep: impl Fn(&str) -> bool) {
        use super::plan::Kind;
        self.orphaned.retain(|n| keep(n));
        self.plan
            .delete
            .retain(|d| d.kind != Kind::Orphaned || keep(d.name.as_deref().unwrap_or(&d.key)));
    }
}

/// What a resolution did (or, in a dry run, would do).
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct ResolveReport {
    /// Nothing was changed; the counts say what would have been.
    pub dry_run: bool,
    /// Missing templates written.
    pub added: usize,
    /// Outdated templates rewritten.
    pub updated: usize,
    /// Corrupt entries rewritten from their file or deleted.
    pub repaired: usize,
    /// Orphaned entries deleted.
    pub deleted: usize,
    /// Why the resolution was refused (nothing was changed), if it was.
    pub refused: Option<String>,
    /// Items that failed.
    pub failed: Vec<Failure>,
}

fn as_millis<S: serde::Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
