//! Watching the template tree: debounced change events, missed-event signals, and the root
//! followed across deploys that swap a symlink or replace the directory.
//!
//! The tree is watched recursively at its canonical path (notify's recommended watcher, inotify
//! on Linux, debounced here per path) and the configured root's parent non-recursively, so that a `current ->
//! releases/42` symlink swapped to `releases/43`, or a directory renamed over the root, is
//! noticed: the service then calls [`TreeWatcher::retarget`].

use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use std::collections::HashMap;

use notify::{EventKind, RecursiveMode};
use template_cache_core::{Error, ErrorKind, Result};
use tokio::sync::mpsc;

/// What the watcher reports.
#[derive(Debug)]
pub enum WatchEvent {
    /// Files or directories under the root changed (absolute paths), the earliest at `since`.
    Changed {
        /// The paths, each once.
        paths: Vec<PathBuf>,
        /// When the earliest of these changes was seen.
        since: Instant,
    },
    /// Events may have been missed (queue overflow, a watch that could not be added): only a
    /// full rescan is sure to see every change.
    Missed(String),
    /// Something happened to the root itself or beside it: it may lead elsewhere now.
    RootMoved,
}

/// Where the root leads: its canonical path and the directory's identity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RootId {
    /// The canonical path.
    pub path: PathBuf,
    dev: u64,
    ino: u64,
}

impl RootId {
    /// Resolves `root` now.
    pub fn of(root: &Path) -> Result<Self> {
        let path =
            std::fs::canonicalize(root).map_err(|e| Error::io(root, e).context("template root"))?;
        let meta = std::fs::metadata(&path).map_err(|e| Error::io(&path, e))?;
        if !meta.is_dir() {
            return Err(Error::new(
                ErrorKind::ConfigInvalid,
                format!("template root {} is not a directory", root.display()),
            ));
        }
        Ok(RootId {
            path,
            dev: meta.dev(),
            ino: meta.ino(),
        })
    }
}

/// A running watch of one template root.
pub struct TreeWatcher {
    watcher: notify::RecommendedWatcher,
    root: PathBuf,
    target: Arc<Mutex<RootId>>,
}

impl std::fmt::Debug for TreeWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TreeWatcher")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

/// What the watcher's callback passes to the debouncing thread.
enum Raw {
    /// Paths changed at this moment.
    Paths(Vec<PathBuf>, Instant),
    /// Events may have been missed.
    Missed(String),
}

impl TreeWatcher {
    /// Starts watching `root`: a changed path comes out of the returned channel once it has
    /// been quiet for `debounce` (plus at most a quarter of it). Fails when watches cannot be
    /// set up (the inotify watch limit, a filesystem without change events): the caller then
    /// falls back to polling rescans.
    ///
    /// Reads are dropped as they arrive (the kernel reports every open, and the warmer opens
    /// every file it reads), and the debouncing thread sleeps while nothing is pending: an
    /// idle tree costs no CPU.
    pub fn start(
        root: &Path,
        debounce: Duration,
    ) -> Result<(Self, mpsc::UnboundedReceiver<WatchEvent>)> {
        let id = RootId::of(root)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let (raw_tx, raw_rx) = std::sync::mpsc::channel::<Raw>();
        let target = Arc::new(Mutex::new(id.clone()));
        let handler = move |result: notify::Result<notify::Event>| {
            let raw = match result {
                Err(e) => Raw::Missed(format!("watcher error: {e}")),
                Ok(e) if e.need_rescan() => {
                    Raw::Missed("the watcher's event queue overflowed".into())
                }
                Ok(e) if is_read(&e.kind) => return,
                Ok(e) => Raw::Paths(e.paths, Instant::now()),
            };
            // A closed channel: the watcher is being dropped.
            let _ = raw_tx.send(raw);
        };
        let config = notify::Config::default().with_follow_symlinks(false);
        let mut watcher = <notify::RecommendedWatcher as notify::Watcher>::new(handler, config)
            .map_err(|e| watch_error(root, e))?;
        notify::Watcher::watch(&mut watcher, &id.path, RecursiveMode::Recursive)
            .map_err(|e| watch_error(&id.path, e))?;
        let seen = Arc::clone(&target);
        std::thread::Builder::new()
            .name("tcache-debounce".into())
            .spawn(move || debounce_loop(&raw_rx, &tx, debounce, &seen))
            .map_err(|e| {
                Error::new(
                    ErrorKind::Unexpected,
                    format!("cannot start the debouncing thread: {e}"),
                )
            })?;
        let mut watcher = TreeWatcher {
            watcher,
            root: root.to_owned(),
            target,
        };
        watcher.watch_parent();
        Ok((watcher, rx))
    }

    /// The root as it was last resolved.
    pub fn target(&self) -> RootId {
        lock(&self.target).clone()
    }

    /// Resolves the root again; if it leads elsewhere now, watches the new tree instead of the
    /// old one and returns `true`.
    pub fn retarget(&mut self) -> Result<bool> {
        use notify::Watcher;
        let now = RootId::of(&self.root)?;
        let old = self.target();
        if now == old {
            return Ok(false);
        }
        // The old tree may be gone already: failing to unwatch it is expected.
        let _ = self.watcher.unwatch(&old.path);
        self.watcher
            .watch(&now.path, RecursiveMode::Recursive)
            .map_err(|e| watch_error(&now.path, e))?;
        tracing::info!(from = %old.path.display(), to = %now.path.display(), "template root moved; watching its new target");
        *lock(&self.target) = now;
        Ok(true)
    }

    fn watch_parent(&mut self) {
        use notify::Watcher;
        let Some(parent) = self.root.parent().filter(|p| !p.as_os_str().is_empty()) else {
            return;
        };
        if let Err(e) = self.watcher.watch(parent, RecursiveMode::NonRecursive) {
            tracing::warn!(dir = %parent.display(), error = %e, "cannot watch the root's parent directory; a swapped root is noticed at the next rescan");
        }
    }
}

/// Whether an event only reports a read (an open, a close after reading).
fn is_read(kind: &EventKind) -> bool {
    use notify::event::{AccessKind, AccessMode};
    matches!(kind, EventKind::Access(a) if !matches!(a, AccessKind::Close(AccessMode::Write)))
}

fn lock(m: &Mutex<RootId>) -> std::sync::MutexGuard<'_, RootId> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn watch_error(path: &Path, e: notify::Error) -> Error {
    let hint = match &e.kind {
        notify::ErrorKind::MaxFilesWatch => {
            " (the inotify watch limit is reached: raise fs.inotify.max_user_watches)"
        }
        _ => "",
    };
    Error::new(
        ErrorKind::Io,
        format!("cannot watch {}: {e}{hint}", path.display()),
    )
}

/// Collects raw events and emits each path once it has been quiet for `debounce`; blocks
/// while nothing is pending. Ends when the watcher is dropped or the service is gone.
fn debounce_loop(
    raw: &std::sync::mpsc::Receiver<Raw>,
    out: &mpsc::UnboundedSender<WatchEvent>,
    debounce: Duration,
    target: &Mutex<RootId>,
) {
    use std::sync::mpsc::RecvTimeoutError;
    let tick = (debounce / 4).max(Duration::from_millis(1));
    // Each pending path: when it first and last changed.
    let mut pending: HashMap<PathBuf, (Instant, Instant)> = HashMap::new();
    loop {
        let msg = if pending.is_empty() {
            raw.recv().map_err(|_| RecvTimeoutError::Disconnected)
        } else {
            raw.recv_timeout(tick)
        };
        match msg {
            Ok(Raw::Paths(paths, at)) => {
                for p in paths {
                    pending.entry(p).or_insert((at, at)).1 = at;
                }
            }
            Ok(Raw::Missed(why)) => {
                if out.send(WatchEvent::Missed(why)).is_err() {
                    return;
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        let now = Instant::now();
        if !pending
            .values()
            .any(|(_, last)| now.duration_since(*last) >= debounce)
        {
            continue;
        }
        let root = lock(target).path.clone();
        let mut paths = Vec::new();
        let mut since: Option<Instant> = None;
        let mut root_moved = false;
        pending.retain(|p, (first, last)| {
            if now.duration_since(*last) < debounce {
                return true;
            }
            if p.starts_with(&root) && p != &root {
                paths.push(p.clone());
                since = Some(since.map_or(*first, |s| s.min(*first)));
            } else {
                root_moved = true;
            }
            false
        });
        let mut sent = true;
        if root_moved {
            sent &= out.send(WatchEvent::RootMoved).is_ok();
        }
        if !paths.is_empty() {
            paths.sort();
            sent &= out
                .send(WatchEvent::Changed {
                    paths,
                    since: since.unwrap_or(now),
                })
                .is_ok();
        }
        if !sent {
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn next(rx: &mut mpsc::UnboundedReceiver<WatchEvent>) -> WatchEvent {
        tokio::time::timeout(Duration::from_secs(5), rx.recv())
            .await
            .expect("an event within 5 s")
            .expect("the channel is open")
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn changes_come_debounced_and_reads_are_ignored() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("t");
        std::fs::create_dir(&root).unwrap();
        let (_w, mut rx) = TreeWatcher::start(&root, Duration::from_millis(50)).unwrap();
        for i in 0..20 {
            std::fs::write(root.join(format!("{i}.html")), "x").unwrap();
        }
        let mut seen = std::collections::BTreeSet::new();
        while seen.len() < 20 {
            match next(&mut rx).await {
                WatchEvent::Changed { paths, .. } => seen.extend(paths),
                other => panic!("{other:?}"),
            }
        }
        // Reading a file produces nothing.
        let _ = std::fs::read(root.join("1.html")).unwrap();
        let quiet = tokio::time::timeout(Duration::from_millis(400), rx.recv()).await;
        assert!(quiet.is_err(), "{quiet:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_swapped_symlink_root_is_followed() {
        let dir = tempfile::tempdir().unwrap();
        let (r1, r2) = (dir.path().join("r1"), dir.path().join("r2"));
        std::fs::create_dir(&r1).unwrap();
        std::fs::create_dir(&r2).unwrap();
        let current = dir.path().join("current");
        std::os::unix::fs::symlink(&r1, &current).unwrap();
        let (mut w, mut rx) = TreeWatcher::start(&current, Duration::from_millis(50)).unwrap();
        // Swap atomically, as deploy tools do: a new link renamed over the old one.
        let tmp = dir.path().join("current.tmp");
        std::os::unix::fs::symlink(&r2, &tmp).unwrap();
        std::fs::rename(&tmp, &current).unwrap();
        loop {
            if let WatchEvent::RootMoved = next(&mut rx).await {
                break;
            }
        }
        assert!(w.retarget().unwrap());
        assert_eq!(w.target().path, std::fs::canonicalize(&r2).unwrap());
        std::fs::write(r2.join("new.html"), "n").unwrap();
        loop {
            if let WatchEvent::Changed { paths, .. } = next(&mut rx).await {
                assert!(paths.iter().any(|p| p.ends_with("new.html")), "{paths:?}");
                break;
            }
        }
        assert!(!w.retarget().unwrap());
    }
}
