//! `tcache serve`: the service, until SIGTERM/SIGINT; SIGHUP reloads the configuration.
//!
//! A reload parses the command line and the config file again. An invalid new configuration
//! is logged and the running service keeps its old one. A valid one replaces the running
//! service after its batch in flight; the namespace write lease stays held across the reload
//! when the backend and namespace are unchanged.

use std::ffi::OsString;
use std::sync::Arc;
use std::time::Duration;

use clap::Parser;
use template_cache::{CacheBackend, CancellationToken, Error, ErrorKind, SharedLease, url::redact};
use template_cache::{CheckReport, ResolveReport, Result, WarmReport};
use template_cache_observe::health::Health;
use template_cache_observe::{Alerter, MetricsServer};
use template_cache_service::{
    CheckWindows, Mode, Observer, ResolveModes, ServeConfig, Service, Thresholds,
};

use crate::EXIT_OK;
use crate::args::{Cli, Command};
use crate::serve_args::{ResolveMode, ServeArgs};

/// Runs `tcache serve` with `cli` as first parsed from `argv` (the original command line,
/// parsed again with the config file on every SIGHUP).
pub async fn run(cli: &Cli, argv: &[OsString]) -> template_cache::Result<u8> {
    let Command::Serve(args) = &cli.command else {
        return Err(Error::new(
            ErrorKind::Unexpected,
            "serve: not a serve command",
        ));
    };
    let mut config = serve_config(cli, args)?;
    let mut shutdown_timeout = args.shutdown_timeout;
    let mut backend_key = (cli.backend.clone(), cli.namespace.clone());
    let signals = Signals::install()?;
    let health = Arc::new(Health::new());
    let lease = SharedLease::new();
    let stop = signals.stop.clone();
    template_cache_observe::metrics::install()?;
    // The endpoint lives as long as the process: a reload does not move it.
    let endpoint = match &args.observe.metrics_addr {
        Some(addr) => {
            let server = MetricsServer::start(addr, Arc::clone(&health), stop.clone()).await?;
            tracing::info!(addr = %server.local_addr(), "metrics, /healthz and /readyz served");
            Some(server)
        }
        None => None,
    };
    let mut alerter = args.observe.alerts.alerter(cli, false)?;
    let Some(mut backend) = open_backend(cli, &stop, &health).await? else {
        return Ok(EXIT_OK);
    };
    let mut reload = signals.reload;
    loop {
        // Not a child of `stop`: a stop is seen by this loop first, which then ends the service
        // (so the service ending by itself always means an error at start).
        let generation = CancellationToken::new();
        let service = Service::new(
            config.clone(),
            Arc::clone(&backend),
            lease.clone(),
            Arc::clone(&health),
            Arc::new(Alerts(alerter.clone())),
        )?;
        tracing::info!(
            dir = %config.engine.source.root.display(),
            backend = %backend.describe(),
            namespace = %config.engine.namespace,
            "serving"
        );
        let mut task = tokio::spawn(service.run(generation.clone()));
        // Until the service ends by itself (an error at start), a stop, or a valid reload.
        let next = loop {
            tokio::select! {
                r = &mut task => {
                    lease.release().await;
                    crate::observe_args::flush(alerter.as_ref()).await;
                    return match r {
                        Ok(Ok(())) => Ok(EXIT_OK),
                        Ok(Err(e)) => Err(e),
                        Err(e) => Err(Error::new(ErrorKind::Unexpected, format!("the service task failed: {e}"))),
                    };
                }
                _ = stop.cancelled() => break None,
                Some(()) = reload.recv() => match reparse(argv) {
                    Ok(new) => break Some(new),
                    Err(e) => tracing::error!(error = %e, "reload refused: the new configuration is invalid; keeping the running one"),
                },
            }
        };
        generation.cancel();
        if tokio::time::timeout(shutdown_timeout, &mut task)
            .await
            .is_err()
        {
            tracing::warn!(timeout = ?shutdown_timeout, "the service did not stop in time; leaving it");
            task.abort();
        }
        let Some((new_cli, new_config, new_timeout)) = next else {
            lease.release().await;
            if let Some(a) = &alerter {
                a.observe_lease_released();
            }
            crate::observe_args::flush(alerter.as_ref()).await;
            if let Some(e) = endpoint {
                e.stopped().await;
            }
            tracing::info!("stopped");
            return Ok(EXIT_OK);
        };
        if let Command::Serve(new_args) = &new_cli.command {
            if new_args.observe.metrics_addr != args.observe.metrics_addr {
                tracing::warn!(
                    "a new --metrics-addr takes effect at the next restart, not on reload"
                );
            }
            alerter = new_args.observe.alerts.alerter(&new_cli, false)?;
        }
        let new_key = (new_cli.backend.clone(), new_cli.namespace.clone());
        if new_key != backend_key {
            lease.release().await;
            crate::remember(template_cache::url::Secrets::of(&new_cli.backend));
            match open_backend(&new_cli, &stop, &health).await? {
                Some(b) => backend = b,
                None => return Ok(EXIT_OK),
            }
            backend_key = new_key;
        }
        tracing::info!(backend = %redact(&new_cli.backend), "configuration reloaded");
        config = new_config;
        shutdown_timeout = new_timeout;
    }
}

/// The command line and config file parsed again, into a new configuration.
fn reparse(argv: &[OsString]) -> template_cache::Result<(Cli, ServeConfig, Duration)> {
    let invalid = |m: String| Error::new(ErrorKind::ConfigInvalid, m);
    let merged = crate::config_file::merge(argv.to_vec()).map_err(invalid)?;
    let cli = Cli::try_parse_from(&merged.argv).map_err(|e| {
        invalid(
            merged
                .explain(&e)
                .unwrap_or_else(|| e.render().to_string().trim_end().to_owned()),
        )
    })?;
    let Command::Serve(args) = &cli.command else {
        return Err(invalid("the command is no longer serve".into()));
    };
    let config = serve_config(&cli, args)?;
    let timeout = args.shutdown_timeout;
    Ok((cli, config, timeout))
}

/// Opens the backend, retrying with backoff while it is unreachable (a bad URL fails at once);
/// `None` when stopped meanwhile.
async fn open_backend(
    cli: &Cli,
    stop: &CancellationToken,
    health: &Health,
) -> template_cache::Result<Option<Arc<dyn CacheBackend>>> {
    let mut pause = Duration::from_millis(500);
    loop {
        match crate::connect(cli).await {
            Ok((backend, _)) => return Ok(Some(backend)),
            Err(e) if e.kind() == ErrorKind::ConfigInvalid => return Err(e),
            Err(e) => {
                tracing::error!(error = %e.to_report_string(), retry_in = ?pause, "cannot reach the backend; retrying");
                health.set_not_ready(format!("backend unavailable: {e}"));
            }
        }
        tokio::select! {
            _ = stop.cancelled() => return Ok(None),
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(Duration::from_secs(30));
    }
}

/// The service configuration of `tcache serve`.
pub fn serve_config(cli: &Cli, args: &ServeArgs) -> template_cache::Result<ServeConfig> {
    let ns =
        template_cache::Namespace::new(&cli.namespace).map_err(|e| e.context("--namespace"))?;
    let mut engine = super::engine_config(cli, ns, &args.source)?;
    engine.priority = args.priority.clone();
    let mut c = ServeConfig::new(engine);
    c.state_dir = Some(super::state_dir(cli));
    c.debounce = args.debounce;
    c.rescan_interval = args.rescan_interval;
    c.watch = !args.no_watch;
    c.poll_interval = args.poll_interval;
    let nonzero = |d: Duration| (!d.is_zero()).then_some(d);
    c.orphan_grace = nonzero(args.orphan_grace);
    c.check_every = nonzero(args.check_every);
    c.deep_check_every = nonzero(args.deep_check_every);
    c.check_windows = CheckWindows::parse(&args.time_zone, &args.check_windows)?;
    c.check_jitter = args.check_jitter;
    let mode = |m: ResolveMode| match m {
        ResolveMode::Auto => Mode::Auto,
        ResolveMode::Report => Mode::Report,
    };
    c.resolve = ResolveModes {
        missing: mode(args.resolve_missing),
        outdated: mode(args.resolve_outdated),
        corrupt: mode(args.resolve_corrupt),
        orphaned: mode(args.resolve_orphaned),
    };
    c.thresholds = Thresholds {
        max_delete: args.max_delete,
        max_delete_ratio: Some(args.max_delete_ratio),
        max_change: args.max_change,
        max_change_ratio: args.max_change_ratio,
    };
    c.max_backoff = args.max_backoff;
    c.validate()?;
    Ok(c)
}

/// Stop (SIGTERM/SIGINT; a second one exits at once) and reload (SIGHUP) signals.
struct Signals {
    stop: CancellationToken,
    reload: tokio::sync::mpsc::Receiver<()>,
}

impl Signals {
    fn install() -> template_cache::Result<Self> {
        use tokio::signal::unix::{SignalKind, signal};
        let failed = |e: std::io::Error| {
            Error::new(
                ErrorKind::Unexpected,
                format!("cannot install signal handlers: {e}"),
            )
        };
        let mut term = signal(SignalKind::terminate()).map_err(failed)?;
        let mut int = signal(SignalKind::interrupt()).map_err(failed)?;
        let mut hup = signal(SignalKind::hangup()).map_err(failed)?;
        let stop = CancellationToken::new();
        let (tx, reload) = tokio::sync::mpsc::channel(1);
        let token = stop.clone();
        tokio::spawn(async move {
            let mut stopping = false;
            loop {
                tokio::select! {
                    _ = term.recv() => {}
                    _ = int.recv() => {}
                    _ = hup.recv() => {
                        tracing::info!("SIGHUP: reloading the configuration");
                        let _ = tx.try_send(());
                        continue;
                    }
                }
                if stopping {
                    tracing::warn!("second stop signal: exiting now");
                    std::process::exit(130);
                }
                stopping = true;
                tracing::info!(
                    "stopping: finishing the batch in flight (signal again to exit now)"
                );
                token.cancel();
            }
        });
        Ok(Signals { stop, reload })
    }
}

/// What the service does, fed to the alerter (when alert flags are given).
struct Alerts(Option<Arc<Alerter>>);

impl Observer for Alerts {
    fn warmed(&self, report: &Result<WarmReport>, _full: bool, _latency: Option<Duration>) {
        if let Some(a) = &self.0 {
            a.observe_warm(report);
        }
    }

    fn checked(&self, report: &Result<CheckReport>) {
        if let Some(a) = &self.0 {
            match report {
                Ok(r) => a.observe_check(r),
                Err(e) => a.observe_check_failed(e),
            }
        }
    }

    fn resolved(&self, report: &Result<ResolveReport>) {
        if let Some(a) = &self.0 {
            a.observe_resolve(report);
        }
    }

    fn backend(&self, reachable: bool) {
        if let Some(a) = &self.0 {
            a.observe_backend(reachable);
        }
    }

    fn lease(&self, held: bool) {
        if let Some(a) = &self.0 {
            a.observe_lease(held);
        }
    }

    fn standing_by(&self) {
        // Another holder keeps the namespace warm: no "no successful warm" from a standby.
        if let Some(a) = &self.0 {
            a.observe_warm(&Ok(WarmReport::default()));
        }
    }

    fn tick(&self) {
        if let Some(a) = &self.0 {
            a.tick();
        }
    }
}
