//! [`CachedEnvironment`]: a minijinja environment over a [`CacheLoader`] that follows the
//! loader's generation and renders without blocking.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, PoisonError};

use minijinja::{Environment, Value};

use crate::collect::{Collect, collecting};
use crate::loader::{CacheLoader, to_minijinja};

/// At most this many load-and-render-again rounds per render: each round loads at least one
/// template the render asked for that was not held.
const MAX_ROUNDS: usize = 256;

/// A minijinja environment whose templates come from a [`CacheLoader`] and follow it.
///
/// It keeps a configured base environment (filters, globals, syntax, auto-escape: whatever the
/// application set) with the loader installed, and compiles templates in a copy of it. When the
/// loader's [generation](CacheLoader::generation) moves (the refresher swapped in a new version
/// of a template, or dropped one), the next [`environment`](Self::environment) call starts a
/// fresh copy, which compiles the current versions on first use; renders already running keep
/// the copy they started with.
///
/// [`render`](Self::render) never blocks a thread on the cache: templates the loader does not
/// hold yet (a first use, `{% extends %}`, `{% include %}`, `{% import %}` of a name not
/// preloaded) are read asynchronously and the render runs again.
#[derive(Debug)]
pub struct CachedEnvironment {
    loader: CacheLoader,
    base: Environment<'static>,
    current: Mutex<(u64, Arc<Environment<'static>>)>,
}

impl CachedEnvironment {
    /// An environment configured like `base`, loading from `loader` (which replaces any loader
    /// `base` had). Templates added to `base` with `add_template` stay and win over the cache.
    pub fn new(loader: CacheLoader, mut base: Environment<'static>) -> Self {
        loader.install(&mut base);
        let current = (loader.generation(), Arc::new(base.clone()));
        CachedEnvironment {
            loader,
            base,
            current: Mutex::new(current),
        }
    }

    /// The loader.
    pub fn loader(&self) -> &CacheLoader {
        &self.loader
    }

    /// The environment for the loader's current generation. Synchronous lookups in it
    /// (`get_template`) of templates the loader does not hold yet wait for the read, as
    /// [`CacheLoader::loader`] describes; prefer [`render`](Self::render) in async code.
    pub fn environment(&self) -> Arc<Environment<'static>> {
        // The generation is read before the copy is made: a change that lands in between is
        // seen at the next call, and a copy never claims a generation newer than its sources.
        let generation = self.loader.generation();
        let mut current = self.current.lock().unwrap_or_else(PoisonError::into_inner);
        if current.0 != generation {
            *current = (generation, Arc::new(self.base.clone()));
        }
        current.1.clone()
    }

    /// Renders template `name` with `ctx`. Templates the loader does not hold are read from the
    /// cache asynchronously (verified; read-through if configured) and the render runs again,
    /// so a render that needs templates not yet loaded runs more than once: keep template
    /// functions and filters free of side effects, or preload.
    ///
    /// Errors are minijinja's: "template not found" for a name that is not a template of the
    /// namespace, `InvalidOperation` (with the template-cache error as source) for a template
    /// that cannot be read, and any syntax or render error.
    pub async fn render(
        &self,
        name: &str,
        ctx: impl Into<Value>,
    ) -> Result<String, minijinja::Error> {
        let ctx: Value = ctx.into();
        let mut absent = HashSet::new();
        for _ in 0..MAX_ROUNDS {
            let env = self.environment();
            let state = Collect {
                missing: Vec::new(),
                absent,
            };
            let (result, found) = collecting(state, || {
                env.get_template(name)
                    .and_then(|template| template.render(ctx.clone()))
            });
            drop(env);
            if found.missing.is_empty() {
                return result;
            }
            absent = found.absent;
            let report = self.loader.preload(&found.missing).await;
            if let Some((failed, e)) = report.failed.into_iter().next() {
                return Err(to_minijinja(&failed, e));
            }
            absent.extend(report.absent);
        }
        Err(minijinja::Error::new(
            minijinja::ErrorKind::InvalidOperation,
            format!("rendering {name:?} needed more than {MAX_ROUNDS} rounds of template loads"),
        ))
    }
}
