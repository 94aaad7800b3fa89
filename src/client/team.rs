//! What a client knows of a running task, folded from its events: each agent's state,
//! timing and tokens, and how the task ended. Drawing it is `report`'s business.

use std::time::{Duration, Instant};

use troupe_events::{Event, EventBody, UsageSource, UsageTotals, millis_since};

use super::error::Exit;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    Pending,
    Running,
    Done,
    Failed,
    Cancelled,
}

impl Phase {
    pub fn word(self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Running => "running",
            Phase::Done => "done",
            Phase::Failed => "failed",
            Phase::Cancelled => "cancelled",
        }
    }

    pub fn mark(self) -> &'static str {
        match self {
            Phase::Pending => "·",
            Phase::Running => "▸",
            Phase::Done => "✔",
            Phase::Failed => "✖",
            Phase::Cancelled => "⊘",
        }
    }
}

/// Tokens of an agent's current attempt: counted from the streamed text (about four
/// characters a token) until the provider's figure arrives in `agent_usage`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tokens {
    pub count: u64,
    /// An estimate: ours from the text, or the simulated provider's.
    pub estimated: bool,
}

impl std::fmt::Display for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let about = if self.estimated { "~" } else { "" };
        write!(f, "{about}{} tokens", self.count)
    }
}

#[derive(Debug, Clone)]
pub struct Agent {
    pub role: String,
    pub name: String,
    pub phase: Phase,
    pub attempt: u32,
    /// When the current attempt started, on this machine's clock.
    pub started: Option<Instant>,
    /// How long the attempt took, once it ended (the worker's figure).
    pub took: Option<Duration>,
    streamed_chars: u64,
    reported: Option<Tokens>,
    /// What it is doing now, or why it failed.
    pub note: String,
}

impl Agent {
    fn new(role: &str) -> Agent {
        Agent {
            role: role.to_string(),
            name: role.to_string(),
            phase: Phase::Pending,
            attempt: 0,
            started: None,
            took: None,
            streamed_chars: 0,
            reported: None,
            note: String::new(),
        }
    }

    pub fn tokens(&self) -> Option<Tokens> {
        self.reported.or_else(|| {
            (self.streamed_chars > 0).then(|| Tokens {
                count: self.streamed_chars.div_ceil(4),
                estimated: true,
            })
        })
    }

    /// Time taken so far, or in all once it ended.
    pub fn elapsed(&self) -> Option<Duration> {
        self.took.or_else(|| self.started.map(|s| s.elapsed()))
    }

    fn start(&mut self, name: &str, attempt: u32, at_ms_ago: u64) {
        self.name = name.to_string();
        self.phase = Phase::Running;
        self.attempt = attempt;
        self.started = Instant::now().checked_sub(Duration::from_millis(at_ms_ago));
        self.took = None;
        self.streamed_chars = 0;
        self.reported = None;
        self.note.clear();
    }

    fn end(&mut self, phase: Phase, execution_ms: u64, note: &str) {
        self.phase = phase;
        self.took = Some(Duration::from_millis(execution_ms));
        self.note = note.to_string();
    }
}

/// How the task ended: its terminal event.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    Completed,
    Failed(String),
    Cancelled(String),
}

impl Outcome {
    pub fn of(event: &Event) -> Option<(Outcome, u64, Option<UsageTotals>)> {
        match &event.body {
            EventBody::TaskComplete {
                total_execution_time,
                usage,
                ..
            } => Some((Outcome::Completed, *total_execution_time, *usage)),
            EventBody::TaskError {
                error,
                total_execution_time,
                usage,
                ..
            } => Some((
                Outcome::Failed(error.clone()),
                *total_execution_time,
                *usage,
            )),
            EventBody::TaskCancelled {
                reason,
                total_execution_time,
                usage,
            } => Some((
                Outcome::Cancelled(reason.clone()),
                *total_execution_time,
                *usage,
            )),
            _ => None,
        }
    }

    pub fn exit(&self) -> Exit {
        match self {
            Outcome::Completed => Exit::Ok,
            Outcome::Failed(_) => Exit::Failed,
            Outcome::Cancelled(_) => Exit::Cancelled,
        }
    }
}

/// What an event changed.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// The team is known: one line per agent.
    Team,
    /// Agent `i`'s line changed.
    Agent(usize),
    Ended {
        outcome: Outcome,
        total_ms: u64,
        usage: Option<UsageTotals>,
    },
    Nothing,
}

#[derive(Debug, Default)]
pub struct Team {
    pub agents: Vec<Agent>,
}

impl Team {
    pub fn apply(&mut self, event: &Event) -> Change {
        if let Some((outcome, total_ms, usage)) = Outcome::of(event) {
            return Change::Ended {
                outcome,
                total_ms,
                usage,
            };
        }
        match &event.body {
            EventBody::TaskCreated {
                selected_agents, ..
            } => {
                self.agents = selected_agents.iter().map(|r| Agent::new(r)).collect();
                Change::Team
            }
            EventBody::AgentStart {
                agent_role,
                agent_name,
                attempt,
                ..
            } => self.change(agent_role, |a| {
                a.start(agent_name, *attempt, millis_since(event.at))
            }),
            EventBody::AgentProgress {
                agent_role,
                message,
            } => self.change(agent_role, |a| a.note = message.clone()),
            EventBody::AgentToken {
                agent_role,
                delta,
                attempt,
            } => self.change(agent_role, |a| {
                // 0: a log from before tokens carried their attempt.
                if *attempt == 0 || *attempt == a.attempt {
                    a.streamed_chars += delta.chars().count() as u64;
                }
            }),
            EventBody::AgentComplete {
                agent_role,
                execution_time,
                ..
            } => self.change(agent_role, |a| a.end(Phase::Done, *execution_time, "")),
            EventBody::AgentError {
                agent_role,
                execution_time,
                error,
                ..
            } => self.change(agent_role, |a| a.end(Phase::Failed, *execution_time, error)),
            EventBody::AgentCancelled {
                agent_role,
                execution_time,
                reason,
                ..
            } => self.change(agent_role, |a| {
                a.end(Phase::Cancelled, *execution_time, reason)
            }),
            EventBody::AgentUsage {
                agent_role,
                attempt,
                usage,
                ..
            } => self.change(agent_role, |a| {
                if let (true, Some(count)) = (*attempt == a.attempt, usage.counts.output_tokens) {
                    a.reported = Some(Tokens {
                        count,
                        estimated: usage.counts.source == UsageSource::Simulated,
                    });
                }
            }),
            EventBody::AgentFailover {
                agent_role,
                to_provider,
                to_model,
                ..
            } => self.change(agent_role, |a| {
                a.note = format!("failed over to {to_provider} ({to_model})")
            }),
            _ => Change::Nothing,
        }
    }

    /// Applies `f` to the agent of `role`, adding a line for a role the team did not list
    /// (a log joined after its first event).
    fn change(&mut self, role: &str, f: impl FnOnce(&mut Agent)) -> Change {
        let index = match self.agents.iter().position(|a| a.role == role) {
            Some(i) => i,
            None => {
                self.agents.push(Agent::new(role));
                self.agents.len() - 1
            }
        };
        f(&mut self.agents[index]);
        Change::Agent(index)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn event(seq: u64, body: serde_json::Value) -> Event {
        let mut value = json!({
            "seq": seq,
            "taskId": "01a20b49-5f5e-7019-8709-93a3314ed12d",
            // The fold measures elapsed time from `at`; any past instant will do.
            "at": "2020-01-01T00:00:00Z",
        });
        value
            .as_object_mut()
            .unwrap()
            .extend(body.as_object().unwrap().clone());
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn an_agent_goes_from_pending_to_done_with_its_tokens() {
        let mut team = Team::default();
        let created = event(
            1,
            json!({"type": "task_created", "title": "t", "selectedAgents": ["tech-lead", "qa"],
                   "executionMode": "parallel", "provider": "simulated"}),
        );
        assert_eq!(team.apply(&created), Change::Team);
        assert_eq!(team.agents[1].phase, Phase::Pending);

        let start = event(
            2,
            json!({"type": "agent_start", "agentRole": "qa", "agentName": "QA Engineer",
                   "agentDescription": "d", "attempt": 1}),
        );
        assert_eq!(team.apply(&start), Change::Agent(1));
        let token = event(
            3,
            json!({"type": "agent_token", "agentRole": "qa", "attempt": 1, "delta": "abcdefghi"}),
        );
        team.apply(&token);
        let qa = &team.agents[1];
        assert_eq!(
            (qa.phase, qa.name.as_str()),
            (Phase::Running, "QA Engineer")
        );
        assert_eq!(
            qa.tokens(),
            Some(Tokens {
                count: 3,
                estimated: true
            })
        );

        let done = event(
            4,
            json!({"type": "agent_complete", "agentRole": "qa", "status": "success",
                   "executionTime": 1500, "hasArtifacts": false, "output": "ok"}),
        );
        team.apply(&done);
        let usage = event(
            5,
            json!({"type": "agent_usage", "agentRole": "qa", "attempt": 1, "provider": "openai",
                   "model": "m", "source": "reported", "inputTokens": 10, "outputTokens": 42}),
        );
        team.apply(&usage);
        let qa = &team.agents[1];
        assert_eq!(qa.phase, Phase::Done);
        assert_eq!(qa.elapsed(), Some(Duration::from_millis(1500)));
        assert_eq!(qa.tokens().unwrap().to_string(), "42 tokens");
    }

    #[test]
    fn text_of_an_earlier_attempt_is_not_counted() {
        let mut team = Team::default();
        team.apply(&event(
            1,
            json!({"type": "agent_start", "agentRole": "qa", "agentName": "QA",
                   "agentDescription": "d", "attempt": 2}),
        ));
        team.apply(&event(
            2,
            json!({"type": "agent_token", "agentRole": "qa", "attempt": 1, "delta": "late text"}),
        ));
        assert_eq!(team.agents[0].tokens(), None);
    }

    #[test]
    fn terminal_events_end_the_task_with_their_exit_code() {
        let mut team = Team::default();
        let failed = event(
            9,
            json!({"type": "task_error", "error": "qa failed", "failedAgents": ["qa"],
                   "totalExecutionTime": 12}),
        );
        let Change::Ended {
            outcome, total_ms, ..
        } = team.apply(&failed)
        else {
            panic!("task_error ends the task");
        };
        assert_eq!((outcome.exit(), total_ms), (Exit::Failed, 12));
        let cancelled = event(
            9,
            json!({"type": "task_cancelled", "reason": "cancelled by a user"}),
        );
        let Change::Ended { outcome, .. } = team.apply(&cancelled) else {
            panic!("task_cancelled ends the task");
        };
        assert_eq!(outcome.exit(), Exit::Cancelled);
    }
}
