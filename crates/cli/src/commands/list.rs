//! `tcache list`: the template names in the cache's index.

use std::sync::Arc;

use template_cache::{Cache, CacheBackend, Namespace};

use crate::args::Cli;
use crate::{EXIT_OK, output};

/// Runs `tcache list`.
pub async fn run(
    cli: &Cli,
    backend: Arc<dyn CacheBackend>,
    ns: Namespace,
) -> template_cache::Result<u8> {
    let index = template_cache::index::load(&Cache::new(backend), &ns)
        .await?
        .unwrap_or_default();
    let mut names: Vec<&str> = index.entries.keys().collect();
    names.sort();
    for lost in &index.lost {
        tracing::warn!("{lost}");
    }
    if cli.json {
        output::print_json(
            &serde_json::json!({ "templates": names, "incomplete": !index.lost.is_empty() }),
        );
    } else {
        let mut text = String::with_capacity(names.iter().map(|n| n.len() + 1).sum());
        for n in names {
            text.push_str(&output::escaped(n));
            text.push('\n');
        }
        // A reader that stops early (`tcache list | head`) ends the output quietly.
        output::print(&text);
    }
    Ok(EXIT_OK)
}
