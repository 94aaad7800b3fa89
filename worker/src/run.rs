//! Running one task: read its log, resume where it stopped, run the agents that have not
//! completed (in order, or side by side), and end the log with a terminal event.

use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::StreamExt;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use troupe_events::event::{AgentOutput, ErrorStatus, SuccessStatus};
use troupe_events::task::AgentState;
use troupe_events::{AgentDef, EventBody, ExecutionMode, TaskRecord, TaskView};

use crate::appender::{Emitter, Stopped};
use crate::artifacts::extract_artifacts;
use crate::providers::{CompletionRequest, SharedProvider};

/// Most text one agent may produce. A provider that never stops must not exhaust memory
/// (or the log): past this, the agent fails.
pub const MAX_AGENT_OUTPUT: usize = 512 * 1024;

/// Milliseconds from `since` to now: the task's total time as its terminal event says it.
pub(crate) fn elapsed_since(since: chrono::DateTime<Utc>) -> u64 {
    (Utc::now() - since).num_milliseconds().max(0) as u64
}

/// How one agent's run ended.
pub(crate) enum AgentResult {
    Completed(String),
    Failed(String),
}

/// Everything a task's agents share while it runs.
pub(crate) struct TaskRun {
    pub task: TaskRecord,
    pub view: TaskView,
    pub provider: Result<SharedProvider, String>,
    pub emitter: Emitter,
    pub agent_slots: Arc<Semaphore>,
    pub token_flush: Duration,
    pub stop: CancellationToken,
}

impl TaskRun {
    /// Runs the agents that still need to run and returns the terminal event.
    /// `Err(Stopped)`: the appender stopped or the worker is shutting down; no terminal
    /// event must be written.
    pub async fn run(self: Arc<Self>) -> Result<EventBody, Stopped> {
        let agents = &self.task.spec.agents;
        let mut outputs: Vec<Option<String>> = self
            .view
            .agents
            .iter()
            .map(|a| (a.status == AgentState::Completed).then(|| a.output.clone()))
            .collect();
        let mut failures: Vec<(String, String)> = Vec::new();
        match self.task.spec.execution_mode {
            ExecutionMode::Sequential => {
                for (i, agent) in agents.iter().enumerate() {
                    if outputs[i].is_some() {
                        continue;
                    }
                    let before: Vec<(&AgentDef, &str)> = agents[..i]
                        .iter()
                        .zip(&outputs[..i])
                        .filter_map(|(a, o)| o.as_deref().map(|o| (a, o)))
                        .collect();
                    let prompt = self.prompt(&before);
                    let names: Vec<&str> = before.iter().map(|(a, _)| a.name.as_str()).collect();
                    let progress = match names.as_slice() {
                        [] => self.asking(),
                        names => {
                            format!("{}, with the work of {}", self.asking(), names.join(", "))
                        }
                    };
                    match self.clone().run_agent(i, prompt, progress).await? {
                        AgentResult::Completed(output) => outputs[i] = Some(output),
                        AgentResult::Failed(error) => {
                            // Later agents build on this one's output: without it, stop.
                            failures.push((agent.role.clone(), error));
                            break;
                        }
                    }
                }
            }
            ExecutionMode::Parallel => {
                let mut running = tokio::task::JoinSet::new();
                for (i, _) in agents
                    .iter()
                    .enumerate()
                    .filter(|(i, _)| outputs[*i].is_none())
                {
                    let run = self.clone();
                    let prompt = self.prompt(&[]);
                    let progress = self.asking();
                    running.spawn(async move {
                        let permit = run.agent_slots.clone().acquire_owned().await;
                        let result = run.run_agent(i, prompt, progress).await;
                        drop(permit);
                        (i, result)
                    });
                }
                while let Some(joined) = running.join_next().await {
                    let (i, result) = joined.expect("agent runs do not panic");
                    match result? {
                        AgentResult::Completed(output) => outputs[i] = Some(output),
                        AgentResult::Failed(error) => {
                            failures.push((agents[i].role.clone(), error))
                        }
                    }
                }
                // Report failures in the team's order, not in the order they happened.
                failures.sort_by_key(|(role, _)| agents.iter().position(|a| &a.role == role));
            }
        }
        let total = elapsed_since(self.task.created_at);
        if failures.is_empty() {
            return Ok(EventBody::TaskComplete {
                total_execution_time: total,
                outputs: agents
                    .iter()
                    .zip(outputs)
                    .map(|(a, o)| AgentOutput {
                        agent_role: a.role.clone(),
                        agent_name: a.name.clone(),
                        output: o.unwrap_or_default(),
                    })
                    .collect(),
            });
        }
        let names: Vec<&str> = failures.iter().map(|(role, _)| role.as_str()).collect();
        let error = if failures.len() == 1 {
            format!("agent {} failed: {}", failures[0].0, failures[0].1)
        } else {
            format!("{} agents failed: {}", failures.len(), names.join(", "))
        };
        Ok(EventBody::TaskError {
            error,
            failed_agents: failures.into_iter().map(|(role, _)| role).collect(),
            total_execution_time: total,
        })
    }

    /// The user message: the task, and in a sequential run the team's work so far.
    fn prompt(&self, before: &[(&AgentDef, &str)]) -> String {
        let spec = &self.task.spec;
        let mut prompt = String::new();
        if !spec.title.is_empty() {
            prompt.push_str(&format!("# Task: {}\n\n", spec.title));
        }
        prompt.push_str(&spec.description);
        if !before.is_empty() {
            prompt.push_str("\n\n# Work so far from the team\n");
            for (agent, output) in before {
                prompt.push_str(&format!(
                    "\n## {} ({})\n\n{}\n",
                    agent.name, agent.role, output
                ));
            }
        }
        prompt
    }

    /// What the agent is waiting for, said for a person watching the card.
    fn asking(&self) -> String {
        let spec = &self.task.spec;
        match &spec.model {
            Some(model) => format!("Asking the {} provider ({model})", spec.provider),
            None => format!("Asking the {} provider", spec.provider),
        }
    }

    async fn run_agent(
        self: Arc<Self>,
        index: usize,
        prompt: String,
        progress: String,
    ) -> Result<AgentResult, Stopped> {
        let agent = &self.task.spec.agents[index];
        let attempt = self.view.agents[index].attempt + 1;
        let role = agent.role.clone();
        let started = Instant::now();
        self.emitter
            .emit(EventBody::AgentStart {
                agent_role: role.clone(),
                agent_name: agent.name.clone(),
                agent_description: agent.description.clone(),
                attempt,
            })
            .await?;
        self.emitter
            .emit(EventBody::AgentProgress {
                agent_role: role.clone(),
                message: progress,
            })
            .await?;
        let outcome = tokio::select! {
            _ = self.stop.cancelled() => return Err(Stopped),
            outcome = self.call_provider(agent, prompt) => outcome?,
        };
        let execution_time = started.elapsed().as_millis() as u64;
        let (event, result) = match outcome {
            Ok(output) => {
                let artifacts = extract_artifacts(&output);
                (
                    EventBody::AgentComplete {
                        agent_role: role,
                        status: SuccessStatus::Success,
                        execution_time,
                        has_artifacts: !artifacts.is_empty(),
                        output: output.clone(),
                        artifacts,
                    },
                    AgentResult::Completed(output),
                )
            }
            Err(error) => (
                EventBody::AgentError {
                    agent_role: role,
                    status: ErrorStatus::Error,
                    execution_time,
                    error: error.clone(),
                },
                AgentResult::Failed(error),
            ),
        };
        self.emitter.emit(event).await?;
        Ok(result)
    }

    /// Streams the completion into coalesced `agent_token` events. The outer error stops
    /// the task; the inner one is the agent's failure, said for a person.
    async fn call_provider(
        &self,
        agent: &AgentDef,
        prompt: String,
    ) -> Result<Result<String, String>, Stopped> {
        let provider = match &self.provider {
            Ok(provider) => provider,
            Err(message) => return Ok(Err(message.clone())),
        };
        let request = CompletionRequest {
            agent_role: agent.role.clone(),
            system: agent.prompt.clone(),
            prompt,
            model: self.task.spec.model.clone(),
            options: self.task.spec.provider_options.clone(),
        };
        let mut stream = match provider.stream(&request).await {
            Ok(stream) => stream,
            Err(e) => return Ok(Err(e.message)),
        };
        let mut output = String::new();
        let mut pending = String::new();
        let mut flush = tokio::time::interval(self.token_flush);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let failure = loop {
            tokio::select! {
                delta = stream.next() => match delta {
                    Some(Ok(text)) => {
                        if output.len() + text.len() > MAX_AGENT_OUTPUT {
                            break Some(format!(
                                "the agent's answer grew past {} KiB and was stopped",
                                MAX_AGENT_OUTPUT / 1024
                            ));
                        }
                        output.push_str(&text);
                        pending.push_str(&text);
                        if pending.len() >= 4096 {
                            self.emit_tokens(&agent.role, &mut pending).await?;
                        }
                    }
                    Some(Err(e)) => break Some(e.message),
                    None => break None,
                },
                _ = flush.tick() => self.emit_tokens(&agent.role, &mut pending).await?,
            }
        };
        self.emit_tokens(&agent.role, &mut pending).await?;
        Ok(match failure {
            Some(message) => Err(message),
            None => Ok(output),
        })
    }

    async fn emit_tokens(&self, role: &str, pending: &mut String) -> Result<(), Stopped> {
        if pending.is_empty() {
            return Ok(());
        }
        self.emitter
            .emit(EventBody::AgentToken {
                agent_role: role.to_string(),
                delta: std::mem::take(pending),
            })
            .await
    }
}
