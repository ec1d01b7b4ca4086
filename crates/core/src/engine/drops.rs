//! The server's drop stamp at the last verified warm ([`crate::ServerStats::drop_stamp`]), kept
//! in a small file beside the fingerprint state. A warm that finds the server's stamp unchanged
//! knows that nothing vanished on its own since a warm confirmed every indexed entry (and what
//! was written since went in after that), so it skips the existence check: at a million
//! templates, a million `EXISTS` the server would answer one by one.
//!
//! A key deleted by hand changes no stamp: a check (which always confirms existence) finds it.

use std::path::{Path, PathBuf};

use crate::format::key::Namespace;

/// Where the drop stamp of one backend and namespace is kept, if there is a state directory.
#[derive(Clone, Debug)]
pub(crate) struct DropStamps {
    path: Option<PathBuf>,
}

impl DropStamps {
    /// The stamp file of `backend` (its redacted description) and `namespace`, beside the
    /// fingerprint state at `state_path`; none without a state path.
    pub fn new(state_path: Option<&Path>, backend: &str, namespace: &Namespace) -> Self {
        let path = state_path.map(|p| {
            let id = xxhash_rust::xxh3::xxh3_64(format!("{backend}\0{namespace}").as_bytes());
            let mut name = p.file_name().unwrap_or_default().to_owned();
            name.push(format!(".drops-{id:016x}"));
            p.with_file_name(name)
        });
        DropStamps { path }
    }

    /// Whether `stamp` is the one recorded by the last verified warm.
    pub fn matches(&self, stamp: &str) -> bool {
        self.path
            .as_ref()
            .and_then(|p| std::fs::read_to_string(p).ok())
            .is_some_and(|saved| saved == stamp)
    }

    /// Records `stamp`, read before a warm's existence check (or found unchanged), once that
    /// warm has completed. A failure only costs the next warm its shortcut.
    pub fn save(&self, stamp: &str) {
        let Some(path) = &self.path else { return };
        if self.matches(stamp) {
            return;
        }
        let tmp = path.with_extension(format!("tmp{}", std::process::id()));
        let written = std::fs::write(&tmp, stamp).and_then(|()| std::fs::rename(&tmp, path));
        if let Err(e) = written {
            let _ = std::fs::remove_file(&tmp);
            tracing::debug!(path = %path.display(), error = %e, "cannot save the drop stamp; the next warm checks existence");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stamps_are_kept_per_backend_and_namespace() {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("fingerprints-abc");
        let ns = Namespace::default();
        let a = DropStamps::new(Some(&state), "redis://127.0.0.1:1/0", &ns);
        let b = DropStamps::new(Some(&state), "redis://127.0.0.1:2/0", &ns);
        assert!(!a.matches("run/0/0"), "nothing saved yet");
        a.save("run/0/0");
        assert!(a.matches("run/0/0") && !a.matches("run/1/0"));
        assert!(!b.matches("run/0/0"), "another server's stamp");
        let none = DropStamps::new(None, "redis://127.0.0.1:1/0", &ns);
        none.save("run/0/0");
        assert!(!none.matches("run/0/0"), "no state directory, no shortcut");
    }
}
