//! What a check found that resolution can act on: the plan a [`super::report::CheckReport`]
//! carries to [`super::resolve`].

use crate::collections::FastMap;
use crate::index::IndexEntry;
use crate::source::scan::SourceFile;

/// The kind of an inconsistency.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Kind {
    Missing,
    Outdated,
    Orphaned,
    Corrupt,
}

/// One cache entry to delete.
#[derive(Clone, Debug)]
pub(crate) struct Deletion {
    pub kind: Kind,
    /// The template name, when the entry's record could be read.
    pub name: Option<String>,
    pub key: String,
}

/// What a resolution would act on, gathered by a check.
#[derive(Clone, Default)]
pub(crate) struct Plan {
    /// Templates to (re)write from their file.
    pub write: Vec<(Kind, SourceFile)>,
    /// Entries to delete.
    pub delete: Vec<Deletion>,
    /// Index entries before the check of the templates in `write`, for the write protocol.
    pub previous: FastMap<String, IndexEntry>,
    /// Index entries that disagree with verified cache content.
    pub index_fixups: Vec<(String, IndexEntry)>,
}

impl std::fmt::Debug for Plan {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Plan")
            .field("write", &self.write.len())
            .field("delete", &self.delete.len())
            .field("index_fixups", &self.index_fixups.len())
            .finish_non_exhaustive()
    }
}
