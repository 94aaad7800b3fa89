//! What a task is: the spec a user submitted, the row the store keeps, the job the queue
//! carries, and the view projected from the task's events.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::event::{Artifact, Event, EventBody};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
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
}

impl TaskSpec {
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TaskStatus {
    Queued,
    Running,
    Completed,
    Failed,
}

impl TaskStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            TaskStatus::Queued => "queued",
            TaskStatus::Running => "running",
            TaskStatus::Completed => "completed",
            TaskStatus::Failed => "failed",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "queued" => TaskStatus::Queued,
            "running" => TaskStatus::Running,
            "completed" => TaskStatus::Completed,
            "failed" => TaskStatus::Failed,
            _ => return None,
        })
    }

    pub fn is_terminal(self) -> bool {
        matches!(self, TaskStatus::Completed | TaskStatus::Failed)
    }

    /// The status a task has once an event of `kind` is in its log, if that event changes it.
    pub fn after_kind(kind: &str) -> Option<Self> {
        match kind {
            "task_complete" => Some(TaskStatus::Completed),
            "task_error" => Some(TaskStatus::Failed),
            "agent_start" | "task_resumed" => Some(TaskStatus::Running),
            _ => None,
        }
    }
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum AgentState {
    Pending,
    Running,
    Completed,
    Error,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
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
}

/// A task as a reader sees it, rebuilt from its events alone.
#[derive(Debug, Clone, PartialEq, Serialize)]
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
    pub agents: Vec<AgentView>,
    pub last_seq: u64,
}

impl TaskView {
    /// Folds the log over the spec. The spec supplies what the events do not repeat
    /// (description, agents not yet started); everything that changes comes from events.
    pub fn project(task_id: Uuid, spec: &TaskSpec, events: &[Event]) -> Self {
        let mut view = TaskView {
            task_id,
            title: spec.title.clone(),
            description: spec.description.clone(),
            status: TaskStatus::Queued,
            execution_mode: spec.execution_mode,
            provider: spec.provider.clone(),
            model: spec.model.clone(),
            created_at: events.first().map(|e| e.at).unwrap_or_else(Utc::now),
            finished_at: None,
            total_execution_time: None,
            error: None,
            agents: spec
                .agents
                .iter()
                .map(|a| AgentView {
                    role: a.role.clone(),
                    name: a.name.clone(),
                    description: a.description.clone(),
                    status: AgentState::Pending,
                    attempt: 0,
                    started_at: None,
                    finished_at: None,
                    execution_time: None,
                    output: String::new(),
                    error: None,
                    has_artifacts: false,
                    artifacts: vec![],
                })
                .collect(),
            last_seq: 0,
        };
        let index: HashMap<String, usize> = spec
            .agents
            .iter()
            .enumerate()
            .map(|(i, a)| (a.role.clone(), i))
            .collect();
        for event in events {
            view.apply(&index, event);
        }
        view
    }

    fn apply(&mut self, index: &HashMap<String, usize>, event: &Event) {
        self.last_seq = event.seq;
        if let Some(status) = TaskStatus::after_kind(event.body.kind()) {
            self.status = status;
        }
        let agent = |role: &str, agents: &mut Vec<AgentView>| -> Option<usize> {
            index.get(role).copied().filter(|i| *i < agents.len())
        };
        match &event.body {
            EventBody::TaskCreated { .. } => self.created_at = event.at,
            EventBody::TaskResumed { .. } | EventBody::AgentProgress { .. } => {}
            EventBody::AgentStart {
                agent_role,
                attempt,
                ..
            } => {
                if let Some(i) = agent(agent_role, &mut self.agents) {
                    let a = &mut self.agents[i];
                    a.status = AgentState::Running;
                    a.attempt = *attempt;
                    a.started_at = Some(event.at);
                    a.finished_at = None;
                    a.execution_time = None;
                    a.output.clear();
                    a.error = None;
                }
            }
            EventBody::AgentToken { agent_role, delta } => {
                if let Some(i) = agent(agent_role, &mut self.agents) {
                    self.agents[i].output.push_str(delta);
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
                if let Some(i) = agent(agent_role, &mut self.agents) {
                    let a = &mut self.agents[i];
                    a.status = AgentState::Completed;
                    a.finished_at = Some(event.at);
                    a.execution_time = Some(*execution_time);
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
                if let Some(i) = agent(agent_role, &mut self.agents) {
                    let a = &mut self.agents[i];
                    a.status = AgentState::Error;
                    a.finished_at = Some(event.at);
                    a.execution_time = Some(*execution_time);
                    a.error = Some(error.clone());
                }
            }
            EventBody::TaskComplete {
                total_execution_time,
                ..
            } => {
                self.finished_at = Some(event.at);
                self.total_execution_time = Some(*total_execution_time);
            }
            EventBody::TaskError {
                error,
                total_execution_time,
                ..
            } => {
                self.finished_at = Some(event.at);
                self.total_execution_time = Some(*total_execution_time);
                self.error = Some(error.clone());
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::SuccessStatus;

    fn spec() -> TaskSpec {
        TaskSpec {
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
                },
            ),
            Event::new(
                id,
                4,
                EventBody::AgentToken {
                    agent_role: "tech-lead".into(),
                    delta: "lo".into(),
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
