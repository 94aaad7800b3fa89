// Browser end-to-end tests of the pictures: the viewer's run timeline (one bar per agent
// attempt, live), each task's usage in the history, and the usage page's charts,
// against a real `troupe` process (embedded, simulated provider) in headless chromium.
//
//   node --test --test-concurrency=1 e2e/        (or scripts/e2e, which builds first)

import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  apiGet, execute, fillBuilder, register, run, screenshot, screenshotsDir, setup, waitCard, waitFinished,
} from './helpers.mjs';

const TEAM = ['tech-lead', 'frontend', 'qa'];
const LIMIT = { timeout: 120_000 };
// Two agent slots for the whole worker, so the third agent of a parallel team waits
// for one; a price for the simulated model, so that costs are drawn.
const SERVER = {
  args: ['--worker-agents', '2'],
  env: { TROUPE_PRICES: JSON.stringify({ simulated: { inputPerMillion: 3, outputPerMillion: 15 } }) },
};

/** Every lane of the timeline: its role, attempt, state, label and segments (in px). */
async function lanes(page) {
  return page.evaluate(() => [...document.querySelectorAll('[data-testid^=timeline-bar-]')].map((g) => ({
    role: g.dataset.role,
    attempt: Number(g.dataset.attempt),
    state: g.dataset.state,
    label: g.getAttribute('aria-label'),
    title: g.querySelector('title')?.textContent,
    segments: [...g.querySelectorAll('rect.tl-seg')].map((r) => ({
      kind: r.dataset.kind,
      x: Number(r.getAttribute('x')),
      end: Number(r.getAttribute('x')) + Number(r.getAttribute('width')),
      open: r.classList.contains('tl-open'),
    })),
  })));
}

const runOf = (lane) => lane.segments.find((s) => s.kind === 'run');
const summary = (list) => list.map((l) => `${l.role}#${l.attempt} ${l.state}`);

test('timeline: a parallel team\'s bars overlap and grow live, the third waits for a slot, a failure is red', LIMIT, async (t) => {
  const env = await setup(t, SERVER);
  const { page, base } = env;
  await run(env, async () => {
    await register(page, base);
    await fillBuilder(page, base, {
      agents: TEAM, title: 'Launch page', mode: 'parallel',
      options: { latencyMs: 70, tokens: 24, failAgents: ['qa'] },
    });
    const id = await execute(page);

    // Live: two bars run at once (the worker's two slots) while the third waits, and
    // the open bars grow as time passes.
    await page.waitForFunction(() => document.querySelectorAll('[data-testid^=timeline-bar-][data-state=running]').length === 2);
    const first = await lanes(page);
    assert.deepEqual(first.map((l) => l.state).sort(), ['queued', 'running', 'running'], 'the third agent waits for a slot');
    const before = first.filter((l) => l.state === 'running');
    assert.ok(before.every((l) => runOf(l).open), 'running bars are open');
    await screenshot(page, 'timeline-running');
    await page.waitForTimeout(300);
    const later = await lanes(page);
    const grown = before.filter((l) => {
      const now = later.find((x) => x.role === l.role && x.attempt === l.attempt);
      return now && runOf(now).end - runOf(now).x > runOf(l).end - runOf(l).x + 3;
    });
    assert.ok(grown.length >= 1, 'an open bar grows while its agent runs');

    assert.equal(await waitFinished(page), 'failed');
    await screenshot(page, 'timeline-finished');
    const done = await lanes(page);
    assert.deepEqual(summary(done), ['tech-lead#1 done', 'frontend#1 done', 'qa#1 failed']);
    assert.ok(done.every((l) => !runOf(l).open), 'every bar closed at its end');
    // What ran side by side, and what waited: two runs overlap; the last to start began
    // no earlier than the first to end (it had no slot until then) after a visible wait.
    const runs = done.map(runOf).sort((a, b) => a.x - b.x);
    assert.ok(runs[1].x < runs[0].end, 'the first two bars overlap');
    const last = done.reduce((a, b) => (runOf(b).x > runOf(a).x ? b : a));
    assert.ok(runOf(last).x >= Math.min(runs[0].end, runs[1].end) - 2, `${last.role} started when a slot freed`);
    const wait = last.segments.find((s) => s.kind === 'queued');
    assert.ok(wait && wait.end - wait.x > 20, `${last.role} shows its wait`);
    // Colours: done green, failed red (the card's colours).
    const fills = await page.evaluate(() => Object.fromEntries(['done', 'failed'].map((s) => [s,
      getComputedStyle(document.querySelector(`[data-testid^=timeline-bar-][data-state=${s}] rect.tl-seg[data-kind=run]`)).fill])));
    const cardColour = (status) => page.evaluate((s) => getComputedStyle(document.querySelector(`[data-testid^=agent-card-][data-status=${s}]`)).getPropertyValue('--state').trim(), status);
    assert.notEqual(fills.done, fills.failed);
    assert.ok(fills.failed.length > 0 && (await cardColour('error')).length > 0);
    // Accessible: a list of lanes, each saying who, how it ended and how long it took.
    const qa = done.find((l) => l.role === 'qa');
    assert.match(qa.label, /^QA Engineer: failed, (waited .+, )?ran .+ from .+$/);
    assert.equal(qa.title, qa.label);
    assert.equal(await page.getAttribute('[data-testid=timeline-svg]', 'role'), 'list');
    assert.match(await page.getAttribute('[data-testid=timeline-svg]', 'aria-label'), /^Run timeline: 3 agent attempts over /);

    // A fresh load draws the same lanes, from the log.
    await page.reload();
    await waitFinished(page);
    await page.waitForSelector('[data-testid=timeline][data-source=log]');
    assert.deepEqual(summary(await lanes(page)), summary(done));
    const view = await apiGet(page, base, `/api/tasks/${id}`);
    assert.equal(view.status, 'failed');
  });
});

test('timeline: a cancelled run is one cancelled bar and two that never ran; its retry adds a lane per new attempt', LIMIT, async (t) => {
  const env = await setup(t, SERVER);
  const { page, base } = env;
  await run(env, async () => {
    await register(page, base);
    await fillBuilder(page, base, { agents: TEAM, title: 'Cancel then retry', mode: 'sequential', options: { latencyMs: 40, tokens: 40 } });
    await execute(page);
    await waitCard(page, 'tech-lead', 'running', { withOutput: true });
    assert.deepEqual(summary(await lanes(page)), ['tech-lead#1 running', 'frontend#1 queued', 'qa#1 queued'], 'sequential: the others wait');
    await page.click('[data-testid=task-cancel]');
    assert.equal(await waitFinished(page), 'cancelled');
    assert.deepEqual(summary(await lanes(page)), ['tech-lead#1 cancelled', 'frontend#1 skipped', 'qa#1 skipped']);
    const skipped = (await lanes(page)).find((l) => l.role === 'qa');
    assert.match(skipped.label, /^QA Engineer: did not run, waited /);
    await screenshot(page, 'timeline-cancelled');

    await page.click('[data-testid=task-retry]');
    await waitCard(page, 'tech-lead', 'running');
    assert.equal(await waitFinished(page), 'completed');
    const after = await lanes(page);
    // Each role's lanes: tech-lead's two attempts; frontend and qa's first attempt now ran.
    assert.deepEqual(summary(after), ['tech-lead#1 cancelled', 'tech-lead#2 done', 'frontend#1 done', 'qa#1 done']);
    const frontend = after.find((l) => l.role === 'frontend');
    assert.deepEqual(frontend.segments.map((s) => s.kind), ['queued', 'queued', 'run'], 'waited before the cancel, then again after the retry');
    assert.match(after.find((l) => l.attempt === 2).label, /^Tech Lead, attempt 2: done/);
    await screenshot(page, 'timeline-retried');

    await page.reload();
    await waitFinished(page);
    await page.waitForSelector('[data-testid=timeline][data-source=log]');
    assert.deepEqual(summary(await lanes(page)), summary(after), 'a fresh load draws every attempt from the log');

    // 375 px wide: the timeline is redrawn to fit the screen.
    await page.setViewportSize({ width: 375, height: 800 });
    await page.waitForFunction(() => Number(document.querySelector('[data-testid=timeline-svg]').getAttribute('width')) <= 375);
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
    assert.ok(overflow <= 0, `no sideways scrolling (${overflow} px)`);
    assert.deepEqual(summary(await lanes(page)), summary(after));
    await page.locator('[data-testid=timeline]').screenshot({ path: `${screenshotsDir()}/timeline-narrow.png` });
  });
});

test('history and cards: each task\'s tokens and cost, labelled as simulated estimates', LIMIT, async (t) => {
  const env = await setup(t, SERVER);
  const { page, base } = env;
  await run(env, async () => {
    await register(page, base);
    const ids = [];
    for (const [title, agents] of [['First', ['qa']], ['Second', ['tech-lead', 'backend']]]) {
      await fillBuilder(page, base, { agents, title, mode: 'parallel', options: { latencyMs: 5, tokens: 8 } });
      ids.push(await execute(page));
      assert.equal(await waitFinished(page), 'completed');
    }
    // The viewer: each card's counts and the task's totals say they are simulated.
    for (const role of ['tech-lead', 'backend']) {
      assert.ok(await page.isVisible(`[data-testid=agent-usage-simulated-${role}]`), `${role}: simulated label`);
      assert.equal((await page.textContent(`[data-testid=agent-usage-simulated-${role}]`)).trim(), 'simulated');
    }
    assert.ok(await page.isVisible('[data-testid=task-usage-simulated]'));

    await page.click('[data-testid=nav-history]');
    await page.waitForSelector(`[data-testid=history-usage-${ids[0]}]`);
    const { tasks } = await apiGet(page, base, '/api/tasks');
    const expected = await page.evaluate(async (list) => {
      const { formatUsageShort } = await import('/ui/js/format.js');
      return Object.fromEntries(list.map((task) => [task.taskId, formatUsageShort(task.usage)]));
    }, tasks);
    for (const id of ids) {
      const task = tasks.find((x) => x.taskId === id);
      const tokens = task.usage.inputTokens + task.usage.outputTokens;
      assert.ok(tokens > 0 && task.usage.costUsd > 0 && task.usage.simulatedAttempts > 0, JSON.stringify(task.usage));
      const text = (await page.textContent(`[data-testid=history-usage-figures-${id}]`)).trim();
      assert.equal(text, expected[id]);
      assert.equal(text, `~${tokens.toLocaleString('en-US')} tokens · $${task.usage.costUsd.toFixed(4)}`, 'simulated counts are marked ~');
      assert.match(await page.getAttribute(`[data-testid=history-usage-${id}]`, 'title'), /simulated/);
    }
    await screenshot(page, 'history-usage');
  });
});

/**
 * The stats consumer's report for the last 30 days once it covers what the test ran: it
 * counts a moment after the events are stored (embedded: fed by the in-process bus, and
 * from the store every 5 s), so poll until every role shows its ended attempts and the
 * tokens equal the tasks' own usage (GET /api/tasks, computed from their logs).
 */
async function statsCovering(page, base, attempts, { timeout = 30_000 } = {}) {
  const deadline = Date.now() + timeout;
  const { tasks } = await apiGet(page, base, '/api/tasks');
  const tokens = tasks.reduce((n, task) => n + task.usage.inputTokens + task.usage.outputTokens, 0);
  let last = null;
  for (;;) {
    last = await apiGet(page, base, '/api/stats?days=30');
    const seen = Object.fromEntries((last.roles || []).map((r) => [r.role, r.attempts]));
    const counted = (last.roles || []).reduce((n, r) => n + r.inputTokens + r.outputTokens, 0);
    const sorted = (o) => JSON.stringify(Object.entries(o).sort());
    if (sorted(seen) === sorted(attempts) && counted === tokens) return { report: last, tasks };
    if (Date.now() > deadline) {
      assert.fail(`GET /api/stats never covered the tasks within ${timeout} ms: attempts ${sorted(seen)}, want ${sorted(attempts)}; tokens ${counted}, want ${tokens}`);
    }
    await page.waitForTimeout(250);
  }
}

test('usage page: tokens and cost per day, success rate and latency by role, from the stats consumer (GET /api/stats)', LIMIT, async (t) => {
  const env = await setup(t, SERVER);
  const { page, base } = env;
  await run(env, async () => {
    await register(page, base);
    // qa succeeds once and fails once: a 50% success rate.
    await fillBuilder(page, base, { agents: TEAM, title: 'Good', mode: 'parallel', options: { latencyMs: 20, tokens: 10 } });
    await execute(page);
    assert.equal(await waitFinished(page), 'completed');
    await fillBuilder(page, base, { agents: ['qa', 'backend'], title: 'Bad', mode: 'parallel', options: { latencyMs: 20, tokens: 10, failAgents: ['qa'] } });
    await execute(page);
    assert.equal(await waitFinished(page), 'failed');

    // The page reads the stats consumer's figures: wait until they cover both tasks.
    const { report, tasks } = await statsCovering(page, base, { 'tech-lead': 1, frontend: 1, qa: 2, backend: 1 });
    const sum = (rows, key) => rows.reduce((n, r) => n + r[key], 0);
    const totals = Object.fromEntries(['attempts', 'calls', 'inputTokens', 'outputTokens', 'costUsd', 'simulatedCalls']
      .map((key) => [key, sum(report.roles, key)]));
    assert.equal(totals.calls, sum(tasks.map((task) => task.usage), 'simulatedAttempts'), 'every call counted, each simulated');
    assert.equal(totals.simulatedCalls, totals.calls);
    assert.equal(totals.costUsd.toFixed(9), sum(tasks.map((task) => task.usage), 'costUsd').toFixed(9));
    assert.equal(sum(report.days, 'calls'), totals.calls, 'the days add up to the roles');

    await page.click('[data-testid=nav-usage]');
    await page.waitForURL(/\/usage$/);
    assert.equal(await page.getAttribute('[data-testid=nav-usage]', 'aria-current'), 'page');
    await page.waitForSelector('[data-testid=usage-chart-tokens]');
    // The page says where its figures come from, and that they can lag.
    assert.match(await page.textContent('[data-testid=usage-source]'), /^Figures from the stats consumer \(GET \/api\/stats\), .+ can lag a few seconds behind your tasks\. Read at \d\d:\d\d:\d\d\.$/);

    // The tiles are the report's totals, marked as simulated.
    const tokens = totals.inputTokens + totals.outputTokens;
    assert.equal((await page.textContent('[data-testid=usage-total-attempts] dt')).trim(), 'Attempts ended');
    assert.equal((await page.textContent('[data-testid=usage-total-attempts] dd')).trim(), '5');
    assert.equal((await page.textContent('[data-testid=usage-total-calls] dd')).trim(), String(totals.calls));
    assert.match((await page.textContent('[data-testid=usage-total-tokens] dd')).trim(), new RegExp(`^~${tokens.toLocaleString('en-US')}simulated$`));
    assert.match((await page.textContent('[data-testid=usage-total-cost] dd')).trim(), /^\$0\.\d{4}$/);
    assert.match(await page.textContent('[data-testid=usage-marks-note]'), /^~ simulated/);

    // Tokens per day: 30 days, today's bar holds everything, stacked by role (4 roles).
    const today = new Date().toISOString().slice(0, 10);
    const days = await page.$$eval('[data-testid=usage-chart-tokens] [data-testid^=usage-chart-tokens-day-]', (els) => els.length);
    assert.equal(days, 30);
    const todayBar = `[data-testid=usage-chart-tokens-day-${today}]`;
    assert.equal(Number(await page.getAttribute(todayBar, 'data-total')), tokens);
    assert.equal(await page.$$eval(`${todayBar} rect.chart-bar`, (els) => els.length), 4, 'one segment per role');
    assert.match(await page.getAttribute(todayBar, 'aria-label'), /: ~[\d,]+ tokens \(/);
    const legend = await page.$$eval('[data-testid=usage-chart-tokens-card] .chart-legend li', (els) => els.map((e) => e.textContent).sort());
    assert.deepEqual(legend, ['backend', 'frontend', 'qa', 'tech-lead']);
    assert.equal(Number(await page.getAttribute(`[data-testid=usage-chart-cost-day-${today}]`, 'data-total')).toFixed(9), totals.costUsd.toFixed(9));

    // Success rate and latency by role.
    assert.equal(await page.$$eval('[data-testid=usage-chart-success] [data-testid^=usage-chart-success-]', (els) => els.length), 4);
    assert.equal((await page.textContent('[data-testid=usage-chart-success-qa] .chart-value')).trim(), '50% (1/2)');
    assert.equal((await page.textContent('[data-testid=usage-chart-success-tech-lead] .chart-value')).trim(), '100% (1/1)');
    assert.match(await page.getAttribute('[data-testid=usage-chart-success-qa]', 'aria-label'), /^qa: 50% succeeded, 1 of 2 attempts succeeded, 1 failed$/);
    const latency = await page.$$eval('[data-testid=usage-chart-latency] [data-testid^=usage-chart-latency-]', (els) => els.map((e) => e.dataset.testid).sort());
    assert.deepEqual(latency, ['usage-chart-latency-backend', 'usage-chart-latency-frontend', 'usage-chart-latency-qa', 'usage-chart-latency-tech-lead']);
    const qa = report.roles.find((r) => r.role === 'qa');
    assert.equal(qa.attempts, 2, 'the succeeded and the failed attempt');
    assert.ok(qa.p50Ms != null && qa.p95Ms >= qa.p50Ms, JSON.stringify(qa));
    const expectedText = (a, b) => page.evaluate(async ([x, y]) => {
      const f = await import('/ui/js/format.js');
      return [`${f.formatDuration(x)} · ${f.formatDuration(y)}`, `${f.formatDuration(x)} / ${f.formatDuration(y)}`];
    }, [a, b]);
    const [qaChart, qaCell] = await expectedText(qa.p50Ms, qa.p95Ms);
    assert.equal((await page.textContent('[data-testid=usage-chart-latency-qa] .chart-value')).trim(), qaChart);
    assert.match(await page.getAttribute('[data-testid=usage-chart-latency-qa]', 'aria-label'), /, over 2 attempts that ended$/);
    assert.match(await page.textContent('[data-testid=usage-latency-note]'), /19%/);
    await screenshot(page, 'usage-page');

    // The figures as a table, for those who do not read charts: outcomes, times and
    // first tokens as the report has them.
    await page.click('[data-testid=usage-chart-success-card] summary');
    const rows = await page.$$eval('[data-testid=usage-table-roles] tbody tr', (trs) => trs.map((tr) => [...tr.children].map((td) => td.textContent)));
    const qaRow = rows.find((r) => r[0] === 'qa');
    assert.deepEqual(qaRow.slice(0, 5), ['qa', '1', '1', '0', '50%']);
    assert.equal(qaRow[5], qaCell);
    assert.ok(qa.firstTokenCalls > 0 && qa.firstTokenP50Ms != null, JSON.stringify(qa));
    assert.equal(qaRow[6], (await expectedText(qa.firstTokenP50Ms, qa.firstTokenP95Ms))[1]);
    assert.match(await page.textContent('[data-testid=usage-table-roles-note]'), /histogram whose buckets are 19% wide/);
    await page.click('[data-testid=usage-chart-tokens-card] summary');
    const daily = await page.$$eval('[data-testid=usage-table-daily] tbody tr', (trs) => trs.map((tr) => [...tr.children].map((td) => td.textContent)));
    assert.equal(daily.reduce((n, r) => n + Number(r[5]), 0), totals.calls, 'the daily table\'s calls add up');
    assert.equal(daily.reduce((n, r) => n + Number(r[4]), 0), 5, 'and its attempts');

    // Group by model: one series, the simulated model; the choice stays in the URL.
    await page.click('label[for=usage-by-model]');
    await page.waitForSelector('[data-testid=usage-body][data-by=model]');
    assert.deepEqual(await page.$$eval('[data-testid=usage-chart-tokens-card] .chart-legend li', (els) => els.map((e) => e.textContent)), ['simulated']);
    assert.match(page.url(), /by=model/);
    await page.click('label[for=usage-days-7]');
    await page.waitForSelector('[data-testid=usage-body][data-days="7"]');
    assert.equal(await page.$$eval('[data-testid^=usage-chart-tokens-day-]', (els) => els.length), 7);
    // Refresh reads the report again, for the window shown.
    const [again] = await Promise.all([
      page.waitForResponse((r) => new URL(r.url()).pathname === '/api/stats'),
      page.click('[data-testid=usage-refresh]'),
    ]);
    assert.equal(new URL(again.url()).search, '?days=7');
    assert.equal(again.status(), 200);

    // 375 px wide: the charts fit the screen.
    await page.setViewportSize({ width: 375, height: 800 });
    await page.waitForFunction(() => Number(document.querySelector('[data-testid=usage-chart-tokens]').getAttribute('width')) <= 375);
    const overflow = await page.evaluate(() => document.documentElement.scrollWidth - document.documentElement.clientWidth);
    assert.ok(overflow <= 0, `no sideways scrolling (${overflow} px)`);
    await screenshot(page, 'usage-page-narrow');
  });
});
