import assert from 'node:assert/strict';
import { after, before, test } from 'node:test';
import { connect, nanos, type NatsConnection } from '@nats-io/transport-node';
import { jetstreamManager } from '@nats-io/jetstream';
import { createHerald, type Herald } from '../client.js';
import { freshDatabase, type TestDatabase } from '../../test/support/db.js';
import { natsServerBinary, startNatsServer, type NatsServer } from '../../test/support/nats.js';
import { waitFor } from '../../test/support/wait.js';
import { jetstreamSink } from './jetstream.js';

const skip = natsServerBinary() ? false : 'nats-server is not installed (apt-get install nats-server)';

let db: TestDatabase;
let herald: Herald;
let nats: NatsServer;
let nc: NatsConnection;

before(async () => {
  if (skip) return;
  db = await freshDatabase();
  herald = createHerald({ connectionString: db.url, notifier: { queueUsageIntervalMs: 0 } });
  nats = (await startNatsServer())!;
  nc = await connect({ servers: nats.url });
});
after(async () => {
  if (skip) return;
  await nc.close();
  await nats.dispose();
  await herald.close();
  await db.drop();
});

test('JetStream holds each event id once, even when relays republish it', { skip }, async () => {
  const jsm = await jetstreamManager(nc);
  await jsm.streams.add({ name: 'HERALD', subjects: ['herald.>'], duplicate_window: nanos(120_000) });
  const total = 60;
  const ids = await herald.outbox.addMany(Array.from({ length: total }, (_, i) => ({ type: 'order.created', key: `o${i % 6}`, payload: { n: i }, headers: { tenant: 't1' } })));
  const sink = jetstreamSink({ servers: nats.url });
  // The first attempt of every event publishes to JetStream and then "loses" the
  // acknowledgement (throws), like a relay that dies after publishing: the retry
  // publishes the same event id again.
  const tried = new Set<string>();
  const relay = herald.outbox.relay({
    sink: {
      async publish(e) {
        await sink.publish(e);
        if (!tried.has(e.id)) {
          tried.add(e.id);
          throw new Error('ack lost');
        }
      },
      close: () => sink.close!(),
    },
    retryBaseDelayMs: 10,
    pollIntervalMs: 50,
  });
  await waitFor(async () => (await herald.outbox.stats()).pending === 0, { timeoutMs: 30_000, what: 'every event published' });
  // And once more, wholesale: as if every mark were lost.
  await herald.driver.executor.query(`UPDATE herald.outbox_events SET published_at = NULL WHERE id = ANY($1::uuid[])`, [ids]);
  await herald.outbox.redrive();
  await waitFor(async () => (await herald.outbox.stats()).pending === 0, { timeoutMs: 30_000, what: 'every event republished' });
  await relay.stop();
  assert.equal(sink.duplicates, 2 * total, 'JetStream reported every republish as a duplicate');
  const info = await jsm.streams.info('HERALD');
  assert.equal(info.state.messages, total, 'one message per event');
  const seen: string[] = [];
  for (let seq = 1; seq <= info.state.last_seq; seq++) {
    const m = await jsm.streams.getMessage('HERALD', { seq });
    assert.ok(m);
    seen.push(m.header.get('Nats-Msg-Id'));
    assert.equal(m.subject, 'herald.order.created');
    assert.equal(m.header.get('tenant'), 't1');
  }
  assert.deepEqual(seen.sort(), [...ids].sort());
});
