//! The original endpoints, kept for existing clients: submit and stream in one request,
//! or submit and wait for the result.

use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::Response;
use bytes::Bytes;
use futures::StreamExt;
use serde::Serialize;
use serde_json::Value;
use troupe_events::{Event, RawEvent, TaskView};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::error::{ApiError, ApiResult};
use crate::extract::Json;
use crate::metrics::Sent;
use crate::openapi::{JSON_BODY, SIGNED_IN, SUBMIT, errors};
use crate::routes::events::{sse, stream_permit};
use crate::routes::tasks::{SubmitHeaders, TaskRequest, submit, view};
use crate::state::AppState;

/// The `data` of a frame of `POST /api/agents/execute/stream`: an event (its frame named
/// by its `type`), then the closing frame, named `complete` or `error`, without an `id`.
#[derive(Serialize, ToSchema)]
#[serde(untagged)]
pub enum ExecuteFrame {
    /// An event, in a frame named by its `type`.
    // Sent as stored, never built here.
    #[allow(dead_code)]
    Event(Event),
    Complete(Completed),
    Error(Failed),
}

/// The closing frame `complete`, after `task_complete`.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Completed {
    pub task_id: Uuid,
}

/// The closing frame `error`, after `task_error` or `task_cancelled`.
#[derive(Serialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct Failed {
    /// The terminal event's `error`, or `the task failed`.
    pub error: String,
}

errors!(
    ExecuteErrors = SIGNED_IN,
    JSON_BODY,
    SUBMIT,
    &["shutting_down"]
);
errors!(ExecuteStreamErrors = SIGNED_IN, JSON_BODY, SUBMIT);

/// Submit a task and stream it (original endpoint)
///
/// Submits like `POST /api/tasks` and answers with the task's events from the first, as
/// `GET /api/tasks/{id}/events` streams them, then one closing frame without an `id`:
/// `complete` (`{"taskId"}`) after `task_complete`, or `error` (`{"error"}`) after
/// `task_error` or `task_cancelled`. When this process already serves its limit of
/// streams it answers 503 and submits nothing.
#[utoipa::path(
    post,
    path = "/agents/execute/stream",
    operation_id = "executeStream",
    tag = "tasks",
    security(("session" = [])),
    params(SubmitHeaders),
    request_body = TaskRequest,
    responses(
        (status = 200, description = "SSE frames: the events, then `complete` or `error`.", body = ExecuteFrame, content_type = "text/event-stream"),
        ExecuteStreamErrors,
    ),
)]
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
        let data = serde_json::to_vec(&ExecuteFrame::Complete(Completed {
            task_id: terminal.task_id,
        }))
        .expect("a closing frame always serialises");
        return crate::sse::named_frame(None, "complete", &data);
    }
    let error = serde_json::from_slice::<Value>(&terminal.json)
        .ok()
        .and_then(|v| v["error"].as_str().map(str::to_string))
        .unwrap_or_else(|| "the task failed".into());
    let data = serde_json::to_vec(&ExecuteFrame::Error(Failed { error }))
        .expect("a closing frame always serialises");
    crate::sse::named_frame(None, "error", &data)
}

/// Submit a task and wait for it (original endpoint)
///
/// Submits like `POST /api/tasks`, waits until the task ends and returns it as
/// `GET /api/tasks/{id}` does, without `streamUrl`: a failed task is still a 200, with
/// `"status": "failed"`. Waiting counts as one of this process's streams.
#[utoipa::path(
    post,
    path = "/agents/execute",
    operation_id = "execute",
    tag = "tasks",
    security(("session" = [])),
    params(SubmitHeaders),
    request_body = TaskRequest,
    responses(
        (status = 200, description = "The task, ended.", body = TaskView),
        ExecuteErrors,
    ),
)]
pub async fn execute(
    State(state): State<AppState>,
    user: AuthUser,
    headers: HeaderMap,
    Json(body): Json<TaskRequest>,
) -> ApiResult<axum::Json<TaskView>> {
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
    Ok(axum::Json(view(&state, &task).await?))
}
