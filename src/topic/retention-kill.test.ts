/**
 * Retention never skips: maintenance killed (SIGKILL) between its steps leaves a safe
 * state that the next run finishes; a lagging group gets `topic:behind` for exactly
 * the messages it lost (after its position through the mark), and every other message
 * reaches every group.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, test } from 'node:test';
import type { Herald } from '../index.js';
import type { TestDatabase } from '../../test/support/db.js';
import { useHerald } from '../../test/support/herald.js';
import { waitFor } from '../../test/support/wait.js';
import type { BehindInfo } from './types.js';

let db: TestDatabase;
let herald: Herald;
// The test drives retention itself: no maintenance service runs it behind its back.
useHerald({ maintenance: { enabled: false } }, (d, h) => {
  db = d;
  herald = h;
});

let dir: string;
let worker: string;
before(() => {
  mkdirSync(join(process.cwd(), 'test-artifacts'), { recursive: true }); // git-ignored
  dir = mkdtempSync(join(process.cwd(), 'test-artifacts', 'topics-maintain-'));
  worker = join(dir, 'maintain.ts');
  const src = new URL('../index.ts', import.meta.url).pathname;
  // Runs maintain() and hangs inside the step hook at the chosen step: the parent kills it there.
  writeFileSync(
    worker,
    `import { createHerald } from ${JSON.stringify(src)};
const [topic, step, nth] = process.argv.slice(2);
const herald = createHerald({ connectionString: process.env.DATABASE_URL, maintenance: { enabled: false } });
let n = 0;
await herald.topics.maintain(topic, {
  onStep: async (s) => {
    if (s === step && ++n === Number(nth)) {
      console.log('at ' + s);
      await new Promise(() => {});
    }
  },
});
console.log('finished');
await herald.close();
`,
  );
});
after(() => rmSync(dir, { recursive: true, force: true }));

async function killAt(topic: string, step: string, nth: number): Promise<void> {
  const child = spawn(process.execPath, ['--import', 'tsx', worker, topic, step, String(nth)], { env: { ...process.env, DATABASE_URL: db.url }, stdio: ['ignore', 'pipe', 'inherit'] });
  try {
    await new Promise<void>((resolve, reject) => {
      let out = '';
      child.stdout!.on('data', (d: Buffer) => {
        out += d.toString();
        if (out.includes('at ' + step)) resolve();
      });
      child.once('exit', () => reject(new Error(`maintenance finished before ${step} #${nth}: ${out}`)));
    });
  } finally {
    child.kill('SIGKILL');
    await new Promise((r) => (child.exitCode !== null || child.signalCode !== null ? r(null) : child.once('exit', r)));
  }
}

for (const [step, nth] of [['marked', 1], ['detached', 1], ['dropped', 1], ['marked', 2], ['detached', 3]] as const) {
  test(`maintenance killed after step ${step} #${nth}: the next run finishes; the lagging group is told exactly what it lost`, async () => {
    const topic = `kill-${step}-${nth}`;
    await herald.topics.create(topic, { partitions: 2, segmentSize: 20, retentionMs: 0 });
    const fastSeen: number[] = [];
    const fast = herald.topics.consumer<number>(topic, 'fast', ({ messages }) => void fastSeen.push(...messages.map((m) => m.payload)));
    await fast.start();
    await herald.topics.createGroup(topic, 'lag', 'earliest');
    try {
      const published = await herald.topics.publishMany(topic, Array.from({ length: 70 }, (_, i) => ({ payload: i + 1 })), { waitForPosition: true });
      const byPayload = new Map<number, { position: string; partition: number }>();
      const whole = await herald.topics.read<number>(topic, { after: 'earliest', limit: 1000 });
      for (const m of whole.messages) byPayload.set(m.payload, { position: m.position, partition: m.partition });
      assert.equal(byPayload.size, 70);
      assert.ok(published.every((p) => p.position !== null));
      await waitFor(() => fastSeen.length === 70, { what: 'fast group' });

      await killAt(topic, step, nth);
      // Publishing and consuming go on between the killed run and the next.
      await herald.topics.publish(topic, 71);
      await waitFor(() => fastSeen.length === 71, { what: 'fast group after the kill' });
      assert.equal(await herald.topics.maintain(topic) >= 1, true, 'the next run drops segments');
      const stats = await herald.topics.stats(topic);
      assert.equal(stats.segments > 0, true);
      assert.equal(await herald.topics.maintain(topic), 0, 'nothing left to do');

      // The lagging group: behind events name the lost messages exactly.
      const behind: BehindInfo[] = [];
      const lagSeen: number[] = [];
      const lag = herald.topics.consumer<number>(topic, 'lag', ({ messages }) => void lagSeen.push(...messages.map((m) => m.payload)));
      lag.on('topic:behind', (b) => behind.push(b));
      await lag.start();
      try {
        await waitFor(() => behind.length === 2, { what: 'behind for both partitions' });
        assert.deepEqual(lagSeen, [], 'nothing skipped over silently');
        const lost = new Set<number>();
        for (const b of behind) {
          assert.equal(b.position, '0');
          for (const [payload, m] of byPayload) if (m.partition === b.partition && BigInt(m.position) <= BigInt(b.through)) lost.add(payload);
        }
        // Every lost message is really gone, every other one is still there.
        const remaining = (await herald.topics.read<number>(topic, { after: 'earliest', limit: 1000 })).messages.map((m) => m.payload);
        for (const p of remaining) assert.ok(!lost.has(p), `message ${p} reported lost but retained`);
        assert.deepEqual([...lost, ...remaining].sort((a, b) => a - b), Array.from({ length: 71 }, (_, i) => i + 1));
        // Reset: the lagging group gets exactly the retained messages.
        await herald.topics.resetGroup(topic, 'lag', 'earliest');
        await waitFor(() => lagSeen.length === remaining.length, { what: 'lagging group after reset' });
        assert.deepEqual([...lagSeen].sort((a, b) => a - b), [...remaining].sort((a, b) => a - b));
        assert.deepEqual([...fastSeen].sort((a, b) => a - b), Array.from({ length: 71 }, (_, i) => i + 1), 'the fast group got everything once');
      } finally {
        await lag.stop();
      }
    } finally {
      await fast.stop();
    }
  });
}
