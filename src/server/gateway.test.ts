import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { createHerald, type Herald } from '../client.js';
import { LISTEN_APPLICATION_NAME } from '../driver/types.js';
import { freshDatabase, terminateBackends, type TestDatabase } from '../../test/support/db.js';
import { scaled } from '../../test/support/scale.js';
import { SseClient } from '../../test/support/sse.js';
import { waitFor, waitForCount } from '../../test/support/wait.js';
import { WsClient } from '../../test/support/ws.js';
import { HttpError } from './http.js';
import { HeraldServer } from './server.js';
import type { DurableStreamSource, StreamSink } from './stream.js';

/**
 * A durable stream over a real table, as a part would write one: ids are the table's,
 * rows below `test_log_trim.upto` are gone (a gap), a NOTIFY wakes the catch-up query,
 * and `onListen` catches up after every (re)LISTEN. (Ids are inserted one statement at
 * a time here, so commit order is id order; a real topic needs the visibility horizon.)
 */
class TableSource implements DurableStreamSource {
  constructor(readonly herald: Herald) {}
  resource(name: string): string {
    if (!/^[a-z0-9]+$/.test(name)) throw new HttpError(404, 'NOT_FOUND', 'no such log');
    return `log/${name}`;
  }
  async open(name: string, after: string | null, sink: StreamSink): Promise<void> {
    const q = this.herald.driver.executor;
    let last: number;
    if (after === null) {
      last = Number((await q.query<{ m: string }>('SELECT coalesce(max(id), 0) AS m FROM test_log WHERE stream = $1', [name])).rows[0].m);
    } else {
      last = Number(after);
      const upto = Number((await q.query<{ u: string }>('SELECT coalesce(max(upto), 0) AS u FROM test_log_trim WHERE stream = $1', [name])).rows[0]?.u ?? 0);
      if (!Number.isFinite(last) || last < upto) {
        sink.gap({ after, reason: `events up to ${upto} were trimmed` });
        last = upto;
      }
    }
    let chain = Promise.resolve();
    const catchUp = () =>
      (chain = chain.then(async () => {
        if (sink.signal.aborted) return;
        const { rows } = await q.query<{ id: string; body: string }>('SELECT id, body FROM test_log WHERE stream = $1 AND id > $2 ORDER BY id', [name, last]);
        for (const r of rows) {
          if (!sink.event({ id: r.id, event: 'entry', data: r.body })) return;
          last = Number(r.id);
        }
      }).catch(() => {}));
    const sub = this.herald.listen('test_log_wake', () => void catchUp(), { onListen: () => void catchUp() });
    sink.signal.addEventListener('abort', () => void sub.close(), { once: true });
    await sub.established;
  }
}

describe('gateway fan-out', () => {
  let db: TestDatabase;
  let herald: Herald;
  let server: HeraldServer;
  let base: string;

  before(async () => {
    db = await freshDatabase();
    herald = createHerald({ connectionString: db.url, notifier: { queueUsageIntervalMs: 0 } });
    await herald.driver.executor.query('CREATE TABLE test_log (id bigserial PRIMARY KEY, stream text NOT NULL, body text NOT NULL); CREATE TABLE test_log_trim (stream text PRIMARY KEY, upto bigint NOT NULL)');
    // open mode (loopback, no credentials): every client is the anonymous principal
    server = new HeraldServer(herald, { port: 0, maxConnectionsPerToken: 10_000, maxBufferedBytes: 512 * 1024, channelPrefix: 'gw.' });
    server.gateway.registerStream('log', new TableSource(herald));
    base = await server.start();
  });

  after(async () => {
    await server.stop();
    assert.equal(server.clients, 0);
    assert.deepEqual(herald.notifier.channels(), [], 'stop() leaves no topic subscription behind');
    await herald.close();
    await db.drop();
  });

  test('a client that stops reading is disconnected with a reason while the others receive everything (SSE and WebSocket)', async () => {
    const fast = await SseClient.open(`${base}/channels/slow/events`);
    const fastWs = await WsClient.connect(`${base}/ws?topic=slow`);
    const slow = await SseClient.open(`${base}/channels/slow/events`);
    const slowWs = await WsClient.connect(`${base}/ws?topic=slow`);
    await fast.until(() => fast.named('ready').length === 1);
    await slow.until(() => slow.named('ready').length === 1);
    await fastWs.until(() => fastWs.of('subscribed').length === 1);
    await slowWs.until(() => slowWs.of('subscribed').length === 1);
    slow.pause();
    slowWs.ws.pause();
    const body = 'x'.repeat(4000);
    let sent = 0;
    const slowConns = () => server.connections().filter((c) => c.subscriptions.has('channel:slow'));
    // Send until both slow clients are cut: the kernel's socket buffers fill first.
    await waitFor(
      async () => {
        const batch = Array.from({ length: 50 }, (_, i) => ({ channel: 'gw.slow', payload: `${sent + i}:${body}` }));
        await herald.notifyMany(batch);
        sent += batch.length;
        return slowConns().length === 2 || sent > 20_000;
      },
      { timeoutMs: 60_000, what: 'slow consumers cut' },
    );
    await waitFor(() => slowConns().length === 2 && server.connections().length === 2, {
      what: `only the fast clients remain (${server.connections().map((c) => c.transport + ':' + c.closeReason)}, sent ${sent})`,
    });
    await fast.until(() => fast.named('notification').length === sent, 30_000, 'fast SSE client has everything');
    await fastWs.until(() => fastWs.of('event').length === sent, 30_000, 'fast WebSocket client has everything');
    assert.deepEqual(
      fast.named('notification').map((e) => Number(e.data.split(':')[0])),
      Array.from({ length: sent }, (_, i) => i),
      'in order, none missing',
    );
    const metrics = await server.metrics.registry.metrics();
    assert.match(metrics, /herald_gateway_disconnects_total\{transport="sse",reason="slow_consumer"\} 1/);
    assert.match(metrics, /herald_gateway_disconnects_total\{transport="ws",reason="slow_consumer"\} 1/);
    slowWs.ws.resume();
    assert.equal(await slowWs.closed, 4509, 'the WebSocket close code says why');
    fast.close();
    fastWs.close();
    slow.close();
  });

  test(`${scaled(2000)} concurrent SSE clients on loopback each receive every notification`, async () => {
    const n = scaled(2000);
    const count = 20;
    const clients: SseClient[] = [];
    for (let i = 0; i < n; i += 250) {
      const batch = await Promise.all(Array.from({ length: Math.min(250, n - i) }, () => SseClient.open(`${base}/channels/many/events`)));
      clients.push(...batch);
    }
    assert.ok(clients.every((c) => c.status === 200));
    await waitFor(() => clients.every((c) => c.named('ready').length === 1), { timeoutMs: 60_000, what: 'all ready' });
    await herald.notifyMany(Array.from({ length: count }, (_, i) => ({ channel: 'gw.many', payload: String(i) })));
    await waitForCount(() => clients.reduce((n, c) => n + Math.min(count, c.named('notification').length), 0), clients.length * count, { what: 'notifications received by all clients' });
    for (const c of clients) assert.deepEqual(c.named('notification').map((e) => e.data), Array.from({ length: count }, (_, i) => String(i)));
    assert.equal(herald.notifier.stats().channels['gw.many'].subscribers, 1, 'one notifier subscription for all clients');
    for (const c of clients) c.close();
    await waitFor(() => server.clients === 0, { what: 'clients gone' });
  });

  test('resume by Last-Event-ID replays what was missed; an unknown id or a lost listen connection sends a gap', async () => {
    const holder = await SseClient.open(`${base}/channels/resume/events`);
    await holder.until(() => holder.named('ready').length === 1);
    const a = await SseClient.open(`${base}/channels/resume/events`);
    await a.until(() => a.named('ready').length === 1);
    await herald.notifyMany(['1', '2'].map((payload) => ({ channel: 'gw.resume', payload })));
    await a.until(() => a.named('notification').length === 2);
    const lastId = a.named('notification')[1].id!;
    a.close();
    await waitFor(() => server.connections().length === 1);
    await herald.notifyMany(['3', '4'].map((payload) => ({ channel: 'gw.resume', payload })));
    await holder.until(() => holder.named('notification').length === 4);
    const b = await SseClient.open(`${base}/channels/resume/events`, { 'last-event-id': lastId });
    await b.until(() => b.named('notification').length === 2);
    assert.deepEqual(b.named('notification').map((e) => e.data), ['3', '4']);
    assert.equal(b.named('gap').length, 0);

    const c = await SseClient.open(`${base}/channels/resume/events?lastEventId=ffffffff-1`);
    await c.until(() => c.named('gap').length === 1);
    assert.match(JSON.parse(c.named('gap')[0].data).reason, /unknown event id/);

    const ws = await WsClient.connect(`${base}/ws`);
    assert.equal((await ws.request({ type: 'subscribe', topic: 'resume', lastEventId: lastId })).type, 'subscribed');
    await ws.until(() => ws.of('event').length === 2);
    assert.deepEqual(ws.of('event').map((e) => e.data), ['3', '4']);

    // The listen connection dies: notifications in between may be lost, so every live client is told.
    // Found by its application name, whatever statement it ran last. A reconnect may be
    // cut again by a later fault of the same kind: each one is a gap, so at least one.
    assert.ok((await terminateBackends(db.name, { applicationName: LISTEN_APPLICATION_NAME })) >= 1, 'the listen session was terminated');
    await b.until(() => b.named('gap').length >= 1, 30_000, 'gap after the listen connection was lost');
    await ws.until(() => ws.of('gap').length >= 1);
    await herald.notify('gw.resume', '5');
    await b.until(() => b.named('notification').some((e) => e.data === '5'));
    for (const x of [holder, b, c]) x.close();
    ws.close();
  });

  test('durable streams: live events, resume after Last-Event-ID, and an explicit gap for trimmed events', async () => {
    const q = herald.driver.executor;
    const add = async (body: string) => {
      await q.query("INSERT INTO test_log (stream, body) VALUES ('orders', $1)", [body]);
      await q.query("SELECT pg_notify('test_log_wake', 'orders')");
    };
    const live = await SseClient.open(`${base}/streams/log/orders/events`);
    await live.until(() => live.named('ready').length === 1);
    await add('a');
    await add('b');
    await live.until(() => live.named('entry').length === 2);
    const [first] = live.named('entry');
    await add('c');
    const resumed = await SseClient.open(`${base}/streams/log/orders/events`, { 'last-event-id': first.id! });
    await resumed.until(() => resumed.named('entry').length === 2);
    assert.deepEqual(resumed.named('entry').map((e) => e.data), ['b', 'c']);
    assert.equal(resumed.named('gap').length, 0);

    await q.query("INSERT INTO test_log_trim VALUES ('orders', $1)", [Number(first.id) + 1]);
    const ws = await WsClient.connect(`${base}/ws`);
    assert.equal((await ws.request({ type: 'subscribe', stream: 'log/orders', lastEventId: first.id })).type, 'subscribed');
    await ws.until(() => ws.of('event').length === 1);
    assert.equal(ws.of('gap').length, 1, 'gap before the first event after the hole');
    assert.ok(ws.messages.indexOf(ws.of('gap')[0]) < ws.messages.indexOf(ws.of('event')[0]));
    assert.equal(ws.of('event')[0].data, 'c');
    const unknown = await SseClient.open(`${base}/streams/nope/x/events`);
    assert.equal(unknown.status, 404);
    await unknown.done;
    for (const x of [live, resumed]) x.close();
    ws.close();
  });
});
