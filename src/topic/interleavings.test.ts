/**
 * Commit-order visibility under randomized interleavings: 8 producers publish in
 * transactions that commit, roll back, or stay open across later rounds (so ids
 * commit out of order), while two groups consume. Nothing committed may be lost,
 * nothing rolled back delivered, nothing delivered twice within a group, and one
 * key's messages arrive in order.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import pg from 'pg';
import type { Herald } from '../index.js';
import type { TestDatabase } from '../../test/support/db.js';
import { useHerald } from '../../test/support/herald.js';
import { scaled } from '../../test/support/scale.js';
import { waitFor, waitForCount } from '../../test/support/wait.js';
import type { TopicConsumer } from './consumer.js';

let db: TestDatabase;
let herald: Herald;
// topics: a cluster of the file's own (a test here holds transactions open on purpose; see freshDatabase)
useHerald({ poolSize: 12 }, (d, h) => {
  db = d;
  herald = h;
}, { isolated: true });

/** A small deterministic PRNG (mulberry32) so a failing seed can be replayed. */
function prng(seed: number): () => number {
  return () => {
    seed = (seed + 0x6d2b79f5) | 0;
    let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
    t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

interface Producer {
  client: pg.Client;
  /** Tags published in the open transaction. */
  open: string[] | null;
  /** Rounds this transaction stays open (held across interleavings). */
  holdRounds: number;
  end: 'commit' | 'rollback';
}

test('1,000 randomized interleavings of 8 producers: nothing lost, nothing twice per group, keys in order', async () => {
  const seed = Number(process.env.HERALD_TEST_SEED ?? Date.now() % 1_000_000);
  const rnd = prng(seed);
  const rounds = scaled(1000);
  await herald.topics.create('il', { partitions: 4 });
  const delivered = new Map<string, Map<string, number>>();
  const keyOrder = new Map<string, Map<string, string[]>>();
  const consumers: TopicConsumer<string>[] = [];
  for (const [group, n] of [['g1', 2], ['g2', 1]] as const) {
    delivered.set(group, new Map());
    keyOrder.set(group, new Map());
    for (let i = 0; i < n; i++) {
      consumers.push(
        herald.topics.consumer<string>('il', group, ({ messages }) => {
          for (const m of messages) {
            const d = delivered.get(group)!;
            d.set(m.payload, (d.get(m.payload) ?? 0) + 1);
            const ko = keyOrder.get(group)!;
            if (!ko.has(m.key!)) ko.set(m.key!, []);
            ko.get(m.key!)!.push(m.payload);
          }
        }, { batchSize: 20, pollIntervalMs: 200 }),
      );
    }
  }
  await Promise.all(consumers.map((c) => c.start()));

  const producers: Producer[] = [];
  for (let i = 0; i < 8; i++) {
    const client = new pg.Client({ connectionString: db.url });
    client.on('error', () => {});
    await client.connect();
    producers.push({ client, open: null, holdRounds: 0, end: 'commit' });
  }
  const committed = new Set<string>();
  const rolledBack = new Set<string>();
  /** Per key, the tags in the order their transactions' publishes happened within a producer. */
  let counter = 0;

  for (let round = 0; round < rounds; round++) {
    // Each producer contributes a short list of steps; the lists are merged at random.
    const steps: { p: number; run: () => Promise<void> }[][] = producers.map((pr, p) => {
      const list: { p: number; run: () => Promise<void> }[] = [];
      if (pr.open === null) {
        const r = rnd();
        if (r < 0.2) {
          // autocommit publish (a batch)
          const tags = [`a${counter++}`, `a${counter++}`];
          const key = `p${p}`;
          list.push({ p, run: async () => {
            await herald.topics.publishMany('il', tags.map((t) => ({ payload: t, key })));
            tags.forEach((t) => committed.add(t));
          } });
          return list;
        }
        pr.end = r < 0.45 ? 'rollback' : 'commit';
        pr.holdRounds = rnd() < 0.15 ? 1 + Math.floor(rnd() * 3) : 0;
        list.push({ p, run: async () => {
          await pr.client.query('BEGIN');
          // Sometimes take the xid early: the transaction's xid is then older than ids taken later by others.
          if (rnd() < 0.5) await pr.client.query('SELECT pg_current_xact_id()');
          pr.open = [];
        } });
      }
      const n = 1 + Math.floor(rnd() * 2);
      for (let i = 0; i < n; i++) {
        const tag = `t${counter++}`;
        list.push({ p, run: async () => {
          await herald.topics.publish('il', tag, { tx: pr.client, key: `p${p}` });
          pr.open!.push(tag);
        } });
      }
      list.push({ p, run: async () => {
        if (pr.holdRounds-- > 0) return;
        await pr.client.query(pr.end === 'commit' ? 'COMMIT' : 'ROLLBACK');
        for (const t of pr.open!) (pr.end === 'commit' ? committed : rolledBack).add(t);
        pr.open = null;
      } });
      return list;
    });
    // Random merge that keeps each producer's own steps in order.
    const cursors = steps.map(() => 0);
    for (;;) {
      const ready = steps.map((l, i) => (cursors[i] < l.length ? i : -1)).filter((i) => i >= 0);
      if (ready.length === 0) break;
      const i = ready[Math.floor(rnd() * ready.length)];
      await steps[i][cursors[i]++].run();
    }
  }
  for (const pr of producers) {
    if (pr.open) {
      await pr.client.query(pr.end === 'commit' ? 'COMMIT' : 'ROLLBACK');
      for (const t of pr.open) (pr.end === 'commit' ? committed : rolledBack).add(t);
    }
    await pr.client.end();
  }

  for (const group of ['g1', 'g2']) {
    const d = delivered.get(group)!;
    await waitForCount(() => [...committed].filter((t) => d.has(t)).length, committed.size, { what: `committed messages delivered to group ${group} (seed ${seed})` });
    for (const [tag, times] of d) {
      assert.equal(times, 1, `group ${group}: ${tag} delivered ${times} times (seed ${seed})`);
      assert.ok(committed.has(tag), `group ${group}: ${tag} delivered but not committed (seed ${seed})`);
    }
    // One producer publishes one key; its committed tags come in publish order.
    for (const [key, tags] of keyOrder.get(group)!) {
      const nums = tags.map((t) => Number(t.slice(1)));
      assert.deepEqual(nums, [...nums].sort((a, b) => a - b), `group ${group} key ${key} out of order (seed ${seed})`);
    }
  }
  assert.ok(rolledBack.size > 0 && committed.size > 0);
  await Promise.all(consumers.map((c) => c.stop()));
});
