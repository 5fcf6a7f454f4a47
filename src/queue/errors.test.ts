import assert from 'node:assert/strict';
import { test } from 'node:test';
import pg from 'pg';
import type { Herald } from '../client.js';
import type { Executor } from '../driver/types.js';
import { ERROR_TEXT_MAX_CHARS } from '../internal/describe-error.js';
import { useHerald } from '../../test/support/herald.js';
import { waitFor } from '../../test/support/wait.js';
import { JOB_ERRORS_KEPT } from './queries.js';

let herald: Herald;
let url: string;
useHerald({ queue: { retryBaseDelayMs: 1, retryMaxDelayMs: 5, pollIntervalMs: 50 } }, (db, h) => {
  herald = h;
  url = db.url;
});

test('a job keeps only its newest errors, each cut to the one error text cap', async () => {
  const attempts = JOB_ERRORS_KEPT + 5;
  const { id } = await herald.queue.enqueue('always-fails', {}, { maxAttempts: attempts });
  const w = herald.queue.work('always-fails', (job) => {
    throw new Error(`attempt ${job.attempt} ` + 'x'.repeat(3 * ERROR_TEXT_MAX_CHARS));
  });
  try {
    await waitFor(async () => (await herald.queue.get(id))?.state === 'dead', { timeoutMs: 60_000, what: 'the job dead' });
  } finally {
    await w.stop();
  }
  const job = (await herald.queue.get(id))!;
  assert.equal(job.attempt, attempts);
  assert.equal(job.errors.length, JOB_ERRORS_KEPT, 'the list is capped');
  assert.deepEqual(
    job.errors.map((e) => e.attempt),
    Array.from({ length: JOB_ERRORS_KEPT }, (_, i) => attempts - JOB_ERRORS_KEPT + 1 + i),
    'the newest attempts, oldest first',
  );
  for (const e of job.errors) assert.equal(e.error.length, ERROR_TEXT_MAX_CHARS);
  assert.ok(job.lastError!.startsWith(`Error: attempt ${attempts} `));
  assert.ok(job.lastError!.endsWith('…'));
});

test('text Postgres cannot store (NUL, a lone surrogate) never freezes a worker: errors are stored with U+FFFD, such a result fails its attempt, such a payload is INVALID_PAYLOAD', async () => {
  const { discard, snooze } = await import('./types.js');
  const outcomes: Record<string, () => unknown> = {
    'nul-error': () => {
      throw new Error('x\u0000y');
    },
    'surrogate-error': () => {
      throw new Error('x\uD800y');
    },
    'nul-discard': () => discard('d\u0000'),
    'nul-result': () => ({ s: 'a\u0000' }),
    'surrogate-result': () => ({ s: '\uDC00' }),
    fine: () => ({ ok: true }),
  };
  const ids = new Map<string, string>();
  for (const name of Object.keys(outcomes)) ids.set(name, (await herald.queue.enqueue('unstorable', { name }, { maxAttempts: 1 })).id);
  const w = herald.queue.work<{ name: string }>('unstorable', (job) => outcomes[job.payload.name](), { concurrency: 6 });
  try {
    // Every job ends (the worker records the others whatever one of them returned).
    const finished = async () => {
      let n = 0;
      for (const id of ids.values()) if (['dead', 'completed'].includes((await herald.queue.get(id))!.state)) n++;
      return n;
    };
    // The window restarts whenever one more job has finished.
    await waitFor(async () => (await finished()) === ids.size, { what: 'every job finished', progress: finished });
  } finally {
    await w.stop();
  }
  const job = async (name: string) => (await herald.queue.get(ids.get(name)!))!;
  assert.equal((await job('nul-error')).lastError, 'Error: x\uFFFDy');
  assert.equal((await job('surrogate-error')).lastError, 'Error: x\uFFFDy');
  assert.equal((await job('nul-discard')).lastError, 'd\uFFFD');
  for (const name of ['nul-result', 'surrogate-result']) {
    const j = await job(name);
    assert.equal(j.state, 'dead', name);
    assert.match(j.lastError!, /INVALID_PAYLOAD|a result Postgres cannot store/, name);
  }
  assert.deepEqual([(await job('fine')).state, (await job('fine')).result], ['completed', { ok: true }]);
  await assert.rejects(herald.queue.enqueue('unstorable', { s: '\uD800' }), { code: 'INVALID_PAYLOAD' });
  assert.throws(() => snooze(1e300), { code: 'INVALID_OPTION' });
});

test('arguments that reach SQL are checked first: prune states, an empty beforeId, a schedule job options', async () => {
  await assert.rejects(herald.queue.prune({ states: ['running' as 'completed'] }), { code: 'INVALID_ARGUMENT' });
  await assert.rejects(herald.queue.prune({ states: 'completed' as unknown as ['completed'] }), { code: 'INVALID_ARGUMENT' });
  await assert.rejects(herald.queue.list({ beforeId: '' }), { code: 'INVALID_ARGUMENT' });
  assert.throws(() => herald.queue.schedule('bad-options', '* * * * *', 'k', {}, { maxAttempts: 0 }), { code: 'INVALID_ARGUMENT' });
  assert.throws(() => herald.queue.schedule('bad-payload', '* * * * *', 'k', { s: 'x\u0000' }), { code: 'INVALID_PAYLOAD' });
});

test("an enqueue whose unique key's holder finishes between the insert and the look gets an id: the job is inserted again", async () => {
  const holder = await herald.queue.enqueue('unique-race', {}, { uniqueKey: 'race-key' });
  const client = new pg.Client({ connectionString: url });
  await client.connect();
  try {
    await client.query('BEGIN');
    let raced = false;
    // The caller's transaction, with a hook: before the look for the key's holder, the holder finishes (cancelled, elsewhere).
    const tx: Executor = {
      query: async <R,>(text: string, values?: readonly unknown[]) => {
        if (!raced && /unique_key = ANY/.test(text)) {
          raced = true;
          assert.deepEqual(await herald.queue.cancel(holder.id), [holder.id]);
        }
        const res = await client.query(text, values as unknown[]);
        return { rows: res.rows as R[], rowCount: res.rowCount ?? 0 };
      },
    };
    const r = await herald.queue.enqueue('unique-race', {}, { uniqueKey: 'race-key', tx });
    await client.query('COMMIT');
    assert.ok(raced, 'the look ran after a skipped insert');
    assert.equal(r.inserted, true);
    assert.notEqual(r.id, holder.id);
    assert.equal((await herald.queue.get(r.id))?.state, 'available');
  } finally {
    await client.end();
  }
});
