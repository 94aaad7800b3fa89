use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use troupe_events::backend::Ready;
use utoipa::ToSchema;

use crate::state::AppState;

#[derive(Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: &'static str,
}

/// Liveness
///
/// The process is up and serving.
#[utoipa::path(
    get,
    path = "/healthz",
    operation_id = "healthz",
    tag = "health",
    responses((status = 200, description = "Up.", body = Health)),
)]
pub async fn healthz() -> axum::Json<Health> {
    axum::Json(Health { status: "ok" })
}

/// Readiness
///
/// The store, bus and queue answer: this process can take work.
#[utoipa::path(
    get,
    path = "/readyz",
    operation_id = "readyz",
    tag = "health",
    responses(
        (status = 200, description = "Every backend answered.", body = Ready),
        (status = 503, description = "A backend did not answer; it is marked `unreachable`.", body = Ready),
    ),
)]
pub async fn readyz(State(state): State<AppState>) -> (StatusCode, axum::Json<Ready>) {
    let readiness = state.backends.readiness().await;
    let status = if readiness.is_ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (status, axum::Json(readiness.report()))
}
