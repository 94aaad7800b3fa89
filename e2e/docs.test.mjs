// The API reference page (/api/docs) in headless chromium with every other origin
// blocked: Redoc, served by the binary, renders the OpenAPI document, its search works
// (a worker made from a blob), and nothing breaks the page's Content-Security-Policy.
//
//   node --test --test-concurrency=1 e2e/docs.test.mjs      (or scripts/e2e)

import { test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { run, screenshotsDir, setup } from './helpers.mjs';

const LIMIT = { timeout: 60_000 };

test('the API reference renders offline, under its own policy, with every endpoint and event', LIMIT, async (t) => {
  const env = await setup(t);
  const { page, context, base } = env;
  await run(env, async () => {
    // Offline: a request to any other origin is refused, and recorded.
    const elsewhere = [];
    await context.route('**/*', (route) => {
      const url = route.request().url();
      if (new URL(url).origin === base) return route.continue();
      elsewhere.push(url);
      return route.abort('blockedbyclient');
    });
    const failed = [];
    page.on('requestfailed', (request) => failed.push(`${request.url()}: ${request.failure()?.errorText}`));
    const refused = [];
    page.on('console', (message) => {
      if (/Content Security Policy|Refused to/i.test(message.text())) refused.push(message.text());
    });
    await page.addInitScript(() => {
      window.__violations = [];
      document.addEventListener('securitypolicyviolation', (e) => {
        window.__violations.push(`${e.violatedDirective} ${e.blockedURI}`);
      });
    });

    const response = await page.goto(`${base}/api/docs`);
    assert.equal(response.status(), 200);
    const csp = response.headers()['content-security-policy'];
    assert.match(csp, /default-src 'none'/);
    assert.match(csp, /script-src 'self';/);

    // Redoc has rendered the document: its title, every operation in the menu.
    await page.waitForSelector('.api-info h1', { timeout: 20_000 });
    assert.match(await page.textContent('.api-info h1'), /Troupe API/);
    const spec = await (await fetch(`${base}/api/openapi.json`)).json();
    const summaries = Object.values(spec.paths).flatMap((item) => Object.values(item).map((op) => op.summary));
    assert.ok(summaries.length >= 19, `the document has every endpoint (${summaries.length})`);
    const menu = await page.$$eval('[role=menuitem]', (items) => items.map((item) => item.textContent));
    for (const summary of summaries) {
      assert.ok(menu.some((label) => label.includes(summary)), `"${summary}" is in the menu`);
    }

    // The page as a reader first sees it (the whole page is some 30,000 pixels tall).
    await page.screenshot({ path: path.join(screenshotsDir(), 'api-reference.png') });

    // The events endpoint shows its event schemas, one per type, each with its fields.
    await page.click(`[role=menuitem]:has-text("Follow or export a task's events")`);
    const operation = page.locator('[data-section-id="tag/events/operation/taskEvents"]');
    await operation.waitFor();
    const variants = await operation.locator('button').allTextContents();
    for (const type of ['task_created', 'agent_token', 'agent_complete', 'agent_usage', 'task_complete', 'task_cancelled']) {
      assert.ok(variants.includes(type), `the event type ${type} is a variant of the 200 (${variants.join(', ')})`);
    }
    await operation.getByRole('button', { name: 'agent_usage', exact: true }).click();
    await operation.getByText('timeToFirstToken', { exact: true }).waitFor();
    await operation.getByText('inputTokens', { exact: true }).waitFor();
    await operation.getByRole('button', { name: 'agent_usage', exact: true }).scrollIntoViewIfNeeded();
    await page.screenshot({ path: path.join(screenshotsDir(), 'api-reference-events.png') });

    // Search runs in a worker made from a blob: it finds an operation.
    await page.fill('input[placeholder="Search..."]', 'retry');
    await page.waitForSelector('[data-role="search:results"] [role=menuitem]');
    const results = await page.$$eval('[data-role="search:results"] [role=menuitem]', (items) => items.map((item) => item.textContent));
    assert.ok(results.some((r) => /Retry a failed or cancelled task/.test(r)), `search results: ${results.join(' | ')}`);
    await page.fill('input[placeholder="Search..."]', '');

    assert.deepEqual(elsewhere, [], 'the page asked no other origin for anything');
    assert.deepEqual(failed, [], 'every request of the page succeeded');
    assert.deepEqual(refused, [], 'the console reports no refused content');
    assert.deepEqual(await page.evaluate(() => window.__violations), [], 'no Content-Security-Policy violation');
  });
});
