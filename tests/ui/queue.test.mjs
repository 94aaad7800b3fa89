// A task waiting behind its owner's active tasks: the viewer's line for its place
// (api/ui/js/format.js) and how the state keeps that place (api/ui/js/state.js).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { QUEUE_EXPLANATION, formatQueuePosition } from '../../api/ui/js/format.js';
import { applyEvent, fromView, updateQueuePosition, waitingPosition } from '../../api/ui/js/state.js';

const waiting = (queuePosition) => fromView({
  taskId: 't', status: 'queued', lastSeq: 1, agents: [{ role: 'qa' }], ...(queuePosition === undefined ? {} : { queuePosition }),
});

test('the place says how many of the user\'s tasks go first (position - 1)', () => {
  assert.equal(formatQueuePosition(1), 'Waiting: next of your tasks to start');
  assert.equal(formatQueuePosition(2), 'Waiting: 1 of your tasks goes first');
  assert.equal(formatQueuePosition(4), 'Waiting: 3 of your tasks go first');
  assert.equal(formatQueuePosition(1235), 'Waiting: 1,234 of your tasks go first');
});

test('no line without a valid place', () => {
  for (const none of [null, undefined, 0, -1, 1.5, '3', NaN]) assert.equal(formatQueuePosition(none), '', String(none));
});

test('the explanation names the per-user limit', () => {
  assert.match(QUEUE_EXPLANATION, /limited number of each user's tasks at once/);
});

test('a view with a place keeps it while queued; one without has none', () => {
  assert.equal(waitingPosition(waiting(3)), 3);
  assert.equal(waitingPosition(waiting()), null);
  assert.equal(waitingPosition(waiting(0)), null);
  assert.equal(waitingPosition(fromView({ taskId: 't', status: 'running', queuePosition: 2 })), null);
});

test('agent_start (or a pause, a cancel) ends the wait, and a later "queued" has no place', () => {
  const started = waiting(2);
  applyEvent(started, { seq: 2, type: 'agent_start', agentRole: 'qa', attempt: 1, at: '2026-11-25T10:00:00Z' });
  assert.equal(started.queuePosition, null);
  assert.equal(waitingPosition(started), null);

  const paused = waiting(5);
  applyEvent(paused, { seq: 2, type: 'task_paused', at: '2026-11-25T10:00:00Z' });
  assert.equal(waitingPosition(paused), null);
  applyEvent(paused, { seq: 3, type: 'task_unpaused', at: '2026-11-25T10:00:01Z' });
  assert.equal(paused.status, 'queued');
  assert.equal(waitingPosition(paused), null, 'an unpaused task goes straight to the workers');

  const cancelled = waiting(1);
  applyEvent(cancelled, { seq: 2, type: 'task_cancelled', at: '2026-11-25T10:00:00Z', totalExecutionTime: 5 });
  assert.equal(waitingPosition(cancelled), null);
});

test('an event that keeps the task queued keeps its place', () => {
  const state = waiting(4);
  applyEvent(state, { seq: 2, type: 'some_future_event', at: '2026-11-25T10:00:00Z' });
  assert.equal(waitingPosition(state), 4);
});

test('a view read again moves the place up, and clears it once the task is admitted or started', () => {
  const state = waiting(4);
  assert.equal(updateQueuePosition(state, { status: 'queued', queuePosition: 4 }), false, 'unchanged');
  assert.equal(updateQueuePosition(state, { status: 'queued', queuePosition: 2 }), true);
  assert.equal(waitingPosition(state), 2);
  // Admitted: queued for a worker, no longer waiting behind the user's other tasks.
  assert.equal(updateQueuePosition(state, { status: 'queued' }), true);
  assert.equal(waitingPosition(state), null);

  const running = waiting(1);
  assert.equal(updateQueuePosition(running, { status: 'running' }), true);
  assert.equal(waitingPosition(running), null);
});

test('a view read before the stream\'s agent_start but answered after it brings no place back', () => {
  const state = waiting(1);
  applyEvent(state, { seq: 2, type: 'agent_start', agentRole: 'qa', attempt: 1, at: '2026-11-25T10:00:00Z' });
  assert.equal(updateQueuePosition(state, { status: 'queued', queuePosition: 1, lastSeq: 1 }), false);
  assert.equal(waitingPosition(state), null);
  assert.equal(state.status, 'running');
});
