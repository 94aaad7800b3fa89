// The task state the viewer shows, and the reducer that folds events into it.
// It mirrors the server's projection (GET /api/tasks/{id}), so a state built from
// that view and then fed the events after its lastSeq equals one built by
// replaying the whole log.
//
// Pure (no DOM): tests/ui/state.test.mjs runs it under node.

// task_retried makes a terminal task live again: "terminal" means "nothing more
// unless someone presses Retry", so a viewer must be able to follow again.
export const TERMINAL_TYPES = new Set(['task_complete', 'task_error', 'task_cancelled']);
export const TERMINAL_STATUSES = new Set(['completed', 'failed', 'cancelled']);
// The types the EventSource listens for. A type not listed here (written by a newer
// server) is never dispatched by the browser, so it is ignored without harm; the
// reducer also ignores unknown types that reach it (from the NDJSON export).
export const EVENT_TYPES = [
  'task_created', 'task_resumed', 'agent_start', 'agent_progress', 'agent_token',
  'agent_complete', 'agent_error', 'agent_cancelled', 'task_complete', 'task_error',
  'task_cancelled', 'task_paused', 'task_unpaused', 'task_retried', 'task_released',
  'agent_usage', 'agent_failover',
];

/** Usage totals as the server keeps them (UsageTotals), zero when absent. */
export function usageFrom(u) {
  return {
    inputTokens: u?.inputTokens || 0,
    outputTokens: u?.outputTokens || 0,
    costUsd: u?.costUsd || 0,
    unreportedAttempts: u?.unreportedAttempts || 0,
    unpricedAttempts: u?.unpricedAttempts || 0,
    simulatedAttempts: u?.simulatedAttempts || 0,
  };
}

/** One agent_usage added to totals, as the server's UsageTotals::add does. */
function addUsage(totals, ev) {
  if (ev.inputTokens == null && ev.outputTokens == null) totals.unreportedAttempts += 1;
  totals.inputTokens += ev.inputTokens || 0;
  totals.outputTokens += ev.outputTokens || 0;
  if (ev.costUsd == null) totals.unpricedAttempts += 1;
  else totals.costUsd += ev.costUsd;
  if (ev.source === 'simulated') totals.simulatedAttempts += 1;
}

function agentFrom(a) {
  return {
    role: a.role,
    name: a.name || a.role,
    description: a.description || '',
    status: a.status || 'pending',
    attempt: a.attempt || 0,
    startedAt: a.startedAt || null,
    finishedAt: a.finishedAt || null,
    executionTime: a.executionTime ?? null,
    output: a.output || '',
    error: a.error || null,
    hasArtifacts: Boolean(a.hasArtifacts),
    artifacts: Array.isArray(a.artifacts) ? a.artifacts : [],
    progress: null, // the last agent_progress message (UI only)
    usage: usageFrom(a.usage),
    model: a.model || null,
    timeToFirstToken: a.timeToFirstToken ?? null,
    provider: a.provider || null,
    fallback: null, // "anthropic (claude-haiku)" once a fallback answered this attempt
    fallbackReason: null,
  };
}

function routeLabel(provider, model) {
  return model ? `${provider} (${model})` : provider;
}

/** State from the projected view of GET /api/tasks/{id}. */
export function fromView(view) {
  return {
    taskId: view.taskId,
    title: view.title || '',
    description: view.description || '',
    status: view.status || 'queued',
    cancelRequested: Boolean(view.cancelRequested),
    pauseRequested: Boolean(view.pauseRequested),
    executionMode: view.executionMode || 'sequential',
    provider: view.provider || '',
    model: view.model || null,
    createdAt: view.createdAt || null,
    finishedAt: view.finishedAt || null,
    totalExecutionTime: view.totalExecutionTime ?? null,
    error: view.error || null,
    reason: view.reason || null, // why the task is paused or was cancelled
    // Its place among the owner's waiting tasks (1 = next), while it waits behind their
    // active ones. No event says when it moves up: the viewer reads the view again.
    queuePosition: validPosition(view.queuePosition),
    failedAgents: [],
    outputs: null,
    lastSeq: view.lastSeq || 0,
    usage: usageFrom(view.usage),
    agents: (view.agents || []).map((a) => {
      const agent = agentFrom(a);
      // The view keeps who answered, not why: a provider other than the task's means
      // its fallback took over.
      if (agent.provider && view.provider && agent.provider !== view.provider) {
        agent.fallback = routeLabel(agent.provider, agent.model);
      }
      return agent;
    }),
  };
}

function validPosition(n) {
  return Number.isInteger(n) && n > 0 ? n : null;
}

export function isTerminal(state) {
  return TERMINAL_STATUSES.has(state.status);
}

/** Back to waiting for its next attempt; the attempt count is kept (as the server does). */
function resetAgent(a) {
  a.status = 'pending';
  a.startedAt = null;
  a.finishedAt = null;
  a.executionTime = null;
  a.output = '';
  a.error = null;
  a.hasArtifacts = false;
  a.artifacts = [];
  a.progress = null;
  a.model = null;
  a.timeToFirstToken = null;
  a.provider = null;
  a.fallback = null;
  a.fallbackReason = null;
}

function findAgent(state, role) {
  let agent = state.agents.find((a) => a.role === role);
  if (!agent) {
    agent = agentFrom({ role });
    state.agents.push(agent);
  }
  return agent;
}

/** The end of a run: requests made during it are settled by the terminal event. */
function finish(state, ev, status) {
  state.status = status;
  state.finishedAt = ev.at;
  state.totalExecutionTime = ev.totalExecutionTime ?? null;
  state.cancelRequested = false;
  state.pauseRequested = false;
  if (ev.usage) state.usage = usageFrom(ev.usage);
}

/**
 * Applies one event. Returns null when it was ignored (seq already seen), else
 * `{ roles: [changed agent roles], terminal: bool }`.
 */
export function applyEvent(state, ev) {
  if (!ev || typeof ev.seq !== 'number' || ev.seq <= state.lastSeq) return null;
  state.lastSeq = ev.seq;
  const roles = [];

  switch (ev.type) {
    case 'task_created':
      state.createdAt = ev.at;
      if (ev.title) state.title = ev.title;
      if (ev.executionMode) state.executionMode = ev.executionMode;
      if (ev.provider) state.provider = ev.provider;
      if (ev.model) state.model = ev.model;
      for (const role of ev.selectedAgents || []) findAgent(state, role);
      break;
    case 'task_resumed':
      state.status = 'running';
      break;
    case 'task_released': // a worker handed it back at shutdown; another one resumes it
      state.status = 'queued';
      break;
    case 'task_paused':
      state.status = 'paused';
      state.pauseRequested = false;
      state.reason = ev.reason || null;
      break;
    case 'task_unpaused':
      state.status = 'queued';
      state.pauseRequested = false;
      state.reason = null;
      break;
    case 'task_retried':
      // Live again: the same log goes on with agent_start (attempt n+1) for the
      // agents named, then a new terminal event. The retried agents wait again.
      state.status = 'queued';
      state.finishedAt = null;
      state.totalExecutionTime = null;
      state.error = null;
      state.reason = null;
      state.failedAgents = [];
      state.outputs = null;
      state.cancelRequested = false;
      state.pauseRequested = false;
      for (const role of ev.agents || []) {
        const a = state.agents.find((x) => x.role === role);
        if (a) { resetAgent(a); roles.push(role); }
      }
      break;
    case 'agent_start': {
      state.status = 'running';
      const a = findAgent(state, ev.agentRole);
      if (ev.agentName) a.name = ev.agentName;
      if (ev.agentDescription) a.description = ev.agentDescription;
      resetAgent(a);
      a.status = 'running';
      a.attempt = ev.attempt || 1;
      a.startedAt = ev.at;
      roles.push(a.role);
      break;
    }
    case 'agent_progress': {
      const a = findAgent(state, ev.agentRole);
      a.progress = ev.message || null;
      roles.push(a.role);
      break;
    }
    case 'agent_token': {
      const a = findAgent(state, ev.agentRole);
      // Text of another attempt than the card's (an earlier one, superseded by a new
      // agent_start) is dropped. Logs written before tokens carried it have 0 or none.
      if (ev.attempt && ev.attempt !== a.attempt) break;
      a.output += ev.delta || '';
      a.progress = null; // the wait is over: the card says "Writing…
      roles.push(a.role);
      break;
    }
    case 'agent_complete': {
      const a = findAgent(state, ev.agentRole);
      a.status = 'completed';
      a.finishedAt = ev.at;
      a.executionTime = ev.executionTime ?? null;
      if (typeof ev.output === 'string') a.output = ev.output;
      a.hasArtifacts = Boolean(ev.hasArtifacts);
      a.artifacts = Array.isArray(ev.artifacts) ? ev.artifacts : [];
      a.progress = null;
      roles.push(a.role);
      break;
    }
    case 'agent_error': {
      const a = findAgent(state, ev.agentRole);
      a.status = 'error';
      a.finishedAt = ev.at;
      a.executionTime = ev.executionTime ?? null;
      a.error = ev.error || 'The agent failed.';
      a.progress = null;
      roles.push(a.role);
      break;
    }
    case 'agent_cancelled': {
      const a = findAgent(state, ev.agentRole);
      a.status = 'cancelled';
      a.finishedAt = ev.at;
      a.executionTime = ev.executionTime ?? null;
      // The partial text the agent had written is kept (the event carries all of it).
      a.output = typeof ev.output === 'string' ? ev.output : '';
      a.progress = null;
      roles.push(a.role);
      break;
    }
    case 'agent_usage': {
      const a = findAgent(state, ev.agentRole);
      addUsage(state.usage, ev);
      addUsage(a.usage, ev);
      if (ev.attempt === a.attempt) {
        a.model = ev.model || null;
        a.timeToFirstToken = ev.timeToFirstToken ?? null;
      }
      roles.push(a.role);
      break;
    }
    case 'agent_failover': {
      const a = findAgent(state, ev.agentRole);
      if (ev.attempt === a.attempt) {
        a.provider = ev.toProvider || null;
        a.model = ev.toModel || null;
        a.fallback = routeLabel(ev.toProvider, ev.toModel);
        a.fallbackReason = `${routeLabel(ev.fromProvider, ev.fromModel)} kept failing: ${ev.reason}`;
      }
      roles.push(a.role);
      break;
    }
    case 'task_complete':
      finish(state, ev, 'completed');
      state.outputs = ev.outputs || null;
      break;
    case 'task_error':
      finish(state, ev, 'failed');
      state.error = ev.error || 'The task failed.';
      state.failedAgents = ev.failedAgents || [];
      break;
    case 'task_cancelled':
      finish(state, ev, 'cancelled');
      state.reason = ev.reason || null;
      break;
    default:
      break; // unknown types (a newer server) still advance lastSeq
  }
  // A task only waits for admission while queued since its submit: once it has started,
  // been paused or ended, a later "queued" (unpaused, released, retried) goes straight
  // to the workers, so the place never comes back.
  if (state.status !== 'queued') state.queuePosition = null;
  return { roles, terminal: TERMINAL_TYPES.has(ev.type) };
}

/** The task's place among its owner's waiting tasks while it waits, else null. */
export function waitingPosition(state) {
  return state.status === 'queued' ? state.queuePosition : null;
}

/**
 * Takes the place from a view read again while the task waits (the stream says nothing
 * about it). Only the place: the status stays the stream's, and a view that no longer
 * has a place (admitted, or started) clears it. Returns whether the place changed.
 */
export function updateQueuePosition(state, view) {
  const next = state.status === 'queued' && view?.status === 'queued' ? validPosition(view.queuePosition) : null;
  if (next === state.queuePosition) return false;
  state.queuePosition = next;
  return true;
}

/**
 * The status the header shows: the server's status, or the request under way
 * ("cancelling…", "pausing…") while a running task has not acted on it yet.
 * `request` is what the status badge exposes as data-request.
 */
export function displayStatus(state) {
  if (!isTerminal(state) && state.cancelRequested) return { status: state.status, request: 'cancel', label: 'Cancelling…' };
  if (state.status !== 'paused' && !isTerminal(state) && state.pauseRequested) return { status: state.status, request: 'pause', label: 'Pausing…' };
  return { status: state.status, request: null, label: null };
}

const RETRYABLE = new Set(['error', 'cancelled']);

/**
 * What the user may ask for now, as the server would accept it:
 * - cancel: queued, running or paused, and no cancel asked for yet;
 * - pause: queued or running, with no pause or cancel under way;
 * - resume: paused, or a pause asked for that has not happened yet (withdraws it);
 * - retry: a failed or cancelled task with at least one failed or cancelled agent
 *   (otherwise the server answers nothing_to_retry);
 * - cancelAgents: roles of running agents (per card);
 * - retryAgents: roles of failed or cancelled agents of a finished task (per card).
 */
export function availableActions(state) {
  const terminal = isTerminal(state);
  const live = !terminal && !state.cancelRequested;
  const retryAgents = terminal && state.status !== 'completed'
    ? state.agents.filter((a) => RETRYABLE.has(a.status)).map((a) => a.role)
    : [];
  return {
    cancel: live && ['queued', 'running', 'paused'].includes(state.status),
    pause: live && ['queued', 'running'].includes(state.status) && !state.pauseRequested,
    resume: live && (state.status === 'paused' || state.pauseRequested),
    retry: retryAgents.length > 0,
    cancelAgents: live ? state.agents.filter((a) => a.status === 'running').map((a) => a.role) : [],
    retryAgents,
  };
}

/**
 * The progress line of each agent after `events` (what applyEvent would leave in
 * `agent.progress`). Used after a reload, since the projected view has no progress.
 */
export function progressFromLog(events) {
  const progress = new Map();
  for (const ev of events) {
    if (ev.type === 'agent_progress') progress.set(ev.agentRole, ev.message || null);
    else if (ev.agentRole && ev.type !== 'agent_progress') progress.set(ev.agentRole, null);
  }
  return progress;
}
