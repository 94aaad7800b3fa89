// The usage page's arithmetic: the report of GET /api/stats?days=N (the stats consumer's
// figures) turned into what its charts draw (series per day, rates, percentiles, axis
// scales, the ~ and ≥ marks).
//
// Pure (no DOM): tests/ui/usage-data.test.mjs runs it under node.
//
// The report's counts, in `roles` (per role), `agents` (per role, provider and model) and
// `days` (per UTC day, role, provider and model): attempts that ended (successes +
// failures + cancellations) and their durations count under the route the task asked
// for (model '' = the provider's default); calls answered, tokens and cost under the
// model that answered, with simulatedCalls, unreportedCalls (tokens are a floor) and
// unpricedCalls (cost is a floor).

import { usageMarks, usageMarksNote } from './format.js';

const DAY = 86_400_000;

/** The UTC days of a window, 'YYYY-MM-DD', from its first midnight (`since`, ISO). */
export function windowDays(since, days) {
  const first = Date.parse(since);
  const out = [];
  for (let i = 0; i < days; i++) out.push(new Date(first + i * DAY).toISOString().slice(0, 10));
  return out;
}

/** A day's short label, "24 Nov", in UTC (the report's days are UTC days). */
export function dayLabel(day) {
  const date = new Date(`${day}T00:00:00Z`);
  return date.toLocaleDateString('en-GB', { day: 'numeric', month: 'short', timeZone: 'UTC' });
}

/** The counts every row of the report has. */
const COUNTS = [
  'attempts', 'successes', 'failures', 'cancellations', 'durationMs',
  'calls', 'inputTokens', 'outputTokens', 'costUsd',
  'simulatedCalls', 'unreportedCalls', 'unpricedCalls',
];

/** The sum of report rows (`roles`, `agents` or `days`): every count of COUNTS. */
export function totalsOf(rows) {
  const total = Object.fromEntries(COUNTS.map((key) => [key, 0]));
  for (const row of rows || []) {
    for (const key of COUNTS) total[key] += Number(row[key]) || 0;
  }
  return total;
}

/** Whether rows counted anything: an attempt that ended or a call answered. */
export function counted(rows) {
  const total = totalsOf(rows);
  return total.attempts > 0 || total.calls > 0;
}

/**
 * Counts as the usage totals that format.js labels (tasks and cards use those names):
 * the calls that were simulated, reported no tokens, or had no price.
 */
export function asUsage(counts) {
  return {
    inputTokens: Number(counts?.inputTokens) || 0,
    outputTokens: Number(counts?.outputTokens) || 0,
    costUsd: Number(counts?.costUsd) || 0,
    simulatedAttempts: Number(counts?.simulatedCalls) || 0,
    unreportedAttempts: Number(counts?.unreportedCalls) || 0,
    unpricedAttempts: Number(counts?.unpricedCalls) || 0,
  };
}

/** The marks of counts: `tokens` '~' (simulated) and/or '≥' (a floor), `cost` '≥'. */
export function marksOf(counts) {
  return usageMarks(asUsage(counts));
}

/** What the marks of counts mean, as a sentence without its full stop ('' for none). */
export function marksNoteOf(counts) {
  return usageMarksNote(asUsage(counts));
}

/** A row's model as people read it: '' is the provider's default. */
export function modelLabel(row) {
  if (row.model) return row.model;
  return row.provider ? `${row.provider} default` : 'default';
}

/** A cell's value for a metric: 'tokens' (input + output) or 'cost' (USD). */
export function metricOf(cell, metric) {
  return metric === 'cost' ? Number(cell.costUsd) || 0 : (Number(cell.inputTokens) || 0) + (Number(cell.outputTokens) || 0);
}

export const OTHER = 'other';

/**
 * The report's `days` cells stacked per day, one series per agent role or model (`by`),
 * the largest first; past `maxSeries` the smallest are summed as OTHER. Every day of
 * `days` has a row (zeros on a day without calls): `{ series, rows: [{ day, values,
 * total, cells }], max }` where `values[i]` belongs to `series[i]` and `cells` sums the
 * day's counts (totalsOf), for its marks.
 */
export function stackByDay(cells, days, { by = 'role', metric = 'tokens', maxSeries = 6 } = {}) {
  const key = (c) => (by === 'model' ? modelLabel(c) : c.role || '(none)');
  const sums = new Map();
  for (const c of cells || []) sums.set(key(c), (sums.get(key(c)) || 0) + metricOf(c, metric));
  const ranked = [...sums.entries()].filter(([, v]) => v > 0).sort((a, b) => b[1] - a[1] || a[0].localeCompare(b[0]));
  let series = ranked.map(([k]) => k);
  const folded = new Set();
  if (series.length > maxSeries) {
    for (const k of series.slice(maxSeries - 1)) folded.add(k);
    series = [...series.slice(0, maxSeries - 1), OTHER];
  }
  const index = new Map(series.map((k, i) => [k, i]));
  const rows = days.map((day) => ({ day, values: series.map(() => 0), total: 0, cells: [] }));
  const byDay = new Map(rows.map((r) => [r.day, r]));
  for (const c of cells || []) {
    const row = byDay.get(c.day);
    if (!row) continue;
    row.cells.push(c);
    const k = folded.has(key(c)) ? OTHER : key(c);
    const i = index.get(k);
    const v = metricOf(c, metric);
    if (i !== undefined) row.values[i] += v;
    row.total += v;
  }
  for (const row of rows) row.cells = totalsOf(row.cells);
  return { series, rows, max: Math.max(0, ...rows.map((r) => r.total)) };
}

/** The rows of the daily table: the cells that counted something, by day, role, provider, model. */
export function dailyRows(cells) {
  return (cells || [])
    .filter((c) => c.attempts > 0 || c.calls > 0)
    .sort((a, b) => a.day.localeCompare(b.day) || a.role.localeCompare(b.role)
      || (a.provider || '').localeCompare(b.provider || '') || (a.model || '').localeCompare(b.model || ''));
}

/**
 * Rows of the success chart, from the report's `roles`: each role with an attempt that
 * ended; `rate` = successes / (successes + failures), cancellations left out (null when
 * every attempt was cancelled).
 */
export function successRows(roles) {
  return (roles || [])
    .filter((r) => r.successes + r.failures + r.cancellations > 0)
    .map((r) => ({
      role: r.role,
      successes: r.successes,
      failures: r.failures,
      cancellations: r.cancellations,
      rate: r.successes + r.failures > 0 ? r.successes / (r.successes + r.failures) : null,
    }));
}

/**
 * Rows of a latency chart or column, from the report's `roles`: `which` is 'duration'
 * (p50Ms / p95Ms of the attempts that ended, counted by `attempts`) or 'firstToken'
 * (firstTokenP50Ms / firstTokenP95Ms of the answered calls, counted by `firstTokenCalls`).
 * Roles without a percentile are left out.
 */
export function latencyRows(roles, which = 'duration') {
  const pick = which === 'firstToken'
    ? (r) => ({ count: r.firstTokenCalls, p50: r.firstTokenP50Ms, p95: r.firstTokenP95Ms })
    : (r) => ({ count: r.attempts, p50: r.p50Ms, p95: r.p95Ms });
  return (roles || [])
    .map((r) => ({ role: r.role, ...pick(r) }))
    .filter((r) => r.count > 0 && r.p50 != null)
    .map((r) => ({ role: r.role, count: r.count, p50: r.p50, p95: r.p95 ?? r.p50 }));
}

/** A value axis from 0: a round top at or above `max`, and its ticks. */
export function niceScale(max, count = 4) {
  if (!(max > 0)) return { max: 1, step: 1, ticks: [0, 1] };
  const rough = max / count;
  const power = 10 ** Math.floor(Math.log10(rough));
  const step = [1, 2, 2.5, 5, 10].map((m) => m * power).find((s) => s >= rough);
  const top = Math.ceil(max / step - 1e-9) * step;
  const ticks = [];
  for (let t = 0; t <= top + step / 2; t += step) ticks.push(+t.toPrecision(12));
  return { max: top, step, ticks };
}
