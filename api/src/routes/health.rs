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
    let backends = &state.backends;
    let (store, bus, queue) = tokio::join!(
        backends.store.ping(),
        backends.bus.ping(),
        backends.queue.ping()
    );
    let check = |r: &troupe_events::Result<()>| match r {
        Ok(()) => Check::Ok,
        Err(e) => {
            tracing::warn!(error = %e, "readiness check failed");
            Check::Unreachable
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
        axum::Json(Ready {
            status: if ready {
                Readiness::Ready
            } else {
                Readiness::NotReady
            },
            store: check(&store),
            bus: check(&bus),
            queue: check(&queue),
        }),
    )
}
