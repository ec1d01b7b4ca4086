//! The command line: every clap definition of `tcache`.
//!
//! Doc comments on fields and subcommands are the `--help` text. The structs carry none on
//! purpose: clap would show them as the command's description.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

/// The backend used when neither `--backend` nor `TCACHE_BACKEND` is given.
pub const DEFAULT_BACKEND: &str = "sled://.tcache";

#[derive(Parser, Debug)]
#[command(
    name = "tcache",
    version,
    about = "Keep a cache of templates warm and consistent with their files"
)]
pub struct Cli {
    /// Backend URL: sled://PATH, moka://, redis://, rediss://, redis+cluster://, memcache://.
    #[arg(long, global = true, env = "TCACHE_BACKEND", default_value = DEFAULT_BACKEND, hide_env_values = true)]
    pub backend: String,
    /// Key namespace.
    #[arg(long, global = true, default_value = template_cache::DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// Print exactly one JSON object on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// More logging on stderr (-v info, -vv debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors on stderr, no progress bar.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Where file fingerprints persist between runs [default: $XDG_CACHE_HOME/tcache or
    /// ~/.cache/tcache].
    #[arg(long, global = true, env = "TCACHE_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Write new and changed templates of DIR to the cache, once or every --interval.
    Warm(WarmArgs),
    /// Compare DIR with the cache; --fix resolves what was found.
    Check(CheckArgs),
    /// Print a template's content (verified against its hash) to stdout.
    Get {
        /// The template name, e.g. emails/welcome.html.
        name: String,
    },
    /// List the template names in the cache's index.
    List,
}

#[derive(Args, Debug, Clone)]
pub struct SourceArgs {
    /// The template directory.
    pub dir: PathBuf,
    /// Only templates matching this glob (repeatable).
    #[arg(long = "include", value_name = "GLOB")]
    pub include: Vec<String>,
    /// Skip templates matching this glob (repeatable).
    #[arg(long = "exclude", value_name = "GLOB")]
    pub exclude: Vec<String>,
    /// Re-hash every file instead of trusting unchanged fingerprints.
    #[arg(long)]
    pub checksum: bool,
    /// Largest template in bytes; larger files fail alone.
    #[arg(long, value_name = "BYTES", default_value_t = template_cache::scan::DEFAULT_MAX_TEMPLATE_BYTES)]
    pub max_template_size: u64,
    /// Batches in flight at once.
    #[arg(long, default_value_t = 4)]
    pub concurrency: usize,
    /// Templates per batch.
    #[arg(long, default_value_t = 256)]
    pub batch_size: usize,
    /// Rate limit in templates per second.
    #[arg(long, value_name = "PER_SECOND")]
    pub rate: Option<f64>,
    /// Rate limit in bytes per second.
    #[arg(long, value_name = "BYTES_PER_SECOND")]
    pub byte_rate: Option<f64>,
    /// Attempts per batch for temporary backend errors (including the first).
    #[arg(long, default_value_t = 4)]
    pub max_attempts: u32,
}

#[derive(Args, Debug)]
pub struct WarmArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Keep warming every DURATION (e.g. 30s, 5m) until SIGINT/SIGTERM.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub interval: Option<Duration>,
    /// Templates matching this glob go first (repeatable, highest priority first).
    #[arg(long = "priority", value_name = "GLOB")]
    pub priority: Vec<String>,
    /// Trust the index without checking that entries still exist (faster; misses evictions).
    #[arg(long)]
    pub trust_index: bool,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    /// Fetch and verify every entry instead of comparing with the index.
    #[arg(long)]
    pub deep: bool,
    /// Resolve what the check found.
    #[arg(long)]
    pub fix: bool,
    /// With --fix: say what would be done, change nothing.
    #[arg(long, requires = "fix")]
    pub dry_run: bool,
    /// With --fix: refuse if more than N entries would be deleted.
    #[arg(long, value_name = "N", requires = "fix")]
    pub max_delete: Option<usize>,
    /// With --fix: refuse if more than this fraction of entries would be deleted.
    #[arg(long, value_name = "F", default_value_t = 0.25, requires = "fix")]
    pub max_delete_ratio: f64,
    /// With --fix: keep orphaned entries.
    #[arg(long, requires = "fix")]
    pub keep_orphans: bool,
}
