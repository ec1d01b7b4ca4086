//! `tcache`: warm and check template caches from the shell.
//!
//! Exit codes: 0 success / consistent; 1 inconsistencies found (check) or templates failed
//! (warm); 2 usage, configuration or fatal error; 3 a resolution refused by a safety threshold;
//! 4 the namespace is busy (another writer holds its write lease).

mod args;
mod commands;
mod output;
mod progress;

use std::process::ExitCode;
use std::sync::RwLock;

use clap::Parser;
use template_cache::url::{BackendUrl, Secrets};
use template_cache::{Error, ErrorKind, Namespace};

use crate::args::{Cli, Command, PASSWORD_ENV};

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
fn remember(secrets: Secrets) {
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

fn main() -> ExitCode {
    // A backend URL given where another argument was expected would be echoed by a usage error.
    for arg in std::env::args_os().skip(1) {
        let arg = arg.to_string_lossy();
        let value = match arg.strip_prefix("--") {
            Some(flag) => flag.split_once('=').map_or("", |(_, v)| v),
            None => &arg,
        };
        if value.contains('@') {
            remember(Secrets::of(value));
        }
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if e.use_stderr() => {
            let styled = e.render();
            let text = if std::io::IsTerminal::is_terminal(&std::io::stderr()) {
                styled.ansi().to_string()
            } else {
                styled.to_string()
            };
            eprint!("{}", scrubbed(&text));
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
        .with_writer(|| ScrubbingStderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .try_init();
}

/// Standard error with every known secret scrubbed: the log writer. The formatter writes each
/// event whole, so a secret is never split between two writes.
struct ScrubbingStderr;

impl std::io::Write for ScrubbingStderr {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let text = String::from_utf8_lossy(buf);
        std::io::stderr().write_all(scrubbed(&text).as_bytes())?;
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        std::io::stderr().flush()
    }
}

/// Runs the command and turns an error into its report and exit code.
async fn run(cli: Cli) -> u8 {
    match dispatch(&cli).await {
        Ok(code) => code,
        Err(e) => {
            let report = scrubbed(&e.to_report_string());
            if cli.json {
                output::print_json(
                    &serde_json::json!({ "error": report, "kind": e.kind().as_str() }),
                );
            }
            eprintln!("tcache: {report}");
            match e.kind() {
                ErrorKind::Refused => EXIT_REFUSED,
                ErrorKind::Conflict => EXIT_BUSY,
                _ => EXIT_FATAL,
            }
        }
    }
}

async fn dispatch(cli: &Cli) -> template_cache::Result<u8> {
    let namespace = Namespace::new(&cli.namespace).map_err(|e| e.context("--namespace"))?;
    let url = backend_url(cli)?;
    let backend = template_cache::open(&url).await?;
    match &cli.command {
        Command::Warm(args) => commands::warm::run(cli, backend, namespace, args).await,
        Command::Check(args) => commands::check::run(cli, backend, namespace, args).await,
        Command::Get { name } => commands::get::run(cli, backend, namespace, name).await,
        Command::List => commands::list::run(cli, backend, namespace).await,
    }
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
