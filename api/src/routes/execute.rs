//! The original endpoints, kept for existing clients: submit and stream in one request,
//! or submit and wait for the result.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt;
use serde_json::{Value, json};
use troupe_events::RawEvent;

use crate::auth::AuthUser;
use crate::error::{ApiError, ApiResult};
use crate::extract::Json;
use crate::metrics::Sent;
use crate::routes::events::{sse, stream_permit};
use crate::routes::tasks::{TaskRequest, submit, view};
use crate::state::AppState;

/// The events, then the original closing event: `complete` (`{"taskId"}`) or `error`
/// (`{"error"}`).
pub async fn execute_stream(
    State(state): State<AppState>,
    user: AuthUser,
    headers: HeaderMap,
    Json(body): Json<TaskRequest>,
) -> ApiResult<Response> {
    let permit = stream_permit(&state)?;
    let submitted = submit(&state, user, &headers, body).await?;
    let (task_id, sent) = (submitted.task().id, Sent::new(submitted.task().last_seq));
    let events = state.feeds.follow(task_id, 0).await?;
    let with_closing = events.flat_map(move |event| {
        if let Ok(event) = &event {
            sent.event(event.seq);
        }
        let frames = match event {
            Ok(event) if event.is_terminal() => {
                vec![Ok(event.frame().clone()), Ok(closing(&event))]
            }
            Ok(event) => vec![Ok(event.frame().clone())],
            Err(e) => vec![Err(e)],
        };
        futures::stream::iter(frames)
    });
    Ok(sse(&state, permit, with_closing))
}

/// The original closing event after the terminal one: `complete` (`{"taskId"}`) or
/// `error` (`{"error"}`).
fn closing(terminal: &RawEvent) -> Bytes {
    if terminal.kind == "task_complete" {
        let data = json!({"taskId": terminal.task_id}).to_string();
        return crate::sse::named_frame(None, "complete", data.as_bytes());
    }
    let error = serde_json::from_slice::<Value>(&terminal.json)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| "the task failed".into());
    let data = json!({"error": error}).to_string();
    crate::sse::named_frame(None, "error", data.as_bytes())
}

/// Waits for the task to end and returns its view (as `GET /api/tasks/{id}`, without a
/// `streamUrl`: there is nothing left to stream).
pub async fn execute(
    State(state): State<AppState>,
    user: AuthUser,
    headers: HeaderMap,
    Json(body): Json<TaskRequest>,
) -> ApiResult<axum::Json<Value>> {
    // Waiting follows the task's events like a stream does, so it counts as one.
    let _permit = stream_permit(&state)?;
    let task_id = submit(&state, user, &headers, body).await?.task().id;
    // Shutdown must not wait for the task: it goes on elsewhere, and the client learns
    // where to find it.
    let closing = state.closing.clone().cancelled_owned();
    let mut events = std::pin::pin!(state.feeds.follow(task_id, 0).await?.take_until(closing));
    let mut ended = false;
    while let Some(event) = events.next().await {
        ended = event?.is_terminal();
    }
    if !ended {
        return Err(ApiError::Rejected {
            status: axum::http::StatusCode::SERVICE_UNAVAILABLE,
            code: "shutting_down",
            message: format!(
                "this server is shutting down; task {task_id} goes on: read it at /api/tasks/{task_id}"
            ),
        });
    }
    let task = state
        .backends
        .store
        .task(task_id)
        .await?
        .ok_or(ApiError::TaskNotFound)?;
    let view = view(&state, &task).await?;
    Ok(axum::Json(
        serde_json::to_value(view).map_err(anyhow::Error::from)?,
    ))
}
