import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import pg from 'pg';
import postgres from 'postgres';
import { Herald } from '../client.js';
import { LISTEN_APPLICATION_NAME } from '../driver/types.js';
import { HeraldError, InvalidOptionError } from '../errors.js';
import { freshDatabase, terminateBackends, type TestDatabase } from '../../test/support/db.js';
import { TcpProxy } from '../../test/support/proxy.js';
import { nextEvent, waitFor } from '../../test/support/wait.js';
import { NOTIFIER_DEFAULTS } from './notifier.js';

let db: TestDatabase;
before(async () => {
  db = await freshDatabase();
});
after(async () => db.drop());

const FAST = { healthCheckIntervalMs: 300, healthCheckTimeoutMs: 500, reconnectMaxDelayMs: 200, queueUsageIntervalMs: 0 };

/** Resolves with `promise`, or rejects naming `what` after `ms` (a generous bound, not a timing assertion). */
async function within<T>(promise: Promise<T>, ms: number, what: string): Promise<T> {
  let timer: NodeJS.Timeout | undefined;
  try {
    return await Promise.race([
      promise,
      new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`${what} did not happen within ${ms} ms`)), ms);
      }),
    ]);
  } finally {
    clearTimeout(timer);
  }
}

/** The fault window: the proxy stays black-holed this long (a fault's duration, not a wait for a signal). */
const faultFor = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Sends `payload` until `sub` receives it: proves delivery on the new session. */
async function delivers(herald: Herald, channel: string, payload: string): Promise<void> {
  const sub = herald.listen(channel);
  try {
    await sub.established;
    await waitFor(
      async () => {
        const next = sub.wait({ timeoutMs: 200 });
        await herald.notify(channel, payload).catch(() => {});
        return (await next)?.payload === payload;
      },
      { timeoutMs: 20_000, what: `delivery on ${channel}` },
    );
  } finally {
    await sub.close();
  }
}

describe('notifier deadlines over postgres.js', () => {
  it('a black hole during an in-flight LISTEN: found, rebuilt, the pending subscription goes live', async () => {
    const proxy = await TcpProxy.start(db.url);
    const sql = postgres(db.url, { max: 2, onnotice: () => {} });
    const herald = new Herald({ sql, listenConnectionString: proxy.url(db.url), notifier: { ...FAST, statementTimeoutMs: 600_000 } });
    try {
      await herald.listen('pjs-before').established;
      const lost = nextEvent(herald.notifier, 'notifier:lost', 20 * (FAST.healthCheckIntervalMs + FAST.healthCheckTimeoutMs));
      proxy.blackhole();
      const pending = herald.listen('pjs-mid-listen');
      await lost;
      proxy.pass();
      await within(pending.established, 30_000, 'the pending subscription going live');
      assert.deepEqual(await herald.notifier.serverChannels(), ['pjs-before', 'pjs-mid-listen']);
    } finally {
      await within(herald.close(), 10_000, 'close()');
      await sql.end({ timeout: 1 });
      await proxy.close();
    }
  });

  it('the reconnect probe through a black-holed pooled connection times out and the notifier recovers', async () => {
    const poolProxy = await TcpProxy.start(db.url);
    const sql = postgres(poolProxy.url(db.url), { max: 4, onnotice: () => {}, connect_timeout: 1 });
    const herald = new Herald({ sql, listenConnectionString: db.url, notifier: { ...FAST, statementTimeoutMs: 300 } });
    const problems: Error[] = [];
    herald.notifier.on('notifier:problem', (e) => problems.push(e));
    try {
      await herald.listen('pjs-probe').established;
      poolProxy.blackhole();
      assert.equal(await terminateBackends(db.name, { applicationName: LISTEN_APPLICATION_NAME }), 1);
      await waitFor(() => problems.filter((e) => (e as HeraldError).code === 'TIMEOUT').length >= 2, { what: 'two probes timing out', timeoutMs: 30_000 });
      const reconnected = nextEvent(herald.notifier, 'notifier:reconnected', 30_000);
      poolProxy.pass();
      await reconnected;
      await delivers(herald, 'pjs-probe', 'probe ok');
    } finally {
      await within(herald.close(), 10_000, 'close()');
      await sql.end({ timeout: 1 });
      await poolProxy.close();
    }
  });
});

describe('notifier deadlines', () => {
  it('rejects bad deadline options naming the option, and documents the defaults', async () => {
    for (const [options, name] of [
      [{ connectTimeoutMs: -1 }, 'connectTimeoutMs'],
      [{ notifier: { statementTimeoutMs: 0 } }, 'statementTimeoutMs'],
      [{ notifier: { connectTimeoutMs: Number.NaN } }, 'connectTimeoutMs'],
      [{ notifier: { maxConnectAttempts: 0 } }, 'maxConnectAttempts'],
      [{ poolSize: 0 }, 'poolSize'],
      [{ poolSize: 2.5 }, 'poolSize'],
    ] as const) {
      assert.throws(
        () => new Herald({ connectionString: db.url, ...options }),
        (e: unknown) => e instanceof InvalidOptionError && e.option === name,
      );
    }
    assert.equal(NOTIFIER_DEFAULTS.connectTimeoutMs, 10_000);
    assert.equal(NOTIFIER_DEFAULTS.statementTimeoutMs, 5000);
    const herald = new Herald({ connectionString: db.url, connectTimeoutMs: 1234, notifier: { maxReconnectAttempts: 7 } });
    assert.equal(herald.notifier.options.connectTimeoutMs, 1234);
    assert.equal(herald.notifier.options.maxConnectAttempts, 7);
    await herald.close();
  });

  it('a black hole during an in-flight LISTEN is found by the health check; the pending subscription goes live after the reconnect', async () => {
    const proxy = await TcpProxy.start(db.url);
    // A statement deadline far away: only the health check (due, then healthCheckTimeoutMs) can find it.
    const herald = new Herald({ connectionString: db.url, listenConnectionString: proxy.url(db.url), notifier: { ...FAST, statementTimeoutMs: 600_000 } });
    try {
      const first = herald.listen('before-hole');
      await first.established;
      const lost = nextEvent(herald.notifier, 'notifier:lost', 20 * (FAST.healthCheckIntervalMs + FAST.healthCheckTimeoutMs));
      const problem = nextEvent(herald.notifier, 'notifier:problem', 20 * (FAST.healthCheckIntervalMs + FAST.healthCheckTimeoutMs));
      proxy.blackhole();
      const pending = herald.listen('mid-listen'); // its LISTEN goes into the hole
      const [err] = await problem;
      assert.equal((err as HeraldError).code, 'TIMEOUT');
      assert.match(err.message, /health/);
      await lost;
      proxy.pass();
      await within(pending.established, 30_000, 'the pending subscription going live');
      assert.deepEqual(await herald.notifier.serverChannels(), ['before-hole', 'mid-listen']);
      await delivers(herald, 'mid-listen', 'after the hole');
    } finally {
      await within(herald.close(), 10_000, 'close()');
      await proxy.close();
    }
  });

  it('a black hole during an in-flight UNLISTEN: the session is rebuilt without the channel', async () => {
    const proxy = await TcpProxy.start(db.url);
    const herald = new Herald({ connectionString: db.url, listenConnectionString: proxy.url(db.url), notifier: { ...FAST, statementTimeoutMs: 600_000 } });
    try {
      const keep = herald.listen('keep');
      const leave = herald.listen('leave');
      await Promise.all([keep.established, leave.established]);
      const reconnected = nextEvent(herald.notifier, 'notifier:reconnected', 30_000);
      proxy.blackhole();
      await leave.close(); // its UNLISTEN goes into the hole
      await nextEvent(herald.notifier, 'notifier:lost', 20 * (FAST.healthCheckIntervalMs + FAST.healthCheckTimeoutMs));
      proxy.pass();
      await reconnected;
      assert.deepEqual(await herald.notifier.serverChannels(), ['keep']);
      await delivers(herald, 'keep', 'still here');
    } finally {
      await within(herald.close(), 10_000, 'close()');
      await proxy.close();
    }
  });

  it('a LISTEN past statementTimeoutMs destroys the session; the subscription goes live on the next one', async () => {
    const proxy = await TcpProxy.start(db.url);
    // Health checks far apart: only the statement deadline can find it.
    const herald = new Herald({
      connectionString: db.url,
      listenConnectionString: proxy.url(db.url),
      notifier: { ...FAST, healthCheckIntervalMs: 600_000, statementTimeoutMs: 300 },
    });
    try {
      await herald.listen('first').established;
      const problem = nextEvent(herald.notifier, 'notifier:problem', 30_000);
      proxy.blackhole();
      const pending = herald.listen('stuck-listen');
      const [err] = await problem;
      assert.equal((err as HeraldError).code, 'TIMEOUT');
      assert.match(err.message, /statementTimeoutMs/);
      proxy.pass();
      await within(pending.established, 30_000, 'the pending subscription going live');
    } finally {
      await within(herald.close(), 10_000, 'close()');
      await proxy.close();
    }
  });

  it('the reconnect probe through a pooled connection black-holed while idle times out, the connection is discarded, and the notifier recovers', async () => {
    const poolProxy = await TcpProxy.start(db.url);
    const herald = new Herald({
      connectionString: poolProxy.url(db.url),
      listenConnectionString: db.url,
      notifier: { ...FAST, statementTimeoutMs: 300 },
    });
    const problems: Error[] = [];
    herald.notifier.on('notifier:problem', (e) => problems.push(e));
    try {
      const sub = herald.listen('probe-hole');
      await sub.established; // the probe of the first connect left an idle pooled connection
      poolProxy.blackhole();
      const timeouts = () => problems.filter((e) => (e as HeraldError).code === 'TIMEOUT').length;
      assert.equal(await terminateBackends(db.name, { applicationName: LISTEN_APPLICATION_NAME }), 1);
      await waitFor(() => timeouts() >= 2, { what: 'two probes timing out', timeoutMs: 30_000 });
      assert.equal(herald.notifier.status, 'reconnecting');
      const reconnected = nextEvent(herald.notifier, 'notifier:reconnected', 30_000);
      poolProxy.pass();
      await reconnected;
      await delivers(herald, 'probe-hole', 'probe ok');
    } finally {
      await within(herald.close(), 10_000, 'close()');
      await poolProxy.close();
    }
  });

  it('every connection (pool and listen) black-holed for 1 s with default options: listening again, and close() returns', async () => {
    const proxy = await TcpProxy.start(db.url);
    const herald = new Herald({ connectionString: proxy.url(db.url) });
    const o = herald.notifier.options;
    assert.equal(o.healthCheckIntervalMs, NOTIFIER_DEFAULTS.healthCheckIntervalMs);
    // Generous: detection (interval + timeout), a statement deadline, a connect timeout and backoff, three times over.
    const bound = 3 * (o.healthCheckIntervalMs + o.healthCheckTimeoutMs + o.statementTimeoutMs + o.connectTimeoutMs + o.reconnectMaxDelayMs);
    try {
      const sub = herald.listen('all-dark');
      await sub.established;
      const reconnected = nextEvent(herald.notifier, 'notifier:reconnected', bound);
      proxy.blackhole();
      // Traffic while dark: a LISTEN on the listen session, a statement through the pool.
      const pending = herald.listen('dark-listen');
      const sample = herald.notifier.sampleQueueUsage().then(
        () => null,
        (e: Error) => e,
      );
      await faultFor(1000);
      proxy.pass();
      await reconnected;
      await within(pending.established, bound, 'the pending subscription going live');
      assert.equal(herald.notifier.status, 'listening');
      const sampleErr = await within(sample, bound, 'the queue-usage sample ending');
      assert.equal((sampleErr as HeraldError | null)?.code, 'TIMEOUT');
      await delivers(herald, 'all-dark', 'light again');
    } finally {
      await within(herald.close(), bound, 'close()');
      await proxy.close();
    }
  });

  it('close() returns while every connection is black-holed, with a LISTEN and a pool statement in flight', async () => {
    const proxy = await TcpProxy.start(db.url);
    const herald = new Herald({ connectionString: proxy.url(db.url), notifier: { queueUsageIntervalMs: 0 } });
    try {
      await herald.listen('a').established;
      proxy.blackhole();
      herald.listen('b');
      const sample = herald.notifier.sampleQueueUsage().catch(() => {});
      await within(herald.close(), 10 * herald.notifier.options.statementTimeoutMs, 'close() in a black hole');
      await sample;
    } finally {
      await herald.close();
      await proxy.close();
    }
  });

  it('a clean close() after a closed subscription raises no problem', async () => {
    for (let round = 0; round < 5; round++) {
      const herald = new Herald({ connectionString: db.url, notifier: FAST });
      const problems: Error[] = [];
      herald.notifier.on('notifier:problem', (e) => problems.push(e));
      const a = herald.listen('clean-a');
      const b = herald.listen('clean-b');
      await Promise.all([a.established, b.established]);
      await a.close(); // schedules an UNLISTEN that close() cuts off
      await herald.close();
      assert.deepEqual(problems.map((e) => e.message), []);
    }
  });

  it('50 reconnects grow no listener, timer or socket', async () => {
    const pool = new pg.Pool({ connectionString: db.url, max: 4 });
    const herald = new Herald({ pool, notifier: FAST });
    const warnings: Error[] = [];
    const onWarning = (w: Error) => warnings.push(w);
    process.on('warning', onWarning);
    const resources = () => {
      const counts: Record<string, number> = {};
      for (const r of process.getActiveResourcesInfo()) counts[r] = (counts[r] ?? 0) + 1;
      return counts;
    };
    try {
      const sub = herald.listen('churn');
      await sub.established;
      const reconnectOnce = async () => {
        const reconnected = nextEvent(herald.notifier, 'notifier:reconnected', 30_000);
        await waitFor(async () => (await terminateBackends(db.name, { applicationName: LISTEN_APPLICATION_NAME })) === 1, {
          what: 'the listen backend to terminate',
        });
        await reconnected;
      };
      await reconnectOnce(); // warm-up: the pool has made its connections
      // Listeners on the pooled connections' clients and sockets (the probe of every reconnect uses them).
      const clientListeners = () => {
        let max = 0;
        for (const c of (pool as unknown as { _clients: (pg.Client & { connection: { stream: NodeJS.EventEmitter } })[] })._clients) {
          for (const e of [c, c.connection.stream]) for (const name of e.eventNames()) max = Math.max(max, e.listenerCount(name));
        }
        return max;
      };
      const before = {
        res: resources(),
        own: herald.notifier._resources(),
        pool: pool.listenerCount('error') + pool.listenerCount('connect'),
        clients: clientListeners(),
      };
      for (let i = 0; i < 50; i++) await reconnectOnce();
      await delivers(herald, 'churn', 'after 50');
      const afterRes = resources();
      const own = herald.notifier._resources();
      assert.equal(herald.notifier.stats().reconnects, 51);
      assert.ok(own.abortListeners <= before.own.abortListeners, `abort listeners ${before.own.abortListeners} -> ${own.abortListeners}`);
      assert.equal(own.probes, 0);
      assert.equal(pool.listenerCount('error') + pool.listenerCount('connect'), before.pool);
      assert.ok(clientListeners() <= before.clients, `listeners on a pooled client or its socket: ${before.clients} -> ${clientListeners()}`);
      for (const kind of ['Timeout', 'TCPSocketWrap', 'TCPWRAP']) {
        // A reconnect in progress may hold one more of each; 50 leaks would show as 50.
        assert.ok((afterRes[kind] ?? 0) <= (before.res[kind] ?? 0) + 2, `${kind}: ${before.res[kind] ?? 0} -> ${afterRes[kind] ?? 0}`);
      }
      assert.deepEqual(
        warnings.filter((w) => w.name === 'MaxListenersExceededWarning').map((w) => w.message),
        [],
      );
    } finally {
      process.off('warning', onWarning);
      await herald.close();
      await pool.end();
    }
  });
});
