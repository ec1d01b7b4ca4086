#![doc = include_str!("../README.md")]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;
use template_cache::minijinja::minijinja::{self, Environment, context};
use template_cache::minijinja::{CacheLoader, CachedEnvironment, LoaderConfig};
use template_cache::{Namespace, SourceConfig};

const USAGE: &str = "\
usage: tcache-web-example [--backend URL] [--namespace NS] [--listen ADDR] [--refresh DURATION]
                          [--read-through DIR]

  --backend URL         cache backend (env TCACHE_BACKEND; default redis://127.0.0.1:6379)
  --namespace NS        namespace the templates were warmed into (env TCACHE_NAMESPACE; default tpl)
  --listen ADDR         address to serve on; port 0 picks a free one (env WEB_LISTEN;
                        default 127.0.0.1:3000)
  --refresh DURATION    how often held templates are re-read: the staleness bound
                        (env TCACHE_REFRESH; default 5s)
  --read-through DIR    serve files from DIR on a miss or a corrupt entry, read-only
                        (env TCACHE_READ_THROUGH; default: off)

Prints `listening on http://ADDR` on stdout once it accepts connections.";

/// Settings from the command line and the environment.
#[derive(Debug)]
struct Settings {
    backend: String,
    namespace: String,
    listen: String,
    refresh: Duration,
    read_through: Option<String>,
}

fn settings() -> Result<Settings, String> {
    let env = |name: &str| std::env::var(name).ok().filter(|v| !v.is_empty());
    let mut s = Settings {
        backend: env("TCACHE_BACKEND").unwrap_or_else(|| "redis://127.0.0.1:6379".into()),
        namespace: env("TCACHE_NAMESPACE").unwrap_or_else(|| "tpl".into()),
        listen: env("WEB_LISTEN").unwrap_or_else(|| "127.0.0.1:3000".into()),
        refresh: Duration::from_secs(5),
        read_through: env("TCACHE_READ_THROUGH"),
    };
    let mut refresh = env("TCACHE_REFRESH");
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        if flag == "-h" || flag == "--help" {
            return Err(String::new());
        }
        let value = args.next().ok_or_else(|| format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--backend" => s.backend = value,
            "--namespace" => s.namespace = value,
            "--listen" => s.listen = value,
            "--refresh" => refresh = Some(value),
            "--read-through" => s.read_through = Some(value),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if let Some(r) = refresh {
        s.refresh = humantime::parse_duration(&r).map_err(|e| format!("--refresh {r:?}: {e}"))?;
    }
    Ok(s)
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let settings = match settings() {
        Ok(s) => s,
        Err(e) => {
            if !e.is_empty() {
                eprintln!("error: {e}\n");
            }
            eprintln!("{USAGE}");
            return std::process::ExitCode::from(if e.is_empty() { 0 } else { 2 });
        }
    };
    match run(settings).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn run(settings: Settings) -> Result<(), Box<dyn std::error::Error>> {
    let backend = template_cache::open(&settings.backend).await?;
    let mut config = LoaderConfig::new(Namespace::new(settings.namespace)?);
    config.refresh_interval = settings.refresh;
    config.read_through = settings.read_through.map(SourceConfig::new);
    let loader = CacheLoader::new(backend, config)?;
    // Hold every template of the namespace before the first request; the refresher keeps them
    // current.
    let report = loader.preload_index().await?;
    tracing::info!(
        loaded = report.loaded,
        failed = report.failed.len(),
        "templates loaded from {}",
        template_cache::url::redact(&settings.backend)
    );
    for (name, e) in &report.failed {
        tracing::warn!(name, error = %e, "template could not be loaded");
    }
    let _refresher = loader.spawn_refresher();

    let mut base = Environment::new();
    base.add_global("site_name", "template-cache example");
    let templates = Arc::new(CachedEnvironment::new(loader, base));
    let app = Router::new()
        .route("/", get(home))
        .route("/healthz", get(|| async { "ok" }))
        .route("/{page}", get(page))
        .with_state(templates);

    let listener = tokio::net::TcpListener::bind(&settings.listen).await?;
    let addr: SocketAddr = listener.local_addr()?;
    println!("listening on http://{addr}");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown())
        .await?;
    Ok(())
}

async fn shutdown() {
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

type Templates = State<Arc<CachedEnvironment>>;

async fn home(State(templates): Templates) -> Response {
    render(&templates, "pages/index.html", "/").await
}

async fn page(State(templates): Templates, Path(page): Path<String>) -> Response {
    let valid = !page.is_empty()
        && page
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-');
    if !valid || page == "index" {
        return not_found();
    }
    render(
        &templates,
        &format!("pages/{page}.html"),
        &format!("/{page}"),
    )
    .await
}

async fn render(templates: &CachedEnvironment, name: &str, path: &str) -> Response {
    match templates.render(name, context! { path => path }).await {
        Ok(html) => Html(html).into_response(),
        // The page itself is not a template (a missing `include` inside a page names the page
        // that includes it, and is a server error).
        Err(e) if e.kind() == minijinja::ErrorKind::TemplateNotFound && e.name().is_none() => {
            not_found()
        }
        Err(e) => {
            tracing::error!(template = name, error = %e, "render failed");
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                "could not render the page\n",
            )
                .into_response()
        }
    }
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "no such page\n").into_response()
}
