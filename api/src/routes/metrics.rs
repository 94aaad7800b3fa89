use axum::http::header;
use axum::response::IntoResponse;

/// The process's series in Prometheus' text format: the api's, the event log's and, when
/// embedded, the worker's.
pub async fn metrics() -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, troupe_events::metrics::CONTENT_TYPE)],
        troupe_events::metrics::render(),
    )
}
