// The viewer's reducer (api/ui/js/state.js) against the task-control events: what a
// live viewer shows must equal what GET /api/tasks/{id} projects from the same log.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  applyEvent, availableActions, displayStatus, EVENT_TYPES, fromView, isTerminal, TERMINAL_TYPES,
} from '../../api/ui/js/state.js';

const TASK = 'task-1';
let clock = 0;
const at = () => new Date(Date.UTC(2026, 10, 25, 10, 0, 0, (clock += 10))).toISOString();

/** A state built from an empty view, then the events (seq numbered from 1). */
function replay(events, roles = ['tech-lead', 'frontend', 'qa']) {
  const state = fromView({ taskId: TASK, status: 'queued', lastSeq: 0, agents: roles.map((role) => ({ role })) });
  events.forEach((ev, i) => applyEvent(state, { seq: i + 1, taskId: TASK, at: at(), ...ev }));
  return state;
}

const agent = (state, role) => state.agents.find((a) => a.role === role);
const start = (role, attempt = 1) => ({ type: 'agent_start', agentRole: role, agentName: role, attempt });
const token = (role, delta, attempt) => ({ type: 'agent_token', agentRole: role, delta, ...(attempt === undefined ? {} : { attempt }) });

test('an agent_token of an earlier attempt is ignored; the new attempt restarts the output', () => {
  const state = replay([
    { type: 'task_created', selectedAgents: ['tech-lead', 'frontend', 'qa'] },
    start('qa', 1),
    token('qa', 'first ', 1),
    start('qa', 2),
    token('qa', 'late text of attempt 1', 1),
    token('qa', 'second', 2),
  ]);
  const qa = agent(state, 'qa');
  assert.equal(qa.attempt, 2);
  assert.equal(qa.output, 'second');
  assert.equal(qa.status, 'running');
});

test('a token without attempt (or attempt 0, an older log) goes to the current attempt', () => {
  const state = replay([start('qa', 3), token('qa', 'a'), token('qa', 'b', 0)]);
  assert.equal(agent(state, 'qa').output, 'ab');
});

test('agent_start resets output, error and artifacts of the previous attempt', () => {
  const state = replay([
    start('frontend', 1),
    { type: 'agent_complete', agentRole: 'frontend', status: 'success', executionTime: 5, hasArtifacts: true, output: 'x', artifacts: [{ filename: 'a.js', content: '' }] },
    start('frontend', 2),
  ]);
  const a = agent(state, 'frontend');
  assert.deepEqual([a.status, a.output, a.hasArtifacts, a.artifacts, a.executionTime], ['running', '', false, [], null]);
});

test('agent_cancelled keeps the partial output; task_cancelled ends the task, pending agents untouched', () => {
  const state = replay([
    start('tech-lead'),
    token('tech-lead', 'partial', 1),
    { type: 'agent_cancelled', agentRole: 'tech-lead', attempt: 1, executionTime: 120, reason: 'cancelled by the user', output: 'partial text' },
    { type: 'task_cancelled', reason: 'cancelled by the user', totalExecutionTime: 130 },
  ]);
  const lead = agent(state, 'tech-lead');
  assert.equal(lead.status, 'cancelled');
  assert.equal(lead.output, 'partial text');
  assert.equal(lead.executionTime, 120);
  assert.equal(lead.error, null);
  assert.equal(agent(state, 'frontend').status, 'pending');
  assert.equal(agent(state, 'qa').status, 'pending');
  assert.equal(state.status, 'cancelled');
  assert.equal(state.reason, 'cancelled by the user');
  assert.equal(state.totalExecutionTime, 130);
  assert.ok(isTerminal(state));
  assert.ok(TERMINAL_TYPES.has('task_cancelled'));
});

test('task_retried makes a finished task live again and resets the retried agents only', () => {
  const state = replay([
    start('tech-lead'),
    { type: 'agent_complete', agentRole: 'tech-lead', status: 'success', executionTime: 5, hasArtifacts: false, output: 'plan', artifacts: [] },
    start('frontend'),
    { type: 'agent_error', agentRole: 'frontend', status: 'error', executionTime: 7, error: 'boom' },
    { type: 'task_error', error: 'frontend failed', failedAgents: ['frontend'], totalExecutionTime: 20 },
  ]);
  assert.equal(state.status, 'failed');
  assert.deepEqual(availableActions(state).retryAgents, ['frontend']);

  applyEvent(state, { seq: state.lastSeq + 1, type: 'task_retried', agents: ['frontend'], reason: 'retried by the user', at: at() });
  assert.equal(state.status, 'queued');
  assert.ok(!isTerminal(state));
  assert.equal(state.error, null);
  assert.equal(state.totalExecutionTime, null);
  assert.equal(state.finishedAt, null);
  const fe = agent(state, 'frontend');
  assert.deepEqual([fe.status, fe.error, fe.output, fe.attempt], ['pending', null, '', 1], 'waits for its next attempt');
  assert.equal(agent(state, 'tech-lead').output, 'plan', 'a completed agent is kept');

  applyEvent(state, { seq: state.lastSeq + 1, at: at(), ...start('frontend', 2) });
  applyEvent(state, { seq: state.lastSeq + 1, at: at(), ...token('frontend', 'ok', 2) });
  assert.equal(state.status, 'running');
  assert.equal(fe.attempt, 2);
  assert.equal(fe.output, 'ok');
});

test('pause, unpause, release and resume set the status the server projects', () => {
  const state = replay([start('tech-lead')]);
  state.pauseRequested = true;
  assert.deepEqual(displayStatus(state), { status: 'running', request: 'pause', label: 'Pausing…' });
  applyEvent(state, { seq: 2, type: 'task_paused', reason: 'paused by the user', at: at() });
  assert.equal(state.status, 'paused');
  assert.equal(state.pauseRequested, false);
  assert.equal(state.reason, 'paused by the user');
  applyEvent(state, { seq: 3, type: 'task_unpaused', reason: 'resumed', at: at() });
  assert.equal(state.status, 'queued');
  assert.equal(state.reason, null);
  applyEvent(state, { seq: 4, type: 'task_resumed', delivery: 1, reason: 'picked up', at: at() });
  assert.equal(state.status, 'running');
  applyEvent(state, { seq: 5, type: 'task_released', reason: 'worker shutting down', at: at() });
  assert.equal(state.status, 'queued');
});

test('an unknown event type is ignored but advances lastSeq; seen seqs are ignored', () => {
  const state = replay([start('qa'), token('qa', 'x', 1)]);
  const before = JSON.stringify(state);
  const result = applyEvent(state, { seq: 3, type: 'agent_thought', agentRole: 'qa', depth: 2, at: at() });
  assert.deepEqual(result, { roles: [], terminal: false });
  assert.equal(state.lastSeq, 3);
  assert.equal(JSON.stringify({ ...state, lastSeq: 2 }), before);
  assert.equal(applyEvent(state, { seq: 3, ...token('qa', 'again', 1) }), null, 'seq 3 was seen');
  assert.equal(agent(state, 'qa').output, 'x');
  assert.ok(!EVENT_TYPES.includes('agent_thought'), 'the EventSource does not even listen for it');
});

test('a view and the events after its lastSeq equal the whole log replayed', () => {
  const log = [
    { type: 'task_created', selectedAgents: ['tech-lead', 'qa'] },
    start('tech-lead'), token('tech-lead', 'a', 1),
    { type: 'agent_cancelled', agentRole: 'tech-lead', attempt: 1, executionTime: 3, reason: 'r', output: 'a' },
    { type: 'task_cancelled', reason: 'r', totalExecutionTime: 9 },
    { type: 'task_retried', agents: ['tech-lead'], reason: 'again' },
    start('tech-lead', 2), token('tech-lead', 'b', 2),
  ];
  const whole = replay(log, ['tech-lead', 'qa']);
  // The server's view after the first 5 events, as GET /api/tasks/{id} returns it.
  const view = {
    taskId: TASK, status: 'cancelled', reason: 'r', lastSeq: 5, totalExecutionTime: 9,
    agents: [{ role: 'tech-lead', status: 'cancelled', attempt: 1, output: 'a', executionTime: 3 }, { role: 'qa' }],
  };
  const resumed = fromView(view);
  log.slice(5).forEach((ev, i) => applyEvent(resumed, { seq: 6 + i, at: at(), ...ev }));
  const pick = (s) => ({ status: s.status, reason: s.reason, total: s.totalExecutionTime, agents: s.agents.map((a) => [a.role, a.status, a.attempt, a.output]) });
  assert.deepEqual(pick(resumed), pick(whole));
});

test('the actions offered follow the status and the requests under way', () => {
  const running = replay([start('tech-lead')]);
  assert.deepEqual(availableActions(running), {
    cancel: true, pause: true, resume: false, retry: false, cancelAgents: ['tech-lead'], retryAgents: [],
  });

  running.pauseRequested = true;
  const pausing = availableActions(running);
  assert.equal(pausing.pause, false, 'a pause under way is not asked twice');
  assert.equal(pausing.resume, true, 'Resume withdraws a pause under way');
  assert.equal(pausing.cancel, true);

  running.cancelRequested = true;
  assert.deepEqual(availableActions(running), {
    cancel: false, pause: false, resume: false, retry: false, cancelAgents: [], retryAgents: [],
  }, 'nothing more while it is cancelling');
  assert.equal(displayStatus(running).label, 'Cancelling…');

  const queued = replay([]);
  assert.deepEqual([availableActions(queued).cancel, availableActions(queued).pause, availableActions(queued).resume], [true, true, false]);

  const paused = replay([{ type: 'task_paused', reason: 'p' }]);
  assert.deepEqual([availableActions(paused).cancel, availableActions(paused).pause, availableActions(paused).resume], [true, false, true]);
  assert.equal(displayStatus(paused).label, null, 'paused is shown as itself');

  const done = replay([start('qa'), { type: 'agent_complete', agentRole: 'qa', status: 'success', executionTime: 1, output: 'x' }, { type: 'task_complete', totalExecutionTime: 2 }]);
  assert.deepEqual(availableActions(done), {
    cancel: false, pause: false, resume: false, retry: false, cancelAgents: [], retryAgents: [],
  }, 'a completed task offers nothing');

  // Cancelled while queued: no agent failed or was cancelled, so the server has nothing to retry.
  const cancelledQueued = replay([{ type: 'task_cancelled', reason: 'r', totalExecutionTime: 1 }]);
  assert.equal(availableActions(cancelledQueued).retry, false);

  const cancelledRunning = replay([start('qa'), { type: 'agent_cancelled', agentRole: 'qa', attempt: 1, executionTime: 1, reason: 'r', output: '' }, { type: 'task_cancelled', reason: 'r', totalExecutionTime: 1 }]);
  assert.equal(availableActions(cancelledRunning).retry, true);
  assert.deepEqual(availableActions(cancelledRunning).retryAgents, ['qa']);
});

test('agent_usage adds to the agent and the task; the terminal event settles the totals', () => {
  const usage = (role, attempt, input, output, cost) => ({
    type: 'agent_usage', agentRole: role, attempt, provider: 'openai', model: 'm', source: 'reported',
    inputTokens: input, outputTokens: output, timeToFirstToken: 120, ...(cost == null ? {} : { costUsd: cost }),
  });
  const state = replay([
    start('qa', 1), usage('qa', 1, 100, 10, 0.5),
    start('qa', 2), usage('qa', 2, 200, 20, null),
    { type: 'agent_usage', agentRole: 'tech-lead', attempt: 0, provider: 'x', model: 'n', source: 'unknown' },
  ]);
  const qa = agent(state, 'qa');
  assert.equal(qa.usage.inputTokens, 300);
  assert.equal(qa.usage.costUsd, 0.5);
  assert.equal(qa.usage.unpricedAttempts, 1);
  assert.equal(qa.timeToFirstToken, 120);
  assert.equal(qa.model, 'm');
  assert.equal(state.usage.outputTokens, 30);
  assert.equal(state.usage.unreportedAttempts, 1);

  assert.equal(state.usage.simulatedAttempts, 0);

  const settled = { inputTokens: 1, outputTokens: 2, costUsd: 3, unreportedAttempts: 0, unpricedAttempts: 0, simulatedAttempts: 0 };
  applyEvent(state, { seq: 99, at: at(), type: 'task_complete', totalExecutionTime: 5, usage: settled });
  assert.deepEqual(state.usage, settled);
  // Totals from before simulatedAttempts existed read as none.
  applyEvent(state, { seq: 100, at: at(), type: 'task_retried', agents: [] });
  applyEvent(state, { seq: 101, at: at(), type: 'task_complete', usage: { inputTokens: 1, outputTokens: 2, costUsd: 3 } });
  assert.equal(state.usage.simulatedAttempts, 0);
});

test('the simulated provider\'s estimates are counted as such, on the agent and the task', () => {
  const state = replay([
    start('qa', 1),
    { type: 'agent_usage', agentRole: 'qa', attempt: 1, provider: 'simulated', model: 'simulated', source: 'simulated', inputTokens: 40, outputTokens: 60 },
    start('tech-lead', 1),
    { type: 'agent_usage', agentRole: 'tech-lead', attempt: 1, provider: 'openai', model: 'm', source: 'reported', inputTokens: 4, outputTokens: 6 },
  ]);
  assert.equal(agent(state, 'qa').usage.simulatedAttempts, 1);
  assert.equal(agent(state, 'tech-lead').usage.simulatedAttempts, 0);
  assert.equal(state.usage.simulatedAttempts, 1);
  assert.equal(state.usage.inputTokens + state.usage.outputTokens, 110);
});

test('agent_failover marks the attempt as answered by the fallback, until the next attempt', () => {
  const failover = {
    type: 'agent_failover', agentRole: 'qa', attempt: 1, fromProvider: 'openai', fromModel: 'gpt',
    toProvider: 'anthropic', toModel: 'claude', reason: 'HTTP 503; gave up after 4 attempts',
  };
  const state = replay([start('qa', 1), failover]);
  const qa = agent(state, 'qa');
  assert.equal(qa.fallback, 'anthropic (claude)');
  assert.equal(qa.provider, 'anthropic');
  assert.match(qa.fallbackReason, /^openai \(gpt\) kept failing: HTTP 503/);
  applyEvent(state, { seq: 3, taskId: TASK, at: at(), ...start('qa', 2) });
  assert.equal(agent(state, 'qa').fallback, null);
});

test('a reloaded view shows the fallback of an agent answered by another provider', () => {
  const view = {
    taskId: 't', status: 'completed', provider: 'openai',
    agents: [
      { role: 'qa', status: 'completed', provider: 'anthropic', model: 'claude' },
      { role: 'tech-lead', status: 'completed', provider: 'openai', model: 'gpt' },
    ],
  };
  const state = fromView(view);
  assert.equal(state.agents[0].fallback, 'anthropic (claude)');
  assert.equal(state.agents[1].fallback, null);
});
