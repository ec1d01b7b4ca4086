//! The HTTP endpoint of a running process: `/metrics` (Prometheus text), `/healthz` (alive) and
//! `/readyz` (ready, or 503 with the reason), over plain HTTP/1.
//!
//! ```no_run
//! # async fn f() -> template_cache_core::Result<()> {
//! use std::sync::Arc;
//! use template_cache_observe::{health::Health, http::MetricsServer};
//! let health = Arc::new(Health::new());
//! let cancel = tokio_util::sync::CancellationToken::new();
//! let server = MetricsServer::start("127.0.0.1:9187", Arc::clone(&health), cancel.clone()).await?;
//! println!("metrics on http://{}/metrics", server.local_addr());
//! cancel.cancel();
//! server.stopped().await;
//! # Ok(()) }
//! ```

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;
use template_cache_core::{Error, ErrorKind, Result};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::health::Health;

/// The content type of the Prometheus text exposition format.
pub const PROMETHEUS_CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the handlers share.
#[derive(Clone)]
struct Shared {
    health: Arc<Health>,
    metrics: PrometheusHandle,
}

/// A running `/metrics`, `/healthz`, `/readyz` endpoint; it stops when its cancellation token
/// fires.
#[derive(Debug)]
pub struct MetricsServer {
    local_addr: SocketAddr,
    task: JoinHandle<()>,
}

impl MetricsServer {
    /// Installs the metrics recorder ([`crate::metrics::install`]), binds `addr`
    /// (`HOST:PORT`; port 0 picks a free one) and serves until `cancel` fires. Must be called
    /// inside a tokio runtime.
    ///
    /// Fails, naming the address, if it does not resolve or cannot be bound (in use, no
    /// permission).
    pub async fn start(addr: &str, health: Arc<Health>, cancel: CancellationToken) -> Result<Self> {
        let metrics = crate::metrics::install()?;
        let listener = tokio::net::TcpListener::bind(addr).await.map_err(|e| {
            Error::new(
                ErrorKind::ConfigInvalid,
                format!("cannot listen on {addr} for metrics: {e}"),
            )
        })?;
        let local_addr = listener.local_addr().map_err(|e| {
            Error::new(
                ErrorKind::Io,
                format!("the metrics listener on {addr} has no address: {e}"),
            )
        })?;
        let app = router(health, metrics);
        let task = tokio::spawn(async move {
            let served = axum::serve(listener, app)
                .with_graceful_shutdown(async move { cancel.cancelled().await })
                .await;
            if let Err(e) = served {
                tracing::error!(error = %e, address = %local_addr, "the metrics endpoint stopped");
            }
        });
        tracing::info!(address = %local_addr, "serving /metrics, /healthz and /readyz");
        Ok(MetricsServer { local_addr, task })
    }

    /// The address the endpoint listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Waits until the server has stopped (after its cancellation token fired and open
    /// connections closed).
    pub async fn stopped(self) {
        let _ = self.task.await;
    }
}

/// The router of the endpoint: `/metrics`, `/healthz`, `/readyz`. Exposed so a service can
/// merge it into a router of its own.
pub fn router(health: Arc<Health>, metrics: PrometheusHandle) -> Router {
    Router::new()
        .route("/metrics", get(metrics_page))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .with_state(Shared { health, metrics })
}

async fn metrics_page(State(s): State<Shared>) -> Response {
    let text = s.metrics.render();
    ([(header::CONTENT_TYPE, PROMETHEUS_CONTENT_TYPE)], text).into_response()
}

async fn healthz() -> Response {
    (
        [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
        "ok\n",
    )
        .into_response()
}

/// 200 when ready, else 503; the body is JSON: `{"ready": bool, "reason": "...", "role": "..."}`.
async fn readyz(State(s): State<Shared>) -> Response {
    let ready = s.health.is_ready();
    let body = serde_json::json!({
        "ready": ready,
        "reason": if ready { String::new() } else { s.health.why_not_ready() },
        "role": s.health.role(),
    });
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        format!("{body}\n"),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One GET over a raw socket: status code and body.
    async fn get(addr: SocketAddr, path: &str) -> (u16, String) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes(),
        )
        .await
        .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        let status = out[9..12].parse().unwrap();
        let body = out.split_once("\r\n\r\n").unwrap().1.to_owned();
        (status, body)
    }

    #[tokio::test]
    async fn endpoints_answer_and_stop_on_cancel() {
        let health = Arc::new(Health::new());
        let cancel = CancellationToken::new();
        let server = MetricsServer::start("127.0.0.1:0", Arc::clone(&health), cancel.clone())
            .await
            .unwrap();
        let addr = server.local_addr();
        metrics::counter!(crate::metrics::names::TEMPLATES_WRITTEN).increment(1);
        let (code, body) = get(addr, "/metrics").await;
        assert_eq!(code, 200);
        assert!(body.contains("tcache_templates_written_total"), "{body}");
        assert_eq!(get(addr, "/healthz").await, (200, "ok\n".into()));
        health.set_role("standby");
        let (code, body) = get(addr, "/readyz").await;
        assert_eq!(code, 503);
        assert!(
            body.contains("\"reason\":\"starting\"") && body.contains("\"role\":\"standby\""),
            "{body}"
        );
        health.set_ready();
        assert_eq!(get(addr, "/readyz").await.0, 200);
        assert_eq!(get(addr, "/nothing").await.0, 404);

        let e = MetricsServer::start(&addr.to_string(), health, CancellationToken::new())
            .await
            .unwrap_err();
        assert!(
            e.to_string().contains(&format!("cannot listen on {addr}")),
            "{e}"
        );
        cancel.cancel();
        tokio::time::timeout(std::time::Duration::from_secs(5), server.stopped())
            .await
            .unwrap();
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }
}
