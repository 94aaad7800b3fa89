//! The event log's vocabulary: what can happen to a task, and how it looks on the wire.
//! Field names are camelCase and type names snake_case because browsers of the original
//! design already parse them; changing one breaks every client in the field.

use bytes::Bytes;
use chrono::{DateTime, SubsecRound, Utc};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use uuid::Uuid;

use crate::task::ExecutionMode;
use crate::usage::{AttemptUsage, UsageTotals};

/// `status` of `agent_complete`: a constant on the wire, kept as a type so it cannot drift.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum SuccessStatus {
    #[default]
    #[serde(rename = "success")]
    Success,
}

/// `status` of `agent_error`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
pub enum ErrorStatus {
    #[default]
    #[serde(rename = "error")]
    Error,
}

/// A file an agent produced: a fenced code block that named a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Artifact {
    pub filename: String,
    pub language: Option<String>,
    pub content: String,
}

/// One agent's final word, as listed in `task_complete`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct AgentOutput {
    pub agent_role: String,
    pub agent_name: String,
    pub output: String,
}

/// What happened, by `type`, with that type's own fields. A newer server may write types
/// this list lacks: a reader passes them through.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventBody {
    /// The first event of every log: the task as submitted.
    #[serde(rename_all = "camelCase")]
    TaskCreated {
        title: String,
        selected_agents: Vec<String>,
        execution_mode: ExecutionMode,
        provider: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        model: Option<String>,
    },
    /// A worker picked the task up again after a crash or redelivery; agents already
    /// complete are kept, the rest run again.
    #[serde(rename_all = "camelCase")]
    TaskResumed { delivery: u64, reason: String },
    /// An agent's attempt began; attempts count from 1 (a retry or a resumed run makes
    /// the next).
    #[serde(rename_all = "camelCase")]
    AgentStart {
        agent_role: String,
        agent_name: String,
        agent_description: String,
        attempt: u32,
    },
    /// A note on what an agent is doing.
    #[serde(rename_all = "camelCase")]
    AgentProgress { agent_role: String, message: String },
    /// Text the agent streamed, coalesced to a few events a second. `attempt` lets a
    /// viewer drop the text of an earlier attempt; 0 in logs written before tokens
    /// carried it, read as "the agent's current attempt".
    #[serde(rename_all = "camelCase")]
    AgentToken {
        agent_role: String,
        delta: String,
        #[serde(default)]
        attempt: u32,
    },
    /// An agent finished; `output` is its whole answer.
    #[serde(rename_all = "camelCase")]
    AgentComplete {
        agent_role: String,
        status: SuccessStatus,
        /// Milliseconds.
        execution_time: u64,
        has_artifacts: bool,
        output: String,
        /// The files its answer named, from fenced code blocks.
        #[serde(default)]
        artifacts: Vec<Artifact>,
    },
    /// An agent failed.
    #[serde(rename_all = "camelCase")]
    AgentError {
        agent_role: String,
        status: ErrorStatus,
        /// Milliseconds.
        execution_time: u64,
        error: String,
    },
    /// A user stopped the agent (or its whole task); `output` is the text it had produced.
    #[serde(rename_all = "camelCase")]
    AgentCancelled {
        agent_role: String,
        attempt: u32,
        execution_time: u64,
        reason: String,
        #[serde(default)]
        output: String,
    },
    /// What one agent attempt used, after its provider call ended (whatever the ending).
    #[serde(rename_all = "camelCase")]
    AgentUsage {
        agent_role: String,
        attempt: u32,
        provider: String,
        /// The model that answered.
        model: String,
        /// Milliseconds from the call to its first text; absent when no text came.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        time_to_first_token: Option<u64>,
        #[serde(flatten)]
        usage: AttemptUsage,
    },
    /// An agent's provider kept failing before any text (rate limits, 5xx, timeouts, after
    /// its retries), and the fallback took over the same attempt.
    #[serde(rename_all = "camelCase")]
    AgentFailover {
        agent_role: String,
        attempt: u32,
        from_provider: String,
        from_model: String,
        to_provider: String,
        to_model: String,
        /// The failing provider's last error.
        reason: String,
    },
    /// Every agent completed: the task's end.
    #[serde(rename_all = "camelCase")]
    TaskComplete {
        /// Milliseconds from submit to this event.
        total_execution_time: u64,
        outputs: Vec<AgentOutput>,
        /// Every attempt's usage in the task's life; absent in logs from before usage.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        usage: Option<UsageTotals>,
    },
    /// The task failed: its end, unless it is retried.
    #[serde(rename_all = "camelCase")]
    TaskError {
        error: String,
        /// The roles of the agents that failed; empty when the task was given up after
        /// too many runs.
        #[serde(default)]
        failed_agents: Vec<String>,
        /// Milliseconds from submit to this event, as on `task_complete`: computed once
        /// by the writer so that every reader shows the same figure.
        #[serde(default)]
        total_execution_time: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        usage: Option<UsageTotals>,
    },
    /// A user (or the budget) cancelled the task: its end, unless it is retried.
    #[serde(rename_all = "camelCase")]
    TaskCancelled {
        reason: String,
        #[serde(default)]
        total_execution_time: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        usage: Option<UsageTotals>,
    },
    /// No new agent starts until `task_unpaused`; the task holds no worker meanwhile.
    #[serde(rename_all = "camelCase")]
    TaskPaused { reason: String },
    /// A user resumed the paused task; it is queued again.
    #[serde(rename_all = "camelCase")]
    TaskUnpaused { reason: String },
    /// A finished task runs `agents` again, as new attempts appended to the same log.
    #[serde(rename_all = "camelCase")]
    TaskRetried { agents: Vec<String>, reason: String },
    /// The worker handed the task back at shutdown: an interruption, not a failed run.
    #[serde(rename_all = "camelCase")]
    TaskReleased { reason: String },
    /// A type this version does not know, written by a newer one during a rolling deploy.
    /// Readers pass it through and otherwise ignore it. It is never written (serialising
    /// it is an error), and so it is not in the OpenAPI document either.
    #[serde(other, skip_serializing)]
    Unknown,
}

impl EventBody {
    /// The wire name of the type: the SSE `event:` field and the last NATS subject token.
    pub fn kind(&self) -> &'static str {
        match self {
            EventBody::TaskCreated { .. } => "task_created",
            EventBody::TaskResumed { .. } => "task_resumed",
            EventBody::AgentStart { .. } => "agent_start",
            EventBody::AgentProgress { .. } => "agent_progress",
            EventBody::AgentToken { .. } => "agent_token",
            EventBody::AgentComplete { .. } => "agent_complete",
            EventBody::AgentError { .. } => "agent_error",
            EventBody::AgentUsage { .. } => "agent_usage",
            EventBody::AgentFailover { .. } => "agent_failover",
            EventBody::TaskComplete { .. } => "task_complete",
            EventBody::TaskError { .. } => "task_error",
            EventBody::TaskCancelled { .. } => "task_cancelled",
            EventBody::TaskPaused { .. } => "task_paused",
            EventBody::TaskUnpaused { .. } => "task_unpaused",
            EventBody::TaskRetried { .. } => "task_retried",
            EventBody::TaskReleased { .. } => "task_released",
            EventBody::AgentCancelled { .. } => "agent_cancelled",
            EventBody::Unknown => "unknown",
        }
    }
}

/// Milliseconds from `since` to now, never negative: how long a task or an agent has
/// taken, as its events say it.
pub fn millis_since(since: DateTime<Utc>) -> u64 {
    (Utc::now() - since).num_milliseconds().max(0) as u64
}

/// Types that end a run: a stream ends after one, and no worker appends after it. Only an
/// explicit retry (`task_retried`) continues such a log.
pub const TERMINAL_KINDS: [&str; 3] = ["task_complete", "task_error", "task_cancelled"];

pub fn is_terminal_kind(kind: &str) -> bool {
    TERMINAL_KINDS.contains(&kind)
}

/// One event of a task's log: an SSE frame's `data`, a line of the NDJSON export.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Event {
    /// Its place in the task's log: 1, 2, 3… with no holes. The SSE `id`.
    pub seq: u64,
    pub task_id: Uuid,
    /// When it was stored.
    pub at: DateTime<Utc>,
    #[serde(flatten)]
    pub body: EventBody,
}

impl Event {
    pub fn new(task_id: Uuid, seq: u64, body: EventBody) -> Self {
        Event {
            seq,
            task_id,
            // Microseconds: what PostgreSQL keeps, so the `at` column and the JSON agree.
            at: Utc::now().trunc_subsecs(6),
            body,
        }
    }

    /// Serialises once; the bytes are what the store keeps and every reader sends.
    pub fn to_raw(&self) -> RawEvent {
        let json = serde_json::to_vec(self).expect("an event always serialises");
        RawEvent {
            task_id: self.task_id,
            seq: self.seq,
            kind: self.body.kind().into(),
            at: self.at,
            json: Bytes::from(json),
        }
    }
}

/// An event as stored and transported: its JSON kept as bytes so that replay and fan-out
/// never parse or re-serialise it.
#[derive(Debug, Clone, PartialEq)]
pub struct RawEvent {
    pub task_id: Uuid,
    pub seq: u64,
    pub kind: String,
    pub at: DateTime<Utc>,
    pub json: Bytes,
}

impl RawEvent {
    pub fn is_terminal(&self) -> bool {
        is_terminal_kind(&self.kind)
    }

    pub fn parse(&self) -> Result<Event, serde_json::Error> {
        serde_json::from_slice(&self.json)
    }

    pub fn json_str(&self) -> &str {
        // Built from serde_json output or read from a text column; both are UTF-8.
        std::str::from_utf8(&self.json).unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_form_keeps_original_field_names_and_round_trips() {
        let task_id = Uuid::now_v7();
        let event = Event::new(
            task_id,
            4,
            EventBody::AgentComplete {
                agent_role: "qa".into(),
                status: SuccessStatus::Success,
                execution_time: 1200,
                has_artifacts: false,
                output: "fine".into(),
                artifacts: vec![],
            },
        );
        let raw = event.to_raw();
        let value: serde_json::Value = serde_json::from_slice(&raw.json).unwrap();
        assert_eq!(value["type"], "agent_complete");
        assert_eq!(value["agentRole"], "qa");
        assert_eq!(value["status"], "success");
        assert_eq!(value["executionTime"], 1200);
        assert_eq!(value["hasArtifacts"], false);
        assert_eq!(value["seq"], 4);
        assert_eq!(value["taskId"], task_id.to_string());
        assert!(value["at"].as_str().unwrap().contains('T'));
        assert_eq!(raw.parse().unwrap(), event);
        assert_eq!(raw.kind, "agent_complete");
        assert!(!raw.is_terminal());
    }

    #[test]
    fn terminal_kinds_are_the_task_endings() {
        let task_id = Uuid::now_v7();
        let done = Event::new(
            task_id,
            9,
            EventBody::TaskError {
                usage: None,
                error: "boom".into(),
                failed_agents: vec!["qa".into()],
                total_execution_time: 5,
            },
        );
        assert!(done.to_raw().is_terminal());
    }

    #[test]
    fn an_unknown_type_and_unknown_fields_still_parse() {
        let task_id = Uuid::now_v7();
        let newer = format!(
            r#"{{"seq":3,"taskId":"{task_id}","at":"2026-11-25T10:00:00Z","type":"agent_thought","agentRole":"qa","depth":2}}"#
        );
        let event: Event = serde_json::from_str(&newer).unwrap();
        assert_eq!(event.body, EventBody::Unknown);
        assert_eq!(event.seq, 3);
        assert!(
            serde_json::to_vec(&event).is_err(),
            "an unknown event is passed through as stored, never written again"
        );

        let with_extra = format!(
            r#"{{"seq":4,"taskId":"{task_id}","at":"2026-11-25T10:00:00Z","type":"agent_progress","agentRole":"qa","message":"hi","colour":"blue"}}"#
        );
        let event: Event = serde_json::from_str(&with_extra).unwrap();
        assert_eq!(event.body.kind(), "agent_progress");
    }

    #[test]
    fn a_token_written_before_attempts_reads_as_attempt_zero() {
        let task_id = Uuid::now_v7();
        let old = format!(
            r#"{{"seq":5,"taskId":"{task_id}","at":"2026-11-25T10:00:00Z","type":"agent_token","agentRole":"qa","delta":"x"}}"#
        );
        let event: Event = serde_json::from_str(&old).unwrap();
        assert!(matches!(
            event.body,
            EventBody::AgentToken { attempt: 0, .. }
        ));
    }
}
