//! Running one task: resume where its log stopped, run the agents that still need to run
//! (in order, or side by side) while honouring users' cancels and pauses, and say how the
//! run ended with one closing event.

use std::collections::{HashMap, HashSet};
use std::panic::AssertUnwindSafe;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{FutureExt, StreamExt};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;
use troupe_events::event::{AgentOutput, ErrorStatus, SuccessStatus};
use troupe_events::task::{AgentState, AgentView};
use troupe_events::{
    AgentDef, AttemptUsage, Controls, EventBody, ExecutionMode, TaskRecord, TaskView, UsageTotals,
    millis_since,
};

use crate::appender::{Emitter, Stopped};
use crate::artifacts::extract_artifacts;
use crate::prices::Prices;
use crate::providers::{
    Chunk, CompletionRequest, SharedProvider, TextStream, TokenCounts, storable,
};

/// Most text one agent may produce. A provider that never stops must not exhaust memory
/// (or the log): past this, the agent fails.
pub const MAX_AGENT_OUTPUT: usize = 512 * 1024;

pub(crate) const CANCELLED_BY_USER: &str = "cancelled by a user";

/// Where one agent stands in this run.
#[derive(Debug, Clone)]
pub(crate) enum AgentEnd {
    /// Still to run (or held back by a pause).
    Waiting,
    Completed(String),
    Failed(String),
    Cancelled,
}

impl AgentEnd {
    /// What the log says of an agent before this run: a crash-interrupted agent runs again,
    /// one that failed or was cancelled stays so until a retry.
    fn from_view(agent: &AgentView) -> Self {
        match agent.status {
            AgentState::Completed => AgentEnd::Completed(agent.output.clone()),
            AgentState::Error => {
                AgentEnd::Failed(agent.error.clone().unwrap_or_else(|| "failed".into()))
            }
            AgentState::Cancelled => AgentEnd::Cancelled,
            AgentState::Pending | AgentState::Running => AgentEnd::Waiting,
        }
    }
}

/// Users' requests as the running task sees them. Fed from the store by the worker's
/// control watch; read by the run before each agent starts.
#[derive(Default)]
pub(crate) struct Control {
    /// The whole task is cancelled: every agent stops.
    cancel: CancellationToken,
    paused: AtomicBool,
    /// Running agents by role: their attempt and the token that stops them.
    running: Mutex<HashMap<String, (u32, CancellationToken)>>,
    /// Agent cancels seen so far, kept so that one arriving before its agent starts applies.
    agent_cancels: Mutex<HashSet<(String, u32)>>,
    /// Why the whole task was cancelled when it was not a user (its budget ran out).
    reason: Mutex<Option<String>>,
}

impl Control {
    pub fn apply(&self, controls: &Controls) {
        if controls.cancel {
            self.cancel.cancel();
        }
        self.paused.store(controls.pause, Ordering::SeqCst);
        let running = self.running.lock().expect("control lock");
        let mut seen = self.agent_cancels.lock().expect("control lock");
        for (role, attempt) in &controls.cancel_agents {
            if let Some((running_attempt, token)) = running.get(role)
                && running_attempt == attempt
            {
                token.cancel();
            }
            seen.insert((role.clone(), *attempt));
        }
    }

    pub fn is_cancelled(&self) -> bool {
        self.cancel.is_cancelled()
    }

    /// Cancels the task as a user's cancel does, for `reason`.
    pub(crate) fn cancel_for(&self, reason: String) {
        self.reason
            .lock()
            .expect("control lock")
            .get_or_insert(reason);
        self.cancel.cancel();
    }

    fn cancel_reason(&self) -> String {
        let reason = self.reason.lock().expect("control lock");
        reason.clone().unwrap_or_else(|| CANCELLED_BY_USER.into())
    }

    fn is_paused(&self) -> bool {
        self.paused.load(Ordering::SeqCst)
    }

    /// The token that stops this attempt of the agent, already cancelled if asked for.
    fn agent_started(&self, role: &str, attempt: u32) -> CancellationToken {
        let token = self.cancel.child_token();
        if self.agent_cancel_requested(role, attempt) {
            token.cancel();
        }
        self.running
            .lock()
            .expect("control lock")
            .insert(role.to_string(), (attempt, token.clone()));
        token
    }

    fn agent_ended(&self, role: &str) {
        self.running.lock().expect("control lock").remove(role);
    }

    fn agent_cancel_requested(&self, role: &str, attempt: u32) -> bool {
        self.agent_cancels
            .lock()
            .expect("control lock")
            .contains(&(role.to_string(), attempt))
    }
}

/// A provider to call, under the name and model its events give it.
pub(crate) struct Route {
    pub name: String,
    /// `None`: the provider's configured default.
    pub model: Option<String>,
    pub provider: SharedProvider,
}

impl Route {
    /// The model that answers on this route.
    fn model(&self) -> String {
        self.provider.model(self.model.as_deref())
    }
}

/// Everything a task's agents share while it runs.
pub(crate) struct TaskRun {
    pub task: TaskRecord,
    pub view: TaskView,
    pub provider: Result<Route, String>,
    /// Takes over a call whose provider keeps failing before any text.
    pub fallback: Option<Route>,
    pub emitter: Emitter,
    pub agent_slots: Arc<Semaphore>,
    pub token_flush: Duration,
    pub prices: Arc<Prices>,
    /// Every attempt's usage in the task's life: the log's before this run, and this run's.
    pub usage: Mutex<UsageTotals>,
    /// Shutdown, or the appender has stopped: end without a closing event.
    pub stop: CancellationToken,
    pub control: Arc<Control>,
}

impl TaskRun {
    /// Runs the agents that still need to run and returns the event that closes the run:
    /// terminal, or `task_paused`. `Err(Stopped)`: the appender stopped or the worker is
    /// shutting down; no closing event must be written.
    pub async fn run(self: Arc<Self>) -> Result<EventBody, Stopped> {
        let mut ends: Vec<AgentEnd> = self.view.agents.iter().map(AgentEnd::from_view).collect();
        // A run that resumes a task already over its budget stops at once.
        self.hold_to_budget(&self.view.usage);
        self.cancel_interrupted_agents(&mut ends).await?;
        match self.task.spec.execution_mode {
            ExecutionMode::Sequential => self.clone().run_in_order(&mut ends).await?,
            ExecutionMode::Parallel => self.clone().run_side_by_side(&mut ends).await?,
        }
        Ok(self.conclude(ends))
    }

    /// Agents a crash interrupted whose attempt a user had cancelled end as cancelled
    /// rather than run again.
    async fn cancel_interrupted_agents(&self, ends: &mut [AgentEnd]) -> Result<(), Stopped> {
        for (i, agent) in self.view.agents.iter().enumerate() {
            let cancelled = agent.status == AgentState::Running
                && (self.control.is_cancelled()
                    || self
                        .control
                        .agent_cancel_requested(&agent.role, agent.attempt));
            if cancelled {
                self.emitter
                    .emit(EventBody::AgentCancelled {
                        agent_role: agent.role.clone(),
                        attempt: agent.attempt,
                        execution_time: agent.started_at.map_or(0, millis_since),
                        reason: self.control.cancel_reason(),
                        output: agent.output.clone(),
                    })
                    .await?;
                ends[i] = AgentEnd::Cancelled;
            }
        }
        Ok(())
    }

    /// Each agent gets the outputs of those before it; a failed or cancelled agent breaks
    /// the chain, and a cancel or pause stops it before the next agent starts.
    async fn run_in_order(self: Arc<Self>, ends: &mut [AgentEnd]) -> Result<(), Stopped> {
        for i in 0..ends.len() {
            match &ends[i] {
                AgentEnd::Completed(_) => continue,
                AgentEnd::Failed(_) | AgentEnd::Cancelled => break,
                AgentEnd::Waiting => {}
            }
            if self.control.is_cancelled() || self.control.is_paused() {
                break;
            }
            let agents = &self.task.spec.agents;
            let before: Vec<(&AgentDef, &str)> = agents[..i]
                .iter()
                .zip(&ends[..i])
                .filter_map(|(a, end)| match end {
                    AgentEnd::Completed(output) => Some((a, output.as_str())),
                    _ => None,
                })
                .collect();
            let prompt = self.prompt(&before);
            let names: Vec<&str> = before.iter().map(|(a, _)| a.name.as_str()).collect();
            let progress = match names.as_slice() {
                [] => self.asking(),
                names => format!("{}, with the work of {}", self.asking(), names.join(", ")),
            };
            ends[i] = self.clone().run_agent(i, prompt, progress).await?;
            if !matches!(ends[i], AgentEnd::Completed(_)) {
                break;
            }
        }
        Ok(())
    }

    /// Every waiting agent at once on the task alone, within the worker's agent slots.
    async fn run_side_by_side(self: Arc<Self>, ends: &mut [AgentEnd]) -> Result<(), Stopped> {
        let mut running = tokio::task::JoinSet::new();
        for (i, _) in ends
            .iter()
            .enumerate()
            .filter(|(_, end)| matches!(end, AgentEnd::Waiting))
        {
            let run = self.clone();
            // In the task's span, so that the agent's span is a child of the task's.
            running.spawn(Instrument::in_current_span(async move {
                let permit = tokio::select! {
                    permit = run.agent_slots.clone().acquire_owned() => permit,
                    _ = run.control.cancel.cancelled() => return (i, Ok(AgentEnd::Waiting)),
                };
                if run.control.is_cancelled() || run.control.is_paused() {
                    return (i, Ok(AgentEnd::Waiting));
                }
                let prompt = run.prompt(&[]);
                let progress = run.asking();
                let end = run.run_agent(i, prompt, progress).await;
                drop(permit);
                (i, end)
            }));
        }
        while let Some(joined) = running.join_next().await {
            // run_agent contains its own panics; a join error means the runtime is going.
            let (i, end) = joined.map_err(|_| Stopped)?;
            ends[i] = end?;
        }
        Ok(())
    }

    /// The event that closes the run, from where every agent stands.
    fn conclude(&self, ends: Vec<AgentEnd>) -> EventBody {
        let agents = &self.task.spec.agents;
        let total = millis_since(self.task.created_at);
        let usage = Some(*self.usage.lock().expect("usage lock"));
        if self.control.is_cancelled() {
            return EventBody::TaskCancelled {
                usage,
                reason: self.control.cancel_reason(),
                total_execution_time: total,
            };
        }
        let failures: Vec<(&str, &str)> = agents
            .iter()
            .zip(&ends)
            .filter_map(|(a, end)| match end {
                AgentEnd::Failed(error) => Some((a.role.as_str(), error.as_str())),
                _ => None,
            })
            .collect();
        if !failures.is_empty() {
            let error = match failures.as_slice() {
                [(role, error)] => format!("agent {role} failed: {error}"),
                many => format!(
                    "{} agents failed: {}",
                    many.len(),
                    many.iter().map(|(r, _)| *r).collect::<Vec<_>>().join(", ")
                ),
            };
            return EventBody::TaskError {
                usage,
                error,
                failed_agents: failures.iter().map(|(r, _)| r.to_string()).collect(),
                total_execution_time: total,
            };
        }
        let cancelled: Vec<&str> = agents
            .iter()
            .zip(&ends)
            .filter(|(_, end)| matches!(end, AgentEnd::Cancelled))
            .map(|(a, _)| a.role.as_str())
            .collect();
        if !cancelled.is_empty() {
            return EventBody::TaskCancelled {
                usage,
                reason: format!("{} cancelled by a user", cancelled.join(", ")),
                total_execution_time: total,
            };
        }
        if ends.iter().any(|end| matches!(end, AgentEnd::Waiting)) {
            return EventBody::TaskPaused {
                reason: "paused by a user; running agents finished, no new agent starts".into(),
            };
        }
        EventBody::TaskComplete {
            usage,
            total_execution_time: total,
            outputs: agents
                .iter()
                .zip(ends)
                .map(|(a, end)| AgentOutput {
                    agent_role: a.role.clone(),
                    agent_name: a.name.clone(),
                    output: match end {
                        AgentEnd::Completed(output) => output,
                        _ => String::new(),
                    },
                })
                .collect(),
        }
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

    /// One attempt of one agent, from `agent_start` to its closing event. A panic inside
    /// fails the agent instead of the worker.
    #[tracing::instrument(name = "agent", skip_all, fields(
        role = %self.task.spec.agents[index].role,
        attempt = self.view.agents[index].attempt + 1,
    ))]
    async fn run_agent(
        self: Arc<Self>,
        index: usize,
        prompt: String,
        progress: String,
    ) -> Result<AgentEnd, Stopped> {
        let agent = &self.task.spec.agents[index];
        let attempt = self.view.agents[index].attempt + 1;
        self.emitter
            .emit(EventBody::AgentStart {
                agent_role: agent.role.clone(),
                agent_name: agent.name.clone(),
                agent_description: agent.description.clone(),
                attempt,
            })
            .await?;
        self.emitter
            .emit(EventBody::AgentProgress {
                agent_role: agent.role.clone(),
                message: progress,
            })
            .await?;
        let cancel = self.control.agent_started(&agent.role, attempt);
        let started = Instant::now();
        let mut output = String::new();
        let answer = AssertUnwindSafe(self.answer(agent, attempt, prompt, &cancel, &mut output))
            .catch_unwind()
            .await
            .unwrap_or_else(|panic| Answer::Failed(crash_message(panic.as_ref())));
        self.control.agent_ended(&agent.role);
        let took = started.elapsed();
        let execution_time = took.as_millis() as u64;
        let role = agent.role.clone();
        let (event, end) = match answer {
            Answer::Stopped => return Err(Stopped),
            Answer::Completed => {
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
                    AgentEnd::Completed(output),
                )
            }
            Answer::Failed(error) => (
                EventBody::AgentError {
                    agent_role: role,
                    status: ErrorStatus::Error,
                    execution_time,
                    error: error.clone(),
                },
                AgentEnd::Failed(error),
            ),
            Answer::Cancelled => (
                EventBody::AgentCancelled {
                    agent_role: role,
                    attempt,
                    execution_time,
                    reason: self.control.cancel_reason(),
                    output,
                },
                AgentEnd::Cancelled,
            ),
        };
        self.emitter.emit(event).await?;
        let outcome = match end {
            AgentEnd::Completed(_) => "completed",
            AgentEnd::Failed(_) => "failed",
            AgentEnd::Cancelled | AgentEnd::Waiting => "cancelled",
        };
        crate::metrics::agent_finished(&agent.role, outcome, took);
        Ok(end)
    }

    /// The provider's answer, streamed into `output` and coalesced `agent_token` events,
    /// until it ends, fails, is cancelled or the run stops. Dropping the provider's stream
    /// on a cancel aborts the request at once.
    async fn answer(
        &self,
        agent: &AgentDef,
        attempt: u32,
        prompt: String,
        cancel: &CancellationToken,
        output: &mut String,
    ) -> Answer {
        let mut tokens = Tokens {
            emitter: &self.emitter,
            role: &agent.role,
            attempt,
            pending: String::new(),
        };
        let mut call = Call::new();
        let streamed = tokio::select! {
            _ = self.stop.cancelled() => return Answer::Stopped,
            _ = cancel.cancelled() => Ok(Answer::Cancelled),
            answer = self.stream_answer(agent, prompt, output, &mut tokens, &mut call) => answer,
        };
        call.took = call.started.elapsed();
        // What was received before a cancel is part of the log too, and so is its usage.
        let flushed = tokens.flush().await;
        let reported = self.report_usage(&agent.role, attempt, call).await;
        match (streamed, flushed, reported) {
            (Err(Stopped), _, _) | (_, Err(Stopped), _) | (_, _, Err(Stopped)) => Answer::Stopped,
            (Ok(answer), Ok(()), Ok(())) => answer,
        }
    }

    /// `agent_usage` for a call that was answered, and the task cancelled if it is now
    /// over its budget.
    async fn report_usage(&self, role: &str, attempt: u32, call: Call) -> Result<(), Stopped> {
        let Some((provider, model)) = call.answered_by else {
            return Ok(());
        };
        let usage = AttemptUsage {
            cost_usd: self.prices.of(&model).and_then(|p| p.cost(&call.usage)),
            counts: call.usage,
        };
        // Counted whether or not the event can still be stored: the call was made.
        crate::metrics::answered(crate::metrics::Answered {
            provider: &provider,
            model: &model,
            took: call.took,
            first_text: call.first_text,
            counts: &usage.counts,
            cost_usd: usage.cost_usd,
        });
        let totals = {
            let mut totals = self.usage.lock().expect("usage lock");
            totals.add(&usage);
            *totals
        };
        self.emitter
            .emit(EventBody::AgentUsage {
                agent_role: role.to_string(),
                attempt,
                provider,
                model,
                time_to_first_token: call.first_text.map(|ttft| ttft.as_millis() as u64),
                usage,
            })
            .await?;
        self.hold_to_budget(&totals);
        Ok(())
    }

    /// Cancels the task, as a user's cancel would, once `totals` pass its budget.
    fn hold_to_budget(&self, totals: &UsageTotals) {
        let over = self.task.spec.budget.and_then(|b| b.exceeded(totals));
        if let Some(reason) = over {
            self.control.cancel_for(reason);
        }
    }

    /// Opens the call on the task's provider, or on the fallback once the provider's
    /// retries on rate limits, 5xx and timeouts are spent before any text. A permanent
    /// error (a bad key, a bad request) would fail on any provider the same way: no
    /// fallback for those.
    async fn open<'r>(
        &'r self,
        primary: &'r Route,
        mut request: CompletionRequest,
        call: &mut Call,
    ) -> Result<Result<(&'r Route, TextStream), String>, Stopped> {
        let error = match primary.provider.stream(&request).await {
            Ok(stream) => return Ok(Ok((primary, stream))),
            Err(error) => error,
        };
        let Some(fallback) = self.fallback.as_ref().filter(|_| error.transient) else {
            return Ok(Err(error.message));
        };
        self.emitter
            .emit(EventBody::AgentFailover {
                agent_role: request.agent_role.clone(),
                attempt: request.attempt,
                from_provider: primary.name.clone(),
                from_model: primary.model(),
                to_provider: fallback.name.clone(),
                to_model: fallback.model(),
                reason: error.message,
            })
            .await?;
        tracing::warn!(
            agent_role = %request.agent_role,
            from = %primary.name,
            to = %fallback.name,
            "provider kept failing; the fallback takes over"
        );
        // Time to first token is the answering model's own.
        call.started = Instant::now();
        request.model = fallback.model.clone();
        Ok(fallback
            .provider
            .stream(&request)
            .await
            .map(|stream| (fallback, stream))
            .map_err(|e| {
                format!(
                    "{} kept failing, and its fallback {} ({}) failed too: {}",
                    primary.name,
                    fallback.name,
                    fallback.model(),
                    e.message
                )
            }))
    }

    /// The span records the route that answered: the fallback's after a failover.
    #[tracing::instrument(name = "provider_call", skip_all, fields(
        provider = tracing::field::Empty,
        model = tracing::field::Empty,
    ))]
    async fn stream_answer(
        &self,
        agent: &AgentDef,
        prompt: String,
        output: &mut String,
        tokens: &mut Tokens<'_>,
        call: &mut Call,
    ) -> Result<Answer, Stopped> {
        let primary = match &self.provider {
            Ok(primary) => primary,
            Err(message) => return Ok(Answer::Failed(message.clone())),
        };
        let request = CompletionRequest {
            agent_role: agent.role.clone(),
            attempt: tokens.attempt,
            system: agent.prompt.clone(),
            prompt,
            model: primary.model.clone(),
            options: self.task.spec.provider_options.clone(),
        };
        let (route, mut stream) = match self.open(primary, request, call).await? {
            Ok(opened) => opened,
            Err(message) => return Ok(Answer::Failed(message)),
        };
        let model = route.model();
        let span = tracing::Span::current();
        span.record("provider", route.name.as_str());
        span.record("model", model.as_str());
        call.answered_by = Some((route.name.clone(), model));
        let mut flush = tokio::time::interval(self.token_flush);
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                delta = stream.next() => match delta {
                    Some(Ok(Chunk::Usage(usage))) => call.usage.merge(usage),
                    Some(Ok(Chunk::Text(text))) => {
                        let text = storable(text);
                        call.first_text.get_or_insert_with(|| call.started.elapsed());
                        if output.len() + text.len() > MAX_AGENT_OUTPUT {
                            return Ok(Answer::Failed(format!(
                                "the agent's answer grew past {} KiB and was stopped",
                                MAX_AGENT_OUTPUT / 1024
                            )));
                        }
                        output.push_str(&text);
                        tokens.pending.push_str(&text);
                        if tokens.pending.len() >= 4096 {
                            tokens.flush().await?;
                        }
                    }
                    Some(Err(e)) => return Ok(Answer::Failed(e.message)),
                    None => return Ok(Answer::Completed),
                },
                _ = flush.tick() => tokens.flush().await?,
            }
        }
    }
}

/// One provider call as the worker saw it: what answered, how soon, what it used.
struct Call {
    started: Instant,
    /// From the call to the end of its answer (or its cancel).
    took: Duration,
    /// The provider and model, once one accepted the call: a call refused up front used
    /// nothing.
    answered_by: Option<(String, String)>,
    first_text: Option<Duration>,
    usage: TokenCounts,
}

impl Call {
    fn new() -> Self {
        Call {
            started: Instant::now(),
            took: Duration::ZERO,
            answered_by: None,
            first_text: None,
            usage: TokenCounts::unknown(),
        }
    }
}

/// How the provider call of one attempt ended.
enum Answer {
    Completed,
    Failed(String),
    Cancelled,
    Stopped,
}

/// Streamed text not yet written as an `agent_token`.
struct Tokens<'a> {
    emitter: &'a Emitter,
    role: &'a str,
    attempt: u32,
    pending: String,
}

impl Tokens<'_> {
    async fn flush(&mut self) -> Result<(), Stopped> {
        if self.pending.is_empty() {
            return Ok(());
        }
        self.emitter
            .emit(EventBody::AgentToken {
                agent_role: self.role.to_string(),
                delta: std::mem::take(&mut self.pending),
                attempt: self.attempt,
            })
            .await
    }
}

/// A panic's message, said for the person reading the agent's card.
pub(crate) fn crash_message(panic: &(dyn std::any::Any + Send)) -> String {
    let detail = panic
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "no message".into());
    format!("the agent stopped unexpectedly (a bug in Troupe: {detail})")
}
