//! `tcache check`: compare the template tree with the cache; `--fix` resolves what was found.

use std::sync::Arc;

use template_cache::{CacheBackend, CheckMode, Checker, ErrorKind, Namespace, ResolvePolicy};
use template_cache_observe::Alerter;

use crate::args::{CheckArgs, Cli, FixKind};
use crate::{EXIT_FOUND, EXIT_OK, EXIT_REFUSED, observe_args, output};

/// Runs `tcache check`, raising alerts if any `--alert-*` flag is given. The alert state lives
/// under the state directory: a check run repeatedly alerts once per condition until a check
/// finds it cleared, then sends one "resolved".
pub async fn run(
    cli: &Cli,
    backend: Arc<dyn CacheBackend>,
    ns: Namespace,
    args: &CheckArgs,
) -> template_cache::Result<u8> {
    let alerter = args.alerts.alerter(cli, true)?;
    let code = check(cli, backend, ns, args, alerter.as_ref()).await;
    if let Some(a) = &alerter {
        a.tick();
    }
    observe_args::flush(alerter.as_ref()).await;
    code
}

/// Checks, then resolves with `--fix`.
async fn check(
    cli: &Cli,
    backend: Arc<dyn CacheBackend>,
    ns: Namespace,
    args: &CheckArgs,
    alerter: Option<&Arc<Alerter>>,
) -> template_cache::Result<u8> {
    let mut cfg = super::engine_config(cli, ns, &args.source)?;
    cfg.lease.wait = args.wait_lease;
    let checker = Checker::new(Arc::clone(&backend), cfg)?;
    let mode = if args.deep {
        CheckMode::Deep
    } else {
        CheckMode::Quick
    };
    let report = checker.check(mode).await;
    observe_args::observe_check(alerter, &report);
    let report = report?;
    if !args.fix {
        output::check(cli.json, &report, None, &backend.describe());
        return Ok(if report.consistent {
            EXIT_OK
        } else {
            EXIT_FOUND
        });
    }
    let fixes = |kind: FixKind| {
        if args.fix_only.is_empty() {
            !(kind == FixKind::Orphaned && args.keep_orphans)
        } else {
            args.fix_only.contains(&kind)
        }
    };
    let policy = ResolvePolicy {
        add_missing: fixes(FixKind::Missing),
        update_outdated: fixes(FixKind::Outdated),
        repair_corrupt: fixes(FixKind::Corrupt),
        delete_orphans: fixes(FixKind::Orphaned),
        dry_run: args.dry_run,
        max_delete: args.max_delete,
        max_delete_ratio: Some(args.max_delete_ratio),
        max_change: args.max_change,
        max_change_ratio: args.max_change_ratio,
        ..ResolvePolicy::default()
    };
    // Kinds found but left alone by choice: the cache is not consistent afterwards.
    let left = [
        (FixKind::Missing, &report.missing),
        (FixKind::Outdated, &report.outdated),
        (FixKind::Corrupt, &report.corrupt),
        (FixKind::Orphaned, &report.orphaned),
    ]
    .iter()
    .any(|(kind, found)| !fixes(*kind) && !found.is_empty());
    let fix = checker.resolve(&report, &policy).await;
    if let Some(a) = alerter {
        a.observe_resolve(&fix);
    }
    let fix = match fix {
        Err(e) if e.kind() != ErrorKind::Refused => {
            if !cli.json {
                output::check(false, &report, None, &backend.describe());
            }
            return Err(e.context("resolving"));
        }
        other => other,
    };
    output::check(cli.json, &report, Some(&fix), &backend.describe());
    Ok(match fix {
        Err(_) => EXIT_REFUSED,
        Ok(f) if !f.failed.is_empty() => EXIT_FOUND,
        // Parts of the tree or cache could not be checked: not everything is known to be right.
        Ok(_) if !report.errors.is_empty() => EXIT_FOUND,
        Ok(_) if report.consistent => EXIT_OK,
        // Inconsistencies were found (and fixed unless dry run): report them with 1 only if
        // something is left unresolved.
        Ok(f) if f.dry_run => EXIT_FOUND,
        Ok(_) if left => EXIT_FOUND,
        Ok(_) => EXIT_OK,
    })
}
