/**
 * The dashboard's charts, views and controls in headless Chromium against the real
 * parts: every view renders with data, charts update after new work, each control
 * changes the database, a non-admin token sees no control, the token states are
 * distinct; screenshots at 360 and 1440 px wide go to test/.artifacts/.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { gzipSync } from 'node:zlib';
import { after, before, describe, test } from 'node:test';
import { chromium, type Browser, type Page } from 'playwright-core';
import type { Herald } from '../client.js';
import { useServer } from '../../test/support/server.js';
import { waitFor } from '../../test/support/wait.js';
import type { HeraldServer } from './server.js';

const CHROMIUM = '/usr/bin/chromium';
const ADMIN = 'dashboard-views-admin-0001';
const VIEWER = 'dashboard-views-viewer-0002';
const ARTIFACTS = join(new URL('../..', import.meta.url).pathname, 'test', '.artifacts');
const WIDTHS = [360, 1440] as const;

let herald: Herald;
let server: HeraldServer;
let base: string;
useServer(
  {
    herald: { queue: { pollIntervalMs: 50, retryBaseDelayMs: 10, retryMaxDelayMs: 50 } },
    server: {
      token: ADMIN,
      apiKeys: [{ name: 'viewer', key: VIEWER, grants: { subscribe: ['*'], publish: ['*'] } }],
      dashboardRefreshMs: 0,
      dashboardSampleIntervalMs: 250,
      dashboardSampleLagMs: 1000,
    },
  },
  (f) => ({ herald, server, base } = f),
);

/** Opens the page as admin at `width`, on `hash`; every confirm() is accepted. */
async function open(browser: Browser, width: number, hash = '#/', token: string | null = ADMIN): Promise<Page> {
  const page = await browser.newPage({ viewport: { width, height: 900 } });
  page.on('dialog', (d) => void d.accept());
  const errors: string[] = [];
  page.on('pageerror', (e) => errors.push(e.message));
  page.on('console', (m) => {
    if (/Content Security Policy|Refused to/i.test(m.text())) errors.push(m.text());
  });
  (page as Page & { errors: string[] }).errors = errors;
  await page.goto(`${base}/dashboard${token ? `?access_token=${token}` : ''}${hash}`);
  return page;
}

/** No horizontal scrolling of the page itself (tables scroll inside their section). */
async function fitsWidth(page: Page): Promise<boolean> {
  return page.evaluate(() => document.documentElement.scrollWidth <= window.innerWidth + 1);
}

async function shoot(page: Page, name: string): Promise<void> {
  await page.screenshot({ path: join(ARTIFACTS, `${name}.png`), fullPage: true });
}

describe('dashboard views in headless Chromium', { skip: existsSync(CHROMIUM) ? false : `${CHROMIUM} is not installed` }, () => {
  let browser: Browser;

  before(async () => {
    mkdirSync(ARTIFACTS, { recursive: true });
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      args: ['--headless', '--no-sandbox', '--disable-gpu', '--disable-background-networking', '--disable-component-update', '--disable-sync', '--no-first-run'],
    });
  });

  after(async () => {
    await browser?.close();
  });

  test('one light bundle (uPlot + page) under 150 KB gzipped, a favicon, no inline script', async () => {
    const js = await fetch(`${base}/dashboard.js`);
    assert.equal(js.status, 200);
    const text = await js.text();
    assert.match(text, /uPlot/);
    assert.match(text, /Permission is hereby granted/, 'uPlot’s MIT notice ships with it');
    const gz = gzipSync(text).length;
    console.log(`# /dashboard.js: ${(text.length / 1024).toFixed(1)} KB, ${(gz / 1024).toFixed(1)} KB gzipped`);
    assert.ok(gz < 150 * 1024, `${gz} bytes gzipped`);
    const html = await (await fetch(`${base}/dashboard`)).text();
    assert.doesNotMatch(html, /<script>|<script type="module">/, 'no inline script');
    const icon = await fetch(`${base}/favicon.svg`);
    assert.equal(icon.status, 200);
    assert.equal(icon.headers.get('content-type'), 'image/svg+xml');
  });

  test('charts draw the sampled series and update after new work', async () => {
    const page = await open(browser, 1440);
    try {
      await page.locator('#status', { hasText: 'live' }).waitFor();
      await page.waitForFunction(() => (window as any).heraldDashboard.charts.throughput !== undefined);
      for (const id of ['throughput', 'depth', 'latency', 'mailbox', 'outbox', 'lag']) await page.locator(`#chart-${id} canvas`).first().waitFor();

      await herald.topics.create('chart-topic');
      await herald.topics.createGroup('chart-topic', 'chart-group');
      await herald.topics.publish('chart-topic', 1);
      await herald.mailbox.send({ to: 'chart-box', payload: 'x' });
      await herald.queue.enqueueMany(Array.from({ length: 4 }, () => ({ kind: 'chart-work', queue: 'chart-q' })));
      // The depth chart gets the queue's series, with the backlog.
      await page.waitForFunction(() => {
        const c = (window as any).heraldDashboard.charts.depth;
        const i = c.series.findIndex((s: { label: string }) => s.label === 'chart-q');
        return i > 0 && c.data[i].some((v: number | null) => v === 4);
      });
      let done = 0;
      const worker = herald.queue.work('chart-work', () => void done++, { queue: 'chart-q' });
      try {
        await waitFor(() => done === 4, { what: 'the chart jobs done', progress: () => done });
        // Each sample counts the completions of a window that ends dashboardSampleLagMs
        // before it (so a completion committed after a read is counted by a later one):
        // first the server's sampler passes the last finish time (each sample moves it on),
        // then the page shows it at its next read of the series.
        const { rows } = await herald.driver.executor.query<{ ms: number }>(
          `SELECT date_part('epoch', max(finished_at)) * 1000 AS ms FROM herald.jobs WHERE queue = 'chart-q'`,
        );
        const finishedMs = Number(rows[0].ms);
        const sampledAt = () => server.series.samples().at(-1)?.t ?? 0;
        await waitFor(() => sampledAt() - server.series.lagMs > finishedMs, { what: 'a sample whose window passed the completions', progress: sampledAt });
        await waitFor(
          () =>
            page.evaluate(() => {
              const c = (window as any).heraldDashboard.charts.throughput;
              const i = c.series.findIndex((s: { label: string }) => s.label === 'chart-q completed');
              return i > 0 && c.data[i].some((v: number | null) => (v ?? 0) > 0);
            }),
          { what: 'a completion on the throughput chart', intervalMs: 250 },
        );
        await page.waitForFunction(() => {
          const d = (window as any).heraldDashboard.charts;
          const lag = d.lag.series.findIndex((s: { label: string }) => s.label === 'chart-topic/chart-group');
          const box = d.mailbox.series.findIndex((s: { label: string }) => s.label === 'chart-box ready');
          return lag > 0 && d.lag.data[lag].at(-1) === 1 && box > 0 && d.mailbox.data[box].at(-1) === 1;
        });
      } finally {
        await worker.stop();
      }
      await shoot(page, 'overview-1440');
      assert.deepEqual((page as Page & { errors: string[] }).errors, []);
    } finally {
      await page.close();
    }
  });

  test('job list (filter, search, paging, bulk retry) and job detail (payload, attempts, history, retry) change the database', async () => {
    const [failing] = await herald.queue.enqueueMany([{ kind: 'view-fail', queue: 'view-q', payload: { order: 42 }, maxAttempts: 2, stages: ['charge'], announce: true }]);
    let runs = 0;
    const worker = herald.queue.work('view-fail', () => {
      runs++;
      throw new Error(`card declined ${runs}`);
    }, { queue: 'view-q', stage: 'charge' });
    try {
      await waitFor(async () => (await herald.queue.get(failing.id))?.state === 'dead', { what: 'the job dead', progress: () => runs });
    } finally {
      await worker.stop();
    }
    const many: string[] = [];
    for (let i = 0; i < 55; i++) many.push((await herald.queue.enqueue('view-many', { i }, { queue: 'view-q', delayMs: 3_600_000, uniqueKey: `view-many-${i}` })).id);

    for (const width of WIDTHS) {
      const page = await open(browser, width, `#/jobs/${failing.id}`);
      try {
        await page.locator('#job-detail td[data-col="state"]', { hasText: 'dead' }).waitFor();
        await page.locator('#job-payload pre', { hasText: '"order": 42' }).waitFor();
        assert.equal(await page.locator('#job-attempts tr[data-attempt]').count(), 2);
        await page.locator('#job-attempts', { hasText: 'card declined 2' }).waitFor();
        await page.locator('#job-history td', { hasText: 'dead' }).first().waitFor();
        assert.ok(await fitsWidth(page), `job detail fits ${width} px`);
        await shoot(page, `job-detail-${width}`);
        if (width === 1440) {
          await page.click('#job-detail button[data-control="retry"]');
          await waitFor(async () => (await herald.queue.get(failing.id))?.state !== 'dead', { what: 'the job retried' });
          await herald.queue.cancel(failing.id);
        }
      } finally {
        await page.close();
      }
    }

    const page = await open(browser, 1440, '#/jobs?queue=view-q&kind=view-many');
    try {
      await page.locator(`#jobs-list tr[data-row-id="${many[54]}"]`).waitFor();
      assert.equal(await page.locator('#jobs-list tbody tr').count(), 50);
      await page.click('#older');
      await page.locator(`#jobs-list tr[data-row-id="${many[0]}"]`).waitFor();
      assert.equal(await page.locator('#jobs-list tbody tr').count(), 5);
      // Search by unique key, through the filter form.
      await page.goto(`${base}/dashboard?access_token=${ADMIN}#/jobs`);
      await page.locator(`#jobs-list tr[data-row-id="${many[8]}"]`).waitFor(); // the unfiltered list is in
      await page.fill('#job-filters input[name="q"]', 'view-many-7');
      await page.click('#job-filters button[type="submit"]');
      // The unfiltered list shows many[7] too: wait for the search's answer, in which
      // many[8] (listed before it) is gone.
      await page.locator(`#jobs-list tr[data-row-id="${many[8]}"]`).waitFor({ state: 'detached' });
      await page.locator(`#jobs-list tr[data-row-id="${many[7]}"]`).waitFor();
      assert.equal(await page.locator('#jobs-list tbody tr').count(), 1);
      // Bulk: cancel three, then retry them, from the state filter.
      await page.goto(`${base}/dashboard?access_token=${ADMIN}#/jobs?queue=view-q&kind=view-many&state=available`);
      await page.locator(`#jobs-list tr[data-row-id="${many[54]}"]`).waitFor();
      await page.click('#older');
      for (const id of many.slice(0, 3)) await page.check(`input[data-select="${id}"]`);
      await page.click('button[data-control="cancel-selected"]');
      await waitFor(async () => (await Promise.all(many.slice(0, 3).map((id) => herald.queue.get(id)))).every((j) => j?.state === 'cancelled'), { what: 'three cancelled' });
      await page.goto(`${base}/dashboard?access_token=${ADMIN}#/jobs?queue=view-q&state=cancelled`);
      await page.locator(`#jobs-list tr[data-row-id="${many[0]}"]`).waitFor();
      await page.check('#jobs-list th input[type="checkbox"]');
      await page.click('button[data-control="retry-selected"]');
      await waitFor(async () => (await Promise.all(many.slice(0, 3).map((id) => herald.queue.get(id)))).every((j) => j?.state === 'available'), { what: 'three retried' });
      await shoot(page, 'jobs-1440');
      assert.deepEqual((page as Page & { errors: string[] }).errors, []);
    } finally {
      await page.close();
    }
    const narrow = await open(browser, 360, '#/jobs?queue=view-q');
    try {
      await narrow.locator('#jobs-list tbody tr').first().waitFor();
      assert.ok(await fitsWidth(narrow), 'the job list fits 360 px');
      await shoot(narrow, 'jobs-360');
    } finally {
      await narrow.close();
    }
    await herald.queue.cancel(many);
  });

  test('dead letters, message and event details, topic group reset and the audit log: each control changes the database', async () => {
    const consumer = herald.mailbox.consume('view-box', () => {
      throw new Error('ledger locked');
    }, { maxAttempts: 1 });
    const sent = await Promise.all([1, 2].map((n) => herald.mailbox.send({ to: 'view-box', payload: { n } })));
    try {
      await waitFor(async () => (await herald.mailbox.stats('view-box'))[0]?.dead === 2, { what: 'two dead messages' });
    } finally {
      await consumer.stop();
    }
    const eventId = await herald.outbox.add({ type: 'view.event', key: 'k', payload: { e: 1 } });
    const relay = herald.outbox.relay({ sink: () => Promise.reject(new Error('broker away')), maxAttempts: 1, pollIntervalMs: 50 });
    try {
      await waitFor(async () => (await herald.outbox.get(eventId))?.state === 'dead', { what: 'a dead event' });
    } finally {
      await relay.stop();
    }
    await herald.topics.create('view-topic', { partitions: 2 });
    await herald.topics.createGroup('view-topic', 'view-group');
    for (let i = 0; i < 4; i++) await herald.topics.publish('view-topic', i, { key: `k${i}` });

    for (const width of WIDTHS) {
      const page = await open(browser, width, '#/dead');
      try {
        await page.locator(`[data-destination="view-box"] tr[data-row-id="${sent[0].id}"]`).waitFor();
        await page.locator(`#outbox-dead-list tr[data-row-id="${eventId}"]`).waitFor();
        assert.ok(await fitsWidth(page), `dead letters fit ${width} px`);
        await shoot(page, `dead-${width}`);
        await page.click(`#view a[href="#/mailbox/${encodeURIComponent(sent[0].id)}"]`);
        await page.locator('#message-detail td[data-col="lastError"]', { hasText: 'ledger locked' }).waitFor();
        await page.locator('#message-detail td[data-col="state"]', { hasText: 'dead' }).waitFor();
        await shoot(page, `message-${width}`);
      } finally {
        await page.close();
      }
    }

    const page = await open(browser, 1440, `#/mailbox/${encodeURIComponent(sent[0].id)}`);
    try {
      await page.click('#message-detail button[data-control="redrive"]');
      await page.locator('#message-detail td[data-col="state"]', { hasText: 'ready' }).waitFor();
      assert.equal((await herald.mailbox.get(sent[0].id))?.state, 'ready');
      // Bulk redrive of the other from the dead-letter list.
      await page.goto(`${base}/dashboard?access_token=${ADMIN}#/dead?to=view-box`);
      await page.check(`input[data-select="${sent[1].id}"]`);
      await page.click('[data-destination="view-box"] button[data-control="redrive-selected"]');
      await waitFor(async () => (await herald.mailbox.get(sent[1].id))?.state === 'ready', { what: 'the second message redriven' });

      await page.goto(`${base}/dashboard?access_token=${ADMIN}#/outbox/${eventId}`);
      await page.locator('#event-detail td[data-col="lastError"]', { hasText: 'broker away' }).waitFor();
      await shoot(page, 'event-1440');
      await page.click('#event-detail button[data-control="redrive"]');
      await page.locator('#event-detail td[data-col="state"]', { hasText: 'pending' }).waitFor();
      assert.equal((await herald.outbox.get(eventId))?.state, 'pending');

      await page.goto(`${base}/dashboard?access_token=${ADMIN}#/topics`);
      await page.locator('tr[data-topic="view-topic"]', { hasText: 'lag 4' }).waitFor();
      await page.click('a[href="#/topics/view-topic/groups/view-group"]');
      await page.locator('#group-lag', { hasText: '4' }).waitFor();
      assert.ok((await page.locator('#group-detail tr[data-partition]').count()) >= 1);
      await shoot(page, 'group-1440');
      await page.click('button[data-control="reset-to-latest"]');
      await page.locator('#group-lag', { hasText: /^0$/ }).waitFor();
      assert.equal((await herald.topics.stats('view-topic')).groups[0].lag, 0);

      await page.goto(`${base}/dashboard?access_token=${ADMIN}#/audit`);
      for (const a of ['mailbox.redrive', 'outbox.redrive', 'group.reset']) await page.locator('#audit-list td[data-col="action"]', { hasText: a }).first().waitFor();
      await shoot(page, 'audit-1440');
      assert.deepEqual((page as Page & { errors: string[] }).errors, []);
    } finally {
      await page.close();
    }
  });

  test('no token, a refused token and a non-admin token: distinct states, no control on the page, 403 from the API', async () => {
    const none = await open(browser, 360, '#/', null);
    try {
      await none.locator('#status', { hasText: 'enter an admin token' }).waitFor();
      await none.locator('#refused-title', { hasText: 'No token' }).waitFor();
      await shoot(none, 'no-token-360');
    } finally {
      await none.close();
    }
    for (const [token, code] of [['not-a-real-token-000', '401'], [VIEWER, '403']] as const) {
      const page = await open(browser, 1440, '#/jobs', token);
      try {
        await page.locator('#status', { hasText: 'token refused' }).waitFor();
        await page.locator('#refused-text', { hasText: `(${code})` }).waitFor();
        assert.equal(await page.locator('main button:visible, main input[type="checkbox"]:visible').count(), 0, 'no control shown');
        assert.equal(await page.locator('#panels section').count(), 0, 'no panel shown');
        if (token === VIEWER) await shoot(page, 'token-refused-1440');
        const status = await page.evaluate(async (t) => (await fetch('/api/jobs/actions/cancel', { method: 'POST', headers: { 'content-type': 'application/json', authorization: `Bearer ${t}` }, body: '{"ids":["1"]}' })).status, token);
        assert.equal(String(status), code);
      } finally {
        await page.close();
      }
    }
  });

  test('keyboard: the views are reached with Tab and Enter; dark mode follows the system', async () => {
    const page = await open(browser, 1440);
    try {
      await page.locator('#status', { hasText: 'live' }).waitFor();
      await page.keyboard.press('Tab'); // skip link
      await page.keyboard.press('Tab'); // Overview
      await page.keyboard.press('Tab'); // Jobs
      assert.equal(await page.evaluate(() => document.activeElement?.textContent), 'Jobs');
      await page.keyboard.press('Enter');
      await page.locator('#jobs-list').waitFor();
      assert.equal(await page.evaluate(() => location.hash), '#/jobs');
      assert.equal(await page.locator('header nav a[aria-current="page"]').textContent(), 'Jobs');

      const light = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
      await page.emulateMedia({ colorScheme: 'dark' });
      const dark = await page.evaluate(() => getComputedStyle(document.body).backgroundColor);
      assert.notEqual(light, dark);
      const [r, g, b] = dark.match(/\d+/g)!.map(Number);
      assert.ok(r + g + b < 150, `a dark background: ${dark}`);
      await page.goto(`${base}/dashboard?access_token=${ADMIN}#/`);
      await page.waitForFunction(() => (window as any).heraldDashboard.charts.throughput !== undefined);
      await shoot(page, 'overview-dark-1440');
    } finally {
      await page.close();
    }
    const narrow = await open(browser, 360);
    try {
      await narrow.waitForFunction(() => (window as any).heraldDashboard.charts.throughput !== undefined);
      await narrow.locator('#panel-jobs').waitFor();
      assert.ok(await fitsWidth(narrow), 'the overview fits 360 px');
      await shoot(narrow, 'overview-360');
    } finally {
      await narrow.close();
    }
    assert.equal(server.clients >= 0, true);
  });
});
