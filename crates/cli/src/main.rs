//! `tcache`: warm and check template caches from the shell.
//!
//! Exit codes: 0 success / consistent; 1 inconsistencies found (check) or templates failed
//! (warm); 2 usage, configuration or fatal error; 3 a resolution refused by a safety threshold;
//! 4 the namespace is busy (another writer holds its write lease).
//!
//! Conventions: progress only on a terminal (stderr); no color when `NO_COLOR` is set (to
//! anything but the empty string) or stderr is not a terminal; a reader closing the pipe early
//! (`tcache list | head`) ends the output quietly.

mod args;
mod commands;
mod config_file;
mod observe_args;
mod output;
mod progress;
mod serve_args;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::{Arc, RwLock};

use clap::Parser;
use template_cache::url::{BackendUrl, Secrets};
use template_cache::{CacheBackend, Error, ErrorKind, Namespace};

use crate::args::{Cli, Command, LogFormat, PASSWORD_ENV};

/// Exit code: success, cache consistent.
const EXIT_OK: u8 = 0;
/// Exit code: inconsistencies found, or templates failed to warm.
const EXIT_FOUND: u8 = 1;
/// Exit code: usage, configuration or fatal error.
const EXIT_FATAL: u8 = 2;
/// Exit code: a resolution was refused by a safety threshold; nothing was changed.
const EXIT_REFUSED: u8 = 3;
/// Exit code: another process holds the namespace's write lease; nothing was written.
const EXIT_BUSY: u8 = 4;

/// The largest password file read (a bigger one is not a password file).
const MAX_PASSWORD_FILE_BYTES: u64 = 64 * 1024;

/// Every secret this run knows (backend URL passwords, the password from the environment or a
/// file): scrubbed from logs and from error output, whatever produced them.
static SECRETS: RwLock<Secrets> = RwLock::new(Secrets::new());

/// Adds secrets to scrub from everything printed from now on.
pub(crate) fn remember(secrets: Secrets) {
    if let Ok(mut s) = SECRETS.write() {
        s.extend(secrets);
    }
}

/// `text` without any secret this run knows.
fn scrubbed(text: &str) -> String {
    match SECRETS.read() {
        Ok(s) => s.scrub(text).into_owned(),
        Err(_) => text.to_owned(),
    }
}

/// The command line as given (before the config file is merged in): `serve` parses it again
/// on SIGHUP.
static ARGV: std::sync::OnceLock<Vec<std::ffi::OsString>> = std::sync::OnceLock::new();

fn main() -> ExitCode {
    let given: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let _ = ARGV.set(given.clone());
    let merged = match config_file::merge(given) {
        Ok(m) => m,
        Err(e) => {
            output::eprint(&format!("tcache: {}", scrubbed(&e)));
            return ExitCode::from(EXIT_FATAL);
        }
    };
    // A backend URL given where another argument was expected would be echoed by a usage error.
    for arg in merged.argv.iter().skip(1) {
        let arg = arg.to_string_lossy();
        let value = match arg.strip_prefix("--") {
            Some(flag) => flag.split_once('=').map_or("", |(_, v)| v),
            None => &arg,
        };
        if value.contains('@') {
            remember(Secrets::of(value));
        }
    }
    let cli = match Cli::try_parse_from(&merged.argv) {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() && merged.explain(&e).is_some() => {
            let why = merged.explain(&e).unwrap_or_default();
            output::eprint(&format!("tcache: {}", scrubbed(&why)));
            return ExitCode::from(EXIT_FATAL);
        }
        Err(e) if e.use_stderr() => {
            let styled = e.render();
            let text = if stderr_in_color() {
                styled.ansi().to_string()
            } else {
                styled.to_string()
            };
            output::eprint(scrubbed(&text).trim_end_matches('\n'));
            return ExitCode::from(EXIT_FATAL);
        }
        Err(e) => {
            let _ = e.print();
            return ExitCode::from(EXIT_OK);
        }
    };
    remember(Secrets::of(&cli.backend));
    init_logging(&cli);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            output::eprint(&format!("tcache: cannot start the async runtime: {e}"));
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
    let logs = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_target(false)
        .log_internal_errors(false);
    let _ = match cli.log_format {
        LogFormat::Human => logs
            .with_writer(|| ScrubbingStderr)
            .with_ansi(stderr_in_color())
            .try_init(),
        LogFormat::Json => logs
            .json()
            .with_writer(|| ScrubbingJsonStderr)
            .with_ansi(false)
            .try_init(),
    };
}

/// Whether stderr takes color: it is a terminal and `NO_COLOR` is unset or empty
/// (<https://no-color.org>).
fn stderr_in_color() -> bool {
    std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

/// Standard error with every known secret scrubbed: the log writer. The formatter writes each
/// event whole, so a secret is never split between two writes; a progress bar on screen is
/// cleared while a line is written. A closed stderr (`tcache -v list 2>&1 | head`) drops log
/// lines: there is nowhere left to report it, and the formatter would print (and panic on)
/// the failure to stderr itself.
struct ScrubbingStderr;

impl std::io::Write for ScrubbingStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        let _ = progress::suspended(|| std::io::stderr().write_all(scrubbed(&text).as_bytes()));
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        let _ = std::io::stderr().flush();
        Ok(())
    }
}

/// [`ScrubbingStderr`] for `--log-format json`: every string of each JSON line is scrubbed
/// before it is encoded again (a secret holding `"` or `\` is escaped in the encoded line,
/// where the plain scrub would miss it).
struct ScrubbingJsonStderr;

impl std::io::Write for ScrubbingJsonStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        fn scrub(v: &mut serde_json::Value) {
            match v {
                serde_json::Value::String(s) => *s = scrubbed(s),
                serde_json::Value::Array(a) => a.iter_mut().for_each(scrub),
                serde_json::Value::Object(o) => o.values_mut().for_each(scrub),
                _ => {}
            }
        }
        match serde_json::from_slice::<serde_json::Value>(buf) {
            Ok(mut v) => {
                scrub(&mut v);
                ScrubbingStderr.write_all(format!("{v}\n").as_bytes())?;
            }
            Err(_) => ScrubbingStderr.write_all(buf)?,
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        ScrubbingStderr.flush()
    }
}

/// Runs the command and turns an error into its report and exit code.
async fn run(cli: Cli) -> u8 {
    if cli.metrics_file.is_some()
        && let Err(e) = template_cache_observe::metrics::install()
    {
        output::eprint(&format!("tcache: --metrics-file: {}", e.to_report_string()));
    }
    let code = match dispatch(&cli).await {
        Ok(code) => code,
        Err(e) => {
            observe_args::alert_unobserved_failure(&cli, &e).await;
            let report = scrubbed(&e.to_report_string());
            if cli.json {
                output::print_json(
                    &serde_json::json!({ "error": report, "kind": e.kind().as_str() }),
                );
            }
            output::eprint(&format!("tcache: {report}"));
            match e.kind() {
                ErrorKind::Refused => EXIT_REFUSED,
                ErrorKind::Conflict => EXIT_BUSY,
                _ => EXIT_FATAL,
            }
        }
    };
    let code = write_metrics_file(&cli, code);
    // A closed pipe is the reader's choice; any other failure to write the output is not.
    match output::stdout_error() {
        Some(e) => {
            output::eprint(&format!("tcache: writing to stdout: {e}"));
            EXIT_FATAL
        }
        None => code,
    }
}

/// Writes the run's metrics to `--metrics-file` (whatever the outcome), atomically, in the
/// format of node_exporter's textfile collector. Failing to write it turns success into exit 2.
fn write_metrics_file(cli: &Cli, code: u8) -> u8 {
    let Some(path) = &cli.metrics_file else {
        return code;
    };
    match template_cache_observe::metrics::write_textfile(path) {
        Ok(()) => code,
        Err(e) => {
            output::eprint(&format!(
                "tcache: --metrics-file: {}",
                scrubbed(&e.to_report_string())
            ));
            if code == EXIT_OK { EXIT_FATAL } else { code }
        }
    }
}

async fn dispatch(cli: &Cli) -> template_cache::Result<u8> {
    match &cli.command {
        Command::Warm(args) => {
            let (backend, ns) = connect(cli).await?;
            commands::warm::run(cli, backend, ns, args).await
        }
        Command::Check(args) => {
            let (backend, ns) = connect(cli).await?;
            commands::check::run(cli, backend, ns, args).await
        }
        Command::Serve(_) => {
            let argv = ARGV.get().cloned().unwrap_or_default();
            commands::serve::run(cli, &argv).await
        }
        Command::Get { name } => {
            let (backend, ns) = connect(cli).await?;
            commands::get::run(cli, backend, ns, name).await
        }
        Command::List => {
            let (backend, ns) = connect(cli).await?;
            commands::list::run(cli, backend, ns).await
        }
        Command::History(args) => {
            let (backend, ns) = connect(cli).await?;
            commands::history::run(cli, backend, ns, args).await
        }
        Command::Completions { shell } => commands::docs::completions(*shell),
        Command::Man { command } => commands::docs::man(command.as_deref()),
    }
}

/// The namespace and the opened backend of a command that uses the cache.
pub(crate) async fn connect(
    cli: &Cli,
) -> template_cache::Result<(Arc<dyn CacheBackend>, Namespace)> {
    let namespace = Namespace::new(&cli.namespace).map_err(|e| e.context("--namespace"))?;
    let url = backend_url(cli)?;
    let backend = template_cache::open(&url).await?;
    Ok((backend, namespace))
}

/// The backend URL, with the password from `TCACHE_BACKEND_PASSWORD` or
/// `--backend-password-file` in place of its own if one is given.
fn backend_url(cli: &Cli) -> template_cache::Result<String> {
    let Some(password) = backend_password(cli)? else {
        return Ok(cli.backend.clone());
    };
    let mut secrets = Secrets::default();
    secrets.add(&password);
    remember(secrets);
    match BackendUrl::parse(&cli.backend).scheme() {
        Some("redis" | "rediss" | "redis+cluster") => {
            let url = template_cache::url::with_password("backend", &cli.backend, &password)?;
            remember(Secrets::of(&url));
            Ok(url)
        }
        _ => Err(Error::new(
            ErrorKind::ConfigInvalid,
            format!(
                "a backend password was given ({PASSWORD_ENV} or --backend-password-file), but \
                 backend URL {:?} takes none: only redis://, rediss:// and redis+cluster:// do",
                template_cache::url::redact(&cli.backend)
            ),
        )),
    }
}

/// The password from `TCACHE_BACKEND_PASSWORD` (if set and not empty) or from the file of
/// `--backend-password-file` (one trailing newline stripped); giving both is an error.
fn backend_password(cli: &Cli) -> template_cache::Result<Option<String>> {
    let env = std::env::var_os(PASSWORD_ENV).filter(|v| !v.is_empty());
    let invalid = |why: String| Error::new(ErrorKind::ConfigInvalid, why);
    match (env, &cli.backend_password_file) {
        (None, None) => Ok(None),
        (Some(_), Some(_)) => Err(invalid(format!(
            "both {PASSWORD_ENV} and --backend-password-file (or TCACHE_BACKEND_PASSWORD_FILE) \
             are set; use one"
        ))),
        (Some(v), None) => v
            .into_string()
            .map(Some)
            .map_err(|_| invalid(format!("{PASSWORD_ENV} is not valid UTF-8"))),
        (None, Some(path)) => {
            use std::io::Read;
            let mut bytes = Vec::new();
            std::fs::File::open(path)
                .and_then(|f| f.take(MAX_PASSWORD_FILE_BYTES + 1).read_to_end(&mut bytes))
                .map_err(|e| Error::io(path, e).context("--backend-password-file"))?;
            let shown = path.display();
            if bytes.len() as u64 > MAX_PASSWORD_FILE_BYTES {
                return Err(invalid(format!(
                    "--backend-password-file {shown} is larger than {MAX_PASSWORD_FILE_BYTES} \
                     bytes: not a password file"
                )));
            }
            if bytes.last() == Some(&b'\n') {
                bytes.pop();
                if bytes.last() == Some(&b'\r') {
                    bytes.pop();
                }
            }
            let password = String::from_utf8(bytes).map_err(|_| {
                invalid(format!(
                    "--backend-password-file {shown} is not valid UTF-8"
                ))
            })?;
            if password.is_empty() {
                return Err(invalid(format!("--backend-password-file {shown} is empty")));
            }
            Ok(Some(password))
        }
    }
}
