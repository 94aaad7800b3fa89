// The task state the viewer shows, and the reducer that folds events into it.
// It mirrors the server's projection (GET /api/tasks/{id}), so a state built from
// that view and then fed the events after its lastSeq equals one built by
// replaying the whole log.

export const TERMINAL_TYPES = new Set(['task_complete', 'task_error']);
export const EVENT_TYPES = [
  'task_created', 'task_resumed', 'agent_start', 'agent_progress', 'agent_token',
  'agent_complete', 'agent_error', 'task_complete', 'task_error',
];

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
  };
}

/** State from the projected view of GET /api/tasks/{id}. */
export function fromView(view) {
  return {
    taskId: view.taskId,
    title: view.title || '',
    description: view.description || '',
    status: view.status || 'queued',
    executionMode: view.executionMode || 'sequential',
    provider: view.provider || '',
    model: view.model || null,
    createdAt: view.createdAt || null,
    finishedAt: view.finishedAt || null,
    totalExecutionTime: view.totalExecutionTime ?? null,
    error: view.error || null,
    failedAgents: [],
    outputs: null,
    lastSeq: view.lastSeq || 0,
    agents: (view.agents || []).map(agentFrom),
  };
}

export function isTerminal(state) {
  return state.status === 'completed' || state.status === 'failed';
}

function findAgent(state, role) {
  let agent = state.agents.find((a) => a.role === role);
  if (!agent) {
    agent = agentFrom({ role });
    state.agents.push(agent);
  }
  return agent;
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
    case 'agent_start': {
      state.status = 'running';
      const a = findAgent(state, ev.agentRole);
      if (ev.agentName) a.name = ev.agentName;
      if (ev.agentDescription) a.description = ev.agentDescription;
      a.status = 'running';
      a.attempt = ev.attempt || 1;
      a.startedAt = ev.at;
      a.finishedAt = null;
      a.executionTime = null;
      a.output = '';
      a.error = null;
      a.progress = null;
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
    case 'task_complete':
      state.status = 'completed';
      state.finishedAt = ev.at;
      state.totalExecutionTime = ev.totalExecutionTime ?? null;
      state.outputs = ev.outputs || null;
      break;
    case 'task_error':
      state.status = 'failed';
      state.finishedAt = ev.at;
      state.totalExecutionTime = ev.totalExecutionTime ?? null;
      state.error = ev.error || 'The task failed.';
      state.failedAgents = ev.failedAgents || [];
      break;
    default:
      break; // unknown types still advance lastSeq
  }
  return { roles, terminal: TERMINAL_TYPES.has(ev.type) };
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
