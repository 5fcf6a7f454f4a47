/**
 * The claim cursor (see `Worker` #after): while a transaction is held open anywhere in the
 * cluster, claimed jobs leave their entries in the claim index (nothing can clean them up
 * before it ends). Wake-ups carry the first new job's key, so a worker keeps its cursor and
 * its claims read what they claim, not every job claimed since the transaction began;
 * a look beside the claims finds what no wake-up announced. Counted with the index's
 * transaction statistics, not with a clock.
 */
import assert from 'node:assert/strict';
import { test } from 'node:test';
import pg from 'pg';
import { createHerald, pgDriver, type Herald } from '../index.js';
import type { Driver } from '../driver/types.js';
import { heldWriteTransaction, type TestDatabase } from '../../test/support/db.js';
import { useHerald } from '../../test/support/herald.js';
import { measuringDriver, tuplesReturned } from '../../test/support/measuring-driver.js';
import { waitFor, waitForCount } from '../../test/support/wait.js';
import { wakePayload } from './queries.js';
import { RESCUE_MARGIN_MS } from './queue.js';

let db: TestDatabase;
let herald: Herald;
// A cluster of the file's own: the held transaction is a cluster-wide fact.
useHerald({}, (d, h) => {
  db = d;
  herald = h;
}, { isolated: true });

/** Entries of the claim index returned to the scans of a transaction so far. */
const claimEntriesRead = tuplesReturned('herald.jobs_claim_idx');
const isClaim = (text: string) => text.includes('claimed AS');

test('wake-up payloads: the queue alone, or the queue and the first job it made available', () => {
  assert.deepEqual(wakePayload('mail'), { queue: 'mail', key: null });
  assert.deepEqual(wakePayload(''), { queue: '', key: null });
  assert.deepEqual(wakePayload('mail\u001f-3,1733400000123456,42'), { queue: 'mail', key: { priority: -3, runUs: '1733400000123456', id: '42' } });
  // A queue whose name ends like a key but without the separator's form stays a name.
  assert.deepEqual(wakePayload('a\u001fb'), { queue: 'a\u001fb', key: null });
  // Keys no claim could take (out of smallint or bigint range) are not keys.
  assert.deepEqual(wakePayload('q\u001f40000,1,2'), { queue: 'q\u001f40000,1,2', key: null });
  assert.deepEqual(wakePayload('q\u001f0,1,9223372036854775808'), { queue: 'q\u001f0,1,9223372036854775808', key: null });
});

test('claims read a bounded part of the claim index while a transaction is held open elsewhere; every job once', async () => {
  const hold = await heldWriteTransaction(db.url);
  const claims: number[] = [];
  const claiming = { n: 0 };
  const driver = measuringDriver(db.url, claimEntriesRead, isClaim, claims, () => false, [], claiming);
  // Every job here is announced by a wake-up: no safety poll and no look beside the
  // claims in the test's time (a look whose snapshot predates a claim's commit can find
  // that claim's job and lower the cursor to it, a claim that reads back, as it must).
  const h = createHerald({ driver, queue: { pollIntervalMs: 600_000 } });
  const seen = new Map<number, number>();
  const w = h.queue.work<{ i: number }>('held', (job) => void seen.set(job.payload.i, (seen.get(job.payload.i) ?? 0) + 1), { concurrency: 10 });
  try {
    // 3,000 jobs claimed while the transaction is open: 3,000 entries nothing can remove.
    const FIRST = 3000;
    for (let i = 0; i < FIRST; i += 50) {
      await h.queue.enqueueMany(Array.from({ length: 50 }, (_, j) => ({ kind: 'held', payload: { i: i + j } })));
    }
    await waitForCount(() => seen.size, FIRST, { what: 'the first jobs' });
    const walked = await herald.driver.transaction(async (tx) => {
      await tx.query(`SELECT count(*) FROM (SELECT id FROM herald.jobs WHERE state = 'available' AND queue = 'default' AND kind = 'held' AND stage = ''
                        ORDER BY priority, run_at, id LIMIT 10) j`);
      return claimEntriesRead(tx);
    });
    assert.ok(walked >= FIRST, `a claim from the start reads the claimed jobs' entries: ${walked}`);

    // The first jobs' wake-ups may still be on their way (the worker's claims ran ahead of
    // them): one that arrives now lowers the cursor to its job, as it must, and the next
    // claim reads back from there. A marker notified now arrives after all of them (one
    // connection, commit order); a sentinel job then takes that claim, and the rounds
    // begin once no claim is under way (one that began before the sentinel's claim raised
    // the cursor may still be reading back).
    let marked = false;
    const marker = h.listen('cursor_test_marker', () => void (marked = true));
    await marker.established;
    await h.notify('cursor_test_marker', 'after the first jobs');
    await waitFor(() => marked, { what: 'the marker after the first wake-ups' });
    await marker.close();
    let sent = FIRST;
    await h.queue.enqueue('held', { i: sent++ });
    await waitForCount(() => seen.size, sent, { what: 'the sentinel job' });
    await waitFor(() => claiming.n === 0, { what: 'no claim under way after the sentinel' });

    // Then jobs one at a time, each a wake-up of its own: every claim reads about what it
    // claims (the look beside the claims is not a claim).
    for (let r = 0; r < 5; r++) {
      const from = claims.length;
      for (let j = 0; j < 20; j++) await h.queue.enqueue('held', { i: sent++ });
      await waitForCount(() => seen.size, sent, { what: 'a round' });
      const read = claims.slice(from);
      assert.ok(read.length > 0 && read.every((n) => n <= 200), `claims of round ${r}: ${read.join(', ')} entries`);
    }
    assert.ok([...seen.values()].every((n) => n === 1), 'every job once');
  } finally {
    await w.stop();
    await h.close();
    await hold.release();
  }
});

test('a job whose transaction began before the cursor passed its key and committed after is taken by the wake-up', async () => {
  // No safety poll and no look in the test's time: only the keyed wake-up can bring it.
  const h = createHerald({ connectionString: db.url, queue: { pollIntervalMs: 600_000 } });
  const started: number[] = [];
  const w = h.queue.work<{ i: number }>('late', (job) => void started.push(job.payload.i), { concurrency: 4 });
  const late = new pg.Client({ connectionString: db.url });
  await late.connect();
  try {
    // run_at of a job is its transaction's start: this one sorts before everything below.
    await late.query('BEGIN');
    await h.queue.enqueue('late', { i: -1 }, { tx: late });
    for (let r = 0; r < 5; r++) {
      await h.queue.enqueueMany(Array.from({ length: 10 }, (_, j) => ({ kind: 'late', payload: { i: r * 10 + j } })));
      await waitForCount(() => started.length, (r + 1) * 10, { what: 'the jobs after it' });
    }
    assert.ok(!started.includes(-1));
    await late.query('COMMIT');
    await waitFor(() => started.includes(-1), { what: 'the late job' });
    assert.equal(new Set(started).size, started.length, 'every job once');
  } finally {
    await late.query('ROLLBACK').catch(() => {});
    await late.end();
    await w.stop();
    await h.close();
  }
});

test('a wake-up that comes while a claim is in flight keeps that claim from moving the cursor past its job', async () => {
  // Claim answers can be held back: the claim has run (its snapshot predates the late
  // commit), its answer comes after the wake-up.
  let gate: Promise<void> | null = null;
  let held!: () => void;
  const heldClaim = new Promise<void>((resolve) => (held = resolve));
  const inner = pgDriver({ connectionString: db.url, max: 6 });
  const driver: Driver = {
    ...inner,
    executor: {
      async query(text, values, opts) {
        const r = await inner.executor.query(text, values, opts);
        if (gate !== null && isClaim(text) && (r.rows as unknown[]).length > 0) {
          held();
          await gate;
        }
        return r as never;
      },
    },
  };
  // No safety poll and no look in the test's time: only the wake-up can bring it.
  const h = createHerald({ driver, queue: { pollIntervalMs: 600_000 } });
  const started: number[] = [];
  const w = h.queue.work<{ i: number }>('race', (job) => void started.push(job.payload.i), { concurrency: 4 });
  const late = new pg.Client({ connectionString: db.url });
  await late.connect();
  const wakes = h.listen('herald.jobs.wake');
  let release = () => {};
  try {
    await wakes.established;
    await late.query('BEGIN');
    const lateJob = await h.queue.enqueue('race', { i: -1 }, { tx: late });
    await h.queue.enqueueMany(Array.from({ length: 10 }, (_, j) => ({ kind: 'race', payload: { i: j } })));
    await waitForCount(() => started.length, 10, { what: 'the first jobs' });
    gate = new Promise<void>((resolve) => (release = resolve));
    await h.queue.enqueueMany(Array.from({ length: 5 }, (_, j) => ({ kind: 'race', payload: { i: 10 + j } })));
    await heldClaim; // a claim took jobs after the late one's key; its answer waits
    await late.query('COMMIT');
    // Its wake-up (keyed by the late job): delivered to the queue's listener in the same dispatch.
    for (;;) {
      const n = await wakes.wait({ timeoutMs: 60_000 });
      assert.ok(n !== null, 'the late job\'s wake-up');
      if (wakePayload(n.payload).key?.id === lateJob.id) break;
    }
    gate = null;
    release();
    await waitFor(() => started.includes(-1), { what: 'the late job' });
    await waitForCount(() => started.length, 16, { what: 'every job' });
    assert.equal(new Set(started).size, started.length, 'every job once');
  } finally {
    gate = null;
    release();
    await wakes.close();
    await late.query('ROLLBACK').catch(() => {});
    await late.end();
    await w.stop();
    await h.close();
    await inner.end();
  }
});

test('what no wake-up announces is found by the look beside the claims: a job handed back by another claimer, an urgent job that became due', async () => {
  const h = createHerald({ connectionString: db.url, queue: { pollIntervalMs: 200 } });
  const started = new Map<string, number>();
  let w: ReturnType<typeof h.queue.work> | undefined;
  const holder = new pg.Client({ connectionString: db.url });
  await holder.connect();
  let stream = 0;
  // A steady stream of ordinary jobs keeps the worker claiming (never idle, no safety poll).
  const more = () => h.queue.enqueueMany(Array.from({ length: 5 }, () => ({ kind: 'look', payload: { tag: `s${stream++}` } })));
  try {
    const [held] = await h.queue.enqueueMany([{ kind: 'look', payload: { tag: 'held' } }]);
    // Another "claimer" holds the job's row, so the worker's claims skip it and pass it.
    await holder.query('BEGIN');
    await holder.query('SELECT 1 FROM herald.jobs WHERE id = $1 FOR UPDATE', [held.id]);
    w = h.queue.work<{ tag: string }>('look', (job) => void started.set(job.payload.tag, (started.get(job.payload.tag) ?? 0) + 1), { concurrency: 4 });
    const urgent = await h.queue.enqueue('look', { tag: 'urgent' }, { priority: -5, delayMs: 300 });
    for (let r = 0; r < 3; r++) {
      await more();
      await waitForCount(() => started.size, stream, { what: 'the stream around the held job' });
    }
    assert.ok(!started.has('held'));
    // Handed back without a wake-up (a claimer's rollback sends none).
    await holder.query('ROLLBACK');
    await waitFor(
      async () => {
        await more();
        return started.has('held') && started.has('urgent');
      },
      { what: 'the held and the urgent job' },
    );
    assert.ok([...started.values()].every((n) => n === 1), 'every job once');
    // Started is not completed yet: the worker records completions after the handler
    // returns (batched with its next claim).
    await waitFor(async () => (await h.queue.get(urgent.id))?.state === 'completed', { what: 'the urgent job completed' });
  } finally {
    await holder.query('ROLLBACK').catch(() => {});
    await holder.end();
    await w?.stop();
    await h.close();
  }
});

test('rescue sweeps read a bounded part of the lease index while a transaction is held open elsewhere', async () => {
  const hold = await heldWriteTransaction(db.url, 'other_rescue');
  const sweeps: number[] = [];
  const driver = measuringDriver(db.url, tuplesReturned('herald.jobs_lease_expiry_idx'), () => false, [], (t) => t.includes('WITH expired AS'), sweeps);
  // Short leases, so that the finished jobs' entries in the lease index soon hold ended
  // leases (those a sweep from the start reads); no sweep but the test's own.
  const h = createHerald({ driver, queue: { leaseMs: 1000, rescueIntervalMs: 3_600_000 } });
  let done = 0;
  const w = h.queue.work('swept', () => void done++, { concurrency: 10 });
  try {
    const JOBS = 3000;
    for (let i = 0; i < JOBS; i += 100) await h.queue.enqueueMany(Array.from({ length: 100 }, () => ({ kind: 'swept' })));
    await waitForCount(() => done, JOBS, { what: 'the jobs' });
    await w.stop();
    // Database time: every lease ended more than the margin ago.
    await waitFor(
      async () =>
        (
          await herald.driver.executor.query<{ ok: boolean }>(
            `SELECT now() > max(attempted_at) + interval '1 second' + $1 * interval '1 millisecond' + interval '1 second' AS ok FROM herald.jobs WHERE kind = 'swept'`,
            [RESCUE_MARGIN_MS],
          )
        ).rows[0].ok,
      { what: 'the leases to end', timeoutMs: 60_000 },
    );
    assert.equal(await h.queue.rescue(), 0);
    assert.ok(sweeps.at(-1)! >= JOBS, `the first sweep reads the finished jobs' entries: ${sweeps.join(', ')}`);
    const before = sweeps.length;
    assert.equal(await h.queue.rescue(), 0);
    const second = sweeps.slice(before);
    assert.ok(second.length > 0 && second.every((n) => n <= 100), `the next sweep starts shortly before the first: ${second.join(', ')} entries`);
  } finally {
    await w.stop();
    await h.close();
    await hold.release();
  }
});
