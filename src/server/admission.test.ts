import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { createHerald, type Herald } from '../client.js';
import { freshDatabase, type TestDatabase } from '../../test/support/db.js';
import { SseClient } from '../../test/support/sse.js';
import { waitFor } from '../../test/support/wait.js';
import { WsClient } from '../../test/support/ws.js';
import { HeraldServer, type ServerOptions } from './server.js';

const A = 'token-a-0123456789';
const B = 'token-b-0123456789';
const KEYS = [
  { name: 'a', key: A, grants: { admin: ['*'] } },
  { name: 'b', key: B, grants: { admin: ['*'] } },
];

/**
 * Every part's streaming endpoint, with a second path of the same kind (another LISTEN
 * channel where the endpoint has one per name).
 */
const ENDPOINTS = [
  { name: 'GET /jobs/events', path: (_i: number) => '/jobs/events', channelPerName: false },
  { name: 'GET /topics/<name>/events', path: (i: number) => `/topics/t${i % 2}/events`, channelPerName: false },
  { name: 'GET /changes/<table>/events', path: (i: number) => `/changes/public.table${i}/events`, channelPerName: true },
] as const;

describe('one admission path for every streaming endpoint', () => {
  let db: TestDatabase;
  let herald: Herald;
  const open: SseClient[] = [];
  const servers: HeraldServer[] = [];

  before(async () => {
    db = await freshDatabase();
    herald = createHerald({ connectionString: db.url, notifier: { queueUsageIntervalMs: 0 } });
    await herald.migrate();
    await herald.topics.create('t0');
    await herald.topics.create('t1');
  });

  after(async () => {
    for (const c of open) c.close();
    for (const s of servers) await s.stop();
    await herald.close();
    await db.drop();
  });

  async function serve(options: ServerOptions): Promise<{ server: HeraldServer; base: string }> {
    const server = new HeraldServer(herald, { port: 0, ...options });
    servers.push(server);
    return { server, base: await server.start() };
  }

  async function stream(url: string, token?: string): Promise<SseClient> {
    const c = await SseClient.open(url, token ? { authorization: `Bearer ${token}` } : {});
    open.push(c);
    if (c.status === 200) await c.until(() => c.named('ready').length === 1, 15_000, `ready of ${url}`);
    return c;
  }

  function refusal(c: SseClient): { status: number; code: string } {
    return { status: c.status, code: c.status === 200 ? '' : JSON.parse(c.body).error.code };
  }

  async function closeAll(server: HeraldServer, clients: SseClient[]): Promise<void> {
    for (const c of clients) c.close();
    await waitFor(() => server.clients === 0, { what: 'every stream closed' });
    assert.deepEqual(server.gateway.channelsInUse(), [], 'no channel is left reserved');
  }

  for (const e of ENDPOINTS) {
    test(`${e.name}: connections per token`, async () => {
      const { server, base } = await serve({ apiKeys: KEYS, maxConnectionsPerToken: 2 });
      try {
        const a1 = await stream(base + e.path(0), A);
        const a2 = await stream(base + e.path(1), A);
        assert.equal(a1.status, 200);
        assert.equal(a2.status, 200);
        const a3 = await stream(base + e.path(2), A);
        assert.deepEqual(refusal(a3), { status: 429, code: 'TOO_MANY_CONNECTIONS' });
        // The limit is the token's: gateway streams count too, and another token is not affected.
        const ws = await WsClient.connect(`${base}/ws?access_token=${A}`);
        assert.equal(await ws.closed, 4429);
        const b1 = await stream(base + e.path(0), B);
        assert.equal(b1.status, 200);
        // A closed stream gives its place back.
        a1.close();
        await waitFor(() => server.limits.connections('key:a') === 1, { what: 'a1 released' });
        const a4 = await stream(base + e.path(3), A);
        assert.equal(a4.status, 200);
        await closeAll(server, [a2, b1, a4]);
      } finally {
        await server.stop();
      }
    });

    test(`${e.name}: maxClients`, async () => {
      const { server, base } = await serve({ maxClients: 2 });
      try {
        const c1 = await stream(base + e.path(0));
        const c2 = await stream(`${base}/channels/other/events`);
        assert.equal(c1.status, 200);
        assert.equal(c2.status, 200);
        assert.deepEqual(refusal(await stream(base + e.path(1))), { status: 503, code: 'TOO_MANY_CLIENTS' });
        assert.equal(server.clients, 2);
        await closeAll(server, [c1, c2]);
      } finally {
        await server.stop();
      }
    });

    test(`${e.name}: its LISTEN channel counts against maxChannels`, async () => {
      const { server, base } = await serve({ maxChannels: 2 });
      try {
        const t1 = await stream(`${base}/channels/one/events`);
        const t2 = await stream(`${base}/channels/two/events`);
        // Two gateway topics hold both channels: the endpoint's channel is one too many.
        assert.deepEqual(refusal(await stream(base + e.path(0))), { status: 503, code: 'TOO_MANY_CHANNELS' });
        t2.close();
        await waitFor(() => server.gateway.channelsInUse().length === 1, { what: 'topic two released' });
        const s0 = await stream(base + e.path(0));
        assert.equal(s0.status, 200);
        // The channel is now held: a gateway topic cannot take it...
        assert.deepEqual(refusal(await stream(`${base}/channels/three/events`)), { status: 503, code: 'TOO_MANY_CHANNELS' });
        // ...and a second stream on the same name costs nothing more; another name with its own channel is refused.
        const again = await stream(base + e.path(0));
        assert.equal(again.status, 200);
        const other = await stream(base + e.path(1));
        if (e.channelPerName) assert.deepEqual(refusal(other), { status: 503, code: 'TOO_MANY_CHANNELS' });
        else assert.equal(other.status, 200, 'the same channel for every name');
        assert.equal(server.gateway.channelsInUse().length, 2);
        await closeAll(server, [t1, s0, again, other]);
      } finally {
        await server.stop();
      }
    });
  }

  test('with --max-channels 20, 60 /changes streams LISTEN on at most 20 channels; a token limited to 5 holds 5 streams', async () => {
    const { server, base } = await serve({ apiKeys: KEYS, maxChannels: 20, maxConnectionsPerToken: 5 });
    try {
      const clients: SseClient[] = [];
      const statuses: number[] = [];
      for (let i = 0; i < 60; i++) {
        const c = await stream(`${base}/changes/public.flood${i}/events`, i % 2 ? A : B);
        statuses.push(c.status);
        clients.push(c);
      }
      assert.equal(statuses.filter((s) => s === 200).length, 10, 'two tokens of five streams each');
      assert.equal(herald.notifier.channels().filter((c) => c.includes('.changes:')).length, 10);
      await closeAll(server, clients.filter((c) => c.status === 200));
    } finally {
      await server.stop();
    }
    const { server: many, base: url } = await serve({ maxChannels: 20 });
    try {
      const opened: SseClient[] = [];
      for (let i = 0; i < 60; i++) opened.push(await stream(`${url}/changes/public.flood${i}/events`));
      assert.equal(opened.filter((c) => c.status === 200).length, 20);
      assert.ok(opened.slice(20).every((c) => refusal(c).code === 'TOO_MANY_CHANNELS'));
      assert.equal(herald.notifier.channels().filter((c) => c.includes('.changes:')).length, 20);
      await closeAll(many, opened.filter((c) => c.status === 200));
    } finally {
      await many.stop();
    }
  });

  test('durable streams over WebSocket and /events count their LISTEN channel too', async () => {
    const { server, base } = await serve({ maxChannels: 1 });
    try {
      const t = await stream(`${base}/channels/one/events`);
      const ws = await WsClient.connect(`${base}/ws`);
      const r = await ws.request({ type: 'subscribe', stream: 'topic/t0' });
      assert.equal(r.code, 'TOO_MANY_CHANNELS');
      assert.deepEqual(refusal(await stream(`${base}/events?stream=topic/t0`)), { status: 503, code: 'TOO_MANY_CHANNELS' });
      const urlStream = await WsClient.connect(`${base}/ws?stream=topic/t0`);
      assert.equal(await urlStream.closed, 4429);
      assert.match(urlStream.closeReason, /TOO_MANY_CHANNELS/);
      t.close();
      await waitFor(() => server.gateway.channelsInUse().length === 0, { what: 'topic one released' });
      assert.equal((await ws.request({ type: 'subscribe', stream: 'topic/t0' })).type, 'subscribed');
      assert.deepEqual(server.gateway.channelsInUse(), [herald.topics.channel]);
      assert.equal((await ws.request({ type: 'unsubscribe', stream: 'topic/t0' })).type, 'unsubscribed');
      assert.deepEqual(server.gateway.channelsInUse(), []);
      ws.close();
      await waitFor(() => server.clients === 0, { what: 'ws closed' });
    } finally {
      await server.stop();
    }
  });

  test('a waiting long poll (GET /mailbox/<to>?wait=) is admitted like a stream: per token and maxClients', async () => {
    const { server, base } = await serve({ apiKeys: KEYS, maxConnectionsPerToken: 1, maxClients: 2 });
    const headers = (t: string) => ({ authorization: `Bearer ${t}` });
    const first = new AbortController();
    const firstPoll = fetch(`${base}/mailbox/lp-a?wait=300`, { headers: headers(A), signal: first.signal }).catch((e: Error) => e);
    try {
      await waitFor(() => server.clients === 1, { what: 'the first long poll admitted' });
      // Token a already holds its one connection: a second waiting poll is refused at once.
      const second = await fetch(`${base}/mailbox/lp-a?wait=300`, { headers: headers(A) });
      assert.equal(second.status, 429);
      assert.equal((await second.json()).error.code, 'TOO_MANY_CONNECTIONS');
      // A poll that does not wait holds nothing and is not limited.
      const quick = await fetch(`${base}/mailbox/lp-a?wait=0`, { headers: headers(A) });
      assert.equal(quick.status, 204);
      // Token b takes the second client slot; a stream of b is then past maxClients.
      const other = new AbortController();
      const otherPoll = fetch(`${base}/mailbox/lp-b?wait=300`, { headers: headers(B), signal: other.signal }).catch((e: Error) => e);
      await waitFor(() => server.clients === 2, { what: 'the second long poll admitted' });
      const third = await fetch(`${base}/jobs/events`, { headers: headers(B) });
      assert.equal(third.status, 503);
      assert.equal((await third.json()).error.code, 'TOO_MANY_CLIENTS');
      other.abort();
      await otherPoll;
      // The first poll is answered by a send; its slot is released.
      await herald.mailbox.send({ to: 'lp-a', payload: 'for the poll' });
      const res = await firstPoll;
      assert.ok(res instanceof Response);
      assert.equal(res.status, 200);
      assert.equal((await res.json()).payload, 'for the poll');
      await waitFor(() => server.clients === 0, { what: 'both long polls released' });
    } finally {
      first.abort();
    }
  });
});
