//! The worker's own small HTTP port, for probes and Prometheus: `/healthz` (the process is
//! up), `/readyz` (its store, bus and queue answer) and `/metrics`. The api serves the same
//! paths on its port; embedded, that one port serves the api's and the worker's series.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use troupe_events::Backends;

pub fn router(backends: Backends) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(backends)
}

/// Serves the port until `shutdown`, with the process's metrics recorder installed.
pub async fn serve(
    listener: TcpListener,
    backends: Backends,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    crate::metrics::install();
    axum::serve(listener, router(backends))
        .with_graceful_shutdown(shutdown.cancelled_owned())
        .await
}

async fn healthz() -> axum::Json<Value> {
    axum::Json(json!({"status": "ok"}))
}

/// 200 when this worker can take work, 503 while its store, bus or queue is unreachable.
async fn readyz(
    State(backends): State<Backends>,
) -> (StatusCode, axum::Json<troupe_events::backend::Ready>) {
    let readiness = backends.readiness().await;
    let status = if readiness.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(readiness.report()))
}

async fn metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, troupe_events::metrics::CONTENT_TYPE)],
        troupe_events::metrics::render(),
    )
}
