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
    let backends = &state.backends;
    let (store, bus, queue) = tokio::join!(
        backends.store.ping(),
        backends.bus.ping(),
        backends.queue.ping()
    );
    let check = |r: &troupe_events::Result<()>| match r {
        Ok(()) => json!("ok"),
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            json!("unreachable")
        }
    };
    let ready = store.is_ok() && bus.is_ok() && queue.is_ok();
    let status = if ready {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (
        status,
        axum::Json(json!({
            "status": if ready { "ready" } else { "not_ready" },
            "store": check(&store),
            "bus": check(&bus),
            "queue": check(&queue),
        })),
    )
}
