//! The command line: every clap definition of `tcache`.
//!
//! Doc comments on fields and subcommands are the `--help` text. The structs carry none on
//! purpose: clap would show them as the command's description.
//!
//! Every numeric flag is range-checked by its value parser, so an out-of-range value is a usage
//! error (exit 2) naming the flag and its range before anything runs.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

/// The backend used when neither `--backend` nor `TCACHE_BACKEND` is given.
pub const DEFAULT_BACKEND: &str = "sled://.tcache";

/// The environment variable holding the backend password (never the command line: `ps` shows
/// arguments to every user).
pub const PASSWORD_ENV: &str = "TCACHE_BACKEND_PASSWORD";

/// `--interval`: from 1 s (shorter would hammer the backend with scans) to 30 days.
pub const INTERVAL_RANGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(30 * 86_400));
/// `--concurrency`.
pub const CONCURRENCY_RANGE: (u64, u64) = (1, 1024);
/// `--batch-size`.
pub const BATCH_SIZE_RANGE: (u64, u64) = (1, 100_000);
/// `--max-attempts`.
pub const MAX_ATTEMPTS_RANGE: (u64, u64) = (1, 100);
/// `--max-template-size`: up to 1 GiB.
pub const MAX_TEMPLATE_SIZE_RANGE: (u64, u64) = (1, 1024 * 1024 * 1024);
/// `--max-delete` (0: no deletion at all).
pub const MAX_DELETE_RANGE: (u64, u64) = (0, 1_000_000_000);
/// `--max-change` (0: no write at all).
pub const MAX_CHANGE_RANGE: (u64, u64) = (0, 1_000_000_000);
/// `--lease-ttl`: the range the engines accept.
pub const LEASE_TTL_RANGE: (Duration, Duration) = template_cache::LeaseConfig::TTL_RANGE;
/// `--wait-lease`: from 1 s to a day.
pub const WAIT_LEASE_RANGE: (Duration, Duration) =
    (Duration::from_secs(1), Duration::from_secs(86_400));

/// Every subcommand's name (`tcache man COMMAND`).
pub const SUBCOMMANDS: [&str; 8] = [
    "warm",
    "check",
    "serve",
    "get",
    "list",
    "history",
    "completions",
    "man",
];

/// A parser of durations from `min` to `max` (`500ms`, `30s`, `5m`, `1h`).
pub(crate) fn duration_in(
    min: Duration,
    max: Duration,
) -> impl Fn(&str) -> Result<Duration, String> + Clone + Send + Sync + 'static {
    move |s| match humantime::parse_duration(s) {
        Ok(d) if (min..=max).contains(&d) => Ok(d),
        _ => Err(format!(
            "must be a duration from {} to {} (for example 30s, 5m, 1h)",
            template_cache::url::format_duration(min),
            template_cache::url::format_duration(max)
        )),
    }
}

/// A parser of whole numbers from `min` to `max`, as `T`.
pub(crate) fn count_in<T: TryFrom<u64>>(
    (min, max): (u64, u64),
) -> impl Fn(&str) -> Result<T, String> + Clone + Send + Sync + 'static {
    move |s| {
        s.parse::<u64>()
            .ok()
            .filter(|n| (min..=max).contains(n))
            .and_then(|n| T::try_from(n).ok())
            .ok_or_else(|| format!("must be a whole number from {min} to {max}"))
    }
}

/// A parser of rates: finite numbers greater than 0.
pub(crate) fn rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err("must be a finite number greater than 0 (for example 100 or 2.5)".into()),
    }
}

/// A parser of ratios: numbers from 0 to 1.
pub(crate) fn ratio(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
        _ => Err("must be a number from 0 to 1 (for example 0.25)".into()),
    }
}

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
    /// Read the backend password from FILE (one trailing newline is stripped; no encoding
    /// needed); it replaces any password in the URL. Or set TCACHE_BACKEND_PASSWORD.
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        env = "TCACHE_BACKEND_PASSWORD_FILE",
        hide_env_values = true
    )]
    pub backend_password_file: Option<PathBuf>,
    /// Key namespace.
    #[arg(long, global = true, default_value = template_cache::DEFAULT_NAMESPACE)]
    pub namespace: String,
    /// Print exactly one JSON object on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// More logging on stderr (-v info, -vv debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Only errors on stderr, no progress display.
    #[arg(short, long, global = true)]
    pub quiet: bool,
    /// Where file fingerprints persist between runs [default: $XDG_CACHE_HOME/tcache or
    /// ~/.cache/tcache].
    #[arg(long, global = true, env = "TCACHE_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// How long the namespace write lease of a writer lives without renewal (3s to 300s); a
    /// writer killed with -9 frees the namespace after at most this long.
    #[arg(long, global = true, value_name = "DURATION", default_value = "15s", value_parser = duration_in(LEASE_TTL_RANGE.0, LEASE_TTL_RANGE.1))]
    pub lease_ttl: Duration,
    /// Read options from this TOML file (global options at the top level, a command's in its
    /// table, e.g. [serve]); the command line and the environment override it.
    #[arg(long, global = true, value_name = "FILE", env = crate::config_file::CONFIG_ENV)]
    pub config: Option<PathBuf>,
    /// Log format on stderr: human (the default) or json (one object per line, for log
    /// shippers).
    #[arg(
        long,
        global = true,
        value_enum,
        value_name = "FORMAT",
        default_value = "human"
    )]
    pub log_format: LogFormat,
    /// Write the metrics of this run to FILE when the command ends (also on failure), in the
    /// Prometheus text format of node_exporter's textfile collector (FILE is replaced
    /// atomically; name it *.prom).
    #[arg(long, global = true, value_name = "FILE")]
    pub metrics_file: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Write new and changed templates of DIR to the cache, once or every --interval.
    Warm(WarmArgs),
    /// Compare DIR with the cache; --fix resolves what was found.
    Check(CheckArgs),
    /// Keep DIR's templates warm and the cache consistent, unattended, until SIGTERM: write
    /// changes as they land, check on a schedule, resolve behind thresholds (docs/serve.md).
    Serve(Box<crate::serve_args::ServeArgs>),
    /// Print a template's content (verified against its hash) to stdout.
    Get {
        /// The template name, e.g. emails/welcome.html.
        name: String,
    },
    /// List the template names in the cache's index.
    List,
    /// Show the run history kept in the cache: the latest warms, checks and fixes of every
    /// host, newest first, and their trends (runs per day, p50/p95 duration, inconsistencies
    /// found and resolved).
    History(HistoryArgs),
    /// Print a shell completion script to stdout (e.g. `tcache completions bash >
    /// /etc/bash_completion.d/tcache`).
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print a man page (roff) to stdout: tcache(1), or tcache-COMMAND(1) of a subcommand
    /// (`tcache man | man -l -`).
    Man {
        /// A subcommand: its own page.
        #[arg(value_parser = SUBCOMMANDS)]
        command: Option<String>,
    },
}

/// The format of log lines on stderr (`--log-format`).
#[derive(ValueEnum, Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    /// Lines for people.
    #[default]
    Human,
    /// One JSON object per line.
    Json,
}

/// A kind of inconsistency `check --fix` can resolve.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum FixKind {
    /// Write templates missing from the cache.
    Missing,
    /// Rewrite outdated entries.
    Outdated,
    /// Rewrite corrupt entries from their file, or delete them if the file is gone.
    Corrupt,
    /// Delete orphaned entries.
    Orphaned,
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
    /// Largest template in bytes (1 to 1073741824); larger files fail alone.
    #[arg(long, allow_negative_numbers = true, value_name = "BYTES", default_value_t = template_cache::scan::DEFAULT_MAX_TEMPLATE_BYTES, value_parser = count_in::<u64>(MAX_TEMPLATE_SIZE_RANGE))]
    pub max_template_size: u64,
    /// Batches in flight at once (1 to 1024).
    #[arg(long, allow_negative_numbers = true, value_name = "N", default_value_t = 4, value_parser = count_in::<usize>(CONCURRENCY_RANGE))]
    pub concurrency: usize,
    /// Templates per batch (1 to 100000).
    #[arg(long, allow_negative_numbers = true, value_name = "N", default_value_t = 256, value_parser = count_in::<usize>(BATCH_SIZE_RANGE))]
    pub batch_size: usize,
    /// Rate limit in templates per second (greater than 0).
    #[arg(long, allow_negative_numbers = true, value_name = "PER_SECOND", value_parser = rate)]
    pub rate: Option<f64>,
    /// Rate limit in bytes per second (greater than 0).
    #[arg(long, allow_negative_numbers = true, value_name = "BYTES_PER_SECOND", value_parser = rate)]
    pub byte_rate: Option<f64>,
    /// Attempts per batch for temporary backend errors, including the first (1 to 100).
    #[arg(long, allow_negative_numbers = true, value_name = "N", default_value_t = 4, value_parser = count_in::<u32>(MAX_ATTEMPTS_RANGE))]
    pub max_attempts: u32,
}

#[derive(Args, Debug)]
#[command(mut_arg("metrics_addr", |a| a.requires("interval")))]
pub struct WarmArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub observe: crate::observe_args::ObserveArgs,
    /// Keep warming every DURATION (e.g. 30s, 5m; 1s to 30d) until SIGINT/SIGTERM.
    #[arg(long, value_name = "DURATION", value_parser = duration_in(INTERVAL_RANGE.0, INTERVAL_RANGE.1))]
    pub interval: Option<Duration>,
    /// Templates matching this glob go first (repeatable, highest priority first).
    #[arg(long = "priority", value_name = "GLOB")]
    pub priority: Vec<String>,
    /// Trust the index without checking that entries still exist (faster; misses evictions).
    #[arg(long)]
    pub trust_index: bool,
    /// Wait up to DURATION (1s to 1d) for another writer's write lease instead of exiting 4.
    #[arg(long, value_name = "DURATION", value_parser = duration_in(WAIT_LEASE_RANGE.0, WAIT_LEASE_RANGE.1))]
    pub wait_lease: Option<Duration>,
    /// After warming, delete orphaned entries (templates whose file is gone), behind the same
    /// thresholds as `check --fix`; refused (exit 3, nothing deleted) when they are exceeded
    /// or the directory has no template.
    #[arg(long)]
    pub prune: bool,
    /// With --prune: refuse if more than N entries would be deleted (0 to 1000000000).
    #[arg(long, allow_negative_numbers = true, value_name = "N", requires = "prune", value_parser = count_in::<usize>(MAX_DELETE_RANGE))]
    pub max_delete: Option<usize>,
    /// With --prune: refuse if more than this fraction of entries would be deleted (0 to 1).
    #[arg(long, allow_negative_numbers = true, value_name = "F", default_value_t = 0.25, requires = "prune", value_parser = ratio)]
    pub max_delete_ratio: f64,
}

#[derive(Args, Debug)]
pub struct CheckArgs {
    #[command(flatten)]
    pub source: SourceArgs,
    #[command(flatten)]
    pub alerts: crate::observe_args::AlertArgs,
    /// Fetch and verify every entry instead of comparing with the index.
    #[arg(long)]
    pub deep: bool,
    /// Resolve what the check found.
    #[arg(long)]
    pub fix: bool,
    /// With --fix: say what would be done, change nothing.
    #[arg(long, requires = "fix")]
    pub dry_run: bool,
    /// With --fix: refuse if more than N entries would be deleted (0 to 1000000000).
    #[arg(long, allow_negative_numbers = true, value_name = "N", requires = "fix", value_parser = count_in::<usize>(MAX_DELETE_RANGE))]
    pub max_delete: Option<usize>,
    /// With --fix: refuse if more than this fraction of entries would be deleted (0 to 1).
    #[arg(long, allow_negative_numbers = true, value_name = "F", default_value_t = 0.25, requires = "fix", value_parser = ratio)]
    pub max_delete_ratio: f64,
    /// With --fix: keep orphaned entries (the same as --fix-only missing,outdated,corrupt).
    #[arg(long, requires = "fix", conflicts_with = "fix_only")]
    pub keep_orphans: bool,
    /// With --fix: resolve only these kinds of inconsistency (comma-separated: missing,
    /// outdated, corrupt, orphaned); the others are left as they are [default: all].
    #[arg(
        long,
        value_enum,
        value_name = "KIND,...",
        value_delimiter = ',',
        requires = "fix"
    )]
    pub fix_only: Vec<FixKind>,
    /// With --fix: refuse if more than N entries would be written (0 to 1000000000).
    #[arg(long, allow_negative_numbers = true, value_name = "N", requires = "fix", value_parser = count_in::<usize>(MAX_CHANGE_RANGE))]
    pub max_change: Option<usize>,
    /// With --fix: refuse if more than this fraction of the entries would be written (0 to 1;
    /// not applied while the cache has no entry).
    #[arg(long, allow_negative_numbers = true, value_name = "F", requires = "fix", value_parser = ratio)]
    pub max_change_ratio: Option<f64>,
    /// With --fix: wait up to DURATION (1s to 1d) for another writer's write lease instead of
    /// exiting 4.
    #[arg(long, value_name = "DURATION", requires = "fix", value_parser = duration_in(WAIT_LEASE_RANGE.0, WAIT_LEASE_RANGE.1))]
    pub wait_lease: Option<Duration>,
}

/// `history --since`: from 1 minute to 10 years.
pub const HISTORY_SINCE_RANGE: (Duration, Duration) =
    (Duration::from_secs(60), Duration::from_secs(3650 * 86_400));
/// `history --limit`.
pub const HISTORY_LIMIT_RANGE: (u64, u64) = (1, 100_000);

/// A kind of run in the history.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunKindArg {
    /// `tcache warm` runs (and service warms).
    Warm,
    /// Checks, with or without --fix.
    Check,
    /// Resolutions: `check --fix`, `warm --prune` (refused ones too).
    Resolve,
}

#[derive(Args, Debug)]
pub struct HistoryArgs {
    /// Only runs started within DURATION before now (e.g. 24h, 7d; 1m to 3650d).
    #[arg(long, value_name = "DURATION", value_parser = duration_in(HISTORY_SINCE_RANGE.0, HISTORY_SINCE_RANGE.1))]
    pub since: Option<Duration>,
    /// Only runs of this kind.
    #[arg(long, value_enum, value_name = "KIND")]
    pub kind: Option<RunKindArg>,
    /// Show at most N runs, the newest (1 to 100000); trends still cover every matching run.
    #[arg(long, allow_negative_numbers = true, value_name = "N", value_parser = count_in::<usize>(HISTORY_LIMIT_RANGE))]
    pub limit: Option<usize>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parsers_check_ranges() {
        let interval = duration_in(INTERVAL_RANGE.0, INTERVAL_RANGE.1);
        assert_eq!(interval("1s"), Ok(Duration::from_secs(1)));
        assert_eq!(interval("30d"), Ok(Duration::from_secs(30 * 86_400)));
        for bad in ["0s", "999ms", "31d", "soon", "99999999999999999999999s"] {
            let e = interval(bad).unwrap_err();
            assert!(e.contains("from 1s to 30d"), "{bad}: {e}");
        }
        let n = count_in::<usize>(CONCURRENCY_RANGE);
        assert_eq!(n("1"), Ok(1));
        assert_eq!(n("1024"), Ok(1024));
        for bad in ["0", "1025", "-1", "1.5", "", "18446744073709551616"] {
            assert!(n(bad).unwrap_err().contains("from 1 to 1024"), "{bad}");
        }
        assert_eq!(count_in::<usize>(MAX_DELETE_RANGE)("0"), Ok(0));
        assert_eq!(
            count_in::<usize>(MAX_CHANGE_RANGE)("1000000000"),
            Ok(1_000_000_000)
        );
        assert!(count_in::<usize>(MAX_CHANGE_RANGE)("1000000001").is_err());
        for bad in ["0", "-1", "inf", "NaN", "1e999", "x"] {
            assert!(rate(bad).is_err(), "{bad}");
        }
        assert_eq!(rate("0.5"), Ok(0.5));
        for bad in ["-0.1", "1.01", "NaN", "inf"] {
            assert!(ratio(bad).is_err(), "{bad}");
        }
        assert_eq!(ratio("1"), Ok(1.0));
    }

    #[test]
    fn the_command_line_is_consistent() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }

    #[test]
    fn every_subcommand_is_named() {
        use clap::CommandFactory;
        let names: Vec<String> = Cli::command()
            .get_subcommands()
            .map(|c| c.get_name().to_owned())
            .collect();
        assert_eq!(names, SUBCOMMANDS);
    }

    #[test]
    fn fix_kinds_are_comma_separated() {
        let cli = Cli::try_parse_from([
            "tcache",
            "check",
            "dir",
            "--fix",
            "--fix-only",
            "missing,orphaned",
            "--fix-only",
            "corrupt",
        ])
        .map_err(|e| e.to_string());
        let args = match cli {
            Ok(Cli {
                command: Command::Check(args),
                ..
            }) => args,
            other => panic!("{other:?}"),
        };
        assert_eq!(
            args.fix_only,
            [FixKind::Missing, FixKind::Orphaned, FixKind::Corrupt]
        );
        for bad in [
            &["tcache", "check", "dir", "--fix-only", "missing"][..],
            &["tcache", "check", "dir", "--fix", "--fix-only", "stale"],
            &[
                "tcache",
                "check",
                "dir",
                "--fix",
                "--keep-orphans",
                "--fix-only",
                "missing",
            ],
            &["tcache", "check", "dir", "--max-change", "3"],
            &["tcache", "warm", "dir", "--max-delete", "3"],
        ] {
            assert!(Cli::try_parse_from(bad).is_err(), "{bad:?}");
        }
    }
}
