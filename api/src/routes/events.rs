//! Reading a task's log: SSE that replays and then follows live, or an NDJSON export.

use axum::body::Body;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures::{Stream, StreamExt};
use serde::Deserialize;
use tokio::sync::OwnedSemaphorePermit;
use troupe_events::Event;
use troupe_events::event::is_terminal_kind;
use troupe_events::store::lines_pages;
use utoipa::IntoParams;
use uuid::Uuid;

use crate::auth::Reader;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Path, Query};
use crate::metrics::{Sent, StreamOpen};
use crate::openapi::{ONE_TASK, errors};
use crate::routes::tasks::owned_task;
use crate::state::AppState;

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct EventsQuery {
    /// Start after this seq (0: from the first event). `Last-Event-ID` wins over it.
    #[param(value_type = Option<u64>)]
    after: Option<String>,
}

/// The cursor a reconnecting `EventSource` sends by itself.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
pub struct EventsHeaders {
    /// The seq of the last event received: the stream resumes after it.
    #[param(rename = "Last-Event-ID", value_type = Option<u64>)]
    pub last_event_id: Option<String>,
}

/// The `?token=` of a task's `streamUrl`, read by the authentication of this endpoint.
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
pub struct StreamToken {
    /// The stream token of `streamUrl`; not needed with `Authorization: Bearer`.
    pub token: Option<String>,
}

errors!(
    EventsErrors = &["unauthorized"],
    ONE_TASK,
    &[
        "invalid_cursor",
        "cursor_out_of_range",
        "invalid_query",
        "unavailable"
    ],
);

fn parse_cursor(value: &str, source: &str) -> ApiResult<u64> {
    value.trim().parse::<u64>().map_err(|_| {
        ApiError::bad_request(
            "invalid_cursor",
            format!("{source} must be a whole number: the seq of the last event received"),
        )
    })
}

/// Follow or export a task's events
///
/// As Server-Sent Events (the default): the log from the cursor on, then live events as
/// they are stored, until the task's terminal event. Each event is one frame: `id` its
/// `seq`, `event` its `type`, `data` the event as JSON. A comment line is sent every 15 s.
/// A reconnect with `Last-Event-ID` resumes after that event, nothing lost or repeated.
///
/// With `Accept: application/x-ndjson`: the log as it is now, one JSON event per line, and
/// the response ends.
///
/// Authenticated by a session (`Authorization: Bearer`) or by the stream token in a
/// task's `streamUrl`, so that a browser's `EventSource` can follow a task by its URL.
#[utoipa::path(
    get,
    path = "/tasks/{id}/events",
    operation_id = "taskEvents",
    tag = "events",
    security(("session" = []), ("streamToken" = [])),
    params(
        ("id" = Uuid, Path, description = "The task's id."),
        EventsQuery,
        EventsHeaders,
        StreamToken,
    ),
    responses(
        (status = 200, description = "The events after the cursor, as SSE frames or NDJSON lines; each is an `Event`.",
            content(
                (Event = "text/event-stream"),
                (Event = "application/x-ndjson"),
            )),
        (status = 204, description = "The task has finished and nothing follows the cursor: an `EventSource` stops reconnecting."),
        EventsErrors,
    ),
)]
pub async fn events(
    State(state): State<AppState>,
    reader: Reader,
    Path(task_id): Path<Uuid>,
    Query(query): Query<EventsQuery>,
    headers: HeaderMap,
) -> ApiResult<Response> {
    if !reader.may_read(task_id) {
        return Err(ApiError::TaskNotFound);
    }
    let task = owned_task(&state, reader.user_id, task_id).await?;
    // Last-Event-ID is what a reconnecting EventSource sends: it wins over ?after.
    let cursor = match (headers.get("last-event-id"), query.after.as_deref()) {
        (Some(value), _) => parse_cursor(value.to_str().unwrap_or("-"), "Last-Event-ID")?,
        (None, Some(after)) => parse_cursor(after, "after")?,
        (None, None) => 0,
    };
    if cursor > task.last_seq {
        return Err(ApiError::bad_request(
            "cursor_out_of_range",
            format!(
                "this task's log ends at seq {}; the cursor {cursor} is beyond it",
                task.last_seq
            ),
        ));
    }
    let wants_ndjson = headers
        .get(header::ACCEPT)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.contains("application/x-ndjson"));
    if wants_ndjson {
        return Ok(export(&state, task_id, cursor));
    }
    if task.status.is_terminal() && cursor == task.last_seq {
        // Nothing more will ever come: 204 is what makes an EventSource stop reconnecting.
        return Ok(StatusCode::NO_CONTENT.into_response());
    }
    let permit = stream_permit(&state)?;
    let sent = Sent::new(task.last_seq);
    if task.status.is_terminal() {
        return Ok(sse(&state, permit, replay(&state, task_id, cursor, sent)));
    }
    let events = state.feeds.follow(task_id, cursor).await?;
    Ok(sse(
        &state,
        permit,
        events.map(move |event| {
            event.map(|e| {
                sent.event(e.seq);
                e.frame().clone()
            })
        }),
    ))
}

/// A frame's bytes besides its JSON and type: `id: `, the seq, `event: `, `data: ` and the
/// line feeds.
const FRAME_FIELDS_BYTES: usize = 48;

/// A finished task's log from the store, a page of frames per write, to its first
/// terminal event after `after` (as a live stream ends; a retry reopens a log after
/// one). Nothing live is needed, so no feed is started for it.
fn replay(
    state: &AppState,
    task_id: Uuid,
    after: u64,
    sent: Sent,
) -> impl Stream<Item = troupe_events::Result<Bytes>> + Send + 'static {
    let pages = lines_pages(state.backends.store.clone(), task_id, after, true);
    let mut ended = false;
    tokio_stream::StreamExt::map_while(pages, move |page| {
        if ended {
            return None;
        }
        Some(page.and_then(|lines| {
            let entries = lines.entries().ok_or_else(|| {
                troupe_events::Error::Corrupt("a replay's page came without its types".into())
            })?;
            let kinds_len = lines.kinds.as_ref().map_or(0, String::len);
            let mut frames = BytesMut::with_capacity(
                lines.ndjson.len() + kinds_len + lines.events * FRAME_FIELDS_BYTES,
            );
            let mut written = 0;
            for (seq, kind, json) in entries {
                crate::sse::write_entry(&mut frames, seq, kind, json);
                written += 1;
                if is_terminal_kind(kind) {
                    ended = true;
                    break;
                }
            }
            sent.replayed(written);
            Ok(frames.freeze())
        }))
    })
}

/// A place among the streams this process serves; taken before any work is done, so a
/// refused stream changes nothing.
pub fn stream_permit(state: &AppState) -> ApiResult<OwnedSemaphorePermit> {
    state
        .streams
        .clone()
        .try_acquire_owned()
        .map_err(|_| ApiError::Unavailable)
}

/// An SSE response over a stream of frames; a stream error ends the response, and the
/// client's reconnect (with Last-Event-ID) picks up where it stopped.
pub fn sse(
    state: &AppState,
    permit: OwnedSemaphorePermit,
    frames: impl Stream<Item = troupe_events::Result<Bytes>> + Send + 'static,
) -> Response {
    let frames = frames.take_until(state.closing.clone().cancelled_owned());
    let open = StreamOpen::new();
    // The permit lives as long as the stream: dropped when the client goes or it ends.
    let frames = tokio_stream::StreamExt::map_while(frames, move |frame| {
        let _held = (&permit, &open);
        match frame {
            Ok(frame) => Some(frame),
            Err(e) => {
                tracing::warn!(error = %e, "an event stream ended early");
                None
            }
        }
    });
    crate::sse::response(frames)
}

/// The log as it is now, one JSON event per line.
fn export(state: &AppState, task_id: Uuid, after: u64) -> Response {
    let pages = lines_pages(state.backends.store.clone(), task_id, after, false).map(|page| {
        page.map(|lines| lines.ndjson)
            .map_err(|e| std::io::Error::other(e.to_string()))
    });
    (
        [(header::CONTENT_TYPE, "application/x-ndjson")],
        Body::from_stream(pages),
    )
        .into_response()
}
