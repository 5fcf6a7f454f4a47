import assert from 'node:assert/strict';
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { chromium, type Browser } from 'playwright-core';
import { createHerald, type Herald } from '../client.js';
import { freshDatabase, type TestDatabase } from '../../test/support/db.js';
import { SseClient } from '../../test/support/sse.js';
import { waitFor } from '../../test/support/wait.js';
import { HttpError } from './http.js';
import { HeraldServer } from './server.js';

const CHROMIUM = '/usr/bin/chromium';
const ADMIN = 'dashboard-admin-token-1234';
const ARTIFACTS = join(new URL('../..', import.meta.url).pathname, 'test-artifacts');

describe('dashboard and browser client in headless Chromium', { skip: existsSync(CHROMIUM) ? false : `${CHROMIUM} is not installed` }, () => {
  let db: TestDatabase;
  let herald: Herald;
  let server: HeraldServer;
  let base: string;
  let browser: Browser;

  before(async () => {
    mkdirSync(ARTIFACTS, { recursive: true });
    db = await freshDatabase();
    herald = createHerald({ connectionString: db.url });
    const q = herald.driver.executor;
    await q.query("CREATE TABLE demo_jobs (id int PRIMARY KEY, name text NOT NULL, state text NOT NULL DEFAULT 'available')");
    server = new HeraldServer(herald, { port: 0, token: ADMIN, channelPrefix: 'gw.' });
    // What the queue part registers: jobs by state, with admin actions (a real table here).
    server.dashboard.addPanel({
      id: 'queues',
      title: 'Jobs',
      load: async () => (await q.query('SELECT id, name, state FROM demo_jobs ORDER BY id')).rows,
      actions: {
        retry: {
          label: 'Retry',
          run: async (args) => {
            const { rowCount } = await q.query("UPDATE demo_jobs SET state = 'available' WHERE id = $1 AND state = 'failed'", [args.id]);
            if (rowCount === 0) throw new HttpError(409, 'CONFLICT', 'only failed jobs can be retried');
            return { retried: args.id };
          },
        },
      },
    });
    base = await server.start();
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
    });
  });

  after(async () => {
    await browser?.close();
    await server?.stop();
    await herald?.close();
    await db?.drop();
  });

  test('the dashboard loads, shows job transitions live, and the retry action works (admin only)', async () => {
    const page = await browser.newPage({ viewport: { width: 1280, height: 900 } });
    await page.goto(`${base}/dashboard`);
    await page.locator('#status', { hasText: 'enter an admin token' }).waitFor();
    await page.fill('#token', ADMIN);
    await page.click('#save');
    await page.locator('#notifier-status', { hasText: 'listening' }).waitFor();
    assert.equal(await page.locator('#panel-mailboxes').innerText().then((t) => t.includes('not installed')), true);

    const q = herald.driver.executor;
    await q.query("INSERT INTO demo_jobs (id, name) VALUES (1, 'send-email'), (2, 'resize-image')");
    const row1 = page.locator('#panel-queues tr', { hasText: 'send-email' });
    await row1.locator('td', { hasText: /^available$/ }).waitFor();
    for (const state of ['running', 'failed']) {
      await q.query('UPDATE demo_jobs SET state = $1 WHERE id = 1', [state]);
      await row1.locator('td', { hasText: new RegExp(`^${state}$`) }).waitFor();
    }
    await page.screenshot({ path: join(ARTIFACTS, 'dashboard-failed-job.png'), fullPage: true });
    await row1.locator('button[data-action="retry"]').click();
    await waitFor(async () => (await q.query<{ state: string }>('SELECT state FROM demo_jobs WHERE id = 1')).rows[0].state === 'available', { what: 'job retried' });
    await row1.locator('td', { hasText: /^available$/ }).waitFor();
    await page.screenshot({ path: join(ARTIFACTS, 'dashboard-retried.png'), fullPage: true });

    // The actions API is for admin tokens only.
    const res = await fetch(`${base}/api/dashboard/panels/queues/actions/retry`, { method: 'POST', body: '{"args":{"id":1}}' });
    assert.equal(res.status, 401);
    await page.close();
  });

  test('the browser client subscribes, reconnects after a cut, and resumes without a gap', async () => {
    // Another subscriber keeps the topic's history alive while the browser is away.
    const holder = await SseClient.open(`${base}/channels/live/events?access_token=${ADMIN}`);
    await holder.until(() => holder.named('ready').length === 1);
    const page = await browser.newPage();
    await page.goto(`${base}/dashboard?access_token=${ADMIN}`);
    await page.fill('#watch-topic', 'live');
    await page.click('#watch-go');
    await page.locator('#watch-state', { hasText: 'open' }).waitFor();
    await waitFor(() => server.gateway.topics().find((t) => t.topic === 'live')?.clients === 2, { what: 'browser subscribed' });
    await herald.notify('gw.live', 'hello-1');
    await page.locator('#events .event', { hasText: 'hello-1' }).waitFor();

    // Cut the browser's WebSocket; publish while it is away; it must come back and catch up.
    const ws = server.connections().filter((c) => c.transport === 'ws');
    assert.equal(ws.length, 1);
    ws[0].close('shutdown', 'test cut');
    await herald.notify('gw.live', 'hello-2');
    await page.locator('#events .event', { hasText: 'hello-2' }).waitFor();
    await herald.notify('gw.live', 'hello-3');
    await page.locator('#events .event', { hasText: 'hello-3' }).waitFor();
    const texts = await page.locator('#events .event').allInnerTexts();
    assert.deepEqual(texts.map((t) => t.split(/\s+/)[1]).reverse(), ['hello-1', 'hello-2', 'hello-3'], 'each once, in order');
    assert.equal(await page.locator('#events .bad').count(), 0, 'no gap');
    assert.ok((await page.evaluate(() => (window as any).heraldDashboard.client.reconnects)) >= 1);
    await page.screenshot({ path: join(ARTIFACTS, 'dashboard-live-topic.png'), fullPage: true });
    holder.close();
    await page.close();
  });
});
