//! Walking the template tree: names, filters, symlink confinement and file fingerprints.

use std::path::{Component, Path, PathBuf};
use std::sync::Arc;

use globset::{Glob, GlobSet, GlobSetBuilder};

pub use super::files::{FileList, FileRef, Fingerprint, SourceFile};
use super::files::{MAX_NAME, name_in};
use crate::error::{Error, ErrorKind, Result};

/// The default maximum template size: 1 MiB.
pub const DEFAULT_MAX_TEMPLATE_BYTES: u64 = 1024 * 1024;

/// Where templates come from and which files count.
#[derive(Clone, Debug)]
pub struct SourceConfig {
    /// The template root directory.
    pub root: PathBuf,
    /// Glob patterns (on template names) a file must match; empty means every file.
    pub include: Vec<String>,
    /// Glob patterns (on template names) that exclude a file.
    pub exclude: Vec<String>,
    /// Files larger than this are per-template errors.
    pub max_template_bytes: u64,
    /// Re-hash every file instead of trusting unchanged fingerprints.
    pub checksum: bool,
    /// Where fingerprints persist between runs (a local file); `None` keeps them in memory only.
    pub state_path: Option<PathBuf>,
}

impl SourceConfig {
    /// A configuration for `root` with every default.
    pub fn new(root: impl Into<PathBuf>) -> Self {
        SourceConfig {
            root: root.into(),
            include: Vec::new(),
            exclude: Vec::new(),
            max_template_bytes: DEFAULT_MAX_TEMPLATE_BYTES,
            checksum: false,
            state_path: None,
        }
    }
}

/// A file that could not be taken as a template, with the reason.
#[derive(Clone, Debug)]
pub struct ScanFailure {
    /// The template name (lossy if the path is not UTF-8).
    pub name: String,
    /// Why it was refused.
    pub error: Error,
}

/// The result of walking the tree: templates sorted by name, and per-file failures.
#[derive(Debug, Default)]
pub struct Scan {
    /// Files accepted as templates.
    pub files: FileList,
    /// Files refused, each with its error.
    pub failures: Vec<ScanFailure>,
}

impl Scan {
    /// The parts of the tree this scan could not see: every failed path, as a prefix. A template
    /// under one of them may exist, so it must never be taken as deleted.
    pub fn unknown(&self) -> UnknownPrefixes {
        UnknownPrefixes(self.failures.iter().map(|f| f.name.clone()).collect())
    }
}

/// Names (files or directories) a scan could not see; see [`Scan::unknown`].
#[derive(Clone, Debug, Default)]
pub struct UnknownPrefixes(std::collections::HashSet<String>);

impl UnknownPrefixes {
    /// Whether `name` is, or lies under, an unknown path.
    pub fn covers(&self, name: &str) -> bool {
        if self.0.is_empty() {
            return false;
        }
        name.match_indices('/')
            .map(|(i, _)| &name[..i])
            .chain(std::iter::once(name))
            .any(|prefix| self.0.contains(prefix))
    }

    /// Whether the scan saw everything.
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Compiled include/exclude patterns.
#[derive(Clone, Debug)]
pub struct Filter {
    include: Option<GlobSet>,
    exclude: GlobSet,
}

/// Compiles glob patterns, naming the setting and pattern in any error.
pub fn compile_globs(setting: &str, patterns: &[String]) -> Result<GlobSet> {
    let mut b = GlobSetBuilder::new();
    for p in patterns {
        let glob = Glob::new(p).map_err(|e| {
            Error::new(
                ErrorKind::ConfigInvalid,
                format!("{setting} pattern {p:?} is invalid: {e}"),
            )
        })?;
        b.add(glob);
    }
    b.build()
        .map_err(|e| Error::new(ErrorKind::ConfigInvalid, format!("{setting} patterns: {e}")))
}

impl Filter {
    /// Compiles the include and exclude patterns of `config`.
    pub fn new(config: &SourceConfig) -> Result<Self> {
        let include = if config.include.is_empty() {
            None
        } else {
            Some(compile_globs("include", &config.include)?)
        };
        Ok(Filter {
            include,
            exclude: compile_globs("exclude", &config.exclude)?,
        })
    }

    /// Whether template `name` is selected.
    pub fn accepts(&self, name: &str) -> bool {
        self.include.as_ref().is_none_or(|g| g.is_match(name)) && !self.exclude.is_match(name)
    }
}

/// Walks `config.root` and returns every selected template, sorted by name.
///
/// A missing or unreadable root is an error. Anything wrong with one file (unreadable, a
/// non-UTF-8 name, too large, a symlink leading out of the root) is a [`ScanFailure`] for that
/// file alone. Symlinks to files inside the root are followed; symlinks to directories are not
/// descended into (their files are reached through their real path).
pub fn scan(config: &SourceConfig, filter: &Filter) -> Result<Scan> {
    scan_counting(config, filter, &|_| {})
}

/// How many files the walk finds between two calls of the `found` callback of
/// [`scan_counting`].
const FOUND_STEP: usize = 256;

/// [`scan`], calling `found` with the number of files the walk found since the last call, as it
/// goes (every few hundred files, and once at the end of the walk): progress for a phase whose
/// total is unknown.
pub fn scan_counting(config: &SourceConfig, filter: &Filter, found: &dyn Fn(u64)) -> Result<Scan> {
    let root = std::fs::canonicalize(&config.root)
        .map_err(|e| Error::io(&config.root, e).context("template root"))?;
    if !root.is_dir() {
        return Err(Error::new(
            ErrorKind::ConfigInvalid,
            format!("template root {} is not a directory", config.root.display()),
        ));
    }
    let mut out = Scan::default();
    // Candidates go straight into the list of files (their fingerprints filled in by the stat
    // below, then the ones that fail or are not templates removed); the path of a file is
    // `root.join(name)`, built only where it is stat'ed.
    let mut files = FileList::new(Arc::from(root.as_path()));
    let mut symlinks: Vec<bool> = Vec::new();
    // Siblings in name order. Their paths share everything up to the name, so comparing whole
    // paths as bytes orders them as their names (`sort_by_file_name` re-parses the path for
    // its name at every comparison, a tenth of a large walk).
    let walker = walkdir::WalkDir::new(&root)
        .follow_links(false)
        .sort_by(|a, b| a.path().as_os_str().cmp(b.path().as_os_str()));
    for entry in walker {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => {
                let name = e
                    .path()
                    .map(|p| lossy_name(&root, p))
                    .unwrap_or_else(|| "<unknown>".into());
                let err = match e.into_io_error() {
                    Some(io) => Error::io(Path::new(&name), io),
                    None => Error::new(ErrorKind::Io, format!("{name}: filesystem loop")),
                };
                if name.is_empty() {
                    return Err(err.context("template root"));
                }
                out.failures.push(ScanFailure { name, error: err });
                continue;
            }
        };
        if entry.depth() == 0 || entry.file_type().is_dir() {
            continue;
        }
        let symlink = entry.file_type().is_symlink();
        let name = match template_name(&root, entry.path()) {
            Ok(n) => n,
            Err(error) => {
                let name = lossy_name(&root, entry.path());
                if filter.accepts(&name) {
                    out.failures.push(ScanFailure { name, error });
                }
                continue;
            }
        };
        if !filter.accepts(&name) {
            continue;
        }
        if !files.push(&name, UNSTATED) {
            let error = Error::new(
                ErrorKind::Io,
                format!("{name}: the path is over {MAX_NAME} bytes long"),
            );
            out.failures.push(ScanFailure { name, error });
            continue;
        }
        symlinks.push(symlink);
        if files.len().is_multiple_of(FOUND_STEP) {
            found(FOUND_STEP as u64);
        }
    }
    found((files.len() % FOUND_STEP) as u64);
    // Stat the candidates on every core: on large trees the stat calls dominate the walk. Each
    // thread fills in the fingerprints of its part and returns the other outcomes (not a
    // template, or a failure) by index; a thread that panicked returns `None`.
    let threads = std::thread::available_parallelism()
        .map_or(1, |n| n.get())
        .clamp(1, 8);
    let chunk = files.len().div_ceil(threads).max(1024);
    type Outcomes = Vec<(usize, Result<Option<Fingerprint>>)>;
    let (names, listed) = files.parts_mut();
    let checked: Vec<Option<Outcomes>> = std::thread::scope(|scope| {
        let handles: Vec<_> = listed
            .chunks_mut(chunk)
            .zip(symlinks.chunks(chunk))
            .enumerate()
            .map(|(c, (part, links))| {
                let root = &root;
                scope.spawn(move || {
                    let mut outcomes = Vec::new();
                    let mut dirs = DirStat::new(root);
                    for (i, (file, symlink)) in part.iter_mut().zip(links).enumerate() {
                        let name = name_in(names, file);
                        if !*symlink && let Some(fp) = dirs.regular_file(name, config) {
                            file.fingerprint = fp;
                            continue;
                        }
                        let path = root.join(name);
                        match accept_file(root, &path, *symlink, config) {
                            Ok(Some(fingerprint)) => file.fingerprint = fingerprint,
                            other => outcomes.push((c * chunk + i, other)),
                        }
                    }
                    outcomes
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().ok()).collect()
    });
    drop(symlinks);
    let mut outcomes: Outcomes = Vec::new();
    let mut panicked: Vec<std::ops::Range<usize>> = Vec::new();
    for (c, r) in checked.into_iter().enumerate() {
        match r {
            Some(o) => outcomes.extend(o),
            None => {
                out.failures.push(ScanFailure {
                    name: "(scan)".into(),
                    error: Error::new(ErrorKind::Unexpected, "a scan thread panicked"),
                });
                panicked.push(c * chunk..((c + 1) * chunk).min(files.len()));
            }
        }
    }
    if !outcomes.is_empty() || !panicked.is_empty() {
        let mut outcomes = outcomes.into_iter().peekable();
        files.retain(|at, file| {
            // Files whose stat never reported (a scan thread that panicked) are failures of
            // their own, never silently absent: an absent file would look deleted.
            if panicked.iter().any(|r| r.contains(&at)) {
                let name = file.name.to_owned();
                out.failures.push(ScanFailure {
                    error: Error::new(
                        ErrorKind::Unexpected,
                        format!(
                            "{}: the scan of this file did not complete",
                            root.join(&name).display()
                        ),
                    ),
                    name,
                });
                return false;
            }
            match outcomes.next_if(|(j, _)| *j == at) {
                None => true,
                Some((_, Ok(_))) => false,
                Some((_, Err(error))) => {
                    out.failures.push(ScanFailure {
                        name: file.name.to_owned(),
                        error,
                    });
                    false
                }
            }
        });
    }
    files.shrink_to_fit();
    out.files = files;
    out.failures.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

/// The fingerprint of a file not stat'ed yet (never one a scan returns).
const UNSTATED: Fingerprint = Fingerprint {
    dev: 0,
    ino: 0,
    size: 0,
    mtime_ns: 0,
    ctime_ns: 0,
};

fn not_regular(path: &Path) -> Error {
    Error::new(
        ErrorKind::Io,
        format!(
            "{} is not a regular file (a FIFO, socket or device); skipped",
            path.display()
        ),
    )
}

/// Opens scanned template `file` for reading, safely against a tree that changes underneath:
/// a final symlink is only followed if it still leads inside `root` (canonical), FIFOs never
/// block the open, and the opened file must be a regular file that is the one the scan vetted
/// (same device and inode) or, if it was replaced since, one that lies inside `root` now.
pub fn open_confined(root: &Path, file: &SourceFile) -> Result<(std::fs::File, std::fs::Metadata)> {
    let path = &file.path();
    let opened = match open_no_follow(path) {
        Err(e) if is_symlink_refusal(&e) => {
            let target = std::fs::canonicalize(path).map_err(|e| Error::io(path, e))?;
            if !target.starts_with(root) {
                return Err(leads_out(path));
            }
            open_no_follow(&target)
        }
        other => other,
    };
    let f = opened.map_err(|e| Error::io(path, e))?;
    let meta = f.metadata().map_err(|e| Error::io(path, e))?;
    if !meta.is_file() {
        return Err(not_regular(path));
    }
    let now = Fingerprint::of(&meta);
    if (now.dev, now.ino) != (file.fingerprint.dev, file.fingerprint.ino) {
        // Replaced since the scan (an editor's atomic save, a deploy): accept it only if the
        // path leads inside the root to the very file we opened.
        let target = std::fs::canonicalize(path).map_err(|e| Error::io(path, e))?;
        let there = std::fs::metadata(&target).map(|m| Fingerprint::of(&m));
        if !target.starts_with(root)
            || there.map(|t| (t.dev, t.ino)).ok() != Some((now.dev, now.ino))
        {
            return Err(leads_out(path));
        }
    }
    Ok((f, meta))
}

fn leads_out(path: &Path) -> Error {
    Error::new(
        ErrorKind::PermissionDenied,
        format!("{} leads out of the template root", path.display()),
    )
}

fn open_no_follow(path: &Path) -> std::io::Result<std::fs::File> {
    let mut opts = std::fs::OpenOptions::new();
    opts.read(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK);
    }
    opts.open(path)
}

fn is_symlink_refusal(e: &std::io::Error) -> bool {
    #[cfg(unix)]
    {
        e.raw_os_error() == Some(libc::ELOOP)
    }
    #[cfg(not(unix))]
    {
        let _ = e;
        false
    }
}

/// Checks one walked path; `Ok(None)` means "not a template" (a directory symlink, a socket...).
fn accept_file(
    root: &Path,
    path: &Path,
    symlink: bool,
    config: &SourceConfig,
) -> Result<Option<Fingerprint>> {
    if symlink {
        let target = std::fs::canonicalize(path).map_err(|e| Error::io(path, e))?;
        if !target.starts_with(root) {
            return Err(Error::new(
                ErrorKind::PermissionDenied,
                format!(
                    "{} is a symlink leading out of the template root",
                    path.display()
                ),
            ));
        }
    }
    let meta = std::fs::metadata(path).map_err(|e| Error::io(path, e))?;
    if meta.is_dir() {
        return Ok(None); // a symlink to a directory: its files are reached by their real path
    }
    if !meta.is_file() {
        return Err(not_regular(path));
    }
    if meta.len() > config.max_template_bytes {
        return Err(Error::new(
            ErrorKind::ValueTooLarge,
            format!(
                "{} is {} bytes, over the maximum template size of {} bytes",
                path.display(),
                meta.len(),
                config.max_template_bytes
            ),
        ));
    }
    Ok(Some(Fingerprint::of(&meta)))
}

/// Stats files relative to their open parent directory, as `find` does: a path lookup per
/// directory instead of one per file (the lookups dominate a large walk). The files of one
/// directory come one after another in a scan, so one directory is open at a time.
struct DirStat<'a> {
    root: &'a Path,
    #[cfg(unix)]
    open: Option<(String, std::os::fd::OwnedFd)>,
}

impl<'a> DirStat<'a> {
    fn new(root: &'a Path) -> Self {
        DirStat {
            root,
            #[cfg(unix)]
            open: None,
        }
    }

    /// The fingerprint of `name` if it is a regular file within the size limit; `None` for
    /// anything else (a directory, a special file, too large, an error), which
    /// [`accept_file`] then examines by path and reports.
    #[cfg(unix)]
    // The stat fields' integer types differ between platforms.
    #[allow(clippy::unnecessary_cast)]
    fn regular_file(&mut self, name: &str, config: &SourceConfig) -> Option<Fingerprint> {
        use rustix::fs::{AtFlags, FileType, Mode, OFlags};
        let (parent, base) = name.rsplit_once('/').unwrap_or(("", name));
        if self.open.as_ref().is_none_or(|(p, _)| p != parent) {
            self.open = None;
            let dir = rustix::fs::open(
                self.root.join(parent),
                OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .ok()?;
            self.open = Some((parent.to_owned(), dir));
        }
        let (_, dir) = self.open.as_ref()?;
        let st = rustix::fs::statat(dir, base, AtFlags::empty()).ok()?;
        let size = st.st_size as u64;
        if FileType::from_raw_mode(st.st_mode as _) != FileType::RegularFile
            || size > config.max_template_bytes
        {
            return None;
        }
        let ns = |s: i64, n: i64| s.saturating_mul(1_000_000_000).saturating_add(n);
        Some(Fingerprint {
            dev: st.st_dev as u64,
            ino: st.st_ino as u64,
            size,
            mtime_ns: ns(st.st_mtime as i64, st.st_mtime_nsec as i64),
            ctime_ns: ns(st.st_ctime as i64, st.st_ctime_nsec as i64),
        })
    }

    #[cfg(not(unix))]
    fn regular_file(&mut self, _name: &str, _config: &SourceConfig) -> Option<Fingerprint> {
        let _ = self.root;
        None
    }
}

/// What a name reported changed (by a file watcher) turned out to be; see [`probe`].
#[derive(Debug)]
pub enum Probe {
    /// A template file, as a scan would have found it.
    File(SourceFile),
    /// Nothing is there any more (neither the file nor, possibly, its directory).
    Gone,
    /// A directory: only a full scan sees what it holds.
    Directory,
    /// Not a template: filtered out, a symlink to a directory, or reached through a symlinked
    /// directory (a scan reaches such files by their real path).
    Skipped,
    /// It could not be examined: it must not be taken as deleted.
    Failed(Error),
}

/// Examines one template name under `root` (canonical) as [`scan`] would have seen it.
pub fn probe(root: &Path, name: &str, config: &SourceConfig, filter: &Filter) -> Probe {
    if let Err(e) = crate::format::key::validate_name(name) {
        return Probe::Failed(e);
    }
    let path = root.join(name);
    let meta = match std::fs::symlink_metadata(&path) {
        Ok(m) => m,
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::NotADirectory
            ) =>
        {
            return Probe::Gone;
        }
        Err(e) => return Probe::Failed(Error::io(&path, e)),
    };
    if meta.is_dir() {
        return Probe::Directory;
    }
    if !filter.accepts(name) {
        return Probe::Skipped;
    }
    // Only files reached through real directories are templates under this name.
    if let Some(parent) = path.parent() {
        match std::fs::canonicalize(parent) {
            Ok(real) if real == parent => {}
            Ok(_) => return Probe::Skipped,
            Err(e) => return Probe::Failed(Error::io(parent, e)),
        }
    }
    match accept_file(root, &path, meta.file_type().is_symlink(), config) {
        Ok(Some(fingerprint)) => Probe::File(SourceFile {
            name: name.to_owned(),
            root: Arc::from(root),
            fingerprint,
        }),
        Ok(None) => Probe::Skipped,
        // As in a scan: a dangling symlink is a failure, never a deletion.
        Err(e) => Probe::Failed(e),
    }
}

/// The `/`-separated name of `path` under `root`, or an error if it is not valid UTF-8.
pub fn template_name(root: &Path, path: &Path) -> Result<String> {
    // A walked path is the root, '/', then the name itself: taken as is when it is a valid
    // name (the walk's hot path); anything else goes component by component below.
    #[cfg(unix)]
    {
        use std::os::unix::ffi::OsStrExt;
        let (root_bytes, path_bytes) = (root.as_os_str().as_bytes(), path.as_os_str().as_bytes());
        if let Some(rel) = path_bytes
            .strip_prefix(root_bytes)
            .and_then(|rest| rest.strip_prefix(b"/"))
            && let Ok(name) = std::str::from_utf8(rel)
            && crate::format::key::validate_name(name).is_ok()
        {
            return Ok(name.to_owned());
        }
    }
    let rel = path.strip_prefix(root).map_err(|_| {
        Error::new(
            ErrorKind::Io,
            format!("{} is not under the template root", path.display()),
        )
    })?;
    let mut parts = Vec::new();
    for c in rel.components() {
        match c {
            Component::Normal(s) => parts.push(s.to_str().ok_or_else(|| {
                Error::new(
                    ErrorKind::ConfigInvalid,
                    format!("{}: file name is not valid UTF-8", rel.to_string_lossy()),
                )
            })?),
            _ => {
                return Err(Error::new(
                    ErrorKind::ConfigInvalid,
                    format!("{}: unexpected path component", rel.display()),
                ));
            }
        }
    }
    let name = parts.join("/");
    crate::format::key::validate_name(&name)?;
    Ok(name)
}

fn lossy_name(root: &Path, path: &Path) -> String {
    path.strip_prefix(root)
        .unwrap_or(path)
        .to_string_lossy()
        .replace(std::path::MAIN_SEPARATOR, "/")
}

/// Resolves template `name` to a path under `root`, refusing names that would leave it.
pub fn path_of(root: &Path, name: &str) -> Result<PathBuf> {
    crate::format::key::validate_name(name)?;
    let path = root.join(name);
    let canon_root =
        std::fs::canonicalize(root).map_err(|e| Error::io(root, e).context("template root"))?;
    let canon = std::fs::canonicalize(&path).map_err(|e| Error::io(&path, e))?;
    if !canon.starts_with(&canon_root) {
        return Err(Error::new(
            ErrorKind::PermissionDenied,
            format!("{} leads out of the template root", path.display()),
        ));
    }
    Ok(path)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[cfg(unix)]
    #[test]
    fn stats_by_directory_match_stats_by_path() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for name in [
            "top.html",
            "a/one.html",
            "a/two.html",
            "b/c/deep.html",
            "big.html",
        ] {
            let p = root.join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            let times = if name == "big.html" { 10 } else { 3 };
            std::fs::write(p, name.repeat(times)).unwrap();
        }
        std::fs::create_dir(root.join("a/sub")).unwrap();
        let mut config = SourceConfig::new(root);
        config.max_template_bytes = 40;
        let mut dirs = DirStat::new(root);
        // Across directory changes, back and forth.
        for name in [
            "top.html",
            "a/one.html",
            "a/two.html",
            "b/c/deep.html",
            "top.html",
        ] {
            let by_path = Fingerprint::of(&std::fs::metadata(root.join(name)).unwrap());
            assert_eq!(dirs.regular_file(name, &config), Some(by_path), "{name}");
        }
        // Whatever is not a plain regular file under the limit is left to `accept_file`.
        for name in ["a/sub", "big.html", "a/missing.html", "nodir/x.html"] {
            assert_eq!(dirs.regular_file(name, &config), None, "{name}");
        }
    }

    #[test]
    fn template_names_are_the_path_under_the_root() {
        let root = Path::new("/srv/tpl");
        let name = |p: &str| template_name(root, Path::new(p));
        assert_eq!(name("/srv/tpl/a.html").unwrap(), "a.html");
        assert_eq!(name("/srv/tpl/emails/x/y.txt").unwrap(), "emails/x/y.txt");
        // Not as walked, but still the same name, component by component.
        assert_eq!(name("/srv/tpl//emails/./y.txt").unwrap(), "emails/y.txt");
        assert!(name("/srv/tpl").is_err(), "the root is no template");
        assert!(name("/srv/other/a.html").is_err());
        assert!(
            name("/srv/tplx/a.html").is_err(),
            "a sibling sharing the prefix"
        );
        assert!(name("/srv/tpl/a\\b.html").is_err());
        #[cfg(unix)]
        {
            use std::os::unix::ffi::OsStrExt;
            let bad = std::ffi::OsStr::from_bytes(b"/srv/tpl/\xff.html");
            let err = template_name(root, Path::new(bad)).unwrap_err();
            assert!(err.to_string().contains("not valid UTF-8"), "{err}");
        }
    }

    fn write(root: &Path, name: &str, content: &str) {
        let p = root.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    #[test]
    fn scans_names_sorted_with_filters() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "b.html", "b");
        write(dir.path(), "a/x.html", "x");
        write(dir.path(), "a/y.txt", "y");
        write(dir.path(), "drafts/z.html", "z");
        let mut cfg = SourceConfig::new(dir.path());
        cfg.include = vec!["**/*.html".into(), "*.html".into()];
        cfg.exclude = vec!["drafts/**".into()];
        let s = scan(&cfg, &Filter::new(&cfg).unwrap()).unwrap();
        let names: Vec<_> = s.files.iter().map(|f| f.name).collect();
        assert_eq!(names, ["a/x.html", "b.html"]);
        assert!(s.failures.is_empty());
    }

    #[test]
    fn missing_root_is_a_clear_error() {
        let cfg = SourceConfig::new("/definitely/not/here");
        let err = scan(&cfg, &Filter::new(&cfg).unwrap()).unwrap_err();
        assert_eq!(err.kind(), ErrorKind::NotFound);
        assert!(err.to_string().contains("/definitely/not/here"), "{err}");
    }

    #[test]
    fn bad_glob_names_the_setting() {
        let mut cfg = SourceConfig::new(".");
        cfg.exclude = vec!["a[".into()];
        let err = Filter::new(&cfg).unwrap_err();
        assert!(err.to_string().contains("exclude pattern \"a[\""), "{err}");
    }

    #[cfg(unix)]
    #[test]
    fn symlinks_out_of_the_root_fail_alone_and_inside_are_followed() {
        let outside = tempfile::tempdir().unwrap();
        write(outside.path(), "secret.txt", "s");
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "ok.html", "ok");
        std::os::unix::fs::symlink(
            outside.path().join("secret.txt"),
            dir.path().join("leak.html"),
        )
        .unwrap();
        std::os::unix::fs::symlink(dir.path().join("ok.html"), dir.path().join("alias.html"))
            .unwrap();
        std::os::unix::fs::symlink(outside.path(), dir.path().join("outdir")).unwrap();
        let cfg = SourceConfig::new(dir.path());
        let s = scan(&cfg, &Filter::new(&cfg).unwrap()).unwrap();
        let names: Vec<_> = s.files.iter().map(|f| f.name).collect();
        assert_eq!(names, ["alias.html", "ok.html"]);
        let failed: Vec<_> = s.failures.iter().map(|f| f.name.as_str()).collect();
        assert_eq!(failed, ["leak.html", "outdir"]);
        assert!(
            s.failures[0]
                .error
                .to_string()
                .contains("out of the template root")
        );
    }

    #[cfg(target_os = "linux")]
    #[test]
    fn non_utf8_names_and_large_files_fail_alone() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "ok.html", "ok");
        std::fs::write(
            dir.path()
                .join(std::ffi::OsStr::from_bytes(b"bad\xff.html")),
            "x",
        )
        .unwrap();
        std::fs::write(dir.path().join("big.html"), vec![b'x'; 2048]).unwrap();
        let mut cfg = SourceConfig::new(dir.path());
        cfg.max_template_bytes = 1024;
        let s = scan(&cfg, &Filter::new(&cfg).unwrap()).unwrap();
        assert_eq!(s.files.len(), 1);
        let mut kinds: Vec<_> = s.failures.iter().map(|f| f.error.kind()).collect();
        kinds.sort_by_key(|k| k.as_str());
        assert_eq!(kinds, [ErrorKind::ConfigInvalid, ErrorKind::ValueTooLarge]);
    }

    #[test]
    fn path_of_refuses_escapes() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a.html", "a");
        assert!(path_of(dir.path(), "a.html").is_ok());
        assert!(path_of(dir.path(), "../a.html").is_err());
    }

    #[test]
    fn unknown_prefixes_cover_their_subtrees_only() {
        let scan = Scan {
            files: FileList::default(),
            failures: vec![ScanFailure {
                name: "secret".into(),
                error: Error::new(ErrorKind::PermissionDenied, "secret: denied"),
            }],
        };
        let u = scan.unknown();
        assert!(u.covers("secret"));
        assert!(u.covers("secret/a.html"));
        assert!(u.covers("secret/deep/er/b.html"));
        assert!(!u.covers("secrets/a.html"));
        assert!(!u.covers("public/secret"));
        assert!(Scan::default().unknown().is_empty());
    }

    #[cfg(unix)]
    #[test]
    fn fifos_are_per_file_errors_and_opens_stay_inside_the_root() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path().join("root");
        std::fs::create_dir(&root).unwrap();
        let root = std::fs::canonicalize(&root).unwrap();
        write(&root, "a.html", "a");
        write(dir.path(), "outside.txt", "secret");
        let status = std::process::Command::new("mkfifo")
            .arg(root.join("pipe.html"))
            .status()
            .unwrap();
        assert!(status.success());
        let cfg = SourceConfig::new(&root);
        let scan = scan(&cfg, &Filter::new(&cfg).unwrap()).unwrap();
        assert_eq!(scan.files.len(), 1);
        assert_eq!(scan.failures.len(), 1);
        assert_eq!(scan.failures[0].name, "pipe.html");
        assert!(
            scan.failures[0]
                .error
                .to_string()
                .contains("not a regular file")
        );

        // Swapped for a symlink that leads out between scan and read: refused.
        let file = scan.files.at(0).to_owned();
        assert!(open_confined(&root, &file).is_ok());
        std::fs::remove_file(root.join("a.html")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("outside.txt"), root.join("a.html")).unwrap();
        let e = open_confined(&root, &file).unwrap_err();
        assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{e}");
        // Replaced by another regular file inside the root (an atomic save): accepted.
        std::fs::remove_file(root.join("a.html")).unwrap();
        write(&root, "a.html", "new");
        assert!(open_confined(&root, &file).is_ok());
        // A FIFO swapped in never blocks the open.
        std::fs::remove_file(root.join("a.html")).unwrap();
        std::process::Command::new("mkfifo")
            .arg(root.join("a.html"))
            .status()
            .unwrap();
        let e = open_confined(&root, &file).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
    }
}
