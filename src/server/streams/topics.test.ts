import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Herald } from '../../client.js';
import { useServer } from '../../../test/support/server.js';
import { WsClient } from '../../../test/support/ws.js';

let herald: Herald;
let base: string;
useServer({}, (f) => ({ herald, base } = f));

test('topics part as a durable gateway stream: WebSocket subscribe, resume after a position, unknown topic refused', async () => {
  const m1 = await herald.topics.publish('orders', { n: 1 }, { waitForPosition: true });
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
