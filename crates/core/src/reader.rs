//! Reading templates for applications: verified cache reads with optional read-through.

use std::path::PathBuf;
use std::sync::Arc;

use bytes::Bytes;

use crate::backend::{Cache, CacheBackend};
use crate::error::{Error, ErrorKind, Result};
use crate::format::key::{ContentHash, Namespace, validate_name};
use crate::format::record::Record;
use crate::source::scan::{Fingerprint, path_of};

/// Where a template returned by [`TemplateReader::get`] came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Origin {
    /// A verified cache entry.
    Cache,
    /// The source file (after a miss or a corrupt entry); it was written back to the cache.
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

/// Reads templates from the cache, verifying each against its hash, and optionally falls back to
/// the template tree on a miss or a corrupt entry.
#[derive(Clone, Debug)]
pub struct TemplateReader {
    cache: Cache,
    namespace: Namespace,
    fallback: Option<(PathBuf, u64)>,
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

    /// Falls back to the files under `root` (at most `max_bytes` each) on a miss or corrupt
    /// entry, writing the file's content back to the cache.
    pub fn with_read_through(mut self, root: impl Into<PathBuf>, max_bytes: u64) -> Self {
        self.fallback = Some((root.into(), max_bytes));
        self
    }

    /// The template `name`, or `None` if it is neither cached nor (with read-through) a file.
    ///
    /// Without read-through a corrupt entry is an [`ErrorKind::Corrupt`] error.
    pub async fn get(&self, name: &str) -> Result<Option<Template>> {
        validate_name(name)?;
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
        let Some((root, max_bytes)) = &self.fallback else {
            return match problem {
                Some(e) => Err(e),
                None => Ok(None),
            };
        };
        if let Some(e) = &problem {
            tracing::warn!(name, error = %e, "corrupt cache entry; reading the file");
        }
        let (root, max_bytes, name_owned) = (root.clone(), *max_bytes, name.to_owned());
        let read = tokio::task::spawn_blocking(move || read_file(&root, &name_owned, max_bytes))
            .await
            .map_err(|e| Error::new(ErrorKind::Unexpected, format!("read task failed: {e}")))??;
        let Some((content, mtime_ns)) = read else {
            return Ok(None);
        };
        let record = Record::new(name, content, mtime_ns, crate::time::now_ns());
        let encoded = record.encode()?;
        self.cache
            .capabilities()
            .check_value_len(&key, encoded.len())?;
        if let Err(e) = self.cache.set(&key, encoded).await {
            tracing::warn!(name, error = %e, "read-through could not write the template back");
        }
        metrics::counter!("tcache_reads_total", "origin" => "file").increment(1);
        Ok(Some(Template {
            name: record.name,
            content: record.content,
            hash: record.hash,
            origin: Origin::File,
        }))
    }
}

fn read_file(root: &std::path::Path, name: &str, max_bytes: u64) -> Result<Option<(Bytes, i64)>> {
    let path = match path_of(root, name) {
        Ok(p) => p,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e),
    };
    let meta = std::fs::metadata(&path).map_err(|e| Error::io(&path, e))?;
    if !meta.is_file() {
        return Ok(None);
    }
    if meta.len() > max_bytes {
        return Err(Error::new(
            ErrorKind::ValueTooLarge,
            format!(
                "{} is {} bytes, over the maximum template size of {max_bytes} bytes",
                path.display(),
                meta.len()
            ),
        ));
    }
    let content = std::fs::read(&path).map_err(|e| Error::io(&path, e))?;
    Ok(Some((
        Bytes::from(content),
        Fingerprint::of(&meta).mtime_ns,
    )))
}
