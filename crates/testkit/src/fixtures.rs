//! Fixtures: fresh namespaces, template trees, engine settings, cleanup.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use template_cache_core::{
    Cache, CacheBackend, EngineConfig, Namespace, RetryPolicy, SourceConfig, index,
};

/// A fresh namespace that no other test uses.
pub fn fresh_namespace() -> Namespace {
    match Namespace::new(format!("tk{:016x}", fastrand::u64(..))) {
        Ok(ns) => ns,
        Err(e) => panic!("generated namespace is invalid: {e}"),
    }
}

/// Writes `content` to `root/name`, creating directories.
pub fn write(root: &Path, name: &str, content: &str) {
    let p = root.join(name);
    if let Some(dir) = p.parent() {
        std::fs::create_dir_all(dir).expect("create dir");
    }
    std::fs::write(p, content).expect("write template");
}

/// A small template tree: `count` templates under a few directories.
pub fn sample_tree(root: &Path, count: usize) {
    for i in 0..count {
        let dir = ["pages", "partials", "emails", "admin"][i % 4];
        write(
            root,
            &format!("{dir}/t{i:03}.html"),
            &format!(
                "<h1>{{{{ title }}}}</h1>\n<p>template {i}</p>\n{}",
                "x".repeat(i * 13 % 500)
            ),
        );
    }
}

/// `count` templates named `t0.html`, `t1.html`, ... directly under `root`.
pub fn numbered_tree(root: &Path, count: usize) {
    for i in 0..count {
        let name = format!("t{i}.html");
        write(root, &name, &format!("content of {name}"));
    }
}

/// Engine settings for tests: small batches (to exercise batching), fast retries.
pub fn test_config(root: &Path, ns: &Namespace) -> EngineConfig {
    let mut cfg = EngineConfig::new(SourceConfig::new(root));
    cfg.namespace = ns.clone();
    cfg.throttle.batch_max_templates = 7;
    cfg.retry = RetryPolicy {
        max_attempts: 3,
        initial_backoff: Duration::from_millis(5),
        max_backoff: Duration::from_millis(20),
    };
    cfg
}

/// Removes a test namespace's keys (all known ones; listing where supported).
pub async fn cleanup(b: &Arc<dyn CacheBackend>, ns: &Namespace) {
    let b = Cache::new(Arc::clone(b));
    let mut keys = b.list_keys(&ns.prefix()).await.unwrap_or_default();
    if let Ok(Some(idx)) = index::load(&b, ns).await {
        keys.extend(idx.entries.keys().map(|n| ns.key_for(n)));
    }
    keys.push(ns.index_root_key());
    let _ = b.delete_many(&keys).await;
}
