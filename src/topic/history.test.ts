/**
 * Claim cost is flat with history: a claim touches only the segments at or after the
 * group's cursor (run-time partition pruning on the cursor), however many older
 * segments are retained.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Herald } from '../index.js';
import { schemaIdent } from '../internal/ident.js';
import { useHerald } from '../../test/support/herald.js';
import * as q from './queries.js';

let herald: Herald;
useHerald({}, (_db, h) => {
  herald = h;
});

test('a claim scans only the segments at or after the cursor', async () => {
  await herald.topics.create('history', { partitions: 2, segmentSize: 100, retentionMs: null });
  for (let i = 0; i < 10; i++) await herald.topics.publishMany('history', Array.from({ length: 100 }, (_, j) => ({ payload: i * 100 + j })));
  await herald.topics.createGroup('history', 'g', 'earliest');
  const stats = await herald.topics.stats('history');
  assert.ok(stats.segments >= 10, `segments: ${stats.segments}`);
  // Put the cursor in the last full segment: ids 901..1000 live in the tenth segment.
  await herald.topics.resetGroup('history', 'g', { position: '950' });
  const s = schemaIdent('herald');
  const topic = (await q.topicGet(herald.driver.executor, s, 'history'))!;
  let touched: string[] = [];
  let claimed = 0;
  await herald.driver.transaction(async (tx) => {
    // The claim (a PL/pgSQL function with a cached plan, so EXPLAIN cannot look inside):
    // the scans this transaction made on each segment tell which ones it read. Any scan
    // counts (an index scan, or a sequential one the planner may prefer on a small
    // analyzed segment). Counted as a difference around the claim: on PostgreSQL 15 the
    // "xact" counters also hold a previous transaction's scans on this connection until
    // its statistics are flushed (up to a second or more later).
    const scans = async () => {
      const { rows } = await tx.query<{ relname: string; n: string }>(
        `SELECT relname, coalesce(idx_scan, 0) + coalesce(seq_scan, 0) AS n FROM pg_stat_xact_user_tables
          WHERE starts_with(relname, $1)`,
        [`topic_messages_${topic.id}_s`],
      );
      return new Map(rows.map((x) => [x.relname, Number(x.n)]));
    };
    const before = await scans();
    const r = await q.cursorClaimRead(tx, s, topic.id, 'g', 0, topic.partitions, 100, true, '0');
    claimed = r.claim?.rows.length ?? 0;
    const after = await scans();
    touched = [...after].filter(([rel, n]) => n > (before.get(rel) ?? 0)).map(([rel]) => rel);
    throw new Error('rollback');
  }).catch((err: Error) => assert.equal(err.message, 'rollback'));
  assert.ok(claimed > 0, `the claim read messages (segments: ${stats.segments}, messages: ${stats.messages}, pending: ${stats.pending})`);
  const lowers = touched.map((r) => Number(r.split('_s')[1])).sort((a, b) => a - b);
  assert.ok(lowers.length > 0, 'the claim read the log');
  assert.ok(lowers.every((l) => l >= 901), `segments touched: ${touched.join(', ')}`);
});
