//! Alerts: conditions worth waking someone for, deduplicated, delivered to a webhook, a command
//! and the log.
//!
//! The [`Alerter`] is fed what runs produce ([`Alerter::observe_warm`],
//! [`Alerter::observe_check`], [`Alerter::observe_resolve`], ...) and decides, per
//! [`Condition`], whether it starts or stops firing. A condition sends one `firing` alert when
//! it starts and one `resolved` alert when it clears, never more in between. Time-based
//! conditions (backend unreachable for too long, no successful warm for too long) are evaluated
//! by [`Alerter::tick`], called every second by a task of the alerter's own.
//!
//! Delivery happens on a background task: the caller never waits for a webhook or a command.
//! Short-lived processes call [`Alerter::flush`] before they exit. With a state file
//! ([`Alerter::with_state_file`]) the firing conditions survive the process, so a command run
//! by cron alerts once until the condition clears.
//!
//! The JSON body ([`AlertBody`]) is a stable contract, documented in the README.

use std::collections::{BTreeMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use template_cache_core::{
    AlertThreshold, CheckReport, Error, ErrorKind, ResolveReport, Result, WarmReport,
};
use tokio::sync::{mpsc, oneshot};

use crate::metrics::names;

/// The version of [`AlertBody`]'s format (its `version` field).
pub const BODY_VERSION: u32 = 1;

/// How many names (templates, failures) an alert's details list at most.
pub const MAX_LISTED: usize = 10;

/// How often the alerter's own task evaluates time-based conditions.
const TICK_EVERY: Duration = Duration::from_secs(1);

/// The longest wait between two webhook attempts.
const MAX_BACKOFF: Duration = Duration::from_secs(10);

/// The first wait between two webhook attempts (doubled after each).
const FIRST_BACKOFF: Duration = Duration::from_millis(500);

/// The most of a failing command's standard error kept in the log.
const MAX_STDERR_LOGGED: usize = 2048;

/// Something wrong enough to alert on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Condition {
    /// A check found inconsistencies at or over the configured count or ratio.
    Inconsistencies,
    /// A resolution was refused by a safety threshold (nothing was changed).
    ThresholdRefused,
    /// Templates failed in a warm run (or a resolution).
    TemplatesFailed,
    /// A warm run failed as a whole.
    WarmFailed,
    /// A check failed as a whole.
    CheckFailed,
    /// A resolution failed as a whole (other than a refusal).
    ResolveFailed,
    /// The backend has been unreachable for longer than configured.
    BackendUnreachable,
    /// This process held the namespace write lease and lost it.
    LeaseLost,
    /// No warm run succeeded for longer than configured.
    NoSuccessfulWarm,
}

impl Condition {
    /// Every condition.
    pub const ALL: [Condition; 9] = [
        Condition::Inconsistencies,
        Condition::ThresholdRefused,
        Condition::TemplatesFailed,
        Condition::WarmFailed,
        Condition::CheckFailed,
        Condition::ResolveFailed,
        Condition::BackendUnreachable,
        Condition::LeaseLost,
        Condition::NoSuccessfulWarm,
    ];

    /// The condition's name in the JSON body (`snake_case`).
    pub fn as_str(self) -> &'static str {
        match self {
            Condition::Inconsistencies => "inconsistencies",
            Condition::ThresholdRefused => "threshold_refused",
            Condition::TemplatesFailed => "templates_failed",
            Condition::WarmFailed => "warm_failed",
            Condition::CheckFailed => "check_failed",
            Condition::ResolveFailed => "resolve_failed",
            Condition::BackendUnreachable => "backend_unreachable",
            Condition::LeaseLost => "lease_lost",
            Condition::NoSuccessfulWarm => "no_successful_warm",
        }
    }
}

impl std::fmt::Display for Condition {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Whether an alert announces a condition or its end.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    /// The condition started.
    Firing,
    /// The condition cleared.
    Resolved,
}

impl Status {
    /// `firing` or `resolved`.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Firing => "firing",
            Status::Resolved => "resolved",
        }
    }
}

/// The JSON document every sink receives (webhook body, command stdin).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct AlertBody {
    /// The format's version ([`BODY_VERSION`]).
    pub version: u32,
    /// `firing` or `resolved`.
    pub status: Status,
    /// What the alert is about.
    pub condition: Condition,
    /// One line for humans.
    pub summary: String,
    /// The cache namespace.
    pub namespace: String,
    /// The host that raised the alert.
    pub host: String,
    /// The backend, password redacted.
    pub backend: String,
    /// When the alert was raised (RFC 3339, UTC).
    pub at: String,
    /// When the condition started firing (RFC 3339, UTC; for `resolved`, how long it lasted).
    pub since: String,
    /// Facts of the condition (counts, error, thresholds); see the README.
    pub details: Value,
}

/// Where alerts go and when they are raised. Deserializable, so a TOML configuration file can
/// carry it (durations as text: `"10s"`, `"5m"`); every field has a default.
#[derive(Clone, Debug, PartialEq, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AlertConfig {
    /// URLs each alert is POSTed to as JSON (http:// or https://).
    pub webhooks: Vec<String>,
    /// A shell command (`sh -c`) run for each alert with the JSON on its standard input and
    /// `TCACHE_ALERT_STATUS`, `TCACHE_ALERT_CONDITION` in its environment.
    pub command: Option<String>,
    /// Whether alerts are logged (error level when firing, info when resolved).
    pub log: bool,
    /// Time allowed for one webhook attempt (100ms to 5m).
    #[serde(with = "text_duration")]
    pub webhook_timeout: Duration,
    /// Attempts per webhook and alert, including the first (1 to 10); retried on connection
    /// errors, timeouts, 429 and 5xx answers, with a doubling backoff from 500 ms.
    pub webhook_attempts: u32,
    /// Time allowed for the command before it is killed (100ms to 1h).
    #[serde(with = "text_duration")]
    pub command_timeout: Duration,
    /// Alert when a check finds at least this many inconsistencies.
    pub inconsistencies: Option<usize>,
    /// Alert when a check finds inconsistencies amounting to at least this fraction of the
    /// templates (0 to 1, of the larger of files and entries).
    pub inconsistency_ratio: Option<f64>,
    /// Alert when the backend stays unreachable for longer than this.
    #[serde(with = "text_duration_opt")]
    pub backend_down: Option<Duration>,
    /// Alert when no warm run succeeds for longer than this.
    #[serde(with = "text_duration_opt")]
    pub no_warm: Option<Duration>,
}

impl Default for AlertConfig {
    fn default() -> Self {
        AlertConfig {
            webhooks: Vec::new(),
            command: None,
            log: true,
            webhook_timeout: Self::DEFAULT_WEBHOOK_TIMEOUT,
            webhook_attempts: Self::DEFAULT_WEBHOOK_ATTEMPTS,
            command_timeout: Self::DEFAULT_COMMAND_TIMEOUT,
            inconsistencies: None,
            inconsistency_ratio: None,
            backend_down: None,
            no_warm: None,
        }
    }
}

impl AlertConfig {
    /// The default of [`Self::webhook_timeout`].
    pub const DEFAULT_WEBHOOK_TIMEOUT: Duration = Duration::from_secs(10);
    /// The default of [`Self::webhook_attempts`].
    pub const DEFAULT_WEBHOOK_ATTEMPTS: u32 = 3;
    /// The default of [`Self::command_timeout`].
    pub const DEFAULT_COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
    /// The range of [`Self::webhook_timeout`].
    pub const WEBHOOK_TIMEOUT_RANGE: (Duration, Duration) =
        (Duration::from_millis(100), Duration::from_secs(300));
    /// The range of [`Self::webhook_attempts`].
    pub const WEBHOOK_ATTEMPTS_RANGE: (u32, u32) = (1, 10);
    /// The range of [`Self::command_timeout`].
    pub const COMMAND_TIMEOUT_RANGE: (Duration, Duration) =
        (Duration::from_millis(100), Duration::from_secs(3600));
    /// The range of [`Self::backend_down`] and [`Self::no_warm`].
    pub const AGE_RANGE: (Duration, Duration) =
        (Duration::from_secs(1), Duration::from_secs(365 * 86_400));

    /// Whether anything was configured: a sink or a condition threshold. An alerter of an
    /// unconfigured process would only repeat what the log already says.
    pub fn is_configured(&self) -> bool {
        !self.webhooks.is_empty()
            || self.command.is_some()
            || self.inconsistencies.is_some()
            || self.inconsistency_ratio.is_some()
            || self.backend_down.is_some()
            || self.no_warm.is_some()
    }

    /// The inconsistency threshold.
    pub fn threshold(&self) -> AlertThreshold {
        AlertThreshold {
            min_count: self.inconsistencies,
            min_ratio: self.inconsistency_ratio,
        }
    }

    /// Checks every setting, naming the one out of range (`alerts.<field>`).
    pub fn validate(&self) -> Result<()> {
        let invalid = |field: &str, why: String| {
            Error::new(ErrorKind::ConfigInvalid, format!("alerts.{field} {why}"))
        };
        for url in &self.webhooks {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(invalid(
                    "webhooks",
                    format!(
                        "holds {:?}: a webhook URL starts with http:// or https://",
                        endpoint_of(url)
                    ),
                ));
            }
        }
        if self.command.as_deref().is_some_and(|c| c.trim().is_empty()) {
            return Err(invalid("command", "is empty".into()));
        }
        let durations = [
            (
                "webhook_timeout",
                Some(self.webhook_timeout),
                Self::WEBHOOK_TIMEOUT_RANGE,
            ),
            (
                "command_timeout",
                Some(self.command_timeout),
                Self::COMMAND_TIMEOUT_RANGE,
            ),
            ("backend_down", self.backend_down, Self::AGE_RANGE),
            ("no_warm", self.no_warm, Self::AGE_RANGE),
        ];
        for (field, value, (min, max)) in durations {
            if let Some(d) = value
                && !(min..=max).contains(&d)
            {
                return Err(invalid(
                    field,
                    format!(
                        "is {}; it must be from {} to {}",
                        fmt_duration(d),
                        fmt_duration(min),
                        fmt_duration(max)
                    ),
                ));
            }
        }
        let (min, max) = Self::WEBHOOK_ATTEMPTS_RANGE;
        if !(min..=max).contains(&self.webhook_attempts) {
            return Err(invalid(
                "webhook_attempts",
                format!(
                    "is {}; it must be from {min} to {max}",
                    self.webhook_attempts
                ),
            ));
        }
        if let Some(r) = self.inconsistency_ratio
            && !(0.0..=1.0).contains(&r)
        {
            return Err(invalid(
                "inconsistency_ratio",
                format!("is {r}; it must be a number from 0 to 1"),
            ));
        }
        if self.inconsistencies == Some(0) {
            return Err(invalid(
                "inconsistencies",
                "is 0; it must be at least 1".into(),
            ));
        }
        Ok(())
    }
}

/// Who raises the alerts: fields of every [`AlertBody`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AlertContext {
    /// The cache namespace.
    pub namespace: String,
    /// The backend, password redacted.
    pub backend: String,
    /// This host's name.
    pub host: String,
}

impl AlertContext {
    /// The context of `namespace` on `backend` (a URL or a description: passwords are redacted
    /// here), on this host (`TCACHE_HOST` if set, else the kernel's host name).
    pub fn new(namespace: &str, backend: &str) -> Self {
        AlertContext {
            namespace: namespace.to_owned(),
            backend: template_cache_core::url::redact(backend),
            host: template_cache_core::host::name(),
        }
    }
}

/// A condition that is firing.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
struct Firing {
    /// Unix seconds when it started.
    since: u64,
    /// The summary of its `firing` alert.
    summary: String,
}

/// What the alerter knows; persisted by a state file.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
struct State {
    version: u32,
    /// Conditions firing, by condition.
    firing: BTreeMap<Condition, Firing>,
    /// Unix seconds since which the backend has been unreachable.
    backend_down_since: Option<u64>,
    /// Unix seconds of the last successful warm.
    last_warm_success: Option<u64>,
    /// Unix seconds when watching started (the reference of `no_warm` before any success).
    watching_since: Option<u64>,
    /// Whether this process holds the write lease (not persisted: a lease is a process's).
    #[serde(skip)]
    lease_held: bool,
}

/// What changed in the state since the last save: only this is merged into the state file, so
/// two commands sharing it (a cron warm and a cron check) do not undo each other's changes.
#[derive(Debug, Default)]
struct Touched {
    conditions: HashSet<Condition>,
    backend_down_since: bool,
    last_warm_success: bool,
    watching_since: bool,
}

impl Touched {
    fn any(&self) -> bool {
        !self.conditions.is_empty()
            || self.backend_down_since
            || self.last_warm_success
            || self.watching_since
    }
}

/// Work for the delivery task, in order.
enum Job {
    Deliver(Arc<AlertBody>),
    Save(PathBuf, Box<State>, Box<Touched>),
    Flush(oneshot::Sender<()>),
}

/// Text scrubber applied to every string of a body (for secrets the caller knows about).
type Scrub = Arc<dyn Fn(&str) -> String + Send + Sync>;

/// Raises deduplicated alerts from what runs report, and delivers them in the background.
pub struct Alerter {
    config: AlertConfig,
    context: AlertContext,
    state: Mutex<(State, Touched)>,
    state_file: Option<PathBuf>,
    jobs: mpsc::UnboundedSender<Job>,
    /// Alerts queued for the delivery task and not delivered yet.
    pending: Arc<AtomicUsize>,
    scrub: Option<Scrub>,
    /// Every alert emitted (tests read it).
    #[cfg(test)]
    sent: Mutex<Vec<AlertBody>>,
}

impl std::fmt::Debug for Alerter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Alerter")
            .field("context", &self.context)
            .field("webhooks", &self.config.webhooks.len())
            .field("command", &self.config.command.is_some())
            .field("state_file", &self.state_file)
            .finish_non_exhaustive()
    }
}

impl Alerter {
    /// An alerter with `config` for `context`, with no state file. Starts its delivery task
    /// (and, when `backend_down` or `no_warm` is set, a task calling [`Self::tick`] every
    /// second; it ends when the alerter is dropped). Must be called inside a tokio runtime.
    pub fn new(config: AlertConfig, context: AlertContext) -> Result<Arc<Self>> {
        Self::build(config, context, None, None)
    }

    /// Like [`Self::new`], with the dedup state kept in `path` (loaded now, saved on every
    /// change, atomically): firing conditions survive the process, so a command run
    /// repeatedly alerts once per condition until it clears. A missing file is an empty state;
    /// an unreadable or damaged one is logged and replaced.
    pub fn with_state_file(
        config: AlertConfig,
        context: AlertContext,
        path: &Path,
    ) -> Result<Arc<Self>> {
        Self::build(config, context, Some(path.to_owned()), None)
    }

    /// Like [`Self::with_state_file`] (with `path` `None`: [`Self::new`]), with `scrub` applied
    /// to every string of every body before it is sent or logged (for secrets only the caller
    /// knows).
    pub fn with_scrubber(
        config: AlertConfig,
        context: AlertContext,
        path: Option<&Path>,
        scrub: impl Fn(&str) -> String + Send + Sync + 'static,
    ) -> Result<Arc<Self>> {
        Self::build(
            config,
            context,
            path.map(Path::to_owned),
            Some(Arc::new(scrub)),
        )
    }

    fn build(
        config: AlertConfig,
        context: AlertContext,
        state_file: Option<PathBuf>,
        scrub: Option<Scrub>,
    ) -> Result<Arc<Self>> {
        config.validate()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::new(
                ErrorKind::Unexpected,
                "the alerter needs a tokio runtime to deliver alerts",
            )
        })?;
        let mut state = match &state_file {
            Some(path) => load_state(path),
            None => State::default(),
        };
        let mut touched = Touched::default();
        if state.watching_since.is_none() {
            state.watching_since = Some(unix_secs(SystemTime::now()));
            touched.watching_since = true;
        }
        let (tx, rx) = mpsc::unbounded_channel();
        let sinks = Sinks {
            webhooks: config.webhooks.clone(),
            command: config.command.clone(),
            webhook_timeout: config.webhook_timeout,
            webhook_attempts: config.webhook_attempts,
            command_timeout: config.command_timeout,
        };
        let pending = Arc::new(AtomicUsize::new(0));
        runtime.spawn(deliver_all(sinks, rx, Arc::clone(&pending)));
        let timed = config.backend_down.is_some() || config.no_warm.is_some();
        let alerter = Arc::new(Alerter {
            config,
            context,
            state: Mutex::new((state, touched)),
            state_file,
            jobs: tx,
            pending,
            scrub,
            #[cfg(test)]
            sent: Mutex::new(Vec::new()),
        });
        if timed {
            runtime.spawn(tick_while_alive(Arc::downgrade(&alerter)));
        }
        Ok(alerter)
    }

    /// The configuration.
    pub fn config(&self) -> &AlertConfig {
        &self.config
    }

    /// The conditions firing now.
    pub fn firing(&self) -> Vec<Condition> {
        let guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
        guard.0.firing.keys().copied().collect()
    }

    /// A warm run's outcome: `warm_failed` fires on an error (other than finding the namespace
    /// busy) and clears on a completed run; `templates_failed` fires when templates failed and
    /// clears on a run where none did; a completed, uncancelled run is a successful warm
    /// (clears `no_successful_warm`) and proves the backend reachable.
    pub fn observe_warm(&self, outcome: &Result<WarmReport>) {
        self.observe(SystemTime::now(), |step| match outcome {
            Ok(rep) => {
                step.clear(Condition::WarmFailed);
                if rep.failed.is_empty() {
                    step.clear(Condition::TemplatesFailed);
                } else {
                    step.fire(
                        Condition::TemplatesFailed,
                        failed_templates(&rep.failed, "warm run"),
                    );
                }
                if !rep.cancelled {
                    step.state.last_warm_success = Some(unix_secs(step.now));
                    step.touched.last_warm_success = true;
                    step.clear(Condition::NoSuccessfulWarm);
                }
                step.backend_reachable(true);
            }
            Err(e) => step.run_failed(Condition::WarmFailed, "warm", e),
        });
    }

    /// A completed check: `inconsistencies` fires when the report crosses the configured
    /// threshold ([`AlertConfig::inconsistencies`], [`AlertConfig::inconsistency_ratio`]) and
    /// clears when a check is under it; `check_failed` clears; the backend was reachable.
    pub fn observe_check(&self, report: &CheckReport) {
        let crossed = self.config.threshold().is_crossed(report);
        self.check_observed(report, crossed);
    }

    fn check_observed(&self, report: &CheckReport, crossed: bool) {
        self.observe(SystemTime::now(), |step| {
            step.clear(Condition::CheckFailed);
            if crossed {
                step.fire(Condition::Inconsistencies, self.inconsistencies(report));
            } else {
                step.clear(Condition::Inconsistencies);
            }
            step.backend_reachable(true);
        });
    }

    /// A check that could not run: `check_failed` fires (cleared by the next completed check).
    pub fn observe_check_failed(&self, error: &Error) {
        self.observe(SystemTime::now(), |step| {
            step.run_failed(Condition::CheckFailed, "check", error);
        });
    }

    /// A resolution's outcome (`check --fix`, `warm --prune`, a scheduled resolution): a
    /// refusal fires `threshold_refused`, another error `resolve_failed`; a resolution that
    /// ran clears both, and fires `templates_failed` if some of its items failed.
    pub fn observe_resolve(&self, outcome: &Result<ResolveReport>) {
        self.observe(SystemTime::now(), |step| match outcome {
            Ok(rep) => {
                step.clear(Condition::ThresholdRefused);
                step.clear(Condition::ResolveFailed);
                if !rep.failed.is_empty() {
                    let facts = failed_templates(&rep.failed, "resolution");
                    step.fire(Condition::TemplatesFailed, facts);
                }
                step.backend_reachable(true);
            }
            Err(e) => step.resolve_error(e),
        });
    }

    /// An error of a resolution: a refusal by a safety threshold fires `threshold_refused`;
    /// any other error fires `resolve_failed` (the same as [`Self::observe_resolve`] with
    /// `Err`).
    pub fn observe_refusal(&self, error: &Error) {
        self.observe(SystemTime::now(), |step| step.resolve_error(error));
    }

    /// Whether the backend answered: `backend_unreachable` fires once it has not for longer
    /// than [`AlertConfig::backend_down`] (see [`Self::tick`]), and clears when it answers.
    pub fn observe_backend(&self, reachable: bool) {
        self.observe(SystemTime::now(), |step| {
            step.backend_reachable(reachable);
            step.timed();
        });
    }

    /// Whether this process holds the namespace write lease: `lease_lost` fires when a held
    /// lease is reported not held, and clears when it is held again. Report a voluntary
    /// release with [`Self::observe_lease_released`] instead.
    pub fn observe_lease(&self, held: bool) {
        self.observe(SystemTime::now(), |step| {
            if held {
                step.clear(Condition::LeaseLost);
            } else if step.state.lease_held {
                let facts = Facts {
                    summary: "this process lost the namespace write lease: another writer \
                              took it or it could not be renewed"
                        .into(),
                    details: json!({}),
                };
                step.fire(Condition::LeaseLost, facts);
            }
            step.state.lease_held = held;
        });
    }

    /// The lease was given up on purpose (shutdown, handing over): no alert.
    pub fn observe_lease_released(&self) {
        self.observe(SystemTime::now(), |step| step.state.lease_held = false);
    }

    /// Evaluates the time-based conditions now: `backend_unreachable` (down for longer than
    /// [`AlertConfig::backend_down`]) and `no_successful_warm` (no successful warm for longer
    /// than [`AlertConfig::no_warm`], counted from the first observation when none ever
    /// succeeded). The alerter's own task calls it every second.
    pub fn tick(&self) {
        self.tick_at(SystemTime::now());
    }

    fn tick_at(&self, now: SystemTime) {
        self.observe(now, |step| step.timed());
    }

    /// The longest the alerts queued now may take to deliver, every attempt timing out: what a
    /// process about to exit should give [`Self::flush`].
    pub fn delivery_budget(&self) -> Duration {
        let c = &self.config;
        let mut backoff = Duration::ZERO;
        let mut pause = FIRST_BACKOFF;
        for _ in 1..c.webhook_attempts {
            backoff += pause;
            pause = (pause * 2).min(MAX_BACKOFF);
        }
        let per_webhook = c.webhook_timeout * c.webhook_attempts + backoff;
        let hooks = u32::try_from(c.webhooks.len()).unwrap_or(u32::MAX);
        let command = if c.command.is_some() {
            c.command_timeout
        } else {
            Duration::ZERO
        };
        let per_alert = per_webhook.saturating_mul(hooks) + command + Duration::from_secs(1);
        let queued = u32::try_from(self.pending.load(Ordering::SeqCst)).unwrap_or(u32::MAX);
        per_alert.saturating_mul(queued) + Duration::from_secs(5)
    }

    /// Waits until every alert raised so far was delivered (or given up on) and the state file
    /// saved, at most `max_wait`. Returns whether everything was.
    pub async fn flush(&self, max_wait: Duration) -> bool {
        let (tx, rx) = oneshot::channel();
        if self.jobs.send(Job::Flush(tx)).is_err() {
            return false;
        }
        matches!(tokio::time::timeout(max_wait, rx).await, Ok(Ok(())))
    }

    /// Applies one observation under the lock, queues the state file's update, then emits the
    /// alerts it raised.
    fn observe(&self, now: SystemTime, f: impl FnOnce(&mut Step<'_>)) {
        let alerts = {
            let mut guard = self.state.lock().unwrap_or_else(|p| p.into_inner());
            let (state, touched) = &mut *guard;
            let mut step = Step {
                alerter: self,
                state,
                touched,
                now,
                alerts: Vec::new(),
            };
            f(&mut step);
            let alerts = std::mem::take(&mut step.alerts);
            if let (Some(path), true) = (&self.state_file, touched.any()) {
                let save = Job::Save(
                    path.clone(),
                    Box::new(state.clone()),
                    Box::new(std::mem::take(touched)),
                );
                let _ = self.jobs.send(save);
            }
            alerts
        };
        self.emit(alerts);
    }

    fn inconsistencies(&self, r: &CheckReport) -> Facts {
        let total = r.inconsistencies();
        let mut examples: Vec<&String> = r
            .missing
            .iter()
            .chain(&r.outdated)
            .chain(&r.corrupt)
            .chain(&r.orphaned)
            .take(MAX_LISTED)
            .collect();
        examples.sort();
        Facts {
            summary: format!(
                "check found {total} inconsistencies ({} missing, {} outdated, {} corrupt, {} \
                 orphaned) among {} files and {} entries",
                r.missing.len(),
                r.outdated.len(),
                r.corrupt.len(),
                r.orphaned.len(),
                r.files,
                r.entries
            ),
            details: json!({
                "total": total,
                "missing": r.missing.len(),
                "outdated": r.outdated.len(),
                "corrupt": r.corrupt.len(),
                "orphaned": r.orphaned.len(),
                "files": r.files,
                "entries": r.entries,
                "examples": examples,
                "threshold": {
                    "count": self.config.inconsistencies,
                    "ratio": self.config.inconsistency_ratio,
                },
            }),
        }
    }

    fn body(
        &self,
        status: Status,
        condition: Condition,
        facts: Facts,
        since: u64,
        now: SystemTime,
    ) -> AlertBody {
        let scrub = |text: &str| match &self.scrub {
            Some(f) => f(text),
            None => text.to_owned(),
        };
        let mut details = facts.details;
        scrub_strings(&mut details, &scrub);
        AlertBody {
            version: BODY_VERSION,
            status,
            condition,
            summary: scrub(&facts.summary),
            namespace: self.context.namespace.clone(),
            host: self.context.host.clone(),
            backend: self.context.backend.clone(),
            at: rfc3339(unix_secs(now)),
            since: rfc3339(since),
            details,
        }
    }

    /// Logs and counts `alerts`, then hands them to the delivery task.
    fn emit(&self, alerts: Vec<AlertBody>) {
        for a in alerts {
            #[cfg(test)]
            self.sent
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(a.clone());
            metrics::counter!(names::ALERTS, "condition" => a.condition.as_str(), "status" => a.status.as_str())
                .increment(1);
            if self.config.log {
                match a.status {
                    Status::Firing => tracing::error!(
                        condition = a.condition.as_str(),
                        namespace = %a.namespace,
                        "alert firing: {}",
                        a.summary
                    ),
                    Status::Resolved => tracing::info!(
                        condition = a.condition.as_str(),
                        namespace = %a.namespace,
                        "alert resolved: {}",
                        a.summary
                    ),
                }
            }
            if !self.config.webhooks.is_empty() || self.config.command.is_some() {
                self.pending.fetch_add(1, Ordering::SeqCst);
                if self.jobs.send(Job::Deliver(Arc::new(a))).is_err() {
                    self.pending.fetch_sub(1, Ordering::SeqCst);
                }
            }
        }
    }
}

#[async_trait::async_trait]
impl template_cache_core::AlertSink for Alerter {
    /// An alert of [`template_cache_core::run_scheduled_checks`]: `Inconsistent` fires
    /// `inconsistencies` (the schedule's threshold decided), `Failed` fires `check_failed`.
    /// Neither is resolved here: feed every check to [`Alerter::observe_check`] (from the
    /// schedule's `on_run`) for the `resolved` alert, with the same threshold in
    /// [`AlertConfig`].
    async fn alert(&self, alert: &template_cache_core::Alert) {
        match alert {
            template_cache_core::Alert::Inconsistent(report) => {
                self.check_observed(report, true);
            }
            template_cache_core::Alert::Failed(e) => self.observe_check_failed(e),
        }
    }
}

/// One observation: the state under the alerter's lock, what it changed, the alerts it raised.
struct Step<'a> {
    alerter: &'a Alerter,
    state: &'a mut State,
    touched: &'a mut Touched,
    now: SystemTime,
    alerts: Vec<AlertBody>,
}

impl Step<'_> {
    /// Starts `condition` unless it is firing already.
    fn fire(&mut self, condition: Condition, facts: Facts) {
        if self.state.firing.contains_key(&condition) {
            return;
        }
        let since = unix_secs(self.now);
        let summary = facts.summary.clone();
        self.state
            .firing
            .insert(condition, Firing { since, summary });
        self.touched.conditions.insert(condition);
        let body = self
            .alerter
            .body(Status::Firing, condition, facts, since, self.now);
        self.alerts.push(body);
    }

    /// Ends `condition` if it is firing.
    fn clear(&mut self, condition: Condition) {
        let Some(was) = self.state.firing.remove(&condition) else {
            return;
        };
        self.touched.conditions.insert(condition);
        let lasted = unix_secs(self.now).saturating_sub(was.since);
        let facts = Facts {
            summary: format!(
                "resolved after {}: {}",
                fmt_duration(Duration::from_secs(lasted)),
                was.summary
            ),
            details: json!({ "firing_summary": was.summary, "lasted_seconds": lasted }),
        };
        let body = self
            .alerter
            .body(Status::Resolved, condition, facts, was.since, self.now);
        self.alerts.push(body);
    }

    /// A run (`run`: warm, check, resolution) failed with `e`.
    fn run_failed(&mut self, condition: Condition, run: &str, e: &Error) {
        // Another writer holding the namespace is how fleets work, not a failure.
        if e.kind() == ErrorKind::Conflict {
            return;
        }
        if e.kind() == ErrorKind::Unavailable {
            self.backend_reachable(false);
            self.timed();
        }
        let facts = Facts {
            summary: format!("{run} failed: {}", e.to_report_string()),
            details: json!({ "error": e.to_report_string(), "error_kind": e.kind().as_str() }),
        };
        self.fire(condition, facts);
    }

    fn resolve_error(&mut self, e: &Error) {
        if e.kind() != ErrorKind::Refused {
            self.run_failed(Condition::ResolveFailed, "resolution", e);
            return;
        }
        let facts = Facts {
            summary: format!("resolution refused, nothing was changed: {}", e.message()),
            details: json!({ "reason": e.message() }),
        };
        self.fire(Condition::ThresholdRefused, facts);
    }

    fn backend_reachable(&mut self, reachable: bool) {
        if reachable {
            if self.state.backend_down_since.take().is_some() {
                self.touched.backend_down_since = true;
            }
            self.clear(Condition::BackendUnreachable);
        } else if self.state.backend_down_since.is_none() {
            self.state.backend_down_since = Some(unix_secs(self.now));
            self.touched.backend_down_since = true;
        }
    }

    /// The time-based conditions.
    fn timed(&mut self) {
        let now = unix_secs(self.now);
        let config = &self.alerter.config;
        if let (Some(limit), Some(since)) = (config.backend_down, self.state.backend_down_since) {
            let down = now.saturating_sub(since);
            if down >= limit.as_secs() {
                let facts = Facts {
                    summary: format!(
                        "the backend has been unreachable for {}",
                        fmt_duration(Duration::from_secs(down))
                    ),
                    details: json!({
                        "down_since": rfc3339(since),
                        "threshold_seconds": limit.as_secs(),
                    }),
                };
                self.fire(Condition::BackendUnreachable, facts);
            }
        }
        if let Some(limit) = config.no_warm {
            let s = &self.state;
            let reference = s.last_warm_success.or(s.watching_since).unwrap_or(now);
            let age = now.saturating_sub(reference);
            if age >= limit.as_secs() {
                let last = s.last_warm_success.map(rfc3339);
                let summary = match &last {
                    Some(at) => format!("no successful warm since {at}"),
                    None => format!(
                        "no successful warm in {}",
                        fmt_duration(Duration::from_secs(age))
                    ),
                };
                let facts = Facts {
                    summary,
                    details: json!({
                        "last_success": last,
                        "threshold_seconds": limit.as_secs(),
                    }),
                };
                self.fire(Condition::NoSuccessfulWarm, facts);
            }
        }
    }
}

/// A condition's summary and details.
struct Facts {
    summary: String,
    details: Value,
}

fn failed_templates(failed: &[template_cache_core::Failure], run: &str) -> Facts {
    let listed: Vec<Value> = failed
        .iter()
        .take(MAX_LISTED)
        .map(|f| json!({ "name": f.name, "error": f.error }))
        .collect();
    let first = failed
        .first()
        .map(|f| format!(" (first: {}: {})", f.name, f.error))
        .unwrap_or_default();
    Facts {
        summary: format!("{} templates failed in a {run}{first}", failed.len()),
        details: json!({ "failed": failed.len(), "templates": listed }),
    }
}

fn scrub_strings(v: &mut Value, scrub: &dyn Fn(&str) -> String) {
    match v {
        Value::String(s) => *s = scrub(s),
        Value::Array(items) => items.iter_mut().for_each(|i| scrub_strings(i, scrub)),
        Value::Object(map) => map.values_mut().for_each(|i| scrub_strings(i, scrub)),
        _ => {}
    }
}

/// The sinks the delivery task sends to.
#[derive(Clone)]
struct Sinks {
    webhooks: Vec<String>,
    command: Option<String>,
    webhook_timeout: Duration,
    webhook_attempts: u32,
    command_timeout: Duration,
}

/// Delivers jobs in order until every sender (the alerter) is gone.
async fn deliver_all(
    sinks: Sinks,
    mut jobs: mpsc::UnboundedReceiver<Job>,
    pending: Arc<AtomicUsize>,
) {
    while let Some(job) = jobs.recv().await {
        match job {
            Job::Deliver(body) => {
                deliver(&sinks, &body).await;
                pending.fetch_sub(1, Ordering::SeqCst);
            }
            Job::Save(path, state, touched) => {
                let saved =
                    tokio::task::spawn_blocking(move || save_state(&path, &state, &touched)).await;
                match saved {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "cannot save the alert state"),
                    Err(e) => tracing::warn!(error = %e, "cannot save the alert state"),
                }
            }
            Job::Flush(done) => {
                let _ = done.send(());
            }
        }
    }
}

/// Sends `body` to every webhook and the command.
async fn deliver(sinks: &Sinks, body: &AlertBody) {
    let json = match serde_json::to_vec(body) {
        Ok(j) => j,
        Err(e) => {
            tracing::error!(error = %e, "cannot encode an alert");
            return;
        }
    };
    for url in &sinks.webhooks {
        let sent = post_webhook(url, &json, sinks.webhook_timeout, sinks.webhook_attempts).await;
        if let Err(why) = sent {
            metrics::counter!(names::ALERT_DELIVERY_FAILURES, "sink" => "webhook").increment(1);
            tracing::error!(
                webhook = %endpoint_of(url),
                condition = body.condition.as_str(),
                "alert not delivered: {why}"
            );
        }
    }
    if let Some(cmd) = &sinks.command
        && let Err(why) = run_command(cmd, body, &json, sinks.command_timeout).await
    {
        metrics::counter!(names::ALERT_DELIVERY_FAILURES, "sink" => "command").increment(1);
        tracing::error!(
            condition = body.condition.as_str(),
            "alert command failed: {why}"
        );
    }
}

/// POSTs `json` to `url`: up to `attempts` attempts of at most `timeout` each, retrying
/// connection errors, timeouts, 429 and 5xx with a doubling backoff.
async fn post_webhook(
    url: &str,
    json: &[u8],
    timeout: Duration,
    attempts: u32,
) -> std::result::Result<(), String> {
    let mut backoff = FIRST_BACKOFF;
    let mut last = String::new();
    for attempt in 1..=attempts.max(1) {
        let (u, body) = (url.to_owned(), json.to_vec());
        let outcome = tokio::task::spawn_blocking(move || post_once(&u, &body, timeout)).await;
        let retry = match outcome {
            Ok(Ok(status)) if (200..300).contains(&status) => {
                tracing::debug!(webhook = %endpoint_of(url), status, attempt, "alert delivered");
                return Ok(());
            }
            Ok(Ok(status)) => {
                last = format!("answered HTTP {status}");
                status == 429 || status >= 500
            }
            Ok(Err(e)) => {
                last = e;
                true
            }
            Err(e) => {
                last = format!("the delivery task failed: {e}");
                false
            }
        };
        if !retry {
            return Err(format!("{last} (attempt {attempt}, not retried)"));
        }
        if attempt < attempts {
            tracing::warn!(webhook = %endpoint_of(url), attempt, "alert delivery failed: {last}; retrying");
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(MAX_BACKOFF);
        }
    }
    Err(format!("{last} (after {attempts} attempts)"))
}

/// One POST; the HTTP status, or why there was none.
fn post_once(url: &str, json: &[u8], timeout: Duration) -> std::result::Result<u16, String> {
    let agent: ureq::Agent = ureq::Agent::config_builder()
        .timeout_global(Some(timeout))
        .http_status_as_error(false)
        .max_redirects(0)
        .user_agent(concat!("tcache/", env!("CARGO_PKG_VERSION")))
        .build()
        .into();
    agent
        .post(url)
        .header("content-type", "application/json")
        .send(json)
        .map(|r| r.status().as_u16())
        // ureq's errors name the host, never the path (where webhook tokens live).
        .map_err(|e| e.to_string())
}

/// Runs `sh -c cmd` with `json` on stdin; killed after `timeout`.
async fn run_command(
    cmd: &str,
    body: &AlertBody,
    json: &[u8],
    timeout: Duration,
) -> std::result::Result<(), String> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("sh")
        .arg("-c")
        .arg(cmd)
        .env("TCACHE_ALERT_STATUS", body.status.as_str())
        .env("TCACHE_ALERT_CONDITION", body.condition.as_str())
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| format!("cannot start sh: {e}"))?;
    let stdin = child.stdin.take();
    let run = async move {
        if let Some(mut stdin) = stdin {
            // A command that does not read its input is no error.
            let _ = stdin.write_all(json).await;
            let _ = stdin.write_all(b"\n").await;
        }
        child.wait_with_output().await
    };
    // On timeout the child is dropped, and killed with it.
    let out = match tokio::time::timeout(timeout, run).await {
        Err(_) => return Err(format!("killed after {}", fmt_duration(timeout))),
        Ok(Err(e)) => return Err(format!("waiting for it: {e}")),
        Ok(Ok(out)) => out,
    };
    if out.status.success() {
        return Ok(());
    }
    let mut stderr = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    if stderr.len() > MAX_STDERR_LOGGED {
        let mut end = MAX_STDERR_LOGGED;
        while !stderr.is_char_boundary(end) {
            end -= 1;
        }
        stderr.truncate(end);
        stderr.push('…');
    }
    Err(format!("{}: {stderr}", out.status))
}

/// Calls [`Alerter::tick`] every second while the alerter lives.
async fn tick_while_alive(alerter: Weak<Alerter>) {
    let mut every = tokio::time::interval(TICK_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        every.tick().await;
        match alerter.upgrade() {
            Some(a) => a.tick(),
            None => return,
        }
    }
}

fn load_state(path: &Path) -> State {
    match std::fs::read(path) {
        Ok(bytes) => match serde_json::from_slice::<State>(&bytes) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(path = %path.display(), error = %e, "the alert state is damaged; starting afresh");
                State::default()
            }
        },
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => State::default(),
        Err(e) => {
            tracing::warn!(path = %path.display(), error = %e, "cannot read the alert state; starting afresh");
            State::default()
        }
    }
}

/// Merges what this process changed into the state file at `path` and writes it atomically.
fn save_state(path: &Path, ours: &State, touched: &Touched) -> Result<()> {
    let mut merged = load_state(path);
    for c in &touched.conditions {
        match ours.firing.get(c) {
            Some(f) => merged.firing.insert(*c, f.clone()),
            None => merged.firing.remove(c),
        };
    }
    if touched.backend_down_since {
        merged.backend_down_since = ours.backend_down_since;
    }
    if touched.last_warm_success {
        merged.last_warm_success = ours.last_warm_success;
    }
    if touched.watching_since && merged.watching_since.is_none() {
        merged.watching_since = ours.watching_since;
    }
    merged.version = 1;
    let json = serde_json::to_vec_pretty(&merged).map_err(|e| {
        Error::new(
            ErrorKind::Unexpected,
            format!("encoding the alert state: {e}"),
        )
    })?;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    crate::metrics::write_atomically(path, &json)
}

/// The scheme and host of a webhook URL: its path and query may hold a token.
fn endpoint_of(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    let host = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = host.rsplit_once('@').map_or(host, |(_, h)| h);
    if scheme.is_empty() {
        host.to_owned()
    } else {
        format!("{scheme}://{host}")
    }
}

fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

fn rfc3339(unix: u64) -> String {
    humantime::format_rfc3339_seconds(UNIX_EPOCH + Duration::from_secs(unix)).to_string()
}

fn fmt_duration(d: Duration) -> String {
    template_cache_core::url::format_duration(d)
}

/// Durations as text (`"10s"`, `"5m"`) in configuration files.
mod text_duration {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s).map_err(|e| {
            serde::de::Error::custom(format!(
                "{s:?} is not a duration ({e}; for example 10s, 5m)"
            ))
        })
    }
}

/// Optional durations as text.
mod text_duration_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        match Option::<String>::deserialize(d)? {
            None => Ok(None),
            Some(s) => humantime::parse_duration(&s).map(Some).map_err(|e| {
                serde::de::Error::custom(format!(
                    "{s:?} is not a duration ({e}; for example 10s, 5m)"
                ))
            }),
        }
    }
}

#[cfg(test)]
#[path = "alerts_tests.rs"]
mod tests;
