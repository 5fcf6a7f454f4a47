/**
 * Claim cost is flat with history: a claim touches only the segments at or after the
 * group's cursor (run-time partition pruning on the cursor), however many older
 * segments are retained.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Executor } from '../driver/types.js';
import type { Herald } from '../index.js';
import { schemaIdent } from '../internal/ident.js';
import { useHerald } from '../../test/support/herald.js';
import * as q from './queries.js';

let herald: Herald;
useHerald({}, (_db, h) => {
  herald = h;
});

/** The relation names the plan scanned (loops > 0) under `plan`. */
function scanned(plan: Record<string, unknown>, out = new Set<string>()): Set<string> {
  const rel = plan['Relation Name'];
  const loops = Number(plan['Actual Loops'] ?? 0);
  if (typeof rel === 'string' && loops > 0) out.add(rel);
  for (const child of (plan.Plans as Record<string, unknown>[] | undefined) ?? []) scanned(child, out);
  return out;
}

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
  const plans: Record<string, unknown>[] = [];
  await herald.driver.transaction(async (tx) => {
    // The claim's own statement, explained as it runs (ANALYZE shows which segments it touched).
    const explaining: Executor = {
      query: async <R>(text: string, params?: unknown[]) => {
        const r = await tx.query<{ 'QUERY PLAN': Record<string, unknown>[] }>(`EXPLAIN (ANALYZE, FORMAT JSON) ${text}`, params);
        plans.push(r.rows[0]['QUERY PLAN'][0].Plan as Record<string, unknown>);
        return { rows: [] as R[], rowCount: 0 };
      },
    };
    await q.cursorClaimRead(explaining, s, topic.id, 'g', 0, topic.partitions, 100);
    throw new Error('rollback');
  }).catch((err: Error) => assert.equal(err.message, 'rollback'));
  const touched = [...scanned(plans[0])].filter((r) => r.startsWith(`topic_messages_${topic.id}_s`));
  const lowers = touched.map((r) => Number(r.split('_s')[1])).sort((a, b) => a - b);
  assert.ok(lowers.length > 0, 'the claim read the log');
  assert.ok(lowers.every((l) => l >= 901), `segments touched: ${touched.join(', ')}`);
});
