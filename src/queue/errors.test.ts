import assert from 'node:assert/strict';
import { test } from 'node:test';
import type { Herald } from '../client.js';
import { ERROR_TEXT_MAX_CHARS } from '../internal/describe-error.js';
import { useHerald } from '../../test/support/herald.js';
import { waitFor } from '../../test/support/wait.js';
import { JOB_ERRORS_KEPT } from './queries.js';

let herald: Herald;
useHerald({ queue: { retryBaseDelayMs: 1, retryMaxDelayMs: 5, pollIntervalMs: 50 } }, (_db, h) => {
  herald = h;
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
