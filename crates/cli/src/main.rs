//! `tcache`: warm and check template caches from the shell.
//!
//! Exit codes: 0 success / consistent; 1 inconsistencies found (check) or templates failed
//! (warm); 2 usage, configuration or fatal error; 3 a resolution refused by a safety threshold.

mod backend_url;
mod output;
mod progress;

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use template_cache::{
    CacheBackend, CancellationToken, CheckMode, Checker, EngineConfig, Error, ErrorKind, Namespace,
    ResolvePolicy, RetryPolicy, SourceConfig, TemplateReader, Warmer,
};

/// Exit code: success, cache consistent.
const EXIT_OK: u8 = 0;
/// Exit code: inconsistencies found, or templates failed to warm.
const EXIT_FOUND: u8 = 1;
/// Exit code: usage, configuration or fatal error.
const EXIT_FATAL: u8 = 2;
/// Exit code: a resolution was refused by a safety threshold; nothing was changed.
const EXIT_REFUSED: u8 = 3;

#[derive(Parser, Debug)]
#[command(
    name = "tcache",
    version,
    about = "Keep a cache of templates warm and consistent with their files"
)]
struct Cli {
    /// Backend URL: sled://PATH, moka://, redis://, rediss://, redis+cluster://, memcache://.
    #[arg(long, global = true, env = "TCACHE_BACKEND", default_value = backend_url::DEFAULT_BACKEND, hide_env_values = true)]
    backend: String,
    /// Key namespace.
    #[arg(long, global = true, default_value = template_cache::DEFAULT_NAMESPACE)]
    namespace: String,
    /// Print exactly one JSON object on stdout.
    #[arg(long, global = true)]
    json: bool,
    /// More logging on stderr (-v info, -vv debug).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Only errors on stderr, no progress bar.
    #[arg(short, long, global = true)]
    quiet: bool,
    /// Where file fingerprints persist between runs [default: $XDG_CACHE_HOME/tcache or
    /// ~/.cache/tcache].
    #[arg(long, global = true, env = "TCACHE_STATE_DIR")]
    state_dir: Option<PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
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
struct SourceArgs {
    /// The template directory.
    dir: PathBuf,
    /// Only templates matching this glob (repeatable).
    #[arg(long = "include", value_name = "GLOB")]
    include: Vec<String>,
    /// Skip templates matching this glob (repeatable).
    #[arg(long = "exclude", value_name = "GLOB")]
    exclude: Vec<String>,
    /// Re-hash every file instead of trusting unchanged fingerprints.
    #[arg(long)]
    checksum: bool,
    /// Largest template in bytes; larger files fail alone.
    #[arg(long, value_name = "BYTES", default_value_t = template_cache::scan::DEFAULT_MAX_TEMPLATE_BYTES)]
    max_template_size: u64,
    /// Batches in flight at once.
    #[arg(long, default_value_t = 4)]
    concurrency: usize,
    /// Templates per batch.
    #[arg(long, default_value_t = 256)]
    batch_size: usize,
    /// Rate limit in templates per second.
    #[arg(long, value_name = "PER_SECOND")]
    rate: Option<f64>,
    /// Rate limit in bytes per second.
    #[arg(long, value_name = "BYTES_PER_SECOND")]
    byte_rate: Option<f64>,
    /// Attempts per batch for temporary backend errors (including the first).
    #[arg(long, default_value_t = 4)]
    max_attempts: u32,
}

#[derive(Args, Debug)]
struct WarmArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// Keep warming every DURATION (e.g. 30s, 5m) until SIGINT/SIGTERM.
    #[arg(long, value_parser = humantime::parse_duration)]
    interval: Option<Duration>,
    /// Templates matching this glob go first (repeatable, highest priority first).
    #[arg(long = "priority", value_name = "GLOB")]
    priority: Vec<String>,
    /// Trust the index without checking that entries still exist (faster; misses evictions).
    #[arg(long)]
    trust_index: bool,
}

#[derive(Args, Debug)]
struct CheckArgs {
    #[command(flatten)]
    source: SourceArgs,
    /// Fetch and verify every entry instead of comparing with the index.
    #[arg(long)]
    deep: bool,
    /// Resolve what the check found.
    #[arg(long)]
    fix: bool,
    /// With --fix: say what would be done, change nothing.
    #[arg(long, requires = "fix")]
    dry_run: bool,
    /// With --fix: refuse if more than N entries would be deleted.
    #[arg(long, value_name = "N", requires = "fix")]
    max_delete: Option<usize>,
    /// With --fix: refuse if more than this fraction of entries would be deleted.
    #[arg(long, value_name = "F", default_value_t = 0.25, requires = "fix")]
    max_delete_ratio: f64,
    /// With --fix: keep orphaned entries.
    #[arg(long, requires = "fix")]
    keep_orphans: bool,
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(if e.use_stderr() { EXIT_FATAL } else { EXIT_OK });
        }
    };
    init_logging(&cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("tcache: cannot start the async runtime: {e}");
            return ExitCode::from(EXIT_FATAL);
        }
    };
    let code = runtime.block_on(run(cli));
    ExitCode::from(code)
}

fn init_logging(cli: &Cli) {
    let level = match (cli.quiet, cli.verbose) {
        (true, _) => "error",
        (false, 0) => "warn",
        (false, 1) => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

async fn run(cli: Cli) -> u8 {
    match dispatch(&cli).await {
        Ok(code) => code,
        Err(e) => {
            if cli.json {
                output::print_json(
                    &serde_json::json!({ "error": e.to_report_string(), "kind": e.kind().as_str() }),
                );
            }
            eprintln!("tcache: {}", e.to_report_string());
            if e.kind() == ErrorKind::Refused {
                EXIT_REFUSED
            } else {
                EXIT_FATAL
            }
        }
    }
}

async fn dispatch(cli: &Cli) -> template_cache::Result<u8> {
    let namespace = Namespace::new(&cli.namespace).map_err(|e| e.context("--namespace"))?;
    let backend = backend_url::open(&cli.backend).await?;
    match &cli.command {
        Command::Warm(args) => warm(cli, backend, namespace, args).await,
        Command::Check(args) => check(cli, backend, namespace, args).await,
        Command::Get { name } => get(cli, backend, namespace, name).await,
        Command::List => list(cli, backend, namespace).await,
    }
}

fn engine_config(
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
    if s.max_attempts == 0 {
        return Err(Error::new(
            ErrorKind::ConfigInvalid,
            "--max-attempts must be at least 1",
        ));
    }
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
    let base = match &cli.state_dir {
        Some(d) => d.clone(),
        None => match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
            Some(x) => PathBuf::from(x).join("tcache"),
            None => match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
                Some(h) => PathBuf::from(h).join(".cache").join("tcache"),
                None => PathBuf::from(".tcache-state"),
            },
        },
    };
    let canonical = std::fs::canonicalize(dir).map_err(|e| Error::io(dir, e))?;
    use sha2::Digest;
    let digest = sha2::Sha256::digest(canonical.to_string_lossy().as_bytes());
    Ok(base.join(format!("fingerprints-{}", &hex::encode(digest)[..16])))
}

async fn warm(
    cli: &Cli,
    backend: Arc<dyn CacheBackend>,
    ns: Namespace,
    args: &WarmArgs,
) -> template_cache::Result<u8> {
    let mut cfg = engine_config(cli, ns, &args.source)?;
    cfg.priority = args.priority.clone();
    cfg.verify_existing = !args.trust_index;
    let warmer = Warmer::new(Arc::clone(&backend), cfg)?;
    let cancel = CancellationToken::new();
    spawn_signal_handler(cancel.clone());
    let Some(interval) = args.interval else {
        let report = warmer.run_once_until(&cancel).await?;
        output::warm(cli.json, &report, &backend.describe());
        return Ok(if report.is_success() {
            EXIT_OK
        } else {
            EXIT_FOUND
        });
    };
    let json = cli.json;
    let describe = backend.describe();
    warmer
        .run_periodic(interval, 0.1, cancel, |r| match r {
            Ok(report) => output::warm(json, &report, &describe),
            Err(e) => {
                tracing::error!(error = %e.to_report_string(), "warm run failed; retrying at the next interval");
            }
        })
        .await;
    Ok(EXIT_OK)
}

/// Cancels `token` on SIGINT or SIGTERM; a second signal exits at once.
fn spawn_signal_handler(token: CancellationToken) {
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::warn!("interrupted: finishing the batch in flight (interrupt again to abort)");
        token.cancel();
        wait_for_signal().await;
        std::process::exit(130);
    });
}

async fn wait_for_signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = tokio::signal::ctrl_c() => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = tokio::signal::ctrl_c().await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

async fn check(
    cli: &Cli,
    backend: Arc<dyn CacheBackend>,
    ns: Namespace,
    args: &CheckArgs,
) -> template_cache::Result<u8> {
    if !(0.0..=1.0).contains(&args.max_delete_ratio) {
        return Err(Error::new(
            ErrorKind::ConfigInvalid,
            format!(
                "--max-delete-ratio must be between 0 and 1, not {}",
                args.max_delete_ratio
            ),
        ));
    }
    let cfg = engine_config(cli, ns, &args.source)?;
    let checker = Checker::new(Arc::clone(&backend), cfg)?;
    let mode = if args.deep {
        CheckMode::Deep
    } else {
        CheckMode::Quick
    };
    let report = checker.check(mode).await?;
    if !args.fix {
        output::check(cli.json, &report, None, &backend.describe());
        return Ok(if report.consistent {
            EXIT_OK
        } else {
            EXIT_FOUND
        });
    }
    let policy = ResolvePolicy {
        delete_orphans: !args.keep_orphans,
        dry_run: args.dry_run,
        max_delete: args.max_delete,
        max_delete_ratio: Some(args.max_delete_ratio),
        ..ResolvePolicy::default()
    };
    let fix = checker.resolve(&report, &policy).await;
    let fix = match fix {
        Err(e) if e.kind() != ErrorKind::Refused => {
            if !cli.json {
                output::check(false, &report, None, &backend.describe());
            }
            return Err(e.context("resolving"));
        }
        other => other,
    };
    output::check(cli.json, &report, Some(&fix), &backend.describe());
    Ok(match fix {
        Err(_) => EXIT_REFUSED,
        Ok(f) if !f.failed.is_empty() => EXIT_FOUND,
        Ok(_) if report.consistent => EXIT_OK,
        // Inconsistencies were found (and fixed unless dry run): report them with 1 only if
        // something is left unresolved.
        Ok(f) if f.dry_run => EXIT_FOUND,
        Ok(_) if args.keep_orphans && !report.orphaned.is_empty() => EXIT_FOUND,
        Ok(_) => EXIT_OK,
    })
}

async fn get(
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
                use std::io::Write;
                let mut out = std::io::stdout().lock();
                out.write_all(&t.content)
                    .and_then(|()| out.flush())
                    .map_err(|e| Error::new(ErrorKind::Io, format!("writing to stdout: {e}")))?;
            }
            Ok(EXIT_OK)
        }
        Ok(None) => {
            if cli.json {
                output::print_json(
                    &serde_json::json!({ "error": format!("template {name:?} is not in the cache"), "kind": "not found" }),
                );
            }
            eprintln!("tcache: template {name:?} is not in the cache");
            Ok(EXIT_FOUND)
        }
        Err(e) if e.kind() == ErrorKind::Corrupt => {
            if cli.json {
                output::print_json(
                    &serde_json::json!({ "error": e.to_report_string(), "kind": "corrupt" }),
                );
            }
            eprintln!("tcache: {}", e.to_report_string());
            Ok(EXIT_FOUND)
        }
        Err(e) => Err(e),
    }
}

async fn list(
    cli: &Cli,
    backend: Arc<dyn CacheBackend>,
    ns: Namespace,
) -> template_cache::Result<u8> {
    let index = backend.load_index(&ns).await?.unwrap_or_default();
    let mut names: Vec<&String> = index.entries.keys().collect();
    names.sort();
    for lost in &index.lost {
        tracing::warn!("{lost}");
    }
    if cli.json {
        output::print_json(
            &serde_json::json!({ "templates": names, "incomplete": !index.lost.is_empty() }),
        );
    } else {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        for n in names {
            if writeln!(out, "{n}").is_err() {
                break;
            }
        }
    }
    Ok(EXIT_OK)
}
