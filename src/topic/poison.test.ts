/**
 * Poison messages end: a message whose handler throws, and one whose handler kills its
 * process (SIGKILL), each go to the group's dead letters after maxAttempts; the
 * messages after them in their key are delivered, in order; redrive hands a dead letter
 * back; handlerTimeoutMs rolls a stuck batch back and counts the attempt.
 */
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdirSync, mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { test } from 'node:test';
import type { Herald } from '../index.js';
import type { TestDatabase } from '../../test/support/db.js';
import { useHerald } from '../../test/support/herald.js';
import { waitFor } from '../../test/support/wait.js';

let db: TestDatabase;
let herald: Herald;
useHerald({}, (d, h) => {
  db = d;
  herald = h;
});

test('a handler that throws: the message goes to dead letters after maxAttempts, later messages of the key follow in order; redrive delivers it', async () => {
  await herald.driver.executor.query('CREATE TABLE got_throw (v int PRIMARY KEY)');
  await herald.topics.create('poison', { partitions: 2 });
  const attemptsOnPoison: number[] = [];
  let healed = false;
  const c = herald.topics.consumer<number>('poison', 'g', async ({ messages, tx }) => {
    for (const m of messages) {
      if (m.payload === 13 && !healed) {
        attemptsOnPoison.push(messages.length);
        throw new Error('cannot handle 13');
      }
      await tx.query('INSERT INTO got_throw (v) VALUES ($1)', [m.payload]);
    }
  }, { maxAttempts: 3, retryDelayMs: 10, batchSize: 10 });
  const dead: { position: string; attempts: number; lastError: string | null }[] = [];
  c.on('topic:dead', (d) => dead.push(d));
  await c.start();
  try {
    await herald.topics.publishMany('poison', Array.from({ length: 30 }, (_, i) => ({ payload: i + 1, key: i % 2 ? 'odd' : 'even' })));
    await waitFor(() => dead.length === 1, { what: 'the dead letter' });
    await waitFor(async () => (await herald.driver.executor.query<{ n: number }>('SELECT count(*)::int AS n FROM got_throw')).rows[0].n === 29, { what: 'the other 29' });
    // The batch it first failed in names no message; then the partition goes one
    // message at a time, and the poison one is attempted alone maxAttempts times.
    assert.deepEqual(attemptsOnPoison.filter((n) => n === 1).length, 3, `attempts on the poison message alone: ${attemptsOnPoison}`);
    assert.equal(dead[0].attempts, 3);
    assert.match(dead[0].lastError ?? '', /cannot handle 13/);
    const letters = await herald.topics.deadLetters<number>('poison', { group: 'g' });
    assert.equal(letters.length, 1);
    assert.equal(letters[0].payload, 13);
    assert.equal(letters[0].key, 'even');
    assert.equal(letters[0].redriving, false);
    assert.equal((await herald.topics.stats('poison')).groups[0].dead, 1);

    // Redrive: delivered again once the handler copes.
    healed = true;
    assert.equal(await herald.topics.redrive('poison', 'g'), 1);
    await waitFor(async () => (await herald.driver.executor.query<{ n: number }>('SELECT count(*)::int AS n FROM got_throw')).rows[0].n === 30, { what: 'the redriven message' });
    await waitFor(async () => (await herald.topics.deadLetters('poison', { group: 'g' })).length === 0);
  } finally {
    await c.stop();
  }
});

test('a handler that SIGKILLs its process: the attempts still count; after maxAttempts the message is a dead letter and the key goes on', async () => {
  await herald.driver.executor.query('CREATE TABLE got_kill (v int PRIMARY KEY, seq serial)');
  await herald.topics.create('killer', { partitions: 1 });
  await herald.topics.publishMany('killer', [1, 2, 3, 4, 5].map((payload) => ({ payload, key: 'k' })));
  mkdirSync(join(process.cwd(), 'test-artifacts'), { recursive: true }); // git-ignored
  const dir = mkdtempSync(join(process.cwd(), 'test-artifacts', 'topics-poison-'));
  const worker = join(dir, 'worker.ts');
  const src = new URL('../index.ts', import.meta.url).pathname;
  writeFileSync(
    worker,
    `import { createHerald } from ${JSON.stringify(src)};
const herald = createHerald({ connectionString: process.env.DATABASE_URL });
let sawFive = false;
const c = herald.topics.consumer('killer', 'g', async ({ messages, tx }) => {
  for (const m of messages) {
    if (m.payload === 3) process.kill(process.pid, 'SIGKILL');
    await tx.query('INSERT INTO got_kill (v) VALUES ($1)', [m.payload]);
  }
  if (messages.some((m) => m.payload === 5)) sawFive = true;
}, { maxAttempts: 3, retryDelayMs: 10 });
c.on('topic:batch', () => sawFive && console.log('done')); // after the commit
c.on('topic:dead', (d) => console.log('dead ' + d.position));
await c.start();
`,
  );
  try {
    const runs: string[] = [];
    for (let i = 0; i < 10 && !runs.some((r) => r.includes('done')); i++) {
      const child = spawn(process.execPath, ['--import', 'tsx', worker], { env: { ...process.env, DATABASE_URL: db.url }, stdio: ['ignore', 'pipe', 'inherit'] });
      let out = '';
      child.stdout!.on('data', (d: Buffer) => {
        out += d.toString();
        if (out.includes('done')) child.kill('SIGKILL');
      });
      const [code, signal] = await new Promise<[number | null, string | null]>((r) => child.once('exit', (c, s) => r([c, s])));
      runs.push(`${signal ?? code}:${out.trim()}`);
    }
    // The first process died in the batch of all five (which counts against no message); then
    // the partition went one message at a time: three processes died on message 3 alone
    // (one attempt each), the fifth moved it to dead letters and went on.
    assert.deepEqual(runs.slice(0, 4).map((r) => r.split(':')[0]), ['SIGKILL', 'SIGKILL', 'SIGKILL', 'SIGKILL'], runs.join(' | '));
    assert.equal(runs.length, 5, runs.join(' | '));
    assert.match(runs[4], /dead \d+/);
    const { rows } = await herald.driver.executor.query<{ v: number }>('SELECT v FROM got_kill ORDER BY seq');
    assert.deepEqual(rows.map((r) => r.v), [1, 2, 4, 5], 'the key went on in order after the dead letter');
    const letters = await herald.topics.deadLetters<number>('killer');
    assert.deepEqual(letters.map((l) => [l.group, l.payload, l.attempts, l.lastError]), [['g', 3, 3, null]]);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('handlerTimeoutMs: a stuck handler is cancelled, its batch rolls back and the attempt counts', async () => {
  await herald.driver.executor.query('CREATE TABLE got_slow (v int PRIMARY KEY)');
  await herald.topics.create('slow', { partitions: 1 });
  await herald.topics.publishMany('slow', [1, 2].map((payload) => ({ payload })));
  const errors: { error: unknown; attempts: number }[] = [];
  const c = herald.topics.consumer<number>('slow', 'g', async ({ messages, tx }) => {
    for (const m of messages) {
      await tx.query('INSERT INTO got_slow (v) VALUES ($1)', [m.payload]);
      if (m.payload === 1) await tx.query('SELECT pg_sleep(3600)'); // cancelled by the timeout
    }
  }, { handlerTimeoutMs: 300, maxAttempts: 2, retryDelayMs: 10 });
  c.on('topic:handlerError', (e) => errors.push(e));
  const dead: unknown[] = [];
  c.on('topic:dead', (d) => dead.push(d));
  await c.start();
  try {
    await waitFor(() => dead.length === 1, { what: 'the stuck message in dead letters' });
    await waitFor(async () => (await herald.driver.executor.query<{ v: number }>('SELECT v FROM got_slow')).rows.length === 1);
    const { rows } = await herald.driver.executor.query<{ v: number }>('SELECT v FROM got_slow');
    assert.deepEqual(rows, [{ v: 2 }], 'the timed-out batches rolled back');
    // The batch of both (names no message), then message 1 alone twice.
    assert.deepEqual(errors.map((e) => e.attempts), [0, 1, 2]);
    for (const e of errors) assert.equal((e.error as { code?: string }).code, 'TIMEOUT');
  } finally {
    await c.stop();
  }
});
