/**
 * The maintenance service: one leader per fleet through the database, leadership that
 * moves when its process dies, every part's periodic task run by it (a send-only
 * process included), outbox pruning on by default, status, metrics and the CLI.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { describe, test } from 'node:test';
import { createHerald, type Herald, type HeraldOptions } from '../client.js';
import { InvalidOptionError } from '../errors.js';
import { HeraldServer } from '../server/server.js';
import { freshDatabase, type TestDatabase } from '../../test/support/db.js';
import { cli } from '../../test/support/cli.js';
import { waitFor } from '../../test/support/wait.js';
import { MAINTENANCE_DEFAULTS, MAINTENANCE_TASKS, type MaintenanceTask } from './types.js';

const CHILD = new URL('../../test/fixtures/maintenance-child.ts', import.meta.url).pathname;

/** A fresh database (its own leadership) and the Heralds made on it, all closed and dropped by `fn`'s end. */
async function withDatabase(fn: (db: TestDatabase, make: (o?: Omit<HeraldOptions, 'connectionString'>) => Herald) => Promise<void>): Promise<void> {
  const db = await freshDatabase();
  const heralds: Herald[] = [];
  try {
    await fn(db, (o = {}) => {
      const h = createHerald({ connectionString: db.url, poolSize: 3, notifier: { queueUsageIntervalMs: 0 }, ...o });
      heralds.push(h);
      return h;
    });
  } finally {
    for (const h of heralds) await h.close();
    await db.drop();
  }
}

/**
 * Awaits `p` while keeping the process alive: the service's timers are unref'd (it
 * never holds a process open), so a bare await of its event could end the test run.
 */
async function until<T>(p: Promise<T>, what: string): Promise<T> {
  let out: { v: T } | undefined;
  void p.then((v) => (out = { v }));
  await waitFor(() => out, { what, timeoutMs: 30_000 });
  return out!.v;
}

/** Resolves with the next `maintenance:run` of `task` by `h`. */
function nextRun(h: Herald, task: MaintenanceTask): Promise<{ rows: number; durationMs: number }> {
  return new Promise((resolve) => {
    const on = (info: { task: MaintenanceTask; rows: number; durationMs: number }) => {
      if (info.task !== task) return;
      h.maintenance.off('maintenance:run', on);
      resolve(info);
    };
    h.maintenance.on('maintenance:run', on);
  });
}

describe('maintenance service', () => {
  test('leadership moves to another process when the leader process is SIGKILLed', async () => {
    await withDatabase(async (db, make) => {
      const ttl = 1500;
      const child: ChildProcess = spawn(process.execPath, ['--import', 'tsx', CHILD, db.url, String(ttl)], { stdio: ['ignore', 'pipe', 'inherit'] });
      const lines: string[] = [];
      createInterface({ input: child.stdout! }).on('line', (l) => lines.push(l));
      try {
        await waitFor(() => lines.includes('leader true'), { timeoutMs: 60_000, what: 'the child to lead' });
        const childHolder = lines.find((l) => l.startsWith('holder '))!.slice('holder '.length);
        const h = make({ maintenance: { leaderTtlMs: ttl } });
        const led = h.maintenance.next('maintenance:leader');
        await h.mailbox.send({ to: 'parent', payload: 'x' }); // starts the service here too
        // The child leads; this process stands by (it renews every ttl / 3 and is refused).
        assert.equal((await h.maintenance.status()).leader?.holder, childHolder);
        assert.equal(h.maintenance.isLeader, false);
        child.kill('SIGKILL');
        await new Promise((r) => child.once('exit', r));
        const [info] = await until(led, 'this process to lead');
        assert.deepEqual(info, { leader: true, holder: h.maintenance.holder });
        const status = await h.maintenance.status();
        assert.equal(status.leader?.holder, h.maintenance.holder);
        assert.deepEqual(status.self, { holder: h.maintenance.holder, started: true, leader: true });
      } finally {
        if (child.exitCode === null && child.signalCode === null) child.kill('SIGKILL');
      }
    });
  });

  test('a leader that stops resigns: another process takes over at its next renewal, before the lease would run out', async () => {
    await withDatabase(async (_db, make) => {
      const a = make({ maintenance: { leaderTtlMs: 120_000 } });
      const b = make({ maintenance: { leaderTtlMs: 3000 } }); // renews every second
      a.maintenance.start();
      await until(a.maintenance.next('maintenance:leader'), 'a to lead');
      b.maintenance.start();
      const lease = (await b.maintenance.status()).leader!;
      assert.equal(lease.holder, a.maintenance.holder);
      const bLeads = b.maintenance.next('maintenance:leader');
      await a.close();
      assert.deepEqual((await until(bLeads, 'b to lead'))[0], { leader: true, holder: b.maintenance.holder });
      const { rows } = await b.driver.executor.query<{ early: boolean }>('SELECT now() < $1::timestamptz AS early', [lease.expiresAt]);
      assert.equal(rows[0].early, true, "b took over long before a's lease would have run out");
    });
  });

  test('a send-only process purges consumed messages', async () => {
    await withDatabase(async (_db, make) => {
      // Consumed messages, made by a process without maintenance.
      const other = make({ maintenance: { enabled: false } });
      for (let i = 0; i < 5; i++) await other.mailbox.send({ to: 'done', payload: i });
      for (let i = 0; i < 5; i++) assert.ok(await other.mailbox.receive('done'));
      assert.equal(other.maintenance.started, false);
      const sender = make({ maintenance: { mailboxRetention: { intervalMs: 100, retentionMs: 0 } } });
      assert.equal(sender.maintenance.started, false, 'nothing runs before a part is used');
      const purged = nextRun(sender, 'mailboxRetention');
      await sender.mailbox.send({ to: 'elsewhere', payload: 'only a send' });
      assert.equal(sender.maintenance.started, true);
      assert.ok((await until(purged, 'the purge')).rows >= 5);
      const { rows } = await sender.driver.executor.query<{ n: number }>(`SELECT count(*)::int AS n FROM herald.mailbox_messages WHERE state = 'consumed'`);
      assert.equal(rows[0].n, 0);
    });
  });

  test('outbox pruning of published events is on by default (7 days)', async () => {
    await withDatabase(async (_db, make) => {
      const h = make();
      assert.deepEqual(h.maintenance.options.tasks.outboxRetention, { enabled: true, intervalMs: 60_000, retentionMs: 604_800_000 });
      await h.driver.executor.query(
        `INSERT INTO herald.outbox_events (type, published_at) SELECT 'old', now() - interval '8 days' FROM generate_series(1, 30)
         UNION ALL SELECT 'recent', now() - interval '6 days' FROM generate_series(1, 3)`,
      );
      const pruned = nextRun(h, 'outboxRetention');
      await h.outbox.add({ type: 'new' }); // any use starts the service; a new leader runs a task that never ran at once
      assert.equal((await until(pruned, 'the prune')).rows, 30);
      const { rows } = await h.driver.executor.query<{ type: string; n: number }>(`SELECT type, count(*)::int AS n FROM herald.outbox_events GROUP BY type ORDER BY type`);
      assert.deepEqual(rows, [{ type: 'new', n: 1 }, { type: 'recent', n: 3 }]);
    });
  });

  test('every task runs on the leader; status, metrics, /metrics and the CLI report each one', async () => {
    await withDatabase(async (db, make) => {
      const short = { intervalMs: 200, retentionMs: 0 };
      const h = make({
        maintenance: {
          queueRescue: { intervalMs: 200 },
          queueRetention: short,
          completedJobRetention: short,
          mailboxRetention: short,
          outboxRetention: short,
          deadLetterRetention: { enabled: true, ...short },
          topicRetention: { intervalMs: 200 },
        },
      });
      // Work for each task: an expired lease, a completed and a dead job (the completed
      // one may go to either retention task), a consumed message, a published and a dead
      // outbox event, a dead message.
      await h.driver.executor.query(
        `INSERT INTO herald.jobs (kind, state, lease_expires_at, attempt) VALUES ('lost', 'running', now() - interval '1 s', 1);
         INSERT INTO herald.jobs (kind, state, finished_at) VALUES ('done', 'completed', now() - interval '1 s');
         INSERT INTO herald.jobs (kind, state, finished_at) VALUES ('failed', 'dead', now() - interval '1 s');
         INSERT INTO herald.outbox_events (type, published_at) VALUES ('sent', now() - interval '1 s');
         INSERT INTO herald.outbox_events (type, dead_at) VALUES ('failed', now() - interval '1 s');`,
      );
      const seen = new Map<MaintenanceTask, number>();
      h.maintenance.on('maintenance:run', ({ task, rows }) => seen.set(task, (seen.get(task) ?? 0) + rows));
      await h.mailbox.send({ to: 'm', payload: 1 });
      await h.mailbox.receive('m');
      await h.mailbox.send({ to: 'dead', payload: 2 });
      await h.driver.executor.query(`UPDATE herald.mailbox_messages SET state = 'dead', dead_at = now() - interval '1 s' WHERE destination = 'dead'`);
      await waitFor(() => MAINTENANCE_TASKS.every((t) => seen.has(t)) && (seen.get('deadLetterRetention') ?? 0) >= 2 && (seen.get('mailboxRetention') ?? 0) >= 1, {
        what: 'every task to run',
        timeoutMs: 30_000,
      });
      assert.ok(seen.get('queueRescue')! >= 1 && seen.get('queueRetention')! >= 1 && seen.get('outboxRetention')! >= 1);

      const status = await h.maintenance.status();
      assert.equal(status.leader?.holder, h.maintenance.holder);
      assert.deepEqual(status.tasks.map((t) => t.task), [...MAINTENANCE_TASKS]);
      for (const t of status.tasks) {
        assert.ok(t.enabled && t.runs >= 1 && t.lastRunAt instanceof Date && t.nextRunAt instanceof Date, `${t.task}: ${JSON.stringify(t)}`);
        assert.equal(t.ranBy, h.maintenance.holder);
        assert.equal(t.lastError, null);
        assert.equal(t.intervalMs, 200);
      }
      const metrics = h.maintenance.metrics();
      for (const t of MAINTENANCE_TASKS) assert.ok(metrics[t].runs >= 1 && metrics[t].errors === 0, t);
      assert.ok(metrics.deadLetterRetention.rows >= 2);

      const server = new HeraldServer(h, { port: 0, publicMetrics: true });
      const url = await server.start();
      try {
        const text = await (await fetch(`${url}/metrics`)).text();
        for (const t of MAINTENANCE_TASKS) assert.match(text, new RegExp(`herald_maintenance_runs_total\\{task="${t}"\\} [1-9]`));
        assert.match(text, /herald_maintenance_rows_total\{task="deadLetterRetention"\} [2-9]/);
        assert.match(text, /herald_maintenance_errors_total\{task="queueRescue"\} 0/);
        assert.match(text, /herald_maintenance_duration_seconds_total\{task="outboxRetention"\} /);
        assert.match(text, /herald_maintenance_leader 1/);
      } finally {
        await server.stop();
      }

      // The CLI reads the same records, without standing for election.
      const json = await cli(['maintenance', 'status', '--json'], { DATABASE_URL: db.url });
      assert.equal(json.code, 0, json.stderr);
      const doc = JSON.parse(json.stdout) as { leader: { holder: string }; tasks: { task: string; runs: number; nextRunAt: string }[] };
      assert.equal(doc.leader.holder, h.maintenance.holder);
      assert.deepEqual(doc.tasks.map((t) => t.task), [...MAINTENANCE_TASKS]);
      assert.ok(doc.tasks.every((t) => t.runs >= 1 && typeof t.nextRunAt === 'string'));
      const text = await cli(['maintenance', 'status'], { DATABASE_URL: db.url });
      assert.equal(text.code, 0, text.stderr);
      const lines = text.stdout.trim().split('\n');
      assert.equal(lines.length, MAINTENANCE_TASKS.length);
      for (const [i, t] of MAINTENANCE_TASKS.entries()) {
        assert.match(lines[i], new RegExp(`^${t} +on +last=\\d{4}-\\S+ rows=\\d+ took=\\d+ms next=\\d{4}-\\S+ runs=\\d+ errors=0 leader=${h.maintenance.holder.replace(/[.]/g, '\\.')}$`));
      }
      assert.equal((await cli(['maintenance', 'run', 'nope'], { DATABASE_URL: db.url })).code, 2);
      const ran = await cli(['maintenance', 'run', 'outboxRetention'], { DATABASE_URL: db.url });
      assert.equal(ran.code, 0, ran.stderr);
      assert.match(ran.stdout, /^outboxRetention rows=\d+\n$/);
    });
  });

  test('a failing task reports maintenance:error and its last error, and runs again', async () => {
    await withDatabase(async (_db, make) => {
      const h = make({ maintenance: { outboxRetention: { intervalMs: 100 } } });
      // Take the outbox's table away under the task: every run fails.
      await h.driver.executor.query('ALTER TABLE herald.outbox_events RENAME TO outbox_events_away');
      const errors: string[] = [];
      h.maintenance.on('maintenance:error', ({ task, error }) => task === 'outboxRetention' && errors.push(error.message));
      h.maintenance.start();
      await waitFor(() => errors.length >= 2, { what: 'two failed runs' });
      const t = (await h.maintenance.status()).tasks.find((x) => x.task === 'outboxRetention')!;
      assert.match(t.lastError ?? '', /outbox_events/);
      assert.ok(t.errors >= 2);
      assert.ok(h.maintenance.metrics().outboxRetention.errors >= 2);
      await h.driver.executor.query('ALTER TABLE herald.outbox_events_away RENAME TO outbox_events');
      await until(nextRun(h, 'outboxRetention'), 'a successful run');
      assert.equal((await h.maintenance.status()).tasks.find((x) => x.task === 'outboxRetention')!.lastError, null);
    });
  });

  test('options: defaults, per-part fallbacks, and errors that name the option', async () => {
    const h = createHerald({ connectionString: 'postgres://127.0.0.1:1/x', queue: { rescueIntervalMs: 700, retentionMs: 0, completedRetentionMs: 0 }, mailbox: { deadRetentionMs: 5000 }, topics: { maintenanceIntervalMs: 900 } });
    try {
      const t = h.maintenance.options.tasks;
      assert.equal(t.completedJobRetention.enabled, false);
      assert.deepEqual(MAINTENANCE_DEFAULTS.tasks.completedJobRetention, { enabled: true, intervalMs: 10_000, retentionMs: 300_000 });
      assert.equal(t.queueRescue.intervalMs, 700);
      assert.equal(t.queueRetention.enabled, false);
      assert.deepEqual(t.deadLetterRetention, { enabled: true, intervalMs: 3_600_000, retentionMs: 5000 });
      assert.equal(t.topicRetention.intervalMs, 900);
      assert.equal(t.mailboxRetention.retentionMs, 86_400_000);
      assert.equal(h.maintenance.options.leaderTtlMs, 10_000);
    } finally {
      await h.close();
    }
    const bad: [HeraldOptions['maintenance'], string][] = [
      [{ leaderTtlMs: 0 }, 'maintenance.leaderTtlMs'],
      [{ outboxRetention: { retentionMs: -1 } }, 'maintenance.outboxRetention.retentionMs'],
      [{ queueRescue: { intervalMs: Number.NaN } }, 'maintenance.queueRescue.intervalMs'],
      [{ queueRescue: { retentionMs: 5 } }, 'maintenance.queueRescue.retentionMs'],
      [{ topicRetention: { enabled: 'yes' as never } }, 'maintenance.topicRetention.enabled'],
      [{ batchSize: 0 }, 'maintenance.batchSize'],
    ];
    for (const [maintenance, option] of bad) {
      assert.throws(() => createHerald({ connectionString: 'postgres://127.0.0.1:1/x', maintenance }), (err: unknown) => err instanceof InvalidOptionError && err.message.includes(option), option);
    }
  });
});
