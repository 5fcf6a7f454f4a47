/** A publish without tx goes straight into the log when the topic's sequencer lock is free (migration 031). */
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import pg from 'pg';
import type { Herald } from '../client.js';
import { useHerald } from '../../test/support/herald.js';
import { waitFor } from '../../test/support/wait.js';

let herald: Herald;
let url: string;
useHerald({}, (d, h) => {
  url = d.url;
  herald = h;
});

const ex = () => herald.driver.executor;

async function topicId(name: string): Promise<number> {
  return (await ex().query<{ id: number }>(`SELECT id FROM herald.topics WHERE name = $1`, [name])).rows[0].id;
}

async function pendingOf(name: string): Promise<number> {
  return (await ex().query<{ n: number }>(`SELECT count(*)::int AS n FROM herald.topic_pending WHERE topic_id = $1`, [await topicId(name)])).rows[0].n;
}

/** Log rows of the topic by publish id: position and payload. */
async function logOf(name: string): Promise<Map<string, { position: bigint; payload: { i: number } }>> {
  const { rows } = await ex().query<{ publish_id: string; id: string; payload: { i: number } }>(
    `SELECT publish_id::text, id::text, payload FROM herald.topic_messages WHERE topic_id = $1`,
    [await topicId(name)],
  );
  return new Map(rows.map((r) => [r.publish_id, { position: BigInt(r.id), payload: r.payload }]));
}

describe('topic publish straight into the log', () => {
  it('a publish without tx that waits for no other caller is in the log, with its position, when it returns: no sequencer run needed', async () => {
    await herald.topics.create('direct', { partitions: 2 });
    const ms: { id: string }[] = [];
    for (let i = 0; i < 30; i++) ms.push(await herald.topics.publish('direct', { i }, { key: `k${i % 3}` }));
    // Read at once: a background run would have had to be awaited.
    const log = await logOf('direct');
    assert.equal(await pendingOf('direct'), 0);
    for (const [i, m] of ms.entries()) assert.deepEqual(log.get(m.id)?.payload, { i });
    // One key's messages in publish order.
    for (let k = 0; k < 3; k++) {
      const mine = ms.filter((_, i) => i % 3 === k).map((m) => log.get(m.id)!.position);
      assert.deepEqual(mine, [...mine].sort((a, b) => (a < b ? -1 : 1)));
    }
  });

  it('messages committed into topic_pending before a publish take their positions before its messages', async () => {
    await herald.topics.create('direct-order', { partitions: 1 });
    const first = await herald.transaction((tx) => herald.topics.publishMany('direct-order', [{ payload: { i: 0 }, key: 'k' }, { payload: { i: 1 }, key: 'k' }], { tx }));
    assert.equal(await pendingOf('direct-order'), 2, 'a publish in a transaction is pending until a run');
    const next = await herald.topics.publish('direct-order', { i: 2 }, { key: 'k' });
    assert.equal(await pendingOf('direct-order'), 0, 'the publish moved them first');
    const log = await logOf('direct-order');
    const positions = [...first, next].map((m) => log.get(m.id)!.position);
    assert.deepEqual(positions, [...positions].sort((a, b) => (a < b ? -1 : 1)));
    const read = await herald.topics.read<{ i: number }>('direct-order', { after: 'earliest' });
    assert.deepEqual(read.messages.map((m) => m.payload.i), [0, 1, 2]);
  });

  it('while another session holds the topic sequencer lock, a publish does not wait: pending, moved once the lock is free', async () => {
    await herald.topics.create('direct-held', { partitions: 2 });
    const locker = new pg.Client({ connectionString: url });
    await locker.connect();
    const key = `pgherald.topic-seq:${await topicId('direct-held')}`;
    try {
      await locker.query(`SELECT pg_advisory_lock(hashtextextended($1, 0))`, [key]);
      const m = await herald.topics.publish('direct-held', { i: 1 });
      assert.equal(await pendingOf('direct-held'), 1);
      assert.equal((await logOf('direct-held')).size, 0);
      await locker.query(`SELECT pg_advisory_unlock(hashtextextended($1, 0))`, [key]);
      await herald.topics.backgroundIdle(); // the run started after the publish was waiting for the lock
      assert.equal(await pendingOf('direct-held'), 0);
      assert.deepEqual((await logOf('direct-held')).get(m.id)?.payload, { i: 1 });
    } finally {
      await locker.end();
    }
  });

  it('the publish wakes the consumers of every process: a NOTIFY with the topic name once it committed', async () => {
    await herald.topics.create('direct-wake', { partitions: 2 });
    const listener = new pg.Client({ connectionString: url });
    await listener.connect();
    try {
      const heard: string[] = [];
      listener.on('notification', (n) => void (n.channel === herald.topics.channel && heard.push(n.payload ?? '')));
      await listener.query(`LISTEN "${herald.topics.channel.replace(/"/g, '""')}"`);
      const m = await herald.topics.publish('direct-wake', { i: 7 });
      await waitFor(() => heard.includes('direct-wake'), { what: 'the wake-up of the topic' });
      // Sent after the commit: the message is there for whoever it wakes.
      assert.deepEqual((await logOf('direct-wake')).get(m.id)?.payload, { i: 7 });
      assert.equal(await pendingOf('direct-wake'), 0);
    } finally {
      await listener.end();
    }
  });

  it('a publish that finds no segment for its positions (another process used up the spare ones) goes pending, and is delivered', async () => {
    await herald.topics.create('direct-segments', { partitions: 2, segmentSize: 50 });
    await herald.topics.publish('direct-segments', { i: 0 }); // this process now knows the segments
    const id = await topicId('direct-segments');
    // Positions far past every segment, as if other processes had numbered many messages.
    await ex().query(`SELECT setval($1::regclass, 100000)`, [`herald.topic_seq_${id}`]);
    const m = await herald.topics.publish('direct-segments', { i: 1 });
    await herald.topics.backgroundIdle(); // the sequencer run makes the segment and numbers it
    assert.equal(await pendingOf('direct-segments'), 0);
    const got = (await logOf('direct-segments')).get(m.id);
    assert.deepEqual(got?.payload, { i: 1 });
    assert.ok(got!.position > 100000n);
  });

  it('publishes of several callers in one statement (a burst) go through topic_pending and a sequencer run', async () => {
    await herald.topics.create('direct-burst', { partitions: 2 });
    const ms = await Promise.all(Array.from({ length: 30 }, (_, i) => herald.topics.publish('direct-burst', { i }, { key: `k${i % 3}` })));
    assert.equal((await logOf('direct-burst')).size + (await pendingOf('direct-burst')), 30);
    await herald.topics.backgroundIdle();
    const log = await logOf('direct-burst');
    assert.equal(await pendingOf('direct-burst'), 0);
    for (const [i, m] of ms.entries()) assert.deepEqual(log.get(m.id)?.payload, { i });
  });

  it('a publishMany larger than a group statement goes through topic_pending and the sequencer', async () => {
    await herald.topics.create('direct-large', { partitions: 4 });
    const ms = await herald.topics.publishMany('direct-large', Array.from({ length: 1_500 }, (_, i) => ({ payload: { i }, key: `k${i % 5}` })));
    await herald.topics.backgroundIdle();
    const log = await logOf('direct-large');
    assert.equal(log.size, 1_500);
    assert.deepEqual(ms.map((m) => log.get(m.id)!.payload.i), Array.from({ length: 1_500 }, (_, i) => i));
  });
});
