import assert from 'node:assert/strict';
import { after, before, describe, test } from 'node:test';
import { Herald } from '../client.js';
import { HeraldError } from '../errors.js';
import { adminQuery, freshDatabase, type TestDatabase } from '../../test/support/db.js';
import { spawnFixture, type Fixture } from '../../test/support/child.js';
import { scaled } from '../../test/support/scale.js';
import { deferred, waitFor, waitForCount } from '../../test/support/wait.js';

let db: TestDatabase;
const heralds: Herald[] = [];
function herald(queue: Record<string, unknown> = {}, poolSize = 3): Herald {
  const h = new Herald({ connectionString: db.url, poolSize, queue: { pollIntervalMs: 200, retryBaseDelayMs: 10, retryMaxDelayMs: 10, ...queue } });
  h.queue.on('job:problem', () => {});
  heralds.push(h);
  return h;
}

/** A seeded PRNG (mulberry32): the same DAG every run. */
function prng(seed: number): () => number {
  let a = seed >>> 0;
  return () => {
    a = (a + 0x6d2b79f5) >>> 0;
    let t = a;
    t = Math.imul(t ^ (t >>> 15), t | 1);
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61);
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
  };
}

async function stateOf(id: string): Promise<string> {
  return (await adminQuery<{ state: string }>(`SELECT state FROM herald.jobs WHERE id = $1`, [id], db.url))[0]?.state ?? 'gone';
}

before(async () => {
  db = await freshDatabase();
});
after(async () => {
  for (const h of heralds) await h.close();
  await db.drop();
});

describe('workflows', () => {
  test('a random 1,000-node DAG completes in a topological order on 2 Herald instances x 2 workers x 10, with failures injected', async () => {
    const n = 1000;
    const rand = prng(17);
    const dependsOn: number[][] = [];
    for (let i = 0; i < n; i++) {
      const deps = new Set<number>();
      // About 2 dependencies per node, always on a lower index: acyclic by construction.
      if (i > 0) for (let k = 0; k < 3; k++) if (k < 2 || rand() < 0.1) deps.add(Math.floor(rand() * i));
      if (i > 0 && rand() < 0.05) deps.clear(); // some more roots
      dependsOn.push([...deps]);
    }
    const flaky = new Set(Array.from({ length: n }, (_, i) => i).filter(() => rand() < 0.1));
    let counter = 0;
    const started = new Map<number, number>();
    const ended = new Map<number, number>();
    const successes = new Map<number, number>();
    const violations: string[] = [];
    const a = herald();
    const b = herald();
    const handler = (h: Herald) => async (job: { id: string; payload: { i: number }; attempt: number }) => {
      const i = job.payload.i;
      const seq = ++counter;
      if (!started.has(i)) started.set(i, seq);
      // Every dependency has committed its completion before this job could be claimed.
      const done = new Set((await h.queue.dependencyResults(job.id)).map((d) => (d.result as { i: number }).i));
      for (const d of dependsOn[i]) {
        if (!done.has(d)) violations.push(`${i} started before ${d} completed`);
        if (!(ended.get(d)! < seq)) violations.push(`${i} started (seq ${seq}) before the handler of ${d} returned`);
      }
      if (flaky.has(i) && job.attempt === 1) throw new Error(`injected failure of ${i}`);
      ended.set(i, ++counter);
      successes.set(i, (successes.get(i) ?? 0) + 1);
      return { i };
    };
    const workers = [a, a, b, b].map((h) => h.queue.work<{ i: number }>('node', handler(h), { concurrency: 10 }));
    try {
      const wf = await a.queue.enqueueWorkflow({
        name: 'random-dag',
        jobs: dependsOn.map((d, i) => ({ key: `n${i}`, kind: 'node', payload: { i }, maxAttempts: 3, dependsOn: d.map((x) => `n${x}`) })),
      });
      assert.equal(Object.keys(wf.jobs).length, n);
      await waitForCount(() => successes.size, n, { what: 'nodes completed' });
      const info = await waitFor(async () => {
        const w = await a.queue.workflow(wf.id);
        return w?.state === 'completed' ? w : null;
      }, { what: 'the workflow to complete' });
      assert.deepEqual(violations, []);
      assert.equal(info.counts.completed, n);
      assert.equal(info.total, n);
      assert.ok([...successes.values()].every((c) => c === 1), 'each node completed exactly once');
      const byKey = new Map(info.jobs.map((j) => [j.key, j]));
      for (let i = 0; i < n; i++) {
        const j = byKey.get(`n${i}`)!;
        assert.deepEqual(j.result, { i });
        assert.deepEqual([...j.dependsOn].sort(), dependsOn[i].map((d) => wf.jobs[`n${d}`]).sort());
      }
      const retried = await adminQuery<{ n: number }>(`SELECT count(*)::int AS n FROM herald.jobs WHERE workflow_id = $1 AND attempt > 1`, [wf.id], db.url);
      assert.equal(retried[0].n, flaky.size, 'every injected failure was retried once');
    } finally {
      await Promise.all(workers.map((w) => w.stop()));
    }
  });

  test("a dead job cancels its transitive dependents (policy cancel) or holds them until a retry completes it (policy hold)", async () => {
    const h = herald();
    let healthy = false;
    const ran: string[] = [];
    const workers = [
      h.queue.work<{ key: string }>('step', (job) => {
        ran.push(job.payload.key);
        return job.payload.key;
      }),
      h.queue.work('flaky', () => {
        if (!healthy) throw new Error('broken');
        return 'fixed';
      }),
    ];
    const jobs = [
      { key: 'root', kind: 'step', payload: { key: 'root' } },
      { key: 'bad', kind: 'flaky', maxAttempts: 1, dependsOn: ['root'] },
      { key: 'child', kind: 'step', payload: { key: 'child' }, dependsOn: ['bad'] },
      { key: 'grandchild', kind: 'step', payload: { key: 'grandchild' }, dependsOn: ['child', 'other'] },
      { key: 'other', kind: 'step', payload: { key: 'other' }, dependsOn: ['root'] },
      { key: 'tail', kind: 'step', payload: { key: 'tail' }, dependsOn: ['other'] },
    ];
    try {
      const c = await h.queue.enqueueWorkflow({ jobs });
      const failed = await waitFor(async () => {
        const w = await h.queue.workflow(c.id);
        return w?.state === 'failed' ? w : null;
      }, { what: 'the cancel workflow to fail' });
      const st = Object.fromEntries(failed.jobs.map((j) => [j.key, j.state]));
      assert.deepEqual(st, { root: 'completed', bad: 'dead', child: 'cancelled', grandchild: 'cancelled', other: 'completed', tail: 'completed' });
      assert.equal(failed.onFailure, 'cancel');
      assert.deepEqual({ ...failed.counts }, { waiting: 0, available: 0, running: 0, completed: 3, dead: 1, cancelled: 2 });

      ran.length = 0;
      const hd = await h.queue.enqueueWorkflow({ name: 'held', onFailure: 'hold', jobs });
      const held = await waitFor(async () => {
        const w = await h.queue.workflow(hd.id);
        return w?.state === 'held' ? w : null;
      }, { what: 'the hold workflow to be held' });
      assert.deepEqual(Object.fromEntries(held.jobs.map((j) => [j.key, j.state])), { root: 'completed', bad: 'dead', child: 'waiting', grandchild: 'waiting', other: 'completed', tail: 'completed' });
      assert.ok(!ran.includes('child'));
      healthy = true;
      assert.deepEqual(await h.queue.retry(hd.jobs.bad), [hd.jobs.bad]);
      const done = await waitFor(async () => {
        const w = await h.queue.workflow(hd.id);
        return w?.state === 'completed' ? w : null;
      }, { what: 'the held workflow to complete after the retry' });
      assert.equal(done.jobs.find((j) => j.key === 'bad')!.result, 'fixed');
      assert.ok(ran.indexOf('child') < ran.indexOf('grandchild'));

      // Cancelling a waiting job cancels what waits for it (policy cancel); retrying a
      // cancelled dependent whose dependency is not completed puts it back to waiting.
      healthy = false;
      const x = await h.queue.enqueueWorkflow({ jobs: [{ key: 'slow', kind: 'step', delayMs: 3_600_000 }, { key: 'next', kind: 'step', dependsOn: ['slow'] }, { key: 'last', kind: 'step', dependsOn: ['next'] }] });
      assert.deepEqual(await h.queue.cancel(x.jobs.next), [x.jobs.next]);
      assert.equal(await stateOf(x.jobs.last), 'cancelled');
      await h.queue.retry([x.jobs.next, x.jobs.last]);
      assert.equal(await stateOf(x.jobs.next), 'waiting');
      assert.equal(await stateOf(x.jobs.last), 'waiting');
      assert.equal((await h.queue.list({ state: 'waiting', kind: 'step' })).length, 2);
      await h.queue.cancel(x.jobs.slow);
      assert.equal((await h.queue.workflow(x.id))!.state, 'failed');
    } finally {
      await Promise.all(workers.map((w) => w.stop()));
    }
  });

  test('watchWorkflow reports every transition of the members, in commit order', async () => {
    const h = herald();
    const seen: string[] = [];
    const listening = deferred();
    const wf0 = await h.queue.enqueueWorkflow({ jobs: [{ key: 'a', kind: 'watched', delayMs: 3_600_000 }, { key: 'b', kind: 'watched', dependsOn: ['a'] }, { key: 'c', kind: 'watched', dependsOn: ['b'] }] });
    const keyOf = new Map(Object.entries(wf0.jobs).map(([k, id]) => [id, k]));
    const sub = h.queue.watchWorkflow(wf0.id, (t) => seen.push(`${keyOf.get(t.id)} ${t.state}`), { onListen: () => listening.resolve() });
    const other = h.queue.watchWorkflow('999999', (t) => seen.push(`other ${t.id}`));
    const w = h.queue.work('watched', () => 1);
    try {
      await listening.promise;
      // The first job was scheduled an hour ahead: retry makes it due now (it is not dead:
      // a cancel first, which, policy cancel, also cancels b and c; retry all three).
      await h.queue.cancel(wf0.jobs.a);
      await h.queue.retry([wf0.jobs.a, wf0.jobs.b, wf0.jobs.c]);
      await waitFor(() => seen.includes('c completed'), { what: 'the last transition' });
      const expected = ['a cancelled', 'b cancelled', 'c cancelled', 'a available', 'b waiting', 'c waiting',
        'a running', 'a completed', 'b available', 'b running', 'b completed', 'c available', 'c running', 'c completed'];
      assert.deepEqual([...seen].sort(), [...expected].sort(), 'each transition once');
      // Within a transaction a member's own transition is announced before what it releases.
      const at = (x: string) => seen.indexOf(x);
      for (const [x, y] of [['a cancelled', 'a available'], ['a completed', 'b available'], ['b available', 'b running'], ['b completed', 'c available'], ['c available', 'c running'], ['c running', 'c completed']]) {
        assert.ok(at(x) < at(y), `${x} before ${y}: ${seen.join(', ')}`);
      }
      assert.ok(!seen.some((x) => x.startsWith('other')));
    } finally {
      await w.stop();
      await sub.close();
      await other.close();
    }
  });

  test('keepCompleted: false still releases dependents (their dependencies are deleted on completion)', async () => {
    const h = herald({ keepCompleted: false });
    const order: string[] = [];
    const w = h.queue.work<{ k: string }>('kc', (job) => void order.push(job.payload.k));
    try {
      const wf = await h.queue.enqueueWorkflow({ jobs: ['a', 'b', 'c'].map((k, i, all) => ({ key: k, kind: 'kc', payload: { k }, dependsOn: i ? [all[i - 1]] : [] })) });
      await waitFor(() => order.length === 3, { what: 'the chain to run' });
      assert.deepEqual(order, ['a', 'b', 'c']);
      // c has started; its completion is recorded after its handler returns.
      await waitFor(async () => (await h.queue.workflow(wf.id))?.state === 'completed', { what: 'the workflow completed' });
      const info = (await h.queue.workflow(wf.id))!;
      assert.equal(info.state, 'completed');
      assert.equal(info.jobs.length, 0);
    } finally {
      await w.stop();
    }
  });

  test('retention keeps a dependency while a dependent has not finished; emptied workflows and settled batches go with queueRetention', async () => {
    const h = herald();
    const w = h.queue.work('ret-step', () => 'kept');
    const cb = h.queue.work('ret-done', () => undefined);
    try {
      // b waits on a, then sits scheduled an hour ahead: a must survive retention until b finishes.
      const wf = await h.queue.enqueueWorkflow({ jobs: [{ key: 'a', kind: 'ret-step' }, { key: 'b', kind: 'ret-later', dependsOn: ['a'], delayMs: 3_600_000 }] });
      await waitFor(async () => (await stateOf(wf.jobs.b)) === 'available', { what: 'b to be released' });
      await adminQuery(`UPDATE herald.jobs SET finished_at = now() - interval '2 days' WHERE id = $1`, [wf.jobs.a], db.url);
      await h.queue.prune({ olderThanMs: 0, states: ['completed'] });
      assert.equal(await stateOf(wf.jobs.a), 'completed', 'a is kept: b depends on it');
      assert.deepEqual((await h.queue.dependencyResults(wf.jobs.b)).map((r) => r.result), ['kept']);
      await h.queue.cancel(wf.jobs.b);
      await h.queue.prune({ olderThanMs: 0, states: ['completed'] });
      assert.equal(await stateOf(wf.jobs.a), 'gone', 'b finished: a goes');
      assert.ok(await h.queue.workflow(wf.id), 'the workflow stays while a member is left');

      const { batchId } = await h.queue.enqueueBatch([{ kind: 'ret-step' }], { callback: { kind: 'ret-done' } });
      await waitFor(async () => (await h.queue.batch(batchId))?.outcome === 'completed', { what: 'the batch to settle' });
      await adminQuery(`UPDATE herald.job_batches SET settled_at = now() - interval '2 days' WHERE id = $1`, [batchId], db.url);
      await adminQuery(`UPDATE herald.job_workflows SET created_at = now() - interval '2 days' WHERE id = $1`, [wf.id], db.url);
      await adminQuery(`UPDATE herald.jobs SET finished_at = now() - interval '2 days' WHERE id = $1`, [wf.jobs.b], db.url);
      await h.queue.prune({ olderThanMs: 86_400_000 });
      assert.equal(await h.queue.workflow(wf.id), undefined, 'a workflow with no member left goes');
      assert.equal(await h.queue.batch(batchId), undefined, 'a batch settled before the retention goes');
    } finally {
      await Promise.all([w.stop(), cb.stop()]);
    }
  });

  test('retention examines workflows a page at a time from where it stopped: long-lived ones are not all probed at every run', async () => {
    const h = new Herald({ connectionString: db.url, poolSize: 2, maintenance: { enabled: false }, queue: { retentionBatchSize: 2 } });
    heralds.push(h);
    // 25 workflows whose one member waits an hour (they stay), then one emptied: 13 pages
    // of 2, more than one prune() looks at (10 pages).
    const kept: string[] = [];
    for (let i = 0; i < 25; i++) kept.push((await h.queue.enqueueWorkflow({ jobs: [{ key: 'x', kind: 'page-later', delayMs: 3_600_000 }] })).id);
    const emptied = await h.queue.enqueueWorkflow({ jobs: [{ key: 'x', kind: 'page-later', delayMs: 3_600_000 }] });
    await adminQuery(`DELETE FROM herald.jobs WHERE id = $1`, [emptied.jobs.x], db.url);
    await adminQuery(`UPDATE herald.job_workflows SET created_at = now() - interval '2 days' WHERE id = ANY($1::bigint[])`, [[...kept, emptied.id]], db.url);
    await h.queue.prune({ olderThanMs: 86_400_000 });
    assert.ok(await h.queue.workflow(emptied.id), 'the first call stops after 10 pages, before the emptied workflow');
    await h.queue.prune({ olderThanMs: 86_400_000 });
    assert.equal(await h.queue.workflow(emptied.id), undefined, 'the next call goes on from there and deletes it');
    for (const id of kept) assert.ok(await h.queue.workflow(id), 'a workflow with a member left stays');
    await h.queue.prune({ olderThanMs: 86_400_000 });
    assert.equal((await adminQuery<{ n: number }>('SELECT count(*)::int AS n FROM herald.job_workflows WHERE id = ANY($1::bigint[])', [kept], db.url))[0].n, 25, 'the cursor wraps round; nothing else goes');
  });

  test('a job with 20 dependencies completing at once on 20 connections is released and runs exactly once, round after round', async () => {
    const rounds = scaled(10, 3);
    const finishers = Array.from({ length: 20 }, () => herald({}, 2));
    let barrier = deferred();
    let startedLeaves = 0;
    const sinkRuns = new Map<string, number>();
    // prefetch 0: a worker holding a second leaf ahead behind the barrier would stall the round.
    const workers = finishers.map((f) =>
      f.queue.work('leaf', async () => {
        if (++startedLeaves === 20) barrier.resolve();
        await barrier.promise;
      }, { concurrency: 1, prefetch: 0 }),
    );
    workers.push(finishers[0].queue.work('sink', (job) => void sinkRuns.set(job.id, (sinkRuns.get(job.id) ?? 0) + 1)));
    try {
      for (let r = 0; r < rounds; r++) {
        startedLeaves = 0;
        barrier = deferred();
        const leaves = Array.from({ length: 20 }, (_, i) => ({ key: `l${i}`, kind: 'leaf' }));
        const wf = await finishers[0].queue.enqueueWorkflow({ jobs: [...leaves, { key: 'sink', kind: 'sink', dependsOn: leaves.map((l) => l.key) }] });
        await waitFor(async () => (await finishers[0].queue.workflow(wf.id))?.state === 'completed', { what: `round ${r} to complete`, timeoutMs: 60_000, progress: async () => (await finishers[0].queue.workflow(wf.id))?.counts.completed ?? 0 });
        assert.equal(sinkRuns.get(wf.jobs.sink), 1, `round ${r}: the sink ran once`);
        const [row] = await adminQuery<{ deps_pending: number; attempt: number }>(`SELECT deps_pending, attempt FROM herald.jobs WHERE id = $1`, [wf.jobs.sink], db.url);
        assert.deepEqual(row, { deps_pending: 0, attempt: 1 });
      }
    } finally {
      await Promise.all(workers.map((w) => w.stop()));
    }
  });

  test('cycles, unknown and duplicate keys and forbidden options are refused before any SQL', async () => {
    const h = herald();
    const before = await adminQuery<{ n: number }>(`SELECT count(*)::int AS n FROM herald.job_workflows`, [], db.url);
    const refused = async (wf: Parameters<typeof h.queue.enqueueWorkflow>[0], argument: string) => {
      await assert.rejects(h.queue.enqueueWorkflow(wf), (err) => err instanceof HeraldError && err.code === 'INVALID_ARGUMENT' && err.message.includes(argument));
    };
    await refused({ jobs: [{ key: 'a', kind: 'k', dependsOn: ['c'] }, { key: 'b', kind: 'k', dependsOn: ['a'] }, { key: 'c', kind: 'k', dependsOn: ['b'] }] }, 'dependsOn');
    await refused({ jobs: [{ key: 'a', kind: 'k', dependsOn: ['a'] }] }, 'dependsOn');
    await refused({ jobs: [{ key: 'a', kind: 'k', dependsOn: ['nope'] }] }, 'dependsOn');
    await refused({ jobs: [{ key: 'a', kind: 'k' }, { key: 'a', kind: 'k' }] }, 'key');
    await refused({ jobs: [] }, 'jobs');
    await refused({ jobs: [{ key: 'a', kind: 'k', uniqueKey: 'u' } as never] }, 'uniqueKey');
    await refused({ jobs: [{ key: 'a', kind: 'k', stages: ['x'] } as never] }, 'stages');
    await refused({ jobs: [{ key: 'a', kind: 'k' }], onFailure: 'retry' as never }, 'onFailure');
    const now = await adminQuery<{ n: number }>(`SELECT count(*)::int AS n FROM herald.job_workflows`, [], db.url);
    assert.deepEqual(now, before);
    assert.equal(await h.queue.workflow('999999'), undefined);
  });

  test("a SIGKILLed worker's dependency is rescued after its lease and retried by a survivor; its dependents then run", async () => {
    const h = herald({ rescueIntervalMs: 300 });
    let child: Fixture | undefined;
    const ran: string[] = [];
    const workers: { stop(): Promise<void> }[] = [];
    try {
      // The fixture's `hang` worker runs kind `victim` (lease 1500 ms) and never finishes.
      const wf = await h.queue.enqueueWorkflow({
        name: 'kill',
        jobs: [
          { key: 'first', kind: 'victim' },
          { key: 'second', kind: 'after', dependsOn: ['first'] },
          { key: 'third', kind: 'after', dependsOn: ['second'] },
        ],
      });
      child = spawnFixture('queue-worker.ts', [db.url, 'hang']);
      await waitFor(() => child!.lines.some((l) => l.startsWith(`started ${wf.jobs.first} `)), { timeoutMs: 30_000, what: 'the child to start the dependency' });
      await child.kill();
      assert.equal(await stateOf(wf.jobs.second), 'waiting');
      workers.push(h.queue.work('victim', () => void ran.push('first')));
      workers.push(h.queue.work('after', (job) => void ran.push(job.id === wf.jobs.second ? 'second' : 'third')));
      const done = await waitFor(async () => {
        const w = await h.queue.workflow(wf.id);
        return w?.state === 'completed' ? w : null;
      }, { timeoutMs: 30_000, what: 'the workflow to complete after the rescue', progress: async () => (await h.queue.workflow(wf.id))?.counts.completed ?? 0 });
      assert.deepEqual(ran, ['first', 'second', 'third']);
      const [first] = await adminQuery<{ attempt: number; errors: { error: string }[] }>(`SELECT attempt, errors FROM herald.jobs WHERE id = $1`, [wf.jobs.first], db.url);
      assert.equal(first.attempt, 2, 'the killed attempt is counted');
      assert.equal(first.errors[0].error, 'lease expired');
      assert.equal(done.counts.completed, 3);
    } finally {
      await child?.kill();
      await Promise.all(workers.map((w) => w.stop()));
    }
  });
});
