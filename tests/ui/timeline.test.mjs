// The run timeline's derivation (api/ui/js/timeline.js): one lane per agent attempt,
// its waits and its run, from the same events the viewer receives.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  deriveTimeline, eventsFromView, laneLabel, laneTimes, tickLabel, timeTicks, timelineEvent, TIMELINE_TYPES,
} from '../../api/ui/js/timeline.js';

const T0 = Date.UTC(2026, 10, 25, 10, 0, 0);
const at = (ms) => new Date(T0 + ms).toISOString();
let seq = 0;
const ev = (ms, type, fields = {}) => ({ seq: ++seq, type, at: at(ms), ...fields });
const created = (ms, roles) => ev(ms, 'task_created', { selectedAgents: roles });
const start = (ms, role, attempt = 1) => ev(ms, 'agent_start', { agentRole: role, attempt });
const complete = (ms, role) => ev(ms, 'agent_complete', { agentRole: role });
const error = (ms, role) => ev(ms, 'agent_error', { agentRole: role });
const cancelled = (ms, role, attempt = 1) => ev(ms, 'agent_cancelled', { agentRole: role, attempt });

/** Each lane as `role#attempt state [kind from–to …]`, times in ms from T0. */
function lanes(timeline) {
  return timeline.lanes.map((l) => `${l.key} ${l.state} ${l.segments.map((s) => `${s.kind} ${s.from - T0}–${s.to === null ? '…' : s.to - T0}`).join(', ')}`);
}

test('a parallel run: every attempt waits for its slot, then the bars overlap', () => {
  const timeline = deriveTimeline([
    created(0, ['a', 'b', 'c']),
    start(10, 'a'), start(10, 'b'), start(400, 'c'), // c waited for a free agent slot
    complete(300, 'a'), error(350, 'b'), complete(900, 'c'),
    ev(910, 'task_error'),
  ], ['a', 'b', 'c']);
  assert.deepEqual(lanes(timeline), [
    'a#1 done queued 0–10, run 10–300',
    'b#1 failed queued 0–10, run 10–350',
    'c#1 done queued 0–400, run 400–900',
  ]);
  assert.equal(timeline.start, T0);
  assert.equal(timeline.end, T0 + 910);
});

test('a sequential run: later agents wait for the ones before them; after a failure they never run', () => {
  const timeline = deriveTimeline([
    created(0, ['a', 'b', 'c']),
    start(5, 'a'), complete(100, 'a'),
    start(101, 'b'), error(200, 'b'),
    ev(201, 'task_error'),
  ], ['a', 'b', 'c']);
  assert.deepEqual(lanes(timeline), [
    'a#1 done queued 0–5, run 5–100',
    'b#1 failed queued 0–101, run 101–200',
    'c#1 skipped queued 0–201',
  ]);
});

test('a live run has open bars, drawn up to now', () => {
  const timeline = deriveTimeline([created(0, ['a', 'b']), start(10, 'a')], ['a', 'b']);
  assert.deepEqual(lanes(timeline), ['a#1 running queued 0–10, run 10–…', 'b#1 queued queued 0–…']);
  assert.equal(timeline.end, null);
  assert.deepEqual(laneTimes(timeline.lanes[0], T0 + 1010), { queued: 10, ran: 1000 });
  assert.match(laneLabel(timeline.lanes[0], 'Agent A', T0, T0 + 1010), /^Agent A: running, waited 10 ms, ran 1\.0 s from 10 ms$/);
});

test('a cancelled task: running agents end cancelled, waiting ones did not run', () => {
  const timeline = deriveTimeline([
    created(0, ['a', 'b']),
    start(10, 'a'),
    cancelled(500, 'a'),
    ev(501, 'task_cancelled'),
  ], ['a', 'b']);
  assert.deepEqual(lanes(timeline), ['a#1 cancelled queued 0–10, run 10–500', 'b#1 skipped queued 0–501']);
});

test('a retry adds a lane for the new attempt; the failed one keeps its own', () => {
  const timeline = deriveTimeline([
    created(0, ['a', 'b']),
    start(10, 'a'), start(10, 'b'),
    complete(100, 'a'), error(120, 'b'),
    ev(121, 'task_error'),
    ev(5000, 'task_retried', { agents: ['b'] }),
    start(5010, 'b', 2), complete(5100, 'b'),
    ev(5101, 'task_complete'),
  ], ['a', 'b']);
  assert.deepEqual(lanes(timeline), [
    'a#1 done queued 0–10, run 10–100',
    'b#1 failed queued 0–10, run 10–120',
    'b#2 done queued 5000–5010, run 5010–5100',
  ]);
  assert.equal(timeline.end, T0 + 5101);
});

test('a pause stops the waits; the unpause starts them again in the same lane', () => {
  const timeline = deriveTimeline([
    created(0, ['a', 'b']),
    start(10, 'a'), complete(100, 'a'),
    ev(101, 'task_paused'),
    ev(2000, 'task_unpaused'),
    start(2100, 'b'), complete(2200, 'b'),
    ev(2201, 'task_complete'),
  ], ['a', 'b']);
  assert.deepEqual(lanes(timeline), [
    'a#1 done queued 0–10, run 10–100',
    'b#1 done queued 0–101, queued 2000–2100, run 2100–2200',
  ]);
});

test('a crash: the attempt it cut short ends interrupted at the last sign of life, the next one has its own lane', () => {
  const timeline = deriveTimeline([
    created(0, ['a']),
    start(10, 'a'),
    ev(300, 'agent_progress', { agentRole: 'a' }), // not a timeline type: ignored
    ev(400, 'agent_usage', { agentRole: 'a' }),
    ev(9000, 'task_resumed'),
    start(9010, 'a', 2), complete(9500, 'a'),
    ev(9501, 'task_complete'),
  ].filter((e) => TIMELINE_TYPES.has(e.type)), ['a']);
  assert.deepEqual(lanes(timeline), [
    'a#1 interrupted queued 0–10, run 10–10',
    'a#2 done queued 9000–9010, run 9010–9500',
  ]);
  // A hand-back at shutdown stops the attempt at the release itself.
  const released = deriveTimeline([
    created(0, ['a']), start(10, 'a'), ev(600, 'task_released'), ev(700, 'task_resumed'), start(710, 'a', 2),
  ], ['a']);
  assert.deepEqual(lanes(released), ['a#1 interrupted queued 0–10, run 10–600', 'a#2 running queued 600–710, run 710–…']);
});

test('a retry after a cancel: the cancelled agent gets a new lane, those that never ran wait again in theirs', () => {
  const timeline = deriveTimeline([
    created(0, ['a', 'b']),
    start(10, 'a'), cancelled(50, 'a'), ev(51, 'task_cancelled'),
    ev(1000, 'task_retried', { agents: ['a'] }),
    start(1010, 'a', 2), complete(1100, 'a'),
    start(1101, 'b'), complete(1200, 'b'),
    ev(1201, 'task_complete'),
  ], ['a', 'b']);
  assert.deepEqual(lanes(timeline), [
    'a#1 cancelled queued 0–10, run 10–50',
    'a#2 done queued 1000–1010, run 1010–1100',
    'b#1 done queued 0–51, queued 1000–1101, run 1101–1200',
  ]);
});

test('lanes follow the team order, then the attempt', () => {
  const timeline = deriveTimeline([
    created(0, ['b', 'a']),
    start(1, 'a'), start(2, 'b'),
  ], ['b', 'a']);
  assert.deepEqual(timeline.lanes.map((l) => l.role), ['b', 'a']);
});

test('the events a projected view implies draw the same lanes as its log, for a run without retries', () => {
  const log = [
    created(0, ['a', 'b']),
    start(10, 'a'), complete(300, 'a'),
    start(301, 'b'), error(500, 'b'),
    ev(501, 'task_error'),
  ];
  const view = {
    status: 'failed', createdAt: at(0), finishedAt: at(501),
    agents: [
      { role: 'a', status: 'completed', attempt: 1, startedAt: at(10), finishedAt: at(300) },
      { role: 'b', status: 'error', attempt: 1, startedAt: at(301), finishedAt: at(500) },
    ],
  };
  assert.deepEqual(lanes(deriveTimeline(eventsFromView(view), ['a', 'b'])), lanes(deriveTimeline(log, ['a', 'b'])));
});

test('timelineEvent keeps what the timeline reads and drops the rest', () => {
  assert.equal(timelineEvent({ seq: 3, type: 'agent_token', agentRole: 'a', delta: 'x'.repeat(1000) }), null);
  assert.deepEqual(timelineEvent({ seq: 4, type: 'agent_complete', at: at(1), agentRole: 'a', output: 'long', artifacts: [] }),
    { seq: 4, type: 'agent_complete', at: at(1), agentRole: 'a' });
});

test('ticks are round steps that fit the span', () => {
  assert.deepEqual(timeTicks(4200, 6), { step: 1000, ticks: [0, 1000, 2000, 3000, 4000] });
  assert.equal(timeTicks(95_000, 6).step, 30_000);
  assert.equal(timeTicks(0, 6).step, 10);
  assert.deepEqual([0, 500, 1500, 90_000, 5_400_000].map(tickLabel), ['0', '500 ms', '1.5 s', '1.5 min', '1.5 h']);
});
