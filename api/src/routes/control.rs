//! Users' control over a task: cancel it or one of its agents, pause and resume it, retry
//! what failed. A task no worker runs (queued, paused, finished) is changed here at once,
//! with one event appended under the log's fence; a running task's worker is asked through
//! the store and nudged on the bus, and writes the outcome itself.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use troupe_events::task::AgentState;
use troupe_events::{
    ControlRequest, Deletion, Dispatch, EventBody, TaskRecord, TaskStatus, Transition,
    Transitioned, millis_since,
};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::error::{ApiError, ApiResult};
use crate::extract::Path;
use crate::openapi::{ONE_TASK, SIGNED_IN, errors};
use crate::routes::tasks::{owned_task, stream_url, truncate, view};
use crate::state::AppState;

type Answer<T = Control> = ApiResult<(StatusCode, axum::Json<T>)>;

/// What a cancel, pause or resume did: changed the task at once (200), or asked its
/// worker, which writes the outcome in the log (202).
#[derive(Debug, Clone, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Control {
    pub task_id: Uuid,
    /// The task's status after the request; `running` while its worker is asked.
    pub status: TaskStatus,
    /// `true`: the worker was asked to cancel the task.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cancel_requested: Option<bool>,
    /// `true`: the worker was asked to pause the task once its running agents finish.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pause_requested: Option<bool>,
}

impl Control {
    fn status(task_id: Uuid, status: TaskStatus) -> Self {
        Control {
            task_id,
            status,
            cancel_requested: None,
            pause_requested: None,
        }
    }
}

/// An agent's cancel, asked of the task's worker.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentCancel {
    pub task_id: Uuid,
    pub agent_role: String,
    /// The attempt that is cancelled; a later retry is not.
    pub attempt: u32,
    pub cancel_requested: bool,
}

/// A retry, queued.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Retry {
    pub task_id: Uuid,
    pub status: TaskStatus,
    /// The agents that run again.
    pub agents: Vec<String>,
    /// A fresh stream URL for the task (see `TaskAccepted.streamUrl`).
    pub stream_url: String,
}

errors!(
    CancelErrors = SIGNED_IN,
    ONE_TASK,
    &["task_finished", "task_busy"]
);
errors!(
    CancelAgentErrors = SIGNED_IN,
    ONE_TASK,
    &["agent_not_found", "task_finished", "agent_not_running"],
);
errors!(
    PauseErrors = SIGNED_IN,
    ONE_TASK,
    &["task_finished", "task_busy"]
);
errors!(
    ResumeErrors = SIGNED_IN,
    ONE_TASK,
    &["task_not_paused", "task_busy"]
);
errors!(
    RetryErrors = SIGNED_IN,
    ONE_TASK,
    &[
        "invalid_body",
        "unknown_agent",
        "task_not_finished",
        "nothing_to_retry",
        "agent_succeeded",
        "agent_not_retryable",
    ],
);

/// A status can change between reading it and acting on it (a worker picks the task up, a
/// pause takes effect); each action reads again and retries this many times.
const RACES: usize = 3;

const BY_USER: &str = "cancelled by a user";

fn finished(task: &TaskRecord) -> ApiError {
    ApiError::Conflict {
        code: "task_finished",
        message: format!(
            "task {} has already ended ({})",
            task.id,
            task.status.as_str()
        ),
    }
}

fn answer<T>(status: StatusCode, body: T) -> Answer<T> {
    Ok((status, axum::Json(body)))
}

/// A task of the user's left the active ones (cancelled or paused here, or deleted):
/// one of their waiting tasks may take its place.
async fn admit_waiting(state: &AppState, user: AuthUser) {
    if let Some(limit) = state.backends.active_tasks_per_user {
        let backends = &state.backends;
        troupe_events::dispatch::admit(
            backends.store.as_ref(),
            backends.queue.as_ref(),
            user.id,
            limit,
        )
        .await;
    }
}

/// Asks the task's worker to look at its controls now rather than at its next poll.
async fn nudge(state: &AppState, task_id: Uuid) {
    if let Err(e) = state.backends.bus.nudge(task_id).await {
        tracing::warn!(%task_id, error = %e, "nudging the task's worker failed; it polls");
    }
}

/// What a control endpoint does for a task in the status it has just been read in.
enum Step {
    /// The answer, whatever happens next.
    Answer(Answer),
    /// Change the task here, then answer `status` and `body` (and queue the task when the
    /// transition requeues it).
    Transition(Transition, StatusCode, Control),
    /// Ask the task's worker, then answer.
    Request(ControlRequest, StatusCode, Control),
}

/// Reads the task, takes the step `decide` chooses for its status, and when the status
/// moved on meanwhile (the step was refused), reads it again and decides again.
async fn drive(
    state: &AppState,
    user: AuthUser,
    task_id: Uuid,
    decide: impl Fn(&TaskRecord) -> Step,
) -> Answer {
    let mut task = owned_task(state, user.id, task_id).await?;
    for _ in 0..RACES {
        match decide(&task) {
            Step::Answer(answer) => return answer,
            Step::Transition(transition, status, body) => {
                if let Some(applied) = transitioned(state, task_id, &transition).await? {
                    match applied.to_queue() {
                        Some(dispatch) => queue(state, dispatch).await,
                        // Out of the active ones (or back among the waiting): another
                        // of the user's waiting tasks may take its place.
                        None => admit_waiting(state, user).await,
                    }
                    return answer(status, body);
                }
            }
            Step::Request(control, status, body) => {
                if request(state, task_id, &control).await? {
                    return answer(status, body);
                }
            }
        }
        task = owned_task(state, user.id, task_id).await?;
    }
    Err(busy())
}

/// Cancel a task
///
/// A task no worker runs (queued, paused) is cancelled at once (200, `task_cancelled` in
/// its log); a running task's worker is asked (202): it stops the agents at once, keeps
/// their partial output in `agent_cancelled`, and ends the log with `task_cancelled`.
#[utoipa::path(
    post,
    path = "/tasks/{id}/cancel",
    operation_id = "cancelTask",
    tag = "control",
    security(("session" = [])),
    params(("id" = Uuid, Path, description = "The task's id.")),
    responses(
        (status = 200, description = "Cancelled.", body = Control),
        (status = 202, description = "The task's worker is asked to cancel it.", body = Control),
        CancelErrors,
    ),
)]
pub async fn cancel(
    State(state): State<AppState>,
    user: AuthUser,
    Path(task_id): Path<Uuid>,
) -> Answer {
    drive(&state, user, task_id, |task| match task.status {
        status if status.is_terminal() => Step::Answer(Err(finished(task))),
        TaskStatus::Queued | TaskStatus::Paused => Step::Transition(
            Transition {
                from: vec![TaskStatus::Queued, TaskStatus::Paused],
                body: EventBody::TaskCancelled {
                    usage: None,
                    reason: BY_USER.into(),
                    total_execution_time: millis_since(task.created_at),
                },
                requeue: false,
                active_limit: None,
            },
            StatusCode::OK,
            Control::status(task_id, TaskStatus::Cancelled),
        ),
        _ => Step::Request(
            ControlRequest::Cancel,
            StatusCode::ACCEPTED,
            Control {
                cancel_requested: Some(true),
                ..Control::status(task_id, TaskStatus::Running)
            },
        ),
    })
    .await
}

/// A task deletion that waits for the task's worker to stop it.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Deleting {
    pub task_id: Uuid,
    /// `true`: the task is hidden and its worker asked to cancel it; its log and artifacts
    /// are deleted once it has stopped.
    pub delete_requested: bool,
}

errors!(DeleteErrors = SIGNED_IN, ONE_TASK, &["task_busy"]);

/// Delete a task
///
/// The task, its log and its artifacts are deleted. A task that has ended goes at once
/// (204). One that runs is hidden at once (404 from now on), cancelled, and deleted
/// when its worker has stopped it (202). A task queued or paused is cancelled here, then
/// deleted (204). Its events also leave the event stream that analytics consumers read;
/// figures already counted from them (`/api/stats`) stay.
#[utoipa::path(
    delete,
    path = "/tasks/{id}",
    operation_id = "deleteTask",
    tag = "control",
    security(("session" = [])),
    params(("id" = Uuid, Path, description = "The task's id.")),
    responses(
        (status = 204, description = "Deleted."),
        (status = 202, description = "Hidden and being cancelled; deleted once stopped.", body = Deleting),
        DeleteErrors,
    ),
)]
pub async fn delete(
    State(state): State<AppState>,
    user: AuthUser,
    Path(task_id): Path<Uuid>,
) -> ApiResult<axum::response::Response> {
    use axum::response::IntoResponse;
    let task = owned_task(&state, user.id, task_id).await?;
    if !task.status.is_terminal() {
        match cancel(State(state.clone()), user, Path(task_id)).await {
            // It ended meanwhile: nothing to stop.
            Ok(_)
            | Err(ApiError::Conflict {
                code: "task_finished",
                ..
            }) => {}
            Err(other) => return Err(other),
        }
    }
    match state.backends.store.delete_task(task_id).await? {
        Deletion::Deleted => {
            troupe_events::sweep::forget(state.backends.bus.as_ref(), task_id).await;
            admit_waiting(&state, user).await;
            tracing::info!(%task_id, "task deleted");
            Ok(StatusCode::NO_CONTENT.into_response())
        }
        Deletion::Marked => {
            tracing::info!(%task_id, "task marked for deletion once its worker stops it");
            Ok((
                StatusCode::ACCEPTED,
                axum::Json(Deleting {
                    task_id,
                    delete_requested: true,
                }),
            )
                .into_response())
        }
        Deletion::Missing => Err(ApiError::TaskNotFound),
    }
}

/// Cancel one agent
///
/// Asks the task's worker to stop the agent's current attempt. In a parallel run the
/// others go on; in a sequential run the run stops there. The task then ends with
/// `task_cancelled` naming the agent, unless another failed (`task_error`).
#[utoipa::path(
    post,
    path = "/tasks/{id}/agents/{role}/cancel",
    operation_id = "cancelAgent",
    tag = "control",
    security(("session" = [])),
    params(
        ("id" = Uuid, Path, description = "The task's id."),
        ("role" = String, Path, description = "The agent's role, e.g. `qa`."),
    ),
    responses(
        (status = 202, description = "The task's worker is asked to cancel the agent.", body = AgentCancel),
        CancelAgentErrors,
    ),
)]
pub async fn cancel_agent(
    State(state): State<AppState>,
    user: AuthUser,
    Path((task_id, role)): Path<(Uuid, String)>,
) -> Answer<AgentCancel> {
    let task = owned_task(&state, user.id, task_id).await?;
    if task.status.is_terminal() {
        return Err(finished(&task));
    }
    let view = view(&state, &task).await?;
    let agent = view
        .agents
        .iter()
        .find(|a| a.role == role)
        .ok_or_else(|| ApiError::Rejected {
            status: StatusCode::NOT_FOUND,
            code: "agent_not_found",
            message: format!("task {task_id} has no agent {:?}", truncate(&role, 64)),
        })?;
    let not_running = || ApiError::Conflict {
        code: "agent_not_running",
        message: format!(
            "agent {role} is not running; only a running agent can be cancelled (cancel the task to stop the rest)"
        ),
    };
    if agent.status != AgentState::Running {
        return Err(not_running());
    }
    let request = ControlRequest::CancelAgent {
        role: role.clone(),
        attempt: agent.attempt,
    };
    if !request_control(&state, task_id, &request).await? {
        let task = owned_task(&state, user.id, task_id).await?;
        return Err(if task.status.is_terminal() {
            finished(&task)
        } else {
            not_running()
        });
    }
    nudge(&state, task_id).await;
    answer(
        StatusCode::ACCEPTED,
        AgentCancel {
            task_id,
            agent_role: role,
            attempt: agent.attempt,
            cancel_requested: true,
        },
    )
}

/// Pause a task
///
/// No new agent starts; running agents finish, then `task_paused` and the task gives its
/// worker back until it is resumed. A queued task is paused at once (200); a running
/// task's worker is asked (202). Pausing a paused task is a 200.
#[utoipa::path(
    post,
    path = "/tasks/{id}/pause",
    operation_id = "pauseTask",
    tag = "control",
    security(("session" = [])),
    params(("id" = Uuid, Path, description = "The task's id.")),
    responses(
        (status = 200, description = "Paused.", body = Control),
        (status = 202, description = "The task's worker is asked to pause it.", body = Control),
        PauseErrors,
    ),
)]
pub async fn pause(
    State(state): State<AppState>,
    user: AuthUser,
    Path(task_id): Path<Uuid>,
) -> Answer {
    let paused = Control::status(task_id, TaskStatus::Paused);
    drive(&state, user, task_id, |task| match task.status {
        status if status.is_terminal() => Step::Answer(Err(finished(task))),
        TaskStatus::Paused => Step::Answer(answer(StatusCode::OK, paused.clone())),
        TaskStatus::Queued => Step::Transition(
            Transition {
                from: vec![TaskStatus::Queued],
                body: EventBody::TaskPaused {
                    reason: "paused by a user before it started".into(),
                },
                requeue: false,
                active_limit: None,
            },
            StatusCode::OK,
            paused.clone(),
        ),
        _ => Step::Request(
            ControlRequest::Pause,
            StatusCode::ACCEPTED,
            Control {
                pause_requested: Some(true),
                ..Control::status(task_id, TaskStatus::Running)
            },
        ),
    })
    .await
}

/// Resume a paused task
///
/// Appends `task_unpaused` and queues the task. On a task whose pause has not taken
/// effect yet, withdraws the request.
#[utoipa::path(
    post,
    path = "/tasks/{id}/resume",
    operation_id = "resumeTask",
    tag = "control",
    security(("session" = [])),
    params(("id" = Uuid, Path, description = "The task's id.")),
    responses((status = 200, description = "Queued again, or the pause request withdrawn.", body = Control), ResumeErrors),
)]
pub async fn resume(
    State(state): State<AppState>,
    user: AuthUser,
    Path(task_id): Path<Uuid>,
) -> Answer {
    drive(&state, user, task_id, |task| match task.status {
        TaskStatus::Paused => Step::Transition(
            Transition {
                from: vec![TaskStatus::Paused],
                body: EventBody::TaskUnpaused {
                    reason: "resumed by a user".into(),
                },
                requeue: true,
                active_limit: state.backends.active_tasks_per_user,
            },
            StatusCode::OK,
            Control::status(task_id, TaskStatus::Queued),
        ),
        // The pause has not taken effect yet: withdrawing it is the whole resume.
        TaskStatus::Queued | TaskStatus::Running if task.pause_requested => Step::Request(
            ControlRequest::Unpause,
            StatusCode::OK,
            Control::status(task_id, task.status),
        ),
        status => Step::Answer(Err(ApiError::Conflict {
            code: "task_not_paused",
            message: format!("task {task_id} is not paused ({})", status.as_str()),
        })),
    })
    .await
}

#[derive(Debug, Default, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct RetryRequest {
    /// The agents to run again, each failed or cancelled; absent: every such agent.
    agents: Option<Vec<String>>,
}

/// Retry a failed or cancelled task
///
/// Runs the failed or cancelled agents again (or those named), as new attempts appended
/// to the same log; completed agents are kept. In sequential mode a retried agent gets the
/// outputs before it, and the agents after it run too.
#[utoipa::path(
    post,
    path = "/tasks/{id}/retry",
    operation_id = "retryTask",
    tag = "control",
    security(("session" = [])),
    params(("id" = Uuid, Path, description = "The task's id.")),
    request_body(content = Option<RetryRequest>, description = "Optional: an empty body retries every failed or cancelled agent.", content_type = "application/json"),
    responses((status = 202, description = "Queued again.", body = Retry), RetryErrors),
)]
pub async fn retry(
    State(state): State<AppState>,
    user: AuthUser,
    Path(task_id): Path<Uuid>,
    body: Bytes,
) -> Answer<Retry> {
    let request = retry_request(&body)?;
    let task = owned_task(&state, user.id, task_id).await?;
    if !matches!(task.status, TaskStatus::Failed | TaskStatus::Cancelled) {
        return Err(not_retryable(&task));
    }
    let view = view(&state, &task).await?;
    let agents = match request.agents {
        Some(roles) => named_retries(&view, roles)?,
        None => view
            .agents
            .iter()
            .filter(|a| a.status.is_retryable())
            .map(|a| a.role.clone())
            .collect(),
    };
    if agents.is_empty() {
        return Err(ApiError::Conflict {
            code: "nothing_to_retry",
            message: "no agent of this task failed or was cancelled".into(),
        });
    }
    let transition = Transition {
        from: vec![TaskStatus::Failed, TaskStatus::Cancelled],
        body: EventBody::TaskRetried {
            agents: agents.clone(),
            reason: "retried by a user".into(),
        },
        requeue: true,
        active_limit: state.backends.active_tasks_per_user,
    };
    let Some(applied) = transitioned(&state, task_id, &transition).await? else {
        return Err(not_retryable(&owned_task(&state, user.id, task_id).await?));
    };
    if let Some(dispatch) = applied.to_queue() {
        queue(&state, dispatch).await;
    }
    answer(
        StatusCode::ACCEPTED,
        Retry {
            task_id,
            status: TaskStatus::Queued,
            agents,
            stream_url: stream_url(&state, user, task_id),
        },
    )
}

fn retry_request(body: &[u8]) -> ApiResult<RetryRequest> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok(RetryRequest::default());
    }
    serde_json::from_slice(body).map_err(|e| {
        ApiError::invalid(
            "invalid_body",
            format!("the body must be empty or {{\"agents\": [roles]}}: {e}"),
        )
    })
}

/// The roles a user named, each checked: in the task, and ended without an answer.
fn named_retries(view: &troupe_events::TaskView, roles: Vec<String>) -> ApiResult<Vec<String>> {
    let mut agents: Vec<String> = Vec::with_capacity(roles.len());
    for role in roles {
        let agent = view.agents.iter().find(|a| a.role == role).ok_or_else(|| {
            ApiError::invalid(
                "unknown_agent",
                format!(
                    "task {} has no agent {:?}",
                    view.task_id,
                    truncate(&role, 64)
                ),
            )
        })?;
        match agent.status {
            AgentState::Completed => {
                return Err(ApiError::Conflict {
                    code: "agent_succeeded",
                    message: format!(
                        "agent {role} completed; only failed or cancelled agents are retried"
                    ),
                });
            }
            state if !state.is_retryable() => {
                return Err(ApiError::Conflict {
                    code: "agent_not_retryable",
                    message: format!(
                        "agent {role} has not run yet; it runs when the task is retried"
                    ),
                });
            }
            _ if agents.contains(&role) => {}
            _ => agents.push(role),
        }
    }
    Ok(agents)
}

fn not_retryable(task: &TaskRecord) -> ApiError {
    match task.status {
        TaskStatus::Completed => ApiError::Conflict {
            code: "nothing_to_retry",
            message: "every agent of this task completed".into(),
        },
        status => ApiError::Conflict {
            code: "task_not_finished",
            message: format!(
                "task {} is {}; only a failed or cancelled task can be retried",
                task.id,
                status.as_str()
            ),
        },
    }
}

/// A transition the store applied.
struct Applied {
    dispatch: Dispatch,
    requeue: bool,
    waiting: bool,
}

impl Applied {
    /// The job to queue now: a requeue that does not wait behind the owner's limit.
    fn to_queue(&self) -> Option<Dispatch> {
        (self.requeue && !self.waiting).then_some(self.dispatch)
    }
}

/// What the transition did, or `None` when the task's status had moved on; its event is
/// published like any other, so that followers see it at once.
async fn transitioned(
    state: &AppState,
    task_id: Uuid,
    transition: &Transition,
) -> ApiResult<Option<Applied>> {
    let (event, waiting) = match state.backends.store.transition(task_id, transition).await? {
        Transitioned::Applied(event) => (event, false),
        Transitioned::Waiting(event) => (event, true),
        Transitioned::Refused(_) => return Ok(None),
    };
    let seq = event.seq;
    if let Err(e) = state.backends.bus.publish(&[event]).await {
        tracing::warn!(%task_id, error = %e, "publishing a control event failed; followers read it from the store");
    }
    tracing::info!(%task_id, seq, waiting, event = transition.body.kind(), "task changed by a user");
    Ok(Some(Applied {
        dispatch: Dispatch { task_id, seq },
        requeue: transition.requeue,
        waiting,
    }))
}

/// Records a request for the worker and nudges it; `false` when the status refused it.
async fn request(state: &AppState, task_id: Uuid, request: &ControlRequest) -> ApiResult<bool> {
    let recorded = request_control(state, task_id, request).await?;
    if recorded {
        nudge(state, task_id).await;
    }
    Ok(recorded)
}

async fn request_control(
    state: &AppState,
    task_id: Uuid,
    request: &ControlRequest,
) -> ApiResult<bool> {
    Ok(state
        .backends
        .store
        .request_control(task_id, request)
        .await?)
}

/// Queues a retried or resumed task now; the outbox has it should this fail.
async fn queue(state: &AppState, dispatch: Dispatch) {
    if let Err(e) = state.outbox.dispatch(dispatch).await {
        tracing::warn!(task_id = %dispatch.task_id, error = %e, "queueing the task failed; the outbox will retry");
    }
}

fn busy() -> ApiError {
    ApiError::Conflict {
        code: "task_busy",
        message: "the task changed while this request was handled; try again".into(),
    }
}
