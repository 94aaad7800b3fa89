use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;

use crate::state::AppState;

#[derive(Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "ok")]
    pub status: &'static str,
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Readiness {
    Ready,
    NotReady,
}

/// Whether one backend answered.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Check {
    Ok,
    Unreachable,
}

#[derive(Serialize, ToSchema)]
pub struct Ready {
    pub status: Readiness,
    /// The event store (PostgreSQL or SQLite).
    pub store: Check,
    /// The live event bus (NATS or in-process).
    pub bus: Check,
    /// The work queue (JetStream or in-process).
    pub queue: Check,
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
    (status, axum::Json(Ready::from(&readiness)))
}

impl From<&troupe_events::backend::Readiness> for Ready {
    /// What failed is logged, never answered.
    fn from(readiness: &troupe_events::backend::Readiness) -> Self {
        let check = |r: &troupe_events::Result<()>| match r {
            Ok(()) => Check::Ok,
            Err(e) => {
                tracing::warn!(error = %e, "readiness check failed");
                Check::Unreachable
            }
        };
        Ready {
            status: if readiness.is_ready() {
                Readiness::Ready
            } else {
                Readiness::NotReady
            },
            store: check(&readiness.store),
            bus: check(&readiness.bus),
            queue: check(&readiness.queue),
        }
    }
}
