import assert from 'node:assert/strict';
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { chromium, type Browser, type Page } from 'playwright-core';
import type { Herald } from '../client.js';
import { useServer } from '../../test/support/server.js';
import { SseClient } from '../../test/support/sse.js';
import { deferred, waitFor } from '../../test/support/wait.js';
import type { HeraldServer } from './server.js';

const CHROMIUM = '/usr/bin/chromium';
const ADMIN = 'dashboard-admin-token-1234';
/** Subscribe and publish on everything, but no admin grant. */
const VIEWER = 'dashboard-viewer-key-5678';
const ARTIFACTS = join(new URL('../..', import.meta.url).pathname, 'test', '.artifacts');

let herald: Herald;
let server: HeraldServer;
let base: string;
useServer(
  {
    herald: { queue: { retryBaseDelayMs: 10, retryMaxDelayMs: 50 } },
    server: {
      token: ADMIN,
      apiKeys: [{ name: 'viewer', key: VIEWER, grants: { subscribe: ['*'], publish: ['*'] } }],
      channelPrefix: 'gw.',
      // Fresh reads on every request: these tests check what a change shows at once
      // (dashboard-cost.test.ts covers the shared reads).
      dashboardRefreshMs: 0,
    },
  },
  (f) => ({ herald, server, base } = f),
);

/** The state cell of a job's row in a panel. */
function stateOf(page: Page, panel: string, id: string, state: string) {
  return page.locator(`#panel-${panel} tr[data-row-id="${id}"] td[data-col="state"]`, { hasText: new RegExp(`^${state}$`) });
}

async function action(token: string | null, panel: string, name: string, args: Record<string, unknown>): Promise<{ status: number; body: any }> {
  const res = await fetch(`${base}/api/dashboard/panels/${panel}/actions/${name}`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) },
    body: JSON.stringify({ args }),
  });
  return { status: res.status, body: await res.json() };
}

describe('dashboard in headless Chromium with the real queue, mailbox and outbox', { skip: existsSync(CHROMIUM) ? false : `${CHROMIUM} is not installed` }, () => {
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

  test('the dashboard loads, shows job transitions live, and retry runs a dead job again; cancel cancels', async () => {
    const page = await browser.newPage({ viewport: { width: 1400, height: 1200 } });
    await page.goto(`${base}/dashboard`);
    await page.locator('#status', { hasText: 'enter an admin token' }).waitFor();
    await page.fill('#token', ADMIN);
    await page.click('#save');
    await page.locator('#notifier-status', { hasText: 'listening' }).waitFor();
    for (const id of ['queues', 'jobs', 'pipelines', 'stuck', 'mailboxes', 'mailbox-dead', 'outbox', 'outbox-dead']) await page.locator(`#panel-${id}`).waitFor();
    assert.equal(await page.locator('text=not installed').count(), 0);
    // The page follows job transitions (GET /jobs/events) to refresh at once.
    await page.waitForFunction(() => (window as any).heraldDashboard.jobEvents?.readyState === 1);

    // A job that fails once (maxAttempts 1: straight to dead), held in `running` by a gate.
    const email = await herald.queue.enqueue('send-email', { to: 'a@example.com' }, { maxAttempts: 1 });
    await stateOf(page, 'jobs', email.id, 'available').waitFor();
    const gate = deferred();
    const started = deferred();
    let runs = 0;
    herald.queue.work('send-email', async () => {
      runs++;
      if (runs === 1) {
        started.resolve();
        await gate.promise;
        throw new Error('smtp down');
      }
      return { sent: true };
    });
    await started.promise;
    await stateOf(page, 'jobs', email.id, 'running').waitFor();
    gate.resolve();
    await stateOf(page, 'jobs', email.id, 'dead').waitFor();
    const row = page.locator(`#panel-jobs tr[data-row-id="${email.id}"]`);
    await row.locator('td[data-col="lastError"]', { hasText: 'smtp down' }).waitFor();
    assert.equal(await row.locator('button[data-action="cancel"]').count(), 0, 'a dead job offers no Cancel');
    await page.screenshot({ path: join(ARTIFACTS, 'dashboard-dead-job.png'), fullPage: true });

    await row.locator('button[data-action="retry"]').click();
    await page.locator('#last-action', { hasText: 'jobs retry: ok' }).waitFor();
    await stateOf(page, 'jobs', email.id, 'completed').waitFor();
    assert.equal(runs, 2, 'the retried job ran again');
    const job = await herald.queue.get(email.id);
    assert.equal(job?.state, 'completed');
    assert.deepEqual(job?.result, { sent: true });
    await page.locator('#panel-queues tr', { hasText: 'send-email' }).locator('td[data-col="completed"]', { hasText: /^1$/ }).waitFor();

    // A pipeline: its transitions are announced and shown stage by stage.
    const ci = await herald.queue.enqueue('ci', { repo: 'x' }, { stages: ['build', 'deploy'] });
    const pipeline = page.locator(`#panel-pipelines tr[data-row-id="${ci.id}"]`);
    await pipeline.locator('td[data-col="progress"]', { hasText: /^1\/2$/ }).waitFor();
    const deployGate = deferred();
    const deploying = deferred();
    herald.queue.work('ci', () => {}, { stage: 'build' });
    herald.queue.work('ci', async () => {
      deploying.resolve();
      await deployGate.promise;
    }, { stage: 'deploy' });
    await deploying.promise;
    await pipeline.locator('td[data-col="stage"]', { hasText: /^deploy$/ }).waitFor();
    await stateOf(page, 'pipelines', ci.id, 'running').waitFor();
    await pipeline.locator('td[data-col="progress"]', { hasText: /^2\/2$/ }).waitFor();
    deployGate.resolve();
    await stateOf(page, 'pipelines', ci.id, 'completed').waitFor();

    // Cancel a scheduled job from its row; the queues panel counts it as scheduled first.
    const later = await herald.queue.enqueue('report', {}, { delayMs: 3_600_000 });
    await page.locator('#panel-queues tr', { hasText: 'report' }).locator('td[data-col="scheduled"]', { hasText: /^1$/ }).waitFor();
    await page.locator(`#panel-jobs tr[data-row-id="${later.id}"] button[data-action="cancel"]`).click();
    await stateOf(page, 'jobs', later.id, 'cancelled').waitFor();
    assert.equal((await herald.queue.get(later.id))?.state, 'cancelled');
    await page.screenshot({ path: join(ARTIFACTS, 'dashboard-jobs.png'), fullPage: true });
    await page.close();
  });

  test('mailbox and outbox dead letters are shown and redriven from the page', async () => {
    const page = await browser.newPage({ viewport: { width: 1400, height: 1200 } });
    await page.goto(`${base}/dashboard?access_token=${ADMIN}`);
    await page.locator('#notifier-status', { hasText: 'listening' }).waitFor();

    let healed = false;
    const consumed: string[] = [];
    const consumer = herald.mailbox.consume('billing', (m) => {
      if (!healed) throw new Error('ledger locked');
      consumed.push(m.id);
    }, { maxAttempts: 1 });
    const sent = await herald.mailbox.send({ to: 'billing', payload: { invoice: 7 } });
    const deadRow = page.locator(`#panel-mailbox-dead tr[data-row-id="${sent.id}"]`);
    await deadRow.locator('td[data-col="lastError"]', { hasText: 'ledger locked' }).waitFor();
    await page.locator('#panel-mailboxes tr', { hasText: 'billing' }).locator('td[data-col="dead"]', { hasText: /^1$/ }).waitFor();

    const relayed: string[] = [];
    const relay = herald.outbox.relay({
      sink: (e) => {
        if (!healed) throw new Error('broker away');
        relayed.push(e.id);
      },
      maxAttempts: 1,
      pollIntervalMs: 100,
    });
    const eventId = await herald.outbox.add({ type: 'order.created', key: 'order:7' });
    await page.locator(`#panel-outbox-dead tr[data-row-id="${eventId}"] td[data-col="lastError"]`, { hasText: 'broker away' }).waitFor();
    await page.locator('#panel-outbox td[data-col="dead"]', { hasText: /^1$/ }).waitFor();
    await page.screenshot({ path: join(ARTIFACTS, 'dashboard-dead-letters.png'), fullPage: true });

    healed = true;
    await deadRow.locator('button[data-action="redrive"]').click();
    await waitFor(() => consumed.includes(sent.id), { what: 'the redriven message consumed' });
    await page.locator('#panel-mailboxes tr', { hasText: 'billing' }).locator('td[data-col="consumed"]', { hasText: /^1$/ }).waitFor();
    await page.locator(`#panel-outbox-dead tr[data-row-id="${eventId}"] button[data-action="redrive"]`).click();
    await waitFor(() => relayed.includes(eventId), { what: 'the redriven event published' });
    await page.locator('#panel-outbox td[data-col="dead"]', { hasText: /^0$/ }).waitFor();
    await page.locator('#panel-outbox-dead', { hasText: 'none' }).waitFor();
    assert.deepEqual(consumed, [sent.id]);
    assert.deepEqual(relayed, [eventId]);
    await page.screenshot({ path: join(ARTIFACTS, 'dashboard-redriven.png'), fullPage: true });
    await relay.stop();
    await consumer.stop();
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

test('dashboard data and actions need an admin grant: 401 without a credential, 403 for a non-admin token; nothing changes', async () => {
  const job = await herald.queue.enqueue('guarded', {}, { delayMs: 3_600_000 });
  const msg = await herald.mailbox.send({ to: 'guarded-box', payload: 1 });
  const get = (token: string | null) => fetch(`${base}/api/dashboard`, { headers: token ? { authorization: `Bearer ${token}` } : {} });
  assert.equal((await get(null)).status, 401);
  const refused = await get(VIEWER);
  assert.equal(refused.status, 403);
  assert.equal((await refused.json()).error.code, 'FORBIDDEN');
  const attempts: [string, string, Record<string, unknown>][] = [
    ['jobs', 'cancel', { id: job.id }],
    ['jobs', 'retry', { id: job.id }],
    ['stuck', 'cancel', { id: job.id }],
    ['pipelines', 'cancel', { id: job.id }],
    ['mailboxes', 'redrive', { to: 'guarded-box' }],
    ['mailbox-dead', 'redrive', { to: 'guarded-box', id: msg.id }],
    ['outbox', 'redrive-all', {}],
    ['outbox-dead', 'redrive', { id: '00000000-0000-0000-0000-000000000000' }],
  ];
  for (const [panel, name, args] of attempts) {
    assert.equal((await action(null, panel, name, args)).status, 401, `${panel}/${name} without a credential`);
    const r = await action(VIEWER, panel, name, args);
    assert.equal(r.status, 403, `${panel}/${name} with a non-admin token`);
    assert.equal(r.body.error.code, 'FORBIDDEN');
  }
  assert.equal((await herald.queue.get(job.id))?.state, 'available', 'the refused cancel changed nothing');

  // The admin token: the snapshot lists every panel; actions check the row's current state.
  const snap = await (await get(ADMIN)).json();
  assert.deepEqual(
    snap.panels.map((p: { id: string }) => p.id),
    ['queues', 'jobs', 'pipelines', 'stuck', 'mailboxes', 'mailbox-dead', 'outbox', 'outbox-dead', 'topic-dead'],
  );
  const jobs = snap.panels.find((p: { id: string }) => p.id === 'jobs');
  const i = jobs.data.findIndex((r: { id: string }) => r.id === job.id);
  assert.deepEqual(jobs.rowActions[i], ['cancel'], 'a waiting job offers Cancel only');
  const retry = await action(ADMIN, 'jobs', 'retry', { id: job.id });
  assert.equal(retry.status, 409, 'a waiting job cannot be retried');
  assert.equal(retry.body.error.code, 'CONFLICT');
  assert.equal((await action(ADMIN, 'jobs', 'retry', { id: 'x' })).status, 400);
  assert.equal((await action(ADMIN, 'jobs', 'nope', { id: job.id })).status, 404);
  const cancel = await action(ADMIN, 'jobs', 'cancel', { id: job.id });
  assert.equal(cancel.status, 200);
  assert.deepEqual(cancel.body, { ok: true, result: { cancelled: [job.id] } });
  assert.equal((await action(ADMIN, 'jobs', 'retry', { id: job.id })).status, 200, 'a cancelled job can be retried');
  assert.equal((await herald.queue.get(job.id))?.state, 'available');
  await herald.queue.cancel(job.id);

  // Dead letters: only dead ones are redriven one by one; a whole destination with none is 0.
  assert.equal((await action(ADMIN, 'mailbox-dead', 'redrive', { to: 'guarded-box', id: msg.id })).status, 409, 'a ready message is not dead');
  assert.deepEqual((await action(ADMIN, 'mailboxes', 'redrive', { to: 'guarded-box' })).body, { ok: true, result: { redriven: 0 } });
  assert.equal((await action(ADMIN, 'mailboxes', 'redrive', {})).status, 400);
  assert.equal((await action(ADMIN, 'outbox-dead', 'redrive', { id: '00000000-0000-0000-0000-000000000000' })).status, 409);
  const bad = await action(ADMIN, 'outbox-dead', 'redrive', { id: 'x' });
  assert.equal(bad.status, 400);
  assert.equal(bad.body.error.code, 'INVALID_ARGUMENT');
  assert.deepEqual((await action(ADMIN, 'outbox', 'redrive-all', {})).body, { ok: true, result: { redriven: 0 } });
});
