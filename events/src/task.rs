//! What a task is: the spec a user submitted, the row the store keeps, the job the queue
//! carries, and the view projected from the task's events.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::event::{Artifact, Event, EventBody};
use crate::usage::{Budget, UsageTotals};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum ExecutionMode {
    Sequential,
    Parallel,
}

/// An agent as it was when the task was submitted. Kept in the task so that a worker with
/// another catalogue file (or a catalogue edited since) runs exactly what the user chose.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AgentDef {
    pub role: String,
    pub name: String,
    pub description: String,
    #[serde(default)]
    pub prompt: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskSpec {
    pub title: String,
    pub description: String,
    pub agents: Vec<AgentDef>,
    pub execution_mode: ExecutionMode,
    pub provider: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    #[serde(default)]
    pub provider_options: serde_json::Map<String, serde_json::Value>,
    /// The most the task may spend; absent: no limit.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub budget: Option<Budget>,
    /// Where an agent's call goes when `provider` keeps failing before any text; absent:
    /// the worker's configured fallback for `provider`, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fallback: Option<ProviderRoute>,
    /// Seconds from submit after which the worker cancels the task; absent (tasks from
    /// before deadlines existed): none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
}

/// A provider and, optionally, its model. As text (flags, settings): `anthropic` or
/// `openai:llama3.2:3b`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct ProviderRoute {
    pub provider: String,
    /// `None`: the provider's configured default model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
}

impl std::str::FromStr for ProviderRoute {
    type Err = String;

    /// Splits at the first `:` only: model names have colons of their own (Ollama tags).
    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let (provider, model) = match text.trim().split_once(':') {
            Some((provider, model)) => (provider.trim(), Some(model.trim())),
            None => (text.trim(), None),
        };
        if provider.is_empty() || provider.contains(char::is_whitespace) {
            return Err(format!("{text:?} is not provider[:model]"));
        }
        Ok(ProviderRoute {
            provider: provider.to_string(),
            model: model.filter(|m| !m.is_empty()).map(str::to_string),
        })
    }
}

impl std::fmt::Display for ProviderRoute {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.model {
            Some(model) => write!(f, "{} ({model})", self.provider),
            None => f.write_str(&self.provider),
        }
    }
}

impl TaskSpec {
    /// The provider and model the task asked for.
    pub fn route(&self) -> ProviderRoute {
        ProviderRoute {
            provider: self.provider.clone(),
            model: self.model.clone(),
        }
    }

    pub fn roles(&self) -> Vec<String> {
        self.agents.iter().map(|a| a.role.clone()).collect()
    }

    /// The first event of every task's log.
    pub fn created_event(&self) -> EventBody {
        EventBody::TaskCreated {
            title: self.title.clone(),
            selected_agents: self.roles(),
            execution_mode: self.execution_mode,
            provider: self.provider.clone(),
            model: self.model.clone(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    Queued,
    Running,
    Paused,
    Completed,
    Failed,
    Cancelled,
}

impl TaskStatus {
    pub const ALL: [TaskStatus; 6] = [
        TaskStatus::Queued,
        TaskStatus::Running,
        TaskStatus::Paused,
        TaskStatus::Completed,
        TaskStatus::Failed,
        TaskStatus::Cancelled,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Queued => "queued",
            TaskStatus::Running => "running",
            TaskStatus::Paused => "paused",
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
            TaskStatus::Cancelled => "cancelled",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        TaskStatus::ALL
            .into_iter()
            .find(|status| status.as_str() == s)
    }

    /// The run has ended; only a retry continues the log.
    pub fn is_terminal(self) -> bool {
        matches!(
            self,
            TaskStatus::Completed | TaskStatus::Failed | TaskStatus::Cancelled
        )
    }

    /// The status a task has once an event of `kind` is in its log, if that event changes it.
    pub fn after_kind(kind: &str) -> Option<Self> {
        match kind {
            "task_complete" => Some(TaskStatus::Completed),
            "task_error" => Some(TaskStatus::Failed),
            "task_cancelled" => Some(TaskStatus::Cancelled),
            "task_paused" => Some(TaskStatus::Paused),
            "agent_start" | "task_resumed" => Some(TaskStatus::Running),
            "task_unpaused" | "task_retried" | "task_released" => Some(TaskStatus::Queued),
            _ => None,
        }
    }
}

/// What users asked of a task that only its worker can carry out; kept on the task row so
/// that a request survives a lost message and a worker taking over.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Controls {
    pub cancel: bool,
    pub pause: bool,
    /// `(role, attempt)` of agents to stop. Keyed by attempt so that a request for an
    /// attempt that has ended never stops a later retry.
    pub cancel_agents: Vec<(String, u32)>,
}

/// A request the api records for the task's worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ControlRequest {
    Cancel,
    Pause,
    /// Withdraws a pause the worker has not carried out yet.
    Unpause,
    CancelAgent {
        role: String,
        attempt: u32,
    },
}

/// A submit as the api hands it to the store.
#[derive(Debug, Clone)]
pub struct NewTask {
    pub id: Uuid,
    pub owner_id: Uuid,
    pub spec: TaskSpec,
    /// Client-chosen key that makes a repeated submit return the first task.
    pub idempotency_key: Option<String>,
    /// Hash of the request body, so a key reused for a different task is refused.
    pub request_hash: String,
    /// Tasks its owner may have active (queued for a worker or running) at once; past
    /// that, the new task waits for admission. `None`: no limit.
    pub active_limit: Option<u32>,
}

/// The task row: the spec plus a status kept in step with the log by every append.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TaskRecord {
    pub id: Uuid,
    #[serde(skip)]
    pub owner_id: Uuid,
    #[serde(flatten)]
    pub spec: TaskSpec,
    pub status: TaskStatus,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub last_seq: u64,
    /// A cancel or pause the api recorded and the worker has not carried out yet.
    pub cancel_requested: bool,
    pub pause_requested: bool,
    /// Its owner deleted it before it ended: it is hidden, and goes once it ends.
    #[serde(skip)]
    pub delete_requested: bool,
    /// Queued behind its owner's limit of active tasks, in no work queue yet.
    #[serde(skip)]
    pub waiting: bool,
    /// Every `agent_usage` in the log so far, summed by each append: a task's cost without
    /// reading its log.
    pub usage: UsageTotals,
}

/// What the queue carries. Versioned so that workers of two releases can share a queue.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "v")]
pub enum TaskJob {
    #[serde(rename = "1", rename_all = "camelCase")]
    V1 { task_id: Uuid },
}

impl TaskJob {
    pub fn task_id(&self) -> Uuid {
        match self {
            TaskJob::V1 { task_id } => *task_id,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "lowercase")]
pub enum AgentState {
    Pending,
    Running,
    Completed,
    Error,
    Cancelled,
}

impl AgentState {
    /// Ended without an answer: what a retry runs again.
    pub fn is_retryable(self) -> bool {
        matches!(self, AgentState::Error | AgentState::Cancelled)
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentView {
    pub role: String,
    pub name: String,
    pub description: String,
    pub status: AgentState,
    pub attempt: u32,
    pub started_at: Option<DateTime<Utc>>,
    pub finished_at: Option<DateTime<Utc>>,
    pub execution_time: Option<u64>,
    pub output: String,
    pub error: Option<String>,
    pub has_artifacts: bool,
    pub artifacts: Vec<Artifact>,
    /// Every attempt's usage: a retried agent cost its failed attempts too.
    pub usage: UsageTotals,
    /// The current attempt's provider and model (the fallback's once it took over), and
    /// its time to first token once its call has ended.
    pub provider: Option<String>,
    pub model: Option<String>,
    pub time_to_first_token: Option<u64>,
}

/// How the task's runs went, as far as its log tells. A run starts with the first
/// `agent_start` or a `task_resumed`, and ends cleanly with a terminal event, a pause or a
/// release (a worker handing the task back at shutdown). A run that never said how it
/// ended was cut short by a crash or a failure: those alone use up the task's budget.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunLedger {
    /// A run has started and not said how it ended.
    pub open: bool,
    /// Runs since the last retry or unpause that ended without saying so.
    pub crashed: u64,
    /// The last run was handed back at shutdown.
    pub released: bool,
}

impl RunLedger {
    fn apply(&mut self, kind: &str) {
        match kind {
            "agent_start" if !self.open => self.open = true,
            "task_resumed" => {
                if self.open {
                    self.crashed += 1;
                }
                self.open = true;
                self.released = false;
            }
            "task_released" => {
                self.open = false;
                self.released = true;
            }
            "task_retried" | "task_unpaused" => *self = RunLedger::default(),
            kind if kind == "task_paused" || crate::event::is_terminal_kind(kind) => {
                self.open = false;
                self.released = false;
            }
            _ => {}
        }
    }

    /// Runs that crashed or failed, counting one still open when a worker picks the task up:
    /// nobody else holds it, so that run ended without a word.
    pub fn crashed_at_pickup(&self) -> u64 {
        self.crashed + u64::from(self.open)
    }

    /// The task was interrupted mid-run (crash or hand-back): a new run says it resumes.
    pub fn interrupted(&self) -> bool {
        self.open || self.released
    }
}

/// A task as a reader sees it, rebuilt from its events alone.
#[derive(Debug, Clone, PartialEq, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct TaskView {
    pub task_id: Uuid,
    pub title: String,
    pub description: String,
    pub status: TaskStatus,
    pub execution_mode: ExecutionMode,
    pub provider: String,
    pub model: Option<String>,
    pub created_at: DateTime<Utc>,
    pub finished_at: Option<DateTime<Utc>>,
    pub total_execution_time: Option<u64>,
    pub error: Option<String>,
    /// Why the task is paused or was cancelled.
    pub reason: Option<String>,
    pub agents: Vec<AgentView>,
    /// Every agent attempt's usage so far.
    pub usage: UsageTotals,
    pub last_seq: u64,
    /// While the task waits behind its owner's limit of active tasks: 1 for the next of
    /// theirs to be admitted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<u64>,
    #[serde(skip)]
    pub runs: RunLedger,
    #[serde(skip)]
    index: HashMap<String, usize>,
}

impl TaskView {
    /// The view before any event: what the spec alone says.
    pub fn new(task_id: Uuid, spec: &TaskSpec) -> Self {
        TaskView {
            task_id,
            title: spec.title.clone(),
            description: spec.description.clone(),
            status: TaskStatus::Queued,
            execution_mode: spec.execution_mode,
            provider: spec.provider.clone(),
            model: spec.model.clone(),
            created_at: Utc::now(),
            finished_at: None,
            total_execution_time: None,
            error: None,
            reason: None,
            agents: spec.agents.iter().map(AgentView::pending).collect(),
            usage: UsageTotals::default(),
            last_seq: 0,
            queue_position: None,
            runs: RunLedger::default(),
            index: spec
                .agents
                .iter()
                .enumerate()
                .map(|(i, a)| (a.role.clone(), i))
                .collect(),
        }
    }

    /// Folds the log over the spec. The spec supplies what the events do not repeat
    /// (description, agents not yet started); everything that changes comes from events.
    pub fn project(task_id: Uuid, spec: &TaskSpec, events: &[Event]) -> Self {
        let mut view = TaskView::new(task_id, spec);
        for event in events {
            view.apply(event);
        }
        view
    }

    /// One more event, in seq order. Readers fold a log page by page through this, so no
    /// reader holds a whole log in memory.
    pub fn apply(&mut self, event: &Event) {
        let kind = event.body.kind();
        self.last_seq = event.seq;
        self.runs.apply(kind);
        if let Some(status) = TaskStatus::after_kind(kind) {
            self.status = status;
        }
        match &event.body {
            EventBody::TaskCreated { .. } => self.created_at = event.at,
            EventBody::AgentStart {
                agent_role,
                attempt,
                ..
            } => {
                if let Some(a) = self.agent(agent_role) {
                    a.start(*attempt, event.at);
                }
            }
            EventBody::AgentToken {
                agent_role,
                delta,
                attempt,
            } => {
                if let Some(a) = self.agent(agent_role)
                    && (*attempt == 0 || *attempt == a.attempt)
                {
                    a.output.push_str(delta);
                }
            }
            EventBody::AgentComplete {
                agent_role,
                execution_time,
                has_artifacts,
                output,
                artifacts,
                ..
            } => {
                if let Some(a) = self.agent(agent_role) {
                    a.finish(AgentState::Completed, event.at, *execution_time);
                    a.output = output.clone();
                    a.has_artifacts = *has_artifacts;
                    a.artifacts = artifacts.clone();
                }
            }
            EventBody::AgentError {
                agent_role,
                execution_time,
                error,
                ..
            } => {
                if let Some(a) = self.agent(agent_role) {
                    a.finish(AgentState::Error, event.at, *execution_time);
                    a.error = Some(error.clone());
                }
            }
            EventBody::AgentCancelled {
                agent_role,
                execution_time,
                output,
                ..
            } => {
                if let Some(a) = self.agent(agent_role) {
                    a.finish(AgentState::Cancelled, event.at, *execution_time);
                    a.output = output.clone();
                }
            }
            EventBody::AgentFailover {
                agent_role,
                attempt,
                to_provider,
                to_model,
                ..
            } => {
                if let Some(a) = self.agent(agent_role)
                    && *attempt == a.attempt
                {
                    a.provider = Some(to_provider.clone());
                    a.model = Some(to_model.clone());
                }
            }
            EventBody::AgentUsage {
                agent_role,
                attempt,
                provider,
                model,
                time_to_first_token,
                usage,
            } => {
                self.usage.add(usage);
                if let Some(a) = self.agent(agent_role) {
                    a.usage.add(usage);
                    if *attempt == a.attempt {
                        a.provider = Some(provider.clone());
                        a.model = Some(model.clone());
                        a.time_to_first_token = *time_to_first_token;
                    }
                }
            }
            EventBody::TaskComplete {
                total_execution_time,
                ..
            } => self.finish(event.at, *total_execution_time),
            EventBody::TaskError {
                error,
                total_execution_time,
                ..
            } => {
                self.finish(event.at, *total_execution_time);
                self.error = Some(error.clone());
            }
            EventBody::TaskCancelled {
                reason,
                total_execution_time,
                ..
            } => {
                self.finish(event.at, *total_execution_time);
                self.reason = Some(reason.clone());
                // Cancelled while no worker ran it (queued after a hand-back): an agent the
                // interruption left "running" will not finish.
                for a in &mut self.agents {
                    if a.status == AgentState::Running {
                        a.status = AgentState::Cancelled;
                    }
                }
            }
            EventBody::TaskPaused { reason } => self.reason = Some(reason.clone()),
            EventBody::TaskUnpaused { .. } => self.reason = None,
            EventBody::TaskRetried { agents, .. } => self.reopen(agents),
            EventBody::TaskResumed { .. }
            | EventBody::TaskReleased { .. }
            | EventBody::AgentProgress { .. }
            | EventBody::Unknown => {}
        }
    }

    fn agent(&mut self, role: &str) -> Option<&mut AgentView> {
        let i = *self.index.get(role)?;
        self.agents.get_mut(i)
    }

    fn finish(&mut self, at: DateTime<Utc>, total: u64) {
        self.finished_at = Some(at);
        self.total_execution_time = Some(total);
    }

    fn reopen(&mut self, agents: &[String]) {
        self.finished_at = None;
        self.total_execution_time = None;
        self.error = None;
        self.reason = None;
        for role in agents {
            if let Some(a) = self.agent(role) {
                a.reset();
            }
        }
    }
}

impl AgentView {
    fn pending(agent: &AgentDef) -> Self {
        AgentView {
            role: agent.role.clone(),
            name: agent.name.clone(),
            description: agent.description.clone(),
            status: AgentState::Pending,
            attempt: 0,
            started_at: None,
            finished_at: None,
            execution_time: None,
            output: String::new(),
            error: None,
            has_artifacts: false,
            artifacts: vec![],
            usage: UsageTotals::default(),
            provider: None,
            model: None,
            time_to_first_token: None,
        }
    }

    fn start(&mut self, attempt: u32, at: DateTime<Utc>) {
        self.reset();
        self.status = AgentState::Running;
        self.attempt = attempt;
        self.started_at = Some(at);
    }

    fn finish(&mut self, state: AgentState, at: DateTime<Utc>, execution_time: u64) {
        self.status = state;
        self.finished_at = Some(at);
        self.execution_time = Some(execution_time);
    }

    /// Back to waiting for its next attempt; the attempt count is kept.
    fn reset(&mut self) {
        self.status = AgentState::Pending;
        self.started_at = None;
        self.finished_at = None;
        self.execution_time = None;
        self.output.clear();
        self.error = None;
        self.has_artifacts = false;
        self.artifacts.clear();
        self.provider = None;
        self.model = None;
        self.time_to_first_token = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::SuccessStatus;

    fn spec() -> TaskSpec {
        TaskSpec {
            budget: None,
            fallback: None,
            timeout_secs: None,
            title: "t".into(),
            description: "d".into(),
            agents: vec![
                AgentDef {
                    role: "tech-lead".into(),
                    name: "Tech Lead".into(),
                    description: "plans".into(),
                    prompt: String::new(),
                },
                AgentDef {
                    role: "qa".into(),
                    name: "QA".into(),
                    description: "tests".into(),
                    prompt: String::new(),
                },
            ],
            execution_mode: ExecutionMode::Sequential,
            provider: "simulated".into(),
            model: None,
            provider_options: Default::default(),
        }
    }

    #[test]
    fn projection_follows_the_log() {
        let id = Uuid::now_v7();
        let spec = spec();
        let events = [
            Event::new(id, 1, spec.created_event()),
            Event::new(
                id,
                2,
                EventBody::AgentStart {
                    agent_role: "tech-lead".into(),
                    agent_name: "Tech Lead".into(),
                    agent_description: "plans".into(),
                    attempt: 1,
                },
            ),
            Event::new(
                id,
                3,
                EventBody::AgentToken {
                    agent_role: "tech-lead".into(),
                    delta: "hel".into(),
                    attempt: 1,
                },
            ),
            Event::new(
                id,
                4,
                EventBody::AgentToken {
                    agent_role: "tech-lead".into(),
                    delta: "lo".into(),
                    attempt: 1,
                },
            ),
        ];
        let view = TaskView::project(id, &spec, &events);
        assert_eq!(view.status, TaskStatus::Running);
        assert_eq!(view.agents[0].status, AgentState::Running);
        assert_eq!(view.agents[0].output, "hello");
        assert_eq!(view.agents[1].status, AgentState::Pending);
        assert_eq!(view.last_seq, 4);

        let mut more = events.to_vec();
        more.push(Event::new(
            id,
            5,
            EventBody::AgentComplete {
                agent_role: "tech-lead".into(),
                status: SuccessStatus::Success,
                execution_time: 10,
                has_artifacts: false,
                output: "hello".into(),
                artifacts: vec![],
            },
        ));
        let view = TaskView::project(id, &spec, &more);
        assert_eq!(view.agents[0].status, AgentState::Completed);
        assert_eq!(view.agents[0].execution_time, Some(10));
    }
}
