//! Warms the sample templates into an in-process moka cache, checks it, and prints the report.
//!
//! Run with: `cargo run -p template-cache --example warm_and_check [DIR]`

use std::sync::Arc;

use template_cache::moka::MokaBackend;
use template_cache::{CheckMode, Checker, EngineConfig, SourceConfig, TemplateReader, Warmer};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let dir = std::env::args().nth(1).unwrap_or_else(|| {
        concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/templates").to_owned()
    });
    let backend = Arc::new(MokaBackend::new());
    let mut config = EngineConfig::new(SourceConfig::new(&dir));
    // E-mails first: they are the templates a fresh instance needs soonest.
    config.priority = vec!["emails/**".into()];

    let warm = Warmer::new(backend.clone(), config.clone())?
        .run_once()
        .await?;
    println!(
        "warm: {} scanned, {} written, {} bytes in {:?}",
        warm.scanned, warm.written, warm.bytes_written, warm.duration
    );

    let report = Checker::new(backend.clone(), config)?
        .check(CheckMode::Deep)
        .await?;
    println!("{}", serde_json::to_string_pretty(&report)?);

    let reader = TemplateReader::new(backend, Default::default());
    if let Some(t) = reader.get("emails/welcome.txt").await? {
        println!(
            "emails/welcome.txt ({}):\n{}",
            t.hash,
            String::from_utf8_lossy(&t.content)
        );
    }
    Ok(())
}
