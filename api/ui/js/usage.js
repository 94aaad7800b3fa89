// The usage page (/usage): what your tasks used over the last days, from GET /api/usage:
// tokens and cost per day by agent role or model, how often each role succeeded, and
// how long its attempts took (p50 / p95). Charts are SVG drawn by charts.js; each has
// its figures in a table beside it.

import { api } from './api.js';
import { horizontalBarChart, seriesClass, stackedBarChart } from './charts.js';
import { h, setText } from './dom.js';
import { formatCompact, formatCost, formatDuration, plural, usageMarks, usageMarksNote } from './format.js';
import { dayLabel, latencyRows, niceScale, stackByDay, successRows, totalsOf, windowDays } from './usage-data.js';

const WINDOWS = [7, 30, 90];
const GROUPS = { role: 'Agent role', model: 'Model' };

export function renderUsage(root, _params, ctx) {
  const ac = new AbortController();
  document.title = 'Usage · Troupe';
  const query = new URLSearchParams(window.location.search);
  let days = WINDOWS.includes(Number(query.get('days'))) ? Number(query.get('days')) : 30;
  let by = query.get('by') === 'model' ? 'model' : 'role';
  let report = null;
  let loading = 0;

  const heading = h('h1', { id: 'usage-heading' }, 'Usage');
  const status = h('p', { class: 'loading', role: 'status', 'aria-live': 'polite', 'data-testid': 'usage-status' });
  const body = h('div', { class: 'usage-body', 'data-testid': 'usage-body' });

  const choice = (name, legend, options, current, onChange) => h('fieldset', { class: 'segmented' },
    h('legend', {}, legend),
    ...options.map(([value, text]) => {
      const id = `usage-${name}-${value}`;
      return h('span', { class: 'segment' },
        h('input', {
          type: 'radio', name: `usage-${name}`, id, value: String(value), checked: String(value) === String(current),
          'data-testid': id, onchange: () => onChange(value),
        }),
        h('label', { for: id }, text));
    }));

  const controls = h('div', { class: 'usage-controls' },
    choice('days', 'Window', WINDOWS.map((d) => [d, `${d} days`]), days, (value) => { days = value; remember(); load(); }),
    choice('by', 'Group by', Object.entries(GROUPS), by, (value) => { by = value; remember(); draw(); }));

  root.append(h('section', { class: 'usage-page', 'aria-labelledby': 'usage-heading' },
    h('div', { class: 'page-head' }, heading, controls),
    h('p', { class: 'lede' }, 'What your tasks used, by the UTC day each provider call ended. Figures marked ~ are the simulated provider\'s estimates; ≥ marks a floor (some calls reported no tokens, or had no price).'),
    status, body));

  function remember() {
    const q = new URLSearchParams({ days: String(days), by });
    window.history.replaceState({}, '', `/usage?${q}`);
  }

  async function load() {
    const mine = ++loading;
    setText(status, 'Loading usage…');
    body.setAttribute('aria-busy', 'true');
    try {
      const next = await api.usage(days, { signal: ac.signal });
      if (mine !== loading) return;
      report = next;
      setText(status, '');
      draw();
    } catch (err) {
      if (err.name === 'AbortError' || mine !== loading) return;
      setText(status, `Could not load usage: ${err.message}`);
    } finally {
      if (mine === loading) body.removeAttribute('aria-busy');
    }
  }

  function width() {
    return Math.max(280, Math.floor(body.clientWidth || root.clientWidth || 800) - 34);
  }

  function draw() {
    if (!report) return;
    body.replaceChildren(...renderReport(report, { by, width: width() }));
    body.dataset.days = String(report.days);
    body.dataset.by = by;
  }

  let lastWidth = 0;
  const observer = typeof ResizeObserver === 'function' ? new ResizeObserver(() => {
    const w = width();
    if (Math.abs(w - lastWidth) >= 8) { lastWidth = w; draw(); }
  }) : null;
  observer?.observe(body);

  load();
  void ctx;
  return () => {
    ac.abort();
    observer?.disconnect();
  };
}

function tile(testid, label, value, note) {
  return h('div', { class: 'usage-tile', 'data-testid': testid },
    h('dt', {}, label), h('dd', {}, value, note ? h('span', { class: 'tile-note' }, note) : null));
}

function renderReport(report, { by, width }) {
  const days = windowDays(report.since, report.days);
  const cells = report.daily || [];
  const calls = totalsOf(cells);
  const totals = { ...report.totals, attempts: calls.attempts };
  const marks = usageMarks(totals);
  const tokens = totals.inputTokens + totals.outputTokens;
  const out = [];

  if (report.truncated) {
    out.push(h('p', { class: 'notice', 'data-testid': 'usage-truncated' },
      `More tasks were submitted in this window than a report reads: the figures cover the newest ${report.tasks.toLocaleString('en-US')}.`));
  }
  out.push(h('dl', { class: 'usage-tiles' },
    tile('usage-total-tasks', 'Tasks', report.tasks.toLocaleString('en-US')),
    tile('usage-total-calls', 'Provider calls', calls.attempts.toLocaleString('en-US')),
    tile('usage-total-tokens', 'Tokens', `${marks.tokens}${tokens.toLocaleString('en-US')}`,
      totals.simulatedAttempts > 0 ? 'simulated' : null),
    tile('usage-total-cost', 'Cost', totals.costUsd > 0 ? `${marks.cost}${formatCost(totals.costUsd)}` : '—',
      totals.costUsd > 0 ? null : totals.unpricedAttempts > 0 ? 'no call was priced' : null)));
  const note = usageMarksNote(totals);
  if (note) out.push(h('p', { class: 'usage-note muted', 'data-testid': 'usage-marks-note' }, `${note}.`));

  if (!report.tasks) {
    out.push(h('div', { class: 'empty', 'data-testid': 'usage-empty' },
      h('p', {}, `No tasks in the last ${plural(report.days, 'day')}.`),
      h('a', { class: 'btn btn-primary', href: '/new' }, 'Create a task')));
    return out;
  }

  const group = GROUPS[by].toLowerCase();
  // Tokens per day.
  const tokenStack = stackByDay(cells, days, { by, metric: 'tokens' });
  out.push(chartCard('usage-chart-tokens', `Tokens per day, by ${group}`,
    tokenStack.max > 0
      ? [stackedBarChart(tokenStack, {
        width, format: formatCompact, testid: 'usage-chart-tokens',
        label: `Tokens per day by ${group} over ${report.days} days`,
        describe: (row) => describeDay(row, tokenStack.series, (v) => `${v.toLocaleString('en-US')} tokens`, usageMarks(row.cells).tokens),
      }), legend(tokenStack.series)]
      : [h('p', { class: 'muted' }, 'No tokens were reported in this window.')],
    dailyTable(cells)));

  // Cost per day.
  const costStack = stackByDay(cells, days, { by, metric: 'cost' });
  out.push(chartCard('usage-chart-cost', `Cost per day, by ${group}`,
    costStack.max > 0
      ? [stackedBarChart(costStack, {
        width, format: (v) => formatCost(v).replace(/0+$/, '').replace(/\.$/, ''), testid: 'usage-chart-cost',
        label: `Cost per day by ${group} over ${report.days} days`,
        describe: (row) => describeDay(row, costStack.series, formatCost, usageMarks(row.cells).cost),
      }), legend(costStack.series)]
      : [h('p', { class: 'muted', 'data-testid': 'usage-cost-none' },
        'No call in this window had a price: costs appear for the models priced in TROUPE_PRICES.')],
    null));

  // Success rate by role.
  const success = successRows(report.roles);
  out.push(chartCard('usage-chart-success', 'Success rate by agent role',
    success.length
      ? [horizontalBarChart(success.map((r) => {
        const ended = r.completed + r.failed;
        const rate = r.rate == null ? '—' : `${Math.round(r.rate * 100)}%`;
        const cancelled = r.cancelled ? `, ${r.cancelled} cancelled` : '';
        return {
          key: r.role,
          label: r.role,
          bars: [{ value: r.rate ?? 0, cls: r.rate != null && r.rate < 0.5 ? 'bar-bad' : 'bar-good' }],
          text: `${rate} (${r.completed}/${ended})`,
          said: `${r.role}: ${rate} succeeded, ${r.completed} of ${plural(ended, 'attempt')} completed, ${r.failed} failed${cancelled}`,
        };
      }), {
        width, max: 1, ticks: [0, 0.5, 1], format: (v) => `${Math.round(v * 100)}%`, testid: 'usage-chart-success',
        label: 'Success rate by agent role: completed out of attempts that ended by themselves',
      })]
      : [h('p', { class: 'muted' }, 'No attempt has ended in this window.')],
    rolesTable(report.roles)));

  // Latency by role.
  const latency = latencyRows(report.roles, 'duration');
  const latencyMax = niceScale(Math.max(0, ...latency.map((r) => r.p95)));
  out.push(chartCard('usage-chart-latency', 'Time per completed attempt, by agent role (p50 and p95)',
    latency.length
      ? [horizontalBarChart(latency.map((r) => ({
        key: r.role,
        label: r.role,
        bars: [{ value: r.p95, cls: 'bar-p95' }, { value: r.p50, cls: 'bar-p50', thin: true }],
        text: `${formatDuration(r.p50)} · ${formatDuration(r.p95)}`,
        said: `${r.role}: p50 ${formatDuration(r.p50)}, p95 ${formatDuration(r.p95)}, over ${plural(r.count, 'completed attempt')}`,
      })), {
        width, max: latencyMax.max, ticks: latencyMax.ticks, format: (v) => formatDuration(v), testid: 'usage-chart-latency',
        label: 'Time per completed attempt by agent role: median (p50) and 95th percentile (p95)',
      }), h('ul', { class: 'chart-legend', 'aria-hidden': 'true' },
        h('li', {}, h('span', { class: 'swatch bar-p50' }), 'p50 (median)'),
        h('li', {}, h('span', { class: 'swatch bar-p95' }), 'p95'))]
      : [h('p', { class: 'muted' }, 'No attempt has completed in this window.')],
    null));
  return out;
}

function describeDay(row, series, format, mark) {
  const parts = series.map((key, i) => [key, row.values[i]]).filter(([, v]) => v > 0)
    .map(([key, v]) => `${key} ${mark}${format(v)}`);
  return `${dayLabel(row.day)}: ${row.total > 0 ? `${mark}${format(row.total)}` : 'nothing'}${parts.length ? ` (${parts.join(', ')})` : ''}`;
}

function chartCard(testid, title, chart, table) {
  const id = `${testid}-title`;
  return h('section', { class: 'chart-card', 'aria-labelledby': id, 'data-testid': `${testid}-card` },
    h('h2', { id }, title),
    h('div', { class: 'chart-box' }, ...chart),
    table ? h('details', { class: 'chart-table' }, h('summary', {}, 'Show the figures'), table) : null);
}

function legend(series) {
  return h('ul', { class: 'chart-legend' },
    ...series.map((key, i) => h('li', { 'data-testid': `legend-${key}` }, h('span', { class: `swatch ${seriesClass(key, i)}`, 'aria-hidden': 'true' }), key)));
}

function dailyTable(cells) {
  const rows = cells.filter((c) => c.attempts > 0);
  return h('table', { class: 'data-table', 'data-testid': 'usage-table-daily' },
    h('thead', {}, h('tr', {},
      ...['Day (UTC)', 'Agent role', 'Model', 'Calls', 'Input tokens', 'Output tokens', 'Cost'].map((t) => h('th', { scope: 'col' }, t)))),
    h('tbody', {}, ...rows.map((c) => {
      const marks = usageMarks(c);
      return h('tr', {},
        h('td', {}, c.day), h('td', {}, c.role), h('td', {}, c.model),
        h('td', { class: 'num' }, c.attempts.toLocaleString('en-US')),
        h('td', { class: 'num' }, `${marks.tokens}${c.inputTokens.toLocaleString('en-US')}`),
        h('td', { class: 'num' }, `${marks.tokens}${c.outputTokens.toLocaleString('en-US')}`),
        h('td', { class: 'num' }, c.costUsd > 0 ? `${marks.cost}${formatCost(c.costUsd)}` : '—'));
    })));
}

function rolesTable(roles) {
  const ms = (p) => (p && p.p50 != null ? `${formatDuration(p.p50)} / ${formatDuration(p.p95)}` : '—');
  return h('table', { class: 'data-table', 'data-testid': 'usage-table-roles' },
    h('thead', {}, h('tr', {},
      ...['Agent role', 'Completed', 'Failed', 'Cancelled', 'Success rate', 'Time p50 / p95', 'First token p50 / p95'].map((t) => h('th', { scope: 'col' }, t)))),
    h('tbody', {}, ...(roles || []).map((r) => h('tr', {},
      h('td', {}, r.role),
      h('td', { class: 'num' }, String(r.completed)),
      h('td', { class: 'num' }, String(r.failed)),
      h('td', { class: 'num' }, String(r.cancelled)),
      h('td', { class: 'num' }, r.successRate == null ? '—' : `${Math.round(r.successRate * 100)}%`),
      h('td', { class: 'num' }, ms(r.duration)),
      h('td', { class: 'num' }, ms(r.timeToFirstToken))))));
}
