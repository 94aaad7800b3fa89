//! Submitting, listing and reading tasks.

use std::collections::HashSet;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use troupe_events::providers::{self, Directory};
use troupe_events::store::read_log;
use troupe_events::task::TaskSpec;
use troupe_events::{
    Budget, ExecutionMode, NewTask, ProviderRoute, Submitted, TaskRecord, TaskStatus, TaskView,
    UsageTotals,
};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;

use crate::auth::AuthUser;
use crate::error::{ApiError, ApiResult};
use crate::extract::{Json, Path, Query};
use crate::openapi::{JSON_BODY, ONE_TASK, SIGNED_IN, SUBMIT, errors};
use crate::state::AppState;

const MAX_DESCRIPTION: usize = 20_000;
const MAX_TITLE: usize = 200;
/// The API's ceiling of agents per task; `TROUPE_MAX_AGENTS_PER_TASK` may set a lower one.
pub const MAX_AGENTS: usize = 20;
const MAX_IDEMPOTENCY_KEY: usize = 255;

/// A task for a team of agents.
// The body of every submit endpoint. Everything is optional here so that each missing or
// wrong field gets its own message instead of serde's; the schema says what a valid body
// holds (its limits are checked against the constants above by a test).
#[derive(Debug, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
#[schema(example = json!({
    "title": "Launch page",
    "description": "Build a launch page for a todo app",
    "selectedAgents": ["tech-lead", "frontend", "qa"],
    "executionMode": "parallel",
    "provider": "openai",
    "model": "gpt-4o-mini",
    "providerOptions": {"temperature": 0.2},
    "budget": {"maxTokens": 20000},
    "fallback": {"provider": "anthropic", "model": "claude-haiku-4-5"}
}))]
pub struct TaskRequest {
    /// Default: the description's first line, cut at 80 characters.
    #[schema(max_length = 200)]
    title: Option<String>,
    /// What the team should do.
    #[schema(value_type = String, min_length = 1, max_length = 20000)]
    description: Option<String>,
    /// Roles from `GET /api/agents`, each once, in team order. A server may allow fewer
    /// than 20 (`TROUPE_MAX_AGENTS_PER_TASK`).
    #[schema(value_type = Vec<String>, min_items = 1, max_items = 20)]
    selected_agents: Option<Vec<String>>,
    /// `sequential` (the default): each agent gets the task and the outputs of the agents
    /// before it, and the run stops at the first failed agent. `parallel`: every agent at
    /// once, on the task alone.
    #[schema(value_type = Option<ExecutionMode>)]
    execution_mode: Option<String>,
    /// `openai`, `anthropic` or `simulated`; it must be configured. Default: see
    /// `GET /api/providers`.
    provider: Option<String>,
    /// Default: the provider's configured model.
    #[schema(max_length = 200)]
    model: Option<String>,
    /// Passed to the provider. The HTTP providers read `temperature` and `maxTokens`; the
    /// simulated one `latencyMs`, `tokens`, `failAgents` and `failAttempts` (checked at
    /// submit: types, ranges, at most 5 minutes an answer). A wrong value for an HTTP
    /// provider fails the agent with a message naming it.
    #[schema(value_type = Option<Object>)]
    provider_options: Option<Value>,
    /// The most the task may spend; when its usage passes a limit, it is cancelled.
    /// Absent or null: no limit.
    #[schema(value_type = Option<Budget>)]
    budget: Option<Value>,
    /// Where an agent's call goes when the task's provider keeps failing before any text
    /// (rate limits, 5xx, timeouts, after its retries). The provider must be configured,
    /// and differ from the task's own provider or model. Absent or null: the server's
    /// fallback for the task's provider, if any.
    #[schema(value_type = Option<ProviderRoute>)]
    fallback: Option<Value>,
    /// Seconds from submit after which the task is cancelled, saying so; 1 to the
    /// server's `TROUPE_MAX_TASK_SECS` (3600 by default), which is also the default.
    #[schema(minimum = 1)]
    timeout_secs: Option<u64>,
}

/// `timeoutSecs`: 1 to `max`, `max` when absent.
fn timeout_secs(requested: Option<u64>, max: u64) -> ApiResult<u64> {
    match requested {
        None => Ok(max),
        Some(secs @ 1..) if secs <= max => Ok(secs),
        Some(secs) => Err(ApiError::invalid(
            "invalid_timeout",
            format!("timeoutSecs must be 1 to {max} seconds, not {secs}"),
        )),
    }
}

impl TaskRequest {
    fn into_spec(self, state: &AppState, served: &Directory) -> ApiResult<TaskSpec> {
        let description = self.description.unwrap_or_default().trim().to_string();
        if description.is_empty() {
            return Err(ApiError::invalid(
                "missing_description",
                "description is required: say what the team should do",
            ));
        }
        if description.chars().count() > MAX_DESCRIPTION {
            return Err(ApiError::invalid(
                "description_too_long",
                format!("description must be at most {MAX_DESCRIPTION} characters"),
            ));
        }
        let title = match self
            .title
            .map(|t| t.trim().to_string())
            .filter(|t| !t.is_empty())
        {
            Some(title) if title.chars().count() > MAX_TITLE => {
                return Err(ApiError::invalid(
                    "title_too_long",
                    format!("title must be at most {MAX_TITLE} characters"),
                ));
            }
            Some(title) => title,
            None => default_title(&description),
        };
        let roles = self.selected_agents.unwrap_or_default();
        if roles.is_empty() {
            return Err(ApiError::invalid(
                "no_agents",
                "selectedAgents must name at least one agent (see GET /api/agents)",
            ));
        }
        let max_agents = state.http.max_agents_per_task.min(MAX_AGENTS);
        if roles.len() > max_agents {
            return Err(ApiError::invalid(
                "too_many_agents",
                format!("a team has at most {max_agents} agents on this server"),
            ));
        }
        let mut seen = HashSet::new();
        let mut agents = Vec::with_capacity(roles.len());
        for role in &roles {
            let agent = state.catalogue.get(role).ok_or_else(|| {
                ApiError::invalid(
                    "unknown_agent",
                    format!(
                        "unknown agent {:?}; known agents: {}",
                        truncate(role, 64),
                        state
                            .catalogue
                            .agents()
                            .iter()
                            .map(|a| a.role.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                )
            })?;
            if !seen.insert(role.as_str()) {
                return Err(ApiError::invalid(
                    "duplicate_agent",
                    format!("agent {role:?} is selected twice"),
                ));
            }
            agents.push(agent.clone());
        }
        let execution_mode = match self.execution_mode.as_deref() {
            None | Some("sequential") => ExecutionMode::Sequential,
            Some("parallel") => ExecutionMode::Parallel,
            Some(other) => {
                return Err(ApiError::invalid(
                    "invalid_execution_mode",
                    format!(
                        "executionMode must be \"sequential\" or \"parallel\", not {:?}",
                        truncate(other, 32)
                    ),
                ));
            }
        };
        let provider = match self.provider.filter(|p| !p.is_empty()) {
            None => usable_provider(served, "provider", served.default_name().into())?,
            Some(name) => usable_provider(served, "provider", name)?,
        };
        let model = model_name(self.model)
            .map_err(|message| ApiError::invalid("invalid_model", format!("model {message}")))?;
        let fallback = fallback(served, self.fallback, &provider, &model)?;
        let provider_options = match self.provider_options {
            None | Some(Value::Null) => Default::default(),
            Some(Value::Object(map)) => map,
            Some(_) => {
                return Err(ApiError::invalid(
                    "invalid_provider_options",
                    "providerOptions must be a JSON object",
                ));
            }
        };
        let timeout_secs = timeout_secs(self.timeout_secs, state.http.max_task_secs)?;
        for name in std::iter::once(&provider).chain(fallback.as_ref().map(|f| &f.provider)) {
            providers::check_options(name, &provider_options, state.http.simulated_max_answer_ms)
                .map_err(|message| ApiError::invalid("invalid_provider_options", message))?;
        }
        Ok(TaskSpec {
            title,
            description,
            agents,
            execution_mode,
            provider,
            model,
            provider_options,
            budget: budget(self.budget)?,
            fallback,
            timeout_secs: Some(timeout_secs),
        })
    }
}

/// `name` if this build knows the provider and every live worker serves it.
fn usable_provider(served: &Directory, field: &str, name: String) -> ApiResult<String> {
    if !providers::NAMES.contains(&name.as_str()) {
        return Err(ApiError::invalid(
            "unknown_provider",
            format!(
                "unknown {field} {:?}; providers: {}",
                truncate(&name, 32),
                providers::NAMES.join(", ")
            ),
        ));
    }
    if !served.serves(&name) {
        let why = match served.workers() {
            0 => "no worker is running".to_string(),
            1 => "the running worker does not serve it".to_string(),
            n => format!("not all {n} running workers serve it"),
        };
        return Err(ApiError::invalid(
            "provider_not_configured",
            format!("{field} {name} cannot run tasks now: {why} (see GET /api/providers)"),
        ));
    }
    Ok(name)
}

/// A trimmed model name; blank means the provider's default.
fn model_name(model: Option<String>) -> Result<Option<String>, &'static str> {
    let model = model
        .map(|m| m.trim().to_string())
        .filter(|m| !m.is_empty());
    if model.as_ref().is_some_and(|m| m.len() > 200) {
        return Err("must be at most 200 characters");
    }
    Ok(model)
}

/// `fallback: {"provider": "anthropic", "model": "claude-haiku-4-5"}`: where an agent's
/// call goes when the task's provider keeps failing; null or absent: the server's own.
fn fallback(
    served: &Directory,
    value: Option<Value>,
    provider: &str,
    model: &Option<String>,
) -> ApiResult<Option<ProviderRoute>> {
    let invalid = |message: String| ApiError::invalid("invalid_fallback", message);
    let route: ProviderRoute = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(value @ Value::Object(_)) => serde_json::from_value(value).map_err(|e| {
            invalid(format!(
                "fallback takes provider (a provider's name) and optionally model: {e}"
            ))
        })?,
        Some(_) => return Err(invalid("fallback must be a JSON object".into())),
    };
    let route = ProviderRoute {
        provider: usable_provider(served, "fallback provider", route.provider)?,
        model: model_name(route.model).map_err(|m| invalid(format!("fallback model {m}")))?,
    };
    if route.provider == provider && route.model == *model {
        return Err(invalid(format!(
            "the fallback is the task's own provider and model ({route})"
        )));
    }
    Ok(Some(route))
}

/// `budget: {"maxTokens": n, "maxCostUsd": x}`; null or absent: no limit.
fn budget(value: Option<Value>) -> ApiResult<Option<Budget>> {
    let invalid = |message: String| ApiError::invalid("invalid_budget", message);
    let budget: Budget = match value {
        None | Some(Value::Null) => return Ok(None),
        Some(value @ Value::Object(_)) => serde_json::from_value(value).map_err(|e| {
            invalid(format!(
                "budget takes maxTokens (a positive whole number) and maxCostUsd (a positive number of US dollars): {e}"
            ))
        })?,
        Some(_) => return Err(invalid("budget must be a JSON object".into())),
    };
    if let Some(problem) = budget.problem() {
        return Err(invalid(problem.into()));
    }
    Ok((budget != Budget::default()).then_some(budget))
}

fn default_title(description: &str) -> String {
    let first_line = description.lines().next().unwrap_or_default();
    let mut title: String = first_line.chars().take(80).collect();
    if first_line.chars().count() > 80 {
        title.push('…');
    }
    title
}

pub(crate) fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

fn idempotency_key(headers: &HeaderMap) -> ApiResult<Option<String>> {
    let Some(value) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = value.to_str().map(str::trim).unwrap_or_default();
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY {
        return Err(ApiError::bad_request(
            "invalid_idempotency_key",
            format!("Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"),
        ));
    }
    Ok(Some(key.to_string()))
}

/// Validates, stores and queues a task; the one path behind every submit endpoint.
pub async fn submit(
    state: &AppState,
    user: AuthUser,
    headers: &HeaderMap,
    body: TaskRequest,
) -> ApiResult<Submitted> {
    state.guard.submit_by(user.id)?;
    let key = idempotency_key(headers)?;
    let served = state
        .providers
        .serving(body.provider.as_deref().unwrap_or_default())
        .await?;
    let spec = body.into_spec(state, &served)?;
    let request_hash = {
        let canonical = serde_json::to_vec(&spec).expect("a spec always serialises");
        format!("{:x}", Sha256::digest(canonical))
    };
    let task = NewTask {
        id: Uuid::now_v7(),
        owner_id: user.id,
        spec,
        idempotency_key: key,
        request_hash,
        active_limit: state.backends.active_tasks_per_user,
    };
    let submitted = state.backends.store.create_task(&task).await?;
    if let Submitted::Created(record) = &submitted {
        counted(record);
        if record.waiting {
            tracing::info!(task_id = %record.id, "task submitted; it waits behind its owner's active tasks");
        } else {
            dispatch_new(state, record).await;
        }
    }
    Ok(submitted)
}

/// Every new task counts as submitted, whether it goes to the queue or waits.
fn counted(record: &TaskRecord) {
    let mode = match record.spec.execution_mode {
        ExecutionMode::Sequential => "sequential",
        ExecutionMode::Parallel => "parallel",
    };
    crate::metrics::submitted(mode, &record.spec.provider);
}

async fn dispatch_new(state: &AppState, record: &TaskRecord) {
    let first = troupe_events::Dispatch {
        task_id: record.id,
        seq: 1,
    };
    if let Err(e) = state.outbox.dispatch(first).await {
        // Stored and in the outbox: the dispatcher queues it shortly.
        tracing::warn!(task_id = %record.id, error = %e, "queueing a new task failed; the outbox will retry");
    }
    tracing::info!(task_id = %record.id, "task submitted");
}

pub fn stream_url(state: &AppState, user: AuthUser, task_id: Uuid) -> String {
    format!(
        "/api/tasks/{task_id}/events?token={}",
        state.tokens.stream(user, task_id)
    )
}

/// A submitted task.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskAccepted {
    pub task_id: Uuid,
    /// `queued` for a new task; a replayed submit (same `Idempotency-Key`) gives the
    /// task's current status.
    pub status: TaskStatus,
    /// Where to follow the task: a path to put after the api's origin, whose token reads
    /// this task's events and nothing else; `new EventSource(streamUrl)` works as is.
    #[schema(example = "/api/tasks/01a20b3c-362a-7018-944e-af04d8dcc106/events?token=eyJ0eXAi…")]
    pub stream_url: String,
    /// Set while the task waits behind the user's `TROUPE_ACTIVE_TASKS_PER_USER` active
    /// tasks: 1 for the next of theirs to go to a worker.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<u64>,
}

/// An `Idempotency-Key` header, accepted by every submit endpoint.
#[derive(IntoParams)]
#[into_params(parameter_in = Header)]
pub struct SubmitHeaders {
    /// 1 to 255 visible ASCII characters, scoped to the account. The same key with the
    /// same request returns the task made the first time; with a different request it is
    /// refused (`422 idempotency_key_reused`).
    #[param(rename = "Idempotency-Key", min_length = 1, max_length = 255)]
    pub idempotency_key: Option<String>,
}

errors!(SubmitErrors = SIGNED_IN, JSON_BODY, SUBMIT);

/// Submit a task
///
/// Stores and queues the task, and answers at once; follow it at `streamUrl`.
#[utoipa::path(
    post,
    path = "/tasks",
    operation_id = "createTask",
    tag = "tasks",
    security(("session" = [])),
    params(SubmitHeaders),
    request_body = TaskRequest,
    responses(
        (status = 202, description = "Queued (or, for a replayed `Idempotency-Key`, the task made the first time).", body = TaskAccepted,
            headers(
                ("Location" = String, description = "The task: `/api/tasks/{id}`."),
                ("Idempotent-Replayed" = String, description = "`true` when the answer is a replay of an earlier submit with the same `Idempotency-Key`."),
            )),
        SubmitErrors,
    ),
)]
pub async fn create(
    State(state): State<AppState>,
    user: AuthUser,
    headers: HeaderMap,
    Json(body): Json<TaskRequest>,
) -> ApiResult<(StatusCode, HeaderMap, axum::Json<TaskAccepted>)> {
    let submitted = submit(&state, user, &headers, body).await?;
    let task = submitted.task();
    let mut response_headers = HeaderMap::new();
    let location = format!("/api/tasks/{}", task.id);
    response_headers.insert(
        "location",
        location.parse().expect("a path is a header value"),
    );
    if matches!(submitted, Submitted::Existing(_)) {
        response_headers.insert("idempotent-replayed", "true".parse().expect("ascii"));
    }
    Ok((
        StatusCode::ACCEPTED,
        response_headers,
        axum::Json(TaskAccepted {
            task_id: task.id,
            status: task.status,
            stream_url: stream_url(&state, user, task.id),
            queue_position: queue_position(&state, task).await?,
        }),
    ))
}

#[derive(Deserialize, IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ListQuery {
    /// Tasks per page, 1 to 100.
    #[param(minimum = 1, maximum = 100, default = 20)]
    limit: Option<u32>,
    /// A page's `nextCursor`: the tasks older than that one.
    before: Option<Uuid>,
}

/// One line of the task list.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskSummary {
    pub task_id: Uuid,
    pub title: String,
    pub status: TaskStatus,
    pub execution_mode: ExecutionMode,
    pub provider: String,
    pub selected_agents: Vec<String>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    /// The seq of the task's last event.
    pub last_seq: u64,
    /// What the task has used so far (every attempt, retries included).
    pub usage: UsageTotals,
}

impl TaskSummary {
    fn of(task: &TaskRecord) -> Self {
        TaskSummary {
            task_id: task.id,
            title: task.spec.title.clone(),
            status: task.status,
            execution_mode: task.spec.execution_mode,
            provider: task.spec.provider.clone(),
            selected_agents: task.spec.roles(),
            created_at: task.created_at,
            updated_at: task.updated_at,
            last_seq: task.last_seq,
            usage: task.usage,
        }
    }
}

#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskList {
    /// Newest first.
    pub tasks: Vec<TaskSummary>,
    /// On a full page, the id of its last task: pass it as `before` for the next page;
    /// otherwise null.
    pub next_cursor: Option<Uuid>,
}

errors!(ListErrors = SIGNED_IN, &["invalid_limit", "invalid_query"]);

/// List your tasks
///
/// Newest first, a page at a time.
#[utoipa::path(
    get,
    path = "/tasks",
    operation_id = "listTasks",
    tag = "tasks",
    security(("session" = [])),
    params(ListQuery),
    responses((status = 200, description = "A page of tasks.", body = TaskList), ListErrors),
)]
pub async fn list(
    State(state): State<AppState>,
    user: AuthUser,
    Query(query): Query<ListQuery>,
) -> ApiResult<axum::Json<TaskList>> {
    let limit = query.limit.unwrap_or(20);
    if !(1..=100).contains(&limit) {
        return Err(ApiError::bad_request(
            "invalid_limit",
            "limit must be between 1 and 100",
        ));
    }
    let tasks = state
        .backends
        .store
        .tasks_of(user.id, query.before, limit)
        .await?;
    let next = (tasks.len() as u32 == limit)
        .then(|| tasks.last().map(|t| t.id))
        .flatten();
    Ok(axum::Json(TaskList {
        tasks: tasks.iter().map(TaskSummary::of).collect(),
        next_cursor: next,
    }))
}

/// The caller's task; another user's task is as missing as one that does not exist.
pub async fn owned_task(state: &AppState, user_id: Uuid, task_id: Uuid) -> ApiResult<TaskRecord> {
    match state.backends.store.task(task_id).await? {
        // A task its owner deleted is gone for them at once, though its rows wait for the
        // sweep until its worker has stopped it.
        Some(task) if task.owner_id == user_id && !task.delete_requested => Ok(task),
        _ => Err(ApiError::TaskNotFound),
    }
}

/// The task's place in its owner's line of waiting tasks, when it waits.
async fn queue_position(state: &AppState, task: &TaskRecord) -> ApiResult<Option<u64>> {
    if !task.waiting {
        return Ok(None);
    }
    Ok(state.backends.store.queue_position(task.id).await?)
}

/// The task as projected from its whole log, folded a page at a time so that a long log
/// never sits in memory whole.
pub async fn view(state: &AppState, task: &TaskRecord) -> ApiResult<TaskView> {
    let mut view = TaskView::new(task.id, &task.spec);
    view.queue_position = queue_position(state, task).await?;
    let last = read_log(state.backends.store.as_ref(), task.id, 0, |raw| {
        match raw.parse() {
            Ok(event) => view.apply(&event),
            // A reader shows what it can: the event is still served as it is stored.
            Err(e) => {
                tracing::warn!(task_id = %task.id, seq = raw.seq, error = %e, "an event of the task cannot be read; the view skips it")
            }
        }
        Ok(())
    })
    .await?;
    view.last_seq = view.last_seq.max(last);
    Ok(view)
}

/// A task as `GET /api/tasks/{id}` shows it.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskDetail {
    #[serde(flatten)]
    pub view: TaskView,
    /// A fresh stream URL for the task (see `TaskAccepted.streamUrl`).
    pub stream_url: String,
    /// A cancel the task's worker has not carried out yet.
    pub cancel_requested: bool,
    /// A pause the task's worker has not carried out yet.
    pub pause_requested: bool,
}

errors!(GetErrors = SIGNED_IN, ONE_TASK);

/// Read a task
///
/// The task as projected from its whole event log: its status, each agent's state, output,
/// artifacts and usage. Another user's task answers 404, like a missing one.
#[utoipa::path(
    get,
    path = "/tasks/{id}",
    operation_id = "getTask",
    tag = "tasks",
    security(("session" = [])),
    params(("id" = Uuid, Path, description = "The task's id.")),
    responses((status = 200, description = "The task.", body = TaskDetail), GetErrors),
)]
pub async fn get(
    State(state): State<AppState>,
    user: AuthUser,
    Path(task_id): Path<Uuid>,
) -> ApiResult<axum::Json<TaskDetail>> {
    let task = owned_task(&state, user.id, task_id).await?;
    let view = view(&state, &task).await?;
    Ok(axum::Json(TaskDetail {
        view,
        stream_url: stream_url(&state, user, task_id),
        cancel_requested: task.cancel_requested,
        pause_requested: task.pause_requested,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The document's limits are the ones a submit is held to.
    #[test]
    fn the_documented_limits_are_the_enforced_ones() {
        let doc: Value =
            serde_json::from_str(&crate::openapi::document().to_json().unwrap()).unwrap();
        let body = &doc["components"]["schemas"]["TaskRequest"]["properties"];
        assert_eq!(body["description"]["maxLength"], MAX_DESCRIPTION);
        assert_eq!(body["title"]["maxLength"], MAX_TITLE);
        assert_eq!(body["selectedAgents"]["maxItems"], MAX_AGENTS);
        let key = &doc["paths"]["/api/tasks"]["post"]["parameters"][0];
        assert_eq!(key["name"], "Idempotency-Key");
        assert_eq!(key["schema"]["maxLength"], MAX_IDEMPOTENCY_KEY);
    }
}
