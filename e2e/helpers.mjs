// Helpers of the browser end-to-end suite: a real `troupe` process per test, a
// headless Debian chromium driven by playwright-core, and the UI steps the tests share.
//
// Environment:
//   TROUPE_BIN       the troupe binary (default: target/debug/troupe, relative to the repo)
//   CHROMIUM_BIN     the browser (default: /usr/bin/chromium)
//   E2E_SCREENSHOTS  where screenshots go (default: a new directory under the OS temp dir)

import { spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import assert from 'node:assert/strict';
import { chromium } from 'playwright-core';

const REPO = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '..');

export const TROUPE_BIN = process.env.TROUPE_BIN
  ? path.resolve(process.env.TROUPE_BIN)
  : path.join(REPO, 'target/debug/troupe');
export const CHROMIUM_BIN = process.env.CHROMIUM_BIN || '/usr/bin/chromium';
let screenshotDir = process.env.E2E_SCREENSHOTS || null;
/** Where this run's screenshots go: E2E_SCREENSHOTS, else a fresh directory under the OS temp dir. */
export function screenshotsDir() {
  if (!screenshotDir) screenshotDir = fs.mkdtempSync(path.join(os.tmpdir(), 'troupe-e2e-screenshots-'));
  fs.mkdirSync(screenshotDir, { recursive: true });
  return screenshotDir;
}

const CHROMIUM_ARGS = [
  '--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-quic',
  '--no-first-run', '--disable-component-update', '--disable-sync',
];

export const PASSWORD = 'correct horse battery';

// ---- the troupe process ------------------------------------------------------------

/** Every troupe child still alive: killed if this test process exits anyway. */
const live = new Set();
process.on('exit', () => {
  for (const child of live) {
    try { child.kill('SIGKILL'); } catch { /* already gone */ }
  }
});

export async function freePort() {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.unref();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address();
      server.close(() => resolve(port));
    });
  });
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

/** One embedded troupe server on a fixed port and data dir; can be stopped and started again. */
export class Troupe {
  /** `env` and `args` are added to the process's environment and flags. */
  constructor({ port, dataDir, logFile, env = {}, args = [] }) {
    this.port = port;
    this.dataDir = dataDir;
    this.logFile = logFile;
    this.extraEnv = env;
    this.extraArgs = args;
    this.url = `http://127.0.0.1:${port}`;
    this.child = null;
    this.exited = null;
    this.starts = 0;
  }

  async start() {
    assert.equal(this.child, null, 'troupe is already running');
    if (!fs.existsSync(TROUPE_BIN)) {
      throw new Error(`no troupe binary at ${TROUPE_BIN}: run \`cargo build --bin troupe\` or set TROUPE_BIN`);
    }
    this.starts += 1;
    const env = { ...process.env, RUST_LOG: process.env.RUST_LOG || 'info', NO_COLOR: '1', ...this.extraEnv };
    // Embedded mode: no PostgreSQL/NATS from the environment, our own data dir and bind.
    for (const key of ['DATABASE_URL', 'NATS_URL', 'TROUPE_EPHEMERAL', 'TROUPE_DATA_DIR', 'TROUPE_BIND']) delete env[key];
    const log = fs.openSync(this.logFile, 'a');
    fs.writeSync(log, `\n---- start #${this.starts} at ${new Date().toISOString()} ----\n`);
    const child = spawn(TROUPE_BIN, ['--bind', `127.0.0.1:${this.port}`, '--data-dir', this.dataDir, ...this.extraArgs],
      { env, stdio: ['ignore', log, log] });
    fs.closeSync(log);
    this.child = child;
    live.add(child);
    this.exited = new Promise((resolve) => {
      child.once('exit', (code, signal) => { live.delete(child); resolve({ code, signal }); });
      child.once('error', (err) => { live.delete(child); resolve({ code: null, signal: null, error: err }); });
    });
    let status = 'none';
    const deadline = Date.now() + 30_000;
    while (Date.now() < deadline) {
      const gone = await Promise.race([this.exited, sleep(100).then(() => null)]);
      if (gone) {
        this.child = null;
        throw new Error(`troupe exited while starting (${JSON.stringify(gone)}):\n${this.logTail()}`);
      }
      try {
        const res = await fetch(`${this.url}/readyz`, { signal: AbortSignal.timeout(2000) });
        status = res.status;
        if (res.ok) return;
      } catch (err) { status = err.message; }
    }
    await this.stop();
    throw new Error(`troupe not ready at ${this.url}/readyz after 30 s (last: ${status}):\n${this.logTail()}`);
  }

  /** SIGTERM, then SIGKILL after 10 s. Resolves when the process is gone. */
  async stop() {
    const child = this.child;
    if (!child) return null;
    const t0 = Date.now();
    child.kill('SIGTERM');
    let result = await Promise.race([this.exited, sleep(10_000).then(() => null)]);
    if (!result) {
      child.kill('SIGKILL');
      result = { ...(await this.exited), killed: true };
    }
    this.child = null;
    return { ...result, ms: Date.now() - t0 };
  }

  logTail(lines = 40) {
    try {
      return fs.readFileSync(this.logFile, 'utf8').split('\n').slice(-lines).join('\n');
    } catch { return '(no log)'; }
  }
}

// ---- one test's environment --------------------------------------------------------

/**
 * Starts a fresh troupe (own port and data dir; `env` and `args` added to its own) and a
 * fresh browser for one test; everything is stopped and removed after the test, failed
 * or not.
 */
export async function setup(t, { viewport = { width: 1440, height: 1000 }, env = {}, args = [] } = {}) {
  const root = fs.mkdtempSync(path.join(os.tmpdir(), 'troupe-e2e-'));
  const dataDir = path.join(root, 'data');
  fs.mkdirSync(dataDir);
  const server = new Troupe({ port: await freePort(), dataDir, logFile: path.join(root, 'troupe.log'), env, args });
  let context = null;
  let cleaned = false;
  const cleanup = async () => {
    if (cleaned) return;
    cleaned = true;
    if (context) await Promise.race([context.close().catch(() => {}), sleep(10_000)]);
    await server.stop();
    fs.rmSync(root, { recursive: true, force: true });
  };
  t.after(cleanup);

  await server.start();
  context = await chromium.launchPersistentContext(path.join(root, 'chromium'), {
    executablePath: CHROMIUM_BIN,
    headless: true,
    args: CHROMIUM_ARGS,
    viewport,
  });
  context.setDefaultTimeout(20_000);
  const page = context.pages()[0] || await context.newPage();
  const pageErrors = [];
  page.on('pageerror', (err) => pageErrors.push(err.message));
  // Leaving a running task asks for confirmation (beforeunload): a reload in a test means it.
  page.on('dialog', (dialog) => dialog.accept().catch(() => {}));
  return {
    server, page, context, pageErrors,
    get base() { return server.url; },
    /** Test-side diagnostics when an assertion fails. */
    async explain(err) {
      const shot = await screenshot(page, `FAILED-${t.name}`).catch(() => null);
      t.diagnostic(`troupe log (tail):\n${server.logTail()}`);
      if (shot) t.diagnostic(`screenshot: ${shot}`);
      if (pageErrors.length) t.diagnostic(`page errors: ${pageErrors.join(' | ')}`);
      return err;
    },
  };
}

/** Runs the body; on failure adds the server log and a screenshot to the report. */
export async function run(env, body) {
  try {
    await body();
    assert.deepEqual(env.pageErrors, [], 'uncaught errors in the page');
  } catch (err) {
    throw await env.explain(err);
  }
}

export async function screenshot(page, name) {
  const file = path.join(screenshotsDir(), `${name.replace(/[^a-z0-9-]+/gi, '-')}.png`);
  await page.screenshot({ path: file, fullPage: true });
  return file;
}

// ---- UI steps ------------------------------------------------------------------------

/** Signs in on the login page and waits for the builder. */
export async function signIn(page, base, email, password = PASSWORD) {
  await page.goto(`${base}/login`);
  await page.fill('[data-testid=login-email]', email);
  await page.fill('[data-testid=login-password]', password);
  await page.click('[data-testid=login-submit]');
  await page.waitForURL(/\/new$/);
  await page.waitForSelector('[data-testid=execute-button]');
}

export async function register(page, base) {
  const email = `e2e-${Date.now()}-${Math.random().toString(36).slice(2, 8)}@example.com`;
  await page.goto(`${base}/login?mode=register`);
  await page.fill('[data-testid=login-email]', email);
  await page.fill('[data-testid=login-password]', PASSWORD);
  await page.click('[data-testid=login-submit]');
  await page.waitForURL(/\/new$/);
  await page.waitForSelector('[data-testid=execute-button]');
  return email;
}

/**
 * Fills the team builder: agents (in team order), title, description, mode, the
 * simulated provider and its options. Does not press Execute.
 */
export async function fillBuilder(page, base, { agents, title = '', description = 'Build a todo app', mode = 'sequential', options }) {
  if (!new URL(page.url()).pathname.endsWith('/new')) {
    await page.goto(`${base}/new`);
  }
  await page.waitForSelector('[data-testid=execute-button]:not([disabled])');
  for (const role of agents) await page.check(`[data-testid=agent-select-${role}]`);
  if (title) await page.fill('[data-testid=task-title]', title);
  await page.fill('[data-testid=task-description]', description);
  await page.check(`[data-testid=mode-${mode}]`);
  await page.selectOption('[data-testid=provider-select]', 'simulated');
  if (options) {
    const box = page.locator('[data-testid=provider-options]');
    if (!(await box.isVisible())) await page.click('summary:has-text("Provider options")');
    await box.fill(JSON.stringify(options));
  }
}

/** Presses Execute and returns the new task's id once the viewer is open. */
export async function execute(page) {
  await page.click('[data-testid=execute-button]');
  return waitForViewer(page);
}

export async function waitForViewer(page) {
  await page.waitForURL(/\/tasks\/[^/]+$/);
  await page.waitForSelector('[data-testid=task-status][data-status]');
  return new URL(page.url()).pathname.split('/').pop();
}

/**
 * Waits until the viewer shows a finished task: the overall status is terminal
 * (completed, failed or cancelled), the stream is closed (or the task was opened
 * finished) and the summary is shown.
 */
export async function waitFinished(page, { timeout = 45_000 } = {}) {
  await page.waitForFunction(() => {
    const status = document.querySelector('[data-testid=task-status]')?.dataset.status;
    const conn = document.querySelector('[data-testid=connection-status]')?.dataset.state;
    const summary = document.querySelector('[data-testid=task-summary]');
    return ['completed', 'failed', 'cancelled'].includes(status)
      && (conn === 'closed' || conn === 'replay')
      && summary && !summary.hidden;
  }, null, { timeout });
  return page.getAttribute('[data-testid=task-status]', 'data-status');
}

/** Waits until the viewer's overall status (data-status) is `status`. */
export async function waitTaskStatus(page, status, { timeout = 30_000 } = {}) {
  await page.waitForSelector(`[data-testid=task-status][data-status=${status}]`, { timeout });
}

/** Which of the given testids are shown (present and not hidden), as { testid: bool }. */
export async function shown(page, testids) {
  return page.evaluate((ids) => Object.fromEntries(ids.map((id) => {
    const el = document.querySelector(`[data-testid=${id}]`);
    return [id, Boolean(el && !el.hidden && el.offsetParent !== null)];
  })), testids);
}

/** Waits until the card of `role` has the status (and optionally some output). */
export async function waitCard(page, role, status, { withOutput = false, timeout = 30_000 } = {}) {
  await page.waitForFunction(([r, s, o]) => {
    const card = document.querySelector(`[data-testid=agent-card-${r}]`);
    const out = document.querySelector(`[data-testid=agent-output-${r}]`);
    return card?.dataset.status === s && (!o || (out && !out.hidden && out.textContent.trim().length > 0));
  }, [role, status, withOutput], { timeout });
}

/** What the viewer shows: the header and every card, in page order. */
export async function snapshot(page) {
  return page.evaluate(() => {
    const q = (sel) => document.querySelector(sel);
    const cards = [...document.querySelectorAll('[data-testid^=agent-card-]')].map((card) => {
      const role = card.dataset.testid.slice('agent-card-'.length);
      const part = (name) => q(`[data-testid=${name}-${role}]`);
      return {
        role,
        status: card.dataset.status,
        statusLabel: part('agent-status').textContent,
        time: part('agent-time').textContent,
        timeMs: part('agent-time').dataset.ms ?? null,
        outputHidden: part('agent-output').hidden,
        outputText: part('agent-output').textContent,
        outputHtml: part('agent-output').innerHTML,
        error: part('agent-error').hidden ? null : part('agent-error').textContent,
        attempt: part('agent-attempt')?.textContent ?? '',
        usage: part('agent-usage')?.textContent ?? '',
      };
    });
    return {
      status: q('[data-testid=task-status]')?.dataset.status,
      statusText: q('[data-testid=task-status]')?.textContent,
      elapsed: q('[data-testid=task-elapsed]')?.textContent,
      elapsedMs: q('[data-testid=task-elapsed]')?.dataset.ms ?? null,
      progress: q('[data-testid=task-progress]')?.textContent,
      usage: q('[data-testid=task-usage]')?.textContent,
      summary: q('[data-testid=summary-text]')?.textContent ?? null,
      cards,
    };
  });
}

/**
 * The browser's session cookie (troupe_session), as the browser holds it: HttpOnly, so
 * only the test can read it, not the page. Null when there is none.
 */
export async function sessionCookie(page) {
  const cookies = await page.context().cookies();
  return cookies.find((c) => c.name === 'troupe_session' && c.value) || null;
}

/** The session token, for the tests' own API calls (Authorization: Bearer): the session cookie's value. */
export async function sessionToken(page) {
  const cookie = await sessionCookie(page);
  assert.ok(cookie, 'the browser holds the session cookie (troupe_session)');
  return cookie.value;
}

export async function apiGet(page, base, pathAndQuery) {
  const token = await sessionToken(page);
  const res = await fetch(`${base}${pathAndQuery}`, { headers: { Authorization: `Bearer ${token}` } });
  assert.equal(res.status, 200, `GET ${pathAndQuery} answered ${res.status}`);
  return res.json();
}

/**
 * Checks the viewer's final cards against GET /api/tasks/{id}: same agents in the
 * same order, same statuses, execution times, errors, and output rendered from
 * exactly the API's output (nothing doubled, nothing missing).
 */
export async function assertMatchesApi(page, base, taskId) {
  const view = await apiGet(page, base, `/api/tasks/${taskId}`);
  const shown = await snapshot(page);
  const expected = await page.evaluate(async (agents) => {
    const { renderMarkdown } = await import('/ui/js/markdown.js');
    const { formatDuration } = await import('/ui/js/format.js');
    // Serialized by the DOM, as the card's innerHTML is (e.g. &quot; in text becomes ").
    const serialize = (html) => { const tpl = document.createElement('template'); tpl.innerHTML = html; return tpl.innerHTML; };
    return agents.map((a) => ({
      html: serialize(renderMarkdown(a.output || '', { headingOffset: 2 })),
      time: a.executionTime == null ? '' : formatDuration(a.executionTime),
    }));
  }, view.agents);
  assert.equal(shown.status, view.status, 'overall status as the API says');
  assert.deepEqual(shown.cards.map((c) => c.role), view.agents.map((a) => a.role), 'one card per agent, in team order');
  view.agents.forEach((a, i) => {
    const card = shown.cards[i];
    assert.equal(card.status, a.status, `${a.role}: status`);
    assert.equal(card.timeMs, a.executionTime == null ? null : String(a.executionTime), `${a.role}: execution time (data-ms)`);
    assert.equal(card.time, expected[i].time, `${a.role}: execution time text`);
    assert.equal(card.outputHtml, expected[i].html, `${a.role}: output is exactly the API's output`);
    assert.equal(card.outputHidden, !a.output, `${a.role}: output shown iff there is some`);
    assert.equal(card.error, a.error || null, `${a.role}: error message`);
    assert.equal(card.attempt, a.attempt > 1 ? `Attempt ${a.attempt}` : '', `${a.role}: attempt shown when > 1`);
    if (a.output) {
      const banners = card.outputText.split('Simulated output (no LLM was called).').length - 1;
      assert.equal(banners, 1, `${a.role}: the simulated answer appears once, not doubled`);
    }
  });
  if (view.totalExecutionTime != null) {
    assertTotalMs(shown.elapsedMs, view.totalExecutionTime, view.status, 'total time as the API says');
  }
  return { view, shown };
}

export function assertTotalMs(actual, expected, _status, message) {
  assert.equal(String(actual), String(expected), message);
}

/** Two viewer snapshots of the same finished task are the same (see assertTotalMs). */
export function assertSameViewer(actual, expected, message) {
  const strip = (s) => ({ ...s, elapsed: undefined, elapsedMs: undefined, summary: s.summary?.replace(/^(Stopped after|All done in) [^:]+:/, '$1 …:') });
  assert.deepEqual(strip(actual), strip(expected), message);
  assertTotalMs(actual.elapsedMs, expected.elapsedMs, expected.status, `${message}: total time`);
  if (expected.status !== 'failed') {
    assert.equal(actual.elapsed, expected.elapsed, `${message}: total time text`);
    assert.equal(actual.summary, expected.summary, `${message}: summary`);
  }
}

/** Records every change of an agent card's data-status (and of the task's, as role '@task'), from page load on. */
export async function recordCardStatuses(page) {
  await page.addInitScript(() => {
    window.__cardLog = [];
    const observer = new MutationObserver((records) => {
      for (const r of records) {
        const el = r.target;
        const id = el.dataset && el.dataset.testid;
        if (id && id.startsWith('agent-card-')) {
          window.__cardLog.push({ role: id.slice('agent-card-'.length), status: el.dataset.status, t: performance.now() });
        } else if (id === 'task-status') {
          window.__cardLog.push({ role: '@task', status: el.dataset.status, t: performance.now() });
        }
      }
    });
    const watch = () => observer.observe(document.documentElement, { subtree: true, attributes: true, attributeFilter: ['data-status'], childList: false });
    if (document.documentElement) watch(); else document.addEventListener('DOMContentLoaded', watch);
  });
}

/** Statuses each card went through (consecutive duplicates removed), and when each began. */
export async function cardHistory(page) {
  const log = await page.evaluate(() => window.__cardLog || []);
  const byRole = {};
  for (const { role, status, t } of log) {
    const list = (byRole[role] ||= []);
    if (!list.length || list[list.length - 1].status !== status) list.push({ status, t });
  }
  return byRole;
}
