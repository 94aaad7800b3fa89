use axum::http::header;
use axum::response::IntoResponse;

/// Prometheus metrics
///
/// The process's series in Prometheus' text format: the api's, the event log's and, when
/// embedded, the worker's. Every series is listed in the README's Metrics section.
#[utoipa::path(
    get,
    path = "/metrics",
    operation_id = "metrics",
    tag = "health",
    responses((status = 200, description = "Prometheus text exposition format 0.0.4.", content_type = "text/plain", body = String)),
)]
pub async fn metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, troupe_events::metrics::CONTENT_TYPE)],
        troupe_events::metrics::render(),
    )
}
