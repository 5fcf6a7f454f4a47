/** A consumer claims its next batch (another key partition) while a handler runs; handlers still run `concurrency` at a time. */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import type { Herald } from '../client.js';
import { useHerald } from '../../test/support/herald.js';
import { waitFor } from '../../test/support/wait.js';

let herald: Herald;
let dbName: string;
useHerald({}, async (d, h) => {
  herald = h;
  dbName = (await h.driver.executor.query<{ db: string }>('SELECT current_database() AS db')).rows[0].db;
});

/** Transactions of this database parked between statements after a claim's read (a batch whose handler runs or waits). */
async function parkedClaims(): Promise<number> {
  const { rows } = await herald.driver.executor.query<{ n: number }>(
    `SELECT count(*)::int AS n FROM pg_stat_activity WHERE datname = $1 AND state = 'idle in transaction' AND query LIKE '%topic_claim_batch(%'`,
    [dbName],
  );
  return rows[0].n;
}

describe('topic consumer: the next batch is claimed while a handler runs', () => {
  for (const concurrency of [1, 2]) {
    it(`concurrency ${concurrency}: one more batch claimed ahead, at most ${concurrency} handler(s) at once, every message once and in key order`, async () => {
      const topic = `prefetch-${concurrency}`;
      await herald.topics.create(topic, { partitions: 4 });
      await herald.topics.createGroup(topic, 'g', 'earliest');
      const N = 60;
      await herald.topics.publishMany(topic, Array.from({ length: N }, (_, i) => ({ payload: { i }, key: `k${i % 6}` })));
      let running = 0;
      let most = 0;
      let release!: () => void;
      const gate = new Promise<void>((resolve) => (release = resolve));
      const seen: number[] = [];
      const consumer = herald.topics.consumer<{ i: number }>(
        topic,
        'g',
        async ({ messages }) => {
          running++;
          most = Math.max(most, running);
          try {
            await gate; // the first batches wait here until the test has seen the batch claimed ahead
            for (const m of messages) seen.push(m.payload.i);
          } finally {
            running--;
          }
        },
        { batchSize: 5, concurrency },
      );
      try {
        await consumer.start();
        // `concurrency` batches in their handlers, and one more claimed, waiting for its turn.
        await waitFor(() => running === concurrency, { what: `${concurrency} handler(s) running` });
        await waitFor(async () => (await parkedClaims()) === concurrency + 1, { what: `${concurrency + 1} batches claimed at once` });
        assert.equal(running, concurrency, 'the batch claimed ahead has not started its handler');
        release();
        await waitFor(() => seen.length === N, { what: 'every message', progress: () => seen.length });
        assert.equal(most, concurrency);
        assert.equal(new Set(seen).size, N, 'each message once');
        for (let k = 0; k < 6; k++) {
          const mine = seen.filter((i) => i % 6 === k);
          assert.deepEqual(mine, [...mine].sort((a, b) => a - b), `key k${k} in order`);
        }
      } finally {
        release();
        await consumer.stop();
      }
    });
  }
  it('stop() while a batch claimed ahead waits for its turn: it rolls back unhandled, no attempt used, and the next consumer gets it', async () => {
    const topic = 'prefetch-stop';
    await herald.topics.create(topic, { partitions: 4 });
    await herald.topics.createGroup(topic, 'g', 'earliest');
    const N = 40;
    await herald.topics.publishMany(topic, Array.from({ length: N }, (_, i) => ({ payload: { i }, key: `k${i % 4}` })));
    let release!: () => void;
    const gate = new Promise<void>((resolve) => (release = resolve));
    const first: number[] = [];
    const consumer = herald.topics.consumer<{ i: number }>(topic, 'g', async ({ messages }) => {
      await gate;
      for (const m of messages) first.push(m.payload.i);
    }, { batchSize: 5 });
    try {
      await consumer.start();
      await waitFor(async () => (await parkedClaims()) === 2, { what: 'a batch in its handler and one claimed ahead' });
      const stopped = consumer.stop();
      release();
      await stopped;
    } finally {
      release();
      await consumer.stop();
    }
    assert.equal(first.length, 5, 'only the batch whose handler ran');
    assert.equal(await parkedClaims(), 0);
    // The batch claimed ahead used no attempt: its first message is not held to a batch of one.
    const rest: number[][] = [];
    const next = herald.topics.consumer<{ i: number }>(topic, 'g', ({ messages }) => void rest.push(messages.map((m) => m.payload.i)), { batchSize: 5 });
    try {
      await next.start();
      await waitFor(() => rest.flat().length === N - 5, { what: 'the rest', progress: () => rest.flat().length });
      assert.ok(rest.every((b) => b.length > 1), `batch sizes ${rest.map((b) => b.length).join(',')}`);
      assert.deepEqual([...first, ...rest.flat()].sort((a, b) => a - b), Array.from({ length: N }, (_, i) => i));
    } finally {
      await next.stop();
    }
  });
});
