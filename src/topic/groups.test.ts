/**
 * Fan-out at volume: 4 groups each receive all of 50,000 messages (scaled); with 4
 * consumers in one group, and with one consumer of `concurrency` 4 in another, every
 * key keeps its order; a reset to the earliest position replays exactly the same
 * sequence per key partition.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Herald } from '../index.js';
import { useHerald } from '../../test/support/herald.js';
import { scaled } from '../../test/support/scale.js';
import { waitFor, waitForCount } from '../../test/support/wait.js';
import type { TopicConsumer } from './consumer.js';
import type { TopicMessage } from './types.js';

let herald: Herald;
// topics: a cluster of the file's own (a test here holds transactions open on purpose; see freshDatabase)
useHerald({ poolSize: 12 }, (_db, h) => {
  herald = h;
}, { isolated: true });

type Body = { k: number; n: number };

test('4 groups each receive all of 50,000 messages; 4 consumers, or one of concurrency 4, keep per-key order; replay yields the same sequence', async () => {
  const total = scaled(50_000, 1000);
  const keys = 100;
  await herald.topics.create('volume', { partitions: 8 });
  const groups = { solo1: 1, solo2: 1, quad: 4, lanes: 1 } as const;
  /** Per group, per key partition, the positions in the order they were handed out. */
  const seq = new Map<string, Map<number, string[]>>();
  const perKey = new Map<string, Map<number, number[]>>();
  const count = new Map<string, number>();
  const consumers: TopicConsumer<Body>[] = [];
  const handler = (group: string) => ({ messages, partition }: { messages: TopicMessage<Body>[]; partition: number }) => {
    const s = seq.get(group)!;
    if (!s.has(partition)) s.set(partition, []);
    const pk = perKey.get(group)!;
    for (const m of messages) {
      s.get(partition)!.push(m.position);
      if (!pk.has(m.payload.k)) pk.set(m.payload.k, []);
      pk.get(m.payload.k)!.push(m.payload.n);
    }
    count.set(group, count.get(group)! + messages.length);
  };
  // The lanes group: one consumer working on 4 key partitions at once. Its first
  // handler waits (bounded) for a second one to start: they overlap.
  let inFlight = 0;
  let overlapped = false;
  const lanes = handler('lanes');
  const lanesHandler = async (batch: { messages: TopicMessage<Body>[]; partition: number }) => {
    inFlight++;
    try {
      if (inFlight >= 2) overlapped = true;
      if (!overlapped) await waitFor(() => inFlight >= 2 || overlapped, { timeoutMs: 15_000, what: 'a second handler at once' }).then(() => (overlapped = true), () => {});
      lanes(batch);
    } finally {
      inFlight--;
    }
  };
  for (const [group, n] of Object.entries(groups)) {
    seq.set(group, new Map());
    perKey.set(group, new Map());
    count.set(group, 0);
    if (group === 'lanes') consumers.push(herald.topics.consumer<Body>('volume', group, lanesHandler, { batchSize: 500, concurrency: 4 }));
    else for (let i = 0; i < n; i++) consumers.push(herald.topics.consumer<Body>('volume', group, handler(group), { batchSize: 500 }));
  }
  await Promise.all(consumers.map((c) => c.start()));

  // Publish while the groups consume: batches of 500, keys round-robin, n counts per key.
  const next = new Array(keys).fill(0);
  for (let sent = 0; sent < total; ) {
    const batch = [];
    for (let i = 0; i < 500 && sent < total; i++, sent++) {
      const k = sent % keys;
      batch.push({ payload: { k, n: next[k]++ }, key: `key-${k}` });
    }
    await herald.topics.publishMany('volume', batch);
  }
  for (const group of Object.keys(groups)) {
    await waitForCount(() => count.get(group)!, total, { what: `group ${group}` });
  }
  for (const group of Object.keys(groups)) {
    assert.equal(count.get(group), total, `group ${group} got each message once`);
    for (const [k, ns] of perKey.get(group)!) {
      assert.deepEqual(ns, Array.from({ length: next[k] }, (_, i) => i), `group ${group} key ${k} in order and complete`);
    }
  }
  // The quad group's work was really shared.
  const quad = consumers.slice(2, 6);
  assert.ok(quad.filter((c) => c.consumed > 0).length >= 2, `work shared: ${quad.map((c) => c.consumed)}`);
  assert.ok(overlapped, 'the concurrency-4 consumer ran two handlers at once');
  await Promise.all(consumers.map((c) => c.stop()));

  // Replay from the earliest position: the same sequence per key partition.
  const firstSeq = new Map<string, Map<number, string[]>>();
  for (const group of ['solo1', 'quad', 'lanes']) {
    firstSeq.set(group, seq.get(group)!);
    seq.set(group, new Map());
    perKey.set(group, new Map());
    count.set(group, 0);
    assert.equal(await herald.topics.resetGroup('volume', group, 'earliest'), 8);
  }
  const replayers = [
    herald.topics.consumer<Body>('volume', 'solo1', handler('solo1'), { batchSize: 500 }),
    ...Array.from({ length: 4 }, () => herald.topics.consumer<Body>('volume', 'quad', handler('quad'), { batchSize: 500 })),
    herald.topics.consumer<Body>('volume', 'lanes', handler('lanes'), { batchSize: 500, concurrency: 4 }),
  ];
  await Promise.all(replayers.map((c) => c.start()));
  for (const group of ['solo1', 'quad', 'lanes']) await waitForCount(() => count.get(group)!, total, { what: `replay ${group}` });
  await Promise.all(replayers.map((c) => c.stop()));
  const whole = await herald.topics.read<Body>('volume', { limit: 100_000 });
  assert.equal(whole.messages.length, total);
  const expected = new Map<number, string[]>();
  for (const m of whole.messages) {
    if (!expected.has(m.partition)) expected.set(m.partition, []);
    expected.get(m.partition)!.push(m.position);
  }
  for (const group of ['solo1', 'quad', 'lanes']) {
    for (const [p, positions] of expected) {
      assert.deepEqual(firstSeq.get(group)!.get(p), positions, `first pass of ${group} partition ${p}`);
      assert.deepEqual(seq.get(group)!.get(p), positions, `replay of ${group} partition ${p}`);
    }
  }
});
