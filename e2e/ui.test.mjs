// Browser end-to-end tests of the web UI against a real `troupe` process
// (embedded: SQLite in a fresh data dir, simulated provider), in headless chromium.
//
//   node --test --test-concurrency=1 e2e/        (or scripts/e2e, which builds first)

import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  apiGet, assertMatchesApi, assertSameViewer, cardHistory, execute, fillBuilder, recordCardStatuses,
  register, run, screenshot, screenshotsDir, sessionToken, setup, snapshot, waitCard, waitFinished, waitForViewer,
} from './helpers.mjs';

const TEAM = ['tech-lead', 'frontend', 'qa'];
const LIMIT = { timeout: 60_000 };

test('register, build a team of three, execute: every card completes with its time and output', LIMIT, async (t) => {
  const env = await setup(t);
  const { page, base } = env;
  await run(env, async () => {
    await recordCardStatuses(page);
    await register(page, base);
    await sessionToken(page);

    await fillBuilder(page, base, {
      agents: TEAM, title: 'Todo app', description: 'Build a todo app with **offline** support',
      mode: 'sequential', options: { latencyMs: 60, tokens: 20 },
    });
    assert.match(await page.textContent('[data-testid=provider-note]'), /simulat/i, 'the simulated provider is marked as such');
    const id = await execute(page);

    // Live: the first agent runs while the others wait.
    await waitCard(page, 'tech-lead', 'running');
    await screenshot(page, 'sequential-mid-run');
    assert.equal(await waitFinished(page), 'completed');
    await screenshot(page, 'sequential-finished');

    const shown = await snapshot(page);
    assert.equal(shown.statusText, 'Completed');
    for (const card of shown.cards) {
      assert.equal(card.status, 'completed', `${card.role} completed`);
      assert.equal(card.statusLabel.trim().length > 0, true, `${card.role} has a status label`);
      assert.match(card.time, /^\d+(\.\d)? (ms|s)$/, `${card.role} shows its execution time`);
      assert.ok(Number(card.timeMs) > 0, `${card.role} has data-ms`);
      assert.ok(!card.outputHidden && card.outputText.includes('Simulated output'), `${card.role} shows its output`);
      assert.equal(card.error, null);
      assert.match(card.usage, /^[\d,]+ tokens · first token \d+(\.\d)? (ms|s)$/, `${card.role} shows its usage`);
    }
    assert.match(shown.usage, /^[\d,]+ tokens$/, 'the task shows its total usage');
    assert.match(shown.summary, /3 agents completed/);

    // Every card went pending → running → completed, one after the other, in team order.
    const history = await cardHistory(page);
    for (const role of TEAM) {
      const statuses = history[role].map((h) => h.status);
      assert.deepEqual(statuses.filter((s) => s !== 'pending'), ['running', 'completed'], `${role} went ${statuses.join(' → ')}`);
    }
    const started = TEAM.map((r) => history[r].find((h) => h.status === 'running').t);
    const ended = TEAM.map((r) => history[r].find((h) => h.status === 'completed').t);
    for (let i = 1; i < TEAM.length; i++) {
      assert.ok(started[i] >= ended[i - 1], `sequential: ${TEAM[i]} starts after ${TEAM[i - 1]} ends`);
    }
    await assertMatchesApi(page, base, id);
  });
});

test('parallel run: every card runs at the same time, then all complete', LIMIT, async (t) => {
  const env = await setup(t);
  const { page, base } = env;
  await run(env, async () => {
    await register(page, base);
    await fillBuilder(page, base, { agents: TEAM, mode: 'parallel', options: { latencyMs: 100, tokens: 20 } });
    const id = await execute(page);
    await page.waitForFunction((roles) => roles.every(
      (r) => document.querySelector(`[data-testid=agent-card-${r}]`)?.dataset.status === 'running'), TEAM);
    assert.match(await page.textContent('[data-testid=task-progress]'), /3 running/);
    // A live timer while running: the card's time grows past half a second.
    await page.waitForFunction(() => {
      const card = document.querySelector('[data-testid=agent-card-tech-lead]');
      const m = /^(\d+(?:\.\d)?) (ms|s)$/.exec(document.querySelector('[data-testid=agent-time-tech-lead]').textContent);
      return card.dataset.status === 'running' && m && Number(m[1]) * (m[2] === 's' ? 1000 : 1) >= 500;
    });
    await screenshot(page, 'parallel-mid-run');
    assert.equal(await waitFinished(page), 'completed');
    const shown = await snapshot(page);
    assert.deepEqual(shown.cards.map((c) => c.status), ['completed', 'completed', 'completed']);
    const { view } = await assertMatchesApi(page, base, id);
    assert.equal(view.executionMode, 'parallel');
  });
});

test('an agent scripted to fail shows red with its message; the task fails', LIMIT, async (t) => {
  const env = await setup(t);
  const { page, base } = env;
  await run(env, async () => {
    await register(page, base);
    await fillBuilder(page, base, {
      agents: TEAM, mode: 'sequential', options: { latencyMs: 40, tokens: 12, failAgents: ['frontend'] },
    });
    const id = await execute(page);
    assert.equal(await waitFinished(page), 'failed');
    await screenshot(page, 'failed-agent');

    const shown = await snapshot(page);
    assert.equal(shown.statusText, 'Failed');
    const byRole = Object.fromEntries(shown.cards.map((c) => [c.role, c]));
    assert.equal(byRole['tech-lead'].status, 'completed');
    assert.equal(byRole.frontend.status, 'error');
    assert.equal(byRole.qa.status, 'pending', 'sequential: the agent after the failed one never runs');
    assert.ok(byRole.frontend.error && byRole.frontend.error.trim().length > 0, 'the failed card shows its error message');

    const red = await page.evaluate(() => {
      const card = document.querySelector('[data-testid=agent-card-frontend]');
      const dot = card.querySelector('.status-dot');
      const error = document.querySelector('[data-testid=agent-error-frontend]');
      return [getComputedStyle(card).borderTopColor, getComputedStyle(dot).backgroundColor, getComputedStyle(error).color];
    });
    for (const color of red) {
      const [r, g, b] = color.match(/\d+/g).map(Number);
      assert.ok(r > 150 && g < 100 && b < 100, `the failed card is red (got ${color})`);
    }

    assert.match(shown.summary, /Frontend[^,]* failed/);
    assert.ok((await page.textContent('[data-testid=task-error]')).trim().length > 0, 'the summary shows the task error');
    const { view } = await assertMatchesApi(page, base, id);
    assert.equal(view.status, 'failed');
    assert.equal(view.agents.find((a) => a.role === 'frontend').error, byRole.frontend.error);
  });
});

test('a double click and a triple click on Execute each create exactly one task', LIMIT, async (t) => {
  const env = await setup(t);
  const { page, base } = env;
  await run(env, async () => {
    await register(page, base);
    const posts = [];
    page.on('request', (req) => {
      if (req.method() === 'POST' && new URL(req.url()).pathname === '/api/tasks') posts.push(req.headers()['idempotency-key']);
    });
    const count = async () => (await apiGet(page, base, '/api/tasks?limit=100')).tasks.length;

    // A double click.
    await fillBuilder(page, base, { agents: ['qa'], description: 'Double click', options: { latencyMs: 20, tokens: 4 } });
    await page.dblclick('[data-testid=execute-button]');
    const first = await waitForViewer(page);
    await waitFinished(page);
    t.diagnostic(`double click: ${posts.length} POST /api/tasks`);
    assert.equal(await count(), 1, `one task after a double click (POSTs: ${JSON.stringify(posts)})`);
    assert.ok(posts.length >= 1 && posts.every((k) => k && k === posts[0]), `every submit carried the same Idempotency-Key: ${JSON.stringify(posts)}`);

    // A fast triple click (real mouse events).
    posts.length = 0;
    await page.click('[data-testid=nav-new]');
    await fillBuilder(page, base, { agents: ['qa'], description: 'Triple click', options: { latencyMs: 20, tokens: 4 } });
    await page.click('[data-testid=execute-button]', { clickCount: 3, delay: 0 });
    const second = await waitForViewer(page);
    await waitFinished(page);
    assert.notEqual(second, first);
    t.diagnostic(`triple click: ${posts.length} POST /api/tasks`);
    assert.equal(await count(), 2, `one more task after a triple click (POSTs: ${JSON.stringify(posts)})`);
    assert.ok(posts.length >= 1 && posts.every((k) => k && k === posts[0]), `same Idempotency-Key: ${JSON.stringify(posts)}`);

    // A burst faster than any mouse: three clicks and a requestSubmit() in one task.
    posts.length = 0;
    await page.click('[data-testid=nav-new]');
    await fillBuilder(page, base, { agents: ['qa'], description: 'Burst', options: { latencyMs: 20, tokens: 4 } });
    await page.evaluate(() => {
      const button = document.querySelector('[data-testid=execute-button]');
      button.click(); button.click(); button.click(); button.form.requestSubmit();
    });
    await waitForViewer(page);
    await waitFinished(page);
    t.diagnostic(`click burst + requestSubmit: ${posts.length} POST /api/tasks`);
    assert.equal(await count(), 3, `one more task after a click burst (POSTs: ${JSON.stringify(posts)})`);
    assert.ok(posts.length >= 1 && posts.every((k) => k && k === posts[0]), `same Idempotency-Key: ${JSON.stringify(posts)}`);
  });
});

test('the server is stopped and restarted mid-task: the viewer recovers to the exact final state', LIMIT, async (t) => {
  const env = await setup(t);
  const { page, base, server } = env;
  await run(env, async () => {
    await register(page, base);
    await fillBuilder(page, base, { agents: TEAM, mode: 'sequential', options: { latencyMs: 120, tokens: 20 } });
    const id = await execute(page);
    await page.waitForSelector('[data-testid=connection-status][data-state=live]');
    await waitCard(page, 'tech-lead', 'running', { withOutput: true });
    const before = await snapshot(page);

    const stopped = await server.stop();
    t.diagnostic(`troupe stopped: ${JSON.stringify(stopped)}`);
    await page.waitForSelector('[data-testid=connection-status][data-state=reconnecting]', { timeout: 15_000 });
    assert.equal(await page.textContent('[data-testid=connection-status]'), 'reconnecting…');
    await screenshot(page, 'restart-outage');
    // Nothing went back while the server was away.
    const during = await snapshot(page);
    during.cards.forEach((c, i) => {
      assert.equal(c.status, before.cards[i].status, `${c.role}: status kept during the outage`);
      assert.ok(c.outputText.startsWith(before.cards[i].outputText), `${c.role}: output kept during the outage`);
    });

    await server.start();
    assert.equal(await waitFinished(page), 'completed');
    await screenshot(page, 'restart-recovered');
    const live = await snapshot(page);
    const { view } = await assertMatchesApi(page, base, id);
    assert.ok(view.agents.some((a) => a.attempt > 1), 'the interrupted agent ran again after the restart');

    await page.reload();
    await waitFinished(page);
    const fresh = await snapshot(page);
    assertSameViewer(live, fresh, 'the recovered viewer equals a fresh page load');
  });
});

test('a reload mid-task rebuilds the page and ends in the same state as the API view', LIMIT, async (t) => {
  const env = await setup(t);
  const { page, base } = env;
  await run(env, async () => {
    await register(page, base);
    await fillBuilder(page, base, { agents: TEAM, mode: 'sequential', options: { latencyMs: 80, tokens: 20 } });
    const id = await execute(page);
    await waitCard(page, 'frontend', 'running', { withOutput: true });
    const before = await snapshot(page);

    await page.reload();
    await page.waitForSelector('[data-testid=agent-card-qa]');
    const rebuilt = await snapshot(page);
    assert.equal(rebuilt.cards[0].status, 'completed', 'the finished agent is still completed after the reload');
    assert.equal(rebuilt.cards[0].outputHtml, before.cards[0].outputHtml, 'and shows the same output');
    assert.notEqual(rebuilt.cards[1].status, 'pending', 'the running agent did not go back to pending');

    assert.equal(await waitFinished(page), 'completed');
    const reloaded = await snapshot(page);
    await assertMatchesApi(page, base, id);
    assert.deepEqual(reloaded.cards.map((c) => c.status), ['completed', 'completed', 'completed']);
  });
});

test('history: a finished task opened from the history page replays to the same final state', LIMIT, async (t) => {
  const env = await setup(t);
  const { page, base } = env;
  await run(env, async () => {
    await register(page, base);
    await fillBuilder(page, base, {
      agents: TEAM, title: 'History replay', mode: 'parallel', options: { latencyMs: 30, tokens: 10, failAgents: ['qa'] },
    });
    const id = await execute(page);
    assert.equal(await waitFinished(page), 'failed');
    const live = await snapshot(page);

    await page.click('[data-testid=nav-history]');
    await page.waitForURL(/\/tasks$/);
    const item = page.locator(`[data-testid=history-item-${id}]`);
    await item.waitFor();
    assert.match(await item.textContent(), /History replay/);
    assert.equal(await page.locator('.history-item').count(), 1);
    await screenshot(page, 'history');

    // No event stream (SSE); the log is read once as NDJSON, for the run timeline.
    const streams = [];
    page.on('request', (req) => {
      if (new URL(req.url()).pathname.endsWith('/events') && req.headers().accept !== 'application/x-ndjson') streams.push(req.url());
    });
    await item.click();
    await page.waitForURL(new RegExp(`/tasks/${id}$`));
    assert.equal(await waitFinished(page), 'failed');
    assert.equal(await page.getAttribute('[data-testid=connection-status]', 'data-state'), 'replay');
    const replay = await snapshot(page);
    assertSameViewer(replay, live, 'the replayed viewer equals the live one at the end');
    assert.deepEqual(streams, [], 'a finished task opens without an event stream');
    await assertMatchesApi(page, base, id);

    // Back to the history with the browser's back button.
    await page.goBack();
    await page.waitForSelector(`[data-testid=history-item-${id}]`);
  });
});

test('375 px: cards in one column, no horizontal scroll; 1440 px: two columns or more', LIMIT, async (t) => {
  const env = await setup(t, { viewport: { width: 375, height: 800 } });
  const { page, base } = env;
  const noHorizontalScroll = async (where) => {
    const width = await page.evaluate(() => document.documentElement.scrollWidth);
    assert.ok(width <= 375, `${where}: no horizontal scroll at 375 px (scrollWidth ${width})`);
  };
  const boxes = () => page.$$eval('[data-testid^=agent-card-]', (cards) => cards.map((c) => {
    const r = c.getBoundingClientRect();
    return { x: Math.round(r.x), y: Math.round(r.y), right: Math.round(r.right), bottom: Math.round(r.bottom) };
  }));
  await run(env, async () => {
    await register(page, base);
    await noHorizontalScroll('builder');
    await fillBuilder(page, base, { agents: TEAM, mode: 'parallel', options: { latencyMs: 60, tokens: 20 } });
    await execute(page);
    await page.waitForFunction(() => document.querySelector('[data-testid=agent-card-tech-lead]')?.dataset.status === 'running');
    await noHorizontalScroll('viewer while running');
    await screenshot(page, 'viewer-375-mid-run');
    await waitFinished(page);
    await noHorizontalScroll('viewer finished');
    await screenshot(page, 'viewer-375-finished');

    const narrow = await boxes();
    assert.equal(narrow.length, 3);
    for (let i = 1; i < narrow.length; i++) {
      assert.equal(narrow[i].x, narrow[0].x, 'one column: same left edge');
      assert.ok(narrow[i].y >= narrow[i - 1].bottom, 'one column: each card below the previous one');
    }
    for (const b of narrow) assert.ok(b.right <= 375, 'cards fit the screen');

    await page.setViewportSize({ width: 1440, height: 1000 });
    await page.waitForFunction(() => {
      const tops = [...document.querySelectorAll('[data-testid^=agent-card-]')].map((c) => Math.round(c.getBoundingClientRect().y));
      return new Set(tops).size < tops.length;
    });
    const wide = await boxes();
    const firstRow = wide.filter((b) => b.y === wide[0].y);
    assert.ok(firstRow.length >= 2, `at 1440 px at least two cards side by side (got ${JSON.stringify(wide)})`);
    assert.ok(new Set(firstRow.map((b) => b.x)).size === firstRow.length, 'side by side: different columns');
    await screenshot(page, 'viewer-1440-finished');
    t.diagnostic(`screenshots in ${screenshotsDir()}`);
  });
});

// The live reducer and the server's projection once disagreed by 1 ms on a failed task's
// total (each rounded differently); task_error now carries the figure itself.
test("a failed task's total time is the same live and projected", LIMIT, async (t) => {
  const env = await setup(t);
  const { page, base } = env;
  await (async () => { // no run(): its failure report (log, screenshot) is noise here
    await register(page, base);
    const token = await sessionToken(page);
    const ids = [];
    for (let i = 0; i < 8; i++) {
      const res = await fetch(`${base}/api/tasks`, {
        method: 'POST',
        headers: { Authorization: `Bearer ${token}`, 'Content-Type': 'application/json' },
        body: JSON.stringify({ description: `Failing ${i}`, selectedAgents: ['qa', 'tech-lead'], executionMode: 'parallel', providerOptions: { latencyMs: 3, tokens: 3, failAgents: ['qa'] } }),
      });
      assert.equal(res.status, 202);
      ids.push((await res.json()).taskId);
    }
    // The browser's own reducer, fed each task's whole log as the live viewer is.
    const results = await page.evaluate(async ({ ids, token }) => {
      const { applyEvent, fromView } = await import('/ui/js/state.js');
      const headers = { Authorization: `Bearer ${token}` };
      const out = [];
      for (const id of ids) {
        let view;
        for (;;) {
          view = await (await fetch(`/api/tasks/${id}`, { headers })).json();
          if (view.status === 'failed' || view.status === 'completed') break;
          await new Promise((r) => setTimeout(r, 50));
        }
        const log = (await (await fetch(`/api/tasks/${id}/events`, { headers: { ...headers, Accept: 'application/x-ndjson' } })).text())
          .split('\n').filter(Boolean).map((line) => JSON.parse(line));
        const state = fromView({ ...view, status: 'queued', lastSeq: 0, totalExecutionTime: null, agents: [] });
        for (const ev of log) applyEvent(state, ev);
        out.push({ id, status: view.status, projected: view.totalExecutionTime, live: state.totalExecutionTime });
      }
      return out;
    }, { ids, token });
    const differing = results.filter((r) => r.live !== r.projected);
    t.diagnostic(`live vs projected totals: ${results.map((r) => `${r.live}/${r.projected}`).join(' ')}`);
    assert.deepEqual(differing, [], 'the live total of a failed task equals GET /api/tasks/{id}');
  })();
});
