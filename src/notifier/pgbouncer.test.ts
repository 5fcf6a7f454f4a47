import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { Herald } from '../client.js';
import { ListenNotSessionError } from '../errors.js';
import { freshDatabase, type TestDatabase } from '../../test/support/db.js';
import { pgbouncerBinary, startPgBouncer } from '../../test/support/pgbouncer.js';
import { nextEvent, waitFor, waitForCount } from '../../test/support/wait.js';

const missing = pgbouncerBinary() ? false : 'pgbouncer is not installed (apt-get install pgbouncer; .ci/run installs it)';

let db: TestDatabase;
before(async () => {
  db = await freshDatabase();
});
after(async () => db.drop());

const OPTIONS = { healthCheckIntervalMs: 300, queueUsageIntervalMs: 0, verifySessionTimeoutMs: 1000 };

describe('notifier behind PgBouncer', { skip: missing }, () => {
  it('listens through session pooling', async () => {
    const bouncer = await startPgBouncer(db.url, 'session');
    const herald = new Herald({ connectionString: bouncer.url(db.url), notifier: OPTIONS });
    try {
      const sub = herald.listen('via-session-pool');
      await sub.established;
      const n = sub.wait({ timeoutMs: 10_000 });
      await herald.notify('via-session-pool', 'hello');
      assert.equal((await n)?.payload, 'hello');
      assert.equal(herald.notifier.status, 'listening');
    } finally {
      await herald.close();
      await bouncer.stop();
    }
  });

  it('detects transaction pooling: a typed error and status failed, not a silent listener', async () => {
    const bouncer = await startPgBouncer(db.url, 'transaction');
    const herald = new Herald({ connectionString: bouncer.url(db.url), notifier: OPTIONS });
    try {
      const failed = nextEvent(herald.notifier, 'notifier:status', 30_000);
      const sub = herald.listen('via-transaction-pool');
      await assert.rejects(sub.established, (e: unknown) => e instanceof ListenNotSessionError && e.code === 'LISTEN_NOT_SESSION');
      await failed;
      assert.equal(herald.notifier.status, 'failed');
      assert.ok(herald.notifier.stats().lastError instanceof ListenNotSessionError);
      assert.throws(() => herald.listen('again'), ListenNotSessionError);
    } finally {
      await herald.close();
      await bouncer.stop();
    }
  });

  it('works with the pool through transaction pooling and a direct listen connection', async () => {
    const bouncer = await startPgBouncer(db.url, 'transaction');
    const herald = new Herald({ connectionString: bouncer.url(db.url), listenConnectionString: db.url, notifier: OPTIONS });
    try {
      const sub = herald.listen('split');
      await sub.established;
      const n = sub.wait({ timeoutMs: 10_000 });
      await herald.notify('split', 'through the pooler');
      assert.equal((await n)?.payload, 'through the pooler');
    } finally {
      await herald.close();
      await bouncer.stop();
    }
  });

  it('runs jobs through transaction pooling: prepared statements turn themselves off, every job runs once', async () => {
    const bouncer = await startPgBouncer(db.url, 'transaction');
    const herald = new Herald({ connectionString: bouncer.url(db.url), listenConnectionString: db.url, poolSize: 4, notifier: OPTIONS });
    try {
      const jobs = await herald.queue.enqueueMany(Array.from({ length: 200 }, (_, i) => ({ kind: 'pooled', payload: { i } })));
      const ran = new Map<string, number>();
      let problems = 0;
      herald.queue.on('job:problem', () => problems++);
      herald.queue.work('pooled', (job) => void ran.set(job.id, (ran.get(job.id) ?? 0) + 1), { concurrency: 4, prefetch: 20 });
      await waitFor(async () => (await herald.queue.stats()).some((r) => r.kind === 'pooled' && r.state === 'completed' && r.count === 200));
      assert.equal(ran.size, 200);
      assert.ok([...ran.values()].every((n) => n === 1));
      assert.deepEqual([...ran.keys()].sort(), jobs.map((j) => j.id).sort());
      assert.equal(problems, 0);
    } finally {
      await herald.close();
      await bouncer.stop();
    }
  });

  it('consumes a topic through transaction pooling: every message once, in key order', async () => {
    const bouncer = await startPgBouncer(db.url, 'transaction');
    const herald = new Herald({ connectionString: bouncer.url(db.url), listenConnectionString: db.url, poolSize: 4, notifier: OPTIONS });
    try {
      await herald.topics.create('pooled', { partitions: 4 });
      await herald.topics.createGroup('pooled', 'g', 'earliest');
      const N = 300;
      await herald.topics.publishMany('pooled', Array.from({ length: N }, (_, i) => ({ key: `k${i % 10}`, payload: i })));
      const got: number[] = [];
      const consumer = herald.topics.consumer<number>('pooled', 'g', ({ messages }) => void got.push(...messages.map((m) => m.payload)), { batchSize: 20, concurrency: 2 });
      await consumer.start();
      try {
        await waitForCount(() => got.length, N, { what: 'messages consumed' });
      } finally {
        await consumer.stop();
      }
      assert.equal(got.length, N);
      assert.equal(new Set(got).size, N);
      for (let k = 0; k < 10; k++) {
        const ofKey = got.filter((i) => i % 10 === k);
        assert.deepEqual(ofKey, [...ofKey].sort((a, b) => a - b), `key k${k} in order`);
      }
    } finally {
      await herald.close();
      await bouncer.stop();
    }
  });
});
