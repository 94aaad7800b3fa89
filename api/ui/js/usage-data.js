// The usage page's arithmetic: the report of GET /api/usage turned into what its charts
// draw (series per day, rates, percentiles, axis scales).
//
// Pure (no DOM): tests/ui/usage-data.test.mjs runs it under node.

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

const ZERO = () => ({
  attempts: 0, inputTokens: 0, outputTokens: 0, costUsd: 0,
  unreportedAttempts: 0, unpricedAttempts: 0, simulatedAttempts: 0,
});

/** The sum of report cells (or of any objects with the usage fields). */
export function totalsOf(cells) {
  const total = ZERO();
  for (const c of cells || []) {
    for (const key of Object.keys(total)) total[key] += Number(c[key]) || 0;
  }
  return total;
}

/** A cell's value for a metric: 'tokens' (input + output) or 'cost' (USD). */
export function metricOf(cell, metric) {
  return metric === 'cost' ? Number(cell.costUsd) || 0 : (Number(cell.inputTokens) || 0) + (Number(cell.outputTokens) || 0);
}

export const OTHER = 'other';

/**
 * The cells stacked per day, one series per agent role or model (`by`), the largest
 * first; past `maxSeries` the smallest are summed as OTHER. Every day of `days` has a
 * row (zeros on a day without calls): `{ series, rows: [{ day, values, total, cells }], max }`
 * where `values[i]` belongs to `series[i]` and `cells` sums the day's usage fields.
 */
export function stackByDay(cells, days, { by = 'role', metric = 'tokens', maxSeries = 6 } = {}) {
  const key = (c) => (by === 'model' ? c.model : c.role) || '(none)';
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

/** Rows of the success chart: each role's rate (null when nothing ended by itself). */
export function successRows(roles) {
  return (roles || [])
    .filter((r) => r.completed + r.failed + r.cancelled > 0)
    .map((r) => ({
      role: r.role,
      completed: r.completed,
      failed: r.failed,
      cancelled: r.cancelled,
      rate: r.completed + r.failed > 0 ? r.completed / (r.completed + r.failed) : null,
    }));
}

/** Rows of a latency chart: `which` is 'duration' or 'timeToFirstToken'. */
export function latencyRows(roles, which = 'duration') {
  return (roles || [])
    .map((r) => ({ role: r.role, ...(r[which] || {}) }))
    .filter((r) => r.count > 0 && r.p50 != null)
    .map((r) => ({ role: r.role, count: r.count, p50: r.p50, p95: r.p95 ?? r.p50 }));
}

/**
 * Nearest-rank percentile of numbers (the server's definition): the smallest value whose
 * rank r (1-based, ascending) has r >= p·n/100. Null for no values.
 */
export function percentile(values, p) {
  const sorted = [...values].sort((a, b) => a - b);
  if (!sorted.length) return null;
  const rank = Math.max(1, Math.ceil((p * sorted.length) / 100));
  return sorted[rank - 1];
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
