// The usage page (/usage): what your tasks used over the last days, from the stats
// consumer's figures (GET /api/stats?days=N): tokens and cost per day by agent role or
// model, how often each role succeeded, and how long its attempts took (p50 / p95).
// The consumer counts each event a moment after it is stored, so the page can lag a few
// seconds behind; it says so, and reads again on Refresh. Charts are SVG drawn by
// charts.js; each has its figures in a table beside it.

import { api } from './api.js';
import { horizontalBarChart, seriesClass, stackedBarChart } from './charts.js';
import { h, setText } from './dom.js';
import { formatCompact, formatCost, formatDuration, plural } from './format.js';
import {
  counted, dailyRows, dayLabel, latencyRows, marksNoteOf, marksOf, modelLabel, niceScale, stackByDay, successRows,
  totalsOf, windowDays,
} from './usage-data.js';

const WINDOWS = [7, 30, 90];
const GROUPS = { role: 'Agent role', model: 'Model' };

export function renderUsage(root, _params, ctx) {
  const ac = new AbortController();
  document.title = 'Usage · Troupe';
  const query = new URLSearchParams(window.location.search);
  let days = WINDOWS.includes(Number(query.get('days'))) ? Number(query.get('days')) : 30;
  let by = query.get('by') === 'model' ? 'model' : 'role';
  let loaded = null; // { report, days, at }: the report, the window it was asked for, when it was read
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

  const refresh = h('button', { type: 'button', class: 'btn btn-small', 'data-testid': 'usage-refresh', onclick: () => load() }, 'Refresh');
  const controls = h('div', { class: 'usage-controls' },
    choice('days', 'Window', WINDOWS.map((d) => [d, `${d} days`]), days, (value) => { days = value; remember(); load(); }),
    choice('by', 'Group by', Object.entries(GROUPS), by, (value) => { by = value; remember(); draw(); }),
    refresh);
  const source = h('p', { class: 'usage-note muted', 'data-testid': 'usage-source' });

  root.append(h('section', { class: 'usage-page', 'aria-labelledby': 'usage-heading' },
    h('div', { class: 'page-head' }, heading, controls),
    h('p', { class: 'lede' }, 'What your tasks used, by the UTC day each agent attempt (succeeded, failed or cancelled) or provider call ended. Figures marked ~ are the simulated provider\'s estimates; ≥ marks a floor (some calls reported no tokens, or had no price).'),
    source, status, body));
  sourceNote(null);

  /** Where the figures come from, and when they were read. */
  function sourceNote(at) {
    const read = at ? ` Read at ${at.toLocaleTimeString('en-GB', { hour: '2-digit', minute: '2-digit', second: '2-digit' })}.` : '';
    setText(source, `Figures from the stats consumer (GET /api/stats), which counts each event a moment after it is stored: they can lag a few seconds behind your tasks.${read}`);
  }

  function remember() {
    const q = new URLSearchParams({ days: String(days), by });
    window.history.replaceState({}, '', `/usage?${q}`);
  }

  async function load() {
    const mine = ++loading;
    setText(status, 'Loading usage…');
    body.setAttribute('aria-busy', 'true');
    refresh.disabled = true;
    const asked = days;
    try {
      const next = await api.stats(asked, { signal: ac.signal });
      if (mine !== loading) return;
      loaded = { report: next, days: asked, at: new Date() };
      sourceNote(loaded.at);
      setText(status, '');
      draw();
    } catch (err) {
      if (err.name === 'AbortError' || mine !== loading) return;
      setText(status, `Could not load usage: ${err.message}`);
    } finally {
      if (mine === loading) {
        body.removeAttribute('aria-busy');
        refresh.disabled = false;
      }
    }
  }

  function width() {
    return Math.max(280, Math.floor(body.clientWidth || root.clientWidth || 800) - 34);
  }

  function draw() {
    if (!loaded) return;
    body.replaceChildren(...renderReport(loaded.report, { days: loaded.days, by, width: width() }));
    body.dataset.days = String(loaded.days);
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

const HISTOGRAM_NOTE = 'Times are read from a histogram whose buckets are 19% wide: each percentile is the upper bound of its bucket, within 19% above the true figure.';

function renderReport(report, { days: windowLength, by, width }) {
  const days = windowDays(report.since, windowLength);
  const cells = report.days || [];
  const roles = report.roles || [];
  const totals = totalsOf(roles);
  const marks = marksOf(totals);
  const tokens = totals.inputTokens + totals.outputTokens;
  const out = [];

  if (report.truncated) {
    out.push(h('p', { class: 'notice', 'data-testid': 'usage-truncated' },
      'This window has more rows than a report reads: the figures below cover its oldest rows only, the latest days are left out. A shorter window shows them.'));
  }
  out.push(h('dl', { class: 'usage-tiles' },
    tile('usage-total-attempts', 'Attempts ended', totals.attempts.toLocaleString('en-US')),
    tile('usage-total-calls', 'Provider calls', totals.calls.toLocaleString('en-US')),
    tile('usage-total-tokens', 'Tokens', `${marks.tokens}${tokens.toLocaleString('en-US')}`,
      totals.simulatedCalls > 0 ? 'simulated' : null),
    tile('usage-total-cost', 'Cost', totals.costUsd > 0 ? `${marks.cost}${formatCost(totals.costUsd)}` : '—',
      totals.costUsd > 0 ? null : totals.unpricedCalls > 0 ? 'no call was priced' : null)));
  const note = marksNoteOf(totals);
  if (note) out.push(h('p', { class: 'usage-note muted', 'data-testid': 'usage-marks-note' }, `${note}.`));

  if (!counted(roles) && !counted(cells)) {
    out.push(h('div', { class: 'empty', 'data-testid': 'usage-empty' },
      h('p', {}, `Nothing counted in the last ${plural(windowLength, 'day')}: no agent attempt ended and no provider call was answered.`),
      h('p', { class: 'muted' }, 'A task that has just ended can take a few seconds to be counted: Refresh reads the figures again.'),
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
        label: `Tokens per day by ${group} over ${windowLength} days`,
        describe: (row) => describeDay(row, tokenStack.series, (v) => `${v.toLocaleString('en-US')} tokens`, marksOf(row.cells).tokens),
      }), legend(tokenStack.series)]
      : [h('p', { class: 'muted' }, 'No tokens were reported in this window.')],
    dailyTable(cells)));

  // Cost per day.
  const costStack = stackByDay(cells, days, { by, metric: 'cost' });
  out.push(chartCard('usage-chart-cost', `Cost per day, by ${group}`,
    costStack.max > 0
      ? [stackedBarChart(costStack, {
        width, format: (v) => formatCost(v).replace(/0+$/, '').replace(/\.$/, ''), testid: 'usage-chart-cost',
        label: `Cost per day by ${group} over ${windowLength} days`,
        describe: (row) => describeDay(row, costStack.series, formatCost, marksOf(row.cells).cost),
      }), legend(costStack.series)]
      : [h('p', { class: 'muted', 'data-testid': 'usage-cost-none' },
        'No call in this window had a price: costs appear for the models priced in TROUPE_PRICES.')],
    null));

  // Success rate by role.
  const success = successRows(roles);
  out.push(chartCard('usage-chart-success', 'Success rate by agent role',
    success.length
      ? [horizontalBarChart(success.map((r) => {
        const ended = r.successes + r.failures;
        const rate = r.rate == null ? '—' : `${Math.round(r.rate * 100)}%`;
        const cancelled = r.cancellations ? `, ${r.cancellations} cancelled` : '';
        return {
          key: r.role,
          label: r.role,
          bars: [{ value: r.rate ?? 0, cls: r.rate != null && r.rate < 0.5 ? 'bar-bad' : 'bar-good' }],
          text: `${rate} (${r.successes}/${ended})`,
          said: `${r.role}: ${rate} succeeded, ${r.successes} of ${plural(ended, 'attempt')} succeeded, ${r.failures} failed${cancelled}`,
        };
      }), {
        width, max: 1, ticks: [0, 0.5, 1], format: (v) => `${Math.round(v * 100)}%`, testid: 'usage-chart-success',
        label: 'Success rate by agent role: successes out of the attempts that succeeded or failed (cancellations left out)',
      })]
      : [h('p', { class: 'muted' }, 'No attempt has ended in this window.')],
    rolesTable(roles)));

  // Latency by role.
  const latency = latencyRows(roles, 'duration');
  const latencyMax = niceScale(Math.max(0, ...latency.map((r) => r.p95)));
  out.push(chartCard('usage-chart-latency', 'Time per attempt, by agent role (p50 and p95)',
    latency.length
      ? [horizontalBarChart(latency.map((r) => ({
        key: r.role,
        label: r.role,
        bars: [{ value: r.p95, cls: 'bar-p95' }, { value: r.p50, cls: 'bar-p50', thin: true }],
        text: `${formatDuration(r.p50)} · ${formatDuration(r.p95)}`,
        said: `${r.role}: p50 ${formatDuration(r.p50)}, p95 ${formatDuration(r.p95)}, over ${plural(r.count, 'attempt')} that ended`,
      })), {
        width, max: latencyMax.max, ticks: latencyMax.ticks, format: (v) => formatDuration(v), testid: 'usage-chart-latency',
        label: 'Time per attempt that ended (succeeded, failed or cancelled) by agent role: median (p50) and 95th percentile (p95)',
      }), h('ul', { class: 'chart-legend', 'aria-hidden': 'true' },
        h('li', {}, h('span', { class: 'swatch bar-p50' }), 'p50 (median)'),
        h('li', {}, h('span', { class: 'swatch bar-p95' }), 'p95')),
      h('p', { class: 'chart-note muted', 'data-testid': 'usage-latency-note' },
        `Attempts that ended: succeeded, failed or cancelled. ${HISTOGRAM_NOTE}`)]
      : [h('p', { class: 'muted' }, 'No attempt has ended in this window.')],
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
  return [
    h('p', { class: 'chart-note muted' },
      'Attempts (that ended) count under the model the task asked for, calls, tokens and cost under the model that answered: they differ only after a failover.'),
    h('table', { class: 'data-table', 'data-testid': 'usage-table-daily' },
      h('thead', {}, h('tr', {},
        ...['Day (UTC)', 'Agent role', 'Provider', 'Model', 'Attempts', 'Calls', 'Input tokens', 'Output tokens', 'Cost'].map((t) => h('th', { scope: 'col' }, t)))),
      h('tbody', {}, ...dailyRows(cells).map((c) => {
        const marks = marksOf(c);
        const answered = c.calls > 0;
        return h('tr', {},
          h('td', {}, c.day), h('td', {}, c.role), h('td', {}, c.provider), h('td', {}, modelLabel(c)),
          h('td', { class: 'num' }, c.attempts.toLocaleString('en-US')),
          h('td', { class: 'num' }, c.calls.toLocaleString('en-US')),
          h('td', { class: 'num' }, answered ? `${marks.tokens}${c.inputTokens.toLocaleString('en-US')}` : '—'),
          h('td', { class: 'num' }, answered ? `${marks.tokens}${c.outputTokens.toLocaleString('en-US')}` : '—'),
          h('td', { class: 'num' }, c.costUsd > 0 ? `${marks.cost}${formatCost(c.costUsd)}` : '—'));
      }))),
  ];
}

function rolesTable(roles) {
  const times = (rows) => new Map(rows.map((r) => [r.role, `${formatDuration(r.p50)} / ${formatDuration(r.p95)}`]));
  const duration = times(latencyRows(roles, 'duration'));
  const firstToken = times(latencyRows(roles, 'firstToken'));
  const rates = new Map(successRows(roles).map((r) => [r.role, r.rate]));
  return [
    h('table', { class: 'data-table', 'data-testid': 'usage-table-roles' },
      h('thead', {}, h('tr', {},
        ...['Agent role', 'Succeeded', 'Failed', 'Cancelled', 'Success rate', 'Time p50 / p95', 'First token p50 / p95'].map((t) => h('th', { scope: 'col' }, t)))),
      h('tbody', {}, ...roles.map((r) => {
        const rate = rates.get(r.role);
        return h('tr', {},
          h('td', {}, r.role),
          h('td', { class: 'num' }, String(r.successes)),
          h('td', { class: 'num' }, String(r.failures)),
          h('td', { class: 'num' }, String(r.cancellations)),
          h('td', { class: 'num' }, rate == null ? '—' : `${Math.round(rate * 100)}%`),
          h('td', { class: 'num' }, duration.get(r.role) || '—'),
          h('td', { class: 'num' }, firstToken.get(r.role) || '—'));
      }))),
    h('p', { class: 'chart-note muted', 'data-testid': 'usage-table-roles-note' },
      `Time: of the attempts that ended (succeeded, failed or cancelled). First token: from the start of a provider call to its first token, over the calls answered. ${HISTOGRAM_NOTE}`),
  ];
}
