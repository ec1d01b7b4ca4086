//! `tcache get`: print a template's content, verified against its hash.

use std::sync::Arc;

use template_cache::{CacheBackend, ErrorKind, Namespace, TemplateReader};

use crate::args::Cli;
use crate::{EXIT_FOUND, EXIT_OK, output};

/// Runs `tcache get NAME`.
pub async fn run(
    cli: &Cli,
    backend: Arc<dyn CacheBackend>,
    ns: Namespace,
    name: &str,
) -> template_cache::Result<u8> {
    let reader = TemplateReader::new(backend, ns);
    match reader.get(name).await {
        Ok(Some(t)) => {
            if cli.json {
                output::print_json(&serde_json::json!({
                    "name": t.name,
                    "sha256": t.hash.to_hex(),
                    "size": t.content.len(),
                    "content": String::from_utf8_lossy(&t.content),
                }));
            } else {
                // A reader that stops early (`tcache get big.html | head`) is no error.
                output::print_bytes(&t.content);
            }
            Ok(EXIT_OK)
        }
        Ok(None) => {
            if cli.json {
                output::print_json(
                    &serde_json::json!({ "error": format!("template {name:?} is not in the cache"), "kind": "not found" }),
                );
            }
            output::eprint(&format!("tcache: template {name:?} is not in the cache"));
            Ok(EXIT_FOUND)
        }
        Err(e) if e.kind() == ErrorKind::Corrupt => {
            if cli.json {
                output::print_json(
                    &serde_json::json!({ "error": e.to_report_string(), "kind": "corrupt" }),
                );
            }
            output::eprint(&format!("tcache: {}", e.to_report_string()));
            Ok(EXIT_FOUND)
        }
        Err(e) => Err(e),
    }
}
