//! `tcache warm`: write new and changed templates to the cache, once or every `--interval`.

use std::sync::Arc;

use template_cache::{CacheBackend, CancellationToken, Namespace, Warmer};

use crate::args::{Cli, WarmArgs};
use crate::{EXIT_FOUND, EXIT_OK, output};

/// Runs `tcache warm`.
pub async fn run(
    cli: &Cli,
    backend: Arc<dyn CacheBackend>,
    ns: Namespace,
    args: &WarmArgs,
) -> template_cache::Result<u8> {
    let mut cfg = super::engine_config(cli, ns, &args.source)?;
    cfg.priority = args.priority.clone();
    cfg.verify_existing = !args.trust_index;
    cfg.lease.wait = args.wait_lease;
    let warmer = Warmer::new(Arc::clone(&backend), cfg)?;
    let cancel = CancellationToken::new();
    spawn_signal_handler(cancel.clone());
    let Some(interval) = args.interval else {
        let report = warmer.run_once_until(&cancel).await?;
        output::warm(cli.json, &report, &backend.describe());
        return Ok(if report.is_success() {
            EXIT_OK
        } else {
            EXIT_FOUND
        });
    };
    let json = cli.json;
    let describe = backend.describe();
    warmer
        .run_periodic(interval, 0.1, cancel, |r| match r {
            Ok(report) => output::warm(json, &report, &describe),
            Err(e) => {
                tracing::error!(error = %e.to_report_string(), "warm run failed; retrying at the next interval");
            }
        })
        .await;
    Ok(EXIT_OK)
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
