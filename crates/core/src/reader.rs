//! Reading templates for applications: verified cache reads with optional, read-only
//! read-through to the template tree.
//!
//! A reader never writes to the cache. The warmer (and resolution) is the one writer of a
//! namespace: it writes through the mark–write–confirm index protocol under the namespace's write
//! lease. A read-through that wrote entries of its own would do so outside both, racing the
//! writer and leaving entries the index does not know. On a miss or a corrupt entry,
//! read-through serves the file instead; the cache is repaired by the next warm or `check --fix`.

use std::io::Read;
use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;

use crate::backend::{Cache, CacheBackend};
use crate::error::{Error, ErrorKind, Result};
use crate::format::key::{ContentHash, Namespace, validate_name};
use crate::format::record::Record;
use crate::source::scan::{Filter, Fingerprint, SourceConfig, SourceFile, open_confined, path_of};

/// Where a template returned by [`TemplateReader::get`] came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A verified cache entry.
    Cache,
    /// The source file, read after a miss or a corrupt entry (read-through). It was not written
    /// to the cache: readers never write.
    File,
}

/// A template as read by an application.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Template {
    /// The template name.
    pub name: String,
    /// Its content.
    pub content: Bytes,
    /// SHA-256 of the content.
    pub hash: ContentHash,
    /// Where it came from.
    pub origin: Origin,
}

/// Reads templates from the cache, verifying each against its hash, and optionally falls back
/// (read-only) to the template tree on a miss or a corrupt entry.
///
/// A reader never writes to the cache, with or without read-through (see the module docs).
#[derive(Clone, Debug)]
pub struct TemplateReader {
    cache: Cache,
    namespace: Namespace,
    fallback: Option<Arc<Fallback>>,
}

/// The template tree read-through falls back to, with the rules that select its templates.
#[derive(Debug)]
struct Fallback {
    root: PathBuf,
    filter: Filter,
    max_bytes: u64,
}

impl TemplateReader {
    /// A reader of `namespace` without fallback.
    pub fn new(backend: Arc<dyn CacheBackend>, namespace: Namespace) -> Self {
        TemplateReader {
            cache: Cache::new(backend),
            namespace,
            fallback: None,
        }
    }

    /// Falls back to the template tree of `source` on a miss or a corrupt entry, with the same
    /// rules the warmer applies, so it serves exactly the templates a warm would cache:
    ///
    /// - only names `source.include` / `source.exclude` select are templates: for any other
    ///   name [`get`](Self::get) returns `None` without reading the cache or the file;
    /// - a file is read through its real path under `source.root`: a name that leads out of the
    ///   root (through `..` or a symlink) is refused with [`ErrorKind::PermissionDenied`], a name
    ///   under a symlinked directory is not a template (the scan does not descend into them),
    ///   and a FIFO, socket or device is an error, never a blocking open;
    /// - at most `source.max_template_bytes + 1` bytes are read; a larger file is an
    ///   [`ErrorKind::ValueTooLarge`] error naming the file and the limit.
    ///
    /// Read-through is read-only: the file's content is served (as [`Origin::File`]) and never
    /// written to the cache; the warmer is the one writer of a namespace. `source.checksum` and
    /// `source.state_path` are not used.
    ///
    /// Fails with [`ErrorKind::ConfigInvalid`] if a glob pattern is invalid.
    pub fn with_read_through(mut self, source: SourceConfig) -> Result<Self> {
        let filter = Filter::new(&source)?;
        self.fallback = Some(Arc::new(Fallback {
            root: source.root,
            filter,
            max_bytes: source.max_template_bytes,
        }));
        Ok(self)
    }

    /// The template `name`, or `None` if it is neither cached nor (with read-through) a
    /// template file.
    ///
    /// Without read-through a corrupt entry is an [`ErrorKind::Corrupt`] error. With
    /// read-through it is logged and the file is served instead; nothing is written.
    pub async fn get(&self, name: &str) -> Result<Option<Template>> {
        validate_name(name)?;
        if self
            .fallback
            .as_ref()
            .is_some_and(|f| !f.filter.accepts(name))
        {
            return Ok(None);
        }
        let key = self.namespace.key_for(name);
        let cached = self.cache.get(&key).await?;
        let problem = match cached.as_ref().map(Record::decode) {
            Some(Ok(rec)) if rec.name == name => {
                metrics::counter!("tcache_reads_total", "origin" => "cache").increment(1);
                return Ok(Some(Template {
                    name: rec.name,
                    content: rec.content,
                    hash: rec.hash,
                    origin: Origin::Cache,
                }));
            }
            Some(Ok(rec)) => Some(Error::new(
                ErrorKind::Corrupt,
                format!(
                    "entry {key} holds the record of {:?}, not {name:?}",
                    rec.name
                ),
            )),
            Some(Err(e)) => Some(e.context(format!("entry of {name:?}"))),
            None => None,
        };
        let Some(fallback) = &self.fallback else {
            return match problem {
                Some(e) => Err(e),
                None => Ok(None),
            };
        };
        if let Some(e) = &problem {
            tracing::warn!(name, error = %e, "corrupt cache entry; serving the file");
        }
        let (fallback, name_owned) = (Arc::clone(fallback), name.to_owned());
        let read = tokio::task::spawn_blocking(move || fallback.read(&name_owned))
            .await
            .map_err(|e| Error::new(ErrorKind::Unexpected, format!("read task failed: {e}")))??;
        let Some(content) = read else {
            return Ok(None);
        };
        metrics::counter!("tcache_reads_total", "origin" => "file").increment(1);
        Ok(Some(Template {
            name: name.to_owned(),
            hash: ContentHash::of(&content),
            content,
            origin: Origin::File,
        }))
    }
}

impl Fallback {
    /// Reads template `name` (already accepted by the filter) from the tree; `None` if there is
    /// no such template file. Blocking.
    fn read(&self, name: &str) -> Result<Option<Bytes>> {
        let path = match path_of(&self.root, name) {
            Ok(p) => p,
            Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let root = std::fs::canonicalize(&self.root)
            .map_err(|e| Error::io(&self.root, e).context("template root"))?;
        // The scan reaches files through their real directories only (it does not descend into
        // symlinked directories), so a name through one is not a template of the tree.
        if let Some((dir, _)) = name.rsplit_once('/') {
            let real =
                std::fs::canonicalize(self.root.join(dir)).map_err(|e| Error::io(&path, e))?;
            if real != root.join(dir) {
                return Ok(None);
            }
        }
        let meta = std::fs::metadata(&path).map_err(|e| Error::io(&path, e))?;
        if meta.is_dir() {
            return Ok(None);
        }
        // Vetted as the scan vets a file: `open_confined` refuses a symlink swapped in since
        // `path_of` resolved it that leads out of the root, and never blocks on a FIFO.
        let file = SourceFile {
            name: name.to_owned(),
            root: Arc::from(self.root.as_path()),
            fingerprint: Fingerprint::of(&meta),
        };
        let (f, meta) = open_confined(&root, &file)?;
        let too_large = |size: u64| {
            Error::new(
                ErrorKind::ValueTooLarge,
                format!(
                    "{} is {size} bytes, over the maximum template size of {} bytes",
                    path.display(),
                    self.max_bytes
                ),
            )
        };
        if meta.len() > self.max_bytes {
            return Err(too_large(meta.len()));
        }
        // Bounded even if the file grows while it is read.
        let mut buf = Vec::with_capacity(meta.len() as usize);
        f.take(self.max_bytes.saturating_add(1))
            .read_to_end(&mut buf)
            .map_err(|e| Error::io(&path, e))?;
        if buf.len() as u64 > self.max_bytes {
            return Err(too_large(buf.len() as u64));
        }
        Ok(Some(Bytes::from(buf)))
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::Mutex;
    use std::time::Duration;

    use async_trait::async_trait;

    use super::*;
    use crate::backend::{Capabilities, Expiry, IndexLayout};

    /// An in-memory backend that counts every write, delete and lease operation.
    #[derive(Debug, Default)]
    struct Mem {
        map: Mutex<std::collections::HashMap<String, Bytes>>,
        writes: Mutex<usize>,
    }

    #[async_trait]
    impl CacheBackend for Mem {
        fn capabilities(&self) -> Capabilities {
            Capabilities::new()
        }
        fn index_layout(&self) -> IndexLayout {
            IndexLayout::Sharded
        }
        fn describe(&self) -> String {
            "mem".into()
        }
        async fn get_many(&self, keys: &[String]) -> Result<Vec<Option<Bytes>>> {
            let map = self.map.lock().unwrap();
            Ok(keys.iter().map(|k| map.get(k).cloned()).collect())
        }
        async fn set_many(&self, _: &[(String, Bytes)], _: Expiry) -> Result<()> {
            *self.writes.lock().unwrap() += 1;
            Ok(())
        }
        async fn delete_many(&self, _: &[String]) -> Result<()> {
            *self.writes.lock().unwrap() += 1;
            Ok(())
        }
        async fn put_if_absent(&self, _: &str, _: Bytes, _: Duration) -> Result<bool> {
            *self.writes.lock().unwrap() += 1;
            Ok(true)
        }
        async fn swap_if_equal(
            &self,
            _: &str,
            _: &[u8],
            _: Option<Bytes>,
            _: Duration,
        ) -> Result<bool> {
            *self.writes.lock().unwrap() += 1;
            Ok(true)
        }
    }

    fn write(root: &Path, name: &str, content: &[u8]) {
        let p = root.join(name);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(p, content).unwrap();
    }

    fn reader(
        root: &Path,
        configure: impl FnOnce(&mut SourceConfig),
    ) -> (Arc<Mem>, TemplateReader) {
        let mem = Arc::new(Mem::default());
        let mut source = SourceConfig::new(root);
        configure(&mut source);
        let r = TemplateReader::new(mem.clone(), Namespace::default())
            .with_read_through(source)
            .unwrap();
        (mem, r)
    }

    #[tokio::test]
    async fn serves_files_on_a_miss_and_a_corrupt_entry_and_writes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "a/b.html", b"hello");
        let (mem, r) = reader(dir.path(), |_| {});
        let t = r.get("a/b.html").await.unwrap().unwrap();
        assert_eq!(t.origin, Origin::File);
        assert_eq!(&t.content[..], b"hello");
        assert_eq!(t.hash, ContentHash::of(b"hello"));
        mem.map.lock().unwrap().insert(
            Namespace::default().key_for("a/b.html"),
            Bytes::from_static(b"garbage"),
        );
        let t = r.get("a/b.html").await.unwrap().unwrap();
        assert_eq!((t.origin, &t.content[..]), (Origin::File, &b"hello"[..]));
        assert!(r.get("a/missing.html").await.unwrap().is_none());
        assert!(r.get("a").await.unwrap().is_none(), "a directory");
        assert!(r.get("../etc/passwd").await.is_err());
        assert_eq!(*mem.writes.lock().unwrap(), 0, "a reader never writes");
        // A valid entry is served from the cache.
        let rec = Record::new("a/b.html", Bytes::from_static(b"cached"), 0, 0);
        mem.map.lock().unwrap().insert(
            Namespace::default().key_for("a/b.html"),
            rec.encode().unwrap(),
        );
        let t = r.get("a/b.html").await.unwrap().unwrap();
        assert_eq!((t.origin, &t.content[..]), (Origin::Cache, &b"cached"[..]));
        assert_eq!(*mem.writes.lock().unwrap(), 0);
    }

    #[tokio::test]
    async fn excluded_and_not_included_names_are_not_served() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "pages/a.html", b"a");
        write(dir.path(), "pages/a.txt", b"t");
        write(dir.path(), "drafts/d.html", b"d");
        let (mem, r) = reader(dir.path(), |s| {
            s.include = vec!["**/*.html".into()];
            s.exclude = vec!["drafts/**".into()];
        });
        assert!(r.get("pages/a.html").await.unwrap().is_some());
        assert!(r.get("pages/a.txt").await.unwrap().is_none());
        assert!(r.get("drafts/d.html").await.unwrap().is_none());
        // Not even from the cache: an excluded name is not a template.
        let rec = Record::new("drafts/d.html", Bytes::from_static(b"d"), 0, 0);
        mem.map.lock().unwrap().insert(
            Namespace::default().key_for("drafts/d.html"),
            rec.encode().unwrap(),
        );
        assert!(r.get("drafts/d.html").await.unwrap().is_none());
        assert_eq!(*mem.writes.lock().unwrap(), 0);
        // A bad pattern is a configuration error.
        let mut bad = SourceConfig::new(dir.path());
        bad.exclude = vec!["a[".into()];
        let e = TemplateReader::new(mem, Namespace::default())
            .with_read_through(bad)
            .unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ConfigInvalid);
    }

    #[tokio::test]
    async fn oversize_files_are_refused_naming_the_file_and_the_limit() {
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "ok.html", &[b'x'; 100]);
        write(dir.path(), "big.html", &[b'x'; 101]);
        let (mem, r) = reader(dir.path(), |s| s.max_template_bytes = 100);
        assert_eq!(r.get("ok.html").await.unwrap().unwrap().content.len(), 100);
        let e = r.get("big.html").await.unwrap_err();
        assert_eq!(e.kind(), ErrorKind::ValueTooLarge, "{e}");
        let msg = e.to_string();
        assert!(
            msg.contains("big.html") && msg.contains("100 bytes"),
            "{msg}"
        );
        assert_eq!(*mem.writes.lock().unwrap(), 0);
    }

    #[cfg(unix)]
    #[tokio::test]
    async fn symlinks_out_of_the_root_and_fifos_are_refused() {
        let outside = tempfile::tempdir().unwrap();
        write(outside.path(), "secret.txt", b"secret");
        write(outside.path(), "dir/x.html", b"x");
        let dir = tempfile::tempdir().unwrap();
        write(dir.path(), "real/ok.html", b"ok");
        let link = |target: &Path, name: &str| {
            std::os::unix::fs::symlink(target, dir.path().join(name)).unwrap()
        };
        link(&outside.path().join("secret.txt"), "leak.html");
        link(outside.path(), "outdir");
        link(&dir.path().join("real/ok.html"), "alias.html");
        link(&dir.path().join("real"), "linkdir");
        let (mem, r) = reader(dir.path(), |_| {});
        for name in ["leak.html", "outdir/secret.txt", "outdir/dir/x.html"] {
            let e = r.get(name).await.unwrap_err();
            assert_eq!(e.kind(), ErrorKind::PermissionDenied, "{name}: {e}");
            assert!(e.to_string().contains("out of the template root"), "{e}");
        }
        // A file symlink inside the root is followed, as the scan follows it.
        let t = r.get("alias.html").await.unwrap().unwrap();
        assert_eq!(&t.content[..], b"ok");
        // The scan does not descend into symlinked directories: not a template.
        assert!(r.get("linkdir/ok.html").await.unwrap().is_none());
        // A FIFO is an error, never a blocking open.
        let status = std::process::Command::new("mkfifo")
            .arg(dir.path().join("pipe.html"))
            .status()
            .unwrap();
        assert!(status.success());
        let e = r.get("pipe.html").await.unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
        assert_eq!(*mem.writes.lock().unwrap(), 0);
    }
}
