/**
 * The queue counts an attempt when it claims a job (the claim statement commits before
 * the handler runs): a job that SIGKILLs its worker every time ends dead after its
 * maxAttempts, rescued once per attempt, and later jobs still run.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Herald } from '../client.js';
import { spawnFixture, type Fixture } from '../../test/support/child.js';
import type { TestDatabase } from '../../test/support/db.js';
import { useHerald } from '../../test/support/herald.js';
import { waitFor } from '../../test/support/wait.js';

let db: TestDatabase;
let herald: Herald;

// This process only rescues (the fixture's lease is 1500 ms); it runs no worker.
useHerald({ queue: { rescueIntervalMs: 200, pollIntervalMs: 200 } }, (d, h) => {
  db = d;
  herald = h;
});

test('a job that SIGKILLs its worker every time is dead after maxAttempts; later jobs run', async () => {
  const maxAttempts = 3;
  const spawned: Fixture[] = [];
  try {
    const { id } = await herald.queue.enqueue('poison', { poison: true }, { maxAttempts });
    const state = async () => (await herald.queue.get(id))!.state;
    herald.queue.start(); // the rescue sweep
    let deaths = 0;
    while ((await state()) !== 'dead') {
      const worker = spawnFixture('queue-worker.ts', [db.url, 'poison']);
      spawned.push(worker);
      const outcome = await Promise.race([
        worker.exited.then(() => 'exited' as const),
        waitFor(async () => (await state()) === 'dead', { timeoutMs: 120_000, what: 'the job to die' }).then(() => 'dead' as const),
      ]);
      if (outcome === 'exited') deaths++;
    }
    const job = (await herald.queue.get(id))!;
    assert.equal(deaths, maxAttempts, 'the worker died once per attempt');
    assert.equal(job.attempt, maxAttempts, 'each killed run counted');
    assert.equal(job.errors.length, maxAttempts);
    assert.ok(job.errors.every((e) => e.error === 'lease expired'));
    const later = await herald.queue.enqueue('poison', { poison: false });
    let survivor = spawned.at(-1)!;
    if (!survivor.alive) spawned.push((survivor = spawnFixture('queue-worker.ts', [db.url, 'poison'])));
    await waitFor(async () => (await herald.queue.get(later.id))?.state === 'completed', { timeoutMs: 60_000, what: 'the later job' });
    assert.ok(survivor.lines.includes(`done ${later.id}`));
  } finally {
    await Promise.all(spawned.map((f) => f.kill()));
  }
});
