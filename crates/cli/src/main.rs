//! `tcache`: warm and check template caches from the shell.
//!
//! Exit codes: 0 success / consistent; 1 inconsistencies found (check) or templates failed
//! (warm); 2 usage, configuration or fatal error; 3 a resolution refused by a safety threshold.

mod args;
mod commands;
mod output;
mod progress;

use std::process::ExitCode;

use clap::Parser;
use template_cache::{ErrorKind, Namespace};

use crate::args::{Cli, Command};

/// Exit code: success, cache consistent.
const EXIT_OK: u8 = 0;
/// Exit code: inconsistencies found, or templates failed to warm.
const EXIT_FOUND: u8 = 1;
/// Exit code: usage, configuration or fatal error.
const EXIT_FATAL: u8 = 2;
/// Exit code: a resolution was refused by a safety threshold; nothing was changed.
const EXIT_REFUSED: u8 = 3;

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

/// Runs the command and turns an error into its report and exit code.
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
    let backend = template_cache::open(&cli.backend).await?;
    match &cli.command {
        Command::Warm(args) => commands::warm::run(cli, backend, namespace, args).await,
        Command::Check(args) => commands::check::run(cli, backend, namespace, args).await,
        Command::Get { name } => commands::get::run(cli, backend, namespace, name).await,
        Command::List => commands::list::run(cli, backend, namespace).await,
    }
}
