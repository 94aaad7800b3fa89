// The usage page's arithmetic (api/ui/js/usage-data.js) and the honest labels of usage
// figures (api/ui/js/format.js).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  latencyRows, niceScale, OTHER, percentile, stackByDay, successRows, totalsOf, windowDays,
} from '../../api/ui/js/usage-data.js';
import { formatCompact, formatCost, formatUsageShort, usageMarks } from '../../api/ui/js/format.js';

const cell = (day, role, model, inputTokens, outputTokens, costUsd = 0, more = {}) => ({
  day, role, model, attempts: 1, inputTokens, outputTokens, costUsd,
  unreportedAttempts: 0, unpricedAttempts: costUsd ? 0 : 1, simulatedAttempts: 0, ...more,
});

test('a window is its UTC days, first to last', () => {
  assert.deepEqual(windowDays('2026-11-28T00:00:00Z', 4), ['2026-11-28', '2026-11-29', '2026-11-30', '2026-12-01']);
});

test('cells stack per day by role or by model, and sum to the totals', () => {
  const days = windowDays('2026-11-24T00:00:00Z', 3);
  const cells = [
    cell('2026-11-24', 'qa', 'm1', 10, 5),
    cell('2026-11-24', 'tech-lead', 'm2', 100, 50),
    cell('2026-11-26', 'qa', 'm2', 20, 10),
  ];
  const byRole = stackByDay(cells, days, { by: 'role', metric: 'tokens' });
  assert.deepEqual(byRole.series, ['tech-lead', 'qa'], 'largest first');
  assert.deepEqual(byRole.rows.map((r) => [r.day, r.values, r.total]), [
    ['2026-11-24', [150, 15], 165],
    ['2026-11-25', [0, 0], 0],
    ['2026-11-26', [0, 30], 30],
  ]);
  assert.equal(byRole.max, 165);
  const byModel = stackByDay(cells, days, { by: 'model', metric: 'tokens' });
  assert.deepEqual(byModel.series, ['m2', 'm1']);
  assert.deepEqual(byModel.rows[0].values, [150, 15]);
  const total = totalsOf(cells);
  assert.equal(total.inputTokens + total.outputTokens, byRole.rows.reduce((n, r) => n + r.total, 0));
  assert.equal(total.attempts, 3);
  assert.equal(byRole.rows[0].cells.attempts, 2, 'a row sums its cells too');
});

test('past the series cap the smallest are folded into "other"; cost stacks dollars', () => {
  const days = ['2026-11-24'];
  const cells = ['a', 'b', 'c', 'd'].map((role, i) => cell('2026-11-24', role, 'm', 0, 0, (i + 1) / 100));
  const stack = stackByDay(cells, days, { by: 'role', metric: 'cost', maxSeries: 3 });
  assert.deepEqual(stack.series, ['d', 'c', OTHER]);
  assert.deepEqual(stack.rows[0].values.map((v) => +v.toFixed(2)), [0.04, 0.03, 0.03]);
  assert.equal(+stack.max.toFixed(2), 0.1);
});

test('success rates leave cancels out; latency rows only for roles that completed', () => {
  const roles = [
    { role: 'qa', completed: 3, failed: 1, cancelled: 2, duration: { count: 3, p50: 100, p95: 300 }, timeToFirstToken: { count: 4, p50: 10, p95: 20 } },
    { role: 'backend', completed: 0, failed: 0, cancelled: 1, duration: { count: 0 }, timeToFirstToken: { count: 0 } },
  ];
  assert.deepEqual(successRows(roles), [
    { role: 'qa', completed: 3, failed: 1, cancelled: 2, rate: 0.75 },
    { role: 'backend', completed: 0, failed: 0, cancelled: 1, rate: null },
  ]);
  assert.deepEqual(latencyRows(roles), [{ role: 'qa', count: 3, p50: 100, p95: 300 }]);
  assert.deepEqual(latencyRows(roles, 'timeToFirstToken'), [{ role: 'qa', count: 4, p50: 10, p95: 20 }]);
});

test('percentiles are nearest-rank, as the server computes them', () => {
  assert.equal(percentile([], 50), null);
  assert.equal(percentile([7], 95), 7);
  assert.equal(percentile([4, 1, 3, 2], 50), 2);
  assert.equal(percentile([4, 1, 3, 2], 95), 4);
  const hundred = Array.from({ length: 100 }, (_, i) => i + 1);
  assert.equal(percentile(hundred, 50), 50);
  assert.equal(percentile(hundred, 95), 95);
});

test('a value axis ends on a round number at or above the largest value', () => {
  assert.deepEqual(niceScale(165), { max: 200, step: 50, ticks: [0, 50, 100, 150, 200] });
  assert.deepEqual(niceScale(0.0123).ticks, [0, 0.005, 0.01, 0.015]);
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
