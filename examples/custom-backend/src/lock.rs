//! The lock that makes conditional writes atomic in a local directory, where `LocalFileSystem`
//! has no conditional update (`PutMode::Update` is not implemented).
//!
//! One file, `<dir>/.tcache-lock`, locked exclusively with `flock(2)` (`LockFileEx` on Windows)
//! through [`std::fs::File::lock`] around every read–compare–write of the lease primitives. The
//! lock belongs to an open file, so it excludes other processes and other handles in this
//! process alike, and the kernel releases it when its holder exits or is killed: a crashed
//! holder never leaves the directory locked. A tokio mutex in front queues this handle's own
//! callers without tying up a blocking thread each.
//!
//! Advisory locks hold among processes that take them, which every handle of this crate does.
//! On a network file system they are as good as its lock support (NFSv4 implements them;
//! some FUSE file systems ignore them): use an object store there instead.

use std::fs::{File, OpenOptions};
use std::path::PathBuf;
use std::sync::Arc;

use template_cache_core::{Error, ErrorKind, Result};
use tokio::sync::{Mutex, OwnedMutexGuard};

/// The lock file of one directory.
#[derive(Debug)]
pub(crate) struct DirLock {
    path: PathBuf,
    local: Arc<Mutex<()>>,
}

/// Held while a conditional write runs; dropping it releases the lock.
#[derive(Debug)]
pub(crate) struct Held {
    // Field order is drop order: the file lock goes first, then the local queue moves on.
    _file: File,
    _local: OwnedMutexGuard<()>,
}

impl DirLock {
    pub(crate) fn new(path: PathBuf) -> Self {
        DirLock {
            path,
            local: Arc::new(Mutex::new(())),
        }
    }

    /// Waits for the lock.
    pub(crate) async fn lock(&self) -> Result<Held> {
        let local = Arc::clone(&self.local).lock_owned().await;
        let path = self.path.clone();
        let file = tokio::task::spawn_blocking(move || {
            let file = OpenOptions::new()
                .read(true)
                .write(true)
                .create(true)
                .truncate(false)
                .open(&path)
                .map_err(|e| Error::io(&path, e).context("opening the lock file"))?;
            file.lock()
                .map_err(|e| Error::io(&path, e).context("locking the lock file"))?;
            Ok::<_, Error>(file)
        })
        .await
        .map_err(|e| Error::new(ErrorKind::Unexpected, format!("lock task failed: {e}")))??;
        Ok(Held {
            _file: file,
            _local: local,
        })
    }
}
