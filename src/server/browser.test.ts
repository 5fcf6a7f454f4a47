/**
 * `herald serve` in open mode against a real browser: a page on another site (an
 * attacker page served from 127.0.0.2, another site, and from another port of
 * 127.0.0.1, the same site) tries every write and read it could aim at the
 * developer's loopback server; each attempt is checked against the database and a real
 * listener, not only by its status. Then DNS rebinding (a name that resolves to
 * 127.0.0.1), and the positive side: the server's own dashboard and client still work,
 * and an allowed origin can use the server.
 */
import assert from 'node:assert/strict';
import { existsSync, mkdtempSync, rmSync } from 'node:fs';
import { createServer, type Server } from 'node:http';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { chromium, type BrowserContext, type Page } from 'playwright-core';
import type { Herald } from '../client.js';
import { witness } from '../../test/support/raw-http.js';
import { useServer } from '../../test/support/server.js';
import { waitFor } from '../../test/support/wait.js';
import { HeraldServer } from './server.js';

const CHROMIUM = '/usr/bin/chromium';
const ATTACKER_HOST = '127.0.0.2';
const ATTACKER_PAGE = '<!doctype html><html><head><title>a page on another site</title></head><body><iframe name="sink"></iframe></body></html>';

/** Serves the attacker page on `host`; resolves with the server and its origin. */
async function attackerServer(host: string): Promise<{ server: Server; origin: string }> {
  const server = createServer((_req, res) => {
    res.writeHead(200, { 'content-type': 'text/html; charset=utf-8' });
    res.end(ATTACKER_PAGE);
  });
  await new Promise<void>((r) => server.listen(0, host, () => r()));
  return { server, origin: `http://${host}:${(server.address() as { port: number }).port}` };
}

let herald: Herald;
let server: HeraldServer;
let base: string;
let port: number;
useServer({}, (f) => {
  ({ herald, server, base } = f);
  port = Number(new URL(base).port);
});

/** What the page saw of one attempt: a status, an opaque response, a network error, or a stream outcome. */
type Seen = number | 'opaque' | 'TypeError' | Record<string, unknown>;

/** Sum of a prom-client counter's values matching `labels`. */
async function count(counter: { get(): Promise<{ values: { value: number; labels: Record<string, unknown> }[] }> }, labels: Record<string, string> = {}): Promise<number> {
  const { values } = await counter.get();
  return values.filter((v) => Object.entries(labels).every(([k, x]) => v.labels[k] === x)).reduce((a, v) => a + v.value, 0);
}

/**
 * Every attack a cross-site page can script against `target`, run inside the page: simple
 * (no-cors, text/plain) POSTs, CORS JSON POSTs (preflighted), WebSocket publish and
 * subscribe, EventSource and fetch reads of streams, a no-cors GET and an <img> that
 * would consume a mailbox message.
 */
async function attack(page: Page, target: string, ids: { cancelled: string; waiting: string }): Promise<Record<string, Seen>> {
  return page.evaluate(
    async ({ T, ids }) => {
      const out: Record<string, unknown> = {};
      const tryFetch = async (name: string, url: string, init?: RequestInit) => {
        try {
          const r = await fetch(url, init);
          out[name] = r.type === 'opaque' ? 'opaque' : r.status;
        } catch {
          out[name] = 'TypeError';
        }
      };
      const writes: [string, string, string][] = [
        ['notify', '/channels/x/notify', JSON.stringify({ payload: 'evil' })],
        ['enqueue', '/jobs', JSON.stringify({ kind: 'evil' })],
        ['topicPublish', '/topics/feed/publish', JSON.stringify({ payload: 'evil' })],
        ['topicCreate', '/topics/evil-topic/publish', JSON.stringify({ payload: 'evil' })],
        ['redrive', '/outbox/redrive', JSON.stringify({ all: true })],
        ['retry', '/api/dashboard/panels/jobs/actions/retry', JSON.stringify({ args: { id: ids.cancelled } })],
        ['cancel', '/api/dashboard/panels/jobs/actions/cancel', JSON.stringify({ args: { id: ids.waiting } })],
        ['redriveAll', '/api/dashboard/panels/outbox/actions/redrive-all', JSON.stringify({})],
        ['mailboxSend', '/mailbox/victim', JSON.stringify({ payload: 'evil' })],
      ];
      for (const [name, path, body] of writes) {
        // A "simple" request: no preflight, the browser sends it and hides the answer.
        await tryFetch(`${name}:simple`, T + path, { method: 'POST', mode: 'no-cors', headers: { 'content-type': 'text/plain' }, body });
        // JSON needs a CORS preflight, which must fail.
        await tryFetch(`${name}:json`, T + path, { method: 'POST', headers: { 'content-type': 'application/json' }, body });
      }
      out.ws = await new Promise((resolve) => {
        const ws = new WebSocket(T.replace(/^http/, 'ws') + '/ws?topic=x');
        const got: string[] = [];
        let opened = false;
        ws.onopen = () => {
          opened = true;
          ws.send(JSON.stringify({ type: 'publish', topic: 'x', payload: 'evil-ws', ref: 'p' }));
        };
        ws.onmessage = (m) => {
          got.push(String(m.data));
          if (String(m.data).includes('"ref":"p"')) ws.close();
        };
        ws.onclose = (e) => resolve({ opened, code: e.code, got });
      });
      for (const [name, path] of [['es', '/channels/x/events'], ['esTopic', '/topics/feed/events?from=earliest'], ['esJobs', '/jobs/events'], ['esMulti', '/events?topic=x']]) {
        out[name] = await new Promise((resolve) => {
          const es = new EventSource(T + path);
          let opened = false;
          const data: string[] = [];
          es.onopen = () => (opened = true);
          es.onmessage = (e) => data.push(e.data);
          es.onerror = () => {
            resolve({ opened, readyState: es.readyState, data });
            es.close();
          };
        });
      }
      await tryFetch('streamCors', T + '/channels/x/events');
      await tryFetch('streamNoCors', T + '/channels/x/events', { mode: 'no-cors' });
      await tryFetch('dashboardRead', T + '/api/dashboard');
      await tryFetch('mailboxTake', T + '/mailbox/victim', { mode: 'no-cors' });
      out.mailboxImg = await new Promise((resolve) => {
        const img = new Image();
        img.onload = () => resolve('load');
        img.onerror = () => resolve('error');
        img.src = T + '/mailbox/victim?wait=0';
      });
      return out as Record<string, Seen>;
    },
    { T: target, ids },
  );
}

describe('open mode against a real browser', { skip: existsSync(CHROMIUM) ? false : `${CHROMIUM} is not installed` }, () => {
  let context: BrowserContext;
  let profile: string;
  const attackers: Server[] = [];
  /** Another site (127.0.0.2) and the same site on another port (127.0.0.1). */
  let attackerOrigin: string;
  let sameSiteOrigin: string;

  before(async () => {
    for (const host of [ATTACKER_HOST, '127.0.0.1']) {
      const a = await attackerServer(host);
      attackers.push(a.server);
      if (host === ATTACKER_HOST) attackerOrigin = a.origin;
      else sameSiteOrigin = a.origin;
    }
    profile = mkdtempSync(join(tmpdir(), 'herald-chromium-'));
    context = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
        // Chromium's own Private/Local Network Access checks would hide what the server
        // does (other browsers have none): the server must hold without them.
        '--disable-features=HttpsUpgrades,BlockInsecurePrivateNetworkRequests,PrivateNetworkAccessSendPreflights,LocalNetworkAccessChecks',
        // DNS rebinding without a DNS server: this name resolves to the server's address.
        '--host-resolver-rules=MAP rebind.test 127.0.0.1',
      ],
    });
    // tsx keeps function names with a helper the page does not have.
    await context.addInitScript('globalThis.__name = (f) => f');
  });

  after(async () => {
    await context?.close();
    for (const a of attackers) await new Promise<void>((r) => a.close(() => r()));
    if (profile) rmSync(profile, { recursive: true, force: true });
  });

  test('a page on another site cannot publish, enqueue, run a dashboard action, redrive the outbox, read a stream or take a mailbox message', async () => {
    // The state an attack would change.
    await herald.topics.publish('feed', 'real');
    const cancelled = await herald.queue.enqueue('victim', {});
    assert.deepEqual(await herald.queue.cancel(cancelled.id), [cancelled.id]);
    const waiting = await herald.queue.enqueue('victim', {}); // no worker for this kind: stays available
    const deadId = await herald.outbox.add({ type: 'victim', key: 'victim' });
    const relay = herald.outbox.relay({ sink: () => Promise.reject(new Error('down')), maxAttempts: 1, pollIntervalMs: 50 });
    try {
      await waitFor(async () => (await herald.outbox.dead()).some((d) => d.id === deadId), { what: 'a dead letter' });
    } finally {
      await relay.stop();
    }
    await herald.mailbox.send({ to: 'victim', payload: 'keep me' });
    const listener = await witness(herald, 'x');
    const connectionsBefore = await count(server.metrics.connections);
    const refusedBefore = await count(server.metrics.refused, { code: 'ORIGIN_NOT_ALLOWED' });

    const page = await context.newPage();
    const seen = new Map<string, number[]>();
    page.on('response', (r) => {
      if (!r.url().startsWith(base + '/')) return;
      const path = new URL(r.url()).pathname;
      seen.set(path, [...(seen.get(path) ?? []), r.status()]);
    });
    try {
      for (const origin of [attackerOrigin, sameSiteOrigin]) {
        await page.goto(`${origin}/`);
        const out = await attack(page, base, { cancelled: cancelled.id, waiting: waiting.id });

        // A real HTML form (enctype text/plain makes a JSON-looking body) posted into a frame.
        const formResponse = page.waitForResponse((r) => r.url() === `${base}/jobs` && r.request().method() === 'POST' && r.request().postData()?.includes('evil-form') === true);
        await page.evaluate((T) => {
          const form = document.createElement('form');
          form.method = 'POST';
          form.enctype = 'text/plain';
          form.action = T + '/jobs';
          form.target = 'sink';
          const input = document.createElement('input');
          input.name = '{"kind":"evil-form","uniqueKey":"';
          input.value = '"}';
          form.append(input);
          document.body.append(form);
          form.submit();
        }, base);
        assert.equal((await formResponse).status(), 403, `the form POST from ${origin} is refused`);

        // What the page saw: nothing readable, no stream, no WebSocket.
        for (const [name, v] of Object.entries(out)) {
          if (name.endsWith(':simple') || name === 'streamNoCors' || name === 'mailboxTake') assert.equal(v, 'opaque', `${origin} ${name}`);
          else if (name.endsWith(':json') || name === 'streamCors' || name === 'dashboardRead') assert.equal(v, 'TypeError', `${origin} ${name}`);
        }
        assert.deepEqual(out.ws, { opened: false, code: 1006, got: [] });
        for (const name of ['es', 'esTopic', 'esJobs', 'esMulti']) assert.deepEqual(out[name], { opened: false, readyState: 2, data: [] }, name);
        assert.equal(out.mailboxImg, 'error');
      }

      // What the server answered: every request the page made to it was refused 403.
      assert.ok(seen.size >= 10, `responses seen: ${[...seen.keys()].join(' ')}`);
      for (const [path, statuses] of seen) for (const s of statuses) assert.equal(s, 403, `${path} answered ${s}`);
      assert.ok((await count(server.metrics.refused, { code: 'ORIGIN_NOT_ALLOWED' })) - refusedBefore >= 2 * (9 + 1 + 4 + 4), 'refusals counted (simple POSTs, upgrade, streams, reads)');

      // What changed in the database and on the wire: nothing.
      assert.deepEqual(await listener.settle(), [], 'no notification reached a real listener');
      assert.equal((await herald.queue.list({ kind: 'evil' })).length, 0, 'no job enqueued');
      assert.equal((await herald.queue.list({ kind: 'evil-form' })).length, 0, 'no job from the form');
      assert.equal((await herald.queue.get(cancelled.id))?.state, 'cancelled', 'not retried');
      assert.equal((await herald.queue.get(waiting.id))?.state, 'available', 'not cancelled');
      assert.ok((await herald.outbox.dead()).some((d) => d.id === deadId), 'not redriven');
      assert.equal((await herald.topics.stats('feed')).messages, 1, 'nothing published on the topic');
      assert.ok(!(await herald.topics.list()).includes('evil-topic'), 'no topic created');
      const [box] = await herald.mailbox.stats('victim');
      assert.equal(box.ready, 1, 'the mailbox message is still there, and no other was sent');
      assert.equal(await count(server.metrics.connections), connectionsBefore, 'no stream or WebSocket was ever admitted');
      assert.equal(server.clients, 0);
    } finally {
      await page.close();
      await listener.close();
    }
  });

  test('DNS rebinding: a page whose own name resolves to 127.0.0.1 is refused 421 HOST_NOT_ALLOWED, page, API and WebSocket', async () => {
    const page = await context.newPage();
    try {
      const rebound = `http://rebind.test:${port}`;
      const nav = await page.goto(`${rebound}/dashboard`);
      assert.equal(nav?.status(), 421);
      assert.doesNotMatch(await page.content(), /pgherald dashboard/);
      // After the rebinding: the attacker's page, loaded while the name pointed at the
      // attacker, now shares its origin with the server as far as the browser knows.
      await page.route(`${rebound}/attacker.html`, (route) => route.fulfill({ contentType: 'text/html', body: '<!doctype html><title>rebound</title>' }));
      await page.goto(`${rebound}/attacker.html`);
      const out = await page.evaluate(async () => {
        const api = await fetch('/api/dashboard');
        const job = await fetch('/jobs', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ kind: 'rebound' }) });
        const ws = await new Promise((resolve) => {
          const s = new WebSocket(location.origin.replace(/^http/, 'ws') + '/ws?topic=x');
          let opened = false;
          s.onopen = () => (opened = true);
          s.onclose = (e) => resolve({ opened, code: e.code });
        });
        return { api: api.status, apiBody: await api.json(), job: job.status, ws };
      });
      assert.equal(out.api, 421);
      assert.equal(out.apiBody.error.code, 'HOST_NOT_ALLOWED');
      assert.equal(out.job, 421);
      assert.deepEqual(out.ws, { opened: false, code: 1006 });
      assert.equal((await herald.queue.list({ kind: 'rebound' })).length, 0);
    } finally {
      await page.close();
    }
  });

  test('the server’s own dashboard and client still work (same origin, under its CSP), at 127.0.0.1 and at localhost', async () => {
    const violations: string[] = [];
    for (const origin of [base, `http://localhost:${port}`]) {
      const page = await context.newPage();
      page.on('console', (m) => {
        if (/Content Security Policy|Refused to/i.test(m.text())) violations.push(m.text());
      });
      try {
        const job = await herald.queue.enqueue('own-page', {});
        await herald.queue.cancel(job.id);
        const res = await page.goto(`${origin}/dashboard`);
        assert.equal(res?.status(), 200);
        assert.equal(res?.headers()['x-frame-options'], 'DENY');
        await page.locator('#status', { hasText: 'live' }).waitFor();
        await page.waitForFunction(() => (window as any).heraldDashboard.jobEvents?.readyState === 1);
        // A dashboard action (same-origin POST with a JSON body).
        await page.locator(`#panel-jobs tr[data-row-id="${job.id}"] button[data-action="retry"]`).click();
        await page.locator('#last-action', { hasText: 'jobs retry: ok' }).waitFor();
        assert.equal((await herald.queue.get(job.id))?.state, 'available');
        // The browser client over /ws (WebSocket, same origin).
        const topic = `own-${port}-${origin.includes('localhost') ? 'l' : 'i'}`;
        await page.fill('#watch-topic', topic);
        await page.click('#watch-go');
        await page.locator('#watch-state', { hasText: 'open' }).waitFor();
        await waitFor(() => {
          const t = server.gateway.topics().find((x) => x.topic === topic);
          return t?.clients === 1 && t.live;
        }, { what: 'browser subscribed and LISTEN live' });
        await herald.notify(topic, 'hello');
        await page.locator('#events .event', { hasText: 'hello' }).waitFor();
        await herald.queue.cancel(job.id);
      } finally {
        await page.close();
      }
    }
    assert.deepEqual(violations, [], 'no CSP violation');
  });

  test('an origin in allowedOrigins may publish (CORS JSON) and use a WebSocket from its pages', async () => {
    const allowed = new HeraldServer(herald, { port: 0, allowedOrigins: [attackerOrigin] });
    const url = await allowed.start();
    const listener = await witness(herald, 'shared');
    const page = await context.newPage();
    try {
      await page.goto(`${attackerOrigin}/`);
      const out = await page.evaluate(async (T) => {
        const r = await fetch(T + '/channels/shared/notify', { method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ payload: 'from-app-fetch' }) });
        const ws = await new Promise((resolve) => {
          const s = new WebSocket(T.replace(/^http/, 'ws') + '/ws');
          s.onopen = () => s.send(JSON.stringify({ type: 'publish', topic: 'shared', payload: 'from-app-ws', ref: 'p' }));
          s.onmessage = (m) => {
            s.close();
            resolve(JSON.parse(String(m.data)).type);
          };
          s.onclose = () => resolve('closed');
        });
        return { status: r.status, body: await r.json(), ws };
      }, url);
      assert.equal(out.status, 202);
      assert.equal(out.ws, 'published');
      assert.deepEqual(await listener.settle(), ['from-app-fetch', 'from-app-ws']);
    } finally {
      await page.close();
      await listener.close();
      await allowed.stop();
    }
  });
});
