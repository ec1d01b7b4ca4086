//! The Prometheus registry of a process: every metric template-cache records, described once,
//! rendered for `/metrics` ([`crate::http`]) and for node_exporter's textfile collector
//! ([`write_textfile`]).
//!
//! The engines record through the `metrics` facade; nothing is kept until [`install`] puts the
//! Prometheus recorder in place (once per process).

use std::io::Write;
use std::path::Path;
use std::sync::OnceLock;
use std::time::Duration;

use metrics::Unit;
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use template_cache_core::{Error, ErrorKind, Result};

/// Bucket bounds, in seconds, of every histogram: from a millisecond (one backend call on
/// loopback) to an hour (a warm of a very large tree behind a rate limit).
pub const SECONDS_BUCKETS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    120.0, 300.0, 600.0, 1800.0, 3600.0,
];

/// How often the recorder's upkeep (draining histogram samples) runs between scrapes.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The names of the metrics, with their kind, labels and meaning (also the `# HELP` text).
pub mod names {
    /// Counter: templates written to the cache (warm runs and resolutions through the warm
    /// pipeline).
    pub const TEMPLATES_WRITTEN: &str = "tcache_templates_written_total";
    /// Counter: templates that failed in a warm run.
    pub const TEMPLATES_FAILED: &str = "tcache_templates_failed_total";
    /// Counter: templates found in the tree by warm runs.
    pub const TEMPLATES_SCANNED: &str = "tcache_templates_scanned_total";
    /// Counter: templates found already current by warm runs.
    pub const TEMPLATES_UNCHANGED: &str = "tcache_templates_unchanged_total";
    /// Counter: encoded bytes written by warm runs.
    pub const BYTES_WRITTEN: &str = "tcache_bytes_written_total";
    /// Counter: files read and hashed (the others were trusted by fingerprint).
    pub const FILES_HASHED: &str = "tcache_files_hashed_total";
    /// Counter: entries the cache server evicted while a warm run wrote.
    pub const EVICTIONS_DURING_WARM: &str = "tcache_evictions_during_warm_total";
    /// Histogram, label `kind` (warm, check, resolve): wall time of completed runs.
    pub const RUN_DURATION: &str = "tcache_run_duration_seconds";
    /// Counter, label `kind` (warm, check, resolve): runs that failed as a whole.
    pub const RUNS_FAILED: &str = "tcache_runs_failed_total";
    /// Gauge, label `kind` (warm, check, resolve): Unix time of the last successful run.
    pub const LAST_SUCCESS: &str = "tcache_last_success_timestamp_seconds";
    /// Gauge, label `kind` (missing, outdated, corrupt, orphaned): what the last check found.
    pub const INCONSISTENCIES: &str = "tcache_inconsistencies";
    /// Counter: resolutions refused by a safety threshold.
    pub const RESOLUTIONS_REFUSED: &str = "tcache_resolutions_refused_total";
    /// Histogram, label `op`: wall time of one backend call (one batch).
    pub const BACKEND_OP_DURATION: &str = "tcache_backend_op_duration_seconds";
    /// Counter, label `op`: backend calls that returned an error.
    pub const BACKEND_ERRORS: &str = "tcache_backend_errors_total";
    /// Counter: retries of backend calls after temporary errors.
    pub const RETRIES: &str = "tcache_retries_total";
    /// Gauge: 1 while this process holds the namespace write lease, else 0.
    pub const LEASE_HELD: &str = "tcache_lease_held";
    /// Histogram: time from a file change to its template in the cache (watching only).
    pub const CHANGE_TO_CACHE: &str = "tcache_change_to_cache_seconds";
    /// Counter, label `origin` (cache, file): templates served by readers.
    pub const READS: &str = "tcache_reads_total";
    /// Counter: index shards found lost or damaged.
    pub const INDEX_SHARDS_LOST: &str = "tcache_index_shards_lost_total";
    /// Counter, labels `condition` and `status` (firing, resolved): alerts raised.
    pub const ALERTS: &str = "tcache_alerts_total";
    /// Counter, label `sink` (webhook, command): alert deliveries that failed for good.
    pub const ALERT_DELIVERY_FAILURES: &str = "tcache_alert_delivery_failures_total";
}

static HANDLE: OnceLock<std::result::Result<PrometheusHandle, String>> = OnceLock::new();

/// Installs the Prometheus recorder as the process's `metrics` recorder (once: later calls
/// return the same handle) and describes every metric.
///
/// Fails if another `metrics` recorder was installed first.
pub fn install() -> Result<PrometheusHandle> {
    let installed = HANDLE.get_or_init(|| {
        let handle = PrometheusBuilder::new()
            .set_buckets(SECONDS_BUCKETS)
            .map_err(|e| e.to_string())?
            .install_recorder()
            .map_err(|e| e.to_string())?;
        describe();
        let upkeep = handle.clone();
        let spawned = std::thread::Builder::new()
            .name("tcache-metrics-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(UPKEEP_EVERY);
                    upkeep.run_upkeep();
                }
            });
        if let Err(e) = spawned {
            // Rendering drains histograms too: only memory between scrapes is at stake.
            tracing::warn!(error = %e, "cannot start the metrics upkeep thread");
        }
        Ok(handle)
    });
    installed.clone().map_err(|why| {
        Error::new(
            ErrorKind::Unexpected,
            format!("cannot install the Prometheus metrics recorder: {why}"),
        )
    })
}

/// The installed recorder's handle, if [`install`] succeeded.
pub fn handle() -> Option<PrometheusHandle> {
    HANDLE.get().and_then(|h| h.as_ref().ok().cloned())
}

/// The metrics in the Prometheus text exposition format (empty before [`install`]).
pub fn render() -> String {
    handle().map(|h| h.render()).unwrap_or_default()
}

/// Writes the metrics to `path` for node_exporter's textfile collector, atomically: to a
/// temporary file in the same directory, then renamed over `path`, so a reader never sees half
/// a file. The metrics are those recorded so far; nothing is written before [`install`].
pub fn write_textfile(path: &Path) -> Result<()> {
    let text = match handle() {
        Some(h) => h.render(),
        None => {
            return Err(Error::new(
                ErrorKind::Unexpected,
                "no metrics recorder is installed: nothing to write",
            ));
        }
    };
    write_atomically(path, text.as_bytes())
}

/// Writes `bytes` to `path` through a temporary file in its directory and a rename.
pub(crate) fn write_atomically(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let file_name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .ok_or_else(|| {
            Error::new(
                ErrorKind::ConfigInvalid,
                format!("{} names no file", path.display()),
            )
        })?;
    // A leading dot: node_exporter reads only `*.prom`, and the name is unique to this process.
    let tmp = dir.join(format!(".{file_name}.{}.tmp", std::process::id()));
    let written = std::fs::File::create(&tmp).and_then(|mut f| {
        f.write_all(bytes)?;
        f.sync_all()
    });
    if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::io(path, e));
    }
    Ok(())
}

/// Describes every metric (its `# HELP` line and unit). [`install`] calls it; calling it again
/// is harmless.
pub fn describe() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    use names::*;
    describe_counter!(
        TEMPLATES_WRITTEN,
        Unit::Count,
        "Templates written to the cache by warm runs."
    );
    describe_counter!(
        TEMPLATES_FAILED,
        Unit::Count,
        "Templates that failed in warm runs (read, encode or write errors)."
    );
    describe_counter!(
        TEMPLATES_SCANNED,
        Unit::Count,
        "Templates found in the tree by warm runs."
    );
    describe_counter!(
        TEMPLATES_UNCHANGED,
        Unit::Count,
        "Templates found already current in the cache by warm runs."
    );
    describe_counter!(
        BYTES_WRITTEN,
        Unit::Bytes,
        "Encoded bytes written to the cache by warm runs."
    );
    describe_counter!(
        FILES_HASHED,
        Unit::Count,
        "Files read and hashed (the others were trusted by their fingerprint)."
    );
    describe_counter!(
        EVICTIONS_DURING_WARM,
        Unit::Count,
        "Entries the cache server evicted while a warm run wrote (an undersized cache)."
    );
    describe_histogram!(
        RUN_DURATION,
        Unit::Seconds,
        "Wall time of completed runs, by kind (warm, check, resolve)."
    );
    describe_counter!(
        RUNS_FAILED,
        Unit::Count,
        "Runs that failed as a whole (tree unreadable, backend unreachable), by kind."
    );
    describe_gauge!(
        LAST_SUCCESS,
        Unit::Seconds,
        "Unix time of the last successful run, by kind (warm, check, resolve)."
    );
    describe_gauge!(
        INCONSISTENCIES,
        Unit::Count,
        "Inconsistencies the last check found, by kind (missing, outdated, corrupt, orphaned)."
    );
    describe_counter!(
        RESOLUTIONS_REFUSED,
        Unit::Count,
        "Resolutions refused by a safety threshold (nothing was changed)."
    );
    describe_histogram!(
        BACKEND_OP_DURATION,
        Unit::Seconds,
        "Wall time of one backend call (one batch), by operation."
    );
    describe_counter!(
        BACKEND_ERRORS,
        Unit::Count,
        "Backend calls that returned an error, by operation."
    );
    describe_counter!(
        RETRIES,
        Unit::Count,
        "Backend calls retried after a temporary error."
    );
    describe_gauge!(
        LEASE_HELD,
        Unit::Count,
        "1 while this process holds the namespace write lease, else 0."
    );
    describe_histogram!(
        CHANGE_TO_CACHE,
        Unit::Seconds,
        "Time from a file change to its template being in the cache (watching only)."
    );
    describe_counter!(
        READS,
        Unit::Count,
        "Templates served by readers, by origin (cache, file)."
    );
    describe_counter!(
        INDEX_SHARDS_LOST,
        Unit::Count,
        "Index shards found lost or damaged."
    );
    describe_counter!(
        ALERTS,
        Unit::Count,
        "Alerts raised, by condition and status (firing, resolved)."
    );
    describe_counter!(
        ALERT_DELIVERY_FAILURES,
        Unit::Count,
        "Alert deliveries that failed after every attempt, by sink (webhook, command)."
    );
}

/// The current Unix time in seconds (the value of [`names::LAST_SUCCESS`]).
pub fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_registry_renders_described_histograms_with_buckets() {
        let h = install().unwrap();
        assert!(
            install().is_ok(),
            "installing twice returns the same handle"
        );
        metrics::histogram!(names::RUN_DURATION, "kind" => "warm").record(0.3);
        metrics::counter!(names::TEMPLATES_WRITTEN).increment(2);
        let text = h.render();
        assert!(
            text.contains("# HELP tcache_run_duration_seconds Wall time"),
            "{text}"
        );
        assert!(text.contains("# TYPE tcache_run_duration_seconds histogram"));
        assert!(text.contains("tcache_run_duration_seconds_bucket{kind=\"warm\",le=\"0.5\"}"));
        assert!(text.contains("# TYPE tcache_templates_written_total counter"));
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tcache.prom");
        write_textfile(&path).unwrap();
        let written = std::fs::read_to_string(&path).unwrap();
        assert!(written.contains("tcache_templates_written_total"));
        let names: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
        assert_eq!(names.len(), 1, "no temporary file is left behind");
        let e = write_textfile(&dir.path().join("missing/x.prom")).unwrap_err();
        assert!(e.to_string().contains("missing/x.prom"), "{e}");
    }
}
