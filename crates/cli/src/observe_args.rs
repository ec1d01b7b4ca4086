//! The observability flags: `--metrics-addr` and the `--alert-*` flags, shared by `warm`
//! (`--interval`), `check` and `serve`, and what they become: the observe crate's
//! [`AlertConfig`] and an [`Alerter`].
//!
//! Like `args.rs` (whose parsers it uses), every value is range-checked by its parser: an out-of-range value is a usage
//! error (exit 2) naming the flag and its range.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use clap::Args;
use template_cache_observe::{AlertConfig, AlertContext, Alerter};

use crate::args::{Cli, Command, count_in, duration_in, ratio};

/// `--alert-inconsistencies`.
pub const ALERT_INCONSISTENCIES_RANGE: (u64, u64) = (1, 1_000_000_000);
/// `--alert-backend-down` and `--alert-no-warm`.
pub const ALERT_AGE_RANGE: (Duration, Duration) = AlertConfig::AGE_RANGE;
/// `--alert-webhook-timeout`.
pub const ALERT_WEBHOOK_TIMEOUT_RANGE: (Duration, Duration) = AlertConfig::WEBHOOK_TIMEOUT_RANGE;
/// `--alert-webhook-attempts`.
pub const ALERT_WEBHOOK_ATTEMPTS_RANGE: (u64, u64) = (
    AlertConfig::WEBHOOK_ATTEMPTS_RANGE.0 as u64,
    AlertConfig::WEBHOOK_ATTEMPTS_RANGE.1 as u64,
);
/// `--alert-command-timeout`.
pub const ALERT_COMMAND_TIMEOUT_RANGE: (Duration, Duration) = AlertConfig::COMMAND_TIMEOUT_RANGE;

/// A parser of webhook URLs: http:// or https://.
fn webhook_url(s: &str) -> Result<String, String> {
    let rest = s
        .strip_prefix("https://")
        .or_else(|| s.strip_prefix("http://"));
    match rest {
        Some(r) if !r.is_empty() && !r.starts_with('/') => Ok(s.to_owned()),
        _ => Err("must be an http:// or https:// URL".into()),
    }
}

/// A parser of listen addresses: `HOST:PORT` (`127.0.0.1:9187`, `[::]:9187`,
/// `localhost:9187`), port 0 to 65535 (0: any free port).
fn listen_addr(s: &str) -> Result<String, String> {
    if s.parse::<std::net::SocketAddr>().is_ok() {
        return Ok(s.to_owned());
    }
    let bad = || "must be HOST:PORT (for example 127.0.0.1:9187 or [::]:9187)".to_owned();
    let (host, port) = s.rsplit_once(':').ok_or_else(bad)?;
    let host_ok = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
    if host_ok && port.parse::<u16>().is_ok() {
        Ok(s.to_owned())
    } else {
        Err(bad())
    }
}

#[derive(Args, Debug, Clone, Default)]
pub struct AlertArgs {
    /// POST each alert as JSON to URL (http:// or https://; repeatable). Alerts fire once per
    /// condition until it clears, then send one "resolved".
    #[arg(
        long = "alert-webhook",
        value_name = "URL",
        env = "TCACHE_ALERT_WEBHOOK",
        hide_env_values = true,
        value_parser = webhook_url
    )]
    pub alert_webhook: Vec<String>,
    /// Run CMD with `sh -c` for each alert, the alert's JSON on its standard input.
    #[arg(long, value_name = "CMD")]
    pub alert_command: Option<String>,
    /// Alert when a check finds at least N inconsistencies (1 to 1000000000).
    #[arg(long, allow_negative_numbers = true, value_name = "N", value_parser = count_in::<usize>(ALERT_INCONSISTENCIES_RANGE))]
    pub alert_inconsistencies: Option<usize>,
    /// Alert when a check finds inconsistencies amounting to at least this fraction of the
    /// templates (0 to 1).
    #[arg(long, allow_negative_numbers = true, value_name = "F", value_parser = ratio)]
    pub alert_inconsistency_ratio: Option<f64>,
    /// Alert when the backend stays unreachable for longer than DURATION (1s to 365d).
    #[arg(long, value_name = "DURATION", value_parser = duration_in(ALERT_AGE_RANGE.0, ALERT_AGE_RANGE.1))]
    pub alert_backend_down: Option<Duration>,
    /// Alert when no warm succeeds for longer than DURATION (1s to 365d).
    #[arg(long, value_name = "DURATION", value_parser = duration_in(ALERT_AGE_RANGE.0, ALERT_AGE_RANGE.1))]
    pub alert_no_warm: Option<Duration>,
    /// Time allowed for one webhook attempt (100ms to 5m).
    #[arg(long, value_name = "DURATION", default_value = "10s", value_parser = duration_in(ALERT_WEBHOOK_TIMEOUT_RANGE.0, ALERT_WEBHOOK_TIMEOUT_RANGE.1))]
    pub alert_webhook_timeout: Duration,
    /// Attempts per webhook and alert, including the first (1 to 10); connection errors,
    /// timeouts, 429 and 5xx answers are retried with a growing pause.
    #[arg(long, allow_negative_numbers = true, value_name = "N", default_value_t = AlertConfig::DEFAULT_WEBHOOK_ATTEMPTS, value_parser = count_in::<u32>(ALERT_WEBHOOK_ATTEMPTS_RANGE))]
    pub alert_webhook_attempts: u32,
    /// Time allowed for --alert-command before it is killed (100ms to 1h).
    #[arg(long, value_name = "DURATION", default_value = "30s", value_parser = duration_in(ALERT_COMMAND_TIMEOUT_RANGE.0, ALERT_COMMAND_TIMEOUT_RANGE.1))]
    pub alert_command_timeout: Duration,
}

#[derive(Args, Debug, Clone, Default)]
pub struct ObserveArgs {
    /// Serve Prometheus metrics on http://HOST:PORT/metrics, with /healthz (alive) and /readyz
    /// (200 once warm and the backend answers, else 503); `warm` needs --interval.
    #[arg(long, value_name = "HOST:PORT", value_parser = listen_addr)]
    pub metrics_addr: Option<String>,
    #[command(flatten)]
    pub alerts: AlertArgs,
}

impl AlertArgs {
    /// The observe crate's alert configuration of these flags.
    pub fn config(&self) -> AlertConfig {
        AlertConfig {
            webhooks: self.alert_webhook.clone(),
            command: self.alert_command.clone(),
            log: true,
            webhook_timeout: self.alert_webhook_timeout,
            webhook_attempts: self.alert_webhook_attempts,
            command_timeout: self.alert_command_timeout,
            inconsistencies: self.alert_inconsistencies,
            inconsistency_ratio: self.alert_inconsistency_ratio,
            backend_down: self.alert_backend_down,
            no_warm: self.alert_no_warm,
        }
    }

    /// The alerter of these flags for `cli`'s backend and namespace, or `None` when no alert
    /// flag was given. A `one_shot` command keeps which conditions fire in a file under the
    /// state directory, one per backend and namespace, so that repeated runs alert once per
    /// condition until it clears. Secrets the process knows are scrubbed from every alert.
    pub fn alerter(
        &self,
        cli: &Cli,
        one_shot: bool,
    ) -> template_cache::Result<Option<Arc<Alerter>>> {
        let config = self.config();
        if !config.is_configured() {
            return Ok(None);
        }
        let context = AlertContext::new(&cli.namespace, &cli.backend);
        let state = one_shot.then(|| {
            alert_state_file(
                &crate::commands::state_dir(cli),
                &context.backend,
                &cli.namespace,
            )
        });
        Alerter::with_scrubber(config, context, state.as_deref(), crate::scrubbed)
            .map(Some)
            .map_err(|e| e.context("alert flags"))
    }
}

/// Whether the command's alerter saw the outcome of a warm or a check run.
static RUN_OBSERVED: AtomicBool = AtomicBool::new(false);

/// Feeds a warm run's outcome to `alerter`, if there is one.
pub fn observe_warm(
    alerter: Option<&Arc<Alerter>>,
    outcome: &template_cache::Result<template_cache::WarmReport>,
) {
    if let Some(a) = alerter {
        RUN_OBSERVED.store(true, Ordering::SeqCst);
        a.observe_warm(outcome);
    }
}

/// Feeds a check's outcome to `alerter`, if there is one.
pub fn observe_check(
    alerter: Option<&Arc<Alerter>>,
    outcome: &template_cache::Result<template_cache::CheckReport>,
) {
    if let Some(a) = alerter {
        RUN_OBSERVED.store(true, Ordering::SeqCst);
        match outcome {
            Ok(report) => a.observe_check(report),
            Err(e) => a.observe_check_failed(e),
        }
    }
}

/// Alerts on `error`, the failure of `cli`'s command, if it failed before a warm or a check
/// ran (the backend could not be opened, the template directory is missing, the metrics
/// address is taken): `warm_failed` or `check_failed`, and the backend unreachable when it is.
pub async fn alert_unobserved_failure(cli: &Cli, error: &template_cache::Error) {
    if RUN_OBSERVED.load(Ordering::SeqCst) {
        return;
    }
    let (alerts, one_shot) = match &cli.command {
        Command::Warm(a) => (&a.observe.alerts, a.interval.is_none()),
        Command::Check(a) => (&a.alerts, true),
        _ => return,
    };
    let alerter = match alerts.alerter(cli, one_shot) {
        Ok(Some(a)) => a,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(error = %e.to_report_string(), "cannot raise an alert");
            return;
        }
    };
    match &cli.command {
        Command::Warm(_) => alerter.observe_warm(&Err(error.clone())),
        _ => alerter.observe_check_failed(error),
    }
    alerter.tick();
    flush(Some(&alerter)).await;
}

/// The alert state file of `namespace` on `backend` (redacted) under `state_dir`.
pub fn alert_state_file(state_dir: &Path, backend: &str, namespace: &str) -> PathBuf {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(format!("{backend}\n{namespace}").as_bytes());
    state_dir.join(format!("alerts-{}.json", &hex::encode(digest)[..16]))
}

/// Delivers what `alerter` still has queued before a command exits (bounded by the time its
/// sinks may take).
pub async fn flush(alerter: Option<&Arc<Alerter>>) {
    if let Some(a) = alerter
        && !a.flush(a.delivery_budget()).await
    {
        tracing::warn!("some alerts were not delivered before exiting");
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Parser, Debug)]
    struct T {
        #[command(flatten)]
        o: ObserveArgs,
    }

    fn parse(args: &[&str]) -> Result<ObserveArgs, String> {
        let mut all = vec!["t"];
        all.extend_from_slice(args);
        T::try_parse_from(all)
            .map(|t| t.o)
            .map_err(|e| e.to_string())
    }

    #[test]
    fn flags_are_range_checked_and_named() {
        let o = parse(&[
            "--metrics-addr",
            "127.0.0.1:9187",
            "--alert-webhook",
            "https://hooks.example/x",
            "--alert-webhook",
            "http://127.0.0.1:1/y",
            "--alert-inconsistencies",
            "3",
            "--alert-inconsistency-ratio",
            "0.5",
            "--alert-backend-down",
            "2m",
            "--alert-no-warm",
            "1h",
            "--alert-webhook-attempts",
            "5",
        ])
        .unwrap();
        assert_eq!(o.metrics_addr.as_deref(), Some("127.0.0.1:9187"));
        let c = o.alerts.config();
        assert_eq!(c.webhooks.len(), 2);
        assert_eq!(c.inconsistencies, Some(3));
        assert_eq!(c.backend_down, Some(Duration::from_secs(120)));
        assert_eq!(c.webhook_attempts, 5);
        assert_eq!(c.webhook_timeout, Duration::from_secs(10));
        assert!(c.validate().is_ok());
        for addr in ["[::1]:0", "localhost:9187", "0.0.0.0:65535"] {
            assert!(parse(&["--metrics-addr", addr]).is_ok(), "{addr}");
        }
        for (flag, bad, want) in [
            ("--metrics-addr", "9187", "HOST:PORT"),
            ("--metrics-addr", "host:65536", "HOST:PORT"),
            ("--alert-webhook", "ftp://x", "http:// or https://"),
            ("--alert-webhook", "https://", "http:// or https://"),
            ("--alert-inconsistencies", "0", "from 1 to 1000000000"),
            ("--alert-inconsistencies", "-1", "from 1 to 1000000000"),
            ("--alert-inconsistency-ratio", "1.5", "from 0 to 1"),
            ("--alert-backend-down", "0s", "from 1s to 365d"),
            ("--alert-no-warm", "soon", "from 1s to 365d"),
            ("--alert-webhook-timeout", "10ms", "from 100ms to 5m"),
            ("--alert-webhook-attempts", "11", "from 1 to 10"),
            ("--alert-command-timeout", "2h", "from 100ms to 1h"),
        ] {
            let e = parse(&[flag, bad]).unwrap_err();
            assert!(e.contains(flag) && e.contains(want), "{flag} {bad}: {e}");
        }
    }

    #[test]
    fn no_alert_flag_means_no_alerter() {
        assert!(!parse(&[]).unwrap().alerts.config().is_configured());
        let a = alert_state_file(Path::new("/s"), "redis://h/0", "ns");
        let b = alert_state_file(Path::new("/s"), "redis://h/0", "other");
        assert_ne!(a, b);
        assert!(a.to_string_lossy().starts_with("/s/alerts-"));
    }
}
