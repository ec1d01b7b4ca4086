//! The whole conformance suite, on both flavours of the backend.

#![allow(clippy::unwrap_used, clippy::expect_used)]

/// A local directory (`LocalFileSystem`, lease primitives under the directory lock). The
/// temporary directory is the guard: it lives until the test ends.
mod local_directory {
    template_cache_testkit::conformance_tests!(guarded {
        let dir = tempfile::tempdir().unwrap();
        let backend = template_cache_object_store::ObjectStoreBackend::local(dir.path()).unwrap();
        (dir, backend)
    });
}

/// `InMemory` under a prefix (lease primitives through conditional puts, as on S3, GCS, Azure).
mod in_memory {
    use std::sync::Arc;

    use template_cache_object_store::ObjectStoreBackend;
    use template_cache_object_store::object_store::{memory::InMemory, path::Path};

    template_cache_testkit::conformance_tests!(ObjectStoreBackend::new(
        Arc::new(InMemory::new()),
        Path::from("caches/templates"),
    ));
}
