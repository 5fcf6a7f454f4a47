import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { createHerald, type Herald } from '../../client.js';
import { freshDatabase, type TestDatabase } from '../../../test/support/db.js';
import { WsClient } from '../../../test/support/ws.js';
import { HeraldServer } from '../server.js';

let db: TestDatabase;
let herald: Herald;
let server: HeraldServer;
let base: string;
before(async () => {
  db = await freshDatabase();
  herald = createHerald({ connectionString: db.url });
  server = new HeraldServer(herald, { port: 0 });
  base = await server.start();
});
after(async () => {
  await server.stop();
  await herald.close();
  await db.drop();
});

test('topics part as a durable gateway stream: WebSocket subscribe, resume after a position, unknown topic refused', async () => {
  const m1 = await herald.topics.publish('orders', { n: 1 });
  await herald.topics.publish('orders', { n: 2 });
  const ws = await WsClient.connect(`${base}/ws`);
  assert.equal((await ws.request({ type: 'subscribe', stream: 'topic/orders', lastEventId: m1.position })).type, 'subscribed');
  await ws.until(() => ws.of('event').length === 1);
  await herald.topics.publish('orders', { n: 3 });
  await ws.until(() => ws.of('event').length === 2);
  assert.deepEqual(ws.of('event').map((e) => JSON.parse(e.data).payload.n), [2, 3]);
  assert.equal(ws.of('event')[0].stream, 'topic/orders');
  assert.equal(ws.of('gap').length, 0);
  const missing = await ws.request({ type: 'subscribe', stream: 'topic/nope' });
  assert.equal(missing.code, 'NOT_FOUND');
  ws.close();
});
