// Browser end-to-end tests of task control in the viewer: cancel (a task, one agent),
// retry, pause and resume, against a real `troupe` process (embedded, simulated
// provider) in headless chromium. The simulated latency makes each agent take a couple
// of seconds, so the controls are pressed while something is surely running; every
// wait is on the page's state, never a fixed sleep.
//
//   node --test --test-concurrency=1 e2e/        (or scripts/e2e, which builds first)

import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  apiGet, assertMatchesApi, assertSameViewer, cardHistory, execute, fillBuilder, recordCardStatuses,
  register, run, screenshot, sessionToken, setup, shown, snapshot, waitCard, waitFinished, waitTaskStatus,
} from './helpers.mjs';

const TEAM = ['tech-lead', 'frontend', 'qa'];
const LIMIT = { timeout: 90_000 };
// 40 chunks 40 ms apart: about 1.6 s per agent, long enough to press a button mid-answer.
const SLOW = { latencyMs: 40, tokens: 40 };

const byRole = (snap) => Object.fromEntries(snap.cards.map((c) => [c.role, c]));

/** Waits for "Pausing…" and reads it with the buttons shown, in one go (it lasts until the running agent ends). */
async function whilePausing(page) {
  const handle = await page.waitForFunction(() => {
    const badge = document.querySelector('[data-testid=task-status]');
    if (badge?.dataset.request !== 'pause') return null;
    const visible = (id) => !document.querySelector(`[data-testid=${id}]`).hidden;
    return { text: badge.textContent, pause: visible('task-pause'), resume: visible('task-resume'), cancel: visible('task-cancel') };
  });
  return handle.jsonValue();
}

/** The task's log as the NDJSON export gives it. */
async function taskLog(page, base, id) {
  const token = await sessionToken(page);
  const res = await fetch(`${base}/api/tasks/${id}/events`, { headers: { Authorization: `Bearer ${token}`, Accept: 'application/x-ndjson' } });
  assert.equal(res.status, 200);
  return (await res.text()).split('\n').filter(Boolean).map((line) => JSON.parse(line));
}

test('cancel a running task: the running card keeps its partial output, the waiting ones are untouched', LIMIT, async (t) => {
  const env = await setup(t);
  const { page, base } = env;
  await run(env, async () => {
    await recordCardStatuses(page);
    await register(page, base);
    await fillBuilder(page, base, { agents: TEAM, title: 'Cancel me', mode: 'sequential', options: SLOW });
    const id = await execute(page);
    await waitCard(page, 'tech-lead', 'running', { withOutput: true });

    assert.deepEqual(await shown(page, ['task-cancel', 'task-pause', 'task-resume', 'task-retry', 'agent-cancel-tech-lead', 'agent-cancel-frontend']), {
      'task-cancel': true, 'task-pause': true, 'task-resume': false, 'task-retry': false,
      'agent-cancel-tech-lead': true, 'agent-cancel-frontend': false,
    }, 'a running task offers Cancel and Pause; only the running card offers Cancel');

    await page.click('[data-testid=task-cancel]');
    assert.equal(await waitFinished(page), 'cancelled');
    await screenshot(page, 'cancelled-task');

    const snap = await snapshot(page);
    const cards = byRole(snap);
    assert.equal(snap.statusText, 'Cancelled');
    assert.equal(cards['tech-lead'].status, 'cancelled');
    assert.equal(cards['tech-lead'].statusLabel, 'Cancelled');
    assert.ok(!cards['tech-lead'].outputHidden && cards['tech-lead'].outputText.includes('Simulated output'),
      'the cancelled card shows the partial output it had written');
    assert.equal(cards['tech-lead'].error, null);
    for (const role of ['frontend', 'qa']) {
      assert.equal(cards[role].status, 'pending', `${role} never started`);
      assert.ok(cards[role].outputHidden, `${role} has no output`);
    }
    const history = await cardHistory(page);
    for (const role of ['frontend', 'qa']) {
      assert.deepEqual(history[role].map((h) => h.status), ['pending'], `${role} stayed pending throughout`);
    }
    assert.match(snap.summary, /^Cancelled after .+: 0 of 3 agents completed, Tech Lead cancelled\.$/);

    // Cancelled is its own colour, neither the failure red nor the pending grey.
    const colours = await page.evaluate(() => ['tech-lead', 'qa'].map((r) => getComputedStyle(document.querySelector(`[data-testid=agent-card-${r}]`)).borderTopColor));
    assert.notEqual(colours[0], colours[1], 'a cancelled card looks different from a pending one');
    assert.equal(await page.evaluate(() => getComputedStyle(document.querySelector('[data-testid=agent-card-tech-lead]')).borderTopStyle), 'dashed');

    // A cancelled task can be retried (it has a cancelled agent); nothing else is offered.
    assert.deepEqual(await shown(page, ['task-cancel', 'task-pause', 'task-resume', 'task-retry', 'agent-retry-tech-lead', 'agent-retry-frontend']), {
      'task-cancel': false, 'task-pause': false, 'task-resume': false, 'task-retry': true,
      'agent-retry-tech-lead': true, 'agent-retry-frontend': false,
    });

    const { view } = await assertMatchesApi(page, base, id);
    assert.equal(view.status, 'cancelled');
    const settled = view.cancelRequested; // checked last: the UI must not depend on it
    const log = await taskLog(page, base, id);
    assert.deepEqual(log.slice(-2).map((e) => e.type), ['agent_cancelled', 'task_cancelled']);
    assert.equal(log.filter((e) => e.type === 'agent_start').length, 1, 'no agent started after the cancel');

    // The history shows the new status; back to the task, a fresh load shows the same.
    await page.click('[data-testid=nav-history]');
    const item = page.locator(`[data-testid=history-item-${id}]`);
    await item.waitFor();
    assert.equal(await item.locator('.status-badge').getAttribute('data-status'), 'cancelled');
    assert.equal((await item.locator('.status-badge').textContent()).trim(), 'Cancelled');
    await page.goBack();
    await waitFinished(page);
    assertSameViewer(await snapshot(page), snap, 'reopening shows the same cancelled task');

    // Retry after a cancel: the cancelled agent runs again, the others run for the first time.
    await page.click('[data-testid=task-retry]');
    await waitCard(page, 'tech-lead', 'running');
    assert.equal(await waitFinished(page), 'completed', 'the retried task is not cancelled again');
    const retried = await snapshot(page);
    assert.deepEqual(retried.cards.map((c) => [c.role, c.status, c.attempt]), [
      ['tech-lead', 'completed', 'Attempt 2'], ['frontend', 'completed', ''], ['qa', 'completed', ''],
    ]);
    await assertMatchesApi(page, base, id);

    assert.equal(settled, false, 'GET /api/tasks/{id} of a cancelled task: cancelRequested is false once the cancel is carried out');
  });
});

test('cancel one agent of a parallel run: the others complete; Retry on its card runs it again', LIMIT, async (t) => {
  const env = await setup(t);
  const { page, base } = env;
  await run(env, async () => {
    await recordCardStatuses(page);
    await register(page, base);
    await fillBuilder(page, base, { agents: TEAM, mode: 'parallel', options: SLOW });
    const id = await execute(page);
    await page.waitForFunction((roles) => roles.every(
      (r) => document.querySelector(`[data-testid=agent-card-${r}]`)?.dataset.status === 'running'), TEAM);
    await waitCard(page, 'frontend', 'running', { withOutput: true });

    await page.click('[data-testid=agent-cancel-frontend]');
    await waitCard(page, 'frontend', 'cancelled');
    const atCancel = byRole(await snapshot(page));
    assert.equal(atCancel['tech-lead'].status, 'running', 'the other agents go on');
    assert.equal(atCancel.qa.status, 'running');

    const status = await waitFinished(page);
    await screenshot(page, 'parallel-one-cancelled');
    const snap = await snapshot(page);
    const cards = byRole(snap);
    assert.equal(cards['tech-lead'].status, 'completed');
    assert.equal(cards.qa.status, 'completed');
    assert.equal(cards.frontend.status, 'cancelled');
    assert.ok(!cards.frontend.outputHidden && cards.frontend.outputText.includes('Simulated output'), 'partial output kept');
    const { view } = await assertMatchesApi(page, base, id);
    t.diagnostic(`a parallel task with one agent cancelled ends "${status}" (API: "${view.status}")`);
    assert.ok(['failed', 'cancelled'].includes(status), `the task does not claim success (got ${status})`);
    assert.match(snap.progress, /^2 of 3 completed, 1 cancelled$/);

    // Retry the cancelled agent from its card: the viewer follows the task again.
    assert.deepEqual(await shown(page, ['agent-retry-frontend', 'agent-retry-qa', 'task-retry']), {
      'agent-retry-frontend': true, 'agent-retry-qa': false, 'task-retry': true,
    });
    await page.click('[data-testid=agent-retry-frontend]');
    await waitCard(page, 'frontend', 'running');
    assert.equal(await page.getAttribute('[data-testid=task-summary]', 'hidden'), '', 'no summary while it runs again');
    assert.equal(await waitFinished(page), 'completed');
    const after = await snapshot(page);
    assert.deepEqual(after.cards.map((c) => [c.role, c.status, c.attempt]), [
      ['tech-lead', 'completed', ''], ['frontend', 'completed', 'Attempt 2'], ['qa', 'completed', ''],
    ]);
    await assertMatchesApi(page, base, id);
    // (A state held for less than a frame, such as pending between task_retried and
    // agent_start, may never be painted: only the states that last are compared.)
    const history = await cardHistory(page);
    assert.deepEqual(history.frontend.map((h) => h.status).filter((s) => s !== 'pending'),
      ['running', 'cancelled', 'running', 'completed'], `frontend went ${history.frontend.map((h) => h.status).join(' → ')}`);
  });
});

test('retry a failed task: the failed card runs again (attempt 2) and the task completes, as a reload shows', LIMIT, async (t) => {
  const env = await setup(t);
  const { page, base } = env;
  await run(env, async () => {
    await recordCardStatuses(page);
    await register(page, base);
    // failAttempts: 1 fails the first attempt only, so the retry can succeed.
    await fillBuilder(page, base, { agents: TEAM, mode: 'sequential', options: { ...SLOW, failAgents: ['frontend'], failAttempts: 1 } });
    const id = await execute(page);
    assert.equal(await waitFinished(page), 'failed');
    const failed = byRole(await snapshot(page));
    assert.equal(failed.frontend.status, 'error');
    assert.equal(failed.qa.status, 'pending');
    assert.deepEqual(await shown(page, ['task-retry', 'agent-retry-frontend', 'agent-retry-tech-lead', 'agent-retry-qa', 'task-cancel']), {
      'task-retry': true, 'agent-retry-frontend': true, 'agent-retry-tech-lead': false, 'agent-retry-qa': false, 'task-cancel': false,
    }, 'Retry on the failed task and on the failed card only');

    const streams = [];
    page.on('request', (req) => { if (new URL(req.url()).pathname.endsWith('/events')) streams.push(req.url()); });
    const answer = page.waitForResponse((res) => res.url().endsWith(`/api/tasks/${id}/retry`));
    await page.click('[data-testid=task-retry]');
    const retry = await answer;
    assert.equal(retry.status(), 202);
    const body = await retry.json();
    assert.deepEqual(body.agents, ['frontend']);

    await waitCard(page, 'frontend', 'running');
    assert.equal(await page.textContent('[data-testid=agent-attempt-frontend]'), 'Attempt 2');
    assert.notEqual(await page.getAttribute('[data-testid=connection-status]', 'data-state'), 'replay');
    assert.equal(await waitFinished(page), 'completed');
    await screenshot(page, 'retried-task');
    assert.ok(streams.length >= 1, 'the viewer opened the stream again after Retry');
    assert.ok(streams.every((u) => Number(new URL(u).searchParams.get('after')) > 0), `it resumed after the last seq it had: ${streams}`);

    const live = await snapshot(page);
    const cards = byRole(live);
    assert.deepEqual(live.cards.map((c) => [c.role, c.status]), TEAM.map((r) => [r, 'completed']));
    assert.equal(cards.frontend.attempt, 'Attempt 2');
    assert.equal(cards.frontend.error, null, 'the old error is gone');
    assert.ok(cards.frontend.outputText.includes('Simulated output'));
    assert.equal(cards['tech-lead'].attempt, '', 'the completed agent did not run again');
    assert.match(live.summary, /3 agents completed/);
    assert.deepEqual(await shown(page, ['task-retry', 'agent-retry-frontend']), { 'task-retry': false, 'agent-retry-frontend': false });
    // (queued and pending, between task_retried and agent_start, may last less than a frame.)
    const history = await cardHistory(page);
    const went = (role) => history[role].map((h) => h.status).filter((s) => s !== 'queued' && s !== 'pending');
    assert.deepEqual(went('@task').slice(-3), ['failed', 'running', 'completed'], `task went ${went('@task').join(' → ')}`);
    assert.deepEqual(went('frontend'), ['running', 'error', 'running', 'completed'], `frontend went ${went('frontend').join(' → ')}`);

    const { view } = await assertMatchesApi(page, base, id);
    assert.equal(view.agents.find((a) => a.role === 'frontend').attempt, 2);

    await page.reload();
    await waitFinished(page);
    assertSameViewer(await snapshot(page), live, 'the retried task equals a fresh reload');
  });
});

test('pause then resume a sequential task: no agent starts while paused, then it completes', LIMIT, async (t) => {
  const env = await setup(t);
  const { page, base } = env;
  await run(env, async () => {
    await recordCardStatuses(page);
    await register(page, base);
    await fillBuilder(page, base, { agents: TEAM, title: 'Pause me', mode: 'sequential', options: SLOW });
    const id = await execute(page);
    await waitCard(page, 'tech-lead', 'running', { withOutput: true });

    await page.click('[data-testid=task-pause]');
    // The running agent finishes first: meanwhile the status says "Pausing…", and
    // Resume (which withdraws the pause) replaces Pause.
    assert.deepEqual(await whilePausing(page), { text: 'Pausing…', pause: false, resume: true, cancel: true });

    await waitTaskStatus(page, 'paused');
    await screenshot(page, 'paused-task');
    let snap = await snapshot(page);
    assert.equal(snap.statusText, 'Paused');
    assert.deepEqual(snap.cards.map((c) => c.status), ['completed', 'pending', 'pending'], 'the running agent finished; no new one started');
    assert.deepEqual(await shown(page, ['task-pause', 'task-resume', 'task-cancel', 'task-retry', 'task-paused-note']), {
      'task-pause': false, 'task-resume': true, 'task-cancel': true, 'task-retry': false, 'task-paused-note': true,
    });
    const paused = await apiGet(page, base, `/api/tasks/${id}`);
    assert.equal(paused.status, 'paused');
    const settled = paused.pauseRequested; // checked last: the UI must not depend on it

    // While paused (a while: a trip to the history, a reload, a narrow screen), nothing starts.
    await page.click('[data-testid=nav-history]');
    const item = page.locator(`[data-testid=history-item-${id}]`);
    await item.waitFor();
    assert.equal(await item.locator('.status-badge').getAttribute('data-status'), 'paused');
    assert.equal((await item.locator('.status-badge').textContent()).trim(), 'Paused');
    await page.goBack();
    await waitTaskStatus(page, 'paused');
    await page.reload();
    await waitTaskStatus(page, 'paused');
    await page.waitForSelector('[data-testid=connection-status][data-state=live]');
    await page.setViewportSize({ width: 375, height: 800 });
    const width = await page.evaluate(() => document.documentElement.scrollWidth);
    assert.ok(width <= 375, `paused viewer at 375 px: no horizontal scroll (scrollWidth ${width})`);
    await screenshot(page, 'paused-task-375');
    await page.setViewportSize({ width: 1440, height: 1000 });
    snap = await snapshot(page);
    assert.deepEqual(snap.cards.map((c) => c.status), ['completed', 'pending', 'pending'], 'still nothing started');

    const resumedAt = await page.evaluate(() => performance.now());
    await page.click('[data-testid=task-resume]');
    await waitCard(page, 'frontend', 'running');
    assert.equal(await waitFinished(page), 'completed');
    const history = await cardHistory(page); // since the reload
    const frontendStart = history.frontend.find((h) => h.status === 'running').t;
    assert.ok(frontendStart >= resumedAt, 'frontend started only after Resume');
    await assertMatchesApi(page, base, id);

    // The log says the same: no agent_start between task_paused and task_unpaused.
    const types = (await taskLog(page, base, id)).map((e) => e.type);
    const pausedAt = types.indexOf('task_paused');
    const unpausedAt = types.indexOf('task_unpaused');
    assert.ok(pausedAt > 0 && unpausedAt > pausedAt, `paused then unpaused: ${types.join(' ')}`);
    assert.ok(!types.slice(pausedAt, unpausedAt).includes('agent_start'), 'no agent started while paused');
    assert.equal(types.filter((ty) => ty === 'agent_start').length, 3, 'each agent ran once');

    assert.equal(settled, false, 'GET /api/tasks/{id} of a paused task: pauseRequested is false once the pause is carried out');
  });
});

test('a control request: its buttons are disabled while in flight, and a refusal shows the server message inline', LIMIT, async (t) => {
  const env = await setup(t);
  const { page, base } = env;
  await run(env, async () => {
    await register(page, base);
    await fillBuilder(page, base, { agents: ['qa'], mode: 'sequential', options: { latencyMs: 40, tokens: 30 } });
    const id = await execute(page);
    await waitCard(page, 'qa', 'running', { withOutput: true });

    // Hold the cancel until the task has ended on its own, then let it reach the server,
    // which refuses it (task_finished).
    let release;
    const held = new Promise((resolve) => { release = resolve; });
    await page.route('**/api/tasks/*/cancel', async (route) => { await held; await route.continue(); });
    await page.click('[data-testid=task-cancel]');
    await page.waitForSelector('[data-testid=task-cancel][disabled]');
    assert.equal(await page.getAttribute('[data-testid=task-cancel]', 'aria-busy'), 'true');
    assert.ok(await page.isDisabled('[data-testid=task-pause]'), 'the other task buttons wait too');
    assert.ok(await page.isDisabled('[data-testid=agent-cancel-qa]'), 'and the cards\' buttons');

    assert.equal(await waitFinished(page), 'completed');
    const answer = page.waitForResponse((res) => res.url().endsWith(`/api/tasks/${id}/cancel`));
    release();
    const res = await answer;
    assert.equal(res.status(), 409);
    const { error } = await res.json();
    assert.equal(error.code, 'task_finished');
    const inline = page.locator('[data-testid=task-action-error]');
    await inline.waitFor();
    const text = await inline.textContent();
    assert.ok(text.toLowerCase().includes(error.message.toLowerCase().replace(/[.]$/, '')), `the server's message is shown: "${text}" vs "${error.message}"`);
    assert.equal(await inline.getAttribute('role'), 'alert');
    await screenshot(page, 'control-refused');
    await page.unroute('**/api/tasks/*/cancel');

    // A failure before the server answers (network): said so, in the card that asked.
    await page.route('**/api/tasks/*/agents/*/cancel', (route) => route.abort('connectionreset'));
    await page.click('[data-testid=nav-new]');
    await fillBuilder(page, base, { agents: ['qa'], mode: 'sequential', options: { latencyMs: 40, tokens: 30 } });
    await execute(page);
    await waitCard(page, 'qa', 'running');
    await page.click('[data-testid=agent-cancel-qa]');
    const cardError = page.locator('[data-testid=agent-action-error-qa]');
    await cardError.waitFor();
    assert.match(await cardError.textContent(), /Could not reach the Troupe server/);
    assert.equal(await page.isDisabled('[data-testid=agent-cancel-qa]'), false, 'the button is back for another try');
    assert.equal(await waitFinished(page), 'completed');
  });
});

test('Resume while a pause is under way withdraws it: the task never pauses', LIMIT, async (t) => {
  const env = await setup(t);
  const { page, base } = env;
  await run(env, async () => {
    await recordCardStatuses(page);
    await register(page, base);
    // Slower agents (about 3 s each): Resume surely lands before the running one ends.
    await fillBuilder(page, base, { agents: ['tech-lead', 'qa'], mode: 'sequential', options: { latencyMs: 80, tokens: 40 } });
    const id = await execute(page);
    await waitCard(page, 'tech-lead', 'running', { withOutput: true });
    await page.click('[data-testid=task-pause]');
    assert.equal((await whilePausing(page)).text, 'Pausing…');

    const answer = page.waitForResponse((res) => res.url().endsWith(`/api/tasks/${id}/resume`));
    await page.click('[data-testid=task-resume]');
    assert.equal((await answer).status(), 200);
    await page.waitForSelector('[data-testid=task-status]:not([data-request])');
    assert.equal(await page.textContent('[data-testid=task-status]'), 'Running');
    assert.deepEqual(await shown(page, ['task-pause', 'task-resume', 'task-cancel']), { 'task-pause': true, 'task-resume': false, 'task-cancel': true });

    assert.equal(await waitFinished(page), 'completed');
    const statuses = (await cardHistory(page))['@task'].map((h) => h.status);
    assert.ok(!statuses.includes('paused'), `the task never paused: ${statuses.join(' → ')}`);
    const types = (await taskLog(page, base, id)).map((e) => e.type);
    assert.ok(!types.includes('task_paused'), `no task_paused in the log: ${types.join(' ')}`);
    await assertMatchesApi(page, base, id);
  });
});

test('cancel a paused task: cancelled at once, the agents that never ran stay pending, nothing to retry', LIMIT, async (t) => {
  const env = await setup(t);
  const { page, base } = env;
  await run(env, async () => {
    await register(page, base);
    await fillBuilder(page, base, { agents: ['tech-lead', 'qa'], mode: 'sequential', options: SLOW });
    const id = await execute(page);
    await waitCard(page, 'tech-lead', 'running', { withOutput: true });
    await page.click('[data-testid=task-pause]');
    await waitTaskStatus(page, 'paused');

    const answer = page.waitForResponse((res) => res.url().endsWith(`/api/tasks/${id}/cancel`));
    await page.click('[data-testid=task-cancel]');
    assert.equal((await answer).status(), 200, 'a paused task is cancelled by the api at once');
    assert.equal(await waitFinished(page), 'cancelled');
    const snap = await snapshot(page);
    assert.deepEqual(snap.cards.map((c) => [c.role, c.status]), [['tech-lead', 'completed'], ['qa', 'pending']]);
    assert.match(snap.summary, /^Cancelled after .+: 1 of 2 agents completed\.$/);
    // No agent failed or was cancelled: the server would answer nothing_to_retry.
    assert.deepEqual(await shown(page, ['task-retry', 'task-resume', 'task-cancel', 'task-paused-note', 'agent-retry-qa']), {
      'task-retry': false, 'task-resume': false, 'task-cancel': false, 'task-paused-note': false, 'agent-retry-qa': false,
    });
    await assertMatchesApi(page, base, id);
  });
});
