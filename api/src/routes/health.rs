use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::state::AppState;

/// The process is up and serving.
pub async fn healthz() -> axum::Json<Value> {
    axum::Json(json!({"status": "ok"}))
}

/// The store, bus and queue answer: this process can take work.
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, axum::Json<Value>) {
    let readiness = state.backends.readiness().await;
    let status = if readiness.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(readiness.to_json()))
}
