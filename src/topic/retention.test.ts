/**
 * Retention drops whole segments. A group whose position falls out of retention gets
 * a `behind` event (and a whole-topic reader a TopicRetentionError) naming the oldest
 * retained position: its messages are never silently skipped.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Herald } from '../index.js';
import { useHerald } from '../../test/support/herald.js';
import { waitFor } from '../../test/support/wait.js';
import { TopicRetentionError, type BehindInfo } from './types.js';

let herald: Herald;
// topics: a cluster of the file's own (a test here holds transactions open on purpose; see freshDatabase)
// The test drives retention itself: no maintenance service runs it behind its back.
useHerald({ maintenance: { enabled: false } }, (_db, h) => {
  herald = h;
}, { isolated: true });

test('a group behind retention gets the behind event with the oldest position, not a skip', async () => {
  await herald.topics.create('ret', { partitions: 2, segmentSize: 100, retentionMs: 0 });
  const fastSeen: number[] = [];
  const fast = herald.topics.consumer<number>('ret', 'fast', ({ messages }) => void fastSeen.push(...messages.map((m) => m.payload)));
  await fast.start();
  await herald.topics.createGroup('ret', 'slow', 'earliest');
  const published = await herald.topics.publishMany('ret', Array.from({ length: 350 }, (_, i) => ({ payload: i + 1 })), { waitForPosition: true });
  await waitFor(() => fastSeen.length === 350);
  const before = (await herald.topics.stats('ret')).groups.find((g) => g.name === 'slow')!;

  assert.equal(await herald.topics.maintain('ret'), 3, 'three full segments dropped');
  const stats = await herald.topics.stats('ret');
  assert.equal(stats.messages, 50);

  const slowSeen: number[] = [];
  const slow = herald.topics.consumer<number>('ret', 'slow', ({ messages }) => void slowSeen.push(...messages.map((m) => m.payload)));
  const behind: BehindInfo[] = [];
  slow.on('topic:behind', (b) => behind.push(b));
  const fastBehind: unknown[] = [];
  fast.on('topic:behind', (b) => fastBehind.push(b));
  await slow.start();
  await waitFor(() => behind.length === 2, { what: 'behind events for both partitions' });
  const oldest = published[300].position;
  for (const b of behind) {
    assert.equal(b.group, 'slow');
    assert.equal(b.oldestPosition, oldest);
    assert.ok((b as BehindInfo & { error: unknown }).error instanceof TopicRetentionError);
  }
  // Nothing was delivered and the position did not move: the loss is reported, not skipped over.
  assert.deepEqual(slowSeen, []);
  const after1 = (await herald.topics.stats('ret')).groups.find((g) => g.name === 'slow')!;
  assert.deepEqual(after1.partitions.map((p) => p.position), before.partitions.map((p) => p.position));

  // A whole-topic reader from an old position gets the typed error too.
  await assert.rejects(herald.topics.read('ret', { after: published[10].position! }), (err: unknown) => {
    assert.ok(err instanceof TopicRetentionError);
    assert.equal(err.code, 'RETENTION');
    assert.equal(err.info.oldestPosition, oldest);
    return true;
  });

  // The fast group is not behind and keeps going after the drop.
  await herald.topics.publish('ret', 351);
  await waitFor(() => fastSeen.length === 351);
  assert.deepEqual(fastBehind, []);

  // Resetting the slow group to the earliest retained message resumes it.
  await herald.topics.resetGroup('ret', 'slow', 'earliest');
  await waitFor(() => slowSeen.length === 51, { what: 'slow group resumed' });
  assert.deepEqual([...slowSeen].sort((a, b) => a - b), Array.from({ length: 51 }, (_, i) => 301 + i));
  await slow.stop();
  await fast.stop();
});

test('retention by size drops the oldest full segments only', async () => {
  await herald.topics.create('size', { partitions: 1, segmentSize: 50, retentionBytes: 1 });
  await herald.topics.publishMany('size', Array.from({ length: 120 }, (_, i) => ({ payload: { i, pad: 'x'.repeat(200) } })), { waitForPosition: true });
  assert.equal(await herald.topics.maintain('size'), 2);
  const s = await herald.topics.stats('size');
  assert.equal(s.messages, 20);
  const r = await waitFor(async () => {
    const x = await herald.topics.read('size', { after: 'earliest' });
    return x.messages.length === 20 ? x : undefined;
  });
  assert.deepEqual(r.messages.map((m) => (m.payload as { i: number }).i), Array.from({ length: 20 }, (_, i) => 100 + i));
});
