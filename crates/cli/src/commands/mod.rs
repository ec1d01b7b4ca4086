//! One file per command, and what they share: the engine configuration built from the source
//! flags, and where file fingerprints persist.

pub mod check;
pub mod docs;
pub mod get;
pub mod history;
pub mod list;
pub mod serve;
pub mod warm;

use std::path::{Path, PathBuf};

use template_cache::{EngineConfig, Error, ErrorKind, Namespace, RetryPolicy, SourceConfig};

use crate::args::{Cli, SourceArgs};
use crate::progress;

/// The engine configuration of a warm or check of `s.dir`.
pub fn engine_config(
    cli: &Cli,
    namespace: Namespace,
    s: &SourceArgs,
) -> template_cache::Result<EngineConfig> {
    if !s.dir.is_dir() {
        let why = if s.dir.exists() {
            "is not a directory"
        } else {
            "does not exist"
        };
        return Err(Error::new(
            ErrorKind::NotFound,
            format!("template directory {} {why}", s.dir.display()),
        ));
    }
    let mut source = SourceConfig::new(&s.dir);
    source.include = s.include.clone();
    source.exclude = s.exclude.clone();
    source.checksum = s.checksum;
    source.max_template_bytes = s.max_template_size;
    source.state_path = Some(state_path(cli, &s.dir)?);
    let mut cfg = EngineConfig::new(source);
    cfg.namespace = namespace;
    cfg.throttle.concurrency = s.concurrency;
    cfg.throttle.batch_max_templates = s.batch_size;
    cfg.throttle.templates_per_second = s.rate;
    cfg.throttle.bytes_per_second = s.byte_rate;
    // Every number was range-checked when the command line was parsed (`args.rs`).
    cfg.lease.ttl = cli.lease_ttl;
    cfg.retry = RetryPolicy {
        max_attempts: s.max_attempts,
        ..RetryPolicy::default()
    };
    if !cli.json && !cli.quiet {
        cfg.progress = progress::Bar::for_terminal();
    }
    Ok(cfg)
}

/// The fingerprint state file of `dir`: one per canonical directory.
fn state_path(cli: &Cli, dir: &Path) -> template_cache::Result<PathBuf> {
    template_cache::source::fingerprints::state_file(&state_dir(cli), dir)
}

/// The directory of fingerprint state files: `--state-dir`, else `$XDG_CACHE_HOME/tcache`, else
/// `~/.cache/tcache`.
pub fn state_dir(cli: &Cli) -> PathBuf {
    match &cli.state_dir {
        Some(d) => d.clone(),
        None => match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
            Some(x) => PathBuf::from(x).join("tcache"),
            None => match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
                Some(h) => PathBuf::from(h).join(".cache").join("tcache"),
                None => PathBuf::from(".tcache-state"),
            },
        },
    }
}
