// The usage page's arithmetic (api/ui/js/usage-data.js) over the report of
// GET /api/stats?days=N, and the honest labels of usage figures (api/ui/js/format.js).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  asUsage, counted, dailyRows, latencyRows, marksNoteOf, marksOf, modelLabel, niceScale, OTHER, stackByDay,
  successRows, totalsOf, windowDays,
} from '../../api/ui/js/usage-data.js';
import { formatCompact, formatCost, formatUsageShort, usageMarks } from '../../api/ui/js/format.js';

/** The counts of a report row, all zero but `more`. */
const counts = (more = {}) => ({
  attempts: 0, successes: 0, failures: 0, cancellations: 0, durationMs: 0,
  calls: 0, inputTokens: 0, outputTokens: 0, costUsd: 0,
  simulatedCalls: 0, unreportedCalls: 0, unpricedCalls: 0, ...more,
});

/** A `days` cell: one call answered by `model` for `role`, priced when costUsd > 0. */
const cell = (day, role, model, inputTokens, outputTokens, costUsd = 0, more = {}) => ({
  day, role, provider: 'anthropic', model,
  ...counts({ calls: 1, inputTokens, outputTokens, costUsd, unpricedCalls: costUsd ? 0 : 1, ...more }),
});

/** A `roles` row with the percentile fields. */
const role = (name, more = {}) => ({
  role: name, ...counts(more),
  p50Ms: null, p95Ms: null, p99Ms: null,
  firstTokenCalls: 0, firstTokenP50Ms: null, firstTokenP95Ms: null, firstTokenP99Ms: null, ...more,
});

/** A report as GET /api/stats?days=3 answers it: two tasks, one role failed once. */
const REPORT = {
  since: '2026-12-05T00:00:00Z',
  truncated: false,
  agents: [],
  roles: [
    role('qa', {
      attempts: 3, successes: 1, failures: 1, cancellations: 1, durationMs: 900,
      calls: 2, inputTokens: 30, outputTokens: 15, simulatedCalls: 2,
      p50Ms: 241, p95Ms: 483, p99Ms: 483, firstTokenCalls: 2, firstTokenP50Ms: 12, firstTokenP95Ms: 20, firstTokenP99Ms: 24,
    }),
    role('tech-lead', {
      attempts: 1, successes: 1, durationMs: 100, calls: 1, inputTokens: 100, outputTokens: 50, costUsd: 0.25,
      p50Ms: 101, p95Ms: 101, p99Ms: 101, firstTokenCalls: 1, firstTokenP50Ms: 7, firstTokenP95Ms: 7, firstTokenP99Ms: 7,
    }),
  ],
  days: [
    // Attempts count under the route the task asked for (model '' = the provider's default) …
    { day: '2026-12-05', role: 'qa', provider: 'simulated', model: '', ...counts({ attempts: 2, successes: 1, failures: 1, durationMs: 600 }) },
    // … calls, tokens and cost under the model that answered.
    { day: '2026-12-05', role: 'qa', provider: 'simulated', model: 'simulated', ...counts({ calls: 2, inputTokens: 30, outputTokens: 15, simulatedCalls: 2, unpricedCalls: 2 }) },
    { day: '2026-12-07', role: 'qa', provider: 'simulated', model: '', ...counts({ attempts: 1, cancellations: 1, durationMs: 300 }) },
    { day: '2026-12-07', role: 'tech-lead', provider: 'anthropic', model: 'claude', ...counts({ attempts: 1, successes: 1, durationMs: 100, calls: 1, inputTokens: 100, outputTokens: 50, costUsd: 0.25 }) },
  ],
};

test('a window is its UTC days, first to last', () => {
  assert.deepEqual(windowDays('2026-11-28T00:00:00Z', 4), ['2026-11-28', '2026-11-29', '2026-11-30', '2026-12-01']);
  assert.deepEqual(windowDays(REPORT.since, 3), ['2026-12-05', '2026-12-06', '2026-12-07']);
});

test('totals sum every count of the rows; the roles and the days of a report agree', () => {
  const byRole = totalsOf(REPORT.roles);
  assert.deepEqual(byRole, counts({
    attempts: 4, successes: 2, failures: 1, cancellations: 1, durationMs: 1000,
    calls: 3, inputTokens: 130, outputTokens: 65, costUsd: 0.25, simulatedCalls: 2,
  }));
  const byDay = totalsOf(REPORT.days);
  for (const key of ['attempts', 'successes', 'failures', 'cancellations', 'durationMs', 'calls', 'inputTokens', 'outputTokens', 'costUsd', 'simulatedCalls']) {
    assert.equal(byDay[key], byRole[key], key);
  }
  assert.equal(byDay.unpricedCalls, 2);
  assert.equal(totalsOf(undefined).calls, 0);
  assert.equal(totalsOf([{ calls: '2' }, { calls: null }]).calls, 2, 'missing or textual counts do not poison the sum');
});

test('a report counted something when an attempt ended or a call was answered', () => {
  assert.equal(counted([]), false);
  assert.equal(counted(undefined), false);
  assert.equal(counted([role('qa')]), false, 'a role row of zeros');
  assert.equal(counted([role('qa', { calls: 1 })]), true, 'a call answered, no attempt ended yet');
  assert.equal(counted([role('qa', { attempts: 1, cancellations: 1 })]), true);
});

test('days cells stack per day by role or by model (the provider\'s default named), and sum to the totals', () => {
  const days = windowDays(REPORT.since, 3);
  const byRole = stackByDay(REPORT.days, days, { by: 'role', metric: 'tokens' });
  assert.deepEqual(byRole.series, ['tech-lead', 'qa'], 'largest first');
  assert.deepEqual(byRole.rows.map((r) => [r.day, r.values, r.total]), [
    ['2026-12-05', [0, 45], 45],
    ['2026-12-06', [0, 0], 0],
    ['2026-12-07', [150, 0], 150],
  ]);
  assert.equal(byRole.max, 150);
  assert.equal(byRole.rows.reduce((n, r) => n + r.total, 0), 195, 'every token of the window');
  assert.equal(byRole.rows[0].cells.calls, 2, 'a row sums its cells');
  assert.equal(byRole.rows[0].cells.attempts, 2, 'attempts under the asked route count in the row too');
  assert.equal(byRole.rows[0].cells.simulatedCalls, 2, 'for its marks');

  const byModel = stackByDay(REPORT.days, days, { by: 'model', metric: 'tokens' });
  assert.deepEqual(byModel.series, ['claude', 'simulated'], 'the route asked for ("" = default) answered no tokens itself');
  assert.deepEqual(byModel.rows[0].values, [0, 45]);

  const failedOver = [
    { day: '2026-12-05', role: 'qa', provider: 'openai', model: '', ...counts({ calls: 1, inputTokens: 5, outputTokens: 5 }) },
    { day: '2026-12-05', role: 'qa', provider: 'anthropic', model: '', ...counts({ calls: 1, inputTokens: 1, outputTokens: 1 }) },
  ];
  assert.deepEqual(stackByDay(failedOver, days, { by: 'model' }).series, ['openai default', 'anthropic default'],
    'two providers\' defaults are two series');
});

test('past the series cap the smallest are folded into "other"; cost stacks dollars', () => {
  const days = ['2026-11-24'];
  const cells = ['a', 'b', 'c', 'd'].map((name, i) => cell('2026-11-24', name, 'm', 0, 0, (i + 1) / 100));
  const stack = stackByDay(cells, days, { by: 'role', metric: 'cost', maxSeries: 3 });
  assert.deepEqual(stack.series, ['d', 'c', OTHER]);
  assert.deepEqual(stack.rows[0].values.map((v) => +v.toFixed(2)), [0.04, 0.03, 0.03]);
  assert.equal(+stack.max.toFixed(2), 0.1);
  assert.deepEqual(stackByDay(cells, days, { by: 'role', metric: 'cost', maxSeries: 4 }).series, ['d', 'c', 'b', 'a'], 'no fold at the cap');
});

test('a model is named, or is its provider\'s default', () => {
  assert.equal(modelLabel({ provider: 'anthropic', model: 'claude-sonnet' }), 'claude-sonnet');
  assert.equal(modelLabel({ provider: 'openai', model: '' }), 'openai default');
  assert.equal(modelLabel({ model: '' }), 'default');
});

test('the daily table lists the cells that counted something, in order', () => {
  const cells = [
    ...REPORT.days,
    { day: '2026-12-06', role: 'qa', provider: 'simulated', model: '', ...counts() },
    { day: '2026-12-05', role: 'backend', provider: 'simulated', model: 'simulated', ...counts({ calls: 1 }) },
  ];
  assert.deepEqual(dailyRows(cells).map((c) => `${c.day} ${c.role} ${c.provider}/${c.model}`), [
    '2026-12-05 backend simulated/simulated',
    '2026-12-05 qa simulated/',
    '2026-12-05 qa simulated/simulated',
    '2026-12-07 qa simulated/',
    '2026-12-07 tech-lead anthropic/claude',
  ]);
});

test('success rates are successes out of successes and failures, cancellations apart', () => {
  const roles = [
    ...REPORT.roles,
    role('backend', { attempts: 1, cancellations: 1 }),
    role('frontend', { calls: 1 }),
  ];
  assert.deepEqual(successRows(roles), [
    { role: 'qa', successes: 1, failures: 1, cancellations: 1, rate: 0.5 },
    { role: 'tech-lead', successes: 1, failures: 0, cancellations: 0, rate: 1 },
    { role: 'backend', successes: 0, failures: 0, cancellations: 1, rate: null },
  ], 'a role whose attempts are all cancelled has no rate; one with no attempt ended has no row');
  assert.deepEqual(successRows(undefined), []);
});

test('latency rows: p50 / p95 of the attempts that ended, and of the first tokens, per role', () => {
  const roles = [...REPORT.roles, role('backend', { calls: 1 }), role('frontend', { attempts: 1, cancellations: 1, p50Ms: 50 })];
  assert.deepEqual(latencyRows(roles), [
    { role: 'qa', count: 3, p50: 241, p95: 483 },
    { role: 'tech-lead', count: 1, p50: 101, p95: 101 },
    { role: 'frontend', count: 1, p50: 50, p95: 50 },
  ], 'a role without percentiles has no row; a missing p95 reads as its p50');
  assert.deepEqual(latencyRows(roles, 'firstToken'), [
    { role: 'qa', count: 2, p50: 12, p95: 20 },
    { role: 'tech-lead', count: 1, p50: 7, p95: 7 },
  ]);
  assert.deepEqual(latencyRows([role('qa', { attempts: 0, p50Ms: 9, p95Ms: 9 })]), [], 'no attempt, no row');
});

test('marks come from the calls: ~ simulated, ≥ unreported tokens or unpriced cost', () => {
  assert.deepEqual(marksOf(counts({ calls: 2, inputTokens: 5 })), { tokens: '', cost: '' });
  assert.deepEqual(marksOf(counts({ simulatedCalls: 1 })), { tokens: '~', cost: '' });
  assert.deepEqual(marksOf(counts({ unreportedCalls: 1 })), { tokens: '≥', cost: '' });
  assert.deepEqual(marksOf(counts({ unpricedCalls: 1 })), { tokens: '', cost: '≥' });
  assert.deepEqual(marksOf(counts({ simulatedCalls: 1, unreportedCalls: 1, unpricedCalls: 1 })), { tokens: '≥~', cost: '≥' });
  assert.deepEqual(asUsage(counts({ inputTokens: 3, outputTokens: 4, costUsd: 0.5, simulatedCalls: 1, unreportedCalls: 2, unpricedCalls: 3 })), {
    inputTokens: 3, outputTokens: 4, costUsd: 0.5, simulatedAttempts: 1, unreportedAttempts: 2, unpricedAttempts: 3,
  });
  assert.equal(marksNoteOf(totalsOf(REPORT.roles)), '~ simulated: the simulated provider estimates tokens, no model was called');
  assert.equal(marksNoteOf(counts({ unpricedCalls: 1 })), '', 'no cost at all is not a floor');
  assert.equal(marksNoteOf(counts({ unpricedCalls: 1, costUsd: 0.1, unreportedCalls: 1 })),
    '≥ at least: some calls reported no token counts; ≥ at least: some calls had no price');
});

test('a value axis ends on a round number at or above the largest value', () => {
  assert.deepEqual(niceScale(165), { max: 200, step: 50, ticks: [0, 50, 100, 150, 200] });
  assert.deepEqual(niceScale(0.0123).ticks, [0, 0.005, 0.01, 0.015]);
  assert.deepEqual(niceScale(9).ticks, [0, 2.5, 5, 7.5, 10]);
  assert.deepEqual(niceScale(0), { max: 1, step: 1, ticks: [0, 1] });
});

test('usage figures say when they are simulated estimates or floors', () => {
  const exact = { inputTokens: 1000, outputTokens: 234, costUsd: 0.012, unreportedAttempts: 0, unpricedAttempts: 0, simulatedAttempts: 0 };
  assert.equal(formatUsageShort(exact), '1,234 tokens · $0.0120');
  assert.deepEqual(usageMarks(exact), { tokens: '', cost: '' });
  assert.equal(formatUsageShort({ ...exact, simulatedAttempts: 2, costUsd: 0, unpricedAttempts: 2 }), '~1,234 tokens');
  assert.equal(formatUsageShort({ ...exact, unreportedAttempts: 1, unpricedAttempts: 1 }), '≥1,234 tokens · ≥$0.0120');
  assert.equal(formatUsageShort({ ...exact, inputTokens: 0, outputTokens: 0, costUsd: 0, unreportedAttempts: 1 }), 'tokens not reported');
  assert.equal(formatUsageShort(undefined), '');
  assert.equal(formatCost(12.5), '$12.50');
  assert.deepEqual([950, 12_345, 4_500_000].map(formatCompact), ['950', '12k', '4.5M']);
});
