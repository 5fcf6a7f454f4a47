import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { createHerald, type Herald } from '../client.js';
import { freshDatabase, type TestDatabase } from '../../test/support/db.js';
import { SseClient } from '../../test/support/sse.js';
import { WsClient } from '../../test/support/ws.js';
import { HeraldServer } from './server.js';

const WIDE = 'wide-grants-0123456789';

async function post(url: string, body: unknown, token?: string): Promise<{ status: number; body: any }> {
  const res = await fetch(url, { method: 'POST', headers: { 'content-type': 'application/json', ...(token ? { authorization: `Bearer ${token}` } : {}) }, body: JSON.stringify(body) });
  return { status: res.status, body: await res.json() };
}

describe("gateway topics cannot reach pgherald's own channels", () => {
  let db: TestDatabase;
  let herald: Herald;

  before(async () => {
    db = await freshDatabase();
    herald = createHerald({ connectionString: db.url, notifier: { queueUsageIntervalMs: 0 } });
    await herald.migrate();
  });

  after(async () => {
    await herald.close();
    await db.drop();
  });

  test('a topic named like a part channel is refused on every path (403 RESERVED_TOPIC), and /jobs/events watchers see no forged transition', async () => {
    const server = new HeraldServer(herald, { port: 0 }); // open mode, empty prefix: topic = channel
    const base = await server.start();
    const clients: { close(): void }[] = [];
    try {
      const watcher = await SseClient.open(`${base}/jobs/events`);
      clients.push(watcher);
      await watcher.until(() => watcher.named('ready').length === 1);
      const reserved = [herald.queue.channelNames.events, herald.queue.channelNames.wake, herald.topics.channel, herald.mailbox.channel, herald.outbox.channel, herald.changes.channelFor('public.items'), 'herald.anything'];
      const forged = JSON.stringify({ id: '1', kind: 'forged', stage: null, state: 'completed', attempt: 1 });
      for (const topic of reserved) {
        const t = encodeURIComponent(topic);
        const published = await post(`${base}/channels/${t}/notify`, { payload: forged });
        assert.equal(published.status, 403, topic);
        assert.equal(published.body.error.code, 'RESERVED_TOPIC');
        const sse = await SseClient.open(`${base}/channels/${t}/events`);
        clients.push(sse);
        assert.equal(sse.status, 403);
        assert.equal(JSON.parse(sse.body).error.code, 'RESERVED_TOPIC');
        const multi = await SseClient.open(`${base}/events?topic=${t}`);
        clients.push(multi);
        assert.equal(multi.status, 403);
        const urlWs = await WsClient.connect(`${base}/ws?topic=${t}`);
        clients.push(urlWs);
        assert.equal(await urlWs.closed, 4403);
        assert.match(urlWs.closeReason, /RESERVED_TOPIC/);
        const ws = await WsClient.connect(`${base}/ws`);
        clients.push(ws);
        const sub = await ws.request({ type: 'subscribe', topic });
        assert.equal(sub.code, 'RESERVED_TOPIC');
        assert.equal(sub.status, 403);
        const pub = await ws.request({ type: 'publish', topic, payload: forged });
        assert.equal(pub.code, 'RESERVED_TOPIC');
        ws.close();
      }
      // A real transition is the first (and only) thing the watcher sees.
      await herald.notify(herald.queue.channelNames.events, JSON.stringify({ id: '2', kind: 'real', stage: null, state: 'completed', attempt: 1 }));
      await watcher.until(() => watcher.named('transition').length === 1);
      assert.deepEqual(watcher.named('transition').map((e) => JSON.parse(e.data).kind), ['real']);
      // Topics outside the namespace work as before: `herald notify orders` reaches /channels/orders/events.
      const orders = await SseClient.open(`${base}/channels/orders/events`);
      clients.push(orders);
      await orders.until(() => orders.named('ready').length === 1);
      await herald.notify('orders', 'hello');
      await orders.until(() => orders.named('notification').length === 1);
      assert.equal(orders.named('notification')[0].data, 'hello');
    } finally {
      for (const c of clients) c.close();
      await server.stop();
    }
  });

  test('a subscribe grant on every topic does not reach job transitions; the jobs resource is still needed', async () => {
    const server = new HeraldServer(herald, { port: 0, apiKeys: [{ name: 'wide', key: WIDE, grants: { subscribe: ['*'], publish: ['*'] } }] });
    const base = await server.start();
    const clients: { close(): void }[] = [];
    try {
      // `*` matches `jobs` too: this key may watch jobs through the jobs route, as its grant says...
      const jobs = await SseClient.open(`${base}/jobs/events?access_token=${WIDE}`);
      clients.push(jobs);
      assert.equal(jobs.status, 200);
      // ...but a narrower key with `herald.*` (topic names only) cannot reach them as a topic.
      const narrow = new HeraldServer(herald, { port: 0, apiKeys: [{ name: 'narrow', key: WIDE, grants: { subscribe: ['herald.*'], publish: ['herald.*'] } }] });
      const nbase = await narrow.start();
      try {
        const viaRoute = await SseClient.open(`${nbase}/jobs/events?access_token=${WIDE}`);
        clients.push(viaRoute);
        assert.equal(viaRoute.status, 403);
        assert.equal(JSON.parse(viaRoute.body).error.code, 'FORBIDDEN');
        const viaTopic = await SseClient.open(`${nbase}/channels/${encodeURIComponent(herald.queue.channelNames.events)}/events?access_token=${WIDE}`);
        clients.push(viaTopic);
        assert.equal(viaTopic.status, 403);
        assert.equal(JSON.parse(viaTopic.body).error.code, 'RESERVED_TOPIC');
        const changes = await SseClient.open(`${nbase}/channels/${encodeURIComponent(herald.changes.channelFor('public.items'))}/events?access_token=${WIDE}`);
        clients.push(changes);
        assert.equal(JSON.parse(changes.body).error.code, 'RESERVED_TOPIC');
      } finally {
        await narrow.stop();
      }
    } finally {
      for (const c of clients) c.close();
      await server.stop();
    }
  });

  test('a reserved topic is RESERVED_TOPIC whatever the grants (none at all too); without a credential it is still 401', async () => {
    const server = new HeraldServer(herald, { port: 0, apiKeys: [{ name: 'other', key: WIDE, grants: { subscribe: ['orders'], publish: ['orders'] } }] });
    const base = await server.start();
    const clients: { close(): void }[] = [];
    try {
      const t = encodeURIComponent(herald.queue.channelNames.events);
      const published = await post(`${base}/channels/${t}/notify`, { payload: 'x' }, WIDE);
      assert.equal(published.status, 403);
      assert.equal(published.body.error.code, 'RESERVED_TOPIC');
      const sse = await SseClient.open(`${base}/channels/${t}/events?access_token=${WIDE}`);
      clients.push(sse);
      assert.equal(sse.status, 403);
      assert.equal(JSON.parse(sse.body).error.code, 'RESERVED_TOPIC');
      const ws = await WsClient.connect(`${base}/ws?access_token=${WIDE}`);
      clients.push(ws);
      const pub = await ws.request({ type: 'publish', topic: herald.queue.channelNames.events, payload: 'x' });
      assert.equal(pub.code, 'RESERVED_TOPIC');
      const sub = await ws.request({ type: 'subscribe', topic: herald.queue.channelNames.events });
      assert.equal(sub.code, 'RESERVED_TOPIC');
      // Every error reply has its status, a message that is not JSON too.
      ws.ws.send('not json');
      await ws.until(() => ws.of('error').some((e) => e.code === 'INVALID_JSON'));
      assert.equal(ws.of('error').find((e) => e.code === 'INVALID_JSON')!.status, 400);
      // A topic outside the key's grants that is not reserved: FORBIDDEN, as before.
      const forbidden = await post(`${base}/channels/elsewhere/notify`, { payload: 'x' }, WIDE);
      assert.equal(forbidden.body.error.code, 'FORBIDDEN');
      const anonymous = await post(`${base}/channels/${t}/notify`, { payload: 'x' });
      assert.equal(anonymous.status, 401);
    } finally {
      for (const c of clients) c.close();
      await server.stop();
    }
  });

  test('a prefix cannot be used to build a reserved channel, and a prefix inside the namespace is refused', async () => {
    const server = new HeraldServer(herald, { port: 0, channelPrefix: 'her' });
    const base = await server.start();
    try {
      const r = await post(`${base}/channels/${encodeURIComponent('ald.jobs.events')}/notify`, { payload: 'x' });
      assert.equal(r.status, 403);
      assert.equal(r.body.error.code, 'RESERVED_TOPIC');
      assert.equal(server.gateway.channelOf('orders'), 'herorders');
    } finally {
      await server.stop();
    }
    assert.throws(() => new HeraldServer(herald, { port: 0, channelPrefix: 'herald.gw.' }), { code: 'INVALID_OPTION' });
  });
});
