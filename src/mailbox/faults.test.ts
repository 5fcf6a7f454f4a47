/**
 * The mailbox under real faults: SIGKILLed consumers, listen connections cut while a
 * message is committed, and a load of 4 producer and 4 consumer processes while the
 * listen sessions are terminated every 2 s and the server restarts twice.
 */
import assert from 'node:assert/strict';
import { spawn, type ChildProcess } from 'node:child_process';
import { createInterface } from 'node:readline';
import { after, before, describe, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import pg from 'pg';
import { createHerald } from '../client.js';
import { LISTEN_APPLICATION_NAME } from '../driver/types.js';
import { privateCluster } from '../../test/support/cluster.js';
import { freshDatabase, terminateBackends, type TestDatabase } from '../../test/support/db.js';
import { TcpProxy } from '../../test/support/proxy.js';
import { scaled } from '../../test/support/scale.js';
import { deferred, nextEvent, waitFor, waitForCount } from '../../test/support/wait.js';

const WORKERS = fileURLToPath(new URL('../../test/workers/', import.meta.url));

interface Worker {
  child: ChildProcess;
  /** Resolves with the first JSON line that has `key`. */
  line<T = Record<string, unknown>>(key: string): Promise<T>;
  exited: Promise<number | null>;
}

function worker(script: string, config: unknown): Worker {
  const child = spawn(process.execPath, ['--import', 'tsx', WORKERS + script, JSON.stringify(config)], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  const lines: Record<string, unknown>[] = [];
  const waiters: { key: string; resolve: (v: never) => void }[] = [];
  createInterface({ input: child.stdout! }).on('line', (text) => {
    let obj: Record<string, unknown>;
    try {
      obj = JSON.parse(text);
    } catch {
      return;
    }
    lines.push(obj);
    for (const w of [...waiters]) {
      if (w.key in obj) {
        waiters.splice(waiters.indexOf(w), 1);
        w.resolve(obj as never);
      }
    }
  });
  const exited = new Promise<number | null>((resolve) => child.on('exit', (code) => resolve(code)));
  return {
    child,
    exited,
    line<T>(key: string): Promise<T> {
      const found = lines.find((l) => key in l);
      if (found) return Promise.resolve(found as T);
      return new Promise<T>((resolve, reject) => {
        waiters.push({ key, resolve: resolve as (v: never) => void });
        void exited.then((code) => reject(new Error(`${script} exited (${code}) before printing ${key}`)));
      });
    },
  };
}

const LEDGER = 'CREATE TABLE ledger (message_id text, consumer text NOT NULL)';
const LEDGER_UNIQUE = 'CREATE UNIQUE INDEX ledger_message ON ledger (message_id)';

describe('mailbox under faults (shared cluster)', () => {
  let db: TestDatabase;
  let pool: pg.Pool;
  before(async () => {
    db = await freshDatabase();
    pool = new pg.Pool({ connectionString: db.url, max: 3 });
    pool.on('error', () => {});
    await pool.query(LEDGER);
    await pool.query(LEDGER_UNIQUE);
  });
  after(async () => {
    await pool.end();
    await db.drop();
  });

  it('a consumer SIGKILLed inside its handler: the message is ready at once, redelivered with the killed delivery counted, and the ledger shows it once', async () => {
    const herald = createHerald({ connectionString: db.url, poolSize: 3 });
    const to = 'sigkill';
    const victim = worker('mailbox-consumer.ts', { url: db.url, destinations: [to], name: 'victim', mode: 'hang' });
    await victim.line('ready');
    await herald.mailbox.send({ to, payload: 'once', id: 'kill-1' });
    assert.equal((await victim.line<{ inHandler: string }>('inHandler')).inHandler, 'kill-1');
    // The take row committed before the handler ran: it is what counts this delivery.
    // The take row was sent before the handler began; it commits meanwhile.
    await waitFor(async () => (await pool.query(`SELECT 1 FROM herald.mailbox_takes WHERE destination = $1`, [to])).rowCount === 1, { what: 'the take row to commit' });
    assert.deepEqual((await pool.query(`SELECT ids FROM herald.mailbox_takes WHERE destination = $1`, [to])).rows, [{ ids: ['kill-1'] }]);
    victim.child.kill('SIGKILL');
    await victim.exited;
    // Its transaction rolls back when the server sees the socket close: the message is
    // ready and unlocked at once (nothing hides it), its take row left behind.
    await waitFor(
      async () => {
        const c = await pool.connect();
        try {
          await c.query('BEGIN');
          return (await c.query(`SELECT 1 FROM herald.mailbox_messages WHERE id = 'kill-1' AND state = 'ready' FOR UPDATE SKIP LOCKED`)).rowCount === 1;
        } finally {
          await c.query('ROLLBACK');
          c.release();
        }
      },
      { what: "the victim's transaction to roll back" },
    );
    const consumed = deferred<number>();
    const c = herald.mailbox.consume(to, async (m, tx) => {
      await tx.query('INSERT INTO ledger (message_id, consumer) VALUES ($1, $2)', [m.id, 'survivor']);
      consumed.resolve(m.attempts);
    });
    // Its first take counts the abandoned one (attempt 1) and delivers it again (attempt 2).
    assert.equal(await consumed.promise, 2);
    await c.stop();
    const rows = (await pool.query(`SELECT consumer FROM ledger WHERE message_id = 'kill-1'`)).rows;
    assert.deepEqual(rows, [{ consumer: 'survivor' }]);
    assert.equal((await pool.query(`SELECT attempts FROM herald.mailbox_messages WHERE id = 'kill-1'`)).rows[0].attempts, 2, 'the killed delivery counted');
    assert.equal((await pool.query(`SELECT count(*)::int AS n FROM herald.mailbox_takes WHERE destination = $1`, [to])).rows[0].n, 0, 'no take row left');
    assert.equal((await herald.mailbox.stats(to))[0].consumed, 1);
    await herald.close();
  });

  it('a message that SIGKILLs its consumer every time ends in dead letters after maxAttempts; later messages are delivered', async () => {
    const herald = createHerald({ connectionString: db.url, poolSize: 3 });
    const to = 'poison';
    const maxAttempts = 3;
    const spawned: Worker[] = [];
    const start = () => {
      const w = worker('mailbox-consumer.ts', { url: db.url, destinations: [to], name: 'poisoned', mode: 'poison', maxAttempts, pollIntervalMs: 200 });
      spawned.push(w);
      return w;
    };
    try {
      await herald.mailbox.send({ to, payload: 'poison', id: 'poison-1' });
      await herald.mailbox.send({ to, payload: 'fine', id: 'after-1' });
      const state = async () => (await pool.query(`SELECT state, attempts, last_error FROM herald.mailbox_messages WHERE id = 'poison-1'`)).rows[0];
      // Each consumer process dies in the poison's handler; a new one takes over and counts
      // the abandoned take it left, until that count uses up the poison's attempts.
      let deaths = 0;
      while ((await state()).state !== 'dead') {
        const w = start();
        const outcome = await Promise.race([
          w.exited.then(() => 'exited' as const),
          waitFor(async () => (await state()).state === 'dead', { timeoutMs: 120_000, what: 'the poison message to die' }).then(() => 'dead' as const),
        ]);
        if (outcome === 'exited') deaths++;
        else break;
      }
      const dead = await state();
      assert.equal(dead.state, 'dead');
      assert.equal(dead.attempts, maxAttempts, 'every killed delivery counted, none beyond maxAttempts');
      assert.equal(deaths, maxAttempts, 'the process died once per attempt');
      assert.match(dead.last_error, /no outcome recorded/);
      // Later messages: the one sent behind the poison, and new ones.
      const survivor = spawned.at(-1)!.child.exitCode === null && spawned.at(-1)!.child.signalCode === null ? spawned.at(-1)! : start();
      await survivor.line('ready');
      await herald.mailbox.sendMany([
        { to, payload: 'fine', id: 'after-2' },
        { to, payload: 'fine', id: 'after-3' },
      ]);
      await waitFor(async () => (await pool.query(`SELECT count(*)::int AS n FROM ledger WHERE message_id LIKE 'after-%'`)).rows[0].n === 3, {
        timeoutMs: 60_000,
        what: 'the later messages to be consumed',
      });
      assert.equal((await pool.query(`SELECT count(*)::int AS n FROM ledger WHERE message_id = 'poison-1'`)).rows[0].n, 0);
      const dl = await herald.mailbox.deadLetters(to);
      assert.deepEqual(dl.map((m) => m.id), ['poison-1']);
    } finally {
      for (const w of spawned) w.child.kill('SIGKILL');
      await Promise.all(spawned.map((w) => w.exited));
      await herald.close();
    }
  });

  it('a message committed while every receiver was disconnected arrives after reconnect, before the safety poll', async () => {
    const proxy = await TcpProxy.start(db.url);
    const herald = createHerald({
      connectionString: db.url,
      listenConnectionString: proxy.url(db.url),
      poolSize: 4,
      notifier: { connectTimeoutMs: 300, reconnectMaxDelayMs: 100 },
      // A safety poll far beyond the test's waits: only the catch-up can find the messages.
      mailbox: { pollIntervalMs: 600_000 },
    });
    const toReceive = 'offline-receive';
    const toConsume = 'offline-consume';
    const consumed = deferred<string>();
    const c = herald.mailbox.consume(toConsume, (m) => consumed.resolve(m.id));
    await herald.mailbox.start();
    const receiving = herald.mailbox.receive(toReceive, { timeoutMs: 120_000 });
    await waitFor(() => herald.notifier.status === 'listening');

    proxy.blackhole(); // reconnect attempts hang until we let traffic pass again
    const lost = nextEvent(herald.notifier, 'notifier:lost');
    proxy.cut();
    await lost;
    // Committed while no receiver listens: this NOTIFY reaches nobody.
    await herald.mailbox.sendMany([
      { to: toReceive, payload: 'r', id: 'offline-r' },
      { to: toConsume, payload: 'c', id: 'offline-c' },
    ]);
    const reconnected = nextEvent(herald.notifier, 'notifier:reconnected', 60_000);
    proxy.pass();
    await reconnected;
    assert.equal((await receiving)?.id, 'offline-r');
    assert.equal(await consumed.promise, 'offline-c');
    await c.stop();
    await herald.close();
    await proxy.close();
  });
});

describe('mailbox under load with listen terminations and server restarts (private cluster)', () => {
  it('4 producers x 8 destinations, 2 consumer processes per destination: every message consumed exactly once', async (t) => {
    const pc = await privateCluster({ settings: { max_connections: 200 } });
    const url = pc.url;
    const admin = new pg.Pool({ connectionString: url, max: 2 });
    admin.on('error', () => {});
    const workers: Worker[] = [];
    let terminator: NodeJS.Timeout | undefined;
    try {
      await admin.query(LEDGER);
      await admin.query(LEDGER_UNIQUE);
      const perProducer = scaled(25_000, 500);
      const total = 4 * perProducer;
      const destinations = Array.from({ length: 8 }, (_, i) => `d${i}`);
      // Each consumer process takes 4 destinations; each destination has 2 processes.
      const consumers = [0, 1, 2, 3].map((k) =>
        worker('mailbox-consumer.ts', {
          url,
          destinations: k % 2 === 0 ? destinations.slice(0, 4) : destinations.slice(4),
          batchSize: 50,
          name: `c${k}`,
          mode: 'ledger',
          pollIntervalMs: 5000,
        }),
      );
      workers.push(...consumers);
      await Promise.all(consumers.map((c) => c.line('ready')));

      // A first round now, while every consumer is listening, so a short (scaled) run
      // has listen terminations too; then one every 2 s.
      let terminations = await terminateBackends('postgres', { applicationName: LISTEN_APPLICATION_NAME }, url);
      terminator = setInterval(() => {
        void terminateBackends('postgres', { applicationName: LISTEN_APPLICATION_NAME }, url)
          .then((n) => (terminations += n))
          .catch(() => {});
      }, 2000);

      const producers = [0, 1, 2, 3].map((k) => worker('mailbox-producer.ts', { url, prefix: `p${k}`, count: perProducer, destinations }));
      workers.push(...producers);

      const ledgerCount = async () => (await admin.query('SELECT count(*)::int AS c FROM ledger')).rows[0].c as number;
      const sentCount = async () => (await admin.query('SELECT count(*)::int AS c FROM herald.mailbox_messages')).rows[0].c as number;
      // Restart while the producers are still sending (and the consumers consuming).
      for (const fraction of [0.3, 0.6]) {
        await waitForCount(sentCount, Math.ceil(total * fraction), { intervalMs: 50, what: 'messages sent' });
        await pc.cluster.restart();
      }
      const produced = await Promise.all(producers.map((p) => p.line<{ created: number; retries: number }>('created')));
      await waitForCount(ledgerCount, total, { intervalMs: 200, what: 'messages in the ledger' });
      clearInterval(terminator);

      const stats = await Promise.all(
        consumers.map(async (c) => {
          c.child.kill('SIGTERM');
          return c.line<{ consumed: number; dupErrors: number; otherErrors: number; reconnects: number }>('consumed');
        }),
      );
      const { rows } = await admin.query(`
        SELECT (SELECT count(*)::int FROM ledger) AS ledger,
               (SELECT count(DISTINCT message_id)::int FROM ledger) AS distinct_ids,
               (SELECT count(*)::int FROM herald.mailbox_messages) AS messages,
               (SELECT count(*)::int FROM herald.mailbox_messages WHERE state = 'consumed') AS consumed,
               (SELECT count(*)::int FROM herald.mailbox_messages m WHERE NOT EXISTS (SELECT 1 FROM ledger l WHERE l.message_id = m.id)) AS missing`);
      const r = rows[0];
      assert.equal(produced.reduce((s, p) => s + p.created, 0), total, 'producers created each id exactly once');
      assert.equal(r.messages, total);
      assert.equal(r.ledger, total, 'one ledger row per message');
      assert.equal(r.distinct_ids, total, 'none twice');
      assert.equal(r.missing, 0, 'none lost');
      assert.equal(r.consumed, total);
      assert.equal(stats.reduce((s, c) => s + c.dupErrors, 0), 0, 'no consumer ever tried to consume a message twice');
      // A commit whose reply was lost in a restart is in the ledger but not in a consumer's count.
      assert.ok(stats.reduce((s, c) => s + c.consumed, 0) <= total);
      t.diagnostic(
        `messages ${total}, listen terminations ${terminations}, producer retries ${produced.reduce((s, p) => s + p.retries, 0)}, ` +
          `consumer reconnects ${stats.map((c) => c.reconnects).join('/')}`,
      );
      assert.ok(terminations > 0, 'listen sessions were terminated');
      // Two restarts close together can fall into one outage for a consumer still reconnecting from the first.
      assert.ok(stats.every((c) => c.reconnects >= 1), 'every consumer reconnected after the restarts');
    } finally {
      clearInterval(terminator);
      for (const w of workers) w.child.kill('SIGKILL');
      await Promise.all(workers.map((w) => w.exited));
      await admin.end();
      await pc.dispose();
    }
  });
});
