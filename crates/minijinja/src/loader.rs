//! [`CacheLoader`]: verified template sources in memory, loaded from the cache through
//! [`TemplateReader`] and kept fresh by an asynchronous refresher.

use std::collections::HashMap;
use std::sync::{Arc, PoisonError, RwLock, Weak};
use std::time::{Duration, Instant};

use futures_util::stream::{self, StreamExt};
use minijinja::TemplateSource;
use template_cache_core::{
    Cache, CacheBackend, ContentHash, Error, ErrorKind, Namespace, Origin, Result, SourceConfig,
    Template, TemplateReader, index,
};
use tokio::runtime::{Handle, RuntimeFlavor};
use tokio::sync::watch;

use crate::collect::{Miss, record_miss};

/// The shortest allowed [`LoaderConfig::refresh_interval`].
pub const MIN_REFRESH_INTERVAL: Duration = Duration::from_millis(100);
/// The longest allowed [`LoaderConfig::refresh_interval`].
pub const MAX_REFRESH_INTERVAL: Duration = Duration::from_secs(24 * 3600);

/// How a [`CacheLoader`] reads and refreshes templates.
#[derive(Clone, Debug)]
pub struct LoaderConfig {
    /// The namespace the templates were warmed into (default `tpl`).
    pub namespace: Namespace,
    /// Read-only read-through: on a miss or a corrupt entry, serve the file from this tree (under
    /// the warmer's include/exclude and size rules, see
    /// [`TemplateReader::with_read_through`]). Nothing is ever written to the cache: the warmer,
    /// under the namespace's write lease, is its one writer. `None` (the default): a miss is "not
    /// found" and a corrupt entry an error.
    pub read_through: Option<SourceConfig>,
    /// How often the refresher re-reads every loaded template (default 5 s, from
    /// [`MIN_REFRESH_INTERVAL`] to [`MAX_REFRESH_INTERVAL`]). This is the staleness bound: a
    /// template re-warmed at time *t* is served from *t + interval + one refresh pass* at the
    /// latest, while the cache can be read.
    pub refresh_interval: Duration,
    /// How many templates are read from the cache at once (loads and refresh passes; default
    /// 16, from 1 to 1024).
    pub concurrency: usize,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        LoaderConfig {
            namespace: Namespace::default(),
            read_through: None,
            refresh_interval: Duration::from_secs(5),
            concurrency: 16,
        }
    }
}

impl LoaderConfig {
    /// Defaults for `namespace`.
    pub fn new(namespace: Namespace) -> Self {
        LoaderConfig {
            namespace,
            ..LoaderConfig::default()
        }
    }

    fn validate(&self) -> Result<()> {
        let invalid = |setting: &str, range: &str, value: String| {
            Err(Error::new(
                ErrorKind::ConfigInvalid,
                format!("{setting} must be from {range}, got {value}"),
            ))
        };
        if !(MIN_REFRESH_INTERVAL..=MAX_REFRESH_INTERVAL).contains(&self.refresh_interval) {
            return invalid(
                "refresh_interval",
                "100ms to 24h",
                format!("{:?}", self.refresh_interval),
            );
        }
        if !(1..=1024).contains(&self.concurrency) {
            return invalid("concurrency", "1 to 1024", self.concurrency.to_string());
        }
        Ok(())
    }
}

/// What the loader holds of one template.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LoadedTemplate {
    /// SHA-256 of the source, as verified when it was read.
    pub hash: ContentHash,
    /// Where it was read from: a verified cache entry, or the file (read-through).
    pub origin: Origin,
    /// Its size in bytes.
    pub size: usize,
}

/// The outcome of loading a set of templates ([`CacheLoader::preload`]).
#[derive(Debug, Default)]
pub struct LoadReport {
    /// Templates now held.
    pub loaded: usize,
    /// Names that are not templates of the namespace (nor, with read-through, of the tree).
    pub absent: Vec<String>,
    /// Templates that could not be read (corrupt entry without read-through, backend errors,
    /// not UTF-8), with the error.
    pub failed: Vec<(String, Error)>,
}

/// The outcome of one refresh pass ([`CacheLoader::refresh`]).
#[derive(Debug, Default)]
pub struct RefreshReport {
    /// Loaded templates that were re-read.
    pub checked: usize,
    /// Templates whose content changed; the new version is now served.
    pub changed: Vec<String>,
    /// Templates that are gone from the cache (and, with read-through, from the tree): no
    /// longer served.
    pub removed: Vec<String>,
    /// Templates that could not be re-read: the last verified version is still served.
    pub failed: Vec<(String, Error)>,
    /// How long the pass took.
    pub duration: Duration,
}

/// One template source as held in memory.
#[derive(Clone, Debug)]
struct Held {
    source: Arc<str>,
    hash: ContentHash,
    origin: Origin,
}

#[derive(Debug)]
struct Inner {
    reader: TemplateReader,
    cache: Cache,
    config: LoaderConfig,
    handle: Handle,
    held: RwLock<HashMap<String, Held>>,
    /// Bumped after every change to a template that may have been compiled (a new version or a
    /// removal); environments built at an older generation must be rebuilt.
    generation: watch::Sender<u64>,
}

/// Templates from a template-cache namespace, for minijinja.
///
/// The loader keeps the verified source of every template it has read in memory. minijinja's
/// loader callback ([`loader`](Self::loader), [`install`](Self::install)) is synchronous and
/// answers from memory; templates are read from the cache asynchronously, through
/// [`TemplateReader`] (SHA-256 verified, read-only read-through if configured):
///
/// - up front with [`preload`](Self::preload) or [`preload_index`](Self::preload_index);
/// - on a miss during [`CachedEnvironment::render`](crate::CachedEnvironment::render), which
///   loads the missing names without blocking and renders again;
/// - on a miss in a plain synchronous lookup, by blocking the calling thread (see
///   [`loader`](Self::loader)).
///
/// The [refresher](Self::spawn_refresher) re-reads every held template each
/// [`LoaderConfig::refresh_interval`] and swaps in changed versions (see the crate docs for
/// the staleness bound).
///
/// Cloning is cheap: clones share the templates.
#[derive(Clone, Debug)]
pub struct CacheLoader {
    inner: Arc<Inner>,
}

impl CacheLoader {
    /// A loader of `config.namespace` on `backend`. Must be called within a tokio runtime,
    /// whose handle runs the loader's reads.
    ///
    /// Fails with [`ErrorKind::ConfigInvalid`] if a setting is out of range, a read-through
    /// glob is invalid, or there is no current tokio runtime.
    pub fn new(backend: Arc<dyn CacheBackend>, config: LoaderConfig) -> Result<Self> {
        config.validate()?;
        let handle = Handle::try_current().map_err(|_| {
            Error::new(
                ErrorKind::ConfigInvalid,
                "CacheLoader::new must be called within a tokio runtime",
            )
        })?;
        let mut reader = TemplateReader::new(backend.clone(), config.namespace.clone());
        if let Some(source) = &config.read_through {
            reader = reader.with_read_through(source.clone())?;
        }
        Ok(CacheLoader {
            inner: Arc::new(Inner {
                reader,
                cache: Cache::new(backend),
                config,
                handle,
                held: RwLock::new(HashMap::new()),
                generation: watch::Sender::new(0),
            }),
        })
    }

    /// The loader's settings.
    pub fn config(&self) -> &LoaderConfig {
        &self.inner.config
    }

    /// The current generation: it grows whenever a template that may have been compiled
    /// changed or was removed. An environment compiled at an older generation is out of date
    /// (its compiled templates must be cleared, see [`subscribe`](Self::subscribe)).
    pub fn generation(&self) -> u64 {
        *self.inner.generation.borrow()
    }

    /// A receiver that sees every new [`generation`](Self::generation). An application's own
    /// `Environment` ([`install`](Self::install)) picks up new versions by itself (see
    /// [`loader`](Self::loader)) but keeps the versions it replaced until it is changed through
    /// `&mut`: call `Environment::clear_templates` when the generation moves.
    /// [`CachedEnvironment`](crate::CachedEnvironment) does this for you.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.generation.subscribe()
    }

    /// What the loader holds of template `name`, if it holds it.
    pub fn loaded(&self, name: &str) -> Option<LoadedTemplate> {
        self.read_held().get(name).map(|h| LoadedTemplate {
            hash: h.hash,
            origin: h.origin,
            size: h.source.len(),
        })
    }

    /// The names of every template held, sorted.
    pub fn loaded_names(&self) -> Vec<String> {
        let mut names: Vec<String> = self.read_held().keys().cloned().collect();
        names.sort();
        names
    }

    /// Reads template `name` from the cache (verified; read-through if configured) and holds
    /// it, replacing any version held. `Ok(None)`: it is not a template of the namespace (and
    /// no longer held).
    ///
    /// Errors: a corrupt entry without read-through ([`ErrorKind::Corrupt`]), a template that
    /// is not UTF-8 ([`ErrorKind::Unsupported`]), backend and read-through errors. On an error
    /// the version held before, if any, stays.
    pub async fn load(&self, name: &str) -> Result<Option<Arc<str>>> {
        let read = self.inner.reader.get(name).await?;
        match read {
            Some(t) => {
                let held = held_of(t)?;
                let source = held.source.clone();
                self.replace(name, Some(held));
                Ok(Some(source))
            }
            None => {
                self.replace(name, None);
                Ok(None)
            }
        }
    }

    /// Loads every name of `names` (at most [`LoaderConfig::concurrency`] reads at once). One
    /// template's failure does not stop the others: it is reported.
    pub async fn preload<I, S>(&self, names: I) -> LoadReport
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let names: Vec<String> = names.into_iter().map(|n| n.as_ref().to_owned()).collect();
        let results: Vec<(String, Result<Option<Arc<str>>>)> = stream::iter(names)
            .map(|name| async move {
                let r = self.load(&name).await;
                (name, r)
            })
            .buffer_unordered(self.inner.config.concurrency)
            .collect()
            .await;
        let mut report = LoadReport::default();
        for (name, r) in results {
            match r {
                Ok(Some(_)) => report.loaded += 1,
                Ok(None) => report.absent.push(name),
                Err(e) => report.failed.push((name, e)),
            }
        }
        report.absent.sort();
        report.failed.sort_by(|a, b| a.0.cmp(&b.0));
        report
    }

    /// Loads every template the namespace's index lists, so that renders never wait for a
    /// first read. The whole namespace is then held in memory: prefer
    /// [`preload`](Self::preload) with the names an application uses when the namespace is
    /// large.
    ///
    /// Fails if the index cannot be read; a namespace without an index loads nothing.
    pub async fn preload_index(&self) -> Result<LoadReport> {
        let snapshot = index::load(&self.inner.cache, &self.inner.config.namespace).await?;
        let names = snapshot
            .map(|s| s.entries.keys().map(str::to_owned).collect::<Vec<_>>())
            .unwrap_or_default();
        Ok(self.preload(names).await)
    }

    /// One refresh pass: re-reads every held template through the reader (at most
    /// [`LoaderConfig::concurrency`] at once) and swaps in each one whose hash changed, drops
    /// those that are gone, and keeps the last verified version of those that cannot be read
    /// (a corrupt entry is never served). Bumps the [generation](Self::generation) if anything
    /// changed.
    pub async fn refresh(&self) -> RefreshReport {
        let started = Instant::now();
        let snapshot: Vec<(String, ContentHash)> = self
            .read_held()
            .iter()
            .map(|(name, h)| (name.clone(), h.hash))
            .collect();
        let results: Vec<(String, ContentHash, Result<Option<Template>>)> = stream::iter(snapshot)
            .map(|(name, hash)| async move {
                let r = self.inner.reader.get(&name).await;
                (name, hash, r)
            })
            .buffer_unordered(self.inner.config.concurrency)
            .collect()
            .await;
        let mut report = RefreshReport {
            checked: results.len(),
            ..RefreshReport::default()
        };
        let mut changes = Vec::new();
        for (name, old, r) in results {
            match r {
                Ok(Some(t)) if t.hash == old => {
                    // Same content; only its origin may differ (a file now warmed).
                    let origin = t.origin;
                    let mut held = self.write_held();
                    if let Some(h) = held.get_mut(&name).filter(|h| h.hash == old) {
                        h.origin = origin;
                    }
                }
                Ok(Some(t)) => match held_of(t) {
                    Ok(h) => changes.push((name, old, Some(h))),
                    Err(e) => report.failed.push((name, e)),
                },
                Ok(None) => changes.push((name, old, None)),
                Err(e) => report.failed.push((name, e)),
            }
        }
        let mut bump = false;
        {
            let mut held = self.write_held();
            for (name, old, new) in changes {
                // Another load may have swapped in a newer version since the snapshot.
                if held.get(&name).is_none_or(|h| h.hash != old) {
                    continue;
                }
                match new {
                    Some(h) => {
                        held.insert(name.clone(), h);
                        report.changed.push(name);
                    }
                    None => {
                        held.remove(&name);
                        report.removed.push(name);
                    }
                }
                bump = true;
            }
        }
        if bump {
            self.inner.generation.send_modify(|g| *g += 1);
        }
        report.changed.sort();
        report.removed.sort();
        report.failed.sort_by(|a, b| a.0.cmp(&b.0));
        report.duration = started.elapsed();
        for name in &report.changed {
            tracing::info!(
                name,
                "template changed in the cache; serving the new version"
            );
        }
        for name in &report.removed {
            tracing::info!(name, "template gone from the cache; no longer served");
        }
        for (name, e) in &report.failed {
            tracing::warn!(
                name,
                error = %e,
                "template could not be re-read; serving its last verified version"
            );
        }
        report
    }

    /// Starts the refresher on the loader's runtime: a task that runs
    /// [`refresh`](Self::refresh) every [`LoaderConfig::refresh_interval`] (the next pass starts
    /// an interval after the previous one ended, so passes never overlap). It stops when the
    /// returned [`Refresher`] is dropped or when every clone of the loader is gone.
    pub fn spawn_refresher(&self) -> Refresher {
        let weak: Weak<Inner> = Arc::downgrade(&self.inner);
        let interval = self.inner.config.refresh_interval;
        let task = self.inner.handle.spawn(async move {
            loop {
                tokio::time::sleep(interval).await;
                let Some(inner) = weak.upgrade() else { return };
                let report = CacheLoader { inner }.refresh().await;
                tracing::debug!(
                    checked = report.checked,
                    changed = report.changed.len(),
                    removed = report.removed.len(),
                    failed = report.failed.len(),
                    duration_ms = report.duration.as_millis() as u64,
                    "template refresh pass"
                );
            }
        });
        Refresher { task }
    }

    /// The loader callback for `minijinja::Environment::set_loader`.
    ///
    /// A held template is answered from memory, without any I/O. A template not held yet:
    ///
    /// - during [`CachedEnvironment::render`](crate::CachedEnvironment::render), the miss is
    ///   recorded and answered with a "not loaded yet" error; `render` loads it asynchronously
    ///   and renders again, so nothing blocks;
    /// - on a thread outside the runtime (`spawn_blocking`, a plain thread), the read runs on
    ///   the loader's runtime and the thread waits for it;
    /// - on a worker of a multi-thread runtime, the thread waits in
    ///   `tokio::task::block_in_place` (the worker's other tasks move to other workers);
    /// - on a current-thread runtime, waiting would deadlock the runtime: the lookup fails
    ///   with an error saying so. Use `CachedEnvironment::render` or preload the templates.
    ///
    /// Each source carries an up-to-date check (does the loader still hold this version? a
    /// lookup in memory): with minijinja's auto-reload, on by default, an environment reloads
    /// a template on its next lookup once the refresher replaced or dropped it.
    ///
    /// Errors (a corrupt entry without read-through, an unreachable backend) are minijinja
    /// errors of kind `InvalidOperation` whose source is the template-cache [`Error`].
    pub fn loader(
        &self,
    ) -> impl Fn(&str) -> std::result::Result<Option<TemplateSource>, minijinja::Error>
    + Send
    + Sync
    + 'static {
        let loader = self.clone();
        move |name: &str| loader.load_sync(name)
    }

    /// Sets [`loader`](Self::loader) as `env`'s loader.
    pub fn install(&self, env: &mut minijinja::Environment<'_>) {
        env.set_loader(self.loader());
    }

    fn load_sync(
        &self,
        name: &str,
    ) -> std::result::Result<Option<TemplateSource>, minijinja::Error> {
        if let Some(source) = self.source_of(name) {
            return Ok(Some(source));
        }
        match record_miss(name) {
            Miss::Absent => return Ok(None),
            Miss::Recorded => {
                return Err(minijinja::Error::new(
                    minijinja::ErrorKind::TemplateNotFound,
                    format!("template {name:?} is not loaded yet"),
                ));
            }
            Miss::NotCollecting => {}
        }
        let fetch = || self.inner.handle.block_on(self.load(name));
        let read = match Handle::try_current() {
            Err(_) => fetch(),
            Ok(h) if h.runtime_flavor() == RuntimeFlavor::MultiThread => {
                tokio::task::block_in_place(fetch)
            }
            Ok(_) => {
                return Err(minijinja::Error::new(
                    minijinja::ErrorKind::InvalidOperation,
                    format!(
                        "template {name:?} is not loaded, and a current-thread tokio runtime \
                         cannot wait for it to be read: render with CachedEnvironment::render, \
                         preload the template, or render on spawn_blocking in a multi-thread \
                         runtime"
                    ),
                ));
            }
        };
        match read {
            // Answered from what is held now (a refresh may have landed since the read).
            Ok(Some(_)) => Ok(self.source_of(name)),
            Ok(None) => Ok(None),
            Err(e) => Err(to_minijinja(name, e)),
        }
    }

    /// The held version of `name` for minijinja, with an up-to-date check: with minijinja's
    /// auto-reload (on by default) an environment reloads the template on its next lookup once
    /// the loader holds another version or none.
    fn source_of(&self, name: &str) -> Option<TemplateSource> {
        let (source, hash) = {
            let held = self.read_held();
            let h = held.get(name)?;
            (h.source.to_string(), h.hash)
        };
        let loader = self.clone();
        let name = name.to_owned();
        Some(TemplateSource::new(source).with_uptodate_check(move || {
            loader
                .read_held()
                .get(&name)
                .is_some_and(|h| h.hash == hash)
        }))
    }

    /// Holds `new` for `name` (or drops it). Bumps the generation when a held version was
    /// replaced by a different one or removed: a new name cannot have been compiled yet.
    fn replace(&self, name: &str, new: Option<Held>) {
        let bump = {
            let mut held = self.write_held();
            let current = held.get(name).map(|h| h.hash);
            match new {
                Some(h) => {
                    let changed = current.is_some_and(|c| c != h.hash);
                    held.insert(name.to_owned(), h);
                    changed
                }
                None => held.remove(name).is_some(),
            }
        };
        if bump {
            self.inner.generation.send_modify(|g| *g += 1);
        }
    }

    fn read_held(&self) -> std::sync::RwLockReadGuard<'_, HashMap<String, Held>> {
        self.inner
            .held
            .read()
            .unwrap_or_else(PoisonError::into_inner)
    }

    fn write_held(&self) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Held>> {
        self.inner
            .held
            .write()
            .unwrap_or_else(PoisonError::into_inner)
    }
}

/// A template as held: its content must be UTF-8 text.
fn held_of(t: Template) -> Result<Held> {
    let source = std::str::from_utf8(&t.content).map_err(|e| {
        Error::new(
            ErrorKind::Unsupported,
            format!("template {:?} is not UTF-8 text: {e}", t.name),
        )
    })?;
    Ok(Held {
        source: Arc::from(source),
        hash: t.hash,
        origin: t.origin,
    })
}

/// A template-cache error as a minijinja error (kept as its source).
pub(crate) fn to_minijinja(name: &str, e: Error) -> minijinja::Error {
    minijinja::Error::new(
        minijinja::ErrorKind::InvalidOperation,
        format!("template {name:?} could not be read from the cache: {e}"),
    )
    .with_source(e)
}

/// The refresher task started by [`CacheLoader::spawn_refresher`]; dropping it stops the task.
#[derive(Debug)]
pub struct Refresher {
    task: tokio::task::JoinHandle<()>,
}

impl Refresher {
    /// Stops the refresher (as dropping it does).
    pub fn stop(self) {}

    /// Whether the task still runs (it ends when every clone of the loader is gone).
    pub fn is_running(&self) -> bool {
        !self.task.is_finished()
    }
}

impl Drop for Refresher {
    fn drop(&mut self) {
        self.task.abort();
    }
}
