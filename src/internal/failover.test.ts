/**
 * Production faults across the parts: a failover to a streaming standby (primary
 * stopped, standby promoted, the clients' address moved), max_connections reached,
 * and a server restarted every 10 s while consumers run.
 */
import assert from 'node:assert/strict';
import { performance } from 'node:perf_hooks';
import { describe, test } from 'node:test';
import pg from 'pg';
import { createHerald } from '../client.js';
import { HeraldError } from '../errors.js';
import { privateCluster } from '../../test/support/cluster.js';
import { TcpProxy } from '../../test/support/proxy.js';
import { replicaPair } from '../../test/support/replica.js';
import { waitFor, waitForCount } from '../../test/support/wait.js';

/** Retries `fn` until it succeeds (a client riding out an outage); pacing between tries. */
async function retry<T>(fn: () => Promise<T>, stop: () => boolean): Promise<T | undefined> {
  for (let i = 0; ; i++) {
    try {
      return await fn();
    } catch {
      if (stop()) return undefined;
      await new Promise((r) => setTimeout(r, Math.min(50 * 2 ** i, 500)));
    }
  }
}

const pct = (xs: number[], p: number) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length ? s[Math.min(s.length - 1, Math.ceil((p / 100) * s.length) - 1)] : NaN;
};

describe('failover to a promoted standby', () => {
  test('primary stopped, standby promoted, address moved: every part resumes, nothing acknowledged is lost, nothing runs twice beyond fencing', async (t) => {
    const pair = await replicaPair();
    const proxy = await TcpProxy.start(pair.primary.url());
    const url = proxy.url(pair.primary.url());
    const setup = new pg.Client({ connectionString: pair.primary.url() });
    await setup.connect();
    await setup.query('CREATE TABLE ledger (message_id text PRIMARY KEY)');
    await setup.end();
    const herald = createHerald({
      connectionString: url,
      poolSize: 8,
      connectTimeoutMs: 2000,
      notifier: { reconnectMaxDelayMs: 200, connectTimeoutMs: 1000, healthCheckIntervalMs: 500, healthCheckTimeoutMs: 1000, queueUsageIntervalMs: 0 },
      mailbox: { pollIntervalMs: 1000, retryDelayMs: 50, maxRetryDelayMs: 200, maxAttempts: 1000 },
      queue: { leaseMs: 2000, heartbeatIntervalMs: 300, rescueIntervalMs: 300, pollIntervalMs: 300 },
    });
    const sequence: string[] = [];
    let recoveryProblems = 0;
    herald.notifier.on('notifier:recovery', ({ inRecovery }) => sequence.push(inRecovery ? 'recovery' : 'primary'));
    herald.notifier.on('notifier:connected', () => sequence.push('connected'));
    herald.notifier.on('notifier:problem', (e) => {
      if (e instanceof HeraldError && e.code === 'IN_RECOVERY') recoveryProblems++;
    });
    herald.mailbox.on('message:problem', () => {});
    herald.queue.on('job:problem', () => {});
    let dupErrors = 0;
    herald.mailbox.on('message:handlerError', ({ error }) => {
      if ((error as { code?: string })?.code === '23505') dupErrors++;
    });
    const jobRuns = new Map<string, number>();
    const published = new Map<string, number>();
    const consumer = herald.mailbox.consume('fo', async (m, tx) => {
      await tx.query('INSERT INTO ledger (message_id) VALUES ($1)', [m.id]);
    });
    const worker = herald.queue.work('fo', async (job) => void jobRuns.set(job.id, (jobRuns.get(job.id) ?? 0) + 1), { concurrency: 2 });
    const relay = herald.outbox.relay({ sink: (e) => void published.set(e.id, (published.get(e.id) ?? 0) + 1), pollIntervalMs: 200, leaseMs: 3000, batchSize: 10 });
    relay.on('relay:problem', () => {});
    const acked = { messages: [] as string[], jobs: [] as string[], events: [] as string[] };
    let stopping = false;
    const total = 200;
    let next = 0;
    const producer = async () => {
      while (next < total && !stopping) {
        const i = next++;
        const m = await retry(() => herald.mailbox.send({ to: 'fo', payload: i, id: `m-${i}` }), () => stopping);
        if (m) acked.messages.push(m.id);
        const j = await retry(() => herald.queue.enqueue('fo', { i }, { uniqueKey: `j-${i}` }), () => stopping);
        if (j) acked.jobs.push(j.id);
        const e = await retry(() => herald.outbox.add({ type: 'fo', key: `k${i % 5}`, payload: { i } }), () => stopping);
        if (e) acked.events.push(e);
      }
    };
    const producing = Promise.all([producer(), producer(), producer()]);
    const newPrimary = new pg.Client({ connectionString: pair.standby.url() });
    try {
      await herald.mailbox.start();
      await waitFor(() => acked.messages.length >= 60, { timeoutMs: 60_000, what: 'writes before the failover' });
      // The primary goes away; the address moves to the standby before it is promoted
      // (a DNS record that changes first), then the standby is promoted.
      await pair.primary.stop();
      proxy.retarget(pair.standby.url());
      await waitFor(() => sequence.includes('recovery'), { timeoutMs: 60_000, what: 'the notifier to find the standby in recovery' });
      await pair.promote();
      await producing;
      await newPrimary.connect();
      await waitFor(() => sequence.at(-1) === 'connected' && sequence.includes('primary'), { timeoutMs: 60_000, what: 'the notifier to LISTEN on the new primary' });
      const ledger = async () => (await newPrimary.query('SELECT count(*)::int AS n FROM ledger')).rows[0].n as number;
      await waitForCount(ledger, acked.messages.length, { what: 'acknowledged messages consumed' });
      await waitFor(() => acked.jobs.every((id) => jobRuns.has(id)), { timeoutMs: 60_000, what: 'acknowledged jobs run' });
      await waitFor(() => acked.events.every((id) => published.has(id)), { timeoutMs: 60_000, what: 'acknowledged events published' });

      const { rows: lost } = await newPrimary.query(
        `SELECT count(*)::int AS n FROM unnest($1::text[]) AS a(id) WHERE NOT EXISTS (SELECT 1 FROM herald.mailbox_messages m WHERE m.id = a.id)`,
        [acked.messages],
      );
      assert.equal(lost[0].n, 0, 'no acknowledged message lost (remote_apply)');
      const { rows: notInLedger } = await newPrimary.query(`SELECT count(*)::int AS n FROM unnest($1::text[]) AS a(id) WHERE NOT EXISTS (SELECT 1 FROM ledger l WHERE l.message_id = a.id)`, [acked.messages]);
      assert.equal(notInLedger[0].n, 0, 'every acknowledged message consumed');
      assert.equal(dupErrors, 0, 'no message consumed twice');
      const extraRuns = [...jobRuns.values()].reduce((s, n) => s + n - 1, 0);
      assert.ok(extraRuns <= 2, `job runs beyond one: ${extraRuns} (at most the worker's concurrency: runs in flight at the failover, fenced and rescued)`);
      const extraPublishes = [...published.values()].reduce((s, n) => s + n - 1, 0);
      assert.ok(extraPublishes <= 10, `events published again: ${extraPublishes} (at most the batch in flight)`);
      // One report per state change, and no LISTEN while the server was a standby.
      const from = sequence.indexOf('recovery');
      assert.equal(sequence.indexOf('primary'), sequence.indexOf('connected', from) - 1, 'no LISTEN between recovery and primary');
      assert.equal(sequence.filter((s) => s === 'recovery').length, 1);
      assert.equal(recoveryProblems, 1, 'one problem for the standby, not one per retry');
      t.diagnostic(
        `acknowledged: ${acked.messages.length} messages, ${acked.jobs.length} jobs, ${acked.events.length} events; extra job runs ${extraRuns}, extra publishes ${extraPublishes}; notifier events ${sequence.join(' ')}`,
      );
    } finally {
      stopping = true;
      await producing.catch(() => {});
      await Promise.all([consumer.stop(), worker.stop(), relay.stop()]).catch(() => {});
      await herald.close();
      await newPrimary.end().catch(() => {});
      await proxy.close();
      await pair.dispose();
    }
  });
});

describe('max_connections reached', () => {
  test('every slot taken: typed errors, backoff, no crash; consumers recover when connections free up', async () => {
    const pc = await privateCluster({ settings: { max_connections: 20, superuser_reserved_connections: 0 } });
    const hogs: pg.Client[] = [];
    const admin = new pg.Client({ connectionString: pc.url });
    await admin.connect();
    const herald = createHerald({
      connectionString: pc.url,
      poolSize: 4,
      notifier: { reconnectMaxDelayMs: 200, queueUsageIntervalMs: 0 },
      mailbox: { pollIntervalMs: 300 },
    });
    const problems: unknown[] = [];
    herald.notifier.on('notifier:problem', (e) => problems.push(e));
    herald.mailbox.on('message:problem', (e) => problems.push(e));
    const consumed: string[] = [];
    try {
      // Take every slot (the admin session holds one).
      for (;;) {
        const c = new pg.Client({ connectionString: pc.url });
        c.on('error', () => {});
        try {
          await c.connect();
          hogs.push(c);
        } catch (err) {
          assert.equal((err as { code?: string }).code, '53300');
          break;
        }
      }
      await admin.query(`INSERT INTO herald.mailbox_messages (id, destination, payload) VALUES ('full-1', 'full', 'x')`);
      const consumer = herald.mailbox.consume('full', (m) => void consumed.push(m.id));
      await waitFor(() => problems.some((e) => e instanceof HeraldError && e.code === 'TOO_MANY_CONNECTIONS'), { timeoutMs: 60_000, what: 'a TooManyConnectionsError' });
      await assert.rejects(herald.mailbox.send({ to: 'full', payload: 'y', id: 'full-2' }), (e: unknown) => e instanceof HeraldError && e.code === 'TOO_MANY_CONNECTIONS');
      assert.equal(consumed.length, 0, 'nothing consumed while no connection could be had');
      // Free the slots: everything resumes by itself.
      await Promise.all(hogs.splice(0).map((c) => c.end()));
      await waitFor(() => consumed.includes('full-1'), { timeoutMs: 60_000, what: 'the consumer to resume' });
      await herald.mailbox.send({ to: 'full', payload: 'y', id: 'full-2' });
      await waitFor(() => consumed.includes('full-2'), { timeoutMs: 60_000, what: 'a new message consumed' });
      assert.equal(herald.notifier.status, 'listening');
      await consumer.stop();
    } finally {
      await Promise.all(hogs.map((c) => c.end().catch(() => {})));
      await herald.close();
      await admin.end();
      await pc.dispose();
    }
  });
});

describe('server restarted every 10 s', () => {
  test('consumers keep delivering through three restarts: every message consumed once (delivery p99 reported)', async (t) => {
    const pc = await privateCluster();
    const admin = new pg.Pool({ connectionString: pc.url, max: 2 });
    admin.on('error', () => {});
    await admin.query('CREATE TABLE ledger (message_id text PRIMARY KEY)');
    const herald = createHerald({
      connectionString: pc.url,
      poolSize: 6,
      notifier: { reconnectMaxDelayMs: 200, queueUsageIntervalMs: 0 },
      mailbox: { pollIntervalMs: 1000, retryDelayMs: 50, maxRetryDelayMs: 200, maxAttempts: 1000 },
    });
    herald.notifier.on('notifier:problem', () => {});
    herald.mailbox.on('message:problem', () => {});
    let dupErrors = 0;
    herald.mailbox.on('message:handlerError', ({ error }) => {
      if ((error as { code?: string })?.code === '23505') dupErrors++;
    });
    const sentAt = new Map<string, number>();
    const latencies: number[] = [];
    const consumer = herald.mailbox.consume(
      'restarts',
      async (m, tx) => {
        await tx.query('INSERT INTO ledger (message_id) VALUES ($1)', [m.id]);
        const at = sentAt.get(m.id);
        if (at !== undefined) latencies.push(performance.now() - at);
      },
      { concurrency: 2 },
    );
    let stopping = false;
    const acked: string[] = [];
    let n = 0;
    // A steady producer: one message every 20 ms, each retried with its id until acknowledged.
    const producing = (async () => {
      while (!stopping) {
        const id = `r-${n++}`;
        const started = performance.now();
        sentAt.set(id, started);
        const r = await retry(() => herald.mailbox.send({ to: 'restarts', payload: id, id }), () => stopping);
        if (r) acked.push(id);
        const wait = 20 - (performance.now() - started);
        if (wait > 0) await new Promise((res) => setTimeout(res, wait));
      }
    })();
    try {
      for (let i = 0; i < 3; i++) {
        // Ten seconds of traffic (measured by acknowledged sends, not by a sleep), then a restart.
        const target = acked.length + 10_000 / 20;
        await waitForCount(() => acked.length, target, { what: 'messages acknowledged between restarts' });
        await pc.cluster.restart();
      }
      await waitForCount(() => acked.length, acked.length + 100, { what: 'messages after the last restart' });
      stopping = true;
      await producing;
      const ledger = async () => (await admin.query('SELECT count(*)::int AS n FROM ledger')).rows[0].n as number;
      await waitForCount(ledger, acked.length, { what: 'acknowledged messages consumed' });
      const { rows } = await admin.query(`SELECT count(*)::int AS n FROM unnest($1::text[]) a(id) WHERE NOT EXISTS (SELECT 1 FROM ledger l WHERE l.message_id = a.id)`, [acked]);
      assert.equal(rows[0].n, 0, 'every acknowledged message consumed');
      assert.equal(dupErrors, 0, 'none consumed twice');
      t.diagnostic(
        `${acked.length} messages, 3 restarts 10 s apart: delivery latency p50 ${pct(latencies, 50).toFixed(0)} ms, p99 ${pct(latencies, 99).toFixed(0)} ms, max ${Math.max(...latencies).toFixed(0)} ms`,
      );
    } finally {
      stopping = true;
      await producing.catch(() => {});
      await consumer.stop();
      await herald.close();
      await admin.end();
      await pc.dispose();
    }
  });
});
