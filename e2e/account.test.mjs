// Browser end-to-end tests of the session as the web UI holds it (an HttpOnly cookie,
// a CSRF token on every request that changes something), sign-out, the password change
// and task deletion, against a real `troupe` process (embedded, simulated provider) in
// headless chromium.
//
//   node --test --test-concurrency=1 e2e/        (or scripts/e2e, which builds first)

import { test } from 'node:test';
import assert from 'node:assert/strict';
import {
  PASSWORD, cardHistory, execute, fillBuilder, recordCardStatuses, register, run, screenshot,
  sessionCookie, sessionToken, setup, signIn, waitCard, waitFinished,
} from './helpers.mjs';

const LIMIT = { timeout: 90_000 };
const FAST = { latencyMs: 0, tokens: 2 };
// About 1.6 s per agent: long enough to delete a task while it surely runs.
const SLOW = { latencyMs: 40, tokens: 40 };
const NEW_PASSWORD = 'a brand new passphrase';

/** Status of a request the test sends itself, with the given headers (no browser involved). */
async function statusOf(base, pathAndQuery, headers = {}) {
  return (await fetch(`${base}${pathAndQuery}`, { headers, redirect: 'manual' })).status;
}

/** What the page's own scripts can see of the session: document.cookie and both storages. */
async function visibleToScripts(page) {
  return page.evaluate(() => ({
    cookie: document.cookie,
    stored: JSON.stringify([Object.entries(localStorage), Object.entries(sessionStorage)]),
  }));
}

/** Waits until the history page has loaded its first page, and returns the ids it lists. */
async function historyIds(page) {
  await page.waitForFunction(() => {
    const status = document.querySelector('.history-page [role=status]')?.textContent || '';
    return /shown|^$/.test(status) && !/Loading/.test(status)
      && (document.querySelector('.history-item') || !document.querySelector('.history-page .empty').hidden);
  });
  return page.$$eval('[data-testid^=history-item-]', (items) => items.map((a) => a.dataset.testid.slice('history-item-'.length)));
}

test('the session is an HttpOnly cookie: no token in storage or document.cookie, and the app works', LIMIT, async (t) => {
  const env = await setup(t);
  const { page, base } = env;
  await run(env, async () => {
    const sent = [];
    page.on('request', (req) => {
      const url = new URL(req.url());
      if (url.pathname.startsWith('/api/')) sent.push({ method: req.method(), path: url.pathname, headers: req.headers() });
    });
    await recordCardStatuses(page);
    const email = await register(page, base);

    // The browser holds the session in an HttpOnly, SameSite=Strict cookie; the CSRF
    // cookie beside it is readable by the page, the session one is not.
    const cookies = await page.context().cookies();
    const session = cookies.find((c) => c.name === 'troupe_session');
    const csrf = cookies.find((c) => c.name === 'troupe_csrf');
    assert.ok(session && session.value, 'the session cookie is set');
    assert.equal(session.httpOnly, true, 'the session cookie is HttpOnly');
    assert.equal(session.sameSite, 'Strict');
    assert.ok(csrf && csrf.value && !csrf.httpOnly, 'the CSRF cookie is set and readable by the page');

    const seen = await visibleToScripts(page);
    assert.doesNotMatch(seen.cookie, /troupe_session/, 'document.cookie does not show the session cookie');
    assert.match(seen.cookie, /troupe_csrf=/, 'document.cookie shows the CSRF cookie');
    assert.ok(!seen.stored.includes(session.value), 'the session token is in neither localStorage nor sessionStorage');
    assert.doesNotMatch(seen.stored, /troupe\.token|eyJ/, 'no token-like value is stored at all');
    assert.equal(await page.textContent('[data-testid=user-email]'), email, 'the header names the account (from GET /api/auth/session)');

    // The app works on the cookie alone: a task is submitted, runs live, and completes.
    await fillBuilder(page, base, { agents: ['tech-lead', 'qa'], title: 'Cookie session', options: { latencyMs: 25, tokens: 10 } });
    const id = await execute(page);
    assert.equal(await waitFinished(page), 'completed');
    const history = await cardHistory(page);
    for (const role of ['tech-lead', 'qa']) {
      assert.deepEqual(history[role].map((h) => h.status).filter((s) => s !== 'pending'), ['running', 'completed'], `${role} was seen running, then completed`);
    }

    // A reload is still signed in (the page asks the server, nothing is stored), and the
    // finished task's log is read through the NDJSON export with the cookie (the timeline).
    await page.reload();
    assert.equal(await waitFinished(page), 'completed');
    await page.waitForSelector('[data-testid=timeline][data-source=log]');
    assert.equal(await page.textContent('[data-testid=user-email]'), email, 'still signed in after a reload');
    assert.ok(!(await visibleToScripts(page)).stored.includes(session.value), 'still nothing stored after the reload');

    // No request carried a token; every one that changes something carried the CSRF token.
    const signedIn = sent.filter((r) => !['/api/auth/register', '/api/auth/login'].includes(r.path));
    assert.ok(signedIn.some((r) => r.method === 'POST' && r.path === '/api/tasks'), 'the submit was seen');
    assert.ok(signedIn.some((r) => r.path === `/api/tasks/${id}/events` && r.headers.accept === 'application/x-ndjson'), 'the NDJSON export was read');
    assert.deepEqual(signedIn.filter((r) => r.headers.authorization), [], 'no request sends an Authorization header');
    for (const r of signedIn.filter((r) => !['GET', 'HEAD', 'OPTIONS'].includes(r.method))) {
      assert.equal(r.headers['x-csrf-token'], csrf.value, `${r.method} ${r.path} sends the CSRF token`);
    }

    // That header is what lets them through: the same submit without it is refused.
    const refused = await page.evaluate(async () => {
      const res = await fetch('/api/tasks', {
        method: 'POST',
        headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify({ description: 'No CSRF token', selectedAgents: ['qa'], providerOptions: { latencyMs: 0, tokens: 2 } }),
      });
      return { status: res.status, body: await res.json() };
    });
    assert.equal(refused.status, 403);
    assert.equal(refused.body.error.code, 'csrf_token_invalid');
  });
});

test('sign out ends the session: back at /login, and the old cookie and stream URL are refused', LIMIT, async (t) => {
  const env = await setup(t);
  const { page, base } = env;
  await run(env, async () => {
    await register(page, base);
    await fillBuilder(page, base, { agents: ['qa'], title: 'Before sign-out', options: FAST });
    const id = await execute(page);
    await waitFinished(page);
    const old = await sessionToken(page);
    const cookie = { Cookie: `troupe_session=${old}` };
    const { streamUrl } = await page.evaluate(async (taskId) => (await fetch(`/api/tasks/${taskId}`)).json(), id);
    assert.match(streamUrl, /[?&]token=/);
    // All of these work before signing out, so that their 401 afterwards means something.
    assert.equal(await statusOf(base, '/api/auth/session', cookie), 200, 'the cookie, replayed by another client, works while signed in');
    assert.equal(await statusOf(base, streamUrl, { Accept: 'text/event-stream' }), 200, 'the stream URL works while signed in');

    await page.click('[data-testid=sign-out]');
    await page.waitForURL(/\/login$/);
    await page.waitForSelector('[data-testid=login-email]');
    assert.match(await page.textContent('.auth-form [role=status]'), /You are signed out/);
    assert.equal(await page.isHidden('[data-testid=sign-out]'), true, 'the header shows no account');
    assert.equal(await sessionCookie(page), null, 'the browser no longer holds the session cookie');
    assert.doesNotMatch((await visibleToScripts(page)).cookie, /troupe_csrf=./, 'nor the CSRF cookie');

    // The old session is over on the server, whoever presents it.
    assert.equal(await statusOf(base, '/api/auth/session', cookie), 401, 'the old session cookie, replayed, is refused');
    assert.equal(await statusOf(base, '/api/tasks', cookie), 401, 'for every endpoint');
    assert.equal(await statusOf(base, '/api/tasks', { Authorization: `Bearer ${old}` }), 401, 'and as a bearer token');
    assert.equal(await statusOf(base, streamUrl, { Accept: 'text/event-stream' }), 401, 'a stream URL minted from it is refused');

    // The app's pages now send to /login.
    await page.goto(`${base}/tasks`);
    await page.waitForURL(/\/login\?next=%2Ftasks$/);
    await screenshot(page, 'signed-out');
  });
});

test('change password: still signed in, the old password and the old session are refused, the new one signs in', LIMIT, async (t) => {
  const env = await setup(t);
  const { page, base } = env;
  await run(env, async () => {
    const email = await register(page, base);
    const old = await sessionToken(page);

    await page.click('[data-testid=account-button]');
    await page.waitForSelector('[data-testid=account-dialog][open]');
    assert.equal(await page.textContent('[data-testid=account-email]'), email);
    assert.equal(await page.evaluate(() => document.activeElement?.dataset.testid), 'password-current', 'focus is on the current password');

    // Checked before sending: too short, and the two new ones differ.
    await page.fill('[data-testid=password-current]', PASSWORD);
    await page.fill('[data-testid=password-new]', 'short');
    await page.fill('[data-testid=password-repeat]', 'shorter');
    await page.click('[data-testid=password-submit]');
    assert.equal(await page.textContent('[data-testid=password-new-error]'), 'Use at least 8 characters.');
    assert.equal(await page.textContent('[data-testid=password-repeat-error]'), 'The two new passwords differ.');

    // The server's refusal, shown with its message next to the field it concerns.
    await page.fill('[data-testid=password-current]', 'not my password');
    await page.fill('[data-testid=password-new]', NEW_PASSWORD);
    await page.fill('[data-testid=password-repeat]', NEW_PASSWORD);
    await page.click('[data-testid=password-submit]');
    await page.waitForFunction(() => document.querySelector('[data-testid=password-current-error]')?.textContent);
    assert.equal(await page.textContent('[data-testid=password-current-error]'), 'The password is wrong.');
    assert.equal(await page.getAttribute('[data-testid=password-current]', 'aria-invalid'), 'true');
    assert.equal(await page.textContent('[data-testid=password-new-error]'), '', 'the other errors are gone');
    assert.equal(await statusOf(base, '/api/auth/session', { Cookie: `troupe_session=${old}` }), 200, 'a refused change ends no session');

    await page.fill('[data-testid=password-current]', PASSWORD);
    await page.click('[data-testid=password-submit]');
    await page.waitForSelector('[data-testid=password-changed]:not([hidden])');
    assert.match(await page.textContent('[data-testid=password-changed]'), /Password changed/);
    assert.equal(await page.inputValue('[data-testid=password-new]'), '', 'the form is emptied');
    await screenshot(page, 'password-changed');
    await page.keyboard.press('Escape');
    await page.waitForSelector('[data-testid=account-dialog]:not([open])', { state: 'attached' });
    assert.equal(await page.evaluate(() => document.activeElement?.dataset.testid), 'account-button', 'focus returns to the Account button');

    // The answer replaced the session cookie; the old session is over.
    const fresh = await sessionToken(page);
    assert.notEqual(fresh, old, 'a new session cookie');
    assert.equal(await statusOf(base, '/api/auth/session', { Cookie: `troupe_session=${old}` }), 401, 'the session from before the change is refused');

    // Still signed in, also for requests that change something (the new CSRF token).
    await page.click('[data-testid=nav-history]');
    await page.waitForURL(/\/tasks$/);
    await historyIds(page);
    await page.click('[data-testid=nav-new]'); // in the page, not a new load: the same page goes on
    await page.waitForURL(/\/new$/);
    await fillBuilder(page, base, { agents: ['qa'], title: 'After the change', options: FAST });
    await execute(page);
    assert.equal(await waitFinished(page), 'completed');
    assert.equal(await page.textContent('[data-testid=user-email]'), email);

    // Sign out; the old password no longer signs in, the new one does.
    await page.click('[data-testid=sign-out]');
    await page.waitForURL(/\/login$/);
    await page.fill('[data-testid=login-email]', email);
    await page.fill('[data-testid=login-password]', PASSWORD);
    await page.click('[data-testid=login-submit]');
    await page.waitForSelector('[data-testid=login-error]:not([hidden])');
    assert.match(await page.textContent('[data-testid=login-error]'), /wrong email or password/i);
    assert.match(page.url(), /\/login$/, 'the old password does not sign in');

    await signIn(page, base, email, NEW_PASSWORD);
    assert.equal(await page.textContent('[data-testid=user-email]'), email, 'the new password signs in');
  });
});

test('delete a task from the viewer: asked first, then gone from the history and the API', LIMIT, async (t) => {
  const env = await setup(t);
  const { page, base } = env;
  await run(env, async () => {
    await register(page, base);
    await fillBuilder(page, base, { agents: ['qa'], title: 'Delete me', options: FAST });
    const done = await execute(page);
    assert.equal(await waitFinished(page), 'completed');
    const bearer = { Authorization: `Bearer ${await sessionToken(page)}` };

    // Asked first; "Keep it" keeps it, and focus goes back to the button.
    await page.click('[data-testid=task-delete]');
    await page.waitForSelector('[data-testid=confirm-dialog][open]');
    assert.match(await page.textContent('[data-testid=confirm-dialog]'), /cannot be undone/);
    assert.equal(await page.textContent('[data-testid=confirm-ok]'), 'Delete task');
    assert.equal(await page.evaluate(() => document.activeElement?.dataset.testid), 'confirm-cancel', 'the safe answer has the focus');
    await screenshot(page, 'delete-confirm');
    await page.click('[data-testid=confirm-cancel]');
    await page.waitForSelector('[data-testid=confirm-dialog]', { state: 'detached' });
    assert.equal(await page.evaluate(() => document.activeElement?.dataset.testid), 'task-delete');
    assert.equal(await statusOf(base, `/api/tasks/${done}`, bearer), 200, 'kept');

    // Confirmed: a finished task goes at once (204).
    await page.click('[data-testid=task-delete]');
    await page.click('[data-testid=confirm-ok]');
    await page.waitForURL(/\/tasks$/);
    assert.equal(await page.textContent('[data-testid=site-notice-text] span'), 'Task deleted');
    assert.deepEqual(await historyIds(page), [], 'the history no longer lists it');
    assert.equal(await statusOf(base, `/api/tasks/${done}`, bearer), 404, 'GET /api/tasks/{id} is 404');
    await screenshot(page, 'deleted-history');

    // A running task is stopped, then deleted (202): hidden at once all the same.
    await fillBuilder(page, base, { agents: ['tech-lead', 'qa'], title: 'Delete me while running', options: SLOW });
    const running = await execute(page);
    await waitCard(page, 'tech-lead', 'running', { withOutput: true });
    await page.click('[data-testid=task-delete]');
    assert.equal(await page.textContent('[data-testid=confirm-ok]'), 'Stop and delete');
    await page.click('[data-testid=confirm-ok]');
    await page.waitForURL(/\/tasks$/);
    assert.equal(await page.textContent('[data-testid=site-notice-text] span'), 'Task is being stopped and deleted');
    assert.deepEqual(await historyIds(page), [], 'the running task left the history at once');
    assert.equal(await statusOf(base, `/api/tasks/${running}`, bearer), 404, 'GET /api/tasks/{id} is 404 at once');

    // The notice goes with the next page.
    await page.click('[data-testid=nav-new]');
    await page.waitForURL(/\/new$/);
    assert.equal(await page.locator('[data-testid=site-notice-text]').count(), 0);
  });
});
