import assert from 'node:assert/strict';
import { test } from 'node:test';
import { createHerald } from '../client.js';
import { freshDatabase } from '../../test/support/db.js';
import { SseClient } from '../../test/support/sse.js';
import { waitFor } from '../../test/support/wait.js';
import { WsClient } from '../../test/support/ws.js';
import { HeraldServer } from './server.js';

const handles = () => process.getActiveResourcesInfo().filter((r) => r !== 'FSReqCallback' && r !== 'TTYWrap' && r !== 'PipeWrap');

test('stop() closes every stream with a reason and leaves no socket or timer behind; start/stop are idempotent', async () => {
  const db = await freshDatabase();
  const before = handles().length;
  const herald = createHerald({ connectionString: db.url, notifier: { queueUsageIntervalMs: 0 } });
  const server = new HeraldServer(herald, { port: 0, token: 'lifecycle-token' });
  const base = await server.start();
  assert.equal(await server.start(), base);
  const sse = await SseClient.open(`${base}/channels/life/events?access_token=lifecycle-token`);
  await sse.until(() => sse.named('ready').length === 1);
  const ws = await WsClient.connect(`${base}/ws?access_token=lifecycle-token&topic=life`);
  await ws.until(() => ws.of('subscribed').length === 1);
  await server.stop();
  await server.stop();
  assert.equal(await ws.closed, 1001);
  await sse.done;
  assert.equal(JSON.parse(sse.named('close')[0].data).code, 'SHUTDOWN');
  assert.equal(server.clients, 0);
  assert.deepEqual(herald.notifier.channels(), []);
  await herald.close();
  await waitFor(() => handles().length <= before, { what: `handles back to ${before}: ${handles()}` });
  await db.drop();
});
