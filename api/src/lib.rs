//! Troupe's HTTP api: accounts, the agent catalogue, submitting tasks, and reading their
//! event logs over SSE. `endpoints` lists the api with its OpenAPI description, `router`
//! builds the app; `serve` runs it on a listener.

pub mod auth;
pub mod cli;
pub mod error;
pub mod extract;
pub mod guard;
pub mod metrics;
pub mod openapi;
pub mod routes;
pub mod server;
pub mod sse;
pub mod state;

use std::sync::Arc;
use std::time::Duration;

use axum::Extension;
use axum::Router;
use axum::body::Body;
use axum::extract::{DefaultBodyLimit, MatchedPath};
use axum::http::{Request, Response};
use axum::routing::get;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::trace::{DefaultOnResponse, OnResponse, TraceLayer};
use tracing::Span;
use troupe_events::dispatch::Outbox;
use troupe_events::providers::LiveDirectory;
use troupe_events::{Backends, Catalogue, FeedConfig, Feeds};
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub use crate::cli::ApiArgs;
use crate::error::ApiError;
pub use crate::state::{AppState, HttpConfig};

/// Everything the api needs besides the listener. Installs the process's metrics
/// recorder, which `/metrics` renders.
pub fn state(
    backends: Backends,
    catalogue: Catalogue,
    tokens: auth::Tokens,
    http: HttpConfig,
) -> AppState {
    metrics::install();
    let feeds = Feeds::new(
        backends.store.clone(),
        backends.bus.clone(),
        FeedConfig {
            encode: sse::frame,
            ..FeedConfig::default()
        },
    );
    AppState {
        outbox: Outbox::start(backends.store.clone(), backends.queue.clone()),
        streams: Arc::new(tokio::sync::Semaphore::new(http.max_streams.max(1))),
        guard: Arc::new(guard::Guard::new(http.limits.clone())),
        providers: Arc::new(LiveDirectory::new(
            backends.store.clone(),
            LiveDirectory::DEFAULT_MAX_AGE,
        )),
        backends,
        feeds,
        catalogue: Arc::new(catalogue),
        tokens,
        http,
        closing: CancellationToken::new(),
    }
}

/// Every endpoint with its OpenAPI description: each handler is registered from its
/// `#[utoipa::path]`, so the document (`openapi::document`) cannot miss a route.
pub fn endpoints() -> OpenApiRouter<AppState> {
    use routes::*;
    let api = OpenApiRouter::default()
        .routes(routes!(auth::register))
        .routes(routes!(auth::login))
        .routes(routes!(auth::logout))
        .routes(routes!(auth::change_password))
        .routes(routes!(auth::current))
        .routes(routes!(auth::delete_account))
        .routes(routes!(catalogue::agents))
        .routes(routes!(catalogue::providers))
        .routes(routes!(execute::execute))
        .routes(routes!(execute::execute_stream))
        .routes(routes!(tasks::create, tasks::list))
        .routes(routes!(tasks::get, control::delete))
        .routes(routes!(events::events))
        .routes(routes!(control::cancel))
        .routes(routes!(control::cancel_agent))
        .routes(routes!(control::pause))
        .routes(routes!(control::resume))
        .routes(routes!(control::retry))
        .routes(routes!(usage::usage))
        .routes(routes!(stats::stats))
        .routes(routes!(docs::openapi_json))
        .routes(routes!(docs::page))
        // The reference page's script, not an endpoint.
        .route("/docs/redoc.standalone.js", get(docs::redoc));
    OpenApiRouter::with_openapi(openapi::ApiDoc::openapi())
        .nest("/api", api)
        .routes(routes!(health::healthz))
        .routes(routes!(health::readyz))
        .routes(routes!(metrics::metrics))
}

pub fn router(state: AppState) -> Router {
    use routes::*;
    let (endpoints, document) = endpoints().split_for_parts();
    let document = openapi::finish(document);
    endpoints
        .route("/", get(ui::index))
        .route("/login", get(ui::index))
        .route("/new", get(ui::index))
        .route("/tasks", get(ui::index))
        .route("/tasks/{id}", get(ui::index))
        .route("/usage", get(ui::index))
        .route("/ui/{*path}", get(ui::asset))
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .layer(Extension(docs::Document::new(&document)))
        .layer(DefaultBodyLimit::max(state.http.max_body_bytes))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_response(request_done),
        )
        .layer(CatchPanicLayer::new())
        .with_state(state)
}

/// Each request's span, at INFO so that the default log filter keeps it: a task's trace
/// starts at the request that submitted it, or joins the caller's trace when the request
/// carries a `traceparent`. Health probes get a DEBUG span, which stays out of traces.
fn request_span(request: &Request<Body>) -> Span {
    let method = request.method().as_str();
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map(MatchedPath::as_str);
    if matches!(route, Some("/healthz" | "/readyz")) {
        return tracing::debug_span!("request", http.request.method = %method, http.route = route);
    }
    let span = tracing::info_span!(
        "request",
        otel.name = %route.map_or_else(|| method.to_string(), |route| format!("{method} {route}")),
        otel.kind = "server",
        http.request.method = %method,
        http.route = route,
        http.response.status_code = tracing::field::Empty,
        otel.status_code = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    );
    let caller: troupe_events::trace::TraceHeaders = ["traceparent", "tracestate"]
        .into_iter()
        .filter_map(|name| {
            let value = request.headers().get(name)?.to_str().ok()?;
            Some((name.to_string(), value.to_string()))
        })
        .collect();
    troupe_events::trace::link(&span, &caller);
    troupe_events::trace::record_trace_id(&span);
    span
}

/// The response's status on the request's span (a 5xx marks it failed); then tower-http's
/// own log line, at DEBUG.
fn request_done(response: &Response<Body>, latency: Duration, span: &Span) {
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "error");
    }
    DefaultOnResponse::default().on_response(response, latency, span);
}

async fn not_found() -> ApiError {
    ApiError::Rejected {
        status: axum::http::StatusCode::NOT_FOUND,
        code: "not_found",
        message: "no such endpoint".into(),
    }
}

async fn method_not_allowed() -> ApiError {
    ApiError::Rejected {
        status: axum::http::StatusCode::METHOD_NOT_ALLOWED,
        code: "method_not_allowed",
        message: "this endpoint does not accept that method".into(),
    }
}

/// Serves until `shutdown`, and meanwhile runs the outbox dispatcher, so that a task
/// committed by this process always reaches the queue.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    let dispatcher = tokio::spawn(state.outbox.clone().run_dispatcher(
        Duration::from_secs(2),
        Duration::from_secs(5),
        shutdown.clone(),
    ));
    let closing = state.closing.clone();
    let stop = CancellationToken::new();
    let stopping = {
        let (shutdown, stop) = (shutdown.clone(), stop.clone());
        async move {
            shutdown.cancelled().await;
            // Streams end first, so that graceful shutdown does not wait for tasks.
            closing.cancel();
            stop.cancel();
        }
    };
    tokio::join!(server::run(listener, router(state), stop), stopping);
    shutdown.cancel();
    dispatcher.await?;
    Ok(())
}
