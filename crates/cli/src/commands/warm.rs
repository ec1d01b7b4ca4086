//! `tcache warm`: write new and changed templates to the cache, once or every `--interval`;
//! with `--prune`, then delete orphaned entries behind the thresholds of `check --fix`.

use std::sync::Arc;
use std::time::Duration;

use template_cache::{
    CacheBackend, CancellationToken, CheckMode, Checker, EngineConfig, Error, ErrorKind, Namespace,
    ResolvePolicy, ResolveReport, WarmReport, Warmer,
};
use template_cache_observe::{Alerter, Health, MetricsServer};

use crate::args::{Cli, WarmArgs};
use crate::{EXIT_FOUND, EXIT_OK, EXIT_REFUSED, observe_args, output};

/// The jitter of `--interval`: each pause is the interval ± 10%.
const JITTER: f64 = 0.1;

/// Runs `tcache warm`, raising alerts if any `--alert-*` flag is given (a one-shot run keeps
/// its alert state under the state directory, so that a cron job alerts once per condition).
pub async fn run(
    cli: &Cli,
    backend: Arc<dyn CacheBackend>,
    ns: Namespace,
    args: &WarmArgs,
) -> template_cache::Result<u8> {
    let alerter = args.observe.alerts.alerter(cli, args.interval.is_none())?;
    let code = warm(cli, backend, ns, args, alerter.as_ref()).await;
    if let Some(a) = &alerter {
        a.tick();
    }
    observe_args::flush(alerter.as_ref()).await;
    code
}

/// Warms once or every `--interval`; with `--metrics-addr`, serves the metrics and health
/// endpoints meanwhile.
async fn warm(
    cli: &Cli,
    backend: Arc<dyn CacheBackend>,
    ns: Namespace,
    args: &WarmArgs,
    alerter: Option<&Arc<Alerter>>,
) -> template_cache::Result<u8> {
    let mut cfg = super::engine_config(cli, ns, &args.source)?;
    cfg.priority = args.priority.clone();
    cfg.verify_existing = !args.trust_index;
    cfg.lease.wait = args.wait_lease;
    let warmer = Warmer::new(Arc::clone(&backend), cfg.clone())?;
    let cancel = CancellationToken::new();
    spawn_signal_handler(cancel.clone());
    let json = cli.json;
    let describe = backend.describe();
    let Some(interval) = args.interval else {
        let report = warmer.run_once_until(&cancel).await;
        observe_args::observe_warm(alerter, &report);
        let report = report?;
        let prune = if args.prune && !report.cancelled && !cancel.is_cancelled() {
            let pruned = prune(&backend, &cfg, args).await;
            if let Some(a) = alerter {
                a.observe_resolve(&pruned);
            }
            match pruned {
                Err(e) if e.kind() != ErrorKind::Refused => {
                    if !json {
                        output::warm(false, &report, None, &describe);
                    }
                    return Err(e.context("pruning"));
                }
                other => Some(other),
            }
        } else {
            None
        };
        output::warm(json, &report, prune.as_ref(), &describe);
        return Ok(match prune {
            Some(Err(_)) => EXIT_REFUSED,
            Some(Ok(p)) if !p.failed.is_empty() => EXIT_FOUND,
            _ if !report.is_success() => EXIT_FOUND,
            _ => EXIT_OK,
        });
    };
    // Ready once a warm completed; not ready while runs fail (the backend unreachable).
    let health = Arc::new(Health::new());
    health.set_role("warmer");
    if let Some(addr) = &args.observe.metrics_addr {
        MetricsServer::start(addr, Arc::clone(&health), cancel.clone())
            .await
            .map_err(|e| e.context("--metrics-addr"))?;
    }
    if !args.prune {
        warmer
            .run_periodic(interval, JITTER, cancel, |r| {
                observe_run(&r, &health, alerter);
                match r {
                    Ok(report) => output::warm(json, &report, None, &describe),
                    Err(e) => {
                        tracing::error!(error = %e.to_report_string(), "warm run failed; retrying at the next interval");
                    }
                }
            })
            .await;
        return Ok(EXIT_OK);
    }
    // Warm then prune, every interval, until interrupted.
    loop {
        let warmed = warmer.run_once_until(&cancel).await;
        observe_run(&warmed, &health, alerter);
        match warmed {
            Ok(report) => {
                let pruned = if cancel.is_cancelled() {
                    None
                } else {
                    let pruned = prune(&backend, &cfg, args).await;
                    if let Some(a) = alerter {
                        a.observe_resolve(&pruned);
                    }
                    match pruned {
                        Err(e) if e.kind() != ErrorKind::Refused => {
                            tracing::error!(error = %e.to_report_string(), "prune failed; retrying at the next interval");
                            None
                        }
                        other => Some(other),
                    }
                };
                output::warm(json, &report, pruned.as_ref(), &describe);
            }
            Err(e) => {
                tracing::error!(error = %e.to_report_string(), "warm run failed; retrying at the next interval");
            }
        }
        if cancel.is_cancelled() {
            return Ok(EXIT_OK);
        }
        tokio::select! {
            _ = cancel.cancelled() => return Ok(EXIT_OK),
            _ = tokio::time::sleep(jittered(interval)) => {}
        }
    }
}

/// Tells the health endpoint and the alerter how a warm run of `--interval` went: ready once
/// one completed, not ready while they fail (another writer holding the namespace is no
/// failure).
fn observe_run(
    r: &template_cache::Result<WarmReport>,
    health: &Health,
    alerter: Option<&Arc<Alerter>>,
) {
    match r {
        Ok(_) => health.set_ready(),
        Err(e) if e.kind() == ErrorKind::Conflict => {}
        Err(e) if e.kind() == ErrorKind::Unavailable => health.set_not_ready(format!(
            "backend unreachable: {}",
            crate::scrubbed(&e.to_report_string())
        )),
        Err(e) => health.set_not_ready(format!(
            "the last warm failed: {}",
            crate::scrubbed(&e.to_report_string())
        )),
    }
    observe_args::observe_warm(alerter, r);
}

/// Deletes orphaned entries: a quick check (after the warm: fingerprints are fresh), then a
/// resolution that only deletes orphans, behind `--max-delete`, `--max-delete-ratio` and the
/// empty-tree refusal, exactly as `check --fix` would (a refusal changes nothing).
async fn prune(
    backend: &Arc<dyn CacheBackend>,
    cfg: &EngineConfig,
    args: &WarmArgs,
) -> Result<ResolveReport, Error> {
    let checker = Checker::new(Arc::clone(backend), cfg.clone())?;
    let report = checker.check(CheckMode::Quick).await?;
    let policy = ResolvePolicy {
        add_missing: false,
        update_outdated: false,
        repair_corrupt: false,
        delete_orphans: true,
        dry_run: false,
        max_delete: args.max_delete,
        max_delete_ratio: Some(args.max_delete_ratio),
        max_change: None,
        max_change_ratio: None,
        allow_empty_source: false,
    };
    checker.resolve(&report, &policy).await
}

/// `interval` ± [`JITTER`], so that warmers started together spread out.
fn jittered(interval: Duration) -> Duration {
    use std::hash::BuildHasher;
    // A fresh randomly keyed hasher is random enough to spread pauses.
    let r = std::collections::hash_map::RandomState::new().hash_one(std::time::SystemTime::now());
    let unit = (r >> 11) as f64 / (1u64 << 53) as f64;
    interval.mul_f64(1.0 + JITTER * (2.0 * unit - 1.0))
}

/// Cancels `token` on SIGINT or SIGTERM; a second signal exits at once.
fn spawn_signal_handler(token: CancellationToken) {
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::warn!("interrupted: finishing the batch in flight (interrupt again to abort)");
        token.cancel();
        wait_for_signal().await;
        std::process::exit(130);
    });
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}
