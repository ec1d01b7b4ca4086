//! The service loop: one task that decides, each turn, the most urgent thing to do.
//!
//! In order: follow a root that moved; a full run when one is due (at start, after taking the
//! lease, after an outage or missed events, and every rescan interval); write the files that
//! changed; delete orphans whose grace is over; scheduled deep and quick checks. Between turns
//! it sleeps until the next deadline or the next change event; a backend failure pauses work
//! with exponential backoff and makes the next successful turn a full run.

use std::collections::{BTreeSet, HashMap};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use template_cache_core::{
    Cache, CacheBackend, CheckMode, CheckReport, Checker, ErrorKind, LeaseConfig, ResolveReport,
    Result, SharedLease, WarmReport, Warmer,
};
use template_cache_observe::health::Health;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::settings::{Mode, ServeConfig};
use crate::watch::{RootId, TreeWatcher, WatchEvent};
use crate::windows::jitter;

/// More changed names than this waiting at once: a full run is cheaper than remembering them.
const MAX_PENDING_NAMES: usize = 100_000;
/// How often a holder persists its fingerprints between full runs.
const STATE_SAVE_EVERY: Duration = Duration::from_secs(60);

/// Receives what the service does beyond its log: metrics, alerts, history. Every method has
/// a default that does nothing.
pub trait Observer: Send + Sync {
    /// A warm ended: `full` for a whole-tree run, else a run over changed files; `latency` is
    /// the time from the earliest change it wrote to the end of the run.
    fn warmed(&self, report: &Result<WarmReport>, full: bool, latency: Option<Duration>) {
        let _ = (report, full, latency);
    }
    /// A scheduled check (or an orphan sweep's check) ended.
    fn checked(&self, report: &Result<CheckReport>) {
        let _ = report;
    }
    /// An automatic resolution ended (a refusal is an error of kind `Refused`).
    fn resolved(&self, report: &Result<ResolveReport>) {
        let _ = report;
    }
    /// The backend answered (`true`) or failed (`false`).
    fn backend(&self, reachable: bool) {
        let _ = reachable;
    }
    /// This service took (`true`) or lost (`false`) the namespace write lease.
    fn lease(&self, held: bool) {
        let _ = held;
    }
    /// A standby found the lease held by another service, which keeps the namespace warm.
    fn standing_by(&self) {}
    /// Called every turn of the loop, at least every few seconds: time-based conditions.
    fn tick(&self) {}
}

/// An observer that does nothing.
#[derive(Debug, Default)]
pub struct NoObserver;

impl Observer for NoObserver {}

/// This service's part in its fleet.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// It holds the namespace write lease and writes.
    Holder,
    /// Another host holds the lease: it keeps its fingerprints current, runs read-only checks
    /// and takes over when the lease is free.
    Standby,
}

impl Role {
    /// `holder` or `standby`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Holder => "holder",
            Role::Standby => "standby",
        }
    }
}

/// A service keeping one namespace warm and consistent with one tree.
pub struct Service {
    config: ServeConfig,
    backend: Arc<dyn CacheBackend>,
    lease: SharedLease,
    health: Arc<Health>,
    observer: Arc<dyn Observer>,
}

impl std::fmt::Debug for Service {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Service")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

impl Service {
    /// A service over `backend`. `lease` is the write lease slot: the caller releases it when
    /// the service ends for good (a reload keeps it held across two services).
    pub fn new(
        config: ServeConfig,
        backend: Arc<dyn CacheBackend>,
        lease: SharedLease,
        health: Arc<Health>,
        observer: Arc<dyn Observer>,
    ) -> Result<Self> {
        config.validate()?;
        Ok(Service {
            config,
            backend,
            lease,
            health,
            observer,
        })
    }

    /// Runs until `cancel` fires, then returns after the batch in flight, with the fingerprint
    /// state saved. Fails only when the tree cannot be served at all at start (its root is
    /// missing or the configuration is invalid); everything later is retried.
    pub async fn run(self, cancel: CancellationToken) -> Result<()> {
        let root = RootId::of(&self.config.engine.source.root)?;
        let engines = Engines::build(&self.config, &self.backend, &self.lease, &root)?;
        let (watcher, events) = if self.config.watch {
            match TreeWatcher::start(&self.config.engine.source.root, self.config.debounce) {
                Ok((w, rx)) => (Some(w), Some(rx)),
                Err(e) => {
                    tracing::error!(error = %e, every = ?self.config.poll_interval, "file watching is unavailable; falling back to full rescans");
                    (None, None)
                }
            }
        } else {
            tracing::info!(every = ?self.config.poll_interval, "file watching is off; full rescans instead");
            (None, None)
        };
        let now = Instant::now();
        let started = Timestamp::now();
        let c = &self.config;
        let next_quick = c.check_every.map(|_| {
            c.check_windows
                .next_run(started, None, Duration::ZERO, jitter(c.check_jitter))
        });
        let next_deep = c.deep_check_every.map(|every| {
            let first = if c.check_windows.is_always() {
                Some(started)
            } else {
                None
            };
            let every = if first.is_some() {
                every
            } else {
                Duration::ZERO
            };
            c.check_windows
                .next_run(started, first, every, jitter(c.check_jitter))
        });
        let mut state = State {
            service: &self,
            engines,
            root,
            watcher,
            role: Role::Standby,
            ready_once: false,
            changed: BTreeSet::new(),
            changed_since: None,
            full_due: true,
            next_full: now,
            orphans: HashMap::new(),
            sweep_after: now,
            next_quick,
            next_deep,
            next_lease_try: now,
            failures: 0,
            retry_at: None,
            last_save: now,
            lease_retaken: self.lease.times_retaken().await,
        };
        self.health.set_role(Role::Standby.as_str());
        state.serve(events, &cancel).await;
        state.engines.warmer.source().save_state();
        Ok(())
    }
}

/// The warmer and checker of one root, sharing the service's lease.
struct Engines {
    warmer: Warmer,
    checker: Checker,
}

impl Engines {
    fn build(
        config: &ServeConfig,
        backend: &Arc<dyn CacheBackend>,
        lease: &SharedLease,
        root: &RootId,
    ) -> Result<Self> {
        let mut engine = config.engine.clone();
        // Pinned to the tree the root leads to now: a swapped root gets engines of its own.
        engine.source.root = root.path.clone();
        engine.source.state_path = match &config.state_dir {
            Some(dir) => Some(template_cache_core::source::fingerprints::state_file(
                dir, &root.path,
            )?),
            None => None,
        };
        engine.shared_lease = Some(lease.clone());
        engine.lease.wait = None;
        engine.progress = None;
        let warmer = Warmer::new(Arc::clone(backend), engine)?;
        // One source of fingerprints for both: checks never re-read what warms read.
        let checker = warmer.checker();
        Ok(Engines { warmer, checker })
    }
}

/// What the loop knows between turns.
struct State<'a> {
    service: &'a Service,
    engines: Engines,
    root: RootId,
    watcher: Option<TreeWatcher>,
    role: Role,
    /// The first full warm (holder) or lease attempt (standby) succeeded.
    ready_once: bool,
    /// Names changed since they were last written.
    changed: BTreeSet<String>,
    /// When the earliest of them changed.
    changed_since: Option<Instant>,
    /// A full run is due now.
    full_due: bool,
    /// The next backstop full run.
    next_full: Instant,
    /// Orphaned names and when each was first seen gone.
    orphans: HashMap<String, Instant>,
    /// No orphan sweep before this (after a refusal, not before the next grace period).
    sweep_after: Instant,
    next_quick: Option<Timestamp>,
    next_deep: Option<Timestamp>,
    next_lease_try: Instant,
    /// Consecutive failed turns (backend unreachable).
    failures: u32,
    /// No work before this, after a failure.
    retry_at: Option<Instant>,
    last_save: Instant,
    /// [`SharedLease::times_retaken`] when last seen.
    lease_retaken: u64,
}

/// One unit of work.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Work {
    TryLease,
    Full,
    Changed,
    Sweep,
    Check(CheckMode),
}

impl State<'_> {
    fn config(&self) -> &ServeConfig {
        &self.service.config
    }

    async fn serve(
        &mut self,
        mut events: Option<mpsc::UnboundedReceiver<WatchEvent>>,
        cancel: &CancellationToken,
    ) {
        while !cancel.is_cancelled() {
            self.service.observer.tick();
            if let Some(rx) = events.as_mut() {
                while let Ok(e) = rx.try_recv() {
                    self.note(e);
                }
            }
            self.notice_lost_lease().await;
            match self.next_work(Instant::now()) {
                Some(work) => {
                    let outcome = self.perform(work, cancel).await;
                    self.after(work, outcome);
                }
                None => {
                    let wake = self.next_deadline(Instant::now());
                    let event = async {
                        match events.as_mut() {
                            Some(rx) => rx.recv().await,
                            None => std::future::pending().await,
                        }
                    };
                    tokio::select! {
                        _ = cancel.cancelled() => {}
                        e = event => match e {
                            Some(e) => self.note(e),
                            None => {
                                tracing::error!("the file watcher stopped; falling back to full rescans");
                                events = None;
                                self.watcher = None;
                            }
                        },
                        _ = tokio::time::sleep_until(wake.into()) => {}
                    }
                }
            }
        }
    }

    /// Records a watcher event.
    fn note(&mut self, event: WatchEvent) {
        match event {
            WatchEvent::Changed { paths, since } => {
                for p in paths {
                    match template_cache_core::scan::template_name(&self.root.path, &p) {
                        Ok(name) => {
                            self.changed.insert(name);
                        }
                        // Not a valid name (not UTF-8): a full scan reports it.
                        Err(_) => self.full_due = true,
                    }
                }
                self.changed_since = Some(self.changed_since.map_or(since, |s| s.min(since)));
                if self.changed.len() > MAX_PENDING_NAMES {
                    self.changed.clear();
                    self.full_due = true;
                }
            }
            WatchEvent::Missed(why) => {
                tracing::warn!(%why, "file events may have been missed; rescanning the tree");
                self.full_due = true;
            }
            WatchEvent::RootMoved => {
                if let Err(e) = self.follow_root() {
                    tracing::warn!(error = %e, "the template root cannot be resolved; nothing is changed until it can");
                }
            }
        }
    }

    /// Follows a root that leads elsewhere now: new engines, a full run.
    fn follow_root(&mut self) -> Result<()> {
        let now = match self.watcher.as_mut() {
            Some(w) => {
                w.retarget()?;
                w.target()
            }
            None => RootId::of(&self.config().engine.source.root)?,
        };
        if now == self.root {
            return Ok(());
        }
        tracing::info!(from = %self.root.path.display(), to = %now.path.display(), "the template root moved (a deploy?); warming its new tree");
        self.engines.warmer.source().save_state();
        self.engines = Engines::build(
            self.config(),
            &self.service.backend,
            &self.service.lease,
            &now,
        )?;
        self.root = now;
        self.changed.clear();
        self.full_due = true;
        Ok(())
    }

    /// Drops to standby if the lease was lost (expired unrenewed, taken over).
    /// Also notices a lease record that vanished and was taken again: the cache server
    /// restarted empty (or evicted it), so a full run rewrites what it lost.
    async fn notice_lost_lease(&mut self) {
        if self.role != Role::Holder {
            return;
        }
        if !self.service.lease.is_held().await {
            tracing::warn!("the namespace write lease was lost; standing by");
            self.set_role(Role::Standby);
            self.next_lease_try = Instant::now();
            return;
        }
        let retaken = self.service.lease.times_retaken().await;
        if retaken != self.lease_retaken {
            self.lease_retaken = retaken;
            tracing::warn!(
                "the cache lost the write lease record (a restart?); rewriting what it lost"
            );
            self.full_due = true;
        }
    }

    fn set_role(&mut self, role: Role) {
        if self.role == role {
            return;
        }
        self.role = role;
        self.service.health.set_role(role.as_str());
        self.service.observer.lease(role == Role::Holder);
    }

    /// The most urgent work due at `now`, if any.
    fn next_work(&self, now: Instant) -> Option<Work> {
        if self.retry_at.is_some_and(|r| now < r) {
            return None;
        }
        let holder = self.role == Role::Holder;
        if !holder && now >= self.next_lease_try {
            return Some(Work::TryLease);
        }
        if holder && (self.full_due || now >= self.next_full) {
            return Some(Work::Full);
        }
        if !self.changed.is_empty() {
            return Some(Work::Changed);
        }
        if holder && self.sweep_due(now) {
            return Some(Work::Sweep);
        }
        let wall = Timestamp::now();
        if self.next_deep.is_some_and(|t| wall >= t) {
            return Some(Work::Check(CheckMode::Deep));
        }
        if self.next_quick.is_some_and(|t| wall >= t) {
            return Some(Work::Check(CheckMode::Quick));
        }
        if !holder && now >= self.next_full {
            // A standby's backstop: follow a root that moved without an event.
            return Some(Work::Full);
        }
        None
    }

    /// When the oldest orphan's grace is over.
    fn sweep_at(&self) -> Option<Instant> {
        let grace = self.config().orphan_grace?;
        if self.config().resolve.orphaned != Mode::Auto {
            return None;
        }
        let oldest = self.orphans.values().min()?;
        Some((*oldest + grace).max(self.sweep_after))
    }

    fn sweep_due(&self, now: Instant) -> bool {
        self.sweep_at().is_some_and(|t| now >= t)
    }

    /// The next moment something may be due (capped, so that `tick` runs every few seconds).
    fn next_deadline(&self, now: Instant) -> Instant {
        let mut at = now + Duration::from_secs(5);
        let mut consider = |t: Instant| at = at.min(t);
        if let Some(r) = self.retry_at {
            consider(r.max(now));
            return at;
        }
        consider(self.next_full);
        if self.role == Role::Standby {
            consider(self.next_lease_try);
        } else if let Some(s) = self.sweep_at() {
            consider(s);
        }
        let wall = Timestamp::now();
        for t in [self.next_quick, self.next_deep].into_iter().flatten() {
            let wait = wall.duration_until(t);
            let wait = Duration::try_from(wait).unwrap_or(Duration::ZERO);
            consider(now + wait);
        }
        at.max(now + Duration::from_millis(1))
    }

    async fn perform(&mut self, work: Work, cancel: &CancellationToken) -> Result<()> {
        match work {
            Work::TryLease => self.try_lease().await,
            Work::Full => self.full().await.map(|_| ()),
            Work::Changed => self.changed(cancel).await,
            Work::Sweep => self.sweep(cancel).await,
            Work::Check(mode) => self.scheduled_check(mode, cancel).await,
        }
    }

    /// Bookkeeping after a unit of work: failures pause and force a full run.
    fn after(&mut self, work: Work, outcome: Result<()>) {
        let now = Instant::now();
        match outcome {
            Ok(()) => {
                if self.failures > 0 {
                    tracing::info!(after = self.failures, "the backend answers again");
                    self.service.observer.backend(true);
                }
                self.failures = 0;
                self.retry_at = None;
                if self.ready_once {
                    self.service.health.set_ready();
                }
            }
            Err(e) if e.kind() == ErrorKind::Conflict => {
                // Another writer holds the lease: stand by (and keep what changed: it is
                // written after a takeover by the full run).
                if self.role == Role::Holder {
                    tracing::warn!(error = %e, "another writer holds the namespace write lease; standing by");
                    self.set_role(Role::Standby);
                }
                self.next_lease_try = now + self.lease_retry();
            }
            Err(e) => {
                self.failures += 1;
                let pause = self.backoff();
                tracing::error!(error = %e.to_report_string(), ?work, retry_in = ?pause, "service work failed; retrying");
                self.service
                    .health
                    .set_not_ready(format!("backend unavailable: {e}"));
                self.service.observer.backend(false);
                self.retry_at = Some(now + pause);
                self.full_due = true;
                if work == Work::TryLease {
                    self.next_lease_try = now + pause;
                }
            }
        }
    }

    fn backoff(&self) -> Duration {
        let base = Duration::from_millis(500) * 2u32.saturating_pow(self.failures.min(16));
        let capped = base.min(self.config().max_backoff);
        capped.mul_f64(0.75 + fastrand::f64() * 0.5)
    }

    fn lease_retry(&self) -> Duration {
        let third = self.config().engine.lease.ttl / 3;
        third.mul_f64(0.75 + fastrand::f64() * 0.5)
    }

    async fn try_lease(&mut self) -> Result<()> {
        let cache = Cache::new(Arc::clone(&self.service.backend));
        let config = LeaseConfig {
            wait: None,
            ..self.config().engine.lease
        };
        let ns = &self.config().engine.namespace;
        match self.service.lease.hold(&cache, ns, &config).await {
            Ok(()) => {
                tracing::info!(namespace = %ns, "holding the namespace write lease: this service writes");
                self.set_role(Role::Holder);
                self.lease_retaken = self.service.lease.times_retaken().await;
                self.full_due = true;
                Ok(())
            }
            Err(e) if e.kind() == ErrorKind::Conflict => {
                self.service.observer.standing_by();
                if !self.ready_once {
                    tracing::info!(reason = %e, "standing by: another service writes this namespace");
                    self.ready_once = true;
                    self.service.health.set_ready();
                }
                self.next_lease_try = Instant::now() + self.lease_retry();
                Ok(())
            }
            Err(e) => Err(e),
        }
    }

    /// A whole-tree run: the holder warms; a standby only follows a moved root.
    async fn full(&mut self) -> Result<Option<WarmReport>> {
        let now = Instant::now();
        self.next_full = now + self.backstop_interval();
        match RootId::of(&self.config().engine.source.root) {
            Ok(id) if id != self.root => self.follow_root()?,
            Ok(_) => {}
            // A root that vanished (an unmounted volume, a deploy mid-swap): change nothing.
            Err(e) => return Err(e),
        }
        if self.role != Role::Holder {
            self.full_due = false;
            return Ok(None);
        }
        self.full_due = false;
        let names_before = std::mem::take(&mut self.changed);
        let since = self.changed_since.take();
        let r = self
            .engines
            .warmer
            .run_once_until(&CancellationToken::new())
            .await;
        let latency = since.map(|s| s.elapsed());
        self.service.observer.warmed(&r, true, latency);
        match r {
            Ok(report) => {
                self.last_save = Instant::now();
                self.log_warm(&report, true);
                let seen = Instant::now();
                let old = std::mem::take(&mut self.orphans);
                self.orphans = report
                    .orphans
                    .iter()
                    .map(|n| (n.clone(), old.get(n).copied().unwrap_or(seen)))
                    .collect();
                self.ready_once = true;
                Ok(Some(report))
            }
            Err(e) => {
                // Keep what changed for the next attempt.
                self.changed.extend(names_before);
                self.changed_since = since;
                Err(e)
            }
        }
    }

    fn backstop_interval(&self) -> Duration {
        if self.watcher.is_some() {
            self.config().rescan_interval
        } else {
            self.config().poll_interval
        }
    }

    /// Writes (holder) or re-hashes (standby) the files that changed.
    async fn changed(&mut self, cancel: &CancellationToken) -> Result<()> {
        let names: Vec<String> = std::mem::take(&mut self.changed).into_iter().collect();
        let since = self.changed_since.take();
        if self.role == Role::Standby {
            self.engines.warmer.rehash_changed(names).await?;
            return Ok(());
        }
        let r = self
            .engines
            .warmer
            .warm_changed(names.clone(), cancel)
            .await;
        let latency = since.map(|s| s.elapsed());
        if let (Ok(rep), Some(l)) = (&r, latency)
            && rep.written > 0
        {
            metrics::histogram!("tcache_change_to_cache_seconds").record(l.as_secs_f64());
        }
        self.service.observer.warmed(&r, false, latency);
        match r {
            Ok(report) => {
                self.log_warm(&report, false);
                let seen = Instant::now();
                for n in &names {
                    self.orphans.remove(n);
                }
                for n in &report.orphans {
                    self.orphans.insert(n.clone(), seen);
                }
                if report.needs_full_run {
                    self.full_due = true;
                }
                if self.last_save.elapsed() >= STATE_SAVE_EVERY {
                    self.engines.warmer.source().save_state();
                    self.last_save = Instant::now();
                }
                Ok(())
            }
            Err(e) => {
                self.changed.extend(names);
                self.changed_since = since;
                Err(e)
            }
        }
    }

    fn log_warm(&self, r: &WarmReport, full: bool) {
        let kind = if full { "full" } else { "changes" };
        if r.written > 0 || !r.failed.is_empty() || !r.orphans.is_empty() {
            tracing::info!(
                kind,
                written = r.written,
                unchanged = r.unchanged,
                failed = r.failed.len(),
                gone = r.orphans.len(),
                ms = r.duration.as_millis() as u64,
                "warmed"
            );
        } else {
            tracing::debug!(kind, scanned = r.scanned, "warmed; nothing changed");
        }
        for f in &r.failed {
            tracing::warn!(template = %f.name, error = %f.error, "template not warmed");
        }
    }

    /// Deletes orphans whose grace is over (with whatever else auto-resolves), through a check.
    async fn sweep(&mut self, cancel: &CancellationToken) -> Result<()> {
        tracing::info!(
            candidates = self.orphans.len(),
            "orphan grace over; checking before deleting"
        );
        self.check_and_resolve(CheckMode::Quick, cancel).await
    }

    async fn scheduled_check(&mut self, mode: CheckMode, cancel: &CancellationToken) -> Result<()> {
        let c = &self.service.config;
        let every = match mode {
            CheckMode::Quick => c.check_every,
            CheckMode::Deep => c.deep_check_every,
        };
        let started = Timestamp::now();
        let next = every.map(|e| {
            c.check_windows
                .next_run(started, Some(started), e, jitter(c.check_jitter))
        });
        match mode {
            CheckMode::Quick => self.next_quick = next,
            CheckMode::Deep => self.next_deep = next,
        }
        tracing::info!(?mode, next = ?next.map(|t| t.to_string()), "scheduled check");
        self.check_and_resolve(mode, cancel).await
    }

    /// Checks; the holder then resolves what the modes make automatic, orphans only past
    /// their grace, behind the thresholds. A refusal changes nothing, is logged and observed.
    async fn check_and_resolve(
        &mut self,
        mode: CheckMode,
        cancel: &CancellationToken,
    ) -> Result<()> {
        let checked = tokio::select! {
            r = self.engines.checker.check(mode) => r,
            _ = cancel.cancelled() => return Ok(()),
        };
        self.service.observer.checked(&checked);
        let mut report = checked?;
        let now = Instant::now();
        let old = std::mem::take(&mut self.orphans);
        self.orphans = report
            .orphaned
            .iter()
            .map(|n| (n.clone(), old.get(n).copied().unwrap_or(now)))
            .collect();
        if self.role != Role::Holder || report.inconsistencies() == 0 {
            return Ok(());
        }
        let grace = self.config().orphan_grace;
        let orphans = &self.orphans;
        report.retain_orphans(|n| {
            grace.is_some_and(|g| orphans.get(n).is_some_and(|t| now.duration_since(*t) >= g))
        });
        let policy = self.config().policy();
        let wanted = (policy.add_missing && !report.missing.is_empty())
            || (policy.update_outdated && !report.outdated.is_empty())
            || (policy.repair_corrupt && !report.corrupt.is_empty())
            || (policy.delete_orphans && !report.orphaned.is_empty());
        if !wanted {
            return Ok(());
        }
        let resolved = self.engines.checker.resolve(&report, &policy).await;
        self.service.observer.resolved(&resolved);
        match resolved {
            Ok(r) => {
                tracing::info!(
                    added = r.added,
                    updated = r.updated,
                    repaired = r.repaired,
                    deleted = r.deleted,
                    failed = r.failed.len(),
                    "resolved"
                );
                for n in &report.orphaned {
                    self.orphans.remove(n);
                }
                Ok(())
            }
            Err(e) if e.kind() == ErrorKind::Refused => {
                tracing::error!(reason = %e, "automatic resolution refused by a threshold; nothing was changed");
                // Not again before another grace period (or rescan interval).
                self.sweep_after = now + grace.unwrap_or(self.config().rescan_interval);
                Ok(())
            }
            Err(e) => Err(e),
        }
    }
}

/// The template root of a configuration, as given.
pub fn configured_root(config: &ServeConfig) -> PathBuf {
    config.engine.source.root.clone()
}
